//! Quantize/dequantize algebra and the lowering of DQ -> op -> Q sandwiches to integer kernels.
//!
//! The sound laws live in the quantized domain: `dq(q(x))` is not `x` in float (it rounds), but
//! `q(dq(y))` with `y`'s own parameters is `y`, and with other parameters is a requantization.
//! `dq` and `q` are monotone (non-decreasing) element-wise maps, so they commute with data
//! movement and with max pooling. A float op between dequantized operands and a quantize of its
//! result is the integer kernel of that op, as TVM's FakeQuantizationToInteger and TensorRT's
//! explicit quantization lower it; the kernels compute as ONNX Runtime's QLinear* kernels do
//! ([`qforge_ir::numerics`]), which is what a QDQ model means when ORT runs it.

use super::{add_const, add_op, dq_of, float_const, is_absent, konst, ops, per_tensor_q, ty, Build, Rule};
use crate::egraph::analysis::EG;
use crate::egraph::lang::{QNode, QType};
use egg::Id;
use qforge_ir::{numerics, DType, Epilogue, Op, QuantParams, Tensor, TensorType, UnaryOp};

/// The declared type of a `quantize` e-node and its operand.
fn quantize_node(node: &QNode) -> Option<(&QType, Id)> {
    match node {
        QNode::Op(d, ch) if matches!(d.op(), Op::Quantize) => Some((d.decl()?, ch[0])),
        _ => None,
    }
}

/// `q_t(dq(y)) = y` when `y`'s type is `t`: dequantizing is exact and quantizing inverts it.
pub struct QDqSame;
impl Rule for QDqSame {
    fn name(&self) -> &'static str {
        "q-dq-same"
    }
    fn rewrite(&self, eg: &EG, _: Id, node: &QNode) -> Option<Build> {
        let (t, c) = quantize_node(node)?;
        let y = dq_of(eg, c)?;
        let yt = ty(eg, y)?;
        (yt.dtype == t.dtype && yt.quant.as_ref() == Some(&t.quant)).then(|| -> Build { Box::new(move |_| Some(y)) })
    }
}

/// `q_t(dq(y)) = requantize_t(y)` (per-tensor i8/u8 on both sides): requantize is defined as
/// dequantize then quantize.
pub struct QDqRequant;
impl Rule for QDqRequant {
    fn name(&self) -> &'static str {
        "q-dq-requant"
    }
    fn rewrite(&self, eg: &EG, _: Id, node: &QNode) -> Option<Build> {
        let (t, c) = quantize_node(node)?;
        let y = dq_of(eg, c)?;
        let yt = ty(eg, y)?;
        per_tensor_q(yt)?;
        per_tensor_q(&t.tensor_type())?;
        if yt.dtype == t.dtype && yt.quant.as_ref() == Some(&t.quant) {
            return None;
        }
        let t = t.clone();
        Some(Box::new(move |eg| Some(add_op(eg, Op::Requantize, Some(t), vec![y]))))
    }
}

/// Ops that commute with the monotone element-wise maps `q` and `dq` on per-tensor values (data
/// movement, max pooling, nearest resize and the pads that copy elements).
fn commutes(op: &Op) -> bool {
    matches!(
        op,
        Op::Reshape { .. }
            | Op::Flatten { .. }
            | Op::Squeeze { .. }
            | Op::Unsqueeze { .. }
            | Op::Transpose { .. }
            | Op::Slice { .. }
            | Op::Expand { .. }
            | Op::MaxPool(_)
            | Op::GlobalMaxPool
            | Op::Identity
    ) || super::spatial::picks(op)
}

/// Ops that copy elements of their first operand only, the others giving sizes or positions
/// (a reshape or expand to sizes read from other values, a gather at indices): they commute
/// with `q` and `dq` on that first operand as [`commutes`]'s ops do on their one operand.
fn copies_first(op: &Op) -> bool {
    matches!(op, Op::ReshapeDyn { .. } | Op::ExpandDyn { .. } | Op::Gather { .. })
}

fn per_tensor_any(t: &TensorType) -> bool {
    matches!(t.quant, Some(QuantParams::PerTensor { .. }))
}

/// `op(dq(y), r...) = dq(op(y, r...))` for data movement and max pooling (dq is monotone and
/// element-wise), and `concat(dq(y1), ..., dq(yn)) = dq(concat(y1, ..., yn))` when every `yi`
/// has one type.
pub struct DqForward;
impl Rule for DqForward {
    fn name(&self) -> &'static str {
        "dq-forward"
    }
    fn rewrite(&self, eg: &EG, _: Id, node: &QNode) -> Option<Build> {
        let QNode::Op(d, ch) = node else { return None };
        let op = d.op().clone();
        if commutes(&op) && ch.len() == 1 || copies_first(&op) && !ch.is_empty() {
            let y = dq_of(eg, ch[0])?;
            if !per_tensor_any(ty(eg, y)?) {
                return None;
            }
            let rest = ch[1..].to_vec();
            return Some(Box::new(move |eg| {
                let moved = add_op(eg, op, None, std::iter::once(y).chain(rest).collect());
                Some(add_op(eg, Op::Dequantize, None, vec![moved]))
            }));
        }
        if let Op::Concat { .. } = op {
            let ys: Vec<Id> = ch.iter().map(|&c| dq_of(eg, c)).collect::<Option<_>>()?;
            let t0 = ty(eg, ys[0])?;
            if !per_tensor_any(t0)
                || ys.iter().any(|&y| ty(eg, y).map(|t| (t.dtype, &t.quant)) != Some((t0.dtype, &t0.quant)))
            {
                return None;
            }
            return Some(Box::new(move |eg| {
                let cat = add_op(eg, op, None, ys);
                Some(add_op(eg, Op::Dequantize, None, vec![cat]))
            }));
        }
        None
    }
}

/// `q_t(op(x, r...)) = op(q_t(x), r...)` for data movement and max pooling (q is monotone and
/// element-wise), and `q_t(concat(x1, ..., xn)) = concat(q_t(x1), ..., q_t(xn))`, for
/// per-tensor `t`.
pub struct QBackward;
impl Rule for QBackward {
    fn name(&self) -> &'static str {
        "q-backward"
    }
    fn rewrite(&self, eg: &EG, _: Id, node: &QNode) -> Option<Build> {
        let (t, c) = quantize_node(node)?;
        if !matches!(t.quant, QuantParams::PerTensor { .. }) {
            return None;
        }
        let float = |x: &Id| ty(eg, *x).is_some_and(|t| t.dtype == DType::F32 && t.quant.is_none());
        let (op, _, ch) = ops(eg, c).find(|(op, _, ch)| {
            (commutes(op) && ch.len() == 1 || matches!(op, Op::Concat { .. })) && ch.iter().all(float)
                || copies_first(op) && ch.first().is_some_and(float)
        })?;
        // the operands that are quantized: all of a concat's, else the first
        let data = if matches!(op, Op::Concat { .. }) { ch.len() } else { 1 };
        let (op, ch, t) = (op.clone(), ch.to_vec(), t.clone());
        Some(Box::new(move |eg| {
            let qs: Vec<Id> = ch
                .iter()
                .enumerate()
                .map(|(k, &x)| if k < data { add_op(eg, Op::Quantize, Some(t.clone()), vec![x]) } else { x })
                .collect();
            Some(add_op(eg, op, None, qs))
        }))
    }
}

/// `q_t(relu(x)) = q_t(x)` when `t`'s zero point is the bottom of its range (`q(0)` is then the
/// smallest value and `q` is monotone), and likewise `q_t(clip(lo, hi)(x)) = q_t(x)` when
/// `q(lo)` and `q(hi)` are the ends of the range.
pub struct QDropRelu;
impl Rule for QDropRelu {
    fn name(&self) -> &'static str {
        "q-drop-relu"
    }
    fn rewrite(&self, eg: &EG, _: Id, node: &QNode) -> Option<Build> {
        let (t, c) = quantize_node(node)?;
        let (s, z) = per_tensor_q(&t.tensor_type())?;
        let (qmin, qmax) = t.dtype.int_range()?;
        let t = t.clone();
        for (op, _, ch) in ops(eg, c) {
            let covers = match op {
                Op::Unary(UnaryOp::Relu) => z as i64 == qmin,
                Op::Clip { min, max } => {
                    numerics::quantize(*min, s, z, t.dtype) <= qmin && numerics::quantize(*max, s, z, t.dtype) >= qmax
                }
                _ => false,
            };
            if covers {
                let x = ch[0];
                return Some(Box::new(move |eg| Some(add_op(eg, Op::Quantize, Some(t), vec![x]))));
            }
        }
        None
    }
}

/// `relu(dq(y)) = dq(y)` when `y`'s zero point is the bottom of its range: every dequantized
/// value is then `(y - qmin) * s >= 0`.
pub struct DqDropRelu;
impl Rule for DqDropRelu {
    fn name(&self) -> &'static str {
        "dq-drop-relu"
    }
    fn rewrite(&self, eg: &EG, _: Id, node: &QNode) -> Option<Build> {
        let QNode::Op(d, ch) = node else { return None };
        let Op::Unary(UnaryOp::Relu) = d.op() else { return None };
        let y = dq_of(eg, ch[0])?;
        let yt = ty(eg, y)?;
        let (_, z) = per_tensor_q(yt)?;
        let (qmin, _) = yt.dtype.int_range()?;
        let x = ch[0];
        (z as i64 == qmin).then(|| -> Build { Box::new(move |_| Some(x)) })
    }
}

/// Quantizes a float constant: `q_t(c)` is the constant `quantize(c)` (ONNX Runtime folds it
/// the same way at session start).
pub struct QFoldConst;
impl Rule for QFoldConst {
    fn name(&self) -> &'static str {
        "q-fold-const"
    }
    fn rewrite(&self, eg: &EG, _: Id, node: &QNode) -> Option<Build> {
        let (t, c) = quantize_node(node)?;
        let (vals, shape) = float_const(eg, c)?;
        let name = format!("{}_quantized", konst(eg, c)?.name);
        let from = vec![konst(eg, c)?.name.clone()];
        let t = t.clone();
        let q = quantize_values(&vals, &shape, &t)?;
        Some(Box::new(move |eg| {
            let ty = TensorType::quantized(t.dtype, qforge_ir::Shape::fixed(&shape), t.quant.clone());
            let tensor = Tensor::from_f64_iter(t.dtype, shape.clone(), q.iter().map(|&v| v as f64));
            Some(add_const(eg, tensor, ty, name, from))
        }))
    }
}

/// `numerics::quantize` of every element with its channel's parameters.
pub(crate) fn quantize_values(vals: &[f32], shape: &[usize], t: &QType) -> Option<Vec<i64>> {
    let (axis, n) = match &t.quant {
        QuantParams::PerTensor { .. } => (0, 1),
        QuantParams::PerAxis { axis, scales, .. } => (*axis, scales.len()),
        q @ QuantParams::PerGroup { .. } => {
            q.check_shape(shape).ok()?;
            return Some(
                vals.iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let c = q.index_of(shape, i);
                        numerics::quantize(v, q.scale(c), q.zero_point(c), t.dtype)
                    })
                    .collect(),
            );
        }
    };
    let inner: usize = shape.get(axis + 1..).map(|s| s.iter().product()).unwrap_or(1);
    if n > 1 && shape.get(axis) != Some(&n) {
        return None;
    }
    Some(
        vals.iter()
            .enumerate()
            .map(|(i, &v)| {
                let c = if n > 1 { (i / inner) % n } else { 0 };
                numerics::quantize(v, t.quant.scale(c), t.quant.zero_point(c), t.dtype)
            })
            .collect(),
    )
}

/// The activation between an op and the quantize of its result: the clamp it becomes in the
/// output's stored domain (`relu` -> `[q(0), qmax]`, `clip(lo, hi)` -> `[q(lo), q(hi)]`: exact,
/// since `q` is monotone). `None` bounds mean no clamp is needed.
fn activations(eg: &EG, c: Id, t: &QType) -> Vec<(Option<(i64, i64)>, Id)> {
    let mut out = vec![(None, c)];
    let Some((s, z)) = per_tensor_q(&t.tensor_type()) else { return out };
    let Some((qmin, qmax)) = t.dtype.int_range() else { return out };
    for (op, _, ch) in ops(eg, c) {
        let (lo, hi) = match op {
            Op::Unary(UnaryOp::Relu) => (z as i64, qmax),
            Op::Clip { min, max } => (
                numerics::quantize(*min, s, z, t.dtype).max(qmin),
                if max.is_infinite() { qmax } else { numerics::quantize(*max, s, z, t.dtype).min(qmax) },
            ),
            _ => continue,
        };
        out.push((Some((lo, hi)).filter(|&(lo, hi)| lo > qmin || hi < qmax), ch[0]));
    }
    out
}

/// A quantized constant operand: `dq(w)` with `w` a constant of a quantized i8/u8 type.
fn quantized_weight(eg: &EG, c: Id) -> Option<Id> {
    let w = dq_of(eg, c)?;
    let e = konst(eg, w)?;
    matches!(e.ty.dtype, DType::I8 | DType::U8).then_some(w)?;
    e.ty.quant.as_ref()?;
    Some(w)
}

/// The i32 bias of an integer kernel with accumulator scales `acc_scales` (one per output
/// channel) and `m` channels, from a bias operand: absent, `dq` of an i32 constant whose scales
/// are exactly the accumulator's (used as is), or any other constant (its real values, times
/// `beta`, quantized at the accumulator's scales with round-half-even: the bias quantization ONNX
/// Runtime applies to a QDQ model's float bias, bit for bit).
enum Bias {
    None,
    Existing(Id),
    New(Vec<i64>, Vec<f32>),
}

fn bias_operand(eg: &EG, c: Option<Id>, acc_scales: &[f32], beta: f32) -> Option<Bias> {
    let Some(c) = c.filter(|&c| !is_absent(eg, c)) else { return Some(Bias::None) };
    let m = acc_scales.len();
    let real: Vec<f32> = if let Some(b) = dq_of(eg, c).filter(|&b| konst(eg, b).is_some()) {
        let e = konst(eg, b)?;
        let q = e.ty.quant.as_ref().filter(|q| !q.is_per_group())?;
        let ints = e.tensor.to_i64_vec()?;
        if ints.len() != m {
            return None;
        }
        let same = e.ty.dtype == DType::I32
            && beta == 1.0
            && (0..m).all(|i| q.scale(i) == acc_scales[i] && q.zero_point(i) == 0)
            && e.tensor.shape() == [m];
        if same {
            return Some(Bias::Existing(b));
        }
        ints.iter().enumerate().map(|(i, &v)| numerics::dequantize(v, q.scale(i), q.zero_point(i))).collect()
    } else {
        let (vals, _) = float_const(eg, c)?;
        vals
    };
    if real.len() != m {
        return None;
    }
    let q = real
        .iter()
        .zip(acc_scales)
        .map(|(&b, &s)| numerics::saturate_f64(numerics::round_half_even((beta * b) / s) as f64, DType::I32))
        .collect();
    Some(Bias::New(q, acc_scales.to_vec()))
}

fn add_bias(eg: &mut EG, bias: Bias, name: String) -> Option<Id> {
    match bias {
        Bias::None => None,
        Bias::Existing(b) => Some(b),
        Bias::New(q, scales) => {
            let m = q.len();
            let ty = TensorType::quantized(
                DType::I32,
                qforge_ir::Shape::fixed(&[m]),
                QuantParams::PerAxis { axis: 0, scales, zero_points: vec![0; m] },
            );
            let t = Tensor::from_f64_iter(DType::I32, vec![m], q.iter().map(|&v| v as f64));
            Some(add_const(eg, t, ty, name, vec![]))
        }
    }
}

/// The epilogue of an integer kernel: the bias, then the requantization to a quantized result
/// (`requant`, with the clamp of a fused activation) or the dequantization of the accumulator to
/// an f32 result.
fn epilogue(bias: bool, clamp: Option<(i64, i64)>, requant: bool) -> Vec<Epilogue> {
    let mut e = vec![];
    if bias {
        e.push(Epilogue::Bias);
    }
    if !requant {
        e.push(Epilogue::Dequant);
        return e;
    }
    e.push(Epilogue::Requant);
    if let Some((lo, hi)) = clamp {
        e.push(Epilogue::Clamp { lo, hi });
    }
    e
}

/// The lowering of `q_t(act(op(dq(x), ...)))` to the integer kernel of `op`:
///
/// * `q_t(act(conv(dq(x), dq(w), b)))` = `qconv(x, w, b_i32){bias, requant, clamp}` for a
///   per-tensor `x` and a constant quantized `w` (per tensor or per output channel);
/// * `q_t(act(gemm(dq(a), dq(b), c)))` = `qgemm(a, b, c_i32){bias, requant, clamp}`;
/// * `q_t(act(matmul(dq(a), dq(b))))` = `qmatmul(a, b){requant, clamp}`;
/// * `q_t(add(dq(a), dq(b)))` = `qadd(a, b)`, `q_t(mul(dq(a), dq(b)))` = `qmul(a, b)`;
/// * `q_t(global_average_pool(dq(x)))` = `qglobal_average_pool(x)`,
///   `q_t(average_pool(dq(x)))` = `qaverage_pool(x)`;
/// * `q_t(concat(dq(x1), ..., dq(xn)))` = `qconcat(x1, ..., xn)` (inputs may differ in scale).
///
/// `act` is nothing, `relu` or `clip`, which only the conv and matrix kernels absorb (as the
/// clamp of their requantization). The bias becomes i32 at scale `sx * sw[c]` (see
/// `bias_operand`).
pub struct LowerToInteger;
impl Rule for LowerToInteger {
    fn name(&self) -> &'static str {
        "lower-to-integer"
    }
    fn rewrite(&self, eg: &EG, _: Id, node: &QNode) -> Option<Build> {
        let (t, c) = quantize_node(node)?;
        per_tensor_q(&t.tensor_type())?;
        for (clamp, inner) in activations(eg, c, t) {
            for (op, _, ch) in ops(eg, inner) {
                if let Some(b) = lower(eg, op, ch, Some(t), clamp) {
                    return Some(b);
                }
            }
        }
        None
    }
}

/// The lowering of a conv, gemm or matmul over dequantized operands whose result stays float (no
/// quantize reads it: static INT8 leaves the result of such an op unquantized when only float
/// ops read it, see `quantize::static_quant`) to its integer kernel with a dequantizing
/// epilogue:
///
/// * `conv(dq(x), dq(w), b)` = `qconv(x, w, b_i32){bias, dequant}`, and alike
///   `gemm(dq(a), dq(b), c)` = `qgemm(a, b, c_i32){bias, dequant}`,
///   `matmul(dq(a), dq(b))` = `qmatmul(a, b){dequant}`.
///
/// The kernel returns `acc as f32 * (sx * sw[c])`: the exact integer sum scaled once, where the
/// float op sums the dequantized products in f32 (ONNX Runtime's QGemm without an output scale
/// computes the same, `contrib_ops/cpu/quantization/quant_gemm.cc`).
pub struct LowerToDequantizing;
impl Rule for LowerToDequantizing {
    fn name(&self) -> &'static str {
        "lower-to-dequantizing"
    }
    fn rewrite(&self, eg: &EG, id: Id, node: &QNode) -> Option<Build> {
        let QNode::Op(d, ch) = node else { return None };
        if !matches!(d.op(), Op::Conv(_) | Op::Gemm { .. } | Op::MatMul) || d.decl().is_some() {
            return None;
        }
        let out = ty(eg, id)?;
        if out.dtype != DType::F32 || out.quant.is_some() {
            return None;
        }
        lower(eg, d.op(), ch, None, None)
    }
}

/// The integer kernel of `op` over the dequantized operands `ch`: requantized to `t` (with the
/// clamp of a fused activation), or, with no `t`, dequantizing its accumulator to f32 (conv,
/// gemm and matmul only).
fn lower(eg: &EG, op: &Op, ch: &[Id], t: Option<&QType>, clamp: Option<(i64, i64)>) -> Option<Build> {
    let requant = t.is_some();
    let t = t.cloned();
    let act_x = |i: usize| -> Option<(Id, f32)> {
        let x = dq_of(eg, *ch.get(i)?)?;
        let (s, _) = per_tensor_q(ty(eg, x)?)?;
        Some((x, s))
    };
    match op {
        Op::Conv(attrs) => {
            let (x, sx) = act_x(0)?;
            let w = quantized_weight(eg, ch[1])?;
            let wt = &konst(eg, w)?.ty;
            let m = *wt.shape.as_fixed()?.first()?;
            let wq = wt.quant.as_ref()?;
            // per-group weights have no integer kernel: the float conv stays
            if wq.is_per_group() || wq.axis().is_some_and(|a| a != 0) {
                return None;
            }
            let acc: Vec<f32> = (0..m).map(|c| sx * wq.scale(c)).collect();
            let bias = bias_operand(eg, ch.get(2).copied(), &acc, 1.0)?;
            let has_bias = !matches!(bias, Bias::None);
            let name = format!("{}_bias_i32", konst(eg, w)?.name);
            let conv = attrs.clone();
            Some(Box::new(move |eg| {
                let b = add_bias(eg, bias, name);
                let op = Op::QConv { conv, epilogue: epilogue(has_bias, clamp, requant) };
                Some(add_op(eg, op, t, [Some(x), Some(w), b].into_iter().flatten().collect()))
            }))
        }
        Op::Gemm { alpha, beta, trans_a, trans_b } => {
            let (a, sa) = act_x(0)?;
            let b = quantized_weight(eg, ch[1])?;
            let bt = &konst(eg, b)?.ty;
            let bs = bt.shape.as_fixed()?;
            let n = if *trans_b { bs[0] } else { bs[1] };
            let bq = bt.quant.as_ref()?;
            if bq.is_per_group() || bq.axis().is_some_and(|ax| ax != if *trans_b { 0 } else { 1 }) {
                return None;
            }
            let acc: Vec<f32> = (0..n).map(|c| (alpha * sa) * bq.scale(c)).collect();
            let bias = bias_operand(eg, ch.get(2).copied(), &acc, *beta)?;
            let has_bias = !matches!(bias, Bias::None);
            let name = format!("{}_bias_i32", konst(eg, b)?.name);
            let (alpha, trans_a, trans_b) = (*alpha, *trans_a, *trans_b);
            Some(Box::new(move |eg| {
                let c = add_bias(eg, bias, name);
                let op = Op::QGemm { alpha, trans_a, trans_b, epilogue: epilogue(has_bias, clamp, requant) };
                Some(add_op(eg, op, t, [Some(a), Some(b), c].into_iter().flatten().collect()))
            }))
        }
        Op::MatMul => {
            let (a, _) = act_x(0)?;
            let b = dq_of(eg, ch[1])?;
            let btype = ty(eg, b)?;
            if !matches!(btype.dtype, DType::I8 | DType::U8) {
                return None;
            }
            match btype.quant.as_ref()? {
                QuantParams::PerTensor { .. } => {}
                QuantParams::PerAxis { axis, .. } if *axis + 1 == btype.rank() && btype.rank() >= 2 => {}
                _ => return None,
            }
            Some(Box::new(move |eg| {
                Some(add_op(eg, Op::QMatMul { epilogue: epilogue(false, clamp, requant) }, t, vec![a, b]))
            }))
        }
        _ if clamp.is_some() || !requant => None,
        Op::Binary(qforge_ir::BinaryOp::Add | qforge_ir::BinaryOp::Mul) => {
            let ((a, _), (b, _)) = (act_x(0)?, act_x(1)?);
            let op = if matches!(op, Op::Binary(qforge_ir::BinaryOp::Add)) { Op::QAdd } else { Op::QMul };
            Some(Box::new(move |eg| Some(add_op(eg, op, t, vec![a, b]))))
        }
        Op::GlobalAveragePool => {
            let (x, _) = act_x(0)?;
            Some(Box::new(move |eg| Some(add_op(eg, Op::QGlobalAveragePool, t, vec![x]))))
        }
        Op::AveragePool(p) => {
            let (x, _) = act_x(0)?;
            let op = Op::QAveragePool(p.clone());
            Some(Box::new(move |eg| Some(add_op(eg, op, t, vec![x]))))
        }
        Op::Concat { axis } => {
            let xs: Vec<Id> = (0..ch.len()).map(|i| act_x(i).map(|(x, _)| x)).collect::<Option<_>>()?;
            let op = Op::QConcat { axis: *axis };
            Some(Box::new(move |eg| Some(add_op(eg, op, t, xs))))
        }
        _ => None,
    }
}
