//! The three objects of the Python API, one per point of the pipeline:
//!
//! * [`Model`]: a loaded model (`qforge.load`), or an artifact, which is already compiled;
//! * [`Staged`]: a model through quantization or precision assignment, with the compiler's state
//!   (`Model.quantize`, `Model.precision`); the optimizer has not run yet;
//! * [`Executable`]: a compiled model that runs NumPy arrays (`compile()`).
//!
//! Every method does what the matching CLI command does, through the same library calls, and
//! runs with the GIL released while the library works.

use crate::calib::PyCalib;
use crate::convert::{
    array_from_tensor, as_array, bind_inputs, json_to_py, numpy_name, py_to_json, tensor_from_array, type_text,
};
use crate::errors::{guard, BadOption, CalibData, Error, Kind, Result};
use crate::options::{self, Options, QConfigArg};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use qforge::artifact::{self, Artifact, Header};
use qforge::calib_set::CalibSource;
use qforge::options::{PipelineOptions, Precision, QuantizeMode};
use qforge::{Compiler, Stage, State};
use qforge_ir::{Dim, Graph, Tensor, TensorType};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Where a model came from: a file, or bytes held by reference (the report and artifacts need
/// the source again).
pub enum Origin {
    Path(PathBuf),
    Bytes { name: String, bytes: Py<PyBytes> },
}

/// A loaded model (`qforge.load`): an ONNX or `.qir` model to quantize, assign precision to,
/// study or compile; or a compiled artifact (`compiled` is True), which `compile()` runs as is.
///
/// >>> m = qforge.load("digits_cnn.onnx")
/// >>> m.inputs
/// [TensorInfo(name='input', dtype='float32', shape=('N', 1, 8, 8))]
/// >>> exe = m.compile()                         # fp32, every optimization
/// >>> q = m.quantize(calib=calib_x)             # static INT8 (see quantize)
#[pyclass(frozen, module = "qforge", name = "Model")]
pub struct Model {
    graph: Graph,
    origin: Origin,
    max_tensor_bytes: u64,
    /// The artifact's header, when the model is a compiled artifact.
    header: Option<Header>,
}

fn tensor_info<'py>(py: Python<'py>, name: &str, ty: &TensorType) -> PyResult<Bound<'py, PyAny>> {
    let dims = PyList::empty(py);
    for d in ty.shape.dims() {
        match d {
            Dim::Fixed(n) => dims.append(*n)?,
            Dim::Sym(s) => dims.append(s)?,
        }
    }
    let shape = dims.to_tuple();
    py.import("qforge")?.getattr("TensorInfo")?.call1((name, numpy_name(ty.dtype), shape))
}

fn inputs_of<'py>(py: Python<'py>, g: &Graph) -> PyResult<Vec<Bound<'py, PyAny>>> {
    g.inputs()
        .iter()
        .map(|&id| {
            let n = g.node(id);
            let ty = n
                .outputs
                .first()
                .ok_or_else(|| pyo3::exceptions::PyRuntimeError::new_err("an input without a type"))?;
            tensor_info(py, &n.name, ty)
        })
        .collect()
}

fn outputs_of<'py>(py: Python<'py>, g: &Graph) -> PyResult<Vec<Bound<'py, PyAny>>> {
    g.outputs().iter().map(|o| tensor_info(py, &o.name, g.value_type(o.value))).collect()
}

fn ir_text(g: &Graph, full: bool) -> Result<String> {
    let t = if full {
        qforge_ir::text::print(g, qforge_ir::text::ConstMode::Full)
    } else {
        qforge_ir::text::print_default(g)
    };
    t.map_err(|e| Error::from_anyhow(e.into(), Kind::Compile))
}

fn summary<'py>(py: Python<'py>, g: &Graph) -> Result<Bound<'py, PyAny>> {
    let s = qforge::summary::Summary::of(g).map_err(|e| Error::from_anyhow(e.into(), Kind::Compile))?;
    let v = serde_json::to_value(&s).map_err(|e| Error::new(Kind::Internal, e))?;
    Ok(json_to_py(py, &v)?)
}

/// `inputs -> outputs` for reprs: `input float32[N,1,8,8] -> logits float32[N,10]`.
/// `per_channel` and `symmetric` as the CLI's flag pairs (`None`: the flag's default).
fn set_scheme(p: &mut PipelineOptions, per_channel: Option<bool>, symmetric: Option<bool>) {
    match per_channel {
        Some(true) => p.per_channel = true,
        Some(false) => p.per_tensor = true,
        None => {}
    }
    match symmetric {
        Some(true) => p.symmetric = true,
        Some(false) => p.asymmetric = true,
        None => {}
    }
}

fn signature(g: &Graph) -> String {
    let ty = type_text;
    let ins: Vec<String> = g
        .inputs()
        .iter()
        .map(|&id| {
            let n = g.node(id);
            format!("{} {}", n.name, n.outputs.first().map(ty).unwrap_or_default())
        })
        .collect();
    let outs: Vec<String> = g.outputs().iter().map(|o| format!("{} {}", o.name, ty(g.value_type(o.value)))).collect();
    format!("{} -> {}", ins.join(", "), outs.join(", "))
}

/// `x` as a path (`str` or `os.PathLike`).
fn as_path(x: &Bound<'_, PyAny>) -> PyResult<PathBuf> {
    let os = x.py().import("os")?;
    os.call_method1("fspath", (x,))?.extract()
}

/// The `qconfig=` argument: a path, or a dict of the TOML file's tables.
fn qconfig_arg(x: Option<&Bound<'_, PyAny>>) -> Result<Option<QConfigArg>> {
    let Some(x) = x else { return Ok(None) };
    if x.is_instance_of::<PyDict>() {
        return Ok(Some(QConfigArg::Toml(options::qconfig_toml(&py_to_json(x)?)?)));
    }
    match as_path(x) {
        Ok(p) => Ok(Some(QConfigArg::Path(p))),
        Err(_) => Err(Error::from_anyhow(
            BadOption("qconfig: give a path to a qconfig TOML file or a dict of its tables".into()).into(),
            Kind::Option,
        )),
    }
}

/// The `profile=` argument: a shipped name or a TOML file (`"host"` is the default).
fn profile_arg(x: Option<&Bound<'_, PyAny>>) -> Result<Option<String>> {
    let Some(x) = x else { return Ok(None) };
    if let Ok(s) = x.extract::<String>() {
        return Ok(Some(s));
    }
    Ok(Some(as_path(x)?.display().to_string()))
}

/// Loads a model (the native half of `qforge.load`, which documents it).
#[pyfunction]
#[pyo3(signature = (source, *, max_tensor_bytes = qforge::options::DEFAULT_MAX_TENSOR_BYTES))]
pub fn load(py: Python<'_>, source: &Bound<'_, PyAny>, max_tensor_bytes: u64) -> PyResult<Model> {
    guard(py, || {
        // bytes, a bytes-like object, an onnx.ModelProto (by its serialization), or a path
        let bytes: Option<Bound<'_, PyBytes>> = if let Ok(b) = source.cast::<PyBytes>() {
            Some(b.clone())
        } else if source.hasattr("SerializeToString")? {
            Some(
                source
                    .call_method0("SerializeToString")?
                    .cast_into::<PyBytes>()
                    .map_err(|e| Error::new(Kind::Model, e))?,
            )
        } else if source.is_instance_of::<pyo3::types::PyByteArray>()
            || source.is_instance_of::<pyo3::types::PyMemoryView>()
        {
            let b: Vec<u8> = py.import("builtins")?.getattr("bytes")?.call1((source,))?.extract()?;
            Some(PyBytes::new(py, &b))
        } else {
            None
        };
        if let Some(b) = bytes {
            return load_bytes(py, b, max_tensor_bytes);
        }
        let path = as_path(source).map_err(|_| {
            Error::new(
                Kind::Model,
                format!(
                    "cannot load a `{}`: give a path (.onnx, .qir, .qfa), bytes, or an onnx.ModelProto",
                    crate::convert::type_name(source)
                ),
            )
        })?;
        let (graph, header) = py.detach(|| -> Result<(Graph, Option<Header>)> {
            if artifact::is_artifact(&path) {
                let a = Artifact::load(&path).map_err(|e| Error::from_anyhow(e, Kind::Artifact))?;
                return Ok((a.graph, Some(a.header)));
            }
            let g = qforge::compiler::load_model_limited(&path, max_tensor_bytes)
                .map_err(|e| Error::from_anyhow(e, Kind::Model))?;
            Ok((g, None))
        })?;
        Ok(Model { graph, origin: Origin::Path(path), max_tensor_bytes, header })
    })
}

fn load_bytes(py: Python<'_>, b: Bound<'_, PyBytes>, max_tensor_bytes: u64) -> Result<Model> {
    let data = b.as_bytes();
    let (graph, header) = py.detach(|| -> Result<(Graph, Option<Header>)> {
        if data.starts_with(&artifact::MAGIC) {
            let a = Artifact::from_bytes(data).map_err(|e| Error::from_anyhow(e, Kind::Artifact))?;
            return Ok((a.graph, Some(a.header)));
        }
        let opts = qforge::onnx::ImportOptions::default().with_max_tensor_bytes(max_tensor_bytes);
        let g = qforge::onnx::import_bytes_with(data, "<bytes>", &opts)
            .map_err(|e| Error::from_anyhow(e.into(), Kind::Model))?;
        Ok((g, None))
    })?;
    let name = graph.name.clone();
    Ok(Model { graph, origin: Origin::Bytes { name, bytes: b.unbind() }, max_tensor_bytes, header })
}

impl Model {
    fn not_artifact(&self, what: &str) -> Result<()> {
        if self.header.is_some() {
            return Err(Error::from_anyhow(
                BadOption(format!(
                    "{} is a compiled artifact: its graph is already optimized, so compile() runs it as is; {what} \
                     needs the source model",
                    self.display_name()
                ))
                .into(),
                Kind::Option,
            ));
        }
        Ok(())
    }

    fn display_name(&self) -> String {
        match &self.origin {
            Origin::Path(p) => format!("`{}`", p.display()),
            Origin::Bytes { name, .. } => format!("model `{name}` (from bytes)"),
        }
    }

    /// The model's name for reports: the file name, or the graph's name for bytes.
    fn report_name(&self) -> PathBuf {
        match &self.origin {
            Origin::Path(p) => p.clone(),
            Origin::Bytes { name, .. } => PathBuf::from(name),
        }
    }

    /// The default options with the import's size limit.
    fn base_options(&self) -> PipelineOptions {
        PipelineOptions { max_tensor_bytes: self.max_tensor_bytes, ..PipelineOptions::default() }
    }
}

/// Runs `compiler`'s pipeline on `graph` through `last` with the GIL released; `check` first, so
/// mistakes in the options or the data are reported by kind before any stage runs.
fn run_stages(py: Python<'_>, compiler: &Compiler, graph: Graph, last: Stage) -> Result<State> {
    py.detach(|| {
        compiler.check(&graph, Some(last)).map_err(|e| Error::from_anyhow(e, Kind::Option))?;
        compiler.run_until(graph, last, &mut |_, _| {}).map_err(|e| Error::from_anyhow(e, Kind::Compile))
    })
}

#[pymethods]
impl Model {
    /// The graph's name (the file's stem for a file).
    #[getter]
    fn name(&self) -> &str {
        &self.graph.name
    }

    /// The file the model was loaded from (None for bytes).
    #[getter]
    fn path(&self) -> Option<String> {
        match &self.origin {
            Origin::Path(p) => Some(p.display().to_string()),
            Origin::Bytes { .. } => None,
        }
    }

    /// The model's inputs: `TensorInfo(name, dtype, shape)`, symbolic dims (a dynamic batch `N`) as strings.
    #[getter]
    fn inputs<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        inputs_of(py, &self.graph)
    }

    /// The model's outputs: `TensorInfo(name, dtype, shape)`.
    #[getter]
    fn outputs<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        outputs_of(py, &self.graph)
    }

    /// Whether this is a compiled artifact (`.qfa`).
    #[getter]
    fn compiled(&self) -> bool {
        self.header.is_some()
    }

    /// The artifact's header (format, qforge version, source model and digest, pipeline options,
    /// profile), or None for a model.
    #[getter]
    fn artifact<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        guard(py, || {
            let Some(h) = &self.header else { return Ok(None) };
            let v = serde_json::to_value(h).map_err(|e| Error::new(Kind::Internal, e))?;
            Ok(Some(json_to_py(py, &v)?))
        })
    }

    /// The IR text of the graph (what `qforge inspect --ir` prints): constants summarized as type,
    /// digest and range; with `full=True` every constant in full, a text `qforge.load` reads back as a
    /// `.qir` file.
    #[pyo3(signature = (full = false))]
    fn ir(&self, py: Python<'_>, full: bool) -> PyResult<String> {
        guard(py, || ir_text(&self.graph, full))
    }

    /// A summary of the graph as a dict, with the keys of `qforge inspect --json`: inputs, outputs,
    /// op counts (`ops`), `params`, `weight_bytes` and every node with its dtype and quantization.
    fn summary<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        guard(py, || summary(py, &self.graph))
    }

    fn __repr__(&self) -> String {
        let kind = if self.header.is_some() { "compiled artifact" } else { "model" };
        format!("<qforge.Model {} ({kind}): {}>", self.graph.name, signature(&self.graph))
    }

    /// Quantizes the model: the pipeline's stages up to the optimizer run now (canonicalize, fold
    /// batch norm, SmoothQuant, calibrate, float fallback, quantize, align channels), so calibration
    /// data is read here, and the result keeps the compiler's state. `qforge run MODEL --quantize
    /// int8 --calib X.npy` with the same options gives the same numbers.
    ///
    /// calib: calibration data: a NumPy array (a model with one input), a dict of arrays by input
    ///     name, or any iterable of those (a DataLoader's batches: a tuple or list item gives the
    ///     inputs in order, extra elements such as labels are ignored; a generator). Arrays are cut
    ///     into batches of `calib_batch` rows, as `--calib` files are; an iterable's batches are used
    ///     as they come, one at a time. Needed for "int8"; a generator serves one pass, enough for
    ///     plain static INT8 but not for `min_sqnr` or `smooth` (pass a list or a DataLoader), and
    ///     bias correction (on by default) is skipped with a warning.
    /// mode: "int8" (static, calibrated) or "dynamic" (activations quantized at run time).
    /// method: the calibration observer: "minmax" (the default), "ema", "percentile", "entropy", "mse".
    /// per_channel: True per output channel, False per tensor; None: the CLI's default (per channel
    ///     for int8, per tensor for dynamic, or the qconfig's).
    /// symmetric: True int8 symmetric activations, False uint8 asymmetric; None: the default (uint8
    ///     asymmetric, or the qconfig's).
    /// qconfig: a qconfig TOML file, or a dict of its tables, e.g.
    ///     `{"default": {"observer": "mse"}, "node": [{"match": "/fc/*", "skip": True}]}`.
    /// profile: a hardware profile: a shipped name ("host", the default; "nvidia-xavier", ...) or a
    ///     TOML file.
    /// calib_batch: rows per calibration run when `calib` is an array (50, as `--calib-batch`).
    /// min_sqnr: keep the most sensitive layers float until the output SQNR against fp32 reaches
    ///     this many dB on the calibration data.
    /// smooth: SmoothQuant migration strength in [0, 1] (0.5 usual) for transformer layer norms.
    /// opt_level: 0 (the graph as imported), 1, or 2 (every optimization, the default).
    ///
    /// Returns a `Staged` model: `compile()`, `export_onnx()`, `save()`, `report()`.
    /// Raises CalibrationError (no or unusable data), OptionError, CompileError.
    ///
    /// >>> q = m.quantize(calib=np.load("digits_calib_x.npy"))
    /// >>> q = m.quantize(calib=(x for x, _ in loader), method="entropy")
    /// >>> q = m.quantize(mode="dynamic")
    /// >>> exe = q.compile(); q.export_onnx("int8.onnx")
    #[pyo3(signature = (calib = None, *, mode = "int8", method = None, per_channel = None, symmetric = None,
        qconfig = None, profile = None, calib_batch = 50, min_sqnr = None, smooth = None, opt_level = 2))]
    #[allow(clippy::too_many_arguments)]
    fn quantize(
        slf: &Bound<'_, Model>,
        calib: Option<&Bound<'_, PyAny>>,
        mode: &str,
        method: Option<&str>,
        per_channel: Option<bool>,
        symmetric: Option<bool>,
        qconfig: Option<&Bound<'_, PyAny>>,
        profile: Option<&Bound<'_, PyAny>>,
        calib_batch: i64,
        min_sqnr: Option<f64>,
        smooth: Option<f64>,
        opt_level: i64,
    ) -> PyResult<Staged> {
        let py = slf.py();
        let m = slf.get();
        guard(py, || {
            m.not_artifact("quantize()")?;
            let mode = options::quantize_mode(mode)?;
            let mut p = m.base_options();
            p.quantize = mode;
            p.calib_method = method.map(options::calib_method).transpose()?;
            set_scheme(&mut p, per_channel, symmetric);
            p.profile = profile_arg(profile)?;
            p.calib_batch = options::count("calib_batch", calib_batch)?;
            p.min_sqnr = options::min_sqnr(min_sqnr)?;
            p.smooth = options::smooth(smooth)?;
            p.opt_level = options::opt_level(opt_level)?;
            let opts = Options { pipeline: p, qconfig: qconfig_arg(qconfig)? };
            let calib = calib.map(PyCalib::new).transpose()?.map(Arc::new);
            if mode == QuantizeMode::Int8 && calib.is_none() {
                return Err(Error::from_anyhow(
                    CalibData(
                        "quantize(mode=\"int8\") needs calibration data: pass calib= (an array, a dict of arrays \
                               or an iterable of batches), or use mode=\"dynamic\""
                            .into(),
                    )
                    .into(),
                    Kind::Calibration,
                ));
            }
            Staged::run(slf, opts, calib, if mode == QuantizeMode::Int8 { "int8" } else { "dynamic" })
        })
    }

    /// Assigns floating-point precision: "fp16", "bf16" or "amp" (FP16 where the AMP rules and the
    /// hardware profile allow it, the rest fp32); the stages up to the optimizer run now, as in
    /// `quantize`. As `--precision MODE` on the command line.
    ///
    /// profile: a shipped profile name or a TOML file ("host" by default).
    /// calib: calibration data (as in `quantize`): with fp16 it feeds the overflow guard; needed for
    ///     `min_sqnr`.
    /// min_sqnr: the accuracy guard: the fewest early ops kept fp32 for the output SQNR against fp32
    ///     to reach this many dB on `calib`.
    /// precision_config: a TOML file of AMP policy overrides (`--precision-config`).
    ///
    /// >>> exe = m.precision("fp16").compile()
    /// >>> s = m.precision("amp", profile="nvidia-xavier", calib=calib_x, min_sqnr=40)
    #[pyo3(signature = (mode, *, profile = None, calib = None, min_sqnr = None, precision_config = None,
        calib_batch = 50, opt_level = 2))]
    #[allow(clippy::too_many_arguments)]
    fn precision(
        slf: &Bound<'_, Model>,
        mode: &str,
        profile: Option<&Bound<'_, PyAny>>,
        calib: Option<&Bound<'_, PyAny>>,
        min_sqnr: Option<f64>,
        precision_config: Option<&Bound<'_, PyAny>>,
        calib_batch: i64,
        opt_level: i64,
    ) -> PyResult<Staged> {
        let py = slf.py();
        let m = slf.get();
        guard(py, || {
            m.not_artifact("precision()")?;
            let mut p = m.base_options();
            p.precision = options::precision(mode)?;
            p.profile = profile_arg(profile)?;
            p.min_sqnr = options::min_sqnr(min_sqnr)?;
            p.precision_config = precision_config.map(as_path).transpose()?;
            p.calib_batch = options::count("calib_batch", calib_batch)?;
            p.opt_level = options::opt_level(opt_level)?;
            let calib = calib.map(PyCalib::new).transpose()?.map(Arc::new);
            if p.min_sqnr.is_some() && calib.is_none() {
                return Err(Error::from_anyhow(
                    CalibData("precision(min_sqnr=...) measures on calibration data: pass calib=".into()).into(),
                    Kind::Calibration,
                ));
            }
            let name = match p.precision {
                Precision::Fp32 => "fp32",
                Precision::Fp16 => "fp16",
                Precision::Bf16 => "bf16",
                Precision::Amp => "amp",
            };
            Staged::run(slf, Options::new(p), calib, name)
        })
    }

    /// Compiles the model as it is (fp32, or the model's own Q/DQ) through the whole pipeline and
    /// returns an `Executable`. For an artifact, runs its stored graph: only `threads`, `engine` and
    /// `kernels` apply.
    ///
    /// threads: threads per kernel (1 to 256). engine: "jit" (Cranelift) or "interp" (the reference
    /// interpreter). kernels: "native" (AVX-512/AVX2 microkernels) or "cranelift".
    ///
    /// >>> exe = qforge.load("digits_cnn.onnx").compile(threads=2)
    /// >>> exe = qforge.load("digits_int8.qfa").compile()
    #[pyo3(signature = (*, threads = 1, engine = "jit", kernels = "native", opt_level = 2, profile = None))]
    fn compile(
        slf: &Bound<'_, Model>,
        threads: i64,
        engine: &str,
        kernels: &str,
        opt_level: i64,
        profile: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Executable> {
        let py = slf.py();
        let m = slf.get();
        guard(py, || {
            let t0 = Instant::now();
            let mut p = m.base_options();
            p.threads = options::threads(threads)?;
            p.engine = options::engine(engine)?;
            p.kernels = options::kernels(kernels)?;
            if let Some(h) = &m.header {
                // an artifact runs its stored graph; only how it runs can change
                if opt_level != 2 || profile.is_some() {
                    return Err(Error::from_anyhow(
                        BadOption(format!(
                            "{} is a compiled artifact: opt_level and profile were fixed when it was compiled",
                            m.display_name()
                        ))
                        .into(),
                        Kind::Option,
                    ));
                }
                let rt = options::runtime_only(&p);
                let c = Compiler::new(rt).map_err(|e| Error::from_anyhow(e, Kind::Option))?;
                let exe = c.executable(m.graph.clone());
                // saving it again keeps the artifact's own header, options included
                return Ok(Executable::new(slf, c, exe, PipelineOptions::default(), h.profile.clone(), t0));
            }
            p.opt_level = options::opt_level(opt_level)?;
            p.profile = profile_arg(profile)?;
            let c = Options::new(p.clone()).compiler()?;
            let g = m.graph.clone();
            let exe = py.detach(|| {
                c.check(&g, None).map_err(|e| Error::from_anyhow(e, Kind::Option))?;
                c.compile(g).map_err(|e| Error::from_anyhow(e, Kind::Compile))
            })?;
            let profile = c.profile().name.clone();
            Ok(Executable::new(slf, c, exe, p, profile, t0))
        })
    }

    /// The sensitivity study (`qforge sensitivity`): each quantizable layer quantized alone to static
    /// INT8 (the rest float), ranked by the output's SQNR against fp32, least robust first; with
    /// `labels`, top-1 accuracy too. Returns a `Sensitivity` (rows of `SensitivityRow`).
    ///
    /// calib: calibration data (as in `quantize`); the study evaluates on it too unless `input` is
    ///     given, which needs a second pass (pass a re-iterable, not a generator).
    /// input: evaluation inputs (an array or a dict of arrays), in batches of `batch`.
    /// labels: integer labels of the evaluation samples.
    /// max_accuracy_drop: keep the most sensitive layers float until the top-1 drop is at most this
    ///     fraction (needs labels); min_sqnr: ... until the output SQNR reaches this many dB. Either
    ///     fills `kept_float`, `reached` and `qconfig` (the TOML text that keeps those layers float).
    /// The other options are `quantize`'s.
    ///
    /// >>> s = m.sensitivity(calib=calib_x, input=test_x, labels=test_y)
    /// >>> [(r.node, round(r.sqnr_db, 1)) for r in s.layers[:3]]
    #[pyo3(signature = (calib, *, labels = None, input = None, batch = 64, method = None, per_channel = None,
        symmetric = None, qconfig = None, profile = None, calib_batch = 50, max_accuracy_drop = None,
        min_sqnr = None, smooth = None))]
    #[allow(clippy::too_many_arguments)]
    fn sensitivity<'py>(
        slf: &Bound<'py, Model>,
        calib: &Bound<'py, PyAny>,
        labels: Option<&Bound<'py, PyAny>>,
        input: Option<&Bound<'py, PyAny>>,
        batch: i64,
        method: Option<&str>,
        per_channel: Option<bool>,
        symmetric: Option<bool>,
        qconfig: Option<&Bound<'py, PyAny>>,
        profile: Option<&Bound<'py, PyAny>>,
        calib_batch: i64,
        max_accuracy_drop: Option<f64>,
        min_sqnr: Option<f64>,
        smooth: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let m = slf.get();
        guard(py, || {
            m.not_artifact("sensitivity()")?;
            let mut p = m.base_options();
            p.quantize = QuantizeMode::Int8;
            p.calib_method = method.map(options::calib_method).transpose()?;
            set_scheme(&mut p, per_channel, symmetric);
            p.profile = profile_arg(profile)?;
            p.calib_batch = options::count("calib_batch", calib_batch)?;
            p.smooth = options::smooth(smooth)?;
            let min_sqnr = options::min_sqnr(min_sqnr)?;
            let batch = options::count("batch", batch)?;
            if max_accuracy_drop.is_some() && min_sqnr.is_some() {
                return Err(Error::from_anyhow(
                    BadOption("give max_accuracy_drop or min_sqnr, not both".into()).into(),
                    Kind::Option,
                ));
            }
            if max_accuracy_drop.is_some() && labels.is_none() {
                return Err(Error::from_anyhow(
                    BadOption("max_accuracy_drop needs labels=".into()).into(),
                    Kind::Option,
                ));
            }
            let labels = labels
                .map(|l| -> Result<Vec<usize>> {
                    let t = tensor_from_array(&as_array(l)?)?;
                    qforge::data::labels(&t).map_err(|e| Error::from_anyhow(e.context("labels"), Kind::Input))
                })
                .transpose()?;
            let opts = Options { pipeline: p, qconfig: qconfig_arg(qconfig)? };
            let mat = opts.materialize()?;
            let base = mat.pipeline.qconfig.clone();
            let calib = Arc::new(PyCalib::new(calib)?);
            let eval = input.map(PyCalib::new).transpose()?;
            let c = Compiler::new(mat.pipeline.clone())
                .map_err(|e| mat.rename_err(Error::from_anyhow(e, Kind::Option)))?
                .with_calibration(calib.clone());
            let g = m.graph.clone();
            type Kept = Option<(qforge::sensitivity::KeptFloat, String)>;
            let out = py.detach(|| -> Result<(qforge::sensitivity::Sensitivity, Kept)> {
                c.check(&g, Some(Stage::Calibrate)).map_err(|e| Error::from_anyhow(e, Kind::Option))?;
                let st = c.run_until(g, Stage::Calibrate, &mut |_, _| {})?;
                let batches: Vec<Vec<Tensor>> = match &eval {
                    Some(e) => e.stream(&st.graph, batch)?.collect::<anyhow::Result<_>>()?,
                    None => c.calib_batches_of(&st.graph, batch)?,
                };
                let samples: usize =
                    batches.iter().map(|b| b.first().map_or(0, |t| t.shape().first().copied().unwrap_or(0))).sum();
                if let Some(l) = &labels {
                    if l.len() != samples {
                        return Err(Error::new(
                            Kind::Input,
                            format!("{samples} evaluation samples but {} labels", l.len()),
                        ));
                    }
                }
                let study = qforge::sensitivity::prepare(&c, &st, &batches, labels.as_deref())?;
                let ranked = study.rank()?;
                let kept = if let Some(d) = max_accuracy_drop {
                    let k = study.keep_float_for_accuracy(&ranked, d)?;
                    let header = format!(
                        "# written by qforge's Model.sensitivity(max_accuracy_drop={d}): the {} most sensitive layers \
                         stay float\n# fp32 top-1 {:.4}, int8 top-1 with these layers float {:.4}\n",
                        k.layers.len(),
                        ranked.fp32_top1.unwrap_or(f64::NAN),
                        k.reached
                    );
                    Some((k, header))
                } else if let Some(db) = min_sqnr {
                    let k = study.keep_float_for_sqnr(&ranked, db)?;
                    let header = format!(
                        "# written by qforge's Model.sensitivity(min_sqnr={db}): the {} most sensitive layers stay \
                         float\n# output SQNR against fp32 with these layers float: {:.2} dB{}\n",
                        k.layers.len(),
                        k.reached,
                        if k.reached >= db { "" } else { " (the target was not reached)" }
                    );
                    Some((k, header))
                } else {
                    None
                };
                let kept = kept.map(|(k, header)| {
                    let text = qforge::qconfig::skip_rules_text(&header, &k.layers, c.qconfig(), base.as_deref());
                    (k, text)
                });
                Ok((ranked, kept))
            });
            let (ranked, kept) = out.map_err(|e| mat.rename_err(e))?;
            // built directly (not through JSON, which has no infinity: an exact layer's SQNR is inf)
            let layers = PyList::empty(py);
            for l in &ranked.layers {
                let r = PyDict::new(py);
                r.set_item("node", &l.node)?;
                r.set_item("op", l.op)?;
                r.set_item("from", l.from.clone())?;
                r.set_item("sqnr_db", l.sqnr_db)?;
                r.set_item("top1", l.top1)?;
                layers.append(r)?;
            }
            let d = PyDict::new(py);
            d.set_item("layers", layers)?;
            d.set_item("all_int8_sqnr_db", ranked.all_sqnr_db)?;
            d.set_item("all_int8_top1", ranked.all_top1)?;
            d.set_item("fp32_top1", ranked.fp32_top1)?;
            d.set_item("samples", ranked.samples)?;
            if let Some((k, text)) = kept {
                d.set_item("kept_float", k.layers)?;
                d.set_item("reached", k.reached)?;
                d.set_item("qconfig", text)?;
            }
            Ok(py.import("qforge")?.getattr("Sensitivity")?.call_method1("_from_dict", (d,))?)
        })
    }
}

/// A model through quantization or precision assignment (`Model.quantize`, `Model.precision`):
/// every stage up to the optimizer has run, and the compiler's state is kept, so `compile()`
/// resumes the pipeline where it stopped and `export_onnx()` writes the Q/DQ graph as it is.
///
/// >>> q = qforge.load("digits_cnn.onnx").quantize(calib=calib_x)
/// >>> q.stages
/// ['canonicalize', 'fold-batch-norm', 'calibrate', 'quantize']
/// >>> exe = q.compile(); q.export_onnx("digits_int8.onnx"); q.save("digits_int8.qfa")
#[pyclass(frozen, module = "qforge", name = "Staged")]
pub struct Staged {
    model: Py<Model>,
    opts: Options,
    compiler: Compiler,
    state: State,
    calib: Option<Arc<PyCalib>>,
    /// `int8`, `dynamic`, `fp16`, `bf16` or `amp`.
    what: &'static str,
}

impl Staged {
    /// Runs the pipeline of `opts` on `model` up to the optimizer, calibrating from `calib`.
    fn run(model: &Bound<'_, Model>, opts: Options, calib: Option<Arc<PyCalib>>, what: &'static str) -> Result<Staged> {
        let py = model.py();
        let m = model.get();
        let mat = opts.materialize()?;
        let mut c =
            Compiler::new(mat.pipeline.clone()).map_err(|e| mat.rename_err(Error::from_anyhow(e, Kind::Option)))?;
        if let Some(src) = &calib {
            c = c.with_calibration(src.clone() as Arc<dyn CalibSource>);
        }
        // the last stage before the optimizer: every stage that reads calibration data runs now
        let state = run_stages(py, &c, m.graph.clone(), Stage::AlignChannels).map_err(|e| mat.rename_err(e))?;
        Ok(Staged { model: model.clone().unbind(), opts, compiler: c, state, calib, what })
    }

    /// The graph after the whole pipeline (the optimizer resumed from the state).
    fn optimized(&self, py: Python<'_>) -> Result<Graph> {
        let st = self.state.clone();
        let c = &self.compiler;
        py.detach(|| c.resume(st, &mut |_, _| {}).map(|s| s.graph).map_err(|e| Error::from_anyhow(e, Kind::Compile)))
    }

    /// The options as the artifact header records them: the calibration data, which has no path
    /// here, described instead.
    fn header_options(&self) -> PipelineOptions {
        let mut p = self.opts.pipeline.clone();
        if let Some(QConfigArg::Path(q)) = &self.opts.qconfig {
            p.qconfig = Some(q.clone());
        }
        if let Some(c) = &self.calib {
            p.calib = Some(PathBuf::from(format!("<python: {}>", c.describe())));
        }
        p
    }
}

#[pymethods]
impl Staged {
    /// The model's inputs: `TensorInfo(name, dtype, shape)`.
    #[getter]
    fn inputs<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        inputs_of(py, &self.state.graph)
    }

    /// The model's outputs: `TensorInfo(name, dtype, shape)`.
    #[getter]
    fn outputs<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        outputs_of(py, &self.state.graph)
    }

    /// What was done: `int8`, `dynamic`, `fp16`, `bf16` or `amp`.
    #[getter]
    fn mode(&self) -> &'static str {
        self.what
    }

    /// The stages run so far, by name.
    #[getter]
    fn stages(&self) -> Vec<&'static str> {
        self.state.done.iter().map(|s| s.name()).collect()
    }

    /// Each pass's report so far: name, whether it changed the graph, time, counters and notes.
    #[getter]
    fn passes<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        self.state
            .reports
            .iter()
            .map(|r| {
                let d = PyDict::new(py);
                d.set_item("pass", &r.pass)?;
                d.set_item("changed", r.changed)?;
                d.set_item("time_ms", r.time.as_secs_f64() * 1e3)?;
                d.set_item("stats", r.stats.clone().into_iter().collect::<Vec<_>>())?;
                d.set_item("notes", r.notes.clone())?;
                Ok(d.into_any())
            })
            .collect()
    }

    /// The calibration warnings (ranges that clip far more than min-max, or lose far more of the
    /// tensor), one line each.
    #[getter]
    fn warnings(&self) -> Vec<String> {
        self.state.calibration.as_ref().map(|c| c.warnings.iter().map(|w| w.to_string()).collect()).unwrap_or_default()
    }

    /// The IR text of the graph so far (Q/DQ or casts in place, not yet optimized); `full=True`
    /// prints every constant.
    #[pyo3(signature = (full = false))]
    fn ir(&self, py: Python<'_>, full: bool) -> PyResult<String> {
        guard(py, || ir_text(&self.state.graph, full))
    }

    /// A summary of the graph so far, with `qforge inspect --json`'s keys.
    fn summary<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        guard(py, || summary(py, &self.state.graph))
    }

    fn __repr__(&self) -> String {
        let stages: Vec<&str> = self.state.done.iter().map(|s| s.name()).collect();
        format!(
            "<qforge.Staged {} ({}): {}; stages run: {}>",
            self.state.graph.name,
            self.what,
            signature(&self.state.graph),
            stages.join(", ")
        )
    }

    /// Resumes the pipeline (the optimizer: Q/DQ into fused integer kernels, batch-norm folding,
    /// fusion) and returns an `Executable` with these run-time options (as `Model.compile`).
    ///
    /// >>> exe = q.compile(threads=2)
    #[pyo3(signature = (*, threads = 1, engine = "jit", kernels = "native"))]
    fn compile(&self, py: Python<'_>, threads: i64, engine: &str, kernels: &str) -> PyResult<Executable> {
        guard(py, || {
            let t0 = Instant::now();
            let mut rt = options::runtime_only(&self.opts.pipeline);
            rt.threads = options::threads(threads)?;
            rt.engine = options::engine(engine)?;
            rt.kernels = options::kernels(kernels)?;
            let g = self.optimized(py)?;
            let c = Compiler::new(rt).map_err(|e| Error::from_anyhow(e, Kind::Option))?;
            let exe = c.executable(g);
            let model = self.model.bind(py);
            Ok(Executable::new(model, c, exe, self.header_options(), self.compiler.profile().name.clone(), t0))
        })
    }

    /// The Q/DQ graph as an ONNX model other runtimes run (what `qforge quantize -o OUT.onnx` writes):
    /// written to `path`, or returned as bytes without one.
    ///
    /// >>> q.export_onnx("digits_int8.onnx")
    /// >>> sess = onnxruntime.InferenceSession(q.export_onnx())
    #[pyo3(signature = (path = None))]
    fn export_onnx<'py>(
        &self,
        py: Python<'py>,
        path: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        guard(py, || {
            let path = path.map(as_path).transpose()?;
            if let Some(p) = &path {
                qforge::files::check_output(p, "path").map_err(|e| Error::from_anyhow(e, Kind::File))?;
            }
            let g = &self.state.graph;
            let bytes = py
                .detach(|| qforge::onnx::export::export_qdq(g))
                .map_err(|e| Error::from_anyhow(e.into(), Kind::Compile))?;
            match path {
                Some(p) => {
                    qforge::files::write(&p, &bytes).map_err(|e| Error::from_anyhow(e, Kind::File))?;
                    Ok(None)
                }
                None => Ok(Some(PyBytes::new(py, &bytes))),
            }
        })
    }

    /// Finishes the pipeline and saves the compiled graph as an artifact (`.qfa`, what `qforge
    /// compile -o` writes): `qforge.load(path)` and the CLI's run, eval, bench and inspect run it
    /// without the pipeline.
    ///
    /// >>> q.save("digits_int8.qfa"); exe = qforge.load("digits_int8.qfa").compile()
    fn save(&self, py: Python<'_>, path: &Bound<'_, PyAny>) -> PyResult<()> {
        guard(py, || {
            let path = as_path(path)?;
            let g = self.optimized(py)?;
            save_artifact(
                py,
                self.model.bind(py).get(),
                g,
                &self.header_options(),
                &self.compiler.profile().name,
                &path,
            )
        })
    }

    /// Writes the HTML report of `qforge report` for the model under these options: summary, passes,
    /// per-node precision, fusion, per-layer sensitivity, per-kernel latency, size, accuracy against
    /// fp32. Returns its accuracy figures as a dict (`sqnr_db`, `cosine`, `compiled_top1`, ...).
    ///
    /// calib: the calibration data (default: the data this model was quantized with; needed for a
    ///     dynamic or precision model); it is written to a temporary file with the evaluation inputs
    ///     and labels, since the report reads files, as the command does (a model with one input).
    /// input, labels: the evaluation set (default: the calibration data, no labels).
    ///
    /// >>> q.report("digits.html", input=test_x, labels=test_y)
    #[pyo3(signature = (path, *, calib = None, input = None, labels = None, sensitivity_samples = 100,
        latency_iters = 20, batch = 64))]
    #[allow(clippy::too_many_arguments)]
    fn report<'py>(
        &self,
        py: Python<'py>,
        path: &Bound<'py, PyAny>,
        calib: Option<&Bound<'py, PyAny>>,
        input: Option<&Bound<'py, PyAny>>,
        labels: Option<&Bound<'py, PyAny>>,
        sensitivity_samples: i64,
        latency_iters: i64,
        batch: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        guard(py, || {
            let out = as_path(path)?;
            let ext = out.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
            if ext != "html" && ext != "htm" {
                return Err(Error::from_anyhow(
                    BadOption(format!("`{}`: the report is HTML; give a .html path", out.display())).into(),
                    Kind::Option,
                ));
            }
            qforge::files::check_output(&out, "path").map_err(|e| Error::from_anyhow(e, Kind::File))?;
            let sensitivity_samples = usize::try_from(sensitivity_samples)
                .map_err(|_| Error::new(Kind::Option, "sensitivity_samples must be at least 0"))?;
            let args_batch = options::count("batch", batch)?;
            let latency_iters = options::count("latency_iters", latency_iters)?;
            let m = self.model.bind(py).get();
            let g = &m.graph;
            // The report reads its data from files, as `qforge report` does: the calibration set,
            // the evaluation inputs and labels are written to a temporary directory first.
            let calib = match calib {
                Some(c) => Arc::new(PyCalib::new(c)?),
                None => self.calib.clone().ok_or_else(|| {
                    Error::from_anyhow(
                        CalibData("the report measures on calibration data: pass calib=".into()).into(),
                        Kind::Calibration,
                    )
                })?,
            };
            let mut mat = self.opts.materialize()?;
            let dir = match &mat.dir {
                Some(d) => d.path().to_path_buf(),
                None => {
                    let d = tempfile::Builder::new()
                        .prefix("qforge-py-")
                        .tempdir()
                        .map_err(|e| Error::new(Kind::File, format!("cannot create a temporary directory: {e}")))?;
                    let p = d.path().to_path_buf();
                    mat.dir = Some(d);
                    p
                }
            };
            let write_npy = |name: &str, t: &Tensor| -> Result<PathBuf> {
                let p = dir.join(name);
                qforge::npy::write(&p, t).map_err(|e| Error::from_anyhow(e.into(), Kind::File))?;
                Ok(p)
            };
            let model_path = match &m.origin {
                Origin::Path(p) => p.clone(),
                Origin::Bytes { name, bytes } => {
                    let p = dir.join(format!("{}.onnx", if name.is_empty() { "model" } else { name.as_str() }));
                    std::fs::write(&p, bytes.bind(py).as_bytes())
                        .map_err(|e| Error::new(Kind::File, format!("cannot write `{}`: {e}", p.display())))?;
                    p
                }
            };
            let calib_batch = mat.pipeline.calib_batch;
            let set =
                py.detach(|| calib.collect(g, calib_batch)).map_err(|e| Error::from_anyhow(e, Kind::Calibration))?;
            let [set] = <[Tensor; 1]>::try_from(set).map_err(|s| {
                Error::new(Kind::Input, format!("report needs a model with one input; this one has {}", s.len()))
            })?;
            mat.pipeline.calib = Some(write_npy("calib.npy", &set)?);
            let input = input
                .map(|x| -> Result<PathBuf> { write_npy("input.npy", &tensor_from_array(&as_array(x)?)?) })
                .transpose()?;
            let labels = labels
                .map(|x| -> Result<PathBuf> { write_npy("labels.npy", &tensor_from_array(&as_array(x)?)?) })
                .transpose()?;
            let args = qforge::report::ReportArgs {
                output: out.clone(),
                input,
                labels,
                sensitivity_samples,
                latency_iters,
                batch: args_batch,
            };
            let pipeline = mat.pipeline.clone();
            let report = py
                .detach(|| qforge::report::Report::build(&model_path, &args, pipeline, Compiler::new))
                .map_err(|e| mat.rename_err(Error::from_anyhow(e, Kind::Compile)))?;
            let html = report.to_html();
            qforge::files::write(&out, html.as_bytes()).map_err(|e| Error::from_anyhow(e, Kind::File))?;
            let a = &report.accuracy;
            let d = PyDict::new(py);
            d.set_item("path", out.display().to_string())?;
            d.set_item("samples", a.samples)?;
            d.set_item("sqnr_db", a.sqnr_db)?;
            d.set_item("cosine", a.cosine)?;
            d.set_item("max_abs_diff", a.max_abs_diff)?;
            d.set_item("argmax_agreement", a.argmax_agreement)?;
            d.set_item("compiled_top1", a.compiled_top1)?;
            d.set_item("fp32_top1", a.fp32_top1)?;
            Ok(d.into_any())
        })
    }
}

/// Saves `g` (the pipeline's output for `model` under `opts`) as an artifact at `path`.
fn save_artifact(
    py: Python<'_>,
    model: &Model,
    g: Graph,
    opts: &PipelineOptions,
    profile: &str,
    path: &Path,
) -> Result<()> {
    if !artifact::is_artifact(path) {
        return Err(Error::from_anyhow(
            BadOption(format!(
                "`{}`: artifacts are `.qfa` files (qforge.load knows them by that extension)",
                path.display()
            ))
            .into(),
            Kind::Option,
        ));
    }
    qforge::files::check_output(path, "path").map_err(|e| Error::from_anyhow(e, Kind::File))?;
    let header = match (&model.header, &model.origin) {
        // an artifact saved again keeps where it came from
        (Some(h), _) => h.clone(),
        (None, Origin::Path(p)) => {
            let bytes =
                std::fs::read(p).map_err(|e| Error::new(Kind::File, format!("cannot read `{}`: {e}", p.display())))?;
            header_for(
                p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                &bytes,
                opts,
                profile,
            )?
        }
        (None, Origin::Bytes { name, bytes }) => {
            header_for(format!("{name}.onnx"), bytes.bind(py).as_bytes(), opts, profile)?
        }
    };
    let a = Artifact { header, graph: g };
    py.detach(|| a.save(path)).map_err(|e| Error::from_anyhow(e, Kind::File))
}

/// An artifact header as `Artifact::new` makes it (its counts are filled in when it is written).
fn header_for(model: String, bytes: &[u8], opts: &PipelineOptions, profile: &str) -> Result<Header> {
    Ok(Header {
        format_version: artifact::FORMAT_VERSION,
        qforge_version: qforge_version(),
        model,
        model_digest: format!("fnv1a64:{:016x}", artifact::fnv1a64(bytes)),
        pipeline: serde_json::to_value(opts).map_err(|e| Error::new(Kind::Internal, e))?,
        profile: profile.to_string(),
        graph_inputs: 0,
        constants: 0,
        constant_bytes: 0,
        payload_bytes: 0,
    })
}

/// The version of the qforge library this package wraps (they are released together).
pub fn qforge_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// A compiled model (`compile()`): runs NumPy arrays, with the GIL released while the graph runs,
/// so Python threads can run one executable concurrently.
///
/// >>> exe = qforge.load("digits_cnn.onnx").compile()
/// >>> logits = exe.run(x)        # or exe(x); a list or a dict by name for several inputs
/// >>> exe.bench(batch=[1, 8]).median_ms
#[pyclass(frozen, module = "qforge", name = "Executable")]
pub struct Executable {
    exe: qforge::Executable,
    /// The compiler with the run-time options (engine, threads, kernels, size limit).
    compiler: Compiler,
    model: Py<Model>,
    /// The pipeline options the graph was compiled with (for an artifact's header).
    pipeline: PipelineOptions,
    profile: String,
    compile_ms: f64,
}

impl Executable {
    fn new(
        model: &Bound<'_, Model>,
        compiler: Compiler,
        exe: qforge::Executable,
        pipeline: PipelineOptions,
        profile: String,
        t0: Instant,
    ) -> Executable {
        Executable {
            exe,
            compiler,
            model: model.clone().unbind(),
            pipeline,
            profile,
            compile_ms: t0.elapsed().as_secs_f64() * 1e3,
        }
    }

    fn run_inner<'py>(&self, py: Python<'py>, inputs: &Bound<'py, PyAny>) -> Result<Bound<'py, PyAny>> {
        let g = self.exe.graph();
        let x = bind_inputs(g, inputs, "input", false)?;
        let exe = &self.exe;
        let ys = py.detach(|| exe.run(&x)).map_err(|e| {
            // the engine checks the inputs first; its message wraps the graph's own check, which
            // the CLI prints as it is
            match qforge_ir::interp::check_inputs(g, &x) {
                Err(bad) => Error::from_anyhow(anyhow::Error::new(bad), Kind::Input),
                Ok(()) => Error::from_anyhow(e, Kind::Compile),
            }
        })?;
        if ys.len() == 1 {
            let y = ys.into_iter().next().ok_or_else(|| Error::new(Kind::Internal, "no output"))?;
            return array_from_tensor(py, y);
        }
        let outs = ys.into_iter().map(|y| array_from_tensor(py, y)).collect::<Result<Vec<_>>>()?;
        Ok(PyList::new(py, outs)?.into_any())
    }
}

#[pymethods]
impl Executable {
    /// The model's inputs: `TensorInfo(name, dtype, shape)`.
    #[getter]
    fn inputs<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        inputs_of(py, self.exe.graph())
    }

    /// The model's outputs: `TensorInfo(name, dtype, shape)`.
    #[getter]
    fn outputs<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        outputs_of(py, self.exe.graph())
    }

    /// "jit" or "interp".
    #[getter]
    fn engine(&self) -> &'static str {
        match self.exe.engine() {
            qforge::options::Engine::Jit => "jit",
            qforge::options::Engine::Interp => "interp",
        }
    }

    /// Threads per kernel.
    #[getter]
    fn threads(&self) -> u16 {
        self.compiler.options().threads
    }

    /// How long `compile()` took, in milliseconds.
    #[getter]
    fn compile_ms(&self) -> f64 {
        self.compile_ms
    }

    /// Runs the model. `inputs`: one array (a model with one input), a list or tuple of arrays (one
    /// per input, in order), or a dict by input name; each array's dtype must be the input's (a
    /// float64 array is refused: cast it). Returns the output array, or a list of them for a model
    /// with several outputs. The input is copied once into the engine's tensor; the output's memory
    /// is handed to NumPy without a copy. The GIL is released while the graph runs.
    ///
    /// >>> logits = exe.run(np.load("digits_test_x.npy"))
    /// >>> y = exe({"input_ids": ids, "attention_mask": mask})
    fn run<'py>(&self, py: Python<'py>, inputs: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        guard(py, || self.run_inner(py, inputs))
    }

    /// `exe(x)` is `exe.run(x)`.
    fn __call__<'py>(&self, py: Python<'py>, inputs: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        guard(py, || self.run_inner(py, inputs))
    }

    /// The IR text of the compiled graph (`qforge inspect --ir` with the same options).
    #[pyo3(signature = (full = false))]
    fn ir(&self, py: Python<'_>, full: bool) -> PyResult<String> {
        guard(py, || ir_text(self.exe.graph(), full))
    }

    /// A summary of the compiled graph, with `qforge inspect --json`'s keys.
    fn summary<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        guard(py, || summary(py, self.exe.graph()))
    }

    fn __repr__(&self) -> String {
        format!(
            "<qforge.Executable {} ({}, {} thread(s)): {}>",
            self.exe.graph().name,
            self.engine(),
            self.threads(),
            signature(self.exe.graph())
        )
    }

    /// Measures latency as `qforge bench` does (warm-up runs, then timed runs of one inference each)
    /// and returns a `BenchReport` with `qforge bench --json`'s keys (median_ms, p99_ms, batch,
    /// threads, throughput, sweep, best_batch, ...).
    ///
    /// batch: a batch size or a list of them (a sweep; default 1). iters: timed runs per batch size
    /// (30). warmup: untimed runs first (5). input: the inputs' data as `run` takes them (one
    /// array, a list, or a dict by input name), whose first rows are used (default: a fixed
    /// pseudo-random normal input, f32 inputs only). profile_kernels: time each kernel (the first
    /// batch size).
    ///
    /// >>> r = exe.bench(batch=[1, 8], iters=50); r.median_ms, r.best_batch
    #[pyo3(signature = (batch = None, *, iters = 30, warmup = 5, input = None, profile_kernels = false))]
    fn bench<'py>(
        &self,
        py: Python<'py>,
        batch: Option<&Bound<'py, PyAny>>,
        iters: i64,
        warmup: i64,
        input: Option<&Bound<'py, PyAny>>,
        profile_kernels: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        guard(py, || {
            let batch: Vec<i64> = match batch {
                None => vec![1],
                Some(b) => match b.extract::<i64>() {
                    Ok(n) => vec![n],
                    Err(_) => b.extract::<Vec<i64>>().map_err(|_| {
                        Error::from_anyhow(BadOption("batch: an int or a list of ints".into()).into(), Kind::Option)
                    })?,
                },
            };
            if batch.is_empty() {
                return Err(Error::from_anyhow(BadOption("batch names no batch size".into()).into(), Kind::Option));
            }
            let args = qforge::bench::BenchArgs {
                batch: batch.iter().map(|&b| options::count("batch", b)).collect::<Result<_>>()?,
                iters: options::count("iters", iters)?,
                warmup: usize::try_from(warmup).map_err(|_| Error::new(Kind::Option, "warmup must be at least 0"))?,
                input: vec![],
                profile_kernels,
                json: true,
                max_latency_ms: None,
            };
            // every input's data, as `run` takes it; none given: generated (f32 inputs only)
            let data: Vec<Option<Tensor>> = match input {
                Some(x) => bind_inputs(self.exe.graph(), x, "input", false)?.into_iter().map(Some).collect(),
                None => vec![],
            };
            let model = self.model.bind(py).get().report_name();
            let (c, exe, ms) = (&self.compiler, &self.exe, self.compile_ms);
            let report = py
                .detach(|| qforge::bench::measure(&model, c, exe, &args, &data, ms))
                .map_err(|e| Error::from_anyhow(e, Kind::Compile))?;
            let v = serde_json::to_value(&report).map_err(|e| Error::new(Kind::Internal, e))?;
            let d = json_to_py(py, &v)?;
            Ok(py.import("qforge")?.getattr("BenchReport")?.call_method1("_from_dict", (d,))?)
        })
    }

    /// The Rust API's own time for one run, for measuring what the Python layer adds: `inputs` are
    /// bound once, then `qforge::Executable::run` is called `iters` times in a Rust loop (the GIL
    /// released) and each call timed alone. Returns the times in seconds.
    #[pyo3(signature = (inputs, iters = 1000))]
    fn _rust_run_times(&self, py: Python<'_>, inputs: &Bound<'_, PyAny>, iters: i64) -> PyResult<Vec<f64>> {
        guard(py, || {
            let iters = options::count("iters", iters)?;
            let x = bind_inputs(self.exe.graph(), inputs, "input", false)?;
            let exe = &self.exe;
            py.detach(|| {
                let mut times = Vec::with_capacity(iters);
                for _ in 0..iters {
                    let t0 = Instant::now();
                    let y = exe.run(&x)?;
                    times.push(t0.elapsed().as_secs_f64());
                    drop(y);
                }
                Ok(times)
            })
            .map_err(|e: anyhow::Error| Error::from_anyhow(e, Kind::Compile))
        })
    }

    /// Saves the compiled graph as an artifact (`.qfa`); `qforge.load(path).compile()` runs it.
    fn save(&self, py: Python<'_>, path: &Bound<'_, PyAny>) -> PyResult<()> {
        guard(py, || {
            let path = as_path(path)?;
            save_artifact(py, self.model.bind(py).get(), self.exe.graph().clone(), &self.pipeline, &self.profile, &path)
        })
    }
}
