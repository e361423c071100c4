//! The requantizing epilogue with 512-bit (AVX-512) or 256-bit (AVX2) vectors, for the epilogue
//! list every quantized convolution and matmul has: `[AddChannelI32(corr), ScaleToF32(m),
//! RoundToInt { zp, lo, hi, bounded: true }]` stored as u8 or i8; and the quantized add and the
//! quantize of element-wise steps. Cranelift's x86-64 backend stops at 128-bit vectors; these
//! compute the same steps on 16 or 8 lanes at once, on the fastest [`Rung`] the CPU has. Generated code calls it per tile when the
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

/// The vector width a kernel of this module runs at on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rung {
    /// 16 lanes: AVX-512F and BW.
    Avx512,
    /// 8 lanes: AVX2 and FMA.
    Avx2,
}

impl Rung {
    /// Every rung this CPU runs, fastest first (empty off x86_64 or without AVX2).
    pub fn all_here() -> Vec<Rung> {
        let mut v = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw") {
                v.push(Rung::Avx512);
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                v.push(Rung::Avx2);
            }
        }
        v
    }

    /// The fastest rung this CPU runs.
    pub fn best() -> Option<Rung> {
        static BEST: std::sync::OnceLock<Option<Rung>> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| Rung::all_here().first().copied())
    }
}

/// Whether a vector version (512- or 256-bit) can run on this CPU.
pub fn available() -> bool {
    Rung::best().is_some()
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
    // `out_stride`, and that the CPU has a vector rung (`available`), whose features the function of that
    // rung requires.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        match Rung::best() {
            Some(Rung::Avx512) => requant_avx512(&*p, tile, ldc, rows, n0, nr, out, out_stride),
            Some(Rung::Avx2) => requant_avx2(&*p, tile, ldc, rows, n0, nr, out, out_stride),
            None => {}
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (p, tile, ldc, rows, n0, nr, out, out_stride);
        }
    }
}

/// Eight i32 lanes already inside the byte range of the result narrowed to their low bytes, in
/// order, in the low 8 bytes of the result (exact: every lane is in -128..=255).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn low_bytes_avx2(q: std::arch::x86_64::__m256i) -> std::arch::x86_64::__m128i {
    use std::arch::x86_64::*;
    // byte 0 of each i32 of each 128-bit half to that half's bytes 0..4, then the halves joined
    let pick = _mm256_setr_epi8(
        0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1,
        -1, -1, -1,
    );
    let b = _mm256_shuffle_epi8(q, pick);
    _mm_unpacklo_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256::<1>(b))
}

/// The first `n < 8` bytes of `v` to `dst`.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn store_bytes_partial(dst: *mut u8, v: std::arch::x86_64::__m128i, n: usize) {
    // SAFETY: the caller passes `n` writable bytes at `dst`.
    unsafe {
        let mut buf = [0u8; 16];
        std::arch::x86_64::_mm_storeu_si128(buf.as_mut_ptr().cast(), v);
        std::ptr::copy_nonoverlapping(buf.as_ptr(), dst, n);
    }
}

/// The AVX2 requantization: [`requant_avx512`] eight lanes at a time (the same steps: the
/// correction, the conversion to f32, the multiply, `cvtps2dq` half to even, the clamp, the zero
/// point), a partial last group through a buffer.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn requant_avx2(
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
    // 8 <= nr` of rows `< rows`; the partial group reads `corr`/`mult` padded past `n0 + nr` to a multiple of
    // 16, its tile values through a buffer of the valid columns, and stores only columns below `nr`; AVX2 is
    // enabled here and checked by `available`.
    unsafe {
        use std::arch::x86_64::*;
        let lo = _mm256_set1_epi32(p.lo.saturating_sub(p.zp));
        let hi = _mm256_set1_epi32(p.hi.saturating_sub(p.zp));
        let zp = _mm256_set1_epi32(p.zp);
        let corr = p.corr.as_ptr().add(n0);
        let mult = p.mult.as_ptr().add(n0);
        let requant = |acc: __m256i, c: __m256i, m: __m256| -> __m256i {
            let v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(acc, c)), m);
            let q = _mm256_cvtps_epi32(v);
            _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(q, lo), hi), zp)
        };
        let mut j = 0;
        while j + 8 <= nr {
            let c = _mm256_loadu_si256(corr.add(j).cast());
            let m = _mm256_loadu_ps(mult.add(j));
            for r in 0..rows {
                let q = requant(_mm256_loadu_si256(tile.add(r * ldc + j).cast()), c, m);
                _mm_storel_epi64(out.add(r * out_stride + j).cast(), low_bytes_avx2(q));
            }
            j += 8;
        }
        if j < nr {
            let n = nr - j;
            let c = _mm256_loadu_si256(corr.add(j).cast());
            let m = _mm256_loadu_ps(mult.add(j));
            for r in 0..rows {
                let mut acc = [0i32; 8];
                std::ptr::copy_nonoverlapping(tile.add(r * ldc + j), acc.as_mut_ptr(), n);
                let q = requant(_mm256_loadu_si256(acc.as_ptr().cast()), c, m);
                store_bytes_partial(out.add(r * out_stride + j), low_bytes_avx2(q), n);
            }
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

/// Constants of the quantized add: ONNX Runtime's QLinearAdd formula
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
    // SAFETY: the caller guarantees `a`, `b`, `c` hold at least `end` elements and that the CPU has a vector
    // rung (`available`), whose features `qadd_avx512` or `qadd_avx2` requires; `p` points to valid constants.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        match Rung::best() {
            Some(Rung::Avx512) => qadd_avx512(&*p, a, b, c, begin, end),
            Some(Rung::Avx2) => qadd_avx2(&*p, a, b, c, begin, end),
            None => {}
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

/// [`qadd_avx512`] eight lanes at a time (the same fused multiply-adds, clamp and rounding),
/// a partial last group through buffers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn qadd_avx2(p: &QAddConsts, a: *const u8, b: *const u8, c: *mut u8, begin: usize, end: usize) {
    // SAFETY: whole loads and stores touch elements `i..i + 8 <= end` of `a`, `b`, `c`, which hold `end`
    // elements (the caller's contract); the partial group goes through buffers of its `end - i` elements;
    // AVX2 and FMA are enabled here and checked by `available`.
    unsafe {
        use std::arch::x86_64::*;
        let (ra, rb, fixed) = (_mm256_set1_ps(p.ra), _mm256_set1_ps(p.rb), _mm256_set1_ps(p.fixed));
        let (lo, hi) = (_mm256_set1_ps(p.lo as f32), _mm256_set1_ps(p.hi as f32));
        let widen = |x: __m128i, signed: bool| if signed { _mm256_cvtepi8_epi32(x) } else { _mm256_cvtepu8_epi32(x) };
        let add = |xa: __m128i, xb: __m128i| -> __m128i {
            let fa = _mm256_cvtepi32_ps(widen(xa, p.a_signed));
            let fb = _mm256_cvtepi32_ps(widen(xb, p.b_signed));
            let v = _mm256_fmadd_ps(fa, ra, _mm256_fmadd_ps(fb, rb, fixed));
            // clamped before rounding, as `qadd_avx512` does
            let v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
            low_bytes_avx2(_mm256_cvtps_epi32(v))
        };
        let mut i = begin;
        while i + 8 <= end {
            let q = add(_mm_loadl_epi64(a.add(i).cast()), _mm_loadl_epi64(b.add(i).cast()));
            _mm_storel_epi64(c.add(i).cast(), q);
            i += 8;
        }
        if i < end {
            let n = end - i;
            let (mut xa, mut xb) = ([0u8; 16], [0u8; 16]);
            std::ptr::copy_nonoverlapping(a.add(i), xa.as_mut_ptr(), n);
            std::ptr::copy_nonoverlapping(b.add(i), xb.as_mut_ptr(), n);
            let q = add(_mm_loadu_si128(xa.as_ptr().cast()), _mm_loadu_si128(xb.as_ptr().cast()));
            store_bytes_partial(c.add(i), q, n);
        }
    }
}

/// Constants of the quantize: the scale, the zero point and the result's storage range.
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
        match Rung::best() {
            Some(Rung::Avx512) => quantize_avx512(&*p, x, y, begin, end),
            Some(Rung::Avx2) => quantize_avx2(&*p, x, y, begin, end),
            None => {}
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

/// [`quantize_avx512`] eight lanes at a time: the true division, NaN to zero, the clamp in
/// float, `cvtps2dq` half to even and the zero point, as [`super::fepilogue::round_lanes`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_avx2(p: &QuantizeConsts, x: *const f32, y: *mut u8, begin: usize, end: usize) {
    // SAFETY: whole loads and stores touch elements `i..i + 8 <= end` of `x` and `y` (the caller's
    // contract); the partial group goes through a buffer of its `end - i` elements; AVX2 is enabled here
    // and checked by `available`.
    unsafe {
        use std::arch::x86_64::*;
        let s = _mm256_set1_ps(p.scale);
        let lo = _mm256_set1_ps(p.lo.saturating_sub(p.zp) as f32);
        let hi = _mm256_set1_ps(p.hi.saturating_sub(p.zp) as f32);
        let zp = _mm256_set1_epi32(p.zp);
        let q = |v: __m256| -> __m128i {
            let v = _mm256_div_ps(v, s);
            let v = _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v), v);
            let v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
            low_bytes_avx2(_mm256_add_epi32(_mm256_cvtps_epi32(v), zp))
        };
        let mut i = begin;
        while i + 8 <= end {
            _mm_storel_epi64(y.add(i).cast(), q(_mm256_loadu_ps(x.add(i))));
            i += 8;
        }
        if i < end {
            let n = end - i;
            let mut buf = [0f32; 8];
            std::ptr::copy_nonoverlapping(x.add(i), buf.as_mut_ptr(), n);
            store_bytes_partial(y.add(i), q(_mm256_loadu_ps(buf.as_ptr())), n);
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use qforge_ir::{numerics, DType};

    /// The vector rungs this CPU runs; under `CI=true` a CPU with none (no AVX2) fails the test
    /// instead of letting it pass having checked nothing.
    fn rungs() -> Vec<Rung> {
        let v = Rung::all_here();
        assert!(!v.is_empty() || std::env::var("CI").as_deref() != Ok("true"), "this test needs AVX2 or AVX-512");
        v
    }

    /// A small deterministic generator.
    fn xorshift(s: &mut u32) -> u32 {
        *s ^= *s << 13;
        *s ^= *s >> 17;
        *s ^= *s << 5;
        *s
    }

    /// The quantize of every rung is the contract's quantize on every value kind: ties at half
    /// integers (to even), values past both ends of the range, infinities, NaN, signed zeros,
    /// subnormals; u8 and i8 with several zero points; ranges starting off a vector boundary and
    /// ending in a partial vector.
    #[test]
    fn quantize_is_the_contracts() {
        let mut x: Vec<f32> = (-4000..4000).map(|i| i as f32 * 0.0625).collect();
        x.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1e-40, -1e-40, f32::MAX, f32::MIN]);
        x.extend((0..777).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 0.013_7));
        for rung in rungs() {
            for (scale, zp, dtype) in
                [(0.125f32, 0, DType::U8), (0.125, 128, DType::U8), (0.05, -3, DType::I8), (0.02, 0, DType::I8)]
            {
                let (lo, hi) = if dtype == DType::U8 { (0, 255) } else { (-128, 127) };
                let p = QuantizeConsts { scale, zp, lo, hi };
                for end in [x.len(), x.len() - 5] {
                    let mut y = vec![0xa5u8; x.len()];
                    let begin = 3;
                    // SAFETY: `x` and `y` hold `x.len() >= end` elements; the CPU runs `rung`.
                    unsafe {
                        match rung {
                            Rung::Avx512 => quantize_avx512(&p, x.as_ptr(), y.as_mut_ptr(), begin, end),
                            Rung::Avx2 => quantize_avx2(&p, x.as_ptr(), y.as_mut_ptr(), begin, end),
                        }
                    }
                    for (i, (&v, &got)) in x.iter().zip(&y).enumerate() {
                        let want = if (begin..end).contains(&i) {
                            numerics::quantize(v, scale, zp, dtype) as u8
                        } else {
                            0xa5
                        };
                        assert_eq!(got, want, "{rung:?}: quantize({v:e}) scale {scale} zp {zp} {dtype:?} at {i}");
                    }
                }
            }
        }
    }

    /// The requantization of every rung is the epilogue's steps computed one value at a time:
    /// the correction, the f32 product, half-to-even rounding, the clamp to the range less the
    /// zero point, the zero point; u8 and i8 results, column counts with and without a partial
    /// vector, a first column off a vector boundary, and the bytes past each row left alone.
    #[test]
    fn requant_tile_is_the_steps() {
        let mut seed = 0x9e37_79b9u32;
        for rung in rungs() {
            for &(rows, nr, n0, signed_out, zp) in &[
                (5usize, 37usize, 0usize, false, 3i32),
                (3, 16, 16, true, -2),
                (4, 5, 8, false, 128),
                (1, 64, 0, true, 0),
            ] {
                let ncols = n0 + nr;
                let padded = ncols.div_ceil(16) * 16;
                let corr: Vec<i32> = (0..padded).map(|_| (xorshift(&mut seed) % 20001) as i32 - 10000).collect();
                let mult: Vec<f32> = (0..padded).map(|_| (xorshift(&mut seed) % 1000) as f32 * 1e-5 + 1e-4).collect();
                let (lo, hi) = if signed_out { (-128, 127) } else { (0, 255) };
                let p = RequantParams { corr: corr.clone(), mult: mult.clone(), zp, lo, hi, signed_out };
                let ldc = nr + 3;
                let mut tile: Vec<i32> =
                    (0..rows * ldc).map(|_| (xorshift(&mut seed) % 400_001) as i32 - 200_000).collect();
                // exact ties: (acc + corr) * mult = k + 0.5 for a power-of-two multiplier
                tile[0] = 5 * 64 + 32 - corr[n0];
                let stride = nr + 5;
                let mut out = vec![0x5au8; rows * stride];
                let mut p2 = p.clone();
                p2.mult[n0] = 1.0 / 64.0;
                // SAFETY: the tile holds `rows` rows of `nr` i32 at stride `ldc`, the output `rows` rows of
                // `nr` bytes at stride `stride`; the parameters cover columns `n0..n0 + nr` padded to 16;
                // the CPU runs `rung`.
                unsafe {
                    let (t, o) = (tile.as_ptr(), out.as_mut_ptr());
                    match rung {
                        Rung::Avx512 => requant_avx512(&p2, t, ldc, rows, n0, nr, o, stride),
                        Rung::Avx2 => requant_avx2(&p2, t, ldc, rows, n0, nr, o, stride),
                    }
                }
                for r in 0..rows {
                    for j in 0..stride {
                        let want = if j < nr {
                            let v = (tile[r * ldc + j] + corr[n0 + j]) as f32 * p2.mult[n0 + j];
                            let q = (v.round_ties_even() as i32).clamp(lo - zp, hi - zp) + zp;
                            q as u8
                        } else {
                            0x5a
                        };
                        assert_eq!(out[r * stride + j], want, "{rung:?}: {rows}x{nr} at n0 {n0}: row {r} col {j}");
                    }
                }
            }
        }
    }

    /// The quantized add of every rung is the contract's (`QAddParams::apply`) for u8 and i8
    /// operands and results, on lengths with a partial last vector and a start off a boundary.
    #[test]
    fn qadd_is_the_contracts() {
        let mut seed = 0x2545_f491u32;
        let n = 203;
        let a: Vec<u8> = (0..n).map(|_| xorshift(&mut seed) as u8).collect();
        let b: Vec<u8> = (0..n).map(|_| xorshift(&mut seed) as u8).collect();
        for rung in rungs() {
            for &(a_signed, b_signed, dtype) in &[
                (false, false, DType::U8),
                (true, true, DType::I8),
                (false, true, DType::U8),
                (true, false, DType::I8),
            ] {
                let q = numerics::QAddParams::new(0.031, 3, 0.017, -5, 0.04, 7);
                let (lo, hi) = if dtype == DType::U8 { (0, 255) } else { (-128, 127) };
                let p = QAddConsts { ra: q.ra, rb: q.rb, fixed: q.fixed, a_signed, b_signed, lo, hi };
                for (begin, end) in [(0, n), (5, n - 3), (9, 12)] {
                    let mut c = vec![0x77u8; n];
                    // SAFETY: `a`, `b` and `c` hold `n >= end` elements; the CPU runs `rung`.
                    unsafe {
                        let (pa, pb, pc) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
                        match rung {
                            Rung::Avx512 => qadd_avx512(&p, pa, pb, pc, begin, end),
                            Rung::Avx2 => qadd_avx2(&p, pa, pb, pc, begin, end),
                        }
                    }
                    let val = |x: u8, signed: bool| if signed { x as i8 as i64 } else { x as i64 };
                    for i in 0..n {
                        let want = if (begin..end).contains(&i) {
                            q.apply(val(a[i], a_signed), val(b[i], b_signed), dtype) as u8
                        } else {
                            0x77
                        };
                        assert_eq!(c[i], want, "{rung:?}: {a_signed} {b_signed} {dtype:?} at {i} of {begin}..{end}");
                    }
                }
            }
        }
    }
}
