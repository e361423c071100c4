//! The fine-tuning loop: batches shuffled by a seed, forward and backward through an
//! [`Evaluator`] (the loss graph of [`super::objective`] differentiated by [`crate::autodiff`]),
//! dynamic loss scaling, the optimizer step on f32 master values, observers updated during the
//! first steps and then frozen, a callback after each step.
//!
//! One step:
//! 1. the batch's data, the parameters, the teacher's outputs for the batch (computed once, before
//!    the first step, by running the FP32 graph), the labels (one-hot) and the loss scale are fed to
//!    the differentiated loss graph (rounded to FP16/BF16 with [`super::scaler::round_to_storage`]
//!    when training in half precision);
//! 2. while observing (the first [`TrainConfig::observer_steps`] steps), each activation's
//!    observer sees its value (the observers start from the calibrated ranges);
//! 3. the gradients are unscaled (divided by the loss scale, in f32); a step whose gradients are
//!    not all finite is skipped (and, with dynamic scaling, the scale halved), as
//!    `torch.amp.GradScaler.step` skips it; otherwise they are clipped to
//!    [`TrainConfig::clip_grad_norm`] (the global L2 norm, `torch.nn.utils.clip_grad_norm_`), a
//!    scale's gradient is multiplied by its LSQ gradient scale, and the optimizer updates each
//!    trainable parameter (weight decay on weights only; with Adam a scale is updated through
//!    its logarithm, [`adam_log_step`]; a learned scale is kept at least [`MIN_SCALE`]);
//! 4. while observing, the activation scales and zero points are set from the observers and the
//!    weight scales from the updated weights (per-channel min-max); after the last observing step
//!    they stay (or, with [`TrainConfig::learn_scales`], are learned: LSQ).
//!
//! Invariants: pure (no files, no printing); deterministic for a seed on a deterministic
//! evaluator (the shuffle is SplitMix64 + Fisher-Yates, every reduction in element order).

use super::fake_quant::{ParamKind, QatModel};
use super::objective::{self, Objective};
use super::optim::{CosineSchedule, Optimizer, OptimizerKind};
use super::scaler::{round_to_storage, GradScaler, TrainPrecision};
use super::TrainError;
use crate::evaluator::Evaluator;
use crate::quantize::Observer;
use crate::rng::SplitMix64;
use qforge_ir::Tensor;

/// The smallest value a learned scale is kept at.
pub const MIN_SCALE: f32 = 1e-12;

/// With Adam, the scales' learning rate relative to [`TrainConfig::lr`] (see [`adam_log_step`]).
pub const ADAM_SCALE_LR_FACTOR: f32 = 10.0;

/// One Adam step of a scale parameter `s`, taken on `ln s` (the gradient `s * dL/ds`), so the
/// scale is multiplied by about `exp(±lr)` rather than moved by about `±lr`.
///
/// Adam's step does not depend on the gradient's size (LSQ's gradient scale, a constant per
/// tensor, cancels in `m / sqrt(v)`), so on the scale itself every step moves each scale by about
/// the learning rate whatever its size: at lr 3e-3 a weight scale of 2e-3 can turn negative in
/// one step and is then clamped to [`MIN_SCALE`], which zeroes its channel's weights. In the log
/// domain a scale stays positive and moves relatively. The rate is [`ADAM_SCALE_LR_FACTOR`] times
/// the weights': Adam moves a weight of typical magnitude 0.05-0.1 by about the learning rate,
/// 10-20 times the learning rate in relative terms, and a scale should keep pace with the weights
/// it quantizes (LSQ's aim for its gradient scale: Esser et al. 2020, section 2.2). SGD keeps
/// LSQ's own update, on the scale itself.
fn adam_log_step(opt: &mut Optimizer, i: usize, s: &mut [f32], grad: &[f32], lr: f32) {
    let g: Vec<f32> = grad.iter().zip(s.iter()).map(|(g, s)| g * s).collect();
    let mut l: Vec<f32> = s.iter().map(|s| s.ln()).collect();
    opt.step(i, &mut l, &g, lr, 0.0);
    for (s, l) in s.iter_mut().zip(&l) {
        *s = l.exp();
    }
}

/// How to train.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch: usize,
    pub seed: u64,
    pub optimizer: OptimizerKind,
    /// The initial learning rate, annealed with a cosine to `lr_min` over all steps.
    pub lr: f32,
    pub lr_min: f32,
    pub weight_decay: f32,
    /// Learn the scales (LSQ) once the observers are frozen.
    pub learn_scales: bool,
    /// Steps during which the observers update the scales (then they are frozen); `None`: the
    /// first quarter of the steps.
    pub observer_steps: Option<usize>,
    pub precision: TrainPrecision,
    /// Dynamic loss scaling ([`GradScaler`]); without it the loss scale is 1.
    pub loss_scaling: bool,
    pub clip_grad_norm: Option<f32>,
}

impl Default for TrainConfig {
    /// Adam at 1e-4 with cosine decay (the seed's distillation uses Adam; QAT fine-tuning starts
    /// far lower than training from scratch), batch 32, 8 epochs, observers for the first quarter
    /// of the steps, learned scales after that, FP32.
    fn default() -> Self {
        TrainConfig {
            epochs: 8,
            batch: 32,
            seed: 0,
            optimizer: OptimizerKind::adam(),
            lr: 1e-4,
            lr_min: 0.0,
            weight_decay: 0.0,
            learn_scales: true,
            observer_steps: None,
            precision: TrainPrecision::Fp32,
            loss_scaling: false,
            clip_grad_norm: None,
        }
    }
}

/// The training data: one tensor per data input, `[N, ...]` f32, optional class labels, and
/// optionally the FP32 graph the distillation targets come from.
#[derive(Clone, Debug)]
pub struct TrainData {
    pub inputs: Vec<Tensor>,
    pub labels: Option<Vec<usize>>,
    /// The teacher: an FP32 graph with the model's inputs and outputs (the unpruned original
    /// when the student was pruned, as the seed's `compress_pipeline` distils from it); `None`:
    /// the QAT model's own float graph ([`QatModel::float`]).
    pub teacher: Option<qforge_ir::Graph>,
}

/// What the callback sees after each step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepInfo {
    /// 0-based step and the total.
    pub step: usize,
    pub total: usize,
    pub epoch: usize,
    /// The batch's loss (unscaled; NaN or infinite when the forward overflowed).
    pub loss: f32,
    pub lr: f32,
    /// The loss scale the step used (1 without scaling).
    pub loss_scale: f32,
    /// Whether this step was skipped (non-finite gradients), and how many were so far.
    pub skipped: bool,
    pub skipped_total: u64,
    /// Whether the observers were updating the scales at this step.
    pub observing: bool,
}

/// The result of training.
#[derive(Clone, Debug)]
pub struct Trained {
    /// The parameter values, in [`QatModel::params`] order.
    pub values: Vec<Tensor>,
    /// Every step's record (the loss curve).
    pub steps: Vec<StepInfo>,
    /// The final loss scale (1 without scaling).
    pub loss_scale: f32,
}

/// A permutation of `0..n` (Fisher-Yates).
fn shuffle(n: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i + 1);
        p.swap(i, j);
    }
    p
}

/// Rows `idx` of a row-major `[N, ...]` tensor of `row` values per sample.
fn gather(data: &[f32], row: usize, shape: &[usize], idx: &[usize]) -> Tensor {
    let mut out = Vec::with_capacity(idx.len() * row);
    for &i in idx {
        out.extend_from_slice(&data[i * row..(i + 1) * row]);
    }
    let mut s = shape.to_vec();
    s[0] = idx.len();
    Tensor::from_f32(s, out)
}

/// A table of per-sample rows (the data, the teacher's outputs).
struct Rows {
    data: Vec<f32>,
    row: usize,
    shape: Vec<usize>,
}

impl Rows {
    fn of(t: &Tensor, what: &str) -> Result<Rows, TrainError> {
        let data = t.as_f32().ok_or_else(|| TrainError::Data(format!("{what} is not f32")))?.to_vec();
        let n = *t.shape().first().ok_or_else(|| TrainError::Data(format!("{what} has no batch axis")))?;
        let row = data.len().checked_div(n).unwrap_or(0);
        Ok(Rows { data, row, shape: t.shape().to_vec() })
    }
    fn batch(&self, idx: &[usize]) -> Tensor {
        gather(&self.data, self.row, &self.shape, idx)
    }
}

fn scalar(t: &Tensor) -> f32 {
    t.to_f32_vec().first().copied().unwrap_or(f32::NAN)
}

/// Runs `teacher` (the FP32 graph with feature outputs) over `data` in batches of `batch`, and
/// returns each of its outputs over all samples.
fn teacher_rows(
    teacher: &qforge_ir::Graph,
    eval: &dyn Evaluator,
    data: &[Rows],
    n: usize,
    batch: usize,
) -> Result<Vec<Rows>, TrainError> {
    let mut outs: Vec<Rows> = vec![];
    let runner = eval.runner(teacher).map_err(|error| TrainError::Eval { step: None, error })?;
    for start in (0..n).step_by(batch) {
        let idx: Vec<usize> = (start..(start + batch).min(n)).collect();
        let inputs: Vec<Tensor> = data.iter().map(|r| r.batch(&idx)).collect();
        let res = runner.run(&inputs).map_err(|error| TrainError::Eval { step: None, error })?;
        for (k, t) in res.iter().enumerate() {
            let r = Rows::of(t, "a teacher output")?;
            if outs.len() <= k {
                let mut shape = r.shape.clone();
                shape[0] = n;
                outs.push(Rows { data: Vec::with_capacity(n * r.row), row: r.row, shape });
            }
            outs[k].data.extend_from_slice(&r.data);
        }
    }
    Ok(outs)
}

/// Fine-tunes `model` on `data` (see the module documentation); `on_step` is called after each
/// step. Returns the trained parameter values and the loss curve.
pub fn train(
    model: &QatModel,
    objective: &Objective,
    data: &TrainData,
    eval: &dyn Evaluator,
    cfg: &TrainConfig,
    on_step: &mut dyn FnMut(&StepInfo),
) -> Result<Trained, TrainError> {
    if cfg.batch == 0 || cfg.epochs == 0 {
        return Err(TrainError::Data("the batch size and the number of epochs must be at least 1".into()));
    }
    if data.inputs.len() != model.data_inputs {
        return Err(TrainError::Data(format!(
            "{} data inputs for a model with {}",
            data.inputs.len(),
            model.data_inputs
        )));
    }
    let rows: Vec<Rows> = data.inputs.iter().map(|t| Rows::of(t, "the training data")).collect::<Result<_, _>>()?;
    let n = rows.first().map_or(0, |r| r.shape[0]);
    if n == 0 || rows.iter().any(|r| r.shape[0] != n) {
        return Err(TrainError::Data("the training inputs are empty or differ in their number of samples".into()));
    }
    // the teacher's outputs, once
    let teacher = objective::teacher_graph(data.teacher.as_ref().unwrap_or(&model.float), objective)?;
    let teacher_out = teacher_rows(&teacher, eval, &rows, n, cfg.batch)?;
    let classes = teacher_out.first().map_or(0, |r| r.row);
    let onehot = match &data.labels {
        Some(l) => {
            if l.len() != n {
                return Err(TrainError::Data(format!("{} labels for {n} samples", l.len())));
            }
            let mut v = vec![0f32; n * classes];
            for (i, &c) in l.iter().enumerate() {
                if c >= classes {
                    return Err(TrainError::Data(format!("label {c} of sample {i} is not below {classes} classes")));
                }
                v[i * classes + c] = 1.0;
            }
            Some(Rows { data: v, row: classes, shape: vec![n, classes] })
        }
        None => None,
    };
    // the differentiated loss graph
    let lg = objective::attach(model, objective, onehot.is_some())?;
    let trainable: Vec<usize> =
        (0..model.params.len()).filter(|&i| model.params[i].trainable(cfg.learn_scales)).collect();
    let wrt: Vec<&str> = trainable.iter().map(|&i| model.params[i].name.as_str()).collect();
    let d = crate::autodiff::differentiate(&lg.graph, lg.scaled_loss, &wrt)
        .map_err(|e| TrainError::Autodiff(Box::new(e)))?;
    let graph = match cfg.precision.storage() {
        Some(s) => round_to_storage(&d.graph, s, &[objective::LOSS_SCALE])?,
        None => d.graph,
    };
    // compiled once by an engine that compiles (every step has the same input shapes but the
    // last of an epoch, when the batch does not divide the samples)
    let runner = eval.runner(&graph).map_err(|error| TrainError::Eval { step: None, error })?;
    let mut values = model.values();
    let mut qat = model.clone();
    let sizes: Vec<usize> = trainable.iter().map(|&i| values[i].len()).collect();
    let mut opt = Optimizer::new(cfg.optimizer, &sizes);
    let mut scaler = cfg.loss_scaling.then(GradScaler::default);
    let mut skipped_total = 0u64;
    // observers, seeded with the calibrated ranges
    let mut observers: Vec<Option<Box<dyn Observer>>> = vec![];
    for a in &model.activations {
        if a.observed.is_none() {
            observers.push(None);
            continue;
        }
        let node = model.float.node(a.value.node).name.clone();
        let obs_err = |error| TrainError::Observe { node: node.clone(), error };
        let mut o = a.observer.build().map_err(obs_err)?;
        let s = scalar(&values[a.scale]);
        let z = scalar(&values[a.zero_point]);
        let (lo, hi) = a.scheme.qtype.range();
        o.observe(&[(lo as f32 - z) * s, (hi as f32 - z) * s]).map_err(obs_err)?;
        observers.push(Some(o));
    }
    let per_epoch = n.div_ceil(cfg.batch);
    let total = per_epoch * cfg.epochs;
    let schedule = CosineSchedule { lr: cfg.lr, lr_min: cfg.lr_min, total };
    let mut rng = SplitMix64(cfg.seed);
    let observer_steps = cfg.observer_steps.unwrap_or(total / 4);
    let mut steps = Vec::with_capacity(total);
    let mut step = 0usize;
    for epoch in 0..cfg.epochs {
        let perm = shuffle(n, &mut rng);
        for idx in perm.chunks(cfg.batch) {
            let observing = step < observer_steps;
            let loss_scale = scaler.as_ref().map_or(1.0, |s| s.scale);
            let mut inputs: Vec<Tensor> = rows.iter().map(|r| r.batch(idx)).collect();
            inputs.extend(values.iter().cloned());
            inputs.extend(teacher_out.iter().map(|r| r.batch(idx)).take(1 + lg.features.len()));
            if let Some(y) = &onehot {
                inputs.push(y.batch(idx));
            }
            inputs.push(Tensor::scalar_f32(loss_scale));
            let outs = runner.run(&inputs).map_err(|error| TrainError::Eval { step: Some(step), error })?;
            let loss = scalar(&outs[lg.loss]);
            if observing {
                for (a, o) in model.activations.iter().zip(observers.iter_mut()) {
                    let (Some(k), Some(o)) = (a.observed, o.as_mut()) else { continue };
                    let v = outs[k].to_f32_vec();
                    // a non-finite activation (an overflowed half-precision forward) is not observed
                    if v.iter().all(|x| x.is_finite()) {
                        let node = model.float.node(a.value.node).name.clone();
                        o.observe(&v).map_err(|error| TrainError::Observe { node, error })?;
                    }
                }
            }
            let mut grads: Vec<Vec<f32>> = d.grads.iter().map(|&k| outs[k].to_f32_vec()).collect();
            let found_inf = {
                let mut refs: Vec<&mut [f32]> = grads.iter_mut().map(|g| g.as_mut_slice()).collect();
                match &scaler {
                    Some(s) => s.unscale(&mut refs),
                    None => refs.iter().any(|g| g.iter().any(|x| !x.is_finite())),
                }
            };
            let lr = schedule.at(step);
            if !found_inf {
                if let Some(max) = cfg.clip_grad_norm {
                    let norm = grads.iter().flatten().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
                    // torch.nn.utils.clip_grad_norm_: clip_coef = max_norm / (total_norm + 1e-6)
                    let coef = f64::from(max) / (norm + 1e-6);
                    if coef < 1.0 {
                        grads.iter_mut().flatten().for_each(|x| *x = (f64::from(*x) * coef) as f32);
                    }
                }
                for (j, &i) in trainable.iter().enumerate() {
                    let p = &model.params[i];
                    let is_scale = matches!(p.kind, ParamKind::WeightScale { .. } | ParamKind::ActScale { .. });
                    // scales learn only once the observers are frozen
                    if is_scale && observing {
                        continue;
                    }
                    if p.grad_scale != 1.0 {
                        grads[j].iter_mut().for_each(|x| *x *= p.grad_scale);
                    }
                    let wd = if p.decays() { cfg.weight_decay } else { 0.0 };
                    let mut v = values[i].to_f32_vec();
                    if is_scale && matches!(cfg.optimizer, OptimizerKind::Adam { .. }) {
                        adam_log_step(&mut opt, j, &mut v, &grads[j], lr * ADAM_SCALE_LR_FACTOR);
                    } else {
                        opt.step(j, &mut v, &grads[j], lr, wd);
                    }
                    if is_scale {
                        v.iter_mut().for_each(|x| *x = x.max(MIN_SCALE));
                    }
                    values[i] = Tensor::from_f32(values[i].shape().to_vec(), v);
                }
            } else {
                skipped_total += 1;
            }
            if let Some(s) = scaler.as_mut() {
                s.update(found_inf);
            }
            if observing {
                for (p, v) in qat.params.iter_mut().zip(&values) {
                    p.value = v.clone();
                }
                qat.observe_weights()?;
                for (k, o) in observers.iter().enumerate() {
                    if let Some(r) = o.as_ref().and_then(|o| o.range()) {
                        qat.set_range(k, r)?;
                    }
                }
                values = qat.values();
            }
            let info =
                StepInfo { step, total, epoch, loss, lr, loss_scale, skipped: found_inf, skipped_total, observing };
            on_step(&info);
            steps.push(info);
            step += 1;
        }
    }
    Ok(Trained { values, steps, loss_scale: scaler.map_or(1.0, |s| s.scale) })
}
