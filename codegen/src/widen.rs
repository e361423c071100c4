//! f16 and bf16 as storage types: before lowering, every float op the JIT has an f32 kernel for
//! and whose result is f16/bf16 is rewritten to widen its inputs to f32 (exactly), compute in f32,
//! and round its result once to the storage type (nearest even), which is the interpreter's
//! semantics for low-precision float ops (see `qforge_ir::interp`). Constant inputs are widened
//! at compile time. Ops without an f32 kernel stay as they are (the host runs them in f16).
//!
//! The rounding of a widened op's result and the next op's widening of it meet as a pair of
//! casts (`f32 -> f16 -> f32`); where the op is a float kernel, the lowering folds the pair into
//! the kernel's epilogue as one rounding step kept in f32 (`round_f16`, `round_bf16`), so the
//! low-precision tensor is never written and the next kernel reads the f32 values it would have
//! widened, and a model in f16 storage costs what its f32 version does.
//!
//! With bf16 compute ([`crate::JitOptions::bf16_compute`]: the CPU has AVX512-BF16 and
//! `vdpbf16ps` is faster there than f32 FMA, or `--bf16-kernels dot` asks for it), bf16
//! convolutions, GEMMs and matrix products with constant bf16 weights stay bf16: they run as the
//! bf16 GEMM or (depthwise convolutions) the bf16 depthwise kernel (f32 accumulation, one rounding
//! of the output, the contract of [`crate::micro::bf16`]), so a depthwise convolution between two
//! bf16 GEMMs reads and writes bf16 with no widening or rounding step around it; and what a kept
//! convolution's epilogue absorbs stays bf16 too: a
//! residual Add of its result (the epilogue rounds before adding, as the interpreter does), then
//! ReLU and Clip (rounding is monotone, so `round(clip(round(x))) == round(clip(x))`: absorbing
//! them rounds once where the interpreter rounds twice, to the same value).

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

/// Whether the interpreter computes `node` in f32 between a widening and a rounding (its inputs
/// and result then exist in f32 too, as temporaries), which [`widen_low_precision`] makes
/// explicit unless bf16 compute keeps the node.
pub fn is_widened(node: &Node) -> bool {
    node.outputs.len() == 1 && low(node.outputs[0].dtype) && eligible(&node.op)
}

/// Whether `id` is a bf16 2-D convolution, GEMM or matrix product whose weights are a constant,
/// which the bf16 GEMM (or, for a depthwise convolution, the bf16 depthwise kernel) computes as
/// it is.
fn bf16_kernel(g: &Graph, id: qforge_ir::NodeId) -> bool {
    let n = g.node(id);
    let bf16 = |v: Option<Value>| v.is_some_and(|v| g.value_type(v).dtype == DType::BF16);
    let konst = |v: Option<Value>| v.is_some_and(|v| matches!(g.node(v.node).op, Op::Const(_)));
    let ins = n.inputs();
    let (x, w) = (ins.first().copied().flatten(), ins.get(1).copied().flatten());
    if n.outputs.len() != 1 || n.outputs[0].dtype != DType::BF16 || !bf16(x) || konst(x) || !bf16(w) || !konst(w) {
        return false;
    }
    let wshape = w.map(|w| g.value_type(w).shape.clone());
    let wrank = wshape.as_ref().map_or(0, |s| s.rank());
    match &n.op {
        Op::Conv(_) => wrank == 4,
        Op::Gemm { trans_a: false, .. } => wrank == 2 && ins.get(2).copied().flatten().is_none_or(|c| konst(Some(c))),
        Op::MatMul => wrank == 2,
        _ => false,
    }
}

/// The nodes bf16 compute keeps in bf16 (see the module docs), in schedule order.
fn kept_bf16(g: &Graph, order: &[qforge_ir::NodeId]) -> std::collections::HashSet<qforge_ir::NodeId> {
    let mut kept = std::collections::HashSet::new();
    for &id in order {
        let n = g.node(id);
        // the value `v` is a kept node's result that only this node reads
        let sole = |v: &Value, ops: &dyn Fn(&Op) -> bool| {
            kept.contains(&v.node) && ops(&g.node(v.node).op) && g.value_users(*v).len() == 1 && !g.is_output(*v)
        };
        let bf16_out = n.outputs.len() == 1 && n.outputs[0].dtype == DType::BF16;
        let ins: Vec<Option<Value>> = n.inputs().to_vec();
        let absorbed = match n.op {
            Op::Unary(UnaryOp::Relu) | Op::Clip { .. } if bf16_out => ins.first().copied().flatten().is_some_and(|v| {
                sole(&v, &|op| {
                    matches!(op, Op::Conv(_) | Op::Unary(UnaryOp::Relu) | Op::Clip { .. } | Op::Binary(BinaryOp::Add))
                })
            }),
            // a residual add of a kept convolution's result and another bf16 tensor of its shape
            Op::Binary(BinaryOp::Add) if bf16_out && ins.len() == 2 => {
                let (Some(a), Some(b)) = (ins[0], ins[1]) else { continue };
                let conv = |v: &Value| sole(v, &|op| matches!(op, Op::Conv(_)));
                let other_ok = |v: &Value| {
                    let t = g.value_type(*v);
                    t.dtype == DType::BF16
                        && t.shape == n.outputs[0].shape
                        && !matches!(g.node(v.node).op, Op::Const(_))
                };
                a != b && ((conv(&a) && other_ok(&b)) || (conv(&b) && other_ok(&a)))
            }
            _ => false,
        };
        if absorbed || bf16_kernel(g, id) {
            kept.insert(id);
        }
    }
    kept
}

/// `g` with its f16/bf16 compute ops moved to f32 between a widening and a rounding cast, except
/// (with `bf16_compute`) the bf16 ops the bf16 GEMM computes.
pub fn widen_low_precision(g: &Graph, bf16_compute: bool) -> Graph {
    let mut g = g.clone();
    let Ok(order) = g.schedule() else { return g };
    let kept = if bf16_compute { kept_bf16(&g, &order) } else { Default::default() };
    let mut widened: HashMap<Value, Value> = HashMap::new();
    // The f32 result of each widened node, keyed by its rounded value. A ReLU, Clip or max pool
    // reads it instead of widening the rounded value: they are monotone, and rounding is
    // monotone, so `round(f(round(x))) == round(f(x))` and the rounding in between changes nothing
    // (the f32 op then joins its producer's kernel where the lowering fuses them).
    let mut unrounded: HashMap<Value, Value> = HashMap::new();
    for id in order {
        let node = g.node(id).clone();
        if !is_widened(&node) || kept.contains(&id) {
            continue;
        }
        let monotone = matches!(node.op, Op::Unary(UnaryOp::Relu) | Op::Clip { .. } | Op::MaxPool(_));
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
            if let Some(w) = unrounded.get(&v).filter(|_| monotone).or_else(|| widened.get(&v)) {
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
        unrounded.insert(Value::new(cast, 0), Value::new(nid, 0));
    }
    // a rounding whose every reader took the unrounded value instead is dead: removing it lets
    // the f32 op and its monotone reader fuse (the lowering fuses only sole users)
    for v in unrounded.keys() {
        if g.value_users(*v).is_empty() && !g.is_output(*v) {
            let _ = g.remove_node(v.node);
        }
    }
    g
}
