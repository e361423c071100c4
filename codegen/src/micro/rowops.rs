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
    /// A strided view of elements of `elem` bytes (any dtype): a transpose, a slice, a gather at
    /// constant indices in arithmetic progression. Output element `o`, written as digits over the
    /// output dims, reads the input at `base + sum(digit * stride)` (dims, strides and base in
    /// [`RowOp::index`]); units are [`CHUNK`]s of output elements.
    StridedView {
        elem: usize,
    },
    /// The exact GELU as exported (`Div`, `Erf`, `Add`, `Mul` by the input, `Mul`): `y = ((erf(x
    /// / div) + one) * x) * half` on f32, each operation rounded to f32 as its own node would be
    /// (the operands of an add or multiply in either order give the same value; only which of
    /// two NaNs comes out could differ), `erf` the exact one of [`super::transcendental`]; units
    /// are [`CHUNK`]s.
    Gelu {
        div: f32,
        one: f32,
        half: f32,
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
    /// f32 `y = a op b` (add, sub, mul or div) under numpy broadcasting: output element `o`,
    /// written as digits over the output dims, reads `a` at `sum(digit * sa)` and `b` at
    /// `sum(digit * sb)` (dims, `sa` and `sb` in [`RowOp::index`], a broadcast axis having
    /// stride 0). Operand `a` is the step's input and `b` its second input, except that the
    /// one constant operand, if any (`const_a` or `const_b`), is [`RowOp::scale`]. Units are
    /// [`CHUNK`]s of output elements.
    BroadcastF32 {
        op: qforge_ir::BinaryOp,
        const_a: bool,
        const_b: bool,
    },
    /// An f32 reduction over some axes, as the interpreter computes it: each output accumulates
    /// its inputs in row-major input order from the initial value (f32 arithmetic; a mean
    /// divides the sum by the count once; max keeps the first NaN). [`RowOp::index`] holds the
    /// input rank `r`, the kept dims (1 where reduced), their input strides, the reduced axes'
    /// dims and their input strides (`r` values each). Units are [`CHUNK`]s of outputs.
    Reduce {
        kind: ReduceKind,
    },
    /// f32 batched matrix product of two activations: per batch `p`, the `m x k` matrix of `a`
    /// at element `index[2p]` times the `k x n` matrix of `b` (the second input) at
    /// `index[2p + 1]` ([`RowOp::n`] is `n`), each output element accumulated over `k` in plain
    /// order from zero with a separate multiply and add, as the interpreter's
    /// [`qforge_ir::interp`] matmul does. Units are output rows (`batches * m`).
    MatMulF32 {
        m: usize,
        k: usize,
    },
    /// Quantized add of two u8/i8 operands under numpy broadcasting with ONNX Runtime's
    /// QLinearAdd formula ([`qforge_ir::numerics::QAddParams`], `p` built with the operands in
    /// the kernel's order: `swap` when ORT hands input 0 to its kernel second, as the
    /// interpreter decides): offsets as in [`RowKind::BroadcastF32`], a constant operand's bytes
    /// in [`RowOp::lut`]; the result saturates to `out`. Units are [`CHUNK`]s of outputs.
    BroadcastQAdd {
        p: qforge_ir::numerics::QAddParams,
        swap: bool,
        a_signed: bool,
        b_signed: bool,
        out: DType,
        const_a: bool,
        const_b: bool,
    },
    /// The integer matrix product of two u8/i8 activations (batches paired as in
    /// [`RowKind::MatMulF32`]): `acc = sum (a - za) * (b - zb)` in i32, then
    /// [`RowOp::epilogue`] per column ([`crate::spec::apply_scalar`]), stored as `store`. Units
    /// are output rows.
    QMatMul {
        m: usize,
        k: usize,
        a_signed: bool,
        b_signed: bool,
        za: i32,
        zb: i32,
        store: crate::spec::Store,
    },
    /// A constant's bytes ([`RowOp::lut`]) copied into the output buffer (a concatenation's
    /// constant operand, such as a transformer's class token); units are [`CHUNK`]s of bytes.
    Fill,
    /// A dynamic quantization chain's matrix product ([`super::dynamic`], its sizes and
    /// weights in [`RowOp::dynamic`]); units are blocks of [`super::dynamic::ROWS`] output rows.
    DynamicMatMul,
    /// A dynamic quantization chain's convolution ([`super::dynamic::run_conv`], its geometry
    /// and weights in [`RowOp::dynamic_conv`]), written in NHWC; units are blocks of
    /// [`super::dynamic::ROWS`] output pixels.
    DynamicConv,
    /// ONNX Gather of constant data ([`RowOp::lut`]: the table's bytes) at indices read from the
    /// step's input (i64, or i32 with `i32_indices`), along axis 0 of a table of rows of `row`
    /// bytes (`rows` of them; an embedding lookup): output row `p` is table row `idx[p]` (a
    /// negative index counts from the end). An index out of range raises [`RowOp::fault`] and
    /// leaves its row zero. Units are output rows.
    GatherIndexed {
        rows: usize,
        row: usize,
        i32_indices: bool,
    },
    /// ONNX Cast between bool, u8, i8, i32, i64 and f32 with the interpreter's element rules
    /// (`qforge_ir::interp`'s cast: a float to an integer truncates and saturates, an integer to
    /// an integer keeps the low bits, anything to bool is `!= 0`, an integer to f32 rounds once
    /// to nearest even); units are [`CHUNK`]s of elements.
    CastElems {
        from: DType,
        to: DType,
    },
    /// Boolean `and` or `or` (bytes 0/1) under numpy broadcasting, offsets as in
    /// [`RowKind::BroadcastF32`] (a constant operand's bytes in [`RowOp::lut`]); units are
    /// [`CHUNK`]s of outputs.
    BroadcastBool {
        op: qforge_ir::BinaryOp,
        const_a: bool,
        const_b: bool,
    },
    /// ONNX Where of a bool condition (the step's input) and two f32 operands under numpy
    /// broadcasting: [`RowOp::index`] holds the output dims and the three operands' strides; a
    /// constant `a` is [`RowOp::scale`], a constant `b` [`RowOp::bias`], at most one of them
    /// the second input. Units are [`CHUNK`]s of outputs.
    WhereF32 {
        const_a: bool,
        const_b: bool,
    },
    /// ONNX Gather of an activation at constant indices of any shape and order: output row
    /// `(o, p)` is input row `o * dim + index[p]` (rows of `row` bytes, the axis's `dim`
    /// positions, `count` indices in [`RowOp::index`], normalized). Units are output rows.
    GatherRows {
        dim: usize,
        count: usize,
        row: usize,
    },
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

/// The reduction a [`RowKind::Reduce`] step computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceKind {
    Sum,
    Mean,
    Max,
}

impl RowKind {
    /// The error of a step whose [`RowOp::fault`] was raised.
    pub fn fault_message(&self) -> &'static str {
        match self {
            RowKind::GatherIndexed { .. } => "an index is out of range for the gathered axis",
            _ => "the step met data it cannot compute",
        }
    }
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

/// A pad in plain order over elements `s..e` of the output (dims `dout`) from the input (dims
/// `din`): output position `(n, c, h, w)` reads the input at the four maps' entries, or is
/// `fill` where a map has none; one row of the last axis at a time.
///
/// # Safety
/// Elements `s..e` lie in the output buffer at `y` (of `T`s) and belong to this call only;
/// every mapped position lies in the input buffer at `x`; the buffers are distinct.
#[allow(clippy::too_many_arguments)]
unsafe fn pad_rows<T: Copy>(
    x: *const u8,
    y: *mut u8,
    s: usize,
    e: usize,
    din: &[usize; 4],
    dout: &[usize; 4],
    maps: &[Vec<Option<usize>>; 4],
    fill: T,
) {
    let (x, y) = (x as *const T, y as *mut T);
    let wd = dout[3].max(1);
    let mut i = s;
    while i < e {
        let (n, c, h, w0) = position(dout, false, i);
        let run = (wd - w0).min(e - i);
        let row = match (maps[0][n], maps[1][c], maps[2][h]) {
            (Some(a), Some(b), Some(p)) => Some(offset(din, false, a, b, p, 0)),
            _ => None,
        };
        for (k, m) in maps[3][w0..w0 + run].iter().enumerate() {
            let v = match (row, m) {
                // SAFETY: a mapped position lies inside the input (the caller's contract).
                (Some(r), Some(q)) => unsafe { x.add(r + q).read_unaligned() },
                _ => fill,
            };
            // SAFETY: output element `i + k < e` is this call's.
            unsafe { y.add(i + k).write_unaligned(v) };
        }
        i += run;
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

/// The longest reduction of products of two centered bytes whose sums f32 holds exactly:
/// `258 * 255 * 255 < 2^24`.
const EXACT_F32_TERMS: usize = 258;

/// [`numerics::saturate_f64_wide`] of `v` into the integer range `lo..=hi` of an 8-bit type:
/// clamped first (the bounds are integers, so clamping before rounding is clamping after it),
/// then rounded half to even by adding and subtracting 1.5 * 2^52, where the f64 spacing is 1
/// (round-to-nearest-even arithmetic); NaN gives 0. Without the rounding call and the f64 to
/// i128 conversion (a library call) the saturating form makes per element.
#[inline(always)]
fn byte_of(v: f64, lo: f64, hi: f64) -> i32 {
    const MAGIC: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52
    if v.is_nan() {
        return 0;
    }
    ((v.clamp(lo, hi) + MAGIC) - MAGIC) as i32
}

/// `out[t] = x[t]` widened to f64 (exact), for the `out.len()` elements of an f32, u8 or i8
/// buffer from element `at`.
///
/// # Safety
/// Those elements lie in the buffer at `x`, of element type `dtype`.
unsafe fn read_run_f64(x: *const u8, dtype: DType, at: usize, out: &mut [f64]) {
    // SAFETY: the caller's contract; f32 buffers are 64-byte aligned in the arena.
    unsafe {
        match dtype {
            DType::F32 => {
                let src = std::slice::from_raw_parts((x as *const f32).add(at), out.len());
                for (o, &v) in out.iter_mut().zip(src) {
                    *o = v as f64;
                }
            }
            DType::U8 => {
                let src = std::slice::from_raw_parts(x.add(at), out.len());
                for (o, &v) in out.iter_mut().zip(src) {
                    *o = v as f64;
                }
            }
            _ => {
                let src = std::slice::from_raw_parts((x as *const i8).add(at), out.len());
                for (o, &v) in out.iter_mut().zip(src) {
                    *o = v as f64;
                }
            }
        }
    }
}

/// A resize of an NHWC tensor over output elements `s..e`, a pixel's run of channels at a time.
/// The H pass of an output row is computed once for every input column and all channels (the
/// same values the per-element path computes for each output pixel again), then each output
/// pixel applies its W taps to the columns it reads; every channel's value is accumulated
/// exactly as [`apply_taps`] does for one element (in f64 from 0, the W taps' weighted sum of
/// the H taps' weighted sums, in tap order) and rounded once to `dtype`.
///
/// # Safety
/// As for the per-element path: the taps index inside the input's axes, `s..e` are this call's
/// units of the output.
#[allow(clippy::too_many_arguments)]
unsafe fn resize_nhwc(
    xb: *const u8,
    yb: *mut u8,
    s: usize,
    e: usize,
    din: &[usize; 4],
    dout: &[usize; 4],
    dtype: DType,
    h: Option<&[Taps]>,
    w: Option<&[Taps]>,
    extrapolation: f64,
) {
    let [_, c, oh_n, ow_n] = dout.map(|v| v.max(1));
    let w_in = din[3].max(1);
    // the H pass of the current output row (image n, row oh): w_in columns of c channels
    let mut hrow = vec![0f64; w_in * c];
    let mut row_of: Option<(usize, usize)> = None;
    let mut px = vec![0f64; c];
    let mut acc = vec![0f64; c];
    // linear interpolation's two W taps for every output column, when every column has two
    // (f32 results): whole pixels of a row then go through one vector loop
    let taps2: Option<Vec<(usize, f64, usize, f64)>> = match (dtype, w) {
        (DType::F32, Some(t)) => t
            .iter()
            .map(|tp| match tp {
                Taps::Weighted(ws) if ws.len() == 2 => Some((ws[0].0, ws[0].1, ws[1].0, ws[1].1)),
                _ => None,
            })
            .collect(),
        _ => None,
    };
    // `k` pixels on along an output row (not past its end), then to the next row or image
    let advance = |k: usize, ow: &mut usize, oh: &mut usize, n: &mut usize| {
        *ow += k;
        if *ow == ow_n {
            *ow = 0;
            *oh += 1;
            if *oh == oh_n {
                *oh = 0;
                *n += 1;
            }
        }
    };
    let mut i = s;
    // the position of element `i`, found once and then stepped pixel by pixel (no divisions
    // per pixel)
    let (pixel, mut c0) = (i / c, i % c);
    let (mut ow, r) = (pixel % ow_n, pixel / ow_n);
    let (mut oh, mut n) = (r % oh_n, r / oh_n);
    while i < e {
        let run = (c - c0).min(e - i);
        if row_of != Some((n, oh)) {
            for (ww, out) in hrow.chunks_exact_mut(c).enumerate() {
                let at = |hh: usize| offset(din, true, n, 0, hh, ww);
                match h.map(|t| &t[oh]) {
                    // SAFETY: the caller's contract (taps and `oh` index inside the input).
                    None => unsafe { read_run_f64(xb, dtype, at(oh), out) },
                    Some(Taps::Extrapolate) => out.fill(extrapolation),
                    Some(Taps::Pick(None)) => out.fill(0.0),
                    // SAFETY: as above.
                    Some(Taps::Pick(Some(j))) => unsafe { read_run_f64(xb, dtype, at(*j), out) },
                    Some(Taps::Weighted(ws)) => {
                        out.fill(0.0);
                        for &(j, wt) in ws {
                            // SAFETY: as above.
                            unsafe { read_run_f64(xb, dtype, at(j), &mut px) };
                            for (o, &v) in out.iter_mut().zip(px.iter()) {
                                *o += wt * v;
                            }
                        }
                    }
                }
            }
            row_of = Some((n, oh));
        }
        if let Some(t2) = taps2.as_deref().filter(|_| c0 == 0 && run == c) {
            // the whole pixels of this output row inside `i..e`
            let px_n = ((e - i) / c).min(ow_n - ow);
            if px_n > 1 {
                // SAFETY: output elements `i..i + px_n * c` (whole pixels of this row) belong
                // to this call's units only.
                let y = unsafe { std::slice::from_raw_parts_mut((yb as *mut f32).add(i), px_n * c) };
                resize_row_w2(&hrow, c, &t2[ow..ow + px_n], y);
                i += px_n * c;
                advance(px_n, &mut ow, &mut oh, &mut n);
                continue;
            }
        }
        let col = |j: usize| &hrow[j * c + c0..j * c + c0 + run];
        let out = &mut acc[..run];
        match w.map(|t| &t[ow]) {
            None => out.copy_from_slice(col(ow)),
            Some(Taps::Extrapolate) => out.fill(extrapolation),
            Some(Taps::Pick(None)) => out.fill(0.0),
            Some(Taps::Pick(Some(j))) => out.copy_from_slice(col(*j)),
            // linear interpolation's two taps in one pass: `(0 + w0 * a) + w1 * b`, the
            // interpreter's sum from 0 in tap order
            Some(Taps::Weighted(ws)) if ws.len() == 2 => {
                let ((j0, w0), (j1, w1)) = (ws[0], ws[1]);
                for ((o, &a), &b) in out.iter_mut().zip(col(j0)).zip(col(j1)) {
                    *o = (0.0 + w0 * a) + w1 * b;
                }
            }
            Some(Taps::Weighted(ws)) => {
                out.fill(0.0);
                for &(j, wt) in ws {
                    for (o, &v) in out.iter_mut().zip(col(j)) {
                        *o += wt * v;
                    }
                }
            }
        }
        // SAFETY: output elements `i..i + run` belong to this call's units only.
        unsafe {
            match dtype {
                DType::F32 => {
                    let y = std::slice::from_raw_parts_mut((yb as *mut f32).add(i), run);
                    for (o, &v) in y.iter_mut().zip(out.iter()) {
                        *o = v as f32;
                    }
                }
                DType::U8 => {
                    for (t, &v) in out.iter().enumerate() {
                        yb.add(i + t).write(byte_of(v, 0.0, 255.0) as u8);
                    }
                }
                _ => {
                    for (t, &v) in out.iter().enumerate() {
                        (yb as *mut i8).add(i + t).write(byte_of(v, -128.0, 127.0) as i8);
                    }
                }
            }
        }
        i += run;
        c0 = 0;
        advance(1, &mut ow, &mut oh, &mut n);
    }
}

qforge_ir::multiversion! {
    baseline = resize_row_w2_baseline;
    /// The W pass of linear interpolation over whole output pixels of one NHWC row: pixel `p`'s
    /// `c` channels are `(0 + w0 * h[j0]) + w1 * h[j1]` of the H pass `h` (`c` values per input
    /// column), `taps[p] = (j0, w0, j1, w1)`, in f64 and rounded once to f32 ([`resize_nhwc`]'s
    /// arithmetic); compiled for AVX-512 and AVX2 as well.
    pub fn resize_row_w2(h: &[f64], c: usize, taps: &[(usize, f64, usize, f64)], out: &mut [f32]) -> () {
        if c == 0 {
            return;
        }
        for (o, &(j0, w0, j1, w1)) in out.chunks_exact_mut(c).zip(taps) {
            let (a, b) = (&h[j0 * c..j0 * c + c], &h[j1 * c..j1 * c + c]);
            for ((ov, &av), &bv) in o.iter_mut().zip(a).zip(b) {
                *ov = ((0.0 + w0 * av) + w1 * bv) as f32;
            }
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
    /// [`RowKind::StridedView`]: the output dims, then for each output axis the input stride
    /// (in elements) it walks, then the base offset. A stride is an `isize` stored in two's
    /// complement (a negative slice step walks backwards); offsets are computed with wrapping
    /// arithmetic, which gives the exact in-range offset.
    pub index: Vec<usize>,
    /// [`RowKind::Lut8`]: its byte tables, 256 per table.
    pub lut: Vec<u8>,
    /// Arena offset of a second input ([`RowKind::GateMul`]'s gate).
    pub x2: usize,
    /// [`RowKind::Spatial`]: the resize or pad.
    pub plan: Option<Arc<SpatialPlan>>,
    /// [`RowKind::QMatMul`]: the epilogue each accumulator goes through (bias, then the
    /// requantization or dequantization), as a fused kernel's epilogue list.
    pub epilogue: Vec<crate::spec::Step>,
    /// [`RowKind::DynamicMatMul`]: the packed weights and their scales.
    pub dynamic: Option<Arc<super::dynamic::DynamicMatMul>>,
    /// [`RowKind::DynamicConv`]: the geometry, packed weights and their scales.
    pub dynamic_conv: Option<Arc<super::dynamic::DynamicConv>>,
    /// Raised by a step that met data it cannot compute ([`RowKind::GatherIndexed`]: an index
    /// out of range); the executor then fails the run with [`RowKind::fault_message`].
    pub fault: Option<Arc<std::sync::atomic::AtomicBool>>,
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
            epilogue: vec![],
            dynamic: None,
            dynamic_conv: None,
            fault: None,
        }
    }

    /// Units of work `begin..end` ranges over.
    pub fn units(&self, total: usize) -> usize {
        match self.kind {
            RowKind::Softmax { .. } => total / self.n.max(1),
            RowKind::LayerNorm { .. } | RowKind::GroupNorm { .. } | RowKind::MatMulF32 { .. } => total / self.n.max(1),
            RowKind::DynamicMatMul | RowKind::DynamicConv => (total / self.n.max(1)).div_ceil(super::dynamic::ROWS),
            _ => self.n.div_ceil(CHUNK),
        }
    }
}

/// `y[i] = lut[(c0 + i) % tables * 256 + x[i]]`: per-channel byte tables over channels-last
/// bytes whose first element is channel `c0` (`lut` holds `tables` tables of 256).
fn lut_rows(x: &[u8], y: &mut [u8], lut: &[u8], tables: usize, c0: usize) {
    // the rest of the first row, then whole rows, then the start of the last
    let head = ((tables - c0) % tables).min(x.len());
    for (i, (yv, &xv)) in y[..head].iter_mut().zip(&x[..head]).enumerate() {
        *yv = lut[(c0 + i) * 256 + xv as usize];
    }
    let mut yr = y[head..].chunks_exact_mut(tables);
    let mut xr = x[head..].chunks_exact(tables);
    for (yrow, xrow) in (&mut yr).zip(&mut xr) {
        for ((yv, &xv), t) in yrow.iter_mut().zip(xrow).zip(lut.chunks_exact(256)) {
            *yv = t[xv as usize];
        }
    }
    for ((yv, &xv), t) in yr.into_remainder().iter_mut().zip(xr.remainder()).zip(lut.chunks_exact(256)) {
        *yv = t[xv as usize];
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

/// `y[j] = f(x[j], v[channel of element s + j])`, the channel being `i % c` in NHWC and
/// `(i / hw) % c` in plain order: walked in runs that share one channel (plain) or cover
/// consecutive channels (NHWC), so the inner loops have no division and vectorize. `f` takes the
/// tensor's value first and the constant second.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn channel_runs(
    x: &[f32],
    y: &mut [f32],
    s: usize,
    v: &[f32],
    nhwc: bool,
    c: usize,
    hw: usize,
    f: impl Fn(f32, f32) -> f32,
) {
    let mut j = 0;
    while j < x.len() {
        let i = s + j;
        if nhwc {
            let ch = i % c;
            let len = (c - ch).min(x.len() - j);
            for ((yv, &xv), &k) in y[j..j + len].iter_mut().zip(&x[j..j + len]).zip(&v[ch..ch + len]) {
                *yv = f(xv, k);
            }
            j += len;
        } else {
            let k = v[(i / hw) % c];
            let len = (hw - i % hw).min(x.len() - j);
            for (yv, &xv) in y[j..j + len].iter_mut().zip(&x[j..j + len]) {
                *yv = f(xv, k);
            }
            j += len;
        }
    }
}

/// The output dims and the two operands' strides of a two-operand broadcast step
/// ([`RowOp::index`]), or `None` for an index of another length.
fn broadcast_layout(index: &[usize]) -> Option<(&[usize], &[usize], &[usize])> {
    let rank = index.len() / 3;
    (rank != 0 && index.len() == 3 * rank).then(|| (&index[..rank], &index[rank..2 * rank], &index[2 * rank..]))
}

/// The two operands of a broadcast step: the step's constant on its side (`const_a`,
/// `const_b`), else the input and the second input.
fn operands<T>(konst: *const T, x: *const T, x2: *const T, const_a: bool, const_b: bool) -> (*const T, *const T) {
    match (const_a, const_b) {
        (true, _) => (konst, x),
        (_, true) => (x, konst),
        _ => (x, x2),
    }
}

/// Calls `f(o, offset_a, offset_b, run)` for the runs of output elements `s..e` along the last
/// axis of `dims` (offsets in elements, by the strides `sa` and `sb`).
fn for_each_run(
    s: usize,
    e: usize,
    dims: &[usize],
    sa: &[usize],
    sb: &[usize],
    mut f: impl FnMut(usize, usize, usize, usize),
) {
    let rank = dims.len();
    let last = dims[rank - 1].max(1);
    let (la, lb) = (sa[rank - 1], sb[rank - 1]);
    let mut o = s;
    while o < e {
        let (mut rem, j) = (o / last, o % last);
        let (mut oa, mut ob) = (j * la, j * lb);
        for ax in (0..rank - 1).rev() {
            let d = dims[ax].max(1);
            oa += (rem % d) * sa[ax];
            ob += (rem % d) * sb[ax];
            rem /= d;
        }
        let run = (last - j).min(e - o);
        f(o, oa, ob, run);
        o += run;
    }
}

/// `y[o] = f(a[offset_a(o)], b[offset_b(o)])` for output elements `s..e` (of any element types),
/// the offsets (in elements) being the
/// digits of `o` over `dims` dotted with `sa` and `sb`; walked in runs along the last axis, so the
/// inner loop has no division.
///
/// # Safety
/// Every offset of an output in `s..e` lies inside its operand, and `y` has `e` elements that no
/// other thread writes in `s..e`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn broadcast_runs<A: Copy, B: Copy, Y>(
    a: *const A,
    b: *const B,
    y: *mut Y,
    s: usize,
    e: usize,
    dims: &[usize],
    sa: &[usize],
    sb: &[usize],
    f: impl Fn(A, B) -> Y,
) {
    let (la, lb) = (sa[dims.len() - 1], sb[dims.len() - 1]);
    for_each_run(s, e, dims, sa, sb, |o, oa, ob, run| {
        // SAFETY: the caller's contract.
        unsafe {
            let out = std::slice::from_raw_parts_mut(y.add(o), run);
            match (la, lb) {
                (1, 1) => {
                    let (av, bv) =
                        (std::slice::from_raw_parts(a.add(oa), run), std::slice::from_raw_parts(b.add(ob), run));
                    for ((yv, &p), &q) in out.iter_mut().zip(av).zip(bv) {
                        *yv = f(p, q);
                    }
                }
                (1, 0) => {
                    let (av, q) = (std::slice::from_raw_parts(a.add(oa), run), b.add(ob).read());
                    for (yv, &p) in out.iter_mut().zip(av) {
                        *yv = f(p, q);
                    }
                }
                (0, 1) => {
                    let (p, bv) = (a.add(oa).read(), std::slice::from_raw_parts(b.add(ob), run));
                    for (yv, &q) in out.iter_mut().zip(bv) {
                        *yv = f(p, q);
                    }
                }
                _ => {
                    for (t, yv) in out.iter_mut().enumerate() {
                        *yv = f(a.add(oa + t * la).read(), b.add(ob + t * lb).read());
                    }
                }
            }
        }
    });
}

/// `out[r * n + c0 + i] = sum_t a[r * k + t] * b[t * n + c0 + i]` for `R` rows and `W` columns
/// from `c0`, the `R * W` sums in registers, each over `t` in plain order (the rows side by side
/// so that their additions overlap instead of each waiting on the one before).
#[inline(always)]
fn matmul_block<const R: usize, const W: usize>(out: &mut [f32], a: &[f32], b: &[f32], n: usize, k: usize, c0: usize) {
    let mut acc = [[0f32; W]; R];
    for kk in 0..k {
        let bk = &b[kk * n + c0..kk * n + c0 + W];
        for (r, accr) in acc.iter_mut().enumerate() {
            let av = a[r * k + kk];
            for i in 0..W {
                accr[i] += av * bk[i];
            }
        }
    }
    for (r, accr) in acc.iter().enumerate() {
        out[r * n + c0..r * n + c0 + W].copy_from_slice(accr);
    }
}

/// [`matmul_rows_f32`] on `R` rows: column blocks of 32, 16 and 8, then the last columns one by
/// one.
#[inline(always)]
fn matmul_rows<const R: usize>(out: &mut [f32], a: &[f32], b: &[f32], n: usize, k: usize) {
    let mut c0 = 0;
    while c0 + 32 <= n {
        matmul_block::<R, 32>(out, a, b, n, k, c0);
        c0 += 32;
    }
    while c0 + 16 <= n {
        matmul_block::<R, 16>(out, a, b, n, k, c0);
        c0 += 16;
    }
    while c0 + 8 <= n {
        matmul_block::<R, 8>(out, a, b, n, k, c0);
        c0 += 8;
    }
    for r in 0..R {
        for j in c0..n {
            out[r * n + j] = a[r * k..(r + 1) * k].iter().enumerate().fold(0.0, |s, (t, &av)| s + av * b[t * n + j]);
        }
    }
}

qforge_ir::multiversion! {
    baseline = matmul_rows_f32_baseline;
    /// Rows of an f32 matrix product: `out[r * n + j] = sum_t a[r * k + t] * b[t * n + j]` for
    /// the `out.len() / n` rows of `a` (`k` values each), accumulated over `t` in plain order
    /// from zero with a separate multiply and add, as the interpreter's matmul does; four rows
    /// at a time. Compiled for AVX-512 and AVX2 as well (Rust never contracts `a * b + c` into a
    /// fused multiply-add), the same values in every version.
    pub fn matmul_rows_f32(out: &mut [f32], a: &[f32], b: &[f32], n: usize) -> () {
        let rows = out.len().checked_div(n).unwrap_or(0);
        if rows == 0 {
            return;
        }
        let k = a.len() / rows;
        let mut r = 0;
        while r + 4 <= rows {
            matmul_rows::<4>(&mut out[r * n..(r + 4) * n], &a[r * k..(r + 4) * k], b, n, k);
            r += 4;
        }
        while r < rows {
            matmul_rows::<1>(&mut out[r * n..(r + 1) * n], &a[r * k..(r + 1) * k], b, n, k);
            r += 1;
        }
    }
}

/// The shape and operand types of an integer product of two u8/i8 activations
/// ([`RowKind::QMatMul`]): rows of `k` bytes times a `k x n` matrix, each operand's signedness
/// and zero point.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QMatMulParams {
    pub k: usize,
    pub n: usize,
    pub a_signed: bool,
    pub b_signed: bool,
    pub za: i32,
    pub zb: i32,
}

impl QMatMulParams {
    /// Whether [`qmatmul_sums`] computes these sums exactly: at most `EXACT_F32_TERMS` products,
    /// and each zero point in its operand type's range (u8: 0..=255, i8: -128..=127), so that a
    /// centered byte is at most 255 in magnitude.
    pub(crate) fn exact_in_f32(&self) -> bool {
        let in_range = |signed: bool, z: i32| if signed { (-128..=127).contains(&z) } else { (0..=255).contains(&z) };
        self.k <= EXACT_F32_TERMS && in_range(self.a_signed, self.za) && in_range(self.b_signed, self.zb)
    }
}

/// Reusable buffers of [`qmatmul_sums`]: the centered operands as f32 and the f32 sums.
#[derive(Default)]
pub(crate) struct QMatMulScratch {
    a: Vec<f32>,
    b: Vec<f32>,
    /// `(k, n, ld)` of the right matrix in `b`, whose padding columns are zero.
    b_shape: (usize, usize, usize),
    sums: Vec<f32>,
}

/// `dst[i] = (src[i] - zp) as f32`, the bytes read as i8 where `signed`: a byte centered on a
/// zero point of its type (magnitude at most 255) is an exact f32.
#[inline(always)]
fn center_f32(dst: &mut [f32], src: &[u8], signed: bool, zp: i32) {
    if signed {
        for (o, &v) in dst.iter_mut().zip(src) {
            *o = (v as i8 as i32 - zp) as f32;
        }
    } else {
        for (o, &v) in dst.iter_mut().zip(src) {
            *o = (v as i32 - zp) as f32;
        }
    }
}

qforge_ir::multiversion! {
    baseline = qmatmul_sums_baseline;
    /// The i32 sums of one batch of [`RowKind::QMatMul`] whose parameters `q` are
    /// [`QMatMulParams::exact_in_f32`] (nothing is written otherwise):
    /// `acc[r * ld + j] = sum_t (a[r * k + t] - za) * (b[t * n + j] - zb)` for the `acc.len() /
    /// ld` rows of `a` (`ld >= n`; the sums of columns `n..ld` are 0). Every product of two centered
    /// bytes and every partial sum of at most `EXACT_F32_TERMS` of them is an integer below 2^24,
    /// exact in f32, so the f32 row kernel (vector multiplies and adds, any order) gives the
    /// integer sums. The right matrix's rows are padded with zero columns to `ld` (a multiple of
    /// 8 spares the row kernel its column-by-column tail). Compiled for AVX-512 and AVX2 as well,
    /// the same sums in every version.
    pub(crate) fn qmatmul_sums(
        acc: &mut [i32],
        ld: usize,
        a: &[u8],
        b: &[u8],
        q: &QMatMulParams,
        s: &mut QMatMulScratch,
    ) -> () {
        let (k, n) = (q.k, q.n);
        let rows = acc.len().checked_div(ld).unwrap_or(0);
        if rows == 0 || ld < n || a.len() < rows * k || b.len() < k * n || !q.exact_in_f32() {
            return;
        }
        if k == 0 {
            acc.fill(0);
            return;
        }
        // the padding columns are zero from the first batch of a shape on: only columns `..n` of
        // a row are written
        if s.b_shape != (k, n, ld) {
            s.b.clear();
            s.b.resize(k * ld, 0.0);
            s.b_shape = (k, n, ld);
        }
        if ld == n {
            center_f32(&mut s.b, &b[..k * n], q.b_signed, q.zb);
        } else {
            // centered in one pass (a loop of `k * n`, not `k` loops of `n`), then spread into
            // the padded rows
            s.sums.resize(k * n, 0.0);
            center_f32(&mut s.sums[..k * n], &b[..k * n], q.b_signed, q.zb);
            for (drow, srow) in s.b.chunks_exact_mut(ld).zip(s.sums.chunks_exact(n)) {
                drow[..n].copy_from_slice(srow);
            }
        }
        // every element of these is written before it is read
        s.a.resize(rows * k, 0.0);
        center_f32(&mut s.a[..rows * k], &a[..rows * k], q.a_signed, q.za);
        s.sums.resize(rows * ld, 0.0);
        let sums = &mut s.sums[..rows * ld];
        matmul_rows_f32_baseline(sums, &s.a[..rows * k], &s.b, ld);
        for (o, &v) in acc.iter_mut().zip(sums.iter()) {
            // SAFETY: `v` is an integer sum below 2^24 in magnitude (see above), finite and
            // inside i32's range
            *o = unsafe { v.to_int_unchecked::<i32>() };
        }
    }
}

/// The maximum of a lane as [`norm::softmax_lane`]'s plain-order scan finds it (`v > m` or `v`
/// NaN replaces `m`), but in 16 independent columns: the largest value, or the lane's last NaN
/// when it has one. Where the scan and the columns could differ, between `-0.0` and `+0.0`, the
/// difference never reaches the result: `v - m` is the same for every nonzero `v` and a zero for
/// a zero `v`, whose exponential is 1 whatever its sign.
#[inline(always)]
fn lane_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut nan = false;
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            nan |= c[i].is_nan();
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    for (i, &v) in chunks.remainder().iter().enumerate() {
        nan |= v.is_nan();
        acc[i] = if v > acc[i] { v } else { acc[i] };
    }
    if nan {
        return x.iter().rev().copied().find(|v| v.is_nan()).unwrap_or(f32::NAN);
    }
    acc.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

qforge_ir::multiversion! {
    baseline = softmax_columns_baseline;
    /// Softmax (`log`: log-softmax) of `w <= 64` lanes side by side: lane `i` is
    /// `x[k * w + i]` for the `x.len() / w` rows `k`, each computed as the interpreter's lane
    /// function computes it (the maximum by its scan in order, the exponentials of `x - max` through
    /// [`super::transcendental::softmax_exps`], the sum in order, then the division, or `(x - max) -
    /// ln(sum)`), the lanes in vector columns; `d` is scratch of `x`'s size. Compiled for
    /// AVX-512 and AVX2 as well.
    pub fn softmax_columns(x: &[f32], y: &mut [f32], d: &mut [f32], w: usize, log: bool) -> () {
        if w == 0 || w > 64 {
            return;
        }
        let mut m = [f32::NEG_INFINITY; 64];
        for row in x.chunks_exact(w) {
            for (mv, &v) in m.iter_mut().zip(row) {
                if v > *mv || v.is_nan() {
                    *mv = v;
                }
            }
        }
        for (dr, xr) in d.chunks_exact_mut(w).zip(x.chunks_exact(w)) {
            for ((dv, &xv), &mv) in dr.iter_mut().zip(xr).zip(&m) {
                *dv = xv - mv;
            }
        }
        super::transcendental::softmax_exps(d, y);
        let mut sum = [0f32; 64];
        for row in y.chunks_exact(w) {
            for (sv, &e) in sum.iter_mut().zip(row) {
                *sv += e;
            }
        }
        if log {
            let mut ls = [0f32; 64];
            for (l, &sv) in ls.iter_mut().zip(&sum).take(w) {
                *l = (sv as f64).ln() as f32;
            }
            for (yr, dr) in y.chunks_exact_mut(w).zip(d.chunks_exact(w)) {
                for ((yv, &dv), &l) in yr.iter_mut().zip(dr).zip(&ls) {
                    *yv = dv - l;
                }
            }
        } else {
            for yr in y.chunks_exact_mut(w) {
                for (yv, &sv) in yr.iter_mut().zip(&sum) {
                    *yv = numerics::flush_subnormal(*yv / sv);
                }
            }
        }
    }
}

qforge_ir::multiversion! {
    baseline = softmax_lanes_baseline;
    /// [`norm::softmax_lane`] of every lane of `n` values of `x` (a whole number of lanes; `log`:
    /// log-softmax, as the interpreter's lane function computes it), with
    /// the exponentials of 16 lanes in one [`super::transcendental::softmax_exps`] call (short lanes,
    /// such as attention over a few tokens, would otherwise pay its setup per lane). Each lane's
    /// maximum in vector columns ([`lane_max`]); the sums of 16 lanes side by side in one vector,
    /// from a transposed copy of their exponentials, each still taken over its own lane in plain
    /// order (so the same results bit for bit); compiled for AVX-512 and AVX2 as well.
    pub fn softmax_lanes(x: &[f32], y: &mut [f32], n: usize, log: bool) -> () {
        const B: usize = super::transpose::LANES;
        if n == 0 {
            return;
        }
        let lanes = x.len() / n;
        // the shifted values of one block of lanes, and their exponentials transposed (a whole
        // call's would be an allocation the size of the step, paid again on every call)
        let mut d = vec![0f32; B * n];
        let mut et = vec![0f32; B * n];
        let mut r0 = 0;
        while r0 < lanes {
            let b = B.min(lanes - r0);
            let (xb, db) = (&x[r0 * n..(r0 + b) * n], &mut d[..b * n]);
            for (dl, xl) in db.chunks_exact_mut(n).zip(xb.chunks_exact(n)) {
                let ml = lane_max(xl);
                for (dv, &xv) in dl.iter_mut().zip(xl) {
                    *dv = xv - ml;
                }
            }
            let yb = &mut y[r0 * n..(r0 + b) * n];
            super::transcendental::softmax_exps(db, yb);
            // et[j * B + l] = the j-th exponential of lane l (lanes past `b` are 0)
            super::transpose::rows_to_lanes(yb, n, &mut et);
            let mut sum = [0f32; B];
            for ej in et.chunks_exact(B) {
                for l in 0..B {
                    sum[l] += ej[l];
                }
            }
            if log {
                // log-softmax: `(x - max) - ln(sum)`, the logarithm in f64 rounded once
                for (l, (yl, dl)) in yb.chunks_exact_mut(n).zip(db.chunks_exact(n)).enumerate() {
                    let ls = (sum[l] as f64).ln() as f32;
                    for (v, &dv) in yl.iter_mut().zip(dl) {
                        *v = dv - ls;
                    }
                }
            } else {
                for (l, yl) in yb.chunks_exact_mut(n).enumerate() {
                    let sl = sum[l];
                    for v in yl.iter_mut() {
                        *v = numerics::flush_subnormal(*v / sl);
                    }
                }
            }
            r0 += b;
        }
    }
}

/// Element `i` of the `from` buffer at `x` cast to `to` into the buffer at `y`, with the
/// interpreter's rules ([`RowKind::CastElems`]).
///
/// # Safety
/// Element `i` lies in both buffers, of their element types.
unsafe fn cast_elem(x: *const u8, from: DType, y: *mut u8, to: DType, i: usize) {
    enum Elem {
        Int(i128),
        Float(f64),
    }
    // SAFETY: the caller's contract.
    let e = unsafe {
        match from {
            DType::F32 => Elem::Float((x as *const f32).add(i).read_unaligned() as f64),
            DType::I64 => Elem::Int((x as *const i64).add(i).read_unaligned() as i128),
            DType::I32 => Elem::Int((x as *const i32).add(i).read_unaligned() as i128),
            DType::I8 => Elem::Int((x as *const i8).add(i).read() as i128),
            _ => Elem::Int(x.add(i).read() as i128),
        }
    };
    let int = |e: &Elem| match *e {
        Elem::Int(v) => v,
        Elem::Float(f) => numerics::cast_float_to_int(f, to),
    };
    // SAFETY: the caller's contract.
    unsafe {
        match to {
            DType::Bool => y.add(i).write(match e {
                Elem::Int(v) => (v != 0) as u8,
                Elem::Float(f) => (f != 0.0) as u8,
            }),
            DType::F32 => (y as *mut f32).add(i).write_unaligned(match e {
                Elem::Int(v) => v as f32,
                Elem::Float(f) => f as f32,
            }),
            DType::I64 => (y as *mut i64).add(i).write_unaligned(int(&e) as i64),
            DType::I32 => (y as *mut i32).add(i).write_unaligned(int(&e) as i32),
            DType::I8 => (y as *mut i8).add(i).write(int(&e) as i8),
            _ => y.add(i).write(int(&e) as u8),
        }
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
            unsafe {
                if u == UnaryOp::HardSwish {
                    // the interpreter's values without its division (`spec::hard_swish_by_mul`)
                    map_f32(xb, yb, s, e, crate::spec::hard_swish_by_mul)
                } else {
                    per_op!(Relu, Neg, Abs, Sqrt, Tanh)
                }
            }
        }
        RowKind::ChannelBinary { op: bop, const_first, nhwc, c, hw } => {
            use qforge_ir::BinaryOp;
            if s >= e {
                return;
            }
            // SAFETY: elements `s..e` (`e <= op.n`) lie in both buffers, which are distinct; the
            // range is this call's units only, so no other thread's slice overlaps it.
            let (x, y) = unsafe {
                (
                    std::slice::from_raw_parts((xb as *const f32).add(s), e - s),
                    std::slice::from_raw_parts_mut((yb as *mut f32).add(s), e - s),
                )
            };
            let (c, hw) = (c.max(1), hw.max(1));
            // one loop per operation and operand order, over runs of one channel (plain order)
            // or of consecutive channels (NHWC), so each run is a vector loop
            macro_rules! per_op {
                ($($op:ident => |$p:ident, $q:ident| $body:expr),*) => {
                    match (bop, const_first) {
                        $(
                            (BinaryOp::$op, false) => channel_runs(x, y, s, &op.scale, nhwc, c, hw, |$p, $q| $body),
                            (BinaryOp::$op, true) => channel_runs(x, y, s, &op.scale, nhwc, c, hw, |$q, $p| $body),
                        )*
                        _ => channel_runs(x, y, s, &op.scale, nhwc, c, hw, |p, q| p * q),
                    }
                };
            }
            per_op!(Add => |p, q| p + q, Sub => |p, q| p - q, Div => |p, q| p / q, Mul => |p, q| p * q)
        }
        RowKind::BroadcastF32 { op: bop, const_a, const_b } => {
            use qforge_ir::BinaryOp;
            let Some((dims, sa, sb)) = broadcast_layout(&op.index).filter(|_| s < e) else { return };
            // SAFETY: `op.x2` is the offset of the second input's buffer inside the arena (unused
            // when an operand is the constant).
            let x2 = unsafe { arena.add(op.x2) } as *const f32;
            let (pa, pb) = operands(op.scale.as_ptr(), xb as *const f32, x2, const_a, const_b);
            let y = yb as *mut f32;
            macro_rules! per_op {
                ($($op:ident => |$p:ident, $q:ident| $body:expr),*) => {
                    match bop {
                        // SAFETY: the offsets are the broadcast positions of output elements
                        // `s..e` (this call's units), inside each operand; only this call writes
                        // those output elements.
                        $(BinaryOp::$op => unsafe { broadcast_runs(pa, pb, y, s, e, dims, sa, sb, |$p, $q| $body) },)*
                        _ => {}
                    }
                };
            }
            per_op!(Add => |p, q| p + q, Sub => |p, q| p - q, Mul => |p, q| p * q, Div => |p, q| p / q)
        }
        RowKind::Reduce { kind } => {
            let Some(&r) = op.index.first() else { return };
            if r == 0 || op.index.len() != 1 + 4 * r || s >= e {
                return;
            }
            let t = &op.index[1..];
            let (dims, strides, rdims, rstrides) = (&t[..r], &t[r..2 * r], &t[2 * r..3 * r], &t[3 * r..]);
            let count: usize = rdims.iter().product();
            let (x, y) = (xb as *const f32, yb as *mut f32);
            let init = match kind {
                ReduceKind::Max => f32::NEG_INFINITY,
                _ => 0.0,
            };
            // the reduced axes (of more than one position) in order; the innermost is walked
            // in a plain loop, the others by a digit counter
            let red: Vec<(usize, usize)> =
                rdims.iter().zip(rstrides).filter(|(d, _)| **d > 1).map(|(&d, &s)| (d, s)).collect();
            let (inner, is) = red.last().copied().unwrap_or((1, 0));
            let outer_red = &red[..red.len().saturating_sub(1)];
            // outputs in runs along the last kept axis; for each run, the reduced positions in
            // row-major order (the interpreter's accumulation order for every output)
            let (last, ls) = (dims[r - 1].max(1), strides[r - 1]);
            let mut acc = vec![0f32; last.min(e - s)];
            let mut digits = vec![0usize; outer_red.len()];
            let mut o = s;
            while o < e {
                let (mut rem, j) = (o / last, o % last);
                let mut base = j * ls;
                for a in (0..r - 1).rev() {
                    let d = dims[a].max(1);
                    base += (rem % d) * strides[a];
                    rem /= d;
                }
                let run = (last - j).min(e - o);
                let acc = &mut acc[..run];
                acc.fill(init);
                digits.fill(0);
                for _ in 0..count / inner {
                    let off0 = base + digits.iter().zip(outer_red).map(|(d, (_, s))| d * s).sum::<usize>();
                    for q in 0..inner {
                        let off = off0 + q * is;
                        // SAFETY: `off + t * ls` (t < run) is the input position of output
                        // `o + t` at this reduced position, inside the input buffer.
                        unsafe {
                            if run == 1 {
                                let v = x.add(off).read();
                                let a = &mut acc[0];
                                match kind {
                                    ReduceKind::Max => {
                                        if v > *a || v.is_nan() {
                                            *a = v;
                                        }
                                    }
                                    _ => *a += v,
                                }
                                continue;
                            }
                            match kind {
                                ReduceKind::Max => {
                                    for (t, a) in acc.iter_mut().enumerate() {
                                        let v = x.add(off + t * ls).read();
                                        if v > *a || v.is_nan() {
                                            *a = v;
                                        }
                                    }
                                }
                                _ => {
                                    for (t, a) in acc.iter_mut().enumerate() {
                                        *a += x.add(off + t * ls).read();
                                    }
                                }
                            }
                        }
                    }
                    // the next position of the outer reduced axes in row-major order
                    for (dg, (d, _)) in digits.iter_mut().zip(outer_red).rev() {
                        *dg += 1;
                        if *dg < *d {
                            break;
                        }
                        *dg = 0;
                    }
                }
                if kind == ReduceKind::Mean {
                    for a in acc.iter_mut() {
                        *a /= count as f32;
                    }
                }
                // SAFETY: outputs `o..o + run` lie in this call's units of the output buffer.
                unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), y.add(o), run) };
                o += run;
            }
        }
        RowKind::BroadcastQAdd { p, swap, a_signed, b_signed, out, const_a, const_b } => {
            let Some((dims, sa, sb)) = broadcast_layout(&op.index).filter(|_| s < e) else { return };
            // SAFETY: `op.x2` is the offset of the second input's buffer inside the arena (unused
            // when an operand is the constant).
            let x2 = unsafe { arena.add(op.x2) } as *const u8;
            let (pa, pb) = operands(op.lut.as_ptr(), xb as *const u8, x2, const_a, const_b);
            let int = |v: u8, signed: bool| if signed { v as i8 as i64 } else { v as i64 };
            let (la, lb) = (sa[dims.len() - 1], sb[dims.len() - 1]);
            if la == 1 && lb <= 1 {
                // runs along the last axis with `a` contiguous and `b` contiguous or one value:
                // the multiversioned loop (hardware FMA for `mul_add`)
                for_each_run(s, e, dims, sa, sb, |o, oa, ob, run| {
                    // SAFETY: the run's offsets lie inside each operand (`b`: one value when
                    // `lb == 0`); outputs `o..o + run` are this call's.
                    let (av, bv, yv) = unsafe {
                        (
                            std::slice::from_raw_parts(pa.add(oa), run),
                            std::slice::from_raw_parts(pb.add(ob), if lb == 0 { 1 } else { run }),
                            std::slice::from_raw_parts_mut(yb.add(o), run),
                        )
                    };
                    let k = super::int8::QAddRun { p, swap, a_signed, b_signed, out, b_scalar: lb == 0 };
                    super::int8::qadd_run(av, bv, yv, &k);
                });
                return;
            }
            let f = |x: u8, z: u8| {
                let (a, b) = (int(x, a_signed), int(z, b_signed));
                // the stored byte of the saturated result (an i8 in two's complement)
                (if swap { p.apply(b, a, out) } else { p.apply(a, b, out) }) as u8
            };
            // SAFETY: the offsets are the broadcast positions of output elements `s..e` (this
            // call's units), inside each operand; only this call writes those output elements.
            unsafe { broadcast_runs(pa, pb, yb, s, e, dims, sa, sb, f) }
        }
        RowKind::QMatMul { m, k, a_signed, b_signed, za, zb, store } => {
            use crate::spec::{apply_scalar, Lane, Step, Store};
            let n = op.n;
            if n == 0 || m == 0 {
                return;
            }
            // SAFETY: `op.x2` is the offset of the second operand's buffer inside the arena.
            let b = unsafe { arena.add(op.x2) } as *const u8;
            let a = xb as *const u8;
            let int = |v: u8, signed: bool| if signed { v as i8 as i32 } else { v as i32 };
            // the sums of a row are `ld` apart: `n` rounded up to 8 on the f32 path (its padding
            // columns are zero sums), `n` on the i32 one
            let params = QMatMulParams { k, n, a_signed, b_signed, za, zb };
            let exact_f32 = params.exact_in_f32();
            let ld = if exact_f32 { n.next_multiple_of(8) } else { n };
            let rows_max = (end - begin).min(m);
            // the requantizing epilogue `[bias?, scale, round]` with a value per column, inlined
            // (`apply_scalar`'s arithmetic without its walk over the step list per element) over
            // all the rows of a batch at once: the per-column values repeated for every row (and
            // zero for the padding columns), so the loop runs over `rows * ld` sums
            let requant = match (op.epilogue.as_slice(), store) {
                (
                    [Step::AddChannelI32(bias), Step::ScaleToF32(mul), Step::RoundToInt { zp, lo, hi, .. }],
                    Store::U8 | Store::I8,
                ) if bias.len() >= n && mul.len() >= n => Some((Some(bias.as_slice()), mul.as_slice(), *zp, *lo, *hi)),
                ([Step::ScaleToF32(mul), Step::RoundToInt { zp, lo, hi, .. }], Store::U8 | Store::I8)
                    if mul.len() >= n =>
                {
                    Some((None, mul.as_slice(), *zp, *lo, *hi))
                }
                _ => None,
            }
            // `requantize_products` takes the clamp of 8-bit stored values
            .filter(|&(_, _, zp, lo, hi)| [zp, lo, hi].iter().all(|v| v.unsigned_abs() <= 1 << 16));
            let repeat = |v: &[f32]| {
                let mut r = vec![0f32; rows_max * ld];
                for row in r.chunks_exact_mut(ld) {
                    row[..n].copy_from_slice(&v[..n]);
                }
                r
            };
            let (rep_mul, rep_bias) = match requant {
                Some((bias, mul, ..)) => {
                    let mut rb = Vec::new();
                    if let Some(bias) = bias {
                        rb = vec![0i32; rows_max * ld];
                        for row in rb.chunks_exact_mut(ld) {
                            row[..n].copy_from_slice(&bias[..n]);
                        }
                    }
                    (repeat(mul), rb)
                }
                None => (Vec::new(), Vec::new()),
            };
            // the dequantizing one `[bias?, scale]` with a value per column
            let dequant = match op.epilogue.as_slice() {
                [Step::AddChannelI32(bias), Step::ScaleToF32(mul)] if bias.len() >= n && mul.len() >= n => {
                    Some((Some(bias.as_slice()), mul.as_slice()))
                }
                [Step::ScaleToF32(mul)] if mul.len() >= n => Some((None, mul.as_slice())),
                _ => None,
            };
            let mut acc = vec![0i32; rows_max * ld];
            let mut bytes = Vec::new();
            let mut scratch = QMatMulScratch::default();
            let (mut ac, mut bc) = (Vec::new(), Vec::new());
            let mut u = begin;
            while u < end {
                // the rows of this call in one batch: its right matrix centered once, the rows'
                // sums in one call
                let (p, i) = (u / m, u % m);
                let rows = (m - i).min(end - u);
                let (Some(&oa), Some(&ob)) = (op.index.get(2 * p), op.index.get(2 * p + 1)) else { return };
                // SAFETY: rows `i..i + rows` of batch `p`'s left matrix are bytes `oa + i * k..`
                // (`rows * k` of them) and its right matrix `ob..ob + k * n`, inside the
                // (distinct) input buffers.
                let (arows, bm) = unsafe {
                    (
                        std::slice::from_raw_parts(a.add(oa + i * k), rows * k),
                        std::slice::from_raw_parts(b.add(ob), k * n),
                    )
                };
                let acc = &mut acc[..rows * ld];
                if exact_f32 {
                    qmatmul_sums(acc, ld, arows, bm, &params, &mut scratch);
                } else {
                    bc.clear();
                    bc.extend(bm.iter().map(|&v| int(v, b_signed).wrapping_sub(zb)));
                    ac.clear();
                    ac.extend(arows.iter().map(|&v| int(v, a_signed).wrapping_sub(za)));
                    super::int8::accumulate_products(acc, &ac, &bc, rows, k, n);
                }
                if let Some((_, _, zp, lo, hi)) = requant {
                    let r = super::int8::Requant {
                        bias: if rep_bias.is_empty() { &[] } else { &rep_bias[..rows * ld] },
                        mul: &rep_mul[..rows * ld],
                        zp,
                        lo,
                        hi,
                        n: rows * ld,
                    };
                    // SAFETY: output rows `u..u + rows` (units of this call) are bytes
                    // `u * n..(u + rows) * n`.
                    let out = unsafe { std::slice::from_raw_parts_mut(yb.add(u * n), rows * n) };
                    if ld == n {
                        super::int8::requantize_products(acc, out, &r);
                    } else {
                        bytes.resize(rows * ld, 0u8);
                        super::int8::requantize_products(acc, &mut bytes, &r);
                        for (o, q) in out.chunks_exact_mut(n).zip(bytes.chunks_exact(ld)) {
                            o.copy_from_slice(&q[..n]);
                        }
                    }
                    u += rows;
                    continue;
                }
                if ld != n {
                    // the remaining epilogues read rows of `n` sums
                    for r in 1..rows {
                        acc.copy_within(r * ld..r * ld + n, r * n);
                    }
                }
                let acc = &acc[..rows * n];
                match store {
                    Store::F32 if dequant.is_some() => {
                        // the dequantizing epilogue `[bias?, scale]` inlined: `(acc + bias[j]) as
                        // f32 * scale[j]`, apply_scalar's arithmetic (i32 add wrapping, the
                        // conversion to nearest, one f32 multiply) in a loop per row
                        let (bias, mul) = dequant.unwrap_or((None, &[]));
                        // SAFETY: output rows `u..u + rows` (units of this call) are f32 elements
                        // `u * n..(u + rows) * n`.
                        let out = unsafe { std::slice::from_raw_parts_mut((yb as *mut f32).add(u * n), rows * n) };
                        for (orow, arow) in out.chunks_exact_mut(n).zip(acc.chunks_exact(n)) {
                            match bias {
                                Some(b) => {
                                    for (((o, &a), &bj), &mj) in orow.iter_mut().zip(arow).zip(b.iter()).zip(mul.iter())
                                    {
                                        *o = a.wrapping_add(bj) as f32 * mj;
                                    }
                                }
                                None => {
                                    for ((o, &a), &mj) in orow.iter_mut().zip(arow).zip(mul.iter()) {
                                        *o = a as f32 * mj;
                                    }
                                }
                            }
                        }
                    }
                    _ => {
                        for (t, &a) in acc.iter().enumerate() {
                            let j = t % n;
                            let v = apply_scalar(&op.epilogue, a, j).unwrap_or(Lane::I(0));
                            let at = u * n + t;
                            // SAFETY: output element `at` lies in rows `u..u + rows`, this call's
                            // units, of `store`'s size.
                            unsafe {
                                match (store, v) {
                                    (Store::F32, Lane::F(x)) => (yb as *mut f32).add(at).write(x),
                                    (Store::F32, Lane::I(x)) => (yb as *mut f32).add(at).write(x as f32),
                                    (_, Lane::I(q)) => yb.add(at).write(q as u8),
                                    (_, Lane::F(x)) => yb.add(at).write(x as i32 as u8),
                                }
                            }
                        }
                    }
                }
                u += rows;
            }
        }
        RowKind::MatMulF32 { m, k } => {
            let n = op.n;
            if n == 0 || m == 0 {
                return;
            }
            // SAFETY: `op.x2` is the offset of the second operand's buffer inside the arena.
            let b = unsafe { arena.add(op.x2) } as *const f32;
            let (a, y) = (xb as *const f32, yb as *mut f32);
            let mut u = begin;
            while u < end {
                // this call's rows of one batch in one kernel call
                let (p, i) = (u / m, u % m);
                let rows = (m - i).min(end - u);
                let (Some(&oa), Some(&ob)) = (op.index.get(2 * p), op.index.get(2 * p + 1)) else { return };
                // SAFETY: output rows `u..u + rows` (units of this call) are elements
                // `u * n..(u + rows) * n` of the output; rows `i..i + rows` of batch `p`'s left
                // matrix are `oa + i * k..` (`rows * k` values) and its right matrix
                // `ob..ob + k * n`, inside the (distinct) input buffers.
                let (out, arows, bm) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(y.add(u * n), rows * n),
                        std::slice::from_raw_parts(a.add(oa + i * k), rows * k),
                        std::slice::from_raw_parts(b.add(ob), k * n),
                    )
                };
                matmul_rows_f32(out, arows, bm, n);
                u += rows;
            }
        }
        RowKind::Gelu { div, one, half } => {
            if s < e {
                // SAFETY: as for `Unary`.
                let (x, y) = unsafe {
                    (
                        std::slice::from_raw_parts((xb as *const f32).add(s), e - s),
                        std::slice::from_raw_parts_mut((yb as *mut f32).add(s), e - s),
                    )
                };
                super::transcendental::gelu(x, y, &super::transcendental::Gelu { div, one, half });
            }
        }
        RowKind::HardSigmoid { alpha, beta } => {
            // SAFETY: as for `Unary`.
            unsafe { map_f32(xb, yb, s, e, |x| (alpha * x + beta).clamp(0.0, 1.0)) }
        }
        RowKind::GateMul { nhwc, c, hw } => {
            if s >= e {
                return;
            }
            let (c, hw) = (c.max(1), hw.max(1));
            let image = c * hw;
            let mut i = s;
            while i < e {
                // one image at a time: its gates are one value per channel, broadcast as a
                // per-channel constant is (`channel_runs`)
                let img = i / image;
                let end = e.min((img + 1) * image);
                // SAFETY: elements `i..end` (`end <= op.n`) lie in the input and output buffers,
                // which are distinct, and are this call's units; the gate buffer holds `n * c`
                // values, `img < n`. `op.x2` is the offset of the gate's buffer in the arena.
                let (x, y, g) = unsafe {
                    (
                        std::slice::from_raw_parts((xb as *const f32).add(i), end - i),
                        std::slice::from_raw_parts_mut((yb as *mut f32).add(i), end - i),
                        std::slice::from_raw_parts((arena.add(op.x2) as *const f32).add(img * c), c),
                    )
                };
                channel_runs(x, y, i - img * image, g, nhwc, c, hw, |p, q| p * q);
                i = end;
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
        RowKind::DynamicMatMul => {
            if let Some(d) = op.dynamic.as_deref() {
                // SAFETY: the input and output buffers hold the chain's `m x k` input and `m x n`
                // result (the lowering sized them), are distinct, and rows `begin..end` are this
                // call's units.
                unsafe { super::dynamic::run(d, xb as *const f32, yb as *mut f32, begin, end) };
            }
        }
        RowKind::DynamicConv => {
            if let Some(d) = op.dynamic_conv.as_deref() {
                // SAFETY: the input buffer holds the chain's NCHW input and the output its NHWC
                // result (the lowering sized them), distinct; pixels `begin..end` are this call's.
                unsafe { super::dynamic::run_conv(d, xb as *const f32, yb as *mut f32, begin, end) };
            }
        }
        RowKind::GatherIndexed { rows, row, i32_indices } => {
            let nrows = rows as i64;
            for p in begin..end {
                // SAFETY: index `p` (a unit of this call, below the number of indices) lies in the
                // input buffer of i64 or i32 indices.
                let i = unsafe {
                    if i32_indices {
                        (xb as *const i32).add(p).read_unaligned() as i64
                    } else {
                        (xb as *const i64).add(p).read_unaligned()
                    }
                };
                let j = if i < 0 { i + nrows } else { i };
                // SAFETY: output row `p` (bytes `p * row..(p + 1) * row`) is this call's; a table
                // row `j < rows` lies in `op.lut` (`rows * row` bytes).
                unsafe {
                    let dst = yb.add(p * row);
                    if (0..nrows).contains(&j) && op.lut.len() >= rows * row {
                        std::ptr::copy_nonoverlapping(op.lut.as_ptr().add(j as usize * row), dst, row);
                    } else {
                        std::ptr::write_bytes(dst, 0, row);
                        if let Some(f) = &op.fault {
                            f.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        RowKind::CastElems { from, to } => {
            for i in s..e {
                // SAFETY: element `i < op.n` lies in the input buffer (of `from`) and the output
                // buffer (of `to`); only this call writes output element `i`.
                unsafe { cast_elem(xb, from, yb, to, i) };
            }
        }
        RowKind::BroadcastBool { op: bop, const_a, const_b } => {
            use qforge_ir::BinaryOp;
            let Some((dims, sa, sb)) = broadcast_layout(&op.index).filter(|_| s < e) else { return };
            // SAFETY: `op.x2` is the offset of the second input's buffer inside the arena (unused
            // when an operand is the constant).
            let x2 = unsafe { arena.add(op.x2) } as *const u8;
            let (pa, pb) = operands(op.lut.as_ptr(), xb as *const u8, x2, const_a, const_b);
            let f: fn(u8, u8) -> u8 = match bop {
                BinaryOp::And => |p, q| ((p != 0) & (q != 0)) as u8,
                _ => |p, q| ((p != 0) | (q != 0)) as u8,
            };
            // SAFETY: the offsets are the broadcast positions of output elements `s..e` (this
            // call's units), inside each operand; only this call writes those outputs.
            unsafe { broadcast_runs(pa, pb, yb, s, e, dims, sa, sb, f) }
        }
        RowKind::WhereF32 { const_a, const_b } => {
            let rank = op.index.len() / 4;
            if rank == 0 || op.index.len() != 4 * rank || s >= e {
                return;
            }
            let (dims, sc, sa, sb) =
                (&op.index[..rank], &op.index[rank..2 * rank], &op.index[2 * rank..3 * rank], &op.index[3 * rank..]);
            // SAFETY: `op.x2` is the offset of the second input's buffer inside the arena.
            let x2 = unsafe { arena.add(op.x2) } as *const f32;
            let pa = if const_a { op.scale.as_ptr() } else { x2 };
            let pb = if const_b { op.bias.as_ptr() } else { x2 };
            let (c, y) = (xb as *const u8, yb as *mut f32);
            for o in s..e {
                let (mut rem, mut oc, mut oa, mut ob) = (o, 0, 0, 0);
                for ax in (0..rank).rev() {
                    let d = dims[ax].max(1);
                    let digit = rem % d;
                    rem /= d;
                    oc += digit * sc[ax];
                    oa += digit * sa[ax];
                    ob += digit * sb[ax];
                }
                // SAFETY: the offsets are output `o`'s broadcast positions inside each operand;
                // output `o` is this call's.
                unsafe { y.add(o).write(if c.add(oc).read() != 0 { pa.add(oa).read() } else { pb.add(ob).read() }) };
            }
        }
        RowKind::GatherRows { dim, count, row } => {
            for u in begin..end {
                let (o, p) = (u / count.max(1), u % count.max(1));
                let Some(&j) = op.index.get(p) else { return };
                // SAFETY: output row `u` is this call's; input row `o * dim + j` (`j < dim`, the
                // lowering normalized and checked the indices) lies in the input buffer.
                unsafe { std::ptr::copy_nonoverlapping(xb.add((o * dim + j) * row), yb.add(u * row), row) };
            }
        }
        RowKind::Fill => {
            let e = e.min(op.lut.len());
            if s < e {
                // SAFETY: bytes `s..e` (`e <= op.n`, the buffer's size) are this call's units of
                // the output buffer; the source is the step's own constant.
                unsafe { std::ptr::copy_nonoverlapping(op.lut.as_ptr().add(s), yb.add(s), e - s) };
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
            } else if plane == 1 {
                // channels last: element `i`'s table is `i % tables`; whole rows of `tables`
                // elements walk the tables in order without a branch per element
                lut_rows(x, y, &op.lut, tables, s % tables);
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
                SpatialPlan::Resize { dtype, h, w, extrapolation, .. } if nhwc => {
                    // SAFETY: the caller's contract for this step's units `s..e`.
                    unsafe {
                        resize_nhwc(xb, yb, s, e, &din, &dout, *dtype, h.as_deref(), w.as_deref(), *extrapolation)
                    }
                }
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
                                DType::U8 => yb.add(i).write(byte_of(v, 0.0, 255.0) as u8),
                                _ => (yb as *mut i8).add(i).write(byte_of(v, -128.0, 127.0) as i8),
                            }
                        }
                    }
                }
                SpatialPlan::Pad { elem, maps, fill, .. } if !nhwc && matches!(*elem, 1 | 4) => {
                    // plain order: runs along the last axis share `(n, c, h)`, so the source row
                    // is found once per run and each element reads one map entry
                    // SAFETY: the caller's contract for this step's units `s..e`; the element
                    // size is the buffers' own.
                    unsafe {
                        match *elem {
                            1 => pad_rows::<u8>(xb, yb, s, e, &din, &dout, maps, *fill as u8),
                            _ => pad_rows::<u32>(xb, yb, s, e, &din, &dout, maps, *fill as u32),
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
        RowKind::StridedView { elem } => {
            let rank = op.index.len() / 2;
            if rank == 0 || op.index.len() != 2 * rank + 1 {
                return;
            }
            let (dims, rest) = op.index.split_at(rank);
            let (strides, base) = (&rest[..rank], rest[rank]);
            // blocks of the last two output axes; the digits of the axes outside them and the
            // block's source offset advance like an odometer (one decomposition of `s` per call)
            let (l1, s1) = (dims[rank - 1].max(1), strides[rank - 1]);
            let (l2, s2) = if rank >= 2 { (dims[rank - 2].max(1), strides[rank - 2]) } else { (1, 0) };
            let block = l1 * l2;
            let outer_axes = rank.saturating_sub(2);
            let mut digits = vec![0usize; outer_axes];
            let mut rem = s / block;
            let mut outer = base;
            for a in (0..outer_axes).rev() {
                let d = dims[a].max(1);
                digits[a] = rem % d;
                outer = outer.wrapping_add(digits[a].wrapping_mul(strides[a]));
                rem /= d;
            }
            let mut o = s;
            while o < e {
                let j = o % block;
                let run = (block - j).min(e - o);
                // SAFETY: output elements `o..o + run` lie in `s..e`, this call's units of the
                // output buffer; the input elements read are the view's offsets of those
                // outputs, inside the (distinct) input buffer.
                unsafe {
                    match elem {
                        1 => block_copy::<u8>(xb, yb, outer, (l1, s1), s2, j, o, run),
                        2 => block_copy::<u16>(xb, yb, outer, (l1, s1), s2, j, o, run),
                        4 => block_copy::<u32>(xb, yb, outer, (l1, s1), s2, j, o, run),
                        _ => block_copy::<u64>(xb, yb, outer, (l1, s1), s2, j, o, run),
                    }
                }
                o += run;
                if j + run == block {
                    // the next block: carry through the outer digits
                    for a in (0..outer_axes).rev() {
                        let d = dims[a].max(1);
                        digits[a] += 1;
                        outer = outer.wrapping_add(strides[a]);
                        if digits[a] < d {
                            break;
                        }
                        digits[a] = 0;
                        outer = outer.wrapping_sub(d.wrapping_mul(strides[a]));
                    }
                }
            }
        }
        RowKind::Softmax { log } => {
            let (n, inner) = (op.n, op.inner.max(1));
            if n == 0 {
                return;
            }
            let (x, y) = (xb as *const f32, yb as *mut f32);
            if inner == 1 && begin < end {
                // contiguous lanes: this call's lanes are one block of both buffers
                // SAFETY: lanes `begin..end` (this call's units) are elements `begin * n..end *
                // n` of both buffers, which no other call touches; the buffers are distinct.
                let (xs, ys) = unsafe {
                    (
                        std::slice::from_raw_parts(x.add(begin * n), (end - begin) * n),
                        std::slice::from_raw_parts_mut(y.add(begin * n), (end - begin) * n),
                    )
                };
                softmax_lanes(xs, ys, n, log);
                return;
            }
            if inner > 1 {
                // lanes over a strided axis: runs of up to COLS neighbouring lanes (one block
                // `o`, consecutive `i`) gathered as `n` rows of the run's width, computed side by
                // side ([`softmax_columns`]) and scattered back; other calls may be writing the
                // lanes beside the run, so only the run's elements are touched
                const COLS: usize = 64;
                let mut xs = vec![0f32; n * COLS];
                let mut ys = vec![0f32; n * COLS];
                let mut ds = vec![0f32; n * COLS];
                let mut lane = begin;
                while lane < end {
                    let (o, i0) = (lane / inner, lane % inner);
                    let w = (inner - i0).min(end - lane).min(COLS);
                    let base = o * n * inner + i0;
                    for k in 0..n {
                        // SAFETY: elements `base + k * inner..+ w` are lanes `i0..i0 + w` of row
                        // `k` of block `o`, inside the input buffer.
                        let src = unsafe { std::slice::from_raw_parts(x.add(base + k * inner), w) };
                        xs[k * w..(k + 1) * w].copy_from_slice(src);
                    }
                    softmax_columns(&xs[..n * w], &mut ys[..n * w], &mut ds[..n * w], w, log);
                    for k in 0..n {
                        // SAFETY: the same elements of the output buffer, this call's lanes only.
                        let dst = unsafe { std::slice::from_raw_parts_mut(y.add(base + k * inner), w) };
                        dst.copy_from_slice(&ys[k * w..(k + 1) * w]);
                    }
                    lane += w;
                }
            }
        }
        RowKind::LayerNorm { eps } => {
            let n = op.n;
            if n == 0 || begin >= end {
                return;
            }
            // SAFETY: rows `begin..end` (this call's units) are the elements `begin * n..end * n`
            // of the input buffer, which no call writes during the step, and of the (distinct)
            // output buffer, which only this call writes there.
            let (x, y) = unsafe {
                (
                    std::slice::from_raw_parts((xb as *const f32).add(begin * n), (end - begin) * n),
                    std::slice::from_raw_parts_mut((yb as *mut f32).add(begin * n), (end - begin) * n),
                )
            };
            super::layer_norm::layer_norm_rows(x, n, &op.scale, &op.bias, eps, y, &mut Vec::new());
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

/// Copies elements `j..j + run` of one block of a strided view (the last two output axes: `l1`
/// values `s1` apart in rows `s2` apart, the block's first input element at `src`) to output
/// elements `o..o + run`: row by row, each row one [`strided_copy`].
///
/// # Safety
/// As for [`strided_copy`], for every element of the range.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn block_copy<T: Copy>(
    x: *const u8,
    y: *mut u8,
    src: usize,
    (l1, s1): (usize, usize),
    s2: usize,
    j: usize,
    mut o: usize,
    run: usize,
) {
    let (mut r, mut c) = (j / l1, j % l1);
    let end = o + run;
    while o < end {
        let n = (l1 - c).min(end - o);
        let at = src.wrapping_add(r.wrapping_mul(s2)).wrapping_add(c.wrapping_mul(s1));
        // SAFETY: the caller's contract.
        unsafe {
            if n <= 4 && s1 != 1 {
                // short rows (a depth-to-space's interleave): no call per row
                let (xs, ys) = (x as *const T, y as *mut T);
                for k in 0..n {
                    ys.add(o + k).write_unaligned(xs.add(at.wrapping_add(k.wrapping_mul(s1))).read_unaligned());
                }
            } else {
                strided_copy::<T>(x, y, at, s1, o, n);
            }
        }
        o += n;
        r += 1;
        c = 0;
    }
}

/// Copies `run` elements of type `T`: output elements `o..o + run` from input elements `src`,
/// `src + step`, ... (offsets in wrapping arithmetic: `step` may be a negative stride in two's
/// complement); a unit step is one block copy.
///
/// # Safety
/// Both ranges lie inside their buffers, which do not overlap.
unsafe fn strided_copy<T: Copy>(x: *const u8, y: *mut u8, src: usize, step: usize, o: usize, run: usize) {
    // SAFETY: the caller guarantees output elements `o..o + run` and input elements `src + k * step` (`k <
    // run`) lie inside their buffers; accesses are unaligned, so any offset is fine.
    unsafe {
        let (x, y) = (x as *const T, y as *mut T);
        if step == 1 {
            std::ptr::copy_nonoverlapping(x.add(src) as *const u8, y.add(o) as *mut u8, run * std::mem::size_of::<T>());
            return;
        }
        for k in 0..run {
            y.add(o + k).write_unaligned(x.add(src.wrapping_add(k.wrapping_mul(step))).read_unaligned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte of a resized value is the interpreter's saturating rounding: halves (both
    /// parities), the range's edges and beyond, infinities, NaN and signed zeros, for u8 and i8.
    #[test]
    fn byte_of_is_the_saturating_rounding() {
        let mut xs = vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, 0.0, 1e300, -1e300];
        for i in -600..600 {
            let b = i as f64 * 0.5;
            xs.extend([b, b + 1e-9, b - 1e-9, f64::from_bits(b.to_bits() + 1), f64::from_bits(b.to_bits().max(1) - 1)]);
        }
        for v in xs {
            assert_eq!(byte_of(v, 0.0, 255.0) as i128, numerics::saturate_f64_wide(v, DType::U8), "u8 {v:e}");
            assert_eq!(byte_of(v, -128.0, 127.0) as i128, numerics::saturate_f64_wide(v, DType::I8), "i8 {v:e}");
        }
    }

    /// The contiguous softmax equals the interpreter's lane function bit for bit: lanes of
    /// several lengths with wide ranges (exponents that underflow to 0), ties at the maximum,
    /// infinities and NaN.
    #[test]
    fn softmax_lanes_one_at_a_time_are_the_interpreters_lane() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let mut lanes: Vec<Vec<f32>> = vec![
            vec![1.0, 1.0, 1.0],
            vec![f32::NEG_INFINITY, 0.0, -1.0],
            vec![f32::INFINITY, 0.0],
            vec![0.5, f32::NAN, 2.0],
            vec![-200.0, 0.0, -90.0, -103.0, -87.3],
            // an attention lane masked with -100 (Swin's shifted windows), and one whose
            // exponentials straddle the contract's cut, the last normal one (-87.2) giving a
            // subnormal quotient of the sum of 17
            (0..16).map(|i| if i % 3 == 0 { -100.0 + i as f32 * 0.1 } else { i as f32 * 0.2 }).collect(),
            [0.0; 16].into_iter().chain([-87.2, qforge_ir::numerics::SOFTMAX_EXP_CUT, -87.336_55]).collect(),
        ];
        for &n in &[1usize, 7, 16, 49, 384] {
            for scale in [1.0f32, 10.0, 60.0] {
                lanes.push((0..n).map(|_| next() * scale).collect());
            }
        }
        for x in &lanes {
            let (mut want, mut got) = (vec![0f32; x.len()], vec![0f32; x.len()]);
            norm::softmax_lane(x, &mut want, x.len(), 1, false);
            assert!(!want.iter().any(|v| v.is_subnormal()), "a subnormal probability in {want:?}");
            softmax_lanes(x, &mut got, x.len(), false);
            let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "lane {x:?}: {got:?} against {want:?}");
        }
        // several lanes at once, each of the same length: fewer than a block of 16, and blocks
        // with a partial last one; a NaN and an infinity in two of the lanes
        // (and in a third a quiet NaN with a payload after it: the lane's last NaN is the one
        // that propagates); a lane whose largest values are -0.0 and +0.0, one of -infinities
        for (lanes, n) in [(5usize, 3usize), (5, 17), (5, 49), (37, 32), (16, 7)] {
            let mut x: Vec<f32> = (0..lanes * n).map(|_| next() * 30.0).collect();
            x[n + 1] = f32::NAN;
            x[2 * n] = f32::INFINITY;
            x[2 * n + n / 2] = f32::NAN;
            x[2 * n + n - 1] = f32::from_bits(0x7fc0_1234);
            for (j, v) in x[3 * n..4 * n].iter_mut().enumerate() {
                *v = [-0.0, 0.0, -1.5][j % 3];
            }
            x[4 * n..5 * n].fill(f32::NEG_INFINITY);
            for log in [false, true] {
                let mut want = vec![0f32; x.len()];
                for (xl, wl) in x.chunks(n).zip(want.chunks_mut(n)) {
                    norm::softmax_lane(xl, wl, n, 1, log);
                }
                for f in [softmax_lanes, softmax_lanes_baseline] {
                    let mut got = vec![0f32; x.len()];
                    f(&x, &mut got, n, log);
                    let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{lanes} lanes of {n}, log {log}");
                }
            }
        }
    }

    /// The NHWC resize (its W pass over whole pixels in the vector loop, partial pixels and the
    /// rest element by element) is the per-element formula bit for bit: linear taps both ways,
    /// 5, 16 and 21 channels, calls over uneven ranges of the output.
    #[test]
    fn nhwc_resize_is_the_per_element_formula() {
        let taps = |n_out: usize, n_in: usize| -> Vec<Taps> {
            (0..n_out)
                .map(|o| {
                    let x = ((o as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5).max(0.0);
                    let j0 = (x.floor() as usize).min(n_in - 1);
                    let f = x - j0 as f64;
                    Taps::Weighted(vec![(j0, 1.0 - f), ((j0 + 1).min(n_in - 1), f)])
                })
                .collect()
        };
        for c in [5usize, 16, 21] {
            let (din, dout) = ([2, c, 3, 4], [2, c, 5, 9]);
            let (h, w) = (taps(5, 3), taps(9, 4));
            let x: Vec<f32> = (0..2 * c * 12).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37).collect();
            let len = 2 * c * 45;
            let mut y = vec![f32::NAN; len];
            let (mut s, mut step) = (0, 7);
            while s < len {
                let e = (s + step).min(len);
                // SAFETY: the taps index inside the input's axes; `s..e` lie in the output.
                unsafe {
                    let (xb, yb) = (x.as_ptr() as *const u8, y.as_mut_ptr() as *mut u8);
                    resize_nhwc(xb, yb, s, e, &din, &dout, DType::F32, Some(&h), Some(&w), 0.0);
                }
                s = e;
                step = step * 3 % 97 + 5;
            }
            for (i, &got) in y.iter().enumerate() {
                let (n, ch, oh, ow) = position(&dout, true, i);
                let at = |hh: usize, ww: usize| x[offset(&din, true, n, ch, hh, ww)] as f64;
                let hval = |ww: usize| apply_taps(&h[oh], 0.0, |hh| at(hh, ww));
                let want = apply_taps(&w[ow], 0.0, hval) as f32;
                assert_eq!(got.to_bits(), want.to_bits(), "{c} channels, element {i}");
            }
        }
    }

    /// Marsaglia's 32-bit xorshift (13, 17, 5) from `seed`: the tests' reproducible values.
    fn xorshift32(mut seed: u32) -> impl FnMut() -> u32 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        }
    }

    /// Lanes side by side (a strided softmax axis) are the interpreter's lane function bit for
    /// bit, softmax and log-softmax, with a NaN (and a payload NaN after it), an infinity, signed
    /// zeros as the maximum and a lane of -infinities, at widths on and off the vector sizes.
    #[test]
    fn softmax_columns_are_the_interpreters_lanes() {
        let mut bits = xorshift32(7);
        let mut next = move || (bits() as f32 / u32::MAX as f32) * 2.0 - 1.0;
        for (n, w) in [(16usize, 64usize), (5, 3), (17, 20), (1, 9)] {
            let mut x: Vec<f32> = (0..n * w).map(|_| next() * 30.0).collect();
            let at = |k: usize, i: usize| k * w + i;
            if w > 4 && n > 2 {
                x[at(1, 0)] = f32::NAN;
                x[at(2, 0)] = f32::from_bits(0x7fc0_4321);
                x[at(0, 1)] = f32::INFINITY;
                for k in 0..n {
                    x[at(k, 2)] = [-0.0, 0.0, -2.5][k % 3];
                    x[at(k, 3)] = f32::NEG_INFINITY;
                }
            }
            for log in [false, true] {
                let mut want = vec![0f32; n * w];
                for i in 0..w {
                    let lane: Vec<f32> = (0..n).map(|k| x[at(k, i)]).collect();
                    let mut out = vec![0f32; n];
                    norm::softmax_lane(&lane, &mut out, n, 1, log);
                    for k in 0..n {
                        want[at(k, i)] = out[k];
                    }
                }
                for f in [softmax_columns, softmax_columns_baseline] {
                    let (mut got, mut d) = (vec![0f32; n * w], vec![0f32; n * w]);
                    f(&x, &mut got, &mut d, w, log);
                    let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{n} rows of {w} lanes, log {log}");
                }
            }
        }
    }

    /// The centered integer sums of an activation product through the f32 row kernel are the
    /// i32 sums, both signednesses, at widths on and off the padding multiple and at the longest
    /// reduction f32 holds exactly, with one scratch reused across shapes whose padded right
    /// matrices have the same size (stale padding columns would show as wrong sums).
    #[test]
    fn qmatmul_sums_are_the_integer_sums() {
        let mut bits = xorshift32(11);
        let mut byte = move || (bits() >> 24) as u8;
        let mut scratch = QMatMulScratch::default();
        let shapes = [(16usize, 16usize, 12usize), (3, 32, 8), (16, 8, 30), (5, 1, 1), (2, 258, 17), (7, 12, 16)];
        for (rows, k, n) in shapes {
            for (a_signed, b_signed, za, zb) in [(false, false, 129, 3), (true, false, -5, 255), (true, true, 0, -128)]
            {
                let a: Vec<u8> = (0..rows * k).map(|_| byte()).collect();
                let b: Vec<u8> = (0..k * n).map(|_| byte()).collect();
                let int = |v: u8, signed: bool| if signed { v as i8 as i32 } else { v as i32 };
                let ld = n.next_multiple_of(8);
                let mut got = vec![-1i32; rows * ld];
                let q = QMatMulParams { k, n, a_signed, b_signed, za, zb };
                qmatmul_sums(&mut got, ld, &a, &b, &q, &mut scratch);
                for r in 0..rows {
                    for j in 0..ld {
                        let want: i32 = if j < n {
                            (0..k)
                                .map(|t| (int(a[r * k + t], a_signed) - za) * (int(b[t * n + j], b_signed) - zb))
                                .sum()
                        } else {
                            0
                        };
                        assert_eq!(got[r * ld + j], want, "{rows}x{k}x{n}, row {r}, column {j}");
                    }
                }
            }
        }
        // past the exact range (a longer reduction, a zero point outside its type) the f32 path
        // declines and the caller sums in i32
        for (k, a_signed, za, zb) in [(259, false, 0, 0), (4, false, 256, 0), (4, true, 128, 0), (4, false, 0, -1)] {
            let q = QMatMulParams { k, n: 1, a_signed, b_signed: false, za, zb };
            assert!(!q.exact_in_f32(), "k {k}, zero points {za} {zb}");
        }
    }

    /// The dispatched row product is the baseline's bit for bit, and the plain-order sum, for
    /// row counts on and off the four-row blocks and columns on and off the vector blocks.
    #[test]
    fn matmul_rows_match_their_baseline() {
        for (rows, k, n) in
            [(1usize, 37usize, 45usize), (7, 37, 45), (4, 32, 32), (9, 5, 70), (3, 1, 16), (5, 32, 8), (6, 9, 13)]
        {
            let a: Vec<f32> = (0..rows * k).map(|i| (i as f32 * 0.731).sin() * 3.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.123).cos()).collect();
            let (mut got, mut base) = (vec![1f32; rows * n], vec![2f32; rows * n]);
            matmul_rows_f32(&mut got, &a, &b, n);
            matmul_rows_f32_baseline(&mut base, &a, &b, n);
            for r in 0..rows {
                for j in 0..n {
                    let want = (0..k).fold(0f32, |acc, t| acc + a[r * k + t] * b[t * n + j]);
                    let at = format!("{rows}x{k}x{n}, row {r} column {j}");
                    assert_eq!(got[r * n + j].to_bits(), want.to_bits(), "{at}");
                    assert_eq!(base[r * n + j].to_bits(), want.to_bits(), "{at}");
                }
            }
        }
    }

    /// Per-channel tables over channels-last bytes give the same bytes from any starting
    /// element and length as the element-by-element walk.
    #[test]
    fn lut_rows_is_the_per_element_walk() {
        let tables = 5;
        let lut: Vec<u8> = (0..256 * tables).map(|i| (i * 7 % 251) as u8).collect();
        let x: Vec<u8> = (0..63).map(|i| (i * 37 % 256) as u8).collect();
        for s in 0..12 {
            for e in s..x.len() {
                let mut y = vec![0u8; e - s];
                lut_rows(&x[s..e], &mut y, &lut, tables, s % tables);
                let want: Vec<u8> = (s..e).map(|i| lut[(i % tables) * 256 + x[i] as usize]).collect();
                assert_eq!(y, want, "{s}..{e}");
            }
        }
    }
}
