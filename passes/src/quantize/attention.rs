//! The two activation-by-activation matmuls of attention, told apart from weight matmuls so that
//! the policy can give them their own precision ([`Role`], `[op.attention_scores]` and
//! `[op.attention_context]` in a qconfig).
//!
//! * **scores** (`Q K^T`): a matmul of two non-constant operands whose result reaches a softmax
//!   through scaling (mul or div by a constant), masking (add, sub, where), data movement
//!   (reshape, transpose, squeeze, unsqueeze, identity), casts and Q/DQ pairs;
//! * **context** (`P V`): a matmul of two non-constant operands one of which comes from a softmax
//!   through data movement, casts and Q/DQ pairs.
//!
//! A matmul that is both (a softmax on each side) is a scores matmul: the float choice is the safe
//! one. A pure function of the graph's structure: it never reads values.

use super::policy::Role;
use qforge_ir::{BinaryOp, Graph, NodeId, Op};
use std::collections::HashMap;

/// How many ops the searches walk through before giving up.
const MAX_DEPTH: usize = 8;

fn is_const(g: &Graph, id: NodeId) -> bool {
    matches!(g.node(id).op, Op::Const(_))
}

/// Ops a value passes through unchanged up to layout, type or quantization.
fn movement(op: &Op) -> bool {
    matches!(
        op,
        Op::Reshape { .. }
            | Op::Transpose { .. }
            | Op::Squeeze { .. }
            | Op::Unsqueeze { .. }
            | Op::Flatten { .. }
            | Op::Identity
            | Op::Cast { .. }
            | Op::Quantize
            | Op::Dequantize
    )
}

/// Ops between the scores matmul and the softmax: movement, scaling by a constant and masking.
fn score_path(g: &Graph, id: NodeId) -> bool {
    let node = g.node(id);
    match &node.op {
        Op::Binary(BinaryOp::Mul | BinaryOp::Div) => node.inputs().iter().flatten().any(|v| is_const(g, v.node)),
        Op::Binary(BinaryOp::Add | BinaryOp::Sub) | Op::Where => true,
        op => movement(op),
    }
}

/// Whether the result of `id` reaches a softmax through [`score_path`] ops.
fn reaches_softmax(g: &Graph, id: NodeId) -> bool {
    let mut frontier = vec![(id, 0usize)];
    let mut seen = std::collections::HashSet::new();
    while let Some((n, depth)) = frontier.pop() {
        if !seen.insert(n) || depth > MAX_DEPTH {
            continue;
        }
        for (user, _) in g.users(n) {
            let op = &g.node(user).op;
            if matches!(op, Op::Softmax { .. }) {
                return true;
            }
            if score_path(g, user) {
                frontier.push((user, depth + 1));
            }
        }
    }
    false
}

/// Whether the value in `slot` of `id` comes from a softmax through movement ops.
fn from_softmax(g: &Graph, id: NodeId, slot: usize) -> bool {
    let mut v = g.node(id).inputs().get(slot).copied().flatten();
    for _ in 0..=MAX_DEPTH {
        let Some(x) = v else { return false };
        let op = &g.node(x.node).op;
        if matches!(op, Op::Softmax { .. }) {
            return true;
        }
        if !movement(op) {
            return false;
        }
        v = g.node(x.node).inputs().first().copied().flatten();
    }
    false
}

/// The attention role of every matmul of two non-constant operands that has one.
pub fn attention_roles(g: &Graph) -> HashMap<NodeId, Role> {
    let mut roles = HashMap::new();
    for id in g.node_ids() {
        let node = g.node(id);
        if !matches!(node.op, Op::MatMul) {
            continue;
        }
        let operands: Vec<_> = node.inputs().iter().take(2).flatten().collect();
        if operands.len() != 2 || operands.iter().any(|v| is_const(g, v.node)) {
            continue;
        }
        if reaches_softmax(g, id) {
            roles.insert(id, Role::AttentionScores);
        } else if from_softmax(g, id, 0) || from_softmax(g, id, 1) {
            roles.insert(id, Role::AttentionContext);
        }
    }
    roles
}

#[cfg(test)]
mod tests {
    use super::*;
    use qforge_ir::{DType, Shape, Tensor, TensorType, Value};

    fn add(g: &mut Graph, op: Op, inputs: &[Value], name: &str) -> Value {
        g.add_node(op, inputs.iter().map(|&v| Some(v)).collect(), None, name).unwrap()
    }

    /// q k^T / scale + mask -> softmax -> reshape -> p v, and a weight matmul beside it.
    #[test]
    fn scores_and_context_are_found() {
        let mut g = Graph::new("attn");
        let x = g.add_input("x", TensorType::new(DType::F32, Shape::fixed(&[1, 4, 8])));
        let mask = g.add_input("mask", TensorType::new(DType::F32, Shape::fixed(&[1, 4, 4])));
        let w = g.add_const("w", Tensor::from_f32(vec![8, 8], vec![0.1; 64]));
        let q = add(&mut g, Op::MatMul, &[x, w], "q");
        let kt = add(&mut g, Op::Transpose { perm: vec![0, 2, 1] }, &[x], "kt");
        let s = add(&mut g, Op::MatMul, &[q, kt], "scores");
        let c = g.add_const("c", Tensor::from_f32(vec![], vec![2.0]));
        let d = add(&mut g, Op::Binary(BinaryOp::Div), &[s, c], "scale");
        let m = add(&mut g, Op::Binary(BinaryOp::Add), &[d, mask], "mask_add");
        let p = add(&mut g, Op::Softmax { axis: -1 }, &[m], "softmax");
        let ctx = add(&mut g, Op::MatMul, &[p, x], "context");
        // a gram matrix of two activations, unrelated to any softmax
        let xt = add(&mut g, Op::Transpose { perm: vec![0, 2, 1] }, &[ctx], "ctx_t");
        let gram = add(&mut g, Op::MatMul, &[xt, ctx], "gram");
        g.add_output("y", gram);
        let roles = attention_roles(&g);
        assert_eq!(roles.get(&s.node), Some(&Role::AttentionScores));
        assert_eq!(roles.get(&ctx.node), Some(&Role::AttentionContext));
        assert_eq!(roles.get(&q.node), None, "a weight matmul has no role");
        assert_eq!(roles.get(&gram.node), None);
        assert_eq!(roles.len(), 2);
    }
}
