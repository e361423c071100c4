//! Data movement: reshapes that alias their input's buffer, strided views (transpose, slice, a
//! gather at constant indices) as copies, concatenation, and the NCHW <-> NHWC layout
//! conversions the driver inserts where a consumer needs the other byte order.

use super::{
    dims, ensure, err, layout_free, need, numel, per_tensor, At, Layout, LoweredStep, Lowerer, Lw, StepKind, Vinfo,
};
use crate::micro::rowops::{self, RowKind, RowOp};
use crate::JitError;
use qforge_ir::{infer, numerics, DType, Op, TensorType, Value};

/// The output byte for every input byte of a requantization from `from` to `to` (both i8/u8,
/// per tensor): `quantize(dequantize(q))`, the interpreter's formula ([`qforge_ir::numerics`]).
fn requant_table(from: &TensorType, to: &TensorType) -> Option<Vec<u8>> {
    let (sx, zx) = per_tensor(&from.quant)?;
    let (sy, zy) = per_tensor(&to.quant)?;
    let int8 = |d: DType| matches!(d, DType::I8 | DType::U8);
    if !int8(from.dtype) || !int8(to.dtype) {
        return None;
    }
    let table = (0..=255u8)
        .map(|b| {
            let q = if from.dtype == DType::I8 { b as i8 as i64 } else { b as i64 };
            let r = numerics::quantize(numerics::dequantize(q, sx, zx), sy, zy, to.dtype);
            // the stored byte of the result (an i8 in two's complement)
            r as u8
        })
        .collect();
    Some(table)
}

/// A strided view step whose result is used only by another view, possibly through reshapes
/// ([`Lowerer::strided_view`]). The view is kept on fine axes, each an evenly strided run of the
/// source buffer `buf` (`dims`, `strides`, from `base`); each axis of the value is a run of
/// consecutive fine axes (`groups[a]` of them), so a reshape that merges axes no single stride
/// walks (depth-to-space's rows: an image row, then a phase) still keeps the view. `step` is the
/// step that copies it.
#[derive(Clone, Debug)]
pub(super) struct PendingView {
    buf: usize,
    dims: Vec<usize>,
    strides: Vec<isize>,
    groups: Vec<usize>,
    base: isize,
    step: usize,
}

/// What a view reads: buffer `buf` from `base`, each axis of the input a run of fine axes
/// `(size, stride)`; `step`: the earlier view step this one replaces.
struct ViewSource {
    buf: usize,
    axes: Vec<Vec<(usize, isize)>>,
    base: isize,
    step: Option<usize>,
}

/// The fine axes of `fine` (sizes and strides, row-major) regrouped as the axes of `new` dims:
/// a fine axis that a new axis boundary cuts is split (a size-`d1 * d2` axis of stride `s` is
/// `d1` of stride `d2 * s` then `d2` of stride `s`), so each new axis is a run of whole fine
/// axes; `None` when a cut does not divide the axis it falls in. Neighbours one stride walks
/// are merged first; fine axes of size 1 are dropped; a new axis of size 1 is one fine axis of
/// stride 0.
pub(super) fn regroup(fine: &[(usize, isize)], new: &[usize]) -> Option<Vec<Vec<(usize, isize)>>> {
    let total: usize = fine.iter().map(|f| f.0).product();
    if total != new.iter().product::<usize>() || total == 0 {
        return None;
    }
    // neighbours one stride walks (`s_i == d_(i+1) * s_(i+1)`) merged first, so that a cut may
    // fall anywhere inside them
    let mut merged: Vec<(usize, isize)> = Vec::with_capacity(fine.len());
    for &(d, st) in fine.iter().filter(|f| f.0 != 1) {
        match merged.last_mut() {
            Some(last) if last.1 == d as isize * st => *last = (last.0 * d, st),
            _ => merged.push((d, st)),
        }
    }
    // from the innermost axes out: the rest of the current fine axis and of the new axis
    let mut fine = merged.into_iter().rev();
    let mut out: Vec<Vec<(usize, isize)>> = Vec::with_capacity(new.len());
    let mut cur = fine.next();
    for &e in new.iter().rev() {
        let mut group = Vec::new();
        let mut need = e;
        if e == 1 {
            group.push((1, 0));
        }
        while need > 1 {
            let (f, st) = cur?;
            if f <= need {
                if need % f != 0 {
                    return None;
                }
                group.push((f, st));
                need /= f;
                cur = fine.next();
            } else {
                if f % need != 0 {
                    return None;
                }
                group.push((need, st));
                cur = Some((f / need, st * need as isize));
                need = 1;
            }
        }
        group.reverse();
        out.push(group);
    }
    out.reverse();
    Some(out)
}

impl Lowerer<'_> {
    /// ONNX Gather of a constant table along axis 0 at indices computed at run time (an
    /// embedding lookup): one output row per index, copied from the table; an index out of range
    /// fails the run, as the interpreter's gather does.
    fn gather_indexed(&mut self, n: &At, axis: i64) -> Lw {
        let t = need(self.const_of(n.input(0)), "the data are not a constant")?;
        let idx = need(n.input(1).filter(|v| !self.is_const(*v)), "the indices are a constant")?;
        let td = t.shape().to_vec();
        ensure(!td.is_empty() && infer::norm_axis(axis, td.len()).ok() == Some(0), "not a gather along axis 0")?;
        let it = self.types[&idx].dtype;
        ensure(matches!(it, DType::I64 | DType::I32), "the indices are not i64 or i32")?;
        let elem = t.dtype().size_bytes();
        let row = td[1..].iter().product::<usize>() * elem;
        let count = numel(&self.types[&idx]);
        ensure(row != 0 && count != 0 && numel(&n.oty) * elem == count * row, "an empty table or result")?;
        let mut bytes = vec![0u8; t.len() * elem];
        crate::program::write_tensor(&t, &mut bytes);
        let input = self.plain(idx, &n.name)?;
        let output = self.define(n.out, Layout::Plain);
        let kind = RowKind::GatherIndexed { rows: td[0], row, i32_indices: it == DType::I32 };
        let fault = Some(std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)));
        let op = RowOp { lut: bytes, fault, ..RowOp::elementwise(kind, count * row) };
        self.push(&n.name, StepKind::Rows { op, input, input2: None, output, units: count });
        Ok(())
    }

    /// A buffer holding constant `v` (plain order), filled by a step of its own on every run.
    fn materialize_const(&mut self, v: Value, name: &str) -> Lw {
        let t = need(self.const_of(Some(v)), "not a constant")?;
        let ty = self.types[&v].clone();
        ensure(t.len() == numel(&ty) && t.dtype() == ty.dtype, "the constant does not fit its type")?;
        let mut bytes = vec![0u8; numel(&ty) * ty.dtype.size_bytes()];
        crate::program::write_tensor(&t, &mut bytes);
        let buf = self.new_buf(&ty);
        self.vals.insert(v, Vinfo { ty, buf, layout: Layout::Plain });
        let len = bytes.len();
        let op = RowOp { lut: bytes, ..RowOp::elementwise(RowKind::Fill, len) };
        let input = buf;
        self.push(
            &format!("{name}.constant"),
            StepKind::Rows { op, input, input2: None, output: buf, units: len.div_ceil(rowops::CHUNK) },
        );
        Ok(())
    }

    /// A strided view of the input: output axis `a` walks input axis `axes[a].0` (none: a
    /// broadcast axis) `axes[a].1` elements at a time, from element `starts[b]` of each input axis
    /// `b`. The view reads the input's buffer in its own layout (an NHWC activation is not
    /// converted first), and where the input is itself a view whose only use is this one (through
    /// reshapes that keep it a strided view), it reads that view's source and the earlier copy is
    /// dropped: a transpose -> reshape -> transpose chain is one copy.
    fn strided_view(&mut self, n: &At, x: Value, axes: &[(Option<usize>, isize)], starts: &[isize]) -> Lw {
        let dout = need(dims(&n.oty), "the result shape is not fixed")?;
        let elem = n.oty.dtype.size_bytes();
        ensure(matches!(elem, 1 | 2 | 4 | 8), "an element size other than 1, 2, 4 or 8 bytes")?;
        ensure(axes.len() == dout.len(), "the strides do not fit the rank")?;
        let mut src = self.view_source(x, &n.name)?;
        ensure(starts.len() == src.axes.len(), "the starts do not fit the input's rank")?;
        // an axis walked with a step or from a start other than 0 must be one fine axis; where a
        // pending view's is not, the view reads that view's copy instead
        let single = |src: &ViewSource| {
            axes.iter().all(|&(b, step)| b.is_none_or(|b| step == 1 || src.axes.get(b).is_some_and(|g| g.len() == 1)))
                && starts.iter().zip(&src.axes).all(|(&st, g)| st == 0 || g.len() == 1)
        };
        if !single(&src) {
            // only a pending view has axes of several fine axes: read its copy
            ensure(src.step.is_some(), "a strided axis spans several fine axes")?;
            src = self.plain_source(x, &n.name)?;
        }
        let mut fine: Vec<(usize, isize)> = Vec::new();
        let mut groups = Vec::with_capacity(axes.len());
        for (a, &(axis, step)) in axes.iter().enumerate() {
            match axis {
                Some(b) => {
                    let g = need(src.axes.get(b), "an axis is out of range")?;
                    if step == 1 && g.len() != 1 {
                        fine.extend(g.iter().copied());
                        groups.push(g.len());
                    } else {
                        fine.push((dout[a], step * g.first().map_or(0, |f| f.1)));
                        groups.push(1);
                    }
                }
                None => {
                    fine.push((dout[a], 0));
                    groups.push(1);
                }
            }
        }
        let offset: isize = starts.iter().zip(&src.axes).map(|(&st, g)| st * g.first().map_or(0, |f| f.1)).sum();
        let base = src.base + offset;
        ensure(base >= 0, "a negative base offset")?;
        if let Some(dead) = src.step {
            self.dead_steps.insert(dead);
        }
        self.emit_view(n, src.buf, fine, groups, base)
    }

    /// The strided view step writing `n`'s result: output element `o` (row-major over the fine
    /// axes `fine`, each value axis a run of `groups[a]` of them) reads element
    /// `base + sum(o_i * stride_i)` of buffer `buf`. A 4-D result only convolutions and channel
    /// concatenations read is written NHWC (the fine axes in the order of the groups of N, H, W,
    /// C); a plain one whose only use is another view is left pending ([`PendingView`]).
    fn emit_view(&mut self, n: &At, buf: usize, mut fine: Vec<(usize, isize)>, groups: Vec<usize>, base: isize) -> Lw {
        let dout = need(dims(&n.oty), "the result shape is not fixed")?;
        let elem = n.oty.dtype.size_bytes();
        // a scalar result (a gather of one element of a vector) is one element along one axis
        if fine.is_empty() {
            fine.push((1, 0));
        }
        let nhwc = dout.len() == 4 && groups.len() == 4 && self.read_as_nhwc(n.out);
        let order: Vec<(usize, isize)> = if nhwc {
            let mut at = [0usize; 4];
            for a in 1..4 {
                at[a] = at[a - 1] + groups[a - 1];
            }
            [0, 2, 3, 1].iter().flat_map(|&a| fine[at[a]..at[a] + groups[a]].iter().copied()).collect()
        } else {
            fine.clone()
        };
        let mut index: Vec<usize> = order.iter().map(|f| f.0).collect();
        // two's complement: the view's offsets are computed in wrapping arithmetic
        index.extend(order.iter().map(|f| f.1 as usize));
        index.push(base as usize);
        let output = self.define(n.out, if nhwc { Layout::Nhwc } else { Layout::Plain });
        let len = numel(&n.oty);
        let op = RowOp { index, ..RowOp::elementwise(RowKind::StridedView { elem }, len) };
        let step = self.steps.len();
        self.push(&n.name, StepKind::Rows { op, input: buf, input2: None, output, units: len.div_ceil(rowops::CHUNK) });
        if self.only_user(n.out).is_some() && !dout.is_empty() && !nhwc {
            let (dims, strides) = fine.iter().copied().unzip();
            self.views.insert(n.out, PendingView { buf, dims, strides, groups, base, step });
        }
        Ok(())
    }

    /// Whether every use of `v` (none a graph output) is a convolution's input or a
    /// concatenation along the channel axis: the consumers that take NHWC activations.
    fn read_as_nhwc(&self, v: Value) -> bool {
        let users = self.g.value_users(v);
        !self.outputs.contains(&v)
            && !users.is_empty()
            && users.iter().all(|u| {
                let node = self.g.node(u.0);
                match &node.op {
                    Op::Conv(_) => u.1 == 0,
                    Op::Concat { axis } => *axis == 1 || *axis == -3,
                    _ => false,
                }
            })
    }

    /// What a view of `x` reads: the pending view that produced `x` (its only use is the view
    /// being lowered), or `x`'s own buffer ([`Self::plain_source`]).
    fn view_source(&mut self, x: Value, name: &str) -> Lw<ViewSource> {
        if let Some(v) = self.views.remove(&x) {
            let mut axes = Vec::with_capacity(v.groups.len());
            let mut at = 0;
            for &g in &v.groups {
                axes.push(v.dims[at..at + g].iter().copied().zip(v.strides[at..at + g].iter().copied()).collect());
                at += g;
            }
            return Ok(ViewSource { buf: v.buf, axes, base: v.base, step: Some(v.step) });
        }
        self.plain_source(x, name)
    }

    /// `x`'s buffer in its layout: plain row-major, or NHWC (the logical NCHW axes' strides, so
    /// an NHWC activation is not converted first).
    fn plain_source(&mut self, x: Value, name: &str) -> Lw<ViewSource> {
        let din = need(dims(&self.types[&x]), "a shape is not fixed")?;
        let info = &self.vals[&x];
        let strides = if info.layout == Layout::Nhwc && din.len() == 4 {
            let (c, w, hw) = (din[1] as isize, din[3] as isize, (din[2] * din[3]) as isize);
            vec![hw * c, 1, w * c, c]
        } else {
            Self::row_major(&din)
        };
        let buf = if info.layout == Layout::Nhwc && din.len() == 4 { info.buf } else { self.plain(x, name)? };
        let axes = din.iter().zip(strides).map(|(&d, s)| vec![(d, s)]).collect();
        Ok(ViewSource { buf, axes, base: 0, step: None })
    }

    /// The row-major strides (in elements) of a tensor of dims `d`.
    fn row_major(d: &[usize]) -> Vec<isize> {
        let mut st = vec![1isize; d.len()];
        for a in (0..d.len().saturating_sub(1)).rev() {
            st[a] = st[a + 1] * d[a + 1] as isize;
        }
        st
    }

    /// A permutation of axes: each output element reads the input at the permuted strides.
    pub(super) fn transpose(&mut self, n: &At, perm: &[usize]) -> Lw {
        let x = need(n.input(0).filter(|v| !self.is_const(*v)), "the input is a constant")?;
        let din = need(dims(&self.types[&x]), "a shape is not fixed")?;
        ensure(perm.len() == din.len(), "the permutation does not fit the rank")?;
        ensure(perm.iter().all(|&p| p < din.len()), "a permutation entry is out of range")?;
        let axes: Vec<(Option<usize>, isize)> = perm.iter().map(|&p| (Some(p), 1)).collect();
        self.strided_view(n, x, &axes, &vec![0; din.len()])
    }

    /// ONNX Slice with constant bounds (the interpreter's view: a base offset and each sliced
    /// axis's stride times its step).
    pub(super) fn slice(&mut self, n: &At, starts: &[i64], ends: &[i64], axes: &[i64], steps: &[i64]) -> Lw {
        let x = need(n.input(0).filter(|v| !self.is_const(*v)), "the input is a constant")?;
        let din = need(dims(&self.types[&x]), "a shape is not fixed")?;
        ensure(numel(&n.oty) != 0, "the result is empty")?;
        ensure(
            starts.len() == ends.len() && starts.len() == axes.len() && starts.len() == steps.len(),
            "the bounds have different lengths",
        )?;
        let mut view: Vec<(Option<usize>, isize)> = (0..din.len()).map(|a| (Some(a), 1)).collect();
        let mut first = vec![0isize; din.len()];
        for i in 0..starts.len() {
            let a = need(infer::norm_axis(axes[i], din.len()).ok(), "an axis is out of range")?;
            let (s, _) = need(infer::slice_bounds(din[a], starts[i], ends[i], steps[i]).ok(), "bad slice bounds")?;
            first[a] = s as isize;
            view[a] = (Some(a), steps[i] as isize);
        }
        self.strided_view(n, x, &view, &first)
    }

    /// ONNX Gather of an activation at constant indices that are a scalar (the axis is dropped)
    /// or a 1-D arithmetic progression (the axis is walked with the progression's step).
    pub(super) fn gather(&mut self, n: &At, axis: i64) -> Lw {
        if n.input(0).is_some_and(|v| self.is_const(v)) {
            return self.gather_indexed(n, axis);
        }
        let x = need(n.input(0), "the data are missing")?;
        let idx = need(self.const_of(n.input(1)), "the indices are not a constant")?;
        let din = need(dims(&self.types[&x]), "a shape is not fixed")?;
        let a = need(infer::norm_axis(axis, din.len()).ok(), "the axis is out of range")?;
        let ids = need(idx.to_i64_vec(), "the indices are not integers")?;
        let dim = din[a] as i64;
        let ids: Vec<i64> = ids.iter().map(|&i| if i < 0 { i + dim } else { i }).collect();
        ensure(!ids.is_empty() && ids.iter().all(|&i| (0..dim).contains(&i)), "an index is out of range")?;
        let mut first = vec![0isize; din.len()];
        first[a] = ids[0] as isize;
        let mut view: Vec<(Option<usize>, isize)> = (0..din.len()).map(|b| (Some(b), 1)).collect();
        match idx.shape().len() {
            0 => {
                view.remove(a);
            }
            1 => {
                let step = ids.get(1).map_or(0, |&i1| i1 - ids[0]);
                if !ids.windows(2).all(|w| w[1] - w[0] == step) {
                    return self.gather_rows(n, x, a, &ids);
                }
                view[a] = (Some(a), step as isize);
            }
            _ => return self.gather_rows(n, x, a, &ids),
        }
        self.strided_view(n, x, &view, &first)
    }

    /// A gather of activation `x` along axis `a` at normalized constant indices `ids` of any
    /// shape: one output row (the axes after `a`) per index and position before `a`.
    fn gather_rows(&mut self, n: &At, x: Value, a: usize, ids: &[i64]) -> Lw {
        let din = need(dims(&self.types[&x]), "a shape is not fixed")?;
        let elem = n.oty.dtype.size_bytes();
        let row = din[a + 1..].iter().product::<usize>() * elem;
        let outer: usize = din[..a].iter().product();
        ensure(row != 0 && numel(&n.oty) * elem == outer * ids.len() * row, "an empty row or result")?;
        let input = self.plain(x, &n.name)?;
        let output = self.define(n.out, Layout::Plain);
        let kind = RowKind::GatherRows { dim: din[a], count: ids.len(), row };
        let index = ids.iter().map(|&i| i as usize).collect();
        let op = RowOp { index, ..RowOp::elementwise(kind, outer * ids.len() * row) };
        self.push(&n.name, StepKind::Rows { op, input, input2: None, output, units: outer * ids.len() });
        Ok(())
    }

    /// Expand (a constant shape, or one read from reference inputs' dims): a strided view
    /// with stride 0 along each broadcast axis.
    pub(super) fn expand(&mut self, n: &At) -> Lw {
        let x = need(n.input(0).filter(|v| !self.is_const(*v)), "the input is a constant")?;
        let din = need(dims(&self.types[&x]), "a shape is not fixed")?;
        let dout = need(dims(&n.oty), "the result shape is not fixed")?;
        let st = need(super::rows::broadcast_strides(&din, &dout), "the input does not broadcast to the result")?;
        ensure(numel(&n.oty) != 0, "the result is empty")?;
        // a broadcast axis has stride 0; any other walks the input axis it lines up with
        let lead = dout.len() - din.len();
        let view: Vec<(Option<usize>, isize)> = st
            .iter()
            .enumerate()
            .map(|(a, &s)| if s == 0 || a < lead { (None, 0) } else { (Some(a - lead), 1) })
            .collect();
        self.strided_view(n, x, &view, &vec![0; din.len()])
    }

    /// Reshape, flatten, squeeze, unsqueeze and identity: the result is the input's buffer in
    /// plain order under the new type (no step).
    pub(super) fn alias(&mut self, n: &At) -> Lw {
        let x = need(n.input(0).filter(|v| !self.is_const(*v)), "the input is a constant")?;
        // a pending view stays one through a reshape it can be regrouped as, while the result's
        // only use is another view; one whose reshaped result convolutions read is copied again,
        // NHWC, from its source
        if let Some(v) = self.views.remove(&x) {
            let fine: Vec<(usize, isize)> = v.dims.iter().copied().zip(v.strides.iter().copied()).collect();
            if let Some(axes) = dims(&n.oty).and_then(|d| regroup(&fine, &d)) {
                let groups: Vec<usize> = axes.iter().map(|g| g.len()).collect();
                let fine: Vec<(usize, isize)> = axes.into_iter().flatten().collect();
                if groups.len() == 4 && self.read_as_nhwc(n.out) {
                    self.dead_steps.insert(v.step);
                    return self.emit_view(n, v.buf, fine, groups, v.base);
                }
                if self.only_user(n.out).is_some() {
                    let (dims, strides) = fine.into_iter().unzip();
                    self.views.insert(n.out, PendingView { dims, strides, groups, ..v.clone() });
                }
            }
        }
        let buf = self.plain(x, &n.name)?;
        self.vals.insert(n.out, Vinfo { ty: n.oty.clone(), buf, layout: Layout::Plain });
        Ok(())
    }

    /// Concatenation of same-typed activations (a quantized concat: all with the result's
    /// per-tensor parameters). Along the channels of NHWC activations the parts are interleaved
    /// per pixel; otherwise in plain order.
    pub(super) fn concat(&mut self, n: &At, axis: i64) -> Lw {
        let d = need(dims(&n.oty), "the result shape is not fixed")?;
        let a = need(infer::norm_axis(axis, d.len()).ok(), "the axis is out of range")?;
        let vals: Vec<Value> = n.ins.iter().flatten().copied().collect();
        ensure(vals.len() == n.ins.len() && !vals.is_empty(), "an input is missing")?;
        // a constant operand (a class token expanded to the batch, folded per input shape) is
        // copied into the arena by a step of its own
        for v in &vals {
            if self.is_const(*v) && !self.vals.contains_key(v) {
                self.materialize_const(*v, &n.name)?;
            }
        }
        // A quantized concat requantizes each input of other parameters (a table step first).
        let mut tables = Vec::with_capacity(vals.len());
        for v in &vals {
            let t = &self.types[v];
            let same_params =
                matches!(n.op, Op::Concat { .. }) || (per_tensor(&t.quant).is_some() && t.quant == n.oty.quant);
            if same_params {
                ensure(t.dtype == n.oty.dtype, "the inputs' dtypes differ from the result's")?;
                tables.push(None);
            } else {
                let table = need(requant_table(t, &n.oty), "an input's quantization is not per-tensor i8/u8")?;
                tables.push(Some(table));
            }
        }
        let es = n.oty.dtype.size_bytes();
        // Channels of NHWC activations are the innermost dim; otherwise plain order.
        let nhwc = d.len() == 4 && a == 1 && self.vals[&vals[0]].layout == Layout::Nhwc;
        let layout = if nhwc { Layout::Nhwc } else { Layout::Plain };
        let (outer, inner) = if nhwc {
            (d[0] * d[2] * d[3], 1)
        } else {
            (d[..a].iter().product::<usize>(), d[a + 1..].iter().product::<usize>())
        };
        let mut parts = Vec::new();
        for (v, table) in vals.iter().zip(tables) {
            let dv = dims(&self.types[v]).unwrap_or_default();
            let mut buf = self.in_layout(*v, layout, &n.name)?;
            if let Some(index) = table {
                let ty = self.types[v].clone();
                let len = numel(&ty);
                let out = self.new_buf(&ty);
                let op = RowOp { lut: index, ..RowOp::elementwise(RowKind::Lut8 { plane: 1 }, len) };
                let name = format!("{}.requant", n.name);
                self.push(
                    &name,
                    StepKind::Rows { op, input: buf, input2: None, output: out, units: len.div_ceil(rowops::CHUNK) },
                );
                buf = out;
            }
            parts.push((buf, dv.get(a).copied().unwrap_or(0) * inner * es));
        }
        let output = self.define(n.out, layout);
        self.push(&n.name, StepKind::Concat { parts, output, outer, stride: d[a] * inner * es });
        Ok(())
    }

    /// Requantize of a per-tensor i8/u8 value to the per-tensor i8/u8 type `to`, as a table step in
    /// the input's layout.
    pub(super) fn requantize(&mut self, n: &At) -> Lw {
        let x = need(n.input(0).filter(|v| !self.is_const(*v)), "the input is a constant")?;
        let lut = need(requant_table(&self.types[&x], &n.oty), "not per-tensor i8/u8 on both sides")?;
        let layout = self.vals[&x].layout;
        self.tables_step(n, x, layout, lut, (1, 1))
    }

    /// `n`'s result as `tables` 256-entry byte tables (`lut`, one after the other) applied to
    /// the bytes of `x` in `layout`, element `i` through table `(i / plane) % tables`: one table
    /// per channel, `plane` elements apart in memory.
    pub(super) fn tables_step(
        &mut self,
        n: &At,
        x: Value,
        layout: Layout,
        lut: Vec<u8>,
        (tables, plane): (usize, usize),
    ) -> Lw {
        let input = self.in_layout(x, layout, &n.name)?;
        let output = self.define(n.out, layout);
        let len = numel(&n.oty);
        let op = RowOp { lut, inner: tables, ..RowOp::elementwise(RowKind::Lut8 { plane }, len) };
        self.push(&n.name, StepKind::Rows { op, input, input2: None, output, units: len.div_ceil(rowops::CHUNK) });
        Ok(())
    }

    /// The buffer of `v` in `layout`, converting (once) if needed.
    pub(super) fn in_layout(&mut self, v: Value, layout: Layout, name: &str) -> Result<usize, JitError> {
        let info = self.vals.get(&v).cloned().ok_or_else(|| err(name, "an input has no buffer"))?;
        if info.layout == layout || layout_free(&info.ty) {
            return Ok(info.buf);
        }
        if let Some(&b) = self.converted.get(&(v, layout)) {
            return Ok(b);
        }
        let d = dims(&info.ty).ok_or_else(|| err(name, "a layout conversion of a symbolic shape"))?;
        let out = self.new_buf(&info.ty);
        self.steps.push(LoweredStep {
            name: format!("{name}.layout"),
            kind: StepKind::Convert {
                to_nhwc: layout == Layout::Nhwc,
                n: d[0],
                c: d[1],
                hw: d[2] * d[3],
                elem: info.ty.dtype.size_bytes(),
                input: info.buf,
                output: out,
            },
        });
        self.converted.insert((v, layout), out);
        Ok(out)
    }

    /// The buffer of `v` in plain (row-major) order.
    pub(super) fn plain(&mut self, v: Value, name: &str) -> Result<usize, JitError> {
        self.in_layout(v, Layout::Plain, name)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{check_family, Case};
    use super::regroup;

    const CASES: &[Case] = &[
    Case {
        name: "a depth-to-space chain (ConvTranspose as a convolution) is one copy from the NHWC convolution result, written NHWC for the convolution after it",
        shapes: &[&[1, 4, 2, 2]],
        qir: r#"graph d2s(%x: f32[N,4,2,2]) -> (y: f32[N,2,4,4]) {
  %0 = const f32[16,4,1,1] = [-0.625, 0.25, -0.25, 0.625, 0.125, -0.375, 0.5, 0.0, -0.5, 0.375, -0.125, -0.625, 0.25, -0.25, 0.625, 0.125, -0.375, 0.5, 0.0, -0.5, 0.375, -0.125, -0.625, 0.25, -0.25, 0.625, 0.125, -0.375, 0.5, 0.0, -0.5, 0.375, -0.125, -0.625, 0.25, -0.25, 0.625, 0.125, -0.375, 0.5, 0.0, -0.5, 0.375, -0.125, -0.625, 0.25, -0.25, 0.625, 0.125, -0.375, 0.5, 0.0, -0.5, 0.375, -0.125, -0.625, 0.25, -0.25, 0.625, 0.125, -0.375, 0.5, 0.0, -0.5]  # "w"
  %1 = conv %x, %0 {kernel=[1,1], strides=[1,1], pads=[0,0,0,0], dilations=[1,1], group=1} : f32[N,16,2,2]  # "phases"
  %2 = transpose %1 {perm=[0,2,1,3]} : f32[N,2,16,2]  # "channels_inside"
  %3 = reshape %2 {shape=[0,0,4,2,2,-1]} : f32[N,2,4,2,2,2]  # "split"
  %4 = transpose %3 {perm=[0,2,5,4,1,3]} : f32[N,4,2,2,2,2]  # "interleave"
  %5 = reshape %4 {shape=[0,0,0,0,-1]} : f32[N,4,2,2,4]  # "rows"
  %6 = transpose %5 {perm=[0,1,4,2,3]} : f32[N,4,4,2,2]  # "rows_inside"
  %7 = reshape %6 {shape=[0,0,0,-1]} : f32[N,4,4,4]  # "depth_to_space"
  %8 = const f32[2,4,1,1] = [-0.75, 0.5, 0.0, -0.5, 0.75, 0.25, -0.25, -0.75]  # "w2"
  %9 = conv %7, %8 {kernel=[1,1], strides=[1,1], pads=[0,0,0,0], dilations=[1,1], group=1} : f32[N,2,4,4]  # "after"
  return %9
}"#,
    },
        Case {
            name: "strided views: a slice with a step, a reversed slice, gathers at a scalar and at a progression",
            shapes: &[&[2, 6]],
            qir: r#"graph v(%x: f32[N,6]) -> (a: f32[N,3], b: f32[N,6], c: f32[N], d: f32[N,2]) {
  %0 = slice %x {starts=[0], ends=[6], axes=[1], steps=[2]} : f32[N,3]  # "slice"
  %1 = slice %x {starts=[-1], ends=[-9223372036854775807], axes=[1], steps=[-1]} : f32[N,6]  # "reversed"
  %2 = const i64[] = [5]  # "last"
  %3 = gather %x, %2 {axis=1} : f32[N]  # "gather_scalar"
  %4 = const i64[2] = [4, 1]  # "indices"
  %5 = gather %x, %4 {axis=1} : f32[N,2]  # "gather_progression"
  return %0, %1, %3, %5
}"#,
        },
        Case {
            name: "reshape, flatten and unsqueeze alias their input",
            shapes: &[&[2, 3, 4]],
            qir: r#"graph m(%x: f32[N,3,4]) -> (y: f32[N,1,12]) {
  %0 = reshape %x {shape=[0,-1]} : f32[N,12]  # "reshape"
  %1 = relu %0 : f32[N,12]  # "relu"
  %2 = unsqueeze %1 {axes=[1]} : f32[N,1,12]  # "unsqueeze"
  return %2
}"#,
        },
        Case {
            name: "a flatten of an NHWC tensor converts it to plain order first",
            shapes: &[&[1, 2, 4, 4]],
            qir: r#"graph m(%x: f32[N,2,4,4]) -> (y: f32[N,8]) {
  %0 = max_pool %x {kernel=[2,2], strides=[2,2], pads=[0,0,0,0], dilations=[1,1], ceil_mode=false, count_include_pad=false} : f32[N,2,2,2]  # "pool"
  %1 = flatten %0 {axis=1} : f32[N,8]  # "flatten"
  return %1
}"#,
        },
        Case {
            name: "concat along the channels of NHWC tensors, and along axis 1 of plain ones",
            shapes: &[&[1, 2, 4, 4], &[2, 3]],
            qir: r#"graph m(%x: u8<0.1:0>[N,2,4,4], %y: f32[N,3]) -> (a: u8<0.1:0>[N,4,2,2], b: f32[N,6]) {
  %0 = max_pool %x {kernel=[2,2], strides=[2,2], pads=[0,0,0,0], dilations=[1,1], ceil_mode=false, count_include_pad=false} : u8<0.1:0>[N,2,2,2]  # "pool"
  %1 = qconcat %0, %0 {axis=1} : u8<0.1:0>[N,4,2,2]  # "qcat"
  %2 = concat %y, %y {axis=-1} : f32[N,6]  # "cat"
  return %1, %2
}"#,
        },
        Case {
            name: "concat with a constant copies it in first; a concat of inputs of other quantization requantizes them by table",
            shapes: &[&[2, 3], &[2, 3]],
            qir: r#"graph m(%y: f32[2,3], %q: u8<0.1:0>[N,3]) -> (a: f32[2,4], b: u8<0.2:0>[N,6]) {
  %0 = const f32[2,1] = [1.5, -1.5]  # "column"
  %1 = concat %y, %0 {axis=1} : f32[2,4]  # "cat_const"
  %2 = qconcat %q, %q {axis=1} : u8<0.2:0>[N,6]  # "qcat_rescale"
  return %1, %2
}"#,
        },
    ];

    #[test]
    fn movement_family_lowering() {
        check_family("movement", CASES);
    }

    /// A strided view regrouped as other dims, where `regroup` manages, reads the elements the
    /// view's row-major order lists under the new dims; where it does not, a cut falls inside an
    /// axis it does not divide. Every factorization of 24 over views of a 2x3x4 tensor
    /// (transposed, a reversed axis, a merged pair that no single stride walks).
    #[test]
    fn regrouped_views_keep_their_order() {
        fn offsets(axes: &[(usize, isize)], base: isize) -> Vec<isize> {
            let n: usize = axes.iter().map(|a| a.0).product();
            (0..n)
                .map(|mut i| {
                    let mut off = base;
                    for &(d, s) in axes.iter().rev() {
                        off += (i % d) as isize * s;
                        i /= d;
                    }
                    off
                })
                .collect()
        }
        let views: [(&[(usize, isize)], isize); 4] = [
            (&[(2, 12), (3, 4), (4, 1)], 0),
            (&[(4, 1), (3, 4), (2, 12)], 0),
            (&[(2, 12), (3, 4), (4, -1)], 3),
            (&[(3, 4), (2, 12), (4, 1)], 0),
        ];
        let shapes: [&[usize]; 11] = [
            &[24],
            &[2, 12],
            &[6, 4],
            &[4, 6],
            &[2, 3, 4],
            &[3, 2, 4],
            &[2, 2, 6],
            &[1, 24, 1],
            &[2, 1, 3, 4],
            &[8, 3],
            &[12, 2],
        ];
        let mut found = vec![];
        for (fine, base) in views {
            let want = offsets(fine, base);
            let mut count = 0;
            for new in shapes {
                if let Some(groups) = regroup(fine, new) {
                    assert_eq!(groups.len(), new.len());
                    for (g, &d) in groups.iter().zip(new) {
                        assert_eq!(g.iter().map(|f| f.0).product::<usize>(), d, "{fine:?} as {new:?}");
                    }
                    let flat: Vec<(usize, isize)> = groups.into_iter().flatten().collect();
                    assert_eq!(offsets(&flat, base), want, "{fine:?} as {new:?}");
                    count += 1;
                }
            }
            found.push(count);
        }
        // the plain view is one run (all eleven); the transposed 4x3x2 walked 2, 3, 4 from the
        // inside takes 24, 2x12, 4x6, 2x2x6, 1x24x1 and 12x2; the reversed one (a 6-run of
        // stride 4 outside a 4 of stride -1) eight, the swapped 3x2x4 five
        assert_eq!(found, vec![11, 6, 8, 5]);
        assert!(regroup(&[(4, 1), (3, 4), (2, 12)], &[6, 4]).is_none());
    }
}
