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
    // SAFETY: the caller guarantees `p` points to valid parameters covering columns `n0..n0 + nr`, that the
    // tile holds `rows` rows of `nr` i32 at stride `ldc` and the output `rows` rows of `nr` bytes at stride
    // `out_stride`, and that the CPU has AVX-512 F and BW (`available`), which `requant_avx512` requires.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            requant_avx512(&*p, tile, ldc, rows, n0, nr, out, out_stride)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (p, tile, ldc, rows, n0, nr, out, out_stride);
        }
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
    // SAFETY: the caller (`requant_tile`) guarantees the ranges: whole loads and stores touch columns `j..j +
    // 16 <= nr`, masked ones only columns `j + lane < nr`, of rows `< rows`, and `corr`/`mult` are padded
    // past `n0 + nr` to a multiple of 16; the target features are enabled on this function and checked by
    // `available`.
    unsafe {
        use std::arch::x86_64::*;
        let lo = _mm512_set1_epi32(p.lo.saturating_sub(p.zp));
        let hi = _mm512_set1_epi32(p.hi.saturating_sub(p.zp));
        let zp = _mm512_set1_epi32(p.zp);
        let corr = p.corr.as_ptr().add(n0);
        let mult = p.mult.as_ptr().add(n0);
        let requant = |acc: __m512i, c: __m512i, m: __m512| -> __m512i {
            let v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(acc, c)), m);
            let q = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(q, lo), hi), zp)
        };
        let mut j = 0;
        // Whole groups of 16 columns: plain loads, the narrowing in a register and one 16-byte
        // store (the masked forms, above all `vpmovdb` to memory, cost several times more on
        // some cores, Zen 4 among them).
        while j + 16 <= nr {
            let c = _mm512_loadu_si512(corr.add(j).cast());
            let m = _mm512_loadu_ps(mult.add(j));
            for r in 0..rows {
                let q = requant(_mm512_loadu_si512(tile.add(r * ldc + j).cast()), c, m);
                _mm_storeu_si128(out.add(r * out_stride + j).cast(), _mm512_cvtepi32_epi8(q));
            }
            j += 16;
        }
        if j < nr {
            let mask: __mmask16 = (1u16 << (nr - j)) - 1;
            let c = _mm512_maskz_loadu_epi32(mask, corr.add(j));
            let m = _mm512_maskz_loadu_ps(mask, mult.add(j));
            for r in 0..rows {
                let q = requant(_mm512_maskz_loadu_epi32(mask, tile.add(r * ldc + j)), c, m);
                _mm_mask_storeu_epi8(out.add(r * out_stride + j).cast(), mask, _mm512_cvtepi32_epi8(q));
            }
        }
        let _ = p.signed_out;
    }
}

/// Constants of the 512-bit quantized add: ONNX Runtime's QLinearAdd formula
/// ([`qforge_ir::numerics::QAddParams`]) with the operand and result types.
#[repr(C)]
#[derive(Clone, Debug)]
pub struct QAddConsts {
    pub ra: f32,
    pub rb: f32,
    pub fixed: f32,
    pub a_signed: bool,
    pub b_signed: bool,
    /// The result's storage range.
    pub lo: i32,
    pub hi: i32,
}

/// `c[i] = sat(round_half_even(fma(a[i], ra, fma(b[i], rb, fixed))))` for `i` in `begin..end`,
/// sixteen lanes at a time (the same fused multiply-adds as the CLIF kernel and the interpreter).
///
/// # Safety
/// `a`, `b`, `c` hold at least `end` elements; call only when [`available`] is true.
pub unsafe extern "C" fn qadd(p: *const QAddConsts, a: *const u8, b: *const u8, c: *mut u8, begin: usize, end: usize) {
    // SAFETY: the caller guarantees `a`, `b`, `c` hold at least `end` elements and that the CPU has AVX-512 F
    // and BW (`available`), which `qadd_avx512` requires; `p` points to valid constants.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            qadd_avx512(&*p, a, b, c, begin, end)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (p, a, b, c, begin, end);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn qadd_avx512(p: &QAddConsts, a: *const u8, b: *const u8, c: *mut u8, begin: usize, end: usize) {
    // SAFETY: whole loads and stores touch elements `i..i + 16 <= end`, masked ones only elements below `end`,
    // of `a`, `b`, `c`, which hold `end` elements (the caller's contract); the target features are enabled on this function and checked by
    // `available`.
    unsafe {
        use std::arch::x86_64::*;
        let (ra, rb, fixed) = (_mm512_set1_ps(p.ra), _mm512_set1_ps(p.rb), _mm512_set1_ps(p.fixed));
        let (lo, hi) = (_mm512_set1_ps(p.lo as f32), _mm512_set1_ps(p.hi as f32));
        let widen = |x: __m128i, signed: bool| if signed { _mm512_cvtepi8_epi32(x) } else { _mm512_cvtepu8_epi32(x) };
        let add = |xa: __m128i, xb: __m128i| -> __m128i {
            let fa = _mm512_cvtepi32_ps(widen(xa, p.a_signed));
            let fb = _mm512_cvtepi32_ps(widen(xb, p.b_signed));
            let v = _mm512_fmadd_ps(fa, ra, _mm512_fmadd_ps(fb, rb, fixed));
            // Clamping before rounding equals clamping after it (the bounds are integers), and keeps
            // the conversion in range.
            let v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
            _mm512_cvtepi32_epi8(_mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v))
        };
        let mut i = begin;
        // whole vectors with plain loads and stores (cheaper than the masked forms), then a masked tail
        while i + 16 <= end {
            let q = add(_mm_loadu_si128(a.add(i).cast()), _mm_loadu_si128(b.add(i).cast()));
            _mm_storeu_si128(c.add(i).cast(), q);
            i += 16;
        }
        if i < end {
            let mask: __mmask16 = (1u16 << (end - i)) - 1;
            let q = add(
                _mm_maskz_loadu_epi8(mask, a.add(i) as *const i8),
                _mm_maskz_loadu_epi8(mask, b.add(i) as *const i8),
            );
            _mm_mask_storeu_epi8(c.add(i) as *mut i8, mask, q);
        }
    }
}

/// Constants of the 512-bit quantize: the scale, the zero point and the result's storage range.
#[repr(C)]
#[derive(Clone, Debug)]
pub struct QuantizeConsts {
    pub scale: f32,
    pub zp: i32,
    pub lo: i32,
    pub hi: i32,
}

/// `y[i] = sat(round_half_even(x[i] / scale) + zp)` for `i` in `begin..end` (the numerics
/// contract's quantize: a true f32 division, NaN to the zero point), sixteen lanes at a time,
/// rounded as the float epilogue rounds to bytes ([`super::fepilogue::round_lanes`]), the low
/// byte stored.
///
/// # Safety
/// `x` holds at least `end` f32 and `y` `end` bytes; call only when [`available`] is true.
pub unsafe extern "C" fn quantize(p: *const QuantizeConsts, x: *const f32, y: *mut u8, begin: usize, end: usize) {
    // SAFETY: the caller's contract, which `quantize_avx512` requires; `p` points to valid
    // constants.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            quantize_avx512(&*p, x, y, begin, end)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (p, x, y, begin, end);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_avx512(p: &QuantizeConsts, x: *const f32, y: *mut u8, begin: usize, end: usize) {
    // SAFETY: whole loads and stores touch elements `i..i + 16 <= end`, masked ones only elements
    // below `end`, of `x` and `y` (the caller's contract); the target features are enabled here
    // and checked by `available`.
    unsafe {
        use std::arch::x86_64::*;
        let s = _mm512_set1_ps(p.scale);
        // the float epilogue's rounding to bytes (NaN to 0, clamp, half to even, zero point)
        let q = |v: __m512| -> __m128i {
            _mm512_cvtepi32_epi8(super::fepilogue::round_lanes(_mm512_div_ps(v, s), p.zp, p.lo, p.hi))
        };
        let mut i = begin;
        while i + 16 <= end {
            _mm_storeu_si128(y.add(i).cast(), q(_mm512_loadu_ps(x.add(i))));
            i += 16;
        }
        if i < end {
            let mask: __mmask16 = (1u16 << (end - i)) - 1;
            _mm_mask_storeu_epi8(y.add(i) as *mut i8, mask, q(_mm512_maskz_loadu_ps(mask, x.add(i))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qforge_ir::{numerics, DType};

    /// The 512-bit quantize is the contract's quantize on every value kind: ties at half
    /// integers (to even), values past both ends of the range, infinities, NaN, signed zeros,
    /// subnormals; u8 and i8 with several zero points; ranges starting off a vector boundary.
    /// Under `CI=true` a CPU without AVX-512BW fails it.
    #[test]
    fn quantize_is_the_contracts() {
        let ok = available();
        assert!(ok || std::env::var("CI").as_deref() != Ok("true"), "this test needs AVX-512F and BW");
        if !ok {
            return;
        }
        let mut x: Vec<f32> = (-4000..4000).map(|i| i as f32 * 0.0625).collect();
        x.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1e-40, -1e-40, f32::MAX, f32::MIN]);
        x.extend((0..777).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 0.013_7));
        for (scale, zp, dtype) in
            [(0.125f32, 0, DType::U8), (0.125, 128, DType::U8), (0.05, -3, DType::I8), (0.02, 0, DType::I8)]
        {
            let (lo, hi) = if dtype == DType::U8 { (0, 255) } else { (-128, 127) };
            let p = QuantizeConsts { scale, zp, lo, hi };
            let mut y = vec![0u8; x.len()];
            let begin = 3;
            // SAFETY: `x` and `y` hold `x.len()` elements; the CPU has AVX-512F and BW.
            unsafe { quantize(&p, x.as_ptr(), y.as_mut_ptr(), begin, x.len()) };
            for (i, (&v, &got)) in x.iter().zip(&y).enumerate().skip(begin) {
                let want = numerics::quantize(v, scale, zp, dtype) as u8;
                assert_eq!(got, want, "quantize({v:e}) scale {scale} zp {zp} {dtype:?} at {i}");
            }
        }
    }
}
