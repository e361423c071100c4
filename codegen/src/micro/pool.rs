//! Pooling helpers over NHWC tensors: max pooling (one output row per call) and the per-channel
//! sums of global average pooling (one image per call). Plain loops over contiguous channels,
//! which the Rust compiler vectorizes, and for byte max pooling 64-channel AVX-512BW blocks (the
//! plain loop's per-tap overhead dominated at 64 channels); they touch only the input image and
//! the output row.

use super::ConvGeom;

/// Max pooling, output row `row = img * oh + oy`: `out[ox * c + ch]` is the maximum over the
/// in-image taps (padding never wins, as in ONNX). A window with no in-image tap stores the
/// lowest value.
///
/// # Safety
/// `x` holds the whole NHWC input described by `g` and `out` has `g.ow * g.c` writable elements.
pub unsafe extern "C" fn max_pool_u8(g: *const ConvGeom, x: *const u8, row: usize, out: *mut u8) {
    // SAFETY: `g` points to a valid geometry and `x`, `out` cover the ranges in this function's contract,
    // which is exactly `max_pool`'s (and `x86::max_pool_bytes`'s, run only after `is_x86_feature_detected!`
    // confirmed AVX-512 F and BW).
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
                return x86::max_pool_bytes::<false>(&*g, x, row, out);
            }
        }
        max_pool(&*g, x, row, out, u8::MIN, |a, b| a.max(b))
    }
}

/// [`max_pool_u8`] on i8.
///
/// # Safety
/// As [`max_pool_u8`].
pub unsafe extern "C" fn max_pool_i8(g: *const ConvGeom, x: *const i8, row: usize, out: *mut i8) {
    // SAFETY: as in `max_pool_u8`: this function's contract is `max_pool`'s and `x86::max_pool_bytes`'s (its
    // features checked first).
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
                return x86::max_pool_bytes::<true>(&*g, x.cast(), row, out.cast());
            }
        }
        max_pool(&*g, x, row, out, i8::MIN, |a, b| a.max(b))
    }
}

/// Max pooling of bytes with 512-bit vectors: per output pixel and 64-channel block, the
/// maximum over the in-image taps (a masked last block), the same values as [`max_pool`].
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::ConvGeom;
    use core::arch::x86_64::*;

    /// One output row of [`super::max_pool_u8`] (`SIGNED`: of [`super::max_pool_i8`], the bytes
    /// compared as i8).
    ///
    /// # Safety
    /// As [`super::max_pool_u8`]; the CPU must have AVX-512 F and BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn max_pool_bytes<const SIGNED: bool>(g: &ConvGeom, x: *const u8, row: usize, out: *mut u8) {
        // SAFETY: the caller guarantees `max_pool_u8`'s contract: every tap read lies inside image `row /
        // g.oh` (the tap ranges below keep `iy` in `0..h` and `ix` in `0..w`), each read and each store
        // touches channels `cb..cb + 64` below `c` only (whole vectors while 64 channels are left, masked ones
        // after), and the stores stay in the `ow * c` elements of the output row.
        unsafe {
            if g.oh == 0 {
                return;
            }
            let (img, oy) = (row / g.oh, row % g.oh);
            let c = g.c;
            let xi = x.add(img * g.h * g.w * c);
            let lowest = _mm512_set1_epi8(if SIGNED { i8::MIN } else { 0 });
            let (dh, dw) = (g.dh.max(1), g.dw.max(1));
            let iy0 = (oy * g.sh) as isize - g.ph as isize;
            let taps = |i0: isize, d: usize, n: usize, k: usize| -> (usize, usize) {
                let lo = (0..k).find(|&t| i0 + (t * d) as isize >= 0).unwrap_or(k);
                let hi = (lo..k).find(|&t| i0 + (t * d) as isize >= n as isize).unwrap_or(k);
                (lo, hi)
            };
            let (ky_lo, ky_hi) = taps(iy0, dh, g.h, g.kh);
            for ox in 0..g.ow {
                let ix0 = (ox * g.sw) as isize - g.pw as isize;
                let (kx_lo, kx_hi) = taps(ix0, dw, g.w, g.kw);
                let o = out.add(ox * c);
                let mut cb = 0;
                while cb < c {
                    let left = c - cb;
                    let mask: __mmask64 = if left >= 64 { !0 } else { (1u64 << left) - 1 };
                    let mut acc = lowest;
                    for ky in ky_lo..ky_hi {
                        let iy = (iy0 + (ky * dh) as isize) as usize;
                        for kx in kx_lo..kx_hi {
                            let ix = (ix0 + (kx * dw) as isize) as usize;
                            let p = xi.add((iy * g.w + ix) * c + cb);
                            let v = if left >= 64 {
                                _mm512_loadu_si512(p.cast())
                            } else {
                                _mm512_maskz_loadu_epi8(mask, p.cast())
                            };
                            acc = if SIGNED { _mm512_max_epi8(acc, v) } else { _mm512_max_epu8(acc, v) };
                        }
                    }
                    if left >= 64 {
                        _mm512_storeu_si512(o.add(cb).cast(), acc);
                    } else {
                        _mm512_mask_storeu_epi8(o.add(cb).cast(), mask, acc);
                    }
                    cb += 64;
                }
            }
        }
    }
}

/// [`max_pool_u8`] on f32 (NaN never wins over a number, as the interpreter's `>` test).
///
/// # Safety
/// As [`max_pool_u8`].
pub unsafe extern "C" fn max_pool_f32(g: *const ConvGeom, x: *const f32, row: usize, out: *mut f32) {
    // SAFETY: as in `max_pool_u8`: this function's contract is `max_pool`'s.
    unsafe { max_pool(&*g, x, row, out, f32::NEG_INFINITY, |a, b| if b > a { b } else { a }) }
}

/// Max pooling of one output row (see [`max_pool_u8`]).
///
/// # Safety
/// `x` holds the whole NHWC input described by `g` and `out` has `g.ow * g.c` writable elements
/// that do not overlap it.
#[inline(always)]
unsafe fn max_pool<T: Copy>(g: &ConvGeom, x: *const T, row: usize, out: *mut T, lowest: T, max: impl Fn(T, T) -> T) {
    // SAFETY: the caller guarantees `max_pool`'s contract: `out` has `g.ow * g.c` writable elements (the
    // output row), and every tap read lies inside image `row / g.oh` of the NHWC input `x` (taps outside the
    // image are skipped, so offsets stay in `0..g.h * g.w * g.c`).
    unsafe {
        let (img, oy) = (row / g.oh, row % g.oh);
        let c = g.c;
        let xi = x.add(img * g.h * g.w * c);
        let o = std::slice::from_raw_parts_mut(out, g.ow * c);
        o.fill(lowest);
        for ky in 0..g.kh {
            let iy = (oy * g.sh + ky * g.dh) as isize - g.ph as isize;
            if iy < 0 || iy >= g.h as isize {
                continue;
            }
            for ox in 0..g.ow {
                let orow = &mut o[ox * c..][..c];
                for kx in 0..g.kw {
                    let ix = (ox * g.sw + kx * g.dw) as isize - g.pw as isize;
                    if ix < 0 || ix >= g.w as isize {
                        continue;
                    }
                    let src = std::slice::from_raw_parts(xi.add((iy as usize * g.w + ix as usize) * c), c);
                    for (d, &s) in orow.iter_mut().zip(src) {
                        *d = max(*d, s);
                    }
                }
            }
        }
    }
}

/// Per-channel sums of image `img` of an NHWC u8 tensor with `hw` pixels and `c` channels:
/// `out[ch] = sum_p x[img][p][ch]` (exact in i32 for `hw < 2^23`).
///
/// # Safety
/// `x` holds at least `(img + 1) * hw * c` elements and `out` has `c` writable elements.
pub unsafe extern "C" fn global_sum_u8(x: *const u8, hw: usize, c: usize, img: usize, out: *mut i32) {
    // SAFETY: the caller guarantees `out` has `c` writable elements and `x` holds `(img + 1) * hw * c`
    // elements, so image `img` is the in-bounds range `img * hw * c..(img + 1) * hw * c`; the two do not
    // overlap (arena buffers of different tensors).
    unsafe {
        let o = std::slice::from_raw_parts_mut(out, c);
        o.fill(0);
        let xi = std::slice::from_raw_parts(x.add(img * hw * c), hw * c);
        for px in xi.chunks_exact(c) {
            for (d, &s) in o.iter_mut().zip(px) {
                *d += s as i32;
            }
        }
    }
}

/// [`global_sum_u8`] on i8.
///
/// # Safety
/// As [`global_sum_u8`].
pub unsafe extern "C" fn global_sum_i8(x: *const i8, hw: usize, c: usize, img: usize, out: *mut i32) {
    // SAFETY: as in `global_sum_u8`.
    unsafe {
        let o = std::slice::from_raw_parts_mut(out, c);
        o.fill(0);
        let xi = std::slice::from_raw_parts(x.add(img * hw * c), hw * c);
        for px in xi.chunks_exact(c) {
            for (d, &s) in o.iter_mut().zip(px) {
                *d += s as i32;
            }
        }
    }
}

/// [`global_sum_u8`] on f32, summing pixels in order (the interpreter's order).
///
/// # Safety
/// As [`global_sum_u8`].
pub unsafe extern "C" fn global_sum_f32(x: *const f32, hw: usize, c: usize, img: usize, out: *mut f32) {
    // SAFETY: as in `global_sum_u8`.
    unsafe {
        let o = std::slice::from_raw_parts_mut(out, c);
        o.fill(0.0);
        let xi = std::slice::from_raw_parts(x.add(img * hw * c), hw * c);
        for px in xi.chunks_exact(c) {
            for (d, &s) in o.iter_mut().zip(px) {
                *d += s;
            }
        }
    }
}

/// Concatenation's copy: for each block `o` in `begin..end`, the `chunk` bytes at
/// `src + o * chunk` go to `dst + o * stride` (one input's slice of each output block).
///
/// # Safety
/// `src` holds `end * chunk` bytes; `dst` holds `(end - 1) * stride + chunk` bytes; they do not
/// overlap.
pub unsafe extern "C" fn copy_blocks(
    src: *const u8,
    dst: *mut u8,
    begin: usize,
    end: usize,
    chunk: usize,
    stride: usize,
) {
    // SAFETY: the caller guarantees `src` holds `end * chunk` bytes and `dst` holds `(end - 1) * stride +
    // chunk` bytes, so every block `o < end` is in bounds, and that they do not overlap.
    unsafe {
        for o in begin..end {
            std::ptr::copy_nonoverlapping(src.add(o * chunk), dst.add(o * stride), chunk);
        }
    }
}

/// Average pooling over NHWC f32, output row `row = img * oh + oy`; `pe_h`, `pe_w` are the end
/// pads. The sum runs over the in-image taps in `(ky, kx)` order; the divisor is the number of
/// in-image taps, or with `include_pad` the number of taps inside the padded input.
///
/// # Safety
/// As [`max_pool_u8`].
pub unsafe extern "C" fn avg_pool_f32(g: *const AvgPoolGeom, x: *const f32, row: usize, out: *mut f32) {
    // SAFETY: `g` points to a valid `AvgPoolGeom`, `out` has `ow * c` writable elements and `x` holds the
    // whole NHWC input (the caller's contract, as for `max_pool_u8`); only in-image taps are read.
    unsafe {
        let a = &*g;
        let g = &a.geom;
        let (img, oy) = (row / g.oh, row % g.oh);
        let c = g.c;
        let xi = x.add(img * g.h * g.w * c);
        let o = std::slice::from_raw_parts_mut(out, g.ow * c);
        o.fill(0.0);
        for ox in 0..g.ow {
            let orow = &mut o[ox * c..][..c];
            let (mut valid, mut padded) = (0usize, 0usize);
            for ky in 0..g.kh {
                let iy = (oy * g.sh + ky * g.dh) as isize - g.ph as isize;
                let in_pad_y = iy >= -(g.ph as isize) && iy < (g.h + a.pe_h) as isize;
                for kx in 0..g.kw {
                    let ix = (ox * g.sw + kx * g.dw) as isize - g.pw as isize;
                    let in_pad_x = ix >= -(g.pw as isize) && ix < (g.w + a.pe_w) as isize;
                    if in_pad_y && in_pad_x {
                        padded += 1;
                    }
                    if iy < 0 || iy >= g.h as isize || ix < 0 || ix >= g.w as isize {
                        continue;
                    }
                    valid += 1;
                    let src = std::slice::from_raw_parts(xi.add((iy as usize * g.w + ix as usize) * c), c);
                    for (d, &s) in orow.iter_mut().zip(src) {
                        *d += s;
                    }
                }
            }
            let count = if a.include_pad != 0 { padded } else { valid };
            for d in orow.iter_mut() {
                *d /= count as f32;
            }
        }
    }
}

/// Geometry of an average pooling: the window geometry, the end pads and whether padded cells
/// count in the divisor. `#[repr(C)]` because generated code passes a pointer to it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AvgPoolGeom {
    pub geom: ConvGeom,
    pub pe_h: usize,
    pub pe_w: usize,
    pub include_pad: usize,
}
