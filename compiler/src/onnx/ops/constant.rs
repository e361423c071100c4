//! Ops that make a value from attributes or shapes: Constant, ConstantOfShape, Shape, Range, Size
//! and EyeLike
//! (semantics: the ONNX operator spec, <https://onnx.ai/onnx/operators/>). They are folded into
//! constants at import when the shapes involved are known; on a dynamic batch or sequence length
//! they become shape ops, `range` or `expand_dyn` reading the inputs' dims (see
//! [`crate::onnx::symbolic`]).

use super::{one, Cx, OpDef, Outs, R};
use crate::onnx::symbolic;
use crate::onnx::tensors::{checked_numel, four_bit, tensor_from_proto_limited};
use qforge_ir::{DType, Op, Tensor, TensorData};

pub(super) const OPS: &[OpDef] = &[
    OpDef::onnx("Constant", &[1, 9, 11, 12, 13, 19, 21, 23, 24, 25], constant),
    OpDef::onnx("ConstantOfShape", &[9, 20, 21, 23, 24, 25], constant_of_shape),
    OpDef::onnx("Shape", &[1, 13, 15, 19, 21, 23, 24, 25], shape),
    OpDef::onnx("Range", &[11, 27], range),
    OpDef::onnx("Size", &[1, 13, 19, 21, 23, 24, 25], size),
    OpDef::onnx("EyeLike", &[9, 22], eye_like),
];

/// EyeLike: a constant of the input's (fixed, 2-D) shape with ones on diagonal `k` (default 0;
/// above the main diagonal for `k > 0`) and zeros elsewhere, of `dtype` (default: the input's).
fn eye_like(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    let xt = cx.ty(x);
    let a = cx.attrs();
    let k = a.int_or("k", 0)?;
    let dtype = match a.int("dtype")? {
        None => xt.dtype,
        Some(d) => {
            let d = i32::try_from(d).map_err(|_| cx.err(format!("unknown element type {d}")))?;
            crate::onnx::tensors::dtype_from_onnx(d).map_err(|m| cx.err(format!("dtype {m}")))?
        }
    };
    let dims = match xt.shape.as_fixed() {
        Some(d) if d.len() == 2 => d,
        _ => return Err(cx.err(format!("EyeLike needs a 2-D input of fixed shape, got {xt}"))),
    };
    let (shape, n) =
        checked_numel(&[dims[0] as i64, dims[1] as i64], dtype, cx.im.max_tensor_bytes).map_err(|m| cx.err(m))?;
    cx.im.charge(n as u128 * dtype.size_bytes() as u128).map_err(|m| cx.err(m))?;
    let cols = dims[1] as i64;
    let values = (0..n as i64).map(|i| if i % cols.max(1) - i / cols.max(1) == k { 1.0 } else { 0.0 });
    one(cx.im.g.add_const(cx.at.name.clone(), Tensor::from_f64_iter(dtype, shape, values)))
}

/// Constant: exactly one of the value attributes; string and sparse values are not supported.
fn constant(cx: &mut Cx) -> R<Outs> {
    let a = cx.attrs();
    let t = if let Some(tp) = a.tensor("value")? {
        if four_bit(tp.data_type).is_some() {
            if let Some(out) = cx.node.output.first() {
                cx.im.mark_four_bit(out);
            }
        }
        tensor_from_proto_limited(tp, cx.im.max_tensor_bytes).map_err(|m| cx.err(format!("attribute `value`: {m}")))?
    } else if let Some(f) = a.float("value_float")? {
        Tensor::scalar_f32(f)
    } else if let Some(v) = a.floats("value_floats")? {
        Tensor::from_f32(vec![v.len()], v)
    } else if let Some(i) = a.int("value_int")? {
        Tensor::from_i64(vec![], vec![i])
    } else if let Some(v) = a.ints("value_ints")? {
        Tensor::from_i64(vec![v.len()], v)
    } else if let Some(other) = a.names().find(|n| ["sparse_value", "value_string", "value_strings"].contains(n)) {
        return Err(cx.err(format!("a Constant with `{other}` is not supported")));
    } else {
        return Err(cx.err("Constant has no value attribute"));
    };
    one(cx.im.g.add_const(cx.at.name.clone(), t))
}

/// Folded here, never left as a node: the shape must be constant and the tensor within the size
/// limit ([`crate::onnx::ImportOptions::max_tensor_bytes`], for one tensor and for the total of
/// the constants built at import); it is checked before allocating.
fn constant_of_shape(cx: &mut Cx) -> R<Outs> {
    let value = match cx.attrs().tensor("value")? {
        Some(tp) => tensor_from_proto_limited(tp, cx.im.max_tensor_bytes)
            .map_err(|m| cx.err(format!("attribute `value`: {m}")))?,
        None => Tensor::scalar_f32(0.0),
    };
    if value.len() != 1 {
        return Err(cx.err(format!("`value` must hold one element, got {}", value.len())));
    }
    if let Some(t) = cx.sym_input(0) {
        // A shape computed from input shapes: the value broadcast to it.
        if t.elems.iter().any(|m| m.k < 0) {
            return Err(cx.err("shape has a negative entry"));
        }
        let scalar = value.reshaped(vec![]).ok_or_else(|| cx.err("`value` must hold one element"))?;
        let name = cx.im.fresh_name(&format!("{}/value", cx.at.name));
        let c = cx.im.g.add_const(name, scalar);
        let mut ins = vec![Some(c)];
        let shape = cx.dim_exprs(&t.elems, &mut ins)?;
        return one(cx.add(Op::ExpandDyn { shape }, ins, None)?);
    }
    let dims = cx.ints_input(0, "shape")?;
    let (shape, n) = checked_numel(&dims, value.dtype(), cx.im.max_tensor_bytes).map_err(|m| cx.err(m))?;
    cx.im.charge(n as u128 * value.dtype().size_bytes() as u128).map_err(|m| cx.err(m))?;
    let t = Tensor::new(shape, splat(value.data(), n)).ok_or_else(|| cx.err("shape and data disagree"))?;
    one(cx.im.g.add_const(cx.at.name.clone(), t))
}

/// `n` copies of the single element of `d`.
fn splat(d: &TensorData, n: usize) -> TensorData {
    fn rep<T: Copy + Default>(v: &[T], n: usize) -> Vec<T> {
        vec![v.first().copied().unwrap_or_default(); n]
    }
    match d {
        TensorData::F32(v) => TensorData::F32(rep(v, n)),
        TensorData::F16(v) => TensorData::F16(rep(v, n)),
        TensorData::BF16(v) => TensorData::BF16(rep(v, n)),
        TensorData::I8(v) => TensorData::I8(rep(v, n)),
        TensorData::U8(v) => TensorData::U8(rep(v, n)),
        TensorData::I32(v) => TensorData::I32(rep(v, n)),
        TensorData::I64(v) => TensorData::I64(rep(v, n)),
        TensorData::Bool(v) => TensorData::Bool(rep(v, n)),
        TensorData::F64(v) => TensorData::F64(rep(v, n)),
        TensorData::I16(v) => TensorData::I16(rep(v, n)),
        TensorData::U16(v) => TensorData::U16(rep(v, n)),
        TensorData::U32(v) => TensorData::U32(rep(v, n)),
        TensorData::U64(v) => TensorData::U64(rep(v, n)),
    }
}

/// Folded when the selected dims are fixed. With symbolic dims the importer follows the
/// value symbolically (see [`symbolic`]) and never gets here, unless a dim cannot be read as
/// a product of symbols: then it is a `shape` op, computed at run time. `start` and `end`
/// (opset 15) are clamped to the rank, negative ones counting from the end.
fn shape(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    let ty = cx.ty(x);
    let r = ty.rank() as i64;
    let a = cx.attrs();
    let (start, end) = if cx.version >= 15 { (a.int_or("start", 0)?, a.int_or("end", r)?) } else { (0, r) };
    let clamp = |v: i64| (if v < 0 { v.saturating_add(r) } else { v }).clamp(0, r) as usize;
    let (s, e) = (clamp(start), clamp(end).max(clamp(start)));
    let dims = &ty.shape.0[s..e];
    let vals: Option<Vec<i64>> = dims.iter().map(|d| d.fixed().map(|n| n as i64)).collect();
    match vals {
        Some(vals) => one(cx.im.g.add_const(cx.at.name.clone(), Tensor::from_i64(vec![vals.len()], vals))),
        None => one(cx.add(Op::Shape { start: s, end: e }, vec![Some(x)], None)?),
    }
}

/// Size: the element count of the input, an i64 scalar. With fixed dims it is a constant; with
/// symbolic ones the importer follows it as a shape value (see [`symbolic`]) and never gets here
/// unless a dim cannot be read as a product of symbols.
fn size(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    let ty = cx.ty(x);
    let n = ty.shape.as_fixed().and_then(|s| s.iter().try_fold(1i64, |a, &d| a.checked_mul(i64::try_from(d).ok()?)));
    let n = n.ok_or_else(|| cx.err(format!("cannot tell the element count of {} at import", ty.shape)))?;
    one(cx.im.g.add_const(cx.at.name.clone(), Tensor::from_i64(vec![], vec![n])))
}

/// ONNX Range: `max(ceil((limit - start) / delta), 0)` elements `start + i * delta`. Constant
/// integer bounds fold into a constant, and so do constant float ones (each element computed in
/// f64 and rounded once; Range-27's `stash_type` only concerns f16 and bf16, which the IR's
/// range does not produce); bounds computed from input shapes make a `range` whose length is a
/// dim.
fn range(cx: &mut Cx) -> R<Outs> {
    if let Some(t) = float_range(cx)? {
        return one(cx.im.g.add_const(cx.at.name.clone(), t));
    }
    // Bounds computed from tensor data give a result whose length is data: name the first one.
    for (i, what) in [(0, "start"), (1, "limit"), (2, "delta")] {
        if let Some(n) = cx.input_name(i) {
            if cx.im.const_by_name(n).is_none() && symbolic::sym_of(cx.im, n).is_none() {
                return Err(cx.not_constant(n, what));
            }
        }
    }
    let start = cx.scalar_mono(0, "start")?;
    let limit = cx.scalar_mono(1, "limit")?;
    let delta = cx.scalar_mono(2, "delta")?;
    let delta = delta.konst().filter(|&d| d != 0).ok_or_else(|| cx.err("delta must be a non-zero constant"))?;
    let dtype = {
        let name = cx.input_name(0).unwrap_or("");
        match (symbolic::sym_of(cx.im, name), cx.im.const_by_name(name)) {
            (Some(s), _) => s.dtype,
            (None, Some(t)) => t.dtype(),
            (None, None) => DType::I64,
        }
    };
    if !matches!(dtype, DType::I32 | DType::I64) {
        return Err(cx.err(format!("Range of {dtype} is not supported (i32 or i64)")));
    }
    if let (Some(s), Some(l)) = (start.konst(), limit.konst()) {
        let d = delta as i128;
        let n = ((l as i128 - s as i128) + d - d.signum()) / d;
        let n = usize::try_from(n.max(0)).ok().filter(|&n| n <= 1 << 24);
        let n = n.ok_or_else(|| cx.err("range too long"))?;
        // Within the size limit, for this tensor and for the total built at import.
        let (_, n) = checked_numel(&[n as i64], dtype, cx.im.max_tensor_bytes).map_err(|m| cx.err(m))?;
        cx.im.charge(n as u128 * dtype.size_bytes() as u128).map_err(|m| cx.err(m))?;
        let v: Vec<i64> = (0..n as i64).map(|i| s + i * delta).collect();
        let t = Tensor::from_i64_wrapping(dtype, vec![n], &v);
        return one(cx.im.g.add_const(cx.at.name.clone(), t));
    }
    if start.konst() != Some(0) || delta != 1 {
        return Err(cx.err("a Range with computed bounds must start at 0 with step 1"));
    }
    let mut ins = vec![];
    let e = cx.dim_exprs(&[start, limit], &mut ins)?;
    let (s, l) = (e[0].clone(), e[1].clone());
    one(cx.add(Op::Range { start: s, limit: l, delta, dtype }, ins, None)?)
}

/// A Range of three constant f32 scalars, folded; `None` when the inputs are not that.
fn float_range(cx: &mut Cx) -> R<Option<Tensor>> {
    let mut v = [0f64; 3];
    for (i, slot) in v.iter_mut().enumerate() {
        let Some(t) = cx.input_name(i).and_then(|n| cx.im.const_by_name(n)) else { return Ok(None) };
        if t.dtype() != DType::F32 {
            return Ok(None);
        }
        match t.to_f64_vec().as_slice() {
            [x] => *slot = *x,
            _ => return Err(cx.err(format!("input {i} must be a scalar, got shape {:?}", t.shape()))),
        }
    }
    let [start, limit, delta] = v;
    if delta == 0.0 || !v.iter().all(|x| x.is_finite()) {
        return Err(cx.err(format!("a Range from {start} to {limit} by {delta} is not finite")));
    }
    let n = ((limit - start) / delta).ceil().max(0.0);
    if n > (1u64 << 24) as f64 {
        return Err(cx.err("range too long"));
    }
    let n = n as usize;
    let (_, n) = checked_numel(&[n as i64], DType::F32, cx.im.max_tensor_bytes).map_err(|m| cx.err(m))?;
    cx.im.charge(n as u128 * 4).map_err(|m| cx.err(m))?;
    let vals: Vec<f32> = (0..n).map(|i| (start + i as f64 * delta) as f32).collect();
    Ok(Some(Tensor::from_f32(vec![n], vals)))
}
