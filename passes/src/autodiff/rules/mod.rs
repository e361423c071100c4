//! The vector-Jacobian product of each op, one file per op family: given the gradient `dy` of
//! each result of a forward node, the gradient of each input the caller wants. Every formula is
//! the op's derivative as written in its file's docs; the nodes go through the builder, in the
//! forward value's dtype.

mod conv;
mod elementwise;
mod linalg;
mod movement;
mod norm;
mod pool;
mod quant;

use super::builder::Builder;
use super::AutodiffError;
use qforge_ir::{NodeId, Op, Value};

/// The forward node being differentiated: its op, inputs and results.
pub(crate) struct Fwd {
    pub op: Op,
    pub ins: Vec<Option<Value>>,
    pub outs: Vec<Value>,
    /// The gradient of each result (`None`: nothing reaches the loss through it).
    pub dys: Vec<Option<Value>>,
    /// Which inputs need a gradient.
    pub wants: Vec<bool>,
}

impl Fwd {
    /// Input `i` (present: the rules ask only for inputs their op requires or that exist).
    pub fn x(&self, b: &Builder, i: usize) -> Result<Value, AutodiffError> {
        self.ins.get(i).copied().flatten().ok_or_else(|| b.unsupported(format!("internal: input {i} is missing")))
    }

    /// The gradient of result 0 (the rules of single-result ops are only called with one).
    pub fn dy(&self, b: &Builder) -> Result<Value, AutodiffError> {
        self.dys.first().copied().flatten().ok_or_else(|| b.unsupported("internal: no result gradient"))
    }

    pub fn y(&self) -> Value {
        self.outs[0]
    }

    pub fn wants(&self, i: usize) -> bool {
        self.wants.get(i).copied().unwrap_or(false)
    }
}

/// One gradient per input of node `n` (`None` where none is wanted or the input has none).
pub(crate) fn vjp(
    b: &mut Builder,
    n: NodeId,
    dys: &[Option<Value>],
    wants: &[bool],
) -> Result<Vec<Option<Value>>, AutodiffError> {
    let node = b.g.node(n);
    let f = Fwd {
        op: node.op.clone(),
        ins: node.inputs().to_vec(),
        outs: (0..node.outputs.len()).map(|p| Value::new(n, p)).collect(),
        dys: dys.to_vec(),
        wants: wants.to_vec(),
    };
    let mut grads = match &f.op {
        Op::Unary(_)
        | Op::LeakyRelu { .. }
        | Op::Clip { .. }
        | Op::HardSigmoid { .. }
        | Op::Binary(_)
        | Op::Where
        | Op::Cast { .. }
        | Op::Identity => elementwise::vjp(b, &f)?,
        Op::MatMul | Op::Gemm { .. } => linalg::vjp(b, &f)?,
        Op::Conv(_) | Op::ConvTranspose(_) => conv::vjp(b, &f)?,
        Op::FakeQuantize { .. } => quant::vjp(b, &f)?,
        Op::MaxPool(_) | Op::AveragePool(_) | Op::GlobalAveragePool | Op::GlobalMaxPool => pool::vjp(b, &f)?,
        Op::BatchNorm { .. }
        | Op::Softmax { .. }
        | Op::LogSoftmax { .. }
        | Op::LayerNorm { .. }
        | Op::ReduceMean { .. }
        | Op::ReduceSum { .. }
        | Op::ReduceMax { .. } => norm::vjp(b, &f)?,
        Op::Reshape { .. }
        | Op::ReshapeDyn { .. }
        | Op::Flatten { .. }
        | Op::Squeeze { .. }
        | Op::Unsqueeze { .. }
        | Op::Transpose { .. }
        | Op::Concat { .. }
        | Op::Split { .. }
        | Op::Slice { .. }
        | Op::Gather { .. }
        | Op::GatherElements { .. }
        | Op::Tile { .. }
        | Op::Expand { .. }
        | Op::ExpandDyn { .. }
        | Op::Pad { .. } => movement::vjp(b, &f)?,
        op => return Err(AutodiffError::NoRule { node: b.node_name().to_string(), op: op.name() }),
    };
    grads.resize(f.ins.len(), None);
    for (g, w) in grads.iter_mut().zip(&f.wants) {
        if !w {
            *g = None;
        }
    }
    Ok(grads)
}
