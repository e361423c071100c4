//! Fake quantization: the gradient of [`Op::FakeQuantize`] is one fused
//! [`Op::FakeQuantizeGrad`] node: `dx = dy` inside the clipping range (the straight-through
//! estimator for the rounding) and the scale's LSQ gradient, reduced to the scale's shape (Esser
//! et al. 2020). The zero point gets none: quantization-aware training does not learn it, so a
//! caller that asks for it gets an error rather than a silent zero.

use super::{Builder, Fwd};
use crate::autodiff::AutodiffError;
use qforge_ir::{Op, Value};

pub(crate) fn vjp(b: &mut Builder, f: &Fwd) -> Result<Vec<Option<Value>>, AutodiffError> {
    let Op::FakeQuantize { qmin, qmax } = f.op else {
        return Err(b.unsupported(format!("internal: {} is not fake_quantize", f.op.name())));
    };
    if f.wants(2) {
        return Err(b.unsupported("the zero point of fake_quantize has no gradient (training does not learn it)"));
    }
    let dy = f.dy(b)?;
    let (x, s) = (f.x(b, 0)?, f.x(b, 1)?);
    let z = f.ins.get(2).copied().flatten();
    let g = b.op_opt("", Op::FakeQuantizeGrad { qmin, qmax }, vec![Some(dy), Some(x), Some(s), z])?;
    Ok(vec![Some(g), f.wants(1).then(|| Value::new(g.node, 1))])
}
