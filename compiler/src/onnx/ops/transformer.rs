//! The fused ops of transformer graphs, composed from IR ops: Attention (23, 24, 25) and
//! RotaryEmbedding (23). Each follows the ONNX operator spec (<https://onnx.ai/onnx/operators/>)
//! and computes what the ONNX reference implementation computes (`onnx/reference/ops/
//! op_attention.py`, `op_rotary_embedding.py`), in the same order of steps.

use super::{Cx, OpDef, Outs, R};
use crate::onnx::tensors::dtype_from_onnx;
use qforge_ir::{BinaryOp, DType, Dim, Op, PadMode, Tensor, UnaryOp, Value};

pub(super) const OPS: &[OpDef] =
    &[OpDef::onnx("Attention", &[23, 24, 25], attention), OpDef::onnx("RotaryEmbedding", &[23], rotary_embedding)];

/// A constant tensor of `dtype` and `shape`, named after the node and `tag`.
fn konst(cx: &mut Cx, tag: &str, dtype: DType, shape: Vec<usize>, v: impl Iterator<Item = f64>) -> Value {
    let name = cx.im.fresh_name(&format!("{}/{tag}", cx.at.name));
    cx.im.g.add_const(name, Tensor::from_f64_iter(dtype, shape, v))
}

/// A constant i64 tensor.
fn konst_i64(cx: &mut Cx, tag: &str, shape: Vec<usize>, v: Vec<i64>) -> Value {
    let name = cx.im.fresh_name(&format!("{}/{tag}", cx.at.name));
    cx.im.g.add_const(name, Tensor::from_i64(shape, v))
}

fn op1(cx: &mut Cx, tag: &str, op: Op, x: Value) -> R<Value> {
    cx.add_helper(tag, op, vec![Some(x)])
}

fn bin(cx: &mut Cx, tag: &str, op: BinaryOp, a: Value, b: Value) -> R<Value> {
    cx.add_helper(tag, Op::Binary(op), vec![Some(a), Some(b)])
}

/// Dim `i` of `v`, which must be fixed (`what` names it in the error).
fn fixed_dim(cx: &Cx, v: Value, i: usize, what: &str) -> R<usize> {
    let t = cx.ty(v);
    t.shape.0.get(i).and_then(Dim::fixed).ok_or_else(|| cx.err(format!("needs a fixed {what}, got shape {}", t.shape)))
}

/// Whether output `i` of the node is asked for.
fn wanted(cx: &Cx, i: usize) -> bool {
    cx.node.output.get(i).is_some_and(|o| !o.is_empty())
}

/// A bias of `dtype` from a boolean tensor: 0 where `allowed`, -inf elsewhere (the spec's
/// `Where(allowed, 0, -inf)`, never `(1 - mask) * -inf`, which is NaN at allowed cells).
fn bias_of(cx: &mut Cx, tag: &str, allowed: Value, dtype: DType) -> R<Value> {
    let zero = konst(cx, &format!("{tag}_zero"), dtype, vec![], [0.0].into_iter());
    let ninf = konst(cx, &format!("{tag}_ninf"), dtype, vec![], [f64::NEG_INFINITY].into_iter());
    cx.add_helper(tag, Op::Where, vec![Some(allowed), Some(zero), Some(ninf)])
}

/// Attention (versions 23, 24, 25), as the ONNX reference `_compute_attention` computes it:
///
/// * 3-D `Q, K, V` (`[B, S, H * D]`) are split into `q_num_heads` / `kv_num_heads` heads
///   (`[B, H, S, D]`); the output goes back to 3-D.
/// * `past_key`/`past_value` are concatenated before `K`/`V` along the sequence axis; the
///   concatenations are the `present_key`/`present_value` outputs.
/// * The bias is the `attn_mask` (boolean masks become 0 / -inf; a mask shorter than the key
///   sequence is padded with -inf or false), plus with `is_causal` the bottom-right aligned causal
///   mask (key `j` is seen from query `i` when `j <= i + offset`, the offset the past length, or
///   `nonpad_kv_seqlen[b] - q_len` with that input), plus the sliding window of version 25
///   (`left_window_size`, `right_window_size`), plus -inf at keys at or past `nonpad_kv_seqlen`.
/// * K and V heads are repeated for grouped-query attention (`np.repeat` along the head axis).
/// * `softmax((Q * sqrt(scale)) @ (K^T * sqrt(scale)) [softcapped] + bias) @ V`, the softmax in
///   `softmax_precision`; a row the bias masks entirely gives 0 (the spec's fully-masked-row rule).
/// * The optional `qk_matmul_output` is the product (softcapped) for modes 0 and 1, the product
///   plus the bias for mode 2, the softmax for mode 3, as the reference returns them.
fn attention(cx: &mut Cx) -> R<Outs> {
    let a = cx.attrs();
    let is_causal = a.bool_or("is_causal", false)?;
    let q_heads_attr = a.int("q_num_heads")?;
    let kv_heads_attr = a.int("kv_num_heads")?;
    let mode = a.int_or("qk_matmul_output_mode", 0)?;
    let scale_attr = a.float("scale")?;
    let softcap = a.float_or("softcap", 0.0)?;
    let precision = a.int("softmax_precision")?;
    let (left, right) = if cx.version >= 25 {
        (a.int_or("left_window_size", -1)?, a.int_or("right_window_size", -1)?)
    } else {
        (-1, -1)
    };
    if !(0..=3).contains(&mode) {
        return Err(cx.err(format!("qk_matmul_output_mode={mode} is not one of 0, 1, 2, 3")));
    }
    if left < -1 || right < -1 {
        return Err(cx.err("left_window_size and right_window_size must be -1 or non-negative"));
    }
    let max_inputs = if cx.version >= 24 { 7 } else { 6 };
    if cx.node.input.len() > max_inputs {
        return Err(cx.err(format!("has {} inputs; at most {max_inputs} are allowed", cx.node.input.len())));
    }
    let (q, k, v) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let mask = cx.opt_input(3)?;
    let (past_k, past_v) = (cx.opt_input(4)?, cx.opt_input(5)?);
    let nonpad = if cx.version >= 24 { cx.opt_input(6)? } else { None };
    if past_k.is_some() != past_v.is_some() {
        return Err(cx.err("past_key and past_value must be given together"));
    }
    if nonpad.is_some() && past_k.is_some() {
        return Err(cx.err("nonpad_kv_seqlen cannot be combined with past_key/past_value"));
    }
    let qt = cx.ty(q);
    let dtype = qt.dtype;
    if !dtype.is_float() || qt.quant.is_some() {
        return Err(cx.err(format!("needs float Q, K, V, got {qt}")));
    }
    let rank = qt.rank();
    if cx.ty(k).rank() != rank || cx.ty(v).rank() != rank || !(rank == 3 || rank == 4) {
        return Err(cx.err("Q, K and V must all be 3-D or all 4-D"));
    }

    // Heads: [B, S, H * D] -> [B, S, H, D] -> [B, H, S, D].
    let (q4, k4, v4) = if rank == 3 {
        let (Some(qh), Some(kvh)) = (q_heads_attr, kv_heads_attr) else {
            return Err(cx.err("3-D inputs need the q_num_heads and kv_num_heads attributes"));
        };
        if qh <= 0 || kvh <= 0 {
            return Err(cx.err("q_num_heads and kv_num_heads must be positive"));
        }
        let mut heads = |tag: &str, x: Value, h: i64| -> R<Value> {
            let r = op1(cx, &format!("{tag}_heads"), Op::Reshape { shape: vec![0, 0, h, -1] }, x)?;
            op1(cx, &format!("{tag}_bhsd"), Op::Transpose { perm: vec![0, 2, 1, 3] }, r)
        };
        (heads("q", q, qh)?, heads("k", k, kvh)?, heads("v", v, kvh)?)
    } else {
        (q, k, v)
    };

    // sqrt(scale), applied to both factors as the reference does (in f64, then to the dtype).
    let scale = match scale_attr {
        Some(s) => f64::from(s),
        None => 1.0 / (fixed_dim(cx, q4, 3, "head size of Q (for the default scale)")? as f64).sqrt(),
    };
    let scale_sqrt = scale.sqrt();

    let present_k = match past_k {
        Some(p) => cx.add_helper("present_key", Op::Concat { axis: 2 }, vec![Some(p), Some(k4)])?,
        None => k4,
    };
    let present_v = match past_v {
        Some(p) => cx.add_helper("present_value", Op::Concat { axis: 2 }, vec![Some(p), Some(v4)])?,
        None => v4,
    };

    // ---- the bias
    let needs_lengths = is_causal || left >= 0 || right >= 0 || mask.is_some();
    let (q_len, kv_len) = if needs_lengths {
        (fixed_dim(cx, q4, 2, "query sequence length")?, fixed_dim(cx, present_k, 2, "key sequence length")?)
    } else {
        (0, 0)
    };
    let past_len = match past_k {
        Some(p) if needs_lengths => fixed_dim(cx, p, 2, "past sequence length")?,
        _ => 0,
    };
    // The causal and window masks are [q_len, kv_len] constants: held to the tensor size limit.
    let cells = (q_len as u128) * (kv_len as u128);
    if (is_causal || left >= 0 || right >= 0) && cells * 8 > cx.im.max_tensor_bytes {
        return Err(cx.err(format!("a {q_len} x {kv_len} attention mask exceeds the tensor size limit")));
    }
    let mut bias: Option<Value> = None;
    if let Some(m) = mask {
        let mt = cx.ty(m);
        let mlen = mt.shape.0.last().and_then(Dim::fixed);
        let mlen = mlen.ok_or_else(|| cx.err(format!("needs a fixed last dim of attn_mask, got {}", mt.shape)))?;
        let is_bool = mt.dtype == DType::Bool;
        if !is_bool && mt.dtype != dtype {
            return Err(cx.err(format!("attn_mask of {} with Q of {dtype} is not supported", mt.dtype)));
        }
        let mut m = m;
        if mlen < kv_len {
            let r = mt.rank();
            let mut pads = vec![0i64; 2 * r];
            pads[2 * r - 1] = (kv_len - mlen) as i64;
            let value = if is_bool { 0.0 } else { f64::NEG_INFINITY };
            m = op1(cx, "mask_padded", Op::Pad { mode: PadMode::Constant, pads, computed: vec![], value }, m)?;
        } else if mlen > kv_len {
            return Err(cx.err(format!("attn_mask has {mlen} keys, more than the {kv_len} of K")));
        }
        bias = Some(if is_bool { bias_of(cx, "mask_bias", m, dtype)? } else { m });
    }
    // Bottom-right aligned causal mask and sliding window: with `nonpad_kv_seqlen`, the offset of
    // batch `b` is `nonpad[b] - q_len` (the external cache); otherwise the past length.
    let nonpad4 = match nonpad {
        Some(n) => {
            if cx.ty(n).dtype != DType::I64 {
                return Err(cx.err("nonpad_kv_seqlen must be int64"));
            }
            Some(op1(cx, "nonpad_b111", Op::Reshape { shape: vec![-1, 1, 1, 1] }, n)?)
        }
        None => None,
    };
    let qk_grid = |f: &dyn Fn(i64, i64) -> i64| -> Vec<i64> {
        (0..q_len as i64).flat_map(|i| (0..kv_len as i64).map(move |j| (i, j))).map(|(i, j)| f(i, j)).collect()
    };
    let add_bias = |cx: &mut Cx, b: Value, bias: &mut Option<Value>, tag: &str| -> R<()> {
        *bias = Some(match *bias {
            Some(prev) => bin(cx, tag, BinaryOp::Add, prev, b)?,
            None => b,
        });
        Ok(())
    };
    if is_causal {
        let allowed = match nonpad4 {
            // j <= i + nonpad[b] - q_len  <=>  j - i + q_len <= nonpad[b]
            Some(n) => {
                let d = konst_i64(cx, "causal_index", vec![1, 1, q_len, kv_len], qk_grid(&|i, j| j - i + q_len as i64));
                bin(cx, "causal_allowed", BinaryOp::LessOrEqual, d, n)?
            }
            None => {
                let off = past_len as i64;
                let grid = qk_grid(&|i, j| i64::from(j <= i + off));
                let t = Tensor::from_f64_iter(DType::Bool, vec![q_len, kv_len], grid.into_iter().map(|x| x as f64));
                let name = cx.im.fresh_name(&format!("{}/causal_allowed", cx.at.name));
                cx.im.g.add_const(name, t)
            }
        };
        let b = bias_of(cx, "causal_bias", allowed, dtype)?;
        add_bias(cx, b, &mut bias, "with_causal")?;
    }
    if left >= 0 || right >= 0 {
        // diff = i + offset - j; allowed when diff <= left and -diff <= right (each if >= 0).
        let diff = match nonpad4 {
            Some(n) => {
                let e = konst_i64(cx, "window_index", vec![1, 1, q_len, kv_len], qk_grid(&|i, j| i - j - q_len as i64));
                bin(cx, "window_diff", BinaryOp::Add, e, n)?
            }
            None => {
                let off = past_len as i64;
                konst_i64(cx, "window_diff", vec![q_len, kv_len], qk_grid(&|i, j| i + off - j))
            }
        };
        let mut allowed: Option<Value> = None;
        if left >= 0 {
            let l = konst_i64(cx, "left_window", vec![], vec![left]);
            allowed = Some(bin(cx, "within_left", BinaryOp::LessOrEqual, diff, l)?);
        }
        if right >= 0 {
            let r = konst_i64(cx, "right_window", vec![], vec![-right]);
            let w = bin(cx, "within_right", BinaryOp::GreaterOrEqual, diff, r)?;
            allowed = Some(match allowed {
                Some(l) => bin(cx, "within_window", BinaryOp::And, l, w)?,
                None => w,
            });
        }
        let allowed = allowed.ok_or_else(|| cx.err("no window side"))?;
        let b = bias_of(cx, "window_bias", allowed, dtype)?;
        add_bias(cx, b, &mut bias, "with_window")?;
    }
    if let Some(n) = nonpad4 {
        let kv = fixed_dim(cx, present_k, 2, "key sequence length")?;
        let j = konst_i64(cx, "key_index", vec![1, 1, 1, kv], (0..kv as i64).collect());
        let allowed = bin(cx, "key_valid", BinaryOp::Less, j, n)?;
        let b = bias_of(cx, "padding_bias", allowed, dtype)?;
        add_bias(cx, b, &mut bias, "with_padding")?;
    }

    // ---- grouped-query attention: each K/V head serves q_heads / kv_heads query heads.
    let q_heads = fixed_dim(cx, q4, 1, "number of query heads")?;
    let kv_heads = fixed_dim(cx, present_k, 1, "number of key/value heads")?;
    let (mut kk, mut vv) = (present_k, present_v);
    if q_heads != kv_heads {
        if kv_heads == 0 || q_heads % kv_heads != 0 {
            return Err(cx.err(format!("{q_heads} query heads are not a multiple of {kv_heads} key/value heads")));
        }
        let reps = q_heads / kv_heads;
        let idx = konst_i64(cx, "head_index", vec![q_heads], (0..q_heads).map(|h| (h / reps) as i64).collect());
        kk = cx.add_helper("k_repeated", Op::Gather { axis: 1 }, vec![Some(kk), Some(idx)])?;
        vv = cx.add_helper("v_repeated", Op::Gather { axis: 1 }, vec![Some(vv), Some(idx)])?;
    }

    // ---- scores
    let s = konst(cx, "scale_sqrt", dtype, vec![], [scale_sqrt].into_iter());
    let kt = op1(cx, "k_transposed", Op::Transpose { perm: vec![0, 1, 3, 2] }, kk)?;
    let qs = bin(cx, "q_scaled", BinaryOp::Mul, q4, s)?;
    let ks = bin(cx, "k_scaled", BinaryOp::Mul, kt, s)?;
    let mut qk = cx.add_helper("qk", Op::MatMul, vec![Some(qs), Some(ks)])?;
    if softcap > 0.0 {
        let c = konst(cx, "softcap", dtype, vec![], [f64::from(softcap)].into_iter());
        let d = bin(cx, "qk_over_cap", BinaryOp::Div, qk, c)?;
        let t = op1(cx, "qk_tanh", Op::Unary(UnaryOp::Tanh), d)?;
        qk = bin(cx, "qk_softcapped", BinaryOp::Mul, t, c)?;
    }
    let qk_bias = match bias {
        Some(b) => bin(cx, "qk_bias", BinaryOp::Add, qk, b)?,
        None => qk,
    };
    let soft_dtype = match precision {
        None => dtype,
        Some(p) => {
            let d = dtype_from_onnx(p as i32).ok().filter(|d| matches!(d, DType::F32 | DType::F16));
            d.ok_or_else(|| cx.err(format!("softmax_precision={p} is not supported (FLOAT or FLOAT16)")))?
        }
    };
    let x = if soft_dtype != dtype { op1(cx, "qk_precision", Op::Cast { to: soft_dtype }, qk_bias)? } else { qk_bias };
    let mut p = op1(cx, "softmax", Op::Softmax { axis: -1 }, x)?;
    if let Some(b) = bias {
        // A row the bias masks entirely is all -inf: its softmax is NaN, and the spec makes it 0.
        let mx = op1(cx, "bias_row_max", Op::ReduceMax { axes: vec![-1], keepdims: true }, b)?;
        let ninf = konst(cx, "row_ninf", cx.ty(mx).dtype, vec![], [f64::NEG_INFINITY].into_iter());
        let masked = bin(cx, "row_masked", BinaryOp::Equal, mx, ninf)?;
        let zero = konst(cx, "row_zero", soft_dtype, vec![], [0.0].into_iter());
        p = cx.add_helper("softmax_guarded", Op::Where, vec![Some(masked), Some(zero), Some(p)])?;
    }
    if soft_dtype != dtype {
        p = op1(cx, "softmax_back", Op::Cast { to: dtype }, p)?;
    }
    let qk_out = match mode {
        0 | 1 => qk,
        2 => qk_bias,
        _ => p,
    };
    let y = if rank == 3 {
        let o = cx.add_helper("pv", Op::MatMul, vec![Some(p), Some(vv)])?;
        let t = op1(cx, "bshd", Op::Transpose { perm: vec![0, 2, 1, 3] }, o)?;
        cx.add(Op::Reshape { shape: vec![0, 0, -1] }, vec![Some(t)], None)?
    } else {
        cx.add(Op::MatMul, vec![Some(p), Some(vv)], None)?
    };
    Ok(vec![
        Some(y),
        wanted(cx, 1).then_some(present_k),
        wanted(cx, 2).then_some(present_v),
        wanted(cx, 3).then_some(qk_out),
    ])
}

/// RotaryEmbedding (version 23), as the ONNX reference computes it: the input as
/// `[B, S, H, D]` (4-D inputs are `[B, H, S, D]`, 3-D ones `[B, S, H * D]` split into `num_heads`
/// heads); the first `rotary_embedding_dim` (default all) of each head rotated by the cos/sin
/// caches (`[B, S, R/2]`, or `[max_pos, R/2]` gathered at `position_ids`): halves `x1, x2` (or the
/// even and odd elements when `interleaved`) become `cos * x1 - sin * x2` and
/// `sin * x1 + cos * x2`, the rest of the head passes through.
fn rotary_embedding(cx: &mut Cx) -> R<Outs> {
    let a = cx.attrs();
    let interleaved = a.bool_or("interleaved", false)?;
    let rot_attr = a.int_or("rotary_embedding_dim", 0)?;
    let num_heads = a.int_or("num_heads", 0)?;
    let ins = cx.inputs_upto(3, 4)?;
    let (x, cos, sin) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let pos = ins.get(3).copied().flatten();
    let xt = cx.ty(x);
    if !xt.dtype.is_float() || xt.quant.is_some() {
        return Err(cx.err(format!("needs a float input, got {xt}")));
    }
    let rank = xt.rank();
    // [B, S, H, D]
    let x4 = match rank {
        4 => op1(cx, "bshd", Op::Transpose { perm: vec![0, 2, 1, 3] }, x)?,
        3 => {
            if num_heads <= 0 {
                return Err(cx.err("a 3-D input needs the num_heads attribute"));
            }
            op1(cx, "heads", Op::Reshape { shape: vec![0, 0, num_heads, -1] }, x)?
        }
        _ => return Err(cx.err(format!("needs a 3-D or 4-D input, got {}", xt.shape))),
    };
    let head = fixed_dim(cx, x4, 3, "head size")?;
    let rot = if rot_attr == 0 { head } else { usize::try_from(rot_attr).unwrap_or(usize::MAX) };
    if rot > head || rot % 2 != 0 {
        return Err(cx.err(format!("rotary_embedding_dim {rot} must be even and at most the head size {head}")));
    }
    let half = rot / 2;
    let (mut cos, mut sin) = (cos, sin);
    if let Some(p) = pos {
        cos = cx.add_helper("cos_at", Op::Gather { axis: 0 }, vec![Some(cos), Some(p)])?;
        sin = cx.add_helper("sin_at", Op::Gather { axis: 0 }, vec![Some(sin), Some(p)])?;
    }
    for (c, what) in [(cos, "cos_cache"), (sin, "sin_cache")] {
        if cx.ty(c).shape.0.last().and_then(Dim::fixed) != Some(half) {
            return Err(cx.err(format!("the last dim of {what} must be rotary_embedding_dim / 2 = {half}")));
        }
    }
    // [B, S, 1, R/2]
    let cos = op1(cx, "cos_heads", Op::Unsqueeze { axes: vec![2] }, cos)?;
    let sin = op1(cx, "sin_heads", Op::Unsqueeze { axes: vec![2] }, sin)?;
    let slice = |cx: &mut Cx, tag: &str, v: Value, start: usize, end: usize, step: i64| {
        let op = Op::Slice { starts: vec![start as i64], ends: vec![end as i64], axes: vec![3], steps: vec![step] };
        op1(cx, tag, op, v)
    };
    let (x1, x2) = if interleaved {
        (slice(cx, "x_even", x4, 0, rot, 2)?, slice(cx, "x_odd", x4, 1, rot, 2)?)
    } else {
        (slice(cx, "x_first", x4, 0, half, 1)?, slice(cx, "x_second", x4, half, rot, 1)?)
    };
    let c1 = bin(cx, "cos_x1", BinaryOp::Mul, cos, x1)?;
    let s2 = bin(cx, "sin_x2", BinaryOp::Mul, sin, x2)?;
    let real = bin(cx, "real", BinaryOp::Sub, c1, s2)?;
    let s1 = bin(cx, "sin_x1", BinaryOp::Mul, sin, x1)?;
    let c2 = bin(cx, "cos_x2", BinaryOp::Mul, cos, x2)?;
    let imag = bin(cx, "imag", BinaryOp::Add, s1, c2)?;
    let rotated = if interleaved {
        // [.., R/2, 2] -> [.., R]: real and imaginary parts alternate.
        let r = op1(cx, "real_pair", Op::Unsqueeze { axes: vec![4] }, real)?;
        let i = op1(cx, "imag_pair", Op::Unsqueeze { axes: vec![4] }, imag)?;
        let pairs = cx.add_helper("pairs", Op::Concat { axis: 4 }, vec![Some(r), Some(i)])?;
        op1(cx, "interleaved", Op::Reshape { shape: vec![0, 0, 0, rot as i64] }, pairs)?
    } else {
        cx.add_helper("rotated", Op::Concat { axis: 3 }, vec![Some(real), Some(imag)])?
    };
    let full = if rot < head {
        let rest = slice(cx, "x_rest", x4, rot, head, 1)?;
        cx.add_helper("full", Op::Concat { axis: 3 }, vec![Some(rotated), Some(rest)])?
    } else {
        rotated
    };
    let y = if rank == 4 {
        cx.add(Op::Transpose { perm: vec![0, 2, 1, 3] }, vec![Some(full)], None)?
    } else {
        cx.add(Op::Reshape { shape: vec![0, 0, -1] }, vec![Some(full)], None)?
    };
    Ok(vec![Some(y)])
}
