//! Arithmetic: element-wise unary math and binary ops (with ONNX's multidirectional
//! broadcasting), the variadic Sum/Max/Min, MatMul and Gemm, and reductions (semantics: the ONNX
//! operator spec, <https://onnx.ai/onnx/operators/>).

use super::{one, Cx, OpDef, Outs, R};
use qforge_ir::{BinaryOp, Op, Tensor, UnaryOp};

pub(super) const OPS: &[OpDef] = &[
    OpDef::onnx("Erf", |cx| cx.unary(UnaryOp::Erf)),
    OpDef::onnx("Exp", |cx| cx.unary(UnaryOp::Exp)),
    OpDef::onnx("Log", |cx| cx.unary(UnaryOp::Log)),
    OpDef::onnx("Sqrt", |cx| cx.unary(UnaryOp::Sqrt)),
    OpDef::onnx("Neg", |cx| cx.unary(UnaryOp::Neg)),
    OpDef::onnx("Abs", |cx| cx.unary(UnaryOp::Abs)),
    OpDef::onnx("Reciprocal", |cx| cx.unary(UnaryOp::Reciprocal)),
    OpDef::onnx("Floor", |cx| cx.unary(UnaryOp::Floor)),
    OpDef::onnx("Ceil", |cx| cx.unary(UnaryOp::Ceil)),
    OpDef::onnx("Add", |cx| binary(cx, BinaryOp::Add)),
    OpDef::onnx("Sub", |cx| binary(cx, BinaryOp::Sub)),
    OpDef::onnx("Mul", |cx| binary(cx, BinaryOp::Mul)),
    OpDef::onnx("Div", |cx| binary(cx, BinaryOp::Div)),
    OpDef::onnx("Pow", |cx| binary(cx, BinaryOp::Pow)),
    OpDef::onnx("Mod", modulo),
    OpDef::onnx("Sum", |cx| variadic(cx, BinaryOp::Add)),
    OpDef::onnx("Max", |cx| variadic(cx, BinaryOp::Max)),
    OpDef::onnx("Min", |cx| variadic(cx, BinaryOp::Min)),
    OpDef::onnx("MatMul", |cx| cx.simple(Op::MatMul, 2)),
    OpDef::onnx("Gemm", gemm),
    OpDef::onnx("ReduceMean", |cx| reduce(cx, Reduce::Mean)),
    OpDef::onnx("ReduceSum", |cx| reduce(cx, Reduce::Sum)),
    OpDef::onnx("ReduceMax", |cx| reduce(cx, Reduce::Max)),
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

/// Mod: integer modulo with the divisor's sign (`fmod=0`) or C's fmod with the dividend's sign
/// (`fmod=1`).
fn modulo(cx: &mut Cx) -> R<Outs> {
    let fmod = cx.attrs().int_or("fmod", 0)? != 0;
    binary(cx, if fmod { BinaryOp::Fmod } else { BinaryOp::Mod })
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
/// opset 13 (ReduceSum) and 18 (the others); an empty axes input reduces every axis, or nothing
/// with `noop_with_empty_axes`.
fn reduce(cx: &mut Cx, kind: Reduce) -> R<Outs> {
    let opset = cx.at.opset;
    let axes_input = match kind {
        Reduce::Sum => opset >= 13,
        Reduce::Mean | Reduce::Max => opset >= 18,
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
