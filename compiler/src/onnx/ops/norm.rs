//! Normalizations along an axis or over groups of channels: Softmax, LogSoftmax,
//! LayerNormalization, GroupNormalization, and InstanceNormalization, LpNormalization,
//! RMSNormalization, MeanVarianceNormalization and Hardmax as reductions and element-wise ops; the
//! losses over log-probabilities NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss as gathers
//! and reductions (semantics: the ONNX operator spec, <https://onnx.ai/onnx/operators/>). BatchNormalization and LRN, which
//! normalize across channels, are with the other convolutional-network ops in [`super::nn`].

use super::{one, Cx, OpDef, Outs, MAX_ATTR_DIM, R};
use qforge_ir::infer::norm_axis;
use qforge_ir::{BinaryOp, DType, Dim, Op, Tensor, TensorType, UnaryOp, Value};

pub(super) const OPS: &[OpDef] = &[
    OpDef::onnx("Softmax", &[1, 11, 13], |cx| softmax(cx, false)),
    OpDef::onnx("LogSoftmax", &[1, 11, 13], |cx| softmax(cx, true)),
    // LayerNormalization joined the default domain in opset 17.
    OpDef::onnx("LayerNormalization", &[17], layer_norm),
    OpDef::onnx("InstanceNormalization", &[1, 6, 22], instance_norm),
    OpDef::onnx("LpNormalization", &[1, 22], lp_norm),
    OpDef::onnx("GroupNormalization", &[18, 21], group_norm),
    OpDef::onnx("RMSNormalization", &[23], rms_norm),
    OpDef::onnx("MeanVarianceNormalization", &[9, 13], mean_variance_norm),
    OpDef::onnx("Hardmax", &[1, 11, 13], hardmax),
    OpDef::onnx("NegativeLogLikelihoodLoss", &[12, 13, 22], |cx| loss(cx, false)),
    OpDef::onnx("SoftmaxCrossEntropyLoss", &[12, 13], |cx| loss(cx, true)),
];

/// Softmax and LogSoftmax. From version 13 the op normalizes along one axis. Before, it
/// normalized the input coerced to 2-D at `axis` (`[d0*..*d(a-1), da*..*dn]`); that is one
/// axis when every dim after `axis` is 1, and otherwise Flatten -> softmax(1) -> Reshape.
fn softmax(cx: &mut Cx, log: bool) -> R<Outs> {
    let x = cx.input(0)?;
    let ty = cx.ty(x);
    let mk = |axis| if log { Op::LogSoftmax { axis } } else { Op::Softmax { axis } };
    let version = cx.version;
    let axis = cx.attrs().int_or("axis", if version >= 13 { -1 } else { 1 })?;
    if version >= 13 {
        return one(cx.add(mk(axis), vec![Some(x)], None)?);
    }
    let r = ty.rank();
    let a = norm_axis(axis, r).map_err(|m| cx.err(m))?;
    let dims = &ty.shape.0;
    if dims[a + 1..].iter().all(|d| *d == Dim::Fixed(1)) {
        return one(cx.add(mk(a as i64), vec![Some(x)], None)?);
    }
    // The original shape for the final Reshape: fixed dims, or a symbolic batch copied by 0
    // (the flattened dim 0 is d0 exactly when axis is 1).
    let target: Option<Vec<i64>> = dims
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            Dim::Fixed(n) => Some(*n as i64),
            Dim::Sym(_) if i == 0 && a == 1 => Some(0),
            Dim::Sym(_) => None,
        })
        .collect();
    let target = target.ok_or_else(|| {
        cx.err(format!(
            "version {version} {} over the 2-D coercion of {} at axis {axis} needs fixed dims (or only a \
             symbolic batch with axis 1)",
            cx.at.op, ty.shape
        ))
    })?;
    let f = cx.add_helper("flatten", Op::Flatten { axis: a as i64 }, vec![Some(x)])?;
    let s = cx.add_helper("softmax", mk(1), vec![Some(f)])?;
    one(cx.add(Op::Reshape { shape: target }, vec![Some(s)], None)?)
}

/// LayerNormalization (version 17). `stash_type` is the type of the statistics and of their
/// computation: qforge computes them in f32 (an f16 or bf16 input is widened), so only
/// `stash_type=1` (FLOAT) is imported. The optional Mean and InvStdDev outputs (of an f32
/// input) are computed beside the layer norm as the ONNX reference does, over the normalized
/// axes kept as 1s: `mean = ReduceMean(x)`, `1 / sqrt(ReduceMean((x - mean)^2) + epsilon)`.
fn layer_norm(cx: &mut Cx) -> R<Outs> {
    let a = cx.attrs();
    let (axis, epsilon) = (a.int_or("axis", -1)?, a.float_or("epsilon", 1e-5)?);
    let stash = a.int_or("stash_type", 1)?;
    if stash != 1 {
        return Err(cx.err(format!(
            "stash_type={stash} is not supported: qforge computes layer norm statistics in f32 (stash_type=1)"
        )));
    }
    let ins = cx.inputs_upto(2, 3)?;
    let x = cx.input(0)?;
    let wanted = |i: usize| cx.node.output.get(i).is_some_and(|o| !o.is_empty());
    let (want_mean, want_inv) = (wanted(1), wanted(2));
    let stats = if want_mean || want_inv {
        let xt = cx.ty(x);
        if xt.dtype != DType::F32 || xt.quant.is_some() {
            return Err(cx.err(format!("the optional Mean and InvStdDev outputs of a {xt} input are not supported")));
        }
        let a = norm_axis(axis, xt.rank()).map_err(|m| cx.err(m))?;
        let axes: Vec<i64> = (a as i64..xt.rank() as i64).collect();
        let mean_op = |axes: &Vec<i64>| Op::ReduceMean { axes: axes.clone(), keepdims: true };
        let mean = cx.add_helper("mean", mean_op(&axes), vec![Some(x)])?;
        let inv = if want_inv {
            let d = cx.add_helper("deviation", Op::Binary(BinaryOp::Sub), vec![Some(x), Some(mean)])?;
            let sq = cx.add_helper("square", Op::Binary(BinaryOp::Mul), vec![Some(d), Some(d)])?;
            let var = cx.add_helper("variance", mean_op(&axes), vec![Some(sq)])?;
            let name = cx.im.fresh_name(&format!("{}/epsilon", cx.at.name));
            let eps = cx.im.g.add_const(name, Tensor::scalar_f32(epsilon));
            let ve = cx.add_helper("variance_eps", Op::Binary(BinaryOp::Add), vec![Some(var), Some(eps)])?;
            let sd = cx.add_helper("std_dev", Op::Unary(UnaryOp::Sqrt), vec![Some(ve)])?;
            Some(cx.add_helper("inv_std_dev", Op::Unary(UnaryOp::Reciprocal), vec![Some(sd)])?)
        } else {
            None
        };
        (want_mean.then_some(mean), inv)
    } else {
        (None, None)
    };
    let v = cx.add(Op::LayerNorm { axis, epsilon }, ins, None)?;
    Ok(vec![Some(v), stats.0, stats.1])
}

/// Adds `x` `op` a scalar constant of `x`'s float type, as helper `tag`.
fn with_scalar(cx: &mut Cx, tag: &str, op: BinaryOp, x: qforge_ir::Value, k: f64) -> R<qforge_ir::Value> {
    let dtype = cx.ty(x).dtype;
    let name = cx.im.fresh_name(&format!("{}/{tag}_k", cx.at.name));
    let c = cx.im.g.add_const(name, Tensor::from_f64_iter(dtype, vec![], [k].into_iter()));
    cx.add_helper(tag, Op::Binary(op), vec![Some(x), Some(c)])
}

/// InstanceNormalization: each channel of each sample normalized over the spatial axes, then
/// scaled and shifted per channel, as the ONNX reference computes it:
/// `scale * (x - mean) / sqrt(var + epsilon) + bias` (mean and variance over axes 2 and up).
fn instance_norm(cx: &mut Cx) -> R<Outs> {
    let epsilon = cx.attrs().float_or("epsilon", 1e-5)?;
    let (x, scale, bias) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let xt = cx.ty(x);
    if xt.rank() < 3 || !xt.dtype.is_float() || xt.quant.is_some() {
        return Err(cx.err(format!("needs a float input of rank 3 or more, got {xt}")));
    }
    // with a fixed channel count it is group normalization with one group per channel (the
    // same mean, variance and per-channel affine: ONNX's GroupNormalization-21 with
    // num_groups = C), which the JIT runs as one kernel step
    if let Some(c) = xt.shape.0.get(1).and_then(Dim::fixed) {
        let per_channel = |t: &TensorType| t.shape.0.len() == 1 && t.shape.0[0] == Dim::Fixed(c);
        if c > 0 && per_channel(&cx.ty(scale)) && per_channel(&cx.ty(bias)) {
            let op = Op::GroupNorm { groups: c, epsilon };
            return one(cx.add(op, vec![Some(x), Some(scale), Some(bias)], None)?);
        }
    }
    let axes: Vec<i64> = (2..xt.rank() as i64).collect();
    let mean_op = || Op::ReduceMean { axes: axes.clone(), keepdims: true };
    let mean = cx.add_helper("mean", mean_op(), vec![Some(x)])?;
    let d = cx.add_helper("deviation", Op::Binary(BinaryOp::Sub), vec![Some(x), Some(mean)])?;
    let sq = cx.add_helper("square", Op::Binary(BinaryOp::Mul), vec![Some(d), Some(d)])?;
    let var = cx.add_helper("variance", mean_op(), vec![Some(sq)])?;
    let ve = with_scalar(cx, "variance_eps", BinaryOp::Add, var, f64::from(epsilon))?;
    let sd = cx.add_helper("std_dev", Op::Unary(UnaryOp::Sqrt), vec![Some(ve)])?;
    // scale and bias [C] broadcast as [C, 1, ..., 1]
    let per_channel: Vec<i64> = std::iter::once(-1).chain(std::iter::repeat_n(1, xt.rank() - 2)).collect();
    let s = cx.add_helper("scale", Op::Reshape { shape: per_channel.clone() }, vec![Some(scale)])?;
    let b = cx.add_helper("bias", Op::Reshape { shape: per_channel }, vec![Some(bias)])?;
    let sd_ = cx.add_helper("scaled", Op::Binary(BinaryOp::Mul), vec![Some(s), Some(d)])?;
    let n = cx.add_helper("normalized", Op::Binary(BinaryOp::Div), vec![Some(sd_), Some(sd)])?;
    one(cx.add(Op::Binary(BinaryOp::Add), vec![Some(n), Some(b)], None)?)
}

/// LpNormalization: `x / norm` along `axis` (default -1) with the L1 (`p=1`) or L2 (`p=2`, the
/// default) norm kept as a size-1 axis; where the norm is zero the result is zero (the spec).
fn lp_norm(cx: &mut Cx) -> R<Outs> {
    let a = cx.attrs();
    let (axis, p) = (a.int_or("axis", -1)?, a.int_or("p", 2)?);
    let x = cx.input(0)?;
    let xt = cx.ty(x);
    if !xt.dtype.is_float() || xt.quant.is_some() {
        return Err(cx.err(format!("needs a float input, got {xt}")));
    }
    let ax = norm_axis(axis, xt.rank()).map_err(|m| cx.err(m))? as i64;
    let sum = Op::ReduceSum { axes: vec![ax], keepdims: true };
    let norm = match p {
        1 => {
            let abs = cx.add_helper("abs", Op::Unary(UnaryOp::Abs), vec![Some(x)])?;
            cx.add_helper("norm", sum, vec![Some(abs)])?
        }
        2 => {
            let sq = cx.add_helper("square", Op::Binary(BinaryOp::Mul), vec![Some(x), Some(x)])?;
            let s = cx.add_helper("sum", sum, vec![Some(sq)])?;
            cx.add_helper("norm", Op::Unary(UnaryOp::Sqrt), vec![Some(s)])?
        }
        other => return Err(cx.err(format!("p={other} is not supported (1 or 2, as the spec allows)"))),
    };
    // A zero norm (all elements zero) gives zeros, not 0/0.
    let q = cx.add_helper("quotient", Op::Binary(BinaryOp::Div), vec![Some(x), Some(norm)])?;
    let zero_norm = with_scalar(cx, "zero_norm", BinaryOp::Equal, norm, 0.0)?;
    let name = cx.im.fresh_name(&format!("{}/zero", cx.at.name));
    let zero = cx.im.g.add_const(name, Tensor::from_f64_iter(xt.dtype, vec![], [0.0].into_iter()));
    one(cx.add(Op::Where, vec![Some(zero_norm), Some(zero), Some(q)], None)?)
}

/// GroupNormalization. Opset 18 gives one scale and bias per group; opset 21 one per channel,
/// the IR's form, so opset 18's are repeated per channel (reshape to `[G, 1]`, expand to
/// `[G, C/G]`, flatten). `stash_type` (opset 21) other than 1 (f32) asks for the statistics in the
/// input's precision: the same as f32 for f32 inputs, refused for others.
fn group_norm(cx: &mut Cx) -> R<Outs> {
    let a = cx.attrs();
    let epsilon = a.float_or("epsilon", 1e-5)?;
    let groups = a.int("num_groups")?.ok_or_else(|| cx.err("attribute `num_groups` is required"))?;
    let groups = usize::try_from(groups).ok().filter(|&g| (1..=MAX_ATTR_DIM).contains(&g));
    let groups = groups.ok_or_else(|| cx.err("`num_groups` must be positive"))?;
    let stash = a.int_or("stash_type", 1)?;
    let ins = cx.inputs_upto(3, 3)?;
    let x = cx.input(0)?;
    let xt = cx.ty(x);
    if stash != 1 && xt.dtype != DType::F32 {
        return Err(cx.err(format!("stash_type={stash} on {} input is not supported (statistics are f32)", xt.dtype)));
    }
    let mut ins = ins;
    if cx.version < 21 {
        let c = xt.shape.0.get(1).and_then(Dim::fixed);
        let c =
            c.ok_or_else(|| cx.err(format!("opset {} GroupNormalization needs a fixed channel dim", cx.at.opset)))?;
        if c % groups != 0 {
            return Err(cx.err(format!("{c} channels do not split into {groups} groups")));
        }
        for (slot, tag) in [(1, "scale"), (2, "bias")] {
            let v = ins[slot].ok_or_else(|| cx.err(format!("input {slot} ({tag}) is missing")))?;
            let r =
                cx.add_helper(&format!("{tag}/groups"), Op::Reshape { shape: vec![groups as i64, 1] }, vec![Some(v)])?;
            let e = cx.add_helper(
                &format!("{tag}/expand"),
                Op::Expand { shape: vec![groups as i64, (c / groups) as i64] },
                vec![Some(r)],
            )?;
            ins[slot] = Some(cx.add_helper(
                &format!("{tag}/channels"),
                Op::Reshape { shape: vec![c as i64] },
                vec![Some(e)],
            )?);
        }
    }
    one(cx.add(Op::GroupNorm { groups, epsilon }, ins, None)?)
}

fn bin(cx: &mut Cx, tag: &str, op: BinaryOp, a: Value, b: Value) -> R<Value> {
    cx.add_helper(tag, Op::Binary(op), vec![Some(a), Some(b)])
}

/// A scalar constant of `dtype`.
fn konst(cx: &mut Cx, tag: &str, dtype: DType, k: f64) -> Value {
    let name = cx.im.fresh_name(&format!("{}/{tag}", cx.at.name));
    cx.im.g.add_const(name, Tensor::from_f64_iter(dtype, vec![], [k].into_iter()))
}

/// RMSNormalization (version 23), the spec's function body: the input (as `stash_type`, which must
/// be 1, FLOAT) times `1 / sqrt(mean(x^2) + epsilon)` over axes `axis..rank`, cast back to the
/// input's type, times `scale`.
fn rms_norm(cx: &mut Cx) -> R<Outs> {
    let a = cx.attrs();
    let (axis, epsilon, stash) = (a.int_or("axis", -1)?, a.float_or("epsilon", 1e-5)?, a.int_or("stash_type", 1)?);
    if stash != 1 {
        return Err(cx.err(format!("stash_type={stash} is not supported (1, FLOAT)")));
    }
    let (x, scale) = (cx.input(0)?, cx.input(1)?);
    let xt = cx.ty(x);
    if !xt.dtype.is_float() || xt.quant.is_some() {
        return Err(cx.err(format!("needs a float input, got {xt}")));
    }
    let ax = norm_axis(axis, xt.rank()).map_err(|m| cx.err(m))?;
    let axes: Vec<i64> = (ax as i64..xt.rank() as i64).collect();
    let xf =
        if xt.dtype == DType::F32 { x } else { cx.add_helper("stash", Op::Cast { to: DType::F32 }, vec![Some(x)])? };
    let sq = bin(cx, "square", BinaryOp::Mul, xf, xf)?;
    let ms = cx.add_helper("mean_square", Op::ReduceMean { axes, keepdims: true }, vec![Some(sq)])?;
    let eps = konst(cx, "epsilon", DType::F32, f64::from(epsilon));
    let mse = bin(cx, "mean_square_eps", BinaryOp::Add, ms, eps)?;
    let rms = cx.add_helper("rms", Op::Unary(UnaryOp::Sqrt), vec![Some(mse)])?;
    let inv = cx.add_helper("inv_rms", Op::Unary(UnaryOp::Reciprocal), vec![Some(rms)])?;
    let mut n = bin(cx, "normalized", BinaryOp::Mul, xf, inv)?;
    if xt.dtype != DType::F32 {
        n = cx.add_helper("normalized_t", Op::Cast { to: xt.dtype }, vec![Some(n)])?;
    }
    one(cx.add(Op::Binary(BinaryOp::Mul), vec![Some(n), Some(scale)], None)?)
}

/// MeanVarianceNormalization, the spec's function body: `(x - mean) / (sqrt(mean(x^2) - mean^2) +
/// 1e-9)` with the means over `axes` (default `[0, 2, 3]`).
fn mean_variance_norm(cx: &mut Cx) -> R<Outs> {
    let axes = cx.attrs().ints("axes")?.unwrap_or_else(|| vec![0, 2, 3]);
    if axes.is_empty() {
        return Err(cx.err("`axes` must not be empty"));
    }
    let x = cx.input(0)?;
    let xt = cx.ty(x);
    if !xt.dtype.is_float() || xt.quant.is_some() {
        return Err(cx.err(format!("needs a float input, got {xt}")));
    }
    let mean_op = || Op::ReduceMean { axes: axes.clone(), keepdims: true };
    let mean = cx.add_helper("mean", mean_op(), vec![Some(x)])?;
    let mean_sq = bin(cx, "mean_squared", BinaryOp::Mul, mean, mean)?;
    let sq = bin(cx, "square", BinaryOp::Mul, x, x)?;
    let sq_mean = cx.add_helper("square_mean", mean_op(), vec![Some(sq)])?;
    let var = bin(cx, "variance", BinaryOp::Sub, sq_mean, mean_sq)?;
    let sd = cx.add_helper("std_dev", Op::Unary(UnaryOp::Sqrt), vec![Some(var)])?;
    let eps = konst(cx, "epsilon", xt.dtype, 1e-9);
    let sde = bin(cx, "std_dev_eps", BinaryOp::Add, sd, eps)?;
    let d = bin(cx, "deviation", BinaryOp::Sub, x, mean)?;
    one(cx.add(Op::Binary(BinaryOp::Div), vec![Some(d), Some(sde)], None)?)
}

/// Hardmax: 1 at the first largest element along the axis, 0 elsewhere (ONNX reference
/// `op_hardmax.py`), as `cast(argmax(x) == index)`. Before version 13 the op works on the input
/// coerced to 2-D at `axis` (default 1), as Softmax does: one axis when every later dim is 1,
/// otherwise Flatten -> hardmax(1) -> Reshape (fixed dims).
fn hardmax(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    let xt = cx.ty(x);
    if xt.quant.is_some() || xt.dtype == DType::Bool {
        return Err(cx.err(format!("needs a numeric input, got {xt}")));
    }
    let version = cx.version;
    let axis = cx.attrs().int_or("axis", if version >= 13 { -1 } else { 1 })?;
    let a = norm_axis(axis, xt.rank()).map_err(|m| cx.err(m))?;
    let dims = &xt.shape.0;
    if version >= 13 || dims[a + 1..].iter().all(|d| *d == Dim::Fixed(1)) {
        let v = hardmax_along(cx, x, a, true)?;
        return one(v);
    }
    let target: Option<Vec<i64>> = dims.iter().map(|d| d.fixed().map(|n| n as i64)).collect();
    let target = target.ok_or_else(|| {
        cx.err(format!("version {version} Hardmax over the 2-D coercion of {} needs fixed dims", xt.shape))
    })?;
    let f = cx.add_helper("flatten", Op::Flatten { axis: a as i64 }, vec![Some(x)])?;
    let h = hardmax_along(cx, f, 1, false)?;
    one(cx.add(Op::Reshape { shape: target }, vec![Some(h)], None)?)
}

/// `cast(argmax(x, axis) == [0, 1, .., n-1] along axis)`, the node's result when `last`.
fn hardmax_along(cx: &mut Cx, x: Value, axis: usize, last: bool) -> R<Value> {
    let xt = cx.ty(x);
    let n =
        xt.shape.0[axis].fixed().ok_or_else(|| cx.err(format!("needs a fixed dim at the axis, got {}", xt.shape)))?;
    let am =
        cx.add_helper("argmax", Op::ArgMax { axis: axis as i64, keepdims: true, select_last: false }, vec![Some(x)])?;
    let mut shape = vec![1; xt.rank()];
    shape[axis] = n;
    let name = cx.im.fresh_name(&format!("{}/index", cx.at.name));
    let idx = cx.im.g.add_const(name, Tensor::from_i64(shape, (0..n as i64).collect()));
    let eq = bin(cx, "is_max", BinaryOp::Equal, idx, am)?;
    let op = Op::Cast { to: xt.dtype };
    if last {
        cx.add(op, vec![Some(eq)], None)
    } else {
        cx.add_helper("one_hot", op, vec![Some(eq)])
    }
}

/// NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss (`softmax`: the log-probabilities are
/// LogSoftmax of the scores along axis 1, and are the optional second output), as the ONNX
/// reference computes them: for input `[N, C, d...]` and target `[N, d...]`, the loss at each
/// position is `-input[n, target, d...]` times `weight[target]` (1 without weights), 0 where
/// the target is `ignore_index`; `reduction` `none` keeps it, `sum` adds it up, `mean` divides
/// the sum by the sum of the weights (when there are weights or an `ignore_index`), else by the
/// count.
fn loss(cx: &mut Cx, softmax: bool) -> R<Outs> {
    let a = cx.attrs();
    let reduction = a.string("reduction")?.unwrap_or_else(|| "mean".into());
    let ignore = a.int("ignore_index")?;
    if !matches!(reduction.as_str(), "none" | "sum" | "mean") {
        return Err(cx.err(format!("unknown reduction \"{reduction}\" (none, sum or mean)")));
    }
    let ins = cx.inputs_upto(2, 3)?;
    let (x, target) = (cx.input(0)?, cx.input(1)?);
    let weight = ins.get(2).copied().flatten();
    let (xt, tt) = (cx.ty(x), cx.ty(target));
    if !xt.dtype.is_float() || xt.quant.is_some() || xt.rank() < 2 {
        return Err(cx.err(format!("needs float scores of rank 2 or more, got {xt}")));
    }
    if !matches!(tt.dtype, DType::I32 | DType::I64) || tt.rank() + 1 != xt.rank() {
        return Err(cx.err(format!("needs an int32 or int64 target of rank {}, got {tt}", xt.rank() - 1)));
    }
    let dtype = xt.dtype;
    let logp = if softmax { cx.add_helper("log_prob", Op::LogSoftmax { axis: 1 }, vec![Some(x)])? } else { x };
    // Ignored positions read class 0 (any valid index: their loss is multiplied by 0).
    let (ignored, t) = match ignore {
        Some(ii) => {
            let name = cx.im.fresh_name(&format!("{}/ignore_index", cx.at.name));
            let iik = cx.im.g.add_const(name, Tensor::from_i64_wrapping(tt.dtype, vec![], &[ii]));
            let name = cx.im.fresh_name(&format!("{}/class_zero", cx.at.name));
            let zero = cx.im.g.add_const(name, Tensor::from_i64_wrapping(tt.dtype, vec![], &[0]));
            let ign = bin(cx, "ignored", BinaryOp::Equal, target, iik)?;
            let t = cx.add_helper("target_safe", Op::Where, vec![Some(ign), Some(zero), Some(target)])?;
            (Some(ign), t)
        }
        None => (None, target),
    };
    let idx = cx.add_helper("target_index", Op::Unsqueeze { axes: vec![1] }, vec![Some(t)])?;
    let picked = cx.add_helper("picked", Op::GatherElements { axis: 1 }, vec![Some(logp), Some(idx)])?;
    let picked = cx.add_helper("picked_squeezed", Op::Squeeze { axes: vec![1] }, vec![Some(picked)])?;
    let neg = cx.add_helper("negated", Op::Unary(UnaryOp::Neg), vec![Some(picked)])?;
    let w = match (weight, ignored) {
        (Some(w), ign) => {
            let wg = cx.add_helper("weight_at_target", Op::Gather { axis: 0 }, vec![Some(w), Some(t)])?;
            match ign {
                Some(ign) => {
                    let zero = konst(cx, "zero_weight", dtype, 0.0);
                    Some(cx.add_helper("weight", Op::Where, vec![Some(ign), Some(zero), Some(wg)])?)
                }
                None => Some(wg),
            }
        }
        (None, Some(ign)) => {
            let (zero, one_) = (konst(cx, "zero_weight", dtype, 0.0), konst(cx, "one_weight", dtype, 1.0));
            Some(cx.add_helper("weight", Op::Where, vec![Some(ign), Some(zero), Some(one_)])?)
        }
        (None, None) => None,
    };
    let per = match w {
        Some(w) => bin(cx, "weighted", BinaryOp::Mul, w, neg)?,
        None => neg,
    };
    let all = || Op::ReduceSum { axes: vec![], keepdims: false };
    let y = match (reduction.as_str(), w) {
        ("none", _) => cx.add(Op::Identity, vec![Some(per)], None)?,
        ("sum", _) => cx.add(all(), vec![Some(per)], None)?,
        ("mean", Some(w)) => {
            let s = cx.add_helper("loss_sum", all(), vec![Some(per)])?;
            let ws = cx.add_helper("weight_sum", all(), vec![Some(w)])?;
            cx.add(Op::Binary(BinaryOp::Div), vec![Some(s), Some(ws)], None)?
        }
        _ => cx.add(Op::ReduceMean { axes: vec![], keepdims: false }, vec![Some(per)], None)?,
    };
    let wants_log_prob = softmax && cx.node.output.get(1).is_some_and(|o| !o.is_empty());
    Ok(vec![Some(y), wants_log_prob.then_some(logp)])
}
