//! `exp`, `sigmoid` and `erf` on f32 rows, giving exactly the interpreter's values
//! ([`qforge_ir::interp::elementwise::unary_scalar`]: libm's f64 function rounded to f32 once)
//! in loops the compiler vectorizes.
//!
//! Each element is computed in f64 with a polynomial `exp` (Cody-Waite range reduction
//! `x = k ln 2 + r`, `|r| <= ln 2 / 2`, Taylor polynomial of degree 12, `2^k` built in the
//! exponent bits) or, for `erf`, its Taylor series at 0 on `|x| <= 1` and around the centers of
//! eighths of `[1, 4)` beyond (`±1` from 4 on; the interpreter's `erf` is fdlibm's, within an
//! f64 ulp), whose relative errors are below 2^-50, far from f32's 2^-24
//! spacing. Two f64 values that close round to the same f32 unless an f32 rounding boundary lies
//! between them, so each result is rounded twice, from `a (1 - EPS)` and `a (1 + EPS)` with
//! `EPS` covering this error, libm's and the few f64 operations after (Ziv's rounding test):
//! where both give the same f32, that is the f32 libm's value rounds to; where they differ
//! (about one element in 2^20) or the argument is outside the polynomial's range (`|x| > 700`,
//! NaN), the element is computed again by the interpreter's own function. The
//! first pass only records whether any element needs that, so it stays a loop without calls; the
//! second runs only then.
//!
//! Invariants: the values are [`unary_scalar`]'s bit for bit (checked on every f32 input by
//! `cargo bench -p qforge-codegen --bench transcendental`, about three minutes, and on 2^24
//! spread inputs by the unit tests).

use qforge_ir::interp::elementwise::{erf, unary_scalar};
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

/// Intervals of `erf`'s middle range `[1, 4)`, each 1/8 wide (the table holds 32, so an index
/// masked to 5 bits is always inside it).
const ERF_MID_STEPS: usize = 24;
/// Terms of the series around each interval's center.
const ERF_MID_TERMS: usize = 13;

/// For each middle-range interval, the Taylor coefficients of `erf` around its center `c`:
/// `erf(x) = sum_k b[k] (x - c)^k` with `b[0] = erf(c)` (the interpreter's own f64 `erf`,
/// fdlibm, within an f64 ulp) and `b[k] = 2/sqrt(pi) e^(-c^2) (-1)^(k-1) H_(k-1)(c) / k!` for
/// `k >= 1` (erf's derivatives through the Hermite polynomials, `H_n = 2c H_(n-1) - 2(n-1)
/// H_(n-2)`, Abramowitz & Stegun 7.1.19). With `|x - c| <= 1/16`, twelve powers bring the
/// relative error to about 1.3e-16 against libm over the range (ten already do; measured on
/// 10^5 points), far inside the rounding test's margin.
static ERF_MID: std::sync::LazyLock<[[f64; ERF_MID_TERMS]; 32]> = std::sync::LazyLock::new(|| {
    let mut t = [[0f64; ERF_MID_TERMS]; 32];
    for (j, b) in t.iter_mut().enumerate().take(ERF_MID_STEPS) {
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

/// The center of middle-range interval `j`: `1 + (j + 1/2) / 8`.
#[inline(always)]
fn erf_mid_center(j: usize) -> f64 {
    1.0 + (j as f64 + 0.5) * 0.125
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
/// under 1 (2^-25), and fdlibm's `erf` is exact to an f64 ulp there. `erf` of `1 < |x| < 4` is
/// left to [`slow_block`] (reported uncertain): its table lookups would keep this loop from
/// being vectorized.
#[inline(always)]
fn fast(u: UnaryOp, x: f32) -> (f32, bool) {
    let v = f64::from(x);
    if u == UnaryOp::Erf {
        let ax = v.abs();
        let (small, large) = (ax <= 1.0, ax >= 4.0);
        let a_small = erf_f64(if small { v } else { 0.0 });
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
        UnaryOp::Exp => exp_f64(v),
        _ => 1.0 / (1.0 + exp_f64(-v)),
    };
    let (y, sure) = round_checked(a);
    if in_range {
        (y, sure)
    } else {
        (outside, below || above)
    }
}

/// `erf` of eight values of the middle range `1 <= |x| < 4` (signs kept): each by the series of
/// its interval ([`ERF_MID`]) in Horner form, the eight chains side by side.
#[inline(always)]
fn erf_mid_lanes(x: &[f64; 8], t: &[[f64; ERF_MID_TERMS]; 32]) -> [f64; 8] {
    let mut j = [0usize; 8];
    let mut h = [0f64; 8];
    for l in 0..8 {
        let ax = x[l].abs();
        j[l] = (((ax - 1.0) * 8.0) as i32).clamp(0, ERF_MID_STEPS as i32 - 1) as usize & 31;
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

/// The elements [`fast`] left uncertain (`flags`) of a block: `erf` of `1 < |x| < 4` by the
/// middle range's series, eight at a time, where the rounding test passes; everything else by
/// the interpreter's own function.
#[inline(always)]
fn slow_block(u: UnaryOp, x: &[f32], y: &mut [f32], flags: &[bool], mid: &[[f64; ERF_MID_TERMS]; 32]) {
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
        if u == UnaryOp::Erf && ax > 1.0 && ax < 4.0 {
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

multiversion! {
    baseline = map_baseline;
    /// `y[i] = unary_scalar(u, x[i])` for `u` [`supported`], bit for bit (see the module
    /// documentation); compiled for AVX-512 and AVX2 as well, eight and four f64 lanes.
    pub fn map(u: UnaryOp, x: &[f32], y: &mut [f32]) -> () {
        /// Elements per block: the uncertain ones are flagged in a buffer of this size.
        const BLOCK: usize = 256;
        #[inline(always)]
        fn pass<const KIND: u8>(x: &[f32], y: &mut [f32], uncertain: &mut [bool; BLOCK]) -> bool {
            let u = match KIND {
                0 => UnaryOp::Exp,
                1 => UnaryOp::Sigmoid,
                _ => UnaryOp::Erf,
            };
            let mut all = true;
            for ((yv, &xv), f) in y.iter_mut().zip(x).zip(uncertain.iter_mut()) {
                let (r, sure) = fast(u, xv);
                *yv = r;
                *f = !sure;
                all &= sure;
            }
            all
        }
        let mid: &[[f64; ERF_MID_TERMS]; 32] = &ERF_MID;
        let mut uncertain = [false; BLOCK];
        for (xb, yb) in x.chunks(BLOCK).zip(y.chunks_mut(BLOCK)) {
            let all = match u {
                UnaryOp::Exp => pass::<0>(xb, yb, &mut uncertain),
                UnaryOp::Sigmoid => pass::<1>(xb, yb, &mut uncertain),
                _ => pass::<2>(xb, yb, &mut uncertain),
            };
            if !all {
                slow_block(u, xb, yb, &uncertain[..xb.len()], mid);
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
            f32::MAX,
            f32::MIN,
        ]);
        xs.extend([88.72283, 88.72284, -87.33655, -103.97208, -103.97209, 16.635532, -16.635532]);
        xs.extend([1.0, -1.0, 1.0000001, -1.0000001, 0.99999994, 1e-30, -1e-30, 1e-45]);
        // erf's ranges, densely: 2^20 values in [-1.25, 1.25] and 2^20 in [-4.5, 4.5]; the
        // edges of the middle range's intervals
        xs.extend((0..1u32 << 20).map(|i| (i as f32 / (1u32 << 19) as f32 - 1.0) * 1.25));
        xs.extend((0..1u32 << 20).map(|i| (i as f32 / (1u32 << 19) as f32 - 1.0) * 4.5));
        for j in 0..=ERF_MID_STEPS {
            let edge = 1.0 + j as f32 * 0.125;
            xs.extend([edge, -edge, f32::from_bits(edge.to_bits() - 1), f32::from_bits(edge.to_bits() + 1)]);
        }
        for u in [UnaryOp::Exp, UnaryOp::Sigmoid, UnaryOp::Erf] {
            check(u, &xs);
        }
    }
}
