//! Static (post-training) quantization: Q/DQ insertion with calibrated activation ranges.
//!
//! The result is the standard QDQ form that ONNX Runtime's `quantize_static(QuantFormat.QDQ)`
//! writes; the optimizer later lowers each `dequantize -> op -> quantize` sandwich to an integer
//! kernel. For every op [`mod@super::plan`] marks quantizable (conv, gemm, matmul, add, pooling,
//! concat) and the policy keeps at int8:
//!
//! * each float activation input: `x -> quantize -> dequantize -> op` (one Q/DQ pair per value,
//!   shared by all its consumers), parameters from the calibrated range;
//! * the constant weight: quantized offline into a constant of quantized type (`i8` symmetric,
//!   per channel on the op's output-channel axis by default) `-> dequantize -> op`; with a
//!   per-group granularity (4-bit weights, `granularity = "per-group:32"`), one scale and zero point
//!   per group along the reduction axis ([`QuantParams::PerGroup`], see
//!   [`super::policy::NodeSettings::weight_granularity`]), codes in an `i8`/`u8` constant; such a
//!   weight has no integer kernel, so its op computes in float on the dequantized weight and its
//!   bias stays float;
//! * the constant bias of conv and gemm: `i32` at scale `s_x * s_w[c]` (f32 product), zero point 0,
//!   `-> dequantize -> op` (gemm only when `alpha = beta = 1` and the bias is a vector);
//! * the result: `op -> quantize -> dequantize`, calibrated; max pool and average pool reuse their
//!   input's parameters (ONNX Runtime's `QDQMaxPool`/`QDQDirect8BitOp`), and so do resize and pad
//!   (ORT's `QDQResize`, `QDQPad`), the others (add, concat,
//!   global average pool, conv, gemm, matmul) get their own (`QDQOperatorBase`), except that the
//!   result of a conv, gemm or matmul that only float ops read (or that is a graph output, unless
//!   [`QConfig::quantizes_outputs`]) stays float: its integer kernel dequantizes the accumulator
//!   (see [`activation_plan`]);
//! * data movement (flatten, reshape, transpose, ...) after a quantized value carries its
//!   parameters: its result gets a Q/DQ pair with the same scale and zero point.
//!
//! # ReLU and clip after a quantized op
//! A ReLU or clip that is the sole user of a quantized op's result is calibrated instead of that
//! result (the quantization range starts at 0: ONNX Runtime's `QDQRemovableActivation`). When the
//! activation scheme is asymmetric the zero point is the storage minimum, so the quantize after it
//! clamps at 0 by itself; when, in addition, the quantized range does not exceed the clip's
//! upper bound, the activation is removed and the quantize reads the op's result directly, as
//! ORT does. Otherwise (symmetric activations, a clip with a non-zero lower bound) it stays, in
//! float, between the op and the quantize: `op -> relu -> Q -> DQ`, which the optimizer fuses as a
//! clamp.
//!
//! The policy is resolved with each matmul's attention role ([`super::attention`]): by default
//! the scores matmul of attention stays float and the context matmul is quantized (see
//! [`super::policy`]).
//!
//! The pass is idempotent: a node that reads a dequantized value is already quantized and is
//! left alone.

use super::attention::attention_roles;
use super::calibrate::{Calibration, Target};
use super::plan::{plan, Decision, WeightInput};
use super::policy::{NodeSettings, QConfig};
use super::scheme::{self, Granularity, Scheme};
use crate::pass::{Pass, PassContext, PassError, PassReport};
use qforge_ir::{DType, Graph, NodeId, Op, QuantParams, Tensor, TensorType, UnaryOp, Value};
use std::collections::{HashMap, HashSet};

/// Where an activation's parameters come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// Its own calibrated range, with the scheme and observer of the node that asked for it.
    Calibrated { scheme: Scheme, target: Target },
    /// The parameters of another value (pooling, data movement). `target` is how it would be
    /// calibrated if that value were not quantized (sensitivity analysis quantizes subsets).
    SameAs { from: Value, target: Target },
}

/// The activations to quantize, in schedule order, and the ops to rewrite.
#[derive(Clone, Debug, Default)]
pub struct ActivationPlan {
    pub values: Vec<(Value, Source)>,
    /// Quantized ops with their constant weight input, if any.
    pub ops: Vec<(NodeId, Option<WeightInput>, NodeSettings)>,
    /// ReLU/clip nodes calibrated in place of the op result they follow: (activation, op).
    pub fused: Vec<(NodeId, NodeId)>,
}

impl ActivationPlan {
    fn index(&self, v: Value) -> Option<usize> {
        self.values.iter().position(|(x, _)| *x == v)
    }

    /// The values to calibrate, with their observers: every quantized value, including those
    /// that take another's parameters (so that any subset of the ops can be quantized with one
    /// calibration).
    pub fn targets(&self) -> Vec<Target> {
        self.values
            .iter()
            .map(|(_, s)| match s {
                Source::Calibrated { target, .. } | Source::SameAs { target, .. } => target.clone(),
            })
            .collect()
    }
}

fn is_f32(g: &Graph, v: Value) -> bool {
    let t = g.value_type(v);
    t.dtype == DType::F32 && t.quant.is_none()
}

/// Whether only float ops read `v`: no quantized op reads it, directly or through data movement
/// (which would carry its parameters to one), and, with `quantize_outputs`, it is not a graph
/// output (such an output then gets the parameters ONNX Runtime's QDQ model gives it).
fn only_float_reads<S>(
    g: &Graph,
    v: Value,
    quantized: &HashMap<NodeId, S>,
    movement: &HashSet<NodeId>,
    quantize_outputs: bool,
) -> bool {
    let mut stack = vec![v];
    let mut seen = HashSet::new();
    while let Some(v) = stack.pop() {
        if quantize_outputs && g.is_output(v) {
            return false;
        }
        if !seen.insert(v) {
            continue;
        }
        for (user, _) in g.value_users(v) {
            if quantized.contains_key(&user) {
                return false;
            }
            if movement.contains(&user) {
                stack.extend((0..g.node(user).outputs.len()).map(|p| Value::new(user, p)));
            }
        }
    }
    true
}

/// Decides which values get Q/DQ under `cfg` (see the module documentation).
pub fn activation_plan(g: &Graph, cfg: &QConfig) -> Result<ActivationPlan, qforge_ir::IrError> {
    let nodes = plan(g)?;
    let mut ap = ActivationPlan::default();
    // the effective decision of each node (the policy can keep a quantizable node in float)
    let mut quantized: HashMap<NodeId, NodeSettings> = HashMap::new();
    let mut fused_by: HashMap<NodeId, NodeId> = HashMap::new();
    let roles = attention_roles(g);
    for np in &nodes {
        if let Decision::Quantize { .. } = np.decision {
            let s = cfg.settings_as(g.node(np.id), roles.get(&np.id).copied());
            if s.quantized() {
                quantized.insert(np.id, s);
            }
        }
    }
    // fused activations: decided by the plan against the effective decisions (the activation
    // follows the op it is fused into, whatever the policy says of it)
    for np in &nodes {
        if np.decision != Decision::Fused {
            continue;
        }
        let Some(v) = g.node(np.id).inputs()[0] else { continue };
        if quantized.contains_key(&v.node) {
            fused_by.insert(v.node, np.id);
        }
    }
    let movement: HashSet<NodeId> =
        nodes.iter().filter(|np| np.decision == Decision::PassThrough).map(|np| np.id).collect();
    let push = |ap: &mut ActivationPlan, v: Value, src: Source| {
        if ap.index(v).is_none() {
            ap.values.push((v, src));
        }
    };
    let calibrated = |v: Value, s: &NodeSettings| Source::Calibrated {
        scheme: s.activations,
        target: Target { value: v, observer: s.activation_observer(), scheme: s.activations },
    };
    for np in &nodes {
        let node = g.node(np.id);
        match &np.decision {
            Decision::Quantize { weight } => {
                let Some(s) = quantized.get(&np.id) else { continue };
                let bias_slot = match node.op {
                    Op::Conv(_) | Op::Gemm { .. } => Some(2),
                    _ => None,
                };
                for (slot, v) in node.inputs().iter().enumerate() {
                    let Some(v) = *v else { continue };
                    // resize's and pad's further inputs are references whose dims give its
                    // sizes or pads
                    let reference = matches!(node.op, Op::Resize(_) | Op::Pad { .. }) && slot > 0;
                    if weight.is_some_and(|w| w.slot == slot) || Some(slot) == bias_slot || reference || !is_f32(g, v) {
                        continue;
                    }
                    push(&mut ap, v, calibrated(v, s));
                }
                let out = Value::new(np.id, 0);
                match node.op {
                    // a resize or pad whose result only float ops read stays float after its
                    // integer input (rounding an interpolated output to the input's grid would
                    // cost the float consumers, and a graph output, precision)
                    Op::Resize(_) | Op::Pad { .. }
                        if g.is_output(out) || g.value_users(out).iter().any(|u| !quantized.contains_key(&u.0)) => {}
                    // a conv, gemm or matmul whose result only float ops read (a SiLU, a GELU, the
                    // sigmoid and multiply of a gate, a graph output) stays float: its integer
                    // kernel dequantizes the i32 accumulator (`acc * sx * sw[c]`, the optimizer's
                    // lower-to-dequantizing) instead of rounding the result to 8 bits for the
                    // float consumers to dequantize again. A quantize there would add one more
                    // rounding per layer and buy nothing: no integer kernel reads it. (ONNX
                    // Runtime's QDQ quantizer quantizes every such result, graph outputs included;
                    // its MatMulInteger / ConvInteger path, `quantize_dynamic`, returns f32 the
                    // same way. `[outputs] quantize = true` rounds graph outputs as ORT does.)
                    Op::Conv(_) | Op::Gemm { .. } | Op::MatMul
                        if !fused_by.contains_key(&np.id)
                            && only_float_reads(g, out, &quantized, &movement, cfg.quantizes_outputs()) => {}
                    Op::MaxPool(_) | Op::GlobalMaxPool | Op::AveragePool(_) | Op::Resize(_) | Op::Pad { .. } => {
                        if let Some(x) = node.inputs()[0] {
                            if ap.index(x).is_some() {
                                let target =
                                    Target { value: out, observer: s.activation_observer(), scheme: s.activations };
                                push(&mut ap, out, Source::SameAs { from: x, target });
                            }
                        }
                    }
                    _ => match fused_by.get(&np.id) {
                        Some(&act) => {
                            let r = Value::new(act, 0);
                            push(&mut ap, r, calibrated(r, s));
                            ap.fused.push((act, np.id));
                        }
                        None => push(&mut ap, out, calibrated(out, s)),
                    },
                }
                ap.ops.push((np.id, *weight, s.clone()));
            }
            Decision::PassThrough => {
                let Some(x) = node.inputs()[0] else { continue };
                if ap.index(x).is_none() {
                    continue;
                }
                let settings = cfg.settings(node);
                let (observer, scheme) = (settings.activation_observer(), settings.activations);
                for port in 0..node.outputs.len() {
                    let v = Value::new(np.id, port);
                    if is_f32(g, v) {
                        let target = Target { value: v, observer: observer.clone(), scheme };
                        push(&mut ap, v, Source::SameAs { from: x, target });
                    }
                }
            }
            _ => {}
        }
    }
    Ok(ap)
}

/// The static quantization pass, with the calibration made on this graph (see
/// [`super::calibrate::calibrate`] and [`ActivationPlan::targets`]).
#[derive(Clone, Debug)]
pub struct QuantizeStatic {
    pub config: QConfig,
    pub calibration: Calibration,
}

/// Where the ReLU or clip `act` (reading `op`'s result) only reads into the quantize `q` of type
/// `ty` and that quantize clamps exactly the same (its zero point is the bottom of its range and
/// its top within the clip), points `q` at `op`'s result (ONNX Runtime removes such activations
/// too) and returns true.
pub(crate) fn fold_activation(g: &mut Graph, act: NodeId, op: NodeId, q: NodeId, ty: &TensorType) -> bool {
    let r = Value::new(act, 0);
    let (Some(QuantParams::PerTensor { scale, zero_point }), Some((qmin, qmax))) =
        (ty.quant.as_ref(), ty.dtype.int_range())
    else {
        return false;
    };
    let top = (qmax - *zero_point as i64) as f32 * scale;
    let removable = *zero_point as i64 == qmin
        && match g.node(act).op {
            Op::Unary(UnaryOp::Relu) => true,
            Op::Clip { min, max } => min == 0.0 && top <= max * (1.0 + 1e-6),
            _ => false,
        };
    if !(removable && g.value_users(r).len() == 1 && !g.is_output(r)) {
        return false;
    }
    g.set_input(q, 0, Some(Value::new(op, 0)));
    let from = g.node(act).name.clone();
    g.node_mut(q).from = vec![from];
    true
}

fn failed(msg: String) -> PassError {
    PassError::Failed { pass: "quantize-static".into(), msg }
}

/// Inserts `v -> quantize(ty) -> dequantize` and points every former user of `v` (and every graph
/// output naming it) at the dequantized value. Returns the quantize node.
pub(crate) fn insert_qdq(g: &mut Graph, v: Value, ty: TensorType) -> Result<NodeId, PassError> {
    let users = g.value_users(v);
    let outputs: Vec<usize> = g.outputs().iter().enumerate().filter(|(_, o)| o.value == v).map(|(i, _)| i).collect();
    let base = g.node(v.node).name.clone();
    let base = if g.node(v.node).outputs.len() > 1 { format!("{base}:{}", v.port) } else { base };
    let ir = |error| PassError::Ir { pass: "quantize-static".into(), error };
    let q = g.add_node(Op::Quantize, vec![Some(v)], Some(vec![ty]), format!("{base}_QuantizeLinear")).map_err(ir)?;
    let dq = g.add_node(Op::Dequantize, vec![Some(q)], None, format!("{base}_DequantizeLinear")).map_err(ir)?;
    for (n, slot) in users {
        g.set_input(n, slot, Some(dq));
    }
    for i in outputs {
        g.set_output_value(i, dq);
    }
    Ok(q.node)
}

/// The smallest weight scale of each output channel for which a bias `b[c]`, quantized to i32 at
/// `sx * sw[c]`, stays inside i32 together with the accumulation it is added to (`k` products of
/// at most 255 * 255 in magnitude): the numerics contract accumulates in i32 and wraps a sum
/// that leaves its range (`qforge_ir::numerics`, as ONNX Runtime's MLAS kernels do). A smaller
/// weight scale would overflow the bias (or clip it, had it been stored saturated) and shift every
/// output of the channel; ONNX Runtime's
/// quantizer raises the weight scale for the same reason
/// (`onnxruntime/python/tools/quantization/base_quantizer.py`, `_adjust_weight_scale_for_int32_bias`).
fn min_weight_scales(bias: &[f32], sx: f32, k: usize) -> Vec<f32> {
    let headroom = f64::from(i32::MAX) - k as f64 * 255.0 * 255.0;
    bias.iter()
        .map(|&b| {
            if headroom <= 0.0 || !b.is_finite() {
                return 0.0;
            }
            // a hair above the bound, so the f32 products and the rounding stay inside it
            ((f64::from(b.abs()) / (f64::from(sx) * headroom)) * (1.0 + 1e-4)) as f32
        })
        .collect()
}

/// Quantizes the constant `w` (f32) and returns `const -> dequantize`, plus warnings; with
/// `min_scales`, the scale of each output channel (axis 0) is raised to at least `min_scales[c]`
/// where it is below (symmetric weights only: a raised scale keeps zero point 0).
fn quantize_weight(
    g: &mut Graph,
    w: Value,
    gran: Granularity,
    scheme: Scheme,
    min_scales: Option<&[f32]>,
) -> Result<(Value, QuantParams, Vec<String>), String> {
    let Op::Const(t) = &g.node(w.node).op else { return Err("weight is not a constant".into()) };
    let values = t.as_f32().ok_or("weight is not f32")?;
    let shape = t.shape().to_vec();
    let axis = match gran {
        Granularity::PerTensor => None,
        Granularity::PerChannel { axis } => Some(axis),
        Granularity::PerGroup { axis, size } => {
            if axis >= shape.len() {
                return Err(format!("per-group axis {axis} is out of range for a weight of shape {shape:?}"));
            }
            let gp = scheme::per_group(values, &shape, axis, size, scheme).map_err(|e| e.to_string())?;
            let codes = gp.quantize(values, &shape).map_err(|e| e.to_string())?;
            let params = QuantParams::PerGroup {
                axis,
                group_size: size,
                scales: gp.scales.clone(),
                zero_points: gp.zero_points.clone(),
            };
            let dtype = scheme.qtype.storage();
            let qt = Tensor::from_f64_iter(dtype, shape.clone(), codes.iter().map(|&c| c as f64));
            let name = g.node(w.node).name.clone();
            let ty = TensorType::quantized(dtype, qt.ir_shape(), params.clone());
            let c = g.add_const_typed(format!("{name}_quantized"), qt, ty);
            let dq = g
                .add_node(Op::Dequantize, vec![Some(c)], None, format!("{name}_DequantizeLinear"))
                .map_err(|e| e.to_string())?;
            return Ok((dq, params, gp.warnings));
        }
    };
    let mut r = scheme::tensor_params(values, &shape, axis, scheme).map_err(|e| e.to_string())?;
    if let Some(min) = min_scales {
        if raise_scales(&mut r.params, min, axis) {
            r.warnings.push(
                "weight scale raised so the quantized bias fits in i32 (the input scale times the weight scale \
                 was too small for the bias)"
                    .into(),
            );
        }
    }
    let qt = scheme::quantize_tensor(values, &shape, &r.params, scheme.qtype).map_err(|e| e.to_string())?;
    let name = g.node(w.node).name.clone();
    let ty = TensorType::quantized(r.dtype, qt.ir_shape(), r.params.clone());
    let c = g.add_const_typed(format!("{name}_quantized"), qt, ty);
    let dq = g
        .add_node(Op::Dequantize, vec![Some(c)], None, format!("{name}_DequantizeLinear"))
        .map_err(|e| e.to_string())?;
    Ok((dq, r.params, r.warnings))
}

/// For a conv or gemm with a constant f32 bias and a per-tensor quantized input, the weight
/// scales below which its bias would not fit in i32 ([`min_weight_scales`]).
fn bias_weight_floor(g: &Graph, id: NodeId, wv: Value, params: &HashMap<Value, TensorType>) -> Option<Vec<f32>> {
    let node = g.node(id);
    match node.op {
        Op::Conv(_) => {}
        // (a gemm's output channels are axis 0 of its weight only when it is transposed)
        Op::Gemm { alpha, beta, trans_b: true, .. } if alpha == 1.0 && beta == 1.0 => {}
        _ => return None,
    }
    let x = node.inputs().first().copied().flatten()?;
    let b = node.inputs().get(2).copied().flatten()?;
    let Some(QuantParams::PerTensor { scale: sx, .. }) = params.get(&x).and_then(|t| t.quant.clone()) else {
        return None;
    };
    let Op::Const(bt) = &g.node(b.node).op else { return None };
    let Op::Const(wt) = &g.node(wv.node).op else { return None };
    let bias = bt.as_f32()?;
    let out = *wt.shape().first()?;
    if out == 0 || bias.len() != out || wt.rank() < 2 {
        return None;
    }
    Some(min_weight_scales(bias, sx, wt.shape().iter().product::<usize>() / out))
}

/// Raises the scales of `params` (per tensor, or per channel on axis 0) to at least `min[c]`
/// where the zero point is 0; whether any changed.
fn raise_scales(params: &mut QuantParams, min: &[f32], axis: Option<usize>) -> bool {
    let mut changed = false;
    match params {
        QuantParams::PerTensor { scale, zero_point } if *zero_point == 0 => {
            let need = min.iter().copied().fold(0.0f32, f32::max);
            if *scale < need {
                *scale = need;
                changed = true;
            }
        }
        QuantParams::PerAxis { scales, zero_points, .. } if axis == Some(0) && scales.len() == min.len() => {
            for ((s, z), &need) in scales.iter_mut().zip(zero_points.iter()).zip(min) {
                if *z == 0 && *s < need {
                    *s = need;
                    changed = true;
                }
            }
        }
        _ => {}
    }
    changed
}

/// Quantizes a bias vector to i32 at scale `sx * sw[c]`; `None` when a scale underflows.
pub(crate) fn quantize_bias(g: &mut Graph, b: Value, sx: f32, wq: &QuantParams) -> Option<Value> {
    let Op::Const(t) = &g.node(b.node).op else { return None };
    let values = t.as_f32()?.to_vec();
    if t.rank() != 1 {
        return None;
    }
    let n = values.len();
    let scales: Vec<f32> = (0..n).map(|c| sx * wq.scale(if wq.axis().is_some() { c } else { 0 })).collect();
    if scales.iter().any(|s| !(s.is_finite() && *s >= f32::MIN_POSITIVE)) {
        return None;
    }
    let q: Vec<f64> =
        values.iter().zip(&scales).map(|(&x, &s)| qforge_ir::numerics::quantize(x, s, 0, DType::I32) as f64).collect();
    let params = if wq.axis().is_some() {
        QuantParams::PerAxis { axis: 0, scales, zero_points: vec![0; n] }
    } else {
        QuantParams::per_tensor(scales[0], 0)
    };
    let qt = Tensor::from_f64_iter(DType::I32, vec![n], q.into_iter());
    let name = g.node(b.node).name.clone();
    let ty = TensorType::quantized(DType::I32, qt.ir_shape(), params);
    let c = g.add_const_typed(format!("{name}_quantized"), qt, ty);
    g.add_node(Op::Dequantize, vec![Some(c)], None, format!("{name}_DequantizeLinear")).ok()
}

/// The parameters and storage type for a calibrated range.
fn activation_params(min: f32, max: f32, s: Scheme) -> Result<(TensorType, Option<String>), String> {
    let r = scheme::per_tensor(min, max, s).map_err(|e| e.to_string())?;
    Ok((TensorType::quantized(r.dtype, Default::default(), r.params), r.warnings.into_iter().next()))
}

impl Pass for QuantizeStatic {
    fn name(&self) -> &'static str {
        "quantize-static"
    }

    fn run(&self, g: &mut Graph, _cx: &PassContext) -> Result<PassReport, PassError> {
        let mut report = PassReport::new(self.name());
        let ap = activation_plan(g, &self.config).map_err(|error| PassError::Ir { pass: self.name().into(), error })?;
        if ap.ops.is_empty() {
            return Ok(report);
        }
        // 1. activation parameters, in schedule order (shared ones follow their source)
        let mut params: HashMap<Value, TensorType> = HashMap::new();
        for (v, src) in &ap.values {
            let node = g.node(v.node);
            let ty = match src {
                Source::Calibrated { scheme, .. } => {
                    let (min, max) = match self.calibration.range(g, *v) {
                        Some(r) => r,
                        None => match &node.op {
                            Op::Const(t) => t.range().map(|(a, b)| (a as f32, b as f32)).unwrap_or((0.0, 0.0)),
                            _ => {
                                return Err(failed(format!(
                                    "node `{}` ({}) result {}: no calibrated range (calibrate this graph first)",
                                    node.name,
                                    node.op.name(),
                                    v.port
                                )))
                            }
                        },
                    };
                    let (ty, warn) = activation_params(min, max, *scheme)
                        .map_err(|m| failed(format!("node `{}` ({}): {m}", node.name, node.op.name())))?;
                    if let Some(w) = warn {
                        report.notes.push(format!("node `{}` result {}: {w}", node.name, v.port));
                    }
                    ty
                }
                Source::SameAs { from: u, .. } => params
                    .get(u)
                    .cloned()
                    .ok_or_else(|| failed(format!("node `{}`: its source value has no parameters", node.name)))?,
            };
            params.insert(*v, ty);
        }
        // 2. weights and biases (before the activations' users are rewired)
        for (id, weight, s) in &ap.ops {
            let name = g.node(*id).name.clone();
            let opname = g.node(*id).op.name();
            let err = |m: String| failed(format!("node `{name}` ({opname}): {m}"));
            let mut wq = None;
            if let Some(w) = weight {
                let wv = g.node(*id).inputs()[w.slot].ok_or_else(|| err("weight input is missing".into()))?;
                if is_f32(g, wv) {
                    let gran = s.weight_granularity(w.axis);
                    let min = bias_weight_floor(g, *id, wv, &params);
                    let (dq, p, warns) = quantize_weight(g, wv, gran, s.weights, min.as_deref()).map_err(err)?;
                    for w in warns {
                        report.notes.push(format!("node `{name}` weight: {w}"));
                    }
                    g.set_input(*id, w.slot, Some(dq));
                    wq = Some(p);
                    report.count("weights quantized", 1);
                }
            }
            let op = g.node(*id).op.clone();
            let bias_ok = match op {
                Op::Conv(_) => true,
                Op::Gemm { alpha, beta, .. } => alpha == 1.0 && beta == 1.0,
                _ => false,
            };
            let bias = g.node(*id).inputs().get(2).copied().flatten();
            let x = g.node(*id).inputs()[0];
            // per-group weights have no integer kernel: the float op adds its float bias
            let wq = wq.filter(|q| !q.is_per_group());
            if let (true, Some(b), Some(wq), Some(x)) = (bias_ok, bias, wq, x) {
                let xp = params.get(&x).and_then(|t| t.quant.clone());
                if let (Some(QuantParams::PerTensor { scale: sx, .. }), true) =
                    (xp, matches!(g.node(b.node).op, Op::Const(_)) && is_f32(g, b))
                {
                    if let Some(dq) = quantize_bias(g, b, sx, &wq) {
                        g.set_input(*id, 2, Some(dq));
                        report.count("biases quantized", 1);
                    }
                }
            }
        }
        // 3. activations
        let mut qnodes: HashMap<Value, NodeId> = HashMap::new();
        for (v, _) in &ap.values {
            let mut ty = params[v].clone();
            ty.shape = g.value_type(*v).shape.clone();
            let q = insert_qdq(g, *v, ty)?;
            qnodes.insert(*v, q);
            report.count("activations quantized", 1);
        }
        // 4. ReLU/clip removal where the quantize clamps exactly the same
        for (act, op) in &ap.fused {
            let r = Value::new(*act, 0);
            let Some(&q) = qnodes.get(&r) else { continue };
            if fold_activation(g, *act, *op, q, &params[&r]) {
                report.count("activations folded into quantize", 1);
            }
        }
        report.count("dead nodes removed", g.remove_dead() as u64);
        report.count("ops quantized", ap.ops.len() as u64);
        Ok(report)
    }
}
