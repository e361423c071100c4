//! Native kernels for host steps: the convolutions of a training graph. Their weights are runtime
//! values (graph inputs: the parameters being trained), so the lowering cannot pack them when it
//! compiles and leaves them to host steps ([`crate::lower`]'s `host.rs`). Rather than the
//! reference interpreter's loops, a host step of one of these ops runs here, on the f32 GEMM
//! microkernel of [`crate::micro::float`], packing the weights when the step runs:
//!
//! * [`Op::Conv`]: im2col + GEMM per group (a 1x1, stride-1, unpadded convolution reads its
//!   channels-last input in place), `y[row][m] = sum_t col[row][t] * w[m][t]`;
//! * [`Op::ConvTranspose`] (the input gradient of a convolution): GEMM of the input with the
//!   weights into columns, `col[row][(ky, kx, c)] = sum_m x[row][m] * w[m][c][ky][kx]`, then
//!   col2im: each column added to the output pixel its tap reaches;
//! * [`Op::ConvWeightGrad`]: GEMM of the result gradient (rows: output channels; reduction:
//!   every sample's positions) with the im2col of the input, packed a block of rows at a time,
//!   `dw[m][t] = sum_row dy[row][m] * col[row][t]`;
//! * depthwise convolutions (one input and one output channel per group) of all three run as
//!   direct loops over NCHW planes (a GEMM one column wide would waste the microkernel);
//! * [`Op::FakeQuantize`] and [`Op::FakeQuantizeGrad`] with one scale per tensor or per axis: one
//!   pass over runs of elements that share a scale, with the element formula of
//!   [`qforge_ir::numerics::fake_quantize_codes`] and the interpreter's order of the scale
//!   gradient's f64 sums, so these agree with the interpreter bit for bit. ([`Op::ClipGrad`] has no
//!   kernel here: the interpreter's is already one pass over two slices.)
//!
//! Each takes and returns f32 NCHW tensors with two spatial dims and computes what the
//! interpreter computes (the ops' documentation in [`qforge_ir::Op`]) up to the order of the f32
//! sums. The interpreter stays the oracle: the tests compare against it within a bound on the
//! rounding error of the sums. Anything else (other ranks or dtypes) returns `None`, and the
//! interpreter runs the node.
//!
//! Invariants: no panics (every shape is checked against the attributes and the others before
//! any index is computed); every allocation is fallible, and none is larger than an input, the
//! result or an im2col block of at most [`BLOCK_FLOATS`] floats (so the size limit the lowering
//! held the step's tensors to bounds them too); one thread (a host step runs on the executor's
//! thread); deterministic (a fixed order of sums).

use crate::micro::float::{
    gemm_f32_best, im2col_f32, pack_weights_f32, pack_weights_f32_kn, panel_offset, panel_width, PANEL,
};
use crate::micro::{try_zeroed, ConvGeom};
use qforge_ir::numerics::{fake_quantize_codes, fake_quantize_grad_terms};
use qforge_ir::{ConvAttrs, ConvTransposeAttrs, Op, Tensor, TensorType};

/// Rows of one im2col block in the forward and input-gradient GEMMs (the microkernel's
/// suggested row block, see [`crate::micro::float`]).
const BLOCK_ROWS: usize = 72;

/// The most floats of one im2col block of the weight gradient (16 MiB).
pub const BLOCK_FLOATS: usize = 1 << 22;

/// Runs `op` on `args` natively when this module has a kernel for it (see the module
/// documentation), its results of types `out`; `None` when it has none, so the caller runs the
/// interpreter.
pub fn run(op: &Op, args: &[Option<&Tensor>], out: &[TensorType]) -> Option<Result<Vec<Tensor>, String>> {
    if let Op::FakeQuantizeGrad { qmin, qmax } = op {
        let [dx_ty, ds_ty] = out else { return None };
        let (dx_shape, ds_shape) = (dx_ty.shape.as_fixed()?, ds_ty.shape.as_fixed()?);
        let dy = args.first().copied().flatten()?.as_f32()?;
        let fq = FakeQuant::of(args, 1, *qmin, *qmax)?;
        return Some(
            fq.backward(dy).map(|(dx, ds)| vec![Tensor::from_f32(dx_shape, dx), Tensor::from_f32(ds_shape, ds)]),
        );
    }
    let [out] = out else { return None };
    let out_shape = out.shape.as_fixed()?;
    let one = |r: Result<Vec<f32>, String>, shape: Vec<usize>| Some(r.map(|v| vec![Tensor::from_f32(shape, v)]));
    let f = |i: usize| args.get(i).copied().flatten().and_then(Tensor::as_f32);
    let shape = |i: usize| args.get(i).copied().flatten().map(Tensor::shape);
    let bias = |i: usize| match args.get(i).copied().flatten() {
        Some(b) => b.as_f32().map(Some),
        None => Some(None),
    };
    match op {
        Op::Conv(a) => {
            let (x, w, b) = (f(0)?, f(1)?, bias(2)?);
            let g = Geometry::of_conv(a, shape(0)?, shape(1)?, &out_shape)?;
            one(g.forward(x, w, b), out_shape)
        }
        Op::ConvWeightGrad(a) => {
            let (x, dy) = (f(0)?, f(1)?);
            let g = Geometry::of_conv(a, shape(0)?, &out_shape, shape(1)?)?;
            one(g.weight_grad(x, dy, BLOCK_FLOATS), out_shape)
        }
        Op::ConvTranspose(a) => {
            let (x, w, b) = (f(0)?, f(1)?, bias(2)?);
            let g = Geometry::of_transpose(a, shape(0)?, shape(1)?, &out_shape)?;
            one(g.input_grad(x, w, b), out_shape)
        }
        Op::FakeQuantize { qmin, qmax } => one(FakeQuant::of(args, 0, *qmin, *qmax)?.forward(), out_shape),
        _ => None,
    }
}

/// A fake quantization's operands: `x`, and a scale and zero point per run of `inner` elements,
/// the run `i` taking parameter `i % dim` (one per tensor: `dim` 1, `inner` all of `x`).
struct FakeQuant<'a> {
    x: &'a [f32],
    s: &'a [f32],
    z: Option<&'a [f32]>,
    inner: usize,
    dim: usize,
    lo: f32,
    hi: f32,
}

impl<'a> FakeQuant<'a> {
    /// The operands at `args[first..]` (`x, s, [z]`), when all are f32 and the parameters vary
    /// along at most one axis of `x` (the zero point shaped as the scale).
    fn of(args: &[Option<&'a Tensor>], first: usize, qmin: i32, qmax: i32) -> Option<FakeQuant<'a>> {
        let get = |i: usize| args.get(first + i).copied().flatten();
        let (x, s) = (get(0)?, get(1)?);
        let z = get(2);
        if z.is_some_and(|z| z.shape() != s.shape()) || s.shape().len() > x.shape().len() {
            return None;
        }
        let lead = x.shape().len() - s.shape().len();
        let varying: Vec<usize> = (0..s.shape().len()).filter(|&a| s.shape()[a] != 1).collect();
        let (inner, dim) = match varying[..] {
            [] => (x.len().max(1), 1),
            [a] if s.shape()[a] == x.shape()[lead + a] => {
                (x.shape()[lead + a + 1..].iter().product::<usize>().max(1), s.shape()[a])
            }
            _ => return None,
        };
        let z = match z {
            Some(z) => Some(z.as_f32()?),
            None => None,
        };
        let (x, s) = (x.as_f32()?, s.as_f32()?);
        (s.len() == dim).then_some(FakeQuant { x, s, z, inner, dim, lo: qmin as f32, hi: qmax as f32 })
    }

    /// `(c - z) * s` per element.
    fn forward(&self) -> Result<Vec<f32>, String> {
        let mut y = zeroed(self.x.len())?;
        for (run, (xr, yr)) in self.x.chunks(self.inner).zip(y.chunks_mut(self.inner)).enumerate() {
            let k = run % self.dim;
            let (s, z) = (self.s[k], self.z.map(|z| z[k]));
            for (&x, y) in xr.iter().zip(yr) {
                let (_, _, mut c) = fake_quantize_codes(x, s, z, self.lo, self.hi);
                if let Some(z) = z {
                    c -= z;
                }
                *y = c * s;
            }
        }
        Ok(y)
    }

    /// `dx` (`dy` inside the range) and the scale's gradient, summed in f64 in element order.
    fn backward(&self, dy: &[f32]) -> Result<(Vec<f32>, Vec<f32>), String> {
        if dy.len() != self.x.len() {
            return Err(format!("dy has {} elements for {} of x", dy.len(), self.x.len()));
        }
        let mut dx = zeroed(self.x.len())?;
        let mut ds = vec![0f64; self.dim];
        for (run, ((xr, gr), dxr)) in
            self.x.chunks(self.inner).zip(dy.chunks(self.inner)).zip(dx.chunks_mut(self.inner)).enumerate()
        {
            let k = run % self.dim;
            let (s, z) = (self.s[k], self.z.map(|z| z[k]));
            let mut acc = ds[k];
            for ((&x, &g), d) in xr.iter().zip(gr).zip(dxr) {
                let (inside, term) = fake_quantize_grad_terms(x, s, z, self.lo, self.hi);
                if inside {
                    *d = g;
                }
                acc += f64::from(g) * term;
            }
            ds[k] = acc;
        }
        Ok((dx, ds.into_iter().map(|v| v as f32).collect()))
    }
}

/// One 2-D convolution, seen from its forward direction: input `[n, c, h, w]`, weight
/// `[m, c / group, kh, kw]`, result `[n, m, oh, ow]`, where result position `o` reads input
/// position `o * stride + k * dilation - pad_begin` (outside the input: zero). A transposed
/// convolution is the input gradient of such a convolution: its input is the result's shape,
/// its result the input's.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    m: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: i64,
    pw: i64,
    dh: usize,
    dw: usize,
    group: usize,
}

impl Geometry {
    /// The geometry of a convolution with attributes `a`, input shape `x`, weight shape `wt` and
    /// result shape `y`, if they are 2-D and fit together.
    fn of_conv(a: &ConvAttrs, x: &[usize], wt: &[usize], y: &[usize]) -> Option<Geometry> {
        let pads: Vec<i64> = a.pads.iter().map(|&p| i64::try_from(p).ok()).collect::<Option<_>>()?;
        Geometry::new(x, wt, y, &a.strides, &pads, &a.dilations, a.group)
    }

    /// The geometry of the convolution whose input gradient is the transposed convolution with
    /// attributes `a`, input shape `x` (the convolution's result), weight shape `wt` and result
    /// shape `y` (the convolution's input).
    fn of_transpose(a: &ConvTransposeAttrs, x: &[usize], wt: &[usize], y: &[usize]) -> Option<Geometry> {
        // conv_transpose reads w (C_in, C_out / group, k...): the convolution's (m, c / group, k...)
        Geometry::new(y, wt, x, &a.strides, &a.pads, &a.dilations, a.group)
    }

    fn new(
        x: &[usize],
        wt: &[usize],
        y: &[usize],
        strides: &[usize],
        pads: &[i64],
        dilations: &[usize],
        group: usize,
    ) -> Option<Geometry> {
        let (&[n, c, h, w], &[m, cg, kh, kw], &[yn, ym, oh, ow]) = (x, wt, y) else { return None };
        let (&[sh, sw], &[ph, pw, _, _], &[dh, dw]) = (strides, pads, dilations) else { return None };
        let fits = n == yn
            && m == ym
            && group > 0
            && c % group == 0
            && m % group == 0
            && cg == c / group
            && [kh, kw, sh, sw, dh, dw].iter().all(|&v| v > 0);
        // every size product used below must fit in usize
        n.checked_mul(c)?.checked_mul(h)?.checked_mul(w)?;
        n.checked_mul(m)?.checked_mul(oh)?.checked_mul(ow)?;
        m.checked_mul(cg)?.checked_mul(kh)?.checked_mul(kw)?;
        fits.then_some(Geometry { n, c, h, w, m, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, group })
    }

    fn cg(&self) -> usize {
        self.c / self.group
    }

    fn mg(&self) -> usize {
        self.m / self.group
    }

    /// One input and one output channel per group.
    fn depthwise(&self) -> bool {
        self.cg() == 1 && self.mg() == 1
    }

    /// Length of an im2col row of one group: `kh * kw * c / group`, `(ky, kx, ci)` with `ci`
    /// fastest.
    fn k(&self) -> usize {
        self.kh * self.kw * self.cg()
    }

    /// The microkernels' geometry for group `gi`, when the pads are not negative.
    fn micro(&self, gi: usize) -> Result<ConvGeom, String> {
        let pad = |p: i64| usize::try_from(p).map_err(|_| "a negative pad".to_string());
        Ok(ConvGeom {
            h: self.h,
            w: self.w,
            c: self.c,
            oh: self.oh,
            ow: self.ow,
            kh: self.kh,
            kw: self.kw,
            sh: self.sh,
            sw: self.sw,
            ph: pad(self.ph)?,
            pw: pad(self.pw)?,
            dh: self.dh,
            dw: self.dw,
            cin: self.cg(),
            cin_offset: gi * self.cg(),
        })
    }

    /// The weights of group `gi` as `[m / group][k]`, in the im2col column order.
    fn group_weights(&self, w: &[f32], gi: usize) -> Result<Vec<f32>, String> {
        let (cg, mg, k, taps) = (self.cg(), self.mg(), self.k(), self.kh * self.kw);
        let mut wr = zeroed(mg * k)?;
        for j in 0..mg {
            for ci in 0..cg {
                let src = &w[((gi * mg + j) * cg + ci) * taps..][..taps];
                for (tap, &v) in src.iter().enumerate() {
                    wr[j * k + tap * cg + ci] = v;
                }
            }
        }
        Ok(wr)
    }

    /// The range of output positions `o < len_out` whose input position `o * stride + off`
    /// lies in `0..len_in`.
    fn span(len_out: usize, stride: usize, off: i64, len_in: usize) -> std::ops::Range<usize> {
        let (s, li) = (stride as i64, len_in as i64);
        // o * s + off >= 0  <=>  o >= ceil(-off / s);  o * s + off < li  <=>  o < ceil((li - off) / s)
        let ceil = |a: i64| (a + s - 1) / s; // a >= 0
        let lo = ceil((-off).max(0));
        let hi = if li - off <= 0 { 0 } else { ceil(li - off) };
        let lo = (lo as usize).min(len_out);
        lo..(hi as usize).clamp(lo, len_out)
    }

    /// The convolution: `y[n][m][o] = bias[m] + sum x * w` (see the type documentation).
    fn forward(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Result<Vec<f32>, String> {
        self.check_sizes(&[(x.len(), self.n * self.c * self.h * self.w), (w.len(), self.weight_len())])?;
        if let Some(b) = bias {
            self.check_sizes(&[(b.len(), self.m)])?;
        }
        let mut y = if self.depthwise() { self.depthwise_forward(x, w)? } else { self.gemm_forward(x, w)? };
        add_bias(&mut y, bias, self.m, self.oh * self.ow);
        Ok(y)
    }

    /// The input gradient (the transposed convolution) of `dy` (`[n, m, oh, ow]`), plus the
    /// transposed convolution's bias (one per input channel of the convolution).
    fn input_grad(&self, dy: &[f32], w: &[f32], bias: Option<&[f32]>) -> Result<Vec<f32>, String> {
        self.check_sizes(&[(dy.len(), self.n * self.m * self.oh * self.ow), (w.len(), self.weight_len())])?;
        if let Some(b) = bias {
            self.check_sizes(&[(b.len(), self.c)])?;
        }
        let mut dx = if self.depthwise() { self.depthwise_input_grad(dy, w)? } else { self.gemm_input_grad(dy, w)? };
        add_bias(&mut dx, bias, self.c, self.h * self.w);
        Ok(dx)
    }

    /// The weight gradient of input `x` and result gradient `dy`, im2col blocks of at most
    /// `block_floats` floats (at least [`BLOCK_ROWS`] rows).
    fn weight_grad(&self, x: &[f32], dy: &[f32], block_floats: usize) -> Result<Vec<f32>, String> {
        self.check_sizes(&[
            (x.len(), self.n * self.c * self.h * self.w),
            (dy.len(), self.n * self.m * self.oh * self.ow),
        ])?;
        if self.depthwise() {
            self.depthwise_weight_grad(x, dy)
        } else {
            self.gemm_weight_grad(x, dy, block_floats)
        }
    }

    fn weight_len(&self) -> usize {
        self.m * self.cg() * self.kh * self.kw
    }

    fn check_sizes(&self, pairs: &[(usize, usize)]) -> Result<(), String> {
        match pairs.iter().find(|(have, want)| have != want) {
            Some((have, want)) => Err(format!("{have} elements where the shapes need {want}")),
            None => Ok(()),
        }
    }

    fn gemm_forward(&self, x: &[f32], w: &[f32]) -> Result<Vec<f32>, String> {
        let (cg, mg, k) = (self.cg(), self.mg(), self.k());
        let xs = to_channels_last(x, self.n, self.c, self.h * self.w)?;
        let rows = self.n * self.oh * self.ow;
        let mut y = zeroed(rows * self.m)?;
        let in_place = self.kh == 1
            && self.kw == 1
            && self.sh == 1
            && self.sw == 1
            && self.ph == 0
            && self.pw == 0
            && self.oh == self.h
            && self.ow == self.w;
        let mut col = if in_place { vec![] } else { zeroed(BLOCK_ROWS * k)? };
        let (gemm, _) = gemm_f32_best();
        for gi in 0..self.group {
            let packed = pack_weights_f32(&self.group_weights(w, gi)?, mg, k).map_err(alloc)?;
            let geom = self.micro(gi)?;
            for r0 in (0..rows).step_by(BLOCK_ROWS) {
                let rb = BLOCK_ROWS.min(rows - r0);
                let (a, lda) = if in_place {
                    (xs[r0 * self.c + gi * cg..].as_ptr(), self.c)
                } else {
                    // SAFETY: `geom` describes the NHWC input `xs` of `n` images (checked sizes),
                    // rows r0..r0+rb are below n*oh*ow, and `col` holds BLOCK_ROWS >= rb rows of k floats.
                    unsafe { im2col_f32(&geom, xs.as_ptr(), r0, rb, col.as_mut_ptr(), k) };
                    (col.as_ptr(), k)
                };
                for p in 0..mg.div_ceil(PANEL) {
                    let nr = PANEL.min(mg - p * PANEL);
                    let c = y[r0 * self.m + gi * mg + p * PANEL..].as_mut_ptr();
                    // SAFETY: `a` has rb readable rows of k floats at stride lda (an im2col block, or
                    // the group's channels of rows r0.. of `xs`); panel p of `packed` holds
                    // k * round_up_16(nr) floats; `c` has rb rows of nr writable floats at stride m
                    // inside `y` (columns gi*mg + p*PANEL + nr <= m).
                    unsafe { gemm(a, lda, rb, packed.data[panel_offset(p, k)..].as_ptr(), k, c, self.m, nr) };
                }
            }
        }
        to_channels_first(&y, self.n, self.m, self.oh * self.ow)
    }

    fn gemm_input_grad(&self, dy: &[f32], w: &[f32]) -> Result<Vec<f32>, String> {
        let (mg, k) = (self.mg(), self.k());
        let dys = to_channels_last(dy, self.n, self.m, self.oh * self.ow)?;
        let rows = self.n * self.oh * self.ow;
        let mut dx = zeroed(self.n * self.h * self.w * self.c)?;
        let mut col = zeroed(BLOCK_ROWS * k)?;
        let (gemm, _) = gemm_f32_best();
        for gi in 0..self.group {
            // [mg][k] read as the GEMM's right operand: reduction over the group's output channels
            let packed = pack_weights_f32_kn(&self.group_weights(w, gi)?, mg, k).map_err(alloc)?;
            for r0 in (0..rows).step_by(BLOCK_ROWS) {
                let rb = BLOCK_ROWS.min(rows - r0);
                let a = dys[r0 * self.m + gi * mg..].as_ptr();
                for p in 0..k.div_ceil(PANEL) {
                    let nr = PANEL.min(k - p * PANEL);
                    // SAFETY: `a` has rb rows of mg readable floats at stride m (rows r0.. of the
                    // NHWC `dys`, the group's channels); panel p holds mg * round_up_16(nr) floats;
                    // `col` has rb <= BLOCK_ROWS rows of k floats, columns p*PANEL + nr <= k.
                    unsafe {
                        gemm(
                            a,
                            self.m,
                            rb,
                            packed.data[panel_offset(p, mg)..].as_ptr(),
                            mg,
                            col[p * PANEL..].as_mut_ptr(),
                            k,
                            nr,
                        )
                    };
                }
                self.col2im(&col[..rb * k], r0, gi, &mut dx);
            }
        }
        to_channels_first(&dx, self.n, self.c, self.h * self.w)
    }

    /// Adds each im2col row of `col` (rows `r0..`, group `gi`) to the NHWC input pixels its taps
    /// read: the adjoint of im2col.
    fn col2im(&self, col: &[f32], r0: usize, gi: usize, dx: &mut [f32]) {
        let (cg, k) = (self.cg(), self.k());
        for (r, row) in col.chunks_exact(k).enumerate() {
            let at = r0 + r;
            let (img, oy, ox) = (at / (self.oh * self.ow), at / self.ow % self.oh, at % self.ow);
            for ky in 0..self.kh {
                let iy = (oy * self.sh + ky * self.dh) as i64 - self.ph;
                if iy < 0 || iy >= self.h as i64 {
                    continue;
                }
                for kx in 0..self.kw {
                    let ix = (ox * self.sw + kx * self.dw) as i64 - self.pw;
                    if ix < 0 || ix >= self.w as i64 {
                        continue;
                    }
                    let px = (img * self.h + iy as usize) * self.w + ix as usize;
                    let dst = &mut dx[px * self.c + gi * cg..][..cg];
                    let src = &row[(ky * self.kw + kx) * cg..][..cg];
                    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                }
            }
        }
    }

    fn gemm_weight_grad(&self, x: &[f32], dy: &[f32], block_floats: usize) -> Result<Vec<f32>, String> {
        let (cg, mg, k) = (self.cg(), self.mg(), self.k());
        let xs = to_channels_last(x, self.n, self.c, self.h * self.w)?;
        let plane = self.oh * self.ow;
        let rows = self.n * plane;
        // dy as [m][n * oh * ow]: each output channel's gradient over the whole batch, one row
        let mut dyt = zeroed(self.m * rows)?;
        for img in 0..self.n {
            for j in 0..self.m {
                dyt[j * rows + img * plane..][..plane].copy_from_slice(&dy[(img * self.m + j) * plane..][..plane]);
            }
        }
        let block = (block_floats / k.max(1)).max(BLOCK_ROWS).min(rows.max(1));
        let mut col = zeroed(block * k)?;
        let mut packed = zeroed(packed_len(block, k))?;
        let (mut acc, mut part) = (zeroed(mg * k)?, zeroed(mg * k)?);
        let mut dw = zeroed(self.weight_len())?;
        let (gemm, _) = gemm_f32_best();
        let taps = self.kh * self.kw;
        for gi in 0..self.group {
            let geom = self.micro(gi)?;
            acc.fill(0.0);
            for r0 in (0..rows).step_by(block) {
                let rb = block.min(rows - r0);
                // SAFETY: `geom` describes the NHWC `xs` of n images; rows r0..r0+rb are below
                // n*oh*ow; `col` holds block >= rb rows of k floats.
                unsafe { im2col_f32(&geom, xs.as_ptr(), r0, rb, col.as_mut_ptr(), k) };
                pack_rows(&col[..rb * k], rb, k, &mut packed);
                let a = dyt[gi * mg * rows + r0..].as_ptr();
                for p in 0..k.div_ceil(PANEL) {
                    let nr = PANEL.min(k - p * PANEL);
                    // SAFETY: `a` has mg rows of rb readable floats at stride `rows` (the group's
                    // channels of `dyt`, positions r0..r0+rb); panel p holds rb * round_up_16(nr)
                    // floats; `part` has mg rows of k floats, columns p*PANEL + nr <= k.
                    unsafe {
                        gemm(
                            a,
                            rows,
                            mg,
                            packed[panel_offset(p, rb)..].as_ptr(),
                            rb,
                            part[p * PANEL..].as_mut_ptr(),
                            k,
                            nr,
                        )
                    };
                }
                acc.iter_mut().zip(&part).for_each(|(a, p)| *a += p);
            }
            for j in 0..mg {
                for ci in 0..cg {
                    let dst = &mut dw[((gi * mg + j) * cg + ci) * taps..][..taps];
                    for (tap, d) in dst.iter_mut().enumerate() {
                        *d = acc[j * k + tap * cg + ci];
                    }
                }
            }
        }
        Ok(dw)
    }

    /// The taps of one depthwise channel: `each(oy, iy, ky, kx, span, off)` for each output row
    /// `oy` and tap `(ky, kx)` whose input row `iy` is inside the input, with the output columns
    /// `span` whose input column `ix = ox * sw + off` is inside too.
    fn depthwise_taps(&self, mut each: impl FnMut(usize, usize, usize, usize, std::ops::Range<usize>, i64)) {
        for oy in 0..self.oh {
            for ky in 0..self.kh {
                let iy = (oy * self.sh + ky * self.dh) as i64 - self.ph;
                if iy < 0 || iy >= self.h as i64 {
                    continue;
                }
                for kx in 0..self.kw {
                    let off = (kx * self.dw) as i64 - self.pw;
                    let span = Geometry::span(self.ow, self.sw, off, self.w);
                    each(oy, iy as usize, ky, kx, span, off);
                }
            }
        }
    }

    fn depthwise_forward(&self, x: &[f32], w: &[f32]) -> Result<Vec<f32>, String> {
        let (hw, ohw, taps) = (self.h * self.w, self.oh * self.ow, self.kh * self.kw);
        let mut y = zeroed(self.n * self.m * ohw)?;
        for (p, yp) in y.chunks_exact_mut(ohw.max(1)).enumerate() {
            let ch = p % self.m;
            let xp = &x[p * hw..][..hw];
            let wk = &w[ch * taps..][..taps];
            self.depthwise_taps(|oy, iy, ky, kx, span, off| {
                let wv = wk[ky * self.kw + kx];
                let (yr, xr) = (&mut yp[oy * self.ow..][..self.ow], &xp[iy * self.w..][..self.w]);
                for ox in span {
                    yr[ox] += wv * xr[(ox as i64 * self.sw as i64 + off) as usize];
                }
            });
        }
        Ok(y)
    }

    fn depthwise_input_grad(&self, dy: &[f32], w: &[f32]) -> Result<Vec<f32>, String> {
        let (hw, ohw, taps) = (self.h * self.w, self.oh * self.ow, self.kh * self.kw);
        let mut dx = zeroed(self.n * self.c * hw)?;
        for (p, xp) in dx.chunks_exact_mut(hw.max(1)).enumerate() {
            let ch = p % self.c;
            let yp = &dy[p * ohw..][..ohw];
            let wk = &w[ch * taps..][..taps];
            self.depthwise_taps(|oy, iy, ky, kx, span, off| {
                let wv = wk[ky * self.kw + kx];
                let (yr, xr) = (&yp[oy * self.ow..][..self.ow], &mut xp[iy * self.w..][..self.w]);
                for ox in span {
                    xr[(ox as i64 * self.sw as i64 + off) as usize] += wv * yr[ox];
                }
            });
        }
        Ok(dx)
    }

    fn depthwise_weight_grad(&self, x: &[f32], dy: &[f32]) -> Result<Vec<f32>, String> {
        let (hw, ohw, taps) = (self.h * self.w, self.oh * self.ow, self.kh * self.kw);
        let mut dw = zeroed(self.m * taps)?;
        for p in 0..self.n * self.c {
            let ch = p % self.c;
            let (xp, yp) = (&x[p * hw..][..hw], &dy[p * ohw..][..ohw]);
            let wk = &mut dw[ch * taps..][..taps];
            self.depthwise_taps(|oy, iy, ky, kx, span, off| {
                let (yr, xr) = (&yp[oy * self.ow..][..self.ow], &xp[iy * self.w..][..self.w]);
                let mut s = 0f32;
                for ox in span {
                    s += yr[ox] * xr[(ox as i64 * self.sw as i64 + off) as usize];
                }
                wk[ky * self.kw + kx] += s;
            });
        }
        Ok(dw)
    }
}

/// Floats of the GEMM's packed panels for a `[k][n]` operand (see [`crate::micro::float::PackedF32`]).
fn packed_len(k: usize, n: usize) -> usize {
    let np = n.div_ceil(PANEL);
    if np == 0 {
        0
    } else {
        panel_offset(np - 1, k) + panel_width(n, np - 1) * k
    }
}

/// Packs the row-major `[k][n]` matrix `m` into the GEMM's panels in `out` (at least
/// [`packed_len`]`(k, n)` floats), as [`pack_weights_f32_kn`] does, a panel row at a time.
fn pack_rows(m: &[f32], k: usize, n: usize, out: &mut [f32]) {
    for p in 0..n.div_ceil(PANEL) {
        let (width, c0) = (panel_width(n, p), p * PANEL);
        let cols = width.min(n - c0);
        let panel = &mut out[panel_offset(p, k)..][..width * k];
        for (t, dst) in panel.chunks_exact_mut(width).enumerate() {
            dst[..cols].copy_from_slice(&m[t * n + c0..][..cols]);
            dst[cols..].fill(0.0);
        }
    }
}

/// `len` zeros, allocated fallibly.
fn zeroed(len: usize) -> Result<Vec<f32>, String> {
    try_zeroed(len).map_err(alloc)
}

fn alloc(e: std::collections::TryReserveError) -> String {
    format!("allocating a host kernel's buffer: {e}")
}

/// Adds `bias[ch]` to every element of channel `ch` of an NCHW tensor of `c` channels and planes
/// of `plane` elements.
fn add_bias(t: &mut [f32], bias: Option<&[f32]>, c: usize, plane: usize) {
    let Some(b) = bias else { return };
    for (p, tp) in t.chunks_exact_mut(plane.max(1)).enumerate() {
        let v = b[p % c];
        tp.iter_mut().for_each(|x| *x += v);
    }
}

/// `[n, c, plane]` to `[n, plane, c]`.
fn to_channels_last(x: &[f32], n: usize, c: usize, plane: usize) -> Result<Vec<f32>, String> {
    let mut out = zeroed(n * c * plane)?;
    crate::program::transpose_images(x, &mut out, n, c, plane);
    Ok(out)
}

/// `[n, plane, c]` to `[n, c, plane]`.
fn to_channels_first(x: &[f32], n: usize, c: usize, plane: usize) -> Result<Vec<f32>, String> {
    let mut out = zeroed(n * c * plane)?;
    crate::program::transpose_images(x, &mut out, n, plane, c);
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! Each kernel against the reference interpreter on the cases of [`CASES`], through one
    //! helper ([`check`]): the two differ by the order of their f32 sums only, so every element
    //! must agree within twice the rounding bound of a sum of `terms` products,
    //! `2 * terms * eps * sum |product|` (the sum of magnitudes is the interpreter's result on
    //! the absolute values of the operands).

    use super::*;
    use qforge_ir::interp::{eval_node, RunOptions};
    use qforge_ir::{DType, Shape};

    /// A 2-D convolution: input `[n, c, h, w]`, `m` output channels, kernel, strides, pads
    /// (begin, begin, end, end), dilations, groups, with or without a bias.
    struct Case {
        name: &'static str,
        x: [usize; 4],
        m: usize,
        kernel: [usize; 2],
        strides: [usize; 2],
        pads: [usize; 4],
        dilations: [usize; 2],
        group: usize,
        bias: bool,
    }

    const fn case(
        name: &'static str,
        x: [usize; 4],
        m: usize,
        kernel: [usize; 2],
        strides: [usize; 2],
        pads: [usize; 4],
    ) -> Case {
        Case { name, x, m, kernel, strides, pads, dilations: [1, 1], group: 1, bias: true }
    }

    const CASES: &[Case] = &[
        case("3x3, padded", [2, 5, 7, 6], 7, [3, 3], [1, 1], [1, 1, 1, 1]),
        case("1x1 in place", [2, 19, 5, 4], 40, [1, 1], [1, 1], [0, 0, 0, 0]),
        case("1x1, stride 2", [1, 8, 7, 7], 33, [1, 1], [2, 2], [0, 0, 0, 0]),
        case("7x7, stride 2, uneven pads", [2, 3, 15, 13], 16, [7, 7], [2, 2], [3, 2, 3, 1]),
        case("3x2, strides 2x1, no pads", [3, 4, 9, 8], 70, [3, 2], [2, 1], [0, 0, 0, 0]),
        Case { dilations: [2, 3], ..case("dilated", [1, 6, 11, 12], 5, [3, 3], [1, 1], [2, 3, 2, 3]) },
        Case { group: 2, ..case("two groups", [2, 6, 6, 5], 10, [3, 3], [1, 2], [1, 1, 0, 1]) },
        Case { group: 12, ..case("depthwise", [2, 12, 9, 8], 12, [3, 3], [1, 1], [1, 1, 1, 1]) },
        Case { group: 7, bias: false, ..case("depthwise, stride 2", [3, 7, 10, 9], 7, [3, 3], [2, 2], [1, 1, 0, 1]) },
        Case { group: 4, ..case("depthwise with a multiplier", [1, 4, 6, 6], 8, [3, 3], [1, 1], [1, 1, 1, 1]) },
        Case { bias: false, ..case("more rows than a block", [4, 3, 20, 20], 9, [3, 3], [1, 1], [1, 1, 1, 1]) },
    ];

    struct Rng(u64);
    impl Rng {
        fn tensor(&mut self, shape: &[usize]) -> Tensor {
            let len = shape.iter().product();
            let v = (0..len)
                .map(|_| {
                    self.0 ^= self.0 << 13;
                    self.0 ^= self.0 >> 7;
                    self.0 ^= self.0 << 17;
                    (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
                })
                .collect();
            Tensor::from_f32(shape.to_vec(), v)
        }
    }

    fn abs(t: &Tensor) -> Tensor {
        Tensor::from_f32(t.shape().to_vec(), t.to_f32_vec().iter().map(|x| x.abs()).collect())
    }

    /// Runs `op` natively and on the interpreter, and checks the two agree (see the module
    /// documentation) with sums of `terms` products.
    fn check(what: &str, op: &Op, args: &[&Tensor], out: &[usize], terms: usize) {
        let ty = TensorType::new(DType::F32, Shape::fixed(out));
        let in_types: Vec<TensorType> =
            args.iter().map(|t| TensorType::new(DType::F32, Shape::fixed(t.shape()))).collect();
        let tys: Vec<Option<&TensorType>> = in_types.iter().map(Some).collect();
        let ins: Vec<Option<&Tensor>> = args.iter().map(|&t| Some(t)).collect();
        let fast = run(op, &ins, std::slice::from_ref(&ty)).expect("a native kernel").expect("it runs").remove(0);
        let opts = RunOptions::default();
        let reference =
            eval_node(what, op, &tys, std::slice::from_ref(&ty), &ins, &opts).expect("the interpreter runs");
        let abs_args: Vec<Tensor> = args.iter().map(|t| abs(t)).collect();
        let abs_ins: Vec<Option<&Tensor>> = abs_args.iter().map(Some).collect();
        let magnitude = eval_node(what, op, &tys, std::slice::from_ref(&ty), &abs_ins, &opts).expect("magnitudes");
        assert_eq!(fast.shape(), out, "{what}: shape");
        let bound = 2.0 * terms as f32 * f32::EPSILON;
        let (f, r, m) = (fast.to_f32_vec(), reference[0].to_f32_vec(), magnitude[0].to_f32_vec());
        for (i, ((f, r), m)) in f.iter().zip(&r).zip(&m).enumerate() {
            assert!(
                (f - r).abs() <= bound * m + f32::MIN_POSITIVE,
                "{what}: element {i}: {f} vs {r} (sum of magnitudes {m})"
            );
        }
    }

    #[test]
    fn native_convolutions_match_the_interpreter() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for c in CASES {
            let [n, ch, h, w] = c.x;
            let [kh, kw] = c.kernel;
            let out = |len: usize, pb: usize, pe: usize, k: usize, s: usize, d: usize| {
                (len + pb + pe - d * (k - 1) - 1) / s + 1
            };
            let oh = out(h, c.pads[0], c.pads[2], kh, c.strides[0], c.dilations[0]);
            let ow = out(w, c.pads[1], c.pads[3], kw, c.strides[1], c.dilations[1]);
            let cg = ch / c.group;
            let attrs = ConvAttrs {
                kernel: c.kernel.to_vec(),
                strides: c.strides.to_vec(),
                pads: c.pads.to_vec(),
                dilations: c.dilations.to_vec(),
                group: c.group,
            };
            let (x, wt, b) = (rng.tensor(&c.x), rng.tensor(&[c.m, cg, kh, kw]), rng.tensor(&[c.m]));
            let y_shape = [n, c.m, oh, ow];
            let dy = rng.tensor(&y_shape);
            let conv = Op::Conv(attrs.clone());
            let fwd: Vec<&Tensor> = if c.bias { vec![&x, &wt, &b] } else { vec![&x, &wt] };
            check(&format!("{}: conv", c.name), &conv, &fwd, &y_shape, cg * kh * kw + 1);
            check(
                &format!("{}: weight gradient", c.name),
                &Op::ConvWeightGrad(attrs),
                &[&x, &dy],
                &[c.m, cg, kh, kw],
                n * oh * ow,
            );
            // the input gradient: the transposed convolution, output padding restoring x's size
            let extra =
                |len: usize, pb: usize, pe: usize, k: usize, s: usize, d: usize| (len + pb + pe - d * (k - 1) - 1) % s;
            let t = ConvTransposeAttrs {
                kernel: c.kernel.to_vec(),
                strides: c.strides.to_vec(),
                pads: c.pads.iter().map(|&p| p as i64).collect(),
                dilations: c.dilations.to_vec(),
                group: c.group,
                output_padding: vec![
                    extra(h, c.pads[0], c.pads[2], kh, c.strides[0], c.dilations[0]),
                    extra(w, c.pads[1], c.pads[3], kw, c.strides[1], c.dilations[1]),
                ],
            };
            let bx = rng.tensor(&[ch]);
            let tr: Vec<&Tensor> = if c.bias { vec![&dy, &wt, &bx] } else { vec![&dy, &wt] };
            check(
                &format!("{}: input gradient", c.name),
                &Op::ConvTranspose(t),
                &tr,
                &c.x,
                (c.m / c.group) * kh * kw + 1,
            );
        }
    }

    #[test]
    fn the_weight_gradient_sums_its_blocks() {
        let mut rng = Rng(7);
        // 4 images of 20x20: 1600 rows of 27 columns, in blocks of 72 rows
        let g = Geometry::new(&[4, 3, 20, 20], &[9, 3, 3, 3], &[4, 9, 20, 20], &[1, 1], &[1, 1, 1, 1], &[1, 1], 1)
            .expect("a geometry");
        let (x, dy) = (rng.tensor(&[4, 3, 20, 20]), rng.tensor(&[4, 9, 20, 20]));
        let (x, dy) = (x.to_f32_vec(), dy.to_f32_vec());
        let whole = g.weight_grad(&x, &dy, BLOCK_FLOATS).expect("one block");
        let blocked = g.weight_grad(&x, &dy, 1).expect("blocks of 72 rows");
        let (ax, ady): (Vec<f32>, Vec<f32>) =
            (x.iter().map(|v| v.abs()).collect(), dy.iter().map(|v| v.abs()).collect());
        let magnitude = g.weight_grad(&ax, &ady, BLOCK_FLOATS).expect("magnitudes");
        for ((a, b), m) in whole.iter().zip(&blocked).zip(&magnitude) {
            assert!((a - b).abs() <= 2.0 * 1600.0 * f32::EPSILON * m, "{a} vs {b} (sum of magnitudes {m})");
        }
        assert_ne!(whole, blocked, "the blocks sum in another order");
    }

    /// Fake quantization and its gradient against the interpreter, bit for bit: per tensor with a
    /// zero point, per output channel of a weight (`[c, 1, 1, 1]`), per last axis (`[c]`), with
    /// values beyond the range, ties and a NaN.
    #[test]
    fn fake_quantization_matches_the_interpreter_bit_for_bit() {
        let mut rng = Rng(99);
        let x = {
            let mut v = rng.tensor(&[4, 3, 2, 5]).to_f32_vec();
            v.iter_mut().for_each(|e| *e *= 3.0);
            v[7] = f32::NAN;
            v[8] = 0.25; // a tie at scale 0.5 per tensor
            Tensor::from_f32(vec![4, 3, 2, 5], v)
        };
        let dy = rng.tensor(&[4, 3, 2, 5]);
        let abs =
            |t: Tensor| Tensor::from_f32(t.shape().to_vec(), t.to_f32_vec().iter().map(|v| v.abs() + 0.01).collect());
        let cases: Vec<(Tensor, Option<Tensor>, i32, i32)> = vec![
            (Tensor::from_f32(vec![], vec![0.5]), Some(Tensor::from_f32(vec![], vec![3.0])), 0, 15),
            (abs(rng.tensor(&[4, 1, 1, 1])), None, -8, 7),
            (abs(rng.tensor(&[5])), Some(Tensor::from_f32(vec![5], vec![0.0, 1.0, -2.0, 3.0, 0.0])), -128, 127),
        ];
        let opts = RunOptions::default();
        let ty = |t: &Tensor| TensorType::new(DType::F32, Shape::fixed(t.shape()));
        for (s, z, qmin, qmax) in &cases {
            let fwd = Op::FakeQuantize { qmin: *qmin, qmax: *qmax };
            let bwd = Op::FakeQuantizeGrad { qmin: *qmin, qmax: *qmax };
            for (op, ins, outs) in [
                (&fwd, vec![Some(&x), Some(s), z.as_ref()], vec![ty(&x)]),
                (&bwd, vec![Some(&dy), Some(&x), Some(s), z.as_ref()], vec![ty(&x), ty(s)]),
            ] {
                let tys: Vec<TensorType> = ins.iter().flatten().map(|t| ty(t)).collect();
                let mut it = tys.iter();
                let in_tys: Vec<Option<&TensorType>> = ins.iter().map(|i| i.and_then(|_| it.next())).collect();
                let fast = run(op, &ins, &outs).expect("a native kernel").expect("it runs");
                let reference = eval_node("fq", op, &in_tys, &outs, &ins, &opts).expect("the interpreter runs");
                let bits = |v: &[Tensor]| {
                    v.iter().map(|t| t.to_f32_vec().iter().map(|f| f.to_bits()).collect::<Vec<_>>()).collect::<Vec<_>>()
                };
                assert_eq!(bits(&fast), bits(&reference), "{} with scale {:?}", op.name(), s.shape());
            }
        }
        // a scale varying along two axes is left to the interpreter
        let s2 = Tensor::from_f32(vec![3, 1, 5], vec![1.0; 15]);
        let op = Op::FakeQuantize { qmin: 0, qmax: 255 };
        assert!(run(&op, &[Some(&x), Some(&s2)], &[ty(&x)]).is_none());
    }

    #[test]
    fn packing_rows_equals_the_weight_packer() {
        let mut rng = Rng(3);
        for (k, n) in [(1, 1), (5, 16), (7, 17), (3, 32), (9, 33), (4, 70), (130, 576)] {
            let m = rng.tensor(&[k, n]).to_f32_vec();
            let want = pack_weights_f32_kn(&m, k, n).expect("packs").data;
            let mut got = vec![f32::NAN; packed_len(k, n)];
            pack_rows(&m, k, n, &mut got);
            // the panels (where `narrow_fits`, a packer's data goes on with the narrow
            // GEMM's rows, which the host kernels' panel GEMM does not read)
            assert_eq!(got, want[..got.len()], "{k} x {n}");
        }
    }

    #[test]
    fn other_ops_and_types_are_left_to_the_interpreter() {
        let x = Tensor::from_f32(vec![1, 1, 2, 2], vec![1.0; 4]);
        let ty = TensorType::new(DType::F32, Shape::fixed(&[1, 1, 2, 2]));
        assert!(run(&Op::Identity, &[Some(&x)], std::slice::from_ref(&ty)).is_none());
        // three spatial dims
        let x3 = Tensor::from_f32(vec![1, 1, 2, 2, 2], vec![1.0; 8]);
        let w3 = Tensor::from_f32(vec![1, 1, 1, 1, 1], vec![1.0]);
        let ty3 = TensorType::new(DType::F32, Shape::fixed(&[1, 1, 2, 2, 2]));
        let a =
            ConvAttrs { kernel: vec![1; 3], strides: vec![1; 3], pads: vec![0; 6], dilations: vec![1; 3], group: 1 };
        assert!(run(&Op::Conv(a), &[Some(&x3), Some(&w3)], std::slice::from_ref(&ty3)).is_none());
    }
}
