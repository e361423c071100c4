//! Arithmetic: element-wise unary math and binary ops (with ONNX's multidirectional
//! broadcasting), the variadic Sum/Max/Min, MatMul and Gemm, and reductions (semantics: the ONNX
//! operator spec, <https://onnx.ai/onnx/operators/>).

use super::{one, Cx, OpDef, Outs, R};
use qforge_ir::{BinaryOp, Op, Tensor, UnaryOp, Value};

pub(super) const OPS: &[OpDef] = &[
    OpDef::onnx("Erf", &[9, 13], |cx| cx.unary(UnaryOp::Erf)),
    OpDef::onnx("Exp", &[1, 6, 13], |cx| cx.unary(UnaryOp::Exp)),
    OpDef::onnx("Log", &[1, 6, 13], |cx| cx.unary(UnaryOp::Log)),
    OpDef::onnx("Sqrt", &[1, 6, 13], |cx| cx.unary(UnaryOp::Sqrt)),
    OpDef::onnx("Neg", &[1, 6, 13], |cx| cx.unary(UnaryOp::Neg)),
    OpDef::onnx("Abs", &[1, 6, 13], |cx| cx.unary(UnaryOp::Abs)),
    OpDef::onnx("Reciprocal", &[1, 6, 13], |cx| cx.unary(UnaryOp::Reciprocal)),
    OpDef::onnx("Floor", &[1, 6, 13], |cx| cx.unary(UnaryOp::Floor)),
    OpDef::onnx("Ceil", &[1, 6, 13], |cx| cx.unary(UnaryOp::Ceil)),
    OpDef::onnx("Add", &[1, 6, 7, 13, 14], |cx| binary(cx, BinaryOp::Add)),
    OpDef::onnx("Sub", &[1, 6, 7, 13, 14], |cx| binary(cx, BinaryOp::Sub)),
    OpDef::onnx("Mul", &[1, 6, 7, 13, 14], |cx| binary(cx, BinaryOp::Mul)),
    OpDef::onnx("Div", &[1, 6, 7, 13, 14], |cx| binary(cx, BinaryOp::Div)),
    OpDef::onnx("Pow", &[1, 7, 12, 13, 15], |cx| binary(cx, BinaryOp::Pow)),
    OpDef::onnx("Mod", &[10, 13, 28], modulo),
    OpDef::onnx("Sum", &[1, 6, 8, 13], |cx| variadic(cx, BinaryOp::Add)),
    OpDef::onnx("Max", &[1, 6, 8, 12, 13], |cx| variadic(cx, BinaryOp::Max)),
    OpDef::onnx("Min", &[1, 6, 8, 12, 13], |cx| variadic(cx, BinaryOp::Min)),
    OpDef::onnx("MatMul", &[1, 9, 13], |cx| cx.simple(Op::MatMul, 2)),
    OpDef::onnx("Gemm", &[1, 6, 7, 9, 11, 13], gemm),
    OpDef::onnx("ReduceMean", &[1, 11, 13, 18], |cx| reduce(cx, Reduce::Mean)),
    OpDef::onnx("ReduceSum", &[1, 11, 13], |cx| reduce(cx, Reduce::Sum)),
    OpDef::onnx("ReduceMax", &[1, 11, 12, 13, 18, 20], |cx| reduce(cx, Reduce::Max)),
];

/// A two-input element-wise op (arithmetic here, comparisons and boolean ops in
/// [`super::logic`]).
pub(super) fn binary(cx: &mut Cx, b: BinaryOp) -> R<Outs> {
    let (x, mut y) = (cx.input(0)?, cx.input(1)?);
    // `x ** 2` is often exported with an exponent of another dtype: convert a constant one.
    if b == BinaryOp::Pow {
        let (xt, yt) = (cx.ty(x), cx.ty(y));
        if xt.dtype != yt.dtype && xt.dtype.is_float() && yt.quant.is_none() {
            if let Some(t) = cx.im.const_of(y) {
                let c = Tensor::from_f64_iter(xt.dtype, t.shape().to_vec(), t.to_f64_vec().into_iter());
                let name = cx.im.fresh_name(&format!("{}/exponent", cx.at.name));
                y = cx.im.g.add_const(name, c);
            }
        }
    }
    one(cx.add(Op::Binary(b), vec![Some(x), Some(y)], None)?)
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

/// ReduceMean, ReduceSum, ReduceMax. Their axes moved from an attribute to an optional input in
/// version 13 (ReduceSum) and 18 (the others); an absent or empty axes input reduces every
/// axis, or nothing with `noop_with_empty_axes` (the same versions). The axes input may be
/// computed, from constants or input shapes (the importer folds it), not from tensor data.
fn reduce(cx: &mut Cx, kind: Reduce) -> R<Outs> {
    let axes_input = match kind {
        Reduce::Sum => cx.version >= 13,
        Reduce::Mean | Reduce::Max => cx.version >= 18,
    };
    let a = cx.attrs();
    let keepdims = a.bool_or("keepdims", true)?;
    let x = cx.input(0)?;
    let axes = if axes_input {
        let axes = cx.opt_ints_input(1, "axes")?.unwrap_or_default();
        if axes.is_empty() && a.bool_or("noop_with_empty_axes", false)? {
            return one(x);
        }
        axes
    } else {
        a.ints("axes")?.unwrap_or_default()
    };
    let op = match kind {
        Reduce::Mean => Op::ReduceMean { axes, keepdims },
        Reduce::Sum => Op::ReduceSum { axes, keepdims },
        Reduce::Max => Op::ReduceMax { axes, keepdims },
    };
    one(cx.add(op, vec![Some(x)], None)?)
}
