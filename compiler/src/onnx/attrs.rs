//! Typed access to ONNX node attributes, with errors that name the node, the attribute and the
//! type it should have had.

use super::proto::{attribute_proto::AttributeType, AttributeProto, NodeProto, TensorProto};
use super::ImportError;

/// Identifies the ONNX node being imported, for error messages.
#[derive(Clone, Debug)]
pub struct NodeRef {
    /// The (unique) node name used in the IR and in messages.
    pub name: String,
    pub op: String,
    pub domain: String,
    /// The opset version of the node's domain.
    pub opset: i64,
}

impl NodeRef {
    /// An [`ImportError::Node`] about this node; `msg` is a message or an error of the importer's
    /// own (its text becomes the message).
    pub fn err(&self, msg: impl std::fmt::Display) -> ImportError {
        ImportError::Node { node: self.name.clone(), op: self.op.clone(), msg: msg.to_string() }
    }

    /// The node's domain as messages name it (`ai.onnx` for the default domain).
    pub fn domain_name(&self) -> String {
        if self.domain.is_empty() {
            "ai.onnx".into()
        } else {
            self.domain.clone()
        }
    }

    /// An [`ImportError::Unsupported`] for this node.
    pub fn unsupported(&self) -> ImportError {
        ImportError::Unsupported {
            op: self.op.clone(),
            domain: self.domain_name(),
            opset: self.opset,
            node: self.name.clone(),
        }
    }
}

fn type_name(t: i32) -> &'static str {
    AttributeType::try_from(t).map(|t| t.as_str_name()).unwrap_or("an unknown type")
}

/// The attributes of one node.
pub struct Attrs<'a> {
    node: &'a NodeProto,
    at: &'a NodeRef,
}

impl<'a> Attrs<'a> {
    pub fn new(node: &'a NodeProto, at: &'a NodeRef) -> Attrs<'a> {
        Attrs { node, at }
    }

    /// The attribute `name` if present, checked to be of type `want`. Models from before the
    /// attribute type field (IR 1) leave it `UNDEFINED`; then the field `want` reads is trusted.
    fn get(&self, name: &str, want: AttributeType) -> Result<Option<&'a AttributeProto>, ImportError> {
        let Some(a) = self.node.attribute.iter().find(|a| a.name == name) else {
            return Ok(None);
        };
        if !a.ref_attr_name.is_empty() {
            return Err(self.at.err(format!(
                "attribute `{name}` refers to a function attribute `{}`, which is not supported",
                a.ref_attr_name
            )));
        }
        if a.r#type != want as i32 && a.r#type != AttributeType::Undefined as i32 {
            return Err(self.at.err(format!(
                "attribute `{name}` must be {}, got {}",
                want.as_str_name(),
                type_name(a.r#type)
            )));
        }
        Ok(Some(a))
    }

    pub fn int(&self, name: &str) -> Result<Option<i64>, ImportError> {
        Ok(self.get(name, AttributeType::Int)?.map(|a| a.i))
    }

    pub fn int_or(&self, name: &str, default: i64) -> Result<i64, ImportError> {
        Ok(self.int(name)?.unwrap_or(default))
    }

    /// An int attribute that must be 0 or 1.
    pub fn bool_or(&self, name: &str, default: bool) -> Result<bool, ImportError> {
        match self.int(name)? {
            None => Ok(default),
            Some(0) => Ok(false),
            Some(1) => Ok(true),
            Some(v) => Err(self.at.err(format!("attribute `{name}` must be 0 or 1, got {v}"))),
        }
    }

    pub fn float(&self, name: &str) -> Result<Option<f32>, ImportError> {
        Ok(self.get(name, AttributeType::Float)?.map(|a| a.f))
    }

    pub fn float_or(&self, name: &str, default: f32) -> Result<f32, ImportError> {
        Ok(self.float(name)?.unwrap_or(default))
    }

    pub fn ints(&self, name: &str) -> Result<Option<Vec<i64>>, ImportError> {
        Ok(self.get(name, AttributeType::Ints)?.map(|a| a.ints.clone()))
    }

    /// An ints attribute whose entries must all be non-negative.
    pub fn usizes(&self, name: &str) -> Result<Option<Vec<usize>>, ImportError> {
        let Some(v) = self.ints(name)? else { return Ok(None) };
        v.iter()
            .map(|&x| {
                usize::try_from(x).map_err(|_| self.at.err(format!("attribute `{name}` has a negative entry {x}")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    pub fn floats(&self, name: &str) -> Result<Option<Vec<f32>>, ImportError> {
        Ok(self.get(name, AttributeType::Floats)?.map(|a| a.floats.clone()))
    }

    pub fn string(&self, name: &str) -> Result<Option<String>, ImportError> {
        match self.get(name, AttributeType::String)? {
            None => Ok(None),
            Some(a) => String::from_utf8(a.s.clone())
                .map(Some)
                .map_err(|_| self.at.err(format!("attribute `{name}` is not valid UTF-8"))),
        }
    }

    pub fn tensor(&self, name: &str) -> Result<Option<&'a TensorProto>, ImportError> {
        match self.get(name, AttributeType::Tensor)? {
            None => Ok(None),
            Some(a) => a.t.as_ref().map(Some).ok_or_else(|| self.at.err(format!("attribute `{name}` holds no tensor"))),
        }
    }

    /// Names of all attributes, for "unexpected attribute" checks.
    pub fn names(&self) -> impl Iterator<Item = &'a str> {
        self.node.attribute.iter().map(|a| a.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(name: &str, t: AttributeType) -> AttributeProto {
        AttributeProto { name: name.into(), r#type: t as i32, ..Default::default() }
    }

    #[test]
    fn typed_access_and_errors() {
        let at = NodeRef { name: "n".into(), op: "Conv".into(), domain: String::new(), opset: 17 };
        let node = NodeProto {
            attribute: vec![
                AttributeProto { i: 3, ..attr("group", AttributeType::Int) },
                AttributeProto { ints: vec![1, 1], ..attr("strides", AttributeType::Ints) },
                AttributeProto { f: 0.5, ..attr("alpha", AttributeType::Float) },
                AttributeProto { ints: vec![-1], ..attr("pads", AttributeType::Ints) },
                AttributeProto { s: b"SAME_UPPER".to_vec(), ..attr("auto_pad", AttributeType::String) },
                AttributeProto { i: 2, ..attr("legacy", AttributeType::Undefined) },
            ],
            ..Default::default()
        };
        let a = Attrs::new(&node, &at);
        assert_eq!(a.int("group").unwrap(), Some(3));
        assert_eq!(a.int_or("missing", 7).unwrap(), 7);
        assert_eq!(a.usizes("strides").unwrap(), Some(vec![1, 1]));
        assert_eq!(a.float_or("alpha", 1.0).unwrap(), 0.5);
        assert_eq!(a.string("auto_pad").unwrap().as_deref(), Some("SAME_UPPER"));
        assert_eq!(a.int("legacy").unwrap(), Some(2));
        let e = a.int("strides").unwrap_err().to_string();
        assert!(e.contains("`strides` must be INT, got INTS"), "{e}");
        assert!(a.usizes("pads").unwrap_err().to_string().contains("negative"));
        assert!(a.bool_or("group", false).is_err());
    }
}
