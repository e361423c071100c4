//! What each [`Stage`] of the pipeline does. [`crate::Compiler::stages`] decides which stages run
//! and in what order; this file only carries each one out on a [`State`].

use crate::compiler::{Compiler, Stage, State};
use crate::options::QuantizeMode;
use crate::sensitivity;
use anyhow::{Context, Result};
use qforge_ir::Graph;
use qforge_passes::canonicalize::Canonicalize;
use qforge_passes::conv_transpose::ConvTransposeAsConv;
use qforge_passes::egraph::{cost::CostTable, Optimize};
use qforge_passes::precision::{AlignChannels, AssignPrecision, F32Prefix, PrecisionConfig, Ranges};
use qforge_passes::quantize::{
    activation_plan, adaround_sites, bias_sites, calibrate_with_means, channel_absmax, channel_means,
    corrections_from_means, error_graph, fit_layer, input_stats, site_inputs, smooth_sites, AdaRound, BiasCorrection,
    ChannelStats, FoldBatchNorm, QuantizeDynamic, QuantizeStatic, SmoothQuant,
};
use qforge_passes::{Pass, Pipeline};

/// Runs `stage` on `st`.
pub fn run(c: &Compiler, stage: Stage, st: &mut State, after: &mut dyn FnMut(&str, &Graph)) -> Result<()> {
    match stage {
        Stage::Canonicalize => {
            let passes = Pipeline::new().with(Canonicalize).with(ConvTransposeAsConv);
            let reports = passes.run(&mut st.graph, &c.pass_context(), after)?;
            st.reports.extend(reports);
            Ok(())
        }
        Stage::FoldBatchNorm => pass(c, st, FoldBatchNorm, after),
        Stage::SmoothQuant => smooth(c, st, after),
        Stage::Calibrate => calibrate_stage(c, st),
        Stage::FloatFallback => float_fallback(c, st),
        Stage::AdaRound => adaround(c, st, after),
        Stage::BiasCorrection => bias_correction(c, st, after),
        Stage::Quantize => quantize(c, st, after),
        Stage::Precision => precision(c, st, after),
        Stage::AlignChannels => pass(c, st, AlignChannels { align: c.profile().layout.channel_align }, after),
        Stage::Optimize => {
            let cost = CostTable::from_profile(c.profile());
            pass(c, st, Optimize { cost, ..Optimize::default() }, after)
        }
    }
}

/// Runs one pass (verified after it) and keeps its report.
fn pass(c: &Compiler, st: &mut State, p: impl Pass + 'static, after: &mut dyn FnMut(&str, &Graph)) -> Result<()> {
    let reports = Pipeline::new().with(p).run(&mut st.graph, &c.pass_context(), after)?;
    st.reports.extend(reports);
    Ok(())
}

/// SmoothQuant: the per-channel maxima of every smoothable layer norm's result on the
/// calibration set, then the [`SmoothQuant`] pass. Nothing runs when no layer norm qualifies.
fn smooth(c: &Compiler, st: &mut State, after: &mut dyn FnMut(&str, &Graph)) -> Result<()> {
    let Some(alpha) = st.qconfig.smooth else { return Ok(()) };
    let sites = smooth_sites(&st.graph);
    if sites.is_empty() {
        tracing::info!("smoothquant: no layer norm feeds only weight matmuls; nothing to smooth");
        return Ok(());
    }
    let batches = c.calib_batches(&st.graph)?;
    let total = batches.len();
    tracing::info!("smoothquant (alpha {alpha}): observing {} layer norms", sites.len());
    let values: Vec<_> = sites.iter().map(|s| s.value()).collect();
    let mut bar = c.progress("smoothing", "batches");
    let maxima = channel_absmax(&st.graph, c.evaluator(), &mut batches.into_iter(), total, &values, &mut *bar)
        .context("observing SmoothQuant's channel maxima on the calibration set")?;
    let stats = ChannelStats::new(&st.graph, &sites, &maxima).map_err(anyhow::Error::msg)?;
    pass(c, st, SmoothQuant { alpha, stats }, after)
}

/// Observes the calibration ranges of every activation static quantization will quantize.
fn calibrate_stage(c: &Compiler, st: &mut State) -> Result<()> {
    let g = &st.graph;
    let ap = activation_plan(g, &st.qconfig)?;
    let targets = ap.targets();
    let src = c.calib_source()?;
    let (stream, total) = c.calib_stream(g)?;
    tracing::info!(
        "calibrating on {}: {} batches of at most {}, {} tensors observed, observer {}",
        src.describe(),
        total.map_or("its".to_string(), |t| t.to_string()),
        c.options().calib_batch,
        targets.len(),
        crate::qconfig::observer_origin(c.options(), &st.qconfig)
    );
    let t = std::time::Instant::now();
    let mut bar = c.progress("calibrating", "batches");
    // batches are streamed: memory holds one batch, one run's share of it as the engine's input
    // (see `calibrate`) and the observers' fixed-size state; a batch the source fails to produce
    // ends the pass and is the error
    let mut failed = None;
    let mut batches = stream.map_while(|b| b.map_err(|e| failed = Some(e)).ok());
    // bias correction's input means are taken in the same pass (it then runs none of its own)
    let stats = if st.qconfig.corrects_bias() { input_stats(g, &st.qconfig)? } else { vec![] };
    let cal = calibrate_with_means(g, c.evaluator(), &mut batches, total.unwrap_or(0), &targets, &stats, &mut *bar);
    drop(batches);
    if let Some(e) = failed {
        return Err(e.context(format!("reading the calibration data {}", src.describe())));
    }
    let cal = cal.with_context(|| format!("calibrating on {}", src.describe()))?;
    tracing::info!(
        "calibrated {} ranges on {} batches in {:.1} ms",
        cal.ranges.len(),
        cal.batches,
        t.elapsed().as_secs_f64() * 1e3
    );
    // a chosen range that clips far more than min-max's, or loses far more of the tensor: the
    // user hears of it (and which tensor), whatever the method
    for w in &cal.warnings {
        tracing::warn!("{w}");
    }
    st.calibration = Some(cal);
    Ok(())
}

/// `--min-sqnr DB` with INT8: a sensitivity study on the calibration set, then the most sensitive
/// layers kept float until the output SQNR against the float graph reaches DB.
fn float_fallback(c: &Compiler, st: &mut State) -> Result<()> {
    let Some(min_db) = c.options().min_sqnr else { return Ok(()) };
    let batches = c.calib_batches(&st.graph)?;
    let study = sensitivity::prepare(c, st, &batches, None)?;
    let ranked = study.rank()?;
    let kept = study.keep_float_for_sqnr(&ranked, min_db)?;
    if kept.reached >= min_db {
        tracing::info!(
            "--min-sqnr {min_db}: {} of {} layers kept float, output SQNR {:.2} dB on the calibration set: {:?}",
            kept.layers.len(),
            ranked.layers.len(),
            kept.reached,
            kept.layers
        );
    } else {
        tracing::warn!(
            "--min-sqnr {min_db}: not reached with every one of the {} ranked layers float ({:.2} dB)",
            ranked.layers.len(),
            kept.reached
        );
    }
    st.qconfig = sensitivity::skipping(&st.qconfig, &kept);
    Ok(())
}

/// Bias correction: each quantized layer's weight rounding error (the weights static quantization
/// will store, from the calibration's ranges and the policy in force), its mean effect on the
/// layer's output `ΔW E[x]` from the input means calibration observed
/// ([`corrections_from_means`]), then the [`BiasCorrection`] pass. A calibration without those
/// means (made elsewhere, or a layer whose input is not f32) has the effect measured in one more
/// pass over the calibration set instead, skipped with a warning where the data serves one pass.
/// Nothing runs when no layer has a bias to correct.
fn bias_correction(c: &Compiler, st: &mut State, after: &mut dyn FnMut(&str, &Graph)) -> Result<()> {
    let cal = st.calibration.as_ref().context("bias correction runs after calibration")?;
    let sites = bias_sites(&st.graph, &st.qconfig, cal, &c.pass_context())?;
    if sites.is_empty() {
        tracing::info!("bias correction: no quantized layer with a bias to correct");
        return Ok(());
    }
    if let Some(corrections) = corrections_from_means(&st.graph, &sites, &cal.input_means)? {
        tracing::info!(
            "bias correction: the output error of {} layers from their calibration input means",
            sites.len()
        );
        return pass(c, st, BiasCorrection { corrections }, after);
    }
    if c.calib_source()?.single_pass() {
        tracing::warn!(
            "bias correction skipped: it takes a second pass over the calibration data, which serves one pass only \
             (pass a re-iterable, or turn bias correction off to silence this)"
        );
        return Ok(());
    }
    let (eg, values) = error_graph(&st.graph, &sites)?;
    tracing::info!("bias correction: measuring the output error of {} layers", sites.len());
    let (stream, total) = c.calib_stream(&st.graph)?;
    let mut failed = None;
    let mut batches = stream.map_while(|b| b.map_err(|e| failed = Some(e)).ok());
    let mut bar = c.progress("bias correction", "batches");
    let means = channel_means(&eg, c.evaluator(), &mut batches, total.unwrap_or(0), &values, &mut *bar);
    drop(batches);
    if let Some(e) = failed {
        return Err(e.context("reading the calibration data for bias correction"));
    }
    let means = means.context("measuring the layers' output error on the calibration set")?;
    let mut corrections = std::collections::BTreeMap::new();
    for (s, (v, _)) in sites.iter().zip(&values) {
        let key = (eg.node(v.node).name.clone(), v.port);
        let m = means.get(&key).context("bias correction: a measured layer has no means")?;
        corrections.insert(st.graph.node(s.node).name.clone(), m.clone());
    }
    pass(c, st, BiasCorrection { corrections }, after)
}

/// AdaRound: each layer whose rule says `rounding = "adaround"` fitted in turn on its float
/// input over the calibration set (observed in one pass, every layer's input held until its fit),
/// then the [`AdaRound`] pass snaps the weights so that Q/DQ insertion computes the learned codes.
/// The layers a rule names that AdaRound cannot round are named in a warning and round to nearest.
fn adaround(c: &Compiler, st: &mut State, after: &mut dyn FnMut(&str, &Graph)) -> Result<()> {
    let (sites, skipped) = adaround_sites(&st.graph, &st.qconfig)?;
    for s in &skipped {
        tracing::warn!("adaround: {s}; rounded to nearest");
    }
    if sites.is_empty() {
        return Ok(());
    }
    let opts = st.qconfig.adaround.clone().unwrap_or_default();
    let batches = c.calib_batches(&st.graph)?;
    let inputs = site_inputs(&st.graph, &sites, c.evaluator(), &mut batches.into_iter())
        .context("observing the AdaRound layers' inputs on the calibration set")?;
    tracing::info!("adaround: fitting {} layers, {} steps each", sites.len(), opts.iterations);
    let mut bar = c.progress("adaround", "layers");
    let mut fits = Vec::with_capacity(sites.len());
    for (i, (site, x)) in sites.iter().zip(&inputs).enumerate() {
        let t = std::time::Instant::now();
        let fit = fit_layer(&st.graph, site, x, &opts)?;
        tracing::info!(
            "adaround: `{}` {} of {} weights flipped, error {:.3e} -> {:.3e} ({:.0} ms)",
            fit.node,
            fit.flipped,
            fit.weights,
            fit.error_nearest,
            fit.error_adaround,
            t.elapsed().as_secs_f64() * 1e3
        );
        fits.push(fit);
        bar(i + 1, sites.len());
    }
    pass(c, st, AdaRound::from_fits(fits), after)
}

/// Q/DQ insertion with the calibrated ranges (static INT8), or dynamic quantization.
fn quantize(c: &Compiler, st: &mut State, after: &mut dyn FnMut(&str, &Graph)) -> Result<()> {
    match c.options().quantize {
        QuantizeMode::None => Ok(()),
        QuantizeMode::Int8 => {
            let calibration = st.calibration.clone().context("static quantization runs after calibration")?;
            pass(c, st, QuantizeStatic { config: st.qconfig.clone(), calibration }, after)
        }
        QuantizeMode::Dynamic => {
            if st.qconfig.smooth.is_some() {
                tracing::warn!(
                    "the qconfig's [smoothquant] applies to static int8 only; ignored by --quantize dynamic"
                );
            }
            pass(c, st, QuantizeDynamic { config: st.qconfig.clone(), conv: true }, after)
        }
    }
}

/// Precision assignment, after the fp16 overflow guard's ranges and the accuracy guard's f32
/// prefix are measured on the calibration set when asked for.
fn precision(c: &Compiler, st: &mut State, after: &mut dyn FnMut(&str, &Graph)) -> Result<()> {
    let Some(cfg) = c.precision() else { return Ok(()) };
    let ranges = overflow_ranges(c, cfg, &st.graph)?;
    let prefix = accuracy_guard(c, cfg, &st.graph, &ranges)?;
    pass(c, st, AssignPrecision::new(PrecisionConfig { ranges, f32_prefix: prefix, ..cfg.clone() }), after)
}

/// With `--calib` and an f16 precision: every node's largest magnitude on the calibration set,
/// for the fp16 overflow guard.
fn overflow_ranges(c: &Compiler, cfg: &PrecisionConfig, g: &Graph) -> Result<Option<Ranges>> {
    if cfg.low != qforge_ir::DType::F16 || !c.has_calibration() {
        return Ok(None);
    }
    let batches = c.calib_batches(g)?;
    tracing::info!("fp16 overflow guard: observing ranges in {} batches", batches.len());
    let r = qforge_passes::precision::observe_ranges(g, &batches, c.evaluator())
        .map_err(|e| anyhow::anyhow!("calibration for the fp16 overflow guard: {e}"))?;
    Ok(Some(r))
}

/// The accuracy guard (`--min-sqnr`, or `min_sqnr_db` in the precision config): the shortest
/// prefix of the ops precision assignment lowers that must stay f32 for the output on the
/// calibration set to reach the target ([`qforge_passes::precision::search`]).
fn accuracy_guard(
    c: &Compiler,
    cfg: &PrecisionConfig,
    g: &Graph,
    ranges: &Option<Ranges>,
) -> Result<Option<F32Prefix>> {
    let Some(target) = cfg.policy.min_sqnr_db else { return Ok(None) };
    let batches = c.calib_batches(g)?;
    let cfg = PrecisionConfig { ranges: ranges.clone(), ..cfg.clone() };
    let t = std::time::Instant::now();
    let o = qforge_codegen::reuse::between_programs(|| {
        qforge_passes::precision::f32_prefix_for(g, &cfg, target, &batches, c.evaluator(), &c.pass_context())
    })
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
