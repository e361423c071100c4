//! Comparisons, boolean ops and Where (semantics: the ONNX operator spec,
//! <https://onnx.ai/onnx/operators/>): comparisons produce bool tensors under ONNX's
//! multidirectional broadcasting.

use super::math::binary;
use super::OpDef;
use qforge_ir::{BinaryOp, Op, UnaryOp};

pub(super) const OPS: &[OpDef] = &[
    OpDef::onnx("Equal", |cx| binary(cx, BinaryOp::Equal)),
    OpDef::onnx("Less", |cx| binary(cx, BinaryOp::Less)),
    OpDef::onnx("LessOrEqual", |cx| binary(cx, BinaryOp::LessOrEqual)),
    OpDef::onnx("Greater", |cx| binary(cx, BinaryOp::Greater)),
    OpDef::onnx("GreaterOrEqual", |cx| binary(cx, BinaryOp::GreaterOrEqual)),
    OpDef::onnx("And", |cx| binary(cx, BinaryOp::And)),
    OpDef::onnx("Or", |cx| binary(cx, BinaryOp::Or)),
    OpDef::onnx("Not", |cx| cx.unary(UnaryOp::Not)),
    OpDef::onnx("Where", |cx| cx.simple(Op::Where, 3)),
];
