//! The numerics contract. Every engine (the reference interpreter, the JIT) computes integer and
//! low-precision arithmetic exactly as written here, and nowhere else is it written down again.
//!
//! # Rounding
//! Float to integer conversions round **half to even** (`2.5 -> 2`, `3.5 -> 4`, `-2.5 -> -2`), as
//! ONNX QuantizeLinear and x86 `cvtps2dq` do. Float to f16/bf16 conversions round to nearest even
//! (the `half` crate). An op computed in f16 or bf16 widens its inputs to f32, computes in f32 and
//! rounds its result once to the storage type.
//!
//! # bf16 dot products
//! A bf16 convolution, GEMM or matrix product is the sum of the exact products of its bf16
//! operands (a product of two bf16 values is exact in f32), accumulated in f32 from 0.0, plus the
//! bias in f32, rounded once to bf16; only the summation order is left to the engine. The
//! interpreter sums in its loop order; the JIT on a CPU with AVX512-BF16 sums each output's terms
//! two at a time as `VDPBF16PS` does (Intel SDM: per pair `2i, 2i+1`, an FMA of the odd term then
//! of the even one, round to nearest even, subnormal inputs and results flushed to zero), except a
//! depthwise convolution, whose taps it sums one at a time in tap order `(ky, kx)` (the
//! interpreter's order) with one f32 FMA each on the widened values, no flushing; elsewhere it
//! widens to f32 and uses the f32 kernels. The engines therefore agree on each output
//! element up to one bf16 step (a sum landing either side of a rounding boundary), and a ReLU or
//! Clip after such an op may be applied before the rounding: rounding is monotone, so
//! `round(clip(x)) == round(clip(round(x)))` for any bounds.
//!
//! # Saturation
//! Results converted to an integer storage type are clamped to its range: i8 `[-128, 127]`,
//! u8 `[0, 255]`, i32 `[-2^31, 2^31-1]` (and so on for i16, u16, u32, i64, u64). NaN converts to 0.
//!
//! # Cast (ONNX Cast and CastLike)
//! [`cast_float_to_int`] and the rules below are the element formulas of every cast:
//! * float to integer: truncation toward zero, then saturation to the target's range; NaN gives 0.
//!   (The ONNX spec leaves out-of-range values undefined; the reference's NumPy `astype` gives
//!   whatever the C conversion does; saturation is the one defined choice, as Rust's `as`.)
//! * integer to integer: the low bits of the two's-complement value (wrap-around), as NumPy's
//!   `astype` and C casts do.
//! * anything to bool: `x != 0` (NaN is true, as in NumPy).
//! * to a float type: the exact source value rounded once to nearest even (f32 to f16 and f64 to
//!   f16 directly; integers to f32 and f64 directly; integers to f16/bf16 through f64, which is
//!   exact up to 2^53 and so for every f16, while a bf16 of a larger integer rounds twice).
//!
//! * from a wire type (float8, float4, INT4/INT2, ...): the value [`crate::wire::WireType::decode`]
//!   gives, held exactly in the IR type the graph input or constant has; casts *to* a wire type
//!   are not supported (the importer refuses them).
//!
//! # Integer element-wise arithmetic
//! [`int_binary`]: `+ - *` wrap in the storage type (two's complement, as ONNX Runtime's kernels
//! and NumPy do); division truncates toward zero; `mod` (ONNX Mod, fmod=0) takes the sign of the
//! divisor (Python's `%`), `fmod` (fmod=1) the sign of the dividend (C's `fmod`); a zero divisor is
//! an error; `pow` is `trunc(pow(a as f64, b as f64))` (ONNX Runtime's `std::pow` on doubles),
//! wrapped into the storage type; comparisons, `max` and `min` compare values (unsigned types as
//! unsigned).
//!
//! # Float element-wise arithmetic
//! [`float_binary`] is evaluated in f64 and rounded once to the storage type: for f64 that is the
//! IEEE operation itself; for f32 (and f16/bf16 widened to f32) it is the same as computing in f32,
//! since f64 carries more than twice f32's precision (double rounding is innocuous for `+ - * /`
//! and square root), and `pow` is evaluated in f64 and rounded once. `max`/`min` propagate NaN.
//!
//! # Exponential, sigmoid and erf
//! `Exp`, `Sigmoid` and `Erf` of f32 values (f16/bf16 widened), the exponentials of softmax and
//! log-softmax, and through them SiLU (`x * sigmoid(x)`) and GELU's erf form (node by node:
//! divide, erf, add one, multiply by x, multiply by a half), are [`exp_f32`], [`sigmoid_f32`]
//! and [`erf_f32`]: fixed sequences of f32 operations with fused multiply-adds (one rounding
//! each), so the interpreter, the JIT's vector kernels at every width and a CPU without FMA (its
//! libm `fmaf`) compute them bit for bit. `exp_f32` is Cody-Waite reduction `x = n ln 2 + r`,
//! `|r| <= ln 2 / 2`, a degree-6 polynomial in Horner form and an exact scaling by `2^n`;
//! `sigmoid_f32` is `1 / (1 + e)` for `x >= 0` and `e / (1 + e)` below, `e = exp_f32(-|x|)`;
//! `erf_f32` is an odd polynomial below 1 and `1 - exp_f32(R(|x|) - x^2)` up to 4. Measured on
//! every f32 against libm's f64 functions by `cargo bench -p qforge-codegen --bench
//! transcendental`, which enforces [`EXP_ULPS`], [`SIGMOID_ULPS`] and [`ERF_ULPS`]: `exp_f32`
//! within 1.10 ulp (f32 units in the last place of the true value, subnormal results included),
//! `sigmoid_f32` within 2.40 ulp, `erf_f32` within 1.45 ulp. ONNX Runtime's MLAS computes these
//! with its own f32 polynomials (`MlasComputeExp`, `MlasComputeLogistic`, `MlasComputeErf`),
//! which differ from libm by a few ulp too. Every other transcendental function (`Tanh`, `Log`,
//! the trigonometric ones, the fused `Gelu` op) of an f32 is libm's f64 function rounded to f32
//! once, and every function of an f64 tensor is libm's.
//!
//! # Softmax
//! Softmax and log-softmax of a lane subtract its maximum `m` first (the first NaN, if any, is
//! the maximum), take each exponential as [`softmax_exp`] (`exp_f32(x - m)`, except that an
//! exponential below f32's smallest normal, 2^-126, is 0: every `x - m` below
//! [`SOFTMAX_EXP_CUT`]), sum them in f32 in lane order, then divide each exponential by the sum
//! (softmax; a quotient below 2^-126 is 0, [`flush_subnormal`]) or give `(x - m) - ln(sum)`
//! (log-softmax, the logarithm in f64 rounded once). So softmax never computes with or returns a
//! subnormal: on Intel cores an operation with a subnormal operand or result takes a microcode
//! assist (a 512x512 f32 matrix product of subnormals measured 170x slower than of normal
//! values on a Sapphire Rapids core), and attention masks of -100 (Swin's shifted windows) or
//! -3.4e38 make most of a masked lane's probabilities subnormal, which then feed the attention's
//! product with the values. The lane's sum is at least 1 (the maximum's exponential), so a
//! dropped exponential is below 2^-126 of it; ONNX Runtime keeps the subnormal probabilities,
//! which differ from qforge's zeros by less than 1.2e-38 each.
//!
//! # Quantize, dequantize
//! * quantize: `q = saturate(round_half_even(x / scale) + zero_point)`, computed in f32 with a true
//!   division (not a multiplication by the reciprocal), as ONNX Runtime's MLAS kernels do.
//! * dequantize: `x = (q - zero_point) as f32 * scale`, the subtraction in i32.
//!
//! # Fake quantization (quantization-aware training)
//! [`fake_quantize_codes`]: `q = x / s`, `r = round_half_even(q) + z`, `c = clip(r, qmin, qmax)`
//! (a NaN passes), `y = (c - z) * s`, every step an f32 operation as the separate `div`, `round`,
//! `add`, `clip`, `sub` and `mul` ops compute it (without a zero point the addition and the
//! subtraction are left out), so the fused op equals the composition bit for bit, and its
//! quantize-dequantize equals [`quantize`] followed by a dequantize on every in-range code.
//!
//! # Integer accumulation and requantization
//! Integer convolutions and matrix products accumulate `(x - zx) * (w - zw)` in i32, add an i32
//! bias quantized at scale `sx * sw[c]` with zero point 0, and requantize to the output type.
//! The accumulation and the bias add are **two's-complement i32 arithmetic: a sum that leaves the
//! i32 range wraps** (modulo 2^32, [`wrap_i32`]), never saturates. That is what ONNX Runtime's
//! MLAS kernels do (`vpdpbusd`/`vpmaddwd` accumulate with `_mm_add_epi32`, and
//! `MlasRequantizeOutput` in mlas/lib/quantize.cpp adds the bias with `_mm_add_epi32`; none of
//! them saturates), and what the JIT's GEMM and depthwise kernels do (they accumulate the raw
//! `x * w` and fold the zero-point corrections into the bias, which is exact modulo 2^32 only).
//! The same rule holds for the i32 results of ConvInteger/MatMulInteger and for the sums of
//! integer average pooling. Static INT8 keeps every layer far from it: the quantizer raises a
//! weight scale until the bias and `K` products of 255 * 255 fit (`_adjust_weight_scale_for_int32_bias`
//! in onnxruntime/python/tools/quantization/base_quantizer.py does the same), so a wrap only
//! happens in a model whose own integer weights and biases cause it. Requantization:
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

use crate::{BinaryOp, DType};

/// `exp(r)` on `|r| <= ln 2 / 2`, degree 6, coefficients rounded to f32, constant term first
/// (`scripts/transcendental_polys.py`: a Chebyshev fit, 1.23 * 2^-24 relative in f32 Horner form
/// with fused multiply-adds).
const EXP_F32_POLY: [f32; 7] = [1.0, 1.0, 0.5, 0.166_664_15, 0.041_666_35, 0.008_375_134, 0.001_394_111_9];

/// `e^x` of the numerics contract ("Exponential, sigmoid and erf" above): `n = round_half_even(x
/// log2(e))` on `x` clamped to `[-104, 89]` (beyond, the result is 0 or infinity), `r = x - n
/// ln2_hi - n ln2_lo` by two fused multiply-adds, the polynomial, then `(p * 2^(n >> 1)) *
/// 2^(n - (n >> 1))`: two factors of normal powers of two, so the first product is exact and the
/// second rounds once (to a subnormal or infinity where the result is one). NaN stays NaN.
/// Branch-free, so a loop of it vectorizes.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    // fdlibm's expf split of ln 2: 0x3f317200 and 0x35bfbe8e
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let xc = x.clamp(-104.0, 89.0);
    let n = (xc * std::f32::consts::LOG2_E).round_ties_even();
    let r = (-n).mul_add(LN2_HI, xc);
    let r = (-n).mul_add(LN2_LO, r);
    let c = &EXP_F32_POLY;
    let mut p = c[6];
    for &ci in c[..6].iter().rev() {
        p = p.mul_add(r, ci);
    }
    // n is an integer in [-150, 128]: adding 1.5 * 2^23 puts it in the low mantissa bits (a
    // float addition and integer arithmetic, which vectorize where a float-to-int conversion
    // with Rust's NaN and overflow rules does not); each half exponent is in [-75, 64], a
    // normal power of two. (For a NaN `k` is garbage and the result is replaced below.)
    const SHIFTER: f32 = 12_582_912.0;
    let k = ((n + SHIFTER).to_bits() as i32).wrapping_sub(SHIFTER.to_bits() as i32);
    let k1 = k >> 1;
    let s1 = f32::from_bits((k1.wrapping_add(127) as u32) << 23);
    let s2 = f32::from_bits((k.wrapping_sub(k1).wrapping_add(127) as u32) << 23);
    let y = (p * s1) * s2;
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// The `x - max` below which softmax's exponential is 0 ([`softmax_exp`]): the least f32 whose
/// [`exp_f32`] is at least 2^-126 (f32's smallest normal), so softmax's exponentials are 0 or
/// normal. `exp_f32` is monotone there, so every `x - max` below it has a subnormal or zero
/// exponential (both checked on every f32 from -110 to -80 by this module's tests).
pub const SOFTMAX_EXP_CUT: f32 = -87.336_54;

/// Softmax's exponential of `d = x - max` ("Softmax" above): [`exp_f32`], or 0 for `d` below
/// [`SOFTMAX_EXP_CUT`] (where `exp_f32` is subnormal). NaN stays NaN.
#[inline(always)]
pub fn softmax_exp(d: f32) -> f32 {
    if d < SOFTMAX_EXP_CUT {
        0.0
    } else {
        exp_f32(d)
    }
}

/// `v`, or 0 where `v` is a positive subnormal (softmax's quotients, which are never negative).
/// NaN stays NaN.
#[inline(always)]
pub fn flush_subnormal(v: f32) -> f32 {
    if v < f32::MIN_POSITIVE {
        0.0
    } else {
        v
    }
}

/// `(erf(x) / x - 2/sqrt(pi)) / x^2` in `x^2` on `|x| < 1`, degree 5, constant term first
/// (`scripts/transcendental_polys.py`: erf within 1.02 ulp on dense points).
const ERF_F32_SMALL: [f32; 6] =
    [-0.376_126_38, 0.112_837_54, -0.026_861_7, 0.005_204_579, -0.000_816_198_65, 8.379_755e-5];
/// `2/sqrt(pi)` as the sum of two f32 (the first is `FRAC_2_SQRT_PI` rounded to f32).
// the low part is what f32 cannot hold, so the constant is spelled out
#[allow(clippy::approx_constant)]
const TWO_OVER_SQRT_PI: (f32, f32) = (1.128_379_2, -5.863_538_3e-8);
/// `log(erfc(a)) + a^2` in `t = a - 2.5` on `|t| <= 1.5`, degree 8, constant term first (erf
/// within 0.86 ulp on dense points, the exponential taken exact): `erfc(a) = e^(-a^2 + R)`, with
/// `a^2` subtracted as an exact pair after the polynomial, which only holds the slowly varying
/// rest (a polynomial for the whole logarithm cancels terms of 8 down to 2 near `a = 1`).
const ERF_F32_TAIL: [f32; 9] = [
    -1.556_815_3,
    -0.352_680_68,
    0.056_106_295,
    -0.010_858_541,
    0.002_165_303_6,
    -0.000_420_122_52,
    7.729_138e-5,
    -1.331_501_4e-5,
    1.637_151_4e-6,
];

/// `erf(x)` of the numerics contract, in f32 with fused multiply-adds: on `a = |x| < 1`,
/// `a c0_hi + a (y Q(y) + c0_lo)` with `y = a^2` rounded (`2/sqrt(pi) = c0_hi + c0_lo`); on `1
/// <= a < 4`, `1 - exp_f32((R(a - 2.5) - lo) - y)` with `R` close to `log(erfc(a)) + a^2` and `lo
/// = a^2 - y` (exact, by a fused multiply-add); `1` from 4 on (`erfc(4) < 2^-25`,
/// below half an f32 ulp under 1); the sign of `x`; NaN stays NaN. Both polynomials are
/// evaluated for every element (branch-free, so a loop of it vectorizes).
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    let a = x.abs();
    let y = a * a;
    let c = &ERF_F32_SMALL;
    let mut q = c[5];
    for &ci in c[..5].iter().rev() {
        q = q.mul_add(y, ci);
    }
    let small = a.mul_add(TWO_OVER_SQRT_PI.0, a * (y * q + TWO_OVER_SQRT_PI.1));
    let t = a.min(4.0) - 2.5;
    let c = &ERF_F32_TAIL;
    let mut l = c[8];
    for &ci in c[..8].iter().rev() {
        l = l.mul_add(t, ci);
    }
    // a^2 = y + lo exactly (a fused multiply-add gives the remainder)
    let lo = a.mul_add(a, -y);
    let tail = 1.0 - exp_f32((l - lo) - y);
    let r = if a < 1.0 {
        small
    } else if a < 4.0 {
        tail
    } else {
        1.0
    };
    if x.is_nan() {
        x
    } else {
        r.copysign(x)
    }
}

/// The most [`exp_f32`] is off the true `e^x`, in f32 ulps of the true value (checked on every
/// f32 by `cargo bench -p qforge-codegen --bench transcendental`).
pub const EXP_ULPS: f64 = 1.2;
/// The most [`sigmoid_f32`] is off the true logistic function, in f32 ulps (checked likewise).
pub const SIGMOID_ULPS: f64 = 2.5;

/// The most [`erf_f32`] is off fdlibm's `erf` (within an f64 ulp of the true value), in f32
/// ulps (checked likewise).
pub const ERF_ULPS: f64 = 1.5;

/// `|got - truth|` in units of the last place of `truth` in f32 (the subnormal spacing below the
/// normal range): how the ulp bounds above are measured. 0 where `got` is `truth` rounded to f32
/// (infinity included) or `truth` is NaN; infinite where only one of them is infinite.
pub fn f32_ulps(got: f32, truth: f64) -> f64 {
    if truth.is_nan() || got.to_bits() == (truth as f32).to_bits() {
        return 0.0;
    }
    if got.is_infinite() || truth.is_infinite() {
        return f64::INFINITY;
    }
    let at = truth.abs();
    let e = if at < f64::from(f32::MIN_POSITIVE) { -149 } else { at.log2().floor() as i32 - 23 };
    (f64::from(got) - truth).abs() / 2f64.powi(e)
}

/// The logistic function of the numerics contract, in f32: with `e = exp_f32(-|x|)` (never above
/// 1), `1 / (1 + e)` for `x >= 0` and `e / (1 + e)` below, so that a large negative `x` gives
/// `e^x`'s (subnormal) value where `1 / (1 + e^-x)` would overflow to 0. NaN stays NaN.
#[inline(always)]
pub fn sigmoid_f32(x: f32) -> f32 {
    let e = exp_f32(-x.abs());
    let num = if x >= 0.0 { 1.0 } else { e };
    num / (1.0 + e)
}

/// An exact integer sum reduced to i32 the way the integer kernels compute it: the low 32 bits,
/// two's complement (see "Integer accumulation" above).
#[inline]
pub fn wrap_i32(v: i128) -> i64 {
    v as i32 as i64
}

/// Rounds half to even (banker's rounding) in f32: `f32::round_ties_even`, computed without a
/// library call so that loops over it vectorize. Below 2^23 in magnitude, adding and subtracting
/// `2^23` (with `x`'s sign) rounds to an integer in the current IEEE mode, round to nearest even
/// (the spacing of f32 between 2^23 and 2^24 is 1, and 2^23 is even, so the parity of the sum is
/// the integer's); the sign is restored so that `-0.4` gives `-0.0`. From 2^23 up every f32 is an
/// integer already, and infinities and NaN pass unchanged.
#[inline]
pub fn round_half_even(x: f32) -> f32 {
    const TWO_23: f32 = 8_388_608.0;
    if x.abs() < TWO_23 {
        let m = TWO_23.copysign(x);
        ((x + m) - m).copysign(x)
    } else {
        x
    }
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

/// Rounds half to even and clamps into the range of any integer `dtype` (u64 included); NaN gives
/// 0. For float `dtype`s the value is rounded toward zero into the i128 range.
pub fn saturate_f64_wide(x: f64, dtype: DType) -> i128 {
    let r = x.round_ties_even();
    match dtype.int_bounds() {
        // `as` from a float saturates at the bounds of the target and maps NaN to 0
        Some((lo, hi)) => (r as i128).clamp(lo, hi),
        None => r as i128,
    }
}

/// ONNX Cast of a float value to the integer type `to` (see the module docs): truncated toward
/// zero and saturated to the target's range; NaN gives 0. The result fits `to`.
pub fn cast_float_to_int(x: f64, to: DType) -> i128 {
    let (lo, hi) = to.int_bounds().unwrap_or((i128::MIN, i128::MAX));
    // `as` truncates toward zero, saturates at the i128 range and maps NaN to 0
    (x as i128).clamp(lo, hi)
}

/// Integer binary ops (see the module docs) on values of `dtype` given as i64 bits (u64 values
/// reinterpreted, see [`crate::Tensor::to_i64_bits`]): the result as i64 bits, to be wrapped into
/// the storage type (comparisons give 0 or 1). `Err` for a zero divisor.
pub fn int_binary(op: BinaryOp, x: i64, z: i64, dtype: DType) -> Result<i64, &'static str> {
    // u64 values above i64::MAX have their sign bit set: order and divide them as u64.
    let unsigned = dtype == DType::U64;
    let (ux, uz) = (x as u64, z as u64);
    let cmp = |o: std::cmp::Ordering| if unsigned { ux.cmp(&uz) == o } else { x.cmp(&z) == o };
    Ok(match op {
        BinaryOp::Add => x.wrapping_add(z),
        BinaryOp::Sub => x.wrapping_sub(z),
        BinaryOp::Mul => x.wrapping_mul(z),
        BinaryOp::Div => match (z, unsigned) {
            (0, _) => return Err("integer division by zero"),
            (_, true) => (ux / uz) as i64,
            (_, false) => x.wrapping_div(z),
        },
        BinaryOp::Mod | BinaryOp::Fmod => match (z, unsigned) {
            (0, _) => return Err("integer modulus by zero"),
            (_, true) => (ux % uz) as i64,
            (_, false) => {
                let r = x.wrapping_rem(z);
                // Mod takes the sign of the divisor (Python's %), Fmod the dividend's.
                if op == BinaryOp::Mod && r != 0 && ((r < 0) != (z < 0)) {
                    r.wrapping_add(z)
                } else {
                    r
                }
            }
        },
        BinaryOp::Pow => {
            let (a, b) = if unsigned { (ux as f64, uz as f64) } else { (x as f64, z as f64) };
            // `as i128` truncates (and saturates); the storage type keeps the low bits
            a.powf(b) as i128 as i64
        }
        BinaryOp::Max => {
            if cmp(std::cmp::Ordering::Less) {
                z
            } else {
                x
            }
        }
        BinaryOp::Min => {
            if cmp(std::cmp::Ordering::Greater) {
                z
            } else {
                x
            }
        }
        BinaryOp::Equal => (x == z) as i64,
        BinaryOp::Less => cmp(std::cmp::Ordering::Less) as i64,
        BinaryOp::Greater => cmp(std::cmp::Ordering::Greater) as i64,
        BinaryOp::GreaterOrEqual => !cmp(std::cmp::Ordering::Less) as i64,
        BinaryOp::LessOrEqual => !cmp(std::cmp::Ordering::Greater) as i64,
        BinaryOp::And => (x != 0 && z != 0) as i64,
        BinaryOp::Or => (x != 0 || z != 0) as i64,
        // On the two's-complement bits (an unsigned value is its bits read as i64, so the
        // storage type gets back exactly its own bits).
        BinaryOp::BitAnd => x & z,
        BinaryOp::BitOr => x | z,
        BinaryOp::BitXor => x ^ z,
        // ONNX BitShift-28: the storage type's bits; bits beyond its width are cut by the final
        // wrap into the storage type; a count outside `0..width` gives 0 (or -1 for a right shift
        // of a negative signed value); `>>` is arithmetic on signed types, logical on unsigned.
        BinaryOp::ShiftLeft => {
            let bits = (dtype.size_bytes() * 8) as i64;
            if (0..bits).contains(&z) {
                x.wrapping_shl(z as u32)
            } else {
                0
            }
        }
        BinaryOp::ShiftRight => {
            let bits = (dtype.size_bytes() * 8) as i64;
            let signed = matches!(dtype, DType::I8 | DType::I16 | DType::I32 | DType::I64);
            // the unsigned storage's own bits: a u8/u16/u32 value read as i64 is non-negative
            match ((0..bits).contains(&z), signed) {
                (true, true) => x >> z,
                (true, false) => ((x as u64) >> z) as i64,
                (false, true) if x < 0 => -1,
                (false, _) => 0,
            }
        }
    })
}

/// Float binary arithmetic (see the module docs), in f64; `None` for the comparisons and the
/// bool ops. Integer `mod` (fmod=0) on floats is refused by inference.
pub fn float_binary(op: BinaryOp, x: f64, z: f64) -> Option<f64> {
    Some(match op {
        BinaryOp::Add => x + z,
        BinaryOp::Sub => x - z,
        BinaryOp::Mul => x * z,
        BinaryOp::Div => x / z,
        BinaryOp::Pow => x.powf(z),
        BinaryOp::Max if x.is_nan() || z.is_nan() => f64::NAN,
        BinaryOp::Max => x.max(z),
        BinaryOp::Min if x.is_nan() || z.is_nan() => f64::NAN,
        BinaryOp::Min => x.min(z),
        // C fmod: the sign of the dividend (ONNX Mod with fmod=1).
        BinaryOp::Fmod => x % z,
        _ => return None,
    })
}

/// Float comparisons; `None` for the other ops.
pub fn float_compare(op: BinaryOp, x: f64, z: f64) -> Option<bool> {
    Some(match op {
        BinaryOp::Equal => x == z,
        BinaryOp::Less => x < z,
        BinaryOp::Greater => x > z,
        BinaryOp::GreaterOrEqual => x >= z,
        BinaryOp::LessOrEqual => x <= z,
        _ => return None,
    })
}

/// Clamps an integer into `dtype`'s range.
#[inline]
pub fn saturate_i64(x: i64, dtype: DType) -> i64 {
    let (lo, hi) = dtype.int_range().unwrap_or((i64::MIN, i64::MAX));
    x.clamp(lo, hi)
}

/// Fake quantization of one element (see "Fake quantization" above): `(q, r, c)`, the quotient,
/// the rounded code plus the zero point, and the clipped code; the result is `(c - z) * s`.
#[inline]
pub fn fake_quantize_codes(x: f32, s: f32, z: Option<f32>, lo: f32, hi: f32) -> (f32, f32, f32) {
    let q = x / s;
    let mut r = round_half_even(q);
    if let Some(z) = z {
        r += z;
    }
    let c = if r.is_nan() { r } else { r.max(lo).min(hi) };
    (q, r, c)
}

/// The gradient of one fake-quantized element with the straight-through rounding (LSQ, Esser et
/// al. 2020): whether `dy` passes to `x` (`qmin <= r <= qmax`; not for a NaN), and the factor of
/// `dy` in the scale's gradient, `(c - z) - [inside] * q` in f64.
#[inline]
pub fn fake_quantize_grad_terms(x: f32, s: f32, z: Option<f32>, lo: f32, hi: f32) -> (bool, f64) {
    let (q, r, c) = fake_quantize_codes(x, s, z, lo, hi);
    let inside = r >= lo && r <= hi;
    let code = f64::from(c) - z.map_or(0.0, f64::from);
    (inside, code - if inside { f64::from(q) } else { 0.0 })
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

/// [`quantize`] into `dtype` clamped to `lo..=hi` (a range inside `dtype`'s, of at most 2^21 in
/// magnitude, as are `zero_point`'s: an 8- or 4-bit type's), the same value for every input,
/// computed without a library rounding call so that a weight of millions of values quantizes
/// quickly: `x / scale` is clamped to ±2^22 (beyond it every code saturates anyway) and rounded
/// half to even by adding and subtracting 1.5 * 2^23, where the f32 spacing is 1 so the addition
/// itself rounds to an integer, half to even (IEEE 754 round-to-nearest-even; 1.5 * 2^23 is even).
#[inline]
pub fn quantize_clamped(x: f32, scale: f32, zero_point: i32, lo: i32, hi: i32) -> i32 {
    const LIMIT: f32 = 4_194_304.0; // 2^22
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
                                     // selects rather than early returns, so that a loop over a weight vectorizes
    let q = x / scale;
    let nan = q.is_nan();
    let r = (if nan { 0.0 } else { q.clamp(-LIMIT, LIMIT) } + MAGIC) - MAGIC;
    // SAFETY: `r` is finite and an integer of magnitude at most 2^22 (NaN was replaced by 0 and
    // the quotient clamped), so it converts exactly; the unchecked conversion is one vector
    // instruction where `as` (saturating, NaN to 0) is a branch per lane
    let ri: i32 = unsafe { r.to_int_unchecked() };
    // `quantize` gives the zero point for a NaN `x`, and saturates a NaN quotient of a number
    // (0 / 0, a NaN scale) to 0
    let code = if x.is_nan() {
        zero_point
    } else if nan {
        0
    } else {
        ri + zero_point
    };
    code.clamp(lo, hi)
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

    /// [`SOFTMAX_EXP_CUT`] is where `exp_f32` leaves the normal range: every f32 from the cut up to
    /// -80 has a normal exponential, every one below it down to -110 a subnormal or zero one (so
    /// [`softmax_exp`] is `exp_f32` with exactly its subnormal results made 0).
    #[test]
    fn the_softmax_cut_is_where_exp_turns_subnormal() {
        assert_eq!(SOFTMAX_EXP_CUT.to_bits(), 0xc2ae_ac4f);
        // negative f32s grow in magnitude with their bits
        let (cut, lo, hi) = (SOFTMAX_EXP_CUT.to_bits(), (-110f32).to_bits(), (-80f32).to_bits());
        for b in hi..=cut {
            assert!(exp_f32(f32::from_bits(b)) >= f32::MIN_POSITIVE, "{}", f32::from_bits(b));
        }
        for b in cut + 1..=lo {
            let d = f32::from_bits(b);
            assert!(exp_f32(d) < f32::MIN_POSITIVE, "{d}");
            assert_eq!(softmax_exp(d), 0.0);
        }
        assert_eq!(softmax_exp(SOFTMAX_EXP_CUT), exp_f32(SOFTMAX_EXP_CUT));
        assert_eq!(softmax_exp(f32::NEG_INFINITY), 0.0);
        assert!(softmax_exp(f32::NAN).is_nan() && flush_subnormal(f32::NAN).is_nan());
        assert_eq!(flush_subnormal(f32::MIN_POSITIVE / 2.0), 0.0);
        assert_eq!(flush_subnormal(f32::MIN_POSITIVE), f32::MIN_POSITIVE);
    }

    /// The contract's exp, sigmoid and erf within their ulp bounds of libm's f64 values on 2^20
    /// points spread over each function's working range, the subnormal results of exp and
    /// sigmoid, and the seams of erf's pieces (the bench checks every f32).
    #[test]
    fn f32_functions_are_within_their_ulp_bounds() {
        let spread =
            |lo: f32, hi: f32| (0..=1u32 << 20).map(move |i| lo + (hi - lo) * (i as f32 / (1u32 << 20) as f32));
        type Case = (&'static str, fn(f32) -> f32, fn(f64) -> f64, f64, Vec<f32>);
        let cases: [Case; 3] = [
            ("exp", exp_f32, f64::exp, EXP_ULPS, spread(-104.0, 89.0).chain(spread(-104.0, -87.0)).collect()),
            (
                "sigmoid",
                sigmoid_f32,
                |v| 1.0 / (1.0 + (-v).exp()),
                SIGMOID_ULPS,
                spread(-110.0, 40.0).chain(spread(-8.0, 8.0)).collect(),
            ),
            (
                "erf",
                erf_f32,
                crate::interp::elementwise::erf,
                ERF_ULPS,
                spread(-5.0, 5.0).chain(spread(0.9, 1.1)).chain(spread(3.9, 4.1)).collect(),
            ),
        ];
        for (name, f, truth, bound, xs) in cases {
            let (mut worst, mut at) = (0f64, 0f32);
            for x in xs {
                let e = f32_ulps(f(x), truth(f64::from(x)));
                if e > worst {
                    (worst, at) = (e, x);
                }
            }
            assert!(worst <= bound, "{name}({at:e}) is {worst:.2} ulp from libm's value, above {bound}");
        }
    }

    #[test]
    fn round_half_even_is_round_ties_even() {
        let same = |x: f32| {
            let (a, b) = (round_half_even(x), x.round_ties_even());
            assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()), "{x:e} ({:#x}): {a} vs {b}", x.to_bits());
        };
        // bit patterns across the whole range, ties, signed zeros, the edges of 2^23 and 2^24
        for bits in (0..=u32::MAX).step_by(7919) {
            same(f32::from_bits(bits));
        }
        for k in -3000..3000 {
            same(k as f32 + 0.5);
            same(k as f32 - 0.25);
            same(k as f32 * 0.1);
        }
        for e in [8_388_607.0f32, 8_388_607.5, 8_388_608.0, 8_388_609.0, 16_777_215.0, 16_777_216.0] {
            same(e);
            same(-e);
        }
        for x in [
            0.0,
            -0.0,
            0.49999997,
            -0.49999997,
            0.5,
            -0.5,
            1.5,
            -2.5,
            f32::MIN_POSITIVE,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ] {
            same(x);
        }
    }

    /// `quantize_clamped` is `quantize` then a clamp, on ties, large and tiny quotients,
    /// infinities, NaN and degenerate scales, into the 8- and 4-bit ranges.
    #[test]
    fn quantize_clamped_is_quantize_then_clamp() {
        let mut xs: Vec<f32> = vec![0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::MAX, f32::MIN];
        for k in -600..600 {
            xs.push(k as f32 * 0.5);
            xs.push(k as f32 * 0.37 + 0.001);
        }
        xs.extend([4_194_303.5, 4_194_304.5, 8_388_607.0, 8_388_609.0, 1e12, -1e12, 1e-40, -1e-40]);
        let scales = [1.0, 0.5, 0.0131, 3.7, 1e-30, 0.0, f32::INFINITY, f32::NAN];
        let ranges = [(DType::I8, -128, 127), (DType::U8, 0, 255), (DType::I8, -8, 7), (DType::U8, 0, 15)];
        for &(dt, lo, hi) in &ranges {
            for &zp in &[0, 3, -5, 128, lo, hi] {
                for &s in &scales {
                    for &x in &xs {
                        let want = (quantize(x, s, zp, dt) as i32).clamp(lo, hi);
                        assert_eq!(quantize_clamped(x, s, zp, lo, hi), want, "x {x} scale {s} zp {zp} {dt:?}");
                    }
                }
            }
        }
    }

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
