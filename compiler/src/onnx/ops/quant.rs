//! Quantized ops (semantics: the ONNX operator spec, <https://onnx.ai/onnx/operators/>, and ONNX
//! Runtime's contrib operator docs for the `com.microsoft` domain): QuantizeLinear,
//! DequantizeLinear, DynamicQuantizeLinear, QLinearConv, QLinearMatMul, ConvInteger,
//! MatMulInteger, and ORT's QGemm, QLinearGlobalAveragePool, QLinearAveragePool, QLinearAdd,
//! QLinearMul and QLinearConcat. Scales and zero points must be constants: they become part of
//! the value types (per tensor, per axis for a 1-D scale, or per group for blocked
//! quantization), never op attributes. Quantized data may come from QuantizeLinear, a quantized
//! op, a constant (INT4/UINT4 constants are read into i8/u8) or a graph input, which then takes
//! the quantized type.

use super::nn::{conv_attrs, pool_attrs};
use super::{one, Cx, OpDef, Outs, R};
use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::tensors::dtype_from_onnx;
use qforge_ir::infer::norm_axis;
use qforge_ir::{BinaryOp, DType, Epilogue, Op, QuantParams, Shape, Tensor, TensorType, UnaryOp, Value, WireType};

pub(super) const OPS: &[OpDef] = &[
    OpDef::onnx("QuantizeLinear", &[10, 13, 19, 21, 23, 24, 25, 28], quantize_linear),
    OpDef::onnx("DequantizeLinear", &[10, 13, 19, 21, 23, 24, 25, 28], dequantize_linear),
    OpDef::onnx("DynamicQuantizeLinear", &[11], dynamic_quantize_linear),
    OpDef::onnx("QLinearConv", &[10], qlinear_conv),
    OpDef::onnx("QLinearMatMul", &[10, 21], qlinear_matmul),
    OpDef::onnx("ConvInteger", &[10], conv_integer),
    OpDef::onnx("MatMulInteger", &[10], matmul_integer),
    OpDef::microsoft("QGemm", qgemm),
    OpDef::microsoft("QLinearGlobalAveragePool", qlinear_global_average_pool),
    OpDef::microsoft("QLinearAveragePool", qlinear_average_pool),
    OpDef::microsoft("QLinearAdd", |cx| qlinear_binary(cx, Op::QAdd)),
    OpDef::microsoft("QLinearMul", |cx| qlinear_binary(cx, Op::QMul)),
    OpDef::microsoft("QLinearConcat", qlinear_concat),
];

/// Where a node's quantization parameters are and how to read them.
#[derive(Clone, Copy)]
struct QIn {
    /// Input index of the scale.
    scale: usize,
    /// Input index of the (optional) zero point.
    zero: usize,
    /// Axis of per-axis and blocked parameters.
    axis: i64,
    /// Block size of blocked parameters (`block_size`, QuantizeLinear and DequantizeLinear
    /// version 21); 0 for none.
    block: usize,
}

impl QIn {
    /// Per-tensor or per-axis parameters at `scale`, `zero` (axis `axis` for a 1-D scale).
    const fn at(scale: usize, zero: usize, axis: i64) -> QIn {
        QIn { scale, zero, axis, block: 0 }
    }
}

/// Quantization parameters from the constant inputs of `q` for a value of type `x`. A single
/// value (a scalar, or a 1-D tensor of one element, as the ONNX reference reads it) makes
/// per-tensor parameters; a 1-D scale of several values per-axis ones along `q.axis`; with a
/// block size, a scale of the value's rank blocked along `q.axis` makes per-group ones (which
/// need the value's shape fixed). Without a zero point the storage type is `default` with zero
/// point 0. Scales of any float type are read exactly as f32; callers whose arithmetic would
/// follow a narrower scale type check it first.
fn qparams(cx: &Cx, q: QIn, x: &TensorType, default: DType) -> R<(DType, QuantParams)> {
    let (si, zi) = (q.scale, q.zero);
    let names = format!("(`{}`, `{}`)", cx.input_name(si).unwrap_or(""), cx.input_name(zi).unwrap_or(""));
    let scale = cx.const_input(si, "scale")?;
    let blocked = q.block > 0 && scale.len() > 1;
    if !scale.dtype().is_float() || (scale.rank() > 1 && !blocked) {
        return Err(cx.err(format!(
            "scale {names} must be a float scalar or 1-D, got {}{:?}",
            scale.dtype(),
            scale.shape()
        )));
    }
    let scales = scale.to_f32_vec();
    let (dtype, zps) = match cx.opt_const_input(zi, "zero point")? {
        Some(z) => {
            if !matches!(z.dtype(), DType::I8 | DType::U8 | DType::I32) {
                return Err(cx.err(format!("zero point {names} must be i8, u8 or i32, got {}", z.dtype())));
            }
            if z.len() != scales.len() || (blocked && z.shape() != scale.shape()) {
                return Err(cx.err(format!(
                    "quantization parameters {names}: scale of shape {:?} but zero point of shape {:?}",
                    scale.shape(),
                    z.shape()
                )));
            }
            let zps: Vec<i32> = z.to_i64_vec().unwrap_or_default().into_iter().map(|v| v as i32).collect();
            (z.dtype(), zps)
        }
        None => (default, vec![0; scales.len()]),
    };
    let p = match (scales.as_slice(), zps.as_slice()) {
        ([s], [z]) => QuantParams::per_tensor(*s, *z),
        _ if blocked => {
            let axis = norm_axis(q.axis, x.rank()).map_err(|m| cx.err(format!("quantization axis: {m}")))?;
            let shape = x.shape.as_fixed().ok_or_else(|| {
                cx.err(format!("blocked quantization (block_size={}) needs a fixed shape, got {x}", q.block))
            })?;
            let p = QuantParams::PerGroup { axis, group_size: q.block, scales, zero_points: zps };
            if QuantParams::group_param_shape(axis, q.block, &shape).as_deref() != Some(scale.shape()) {
                return Err(cx.err(format!(
                    "blocked quantization of {x} in blocks of {} along axis {axis}: the scale {names} has shape {:?}",
                    q.block,
                    scale.shape()
                )));
            }
            p
        }
        _ => {
            let axis = norm_axis(q.axis, x.rank()).map_err(|m| cx.err(format!("quantization axis: {m}")))?;
            QuantParams::PerAxis { axis, scales, zero_points: zps }
        }
    };
    p.check().map_err(|m| cx.err(format!("quantization parameters {names}: {m}")))?;
    Ok((dtype, p))
}

/// The scale of a QLinear* op (or an ORT contrib op): f32, since its integer kernel computes its
/// multipliers in f32 from the scales as given. QLinearMatMul-21 also allows f16 and bf16
/// scales: they are widened to f32 exactly (every f16/bf16 is an f32), as ONNX Runtime's
/// QLinearMatMul kernel converts them before computing its f32 multiplier.
fn f32_scale(cx: &Cx, i: usize) -> R<()> {
    let t = cx.const_input(i, "scale")?;
    let widened = cx.at.op == "QLinearMatMul" && cx.version >= 21 && matches!(t.dtype(), DType::F16 | DType::BF16);
    if t.dtype() != DType::F32 && !widened {
        return Err(cx.err(format!(
            "a {} scale (`{}`) is not supported: qforge's quantized kernels take f32 scales",
            t.dtype(),
            cx.input_name(i).unwrap_or("")
        )));
    }
    Ok(())
}

/// Input `vi` as a quantized value carrying the parameters of `q`: a constant integer tensor
/// becomes a constant of that quantized type; a graph input of the parameters' integer type not
/// yet used elsewhere takes that quantized type (quantized data fed to the model, as ONNX's
/// QLinear* and DequantizeLinear tests do); any other value must already have exactly that type.
fn quant_operand(cx: &mut Cx, vi: usize, q: QIn, what: &str) -> R<Value> {
    let name = cx.input_name(vi).ok_or_else(|| cx.err(format!("input {vi} ({what}) is missing")))?;
    let typed = cx.im.bound(name).filter(|v| cx.im.g.value_type(*v).quant.is_some());
    if typed.is_none() {
        if let Some(t) = cx.im.const_by_name(name) {
            if !matches!(t.dtype(), DType::I8 | DType::U8 | DType::I32) {
                return Err(cx.err(format!(
                    "constant `{name}` ({what}) is {}; quantized constants are i8, u8 or i32",
                    t.dtype()
                )));
            }
            let plain = TensorType::new(t.dtype(), t.ir_shape());
            let (dtype, p) = qparams(cx, q, &plain, t.dtype())?;
            if dtype != t.dtype() {
                return Err(
                    cx.err(format!("constant `{name}` ({what}) is {} but its zero point is {dtype}", t.dtype()))
                );
            }
            if let QuantParams::PerAxis { axis, scales, .. } = &p {
                if t.shape().get(*axis) != Some(&scales.len()) {
                    return Err(cx.err(format!(
                        "constant `{name}` ({what}) of shape {:?} has {} scales for axis {axis}",
                        t.shape(),
                        scales.len()
                    )));
                }
            }
            p.check_shape(t.shape()).map_err(|m| cx.err(format!("constant `{name}` ({what}): {m}")))?;
            let ty = TensorType::quantized(dtype, t.ir_shape(), p);
            return Ok(cx.im.quant_const(name, &t, ty));
        }
    }
    let v = cx.value(name)?;
    let ty = cx.ty(v);
    if ty.quant.is_none() && matches!(cx.im.g.node(v.node).op, Op::Input) {
        return quantized_graph_input(cx, v, q, what);
    }
    if ty.quant.is_none() {
        return Err(cx.err(format!(
            "input `{name}` ({what}) is {ty}, not a quantized value: it must come from QuantizeLinear, \
             a quantized op, a constant or a graph input"
        )));
    }
    let (dtype, p) = qparams(cx, q, &ty, ty.dtype)?;
    let declared = TensorType::quantized(dtype, ty.shape.clone(), p);
    if declared != ty {
        return Err(cx.err(format!(
            "input `{name}` ({what}) is {ty}, but the node declares {declared}; qforge does not \
             requantize between different parameters here"
        )));
    }
    Ok(v)
}

/// An operand of a QLinear* (or ORT contrib) op: input `vi` quantized with the f32 scale at `si`
/// and the zero point at `zi` (see [`quant_operand`]).
fn qop_operand(cx: &mut Cx, vi: usize, si: usize, zi: usize, axis: i64, what: &str) -> R<Value> {
    f32_scale(cx, si)?;
    quant_operand(cx, vi, QIn::at(si, zi, axis), what)
}

/// A graph input of raw integers that a node reads as quantized data: the input takes the
/// quantized type (its storage type must be the zero point's), so the caller feeds the integers
/// and the parameters come from the model. It must not be used as plain integers too.
fn quantized_graph_input(cx: &mut Cx, v: Value, q: QIn, what: &str) -> R<Value> {
    let ty = cx.ty(v);
    let name = cx.im.g.node(v.node).name.clone();
    if !ty.dtype.is_quantizable_storage() {
        return Err(cx.err(format!("graph input `{name}` ({what}) is {ty}; quantized data is i8, u8 or i32")));
    }
    let (dtype, p) = qparams(cx, q, &ty, ty.dtype)?;
    if dtype != ty.dtype {
        return Err(cx.err(format!("graph input `{name}` ({what}) is {ty} but its zero point is {dtype}")));
    }
    if !cx.im.g.value_users(v).is_empty() {
        return Err(cx.err(format!(
            "graph input `{name}` ({what}) is also used as plain {}; qforge gives a graph input one type",
            ty.dtype
        )));
    }
    if let Some(s) = ty.shape.as_fixed() {
        p.check_shape(&s).map_err(|m| cx.err(format!("graph input `{name}` ({what}): {m}")))?;
    } else if !matches!(p, QuantParams::PerTensor { .. }) {
        let axis = p.axis().unwrap_or(0);
        if ty.shape.0.get(axis) != Some(&qforge_ir::Dim::Fixed(p.len())) {
            return Err(cx.err(format!("graph input `{name}` ({what}) of type {ty} has {} scales", p.len())));
        }
    }
    cx.im.g.node_mut(v.node).outputs[0] = TensorType::quantized(dtype, ty.shape, p);
    Ok(v)
}

/// The `axis` (default 1) and `block_size` (version 21, default 0) of QuantizeLinear and
/// DequantizeLinear.
fn q_axis_block(cx: &Cx) -> R<(i64, usize)> {
    let a = cx.attrs();
    let block = if cx.version >= 21 { a.int_or("block_size", 0)? } else { 0 };
    let block = usize::try_from(block).map_err(|_| cx.err(format!("block_size={block} must not be negative")))?;
    let axis = if cx.version >= 13 { a.int_or("axis", 1)? } else { 1 };
    Ok((axis, block))
}

/// Whether the constant named by input `i` was stored as a 4-bit type (INT4, UINT4).
fn four_bit(cx: &Cx, i: usize) -> bool {
    cx.input_name(i).is_some_and(|n| cx.im.is_four_bit(n))
}

/// QuantizeLinear: `saturate(round_half_even(x / scale) + zero_point)`, per tensor, per axis
/// (version 13) or blocked (version 21). The division follows the scale's type (from version
/// 19, where the scale has the input's type, and version 23, where `precision` may name
/// another): qforge divides in f32, so the scale must be f32 or `precision` FLOAT; an f16 or bf16
/// input is widened exactly. The result type comes from the zero point, else `output_dtype`
/// (version 21), else u8: i8, u8 or i32; 4-bit results (INT4, UINT4), which saturate to their
/// own range, and the types the IR does not have (int16, uint16, float8, ...) are refused.
/// `saturate` (version 19) only applies to float8 results.
fn quantize_linear(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    let ty = cx.ty(x);
    let (axis, block) = q_axis_block(cx)?;
    let a = cx.attrs();
    let precision = if cx.version >= 23 { a.int_or("precision", 0)? } else { 0 };
    let scale = cx.const_input(1, "scale")?;
    match precision {
        0 if scale.dtype() == DType::F32 => {}
        0 => {
            return Err(cx.err(format!(
                "a {} scale makes QuantizeLinear version {} divide in {0}; qforge divides in f32 (an f32 scale{})",
                scale.dtype(),
                cx.version,
                if cx.version >= 23 { ", or precision=1" } else { "" }
            )))
        }
        1 => {}
        p => {
            let t = dtype_from_onnx(i32::try_from(p).unwrap_or(-1)).map_or_else(|e| e.to_string(), |d| d.to_string());
            return Err(cx.err(format!("precision={p} ({t}) is not supported: qforge divides in f32 (precision=1)")));
        }
    }
    let out_code = if cx.version >= 21 { a.int("output_dtype")?.filter(|&c| c != 0) } else { None };
    let code = |c: i64| i32::try_from(c).unwrap_or(-1);
    let four = [DataType::Int4 as i32, DataType::Uint4 as i32];
    if four_bit(cx, 2) || out_code.is_some_and(|c| four.contains(&code(c))) {
        return Err(cx.err(
            "quantizing to a 4-bit type (INT4, UINT4) is not supported: qforge keeps 4-bit values as constant \
             weights only",
        ));
    }
    let out_dtype = match out_code {
        None => None,
        Some(c) => Some(dtype_from_onnx(code(c)).map_err(|m| cx.err(format!("output_dtype={c}: {m}")))?),
    };
    let zp_dtype = cx.opt_const_input(2, "zero point")?.map(|z| z.dtype());
    if let Some(to) = zp_dtype.or(out_dtype).filter(|d| matches!(d, DType::I16 | DType::U16)) {
        if out_dtype.is_some_and(|d| d != to) {
            return Err(cx.err(format!("the zero point's type {to} differs from output_dtype")));
        }
        return quantize_composed(cx, x, axis, block, to);
    }
    let (dtype, p) = qparams(cx, QIn { scale: 1, zero: 2, axis, block }, &ty, out_dtype.unwrap_or(DType::U8))?;
    if out_dtype.is_some_and(|d| d != dtype) {
        return Err(cx.err(format!("the zero point's type {dtype} differs from output_dtype")));
    }
    if !matches!(dtype, DType::I8 | DType::U8 | DType::I32) {
        return Err(cx.err(format!("quantizing to {dtype} is not supported (i8, u8, i16, u16 or i32)")));
    }
    let declared = TensorType::quantized(dtype, ty.shape.clone(), p);
    one(cx.add(Op::Quantize, vec![Some(x)], Some(vec![declared]))?)
}

/// DequantizeLinear: `(x - zero_point) * scale`, per tensor, per axis (version 13) or blocked
/// (version 21). `x` is a quantized value, a constant of i8, u8 or i32 (or INT4/UINT4, read into
/// i8/u8), or a graph input of the zero point's type. The result has the scale's type from
/// version 19, or `output_dtype` from version 23; the ONNX reference computes in f32 and converts
/// the result, which is the IR's dequantize followed by a cast to f16 or bf16.
fn dequantize_linear(cx: &mut Cx) -> R<Outs> {
    let (axis, block) = q_axis_block(cx)?;
    let scale = cx.const_input(1, "scale")?;
    let mut out = if cx.version >= 19 { scale.dtype() } else { DType::F32 };
    if cx.version >= 23 {
        if let Some(c) = cx.attrs().int("output_dtype")?.filter(|&c| c != 0) {
            let code = i32::try_from(c).unwrap_or(-1);
            out = dtype_from_onnx(code).map_err(|m| cx.err(format!("output_dtype={c}: {m}")))?;
        }
    }
    if !out.is_float() {
        return Err(cx.err(format!("a {out} result is not supported (f32, f16 or bf16)")));
    }
    // int16/uint16 data and float8/float4 data (held in f16) are outside the IR's quantized
    // types: computed with plain arithmetic instead.
    let xname = cx.input_name(0).unwrap_or("");
    let wire = cx.im.wire_of(xname);
    let xdtype = match cx.im.const_by_name(xname) {
        Some(t) => Some(t.dtype()),
        None => cx.im.bound(xname).map(|v| cx.ty(v).dtype),
    };
    if wire.is_some_and(|w| w.is_float()) || matches!(xdtype, Some(DType::I16 | DType::U16)) {
        return dequantize_composed(cx, axis, block, out, wire);
    }
    let x = quant_operand(cx, 0, QIn { scale: 1, zero: 2, axis, block }, "x")?;
    if out == DType::F32 {
        return one(cx.add(Op::Dequantize, vec![Some(x)], None)?);
    }
    let y = cx.add_helper("dequantize", Op::Dequantize, vec![Some(x)])?;
    one(cx.add(Op::Cast { to: out }, vec![Some(y)], None)?)
}

/// DequantizeLinear of data the IR's dequantize does not take (int16, uint16; float8 and float4
/// values, held in f16): `(x as f32 - zero_point as f32) * scale` in f32, then converted to the
/// result type, as the ONNX reference computes it (`onnx/reference/ops/op_dequantize_linear.py`:
/// `x.astype(float32) - zero_point`, times the scale, `astype` the result type). A float8 or
/// float4 zero point must be 0 (the ONNX spec; the reference refuses any other float8 one).
fn dequantize_composed(cx: &mut Cx, axis: i64, block: usize, out: DType, wire: Option<WireType>) -> R<Outs> {
    let x = cx.input(0)?;
    let xt = cx.ty(x);
    let scale = cx.const_input(1, "scale")?;
    if !scale.dtype().is_float() {
        return Err(cx.err(format!("the scale must be a float, got {}", scale.dtype())));
    }
    let s = broadcast_param(cx, &scale, &xt, axis, block, "scale")?;
    let xf = cx.add_helper("x_f32", Op::Cast { to: DType::F32 }, vec![Some(x)])?;
    let mut dx = xf;
    if let Some(z) = cx.opt_const_input(2, "zero point")? {
        if let Some(w) = wire.filter(|w| w.is_float()) {
            if z.to_f64_vec().iter().any(|&v| v != 0.0) {
                return Err(cx.err(format!("a {w} zero point must be 0 (the ONNX spec)")));
            }
        } else {
            if z.dtype() != xt.dtype {
                return Err(cx.err(format!("the zero point is {} but x is {}", z.dtype(), xt.dtype)));
            }
            let zb = broadcast_param(cx, &z, &xt, axis, block, "zero point")?;
            let zc = param_const(cx, "zero_point", zb);
            dx = cx.add_helper("centered", Op::Binary(BinaryOp::Sub), vec![Some(xf), Some(zc)])?;
        }
    }
    let sc = param_const(cx, "scale", s);
    if out == DType::F32 {
        return one(cx.add(Op::Binary(BinaryOp::Mul), vec![Some(dx), Some(sc)], None)?);
    }
    let y = cx.add_helper("scaled", Op::Binary(BinaryOp::Mul), vec![Some(dx), Some(sc)])?;
    one(cx.add(Op::Cast { to: out }, vec![Some(y)], None)?)
}

/// QuantizeLinear to int16 or uint16, which the IR's quantized types do not have, with plain
/// arithmetic that follows the quantize contract of `qforge_ir::numerics` (`quantize`):
/// `saturate(round_half_even(x / scale) + zero_point)`, a true f32 division, NaN giving the zero
/// point; the ONNX reference (`op_quantize_linear.py`) computes `rint(x / scale) + zero_point`
/// clipped to the type's range. The rounded value plus the zero point is exact in f32 wherever the
/// result is in range (|value| < 2^24), and the final cast saturates (`numerics::cast_float_to_int`
/// of an integral value).
fn quantize_composed(cx: &mut Cx, x: Value, axis: i64, block: usize, to: DType) -> R<Outs> {
    let xt = cx.ty(x);
    let x =
        if xt.dtype == DType::F32 { x } else { cx.add_helper("x_f32", Op::Cast { to: DType::F32 }, vec![Some(x)])? };
    let scale = cx.const_input(1, "scale")?;
    let s = broadcast_param(cx, &scale, &xt, axis, block, "scale")?;
    let sc = param_const(cx, "scale", s);
    let q = cx.add_helper("scaled", Op::Binary(BinaryOp::Div), vec![Some(x), Some(sc)])?;
    let r = cx.add_helper("rounded", Op::Unary(UnaryOp::Round), vec![Some(q)])?;
    let zb = match cx.opt_const_input(2, "zero point")? {
        Some(z) => broadcast_param(cx, &z, &xt, axis, block, "zero point")?,
        None => Tensor::from_f32(vec![], vec![0.0]),
    };
    let zc = param_const(cx, "zero_point", zb);
    let shifted = cx.add_helper("shifted", Op::Binary(BinaryOp::Add), vec![Some(r), Some(zc)])?;
    let not_nan = cx.add_helper("not_nan", Op::Binary(BinaryOp::Equal), vec![Some(q), Some(q)])?;
    let v = cx.add_helper("nan_to_zero_point", Op::Where, vec![Some(not_nan), Some(shifted), Some(zc)])?;
    one(cx.add(Op::Cast { to }, vec![Some(v)], None)?)
}

/// A constant helper node holding a quantization parameter.
fn param_const(cx: &mut Cx, tag: &str, t: Tensor) -> Value {
    let name = cx.im.fresh_name(&format!("{}/{tag}", cx.at.name));
    cx.im.g.add_const(name, t)
}

/// A scale or zero point as f32 values that broadcast against `x` as the ONNX reference's
/// `reshape_input` makes them (`onnx/reference/ops/_quant_utils.py`): one value as a scalar, a
/// 1-D tensor along `axis` as `[1, .., C, .., 1]`, and a blocked one (`block`, the value's rank,
/// `ceil(d / block)` along `axis`) repeated `block` times along `axis` and cut to `x`'s shape
/// (which must be fixed). Every value of the parameter types is exact in f32 (int16, uint16,
/// f16, bf16, f32).
fn broadcast_param(cx: &Cx, t: &Tensor, x: &TensorType, axis: i64, block: usize, what: &str) -> R<Tensor> {
    let v: Vec<f32> = t.to_f64_vec().into_iter().map(|v| v as f32).collect();
    if v.len() == 1 && (t.rank() <= 1 || block == 0) {
        return Ok(Tensor::from_f32(vec![], v));
    }
    let ax = norm_axis(axis, x.rank()).map_err(|m| cx.err(format!("quantization axis: {m}")))?;
    if block == 0 {
        if t.rank() != 1 || x.shape.0.get(ax) != Some(&qforge_ir::Dim::Fixed(v.len())) {
            return Err(cx.err(format!("the {what} of shape {:?} does not fit {x} along axis {ax}", t.shape())));
        }
        let mut shape = vec![1; x.rank()];
        shape[ax] = v.len();
        return Ok(Tensor::from_f32(shape, v));
    }
    let shape = x
        .shape
        .as_fixed()
        .ok_or_else(|| cx.err(format!("blocked quantization (block_size={block}) needs a fixed shape, got {x}")))?;
    let want: Vec<usize> =
        shape.iter().enumerate().map(|(i, &d)| if i == ax { d.div_ceil(block) } else { d }).collect();
    if t.shape() != want.as_slice() {
        return Err(cx.err(format!(
            "blocked quantization of {x} in blocks of {block} along axis {ax}: the {what} has shape {:?}",
            t.shape()
        )));
    }
    let n: usize = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).unwrap_or(usize::MAX);
    if (n as u128).saturating_mul(4) > cx.im.max_tensor_bytes {
        return Err(cx.err(format!("the expanded {what} of shape {shape:?} is over the tensor size limit")));
    }
    // Row-major strides of `x` and of the parameter; each element of `x` reads the parameter at
    // its own index with the coordinate along `axis` divided by the block size.
    let inner: usize = shape[ax + 1..].iter().product();
    let (d, pd) = (shape[ax], want[ax]);
    let out: Vec<f32> = (0..n)
        .map(|i| {
            let (outer, rest) = (i / (d * inner), i % (d * inner));
            let (c, j) = (rest / inner, rest % inner);
            v[(outer * pd + c / block) * inner + j]
        })
        .collect();
    Ok(Tensor::from_f32(shape, out))
}

fn dynamic_quantize_linear(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    let v = cx.add(Op::DynamicQuantize, vec![Some(x)], None)?;
    Ok((0..3).map(|p| Some(Value::new(v.node, p))).collect())
}

/// The declared result of a requantizing op: the storage type of `zi` (u8 when absent) and
/// per-tensor parameters.
fn declared_out(cx: &Cx, si: usize, zi: usize, shape: &Shape) -> R<Vec<TensorType>> {
    f32_scale(cx, si)?;
    let (dtype, q) = qparams(cx, QIn::at(si, zi, 1), &TensorType::new(DType::U8, shape.clone()), DType::U8)?;
    Ok(vec![TensorType::quantized(dtype, shape.clone(), q)])
}

fn qlinear_conv(cx: &mut Cx) -> R<Outs> {
    if cx.node.input.len() > 9 {
        return Err(cx.err("has more than 9 inputs"));
    }
    let x = qop_operand(cx, 0, 1, 2, 1, "x")?;
    let w = qop_operand(cx, 3, 4, 5, 0, "w")?;
    let b = cx.opt_input(8)?;
    let (xt, wt) = (cx.ty(x), cx.ty(w));
    let conv = conv_attrs(cx, &xt, &wt)?;
    let declared = declared_out(cx, 6, 7, &xt.shape)?;
    let epilogue = if b.is_some() { vec![Epilogue::Bias, Epilogue::Requant] } else { vec![Epilogue::Requant] };
    let mut ins = vec![Some(x), Some(w)];
    if b.is_some() {
        ins.push(b);
    }
    one(cx.add(Op::QConv { conv, epilogue }, ins, Some(declared))?)
}

fn qlinear_matmul(cx: &mut Cx) -> R<Outs> {
    let a = qop_operand(cx, 0, 1, 2, -1, "a")?;
    let b = qop_operand(cx, 3, 4, 5, -1, "b")?;
    let declared = declared_out(cx, 6, 7, &cx.ty(a).shape)?;
    one(cx.add(Op::QMatMul { epilogue: vec![Epilogue::Requant] }, vec![Some(a), Some(b)], Some(declared))?)
}

fn matmul_integer(cx: &mut Cx) -> R<Outs> {
    let ins = cx.inputs_upto(2, 4)?;
    one(cx.add(Op::MatMulInteger, ins, None)?)
}

fn conv_integer(cx: &mut Cx) -> R<Outs> {
    let ins = cx.inputs_upto(2, 4)?;
    let (x, w) = (cx.input(0)?, cx.input(1)?);
    let attrs = conv_attrs(cx, &cx.ty(x), &cx.ty(w))?;
    one(cx.add(Op::ConvInteger(attrs), ins, None)?)
}

/// `com.microsoft` QGemm: `A, a_scale, a_zp, B, b_scale, b_zp, [C], [y_scale], [y_zp]`. Without
/// `y_scale` the result is f32 (`[Bias?, Dequant]`).
fn qgemm(cx: &mut Cx) -> R<Outs> {
    let at = cx.attrs();
    let (alpha, trans_a, trans_b) =
        (at.float_or("alpha", 1.0)?, at.bool_or("transA", false)?, at.bool_or("transB", false)?);
    let a = qop_operand(cx, 0, 1, 2, 1, "a")?;
    let b = qop_operand(cx, 3, 4, 5, if trans_b { 0 } else { 1 }, "b")?;
    let c = cx.opt_input(6)?;
    let (declared, last) = if cx.input_name(7).is_some() {
        (Some(declared_out(cx, 7, 8, &cx.ty(a).shape)?), Epilogue::Requant)
    } else {
        (None, Epilogue::Dequant)
    };
    let mut epilogue = vec![last];
    let mut ins = vec![Some(a), Some(b)];
    if c.is_some() {
        epilogue.insert(0, Epilogue::Bias);
        ins.push(c);
    }
    one(cx.add(Op::QGemm { alpha, trans_a, trans_b, epilogue }, ins, declared)?)
}

fn channels_first(cx: &Cx) -> R<()> {
    if cx.attrs().int_or("channels_last", 0)? != 0 {
        return Err(cx.err("channels_last=1 is not supported (NCHW only)"));
    }
    Ok(())
}

fn qlinear_global_average_pool(cx: &mut Cx) -> R<Outs> {
    channels_first(cx)?;
    let x = qop_operand(cx, 0, 1, 2, 1, "x")?;
    let declared = declared_out(cx, 3, 4, &cx.ty(x).shape)?;
    one(cx.add(Op::QGlobalAveragePool, vec![Some(x)], Some(declared))?)
}

fn qlinear_average_pool(cx: &mut Cx) -> R<Outs> {
    channels_first(cx)?;
    let x = qop_operand(cx, 0, 1, 2, 1, "x")?;
    let xt = cx.ty(x);
    let p = pool_attrs(cx, &xt, true)?;
    let declared = declared_out(cx, 3, 4, &xt.shape)?;
    one(cx.add(Op::QAveragePool(p), vec![Some(x)], Some(declared))?)
}

fn qlinear_binary(cx: &mut Cx, op: Op) -> R<Outs> {
    let a = qop_operand(cx, 0, 1, 2, 1, "a")?;
    let b = qop_operand(cx, 3, 4, 5, 1, "b")?;
    let declared = declared_out(cx, 6, 7, &cx.ty(a).shape)?;
    one(cx.add(op, vec![Some(a), Some(b)], Some(declared))?)
}

/// `com.microsoft` QLinearConcat: `Y_scale, Y_zp`, then `(X, X_scale, X_zp)` per input.
fn qlinear_concat(cx: &mut Cx) -> R<Outs> {
    let axis = cx.attrs().int("axis")?.ok_or_else(|| cx.err("attribute `axis` is required"))?;
    let n = cx.node.input.len();
    if n < 5 || 2 + (n - 2) / 3 * 3 != n {
        return Err(cx.err(format!("has {n} inputs; expected Y_scale, Y_zp and (X, X_scale, X_zp) triples")));
    }
    let mut ins = vec![];
    for k in 0..(n - 2) / 3 {
        ins.push(Some(qop_operand(cx, 2 + 3 * k, 3 + 3 * k, 4 + 3 * k, 1, &format!("input {k}"))?));
    }
    let first = ins.first().copied().flatten().ok_or_else(|| cx.err("needs at least one input"))?;
    let declared = declared_out(cx, 0, 1, &cx.ty(first).shape)?;
    one(cx.add(Op::QConcat { axis }, ins, Some(declared))?)
}
