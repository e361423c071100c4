//! The reference interpreter: the semantic oracle.
//!
//! Plain, obviously correct loops for every op at every dtype; no cleverness that could make it
//! wrong. It follows [`crate::numerics`] for all integer and low-precision arithmetic.
//! (Implementation in progress.)

use crate::{Graph, IrError, NodeId, Op, Tensor, TensorType};

/// Limits for a run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Largest tensor the interpreter may allocate, in bytes.
    pub max_tensor_bytes: u128,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { max_tensor_bytes: 4 << 30 }
    }
}

/// Runs `g` on `inputs` (one tensor per graph input, in order) and returns the outputs in order.
pub fn run(g: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>, IrError> {
    run_observed(g, inputs, &RunOptions::default(), &mut |_, _| {})
}

/// Runs `g`, calling `observe(node, results)` after each node (calibration observers use this).
pub fn run_observed(
    g: &Graph,
    inputs: &[Tensor],
    opts: &RunOptions,
    observe: &mut dyn FnMut(NodeId, &[Tensor]),
) -> Result<Vec<Tensor>, IrError> {
    let _ = (g, inputs, opts, observe);
    Err(IrError::Graph("the interpreter is not implemented yet".into()))
}

/// Evaluates one op on concrete inputs. `in_types`/`out_types` are the node's types (they carry
/// the quantization parameters). Used by the graph runner and by constant folding.
pub fn eval_op(
    op: &Op,
    in_types: &[Option<&TensorType>],
    out_types: &[TensorType],
    inputs: &[Option<&Tensor>],
) -> Result<Vec<Tensor>, String> {
    let _ = (op, in_types, out_types, inputs);
    Err("the interpreter is not implemented yet".into())
}
