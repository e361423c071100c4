//! Int8 microkernels: u8 x i8 -> i32 GEMM on packed weight panels, im2col for NHWC u8
//! activations, row sums (for weights with a nonzero zero point) and depthwise convolution.
//!
//! Invariants shared by every kernel in this module:
//! * **Exact i32 arithmetic.** Every product `u8 * i8` and every partial sum is formed in i32
//!   (AVX-512: `vpdpbusd`, which does not saturate, and `vpdpwssd` on zero-extended u8 x
//!   sign-extended i8; AVX2: widening to i16 and `vpmaddwd`, whose pair sums of `u8 * i8`
//!   products cannot saturate; scalar: wrapping i32). `pmaddubsw` is never used. Results agree
//!   bit for bit across the variants; sums that exceed i32 (k > 65793 with extreme values, or an
//!   extreme depthwise zero point) wrap identically (mod 2^32) in all of them.
//! * **No allocation, no panics on the hot path.** The `extern "C"` kernels only read and write
//!   through their pointer arguments, within the bounds documented on each; only the packing
//!   functions (called at compile time) allocate.
//! * **Memory touched.** GEMM: reads `m` rows of `kp` bytes of `a` (stride `lda`) and
//!   `round_up_16(nr) * kp` bytes of the panel; writes `m` rows of at most `round_up_16(nr)` i32
//!   of `c` (stride `ldc`). im2col: reads input pixels inside the image, channels
//!   `cin_offset..cin_offset+cin` only; writes `rows` rows of exactly `g.k()` bytes of `out`.
//!   Row sums: reads `m` rows of `k` bytes, writes `m` i32. Depthwise: reads in-image input
//!   pixels (channels `0..g.c`) and the packed weights (`kh*kw*round_up_64(c)` bytes), writes
//!   `ow` rows of exactly `g.c` i32 of `out` (stride `ldo`).
//! * No alignment requirements anywhere (all vector loads/stores are unaligned); masked loads
//!   never touch bytes outside the documented ranges.
//!
//! The x86-64 variants are selected at run time with `is_x86_feature_detected!` by
//! [`gemm_u8i8_best`] and [`depthwise_u8i8_best`] (and internally by [`im2col_u8`] and
//! [`row_sums_u8`]); calling a variant whose CPU features are absent is undefined behaviour. On
//! other architectures the SIMD entry points forward to the portable code so every symbol
//! always exists. AVX-512 intrinsics need Rust >= 1.89.
//!
//! Recommended GEMM driver: row blocks of 48 rows (a multiple of every register-block height
//! used: 6, 8 and 12) times 64-column panels, with a 48 x 64 i32 scratch tile (`ldc = 64`).
//! Measured on Zen 4 the VNNI kernel runs at ~98% of one 512-bit `vpdpbusd` per cycle for
//! every k >= 64; the row-block size (24..192) makes no measurable difference.

use super::{try_zeroed, ConvGeom};
use std::collections::TryReserveError;

#[inline]
fn round_up(x: usize, m: usize) -> usize {
    x.div_ceil(m) * m
}

/// Weights packed for u8 x i8 GEMM. Source layout `w[j*k + t]` (`n` rows = output channels,
/// `k` = reduction). See [`panel_offset`] / [`panel_width`] for the layout of `data`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackedI8 {
    /// Output channels (GEMM columns).
    pub n: usize,
    /// Reduction length.
    pub k: usize,
    /// `k` rounded up to a multiple of 4.
    pub kp: usize,
    /// Panels of at most 64 columns, each `panel_width * kp` bytes, starting at `panel_offset`.
    pub data: Vec<i8>,
    /// `col_sums[j] = sum_t w[j][t]` (len `n`), for the activation zero-point correction.
    pub col_sums: Vec<i32>,
}

/// Packs `w[j*k + t]` (`n x k`, i8) into 64-column panels. Panel `p` covers columns
/// `[64p, 64p + width)` with `width = panel_width(n, p)` (a multiple of 16), starts at byte
/// `panel_offset(p, kp)`, and inside it, for each k-group `g in 0..kp/4`, stores `width` columns x
/// 4 bytes: byte `(g, j, t) = w[64p + j][4g + t]`, zero for padded columns `j` or padded `t`.
/// So one 64-byte load is 16 columns x 4 consecutive k. Entries missing from a short `w`
/// (`w.len() < n*k`) read as 0.
pub fn pack_weights_i8(w: &[i8], n: usize, k: usize) -> Result<PackedI8, TryReserveError> {
    pack_i8_by(n, k, |j, t| w.get(j * k + t).copied().unwrap_or(0))
}

/// [`pack_weights_i8`] of a weight stored `[k, n]` (a matmul's right operand), read in place:
/// no transposed copy exists while packing.
pub fn pack_weights_i8_kn(w: &[i8], k: usize, n: usize) -> Result<PackedI8, TryReserveError> {
    pack_i8_by(n, k, |j, t| w.get(t * n + j).copied().unwrap_or(0))
}

/// Packs the `[n, k]` matrix whose element `(j, t)` is `get(j, t)`.
fn pack_i8_by(n: usize, k: usize, get: impl Fn(usize, usize) -> i8) -> Result<PackedI8, TryReserveError> {
    let kp = round_up(k, 4);
    let panels = n.div_ceil(64);
    let total = if panels == 0 { 0 } else { panel_offset(panels - 1, kp) + panel_width(n, panels - 1) * kp };
    let mut data = try_zeroed::<i8>(total)?;
    for p in 0..panels {
        let width = panel_width(n, p);
        let base = panel_offset(p, kp);
        for g in 0..kp / 4 {
            for j in 0..width {
                let col = 64 * p + j;
                if col >= n {
                    continue;
                }
                for t in 0..4 {
                    let kk = 4 * g + t;
                    if kk < k {
                        data[base + (g * width + j) * 4 + t] = get(col, kk);
                    }
                }
            }
        }
    }
    let mut col_sums = try_zeroed::<i32>(n)?;
    for (j, s) in col_sums.iter_mut().enumerate() {
        *s = (0..k).fold(0i32, |s, t| s.wrapping_add(get(j, t) as i32));
    }
    Ok(PackedI8 { n, k, kp, data, col_sums })
}

/// Bytes of [`PackedI8::data`] for `n` columns and reduction length `k`, computed without
/// packing: `round_up_16(n) * round_up_4(k)` (every panel but the last is 64 columns wide, the
/// last is rounded up to 16).
pub fn packed_bytes(n: usize, k: usize) -> u128 {
    (n as u128).div_ceil(16) * 16 * ((k as u128).div_ceil(4) * 4)
}

/// Byte offset of panel `p` in [`PackedI8::data`]: `64 * p * kp` (every panel but the last is
/// 64 columns wide).
pub fn panel_offset(p: usize, kp: usize) -> usize {
    64 * p * kp
}

/// Width in columns of panel `p` of an `n`-column matrix: `min(64, round_up_16(n - 64p))`
/// (0 if the panel does not exist).
pub fn panel_width(n: usize, p: usize) -> usize {
    round_up(n.saturating_sub(64 * p), 16).min(64)
}

/// Signature shared by the GEMM variants (see [`gemm_u8i8_scalar`] for the contract).
pub type GemmU8I8 = unsafe extern "C" fn(*const u8, usize, usize, *const i8, usize, *mut i32, usize, usize);

/// Portable GEMM. Contract (all variants): for `r < m` and `j < nr`,
/// `c[r*ldc + j] = sum_{t < kp} a[r*lda + t] as i32 * b(t, j)` where `b` points at one packed panel
/// of width `round_up_16(nr)` columns (`nr <= 64`; larger `nr` is clamped to 64) and `kp` is a
/// multiple of 4 (a remainder is ignored). Each row of `a` must have `kp` readable bytes; bytes
/// beyond the true `k` meet zero weights, so their (initialised) values do not matter. Columns
/// `nr..round_up_16(nr)` of each `c` row may be written too (so `ldc >= round_up_16(nr)`), never
/// beyond. This variant writes only columns `< nr`.
///
/// # Safety
/// Pointers must be valid for the ranges above.
pub unsafe extern "C" fn gemm_u8i8_scalar(
    a: *const u8,
    lda: usize,
    m: usize,
    b: *const i8,
    kp: usize,
    c: *mut i32,
    ldc: usize,
    nr: usize,
) {
    // SAFETY: the caller guarantees the ranges of this function's contract: `m` rows of `kp` readable bytes
    // of `a` at stride `lda`, one packed panel of `round_up_16(nr) * kp` bytes at `b`, and `m` rows of `nr`
    // writable i32 of `c` at stride `ldc`, not overlapping `a` or `b`; every access below stays in them.
    unsafe {
        let nr = nr.min(64);
        let width = round_up(nr, 16);
        let groups = kp / 4;
        let bytes = core::slice::from_raw_parts(b, groups * width * 4);
        for r in 0..m {
            let arow = core::slice::from_raw_parts(a.add(r * lda), groups * 4);
            let mut acc = [0i32; 64];
            for (ag, bg) in arow.chunks_exact(4).zip(bytes.chunks_exact(width * 4)) {
                let (a0, a1, a2, a3) = (ag[0] as i32, ag[1] as i32, ag[2] as i32, ag[3] as i32);
                for (s, bj) in acc[..width].iter_mut().zip(bg.chunks_exact(4)) {
                    let p = (a0 * bj[0] as i32 + a1 * bj[1] as i32) + (a2 * bj[2] as i32 + a3 * bj[3] as i32);
                    *s = s.wrapping_add(p);
                }
            }
            core::ptr::copy_nonoverlapping(acc.as_ptr(), c.add(r * ldc), nr);
        }
    }
}

/// AVX2 GEMM (same contract as [`gemm_u8i8_scalar`]): bytes are widened to i16 and multiplied
/// with `vpmaddwd` (exact). Writes columns up to `round_up_16(nr)`. Requires AVX2.
///
/// # Safety
/// As [`gemm_u8i8_scalar`], and the CPU must support AVX2.
pub unsafe extern "C" fn gemm_u8i8_avx2(
    a: *const u8,
    lda: usize,
    m: usize,
    b: *const i8,
    kp: usize,
    c: *mut i32,
    ldc: usize,
    nr: usize,
) {
    // SAFETY: the caller guarantees the ranges of `gemm_u8i8_scalar`'s contract and that the CPU has AVX2,
    // which `x86::gemm_avx2` requires (`gemm_u8i8_best` checks it).
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            x86::gemm_avx2(a, lda, m, b, kp, c, ldc, nr.min(64))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            gemm_u8i8_scalar(a, lda, m, b, kp, c, ldc, nr)
        }
    }
}

/// AVX-512 VNNI GEMM (same contract as [`gemm_u8i8_scalar`]): a register-blocked microkernel
/// of `MR` rows x up to 4 zmm column vectors (16 columns each) accumulating with `vpdpbusd`;
/// per k-group it loads the panel's vectors once and broadcasts 4 bytes of each A row. When
/// `nr % 16` is 1..=8 the last 16-column group is computed with a ymm (8 columns, two ymm
/// `vpdpbusd` issue per cycle). Row blocking (`MR`): 12 for nr <= 32, 8 for nr <= 48, 6 above
/// (all divide 48); a row remainder uses one exact-height tile. Writes columns up to
/// `round_up_8(nr)` (never beyond `round_up_16(nr)`). Requires AVX-512 F/BW/VL/VNNI.
///
/// # Safety
/// As [`gemm_u8i8_scalar`], and the CPU must support AVX-512 F, BW, VL and VNNI.
pub unsafe extern "C" fn gemm_u8i8_avx512vnni(
    a: *const u8,
    lda: usize,
    m: usize,
    b: *const i8,
    kp: usize,
    c: *mut i32,
    ldc: usize,
    nr: usize,
) {
    // SAFETY: the caller guarantees the ranges of `gemm_u8i8_scalar`'s contract and that the CPU has AVX-512
    // F/BW/VL/VNNI, which `x86::gemm_vnni` requires (`gemm_u8i8_best` checks them).
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            x86::gemm_vnni(a, lda, m, b, kp, c, ldc, nr.min(64))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            gemm_u8i8_scalar(a, lda, m, b, kp, c, ldc, nr)
        }
    }
}

/// The fastest GEMM variant this CPU supports, with its name (`"avx512vnni"`, `"avx2"` or
/// `"scalar"`).
pub fn gemm_u8i8_best() -> (GemmU8I8, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
        {
            return (gemm_u8i8_avx512vnni, "avx512vnni");
        }
        if is_x86_feature_detected!("avx2") {
            return (gemm_u8i8_avx2, "avx2");
        }
    }
    (gemm_u8i8_scalar, "scalar")
}

/// Width in bytes of the one vector store [`im2col_u8`] writes a whole kernel row with (16, 32 or
/// 64), for a convolution whose kernel row is contiguous in the input (`dw <= 1`, `cin == c`)
/// and `kw * cin` is at most 64 bytes (the 3-channel stems: ResNet's 7x7 rows of 21 bytes,
/// MobileNet's 3x3 rows of 9); `None` for other convolutions.
pub fn im2col_narrow_width(g: &ConvGeom) -> Option<usize> {
    let rb = g.kw * g.cin;
    if g.dw > 1 || g.cin != g.c || g.kh == 0 || rb == 0 || rb > 64 {
        return None;
    }
    Some(if rb <= 16 {
        16
    } else if rb <= 32 {
        32
    } else {
        64
    })
}

/// The leading dimension of an im2col buffer for `g`: `g.k()` rounded up to 16, or, for the
/// narrow kernel rows of [`im2col_narrow_width`], enough that the last kernel row's whole vector
/// store stays inside the row (`(kh - 1) * kw * cin + width`), so [`im2col_u8`] can write every
/// kernel row with one unmasked store.
pub fn im2col_ld_u8(g: &ConvGeom) -> usize {
    let span = match im2col_narrow_width(g) {
        Some(width) => (g.kh - 1) * g.kw * g.cin + width,
        None => 0,
    };
    round_up(g.k().max(span).max(1), 16)
}

/// im2col for rows `m0..m0+rows` of the convolution `*g` over the NHWC u8 input `x` (batch
/// images back to back, each `h*w*c` bytes). Row `r` of `out` (stride `ld >= g.k()`) receives,
/// for `(ky, kx, ci)` with `ci` fastest, `x[img][iy][ix][cin_offset + ci] ^ xor`, or `pad` when
/// `(iy, ix)` lies outside the image, where `iy = oy*sh + ky*dh - ph`, `ix = ox*sw + kx*dw - pw`
/// and `m = m0 + r` maps to `img = m / (oh*ow)`, `oy`, `ox`. Bytes `0..g.k()` of each row are
/// these; bytes `g.k()..ld` may be overwritten with other input bytes (a GEMM reads
/// `kp = round_up_4(k)` bytes per row and meets zero weights beyond `k`, so any initialised value
/// there gives the same sums). Contiguous channel runs are copied with `memcpy`; when `dw == 1`
/// and `cin == c` whole in-image kernel rows are one copy, and with AVX-512 a kernel row of at
/// most 64 bytes ([`im2col_narrow_width`]) is one masked load and one whole-vector store when
/// `ld >= (kh - 1) * kw * cin + width` ([`im2col_ld_u8`] gives such an `ld`).
///
/// # Safety
/// `g` must point to a valid geometry, `x` must cover every image the rows touch, and `out`
/// must have `rows` rows of `ld` writable bytes at stride `ld`.
pub unsafe extern "C" fn im2col_u8(
    g: *const ConvGeom,
    x: *const u8,
    m0: usize,
    rows: usize,
    out: *mut u8,
    ld: usize,
    pad: u8,
    xor: u8,
) {
    // SAFETY: `g` is null or points to a valid geometry, `x` covers every image the rows touch and `out` has
    // `rows` rows of `g.k()` writable bytes at stride `ld` (the caller's contract); the AVX-512 version is
    // called only after `is_x86_feature_detected!` confirmed AVX-512 F and BW.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
                let Some(gr) = g.as_ref() else { return };
                return x86::im2col_avx512(gr, x, m0, rows, out, ld, pad, xor);
            }
        }
        im2col_u8_scalar(g, x, m0, rows, out, ld, pad, xor)
    }
}

/// Portable [`im2col_u8`] (same contract; `memcpy` for channel runs). [`im2col_u8`] dispatches
/// to an AVX-512BW version (64-byte and masked copies) when the CPU has it.
///
/// # Safety
/// As [`im2col_u8`].
pub unsafe extern "C" fn im2col_u8_scalar(
    g: *const ConvGeom,
    x: *const u8,
    m0: usize,
    rows: usize,
    out: *mut u8,
    ld: usize,
    pad: u8,
    xor: u8,
) {
    // SAFETY: as in `im2col_u8`: the caller's contract bounds every pixel read (in-image pixels of images the
    // rows touch, channels `cin_offset..cin_offset + cin`) and every row written (`g.k()` bytes at stride
    // `ld`).
    unsafe {
        let Some(g) = g.as_ref() else { return };
        #[inline(always)]
        unsafe fn copy(src: *const u8, dst: *mut u8, n: usize, xor: u8) {
            // SAFETY: the caller (`im2col_body!`) passes `n` readable bytes at `src` (in-image pixels) and
            // `n` writable bytes at `dst` (inside one output row), which do not overlap.
            unsafe {
                if xor == 0 {
                    core::ptr::copy_nonoverlapping(src, dst, n);
                } else {
                    for i in 0..n {
                        *dst.add(i) = *src.add(i) ^ xor;
                    }
                }
            }
        }
        #[inline(always)]
        unsafe fn fill(dst: *mut u8, n: usize, pad: u8) {
            // SAFETY: the caller (`im2col_body!`) passes `n` writable bytes at `dst`, inside one output row.
            unsafe {
                core::ptr::write_bytes(dst, pad, n);
            }
        }
        im2col_body!(g, x, m0, rows, out, ld, pad, xor, copy, fill);
    }
}

/// The im2col loop, shared by the portable and the AVX-512 version (which differ in their
/// `copy(src, dst, n, xor)` and `fill(dst, n, pad)` helpers). Walks `(img, oy, ox)`
/// incrementally (no division per row).
macro_rules! im2col_body {
    ($g:ident, $x:ident, $m0:ident, $rows:ident, $out:ident, $ld:ident, $pad:ident, $xor:ident,
     $copy:ident, $fill:ident) => {{
        let g: ConvGeom = *$g; // local copy: stores through `out` cannot alias it
        let hw = g.oh * g.ow;
        if hw == 0 || $rows == 0 {
            return;
        }
        let c = g.c;
        let cin = g.cin;
        let kw = g.kw;
        let img_stride = g.h * g.w * c;
        let run_kx = g.dw <= 1 && cin == c;
        let row_bytes = kw * cin;
        let mut img = $m0 / hw;
        let rem = $m0 % hw;
        let (mut oy, mut ox) = (rem / g.ow, rem % g.ow);
        for r in 0..$rows {
            let orow = $out.add(r * $ld);
            let xi = $x.add(img * img_stride + g.cin_offset);
            let iy0 = (oy * g.sh) as isize - g.ph as isize;
            let ix0 = (ox * g.sw) as isize - g.pw as isize;
            let (kx_lo, kx_hi) = if g.dw <= 1 {
                let lo = (-ix0).clamp(0, kw as isize) as usize;
                let hi = (g.w as isize - ix0).clamp(0, kw as isize) as usize;
                (lo, hi.max(lo))
            } else {
                tap_range(ix0, g.dw, g.w, kw)
            };
            for ky in 0..g.kh {
                let iy = iy0 + (ky * g.dh.max(1)) as isize;
                let dst = orow.add(ky * row_bytes);
                if iy < 0 || iy >= g.h as isize || kx_lo == kx_hi {
                    $fill(dst, row_bytes, $pad);
                    continue;
                }
                if kx_lo > 0 {
                    $fill(dst, kx_lo * cin, $pad);
                }
                let srow = xi.add(iy as usize * g.w * c);
                if run_kx {
                    let ix = (ix0 + kx_lo as isize) as usize;
                    $copy(srow.add(ix * c), dst.add(kx_lo * cin), (kx_hi - kx_lo) * cin, $xor);
                } else {
                    for kx in kx_lo..kx_hi {
                        let ix = (ix0 + (kx * g.dw.max(1)) as isize) as usize;
                        $copy(srow.add(ix * c), dst.add(kx * cin), cin, $xor);
                    }
                }
                if kx_hi < kw {
                    $fill(dst.add(kx_hi * cin), (kw - kx_hi) * cin, $pad);
                }
            }
            ox += 1;
            if ox == g.ow {
                ox = 0;
                oy += 1;
                if oy == g.oh {
                    oy = 0;
                    img += 1;
                }
            }
        }
    }};
}
use im2col_body;

/// `out[r] = sum_{t < k} a[r*lda + t]` for `r < m` (wrapping i32), used to correct for a nonzero
/// weight zero point. Reads exactly `k` bytes per row (AVX-512BW `vpsadbw` when available).
///
/// # Safety
/// `a` must have `m` rows of `k` readable bytes at stride `lda`; `out` must have `m` i32.
pub unsafe extern "C" fn row_sums_u8(a: *const u8, lda: usize, m: usize, k: usize, out: *mut i32) {
    // SAFETY: the caller guarantees `a` has `m` rows of `k` readable bytes at stride `lda` and `out` has `m`
    // writable i32; the AVX-512 version runs only after `is_x86_feature_detected!` confirmed AVX-512 F and
    // BW.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
                return x86::row_sums_avx512(a, lda, m, k, out);
            }
        }
        row_sums_u8_scalar(a, lda, m, k, out)
    }
}

/// Portable [`row_sums_u8`] (same contract).
///
/// # Safety
/// As [`row_sums_u8`].
pub unsafe extern "C" fn row_sums_u8_scalar(a: *const u8, lda: usize, m: usize, k: usize, out: *mut i32) {
    // SAFETY: as in `row_sums_u8`: rows `r < m` of `k` bytes at stride `lda`, and `out[r]`, are inside the
    // caller's ranges.
    unsafe {
        for r in 0..m {
            let row = a.add(r * lda);
            let mut s = 0u32;
            for t in 0..k {
                s = s.wrapping_add(*row.add(t) as u32);
            }
            *out.add(r) = s as i32;
        }
    }
}

/// Depthwise weights packed as i8 `[kh*kw][round_up_64(c)]`: element `tap*cp + ch` is
/// `w[ch*kh*kw + tap]` (`tap = ky*kw + kx`), zero for padded channels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackedDw {
    /// Channels.
    pub c: usize,
    /// Kernel height and width.
    pub kh: usize,
    pub kw: usize,
    /// `kh*kw` rows of `round_up_64(c)` i8 weights.
    pub data: Vec<i8>,
}

/// Packs depthwise weights `w[ch*kh*kw + ky*kw + kx]` into [`PackedDw`] (missing entries of a
/// short `w` read as 0).
pub fn pack_depthwise_i8(w: &[i8], c: usize, kh: usize, kw: usize) -> Result<PackedDw, TryReserveError> {
    let cp = round_up(c, 64);
    let taps = kh * kw;
    let mut data = try_zeroed::<i8>(taps * cp)?;
    for ch in 0..c {
        for tap in 0..taps {
            data[tap * cp + ch] = w.get(ch * taps + tap).copied().unwrap_or(0);
        }
    }
    Ok(PackedDw { c, kh, kw, data })
}

/// Bytes of [`PackedDw::data`] for `c` channels and a `kh x kw` kernel: `kh * kw * round_up_64(c)`.
pub fn packed_dw_bytes(c: usize, kh: usize, kw: usize) -> u128 {
    (kh as u128) * (kw as u128) * ((c as u128).div_ceil(64) * 64)
}

/// Signature shared by the depthwise variants (see [`depthwise_u8i8_scalar`]).
pub type DepthwiseU8I8 = unsafe extern "C" fn(*const ConvGeom, *const u8, i32, *const i8, usize, *mut i32, usize);

/// One output row of a depthwise convolution (groups == channels == `g.c`, one input channel
/// per group, multiplier 1): for `ox < ow` and `ch < c`,
/// `out[ox*ldo + ch] = sum_{ky,kx} (x[img][iy][ix][ch] as i32 - zx) * w(ch, ky, kx)` over the
/// in-image taps only (out-of-image taps contribute 0), with `row = img*oh + oy`; `w` is
/// [`PackedDw::data`]. Wrapping (exact) i32. Pixel stride of `x` is `g.c`; `cin`/`cin_offset`
/// are ignored.
///
/// # Safety
/// `g` valid; `x` covers image `img`; `w` has `kh*kw*round_up_64(c)` bytes; `out` has `ow` rows
/// of `c` writable i32 at stride `ldo >= c`.
pub unsafe extern "C" fn depthwise_u8i8_scalar(
    g: *const ConvGeom,
    x: *const u8,
    zx: i32,
    w: *const i8,
    row: usize,
    out: *mut i32,
    ldo: usize,
) {
    // SAFETY: the caller guarantees `g` is null or valid, `x` covers image `row / oh` (only in-image taps are
    // read: `DwRow` and `kx_range` clip them), `w` has `kh * kw * round_up_64(c)` bytes, and `out` has `ow`
    // rows of `c` writable i32 at stride `ldo >= c`.
    unsafe {
        let Some(g) = g.as_ref() else { return };
        let Some(rg) = DwRow::new(g, row) else { return };
        let c = g.c;
        let cp = round_up(c, 64);
        let xi = x.add(rg.img * g.h * g.w * c);
        for ox in 0..g.ow {
            let (kx_lo, kx_hi, ix0) = rg.kx_range(g, ox);
            let o = core::slice::from_raw_parts_mut(out.add(ox * ldo), c);
            o.fill(0);
            for ky in rg.ky_lo..rg.ky_hi {
                let iy = (rg.iy0 + (ky * g.dh) as isize) as usize;
                for kx in kx_lo..kx_hi {
                    let ix = (ix0 + (kx * g.dw) as isize) as usize;
                    let xs = core::slice::from_raw_parts(xi.add((iy * g.w + ix) * c), c);
                    let ws = core::slice::from_raw_parts(w.add((ky * g.kw + kx) * cp), c);
                    for ((s, &xv), &wv) in o.iter_mut().zip(xs).zip(ws) {
                        *s = s.wrapping_add((xv as i32).wrapping_sub(zx).wrapping_mul(wv as i32));
                    }
                }
            }
        }
    }
}

/// AVX-512 depthwise row (same contract as [`depthwise_u8i8_scalar`]): 16 channels per zmm in
/// i32 lanes (masked loads/stores for the channel remainder). Interior pixels use `vpdpwssd`
/// on zero-extended inputs with the zero point folded into the initial accumulator
/// (`-zx * sum w`), widening each input pixel once per block of output pixels; edge pixels
/// use `(x - zx) * w` with `vpmulld`. Specialised for kw in {3, 5} with stride 1 or 2
/// (dilation 1); other shapes take a generic path. Requires AVX-512 F/BW/VL/VNNI.
///
/// # Safety
/// As [`depthwise_u8i8_scalar`], and the CPU must support AVX-512 F, BW, VL and VNNI.
pub unsafe extern "C" fn depthwise_u8i8_avx512(
    g: *const ConvGeom,
    x: *const u8,
    zx: i32,
    w: *const i8,
    row: usize,
    out: *mut i32,
    ldo: usize,
) {
    // SAFETY: the caller guarantees `depthwise_u8i8_scalar`'s ranges and that the CPU has AVX-512
    // F/BW/VL/VNNI, which `x86::depthwise_avx512` requires (`depthwise_u8i8_best` checks them).
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            let Some(gr) = g.as_ref() else { return };
            x86::depthwise_avx512(gr, x, zx, w, row, out, ldo)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            depthwise_u8i8_scalar(g, x, zx, w, row, out, ldo)
        }
    }
}

/// [`depthwise_u8i8_scalar`]'s row computed in blocks of 32 channels whose i32 accumulators
/// stay in vector registers (`(x - zx) * w` widened to i32, wrapping adds: the same exact sums);
/// the last `c % 16` channels one at a time. Compiled for AVX2 (and AVX-512 and the baseline)
/// by [`qforge_ir::multiversion`].
///
/// # Safety
/// As [`depthwise_u8i8_scalar`].
pub unsafe extern "C" fn depthwise_u8i8_blocks(
    g: *const ConvGeom,
    x: *const u8,
    zx: i32,
    w: *const i8,
    row: usize,
    out: *mut i32,
    ldo: usize,
) {
    // SAFETY: the caller guarantees `depthwise_u8i8_scalar`'s ranges: `x` covers image `row / oh` (`h * w *
    // c` bytes from its start), `w` has `kh * kw * round_up_64(c)` bytes and `out` `ow` rows of `c` writable
    // i32 at stride `ldo >= c`; the slices below are exactly those.
    unsafe {
        let Some(g) = g.as_ref() else { return };
        let Some(rg) = DwRow::new(g, row) else { return };
        if g.ow == 0 || g.c == 0 {
            return;
        }
        let plane = g.h * g.w * g.c;
        let xi = core::slice::from_raw_parts(x.add(rg.img * plane), plane);
        let ws = core::slice::from_raw_parts(w, g.kh * g.kw * round_up(g.c, 64));
        let os = core::slice::from_raw_parts_mut(out, (g.ow - 1) * ldo + g.c);
        dw_u8_row_blocks(g, &rg, xi, zx, ws, os, ldo);
    }
}

/// The channels `cb..cb + CB` of one output pixel: see [`depthwise_u8i8_blocks`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn dw_u8_block<const CB: usize>(
    g: &ConvGeom,
    rg: &DwRow,
    xi: &[u8],
    zx: i32,
    w: &[i8],
    (kx_lo, kx_hi, ix0): (usize, usize, isize),
    cb: usize,
    o: &mut [i32],
) {
    let cp = round_up(g.c, 64);
    let mut acc = [0i32; CB];
    for ky in rg.ky_lo..rg.ky_hi {
        let iy = (rg.iy0 + (ky * g.dh) as isize) as usize;
        for kx in kx_lo..kx_hi {
            let ix = (ix0 + (kx * g.dw) as isize) as usize;
            let p = (iy * g.w + ix) * g.c + cb;
            let q = (ky * g.kw + kx) * cp + cb;
            let (xs, wv) = (&xi[p..p + CB], &w[q..q + CB]);
            for l in 0..CB {
                acc[l] = acc[l].wrapping_add((xs[l] as i32).wrapping_sub(zx).wrapping_mul(wv[l] as i32));
            }
        }
    }
    o[cb..cb + CB].copy_from_slice(&acc);
}

qforge_ir::multiversion! {
    baseline = dw_u8_row_blocks_baseline;
    /// One output row of image `xi` into `out` (see [`depthwise_u8i8_blocks`]).
    fn dw_u8_row_blocks(g: &ConvGeom, rg: &DwRow, xi: &[u8], zx: i32, w: &[i8], out: &mut [i32], ldo: usize) -> () {
        let c = g.c;
        let cp = round_up(c, 64);
        for ox in 0..g.ow {
            let cols = rg.kx_range(g, ox);
            let o = &mut out[ox * ldo..ox * ldo + c];
            let mut cb = 0;
            while cb + 32 <= c {
                dw_u8_block::<32>(g, rg, xi, zx, w, cols, cb, o);
                cb += 32;
            }
            if cb + 16 <= c {
                dw_u8_block::<16>(g, rg, xi, zx, w, cols, cb, o);
                cb += 16;
            }
            let (kx_lo, kx_hi, ix0) = cols;
            for ch in cb..c {
                let mut acc = 0i32;
                for ky in rg.ky_lo..rg.ky_hi {
                    let iy = (rg.iy0 + (ky * g.dh) as isize) as usize;
                    for kx in kx_lo..kx_hi {
                        let ix = (ix0 + (kx * g.dw) as isize) as usize;
                        let xv = xi[(iy * g.w + ix) * c + ch] as i32;
                        acc = acc.wrapping_add(xv.wrapping_sub(zx).wrapping_mul(w[(ky * g.kw + kx) * cp + ch] as i32));
                    }
                }
                o[ch] = acc;
            }
        }
    }
}

/// The fastest depthwise variant this CPU supports, with its name (`"avx512"`, `"avx2"` or
/// `"scalar"`).
pub fn depthwise_u8i8_best() -> (DepthwiseU8I8, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
        {
            return (depthwise_u8i8_avx512, "avx512");
        }
        if is_x86_feature_detected!("avx2") {
            return (depthwise_u8i8_blocks, "avx2");
        }
    }
    (depthwise_u8i8_scalar, "scalar")
}

/// Per-output-row tap bounds of a depthwise convolution.
struct DwRow {
    img: usize,
    iy0: isize,
    ky_lo: usize,
    ky_hi: usize,
}

impl DwRow {
    #[inline]
    fn new(g: &ConvGeom, row: usize) -> Option<DwRow> {
        if g.oh == 0 {
            return None;
        }
        let img = row / g.oh;
        let oy = row % g.oh;
        let iy0 = (oy * g.sh) as isize - g.ph as isize;
        let (ky_lo, ky_hi) = tap_range(iy0, g.dh, g.h, g.kh);
        Some(DwRow { img, iy0, ky_lo, ky_hi })
    }

    /// `(kx_lo, kx_hi, ix0)` for output column `ox`.
    #[inline]
    fn kx_range(&self, g: &ConvGeom, ox: usize) -> (usize, usize, isize) {
        let ix0 = (ox * g.sw) as isize - g.pw as isize;
        let (lo, hi) = tap_range(ix0, g.dw, g.w, g.kw);
        (lo, hi, ix0)
    }
}

/// Taps `t in lo..hi` with `0 <= i0 + t*d < n`, `t < k` (`d == 0` treated as 1).
#[inline]
fn tap_range(i0: isize, d: usize, n: usize, k: usize) -> (usize, usize) {
    let d = d.max(1) as isize;
    let n = n as isize;
    let lo = if i0 < 0 { ((-i0 + d - 1) / d) as usize } else { 0 }.min(k);
    let hi = if n - 1 - i0 < 0 { 0 } else { ((n - 1 - i0) / d + 1) as usize }.min(k);
    (lo, hi.max(lo))
}

/// The x86-64 kernels. Every function here is `unsafe` for two reasons its callers answer for:
/// the CPU features in its `target_feature` attribute (checked with `is_x86_feature_detected!`
/// by the dispatching entry points, or the caller has the same features), and the pointer
/// ranges of the public kernel it implements (documented on that kernel).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop, clippy::too_many_arguments)] // register tiles are indexed
mod x86 {
    use super::{tap_range, ConvGeom, DwRow};
    use core::arch::x86_64::*;

    /// One register tile: `MR` rows x (`NV` zmm + `H` (0 or 1) ymm) columns over all `kg`
    /// k-groups of a panel whose width is `16 * (NV + H)` columns: writes
    /// `c[r][0..16*NV + 8*H] = A * B`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn tile_vnni<const MR: usize, const NV: usize, const H: usize>(
        a: *const u8,
        lda: usize,
        b: *const i8,
        kg: usize,
        c: *mut i32,
        ldc: usize,
    ) {
        // SAFETY: the caller (`rows_vnni`) passes `MR` rows of `4 * kg` readable bytes of `a` at stride
        // `lda`, a panel of `kg` groups of `16 * (NV + H)` columns x 4 bytes at `b`, and `MR` rows of `16 *
        // NV + 8 * H` writable i32 of `c` at stride `ldc`; every load and store below is inside them. The
        // target features are this function's own, which its callers have.
        unsafe {
            let bs = (NV + H) * 64;
            let mut acc = [[_mm512_setzero_si512(); NV]; MR];
            let mut acch = [[_mm256_setzero_si256(); H]; MR];
            let mut bp = b;
            let mut ap = a;
            // The loop body is written with small non-`pure` asm blocks, which LLVM keeps in program
            // order: with intrinsics its scheduler hoists all the A broadcasts of a step above the
            // vpdpbusd chain and spills accumulators (measured 30-50% slower for some shapes).
            macro_rules! step {
            ($off:expr) => {{
                let mut bv = [_mm512_setzero_si512(); NV];
                for v in 0..NV {
                    core::arch::asm!(
                        "vmovdqu64 {b}, zmmword ptr [{p}]",
                        p = in(reg) bp.add($off * bs + 64 * v),
                        b = lateout(zmm_reg) bv[v],
                        options(nostack, preserves_flags, readonly),
                    );
                }
                let mut bh = [_mm256_setzero_si256(); H];
                for v in 0..H {
                    core::arch::asm!(
                        "vmovdqu32 {b:y}, ymmword ptr [{p}]",
                        p = in(reg) bp.add($off * bs + 64 * NV),
                        b = lateout(zmm_reg) bh[v],
                        options(nostack, preserves_flags, readonly),
                    );
                }
                for r in 0..MR {
                    let av: __m512i;
                    core::arch::asm!(
                        "vpbroadcastd {t}, dword ptr [{p}]",
                        p = in(reg) ap.add(r * lda + 4 * $off),
                        t = lateout(zmm_reg) av,
                        options(nostack, preserves_flags, readonly),
                    );
                    for v in 0..NV {
                        core::arch::asm!(
                            "vpdpbusd {c}, {a}, {b}",
                            c = inout(zmm_reg) acc[r][v],
                            a = in(zmm_reg) av,
                            b = in(zmm_reg) bv[v],
                            options(nostack, preserves_flags, nomem),
                        );
                    }
                    for v in 0..H {
                        core::arch::asm!(
                            "vpdpbusd {c:y}, {u:y}, {b:y}",
                            c = inout(zmm_reg) acch[r][v],
                            u = in(zmm_reg) _mm512_castsi512_si256(av),
                            b = in(zmm_reg) bh[v],
                            options(nostack, preserves_flags, nomem),
                        );
                    }
                }
            }};
        }
            let mut g = 0;
            while g + 2 <= kg {
                step!(0);
                step!(1);
                bp = bp.add(2 * bs);
                ap = ap.add(8);
                g += 2;
            }
            if g < kg {
                step!(0);
            }
            for r in 0..MR {
                for v in 0..NV {
                    _mm512_storeu_si512(c.add(r * ldc + 16 * v).cast(), acc[r][v]);
                }
                for v in 0..H {
                    _mm256_storeu_si256(c.add(r * ldc + 16 * NV).cast(), acch[r][v]);
                }
            }
        }
    }

    /// All `m` rows in `MR`-row tiles plus one exact-height remainder tile.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn rows_vnni<const MR: usize, const NV: usize, const H: usize>(
        a: *const u8,
        lda: usize,
        m: usize,
        b: *const i8,
        kg: usize,
        c: *mut i32,
        ldc: usize,
    ) {
        // SAFETY: the caller (`gemm_vnni`) passes `gemm_u8i8_scalar`'s ranges; each tile gets rows `i..i +
        // MR` (or the remainder) of `a` and `c`, inside them.
        unsafe {
            let mut i = 0;
            while i + MR <= m {
                tile_vnni::<MR, NV, H>(a.add(i * lda), lda, b, kg, c.add(i * ldc), ldc);
                i += MR;
            }
            let rem = m - i;
            let (a, c) = (a.add(i * lda), c.add(i * ldc));
            macro_rules! rem {
            ($($r:literal)*) => {
                match rem {
                    $($r if $r < MR => tile_vnni::<$r, NV, H>(a, lda, b, kg, c, ldc),)*
                    _ => {}
                }
            };
        }
            rem!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn gemm_vnni(
        a: *const u8,
        lda: usize,
        m: usize,
        b: *const i8,
        kp: usize,
        c: *mut i32,
        ldc: usize,
        nr: usize,
    ) {
        // SAFETY: the caller (`gemm_u8i8_avx512vnni`) guarantees `gemm_u8i8_scalar`'s ranges with `nr <= 64`;
        // the panel width chosen below is `round_up_16(nr)` or `nr` rounded to 8, never wider than the panel
        // or `ldc`.
        unsafe {
            let kg = kp / 4;
            // A last group of 1..=8 columns uses a ymm (two ymm vpdpbusd issue per cycle, one zmm).
            let half = matches!(nr % 16, 1..=8);
            match (nr.div_ceil(16), half) {
                (1, true) => rows_vnni::<12, 0, 1>(a, lda, m, b, kg, c, ldc),
                (1, false) => rows_vnni::<12, 1, 0>(a, lda, m, b, kg, c, ldc),
                (2, true) => rows_vnni::<12, 1, 1>(a, lda, m, b, kg, c, ldc),
                (2, false) => rows_vnni::<12, 2, 0>(a, lda, m, b, kg, c, ldc),
                (3, true) => rows_vnni::<8, 2, 1>(a, lda, m, b, kg, c, ldc),
                (3, false) => rows_vnni::<8, 3, 0>(a, lda, m, b, kg, c, ldc),
                (4, true) => rows_vnni::<6, 3, 1>(a, lda, m, b, kg, c, ldc),
                (4, false) => rows_vnni::<6, 4, 0>(a, lda, m, b, kg, c, ldc),
                _ => {}
            }
        }
    }

    /// AVX2 tile: `MR` rows x 16 columns (two ymm of 8 i32) starting at column `col` of a panel
    /// whose k-group stride is `gs` bytes.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn tile_avx2<const MR: usize>(
        a: *const u8,
        lda: usize,
        b: *const i8,
        gs: usize,
        kg: usize,
        c: *mut i32,
        ldc: usize,
    ) {
        // SAFETY: the caller (`gemm_avx2`) passes `MR` rows of `4 * kg` readable bytes of `a` at stride
        // `lda`, the 16-column slice of a panel with group stride `gs` at `b`, and `MR` rows of 16 writable
        // i32 of `c` at stride `ldc`.
        unsafe {
            let mut acc = [[_mm256_setzero_si256(); 2]; MR];
            let lo8 = _mm256_set1_epi16(0x00ff);
            let mut bp = b;
            let mut ap = a;
            for _ in 0..kg {
                // Per i32 lane: bytes b0 b1 b2 b3 -> even (b0, b2) and odd (b1, b3) as i16.
                let mut be = [_mm256_setzero_si256(); 2];
                let mut bo = [_mm256_setzero_si256(); 2];
                for v in 0..2 {
                    let raw = _mm256_loadu_si256(bp.add(32 * v).cast());
                    be[v] = _mm256_srai_epi16::<8>(_mm256_slli_epi16::<8>(raw));
                    bo[v] = _mm256_srai_epi16::<8>(raw);
                }
                for r in 0..MR {
                    let raw = _mm256_set1_epi32((ap.add(r * lda) as *const i32).read_unaligned());
                    let ae = _mm256_and_si256(raw, lo8);
                    let ao = _mm256_srli_epi16::<8>(raw);
                    for v in 0..2 {
                        let p = _mm256_add_epi32(_mm256_madd_epi16(ae, be[v]), _mm256_madd_epi16(ao, bo[v]));
                        acc[r][v] = _mm256_add_epi32(acc[r][v], p);
                    }
                }
                bp = bp.add(gs);
                ap = ap.add(4);
            }
            for r in 0..MR {
                for v in 0..2 {
                    _mm256_storeu_si256(c.add(r * ldc + 8 * v).cast(), acc[r][v]);
                }
            }
        }
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn gemm_avx2(
        a: *const u8,
        lda: usize,
        m: usize,
        b: *const i8,
        kp: usize,
        c: *mut i32,
        ldc: usize,
        nr: usize,
    ) {
        // SAFETY: the caller (`gemm_u8i8_avx2`) guarantees `gemm_u8i8_scalar`'s ranges with `nr <= 64`; each
        // 16-column group of the panel and of `c` (up to `round_up_16(nr)` columns, which the contract
        // allows) is inside them.
        unsafe {
            const MR: usize = 4;
            let kg = kp / 4;
            let width = nr.div_ceil(16) * 16;
            let gs = width * 4;
            let mut col = 0;
            while col < width {
                let bcol = b.add(col * 4);
                let mut i = 0;
                while i + MR <= m {
                    tile_avx2::<MR>(a.add(i * lda), lda, bcol, gs, kg, c.add(i * ldc + col), ldc);
                    i += MR;
                }
                let (ar, cr) = (a.add(i * lda), c.add(i * ldc + col));
                match m - i {
                    1 => tile_avx2::<1>(ar, lda, bcol, gs, kg, cr, ldc),
                    2 => tile_avx2::<2>(ar, lda, bcol, gs, kg, cr, ldc),
                    3 => tile_avx2::<3>(ar, lda, bcol, gs, kg, cr, ldc),
                    _ => {}
                }
                col += 16;
            }
        }
    }

    /// `n` bytes `src ^ xor` to `dst` with 64-byte vectors and a masked tail.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn copy512(src: *const u8, dst: *mut u8, n: usize, xor: u8) {
        // SAFETY: the caller (`im2col_body!`) passes `n` readable bytes at `src` and `n` writable bytes at
        // `dst`; full 64-byte vectors cover `0..n - n % 64` and the masked tail touches only bytes below `n`.
        unsafe {
            let xv = _mm512_set1_epi8(xor as i8);
            let mut i = 0;
            while i + 64 <= n {
                let v = _mm512_loadu_si512(src.add(i).cast());
                _mm512_storeu_si512(dst.add(i).cast(), _mm512_xor_si512(v, xv));
                i += 64;
            }
            if i < n {
                let m: __mmask64 = (1u64 << (n - i)) - 1;
                let v = _mm512_maskz_loadu_epi8(m, src.add(i).cast());
                _mm512_mask_storeu_epi8(dst.add(i).cast(), m, _mm512_xor_si512(v, xv));
            }
        }
    }

    /// `n` bytes of `pad` at `dst`.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn fill512(dst: *mut u8, n: usize, pad: u8) {
        // SAFETY: the caller passes `n` writable bytes at `dst`; full vectors and the masked tail stay below
        // `n`.
        unsafe {
            let pv = _mm512_set1_epi8(pad as i8);
            let mut i = 0;
            while i + 64 <= n {
                _mm512_storeu_si512(dst.add(i).cast(), pv);
                i += 64;
            }
            if i < n {
                let m: __mmask64 = (1u64 << (n - i)) - 1;
                _mm512_mask_storeu_epi8(dst.add(i).cast(), m, pv);
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn im2col_avx512(
        g: &ConvGeom,
        x: *const u8,
        m0: usize,
        rows: usize,
        out: *mut u8,
        ld: usize,
        pad: u8,
        xor: u8,
    ) {
        // SAFETY: the caller (`im2col_u8`) guarantees its contract's ranges and has checked AVX-512 F and BW
        // (the narrow path's own features).
        unsafe {
            if let Some(width) = super::im2col_narrow_width(g) {
                if ld >= (g.kh - 1) * g.kw * g.cin + width {
                    return im2col_narrow(g, x, m0, rows, out, ld, pad, xor, width);
                }
            }
            im2col_body!(g, x, m0, rows, out, ld, pad, xor, copy512, fill512);
        }
    }

    /// [`im2col_avx512`] for a kernel row of `rb = kw * cin <= 64` contiguous bytes (`dw <= 1`,
    /// `cin == c`) when `ld >= (kh - 1) * rb + width`: a row whose whole window lies inside the
    /// image is `kh` loads of `rb` bytes (whole vectors while they stay inside the image, the
    /// bytes past `rb` never stored into the row's first `k`), each stored as one vector of `width`
    /// bytes at byte `ky * rb` of the row, in increasing `ky`, so the bytes a store writes beyond
    /// its kernel row are overwritten by the next kernel row's store, and the last one's stay in
    /// `k..ld` (other input bytes; see [`super::im2col_u8`]). Rows touching the padding go
    /// through the general loop, one row at a time.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn im2col_narrow(
        g: &ConvGeom,
        x: *const u8,
        m0: usize,
        rows: usize,
        out: *mut u8,
        ld: usize,
        pad: u8,
        xor: u8,
        width: usize,
    ) {
        // SAFETY: the caller (`im2col_avx512`) guarantees `im2col_u8`'s ranges (`rows` rows of `ld` writable
        // bytes at `out`, and `x` covering every image the rows touch) and `ld >= (kh - 1) * rb + width`, so
        // every store (bytes `ky * rb .. ky * rb + width` of a row, `ky < kh`) stays in its row; an interior
        // row's loads read the `rb` bytes (masked) of in-image pixels `ix0 .. ix0 + kw` of rows `iy0 + ky *
        // dh` of its image, or `width` bytes where those stay inside the image (`whole`), all inside `x`.
        unsafe {
            let kh = g.kh;
            let rb = g.kw * g.cin;
            let mask: __mmask64 = if rb >= 64 { !0 } else { (1u64 << rb) - 1 };
            let xv = _mm512_set1_epi8(xor as i8);
            let ky_stride = g.dh.max(1) * g.w * g.c;
            let last_ky = (kh - 1) * ky_stride;
            g.walk_windows(
                m0,
                rows,
                |r, m| {
                    let (orow, one) = (out.add(r * ld), 1usize);
                    im2col_body!(g, x, m, one, orow, ld, pad, xor, copy512, fill512);
                },
                |r, first, img_end| {
                    // whole-vector loads where `width` bytes stay inside this image (masked
                    // byte loads cost more), masked ones near its end
                    let whole = first + last_ky + width <= img_end;
                    let (src, dst) = (x.add(first), out.add(r * ld));
                    match width {
                        16 => narrow_row::<16>(src, dst, kh, ky_stride, rb, xv, mask, whole),
                        32 => narrow_row::<32>(src, dst, kh, ky_stride, rb, xv, mask, whole),
                        _ => narrow_row::<64>(src, dst, kh, ky_stride, rb, xv, mask, whole),
                    }
                },
            );
        }
    }

    /// The `kh` kernel rows of one im2col row whose window lies inside the image: kernel row
    /// `ky` is the `rb` bytes at `src + ky * ky_stride` (a whole `W`-byte load when `whole`, else a
    /// masked one), xored and stored as `W` bytes at `dst + ky * rb`, in increasing `ky`.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn narrow_row<const W: usize>(
        src: *const u8,
        dst: *mut u8,
        kh: usize,
        ky_stride: usize,
        rb: usize,
        xv: __m512i,
        mask: __mmask64,
        whole: bool,
    ) {
        // SAFETY: the caller (`im2col_narrow`) passes `src` at the window's first in-image pixel, whose `kh`
        // kernel rows hold `rb` readable bytes each (and `W` when `whole`), and `dst` at an output row with
        // `(kh - 1) * rb + W` writable bytes.
        unsafe {
            for ky in 0..kh {
                let p = src.add(ky * ky_stride);
                let v = if whole {
                    match W {
                        16 => _mm512_castsi128_si512(_mm_loadu_si128(p.cast())),
                        32 => _mm512_castsi256_si512(_mm256_loadu_si256(p.cast())),
                        _ => _mm512_loadu_si512(p.cast()),
                    }
                } else {
                    _mm512_maskz_loadu_epi8(mask, p.cast())
                };
                let v = _mm512_xor_si512(v, xv);
                let d = dst.add(ky * rb);
                match W {
                    16 => _mm_storeu_si128(d.cast(), _mm512_castsi512_si128(v)),
                    32 => _mm256_storeu_si256(d.cast(), _mm512_castsi512_si256(v)),
                    _ => _mm512_storeu_si512(d.cast(), v),
                }
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn row_sums_avx512(a: *const u8, lda: usize, m: usize, k: usize, out: *mut i32) {
        // SAFETY: the caller guarantees `m` rows of `k` readable bytes of `a` at stride `lda` and `m`
        // writable i32 at `out`; the masked tail reads only bytes below `k`.
        unsafe {
            let zero = _mm512_setzero_si512();
            for r in 0..m {
                let row = a.add(r * lda);
                let mut acc = _mm512_setzero_si512();
                let mut t = 0;
                while t + 64 <= k {
                    let v = _mm512_loadu_si512(row.add(t).cast());
                    acc = _mm512_add_epi64(acc, _mm512_sad_epu8(v, zero));
                    t += 64;
                }
                if t < k {
                    let mask: __mmask64 = (1u64 << (k - t)) - 1;
                    let v = _mm512_maskz_loadu_epi8(mask, row.add(t).cast());
                    acc = _mm512_add_epi64(acc, _mm512_sad_epu8(v, zero));
                }
                *out.add(r) = _mm512_reduce_add_epi64(acc) as i32;
            }
        }
    }

    /// Most taps the fast depthwise path keeps widened on the stack (7x7 and 8x8 fit).
    const DW_MAX_TAPS: usize = 64;

    /// Depthwise row, 16 channels per step. Per channel block the tap weights are widened
    /// to i32 lanes once (stack buffer). Interior output pixels (all `kx` taps inside the image)
    /// accumulate `vpdpwssd(acc, zext(x), w)`: the x lanes' high i16 is zero, so each lane adds
    /// exactly `x * w`; the zero point is applied once through the initial value
    /// `-zx * sum_{valid taps} w`. For the common (kw, sw) the interior kernel works on blocks of
    /// output pixels and widens each input pixel once for all the taps that use it. Edge pixels
    /// use `(x - zx) * w` with `vpmulld`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn depthwise_avx512(
        g: &ConvGeom,
        x: *const u8,
        zx: i32,
        w: *const i8,
        row: usize,
        out: *mut i32,
        ldo: usize,
    ) {
        // SAFETY: the caller (`depthwise_u8i8_avx512`) guarantees `depthwise_u8i8_scalar`'s ranges: only
        // in-image taps are read (`DwRow`, `kx_range` and the interior bounds `ox_lo..ox_hi` keep `ix` in
        // `0..w`), channels are read and written 16 at a time with a mask for the last block, and weights at
        // `tap * cp + cb` stay below `kh * kw * cp`.
        unsafe {
            let Some(rg) = DwRow::new(g, row) else { return };
            let taps = g.kh * g.kw;
            if taps > DW_MAX_TAPS || taps == 0 {
                return depthwise_i32(g, &rg, x, zx, w, out, ldo, 0, g.ow);
            }
            let c = g.c;
            let cp = c.div_ceil(64) * 64;
            let xi = x.add(rg.img * g.h * g.w * c);
            let zxv = _mm512_set1_epi32(zx);
            // Interior output columns (every kx tap inside the image):
            // ox*sw >= pw and ox*sw - pw + (kw-1)*dw <= w-1.
            let sw = g.sw.max(1);
            let ox_lo = g.pw.div_ceil(sw).min(g.ow);
            let span = (g.kw - 1) * g.dw.max(1);
            let ox_hi = if g.w + g.pw > span { ((g.w - 1 + g.pw - span) / sw + 1).min(g.ow) } else { 0 }.max(ox_lo);
            // Edge pixels (taps clipped by the image border): their tap ranges, computed once.
            const MAX_EDGES: usize = 16;
            let mut edges = [(0usize, 0usize, 0usize, 0usize); MAX_EDGES];
            let n_edges = ox_lo + (g.ow - ox_hi);
            if n_edges > MAX_EDGES {
                depthwise_i32(g, &rg, x, zx, w, out, ldo, 0, ox_lo);
                depthwise_i32(g, &rg, x, zx, w, out, ldo, ox_hi, g.ow);
            } else {
                for (e, ox) in (0..ox_lo).chain(ox_hi..g.ow).enumerate() {
                    let (lo, hi, ix0) = rg.kx_range(g, ox);
                    let ix_lo = (ix0 + (lo * g.dw) as isize).max(0) as usize;
                    edges[e] = (ox, lo, hi, ix_lo);
                }
            }
            let mut wbuf = [_mm512_setzero_si512(); DW_MAX_TAPS];
            let mut cb = 0;
            while cb < c {
                let left = c - cb;
                let mask: __mmask16 = if left >= 16 { 0xffff } else { (1u16 << left) - 1 };
                let mut wsum = _mm512_setzero_si512();
                for t in 0..taps {
                    wbuf[t] = _mm512_cvtepi8_epi32(_mm_loadu_si128(w.add(t * cp + cb).cast()));
                }
                for ky in rg.ky_lo..rg.ky_hi {
                    for kx in 0..g.kw {
                        wsum = _mm512_add_epi32(wsum, wbuf[ky * g.kw + kx]);
                    }
                }
                let init = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_mullo_epi32(zxv, wsum));
                let blk = Blk { xi: xi.add(cb), out: out.add(cb), ldo, mask, init };
                if n_edges <= MAX_EDGES {
                    for &(ox, kx_lo, kx_hi, ix_lo) in &edges[..n_edges] {
                        // sum x*w - zx * sum w over the valid taps.
                        let mut acc = _mm512_setzero_si512();
                        let mut ws = _mm512_setzero_si512();
                        for ky in rg.ky_lo..rg.ky_hi {
                            let iy = (rg.iy0 + (ky * g.dh) as isize) as usize;
                            let xrow = blk.xi.wrapping_add((iy * g.w + ix_lo) * c);
                            for kx in kx_lo..kx_hi {
                                let wv = wbuf[ky * g.kw + kx];
                                let z = load_x::<false>(xrow.add((kx - kx_lo) * g.dw * c), mask);
                                acc = dpwssd(acc, z, wv);
                                ws = _mm512_add_epi32(ws, wv);
                            }
                        }
                        let r = _mm512_sub_epi32(acc, _mm512_mullo_epi32(zxv, ws));
                        store_acc::<false>(blk.out.add(ox * ldo), mask, r);
                    }
                }
                // Interior pixels.
                if ox_lo < ox_hi {
                    let full = mask == 0xffff;
                    match (g.kw, g.sw, g.dw, full) {
                        (3, 1, 1, true) => interior::<3, 1, 8, true>(g, &rg, &blk, &wbuf, ox_lo, ox_hi),
                        (3, 1, 1, false) => interior::<3, 1, 8, false>(g, &rg, &blk, &wbuf, ox_lo, ox_hi),
                        (3, 2, 1, true) => interior::<3, 2, 6, true>(g, &rg, &blk, &wbuf, ox_lo, ox_hi),
                        (3, 2, 1, false) => interior::<3, 2, 6, false>(g, &rg, &blk, &wbuf, ox_lo, ox_hi),
                        (5, 1, 1, true) => interior::<5, 1, 8, true>(g, &rg, &blk, &wbuf, ox_lo, ox_hi),
                        (5, 1, 1, false) => interior::<5, 1, 8, false>(g, &rg, &blk, &wbuf, ox_lo, ox_hi),
                        (5, 2, 1, true) => interior::<5, 2, 4, true>(g, &rg, &blk, &wbuf, ox_lo, ox_hi),
                        (5, 2, 1, false) => interior::<5, 2, 4, false>(g, &rg, &blk, &wbuf, ox_lo, ox_hi),
                        _ => interior_any(g, &rg, &blk, &wbuf, ox_lo, ox_hi),
                    }
                }
                cb += 16;
            }
        }
    }

    /// One 16-channel block of a depthwise row: input (already offset by the image and the
    /// block's first channel), output (offset by the channel), lane mask and initial value.
    struct Blk {
        xi: *const u8,
        out: *mut i32,
        ldo: usize,
        mask: __mmask16,
        init: __m512i,
    }

    /// `vpdpwssd acc, z, w`. Written as asm because LLVM's generic tuning splits the
    /// intrinsic into `vpmaddwd` + `vpaddd` (two uops instead of one).
    #[target_feature(enable = "avx512f,avx512vnni")]
    #[inline]
    unsafe fn dpwssd(acc: __m512i, z: __m512i, w: __m512i) -> __m512i {
        // SAFETY: `vpdpwssd` reads and writes only the three zmm registers (no memory, flags or stack);
        // AVX512-VNNI is enabled on this function and present on every caller's CPU.
        unsafe {
            let mut acc = acc;
            core::arch::asm!(
                "vpdpwssd {a}, {z}, {w}",
                a = inout(zmm_reg) acc,
                z = in(zmm_reg) z,
                w = in(zmm_reg) w,
                options(pure, nomem, nostack, preserves_flags),
            );
            acc
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn load_x<const FULL: bool>(p: *const u8, mask: __mmask16) -> __m512i {
        // SAFETY: the caller passes a pointer to 16 readable bytes (`FULL`) or to the lanes the mask selects;
        // masked loads touch no other byte.
        unsafe {
            if FULL {
                _mm512_cvtepu8_epi32(_mm_loadu_si128(p.cast()))
            } else {
                _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, p.cast()))
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn store_acc<const FULL: bool>(p: *mut i32, mask: __mmask16, v: __m512i) {
        // SAFETY: the caller passes 16 writable i32 at `p` (`FULL`) or the lanes the mask selects; masked
        // stores touch no other element.
        unsafe {
            if FULL {
                _mm512_storeu_si512(p.cast(), v)
            } else {
                _mm512_mask_storeu_epi32(p.cast(), mask, v)
            }
        }
    }

    /// Interior pixels `ox_lo..ox_hi` for a fixed kernel width `KW` and stride `SW` (dilation
    /// 1): blocks of `OB`, then 4, 2 and 1 output pixels.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn interior<const KW: usize, const SW: usize, const OB: usize, const FULL: bool>(
        g: &ConvGeom,
        rg: &DwRow,
        b: &Blk,
        wbuf: &[__m512i; DW_MAX_TAPS],
        ox_lo: usize,
        ox_hi: usize,
    ) {
        // SAFETY: the caller (`depthwise_avx512`) passes interior pixels only (`ox_lo..ox_hi`, every tap in
        // the image) and the ranges of its own contract; the block helpers read and write inside them.
        unsafe {
            let mut ox = interior_blocks::<KW, SW, OB, FULL>(g, rg, b, wbuf, ox_lo, ox_hi);
            ox = interior_blocks::<KW, SW, 4, FULL>(g, rg, b, wbuf, ox, ox_hi);
            ox = interior_blocks::<KW, SW, 2, FULL>(g, rg, b, wbuf, ox, ox_hi);
            interior_blocks::<KW, SW, 1, FULL>(g, rg, b, wbuf, ox, ox_hi);
        }
    }

    /// Blocks of `OB` interior output pixels from `ox` while they fit below `ox_hi`; each input
    /// pixel of a block is widened once. Returns the first pixel not done.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn interior_blocks<const KW: usize, const SW: usize, const OB: usize, const FULL: bool>(
        g: &ConvGeom,
        rg: &DwRow,
        b: &Blk,
        wbuf: &[__m512i; DW_MAX_TAPS],
        mut ox: usize,
        ox_hi: usize,
    ) -> usize {
        // SAFETY: interior pixels `ox..ox + OB` (below `ox_hi`) read input pixels `ix0..ix0 + (OB - 1) * SW +
        // KW` of rows in the image, all in bounds by the interior condition, and write `OB` output rows of
        // the block's 16 channels (masked).
        unsafe {
            let c = g.c;
            while ox + OB <= ox_hi {
                let mut acc = [b.init; OB];
                let ix0 = ox * SW - g.pw; // >= 0 in the interior
                for ky in rg.ky_lo..rg.ky_hi {
                    let iy = (rg.iy0 + (ky * g.dh) as isize) as usize;
                    let xrow = b.xi.add((iy * g.w + ix0) * c);
                    let wk = wbuf.as_ptr().add(ky * KW);
                    // Widen each input pixel of the block once; pixel o*SW + kx feeds output o.
                    let mut z = [_mm512_setzero_si512(); 32];
                    for p in 0..(OB - 1) * SW + KW {
                        z[p] = load_x::<FULL>(xrow.add(p * c), b.mask);
                    }
                    for kx in 0..KW {
                        for o in 0..OB {
                            acc[o] = dpwssd(acc[o], z[o * SW + kx], *wk.add(kx));
                        }
                    }
                }
                for o in 0..OB {
                    store_acc::<FULL>(b.out.add((ox + o) * b.ldo), b.mask, acc[o]);
                }
                ox += OB;
            }
            ox
        }
    }

    /// Interior pixels for any geometry (one pixel at a time).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn interior_any(
        g: &ConvGeom,
        rg: &DwRow,
        b: &Blk,
        wbuf: &[__m512i; DW_MAX_TAPS],
        ox_lo: usize,
        ox_hi: usize,
    ) {
        // SAFETY: as in `interior_blocks`: interior pixels read only in-image taps, and each writes one
        // output row of the block's channels (masked).
        unsafe {
            let c = g.c;
            for ox in ox_lo..ox_hi {
                let mut acc = b.init;
                let ix0 = ox * g.sw - g.pw;
                for ky in rg.ky_lo..rg.ky_hi {
                    let iy = (rg.iy0 + (ky * g.dh) as isize) as usize;
                    let xrow = b.xi.add((iy * g.w + ix0) * c);
                    for kx in 0..g.kw {
                        let z = load_x::<false>(xrow.add(kx * g.dw * c), b.mask);
                        acc = dpwssd(acc, z, wbuf[ky * g.kw + kx]);
                    }
                }
                store_acc::<false>(b.out.add(ox * b.ldo), b.mask, acc);
            }
        }
    }

    /// Output pixels `ox0..ox1` of a row with `(x - zx) * w` in i32 lanes (`vpmulld`), weights
    /// widened per use: the edge pixels, and every pixel beyond [`DW_MAX_TAPS`] taps.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn depthwise_i32(
        g: &ConvGeom,
        rg: &DwRow,
        x: *const u8,
        zx: i32,
        w: *const i8,
        out: *mut i32,
        ldo: usize,
        ox0: usize,
        ox1: usize,
    ) {
        // SAFETY: the caller passes pixels `ox0..ox1` of a row of `depthwise_avx512`'s ranges; `kx_range`
        // clips taps to the image, channels are masked to `c`, and weights at `(ky * kw + kx) * cp + cb` stay
        // below `kh * kw * cp`.
        unsafe {
            let c = g.c;
            let cp = c.div_ceil(64) * 64;
            let xi = x.add(rg.img * g.h * g.w * c);
            let zxv = _mm512_set1_epi32(zx);
            for ox in ox0..ox1 {
                let (kx_lo, kx_hi, ix0) = rg.kx_range(g, ox);
                let o = out.add(ox * ldo);
                let mut cb = 0;
                while cb < c {
                    let left = c - cb;
                    let mask: __mmask16 = if left >= 16 { 0xffff } else { (1u16 << left) - 1 };
                    let mut acc = _mm512_setzero_si512();
                    for ky in rg.ky_lo..rg.ky_hi {
                        let iy = (rg.iy0 + (ky * g.dh) as isize) as usize;
                        let xrow = xi.add(iy * g.w * c + cb);
                        let wrow = w.add(ky * g.kw * cp + cb);
                        for kx in kx_lo..kx_hi {
                            let ix = (ix0 + (kx * g.dw) as isize) as usize;
                            let xv = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, xrow.add(ix * c).cast()));
                            let wv = _mm512_cvtepi8_epi32(_mm_loadu_si128(wrow.add(kx * cp).cast()));
                            acc = _mm512_add_epi32(acc, _mm512_mullo_epi32(_mm512_sub_epi32(xv, zxv), wv));
                        }
                    }
                    _mm512_mask_storeu_epi32(o.add(cb).cast(), mask, acc);
                    cb += 16;
                }
            }
        }
    }
}

qforge_ir::multiversion! {
    baseline = accumulate_products_baseline;
    /// `acc[r][j] = sum_t a[r][t] * b[t][j]` in wrapping i32 arithmetic for the `rows` rows of
    /// `a` (`k` values each) and of `acc` (`n` each), `b` holding `k` rows of `n`: the integer
    /// product of two activations, whose right operand has no packed form; compiled for AVX-512
    /// and AVX2 as well (16 and 8 lanes of `vpmulld`), the same sums in every version.
    pub fn accumulate_products(acc: &mut [i32], a: &[i32], b: &[i32], rows: usize, k: usize, n: usize) -> () {
        for r in 0..rows {
            let out = &mut acc[r * n..(r + 1) * n];
            out.fill(0);
            for (t, &av) in a[r * k..(r + 1) * k].iter().enumerate() {
                let row = &b[t * n..(t + 1) * n];
                for (c, &bv) in out.iter_mut().zip(row) {
                    *c = c.wrapping_add(av.wrapping_mul(bv));
                }
            }
        }
    }
}

/// What [`qadd_run`] computes: ONNX Runtime's quantized add `p` with the kernel's operand order
/// (`swap`), the operands' signedness, the result type, and whether `b` is one value.
#[derive(Clone, Copy, Debug)]
pub struct QAddRun {
    pub p: qforge_ir::numerics::QAddParams,
    pub swap: bool,
    pub a_signed: bool,
    pub b_signed: bool,
    pub out: qforge_ir::DType,
    pub b_scalar: bool,
}

qforge_ir::multiversion! {
    baseline = qadd_run_baseline;
    /// ONNX Runtime's quantized add ([`qforge_ir::numerics::QAddParams::apply`]) over a run of
    /// outputs: `y[t] = p.apply(a[t], b[t])` (`b[0]` for every `t` when `b_scalar`; the
    /// kernel's operands in the other order when `swap`), bytes read as i8 where signed.
    /// Compiled for AVX-512 and AVX2 + FMA as well, where `mul_add` is one instruction instead
    /// of a library call; `mul_add` rounds once in every version, so the bytes are the same.
    ///
    /// `apply` rounds half to even and saturates (NaN to 0) through f64; here the f32 sum is
    /// clamped to the output range first (its bounds are integers, so clamping and rounding
    /// commute) and rounded by adding and subtracting 1.5 * 2^23, which is exact below 2^22:
    /// the same byte, in straight vector code.
    pub fn qadd_run(a: &[u8], b: &[u8], y: &mut [u8], k: &QAddRun) -> () {
        const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
        let (lo, hi) = if k.out == qforge_ir::DType::I8 { (-128.0f32, 127.0f32) } else { (0.0, 255.0) };
        let int = |v: u8, signed: bool| if signed { v as i8 as f32 } else { v as f32 };
        let (rx, rz) = if k.swap { (k.p.rb, k.p.ra) } else { (k.p.ra, k.p.rb) };
        let byte = |x: f32, z: f32| {
            // `apply(first, second)` is `first * ra + (second * rb + fixed)`; with `swap` the
            // kernel's first operand is `z`
            let v = if k.swap { z.mul_add(rz, x.mul_add(rx, k.p.fixed)) } else { x.mul_add(rx, z.mul_add(rz, k.p.fixed)) };
            let c = if v.is_nan() { 0.0 } else { v.clamp(lo, hi) };
            // SAFETY: `c + MAGIC - MAGIC` is an integer in `lo..=hi`
            let r: i32 = unsafe { ((c + MAGIC) - MAGIC).to_int_unchecked() };
            r as u8
        };
        if k.b_scalar {
            let z = b.first().map_or(0.0, |&v| int(v, k.b_signed));
            for (o, &av) in y.iter_mut().zip(a) {
                *o = byte(int(av, k.a_signed), z);
            }
        } else {
            for ((o, &av), &bv) in y.iter_mut().zip(a).zip(b) {
                *o = byte(int(av, k.a_signed), int(bv, k.b_signed));
            }
        }
    }
}

/// The requantizing epilogue [`requantize_products`] applies: a bias per column (empty: none),
/// the multiplier per column, the zero point and the clamp (stored values of an 8-bit type, at
/// most 2^16 in magnitude), rows of `n`.
#[derive(Clone, Copy, Debug)]
pub struct Requant<'a> {
    pub bias: &'a [i32],
    pub mul: &'a [f32],
    pub zp: i32,
    pub lo: i32,
    pub hi: i32,
    pub n: usize,
}

qforge_ir::multiversion! {
    baseline = requantize_products_baseline;
    /// The requantizing epilogue `[bias?, scale, round]` of [`crate::spec::apply_scalar`] over
    /// rows of `r.n` accumulators: `q = clamp(round_half_even((acc + bias[j]) as f32 *
    /// mul[j]), lo - zp, hi - zp) + zp`. The clamp comes first and the rounding is the f32
    /// addition of 1.5 * 2^23 (exact for the clamped range, and without a library call on the
    /// baseline target); a NaN product, which `apply_scalar` converts to 0, is 0 here too.
    pub fn requantize_products(acc: &[i32], out: &mut [u8], r: &Requant<'_>) -> () {
        const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
        // the clamp of 8-bit stored values (`lo`, `hi` and `zp` within -128..=255, at most 2^16
        // by the contract); bounds are also kept within 2^22, where the rounding below is exact
        // and the conversion cannot overflow, whatever a caller passes
        const BOUND: f32 = 4_194_304.0; // 2^22
        let (lo, hi) = (r.lo.saturating_sub(r.zp) as f32, r.hi.saturating_sub(r.zp) as f32);
        let (lo, hi) = (lo.clamp(-BOUND, BOUND), hi.clamp(-BOUND, BOUND));
        for (orow, arow) in out.chunks_exact_mut(r.n).zip(acc.chunks_exact(r.n)) {
            for (j, (o, &a)) in orow.iter_mut().zip(arow).enumerate() {
                let a = if r.bias.is_empty() { a } else { a.wrapping_add(r.bias[j]) };
                let v = a as f32 * r.mul[j];
                let c = if v.is_nan() { 0.0 } else { v.clamp(lo, hi) };
                // SAFETY: `c` is finite and within 2^22 (the clamp), and so is its rounding, an
                // integer; the unchecked conversion lets the loop vectorize (`as` checks each
                // lane for saturation)
                let q = unsafe { ((c + MAGIC) - MAGIC).to_int_unchecked::<i32>() };
                *o = q.wrapping_add(r.zp) as u8;
            }
        }
    }
}
