//! Ops whose result size depends on the data: NonZero and NonMaxSuppression (detector
//! post-processing). Each becomes the IR op of the same name with a fresh count symbol for the
//! data-dependent dim ([`qforge_ir::Op::data_dependent`]), bound when the op runs; what follows
//! it sees the bound size. Semantics: the ONNX operator spec and `onnx.reference`.

use super::{one, Cx, OpDef, Outs, R};
use qforge_ir::Op;

pub(super) const OPS: &[OpDef] =
    &[OpDef::onnx("NonZero", &[9, 13], non_zero), OpDef::onnx("NonMaxSuppression", &[10, 11], non_max_suppression)];

/// A fresh name for the count symbol of this node's data-dependent dim: `count_` and the node's
/// name with every character that is not a letter, digit or `_` replaced by `_` (a dim symbol is
/// a name), unique among the importer's names.
fn count_symbol(cx: &mut Cx) -> String {
    let base: String =
        cx.at.name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    cx.im.fresh_name(&format!("count_{base}"))
}

fn non_zero(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    if cx.ty(x).quant.is_some() {
        return Err(cx.err(format!("NonZero of the quantized {} is not supported", cx.ty(x))));
    }
    let count = count_symbol(cx);
    one(cx.add(Op::NonZero { count }, vec![Some(x)], None)?)
}

/// NonMaxSuppression 10 and 11 (their schemas have the same documentation, inputs and attributes):
/// `center_point_box` 0 or 1; the optional inputs read when the op runs.
fn non_max_suppression(cx: &mut Cx) -> R<Outs> {
    let center = match cx.attrs().int("center_point_box")?.unwrap_or(0) {
        0 => false,
        1 => true,
        c => return Err(cx.err(format!("center_point_box must be 0 or 1, got {c}"))),
    };
    let ins = cx.inputs_upto(2, 5)?;
    let count = count_symbol(cx);
    one(cx.add(Op::NonMaxSuppression { center_point_box: center, count }, ins, None)?)
}
