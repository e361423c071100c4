//! A compiled program for one set of input shapes: the generated step functions, the arena plan,
//! and the executor that runs the steps in order (splitting each JIT step's units across
//! threads), converts layouts and runs host steps.

use crate::emit::{elementwise, kernel, Jit, Microkernels};
use crate::lower::{HostArg, Lowered, StepKind};
use crate::memory;
use crate::micro::fepilogue::FloatEpilogue;
use crate::micro::requant::RequantParams;
use crate::micro::ConvGeom;
use crate::reuse;
use crate::spec::Step;
use crate::JitError;
use qforge_ir::{interp, DType, Op, Tensor, TensorData, TensorType};
use rayon::prelude::*;
use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A generated step function: `(arena, scratch, begin, end)`.
pub type StepFn = unsafe extern "C" fn(*mut u8, *mut u8, usize, usize);

/// The flag a row step that can meet invalid data (a gather's index out of range) raises instead
/// of reading outside its input, with the message the step then fails with.
type Fault = Option<(Arc<AtomicBool>, &'static str)>;

enum Exec {
    Jit { func: StepFn, units: usize, grain: usize, scratch: bool, fault: Fault },
    Convert { to_nhwc: bool, n: usize, c: usize, hw: usize, elem: usize, input: usize, output: usize },
    Host { op: Op, inputs: Vec<HostIn>, outputs: Vec<(usize, TensorType)> },
}

enum HostIn {
    Missing,
    Arena(usize, TensorType),
    Const(Arc<Tensor>, TensorType),
}

/// One step as reports show it.
#[derive(Clone, Debug)]
pub struct StepInfo {
    /// Node name(s).
    pub name: String,
    /// `kernel`, `elementwise`, `max_pool`, `layout`, or `host`.
    pub kind: &'static str,
    /// The kernel description (main op, epilogue list, store), or the op.
    pub what: String,
    /// Multiply-accumulates per run (kernels only).
    pub macs: u64,
}

/// What compilation produced, for `compile --report` and `bench`.
#[derive(Clone, Debug)]
pub struct ProgramReport {
    pub steps: Vec<StepInfo>,
    /// The arena's size with buffer reuse, and the sum of all intermediate tensors.
    pub arena_bytes: usize,
    pub intermediate_bytes: usize,
    /// Per-thread scratch bytes.
    pub scratch_bytes: usize,
    /// Ops run by the interpreter, with counts.
    pub host_ops: Vec<(String, usize)>,
    /// Microkernels chosen: (role, implementation).
    pub microkernels: Vec<(&'static str, &'static str)>,
    pub codegen_time: Duration,
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(crate) struct Line(pub(crate) [u8; 64]);

/// Zeroed 64-byte lines covering `bytes` (at least one line).
fn lines(bytes: usize) -> Vec<Line> {
    vec![Line([0; 64]); bytes.div_ceil(64).max(1)]
}

/// [`lines`] for the arena, whose size comes from the model: a failed allocation is an error.
/// Inside [`crate::reuse::between_programs`], a spare arena large enough is zeroed and reused
/// instead.
fn try_lines(bytes: usize) -> Result<Vec<Line>, JitError> {
    let n = bytes.div_ceil(64).max(1);
    if let Some(mut v) = reuse::take_arena(n) {
        v.truncate(n);
        v.fill(Line([0; 64]));
        return Ok(v);
    }
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| JitError::Alloc { what: "the arena".into(), bytes: n.saturating_mul(64) })?;
    v.resize(n, Line([0; 64]));
    Ok(v)
}

/// The arena during one run: a raw pointer to its bytes and their count. Generated code writes
/// through the pointer; Rust code reads and writes arena bytes only through the short-lived
/// slices [`Arena::bytes`] and [`Arena::bytes_mut`] hand out. Those borrow the `Arena`, and
/// everything that lets generated code run ([`Program::run_jit`], [`convert`]) takes it
/// mutably, so no Rust reference into the arena is alive while generated code writes to it.
struct Arena<'a> {
    base: *mut u8,
    len: usize,
    /// The lines stay mutably borrowed (and so untouched by anyone else) while this view lives.
    _lines: PhantomData<&'a mut [Line]>,
}

impl<'a> Arena<'a> {
    fn new(lines: &'a mut [Line]) -> Arena<'a> {
        Arena { base: lines.as_mut_ptr().cast::<u8>(), len: lines.len() * 64, _lines: PhantomData }
    }

    /// `off..off + len` if it lies inside the arena, else an error naming `what` and the range.
    fn range(&self, off: usize, len: usize, what: impl FnOnce() -> String) -> Result<(), JitError> {
        match off.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(JitError::Run(format!(
                "{}: bytes {off}..{} lie outside the arena of {} bytes",
                what(),
                off.saturating_add(len),
                self.len
            ))),
        }
    }

    /// The bytes `off..off + len`, read-only.
    fn bytes(&self, off: usize, len: usize, what: impl FnOnce() -> String) -> Result<&[u8], JitError> {
        self.range(off, len, what)?;
        // SAFETY: the range lies inside the arena (checked above), whose bytes are initialized
        // (zeroed when allocated); the slice borrows `self`, so it ends before generated code or
        // another slice can write these bytes.
        Ok(unsafe { std::slice::from_raw_parts(self.base.add(off), len) })
    }

    /// The bytes `off..off + len`, writable.
    fn bytes_mut(&mut self, off: usize, len: usize, what: impl FnOnce() -> String) -> Result<&mut [u8], JitError> {
        self.range(off, len, what)?;
        // SAFETY: as in `bytes`; borrowing `self` mutably makes this the only reference into the
        // arena while it lives.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.base.add(off), len) })
    }

    /// The base pointer, for generated code and raw copies; taking `&mut self` ends every slice
    /// handed out before.
    fn ptr(&mut self) -> *mut u8 {
        self.base
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
}

/// The bytes after a buffer that no step may write, and the steps during which it is live.
#[derive(Clone, Copy, Debug)]
struct Guard {
    start: usize,
    len: usize,
    first: usize,
    last: usize,
}

const GUARD_BYTE: u8 = 0xA5;

/// Chunks a parallel step is cut into per thread: rayon hands them out as threads come free, so
/// more chunks even out the units' uneven costs (a GEMM's last short row block, im2col rows at the
/// image border) at a cost of about a microsecond each. Measured on ResNet-18 and MobileNetV2
/// on 2 threads (Zen 4), 16 beat 4 by 5-10% and 32 gained nothing more.
const CHUNKS_PER_THREAD: usize = 16;

/// The arena pointer handed to the threads of one step.
#[derive(Clone, Copy)]
struct SendPtr(*mut u8);
// SAFETY: the pointer is only passed to generated step functions. The executor splits a step's
// units between threads; a step function writes only the output elements of its own units and
// reads buffers that no step writes while it runs (the memory plan keeps live buffers apart), so
// threads never race on a byte. The arena outlives the parallel loop: `run_jit` returns only when
// every chunk is done.
unsafe impl Send for SendPtr {}
// SAFETY: as for `Send`: shared use is the concurrent calls just described.
unsafe impl Sync for SendPtr {}

/// A compiled program.
/// The callback of [`Program::run_tapped`].
type TapFn<'a> = &'a mut dyn FnMut(usize, TapView<'_>);

/// A tapped value during [`Program::run_tapped`]: its bytes in the arena, in the layout the
/// program computed it in.
#[derive(Clone, Copy, Debug)]
pub struct TapView<'a> {
    /// The value's logical type (shape in the graph's NCHW order).
    pub ty: &'a TensorType,
    /// Whether the bytes are channels-last: a 4-D value `[n, c, h, w]` stored `[n, h, w, c]`.
    pub channels_last: bool,
    bytes: &'a [u8],
}

impl<'a> TapView<'a> {
    /// The f32 elements in storage order (channels-last when [`TapView::channels_last`]), or
    /// None for another dtype.
    pub fn f32(&self) -> Option<&'a [f32]> {
        if self.ty.dtype != DType::F32 {
            return None;
        }
        // SAFETY: every bit pattern is a valid f32, and `align_to` only reinterprets the part
        // of the slice that is aligned for f32 (all of it: arena buffers start on 64-byte lines).
        let (head, mid, tail) = unsafe { self.bytes.align_to::<f32>() };
        (head.is_empty() && tail.is_empty()).then_some(mid)
    }

    /// The value as a tensor in its logical (row-major, NCHW) order: a copy, converted from
    /// channels-last when it is stored so.
    pub fn to_tensor(&self) -> Result<Tensor, JitError> {
        if !self.channels_last {
            return read_tensor(self.ty, self.bytes);
        }
        let d = self.ty.shape.as_fixed().unwrap_or_default();
        let [n, c, h, w] = d[..] else {
            return Err(JitError::Run(format!("a channels-last tap of shape {d:?}")));
        };
        // element (n, p, c) of the [n, h*w, c] bytes goes to (n, c, p)
        let (e, hw) = (self.ty.dtype.size_bytes(), h * w);
        let mut plain = vec![0u8; self.bytes.len()];
        for s in 0..n {
            for p in 0..hw {
                for ch in 0..c {
                    let from = ((s * hw + p) * c + ch) * e;
                    let to = ((s * c + ch) * hw + p) * e;
                    plain[to..to + e].copy_from_slice(&self.bytes[from..from + e]);
                }
            }
        }
        read_tensor(self.ty, &plain)
    }
}

pub struct Program {
    jit: Option<JitCode>,
    exec: Vec<Exec>,
    inputs: Vec<(usize, TensorType)>,
    outputs: Vec<(usize, TensorType)>,
    /// Observation taps: arena offset, type, channels-last.
    taps: Vec<(usize, TensorType, bool)>,
    /// The taps ready before the first step (index 0) and after each step `i` (index `i + 1`).
    tap_after: Vec<Vec<usize>>,
    arena_bytes: usize,
    scratch_bytes: usize,
    arena: Mutex<Vec<Line>>,
    pool: Option<rayon::ThreadPool>,
    threads: usize,
    /// Keeps alive what generated code points at.
    _keep: Vec<Box<dyn Any + Send + Sync>>,
    guards: Vec<Guard>,
    /// Fill the guard bytes after every live buffer and verify them after every step.
    pub check_guards: bool,
    /// The size limit host steps run the interpreter with (`--max-tensor-bytes`).
    pub max_tensor_bytes: u128,
    pub report: ProgramReport,
}

/// The JIT module owning the generated code. Only dropped (never used) after compilation, so
/// sharing it between threads is sound.
struct JitCode(Jit);
// SAFETY: after `finalize` the module is never touched again until it is freed in `drop`
// (`Program` keeps it private and calls nothing on it); the machine code it owns is immutable
// and callable from any thread, and its memory is freed only once, by the owner.
unsafe impl Send for JitCode {}
// SAFETY: as for `Send`: no method of the module is called through a shared reference.
unsafe impl Sync for JitCode {}

impl Drop for Program {
    fn drop(&mut self) {
        if let Ok(lines) = self.arena.get_mut() {
            reuse::give_arena(std::mem::take(lines));
        }
        if let Some(jit) = self.jit.take() {
            // SAFETY: no function of this module can run any more: `run` borrows the program, so
            // none is running while it is dropped, and the function pointers in `exec` are
            // dropped with it without being called.
            unsafe { jit.0.module.free_memory() };
        }
    }
}

fn pad16<T: Copy + Default>(v: &[T]) -> Vec<T> {
    let mut out = v.to_vec();
    out.resize(v.len().div_ceil(16) * 16 + 16, T::default());
    out
}

impl Program {
    /// Generates code for `lw` (the lowered graph).
    pub fn build(
        lw: Lowered,
        microkernels: Microkernels,
        bf16_compute: bool,
        threads: usize,
    ) -> Result<Program, JitError> {
        let t0 = Instant::now();
        let Lowered { buffers, steps, inputs, outputs, taps, host_ops } = lw;
        let nsteps = steps.len();
        // Readers and writers of each buffer.
        let reads = |k: &StepKind| -> Vec<usize> {
            match k {
                StepKind::Kernel { input, residual, .. } => {
                    let mut v = vec![*input];
                    v.extend(residual);
                    v
                }
                StepKind::Elementwise { inputs, .. } => inputs.clone(),
                StepKind::MaxPool { input, .. } | StepKind::Convert { input, .. } | StepKind::AvgPool { input, .. } => {
                    vec![*input]
                }
                StepKind::Rows { input, input2, .. } => std::iter::once(*input).chain(*input2).collect(),
                StepKind::Concat { parts, .. } => parts.iter().map(|p| p.0).collect(),
                StepKind::Host { inputs, .. } => inputs
                    .iter()
                    .filter_map(|a| match a {
                        HostArg::Buffer(b, _) => Some(*b),
                        _ => None,
                    })
                    .collect(),
            }
        };
        let writes = |k: &StepKind| -> Vec<usize> {
            match k {
                StepKind::Kernel { output, .. }
                | StepKind::Elementwise { output, .. }
                | StepKind::MaxPool { output, .. }
                | StepKind::Rows { output, .. }
                | StepKind::Concat { output, .. }
                | StepKind::AvgPool { output, .. }
                | StepKind::Convert { output, .. } => vec![*output],
                StepKind::Host { outputs, .. } => outputs.iter().map(|o| o.0).collect(),
            }
        };
        let mut last_read = vec![0usize; buffers.len()];
        for (i, s) in steps.iter().enumerate() {
            for b in reads(&s.kind) {
                last_read[b] = last_read[b].max(i);
            }
        }
        // A tap is handed over after the last step that writes its buffer (a grouped convolution
        // writes one buffer in several steps; an in-place step that reuses the memory later
        // writes another buffer), or before the first step when none does (an input's alias).
        let mut tap_after: Vec<Vec<usize>> = vec![Vec::new(); nsteps + 1];
        for (t, (b, _, _)) in taps.iter().enumerate() {
            let ready = steps.iter().rposition(|s| writes(&s.kind).contains(b)).map_or(0, |i| i + 1);
            tap_after[ready].push(t);
        }
        let pinned: Vec<usize> = inputs.iter().chain(&outputs).map(|x| x.0).collect();
        // In place: an element-wise step whose first input dies here writes over it.
        let mut alias: Vec<usize> = (0..buffers.len()).collect();
        for (i, s) in steps.iter().enumerate() {
            if let StepKind::Elementwise { inputs: ins, output, .. } = &s.kind {
                let a = alias[ins[0]];
                let same_size = buffers[a].bytes == buffers[*output].bytes;
                let only_here = last_read[ins[0]] == i && ins[1..].iter().all(|&b| alias[b] != a);
                if same_size && only_here && !pinned.contains(output) && !pinned.contains(&ins[0]) {
                    alias[*output] = a;
                }
            }
        }
        let resolve = |b: usize| alias[b];
        let mut first = vec![usize::MAX; buffers.len()];
        let mut last = vec![0usize; buffers.len()];
        for (i, s) in steps.iter().enumerate() {
            for b in writes(&s.kind).into_iter().chain(reads(&s.kind)) {
                let b = resolve(b);
                first[b] = first[b].min(i);
                last[b] = last[b].max(i);
            }
        }
        for &(b, _) in &inputs {
            first[resolve(b)] = 0;
        }
        for &(b, _) in &outputs {
            last[resolve(b)] = nsteps;
        }
        let mem: Vec<memory::Buffer> = (0..buffers.len())
            .map(|b| {
                if resolve(b) != b || first[b] == usize::MAX {
                    memory::Buffer { bytes: 0, first: 0, last: 0 }
                } else {
                    memory::Buffer { bytes: buffers[b].bytes, first: first[b], last: last[b] }
                }
            })
            .collect();
        let plan = memory::plan(&mem);
        // Guard regions: the slack after each planned buffer, checked while the buffer is live.
        let guards: Vec<Guard> = mem
            .iter()
            .enumerate()
            .filter(|(_, b)| b.bytes > 0)
            .map(|(i, b)| {
                let start = plan.offsets[i] + b.bytes;
                Guard {
                    start,
                    len: memory::SLACK.min(plan.arena_bytes.saturating_sub(start)),
                    first: b.first,
                    last: b.last,
                }
            })
            .collect();
        let off = |b: usize| plan.offsets[resolve(b)];

        let mut jit = Jit::new(microkernels, bf16_compute)?;
        let mut keep: Vec<Box<dyn Any + Send + Sync>> = Vec::new();
        let mut funcs = Vec::new(); // (step index, FuncId, units, grain, scratch)
        let mut faults = Vec::new(); // (step index, the row step's fault flag and message)
        let mut infos = Vec::new();
        let mut scratch_bytes = 64;
        for (i, s) in steps.iter().enumerate() {
            match &s.kind {
                StepKind::Kernel { spec, input, residual, output, out_col, ld_out } => {
                    let mut params = Vec::new();
                    for st in &spec.epilogue {
                        let addr = match st {
                            Step::AddChannelI32(v) => {
                                let b = Box::new(pad16(v));
                                let a = b.as_ptr() as i64;
                                keep.push(b);
                                a
                            }
                            Step::ScaleToF32(v) | Step::AddChannelF32(v) | Step::MulChannelF32(v) => {
                                let b = Box::new(pad16(v));
                                let a = b.as_ptr() as i64;
                                keep.push(b);
                                a
                            }
                            Step::Lut8 { table, .. } => {
                                let b = Box::new(table.clone());
                                let a = b.as_ptr() as i64;
                                keep.push(b);
                                a
                            }
                            _ => 0,
                        };
                        params.push(addr);
                    }
                    let (weights, geom) = kernel_consts(&spec.main, &mut keep);
                    let requant = match native_requant(spec, microkernels) {
                        Some(rp) => {
                            let b = Box::new(rp);
                            let a = &*b as *const RequantParams as i64;
                            keep.push(b);
                            a
                        }
                        None => 0,
                    };
                    // (built only where the requantization kernel does not take the list)
                    let (float_epi, float_epi_in_regs) =
                        match (requant == 0).then(|| native_float_epilogue(spec, microkernels)).flatten() {
                            Some(fe) => {
                                // the 512-bit kernels apply every canonical list in registers, the
                                // AVX2 ones the branch-free lists
                                let in_regs = if crate::micro::fepilogue::available(spec.store) {
                                    fe.in_registers().is_some()
                                } else {
                                    fe.lanes_form()
                                };
                                let b = Box::new(fe);
                                let a = &*b as *const FloatEpilogue as i64;
                                keep.push(b);
                                (a, in_regs)
                            }
                            None => (0, false),
                        };
                    let direct = microkernels == Microkernels::Native && direct_conv(&spec.main);
                    let consts =
                        kernel::Consts { params, weights, geom, requant, float_epi, float_epi_in_regs, direct };
                    let bind = kernel::Bindings {
                        input: off(*input) as i64,
                        output: off(*output) as i64,
                        residual: residual.map(|r| off(r) as i64),
                        out_col: *out_col as i64,
                        ld_out: *ld_out as i64,
                    };
                    let id = jit.define_step(&s.name, |em, p| kernel::emit(em, spec, bind, &consts, threads, p))?;
                    scratch_bytes = scratch_bytes.max(kernel::scratch_bytes(spec));
                    funcs.push((i, id, kernel::units(spec, threads), 1, true));
                    let mut what = spec.describe();
                    if requant != 0 {
                        what.push_str(&format!(" (epilogue: {} requant microkernel)", requant_width()));
                    }
                    if kernel::epilogue_in_kernel(spec, &consts) {
                        what.push_str(" (epilogue: in the f32 kernel's registers)");
                    } else if float_epi != 0 {
                        what.push_str(if crate::micro::fepilogue::available(spec.store) {
                            " (epilogue: 512-bit float microkernel)"
                        } else {
                            " (epilogue: row-wise float microkernel)"
                        });
                    }
                    if direct {
                        what.push_str(" (direct: no im2col)");
                    }
                    infos.push(StepInfo { name: s.name.clone(), kind: "kernel", what, macs: spec.macs() });
                }
                StepKind::Elementwise { op, inputs: ins, output, len } => {
                    let ins: Vec<i64> = ins.iter().map(|&b| off(b) as i64).collect();
                    let o = off(*output) as i64;
                    let native = match op {
                        elementwise::Elementwise::QAdd { p, a, b, out }
                            if microkernels == Microkernels::Native && crate::micro::requant::available() =>
                        {
                            use elementwise::IntTy;
                            let (lo, hi) = out.range();
                            let c = Box::new(crate::micro::requant::QAddConsts {
                                ra: p.ra,
                                rb: p.rb,
                                fixed: p.fixed,
                                a_signed: *a == IntTy::I8,
                                b_signed: *b == IntTy::I8,
                                lo,
                                hi,
                            });
                            let addr = &*c as *const crate::micro::requant::QAddConsts as i64;
                            keep.push(c);
                            Some(("qf_qadd", addr))
                        }
                        elementwise::Elementwise::Quantize { scale, zp, out }
                            if microkernels == Microkernels::Native && crate::micro::requant::available() =>
                        {
                            let (lo, hi) = out.range();
                            let c = Box::new(crate::micro::requant::QuantizeConsts { scale: *scale, zp: *zp, lo, hi });
                            let addr = &*c as *const crate::micro::requant::QuantizeConsts as i64;
                            keep.push(c);
                            Some(("qf_quantize", addr))
                        }
                        _ => None,
                    };
                    let id = match native {
                        Some((kernel, c)) => {
                            jit.define_step(&s.name, |em, p| elementwise::emit_native(em, kernel, c, &ins, o, p))?
                        }
                        None => jit.define_step(&s.name, |em, p| elementwise::emit(em, *op, &ins, o, p))?,
                    };
                    funcs.push((i, id, *len, 1024, false));
                    let what = if native.is_some() {
                        format!("{} ({} microkernel)", op.name(), requant_width())
                    } else {
                        op.name().into()
                    };
                    infos.push(StepInfo { name: s.name.clone(), kind: "elementwise", what, macs: 0 });
                }
                StepKind::MaxPool { geom, dtype, input, output } => {
                    let g = Box::new(*geom);
                    let ga = &*g as *const ConvGeom as i64;
                    keep.push(g);
                    let f = match dtype {
                        DType::U8 => "qf_max_pool_u8",
                        DType::I8 => "qf_max_pool_i8",
                        _ => "qf_max_pool_f32",
                    };
                    let row_bytes = (geom.ow * geom.c * dtype.size_bytes()) as i64;
                    let (i_off, o_off) = (off(*input) as i64, off(*output) as i64);
                    let id = jit.define_step(&s.name, |em, p| {
                        elementwise::emit_max_pool(em, f, ga, row_bytes, i_off, o_off, p)
                    })?;
                    let rows = if geom.oh == 0 { 0 } else { buffers[*output].bytes / row_bytes.max(1) as usize };
                    funcs.push((i, id, rows, 1, false));
                    infos.push(StepInfo {
                        name: s.name.clone(),
                        kind: "max_pool",
                        what: format!("max_pool {}x{} s{} {}", geom.kh, geom.kw, geom.sh, dtype.name()),
                        macs: 0,
                    });
                }
                StepKind::Concat { parts, output, outer, stride } => {
                    let parts: Vec<(i64, i64)> =
                        parts.iter().map(|&(b, chunk)| (off(b) as i64, chunk as i64)).collect();
                    let (o, stride) = (off(*output) as i64, *stride as i64);
                    let id = jit.define_step(&s.name, |em, p| elementwise::emit_concat(em, &parts, o, stride, p))?;
                    funcs.push((i, id, *outer, 64, false));
                    infos.push(StepInfo {
                        name: s.name.clone(),
                        kind: "concat",
                        what: format!("concat of {}", parts.len()),
                        macs: 0,
                    });
                }
                StepKind::AvgPool { geom, input, output } => {
                    let g = Box::new(*geom);
                    let ga = &*g as *const crate::micro::pool::AvgPoolGeom as i64;
                    keep.push(g);
                    let row_bytes = (geom.geom.ow * geom.geom.c * 4) as i64;
                    let (i_off, o_off) = (off(*input) as i64, off(*output) as i64);
                    let id = jit.define_step(&s.name, |em, p| {
                        elementwise::emit_max_pool(em, "qf_avg_pool_f32", ga, row_bytes, i_off, o_off, p)
                    })?;
                    let rows = buffers[*output].bytes / (row_bytes.max(1) as usize);
                    funcs.push((i, id, rows, 1, false));
                    infos.push(StepInfo {
                        name: s.name.clone(),
                        kind: "avg_pool",
                        what: format!("avg_pool {}x{} s{} f32", geom.geom.kh, geom.geom.kw, geom.geom.sh),
                        macs: 0,
                    });
                }
                StepKind::Rows { op, input, input2, output, units } => {
                    let mut op = op.clone();
                    op.x = off(*input);
                    op.y = off(*output);
                    op.x2 = input2.map_or(0, off);
                    let what = format!("{:?}", op.kind);
                    if let Some(f) = op.fault.clone() {
                        faults.push((i, (f, op.kind.fault_message())));
                    }
                    let b = Box::new(op);
                    let pa = &*b as *const crate::micro::rowops::RowOp as i64;
                    keep.push(b);
                    let id = jit.define_step(&s.name, |em, p| elementwise::emit_row_op(em, pa, p))?;
                    funcs.push((i, id, *units, 1, false));
                    infos.push(StepInfo { name: s.name.clone(), kind: "rows", what, macs: 0 });
                }
                StepKind::Convert { to_nhwc, .. } => infos.push(StepInfo {
                    name: s.name.clone(),
                    kind: "layout",
                    what: if *to_nhwc { "nchw->nhwc".into() } else { "nhwc->nchw".into() },
                    macs: 0,
                }),
                StepKind::Host { op, .. } => infos.push(StepInfo {
                    name: s.name.clone(),
                    kind: "host",
                    what: format!("{} (interpreter)", op.name()),
                    macs: 0,
                }),
            }
        }
        jit.finalize()?;
        let mut fi = funcs.into_iter().peekable();
        let mut faults = faults.into_iter().peekable();
        let mut exec = Vec::with_capacity(nsteps);
        for (i, s) in steps.into_iter().enumerate() {
            let e = match s.kind {
                StepKind::Kernel { .. }
                | StepKind::Elementwise { .. }
                | StepKind::MaxPool { .. }
                | StepKind::Concat { .. }
                | StepKind::AvgPool { .. }
                | StepKind::Rows { .. } => {
                    let Some((j, id, units, grain, scratch)) = fi.next() else {
                        return Err(JitError::Codegen("step functions out of order".into()));
                    };
                    debug_assert_eq!(i, j);
                    // SAFETY: `id` was declared with `step_signature` (four pointer-sized
                    // parameters in the host's default calling convention, which is the C ABI
                    // `StepFn` names) and the module is finalized, so the address is that
                    // function's code; it stays valid until `free_memory` when the program drops.
                    let func: StepFn = unsafe { std::mem::transmute::<*const u8, StepFn>(jit.address(id)) };
                    let fault = faults.next_if(|(at, _)| *at == i).map(|(_, f)| f);
                    Exec::Jit { func, units, grain, scratch, fault }
                }
                StepKind::Convert { to_nhwc, n, c, hw, elem, input, output } => {
                    Exec::Convert { to_nhwc, n, c, hw, elem, input: off(input), output: off(output) }
                }
                StepKind::Host { op, inputs: hin, outputs: hout, .. } => Exec::Host {
                    op,
                    inputs: hin
                        .into_iter()
                        .map(|a| match a {
                            HostArg::Missing => HostIn::Missing,
                            HostArg::Buffer(b, t) => HostIn::Arena(off(b), t),
                            HostArg::Const(t, ty) => HostIn::Const(t, ty),
                        })
                        .collect(),
                    outputs: hout.into_iter().map(|(b, t)| (off(b), t)).collect(),
                },
            };
            exec.push(e);
        }
        let report = ProgramReport {
            steps: infos,
            arena_bytes: plan.arena_bytes,
            intermediate_bytes: plan.total_bytes,
            scratch_bytes,
            host_ops,
            microkernels: jit.kernel_names.clone(),
            codegen_time: t0.elapsed(),
        };
        let threads = threads.max(1);
        let pool = if threads > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .map_err(|e| JitError::Codegen(format!("thread pool: {e}")))?,
            )
        } else {
            None
        };
        Ok(Program {
            jit: Some(JitCode(jit)),
            exec,
            inputs: inputs.into_iter().map(|(b, t)| (off(b), t)).collect(),
            outputs: outputs.into_iter().map(|(b, t)| (off(b), t)).collect(),
            taps: taps.into_iter().map(|(b, t, nhwc)| (off(b), t, nhwc)).collect(),
            tap_after,
            arena_bytes: plan.arena_bytes,
            scratch_bytes,
            arena: Mutex::new(Vec::new()),
            pool,
            threads,
            _keep: keep,
            guards,
            check_guards: false,
            max_tensor_bytes: qforge_ir::DEFAULT_MAX_TENSOR_BYTES as u128,
            report,
        })
    }

    /// Runs the program; `inputs` must have exactly the types it was compiled for. With
    /// `times`, each step's wall time is added to `times[step]`.
    pub fn run(&self, inputs: &[Tensor], times: Option<&mut Vec<Duration>>) -> Result<Vec<Tensor>, JitError> {
        self.run_inner(inputs, times, None)
    }

    /// Runs the program and calls `each(k, view)` for tap `k` (see [`crate::lower::lower`]) right
    /// after the step that computed it, with a view of its bytes in the arena: no copy, no
    /// layout conversion, read while it is still in cache. The views must not outlive the call.
    /// With a thread pool the steps are still split across it, but the run itself stays on the
    /// calling thread (`each` need not be `Send`).
    pub fn run_tapped(
        &self,
        inputs: &[Tensor],
        each: &mut dyn FnMut(usize, TapView<'_>),
    ) -> Result<Vec<Tensor>, JitError> {
        self.run_inner(inputs, None, Some(each))
    }

    /// How many taps the program hands over.
    pub fn taps(&self) -> usize {
        self.taps.len()
    }

    fn run_inner(
        &self,
        inputs: &[Tensor],
        times: Option<&mut Vec<Duration>>,
        each: Option<TapFn<'_>>,
    ) -> Result<Vec<Tensor>, JitError> {
        if inputs.len() != self.inputs.len() {
            return Err(JitError::Input(format!("expected {} inputs, got {}", self.inputs.len(), inputs.len())));
        }
        for (t, (_, ty)) in inputs.iter().zip(&self.inputs) {
            if t.dtype() != ty.dtype || Some(t.shape().to_vec()) != ty.shape.as_fixed() {
                return Err(JitError::Input(format!(
                    "expected {} {:?}, got {} {:?}",
                    ty.dtype.name(),
                    ty.shape.as_fixed().unwrap_or_default(),
                    t.dtype().name(),
                    t.shape()
                )));
            }
        }
        // The program's own arena, or a fresh one while another run holds it.
        let mut guard = self.arena.try_lock().ok();
        let mut local;
        let lines: &mut Vec<Line> = match guard.as_deref_mut() {
            Some(a) => a,
            None => {
                local = Vec::new();
                &mut local
            }
        };
        if lines.len() * 64 < self.arena_bytes {
            *lines = try_lines(self.arena_bytes)?;
        }
        // With a thread pool the whole run happens on one of its workers: each step's parallel
        // loop then starts from inside the pool (the other workers steal its chunks) instead of
        // handing every step from this thread to the pool and sleeping until it finishes, which
        // costs a wake-up per step (tens of microseconds, as much as a small step's work).
        match (&self.pool, each) {
            (_, Some(each)) => self.run_steps(inputs, lines, times, Some(each)),
            (Some(pool), None) => pool.install(|| self.run_steps(inputs, lines, times, None)),
            (None, None) => self.run_steps(inputs, lines, times, None),
        }
    }

    /// The body of [`Program::run`] once the inputs are checked and the arena's lines are at
    /// hand.
    fn run_steps(
        &self,
        inputs: &[Tensor],
        lines: &mut [Line],
        mut times: Option<&mut Vec<Duration>>,
        mut each: Option<TapFn<'_>>,
    ) -> Result<Vec<Tensor>, JitError> {
        let mut arena = Arena::new(lines);
        if self.check_guards {
            self.fill_guards(&mut arena, |g| g.first == 0)?;
        }
        for (k, (t, (o, _))) in inputs.iter().zip(&self.inputs).enumerate() {
            let out = arena.bytes_mut(*o, tensor_bytes(t), || format!("input {k}"))?;
            write_tensor(t, out);
        }
        if let Some(t) = times.as_deref_mut() {
            t.resize(self.exec.len(), Duration::ZERO);
        }
        if let Some(each) = each.as_deref_mut() {
            self.hand_taps(&arena, 0, each)?;
        }
        for (i, e) in self.exec.iter().enumerate() {
            if self.check_guards && i > 0 {
                self.fill_guards(&mut arena, |g| g.first == i)?;
            }
            // the clock is read only when the steps are timed
            let t0 = times.is_some().then(Instant::now);
            match e {
                Exec::Jit { func, units, grain, scratch, fault } => {
                    self.run_jit(*func, &mut arena, *units, *grain, *scratch);
                    if let Some((flag, msg)) = fault {
                        if flag.swap(false, Ordering::Relaxed) {
                            return Err(self.step_error(i, (*msg).to_string()));
                        }
                    }
                }
                Exec::Convert { to_nhwc, n, c, hw, elem, input, output } => convert(
                    &mut arena,
                    &Transpose {
                        to_nhwc: *to_nhwc,
                        n: *n,
                        c: *c,
                        hw: *hw,
                        elem: *elem,
                        input: *input,
                        output: *output,
                    },
                )
                .map_err(|e| self.step_error(i, e.to_string()))?,
                Exec::Host { op, inputs: hin, outputs } => self.run_host(&mut arena, i, op, hin, outputs)?,
            }
            if let (Some(t), Some(t0)) = (times.as_deref_mut(), t0) {
                t[i] += t0.elapsed();
            }
            if let Some(each) = each.as_deref_mut() {
                self.hand_taps(&arena, i + 1, each)?;
            }
            if self.check_guards {
                for g in self.guards.iter().filter(|g| g.first <= i && i <= g.last) {
                    let bytes = arena.bytes(g.start, g.len, || format!("guard bytes after step {i}"))?;
                    if bytes.iter().any(|&b| b != GUARD_BYTE) {
                        return Err(self.step_error(
                            i,
                            format!("wrote past the end of a buffer (guard bytes at arena offset {} changed)", g.start),
                        ));
                    }
                }
            }
        }
        self.outputs
            .iter()
            .enumerate()
            .map(|(k, (o, ty))| read_tensor(ty, arena.bytes(*o, type_bytes(ty)?, || format!("output {k}"))?))
            .collect()
    }

    /// Hands the taps of `tap_after[at]` to `each`.
    fn hand_taps(
        &self,
        arena: &Arena<'_>,
        at: usize,
        each: &mut dyn FnMut(usize, TapView<'_>),
    ) -> Result<(), JitError> {
        for &k in self.tap_after.get(at).into_iter().flatten() {
            let (o, ty, channels_last) = &self.taps[k];
            let bytes = arena.bytes(*o, type_bytes(ty)?, || format!("tap {k}"))?;
            each(k, TapView { ty, channels_last: *channels_last, bytes });
        }
        Ok(())
    }

    /// An error of step `i`, naming it.
    fn step_error(&self, i: usize, msg: String) -> JitError {
        let name = self.report.steps.get(i).map_or("?", |s| s.name.as_str()).to_string();
        JitError::Step { step: i, name, msg }
    }

    /// Fills the guard bytes of the buffers `which` selects.
    fn fill_guards(&self, arena: &mut Arena<'_>, which: impl Fn(&Guard) -> bool) -> Result<(), JitError> {
        for g in self.guards.iter().filter(|g| which(g)) {
            arena.bytes_mut(g.start, g.len, || "guard bytes".into())?.fill(GUARD_BYTE);
        }
        Ok(())
    }

    /// Host step `i`: reads its inputs from the arena as tensors, runs the node (on a native
    /// [`crate::host_kernels`] kernel when there is one, else on the interpreter), writes the
    /// results back.
    fn run_host(
        &self,
        arena: &mut Arena<'_>,
        i: usize,
        op: &Op,
        hin: &[HostIn],
        outputs: &[(usize, TensorType)],
    ) -> Result<(), JitError> {
        let name = self.report.steps.get(i).map_or("?", |s| s.name.as_str());
        let mut owned: Vec<Option<Tensor>> = Vec::new();
        let mut types: Vec<Option<TensorType>> = Vec::new();
        let mut consts: Vec<Option<Arc<Tensor>>> = Vec::new();
        for (k, a) in hin.iter().enumerate() {
            match a {
                HostIn::Missing => {
                    owned.push(None);
                    consts.push(None);
                    types.push(None);
                }
                HostIn::Arena(o, ty) => {
                    let bytes = arena.bytes(*o, type_bytes(ty)?, || format!("step {i} (`{name}`): input {k}"))?;
                    owned.push(Some(read_tensor(ty, bytes)?));
                    consts.push(None);
                    types.push(Some(ty.clone()));
                }
                HostIn::Const(t, ty) => {
                    owned.push(None);
                    types.push(Some(ty.clone()));
                    consts.push(Some(t.clone()));
                }
            }
        }
        let args: Vec<Option<&Tensor>> = owned.iter().zip(&consts).map(|(o, c)| o.as_ref().or(c.as_deref())).collect();
        let tys: Vec<Option<&TensorType>> = types.iter().map(|t| t.as_ref()).collect();
        let out_tys: Vec<TensorType> = outputs.iter().map(|o| o.1.clone()).collect();
        // a training graph's convolutions (runtime weights) and fake quantizations run natively
        let res = match crate::host_kernels::run(op, &args, &out_tys) {
            Some(r) => r.map_err(|e| self.step_error(i, e))?,
            None => {
                let opts = interp::RunOptions { max_tensor_bytes: self.max_tensor_bytes };
                interp::eval_node(name, op, &tys, &out_tys, &args, &opts)?
            }
        };
        drop(owned);
        for (k, (t, (o, ty))) in res.iter().zip(outputs).enumerate() {
            if t.dtype() != ty.dtype || Some(t.shape()) != ty.shape.as_fixed().as_deref() {
                return Err(self.step_error(
                    i,
                    format!("the interpreter returned {} {:?} for result {k} of type {ty}", t.dtype(), t.shape()),
                ));
            }
            let out = arena.bytes_mut(*o, tensor_bytes(t), || format!("step {i} (`{name}`): result {k}"))?;
            write_tensor(t, out);
        }
        Ok(())
    }

    /// Runs a generated step function over `units`, split across the thread pool in at most
    /// [`CHUNKS_PER_THREAD`] chunks per thread of whole `grain`s.
    fn run_jit(&self, func: StepFn, arena: &mut Arena<'_>, units: usize, grain: usize, _scratch: bool) {
        if units == 0 {
            return;
        }
        let sb = self.scratch_bytes;
        let call = move |arena: SendPtr, b: usize, e: usize| {
            SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                if s.len() * 64 < sb {
                    *s = lines(sb);
                }
                // SAFETY: `func` was generated for this program's arena plan with the step
                // signature; it reads and writes only its step's buffers in the arena (planned
                // not to overlap other live buffers, and inside the arena of `arena_bytes`), the
                // constants kept alive in `_keep`, and this thread's scratch (at least
                // `scratch_bytes`, borrowed for the call), for units `b..e` only. No Rust
                // reference into the arena is alive: `arena` is borrowed mutably by `run_jit`.
                unsafe { func(arena.0, s.as_mut_ptr() as *mut u8, b, e) }
            })
        };
        let base = SendPtr(arena.ptr());
        match &self.pool {
            Some(pool) if units > grain => {
                let chunks = (self.threads * CHUNKS_PER_THREAD).min(units.div_ceil(grain));
                let per = units.div_ceil(chunks).div_ceil(grain) * grain;
                let n = units.div_ceil(per);
                pool.install(|| {
                    (0..n).into_par_iter().for_each(|c| {
                        let b = c * per;
                        let e = (b + per).min(units);
                        call(base, b, e);
                    })
                });
            }
            _ => call(base, 0, units),
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn steps(&self) -> usize {
        self.exec.len()
    }
}

/// Whether an f32 convolution over im2col rows runs as the direct convolution microkernel: at
/// most [`crate::micro::float::DIRECT_MAX_N`] output columns, on a CPU that has it.
fn direct_conv(main: &crate::spec::MainOp) -> bool {
    use crate::spec::{MainOp, Rows};
    matches!(main, MainOp::GemmF32 { rows: Rows::Im2col { .. }, weights } if crate::micro::float::direct_conv_fits(weights.n))
}

/// The 512-bit requantization epilogue's parameters, when `spec`'s epilogue is exactly the
/// integer requantization with a proved bound and the native microkernels are selected.
fn native_requant(spec: &crate::spec::KernelSpec, mk: Microkernels) -> Option<RequantParams> {
    use crate::spec::{Acc, Store};
    if mk != Microkernels::Native || !crate::micro::requant::available() || spec.main.acc() != Acc::I32 {
        return None;
    }
    let signed_out = match spec.store {
        Store::U8 => false,
        Store::I8 => true,
        Store::F32 | Store::Bf16 => return None,
    };
    match spec.epilogue.as_slice() {
        [Step::AddChannelI32(c), Step::ScaleToF32(m), Step::RoundToInt { zp, lo, hi, bounded: true }] => {
            Some(RequantParams { corr: pad16(c), mult: pad16(m), zp: *zp, lo: *lo, hi: *hi, signed_out })
        }
        _ => None,
    }
}

/// The 512-bit float epilogue, when the native microkernels are selected on a CPU it runs on
/// for `spec`'s store (AVX-512F; for bf16 also BW and VL) and it computes `spec`'s epilogue list:
/// an f32 accumulator's float list, or an i32 accumulator's list that turns float (a
/// dequantization and the float ops after it, stored as f32 or rounded back to bytes).
///
/// On a CPU with AVX2 but not AVX-512: a branch-free f32 list (bias, residual, bounds) for the
/// AVX2 f32 GEMM (over the panel) and depthwise kernel, which apply it before their stores, and a
/// list with a SiLU, stored as f32 or bytes, for the row-wise tile kernel
/// ([`crate::micro::fepilogue::epilogue_f32_rows`]).
fn native_float_epilogue(spec: &crate::spec::KernelSpec, mk: Microkernels) -> Option<FloatEpilogue> {
    use crate::micro::fepilogue::FloatOp;
    use crate::spec::{MainOp, Store};
    if mk != Microkernels::Native {
        return None;
    }
    if crate::micro::fepilogue::available(spec.store) {
        return FloatEpilogue::from_kernel(spec.main.acc(), &spec.epilogue, spec.store);
    }
    if spec.store == Store::Bf16 || !avx2_here() {
        return None;
    }
    let in_kernel = match &spec.main {
        MainOp::GemmF32 { weights, .. } => {
            !crate::micro::float::narrow_fits(weights.n, weights.k) && !direct_conv(&spec.main)
        }
        MainOp::DepthwiseF32 { .. } => true,
        _ => false,
    };
    // The row-wise kernel is taken for a SiLU (the Cranelift epilogue calls the sigmoid kernel
    // once per four lanes: EfficientNet-B0's FP32 took 2.9x as long); on other lists the
    // Cranelift epilogue measured as fast or faster (PP-LCNet's INT8 hard-swish lists of 8 and 16
    // channels: 0.56 against 0.61 ms).
    FloatEpilogue::from_kernel(spec.main.acc(), &spec.epilogue, spec.store)
        .filter(|fe| fe.rows_form() && ((in_kernel && fe.lanes_form()) || fe.ops.contains(&FloatOp::Silu)))
}

/// The vector width of the requantization, quantized add and quantize kernels on this CPU.
fn requant_width() -> &'static str {
    match crate::micro::requant::Rung::best() {
        Some(crate::micro::requant::Rung::Avx512) => "512-bit",
        _ => "256-bit",
    }
}

/// Whether this CPU has AVX2 and FMA.
fn avx2_here() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn kernel_consts(main: &crate::spec::MainOp, keep: &mut Vec<Box<dyn Any + Send + Sync>>) -> (i64, i64) {
    use crate::spec::{MainOp, Rows};
    /// The address of a constant the generated code reads, kept alive in `keep`.
    fn kept<T: Send + Sync + 'static>(
        v: T,
        addr: impl Fn(&T) -> i64,
        keep: &mut Vec<Box<dyn Any + Send + Sync>>,
    ) -> i64 {
        let b = Box::new(v);
        let a = addr(&b);
        keep.push(b);
        a
    }
    let geom_of =
        |g: &ConvGeom, keep: &mut Vec<Box<dyn Any + Send + Sync>>| kept(*g, |g| g as *const ConvGeom as i64, keep);
    let rows_geom = |rows: &Rows, keep: &mut Vec<Box<dyn Any + Send + Sync>>| match rows {
        Rows::Im2col { geom, .. } => geom_of(geom, keep),
        Rows::Direct { .. } => 0,
    };
    match main {
        MainOp::GemmU8I8 { rows, weights } => {
            (kept(weights.clone(), |w| w.data.as_ptr() as i64, keep), rows_geom(rows, keep))
        }
        MainOp::GemmF32 { rows, weights } => {
            (kept(weights.clone(), |w| w.data.as_ptr() as i64, keep), rows_geom(rows, keep))
        }
        MainOp::GemmBf16 { rows, weights } => {
            (kept(weights.clone(), |w| w.data.as_ptr() as i64, keep), rows_geom(rows, keep))
        }
        MainOp::DepthwiseU8I8 { geom, weights, .. } => {
            (kept(weights.clone(), |w| w.data.as_ptr() as i64, keep), geom_of(geom, keep))
        }
        MainOp::DepthwiseF32 { geom, weights } => {
            (kept(weights.clone(), |w| w.data.as_ptr() as i64, keep), geom_of(geom, keep))
        }
        MainOp::DepthwiseBf16 { geom, weights } => {
            (kept(weights.clone(), |w| w.data.as_ptr() as i64, keep), geom_of(geom, keep))
        }
        MainOp::GlobalSumU8 { .. } | MainOp::GlobalSumF32 { .. } => (0, 0),
        MainOp::WinogradF32 { plan } => (kept(plan.clone(), |p| Arc::as_ptr(p) as i64, keep), 0),
    }
}

/// A layout conversion: NCHW <-> NHWC of `n` images of `c` channels and `hw` pixels, `elem`
/// bytes each, from arena offset `input` to `output`.
struct Transpose {
    to_nhwc: bool,
    n: usize,
    c: usize,
    hw: usize,
    elem: usize,
    input: usize,
    output: usize,
}

/// Why a layout conversion cannot run: its buffers do not fit the arena or each other.
#[derive(Debug, thiserror::Error)]
enum ConvertError {
    #[error("layout conversion of {n}x{c}x{hw} elements of {elem} bytes: the size overflows")]
    Overflow { n: usize, c: usize, hw: usize, elem: usize },
    #[error(
        "layout conversion reads arena bytes {input}..{input_end} and writes {output}..{output_end}: \
         outside the arena of {arena} bytes"
    )]
    Outside { input: usize, input_end: usize, output: usize, output_end: usize, arena: usize },
    #[error(
        "layout conversion reads arena bytes {input}..{input_end} and writes {output}..{output_end}, which overlap"
    )]
    Overlap { input: usize, input_end: usize, output: usize, output_end: usize },
    #[error("layout conversion of {0}-byte elements")]
    ElementSize(usize),
}

/// Runs the conversion `t` on the arena (a transpose of `c x hw` planes per image). Buffers
/// outside the arena or overlapping each other are a memory-plan bug: an error naming both
/// ranges, never a silent skip.
fn convert(arena: &mut Arena<'_>, t: &Transpose) -> Result<(), ConvertError> {
    let &Transpose { to_nhwc, n, c, hw, elem, input, output } = t;
    let len = [n, c, hw, elem].iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let Some(len) = len else {
        return Err(ConvertError::Overflow { n, c, hw, elem });
    };
    let (input_end, output_end) = (input.saturating_add(len), output.saturating_add(len));
    let fits = |start: usize, end: usize| start.checked_add(len) == Some(end) && end <= arena.len;
    if !fits(input, input_end) || !fits(output, output_end) {
        return Err(ConvertError::Outside { input, input_end, output, output_end, arena: arena.len });
    }
    // Both buffers are live during this step, so the memory plan never lets them overlap.
    if len > 0 && input < output_end && output < input_end {
        return Err(ConvertError::Overlap { input, input_end, output, output_end });
    }
    if !matches!(elem, 1 | 2 | 4 | 8) {
        return Err(ConvertError::ElementSize(elem));
    }
    let (rows, cols) = if to_nhwc { (c, hw) } else { (hw, c) };
    let base = arena.ptr();
    // SAFETY: `input..input_end` and `output..output_end` lie inside the arena and do not overlap
    // (checked above), each holds `n * rows * cols` elements of `elem` bytes, and no Rust
    // reference into the arena is alive (`arena` is borrowed mutably here). The element accesses
    // are unaligned reads and writes, so any offset is fine.
    unsafe {
        let (src, dst) = (base.add(input) as *const u8, base.add(output));
        match elem {
            1 => transpose_planes::<u8>(src, dst, n, rows, cols),
            2 => transpose_planes::<u16>(src as *const u16, dst as *mut u16, n, rows, cols),
            4 => transpose_planes::<u32>(src as *const u32, dst as *mut u32, n, rows, cols),
            _ => transpose_planes::<u64>(src as *const u64, dst as *mut u64, n, rows, cols),
        }
    }
    Ok(())
}

/// `dst[img][col][row] = src[img][row][col]` for `n` planes of `rows x cols` f32 elements: the
/// layout conversion's blocked transpose on slices (NCHW to NHWC with `rows` the channels, back
/// with `cols` the channels), for the host kernels.
pub(crate) fn transpose_images(src: &[f32], dst: &mut [f32], n: usize, rows: usize, cols: usize) {
    let len = n.saturating_mul(rows).saturating_mul(cols);
    assert!(
        src.len() >= len && dst.len() >= len,
        "transpose_images: {len} elements, slices of {} and {}",
        src.len(),
        dst.len()
    );
    // SAFETY: both slices hold at least `n * rows * cols` elements (checked above) and cannot
    // overlap (one is borrowed shared, the other mutably).
    unsafe { transpose_planes::<f32>(src.as_ptr(), dst.as_mut_ptr(), n, rows, cols) }
}

/// `dst[img][col][row] = src[img][row][col]` for `n` planes of `rows x cols` elements.
///
/// # Safety
/// `src` and `dst` are valid for reads and writes of `n * rows * cols` elements of `T` each
/// (any alignment) and do not overlap.
unsafe fn transpose_planes<T: Copy>(src: *const T, dst: *mut T, n: usize, rows: usize, cols: usize) {
    // SAFETY: the contracts of the helpers are this function's.
    unsafe {
        match rows {
            1 => transpose_rows::<T, 1>(src, dst, n, cols),
            2 => transpose_rows::<T, 2>(src, dst, n, cols),
            3 => transpose_rows::<T, 3>(src, dst, n, cols),
            4 => transpose_rows::<T, 4>(src, dst, n, cols),
            _ => transpose_blocked::<T>(src, dst, n, rows, cols),
        }
    }
}

/// [`transpose_planes`] in blocks that keep both sides in cache.
///
/// # Safety
/// As [`transpose_planes`].
unsafe fn transpose_blocked<T: Copy>(src: *const T, dst: *mut T, n: usize, rows: usize, cols: usize) {
    const B: usize = 32;
    let plane = rows * cols;
    for img in 0..n {
        for r0 in (0..rows).step_by(B) {
            let r1 = (r0 + B).min(rows);
            for c0 in (0..cols).step_by(B) {
                let c1 = (c0 + B).min(cols);
                for col in c0..c1 {
                    for r in r0..r1 {
                        // SAFETY: `img * plane + r * cols + col` and `img * plane + col * rows + r`
                        // are below `n * rows * cols`, inside both buffers.
                        unsafe {
                            let v = src.add(img * plane + r * cols + col).read_unaligned();
                            dst.add(img * plane + col * rows + r).write_unaligned(v);
                        }
                    }
                }
            }
        }
    }
}

/// [`transpose_planes`] for a compile-time row count (images with 1 to 4 channels, where the
/// blocked loop would cost more than the copy).
///
/// # Safety
/// As [`transpose_planes`] with `rows = R`.
unsafe fn transpose_rows<T: Copy, const R: usize>(src: *const T, dst: *mut T, n: usize, cols: usize) {
    let plane = R * cols;
    for img in 0..n {
        for col in 0..cols {
            for r in 0..R {
                // SAFETY: both indices are below `n * R * cols`, inside both buffers.
                unsafe {
                    let v = src.add(img * plane + r * cols + col).read_unaligned();
                    dst.add(img * plane + col * R + r).write_unaligned(v);
                }
            }
        }
    }
}

/// Bytes of a tensor's data.
fn tensor_bytes(t: &Tensor) -> usize {
    t.len() * t.dtype().size_bytes()
}

/// Bytes of a tensor of a (fixed) type.
fn type_bytes(ty: &TensorType) -> Result<usize, JitError> {
    let shape = ty.shape.as_fixed().ok_or_else(|| JitError::Run("a symbolic shape at run time".into()))?;
    shape
        .iter()
        .try_fold(ty.dtype.size_bytes(), |a, &d| a.checked_mul(d))
        .ok_or_else(|| JitError::Run(format!("a tensor of type {ty} overflows the address space")))
}

/// Writes `t`'s elements (little-endian) to `out`, which holds exactly [`tensor_bytes`] bytes.
pub(crate) fn write_tensor(t: &Tensor, out: &mut [u8]) {
    macro_rules! put {
        ($v:expr, $n:expr) => {
            for (o, x) in out.chunks_exact_mut($n).zip($v.iter()) {
                o.copy_from_slice(&x.to_le_bytes());
            }
        };
    }
    match t.data() {
        TensorData::F32(v) => put!(v, 4),
        TensorData::F16(v) => put!(v, 2),
        TensorData::BF16(v) => put!(v, 2),
        TensorData::I8(v) => put!(v, 1),
        TensorData::U8(v) => out.copy_from_slice(v),
        TensorData::I32(v) => put!(v, 4),
        TensorData::I64(v) => put!(v, 8),
        TensorData::Bool(v) => {
            for (o, b) in out.iter_mut().zip(v) {
                *o = *b as u8;
            }
        }
        TensorData::F64(v) => put!(v, 8),
        TensorData::I16(v) => put!(v, 2),
        TensorData::U16(v) => put!(v, 2),
        TensorData::U32(v) => put!(v, 4),
        TensorData::U64(v) => put!(v, 8),
    }
}

/// A tensor of type `ty` from `mem`, which holds exactly its bytes (little-endian).
fn read_tensor(ty: &TensorType, mem: &[u8]) -> Result<Tensor, JitError> {
    let shape = ty.shape.as_fixed().ok_or_else(|| JitError::Run("a symbolic shape at run time".into()))?;
    let n: usize = shape.iter().product();
    /// The `n` elements of `K` bytes each of `mem`, decoded by `f`, in a vector allocated
    /// fallibly (its size comes from the model).
    fn get<T, const K: usize>(mem: &[u8], n: usize, f: fn([u8; K]) -> T) -> Result<Vec<T>, JitError> {
        let mut v = Vec::new();
        v.try_reserve_exact(n)
            .map_err(|_| JitError::Alloc { what: "a host step's input".into(), bytes: n.saturating_mul(K) })?;
        // one `extend` over exact chunks (no capacity check per element: it vectorizes)
        v.extend(mem.chunks_exact(K).take(n).map(|c| {
            let mut b = [0u8; K];
            b.copy_from_slice(c);
            f(b)
        }));
        Ok(v)
    }
    let data = match ty.dtype {
        DType::F32 => TensorData::F32(get(mem, n, f32::from_le_bytes)?),
        DType::F16 => TensorData::F16(get(mem, n, half::f16::from_le_bytes)?),
        DType::BF16 => TensorData::BF16(get(mem, n, half::bf16::from_le_bytes)?),
        DType::I8 => TensorData::I8(get(mem, n, i8::from_le_bytes)?),
        DType::U8 => TensorData::U8(get(mem, n, |[b]: [u8; 1]| b)?),
        DType::I32 => TensorData::I32(get(mem, n, i32::from_le_bytes)?),
        DType::I64 => TensorData::I64(get(mem, n, i64::from_le_bytes)?),
        DType::Bool => TensorData::Bool(get(mem, n, |[b]: [u8; 1]| b != 0)?),
        DType::F64 => TensorData::F64(get(mem, n, f64::from_le_bytes)?),
        DType::I16 => TensorData::I16(get(mem, n, i16::from_le_bytes)?),
        DType::U16 => TensorData::U16(get(mem, n, u16::from_le_bytes)?),
        DType::U32 => TensorData::U32(get(mem, n, u32::from_le_bytes)?),
        DType::U64 => TensorData::U64(get(mem, n, u64::from_le_bytes)?),
    };
    Tensor::new(shape, data).ok_or_else(|| JitError::Run("a tensor of the wrong size".into()))
}

/// Compiles `lw`-style programs; exposed for tests of single steps.
pub fn compile_lowered(lw: Lowered, microkernels: Microkernels, threads: usize) -> Result<Program, JitError> {
    let bf16_compute = crate::JitOptions { microkernels, ..crate::JitOptions::default() }.bf16_compute();
    Program::build(lw, microkernels, bf16_compute, threads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::{Buf, LoweredStep};
    use qforge_ir::Shape;

    fn conv(input: usize, output: usize) -> Transpose {
        Transpose { to_nhwc: true, n: 1, c: 2, hw: 3, elem: 4, input, output }
    }

    #[test]
    fn convert_transposes_and_refuses_bad_ranges() {
        let mut lines = lines(256);
        let mut arena = Arena::new(&mut lines);
        let x: Vec<u8> = (0..6u32).flat_map(|v| v.to_le_bytes()).collect();
        arena.bytes_mut(0, 24, String::new).unwrap().copy_from_slice(&x);
        convert(&mut arena, &conv(0, 64)).unwrap();
        let y: Vec<u32> = arena
            .bytes(64, 24, String::new)
            .unwrap()
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(y, [0, 3, 1, 4, 2, 5]);
        let cases = [
            (
                conv(240, 0),
                "layout conversion reads arena bytes 240..264 and writes 0..24: outside the arena of 256 bytes",
            ),
            (conv(0, usize::MAX - 4), &format!("writes {}..{}", usize::MAX - 4, usize::MAX)),
            (conv(0, 16), "layout conversion reads arena bytes 0..24 and writes 16..40, which overlap"),
            (conv(16, 0), "reads arena bytes 16..40 and writes 0..24, which overlap"),
            (Transpose { elem: 3, ..conv(0, 64) }, "layout conversion of 3-byte elements"),
        ];
        for (t, want) in cases {
            let e = convert(&mut arena, &t).unwrap_err().to_string();
            assert!(e.contains(want), "{e} does not contain {want}");
        }
    }

    #[test]
    fn a_conversion_outside_the_arena_fails_the_run_naming_the_step() {
        // A plan bug, simulated: the conversion's buffers are declared far smaller than the
        // tensor it moves, so the arena cannot hold the copy.
        let small = TensorType::new(DType::F32, Shape::fixed(&[1]));
        let lw = Lowered {
            buffers: vec![Buf { bytes: 4 }, Buf { bytes: 4 }],
            steps: vec![LoweredStep {
                name: "x.layout".into(),
                kind: StepKind::Convert { to_nhwc: true, n: 1, c: 64, hw: 64, elem: 4, input: 0, output: 1 },
            }],
            inputs: vec![(0, small.clone())],
            outputs: vec![(1, small)],
            taps: vec![],
            host_ops: vec![],
        };
        let p = Program::build(lw, Microkernels::Native, false, 1).unwrap();
        let e = p.run(&[Tensor::from_f32(vec![1], vec![1.0])], None).unwrap_err().to_string();
        assert!(e.starts_with("step 0 (`x.layout`): layout conversion reads arena bytes"), "{e}");
        assert!(e.contains("outside the arena of"), "{e}");
    }
}
