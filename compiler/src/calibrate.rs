//! Quantization in the driver: the engine as a calibration [`Evaluator`], calibration batches from
//! a `.npy` file (with a [`crate::progress`] bar), and the static and dynamic quantization stages
//! of the pipeline.

use crate::data;
use crate::pipeline::{Engine, PipelineOptions, QuantizeMode};
use anyhow::{bail, Context, Result};
use qforge_ir::interp::RunOptions;
use qforge_ir::{Graph, NodeId, Tensor};
use qforge_passes::evaluator::Interpreter;
use qforge_passes::quantize::scheme::{QType, Scheme};
use qforge_passes::quantize::{
    activation_plan, calibrate, Calibration, Evaluator, FoldBatchNorm, QConfig, QuantizeDynamic, QuantizeStatic,
    WeightGranularity,
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
    ) -> Result<Vec<Tensor>, String> {
        match self.engine {
            Engine::Interp | Engine::Jit => Interpreter(self.run.clone()).run_observed(g, inputs, observe),
        }
    }

    fn run(&self, g: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
        match self.engine {
            Engine::Interp => Interpreter(self.run.clone()).run(g, inputs),
            Engine::Jit => qforge_codegen::JitExecutable::new(g.clone(), qforge_codegen::JitOptions::default())
                .run(inputs)
                .map_err(|e| e.to_string()),
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

/// The quantization stage of the pipeline (`--quantize int8|dynamic`): batch norm folded into
/// convolutions, then calibration and Q/DQ insertion (int8) or dynamic quantization.
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
            let calibration = calibrate_file(g, cfg, calib, opts.calib_batch, &eval)?;
            let pass = QuantizeStatic { config: cfg.clone(), calibration };
            reports.extend(Pipeline::new().with(pass).run(g, cx, after)?);
        }
        QuantizeMode::Dynamic => {
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
    let fp =
        PipelineOptions { quantize: QuantizeMode::None, calib: None, qconfig: None, min_sqnr: None, ..opts.clone() };
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
    let mut rows = vec![];
    for p in &plan {
        let node = g.node(p.id);
        let s = cfg.settings(node);
        let (decision, reason) = match (&p.decision, s.quantized()) {
            (qforge_passes::quantize::Decision::Quantize { .. }, false) => {
                ("keep".to_string(), format!("kept at {} by the qconfig policy", s.precision))
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
/// `--max-accuracy-drop`, the qconfig that keeps the most sensitive layers in float.
pub fn sensitivity(model: &Path, args: &SensitivityArgs, opts: PipelineOptions) -> Result<()> {
    use qforge_passes::quantize::{EvalSet, Study};
    let calib = opts.calib.clone().context("sensitivity needs calibration data: add --calib X.npy")?;
    let cfg = qconfig(&opts)?;
    let g = prepared_graph(model, &opts)?;
    let eval =
        EngineEvaluator { engine: opts.engine, run: RunOptions { max_tensor_bytes: opts.max_tensor_bytes as u128 } };
    let calibration = calibrate_file(&g, &cfg, &calib, opts.calib_batch, &eval)?;
    let x = crate::npy::read(args.input.as_deref().unwrap_or(&calib))?;
    let labels = match &args.labels {
        Some(p) => Some(data::labels(&crate::npy::read(p)?).with_context(|| format!("`{}`", p.display()))?),
        None => None,
    };
    let batches: Vec<Vec<Tensor>> = batches(&x, args.batch)?.collect();
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
    if let (Some(d), Some(f), Some(out)) = (args.max_accuracy_drop, fp32_top1, &args.output) {
        let (skip, top1) = study.keep_float_until(&ranked, f, d).map_err(anyhow::Error::msg)?;
        let mut text = format!(
            "# written by `qforge sensitivity --max-accuracy-drop {d}`: the {} most sensitive layers stay float\n\
             # fp32 top-1 {:.4}, int8 top-1 with these layers float {:.4}\n",
            skip.len(),
            f,
            top1
        );
        if let Some(p) = &opts.qconfig {
            text.push_str(&format!("# on top of `{}`: copy its rules above these\n", p.display()));
        }
        for s in &skip {
            let key = if s.contains(['*', '?']) { "regex" } else { "match" };
            let pat = if key == "regex" { format!("^{}$", regex_escape(s)) } else { s.clone() };
            text.push_str(&format!("\n[[node]]\n{key} = {}\nskip = true\n", toml_string(&pat)));
        }
        std::fs::write(out, text).with_context(|| format!("cannot write `{}`", out.display()))?;
        kept = Some((skip, top1));
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
    Ok(())
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
    let mut reference = vec![];
    for b in batches {
        reference.push(eval.run(g, b).map_err(anyhow::Error::msg)?.into_iter().next().context("no outputs")?);
    }
    let top1 = match labels {
        Some(l) => Some(data::top1(&data::argmax_rows(&data::concat_batch(&reference)?)?, l)?),
        None => None,
    };
    Ok((reference, top1))
}
