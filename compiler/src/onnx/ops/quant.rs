//! Quantized ops (semantics: the ONNX operator spec, <https://onnx.ai/onnx/operators/>, and ONNX
//! Runtime's contrib operator docs for the `com.microsoft` domain): QuantizeLinear,
//! DequantizeLinear, DynamicQuantizeLinear, QLinearConv, QLinearMatMul, ConvInteger,
//! MatMulInteger, and ORT's QGemm, QLinearGlobalAveragePool, QLinearAveragePool, QLinearAdd,
//! QLinearMul and QLinearConcat. Scales and zero points must be constants: they become part of
//! the value types (per tensor, or per axis for a 1-D scale), never op attributes.

use super::nn::{conv_attrs, pool_attrs};
use super::{one, Cx, OpDef, Outs, R};
use crate::onnx::tensors::dtype_from_onnx;
use qforge_ir::infer::norm_axis;
use qforge_ir::{DType, Epilogue, Op, QuantParams, Shape, TensorType, Value};

pub(super) const OPS: &[OpDef] = &[
    OpDef::onnx("QuantizeLinear", quantize_linear),
    OpDef::onnx("DequantizeLinear", dequantize_linear),
    OpDef::onnx("DynamicQuantizeLinear", dynamic_quantize_linear),
    OpDef::onnx("QLinearConv", qlinear_conv),
    OpDef::onnx("QLinearMatMul", qlinear_matmul),
    OpDef::onnx("ConvInteger", conv_integer),
    OpDef::onnx("MatMulInteger", matmul_integer),
    OpDef::microsoft("QGemm", qgemm),
    OpDef::microsoft("QLinearGlobalAveragePool", qlinear_global_average_pool),
    OpDef::microsoft("QLinearAveragePool", qlinear_average_pool),
    OpDef::microsoft("QLinearAdd", |cx| qlinear_binary(cx, Op::QAdd)),
    OpDef::microsoft("QLinearMul", |cx| qlinear_binary(cx, Op::QMul)),
    OpDef::microsoft("QLinearConcat", qlinear_concat),
];

/// Quantization parameters from the constant inputs `si` (scale) and `zi` (optional zero
/// point). One value makes per-tensor parameters; a 1-D scale of several values makes per-axis
/// ones along `axis` of a tensor of rank `rank`. Without a zero point the storage type is
/// `default` with zero point 0.
fn qparams(cx: &Cx, si: usize, zi: usize, axis: i64, rank: usize, default: DType) -> R<(DType, QuantParams)> {
    let names = format!("(`{}`, `{}`)", cx.input_name(si).unwrap_or(""), cx.input_name(zi).unwrap_or(""));
    let scale = cx.const_input(si, "scale")?;
    if !scale.dtype().is_float() || scale.rank() > 1 {
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
            if z.len() != scales.len() {
                return Err(cx.err(format!(
                    "quantization parameters {names}: {} scales but {} zero points",
                    scales.len(),
                    z.len()
                )));
            }
            let zps: Vec<i32> = z.to_i64_vec().unwrap_or_default().into_iter().map(|v| v as i32).collect();
            (z.dtype(), zps)
        }
        None => (default, vec![0; scales.len()]),
    };
    let q = match (scales.as_slice(), zps.as_slice()) {
        ([s], [z]) => QuantParams::per_tensor(*s, *z),
        _ => {
            let axis = norm_axis(axis, rank).map_err(|m| cx.err(format!("quantization axis: {m}")))?;
            QuantParams::PerAxis { axis, scales, zero_points: zps }
        }
    };
    q.check().map_err(|m| cx.err(format!("quantization parameters {names}: {m}")))?;
    Ok((dtype, q))
}

/// Input `vi` as a quantized value carrying the parameters of inputs `si`/`zi`: a constant
/// integer tensor becomes a constant of that quantized type; any other value must already
/// have exactly that type.
fn quant_operand(cx: &mut Cx, vi: usize, si: usize, zi: usize, axis: i64, what: &str) -> R<Value> {
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
            let (dtype, q) = qparams(cx, si, zi, axis, t.rank(), t.dtype())?;
            if dtype != t.dtype() {
                return Err(
                    cx.err(format!("constant `{name}` ({what}) is {} but its zero point is {dtype}", t.dtype()))
                );
            }
            if let QuantParams::PerAxis { axis, scales, .. } = &q {
                if t.shape().get(*axis) != Some(&scales.len()) {
                    return Err(cx.err(format!(
                        "constant `{name}` ({what}) of shape {:?} has {} scales for axis {axis}",
                        t.shape(),
                        scales.len()
                    )));
                }
            }
            let ty = TensorType::quantized(dtype, t.ir_shape(), q);
            return Ok(cx.im.quant_const(name, &t, ty));
        }
    }
    let v = cx.value(name)?;
    let ty = cx.ty(v);
    if ty.quant.is_none() {
        return Err(cx.err(format!(
            "input `{name}` ({what}) is {ty}, not a quantized value: it must come from QuantizeLinear, \
             a quantized op or a constant"
        )));
    }
    let (dtype, q) = qparams(cx, si, zi, axis, ty.rank(), ty.dtype)?;
    let declared = TensorType::quantized(dtype, ty.shape.clone(), q);
    if declared != ty {
        return Err(cx.err(format!(
            "input `{name}` ({what}) is {ty}, but the node declares {declared}; qforge does not \
             requantize between different parameters here"
        )));
    }
    Ok(v)
}

/// The `axis` attribute of QuantizeLinear / DequantizeLinear (default 1), after rejecting
/// blocked quantization.
fn q_axis(cx: &Cx) -> R<i64> {
    let a = cx.attrs();
    if a.int_or("block_size", 0)? != 0 {
        return Err(cx.err("blocked quantization (block_size) is not supported"));
    }
    a.int_or("axis", 1)
}

fn quantize_linear(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    let ty = cx.ty(x);
    let axis = q_axis(cx)?;
    let out_dtype = match cx.attrs().int("output_dtype")? {
        None | Some(0) => None,
        Some(code) => {
            let code = i32::try_from(code).map_err(|_| cx.err(format!("unknown output_dtype {code}")))?;
            Some(dtype_from_onnx(code).map_err(|m| cx.err(format!("output_dtype: {m}")))?)
        }
    };
    let (dtype, q) = qparams(cx, 1, 2, axis, ty.rank(), out_dtype.unwrap_or(DType::U8))?;
    if out_dtype.is_some_and(|d| d != dtype) {
        return Err(cx.err(format!("the zero point's type {dtype} differs from output_dtype")));
    }
    let declared = TensorType::quantized(dtype, ty.shape.clone(), q);
    one(cx.add(Op::Quantize, vec![Some(x)], Some(vec![declared]))?)
}

fn dequantize_linear(cx: &mut Cx) -> R<Outs> {
    let axis = q_axis(cx)?;
    // From opset 19 the result has the scale's type; the IR's dequantize produces f32.
    let scale = cx.const_input(1, "scale")?;
    if scale.dtype() != DType::F32 {
        return Err(cx.err(format!("a {} scale is not supported (the result would be {0})", scale.dtype())));
    }
    let x = quant_operand(cx, 0, 1, 2, axis, "x")?;
    one(cx.add(Op::Dequantize, vec![Some(x)], None)?)
}

fn dynamic_quantize_linear(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    let v = cx.add(Op::DynamicQuantize, vec![Some(x)], None)?;
    Ok((0..3).map(|p| Some(Value::new(v.node, p))).collect())
}

/// The declared result of a requantizing op: the storage type of `zi` (u8 when absent) and
/// per-tensor parameters.
fn declared_out(cx: &Cx, si: usize, zi: usize, shape: &Shape) -> R<Vec<TensorType>> {
    let (dtype, q) = qparams(cx, si, zi, 1, shape.rank(), DType::U8)?;
    Ok(vec![TensorType::quantized(dtype, shape.clone(), q)])
}

fn qlinear_conv(cx: &mut Cx) -> R<Outs> {
    if cx.node.input.len() > 9 {
        return Err(cx.err("has more than 9 inputs"));
    }
    let x = quant_operand(cx, 0, 1, 2, 1, "x")?;
    let w = quant_operand(cx, 3, 4, 5, 0, "w")?;
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
    let a = quant_operand(cx, 0, 1, 2, -1, "a")?;
    let b = quant_operand(cx, 3, 4, 5, -1, "b")?;
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
    let a = quant_operand(cx, 0, 1, 2, 1, "a")?;
    let b = quant_operand(cx, 3, 4, 5, if trans_b { 0 } else { 1 }, "b")?;
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
    let x = quant_operand(cx, 0, 1, 2, 1, "x")?;
    let declared = declared_out(cx, 3, 4, &cx.ty(x).shape)?;
    one(cx.add(Op::QGlobalAveragePool, vec![Some(x)], Some(declared))?)
}

fn qlinear_average_pool(cx: &mut Cx) -> R<Outs> {
    channels_first(cx)?;
    let x = quant_operand(cx, 0, 1, 2, 1, "x")?;
    let xt = cx.ty(x);
    let p = pool_attrs(cx, &xt, true)?;
    let declared = declared_out(cx, 3, 4, &xt.shape)?;
    one(cx.add(Op::QAveragePool(p), vec![Some(x)], Some(declared))?)
}

fn qlinear_binary(cx: &mut Cx, op: Op) -> R<Outs> {
    let a = quant_operand(cx, 0, 1, 2, 1, "a")?;
    let b = quant_operand(cx, 3, 4, 5, 1, "b")?;
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
        ins.push(Some(quant_operand(cx, 2 + 3 * k, 3 + 3 * k, 4 + 3 * k, 1, &format!("input {k}"))?));
    }
    let first = ins.first().copied().flatten().ok_or_else(|| cx.err("needs at least one input"))?;
    let declared = declared_out(cx, 0, 1, &cx.ty(first).shape)?;
    one(cx.add(Op::QConcat { axis }, ins, Some(declared))?)
}
