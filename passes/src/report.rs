//! The fusion report: every quantize/dequantize left in an optimized graph that still brackets a
//! float computation, with the reason it was not lowered to an integer kernel.
//!
//! A leftover is a sandwich: a float op with a dequantized operand whose result is quantized
//! (directly or after a relu/clip), or a `quantize(dequantize(..))` pair that did not become a
//! requantize. Boundaries are not leftovers: a `quantize` of a float value that was never
//! quantized (a graph input, a float layer's output) and a `dequantize` whose float result is not
//! quantized again (a graph output, a float tail such as softmax) are where the integer part of
//! a graph meets the float part. Each leftover has one of the reasons: the op has no integer
//! form, an operand is float or quantized per axis, the weight is not a constant, an activation
//! the kernel cannot absorb, scales or attributes the kernel does not support, the dtype has no
//! integer kernel, or the profile lacks int8.

use qforge_ir::{DType, Graph, NodeId, Op, QuantParams, UnaryOp};
use std::fmt;

/// One leftover: the float node bracketed by quantization, and why it stayed float.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unfused {
    /// The node that was not lowered (or the leftover quantize).
    pub node: String,
    pub op: String,
    pub reason: String,
}

impl fmt::Display for Unfused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` ({}): {}", self.node, self.op, self.reason)
    }
}

fn producer(g: &Graph, n: NodeId, slot: usize) -> Option<NodeId> {
    g.node(n).inputs().get(slot).copied().flatten().map(|v| v.node)
}

fn is_dq(g: &Graph, n: Option<NodeId>) -> bool {
    n.is_some_and(|n| matches!(g.node(n).op, Op::Dequantize))
}

/// Why `n`, a float op with dequantized operands or a quantized result, is not an integer
/// kernel.
fn why_not(g: &Graph, n: NodeId, int8: bool) -> String {
    if !int8 {
        return "the profile lacks int8 kernels".into();
    }
    let node = g.node(n);
    let is_q = |u: NodeId| matches!(g.node(u).op, Op::Quantize);
    let is_act = |u: NodeId| matches!(g.node(u).op, Op::Unary(UnaryOp::Relu) | Op::Clip { .. });
    let direct_q = g.users(n).iter().any(|(u, _)| is_q(*u));
    let act_then_q = g.users(n).iter().any(|(u, _)| is_act(*u) && g.users(*u).iter().any(|(v, _)| is_q(*v)));
    let quantized_after = direct_q || act_then_q;
    let (acts, weights): (&[usize], &[usize]) = match &node.op {
        Op::Conv(_) | Op::Gemm { .. } => (&[0], &[1]),
        Op::MatMul => (&[0, 1], &[]),
        Op::Binary(qforge_ir::BinaryOp::Add | qforge_ir::BinaryOp::Mul) => (&[0, 1], &[]),
        Op::GlobalAveragePool | Op::AveragePool(_) => (&[0], &[]),
        Op::Concat { .. } => (&[], &[]),
        Op::Unary(UnaryOp::Relu) | Op::Clip { .. } => {
            return "the activation follows no integer kernel whose clamp could absorb it, and the zero point \
                    does not make it redundant"
                .into()
        }
        Op::Resize(a) if !crate::egraph::rules::spatial::resize_is_affine(a) => {
            return "resize with tf_crop_and_resize or exclude_outside reads float values outside the input, so it \
                    does not commute with dequantize"
                .into()
        }
        Op::Pad { mode: qforge_ir::PadMode::Constant, value, .. } => {
            return format!("the pad fill {value} is not representable in the input's quantization")
        }
        Op::Resize(_) => {
            return "an interpolating resize moves into int8 only when its quantize keeps the input's i8/u8 per-tensor \
                    parameters (otherwise it would round twice)"
                .into()
        }
        Op::Pad { .. } => {
            return "its input is not quantized per tensor as i8/u8, so it cannot move through the dequantize".into()
        }
        op => return format!("`{}` has no integer form", op.name()),
    };
    for &i in acts {
        let p = producer(g, n, i);
        if !is_dq(g, p) {
            return format!("operand {i} is float, not dequantized");
        }
        let q = producer(g, p.expect("checked"), 0).map(|s| &g.node(s).outputs[0]);
        if let Some(t) = q {
            if !matches!(t.dtype, DType::I8 | DType::U8) {
                return format!("operand {i} is {}, which has no integer kernel", t.dtype);
            }
            if matches!(t.quant, Some(QuantParams::PerGroup { .. })) {
                return format!("operand {i} is quantized per group: per-group weights have no integer kernel");
            }
            if matches!(t.quant, Some(QuantParams::PerAxis { .. })) {
                return format!("operand {i} is quantized per axis");
            }
        }
    }
    for &i in weights {
        let p = producer(g, n, i);
        let konst = p.and_then(|p| producer(g, p, 0)).is_some_and(|c| matches!(g.node(c).op, Op::Const(_)));
        if !is_dq(g, p) || !konst {
            return format!("operand {i} (the weight) is not a quantized constant");
        }
        let per_group = p
            .and_then(|p| producer(g, p, 0))
            .is_some_and(|c| matches!(g.node(c).outputs[0].quant, Some(QuantParams::PerGroup { .. })));
        if per_group {
            return format!(
                "operand {i} (the weight) is quantized per group: per-group weights have no integer kernel"
            );
        }
    }
    if !quantized_after {
        return "its result is not quantized (no quantize follows)".into();
    }
    if act_then_q && !direct_q && !matches!(node.op, Op::Conv(_) | Op::Gemm { .. } | Op::MatMul) {
        return format!(
            "the activation between it and its quantize has no integer form: q{} has no clamp, and the \
             quantize's zero point does not make the activation redundant",
            node.op.name()
        );
    }
    "scales, zero points or attributes the integer kernel does not support".into()
}

fn has_dq_input(g: &Graph, n: NodeId) -> bool {
    (0..g.node(n).inputs().len()).any(|i| is_dq(g, producer(g, n, i)))
}

/// Whether `n`'s result is quantized, directly or after a relu/clip.
fn quantized_after(g: &Graph, n: NodeId) -> bool {
    let is_q = |u: NodeId| matches!(g.node(u).op, Op::Quantize);
    let is_act = |u: NodeId| matches!(g.node(u).op, Op::Unary(UnaryOp::Relu) | Op::Clip { .. });
    g.users(n).iter().any(|&(u, _)| is_q(u) || (is_act(u) && g.users(u).iter().any(|&(v, _)| is_q(v))))
}

/// The leftovers of `g` (see the module docs); `int8` says whether the target has int8 kernels.
pub fn fusion_report(g: &Graph, int8: bool) -> Vec<Unfused> {
    let mut out: Vec<Unfused> = vec![];
    let Ok(order) = g.schedule() else { return out };
    let push = |out: &mut Vec<Unfused>, n: NodeId, reason: String| {
        let node = g.node(n);
        if !out.iter().any(|u| u.node == node.name) {
            out.push(Unfused { node: node.name.clone(), op: node.op.name().into(), reason });
        }
    };
    for &n in &order {
        let node = g.node(n);
        match &node.op {
            Op::Quantize => {
                let Some(p) = producer(g, n, 0) else { continue };
                match &g.node(p).op {
                    Op::Input | Op::Const(_) => {}
                    Op::Dequantize => {
                        let t = producer(g, p, 0).map(|s| g.node(s).outputs[0].clone());
                        let reason = if !int8 {
                            "the profile lacks int8 kernels".to_string()
                        } else {
                            match t {
                                Some(t) => format!("requantizing {t} to {} is not supported", node.outputs[0]),
                                None => "a dequantize of nothing".into(),
                            }
                        };
                        push(&mut out, n, reason);
                    }
                    op => {
                        // Report the op behind an activation rather than the activation.
                        let behind = producer(g, p, 0).filter(|&b| {
                            matches!(op, Op::Unary(UnaryOp::Relu) | Op::Clip { .. })
                                && !matches!(g.node(b).op, Op::Dequantize | Op::Input | Op::Const(_))
                        });
                        let target = behind.unwrap_or(p);
                        if has_dq_input(g, target) {
                            let r = why_not(g, target, int8);
                            push(&mut out, target, r);
                        }
                    }
                }
            }
            Op::Dequantize => {
                for (u, _) in g.users(n) {
                    if !matches!(g.node(u).op, Op::Quantize) && quantized_after(g, u) {
                        let r = why_not(g, u, int8);
                        push(&mut out, u, r);
                    }
                }
            }
            _ => {}
        }
    }
    out
}
