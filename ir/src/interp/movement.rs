//! Data movement on any dtype (quantization parameters pass through unchanged): reshape, flatten,
//! (un)squeeze, identity, transpose, concat, slice, gather, split, expand, pad, tile, GatherND,
//! ScatterElements and ScatterND; and cast.
//!
//! Cast follows [`crate::numerics`] (Cast): float to integer truncates toward zero and saturates
//! (NaN gives 0); integer to integer wraps (two's complement); anything to bool is `!= 0`; to a
//! float type rounds the exact source value once to nearest even.
//!
//! Every kernel here builds its result directly, element by element, in a vector allocated
//! fallibly ([`crate::limits::try_vec`]): no widened copy of the input, so the result (checked
//! against the size limit before the kernel runs) is the only allocation the size of the data.

use super::{map_data, numel, strides, tensor, Cx, Nums, Walker, R};
use crate::infer::{norm_axis, slice_bounds};
use crate::limits::{try_copy, try_vec};
use crate::{numerics, DType, DimExpr, PadMode, ScatterReduction, Tensor, TensorData, TensorType};
use half::{bf16, f16};

/// Same data, the inferred shape (reshape, flatten, squeeze, unsqueeze, identity).
pub(crate) fn reshape(cx: &Cx) -> R<Tensor> {
    let x = cx.x(0)?;
    tensor(cx.out_shape(0), map_data!(x.data(), v => try_copy(v)?))
}

/// Copies the elements of a strided view (base offset, per-axis strides over `shape`).
fn gather_view<T: Copy>(src: &[T], shape: &[usize], base: isize, st: Vec<isize>) -> R<Vec<T>> {
    let n = numel(shape).ok_or("result too large")?;
    let mut w = Walker::new(shape, vec![(base, st)]);
    let mut out = try_vec(n)?;
    for _ in 0..n {
        let o = w.offs()[0];
        out.push(*src.get(o as usize).ok_or("internal: view out of bounds")?);
        w.step();
    }
    Ok(out)
}

fn view(x: &Tensor, shape: &[usize], base: isize, st: Vec<isize>) -> R<Tensor> {
    let data = map_data!(x.data(), v => gather_view(v, shape, base, st.clone())?);
    tensor(shape.to_vec(), data)
}

pub(crate) fn transpose(cx: &Cx, perm: &[usize]) -> R<Tensor> {
    let x = cx.x(0)?;
    let st = strides(x.shape());
    if perm.len() != x.rank() || perm.iter().any(|&p| p >= x.rank()) {
        return Err(format!("perm {perm:?} does not fit rank {}", x.rank()));
    }
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    view(x, &shape, 0, perm.iter().map(|&p| st[p] as isize).collect())
}

pub(crate) fn slice(cx: &Cx, starts: &[i64], ends: &[i64], axes: &[i64], steps: &[i64]) -> R<Tensor> {
    let x = cx.x(0)?;
    let st = strides(x.shape());
    let mut vst: Vec<isize> = st.iter().map(|&s| s as isize).collect();
    let mut base = 0isize;
    for i in 0..starts.len() {
        let a = norm_axis(axes[i], x.rank())?;
        let (s, _) = slice_bounds(x.shape()[a], starts[i], ends[i], steps[i])?;
        base += s as isize * st[a] as isize;
        vst[a] = steps[i] as isize * st[a] as isize;
    }
    let shape = cx.out_shape(0);
    if numel(&shape) == Some(0) {
        return view(x, &shape, 0, vec![0; shape.len()]);
    }
    view(x, &shape, base, vst)
}

/// Numpy broadcast of the input to the inferred shape.
pub(crate) fn expand(cx: &Cx) -> R<Tensor> {
    let x = cx.x(0)?;
    let shape = cx.out_shape(0);
    let st = super::broadcast_strides(x.shape(), &shape)?;
    view(x, &shape, 0, st)
}

pub(crate) fn concat(cx: &Cx, axis: i64) -> R<Tensor> {
    let first = cx.x(0)?;
    let a = norm_axis(axis, first.rank())?;
    let parts: Vec<&Tensor> = (0..cx.inputs.len()).map(|i| cx.x(i)).collect::<R<_>>()?;
    concat_tensors(&parts, a, cx.out_shape(0))
}

/// Concatenates same-dtype tensors along axis `a` into `shape`.
pub(crate) fn concat_tensors(parts: &[&Tensor], a: usize, shape: Vec<usize>) -> R<Tensor> {
    let outer = numel(&shape[..a]).ok_or("result too large")?;
    let inner = numel(&shape[a + 1..]).ok_or("result too large")?;
    fn cat<T: Copy>(srcs: &[&[T]], blocks: &[usize], outer: usize) -> R<Vec<T>> {
        let mut out = try_vec(blocks.iter().sum::<usize>().saturating_mul(outer))?;
        for o in 0..outer {
            for (s, &b) in srcs.iter().zip(blocks) {
                let part = s.get(o * b..(o + 1) * b).ok_or("internal: a part is shorter than its shape")?;
                out.extend_from_slice(part);
            }
        }
        Ok(out)
    }
    let blocks: Vec<usize> = parts.iter().map(|t| t.shape().get(a).copied().unwrap_or(0) * inner).collect();
    macro_rules! go {
        ($var:ident) => {{
            let mut srcs = Vec::with_capacity(parts.len());
            for t in parts {
                match t.data() {
                    TensorData::$var(v) => srcs.push(v.as_slice()),
                    d => return Err(format!("concatenating {} with {}", parts[0].dtype(), d.dtype())),
                }
            }
            TensorData::$var(cat(&srcs, &blocks, outer)?)
        }};
    }
    let data = match parts.first().ok_or("nothing to concatenate")?.data() {
        TensorData::F32(_) => go!(F32),
        TensorData::F16(_) => go!(F16),
        TensorData::BF16(_) => go!(BF16),
        TensorData::I8(_) => go!(I8),
        TensorData::U8(_) => go!(U8),
        TensorData::I32(_) => go!(I32),
        TensorData::I64(_) => go!(I64),
        TensorData::Bool(_) => go!(Bool),
        TensorData::F64(_) => go!(F64),
        TensorData::I16(_) => go!(I16),
        TensorData::U16(_) => go!(U16),
        TensorData::U32(_) => go!(U32),
        TensorData::U64(_) => go!(U64),
    };
    tensor(shape, data)
}

pub(crate) fn split(cx: &Cx, axis: i64, sizes: &[usize]) -> R<Vec<Tensor>> {
    let x = cx.x(0)?;
    let a = norm_axis(axis, x.rank())?;
    let st = strides(x.shape());
    let mut start = 0usize;
    let mut out = Vec::with_capacity(sizes.len());
    for (i, &s) in sizes.iter().enumerate() {
        let shape = cx.out_shape(i);
        let base = if numel(&shape) == Some(0) { 0 } else { (start * st[a]) as isize };
        out.push(view(x, &shape, base, st.iter().map(|&v| v as isize).collect())?);
        start += s;
    }
    Ok(out)
}

pub(crate) fn gather(cx: &Cx, axis: i64) -> R<Tensor> {
    let (x, idx) = (cx.x(0)?, cx.x(1)?);
    let a = norm_axis(axis, x.rank())?;
    let dim = x.shape()[a];
    let ids = idx.to_i64_vec().ok_or("indices must be integers")?;
    let mut rows = Vec::with_capacity(ids.len());
    for &i in &ids {
        let j = if i < 0 { i + dim as i64 } else { i };
        if j < 0 || j >= dim as i64 {
            return Err(format!("index {i} out of range for axis {a} of size {dim}"));
        }
        rows.push(j as usize);
    }
    let outer = numel(&x.shape()[..a]).ok_or("input too large")?;
    let inner = numel(&x.shape()[a + 1..]).ok_or("input too large")?;
    fn pick<T: Copy>(v: &[T], rows: &[usize], outer: usize, dim: usize, inner: usize) -> R<Vec<T>> {
        let mut out = try_vec(outer.saturating_mul(rows.len()).saturating_mul(inner))?;
        for o in 0..outer {
            for &r in rows {
                let s = (o * dim + r) * inner;
                out.extend_from_slice(v.get(s..s + inner).ok_or("internal: gather out of bounds")?);
            }
        }
        Ok(out)
    }
    let data = map_data!(x.data(), v => pick(v, &rows, outer, dim, inner)?);
    tensor(cx.out_shape(0), data)
}

/// Dims `start..end` of the input, as i64.
pub(crate) fn shape(cx: &Cx, start: usize, end: usize) -> R<Tensor> {
    // the input's concrete type: its value is never read
    let x = cx.in_types.first().cloned().flatten().and_then(|t| t.shape.as_fixed()).ok_or("input 0 is missing")?;
    let dims = x.get(start..end).ok_or("dims out of range")?;
    let v: Vec<i64> =
        dims.iter().map(|&d| i64::try_from(d).map_err(|_| "dim too large".to_string())).collect::<R<_>>()?;
    Ok(Tensor::from_i64(vec![v.len()], v))
}

/// `start, start + delta, ...` (the length is the inferred one).
pub(crate) fn range(cx: &Cx, start: &DimExpr, delta: i64) -> R<Tensor> {
    let refs: Vec<Option<&TensorType>> = cx.in_types.iter().map(Option::as_ref).collect();
    let s = crate::infer::dim_expr(start, &refs)?.fixed().ok_or("range start is not concrete")?;
    let s = i64::try_from(s).map_err(|_| "range start too large")?;
    let shape = cx.out_shape(0);
    let n = shape.first().copied().unwrap_or(0);
    let v: Vec<i64> = (0..n as i64).map(|i| s.saturating_add(i.saturating_mul(delta))).collect();
    Ok(match cx.out_dtype(0) {
        DType::F32 => Tensor::from_f32(shape, v.iter().map(|&x| x as f32).collect()),
        d => Tensor::from_i64_wrapping(d, shape, &v),
    })
}

/// ONNX GatherElements: `out[i..] = data[i.. with axis replaced by indices[i..]]`.
pub(crate) fn gather_elements(cx: &Cx, axis: i64) -> R<Tensor> {
    let (x, idx) = (cx.x(0)?, cx.x(1)?);
    let a = norm_axis(axis, x.rank())?;
    let ids = idx.to_i64_vec().ok_or("indices must be integers")?;
    let (dshape, ishape) = (x.shape(), idx.shape());
    if dshape.len() != ishape.len() {
        return Err("data and indices differ in rank".into());
    }
    let dim = dshape[a] as i64;
    let dst = strides(dshape);
    let mut offs = Vec::with_capacity(ids.len());
    let mut coord = vec![0usize; ishape.len()];
    for &i in &ids {
        let j = if i < 0 { i + dim } else { i };
        if j < 0 || j >= dim {
            return Err(format!("index {i} out of range for axis {a} of size {dim}"));
        }
        let mut o = 0usize;
        for (k, &c) in coord.iter().enumerate() {
            let c = if k == a { j as usize } else { c };
            if c >= dshape[k] {
                return Err(format!("indices of shape {ishape:?} exceed data of shape {dshape:?} on axis {k}"));
            }
            o += c * dst[k];
        }
        offs.push(o);
        for k in (0..coord.len()).rev() {
            coord[k] += 1;
            if coord[k] < ishape[k] {
                break;
            }
            coord[k] = 0;
        }
    }
    fn pick<T: Copy>(v: &[T], offs: &[usize]) -> Vec<T> {
        offs.iter().map(|&o| v[o]).collect()
    }
    let data = map_data!(x.data(), v => pick(v, &offs));
    tensor(cx.out_shape(0), data)
}

/// ONNX GatherND: each index tuple (the last axis of `indices`, `m` entries) addresses a slice
/// of `data` after the `batch_dims` axes both share; the slices are copied in order.
pub(crate) fn gather_nd(cx: &Cx, batch_dims: usize) -> R<Tensor> {
    let (x, idx) = (cx.x(0)?, cx.x(1)?);
    let ids = idx.to_i64_vec().ok_or("indices must be integers")?;
    let (ds, is) = (x.shape(), idx.shape());
    let b = batch_dims;
    let m = *is.last().ok_or("indices must have rank 1 or more")?;
    let batches = numel(&ds[..b]).ok_or("input too large")?;
    let per_batch = numel(&is[b..is.len() - 1]).ok_or("input too large")?;
    let slice = numel(&ds[b + m..]).ok_or("input too large")?;
    let batch_stride = numel(&ds[b..]).ok_or("input too large")?;
    let st = strides(&ds[b..]);
    let mut starts = try_vec(batches.saturating_mul(per_batch))?;
    for bi in 0..batches {
        for p in 0..per_batch {
            let tuple = &ids[(bi * per_batch + p) * m..][..m];
            let mut off = bi * batch_stride;
            for (j, &i) in tuple.iter().enumerate() {
                off += super::index_in(i, ds[b + j], "gather_nd")? * st[j];
            }
            starts.push(off);
        }
    }
    fn pick<T: Copy>(v: &[T], starts: &[usize], slice: usize) -> R<Vec<T>> {
        let mut out = try_vec(starts.len().saturating_mul(slice))?;
        for &s in starts {
            out.extend_from_slice(v.get(s..s + slice).ok_or("internal: gather_nd out of bounds")?);
        }
        Ok(out)
    }
    let data = map_data!(x.data(), v => pick(v, &starts, slice)?);
    tensor(cx.out_shape(0), data)
}

/// Combines an update with the value it lands on (ONNX scatter `reduction`). Floats: f32
/// arithmetic, max/min propagate NaN; integers: wrapping arithmetic in i64 (wrapped into the
/// storage type when the result is built).
fn combine(r: ScatterReduction, nums: &mut Nums, at: usize, upd: &Nums, from: usize) -> R<()> {
    match (nums, upd) {
        (Nums::F(d), Nums::F(u)) => {
            let (a, b) = (d[at], u[from]);
            d[at] = match r {
                ScatterReduction::None => b,
                ScatterReduction::Add => a + b,
                ScatterReduction::Mul => a * b,
                ScatterReduction::Max if a.is_nan() || b.is_nan() => f32::NAN,
                ScatterReduction::Min if a.is_nan() || b.is_nan() => f32::NAN,
                ScatterReduction::Max => a.max(b),
                ScatterReduction::Min => a.min(b),
            };
        }
        (Nums::I(d), Nums::I(u)) => {
            let (a, b) = (d[at], u[from]);
            d[at] = match r {
                ScatterReduction::None => b,
                ScatterReduction::Add => a.wrapping_add(b),
                ScatterReduction::Mul => a.wrapping_mul(b),
                ScatterReduction::Max => a.max(b),
                ScatterReduction::Min => a.min(b),
            };
        }
        _ => return Err("data and updates differ in type".into()),
    }
    Ok(())
}

/// ONNX ScatterElements (and Scatter): the updates in row-major order of `indices`, each at its
/// own position with the index along `axis` replaced by the index value, combined by `reduction`
/// (later updates see earlier ones, as in the ONNX reference).
pub(crate) fn scatter_elements(cx: &Cx, axis: i64, reduction: ScatterReduction) -> R<Tensor> {
    let (x, idx, upd) = (cx.x(0)?, cx.x(1)?, cx.x(2)?);
    let a = norm_axis(axis, x.rank())?;
    let ids = idx.to_i64_vec().ok_or("indices must be integers")?;
    let (ds, is) = (x.shape(), idx.shape());
    let dst = strides(ds);
    let mut out = Nums::of(x)?;
    let u = Nums::of(upd)?;
    let mut coord = vec![0usize; is.len()];
    for (n, &i) in ids.iter().enumerate() {
        let j = super::index_in(i, ds[a], "scatter_elements")?;
        let mut o = 0usize;
        for (k, &c) in coord.iter().enumerate() {
            let c = if k == a { j } else { c };
            if c >= ds[k] {
                return Err(format!("indices of shape {is:?} exceed data of shape {ds:?} on axis {k}"));
            }
            o += c * dst[k];
        }
        combine(reduction, &mut out, o, &u, n)?;
        for k in (0..coord.len()).rev() {
            coord[k] += 1;
            if coord[k] < is[k] {
                break;
            }
            coord[k] = 0;
        }
    }
    out.into_tensor(x.dtype(), ds.to_vec())
}

/// ONNX ScatterND: update slice `k` (of the data's trailing axes after the `m` the tuple
/// addresses) lands at the position index tuple `k` names, in order, combined by `reduction`.
pub(crate) fn scatter_nd(cx: &Cx, reduction: ScatterReduction) -> R<Tensor> {
    let (x, idx, upd) = (cx.x(0)?, cx.x(1)?, cx.x(2)?);
    let ids = idx.to_i64_vec().ok_or("indices must be integers")?;
    let (ds, is) = (x.shape(), idx.shape());
    let m = *is.last().ok_or("indices must have rank 1 or more")?;
    let tuples = numel(&is[..is.len() - 1]).ok_or("input too large")?;
    let slice = numel(&ds[m..]).ok_or("input too large")?;
    let st = strides(ds);
    let mut out = Nums::of(x)?;
    let u = Nums::of(upd)?;
    for t in 0..tuples {
        let mut off = 0usize;
        for (j, &i) in ids[t * m..][..m].iter().enumerate() {
            off += super::index_in(i, ds[j], "scatter_nd")? * st[j];
        }
        for e in 0..slice {
            combine(reduction, &mut out, off + e, &u, t * slice + e)?;
        }
    }
    out.into_tensor(x.dtype(), ds.to_vec())
}

/// A source element of a cast: an integer (bool and every integer type, exactly) or a float
/// (f32, f64, or f16/bf16, exactly).
#[derive(Clone, Copy)]
enum Elem {
    Int(i128),
    Float(f64),
}

/// `f(source element)` for every element of `x`, in order, into a fallibly allocated vector.
fn map_elems<T>(x: &Tensor, f: impl Fn(Elem) -> T) -> R<Vec<T>> {
    let mut out = try_vec(x.len())?;
    match x.data() {
        TensorData::F32(v) => out.extend(v.iter().map(|&a| f(Elem::Float(a as f64)))),
        TensorData::F16(v) => out.extend(v.iter().map(|a| f(Elem::Float(a.to_f64())))),
        TensorData::BF16(v) => out.extend(v.iter().map(|a| f(Elem::Float(a.to_f64())))),
        TensorData::F64(v) => out.extend(v.iter().map(|&a| f(Elem::Float(a)))),
        TensorData::I8(v) => out.extend(v.iter().map(|&a| f(Elem::Int(a as i128)))),
        TensorData::U8(v) => out.extend(v.iter().map(|&a| f(Elem::Int(a as i128)))),
        TensorData::I16(v) => out.extend(v.iter().map(|&a| f(Elem::Int(a as i128)))),
        TensorData::U16(v) => out.extend(v.iter().map(|&a| f(Elem::Int(a as i128)))),
        TensorData::I32(v) => out.extend(v.iter().map(|&a| f(Elem::Int(a as i128)))),
        TensorData::U32(v) => out.extend(v.iter().map(|&a| f(Elem::Int(a as i128)))),
        TensorData::I64(v) => out.extend(v.iter().map(|&a| f(Elem::Int(a as i128)))),
        TensorData::U64(v) => out.extend(v.iter().map(|&a| f(Elem::Int(a as i128)))),
        TensorData::Bool(v) => out.extend(v.iter().map(|&a| f(Elem::Int(a as i128)))),
    }
    Ok(out)
}

/// ONNX Cast, one element at a time into the result, with no widened copy of the input; the
/// element rules are [`numerics`]' (Cast): a float to an integer truncates and saturates
/// ([`numerics::cast_float_to_int`]), an integer to an integer keeps the low bits, anything to
/// bool is `!= 0`, and a float target rounds the exact source value once to nearest even.
pub(crate) fn cast(x: &Tensor, to: DType) -> R<Tensor> {
    let shape = x.shape().to_vec();
    if x.dtype() == to {
        return tensor(shape, map_data!(x.data(), v => try_copy(v)?));
    }
    // The target's integer value: exact for a float (saturated), the source itself for an integer
    // (the `as` below keeps its low bits).
    let int = move |e: Elem| -> i128 {
        match e {
            Elem::Int(i) => i,
            Elem::Float(f) => numerics::cast_float_to_int(f, to),
        }
    };
    // Rust's `as` from i128 to a float rounds to nearest even, as does `from_f64` of `half`.
    let real = |e: Elem| -> f64 {
        match e {
            Elem::Int(i) => i as f64,
            Elem::Float(f) => f,
        }
    };
    let data = match to {
        DType::Bool => TensorData::Bool(map_elems(x, |e| match e {
            Elem::Int(i) => i != 0,
            Elem::Float(f) => f != 0.0,
        })?),
        // An integer to f32 rounds once from the exact value (not through f64).
        DType::F32 => TensorData::F32(map_elems(x, |e| match e {
            Elem::Int(i) => i as f32,
            Elem::Float(f) => f as f32,
        })?),
        DType::F64 => TensorData::F64(map_elems(x, real)?),
        // f16/bf16 from an integer round through f64 (exact to 2^53; see `numerics`).
        DType::F16 => TensorData::F16(map_elems(x, |e| f16::from_f64(real(e)))?),
        DType::BF16 => TensorData::BF16(map_elems(x, |e| bf16::from_f64(real(e)))?),
        DType::I8 => TensorData::I8(map_elems(x, |e| int(e) as i8)?),
        DType::U8 => TensorData::U8(map_elems(x, |e| int(e) as u8)?),
        DType::I16 => TensorData::I16(map_elems(x, |e| int(e) as i16)?),
        DType::U16 => TensorData::U16(map_elems(x, |e| int(e) as u16)?),
        DType::I32 => TensorData::I32(map_elems(x, |e| int(e) as i32)?),
        DType::U32 => TensorData::U32(map_elems(x, |e| int(e) as u32)?),
        DType::I64 => TensorData::I64(map_elems(x, |e| int(e) as i64)?),
        DType::U64 => TensorData::U64(map_elems(x, |e| int(e) as u64)?),
    };
    tensor(shape, data)
}

/// The elements of a tensor of `out_shape` read from `src` (row-major, of `in_shape`) through
/// `maps[axis][out_index]` (`None`: outside the input, `fill`), built without any temporary
/// beyond the per-axis maps.
fn mapped<T: Copy>(
    src: &[T],
    in_shape: &[usize],
    out_shape: &[usize],
    maps: &[Vec<Option<usize>>],
    fill: T,
) -> R<Vec<T>> {
    let n = numel(out_shape).ok_or("result too large")?;
    let st = strides(in_shape);
    let mut out = try_vec(n)?;
    let mut idx = vec![0usize; out_shape.len()];
    for _ in 0..n {
        let mut off = Some(0usize);
        for (a, &i) in idx.iter().enumerate() {
            off = match (off, maps[a][i]) {
                (Some(o), Some(j)) => Some(o + j * st[a]),
                _ => None,
            };
        }
        out.push(match off {
            Some(o) => *src.get(o).ok_or("internal: offset out of range")?,
            None => fill,
        });
        for a in (0..idx.len()).rev() {
            idx[a] += 1;
            if idx[a] < out_shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    Ok(out)
}

/// Bytes of the per-axis maps [`mapped`] reads through (pad and tile make no other temporary).
pub(crate) fn map_bytes(out_shape: &[usize]) -> u128 {
    let entries = out_shape.iter().fold(0u128, |a, &d| a.saturating_add(d as u128));
    entries.saturating_mul(size_of::<Option<usize>>() as u128)
}

/// The input position each output position of every axis reads under ONNX Pad (`None`: the
/// fill), as [`pad`] computes it; the JIT's pad kernel gathers through the same maps.
pub fn pad_maps(mode: PadMode, pads: &[i64], in_shape: &[usize], out_shape: &[usize]) -> R<Vec<Vec<Option<usize>>>> {
    let r = in_shape.len();
    if pads.len() != 2 * r || out_shape.len() != r {
        return Err(format!("{} pads for rank {r}", pads.len()));
    }
    let mut maps = Vec::with_capacity(r);
    for a in 0..r {
        let n = in_shape[a] as i64;
        let map: Vec<Option<usize>> = (0..out_shape[a] as i64)
            .map(|o| {
                let i = o - pads[a];
                if (0..n).contains(&i) {
                    return Some(i as usize);
                }
                match mode {
                    PadMode::Constant => None,
                    _ if n == 0 => None,
                    PadMode::Edge => Some(i.clamp(0, n - 1) as usize),
                    PadMode::Wrap => Some(i.rem_euclid(n) as usize),
                    PadMode::Reflect if n == 1 => Some(0),
                    PadMode::Reflect => {
                        let p = 2 * (n - 1);
                        let k = i.rem_euclid(p);
                        Some(if k < n { k } else { p - k } as usize)
                    }
                }
            })
            .collect();
        if mode != PadMode::Constant && n == 0 && !map.is_empty() {
            return Err(format!("cannot pad the empty axis {a} in {mode:?} mode"));
        }
        maps.push(map);
    }
    Ok(maps)
}

/// ONNX Pad (see [`crate::PadMode`]): output position `o` along an axis reads input position
/// `o - pad_begin`; outside the input, constant mode fills, edge clamps, reflect mirrors without
/// repeating the edge (period `2 * (n - 1)`, as numpy's `reflect` for any pad length) and wrap
/// reads modulo `n`.
pub(crate) fn pad(cx: &Cx, mode: PadMode, pads: &[i64], value: f64) -> R<Tensor> {
    let x = cx.x(0)?;
    let (in_shape, out_shape) = (x.shape(), cx.out_shape(0));
    let maps = pad_maps(mode, pads, in_shape, &out_shape)?;
    let fill = Tensor::from_f64_iter(x.dtype(), vec![1], std::iter::once(value));
    let data = match (x.data(), fill.data()) {
        (TensorData::F32(v), TensorData::F32(f)) => TensorData::F32(mapped(v, in_shape, &out_shape, &maps, f[0])?),
        (TensorData::F16(v), TensorData::F16(f)) => TensorData::F16(mapped(v, in_shape, &out_shape, &maps, f[0])?),
        (TensorData::BF16(v), TensorData::BF16(f)) => TensorData::BF16(mapped(v, in_shape, &out_shape, &maps, f[0])?),
        (TensorData::I8(v), TensorData::I8(f)) => TensorData::I8(mapped(v, in_shape, &out_shape, &maps, f[0])?),
        (TensorData::U8(v), TensorData::U8(f)) => TensorData::U8(mapped(v, in_shape, &out_shape, &maps, f[0])?),
        (TensorData::I32(v), TensorData::I32(f)) => TensorData::I32(mapped(v, in_shape, &out_shape, &maps, f[0])?),
        (TensorData::I64(v), TensorData::I64(f)) => TensorData::I64(mapped(v, in_shape, &out_shape, &maps, f[0])?),
        (TensorData::Bool(v), TensorData::Bool(f)) => TensorData::Bool(mapped(v, in_shape, &out_shape, &maps, f[0])?),
        (TensorData::F64(v), TensorData::F64(f)) => TensorData::F64(mapped(v, in_shape, &out_shape, &maps, f[0])?),
        (TensorData::I16(v), TensorData::I16(f)) => TensorData::I16(mapped(v, in_shape, &out_shape, &maps, f[0])?),
        (TensorData::U16(v), TensorData::U16(f)) => TensorData::U16(mapped(v, in_shape, &out_shape, &maps, f[0])?),
        (TensorData::U32(v), TensorData::U32(f)) => TensorData::U32(mapped(v, in_shape, &out_shape, &maps, f[0])?),
        (TensorData::U64(v), TensorData::U64(f)) => TensorData::U64(mapped(v, in_shape, &out_shape, &maps, f[0])?),
        _ => return Err("internal: pad fill of another dtype".into()),
    };
    tensor(out_shape, data)
}

/// ONNX Tile: output position `o` along axis `a` reads input position `o mod n`.
pub(crate) fn tile(cx: &Cx) -> R<Tensor> {
    let x = cx.x(0)?;
    let out_shape = cx.out_shape(0);
    let maps: Vec<Vec<Option<usize>>> =
        x.shape().iter().zip(&out_shape).map(|(&n, &m)| (0..m).map(|o| Some(o % n.max(1))).collect()).collect();
    fn first<T: Copy + Default>(v: &[T]) -> T {
        v.first().copied().unwrap_or_default()
    }
    let data = map_data!(x.data(), v => mapped(v, x.shape(), &out_shape, &maps, first(v))?);
    tensor(out_shape, data)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::{Op, QuantParams, Shape, TensorType};

    fn iota(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_i64(shape.to_vec(), (0..n as i64).collect())
    }

    #[test]
    fn reshape_family() {
        let x = iota(&[2, 3, 4]);
        let y = eval1(&Op::Reshape { shape: vec![0, -1] }, &[&x]).unwrap();
        assert_eq!(y.shape(), &[2, 12]);
        let y = eval1(&Op::Flatten { axis: 2 }, &[&x]).unwrap();
        assert_eq!(y.shape(), &[6, 4]);
        let y = eval1(&Op::Unsqueeze { axes: vec![0, -1] }, &[&x]).unwrap();
        assert_eq!(y.shape(), &[1, 2, 3, 4, 1]);
        let y = eval1(&Op::Squeeze { axes: vec![] }, &[&y]).unwrap();
        assert_eq!(y.shape(), &[2, 3, 4]);
        assert_eq!(y.to_i64_vec(), x.to_i64_vec());
    }

    #[test]
    fn transpose_and_slice() {
        let x = iota(&[2, 3]);
        let y = eval1(&Op::Transpose { perm: vec![1, 0] }, &[&x]).unwrap();
        assert_eq!((y.shape(), y.to_i64_vec().unwrap()), (&[3usize, 2][..], vec![0, 3, 1, 4, 2, 5]));
        let x = iota(&[3, 5]);
        let op = Op::Slice { starts: vec![1, -1], ends: vec![3, 0], axes: vec![0, 1], steps: vec![1, -2] };
        let y = eval1(&op, &[&x]).unwrap();
        assert_eq!((y.shape(), y.to_i64_vec().unwrap()), (&[2usize, 2][..], vec![9, 7, 14, 12]));
        let op = Op::Slice { starts: vec![0], ends: vec![i64::MAX], axes: vec![1], steps: vec![3] };
        assert_eq!(eval1(&op, &[&x]).unwrap().to_i64_vec().unwrap(), vec![0, 3, 5, 8, 10, 13]);
        let op = Op::Slice { starts: vec![4], ends: vec![2], axes: vec![1], steps: vec![1] };
        assert_eq!(eval1(&op, &[&x]).unwrap().shape(), &[3, 0]);
        let op = Op::Slice { starts: vec![-1], ends: vec![i64::MIN], axes: vec![0], steps: vec![-1] };
        let y = eval1(&op, &[&x]).unwrap();
        assert_eq!(y.shape(), &[3, 5]);
        assert_eq!(&y.to_i64_vec().unwrap()[..5], &[10, 11, 12, 13, 14]);
        let empty = iota(&[0, 2]);
        assert_eq!(eval1(&op, &[&empty]).unwrap().shape(), &[0, 2]);
    }

    #[test]
    fn gather_elements_follows_onnx() {
        // The ONNX spec's examples: axis 1 and axis 0, negative indices wrap.
        let data = Tensor::from_i64(vec![2, 2], vec![1, 2, 3, 4]);
        let idx = Tensor::from_i64(vec![2, 2], vec![0, 0, 1, 0]);
        let y = eval1(&Op::GatherElements { axis: 1 }, &[&data, &idx]).unwrap();
        assert_eq!(y.to_i64_vec().unwrap(), vec![1, 1, 4, 3]);
        let data = Tensor::from_i64(vec![3, 3], (1..=9).collect());
        let idx = Tensor::from_i64(vec![2, 3], vec![1, 2, 0, 2, 0, -3]);
        let y = eval1(&Op::GatherElements { axis: 0 }, &[&data, &idx]).unwrap();
        assert_eq!((y.shape(), y.to_i64_vec().unwrap()), (&[2usize, 3][..], vec![4, 8, 3, 7, 2, 3]));
        let bad = Tensor::from_i64(vec![1, 1], vec![3]);
        assert!(eval1(&Op::GatherElements { axis: 0 }, &[&data, &bad]).is_err());
        // indices larger than the data off the axis are a type error
        assert!(eval1(&Op::GatherElements { axis: 0 }, &[&data, &Tensor::from_i64(vec![1, 4], vec![0; 4])]).is_err());
    }

    #[test]
    fn shape_range_and_dynamic_sizes_read_input_dims() {
        use crate::DimExpr;
        let x = iota(&[2, 3, 4]);
        let y = eval1(&Op::Shape { start: 1, end: 3 }, &[&x]).unwrap();
        assert_eq!((y.shape(), y.to_i64_vec().unwrap()), (&[2usize][..], vec![3, 4]));
        let dim = |k, i, a| DimExpr::product(k, vec![(i, a)]);
        let op = Op::Range { start: DimExpr::fixed(0), limit: dim(1, 0, 2), delta: 1, dtype: DType::I64 };
        assert_eq!(eval1(&op, &[&x]).unwrap().to_i64_vec().unwrap(), vec![0, 1, 2, 3]);
        let op = Op::Range { start: DimExpr::fixed(10), limit: DimExpr::fixed(3), delta: -3, dtype: DType::I32 };
        let y = eval1(&op, &[&x]).unwrap();
        assert_eq!((y.dtype(), y.to_i64_vec().unwrap()), (DType::I32, vec![10, 7, 4]));
        // [2,3,4] -> [2*3, 4] with sizes read from the input itself, and from a second input
        let op = Op::ReshapeDyn { shape: vec![DimExpr::product(1, vec![(0, 0), (0, 1)]), dim(1, 1, 0)] };
        let y = eval1(&op, &[&x, &iota(&[4])]).unwrap();
        assert_eq!((y.shape(), y.to_i64_vec().unwrap()), (&[6usize, 4][..], (0..24).collect::<Vec<_>>()));
        let op = Op::ReshapeDyn { shape: vec![dim(2, 0, 0)] };
        assert!(eval1(&op, &[&x]).is_err(), "element counts differ");
        let op = Op::ExpandDyn { shape: vec![dim(1, 1, 0), DimExpr::fixed(1)] };
        let y = eval1(&op, &[&Tensor::from_i64(vec![1, 2], vec![7, 8]), &iota(&[3])]).unwrap();
        assert_eq!((y.shape(), y.to_i64_vec().unwrap()), (&[3usize, 2][..], vec![7, 8, 7, 8, 7, 8]));
    }

    #[test]
    fn concat_split_gather_expand() {
        let a = iota(&[2, 2]);
        let b = Tensor::from_i64(vec![2, 1], vec![10, 11]);
        let y = eval1(&Op::Concat { axis: 1 }, &[&a, &b]).unwrap();
        // concat requires equal types on every input but the axis dim: b has the same dtype
        assert_eq!((y.shape(), y.to_i64_vec().unwrap()), (&[2usize, 3][..], vec![0, 1, 10, 2, 3, 11]));
        let parts =
            super::super::eval_op(&Op::Split { axis: 1, sizes: vec![2, 1] }, &[Some(&ty(&y))], &[], &[Some(&y)])
                .unwrap();
        assert_eq!(parts[0], a);
        assert_eq!(parts[1], b);
        let idx = Tensor::from_i64(vec![2, 2], vec![2, -3, 0, 2]);
        let y = eval1(&Op::Gather { axis: 0 }, &[&iota(&[3]), &idx]).unwrap();
        assert_eq!((y.shape(), y.to_i64_vec().unwrap()), (&[2usize, 2][..], vec![2, 0, 0, 2]));
        let y = eval1(&Op::Gather { axis: 1 }, &[&iota(&[2, 3]), &Tensor::from_i64(vec![1], vec![1])]).unwrap();
        assert_eq!((y.shape(), y.to_i64_vec().unwrap()), (&[2usize, 1][..], vec![1, 4]));
        assert!(eval1(&Op::Gather { axis: 0 }, &[&iota(&[3]), &Tensor::from_i64(vec![1], vec![3])]).is_err());
        let y = eval1(&Op::Expand { shape: vec![2, 1, 3] }, &[&Tensor::from_i64(vec![3], vec![7, 8, 9])]).unwrap();
        assert_eq!((y.shape(), y.to_i64_vec().unwrap()), (&[2usize, 1, 3][..], vec![7, 8, 9, 7, 8, 9]));
    }

    #[test]
    fn movement_keeps_quantized_bytes() {
        let x = u8t(&[1, 2, 2], &[1, 2, 3, 4]);
        let q = QuantParams::per_tensor(0.5, 3);
        let op = Op::Transpose { perm: vec![0, 2, 1] };
        let y = evalq(&op, &[&x], &[qty(&x, q)], &[]).unwrap().remove(0);
        assert_eq!(y.data(), &TensorData::U8(vec![1, 3, 2, 4]));
    }

    /// The cast through widened copies (all elements to i64, or to f32), as it was written before
    /// it went element by element: the streaming cast must give the same bits for every pair.
    fn cast_through_copies(x: &Tensor, to: DType) -> Tensor {
        let shape = x.shape().to_vec();
        if x.dtype() == to {
            return x.clone();
        }
        if let Some(v) = x.to_i64_vec() {
            return Tensor::from_i64_wrapping(to, shape, &v);
        }
        let v = x.to_f32_vec();
        match to {
            DType::F32 | DType::F16 | DType::BF16 => Tensor::from_f32_slice(to, shape, &v),
            DType::Bool => Tensor::new(shape, TensorData::Bool(v.iter().map(|&f| f != 0.0).collect())).unwrap(),
            _ => {
                let (lo, hi) = to.int_range().unwrap();
                let ints: Vec<i64> = v.iter().map(|&f| (f as i64).clamp(lo, hi)).collect();
                Tensor::from_i64_wrapping(to, shape, &ints)
            }
        }
    }

    #[test]
    fn cast_matches_the_copying_formulas_for_every_pair() {
        let dtypes = [DType::F32, DType::F16, DType::BF16, DType::I8, DType::U8, DType::I32, DType::I64, DType::Bool];
        let floats = [0.0, -0.0, 0.5, -1.5, 2.5, 127.9, -128.9, 255.5, 65504.0, 1e10, -1e10, f32::NAN, f32::INFINITY];
        let ints = [0i64, 1, -1, 127, -128, 255, 256, 65535, 1 << 31, -(1 << 40), i64::MAX, i64::MIN];
        for from in dtypes {
            let x = if from.is_float() {
                Tensor::from_f32_slice(from, vec![floats.len()], &floats)
            } else {
                Tensor::from_i64_wrapping(from, vec![ints.len()], &ints)
            };
            for to in dtypes {
                let got = cast(&x, to).unwrap();
                let want = cast_through_copies(&x, to);
                assert_eq!(got.shape(), want.shape());
                let bits = |t: &Tensor| match t.data() {
                    TensorData::F32(v) => v.iter().map(|f| f.to_bits() as u64).collect::<Vec<_>>(),
                    TensorData::F16(v) => v.iter().map(|f| f.to_bits() as u64).collect(),
                    TensorData::BF16(v) => v.iter().map(|f| f.to_bits() as u64).collect(),
                    _ => t.to_i64_vec().unwrap().iter().map(|&i| i as u64).collect(),
                };
                assert_eq!((got.dtype(), bits(&got)), (want.dtype(), bits(&want)), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn cast_rules() {
        let f = f32t(&[6], &[1.9, -1.9, 300.0, -300.0, f32::NAN, 0.0]);
        let c = |t: &Tensor, to| {
            let op = Op::Cast { to };
            let types = [TensorType::new(t.dtype(), Shape::fixed(t.shape()))];
            evalq(&op, &[t], &types, &[]).unwrap().remove(0)
        };
        assert_eq!(c(&f, DType::I8).to_i64_vec().unwrap(), vec![1, -1, 127, -128, 0, 0]);
        assert_eq!(c(&f, DType::U8).to_i64_vec().unwrap(), vec![1, 0, 255, 0, 0, 0]);
        assert_eq!(c(&f, DType::Bool).data(), &TensorData::Bool(vec![true, true, true, true, true, false]));
        let i = Tensor::from_i64(vec![3], vec![300, -1, 1 << 40]);
        assert_eq!(c(&i, DType::U8).to_i64_vec().unwrap(), vec![44, 255, 0]);
        assert_eq!(c(&i, DType::I32).to_i64_vec().unwrap(), vec![300, -1, 0]);
        assert_eq!(c(&i, DType::F32).to_f32_vec(), vec![300.0, -1.0, 1099511627776.0]);
        // f32 -> f16 rounds to nearest even: 2049 is a tie between 2048 and 2050
        let h = c(&f32t(&[2], &[2049.0, 2051.0]), DType::F16);
        assert_eq!(h.to_f32_vec(), vec![2048.0, 2052.0]);
        assert_eq!(c(&h, DType::I32).to_i64_vec().unwrap(), vec![2048, 2052]);
    }
}
