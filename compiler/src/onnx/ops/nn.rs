//! Neural-network ops: convolution (and transposed), pooling, resizing (Resize, Upsample), batch
//! normalization, LRN, activations, Dropout and GridSample (semantics: the ONNX operator spec, <https://onnx.ai/onnx/operators/>). The attribute
//! readers for convolution and pooling ([`conv_attrs`], [`pool_attrs`]) serve the quantized
//! forms in [`super::quant`] too.

use super::{one, Cx, OpDef, Outs, MAX_ATTR_DIM, R};
use crate::onnx::attrs::Attrs;
use crate::onnx::symbolic::Mono;
use qforge_ir::infer::norm_axis;
use qforge_ir::{
    AspectPolicy, BinaryOp, ConvAttrs, ConvTransposeAttrs, CoordMode, DType, Dim, DimExpr, GridPadding, NearestMode,
    Op, PoolAttrs, ResizeAttrs, ResizeMode, ResizeTarget, Shape, Tensor, TensorType, UnaryOp, Value,
};

pub(super) const OPS: &[OpDef] = &[
    OpDef::onnx("Conv", &[1, 11, 22], conv),
    OpDef::onnx("ConvTranspose", &[1, 11, 22], conv_transpose),
    OpDef::onnx("Resize", &[10, 11, 13, 18, 19], resize),
    // Upsample is deprecated from opset 10 (Upsample-10 is Upsample-9 marked deprecated).
    OpDef::onnx("Upsample", &[1, 7, 9, 10], upsample),
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
    OpDef::onnx("GridSample", &[16, 20, 22], grid_sample),
    OpDef::onnx("PRelu", &[1, 6, 7, 9, 16], prelu),
    OpDef::onnx("Elu", &[1, 6, 22], elu),
    OpDef::onnx("Selu", &[1, 6, 22], selu),
    OpDef::onnx("Celu", &[12, 28], celu),
    OpDef::onnx("ThresholdedRelu", &[10, 22], thresholded_relu),
    OpDef::onnx("Softplus", &[1, 22], |cx| composed(cx, softplus)),
    OpDef::onnx("Softsign", &[1, 22], |cx| composed(cx, softsign)),
    OpDef::onnx("Mish", &[18, 22], |cx| composed(cx, mish)),
    OpDef::onnx("Swish", &[24], |cx| composed(cx, swish)),
    OpDef::onnx("SwiGLU", &[28], swiglu),
    OpDef::onnx("Shrink", &[9], shrink),
    OpDef::onnx("LpPool", &[1, 2, 11, 18, 22], lp_pool),
];

// ---------------------------------------------------------------- composed activations

/// The float input of an activation the IR has no op for (these are defined on float types only).
fn float_input(cx: &mut Cx) -> R<Value> {
    let x = cx.input(0)?;
    let t = cx.ty(x);
    if !t.dtype.is_float() || t.quant.is_some() {
        return Err(cx.err(format!("needs a float input, got {t}")));
    }
    Ok(x)
}

/// A scalar constant of `x`'s dtype.
fn scalar(cx: &mut Cx, tag: &str, x: Value, k: f64) -> Value {
    let dtype = cx.ty(x).dtype;
    let name = cx.im.fresh_name(&format!("{}/{tag}", cx.at.name));
    cx.im.g.add_const(name, qforge_ir::Tensor::from_f64_iter(dtype, vec![], [k].into_iter()))
}

fn bin(cx: &mut Cx, tag: &str, op: BinaryOp, a: Value, b: Value) -> R<Value> {
    cx.add_helper(tag, Op::Binary(op), vec![Some(a), Some(b)])
}

fn un(cx: &mut Cx, tag: &str, u: UnaryOp, a: Value) -> R<Value> {
    cx.add_helper(tag, Op::Unary(u), vec![Some(a)])
}

/// `where(x < 0, neg, pos)`, the node's result.
fn by_sign(cx: &mut Cx, x: Value, neg: Value, pos: Value) -> R<Outs> {
    let zero = scalar(cx, "zero", x, 0.0);
    let c = bin(cx, "negative", BinaryOp::Less, x, zero)?;
    one(cx.add(Op::Where, vec![Some(c), Some(neg), Some(pos)], None)?)
}

/// PRelu: `x < 0 ? slope * x : x`, the slope broadcast to `x` (ONNX reference `op_prelu.py`).
fn prelu(cx: &mut Cx) -> R<Outs> {
    let x = float_input(cx)?;
    let slope = cx.input(1)?;
    let neg = bin(cx, "scaled", BinaryOp::Mul, x, slope)?;
    by_sign(cx, x, neg, x)
}

/// Elu: `x < 0 ? alpha * (exp(x) - 1) : x`.
fn elu(cx: &mut Cx) -> R<Outs> {
    let alpha = cx.attrs().float_or("alpha", 1.0)?;
    let x = float_input(cx)?;
    let e = un(cx, "exp", UnaryOp::Exp, x)?;
    let one_ = scalar(cx, "one", x, 1.0);
    let em1 = bin(cx, "exp_minus_one", BinaryOp::Sub, e, one_)?;
    let a = scalar(cx, "alpha", x, alpha.into());
    let neg = bin(cx, "scaled", BinaryOp::Mul, em1, a)?;
    by_sign(cx, x, neg, x)
}

/// Selu: `gamma * (x < 0 ? alpha * exp(x) - alpha : x)`, as `(exp(x) * alpha - alpha) * gamma`
/// and `x * gamma`.
fn selu(cx: &mut Cx) -> R<Outs> {
    let a = cx.attrs();
    let alpha = a.float_or("alpha", 1.673_263_2)?;
    let gamma = a.float_or("gamma", 1.050_701)?;
    let x = float_input(cx)?;
    let (ka, kg) = (scalar(cx, "alpha", x, alpha.into()), scalar(cx, "gamma", x, gamma.into()));
    let e = un(cx, "exp", UnaryOp::Exp, x)?;
    let ea = bin(cx, "exp_alpha", BinaryOp::Mul, e, ka)?;
    let t = bin(cx, "minus_alpha", BinaryOp::Sub, ea, ka)?;
    let neg = bin(cx, "negative_part", BinaryOp::Mul, t, kg)?;
    let pos = bin(cx, "positive_part", BinaryOp::Mul, x, kg)?;
    by_sign(cx, x, neg, pos)
}

/// Celu: `max(0, x) + min(0, alpha * (exp(x / alpha) - 1))`.
fn celu(cx: &mut Cx) -> R<Outs> {
    let alpha = cx.attrs().float_or("alpha", 1.0)?;
    if alpha == 0.0 || !alpha.is_finite() {
        return Err(cx.err(format!("alpha={alpha} is not supported (a finite non-zero value)")));
    }
    let x = float_input(cx)?;
    let (zero, one_, a) = (scalar(cx, "zero", x, 0.0), scalar(cx, "one", x, 1.0), scalar(cx, "alpha", x, alpha.into()));
    let xa = bin(cx, "over_alpha", BinaryOp::Div, x, a)?;
    let e = un(cx, "exp", UnaryOp::Exp, xa)?;
    let em1 = bin(cx, "exp_minus_one", BinaryOp::Sub, e, one_)?;
    let s = bin(cx, "scaled", BinaryOp::Mul, em1, a)?;
    let neg = bin(cx, "negative_part", BinaryOp::Min, s, zero)?;
    let pos = bin(cx, "positive_part", BinaryOp::Max, x, zero)?;
    one(cx.add(Op::Binary(BinaryOp::Add), vec![Some(pos), Some(neg)], None)?)
}

/// ThresholdedRelu: `x > alpha ? x : 0`.
fn thresholded_relu(cx: &mut Cx) -> R<Outs> {
    let alpha = cx.attrs().float_or("alpha", 1.0)?;
    let x = float_input(cx)?;
    let (zero, a) = (scalar(cx, "zero", x, 0.0), scalar(cx, "alpha", x, alpha.into()));
    let c = bin(cx, "above", BinaryOp::Greater, x, a)?;
    one(cx.add(Op::Where, vec![Some(c), Some(x), Some(zero)], None)?)
}

/// Builds an activation from its float input: the helper nodes, then the last op and its inputs.
type Compose = fn(&mut Cx, Value) -> R<(Op, Vec<Value>)>;

/// An activation built by `f` from the float input: every node but the last is a helper.
fn composed(cx: &mut Cx, f: Compose) -> R<Outs> {
    let x = float_input(cx)?;
    let (op, ins) = f(cx, x)?;
    one(cx.add(op, ins.into_iter().map(Some).collect(), None)?)
}

/// `ln(exp(x) + 1)` (ONNX reference `op_softplus.py`).
fn softplus_of(cx: &mut Cx, x: Value) -> R<Value> {
    let e = un(cx, "exp", UnaryOp::Exp, x)?;
    let one_ = scalar(cx, "one", x, 1.0);
    bin(cx, "exp_plus_one", BinaryOp::Add, e, one_)
}

fn softplus(cx: &mut Cx, x: Value) -> R<(Op, Vec<Value>)> {
    Ok((Op::Unary(UnaryOp::Log), vec![softplus_of(cx, x)?]))
}

/// `x / (1 + |x|)`.
fn softsign(cx: &mut Cx, x: Value) -> R<(Op, Vec<Value>)> {
    let a = un(cx, "abs", UnaryOp::Abs, x)?;
    let one_ = scalar(cx, "one", x, 1.0);
    let d = bin(cx, "one_plus_abs", BinaryOp::Add, a, one_)?;
    Ok((Op::Binary(BinaryOp::Div), vec![x, d]))
}

/// `x * tanh(ln(1 + exp(x)))`.
fn mish(cx: &mut Cx, x: Value) -> R<(Op, Vec<Value>)> {
    let e1 = softplus_of(cx, x)?;
    let sp = un(cx, "softplus", UnaryOp::Log, e1)?;
    let t = un(cx, "tanh", UnaryOp::Tanh, sp)?;
    Ok((Op::Binary(BinaryOp::Mul), vec![x, t]))
}

/// `alpha * x` (no node when `alpha` is 1).
fn scaled_by(cx: &mut Cx, x: Value, alpha: f32) -> R<Value> {
    if alpha == 1.0 {
        return Ok(x);
    }
    let a = scalar(cx, "alpha", x, alpha.into());
    bin(cx, "alpha_x", BinaryOp::Mul, x, a)
}

/// Swish (version 24): `x * sigmoid(alpha * x)` (ONNX reference `op_swish.py`).
fn swish(cx: &mut Cx, x: Value) -> R<(Op, Vec<Value>)> {
    let alpha = cx.attrs().float_or("alpha", 1.0)?;
    let ax = scaled_by(cx, x, alpha)?;
    let s = un(cx, "sigmoid", UnaryOp::Sigmoid, ax)?;
    Ok((Op::Binary(BinaryOp::Mul), vec![x, s]))
}

/// SwiGLU (version 28): `a * sigmoid(alpha * a) * b` for `a`, `b` of one shape (ONNX reference
/// `op_swiglu.py`: the Swish of `a`, then the product with `b`).
fn swiglu(cx: &mut Cx) -> R<Outs> {
    let alpha = cx.attrs().float_or("alpha", 1.0)?;
    let a = float_input(cx)?;
    let b = cx.input(1)?;
    let (at, bt) = (cx.ty(a), cx.ty(b));
    if at.dtype != bt.dtype || at.shape != bt.shape {
        return Err(cx.err(format!("inputs A ({at}) and B ({bt}) must have one type and shape")));
    }
    let ax = scaled_by(cx, a, alpha)?;
    let s = un(cx, "sigmoid", UnaryOp::Sigmoid, ax)?;
    let sw = bin(cx, "swish", BinaryOp::Mul, a, s)?;
    one(cx.add(Op::Binary(BinaryOp::Mul), vec![Some(sw), Some(b)], None)?)
}

/// Shrink: `x < -lambd ? x + bias : (x > lambd ? x - bias : 0)` (ONNX reference `op_shrink.py`).
fn shrink(cx: &mut Cx) -> R<Outs> {
    let a = cx.attrs();
    let (lambd, bias) = (a.float_or("lambd", 0.5)?, a.float_or("bias", 0.0)?);
    let x = float_input(cx)?;
    let (lo, hi) = (scalar(cx, "minus_lambd", x, (-lambd).into()), scalar(cx, "lambd", x, lambd.into()));
    let (b, zero) = (scalar(cx, "bias", x, bias.into()), scalar(cx, "zero", x, 0.0));
    let below = bin(cx, "below", BinaryOp::Less, x, lo)?;
    let above = bin(cx, "above", BinaryOp::Greater, x, hi)?;
    let plus = bin(cx, "plus_bias", BinaryOp::Add, x, b)?;
    let minus = bin(cx, "minus_bias", BinaryOp::Sub, x, b)?;
    let upper = cx.add_helper("upper", Op::Where, vec![Some(above), Some(minus), Some(zero)])?;
    one(cx.add(Op::Where, vec![Some(below), Some(plus), Some(upper)], None)?)
}

/// LpPool: `(sum over the window of |x|^p)^(1/p)`, padded cells counting as 0, as the ONNX backend
/// test cases compute it (`pool_op_common.py`, pooling type `LPPOOL`): an average pool that counts
/// padded cells in its divisor, times the kernel's element count. Version 18 adds `ceil_mode` and
/// `dilations`, which [`pool_attrs`] reads at every version (absent before).
fn lp_pool(cx: &mut Cx) -> R<Outs> {
    if cx.version < 2 {
        return Err(cx.err("version 1 (a float `p`) is not supported; version 2 on is"));
    }
    let p = cx.attrs().int_or("p", 2)?;
    if !(1..=64).contains(&p) {
        return Err(cx.err(format!("p={p} is not supported (1 to 64)")));
    }
    let p = p as f64;
    let x = float_input(cx)?;
    if cx.ty(x).rank() < 3 {
        return Err(cx.err(format!("needs an input of rank 3 or more, got {}", cx.ty(x))));
    }
    let attrs = pool_attrs(cx, &cx.ty(x), true)?;
    if attrs.ceil_mode {
        // A window overhanging the padded input would divide by fewer cells than the kernel's.
        return Err(cx.err("ceil_mode=1 is not supported"));
    }
    let count = attrs.kernel.iter().product::<usize>() as f64;
    let attrs = PoolAttrs { count_include_pad: true, ..attrs };
    let ab = un(cx, "abs", UnaryOp::Abs, x)?;
    let pk = scalar(cx, "p", x, p);
    let pw = bin(cx, "power", BinaryOp::Pow, ab, pk)?;
    let avg = cx.add_helper("average", Op::AveragePool(attrs), vec![Some(pw)])?;
    let n = scalar(cx, "kernel_count", x, count);
    let sum = bin(cx, "sum", BinaryOp::Mul, n, avg)?;
    let inv = scalar(cx, "inverse_p", x, 1.0 / p);
    one(cx.add(Op::Binary(BinaryOp::Pow), vec![Some(sum), Some(inv)], None)?)
}

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
        return batch_norm_training(cx, epsilon);
    }
    let ins = cx.inputs_upto(5, 5)?;
    one(cx.add(Op::BatchNorm { epsilon }, ins, None)?)
}

/// BatchNormalization 14-15 with `training_mode=1`, as the ONNX reference's
/// `_batchnorm_training_mode` computes it: the statistics of this batch over every axis but the
/// channels (`x.mean`, and `x.var` as the mean of `(x - mean)^2`) normalize `x`, and the outputs
/// `running_mean`, `running_var` are `input * momentum + current * (1 - momentum)` (the factor
/// `1 - momentum` computed in f64, then rounded to x's type, as numpy does with a Python float).
fn batch_norm_training(cx: &mut Cx, epsilon: f32) -> R<Outs> {
    let momentum = cx.attrs().float_or("momentum", 0.9)?;
    let ins = cx.inputs_upto(5, 5)?;
    let [Some(x), Some(scale), Some(bias), Some(mean), Some(var)] = ins[..] else {
        return Err(cx.err("needs its five inputs"));
    };
    let xt = cx.ty(x);
    if !xt.dtype.is_compute_float() || xt.quant.is_some() || xt.rank() < 2 {
        return Err(cx.err(format!("training_mode=1 needs a float input of rank 2 or more, got {xt}")));
    }
    let axes: Vec<i64> = (0..xt.rank() as i64).filter(|&a| a != 1).collect();
    let bin = |cx: &mut Cx, tag: &str, op: BinaryOp, a: Value, b: Value| {
        cx.add_helper(tag, Op::Binary(op), vec![Some(a), Some(b)])
    };
    let kept = Op::ReduceMean { axes: axes.clone(), keepdims: true };
    let flat = Op::ReduceMean { axes, keepdims: false };
    let mean_kept = cx.add_helper("batch_mean_kept", kept, vec![Some(x)])?;
    let centered = bin(cx, "centered", BinaryOp::Sub, x, mean_kept)?;
    let squared = bin(cx, "squared", BinaryOp::Mul, centered, centered)?;
    let batch_mean = cx.add_helper("batch_mean", flat.clone(), vec![Some(x)])?;
    let batch_var = cx.add_helper("batch_var", flat, vec![Some(squared)])?;
    let y = cx.add(
        Op::BatchNorm { epsilon },
        vec![Some(x), Some(scale), Some(bias), Some(batch_mean), Some(batch_var)],
        None,
    )?;
    let k = |cx: &mut Cx, tag: &str, v: f64| {
        let name = cx.im.fresh_name(&format!("{}/{tag}", cx.at.name));
        cx.im.g.add_const(name, Tensor::from_f64_iter(xt.dtype, vec![], [v].into_iter()))
    };
    let (m, rest) = (k(cx, "momentum", momentum as f64), k(cx, "one_minus_momentum", 1.0 - momentum as f64));
    let mut running = vec![];
    for (tag, input, current) in [("running_mean", mean, batch_mean), ("running_var", var, batch_var)] {
        let old = bin(cx, &format!("{tag}/kept"), BinaryOp::Mul, input, m)?;
        let new = bin(cx, &format!("{tag}/new"), BinaryOp::Mul, current, rest)?;
        running.push(Some(bin(cx, tag, BinaryOp::Add, old, new)?));
    }
    Ok(vec![Some(y), running[0], running[1]])
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

/// Dropout as the ONNX reference's `_dropout` computes it when nothing is dropped (inference, or
/// training with ratio 0): the identity, and from version 10 (a bool mask) the mask output all
/// true, as a `true` expanded to x's shape. Training with a non-zero ratio drops elements at
/// random (its outputs depend on the generator), and is refused.
fn dropout(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    if cx.version >= 12 {
        let training = match cx.opt_const_input(2, "training_mode")? {
            Some(t) => t.to_f64_vec().iter().any(|&b| b != 0.0),
            None => false,
        };
        let ratio = match cx.opt_const_input(1, "ratio")? {
            Some(t) => t.to_f64_vec().first().copied().unwrap_or(0.5),
            None => 0.5,
        };
        if training && ratio != 0.0 {
            return Err(cx.err(format!(
                "training_mode=true with ratio {ratio} drops elements at random: not supported (inference only)"
            )));
        }
    }
    let wants_mask = cx.node.output.get(1).is_some_and(|o| !o.is_empty());
    if !wants_mask || cx.version < 10 {
        return Ok(vec![Some(x), None]);
    }
    let xt = cx.ty(x);
    let name = cx.im.fresh_name(&format!("{}/true", cx.at.name));
    let t = cx.im.g.add_const(name, Tensor::from_f64_iter(DType::Bool, vec![], [1.0].into_iter()));
    let shape = xt
        .shape
        .0
        .iter()
        .enumerate()
        .map(|(a, d)| match d.fixed() {
            Some(n) => DimExpr::fixed(n as i64),
            None => DimExpr::product(1, vec![(1, a)]),
        })
        .collect();
    let mask = cx.add_helper("mask", Op::ExpandDyn { shape }, vec![Some(t), Some(x)])?;
    Ok(vec![Some(x), Some(mask)])
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
                let (k, s, d) = (kernel[i], strides[i], dilations[i]);
                if k == 0 || s == 0 || d == 0 {
                    return Err(cx.err("kernel, strides and dilations must be positive"));
                }
                let dim = x.0.get(2 + i).ok_or_else(|| cx.err(format!("input {x} has no spatial dim {i}")))?;
                let total = match dim.fixed() {
                    Some(n) => {
                        if n == 0 {
                            return Err(cx.err(format!("auto_pad={auto} on an empty spatial dim ({x})")));
                        }
                        let out = n.div_ceil(s);
                        ((out - 1) * s + d * (k - 1) + 1).saturating_sub(n)
                    }
                    // The total `(ceil(n / s) - 1) s + span - n` is `span - s` for every `n` that
                    // is a multiple of the stride (any `n` for stride 1); otherwise it depends on
                    // `n`, and the pads are attributes.
                    None => match dim.factors() {
                        Some((c, _)) if c % s == 0 => (d * (k - 1) + 1).saturating_sub(s),
                        _ => {
                            return Err(cx.err(format!(
                                "auto_pad={auto} with stride {s} on the symbolic dim {dim}: the pads depend on \
                                 its value (fixed pads, or stride 1, are supported)"
                            )))
                        }
                    },
                };
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
    let wants_indices = !avg && cx.node.output.get(1).is_some_and(|o| !o.is_empty());
    if !wants_indices {
        let op = if avg { Op::AveragePool(p) } else { Op::MaxPool(p) };
        return Ok(vec![Some(cx.add(op, vec![Some(x)], None)?), None]);
    }
    // MaxPool's optional Indices (opset 8 on): a second op over the same windows.
    let column_major = match cx.attrs().int("storage_order")?.unwrap_or(0) {
        0 => false,
        1 => true,
        s => return Err(cx.err(format!("storage_order must be 0 or 1, got {s}"))),
    };
    // the reference's 1-D pooling has no storage order to follow
    let column_major = column_major && p.kernel.len() > 1;
    let pool = p.clone();
    let y = cx.add(Op::MaxPool(p), vec![Some(x)], None)?;
    let i = cx.add_helper("indices", Op::MaxPoolIndices { pool, column_major }, vec![Some(x)])?;
    Ok(vec![Some(y), Some(i)])
}

// ---------------------------------------------------------------- transposed convolution

/// ConvTranspose (versions 1, 11 and 22: the same attributes). Pads follow the ONNX reference
/// implementation: with `auto_pad` SAME_UPPER/SAME_LOWER the output is `output_shape` (default
/// `in * stride`) and the total padding `stride * (in - 1) + output_padding + (kernel - 1) *
/// dilation + 1 - out` is split with the odd one at the end (SAME_UPPER) or the beginning;
/// otherwise the pads are as given (VALID: none) and an `output_shape` sets the output size,
/// extending or cutting the output at the end.
fn conv_transpose(cx: &mut Cx) -> R<Outs> {
    let ins = cx.inputs_upto(2, 3)?;
    let (x, w) = (cx.input(0)?, cx.input(1)?);
    let (xt, wt) = (cx.ty(x), cx.ty(w));
    let a = cx.attrs();
    let wk = wt.shape.as_fixed().filter(|ws| ws.len() >= 3).map(|ws| ws[2..].to_vec());
    let kernel = match (a.usizes("kernel_shape")?, wk) {
        (Some(k), Some(wk)) if k != wk => {
            return Err(cx.err(format!("kernel_shape {k:?} does not match the weight shape {}", wt.shape)))
        }
        (Some(k), _) | (None, Some(k)) => cx.bounded("kernel_shape", k)?,
        (None, None) => return Err(cx.err(format!("cannot tell the kernel shape from the weight {}", wt.shape))),
    };
    let sp = kernel.len();
    let strides = spatial(cx, &a, "strides", sp, 1)?;
    let dilations = spatial(cx, &a, "dilations", sp, 1)?;
    let output_padding = spatial(cx, &a, "output_padding", sp, 0)?;
    let group = a.int_or("group", 1)?;
    let group = usize::try_from(group).ok().filter(|g| (1..=MAX_ATTR_DIM).contains(g));
    let group = group.ok_or_else(|| cx.err("`group` must be positive"))?;
    let output_shape = match a.usizes("output_shape")? {
        None => None,
        // Some exporters write the whole output shape (N, C, spatial...).
        Some(s) if s.len() == sp + 2 => Some(cx.bounded("output_shape", s[2..].to_vec())?),
        Some(s) if s.len() == sp => Some(cx.bounded("output_shape", s)?),
        Some(s) => return Err(cx.err(format!("`output_shape` {s:?} does not fit {sp} spatial dims"))),
    };
    let auto = a.string("auto_pad")?.unwrap_or_default();
    // Symbolic spatial dims: without `output_shape` the pads do not depend on the input size
    // (SAME's total below is `output_padding + (kernel - 1) * dilation + 1 - stride`), so the
    // sizes are computed at a stand-in of 1.
    let in_dims: Vec<i64> = (0..sp)
        .map(|i| match xt.shape.0.get(2 + i) {
            Some(Dim::Fixed(n)) => Some(*n as i64),
            Some(Dim::Sym(_)) if output_shape.is_none() => Some(1),
            _ => None,
        })
        .collect::<Option<_>>()
        .ok_or_else(|| {
            cx.err(format!("ConvTranspose with `output_shape` needs fixed spatial dims, got {}", xt.shape))
        })?;
    // The natural size before pads: stride * (in - 1) + output_padding + (kernel - 1) * dilation + 1.
    let natural: Vec<i64> = (0..sp)
        .map(|i| {
            strides[i] as i64 * (in_dims[i] - 1)
                + output_padding[i] as i64
                + (kernel[i] as i64 - 1) * dilations[i] as i64
                + 1
        })
        .collect();
    let mut pads: Vec<i64> = match auto.as_str() {
        "" | "NOTSET" => match a.ints("pads")? {
            Some(p) if p.len() == 2 * sp => {
                if let Some(v) = p.iter().find(|&&v| !(0..=MAX_ATTR_DIM as i64).contains(&v)) {
                    return Err(cx.err(format!("`pads` entry {v} is out of range")));
                }
                p
            }
            Some(p) => return Err(cx.err(format!("`pads` has {} entries for {sp} spatial dims", p.len()))),
            None => vec![0; 2 * sp],
        },
        "VALID" => vec![0; 2 * sp],
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut p = vec![0; 2 * sp];
            for i in 0..sp {
                let out = match &output_shape {
                    Some(o) => o[i] as i64,
                    None => in_dims[i] * strides[i] as i64,
                };
                let total = natural[i] - out;
                let (half, rest) = (total.div_euclid(2), total - total.div_euclid(2));
                (p[i], p[sp + i]) = if auto == "SAME_UPPER" { (half, rest) } else { (rest, half) };
            }
            p
        }
        other => return Err(cx.err(format!("unknown auto_pad \"{other}\""))),
    };
    if let (Some(o), false) = (&output_shape, auto.starts_with("SAME")) {
        for i in 0..sp {
            pads[sp + i] = natural[i] - pads[i] - o[i] as i64;
        }
    }
    let attrs = ConvTransposeAttrs { kernel, strides, pads, dilations, group, output_padding };
    one(cx.add(Op::ConvTranspose(attrs), ins, None)?)
}

// ---------------------------------------------------------------- resizing

/// A string attribute chosen from `table` (`default` when absent).
fn choice<T: Copy>(cx: &Cx, a: &Attrs, name: &str, default: T, table: &[(&str, T)]) -> R<T> {
    match a.string(name)? {
        None => Ok(default),
        Some(s) => table.iter().find(|(n, _)| *n == s).map(|(_, v)| *v).ok_or_else(|| {
            let known: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
            cx.err(format!("{name}=\"{s}\" is not supported (one of {})", known.join(", ")))
        }),
    }
}

/// A constant float input (scales, roi) as f32 values; an empty tensor is `None` (opset 13 lets
/// an input be given as an empty tensor to mean absent).
fn opt_floats_input(cx: &Cx, i: usize, what: &str) -> R<Option<Vec<f32>>> {
    let Some(t) = cx.opt_const_input(i, what)? else { return Ok(None) };
    if t.rank() > 1 {
        return Err(cx.err(format!("input {i} ({what}) must be 1-D, got shape {:?}", t.shape())));
    }
    if !t.dtype().is_float() {
        return Err(cx.err(format!("input {i} ({what}) must be a float tensor, got {}", t.dtype())));
    }
    Ok(Some(t.to_f32_vec()).filter(|v| !v.is_empty()))
}

/// Resize (opsets 10 to 19; see [`ResizeAttrs`]). Opset 10 has only `mode` and a scales input,
/// with ONNX Runtime's asymmetric coordinates and nearest rounding down (so downscaling with
/// nearest, where it rounds up, is refused). From opset 11: roi, scales or sizes (constants, or
/// sizes computed from the input's own shape), and every attribute of the spec; `axes`,
/// `antialias` and `keep_aspect_ratio_policy` from opset 18.
fn resize(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    let xt = cx.ty(x);
    let r = xt.rank();
    let a = cx.attrs();
    let mode = choice(
        cx,
        &a,
        "mode",
        ResizeMode::Nearest,
        &[("nearest", ResizeMode::Nearest), ("linear", ResizeMode::Linear), ("cubic", ResizeMode::Cubic)],
    )?;
    if cx.version < 11 {
        if mode == ResizeMode::Cubic {
            return Err(cx.err("mode=\"cubic\" needs opset 11"));
        }
        let scales = cx.node.input.len();
        if scales != 2 {
            return Err(cx.err(format!("has {scales} inputs; opset 10 takes X and scales")));
        }
        let scales = opt_floats_input(cx, 1, "scales")?.ok_or_else(|| cx.err("input 1 (scales) is missing"))?;
        return legacy_resize(cx, x, mode, scales);
    }
    let coord = choice(
        cx,
        &a,
        "coordinate_transformation_mode",
        CoordMode::HalfPixel,
        &[
            ("half_pixel", CoordMode::HalfPixel),
            ("half_pixel_symmetric", CoordMode::HalfPixelSymmetric),
            ("pytorch_half_pixel", CoordMode::PytorchHalfPixel),
            ("align_corners", CoordMode::AlignCorners),
            ("asymmetric", CoordMode::Asymmetric),
            ("tf_crop_and_resize", CoordMode::TfCropAndResize),
        ],
    )?;
    let nearest = choice(
        cx,
        &a,
        "nearest_mode",
        NearestMode::RoundPreferFloor,
        &[
            ("round_prefer_floor", NearestMode::RoundPreferFloor),
            ("round_prefer_ceil", NearestMode::RoundPreferCeil),
            ("floor", NearestMode::Floor),
            ("ceil", NearestMode::Ceil),
        ],
    )?;
    let policy = choice(
        cx,
        &a,
        "keep_aspect_ratio_policy",
        AspectPolicy::Stretch,
        &[
            ("stretch", AspectPolicy::Stretch),
            ("not_larger", AspectPolicy::NotLarger),
            ("not_smaller", AspectPolicy::NotSmaller),
        ],
    )?;
    let antialias = a.bool_or("antialias", false)?;
    if antialias && mode == ResizeMode::Nearest {
        return Err(cx.err("antialias=1 with mode=\"nearest\" is not defined"));
    }
    let cubic_a = a.float_or("cubic_coeff_a", -0.75)?;
    let exclude_outside = a.bool_or("exclude_outside", false)?;
    let extrapolation = a.float_or("extrapolation_value", 0.0)?;
    let axes: Vec<usize> = match a.ints("axes")? {
        None => (0..r).collect(),
        Some(ax) => {
            let ax: Vec<usize> =
                ax.iter().map(|&v| norm_axis(v, r)).collect::<Result<_, _>>().map_err(|m| cx.err(m))?;
            if (1..ax.len()).any(|i| ax[..i].contains(&ax[i])) {
                return Err(cx.err(format!("`axes` {ax:?} repeats an axis")));
            }
            ax
        }
    };
    if cx.node.input.len() > 4 {
        return Err(cx.err(format!("has {} inputs; at most 4 are allowed", cx.node.input.len())));
    }
    // roi only matters under tf_crop_and_resize (ONNX Resize: "only takes effect when
    // coordinate_transformation_mode is tf_crop_and_resize").
    let roi = if coord == CoordMode::TfCropAndResize {
        let roi = opt_floats_input(cx, 1, "roi")?
            .ok_or_else(|| cx.err("coordinate_transformation_mode=\"tf_crop_and_resize\" needs the roi input"))?;
        if roi.len() != 2 * axes.len() {
            return Err(cx.err(format!("roi has {} values for {} axes", roi.len(), axes.len())));
        }
        let mut full = [vec![0.0; r], vec![1.0; r]].concat();
        for (i, &ax) in axes.iter().enumerate() {
            full[ax] = roi[i];
            full[r + ax] = roi[axes.len() + i];
        }
        full
    } else {
        vec![]
    };
    let scales = opt_floats_input(cx, 2, "scales")?;
    let has_sizes = cx.input_name(3).is_some();
    let mut ins = vec![Some(x)];
    let target = match (scales, has_sizes) {
        (Some(_), true) => return Err(cx.err("scales and sizes are both given; the spec allows one")),
        (Some(s), false) => {
            if s.len() != axes.len() {
                return Err(cx.err(format!("{} scales for {} axes", s.len(), axes.len())));
            }
            if policy != AspectPolicy::Stretch {
                return Err(cx.err("keep_aspect_ratio_policy applies to sizes, not scales"));
            }
            let mut full = vec![1.0; r];
            for (&ax, &v) in axes.iter().zip(&s) {
                full[ax] = v;
            }
            ResizeTarget::Scales(full)
        }
        (None, true) => resize_sizes(cx, &xt, &axes, policy, &mut ins)?,
        (None, false) => return Err(cx.err("neither scales nor sizes is given")),
    };
    let attrs = ResizeAttrs { mode, coord, nearest, cubic_a, exclude_outside, extrapolation, antialias, roi, target };
    one(cx.add(Op::Resize(attrs), ins, None)?)
}

/// The sizes input of Resize: a constant, or a shape value computed from shapes
/// (`Concat(Shape(x)[0:2], [H, W])`: entries equal to the input's dims keep them). Sizes computed
/// from the dims of other values (a segmentation head resized to the image's size) are read from
/// those values' dims at run time ([`ResizeTarget::DimSizes`], whose reference inputs are appended
/// to `ins`); stretched only.
fn resize_sizes(
    cx: &Cx,
    xt: &TensorType,
    axes: &[usize],
    policy: AspectPolicy,
    ins: &mut Vec<Option<Value>>,
) -> R<ResizeTarget> {
    if let Some(s) = cx.sym_input(3) {
        let differs = axes
            .iter()
            .zip(&s.elems)
            .any(|(&ax, m)| !m.syms.is_empty() && Mono::of_dim(&xt.shape.0[ax]).is_none_or(|d| d != *m));
        if differs && s.elems.len() == axes.len() {
            if policy != AspectPolicy::Stretch {
                return Err(
                    cx.err("keep_aspect_ratio_policy with sizes computed from other values' shapes is not supported")
                );
            }
            let (mut kept_axes, mut kept) = (vec![], vec![]);
            for (&ax, m) in axes.iter().zip(&s.elems) {
                if Mono::of_dim(&xt.shape.0[ax]).is_none_or(|d| d != *m) {
                    kept_axes.push(ax);
                    kept.push(m.clone());
                }
            }
            let sizes = cx.dim_exprs(&kept, ins)?;
            return Ok(ResizeTarget::DimSizes { axes: kept_axes, sizes });
        }
    }
    let entries: Vec<Mono> = match cx.sym_input(3) {
        Some(s) => s.elems,
        None => cx.ints_input(3, "sizes")?.into_iter().map(Mono::c).collect(),
    };
    if entries.len() != axes.len() {
        return Err(cx.err(format!("{} sizes for {} axes", entries.len(), axes.len())));
    }
    let (mut kept_axes, mut sizes) = (vec![], vec![]);
    for (&ax, m) in axes.iter().zip(&entries) {
        let same = Mono::of_dim(&xt.shape.0[ax]).is_some_and(|d| d == *m);
        match m.konst() {
            // A size equal to a fixed input dim still counts under an aspect-ratio policy.
            Some(k) if policy != AspectPolicy::Stretch || !same => {
                let k = usize::try_from(k).ok().filter(|&k| k <= MAX_ATTR_DIM);
                let k = k.ok_or_else(|| cx.err(format!("size {m:?} on axis {ax} is out of range")))?;
                kept_axes.push(ax);
                sizes.push(k);
            }
            _ if same && policy == AspectPolicy::Stretch => {}
            _ => {
                return Err(cx.err(format!(
                    "size of axis {ax} is computed from tensor data or other shapes; qforge supports constant sizes \
                     or the input's own dims"
                )))
            }
        }
    }
    if kept_axes.is_empty() {
        // Every size is the input's own: an identity resize (scale 1 on every axis).
        return Ok(ResizeTarget::Scales(vec![1.0; xt.rank()]));
    }
    Ok(ResizeTarget::Sizes { axes: kept_axes, sizes, policy })
}

/// Resize-10 and Upsample-9 (scales input, `nearest` or `linear`): ONNX Runtime's legacy
/// semantics, asymmetric coordinates (`x = y / scale`) with nearest rounding down when
/// upscaling. ONNX Runtime rounds up when a nearest resize downscales; that is refused.
fn legacy_resize(cx: &mut Cx, x: Value, mode: ResizeMode, scales: Vec<f32>) -> R<Outs> {
    let r = cx.ty(x).rank();
    if scales.len() != r {
        return Err(cx.err(format!("{} scales for rank {r}", scales.len())));
    }
    if mode == ResizeMode::Nearest && scales.iter().any(|&s| s < 1.0) {
        return Err(cx.err(format!(
            "nearest downscaling (scales {scales:?}) in opset {} is not supported: ONNX Runtime rounds those \
             coordinates up; convert the model to opset 11 or later",
            cx.at.opset
        )));
    }
    let attrs = ResizeAttrs {
        mode,
        coord: CoordMode::Asymmetric,
        nearest: NearestMode::Floor,
        cubic_a: -0.75,
        exclude_outside: false,
        extrapolation: 0.0,
        antialias: false,
        roi: vec![],
        target: ResizeTarget::Scales(scales),
    };
    one(cx.add(Op::Resize(attrs), vec![Some(x)], None)?)
}

/// Upsample-9 (deprecated in opset 10): scales input, `nearest` or `linear` (`bilinear` in older
/// exporters).
fn upsample(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    let a = cx.attrs();
    let mode = choice(
        cx,
        &a,
        "mode",
        ResizeMode::Nearest,
        &[("nearest", ResizeMode::Nearest), ("linear", ResizeMode::Linear), ("bilinear", ResizeMode::Linear)],
    )?;
    if cx.node.input.len() != 2 {
        return Err(cx.err(format!("has {} inputs; Upsample-9 takes X and scales", cx.node.input.len())));
    }
    let scales = opt_floats_input(cx, 1, "scales")?.ok_or_else(|| cx.err("input 1 (scales) is missing"))?;
    legacy_resize(cx, x, mode, scales)
}

/// GridSample: `mode` `bilinear`/`nearest`/`bicubic` (version 16, 2-D only) or
/// `linear`/`nearest`/`cubic` (20 on, 2-D and 3-D); `padding_mode` `zeros`/`border`/`reflection`;
/// `align_corners` (default 0).
fn grid_sample(cx: &mut Cx) -> R<Outs> {
    let a = cx.attrs();
    let v16 = cx.version < 20;
    let mode = match a.string("mode")?.as_deref() {
        None if v16 => ResizeMode::Linear,
        None => ResizeMode::Linear,
        Some("bilinear") if v16 => ResizeMode::Linear,
        Some("bicubic") if v16 => ResizeMode::Cubic,
        Some("linear") if !v16 => ResizeMode::Linear,
        Some("cubic") if !v16 => ResizeMode::Cubic,
        Some("nearest") => ResizeMode::Nearest,
        Some(m) => return Err(cx.err(format!("mode=\"{m}\" is not a GridSample-{} mode", cx.version))),
    };
    let padding = match a.string("padding_mode")?.as_deref().unwrap_or("zeros") {
        "zeros" => GridPadding::Zeros,
        "border" => GridPadding::Border,
        "reflection" => GridPadding::Reflection,
        m => return Err(cx.err(format!("padding_mode=\"{m}\" is not supported (zeros, border, reflection)"))),
    };
    let align_corners = a.bool_or("align_corners", false)?;
    cx.simple(Op::GridSample { mode, padding, align_corners }, 2)
}
