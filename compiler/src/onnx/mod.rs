//! ONNX import (and, later, QDQ export). (Implementation in progress.)

use qforge_ir::Graph;
use std::path::Path;

/// What can go wrong importing a model.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read `{path}`: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("`{path}` is not a valid ONNX model: {msg}")]
    Decode { path: String, msg: String },
    #[error("unsupported op `{op}` (domain `{domain}`, opset {opset}) at node `{node}`")]
    Unsupported { op: String, domain: String, opset: i64, node: String },
    #[error("node `{node}` ({op}): {msg}")]
    Node { node: String, op: String, msg: String },
    #[error("{0}")]
    Model(String),
    #[error(transparent)]
    Ir(#[from] qforge_ir::IrError),
}

/// Reads and imports an ONNX file.
pub fn import_file(path: &Path) -> Result<Graph, ImportError> {
    let bytes = std::fs::read(path).map_err(|source| ImportError::Io { path: path.display().to_string(), source })?;
    import_bytes(&bytes, &path.display().to_string())
}

/// Imports an ONNX model from its protobuf bytes; `origin` names it in errors.
pub fn import_bytes(bytes: &[u8], origin: &str) -> Result<Graph, ImportError> {
    let _ = bytes;
    Err(ImportError::Decode { path: origin.into(), msg: "import is not implemented yet".into() })
}
