//! The e-graph language: one e-node per IR operation.
//!
//! * [`QNode::Op`] carries the IR [`Op`] with its attributes as the e-node payload ([`OpData`]),
//!   plus, for ops whose result type is chosen rather than derived (quantize, requantize, the
//!   integer kernels), the declared result dtype and quantization parameters ([`QType`]). Two
//!   e-nodes are equal when their ops, attributes, declared types and children are equal.
//! * Constants are leaves referring by index into the constant table of the analysis
//!   ([`super::analysis::QAnalysis::consts`]): [`QNode::Const`]. Rules that compute new weights
//!   (BN folding) add an entry to the table and a `Const` leaf for it.
//! * Graph inputs are leaves by position ([`QNode::Input`]); an absent optional operand is
//!   [`QNode::Absent`]; result `k` of a multi-result op is [`QNode::Proj`]; [`QNode::Root`] joins
//!   the graph outputs into one term.
//!
//! Node names are not part of an e-node (names do not change meaning): the conversion back to a
//! graph ([`super::convert`]) restores them.

use egg::{define_language, Id};
use qforge_ir::{DType, Op, QuantParams};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::Arc;

/// The declared result type of an op whose quantization is chosen: dtype and parameters (the
/// shape is always inferred).
#[derive(Clone, Debug, PartialEq)]
pub struct QType {
    pub dtype: DType,
    pub quant: QuantParams,
}

impl QType {
    pub fn new(dtype: DType, quant: QuantParams) -> QType {
        QType { dtype, quant }
    }

    /// As a tensor type for [`qforge_ir::infer::infer`]'s `declared` (which ignores the shape).
    pub fn tensor_type(&self) -> qforge_ir::TensorType {
        qforge_ir::TensorType::quantized(self.dtype, qforge_ir::Shape::default(), self.quant.clone())
    }
}

struct OpInner {
    op: Op,
    decl: Option<QType>,
    /// `Debug` of op and declared type: the identity (f32 attributes compare by their exact
    /// shortest round-trip text, so equal bits give equal keys).
    key: Box<str>,
}

/// An IR op (never `Input` or `Const`) with its attributes and, when chosen, its result type.
#[derive(Clone)]
pub struct OpData(Arc<OpInner>);

impl OpData {
    pub fn new(op: Op, decl: Option<QType>) -> OpData {
        debug_assert!(!matches!(op, Op::Input | Op::Const(_)));
        let key = format!("{op:?}|{decl:?}").into_boxed_str();
        OpData(Arc::new(OpInner { op, decl, key }))
    }

    pub fn op(&self) -> &Op {
        &self.0.op
    }

    pub fn decl(&self) -> Option<&QType> {
        self.0.decl.as_ref()
    }
}

impl PartialEq for OpData {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}
impl Eq for OpData {}
impl Hash for OpData {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.key.hash(state)
    }
}
impl PartialOrd for OpData {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OpData {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.key.cmp(&other.0.key)
    }
}
impl fmt::Debug for OpData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.key)
    }
}
impl fmt::Display for OpData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.op.name())
    }
}
/// A leaf of the language that does not parse (egg's `define_language!` asks every leaf type for
/// `FromStr`; terms are built from graphs, not parsed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a {what}: `{text}`")]
pub struct LeafParseError {
    pub what: &'static str,
    pub text: String,
}

impl FromStr for OpData {
    type Err = LeafParseError;
    /// Ops are never parsed from s-expressions: terms are built from graphs.
    fn from_str(s: &str) -> Result<Self, LeafParseError> {
        Err(LeafParseError { what: "parsable op", text: s.to_string() })
    }
}

macro_rules! index_leaf {
    ($(#[$m:meta])* $name:ident, $prefix:literal) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u32);
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
        impl FromStr for $name {
            type Err = LeafParseError;
            fn from_str(s: &str) -> Result<Self, LeafParseError> {
                s.strip_prefix($prefix)
                    .and_then(|n| n.parse().ok())
                    .map($name)
                    .ok_or_else(|| LeafParseError { what: stringify!($name), text: s.to_string() })
            }
        }
    };
}

index_leaf!(
    /// Index into the constant table.
    ConstRef,
    "const#"
);
index_leaf!(
    /// Position of a graph input.
    InputRef,
    "input#"
);
index_leaf!(
    /// Result index of a multi-result op.
    Port,
    "port#"
);

define_language! {
    /// One IR operation per e-node (see the module docs).
    pub enum QNode {
        "root" = Root(Box<[Id]>),
        "absent" = Absent,
        Input(InputRef),
        Const(ConstRef),
        Proj(Port, [Id; 1]),
        Op(OpData, Vec<Id>),
    }
}

impl QNode {
    /// The op, for [`QNode::Op`] nodes.
    pub fn op(&self) -> Option<&Op> {
        match self {
            QNode::Op(d, _) => Some(d.op()),
            _ => None,
        }
    }
}
