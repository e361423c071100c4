//! Quantized and integer ops.
//!
//! Notation: a stored integer `q` with scale `s` and zero point `z` means `(q - z) * s`;
//! `rne` is round half to even in f32 and `sat` clamps into the result dtype (see
//! [`crate::numerics`]). Each formula is ONNX Runtime 1.32's CPU kernel (source file in brackets);
//! "ORT order" notes where it departs from the generic contract of [`crate::numerics`].
//! Checked against ONNX Runtime 1.32 (CPU EP, AVX2/AVX-512 host): bit-exact on every output of
//! `digits_cnn_int8_qop.onnx` and `digits_cnn_int8_dynamic.onnx` over the 597 test images, and on
//! randomized single-op models of every op below. (On a host without AVX2, ORT's QLinearAdd runs
//! its SSE2 kernel, which rounds twice where the AVX2 kernel fuses, so it can differ by one step.)
//!
//! * **quantize** `sat(rne(x / s) + z)`, per tensor or per axis [mlas/lib/quantize.cpp,
//!   `MlasQuantizeLinear`]. **dequantize** `(q - z) as f32 * s`.
//! * **requantize** (and each input of **qconcat** whose parameters differ from the result's):
//!   `sat(rne(((q - zx) as f32 * sx) / sy) + zy)`, i.e. dequantize then quantize
//!   [contrib_ops/cpu/quantization/qlinear_concat.cc + qlinear_lookup_table.cc: a 256-entry table
//!   built by `MlasQuantizeLinear` of `sx * (q - zx)`]; inputs with the result's parameters are
//!   copied.
//! * **dynamic_quantize** `lo = min(min(x), 0)`, `hi = max(max(x), 0)`,
//!   `scale = hi == lo ? 1 : (hi - lo) / 255`, `zp = rne(clamp(0 - lo / scale, 0, 255))`, then
//!   quantize with them (all f32) [core/util/qmath.h `GetQuantizationParameter`,
//!   providers/cpu/quantization/dynamicquantizelinear.cc]. NaNs are ignored by min/max.
//! * **conv_integer / matmul_integer**: `sum (x - zx) * (w - zw)` exactly, wrapped to i32
//!   [providers/cpu/quantization/conv_integer.cc, matmul_integer.cc]; `zx` is a scalar
//!   (matmul: or one per row of A), `zw` a scalar or one per output channel (matmul: per column
//!   of B). Padding contributes nothing (it holds `zx`).
//! * **qconv / qmatmul / qgemm**: `acc = sum (x - zx) * (w - zw[c])`, computed exactly (in f64
//!   while every partial sum stays below 2^53, else in i128) and wrapped to i32 (two's
//!   complement, [`numerics::wrap_i32`]: ORT's MLAS kernels and the JIT accumulate in i32 and
//!   wrap), then the epilogue in order: `Bias` adds `bias[c]` (i32 add, wrapping); `Requant` gives
//!   `sat(rne(acc as f32 * m[c]) + zy)` with `m[c] = (sx * sw[c]) / sy`
//!   [providers/cpu/quantization/qlinearconv.cc and quantize_linear_matmul.cc compute the f32
//!   `X_scale * W_scale[i] / Y_scale`; mlas/lib/quantize.cpp `MlasRequantizeOutput` adds the bias
//!   as i32, converts, multiplies, clamps to `[lo - zy, hi - zy]`, `cvtps2dq`, adds `zy`: the
//!   same result]; `Dequant` gives `acc as f32 * (sx * sw[c])`; `Clamp { lo, hi }` clamps the
//!   current value (the stored integer after `Requant`, the f32 after `Dequant`, the
//!   accumulator before either).
//!   * **qgemm** (`com.microsoft` QGemm) [contrib_ops/cpu/quantization/quant_gemm.cc]: the bias
//!     is the C input (i32), added to the accumulator before scaling; the scale is
//!     `((alpha * sa) * sb[c])`, divided by `sy` when the result is quantized
//!     (`ComputeOutputScale`), so `m[c] = ((alpha * sa) * sb[c]) / sy` and the float result is
//!     `(acc + C) as f32 * ((alpha * sa) * sb[c])`. ORT order: alpha multiplies the scale, never
//!     the accumulator; with alpha = 1 this is the generic contract.
//! * **qadd** (`com.microsoft` QLinearAdd) [mlas/lib/intrinsics/avx2/qladd_avx2.cpp
//!   `MlasQLinearAddKernelAvx2Helper`, which mlas/lib/platform.cpp selects on AVX2 hosts;
//!   contrib_ops/cpu/quantization/qlinear_binary_op.cc]: in f32 on the stored values,
//!   `ra = sa / sc`, `rb = sb / sc`, `fixed = zc - fma(za, ra, rb * zb)`, then
//!   `sat(rne(fma(a, ra, fma(b, rb, fixed))))` ([`numerics::QAddParams`]; the FMAs are the
//!   compiler's contractions of ORT's `x * r + c` expressions, confirmed bit for bit against ORT
//!   1.32 on every operand pair for random scales). When ORT's broadcaster hands the kernel input 0
//!   as a scalar (input 0 is broadcast along the innermost output dim of size > 1, or the result
//!   has one element), the kernel gets the operands swapped (`b` first, `a` second), which can
//!   change the result by an ulp at a rounding boundary; we do the same. ORT order: the zero
//!   points are folded into one f32 constant and `zc` is added before rounding (no integer sum
//!   is requantized).
//! * **qmul** (`com.microsoft` QLinearMul) [mlas/lib/qlmul.cpp, SSE2 path]:
//!   `sat(rne(((a - za) * (b - zb)) as f32 * ((sa * sb) / sc) + zc))`: the product of
//!   zero-point-corrected values in i32, one f32 multiply, then `zc` added in f32 (no FMA) before
//!   rounding ([`numerics::qlinear_mul`]). ORT order: `zc` is added before rounding.
//! * **qglobal_average_pool** (`com.microsoft` QLinearGlobalAveragePool, and **qaverage_pool**
//!   when the kernel covers the whole input without padding) [mlas/lib/qlgavgpool.cpp
//!   `MlasQLinearGlobalAveragePoolNchw`/`Nhwc`, `CheckQLinearGlobalAveragePoolScaleAndSize`]:
//!   `acc = sum(x) - zx * n` (i32), `scale = sx / (sy * n as f32)`
//!   ([`numerics::global_average_multiplier`]), then `sat(rne(acc as f32 * scale) + zy)`
//!   (`MlasRequantizeOutput` without bias). ORT order: the average is never formed; the divisor
//!   is folded into the scale. (ORT rejects scales outside
//!   `[2^-32, 256)`; we compute anyway.)
//! * **qaverage_pool** otherwise (`com.microsoft` QLinearAveragePool)
//!   [contrib_ops/cpu/quantization/qlinear_pool.cc]: dequantize every input
//!   (`sx * (q - zx)` in f32), sum each window in f32 (plain order), divide by the count
//!   (`count_include_pad`: the kernel size, even where `ceil_mode` windows overhang the padded
//!   input, unlike the float average pool), then `sat(rne(avg / sy + zy))`
//!   ([`numerics::quantize_zp_inside`]). ORT order: `zy` is added in f32 before rounding.

use super::conv::{direct_conv, Acc, Geom};
use super::matmul::{gemm_core, transpose2, BatchedMatMul};
use super::pool::{average_pool_f32, planes, Divisor, PoolGeom};
use super::{float_tensor, floats, int_tensor, numel, per_tensor, Cx, ParamIndex, R};
use crate::numerics;
use crate::{ConvAttrs, DType, Epilogue, PoolAttrs, QuantParams, Tensor};

/// The stored integers of an integer tensor.
fn ints(t: &Tensor) -> R<Vec<i64>> {
    if t.dtype().is_float() {
        return Err(format!("expected an integer tensor, got {}", t.dtype()));
    }
    t.to_i64_vec().ok_or_else(|| format!("expected an integer tensor, got {}", t.dtype()))
}

/// Scale and zero point of every element: `(scale, zp)` of flat element `i`.
struct Params<'a> {
    q: &'a QuantParams,
    pi: ParamIndex,
}

impl<'a> Params<'a> {
    fn new(q: &'a QuantParams, shape: &[usize]) -> R<Params<'a>> {
        Ok(Params { q, pi: ParamIndex::new(q, shape)? })
    }
    #[inline]
    fn at(&self, i: usize) -> (f32, i32) {
        let c = self.pi.at(i);
        (self.q.scale(c), self.q.zero_point(c))
    }
}

pub(crate) fn quantize(cx: &Cx) -> R<Tensor> {
    let x = cx.x(0)?;
    if !x.dtype().is_float() {
        return Err(format!("quantize needs a float input, got {}", x.dtype()));
    }
    let shape = cx.out_shape(0);
    let p = Params::new(cx.out_quant(0)?, &shape)?;
    let dt = cx.out_dtype(0);
    let q: Vec<i64> = floats(x)
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let (s, z) = p.at(i);
            numerics::quantize(v, s, z, dt)
        })
        .collect();
    int_tensor(dt, shape, &q)
}

pub(crate) fn dequantize(cx: &Cx) -> R<Tensor> {
    let x = cx.x(0)?;
    let p = Params::new(cx.in_quant(0)?, x.shape())?;
    let y: Vec<f32> = ints(x)?
        .iter()
        .enumerate()
        .map(|(i, &q)| {
            let (s, z) = p.at(i);
            numerics::dequantize(q, s, z)
        })
        .collect();
    float_tensor(DType::F32, cx.out_shape(0), y)
}

/// `sat(rne(((q - zx) as f32 * sx) / sy) + zy)`: dequantize, then quantize.
#[inline]
fn requant_value(q: i64, sx: f32, zx: i32, sy: f32, zy: i32, dt: DType) -> i64 {
    numerics::quantize(numerics::dequantize(q, sx, zx), sy, zy, dt)
}

pub(crate) fn requantize(cx: &Cx) -> R<Tensor> {
    let x = cx.x(0)?;
    let shape = cx.out_shape(0);
    let pin = Params::new(cx.in_quant(0)?, x.shape())?;
    let pout = Params::new(cx.out_quant(0)?, &shape)?;
    let dt = cx.out_dtype(0);
    let q: Vec<i64> = ints(x)?
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ((sx, zx), (sy, zy)) = (pin.at(i), pout.at(i));
            requant_value(v, sx, zx, sy, zy, dt)
        })
        .collect();
    int_tensor(dt, shape, &q)
}

/// The scale and zero point ONNX Runtime's DynamicQuantizeLinear chooses for `x`: its range
/// widened to include 0, divided into 255 steps, and the zero point that puts 0 on a step
/// (ONNX's DynamicQuantizeLinear definition).
pub fn dynamic_params(x: &[f32]) -> (f32, i32) {
    let (lo, hi) = min_max(x);
    dynamic_params_of_range(lo, hi)
}

/// [`dynamic_params`] of a tensor whose [`min_max`] is `(lo, hi)`: a kernel that finds the
/// range its own way (minimum and maximum do not depend on the order) shares the rest.
pub fn dynamic_params_of_range(lo: f32, hi: f32) -> (f32, i32) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let scale = if hi == lo { 1.0 } else { (hi - lo) / 255.0 };
    let zp = numerics::round_half_even((0.0 - lo / scale).clamp(0.0, 255.0));
    (scale, zp as i32)
}

/// The smallest and largest value of `x`, NaN ignored (`(f32::MAX, f32::MIN)` when there is
/// none): `f32::min`/`max` folded over it.
pub fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

pub(crate) fn dynamic_quantize(cx: &Cx) -> R<Vec<Tensor>> {
    let x = cx.x(0)?;
    if !x.dtype().is_float() {
        return Err(format!("dynamic quantize needs a float input, got {}", x.dtype()));
    }
    let xv = floats(x);
    let (scale, zp) = dynamic_params(&xv);
    let q: Vec<i64> = xv.iter().map(|&v| numerics::quantize(v, scale, zp, DType::U8)).collect();
    Ok(vec![
        int_tensor(DType::U8, x.shape().to_vec(), &q)?,
        float_tensor(DType::F32, vec![], vec![scale])?,
        int_tensor(DType::U8, vec![], &[zp as i64])?,
    ])
}

// ---------------------------------------------------------------------------------------------
// Integer accumulation.

/// Largest absolute value (as u128, so nothing overflows).
fn max_abs(v: &[i64]) -> u128 {
    v.iter().map(|x| x.unsigned_abs() as u128).max().unwrap_or(0)
}

/// The integer loop nests: `run` widens each operand to `T` and accumulates in `T`.
trait IntKernel {
    fn run<X: Copy, T: Acc + From<X>>(&self, a: &[X], b: &[X]) -> R<Vec<T>>;
}

impl IntKernel for Geom {
    fn run<X: Copy, T: Acc + From<X>>(&self, a: &[X], b: &[X]) -> R<Vec<T>> {
        direct_conv(a, b, self)
    }
}

impl IntKernel for BatchedMatMul {
    fn run<X: Copy, T: Acc + From<X>>(&self, a: &[X], b: &[X]) -> R<Vec<T>> {
        Ok(BatchedMatMul::run(self, a, b, |x, w| gemm_core(x, w, self.m, self.k, self.n)))
    }
}

/// Runs the kernel exactly: in f64 when every partial sum of the `k`-term dot products is an
/// integer below 2^53 (so every f64 product and sum is exact, and the loops vectorize), in i128
/// otherwise; the exact result is wrapped into i32 ([`numerics::wrap_i32`]).
fn accumulate(a: &[i64], b: &[i64], k: usize, kern: &impl IntKernel) -> R<Vec<i64>> {
    let bound = max_abs(a).saturating_mul(max_abs(b)).saturating_mul(k as u128);
    Ok(if bound < (1u128 << 53) {
        let f = |v: &[i64]| -> Vec<f64> { v.iter().map(|&x| x as f64).collect() };
        kern.run::<f64, f64>(&f(a), &f(b))?.into_iter().map(|v| numerics::wrap_i32(v as i128)).collect()
    } else {
        let wide = |v: &[i64]| -> Vec<i128> { v.iter().map(|&x| x as i128).collect() };
        kern.run::<i128, i128>(&wide(a), &wide(b))?.into_iter().map(numerics::wrap_i32).collect()
    })
}

fn int_conv(x: &[i64], w: &[i64], g: &Geom) -> R<Vec<i64>> {
    accumulate(x, w, g.reduction_len(), g)
}

fn int_matmul(a: &[i64], b: &[i64], bm: &BatchedMatMul) -> R<Vec<i64>> {
    accumulate(a, b, bm.k, bm)
}

/// A zero point input: a scalar (or one element), or `n` elements.
fn zero_points(t: Option<&Tensor>, n: usize, what: &str) -> R<Vec<i64>> {
    let Some(t) = t else { return Ok(vec![0]) };
    let v = ints(t)?;
    if v.len() == 1 || (v.len() == n && t.rank() <= 1) {
        Ok(v)
    } else {
        Err(format!("{what} must be a scalar or have {n} elements, got shape {:?}", t.shape()))
    }
}

#[inline]
fn pick(v: &[i64], i: usize) -> i64 {
    if v.len() == 1 {
        v[0]
    } else {
        v[i]
    }
}

pub(crate) fn conv_integer(cx: &Cx, a: &ConvAttrs) -> R<Tensor> {
    let (x, w) = (cx.x(0)?, cx.x(1)?);
    let shape = cx.out_shape(0);
    let g = Geom::new(a, x.shape(), w.shape(), &shape)?;
    let zx = zero_points(cx.opt(2), 1, "x zero point")?[0];
    let zw = zero_points(cx.opt(3), g.m, "w zero point")?;
    let per_m = numel(&w.shape()[1..]).ok_or("weight too large")?.max(1);
    let xv: Vec<i64> = ints(x)?.iter().map(|&v| v - zx).collect();
    let wv: Vec<i64> = ints(w)?.iter().enumerate().map(|(i, &v)| v - pick(&zw, i / per_m)).collect();
    let acc = int_conv(&xv, &wv, &g)?;
    int_tensor(DType::I32, shape, &acc)
}

pub(crate) fn matmul_integer(cx: &Cx) -> R<Tensor> {
    let (a, b) = (cx.x(0)?, cx.x(1)?);
    let bm = BatchedMatMul::new(a.shape(), b.shape())?;
    let za = zero_points(cx.opt(2), bm.m, "a zero point")?;
    let zb = zero_points(cx.opt(3), bm.n, "b zero point")?;
    let (k, n) = (bm.k.max(1), bm.n.max(1));
    let av: Vec<i64> = ints(a)?.iter().enumerate().map(|(i, &v)| v - pick(&za, (i / k) % bm.m.max(1))).collect();
    let bv: Vec<i64> = ints(b)?.iter().enumerate().map(|(i, &v)| v - pick(&zb, i % n)).collect();
    let acc = int_matmul(&av, &bv, &bm)?;
    int_tensor(DType::I32, cx.out_shape(0), &acc)
}

// ---------------------------------------------------------------------------------------------
// Fused integer kernels and their epilogues.

/// The epilogue of a fused integer kernel, checked once.
struct Epi<'a> {
    steps: &'a [Epilogue],
    bias: Vec<i64>,
    /// `alpha * sx`: the scale of the left operand (alpha is 1 but for QGemm).
    sx: f32,
    /// Per-channel weight scales (one value for per-tensor weights).
    sw: Vec<f32>,
    out: Option<(Params<'a>, DType)>,
}

enum V {
    Acc(i64),
    Q(i64),
    F(f32),
}

impl<'a> Epi<'a> {
    fn new(cx: &'a Cx<'_>, steps: &'a [Epilogue], sx: f32, wq: &QuantParams, channels: usize) -> R<Epi<'a>> {
        let mut converted = false;
        let mut has_bias = false;
        for s in steps {
            match s {
                Epilogue::Bias if converted => return Err("bias after the requantization".into()),
                Epilogue::Bias if has_bias => return Err("two bias steps".into()),
                Epilogue::Bias => has_bias = true,
                Epilogue::Requant | Epilogue::Dequant if converted => {
                    return Err("more than one requant/dequant step".into())
                }
                Epilogue::Requant | Epilogue::Dequant => converted = true,
                Epilogue::Clamp { .. } => {}
            }
        }
        if !converted {
            return Err("the epilogue must requantize or dequantize".into());
        }
        let bias = if has_bias {
            let b = ints(cx.opt(2).ok_or("the epilogue adds a bias but there is no bias input")?)?;
            if b.len() != channels {
                return Err(format!("bias has {} elements for {channels} channels", b.len()));
            }
            b
        } else {
            vec![]
        };
        let sw = match wq {
            QuantParams::PerTensor { scale, .. } => vec![*scale],
            QuantParams::PerAxis { scales, .. } => scales.clone(),
            QuantParams::PerGroup { .. } => return Err("per-group weights have no integer kernel".into()),
        };
        if sw.len() != 1 && sw.len() != channels {
            return Err(format!("{} weight scales for {channels} channels", sw.len()));
        }
        let shape = &cx.out_shapes[0];
        let out = if steps.contains(&Epilogue::Requant) {
            Some((Params::new(cx.out_quant(0)?, shape)?, cx.out_dtype(0)))
        } else {
            None
        };
        Ok(Epi { steps, bias, sx, sw, out })
    }

    /// Finishes accumulator `acc` of channel `c` at flat result index `i`.
    #[inline]
    fn apply(&self, acc: i64, c: usize, i: usize) -> V {
        let sw = if self.sw.len() == 1 { self.sw[0] } else { self.sw[c] };
        let mut v = V::Acc(acc);
        for s in self.steps {
            v = match (s, v) {
                (Epilogue::Bias, V::Acc(a)) => V::Acc(numerics::wrap_i32(a as i128 + self.bias[c] as i128)),
                (Epilogue::Requant, V::Acc(a)) => {
                    let (p, dt) = self.out.as_ref().expect("checked in new");
                    let (sy, zy) = p.at(i);
                    V::Q(numerics::requantize(a, numerics::requant_multiplier(self.sx, sw, sy), zy, *dt))
                }
                (Epilogue::Dequant, V::Acc(a)) => V::F(a as f32 * (self.sx * sw)),
                (Epilogue::Clamp { lo, hi }, V::Acc(a)) => V::Acc(a.clamp(*lo, (*hi).max(*lo))),
                (Epilogue::Clamp { lo, hi }, V::Q(q)) => V::Q(q.clamp(*lo, (*hi).max(*lo))),
                (Epilogue::Clamp { lo, hi }, V::F(f)) => V::F(f.clamp(*lo as f32, (*hi).max(*lo) as f32)),
                (_, v) => v, // excluded by the checks in `new`
            };
        }
        v
    }

    /// Applies the epilogue to every accumulator; `channel(i)` is the channel of result `i`.
    fn finish(&self, acc: &[i64], shape: Vec<usize>, channel: impl Fn(usize) -> usize) -> R<Tensor> {
        match &self.out {
            Some((_, dt)) => {
                let q: Vec<i64> = acc
                    .iter()
                    .enumerate()
                    .map(|(i, &a)| match self.apply(a, channel(i), i) {
                        V::Q(q) | V::Acc(q) => q,
                        V::F(f) => f as i64, // excluded by the checks in `new`
                    })
                    .collect();
                int_tensor(*dt, shape, &q)
            }
            None => {
                let y: Vec<f32> = acc
                    .iter()
                    .enumerate()
                    .map(|(i, &a)| match self.apply(a, channel(i), i) {
                        V::F(f) => f,
                        V::Acc(a) | V::Q(a) => a as f32,
                    })
                    .collect();
                float_tensor(DType::F32, shape, y)
            }
        }
    }
}

/// Zero-point-corrected weights: `w - zw[c]` where channel `c = (i / inner) % channels`.
fn centered(w: &Tensor, wq: &QuantParams) -> R<Vec<i64>> {
    let p = Params::new(wq, w.shape())?;
    Ok(ints(w)?.iter().enumerate().map(|(i, &v)| v - p.at(i).1 as i64).collect())
}

pub(crate) fn qconv(cx: &Cx, a: &ConvAttrs, ep: &[Epilogue]) -> R<Tensor> {
    let (x, w) = (cx.x(0)?, cx.x(1)?);
    let (sx, zx) = per_tensor(cx.in_quant(0)?, "x")?;
    let wq = cx.in_quant(1)?;
    if wq.axis().is_some_and(|ax| ax != 0) {
        return Err("the weight must be quantized per tensor or on axis 0".into());
    }
    let shape = cx.out_shape(0);
    let g = Geom::new(a, x.shape(), w.shape(), &shape)?;
    let xv: Vec<i64> = ints(x)?.iter().map(|&v| v - zx as i64).collect();
    let acc = int_conv(&xv, &centered(w, wq)?, &g)?;
    let epi = Epi::new(cx, ep, sx, wq, g.m)?;
    let plane = numel(&shape[2..]).ok_or("result too large")?.max(1);
    let m = g.m.max(1);
    epi.finish(&acc, shape, |i| (i / plane) % m)
}

pub(crate) fn qmatmul(cx: &Cx, ep: &[Epilogue]) -> R<Tensor> {
    let (a, b) = (cx.x(0)?, cx.x(1)?);
    let (sa, za) = per_tensor(cx.in_quant(0)?, "a")?;
    let bq = cx.in_quant(1)?;
    let bm = BatchedMatMul::new(a.shape(), b.shape())?;
    let av: Vec<i64> = ints(a)?.iter().map(|&v| v - za as i64).collect();
    let acc = int_matmul(&av, &centered(b, bq)?, &bm)?;
    let epi = Epi::new(cx, ep, sa, bq, bm.n)?;
    let n = bm.n.max(1);
    epi.finish(&acc, cx.out_shape(0), |i| i % n)
}

pub(crate) fn qgemm(cx: &Cx, alpha: f32, trans_a: bool, trans_b: bool, ep: &[Epilogue]) -> R<Tensor> {
    let (a, b) = (cx.x(0)?, cx.x(1)?);
    let (sa, za) = per_tensor(cx.in_quant(0)?, "a")?;
    let bq = cx.in_quant(1)?;
    let (s_a, s_b) = (a.shape(), b.shape());
    if s_a.len() != 2 || s_b.len() != 2 {
        return Err(format!("gemm needs 2-D operands, got {s_a:?} and {s_b:?}"));
    }
    let (m, k) = if trans_a { (s_a[1], s_a[0]) } else { (s_a[0], s_a[1]) };
    let n = if trans_b { s_b[0] } else { s_b[1] };
    let av: Vec<i64> = ints(a)?.iter().map(|&v| v - za as i64).collect();
    let av = if trans_a { transpose2(&av, k, m) } else { av };
    let bv = centered(b, bq)?;
    let bv = if trans_b { transpose2(&bv, n, k) } else { bv };
    let bm = BatchedMatMul { m, k, n, pairs: vec![(0, 0)] };
    let acc = int_matmul(&av, &bv, &bm)?;
    let epi = Epi::new(cx, ep, alpha * sa, bq, n)?;
    let nn = n.max(1);
    epi.finish(&acc, cx.out_shape(0), |i| i % nn)
}

// ---------------------------------------------------------------------------------------------
// Element-wise and pooling kernels with ONNX Runtime's own formulas.

/// Whether an operand of `shape` reaches ONNX Runtime's QLinearAdd kernel as a scalar: it is
/// broadcast along the innermost dim of `out` whose size is not 1 (or `out` has one element).
/// The JIT's broadcast quantized add orders its operands by it too.
pub fn scalar_in_span(shape: &[usize], out: &[usize]) -> bool {
    let off = out.len() - shape.len().min(out.len());
    match out.iter().rposition(|&d| d != 1) {
        None => true,
        Some(a) => a < off || shape[a - off] == 1,
    }
}

pub(crate) fn qadd(cx: &Cx) -> R<Tensor> {
    let (a, b) = (cx.x(0)?, cx.x(1)?);
    let (sa, za) = per_tensor(cx.in_quant(0)?, "a")?;
    let (sb, zb) = per_tensor(cx.in_quant(1)?, "b")?;
    let (sc, zc) = per_tensor(cx.out_quant(0)?, "the result")?;
    let dt = cx.out_dtype(0);
    let shape = cx.out_shape(0);
    let (av, bv) = (ints(a)?, ints(b)?);
    // ORT hands its kernel the operand that is broadcast within a span second ("B").
    let a_scalar = scalar_in_span(a.shape(), &shape);
    let swap = a_scalar; // a one-element output: ORT takes input 0 as the scalar
    let k = if swap {
        numerics::QAddParams::new(sb, zb, sa, za, sc, zc)
    } else {
        numerics::QAddParams::new(sa, za, sb, zb, sc, zc)
    };
    let mut y = Vec::with_capacity(numel(&shape).unwrap_or(0));
    super::for_each_broadcast(&shape, &[a.shape(), b.shape()], |_, o| {
        let (x, z) = (av[o[0]], bv[o[1]]);
        y.push(if swap { k.apply(z, x, dt) } else { k.apply(x, z, dt) });
    })?;
    int_tensor(dt, shape, &y)
}

pub(crate) fn qmul(cx: &Cx) -> R<Tensor> {
    let (a, b) = (cx.x(0)?, cx.x(1)?);
    let (sa, za) = per_tensor(cx.in_quant(0)?, "a")?;
    let (sb, zb) = per_tensor(cx.in_quant(1)?, "b")?;
    let (sc, zc) = per_tensor(cx.out_quant(0)?, "the result")?;
    let dt = cx.out_dtype(0);
    let shape = cx.out_shape(0);
    let (av, bv) = (ints(a)?, ints(b)?);
    let ratio = sa * sb / sc;
    let mut y = Vec::with_capacity(numel(&shape).unwrap_or(0));
    super::for_each_broadcast(&shape, &[a.shape(), b.shape()], |_, o| {
        y.push(numerics::qlinear_mul(av[o[0]], za, bv[o[1]], zb, ratio, zc, dt));
    })?;
    int_tensor(dt, shape, &y)
}

/// ORT's global average: `sat(rne((sum - zx * n) as f32 * (sx / (sy * n))) + zy)` per plane.
fn global_average(xv: &[i64], planes_: usize, size: usize, sx: f32, zx: i32, out: &Params, dt: DType) -> Vec<i64> {
    (0..planes_)
        .map(|c| {
            let sum: i64 = xv[c * size..][..size].iter().sum();
            let acc = numerics::wrap_i32(sum as i128 - zx as i128 * size as i128);
            let (sy, zy) = out.at(c);
            numerics::requantize(acc, numerics::global_average_multiplier(sx, sy, size), zy, dt)
        })
        .collect()
}

pub(crate) fn qglobal_average_pool(cx: &Cx) -> R<Tensor> {
    let x = cx.x(0)?;
    let (sx, zx) = per_tensor(cx.in_quant(0)?, "x")?;
    let (np, size) = planes(x.shape())?;
    let shape = cx.out_shape(0);
    let out = Params::new(cx.out_quant(0)?, &shape)?;
    let dt = cx.out_dtype(0);
    let y = global_average(&ints(x)?, np, size, sx, zx, &out, dt);
    int_tensor(dt, shape, &y)
}

pub(crate) fn qaverage_pool(cx: &Cx, p: &PoolAttrs) -> R<Tensor> {
    let x = cx.x(0)?;
    let (sx, zx) = per_tensor(cx.in_quant(0)?, "x")?;
    let shape = cx.out_shape(0);
    let out = Params::new(cx.out_quant(0)?, &shape)?;
    let dt = cx.out_dtype(0);
    let xv = ints(x)?;
    let whole = x.shape().len() >= 3 && x.shape()[2..] == p.kernel[..] && p.pads.iter().all(|&v| v == 0);
    if whole {
        let (np, size) = planes(x.shape())?;
        return int_tensor(dt, shape, &global_average(&xv, np, size, sx, zx, &out, dt));
    }
    let g = PoolGeom::new(p, x.shape(), &shape)?;
    let xf: Vec<f32> = xv.iter().map(|&q| numerics::dequantize(q, sx, zx)).collect();
    let avg = average_pool_f32(&xf, &g, if p.count_include_pad { Divisor::Kernel } else { Divisor::Valid });
    let y: Vec<i64> = avg
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let (sy, zy) = out.at(i);
            numerics::quantize_zp_inside(v, sy, zy, dt)
        })
        .collect();
    int_tensor(dt, shape, &y)
}

pub(crate) fn qconcat(cx: &Cx, axis: i64) -> R<Tensor> {
    let shape = cx.out_shape(0);
    let a = crate::infer::norm_axis(axis, shape.len())?;
    let (sy, zy) = per_tensor(cx.out_quant(0)?, "the result")?;
    let dt = cx.out_dtype(0);
    let outer = numel(&shape[..a]).ok_or("result too large")?;
    let inner = numel(&shape[a + 1..]).ok_or("result too large")?;
    let mut parts = Vec::with_capacity(cx.inputs.len());
    for i in 0..cx.inputs.len() {
        let x = cx.x(i)?;
        let (sx, zx) = per_tensor(cx.in_quant(i)?, "every input")?;
        let v = ints(x)?;
        let v: Vec<i64> = if sx == sy && zx == zy && x.dtype() == dt {
            v
        } else {
            v.iter().map(|&q| requant_value(q, sx, zx, sy, zy, dt)).collect()
        };
        let block = x.shape().get(a).copied().unwrap_or(0) * inner;
        parts.push((v, block));
    }
    let mut y = Vec::with_capacity(numel(&shape).unwrap_or(0));
    for o in 0..outer {
        for (v, b) in &parts {
            y.extend_from_slice(&v[o * b..(o + 1) * b]);
        }
    }
    int_tensor(dt, shape, &y)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use crate::{ConvAttrs, DType, Epilogue, Op, PoolAttrs, QuantParams, Tensor, TensorData};

    fn axis(axis: usize, scales: &[f32], zps: &[i32]) -> QuantParams {
        QuantParams::PerAxis { axis, scales: scales.to_vec(), zero_points: zps.to_vec() }
    }

    fn conv1x1() -> ConvAttrs {
        ConvAttrs { kernel: vec![1, 1], strides: vec![1, 1], pads: vec![0; 4], dilations: vec![1, 1], group: 1 }
    }

    #[test]
    fn quantize_and_dequantize_per_axis() {
        // axis 1 of [2,3]: scales 0.5, 0.1, 2 and zero points 3, -4, 0 (i8)
        let q = axis(1, &[0.5, 0.1, 2.0], &[3, -4, 0]);
        let x = f32t(&[2, 3], &[0.25, -0.25, 3.0, 0.75, 1000.0, -1000.0]);
        let y = evalq(&Op::Quantize, &[&x], &[ty(&x)], &[qout(DType::I8, q.clone())]).unwrap().remove(0);
        // 0.25/0.5 = 0.5 -> 0 (+3); -0.25/0.1 = -2.5 -> -2 (-4); 3/2 = 1.5 -> 2;
        // 0.75/0.5 = 1.5 -> 2 (+3); saturation at both ends.
        assert_eq!(y.data(), &TensorData::I8(vec![3, -6, 2, 5, 127, -128]));
        let d = evalq(&Op::Dequantize, &[&y], &[qty(&y, q)], &[]).unwrap().remove(0);
        assert_close(d.as_f32().unwrap(), &[0.0, -0.2, 4.0, 1.0, 13.1, -256.0], 1e-6);
        // per-tensor u8, f16 input
        let h = Tensor::from_f32_slice(DType::F16, vec![3], &[-1.0, 0.5, 300.0]);
        let y = evalq(&Op::Quantize, &[&h], &[ty(&h)], &[qout(DType::U8, pt(0.25, 10))]).unwrap().remove(0);
        assert_eq!(y.data(), &TensorData::U8(vec![6, 12, 255]));
    }

    #[test]
    fn quantize_and_dequantize_per_group() {
        // [2,3,2] in groups of 2 along axis 1: parameters [2,2,2] (axis 1 indices {0,1} and {2})
        let q = QuantParams::PerGroup {
            axis: 1,
            group_size: 2,
            scales: vec![1.0, 2.0, 4.0, 8.0, 0.5, 0.25, 16.0, 32.0],
            zero_points: vec![0, 1, -1, 2, 0, 0, 3, -3],
        };
        let w = i8t(&[2, 3, 2], &[1, 2, 3, 4, 5, 6, 7, -1, -2, -3, -4, -5]);
        let d = evalq(&Op::Dequantize, &[&w], &[qty(&w, q.clone())], &[]).unwrap().remove(0);
        let want = [1.0, 2.0, 3.0, 6.0, 24.0, 32.0, 3.5, -0.25, -1.0, -0.75, -112.0, -64.0];
        assert_eq!(d.as_f32().unwrap(), &want);
        // quantizing the dequantized values with the same parameters gives the codes back
        let y = evalq(&Op::Quantize, &[&d], &[ty(&d)], &[qout(DType::I8, q.clone())]).unwrap().remove(0);
        assert_eq!(y, w);
        // parameters that do not fit the shape are an error, not a panic
        let short = QuantParams::PerGroup { axis: 1, group_size: 1, scales: vec![1.0; 8], zero_points: vec![0; 8] };
        assert!(evalq(&Op::Dequantize, &[&w], &[qty(&w, short.clone())], &[]).is_err());
        assert!(evalq(&Op::Quantize, &[&d], &[ty(&d)], &[qout(DType::I8, short)]).is_err());
        // per-group weights have no integer kernel
        let x = u8t(&[1, 3, 1, 2], &[1, 2, 3, 4, 5, 6]);
        let wc = i8t(&[2, 3, 1, 1], &[1, 2, 3, 4, 5, 6]);
        let wq = QuantParams::PerGroup { axis: 1, group_size: 2, scales: vec![1.0; 4], zero_points: vec![0; 4] };
        let op = Op::QConv { conv: conv1x1(), epilogue: vec![Epilogue::Dequant] };
        let e = evalq(&op, &[&x, &wc], &[qty(&x, pt(1.0, 0)), qty(&wc, wq)], &[]).unwrap_err();
        assert!(e.to_string().contains("per-group weights have no integer kernel"), "{e}");
    }

    #[test]
    fn requantize_rounds_half_to_even_and_saturates() {
        // acc = x - 128 with a 1x1 weight of 1: m = (1 * 0.5) / 1 = 0.5 exactly.
        let x = u8t(&[1, 1, 1, 6], &[129, 131, 133, 127, 125, 255]);
        let w = i8t(&[1, 1, 1, 1], &[1]);
        let op = Op::QConv { conv: conv1x1(), epilogue: vec![Epilogue::Requant] };
        let types = [qty(&x, pt(1.0, 128)), qty(&w, pt(0.5, 0))];
        let y = evalq(&op, &[&x, &w], &types, &[qout(DType::I8, pt(1.0, -100))]).unwrap().remove(0);
        // 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> 0, -1.5 -> -2, 63.5 -> 64
        assert_eq!(y.to_i64_vec().unwrap(), vec![-100, -98, -98, -100, -102, -36]);
        // m = 4: saturation at both ends of i8 and of u8
        let x = u8t(&[1, 1, 1, 3], &[255, 0, 130]);
        let types = [qty(&x, pt(1.0, 128)), qty(&w, pt(4.0, 0))];
        let y = evalq(&op, &[&x, &w], &types, &[qout(DType::I8, pt(1.0, 0))]).unwrap().remove(0);
        assert_eq!(y.to_i64_vec().unwrap(), vec![127, -128, 8]);
        let y = evalq(&op, &[&x, &w], &types, &[qout(DType::U8, pt(1.0, 0))]).unwrap().remove(0);
        assert_eq!(y.to_i64_vec().unwrap(), vec![255, 0, 8]);
        // the Requantize op: dequantize then quantize, ties to even
        let q = u8t(&[4], &[11, 13, 15, 250]);
        let y =
            evalq(&Op::Requantize, &[&q], &[qty(&q, pt(0.5, 10))], &[qout(DType::I8, pt(1.0, 0))]).unwrap().remove(0);
        assert_eq!(y.to_i64_vec().unwrap(), vec![0, 2, 2, 120]);
    }

    /// Deterministic pseudo-random integers in `lo..=hi`.
    fn ints(n: usize, lo: i64, hi: i64, seed: u64) -> Vec<i64> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                lo + ((s >> 33) as i64).rem_euclid(hi - lo + 1)
            })
            .collect()
    }

    #[test]
    fn qconv_matches_dequantize_float_conv_quantize_within_one_step() {
        let conv = ConvAttrs {
            kernel: vec![3, 3],
            strides: vec![2, 1],
            pads: vec![1, 1, 1, 1],
            dilations: vec![1, 1],
            group: 2,
        };
        let x = Tensor::from_i64_wrapping(DType::U8, vec![2, 4, 7, 6], &ints(336, 0, 255, 1));
        let w = Tensor::from_i64_wrapping(DType::I8, vec![6, 2, 3, 3], &ints(108, -127, 127, 2));
        let b = Tensor::from_i64_wrapping(DType::I32, vec![6], &ints(6, -3000, 3000, 3));
        let (sx, zx) = (0.02f32, 117);
        let sw = [0.011f32, 0.007, 0.013, 0.009, 0.005, 0.02];
        let (sy, zy) = (0.08f32, 60);
        let wq = axis(0, &sw, &[0; 6]);
        let op = Op::QConv { conv: conv.clone(), epilogue: vec![Epilogue::Bias, Epilogue::Requant] };
        let types = [qty(&x, pt(sx, zx)), qty(&w, wq.clone()), ty(&b)];
        let got = evalq(&op, &[&x, &w, &b], &types, &[qout(DType::U8, pt(sy, zy))]).unwrap().remove(0);
        // float reference
        let xf: Vec<f32> = x.to_i64_vec().unwrap().iter().map(|&q| (q - zx as i64) as f32 * sx).collect();
        let wf: Vec<f32> = w.to_i64_vec().unwrap().iter().enumerate().map(|(i, &q)| q as f32 * sw[i / 18]).collect();
        let bf: Vec<f32> = b.to_i64_vec().unwrap().iter().enumerate().map(|(i, &q)| q as f32 * sx * sw[i]).collect();
        let yf =
            eval1(&Op::Conv(conv), &[&f32t(&[2, 4, 7, 6], &xf), &f32t(&[6, 2, 3, 3], &wf), &f32t(&[6], &bf)]).unwrap();
        let want = evalq(&Op::Quantize, &[&yf], &[ty(&yf)], &[qout(DType::U8, pt(sy, zy))]).unwrap().remove(0);
        assert_eq!(got.shape(), want.shape());
        let (g, w) = (got.to_i64_vec().unwrap(), want.to_i64_vec().unwrap());
        assert!(g.iter().zip(&w).all(|(a, b)| (a - b).abs() <= 1));
        let exact = g.iter().zip(&w).filter(|(a, b)| a == b).count();
        assert!(exact * 10 >= g.len() * 9, "{exact} of {} exact", g.len());
    }

    #[test]
    fn epilogue_clamp_and_dequant() {
        let x = u8t(&[1, 1, 1, 4], &[0, 10, 20, 255]);
        let w = i8t(&[2, 1, 1, 1], &[1, -1]);
        let b = i32t(&[2], &[5, 0]);
        let types = [qty(&x, pt(0.5, 10)), qty(&w, axis(0, &[1.0, 2.0], &[0, 0])), ty(&b)];
        // relu6-style clamp in the stored domain: [zy, zy + 6/sy]
        let op = Op::QConv {
            conv: conv1x1(),
            epilogue: vec![Epilogue::Bias, Epilogue::Requant, Epilogue::Clamp { lo: 3, hi: 15 }],
        };
        let y = evalq(&op, &[&x, &w, &b], &types, &[qout(DType::U8, pt(0.5, 3))]).unwrap().remove(0);
        // ch0: acc = x - 10 + 5 = -5, 5, 15, 250; m = 1 -> -5+3 sat 0 -> 3; 8; 18 -> 15; 15
        // ch1: acc = 10 - x = 10, 0, -10, -245; m = 2 -> 23 -> 15; 3; -17 -> 3; 3
        assert_eq!(y.to_i64_vec().unwrap(), vec![3, 8, 15, 15, 15, 3, 3, 3]);
        let op = Op::QConv { conv: conv1x1(), epilogue: vec![Epilogue::Bias, Epilogue::Dequant] };
        let y = evalq(&op, &[&x, &w, &b], &types, &[]).unwrap().remove(0);
        assert_eq!(y.dtype(), DType::F32);
        assert_eq!(y.as_f32().unwrap(), &[-2.5, 2.5, 7.5, 125.0, 10.0, 0.0, -10.0, -245.0]);
    }

    #[test]
    fn qgemm_and_qmatmul() {
        // a [2,3] u8 zp 1; b^T [2,3] i8 per row (= per output column); bias per column.
        let a = u8t(&[2, 3], &[1, 2, 3, 4, 5, 6]);
        let b = i8t(&[2, 3], &[1, 0, -1, 2, 2, 2]);
        let c = i32t(&[2], &[10, -10]);
        let bq = axis(0, &[0.5, 0.25], &[0, 1]);
        let types = [qty(&a, pt(2.0, 1)), qty(&b, bq), ty(&c)];
        // acc: row0 (0,1,2): col0 = 0*1 + 1*0 + 2*-1 = -2; col1 = (0+1+2)*(2-1) = 3
        //      row1 (3,4,5): col0 = 3 - 5 = -2; col1 = 12. Plus bias: 8, -7, 8, 2.
        let op =
            Op::QGemm { alpha: 1.5, trans_a: false, trans_b: true, epilogue: vec![Epilogue::Bias, Epilogue::Dequant] };
        let y = evalq(&op, &[&a, &b, &c], &types, &[]).unwrap().remove(0);
        // scales: alpha * 2 * 0.5 = 1.5 and alpha * 2 * 0.25 = 0.75
        assert_eq!(y.as_f32().unwrap(), &[12.0, -5.25, 12.0, 1.5]);
        let op =
            Op::QGemm { alpha: 1.0, trans_a: false, trans_b: true, epilogue: vec![Epilogue::Bias, Epilogue::Requant] };
        let y = evalq(&op, &[&a, &b, &c], &types, &[qout(DType::U8, pt(1.0, 100))]).unwrap().remove(0);
        // m = 1 and 0.5: 8, -3.5 -> -4, 8, 1
        assert_eq!(y.to_i64_vec().unwrap(), vec![108, 96, 108, 101]);
        // qmatmul: b [3,2] per column (axis 1)
        let b2 = i8t(&[3, 2], &[1, 2, 0, 2, -1, 2]);
        let types = [qty(&a, pt(2.0, 1)), qty(&b2, axis(1, &[0.5, 0.25], &[0, 1]))];
        let op = Op::QMatMul { epilogue: vec![Epilogue::Requant] };
        let y = evalq(&op, &[&a, &b2], &types, &[qout(DType::I8, pt(1.0, 0))]).unwrap().remove(0);
        // acc -2, 3, -2, 12 -> * 1 and 0.5: -2, 1.5 -> 2, -2, 6
        assert_eq!(y.to_i64_vec().unwrap(), vec![-2, 2, -2, 6]);
    }

    #[test]
    fn integer_conv_and_matmul_with_zero_points() {
        let x = u8t(&[1, 1, 2, 2], &[10, 11, 12, 13]);
        let w = i8t(&[2, 1, 1, 1], &[3, -1]);
        let zx = u8t(&[], &[10]);
        let zw = i8t(&[2], &[1, 0]);
        let op = Op::ConvInteger(conv1x1());
        let types = [ty(&x), ty(&w), ty(&zx), ty(&zw)];
        let y = evalq(&op, &[&x, &w, &zx, &zw], &types, &[]).unwrap().remove(0);
        assert_eq!(y.data(), &TensorData::I32(vec![0, 2, 4, 6, 0, -1, -2, -3]));
        // padding contributes nothing (it holds the zero point)
        let pad = ConvAttrs { pads: vec![1, 0, 0, 0], ..conv1x1() };
        let y = evalq(&Op::ConvInteger(pad), &[&x, &w, &zx, &zw], &types, &[]).unwrap().remove(0);
        assert_eq!(y.shape(), &[1, 2, 3, 2]);
        assert_eq!(y.to_i64_vec().unwrap(), vec![0, 0, 0, 2, 4, 6, 0, 0, 0, -1, -2, -3]);
        let a = u8t(&[2, 2], &[130, 128, 127, 129]);
        let b = i8t(&[2, 3], &[1, 2, 3, 4, 5, 6]);
        let za = u8t(&[], &[128]);
        let zb = i8t(&[3], &[0, 1, 2]);
        let types = [ty(&a), ty(&b), ty(&za), ty(&zb)];
        let y = evalq(&Op::MatMulInteger, &[&a, &b, &za, &zb], &types, &[]).unwrap().remove(0);
        // a - 128 = [[2, 0], [-1, 1]]; b - zb = [[1, 1, 1], [4, 4, 4]]
        assert_eq!(y.data(), &TensorData::I32(vec![2, 2, 2, 3, 3, 3]));
    }

    #[test]
    fn accumulators_wrap_in_i32() {
        // (a - za) = 2^30 + 1 and b = 127 over K = 2: 254 * 2^30 + 254, far beyond i32; exact,
        // then wrapped (the low 32 bits, two's complement): 2^31 + 254 reads as -2^31 + 254.
        let a = u8t(&[1, 2], &[1, 1]);
        let b = i8t(&[2, 1], &[127, 127]);
        let op = Op::QMatMul { epilogue: vec![Epilogue::Dequant] };
        let types = [qty(&a, pt(1.0, -(1 << 30))), qty(&b, pt(1.0, 0))];
        let y = evalq(&op, &[&a, &b], &types, &[]).unwrap().remove(0);
        assert_eq!(y.as_f32().unwrap(), &[-2147483394i32 as f32]);
        // products near 2^62 take the i128 path: 2 * (2^31 + 1) * (2^31 + 127) = 2^63 + 2^39 + 254
        let types = [qty(&a, pt(1.0, i32::MIN)), qty(&b, pt(1.0, i32::MIN))];
        let y = evalq(&op, &[&a, &b], &types, &[]).unwrap().remove(0);
        assert_eq!(y.as_f32().unwrap(), &[254.0]);
        // 2 * (2^31 + 1) * (128 - 2^31) = 254 * 2^31 - 2^63 + 256
        let types = [qty(&a, pt(1.0, i32::MIN)), qty(&b, pt(1.0, i32::MAX))];
        let y = evalq(&op, &[&a, &b], &types, &[]).unwrap().remove(0);
        assert_eq!(y.as_f32().unwrap(), &[256.0]);
    }

    #[test]
    fn dynamic_quantize_known_vector() {
        // ONNX Runtime 1.32 gives scale 5/255 (f32), zero point 153 and these values.
        let x = f32t(&[6], &[0.0, 2.0, -3.0, -2.5, 1.34, 0.5]);
        let out = evalq(&Op::DynamicQuantize, &[&x], &[ty(&x)], &[]).unwrap();
        assert_eq!(out[0].data(), &TensorData::U8(vec![153, 255, 0, 26, 221, 179]));
        assert_eq!(out[1].as_f32().unwrap(), &[5.0f32 / 255.0]);
        assert_eq!(out[1].shape(), &[] as &[usize]);
        assert_eq!(out[2].data(), &TensorData::U8(vec![153]));
        // all zeros: scale 1, zero point 0; all positive: zero point 0
        let out =
            evalq(&Op::DynamicQuantize, &[&f32t(&[2], &[0.0, 0.0])], &[ty(&f32t(&[2], &[0.0, 0.0]))], &[]).unwrap();
        assert_eq!((out[1].as_f32().unwrap()[0], out[2].to_i64_vec().unwrap()[0]), (1.0, 0));
        let p = f32t(&[2], &[1.0, 2.55]);
        let out = evalq(&Op::DynamicQuantize, &[&p], &[ty(&p)], &[]).unwrap();
        assert_eq!(out[2].to_i64_vec().unwrap()[0], 0);
        assert_eq!(out[0].to_i64_vec().unwrap(), vec![100, 255]);
    }

    /// Runs `op` on two u8 operands with the given per-tensor parameters.
    fn binop(op: &Op, a: &Tensor, b: &Tensor, p: [(f32, i32); 3]) -> Vec<i64> {
        let types = [qty(a, pt(p[0].0, p[0].1)), qty(b, pt(p[1].0, p[1].1))];
        evalq(op, &[a, b], &types, &[qout(DType::U8, pt(p[2].0, p[2].1))]).unwrap().remove(0).to_i64_vec().unwrap()
    }

    #[test]
    fn qadd_follows_onnx_runtime() {
        let p = [(0.5, 10), (0.25, 20), (0.5, 100)];
        // (a - 10) * 0.5 + (b - 20) * 0.25 = y * 0.5 - 50: exact halves round to even
        let a = u8t(&[4], &[10, 11, 13, 255]);
        let b = u8t(&[4], &[20, 21, 22, 255]);
        assert_eq!(binop(&Op::QAdd, &a, &b, p), vec![100, 102, 104, 255]);
        // broadcasting a per-channel operand
        let a = u8t(&[1, 2, 1, 2], &[10, 12, 14, 16]);
        let b = u8t(&[1, 2, 1, 1], &[20, 24]);
        assert_eq!(binop(&Op::QAdd, &a, &b, p), vec![100, 102, 106, 108]);
        // A case where ONNX Runtime's operand order shows (by an ulp, at a rounding boundary):
        // element-wise the result is 217, with `a` broadcast per span (passed second) it is 216.
        let p = [(0.45841137, 161), (0.46383014, 73), (0.14389122, 250)];
        let a = u8t(&[2], &[109, 0]);
        let b = u8t(&[2], &[114, 0]);
        assert_eq!(binop(&Op::QAdd, &a, &b, p)[0], 217);
        let a = u8t(&[1, 1], &[109]);
        let b = u8t(&[1, 2], &[114, 0]);
        assert_eq!(binop(&Op::QAdd, &a, &b, p)[0], 216);
    }

    #[test]
    fn qmul_follows_onnx_runtime() {
        // values from ONNX Runtime 1.32: the product times (sa*sb)/sc, plus zc, then rounded
        let a = u8t(&[4], &[0, 100, 255, 7]);
        let b = u8t(&[4], &[255, 3, 255, 9]);
        assert_eq!(binop(&Op::QMul, &a, &b, [(0.5, 10), (0.25, 5), (2.0, 100)]), vec![0, 89, 255, 99]);
        // a scalar operand; 97.5 and 122.5 round to even
        let s = u8t(&[], &[9]);
        assert_eq!(binop(&Op::QMul, &a, &s, [(0.5, 10), (0.25, 5), (2.0, 100)]), vec![98, 122, 161, 99]);
    }

    #[test]
    fn qglobal_average_pool_follows_onnx_runtime() {
        let x = u8t(&[1, 2, 2, 2], &[10, 20, 30, 41, 200, 201, 202, 255]);
        let types = [qty(&x, pt(0.1, 5))];
        let y = evalq(&Op::QGlobalAveragePool, &[&x], &types, &[qout(DType::U8, pt(0.3, 7))]).unwrap().remove(0);
        assert_eq!(y.shape(), &[1, 2, 1, 1]);
        // (101 - 20) * 0.1 / (0.3 * 4) = 6.75 -> 7; (858 - 20) * ... = 69.83 -> 70
        assert_eq!(y.to_i64_vec().unwrap(), vec![14, 77]);
    }

    #[test]
    fn qaverage_pool_follows_onnx_runtime() {
        let x = Tensor::from_i64_wrapping(DType::U8, vec![1, 1, 6, 6], &(1..=36).collect::<Vec<_>>());
        let p = PoolAttrs {
            kernel: vec![3, 3],
            strides: vec![2, 2],
            pads: vec![1; 4],
            dilations: vec![1, 1],
            ceil_mode: true,
            count_include_pad: true,
        };
        let y = evalq(&Op::QAveragePool(p), &[&x], &[qty(&x, pt(0.5, 2))], &[qout(DType::U8, pt(0.25, 10))])
            .unwrap()
            .remove(0);
        assert_eq!(y.shape(), &[1, 1, 4, 4]);
        // ONNX Runtime 1.32's values: the divisor is always the kernel size (9)
        let want = [12, 15, 18, 13, 25, 36, 40, 21, 41, 60, 64, 29, 23, 31, 32, 18];
        assert_eq!(y.to_i64_vec().unwrap(), want);
    }

    #[test]
    fn qconcat_requantizes_each_input() {
        let a = u8t(&[1, 2], &[10, 20]);
        let b = u8t(&[1, 1], &[7]);
        let types = [qty(&a, pt(0.5, 0)), qty(&b, pt(1.0, 5))];
        let y = evalq(&Op::QConcat { axis: 1 }, &[&a, &b], &types, &[qout(DType::U8, pt(0.5, 0))]).unwrap().remove(0);
        assert_eq!(y.to_i64_vec().unwrap(), vec![10, 20, 4]);
    }
}
