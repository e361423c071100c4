//! The [`Compiler`] API: load a model, run the pipeline, get something that runs.
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

use crate::pipeline::{Engine, PipelineOptions, Precision};
use anyhow::{bail, Context, Result};
use qforge_codegen::{JitExecutable, JitOptions, Microkernels};
use qforge_ir::interp::{self, RunOptions};
use qforge_ir::{Graph, Tensor};
use qforge_passes::canonicalize::Canonicalize;
use qforge_passes::egraph::{cost::CostTable, Optimize};
use qforge_passes::precision::{
    profile, AlignChannels, AssignPrecision, F32Prefix, PrecisionConfig, Profile, ProfileError, Ranges,
};
use qforge_passes::{PassContext, PassReport, Pipeline};
use std::path::Path;
use std::sync::Arc;

/// Loads a model by its extension: `.onnx` (imported) or `.qir` (the IR text form). A compiled
/// artifact (`.qfa`) is not a model to compile: see [`crate::artifact::prepare`].
pub fn load_model(path: &Path) -> Result<Graph> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let t = std::time::Instant::now();
    let g = match ext.as_str() {
        "onnx" => crate::onnx::import_file(path)?,
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

/// `--profile NAME|FILE`: a shipped profile by name, else a TOML file; `host` when not given.
pub fn resolve_profile(arg: Option<&str>) -> Result<Profile> {
    let Some(arg) = arg else { return Ok(Profile::host()) };
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

/// The profile and the precision configuration (`--precision`, `--precision-config`, the
/// qconfig's fp16/bf16 regions, `--min-sqnr`) of `opts`.
fn precision_setup(
    opts: &PipelineOptions,
    qconfig: &qforge_passes::quantize::QConfig,
) -> Result<(Profile, Option<PrecisionConfig>)> {
    let profile = resolve_profile(opts.profile.as_deref())?;
    let regions = opts.qconfig.as_ref().map(|_| qconfig.clone());
    let name = match opts.precision {
        Precision::Fp32 => {
            let Some(q) = regions.filter(PrecisionConfig::has_low_regions) else {
                if opts.min_sqnr.is_some() && opts.quantize != crate::pipeline::QuantizeMode::Int8 {
                    bail!(
                        "--min-sqnr keeps ops at higher precision: it needs --quantize int8 or --precision fp16, bf16 \
                         or amp (or qconfig fp16/bf16 regions)"
                    );
                }
                return Ok((profile, None));
            };
            let mut c = PrecisionConfig::regions_only(q);
            c.policy.min_sqnr_db = opts.min_sqnr;
            return Ok((profile, Some(c)));
        }
        Precision::Fp16 => "fp16",
        Precision::Bf16 => "bf16",
        Precision::Amp => "amp",
    };
    let mut c = qforge_passes::precision::config_for(name, &profile).map_err(anyhow::Error::msg)?;
    if let Some(path) = &opts.precision_config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read precision config `{}`", path.display()))?;
        c.policy.apply_overrides(&text, &path.display().to_string()).map_err(anyhow::Error::msg)?;
    }
    if opts.min_sqnr.is_some() {
        c.policy.min_sqnr_db = opts.min_sqnr;
    }
    if c.policy.min_sqnr_db.is_some() && opts.calib.is_none() {
        bail!("the accuracy guard (--min-sqnr or min_sqnr_db) measures on calibration data: add --calib X.npy");
    }
    c.regions = regions;
    Ok((profile, Some(c)))
}

/// Strings the stages together according to [`PipelineOptions`].
#[derive(Clone, Debug)]
pub struct Compiler {
    opts: PipelineOptions,
    qconfig: qforge_passes::quantize::QConfig,
    /// The hardware profile (`--profile`, `host` by default).
    profile: Profile,
    /// Precision assignment (`--precision` other than fp32), without calibration ranges.
    precision: Option<PrecisionConfig>,
}

impl Compiler {
    /// Checks the options; options whose stage is not built yet are an error here.
    pub fn new(opts: PipelineOptions) -> Result<Compiler> {
        opts.check_supported()?;
        if opts.quantize == crate::pipeline::QuantizeMode::Int8 && opts.calib.is_none() {
            bail!("--quantize int8 needs calibration data: add --calib X.npy");
        }
        if opts.smooth.is_some() && opts.quantize != crate::pipeline::QuantizeMode::Int8 {
            bail!("--smooth needs --quantize int8 (SmoothQuant is calibrated on --calib before static quantization)");
        }
        let qconfig = crate::calibrate::qconfig(&opts)?;
        let (profile, precision) = precision_setup(&opts, &qconfig)?;
        tracing::debug!("pipeline options: {opts:?}; hardware profile `{}`", profile.name);
        Ok(Compiler { opts, qconfig, profile, precision })
    }

    pub fn options(&self) -> &PipelineOptions {
        &self.opts
    }

    /// The hardware profile the pipeline targets (the optimizer's cost table).
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The precision stage, after quantization (DESIGN.md's order): precision assignment when
    /// `--precision` is not fp32 (at every opt level, as quantization: it is asked for, not an
    /// optimization), then channel alignment padding from `--opt-level 1` when the profile asks for
    /// it. `ranges` feed the fp16 overflow guard.
    pub fn precision_pipeline(&self, ranges: Option<Ranges>, f32_prefix: Option<F32Prefix>) -> Pipeline {
        let mut p = Pipeline::new();
        if let Some(c) = &self.precision {
            p = p.with(AssignPrecision::new(PrecisionConfig { ranges, f32_prefix, ..c.clone() }));
        }
        if self.opts.opt_level >= 1 && self.profile.layout.channel_align > 1 {
            p = p.with(AlignChannels { align: self.profile.layout.channel_align });
        }
        p
    }

    /// The equality-saturation optimizer, last (DESIGN.md's order: after quantization and
    /// precision, so it sees their Q/DQ and casts), from `--opt-level 2`, with the profile's int8
    /// support deciding whether it lowers to integer kernels.
    pub fn optimizer_pipeline(&self) -> Pipeline {
        let mut p = Pipeline::new();
        if self.opts.opt_level >= 2 {
            let cost = CostTable::from_profile(&self.profile);
            p = p.with(Optimize { cost, ..Optimize::default() });
        }
        p
    }

    /// Runs the pipeline on `graph` (verified before and after) and prepares it for execution.
    pub fn compile(&self, graph: Graph) -> Result<Executable> {
        let graph = self.optimize(graph)?;
        Ok(self.executable(graph))
    }

    /// Prepares an already optimized graph for the selected engine (the JIT generates code per
    /// input shape on first run).
    pub fn executable(&self, graph: Graph) -> Executable {
        let jit = match self.opts.engine {
            Engine::Jit => Some(Arc::new(JitExecutable::new(graph.clone(), self.jit_options()))),
            Engine::Interp => None,
        };
        Executable {
            graph,
            engine: self.opts.engine,
            run: RunOptions { max_tensor_bytes: self.opts.max_tensor_bytes as u128 },
            jit,
        }
    }

    /// The JIT's options from `--threads` and `--kernels`.
    pub fn jit_options(&self) -> JitOptions {
        JitOptions {
            threads: self.opts.threads as usize,
            microkernels: match self.opts.kernels {
                crate::pipeline::Kernels::Native => Microkernels::Native,
                crate::pipeline::Kernels::Cranelift => Microkernels::Cranelift,
            },
            check_guards: false,
            max_tensor_bytes: self.opts.max_tensor_bytes,
        }
    }

    /// The passes `--opt-level` selects: none at 0; canonicalization from 1 (the optimizer, the
    /// quantizer and precision assignment join as they land).
    pub fn pipeline(&self) -> Pipeline {
        let mut p = Pipeline::new();
        if self.opts.opt_level >= 1 {
            p = p.with(Canonicalize);
        }
        p
    }

    /// The graph after the pipeline (what `inspect` shows), verified before and after each pass.
    pub fn optimize(&self, graph: Graph) -> Result<Graph> {
        self.optimize_reported(graph, &mut |_, _| {}).map(|(g, _)| g)
    }

    /// As [`Compiler::optimize`], calling `after(pass, graph)` after each pass and returning the
    /// pass reports.
    pub fn optimize_reported(
        &self,
        mut graph: Graph,
        after: &mut dyn FnMut(&str, &Graph),
    ) -> Result<(Graph, Vec<PassReport>)> {
        qforge_ir::verify::verify(&graph).context("the imported graph does not verify")?;
        let t = std::time::Instant::now();
        let nodes = graph.node_count();
        let cx = PassContext { verify: true, max_tensor_bytes: self.opts.max_tensor_bytes as u128 };
        let mut reports = self.pipeline().run(&mut graph, &cx, after)?;
        if self.opts.quantize != crate::pipeline::QuantizeMode::None {
            reports.extend(crate::calibrate::quantize_stage(&mut graph, &self.opts, &self.qconfig, &cx, after)?);
        }
        let ranges = self.overflow_ranges(&graph)?;
        let prefix = self.accuracy_guard(&graph, &ranges, &cx)?;
        reports.extend(self.precision_pipeline(ranges, prefix).run(&mut graph, &cx, after)?);
        reports.extend(self.optimizer_pipeline().run(&mut graph, &cx, after)?);
        tracing::info!(
            "pipeline: {} passes, {nodes} -> {} nodes in {:.1} ms",
            reports.len(),
            graph.node_count(),
            t.elapsed().as_secs_f64() * 1e3
        );
        Ok((graph, reports))
    }

    /// Calibration ranges for the fp16 overflow guard: with `--calib` and an f16 precision, the
    /// graph runs on the calibration inputs (in batches of `--calib-batch`) and every node's largest
    /// magnitude is kept.
    fn overflow_ranges(&self, g: &Graph) -> Result<Option<Ranges>> {
        let (Some(c), Some(path)) = (&self.precision, &self.opts.calib) else { return Ok(None) };
        if c.low != qforge_ir::DType::F16 {
            return Ok(None);
        }
        let (batches, engine) = self.calibration_runs(path, g)?;
        tracing::info!("fp16 overflow guard: observing ranges in {} batches", batches.len());
        let r = qforge_passes::precision::observe_ranges(g, &batches, &engine)
            .map_err(|e| anyhow::anyhow!("calibration for the fp16 overflow guard: {e}"))?;
        Ok(Some(r))
    }

    /// The accuracy guard (`--min-sqnr`, or `min_sqnr_db` in the precision config): the shortest
    /// prefix of the ops precision assignment lowers that must stay f32 for the output on the
    /// calibration inputs to reach the target ([`qforge_passes::precision::search`]).
    fn accuracy_guard(&self, g: &Graph, ranges: &Option<Ranges>, cx: &PassContext) -> Result<Option<F32Prefix>> {
        let (Some(c), Some(path)) = (&self.precision, &self.opts.calib) else { return Ok(None) };
        let Some(target) = c.policy.min_sqnr_db else { return Ok(None) };
        let (batches, engine) = self.calibration_runs(path, g)?;
        let c = PrecisionConfig { ranges: ranges.clone(), ..c.clone() };
        let t = std::time::Instant::now();
        let o = qforge_passes::precision::f32_prefix_for(g, &c, target, &batches, &engine, cx)
            .map_err(|e| anyhow::anyhow!("the accuracy guard: {e}"))?;
        tracing::info!(
            "accuracy guard: {} of {} low-precision ops kept f32 for {target} dB ({:.1} dB; all low {:.1} dB) in {} runs, {:.1} s",
            o.prefix.count,
            o.lowered,
            o.chosen_db,
            o.all_low_db,
            o.probes.len() + 1,
            t.elapsed().as_secs_f64()
        );
        Ok(Some(o.prefix))
    }

    /// The calibration inputs of `g` in batches of `--calib-batch`, and the engine to run them on.
    fn calibration_runs(
        &self,
        path: &Path,
        g: &Graph,
    ) -> Result<(Vec<Vec<Tensor>>, crate::calibrate::EngineEvaluator)> {
        let batches = crate::calib_set::load(path, g)?.batches(self.opts.calib_batch)?;
        let engine = crate::calibrate::EngineEvaluator {
            engine: self.opts.engine,
            run: qforge_ir::interp::RunOptions { max_tensor_bytes: self.opts.max_tensor_bytes as u128 },
        };
        Ok((batches, engine))
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
