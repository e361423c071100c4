//! The requantizing epilogue with 512-bit vectors, for the epilogue list every quantized
//! convolution and matmul has: `[AddChannelI32(corr), ScaleToF32(m), RoundToInt { zp, lo, hi,
//! bounded: true }]` stored as u8 or i8. Cranelift's x86-64 backend stops at 128-bit vectors;
//! this computes the same steps on 16 lanes at once. Generated code calls it per tile when the
//! native microkernels are selected and the lowering proved the conversion cannot overflow
//! (`bounded`); otherwise the Cranelift epilogue runs. Same numerics as the CLIF epilogue:
//! `cvtps2dq` rounds half to even, the clamp and zero point follow, narrowing is exact.

/// Per-kernel constants of the requantization.
#[repr(C)]
#[derive(Clone, Debug)]
pub struct RequantParams {
    /// Per-column i32 correction and f32 multiplier (padded to a multiple of 16 past the end).
    pub corr: Vec<i32>,
    pub mult: Vec<f32>,
    pub zp: i32,
    pub lo: i32,
    pub hi: i32,
    pub signed_out: bool,
}

/// Whether the 512-bit version can run on this CPU.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Requantizes a `rows x nr` tile of i32 accumulators (`ldc` per row) whose first column is
/// output channel `n0`, storing bytes at `out` (`out_stride` bytes per row).
///
/// # Safety
/// `p` points to valid parameters covering columns `n0..n0 + nr`; the tile and the output hold
/// the given rows and columns. Call only when [`available`] is true.
pub unsafe extern "C" fn requant_tile(
    p: *const RequantParams,
    tile: *const i32,
    ldc: usize,
    rows: usize,
    n0: usize,
    nr: usize,
    out: *mut u8,
    out_stride: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        requant_avx512(&*p, tile, ldc, rows, n0, nr, out, out_stride)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (p, tile, ldc, rows, n0, nr, out, out_stride);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[allow(clippy::too_many_arguments)]
unsafe fn requant_avx512(
    p: &RequantParams,
    tile: *const i32,
    ldc: usize,
    rows: usize,
    n0: usize,
    nr: usize,
    out: *mut u8,
    out_stride: usize,
) {
    use std::arch::x86_64::*;
    let lo = _mm512_set1_epi32(p.lo.saturating_sub(p.zp));
    let hi = _mm512_set1_epi32(p.hi.saturating_sub(p.zp));
    let zp = _mm512_set1_epi32(p.zp);
    let corr = p.corr.as_ptr().add(n0);
    let mult = p.mult.as_ptr().add(n0);
    let mut j = 0;
    while j < nr {
        let left = nr - j;
        let mask: __mmask16 = if left >= 16 { 0xffff } else { (1u16 << left) - 1 };
        let c = _mm512_maskz_loadu_epi32(mask, corr.add(j));
        let m = _mm512_maskz_loadu_ps(mask, mult.add(j));
        for r in 0..rows {
            let acc = _mm512_maskz_loadu_epi32(mask, tile.add(r * ldc + j));
            let v = _mm512_cvtepi32_ps(_mm512_add_epi32(acc, c));
            let v = _mm512_mul_ps(v, m);
            let q = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            let q = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(q, lo), hi), zp);
            _mm512_mask_cvtepi32_storeu_epi8(out.add(r * out_stride + j) as *mut i8, mask, q);
        }
        j += 16;
    }
    let _ = p.signed_out;
}
