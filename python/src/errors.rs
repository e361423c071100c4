//! Errors at the Python boundary: every failure becomes one of the exception classes that
//! `qforge/__init__.py` defines (one base, `qforge.Error`, and a subclass per kind), with the
//! CLI's one-line message; a Rust panic becomes `qforge.InternalError` and never unwinds into
//! Python.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The kinds of error, one exception class each (`qforge.<name>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The model cannot be loaded: not ONNX, an unsupported op, a graph that does not verify.
    Model,
    /// A compiled artifact that cannot be read (corrupted, truncated, from a newer qforge).
    Artifact,
    /// A file that cannot be read or written (the OS error is part of the message).
    File,
    /// Inputs that do not fit the model (count, names, dtype, shape).
    Input,
    /// Calibration data that is missing, does not fit the model, is not finite, or cannot be
    /// iterated again when a stage needs a second pass.
    Calibration,
    /// An option value or combination the pipeline refuses (also qconfig and profile files).
    Option,
    /// A tensor over the size limit (`max_tensor_bytes`).
    Limit,
    /// A stage of the pipeline, code generation or a run failed.
    Compile,
    /// A bug in qforge: a panic caught at the boundary.
    Internal,
}

impl Kind {
    fn class_name(self) -> &'static str {
        match self {
            Kind::Model => "ModelError",
            Kind::Artifact => "ArtifactError",
            Kind::File => "FileError",
            Kind::Input => "InputError",
            Kind::Calibration => "CalibrationError",
            Kind::Option => "OptionError",
            Kind::Limit => "LimitError",
            Kind::Compile => "CompileError",
            Kind::Internal => "InternalError",
        }
    }

    const ALL: [Kind; 9] = [
        Kind::Model,
        Kind::Artifact,
        Kind::File,
        Kind::Input,
        Kind::Calibration,
        Kind::Option,
        Kind::Limit,
        Kind::Compile,
        Kind::Internal,
    ];
}

/// An error on its way to Python: the kind decided where it was made (or classified from the
/// chain by [`Error::from_anyhow`]), the chain for its message and its Python cause.
pub struct Error {
    pub kind: Kind,
    pub error: anyhow::Error,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A Python exception (raised by the user's calibration iterable, or by a conversion): kept whole,
/// so it is the `__cause__` of the exception qforge raises, or raised as is when it is not an
/// `Exception` (KeyboardInterrupt, SystemExit).
#[derive(Debug)]
pub struct PythonError(pub PyErr);

impl std::fmt::Display for PythonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for PythonError {}

/// A calibration data problem found at the boundary (the Python object is not data, a batch does
/// not bind to the model's inputs, a one-shot iterator asked for a second pass).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CalibData(pub String);

/// An input problem found at the boundary (not an array, a missing or unknown name, a dtype that
/// does not match).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputData(pub String);

/// An option value the Python layer refuses before building the pipeline.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadOption(pub String);

impl Error {
    pub fn new(kind: Kind, msg: impl std::fmt::Display) -> Error {
        Error { kind, error: anyhow::anyhow!("{msg}") }
    }

    /// `e` with the kind its chain shows, or `default` when the chain shows none: a Python
    /// exception or calibration data problem anywhere makes it a calibration error, an OS error
    /// a file error, a tensor over the size limit a limit error, a JIT input check an input error.
    pub fn from_anyhow(e: anyhow::Error, default: Kind) -> Error {
        let kind = classify(&e).unwrap_or(default);
        Error { kind, error: e }
    }

    /// The Python exception: the kind's class with the one-line message (`{e:#}` on one line, as
    /// the CLI prints it), chained to the user's exception when there is one.
    pub fn into_pyerr(self, py: Python<'_>) -> PyErr {
        let user = self
            .error
            .downcast_ref::<PythonError>()
            .or_else(|| self.error.chain().find_map(|c| c.downcast_ref::<PythonError>()));
        if let Some(PythonError(inner)) = user {
            // KeyboardInterrupt, SystemExit and the like are not qforge's to wrap
            if !inner.is_instance_of::<pyo3::exceptions::PyException>(py) {
                return inner.clone_ref(py);
            }
        }
        let msg = one_line(&format!("{:#}", self.error));
        let err = match class(py, self.kind) {
            Ok(cls) => PyErr::from_type(cls.bind(py).clone(), msg),
            Err(e) => e,
        };
        if let Some(PythonError(inner)) = user {
            err.set_cause(py, Some(inner.clone_ref(py)));
        }
        err
    }
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Error {
        Error::from_anyhow(e, Kind::Compile)
    }
}

impl From<PyErr> for Error {
    /// A Python exception from qforge's own use of Python objects (conversions, attribute
    /// lookups): an input problem unless the chain says otherwise.
    fn from(e: PyErr) -> Error {
        Error { kind: Kind::Input, error: anyhow::Error::new(PythonError(e)) }
    }
}

/// Errors are one line, whatever their sources contain (as the CLI prints them).
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether `e` holds a `T`: as its context or root (anyhow's downcast) or as a source further down.
fn has<T: std::error::Error + Send + Sync + 'static>(e: &anyhow::Error) -> bool {
    e.downcast_ref::<T>().is_some() || e.chain().any(|c| c.is::<T>())
}

/// The kind `e`'s chain shows, if any.
fn classify(e: &anyhow::Error) -> Option<Kind> {
    if has::<CalibData>(e) {
        return Some(Kind::Calibration);
    }
    if has::<InputData>(e) {
        return Some(Kind::Input);
    }
    if has::<BadOption>(e) {
        return Some(Kind::Option);
    }
    for c in e.chain() {
        if is_limit(c) {
            return Some(Kind::Limit);
        }
        if c.is::<std::io::Error>() {
            return Some(Kind::File);
        }
        if let Some(qforge_codegen::JitError::Input(_)) = c.downcast_ref::<qforge_codegen::JitError>() {
            return Some(Kind::Input);
        }
        if let Some(qforge_ir::IrError::Input { .. }) = c.downcast_ref::<qforge_ir::IrError>() {
            return Some(Kind::Input);
        }
    }
    // Some stages carry their cause as text (a pass error keeps it as a field, an ONNX node error
    // as its message); the size limit's wording is the same everywhere, so it is recognized there.
    let text = format!("{e:#}");
    if text.contains("(--max-tensor-bytes)") || text.contains("exceeds the limit of") {
        return Some(Kind::Limit);
    }
    None
}

fn is_limit(c: &(dyn std::error::Error + 'static)) -> bool {
    use qforge::onnx::tensors::TensorError;
    matches!(c.downcast_ref::<qforge_ir::IrError>(), Some(qforge_ir::IrError::TooLarge { .. }))
        || matches!(
            c.downcast_ref::<qforge_ir::interp::EvalError>(),
            Some(qforge_ir::interp::EvalError::TooLarge { .. })
        )
        || matches!(
            c.downcast_ref::<TensorError>(),
            Some(TensorError::TooLarge { .. } | TensorError::TotalTooLarge { .. })
        )
}

/// The exception class of `kind`, looked up once in the `qforge` package.
fn class(py: Python<'_>, kind: Kind) -> PyResult<&'static Py<PyType>> {
    static CLASSES: [PyOnceLock<Py<PyType>>; 9] = [const { PyOnceLock::new() }; 9];
    let i = Kind::ALL.iter().position(|k| *k == kind).unwrap_or(Kind::ALL.len() - 1);
    CLASSES[i].get_or_try_init(py, || {
        let cls = py.import("qforge")?.getattr(kind.class_name())?;
        Ok(cls.cast_into::<PyType>()?.unbind())
    })
}

/// Runs `f`, turning its error into the Python exception of its kind and a panic into
/// `qforge.InternalError`: nothing unwinds into Python.
pub fn guard<T>(py: Python<'_>, f: impl FnOnce() -> Result<T>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.into_pyerr(py)),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_string());
            Err(Error::new(Kind::Internal, format!("internal error (a qforge bug): {msg}")).into_pyerr(py))
        }
    }
}
