//! AdaRound: learned rounding of quantized weights (Nagel et al. 2020, "Up or Down? Adaptive
//! Rounding for Post-Training Quantization", ICML, arXiv:2004.10568).
//!
//! Rounding each weight to its nearest grid point is not what minimizes a layer's output error:
//! the errors of a row add up in the dot product. AdaRound chooses, weight by weight, floor or
//! ceiling by fitting a continuous relaxation on calibration data, one layer at a time:
//!
//! * `W̃ = s · (clip(⌊W/s⌋ + z + h(V), q_min, q_max) − z)`, with the rectified sigmoid
//!   `h(V) = clip(σ(V)(ζ − γ) + γ, 0, 1)`, `ζ = 1.1`, `γ = −0.1` (eq. 23), and `V` initialized
//!   so that `h(V)` is the fractional part of `W/s` (`W̃ = W` inside the range);
//! * the loss is the reconstruction error of the layer's output (after the ReLU or clip that
//!   follows it, when one does: eq. 25 reconstructs `f_a(Wx)`), summed over output channels and
//!   averaged over the rest, as AIMET's implementation measures it
//!   (`aimet_torch/adaround/adaround_loss.py`), plus `λ Σ (1 − |2h(V) − 1|^β)` (eq. 24), which
//!   pushes every `h` to 0 or 1; `β` is annealed linearly from 20 to 2 after a warm start of 20%
//!   of the steps during which the regularizer is off (AIMET's `AdaroundLoss`);
//! * the gradient of the reconstruction error comes from [`crate::autodiff`] on the layer's own
//!   small graph (run by the reference interpreter); the regularizer's is written out below;
//!   Adam (PyTorch's `torch.optim.Adam` update) steps on `V`;
//! * at the end each weight is `⌊W/s⌋ + z + [h(V) ≥ 0.5]`, clamped to the codes.
//!
//! The layer's input is the float model's (the paper's "symmetric" reconstruction), observed on
//! the calibration set before anything is quantized. The scale and zero point are the ones static
//! quantization computes from the float weight (min-max per channel or per tensor), and the
//! weights that set the range (each channel's extremes) keep their nearest rounding, so the
//! result is expressed as float weights snapped to the learned grid points: static quantization
//! of the snapped weight computes the same scales and recovers exactly the learned codes
//! ([`AdaRound`] checks it), and nothing downstream needs to know AdaRound ran. Per-group
//! weights, weights that are not a conv's, gemm's or matmul's second input, and layers whose
//! bias forces a raised weight scale in static quantization are left to round to nearest.
//!
//! Deterministic: the sample order comes from `seed` alone; runs on one thread.

use super::plan::WeightInput;
use super::policy::{NodeSettings, PolicyError, QConfig, Rounding};
use super::scheme::{self, Granularity, QType};
use super::static_quant::activation_plan;
use crate::autodiff;
use crate::pass::{Pass, PassContext, PassError, PassReport};
use crate::rng::SplitMix64;
use qforge_ir::{
    interp, BinaryOp, DType, Graph, IrError, NodeId, Op, QuantParams, Shape, Tensor, TensorType, UnaryOp, Value,
};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The rectified sigmoid's stretch (eq. 23).
const ZETA: f32 = 1.1;
const GAMMA: f32 = -0.1;

/// How each layer is fitted (the qconfig's `[adaround]`; AIMET's defaults except the number of
/// steps, 10,000 there, and the learning rate, raised from 1e-3 to keep the fit short).
#[derive(Clone, Debug, PartialEq)]
pub struct AdaRoundOptions {
    /// Adam steps per layer.
    pub iterations: usize,
    /// Calibration samples per step (all of them when there are fewer).
    pub batch: usize,
    /// Adam's learning rate on `V`.
    pub lr: f32,
    /// `λ`, the regularizer's weight.
    pub reg_weight: f32,
    /// `β` at the end of the warm start and at the last step.
    pub beta: (f32, f32),
    /// Share of the steps before the regularizer starts.
    pub warm_start: f32,
    /// Seeds the sample order.
    pub seed: u64,
}

impl Default for AdaRoundOptions {
    fn default() -> Self {
        AdaRoundOptions {
            iterations: 1000,
            batch: 32,
            lr: 0.01,
            reg_weight: 0.01,
            beta: (20.0, 2.0),
            warm_start: 0.2,
            seed: 0,
        }
    }
}

impl AdaRoundOptions {
    /// Checks the ranges.
    pub fn check(&self) -> Result<(), PolicyError> {
        self.range_error().map_or(Ok(()), |msg| Err(PolicyError::AdaRound { msg }))
    }

    fn range_error(&self) -> Option<String> {
        if self.iterations == 0 || self.batch == 0 {
            return Some("iterations and batch must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite() && self.reg_weight >= 0.0 && self.reg_weight.is_finite()) {
            return Some("lr must be positive and reg_weight non-negative".into());
        }
        if !(self.beta.0 > 0.0 && self.beta.1 > 0.0 && self.beta.0.is_finite() && self.beta.1.is_finite()) {
            return Some("beta must be two positive numbers".into());
        }
        if !(0.0..1.0).contains(&self.warm_start) {
            return Some(format!("warm_start {} is not in [0, 1)", self.warm_start));
        }
        None
    }

    /// `β` at step `t` (AIMET's `LinearTempDecay`): the first value until the warm start ends,
    /// then linearly down to the second.
    fn beta_at(&self, t: usize) -> f32 {
        let warm = self.warm_start * self.iterations as f32;
        let rel = ((t as f32 - warm) / (self.iterations as f32 - warm).max(1.0)).clamp(0.0, 1.0);
        self.beta.1 + (self.beta.0 - self.beta.1) * (1.0 - rel)
    }

    fn regularized(&self, t: usize) -> bool {
        t as f32 >= self.warm_start * self.iterations as f32
    }
}

/// Why AdaRound failed.
#[derive(Debug, thiserror::Error)]
pub enum AdaRoundError {
    #[error("node `{node}`: {msg}")]
    Layer { node: String, msg: String },
    #[error(transparent)]
    Ir(#[from] IrError),
}

fn layer_err(node: &str, msg: impl ToString) -> AdaRoundError {
    AdaRoundError::Layer { node: node.to_string(), msg: msg.to_string() }
}

/// A layer whose weight AdaRound rounds.
#[derive(Clone, Debug)]
pub struct AdaRoundSite {
    pub node: NodeId,
    pub weight: WeightInput,
    pub settings: NodeSettings,
    /// The ReLU or clip that alone reads the layer's result, reconstructed with it.
    pub activation: Option<Op>,
}

/// The quantized layers whose rule says `rounding = "adaround"`, and the ones it names that
/// AdaRound leaves to round to nearest, with the reason.
pub fn adaround_sites(g: &Graph, cfg: &QConfig) -> Result<(Vec<AdaRoundSite>, Vec<String>), IrError> {
    let ap = activation_plan(g, cfg)?;
    let (mut sites, mut skipped) = (vec![], vec![]);
    for (id, weight, s) in ap.ops {
        if !s.quantized() || s.rounding != Rounding::AdaRound {
            continue;
        }
        let node = g.node(id);
        // pools and data movement have no weights to round
        let Some(weight) = weight else { continue };
        let why = match &node.op {
            Op::Conv(_) | Op::Gemm { .. } | Op::MatMul if weight.slot == 1 => {
                let wv = node.inputs().get(1).copied().flatten();
                match wv.map(|v| (&g.node(v.node).op, g.value_type(v))) {
                    Some((Op::Const(t), ty)) if t.as_f32().is_some() && ty.quant.is_none() => {
                        if matches!(s.weight_granularity(weight.axis), Granularity::PerGroup { .. }) {
                            Some("per-group weights are rounded to nearest")
                        } else {
                            None
                        }
                    }
                    _ => Some("its weight is not an f32 constant"),
                }
            }
            _ => Some("only a conv's, gemm's or matmul's second input is rounded by AdaRound"),
        };
        match why {
            None => {
                let out = Value::new(id, 0);
                let users = g.value_users(out);
                let activation = match users.as_slice() {
                    [(u, 0)] if !g.is_output(out) => match &g.node(*u).op {
                        op @ (Op::Unary(UnaryOp::Relu) | Op::Clip { .. }) => Some(op.clone()),
                        _ => None,
                    },
                    _ => None,
                };
                sites.push(AdaRoundSite { node: id, weight, settings: s, activation });
            }
            Some(why) => skipped.push(format!("node `{}`: {why}", node.name)),
        }
    }
    Ok((sites, skipped))
}

/// What fitting one layer gave.
#[derive(Clone, Debug)]
pub struct LayerFit {
    pub node: String,
    /// The float weight snapped to the learned grid points (see the module docs).
    pub snapped: Tensor,
    pub weights: usize,
    /// Weights rounded the other way than to nearest.
    pub flipped: usize,
    /// The reconstruction error (the loss's first term) on every sample, with the weight rounded
    /// to nearest and with the learned rounding.
    pub error_nearest: f64,
    pub error_adaround: f64,
}

/// The weight's quantization grid: per element, `⌊W/s⌋ + z` (as f32), `s`, `z`, and whether
/// it sets its channel's range (then it keeps its nearest code).
struct Grid {
    floor: Vec<f32>,
    frac: Vec<f32>,
    nearest: Vec<i32>,
    fixed: Vec<bool>,
    /// The channel axis (per-channel parameters) and the weight's rank.
    axis: Option<usize>,
    rank: usize,
    scales: Vec<f32>,
    zeros: Vec<i32>,
    inner: usize,
    channels: usize,
    qtype: QType,
}

fn grid(w: &Tensor, site: &AdaRoundSite) -> Result<Grid, String> {
    let values = w.as_f32().ok_or("the weight is not f32")?;
    let shape = w.shape().to_vec();
    let axis = match site.settings.weight_granularity(site.weight.axis) {
        Granularity::PerChannel { axis } => Some(axis),
        Granularity::PerTensor => None,
        Granularity::PerGroup { .. } => return Err("per-group weights are rounded to nearest".into()),
    };
    let scheme = site.settings.weights;
    let r = scheme::tensor_params(values, &shape, axis, scheme).map_err(|e| e.to_string())?;
    let nearest_t = scheme::quantize_tensor(values, &shape, &r.params, scheme.qtype).map_err(|e| e.to_string())?;
    let nearest: Vec<i32> = nearest_t.to_f32_vec().iter().map(|&c| c as i32).collect();
    let (scales, zeros) = match &r.params {
        QuantParams::PerTensor { scale, zero_point } => (vec![*scale], vec![*zero_point]),
        QuantParams::PerAxis { scales, zero_points, .. } => (scales.clone(), zero_points.clone()),
        _ => return Err("unexpected weight parameters".into()),
    };
    let channels = scales.len();
    let inner = match axis {
        Some(a) => shape[a + 1..].iter().product::<usize>(),
        None => values.len(),
    };
    let chan = |i: usize| if channels == 1 { 0 } else { (i / inner) % channels };
    // each channel's extremes set its range
    let mut lo = vec![f32::INFINITY; channels];
    let mut hi = vec![f32::NEG_INFINITY; channels];
    for (i, &x) in values.iter().enumerate() {
        lo[chan(i)] = lo[chan(i)].min(x);
        hi[chan(i)] = hi[chan(i)].max(x);
    }
    let (mut floor, mut frac, mut fixed) = (vec![], vec![], vec![]);
    for (i, &x) in values.iter().enumerate() {
        let c = chan(i);
        let q = x as f64 / scales[c] as f64;
        floor.push((q.floor() + zeros[c] as f64) as f32);
        frac.push((q - q.floor()) as f32);
        let sets_range = if scheme.symmetric { x.abs() == lo[c].abs().max(hi[c]) } else { x == lo[c] || x == hi[c] };
        fixed.push(sets_range);
    }
    let rank = shape.len();
    Ok(Grid { floor, frac, nearest, fixed, axis, rank, scales, zeros, inner, channels, qtype: scheme.qtype })
}

impl Grid {
    /// Per-channel `values` as a tensor broadcast to the weight's rank (along the axis).
    fn broadcast(&self, values: Vec<f32>) -> Tensor {
        let mut shape = vec![1usize; self.rank];
        if let (Some(a), true) = (self.axis, self.channels > 1) {
            shape[a] = self.channels;
        }
        Tensor::from_f32(shape, values)
    }

    fn channel(&self, i: usize) -> usize {
        if self.channels == 1 {
            0
        } else {
            (i / self.inner) % self.channels
        }
    }

    /// The float weight holding `codes` (elements that set the range keep `w`'s own value).
    fn snap(&self, w: &[f32], codes: &[i32]) -> Vec<f32> {
        codes
            .iter()
            .enumerate()
            .map(|(i, &k)| {
                if self.fixed[i] {
                    w[i]
                } else {
                    let c = self.channel(i);
                    self.scales[c] * (k - self.zeros[c]) as f32
                }
            })
            .collect()
    }
}

/// The rectified sigmoid `h(V)`.
fn rect_sigmoid(v: f32) -> f32 {
    (1.0 / (1.0 + (-v).exp()) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)
}

/// The layer's own op with `x`, `w` and its bias, then its activation: `y`.
fn layer(g: &mut Graph, src: &Graph, site: &AdaRoundSite, x: Value, w: Value) -> Result<Value, IrError> {
    let node = src.node(site.node);
    let mut inputs = vec![Some(x), Some(w)];
    for b in node.inputs().iter().skip(2) {
        let b = match b {
            Some(b) => match &src.node(b.node).op {
                Op::Const(t) => Some(g.add_const("bias", (**t).clone())),
                _ => return Err(IrError::node(&node.name, node.op.name(), "the bias is not a constant")),
            },
            None => None,
        };
        inputs.push(b);
    }
    let y = g.add_node(node.op.clone(), inputs, None, "layer")?;
    match &site.activation {
        Some(op) => g.add_node(op.clone(), vec![Some(y)], None, "activation"),
        None => Ok(y),
    }
}

/// The type of `t` (fixed shape).
fn ty(t: &Tensor) -> TensorType {
    TensorType::new(t.dtype(), Shape::fixed(t.shape()))
}

/// The layer's output on `x` with the float weight `w`.
fn forward(src: &Graph, site: &AdaRoundSite, w: &Tensor, x: &Tensor) -> Result<Tensor, IrError> {
    let mut g = Graph::new("adaround_forward");
    let xv = g.add_input("x", ty(x));
    let wv = g.add_const("w", w.clone());
    let y = layer(&mut g, src, site, xv, wv)?;
    g.add_output("y", y);
    let mut out = interp::run(&g, std::slice::from_ref(x))?;
    out.pop().ok_or_else(|| IrError::Graph("the layer graph has no output".into()))
}

/// The reconstruction error `Σ_channels mean_rest (y − y_ref)²` of `y` against `r`.
fn recon_error(y: &Tensor, r: &Tensor) -> f64 {
    let (a, b) = (y.to_f32_vec(), r.to_f32_vec());
    let per = (y.shape().get(1).copied().unwrap_or(1)).max(1) as f64;
    let sum: f64 = a.iter().zip(&b).map(|(&p, &q)| ((p - q) as f64).powi(2)).sum();
    sum * per / a.len().max(1) as f64
}

/// The training graph: inputs `x`, `y_ref`, `v`; output the reconstruction loss.
fn loss_graph(
    src: &Graph,
    site: &AdaRoundSite,
    grid: &Grid,
    w_shape: &[usize],
    x_ty: TensorType,
    y_ty: TensorType,
) -> Result<Graph, IrError> {
    let mut g = Graph::new("adaround");
    let x = g.add_input("x", x_ty);
    let y_ref = g.add_input("y_ref", y_ty.clone());
    let v = g.add_input("v", TensorType::new(DType::F32, Shape::fixed(w_shape)));
    let scalar = |g: &mut Graph, name: &str, x: f32| g.add_const(name, Tensor::scalar_f32(x));
    let sig = g.add_node(Op::Unary(UnaryOp::Sigmoid), vec![Some(v)], None, "sigmoid")?;
    let stretch = scalar(&mut g, "zeta_minus_gamma", ZETA - GAMMA);
    let gamma = scalar(&mut g, "gamma", GAMMA);
    let hs = g.add_node(Op::Binary(BinaryOp::Mul), vec![Some(sig), Some(stretch)], None, "stretch")?;
    let hs = g.add_node(Op::Binary(BinaryOp::Add), vec![Some(hs), Some(gamma)], None, "shift")?;
    let h = g.add_node(Op::Clip { min: 0.0, max: 1.0 }, vec![Some(hs)], None, "h")?;
    let floor = g.add_const("floor", Tensor::from_f32(w_shape.to_vec(), grid.floor.clone()));
    let q = g.add_node(Op::Binary(BinaryOp::Add), vec![Some(floor), Some(h)], None, "soft_code")?;
    let (qmin, qmax) = grid.qtype.range();
    let q = g.add_node(Op::Clip { min: qmin as f32, max: qmax as f32 }, vec![Some(q)], None, "code")?;
    let z = g.add_const("zero_point", grid.broadcast(grid.zeros.iter().map(|&z| z as f32).collect()));
    let s = g.add_const("scale", grid.broadcast(grid.scales.clone()));
    let q = g.add_node(Op::Binary(BinaryOp::Sub), vec![Some(q), Some(z)], None, "centred")?;
    let w = g.add_node(Op::Binary(BinaryOp::Mul), vec![Some(q), Some(s)], None, "soft_weight")?;
    let y = layer(&mut g, src, site, x, w)?;
    let d = g.add_node(Op::Binary(BinaryOp::Sub), vec![Some(y), Some(y_ref)], None, "error")?;
    let sq = g.add_node(Op::Binary(BinaryOp::Mul), vec![Some(d), Some(d)], None, "squared")?;
    let sum = g.add_node(Op::ReduceSum { axes: vec![], keepdims: false }, vec![Some(sq)], None, "sum")?;
    let dims = y_ty.shape.as_fixed().unwrap_or_default();
    let numel: usize = dims.iter().product();
    let per = dims.get(1).copied().unwrap_or(1).max(1);
    let norm = scalar(&mut g, "per_channel_mean", per as f32 / numel.max(1) as f32);
    let loss = g.add_node(Op::Binary(BinaryOp::Mul), vec![Some(sum), Some(norm)], None, "loss")?;
    g.add_output("loss", loss);
    Ok(g)
}

/// Samples along axis 0 of a set of tensors of equal trailing shape, stacked.
struct Samples {
    rest: Vec<usize>,
    per: usize,
    data: Vec<f32>,
}

impl Samples {
    fn new(parts: &[Tensor]) -> Result<Samples, String> {
        let first = parts.first().ok_or("no calibration samples reached the layer")?;
        let rest = first.shape().get(1..).ok_or("the layer's input has no sample axis")?.to_vec();
        let per: usize = rest.iter().product();
        let mut data = vec![];
        for p in parts {
            if p.shape().get(1..) != Some(&rest[..]) {
                return Err(format!("the layer's input changes shape between batches ({:?})", p.shape()));
            }
            data.extend(p.to_f32_vec());
        }
        Ok(Samples { rest, per, data })
    }

    fn len(&self) -> usize {
        self.data.len().checked_div(self.per).unwrap_or(0)
    }

    fn take(&self, idx: &[usize]) -> Tensor {
        let mut shape = vec![idx.len()];
        shape.extend(&self.rest);
        let mut out = Vec::with_capacity(idx.len() * self.per);
        for &i in idx {
            out.extend_from_slice(&self.data[i * self.per..(i + 1) * self.per]);
        }
        Tensor::from_f32(shape, out)
    }
}

/// PyTorch's Adam (`torch.optim.Adam`, no weight decay): moments and step count.
struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
}

impl Adam {
    const B1: f32 = 0.9;
    const B2: f32 = 0.999;
    const EPS: f32 = 1e-8;

    fn step(&mut self, p: &mut [f32], g: &[f32], lr: f32) {
        self.t += 1;
        let (c1, c2) = (1.0 - Self::B1.powi(self.t), 1.0 - Self::B2.powi(self.t));
        for i in 0..p.len() {
            self.m[i] = Self::B1 * self.m[i] + (1.0 - Self::B1) * g[i];
            self.v[i] = Self::B2 * self.v[i] + (1.0 - Self::B2) * g[i] * g[i];
            p[i] -= lr * (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + Self::EPS);
        }
    }
}

/// Fits the rounding of `site`'s weight on its inputs `x` (the float model's, calibration
/// batches along axis 0).
pub fn fit_layer(
    g: &Graph,
    site: &AdaRoundSite,
    x: &[Tensor],
    opts: &AdaRoundOptions,
) -> Result<LayerFit, AdaRoundError> {
    let node = g.node(site.node);
    let name = node.name.clone();
    let e = |m: String| layer_err(&name, m);
    let wv = node.inputs()[site.weight.slot].ok_or_else(|| e("the weight is missing".into()))?;
    let Op::Const(w) = &g.node(wv.node).op else { return Err(e("the weight is not a constant".into())) };
    let w_shape = w.shape().to_vec();
    let wvals = w.as_f32().ok_or_else(|| e("the weight is not f32".into()))?.to_vec();
    let gr = grid(w, site).map_err(e)?;
    let samples = Samples::new(x).map_err(e)?;
    let n = samples.len();
    // the float layer's output on every sample, once
    let all: Vec<usize> = (0..n).collect();
    let chunks: Vec<Vec<usize>> = all.chunks(opts.batch.max(1)).map(<[usize]>::to_vec).collect();
    let mut reference = vec![];
    for c in &chunks {
        reference.push(forward(g, site, w, &samples.take(c))?);
    }
    let refs = Samples::new(&reference).map_err(e)?;
    let b = opts.batch.min(n);
    let x_ty = ty(&samples.take(&all[..b]));
    let y_ty = ty(&refs.take(&all[..b]));
    let lg = loss_graph(g, site, &gr, &w_shape, x_ty, y_ty)?;
    let dg = autodiff::differentiate(&lg, 0, &["v"])
        .map_err(|err| e(format!("differentiating its reconstruction loss: {err}")))?;
    let grad_out = *dg.grads.first().ok_or_else(|| e("no gradient output".into()))?;
    // V with h(V) = the fractional part (AIMET: alpha = -log((zeta - gamma) / (rest - gamma) - 1))
    let mut v: Vec<f32> = gr
        .frac
        .iter()
        .map(|&r| {
            let r = r.clamp(1e-4, 1.0 - 1e-4);
            -(((ZETA - GAMMA) / (r - GAMMA)) - 1.0).ln()
        })
        .collect();
    let mut adam = Adam { m: vec![0.0; v.len()], v: vec![0.0; v.len()], t: 0 };
    let mut rng = SplitMix64(opts.seed ^ 0x5EED_ADA0);
    let mut grad = vec![0f32; v.len()];
    for t in 0..opts.iterations {
        let idx = rng.sample(n, b);
        let vt = Tensor::from_f32(w_shape.clone(), v.clone());
        let out = interp::run(&dg.graph, &[samples.take(&idx), refs.take(&idx), vt])?;
        let gv = out.get(grad_out).and_then(Tensor::as_f32).ok_or_else(|| e("the gradient is not f32".into()))?;
        grad.copy_from_slice(gv);
        if opts.regularized(t) && opts.reg_weight > 0.0 {
            // d/dV λ(1 − |2h − 1|^β) = −λ β |2h − 1|^(β−1) sign(2h − 1) · 2 h'(V), with
            // h'(V) = σ(V)(1 − σ(V))(ζ − γ) where the clip does not bind
            let beta = opts.beta_at(t);
            for (gi, &vi) in grad.iter_mut().zip(&v) {
                let s = 1.0 / (1.0 + (-vi).exp());
                let hs = s * (ZETA - GAMMA) + GAMMA;
                if hs > 0.0 && hs < 1.0 {
                    let u = 2.0 * hs - 1.0;
                    let dh = s * (1.0 - s) * (ZETA - GAMMA);
                    *gi += -opts.reg_weight * beta * u.abs().powf(beta - 1.0) * u.signum() * 2.0 * dh;
                }
            }
        }
        if grad.iter().any(|x| !x.is_finite()) {
            return Err(e(format!("the rounding gradient is not finite at step {t}")));
        }
        adam.step(&mut v, &grad, opts.lr);
    }
    let (qmin, qmax) = gr.qtype.range();
    let codes: Vec<i32> = (0..v.len())
        .map(|i| {
            if gr.fixed[i] {
                gr.nearest[i]
            } else {
                ((gr.floor[i] as i32) + i32::from(rect_sigmoid(v[i]) >= 0.5)).clamp(qmin, qmax)
            }
        })
        .collect();
    let flipped = codes.iter().zip(&gr.nearest).filter(|(a, b)| a != b).count();
    let snapped = Tensor::from_f32(w_shape.clone(), gr.snap(&wvals, &codes));
    let nearest_w = Tensor::from_f32(w_shape.clone(), gr.snap(&wvals, &gr.nearest));
    // the learned codes must come back out of static quantization of the snapped weight
    let r = scheme::tensor_params(
        snapped.as_f32().unwrap_or_default(),
        &w_shape,
        match site.settings.weight_granularity(site.weight.axis) {
            Granularity::PerChannel { axis } => Some(axis),
            _ => None,
        },
        site.settings.weights,
    )
    .map_err(|err| e(err.to_string()))?;
    let back = scheme::quantize_tensor(snapped.as_f32().unwrap_or_default(), &w_shape, &r.params, gr.qtype)
        .map_err(|err| e(err.to_string()))?;
    if back.to_f32_vec().iter().zip(&codes).any(|(&a, &b)| a as i32 != b) {
        return Err(e("the snapped weight does not quantize back to the learned codes".into()));
    }
    let (mut err_n, mut err_a) = (0.0, 0.0);
    for (c, r) in chunks.iter().zip(&reference) {
        let xs = samples.take(c);
        let share = c.len() as f64 / n as f64;
        err_n += recon_error(&forward(g, site, &nearest_w, &xs)?, r) * share;
        err_a += recon_error(&forward(g, site, &snapped, &xs)?, r) * share;
    }
    Ok(LayerFit { node: name, snapped, weights: v.len(), flipped, error_nearest: err_n, error_adaround: err_a })
}

/// Each site's input on the calibration batches: a graph input is taken from the batch, an
/// intermediate value is watched through `eval` (float graph, nothing quantized yet).
pub fn site_inputs(
    g: &Graph,
    sites: &[AdaRoundSite],
    eval: &dyn super::Evaluator,
    batches: &mut dyn Iterator<Item = Vec<Tensor>>,
) -> Result<Vec<Vec<Tensor>>, AdaRoundError> {
    let mut inputs: Vec<Vec<Tensor>> = vec![vec![]; sites.len()];
    let xs: Vec<Value> = sites
        .iter()
        .map(|s| g.node(s.node).inputs()[0].ok_or_else(|| layer_err(&g.node(s.node).name, "its input is missing")))
        .collect::<Result<_, _>>()?;
    let mut watched: Vec<Value> = vec![];
    let mut slot: Vec<Result<usize, usize>> = vec![]; // Ok(watch index) | Err(graph input index)
    for x in &xs {
        match g.inputs().iter().position(|&i| i == x.node) {
            Some(i) => slot.push(Err(i)),
            None => {
                let k = watched.iter().position(|w| w == x).unwrap_or_else(|| {
                    watched.push(*x);
                    watched.len() - 1
                });
                slot.push(Ok(k));
            }
        }
    }
    let watcher = eval.watch(g, &watched).map_err(|err| IrError::Graph(err.to_string()))?;
    for batch in batches {
        let mut seen: Vec<Option<Tensor>> = vec![None; watched.len()];
        watcher
            .run(&batch, &mut |i, w| {
                seen[i] = w.to_tensor().map(std::borrow::Cow::into_owned);
            })
            .map_err(|err| IrError::Graph(err.to_string()))?;
        for (k, s) in slot.iter().enumerate() {
            let t = match s {
                Err(i) => batch.get(*i).cloned(),
                Ok(w) => seen[*w].clone(),
            };
            let t = t.ok_or_else(|| layer_err(&g.node(sites[k].node).name, "its input was not observed"))?;
            inputs[k].push(t);
        }
    }
    Ok(inputs)
}

/// Replaces each named layer's weight by its snapped weight from [`fit_layer`]: static
/// quantization then computes the learned codes. A weight that already is the snapped one is
/// left alone (the pass is idempotent).
#[derive(Clone, Debug, Default)]
pub struct AdaRound {
    /// Snapped weight by layer name, with the fit's report line.
    pub weights: BTreeMap<String, (Arc<Tensor>, String)>,
}

impl AdaRound {
    pub fn from_fits(fits: Vec<LayerFit>) -> AdaRound {
        let weights = fits
            .into_iter()
            .map(|f| {
                let line = format!(
                    "node `{}`: {} of {} weights rounded away from nearest; reconstruction error {:.4e} -> {:.4e}",
                    f.node, f.flipped, f.weights, f.error_nearest, f.error_adaround
                );
                (f.node, (Arc::new(f.snapped), line))
            })
            .collect();
        AdaRound { weights }
    }
}

impl Pass for AdaRound {
    fn name(&self) -> &'static str {
        "adaround"
    }

    fn run(&self, g: &mut Graph, _cx: &PassContext) -> Result<PassReport, PassError> {
        let mut report = PassReport::new(self.name());
        let ids: Vec<NodeId> = g.node_ids().collect();
        for id in ids {
            let Some((w, line)) = self.weights.get(&g.node(id).name) else { continue };
            let Some(Some(wv)) = g.node(id).inputs().get(1).copied() else { continue };
            if let Op::Const(t) = &g.node(wv.node).op {
                if **t == **w {
                    continue;
                }
                if t.shape() != w.shape() {
                    return Err(PassError::Failed {
                        pass: self.name().into(),
                        msg: format!("node `{}`: the snapped weight's shape differs", g.node(id).name),
                    });
                }
            }
            let name = format!("{}_adarounded", g.node(wv.node).name);
            let c = g.add_const(name, (**w).clone());
            g.set_input(id, 1, Some(c));
            report.notes.push(line.clone());
            report.count("weights adarounded", 1);
        }
        g.remove_dead();
        Ok(report)
    }
}
