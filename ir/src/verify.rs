//! The verifier: checks a whole graph and names the node and the problem.

use crate::error::{IrError, Result};
use crate::{infer, Graph, Op, TensorType};
use std::collections::HashSet;

/// Checks the graph: outputs exist, no cycle, every node's inputs exist and are of the arity its op
/// allows, every node's result types are what [`infer::infer`] derives from its inputs, quantization
/// parameters are valid, constants match their types, input and output names are unique, and
/// specialized inputs are in order within the signature.
pub fn verify(g: &Graph) -> Result<()> {
    if g.outputs().is_empty() {
        return Err(IrError::Graph("the graph has no outputs".into()));
    }
    let mut names = HashSet::new();
    for &i in g.inputs() {
        let n = g.node(i);
        if !matches!(n.op, Op::Input) {
            return Err(IrError::Graph(format!("graph input `{}` is a {} node", n.name, n.op.name())));
        }
        if !names.insert(n.name.as_str()) {
            return Err(IrError::Graph(format!("duplicate graph input `{}`", n.name)));
        }
    }
    let mut last = None;
    for s in g.specialized() {
        if !names.insert(s.name.as_str()) {
            return Err(IrError::Graph(format!("duplicate graph input `{}` (specialized)", s.name)));
        }
        if last.is_some_and(|p| s.position <= p) || s.position >= g.inputs().len() + g.specialized().len() {
            return Err(IrError::Graph(format!(
                "specialized input `{}` is at position {}, out of order or beyond the {} declared inputs",
                s.name,
                s.position,
                g.inputs().len() + g.specialized().len()
            )));
        }
        last = Some(s.position);
    }
    for (name, w) in g.wire_types() {
        let ty = g.inputs().iter().map(|&i| g.node(i)).find(|n| n.name == *name).and_then(|n| n.outputs.first());
        let spec = g
            .specialized()
            .iter()
            .find(|s| s.name == *name)
            .map(|s| TensorType::new(s.value.dtype(), s.value.ir_shape()));
        match ty.cloned().or(spec) {
            Some(ty) if ty.dtype == w.dtype() => {}
            Some(ty) => {
                return Err(IrError::Graph(format!(
                    "graph input `{name}` is declared {w}, which the IR holds as {}, but it is {ty}",
                    w.dtype()
                )))
            }
            None => {
                return Err(IrError::Graph(format!("wire type {w} recorded for `{name}`, which is not a graph input")))
            }
        }
    }
    let mut out_names = HashSet::new();
    for o in g.outputs() {
        if !g.contains_value(o.value) {
            return Err(IrError::Graph(format!("output `{}` names a value that does not exist", o.name)));
        }
        if !out_names.insert(o.name.as_str()) {
            return Err(IrError::Graph(format!("duplicate graph output `{}`", o.name)));
        }
    }
    for id in g.schedule()? {
        let node = g.node(id);
        let err = |msg: String| IrError::node(&node.name, node.op.name(), msg);
        let (lo, hi) = node.op.arity();
        let n_in = node.inputs().len();
        if n_in < lo || n_in > hi {
            return Err(err(format!("takes {} inputs, has {n_in}", node.op.arity_text())));
        }
        let mut types = vec![];
        for (slot, v) in node.inputs().iter().enumerate() {
            match v {
                Some(v) if !g.contains_value(*v) => return Err(err(format!("input {slot} names a missing value"))),
                Some(v) => types.push(Some(g.value_type(*v))),
                None => types.push(None),
            }
        }
        for t in node.outputs.iter() {
            if let Some(q) = &t.quant {
                q.check().map_err(|m| err(format!("quantization parameters: {m}")))?;
                infer::check_group_params(t).map_err(|m| err(format!("quantization parameters: {m}")))?;
            }
        }
        if let Op::Const(t) = &node.op {
            let ty = &node.outputs[0];
            if ty.dtype != t.dtype() || ty.shape.as_fixed().as_deref() != Some(t.shape()) {
                return Err(err(format!("constant of {}{:?} declared as {ty}", t.dtype(), t.shape())));
            }
            continue;
        }
        if matches!(node.op, Op::Input) {
            continue;
        }
        let inferred = infer::infer(&node.op, &types, Some(&node.outputs)).map_err(|e| err(e.into()))?;
        if inferred != node.outputs {
            let show = |ts: &[crate::TensorType]| ts.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ");
            return Err(err(format!(
                "result type is {}, but the inputs give {}",
                show(&node.outputs),
                show(&inferred)
            )));
        }
    }
    Ok(())
}
