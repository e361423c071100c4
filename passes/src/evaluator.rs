//! How a pass runs a graph without calling code generation: through an [`Evaluator`], which
//! `qforge` implements with its engine (the reference [`Interpreter`] serves in tests). Calibration,
//! sensitivity analysis and the fp16 overflow guard all use it.

use qforge_ir::interp::{self, RunOptions};
use qforge_ir::{Graph, NodeId, Tensor};

/// Runs a graph, calling `observe(node, results)` after each computed node (constants included,
/// graph inputs excluded). `qforge` implements it with its engine.
pub trait Evaluator {
    fn run_observed(
        &self,
        g: &Graph,
        inputs: &[Tensor],
        observe: &mut dyn FnMut(NodeId, &[Tensor]),
    ) -> Result<Vec<Tensor>, String>;

    /// Runs without observing.
    fn run(&self, g: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
        self.run_observed(g, inputs, &mut |_, _| {})
    }

    /// The first output of `g` on each batch. An engine that compiles overrides it to compile
    /// `g` once for all the batches.
    fn first_outputs(&self, g: &Graph, batches: &[Vec<Tensor>]) -> Result<Vec<Tensor>, String> {
        batches.iter().map(|b| first(self.run(g, b)?)).collect()
    }
}

/// The first of a graph's outputs.
pub fn first(outputs: Vec<Tensor>) -> Result<Tensor, String> {
    outputs.into_iter().next().ok_or_else(|| "the graph has no output".to_string())
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
    ) -> Result<Vec<Tensor>, String> {
        interp::run_observed(g, inputs, &self.0, observe).map_err(|e| e.to_string())
    }
}
