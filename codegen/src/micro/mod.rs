//! Microkernels: the inner loops Cranelift cannot reach (512-bit vectors), written in Rust with
//! `std::arch` intrinsics behind runtime CPU-feature dispatch, each with a portable version.
//! Generated code calls them as registered JIT symbols; they never panic on the hot path and only
//! touch the memory their arguments describe. The GEMM, im2col, depthwise and pooling kernels
//! never allocate; the row operations keep one row (or strided lane) of scratch per call.
//!
//! Shared conventions:
//! * Activations are NHWC; a convolution is a GEMM with rows `m = (img, oy, ox)`, columns the
//!   output channels, and reduction index `k = (ky, kx, ci)` (ci fastest).
//! * Packed weights are split into column panels of at most 64 columns (int8) or
//!   [`float::PANEL`] columns (f32 and bf16); the last panel is rounded up to a multiple of 16 columns and
//!   the padding is zero, so a kernel may compute (but never stores beyond `ldc`) padded columns.

use std::collections::TryReserveError;

pub mod bf16;
pub mod dynamic;
pub mod fepilogue;
pub mod float;
pub mod int8;
pub mod layer_norm;
pub mod pool;
pub mod requant;
pub mod rowops;
pub mod transcendental;
pub mod transpose;
pub mod winograd;

/// Geometry of one 2-D convolution over an NHWC input, shared by the im2col and depthwise
/// helpers. `#[repr(C)]` because generated code passes a pointer to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConvGeom {
    /// Input height, width and channel count (all groups; the row stride of a pixel).
    pub h: usize,
    pub w: usize,
    pub c: usize,
    /// Output height and width.
    pub oh: usize,
    pub ow: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    /// Begin pads (the end pads follow from `oh`/`ow`).
    pub ph: usize,
    pub pw: usize,
    pub dh: usize,
    pub dw: usize,
    /// Input channels of the group being gathered, and the first of them.
    pub cin: usize,
    pub cin_offset: usize,
}

impl ConvGeom {
    /// Every field, in declaration order (a key for what is derived from the whole geometry).
    pub(crate) fn fields(&self) -> [usize; 15] {
        let ConvGeom { h, w, c, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, cin, cin_offset } = *self;
        [h, w, c, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, cin, cin_offset]
    }

    /// Length of one im2col row: `kh * kw * cin`.
    pub fn k(&self) -> usize {
        self.kh * self.kw * self.cin
    }

    /// Walks the im2col rows `m0..m0 + rows` an output row at a time: `edge(r, m)` for each row
    /// whose window reaches into the padding (`r` counted from the first of the call, `m` its
    /// row), and `inside(r, first, img_end)` for each row whose window lies inside the image,
    /// `first` the input element of its window's top-left tap (image, row and column, plus
    /// `cin_offset`) and `img_end` the end of its image. The narrow-row im2cols (u8 and f32) copy
    /// whole vectors for the inside rows only.
    #[inline]
    pub(crate) fn walk_windows(
        &self,
        m0: usize,
        rows: usize,
        mut edge: impl FnMut(usize, usize),
        mut inside: impl FnMut(usize, usize, usize),
    ) {
        let img_len = self.h * self.w * self.c;
        let g = self;
        let hw = g.oh * g.ow;
        if hw == 0 || rows == 0 {
            return;
        }
        let sw = g.sw.max(1);
        let span = (g.kh.saturating_sub(1) * g.dh.max(1)) as isize;
        // output columns whose window lies inside the image horizontally:
        // ox * sw >= pw and ox * sw - pw + kw <= w
        let ox_lo = g.pw.div_ceil(sw).min(g.ow);
        let ox_hi = if g.w + g.pw >= g.kw { ((g.w + g.pw - g.kw) / sw + 1).min(g.ow) } else { 0 }.max(ox_lo);
        let mut img = m0 / hw;
        let rem = m0 % hw;
        let (mut oy, mut ox) = (rem / g.ow, rem % g.ow);
        let mut r = 0;
        while r < rows {
            // the rest of this output row, or of the rows asked for
            let run = (g.ow - ox).min(rows - r);
            let iy0 = (oy * g.sh) as isize - g.ph as isize;
            let row_in = iy0 >= 0 && iy0 + span < g.h as isize;
            let (lo, hi) = if row_in {
                let lo = ox_lo.clamp(ox, ox + run);
                (lo, ox_hi.clamp(lo, ox + run))
            } else {
                (ox + run, ox + run)
            };
            for o in (ox..lo).chain(hi..ox + run) {
                edge(r + (o - ox), m0 + r + (o - ox));
            }
            if lo < hi {
                let mut first = img * img_len + g.cin_offset + (iy0 as usize * g.w + lo * sw - g.pw) * g.c;
                for o in lo..hi {
                    inside(r + (o - ox), first, (img + 1) * img_len);
                    first += sw * g.c;
                }
            }
            r += run;
            ox += run;
            if ox == g.ow {
                ox = 0;
                oy += 1;
                if oy == g.oh {
                    oy = 0;
                    img += 1;
                }
            }
        }
    }
}

/// `len` default values in a fallibly allocated vector: packing runs at compile time on sizes
/// that come from the model's weights, so a failed allocation is an error, not an abort.
pub(crate) fn try_zeroed<T: Clone + Default>(len: usize) -> Result<Vec<T>, TryReserveError> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)?;
    v.resize(len, T::default());
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::{float, int8};

    #[test]
    fn packed_sizes_match_the_packers() {
        for (n, k) in
            [(0, 3), (1, 1), (15, 3), (16, 4), (17, 5), (64, 9), (65, 100), (130, 7), (3, 48), (8, 100), (8, 47)]
        {
            let i8p = int8::pack_weights_i8(&[], n, k).unwrap();
            assert_eq!(int8::packed_bytes(n, k), i8p.data.len() as u128, "i8 {n}x{k}");
            let f32p = float::pack_weights_f32(&[], n, k).unwrap();
            assert_eq!(float::packed_bytes(n, k), 4 * f32p.data.len() as u128, "f32 {n}x{k}");
            let dw = int8::pack_depthwise_i8(&[], n, 3, k).unwrap();
            assert_eq!(int8::packed_dw_bytes(n, 3, k), dw.data.len() as u128, "dw i8 {n}x{k}");
            let dwf = float::pack_depthwise_f32(&[], n, 3, k).unwrap();
            assert_eq!(float::packed_dw_bytes(n, 3, k), 4 * dwf.data.len() as u128, "dw f32 {n}x{k}");
        }
    }
}
