//! The one place qforge counts a graph's multiply-accumulates and parameters (the pruning report's
//! before/after figures).
//!
//! * MACs, per sample: a convolution computes `(C_in / group) * prod(kernel)` multiply-adds for
//!   every output element; a GEMM `K` for every element of its `[M, N]` result; a matrix product
//!   `K` (the reduction length) for every result element. A symbolic leading (batch) dim counts
//!   as 1; an op whose result has any other symbolic dim is left out of the sum and named in
//!   [`Cost::unknown`], so a figure is never a guess.
//! * Parameters: the float elements of the constants a convolution, transposed convolution or
//!   GEMM reads as its weight or bias, a matrix product reads as an operand, and a batch norm
//!   reads as its scale and shift (not its running mean and variance, which PyTorch keeps as
//!   buffers: so the figure is `sum(p.numel() for p in model.parameters())` of the source
//!   model). A constant read by several such ops counts once.

use qforge_ir::{Dim, Graph, NodeId, Op, Shape, Value};
use std::collections::BTreeSet;

/// MACs and parameters of a graph (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// Multiply-accumulates of one sample.
    pub macs: u64,
    /// Float elements of weight and bias constants.
    pub params: u64,
    /// Names of conv, GEMM and matmul nodes left out of `macs`: their result has a symbolic dim
    /// other than the batch.
    pub unknown: Vec<String>,
}

/// Elements of `s` for one sample: the leading dim counts as 1 when symbolic; `None` when any
/// other dim is symbolic.
fn per_sample(s: &Shape) -> Option<u64> {
    s.dims().iter().enumerate().try_fold(1u64, |acc, (i, d)| match d {
        Dim::Fixed(n) => acc.checked_mul(*n as u64),
        _ if i == 0 => Some(acc),
        _ => None,
    })
}

fn input(g: &Graph, id: NodeId, slot: usize) -> Option<Value> {
    g.node(id).inputs().get(slot).copied().flatten()
}

/// The MACs of node `id`: `Some(None)` when the op multiplies but its size is symbolic, `None`
/// when it is not a conv, GEMM or matmul.
fn node_macs(g: &Graph, id: NodeId) -> Option<Option<u64>> {
    let n = g.node(id);
    let out = &n.outputs.first()?.shape;
    let fixed = |v: Option<Value>, axis: usize| v.and_then(|v| g.value_type(v).shape.dims().get(axis)?.fixed());
    let per_output = match &n.op {
        Op::Conv(c) => {
            // the weight is [C_out, C_in / group, k...]
            let w = input(g, id, 1).map(|w| g.value_type(w).shape.clone());
            w.and_then(|w| w.dims().get(1..)?.iter().try_fold(1u64, |a, d| a.checked_mul(d.fixed()? as u64)))
                .filter(|_| c.group > 0)
        }
        Op::Gemm { trans_a, .. } => fixed(input(g, id, 0), if *trans_a { 0 } else { 1 }).map(|k| k as u64),
        Op::MatMul => {
            let a = input(g, id, 0)?;
            let rank = g.value_type(a).rank();
            fixed(Some(a), rank.checked_sub(1)?).map(|k| k as u64)
        }
        _ => return None,
    };
    Some(per_output.and_then(|k| per_sample(out)?.checked_mul(k)))
}

/// The constants node `id` reads as parameters (see the module docs).
fn param_slots(op: &Op) -> &'static [usize] {
    match op {
        Op::Conv(_) | Op::ConvTranspose(_) | Op::Gemm { .. } => &[1, 2],
        Op::MatMul => &[0, 1],
        Op::BatchNorm { .. } => &[1, 2],
        _ => &[],
    }
}

/// Counts `g`'s MACs and parameters (see the module docs).
pub fn cost(g: &Graph) -> Cost {
    let mut c = Cost::default();
    let mut consts = BTreeSet::new();
    let order = g.schedule().unwrap_or_else(|_| g.node_ids().collect());
    for id in order {
        match node_macs(g, id) {
            Some(Some(m)) => c.macs = c.macs.saturating_add(m),
            Some(None) => c.unknown.push(g.node(id).name.clone()),
            None => {}
        }
        for &slot in param_slots(&g.node(id).op) {
            let Some(v) = input(g, id, slot) else { continue };
            if let Op::Const(t) = &g.node(v.node).op {
                if t.dtype().is_float() && consts.insert(v.node) {
                    c.params += t.len() as u64;
                }
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-counted: conv 1->2 channels 2x2 kernel on 4x4 (3x3 output): 2*9*(1*4) = 72 MACs;
    /// weight 8 + bias 2 + batch-norm scale and shift 2 + 2 (running statistics left out).
    #[test]
    fn conv_bn_counts() {
        let g = qforge_ir::text::parse(include_str!("../../../tests/fixtures/qir/conv_bn_relu.qir")).expect("fixture");
        let c = cost(&g);
        assert_eq!(c, Cost { macs: 72, params: 14, unknown: vec![] });
    }

    /// A symbolic spatial size is named, not guessed.
    #[test]
    fn symbolic_spatial_size_is_unknown() {
        let src = "graph s(%x: f32[N,1,H,4]) -> (y: f32[N,1,H,4]) {\n  %0 = const f32[1,1,1,1] = [2.0]  # \"w\"\n  %1 = conv %x, %0 {kernel=[1,1], strides=[1,1], pads=[0,0,0,0], dilations=[1,1], group=1} : f32[N,1,H,4]  # \"c\"\n  return %1\n}\n";
        let g = qforge_ir::text::parse(src).expect("parses");
        let c = cost(&g);
        assert_eq!((c.macs, c.params, c.unknown), (0, 1, vec!["c".to_string()]));
    }
}
