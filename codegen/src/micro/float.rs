//! f32 microkernels: a register-blocked GEMM over packed weight panels, an im2col gather and a
//! depthwise convolution row kernel, each with an AVX-512 version (and an AVX2+FMA version of the
//! GEMM), a portable scalar version and a runtime dispatcher (`*_best`).
//!
//! Invariants shared by every kernel in this module:
//! * **No allocation, no panics on the hot path.** Kernels only do pointer arithmetic, loads,
//!   stores and FMAs; the packing helpers (`pack_*`) run once at compile time and do allocate.
//! * **Memory touched.** A kernel reads only the input ranges its arguments describe and writes
//!   only the output ranges documented on it. The GEMMs write exactly columns `0..nr` of rows
//!   `0..m` (masked stores); the AVX-512 GEMM splits `k` into blocks of 256 and reads back the
//!   partial sums it already stored in those same `c` elements. The depthwise kernel may store
//!   an output pixel twice with the identical value (overlapping tail block). Masked vector loads
//!   are used for tails, so no byte outside the described ranges is dereferenced.
//! * **Summation order.** Every output element is `acc = 0; for each term in order:
//!   acc = fma(x, w, acc)` (single rounding per step), in reduction order `t = 0..k` for the GEMM
//!   and tap order `(ky, kx)` over in-image taps for the depthwise kernel. The SIMD and scalar
//!   versions therefore produce bit-identical results (the scalar path uses `f32::mul_add`, a
//!   libm call on CPUs without FMA: slow but exact).
//! * **Layouts.** Activations are NHWC, images back to back. Packed GEMM weights are column panels
//!   of [`PANEL`] columns (see [`PackedF32`]); inside a panel the row stride is the panel width,
//!   which equals `round_up_16(nr)` for the `nr` columns a kernel call computes.
//! * **Thread safety.** Kernels are pure functions of their arguments; concurrent calls on
//!   disjoint outputs are fine.
//!
//! Performance notes (Zen4, one core, ~57 GFMA-lanes/s measured FMA peak): the AVX-512 GEMM keeps
//! 24 zmm accumulators in registers: 12 rows x 2 zmm for a 32-column panel, 24 x 1 for 16
//! columns, 8 x 3 for 48, and 12 x (1 zmm + 1 ymm) / 24 x 1 ymm when the last 16-column group has
//! at most 8 valid columns (24-channel layers), broadcasting one `a` element per row and step
//! `t`; it reaches ~57 GMAC/s in cache and 51-56 GMAC/s on ResNet-18 layers including im2col.
//! Rows of `a` are read with stride `lda` directly (no A packing), so `a` may be an im2col
//! scratch buffer or the NHWC activation itself for 1x1 convolutions. Suggested driver: row
//! blocks of equal height up to 72 rows (any of 24..192 measured within noise, but a short last
//! block streams every weight panel again for a few rows), panels inner, im2col per row block.
//! The depthwise kernel is sensitive to alignment: with 64-byte aligned activations (and `c` a
//! multiple of 16) it runs ~1.6x faster than with 16-byte aligned ones.

#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]

use super::{try_zeroed, ConvGeom};
use std::collections::TryReserveError;

/// Panel width in columns of the packed f32 weights.
///
/// 32, chosen by measurement on Zen4: the 12 x 2 zmm block of a 32-column panel and the 8 x 3
/// block of a 48-column panel both run at the FMA peak in cache (57.5 vs 57.9 GMAC/s) and were
/// within noise of each other on the ResNet-18/MobileNetV2 shapes, so the finer granularity
/// wins: less padding on channel counts that are multiples of 32 but not 48 (64 -> 2 x 32
/// instead of 48 + 16, 128, 256, 512), and twice the (row block, panel) tasks for threading.
pub const PANEL: usize = 32;

/// The most columns of a narrow GEMM ([`gemm_f32_narrow_avx512`]): its weights also keep their
/// rows ([`PackedF32`]).
pub const NARROW: usize = 8;

/// The shortest reduction the narrow GEMM takes: below three vectors of `t` its lane reduction
/// costs more than the panel kernel's half-empty FMAs save (measured on Zen 4: at `k = 8`
/// 2.4x slower, at 27 about even, at 72 and 144 1.9x and 2.3x faster).
pub const NARROW_MIN_K: usize = 48;

/// Whether weights of `n` columns and reduction length `k` run the narrow GEMM
/// ([`gemm_f32_narrow_avx512`]), and so keep its rows ([`PackedF32`]).
pub const fn narrow_fits(n: usize, k: usize) -> bool {
    n > 0 && n <= NARROW && k >= NARROW_MIN_K
}

/// How many weight rows the narrow GEMM reads for `n` columns and reduction length `k` (4 or
/// [`NARROW`]; 0 where it does not run).
const fn narrow_rows(n: usize, k: usize) -> usize {
    if !narrow_fits(n, k) {
        0
    } else if n <= 4 {
        4
    } else {
        NARROW
    }
}

/// Rounds up to a multiple of 16 (one zmm of f32).
#[inline]
const fn round_up_16(x: usize) -> usize {
    (x + 15) & !15
}

/// Weights packed for the f32 GEMM.
///
/// Source layout `w[j*k + t]` (`n` rows = output channels, `k` = reduction length). Panel `p`
/// covers columns `[PANEL*p, PANEL*p + width)` with `width = panel_width(n, p)`; its floats start
/// at `panel_offset(p, k)`, and inside it, for each `t in 0..k`, `width` consecutive floats hold
/// `w[col][t]` (0.0 for padding columns `>= n`). With at most [`NARROW`] columns and a reduction
/// of at least [`NARROW_MIN_K`] ([`narrow_fits`]) the one panel (16 wide) is followed by the
/// weights as they came, 4 rows (for up to 4 columns) or `NARROW` of `round_up_16(k)` floats
/// (zeros past `n` and `k`): the rows [`gemm_f32_narrow_avx512`] reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PackedF32 {
    /// Number of output channels (columns of the GEMM).
    pub n: usize,
    /// Reduction length.
    pub k: usize,
    /// All panels back to back (panel `p` at [`panel_offset`]`(p, k)`); see the type docs.
    pub data: Vec<f32>,
}

/// Number of panels for `n` columns.
#[inline]
fn panel_count(n: usize) -> usize {
    n.div_ceil(PANEL)
}

/// Offset (in floats) of panel `p` inside [`PackedF32::data`] for reduction length `k`.
pub fn panel_offset(p: usize, k: usize) -> usize {
    PANEL * p * k
}

/// Width (row stride in floats) of panel `p` for `n` columns:
/// `min(PANEL, round_up_16(n - PANEL*p))`, 0 for panels past the end.
pub fn panel_width(n: usize, p: usize) -> usize {
    let start = PANEL * p;
    if start >= n {
        0
    } else {
        PANEL.min(round_up_16(n - start))
    }
}

/// Packs `w[j*k + t]` (`n` x `k`, row major) into [`PANEL`]-column panels (entries missing from
/// a short `w` read as 0).
pub fn pack_weights_f32(w: &[f32], n: usize, k: usize) -> Result<PackedF32, TryReserveError> {
    pack_f32_by(n, k, |j, t| w.get(j * k + t).copied())
}

/// [`pack_weights_f32`] of a weight stored `[k, n]` (a matmul's right operand), read in place:
/// no transposed copy exists while packing.
pub fn pack_weights_f32_kn(w: &[f32], k: usize, n: usize) -> Result<PackedF32, TryReserveError> {
    pack_f32_by(n, k, |j, t| w.get(t * n + j).copied())
}

/// Packs the `[n, k]` matrix whose element `(j, t)` is `get(j, t)` (0 where it is `None`).
fn pack_f32_by(n: usize, k: usize, get: impl Fn(usize, usize) -> Option<f32>) -> Result<PackedF32, TryReserveError> {
    let np = panel_count(n);
    let len = if np == 0 { 0 } else { panel_offset(np - 1, k) + panel_width(n, np - 1) * k };
    let rows_len = narrow_rows(n, k) * round_up_16(k);
    let mut data = try_zeroed::<f32>(len + rows_len)?;
    if rows_len > 0 {
        // the narrow GEMM's rows: `w[j][t]` at `len + j * round_up_16(k) + t`
        let kp = round_up_16(k);
        for j in 0..n {
            for t in 0..k {
                data[len + j * kp + t] = get(j, t).unwrap_or(0.0);
            }
        }
    }
    for p in 0..np {
        let width = panel_width(n, p);
        let base = panel_offset(p, k);
        let c0 = PANEL * p;
        let cols = width.min(n - c0);
        for t in 0..k {
            let dst = &mut data[base + t * width..base + t * width + cols];
            for (jj, d) in dst.iter_mut().enumerate() {
                *d = get(c0 + jj, t).unwrap_or(0.0);
            }
        }
    }
    Ok(PackedF32 { n, k, data })
}

/// Bytes of [`PackedF32::data`] for `n` columns and reduction length `k`, computed without
/// packing: `round_up_16(n) * k` floats (full [`PANEL`]-column panels, the last rounded up to 16),
/// and, where [`narrow_fits`], the rows of the narrow GEMM.
pub fn packed_bytes(n: usize, k: usize) -> u128 {
    let rows = (narrow_rows(n, k) * round_up_16(k)) as u128;
    ((n as u128).div_ceil(16) * 16 * (k as u128) + rows) * 4
}

/// Signature shared by the GEMM kernels:
/// `(a, lda, m, b, k, c, ldc, nr)`; see [`gemm_f32_avx512`].
pub type GemmF32 = unsafe extern "C" fn(*const f32, usize, usize, *const f32, usize, *mut f32, usize, usize);

/// Portable GEMM: `c[r*ldc + j] = sum_{t<k} a[r*lda + t] * b[t*round_up_16(nr) + j]` for
/// `r < m`, `j < nr`, accumulated in `t` order with `f32::mul_add`. Writes exactly columns
/// `0..nr` of rows `0..m`.
///
/// # Safety
/// `a` must be readable for rows `0..m` of `k` floats at stride `lda`; `b` must point at a panel
/// of `k * round_up_16(nr)` floats; `c` must be writable for rows `0..m` of `nr` floats at
/// stride `ldc`.
pub unsafe extern "C" fn gemm_f32_scalar(
    a: *const f32,
    lda: usize,
    m: usize,
    b: *const f32,
    k: usize,
    c: *mut f32,
    ldc: usize,
    nr: usize,
) {
    // SAFETY: the caller guarantees this function's ranges: rows `0..m` of `k` readable floats of `a` at
    // stride `lda`, a panel of `k * round_up_16(nr)` floats at `b`, and rows `0..m` of `nr` writable floats
    // of `c` at stride `ldc`, not overlapping `a` or `b`; every access below is inside them.
    unsafe {
        let ldb = round_up_16(nr);
        for r in 0..m {
            let ar = a.add(r * lda);
            let cr = c.add(r * ldc);
            for j in 0..nr {
                let mut acc = 0.0f32;
                for t in 0..k {
                    acc = (*ar.add(t)).mul_add(*b.add(t * ldb + j), acc);
                }
                *cr.add(j) = acc;
            }
        }
    }
}

/// AVX-512 GEMM over one weight panel.
///
/// Computes `c[r*ldc + j] = sum_{t<k} a[r*lda + t] * b[t*round_up_16(nr) + j]` for `r < m`,
/// `j < nr`, where `b` is the start of a packed panel (row stride `round_up_16(nr)`). Any `nr`
/// works (`PANEL`, or 48-column panels); columns are processed in chunks of up to 48. Each
/// element is accumulated in `t` order with FMA starting from 0 (k-blocked by 256 through `c`,
/// which is bit-identical). Writes exactly columns `0..nr` (masked stores). Falls back to the
/// scalar kernel when built for a non-x86_64 target.
///
/// # Safety
/// The CPU must support AVX-512F and FMA (use [`gemm_f32_best`]). `a` must be readable for rows
/// `0..m` of `k` floats at stride `lda`; `b` readable for `k * round_up_16(nr)` floats; `c`
/// readable and writable for rows `0..m` of `nr` floats at stride `ldc`.
pub unsafe extern "C" fn gemm_f32_avx512(
    a: *const f32,
    lda: usize,
    m: usize,
    b: *const f32,
    k: usize,
    c: *mut f32,
    ldc: usize,
    nr: usize,
) {
    // SAFETY: the caller guarantees the ranges of this function's contract and an AVX-512F + FMA CPU, which
    // `x86::gemm512` requires (`gemm_f32_best` checks them).
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            x86::gemm512(a, lda, m, b, k, c, ldc, nr)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            gemm_f32_scalar(a, lda, m, b, k, c, ldc, nr)
        }
    }
}

/// [`gemm_f32_avx512`] with the float epilogue `p` applied to the accumulators in registers: the
/// results go to `out` (`out_stride` bytes per row, column `j` of the call at element `j`, which
/// is column `n0 + j` of the layer) as [`super::fepilogue::epilogue_f32`] would store them from
/// the tile, bit for bit, without the tile's store and reload; `res` is the residual's element of
/// (row 0, column `n0`) in the output's layout, or null. `c` (`ldc`) holds the partial sums of a
/// reduction longer than one k block. A list the GEMM cannot apply in registers
/// ([`super::fepilogue::FloatEpilogue::in_registers`]) takes the tile and the epilogue kernel.
///
/// # Safety
/// As for [`gemm_f32_avx512`] and for [`super::fepilogue::epilogue_f32`] over the same rows and
/// columns (`p` valid, its per-channel arrays covering columns `n0..n0 + nr` rounded up to 16;
/// `out` and `res` holding `m` rows of `nr` floats at stride `out_stride`).
pub unsafe extern "C" fn gemm_f32_epi_avx512(
    a: *const f32,
    lda: usize,
    m: usize,
    b: *const f32,
    k: usize,
    c: *mut f32,
    ldc: usize,
    nr: usize,
    p: *const super::fepilogue::FloatEpilogue,
    n0: usize,
    out: *mut u8,
    out_stride: usize,
    res: *const u8,
) {
    // SAFETY: the caller's contract, passed on (`x86::gemm512_epi` keeps `gemm512`'s ranges and
    // writes `out` where the epilogue kernel would).
    unsafe {
        let fe = &*p;
        #[cfg(target_arch = "x86_64")]
        if let Some(canon) = fe.in_registers() {
            let epi = x86::Epi {
                form: canon.for_registers(),
                col: n0,
                out: out as *mut f32,
                ld: out_stride / 4,
                res: res as *const f32,
            };
            return x86::gemm512_epi(a, lda, m, b, k, c, ldc, nr, &epi);
        }
        gemm_f32_avx512(a, lda, m, b, k, c, ldc, nr);
        super::fepilogue::epilogue_f32(fe, c, ldc, m, n0, nr, out, out_stride, res);
    }
}

/// [`gemm_f32_epi_avx512`] on a CPU with AVX-512F, else the AVX2 GEMM with the list applied to
/// its accumulators in registers when it has the branch-free form
/// ([`super::fepilogue::FloatEpilogue::lanes_scalar`]; the emitter selects no other list on
/// such a CPU), else the AVX2 GEMM and the list's scalar definition over the tile. Same
/// contract as [`gemm_f32_epi_avx512`].
///
/// # Safety
/// As for [`gemm_f32_epi_avx512`], on a CPU with AVX2 and FMA at least.
pub unsafe extern "C" fn gemm_f32_epi(
    a: *const f32,
    lda: usize,
    m: usize,
    b: *const f32,
    k: usize,
    c: *mut f32,
    ldc: usize,
    nr: usize,
    p: *const super::fepilogue::FloatEpilogue,
    n0: usize,
    out: *mut u8,
    out_stride: usize,
    res: *const u8,
) {
    // SAFETY: the caller's contract, passed on to the kernel of this CPU.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return gemm_f32_epi_avx512(a, lda, m, b, k, c, ldc, nr, p, n0, out, out_stride, res);
            }
            let fe = &*p;
            if let Some(lanes) = fe.in_registers().and_then(|c| c.lanes()) {
                let epi = x86::Epi256 {
                    lanes: &lanes,
                    col: n0,
                    out: out as *mut f32,
                    ld: out_stride / 4,
                    res: res as *const f32,
                };
                return x86::gemm256_with(a, lda, m, b, k, c, ldc, nr, Some(&epi));
            }
        }
        let (gemm, _) = gemm_f32_best();
        gemm(a, lda, m, b, k, c, ldc, nr);
        apply_scalar_epilogue(&*p, c, ldc, m, n0, nr, out, out_stride, res);
    }
}

/// The float epilogue `p` over a `rows x nr` f32 tile by its scalar definition
/// ([`super::fepilogue::FloatEpilogue::apply_scalar`]), stored as f32: the fallback of the
/// kernels that apply a list themselves, for a list outside their register form.
///
/// # Safety
/// The tile holds `rows` rows of `nr` floats at stride `ldc`; `out` (and `res`, unless null)
/// `rows` rows of `nr` floats at stride `out_stride` bytes; `p`'s arrays cover `n0..n0 + nr`.
/// The tile may be the output itself (raw pointers, each element read before it is written).
#[allow(clippy::too_many_arguments)]
unsafe fn apply_scalar_epilogue(
    p: &super::fepilogue::FloatEpilogue,
    tile: *const f32,
    ldc: usize,
    rows: usize,
    n0: usize,
    nr: usize,
    out: *mut u8,
    out_stride: usize,
    res: *const u8,
) {
    // SAFETY: the caller's ranges.
    unsafe {
        let ld = out_stride / 4;
        let (out, res) = (out as *mut f32, res as *const f32);
        for r in 0..rows {
            for j in 0..nr {
                let rv = if res.is_null() { 0.0 } else { *res.add(r * ld + j) };
                *out.add(r * ld + j) = p.apply_scalar(*tile.add(r * ldc + j), n0 + j, rv);
            }
        }
    }
}

/// The GEMM of at most [`NARROW`] columns (`nr <= 8`) with AVX-512F and FMA, for weights of at
/// most `NARROW` columns packed by [`pack_weights_f32`] (`b` at the start of their data, whose
/// rows follow the 16-wide panel): the panel's broadcast-and-FMA kernel uses half a vector or
/// less per multiply there, so this one takes dot products instead: sixteen `t` at a time, a
/// row of `a` against each weight row, the partial sums reduced across lanes at the end. Same
/// contract as [`gemm_f32_avx512`], but the sums are in another order (lane by lane, then a
/// tree), so the results differ from the panel kernels' by rounding.
///
/// # Safety
/// As [`gemm_f32_avx512`], with `b` the start of a [`PackedF32`]'s data for which [`narrow_fits`]
/// (reduction length `k`); the CPU has AVX-512F and FMA.
pub unsafe extern "C" fn gemm_f32_narrow_avx512(
    a: *const f32,
    lda: usize,
    m: usize,
    b: *const f32,
    k: usize,
    c: *mut f32,
    ldc: usize,
    nr: usize,
) {
    // SAFETY: the caller's contract; `x86::narrow512` requires AVX-512F and FMA, which the caller
    // checked (`gemm_f32_narrow_best`).
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            x86::narrow512(a, lda, m, b.add(16 * k), k, c, ldc, nr)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            gemm_f32_scalar(a, lda, m, b, k, c, ldc, nr)
        }
    }
}

/// The GEMM for weights of at most [`NARROW`] columns: [`gemm_f32_narrow_avx512`] on a CPU with
/// AVX-512F and FMA, else [`gemm_f32_best`]'s (which reads the panel and ignores the rows).
pub fn gemm_f32_narrow_best() -> (GemmF32, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
            return (gemm_f32_narrow_avx512 as GemmF32, "avx512f dot");
        }
    }
    gemm_f32_best()
}

/// Output columns the direct convolution kernel takes at most: one 512-bit vector.
pub const DIRECT_MAX_N: usize = 16;

/// Whether [`conv_f32_direct`] computes a convolution of `n` output columns (one packed panel,
/// its weights `w[t * 16 + j]`), on this CPU (AVX-512F and FMA).
pub fn direct_conv_fits(n: usize) -> bool {
    (1..=DIRECT_MAX_N).contains(&n) && direct_conv_available()
}

/// Whether this CPU runs [`conv_f32_direct`].
pub fn direct_conv_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A convolution of at most 16 output columns computed from the NHWC input directly, without
/// an im2col buffer: the rows `m0..m0 + rows` of what [`im2col_f32`] followed by the GEMM would
/// give, `c[r * ldc + j] = sum_t im2col(m0 + r, t) * w[t * 16 + j]` for `j < 16` (`t` in im2col's
/// order `(ky, kx, ci)`; a padding tap reads `cin` zeros from `zero`, as im2col writes zeros),
/// summed in `t` order with one FMA each. Eight output pixels at a time, each a vector of its
/// output columns (a 256-bit one when `n <= 8`): per tap, each pixel's source pixel (or the
/// zeros), then per input channel one weight vector and a broadcast FMA per pixel. The layers
/// this serves (3-channel stems, 8- and 16-channel convolutions) spend the GEMM on a reduction
/// as long as the im2col copy, or half a vector per multiply.
///
/// # Safety
/// The CPU must have AVX-512F and FMA ([`direct_conv_available`]); `g` a valid geometry, `x`
/// every image the rows reference, `w` `g.k()` rows of 16 floats, `c` `rows` rows of 16 (`n > 8`)
/// or 8 writable floats at stride `ldc`, `zero` `g.cin` writable floats.
pub unsafe extern "C" fn conv_f32_direct(
    g: *const ConvGeom,
    x: *const f32,
    m0: usize,
    rows: usize,
    w: *const f32,
    c: *mut f32,
    ldc: usize,
    zero: *mut f32,
    n: usize,
) {
    // SAFETY: the caller's contract, which is `x86::conv_direct512`'s.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            if n <= 8 {
                x86::conv_direct512::<false>(&*g, x, m0, rows, w, c, ldc, zero)
            } else {
                x86::conv_direct512::<true>(&*g, x, m0, rows, w, c, ldc, zero)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (g, x, m0, rows, w, c, ldc, zero, n);
            unreachable!("direct_conv_available is false off x86_64")
        }
    }
}

/// AVX2+FMA GEMM (8-wide) with the same contract as [`gemm_f32_avx512`].
///
/// # Safety
/// The CPU must support AVX2 and FMA; pointer requirements as for [`gemm_f32_avx512`].
pub unsafe extern "C" fn gemm_f32_avx2(
    a: *const f32,
    lda: usize,
    m: usize,
    b: *const f32,
    k: usize,
    c: *mut f32,
    ldc: usize,
    nr: usize,
) {
    // SAFETY: the caller guarantees the ranges of `gemm_f32_avx512`'s contract and an AVX2 + FMA CPU, which
    // `x86::gemm256` requires (`gemm_f32_best` checks them).
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            x86::gemm256(a, lda, m, b, k, c, ldc, nr)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            gemm_f32_scalar(a, lda, m, b, k, c, ldc, nr)
        }
    }
}

/// Best GEMM kernel for the running CPU and its name (`"avx512f"`, `"avx2"` or `"scalar"`).
pub fn gemm_f32_best() -> (GemmF32, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
            return (gemm_f32_avx512 as GemmF32, "avx512f");
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return (gemm_f32_avx2 as GemmF32, "avx2");
        }
    }
    (gemm_f32_scalar as GemmF32, "scalar")
}

/// Whether [`im2col_f32`] writes each kernel row of `g` with whole 16-float vectors: a kernel
/// row contiguous in the input (`dw <= 1`, `cin == c`) of `kw * cin <= 32` floats, one or two
/// vectors (the 3-channel stems: 3x3 rows of 9 floats, 4x4 of 12, 5x5 of 15, 7x7 of 21).
pub fn im2col_narrow_f32(g: &ConvGeom) -> bool {
    let rb = g.kw * g.cin;
    g.dw <= 1 && g.cin == g.c && g.kh > 0 && rb > 0 && rb <= 32
}

/// The floats of an im2col row the narrow kernel rows of [`im2col_narrow_f32`] write: up to the
/// end of the last kernel row's whole vectors, `(kh - 1) * kw * cin + 16 * ceil(kw * cin / 16)`.
pub fn im2col_narrow_span(g: &ConvGeom) -> usize {
    let rb = g.kw * g.cin;
    g.kh.saturating_sub(1) * rb + 16 * rb.div_ceil(16)
}

/// The leading dimension of an f32 im2col buffer for `g`: `g.k()` rounded up to 16, or, for the
/// narrow kernel rows of [`im2col_narrow_f32`], enough that the last kernel row's whole-vector
/// stores stay inside the row ([`im2col_narrow_span`]).
pub fn im2col_ld_f32(g: &ConvGeom) -> usize {
    let span = if im2col_narrow_f32(g) { im2col_narrow_span(g) } else { 0 };
    round_up_16(g.k().max(span).max(1))
}

/// im2col for rows `m0..m0+rows` of the convolution `*g` over the NHWC f32 input `x` (images
/// back to back, each `h*w*c` floats).
///
/// Row `r` of `out` (stride `ld >= g.k()`) receives, for `(ky, kx, ci)` with `ci` fastest,
/// `x[img][iy][ix][cin_offset + ci]` or 0.0 when `(iy, ix)` is outside the image, where
/// `iy = oy*sh + ky*dh - ph`, `ix = ox*sw + kx*dw - pw` and `m = m0 + r` splits as
/// `img = m / (oh*ow)`, `oy = m / ow % oh`, `ox = m % ow`. Contiguous runs are copied with
/// `copy_nonoverlapping` (whole `kx` ranges at once when `dw == 1` and `cin == c`); with AVX-512
/// a narrow kernel row ([`im2col_narrow_f32`]) of a window inside the image is one or two 16-float
/// loads and stores when `ld >=` [`im2col_narrow_span`] ([`im2col_ld_f32`] gives such an `ld`),
/// which may leave other input floats in `g.k()..ld` (a GEMM reads `g.k()` floats per row). Reads
/// only the pixels of the images touched.
///
/// # Safety
/// `g` must point at a valid geometry; `x` must hold every image referenced by the rows; `out`
/// must be writable for `rows` rows of `ld` floats at stride `ld`.
pub unsafe extern "C" fn im2col_f32(
    g: *const ConvGeom,
    x: *const f32,
    m0: usize,
    rows: usize,
    out: *mut f32,
    ld: usize,
) {
    // SAFETY: the caller guarantees `g` points at a valid geometry, `x` holds every image the rows reference
    // and `out` has `rows` rows of `g.k()` writable floats at stride `ld`; the AVX-512 copier runs only after
    // `is_x86_feature_detected!` confirmed AVX-512F.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                let g = &*g;
                if im2col_narrow_f32(g) && ld >= im2col_narrow_span(g) {
                    return x86::im2col_narrow512(g, x, m0, rows, out, ld);
                }
                return x86::im2col512(g, x, m0, rows, out, ld);
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                let g = &*g;
                if im2col_narrow_f32(g) && ld >= im2col_narrow_span(g) {
                    return x86::im2col_narrow256(g, x, m0, rows, out, ld);
                }
            }
        }
        im2col_body::<f32, StdCopy>(&*g, x, m0, rows, out, ld)
    }
}

/// Copies and zero-fills the contiguous runs of an im2col row of `T` elements (f32, or the bits
/// of bf16 for [`crate::micro::bf16`]).
pub(crate) trait RunCopy<T> {
    /// Copies `n` elements from `src` to `dst` (non-overlapping).
    unsafe fn copy(src: *const T, dst: *mut T, n: usize);
    /// Writes `n` zeros at `dst`.
    unsafe fn zero(dst: *mut T, n: usize);
}

/// Portable run copier (`copy_nonoverlapping` / `write_bytes`).
pub(crate) struct StdCopy;
impl<T> RunCopy<T> for StdCopy {
    #[inline(always)]
    unsafe fn copy(src: *const T, dst: *mut T, n: usize) {
        // SAFETY: the caller (`im2col_body`) passes `n` readable elements at `src` and `n` writable elements
        // at `dst`, which do not overlap (input image and im2col scratch).
        unsafe { std::ptr::copy_nonoverlapping(src, dst, n) }
    }
    #[inline(always)]
    unsafe fn zero(dst: *mut T, n: usize) {
        // SAFETY: the caller (`im2col_body`) passes `n` writable elements at `dst`, inside one im2col row;
        // all-zero bytes are 0.0 for f32 and +0.0 for bf16 bits.
        unsafe { std::ptr::write_bytes(dst, 0, n) }
    }
}

/// Shared im2col loop (see [`im2col_f32`]), generic over the element type and how runs are
/// copied.
#[inline(always)]
pub(crate) unsafe fn im2col_body<T, C: RunCopy<T>>(
    g: &ConvGeom,
    x: *const T,
    m0: usize,
    rows: usize,
    out: *mut T,
    ld: usize,
) {
    // SAFETY: the caller guarantees `im2col_f32`'s ranges: only in-image pixels (rows and columns clipped to
    // `0..h` and `0..w`, channels `cin_offset..cin_offset + cin`) of images the rows reference are read, and
    // each row writes exactly `g.k()` floats at `out + r * ld`.
    unsafe {
        let (h, w, c) = (g.h, g.w, g.c);
        let cin = g.cin;
        let ohw = g.oh * g.ow;
        if ohw == 0 || rows == 0 {
            return;
        }
        let img_len = h * w * c;
        let merge_kx = g.dw == 1 && cin == c;
        // (img, oy, ox) of row m0, then advanced incrementally (no divisions per row).
        let mut img = m0 / ohw;
        let mut oy = m0 % ohw / g.ow;
        let mut ox = m0 % g.ow;
        for r in 0..rows {
            if r > 0 {
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
            let xi = x.add(img * img_len + g.cin_offset);
            let mut o = out.add(r * ld);
            // Valid kx range [kx0, kx1): ix = ox*sw + kx*dw - pw in [0, w).
            let bx = (ox * g.sw) as isize - g.pw as isize;
            let (kx0, kx1) = valid_range(bx, g.dw, g.kw, w);
            let by = (oy * g.sh) as isize - g.ph as isize;
            for ky in 0..g.kh {
                let iy = by + (ky * g.dh) as isize;
                if iy < 0 || iy >= h as isize {
                    C::zero(o, g.kw * cin);
                    o = o.add(g.kw * cin);
                    continue;
                }
                let xrow = xi.add(iy as usize * w * c);
                if kx0 > 0 {
                    C::zero(o, kx0 * cin);
                }
                if merge_kx {
                    if kx1 > kx0 {
                        let ix0 = (bx + kx0 as isize) as usize;
                        C::copy(xrow.add(ix0 * c), o.add(kx0 * cin), (kx1 - kx0) * cin);
                    }
                } else {
                    for kx in kx0..kx1 {
                        let ix = (bx + (kx * g.dw) as isize) as usize;
                        C::copy(xrow.add(ix * c), o.add(kx * cin), cin);
                    }
                }
                if kx1 < g.kw {
                    C::zero(o.add(kx1.max(kx0) * cin), (g.kw - kx1.max(kx0)) * cin);
                }
                o = o.add(g.kw * cin);
            }
        }
    }
}

/// Range `[k0, k1)` of taps `k < kn` with `base + k*d` in `[0, len)` (empty range as `k0 == k1`
/// or `k1 < k0` is never returned: `k0 <= k1`).
#[inline]
pub(crate) fn valid_range(base: isize, d: usize, kn: usize, len: usize) -> (usize, usize) {
    if d <= 1 {
        // Common case without divisions.
        let len = len as isize;
        let k0 = if base >= 0 { 0 } else { (-base) as usize }.min(kn);
        let k1 = if base >= len { 0 } else { (len - base) as usize }.min(kn).max(k0);
        return (k0, k1);
    }
    let d = d as isize;
    let len = len as isize;
    // first k with base + k*d >= 0
    let k0 = if base >= 0 { 0 } else { ((-base) + d - 1) / d };
    // first k with base + k*d >= len
    let k1 = if base >= len { 0 } else { (len - base + d - 1) / d };
    let k0 = (k0 as usize).min(kn);
    let k1 = (k1 as usize).min(kn).max(k0);
    (k0, k1)
}

/// Depthwise weights packed as `[kh*kw][round_up_16(c)]` (tap-major, channels contiguous and
/// zero-padded to a multiple of 16), from the source `w[ch*kh*kw + ky*kw + kx]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PackedDwF32 {
    /// Channels (groups).
    pub c: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// `kh*kw*round_up_16(c)` floats.
    pub data: Vec<f32>,
}

/// Packs depthwise weights `w[ch*kh*kw + ky*kw + kx]` into [`PackedDwF32`].
///
/// Entries missing from a short `w` read as 0.
pub fn pack_depthwise_f32(w: &[f32], c: usize, kh: usize, kw: usize) -> Result<PackedDwF32, TryReserveError> {
    let taps = kh * kw;
    let cp = round_up_16(c);
    let mut data = try_zeroed::<f32>(taps * cp)?;
    for ch in 0..c {
        for tap in 0..taps {
            data[tap * cp + ch] = w.get(ch * taps + tap).copied().unwrap_or(0.0);
        }
    }
    Ok(PackedDwF32 { c, kh, kw, data })
}

/// Bytes of [`PackedDwF32::data`] for `c` channels and a `kh x kw` kernel:
/// `kh * kw * round_up_16(c)` floats.
pub fn packed_dw_bytes(c: usize, kh: usize, kw: usize) -> u128 {
    (kh as u128) * (kw as u128) * ((c as u128).div_ceil(16) * 16) * 4
}

/// Signature shared by the depthwise kernels: `(g, x, w, row, out, ldo)`; see
/// [`depthwise_f32_avx512`].
pub type DepthwiseF32 = unsafe extern "C" fn(*const ConvGeom, *const f32, *const f32, usize, *mut f32, usize);

/// Portable depthwise row kernel; same contract as [`depthwise_f32_avx512`].
///
/// # Safety
/// As for [`depthwise_f32_avx512`] (minus the CPU requirement).
pub unsafe extern "C" fn depthwise_f32_scalar(
    g: *const ConvGeom,
    x: *const f32,
    w: *const f32,
    row: usize,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: the caller guarantees `depthwise_f32_avx512`'s ranges: `x` holds image `row / oh` (only
    // in-image taps are read), `w` the packed weights, and `out` `ow` pixels of `c` writable floats at stride
    // `ldo`.
    unsafe {
        let g = &*g;
        if g.oh == 0 {
            return;
        }
        let c = g.c;
        let cp = round_up_16(c);
        let img = row / g.oh;
        let oy = row % g.oh;
        let xi = x.add(img * g.h * g.w * c);
        let by = (oy * g.sh) as isize - g.ph as isize;
        let (ky0, ky1) = valid_range(by, g.dh, g.kh, g.h);
        for ox in 0..g.ow {
            let bx = (ox * g.sw) as isize - g.pw as isize;
            let (kx0, kx1) = valid_range(bx, g.dw, g.kw, g.w);
            let o = out.add(ox * ldo);
            for ch in 0..c {
                let mut acc = 0.0f32;
                for ky in ky0..ky1 {
                    let iy = (by + (ky * g.dh) as isize) as usize;
                    for kx in kx0..kx1 {
                        let ix = (bx + (kx * g.dw) as isize) as usize;
                        let xv = *xi.add((iy * g.w + ix) * c + ch);
                        let wv = *w.add((ky * g.kw + kx) * cp + ch);
                        acc = xv.mul_add(wv, acc);
                    }
                }
                *o.add(ch) = acc;
            }
        }
    }
}

/// AVX-512 depthwise convolution of one output row (`row = img*oh + oy`), groups == channels ==
/// `g.c`, channel multiplier 1 (`g.cin`/`g.cin_offset` are ignored; the pixel stride is `g.c`).
///
/// `out[ox*ldo + ch] = sum over in-image taps (ky, kx), in that order, of
/// x[img][iy][ix][ch] * w[(ky*kw + kx)*round_up_16(c) + ch]` with `iy = oy*sh + ky*dh - ph`,
/// `ix = ox*sw + kx*dw - pw`; out-of-image taps are skipped. Vectorized over 16 channels per zmm
/// (masked tail); for 3x3 and 5x5 kernels the weights of a channel block stay in registers across
/// `ox`, and interior pixels are computed 8 (3x3) or 4 (5x5) at a time as independent FMA chains
/// (input loads shared between taps when stride and dilation are 1). Writes exactly `c` floats at
/// each `out + ox*ldo`. Runs ~1.6x faster when `x` is 64-byte aligned and `c % 16 == 0` (every
/// pixel's channel vectors then stay within cache lines). Falls back to scalar off x86_64.
///
/// # Safety
/// The CPU must support AVX-512F (use [`depthwise_f32_best`]). `g` valid; `x` holds image `img`;
/// `w` points at packed weights ([`PackedDwF32::data`]); `out` writable for `ow` pixels of `c`
/// floats at stride `ldo`.
pub unsafe extern "C" fn depthwise_f32_avx512(
    g: *const ConvGeom,
    x: *const f32,
    w: *const f32,
    row: usize,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: the caller guarantees `depthwise_f32_scalar`'s ranges and an AVX-512F CPU, which `x86::dw512`
    // requires (`depthwise_f32_best` checks it).
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            x86::dw512(&*g, x, w, row, out, ldo)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            depthwise_f32_scalar(g, x, w, row, out, ldo)
        }
    }
}

/// [`depthwise_f32_avx512`] with the float epilogue `p` applied before each store: output row
/// `row` goes to `out` (`out_stride` bytes per pixel, the channels contiguous) as
/// [`super::fepilogue::epilogue_f32`] would store it from the kernel's tile, bit for bit; `res`
/// is the residual's row in the output's layout, or null. A list that cannot run in registers
/// ([`super::fepilogue::FloatEpilogue::in_registers`]; the emitter never passes one) is applied
/// element by element by its scalar definition.
///
/// # Safety
/// As for [`depthwise_f32_avx512`] with `out` writable (and `res` readable) for `ow` pixels of
/// `c` floats at stride `out_stride`; `p` valid, its per-channel arrays covering the channels.
pub unsafe extern "C" fn depthwise_f32_epi_avx512(
    g: *const ConvGeom,
    x: *const f32,
    w: *const f32,
    row: usize,
    out: *mut u8,
    out_stride: usize,
    p: *const super::fepilogue::FloatEpilogue,
    res: *const u8,
) {
    // SAFETY: the caller's contract, passed on; the scalar fallback reads and writes the same
    // elements.
    unsafe {
        let (fe, ld) = (&*p, out_stride / 4);
        let (out, res) = (out as *mut f32, res as *const f32);
        #[cfg(target_arch = "x86_64")]
        if let Some(canon) = fe.in_registers() {
            return x86::dw512_with(&*g, x, w, row, out, ld, Some(canon), res);
        }
        depthwise_f32_avx512(g, x, w, row, out, ld);
        // in place: each element is read before it is written
        apply_scalar_epilogue(fe, out, ld, (*g).ow, 0, (*g).c, out as *mut u8, out_stride, res as *const u8);
    }
}

/// AVX2 depthwise convolution of one output row: [`depthwise_f32_avx512`]'s contract and sums
/// (each channel's in-image taps in `(ky, kx)` order, one FMA each from zero, so the same bits
/// as [`depthwise_f32_scalar`]), eight channels per ymm, up to 32 channels per block and two
/// adjacent output pixels at once where both have the same in-image taps (eight independent
/// FMA chains to cover the FMA latency).
///
/// # Safety
/// The CPU must support AVX2 and FMA (use [`depthwise_f32_best`]); otherwise as
/// [`depthwise_f32_scalar`].
pub unsafe extern "C" fn depthwise_f32_avx2(
    g: *const ConvGeom,
    x: *const f32,
    w: *const f32,
    row: usize,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: the caller guarantees `depthwise_f32_scalar`'s ranges and an AVX2 + FMA CPU, which
    // `x86::dw256` requires.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            x86::dw256(&*g, x, w, row, out, ldo, None, std::ptr::null())
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            depthwise_f32_scalar(g, x, w, row, out, ldo)
        }
    }
}

/// [`depthwise_f32_epi_avx512`] on a CPU with AVX-512F; else the AVX2 kernel with the list
/// applied before each store when it has the branch-free form
/// ([`super::fepilogue::FloatEpilogue::lanes_form`]; the emitter selects no other list on such
/// a CPU), else the best kernel followed by the list's scalar definition. Same contract as
/// [`depthwise_f32_epi_avx512`].
///
/// # Safety
/// As for [`depthwise_f32_epi_avx512`], on a CPU with AVX2 and FMA at least.
pub unsafe extern "C" fn depthwise_f32_epi(
    g: *const ConvGeom,
    x: *const f32,
    w: *const f32,
    row: usize,
    out: *mut u8,
    out_stride: usize,
    p: *const super::fepilogue::FloatEpilogue,
    res: *const u8,
) {
    // SAFETY: the caller's contract, passed on to the kernel of this CPU.
    unsafe {
        let (fe, ld) = (&*p, out_stride / 4);
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return depthwise_f32_epi_avx512(g, x, w, row, out, out_stride, p, res);
            }
            if let Some(lanes) = fe.in_registers().and_then(|c| c.lanes()) {
                return x86::dw256(&*g, x, w, row, out as *mut f32, ld, Some(&lanes), res as *const f32);
            }
        }
        let (dw, _) = depthwise_f32_best();
        dw(g, x, w, row, out as *mut f32, ld);
        // in place: each element is read before it is written
        apply_scalar_epilogue(fe, out as *const f32, ld, (*g).ow, 0, (*g).c, out, out_stride, res);
    }
}

/// Best depthwise kernel for the running CPU and its name (`"avx512f"`, `"avx2"` or
/// `"scalar"`).
pub fn depthwise_f32_best() -> (DepthwiseF32, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return (depthwise_f32_avx512 as DepthwiseF32, "avx512f");
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return (depthwise_f32_avx2 as DepthwiseF32, "avx2");
        }
    }
    (depthwise_f32_scalar as DepthwiseF32, "scalar")
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! x86_64 SIMD implementations; every function here requires the CPU features named in its
    //! `target_feature` attribute.
    use super::super::fepilogue::{canon_in_registers, Canon, Lanes, RegisterEpilogue};
    use super::{im2col_body, round_up_16, valid_range, ConvGeom, RunCopy};
    use std::arch::x86_64::*;

    /// Eight output pixels' state for [`conv_direct512`]: each one's image base, and its window's
    /// top-left input row and column (possibly negative: padding).
    const DIRECT_R: usize = 8;

    /// `acc[r] += src[r][off + t] * w[t * 16..]` for `t < len`, each pixel `r` one FMA per term in
    /// `t` order: 16 columns in zmm (`WIDE`), else 8 in ymm.
    #[target_feature(enable = "avx512f,fma")]
    #[inline]
    unsafe fn fma_run<const WIDE: bool>(
        acc: &mut [__m512; DIRECT_R],
        acc8: &mut [__m256; DIRECT_R],
        src: &[*const f32; DIRECT_R],
        off: usize,
        w: *const f32,
        len: usize,
    ) {
        // SAFETY: the caller passes `len` readable floats at each `src[r] + off` and `len` rows
        // of 16 at `w`.
        unsafe {
            let s: [*const f32; DIRECT_R] = std::array::from_fn(|r| src[r].add(off));
            for t in 0..len {
                if WIDE {
                    let wv = _mm512_loadu_ps(w.add(t * 16));
                    for r in 0..DIRECT_R {
                        acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(*s[r].add(t)), wv, acc[r]);
                    }
                } else {
                    let wv = _mm256_loadu_ps(w.add(t * 16));
                    for r in 0..DIRECT_R {
                        acc8[r] = _mm256_fmadd_ps(_mm256_set1_ps(*s[r].add(t)), wv, acc8[r]);
                    }
                }
            }
        }
    }

    /// [`super::conv_f32_direct`]: `WIDE` computes 16 columns in zmm accumulators, else 8 in ymm.
    #[target_feature(enable = "avx512f,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn conv_direct512<const WIDE: bool>(
        g: &ConvGeom,
        x: *const f32,
        m0: usize,
        rows: usize,
        w: *const f32,
        c: *mut f32,
        ldc: usize,
        zero: *mut f32,
    ) {
        // SAFETY: `conv_f32_direct`'s contract: the source pointers are the images' in-range
        // pixels (`iy` in `0..h`, `ix` in `0..w`, channels `cin_offset..cin_offset + cin`) or the
        // `cin` zeros; `w` has `g.k()` rows of 16 floats; each stored row is inside `c`.
        unsafe {
            std::ptr::write_bytes(zero, 0, g.cin);
            let ohw = g.oh * g.ow;
            if ohw == 0 || rows == 0 {
                return;
            }
            let img_len = g.h * g.w * g.c;
            let (h, wd) = (g.h as isize, g.w as isize);
            let mut img = m0 / ohw;
            let (mut oy, mut ox) = (m0 % ohw / g.ow, m0 % g.ow);
            let mut r0 = 0;
            while r0 < rows {
                let nr = DIRECT_R.min(rows - r0);
                let mut base = [x; DIRECT_R];
                let mut iy0 = [isize::MIN / 2; DIRECT_R];
                let mut ix0 = [0isize; DIRECT_R];
                for r in 0..nr {
                    base[r] = x.add(img * img_len + g.cin_offset);
                    iy0[r] = (oy * g.sh) as isize - g.ph as isize;
                    ix0[r] = (ox * g.sw) as isize - g.pw as isize;
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
                let mut acc = [_mm512_setzero_ps(); DIRECT_R];
                let mut acc8 = [_mm256_setzero_ps(); DIRECT_R];
                // every pixel's window inside the image, kernel rows contiguous: one pointer per
                // pixel and kernel row, `kw * cin` terms from it without a check per tap (the
                // pixels past `nr` repeat the first one's, their sums unused)
                let (span_y, span_x) = ((g.kh - 1) * g.dh, (g.kw - 1) * g.dw);
                let inside = (0..nr).all(|r| {
                    iy0[r] >= 0 && iy0[r] + (span_y as isize) < h && ix0[r] >= 0 && ix0[r] + (span_x as isize) < wd
                });
                if inside && g.dw == 1 && g.cin == g.c {
                    let mut p = [x; DIRECT_R];
                    for r in 0..DIRECT_R {
                        let q = r.min(nr - 1);
                        p[r] = base[q].add((iy0[q] as usize * g.w + ix0[q] as usize) * g.c);
                    }
                    let run = g.kw * g.cin;
                    for ky in 0..g.kh {
                        let wt = w.add(ky * run * 16);
                        let off = ky * g.dh * g.w * g.c;
                        fma_run::<WIDE>(&mut acc, &mut acc8, &p, off, wt, run);
                    }
                } else {
                    let mut wt = w;
                    for ky in 0..g.kh {
                        for kx in 0..g.kw {
                            let mut src = [zero as *const f32; DIRECT_R];
                            for r in 0..DIRECT_R {
                                let iy = iy0[r] + (ky * g.dh) as isize;
                                let ix = ix0[r] + (kx * g.dw) as isize;
                                if iy >= 0 && iy < h && ix >= 0 && ix < wd {
                                    src[r] = base[r].add((iy as usize * g.w + ix as usize) * g.c);
                                }
                            }
                            fma_run::<WIDE>(&mut acc, &mut acc8, &src, 0, wt, g.cin);
                            wt = wt.add(g.cin * 16);
                        }
                    }
                }
                for r in 0..nr {
                    if WIDE {
                        _mm512_storeu_ps(c.add((r0 + r) * ldc), acc[r]);
                    } else {
                        _mm256_storeu_ps(c.add((r0 + r) * ldc), acc8[r]);
                    }
                }
                r0 += nr;
            }
        }
    }

    /// Mask selecting the first `n` (<= 16) lanes.
    #[inline(always)]
    fn lane_mask(n: usize) -> u16 {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as u16
        }
    }

    /// Copies `n` floats with zmm loads/stores (masked tail).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn copy512(src: *const f32, dst: *mut f32, n: usize) {
        // SAFETY: the caller passes `n` readable floats at `src` and `n` writable floats at `dst`; full
        // vectors cover `0..n - n % 16` and the masked tail touches only floats below `n`.
        unsafe {
            let mut i = 0;
            while i + 64 <= n {
                let v0 = _mm512_loadu_ps(src.add(i));
                let v1 = _mm512_loadu_ps(src.add(i + 16));
                let v2 = _mm512_loadu_ps(src.add(i + 32));
                let v3 = _mm512_loadu_ps(src.add(i + 48));
                _mm512_storeu_ps(dst.add(i), v0);
                _mm512_storeu_ps(dst.add(i + 16), v1);
                _mm512_storeu_ps(dst.add(i + 32), v2);
                _mm512_storeu_ps(dst.add(i + 48), v3);
                i += 64;
            }
            while i + 16 <= n {
                _mm512_storeu_ps(dst.add(i), _mm512_loadu_ps(src.add(i)));
                i += 16;
            }
            if i < n {
                if n >= 16 {
                    // Tail as one unmasked vector ending at n, overlapping copied floats (masked
                    // loads/stores are slow on Zen4).
                    _mm512_storeu_ps(dst.add(n - 16), _mm512_loadu_ps(src.add(n - 16)));
                } else {
                    let m = lane_mask(n - i);
                    _mm512_mask_storeu_ps(dst.add(i), m, _mm512_maskz_loadu_ps(m, src.add(i)));
                }
            }
        }
    }

    /// Writes `n` zeros with zmm stores (masked tail).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn zero512(dst: *mut f32, n: usize) {
        // SAFETY: the caller passes `n` writable floats at `dst`; full vectors and the masked tail stay below
        // `n`.
        unsafe {
            let z = _mm512_setzero_ps();
            let mut i = 0;
            while i + 16 <= n {
                _mm512_storeu_ps(dst.add(i), z);
                i += 16;
            }
            if i < n {
                _mm512_mask_storeu_ps(dst.add(i), lane_mask(n - i), z);
            }
        }
    }

    /// AVX-512 run copier for im2col.
    struct Avx512Copy;
    impl RunCopy<f32> for Avx512Copy {
        #[inline(always)]
        unsafe fn copy(src: *const f32, dst: *mut f32, n: usize) {
            // SAFETY: `copy512`'s contract is this method's (`n` floats at each side, not overlapping);
            // AVX-512F: `Avx512Copy` is used only by `im2col512`, which requires it.
            unsafe { copy512(src, dst, n) }
        }
        #[inline(always)]
        unsafe fn zero(dst: *mut f32, n: usize) {
            // SAFETY: as for `copy`: `n` writable floats at `dst`, AVX-512F present.
            unsafe { zero512(dst, n) }
        }
    }

    /// im2col with AVX-512 run copies (see `im2col_f32`).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn im2col512(g: &ConvGeom, x: *const f32, m0: usize, rows: usize, out: *mut f32, ld: usize) {
        // SAFETY: the caller (`im2col_f32`) guarantees its ranges and has checked AVX-512F, which
        // `Avx512Copy` needs.
        unsafe { im2col_body::<f32, Avx512Copy>(g, x, m0, rows, out, ld) }
    }

    /// [`im2col_narrow512`] with 256-bit vectors (AVX2): a narrow kernel row (`rb <= 32` floats)
    /// of a window inside the image is up to four 8-float loads and stores, where the loads stay
    /// inside the image; other rows take the portable copier. A store may run past the kernel
    /// row into the next one's place (written after it) or past `g.k()` (within `ld`).
    #[target_feature(enable = "avx2")]
    pub unsafe fn im2col_narrow256(g: &ConvGeom, x: *const f32, m0: usize, rows: usize, out: *mut f32, ld: usize) {
        // SAFETY: the caller (`im2col_f32`) guarantees its ranges and `ld >= im2col_narrow_span(g) >= (kh -
        // 1) * rb + 8 * nv`, so every store (floats `ky * rb .. ky * rb + 8 * nv` of a row) stays in its row;
        // the loads read `8 * nv` floats from each kernel row's first tap, checked to end inside the image.
        unsafe {
            let rb = g.kw * g.cin;
            let nv = rb.div_ceil(8);
            let ky_stride = g.dh.max(1) * g.w * g.c;
            let last_ky = (g.kh - 1) * ky_stride;
            g.walk_windows(
                m0,
                rows,
                |r, m| im2col_body::<f32, super::StdCopy>(g, x, m, 1, out.add(r * ld), ld),
                |r, first, img_end| {
                    let (src, dst) = (x.add(first), out.add(r * ld));
                    if first + last_ky + 8 * nv > img_end {
                        return im2col_body::<f32, super::StdCopy>(g, x, m0 + r, 1, dst, ld);
                    }
                    for ky in 0..g.kh {
                        let (p, d) = (src.add(ky * ky_stride), dst.add(ky * rb));
                        for v in 0..nv {
                            _mm256_storeu_ps(d.add(8 * v), _mm256_loadu_ps(p.add(8 * v)));
                        }
                    }
                },
            );
        }
    }

    /// [`im2col512`] for a narrow kernel row of `rb = kw * cin <= 32` contiguous floats
    /// (`super::im2col_narrow_f32`) when `ld >=` [`super::im2col_narrow_span`]: a row whose whole
    /// window lies inside the image is `kh` loads of `rb` floats (whole vectors while they stay
    /// inside the image, masked near its end), each stored as one or two (`rb > 16`) 16-float
    /// vectors at float `ky * rb` of the row in increasing `ky`, so what a store writes beyond its
    /// kernel row is overwritten by the next one's, and the last one's stays in `k..ld`. Rows
    /// touching the padding go through the general loop, one row at a time. (The masked forms
    /// cost several times a plain access on some cores, Zen 4 among them, and a 9-float run was
    /// one masked load and store; a 21-float run, ResNet's 7x7 stem, was a whole and a masked
    /// copy after the run-length arithmetic.)
    #[target_feature(enable = "avx512f")]
    pub unsafe fn im2col_narrow512(g: &ConvGeom, x: *const f32, m0: usize, rows: usize, out: *mut f32, ld: usize) {
        // SAFETY: the caller (`im2col_f32`) guarantees its ranges (`rows` rows of `ld` writable floats
        // at `out`, `x` covering every image the rows touch) and `ld >= (kh - 1) * rb + 16 * nv`, so
        // every store (floats `ky * rb .. ky * rb + 16 * nv` of a row, `ky < kh`) stays in its row;
        // an interior row's loads read the `rb` floats (masked) of in-image pixels `ix0 .. ix0 + kw`
        // of rows `iy0 + ky * dh` of its image, or `16 * nv` floats where those stay inside the image
        // (`whole`).
        unsafe {
            let rb = g.kw * g.cin;
            let two = rb > 16;
            let (mask0, mask1) = (lane_mask(rb.min(16)), lane_mask(rb.saturating_sub(16)));
            let span = if two { 32 } else { 16 };
            let ky_stride = g.dh.max(1) * g.w * g.c;
            let last_ky = (g.kh - 1) * ky_stride;
            g.walk_windows(
                m0,
                rows,
                |r, m| im2col_body::<f32, Avx512Copy>(g, x, m, 1, out.add(r * ld), ld),
                |r, first, img_end| {
                    // whole-vector loads where they stay inside this image
                    let whole = first + last_ky + span <= img_end;
                    let (src, dst) = (x.add(first), out.add(r * ld));
                    for ky in 0..g.kh {
                        let (p, d) = (src.add(ky * ky_stride), dst.add(ky * rb));
                        let v = if whole { _mm512_loadu_ps(p) } else { _mm512_maskz_loadu_ps(mask0, p) };
                        _mm512_storeu_ps(d, v);
                        if two {
                            let p = p.add(16);
                            let v = if whole { _mm512_loadu_ps(p) } else { _mm512_maskz_loadu_ps(mask1, p) };
                            _mm512_storeu_ps(d.add(16), v);
                        }
                    }
                },
            );
        }
    }

    /// The narrow GEMM (see `gemm_f32_narrow_avx512`): `bt` the weight rows (4 rows of
    /// `round_up_16(k)` floats for `nr <= 4`, else `NARROW`; zeros past the weights), rows of `a`
    /// in blocks of `R`.
    #[target_feature(enable = "avx512f,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn narrow512(
        a: *const f32,
        lda: usize,
        m: usize,
        bt: *const f32,
        k: usize,
        c: *mut f32,
        ldc: usize,
        nr: usize,
    ) {
        // SAFETY: the caller's ranges (`gemm_f32_narrow_avx512`): rows `0..m` of `k` floats of `a`,
        // 4 (`nr <= 4`) or `NARROW` rows of `round_up_16(k)` floats at `bt`, rows `0..m` of `nr`
        // floats of `c`.
        unsafe {
            let mut r = 0;
            if nr <= 4 {
                while r < m {
                    let rows = (m - r).min(6);
                    let (ar, cr) = (a.add(r * lda), c.add(r * ldc));
                    match rows {
                        6 => narrow_block::<6, 4>(ar, lda, bt, k, cr, ldc, nr),
                        5 => narrow_block::<5, 4>(ar, lda, bt, k, cr, ldc, nr),
                        4 => narrow_block::<4, 4>(ar, lda, bt, k, cr, ldc, nr),
                        3 => narrow_block::<3, 4>(ar, lda, bt, k, cr, ldc, nr),
                        2 => narrow_block::<2, 4>(ar, lda, bt, k, cr, ldc, nr),
                        _ => narrow_block::<1, 4>(ar, lda, bt, k, cr, ldc, nr),
                    }
                    r += rows;
                }
            } else {
                while r < m {
                    let rows = (m - r).min(3);
                    let (ar, cr) = (a.add(r * lda), c.add(r * ldc));
                    match rows {
                        3 => narrow_block::<3, 8>(ar, lda, bt, k, cr, ldc, nr),
                        2 => narrow_block::<2, 8>(ar, lda, bt, k, cr, ldc, nr),
                        _ => narrow_block::<1, 8>(ar, lda, bt, k, cr, ldc, nr),
                    }
                    r += rows;
                }
            }
        }
    }

    /// `R` rows of `a` against the first `NJ` weight rows: `R x NJ` zmm accumulators of partial
    /// sums over `t` (sixteen at a time, the last block's lanes past `k` masked to zero in `a`),
    /// each reduced across its lanes (halves added, then `vhaddps` pairwise) into `NJ` sums per
    /// row, of which the first `nr` are stored.
    #[target_feature(enable = "avx512f,fma")]
    #[inline]
    unsafe fn narrow_block<const R: usize, const NJ: usize>(
        a: *const f32,
        lda: usize,
        bt: *const f32,
        k: usize,
        c: *mut f32,
        ldc: usize,
        nr: usize,
    ) {
        // SAFETY: `R` rows of `k` readable floats at `a` (stride `lda`; the last block's loads are
        // masked to `t < k`), weight rows of `round_up_16(k)` readable floats at `bt`, and `R`
        // rows of `c` writable for the `nr` stored lanes (a masked store unless `nr == 8`).
        unsafe {
            let kp = (k + 15) & !15;
            let mut acc = [[_mm512_setzero_ps(); NJ]; R];
            let mut t = 0;
            while t < k {
                let full = t + 16 <= k;
                let mask = lane_mask(k - t);
                let mut av = [_mm512_setzero_ps(); R];
                for (i, v) in av.iter_mut().enumerate() {
                    let p = a.add(i * lda + t);
                    *v = if full { _mm512_loadu_ps(p) } else { _mm512_maskz_loadu_ps(mask, p) };
                }
                for j in 0..NJ {
                    let bv = _mm512_loadu_ps(bt.add(j * kp + t));
                    for i in 0..R {
                        acc[i][j] = _mm512_fmadd_ps(av[i], bv, acc[i][j]);
                    }
                }
                t += 16;
            }
            let half = |z: __m512| -> __m256 {
                _mm256_add_ps(
                    _mm512_castps512_ps256(z),
                    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(z))),
                )
            };
            for i in 0..R {
                let cr = c.add(i * ldc);
                let y: [__m256; NJ] = std::array::from_fn(|j| half(acc[i][j]));
                if NJ == 8 {
                    let h01 = _mm256_hadd_ps(y[0], y[1]);
                    let h23 = _mm256_hadd_ps(y[2], y[3]);
                    let h45 = _mm256_hadd_ps(y[4], y[5]);
                    let h67 = _mm256_hadd_ps(y[6], y[7]);
                    let h0123 = _mm256_hadd_ps(h01, h23);
                    let h4567 = _mm256_hadd_ps(h45, h67);
                    // lanes j: sum of y[j]'s first four lanes plus its last four
                    let s = _mm256_add_ps(
                        _mm256_permute2f128_ps::<0x20>(h0123, h4567),
                        _mm256_permute2f128_ps::<0x31>(h0123, h4567),
                    );
                    if nr >= 8 {
                        _mm256_storeu_ps(cr, s);
                    } else {
                        _mm512_mask_storeu_ps(cr, lane_mask(nr), _mm512_castps256_ps512(s));
                    }
                } else {
                    let h01 = _mm256_hadd_ps(y[0], y[1]);
                    let h23 = _mm256_hadd_ps(y[2], y[3]);
                    let h = _mm256_hadd_ps(h01, h23);
                    let s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
                    _mm512_mask_storeu_ps(cr, lane_mask(nr.min(4)), _mm512_castps128_ps512(s));
                }
            }
        }
    }

    /// `MR x (NV zmm [+ 1 ymm])` register block: rows `0..MR` of `a` (stride `lda`), `NV` zmm
    /// columns of `b` (stride `ldb`) and, with `HALF`, 8 more columns in a ymm (on Zen4 a ymm FMA
    /// costs half a zmm FMA, so a 24-column panel runs at full speed). Stores `NV` zmm (the last
    /// one masked with `last` unless `HALF`) and the ymm masked with `last` (low 8 lanes).
    /// With `ACC`, the accumulators start from the partial sums already in `c` (continuing a
    /// k-blocked reduction; bit-identical to one long chain since partial sums are f32).
    #[target_feature(enable = "avx512f,fma")]
    #[inline]
    unsafe fn blk512<const MR: usize, const NV: usize, const HALF: bool, const ACC: bool>(
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        k: usize,
        c: *mut f32,
        ldc: usize,
        last: u16,
        epi: Option<&Epi<'_>>,
    ) {
        // SAFETY: the caller (`rows512`) passes `MR` rows of the current k block of `a` (readable at stride
        // `lda`), the panel rows of that block at `b` (`16 * NV` floats each, or 8 in the last half vector),
        // and `MR` rows of `c` with room for the block's columns at stride `ldc`; masked stores write only
        // the `lastn` valid lanes of the last vector.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); NV]; MR];
            let mut hacc = [_mm256_setzero_ps(); MR];
            // Mask of the last stored zmm (full when a ymm half follows).
            let zlast = if HALF { 0xffff } else { last };
            if ACC {
                for i in 0..MR {
                    let cr = c.add(i * ldc);
                    for v in 0..NV {
                        acc[i][v] = if v + 1 < NV {
                            _mm512_loadu_ps(cr.add(16 * v))
                        } else {
                            _mm512_maskz_loadu_ps(zlast, cr.add(16 * v))
                        };
                    }
                    if HALF {
                        hacc[i] = _mm512_castps512_ps256(_mm512_maskz_loadu_ps(last, cr.add(16 * NV)));
                    }
                }
            }
            let mut ap = a;
            let mut bp = b;
            let mut t = 0;
            let pf = PREFETCH_K * ldb;
            while t < k {
                let mut bv = [_mm512_setzero_ps(); NV];
                for v in 0..NV {
                    bv[v] = _mm512_loadu_ps(bp.add(16 * v));
                }
                let bh = if HALF { _mm256_loadu_ps(bp.add(16 * NV)) } else { _mm256_setzero_ps() };
                for v in 0..NV + usize::from(HALF) {
                    _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(pf + 16 * v) as *const i8);
                }
                for i in 0..MR {
                    let s = *ap.add(i * lda);
                    if NV == 0 {
                        // a ymm-only block broadcasts into a ymm (a zmm broadcast costs more on
                        // Zen 4 and its upper half would go unused)
                        hacc[i] = _mm256_fmadd_ps(_mm256_set1_ps(s), bh, hacc[i]);
                        continue;
                    }
                    let av = _mm512_set1_ps(s);
                    for v in 0..NV {
                        acc[i][v] = _mm512_fmadd_ps(av, bv[v], acc[i][v]);
                    }
                    if HALF {
                        hacc[i] = _mm256_fmadd_ps(_mm512_castps512_ps256(av), bh, hacc[i]);
                    }
                }
                ap = ap.add(1);
                bp = bp.add(ldb);
                t += 1;
            }
            if let Some(e) = epi {
                // the epilogue on the accumulators, stored to the output (the ymm's upper lanes,
                // undefined, are computed and never stored); one loop per form of the list, so
                // the branch-free one keeps the accumulators in registers
                macro_rules! store_through {
                    ($f:expr) => {
                        for i in 0..MR {
                            let (orow, rrow) = (e.out.add(i * e.ld), e.res.wrapping_add(i * e.ld));
                            for v in 0..NV {
                                let m = if v + 1 < NV { 0xffff } else { zlast };
                                let x = $f(acc[i][v], e.col + 16 * v, rrow.wrapping_add(16 * v), m);
                                if m == 0xffff {
                                    _mm512_storeu_ps(orow.add(16 * v), x);
                                } else {
                                    _mm512_mask_storeu_ps(orow.add(16 * v), m, x);
                                }
                            }
                            if HALF {
                                let h = _mm512_castps256_ps512(hacc[i]);
                                let x = $f(h, e.col + 16 * NV, rrow.wrapping_add(16 * NV), last);
                                _mm512_mask_storeu_ps(orow.add(16 * NV), last, x);
                            }
                        }
                    };
                }
                match e.form {
                    RegisterEpilogue::Lanes(l) => store_through!(|x, col, res, m| l.apply(x, col, res, m)),
                    RegisterEpilogue::Canon(c) => {
                        store_through!(|x, col, res, m| canon_in_registers(c, x, col, res, m))
                    }
                }
                return;
            }
            for i in 0..MR {
                let cr = c.add(i * ldc);
                for v in 0..NV {
                    if v + 1 < NV {
                        _mm512_storeu_ps(cr.add(16 * v), acc[i][v]);
                    } else {
                        _mm512_mask_storeu_ps(cr.add(16 * v), zlast, acc[i][v]);
                    }
                }
                if HALF {
                    _mm512_mask_storeu_ps(cr.add(16 * NV), last, _mm512_castps256_ps512(hacc[i]));
                }
            }
        }
    }

    /// How many k steps ahead [`blk512`] prefetches its panel rows. A packed weight row is the
    /// whole layer's width (`ldb` floats: 2 KiB apart for 512 columns), so a column chunk's k
    /// steps touch a new page every row or two, which the hardware prefetchers (they stay inside
    /// a page) do not follow; the first row block of each k block then waits on memory for
    /// every row (ResNet-18's layer4 streams 9.4 MB of weights per convolution, 16.8 MB as
    /// Winograd). Measured on a Sapphire Rapids core in the whole model, where the weights come
    /// from beyond L2, with layer4's 3x3 convolutions as im2col GEMMs: 16, 48, 96 and 160 steps
    /// ahead took ResNet-18 from 25.3-25.7 ms to 22.9, 22.4, 23.1 and 23.2 ms (those layers
    /// 2.6-2.8 -> 2.1-2.3 ms each); as shipped (Winograd), layer4's 3.0-3.2 -> 2.25 ms each,
    /// ResNet-18 25.5 -> 20.2-22.4 ms and MobileNetV2 6.4-6.7 -> 6.3 ms. A prefetch is a hint:
    /// past the panel's end it reads nothing the kernel relies on.
    const PREFETCH_K: usize = 48;

    /// Reduction block of the AVX-512 GEMM: a 48-column B sub-panel of `KC` steps is 48 KiB, so
    /// it stays in L1/L2 while every row block of the call streams over it.
    const KC: usize = 256;

    /// Main row-block height for `NV` zmm (+ `HALF` ymm) columns: 24 accumulators.
    const fn mr512(nv: usize, half: bool) -> usize {
        match (nv, half) {
            (0, _) | (1, false) => 24,
            (1, true) | (2, false) => 12,
            _ => 8,
        }
    }

    /// Calls `blk512::<$n, NV, HALF, ACC>` for a runtime row count `$rem` from the given list.
    macro_rules! rows_dispatch {
        ($rem:expr, $acc:expr, $args:tt, [$($n:literal),*]) => {
            match ($rem, $acc) {
                $(
                    ($n, false) => blk_call!($n, false, $args),
                    ($n, true) => blk_call!($n, true, $args),
                )*
                _ => {}
            }
        };
    }
    macro_rules! blk_call {
        ($n:literal, $acc:literal, ($($arg:expr),*)) => {
            blk512::<$n, NV, HALF, $acc>($($arg),*)
        };
    }

    /// All rows for one chunk of `NV` zmm (+ `HALF` ymm) columns, k-blocked by [`KC`]: for each
    /// k block, every row block (at most `MR` rows, all of about equal height) continues its
    /// partial sums from `c`, so the B sub-panel stays in cache.
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn rows512<const NV: usize, const HALF: bool>(
        a: *const f32,
        lda: usize,
        m: usize,
        b: *const f32,
        ldb: usize,
        k: usize,
        c: *mut f32,
        ldc: usize,
        last: u16,
        epi: Option<&Epi<'_>>,
    ) {
        // SAFETY: the caller (`gemm512`) passes `gemm_f32_avx512`'s ranges for one column chunk; row blocks
        // `i..i + MR` and the remainder stay below `m`, and k blocks stay below `k`.
        unsafe {
            const { assert!(NV <= 3 && (NV >= 1 || HALF) && (NV <= 2 || !HALF)) };
            let mr = mr512(NV, HALF);
            // Rows in `nblk` blocks of equal height (within one) of at most `mr`: 49 rows of a
            // 12-row block are 10+10+10+10+9, not 4x12+1 (a 1-row block is latency-bound: one
            // accumulator chain per vector).
            let nblk = m.div_ceil(mr);
            let mut k0 = 0;
            loop {
                let kc = (k - k0).min(KC);
                let acc = k0 > 0;
                // the epilogue goes with the last k block
                let final_block = k0 + kc >= k;
                let (ak, bk) = (a.add(k0), b.add(k0 * ldb));
                let mut r = 0;
                let mut bi = 0;
                while r < m {
                    let rows = m / nblk + usize::from(bi < m % nblk);
                    bi += 1;
                    let (ar, cr) = (ak.add(r * lda), c.add(r * ldc));
                    let er = epi.filter(|_| final_block).map(|e| e.at(r, 0));
                    let er = er.as_ref();
                    match mr {
                        24 => rows_dispatch!(
                            rows,
                            acc,
                            (ar, lda, bk, ldb, kc, cr, ldc, last, er),
                            [24, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23]
                        ),
                        12 => rows_dispatch!(
                            rows,
                            acc,
                            (ar, lda, bk, ldb, kc, cr, ldc, last, er),
                            [12, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
                        ),
                        _ => rows_dispatch!(
                            rows,
                            acc,
                            (ar, lda, bk, ldb, kc, cr, ldc, last, er),
                            [8, 1, 2, 3, 4, 5, 6, 7]
                        ),
                    }
                    r += rows;
                }
                k0 += kc;
                if k0 >= k {
                    break;
                }
            }
        }
    }

    /// Whether a column group of at most 8 valid columns runs faster as a ymm beside the zmm
    /// groups than as one more (masked) zmm, measured once per process on a 96 x 24 GEMM with
    /// `k = 144` (a MobileNetV2 projection's shape) in cache, the faster of five alternating
    /// rounds. On Zen 4 (256-bit FMA units: a zmm FMA costs two ymm ones) the ymm is about 1.3x
    /// faster; on Sapphire Rapids the masked zmm ran MobileNetV2's 24-column projection at 51.7
    /// GMAC/s against the ymm's 35.2. Both compute each column's sum in the same order, so the
    /// results do not depend on the choice.
    fn half_pays() -> bool {
        static HALF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HALF.get_or_init(|| {
            const M: usize = 96;
            const K: usize = 144;
            const N: usize = 24;
            let a: Vec<f32> = (0..M * K).map(|i| (i % 7) as f32 * 0.25).collect();
            let b: Vec<f32> = (0..K * 32).map(|i| (i % 5) as f32 * 0.5).collect();
            let mut c = vec![0f32; M * 32];
            let (mut half, mut full) = (f64::MAX, f64::MAX);
            for _ in 0..5 {
                let t = std::time::Instant::now();
                // SAFETY: `a` is M x K, `b` K rows of 32 (the panel stride of 24 columns), `c` M
                // rows of 32 floats; the caller of `gemm512` checked AVX-512F and FMA.
                unsafe {
                    rows512::<1, true>(a.as_ptr(), K, M, b.as_ptr(), 32, K, c.as_mut_ptr(), 32, lane_mask(N - 16), None)
                };
                half = half.min(t.elapsed().as_secs_f64());
                let t = std::time::Instant::now();
                // SAFETY: as above.
                unsafe {
                    rows512::<2, false>(
                        a.as_ptr(),
                        K,
                        M,
                        b.as_ptr(),
                        32,
                        K,
                        c.as_mut_ptr(),
                        32,
                        lane_mask(N - 16),
                        None,
                    )
                };
                full = full.min(t.elapsed().as_secs_f64());
            }
            std::hint::black_box(&c);
            half < full
        })
    }

    /// A float epilogue applied in registers (`gemm_f32_epi_avx512`): the canonical list in the
    /// form the kernel applies it, the layer column of the first column, the output and residual
    /// (row 0 of the block, that column) and their row stride in floats.
    pub(crate) struct Epi<'a> {
        pub(crate) form: RegisterEpilogue<'a>,
        pub(crate) col: usize,
        pub(crate) out: *mut f32,
        pub(crate) ld: usize,
        pub(crate) res: *const f32,
    }

    impl Epi<'_> {
        /// The same epilogue `rows` rows and `cols` columns further.
        fn at(&self, rows: usize, cols: usize) -> Self {
            let off = rows * self.ld + cols;
            Epi {
                form: self.form,
                col: self.col + cols,
                out: self.out.wrapping_add(off),
                ld: self.ld,
                res: if self.res.is_null() { self.res } else { self.res.wrapping_add(off) },
            }
        }
    }

    /// AVX-512 GEMM driver (see `gemm_f32_avx512`): columns in chunks of up to 48; a chunk
    /// whose last 16-column group has at most 8 valid columns computes that group in a ymm
    /// where that is faster on this CPU (`half_pays`), else in a masked zmm.
    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn gemm512(
        a: *const f32,
        lda: usize,
        m: usize,
        b: *const f32,
        k: usize,
        c: *mut f32,
        ldc: usize,
        nr: usize,
    ) {
        // SAFETY: the caller's (`gemm_f32_avx512`'s) ranges.
        unsafe { gemm512_with(a, lda, m, b, k, c, ldc, nr, None) }
    }

    /// [`gemm512`] storing through the epilogue `epi` (see `gemm_f32_epi_avx512`).
    #[target_feature(enable = "avx512f,fma")]
    pub(crate) unsafe fn gemm512_epi(
        a: *const f32,
        lda: usize,
        m: usize,
        b: *const f32,
        k: usize,
        c: *mut f32,
        ldc: usize,
        nr: usize,
        epi: &Epi<'_>,
    ) {
        // SAFETY: the caller's (`gemm_f32_epi_avx512`'s) ranges.
        unsafe { gemm512_with(a, lda, m, b, k, c, ldc, nr, Some(epi)) }
    }

    #[target_feature(enable = "avx512f,fma")]
    unsafe fn gemm512_with(
        a: *const f32,
        lda: usize,
        m: usize,
        b: *const f32,
        k: usize,
        c: *mut f32,
        ldc: usize,
        nr: usize,
        epi: Option<&Epi<'_>>,
    ) {
        // SAFETY: the caller (`gemm_f32_avx512`) guarantees its ranges; each column chunk starts inside the
        // panel (`col < nr`) and is written only up to `nr`.
        unsafe {
            if m == 0 || nr == 0 {
                return;
            }
            let ldb = round_up_16(nr);
            let half = half_pays();
            let mut j = 0;
            while j < nr {
                let cols = (nr - j).min(48);
                let (full, tail) = (cols / 16, cols % 16);
                let (bj, cj) = (b.add(j), c.add(j));
                let ej = epi.map(|e| e.at(0, j));
                let ej = ej.as_ref();
                match (full, if half || tail == 0 { tail } else { 16 }) {
                    (1, 0) => rows512::<1, false>(a, lda, m, bj, ldb, k, cj, ldc, 0xffff, ej),
                    (2, 0) => rows512::<2, false>(a, lda, m, bj, ldb, k, cj, ldc, 0xffff, ej),
                    (3, 0) => rows512::<3, false>(a, lda, m, bj, ldb, k, cj, ldc, 0xffff, ej),
                    (0, 1..=8) => rows512::<0, true>(a, lda, m, bj, ldb, k, cj, ldc, lane_mask(tail), ej),
                    (1, 1..=8) => rows512::<1, true>(a, lda, m, bj, ldb, k, cj, ldc, lane_mask(tail), ej),
                    (2, 1..=8) => rows512::<2, true>(a, lda, m, bj, ldb, k, cj, ldc, lane_mask(tail), ej),
                    (0, _) => rows512::<1, false>(a, lda, m, bj, ldb, k, cj, ldc, lane_mask(tail), ej),
                    (1, _) => rows512::<2, false>(a, lda, m, bj, ldb, k, cj, ldc, lane_mask(tail), ej),
                    _ => rows512::<3, false>(a, lda, m, bj, ldb, k, cj, ldc, lane_mask(tail), ej),
                }
                j += cols;
            }
        }
    }

    /// `MR x NV` block of ymm accumulators (AVX2+FMA); `lastn` = valid lanes of the last vector.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn blk256<const MR: usize, const NV: usize>(
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        k: usize,
        c: *mut f32,
        ldc: usize,
        lastn: usize,
        epi: Option<&Epi256>,
        load: bool,
    ) {
        // SAFETY: the caller (`rows256`) passes `MR` rows of `k` readable floats of `a` at stride `lda`, `NV`
        // ymm columns of the panel per k, and `MR` rows of `c` at stride `ldc`; masked loads and stores touch
        // only the `lastn` valid lanes of the last vector.
        unsafe {
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(lastn as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            // A whole last vector takes plain loads and stores: the masked forms cost many times
            // more on AMD cores (a masked 256-bit store is microcoded on Zen 2).
            let whole = |v: usize| v + 1 < NV || lastn >= 8;
            let mut acc = [[_mm256_setzero_ps(); NV]; MR];
            if load {
                // the partial sums of the k blocks before this one: the FMA chain goes on from them
                for (i, ai) in acc.iter_mut().enumerate() {
                    let cr = c.add(i * ldc);
                    for (v, av) in ai.iter_mut().enumerate() {
                        *av = if whole(v) {
                            _mm256_loadu_ps(cr.add(8 * v))
                        } else {
                            _mm256_maskload_ps(cr.add(8 * v), mask)
                        };
                    }
                }
            }
            let mut ap = a;
            let mut bp = b;
            let mut t = 0;
            while t < k {
                let mut bv = [_mm256_setzero_ps(); NV];
                for v in 0..NV {
                    bv[v] = _mm256_loadu_ps(bp.add(8 * v));
                }
                for i in 0..MR {
                    let av = _mm256_broadcast_ss(&*ap.add(i * lda));
                    for v in 0..NV {
                        acc[i][v] = _mm256_fmadd_ps(av, bv[v], acc[i][v]);
                    }
                }
                ap = ap.add(1);
                bp = bp.add(ldb);
                t += 1;
            }
            if let Some(e) = epi {
                // the epilogue in registers, stored to the output (never to `c`)
                let all = _mm256_set1_epi32(-1);
                for i in 0..MR {
                    let e = e.at(i, 0);
                    for v in 0..NV {
                        let valid = if whole(v) { all } else { mask };
                        let y = e.lanes.apply256(acc[i][v], e.col + 8 * v, e.res.wrapping_add(8 * v), valid);
                        if whole(v) {
                            _mm256_storeu_ps(e.out.add(8 * v), y);
                        } else {
                            _mm256_maskstore_ps(e.out.add(8 * v), mask, y);
                        }
                    }
                }
                return;
            }
            for i in 0..MR {
                let cr = c.add(i * ldc);
                for v in 0..NV {
                    if whole(v) {
                        _mm256_storeu_ps(cr.add(8 * v), acc[i][v]);
                    } else {
                        _mm256_maskstore_ps(cr.add(8 * v), mask, acc[i][v]);
                    }
                }
            }
        }
    }

    /// All rows for one chunk of `NV` ymm columns (AVX2).
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows256<const NV: usize>(
        a: *const f32,
        lda: usize,
        m: usize,
        b: *const f32,
        ldb: usize,
        k: usize,
        c: *mut f32,
        ldc: usize,
        lastn: usize,
        epi: Option<&Epi256>,
        load: bool,
    ) {
        // SAFETY: the caller (`gemm256`) passes `gemm_f32_avx2`'s ranges for one column chunk; row blocks
        // stay below `m`.
        unsafe {
            // 12 accumulators + NV b vectors + 1 broadcast <= 16 ymm (NV is 1 or 2).
            let mr = 12 / NV;
            let mut r = 0;
            while r < m {
                let rows = (m - r).min(mr);
                let (ar, cr) = (a.add(r * lda), c.add(r * ldc));
                let er = epi.map(|e| e.at(r, 0));
                match (NV, rows) {
                    (1, 12) => blk256::<12, 1>(ar, lda, b, ldb, k, cr, ldc, lastn, er.as_ref(), load),
                    (2, 6) => blk256::<6, 2>(ar, lda, b, ldb, k, cr, ldc, lastn, er.as_ref(), load),
                    (_, rows) => {
                        // Remainder rows: 4/2/1-row blocks.
                        let mut rr = 0;
                        while rr < rows {
                            let left = rows - rr;
                            let (ar2, cr2) = (ar.add(rr * lda), cr.add(rr * ldc));
                            let e2 = er.map(|e| e.at(rr, 0));
                            let e2 = e2.as_ref();
                            let step = if left >= 4 && NV <= 2 {
                                4
                            } else if left >= 2 {
                                2
                            } else {
                                1
                            };
                            match step {
                                4 => blk256::<4, NV>(ar2, lda, b, ldb, k, cr2, ldc, lastn, e2, load),
                                2 => blk256::<2, NV>(ar2, lda, b, ldb, k, cr2, ldc, lastn, e2, load),
                                _ => blk256::<1, NV>(ar2, lda, b, ldb, k, cr2, ldc, lastn, e2, load),
                            }
                            rr += step;
                        }
                    }
                }
                r += rows;
            }
        }
    }

    /// AVX2 depthwise row (see `depthwise_f32_avx2`), storing through the epilogue `epi` when
    /// given (`res` the residual's row in the output's layout, or null).
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn dw256(
        g: &ConvGeom,
        x: *const f32,
        w: *const f32,
        row: usize,
        out: *mut f32,
        ldo: usize,
        epi: Option<&Lanes>,
        res: *const f32,
    ) {
        // SAFETY: the caller's ranges: taps are clipped to the image (`valid_range`), the last vector of a
        // block is loaded and stored under the mask of its valid channels, and weights are read within
        // their rows of `round_up_16(c)` floats.
        unsafe {
            if g.oh == 0 || g.ow == 0 || g.c == 0 {
                return;
            }
            let c = g.c;
            let img = row / g.oh;
            let oy = row % g.oh;
            let xi = x.add(img * g.h * g.w * c);
            let by = (oy * g.sh) as isize - g.ph as isize;
            let (ky0, ky1) = valid_range(by, g.dh, g.kh, g.h);
            let d = Dw256 { g, xi, w, cp: round_up_16(c), by, ky0, ky1, out, ldo, epi, res };
            let mut ox = 0;
            while ox < g.ow {
                let bx = (ox * g.sw) as isize - g.pw as isize;
                let taps = valid_range(bx, g.dw, g.kw, g.w);
                let pair = ox + 1 < g.ow && valid_range(bx + g.sw as isize, g.dw, g.kw, g.w) == taps;
                let mut cb = 0;
                while cb < c {
                    let n = (c - cb).min(32);
                    if pair {
                        d.block::<2>(ox, bx, taps, cb, n);
                    } else {
                        d.block::<1>(ox, bx, taps, cb, n);
                    }
                    cb += 32;
                }
                ox += if pair { 2 } else { 1 };
            }
        }
    }

    /// Per-row constants of [`dw256`].
    struct Dw256<'a> {
        g: &'a ConvGeom,
        xi: *const f32,
        w: *const f32,
        cp: usize,
        by: isize,
        ky0: usize,
        ky1: usize,
        out: *mut f32,
        ldo: usize,
        epi: Option<&'a Lanes>,
        res: *const f32,
    }

    impl Dw256<'_> {
        /// Channels `cb..cb + n` (`n <= 32`) of the `P` output pixels from `ox` (the first's
        /// window column `bx`), which share the in-image column taps `kx0..kx1`.
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        unsafe fn block<const P: usize>(&self, ox: usize, bx: isize, (kx0, kx1): (usize, usize), cb: usize, n: usize) {
            // SAFETY: `dw256`'s ranges (see there).
            unsafe {
                let g = self.g;
                let nv = n.div_ceil(8);
                let last = n - 8 * (nv - 1);
                let mask =
                    _mm256_cmpgt_epi32(_mm256_set1_epi32(last as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
                let full = last == 8;
                let mut acc = [[_mm256_setzero_ps(); 4]; P];
                for ky in self.ky0..self.ky1 {
                    let iy = (self.by + (ky * g.dh) as isize) as usize;
                    let xrow = self.xi.add(iy * g.w * g.c + cb);
                    for kx in kx0..kx1 {
                        let wp = self.w.add((ky * g.kw + kx) * self.cp + cb);
                        for v in 0..4 {
                            if v >= nv {
                                break;
                            }
                            let wv = _mm256_loadu_ps(wp.add(8 * v));
                            for (p, accp) in acc.iter_mut().enumerate() {
                                let ix = (bx + (p * g.sw + kx * g.dw) as isize) as usize;
                                let xp = xrow.add(ix * g.c + 8 * v);
                                let xv =
                                    if full || v + 1 < nv { _mm256_loadu_ps(xp) } else { _mm256_maskload_ps(xp, mask) };
                                accp[v] = _mm256_fmadd_ps(xv, wv, accp[v]);
                            }
                        }
                    }
                }
                let all = _mm256_set1_epi32(-1);
                for (p, accp) in acc.iter().enumerate() {
                    let off = (ox + p) * self.ldo + cb;
                    for v in 0..4 {
                        if v >= nv {
                            break;
                        }
                        let valid = if full || v + 1 < nv { all } else { mask };
                        let y = match self.epi {
                            Some(e) => e.apply256(accp[v], cb + 8 * v, self.res.wrapping_add(off + 8 * v), valid),
                            None => accp[v],
                        };
                        let o = self.out.add(off + 8 * v);
                        if full || v + 1 < nv {
                            _mm256_storeu_ps(o, y);
                        } else {
                            _mm256_maskstore_ps(o, mask, y);
                        }
                    }
                }
            }
        }
    }

    /// The reduction block of the AVX2 GEMM (see `gemm256_with`).
    const K_BLOCK_256: usize = 512;

    /// Where an AVX2 GEMM block stores through a canonical epilogue (see `gemm_f32_epi_avx2`):
    /// the output, residual (or null) and layer column of its first row and column.
    #[derive(Clone, Copy)]
    pub(crate) struct Epi256<'a> {
        pub(crate) lanes: &'a Lanes,
        pub(crate) col: usize,
        pub(crate) out: *mut f32,
        pub(crate) ld: usize,
        pub(crate) res: *const f32,
    }

    impl Epi256<'_> {
        /// The same epilogue `rows` rows and `cols` columns further.
        fn at(&self, rows: usize, cols: usize) -> Self {
            let off = rows * self.ld + cols;
            Epi256 {
                lanes: self.lanes,
                col: self.col + cols,
                out: self.out.wrapping_add(off),
                ld: self.ld,
                res: if self.res.is_null() { self.res } else { self.res.wrapping_add(off) },
            }
        }
    }

    /// AVX2 GEMM driver (see `gemm_f32_avx2`).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gemm256(
        a: *const f32,
        lda: usize,
        m: usize,
        b: *const f32,
        k: usize,
        c: *mut f32,
        ldc: usize,
        nr: usize,
    ) {
        // SAFETY: the caller's contract, passed on.
        unsafe { gemm256_with(a, lda, m, b, k, c, ldc, nr, None) }
    }

    /// [`gemm256`] storing through the epilogue `epi` when given (see `gemm_f32_epi_avx2`).
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn gemm256_with(
        a: *const f32,
        lda: usize,
        m: usize,
        b: *const f32,
        k: usize,
        c: *mut f32,
        ldc: usize,
        nr: usize,
        epi: Option<&Epi256>,
    ) {
        // SAFETY: the caller (`gemm_f32_avx2`) guarantees its ranges; each chunk starts inside the panel and
        // is written only up to `nr`.
        unsafe {
            if m == 0 || nr == 0 {
                return;
            }
            let ldb = round_up_16(nr);
            // A long reduction in blocks of K_BLOCK_256 (the last one up to half a block longer):
            // a block's 16-column slice of the panel (32 KiB) stays in L1 or L2 and its rows of
            // `a` in L2 while every column chunk reads them; without blocks, ResNet-18's last
            // stage (k = 4608, an im2col buffer of 0.9 MB) re-read `a` from L3 for each of 32
            // chunks. (256 and 512 measured on Zen 2: 512 took ResNet-18 from 45.3 to 44.1 ms,
            // 256 to 45.2.)
            // Each block after the first goes on from the partial sums in `c`, so every output
            // is still one FMA chain in `t` order.
            // (one pass when k = 0: the outputs are the empty sums)
            let mut k0 = 0;
            loop {
                let kk = if k - k0 <= K_BLOCK_256 + K_BLOCK_256 / 2 { k - k0 } else { K_BLOCK_256 };
                let last = k0 + kk == k;
                let (ak, bk) = (a.add(k0), b.add(k0 * ldb));
                let mut j = 0;
                while j < nr {
                    // 16-column chunks: a 6 x 2 ymm block (12 accumulators + 2 b + 1 broadcast fits the
                    // 16 ymm registers; wider blocks spill). A chunk of <= 8 valid columns uses one ymm.
                    let cols = (nr - j).min(16);
                    let (bj, cj) = (bk.add(j), c.add(j));
                    let ej = if last { epi.map(|e| e.at(0, j)) } else { None };
                    if cols <= 8 {
                        rows256::<1>(ak, lda, m, bj, ldb, kk, cj, ldc, cols, ej.as_ref(), k0 > 0);
                    } else {
                        rows256::<2>(ak, lda, m, bj, ldb, kk, cj, ldc, cols - 8, ej.as_ref(), k0 > 0);
                    }
                    j += cols;
                }
                k0 += kk;
                if k0 >= k {
                    break;
                }
            }
        }
    }

    /// AVX-512 depthwise row (see `depthwise_f32_avx512`).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dw512(g: &ConvGeom, x: *const f32, w: *const f32, row: usize, out: *mut f32, ldo: usize) {
        // SAFETY: the caller's (`depthwise_f32_avx512`'s) ranges.
        unsafe { dw512_with(g, x, w, row, out, ldo, None, std::ptr::null()) }
    }

    /// [`dw512`] storing each pixel through the canonical epilogue `epi` (`out` the output row,
    /// `res` the residual's row in the same layout, or null; see `depthwise_f32_epi_avx512`).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn dw512_with(
        g: &ConvGeom,
        x: *const f32,
        w: *const f32,
        row: usize,
        out: *mut f32,
        ldo: usize,
        epi: Option<&Canon>,
        res: *const f32,
    ) {
        // SAFETY: the caller (`depthwise_f32_avx512`) guarantees its ranges: taps are clipped to the image
        // (`valid_range`), channels are masked to `c`, and each output pixel writes `c` floats at `out + ox *
        // ldo`.
        unsafe {
            if g.oh == 0 || g.ow == 0 || g.c == 0 {
                return;
            }
            let c = g.c;
            let cp = round_up_16(c);
            let img = row / g.oh;
            let oy = row % g.oh;
            let xi = x.add(img * g.h * g.w * c);
            let by = (oy * g.sh) as isize - g.ph as isize;
            let (ky0, ky1) = valid_range(by, g.dh, g.kh, g.h);
            // Interior ox range [ox_lo, ox_hi): all kx taps in the image, i.e.
            // ox*sw >= pw and ox*sw + (kw-1)*dw - pw <= w - 1.
            let sw = g.sw.max(1);
            let ox_lo = g.pw.div_ceil(sw).min(g.ow);
            let span = (g.kw.max(1) - 1) * g.dw;
            let ox_hi = if g.w + g.pw > span { ((g.w - 1 + g.pw - span) / sw + 1).min(g.ow).max(ox_lo) } else { ox_lo };
            let epi = epi.map(Canon::for_registers);
            let d = DwRow { g, xi, by, ky0, ky1, ox_lo, ox_hi, epi, res };
            // Pixel chunks outer, channel blocks inner: each chunk reads whole input pixels (all
            // their channels, contiguous in NHWC) once, so the input streams through the cache in
            // address order; a channel block's weights are loaded again per chunk (from L1). With
            // channel blocks outer, a row of a wide layer (96 channels x 112 pixels x 3 input
            // rows) was read six times with a 384-byte stride, which the hardware prefetchers
            // follow poorly: MobileNetV2's stride-2 layers ran at a third of ONNX Runtime's speed.
            // Chunks end at `ox_lo + j * DW_CHUNK` so each holds whole interior blocks.
            let mut b0 = 0;
            while b0 < g.ow {
                let b1 = if b0 < d.ox_lo { d.ox_lo + DW_CHUNK } else { b0 + DW_CHUNK }.min(g.ow);
                let mut cb = 0;
                while cb < c {
                    let mask = lane_mask(c - cb);
                    let (wb, ob) = (w.add(cb), out.add(cb));
                    match (g.kh, g.kw) {
                        (3, 3) => dw_block::<3, 3, 8>(&d, cb, mask, wb, cp, ob, ldo, b0, b1),
                        (5, 5) => dw_block::<5, 5, 4>(&d, cb, mask, wb, cp, ob, ldo, b0, b1),
                        _ => dw_generic(&d, cb, mask, wb, cp, ob, ldo, b0, b1),
                    }
                    cb += 16;
                }
                b0 = b1;
            }
        }
    }

    /// Output pixels per chunk of a depthwise row (a multiple of the interior blocks' 8 and 4).
    const DW_CHUNK: usize = 16;

    /// Per-row constants of a depthwise call.
    struct DwRow<'a> {
        g: &'a ConvGeom,
        /// Image base pointer.
        xi: *const f32,
        /// `oy*sh - ph`.
        by: isize,
        /// Valid ky range.
        ky0: usize,
        ky1: usize,
        /// ox range whose taps are all inside the image horizontally.
        ox_lo: usize,
        ox_hi: usize,
        /// The canonical epilogue applied before each store, and the residual row it reads
        /// (channel 0 of pixel 0, the output's layout), when the kernel stores the output itself.
        epi: Option<RegisterEpilogue<'a>>,
        res: *const f32,
    }

    /// Stores the accumulators `v` of channels `cb..cb + 16` (lanes of `mask`) at `o`, the
    /// element `px + cb` of the row, through `d`'s epilogue when it has one.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn put(d: &DwRow, o: *mut f32, mask: u16, v: __m512, cb: usize, px: usize) {
        // SAFETY: the caller's store range; the residual, in the output's layout, is readable
        // where the output is written.
        unsafe {
            let v = match d.epi {
                Some(e) => e.apply(v, cb, d.res.wrapping_add(px + cb), mask),
                None => v,
            };
            _mm512_mask_storeu_ps(o, mask, v);
        }
    }

    /// One output pixel of one channel block, generic over the kernel size (`wv` holds all taps).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn dw_pixel<const KH: usize, const KW: usize, const CHECK: bool>(
        d: &DwRow,
        cb: usize,
        mask: u16,
        wv: &[[__m512; KW]; KH],
        ox: usize,
    ) -> __m512 {
        // SAFETY: the caller (`dw_block`) passes an output pixel whose taps it clipped to the image (or, with
        // `CHECK`, this function skips out-of-image taps), and the block's channels are masked.
        unsafe {
            let g = d.g;
            let bx = (ox * g.sw) as isize - g.pw as isize;
            let (kx0, kx1) = if CHECK { valid_range(bx, g.dw, KW, g.w) } else { (0, KW) };
            let mut acc = _mm512_setzero_ps();
            for ky in 0..KH {
                if ky < d.ky0 || ky >= d.ky1 {
                    continue;
                }
                let iy = (d.by + (ky * g.dh) as isize) as usize;
                let xrow = d.xi.add(iy * g.w * g.c + cb);
                for kx in 0..KW {
                    if CHECK && (kx < kx0 || kx >= kx1) {
                        continue;
                    }
                    let ix = (bx + (kx * g.dw) as isize) as usize;
                    let xv = _mm512_maskz_loadu_ps(mask, xrow.add(ix * g.c));
                    acc = _mm512_fmadd_ps(xv, wv[ky][kx], acc);
                }
            }
            acc
        }
    }

    /// `OB` adjacent interior output pixels (all taps horizontally in the image) of one channel
    /// block: `OB` independent accumulator chains, each summed in `(ky, kx)` order, stored to
    /// `out + (ox + j)*ldo` (masked).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn dw_multi<const KH: usize, const KW: usize, const OB: usize, const UNIT: bool, const FULL: bool>(
        d: &DwRow,
        cb: usize,
        mask: u16,
        wv: &[[__m512; KW]; KH],
        ox: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        // SAFETY: the caller (`dw_block`) passes `OB` interior pixels (every tap inside the image) with
        // `UNIT` stride when the stride is 1; loads read in-image pixels of the block's channels (masked
        // unless `FULL`), stores write `OB` output pixels at stride `ldo`.
        unsafe {
            let g = d.g;
            let bx = (ox * g.sw) as isize - g.pw as isize;
            let mut acc = [_mm512_setzero_ps(); OB];
            for ky in 0..KH {
                if ky < d.ky0 || ky >= d.ky1 {
                    continue;
                }
                let iy = (d.by + (ky * g.dh) as isize) as usize;
                // Pixel (iy, bx) may be left of the image; only in-image offsets are dereferenced.
                let xrow = d.xi.add(iy * g.w * g.c + cb).wrapping_offset(bx * g.c as isize);
                for kx in 0..KW {
                    let wk = wv[ky][kx];
                    for (j, aj) in acc.iter_mut().enumerate() {
                        // UNIT (stride 1, dilation 1): constant offsets, so loads shared between
                        // (j, kx) pairs are issued once.
                        let off = if UNIT { (j + kx) * g.c } else { (j * g.sw + kx * g.dw) * g.c };
                        let xv = if FULL {
                            _mm512_loadu_ps(xrow.wrapping_add(off))
                        } else {
                            _mm512_maskz_loadu_ps(mask, xrow.wrapping_add(off))
                        };
                        *aj = _mm512_fmadd_ps(xv, wk, *aj);
                    }
                }
            }
            for (j, aj) in acc.iter().enumerate() {
                put(d, out.add((ox + j) * ldo), mask, *aj, cb, (ox + j) * ldo);
            }
        }
    }

    /// Output pixels `b0..b1` of channel block `cb..cb+16` of a depthwise row with a `KH x KW`
    /// kernel; the weights stay in registers across those pixels, interior pixels go `OB` at a
    /// time.
    #[target_feature(enable = "avx512f")]
    unsafe fn dw_block<const KH: usize, const KW: usize, const OB: usize>(
        d: &DwRow,
        cb: usize,
        mask: u16,
        wb: *const f32,
        cp: usize,
        out: *mut f32,
        ldo: usize,
        b0: usize,
        b1: usize,
    ) {
        // SAFETY: the caller (`dw512`) passes one 16-channel block of a row inside its ranges; edge pixels
        // are clipped, interior pixels go to `dw_multi` only when every tap is inside the image.
        unsafe {
            let mut wv = [[_mm512_setzero_ps(); KW]; KH];
            for ky in 0..KH {
                for kx in 0..KW {
                    wv[ky][kx] = _mm512_loadu_ps(wb.add((ky * KW + kx) * cp));
                }
            }
            let (lo, hi) = (b0.max(d.ox_lo), b1.min(d.ox_hi).max(b0.max(d.ox_lo)));
            for ox in b0..b1.min(d.ox_lo) {
                let v = dw_pixel::<KH, KW, true>(d, cb, mask, &wv, ox);
                put(d, out.add(ox * ldo), mask, v, cb, ox * ldo);
            }
            let unit = d.g.sw == 1 && d.g.dw == 1;
            let full = mask == 0xffff;
            // (A macro, not a closure: closures do not inherit `target_feature`.)
            macro_rules! multi {
                ($n:expr, $ox:expr) => {
                    match (unit, full) {
                        (true, true) => dw_multi::<KH, KW, { $n }, true, true>(d, cb, mask, &wv, $ox, out, ldo),
                        (true, false) => dw_multi::<KH, KW, { $n }, true, false>(d, cb, mask, &wv, $ox, out, ldo),
                        (false, true) => dw_multi::<KH, KW, { $n }, false, true>(d, cb, mask, &wv, $ox, out, ldo),
                        (false, false) => dw_multi::<KH, KW, { $n }, false, false>(d, cb, mask, &wv, $ox, out, ldo),
                    }
                };
            }
            let mut ox = lo;
            while ox + OB <= hi {
                multi!(OB, ox);
                ox += OB;
            }
            if hi - ox > OB / 2 && d.ox_hi - d.ox_lo >= OB {
                // Long tail: recompute an overlapping full interior block ending at `hi` (identical
                // values are rewritten for the overlap), instead of latency-bound small blocks.
                multi!(OB, hi.saturating_sub(OB).max(d.ox_lo));
                ox = hi;
            }
            // Short tails and interiors (narrow images): blocks of 4 and 2, then single pixels.
            while ox + 4 <= hi && OB > 4 {
                multi!(4, ox);
                ox += 4;
            }
            while ox + 2 <= hi {
                multi!(2, ox);
                ox += 2;
            }
            while ox < hi {
                let v = dw_pixel::<KH, KW, false>(d, cb, mask, &wv, ox);
                put(d, out.add(ox * ldo), mask, v, cb, ox * ldo);
                ox += 1;
            }
            for ox in b0.max(d.ox_hi)..b1 {
                let v = dw_pixel::<KH, KW, true>(d, cb, mask, &wv, ox);
                put(d, out.add(ox * ldo), mask, v, cb, ox * ldo);
            }
        }
    }

    /// Channel block of a depthwise row for any kernel size (weights loaded per tap).
    #[target_feature(enable = "avx512f")]
    unsafe fn dw_generic(
        d: &DwRow,
        cb: usize,
        mask: u16,
        wb: *const f32,
        cp: usize,
        out: *mut f32,
        ldo: usize,
        b0: usize,
        b1: usize,
    ) {
        // SAFETY: the caller (`dw512`) passes one channel block of a row inside its ranges; taps are clipped
        // to the image with `valid_range`, channels masked to `c`.
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
                        let xv = _mm512_maskz_loadu_ps(mask, xrow.add(ix * g.c));
                        let wv = _mm512_loadu_ps(wb.add((ky * g.kw + kx) * cp));
                        acc = _mm512_fmadd_ps(xv, wv, acc);
                    }
                }
                put(d, out.add(ox * ldo), mask, acc, cb, ox * ldo);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tiny xorshift RNG producing floats in [-1, 1).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.next()).collect()
        }
    }

    fn check_close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len());
        let maxref = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-5 * maxref, "{what}: index {i}: got {g}, want {w} (max |ref| {maxref})");
        }
    }

    fn kernels() -> Vec<(GemmF32, &'static str)> {
        let mut v: Vec<(GemmF32, &'static str)> = vec![(gemm_f32_scalar, "scalar")];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                v.push((gemm_f32_avx512, "avx512f"));
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                v.push((gemm_f32_avx2, "avx2"));
            }
        }
        v
    }

    /// Whether the AVX-512F and FMA kernels run on this CPU; under `CI=true` a CPU without them
    /// fails the test instead of letting it pass having checked nothing.
    #[cfg(target_arch = "x86_64")]
    fn avx512_runs() -> bool {
        let ok = std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma");
        assert!(ok || std::env::var("CI").as_deref() != Ok("true"), "this test needs AVX-512F and FMA");
        ok
    }

    /// Whether the vector kernels (AVX2 and FMA at least) run on this CPU; under `CI=true` a CPU
    /// without them fails the test instead of letting it pass having checked nothing.
    #[cfg(target_arch = "x86_64")]
    fn vector_runs() -> bool {
        let ok = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
        assert!(ok || std::env::var("CI").as_deref() != Ok("true"), "this test needs AVX2 and FMA");
        ok
    }

    /// The reference epilogue over a tile: the 512-bit kernel where it runs, else the list's
    /// scalar definition.
    ///
    /// # Safety
    /// As [`super::super::fepilogue::epilogue_f32`]'s ranges.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn reference_epilogue(
        p: &super::super::fepilogue::FloatEpilogue,
        tile: *const f32,
        ldc: usize,
        rows: usize,
        n0: usize,
        nr: usize,
        out: *mut u8,
        stride: usize,
        res: *const u8,
    ) {
        // SAFETY: the caller's ranges; the 512-bit kernel runs only where the CPU has it.
        unsafe {
            if super::super::fepilogue::available(crate::spec::Store::F32) {
                super::super::fepilogue::epilogue_f32(p, tile, ldc, rows, n0, nr, out, stride, res)
            } else {
                apply_scalar_epilogue(p, tile, ldc, rows, n0, nr, out, stride, res)
            }
        }
    }

    /// Whether a kernel's value `got` is the reference's `want`: bit for bit, except that against
    /// the scalar definition (the reference without the 512-bit epilogue kernel) a NaN is any NaN,
    /// since `fmax`/`fmin` there return the canonical NaN where the vector instructions pass the
    /// operand's NaN on (the numerics contract fixes that the result is NaN, not its payload).
    #[cfg(target_arch = "x86_64")]
    fn same_as_reference(want: f32, got: f32) -> bool {
        want.to_bits() == got.to_bits()
            || (!super::super::fepilogue::available(crate::spec::Store::F32) && want.is_nan() && got.is_nan())
    }

    /// A negative NaN (x86's default NaN, which a bound's AND or OR turns positive), +infinity
    /// and -infinity at the starts of the first three rows of `stride` values (offsets 0, 1, 2).
    fn put_specials(v: &mut [f32], stride: usize) {
        v[0] = f32::from_bits(0xffc0_0000);
        v[stride + 1] = f32::INFINITY;
        v[2 * stride + 2] = f32::NEG_INFINITY;
    }

    /// Canonical f32 epilogue lists over a bias of `bias.len()` channels, each as the kernels
    /// take it (checked to run in registers): bias with bounds, a residual with signed-zero
    /// bounds, and the f16/bf16 roundings of ops computed in f32, before a residual and at the end.
    fn canonical_lists(bias: &[f32]) -> Vec<(Vec<crate::spec::Step>, super::super::fepilogue::FloatEpilogue)> {
        use crate::spec::{Step, Store};
        let b = || Step::AddChannelF32(bias.to_vec());
        [
            vec![b()],
            vec![b(), Step::MaxF32(0.0), Step::MinF32(6.0)],
            vec![Step::AddResidualF32, Step::MaxF32(-0.0)],
            vec![b(), Step::AddResidualF32, Step::MinF32(-0.0)],
            vec![b(), Step::MaxF32(0.0), Step::MinF32(6.0), Step::RoundF16],
            vec![b(), Step::RoundF16, Step::AddResidualF32, Step::RoundF16],
            vec![Step::RoundBf16, Step::AddResidualF32, Step::MaxF32(0.0), Step::RoundBf16],
        ]
        .into_iter()
        .map(|steps| {
            let p = super::super::fepilogue::FloatEpilogue::from_steps(&steps, Store::F32).expect("a float list");
            assert!(p.in_registers().is_some(), "{steps:?} is canonical");
            (steps, p)
        })
        .collect()
    }

    /// A column group of at most 8 columns as a ymm beside a zmm and as a masked zmm (the two
    /// forms `half_pays` chooses between) give the same sums bit for bit, on 8 and 24 columns,
    /// row counts that split into blocks unevenly and a reduction longer than a k block.
    #[test]
    fn the_ymm_and_the_masked_zmm_tail_sum_alike() {
        #[cfg(target_arch = "x86_64")]
        {
            if !avx512_runs() {
                return;
            }
            let mut rng = Rng(0x5eed);
            for (m, k, n) in [(49usize, 144usize, 24usize), (13, 700, 20), (30, 33, 8)] {
                let ldb = round_up_16(n);
                let a = rng.vec(m * k);
                let b = rng.vec(k * ldb);
                let (mut c1, mut c2) = (vec![0f32; m * ldb], vec![0f32; m * ldb]);
                let tail: u16 = (1u16 << (n % 16)) - 1;
                let (ap, bp) = (a.as_ptr(), b.as_ptr());
                macro_rules! run {
                    ($nv:literal, $half:literal, $c:expr) => {
                        // SAFETY: `a` is m x k, `b` k rows of `ldb` floats, `c` m rows of `ldb`;
                        // AVX-512F and FMA checked above.
                        unsafe { x86::rows512::<$nv, $half>(ap, k, m, bp, ldb, k, $c.as_mut_ptr(), ldb, tail, None) }
                    };
                }
                if n > 16 {
                    run!(1, true, c1);
                    run!(2, false, c2);
                } else {
                    run!(0, true, c1);
                    run!(1, false, c2);
                }
                for r in 0..m {
                    for j in 0..n {
                        let (x, y) = (c1[r * ldb + j], c2[r * ldb + j]);
                        assert_eq!(x.to_bits(), y.to_bits(), "{m}x{k}x{n}: row {r} col {j}: {x} vs {y}");
                    }
                }
            }
        }
    }

    /// The epilogue applied in the GEMM's registers (`gemm_f32_epi`: the AVX-512 kernel, or the
    /// AVX2 one on a CPU without it) stores what the GEMM and the epilogue over its tile store
    /// (the 512-bit epilogue kernel, or the list's scalar definition), bit for bit: every
    /// canonical list (bias, residual, bounds with signed zeros, f16/bf16 roundings), column
    /// counts with a ymm or a masked tail, a panel that starts at column 32 of the layer, row
    /// counts that split into unequal blocks and a reduction longer than one k block (the
    /// epilogue on the last one).
    #[test]
    fn the_epilogue_in_registers_is_the_tile_epilogue() {
        #[cfg(target_arch = "x86_64")]
        {
            if !vector_runs() {
                return;
            }
            let mut rng = Rng(0xe91);
            let bias: Vec<f32> = rng.vec(72).iter().map(|v| v * 3.0).collect();
            for (steps, p) in &canonical_lists(&bias) {
                for (m, k, nr, n0) in [
                    (49usize, 27usize, 32usize, 0usize),
                    (30, 300, 24, 32),
                    (13, 64, 8, 0),
                    (72, 16, 20, 32),
                    (9, 1100, 24, 0),
                ] {
                    let ldb = round_up_16(nr);
                    let mut a = rng.vec(m * k);
                    put_specials(&mut a, k);
                    let b = rng.vec(k * ldb);
                    let ld = 80usize;
                    let res = rng.vec(m * ld);
                    let (mut t1, mut t2) = (vec![0f32; m * 32], vec![0f32; m * 32]);
                    let (mut o1, mut o2) = (vec![7.5f32; m * ld], vec![7.5f32; m * ld]);
                    let r = res.as_ptr() as *const u8;
                    // SAFETY: `a` m x k, `b` k rows of `ldb`, tiles m rows of 32, outputs and residual
                    // m rows of `ld >= nr` floats; the bias covers columns up to 72, padded; AVX-512F
                    // and FMA checked above.
                    unsafe {
                        let (gemm, _) = gemm_f32_best();
                        gemm(a.as_ptr(), k, m, b.as_ptr(), k, t1.as_mut_ptr(), 32, nr);
                        reference_epilogue(p, t1.as_ptr(), 32, m, n0, nr, o1.as_mut_ptr() as *mut u8, ld * 4, r);
                        gemm_f32_epi(
                            a.as_ptr(),
                            k,
                            m,
                            b.as_ptr(),
                            k,
                            t2.as_mut_ptr(),
                            32,
                            nr,
                            p,
                            n0,
                            o2.as_mut_ptr() as *mut u8,
                            ld * 4,
                            r,
                        );
                    }
                    for (i, (x, y)) in o1.iter().zip(&o2).enumerate() {
                        assert!(same_as_reference(*x, *y), "{steps:?} {m}x{k}x{nr}+{n0}: element {i}: {x} vs {y}");
                    }
                }
            }
        }
    }

    #[test]
    fn pack_layout() {
        let (n, k) = (47, 3);
        let w: Vec<f32> = (0..n * k).map(|i| i as f32).collect();
        let p = pack_weights_f32(&w, n, k).unwrap();
        let np = n.div_ceil(PANEL);
        for pi in 0..np {
            let width = panel_width(n, pi);
            assert_eq!(width, PANEL.min(round_up_16(n - PANEL * pi)));
            for t in 0..k {
                for jj in 0..width {
                    let col = PANEL * pi + jj;
                    let want = if col < n { w[col * k + t] } else { 0.0 };
                    assert_eq!(p.data[panel_offset(pi, k) + t * width + jj], want);
                }
            }
        }
        assert_eq!(p.data.len(), panel_offset(np - 1, k) + panel_width(n, np - 1) * k);
        assert_eq!(panel_width(n, np), 0);
    }

    #[test]
    fn gemm_matches_reference() {
        let mut rng = Rng(0x9e3779b97f4a7c15);
        let nrs = [1usize, 5, 16, 17, 24, 32, 47, 48];
        let ks = [1usize, 3, 27, 147, 576, 4608];
        for &k in &ks {
            for &nr in &nrs {
                let ms: Vec<usize> = if k >= 576 { vec![1, 7, 8, 12, 13, 19, 24, 25, 49] } else { (1..=25).collect() };
                let n = nr;
                let w = rng.vec(n * k);
                let packed = pack_weights_f32(&w, n, k).unwrap();
                for &m in &ms {
                    let lda = k + 3;
                    let a = rng.vec(m * lda);
                    let mut want = vec![0.0f32; m * n];
                    for r in 0..m {
                        for j in 0..n {
                            let mut s = 0.0f64;
                            for t in 0..k {
                                s += a[r * lda + t] as f64 * w[j * k + t] as f64;
                            }
                            want[r * n + j] = s as f32;
                        }
                    }
                    for (kern, name) in kernels() {
                        // Panel by panel, with a guard column band after ldc's promise.
                        let ldc = round_up_16(n) + 16 + 3;
                        let mut c = vec![f32::NAN; m * ldc];
                        let np = n.div_ceil(PANEL);
                        for p in 0..np {
                            let nrp = (n - PANEL * p).min(PANEL);
                            // SAFETY: `a` has `m` rows of `lda >= k` floats, the packed panel `p` starts at
                            // `panel_offset(p, k)` inside `packed.data` with `k * round_up_16(nrp)` floats,
                            // and `c` has `m` rows of `ldc >= PANEL * p + round_up_16(nrp)` floats; the
                            // kernel is one this CPU supports (`kernels()` filters them).
                            unsafe {
                                kern(
                                    a.as_ptr(),
                                    lda,
                                    m,
                                    packed.data.as_ptr().add(panel_offset(p, k)),
                                    k,
                                    c.as_mut_ptr().add(PANEL * p),
                                    ldc,
                                    nrp,
                                );
                            }
                        }
                        let mut got = vec![0.0f32; m * n];
                        for r in 0..m {
                            got[r * n..r * n + n].copy_from_slice(&c[r * ldc..r * ldc + n]);
                            for j in round_up_16(n)..ldc {
                                assert!(c[r * ldc + j].is_nan(), "{name}: wrote past nr");
                            }
                        }
                        check_close(&got, &want, &format!("gemm {name} m={m} k={k} nr={nr}"));
                        // One call with the whole nr (<= 48) on a single panel of width
                        // round_up_16(nr), as a 48-column panel would be used.
                        let wd = round_up_16(nr);
                        let mut b1 = vec![0.0f32; k * wd];
                        for t in 0..k {
                            for j in 0..nr {
                                b1[t * wd + j] = w[j * k + t];
                            }
                        }
                        let mut c1 = vec![f32::NAN; m * ldc];
                        // SAFETY: `b1` is one panel of `k * round_up_16(nr)` floats, `a` and `c1` have `m`
                        // rows at strides `lda` and `ldc >= round_up_16(nr)`; the kernel runs on this CPU.
                        unsafe { kern(a.as_ptr(), lda, m, b1.as_ptr(), k, c1.as_mut_ptr(), ldc, nr) };
                        for r in 0..m {
                            got[r * n..r * n + n].copy_from_slice(&c1[r * ldc..r * ldc + n]);
                            assert!(c1[r * ldc + nr..(r + 1) * ldc].iter().all(|v| v.is_nan()));
                        }
                        check_close(&got, &want, &format!("gemm1 {name} m={m} k={k} nr={nr}"));
                    }
                }
            }
        }
    }

    /// Every GEMM kernel sums each output in `t` order with one FMA per term, so all agree bit
    /// for bit, also on a reduction the kernels cut into k blocks (k = 1500, a partial last
    /// column vector).
    #[test]
    fn gemm_kernels_bit_identical() {
        let mut rng = Rng(12345);
        for (m, k, n) in [(37usize, 300usize, 32usize), (13, 1500, 20)] {
            let a = rng.vec(m * k);
            let w = rng.vec(n * k);
            let p = pack_weights_f32(&w, n, k).unwrap();
            let mut outs = Vec::new();
            for (kern, name) in kernels() {
                let mut c = vec![0.0f32; m * n];
                // SAFETY: `a` is `m x k`, `p` the packed `n`-column panel for that `k`, `c` is `m x n`; the
                // kernel runs on this CPU.
                unsafe { kern(a.as_ptr(), k, m, p.data.as_ptr(), k, c.as_mut_ptr(), n, n) };
                outs.push((c, name));
            }
            for (o, name) in &outs[1..] {
                assert!(
                    o.iter().zip(&outs[0].0).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{name} and {} differ at {m}x{k}x{n}",
                    outs[0].1
                );
            }
        }
    }

    /// The narrow GEMM (dot products, another order of sums) against f64 sums, within f32
    /// rounding of the sum of magnitudes, on every row-block and column count, on reductions it
    /// takes ([`narrow_fits`]) that end mid-vector (the masked last block, with NaN after `k` in each row of `a` that a missed
    /// mask would spread), and rows stored into a wider `c` (nothing past `nr` written).
    #[test]
    fn narrow_gemm_matches_f64_sums() {
        let (g, name) = gemm_f32_narrow_best();
        let mut rng = Rng(4242);
        for n in [1usize, 3, 4, 5, 8] {
            for k in [48usize, 50, 64, 72, 144, 150] {
                for m in [1usize, 2, 3, 4, 5, 6, 7, 13] {
                    let w = rng.vec(n * k);
                    let packed = pack_weights_f32(&w, n, k).expect("pack");
                    let lda = k + 3;
                    let mut a = rng.vec(m * lda);
                    for r in 0..m {
                        for t in k..lda {
                            a[r * lda + t] = f32::NAN;
                        }
                    }
                    let ldc = 16;
                    let mut c = vec![7.5f32; m * ldc];
                    // SAFETY: `a` has `m` rows of `lda >= k` floats, the packed data its panel and rows,
                    // `c` `m` rows of `ldc >= n` floats.
                    unsafe { g(a.as_ptr(), lda, m, packed.data.as_ptr(), k, c.as_mut_ptr(), ldc, n) };
                    for r in 0..m {
                        for j in 0..ldc {
                            let got = c[r * ldc + j];
                            if j >= n {
                                assert_eq!(got, 7.5, "{name}: n{n} k{k} m{m}: column {j} past nr written");
                                continue;
                            }
                            let (mut want, mut mag) = (0f64, 0f64);
                            for t in 0..k {
                                let p = a[r * lda + t] as f64 * w[j * k + t] as f64;
                                want += p;
                                mag += p.abs();
                            }
                            let tol = mag * 1e-6 + 1e-30;
                            assert!(
                                (got as f64 - want).abs() <= tol,
                                "{name}: n{n} k{k} m{m} row {r} col {j}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn gemm_degenerate_shapes() {
        let a = [1.0f32; 64];
        let b = [1.0f32; 64];
        for (kern, name) in kernels() {
            // k = 0: every computed element is the empty sum 0.0; columns >= nr untouched.
            let mut c = [f32::NAN; 3 * 20];
            // SAFETY: `k = 0`: nothing of `a` or `b` is read; `c` has 3 rows of 20 floats at stride 20 and
            // `nr = 17` columns are written; the kernel runs on this CPU.
            unsafe { kern(a.as_ptr(), 4, 3, b.as_ptr(), 0, c.as_mut_ptr(), 20, 17) };
            for r in 0..3 {
                assert!(c[r * 20..r * 20 + 17].iter().all(|&v| v == 0.0), "{name}");
                assert!(c[r * 20 + 17..r * 20 + 20].iter().all(|v| v.is_nan()), "{name}");
            }
            // m = 0 or nr = 0: nothing written.
            let mut c = [f32::NAN; 16];
            // SAFETY: `m = 0`: nothing is read or written.
            unsafe { kern(a.as_ptr(), 4, 0, b.as_ptr(), 4, c.as_mut_ptr(), 16, 16) };
            // SAFETY: `nr = 0`: nothing is written; row 0 of `a` (4 floats) and the panel (4 x 16 floats) are
            // readable.
            unsafe { kern(a.as_ptr(), 4, 1, b.as_ptr(), 4, c.as_mut_ptr(), 16, 0) };
            assert!(c.iter().all(|v| v.is_nan()), "{name}");
        }
    }

    #[test]
    fn best_names() {
        let (_, g) = gemm_f32_best();
        let (_, d) = depthwise_f32_best();
        assert!(["avx512f", "avx2", "scalar"].contains(&g));
        assert!(["avx512f", "avx2", "scalar"].contains(&d));
    }

    fn geom(
        h: usize,
        w: usize,
        c: usize,
        kh: usize,
        kw: usize,
        s: (usize, usize),
        p: (usize, usize),
        d: (usize, usize),
        cin: usize,
        cin_offset: usize,
    ) -> ConvGeom {
        let oh = (h + 2 * p.0 - d.0 * (kh - 1) - 1) / s.0 + 1;
        let ow = (w + 2 * p.1 - d.1 * (kw - 1) - 1) / s.1 + 1;
        ConvGeom { h, w, c, oh, ow, kh, kw, sh: s.0, sw: s.1, ph: p.0, pw: p.1, dh: d.0, dw: d.1, cin, cin_offset }
    }

    #[test]
    fn im2col_matches_reference() {
        let mut rng = Rng(777);
        let cases = [
            geom(7, 6, 5, 3, 3, (1, 1), (1, 1), (1, 1), 5, 0),
            geom(9, 8, 3, 7, 7, (2, 2), (3, 3), (1, 1), 3, 0),
            geom(9, 10, 4, 3, 3, (2, 1), (1, 2), (2, 2), 4, 0),
            geom(8, 8, 12, 3, 3, (1, 1), (1, 1), (1, 1), 4, 4),
            geom(6, 7, 12, 3, 2, (2, 2), (0, 1), (2, 1), 6, 6),
            geom(5, 5, 8, 1, 1, (1, 1), (0, 0), (1, 1), 8, 0),
            geom(9, 9, 8, 1, 1, (2, 2), (0, 0), (1, 1), 8, 0),
            geom(12, 12, 40, 3, 3, (1, 1), (1, 1), (1, 1), 40, 0),
            geom(3, 3, 2, 5, 5, (1, 1), (2, 2), (1, 1), 2, 0),
            // narrow kernel rows: one 16-float vector each (3-channel stems), two for 21 floats
            // (ResNet's 7x7 stem), 32 and 24
            geom(16, 16, 3, 3, 3, (2, 2), (1, 1), (1, 1), 3, 0),
            geom(12, 12, 3, 4, 4, (4, 4), (0, 0), (1, 1), 3, 0),
            geom(9, 9, 3, 5, 5, (1, 1), (2, 2), (1, 1), 3, 0),
            geom(7, 5, 3, 3, 3, (1, 1), (0, 0), (1, 1), 3, 0),
            geom(19, 17, 3, 7, 7, (2, 2), (3, 3), (1, 1), 3, 0),
            geom(11, 12, 4, 2, 8, (1, 1), (0, 0), (1, 1), 4, 0),
            geom(9, 10, 4, 3, 6, (1, 2), (1, 2), (1, 1), 4, 0),
        ];
        // each geometry with a row two floats longer than `k` (the copy loop, nothing written past
        // `k`, unless that is already room for the narrow rows' stores) and with `im2col_ld_f32`'s
        // (the narrow rows' whole-vector stores, where they apply)
        for (g, wide) in cases.into_iter().flat_map(|g| [(g, false), (g, true)]) {
            let imgs = 2;
            let x = rng.vec(imgs * g.h * g.w * g.c);
            let mtot = imgs * g.oh * g.ow;
            let k = g.k();
            let ld = if wide { im2col_ld_f32(&g) } else { k + 2 };
            let mut want = vec![0.0f32; mtot * k];
            for m in 0..mtot {
                let img = m / (g.oh * g.ow);
                let oy = m / g.ow % g.oh;
                let ox = m % g.ow;
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        for ci in 0..g.cin {
                            let iy = (oy * g.sh + ky * g.dh) as isize - g.ph as isize;
                            let ix = (ox * g.sw + kx * g.dw) as isize - g.pw as isize;
                            let v = if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w {
                                x[((img * g.h + iy as usize) * g.w + ix as usize) * g.c + g.cin_offset + ci]
                            } else {
                                0.0
                            };
                            want[m * k + (ky * g.kw + kx) * g.cin + ci] = v;
                        }
                    }
                }
            }
            // Gather in uneven chunks, with the dispatched and the portable implementation.
            for portable in [false, true] {
                let mut out = vec![f32::NAN; mtot * ld];
                let mut m0 = 0;
                let mut step = 1;
                while m0 < mtot {
                    let rows = step.min(mtot - m0);
                    // SAFETY: `out` has `mtot` rows of `ld >= g.k()` floats, rows `m0..m0 + rows` lie
                    // inside it, and `x` holds every image of the geometry; `im2col_f32` checks the
                    // CPU before using AVX-512.
                    unsafe {
                        let o = out.as_mut_ptr().add(m0 * ld);
                        if portable {
                            im2col_body::<f32, StdCopy>(&g, x.as_ptr(), m0, rows, o, ld);
                        } else {
                            im2col_f32(&g, x.as_ptr(), m0, rows, o, ld);
                        }
                    }
                    m0 += rows;
                    step = step % 7 + 3;
                }
                for m in 0..mtot {
                    assert_eq!(&out[m * ld..m * ld + k], &want[m * k..m * k + k], "{g:?} row {m}");
                    // only the narrow rows' whole-vector stores write past `k`
                    let narrow = im2col_narrow_f32(&g) && ld >= im2col_narrow_span(&g);
                    let untouched = out[m * ld + k..(m + 1) * ld].iter().all(|v| v.is_nan());
                    assert!(narrow || untouched, "{g:?} ld {ld} row {m}");
                }
            }
        }
    }

    /// The direct convolution is im2col followed by the portable GEMM bit for bit (both sum each
    /// output over the im2col row in order with one FMA per term): padding, strides, dilation,
    /// a channel group, 3-channel stems, 8 and 16 output columns and fewer, row blocks on and
    /// off its eight pixels. Under `CI=true` a CPU without AVX-512F fails it.
    #[test]
    fn direct_conv_is_im2col_and_the_gemm() {
        let ok = direct_conv_available();
        assert!(ok || std::env::var("CI").as_deref() != Ok("true"), "this test needs AVX-512F and FMA");
        if !ok {
            return;
        }
        let mut rng = Rng(99);
        let cases = [
            geom(7, 6, 5, 3, 3, (1, 1), (1, 1), (1, 1), 5, 0),
            geom(9, 10, 4, 3, 3, (2, 1), (1, 2), (2, 2), 4, 0),
            geom(8, 8, 12, 3, 3, (1, 1), (1, 1), (1, 1), 4, 4),
            geom(16, 16, 3, 3, 3, (2, 2), (1, 1), (1, 1), 3, 0),
            geom(9, 9, 8, 1, 1, (2, 2), (0, 0), (1, 1), 8, 0),
            geom(12, 11, 16, 3, 3, (1, 1), (1, 1), (1, 1), 16, 0),
        ];
        for g in cases {
            for n in [3usize, 8, 12, 16] {
                let imgs = 2;
                let x = rng.vec(imgs * g.h * g.w * g.c);
                let (mtot, k) = (imgs * g.oh * g.ow, g.k());
                let wts = rng.vec(n * k);
                let packed = pack_weights_f32(&wts, n, k).unwrap();
                let mut cols = vec![0f32; mtot * k];
                let (mut want, mut got) = (vec![0f32; mtot * PANEL], vec![f32::NAN; mtot * PANEL]);
                let mut zero = vec![f32::NAN; g.cin];
                // SAFETY: `cols` has `mtot` rows of `k` floats, `want` and `got` `mtot` rows of
                // `PANEL >= 16` floats; `x` holds both images; the CPU has AVX-512F and FMA.
                unsafe {
                    im2col_f32(&g, x.as_ptr(), 0, mtot, cols.as_mut_ptr(), k);
                    gemm_f32_scalar(cols.as_ptr(), k, mtot, packed.data.as_ptr(), k, want.as_mut_ptr(), PANEL, n);
                    let mut m0 = 0;
                    let mut step = 5;
                    while m0 < mtot {
                        let rows = step.min(mtot - m0);
                        let c = got.as_mut_ptr().add(m0 * PANEL);
                        conv_f32_direct(&g, x.as_ptr(), m0, rows, packed.data.as_ptr(), c, PANEL, zero.as_mut_ptr(), n);
                        m0 += rows;
                        step = step % 13 + 4;
                    }
                }
                for m in 0..mtot {
                    for j in 0..n {
                        let (a, b) = (got[m * PANEL + j], want[m * PANEL + j]);
                        assert_eq!(a.to_bits(), b.to_bits(), "{g:?} n {n} row {m} column {j}: {a} against {b}");
                    }
                }
            }
        }
    }

    fn dw_kernels() -> Vec<(DepthwiseF32, &'static str)> {
        let mut v: Vec<(DepthwiseF32, &'static str)> = vec![(depthwise_f32_scalar, "scalar")];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            v.push((depthwise_f32_avx512, "avx512f"));
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            v.push((depthwise_f32_avx2, "avx2"));
        }
        v
    }

    /// The depthwise kernel storing through the epilogue in registers (`depthwise_f32_epi`: the
    /// AVX-512 kernel, or the AVX2 one on a CPU without it) writes what the kernel and the
    /// epilogue over its tile write (the 512-bit epilogue kernel, or the list's scalar
    /// definition), bit for bit, for every canonical list (with a residual, bounds, f16/bf16
    /// roundings), a partial channel block, 3x3 and 5x5 kernels at strides 1 and 2 (edge and
    /// interior pixels), and leaves the padding between pixels alone.
    #[test]
    fn the_depthwise_epilogue_in_registers_is_the_tile_epilogue() {
        #[cfg(target_arch = "x86_64")]
        {
            if !vector_runs() {
                return;
            }
            let mut rng = Rng(0xd3);
            let c = 40;
            let bias: Vec<f32> = rng.vec(c).iter().map(|v| v * 2.0).collect();
            for (steps, p) in &canonical_lists(&bias) {
                for &(kk, st, pad) in &[(3usize, 1usize, 1usize), (3, 2, 1), (5, 1, 2), (5, 2, 2)] {
                    let (h, w) = (9, 21);
                    let g = geom(h, w, c, kk, kk, (st, st), (pad, pad), (1, 1), 1, 0);
                    let mut x = rng.vec(h * w * c);
                    put_specials(&mut x, c);
                    let wt = rng.vec(c * kk * kk);
                    let pw = pack_depthwise_f32(&wt, c, kk, kk).unwrap();
                    let (ldt, ld) = (48usize, c + 3);
                    let res = rng.vec(g.ow * ld);
                    for row in 0..g.oh {
                        let mut tile = vec![0f32; g.ow * ldt];
                        let (mut o1, mut o2) = (vec![7.5f32; g.ow * ld], vec![7.5f32; g.ow * ld]);
                        let r = res.as_ptr() as *const u8;
                        // SAFETY: `x` holds the image of `g`, `pw.data` its packed weights; the tile
                        // `ow` pixels of 48 >= c floats, the outputs and residual `ow` pixels of `ld`;
                        // the bias covers the channels, padded; AVX-512F checked above.
                        unsafe {
                            let (dw, _) = depthwise_f32_best();
                            dw(&g, x.as_ptr(), pw.data.as_ptr(), row, tile.as_mut_ptr(), ldt);
                            reference_epilogue(
                                p,
                                tile.as_ptr(),
                                ldt,
                                g.ow,
                                0,
                                c,
                                o1.as_mut_ptr() as *mut u8,
                                ld * 4,
                                r,
                            );
                            depthwise_f32_epi(
                                &g,
                                x.as_ptr(),
                                pw.data.as_ptr(),
                                row,
                                o2.as_mut_ptr() as *mut u8,
                                ld * 4,
                                p,
                                r,
                            );
                        }
                        for (i, (a, b)) in o1.iter().zip(&o2).enumerate() {
                            assert!(
                                same_as_reference(*a, *b),
                                "{steps:?} k={kk} s={st} row {row}: element {i}: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn depthwise_matches_reference() {
        let mut rng = Rng(4242);
        for &c in &[8usize, 20, 32, 96, 144, 960] {
            for &(kk, s, p, dil) in &[
                (3usize, 1usize, 1usize, 1usize),
                (3, 2, 1, 1),
                (5, 1, 2, 1),
                (5, 2, 2, 1),
                (3, 1, 1, 2),
                (2, 1, 0, 1),
            ] {
                let (h, w) = if c >= 960 {
                    (5, 15)
                } else if c == 96 {
                    (7, 7)
                } else {
                    (9, 21)
                };
                let g = geom(h, w, c, kk, kk, (s, s), (p, p), (dil, dil), 1, 0);
                let imgs = 2;
                let x = rng.vec(imgs * h * w * c);
                let wt = rng.vec(c * kk * kk);
                let pw = pack_depthwise_f32(&wt, c, kk, kk).unwrap();
                let ldo = c + 5;
                for row in 0..imgs * g.oh {
                    let img = row / g.oh;
                    let oy = row % g.oh;
                    let mut want = vec![0.0f32; g.ow * c];
                    for ox in 0..g.ow {
                        for ch in 0..c {
                            let mut s = 0.0f64;
                            for ky in 0..kk {
                                for kx in 0..kk {
                                    let iy = (oy * g.sh + ky * g.dh) as isize - g.ph as isize;
                                    let ix = (ox * g.sw + kx * g.dw) as isize - g.pw as isize;
                                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                        s += x[((img * h + iy as usize) * w + ix as usize) * c + ch] as f64
                                            * wt[ch * kk * kk + ky * kk + kx] as f64;
                                    }
                                }
                            }
                            want[ox * c + ch] = s as f32;
                        }
                    }
                    let mut outs = Vec::new();
                    for (kern, name) in dw_kernels() {
                        let mut out = vec![f32::NAN; g.ow * ldo];
                        // SAFETY: `x` holds the images of `g`, `pw.data` the packed weights for `g`, and
                        // `out` `ow` pixels of `ldo >= c` floats; the kernel runs on this CPU.
                        unsafe { kern(&g, x.as_ptr(), pw.data.as_ptr(), row, out.as_mut_ptr(), ldo) };
                        let mut got = vec![0.0f32; g.ow * c];
                        for ox in 0..g.ow {
                            got[ox * c..ox * c + c].copy_from_slice(&out[ox * ldo..ox * ldo + c]);
                            assert!(out[ox * ldo + c..ox * ldo + ldo].iter().all(|v| v.is_nan()));
                        }
                        check_close(&got, &want, &format!("dw {name} c={c} k={kk} s={s} row={row}"));
                        outs.push(got);
                    }
                    for o in &outs[1..] {
                        assert!(o.iter().zip(&outs[0]).all(|(a, b)| a.to_bits() == b.to_bits()));
                    }
                }
            }
        }
    }
}
