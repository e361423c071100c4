//! Normalizations and reductions: batch norm (inference), layer norm, group norm,
//! softmax / log-softmax, LRN, ReduceMean / ReduceSum / ReduceMax / ReduceProd, ArgMax / ArgMin,
//! TopK, and
//! CumSum / CumProd.
//!
//! All float math is f32 with plain-order accumulation (f16/bf16 widened, results rounded once);
//! `exp`, `ln` and `powf` are evaluated in f64 and rounded to f32.
//! * batch norm: `(x - mean) / sqrt(var + eps) * scale + bias` per channel (axis 1);
//! * layer norm over axes `axis..rank`: `mean = sum / n`, `var = sum((x - mean)^2) / n`,
//!   `(x - mean) / sqrt(var + eps) * scale + bias`, with scale and bias broadcast to the normalized
//!   shape;
//! * group norm (per group of `C / groups` channels of each sample): mean and variance as layer
//!   norm's, then `* scale[c] + bias[c]`;
//! * softmax: `e = exp(x - max)`, `e / sum(e)`; log-softmax: `(x - max) - ln(sum(e))`;
//! * LRN (ONNX): `x / (bias + alpha / size * sum of x^2 over channels
//!   [c - floor((size-1)/2), c + ceil((size-1)/2)])^beta`;
//! * reductions: floats sum (multiply) in f32 (f64 in f64) in input order, mean = sum / count
//!   (NaN when empty), max propagates NaN; integers sum and multiply wrapping in the storage
//!   type, mean truncates, max of nothing is the dtype's lowest value, the product of nothing 1.

use super::{broadcast_strides, float_tensor, floats, int_tensor, numel, tensor, Cx, Nums, Walker, R};
use crate::infer::norm_axis;
use crate::numerics;
use crate::{DType, Tensor, TensorData};

pub(crate) fn batch_norm(cx: &Cx, eps: f32) -> R<Tensor> {
    let x = cx.x(0)?;
    let s = x.shape();
    if s.len() < 2 {
        return Err("batch norm needs an input of rank 2 or more".into());
    }
    let c = s[1];
    let params: Vec<_> = (1..5).map(|i| cx.x(i).map(floats)).collect::<R<_>>()?;
    if params.iter().any(|p| p.len() != c) {
        return Err(format!("batch norm parameters must have {c} elements"));
    }
    let (scale, bias, mean, var) = (&params[0], &params[1], &params[2], &params[3]);
    let inner = numel(&s[2..]).ok_or("input too large")?;
    let xv = floats(x);
    let mut y = Vec::with_capacity(xv.len());
    for (i, &v) in xv.iter().enumerate() {
        let ch = i.checked_div(inner).unwrap_or(0) % c;
        y.push((v - mean[ch]) / (var[ch] + eps).sqrt() * scale[ch] + bias[ch]);
    }
    float_tensor(x.dtype(), s.to_vec(), y)
}

/// (outer, n, inner) around one axis.
fn around(shape: &[usize], a: usize) -> R<(usize, usize, usize)> {
    let outer = numel(&shape[..a]).ok_or("input too large")?;
    let inner = numel(&shape[a + 1..]).ok_or("input too large")?;
    Ok((outer, shape[a], inner))
}

pub(crate) fn softmax(cx: &Cx, axis: i64, log: bool) -> R<Tensor> {
    let x = cx.x(0)?;
    let a = norm_axis(axis, x.rank())?;
    let (outer, n, inner) = around(x.shape(), a)?;
    let xv = floats(x);
    let mut y = vec![0f32; xv.len()];
    for o in 0..outer {
        for i in 0..inner {
            softmax_lane(&xv[o * n * inner + i..], &mut y[o * n * inner + i..], n, inner, log);
        }
    }
    float_tensor(x.dtype(), x.shape().to_vec(), y)
}

/// Softmax (or log-softmax) of one lane: the `n` values `x[k * stride]`, written to
/// `y[k * stride]`, as the numerics contract's "Softmax" writes it for every engine: the maximum
/// is subtracted first, each exponential is [`numerics::softmax_exp`] (no subnormals), the sum
/// accumulates in f32 in order, and a softmax quotient below 2^-126 is 0.
pub fn softmax_lane(x: &[f32], y: &mut [f32], n: usize, stride: usize, log: bool) {
    let at = |k: usize| k * stride;
    let mut m = f32::NEG_INFINITY;
    for k in 0..n {
        let v = x[at(k)];
        if v > m || v.is_nan() {
            m = v;
        }
    }
    let mut sum = 0f32;
    for k in 0..n {
        let e = numerics::softmax_exp(x[at(k)] - m);
        y[at(k)] = e;
        sum += e;
    }
    if log {
        let ls = (sum as f64).ln() as f32;
        for k in 0..n {
            y[at(k)] = (x[at(k)] - m) - ls;
        }
    } else {
        for k in 0..n {
            y[at(k)] = numerics::flush_subnormal(y[at(k)] / sum);
        }
    }
}

/// `x` expanded from its shape to `to` (numpy broadcasting), as f32.
fn expand_to(t: &Tensor, to: &[usize]) -> R<Vec<f32>> {
    let v = floats(t);
    let st = broadcast_strides(t.shape(), to)?;
    let n = numel(to).ok_or("too large")?;
    let mut w = Walker::new(to, vec![(0, st)]);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(v[w.offs()[0] as usize]);
        w.step();
    }
    Ok(out)
}

pub(crate) fn layer_norm(cx: &Cx, axis: i64, eps: f32) -> R<Tensor> {
    let x = cx.x(0)?;
    let a = norm_axis(axis, x.rank())?;
    let norm_shape = &x.shape()[a..];
    let n = numel(norm_shape).ok_or("input too large")?;
    let scale = expand_to(cx.x(1)?, norm_shape)?;
    let bias = match cx.opt(2) {
        Some(b) => expand_to(b, norm_shape)?,
        None => vec![0.0; n],
    };
    let xv = floats(x);
    let mut y = vec![0f32; xv.len()];
    if n > 0 {
        for (row, out) in xv.chunks(n).zip(y.chunks_mut(n)) {
            layer_norm_row(row, &scale, &bias, eps, out);
        }
    }
    float_tensor(x.dtype(), x.shape().to_vec(), y)
}

/// The mean of `row` and `sqrt(variance + eps)`, both accumulated in f32 in order: the statistics
/// of layer and group normalization.
fn mean_and_denominator(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len();
    let mut sum = 0f32;
    for &v in row {
        sum += v;
    }
    let mean = sum / n as f32;
    let mut sq = 0f32;
    for &v in row {
        sq += (v - mean) * (v - mean);
    }
    (mean, (sq / n as f32 + eps).sqrt())
}

/// Layer normalization of one row for every engine: mean and variance accumulate in f32 in
/// order, `(v - mean) / sqrt(var + eps) * scale[k] + bias[k]`.
pub fn layer_norm_row(row: &[f32], scale: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    let (mean, denom) = mean_and_denominator(row, eps);
    for (k, &v) in row.iter().enumerate() {
        out[k] = (v - mean) / denom * scale[k] + bias[k];
    }
}

pub(crate) fn lrn(cx: &Cx, size: usize, alpha: f32, beta: f32, bias: f32) -> R<Tensor> {
    let x = cx.x(0)?;
    let s = x.shape();
    if s.len() < 2 {
        return Err("LRN needs an input of rank 2 or more".into());
    }
    if size == 0 {
        return Err("LRN size must be positive".into());
    }
    let (outer, c, inner) = around(s, 1)?;
    let (before, after) = ((size - 1) / 2, (size - 1).div_ceil(2));
    let xv = floats(x);
    let mut y = vec![0f32; xv.len()];
    let k = alpha / size as f32;
    for o in 0..outer {
        for ch in 0..c {
            let lo = ch.saturating_sub(before);
            let hi = (ch + after).min(c.saturating_sub(1));
            for i in 0..inner {
                let mut sq = 0f32;
                for cc in lo..=hi {
                    let v = xv[(o * c + cc) * inner + i];
                    sq += v * v;
                }
                let at = (o * c + ch) * inner + i;
                y[at] = xv[at] / ((bias + k * sq) as f64).powf(beta as f64) as f32;
            }
        }
    }
    float_tensor(x.dtype(), s.to_vec(), y)
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Reduce {
    Sum,
    Mean,
    Max,
    Prod,
}

pub(crate) fn reduce(cx: &Cx, axes: &[i64], kind: Reduce) -> R<Tensor> {
    let x = cx.x(0)?;
    let s = x.shape();
    let axes: Vec<usize> = if axes.is_empty() {
        (0..s.len()).collect()
    } else {
        axes.iter().map(|&a| norm_axis(a, s.len())).collect::<Result<_, _>>()?
    };
    // The result with kept dims, and where each input element lands in it.
    let kept: Vec<usize> = s.iter().enumerate().map(|(i, &d)| if axes.contains(&i) { 1 } else { d }).collect();
    let out_n = numel(&kept).ok_or("result too large")?;
    let in_n = x.len();
    let count = in_n.checked_div(out_n).unwrap_or(0);
    let st = broadcast_strides(&kept, s)?;
    let mut w = Walker::new(s, vec![(0, st)]);
    let out_shape = cx.out_shape(0);
    // Floats accumulate in their compute type: f32 (f16/bf16 widened), or f64.
    macro_rules! float_reduce {
        ($xv:expr, $t:ty) => {{
            let init = match kind {
                Reduce::Max => <$t>::NEG_INFINITY,
                Reduce::Prod => 1.0,
                _ => 0.0,
            };
            let mut acc = vec![init; out_n];
            for &v in $xv.iter() {
                let o = &mut acc[w.offs()[0] as usize];
                match kind {
                    Reduce::Max => {
                        if v > *o || v.is_nan() {
                            *o = v
                        }
                    }
                    Reduce::Prod => *o *= v,
                    _ => *o += v,
                }
                w.step();
            }
            if kind == Reduce::Mean {
                for v in &mut acc {
                    *v /= count as $t;
                }
            }
            acc
        }};
    }
    if let TensorData::F64(xv) = x.data() {
        tensor(out_shape, TensorData::F64(float_reduce!(xv, f64)))
    } else if x.dtype().is_float() {
        let xv = floats(x);
        let acc = float_reduce!(xv, f32);
        float_tensor(x.dtype(), out_shape, acc)
    } else {
        let xv = x.to_i64_vec().ok_or("reduction needs a numeric tensor")?;
        let lowest = x.dtype().int_range().map_or(i64::MIN, |r| r.0);
        let init = match kind {
            Reduce::Max => lowest,
            Reduce::Prod => 1,
            _ => 0,
        };
        let mut acc = vec![init; out_n];
        for &v in &xv {
            let o = &mut acc[w.offs()[0] as usize];
            *o = match kind {
                Reduce::Max => (*o).max(v),
                Reduce::Prod => o.wrapping_mul(v),
                _ => o.wrapping_add(v),
            };
            w.step();
        }
        if kind == Reduce::Mean && count > 0 {
            for v in &mut acc {
                *v = v.wrapping_div(count as i64);
            }
        }
        int_tensor(x.dtype(), out_shape, &acc)
    }
}

/// Normalizes each of `rows` consecutive runs of `row` elements of `xv` (mean and variance in f32,
/// plain order), then applies `scale[c]`, `bias[c]` with `c = (index / plane) % channels`.
fn normalize_rows(xv: &[f32], row: usize, plane: usize, scale: &[f32], bias: &[f32], eps: f32) -> Vec<f32> {
    let mut y = vec![0f32; xv.len()];
    if row == 0 || plane == 0 {
        return y;
    }
    for (r, (xs, ys)) in xv.chunks(row).zip(y.chunks_mut(row)).enumerate() {
        group_norm_row(xs, r * row, plane, scale, bias, eps, ys);
    }
    y
}

/// Group normalization of one group for every engine: `xs` are the plain-order elements from
/// index `first` of the input (one sample's channels of one group); mean and variance accumulate
/// in f32 in order, then `(v - mean) / sqrt(var + eps) * scale[c] + bias[c]` with
/// `c = (index / plane) % scale.len()`. `plane` and `scale` must be non-empty.
pub fn group_norm_row(xs: &[f32], first: usize, plane: usize, scale: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    let (mean, denom) = mean_and_denominator(xs, eps);
    let channels = scale.len();
    for (k, (&v, o)) in xs.iter().zip(out.iter_mut()).enumerate() {
        let c = ((first + k) / plane) % channels;
        *o = (v - mean) / denom * scale[c] + bias[c];
    }
}

/// ONNX GroupNormalization-21: each group of `C / groups` channels of each sample normalized by
/// its mean and variance, then scaled and shifted per channel.
pub(crate) fn group_norm(cx: &Cx, groups: usize, eps: f32) -> R<Tensor> {
    let x = cx.x(0)?;
    let s = x.shape();
    if s.len() < 2 {
        return Err("normalization needs an input of rank 2 or more".into());
    }
    let c = s[1];
    let g = groups;
    if g == 0 || c % g != 0 {
        return Err(format!("{c} channels do not split into {g} groups"));
    }
    let (scale, bias) = (floats(cx.x(1)?), floats(cx.x(2)?));
    if scale.len() != c || bias.len() != c {
        return Err(format!("scale and bias must have {c} elements"));
    }
    let plane = numel(&s[2..]).ok_or("input too large")?;
    let row = (c / g).checked_mul(plane).ok_or("input too large")?;
    let y = normalize_rows(&floats(x), row, plane, &scale, &bias, eps);
    float_tensor(x.dtype(), s.to_vec(), y)
}

/// ONNX ArgMax (`max`) and ArgMin along `axis`: the first index of the extreme value, or the
/// last with `select_last`; as numpy's argmax/argmin, a NaN is the extreme (its first index). Floats
/// compare as f32 (f16/bf16 widened exactly) or f64, integers as i64 (u64 as itself).
pub(crate) fn arg_extreme(cx: &Cx, axis: i64, max: bool, select_last: bool) -> R<Tensor> {
    let x = cx.x(0)?;
    let s = x.shape();
    let ax = norm_axis(axis, s.len()).map_err(|e| e.to_string())?;
    let (outer, n, inner) = (numel(&s[..ax]).ok_or("too large")?, s[ax], numel(&s[ax + 1..]).ok_or("too large")?);
    if n == 0 {
        return Err(format!("arg of the empty axis {ax}"));
    }
    fn pick<T: Copy + PartialOrd>(v: &[T], outer: usize, n: usize, inner: usize, max: bool, last: bool) -> Vec<i64> {
        let mut out = Vec::with_capacity(outer * inner);
        for o in 0..outer {
            for i in 0..inner {
                let at = |k: usize| v[(o * n + k) * inner + i];
                let mut best = 0usize;
                for k in 1..n {
                    let (a, b) = (at(k), at(best));
                    let (a_nan, b_nan) = (a.partial_cmp(&a).is_none(), b.partial_cmp(&b).is_none());
                    let better = match (a_nan, b_nan) {
                        (_, true) => last && a_nan,
                        (true, false) => true,
                        _ if a == b => last,
                        _ => (a > b) == max,
                    };
                    if better {
                        best = k;
                    }
                }
                out.push(best as i64);
            }
        }
        out
    }
    let idx = if let TensorData::F64(v) = x.data() {
        pick(v, outer, n, inner, max, select_last)
    } else if let TensorData::U64(v) = x.data() {
        pick(v, outer, n, inner, max, select_last)
    } else if x.dtype().is_float() {
        pick(&floats(x), outer, n, inner, max, select_last)
    } else {
        let v = x.to_i64_vec().ok_or("arg of a non-numeric tensor")?;
        pick(&v, outer, n, inner, max, select_last)
    };
    int_tensor(DType::I64, cx.out_shape(0), &idx)
}

/// ONNX TopK: along `axis`, the `k` largest (or smallest) elements in sorted order, with their
/// i64 indices. Equal values keep the lower index first; NaN counts as larger than any number
/// (the ONNX reference sorts with numpy's lexsort, which puts NaN last, and flips for `largest`).
pub(crate) fn top_k(cx: &Cx, axis: i64, k: usize, largest: bool) -> R<Vec<Tensor>> {
    let x = cx.x(0)?;
    let s = x.shape();
    let ax = norm_axis(axis, s.len()).map_err(|e| e.to_string())?;
    let (outer, n, inner) = (numel(&s[..ax]).ok_or("too large")?, s[ax], numel(&s[ax + 1..]).ok_or("too large")?);
    if k > n {
        return Err(format!("k = {k} exceeds the {n} elements of axis {ax}"));
    }
    /// The sort order: values ascending (NaN last), equal values by index.
    fn order<T: Copy + PartialOrd>(v: &[T], a: usize, b: usize, largest: bool) -> std::cmp::Ordering {
        use std::cmp::Ordering::*;
        let (x, y) = (v[a], v[b]);
        #[allow(clippy::eq_op)]
        let by_value = match (x != x, y != y) {
            (true, true) => Equal,
            (true, false) => Greater,
            (false, true) => Less,
            _ => x.partial_cmp(&y).unwrap_or(Equal),
        };
        let by_value = if largest { by_value.reverse() } else { by_value };
        by_value.then(a.cmp(&b))
    }
    fn select<T: Copy + PartialOrd + Default>(
        v: &[T],
        (outer, n, inner): (usize, usize, usize),
        k: usize,
        largest: bool,
    ) -> (Vec<T>, Vec<i64>) {
        let mut idx = vec![0i64; outer * k * inner];
        let mut picked = vec![T::default(); outer * k * inner];
        let mut row: Vec<usize> = Vec::with_capacity(n);
        for o in 0..outer {
            for i in 0..inner {
                let at = |j: usize| (o * n + j) * inner + i;
                row.clear();
                row.extend(0..n);
                row.sort_by(|&a, &b| order(v, at(a), at(b), largest));
                for (r, &j) in row.iter().take(k).enumerate() {
                    let dst = (o * k + r) * inner + i;
                    picked[dst] = v[at(j)];
                    idx[dst] = j as i64;
                }
            }
        }
        (picked, idx)
    }
    let shape = cx.out_shape(0);
    let (values, idx) = match Nums::of(x)? {
        Nums::F(v) => {
            let (a, b) = select(&v, (outer, n, inner), k, largest);
            (Nums::F(a), b)
        }
        Nums::I(v) => {
            let (a, b) = select(&v, (outer, n, inner), k, largest);
            (Nums::I(a), b)
        }
    };
    Ok(vec![values.into_tensor(x.dtype(), shape.clone())?, int_tensor(DType::I64, shape, &idx)?])
}

/// ONNX CumSum and CumProd along `axis`: each output is the sum (product) of the elements before
/// it (`exclusive`) or up to it, counted from the end with `reverse`. Floats accumulate in f32
/// in that order (rounded once to the storage type), integers wrap.
pub(crate) fn cumulative(cx: &Cx, axis: i64, exclusive: bool, reverse: bool, product: bool) -> R<Tensor> {
    let x = cx.x(0)?;
    let s = x.shape();
    let ax = norm_axis(axis, s.len()).map_err(|e| e.to_string())?;
    let (outer, n, inner) = (numel(&s[..ax]).ok_or("too large")?, s[ax], numel(&s[ax + 1..]).ok_or("too large")?);
    fn run<T: Copy>(
        v: &mut [T],
        (outer, n, inner): (usize, usize, usize),
        excl: bool,
        rev: bool,
        id: T,
        f: impl Fn(T, T) -> T,
    ) {
        for o in 0..outer {
            for i in 0..inner {
                let mut acc = id;
                for step in 0..n {
                    let j = if rev { n - 1 - step } else { step };
                    let at = (o * n + j) * inner + i;
                    let cur = v[at];
                    if excl {
                        v[at] = acc;
                        acc = f(acc, cur);
                    } else {
                        acc = f(acc, cur);
                        v[at] = acc;
                    }
                }
            }
        }
    }
    let dims = (outer, n, inner);
    let mut nums = Nums::of(x)?;
    match &mut nums {
        Nums::F(v) if product => run(v, dims, exclusive, reverse, 1.0, |a, b| a * b),
        Nums::F(v) => run(v, dims, exclusive, reverse, 0.0, |a, b| a + b),
        Nums::I(v) if product => run(v, dims, exclusive, reverse, 1, i64::wrapping_mul),
        Nums::I(v) => run(v, dims, exclusive, reverse, 0, i64::wrapping_add),
    }
    nums.into_tensor(x.dtype(), s.to_vec())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use crate::{Op, Tensor};

    #[test]
    fn batch_norm_per_channel() {
        let x = f32t(&[1, 2, 2], &[1.0, 3.0, 10.0, 20.0]);
        let p = |a: f32, b: f32| f32t(&[2], &[a, b]);
        let y =
            eval1(&Op::BatchNorm { epsilon: 0.0 }, &[&x, &p(2.0, 1.0), &p(0.5, -1.0), &p(2.0, 10.0), &p(4.0, 25.0)])
                .unwrap();
        assert_eq!(y.as_f32().unwrap(), &[-0.5, 1.5, -1.0, 1.0]);
    }

    #[test]
    fn softmax_is_stable_and_log_softmax_matches() {
        let x = f32t(&[2, 3], &[1000.0, 1001.0, 1002.0, -1.0, 0.0, 1.0]);
        let y = eval1(&Op::Softmax { axis: -1 }, &[&x]).unwrap();
        let want = [0.09003057, 0.24472847, 0.66524096];
        assert_close(&y.as_f32().unwrap()[..3], &want, 1e-6);
        assert_close(&y.as_f32().unwrap()[3..], &want, 1e-6);
        let y = eval1(&Op::LogSoftmax { axis: 1 }, &[&x]).unwrap();
        let lw: Vec<f32> = want.iter().map(|v: &f32| v.ln()).collect();
        assert_close(&y.as_f32().unwrap()[3..], &lw, 1e-6);
        // over axis 0 of a [2,2]
        let x = f32t(&[2, 2], &[0.0, 5.0, 0.0, 5.0]);
        let y = eval1(&Op::Softmax { axis: 0 }, &[&x]).unwrap();
        assert_eq!(y.as_f32().unwrap(), &[0.5, 0.5, 0.5, 0.5]);
    }

    #[test]
    fn layer_norm_over_trailing_axes() {
        let x = f32t(&[2, 2], &[1.0, 3.0, -2.0, 2.0]);
        let scale = f32t(&[2], &[1.0, 2.0]);
        let bias = f32t(&[2], &[0.0, 1.0]);
        let y = eval1(&Op::LayerNorm { axis: -1, epsilon: 0.0 }, &[&x, &scale, &bias]).unwrap();
        assert_eq!(y.as_f32().unwrap(), &[-1.0, 3.0, -1.0, 3.0]);
        let y = eval1(&Op::LayerNorm { axis: 0, epsilon: 0.0 }, &[&x, &f32t(&[], &[1.0])]).unwrap();
        let v = y.as_f32().unwrap();
        let var = (0.0 + 4.0 + 9.0 + 1.0) / 4.0f32; // mean 1
        assert_close(v, &[0.0, 2.0 / var.sqrt(), -3.0 / var.sqrt(), 1.0 / var.sqrt()], 1e-6);
    }

    #[test]
    fn lrn_matches_the_formula() {
        // size 3 over 3 channels at one pixel: channel windows [0,1], [0,2], [1,2]
        let x = f32t(&[1, 3, 1, 1], &[1.0, 2.0, 3.0]);
        let y = eval1(&Op::Lrn { size: 3, alpha: 3.0, beta: 0.5, bias: 1.0 }, &[&x]).unwrap();
        let want = [1.0 / (1.0f32 + 5.0).sqrt(), 2.0 / (1.0f32 + 14.0).sqrt(), 3.0 / (1.0f32 + 13.0).sqrt()];
        assert_close(y.as_f32().unwrap(), &want, 1e-6);
    }

    #[test]
    fn reductions() {
        let x = f32t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let y = eval1(&Op::ReduceSum { axes: vec![1], keepdims: true }, &[&x]).unwrap();
        assert_eq!((y.shape(), y.as_f32().unwrap()), (&[2usize, 1][..], &[6.0f32, 15.0][..]));
        let y = eval1(&Op::ReduceMean { axes: vec![0], keepdims: false }, &[&x]).unwrap();
        assert_eq!((y.shape(), y.as_f32().unwrap()), (&[3usize][..], &[2.5f32, 3.5, 4.5][..]));
        let y = eval1(&Op::ReduceMax { axes: vec![], keepdims: false }, &[&x]).unwrap();
        assert_eq!((y.shape(), y.as_f32().unwrap()), (&[][..], &[6.0f32][..]));
        let x = Tensor::from_i64(vec![2, 2], vec![1, 2, 4, -7]);
        let y = eval1(&Op::ReduceMean { axes: vec![-1], keepdims: false }, &[&x]).unwrap();
        assert_eq!(y.to_i64_vec().unwrap(), vec![1, -1]);
        let x = u8t(&[2], &[200, 100]);
        let y = eval1(&Op::ReduceSum { axes: vec![0], keepdims: false }, &[&x]).unwrap();
        assert_eq!(y.to_i64_vec().unwrap(), vec![44]);
    }
}
