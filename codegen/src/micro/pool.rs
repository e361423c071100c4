//! Pooling helpers over NHWC tensors: max pooling (one output row per call) and the per-channel
//! sums of global average pooling (one image per call). Plain loops over contiguous channels,
//! which the Rust compiler vectorizes; they touch only the input image and the output row.

use super::ConvGeom;

/// Max pooling, output row `row = img * oh + oy`: `out[ox * c + ch]` is the maximum over the
/// in-image taps (padding never wins, as in ONNX). A window with no in-image tap stores the
/// lowest value.
///
/// # Safety
/// `x` holds the whole NHWC input described by `g` and `out` has `g.ow * g.c` writable elements.
pub unsafe extern "C" fn max_pool_u8(g: *const ConvGeom, x: *const u8, row: usize, out: *mut u8) {
    // SAFETY: `g` points to a valid geometry and `x`, `out` cover the ranges in this function's contract,
    // which is exactly `max_pool`'s.
    unsafe { max_pool(&*g, x, row, out, u8::MIN, |a, b| a.max(b)) }
}

/// [`max_pool_u8`] on i8.
///
/// # Safety
/// As [`max_pool_u8`].
pub unsafe extern "C" fn max_pool_i8(g: *const ConvGeom, x: *const i8, row: usize, out: *mut i8) {
    // SAFETY: as in `max_pool_u8`: this function's contract is `max_pool`'s.
    unsafe { max_pool(&*g, x, row, out, i8::MIN, |a, b| a.max(b)) }
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
