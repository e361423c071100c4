//! `qforge finetune --method adaround`: post-training quantization with AdaRound's learned
//! rounding instead of fine-tuning (Nagel et al. 2020, "Up or Down? Adaptive Rounding for
//! Post-Training Quantization"), optionally after structured pruning.
//!
//! Nothing is reimplemented here: the (pruned) model goes through the pipeline's own stages up to
//! Q/DQ insertion as `qforge quantize --rounding adaround [--weight-bits 4]` runs them (fold batch
//! norm, calibrate, the AdaRound stage, bias correction, quantize), with the weight scheme of
//! `weight_bits` set as `--weight-bits` sets it (`onnx::conventions::policy`) and the fit's
//! settings in the policy's `[adaround]` table. The result is the same kind of Q/DQ graph QAT's
//! conversion gives, which the command compiles or exports.
//!
//! What AdaRound is fitted on is the calibration set alone: no labels, no teacher (each layer
//! reconstructs its own float output), so pruning before it removes channels without any repair
//! of the accuracy they carried (the command's documentation says so).

use super::prune;
use crate::calib_set::CalibSource;
use crate::compiler::{Compiler, ProgressFactory, Stage};
use crate::options::{PipelineOptions, QuantizeMode, RoundingArg, Switch};
use anyhow::{bail, Context, Result};
use qforge_ir::Graph;
use qforge_passes::prune::{PruneOptions, PruneReport};
use qforge_passes::quantize::adaround::AdaRoundOptions;
use qforge_passes::quantize::CalibMethod;
use std::sync::Arc;

/// What `--method adaround` does.
#[derive(Clone, Debug)]
pub struct AdaRoundRun {
    /// Weight bits: 8, or 4 (4-bit per-channel weights, 8-bit activations).
    pub weight_bits: u32,
    /// The calibration observer (min-max by default).
    pub calib_method: Option<CalibMethod>,
    /// The fit (`[adaround]`: steps per layer, batch, learning rate, seed, ...).
    pub fit: AdaRoundOptions,
    /// Bias correction after the rounding is fixed (the pipeline's default: on).
    pub bias_correction: bool,
    /// Structured channel pruning first.
    pub prune: Option<PruneOptions>,
    pub max_tensor_bytes: u64,
    /// The engine that runs calibration and the layers' fits (`--engine`, `--threads`).
    pub engine: crate::options::Engine,
    pub threads: u16,
}

/// The quantized model.
#[derive(Clone, Debug)]
pub struct Rounded {
    /// The float graph with Q/DQ (the weights snapped to AdaRound's grid points), before the
    /// optimizer.
    pub graph: Graph,
    pub pruned: Option<PruneReport>,
    /// One line per fitted layer: weights rounded away from nearest, the reconstruction error
    /// before and after (the AdaRound pass's report).
    pub layers: Vec<String>,
    pub seconds: f64,
}

/// Quantizes `model` (an imported graph) with AdaRound on the calibration data `calib`; `progress`
/// draws the calibration and fit bars.
pub fn adaround(
    model: &Graph,
    calib: Arc<dyn CalibSource>,
    o: &AdaRoundRun,
    progress: Option<ProgressFactory>,
) -> Result<Rounded> {
    let t = std::time::Instant::now();
    if !matches!(o.weight_bits, 8 | 4) {
        bail!("--quantize: {}-bit weights (expected int8 or int4)", o.weight_bits);
    }
    o.fit.check().context("--method adaround")?;
    let opts = PipelineOptions {
        quantize: QuantizeMode::Int8,
        calib_method: o.calib_method,
        rounding: Some(RoundingArg::Adaround),
        bias_correction: Some(if o.bias_correction { Switch::On } else { Switch::Off }),
        max_tensor_bytes: o.max_tensor_bytes,
        engine: o.engine,
        threads: o.threads,
        opt_level: 1,
        ..PipelineOptions::default()
    };
    let c = Compiler::new(opts)?;
    let mut policy = crate::onnx::conventions::policy(None, c.options(), c.qconfig(), Some(o.weight_bits))?;
    policy.adaround = Some(o.fit.clone());
    let mut c = c.with_qconfig(policy).with_calibration(calib);
    if let Some(p) = progress {
        c = c.with_progress(p);
    }
    let (student, pruned) = match &o.prune {
        Some(p) => {
            let (g, r) = prune(model, p)?;
            (g, Some(r))
        }
        None => (model.clone(), None),
    };
    let st = c.run_until(student, Stage::Quantize, &mut |_, _| {})?;
    let layers = st.reports.iter().filter(|r| r.pass == "adaround").flat_map(|r| r.notes.iter().cloned()).collect();
    Ok(Rounded { graph: st.graph, pruned, layers, seconds: t.elapsed().as_secs_f64() })
}
