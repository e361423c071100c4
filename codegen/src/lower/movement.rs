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

    /// A strided view of the input in plain order: output element `(o_0, .., o_r)` reads input
    /// element `base + sum(o_a * strides[a])` (strides in elements, negative for a reversed axis).
    fn strided_view(&mut self, n: &At, x: Value, strides: Vec<isize>, base: usize) -> Lw {
        let dout = need(dims(&n.oty), "the result shape is not fixed")?;
        let elem = n.oty.dtype.size_bytes();
        ensure(matches!(elem, 1 | 2 | 4 | 8), "an element size other than 1, 2, 4 or 8 bytes")?;
        ensure(strides.len() == dout.len(), "the strides do not fit the rank")?;
        // a scalar result (a gather of one element of a vector) is one element along one axis
        let (dout, strides) = if dout.is_empty() { (vec![1], vec![0]) } else { (dout, strides) };
        let mut index = dout;
        // two's complement: the view's offsets are computed in wrapping arithmetic
        index.extend(strides.iter().map(|&s| s as usize));
        index.push(base);
        let input = self.plain(x, &n.name)?;
        let output = self.define(n.out, Layout::Plain);
        let len = numel(&n.oty);
        let op = RowOp { index, ..RowOp::elementwise(RowKind::StridedView { elem }, len) };
        self.push(&n.name, StepKind::Rows { op, input, input2: None, output, units: len.div_ceil(rowops::CHUNK) });
        Ok(())
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
        let st = Self::row_major(&din);
        let strides = perm.iter().map(|&p| st.get(p).copied()).collect::<Option<Vec<_>>>();
        let strides = need(strides, "a permutation entry is out of range")?;
        self.strided_view(n, x, strides, 0)
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
        let st = Self::row_major(&din);
        let mut strides = st.clone();
        let mut base = 0isize;
        for i in 0..starts.len() {
            let a = need(infer::norm_axis(axes[i], din.len()).ok(), "an axis is out of range")?;
            let (s, _) = need(infer::slice_bounds(din[a], starts[i], ends[i], steps[i]).ok(), "bad slice bounds")?;
            base += s as isize * st[a];
            strides[a] = steps[i] as isize * st[a];
        }
        ensure(base >= 0, "a negative base offset")?;
        self.strided_view(n, x, strides, base as usize)
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
        let st = Self::row_major(&din);
        let base = ids[0] as isize * st[a];
        let mut strides = st.clone();
        match idx.shape().len() {
            0 => {
                strides.remove(a);
            }
            1 => {
                let step = ids.get(1).map_or(0, |&i1| i1 - ids[0]);
                if !ids.windows(2).all(|w| w[1] - w[0] == step) {
                    return self.gather_rows(n, x, a, &ids);
                }
                strides[a] = step as isize * st[a];
            }
            _ => return self.gather_rows(n, x, a, &ids),
        }
        self.strided_view(n, x, strides, base as usize)
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
        self.strided_view(n, x, st.into_iter().map(|v| v as isize).collect(), 0)
    }

    /// Reshape, flatten, squeeze, unsqueeze and identity: the result is the input's buffer in
    /// plain order under the new type (no step).
    pub(super) fn alias(&mut self, n: &At) -> Lw {
        let x = need(n.input(0).filter(|v| !self.is_const(*v)), "the input is a constant")?;
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

    const CASES: &[Case] = &[
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
}
