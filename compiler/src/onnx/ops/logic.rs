//! Comparisons, boolean ops and Where (semantics: the ONNX operator spec,
//! <https://onnx.ai/onnx/operators/>): comparisons produce bool tensors under ONNX's
//! multidirectional broadcasting.

use super::math::binary;
use super::OpDef;
use qforge_ir::{BinaryOp, Op, UnaryOp};

pub(super) const OPS: &[OpDef] = &[
    OpDef::onnx("Equal", &[1, 7, 11, 13, 19], |cx| binary(cx, BinaryOp::Equal)),
    OpDef::onnx("Less", &[1, 7, 9, 13], |cx| binary(cx, BinaryOp::Less)),
    OpDef::onnx("LessOrEqual", &[12, 16], |cx| binary(cx, BinaryOp::LessOrEqual)),
    OpDef::onnx("Greater", &[1, 7, 9, 13], |cx| binary(cx, BinaryOp::Greater)),
    OpDef::onnx("GreaterOrEqual", &[12, 16], |cx| binary(cx, BinaryOp::GreaterOrEqual)),
    OpDef::onnx("And", &[1, 7], |cx| binary(cx, BinaryOp::And)),
    OpDef::onnx("Or", &[1, 7], |cx| binary(cx, BinaryOp::Or)),
    OpDef::onnx("Not", &[1], |cx| cx.unary(UnaryOp::Not)),
    OpDef::onnx("Where", &[9, 16], |cx| cx.simple(Op::Where, 3)),
];
