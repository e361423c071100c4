//! Folding constants into convolutions: batch normalization, per-channel multiplies and adds;
//! and cast pairs.
//!
//! The folded weights are new constants, computed once by the rule's builder and added to the
//! constant table of the analysis (so later rules, the quantizing ones included, see them as
//! constants). All arithmetic is f32, in the order the formulas are written.

use super::{add_const, add_op, dq_of, float_const, is_absent, konst, ops, per_channel, ty, Build, Rule};
use crate::egraph::analysis::EG;
use crate::egraph::lang::QNode;
use egg::Id;
use qforge_ir::{numerics, BinaryOp, ConvAttrs, DType, Op, QuantParams, Shape, Tensor, TensorType};
use std::sync::Arc;

/// A conv's weight operand, as it can be rescaled per output channel. Holds the constant's
/// tensor (shared, not copied: matching happens every iteration, rescaling once).
enum Weight {
    /// A float constant.
    Float { t: Arc<Tensor>, name: String, from: Vec<String> },
    /// `dq(w)` of an i8 constant with zero points 0: rescaled through its scales.
    Quantized { t: Arc<Tensor>, scales: Vec<f32>, name: String, from: Vec<String> },
}

impl Weight {
    fn of(eg: &EG, c: Id) -> Option<Weight> {
        if let Some(e) = konst(eg, c) {
            let float = e.ty.dtype == DType::F32 && e.ty.quant.is_none() && e.tensor.rank() >= 1;
            return float.then(|| Weight::Float { t: e.tensor.clone(), name: e.name.clone(), from: origins(e) });
        }
        let w = dq_of(eg, c)?;
        let e = konst(eg, w)?;
        if e.ty.dtype != DType::I8 {
            return None;
        }
        let m = *e.tensor.shape().first()?;
        let q = e.ty.quant.as_ref()?;
        if q.is_per_group() || q.axis().is_some_and(|a| a != 0) || (0..m).any(|c| q.zero_point(c) != 0) {
            return None;
        }
        Some(Weight::Quantized {
            t: e.tensor.clone(),
            scales: (0..m).map(|c| q.scale(c)).collect(),
            name: e.name.clone(),
            from: origins(e),
        })
    }

    fn channels(&self) -> usize {
        match self {
            Weight::Float { t, .. } | Weight::Quantized { t, .. } => t.shape()[0],
        }
    }

    fn name(&self) -> &str {
        match self {
            Weight::Float { name, .. } | Weight::Quantized { name, .. } => name,
        }
    }

    fn from(&self) -> Vec<String> {
        match self {
            Weight::Float { from, .. } | Weight::Quantized { from, .. } => from.clone(),
        }
    }

    /// `W[m] * k[m]`: float weights are multiplied; quantized ones keep their integers (negated
    /// where `k < 0`) and take scales `s[m] * |k[m]|`. `None` when that is impossible (`k = 0`
    /// or a non-finite `k` for quantized weights, or negating -128).
    fn scaled(&self, k: &[f32]) -> Option<(Tensor, TensorType)> {
        match self {
            Weight::Float { t, .. } => {
                let shape = t.shape().to_vec();
                let vals = t.as_f32()?;
                let per = vals.len() / shape[0];
                let v: Vec<f32> = vals.iter().enumerate().map(|(i, &w)| w * k[i / per]).collect();
                let ty = TensorType::new(DType::F32, Shape::fixed(&shape));
                Some((Tensor::from_f32(shape, v), ty))
            }
            Weight::Quantized { t, scales, .. } => {
                let shape = t.shape().to_vec();
                let ints = t.to_i64_vec()?;
                let per = ints.len() / shape[0];
                let mut out = Vec::with_capacity(ints.len());
                for (i, &q) in ints.iter().enumerate() {
                    let kk = k[i / per];
                    if kk < 0.0 && q == -128 {
                        return None;
                    }
                    out.push(if kk < 0.0 { -q } else { q });
                }
                let s: Vec<f32> = scales.iter().zip(k).map(|(&s, &kk)| s * kk.abs()).collect();
                if s.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                    return None;
                }
                let m = shape[0];
                let ty = TensorType::quantized(
                    DType::I8,
                    Shape::fixed(&shape),
                    QuantParams::PerAxis { axis: 0, scales: s, zero_points: vec![0; m] },
                );
                Some((Tensor::from_f64_iter(DType::I8, shape, out.iter().map(|&v| v as f64)), ty))
            }
        }
    }
}

/// The real values of a conv's bias operand (absent: zeros).
fn bias_values(eg: &EG, c: Option<Id>, m: usize) -> Option<Vec<f32>> {
    let Some(c) = c.filter(|&c| !is_absent(eg, c)) else { return Some(vec![0.0; m]) };
    if let Some((v, _)) = float_const(eg, c) {
        return (v.len() == m).then_some(v);
    }
    let b = dq_of(eg, c)?;
    let e = konst(eg, b)?;
    let q = e.ty.quant.as_ref().filter(|q| !q.is_per_group())?;
    let ints = e.tensor.to_i64_vec()?;
    (ints.len() == m)
        .then(|| ints.iter().enumerate().map(|(i, &v)| numerics::dequantize(v, q.scale(i), q.zero_point(i))).collect())
}

/// A conv with a rescalable weight: its input, weight operand (class and value), bias values
/// and attributes.
type ConvParts = (Id, Id, Weight, Vec<f32>, ConvAttrs);

/// A conv in class `c` with a rescalable weight.
fn conv_in(eg: &EG, c: Id) -> Option<ConvParts> {
    ops(eg, c).find_map(|(op, _, ch)| {
        let Op::Conv(a) = op else { return None };
        let w = Weight::of(eg, ch[1])?;
        let b = bias_values(eg, ch.get(2).copied(), w.channels())?;
        Some((ch[0], ch[1], w, b, a.clone()))
    })
}

/// Builds `conv(x, W * k, b')` (weights rescaled per channel, new bias `b'`). The rescaling runs
/// in the builder, once per match.
fn build_conv(x: Id, w: Weight, k: Vec<f32>, bias: Vec<f32>, attrs: ConvAttrs, tag: &'static str) -> Option<Build> {
    if let Weight::Quantized { .. } = w {
        // Checked here so a match that cannot build is not reported as one.
        w.scaled(&k)?;
    }
    Some(Box::new(move |eg| {
        let (wt, wty) = w.scaled(&k)?;
        let quantized = matches!(w, Weight::Quantized { .. });
        let wname = format!("{}_{tag}", w.name());
        let from = w.from();
        let m = bias.len();
        let wc = add_const(eg, wt, wty, wname.clone(), from.clone());
        let wc = if quantized { add_op(eg, Op::Dequantize, None, vec![wc]) } else { wc };
        let b = add_const(
            eg,
            Tensor::from_f32(vec![m], bias),
            TensorType::new(DType::F32, Shape::fixed(&[m])),
            format!("{wname}_bias"),
            from,
        );
        Some(add_op(eg, Op::Conv(attrs), None, vec![x, wc, b]))
    }))
}

/// The batch-norm parameters as constants: (scale, bias, mean, var).
fn bn_params(eg: &EG, ch: &[Id]) -> Option<[Vec<f32>; 4]> {
    let get = |i: usize| float_const(eg, ch[i]).map(|(v, _)| v);
    Some([get(1)?, get(2)?, get(3)?, get(4)?])
}

/// `bn(conv(x, W, b)) = conv(x, W * k, (b - mean) * k + beta)` with
/// `k = gamma / sqrt(var + eps)` per output channel; grouped and depthwise convs alike (the
/// output channel is the weight's first axis either way). Quantized weights `dq(w)` (zero point
/// 0) keep their integers and take scales `s * |k|` (integers negated where `k < 0`).
pub struct BnIntoConv;
impl Rule for BnIntoConv {
    fn name(&self) -> &'static str {
        "bn-into-conv"
    }
    fn rewrite(&self, eg: &EG, _: Id, node: &QNode) -> Option<Build> {
        let QNode::Op(d, ch) = node else { return None };
        let Op::BatchNorm { epsilon } = d.op() else { return None };
        let [gamma, beta, mean, var] = bn_params(eg, ch)?;
        let (x, _, w, b, attrs) = conv_in(eg, ch[0])?;
        let m = w.channels();
        if gamma.len() != m {
            return None;
        }
        if var.len() != m || b.len() != m || mean.len() != m || beta.len() != m {
            return None;
        }
        let k = crate::batchnorm::channel_scale(&gamma, &var, *epsilon);
        let bias = crate::batchnorm::folded_bias(&b, &mean, &k, &beta);
        build_conv(x, w, k, bias, attrs, "bn")
    }
}

/// `bn(x) = x * k + (beta - mean * k)` with `k = gamma / sqrt(var + eps)` as `[C, 1, ...]`
/// constants, for a batch norm that cannot fold into a conv: its input has no conv, or the conv's
/// result has other users (folding would compute the conv twice; the extractor weighs that
/// against this multiply and add).
pub struct BnToAffine;
impl Rule for BnToAffine {
    fn name(&self) -> &'static str {
        "bn-to-affine"
    }
    fn rewrite(&self, eg: &EG, class: Id, node: &QNode) -> Option<Build> {
        let QNode::Op(d, ch) = node else { return None };
        let Op::BatchNorm { epsilon } = d.op() else { return None };
        let [gamma, beta, mean, var] = bn_params(eg, ch)?;
        let shared = || eg[ch[0]].parents().any(|p| eg.find(p) != eg.find(class));
        if ops(eg, ch[0]).any(|(op, _, _)| matches!(op, Op::Conv(_))) && !shared() {
            return None;
        }
        let xt = ty(eg, ch[0])?;
        if xt.dtype != DType::F32 {
            return None;
        }
        let c = gamma.len();
        let k = crate::batchnorm::channel_scale(&gamma, &var, *epsilon);
        let shift: Vec<f32> = (0..c).map(|i| beta[i] - mean[i] * k[i]).collect();
        let mut shape = vec![c];
        shape.extend(std::iter::repeat_n(1, xt.rank().saturating_sub(2)));
        let name = konst(eg, ch[1])?.name.clone();
        let from = [1, 2, 3, 4].iter().filter_map(|&i| konst(eg, ch[i]).map(|e| e.name.clone())).collect::<Vec<_>>();
        let x = ch[0];
        Some(Box::new(move |eg| {
            let ty = TensorType::new(DType::F32, Shape::fixed(&shape));
            let kc = add_const(eg, Tensor::from_f32(shape.clone(), k), ty.clone(), format!("{name}_k"), from.clone());
            let sc = add_const(eg, Tensor::from_f32(shape, shift), ty, format!("{name}_shift"), from);
            let mul = add_op(eg, Op::Binary(BinaryOp::Mul), None, vec![x, kc]);
            Some(add_op(eg, Op::Binary(BinaryOp::Add), None, vec![mul, sc]))
        }))
    }
}

/// The (conv class, per-channel constant) operands of a binary op, in either order.
fn conv_and_channel_const(eg: &EG, ch: &[Id]) -> Option<(ConvParts, Vec<f32>)> {
    for (a, b) in [(ch[0], ch[1]), (ch[1], ch[0])] {
        let Some((vals, shape)) = float_const(eg, b) else { continue };
        let Some((x, wc, w, bias, attrs)) = conv_in(eg, a) else { continue };
        let out = ty(eg, a)?;
        if let Some(c) = per_channel(&vals, &shape, w.channels(), out.rank()) {
            return Some(((x, wc, w, bias, attrs), c));
        }
    }
    None
}

/// `conv(x, W, b) * c = conv(x, W * c, b * c)` for a constant `c` that is per output channel.
pub struct MulIntoConv;
impl Rule for MulIntoConv {
    fn name(&self) -> &'static str {
        "mul-into-conv"
    }
    fn rewrite(&self, eg: &EG, _: Id, node: &QNode) -> Option<Build> {
        let QNode::Op(d, ch) = node else { return None };
        let Op::Binary(BinaryOp::Mul) = d.op() else { return None };
        let ((x, _, w, b, attrs), c) = conv_and_channel_const(eg, ch)?;
        let bias: Vec<f32> = b.iter().zip(&c).map(|(b, c)| b * c).collect();
        build_conv(x, w, c, bias, attrs, "mul")
    }
}

/// `conv(x, W, b) + c = conv(x, W, b + c)` for a constant `c` that is per output channel.
pub struct AddIntoConv;
impl Rule for AddIntoConv {
    fn name(&self) -> &'static str {
        "add-into-conv"
    }
    fn rewrite(&self, eg: &EG, _: Id, node: &QNode) -> Option<Build> {
        let QNode::Op(d, ch) = node else { return None };
        let Op::Binary(BinaryOp::Add) = d.op() else { return None };
        let ((x, wc, w, b, attrs), c) = conv_and_channel_const(eg, ch)?;
        let bias: Vec<f32> = b.iter().zip(&c).map(|(b, c)| b + c).collect();
        let (name, from, m) = (format!("{}_add_bias", w.name()), w.from(), bias.len());
        // The weight is unchanged: the new conv reads the same weight operand.
        Some(Box::new(move |eg| {
            let ty = TensorType::new(DType::F32, Shape::fixed(&[m]));
            let b = add_const(eg, Tensor::from_f32(vec![m], bias), ty, name, from);
            Some(add_op(eg, Op::Conv(attrs), None, vec![x, wc, b]))
        }))
    }
}

/// Whether every value of `from` converts to `to` and back unchanged.
fn lossless(from: DType, to: DType) -> bool {
    use DType::*;
    from == to
        || matches!(
            (from, to),
            (I8 | U8, I16 | I32 | I64 | F32 | F16 | F64)
                | (U8, U16 | U32 | U64)
                | (I16 | U16, I32 | I64 | F32 | F64)
                | (U16, U32 | U64)
                | (I32 | U32, I64 | F64)
                | (U32, U64)
                | (F16 | BF16, F32 | F64)
                | (F32, F64)
                | (Bool, I8 | U8 | I16 | U16 | I32 | U32 | I64 | U64)
        )
}

/// `cast_a(cast_b(x)) = x` when `x` has type `a` and `b` holds every value of `a`.
pub struct CastPair;
impl Rule for CastPair {
    fn name(&self) -> &'static str {
        "cast-pair"
    }
    fn rewrite(&self, eg: &EG, _: Id, node: &QNode) -> Option<Build> {
        let QNode::Op(d, ch) = node else { return None };
        let Op::Cast { to: a } = d.op() else { return None };
        let x = ops(eg, ch[0]).find_map(|(op, _, ich)| match op {
            Op::Cast { to: b } => {
                let xt = ty(eg, ich[0])?;
                (xt.dtype == *a && xt.quant.is_none() && lossless(*a, *b)).then_some(ich[0])
            }
            _ => None,
        })?;
        Some(Box::new(move |_| Some(x)))
    }
}

/// The original constants a constant was computed from (itself, if original).
fn origins(e: &crate::egraph::analysis::ConstEntry) -> Vec<String> {
    if e.from.is_empty() {
        vec![e.name.clone()]
    } else {
        e.from.clone()
    }
}

/// The (non-constant, constant) operands of a binary op, in either order.
fn with_const(eg: &EG, ch: &[Id]) -> Option<(Id, Id)> {
    [(ch[0], ch[1]), (ch[1], ch[0])].into_iter().find(|&(_, c)| float_const(eg, c).is_some() && konst(eg, c).is_some())
}

/// `f(a, b)` element-wise for two float constants of one shape, as a new constant.
fn combine(
    eg: &EG,
    a: Id,
    b: Id,
    f: fn(f32, f32) -> f32,
    tag: &str,
) -> Option<(Tensor, TensorType, String, Vec<String>)> {
    let ((va, sa), (vb, sb)) = (float_const(eg, a)?, float_const(eg, b)?);
    if sa != sb {
        return None;
    }
    let v: Vec<f32> = va.iter().zip(&vb).map(|(&x, &y)| f(x, y)).collect();
    let (ea, eb) = (konst(eg, a)?, konst(eg, b)?);
    let mut from = origins(ea);
    for n in origins(eb) {
        if !from.contains(&n) {
            from.push(n);
        }
    }
    let ty = TensorType::new(DType::F32, Shape::fixed(&sa));
    Some((Tensor::from_f32(sa, v), ty, format!("{}_{tag}", ea.name), from))
}

/// The `x op c` operands of an e-node of op `op` in class `c` with a constant `c`.
fn inner(eg: &EG, class: Id, op: BinaryOp) -> Option<(Id, Id)> {
    ops(eg, class).find_map(|(o, _, ch)| match o {
        Op::Binary(b) if *b == op => with_const(eg, ch),
        _ => None,
    })
}

/// `(x * a) * b = x * (a * b)` and `(x + a) + b = x + (a + b)` for float constants `a`, `b` of one
/// shape (constant folding of a chain; no general associativity).
pub struct ConstChain;
impl Rule for ConstChain {
    fn name(&self) -> &'static str {
        "const-chain"
    }
    fn rewrite(&self, eg: &EG, _: Id, node: &QNode) -> Option<Build> {
        let QNode::Op(d, ch) = node else { return None };
        let Op::Binary(op @ (BinaryOp::Mul | BinaryOp::Add)) = d.op() else { return None };
        let (y, b) = with_const(eg, ch)?;
        let (x, a) = inner(eg, y, *op)?;
        let f: fn(f32, f32) -> f32 = if *op == BinaryOp::Mul { |p, q| p * q } else { |p, q| p + q };
        let (t, ty, name, from) = combine(eg, a, b, f, if *op == BinaryOp::Mul { "mul" } else { "add" })?;
        let op = *op;
        Some(Box::new(move |eg| {
            let c = add_const(eg, t, ty, name, from);
            Some(add_op(eg, Op::Binary(op), None, vec![x, c]))
        }))
    }
}

/// `(x + c) * k = x * k + c * k` for float constants `c`, `k` of one shape (so a chain of
/// per-channel affine maps collapses to one multiply and one add).
pub struct DistributeConst;
impl Rule for DistributeConst {
    fn name(&self) -> &'static str {
        "distribute-const"
    }
    fn rewrite(&self, eg: &EG, _: Id, node: &QNode) -> Option<Build> {
        let QNode::Op(d, ch) = node else { return None };
        let Op::Binary(BinaryOp::Mul) = d.op() else { return None };
        let (y, k) = with_const(eg, ch)?;
        let (x, c) = inner(eg, y, BinaryOp::Add)?;
        let (t, ty, name, from) = combine(eg, c, k, |p, q| p * q, "mul")?;
        Some(Box::new(move |eg| {
            let ck = add_const(eg, t, ty, name, from);
            let xk = add_op(eg, Op::Binary(BinaryOp::Mul), None, vec![x, k]);
            Some(add_op(eg, Op::Binary(BinaryOp::Add), None, vec![xk, ck]))
        }))
    }
}
