//! ONNX import and QDQ export.
//!
//! * [`proto`]: the ONNX protobuf messages, generated once by prost-build and committed
//!   (regenerate with `compiler/proto/regen.sh`; the build needs neither protoc nor a build script).
//! * `import`: graph building: initializers, graph inputs with symbolic dims, the value map,
//!   node naming, constant folding, outputs, verification.
//! * `ops`: one converter per ONNX op (or small group), in one file per op family (`nn`, `math`,
//!   `logic`, `array`, `constant`, `norm`, `quant`), found through a registry keyed by domain and
//!   op type.
//! * `symbolic`: shape arithmetic on dynamic dims (batch, sequence length) evaluated at import,
//!   so the graph stays symbolic instead of being specialized to one input shape.
//! * `attrs`: typed attribute access. [`tensors`]: `TensorProto` <-> [`qforge_ir::Tensor`].
//! * [`export`]: QDQ ONNX export. [`builder`]: small models in code (tests, fuzzing).
//!
//! Entry points: [`import_file`] and [`import_bytes`] (default options), [`import_file_with`] and
//! [`import_bytes_with`] taking [`ImportOptions`] (the tensor size limit, values of graph inputs
//! to specialize the model on). Errors are [`ImportError`] values, one line each; an input the
//! IR needs as a constant but the model computes from graph inputs is
//! [`ImportError::NotConstant`], naming those inputs, so a caller holding their values can import
//! again specializing on them.
//!
//! Default-domain opsets 9 to 28 are imported, plus the `com.microsoft` ops that ONNX Runtime's
//! quantization tools emit (QGemm, QLinearGlobalAveragePool, QLinearAveragePool, QLinearAdd,
//! QLinearMul, QLinearConcat) and Gelu. Quantization parameters of QuantizeLinear,
//! DequantizeLinear and the QLinear* ops must be constants (or specialized graph inputs); they
//! become part of the value types.

mod attrs;
pub mod builder;
pub mod conventions;
pub mod export;
mod import;
mod ops;
mod symbolic;
#[rustfmt::skip]
pub mod proto;
pub mod tensors;

pub use import::{import_model, import_model_with, MAX_OPSET, MIN_OPSET};
pub use ops::default_domain_ops;

use prost::Message;
use qforge_ir::{Graph, Tensor};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// What can go wrong importing a model. Each message is one line. An error wrapped inside
/// another is either its `source()` or part of its message, never both (a chain printed with its
/// sources, anyhow's `{:#}`, would repeat it).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file cannot be read. The OS error is the `source()`, not part of this message, so a
    /// chain printed with `{:#}` (anyhow's alternate form, as the CLI does) shows it once:
    /// "cannot read `m.onnx`: No such file or directory (os error 2)".
    #[error("cannot read `{path}`")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not an ONNX model.
    #[error("`{path}` is not a valid ONNX model: {msg}")]
    Decode { path: String, msg: String },
    /// No converter for this op in this domain and opset.
    #[error("unsupported op `{op}` (domain `{domain}`, opset {opset}) at node `{node}`")]
    Unsupported { op: String, domain: String, opset: i64, node: String },
    /// The op is known, but the model's opset is newer than the newest its converter was checked
    /// against (`until`): the node may follow a version of the op qforge does not know.
    #[error(
        "op `{op}` (domain `{domain}`) at node `{node}`: opset {opset} may define a version newer than {version}, \
         the newest qforge implements (qforge imports `{op}` up to opset {until})"
    )]
    OpVersion { op: String, domain: String, opset: i64, version: i64, until: i64, node: String },
    /// A node is malformed, ill-typed or uses what qforge does not support: `node` is its IR name
    /// (the ONNX name, or `{op}_{index}` for an unnamed node), `op` its ONNX op type.
    #[error("node `{node}` ({op}): {msg}")]
    Node { node: String, op: String, msg: String },
    /// Input `input` (`what`) of a node must be a constant (the IR keeps it as an attribute or a
    /// type: a shape, axes, bounds, quantization parameters), but the model computes it at run
    /// time, from the graph inputs `sources` (empty when it comes from none, such as a random
    /// op's result; boxed to keep the error small). Giving those inputs values ([`ImportOptions::specialize`]) compiles the
    /// model for them, and the input becomes a constant.
    #[error(
        "node `{node}` ({op}): input `{input}` ({what}) must be a constant (or computed from constants or input \
         shapes), but it is computed {}",
        computed_from(input, sources)
    )]
    NotConstant { node: String, op: String, input: String, what: String, sources: Box<[String]> },
    /// [`ImportOptions::specialize`] gives a value for `name` that does not fit the model: not a
    /// graph input, or not of its declared type.
    #[error("cannot specialize input `{name}`: {msg}")]
    Specialize { name: String, msg: String },
    /// An initializer cannot be read (its message is part of this one, not a `source()`).
    #[error("initializer `{name}`: {error}")]
    Initializer { name: String, error: tensors::TensorError },
    /// The model as a whole is malformed (opsets, graph inputs and outputs).
    #[error("{0}")]
    Model(String),
    /// The imported graph does not verify.
    #[error(transparent)]
    Ir(#[from] qforge_ir::IrError),
}

/// Where a run-time input comes from, and how to make it a constant, for
/// [`ImportError::NotConstant`].
fn computed_from(input: &str, sources: &[String]) -> String {
    let quoted = |v: &[String]| v.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    let from = match sources {
        [] => return "at run time".to_string(),
        [one] if one == input => "at run time: it is a graph input".to_string(),
        [_] => format!("at run time from graph input {}", quoted(sources)),
        _ => format!("at run time from graph inputs {}", quoted(sources)),
    };
    let flags: Vec<String> = sources.iter().map(|n| format!("--specialize {n}=FILE.npy")).collect();
    format!("{from} (to compile the model for one value of it, give that value: {})", flags.join(" "))
}

/// How to import a model: `ImportOptions::default().with_max_tensor_bytes(n)` (building from the
/// default keeps callers compiling when options are added).
#[derive(Clone, Debug, PartialEq)]
pub struct ImportOptions {
    /// The largest tensor the importer materializes, in bytes: each initializer, `Constant` and
    /// `ConstantOfShape`, and constants folded at import (a fold that would exceed it stays a
    /// node); also the bound on the total of the constants built at import (`ConstantOfShape`,
    /// `Range`). Checked from the dims before anything is allocated; errors name
    /// `--max-tensor-bytes`, the command-line flag that sets it. Default: 2 GiB
    /// ([`tensors::MAX_TENSOR_BYTES`], the same as the IR's default limit).
    pub max_tensor_bytes: u64,
    /// Values for graph inputs, by name: each such input is imported as the constant it is given
    /// ("specialization": the model is compiled for that one value, as the JIT compiles one
    /// program per input shape), so what it feeds (a Reshape's shape, a Slice's bounds, a
    /// scale) is a constant at import. The value must have the input's declared element type
    /// and dims (a symbolic dim takes any size). The graph records it
    /// ([`qforge_ir::Graph::specialized`]) in place of the input, which is not fed at run time.
    pub specialize: BTreeMap<String, Arc<Tensor>>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions { max_tensor_bytes: tensors::MAX_TENSOR_BYTES as u64, specialize: BTreeMap::new() }
    }
}

impl ImportOptions {
    /// These options with the size limit `bytes` (see [`ImportOptions::max_tensor_bytes`]).
    pub fn with_max_tensor_bytes(mut self, bytes: u64) -> ImportOptions {
        self.max_tensor_bytes = bytes;
        self
    }

    /// These options with the graph inputs of `values` specialized on them (see
    /// [`ImportOptions::specialize`]).
    pub fn with_specialize(mut self, values: BTreeMap<String, Arc<Tensor>>) -> ImportOptions {
        self.specialize = values;
        self
    }
}

/// Reads and imports an ONNX file with the default [`ImportOptions`]. The graph is named after
/// the file's stem.
pub fn import_file(path: &Path) -> Result<Graph, ImportError> {
    import_file_with(path, &ImportOptions::default())
}

/// Reads and imports an ONNX file. The graph is named after the file's stem.
pub fn import_file_with(path: &Path, opts: &ImportOptions) -> Result<Graph, ImportError> {
    let bytes = std::fs::read(path).map_err(|source| ImportError::Io { path: path.display().to_string(), source })?;
    let mut g = import_bytes_with(&bytes, &path.display().to_string(), opts)?;
    if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
        g.name = stem.to_string();
    }
    Ok(g)
}

/// The names of an ONNX file's graph inputs that are not initializers, in declared order: the
/// inputs a caller feeds (and may specialize the model on).
pub fn input_names_of_file(path: &Path) -> Result<Vec<String>, ImportError> {
    let bytes = std::fs::read(path).map_err(|source| ImportError::Io { path: path.display().to_string(), source })?;
    let model = proto::ModelProto::decode(bytes.as_slice())
        .map_err(|e| ImportError::Decode { path: path.display().to_string(), msg: e.to_string() })?;
    let Some(g) = model.graph else { return Ok(vec![]) };
    let inits: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    Ok(g.input.iter().filter(|vi| !inits.contains(vi.name.as_str())).map(|vi| vi.name.clone()).collect())
}

/// The element types an ONNX model file declares for its graph inputs (initializers excluded),
/// by name: the IR type each is imported as and its wire type, if any (see
/// [`qforge_ir::wire`]); inputs of a type qforge does not import are left out. What reading an
/// input's `.npy` file needs before the model is imported ([`crate::npy::read_input`]).
pub fn input_types_of_file(
    path: &Path,
) -> Result<std::collections::BTreeMap<String, (qforge_ir::DType, Option<qforge_ir::WireType>)>, ImportError> {
    let bytes = std::fs::read(path).map_err(|source| ImportError::Io { path: path.display().to_string(), source })?;
    let model = proto::ModelProto::decode(bytes.as_slice())
        .map_err(|e| ImportError::Decode { path: path.display().to_string(), msg: e.to_string() })?;
    let mut out = std::collections::BTreeMap::new();
    let Some(g) = model.graph else { return Ok(out) };
    let inits: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    for vi in g.input.iter().filter(|vi| !inits.contains(vi.name.as_str())) {
        let Some(proto::type_proto::Value::TensorType(tt)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
            continue;
        };
        let decl = match tensors::wire_from_onnx(tt.elem_type) {
            Some(w) => Some((w.dtype(), Some(w))),
            None => tensors::dtype_from_onnx(tt.elem_type).ok().map(|d| (d, None)),
        };
        if let Some(d) = decl {
            out.insert(vi.name.clone(), d);
        }
    }
    Ok(out)
}

/// Imports an ONNX model from its protobuf bytes with the default [`ImportOptions`]; `origin`
/// names it in errors. The graph takes the ONNX graph's name ("model" when it has none).
pub fn import_bytes(bytes: &[u8], origin: &str) -> Result<Graph, ImportError> {
    import_bytes_with(bytes, origin, &ImportOptions::default())
}

/// Imports an ONNX model from its protobuf bytes; `origin` names it in errors. The graph takes
/// the ONNX graph's name ("model" when it has none).
pub fn import_bytes_with(bytes: &[u8], origin: &str, opts: &ImportOptions) -> Result<Graph, ImportError> {
    if bytes.is_empty() {
        return Err(ImportError::Decode { path: origin.into(), msg: "the file is empty".into() });
    }
    let model = proto::ModelProto::decode(bytes)
        .map_err(|e| ImportError::Decode { path: origin.into(), msg: e.to_string() })?;
    // Protobuf skips unknown fields, so arbitrary bytes can decode into an empty message.
    if model.ir_version == 0 && model.graph.is_none() && model.opset_import.is_empty() {
        return Err(ImportError::Decode {
            path: origin.into(),
            msg: "no ONNX model in the data (no ir_version, no opset_import, no graph)".into(),
        });
    }
    import_model_with(&model, origin, opts)
}
