//! Resize and pad of 4-D activations as gather steps ([`crate::micro::rowops::SpatialPlan`]):
//! in the input's layout (NHWC between convolutions, so no conversion surrounds them), on f32
//! and, for resize, on i8/u8 with the input's scale and zero point (the interpreter computes a
//! quantized resize on the stored integers); pad on any element type of 1 to 8 bytes. Both use
//! the interpreter's own tap and index tables, so they agree with it bit for bit.

use super::{dims, ensure, need, numel, At, Layout, Lowerer, Lw, StepKind};
use crate::micro::rowops::{self, RowKind, RowOp, SpatialPlan};
use qforge_ir::interp::{movement::pad_maps, resize::resize_plan};
use qforge_ir::{infer, DType, PadMode, ResizeAttrs, Tensor, TensorType};
use std::sync::Arc;

fn four(d: &[usize]) -> Lw<[usize; 4]> {
    need(<[usize; 4]>::try_from(d).ok(), "not a 4-D tensor")
}

impl Lowerer<'_> {
    /// ONNX Resize over the two spatial axes of a 4-D f32, i8 or u8 tensor.
    pub(super) fn resize(&mut self, n: &At, a: &ResizeAttrs) -> Lw {
        let x = need(n.input(0).filter(|v| !self.is_const(*v)), "the input is a constant")?;
        let xt = self.types[&x].clone();
        ensure(matches!(xt.dtype, DType::F32 | DType::U8 | DType::I8), "an element type other than f32, i8 or u8")?;
        ensure(xt.dtype == n.oty.dtype && xt.quant == n.oty.quant, "the result's type differs from the input's")?;
        let refs: Vec<Option<&TensorType>> = n.ins.iter().map(|v| v.and_then(|v| self.types.get(&v))).collect();
        let a = infer::resolve_resize(a, &refs).map_err(|e| super::Skip::Host(e.to_string()))?;
        let din = four(&need(dims(&xt), "the input shape is not fixed")?)?;
        let dout = four(&need(dims(&n.oty), "the result shape is not fixed")?)?;
        let (mut plan, sizes) = resize_plan(&a, &din).map_err(super::Skip::Host)?;
        ensure(sizes == dout, "the resize sizes differ from the inferred result")?;
        ensure(plan[0].is_none() && plan[1].is_none(), "it resizes the batch or channel axis")?;
        let w = plan.pop().flatten();
        let h = plan.pop().flatten();
        let sp = SpatialPlan::Resize {
            dtype: xt.dtype,
            in_dims: din,
            out_dims: dout,
            h,
            w,
            extrapolation: a.extrapolation as f64,
        };
        self.push_spatial(n, x, sp)
    }

    /// ONNX Pad (constant, edge, reflect, wrap) of a 4-D tensor of any element type.
    pub(super) fn pad(&mut self, n: &At, mode: PadMode, pads: &[i64], value: f64) -> Lw {
        let x = need(n.input(0).filter(|v| !self.is_const(*v)), "the input is a constant")?;
        let xt = self.types[&x].clone();
        let elem = xt.dtype.size_bytes();
        ensure(matches!(elem, 1 | 2 | 4 | 8), "an element size other than 1, 2, 4 or 8 bytes")?;
        let din = four(&need(dims(&xt), "the input shape is not fixed")?)?;
        let dout = four(&need(dims(&n.oty), "the result shape is not fixed")?)?;
        let maps = pad_maps(mode, pads, &din, &dout).map_err(super::Skip::Host)?;
        let maps: [Vec<Option<usize>>; 4] = need(maps.try_into().ok(), "not a 4-D pad")?;
        // The fill converted to the element type as the interpreter converts it.
        let fill = Tensor::from_f64_iter(xt.dtype, vec![1], std::iter::once(value));
        let mut bytes = [0u8; 8];
        crate::program::write_tensor(&fill, &mut bytes[..elem]);
        let sp = SpatialPlan::Pad { elem, in_dims: din, out_dims: dout, maps, fill: u64::from_le_bytes(bytes) };
        self.push_spatial(n, x, sp)
    }

    /// A gather step over `x` in its own layout (NHWC stays NHWC).
    fn push_spatial(&mut self, n: &At, x: qforge_ir::Value, plan: SpatialPlan) -> Lw {
        let layout = self.vals[&x].layout;
        let input = self.in_layout(x, layout, &n.name)?;
        let output = self.define(n.out, layout);
        let len = numel(&n.oty);
        let op = RowOp {
            plan: Some(Arc::new(plan)),
            ..RowOp::elementwise(RowKind::Spatial { nhwc: layout == Layout::Nhwc }, len)
        };
        self.push(&n.name, StepKind::Rows { op, input, input2: None, output, units: len.div_ceil(rowops::CHUNK) });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{check_family, Case};

    const CASES: &[Case] = &[
        Case {
            name: "f32 resizes and pads after a convolution stay NHWC; a resize of the channels runs on the host",
            shapes: &[&[1, 3, 4, 4]],
            qir: r#"graph s(%x: f32[N,3,4,4]) -> (a: f32[N,2,8,8], b: f32[N,2,7,5], c: f32[N,2,7,6], d: f32[N,6,4,4]) {
  %0 = const f32[2,3,1,1] = [0.5, -0.25, 1.0, 0.75, 0.25, -0.5]  # "w"
  %1 = conv %x, %0 {kernel=[1,1], strides=[1,1], pads=[0,0,0,0], dilations=[1,1], group=1} : f32[N,2,4,4]  # "conv"
  %2 = resize %1 {mode=nearest, coord=asymmetric, nearest=floor, cubic_a=-0.75, exclude_outside=false, extrapolation=0.0, antialias=false, roi=[], scales=[1.0,1.0,2.0,2.0]} : f32[N,2,8,8]  # "nearest"
  %3 = resize %1 {mode=linear, coord=align_corners, nearest=round_prefer_floor, cubic_a=-0.75, exclude_outside=false, extrapolation=0.0, antialias=false, roi=[], axes=[2,3], sizes=[7,5], policy=stretch} : f32[N,2,7,5]  # "linear"
  %4 = pad %1 {mode=reflect, pads=[0,0,1,2,0,0,2,0], value=0.0} : f32[N,2,7,6]  # "reflect"
  %5 = resize %x {mode=nearest, coord=asymmetric, nearest=floor, cubic_a=-0.75, exclude_outside=false, extrapolation=0.0, antialias=false, roi=[], scales=[1.0,2.0,1.0,1.0]} : f32[N,6,4,4]  # "channels"
  %7 = const f32[2,2,1,1] = [1.0, -1.0, 0.5, 0.5]  # "w2"
  %6 = conv %2, %7 {kernel=[1,1], strides=[1,1], pads=[0,0,0,0], dilations=[1,1], group=1} : f32[N,2,8,8]  # "conv2"
  return %6, %3, %4, %5
}"#,
        },
        Case {
            name: "u8 resize and constant pad carry the input's parameters",
            shapes: &[&[1, 2, 4, 4]],
            qir: r#"graph s(%x: u8<0.1:3>[N,2,4,4]) -> (a: u8<0.1:3>[N,2,8,8], b: u8<0.1:3>[N,2,6,6]) {
  %0 = resize %x {mode=linear, coord=half_pixel, nearest=round_prefer_floor, cubic_a=-0.75, exclude_outside=false, extrapolation=0.0, antialias=false, roi=[], scales=[1.0,1.0,2.0,2.0]} : u8<0.1:3>[N,2,8,8]  # "linear"
  %1 = pad %x {mode=constant, pads=[0,0,1,1,0,0,1,1], value=3.0} : u8<0.1:3>[N,2,6,6]  # "pad"
  return %0, %1
}"#,
        },
        Case {
            name: "pads computed from the input's dims (a window padding to a multiple of 4) resolve per shape to a JIT pad",
            shapes: &[&[2, 18, 13, 8]],
            qir: r#"graph s(%x: f32[N,H,W,8]) -> (y: f32[N,"(H+3)/4*4","(W+3)/4*4",8]) {
  %0 = pad %x, %x {mode=constant, pads=[0,0,0,0,0,0,0,0], computed=[at(5,d(1,"(-$1.1+($1.1+3)/4*4)")),at(6,d(1,"(-$1.2+($1.2+3)/4*4)"))], value=0.0} : f32[N,"(H+3)/4*4","(W+3)/4*4",8]  # "window_pad"
  return %0
}"#,
        },
    ];

    #[test]
    fn spatial_family_lowering() {
        check_family("spatial", CASES);
    }
}
