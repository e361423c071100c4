//! The engine as the passes' [`Evaluator`]: how calibration, SmoothQuant's statistics, the
//! sensitivity study, the float fallback and the accuracy guard run a graph.
//!
//! [`crate::Compiler::new`] builds the one evaluator of a pipeline from the user's engine options
//! (`--engine`, `--threads`, `--kernels`, `--max-tensor-bytes`), so every stage that runs the graph
//! runs it the way the user asked.
//!
//! Observing runs (calibration, channel maxima) need every intermediate tensor, which only the
//! reference interpreter exposes, so they run on the interpreter whatever the engine. Runs that
//! need only the outputs (sensitivity probes, the fallback, the accuracy guard) use the JIT when it
//! is the engine, compiling each probed graph once for all its batches.

use crate::options::{Engine, Kernels, PipelineOptions};
use qforge_codegen::{JitExecutable, JitOptions, Microkernels};
use qforge_ir::interp::RunOptions;
use qforge_ir::{Graph, NodeId, Tensor};
use qforge_passes::evaluator::{first, EvalError, Evaluator, Interpreter};

/// The engine a pipeline runs graphs on, with the user's options.
#[derive(Clone, Debug)]
pub struct EngineEvaluator {
    engine: Engine,
    jit: JitOptions,
    run: RunOptions,
}

impl EngineEvaluator {
    /// The evaluator `opts` ask for.
    pub fn new(opts: &PipelineOptions) -> EngineEvaluator {
        let e = EngineEvaluator {
            engine: opts.engine,
            jit: jit_options(opts),
            run: RunOptions { max_tensor_bytes: opts.tensor_limit() },
        };
        tracing::info!("evaluator: {}", e.describe());
        e
    }

    /// `jit, 2 thread(s), native kernels` or `interpreter`, for logs and reports.
    pub fn describe(&self) -> String {
        match self.engine {
            Engine::Interp => "interpreter".to_string(),
            Engine::Jit => format!(
                "jit, {} thread(s), {} kernels (observing runs: interpreter)",
                self.jit.threads,
                match self.jit.microkernels {
                    Microkernels::Native => "native",
                    Microkernels::Cranelift => "cranelift",
                }
            ),
        }
    }

    /// The JIT's options (`--threads`, `--kernels`).
    pub fn jit_options(&self) -> JitOptions {
        self.jit
    }

    /// The interpreter's limits.
    pub fn run_options(&self) -> &RunOptions {
        &self.run
    }
}

/// The JIT's options from `--threads` and `--kernels`.
pub fn jit_options(opts: &PipelineOptions) -> JitOptions {
    JitOptions {
        threads: opts.threads as usize,
        microkernels: match opts.kernels {
            Kernels::Native => Microkernels::Native,
            Kernels::Cranelift => Microkernels::Cranelift,
        },
        max_tensor_bytes: opts.max_tensor_bytes,
        ..JitOptions::default()
    }
}

impl Evaluator for EngineEvaluator {
    fn run_observed(
        &self,
        g: &Graph,
        inputs: &[Tensor],
        observe: &mut dyn FnMut(NodeId, &[Tensor]),
    ) -> Result<Vec<Tensor>, EvalError> {
        Interpreter(self.run.clone()).run_observed(g, inputs, observe)
    }

    fn first_outputs(&self, g: &Graph, batches: &[Vec<Tensor>]) -> Result<Vec<Tensor>, EvalError> {
        match self.engine {
            Engine::Interp => batches.iter().map(|b| first(Interpreter(self.run.clone()).run(g, b)?)).collect(),
            Engine::Jit => {
                // compiled once; the JIT keeps one program per input shape
                let exe = JitExecutable::new(g.clone(), self.jit);
                batches.iter().map(|b| first(exe.run(b).map_err(EvalError::engine)?)).collect()
            }
        }
    }
}
