//! Arithmetic: element-wise unary math and binary ops (with ONNX's multidirectional
//! broadcasting), the variadic Sum/Max/Min/Mean, MatMul and Gemm, and reductions, including the
//! ones that are a sum between element-wise steps (ReduceL1, ReduceL2, ReduceSumSquare,
//! ReduceLogSum) (semantics: the ONNX operator spec, <https://onnx.ai/onnx/operators/>).

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

/// ReduceMean, ReduceSum, ReduceMax (see [`reduce_axes`]).
fn reduce(cx: &mut Cx, kind: Reduce) -> R<Outs> {
    let axes_input = match kind {
        Reduce::Sum => cx.version >= 13,
        Reduce::Mean | Reduce::Max => cx.version >= 18,
    };
    let x = cx.input(0)?;
    let Some((axes, keepdims)) = reduce_axes(cx, axes_input)? else { return one(x) };
    let op = match kind {
        Reduce::Mean => Op::ReduceMean { axes, keepdims },
        Reduce::Sum => Op::ReduceSum { axes, keepdims },
        Reduce::Max => Op::ReduceMax { axes, keepdims },
    };
    one(cx.add(op, vec![Some(x)], None)?)
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
