//! The [`Compiler`]: every option resolved once, and the one list of stages a model goes through.
//!
//! ```
//! use qforge::{Compiler, PipelineOptions};
//! # let assets = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
//! # let (model, samples) = (assets.join("digits_cnn.onnx"), assets.join("digits_samples_x.npy"));
//! // model = "digits_cnn.onnx", samples = "digits_samples_x.npy" (bundled in compiler/assets/)
//! let graph = qforge::load_model(&model)?;
//! let exe = Compiler::new(PipelineOptions::default())?.compile(graph)?;
//! let x = qforge::npy::read(&samples)?;
//! let logits = exe.run_batched(&x, 64)?;
//! assert_eq!(logits.shape(), &[200, 10]);
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! [`Compiler::new`] reads and checks every option once: the qconfig merged with the flags, the
//! hardware profile, the precision configuration, and the evaluator every graph-running stage
//! uses (built with the user's engine, threads, kernels and size limit). The calibration file is
//! read once, the first time a stage needs it, and kept.
//!
//! [`Compiler::stages`] is the pipeline: the [`Stage`]s the options select, in DESIGN.md's order.
//! Whoever needs part of it (the sensitivity study, the HTML report) runs a prefix of that list
//! with [`Compiler::run_until`] and may [`Compiler::resume`] it to the end; nothing assembles the
//! stages a second time.

use crate::calib_set::{CalibBatches, CalibSource, LazyFile};
use crate::evaluator::EngineEvaluator;
use crate::options::{Engine, PipelineOptions, Precision, QuantizeMode};
use crate::qconfig::QConfigFile;
use crate::stages;
use anyhow::{bail, Context, Result};
use qforge_codegen::JitExecutable;
use qforge_ir::interp::{self, RunOptions};
use qforge_ir::{Graph, Tensor};
use qforge_passes::precision::{profile, PrecisionConfig, Profile, ProfileError};
use qforge_passes::quantize::{Calibration, QConfig};
use qforge_passes::{PassContext, PassReport};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Loads a model by its extension: `.onnx` (imported) or `.qir` (the IR text form). A compiled
/// artifact (`.qfa`) is not a model to compile: see [`crate::artifact::prepare`].
pub fn load_model(path: &Path) -> Result<Graph> {
    load_model_limited(path, crate::options::DEFAULT_MAX_TENSOR_BYTES)
}

/// [`load_model`] with the largest tensor the importer may build (`--max-tensor-bytes`).
pub fn load_model_limited(path: &Path, max_tensor_bytes: u64) -> Result<Graph> {
    load_model_specialized(path, max_tensor_bytes, &BTreeMap::new())
}

/// [`load_model_limited`], with the ONNX graph inputs of `specialize` imported as the constants
/// given (`--specialize`; see [`crate::onnx::ImportOptions::specialize`]). An import error is the
/// [`crate::onnx::ImportError`] itself (no context), so callers can look at it.
pub fn load_model_specialized(
    path: &Path,
    max_tensor_bytes: u64,
    specialize: &BTreeMap<String, Arc<Tensor>>,
) -> Result<Graph> {
    if path.is_dir() {
        bail!("`{}` is a directory; give a model file (.onnx, .qir or .qfa)", path.display());
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let t = std::time::Instant::now();
    let g = match ext.as_str() {
        "onnx" => {
            let opts = crate::onnx::ImportOptions::default()
                .with_max_tensor_bytes(max_tensor_bytes)
                .with_specialize(specialize.clone());
            crate::onnx::import_file_with(path, &opts)?
        }
        "qir" if !specialize.is_empty() => bail!(
            "--specialize applies to ONNX models (it specializes them at import); `{}` is IR text",
            path.display()
        ),
        "qir" => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read `{}`", path.display()))?;
            qforge_ir::text::parse(&text).with_context(|| format!("`{}`", path.display()))?
        }
        "qfa" => bail!(
            "`{}` is a compiled artifact: its graph is already optimized, so it runs as is with run, eval, bench, \
             inspect and diff; other commands need the source model",
            path.display()
        ),
        _ => bail!("`{}`: unknown model format (expected a .onnx model or a .qir IR text file)", path.display()),
    };
    tracing::info!(
        "imported `{}`: {} nodes, {} inputs, {} outputs in {:.1} ms",
        path.display(),
        g.node_count(),
        g.inputs().len(),
        g.outputs().len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    Ok(g)
}

/// This CPU as the JIT computes on it: bf16 arithmetic only where the JIT runs the bf16 kernels
/// by default ([`qforge_codegen::JitOptions::bf16_compute`]).
pub fn host_profile() -> Profile {
    Profile::host_for(qforge_codegen::JitOptions::default().bf16_compute())
}

/// `--profile NAME|FILE`: a shipped profile by name, else a TOML file; `host` when not given.
pub fn resolve_profile(arg: Option<&str>) -> Result<Profile> {
    let Some(arg) = arg else { return Ok(host_profile()) };
    if arg == "host" {
        return Ok(host_profile());
    }
    if profile::shipped_names().contains(&arg) {
        return Ok(Profile::shipped(arg)?);
    }
    let path = Path::new(arg);
    if !path.exists() {
        if arg.ends_with(".toml") || arg.contains(std::path::MAIN_SEPARATOR) {
            bail!(
                "hardware profile file `{arg}` does not exist (shipped profiles: {})",
                profile::shipped_names().join(", ")
            );
        }
        return Err(ProfileError::Unknown { name: arg.to_string() }.into());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read profile `{}`", path.display()))?;
    Ok(Profile::parse(&text, &path.display().to_string())?)
}

/// The precision configuration of `opts` (`--precision`, `--precision-config`, the qconfig's
/// fp16/bf16 regions, `--min-sqnr`), checked against the profile.
fn precision_config(opts: &PipelineOptions, qconfig: &QConfig, profile: &Profile) -> Result<Option<PrecisionConfig>> {
    let regions = opts.qconfig.as_ref().map(|_| qconfig.clone());
    let name = match opts.precision {
        Precision::Fp32 => {
            let Some(q) = regions.filter(PrecisionConfig::has_low_regions) else {
                if opts.min_sqnr.is_some() && opts.quantize != QuantizeMode::Int8 {
                    bail!(
                        "--min-sqnr keeps ops at higher precision: it needs --quantize int8 or --precision fp16, bf16 \
                         or amp (or qconfig fp16/bf16 regions)"
                    );
                }
                return Ok(None);
            };
            let mut c = PrecisionConfig::regions_only(q);
            c.policy.min_sqnr_db = opts.min_sqnr;
            return Ok(Some(c));
        }
        Precision::Fp16 => "fp16",
        Precision::Bf16 => "bf16",
        Precision::Amp => "amp",
    };
    let mut c = qforge_passes::precision::config_for(name, profile).map_err(anyhow::Error::msg)?;
    if let Some(path) = &opts.precision_config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read precision config `{}`", path.display()))?;
        c.policy.apply_overrides(&text, &path.display().to_string()).map_err(anyhow::Error::msg)?;
    }
    if opts.min_sqnr.is_some() {
        c.policy.min_sqnr_db = opts.min_sqnr;
    }
    c.regions = regions;
    Ok(Some(c))
}

/// One stage of the pipeline, in the order [`Compiler::stages`] lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Identity removal, constant folding, dead code, then transposed convolutions with constant
    /// weights as convolutions (`conv-transpose-as-conv`) (`--opt-level 1` and up).
    Canonicalize,
    /// Batch norm folded into the convolution before it, ahead of quantization.
    FoldBatchNorm,
    /// SmoothQuant's scale migration, measured on the calibration set (`--smooth`, `[smoothquant]`).
    SmoothQuant,
    /// The calibration ranges of static INT8, observed on the calibration set.
    Calibrate,
    /// `--min-sqnr` with INT8: the most sensitive layers kept float until the output SQNR is met.
    FloatFallback,
    /// AdaRound: the weights of the layers whose rule says `rounding = "adaround"` (`--rounding
    /// adaround`) rounded as fitted on the calibration set.
    AdaRound,
    /// Bias correction, measured on the calibration set (`--bias-correction`, `[bias_correction]`).
    BiasCorrection,
    /// Q/DQ insertion (static) or dynamic quantization.
    Quantize,
    /// FP16/BF16/AMP assignment, with the overflow guard and the accuracy guard when asked.
    Precision,
    /// Channel padding to the profile's alignment (`--opt-level 1` and up).
    AlignChannels,
    /// The equality-saturation optimizer (`--opt-level 2`).
    Optimize,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Canonicalize => "canonicalize",
            Stage::FoldBatchNorm => "fold-batch-norm",
            Stage::SmoothQuant => "smooth-quant",
            Stage::Calibrate => "calibrate",
            Stage::FloatFallback => "float-fallback",
            Stage::AdaRound => "adaround",
            Stage::BiasCorrection => "bias-correction",
            Stage::Quantize => "quantize",
            Stage::Precision => "precision",
            Stage::AlignChannels => "align-channels",
            Stage::Optimize => "optimize",
        }
    }
}

/// A graph part-way through (or at the end of) the pipeline, with what the stages so far made.
#[derive(Clone, Debug)]
pub struct State {
    pub graph: Graph,
    /// Every pass's report, in order.
    pub reports: Vec<PassReport>,
    /// The calibration ranges (after [`Stage::Calibrate`]).
    pub calibration: Option<Calibration>,
    /// The quantization policy in force: the resolved qconfig, with the layers the float fallback
    /// chose kept float (after [`Stage::FloatFallback`]).
    pub qconfig: QConfig,
    /// The stages run so far.
    pub done: Vec<Stage>,
}

/// Makes a progress callback `(done, total)` for a long stage, given what it does and its unit:
/// commands install one that draws a bar; the library default draws nothing.
pub type ProgressFactory = Arc<dyn Fn(&str, &'static str) -> Box<dyn FnMut(usize, usize)> + Send + Sync>;

/// Strings the stages together according to [`PipelineOptions`], resolved once.
#[derive(Clone)]
pub struct Compiler {
    opts: PipelineOptions,
    qconfig: QConfig,
    qconfig_file: Option<QConfigFile>,
    profile: Profile,
    precision: Option<PrecisionConfig>,
    evaluator: EngineEvaluator,
    calib: Option<Arc<dyn CalibSource>>,
    progress: ProgressFactory,
}

impl std::fmt::Debug for Compiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiler").field("opts", &self.opts).field("profile", &self.profile.name).finish()
    }
}

impl Compiler {
    /// Resolves and checks the options: qconfig, profile, precision configuration, evaluator.
    pub fn new(opts: PipelineOptions) -> Result<Compiler> {
        if opts.smooth.is_some() && opts.quantize != QuantizeMode::Int8 {
            bail!("--smooth needs --quantize int8 (SmoothQuant is calibrated on --calib before static quantization)");
        }
        if opts.min_sqnr.is_some() && opts.quantize == QuantizeMode::Dynamic {
            bail!("--min-sqnr with --quantize dynamic is not supported: use --quantize int8 with --calib");
        }
        let (qconfig, qconfig_file) = crate::qconfig::resolve(&opts)?;
        let profile = resolve_profile(opts.profile.as_deref())?;
        let precision = precision_config(&opts, &qconfig, &profile)?;
        let evaluator = EngineEvaluator::new(&opts);
        let opts_calib = opts.calib.as_deref().map(|p| Arc::new(LazyFile::new(p)) as Arc<dyn CalibSource>);
        tracing::debug!("pipeline options: {opts:?}; hardware profile `{}`", profile.name);
        Ok(Compiler {
            opts,
            qconfig,
            qconfig_file,
            profile,
            precision,
            evaluator,
            calib: opts_calib,
            progress: Arc::new(|_, _| Box::new(|_, _| {})),
        })
    }

    /// Loads the model at `path` ([`load_model`]) with the pipeline's size limit and
    /// `--specialize` values.
    pub fn load(&self, path: &Path) -> Result<Graph> {
        load_model_specialized(path, self.opts.max_tensor_bytes, &self.opts.specialize_values()?)
    }

    /// Reports the progress of long stages (calibration, the sensitivity study) through `f`.
    pub fn with_progress(mut self, f: ProgressFactory) -> Compiler {
        self.progress = f;
        self
    }

    /// A progress callback for a long stage.
    pub fn progress(&self, what: &str, unit: &'static str) -> Box<dyn FnMut(usize, usize)> {
        (self.progress)(what, unit)
    }

    pub fn options(&self) -> &PipelineOptions {
        &self.opts
    }

    /// The hardware profile the pipeline targets (the optimizer's cost table).
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The quantization policy: `--qconfig` with the flags on top.
    pub fn qconfig(&self) -> &QConfig {
        &self.qconfig
    }

    /// The precision configuration (`--precision` other than fp32, or qconfig regions).
    pub fn precision(&self) -> Option<&PrecisionConfig> {
        self.precision.as_ref()
    }

    /// The engine every graph-running stage uses.
    pub fn evaluator(&self) -> &EngineEvaluator {
        &self.evaluator
    }

    /// The settings every pass reads.
    pub fn pass_context(&self) -> PassContext {
        PassContext { verify: true, max_tensor_bytes: self.opts.tensor_limit() }
    }

    /// Whether calibration data is at hand (`--calib` or [`Compiler::with_calibration`]).
    pub fn has_calibration(&self) -> bool {
        self.calib.is_some()
    }

    /// Quantizes with `qconfig` instead of the one the options resolved to (an export's
    /// conventions set its defaults: `onnx::conventions::policy`).
    pub fn with_qconfig(mut self, qconfig: QConfig) -> Compiler {
        self.qconfig = qconfig;
        self
    }

    /// Calibrates from `source` instead of `--calib` (a library user's batches).
    pub fn with_calibration(mut self, source: Arc<dyn CalibSource>) -> Compiler {
        self.calib = Some(source);
        self
    }

    /// Where calibration data comes from (`--calib`, or [`Compiler::with_calibration`]).
    pub fn calib_source(&self) -> Result<&dyn CalibSource> {
        self.calib.as_deref().context("this needs calibration data: add --calib X.npy")
    }

    /// One pass over the calibration data as `g`'s inputs, in batches of `--calib-batch`, and
    /// how many batches that is when known.
    pub fn calib_stream(&self, g: &Graph) -> Result<(CalibBatches<'_>, Option<usize>)> {
        let src = self.calib_source()?;
        Ok((src.batches(g, self.opts.calib_batch)?, src.batch_count(g, self.opts.calib_batch)))
    }

    /// The calibration data as `g`'s inputs, collected, in batches of `--calib-batch` (for the
    /// stages that run the set more than once).
    pub fn calib_batches(&self, g: &Graph) -> Result<Vec<Vec<Tensor>>> {
        self.calib_batches_of(g, self.opts.calib_batch)
    }

    /// The calibration data as `g`'s inputs, collected, in batches of `batch`.
    pub fn calib_batches_of(&self, g: &Graph, batch: usize) -> Result<Vec<Vec<Tensor>>> {
        self.calib_source()?.stream(g, batch)?.collect()
    }

    /// The stages the options select, in order: the one pipeline.
    pub fn stages(&self) -> Vec<Stage> {
        let o = &self.opts;
        let mut s = vec![];
        if o.opt_level >= 1 {
            s.push(Stage::Canonicalize);
        }
        if o.quantize != QuantizeMode::None {
            s.push(Stage::FoldBatchNorm);
        }
        if o.quantize == QuantizeMode::Int8 {
            if self.qconfig.smooth.is_some() {
                s.push(Stage::SmoothQuant);
            }
            s.push(Stage::Calibrate);
            if o.min_sqnr.is_some() {
                s.push(Stage::FloatFallback);
            }
            if self.qconfig.rounds_adaptively() {
                s.push(Stage::AdaRound);
            }
            if self.qconfig.corrects_bias() {
                s.push(Stage::BiasCorrection);
            }
        }
        if o.quantize != QuantizeMode::None {
            s.push(Stage::Quantize);
        }
        if self.precision.is_some() {
            s.push(Stage::Precision);
        }
        if o.opt_level >= 1 && self.profile.layout.channel_align > 1 {
            s.push(Stage::AlignChannels);
        }
        if o.opt_level >= 2 {
            s.push(Stage::Optimize);
        }
        s
    }

    /// Checks `graph` against everything the stages up to `last` (all of them with `None`) bring,
    /// before any of them runs, so a mistake is reported before minutes of calibration: the graph
    /// verifies, every qconfig `[[node]]` rule matches a node, and the calibration set is given,
    /// fits the graph's inputs and is finite.
    pub fn check(&self, graph: &Graph, last: Option<Stage>) -> Result<()> {
        qforge_ir::verify::verify(graph).context("the imported graph does not verify")?;
        if let (Some(file), Some(path)) = (&self.qconfig_file, &self.opts.qconfig) {
            crate::qconfig::check_rules_match(file, graph, path)?;
        }
        let selected: Vec<Stage> = self.stages().into_iter().filter(|s| last.is_none_or(|l| *s <= l)).collect();
        let quantizes = selected.iter().any(|s| {
            matches!(
                s,
                Stage::SmoothQuant | Stage::Calibrate | Stage::FloatFallback | Stage::AdaRound | Stage::BiasCorrection
            )
        });
        let guards = selected.contains(&Stage::Precision)
            && self.precision.as_ref().is_some_and(|c| c.policy.min_sqnr_db.is_some());
        match &self.calib {
            None if quantizes => bail!("--quantize int8 needs calibration data: add --calib X.npy"),
            None if guards => {
                bail!("the accuracy guard (--min-sqnr or min_sqnr_db) measures on calibration data: add --calib X.npy")
            }
            Some(src) if quantizes || selected.contains(&Stage::Precision) => src.check(graph)?,
            _ => {}
        }
        Ok(())
    }

    /// The state before the first stage, with `graph` checked for the stages up to `last`.
    fn start(&self, graph: Graph, last: Option<Stage>) -> Result<State> {
        self.check(&graph, last)?;
        Ok(State { graph, reports: vec![], calibration: None, qconfig: self.qconfig.clone(), done: vec![] })
    }

    /// Runs the stages up to and including `last` (or up to where `last` would be, when the
    /// options do not select it), calling `after(pass, graph)` after each pass.
    pub fn run_until(&self, graph: Graph, last: Stage, after: &mut dyn FnMut(&str, &Graph)) -> Result<State> {
        let mut st = self.start(graph, Some(last))?;
        self.advance(&mut st, Some(last), after)?;
        Ok(st)
    }

    /// Runs the stages `st` has not run yet, to the end of the pipeline.
    pub fn resume(&self, mut st: State, after: &mut dyn FnMut(&str, &Graph)) -> Result<State> {
        self.advance(&mut st, None, after)?;
        Ok(st)
    }

    /// The whole pipeline on `graph`, calling `after(pass, graph)` after each pass.
    pub fn run(&self, graph: Graph, after: &mut dyn FnMut(&str, &Graph)) -> Result<State> {
        let t = std::time::Instant::now();
        let nodes = graph.node_count();
        let st = self.resume(self.start(graph, None)?, after)?;
        tracing::info!(
            "pipeline: {} passes, {nodes} -> {} nodes in {:.1} ms",
            st.reports.len(),
            st.graph.node_count(),
            t.elapsed().as_secs_f64() * 1e3
        );
        Ok(st)
    }

    fn advance(&self, st: &mut State, last: Option<Stage>, after: &mut dyn FnMut(&str, &Graph)) -> Result<()> {
        for stage in self.stages() {
            if last.is_some_and(|l| stage > l) {
                break;
            }
            if st.done.contains(&stage) {
                continue;
            }
            stages::run(self, stage, st, after)?;
            st.done.push(stage);
        }
        Ok(())
    }

    /// The graph after the pipeline (what `inspect` shows).
    pub fn optimize(&self, graph: Graph) -> Result<Graph> {
        Ok(self.run(graph, &mut |_, _| {})?.graph)
    }

    /// Runs the pipeline on `graph` and prepares it for execution.
    pub fn compile(&self, graph: Graph) -> Result<Executable> {
        let graph = self.optimize(graph)?;
        Ok(self.executable(graph))
    }

    /// Prepares an already optimized graph for the selected engine (the JIT generates code per
    /// input shape on first run).
    pub fn executable(&self, graph: Graph) -> Executable {
        let jit = match self.opts.engine {
            Engine::Jit => Some(Arc::new(JitExecutable::new(graph.clone(), self.evaluator.jit_options()))),
            Engine::Interp => None,
        };
        Executable { graph, engine: self.opts.engine, run: self.evaluator.run_options().clone(), jit }
    }
}

/// A compiled model, ready to run.
#[derive(Clone)]
pub struct Executable {
    graph: Graph,
    engine: Engine,
    run: RunOptions,
    jit: Option<Arc<JitExecutable>>,
}

impl Executable {
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Runs on one tensor per graph input; checks the inputs' dtypes and shapes first.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        match self.engine {
            Engine::Interp => Ok(interp::run_observed(&self.graph, inputs, &self.run, &mut |_, _| {})?),
            Engine::Jit => match &self.jit {
                Some(j) => Ok(j.run(inputs)?),
                None => bail!("the executable was built without the JIT"),
            },
        }
    }

    /// The JIT executable (with `--engine jit`).
    pub fn jit(&self) -> Option<&JitExecutable> {
        self.jit.as_deref()
    }

    /// Runs a single-input graph over `x` in batches of `batch` along axis 0 and concatenates
    /// the first output.
    pub fn run_batched(&self, x: &Tensor, batch: usize) -> Result<Tensor> {
        let n = x.shape().first().copied().context("the input has no batch dimension")?;
        let mut parts = vec![];
        let mut start = 0;
        while start < n {
            let end = (start + batch.max(1)).min(n);
            let xb = crate::data::slice_batch(x, start, end)?;
            let mut out = self.run(&[xb])?;
            if out.is_empty() {
                bail!("the model has no outputs");
            }
            parts.push(out.swap_remove(0));
            start = end;
        }
        crate::data::concat_batch(&parts)
    }
}
