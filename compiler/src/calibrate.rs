//! Quantization in the driver: the engine as a calibration [`Evaluator`], calibration batches from
//! a `.npy` file (with a [`crate::progress`] bar), and the static and dynamic quantization stages
//! of the pipeline: SmoothQuant (`--smooth ALPHA` or `[smoothquant]`), calibration, the SQNR-driven
//! float fallback (`--min-sqnr DB`) and Q/DQ insertion.

use crate::data;
use crate::pipeline::{Engine, PipelineOptions, QuantizeMode};
use anyhow::{bail, Context, Result};
use qforge_ir::interp::RunOptions;
use qforge_ir::{Graph, NodeId, Tensor};
use qforge_passes::evaluator::{first, EvalError, Interpreter};
use qforge_passes::quantize::scheme::{QType, Scheme};
use qforge_passes::quantize::{
    activation_plan, calibrate, channel_absmax, skipping, smooth_sites, Calibration, ChannelStats, EvalSet, Evaluator,
    FoldBatchNorm, QConfig, QuantizeDynamic, QuantizeStatic, SmoothQuant, Study, WeightGranularity,
};
use qforge_passes::{PassContext, PassReport, Pipeline};
use std::path::Path;

/// The engine that runs calibration, sensitivity analysis and the accuracy guard. Observers see
/// every intermediate tensor of the float graph, which only the interpreter exposes, so both
/// engines calibrate on the interpreter; runs that only need the outputs (sensitivity, the
/// accuracy guard) use the JIT when it is the engine, compiled once per graph and input shape.
#[derive(Clone, Debug)]
pub struct EngineEvaluator {
    pub engine: Engine,
    pub run: RunOptions,
}

impl Evaluator for EngineEvaluator {
    fn run_observed(
        &self,
        g: &Graph,
        inputs: &[Tensor],
        observe: &mut dyn FnMut(NodeId, &[Tensor]),
    ) -> Result<Vec<Tensor>, EvalError> {
        match self.engine {
            Engine::Interp | Engine::Jit => Interpreter(self.run.clone()).run_observed(g, inputs, observe),
        }
    }

    fn first_outputs(&self, g: &Graph, batches: &[Vec<Tensor>]) -> Result<Vec<Tensor>, EvalError> {
        match self.engine {
            Engine::Interp => batches.iter().map(|b| first(Interpreter(self.run.clone()).run(g, b)?)).collect(),
            Engine::Jit => {
                // compiled once; the JIT keeps one program per input shape
                let exe = qforge_codegen::JitExecutable::new(g.clone(), qforge_codegen::JitOptions::default());
                batches.iter().map(|b| first(exe.run(b).map_err(EvalError::engine)?)).collect()
            }
        }
    }
}

/// The policy from `--qconfig` (if any) with the command-line scheme options on top of its
/// `[default]`: `--per-tensor`/`--per-channel`, `--symmetric` (i8 symmetric activations) or
/// `--asymmetric` (u8 asymmetric), and `--calib-method` when it is not the default `minmax`.
/// Dynamic quantization defaults to per-tensor weights, as ONNX Runtime's `quantize_dynamic`.
pub fn qconfig(opts: &PipelineOptions) -> Result<QConfig> {
    let mut cfg = match &opts.qconfig {
        Some(p) => crate::qconfig::load(p)?,
        None => QConfig::default(),
    };
    let d = &mut cfg.default;
    if opts.quantize == QuantizeMode::Dynamic && d.granularity.is_none() {
        d.granularity = Some(WeightGranularity::PerTensor);
    }
    if opts.per_tensor {
        d.granularity = Some(WeightGranularity::PerTensor);
    } else if opts.per_channel {
        d.granularity = Some(WeightGranularity::PerChannel);
    }
    if opts.symmetric {
        d.activations = Some(Scheme::symmetric(QType::I8));
    } else if opts.asymmetric {
        d.activations = Some(Scheme::asymmetric(QType::U8));
    }
    if let Some(m) = opts.calib_method {
        d.observer = Some(m);
    }
    if let Some(a) = opts.smooth {
        cfg.smooth = Some(a);
    }
    Ok(cfg)
}

/// Batches of `batch` rows of `x` along axis 0, one at a time.
pub fn batches(x: &Tensor, batch: usize) -> Result<impl Iterator<Item = Vec<Tensor>> + '_> {
    let n = *x.shape().first().context("calibration data has no batch dimension")?;
    if n == 0 {
        bail!("the calibration set is empty");
    }
    let batch = batch.max(1);
    Ok((0..n.div_ceil(batch))
        .map(move |i| vec![data::slice_batch(x, i * batch, ((i + 1) * batch).min(n)).expect("in range")]))
}

/// Calibrates `g` (already prepared: batch norm folded) for static quantization under `cfg` on the
/// samples of `calib` (a calibration set, see [`crate::calib_set`]: `.npy`, or `.npz` for models
/// with several inputs).
pub fn calibrate_file(
    g: &Graph,
    cfg: &QConfig,
    calib: &Path,
    batch: usize,
    eval: &dyn Evaluator,
) -> Result<Calibration> {
    let set = crate::calib_set::load(calib, g)?;
    let ap = activation_plan(g, cfg)?;
    let n = set.samples;
    let mut it = set.batches(batch)?.into_iter();
    let total = n.div_ceil(batch.max(1));
    let targets = ap.targets();
    tracing::info!(
        "calibrating on `{}`: {n} samples in {total} batches of {}, {} tensors observed, method {} by default",
        calib.display(),
        batch.max(1),
        targets.len(),
        cfg.default.observer.unwrap_or_default().name()
    );
    let t = std::time::Instant::now();
    let mut bar = crate::progress::bar("calibrating", "batches");
    let cal = calibrate(g, eval, &mut it, total, &targets, &mut *bar)
        .with_context(|| format!("calibrating on `{}`", calib.display()))?;
    tracing::info!(
        "calibrated {} ranges on {} batches in {:.1} ms",
        cal.ranges.len(),
        cal.batches,
        t.elapsed().as_secs_f64() * 1e3
    );
    Ok(cal)
}

/// SmoothQuant (when `cfg.smooth` is set): the per-channel maxima of every smoothable layer
/// norm's result on the calibration samples, then the [`SmoothQuant`] pass. Nothing happens (and
/// nothing is read) when the graph has no such layer norm.
pub fn smooth_stage(
    g: &mut Graph,
    cfg: &QConfig,
    calib: &Path,
    batch: usize,
    eval: &dyn Evaluator,
    cx: &PassContext,
    after: &mut dyn FnMut(&str, &Graph),
) -> Result<Vec<PassReport>> {
    let Some(alpha) = cfg.smooth else { return Ok(vec![]) };
    let sites = smooth_sites(g);
    if sites.is_empty() {
        tracing::info!("smoothquant: no layer norm feeds only weight matmuls; nothing to smooth");
        return Ok(vec![]);
    }
    let set = crate::calib_set::load(calib, g)?;
    let total = set.samples.div_ceil(batch.max(1));
    let mut it = set.batches(batch)?.into_iter();
    tracing::info!("smoothquant (alpha {alpha}): observing {} layer norms on `{}`", sites.len(), calib.display());
    let values: Vec<_> = sites.iter().map(|s| s.value()).collect();
    let mut bar = crate::progress::bar("smoothing", "batches");
    let maxima = channel_absmax(g, eval, &mut it, total, &values, &mut *bar)
        .with_context(|| format!("observing channel maxima on `{}`", calib.display()))?;
    let stats = ChannelStats::new(g, &sites, &maxima).map_err(anyhow::Error::msg)?;
    Ok(Pipeline::new().with(SmoothQuant { alpha, stats }).run(g, cx, after)?)
}

/// `--min-sqnr DB` with `--quantize int8`: a sensitivity study on the calibration samples (each
/// quantizable layer alone, ranked by output SQNR against the float graph), then the most
/// sensitive layers kept in float until the output SQNR reaches `min_db`. Returns the policy with
/// those layers skipped.
pub fn sqnr_fallback(
    g: &Graph,
    cfg: &QConfig,
    calibration: &Calibration,
    calib: &Path,
    batch: usize,
    eval: &EngineEvaluator,
    min_db: f64,
) -> Result<QConfig> {
    let batches = crate::calib_set::load(calib, g)?.batches(batch)?;
    let (reference, _) = reference_outputs(g, &batches, eval, None)?;
    let study = Study {
        graph: g,
        config: cfg,
        calibration,
        eval,
        set: EvalSet { batches: &batches, reference: &reference, labels: None },
    };
    let ranked = analyze(&study)?;
    let (skip, sqnr) = study.keep_float_until_sqnr(&ranked, min_db).map_err(anyhow::Error::msg)?;
    if sqnr >= min_db {
        tracing::info!(
            "--min-sqnr {min_db}: {} of {} layers kept float, output SQNR {sqnr:.2} dB on the calibration set: {skip:?}",
            skip.len(),
            ranked.len()
        );
    } else {
        tracing::warn!(
            "--min-sqnr {min_db}: not reached with every one of the {} ranked layers float ({sqnr:.2} dB)",
            ranked.len()
        );
    }
    Ok(skipping(cfg, &skip))
}

/// The quantization stage of the pipeline (`--quantize int8|dynamic`): batch norm folded into
/// convolutions, then (int8) SmoothQuant when asked, calibration, the `--min-sqnr` float fallback
/// when asked and Q/DQ insertion, or dynamic quantization.
pub fn quantize_stage(
    g: &mut Graph,
    opts: &PipelineOptions,
    cfg: &QConfig,
    cx: &PassContext,
    after: &mut dyn FnMut(&str, &Graph),
) -> Result<Vec<PassReport>> {
    let eval =
        EngineEvaluator { engine: opts.engine, run: RunOptions { max_tensor_bytes: opts.max_tensor_bytes as u128 } };
    let mut reports = Pipeline::new().with(FoldBatchNorm).run(g, cx, after)?;
    match opts.quantize {
        QuantizeMode::None => {}
        QuantizeMode::Int8 => {
            let calib = opts.calib.as_deref().context("--quantize int8 needs calibration data: add --calib X.npy")?;
            reports.extend(smooth_stage(g, cfg, calib, opts.calib_batch, &eval, cx, after)?);
            let calibration = calibrate_file(g, cfg, calib, opts.calib_batch, &eval)?;
            let config = match opts.min_sqnr {
                Some(db) => sqnr_fallback(g, cfg, &calibration, calib, opts.calib_batch, &eval, db)?,
                None => cfg.clone(),
            };
            let pass = QuantizeStatic { config, calibration };
            reports.extend(Pipeline::new().with(pass).run(g, cx, after)?);
        }
        QuantizeMode::Dynamic => {
            if opts.min_sqnr.is_some() {
                bail!("--min-sqnr with --quantize dynamic is not supported: use --quantize int8 with --calib");
            }
            if cfg.smooth.is_some() {
                tracing::warn!(
                    "the qconfig's [smoothquant] applies to static int8 only; ignored by --quantize dynamic"
                );
            }
            let pass = QuantizeDynamic { config: cfg.clone(), conv: true };
            reports.extend(Pipeline::new().with(pass).run(g, cx, after)?);
        }
    }
    Ok(reports)
}

/// With `--quantize int8|dynamic`: the top-1 accuracy of the same model without quantization
/// (same pipeline otherwise), for `eval`'s `fp32_top1`. `None` when nothing is quantized.
pub fn fp32_top1(
    opts: &PipelineOptions,
    model: &Path,
    x: &Tensor,
    labels: &[usize],
    batch: usize,
) -> Result<Option<f64>> {
    if opts.quantize == QuantizeMode::None {
        return Ok(None);
    }
    let fp = PipelineOptions {
        quantize: QuantizeMode::None,
        calib: None,
        qconfig: None,
        smooth: None,
        min_sqnr: None,
        ..opts.clone()
    };
    let exe = crate::Compiler::new(fp)?.compile(crate::load_model(model)?)?;
    let scores = exe.run_batched(x, batch)?;
    Ok(Some(data::top1(&data::argmax_rows(&scores)?, labels)?))
}

/// `qforge inspect MODEL --quantizable`: each node's quantization decision and why, after the
/// pipeline's float passes and batch-norm folding, with the qconfig policy applied.
pub fn inspect_quantizable(model: &Path, json: bool, opts: PipelineOptions) -> Result<()> {
    let cfg = qconfig(&opts)?;
    let g = prepared_graph(model, &opts)?;
    let plan = qforge_passes::quantize::plan(&g)?;
    let roles = qforge_passes::quantize::attention_roles(&g);
    let mut rows = vec![];
    for p in &plan {
        let node = g.node(p.id);
        let role = roles.get(&p.id).copied();
        let s = cfg.settings_as(node, role);
        let (decision, reason) = match (&p.decision, s.quantized()) {
            (qforge_passes::quantize::Decision::Quantize { .. }, false) => {
                let why = role.map_or(String::new(), |r| format!(" ({})", r.name()));
                ("keep".to_string(), format!("kept at {} by the qconfig policy{why}", s.precision))
            }
            (d, _) => (d.name().to_string(), p.reason.clone()),
        };
        let from = if node.from.is_empty() { vec![node.name.clone()] } else { node.from.clone() };
        rows.push((p.name.clone(), p.op, decision, reason, from));
    }
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(n, op, d, r, from)| serde_json::json!({"name": n, "op": op, "decision": d, "reason": r, "from": from}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "nodes": v }))?);
    } else {
        let quantized = rows.iter().filter(|r| r.2 == "quantize").count();
        println!("{quantized} of {} nodes quantized", rows.len());
        let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        for (n, op, d, r, _) in &rows {
            println!("{n:<w$}  {op:<20} {d:<17} {r}");
        }
    }
    Ok(())
}

/// The arguments of `qforge sensitivity` besides the model and the pipeline.
#[derive(Clone, Debug)]
pub struct SensitivityArgs {
    pub input: Option<std::path::PathBuf>,
    pub labels: Option<std::path::PathBuf>,
    pub max_accuracy_drop: Option<f64>,
    pub output: Option<std::path::PathBuf>,
    pub batch: usize,
    pub json: bool,
}

/// `qforge sensitivity`: each quantizable layer quantized alone, ranked by output SQNR; with
/// `--max-accuracy-drop` (labels) or `--min-sqnr` (no labels), the qconfig that keeps the most
/// sensitive layers in float. SmoothQuant (`--smooth`, `[smoothquant]`) is applied first.
pub fn sensitivity(model: &Path, args: &SensitivityArgs, opts: PipelineOptions) -> Result<()> {
    let calib = opts.calib.clone().context("sensitivity needs calibration data: add --calib X.npy")?;
    if args.max_accuracy_drop.is_some() && opts.min_sqnr.is_some() {
        bail!("give --max-accuracy-drop or --min-sqnr, not both");
    }
    let cfg = qconfig(&opts)?;
    let mut g = prepared_graph(model, &opts)?;
    let eval =
        EngineEvaluator { engine: opts.engine, run: RunOptions { max_tensor_bytes: opts.max_tensor_bytes as u128 } };
    let cx = PassContext { verify: true, max_tensor_bytes: opts.max_tensor_bytes as u128 };
    smooth_stage(&mut g, &cfg, &calib, opts.calib_batch, &eval, &cx, &mut |_, _| {})?;
    let calibration = calibrate_file(&g, &cfg, &calib, opts.calib_batch, &eval)?;
    let set = crate::calib_set::load(args.input.as_deref().unwrap_or(&calib), &g)?;
    let labels = match &args.labels {
        Some(p) => Some(data::labels(&crate::npy::read(p)?).with_context(|| format!("`{}`", p.display()))?),
        None => None,
    };
    let batches = set.batches(args.batch)?;
    let (reference, fp32_top1) = reference_outputs(&g, &batches, &eval, labels.as_deref())?;
    let study = Study {
        graph: &g,
        config: &cfg,
        calibration: &calibration,
        eval: &eval,
        set: EvalSet { batches: &batches, reference: &reference, labels: labels.as_deref() },
    };
    let ranked = analyze(&study)?;
    let (all_sqnr, all_top1) = study.evaluate(&cfg).map_err(anyhow::Error::msg)?;
    let mut kept = None;
    let mut kept_sqnr = None;
    if let (Some(d), Some(f), Some(out)) = (args.max_accuracy_drop, fp32_top1, &args.output) {
        let (skip, top1) = study.keep_float_until(&ranked, f, d).map_err(anyhow::Error::msg)?;
        let text = format!(
            "# written by `qforge sensitivity --max-accuracy-drop {d}`: the {} most sensitive layers stay float\n\
             # fp32 top-1 {:.4}, int8 top-1 with these layers float {:.4}\n",
            skip.len(),
            f,
            top1
        );
        write_skip_qconfig(out, text, &skip, &cfg, &opts)?;
        kept = Some((skip, top1));
    }
    if let Some(db) = opts.min_sqnr {
        let (skip, sqnr) = study.keep_float_until_sqnr(&ranked, db).map_err(anyhow::Error::msg)?;
        if let Some(out) = &args.output {
            let text = format!(
                "# written by `qforge sensitivity --min-sqnr {db}`: the {} most sensitive layers stay float\n\
                 # output SQNR against fp32 with these layers float: {sqnr:.2} dB{}\n",
                skip.len(),
                if sqnr >= db { "" } else { " (the target was not reached)" }
            );
            write_skip_qconfig(out, text, &skip, &cfg, &opts)?;
        }
        kept_sqnr = Some((skip, sqnr));
    }
    if args.json {
        let layers: Vec<_> = ranked
            .iter()
            .map(|l| serde_json::json!({"node": l.node, "op": l.op, "from": l.from, "sqnr_db": l.sqnr_db, "top1": l.top1}))
            .collect();
        let mut v = serde_json::json!({
            "layers": layers, "all_int8_sqnr_db": all_sqnr, "all_int8_top1": all_top1, "fp32_top1": fp32_top1,
        });
        if let Some((skip, top1)) = &kept {
            v["kept_float"] = serde_json::json!(skip);
            v["top1_with_kept_float"] = serde_json::json!(top1);
        }
        if let Some((skip, sqnr)) = &kept_sqnr {
            v["kept_float"] = serde_json::json!(skip);
            v["sqnr_db_with_kept_float"] = serde_json::json!(sqnr);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let w = ranked.iter().map(|l| l.node.len()).max().unwrap_or(4).max(4);
    println!("{:<w$}  {:<20} {:>9}  {:>7}  from", "node", "op", "SQNR dB", "top-1");
    for l in &ranked {
        let t = l.top1.map_or("-".to_string(), |t| format!("{:.2}%", t * 100.0));
        println!("{:<w$}  {:<20} {:>9.2}  {:>7}  {}", l.node, l.op, l.sqnr_db, t, l.from.join(", "));
    }
    let t = |x: Option<f64>| x.map_or("-".to_string(), |t| format!("{:.2}%", t * 100.0));
    println!("all layers int8: SQNR {all_sqnr:.2} dB, top-1 {} (fp32 {})", t(all_top1), t(fp32_top1));
    if let (Some((skip, top1)), Some(out)) = (&kept, &args.output) {
        println!(
            "kept float: {} layer(s) {:?}, top-1 {:.2}%; qconfig written to `{}`",
            skip.len(),
            skip,
            top1 * 100.0,
            out.display()
        );
    }
    if let Some((skip, sqnr)) = &kept_sqnr {
        let written = args.output.as_ref().map_or(String::new(), |o| format!("; qconfig written to `{}`", o.display()));
        println!("kept float: {} layer(s) {:?}, output SQNR {sqnr:.2} dB{written}", skip.len(), skip);
    }
    Ok(())
}

/// Writes the qconfig of `sensitivity`: the header `text`, `[smoothquant]` when smoothing was
/// on, and one `skip = true` rule per layer kept float.
fn write_skip_qconfig(
    out: &Path,
    mut text: String,
    skip: &[String],
    cfg: &QConfig,
    opts: &PipelineOptions,
) -> Result<()> {
    if let Some(p) = &opts.qconfig {
        text.push_str(&format!("# on top of `{}`: copy its rules above these\n", p.display()));
    }
    if let Some(a) = cfg.smooth {
        text.push_str(&format!("\n[smoothquant]\nalpha = {a}\n"));
    }
    for s in skip {
        let key = if s.contains(['*', '?']) { "regex" } else { "match" };
        let pat = if key == "regex" { format!("^{}$", regex_escape(s)) } else { s.clone() };
        text.push_str(&format!("\n[[node]]\n{key} = {}\nskip = true\n", toml_string(&pat)));
    }
    std::fs::write(out, text).with_context(|| format!("cannot write `{}`", out.display()))
}

/// Runs the sensitivity study (each quantizable layer quantized alone) with a progress bar per
/// layer; `qforge sensitivity` and `qforge report` share it.
pub fn analyze(study: &qforge_passes::quantize::Study) -> Result<Vec<qforge_passes::quantize::LayerSensitivity>> {
    tracing::info!("sensitivity: quantizing one layer at a time, evaluated on {} batches", study.set.batches.len());
    let t = std::time::Instant::now();
    let mut bar = crate::progress::bar("sensitivity", "layers");
    let ranked = study.analyze(&mut *bar).map_err(anyhow::Error::msg)?;
    tracing::info!("sensitivity: {} layers ranked in {:.1} ms", ranked.len(), t.elapsed().as_secs_f64() * 1e3);
    Ok(ranked)
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Escapes regex metacharacters.
fn regex_escape(s: &str) -> String {
    s.chars().fold(String::new(), |mut o, c| {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            o.push('\\');
        }
        o.push(c);
        o
    })
}

/// The graph quantization starts from: imported, verified, canonicalized (from `--opt-level 1`)
/// and with batch norm folded, the state the quantization stage of the pipeline sees.
pub fn prepared_graph(model: &Path, opts: &PipelineOptions) -> Result<Graph> {
    let mut g = crate::load_model(model)?;
    qforge_ir::verify::verify(&g).context("the imported graph does not verify")?;
    let cx = PassContext { verify: true, max_tensor_bytes: opts.max_tensor_bytes as u128 };
    let mut p = Pipeline::new();
    if opts.opt_level >= 1 {
        p = p.with(qforge_passes::canonicalize::Canonicalize);
    }
    p.with(FoldBatchNorm).run(&mut g, &cx, &mut |_, _| {})?;
    Ok(g)
}

/// `qforge quantize MODEL --calib X.npy -o OUT.onnx`: static INT8 by default (`--quantize dynamic`
/// for dynamic), exported as a QDQ ONNX model. The graph is exported before the optimizer lowers
/// its Q/DQ to integer kernels (`--opt-level` at most 1), which is the form other runtimes fuse.
pub fn quantize_to_onnx(model: &Path, output: &Path, mut opts: PipelineOptions) -> Result<()> {
    if opts.quantize == QuantizeMode::None {
        opts.quantize = QuantizeMode::Int8;
    }
    opts.opt_level = opts.opt_level.min(1);
    let g = crate::Compiler::new(opts)?.optimize(crate::load_model(model)?)?;
    let bytes = crate::onnx::export::export_qdq(&g)?;
    std::fs::write(output, bytes).with_context(|| format!("cannot write `{}`", output.display()))?;
    Ok(())
}

/// The float model's first output on each batch (the sensitivity study's reference) and, with
/// labels, its top-1 accuracy.
pub fn reference_outputs(
    g: &Graph,
    batches: &[Vec<Tensor>],
    eval: &EngineEvaluator,
    labels: Option<&[usize]>,
) -> Result<(Vec<Tensor>, Option<f64>)> {
    let reference = eval.first_outputs(g, batches).map_err(anyhow::Error::msg)?;
    let top1 = match labels {
        Some(l) => Some(data::top1(&data::argmax_rows(&data::concat_batch(&reference)?)?, l)?),
        None => None,
    };
    Ok((reference, top1))
}
