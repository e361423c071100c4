//! `exp`, `sigmoid` and `erf` on f32 rows, giving exactly the interpreter's values
//! ([`qforge_ir::interp::elementwise::unary_scalar`]: libm's f64 function rounded to f32 once)
//! in loops the compiler vectorizes.
//!
//! Each element is computed in f64 with a polynomial `exp` (Cody-Waite range reduction
//! `x = k ln 2 + r`, `|r| <= ln 2 / 2`, a degree-10 polynomial, `2^k` built in the exponent
//! bits; with AVX-512, sixteenths of `ln 2`, a degree-6 polynomial and a table of `2^(j/16)`) or, for `erf`, `x P(x^2)` with `P` of degree 16 on `|x| <= 2` and the Taylor series
//! around the centers of eighths of `[2, 4)` beyond (`±1` from 4 on; the interpreter's `erf` is
//! fdlibm's, within an f64 ulp). The polynomials are Chebyshev fits made and measured by
//! `scripts/transcendental_polys.py`: relative errors below 2^-50 in f64 Horner form, with fused
//! multiply-adds (the AVX2 and AVX-512 versions) or without (the baseline), far from f32's 2^-24
//! spacing. Two f64 values that close round to the same f32 unless an f32 rounding boundary lies
//! between them, so each result is rounded twice, from `a (1 - EPS)` and `a (1 + EPS)` with
//! `EPS` covering this error, libm's and the few f64 operations after (Ziv's rounding test):
//! where both give the same f32, that is the f32 libm's value rounds to; where they differ
//! (about one element in 2^20) or the argument is outside the polynomial's range (`|x| > 700`,
//! NaN), the element is computed again by the interpreter's own function. The
//! first pass only records whether any element needs that, so it stays a loop without calls; the
//! second runs only then.
//!
//! GELU's erf form ([`gelu`]: `((erf(x / d) + one) * x) * half`, each node rounded to f32) needs
//! `erf` only through `erf + one` rounded to f32, whose spacing is 2^-23 near 1: there the
//! rounding test is made on that sum, from `a - GELU_EPS` and `a + GELU_EPS` (both rounded to f32
//! and added to `one` as the graph does; the sum is monotone in `a`, so equal ends mean every
//! value between gives it), and a polynomial of degree 13 with an absolute error below 2^-40
//! serves where `erf` alone takes degree 16.
//!
//! Invariants: the values are [`unary_scalar`]'s bit for bit (the GELU's, its nodes'), whichever way the polynomials are
//! evaluated (checked on every f32 input by `cargo bench -p qforge-codegen --bench
//! transcendental`, about three minutes, and on 2^24 spread inputs by the unit tests, both
//! ways).

use qforge_ir::interp::elementwise::{erf, unary_scalar};
use qforge_ir::{multiversion, UnaryOp};

/// The rounding test's relative margin: the polynomials (below 2^-50), libm's `exp` (below one
/// f64 ulp, 2^-52) and the sigmoid's addition and division (two f64 roundings), with room.
const EPS: f64 = 1.0 / (1u64 << 46) as f64;

/// The GELU rounding test's absolute margin on `erf`: [`GELU_ERF_POLY`] (below 2^-40), libm's
/// `erf` (an f64 ulp) and the few f64 operations after, with room. About one element in 2^12
/// (`erf + one` near 1 has a spacing of 2^-23 or 2^-24) fails the test and is computed again.
const GELU_EPS: f64 = 1.0 / (1u64 << 36) as f64;

// The polynomials' coefficients, constant term first: `scripts/transcendental_polys.py`.
/// `erf(x) / x` in `x^2` on `|x| <= 2.0`, degree 16 (relative error 8.02e-16, 2^-50.1).
// the fit's constant term is 2/sqrt(pi) to the last bit, as it should be
#[allow(clippy::approx_constant)]
const ERF_POLY: [f64; 17] = [
    1.1283791670955126,
    -0.3761263890318329,
    0.11283791670943988,
    -0.026866170644069265,
    0.005223977620103297,
    -0.0008548326860291486,
    0.00012055329686329773,
    -1.4925603960432574e-05,
    1.6461642709130725e-06,
    -1.6362302229665498e-07,
    1.478725591131933e-08,
    -1.2205905837961665e-09,
    9.151576260509744e-11,
    -6.060071346338324e-12,
    3.3058796986101817e-13,
    -1.290558908799701e-14,
    2.619882931797671e-16,
];
/// `exp(r)` on `|r| <= ln 2 / 2`, degree 10 (relative error 4.29e-16, 2^-51.0).
const EXP_POLY: [f64; 11] = [
    1.0,
    1.0000000000000067,
    0.5000000000000006,
    0.16666666666554314,
    0.041666666666573066,
    0.008333333385699212,
    0.001388888893251478,
    0.00019841170230570286,
    2.480150431378554e-05,
    2.764019739169484e-06,
    2.7626371065696354e-07,
];

/// `exp(r)` on `|r| <= ln 2 / 32`, degree 6 (relative error 1.17e-16, 2^-52.9): the AVX-512
/// kernel's, after a reduction by sixteenths of `ln 2` and a table of `2^(j/16)`.
#[cfg(target_arch = "x86_64")]
const EXP16_POLY: [f64; 7] = [
    1.0,
    1.0000000000000022,
    0.5000000000000003,
    0.16666666662829413,
    0.04166666666187011,
    0.008333496574683201,
    0.001388909294024313,
];

/// `erf(x) / x` in `x^2` on `|x| <= 2.0` for GELU, degree 13 (absolute error 2.59e-13, 2^-41.8).
// the fit's constant term is 2/sqrt(pi) to the last bit, as it should be
#[allow(clippy::approx_constant)]
const GELU_ERF_POLY: [f64; 14] = [
    1.1283791670953467,
    -0.37612638901556467,
    0.11283791644418212,
    -0.02686616893566635,
    0.005223971860397843,
    -0.000854821011013891,
    0.00012053789448157154,
    -1.4911727778921094e-05,
    1.637378869646396e-06,
    -1.5965614414537402e-07,
    1.3506072631216452e-08,
    -9.271691916012607e-10,
    4.489274801157503e-11,
    -1.1135555084236513e-12,
];

/// `a * b + c`, fused (one rounding) when `FUSED`: the AVX2 and AVX-512 versions have the
/// instruction; the baseline would call libm's software `fma`.
#[inline(always)]
fn mul_add<const FUSED: bool>(a: f64, b: f64, c: f64) -> f64 {
    if FUSED {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `c[0] + c[1] t + ...` in Horner form.
#[inline(always)]
fn horner<const FUSED: bool, const N: usize>(c: &[f64; N], t: f64) -> f64 {
    let mut p = c[N - 1];
    let mut i = N - 1;
    while i > 0 {
        i -= 1;
        p = mul_add::<FUSED>(p, t, c[i]);
    }
    p
}

/// `exp(x)` in f64 for `|x| <= 700`, relative error below 2^-50.
#[inline(always)]
fn exp_f64<const FUSED: bool>(x: f64) -> f64 {
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    // ln 2 split so that k * LN2_HI is exact for |k| < 2^11 (Cody & Waite)
    const LN2_HI: f64 = 0.693_147_180_369_123_8;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    // 1.5 * 2^52: adding it rounds to an integer held in the low mantissa bits
    const MAGIC: f64 = 6_755_399_441_055_744.0;
    let t = x * LOG2E + MAGIC;
    let k = t - MAGIC;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = horner::<FUSED, 11>(&EXP_POLY, r);
    // 2^k: k + 2^51 sits in the low bits of t (|k| <= 1010 here)
    let kbits = t.to_bits().wrapping_sub(MAGIC.to_bits());
    let scale = f64::from_bits(kbits.wrapping_add(1023) << 52);
    p * scale
}

/// Where [`ERF_POLY`] holds: `|x| <= ERF_POLY_TO`.
const ERF_POLY_TO: f64 = 2.0;

/// `erf(x)` in f64 for `|x| <= 2`: `x P(x^2)`, `x^2` exact (an f32 squared).
#[inline(always)]
fn erf_f64<const FUSED: bool>(x: f64) -> f64 {
    x * horner::<FUSED, 17>(&ERF_POLY, x * x)
}

/// Intervals of `erf`'s middle range `[2, 4)`, each 1/8 wide (a power of two, so an index
/// masked to 4 bits is always inside the table).
const ERF_MID_STEPS: usize = 16;
/// Terms of the series around each interval's center.
const ERF_MID_TERMS: usize = 13;

/// For each middle-range interval, the Taylor coefficients of `erf` around its center `c`:
/// `erf(x) = sum_k b[k] (x - c)^k` with `b[0] = erf(c)` (the interpreter's own f64 `erf`,
/// fdlibm, within an f64 ulp) and `b[k] = 2/sqrt(pi) e^(-c^2) (-1)^(k-1) H_(k-1)(c) / k!` for
/// `k >= 1` (erf's derivatives through the Hermite polynomials, `H_n = 2c H_(n-1) - 2(n-1)
/// H_(n-2)`, Abramowitz & Stegun 7.1.19). With `|x - c| <= 1/16`, twelve powers bring the
/// relative error to about 1.3e-16 against libm over the range (ten already do; measured on
/// 10^5 points), far inside the rounding test's margin.
static ERF_MID: std::sync::LazyLock<MidTable> = std::sync::LazyLock::new(|| {
    let mut t = [[0f64; ERF_MID_TERMS]; ERF_MID_STEPS];
    for (j, b) in t.iter_mut().enumerate() {
        let c = erf_mid_center(j);
        let slope = std::f64::consts::FRAC_2_SQRT_PI * (-c * c).exp();
        b[0] = erf(c);
        let (mut h_prev, mut h_cur) = (0.0, 1.0);
        let mut fact = 1.0;
        for (k, bk) in b.iter_mut().enumerate().skip(1) {
            fact *= k as f64;
            let sign = if k % 2 == 1 { 1.0 } else { -1.0 };
            *bk = slope * sign * h_cur / fact;
            let next = 2.0 * c * h_cur - 2.0 * (k - 1) as f64 * h_prev;
            h_prev = h_cur;
            h_cur = next;
        }
    }
    t
});

/// The middle range's series, one per interval.
type MidTable = [[f64; ERF_MID_TERMS]; ERF_MID_STEPS];

/// The center of middle-range interval `j`: `2 + (j + 1/2) / 8`.
#[inline(always)]
fn erf_mid_center(j: usize) -> f64 {
    ERF_POLY_TO + (j as f64 + 0.5) * 0.125
}

/// `a` rounded to f32, and whether every value within `EPS` of `a` rounds to that same f32
/// (false when the interval holds an f32 rounding boundary).
#[inline(always)]
fn round_checked(a: f64) -> (f32, bool) {
    let lo = (a * (1.0 - EPS)) as f32;
    let hi = (a * (1.0 + EPS)) as f32;
    (lo, lo.to_bits() == hi.to_bits())
}

/// One element of `u` (`Exp`, `Sigmoid` or `Erf`) by the polynomials, and whether it is certain.
/// `erf` of `|x| >= 4` is `±1` in f32: `1 - erf(4) = erfc(4) < 1.6e-8`, below half an f32 ulp
/// under 1 (2^-25), and fdlibm's `erf` is exact to an f64 ulp there. `erf` of `2 < |x| < 4` is
/// left to [`slow_block`] (reported uncertain): its table lookups would keep this loop from
/// being vectorized.
#[inline(always)]
fn fast<const FUSED: bool>(u: UnaryOp, x: f32) -> (f32, bool) {
    let v = f64::from(x);
    if u == UnaryOp::Erf {
        let ax = v.abs();
        let (small, large) = (ax <= ERF_POLY_TO, ax >= 4.0);
        let a_small = erf_f64::<FUSED>(if small { v } else { 0.0 });
        let a = if small { a_small } else { 1f64.copysign(v) };
        let (y, sure) = round_checked(a);
        // NaN is in neither range
        return (y, sure && (small || large));
    }
    let in_range = v.abs() <= 700.0;
    // Beyond ±700 (infinities included) the f64 exponential is below 1e-304 or above 1e304:
    // exp rounds to 0 or infinity in f32, the sigmoid to 0 or 1. Masked attention logits
    // (-3.4e38 added) land here, so these are answered without the interpreter's function;
    // only NaN stays uncertain.
    let (below, above) = (v < -700.0, v > 700.0);
    let high = if u == UnaryOp::Exp { f32::INFINITY } else { 1.0 };
    let outside = if above { high } else { 0.0 };
    let v = if in_range { v } else { 0.0 };
    let a = match u {
        UnaryOp::Exp => exp_f64::<FUSED>(v),
        _ => 1.0 / (1.0 + exp_f64::<FUSED>(-v)),
    };
    let (y, sure) = round_checked(a);
    if in_range {
        (y, sure)
    } else {
        (outside, below || above)
    }
}

/// `erf` of eight values of the middle range `2 <= |x| < 4` (signs kept): each by the series of
/// its interval ([`ERF_MID`]) in Horner form, the eight chains side by side.
#[inline(always)]
fn erf_mid_lanes(x: &[f64; 8], t: &MidTable) -> [f64; 8] {
    let mut j = [0usize; 8];
    let mut h = [0f64; 8];
    for l in 0..8 {
        let ax = x[l].abs();
        j[l] = (((ax - ERF_POLY_TO) * 8.0) as i32).clamp(0, ERF_MID_STEPS as i32 - 1) as usize & (ERF_MID_STEPS - 1);
        h[l] = ax - erf_mid_center(j[l]);
    }
    let mut p = [0f64; 8];
    for l in 0..8 {
        p[l] = t[j[l]][ERF_MID_TERMS - 1];
    }
    for k in (0..ERF_MID_TERMS - 1).rev() {
        for l in 0..8 {
            p[l] = p[l] * h[l] + t[j[l]][k];
        }
    }
    for l in 0..8 {
        p[l] = p[l].copysign(x[l]);
    }
    p
}

/// The elements [`fast`] left uncertain (`flags`) of a block: `erf` of `2 < |x| < 4` by the
/// middle range's series, eight at a time, where the rounding test passes; everything else by
/// the interpreter's own function.
#[inline(always)]
fn slow_block(u: UnaryOp, x: &[f32], y: &mut [f32], flags: &[bool], mid: &MidTable) {
    let mut idx = [0usize; 8];
    let mut vals = [2f64; 8];
    let mut n = 0;
    let flush = |idx: &[usize; 8], vals: &[f64; 8], n: usize, y: &mut [f32]| {
        let a = erf_mid_lanes(vals, mid);
        for l in 0..n {
            let (r, sure) = round_checked(a[l]);
            y[idx[l]] = if sure { r } else { unary_scalar(u, x[idx[l]]) };
        }
    };
    for (i, (&xv, &f)) in x.iter().zip(flags).enumerate() {
        if !f {
            continue;
        }
        let ax = f64::from(xv).abs();
        if u == UnaryOp::Erf && ax > ERF_POLY_TO && ax < 4.0 {
            idx[n] = i;
            vals[n] = f64::from(xv);
            n += 1;
            if n == 8 {
                flush(&idx, &vals, n, y);
                n = 0;
            }
        } else {
            y[i] = unary_scalar(u, xv);
        }
    }
    if n > 0 {
        flush(&idx, &vals, n, y);
    }
}

/// Whether [`map`] computes `u` (the others are [`unary_scalar`]'s loop).
pub fn supported(u: UnaryOp) -> bool {
    matches!(u, UnaryOp::Exp | UnaryOp::Sigmoid | UnaryOp::Erf)
}

/// `y[i] = unary_scalar(u, x[i])` for `u` [`supported`], bit for bit (see the module
/// documentation): [`map_with`], the polynomials by fused multiply-adds where the CPU has them.
pub fn map(u: UnaryOp, x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if matches!(u, UnaryOp::Exp | UnaryOp::Sigmoid) && x86::available() {
        // SAFETY: `available` checked the CPU's features.
        return unsafe { x86::map512(u, x, y) };
    }
    #[cfg(target_arch = "x86_64")]
    let fused = std::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    let fused = false;
    map_with(u, x, y, fused)
}

multiversion! {
    baseline = map_with_baseline;
    /// [`map`] with the polynomials evaluated by fused multiply-adds (`fused`) or by a multiply
    /// and an add (the same values: see the module documentation); compiled for AVX-512 and
    /// AVX2 as well, eight and four f64 lanes.
    pub fn map_with(u: UnaryOp, x: &[f32], y: &mut [f32], fused: bool) -> () {
        /// Elements per block: the uncertain ones are flagged in a buffer of this size.
        const BLOCK: usize = 256;
        #[inline(always)]
        fn pass<const KIND: u8, const FUSED: bool>(
            x: &[f32],
            y: &mut [f32],
            uncertain: &mut [bool; BLOCK],
        ) -> bool {
            let u = match KIND {
                0 => UnaryOp::Exp,
                1 => UnaryOp::Sigmoid,
                _ => UnaryOp::Erf,
            };
            let mut all = true;
            for ((yv, &xv), f) in y.iter_mut().zip(x).zip(uncertain.iter_mut()) {
                let (r, sure) = fast::<FUSED>(u, xv);
                *yv = r;
                *f = !sure;
                all &= sure;
            }
            all
        }
        let mid: &MidTable = &ERF_MID;
        let mut uncertain = [false; BLOCK];
        for (xb, yb) in x.chunks(BLOCK).zip(y.chunks_mut(BLOCK)) {
            let all = match (u, fused) {
                (UnaryOp::Exp, true) => pass::<0, true>(xb, yb, &mut uncertain),
                (UnaryOp::Exp, false) => pass::<0, false>(xb, yb, &mut uncertain),
                (UnaryOp::Sigmoid, true) => pass::<1, true>(xb, yb, &mut uncertain),
                (UnaryOp::Sigmoid, false) => pass::<1, false>(xb, yb, &mut uncertain),
                (_, true) => pass::<2, true>(xb, yb, &mut uncertain),
                (_, false) => pass::<2, false>(xb, yb, &mut uncertain),
            };
            if !all {
                slow_block(u, xb, yb, &uncertain[..xb.len()], mid);
            }
        }
    }
}

/// `exp` and `sigmoid` with AVX-512: sixteen f32 elements a step as two vectors of eight f64,
/// `exp` reduced by sixteenths of `ln 2` instead of whole ones (`x = (16m + j) ln 2 / 16 + r`,
/// `|r| <= ln 2 / 32`), so that [`EXP16_POLY`] of degree 6 replaces [`EXP_POLY`]'s 10, times
/// `2^(j/16)` from a 16-entry table (one `vpermt2pd`) and scaled by `2^m` (`vscalefpd`). Its
/// error (the polynomial's 2^-52.9, the table's and the few roundings, each below 2^-52) is
/// inside the same rounding test's margin, and the same elements go to [`slow_block`].
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{slow_block, EPS, ERF_MID, EXP16_POLY};
    use qforge_ir::UnaryOp;
    use std::arch::x86_64::*;

    /// Whether the CPU has what [`map512`] is compiled for.
    pub fn available() -> bool {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
    }

    /// `2^(j/16)` for `j < 16`, each rounded to f64 (within an f64 ulp).
    static EXP2_SIXTEENTHS: std::sync::LazyLock<[f64; 16]> =
        std::sync::LazyLock::new(|| std::array::from_fn(|j| (j as f64 / 16.0).exp2()));

    /// `exp(v)` for `|v| <= 700` (see the module's `x86` documentation).
    #[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl")]
    #[inline]
    fn exp8(v: __m512d, t0: __m512d, t1: __m512d) -> __m512d {
        // 16 / ln 2; ln 2 / 16 split so that k * LN2_16_HI is exact for |k| < 2^22 (fdlibm's
        // ln2_hi, 31 significant bits, over 16); 1.5 * 2^52 rounds to an integer in the low bits
        const INV: f64 = 16.0 * std::f64::consts::LOG2_E;
        const LN2_16_HI: f64 = 0.693_147_180_369_123_8 / 16.0;
        const LN2_16_LO: f64 = 1.908_214_929_270_587_7e-10 / 16.0;
        const MAGIC: f64 = 6_755_399_441_055_744.0;
        let t = _mm512_fmadd_pd(v, _mm512_set1_pd(INV), _mm512_set1_pd(MAGIC));
        let k = _mm512_sub_pd(t, _mm512_set1_pd(MAGIC));
        let r = _mm512_fnmadd_pd(k, _mm512_set1_pd(LN2_16_HI), v);
        let r = _mm512_fnmadd_pd(k, _mm512_set1_pd(LN2_16_LO), r);
        let mut p = _mm512_set1_pd(EXP16_POLY[6]);
        for &c in EXP16_POLY[..6].iter().rev() {
            p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(c));
        }
        // j = k mod 16 is in the low four bits of t (two's complement), the table index
        let tj = _mm512_permutex2var_pd(t0, _mm512_castpd_si512(t), t1);
        // times 2^floor(k / 16)
        _mm512_scalef_pd(_mm512_mul_pd(p, tj), _mm512_mul_pd(k, _mm512_set1_pd(1.0 / 16.0)))
    }

    /// `fast` of sixteen elements (`live` of them read and written): the results into `y`,
    /// the uncertain ones flagged in `flags`; returns the lanes left certain.
    ///
    /// # Safety
    /// `x`, `y` and `flags` have the `live` elements the mask `live` names.
    #[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl")]
    #[inline]
    unsafe fn step16(
        sigmoid: bool,
        x: *const f32,
        y: *mut f32,
        flags: *mut bool,
        live: __mmask16,
        t0: __m512d,
        t1: __m512d,
    ) -> __mmask16 {
        // SAFETY: the caller's contract; the loads and stores are masked by `live`.
        unsafe {
            let xv = _mm512_maskz_loadu_ps(live, x);
            let in_range = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(_mm512_abs_ps(xv), _mm512_set1_ps(700.0));
            let below = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(xv, _mm512_set1_ps(-700.0));
            let above = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(xv, _mm512_set1_ps(700.0));
            // beyond ±700 exp is 0 or infinity in f32 and the sigmoid 0 or 1; NaN stays open
            let high = _mm512_set1_ps(if sigmoid { 1.0 } else { f32::INFINITY });
            let outside = _mm512_maskz_mov_ps(above, high);
            let mut v = _mm512_maskz_mov_ps(in_range, xv);
            if sigmoid {
                v = _mm512_xor_ps(v, _mm512_set1_ps(-0.0));
            }
            let (lo_eps, hi_eps) = (_mm512_set1_pd(1.0 - EPS), _mm512_set1_pd(1.0 + EPS));
            let one = _mm512_set1_pd(1.0);
            let mut lo = _mm512_setzero_ps();
            let mut hi = _mm512_setzero_ps();
            for h in 0..2 {
                let half = if h == 0 { _mm512_castps512_ps256(v) } else { _mm512_extractf32x8_ps::<1>(v) };
                let e = exp8(_mm512_cvtps_pd(half), t0, t1);
                let a = if sigmoid { _mm512_div_pd(one, _mm512_add_pd(one, e)) } else { e };
                let l = _mm512_cvtpd_ps(_mm512_mul_pd(a, lo_eps));
                let u = _mm512_cvtpd_ps(_mm512_mul_pd(a, hi_eps));
                if h == 0 {
                    lo = _mm512_castps256_ps512(l);
                    hi = _mm512_castps256_ps512(u);
                } else {
                    lo = _mm512_insertf32x8::<1>(lo, l);
                    hi = _mm512_insertf32x8::<1>(hi, u);
                }
            }
            let same = _mm512_cmpeq_epi32_mask(_mm512_castps_si512(lo), _mm512_castps_si512(hi));
            let res = _mm512_mask_blend_ps(in_range, outside, lo);
            let sure = (in_range & same) | below | above;
            _mm512_mask_storeu_ps(y, live, res);
            // a bool is the byte 0 or 1
            _mm_mask_storeu_epi8(flags.cast(), live, _mm_maskz_mov_epi8(!sure, _mm_set1_epi8(1)));
            sure
        }
    }

    /// [`super::map`] of `Exp` or `Sigmoid`: blocks of 256 elements by [`step16`], then the
    /// uncertain ones of a block by [`slow_block`].
    ///
    /// # Safety
    /// The CPU has the features [`available`] checks.
    #[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl")]
    pub unsafe fn map512(u: UnaryOp, x: &[f32], y: &mut [f32]) {
        const BLOCK: usize = 256;
        let sigmoid = u == UnaryOp::Sigmoid;
        let table = &*EXP2_SIXTEENTHS;
        // SAFETY: 16 f64 in two loads of 8.
        let (t0, t1) = unsafe { (_mm512_loadu_pd(table.as_ptr()), _mm512_loadu_pd(table.as_ptr().add(8))) };
        let mut flags = [false; BLOCK];
        for (xb, yb) in x.chunks(BLOCK).zip(y.chunks_mut(BLOCK)) {
            let n = xb.len().min(yb.len());
            let mut all = true;
            let mut i = 0;
            while i < n {
                let live: __mmask16 = if n - i >= 16 { 0xffff } else { (1u16 << (n - i)) - 1 };
                // SAFETY: `live` names elements `i..min(i + 16, n)` of the block's slices and
                // of `flags` (n <= BLOCK).
                let sure = unsafe {
                    step16(sigmoid, xb.as_ptr().add(i), yb.as_mut_ptr().add(i), flags.as_mut_ptr().add(i), live, t0, t1)
                };
                all &= sure & live == live;
                i += 16;
            }
            if !all {
                slow_block(u, &xb[..n], &mut yb[..n], &flags[..n], &ERF_MID);
            }
        }
    }
}

/// The constants of GELU's erf form: `((erf(x / div) + one) * x) * half`.
#[derive(Clone, Copy, Debug)]
pub struct Gelu {
    pub div: f32,
    pub one: f32,
    pub half: f32,
}

impl Gelu {
    /// The composition as the interpreter computes it, node by node.
    pub fn exact(&self, x: f32) -> f32 {
        ((unary_scalar(UnaryOp::Erf, x / self.div) + self.one) * x) * self.half
    }

    /// The composition from `erf`'s value `a` (f64, within [`GELU_EPS`]), and whether it is
    /// certain: `erf + one` the same from both ends of the margin.
    #[inline(always)]
    fn with_erf(&self, x: f32, a: f64) -> (f32, bool) {
        let lo = (a - GELU_EPS) as f32 + self.one;
        let hi = (a + GELU_EPS) as f32 + self.one;
        ((hi * x) * self.half, lo.to_bits() == hi.to_bits())
    }

    /// One element `x` by the polynomial from `t = x / div`, and whether it is certain. `erf`
    /// of `|t| >= 4` is `±1` (see [`fast`]); `2 < |t| < 4` and NaN are left uncertain.
    #[inline(always)]
    fn fast<const FUSED: bool>(&self, x: f32, t: f32) -> (f32, bool) {
        let v = f64::from(t);
        let ax = v.abs();
        let (small, large) = (ax <= ERF_POLY_TO, ax >= 4.0);
        let w = if small { v } else { 0.0 };
        let a = if small { w * horner::<FUSED, 14>(&GELU_ERF_POLY, w * w) } else { 1f64.copysign(v) };
        let (y, sure) = self.with_erf(x, a);
        (y, sure && (small || large))
    }
}

/// [`Gelu::exact`] of every `x` into `y`, bit for bit, by the polynomial and the rounding test
/// on `erf + one` (see the module documentation); the polynomial by fused multiply-adds where
/// the CPU has them.
pub fn gelu(x: &[f32], y: &mut [f32], k: &Gelu) {
    #[cfg(target_arch = "x86_64")]
    let fused = std::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    let fused = false;
    gelu_with(x, y, k, fused)
}

multiversion! {
    baseline = gelu_with_baseline;
    /// [`gelu`] with the polynomial evaluated by fused multiply-adds (`fused`) or by a multiply
    /// and an add (the same values); compiled for AVX-512 and AVX2 as well. The uncertain
    /// elements of each block of 256: `2 < |x / div| < 4` by the middle range's series
    /// ([`ERF_MID`]) eight at a time where the test passes, the rest by [`Gelu::exact`].
    pub fn gelu_with(x: &[f32], y: &mut [f32], k: &Gelu, fused: bool) -> () {
        const BLOCK: usize = 256;
        #[inline(always)]
        fn pass<const FUSED: bool>(x: &[f32], y: &mut [f32], k: &Gelu, uncertain: &mut [bool; BLOCK]) -> bool {
            let mut all = true;
            for ((yv, &xv), f) in y.iter_mut().zip(x).zip(uncertain.iter_mut()) {
                let (r, sure) = k.fast::<FUSED>(xv, xv / k.div);
                *yv = r;
                *f = !sure;
                all &= sure;
            }
            all
        }
        let mid: &MidTable = &ERF_MID;
        let mut uncertain = [false; BLOCK];
        for (xb, yb) in x.chunks(BLOCK).zip(y.chunks_mut(BLOCK)) {
            let all = if fused { pass::<true>(xb, yb, k, &mut uncertain) } else { pass::<false>(xb, yb, k, &mut uncertain) };
            if all {
                continue;
            }
            let (mut idx, mut vals, mut n) = ([0usize; 8], [2f64; 8], 0);
            let flush = |idx: &[usize; 8], vals: &[f64; 8], n: usize, y: &mut [f32]| {
                let a = erf_mid_lanes(vals, mid);
                for l in 0..n {
                    let xv = xb[idx[l]];
                    let (r, sure) = k.with_erf(xv, a[l]);
                    y[idx[l]] = if sure { r } else { k.exact(xv) };
                }
            };
            for (i, (&xv, &f)) in xb.iter().zip(&uncertain[..xb.len()]).enumerate() {
                if !f {
                    continue;
                }
                let t = f64::from(xv / k.div);
                if t.abs() > ERF_POLY_TO && t.abs() < 4.0 {
                    idx[n] = i;
                    vals[n] = t;
                    n += 1;
                    if n == 8 {
                        flush(&idx, &vals, n, yb);
                        n = 0;
                    }
                } else {
                    yb[i] = k.exact(xv);
                }
            }
            if n > 0 {
                flush(&idx, &vals, n, yb);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `map` and both compilations of both polynomial evaluations against the interpreter.
    fn check(u: UnaryOp, xs: &[f32]) {
        let mut y = vec![0f32; xs.len()];
        type Way<'a> = (&'a str, &'a dyn Fn(&mut [f32]));
        let ways: [Way; 5] = [
            ("map", &|y| map(u, xs, y)),
            ("the dispatched version, fused", &|y| map_with(u, xs, y, true)),
            ("the dispatched version, unfused", &|y| map_with(u, xs, y, false)),
            ("the baseline, fused", &|y| map_with_baseline(u, xs, y, true)),
            ("the baseline, unfused", &|y| map_with_baseline(u, xs, y, false)),
        ];
        for (way, run) in ways {
            run(&mut y);
            for (&x, &got) in xs.iter().zip(&y) {
                let want = unary_scalar(u, x);
                assert!(
                    got.to_bits() == want.to_bits(),
                    "{u:?}({x:e} = {:#x}) by {way}: {got:e}, the interpreter's {want:e}",
                    x.to_bits()
                );
            }
        }
    }

    /// 2^24 inputs spread over every exponent and sign (every 256th bit pattern), the special
    /// values, and the edges of the polynomial's range and of f32's.
    #[test]
    fn matches_the_interpreter_bit_for_bit() {
        let mut xs: Vec<f32> =
            (0..1u32 << 24).map(|i| f32::from_bits(i.wrapping_mul(256).wrapping_add(i % 251))).collect();
        xs.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MIN_POSITIVE,
            700.0,
            -700.0,
            700.1,
            -700.1,
            f32::MAX,
            f32::MIN,
        ]);
        xs.extend([88.72283, 88.72284, -87.33655, -103.97208, -103.97209, 16.635532, -16.635532]);
        xs.extend([1.0, -1.0, 1.0000001, -1.0000001, 0.99999994, 1e-30, -1e-30, 1e-45]);
        // erf's ranges, densely: 2^20 values in [-2.5, 2.5] and 2^20 in [-4.5, 4.5]; the
        // edges of the polynomial's range and of the middle range's intervals
        xs.extend((0..1u32 << 20).map(|i| (i as f32 / (1u32 << 19) as f32 - 1.0) * 2.5));
        xs.extend((0..1u32 << 20).map(|i| (i as f32 / (1u32 << 19) as f32 - 1.0) * 4.5));
        for j in 0..=ERF_MID_STEPS {
            let edge = ERF_POLY_TO as f32 + j as f32 * 0.125;
            xs.extend([edge, -edge, f32::from_bits(edge.to_bits() - 1), f32::from_bits(edge.to_bits() + 1)]);
        }
        for u in [UnaryOp::Exp, UnaryOp::Sigmoid, UnaryOp::Erf] {
            check(u, &xs);
        }
        // GELU (its argument divided by sqrt 2 first: the spread inputs, and GELU's own ranges
        // densely) in both compilations, both ways
        xs.extend((0..1u32 << 20).map(|i| (i as f32 / (1u32 << 19) as f32 - 1.0) * 6.5));
        let k = Gelu { div: std::f32::consts::SQRT_2, one: 1.0, half: 0.5 };
        let mut y = vec![0f32; xs.len()];
        for (way, fused) in [("fused", true), ("unfused", false)] {
            for base in [false, true] {
                if base {
                    gelu_with_baseline(&xs, &mut y, &k, fused);
                } else {
                    gelu_with(&xs, &mut y, &k, fused);
                }
                for (&x, &got) in xs.iter().zip(&y) {
                    let want = k.exact(x);
                    assert!(
                        got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                        "Gelu({x:e} = {:#x}), {way}, baseline {base}: {got:e}, the nodes' {want:e}",
                        x.to_bits()
                    );
                }
            }
        }
    }
}
