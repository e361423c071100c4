//! How a pass runs a graph without calling code generation: through an [`Evaluator`], which
//! `qforge` implements with its engine (the reference [`Interpreter`] serves in tests). Calibration,
//! sensitivity analysis and the fp16 overflow guard all use it.

use qforge_ir::interp::{self, RunOptions};
use qforge_ir::{Graph, IrError, NodeId, Tensor};

/// Why an [`Evaluator`] could not run a graph.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The reference interpreter rejected the graph or its inputs (the error names the node or
    /// input).
    #[error(transparent)]
    Ir(#[from] IrError),
    /// The engine failed with its own error (the JIT's, say).
    #[error(transparent)]
    Engine(Box<dyn std::error::Error + Send + Sync>),
    /// The graph has no output to return.
    #[error("the graph has no output")]
    NoOutput,
}

impl EvalError {
    /// An engine's own error.
    pub fn engine(e: impl std::error::Error + Send + Sync + 'static) -> EvalError {
        EvalError::Engine(Box::new(e))
    }
}

/// Runs a graph, calling `observe(node, results)` after each computed node (constants included,
/// graph inputs excluded). `qforge` implements it with its engine.
pub trait Evaluator {
    fn run_observed(
        &self,
        g: &Graph,
        inputs: &[Tensor],
        observe: &mut dyn FnMut(NodeId, &[Tensor]),
    ) -> Result<Vec<Tensor>, EvalError>;

    /// Runs without observing.
    fn run(&self, g: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>, EvalError> {
        self.run_observed(g, inputs, &mut |_, _| {})
    }

    /// The first output of `g` on each batch. An engine that compiles overrides it to compile
    /// `g` once for all the batches.
    fn first_outputs(&self, g: &Graph, batches: &[Vec<Tensor>]) -> Result<Vec<Tensor>, EvalError> {
        batches.iter().map(|b| first(self.run(g, b)?)).collect()
    }
}

/// The first of a graph's outputs.
pub fn first(outputs: Vec<Tensor>) -> Result<Tensor, EvalError> {
    outputs.into_iter().next().ok_or(EvalError::NoOutput)
}

/// The reference interpreter as an [`Evaluator`].
#[derive(Clone, Debug, Default)]
pub struct Interpreter(pub RunOptions);

impl Evaluator for Interpreter {
    fn run_observed(
        &self,
        g: &Graph,
        inputs: &[Tensor],
        observe: &mut dyn FnMut(NodeId, &[Tensor]),
    ) -> Result<Vec<Tensor>, EvalError> {
        Ok(interp::run_observed(g, inputs, &self.0, observe)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine's error prints once under `{:#}` (anyhow's chain), whatever its own chain.
    #[test]
    fn engine_errors_print_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("kernel failed")]
        struct Jit;
        let e = EvalError::engine(Jit);
        assert_eq!(e.to_string(), "kernel failed");
        assert!(std::error::Error::source(&e).is_none());
        let e = EvalError::from(IrError::Graph("no outputs".into()));
        assert_eq!(e.to_string(), "invalid graph: no outputs");
        assert!(std::error::Error::source(&e).is_none());
    }
}
