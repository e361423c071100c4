//! The numerics contract. Every engine (the reference interpreter, the JIT) computes integer and
//! low-precision arithmetic exactly as written here, and nowhere else is it written down again.
//!
//! # Rounding
//! Float to integer conversions round **half to even** (`2.5 -> 2`, `3.5 -> 4`, `-2.5 -> -2`), as
//! ONNX QuantizeLinear and x86 `cvtps2dq` do. Float to f16/bf16 conversions round to nearest even
//! (the `half` crate). An op computed in f16 or bf16 widens its inputs to f32, computes in f32 and
//! rounds its result once to the storage type.
//!
//! # Saturation
//! Results converted to an integer storage type are clamped to its range: i8 `[-128, 127]`,
//! u8 `[0, 255]`, i32 `[-2^31, 2^31-1]`. NaN converts to 0.
//!
//! # Quantize, dequantize
//! * quantize: `q = saturate(round_half_even(x / scale) + zero_point)`, computed in f32 with a true
//!   division (not a multiplication by the reciprocal), as ONNX Runtime's MLAS kernels do.
//! * dequantize: `x = (q - zero_point) as f32 * scale`, the subtraction in i32.
//!
//! # Integer accumulation and requantization
//! Integer convolutions and matrix products accumulate `(x - zx) * (w - zw)` exactly in i32 (the
//! ranges of the corpus cannot overflow: 255 * 255 * K stays below 2^31 for K < 33025), add an i32
//! bias quantized at scale `sx * sw[c]` with zero point 0, and requantize to the output type:
//!
//! ```text
//! m[c] = (sx * sw[c]) / sy                          (f32, left to right, each step rounded)
//! y    = saturate(round_half_even((acc as f32) * m[c]) + zy)
//! ```
//!
//! This is the computation of ONNX Runtime's `MlasRequantizeOutput` (f32 multiplier, f32 product,
//! `cvtps2dq`), so qforge matches ORT's QLinearConv and QLinearMatMul bit for bit. A float output
//! (`QGemm` without an output scale, a dequantizing epilogue) is `(acc as f32) * (sx * sw[c])`.
//!
//! Integer ops whose ORT kernels compute in a different order (QLinearAdd, QLinearMul,
//! QLinearGlobalAveragePool, QLinearAveragePool) have their element formulas below
//! ([`QAddParams`], [`qlinear_mul`], [`global_average_multiplier`], [`quantize_zp_inside`]); the
//! interpreter ([`crate::interp::quant`]) documents each with its ONNX Runtime source.

use crate::DType;

/// Rounds half to even (banker's rounding) in f32.
#[inline]
pub fn round_half_even(x: f32) -> f32 {
    x.round_ties_even()
}

/// Rounds half to even and clamps into `dtype`'s integer range; NaN gives 0. For float `dtype`s the
/// value is returned unchanged.
pub fn saturate_f64(x: f64, dtype: DType) -> i64 {
    if x.is_nan() {
        return 0;
    }
    let Some((lo, hi)) = dtype.int_range() else {
        return x as i64;
    };
    let r = x.round_ties_even();
    if r <= lo as f64 {
        lo
    } else if r >= hi as f64 {
        hi
    } else {
        r as i64
    }
}

/// Clamps an integer into `dtype`'s range.
#[inline]
pub fn saturate_i64(x: i64, dtype: DType) -> i64 {
    let (lo, hi) = dtype.int_range().unwrap_or((i64::MIN, i64::MAX));
    x.clamp(lo, hi)
}

/// `saturate(round_half_even(x / scale) + zero_point)`.
#[inline]
pub fn quantize(x: f32, scale: f32, zero_point: i32, dtype: DType) -> i64 {
    if x.is_nan() {
        return saturate_i64(zero_point as i64, dtype);
    }
    let r = round_half_even(x / scale);
    saturate_f64(r as f64 + zero_point as f64, dtype)
}

/// `(q - zero_point) as f32 * scale`.
#[inline]
pub fn dequantize(q: i64, scale: f32, zero_point: i32) -> f32 {
    (q - zero_point as i64) as f32 * scale
}

/// The f32 requantization multiplier `(sx * sw) / sy`, evaluated left to right in f32.
#[inline]
pub fn requant_multiplier(sx: f32, sw: f32, sy: f32) -> f32 {
    (sx * sw) / sy
}

/// `saturate(round_half_even(acc as f32 * multiplier) + zero_point)`.
#[inline]
pub fn requantize(acc: i64, multiplier: f32, zero_point: i32, dtype: DType) -> i64 {
    let r = round_half_even(acc as f32 * multiplier);
    saturate_f64(r as f64 + zero_point as f64, dtype)
}

/// ONNX Runtime's QLinearAdd (`com.microsoft`), as its AVX2 kernel computes it
/// (`MlasQLinearAddKernelAvx2Helper`, with the compiler's FMA contraction): in f32 on the stored
/// values, `ra = sa / sc`, `rb = sb / sc`, `fixed = zc - fma(za, ra, rb * zb)`, and
/// `sat(round_half_even(fma(a, ra, fma(b, rb, fixed))))`. The zero points are folded into
/// `fixed` and `zc` is added before rounding. Operand order matters (by an ulp): `a` is the
/// kernel's first operand; where ORT's broadcaster hands the kernel one operand as a scalar per
/// span, that operand is `b` (see [`crate::interp::quant`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QAddParams {
    pub ra: f32,
    pub rb: f32,
    pub fixed: f32,
}

impl QAddParams {
    pub fn new(sa: f32, za: i32, sb: f32, zb: i32, sc: f32, zc: i32) -> QAddParams {
        let (ra, rb) = (sa / sc, sb / sc);
        QAddParams { ra, rb, fixed: zc as f32 - (za as f32).mul_add(ra, rb * zb as f32) }
    }

    /// The stored result for stored operands `a` and `b`.
    #[inline]
    pub fn apply(&self, a: i64, b: i64, dtype: DType) -> i64 {
        let v = (a as f32).mul_add(self.ra, (b as f32).mul_add(self.rb, self.fixed));
        saturate_f64(v as f64, dtype)
    }
}

/// ONNX Runtime's QLinearMul (`com.microsoft`, MLAS SSE2 kernel):
/// `sat(round_half_even(((a - za) * (b - zb)) as f32 * ratio + zc))` with
/// `ratio = (sa * sb) / sc` in f32; `zc` is added in f32 before rounding.
#[inline]
pub fn qlinear_mul(a: i64, za: i32, b: i64, zb: i32, ratio: f32, zc: i32, dtype: DType) -> i64 {
    let p = (a - za as i64) * (b - zb as i64);
    saturate_f64((p as f32 * ratio + zc as f32) as f64, dtype)
}

/// ONNX Runtime's QLinearGlobalAveragePool multiplier for `n` elements: `sx / (sy * n)` in f32;
/// the result is [`requantize`]`(sum - zx * n, multiplier, zy)`.
#[inline]
pub fn global_average_multiplier(sx: f32, sy: f32, n: usize) -> f32 {
    sx / (sy * n as f32)
}

/// Quantization with the zero point added before rounding, as ONNX Runtime's QLinearAveragePool
/// does: `sat(round_half_even(x / scale + zero_point))`.
#[inline]
pub fn quantize_zp_inside(x: f32, scale: f32, zero_point: i32, dtype: DType) -> i64 {
    saturate_f64((x / scale + zero_point as f32) as f64, dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_half_to_even_and_saturates() {
        assert_eq!(quantize(2.5, 1.0, 0, DType::I8), 2);
        assert_eq!(quantize(3.5, 1.0, 0, DType::I8), 4);
        assert_eq!(quantize(-2.5, 1.0, 0, DType::I8), -2);
        assert_eq!(quantize(1000.0, 1.0, 0, DType::I8), 127);
        assert_eq!(quantize(-1000.0, 1.0, 0, DType::I8), -128);
        assert_eq!(quantize(-1.0, 1.0, 0, DType::U8), 0);
        assert_eq!(quantize(0.0, 0.5, 128, DType::U8), 128);
        assert_eq!(quantize(f32::NAN, 0.5, 3, DType::U8), 3);
        assert_eq!(saturate_f64(f64::NAN, DType::I32), 0);
        assert_eq!(requantize(5, 0.5, 10, DType::U8), 12);
        assert_eq!(requantize(7, 0.5, 10, DType::U8), 14);
        assert_eq!(dequantize(130, 0.5, 128), 1.0);
    }
}
