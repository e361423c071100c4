//! f16 and bf16 as storage types: before lowering, every float op the JIT has an f32 kernel for
//! and whose result is f16/bf16 is rewritten to widen its inputs to f32 (exactly), compute in f32,
//! and round its result once to the storage type (nearest even), which is the interpreter's
//! semantics for low-precision float ops (see `qforge_ir::interp`). Constant inputs are widened
//! at compile time. Ops without an f32 kernel stay as they are (the host runs them in f16).

use qforge_ir::{BinaryOp, DType, Graph, Node, Op, Tensor, TensorType, UnaryOp, Value};
use std::collections::HashMap;

fn low(d: DType) -> bool {
    matches!(d, DType::F16 | DType::BF16)
}

fn eligible(op: &Op) -> bool {
    matches!(
        op,
        Op::Conv(_)
            | Op::Gemm { .. }
            | Op::MatMul
            | Op::Clip { .. }
            | Op::Binary(BinaryOp::Add)
            | Op::GlobalAveragePool
            | Op::MaxPool(_)
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::LayerNorm { .. }
    ) || matches!(op, Op::Unary(u) if *u != UnaryOp::Not)
}

/// Whether [`widen_low_precision`] moves `node` to f32 (then its inputs and result exist in f32
/// too, as the interpreter's temporaries for it do).
pub fn is_widened(node: &Node) -> bool {
    node.outputs.len() == 1 && low(node.outputs[0].dtype) && eligible(&node.op)
}

/// `g` with its f16/bf16 compute ops moved to f32 between a widening and a rounding cast.
pub fn widen_low_precision(g: &Graph) -> Graph {
    let mut g = g.clone();
    let Ok(order) = g.schedule() else { return g };
    let mut widened: HashMap<Value, Value> = HashMap::new();
    for id in order {
        let node = g.node(id).clone();
        if !is_widened(&node) {
            continue;
        }
        let dt = node.outputs[0].dtype;
        let mut inputs = Vec::new();
        for v in node.inputs() {
            let Some(v) = *v else {
                inputs.push(None);
                continue;
            };
            let ty = g.value_type(v).clone();
            if !low(ty.dtype) {
                inputs.push(Some(v));
                continue;
            }
            if let Some(w) = widened.get(&v) {
                inputs.push(Some(*w));
                continue;
            }
            let f32_ty = TensorType::new(DType::F32, ty.shape.clone());
            let w = match &g.node(v.node).op {
                Op::Const(t) => {
                    let wt = Tensor::from_f32(t.shape().to_vec(), t.to_f32_vec());
                    g.add_const_typed(format!("{}.f32", g.node(v.node).name), wt, f32_ty)
                }
                _ => {
                    let name = format!("{}.widen", g.node(v.node).name);
                    Value::new(g.add_node_unchecked(Op::Cast { to: DType::F32 }, vec![Some(v)], vec![f32_ty], name), 0)
                }
            };
            widened.insert(v, w);
            inputs.push(Some(w));
        }
        let f32_out = TensorType::new(DType::F32, node.outputs[0].shape.clone());
        let nid = g.add_node_unchecked(node.op.clone(), inputs, vec![f32_out], format!("{}.f32", node.name));
        g.node_mut(nid).from = node.from.clone();
        let cast = g.add_node_unchecked(
            Op::Cast { to: dt },
            vec![Some(Value::new(nid, 0))],
            vec![node.outputs[0].clone()],
            node.name.clone(),
        );
        g.replace_all_uses(Value::new(id, 0), Value::new(cast, 0));
        let _ = g.remove_node(id);
    }
    g
}
