//! Row operations for what Cranelift has no instruction for: transcendental activations (sigmoid,
//! tanh, GELU, erf, exp, ...), softmax, layer normalization, and the f16/bf16 storage
//! conversions. Each computes units `begin..end` of one step described by a [`RowOp`]; the
//! formulas are the reference interpreter's own functions
//! ([`qforge_ir::interp::elementwise::unary_scalar`], [`qforge_ir::interp::norm::softmax_lane`],
//! [`qforge_ir::interp::norm::layer_norm_row`]), so the JIT agrees with it bit for bit.

use half::{bf16, f16};
use qforge_ir::interp::{elementwise::unary_scalar, norm};
use qforge_ir::UnaryOp;

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
}

impl RowOp {
    /// Units of work `begin..end` ranges over.
    pub fn units(&self, total: usize) -> usize {
        match self.kind {
            RowKind::Softmax { .. } => total / self.n.max(1),
            RowKind::LayerNorm { .. } => total / self.n.max(1),
            _ => self.n.div_ceil(CHUNK),
        }
    }
}

/// Runs units `begin..end` of `*op` on the arena.
///
/// # Safety
/// `op` describes buffers inside `arena` (as the memory plan placed them) of the sizes it states.
pub unsafe extern "C" fn row_op(op: *const RowOp, arena: *mut u8, begin: usize, end: usize) {
    let op = &*op;
    match op.kind {
        RowKind::Unary(u) => {
            let (s, e) = (begin * CHUNK, (end * CHUNK).min(op.n));
            let x = std::slice::from_raw_parts(arena.add(op.x) as *const f32, op.n);
            let y = std::slice::from_raw_parts_mut(arena.add(op.y) as *mut f32, op.n);
            for i in s..e {
                y[i] = unary_scalar(u, x[i]);
            }
        }
        RowKind::ChannelBinary { op: bop, const_first, nhwc, c, hw } => {
            use qforge_ir::BinaryOp;
            let (s, e) = (begin * CHUNK, (end * CHUNK).min(op.n));
            let x = arena.add(op.x) as *const f32;
            let y = arena.add(op.y) as *mut f32;
            let (c, hw) = (c.max(1), hw.max(1));
            for i in s..e {
                let ch = if nhwc { i % c } else { (i / hw) % c };
                let (p, q) =
                    if const_first { (op.scale[ch], x.add(i).read()) } else { (x.add(i).read(), op.scale[ch]) };
                let r = match bop {
                    BinaryOp::Add => p + q,
                    BinaryOp::Sub => p - q,
                    BinaryOp::Div => p / q,
                    _ => p * q,
                };
                y.add(i).write(r);
            }
        }
        RowKind::Transpose { elem } => {
            let rank = op.index.len() / 2;
            let (dims, strides) = op.index.split_at(rank);
            let (s, e) = (begin * CHUNK, (end * CHUNK).min(op.n));
            let y = arena.add(op.y);
            // never in place in practice (the memory plan gives it its own buffer); copy if so
            let copy: Vec<u8>;
            let x = if op.x == op.y {
                copy = std::slice::from_raw_parts(arena.add(op.x), op.n * elem).to_vec();
                copy.as_ptr()
            } else {
                arena.add(op.x) as *const u8
            };
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
                match elem {
                    1 => strided_copy::<u8>(x, y, src, ls, o, run),
                    2 => strided_copy::<u16>(x, y, src, ls, o, run),
                    4 => strided_copy::<u32>(x, y, src, ls, o, run),
                    _ => strided_copy::<u64>(x, y, src, ls, o, run),
                }
                o += run;
            }
        }
        RowKind::Softmax { log } => {
            let (n, inner) = (op.n, op.inner.max(1));
            for lane in begin..end {
                let (o, i) = (lane / inner, lane % inner);
                let base = o * n * inner + i;
                let len = (n - 1) * inner + 1;
                let x = std::slice::from_raw_parts((arena.add(op.x) as *const f32).add(base), len);
                let y = std::slice::from_raw_parts_mut((arena.add(op.y) as *mut f32).add(base), len);
                // In place (x == y) is fine: each value is read before it is written.
                if op.x == op.y {
                    let tmp: Vec<f32> = x.to_vec();
                    norm::softmax_lane(&tmp, y, n, inner, log);
                } else {
                    norm::softmax_lane(x, y, n, inner, log);
                }
            }
        }
        RowKind::LayerNorm { eps } => {
            let n = op.n;
            let mut tmp = vec![0f32; n];
            for row in begin..end {
                let x = std::slice::from_raw_parts((arena.add(op.x) as *const f32).add(row * n), n);
                norm::layer_norm_row(x, &op.scale, &op.bias, eps, &mut tmp);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), (arena.add(op.y) as *mut f32).add(row * n), n);
            }
        }
        RowKind::WidenF16 | RowKind::WidenBf16 | RowKind::RoundF16 | RowKind::RoundBf16 => {
            // The `half` crate's slice conversions use F16C when the CPU has it.
            use half::slice::HalfFloatSliceExt;
            let (s, e) = (begin * CHUNK, (end * CHUNK).min(op.n));
            if s >= e {
                return;
            }
            let len = e - s;
            // Buffers are 64-byte aligned in the arena and `s` is a multiple of CHUNK, so the
            // element pointers are aligned for their types.
            match op.kind {
                RowKind::WidenF16 | RowKind::WidenBf16 => {
                    let y = std::slice::from_raw_parts_mut((arena.add(op.y) as *mut f32).add(s), len);
                    if op.kind == RowKind::WidenF16 {
                        std::slice::from_raw_parts((arena.add(op.x) as *const f16).add(s), len).convert_to_f32_slice(y);
                    } else {
                        std::slice::from_raw_parts((arena.add(op.x) as *const bf16).add(s), len)
                            .convert_to_f32_slice(y);
                    }
                }
                _ => {
                    let x = std::slice::from_raw_parts((arena.add(op.x) as *const f32).add(s), len);
                    if op.kind == RowKind::RoundF16 {
                        std::slice::from_raw_parts_mut((arena.add(op.y) as *mut f16).add(s), len)
                            .convert_from_f32_slice(x);
                    } else {
                        std::slice::from_raw_parts_mut((arena.add(op.y) as *mut bf16).add(s), len)
                            .convert_from_f32_slice(x);
                    }
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
    let (x, y) = (x as *const T, y as *mut T);
    for k in 0..run {
        y.add(o + k).write_unaligned(x.add(src + k * step).read_unaligned());
    }
}
