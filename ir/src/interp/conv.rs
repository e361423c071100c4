//! Direct convolution (float, and the integer kernels of [`super::quant`]).
//!
//! One loop nest serves every element type: for each output channel plane, for each input channel
//! of its group and each kernel tap, the weight is hoisted and
//! `out[oh][ow] += w * in[ih][iw]` runs over a contiguous stretch of the output row (a plain
//! slice zip when the width stride is 1), which LLVM vectorizes. Each output element therefore
//! accumulates its terms in plain order: input channel, then kernel depth, rows, columns.
//! The float bias is added after the accumulation. Zero padding is implicit: taps that fall
//! outside the input are skipped. 1-D and 3-D convolutions run through the same nest (missing
//! spatial dims have size 1).

use super::{float_tensor, floats, Cx, R};
use crate::limits::try_vec;
use crate::{ConvAttrs, ConvTransposeAttrs};
use std::ops::{Add, AddAssign, Mul};

/// The element types the loop nest accumulates in.
pub(crate) trait Acc: Copy + Default + Add<Output = Self> + Mul<Output = Self> + AddAssign {}
impl Acc for f32 {}
impl Acc for f64 {}
impl Acc for i128 {}

/// The geometry of a convolution with up to three spatial dims, all in (d, h, w) order.
#[derive(Clone, Debug)]
pub(crate) struct Geom {
    pub n: usize,
    pub c: usize,
    pub m: usize,
    pub group: usize,
    pub input: [usize; 3],
    pub output: [usize; 3],
    pub kernel: [usize; 3],
    pub strides: [usize; 3],
    /// Begin pads (end pads only shape the output, which is given).
    pub pads: [usize; 3],
    pub dilations: [usize; 3],
}

impl Geom {
    /// The geometry of `x` (N, C, spatial...) convolved with a weight of `w_shape` into `y_shape`.
    pub fn new(a: &ConvAttrs, x_shape: &[usize], w_shape: &[usize], y_shape: &[usize]) -> R<Geom> {
        let r = x_shape.len();
        if r < 3 || w_shape.len() != r || y_shape.len() != r {
            return Err(format!("conv needs matching ranks of 3 or more, got {x_shape:?}, {w_shape:?}"));
        }
        let sp = r - 2;
        if sp > 3 {
            return Err(format!("{sp}-D convolution is not supported (at most 3 spatial dims)"));
        }
        if a.kernel.len() != sp || a.strides.len() != sp || a.dilations.len() != sp || a.pads.len() != 2 * sp {
            return Err("conv attributes do not fit the spatial rank".into());
        }
        let pad3 = |v: &[usize], fill: usize| -> [usize; 3] {
            let mut o = [fill; 3];
            o[3 - v.len()..].copy_from_slice(v);
            o
        };
        let g = Geom {
            n: x_shape[0],
            c: x_shape[1],
            m: w_shape[0],
            group: a.group,
            input: pad3(&x_shape[2..], 1),
            output: pad3(&y_shape[2..], 1),
            kernel: pad3(&w_shape[2..], 1),
            strides: pad3(&a.strides, 1),
            pads: pad3(&a.pads[..sp], 0),
            dilations: pad3(&a.dilations, 1),
        };
        if g.group == 0
            || (g.c / g.group) * g.group != g.c
            || (g.m / g.group) * g.group != g.m
            || w_shape[1] * g.group != g.c
        {
            return Err(format!("{} input channels, weight {w_shape:?} and group {} do not fit", g.c, g.group));
        }
        if g.strides.contains(&0) || g.dilations.contains(&0) {
            return Err("strides and dilations must be positive".into());
        }
        Ok(g)
    }

    /// Input channels per group times the kernel size: the length of one dot product.
    pub fn reduction_len(&self) -> usize {
        (self.c / self.group.max(1)) * self.kernel.iter().product::<usize>()
    }

    fn out_plane(&self) -> usize {
        self.output.iter().product()
    }
}

/// The range of output positions `o` in `0..out` whose input position `o * s + k * d - p` lies in
/// `0..n`, and the input position of the first one.
#[inline]
fn valid_range(out: usize, n: usize, s: usize, k: usize, d: usize, p: usize) -> (usize, usize, isize) {
    let off = (k * d) as isize - p as isize;
    // first o with o*s + off >= 0
    let lo = if off >= 0 { 0 } else { ((-off) as usize).div_ceil(s) };
    // first o with o*s + off >= n
    let hi = (if off >= n as isize { 0 } else { (n as isize - off) as usize }).div_ceil(s);
    let hi = hi.min(out);
    let lo = lo.min(hi);
    (lo, hi, lo as isize * s as isize + off)
}

/// `y[n][m][...] = sum over c of its group and the kernel of w[m][c][...] * x[n][c][...]`, with
/// zero padding, each operand widened to `T` and accumulated in `T` in plain order. `x` is (N, C, D, H, W) and `w` is
/// (M, C/group, KD, KH, KW), both row-major.
pub(crate) fn direct_conv<X: Copy, T: Acc + From<X>>(x: &[X], w: &[X], g: &Geom) -> R<Vec<T>> {
    let [id, ih, iw] = g.input;
    let [od, oh, ow] = g.output;
    let [kd, kh, kw] = g.kernel;
    let [sd, sh, sw] = g.strides;
    let [pd, ph, pw] = g.pads;
    let [dd, dh, dw] = g.dilations;
    let cg = g.c / g.group;
    let mg = g.m / g.group;
    let in_plane = id * ih * iw;
    let out_plane = g.out_plane();
    let ksize = kd * kh * kw;
    let expect_x = g.n.checked_mul(g.c).and_then(|v| v.checked_mul(in_plane));
    let expect_w = g.m.checked_mul(cg).and_then(|v| v.checked_mul(ksize));
    if expect_x != Some(x.len()) || expect_w != Some(w.len()) {
        return Err("internal: conv operand sizes do not match the geometry".into());
    }
    let total = g.n.checked_mul(g.m).and_then(|v| v.checked_mul(out_plane)).ok_or("result too large")?;
    let mut out = vec![T::default(); total];
    if total == 0 {
        return Ok(out);
    }
    for b in 0..g.n {
        for gi in 0..g.group {
            for mo in 0..mg {
                let mm = gi * mg + mo;
                let o_plane = &mut out[(b * g.m + mm) * out_plane..][..out_plane];
                for ci in 0..cg {
                    let cc = gi * cg + ci;
                    let x_plane = &x[(b * g.c + cc) * in_plane..][..in_plane];
                    let w_taps = &w[(mm * cg + ci) * ksize..][..ksize];
                    for a in 0..kd {
                        let (dz_lo, dz_hi, dz0) = valid_range(od, id, sd, a, dd, pd);
                        for bk in 0..kh {
                            let (y_lo, y_hi, y0) = valid_range(oh, ih, sh, bk, dh, ph);
                            for ck in 0..kw {
                                let wv = T::from(w_taps[(a * kh + bk) * kw + ck]);
                                let (x_lo, x_hi, x0) = valid_range(ow, iw, sw, ck, dw, pw);
                                let len = x_hi - x_lo;
                                if len == 0 {
                                    continue;
                                }
                                let x0 = x0 as usize;
                                for (zi, oz) in (dz_lo..dz_hi).enumerate() {
                                    let iz = dz0 as usize + zi * sd;
                                    for (yi, oy) in (y_lo..y_hi).enumerate() {
                                        let iy = y0 as usize + yi * sh;
                                        let x_row = &x_plane[(iz * ih + iy) * iw..][..iw];
                                        let o_row = &mut o_plane[(oz * oh + oy) * ow..][..ow];
                                        if sw == 1 {
                                            for (o, &xv) in o_row[x_lo..x_hi].iter_mut().zip(&x_row[x0..x0 + len]) {
                                                *o += wv * T::from(xv);
                                            }
                                        } else {
                                            for (j, o) in o_row[x_lo..x_hi].iter_mut().enumerate() {
                                                *o += wv * T::from(x_row[x0 + j * sw]);
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Float convolution: `x, w, [b]`, f16/bf16 widened to f32 and the result rounded once.
pub(crate) fn conv(cx: &Cx, a: &ConvAttrs) -> R<crate::Tensor> {
    let (x, w) = (cx.x(0)?, cx.x(1)?);
    let y_shape = cx.out_shape(0);
    let g = Geom::new(a, x.shape(), w.shape(), &y_shape)?;
    let mut y: Vec<f32> = direct_conv(&floats(x), &floats(w), &g)?;
    if let Some(b) = cx.opt(2) {
        let b = floats(b);
        if b.len() != g.m {
            return Err(format!("bias has {} elements for {} output channels", b.len(), g.m));
        }
        let plane = g.out_plane();
        if plane > 0 {
            for (i, chunk) in y.chunks_mut(plane).enumerate() {
                let bv = b[i % g.m];
                for v in chunk {
                    *v += bv;
                }
            }
        }
    }
    float_tensor(cx.out_dtype(0), y_shape, y)
}

/// The weight gradient of a float convolution ([`crate::Op::ConvWeightGrad`]): `x, dy` -> `dw`
/// of shape (M, C/group, kernel...) with
/// `dw[m][c][k] = sum over n, o of dy[n][m][o] * x[n][g*cg + c][o * stride + k * dilation - pad_begin]`
/// (zero padding: taps outside `x` read as zero). f16/bf16 are widened to f32 and each weight
/// element accumulated in f32 and rounded once. Computed as im2col and a matrix product per
/// sample (as Caffe's and PyTorch's CPU backward do): for sample `n`, the columns
/// `col[(c, k)][o]` (the input element under tap `k` at output position `o`, zero in the padding)
/// and `dw[m][(c, k)] += dot(dy[n][m][..], col[(c, k)][..])`, each dot product over the output
/// positions in eight interleaved partial sums (so it vectorizes), added in order at the end;
/// samples in order. The order of the additions is therefore not the direct loop's: results
/// agree with it to f32 rounding, not bit for bit.
pub(crate) fn conv_weight_grad(cx: &Cx, a: &ConvAttrs) -> R<crate::Tensor> {
    let (x, dy) = (cx.x(0)?, cx.x(1)?);
    let w_shape = cx.out_shape(0);
    let g = Geom::new(a, x.shape(), &w_shape, dy.shape())?;
    let (xv, dv) = (floats(x), floats(dy));
    let [id, ih, iw] = g.input;
    let [od, oh, ow] = g.output;
    let [kd, kh, kw] = g.kernel;
    let [sd, sh, sw] = g.strides;
    let [pd, ph, pw] = g.pads;
    let [dd, dh, dw] = g.dilations;
    let (cg, mg) = (g.c / g.group, g.m / g.group);
    let (in_plane, out_plane, ksize) = (id * ih * iw, g.out_plane(), kd * kh * kw);
    if g.n.checked_mul(g.c).and_then(|v| v.checked_mul(in_plane)) != Some(xv.len())
        || g.n.checked_mul(g.m).and_then(|v| v.checked_mul(out_plane)) != Some(dv.len())
    {
        return Err("internal: conv_weight_grad operand sizes do not match the geometry".into());
    }
    let rows = cg.checked_mul(ksize).ok_or("result too large")?;
    let total = g.m.checked_mul(rows).ok_or("result too large")?;
    let mut out: Vec<f32> = try_vec(total)?;
    out.resize(total, 0.0);
    let mut col: Vec<f32> = try_vec(rows.checked_mul(out_plane).ok_or("result too large")?)?;
    col.resize(rows * out_plane, 0.0);
    for b in 0..g.n {
        for grp in 0..g.group {
            // the columns of this sample and group
            for ci in 0..cg {
                let x_plane = &xv[(b * g.c + grp * cg + ci) * in_plane..][..in_plane];
                for tz in 0..kd {
                    for ty in 0..kh {
                        for tx in 0..kw {
                            let r = (ci * kd + tz) * kh * kw + ty * kw + tx;
                            let dst = &mut col[r * out_plane..][..out_plane];
                            dst.fill(0.0);
                            let (z_lo, z_hi, z0) = valid_range(od, id, sd, tz, dd, pd);
                            let (y_lo, y_hi, y0) = valid_range(oh, ih, sh, ty, dh, ph);
                            let (x_lo, x_hi, x0) = valid_range(ow, iw, sw, tx, dw, pw);
                            for (zi, oz) in (z_lo..z_hi).enumerate() {
                                let iz = z0 as usize + zi * sd;
                                for (yi, oy) in (y_lo..y_hi).enumerate() {
                                    let iy = y0 as usize + yi * sh;
                                    let x_row = &x_plane[(iz * ih + iy) * iw..][..iw];
                                    let d_row = &mut dst[(oz * oh + oy) * ow..][..ow];
                                    for (j, o) in d_row[x_lo..x_hi].iter_mut().enumerate() {
                                        *o = x_row[x0 as usize + j * sw];
                                    }
                                }
                            }
                        }
                    }
                }
            }
            for m in 0..mg {
                let mm = grp * mg + m;
                let d_plane = &dv[(b * g.m + mm) * out_plane..][..out_plane];
                let acc = &mut out[mm * rows..][..rows];
                for (r, a) in acc.iter_mut().enumerate() {
                    *a += dot8(d_plane, &col[r * out_plane..][..out_plane]);
                }
            }
        }
    }
    float_tensor(cx.out_dtype(0), w_shape, out)
}

/// `sum a[i] * b[i]` in eight interleaved partial sums (lane `i % 8`), added in lane order, then
/// the tail in order.
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            lanes[k] += x[k] * y[k];
        }
    }
    let mut s = lanes.iter().sum::<f32>();
    for (x, y) in ta.iter().zip(tb) {
        s += x * y;
    }
    s
}

/// Float transposed convolution (ONNX ConvTranspose): `x, w, [b]` with `w` of shape
/// (C, M/group, kernel...). Every input element scatters into the output:
/// `y[n][g*mg + m][o] += x[n][g*cg + c][i] * w[g*cg + c][m][k]` where, per spatial dim,
/// `o = i * stride + k * dilation - pad_begin`, skipped when outside the output. Accumulates in f32,
/// in the order input channel, input position, kernel tap; the bias is added last. Any number of
/// spatial dims.
pub(crate) fn conv_transpose(cx: &Cx, a: &ConvTransposeAttrs) -> R<crate::Tensor> {
    let (x, w) = (cx.x(0)?, cx.x(1)?);
    let (xs, ws) = (x.shape(), w.shape());
    let ys = cx.out_shape(0);
    let r = xs.len();
    if r < 3 || ws.len() != r || ys.len() != r {
        return Err(format!("conv_transpose needs matching ranks of 3 or more, got {xs:?}, {ws:?}"));
    }
    let sp = r - 2;
    if a.strides.len() != sp || a.dilations.len() != sp || a.pads.len() != 2 * sp {
        return Err("conv_transpose attributes do not fit the spatial rank".into());
    }
    let (n, c, group) = (xs[0], xs[1], a.group);
    if group == 0 || c % group != 0 || ws[0] != c {
        return Err(format!("{c} input channels, weight {ws:?} and group {group} do not fit"));
    }
    let (cg, mg) = (c / group, ws[1]);
    let m = mg * group;
    let in_sp = &xs[2..];
    let out_sp = &ys[2..];
    let k_sp = &ws[2..];
    let in_plane: usize = in_sp.iter().product();
    let out_plane: usize = out_sp.iter().product();
    let ksize: usize = k_sp.iter().product();
    let xv = floats(x);
    let wv = floats(w);
    let total = n.checked_mul(m).and_then(|v| v.checked_mul(out_plane)).ok_or("result too large")?;
    let mut y: Vec<f32> = try_vec(total)?;
    y.resize(total, 0.0);
    // For each kernel tap and input position: the output offset within the plane, if inside.
    let unravel = |mut i: usize, dims: &[usize]| -> Vec<usize> {
        let mut idx = vec![0; dims.len()];
        for d in (0..dims.len()).rev() {
            idx[d] = i % dims[d].max(1);
            i /= dims[d].max(1);
        }
        idx
    };
    let mut targets: Vec<Option<usize>> = try_vec(in_plane.saturating_mul(ksize))?;
    for ip in 0..in_plane {
        let ii = unravel(ip, in_sp);
        for kp in 0..ksize {
            let kk = unravel(kp, k_sp);
            let mut off = 0usize;
            let mut inside = true;
            for d in 0..sp {
                let o = ii[d] as i64 * a.strides[d] as i64 + kk[d] as i64 * a.dilations[d] as i64 - a.pads[d];
                if o < 0 || o >= out_sp[d] as i64 {
                    inside = false;
                    break;
                }
                off = off * out_sp[d] + o as usize;
            }
            targets.push(inside.then_some(off));
        }
    }
    for b in 0..n {
        for g in 0..group {
            for mo in 0..mg {
                let mm = g * mg + mo;
                let y_plane = &mut y[(b * m + mm) * out_plane..][..out_plane];
                for ci in 0..cg {
                    let cc = g * cg + ci;
                    let x_plane = &xv[(b * c + cc) * in_plane..][..in_plane];
                    let taps = &wv[(cc * mg + mo) * ksize..][..ksize];
                    for (ip, &xe) in x_plane.iter().enumerate() {
                        for (kp, &we) in taps.iter().enumerate() {
                            if let Some(o) = targets[ip * ksize + kp] {
                                y_plane[o] += xe * we;
                            }
                        }
                    }
                }
            }
        }
    }
    if let Some(bias) = cx.opt(2) {
        let bv = floats(bias);
        if bv.len() != m {
            return Err(format!("bias has {} elements for {m} output channels", bv.len()));
        }
        if out_plane > 0 {
            for (i, plane) in y.chunks_mut(out_plane).enumerate() {
                let add = bv[i % m];
                for v in plane {
                    *v += add;
                }
            }
        }
    }
    float_tensor(cx.out_dtype(0), ys, y)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::{DType, Op, Tensor};

    /// The textbook 7-loop 2-D convolution, indexing everything explicitly, in f64.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        x: &[f32],
        xs: [usize; 4],
        w: &[f32],
        ws: [usize; 4],
        b: Option<&[f32]>,
        stride: [usize; 2],
        pads: [usize; 4],
        dil: [usize; 2],
        group: usize,
    ) -> (Vec<f32>, [usize; 4]) {
        let [n, c, h, wd] = xs;
        let [m, cg, kh, kw] = ws;
        let oh = (h + pads[0] + pads[2] - (dil[0] * (kh - 1) + 1)) / stride[0] + 1;
        let ow = (wd + pads[1] + pads[3] - (dil[1] * (kw - 1) + 1)) / stride[1] + 1;
        let mg = m / group;
        let mut y = vec![0f32; n * m * oh * ow];
        for bi in 0..n {
            for mi in 0..m {
                let gi = mi / mg;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = b.map_or(0.0, |b| b[mi] as f64);
                        for ci in 0..cg {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * stride[0] + ky * dil[0]) as isize - pads[0] as isize;
                                    let ix = (ox * stride[1] + kx * dil[1]) as isize - pads[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                        continue;
                                    }
                                    let xv = x[((bi * c + gi * cg + ci) * h + iy as usize) * wd + ix as usize];
                                    let wv = w[((mi * cg + ci) * kh + ky) * kw + kx];
                                    s += xv as f64 * wv as f64;
                                }
                            }
                        }
                        y[((bi * m + mi) * oh + oy) * ow + ox] = s as f32;
                    }
                }
            }
        }
        (y, [n, m, oh, ow])
    }

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn check(xs: [usize; 4], ws: [usize; 4], stride: [usize; 2], pads: [usize; 4], dil: [usize; 2], group: usize) {
        let x = pseudo(xs.iter().product(), 1);
        let w = pseudo(ws.iter().product(), 2);
        let b = pseudo(ws[0], 3);
        let (want, ys) = naive(&x, xs, &w, ws, Some(&b), stride, pads, dil, group);
        let attrs = ConvAttrs {
            kernel: ws[2..].to_vec(),
            strides: stride.to_vec(),
            pads: pads.to_vec(),
            dilations: dil.to_vec(),
            group,
        };
        let got = eval1(&Op::Conv(attrs), &[&f32t(&xs, &x), &f32t(&ws, &w), &f32t(&[ws[0]], &b)]).unwrap();
        assert_eq!(got.shape(), &ys);
        assert_close(got.as_f32().unwrap(), &want, 1e-5);
    }

    #[test]
    fn matches_the_naive_reference() {
        check([1, 1, 5, 5], [1, 1, 3, 3], [1, 1], [0, 0, 0, 0], [1, 1], 1);
        check([2, 3, 7, 6], [4, 3, 3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 1);
        check([1, 2, 9, 8], [3, 2, 3, 2], [2, 3], [1, 2, 0, 1], [1, 1], 1);
        check([1, 2, 9, 9], [2, 2, 3, 3], [1, 1], [2, 2, 2, 2], [2, 2], 1);
        check([1, 2, 10, 11], [2, 2, 3, 3], [2, 2], [3, 1, 2, 3], [3, 2], 1);
        check([2, 4, 6, 6], [6, 2, 3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 2);
        // depthwise, with a channel multiplier of 2, strided
        check([1, 3, 8, 7], [6, 1, 3, 3], [2, 2], [1, 1, 1, 1], [1, 1], 3);
        check([1, 4, 5, 5], [4, 1, 5, 5], [1, 1], [2, 2, 2, 2], [1, 1], 4);
        // kernel wider than the unpadded input
        check([1, 1, 2, 2], [1, 1, 3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 1);
    }

    /// `conv_weight_grad` is the adjoint of the convolution in its weight: for any `dy`,
    /// `<conv(x, w), dy> = <w, conv_weight_grad(x, dy)>` (the convolution is linear in `w`).
    #[test]
    fn weight_gradient_is_the_adjoint_in_the_weight() {
        // (x, w, strides, pads, dilations, group)
        type Geometry = ([usize; 4], [usize; 4], [usize; 2], [usize; 4], [usize; 2], usize);
        let cases: [Geometry; 4] = [
            ([2, 3, 7, 6], [4, 3, 3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 1),
            ([1, 2, 9, 8], [3, 2, 3, 2], [2, 3], [1, 2, 0, 1], [1, 1], 1),
            ([1, 2, 10, 11], [2, 2, 3, 3], [2, 2], [3, 1, 2, 3], [3, 2], 1),
            ([2, 4, 6, 6], [6, 2, 3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 2),
        ];
        for (xs, ws, stride, pads, dil, group) in cases {
            let x = pseudo(xs.iter().product(), 4);
            let w = pseudo(ws.iter().product(), 5);
            let (y, ys) = naive(&x, xs, &w, ws, None, stride, pads, dil, group);
            let dy = pseudo(y.len(), 6);
            let attrs = ConvAttrs {
                kernel: ws[2..].to_vec(),
                strides: stride.to_vec(),
                pads: pads.to_vec(),
                dilations: dil.to_vec(),
                group,
            };
            let dw = eval1(&Op::ConvWeightGrad(attrs), &[&f32t(&xs, &x), &f32t(&ys, &dy)]).unwrap();
            assert_eq!(dw.shape(), &ws);
            let lhs: f64 = y.iter().zip(&dy).map(|(&a, &b)| a as f64 * b as f64).sum();
            let rhs: f64 = w.iter().zip(dw.as_f32().unwrap()).map(|(&a, &b)| a as f64 * b as f64).sum();
            assert!((lhs - rhs).abs() <= 1e-4 * lhs.abs().max(1.0), "{lhs} vs {rhs}");
        }
    }

    #[test]
    fn one_dimensional_and_no_bias() {
        let attrs = ConvAttrs { kernel: vec![2], strides: vec![1], pads: vec![1, 0], dilations: vec![1], group: 1 };
        let x = f32t(&[1, 1, 3], &[1.0, 2.0, 3.0]);
        let w = f32t(&[1, 1, 2], &[10.0, 1.0]);
        let y = eval1(&Op::Conv(attrs), &[&x, &w]).unwrap();
        assert_eq!(y.shape(), &[1, 1, 3]);
        assert_eq!(y.as_f32().unwrap(), &[1.0, 12.0, 23.0]);
    }

    #[test]
    fn f16_rounds_the_result_once() {
        let attrs =
            ConvAttrs { kernel: vec![1, 1], strides: vec![1, 1], pads: vec![0; 4], dilations: vec![1, 1], group: 1 };
        // 1 + 2^-11 + 2^-11: each partial sum is not representable in f16, the f32 total is.
        let x = Tensor::from_f32_slice(DType::F16, vec![1, 3, 1, 1], &[1.0, 0.00048828125, 0.00048828125]);
        let w = Tensor::from_f32_slice(DType::F16, vec![1, 3, 1, 1], &[1.0, 1.0, 1.0]);
        let y = eval1(&Op::Conv(attrs), &[&x, &w]).unwrap();
        assert_eq!(y.dtype(), DType::F16);
        assert_eq!(y.to_f32_vec(), vec![1.0 + 1.0 / 1024.0]);
    }
}
