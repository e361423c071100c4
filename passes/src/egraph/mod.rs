//! The equality-saturation optimizer (egg).
//!
//! The graph becomes one term ([`convert::lower`]) in an e-graph whose analysis knows every
//! e-class's type and constant-ness ([`analysis`]); the rules ([`rules`]: Q/DQ algebra and integer
//! lowering, BN and affine folding, epilogue fusion) add equal alternatives until nothing new
//! appears or a limit is hit ([`Limits`]); then a DAG-aware extractor ([`extract`]) picks the
//! cheapest graph under the target's cost table ([`cost`]), and [`convert::raise`] turns it back
//! into a graph with the original names and, on each fused node, the names it absorbed.
//!
//! The pass never makes a graph worse: extraction starts its local search from the input's own
//! terms, and if the extracted graph costs no less than the input, the input is kept unchanged
//! (which also makes a second run a no-op). Its report has the runner's stop reason, iterations,
//! e-graph size and the applications of each rule, the node counts and costs before and after,
//! the number of batch norms folded and, for each batch norm not folded into a conv, why not
//! ([`crate::batchnorm::fold_blocker`]) and what it runs as, and the fusion report
//! ([`crate::report`]) as notes.

pub mod analysis;
pub mod convert;
pub mod cost;
pub mod extract;
pub mod lang;
pub mod rules;

use crate::pass::{Pass, PassContext, PassError, PassReport};
use analysis::EG;
use cost::CostTable;
use egg::{Language, Runner, SimpleScheduler};
use qforge_ir::{Graph, Op};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// Why the optimizer failed (every case is a bug or a graph the e-graph cannot type).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OptimizeError {
    #[error(transparent)]
    Convert(#[from] convert::ConvertError),
    #[error("empty graph")]
    Empty,
    /// The input graph does not type in the e-graph's analysis.
    #[error("the graph does not type in the e-graph: {0}")]
    Untyped(String),
    /// A rule merged e-classes of different types.
    #[error("unsound rewrite (a bug): {0}")]
    Unsound(String),
    #[error(transparent)]
    Extract(#[from] extract::ExtractError),
}

/// The runner's limits (all explicit; hitting one is reported, not an error).
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub iterations: usize,
    pub nodes: usize,
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { iterations: 32, nodes: 200_000, time: Duration::from_secs(10) }
    }
}

/// The optimizer pass.
#[derive(Clone, Debug, Default)]
pub struct Optimize {
    pub limits: Limits,
    pub cost: CostTable,
}

/// What one optimization did, beyond the graph.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub stop_reason: String,
    pub iterations: usize,
    pub egraph_nodes: usize,
    pub egraph_classes: usize,
    /// Applications per rule, summed over iterations.
    pub applied: BTreeMap<String, usize>,
    pub cost_before: f64,
    pub cost_after: f64,
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub changed: bool,
}

impl Optimize {
    /// Optimizes `g` in place and says what happened.
    pub fn optimize(&self, g: &mut Graph) -> Result<Outcome, OptimizeError> {
        let lowered = convert::lower(g)?;
        let mut eg = EG::new(lowered.analysis);
        let ids = convert::add_expr(&mut eg, &lowered.expr);
        let root = *ids.last().ok_or(OptimizeError::Empty)?;
        let originals: Vec<_> = lowered.nodes.iter().map(|&(n, i)| (n, ids[usize::from(i)])).collect();
        // The input graph's own e-node of each class, where extraction's local search starts.
        let start: Vec<_> = lowered
            .expr
            .iter()
            .enumerate()
            .map(|(i, node)| (ids[i], node.clone().map_children(|ch| ids[usize::from(ch)])))
            .collect();
        eg.rebuild();
        let mut out = Outcome { nodes_before: originals.len(), ..Outcome::default() };
        // The input graph's cost: each original node once.
        let mut seen = HashSet::new();
        for (i, node) in lowered.expr.iter().enumerate() {
            let c = eg.find(ids[i]);
            if seen.insert((c, node.clone().map_children(|ch| eg.find(ids[usize::from(ch)])))) {
                let n = node.clone().map_children(|ch| eg.find(ids[usize::from(ch)]));
                out.cost_before += self.cost.node_cost(&eg, c, &n);
            }
        }
        if let Some(e) = eg.analysis.errors.first() {
            return Err(OptimizeError::Untyped(e.clone()));
        }
        let runner = Runner::default()
            .with_egraph(eg)
            .with_iter_limit(self.limits.iterations)
            .with_node_limit(self.limits.nodes)
            .with_time_limit(self.limits.time)
            .with_scheduler(SimpleScheduler)
            .run(&rules::all(&self.cost));
        let eg = runner.egraph;
        if let Some(e) = eg.analysis.errors.first() {
            return Err(OptimizeError::Unsound(e.clone()));
        }
        out.stop_reason = match &runner.stop_reason {
            Some(egg::StopReason::Saturated) => "saturated".into(),
            Some(egg::StopReason::IterationLimit(n)) => format!("iteration limit ({n})"),
            Some(egg::StopReason::NodeLimit(n)) => format!("node limit ({n})"),
            Some(egg::StopReason::TimeLimit(t)) => format!("time limit ({t:.2} s)"),
            Some(egg::StopReason::Other(s)) => s.clone(),
            None => "unknown".into(),
        };
        out.iterations = runner.iterations.len();
        out.egraph_nodes = eg.total_number_of_nodes();
        out.egraph_classes = eg.number_of_classes();
        for it in &runner.iterations {
            for (name, n) in &it.applied {
                *out.applied.entry(name.to_string()).or_default() += n;
            }
        }
        let (choice, total) = extract::extract(&eg, root, &self.cost, &start)?;
        out.cost_after = total;
        if total >= out.cost_before * (1.0 - 1e-9) {
            out.cost_after = out.cost_before;
            out.nodes_after = out.nodes_before;
            return Ok(out);
        }
        let new = convert::raise(&eg, root, &choice, g, &originals)?;
        out.nodes_after = new.schedule().map(|s| s.len()).unwrap_or(0);
        out.changed = true;
        *g = new;
        Ok(out)
    }
}

impl Pass for Optimize {
    fn name(&self) -> &'static str {
        "optimize"
    }

    fn run(&self, g: &mut Graph, _cx: &PassContext) -> Result<PassReport, PassError> {
        let mut r = PassReport::new(self.name());
        let batch_norms = batch_norms(g);
        let o = self.optimize(g).map_err(|e| PassError::Failed { pass: self.name().into(), msg: e.to_string() })?;
        r.changed = o.changed;
        r.stats.insert("egraph classes".into(), o.egraph_classes as u64);
        r.stats.insert("egraph nodes".into(), o.egraph_nodes as u64);
        r.stats.insert("iterations".into(), o.iterations as u64);
        r.stats.insert("nodes before".into(), o.nodes_before as u64);
        r.stats.insert("nodes after".into(), o.nodes_after as u64);
        r.stats.insert("cost before".into(), o.cost_before.round() as u64);
        r.stats.insert("cost after".into(), o.cost_after.round() as u64);
        for (name, n) in &o.applied {
            r.stats.insert(format!("applied {name}"), *n as u64);
        }
        r.notes.push(format!(
            "stop reason: {} after {} iterations (limits: {} iterations, {} e-nodes, {:?})",
            o.stop_reason, o.iterations, self.limits.iterations, self.limits.nodes, self.limits.time
        ));
        if !o.changed && o.applied.values().any(|&n| n > 0) {
            r.notes.push("no rewrite made the graph cheaper; kept it as it was".into());
        }
        let (folded, notes) = batch_norm_notes(&batch_norms, g);
        r.stats.insert("batch norms folded".into(), folded as u64);
        r.notes.extend(notes);
        for u in crate::report::fusion_report(g, self.cost.int8) {
            r.notes.push(format!("not fused: {u}"));
        }
        Ok(r)
    }
}

/// Every batch norm of `g` before optimization: its name and the conv it can fold into, or why
/// it cannot ([`crate::batchnorm::fold_blocker`]).
fn batch_norms(g: &Graph) -> Vec<(String, Result<String, crate::batchnorm::FoldBlocker>)> {
    g.node_ids()
        .filter(|&id| matches!(g.node(id).op, Op::BatchNorm { .. }))
        .map(|id| {
            let fold = crate::batchnorm::fold_blocker(g, id).map(|conv| g.node(conv).name.clone());
            (g.node(id).name.clone(), fold)
        })
        .collect()
}

/// How many of `batch_norms` were folded into a conv of the optimized graph `g` (one whose
/// origins list the batch norm), and a note for each one that was not: why it could not fold, and
/// what it runs as instead.
fn batch_norm_notes(
    batch_norms: &[(String, Result<String, crate::batchnorm::FoldBlocker>)],
    g: &Graph,
) -> (usize, Vec<String>) {
    let mut folded = 0;
    let mut notes = vec![];
    for (name, fold) in batch_norms {
        let conv = g.node_ids().map(|id| g.node(id)).find(|n| {
            matches!(n.op, Op::Conv(_) | Op::QConv { .. } | Op::ConvInteger(_)) && n.from.iter().any(|f| f == name)
        });
        if conv.is_some() {
            folded += 1;
            continue;
        }
        let nodes = || g.node_ids().map(|id| g.node(id));
        let now = match nodes().find(|n| n.name == *name).map(|n| &n.op) {
            Some(Op::BatchNorm { .. }) => "it stays a batch norm".to_string(),
            Some(Op::Binary(qforge_ir::BinaryOp::Add)) => "it runs as a per-channel multiply and add".to_string(),
            Some(op) => format!("it runs as `{}`", op.name()),
            None => match nodes().find(|n| n.from.iter().any(|f| f == name)) {
                Some(n) => format!("it was merged into `{}` `{}`", n.op.name(), n.name),
                None => "it was removed".to_string(),
            },
        };
        notes.push(match fold {
            Err(why) => format!("batch norm `{name}` not folded into a conv: {why}; {now}"),
            Ok(conv) => format!(
                "batch norm `{name}` not folded into the conv `{conv}` although it could be: folding was not \
                 cheaper under the cost model; {now}"
            ),
        });
    }
    (folded, notes)
}

#[cfg(test)]
mod tests {
    use super::analysis::{QAnalysis, EG};
    use super::lang::{InputRef, QNode};
    use super::*;
    use qforge_ir::{DType, Shape, TensorType};

    #[test]
    fn merging_classes_of_different_types_is_reported_as_unsound() {
        let an = QAnalysis::new(vec![
            TensorType::new(DType::F32, Shape::fixed(&[2])),
            TensorType::new(DType::F32, Shape::fixed(&[3])),
        ]);
        let mut eg = EG::new(an);
        let a = eg.add(QNode::Input(InputRef(0)));
        let b = eg.add(QNode::Input(InputRef(1)));
        eg.union(a, b);
        eg.rebuild();
        assert!(eg.analysis.errors.iter().any(|e| e.contains("unsound rewrite")), "{:?}", eg.analysis.errors);
    }

    #[test]
    fn a_graph_without_rewrites_is_kept_as_is() {
        let text = "graph g(%x: f32[N,4]) -> (y: f32[N,4]) {\n  %0 = relu %x : f32[N,4]  # \"r\"\n  return %0\n}\n";
        let mut g = qforge_ir::text::parse(text).unwrap();
        let o = Optimize::default().optimize(&mut g).unwrap();
        assert!(!o.changed);
        assert_eq!(o.stop_reason, "saturated");
        assert_eq!(qforge_ir::text::print_default(&g).unwrap(), text);
    }
}
