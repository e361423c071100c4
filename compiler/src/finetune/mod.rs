//! `qforge finetune`: quantization-aware fine-tuning of an ONNX model on its calibration data
//! (see `qforge_passes::train` for the algorithm): the model imported, canonicalized and its batch
//! norms folded, calibrated (the initial ranges: post-training quantization), fake-quantized at
//! the static quantizer's Q/DQ sites, fine-tuned by distillation from its own FP32 outputs (and
//! cross-entropy with labels), and converted back to a Q/DQ graph that the pipeline compiles to
//! integer kernels or the QDQ exporter writes.
//!
//! With [`FinetuneOptions::prune`], the imported graph is first pruned ([`prune`]: L2-norm
//! structured channel pruning of the convs' output channels, before batch norm is folded, so the
//! channels are chosen on the conv weights as PyTorch's `ln_structured` chooses them), and the
//! pruned model is fine-tuned by distillation from the *unpruned* FP32 model (the seed's
//! `compress_pipeline`: prune, then QAT with the original as the teacher). `adaround.rs` is the
//! other method: post-training quantization with AdaRound's learned rounding, through the
//! pipeline's own AdaRound stage.
//!
//! Training runs on the pipeline's engine ([`EngineEvaluator`]: `--engine`, `--threads`): the
//! JIT by default, the training graph compiled once, its convolutions (whose weights are the
//! parameters, runtime values) on the native host kernels of `qforge_codegen::host_kernels`; or
//! the reference interpreter, which defines every op, the gradient ops included. On one thread a
//! run is deterministic for a seed on either.
//! `report.rs` draws the loss curve and writes the `--report` page.

pub mod adaround;
pub mod report;

use crate::data::{self, NonFinite};
use crate::evaluator::EngineEvaluator;
use anyhow::{bail, Context, Result};
use qforge_ir::{DType, Graph, Tensor};
use qforge_passes::prune::{prune_channels, PruneOptions, PruneReport};
use qforge_passes::quantize::scheme::{QType, Scheme};
use qforge_passes::quantize::{calibrate, CalibMethod, QConfig};
use qforge_passes::train::{self, Objective, QatModel, StepInfo, TrainConfig, TrainData, Trained};

/// What `finetune` does, besides the training configuration.
#[derive(Clone, Debug)]
pub struct FinetuneOptions {
    /// Weight bits: 8 (INT8) or 4 (W4A8: 4-bit per-channel weights, 8-bit activations).
    pub weight_bits: u32,
    /// The activation observer (min-max by default; EMA follows the batches).
    pub calib_method: Option<CalibMethod>,
    pub objective: Objective,
    pub train: TrainConfig,
    /// The engine that runs calibration, the teacher and every training step.
    pub eval: EngineEvaluator,
    /// Structured channel pruning before fine-tuning (`--prune`); the teacher is then the
    /// unpruned model.
    pub prune: Option<PruneOptions>,
}

/// The fine-tuned model.
#[derive(Clone, Debug)]
pub struct Finetuned {
    pub qat: QatModel,
    pub trained: Trained,
    /// The trained model as a float graph with Q/DQ (what the pipeline compiles and the exporter
    /// writes).
    pub graph: Graph,
    /// The same model at its initial values (post-training quantization without bias correction).
    pub initial: Graph,
    /// What pruning did (with [`FinetuneOptions::prune`]): channels, MACs and parameters before
    /// and after.
    pub pruned: Option<PruneReport>,
    pub seconds: f64,
    /// The wall time of each training step (forward, backward, optimizer and observer updates,
    /// as the trainer reports them; the first includes compiling the training graph on the JIT).
    pub step_seconds: Vec<f64>,
}

impl Finetuned {
    /// The median of [`Finetuned::step_seconds`] ([`crate::stats::median`]; NaN without steps).
    pub fn median_step_seconds(&self) -> f64 {
        crate::stats::median(&mut self.step_seconds.clone())
    }
}

/// `model` pruned as `opts` says ([`prune_channels`] on the imported graph, batch norms not yet
/// folded: the channels are ranked by the conv weights' own norms, as `ln_structured` ranks them
/// in the PyTorch model, not by the folded weights, which the batch norms' scales reorder).
pub fn prune(model: &Graph, opts: &PruneOptions) -> Result<(Graph, PruneReport)> {
    let mut g = model.clone();
    let r = prune_channels(&mut g, opts).context("--prune")?;
    Ok((g, r))
}

/// The quantization policy: the static quantizer's defaults (u8 asymmetric activations, i8
/// symmetric per-channel weights, min-max), 4-bit weights for `weight_bits` 4.
pub fn qconfig(weight_bits: u32, calib_method: Option<CalibMethod>) -> Result<QConfig> {
    let mut default = QConfig::builtin();
    default.weights = Some(Scheme::symmetric(match weight_bits {
        8 => QType::I8,
        4 => QType::I4,
        b => bail!("--quantize: {b}-bit weights (expected int8 or int4)"),
    }));
    if let Some(m) = calib_method {
        if !matches!(m, CalibMethod::MinMax | CalibMethod::Ema) {
            bail!("--calib-method {m}: fine-tuning observes ranges at every step with minmax or ema only");
        }
        default.observer = Some(m);
    }
    Ok(QConfig { default, ..QConfig::default() })
}

/// Fine-tunes `model` (an imported graph, batch norms not yet folded) on the calibration samples
/// `x` (`[N, ...]`, the model's one input), with optional `labels`; with `o.prune`, the pruned
/// model, distilled from `model` itself; `on_step` sees every step.
pub fn finetune(
    model: &Graph,
    x: &Tensor,
    labels: Option<Vec<usize>>,
    o: &FinetuneOptions,
    on_calibrated: &mut dyn FnMut(usize, usize),
    on_step: &mut dyn FnMut(&StepInfo),
) -> Result<Finetuned> {
    let t = std::time::Instant::now();
    if model.inputs().len() != 1 {
        bail!("finetune takes a model with one input; this one has {}", model.inputs().len());
    }
    if x.dtype() != DType::F32 {
        bail!("--calib: the samples are {}, expected f32", x.dtype());
    }
    data::check_finite(std::slice::from_ref(x), "--calib", NonFinite::Refuse("fine-tuning needs finite data"))?;
    let n = x.shape().first().copied().unwrap_or(0);
    if n == 0 {
        bail!("--calib: no samples");
    }
    if let Some(l) = &labels {
        if l.len() != n {
            bail!("--labels: {} labels for {n} samples", l.len());
        }
    }
    let qconfig = qconfig(o.weight_bits, o.calib_method)?;
    let (student, pruned) = match &o.prune {
        Some(p) => {
            let (g, r) = prune(model, p)?;
            (g, Some(r))
        }
        None => (model.clone(), None),
    };
    let folded = train::fold_for_training(&student)?;
    // the teacher of a pruned student: the original model, folded as the student is
    let teacher = match pruned {
        Some(_) => Some(train::fold_for_training(model)?),
        None => None,
    };
    let eval = &o.eval;
    // the initial ranges: a calibration of the folded graph, as post-training quantization's
    let targets = train::calibration_targets(&folded, &qconfig)?;
    let batch = o.train.batch.max(1);
    let batches: Vec<Vec<Tensor>> = (0..n)
        .step_by(batch)
        .map(|s| data::slice_batch(x, s, (s + batch).min(n)).map(|t| vec![t]))
        .collect::<Result<_>>()?;
    let total = batches.len();
    let cal = calibrate(&folded, eval, &mut batches.into_iter(), total, &targets, on_calibrated)?;
    let qat = QatModel::prepare(&folded, &qconfig, &cal)?;
    let initial = train::convert(&qat, &qat.values())?;
    let data = TrainData { inputs: vec![x.clone()], labels, teacher };
    let mut step_seconds = Vec::new();
    let mut last = std::time::Instant::now();
    let trained = train::train(&qat, &o.objective, &data, eval, &o.train, &mut |s| {
        let now = std::time::Instant::now();
        step_seconds.push(now.duration_since(last).as_secs_f64());
        on_step(s);
        last = std::time::Instant::now();
    })?;
    let graph = train::convert(&qat, &trained.values).context("converting the trained model to Q/DQ")?;
    Ok(Finetuned { qat, trained, graph, initial, pruned, seconds: t.elapsed().as_secs_f64(), step_seconds })
}
