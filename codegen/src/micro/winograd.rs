//! Winograd F(2x2, 3x3) for f32 3x3 convolutions of stride 1, dilation 1 and one group (Lavin &
//! Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016, section 4.1; the
//! transforms NCNN, XNNPACK, TVM and oneDNN use for this tile size). Each 2x2 block of output
//! pixels reads a 4x4 input tile `d` (tiles overlap by 2); with the weights transformed once at
//! compile time, `U = G g G^T` (4x4 per output and input channel), the tile's result is
//! `Y = A^T [ sum_c U[k][c] .* (B^T d_c B) ] A`: 16 multiplies per tile, channel pair and
//! position instead of 36, 2.25x fewer. The 16 positions' sums over input channels are 16
//! independent GEMMs `[tiles x C] x [C x K]`, computed by the f32 GEMM microkernel over weights
//! packed as its panels ([`super::float::pack_weights_f32`]).
//!
//! Numerics (the float-order contract): the result differs from the direct convolution's by
//! rounding only. The weight transform is computed in f64 and rounded once to f32. The input
//! transform `V = B^T d B` and the output transform `Y = A^T M A` are sums and differences of
//! f32 values evaluated left to right in the order written in [`input_tile_scalar`] and
//! [`output_tile_scalar`] (first down the tile's columns, then across its rows); every position's product
//! `M = V . U` is the GEMM microkernel's `acc = fma(v, u, acc)` over channels `0..C` in order. The
//! SIMD and scalar versions compute the same operations in the same order, so they agree bit for
//! bit. The transforms' coefficients are 0, +-1 and +-1/2, so each result carries a few more
//! roundings than a direct sum; measured, ResNet-18's output stays within 2.7e-6 of the
//! interpreter's largest magnitude (the float oracle allows 1e-5).
//!
//! Work: a unit is a block of `rpu` tile rows of one image (a contiguous run of output pixel
//! rows, so its result is one tile of `rows x K` the float epilogue stores) and a range of weight
//! panels (all of them unless threads need more units); its scratch holds
//! that tile, the transformed input `V[16][tiles][cp]`, the products `M[16][tiles][kp]` and one
//! row of zeros for the padding.

#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]

use super::float::{panel_offset, panel_width, GemmF32, PackedF32, PANEL};
use super::{try_zeroed, ConvGeom};
use std::collections::TryReserveError;

/// The tiles a unit aims at: enough rows for the GEMM's 12-row register blocks to run full,
/// few enough that a unit's transformed input and products stay near the core's L2.
const TILES_PER_UNIT: usize = 64;

/// Rounds up to a multiple of 16 (one zmm of f32).
#[inline]
const fn round_up_16(x: usize) -> usize {
    (x + 15) & !15
}

/// A 3x3 stride-1 convolution planned for Winograd F(2x2, 3x3).
#[derive(Debug)]
pub struct WinogradF32 {
    /// Input `h, w, c`, output `oh, ow`, begin pads `ph, pw` (the kernel is 3x3, stride and
    /// dilation 1, one group).
    pub geom: ConvGeom,
    /// Output channels.
    pub k: usize,
    /// Tiles per tile row and tile rows per image.
    pub tw: usize,
    pub th: usize,
    /// Tile rows per unit.
    pub rpu: usize,
    /// The transformed weights, one `[K x C]` GEMM operand per position `(i, j)` of the 4x4
    /// tile, at index `4 * i + j`.
    pub u: Vec<PackedF32>,
    gemm: GemmF32,
}

/// The Winograd weight transform `G g G^T` of one 3x3 kernel in f64 (Lavin & Gray's `G`:
/// rows `[1, 0, 0]`, `[1/2, 1/2, 1/2]`, `[1/2, -1/2, 1/2]`, `[0, 0, 1]`).
fn weight_tile(g: &[f32]) -> [f64; 16] {
    const G: [[f64; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];
    let mut gg = [[0.0f64; 3]; 4];
    for i in 0..4 {
        for j in 0..3 {
            gg[i][j] = (0..3).map(|t| G[i][t] * g[t * 3 + j] as f64).sum();
        }
    }
    let mut u = [0.0f64; 16];
    for i in 0..4 {
        for j in 0..4 {
            u[i * 4 + j] = (0..3).map(|t| gg[i][t] * G[j][t]).sum();
        }
    }
    u
}

/// Bytes of the transformed, packed weights for `k` output and `c` input channels.
pub fn packed_bytes(k: usize, c: usize) -> u128 {
    16 * super::float::packed_bytes(k, c)
}

/// Whether the Winograd kernels' fast path runs on this CPU: the f32 GEMM's native version and
/// vector transforms, 512-bit (AVX-512F and FMA) or 256-bit (AVX2 and FMA).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("fma")
            && (std::is_x86_feature_detected!("avx512f") || std::is_x86_feature_detected!("avx2"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl WinogradF32 {
    /// Plans the convolution `geom` (3x3, stride 1, dilation 1, one group) with weights
    /// `w[k][c][3][3]`, transforming and packing them.
    pub fn new(w: &[f32], k: usize, geom: ConvGeom) -> Result<WinogradF32, TryReserveError> {
        let c = geom.c;
        let mut u = Vec::new();
        u.try_reserve_exact(16)?;
        let mut mats: Vec<Vec<f32>> = Vec::new();
        mats.try_reserve_exact(16)?;
        for _ in 0..16 {
            mats.push(try_zeroed(k * c)?);
        }
        for o in 0..k {
            for ci in 0..c {
                let base = (o * c + ci) * 9;
                let g = w.get(base..base + 9).unwrap_or(&[0.0; 9]);
                let t = weight_tile(g);
                for (pos, m) in mats.iter_mut().enumerate() {
                    m[o * c + ci] = t[pos] as f32;
                }
            }
        }
        for m in &mats {
            u.push(super::float::pack_weights_f32(m, k, c)?);
        }
        let (tw, th) = (geom.ow.div_ceil(2), geom.oh.div_ceil(2));
        let rpu = TILES_PER_UNIT.div_ceil(tw.max(1)).clamp(1, th.max(1));
        Ok(WinogradF32 { geom, k, tw, th, rpu, u, gemm: super::float::gemm_f32_best().0 })
    }

    /// Units per image (blocks of [`Self::rpu`] tile rows).
    pub fn blocks(&self) -> usize {
        self.th.div_ceil(self.rpu)
    }

    /// Weight panels ([`PANEL`] output channels each, the last one shorter).
    pub fn panels(&self) -> usize {
        self.k.div_ceil(PANEL)
    }

    /// Output pixel rows (`ow` pixels each) of a unit at most.
    pub fn rows_per_unit(&self) -> usize {
        2 * self.rpu
    }

    /// Row stride (floats) of a unit's result tile at the start of the scratch.
    pub fn tile_ld(&self) -> usize {
        round_up_16(self.k)
    }

    /// Scratch floats one unit needs: its result tile, `V`, `M` and a row of zeros.
    pub fn scratch_floats(&self) -> usize {
        let t = self.rpu * self.tw;
        let (cp, kp) = (round_up_16(self.geom.c), round_up_16(self.k));
        2 * self.rpu * self.geom.ow * kp + 16 * t * cp + 16 * t * kp + cp
    }
}

/// The input transform `B^T d B` of one tile for channels `0..n` (Lavin & Gray's `B^T`: rows
/// `[1, 0, -1, 0]`, `[0, 1, 1, 0]`, `[0, -1, 1, 0]`, `[0, 1, 0, -1]`), rows first:
/// `t0 = d0 - d2, t1 = d1 + d2, t2 = d2 - d1, t3 = d1 - d3` down each column, then the same
/// across each row of `t`. `src[4*i + j]` is the input pixel at tile position `(i, j)` (a row of
/// zeros for the padding); position `p` is stored at `dst + p * stride`.
///
/// # Safety
/// Each `src` pointer is readable for `n` floats; `dst` is writable for 16 rows of `n` floats at
/// stride `stride`.
#[inline(always)]
unsafe fn input_tile_scalar(src: &[*const f32; 16], n: usize, dst: *mut f32, stride: usize) {
    // SAFETY: the caller guarantees the ranges; every access is at a channel below `n`.
    unsafe {
        for ch in 0..n {
            let d = |p: usize| *src[p].add(ch);
            let mut t = [0.0f32; 16];
            for j in 0..4 {
                let (d0, d1, d2, d3) = (d(j), d(4 + j), d(8 + j), d(12 + j));
                t[j] = d0 - d2;
                t[4 + j] = d1 + d2;
                t[8 + j] = d2 - d1;
                t[12 + j] = d1 - d3;
            }
            for i in 0..4 {
                let (t0, t1, t2, t3) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
                *dst.add((4 * i) * stride + ch) = t0 - t2;
                *dst.add((4 * i + 1) * stride + ch) = t1 + t2;
                *dst.add((4 * i + 2) * stride + ch) = t2 - t1;
                *dst.add((4 * i + 3) * stride + ch) = t1 - t3;
            }
        }
    }
}

/// The output transform `A^T m A` of one tile for channels `0..n` (`A^T`: rows `[1, 1, 1, 0]`,
/// `[0, 1, -1, -1]`), rows first: `s0 = (m0 + m1) + m2, s1 = (m1 - m2) - m3` down each column,
/// then the same across each row of `s`. `src + p * stride` is position `p`; `dst[2*a + b]` is
/// output pixel `(a, b)`, or null when it lies outside the image.
///
/// # Safety
/// `src` is readable for 16 rows of `n` floats at stride `stride`; each non-null `dst` is
/// writable for `n` floats.
#[inline(always)]
unsafe fn output_tile_scalar(src: *const f32, stride: usize, n: usize, dst: &[*mut f32; 4]) {
    // SAFETY: the caller guarantees the ranges; every access is at a channel below `n`.
    unsafe {
        for ch in 0..n {
            let m = |p: usize| *src.add(p * stride + ch);
            let mut s = [0.0f32; 8];
            for j in 0..4 {
                let (m0, m1, m2, m3) = (m(j), m(4 + j), m(8 + j), m(12 + j));
                s[j] = (m0 + m1) + m2;
                s[4 + j] = (m1 - m2) - m3;
            }
            for a in 0..2 {
                let (s0, s1, s2, s3) = (s[4 * a], s[4 * a + 1], s[4 * a + 2], s[4 * a + 3]);
                let y = [(s0 + s1) + s2, (s1 - s2) - s3];
                for b in 0..2 {
                    let p = dst[2 * a + b];
                    if !p.is_null() {
                        *p.add(ch) = y[b];
                    }
                }
            }
        }
    }
}

/// One unit of the convolution `*p` over the NHWC input `x`: block `block` of tile rows of image
/// `img` and the output channels of weight panels `p0..p1`, leaving the convolution's sums
/// (before any epilogue) for output pixel rows `2 * rpu * block ..` (at most `2 * rpu` rows, `ow`
/// pixels each) and channels `PANEL * p0 .. min(PANEL * p1, k)` at the start of `scratch`,
/// [`WinogradF32::tile_ld`] floats per pixel.
///
/// # Safety
/// `p` is a valid plan whose GEMM runs on this CPU; `x` holds image `img` (`h * w * c` floats
/// from `img * h * w * c`); `p0 < p1 <= ` [`WinogradF32::panels`]; `scratch` is writable for
/// [`WinogradF32::scratch_floats`] floats.
pub unsafe extern "C" fn winograd_f32(
    p: *const WinogradF32,
    x: *const f32,
    img: usize,
    block: usize,
    p0: usize,
    p1: usize,
    scratch: *mut f32,
) {
    // SAFETY: the caller guarantees a valid plan, the image and the scratch size; the offsets
    // below stay inside the scratch's parts (tile, V, M, zeros) and the image's pixels.
    unsafe {
        let p = &*p;
        let g = &p.geom;
        let (c, k, tw) = (g.c, p.k, p.tw);
        let (cp, kp) = (round_up_16(c), round_up_16(k));
        let r0 = block * p.rpu;
        let r1 = (r0 + p.rpu).min(p.th);
        if r0 >= r1 {
            return;
        }
        let tiles = (r1 - r0) * tw;
        let tmax = p.rpu * tw;
        let out = scratch;
        let v = out.add(2 * p.rpu * g.ow * kp);
        let m = v.add(16 * tmax * cp);
        let zeros = m.add(16 * tmax * kp);
        std::ptr::write_bytes(zeros, 0, cp);
        let xi = x.add(img * g.h * g.w * c);
        #[cfg(target_arch = "x86_64")]
        let (wide, narrow) = (std::is_x86_feature_detected!("avx512f"), std::is_x86_feature_detected!("avx2"));
        // input transform: V[pos][tile][ch]
        for tr in r0..r1 {
            for tx in 0..tw {
                let t = (tr - r0) * tw + tx;
                let mut src = [zeros as *const f32; 16];
                for i in 0..4 {
                    let iy = (2 * tr + i) as isize - g.ph as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    for j in 0..4 {
                        let ix = (2 * tx + j) as isize - g.pw as isize;
                        if ix >= 0 && ix < g.w as isize {
                            src[4 * i + j] = xi.add((iy as usize * g.w + ix as usize) * c);
                        }
                    }
                }
                let dst = v.add(t * cp);
                let stride = tmax * cp;
                #[cfg(target_arch = "x86_64")]
                if wide {
                    x86::input_tile512(&src, c, dst, stride);
                    continue;
                } else if narrow {
                    x86::input_tile256(&src, c, dst, stride);
                    continue;
                }
                input_tile_scalar(&src, c, dst, stride);
            }
        }
        // the 16 products M[pos] = V[pos] U[pos], one GEMM per position and weight panel
        for pos in 0..16 {
            let u = &p.u[pos];
            let (a, cm) = (v.add(pos * tmax * cp), m.add(pos * tmax * kp));
            for pn in p0..p1.min(k.div_ceil(PANEL)) {
                let b = u.data.as_ptr().add(panel_offset(pn, c));
                (p.gemm)(a, cp, tiles, b, c, cm.add(pn * PANEL), kp, panel_width(k, pn));
            }
        }
        // output transform into the unit's rows of pixels, for its channels
        let (k0, k1) = ((PANEL * p0).min(k), (PANEL * p1).min(k));
        let oy0 = 2 * r0;
        for tr in r0..r1 {
            for tx in 0..tw {
                let t = (tr - r0) * tw + tx;
                let mut dst = [std::ptr::null_mut::<f32>(); 4];
                for a in 0..2 {
                    for b in 0..2 {
                        let (oy, ox) = (2 * tr + a, 2 * tx + b);
                        if oy < g.oh && ox < g.ow {
                            dst[2 * a + b] = out.add(((oy - oy0) * g.ow + ox) * kp + k0);
                        }
                    }
                }
                let src = m.add(t * kp + k0);
                let stride = tmax * kp;
                #[cfg(target_arch = "x86_64")]
                if wide {
                    x86::output_tile512(src, stride, k1 - k0, &dst);
                    continue;
                } else if narrow {
                    x86::output_tile256(src, stride, k1 - k0, &dst);
                    continue;
                }
                output_tile_scalar(src, stride, k1 - k0, &dst);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The transforms with 512-bit vectors: the scalar versions' operations, sixteen channels at
    //! a time (masked loads and stores for the last ones).
    use std::arch::x86_64::*;

    /// [`super::input_tile_scalar`] with 512-bit vectors.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn input_tile512(src: &[*const f32; 16], n: usize, dst: *mut f32, stride: usize) {
        // SAFETY: as `input_tile_scalar`; masked loads and stores touch channels below `n` only.
        unsafe {
            let mut ch = 0;
            while ch < n {
                let mask: __mmask16 = if n - ch >= 16 { 0xffff } else { (1u16 << (n - ch)) - 1 };
                let d = |p: usize| _mm512_maskz_loadu_ps(mask, src[p].add(ch));
                let mut t = [_mm512_setzero_ps(); 16];
                for j in 0..4 {
                    let (d0, d1, d2, d3) = (d(j), d(4 + j), d(8 + j), d(12 + j));
                    t[j] = _mm512_sub_ps(d0, d2);
                    t[4 + j] = _mm512_add_ps(d1, d2);
                    t[8 + j] = _mm512_sub_ps(d2, d1);
                    t[12 + j] = _mm512_sub_ps(d1, d3);
                }
                for i in 0..4 {
                    let (t0, t1, t2, t3) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
                    _mm512_mask_storeu_ps(dst.add((4 * i) * stride + ch), mask, _mm512_sub_ps(t0, t2));
                    _mm512_mask_storeu_ps(dst.add((4 * i + 1) * stride + ch), mask, _mm512_add_ps(t1, t2));
                    _mm512_mask_storeu_ps(dst.add((4 * i + 2) * stride + ch), mask, _mm512_sub_ps(t2, t1));
                    _mm512_mask_storeu_ps(dst.add((4 * i + 3) * stride + ch), mask, _mm512_sub_ps(t1, t3));
                }
                ch += 16;
            }
        }
    }

    /// [`super::input_tile_scalar`] with 256-bit vectors (AVX2), the last `n % 8` channels by
    /// the scalar version.
    #[target_feature(enable = "avx2")]
    pub unsafe fn input_tile256(src: &[*const f32; 16], n: usize, dst: *mut f32, stride: usize) {
        // SAFETY: as `input_tile_scalar`; whole vectors touch channels `ch..ch + 8 <= n` only, and the
        // scalar version the rest.
        unsafe {
            let mut ch = 0;
            while ch + 8 <= n {
                let d = |p: usize| _mm256_loadu_ps(src[p].add(ch));
                let mut t = [_mm256_setzero_ps(); 16];
                for j in 0..4 {
                    let (d0, d1, d2, d3) = (d(j), d(4 + j), d(8 + j), d(12 + j));
                    t[j] = _mm256_sub_ps(d0, d2);
                    t[4 + j] = _mm256_add_ps(d1, d2);
                    t[8 + j] = _mm256_sub_ps(d2, d1);
                    t[12 + j] = _mm256_sub_ps(d1, d3);
                }
                for i in 0..4 {
                    let (t0, t1, t2, t3) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
                    _mm256_storeu_ps(dst.add((4 * i) * stride + ch), _mm256_sub_ps(t0, t2));
                    _mm256_storeu_ps(dst.add((4 * i + 1) * stride + ch), _mm256_add_ps(t1, t2));
                    _mm256_storeu_ps(dst.add((4 * i + 2) * stride + ch), _mm256_sub_ps(t2, t1));
                    _mm256_storeu_ps(dst.add((4 * i + 3) * stride + ch), _mm256_sub_ps(t1, t3));
                }
                ch += 8;
            }
            if ch < n {
                let rest: [*const f32; 16] = std::array::from_fn(|p| src[p].add(ch));
                super::input_tile_scalar(&rest, n - ch, dst.add(ch), stride);
            }
        }
    }

    /// [`super::output_tile_scalar`] with 256-bit vectors (AVX2), the last `n % 8` channels by
    /// the scalar version.
    #[target_feature(enable = "avx2")]
    pub unsafe fn output_tile256(src: *const f32, stride: usize, n: usize, dst: &[*mut f32; 4]) {
        // SAFETY: as `output_tile_scalar`; whole vectors touch channels `ch..ch + 8 <= n` only, and the
        // scalar version the rest.
        unsafe {
            let mut ch = 0;
            while ch + 8 <= n {
                let m = |p: usize| _mm256_loadu_ps(src.add(p * stride + ch));
                let mut s = [_mm256_setzero_ps(); 8];
                for j in 0..4 {
                    let (m0, m1, m2, m3) = (m(j), m(4 + j), m(8 + j), m(12 + j));
                    s[j] = _mm256_add_ps(_mm256_add_ps(m0, m1), m2);
                    s[4 + j] = _mm256_sub_ps(_mm256_sub_ps(m1, m2), m3);
                }
                for a in 0..2 {
                    let (s0, s1, s2, s3) = (s[4 * a], s[4 * a + 1], s[4 * a + 2], s[4 * a + 3]);
                    let y = [_mm256_add_ps(_mm256_add_ps(s0, s1), s2), _mm256_sub_ps(_mm256_sub_ps(s1, s2), s3)];
                    for b in 0..2 {
                        let p = dst[2 * a + b];
                        if !p.is_null() {
                            _mm256_storeu_ps(p.add(ch), y[b]);
                        }
                    }
                }
                ch += 8;
            }
            if ch < n {
                let rest: [*mut f32; 4] =
                    std::array::from_fn(|i| if dst[i].is_null() { dst[i] } else { dst[i].add(ch) });
                super::output_tile_scalar(src.add(ch), stride, n - ch, &rest);
            }
        }
    }

    /// [`super::output_tile_scalar`] with 512-bit vectors.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn output_tile512(src: *const f32, stride: usize, n: usize, dst: &[*mut f32; 4]) {
        // SAFETY: as `output_tile_scalar`; masked loads and stores touch channels below `n` only.
        unsafe {
            let mut ch = 0;
            while ch < n {
                let mask: __mmask16 = if n - ch >= 16 { 0xffff } else { (1u16 << (n - ch)) - 1 };
                let m = |p: usize| _mm512_maskz_loadu_ps(mask, src.add(p * stride + ch));
                let mut s = [_mm512_setzero_ps(); 8];
                for j in 0..4 {
                    let (m0, m1, m2, m3) = (m(j), m(4 + j), m(8 + j), m(12 + j));
                    s[j] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
                    s[4 + j] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
                }
                for a in 0..2 {
                    let (s0, s1, s2, s3) = (s[4 * a], s[4 * a + 1], s[4 * a + 2], s[4 * a + 3]);
                    let y = [_mm512_add_ps(_mm512_add_ps(s0, s1), s2), _mm512_sub_ps(_mm512_sub_ps(s1, s2), s3)];
                    for b in 0..2 {
                        let p = dst[2 * a + b];
                        if !p.is_null() {
                            _mm512_mask_storeu_ps(p.add(ch), mask, y[b]);
                        }
                    }
                }
                ch += 16;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector transforms (512-bit where this CPU has AVX-512F, 256-bit where it has AVX2)
    /// compute the scalar versions' operations in the same order: equal bit for bit, channel
    /// tails included.
    /// Under `CI=true` a CPU with neither fails it instead of letting it pass having checked
    /// nothing.
    #[test]
    fn vector_transforms_match_the_scalar_ones_bit_for_bit() {
        let ok = available();
        assert!(ok || std::env::var("CI").as_deref() != Ok("true"), "this test needs AVX2 or AVX-512F, and FMA");
        #[cfg(target_arch = "x86_64")]
        for wide in [true, false] {
            let runs =
                if wide { std::is_x86_feature_detected!("avx512f") } else { std::is_x86_feature_detected!("avx2") };
            if runs {
                transforms_match(wide);
            }
        }
    }

    /// [`vector_transforms_match_the_scalar_ones_bit_for_bit`] for the 512-bit (`wide`) or the
    /// 256-bit transforms.
    #[cfg(target_arch = "x86_64")]
    fn transforms_match(wide: bool) {
        for n in [1usize, 7, 8, 9, 15, 16, 17, 40] {
            let src: Vec<Vec<f32>> =
                (0..16).map(|p| (0..n).map(|c| ((p * 31 + c * 7) % 23) as f32 * 0.37 - 4.1).collect()).collect();
            let ptrs: [*const f32; 16] = std::array::from_fn(|p| src[p].as_ptr());
            let (mut a, mut b) = (vec![0.0f32; 16 * n], vec![0.0f32; 16 * n]);
            // SAFETY: 16 rows of `n` floats read, 16 rows of `n` floats written at stride `n`.
            unsafe {
                input_tile_scalar(&ptrs, n, a.as_mut_ptr(), n);
                if wide {
                    x86::input_tile512(&ptrs, n, b.as_mut_ptr(), n);
                } else {
                    x86::input_tile256(&ptrs, n, b.as_mut_ptr(), n);
                }
            }
            assert_eq!(
                a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            let (mut ya, mut yb) = (vec![0.0f32; 4 * n], vec![0.0f32; 4 * n]);
            // SAFETY: 16 rows of `n` floats read at stride `n`, 4 rows of `n` floats written.
            unsafe {
                let da: [*mut f32; 4] = std::array::from_fn(|i| ya.as_mut_ptr().add(i * n));
                let db: [*mut f32; 4] = std::array::from_fn(|i| yb.as_mut_ptr().add(i * n));
                output_tile_scalar(a.as_ptr(), n, n, &da);
                if wide {
                    x86::output_tile512(a.as_ptr(), n, n, &db);
                } else {
                    x86::output_tile256(a.as_ptr(), n, n, &db);
                }
            }
            assert_eq!(
                ya.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                yb.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    /// The Winograd convolution against the direct sum in f64, on odd sizes, padding and channel
    /// counts that leave vector tails (the scalar and 512-bit transforms both, by construction of
    /// `winograd_f32`, on whichever this CPU runs).
    #[test]
    fn winograd_matches_the_direct_convolution() {
        for &(h, w, c, k, pad) in
            &[(5usize, 7usize, 3usize, 5usize, 1usize), (8, 8, 16, 32, 1), (7, 6, 17, 33, 0), (4, 4, 32, 16, 2)]
        {
            let (oh, ow) = (h + 2 * pad - 2, w + 2 * pad - 2);
            let geom = ConvGeom {
                h,
                w,
                c,
                oh,
                ow,
                kh: 3,
                kw: 3,
                sh: 1,
                sw: 1,
                ph: pad,
                pw: pad,
                dh: 1,
                dw: 1,
                cin: c,
                cin_offset: 0,
            };
            let val = |i: usize, s: f32| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * s;
            let x: Vec<f32> = (0..h * w * c).map(|i| val(i, 2.0)).collect();
            let wt: Vec<f32> = (0..k * c * 9).map(|i| val(i + 17, 0.5)).collect();
            let plan = WinogradF32::new(&wt, k, geom).unwrap();
            let mut scratch = vec![0.0f32; plan.scratch_floats()];
            let ld = plan.tile_ld();
            for b in 0..plan.blocks() {
                // SAFETY: a valid plan, one image, the scratch the plan asks for.
                unsafe { winograd_f32(&plan, x.as_ptr(), 0, b, 0, plan.panels(), scratch.as_mut_ptr()) };
                let oy0 = 2 * plan.rpu * b;
                for oy in oy0..(oy0 + plan.rows_per_unit()).min(oh) {
                    for ox in 0..ow {
                        for o in 0..k {
                            let mut acc = 0.0f64;
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (iy, ix) =
                                        ((oy + ky) as isize - pad as isize, (ox + kx) as isize - pad as isize);
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    for ci in 0..c {
                                        let xv = x[(iy as usize * w + ix as usize) * c + ci] as f64;
                                        acc += xv * wt[((o * c + ci) * 3 + ky) * 3 + kx] as f64;
                                    }
                                }
                            }
                            let got = scratch[((oy - oy0) * ow + ox) * ld + o] as f64;
                            assert!(
                                (got - acc).abs() < 1e-5 * (1.0 + acc.abs()) * c as f64,
                                "{h}x{w}x{c}->{k} ({oy},{ox},{o}): {got} vs {acc}"
                            );
                        }
                    }
                }
            }
        }
    }
}
