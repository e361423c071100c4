//! Canonicalization: identity removal, constant folding, dead-code removal.
//!
//! Constant folding evaluates a node whose inputs are all constants with the reference interpreter
//! and replaces it by the result, except where folding would lose meaning the later stages need:
//! a `dequantize` of a quantized constant (a quantized weight stays quantized so the optimizer can
//! lower the consumer to an integer kernel), and results much larger than their inputs (an
//! `expand` of a scalar is cheaper to keep than to store).

use crate::pass::{Pass, PassContext, PassError, PassReport};
use qforge_ir::{interp, Graph, NodeId, Op, Tensor, Value};

/// Results up to this size may always be folded; larger ones only if no larger than the inputs.
const SMALL_RESULT_BYTES: usize = 64 << 10;

/// The canonicalization pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct Canonicalize;

impl Pass for Canonicalize {
    fn name(&self) -> &'static str {
        "canonicalize"
    }

    fn run(&self, g: &mut Graph, cx: &PassContext) -> Result<PassReport, PassError> {
        let mut report = PassReport::new(self.name());
        let ir = |error| PassError::Ir { pass: "canonicalize".into(), error };
        let order = g.schedule().map_err(ir)?;
        for id in order {
            match g.node(id).op {
                Op::Identity => {
                    let Some(src) = g.node(id).inputs().first().copied().flatten() else { continue };
                    g.replace_all_uses(Value::new(id, 0), src);
                    report.count("identities removed", 1);
                }
                _ => {
                    if let Some(results) = fold(g, id, cx) {
                        let name = g.node(id).name.clone();
                        for (port, t) in results.into_iter().enumerate() {
                            let ty = g.node(id).outputs[port].clone();
                            let c = g.add_const_typed(format!("{name}:{port}"), t, ty);
                            g.node_mut(c.node).from = vec![name.clone()];
                            g.replace_all_uses(Value::new(id, port), c);
                        }
                        report.count("nodes folded", 1);
                    }
                }
            }
        }
        report.count("dead nodes removed", g.remove_dead() as u64);
        Ok(report)
    }
}

/// Evaluates `id` if every input is a constant and folding it is worthwhile.
fn fold(g: &Graph, id: NodeId, cx: &PassContext) -> Option<Vec<Tensor>> {
    let node = g.node(id);
    if matches!(node.op, Op::Input | Op::Const(_) | Op::Dequantize) {
        return None;
    }
    let mut tensors = vec![];
    let mut in_bytes = 0usize;
    for v in node.inputs() {
        match v {
            Some(v) => match &g.node(v.node).op {
                Op::Const(t) => {
                    in_bytes += t.len() * t.dtype().size_bytes();
                    tensors.push(Some(t.clone()));
                }
                _ => return None,
            },
            None => tensors.push(None),
        }
    }
    if tensors.iter().all(Option::is_none) {
        return None;
    }
    let mut out_bytes = 0u128;
    for t in &node.outputs {
        out_bytes += t.shape.numel()? as u128 * t.dtype.size_bytes() as u128;
    }
    if out_bytes > cx.max_tensor_bytes || (out_bytes > SMALL_RESULT_BYTES as u128 && out_bytes > in_bytes as u128) {
        return None;
    }
    let in_types: Vec<_> = node.inputs().iter().map(|v| v.map(|v| g.value_type(v))).collect();
    let refs: Vec<Option<&Tensor>> = tensors.iter().map(|t| t.as_deref()).collect();
    interp::eval_op(&node.op, &in_types, &node.outputs, &refs).ok()
}
