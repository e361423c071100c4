//! Row operations for what Cranelift has no instruction for: transcendental activations (sigmoid,
//! tanh, GELU, erf, exp, ...), softmax, layer normalization, and the f16/bf16 storage
//! conversions. Each computes units `begin..end` of one step described by a [`RowOp`]; the
//! formulas are the reference interpreter's own functions
//! ([`qforge_ir::interp::elementwise::unary_scalar`], [`qforge_ir::interp::norm::softmax_lane`],
//! [`qforge_ir::interp::norm::layer_norm_row`], [`qforge_ir::interp::norm::group_norm_row`]), so
//! the JIT agrees with it bit for bit.

use half::{bf16, f16};
use qforge_ir::interp::resize::Taps;
use qforge_ir::interp::{elementwise::unary_scalar, norm};
use qforge_ir::{numerics, DType, UnaryOp};
use std::sync::Arc;

/// Elements per unit of the element-wise kinds.
pub const CHUNK: usize = 4096;

/// What a row step computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RowKind {
    /// `y = f(x)` element-wise on f32; units are [`CHUNK`]s of elements.
    Unary(UnaryOp),
    /// Softmax (`log`: log-softmax) over lanes of `n` values `inner` apart; units are lanes.
    Softmax {
        log: bool,
    },
    /// Layer normalization over rows of `n` values with `scale`, `bias` (`n` each); units are rows.
    LayerNorm {
        eps: f32,
    },
    /// Group normalization over groups of `n` values (one sample's channels of one group, in
    /// plain order) with per-channel `scale`, `bias`, the channel of element `i` being
    /// `(i / plane) % scale.len()`; units are groups.
    GroupNorm {
        eps: f32,
        plane: usize,
    },
    /// `y = x op v[c]` (or `v[c] op x` with `const_first`; op add, sub, mul or div) with `v` in `scale`, the channel of
    /// element `i` being `i % c` in NHWC and `(i / hw) % c` in plain order; units are [`CHUNK`]s.
    ChannelBinary {
        op: qforge_ir::BinaryOp,
        const_first: bool,
        nhwc: bool,
        c: usize,
        hw: usize,
    },
    /// f16 -> f32, bf16 -> f32 (exact), f32 -> f16, f32 -> bf16 (round to nearest even); units are
    /// [`CHUNK`]s.
    WidenF16,
    WidenBf16,
    RoundF16,
    RoundBf16,
    /// A permutation of axes of elements of `elem` bytes (any dtype): output element `o`, written
    /// as digits over the output dims, reads the input at the dot product of those digits with
    /// the permuted input strides (both in [`RowOp::index`]); units are [`CHUNK`]s of output
    /// elements.
    Transpose {
        elem: usize,
    },
    /// `y = clamp(alpha * x + beta, 0, 1)` on f32 (ONNX HardSigmoid, the interpreter's formula);
    /// units are [`CHUNK`]s.
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    /// `y = x * g` where `g` (at [`RowOp::x2`], `n * c` f32 values) is a per-image, per-channel
    /// gate broadcast over the pixels (a squeeze-and-excitation block's `[N, C, H, W] * [N, C,
    /// 1, 1]`); the channel of element `i` is `i % c` in NHWC and `(i / hw) % c` in plain order,
    /// its image `i / (c * hw)` (an IEEE product does not depend on the operands' order, so
    /// either may be the gate). Units are [`CHUNK`]s.
    GateMul {
        nhwc: bool,
        c: usize,
        hw: usize,
    },
    /// `y = x * x2` on f32 of one shape and layout (the second operand at [`RowOp::x2`]); units
    /// are [`CHUNK`]s.
    MulF32,
    /// One byte to one byte through a 256-entry table of [`RowOp::lut`] (indexed by the input
    /// byte): a requantization between i8/u8 types, or a quantized add of a per-channel constant,
    /// tabulated from the interpreter's formula so it agrees with it exactly. The lut holds
    /// [`RowOp::inner`] tables one after the other; element `i` reads table `(i / plane) % inner`
    /// (one table per channel: `plane` 1 when the channel is the innermost axis, the image's
    /// size for an NCHW channel). Units are [`CHUNK`]s.
    Lut8 {
        plane: usize,
    },
    /// A resize or pad of a 4-D tensor ([`RowOp::plan`]), gathered per output element in NHWC
    /// or plain order; units are [`CHUNK`]s of output elements.
    Spatial {
        nhwc: bool,
    },
}

/// What a [`RowKind::Spatial`] step computes. Dims are in the graph's (NCHW) axis order.
#[derive(Clone, Debug, PartialEq)]
pub enum SpatialPlan {
    /// ONNX Resize over H and W (N and C unchanged) with the interpreter's taps
    /// ([`qforge_ir::interp::resize::resize_plan`]; `None`: the axis is left as it is): each
    /// output is the W taps' weighted sum, in f64 from 0, of the H taps' weighted sums, as the
    /// interpreter's axis-by-axis passes compute it, rounded once to `dtype` (f32, or i8/u8
    /// rounding half to even and saturating, as [`qforge_ir::Tensor::from_f64_iter`]).
    Resize {
        dtype: DType,
        in_dims: [usize; 4],
        out_dims: [usize; 4],
        h: Option<Vec<Taps>>,
        w: Option<Vec<Taps>>,
        extrapolation: f64,
    },
    /// ONNX Pad: output position `o` of axis `a` reads input position `maps[a][o]`
    /// ([`qforge_ir::interp::movement::pad_maps`]), or is `fill` (the element's bytes, little
    /// endian) where any axis maps to `None`; elements of `elem` bytes.
    Pad { elem: usize, in_dims: [usize; 4], out_dims: [usize; 4], maps: [Vec<Option<usize>>; 4], fill: u64 },
}

impl SpatialPlan {
    fn dims(&self) -> ([usize; 4], [usize; 4]) {
        match self {
            SpatialPlan::Resize { in_dims, out_dims, .. } | SpatialPlan::Pad { in_dims, out_dims, .. } => {
                (*in_dims, *out_dims)
            }
        }
    }
}

/// The element offset of `(n, c, h, w)` in a tensor of dims `d` (NCHW order) stored in NHWC or
/// plain order.
fn offset(d: &[usize; 4], nhwc: bool, n: usize, c: usize, h: usize, w: usize) -> usize {
    if nhwc {
        ((n * d[2] + h) * d[3] + w) * d[1] + c
    } else {
        ((n * d[1] + c) * d[2] + h) * d[3] + w
    }
}

/// `(n, c, h, w)` of element `i` of a tensor of dims `d` stored in NHWC or plain order.
fn position(d: &[usize; 4], nhwc: bool, i: usize) -> (usize, usize, usize, usize) {
    let [_, c, h, w] = d.map(|v| v.max(1));
    if nhwc {
        let (ci, r) = (i % c, i / c);
        let (wi, r) = (r % w, r / w);
        (r / h, ci, r % h, wi)
    } else {
        let (wi, r) = (i % w, i / w);
        let (hi, r) = (r % h, r / h);
        (r / c, r % c, hi, wi)
    }
}

/// Reads element `i` of an f32, u8 or i8 buffer as f64 (exact).
///
/// # Safety
/// `i` is an element of the buffer at `x`, of element type `dtype`.
unsafe fn read_f64(x: *const u8, dtype: DType, i: usize) -> f64 {
    // SAFETY: the caller's contract; f32 buffers are 64-byte aligned in the arena.
    unsafe {
        match dtype {
            DType::F32 => (x as *const f32).add(i).read() as f64,
            DType::U8 => x.add(i).read() as f64,
            _ => (x as *const i8).add(i).read() as f64,
        }
    }
}

/// A resize tap list applied to `get` (one axis of the interpreter's separable pass).
fn apply_taps(t: &Taps, extrapolation: f64, mut get: impl FnMut(usize) -> f64) -> f64 {
    match t {
        Taps::Extrapolate => extrapolation,
        Taps::Pick(None) => 0.0,
        Taps::Pick(Some(j)) => get(*j),
        Taps::Weighted(ws) => {
            let mut acc = 0.0;
            for &(j, w) in ws {
                acc += w * get(j);
            }
            acc
        }
    }
}

/// One row step: arena offsets of its input and output, and its sizes. Generated code passes a
/// pointer to it.
#[derive(Clone, Debug)]
#[repr(C)]
pub struct RowOp {
    pub kind: RowKind,
    pub x: usize,
    pub y: usize,
    /// Elements in total (element-wise kinds), or values per lane/row.
    pub n: usize,
    /// Softmax: distance between a lane's values (1 when the axis is the last).
    pub inner: usize,
    pub scale: Vec<f32>,
    pub bias: Vec<f32>,
    /// Transpose: the output dims, then for each output axis the input stride (in elements) it
    /// walks.
    pub index: Vec<usize>,
    /// [`RowKind::Lut8`]: its byte tables, 256 per table.
    pub lut: Vec<u8>,
    /// Arena offset of a second input ([`RowKind::GateMul`]'s gate).
    pub x2: usize,
    /// [`RowKind::Spatial`]: the resize or pad.
    pub plan: Option<Arc<SpatialPlan>>,
}

impl RowOp {
    /// An element-wise op of `kind` over `n` elements (input and output at offset 0 of their
    /// buffers, no scale, bias, index table, second input or plan).
    pub fn elementwise(kind: RowKind, n: usize) -> RowOp {
        RowOp {
            kind,
            x: 0,
            y: 0,
            n,
            inner: 1,
            scale: vec![],
            bias: vec![],
            index: vec![],
            lut: vec![],
            x2: 0,
            plan: None,
        }
    }

    /// Units of work `begin..end` ranges over.
    pub fn units(&self, total: usize) -> usize {
        match self.kind {
            RowKind::Softmax { .. } => total / self.n.max(1),
            RowKind::LayerNorm { .. } | RowKind::GroupNorm { .. } => total / self.n.max(1),
            _ => self.n.div_ceil(CHUNK),
        }
    }
}

/// `y[i] = f(x[i])` for f32 elements `s..e` of the buffers at `xb` and `yb`.
///
/// # Safety
/// Elements `s..e` must lie in both buffers, which must not overlap, and no other thread may
/// access that range of `yb` meanwhile.
unsafe fn map_f32(xb: *mut u8, yb: *mut u8, s: usize, e: usize, f: impl Fn(f32) -> f32) {
    if s >= e {
        return;
    }
    // SAFETY: the caller's contract.
    let (x, y) = unsafe {
        (
            std::slice::from_raw_parts((xb as *const f32).add(s), e - s),
            std::slice::from_raw_parts_mut((yb as *mut f32).add(s), e - s),
        )
    };
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv = f(xv);
    }
}

/// Runs units `begin..end` of `*op` on the arena.
///
/// Threads run disjoint unit ranges of one step at the same time, so this function never forms
/// a reference to arena bytes outside its own units: element-wise kinds take slices of their
/// chunk range only, softmax over a strided axis gathers each lane into a scratch vector and
/// scatters the result, and the other kinds go through raw pointers.
///
/// # Safety
/// `op` points to a valid `RowOp` describing buffers inside `arena` (as the memory plan placed
/// them) of the sizes it states, its input and output buffers are distinct (both are live
/// during the step, so the plan never overlaps them), nothing else writes them during the call
/// except other calls for disjoint unit ranges of the same step, and `begin..end` are units of
/// the step (see [`RowOp::units`]).
pub unsafe extern "C" fn row_op(op: *const RowOp, arena: *mut u8, begin: usize, end: usize) {
    // SAFETY: `op` points to a valid, immutable `RowOp` for the whole call (the caller's contract;
    // the program keeps it alive as long as the code).
    let op = unsafe { &*op };
    // SAFETY: `op.x` and `op.y` are offsets of buffers inside the
    // arena, so the base pointers stay inside the arena allocation.
    let (xb, yb) = unsafe { (arena.add(op.x), arena.add(op.y)) };
    let (s, e) = (begin * CHUNK, (end * CHUNK).min(op.n));
    match op.kind {
        RowKind::Unary(u) if super::transcendental::supported(u) => {
            if s < e {
                // SAFETY: elements `s..e` (`e <= op.n`) lie in both buffers, which are distinct;
                // the range is this call's units only, so no other thread's slice overlaps it.
                let (x, y) = unsafe {
                    (
                        std::slice::from_raw_parts((xb as *const f32).add(s), e - s),
                        std::slice::from_raw_parts_mut((yb as *mut f32).add(s), e - s),
                    )
                };
                super::transcendental::map(u, x, y);
            }
        }
        RowKind::Unary(u) => {
            // one loop per function, the interpreter's formula inlined with the function fixed,
            // so the arithmetic ones (hard-swish, ReLU, neg, abs, square root) compile to vector
            // code instead of a match per element; the values are the interpreter's (exp,
            // sigmoid and erf: `transcendental`, above)
            macro_rules! per_op {
                ($($op:ident),*) => {
                    match u {
                        $(UnaryOp::$op => map_f32(xb, yb, s, e, |x| unary_scalar(UnaryOp::$op, x)),)*
                        _ => map_f32(xb, yb, s, e, |x| unary_scalar(u, x)),
                    }
                };
            }
            // SAFETY: elements `s..e` (`e <= op.n`) lie in both buffers, which are distinct; the
            // range is this call's units only, so no other thread's slice overlaps it.
            unsafe { per_op!(HardSwish, Relu, Neg, Abs, Sqrt, Tanh) }
        }
        RowKind::ChannelBinary { op: bop, const_first, nhwc, c, hw } => {
            use qforge_ir::BinaryOp;
            let (x, y) = (xb as *const f32, yb as *mut f32);
            let (c, hw) = (c.max(1), hw.max(1));
            for i in s..e {
                let ch = if nhwc { i % c } else { (i / hw) % c };
                // SAFETY: element `i < op.n` lies in both buffers (64-byte aligned, so aligned
                // for f32); this call alone writes it.
                let xv = unsafe { x.add(i).read() };
                let (p, q) = if const_first { (op.scale[ch], xv) } else { (xv, op.scale[ch]) };
                let r = match bop {
                    BinaryOp::Add => p + q,
                    BinaryOp::Sub => p - q,
                    BinaryOp::Div => p / q,
                    _ => p * q,
                };
                // SAFETY: as for the read.
                unsafe { y.add(i).write(r) };
            }
        }
        RowKind::HardSigmoid { alpha, beta } => {
            // SAFETY: as for `Unary`.
            unsafe { map_f32(xb, yb, s, e, |x| (alpha * x + beta).clamp(0.0, 1.0)) }
        }
        RowKind::GateMul { nhwc, c, hw } => {
            // SAFETY: `op.x2` is the offset of the gate's buffer inside the arena.
            let gb = unsafe { arena.add(op.x2) } as *const f32;
            let (x, y) = (xb as *const f32, yb as *mut f32);
            let (c, hw) = (c.max(1), hw.max(1));
            for i in s..e {
                let ch = if nhwc { i % c } else { (i / hw) % c };
                let img = i / (c * hw);
                // SAFETY: element `i < op.n` lies in the input and output buffers and
                // `img * c + ch < n * c` in the gate's; only this call writes output element `i`.
                unsafe {
                    let (xv, gv) = (x.add(i).read(), gb.add(img * c + ch).read());
                    y.add(i).write(xv * gv);
                }
            }
        }
        RowKind::MulF32 => {
            // SAFETY: `op.x2` is the offset of the second operand's buffer inside the arena.
            let x2 = unsafe { arena.add(op.x2) } as *const f32;
            let (x, y) = (xb as *const f32, yb as *mut f32);
            for i in s..e {
                // SAFETY: element `i < op.n` lies in all three buffers; only this call writes
                // output element `i`, and it reads the inputs' element `i` before writing.
                unsafe { y.add(i).write(x.add(i).read() * x2.add(i).read()) };
            }
        }
        RowKind::Lut8 { plane } => {
            let (tables, plane) = (op.inner.max(1), plane.max(1));
            if s >= e || op.lut.len() != 256 * tables {
                return;
            }
            // SAFETY: bytes `s..e` (`e <= op.n`) lie in both buffers, which are distinct; the
            // range is this call's units only.
            let (x, y) = unsafe {
                (std::slice::from_raw_parts(xb.add(s), e - s), std::slice::from_raw_parts_mut(yb.add(s), e - s))
            };
            if tables == 1 {
                let t: &[u8; 256] = op.lut[..256].try_into().expect("one table of 256 bytes");
                for (yv, &xv) in y.iter_mut().zip(x) {
                    *yv = t[xv as usize];
                }
            } else {
                // the channel of element s, and how far into its plane
                let (mut c, mut k) = ((s / plane) % tables, s % plane);
                for (yv, &xv) in y.iter_mut().zip(x) {
                    *yv = op.lut[c * 256 + xv as usize];
                    k += 1;
                    if k == plane {
                        k = 0;
                        c += 1;
                        if c == tables {
                            c = 0;
                        }
                    }
                }
            }
        }
        RowKind::Spatial { nhwc } => {
            let Some(plan) = op.plan.as_deref() else { return };
            let (din, dout) = plan.dims();
            match plan {
                SpatialPlan::Resize { dtype, h, w, extrapolation, .. } => {
                    let dtype = *dtype;
                    for i in s..e {
                        let (n, c, oh, ow) = position(&dout, nhwc, i);
                        // SAFETY: `read_f64` reads input elements at offsets of positions inside
                        // `din` (taps index inside the input axis), in the input buffer.
                        let at =
                            |hh: usize, ww: usize| unsafe { read_f64(xb, dtype, offset(&din, nhwc, n, c, hh, ww)) };
                        let hval = |ww: usize| match h {
                            None => at(oh, ww),
                            Some(t) => apply_taps(&t[oh], *extrapolation, |hh| at(hh, ww)),
                        };
                        let v = match w {
                            None => hval(ow),
                            Some(t) => apply_taps(&t[ow], *extrapolation, hval),
                        };
                        // SAFETY: output element `i < op.n` belongs to this call's units only.
                        unsafe {
                            match dtype {
                                DType::F32 => (yb as *mut f32).add(i).write(v as f32),
                                DType::U8 => yb.add(i).write(numerics::saturate_f64_wide(v, dtype) as u8),
                                _ => (yb as *mut i8).add(i).write(numerics::saturate_f64_wide(v, dtype) as i8),
                            }
                        }
                    }
                }
                SpatialPlan::Pad { elem, maps, fill, .. } => {
                    let elem = *elem;
                    let fill = fill.to_le_bytes();
                    for i in s..e {
                        let (n, c, h, w) = position(&dout, nhwc, i);
                        let src = match (maps[0][n], maps[1][c], maps[2][h], maps[3][w]) {
                            (Some(a), Some(b), Some(p), Some(q)) => Some(offset(&din, nhwc, a, b, p, q)),
                            _ => None,
                        };
                        // SAFETY: output element `i < op.n` belongs to this call's units only;
                        // a mapped input position lies inside `din`, so inside the input buffer;
                        // `elem <= 8` bytes come from `fill`.
                        unsafe {
                            let dst = yb.add(i * elem);
                            match src {
                                Some(j) => std::ptr::copy_nonoverlapping(xb.add(j * elem), dst, elem),
                                None => std::ptr::copy_nonoverlapping(fill.as_ptr(), dst, elem),
                            }
                        }
                    }
                }
            }
        }
        RowKind::Transpose { elem } => {
            let rank = op.index.len() / 2;
            let (dims, strides) = op.index.split_at(rank);
            if rank == 0 {
                return;
            }
            // runs along the last output axis: one index decomposition per run
            let (last, ls) = (dims[rank - 1].max(1), strides[rank - 1]);
            let mut o = s;
            while o < e {
                let (mut rem, mut src) = (o / last, (o % last) * ls);
                for a in (0..rank - 1).rev() {
                    let d = dims[a].max(1);
                    src += (rem % d) * strides[a];
                    rem /= d;
                }
                let run = (last - o % last).min(e - o);
                // SAFETY: output elements `o..o + run` lie in `s..e`, this call's units of the
                // output buffer; the input elements read are the permuted indices of those
                // outputs, all below `op.n`, in the (distinct) input buffer.
                unsafe {
                    match elem {
                        1 => strided_copy::<u8>(xb, yb, src, ls, o, run),
                        2 => strided_copy::<u16>(xb, yb, src, ls, o, run),
                        4 => strided_copy::<u32>(xb, yb, src, ls, o, run),
                        _ => strided_copy::<u64>(xb, yb, src, ls, o, run),
                    }
                }
                o += run;
            }
        }
        RowKind::Softmax { log } => {
            let (n, inner) = (op.n, op.inner.max(1));
            if n == 0 {
                return;
            }
            let (x, y) = (xb as *const f32, yb as *mut f32);
            // A lane over a strided axis interleaves with its neighbours (which other threads may
            // be writing), so it is gathered into scratch, computed there and scattered back.
            let mut lane_in = if inner > 1 { vec![0f32; n] } else { Vec::new() };
            let mut lane_out = if inner > 1 { vec![0f32; n] } else { Vec::new() };
            for lane in begin..end {
                let (o, i) = (lane / inner, lane % inner);
                let base = o * n * inner + i;
                if inner == 1 {
                    // SAFETY: the lane is the contiguous elements `base..base + n` of both
                    // buffers (inside them: `lane` is a unit of the step), which no other call
                    // touches; the buffers are distinct.
                    let (xs, ys) = unsafe {
                        (std::slice::from_raw_parts(x.add(base), n), std::slice::from_raw_parts_mut(y.add(base), n))
                    };
                    norm::softmax_lane(xs, ys, n, 1, log);
                } else {
                    for (k, v) in lane_in.iter_mut().enumerate() {
                        // SAFETY: element `base + k * inner` of the lane lies in the input buffer.
                        *v = unsafe { x.add(base + k * inner).read() };
                    }
                    norm::softmax_lane(&lane_in, &mut lane_out, n, 1, log);
                    for (k, v) in lane_out.iter().enumerate() {
                        // SAFETY: element `base + k * inner` of the lane lies in the output buffer
                        // and belongs to this call's lanes only.
                        unsafe { y.add(base + k * inner).write(*v) };
                    }
                }
            }
        }
        RowKind::LayerNorm { eps } => {
            let n = op.n;
            let mut tmp = vec![0f32; n];
            for row in begin..end {
                // SAFETY: row `row` (a unit of the step) is the elements `row * n..(row + 1) * n`
                // of the input buffer, which no call writes during the step.
                let x = unsafe { std::slice::from_raw_parts((xb as *const f32).add(row * n), n) };
                norm::layer_norm_row(x, &op.scale, &op.bias, eps, &mut tmp);
                // SAFETY: the same row of the output buffer, written by this call only; `tmp` is
                // a separate allocation.
                unsafe { std::ptr::copy_nonoverlapping(tmp.as_ptr(), (yb as *mut f32).add(row * n), n) };
            }
        }
        RowKind::GroupNorm { eps, plane } => {
            let n = op.n;
            if n == 0 || plane == 0 || op.scale.is_empty() {
                return;
            }
            let mut tmp = vec![0f32; n];
            for g in begin..end {
                // SAFETY: group `g` (a unit of the step) is the elements `g * n..(g + 1) * n` of
                // the input buffer, which no call writes during the step.
                let x = unsafe { std::slice::from_raw_parts((xb as *const f32).add(g * n), n) };
                norm::group_norm_row(x, g * n, plane, &op.scale, &op.bias, eps, &mut tmp);
                // SAFETY: the same group of the output buffer, written by this call only; `tmp`
                // is a separate allocation.
                unsafe { std::ptr::copy_nonoverlapping(tmp.as_ptr(), (yb as *mut f32).add(g * n), n) };
            }
        }
        RowKind::WidenF16 | RowKind::WidenBf16 | RowKind::RoundF16 | RowKind::RoundBf16 => {
            // The `half` crate's slice conversions use F16C when the CPU has it.
            use half::slice::HalfFloatSliceExt;
            if s >= e {
                return;
            }
            let len = e - s;
            // Each block below: elements `s..e` (`e <= op.n`, this call's units) lie in
            // both buffers, which are distinct. Buffers are 64-byte aligned in the arena and `s`
            // is a multiple of CHUNK, so the element pointers are aligned for their types.
            match op.kind {
                RowKind::WidenF16 => {
                    // SAFETY: see the comment before the match.
                    let (x, y) = unsafe {
                        (
                            std::slice::from_raw_parts((xb as *const f16).add(s), len),
                            std::slice::from_raw_parts_mut((yb as *mut f32).add(s), len),
                        )
                    };
                    x.convert_to_f32_slice(y);
                }
                RowKind::WidenBf16 => {
                    // SAFETY: see the comment before the match.
                    let (x, y) = unsafe {
                        (
                            std::slice::from_raw_parts((xb as *const bf16).add(s), len),
                            std::slice::from_raw_parts_mut((yb as *mut f32).add(s), len),
                        )
                    };
                    x.convert_to_f32_slice(y);
                }
                RowKind::RoundF16 => {
                    // SAFETY: see the comment before the match.
                    let (x, y) = unsafe {
                        (
                            std::slice::from_raw_parts((xb as *const f32).add(s), len),
                            std::slice::from_raw_parts_mut((yb as *mut f16).add(s), len),
                        )
                    };
                    y.convert_from_f32_slice(x);
                }
                _ => {
                    // SAFETY: see the comment before the match.
                    let (x, y) = unsafe {
                        (
                            std::slice::from_raw_parts((xb as *const f32).add(s), len),
                            std::slice::from_raw_parts_mut((yb as *mut bf16).add(s), len),
                        )
                    };
                    y.convert_from_f32_slice(x);
                }
            }
        }
    }
}

/// Copies `run` elements of type `T`: output elements `o..o + run` from input elements `src`,
/// `src + step`, ...
///
/// # Safety
/// Both ranges lie inside their buffers.
unsafe fn strided_copy<T: Copy>(x: *const u8, y: *mut u8, src: usize, step: usize, o: usize, run: usize) {
    // SAFETY: the caller guarantees output elements `o..o + run` and input elements `src + k * step` (`k <
    // run`) lie inside their buffers; accesses are unaligned, so any offset is fine.
    unsafe {
        let (x, y) = (x as *const T, y as *mut T);
        for k in 0..run {
            y.add(o + k).write_unaligned(x.add(src + k * step).read_unaligned());
        }
    }
}
