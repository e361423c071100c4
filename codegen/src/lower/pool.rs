//! Pooling over NHWC activations: max pooling (u8, i8, f32), f32 average pooling, and global
//! average pooling as a fused kernel (a per-channel sum, then a division or, quantized, ONNX
//! Runtime's requantization of the sum).

use super::{dims, ensure, host, int_ty, need, per_tensor, window_geom, At, Layout, Lowerer, Lw, StepKind};
use crate::emit::elementwise::IntTy;
use crate::micro::{self, ConvGeom};
use crate::spec::{mark_bounded, KernelSpec, MainOp, Step, Store};
use qforge_ir::{numerics, DType, Op, PoolAttrs};

/// Pooling attributes as a [`ConvGeom`] for an NCHW input `d` and output `od` (every channel
/// its own window).
fn pool_geom(p: &PoolAttrs, d: &[usize], od: &[usize]) -> Option<ConvGeom> {
    window_geom(&p.kernel, &p.strides, &p.pads, &p.dilations, d, od, *d.get(1)?)
}

impl Lowerer<'_> {
    /// Max pooling; padding never wins.
    pub(super) fn max_pool(&mut self, n: &At, p: &PoolAttrs) -> Lw {
        let x = need(n.input(0), "the input is missing")?;
        ensure(!self.is_const(x), "the input is a constant")?;
        let d = need(self.ty(x).and_then(dims), "the input shape is not fixed")?;
        let od = dims(&n.oty).unwrap_or_default();
        ensure(matches!(n.oty.dtype, DType::U8 | DType::I8 | DType::F32), "the result is not u8, i8 or f32")?;
        let geom = need(pool_geom(p, &d, &od), "not a 2-D window over a 4-D tensor")?;
        let input = self.in_layout(x, Layout::Nhwc, &n.name)?;
        let output = self.define(n.out, Layout::Nhwc);
        self.push(&n.name, StepKind::MaxPool { geom, dtype: n.oty.dtype, input, output });
        Ok(())
    }

    /// f32 average pooling (the divisor counts in-image taps, or padded ones with
    /// `count_include_pad`).
    pub(super) fn avg_pool(&mut self, n: &At, p: &PoolAttrs) -> Lw {
        let x = need(n.input(0), "the input is missing")?;
        let d = need(self.ty(x).and_then(dims), "the input shape is not fixed")?;
        let od = dims(&n.oty).unwrap_or_default();
        ensure(!self.is_const(x), "the input is a constant")?;
        let geom = need(pool_geom(p, &d, &od), "not a 2-D window over a 4-D tensor")?;
        let (pe_h, pe_w) = need(p.pads.get(2).zip(p.pads.get(3)), "no end pads")?;
        let geom =
            micro::pool::AvgPoolGeom { geom, pe_h: *pe_h, pe_w: *pe_w, include_pad: p.count_include_pad as usize };
        let input = self.in_layout(x, Layout::Nhwc, &n.name)?;
        let output = self.define(n.out, Layout::Nhwc);
        self.push(&n.name, StepKind::AvgPool { geom, input, output });
        Ok(())
    }

    /// Global average pooling, f32 or quantized (u8/i8 per tensor), as a kernel with one row
    /// per image and one column per channel.
    pub(super) fn global_avg(&mut self, n: &At) -> Lw {
        let x = need(n.input(0), "the input is missing")?;
        let xt = self.types[&x].clone();
        let d = need(dims(&xt), "the input shape is not fixed")?;
        ensure(d.len() == 4, "the input is not 4-D")?;
        ensure(!self.is_const(x), "the input is a constant")?;
        ensure(d[1] != 0, "no channels")?;
        let (images, c, hw) = (d[0], d[1], d[2] * d[3]);
        let (main, steps, store) = match n.op {
            Op::GlobalAveragePool if xt.dtype == DType::F32 => {
                (MainOp::GlobalSumF32 { hw }, vec![Step::DivF32(hw as f32)], Store::F32)
            }
            Op::QGlobalAveragePool => {
                let (Some((sx, zx)), Some((sy, zy))) = (per_tensor(&xt.quant), per_tensor(&n.oty.quant)) else {
                    return host("an operand is not quantized per tensor");
                };
                let (Some(ii), Some(io)) = (int_ty(xt.dtype), int_ty(n.oty.dtype)) else {
                    return host("an operand is not u8 or i8");
                };
                let (lo, hi) = io.range();
                let mult = numerics::global_average_multiplier(sx, sy, hw);
                let mut steps = vec![
                    Step::AddChannelI32(vec![(zx as i64 * hw as i64).wrapping_neg() as i32; c]),
                    Step::ScaleToF32(vec![mult; c]),
                    Step::RoundToInt { zp: zy, lo, hi, bounded: false },
                ];
                mark_bounded(&mut steps, hw as f64 * 255.0);
                let store = if io == IntTy::U8 { Store::U8 } else { Store::I8 };
                (MainOp::GlobalSumU8 { hw, signed: ii == IntTy::I8 }, steps, store)
            }
            _ => return host(format!("global average pooling of {}", xt.dtype.name())),
        };
        let spec = KernelSpec { main, epilogue: steps, store, rows: images, cols: c };
        let input = self.in_layout(x, Layout::Nhwc, &n.name)?;
        let output = self.define(n.out, Layout::Nhwc);
        self.push_kernel(&n.name, spec, input, output);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{check_family, Case};

    const CASES: &[Case] = &[
        Case {
            name: "max pool of u8 with padding, then global average pool quantized",
            shapes: &[&[2, 3, 5, 5]],
            qir: r#"graph p(%x: u8<0.05:10>[N,3,5,5]) -> (y: u8<0.02:3>[N,3,1,1]) {
  %0 = max_pool %x {kernel=[3,3], strides=[2,2], pads=[1,1,1,1], dilations=[1,1], ceil_mode=false, count_include_pad=false} : u8<0.05:10>[N,3,3,3]  # "pool"
  %1 = qglobal_average_pool %0 : u8<0.02:3>[N,3,1,1]  # "gap"
  return %1
}"#,
        },
        Case {
            name: "average pool with end pads counting the padding, then float global average pool",
            shapes: &[&[1, 2, 4, 4]],
            qir: r#"graph p(%x: f32[N,2,4,4]) -> (y: f32[N,2,1,1]) {
  %0 = average_pool %x {kernel=[3,3], strides=[1,1], pads=[0,0,1,1], dilations=[1,1], ceil_mode=false, count_include_pad=true} : f32[N,2,3,3]  # "avg"
  %1 = global_average_pool %0 : f32[N,2,1,1]  # "gap"
  return %1
}"#,
        },
        Case {
            name: "pooling f16 and i32 runs on the host",
            shapes: &[&[1, 2, 4, 4], &[1, 2, 4, 4]],
            qir: r#"graph p(%x: f16[N,2,4,4], %i: i32[N,2,4,4]) -> (y: f16[N,2,2,2], z: i32[N,2,2,2], g: f16[N,2,1,1]) {
  %0 = average_pool %x {kernel=[2,2], strides=[2,2], pads=[0,0,0,0], dilations=[1,1], ceil_mode=false, count_include_pad=false} : f16[N,2,2,2]  # "avg_f16"
  %1 = max_pool %i {kernel=[2,2], strides=[2,2], pads=[0,0,0,0], dilations=[1,1], ceil_mode=false, count_include_pad=false} : i32[N,2,2,2]  # "max_i32"
  %2 = global_average_pool %x : f16[N,2,1,1]  # "gap_f16"
  return %0, %1, %2
}"#,
        },
    ];

    #[test]
    fn pool_family_lowering() {
        check_family("pool", CASES);
    }
}
