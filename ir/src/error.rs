//! Errors of the IR crate: values with context, never panics.

/// Everything that can go wrong inside the IR: a malformed graph, a failed inference, a parse
/// error in the text form, a failure while interpreting.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum IrError {
    /// A node is malformed (wrong arity, types that do not fit the op, bad attributes).
    #[error("node `{node}` ({op}): {msg}")]
    Node { node: String, op: &'static str, msg: String },
    /// Tensors that cannot be joined along axis 0 (a batch's rows computed in slices).
    #[error("cannot join tensors along axis 0: {0}")]
    Join(String),
    /// The graph has a cycle.
    #[error("graph has a cycle through node `{0}`")]
    Cycle(String),
    /// The graph as a whole is malformed (dangling values, outputs, duplicate names).
    #[error("invalid graph: {0}")]
    Graph(String),
    /// The text form could not be parsed.
    #[error("line {line}, column {col}: {msg}")]
    Parse { line: usize, col: usize, msg: String },
    /// Inputs handed to the interpreter do not fit the graph.
    #[error("input `{name}`: {msg}")]
    Input { name: String, msg: String },
    /// A tensor would exceed the size limit (`--max-tensor-bytes`, see [`crate::limits`]); every
    /// engine reports an oversized tensor with this error, so their messages agree.
    #[error("node `{node}`: {what} needs {bytes} bytes, more than the limit of {limit} bytes (--max-tensor-bytes)")]
    TooLarge { node: String, what: crate::limits::Allocation, bytes: u128, limit: u128 },
}

impl IrError {
    pub fn node(node: &str, op: &'static str, msg: impl Into<String>) -> IrError {
        IrError::Node { node: node.to_string(), op, msg: msg.into() }
    }
}

pub type Result<T, E = IrError> = std::result::Result<T, E>;
