//! A compiled program for one set of input shapes: the generated step functions, the arena plan,
//! and the executor that runs the steps in order (splitting each JIT step's units across
//! threads), converts layouts and runs host steps.

use crate::emit::{elementwise, kernel, Jit, Microkernels};
use crate::lower::{HostArg, Lowered, StepKind};
use crate::memory;
use crate::micro::requant::RequantParams;
use crate::micro::ConvGeom;
use crate::spec::Step;
use crate::JitError;
use qforge_ir::{interp, DType, Op, Tensor, TensorData, TensorType};
use rayon::prelude::*;
use std::any::Any;
use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A generated step function: `(arena, scratch, begin, end)`.
pub type StepFn = unsafe extern "C" fn(*mut u8, *mut u8, usize, usize);

enum Exec {
    Jit { func: StepFn, units: usize, grain: usize, scratch: bool },
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
struct Line([u8; 64]);

fn lines(bytes: usize) -> Vec<Line> {
    vec![Line([0; 64]); bytes.div_ceil(64).max(1)]
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

#[derive(Clone, Copy)]
struct SendPtr(*mut u8);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// A compiled program.
pub struct Program {
    jit: Option<JitCode>,
    exec: Vec<Exec>,
    inputs: Vec<(usize, TensorType)>,
    outputs: Vec<(usize, TensorType)>,
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
    pub report: ProgramReport,
}

/// The JIT module owning the generated code. Only dropped (never used) after compilation, so
/// sharing it between threads is sound.
struct JitCode(Jit);
// SAFETY: after `finalize` the module is never touched again until it is freed in `drop`; the
// code it owns is immutable and callable from any thread.
unsafe impl Send for JitCode {}
unsafe impl Sync for JitCode {}

impl Drop for Program {
    fn drop(&mut self) {
        if let Some(jit) = self.jit.take() {
            // SAFETY: no function of this module can run any more: the program is being dropped.
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
    pub fn build(lw: Lowered, microkernels: Microkernels, threads: usize) -> Result<Program, JitError> {
        let t0 = Instant::now();
        let Lowered { buffers, steps, inputs, outputs, host_ops } = lw;
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
                StepKind::MaxPool { input, .. }
                | StepKind::Convert { input, .. }
                | StepKind::Rows { input, .. }
                | StepKind::AvgPool { input, .. } => vec![*input],
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

        let mut jit = Jit::new(microkernels)?;
        let mut keep: Vec<Box<dyn Any + Send + Sync>> = Vec::new();
        let mut funcs = Vec::new(); // (step index, FuncId, units, grain, scratch)
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
                            Step::ScaleToF32(v) | Step::AddChannelF32(v) => {
                                let b = Box::new(pad16(v));
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
                    let consts = kernel::Consts { params, weights, geom, requant };
                    let bind = kernel::Bindings {
                        input: off(*input) as i64,
                        output: off(*output) as i64,
                        residual: residual.map(|r| off(r) as i64),
                        out_col: *out_col as i64,
                        ld_out: *ld_out as i64,
                    };
                    let id = jit.define_step(&s.name, |em, p| kernel::emit(em, spec, bind, &consts, p))?;
                    scratch_bytes = scratch_bytes.max(kernel::scratch_bytes(spec));
                    let grain = match spec.main {
                        crate::spec::MainOp::GemmU8I8 { .. } | crate::spec::MainOp::GemmF32 { .. } => kernel::ROW_BLOCK,
                        _ => 1,
                    };
                    funcs.push((i, id, kernel::units(spec), grain, true));
                    let mut what = spec.describe();
                    if requant != 0 {
                        what.push_str(" (epilogue: 512-bit requant microkernel)");
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
                            let (lo, hi) = if *out == IntTy::U8 { (0, 255) } else { (-128, 127) };
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
                            Some(addr)
                        }
                        _ => None,
                    };
                    let id = match native {
                        Some(c) => {
                            jit.define_step(&s.name, |em, p| elementwise::emit_native_qadd(em, c, &ins, o, p))?
                        }
                        None => jit.define_step(&s.name, |em, p| elementwise::emit(em, *op, &ins, o, p))?,
                    };
                    funcs.push((i, id, *len, 1024, false));
                    let what = if native.is_some() {
                        format!("{} (512-bit microkernel)", op.name())
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
                StepKind::Rows { op, input, output, units } => {
                    let mut op = op.clone();
                    op.x = off(*input);
                    op.y = off(*output);
                    let what = format!("{:?}", op.kind);
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
                    // SAFETY: the function was defined with the step signature and finalized.
                    let func: StepFn = unsafe { std::mem::transmute::<*const u8, StepFn>(jit.address(id)) };
                    Exec::Jit { func, units, grain, scratch }
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
            arena_bytes: plan.arena_bytes,
            scratch_bytes,
            arena: Mutex::new(Vec::new()),
            pool,
            threads,
            _keep: keep,
            guards,
            check_guards: false,
            report,
        })
    }

    /// Runs the program; `inputs` must have exactly the types it was compiled for. With
    /// `times`, each step's wall time is added to `times[step]`.
    pub fn run(&self, inputs: &[Tensor], mut times: Option<&mut Vec<Duration>>) -> Result<Vec<Tensor>, JitError> {
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
        let mut guard = self.arena.try_lock().ok();
        let mut local;
        let arena: &mut Vec<Line> = match guard.as_deref_mut() {
            Some(a) => a,
            None => {
                local = Vec::new();
                &mut local
            }
        };
        if arena.len() * 64 < self.arena_bytes {
            *arena = lines(self.arena_bytes);
        }
        let base = arena.as_mut_ptr() as *mut u8;
        let bytes = arena.len() * 64;
        // SAFETY: `base` addresses `bytes` initialized bytes owned by `arena` for this call.
        let mem = unsafe { std::slice::from_raw_parts_mut(base, bytes) };
        if self.check_guards {
            for g in self.guards.iter().filter(|g| g.first == 0) {
                mem[g.start..g.start + g.len].fill(GUARD_BYTE);
            }
        }
        for (t, (o, _)) in inputs.iter().zip(&self.inputs) {
            write_tensor(t, &mut mem[*o..]);
        }
        if let Some(t) = times.as_deref_mut() {
            t.resize(self.exec.len(), Duration::ZERO);
        }
        for (i, e) in self.exec.iter().enumerate() {
            if self.check_guards && i > 0 {
                for g in self.guards.iter().filter(|g| g.first == i) {
                    mem[g.start..g.start + g.len].fill(GUARD_BYTE);
                }
            }
            let t0 = Instant::now();
            match e {
                Exec::Jit { func, units, grain, scratch } => self.run_jit(*func, base, *units, *grain, *scratch),
                Exec::Convert { to_nhwc, n, c, hw, elem, input, output } => {
                    convert(mem, *to_nhwc, *n, *c, *hw, *elem, *input, *output)
                }
                Exec::Host { op, inputs: hin, outputs } => {
                    let mut owned: Vec<Option<Tensor>> = Vec::new();
                    let mut types: Vec<Option<TensorType>> = Vec::new();
                    let mut consts: Vec<Option<Arc<Tensor>>> = Vec::new();
                    for a in hin {
                        match a {
                            HostIn::Missing => {
                                owned.push(None);
                                consts.push(None);
                                types.push(None);
                            }
                            HostIn::Arena(o, ty) => {
                                owned.push(Some(read_tensor(ty, &mem[*o..])?));
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
                    let args: Vec<Option<&Tensor>> =
                        owned.iter().zip(&consts).map(|(o, c)| o.as_ref().or(c.as_deref())).collect();
                    let tys: Vec<Option<&TensorType>> = types.iter().map(|t| t.as_ref()).collect();
                    let out_tys: Vec<TensorType> = outputs.iter().map(|o| o.1.clone()).collect();
                    let res = interp::eval_op(op, &tys, &out_tys, &args)
                        .map_err(|m| JitError::Run(format!("{} (host): {m}", op.name())))?;
                    for (t, (o, _)) in res.iter().zip(outputs) {
                        write_tensor(t, &mut mem[*o..]);
                    }
                }
            }
            if let Some(t) = times.as_deref_mut() {
                t[i] += t0.elapsed();
            }
            if self.check_guards {
                for g in self.guards.iter().filter(|g| g.first <= i && i <= g.last) {
                    if mem[g.start..g.start + g.len].iter().any(|&b| b != GUARD_BYTE) {
                        let name = self.report.steps.get(i).map_or("?", |s| s.name.as_str());
                        return Err(JitError::Run(format!(
                            "step {i} (`{name}`) wrote past the end of a buffer (guard bytes at arena offset {} changed)",
                            g.start
                        )));
                    }
                }
            }
        }
        self.outputs.iter().map(|(o, ty)| read_tensor(ty, &mem[*o..])).collect()
    }

    fn run_jit(&self, func: StepFn, base: *mut u8, units: usize, grain: usize, _scratch: bool) {
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
                // SAFETY: the step function reads and writes only its buffers in the arena (planned
                // not to overlap live buffers) and this thread's scratch, for units b..e.
                unsafe { func(arena.0, s.as_mut_ptr() as *mut u8, b, e) }
            })
        };
        let arena = SendPtr(base);
        match &self.pool {
            Some(pool) if units > grain => {
                let chunks = (self.threads * 4).min(units.div_ceil(grain));
                let per = units.div_ceil(chunks).div_ceil(grain) * grain;
                let n = units.div_ceil(per);
                pool.install(|| {
                    (0..n).into_par_iter().for_each(|c| {
                        let b = c * per;
                        let e = (b + per).min(units);
                        call(arena, b, e);
                    })
                });
            }
            _ => call(arena, 0, units),
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn steps(&self) -> usize {
        self.exec.len()
    }
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
        Store::F32 => return None,
    };
    match spec.epilogue.as_slice() {
        [Step::AddChannelI32(c), Step::ScaleToF32(m), Step::RoundToInt { zp, lo, hi, bounded: true }] => {
            Some(RequantParams { corr: pad16(c), mult: pad16(m), zp: *zp, lo: *lo, hi: *hi, signed_out })
        }
        _ => None,
    }
}

fn kernel_consts(main: &crate::spec::MainOp, keep: &mut Vec<Box<dyn Any + Send + Sync>>) -> (i64, i64) {
    use crate::spec::{MainOp, Rows};
    let geom_of = |g: &ConvGeom, keep: &mut Vec<Box<dyn Any + Send + Sync>>| {
        let b = Box::new(*g);
        let a = &*b as *const ConvGeom as i64;
        keep.push(b);
        a
    };
    match main {
        MainOp::GemmU8I8 { rows, weights } => {
            let w = weights.data.as_ptr() as i64;
            keep.push(Box::new(weights.clone()));
            let g = match rows {
                Rows::Im2col { geom, .. } => geom_of(geom, keep),
                Rows::Direct { .. } => 0,
            };
            (w, g)
        }
        MainOp::GemmF32 { rows, weights } => {
            let w = weights.data.as_ptr() as i64;
            keep.push(Box::new(weights.clone()));
            let g = match rows {
                Rows::Im2col { geom, .. } => geom_of(geom, keep),
                Rows::Direct { .. } => 0,
            };
            (w, g)
        }
        MainOp::DepthwiseU8I8 { geom, weights, .. } => {
            let w = weights.data.as_ptr() as i64;
            keep.push(Box::new(weights.clone()));
            (w, geom_of(geom, keep))
        }
        MainOp::DepthwiseF32 { geom, weights } => {
            let w = weights.data.as_ptr() as i64;
            keep.push(Box::new(weights.clone()));
            (w, geom_of(geom, keep))
        }
        MainOp::GlobalSumU8 { .. } | MainOp::GlobalSumF32 { .. } => (0, 0),
    }
}

/// NCHW <-> NHWC, by element size (a transpose of `c x hw` planes per image).
#[allow(clippy::too_many_arguments)]
fn convert(mem: &mut [u8], to_nhwc: bool, n: usize, c: usize, hw: usize, elem: usize, input: usize, output: usize) {
    let len = n * c * hw * elem;
    if input + len > mem.len() || output + len > mem.len() {
        return;
    }
    let (rows, cols) = if to_nhwc { (c, hw) } else { (hw, c) };
    /// `dst[col][row] = src[row][col]` for each image, in blocks that keep both sides in cache.
    ///
    /// # Safety
    /// `src` and `dst` hold `n * rows * cols` elements of `T` each and do not overlap.
    unsafe fn transpose<T: Copy>(src: *const T, dst: *mut T, n: usize, rows: usize, cols: usize) {
        const B: usize = 32;
        let plane = rows * cols;
        for img in 0..n {
            let (s, d) = (src.add(img * plane), dst.add(img * plane));
            for r0 in (0..rows).step_by(B) {
                let r1 = (r0 + B).min(rows);
                for c0 in (0..cols).step_by(B) {
                    let c1 = (c0 + B).min(cols);
                    for col in c0..c1 {
                        for r in r0..r1 {
                            d.add(col * rows + r).write_unaligned(s.add(r * cols + col).read_unaligned());
                        }
                    }
                }
            }
        }
    }
    /// The same for a compile-time row count (images with 1 to 4 channels, where the inner loop
    /// would otherwise cost more than the copy).
    ///
    /// # Safety
    /// As `transpose`.
    unsafe fn transpose_rows<T: Copy, const R: usize>(src: *const T, dst: *mut T, n: usize, cols: usize) {
        let plane = R * cols;
        for img in 0..n {
            let (s, d) = (src.add(img * plane), dst.add(img * plane));
            for col in 0..cols {
                for r in 0..R {
                    d.add(col * R + r).write_unaligned(s.add(r * cols + col).read_unaligned());
                }
            }
        }
    }
    unsafe fn dispatch<T: Copy>(src: *const T, dst: *mut T, n: usize, rows: usize, cols: usize) {
        match rows {
            1 => transpose_rows::<T, 1>(src, dst, n, cols),
            2 => transpose_rows::<T, 2>(src, dst, n, cols),
            3 => transpose_rows::<T, 3>(src, dst, n, cols),
            4 => transpose_rows::<T, 4>(src, dst, n, cols),
            _ => transpose::<T>(src, dst, n, rows, cols),
        }
    }
    // Both buffers are live during this step, so the memory plan never lets them overlap.
    if input < output + len && output < input + len {
        return;
    }
    let base = mem.as_mut_ptr();
    // SAFETY: both ranges lie inside `mem` (checked above) and do not overlap.
    unsafe {
        let (src, dst) = (base.add(input) as *const u8, base.add(output));
        match elem {
            1 => dispatch::<u8>(src, dst, n, rows, cols),
            2 => dispatch::<u16>(src as *const u16, dst as *mut u16, n, rows, cols),
            4 => dispatch::<u32>(src as *const u32, dst as *mut u32, n, rows, cols),
            _ => dispatch::<u64>(src as *const u64, dst as *mut u64, n, rows, cols),
        }
    }
}

fn write_tensor(t: &Tensor, out: &mut [u8]) {
    macro_rules! put {
        ($v:expr, $n:expr) => {
            for (i, x) in $v.iter().enumerate() {
                out[i * $n..(i + 1) * $n].copy_from_slice(&x.to_le_bytes());
            }
        };
    }
    match t.data() {
        TensorData::F32(v) => put!(v, 4),
        TensorData::F16(v) => put!(v, 2),
        TensorData::BF16(v) => put!(v, 2),
        TensorData::I8(v) => put!(v, 1),
        TensorData::U8(v) => out[..v.len()].copy_from_slice(v),
        TensorData::I32(v) => put!(v, 4),
        TensorData::I64(v) => put!(v, 8),
        TensorData::Bool(v) => {
            for (i, b) in v.iter().enumerate() {
                out[i] = *b as u8;
            }
        }
    }
}

fn read_tensor(ty: &TensorType, mem: &[u8]) -> Result<Tensor, JitError> {
    let shape = ty.shape.as_fixed().ok_or_else(|| JitError::Run("a symbolic shape at run time".into()))?;
    let n: usize = shape.iter().product();
    macro_rules! get {
        ($t:ty, $k:expr) => {
            (0..n)
                .map(|i| {
                    let mut b = [0u8; $k];
                    b.copy_from_slice(&mem[i * $k..(i + 1) * $k]);
                    <$t>::from_le_bytes(b)
                })
                .collect::<Vec<$t>>()
        };
    }
    let data = match ty.dtype {
        DType::F32 => TensorData::F32(get!(f32, 4)),
        DType::F16 => TensorData::F16(get!(half::f16, 2)),
        DType::BF16 => TensorData::BF16(get!(half::bf16, 2)),
        DType::I8 => TensorData::I8(get!(i8, 1)),
        DType::U8 => TensorData::U8(mem[..n].to_vec()),
        DType::I32 => TensorData::I32(get!(i32, 4)),
        DType::I64 => TensorData::I64(get!(i64, 8)),
        DType::Bool => TensorData::Bool(mem[..n].iter().map(|&b| b != 0).collect()),
    };
    Tensor::new(shape, data).ok_or_else(|| JitError::Run("a tensor of the wrong size".into()))
}

/// Compiles `lw`-style programs; exposed for tests of single steps.
pub fn compile_lowered(lw: Lowered, microkernels: Microkernels, threads: usize) -> Result<Program, JitError> {
    Program::build(lw, microkernels, threads)
}
