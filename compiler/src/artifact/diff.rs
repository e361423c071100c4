//! `qforge diff A.qfa B.qfa`: what differs between two artifacts' graphs, node by node.
//!
//! Nodes (graph inputs, constants and ops) are matched by name; a name that occurs several times
//! is matched by occurrence in schedule order. For each matched node and each result it reports
//! changed quantization parameters (per tensor or per axis, or quantized in one and float in the
//! other), changed dtypes (precision) and a changed op; then the nodes only in one artifact, the
//! header fields that differ (pipeline options, profile, model digest, qforge version) and a
//! summary line.

use super::{Artifact, Header};
use anyhow::Result;
use qforge_ir::{Graph, QuantParams, TensorType};
use serde::Serialize;
use std::collections::HashMap;

/// One difference in a matched node.
#[derive(Debug, Serialize, PartialEq)]
pub struct Change {
    pub node: String,
    pub op: String,
    /// The result (output port) the change is on; `None` for an op change.
    pub port: Option<usize>,
    /// `quant`, `dtype` or `op`.
    pub kind: &'static str,
    pub a: String,
    pub b: String,
    /// A short description of the change.
    pub detail: String,
}

/// A node present in one artifact only.
#[derive(Debug, Serialize, PartialEq)]
pub struct Unmatched {
    pub node: String,
    pub op: String,
}

/// A header field that differs.
#[derive(Debug, Serialize, PartialEq)]
pub struct HeaderChange {
    pub field: String,
    pub a: serde_json::Value,
    pub b: serde_json::Value,
}

#[derive(Debug, Serialize, PartialEq, Default)]
pub struct DiffSummary {
    pub matched: usize,
    pub quant_changes: usize,
    pub dtype_changes: usize,
    pub op_changes: usize,
    pub only_in_a: usize,
    pub only_in_b: usize,
}

/// The differences between two artifacts (`qforge diff --json` prints this object).
#[derive(Debug, Serialize, PartialEq)]
pub struct Diff {
    pub a: String,
    pub b: String,
    pub header: Vec<HeaderChange>,
    pub changes: Vec<Change>,
    pub only_in_a: Vec<Unmatched>,
    pub only_in_b: Vec<Unmatched>,
    pub summary: DiffSummary,
}

struct NodeView<'g> {
    name: &'g str,
    op: &'static str,
    outputs: &'g [TensorType],
}

/// Graph inputs, then every scheduled node, keyed by (name, occurrence).
fn nodes(g: &Graph) -> Result<Vec<((String, usize), NodeView<'_>)>> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut out = vec![];
    for id in g.inputs().iter().copied().chain(g.schedule()?) {
        let n = g.node(id);
        let k = seen.entry(&n.name).or_insert(0);
        out.push(((n.name.clone(), *k), NodeView { name: &n.name, op: n.op.name(), outputs: &n.outputs }));
        *k += 1;
    }
    Ok(out)
}

fn quant_short(q: &Option<QuantParams>) -> String {
    match q {
        None => "float".into(),
        Some(QuantParams::PerTensor { scale, zero_point }) => {
            format!("per-tensor scale {scale:?} zero point {zero_point}")
        }
        Some(QuantParams::PerAxis { axis, scales, .. }) => {
            let (lo, hi) = scales.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &s| (l.min(s), h.max(s)));
            format!("per-axis axis {axis} ({} channels, scales {lo:?}..{hi:?})", scales.len())
        }
        Some(QuantParams::PerGroup { axis, group_size, scales, .. }) => {
            let (lo, hi) = scales.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &s| (l.min(s), h.max(s)));
            format!("per-group axis {axis} group {group_size} ({} groups, scales {lo:?}..{hi:?})", scales.len())
        }
    }
}

/// How quantization parameters changed, in a few words.
fn quant_detail(a: &Option<QuantParams>, b: &Option<QuantParams>) -> String {
    use QuantParams::*;
    match (a, b) {
        (Some(PerTensor { scale: s0, zero_point: z0 }), Some(PerTensor { scale: s1, zero_point: z1 })) => {
            let mut parts = vec![];
            if s0.to_bits() != s1.to_bits() {
                parts.push(format!("scale {s0:?} -> {s1:?}"));
            }
            if z0 != z1 {
                parts.push(format!("zero point {z0} -> {z1}"));
            }
            parts.join(", ")
        }
        (
            Some(PerAxis { axis: a0, scales: s0, zero_points: z0 }),
            Some(PerAxis { axis: a1, scales: s1, zero_points: z1 }),
        ) if a0 == a1 && s0.len() == s1.len() && z0.len() == z1.len() => {
            let changed = s0.iter().zip(s1).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
            let rel = s0
                .iter()
                .zip(s1)
                .map(|(x, y)| ((x - y).abs() / x.abs().max(f32::MIN_POSITIVE)) as f64)
                .fold(0.0f64, f64::max);
            let zps = z0.iter().zip(z1).filter(|(x, y)| x != y).count();
            format!(
                "per-axis axis {a0}: {changed} of {} scales changed (largest relative change {rel:.3e}), {zps} zero points changed",
                s0.len()
            )
        }
        _ => format!("{} -> {}", quant_short(a), quant_short(b)),
    }
}

/// Compares two artifacts.
pub fn diff(a: &Artifact, b: &Artifact, a_name: &str, b_name: &str) -> Result<Diff> {
    let na = nodes(&a.graph)?;
    let nb = nodes(&b.graph)?;
    let index_b: HashMap<&(String, usize), usize> = nb.iter().enumerate().map(|(i, (k, _))| (k, i)).collect();
    let mut matched_b = vec![false; nb.len()];
    let mut d = Diff {
        a: a_name.to_string(),
        b: b_name.to_string(),
        header: header_changes(&a.header, &b.header)?,
        changes: vec![],
        only_in_a: vec![],
        only_in_b: vec![],
        summary: DiffSummary::default(),
    };
    for (key, x) in &na {
        let Some(&j) = index_b.get(key) else {
            d.only_in_a.push(Unmatched { node: x.name.to_string(), op: x.op.to_string() });
            continue;
        };
        matched_b[j] = true;
        d.summary.matched += 1;
        let y = &nb[j].1;
        let change = |port, kind, a: String, b: String, detail: String| Change {
            node: x.name.to_string(),
            op: if x.op == y.op { x.op.to_string() } else { format!("{} -> {}", x.op, y.op) },
            port,
            kind,
            a,
            b,
            detail,
        };
        if x.op != y.op {
            d.changes.push(change(None, "op", x.op.into(), y.op.into(), format!("op {} -> {}", x.op, y.op)));
            d.summary.op_changes += 1;
        }
        for (port, (tx, ty)) in x.outputs.iter().zip(y.outputs).enumerate() {
            if tx.dtype != ty.dtype {
                let detail = format!("dtype {} -> {}", tx.dtype, ty.dtype);
                d.changes.push(change(Some(port), "dtype", tx.to_string(), ty.to_string(), detail));
                d.summary.dtype_changes += 1;
            }
            if tx.quant != ty.quant {
                let detail = quant_detail(&tx.quant, &ty.quant);
                d.changes.push(change(Some(port), "quant", tx.to_string(), ty.to_string(), detail));
                d.summary.quant_changes += 1;
            }
        }
        if x.outputs.len() != y.outputs.len() {
            let detail = format!("{} results -> {}", x.outputs.len(), y.outputs.len());
            let (ra, rb) = (x.outputs.len().to_string(), y.outputs.len().to_string());
            d.changes.push(change(None, "op", ra, rb, detail));
            d.summary.op_changes += 1;
        }
    }
    for ((_, y), m) in nb.iter().zip(&matched_b) {
        if !m {
            d.only_in_b.push(Unmatched { node: y.name.to_string(), op: y.op.to_string() });
        }
    }
    d.summary.only_in_a = d.only_in_a.len();
    d.summary.only_in_b = d.only_in_b.len();
    Ok(d)
}

fn header_changes(a: &Header, b: &Header) -> Result<Vec<HeaderChange>> {
    let mut out = vec![];
    let (ja, jb) = (serde_json::to_value(a)?, serde_json::to_value(b)?);
    for field in ["qforge_version", "model", "model_digest", "profile"] {
        if ja[field] != jb[field] {
            out.push(HeaderChange { field: field.into(), a: ja[field].clone(), b: jb[field].clone() });
        }
    }
    if let (Some(pa), Some(pb)) = (a.pipeline.as_object(), b.pipeline.as_object()) {
        let mut keys: Vec<&String> = pa.keys().chain(pb.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            let (x, y) = (pa.get(k.as_str()), pb.get(k.as_str()));
            if x != y {
                let null = serde_json::Value::Null;
                out.push(HeaderChange {
                    field: format!("pipeline.{k}"),
                    a: x.unwrap_or(&null).clone(),
                    b: y.unwrap_or(&null).clone(),
                });
            }
        }
    }
    Ok(out)
}

impl Diff {
    /// The human-readable form: one line per difference, then the summary line.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "--- {}\n+++ {}", self.a, self.b);
        for h in &self.header {
            let _ = writeln!(s, "header {}: {} -> {}", h.field, h.a, h.b);
        }
        for c in &self.changes {
            let port = c.port.map(|p| format!(" result {p}")).unwrap_or_default();
            let _ = writeln!(s, "~ {:?} ({}){port}: {}", c.node, c.op, c.detail);
        }
        for u in &self.only_in_a {
            let _ = writeln!(s, "- {:?} ({}): only in {}", u.node, u.op, self.a);
        }
        for u in &self.only_in_b {
            let _ = writeln!(s, "+ {:?} ({}): only in {}", u.node, u.op, self.b);
        }
        let m = &self.summary;
        let _ = writeln!(
            s,
            "{} nodes matched: {} quantization changes, {} dtype changes, {} op changes; {} only in A, {} only in B",
            m.matched, m.quant_changes, m.dtype_changes, m.op_changes, m.only_in_a, m.only_in_b
        );
        s
    }
}
