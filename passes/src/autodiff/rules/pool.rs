//! Pooling:
//!
//! * max pool: `max_pool_grad(x, dy)`, each window's gradient to the element it took (the first
//!   largest, as the forward picks it);
//! * average pool: `average_pool_grad(x, dy)`, each window's gradient shared by the elements it
//!   averaged, divided by the forward's divisor (`count_include_pad` either way);
//! * global average pool: `dy / (spatial size)` broadcast over the spatial axes;
//! * global max pool: the max pool gradient of one window covering the spatial axes.

use super::{Builder, Fwd};
use crate::autodiff::AutodiffError;
use qforge_ir::{Op, PoolAttrs, Value};

pub(crate) fn vjp(b: &mut Builder, f: &Fwd) -> Result<Vec<Option<Value>>, AutodiffError> {
    let (x, dy) = (f.x(b, 0)?, f.dy(b)?);
    let g = match &f.op {
        Op::MaxPool(p) => b.op("", Op::MaxPoolGrad(p.clone()), &[x, dy])?,
        Op::AveragePool(p) => b.op("", Op::AveragePoolGrad(p.clone()), &[x, dy])?,
        Op::GlobalAveragePool => {
            let spatial: Vec<usize> = (2..b.rank(x)).collect();
            let s = b.div_by_count("mean", dy, x, &spatial)?;
            b.expand_like("", s, x)?
        }
        Op::GlobalMaxPool => {
            let dims = b.dims(x);
            let mut kernel = Vec::with_capacity(dims.len() - 2);
            for d in &dims[2..] {
                kernel.push(d.fixed().ok_or_else(|| {
                    b.unsupported(format!("the gradient of a global max pool needs fixed spatial dims, got {d}"))
                })?);
            }
            let sp = kernel.len();
            let p = PoolAttrs {
                kernel,
                strides: vec![1; sp],
                pads: vec![0; 2 * sp],
                dilations: vec![1; sp],
                ceil_mode: false,
                count_include_pad: false,
            };
            b.op("", Op::MaxPoolGrad(p), &[x, dy])?
        }
        _ => return Ok(vec![]),
    };
    Ok(vec![Some(g)])
}
