//! Comparisons, boolean ops, Where, the float tests IsNaN and IsInf, and the bitwise ops and
//! shifts on integers (semantics: the ONNX
//! operator spec, <https://onnx.ai/onnx/operators/>): comparisons produce bool tensors under
//! ONNX's multidirectional broadcasting.

use super::math::binary;
use super::{one, Cx, OpDef, Outs, R};
use qforge_ir::{BinaryOp, Op, Tensor, UnaryOp, Value};

pub(super) const OPS: &[OpDef] = &[
    OpDef::onnx("Equal", &[1, 7, 11, 13, 19], |cx| binary(cx, BinaryOp::Equal)),
    OpDef::onnx("Less", &[1, 7, 9, 13], |cx| binary(cx, BinaryOp::Less)),
    OpDef::onnx("LessOrEqual", &[12, 16], |cx| binary(cx, BinaryOp::LessOrEqual)),
    OpDef::onnx("Greater", &[1, 7, 9, 13], |cx| binary(cx, BinaryOp::Greater)),
    OpDef::onnx("GreaterOrEqual", &[12, 16], |cx| binary(cx, BinaryOp::GreaterOrEqual)),
    OpDef::onnx("And", &[1, 7], |cx| binary(cx, BinaryOp::And)),
    OpDef::onnx("Or", &[1, 7], |cx| binary(cx, BinaryOp::Or)),
    OpDef::onnx("Not", &[1], |cx| cx.unary(UnaryOp::Not)),
    OpDef::onnx("Xor", &[1, 7], xor),
    OpDef::onnx("Where", &[9, 16], |cx| cx.simple(Op::Where, 3)),
    OpDef::onnx("IsNaN", &[9, 13, 20], is_nan),
    OpDef::onnx("IsInf", &[10, 20], is_inf),
    OpDef::onnx("BitwiseAnd", &[18], |cx| binary(cx, BinaryOp::BitAnd)),
    OpDef::onnx("BitwiseOr", &[18], |cx| binary(cx, BinaryOp::BitOr)),
    OpDef::onnx("BitwiseXor", &[18], |cx| binary(cx, BinaryOp::BitXor)),
    OpDef::onnx("BitwiseNot", &[18], bitwise_not),
    OpDef::onnx("BitShift", &[11, 28], bit_shift),
];

/// BitwiseNot: `x ^ !0` (every bit of the storage type set).
fn bitwise_not(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    let dtype = cx.ty(x).dtype;
    if !dtype.is_int() {
        return Err(cx.err(format!("BitwiseNot of {} is not supported (integer types)", cx.ty(x))));
    }
    let name = cx.im.fresh_name(&format!("{}/ones", cx.at.name));
    let ones = cx.im.g.add_const(name, Tensor::from_i64_wrapping(dtype, vec![], &[-1]));
    one(cx.add(Op::Binary(BinaryOp::BitXor), vec![Some(x), Some(ones)], None)?)
}

/// BitShift: `direction` LEFT or RIGHT (required). Version 11 defines unsigned types only;
/// version 28 adds signed ones (arithmetic right shift) and defines shifts outside the type's
/// width; the IR's shifts follow version 28, which agrees with 11 wherever 11 is defined.
fn bit_shift(cx: &mut Cx) -> R<Outs> {
    let op = match cx.attrs().string("direction")?.as_deref() {
        Some("LEFT") => BinaryOp::ShiftLeft,
        Some("RIGHT") => BinaryOp::ShiftRight,
        Some(d) => return Err(cx.err(format!("direction=\"{d}\" is not LEFT or RIGHT"))),
        None => return Err(cx.err("attribute `direction` is required")),
    };
    binary(cx, op)
}

/// IsNaN: `not (x == x)`, true exactly for NaN (versions 13 and 20 add types).
fn is_nan(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    if !cx.ty(x).dtype.is_float() {
        return Err(cx.err(format!("IsNaN of {} is not supported (float types)", cx.ty(x))));
    }
    let eq = cx.add_helper("equal", Op::Binary(BinaryOp::Equal), vec![Some(x), Some(x)])?;
    one(cx.add(Op::Unary(UnaryOp::Not), vec![Some(eq)], None)?)
}

/// IsInf: `x == +inf` (`detect_positive`, default 1) or `x == -inf` (`detect_negative`, default
/// 1); with neither, every element is false.
fn is_inf(cx: &mut Cx) -> R<Outs> {
    let a = cx.attrs();
    let (pos, negative) = (a.bool_or("detect_positive", true)?, a.bool_or("detect_negative", true)?);
    let x = cx.input(0)?;
    let dtype = cx.ty(x).dtype;
    if !dtype.is_float() {
        return Err(cx.err(format!("IsInf of {} is not supported (float types)", cx.ty(x))));
    }
    let mut tests = vec![];
    for (want, v, tag) in
        [(pos, f64::INFINITY, "pos"), (negative, f64::NEG_INFINITY, "neg"), (!pos && !negative, f64::NAN, "none")]
    {
        if want {
            let name = cx.im.fresh_name(&format!("{}/{tag}_inf", cx.at.name));
            let c = cx.im.g.add_const(name, Tensor::from_f64_iter(dtype, vec![], [v].into_iter()));
            tests.push(c);
        }
    }
    // Comparing with NaN (neither detected) is false everywhere.
    let mut acc: Option<Value> = None;
    let n = tests.len();
    for (i, c) in tests.into_iter().enumerate() {
        let eq = if n == 1 {
            cx.add(Op::Binary(BinaryOp::Equal), vec![Some(x), Some(c)], None)?
        } else {
            cx.add_helper(&format!("equal{i}"), Op::Binary(BinaryOp::Equal), vec![Some(x), Some(c)])?
        };
        acc = Some(match acc {
            None => eq,
            Some(p) => cx.add(Op::Binary(BinaryOp::Or), vec![Some(p), Some(eq)], None)?,
        });
    }
    acc.map(|v| vec![Some(v)]).ok_or_else(|| cx.err("internal: no comparison"))
}

/// Xor on bools: `where(a, not b, b)` (broadcast as the other logical ops).
fn xor(cx: &mut Cx) -> R<Outs> {
    let (a, b) = (cx.input(0)?, cx.input(1)?);
    let nb = cx.add_helper("not_b", Op::Unary(UnaryOp::Not), vec![Some(b)])?;
    one(cx.add(Op::Where, vec![Some(a), Some(nb), Some(b)], None)?)
}
