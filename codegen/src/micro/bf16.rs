//! bf16 microkernels: a GEMM over bf16 activations and packed bf16 weights with f32
//! accumulation, as AVX512-BF16 `vdpbf16ps` computes it, with a portable version that computes
//! the same sums, and the im2col gather of bf16 activations. bf16 values travel as their bits
//! (`u16`: the high half of an f32).
//!
//! Numerics (the bf16 dot product of [`qforge_ir::numerics`]): every output element starts at
//! 0.0 and takes the reduction two terms at a time, pair `i` being `t = 2i, 2i + 1`:
//! `acc = fma(a[2i+1], w[2i+1], acc); acc = fma(a[2i], w[2i], acc)`, in f32 with round to
//! nearest even, bf16 subnormal inputs read as zero and subnormal results flushed to zero. That
//! is Intel's definition of `VDPBF16PS` (SDM vol. 2: "FP32 FMA with daz in, ftz out and RNE
//! rounding", odd element first); a product of two bf16 values is exact in f32, so each step
//! rounds once. An odd `k` ends with a pair whose second term is zero.
//!
//! Invariants (those of [`super::float`] otherwise): no allocation or panic on the hot path; a
//! kernel reads only the ranges its arguments describe (the odd tail of a row is read as one
//! `u16`, never as a pair) and writes exactly columns `0..nr` of rows `0..m` of `c`.
//!
//! Layout of packed weights: column panels of [`PANEL`] columns as for f32; inside a panel of
//! width `w` (a multiple of 16), pair `i` is `2 * w` values: for each column `j`, `w[j][2i]` then
//! `w[j][2i + 1]` (0 past `k` and for padding columns). One zmm holds a pair for 16 columns,
//! which is the operand layout `vdpbf16ps` multiplies with a broadcast pair of `a`.

#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]

use super::{float, try_zeroed, ConvGeom};
use std::collections::TryReserveError;

/// Panel width in columns (the f32 GEMM's, so the emitted loops and tiles are shared).
pub const PANEL: usize = float::PANEL;

/// Rounds up to a multiple of 16 (one zmm of f32 results).
#[inline]
const fn round_up_16(x: usize) -> usize {
    (x + 15) & !15
}

/// Pairs of a reduction of length `k`.
#[inline]
pub const fn pairs(k: usize) -> usize {
    k.div_ceil(2)
}

/// Weights packed for the bf16 GEMM (see the module docs for the layout).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PackedBf16 {
    /// Output channels (columns).
    pub n: usize,
    /// Reduction length.
    pub k: usize,
    /// All panels back to back, panel `p` at [`panel_offset`]`(p, k)`.
    pub data: Vec<u16>,
}

/// Offset (in bf16 values) of panel `p` for reduction length `k`.
pub fn panel_offset(p: usize, k: usize) -> usize {
    PANEL * p * 2 * pairs(k)
}

/// Packs `w[j*k + t]` (`n` x `k`, row major, bf16 bits) into panels (entries missing from a
/// short `w` read as 0).
pub fn pack_weights_bf16(w: &[u16], n: usize, k: usize) -> Result<PackedBf16, TryReserveError> {
    pack_by(n, k, |j, t| w.get(j * k + t).copied())
}

/// [`pack_weights_bf16`] of a weight stored `[k, n]` (a matmul's right operand), read in place.
pub fn pack_weights_bf16_kn(w: &[u16], k: usize, n: usize) -> Result<PackedBf16, TryReserveError> {
    pack_by(n, k, |j, t| w.get(t * n + j).copied())
}

fn pack_by(n: usize, k: usize, get: impl Fn(usize, usize) -> Option<u16>) -> Result<PackedBf16, TryReserveError> {
    let np = n.div_ceil(PANEL);
    let kp = 2 * pairs(k);
    let len = if np == 0 { 0 } else { panel_offset(np - 1, k) + float::panel_width(n, np - 1) * kp };
    let mut data = try_zeroed::<u16>(len)?;
    for p in 0..np {
        let width = float::panel_width(n, p);
        let base = panel_offset(p, k);
        let c0 = PANEL * p;
        for i in 0..pairs(k) {
            let row = base + i * 2 * width;
            for jj in 0..width.min(n - c0) {
                for h in 0..2 {
                    let t = 2 * i + h;
                    if t < k {
                        data[row + 2 * jj + h] = get(c0 + jj, t).unwrap_or(0);
                    }
                }
            }
        }
    }
    Ok(PackedBf16 { n, k, data })
}

/// Bytes of [`PackedBf16::data`] for `n` columns and reduction length `k`, without packing.
pub fn packed_bytes(n: usize, k: usize) -> u128 {
    (n as u128).div_ceil(16) * 16 * 2 * (pairs(k) as u128) * 2
}

/// Signature shared by the GEMM kernels: `(a, lda, m, b, k, c, ldc, nr)`: `a` rows of `k` bf16
/// values at stride `lda` (values), `b` one packed panel, `c` f32 rows at stride `ldc`.
pub type GemmBf16 = unsafe extern "C" fn(*const u16, usize, usize, *const u16, usize, *mut f32, usize, usize);

/// The f32 value of bf16 bits.
#[inline(always)]
fn widen(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// `x` with a subnormal read as zero of the same sign (DAZ, FTZ).
#[inline(always)]
fn flush(x: f32) -> f32 {
    if x.is_subnormal() {
        f32::from_bits(x.to_bits() & 0x8000_0000)
    } else {
        x
    }
}

/// One step of the pairwise reduction: `fma(x, w, acc)` with subnormals flushed in and out.
#[inline(always)]
fn step(acc: f32, x: u16, w: u16) -> f32 {
    flush(flush(widen(x)).mul_add(flush(widen(w)), acc))
}

/// Portable GEMM with the module's numerics: `c[r*ldc + j] = sum_t a[r*lda + t] * w[j][t]` for
/// `r < m`, `j < nr`, over the panel at `b` (width `round_up_16(nr)`).
///
/// # Safety
/// `a` must be readable for rows `0..m` of `k` values at stride `lda`; `b` for a panel of
/// `2 * pairs(k) * round_up_16(nr)` values; `c` writable for rows `0..m` of `nr` floats at
/// stride `ldc`.
pub unsafe extern "C" fn gemm_bf16_scalar(
    a: *const u16,
    lda: usize,
    m: usize,
    b: *const u16,
    k: usize,
    c: *mut f32,
    ldc: usize,
    nr: usize,
) {
    // SAFETY: the caller guarantees the ranges above; `t < k` bounds every read of a row of `a`
    // and `i < pairs(k)`, `j < nr` every read of the panel.
    unsafe {
        let w = round_up_16(nr);
        for r in 0..m {
            let ar = a.add(r * lda);
            for j in 0..nr {
                let mut acc = 0.0f32;
                for i in 0..pairs(k) {
                    let row = b.add(i * 2 * w + 2 * j);
                    let hi = if 2 * i + 1 < k { *ar.add(2 * i + 1) } else { 0 };
                    acc = step(acc, hi, *row.add(1));
                    acc = step(acc, *ar.add(2 * i), *row);
                }
                *c.add(r * ldc + j) = acc;
            }
        }
    }
}

/// AVX512-BF16 GEMM with the contract of [`gemm_bf16_scalar`] (bit-identical results).
///
/// # Safety
/// The CPU must support AVX512F and AVX512-BF16 (use [`gemm_bf16_best`]); pointer requirements
/// as for [`gemm_bf16_scalar`].
pub unsafe extern "C" fn gemm_bf16_avx512(
    a: *const u16,
    lda: usize,
    m: usize,
    b: *const u16,
    k: usize,
    c: *mut f32,
    ldc: usize,
    nr: usize,
) {
    // SAFETY: the caller guarantees the ranges and the CPU features `x86::gemm` requires.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            x86::gemm(a, lda, m, b, k, c, ldc, nr)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            gemm_bf16_scalar(a, lda, m, b, k, c, ldc, nr)
        }
    }
}

/// Whether this CPU has the bf16 dot-product instruction the JIT computes bf16 GEMMs with; where
/// it does not, bf16 stays a storage type (the JIT widens to f32 and uses the f32 kernels).
pub fn native_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Best bf16 GEMM for the running CPU and its name (`"avx512_bf16"` or `"scalar"`).
pub fn gemm_bf16_best() -> (GemmBf16, &'static str) {
    if native_available() {
        (gemm_bf16_avx512 as GemmBf16, "avx512_bf16")
    } else {
        (gemm_bf16_scalar as GemmBf16, "scalar")
    }
}

/// im2col of bf16 activations: [`float::im2col_f32`]'s gather (same rows, same zero padding) of
/// 2-byte values.
///
/// # Safety
/// As for [`float::im2col_f32`], with `u16` elements.
pub unsafe extern "C" fn im2col_bf16(
    g: *const ConvGeom,
    x: *const u16,
    m0: usize,
    rows: usize,
    out: *mut u16,
    ld: usize,
) {
    // SAFETY: the caller guarantees `g` is a valid geometry, `x` holds every image the rows
    // reference and `out` has `rows` rows of `g.k()` writable values at stride `ld`.
    unsafe { float::im2col_body::<u16, float::StdCopy>(&*g, x, m0, rows, out, ld) }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! AVX512-BF16 implementation; every function requires the features in its attribute.
    use super::round_up_16;
    use std::arch::x86_64::*;

    /// Pairs per reduction block: a 32-column panel block is 32 KiB, which stays in L1/L2
    /// while every row block streams over it.
    const KCP: usize = 128;

    #[inline(always)]
    fn lane_mask(n: usize) -> u16 {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as u16
        }
    }

    /// `MR x NV` block: rows `0..MR` of `a`, `NV` zmm of 16 columns, pairs `0..np` (and the odd
    /// tail term `t = 2*np` when `tail`), accumulating onto `c` when `ACC`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    unsafe fn blk<const MR: usize, const NV: usize, const ACC: bool>(
        a: *const u16,
        lda: usize,
        b: *const u16,
        ldp: usize,
        np: usize,
        tail: bool,
        c: *mut f32,
        ldc: usize,
        last: u16,
    ) {
        // SAFETY: the caller (`rows`) passes `MR` rows of `a` with `2 * np` (+1 with `tail`)
        // readable values each, `np` (+1) panel pair rows of `ldp` values with `32 * NV` read,
        // and `MR` rows of `c` with the block's columns; the last store is masked.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); NV]; MR];
            if ACC {
                for i in 0..MR {
                    for v in 0..NV {
                        let m = if v + 1 < NV { 0xffff } else { last };
                        acc[i][v] = _mm512_maskz_loadu_ps(m, c.add(i * ldc + 16 * v));
                    }
                }
            }
            let mut bp = b;
            for p in 0..np + tail as usize {
                let mut bv = [_mm512_setzero_si512(); NV];
                for v in 0..NV {
                    bv[v] = _mm512_loadu_si512(bp.add(32 * v) as *const _);
                }
                for i in 0..MR {
                    let ar = a.add(i * lda + 2 * p);
                    let pair = if p < np { (ar as *const u32).read_unaligned() } else { *ar as u32 };
                    let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair as i32));
                    for v in 0..NV {
                        let bh: __m512bh = std::mem::transmute(bv[v]);
                        acc[i][v] = _mm512_dpbf16_ps(acc[i][v], av, bh);
                    }
                }
                bp = bp.add(ldp);
            }
            for i in 0..MR {
                for v in 0..NV {
                    let m = if v + 1 < NV { 0xffff } else { last };
                    _mm512_mask_storeu_ps(c.add(i * ldc + 16 * v), m, acc[i][v]);
                }
            }
        }
    }

    /// All rows of one column chunk (`NV` zmm), k-blocked by [`KCP`] pairs; row blocks of 12,
    /// remainders in blocks of 8, 4, 2, 1.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn rows<const NV: usize>(
        a: *const u16,
        lda: usize,
        m: usize,
        b: *const u16,
        ldp: usize,
        k: usize,
        c: *mut f32,
        ldc: usize,
        last: u16,
    ) {
        // SAFETY: the caller (`gemm`) passes its ranges for one column chunk; blocks stay below
        // `m` rows and `pairs(k)` pairs.
        unsafe {
            let full = k / 2;
            let mut p0 = 0;
            loop {
                let np = (full - p0).min(KCP);
                let tail = p0 + np == full && k % 2 == 1;
                let acc = p0 > 0;
                let (ak, bk) = (a.add(2 * p0), b.add(p0 * ldp));
                let mut r = 0;
                while r < m {
                    let (ar, cr) = (ak.add(r * lda), c.add(r * ldc));
                    let args = (ar, lda, bk, ldp, np, tail, cr, ldc, last);
                    let step = match (m - r, acc) {
                        (12.., false) => call::<12, NV, false>(args),
                        (12.., true) => call::<12, NV, true>(args),
                        (8.., false) => call::<8, NV, false>(args),
                        (8.., true) => call::<8, NV, true>(args),
                        (4.., false) => call::<4, NV, false>(args),
                        (4.., true) => call::<4, NV, true>(args),
                        (2.., false) => call::<2, NV, false>(args),
                        (2.., true) => call::<2, NV, true>(args),
                        (_, false) => call::<1, NV, false>(args),
                        (_, true) => call::<1, NV, true>(args),
                    };
                    r += step;
                }
                p0 += np;
                // the odd tail, if any, ran in the block that reached `full`
                if p0 >= full {
                    break;
                }
            }
        }
    }

    type Args = (*const u16, usize, *const u16, usize, usize, bool, *mut f32, usize, u16);

    /// Runs one `MR`-row block and returns `MR`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    unsafe fn call<const MR: usize, const NV: usize, const ACC: bool>(x: Args) -> usize {
        // SAFETY: forwarded from `rows`, which checked that `MR` rows remain.
        unsafe { blk::<MR, NV, ACC>(x.0, x.1, x.2, x.3, x.4, x.5, x.6, x.7, x.8) };
        MR
    }

    /// Driver: columns in chunks of 32 (two zmm) and a last chunk of 16 or fewer.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn gemm(
        a: *const u16,
        lda: usize,
        m: usize,
        b: *const u16,
        k: usize,
        c: *mut f32,
        ldc: usize,
        nr: usize,
    ) {
        // SAFETY: the caller (`gemm_bf16_avx512`) guarantees its ranges; each chunk starts at a
        // column below `nr` and stores only up to `nr`.
        unsafe {
            if m == 0 || nr == 0 {
                return;
            }
            if k == 0 {
                for r in 0..m {
                    std::ptr::write_bytes(c.add(r * ldc), 0, nr);
                }
                return;
            }
            let ldp = 2 * round_up_16(nr);
            let mut j = 0;
            while j < nr {
                let cols = (nr - j).min(32);
                let (bj, cj) = (b.add(2 * j), c.add(j));
                if cols > 16 {
                    rows::<2>(a, lda, m, bj, ldp, k, cj, ldc, lane_mask(cols - 16));
                } else {
                    rows::<1>(a, lda, m, bj, ldp, k, cj, ldc, lane_mask(cols));
                }
                j += cols;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic bf16 value in about [-2, 2), with some exact zeros.
    fn values(n: usize, seed: u64) -> Vec<u16> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                if s.is_multiple_of(11) {
                    0
                } else {
                    half::bf16::from_f32(((s >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0) as f32).to_bits()
                }
            })
            .collect()
    }

    /// Every shape class (odd and even k, k across a reduction block, partial panels, row
    /// remainders, a row stride wider than k): the scalar kernel against an f64 sum within the
    /// f32 rounding of `k` steps, and the AVX512-BF16 kernel (where the CPU has it) bit for bit
    /// against the scalar one.
    #[test]
    fn gemm_matches_the_scalar_definition_and_f64() {
        let (native, name) = gemm_bf16_best();
        for (m, k, n, extra) in [
            (1, 1, 1, 0),
            (3, 2, 5, 1),
            (13, 7, 17, 3),
            (25, 9, 32, 0),
            (12, 300, 33, 2),
            (7, 257, 64, 5),
            (40, 64, 70, 0),
        ] {
            let lda = k + extra;
            let a = values(m * lda, 7 + k as u64);
            let w = values(n * k, 99 + n as u64);
            let packed = pack_weights_bf16(&w, n, k).unwrap();
            assert_eq!(packed.data.len() as u128 * 2, packed_bytes(n, k), "packed size {n}x{k}");
            for p in 0..n.div_ceil(PANEL) {
                let nr = (n - p * PANEL).min(PANEL);
                let b = packed.data[panel_offset(p, k)..].as_ptr();
                let mut want = vec![f32::NAN; m * nr];
                let mut got = vec![f32::NAN; m * nr];
                // SAFETY: `a` has `m` rows of `lda >= k` values, the panel is inside `packed`,
                // and both outputs have `m` rows of `nr` floats.
                unsafe {
                    gemm_bf16_scalar(a.as_ptr(), lda, m, b, k, want.as_mut_ptr(), nr, nr);
                    native(a.as_ptr(), lda, m, b, k, got.as_mut_ptr(), nr, nr);
                }
                for r in 0..m {
                    for j in 0..nr {
                        let col = p * PANEL + j;
                        let exact: f64 =
                            (0..k).map(|t| widen(a[r * lda + t]) as f64 * widen(w[col * k + t]) as f64).sum();
                        let bound: f64 = (0..k)
                            .map(|t| (widen(a[r * lda + t]) as f64 * widen(w[col * k + t]) as f64).abs())
                            .sum::<f64>()
                            * k as f64
                            * f32::EPSILON as f64;
                        let v = want[r * nr + j] as f64;
                        assert!((v - exact).abs() <= bound, "{m}x{k}x{n} ({r}, {col}): {v} vs {exact}");
                        assert_eq!(
                            want[r * nr + j].to_bits(),
                            got[r * nr + j].to_bits(),
                            "{name} vs scalar, {m}x{k}x{n} at ({r}, {col})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn kn_packing_is_the_transposed_nk_packing() {
        let (k, n) = (5, 37);
        let w = values(n * k, 3);
        let kn: Vec<u16> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
        assert_eq!(pack_weights_bf16(&w, n, k).unwrap(), pack_weights_bf16_kn(&kn, k, n).unwrap());
    }
}
