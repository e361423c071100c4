//! The engine as the passes' [`Evaluator`]: how calibration, SmoothQuant's statistics, the
//! sensitivity study, the float fallback and the accuracy guard run a graph.
//!
//! [`crate::Compiler::new`] builds the one evaluator of a pipeline from the user's engine options
//! (`--engine`, `--threads`, `--kernels`, `--max-tensor-bytes`), so every stage that runs the graph
//! runs it the way the user asked.
//!
//! Every run follows the engine. Observing runs (calibration's ranges, SmoothQuant's channel
//! maxima) watch the tensors they need: on the JIT the graph is compiled once with those tensors
//! as observation taps ([`JitWatcher`]), on the interpreter they are handed on as each node runs.
//! Runs that need only the outputs (sensitivity probes, the fallback, the accuracy guard) compile
//! each probed graph once for all its batches.

use crate::data::slice_batch;
use crate::options::{Bf16Kernels, Engine, Kernels, PipelineOptions};
use qforge_codegen::{JitExecutable, JitOptions, Microkernels};
use qforge_ir::interp::RunOptions;
use qforge_ir::{Dim, Graph, NodeId, Tensor, Value};
use qforge_passes::evaluator::{first, EvalError, Evaluator, Interpreter, ObservedWatcher, Runner, Watched, Watcher};

/// The engine a pipeline runs graphs on, with the user's options.
#[derive(Clone, Debug)]
pub struct EngineEvaluator {
    engine: Engine,
    jit: JitOptions,
    run: RunOptions,
    /// The most bytes of observed tensors one JIT run of an observing pass holds.
    watch_bytes: u128,
}

impl EngineEvaluator {
    /// The evaluator `opts` ask for.
    pub fn new(opts: &PipelineOptions) -> EngineEvaluator {
        let e = EngineEvaluator {
            engine: opts.engine,
            jit: jit_options(opts),
            run: RunOptions { max_tensor_bytes: opts.tensor_limit() },
            watch_bytes: WATCH_BYTES,
        };
        tracing::info!("evaluator: {}", e.describe());
        e
    }

    /// `jit, 2 thread(s), native kernels` or `interpreter`, for logs and reports.
    pub fn describe(&self) -> String {
        match self.engine {
            Engine::Interp => "interpreter".to_string(),
            Engine::Jit => format!(
                "jit, {} thread(s), {} kernels",
                self.jit.threads,
                match self.jit.microkernels {
                    Microkernels::Native => "native",
                    Microkernels::Cranelift => "cranelift",
                }
            ),
        }
    }

    /// This evaluator with at most `bytes` of observed tensors per JIT run of an observing pass
    /// ([`WATCH_BYTES`] by default); a batch that needs more runs in slices of samples.
    pub fn with_watch_bytes(mut self, bytes: u128) -> EngineEvaluator {
        self.watch_bytes = bytes;
        self
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
        bf16: match opts.bf16_kernels {
            Bf16Kernels::Auto => qforge_codegen::Bf16Kernels::Auto,
            Bf16Kernels::Dot => qforge_codegen::Bf16Kernels::Dot,
            Bf16Kernels::F32 => qforge_codegen::Bf16Kernels::F32,
        },
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

    fn runner<'a>(&'a self, g: &'a Graph) -> Result<Box<dyn Runner + 'a>, EvalError> {
        match self.engine {
            Engine::Interp => Ok(Box::new(InterpRunner { run: self.run.clone(), g })),
            // compiled once; the JIT keeps one program per input shape
            Engine::Jit => Ok(Box::new(JitRunner(JitExecutable::new(g.clone(), self.jit)))),
        }
    }

    fn watch<'a>(&'a self, g: &'a Graph, values: &[Value]) -> Result<Box<dyn Watcher + 'a>, EvalError> {
        match self.engine {
            Engine::Interp => Ok(Box::new(ObservedWatcher::new(self, g, values))),
            Engine::Jit => Ok(Box::new(JitWatcher::new(g, values, self.jit, self.watch_bytes))),
        }
    }
}

/// Runs a graph on the interpreter, run after run.
struct InterpRunner<'a> {
    run: RunOptions,
    g: &'a Graph,
}

impl Runner for InterpRunner<'_> {
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EvalError> {
        Interpreter(self.run.clone()).run(self.g, inputs)
    }
}

/// Runs a graph compiled once by the JIT (a program per input shape).
struct JitRunner(JitExecutable);

impl Runner for JitRunner {
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EvalError> {
        self.0.run(inputs).map_err(EvalError::engine)
    }
}

/// Watches intermediate values on the JIT: `g` compiled once (one program per input shape) with
/// every watched value as an observation tap ([`JitExecutable::with_taps`]): the JIT
/// materializes it (a tapped value is never fused away) and hands it over right after the step
/// that computed it, in the layout it was computed in, without copying it out or converting it
/// to NCHW ([`Watched::ChannelsLast`] for a channels-last f32 value). A graph the JIT runs on
/// the interpreter (a data-dependent op) is watched on the interpreter.
///
/// The program's arena is planned as for a plain run (a tapped value's memory is reused once
/// its readers are done), but it grows with the batch, so a batch whose watched values would
/// take more than the budget ([`WATCH_BYTES`] unless [`EngineEvaluator::with_watch_bytes`] says
/// otherwise) runs in slices of samples that stay within it: observers see the same values, a
/// slice at a time.
struct JitWatcher {
    exe: JitExecutable,
    values: Vec<Value>,
    budget: u128,
    run: RunOptions,
}

/// The most bytes of watched values one JIT run of an observing pass may hold (see
/// [`JitWatcher`]); a larger batch runs in slices.
pub const WATCH_BYTES: u128 = 64 << 20;

impl JitWatcher {
    fn new(g: &Graph, values: &[Value], jit: JitOptions, budget: u128) -> JitWatcher {
        let mut watched = g.clone();
        for (i, &v) in values.iter().enumerate() {
            watched.add_output(format!("qforge.watched.{i}"), v);
        }
        let run = RunOptions { max_tensor_bytes: jit.max_tensor_bytes as u128 };
        JitWatcher { exe: JitExecutable::with_taps(watched, jit, values.len()), values: values.to_vec(), budget, run }
    }

    /// Bytes of the watched values per sample of `inputs` (the leading dimension of the first
    /// graph input is the batch), when every watched shape follows from the input shapes.
    fn bytes_per_sample(&self, inputs: &[Tensor]) -> Option<u128> {
        let g = self.exe.graph();
        let mut bind = g.input_dim_sizes(inputs);
        let first = g.inputs().first()?;
        let Some(Dim::Sym(batch)) = g.node(*first).outputs[0].shape.dims().first() else { return None };
        bind.insert(batch.clone(), 1);
        self.values.iter().try_fold(0u128, |total, &v| Some(total.saturating_add(g.value_type(v).bytes_with(&bind)?)))
    }

    fn run_once(&self, inputs: &[Tensor], each: &mut dyn FnMut(usize, Watched<'_>)) -> Result<(), EvalError> {
        if self.exe.interpreted().is_some() {
            // every output of the tapped graph: the graph's own, then the taps
            let outputs = qforge_ir::interp::run_observed(self.exe.graph(), inputs, &self.run, &mut |_, _| {})?;
            let taps = outputs.len().checked_sub(self.values.len()).ok_or(EvalError::NoOutput)?;
            for (i, t) in outputs[taps..].iter().enumerate() {
                each(i, Watched::Tensor(t));
            }
            return Ok(());
        }
        let mut failure = None;
        self.exe
            .run_tapped(inputs, &mut |k, view| {
                let shape = view.ty.shape.as_fixed().unwrap_or_default();
                match view.f32() {
                    Some(data) if view.channels_last => each(k, Watched::ChannelsLast { shape: &shape, data }),
                    Some(data) => each(k, Watched::Plain { shape: &shape, data }),
                    None => match view.to_tensor() {
                        Ok(t) => each(k, Watched::Tensor(&t)),
                        Err(e) => failure = failure.take().or(Some(e)),
                    },
                }
            })
            .map_err(EvalError::engine)?;
        match failure {
            Some(e) => Err(EvalError::engine(e)),
            None => Ok(()),
        }
    }
}

impl JitWatcher {
    /// How many samples of `inputs` one run takes: all of them, or as many as keep the watched
    /// values within the budget (at least one).
    fn rows_per_run(&self, inputs: &[Tensor]) -> usize {
        let n = inputs.first().and_then(|t| t.shape().first().copied()).unwrap_or(1).max(1);
        let same_batch = inputs.iter().all(|t| t.shape().first() == Some(&n));
        match self.bytes_per_sample(inputs) {
            Some(b) if same_batch && b > 0 => (self.budget / b).clamp(1, n as u128) as usize,
            _ => n,
        }
    }
}

impl Watcher for JitWatcher {
    fn run(&self, inputs: &[Tensor], each: &mut dyn FnMut(usize, Watched<'_>)) -> Result<(), EvalError> {
        let n = inputs.first().and_then(|t| t.shape().first().copied()).unwrap_or(1);
        let rows = self.rows_per_run(inputs);
        if rows >= n {
            return self.run_once(inputs, each);
        }
        for start in (0..n).step_by(rows) {
            let end = (start + rows).min(n);
            let slice = inputs
                .iter()
                .map(|t| slice_batch(t, start, end))
                .collect::<anyhow::Result<Vec<_>>>()
                .map_err(|e| EvalError::Engine(e.into()))?;
            self.run_once(&slice, each)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qforge_ir::{text, TensorData};

    /// Two observed tensors: the input's relu (4 f32 per sample) and its sum with itself.
    const G: &str = "graph g(%x: f32[N,4]) -> (y: f32[N,4]) {
  %0 = relu %x : f32[N,4]  # \"r\"
  %1 = add %0, %0 : f32[N,4]  # \"a\"
  return %1
}
";

    #[test]
    fn a_batch_over_the_budget_runs_in_slices() {
        let g = text::parse(G).expect("graph");
        let values: Vec<Value> = g.outputs().iter().map(|o| o.value).collect();
        let relu = g.node_ids().find(|&id| g.node(id).name == "r").expect("relu");
        let values = [Value::new(relu, 0), values[0]];
        let x = Tensor::new(vec![10, 4], TensorData::F32(vec![1.0; 40])).expect("x");
        assert_eq!(g.node(values[1].node).name, "a");
        let watcher = |budget| JitWatcher::new(&g, &values, JitOptions::default(), budget);
        // 32 bytes a sample: 2 f32[4]
        assert_eq!(watcher(1 << 20).rows_per_run(std::slice::from_ref(&x)), 10);
        assert_eq!(watcher(100).rows_per_run(std::slice::from_ref(&x)), 3);
        assert_eq!(watcher(1).rows_per_run(std::slice::from_ref(&x)), 1);
        let mut seen = vec![0usize; 2];
        watcher(100).run(&[x], &mut |i, t| seen[i] += t.shape()[0]).expect("run");
        assert_eq!(seen, [10, 10]);
    }
}
