//! Convolution `y = conv(x, w) + b` (grouped, strided, padded, dilated; any number of spatial
//! dims):
//!
//! * `dx` is the transposed convolution of `dy` with the same weight and attributes
//!   (`conv_transpose` reads `w` of shape (M, C/group, k...) as (C_in, C_out/group, k...), which is
//!   exactly the adjoint's), with `output_padding` the rows the forward's floor division dropped:
//!   `in - (stride * (out - 1) + (k - 1) * dilation + 1 - pad_begin - pad_end)`, so the result has
//!   the input's size (a symbolic spatial size needs stride 1, where that is 0).
//! * `dw` is `conv_weight_grad(x, dy)` (the op's docs give the sum);
//! * `db` is `dy` summed over the batch and spatial axes.
//!
//! The transposed convolution is that convolution's adjoint, so its rule swaps the roles (see
//! `transposed`).

use super::{Builder, Fwd};
use crate::autodiff::AutodiffError;
use qforge_ir::{ConvAttrs, ConvTransposeAttrs, Op, Value};

pub(crate) fn vjp(b: &mut Builder, f: &Fwd) -> Result<Vec<Option<Value>>, AutodiffError> {
    if let Op::ConvTranspose(t) = &f.op {
        return transposed(b, f, t);
    }
    let Op::Conv(a) = &f.op else { return Ok(vec![]) };
    let (x, w, dy) = (f.x(b, 0)?, f.x(b, 1)?, f.dy(b)?);
    let mut out = vec![None, None, None];
    if f.wants(0) {
        let sp = a.kernel.len();
        let (xd, yd) = (b.dims(x), b.dims(dy));
        let mut output_padding = Vec::with_capacity(sp);
        for i in 0..sp {
            let (s, k, d) = (a.strides[i] as i64, a.kernel[i] as i64, a.dilations[i] as i64);
            let (pb, pe) = (a.pads[i] as i64, a.pads[sp + i] as i64);
            match (xd[2 + i].fixed(), yd[2 + i].fixed()) {
                (Some(n), Some(o)) => {
                    let natural = s * (o as i64 - 1) + (k - 1) * d + 1 - pb - pe;
                    let extra = n as i64 - natural;
                    if extra < 0 {
                        return Err(
                            b.unsupported(format!("internal: spatial dim {i} of the input is below the adjoint's"))
                        );
                    }
                    output_padding.push(extra as usize);
                }
                _ if s == 1 => output_padding.push(0),
                _ => {
                    return Err(b.unsupported(format!(
                        "the input gradient of a strided convolution needs a fixed spatial size, got {}",
                        xd[2 + i]
                    )))
                }
            }
        }
        let t = ConvTransposeAttrs {
            kernel: a.kernel.clone(),
            strides: a.strides.clone(),
            pads: a.pads.iter().map(|&p| p as i64).collect(),
            dilations: a.dilations.clone(),
            group: a.group,
            output_padding,
        };
        let g = b.op("dx", Op::ConvTranspose(t), &[dy, w])?;
        // a symbolic size comes back as the transposed convolution's own spelling of it
        out[0] = Some(b.reshape_like("dx.shape", g, x)?);
    }
    if f.wants(1) {
        out[1] = Some(b.op("dw", Op::ConvWeightGrad(a.clone()), &[x, dy])?);
    }
    if f.wants(2) {
        let axes: Vec<usize> = std::iter::once(0).chain(2..b.rank(dy)).collect();
        out[2] = Some(b.reduce_sum("db", dy, &axes, false)?);
    }
    Ok(out)
}

/// The transposed convolution `y = conv_transpose(x, w) + b` is the adjoint of the convolution
/// with the same attributes and weight, so its gradients swap the roles: `dx = conv(dy, w)`,
/// `dw = conv_weight_grad(dy, x)` (the weight gradient of that convolution read with `dy` as its
/// input and `x` as its result), `db` summed as for a convolution. Needs pads of at least 0 and
/// `output_padding` below the stride (where the convolution of `dy` has `x`'s size).
fn transposed(b: &mut Builder, f: &Fwd, t: &ConvTransposeAttrs) -> Result<Vec<Option<Value>>, AutodiffError> {
    let (x, w, dy) = (f.x(b, 0)?, f.x(b, 1)?, f.dy(b)?);
    if t.pads.iter().any(|&p| p < 0) || t.output_padding.iter().zip(&t.strides).any(|(&o, &s)| o >= s) {
        return Err(b.unsupported(format!(
            "no gradient for negative pads {:?} or an output_padding {:?} not below the strides {:?}",
            t.pads, t.output_padding, t.strides
        )));
    }
    let a = ConvAttrs {
        kernel: t.kernel.clone(),
        strides: t.strides.clone(),
        pads: t.pads.iter().map(|&p| p as usize).collect(),
        dilations: t.dilations.clone(),
        group: t.group,
    };
    let mut out = vec![None, None, None];
    if f.wants(0) {
        let g = b.op("dx", Op::Conv(a.clone()), &[dy, w])?;
        out[0] = Some(b.reshape_like("dx.shape", g, x)?);
    }
    if f.wants(1) {
        out[1] = Some(b.op("dw", Op::ConvWeightGrad(a), &[dy, x])?);
    }
    if f.wants(2) {
        let axes: Vec<usize> = std::iter::once(0).chain(2..b.rank(dy)).collect();
        out[2] = Some(b.reduce_sum("db", dy, &axes, false)?);
    }
    Ok(out)
}
