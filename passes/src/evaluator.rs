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
