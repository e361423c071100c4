//! `exp`, `sigmoid` and `erf` on f32 rows, giving exactly the interpreter's values
//! ([`qforge_ir::interp::elementwise::unary_scalar`]: libm's f64 function rounded to f32 once)
//! in loops the compiler vectorizes.
//!
//! Each element is computed in f64 with a polynomial `exp` (Cody-Waite range reduction
//! `x = k ln 2 + r`, `|r| <= ln 2 / 2`, Taylor polynomial of degree 12, `2^k` built in the
//! exponent bits) or, for `erf` on `|x| <= 1`, erf's Taylor series (the interpreter's `erf` is
//! fdlibm's, within an f64 ulp), whose relative errors are below 2^-50, far from f32's 2^-24
//! spacing. Two f64 values that close round to the same f32 unless an f32 rounding boundary lies
//! between them, so each result is rounded twice, from `a (1 - EPS)` and `a (1 + EPS)` with
//! `EPS` covering this error, libm's and the few f64 operations after (Ziv's rounding test):
//! where both give the same f32, that is the f32 libm's value rounds to; where they differ
//! (about one element in 2^20) or the argument is outside the polynomial's range (`|x| > 700`,
//! `|x| > 1` for erf, NaN), the element is computed again by the interpreter's own function. The
//! first pass only records whether any element needs that, so it stays a loop without calls; the
//! second runs only then.
//!
//! Invariants: the values are [`unary_scalar`]'s bit for bit (checked on every f32 input by
//! `cargo bench -p qforge-codegen --bench transcendental`, about thirteen minutes, and on 2^24
//! spread inputs by the unit tests).

use qforge_ir::interp::elementwise::unary_scalar;
use qforge_ir::{multiversion, UnaryOp};

/// The rounding test's relative margin: the polynomial (below 2^-50), libm's `exp` (below one
/// f64 ulp, 2^-52) and the sigmoid's addition and division (two f64 roundings), with room.
const EPS: f64 = 1.0 / (1u64 << 46) as f64;

/// `exp(x)` in f64 for `|x| <= 700`, relative error below 2^-50.
#[inline(always)]
fn exp_f64(x: f64) -> f64 {
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    // ln 2 split so that k * LN2_HI is exact for |k| < 2^11 (Cody & Waite)
    const LN2_HI: f64 = 0.693_147_180_369_123_8;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    // 1.5 * 2^52: adding it rounds to an integer held in the low mantissa bits
    const MAGIC: f64 = 6_755_399_441_055_744.0;
    let t = x * LOG2E + MAGIC;
    let k = t - MAGIC;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    // Taylor coefficients 1/n!, Horner from degree 12: |r| <= 0.347, the first omitted term
    // 0.347^13 / 13! < 2^-52
    let mut p = 1.0 / 479_001_600.0;
    for c in [
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * r + c;
    }
    // 2^k: k + 2^51 sits in the low bits of t (|k| <= 1010 here)
    let kbits = t.to_bits().wrapping_sub(MAGIC.to_bits());
    let scale = f64::from_bits(kbits.wrapping_add(1023) << 52);
    p * scale
}

/// The Taylor coefficients of `erf(x) / (2/sqrt(pi) x)` in `x^2`: `(-1)^n / (n! (2n + 1))`.
const ERF_TERMS: usize = 18;
const ERF_COEFFS: [f64; ERF_TERMS] = {
    let mut c = [0f64; ERF_TERMS];
    let mut fact = 1f64;
    let mut n = 0;
    while n < ERF_TERMS {
        if n > 0 {
            fact *= n as f64;
        }
        let sign = if n % 2 == 0 { 1.0 } else { -1.0 };
        c[n] = sign / (fact * (2 * n + 1) as f64);
        n += 1;
    }
    c
};

/// `erf(x)` in f64 for `|x| <= 1` by its Taylor series (18 terms: the first omitted one is below
/// 2^-53 of the result; the terms fall fast enough that Horner's sums do not cancel).
#[inline(always)]
fn erf_f64(x: f64) -> f64 {
    let y = x * x;
    let mut p = ERF_COEFFS[ERF_TERMS - 1];
    let mut i = ERF_TERMS - 1;
    while i > 0 {
        i -= 1;
        p = p * y + ERF_COEFFS[i];
    }
    std::f64::consts::FRAC_2_SQRT_PI * x * p
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
#[inline(always)]
fn fast(u: UnaryOp, x: f32) -> (f32, bool) {
    let v = f64::from(x);
    let limit = if u == UnaryOp::Erf { 1.0 } else { 700.0 };
    let in_range = v.abs() <= limit;
    let v = if in_range { v } else { 0.0 };
    let a = match u {
        UnaryOp::Exp => exp_f64(v),
        UnaryOp::Erf => erf_f64(v),
        _ => 1.0 / (1.0 + exp_f64(-v)),
    };
    let (y, sure) = round_checked(a);
    (y, sure && in_range)
}

/// Whether [`map`] computes `u` (the others are [`unary_scalar`]'s loop).
pub fn supported(u: UnaryOp) -> bool {
    matches!(u, UnaryOp::Exp | UnaryOp::Sigmoid | UnaryOp::Erf)
}

multiversion! {
    baseline = map_baseline;
    /// `y[i] = unary_scalar(u, x[i])` for `u` [`supported`], bit for bit (see the module
    /// documentation); compiled for AVX-512 and AVX2 as well, eight and four f64 lanes.
    pub fn map(u: UnaryOp, x: &[f32], y: &mut [f32]) -> () {
        #[inline(always)]
        fn pass<const KIND: u8>(x: &[f32], y: &mut [f32]) -> bool {
            let u = match KIND {
                0 => UnaryOp::Exp,
                1 => UnaryOp::Sigmoid,
                _ => UnaryOp::Erf,
            };
            let mut all = true;
            for (yv, &xv) in y.iter_mut().zip(x) {
                let (r, sure) = fast(u, xv);
                *yv = r;
                all &= sure;
            }
            all
        }
        let all = match u {
            UnaryOp::Exp => pass::<0>(x, y),
            UnaryOp::Sigmoid => pass::<1>(x, y),
            _ => pass::<2>(x, y),
        };
        if !all {
            for (yv, &xv) in y.iter_mut().zip(x) {
                if !fast(u, xv).1 {
                    *yv = unary_scalar(u, xv);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(u: UnaryOp, xs: &[f32]) {
        let mut y = vec![0f32; xs.len()];
        map(u, xs, &mut y);
        let mut base = vec![0f32; xs.len()];
        map_baseline(u, xs, &mut base);
        for (&x, &got) in xs.iter().zip(&y) {
            let want = unary_scalar(u, x);
            assert!(
                got.to_bits() == want.to_bits(),
                "{u:?}({x:e} = {:#x}): {got:e}, the interpreter's {want:e}",
                x.to_bits()
            );
        }
        // the run-time choice (AVX-512 or AVX2 where the CPU has them) against the baseline
        // compilation
        for ((&x, &got), &b) in xs.iter().zip(&y).zip(&base) {
            assert_eq!(got.to_bits(), b.to_bits(), "{u:?}({x:e}): the dispatched version against the baseline");
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
        ]);
        xs.extend([88.72283, 88.72284, -87.33655, -103.97208, -103.97209, 16.635532, -16.635532]);
        xs.extend([1.0, -1.0, 1.0000001, -1.0000001, 0.99999994, 1e-30, -1e-30, 1e-45]);
        // erf's range, densely: 2^20 values in [-1.25, 1.25]
        xs.extend((0..1u32 << 20).map(|i| (i as f32 / (1u32 << 19) as f32 - 1.0) * 1.25));
        for u in [UnaryOp::Exp, UnaryOp::Sigmoid, UnaryOp::Erf] {
            check(u, &xs);
        }
    }
}
