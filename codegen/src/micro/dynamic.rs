//! Dynamic quantization's matrix product (and convolution) as one step: DynamicQuantizeLinear
//! of an f32 input, MatMulInteger (or ConvInteger, through im2col) with constant i8 weights, the cast of the i32 result to f32 and its multiply by
//! the input's scale times the weights' (what ONNX Runtime's `quantize_dynamic` and qforge's
//! `--quantize dynamic` emit for a linear layer). Each call takes the input's scale and zero
//! point over the whole tensor ([`input_params`]: ONNX Runtime's rule, as the interpreter
//! computes them), quantizes its own rows ([`numerics::quantize_clamped`], `numerics::quantize`
//! into u8 for every input), runs the u8 x i8 GEMM
//! microkernel over the packed weights, and writes `((acc - z * colsum[j]) as f32) * (s *
//! w_scale[j])`: `sum (q - z) * w` exactly (the i32 sums cannot overflow for `k < 66,000`), the
//! same cast and the same two f32 multiplies as the graph's, so the result is the
//! interpreter's bit for bit.
//!
//! Invariants: reads only its input and writes only its own rows of the output; never
//! allocates beyond one row block's scratch.

use super::int8::{gemm_u8i8_best, im2col_ld_u8, im2col_u8, panel_offset, panel_width, GemmU8I8, PackedI8};
use super::ConvGeom;
use qforge_ir::interp::quant::{dynamic_params_of_range, min_max};
use qforge_ir::numerics;

/// Rows quantized and multiplied per block (a multiple of the VNNI kernel's row blocking); a
/// step's units are blocks of this many output rows (pixels), so the per-call work (the input's
/// scale over the whole tensor) is paid once per block.
pub const ROWS: usize = 48;

/// The input's scale and zero point, `qforge_ir::interp::quant::dynamic_params`: its range
/// found 16 lanes at a time where the host has AVX-512 (minimum and maximum do not depend on
/// the order), then the same formula.
fn input_params(x: &[f32]) -> (f32, i32) {
    let (lo, hi) = range(x);
    dynamic_params_of_range(lo, hi)
}

/// [`min_max`] of `x`.
fn range(x: &[f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { range_avx512(x) };
    }
    min_max(x)
}

/// [`min_max`] in 16 lanes (the compiler does not vectorize the fold of `f32::min`).
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn range_avx512(x: &[f32]) -> (f32, f32) {
    use std::arch::x86_64::{_mm512_loadu_ps, _mm512_max_ps, _mm512_min_ps, _mm512_set1_ps, _mm512_storeu_ps};
    let (mut lo, mut hi) = (_mm512_set1_ps(f32::MAX), _mm512_set1_ps(f32::MIN));
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        // SAFETY: `c` holds 16 f32.
        let v = unsafe { _mm512_loadu_ps(c.as_ptr()) };
        // `vminps`/`vmaxps` return the second operand when either is NaN: a NaN input leaves
        // the lane as it was, as `f32::min` ignores it
        lo = _mm512_min_ps(v, lo);
        hi = _mm512_max_ps(v, hi);
    }
    let (mut l, mut h) = ([0f32; 16], [0f32; 16]);
    // SAFETY: both arrays hold 16 f32.
    unsafe {
        _mm512_storeu_ps(l.as_mut_ptr(), lo);
        _mm512_storeu_ps(h.as_mut_ptr(), hi);
    }
    let ((l, _), (_, h), (tl, th)) = (min_max(&l), min_max(&h), min_max(tail));
    (l.min(tl), h.max(th))
}

/// A dynamic quantization chain's matrix product: `m x k` f32 input, constant `k x n` i8
/// weights (zero point 0) packed for the GEMM, one weight scale (per tensor) or `n` (per
/// column).
#[derive(Debug)]
pub struct DynamicMatMul {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub weights: PackedI8,
    pub w_scale: Vec<f32>,
    /// A bias added to each row after the scale multiply (`n` values), or empty.
    pub bias: Vec<f32>,
}

/// `s * w_scale[j]` for the `n` columns (one weight scale, or one per column): the graph's
/// product of the input's scale and the weights', in f32.
fn scale_products(s: f32, w_scale: &[f32], n: usize) -> Vec<f32> {
    (0..n).map(|j| s * if w_scale.len() == 1 { w_scale[0] } else { w_scale[j] }).collect()
}

/// Output row blocks `begin..end` ([`ROWS`] rows each) of `d` from the whole input `x` (`m * k`
/// values) into `y` (`m * n`).
///
/// # Safety
/// `x` holds `d.m * d.k` f32 and `y` `d.m * d.n` f32, not overlapping; no other thread writes
/// rows `begin..end` of `y` meanwhile.
pub unsafe fn run(d: &DynamicMatMul, x: *const f32, y: *mut f32, begin: usize, end: usize) {
    let (m, k, n) = (d.m, d.k, d.n);
    let (begin, end) = (begin.saturating_mul(ROWS), end.saturating_mul(ROWS));
    if n == 0 || begin >= end.min(m) {
        return;
    }
    // SAFETY: the caller's contract.
    let xs = unsafe { std::slice::from_raw_parts(x, m * k) };
    let (s, z) = input_params(xs);
    let sp = scale_products(s, &d.w_scale, n);
    let kp = d.weights.kp;
    let (gemm, _) = gemm_u8i8_best();
    let mut a = vec![0u8; ROWS * kp];
    let mut acc = vec![0i32; ROWS * 64];
    let mut r0 = begin;
    while r0 < end.min(m) {
        let rows = ROWS.min(end.min(m) - r0);
        for (r, arow) in a.chunks_exact_mut(kp).take(rows).enumerate() {
            quantize_row(&xs[(r0 + r) * k..(r0 + r + 1) * k], arow, s, z);
        }
        // SAFETY: `a` holds `rows` rows of `kp` bytes; rows `r0..r0 + rows` of `y` are this
        // call's (the caller's contract).
        unsafe { gemm_rows(gemm, &d.weights, &a, kp, rows, z, &sp, &d.bias, &mut acc, y.add(r0 * n)) };
        r0 += rows;
    }
}

/// `y[r][j] = ((acc - z * colsum[j]) as f32) * sp[j]` (`+ bias[j]` when `bias` is not empty) for
/// the `rows` rows of u8 `a` (stride `lda`) times the packed weights, panel by panel through
/// `acc` (`ROWS x 64` i32 scratch).
///
/// # Safety
/// `a` holds `rows` rows of `w.kp` readable bytes at stride `lda`; `y` has `rows` rows of `w.n`
/// writable f32 that no other thread writes.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_rows(
    gemm: GemmU8I8,
    w: &PackedI8,
    a: &[u8],
    lda: usize,
    rows: usize,
    z: i32,
    sp: &[f32],
    bias: &[f32],
    acc: &mut [i32],
    y: *mut f32,
) {
    let (n, kp) = (w.n, w.kp);
    for p in 0..n.div_ceil(64) {
        let cols = (n - 64 * p).min(64);
        debug_assert!(panel_width(n, p) >= cols);
        // SAFETY: `rows` rows of `kp` bytes of `a` (the padding bytes past `k` meet zero
        // weights), one packed panel of `panel_width(n, p) * kp` bytes, and `rows` rows of 64
        // i32 of `acc` (the kernel writes at most `round_up_16(cols) <= 64` columns).
        unsafe {
            gemm(a.as_ptr(), lda, rows, w.data.as_ptr().add(panel_offset(p, kp)), kp, acc.as_mut_ptr(), 64, cols)
        };
        let c0 = 64 * p;
        for r in 0..rows {
            // SAFETY: row `r` of this call's rows, columns `c0..c0 + cols <= n`.
            let out = unsafe { std::slice::from_raw_parts_mut(y.add(r * n + c0), cols) };
            let b = if bias.is_empty() { &[][..] } else { &bias[c0..c0 + cols] };
            dequantize_row(&acc[r * 64..r * 64 + cols], &w.col_sums[c0..c0 + cols], z, &sp[c0..c0 + cols], b, out);
        }
    }
}

qforge_ir::multiversion! {
    baseline = quantize_row_baseline;
    /// `q[t] = quantize_clamped(x[t], s, z, 0, 255)`: DynamicQuantizeLinear's u8 codes of a row
    /// ([`numerics::quantize_clamped`] is `numerics::quantize` into u8, written to vectorize);
    /// compiled for AVX-512 and AVX2 as well, the same codes in every version.
    pub fn quantize_row(x: &[f32], q: &mut [u8], s: f32, z: i32) -> () {
        let n = x.len().min(q.len());
        let (x, q) = (&x[..n], &mut q[..n]);
        // blocks of 16 with no tail inside, so the block loop compiles to straight vector code
        let mut xb = x.chunks_exact(16);
        let mut qb = q.chunks_exact_mut(16);
        for (xc, qc) in (&mut xb).zip(&mut qb) {
            for i in 0..16 {
                qc[i] = numerics::quantize_clamped(xc[i], s, z, 0, 255) as u8;
            }
        }
        for (o, &v) in qb.into_remainder().iter_mut().zip(xb.remainder()) {
            *o = numerics::quantize_clamped(v, s, z, 0, 255) as u8;
        }
    }
}

qforge_ir::multiversion! {
    baseline = dequantize_row_baseline;
    /// `y[j] = ((acc[j] - z * col_sums[j]) as f32) * sp[j] (+ bias[j])`: MatMulInteger's
    /// zero-point correction (`sum (q - z) * w = sum q * w - z * sum w`, in wrapping i32 as the
    /// interpreter's i32 result), the cast, the multiply by the scale product and the bias add
    /// (none when `bias` is empty), one f32 rounding each; compiled for AVX-512 and AVX2 as
    /// well, the same values in every version.
    pub fn dequantize_row(acc: &[i32], col_sums: &[i32], z: i32, sp: &[f32], bias: &[f32], y: &mut [f32]) -> () {
        for (((o, &a), &c), &p) in y.iter_mut().zip(acc).zip(col_sums).zip(sp) {
            *o = a.wrapping_sub(z.wrapping_mul(c)) as f32 * p;
        }
        for (o, &b) in y.iter_mut().zip(bias) {
            *o += b;
        }
    }
}

/// A dynamic quantization chain's convolution (one group): `n` NCHW f32 images of `geom.h x
/// geom.w x geom.c`, weights reordered to `(ky, kx, ci)` and packed for the GEMM (`cout`
/// columns), one weight scale or one per output channel; the result is written in NHWC.
#[derive(Debug)]
pub struct DynamicConv {
    pub images: usize,
    pub geom: ConvGeom,
    pub weights: PackedI8,
    pub w_scale: Vec<f32>,
}

/// Output pixel blocks `begin..end` ([`ROWS`] pixels each; pixels are the GEMM's rows: image,
/// output row, output column) of `d` from
/// the whole NCHW input `x` into the NHWC output `y`. The input is quantized into NHWC bytes
/// (the padding is the zero point, so a padded tap adds `(z - z) * w = 0`, as ConvInteger's
/// zero-point subtraction gives), gathered by im2col, multiplied by the GEMM.
///
/// # Safety
/// `x` holds `images * c * h * w` f32, `y` `images * oh * ow * cout` f32, not overlapping; no
/// other thread writes pixels `begin..end` of `y` meanwhile.
pub unsafe fn run_conv(d: &DynamicConv, x: *const f32, y: *mut f32, begin: usize, end: usize) {
    let (begin, end) = (begin.saturating_mul(ROWS), end.saturating_mul(ROWS));
    let g = &d.geom;
    let (c, hw) = (g.c, g.h * g.w);
    let total = d.images * g.oh * g.ow;
    let n = d.weights.n;
    if n == 0 || begin >= end.min(total) {
        return;
    }
    // SAFETY: the caller's contract.
    let xs = unsafe { std::slice::from_raw_parts(x, d.images * c * hw) };
    let (s, z) = input_params(xs);
    let sp = scale_products(s, &d.w_scale, n);
    // the images quantized, channels last
    let mut xq = vec![0u8; xs.len()];
    for img in 0..d.images {
        for ch in 0..c {
            let plane = &xs[(img * c + ch) * hw..(img * c + ch + 1) * hw];
            for (p, &v) in plane.iter().enumerate() {
                xq[(img * hw + p) * c + ch] = numerics::quantize_clamped(v, s, z, 0, 255) as u8;
            }
        }
    }
    let ld = im2col_ld_u8(g).max(d.weights.kp);
    let (gemm, _) = gemm_u8i8_best();
    let mut a = vec![0u8; ROWS * ld];
    let mut acc = vec![0i32; ROWS * 64];
    let mut r0 = begin;
    while r0 < end.min(total) {
        let rows = ROWS.min(end.min(total) - r0);
        // SAFETY: `xq` covers every image; `a` has `rows` rows of `ld` bytes; `y`'s rows
        // `r0..r0 + rows` are this call's.
        unsafe {
            im2col_u8(g, xq.as_ptr(), r0, rows, a.as_mut_ptr(), ld, z as u8, 0);
            gemm_rows(gemm, &d.weights, &a, ld, rows, z, &sp, &[], &mut acc, y.add(r0 * n));
        }
        r0 += rows;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dispatched versions give the baselines' codes and values, and the codes are
    /// `numerics::quantize`'s (NaN, infinities, halves and saturation included).
    /// The lane-parallel range is the interpreter's fold, NaN ignored, at every length around
    /// the lane count.
    #[test]
    fn range_is_the_interpreters_fold() {
        let mut s = 7u32;
        for n in [0usize, 1, 5, 15, 16, 17, 31, 33, 100, 1001] {
            let x: Vec<f32> = (0..n)
                .map(|i| {
                    s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    if i % 37 == 3 {
                        f32::NAN
                    } else {
                        (s >> 8) as f32 / 65_536.0 - 128.0
                    }
                })
                .collect();
            assert_eq!(range(&x), min_max(&x), "n = {n}");
        }
        assert_eq!(range(&[f32::NAN; 20]), (f32::MAX, f32::MIN));
    }

    #[test]
    fn row_kernels_match_their_baselines() {
        let x: Vec<f32> = (0..203)
            .map(|i| match i % 50 {
                7 => f32::NAN,
                8 => f32::INFINITY,
                9 => f32::NEG_INFINITY,
                _ => (i as f32 - 100.0) * 0.37 + 0.5,
            })
            .collect();
        let (s, z) = (0.25, 117);
        let (mut q, mut qb) = (vec![0u8; x.len()], vec![0u8; x.len()]);
        quantize_row(&x, &mut q, s, z);
        quantize_row_baseline(&x, &mut qb, s, z);
        assert_eq!(q, qb);
        for (&c, &v) in q.iter().zip(&x) {
            assert_eq!(c as i64, numerics::quantize(v, s, z, qforge_ir::DType::U8), "{v}");
        }
        let acc: Vec<i32> = (0..203).map(|i| i * 7919 - 800_000).collect();
        let sums: Vec<i32> = (0..203).map(|i| 3 - i * 31).collect();
        let sp: Vec<f32> = (0..203).map(|i| 1e-3 * (i as f32 + 0.5)).collect();
        let (mut y, mut yb) = (vec![0f32; 203], vec![0f32; 203]);
        let bias: Vec<f32> = (0..203).map(|i| (i as f32 - 90.0) * 0.7).collect();
        for b in [&[][..], &bias[..]] {
            dequantize_row(&acc, &sums, z, &sp, b, &mut y);
            dequantize_row_baseline(&acc, &sums, z, &sp, b, &mut yb);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&y), bits(&yb));
        }
    }
}
