//! DAG-aware extraction: a greedy pass, then local search on the true DAG cost.
//!
//! egg's `Extractor` sums the costs of children as if the result were a tree, so a value used
//! twice counts twice and the choice between "fold BN into this conv" and "keep the conv, which
//! has another consumer" comes out wrong. This extractor works with the cost of the extracted
//! DAG, where every shared subexpression counts once, in two steps:
//!
//! 1. **Greedy.** Each e-class gets the set of e-classes its best term needs (a bit set) and the
//!    set's cost. Candidates are relaxed to a fixpoint (every change, of node or of cost, starts
//!    another round); a node whose children's sets contain its own class would close a cycle and
//!    is skipped. Greedy is not optimal: each class keeps the term that is cheapest for itself,
//!    so a choice that is cheap alone but duplicates work its parents also need is taken. Example:
//!    a decomposed hard-swish `bn(y) * clip(bn(y) + 3)` after a foldable batch norm: the
//!    add's class alone is cheapest as a second conv with the 3 folded into its bias, but the
//!    multiply still needs the first conv, so the DAG computes the conv twice.
//! 2. **Local search** (hill climbing) on the whole DAG's cost: for every reachable e-class with
//!    alternatives, switch to the alternative that lowers the cost of the extracted DAG the most,
//!    and repeat until no single switch helps. It starts twice: from the input graph's own
//!    e-nodes (so the result is never costlier than the input, and any rewrite that is cheaper
//!    on its own, such as a batch norm folded into a conv with no other user, is taken) and from
//!    the greedy choice (which finds multi-node rewrites, such as integer lowering, in one
//!    step). The cheaper result wins; ties keep the input's.
//!
//! Ties between e-nodes keep the first in e-node order (constants before ops), which keeps
//! extraction deterministic. Classes are visited in id order.

use super::analysis::EG;
use super::cost::CostTable;
use super::lang::QNode;
use egg::{Id, Language};
use std::collections::HashMap;

/// Extraction found no acyclic finite term for the root (a bug in the rules: the input graph
/// itself is one).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("an e-class has no finite term")]
pub struct ExtractError;

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

struct Best {
    node: usize,
    own: f64,
    total: f64,
    set: BitSet,
}

/// The e-graph as dense tables: class index by id, each node's own cost and children's indices.
struct Tables {
    ids: Vec<Id>,
    own: Vec<Vec<f64>>,
    kids: Vec<Vec<Vec<usize>>>,
}

/// A choice of e-node (by position in its class) for each class, `None` where there is none.
type Selection = Vec<Option<usize>>;

/// Strictly cheaper, beyond rounding.
fn cheaper(a: f64, b: f64) -> bool {
    a < b - 1e-9 * b.abs().max(1.0)
}

impl Tables {
    fn new(eg: &EG, cost: &CostTable) -> (Tables, HashMap<Id, usize>) {
        let mut ids: Vec<Id> = eg.classes().map(|c| c.id).collect();
        ids.sort_unstable();
        let index: HashMap<Id, usize> = ids.iter().enumerate().map(|(i, &c)| (c, i)).collect();
        let own = ids.iter().map(|&c| eg[c].nodes.iter().map(|nd| cost.node_cost(eg, c, nd)).collect()).collect();
        let kids = ids
            .iter()
            .map(|&c| {
                eg[c].nodes.iter().map(|nd| nd.children().iter().map(|ch| index[&eg.find(*ch)]).collect()).collect()
            })
            .collect();
        (Tables { ids, own, kids }, index)
    }

    /// The greedy choice (see the module docs).
    fn greedy(&self) -> Selection {
        let n = self.ids.len();
        let mut best: Vec<Option<Best>> = (0..n).map(|_| None).collect();
        for _round in 0..64 {
            let mut changed = false;
            for i in 0..n {
                for (j, kids) in self.kids[i].iter().enumerate() {
                    let mut set = BitSet::new(n);
                    let mut ok = true;
                    for &k in kids {
                        match best[k].as_ref() {
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
                    let own = self.own[i][j];
                    let total: f64 = own + set.iter().map(|k| best[k].as_ref().map_or(0.0, |b| b.own)).sum::<f64>();
                    set.insert(i);
                    let better = match &best[i] {
                        None => true,
                        // the same node whose children's terms changed: keep its sets current
                        Some(b) if b.node == j => (total - b.total).abs() > 1e-9 * total.abs().max(1.0),
                        Some(b) => cheaper(total, b.total),
                    };
                    if better {
                        best[i] = Some(Best { node: j, own, total, set });
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        best.into_iter().map(|b| b.map(|b| b.node)).collect()
    }

    /// The cost of the DAG `sel` extracts from `root` (each class once), and its classes in post
    /// order; `None` when it is cyclic or reaches a class without a choice.
    fn dag(&self, sel: &Selection, root: usize) -> Option<(f64, Vec<usize>)> {
        // 0: not seen, 1: on the stack, 2: done
        let mut state = vec![0u8; self.ids.len()];
        let mut order = vec![];
        let mut total = 0.0;
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        state[root] = 1;
        while let Some(&mut (i, ref mut k)) = stack.last_mut() {
            let j = sel[i]?;
            let kids = &self.kids[i][j];
            if *k < kids.len() {
                let c = kids[*k];
                *k += 1;
                match state[c] {
                    0 => {
                        state[c] = 1;
                        stack.push((c, 0));
                    }
                    1 => return None,
                    _ => {}
                }
            } else {
                state[i] = 2;
                total += self.own[i][j];
                order.push(i);
                stack.pop();
            }
        }
        Some((total, order))
    }

    /// Hill climbing on the DAG cost from `sel` (see the module docs); `None` when `sel` itself
    /// is not a DAG.
    fn improve(&self, mut sel: Selection, root: usize) -> Option<(Selection, f64)> {
        let (mut total, mut order) = self.dag(&sel, root)?;
        // Each accepted switch lowers the cost, so this ends; the bound only caps pathological
        // e-graphs (every pass tries every alternative of every reachable class once).
        for _pass in 0..32 {
            let mut improved = false;
            let mut reachable = order.clone();
            reachable.sort_unstable();
            for i in reachable {
                if self.kids[i].len() < 2 {
                    continue;
                }
                let current = sel[i];
                let mut best: Option<(usize, f64, Vec<usize>)> = None;
                for j in 0..self.kids[i].len() {
                    if Some(j) == current || self.kids[i][j].iter().any(|&k| sel[k].is_none()) {
                        continue;
                    }
                    sel[i] = Some(j);
                    if let Some((t, o)) = self.dag(&sel, root) {
                        if cheaper(t, best.as_ref().map_or(total, |b| b.1)) {
                            best = Some((j, t, o));
                        }
                    }
                }
                match best {
                    Some((j, t, o)) => {
                        sel[i] = Some(j);
                        (total, order) = (t, o);
                        improved = true;
                    }
                    None => sel[i] = current,
                }
            }
            if !improved {
                break;
            }
        }
        Some((sel, total))
    }
}

/// The chosen e-node of every e-class reachable from `root`, and the total cost. `start` holds
/// the input graph's own e-nodes with their e-classes (the first local search starts there).
pub fn extract(
    eg: &EG,
    root: Id,
    cost: &CostTable,
    start: &[(Id, QNode)],
) -> Result<(HashMap<Id, QNode>, f64), ExtractError> {
    let (t, index) = Tables::new(eg, cost);
    let root_i = *index.get(&eg.find(root)).ok_or(ExtractError)?;
    let greedy = t.greedy();
    // The input's choice: its own e-node in each class that holds exactly one (a class holding
    // two, after a rewrite proved them equal, keeps the greedy choice: either original may be
    // defined through the other), the greedy choice in classes the rules made.
    let mut originals: HashMap<usize, Vec<usize>> = HashMap::new();
    for (c, node) in start {
        let i = index[&eg.find(*c)];
        let node = node.clone().map_children(|ch| eg.find(ch));
        if let Some(j) = eg[t.ids[i]].nodes.iter().position(|n| *n == node) {
            let js = originals.entry(i).or_default();
            if !js.contains(&j) {
                js.push(j);
            }
        }
    }
    let mut input = greedy.clone();
    for (&i, js) in &originals {
        if let [j] = js.as_slice() {
            input[i] = Some(*j);
        }
    }
    let mut best: Option<(Selection, f64)> = None;
    for sel in [input, greedy] {
        if let Some((sel, total)) = t.improve(sel, root_i) {
            if best.as_ref().is_none_or(|b| cheaper(total, b.1)) {
                best = Some((sel, total));
            }
        }
    }
    let (sel, total) = best.ok_or(ExtractError)?;
    let (_, order) = t.dag(&sel, root_i).ok_or(ExtractError)?;
    let mut choice = HashMap::with_capacity(order.len());
    for i in order {
        let j = sel[i].ok_or(ExtractError)?;
        choice.insert(t.ids[i], eg[t.ids[i]].nodes[j].clone().map_children(|ch| eg.find(ch)));
    }
    Ok((choice, total))
}
