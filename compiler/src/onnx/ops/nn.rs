//! Neural-network ops: convolution, pooling, batch normalization, LRN, activations and Dropout
//! (semantics: the ONNX operator spec, <https://onnx.ai/onnx/operators/>). The attribute
//! readers for convolution and pooling ([`conv_attrs`], [`pool_attrs`]) serve the quantized
//! forms in [`super::quant`] too.

use super::{one, Cx, OpDef, Outs, MAX_ATTR_DIM, R};
use crate::onnx::attrs::Attrs;
use qforge_ir::{BinaryOp, ConvAttrs, Dim, Op, PoolAttrs, Shape, TensorType, UnaryOp, Value};

pub(super) const OPS: &[OpDef] = &[
    OpDef::onnx("Conv", &[1, 11, 22], conv),
    OpDef::onnx("BatchNormalization", &[1, 6, 7, 9, 14, 15], batch_norm),
    OpDef::onnx("MaxPool", &[1, 8, 10, 11, 12, 22], |cx| pool(cx, false)),
    OpDef::onnx("AveragePool", &[1, 7, 10, 11, 19, 22], |cx| pool(cx, true)),
    OpDef::onnx("GlobalAveragePool", &[1, 22], |cx| cx.simple(Op::GlobalAveragePool, 1)),
    OpDef::onnx("GlobalMaxPool", &[1, 22], |cx| cx.simple(Op::GlobalMaxPool, 1)),
    OpDef::onnx("LRN", &[1, 13], lrn),
    OpDef::onnx("Relu", &[1, 6, 13, 14], |cx| cx.unary(UnaryOp::Relu)),
    OpDef::onnx("Sigmoid", &[1, 6, 13], |cx| cx.unary(UnaryOp::Sigmoid)),
    OpDef::onnx("Tanh", &[1, 6, 13], |cx| cx.unary(UnaryOp::Tanh)),
    OpDef::onnx("HardSwish", &[14, 22], |cx| cx.unary(UnaryOp::HardSwish)),
    OpDef::onnx("LeakyRelu", &[1, 6, 16], leaky_relu),
    OpDef::onnx("HardSigmoid", &[1, 6, 22], hard_sigmoid),
    OpDef::onnx("Clip", &[1, 6, 11, 12, 13], clip),
    // Gelu joined the default domain in opset 20; ONNX Runtime has had it (exact erf form) as a
    // contrib op.
    OpDef::onnx("Gelu", &[20], gelu),
    OpDef::microsoft("Gelu", |cx| cx.unary(UnaryOp::Gelu)),
    OpDef::onnx("Dropout", &[1, 6, 7, 10, 12, 13, 22], dropout),
];

fn leaky_relu(cx: &mut Cx) -> R<Outs> {
    let alpha = cx.attrs().float_or("alpha", 0.01)?;
    cx.simple(Op::LeakyRelu { alpha }, 1)
}

fn hard_sigmoid(cx: &mut Cx) -> R<Outs> {
    let a = cx.attrs();
    let (alpha, beta) = (a.float_or("alpha", 0.2)?, a.float_or("beta", 0.5)?);
    cx.simple(Op::HardSigmoid { alpha, beta }, 1)
}

fn gelu(cx: &mut Cx) -> R<Outs> {
    let approx = cx.attrs().string("approximate")?.unwrap_or_else(|| "none".into());
    let u = match approx.as_str() {
        "none" => UnaryOp::Gelu,
        "tanh" => UnaryOp::GeluTanh,
        other => return Err(cx.err(format!("unknown approximate=\"{other}\""))),
    };
    cx.unary(u)
}

/// Clip: bounds are attributes before version 11, optional inputs from then on (of the input's
/// type from version 12 on, which adds integer types). Constant bounds on a float input make the
/// IR's `clip`; otherwise (integer inputs, or bounds computed at run time, which Clip-11 requires
/// to be scalars) the result is `min(max(x, lo), hi)`, numpy's `clip`, which the ONNX reference
/// follows (NaN propagates, and `lo > hi` gives `hi`).
fn clip(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    let (min, max) = if cx.version < 11 {
        let a = cx.attrs();
        (a.float_or("min", f32::NEG_INFINITY)?, a.float_or("max", f32::INFINITY)?)
    } else {
        if cx.node.input.len() > 3 {
            return Err(cx.err(format!("has {} inputs; at most 3 are allowed", cx.node.input.len())));
        }
        let constant = |cx: &Cx, i: usize| cx.input_name(i).is_none_or(|n| cx.im.const_by_name(n).is_some());
        if !cx.ty(x).dtype.is_float() || !constant(cx, 1) || !constant(cx, 2) {
            return clip_by_max_min(cx, x);
        }
        (
            cx.opt_scalar_f32(1, "min")?.unwrap_or(f32::NEG_INFINITY),
            cx.opt_scalar_f32(2, "max")?.unwrap_or(f32::INFINITY),
        )
    };
    if min.is_nan() || max.is_nan() {
        return Err(cx.err("clip bounds must not be NaN"));
    }
    one(cx.add(Op::Clip { min, max }, vec![Some(x)], None)?)
}

/// Clip as `min(max(x, lo), hi)` on the bound inputs, each a scalar of the input's type.
fn clip_by_max_min(cx: &mut Cx, x: Value) -> R<Outs> {
    let mut y = x;
    let bounds = [(1, "min", BinaryOp::Max), (2, "max", BinaryOp::Min)];
    let present: Vec<_> = bounds.into_iter().filter(|(i, ..)| cx.input_name(*i).is_some()).collect();
    if present.is_empty() {
        return Ok(vec![Some(x)]);
    }
    for (k, &(i, what, op)) in present.iter().enumerate() {
        let b = cx.input(i)?;
        let bt = cx.ty(b);
        if bt.shape.as_fixed().is_none_or(|s| s.iter().product::<usize>() != 1) {
            return Err(cx.err(format!("input {i} ({what}) must be a scalar, got {bt}")));
        }
        y = if k + 1 == present.len() {
            cx.add(Op::Binary(op), vec![Some(y), Some(b)], None)?
        } else {
            cx.add_helper(what, Op::Binary(op), vec![Some(y), Some(b)])?
        };
    }
    one(y)
}

fn batch_norm(cx: &mut Cx) -> R<Outs> {
    let a = cx.attrs();
    let epsilon = a.float_or("epsilon", 1e-5)?;
    if a.bool_or("training_mode", false)? {
        return Err(cx.err("training_mode=1 is not supported (inference only)"));
    }
    let ins = cx.inputs_upto(5, 5)?;
    one(cx.add(Op::BatchNorm { epsilon }, ins, None)?)
}

fn lrn(cx: &mut Cx) -> R<Outs> {
    let a = cx.attrs();
    let size = a.int("size")?.ok_or_else(|| cx.err("attribute `size` is required"))?;
    let size = usize::try_from(size).ok().filter(|&s| s > 0 && s <= MAX_ATTR_DIM);
    let size = size.ok_or_else(|| cx.err("attribute `size` must be positive"))?;
    let op = Op::Lrn {
        size,
        alpha: a.float_or("alpha", 1e-4)?,
        beta: a.float_or("beta", 0.75)?,
        bias: a.float_or("bias", 1.0)?,
    };
    cx.simple(op, 1)
}

/// Inference: Dropout is the identity; its mask output is not computed.
fn dropout(cx: &mut Cx) -> R<Outs> {
    if cx.version >= 12 {
        if let Some(t) = cx.opt_const_input(2, "training_mode")? {
            if t.to_f64_vec().iter().any(|&b| b != 0.0) {
                return Err(cx.err("training_mode=true is not supported (inference only)"));
            }
        }
    }
    Ok(vec![Some(cx.input(0)?), None])
}

// ---------------------------------------------------------------- conv and pooling

/// Sizes for each spatial dim: the attribute (of length `sp`) or `default`.
fn spatial(cx: &Cx, a: &Attrs, name: &str, sp: usize, default: usize) -> R<Vec<usize>> {
    match a.usizes(name)? {
        Some(v) if v.len() == sp => cx.bounded(name, v),
        Some(v) => Err(cx.err(format!("`{name}` has {} entries for {sp} spatial dims", v.len()))),
        None => Ok(vec![default; sp]),
    }
}

/// Begin-then-end pads from `pads` or `auto_pad` (SAME_UPPER puts the odd pad at the end,
/// SAME_LOWER at the beginning, as the Conv spec says).
fn pads(cx: &Cx, a: &Attrs, x: &Shape, kernel: &[usize], strides: &[usize], dilations: &[usize]) -> R<Vec<usize>> {
    let sp = kernel.len();
    let auto = a.string("auto_pad")?.unwrap_or_default();
    match auto.as_str() {
        "" | "NOTSET" => match a.usizes("pads")? {
            Some(p) if p.len() == 2 * sp => cx.bounded("pads", p),
            Some(p) => Err(cx.err(format!("`pads` has {} entries for {sp} spatial dims", p.len()))),
            None => Ok(vec![0; 2 * sp]),
        },
        "VALID" => Ok(vec![0; 2 * sp]),
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut pads = vec![0; 2 * sp];
            for i in 0..sp {
                let n = x.0.get(2 + i).and_then(Dim::fixed).filter(|&n| n > 0);
                let n = n.ok_or_else(|| cx.err(format!("auto_pad={auto} needs fixed spatial dims, got {x}")))?;
                let (k, s, d) = (kernel[i], strides[i], dilations[i]);
                if k == 0 || s == 0 || d == 0 {
                    return Err(cx.err("kernel, strides and dilations must be positive"));
                }
                let out = n.div_ceil(s);
                let total = ((out - 1) * s + d * (k - 1) + 1).saturating_sub(n);
                let (small, big) = (total / 2, total - total / 2);
                (pads[i], pads[sp + i]) = if auto == "SAME_UPPER" { (small, big) } else { (big, small) };
            }
            Ok(pads)
        }
        other => Err(cx.err(format!("unknown auto_pad \"{other}\""))),
    }
}

/// The attributes of Conv (and ConvInteger, QLinearConv) for input `x` and weight `w`.
pub(super) fn conv_attrs(cx: &Cx, x: &TensorType, w: &TensorType) -> R<ConvAttrs> {
    let a = cx.attrs();
    let wk = w.shape.as_fixed().filter(|ws| ws.len() >= 3).map(|ws| ws[2..].to_vec());
    let kernel = match (a.usizes("kernel_shape")?, wk) {
        (Some(k), Some(wk)) if k != wk => {
            return Err(cx.err(format!("kernel_shape {k:?} does not match the weight shape {}", w.shape)))
        }
        (Some(k), _) | (None, Some(k)) => cx.bounded("kernel_shape", k)?,
        (None, None) => return Err(cx.err(format!("cannot tell the kernel shape from the weight {}", w.shape))),
    };
    let sp = kernel.len();
    let strides = spatial(cx, &a, "strides", sp, 1)?;
    let dilations = spatial(cx, &a, "dilations", sp, 1)?;
    let group = a.int_or("group", 1)?;
    let group = usize::try_from(group).ok().filter(|g| (1..=MAX_ATTR_DIM).contains(g));
    let group = group.ok_or_else(|| cx.err("`group` must be positive"))?;
    let pads = pads(cx, &a, &x.shape, &kernel, &strides, &dilations)?;
    Ok(ConvAttrs { kernel, strides, pads, dilations, group })
}

fn conv(cx: &mut Cx) -> R<Outs> {
    let ins = cx.inputs_upto(2, 3)?;
    let (x, w) = (cx.input(0)?, cx.input(1)?);
    let attrs = conv_attrs(cx, &cx.ty(x), &cx.ty(w))?;
    one(cx.add(Op::Conv(attrs), ins, None)?)
}

/// The attributes of MaxPool and AveragePool (`avg`), and of QLinearAveragePool.
pub(super) fn pool_attrs(cx: &Cx, x: &TensorType, avg: bool) -> R<PoolAttrs> {
    let a = cx.attrs();
    let kernel = a.usizes("kernel_shape")?.ok_or_else(|| cx.err("attribute `kernel_shape` is required"))?;
    let kernel = cx.bounded("kernel_shape", kernel)?;
    let sp = kernel.len();
    let strides = spatial(cx, &a, "strides", sp, 1)?;
    let dilations = spatial(cx, &a, "dilations", sp, 1)?;
    let pads = pads(cx, &a, &x.shape, &kernel, &strides, &dilations)?;
    Ok(PoolAttrs {
        kernel,
        strides,
        pads,
        dilations,
        ceil_mode: a.bool_or("ceil_mode", false)?,
        count_include_pad: avg && a.bool_or("count_include_pad", false)?,
    })
}

fn pool(cx: &mut Cx, avg: bool) -> R<Outs> {
    let x = cx.input(0)?;
    let p = pool_attrs(cx, &cx.ty(x), avg)?;
    let op = if avg { Op::AveragePool(p) } else { Op::MaxPool(p) };
    // MaxPool's optional Indices output is not computed.
    Ok(vec![Some(cx.add(op, vec![Some(x)], None)?), None])
}
