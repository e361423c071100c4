//! `inspect --quantizable`: each node's quantization decision and why, on the graph as the
//! quantization stage sees it (after canonicalization and batch-norm folding), with the qconfig
//! policy applied.

use anyhow::Result;
use qforge_ir::Graph;
use qforge_passes::quantize::{attention_roles, plan, Decision, QConfig};
use serde::Serialize;

/// One node's decision.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub op: &'static str,
    /// `quantize`, `keep`, or the plan's own decision name.
    pub decision: String,
    pub reason: String,
    /// The original (ONNX) node names it stands for.
    pub from: Vec<String>,
}

/// The decision for every node [`plan`] looks at, in its order.
pub fn rows(g: &Graph, cfg: &QConfig) -> Result<Vec<Row>> {
    let plan = plan(g)?;
    let roles = attention_roles(g);
    let mut rows = vec![];
    for p in &plan {
        let node = g.node(p.id);
        let role = roles.get(&p.id).copied();
        let s = cfg.settings_as(node, role);
        let (decision, reason) = match (&p.decision, s.quantized()) {
            (Decision::Quantize { .. }, false) => {
                let why = role.map_or(String::new(), |r| format!(" ({})", r.name()));
                ("keep".to_string(), format!("kept at {} by the qconfig policy{why}", s.precision))
            }
            (d, _) => (d.name().to_string(), p.reason.clone()),
        };
        let from = if node.from.is_empty() { vec![node.name.clone()] } else { node.from.clone() };
        rows.push(Row { name: p.name.clone(), op: p.op, decision, reason, from });
    }
    Ok(rows)
}
