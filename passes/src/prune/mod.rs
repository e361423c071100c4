//! Structured channel pruning (`prune-channels`): the L2-norm pruning of convolution output
//! channels that PyTorch's `torch.nn.utils.prune.ln_structured(module, "weight", amount, n=2,
//! dim=0)` masks, with the channels physically removed from the graph: from the conv's weight
//! rows and bias, from every batch norm, per-channel constant and depthwise conv they pass
//! through, and from every consumer's input channels (convs, and GEMM or matmul rows after a
//! flatten), through residual adds and concatenations ([`groups`] finds what moves together,
//! [`rewrite`] cuts it out, [`cost`] counts MACs and parameters before and after).
//!
//! How many: for a conv with `M` output channels, `round(amount * M)` are removed, Python's
//! `round` (half to even) of the f64 product, as `torch.nn.utils.prune._compute_nparams_toprune`
//! computes it. Which: the channels with the smallest L2 norm of their weights (the norm over
//! every axis but 0, `torch.norm(w, p=2, dim=(1, 2, 3))`), computed in f64; equal norms drop the
//! lower index first (PyTorch's `topk` leaves the order of ties unspecified).
//!
//! Residual adds: convs whose outputs are added share one set of channels (a residual stage of
//! ResNet is one group: the stem and every block's last conv). Refusing them would leave most of
//! ResNet and MobileNetV2 unpruned, so the group is pruned as one, by the *summed* norm: channel
//! `c` scores `sum_p ||W_p[c]||_2` over the group's producers `p`, each producer counting as
//! much as the others (a channel is removed only when it is weak in all of them together). Every
//! producer must be selected by the patterns, or the group is left alone.
//!
//! Refusals are per group and never errors: a channel that reaches a graph output, a reshape,
//! transpose or matmul that mixes it with other axes, a grouped conv that is not depthwise, ...
//! (the [`groups`] docs list them): the conv keeps its channels and the report says why.
//!
//! Idempotence: the amount applies to the *original* channel count. The pass records each pruned
//! conv's original count in its `from` list as `prune-channels:M` (printed in the text form, so
//! it survives a save); a later run computes its target from that count. The same amount again
//! changes nothing; a larger amount prunes further to its own target; a smaller one cannot put
//! channels back and changes nothing (the report lists the conv at its count, "originally M").
//!
//! Invariants: the result verifies; the pruned graph computes exactly what the original computes
//! with the pruned channels' input weights in every consumer set to zero (a removed channel
//! contributes nothing downstream, and the float sums keep their order without the zero terms).

pub mod cost;
pub mod groups;
pub mod rewrite;

use crate::glob::glob_match;
use crate::pass::{Pass, PassContext, PassError, PassReport};
pub use cost::{cost, Cost};
use groups::{group_of, is_depthwise, Group, Role};
use qforge_ir::{Graph, IrError, NodeId, Op};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What to prune.
#[derive(Clone, Debug, PartialEq)]
pub struct PruneOptions {
    /// The fraction of each conv's output channels to remove (`ln_structured`'s `amount`), in
    /// [0, 1].
    pub amount: f64,
    /// Conv node-name globs ([`crate::glob`]) to prune; empty means every conv. They select the
    /// convs that make channels; a depthwise conv follows its input's whatever its name.
    pub include: Vec<String>,
    /// Conv node-name globs never to prune (over `include`).
    pub exclude: Vec<String>,
}

impl PruneOptions {
    pub fn amount(amount: f64) -> PruneOptions {
        PruneOptions { amount, include: vec![], exclude: vec![] }
    }

    fn selects(&self, name: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| glob_match(p, name)))
            && !self.exclude.iter().any(|p| glob_match(p, name))
    }
}

/// Why pruning failed (a refusal to prune one conv is not an error: see [`Outcome::Refused`]).
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("the pruning amount {0} is not a fraction in [0, 1]")]
    Amount(f64),
    #[error("{0}")]
    Graph(IrError),
    #[error("node `{node}` ({op}) after pruning: {msg}")]
    Infer { node: String, op: &'static str, msg: String },
    #[error("node `{node}`: {msg}")]
    Rewrite { node: String, msg: String },
    #[error("the pruned graph does not verify: {0}")]
    Verify(IrError),
}

/// What happened to one conv's output channels.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Pruned (or already at its target: `before == after`); `with`: the other producers of its
    /// group, pruned by the summed norm.
    Pruned { with: Vec<String> },
    /// A depthwise conv whose channels follow those of the groups of the producers `of` (several
    /// after a concatenation).
    Follows { of: Vec<String> },
    /// Left alone, with the reason.
    Refused(String),
}

/// One conv's line in the report.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvPrune {
    pub name: String,
    /// Output channels before this run (and the original count, if an earlier run pruned it).
    pub before: usize,
    pub original: usize,
    pub after: usize,
    pub outcome: Outcome,
}

/// The input positions one consumer (a conv's weight axis 1, a GEMM's or matmul's weight rows)
/// lost: what a channel's removal equals. Zeroing these weights in the graph before pruning gives
/// the same outputs as the pruned graph (the oracle the tests check).
#[derive(Clone, Debug, PartialEq)]
pub struct ConsumerCut {
    /// The consumer, an id of the graph as it was before pruning (a clone keeps the ids).
    pub node: NodeId,
    pub slot: usize,
    pub axis: usize,
    /// Positions along `axis`, ascending.
    pub positions: Vec<usize>,
}

/// What [`prune_channels`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct PruneReport {
    pub amount: f64,
    /// Every conv in schedule order.
    pub convs: Vec<ConvPrune>,
    pub before: Cost,
    pub after: Cost,
    /// Every consumer's removed input positions.
    pub consumer_cuts: Vec<ConsumerCut>,
}

impl PruneReport {
    /// Channels removed by this run.
    pub fn removed(&self) -> usize {
        self.convs.iter().filter(|c| matches!(c.outcome, Outcome::Pruned { .. })).map(|c| c.before - c.after).sum()
    }
    pub fn changed(&self) -> bool {
        self.convs.iter().any(|c| c.after != c.before)
    }
}

fn percent(before: u64, after: u64) -> String {
    if before == after {
        return " (unchanged)".into();
    }
    if before == 0 {
        return String::new();
    }
    format!(" ({:+.1}%)", (after as f64 - before as f64) * 100.0 / before as f64)
}

impl fmt::Display for PruneReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "prune-channels: amount {}, L2 norm of each output channel's weights", self.amount)?;
        writeln!(
            f,
            "MACs per sample: {} -> {}{}",
            self.before.macs,
            self.after.macs,
            percent(self.before.macs, self.after.macs)
        )?;
        writeln!(
            f,
            "parameters: {} -> {}{}",
            self.before.params,
            self.after.params,
            percent(self.before.params, self.after.params)
        )?;
        if !self.after.unknown.is_empty() {
            writeln!(f, "MACs not counted (symbolic size): {}", self.after.unknown.join(", "))?;
        }
        for c in &self.convs {
            let orig = if c.original != c.before { format!(" (originally {})", c.original) } else { String::new() };
            match &c.outcome {
                Outcome::Pruned { with } => {
                    write!(f, "conv `{}`: {} -> {} channels{orig}", c.name, c.before, c.after)?;
                    if !with.is_empty() {
                        let w: Vec<String> = with.iter().map(|n| format!("`{n}`")).collect();
                        write!(f, ", with {} by the summed norm", w.join(", "))?;
                    }
                    writeln!(f)?;
                }
                Outcome::Follows { of } => {
                    let of: Vec<String> = of.iter().map(|n| format!("`{n}`")).collect();
                    writeln!(
                        f,
                        "conv `{}`: {} -> {} channels{orig}, depthwise, follows {}",
                        c.name,
                        c.before,
                        c.after,
                        of.join(" and ")
                    )?
                }
                Outcome::Refused(why) => writeln!(f, "conv `{}`: {} channels kept: {why}", c.name, c.before)?,
            }
        }
        Ok(())
    }
}

/// The channels to remove: `round(amount * M)` (half to even, in f64: Python's `round`, as
/// `torch.nn.utils.prune._compute_nparams_toprune`).
pub fn channels_to_prune(amount: f64, m: usize) -> usize {
    ((amount * m as f64).round_ties_even() as usize).min(m)
}

/// The record of a pruned conv's original channel count in its `from` list.
const MARK: &str = "prune-channels:";

fn original_count(g: &Graph, id: NodeId) -> Option<usize> {
    g.node(id).from.iter().find_map(|f| f.strip_prefix(MARK)?.parse().ok())
}

/// The L2 norm of each output channel of conv `id`'s weight, in f64.
fn channel_norms(g: &Graph, id: NodeId) -> Option<Vec<f64>> {
    let w = g.node(id).inputs().get(1).copied().flatten()?;
    let Op::Const(t) = &g.node(w.node).op else { return None };
    let m = *t.shape().first()?;
    let v = t.to_f64_vec();
    let per = v.len().checked_div(m)?;
    Some((0..m).map(|c| v[c * per..(c + 1) * per].iter().map(|x| x * x).sum::<f64>().sqrt()).collect())
}

/// The channels of a group to remove to reach `keep`: the smallest summed norms, ties by index.
fn select(g: &Graph, group: &Group, keep: usize) -> Option<Vec<usize>> {
    let mut score = vec![0f64; group.channels];
    for &p in &group.producers {
        for (s, n) in score.iter_mut().zip(channel_norms(g, p)?) {
            *s += n;
        }
    }
    let mut order: Vec<usize> = (0..group.channels).collect();
    order.sort_by(|&a, &b| score[a].total_cmp(&score[b]).then(a.cmp(&b)));
    let mut removed: Vec<usize> = order[..group.channels.saturating_sub(keep)].to_vec();
    removed.sort_unstable();
    Some(removed)
}

fn out_channels(g: &Graph, id: NodeId) -> usize {
    g.node(id).outputs.first().and_then(|t| t.shape.dims().get(1)?.fixed()).unwrap_or(0)
}

/// Prunes `opts.amount` of every selected conv's output channels (see the module docs).
pub fn prune_channels(g: &mut Graph, opts: &PruneOptions) -> Result<PruneReport, PruneError> {
    if !(0.0..=1.0).contains(&opts.amount) {
        return Err(PruneError::Amount(opts.amount));
    }
    let before = cost(g);
    let order = g.schedule().map_err(PruneError::Graph)?;
    let convs: Vec<NodeId> = order.iter().copied().filter(|&id| matches!(g.node(id).op, Op::Conv(_))).collect();
    let place: BTreeMap<NodeId, usize> = order.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let mut seen = BTreeSet::new();
    let mut lines: Vec<(NodeId, usize, Outcome)> = vec![];
    let mut cuts: Vec<(Group, Vec<usize>)> = vec![];
    for &seed in &convs {
        if seen.contains(&seed) || is_depthwise(g, seed) {
            continue;
        }
        let name = |id: NodeId| g.node(id).name.clone();
        let group = match group_of(g, seed, &place) {
            Ok(group) => group,
            Err(r) => {
                for &p in &r.producers {
                    if seen.insert(p) {
                        let original = original_count(g, p).unwrap_or(out_channels(g, p));
                        lines.push((p, original, Outcome::Refused(r.reason.clone())));
                    }
                }
                continue;
            }
        };
        seen.extend(group.producers.iter().copied());
        let m = group.channels;
        let original = group.producers.iter().find_map(|&p| original_count(g, p)).unwrap_or(m);
        let excluded = group.producers.iter().find(|&&p| !opts.selects(&g.node(p).name));
        let target = original - channels_to_prune(opts.amount, original);
        let refusal = if let Some(&x) = excluded {
            Some(if x == seed {
                "not selected by the patterns".to_string()
            } else {
                format!("`{}` in its group is not selected by the patterns", name(x))
            })
        } else if target == 0 {
            Some(format!("the amount would remove all {original} channels"))
        } else {
            None
        };
        if let Some(why) = refusal {
            for &p in &group.producers {
                lines.push((p, original, Outcome::Refused(why.clone())));
            }
            continue;
        }
        let removed = if target < m {
            select(g, &group, target)
                .ok_or_else(|| PruneError::Rewrite { node: name(seed), msg: "its weight is not a constant".into() })?
        } else {
            vec![]
        };
        for &p in &group.producers {
            let with = group.producers.iter().filter(|&&q| q != p).map(|&q| name(q)).collect();
            lines.push((p, original, Outcome::Pruned { with }));
        }
        for &d in &group.depthwise {
            if seen.insert(d) {
                let original = original_count(g, d).unwrap_or(out_channels(g, d));
                lines.push((d, original, Outcome::Follows { of: vec![name(seed)] }));
            } else if let Some((_, _, Outcome::Follows { of })) = lines.iter_mut().find(|l| l.0 == d) {
                // after a concatenation: it follows several groups
                of.push(name(seed));
            }
        }
        if !removed.is_empty() {
            cuts.push((group, removed));
        }
    }
    // depthwise convs no pruned group reached
    for &d in &convs {
        if !seen.contains(&d) {
            let why = "depthwise: its channels follow its input's, which are not pruned".to_string();
            lines.push((d, original_count(g, d).unwrap_or(out_channels(g, d)), Outcome::Refused(why)));
        }
    }
    let position = |id: NodeId| convs.iter().position(|&c| c == id).unwrap_or(usize::MAX);
    lines.sort_by_key(|l| position(l.0));
    let before_counts: Vec<usize> = lines.iter().map(|l| out_channels(g, l.0)).collect();
    let mut consumer_cuts: Vec<ConsumerCut> = vec![];
    for (group, removed) in &cuts {
        for e in group.edits.iter().filter(|e| e.role == Role::Consumer) {
            let mut positions = e.positions(removed);
            match consumer_cuts.iter_mut().find(|c| (c.node, c.slot, c.axis) == (e.node, e.slot, e.axis)) {
                Some(c) => {
                    c.positions.append(&mut positions);
                    c.positions.sort_unstable();
                }
                None => consumer_cuts.push(ConsumerCut { node: e.node, slot: e.slot, axis: e.axis, positions }),
            }
        }
    }
    if !cuts.is_empty() {
        let refs: Vec<(&Group, Vec<usize>)> = cuts.iter().map(|(g, r)| (g, r.clone())).collect();
        rewrite::apply(g, &refs)?;
        // the record that makes the amount apply to the original count (see the module docs)
        for &(id, original, ref outcome) in &lines {
            if !matches!(outcome, Outcome::Refused(_))
                && original_count(g, id).is_none()
                && out_channels(g, id) < original
            {
                g.node_mut(id).from.push(format!("{MARK}{original}"));
            }
        }
        qforge_ir::verify::verify(g).map_err(PruneError::Verify)?;
    }
    // counts read from the graph itself, before and after
    let convs = lines
        .into_iter()
        .zip(before_counts)
        .map(|((id, original, outcome), before)| ConvPrune {
            name: g.node(id).name.clone(),
            before,
            original,
            after: out_channels(g, id),
            outcome,
        })
        .collect();
    Ok(PruneReport { amount: opts.amount, convs, before, after: cost(g), consumer_cuts })
}

/// The pass form of [`prune_channels`].
#[derive(Clone, Debug, PartialEq)]
pub struct PruneChannels(pub PruneOptions);

impl Pass for PruneChannels {
    fn name(&self) -> &'static str {
        "prune-channels"
    }

    fn run(&self, g: &mut Graph, _cx: &PassContext) -> Result<PassReport, PassError> {
        let mut report = PassReport::new(self.name());
        let r = prune_channels(g, &self.0)
            .map_err(|e| PassError::Failed { pass: self.name().into(), msg: e.to_string() })?;
        report.count("channels removed", r.removed() as u64);
        let pruned = r.convs.iter().filter(|c| c.after < c.before).count();
        let refused = r.convs.iter().filter(|c| matches!(c.outcome, Outcome::Refused(_))).count();
        report.count("convs pruned", pruned as u64);
        report.stats.insert("convs refused".into(), refused as u64);
        for (k, v) in [
            ("macs before", r.before.macs),
            ("macs after", r.after.macs),
            ("params before", r.before.params),
            ("params after", r.after.params),
        ] {
            report.stats.insert(k.into(), v);
        }
        report.notes.extend(r.to_string().lines().map(str::to_string));
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PyTorch's count: `round(amount * M)`, Python's round (half to even) of the f64 product.
    #[test]
    fn counts_follow_python_round() {
        // (amount, M, pruned): 0.3 * 5 = 1.5 -> 2 (even); 0.5 * 5 = 2.5 -> 2; 0.5 * 7 = 3.5 -> 4;
        // 0.3 * 16 = 4.8 -> 5; 0.3 * 64 = 19.2 -> 19; 0.3 * 10 = 3.0000000000000004 -> 3
        for (a, m, k) in
            [(0.3, 5, 2), (0.5, 5, 2), (0.5, 7, 4), (0.3, 16, 5), (0.3, 64, 19), (0.3, 10, 3), (0.0, 9, 0), (1.0, 9, 9)]
        {
            assert_eq!(channels_to_prune(a, m), k, "round({a} * {m})");
        }
    }

    #[test]
    fn amount_outside_unit_interval_is_an_error() {
        let mut g =
            qforge_ir::text::parse(include_str!("../../../tests/fixtures/qir/conv_bn_relu.qir")).expect("fixture");
        for a in [-0.1, 1.5, f64::NAN] {
            let e = prune_channels(&mut g, &PruneOptions::amount(a)).expect_err("refused");
            assert!(e.to_string().contains("not a fraction"), "{e}");
        }
    }
}
