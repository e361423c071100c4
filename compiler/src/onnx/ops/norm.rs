//! Normalizations along an axis: Softmax, LogSoftmax and LayerNormalization (semantics: the ONNX
//! operator spec, <https://onnx.ai/onnx/operators/>). BatchNormalization and LRN, which
//! normalize across channels, are with the other convolutional-network ops in [`super::nn`].

use super::{one, Cx, OpDef, Outs, R};
use qforge_ir::infer::norm_axis;
use qforge_ir::{Dim, Op};

pub(super) const OPS: &[OpDef] = &[
    OpDef::onnx("Softmax", |cx| softmax(cx, false)),
    OpDef::onnx("LogSoftmax", |cx| softmax(cx, true)),
    // LayerNormalization joined the default domain in opset 17.
    OpDef::onnx_since("LayerNormalization", 17, layer_norm),
];

/// Softmax and LogSoftmax. From opset 13 the op normalizes along one axis. Before, it
/// normalized the input coerced to 2-D at `axis` (`[d0*..*d(a-1), da*..*dn]`); that is one
/// axis when every dim after `axis` is 1, and otherwise Flatten -> softmax(1) -> Reshape.
fn softmax(cx: &mut Cx, log: bool) -> R<Outs> {
    let x = cx.input(0)?;
    let ty = cx.ty(x);
    let mk = |axis| if log { Op::LogSoftmax { axis } } else { Op::Softmax { axis } };
    let opset = cx.at.opset;
    let axis = cx.attrs().int_or("axis", if opset >= 13 { -1 } else { 1 })?;
    if opset >= 13 {
        return one(cx.add(mk(axis), vec![Some(x)], None)?);
    }
    let r = ty.rank();
    let a = norm_axis(axis, r).map_err(|m| cx.err(m))?;
    let dims = &ty.shape.0;
    if dims[a + 1..].iter().all(|d| *d == Dim::Fixed(1)) {
        return one(cx.add(mk(a as i64), vec![Some(x)], None)?);
    }
    // The original shape for the final Reshape: fixed dims, or a symbolic batch copied by 0
    // (the flattened dim 0 is d0 exactly when axis is 1).
    let target: Option<Vec<i64>> = dims
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            Dim::Fixed(n) => Some(*n as i64),
            Dim::Sym(_) if i == 0 && a == 1 => Some(0),
            Dim::Sym(_) => None,
        })
        .collect();
    let target = target.ok_or_else(|| {
        cx.err(format!(
            "opset {opset} {} over the 2-D coercion of {} at axis {axis} needs fixed dims (or only a \
             symbolic batch with axis 1)",
            cx.at.op, ty.shape
        ))
    })?;
    let f = cx.add_helper("flatten", Op::Flatten { axis: a as i64 }, vec![Some(x)])?;
    let s = cx.add_helper("softmax", mk(1), vec![Some(f)])?;
    one(cx.add(Op::Reshape { shape: target }, vec![Some(s)], None)?)
}

/// LayerNormalization; its optional Mean and InvStdDev outputs are not computed.
fn layer_norm(cx: &mut Cx) -> R<Outs> {
    let a = cx.attrs();
    let op = Op::LayerNorm { axis: a.int_or("axis", -1)?, epsilon: a.float_or("epsilon", 1e-5)? };
    let ins = cx.inputs_upto(2, 3)?;
    let v = cx.add(op, ins, None)?;
    Ok(vec![Some(v), None, None])
}
