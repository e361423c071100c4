//! # qforge-codegen: the Cranelift JIT
//!
//! Compiles an optimized [`qforge_ir::Graph`] into machine code and runs it:
//!
//! 0. [`lower::check_sizes`]: every constant, result and (for f16/bf16 compute) f32 copy of the
//!    graph as given is checked against [`JitOptions::max_tensor_bytes`], as the interpreter
//!    checks them; [`widen`]: f16/bf16 compute ops become f32 ops between a widening and a
//!    rounding cast; [`fold`]: nodes computed from constants only are evaluated once, by the
//!    interpreter, and become constants;
//! 1. [`lower`]: the graph, for concrete input shapes, becomes steps over buffers, one kernel
//!    family per file: fused kernels described as data ([`spec::KernelSpec`]: main op, epilogue
//!    list, store), element-wise steps, row steps, layout conversions (NHWC for convolutions),
//!    and host steps for ops no kernel covers (run by the reference interpreter and listed in the
//!    report with the reason); packed weight copies are held to the size limit too;
//! 2. [`memory`]: every buffer gets an offset in one arena by liveness;
//! 3. [`emit`]: Cranelift generates one function per step from its description; the inner
//!    loops call [`micro`]kernels registered as JIT symbols (AVX-512 VNNI/FMA intrinsics with
//!    runtime dispatch) or, with [`Microkernels::Cranelift`], GEMMs emitted as 128-bit CLIF;
//! 4. [`program`]: the executor runs the steps, splitting each over threads.
//!
//! Programs compiled one after another on a thread share a dropped program's arena and packed
//! float weights inside [`reuse::between_programs`] (for callers that compile many variants of
//! one model, such as the sensitivity study).
//!
//! ## Invariants
//! * Depends on `qforge-ir` only; never changes the graph it is given.
//! * Follows [`qforge_ir::numerics`] exactly: on integer graphs the JIT agrees with the reference
//!   interpreter bit for bit; float results differ by summation order only.
//! * Inputs are checked (count, dtype, shape) before any generated code runs; generated code
//!   touches only the arena, its own scratch and the constants it was compiled with.
//! * One size limit with the interpreter ([`qforge_ir::limits`]): nothing larger than
//!   [`JitOptions::max_tensor_bytes`] is allocated for a tensor, constant copy, packed weight
//!   copy or host-step temporary; an oversized model is refused while lowering, before any
//!   buffer exists, with the interpreter's [`qforge_ir::IrError::TooLarge`] message
//!   ([`JitError::Ir`]). The arena, weight packing and host-step tensors, whose sizes come from
//!   the model, are allocated fallibly: a failure is an error, not an abort.
//! * Never panics on a user's model: malformed or unsupported graphs are [`JitError`] values or
//!   host steps. A memory-plan bug is an error naming the step (layout conversions check their
//!   ranges; `check_guards` checks every buffer's end), never silent wrong output.
//! * The only crate with `unsafe` code. Every unsafe operation sits in an `unsafe` block with a
//!   `// SAFETY:` comment saying what it relies on (`unsafe_op_in_unsafe_fn` and
//!   `clippy::undocumented_unsafe_blocks` are denied in `Cargo.toml`); no Rust reference into the
//!   arena is alive while generated code writes it.
//! * Callers: `qforge` (the compiler crate) and tests; `passes` never calls it (it runs graphs
//!   through its `Evaluator` trait). Nothing here reads files, prints or parses the command line;
//!   it logs one `tracing` event per compiled program.

pub mod emit;
pub mod fold;
pub mod host_kernels;
pub mod lower;
pub mod memory;
pub mod micro;
pub mod program;
pub mod reuse;
pub mod spec;
pub mod widen;

pub use emit::Microkernels;

pub use program::{Program, ProgramReport, StepInfo};

use qforge_ir::{interp, Graph, IrError, Tensor, TensorType};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why the JIT hands `g` to the interpreter whole, if it does (see
/// [`JitExecutable::interpreted`]).
pub fn interpreted(g: &Graph) -> Option<String> {
    let id = g.node_ids().find(|&id| g.node(id).op.data_dependent().is_some())?;
    let node = g.node(id);
    Some(format!(
        "node `{}` ({}) has a result size that depends on the data: the graph runs on the interpreter",
        node.name,
        node.op.name()
    ))
}

/// Errors of compilation and execution.
#[derive(Debug, thiserror::Error)]
pub enum JitError {
    #[error("node `{node}`: {msg}")]
    Lower { node: String, msg: String },
    #[error("code generation: {0}")]
    Codegen(String),
    #[error("input: {0}")]
    Input(String),
    #[error("run: {0}")]
    Run(String),
    /// A step failed at run time: a buffer outside the arena or overlapping another (a
    /// memory-plan bug, reported instead of a wrong result), or a write past a buffer's end.
    #[error("step {step} (`{name}`): {msg}")]
    Step { step: usize, name: String, msg: String },
    /// An allocation whose size comes from the model failed.
    #[error("{what}: could not allocate {bytes} bytes")]
    Alloc { what: String, bytes: usize },
    /// An error of the IR crate, forwarded unchanged so its text is the interpreter's: a tensor
    /// over the size limit ([`IrError::TooLarge`]), or a host step's failure naming its node.
    #[error(transparent)]
    Ir(#[from] IrError),
}

/// Options of the JIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JitOptions {
    pub microkernels: Microkernels,
    /// Threads per step (1: the calling thread only).
    pub threads: usize,
    /// Debug mode (tests): guard bytes after every arena buffer, verified after every step; a
    /// step that writes outside its buffers fails the run naming the step.
    pub check_guards: bool,
    /// The largest tensor, constant, packed weight copy or host-step temporary the JIT may
    /// allocate, in bytes (`--max-tensor-bytes`; the interpreter's
    /// [`interp::RunOptions::max_tensor_bytes`]). Checked while lowering, before any buffer
    /// exists.
    pub max_tensor_bytes: u64,
    /// How bf16 convolutions and matrix products compute (`--bf16-kernels`).
    pub bf16: Bf16Kernels,
}

/// How bf16 convolutions and matrix products compute. Both ways compute the bf16 dot product of
/// the numerics contract (exact products summed in f32, one rounding of the result); they
/// differ in speed and in summation order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Bf16Kernels {
    /// The bf16 kernels where `vdpbf16ps` is faster than f32 FMA on this CPU
    /// ([`micro::bf16::dot_rate`]), the f32 kernels elsewhere.
    #[default]
    Auto,
    /// The bf16 GEMM (`vdpbf16ps`) and the bf16 depthwise kernel wherever the CPU has AVX512-BF16.
    Dot,
    /// The f32 kernels on bf16 values widened exactly, each result rounded once to bf16 in the
    /// kernel's epilogue.
    F32,
}

impl JitOptions {
    /// Whether bf16 convolutions and matrix products run as bf16 kernels (see [`Bf16Kernels`];
    /// only with the native microkernels on a CPU with AVX512-BF16).
    pub fn bf16_compute(&self) -> bool {
        let native = self.microkernels == Microkernels::Native && micro::bf16::native_available();
        match self.bf16 {
            Bf16Kernels::Auto => native && micro::bf16::dot_rate() > 1.0,
            Bf16Kernels::Dot => native,
            Bf16Kernels::F32 => false,
        }
    }
}

impl Default for JitOptions {
    fn default() -> Self {
        JitOptions {
            microkernels: Microkernels::Native,
            threads: 1,
            check_guards: false,
            max_tensor_bytes: qforge_ir::DEFAULT_MAX_TENSOR_BYTES,
            bf16: Bf16Kernels::Auto,
        }
    }
}

/// A graph compiled by the JIT: one [`Program`] per set of input shapes, generated on first use
/// (a batch sweep compiles each batch size once).
pub struct JitExecutable {
    graph: Graph,
    opts: JitOptions,
    /// How many of the graph's last outputs are observation taps (see [`lower::lower`]).
    taps: usize,
    programs: Mutex<HashMap<Vec<Vec<usize>>, Arc<Program>>>,
}

impl JitExecutable {
    /// Prepares `graph` for the JIT; code is generated per input shape by [`JitExecutable::program`].
    pub fn new(graph: Graph, opts: JitOptions) -> JitExecutable {
        JitExecutable { graph, opts, taps: 0, programs: Mutex::new(HashMap::new()) }
    }

    /// [`JitExecutable::new`] for a graph whose last `taps` outputs are observation taps: they
    /// are handed to the callback of [`JitExecutable::run_tapped`] as they are computed, and
    /// [`JitExecutable::run`] returns only the outputs before them.
    pub fn with_taps(graph: Graph, opts: JitOptions, taps: usize) -> JitExecutable {
        JitExecutable { graph, opts, taps, programs: Mutex::new(HashMap::new()) }
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn options(&self) -> JitOptions {
        self.opts
    }

    /// Why the graph runs on the interpreter instead of generated code, if it does: a node
    /// whose result size depends on the data ([`qforge_ir::Op::data_dependent`]: NonZero,
    /// NonMaxSuppression). The arena is planned from every buffer's size before the run, which
    /// such a node only knows once it has run; [`JitExecutable::run`] then evaluates the graph
    /// with the interpreter (under the same size limit), and `compile --report` says so.
    pub fn interpreted(&self) -> Option<String> {
        interpreted(&self.graph)
    }

    /// The program for inputs of these types (compiled now if it is the first time).
    pub fn program_for(&self, types: &[TensorType]) -> Result<Arc<Program>, JitError> {
        if let Some(why) = self.interpreted() {
            return Err(JitError::Run(format!("no program: {why}")));
        }
        let key: Vec<Vec<usize>> = types.iter().map(|t| t.shape.as_fixed().unwrap_or_default()).collect();
        if let Some(p) = self.programs.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(p);
        }
        let t = std::time::Instant::now();
        let limit = self.opts.max_tensor_bytes as u128;
        lower::check_sizes(&self.graph, types, limit)?;
        let bf16_compute = self.opts.bf16_compute();
        let widened = widen::widen_low_precision(&self.graph, bf16_compute);
        let folded = fold::fold_constants(&widened, types, limit);
        let winograd = self.opts.microkernels == Microkernels::Native && micro::winograd::available();
        let lw = lower::lower(&folded, types, limit, winograd, self.taps)?;
        let mut p = Program::build(lw, self.opts.microkernels, bf16_compute, self.opts.threads)?;
        p.check_guards = self.opts.check_guards;
        p.max_tensor_bytes = self.opts.max_tensor_bytes as u128;
        tracing::info!(
            "JIT compiled inputs {key:?}: {} steps ({} run by the interpreter) in {:.1} ms, arena {} bytes",
            p.report.steps.len(),
            p.report.host_ops.iter().map(|(_, n)| n).sum::<usize>(),
            t.elapsed().as_secs_f64() * 1e3,
            p.report.arena_bytes
        );
        let p = Arc::new(p);
        if let Ok(mut m) = self.programs.lock() {
            m.insert(key, p.clone());
        }
        Ok(p)
    }

    /// The program for these input tensors (checked against the graph first).
    pub fn program(&self, inputs: &[Tensor]) -> Result<Arc<Program>, JitError> {
        interp::check_inputs(&self.graph, inputs)?;
        let types: Vec<TensorType> = self
            .graph
            .inputs()
            .iter()
            .zip(inputs)
            .map(|(&id, t)| {
                let decl = &self.graph.node(id).outputs[0];
                TensorType { dtype: t.dtype(), shape: t.ir_shape(), quant: decl.quant.clone() }
            })
            .collect();
        self.program_for(&types)
    }

    /// Runs the graph on `inputs` (one per graph input, in order).
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, JitError> {
        if self.interpreted().is_some() {
            return self.interpret(inputs);
        }
        self.program(inputs)?.run(inputs, None)
    }

    /// Runs the graph on `inputs` on generated code, calling `each(k, view)` for tap `k` right
    /// after the step that computed it ([`Program::run_tapped`]); returns the outputs before the
    /// taps. A graph that runs on the interpreter ([`JitExecutable::interpreted`]) has no taps:
    /// that is an error here, and the caller observes another way.
    pub fn run_tapped(
        &self,
        inputs: &[Tensor],
        each: &mut dyn FnMut(usize, program::TapView<'_>),
    ) -> Result<Vec<Tensor>, JitError> {
        self.program(inputs)?.run_tapped(inputs, each)
    }

    /// Runs and adds each step's wall time to `times` (a graph that runs on the interpreter has
    /// no steps to time).
    pub fn run_profiled(&self, inputs: &[Tensor], times: &mut Vec<Duration>) -> Result<Vec<Tensor>, JitError> {
        if self.interpreted().is_some() {
            return self.interpret(inputs);
        }
        self.program(inputs)?.run(inputs, Some(times))
    }

    /// The graph on the reference interpreter, under the JIT's size limit (see
    /// [`JitExecutable::interpreted`]).
    fn interpret(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, JitError> {
        let opts = interp::RunOptions { max_tensor_bytes: self.opts.max_tensor_bytes as u128 };
        let mut outs = interp::run_observed(&self.graph, inputs, &opts, &mut |_, _| {})?;
        outs.truncate(outs.len().saturating_sub(self.taps));
        Ok(outs)
    }
}
