//! Building small ONNX models in code: for tests, fuzzing seeds and hand-made fixtures.

use super::proto::{
    attribute_proto::AttributeType, tensor_shape_proto::dimension, tensor_shape_proto::Dimension, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};
use super::tensors::tensor_to_proto;
use prost::Message;
use qforge_ir::{Dim, Tensor};

/// A model with a single node `op_type` (in `domain`) from `x: f32[1,4]` to `y`, opset 17: the
/// smallest way to hand qforge an op.
pub fn single_node_model(op_type: &str, domain: &str) -> Vec<u8> {
    let mut n = node(op_type, &["x"], &["y"], vec![]);
    n.domain = domain.into();
    n.name = format!("my_{}", op_type.to_lowercase());
    model(17, vec![f32_input("x", &[1, 4])], vec![], vec![n], &["y"])
}

/// A value's name, ONNX element type code and dims.
pub fn vi(name: &str, elem: i32, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => dimension::Value::DimValue(*n as i64),
                Dim::Sym(s) => dimension::Value::DimParam(s.clone()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An f32 graph input of fixed dims.
pub fn f32_input(name: &str, dims: &[usize]) -> ValueInfoProto {
    vi(name, 1, &dims.iter().map(|&d| Dim::Fixed(d)).collect::<Vec<_>>())
}

/// A graph output by name, type left to inference.
pub fn output(name: &str) -> ValueInfoProto {
    ValueInfoProto { name: name.into(), ..Default::default() }
}

/// A node of the default domain.
pub fn node(op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

/// An integer attribute.
pub fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i, ..Default::default() }
}

/// An integer-list attribute.
pub fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Ints as i32, ints: v.to_vec(), ..Default::default() }
}

/// A float attribute.
pub fn float(name: &str, f: f32) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Float as i32, f, ..Default::default() }
}

/// A tensor attribute.
pub fn tensor_attr(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Tensor as i32, t: Some(t), ..Default::default() }
}

/// An initializer.
pub fn init(name: &str, t: &Tensor) -> TensorProto {
    tensor_to_proto(name, t)
}

/// A model: default-domain `opset` (and `com.microsoft` 1), inputs, initializers, nodes, outputs.
pub fn model(
    opset: i64,
    inputs: Vec<ValueInfoProto>,
    inits: Vec<TensorProto>,
    nodes: Vec<NodeProto>,
    outputs: &[&str],
) -> Vec<u8> {
    ModelProto {
        ir_version: 8,
        opset_import: vec![
            OperatorSetIdProto { domain: String::new(), version: opset },
            OperatorSetIdProto { domain: "com.microsoft".into(), version: 1 },
        ],
        graph: Some(GraphProto {
            name: "test".into(),
            node: nodes,
            input: inputs,
            initializer: inits,
            output: outputs.iter().map(|o| output(o)).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}
