//! DAG-aware greedy extraction.
//!
//! egg's `Extractor` sums the costs of children as if the result were a tree, so a value used
//! twice counts twice and the choice between "fold BN into this conv" and "keep the conv, which
//! has another consumer" comes out wrong. This extractor instead gives each e-class the set of
//! e-classes its best term needs (a bit set) and costs the set: every shared subexpression counts
//! once. Candidates are relaxed to a fixpoint (children before parents converges in a few rounds);
//! a node whose children's sets contain its own class would close a cycle and is skipped.
//!
//! Greedy, not optimal: each class keeps one best set, so a choice that is best for one parent
//! but worse alone is not found (an ILP extractor would; it is too heavy here). Ties keep the
//! first candidate in e-node order (constants before ops), which keeps extraction deterministic.

use super::analysis::EG;
use super::cost::CostTable;
use super::lang::QNode;
use egg::{Id, Language};
use std::collections::HashMap;

#[derive(Clone)]
struct BitSet(Vec<u64>);

impl BitSet {
    fn new(n: usize) -> BitSet {
        BitSet(vec![0; n.div_ceil(64)])
    }
    fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn contains(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn union(&mut self, o: &BitSet) {
        for (a, b) in self.0.iter_mut().zip(&o.0) {
            *a |= *b;
        }
    }
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0
            .iter()
            .enumerate()
            .flat_map(|(w, &bits)| (0..64).filter(move |b| bits & (1u64 << b) != 0).map(move |b| w * 64 + b))
    }
}

/// Extraction found no finite term for an e-class the root needs (a bug in the rules: every
/// original node is a finite term).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("an e-class has no finite term")]
pub struct ExtractError;

struct Best {
    node: usize,
    own: f64,
    total: f64,
    set: BitSet,
}

/// The chosen e-node of every e-class reachable from `root`, and the total cost.
pub fn extract(eg: &EG, root: Id, cost: &CostTable) -> Result<(HashMap<Id, QNode>, f64), ExtractError> {
    let mut ids: Vec<Id> = eg.classes().map(|c| c.id).collect();
    ids.sort_unstable();
    let index: HashMap<Id, usize> = ids.iter().enumerate().map(|(i, &c)| (c, i)).collect();
    let n = ids.len();
    let own: Vec<Vec<f64>> =
        ids.iter().map(|&c| eg[c].nodes.iter().map(|nd| cost.node_cost(eg, c, nd)).collect()).collect();
    let mut best: Vec<Option<Best>> = (0..n).map(|_| None).collect();
    for _round in 0..64 {
        let mut changed = false;
        for i in 0..n {
            for (j, node) in eg[ids[i]].nodes.iter().enumerate() {
                let mut set = BitSet::new(n);
                let mut ok = true;
                for ch in node.children() {
                    match best[index[&eg.find(*ch)]].as_ref() {
                        Some(b) if !b.set.contains(i) => set.union(&b.set),
                        _ => {
                            ok = false;
                            break;
                        }
                    }
                }
                if !ok {
                    continue;
                }
                let total: f64 = own[i][j] + set.iter().map(|k| best[k].as_ref().map_or(0.0, |b| b.own)).sum::<f64>();
                set.insert(i);
                let better = match &best[i] {
                    None => true,
                    Some(b) if b.node == j => (total - b.total).abs() > 1e-9 * total.abs().max(1.0),
                    Some(b) => total < b.total * (1.0 - 1e-9),
                };
                if better {
                    let same = best[i].as_ref().is_some_and(|b| b.node == j);
                    best[i] = Some(Best { node: j, own: own[i][j], total, set });
                    changed |= !same;
                }
            }
        }
        if !changed {
            break;
        }
    }
    // Walk the choices from the root (the sets may be stale for classes that changed late).
    let mut choice: HashMap<Id, QNode> = HashMap::new();
    let mut stack = vec![eg.find(root)];
    let mut total = 0.0;
    while let Some(c) = stack.pop() {
        if choice.contains_key(&c) {
            continue;
        }
        let b = best[index[&c]].as_ref().ok_or(ExtractError)?;
        let node = eg[c].nodes[b.node].clone().map_children(|ch| eg.find(ch));
        total += b.own;
        stack.extend(node.children().iter().copied());
        choice.insert(c, node);
    }
    Ok((choice, total))
}
