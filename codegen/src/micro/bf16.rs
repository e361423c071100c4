//! bf16 microkernels: a GEMM over bf16 activations and packed bf16 weights with f32
//! accumulation, as AVX512-BF16 `vdpbf16ps` computes it, with a portable version that computes
//! the same sums; the im2col gather of bf16 activations; and a depthwise convolution row kernel
//! over bf16 activations and weights with f32 accumulation. bf16 values travel as their bits
//! (`u16`: the high half of an f32).
//!
//! The depthwise kernel sums each output's taps one at a time, `acc = fma(x, w, acc)` from 0.0 in
//! tap order `(ky, kx)` over in-image taps, on the exactly widened values (no pairs: a pixel's
//! taps are not adjacent in memory, its channels are). That is [`float::depthwise_f32_scalar`]'s
//! definition on the widened tensors, so its results are those of the f32 kernel bit for bit
//! (its tests check it); its output is the f32 tile the epilogue rounds once to bf16.
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

/// `vdpbf16ps`'s rate of multiply-adds on this CPU over that of 512-bit f32 FMA, measured once
/// per process (0.0 without the instruction): about 2 on AMD Zen 4, which issues it as fast as
/// an FMA with two products per lane, and about 0.5 on Intel Sapphire Rapids without AMX, which
/// issues it once every two cycles against two FMAs a cycle. The bf16 GEMM pays only above 1;
/// below, bf16 computes as f32 ([`crate::JitOptions::bf16_compute`]). The ratio is far from 1
/// on both, so timing noise does not flip the choice.
pub fn dot_rate() -> f64 {
    static RATE: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *RATE.get_or_init(|| {
        if !native_available() {
            return 0.0;
        }
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: `native_available` checked AVX-512F and AVX512-BF16.
            unsafe { probe::rate() }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            0.0
        }
    })
}

/// The timing loops of [`dot_rate`]: 8 independent accumulators (more than either
/// instruction's latency times its issue rate needs), the fastest of five alternating rounds.
#[cfg(target_arch = "x86_64")]
mod probe {
    use std::arch::x86_64::*;
    use std::hint::black_box;
    use std::time::Instant;

    const ITERS: usize = 20_000;

    #[target_feature(enable = "avx512f,avx512bf16")]
    fn dots() -> __m512 {
        // pairs of bf16 1.0
        // SAFETY: any 512 bits are 32 bf16 values.
        let a: __m512bh = unsafe { std::mem::transmute(black_box(_mm512_set1_epi32(0x3f80_3f80))) };
        let mut acc = [_mm512_setzero_ps(); 8];
        for _ in 0..ITERS {
            for c in acc.iter_mut() {
                *c = _mm512_dpbf16_ps(*c, a, a);
            }
        }
        acc.iter().fold(_mm512_setzero_ps(), |s, c| _mm512_add_ps(s, *c))
    }

    #[target_feature(enable = "avx512f")]
    fn fmas() -> __m512 {
        let a = black_box(_mm512_set1_ps(1.0));
        let mut acc = [_mm512_setzero_ps(); 8];
        for _ in 0..ITERS {
            for c in acc.iter_mut() {
                *c = _mm512_fmadd_ps(a, a, *c);
            }
        }
        acc.iter().fold(_mm512_setzero_ps(), |s, c| _mm512_add_ps(s, *c))
    }

    /// # Safety
    /// The CPU has AVX-512F and AVX512-BF16.
    pub(super) unsafe fn rate() -> f64 {
        let (mut dot, mut fma) = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            let t = Instant::now();
            // SAFETY: the caller's guarantee.
            black_box(unsafe { dots() });
            dot = dot.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            // SAFETY: the caller's guarantee.
            black_box(unsafe { fmas() });
            fma = fma.min(t.elapsed().as_secs_f64());
        }
        // two products per lane per `vdpbf16ps`, one per FMA, the same count of instructions
        if dot > 0.0 {
            2.0 * fma / dot
        } else {
            0.0
        }
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

/// Depthwise weights as bf16 bits, packed as [`float::PackedDwF32`]: `[kh*kw][round_up_16(c)]`
/// (tap-major, channels contiguous, zero-padded to a multiple of 16).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PackedDwBf16 {
    /// Channels (groups).
    pub c: usize,
    pub kh: usize,
    pub kw: usize,
    /// `kh*kw*round_up_16(c)` bf16 values.
    pub data: Vec<u16>,
}

/// Packs depthwise weights `w[ch*kh*kw + ky*kw + kx]` (bf16 bits) into [`PackedDwBf16`]
/// (entries missing from a short `w` read as 0).
pub fn pack_depthwise_bf16(w: &[u16], c: usize, kh: usize, kw: usize) -> Result<PackedDwBf16, TryReserveError> {
    let taps = kh * kw;
    let cp = round_up_16(c);
    let mut data = try_zeroed::<u16>(taps * cp)?;
    for ch in 0..c {
        for tap in 0..taps {
            data[tap * cp + ch] = w.get(ch * taps + tap).copied().unwrap_or(0);
        }
    }
    Ok(PackedDwBf16 { c, kh, kw, data })
}

/// Bytes of [`PackedDwBf16::data`] for `c` channels and a `kh x kw` kernel.
pub fn packed_dw_bytes(c: usize, kh: usize, kw: usize) -> u128 {
    (kh as u128) * (kw as u128) * ((c as u128).div_ceil(16) * 16) * 2
}

/// Signature shared by the bf16 depthwise kernels: `(g, x, w, row, out, ldo)`, as
/// [`float::DepthwiseF32`] with bf16 activations and packed bf16 weights.
pub type DepthwiseBf16 = unsafe extern "C" fn(*const ConvGeom, *const u16, *const u16, usize, *mut f32, usize);

/// Portable bf16 depthwise row kernel (see the module docs): output row `row = img*oh + oy`,
/// `out[ox*ldo + ch] = sum over in-image taps (ky, kx), in that order, of
/// x[img][iy][ix][ch] * w[(ky*kw + kx)*round_up_16(c) + ch]`, widened, with one f32 FMA per tap.
///
/// # Safety
/// `g` valid, groups == channels == `g.c` (the pixel stride); `x` holds image `row / oh`; `w`
/// points at [`PackedDwBf16::data`]; `out` writable for `ow` pixels of `c` floats at stride `ldo`.
pub unsafe extern "C" fn depthwise_bf16_scalar(
    g: *const ConvGeom,
    x: *const u16,
    w: *const u16,
    row: usize,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: the caller guarantees the ranges above; only in-image taps (`valid_range`) and
    // channels below `c` are read, and `ow` pixels of `c` floats written.
    unsafe {
        let g = &*g;
        if g.oh == 0 {
            return;
        }
        let c = g.c;
        let cp = round_up_16(c);
        let (img, oy) = (row / g.oh, row % g.oh);
        let xi = x.add(img * g.h * g.w * c);
        let by = (oy * g.sh) as isize - g.ph as isize;
        let (ky0, ky1) = float::valid_range(by, g.dh, g.kh, g.h);
        for ox in 0..g.ow {
            let bx = (ox * g.sw) as isize - g.pw as isize;
            let (kx0, kx1) = float::valid_range(bx, g.dw, g.kw, g.w);
            let o = out.add(ox * ldo);
            for ch in 0..c {
                let mut acc = 0.0f32;
                for ky in ky0..ky1 {
                    let iy = (by + (ky * g.dh) as isize) as usize;
                    for kx in kx0..kx1 {
                        let ix = (bx + (kx * g.dw) as isize) as usize;
                        let xv = widen(*xi.add((iy * g.w + ix) * c + ch));
                        acc = xv.mul_add(widen(*w.add((ky * g.kw + kx) * cp + ch)), acc);
                    }
                }
                *o.add(ch) = acc;
            }
        }
    }
}

/// AVX-512 bf16 depthwise row kernel with the contract of [`depthwise_bf16_scalar`]
/// (bit-identical results): 16 channels per zmm (widened as they are loaded, masked tail), pixel
/// chunks outer and channel blocks inner as [`float::depthwise_f32_avx512`] walks a row, a
/// channel block's weights in registers for 3x3 and 5x5 kernels, interior pixels 8 (3x3) or 4
/// (5x5) at a time as independent FMA chains.
///
/// # Safety
/// The CPU must support AVX-512F, BW and VL (use [`depthwise_bf16_best`]); ranges as for
/// [`depthwise_bf16_scalar`].
pub unsafe extern "C" fn depthwise_bf16_avx512(
    g: *const ConvGeom,
    x: *const u16,
    w: *const u16,
    row: usize,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: the caller guarantees the ranges and the CPU features `dw::row` requires.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            dw::row(&*g, x, w, row, out, ldo)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            depthwise_bf16_scalar(g, x, w, row, out, ldo)
        }
    }
}

/// Best bf16 depthwise kernel for the running CPU and its name (`"avx512bw"` or `"scalar"`).
pub fn depthwise_bf16_best() -> (DepthwiseBf16, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            return (depthwise_bf16_avx512 as DepthwiseBf16, "avx512bw");
        }
    }
    (depthwise_bf16_scalar as DepthwiseBf16, "scalar")
}

#[cfg(target_arch = "x86_64")]
mod dw {
    //! The AVX-512 bf16 depthwise row kernel; every function requires AVX-512F, BW (the masked
    //! 16-bit loads) and VL.
    use super::{float::valid_range, round_up_16, ConvGeom};
    use std::arch::x86_64::*;

    /// Output pixels per chunk of a row (a multiple of the interior blocks' 8 and 4).
    const CHUNK: usize = 16;

    #[inline]
    fn lane_mask(n: usize) -> u16 {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as u16
        }
    }

    /// The 16 bf16 values at `p` (lanes of `mask`, 0 elsewhere) widened exactly to f32.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn ld(p: *const u16, mask: u16) -> __m512 {
        // SAFETY: the caller guarantees the lanes of `mask` are readable; others are not read.
        let h = unsafe { _mm256_maskz_loadu_epi16(mask, p as *const i16) };
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }

    /// [`ld`] of all 16 lanes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn ld_full(p: *const u16) -> __m512 {
        // SAFETY: the caller guarantees 16 values are readable at `p`.
        let h = unsafe { _mm256_loadu_si256(p as *const __m256i) };
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }

    /// Per-row constants.
    struct Row<'a> {
        g: &'a ConvGeom,
        /// Image base pointer.
        xi: *const u16,
        /// `oy*sh - ph`.
        by: isize,
        /// Valid ky range.
        ky0: usize,
        ky1: usize,
        /// ox range whose taps are all inside the image horizontally.
        ox_lo: usize,
        ox_hi: usize,
    }

    /// One output row (see `depthwise_bf16_avx512`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn row(g: &ConvGeom, x: *const u16, w: *const u16, row: usize, out: *mut f32, ldo: usize) {
        // SAFETY: the caller guarantees its ranges: taps are clipped to the image
        // (`valid_range`), channels are masked to `c`, and each output pixel writes `c` floats at
        // `out + ox * ldo`.
        unsafe {
            if g.oh == 0 || g.ow == 0 || g.c == 0 {
                return;
            }
            let c = g.c;
            let cp = round_up_16(c);
            let (img, oy) = (row / g.oh, row % g.oh);
            let xi = x.add(img * g.h * g.w * c);
            let by = (oy * g.sh) as isize - g.ph as isize;
            let (ky0, ky1) = valid_range(by, g.dh, g.kh, g.h);
            // interior: ox*sw >= pw and ox*sw + (kw-1)*dw - pw <= w - 1
            let sw = g.sw.max(1);
            let ox_lo = g.pw.div_ceil(sw).min(g.ow);
            let span = (g.kw.max(1) - 1) * g.dw;
            let ox_hi = if g.w + g.pw > span { ((g.w - 1 + g.pw - span) / sw + 1).min(g.ow).max(ox_lo) } else { ox_lo };
            let d = Row { g, xi, by, ky0, ky1, ox_lo, ox_hi };
            // pixel chunks outer, channel blocks inner: the input streams in address order (the
            // f32 kernel's order, for the same reason); chunks end at `ox_lo + j * CHUNK`
            let mut b0 = 0;
            while b0 < g.ow {
                let b1 = if b0 < ox_lo { ox_lo + CHUNK } else { b0 + CHUNK }.min(g.ow);
                let mut cb = 0;
                while cb < c {
                    let mask = lane_mask(c - cb);
                    let (wb, ob) = (w.add(cb), out.add(cb));
                    match (g.kh, g.kw) {
                        (3, 3) => block::<3, 3, 8>(&d, cb, mask, wb, cp, ob, ldo, b0, b1),
                        (5, 5) => block::<5, 5, 4>(&d, cb, mask, wb, cp, ob, ldo, b0, b1),
                        _ => generic(&d, cb, mask, wb, cp, ob, ldo, b0, b1),
                    }
                    cb += 16;
                }
                b0 = b1;
            }
        }
    }

    /// One output pixel of one channel block (`wv` holds all taps); with `CHECK` the taps
    /// outside the image horizontally are skipped.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn pixel<const KH: usize, const KW: usize, const CHECK: bool>(
        d: &Row,
        cb: usize,
        mask: u16,
        wv: &[[__m512; KW]; KH],
        ox: usize,
    ) -> __m512 {
        // SAFETY: the caller (`block`) passes a pixel whose taps are inside the image (or, with
        // `CHECK`, only in-image taps are read); channels are masked.
        unsafe {
            let g = d.g;
            let bx = (ox * g.sw) as isize - g.pw as isize;
            let (kx0, kx1) = if CHECK { valid_range(bx, g.dw, KW, g.w) } else { (0, KW) };
            let mut acc = _mm512_setzero_ps();
            // a loop over every tap row with the clipped ones skipped unrolls with constant
            // indices, so the weights stay in registers
            for ky in 0..KH {
                if ky < d.ky0 || ky >= d.ky1 {
                    continue;
                }
                let iy = (d.by + (ky * g.dh) as isize) as usize;
                let xrow = d.xi.add(iy * g.w * g.c + cb);
                for kx in kx0..kx1 {
                    let ix = (bx + (kx * g.dw) as isize) as usize;
                    acc = _mm512_fmadd_ps(ld(xrow.add(ix * g.c), mask), wv[ky][kx], acc);
                }
            }
            acc
        }
    }

    /// `OB` adjacent interior output pixels of one channel block as `OB` independent FMA
    /// chains, each in `(ky, kx)` order, stored at `out + (ox + j)*ldo`; with `UNIT` (stride and
    /// dilation 1) the offsets are constants, so a load shared between `(j, kx)` pairs is issued
    /// once; `FULL`: all 16 channels (`mask` is all ones).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn multi<const KH: usize, const KW: usize, const OB: usize, const UNIT: bool, const FULL: bool>(
        d: &Row,
        cb: usize,
        mask: u16,
        wv: &[[__m512; KW]; KH],
        ox: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        // SAFETY: the caller (`block`) passes `OB` interior pixels (every tap inside the image);
        // only in-image offsets are dereferenced, `OB` output pixels written.
        unsafe {
            let g = d.g;
            let bx = (ox * g.sw) as isize - g.pw as isize;
            let mut acc = [_mm512_setzero_ps(); OB];
            for ky in 0..KH {
                if ky < d.ky0 || ky >= d.ky1 {
                    continue;
                }
                let iy = (d.by + (ky * g.dh) as isize) as usize;
                // pixel (iy, bx) may be left of the image; only in-image offsets are read
                let xrow = d.xi.add(iy * g.w * g.c + cb).wrapping_offset(bx * g.c as isize);
                for kx in 0..KW {
                    for (j, aj) in acc.iter_mut().enumerate() {
                        let off = if UNIT { (j + kx) * g.c } else { (j * g.sw + kx * g.dw) * g.c };
                        let p = xrow.wrapping_add(off);
                        // a full block's load folds into the widening `vpmovzxwd`
                        let xv = if FULL { ld_full(p) } else { ld(p, mask) };
                        *aj = _mm512_fmadd_ps(xv, wv[ky][kx], *aj);
                    }
                }
            }
            for (j, aj) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(out.add((ox + j) * ldo), mask, *aj);
            }
        }
    }

    /// Output pixels `b0..b1` of channel block `cb..cb+16` with a `KH x KW` kernel: edge pixels
    /// one at a time with their taps clipped, interior pixels `OB` at a time (an overlapping
    /// last block rewrites identical values), then 4, 2 and 1.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn block<const KH: usize, const KW: usize, const OB: usize>(
        d: &Row,
        cb: usize,
        mask: u16,
        wb: *const u16,
        cp: usize,
        out: *mut f32,
        ldo: usize,
        b0: usize,
        b1: usize,
    ) {
        // SAFETY: the caller (`row`) passes one channel block of a row inside its ranges; edge
        // pixels are clipped, and interior pixels go to `multi` only when every tap is inside.
        unsafe {
            let mut wv = [[_mm512_setzero_ps(); KW]; KH];
            for ky in 0..KH {
                for kx in 0..KW {
                    wv[ky][kx] = ld(wb.add((ky * KW + kx) * cp), mask);
                }
            }
            let (lo, hi) = (b0.max(d.ox_lo), b1.min(d.ox_hi).max(b0.max(d.ox_lo)));
            for ox in b0..b1.min(d.ox_lo) {
                _mm512_mask_storeu_ps(out.add(ox * ldo), mask, pixel::<KH, KW, true>(d, cb, mask, &wv, ox));
            }
            let unit = d.g.sw == 1 && d.g.dw == 1;
            // (a macro, not a closure: closures do not inherit `target_feature`)
            let full = mask == 0xffff;
            macro_rules! multi {
                ($n:expr, $ox:expr) => {
                    match (unit, full) {
                        (true, true) => multi::<KH, KW, { $n }, true, true>(d, cb, mask, &wv, $ox, out, ldo),
                        (true, false) => multi::<KH, KW, { $n }, true, false>(d, cb, mask, &wv, $ox, out, ldo),
                        (false, true) => multi::<KH, KW, { $n }, false, true>(d, cb, mask, &wv, $ox, out, ldo),
                        (false, false) => multi::<KH, KW, { $n }, false, false>(d, cb, mask, &wv, $ox, out, ldo),
                    }
                };
            }
            let mut ox = lo;
            while ox + OB <= hi {
                multi!(OB, ox);
                ox += OB;
            }
            if hi - ox > OB / 2 && d.ox_hi - d.ox_lo >= OB {
                multi!(OB, hi.saturating_sub(OB).max(d.ox_lo));
                ox = hi;
            }
            while ox + 4 <= hi && OB > 4 {
                multi!(4, ox);
                ox += 4;
            }
            while ox + 2 <= hi {
                multi!(2, ox);
                ox += 2;
            }
            while ox < hi {
                _mm512_mask_storeu_ps(out.add(ox * ldo), mask, pixel::<KH, KW, false>(d, cb, mask, &wv, ox));
                ox += 1;
            }
            for ox in b0.max(d.ox_hi)..b1 {
                _mm512_mask_storeu_ps(out.add(ox * ldo), mask, pixel::<KH, KW, true>(d, cb, mask, &wv, ox));
            }
        }
    }

    /// A channel block of a row for any kernel size (weights loaded per tap).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn generic(
        d: &Row,
        cb: usize,
        mask: u16,
        wb: *const u16,
        cp: usize,
        out: *mut f32,
        ldo: usize,
        b0: usize,
        b1: usize,
    ) {
        // SAFETY: the caller (`row`) passes one channel block of a row inside its ranges; taps
        // are clipped to the image, channels masked to `c`.
        unsafe {
            let g = d.g;
            for ox in b0..b1 {
                let bx = (ox * g.sw) as isize - g.pw as isize;
                let (kx0, kx1) = valid_range(bx, g.dw, g.kw, g.w);
                let mut acc = _mm512_setzero_ps();
                for ky in d.ky0..d.ky1 {
                    let iy = (d.by + (ky * g.dh) as isize) as usize;
                    let xrow = d.xi.add(iy * g.w * g.c + cb);
                    for kx in kx0..kx1 {
                        let ix = (bx + (kx * g.dw) as isize) as usize;
                        let wv = ld(wb.add((ky * g.kw + kx) * cp), mask);
                        acc = _mm512_fmadd_ps(ld(xrow.add(ix * g.c), mask), wv, acc);
                    }
                }
                _mm512_mask_storeu_ps(out.add(ox * ldo), mask, acc);
            }
        }
    }
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

    /// The bf16 depthwise kernels (scalar, and AVX-512 where the CPU has it) bit for bit against
    /// the f32 depthwise kernel on the widened input and weights (whose own tests check it
    /// against a reference), over every path of the row kernel: 3x3 and 5x5 (weights in
    /// registers, interior blocks, overlapping tails), another size (the generic loop), strides
    /// 1 and 2, dilation, padding, partial channel blocks, narrow and wide rows, two images.
    #[test]
    fn depthwise_is_the_f32_kernel_on_widened_values() {
        let mut kernels: Vec<(DepthwiseBf16, &str)> = vec![(depthwise_bf16_scalar, "scalar")];
        let (best, name) = depthwise_bf16_best();
        if name != "scalar" {
            kernels.push((best, name));
        }
        // (c, h, w, k, stride, pad, dilation)
        for (c, h, w, k, s, p, dl) in [
            (16, 5, 5, 3, 1, 1, 1),
            (32, 9, 37, 3, 1, 1, 1),
            (20, 8, 21, 3, 2, 1, 1),
            (48, 7, 7, 5, 1, 2, 1),
            (7, 6, 13, 5, 2, 2, 1),
            (17, 6, 9, 3, 1, 2, 2),
            (33, 4, 11, 2, 1, 0, 1),
            (16, 1, 1, 3, 1, 1, 1),
        ] {
            let n = 2;
            let (oh, ow) = ((h + 2 * p - dl * (k - 1) - 1) / s + 1, (w + 2 * p - dl * (k - 1) - 1) / s + 1);
            let g = ConvGeom {
                h,
                w,
                c,
                oh,
                ow,
                kh: k,
                kw: k,
                sh: s,
                sw: s,
                ph: p,
                pw: p,
                dh: dl,
                dw: dl,
                cin: 1,
                cin_offset: 0,
            };
            let x = values(n * h * w * c, (c * h + w) as u64);
            let wt = values(c * k * k, 5 + c as u64);
            let xf: Vec<f32> = x.iter().map(|&b| widen(b)).collect();
            let wf: Vec<f32> = wt.iter().map(|&b| widen(b)).collect();
            let pb = pack_depthwise_bf16(&wt, c, k, k).unwrap();
            assert_eq!(pb.data.len() as u128 * 2, packed_dw_bytes(c, k, k));
            let pf = float::pack_depthwise_f32(&wf, c, k, k).unwrap();
            let ldo = c.div_ceil(16) * 16 + 3;
            for row in 0..n * oh {
                let mut want = vec![f32::NAN; ow * ldo];
                // SAFETY: `x` holds `n` images, the packed weights `k*k` taps of `c` channels
                // padded to 16, and the outputs `ow` pixels of `c` floats at stride `ldo`.
                unsafe { float::depthwise_f32_scalar(&g, xf.as_ptr(), pf.data.as_ptr(), row, want.as_mut_ptr(), ldo) };
                for (kernel, name) in &kernels {
                    let mut got = vec![f32::NAN; ow * ldo];
                    // SAFETY: as above, with the bf16 input and weights.
                    unsafe { kernel(&g, x.as_ptr(), pb.data.as_ptr(), row, got.as_mut_ptr(), ldo) };
                    for ox in 0..ow {
                        for ch in 0..c {
                            let (a, b) = (got[ox * ldo + ch], want[ox * ldo + ch]);
                            assert_eq!(
                                a.to_bits(),
                                b.to_bits(),
                                "{name} c={c} {h}x{w} k{k} s{s}: row {row} ({ox}, {ch})"
                            );
                        }
                        assert!(got[ox * ldo + c..(ox + 1) * ldo].iter().all(|v| v.is_nan()), "{name}: wrote past c");
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
