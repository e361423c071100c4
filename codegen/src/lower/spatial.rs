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
            kind: RowKind::Spatial { nhwc: layout == Layout::Nhwc },
            x: 0,
            y: 0,
            n: len,
            inner: 1,
            scale: vec![],
            bias: vec![],
            index: vec![],
            x2: 0,
            plan: Some(Arc::new(plan)),
        };
        self.push(&n.name, StepKind::Rows { op, input, input2: None, output, units: len.div_ceil(rowops::CHUNK) });
        Ok(())
    }
}
