//! Arithmetic: element-wise unary math and binary ops (with ONNX's multidirectional
//! broadcasting), the variadic Sum/Max/Min/Mean, MatMul and Gemm, and reductions, including the
//! ones that are a sum between element-wise steps (ReduceL1, ReduceL2, ReduceSumSquare,
//! ReduceLogSum), ReduceProd, trigonometric and hyperbolic functions, Sign, Round, TopK, CumSum, CumProd,
//! Det and Einsum (semantics: the ONNX operator spec, <https://onnx.ai/onnx/operators/>).

use super::{one, Cx, OpDef, Outs, R};
use qforge_ir::{BinaryOp, DType, Op, Shape, Tensor, TensorType, UnaryOp, Value};

pub(super) const OPS: &[OpDef] = &[
    OpDef::onnx("Erf", &[9, 13], |cx| cx.unary(UnaryOp::Erf)),
    OpDef::onnx("Exp", &[1, 6, 13], |cx| cx.unary(UnaryOp::Exp)),
    OpDef::onnx("Log", &[1, 6, 13], |cx| cx.unary(UnaryOp::Log)),
    OpDef::onnx("Sqrt", &[1, 6, 13], |cx| cx.unary(UnaryOp::Sqrt)),
    OpDef::onnx("Neg", &[1, 6, 13], neg),
    OpDef::onnx("Abs", &[1, 6, 13], |cx| cx.unary(UnaryOp::Abs)),
    OpDef::onnx("Reciprocal", &[1, 6, 13], |cx| cx.unary(UnaryOp::Reciprocal)),
    OpDef::onnx("Floor", &[1, 6, 13], |cx| cx.unary(UnaryOp::Floor)),
    OpDef::onnx("Ceil", &[1, 6, 13], |cx| cx.unary(UnaryOp::Ceil)),
    OpDef::onnx("Sin", &[7, 22], |cx| cx.unary(UnaryOp::Sin)),
    OpDef::onnx("Cos", &[7, 22], |cx| cx.unary(UnaryOp::Cos)),
    OpDef::onnx("Tan", &[7, 22], |cx| cx.unary(UnaryOp::Tan)),
    OpDef::onnx("Asin", &[7, 22], |cx| cx.unary(UnaryOp::Asin)),
    OpDef::onnx("Acos", &[7, 22], |cx| cx.unary(UnaryOp::Acos)),
    OpDef::onnx("Atan", &[7, 22], |cx| cx.unary(UnaryOp::Atan)),
    OpDef::onnx("Sinh", &[9, 22], |cx| cx.unary(UnaryOp::Sinh)),
    OpDef::onnx("Cosh", &[9, 22], |cx| cx.unary(UnaryOp::Cosh)),
    OpDef::onnx("Asinh", &[9, 22], |cx| cx.unary(UnaryOp::Asinh)),
    OpDef::onnx("Acosh", &[9, 22], |cx| cx.unary(UnaryOp::Acosh)),
    OpDef::onnx("Atanh", &[9, 22], |cx| cx.unary(UnaryOp::Atanh)),
    OpDef::onnx("Sign", &[9, 13], sign),
    OpDef::onnx("Round", &[11, 22], |cx| cx.unary(UnaryOp::Round)),
    OpDef::onnx("TopK", &[1, 10, 11, 24], top_k),
    OpDef::onnx("CumSum", &[11, 14], |cx| cumulative(cx, false)),
    OpDef::onnx("CumProd", &[26], |cx| cumulative(cx, true)),
    OpDef::onnx("Det", &[11, 22], |cx| cx.simple(Op::Det, 1)),
    OpDef::onnx("Einsum", &[12, 28], einsum),
    OpDef::onnx("Add", &[1, 6, 7, 13, 14], |cx| binary(cx, BinaryOp::Add)),
    OpDef::onnx("Sub", &[1, 6, 7, 13, 14], |cx| binary(cx, BinaryOp::Sub)),
    OpDef::onnx("Mul", &[1, 6, 7, 13, 14], |cx| binary(cx, BinaryOp::Mul)),
    OpDef::onnx("Div", &[1, 6, 7, 13, 14], |cx| binary(cx, BinaryOp::Div)),
    OpDef::onnx("Pow", &[1, 7, 12, 13, 15], pow),
    OpDef::onnx("Mod", &[10, 13, 28], modulo),
    OpDef::onnx("Sum", &[1, 6, 8, 13], |cx| variadic(cx, BinaryOp::Add)),
    OpDef::onnx("Max", &[1, 6, 8, 12, 13], |cx| variadic(cx, BinaryOp::Max)),
    OpDef::onnx("Min", &[1, 6, 8, 12, 13], |cx| variadic(cx, BinaryOp::Min)),
    OpDef::onnx("Mean", &[1, 6, 8, 13], mean),
    OpDef::onnx("MatMul", &[1, 9, 13], |cx| cx.simple(Op::MatMul, 2)),
    OpDef::onnx("Gemm", &[1, 6, 7, 9, 11, 13], gemm),
    OpDef::onnx("ReduceMean", &[1, 11, 13, 18], |cx| reduce(cx, Reduce::Mean)),
    OpDef::onnx("ReduceSum", &[1, 11, 13], |cx| reduce(cx, Reduce::Sum)),
    OpDef::onnx("ReduceMax", &[1, 11, 12, 13, 18, 20], |cx| reduce(cx, Reduce::Max)),
    OpDef::onnx("ReduceProd", &[1, 11, 13, 18], |cx| reduce(cx, Reduce::Prod)),
    OpDef::onnx("ReduceMin", &[1, 11, 12, 13, 18, 20], reduce_min),
    OpDef::onnx("ReduceLogSumExp", &[1, 11, 13, 18, 28], reduce_log_sum_exp),
    OpDef::onnx("ArgMax", &[1, 11, 12, 13], |cx| arg_extreme(cx, true)),
    OpDef::onnx("ArgMin", &[1, 11, 12, 13], |cx| arg_extreme(cx, false)),
    OpDef::onnx("ReduceL1", &[1, 11, 13, 18], |cx| reduce_composite(cx, Pre::Abs, None)),
    OpDef::onnx("ReduceL2", &[1, 11, 13, 18], |cx| reduce_composite(cx, Pre::Square, Some(UnaryOp::Sqrt))),
    OpDef::onnx("ReduceSumSquare", &[1, 11, 13, 18], |cx| reduce_composite(cx, Pre::Square, None)),
    OpDef::onnx("ReduceLogSum", &[1, 11, 13, 18, 28], |cx| reduce_composite(cx, Pre::None, Some(UnaryOp::Log))),
];

/// Neg: the IR's `neg` on floats; on integers (version 6 on) `0 - x`, which wraps at the type's
/// minimum as numpy's negation does.
fn neg(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    let xt = cx.ty(x);
    if xt.dtype.is_float() || xt.quant.is_some() {
        return cx.unary(UnaryOp::Neg);
    }
    let name = cx.im.fresh_name(&format!("{}/zero", cx.at.name));
    let zero = cx.im.g.add_const(name, Tensor::from_i64_wrapping(xt.dtype, vec![], &[0]));
    one(cx.add(Op::Binary(BinaryOp::Sub), vec![Some(zero), Some(x)], None)?)
}

/// Mean: the element-wise sum of the inputs divided by their count, as the ONNX reference
/// computes it (sum left to right, then one division).
fn mean(cx: &mut Cx) -> R<Outs> {
    let n = cx.node.input.len();
    if n == 0 {
        return Err(cx.err("needs at least one input"));
    }
    let mut acc = cx.input(0)?;
    for i in 1..n {
        let next = cx.input(i)?;
        acc = cx.add_helper(&format!("sum{i}"), Op::Binary(BinaryOp::Add), vec![Some(acc), Some(next)])?;
    }
    let dtype = cx.ty(acc).dtype;
    if !dtype.is_float() {
        return Err(cx.err(format!("Mean of {dtype} is not supported (float types)")));
    }
    let name = cx.im.fresh_name(&format!("{}/count", cx.at.name));
    let count = cx.im.g.add_const(name, Tensor::from_f64_iter(dtype, vec![], [n as f64].into_iter()));
    one(cx.add(Op::Binary(BinaryOp::Div), vec![Some(acc), Some(count)], None)?)
}

/// A two-input element-wise op (arithmetic here, comparisons and boolean ops in
/// [`super::logic`]).
pub(super) fn binary(cx: &mut Cx, b: BinaryOp) -> R<Outs> {
    let (x, y) = (cx.input(0)?, cx.input(1)?);
    one(cx.add(Op::Binary(b), vec![Some(x), Some(y)], None)?)
}

/// Pow. From version 12 the exponent may have another type than the base; the result has the
/// base's. The ONNX reference computes `np.power(a, b).astype(a.dtype)`: the power in the type
/// both promote to, then a cast back (truncating toward zero for an integer base; ONNX Runtime
/// computes `std::pow` in double and casts the same way). The IR's `pow` takes one type, so:
/// * a constant exponent that the base's type holds exactly (`x ** 2` exported with an int64 2)
///   is converted to it, which changes nothing: the IR's `pow` evaluates in f64 either way;
/// * otherwise both operands are cast to a type that holds them exactly, i64 for two integer
///   types and f64 when either is a float, the power is taken there ([`qforge_ir::numerics`]: in
///   f64, or `trunc(pow)` wrapped for i64), and the result is cast back to the base's type.
fn pow(cx: &mut Cx) -> R<Outs> {
    let (x, y) = (cx.input(0)?, cx.input(1)?);
    let (xt, yt) = (cx.ty(x).clone(), cx.ty(y).clone());
    if xt.dtype == yt.dtype || xt.quant.is_some() || yt.quant.is_some() {
        return binary(cx, BinaryOp::Pow);
    }
    if let Some(t) = cx.im.const_of(y) {
        if let Some(c) = exact_cast(&t, xt.dtype) {
            let name = cx.im.fresh_name(&format!("{}/exponent", cx.at.name));
            let y = cx.im.g.add_const(name, c);
            return one(cx.add(Op::Binary(BinaryOp::Pow), vec![Some(x), Some(y)], None)?);
        }
    }
    let wide = if xt.dtype.is_float() || yt.dtype.is_float() { DType::F64 } else { DType::I64 };
    let widen = |cx: &mut Cx, v: Value, dtype: DType, tag: &str| {
        if dtype == wide {
            Ok(v)
        } else {
            cx.add_helper(tag, Op::Cast { to: wide }, vec![Some(v)])
        }
    };
    let xw = widen(cx, x, xt.dtype, "base")?;
    let yw = widen(cx, y, yt.dtype, "exponent")?;
    let p = cx.add_helper("pow", Op::Binary(BinaryOp::Pow), vec![Some(xw), Some(yw)])?;
    one(cx.add(Op::Cast { to: xt.dtype }, vec![Some(p)], None)?)
}

/// `t` cast to `to` when the cast back gives `t` again (every value held exactly); `None`
/// otherwise.
fn exact_cast(t: &Tensor, to: DType) -> Option<Tensor> {
    let cast = |t: &Tensor, to: DType| {
        let ty = TensorType::new(t.dtype(), Shape::fixed(t.shape()));
        qforge_ir::interp::eval_op(&Op::Cast { to }, &[Some(&ty)], &[], &[Some(t)]).ok()?.pop()
    };
    let c = cast(t, to)?;
    (cast(&c, t.dtype())? == *t).then_some(c)
}

/// Mod: `fmod=0` takes the divisor's sign (Python's `%`; integers only before version 28),
/// `fmod=1` is C's fmod with the dividend's sign. Mod-28 defines `fmod=0` for floats too,
/// `A - floor(A / B) * B`; that is numpy's `mod`, computed as it does: `r = fmod(A, B)`, plus `B`
/// where `r` is non-zero and its sign differs from `B`'s (which also gives the spec's special
/// cases: NaN for an infinite `A` or a zero `B`, and `B` itself for an infinite `B` of the other
/// sign than a finite `A`).
fn modulo(cx: &mut Cx) -> R<Outs> {
    let fmod = cx.attrs().bool_or("fmod", false)?;
    if fmod {
        return binary(cx, BinaryOp::Fmod);
    }
    let (a, b) = (cx.input(0)?, cx.input(1)?);
    let dtype = cx.ty(a).dtype;
    if cx.version < 28 || !dtype.is_float() {
        return binary(cx, BinaryOp::Mod);
    }
    let bin = |cx: &mut Cx, tag: &str, op: BinaryOp, x: Value, y: Value| {
        cx.add_helper(tag, Op::Binary(op), vec![Some(x), Some(y)])
    };
    let r = bin(cx, "fmod", BinaryOp::Fmod, a, b)?;
    let name = cx.im.fresh_name(&format!("{}/zero", cx.at.name));
    let zero = cx.im.g.add_const(name, Tensor::from_f64_iter(dtype, vec![], [0.0].into_iter()));
    let r_neg = bin(cx, "r_neg", BinaryOp::Less, r, zero)?;
    let r_pos = bin(cx, "r_pos", BinaryOp::Greater, r, zero)?;
    let b_neg = bin(cx, "b_neg", BinaryOp::Less, b, zero)?;
    let b_pos = bin(cx, "b_pos", BinaryOp::Greater, b, zero)?;
    let neg_pos = bin(cx, "neg_pos", BinaryOp::And, r_neg, b_pos)?;
    let pos_neg = bin(cx, "pos_neg", BinaryOp::And, r_pos, b_neg)?;
    let differ = bin(cx, "signs_differ", BinaryOp::Or, neg_pos, pos_neg)?;
    let shifted = bin(cx, "shifted", BinaryOp::Add, r, b)?;
    one(cx.add(Op::Where, vec![Some(differ), Some(shifted), Some(r)], None)?)
}

/// Sum, Max, Min: a chain of binary ops, the last one named after the node.
fn variadic(cx: &mut Cx, b: BinaryOp) -> R<Outs> {
    let n = cx.node.input.len();
    if n == 0 {
        return Err(cx.err("needs at least one input"));
    }
    let mut acc = cx.input(0)?;
    for i in 1..n {
        let next = cx.input(i)?;
        acc = if i + 1 == n {
            cx.add(Op::Binary(b), vec![Some(acc), Some(next)], None)?
        } else {
            cx.add_helper(&i.to_string(), Op::Binary(b), vec![Some(acc), Some(next)])?
        };
    }
    one(acc)
}

fn gemm(cx: &mut Cx) -> R<Outs> {
    let a = cx.attrs();
    let op = Op::Gemm {
        alpha: a.float_or("alpha", 1.0)?,
        beta: a.float_or("beta", 1.0)?,
        trans_a: a.bool_or("transA", false)?,
        trans_b: a.bool_or("transB", false)?,
    };
    let ins = cx.inputs_upto(2, 3)?;
    one(cx.add(op, ins, None)?)
}

#[derive(Clone, Copy)]
enum Reduce {
    Mean,
    Sum,
    Max,
    Prod,
}

/// The axes and `keepdims` of a reduction, or `None` for a reduction that changes nothing (an
/// empty axes input with `noop_with_empty_axes`). Axes moved from an attribute to an optional
/// input in version 13 (ReduceSum) or 18 (the other reductions, `axes_input`); an absent or
/// empty axes input reduces every axis, or nothing with `noop_with_empty_axes` (the same
/// versions). The axes input may be computed, from constants or input shapes (the importer folds
/// it), not from tensor data.
fn reduce_axes(cx: &Cx, axes_input: bool) -> R<Option<(Vec<i64>, bool)>> {
    let a = cx.attrs();
    let keepdims = a.bool_or("keepdims", true)?;
    let axes = if axes_input {
        let axes = cx.opt_ints_input(1, "axes")?.unwrap_or_default();
        if axes.is_empty() && a.bool_or("noop_with_empty_axes", false)? {
            return Ok(None);
        }
        axes
    } else {
        a.ints("axes")?.unwrap_or_default()
    };
    Ok(Some((axes, keepdims)))
}

/// ReduceMean, ReduceSum, ReduceMax, ReduceProd (see [`reduce_axes`]).
fn reduce(cx: &mut Cx, kind: Reduce) -> R<Outs> {
    let axes_input = match kind {
        Reduce::Sum => cx.version >= 13,
        Reduce::Mean | Reduce::Max | Reduce::Prod => cx.version >= 18,
    };
    let x = cx.input(0)?;
    let Some((axes, keepdims)) = reduce_axes(cx, axes_input)? else { return one(x) };
    let op = match kind {
        Reduce::Mean => Op::ReduceMean { axes, keepdims },
        Reduce::Sum => Op::ReduceSum { axes, keepdims },
        Reduce::Max => Op::ReduceMax { axes, keepdims },
        Reduce::Prod => Op::ReduceProd { axes, keepdims },
    };
    one(cx.add(op, vec![Some(x)], None)?)
}

/// ReduceMin as a ReduceMax between two order-reversing maps that are exact: `-x` for floats, and
/// for integers `k - x` with `k = -1` for signed types (that is `!x` in two's complement, which
/// never overflows) and the type's maximum for unsigned ones. An empty reduction gives the
/// mirror of ReduceMax's identity: +inf, or the type's maximum. Bool inputs are refused.
fn reduce_min(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    let xt = cx.ty(x);
    let Some((axes, keepdims)) = reduce_axes(cx, cx.version >= 18)? else { return one(x) };
    if xt.quant.is_some() || xt.dtype == DType::Bool {
        return Err(cx.err(format!("ReduceMin of {xt} is not supported (numeric types)")));
    }
    if xt.dtype.is_float() {
        let n = cx.add_helper("negated", Op::Unary(UnaryOp::Neg), vec![Some(x)])?;
        let m = cx.add_helper("max", Op::ReduceMax { axes, keepdims }, vec![Some(n)])?;
        return one(cx.add(Op::Unary(UnaryOp::Neg), vec![Some(m)], None)?);
    }
    let k = match xt.dtype.int_range() {
        Some((lo, _)) if lo < 0 => -1,
        Some((_, hi)) if hi < i64::MAX => hi,
        _ => return Err(cx.err(format!("ReduceMin of {xt} is not supported"))),
    };
    let name = cx.im.fresh_name(&format!("{}/mirror", cx.at.name));
    let kv = cx.im.g.add_const(name, Tensor::from_i64_wrapping(xt.dtype, vec![], &[k]));
    let n = cx.add_helper("mirrored", Op::Binary(BinaryOp::Sub), vec![Some(kv), Some(x)])?;
    let m = cx.add_helper("max", Op::ReduceMax { axes, keepdims }, vec![Some(n)])?;
    one(cx.add(Op::Binary(BinaryOp::Sub), vec![Some(kv), Some(m)], None)?)
}

/// ReduceLogSumExp in the stable form of the ONNX reference (`op_reduce_log_sum_exp.py`):
/// `log(sum(exp(x - m))) + m` with `m` the maximum over the axes, taken as 0 where it is infinite
/// (an all -inf slice gives -inf, a +inf element +inf, as the plain formula does).
fn reduce_log_sum_exp(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    let xt = cx.ty(x);
    if !xt.dtype.is_float() || xt.quant.is_some() {
        return Err(cx.err(format!("ReduceLogSumExp of {xt} is not supported (float types)")));
    }
    let Some((axes, keepdims)) = reduce_axes(cx, cx.version >= 18)? else { return one(x) };
    let k = |cx: &mut Cx, tag: &str, v: f64| {
        let name = cx.im.fresh_name(&format!("{}/{tag}", cx.at.name));
        cx.im.g.add_const(name, Tensor::from_f64_iter(xt.dtype, vec![], [v].into_iter()))
    };
    let bin = |cx: &mut Cx, tag: &str, op: BinaryOp, a: Value, b: Value| {
        cx.add_helper(tag, Op::Binary(op), vec![Some(a), Some(b)])
    };
    let mx = cx.add_helper("max", Op::ReduceMax { axes: axes.clone(), keepdims: true }, vec![Some(x)])?;
    let (inf, zero) = (k(cx, "inf", f64::INFINITY), k(cx, "zero", 0.0));
    let amx = cx.add_helper("abs_max", Op::Unary(UnaryOp::Abs), vec![Some(mx)])?;
    let infinite = bin(cx, "max_infinite", BinaryOp::Equal, amx, inf)?;
    let m = cx.add_helper("shift", Op::Where, vec![Some(infinite), Some(zero), Some(mx)])?;
    let d = bin(cx, "shifted", BinaryOp::Sub, x, m)?;
    let e = cx.add_helper("exp", Op::Unary(UnaryOp::Exp), vec![Some(d)])?;
    let s = cx.add_helper("sum", Op::ReduceSum { axes: axes.clone(), keepdims: true }, vec![Some(e)])?;
    let l = cx.add_helper("log", Op::Unary(UnaryOp::Log), vec![Some(s)])?;
    if keepdims {
        return one(cx.add(Op::Binary(BinaryOp::Add), vec![Some(l), Some(m)], None)?);
    }
    let r = bin(cx, "kept", BinaryOp::Add, l, m)?;
    // Drop the reduced axes (every axis when none are given).
    let rank = xt.rank() as i64;
    let axes = if axes.is_empty() { (0..rank).collect() } else { axes };
    one(cx.add(Op::Squeeze { axes }, vec![Some(r)], None)?)
}

/// The element-wise step before the sum of a composite reduction.
#[derive(Clone, Copy)]
enum Pre {
    None,
    Abs,
    Square,
}

/// The reductions that are a sum between element-wise steps, as the ONNX reference computes
/// them: ReduceL1 `sum(|x|)`, ReduceL2 `sqrt(sum(x * x))`, ReduceSumSquare `sum(x * x)`,
/// ReduceLogSum `log(sum(x))` (the log of an empty sum is -inf). Axes as [`reduce_axes`] says
/// (inputs from version 18); with `noop_with_empty_axes` and no axes the steps apply element-wise
/// with no sum, as in the reference.
fn reduce_composite(cx: &mut Cx, pre: Pre, post: Option<UnaryOp>) -> R<Outs> {
    let x = cx.input(0)?;
    let axes = reduce_axes(cx, cx.version >= 18)?;
    let mut v = match pre {
        Pre::None => x,
        Pre::Abs => cx.add_helper("abs", Op::Unary(UnaryOp::Abs), vec![Some(x)])?,
        Pre::Square => cx.add_helper("square", Op::Binary(BinaryOp::Mul), vec![Some(x), Some(x)])?,
    };
    if let Some((axes, keepdims)) = axes {
        let op = Op::ReduceSum { axes, keepdims };
        v = if post.is_some() { cx.add_helper("sum", op, vec![Some(v)])? } else { cx.add(op, vec![Some(v)], None)? };
    }
    match post {
        Some(u) => one(cx.add(Op::Unary(u), vec![Some(v)], None)?),
        None => one(v),
    }
}

/// ArgMax and ArgMin: `axis` (default 0), `keepdims` (default 1), `select_last_index` (from
/// version 12; default 0).
fn arg_extreme(cx: &mut Cx, max: bool) -> R<Outs> {
    let a = cx.attrs();
    let (axis, keepdims) = (a.int_or("axis", 0)?, a.bool_or("keepdims", true)?);
    let select_last = cx.version >= 12 && a.bool_or("select_last_index", false)?;
    let op = if max { Op::ArgMax { axis, keepdims, select_last } } else { Op::ArgMin { axis, keepdims, select_last } };
    cx.simple(op, 1)
}

/// Sign: the IR's `sign` on floats; on integers `(x > 0) - (x < 0)`, each comparison cast to the
/// input's type.
fn sign(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    let xt = cx.ty(x);
    if xt.dtype.is_float() || xt.quant.is_some() {
        return cx.unary(UnaryOp::Sign);
    }
    let name = cx.im.fresh_name(&format!("{}/zero", cx.at.name));
    let zero = cx.im.g.add_const(name, Tensor::from_i64_wrapping(xt.dtype, vec![], &[0]));
    let pos = cx.add_helper("positive", Op::Binary(BinaryOp::Greater), vec![Some(x), Some(zero)])?;
    let neg = cx.add_helper("negative", Op::Binary(BinaryOp::Less), vec![Some(x), Some(zero)])?;
    let pos = cx.add_helper("positive_int", Op::Cast { to: xt.dtype }, vec![Some(pos)])?;
    let neg = cx.add_helper("negative_int", Op::Cast { to: xt.dtype }, vec![Some(neg)])?;
    one(cx.add(Op::Binary(BinaryOp::Sub), vec![Some(pos), Some(neg)], None)?)
}

/// TopK: `k` an attribute (version 1) or a constant input (10 on); `axis` (default -1);
/// `largest` (default 1) and `sorted` from version 11. The IR always returns the elements in
/// sorted order, as the ONNX reference does; with `sorted=0` ONNX leaves the order unspecified,
/// so that order is one of the allowed ones.
fn top_k(cx: &mut Cx) -> R<Outs> {
    let a = cx.attrs();
    let axis = a.int_or("axis", -1)?;
    let largest = cx.version < 11 || a.bool_or("largest", true)?;
    let k = if cx.version < 10 {
        a.int("k")?.ok_or_else(|| cx.err("attribute `k` is required"))?
    } else {
        match cx.ints_input(1, "K")?.as_slice() {
            [k] => *k,
            v => return Err(cx.err(format!("input 1 (K) must hold one value, got {} values", v.len()))),
        }
    };
    let k = usize::try_from(k)
        .ok()
        .filter(|&k| k <= super::MAX_ATTR_DIM)
        .ok_or_else(|| cx.err(format!("k = {k} is out of range")))?;
    let x = cx.input(0)?;
    let outs = cx.add_multi(Op::TopK { axis, k, largest }, vec![Some(x)])?;
    Ok(outs.into_iter().map(Some).collect())
}

/// CumSum and CumProd: the axis a constant scalar input; `exclusive` and `reverse` (default 0).
fn cumulative(cx: &mut Cx, product: bool) -> R<Outs> {
    let a = cx.attrs();
    let (exclusive, reverse) = (a.bool_or("exclusive", false)?, a.bool_or("reverse", false)?);
    let axis = match cx.ints_input(1, "axis")?.as_slice() {
        [v] => *v,
        v => return Err(cx.err(format!("input 1 (axis) must hold one value, got {} values", v.len()))),
    };
    let x = cx.input(0)?;
    let op = if product { Op::CumProd { axis, exclusive, reverse } } else { Op::CumSum { axis, exclusive, reverse } };
    one(cx.add(op, vec![Some(x)], None)?)
}

/// One operand's subscripts, an ellipsis expanded to labels of its own (`ELLIPSIS + k` for the
/// k-th ellipsis dim counted from the right, so that ellipsis dims broadcast as numpy aligns
/// them), and the number of ellipsis dims.
fn einsum_labels(term: &str, rank: usize) -> Result<(Vec<u32>, usize), String> {
    const ELLIPSIS: u32 = 1 << 16;
    let (head, tail, dots) = match term.split_once("...") {
        Some((h, t)) => (h, t, true),
        None => (term, "", false),
    };
    let letter =
        |c: char| if c.is_ascii_alphabetic() { Ok(c as u32) } else { Err(format!("`{c}` is not a subscript letter")) };
    let head: Vec<u32> = head.chars().map(letter).collect::<Result<_, _>>()?;
    let tail: Vec<u32> = tail.chars().map(letter).collect::<Result<_, _>>()?;
    let letters = head.len() + tail.len();
    let extra = match rank.checked_sub(letters) {
        Some(e) if dots || e == 0 => e,
        _ => return Err(format!("`{term}` has {letters} subscripts for an operand of rank {rank}")),
    };
    let mut v = head;
    v.extend((0..extra).rev().map(|k| ELLIPSIS + k as u32));
    v.extend(tail);
    Ok((v, extra))
}

/// Einsum, built from existing ops. Every operand is transposed to the order of the output's
/// labels followed by the summed ones and unsqueezed where it lacks a label, the operands are
/// multiplied with broadcasting and the summed labels reduced (`ReduceSum`); a two-operand
/// contraction over one label with one free label on each side (the batched matrix products
/// transformers emit: `bij,bjk->bik`, `bhqd,bhkd->bhqk`) is a `MatMul` between transposes
/// instead. Implicit output (no `->`): the labels that occur once, in alphabetical order, after
/// the ellipsis dims. A label repeated within one operand (a diagonal) is refused.
fn einsum(cx: &mut Cx) -> R<Outs> {
    const ELLIPSIS: u32 = 1 << 16;
    let eq: String = cx.attrs().string("equation")?.ok_or_else(|| cx.err("attribute `equation` is required"))?;
    let eq: String = eq.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l.to_string(), Some(r.to_string())),
        None => (eq.clone(), None),
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    let n = cx.node.input.len();
    if terms.len() != n {
        return Err(cx.err(format!("equation `{eq}` has {} operands, the node {n} inputs", terms.len())));
    }
    let mut vals = vec![];
    let mut labels: Vec<Vec<u32>> = vec![];
    let mut ell = 0usize;
    for (i, t) in terms.iter().enumerate() {
        let v = cx.input(i)?;
        let (l, e) = einsum_labels(t, cx.ty(v).rank()).map_err(|m| cx.err(format!("equation `{eq}`: {m}")))?;
        let mut seen = l.clone();
        seen.sort_unstable();
        if seen.windows(2).any(|w| w[0] == w[1]) {
            return Err(cx.err(format!(
                "equation `{eq}`: a subscript repeated within one operand (a diagonal) is not supported"
            )));
        }
        ell = ell.max(e);
        vals.push(v);
        labels.push(l);
    }
    let count = |x: u32| labels.iter().flatten().filter(|&&y| y == x).count();
    let out: Vec<u32> = match &rhs {
        Some(r) => {
            einsum_labels(r, r.replace("...", "").chars().count() + ell)
                .map_err(|m| cx.err(format!("equation `{eq}`: {m}")))?
                .0
        }
        None => {
            let mut once: Vec<u32> =
                labels.iter().flatten().copied().filter(|&x| x < ELLIPSIS && count(x) == 1).collect();
            once.sort_unstable();
            once.dedup();
            let mut o: Vec<u32> = (0..ell).rev().map(|k| ELLIPSIS + k as u32).collect();
            o.extend(once);
            o
        }
    };
    for (i, &x) in out.iter().enumerate() {
        if count(x) == 0 || out[..i].contains(&x) {
            return Err(cx.err(format!("equation `{eq}`: an output subscript is repeated or not in any operand")));
        }
    }
    let mut all = out.clone();
    for &x in labels.iter().flatten() {
        if !all.contains(&x) {
            all.push(x);
        }
    }
    let summed: Vec<i64> = (out.len()..all.len()).map(|a| a as i64).collect();
    if let Some(v) = einsum_matmul(cx, &vals, &labels, &out)? {
        return one(v);
    }
    // Each operand: its labels in the order of `all`, then size-1 axes for the labels it lacks.
    let mut acc: Option<Value> = None;
    for (i, (&v, l)) in vals.iter().zip(&labels).enumerate() {
        let order: Vec<u32> = all.iter().copied().filter(|x| l.contains(x)).collect();
        let perm: Vec<usize> = order.iter().map(|x| l.iter().position(|y| y == x).unwrap_or(0)).collect();
        let mut v = v;
        if perm.iter().enumerate().any(|(k, &p)| k != p) {
            v = cx.add_helper(&format!("transpose{i}"), Op::Transpose { perm }, vec![Some(v)])?;
        }
        let missing: Vec<i64> = (0..all.len()).filter(|&a| !l.contains(&all[a])).map(|a| a as i64).collect();
        if !missing.is_empty() {
            v = cx.add_helper(&format!("unsqueeze{i}"), Op::Unsqueeze { axes: missing }, vec![Some(v)])?;
        }
        acc = Some(match acc {
            None => v,
            Some(a) => cx.add_helper(&format!("mul{i}"), Op::Binary(BinaryOp::Mul), vec![Some(a), Some(v)])?,
        });
    }
    let acc = acc.ok_or_else(|| cx.err("Einsum needs at least one input"))?;
    if summed.is_empty() {
        return one(cx.add(Op::Identity, vec![Some(acc)], None)?);
    }
    one(cx.add(Op::ReduceSum { axes: summed, keepdims: false }, vec![Some(acc)], None)?)
}

/// The `MatMul` form of a two-operand float einsum with batch labels (in both operands and the
/// output), one label summed (in both, not in the output) and one free label per operand (in it
/// and the output only): `None` when the equation has another shape.
fn einsum_matmul(cx: &mut Cx, vals: &[Value], labels: &[Vec<u32>], out: &[u32]) -> R<Option<Value>> {
    let ([a, b], [la, lb]) = (vals, labels) else { return Ok(None) };
    if !cx.ty(*a).dtype.is_float() || cx.ty(*a).dtype != cx.ty(*b).dtype {
        return Ok(None);
    }
    let (in_a, in_b, in_o) = (|x: &u32| la.contains(x), |x: &u32| lb.contains(x), |x: &u32| out.contains(x));
    let batch: Vec<u32> = out.iter().copied().filter(|x| in_a(x) && in_b(x)).collect();
    let free_a: Vec<u32> = la.iter().copied().filter(|x| !in_b(x) && in_o(x)).collect();
    let free_b: Vec<u32> = lb.iter().copied().filter(|x| !in_a(x) && in_o(x)).collect();
    let sum: Vec<u32> = la.iter().copied().filter(|x| in_b(x) && !in_o(x)).collect();
    if free_a.len() != 1 || free_b.len() != 1 || sum.len() != 1 || batch.len() + 2 != la.len() || la.len() != lb.len() {
        return Ok(None);
    }
    // Batch dims must agree exactly (no broadcasting between them): MatMul would broadcast them,
    // which einsum also does, but a size-1 batch dim against a larger one is rare; keep it simple.
    let dims = |v: Value, l: &[u32], x: u32| l.iter().position(|&y| y == x).map(|p| cx.ty(v).shape.0[p].clone());
    if batch.iter().any(|&x| dims(*a, la, x) != dims(*b, lb, x)) {
        return Ok(None);
    }
    let to = |l: &[u32], order: &[u32]| -> Vec<usize> {
        order.iter().map(|x| l.iter().position(|y| y == x).unwrap_or(0)).collect()
    };
    let mut oa = batch.clone();
    oa.extend([free_a[0], sum[0]]);
    let mut ob = batch.clone();
    ob.extend([sum[0], free_b[0]]);
    let moved = |perm: &[usize]| perm.iter().enumerate().any(|(k, &p)| k != p);
    let (pa, pb) = (to(la, &oa), to(lb, &ob));
    let ta = if moved(&pa) { cx.add_helper("transpose_a", Op::Transpose { perm: pa }, vec![Some(*a)])? } else { *a };
    let tb = if moved(&pb) { cx.add_helper("transpose_b", Op::Transpose { perm: pb }, vec![Some(*b)])? } else { *b };
    let mut om = batch;
    om.extend([free_a[0], free_b[0]]);
    let perm = to(&om, out);
    if !moved(&perm) {
        return cx.add(Op::MatMul, vec![Some(ta), Some(tb)], None).map(Some);
    }
    let m = cx.add_helper("matmul", Op::MatMul, vec![Some(ta), Some(tb)])?;
    cx.add(Op::Transpose { perm }, vec![Some(m)], None).map(Some)
}
