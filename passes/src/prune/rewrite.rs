//! Physical removal of pruned channels: every constant slice a group names
//! ([`super::groups::Edit`]) is cut out, depthwise convs get their new group count, flattening
//! reshapes their new target, and every node's result type is inferred again in schedule order.
//!
//! Invariants: positions are always those of the graph the groups were found in, and every cut
//! of one constant (a conv that consumes one group and produces another, a concatenation of two
//! groups feeding one conv) is applied at once from the original constant, so groups never see
//! each other's offsets shift. Each new constant keeps the old one's name; a constant other nodes
//! still read stays for them. Nothing is removed from the graph but what becomes dead.

use super::groups::Group;
use super::PruneError;
use qforge_ir::{Graph, NodeId, Op, Tensor};
use std::collections::{BTreeMap, BTreeSet};

/// Positions to remove from a constant, by axis.
pub type Cut = BTreeMap<usize, BTreeSet<usize>>;

/// `t` without the positions `cut[axis]` along each axis in `cut`.
pub fn remove_positions(t: &Tensor, cut: &Cut) -> Tensor {
    let shape = t.shape();
    let keep: Vec<Vec<bool>> = shape
        .iter()
        .enumerate()
        .map(|(a, &n)| (0..n).map(|i| cut.get(&a).is_none_or(|s| !s.contains(&i))).collect())
        .collect();
    let new_shape: Vec<usize> = keep.iter().map(|k| k.iter().filter(|&&b| b).count()).collect();
    let vals = t.to_f64_vec();
    let mut idx = vec![0usize; shape.len()];
    let mut out = Vec::with_capacity(new_shape.iter().product());
    for &x in &vals {
        if idx.iter().enumerate().all(|(a, &i)| keep[a][i]) {
            out.push(x);
        }
        // the next row-major multi-index
        for a in (0..shape.len()).rev() {
            idx[a] += 1;
            if idx[a] < shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    Tensor::from_f64_iter(t.dtype(), new_shape, out.into_iter())
}

/// Removes the channels `removed` (group channel indices, ascending) of each group from `g`.
pub fn apply(g: &mut Graph, cuts: &[(&Group, Vec<usize>)]) -> Result<(), PruneError> {
    // (node, slot) -> axis -> positions
    let mut per_const: BTreeMap<(NodeId, usize), Cut> = BTreeMap::new();
    let mut depthwise = BTreeSet::new();
    let mut reshapes = BTreeSet::new();
    for (group, removed) in cuts {
        for e in &group.edits {
            per_const.entry((e.node, e.slot)).or_default().entry(e.axis).or_default().extend(e.positions(removed));
        }
        depthwise.extend(group.depthwise.iter().copied());
        reshapes.extend(group.reshapes.iter().copied());
    }
    // one new constant per old constant and cut: readers of a shared constant with the same cuts
    // keep sharing it
    let mut made: BTreeMap<(NodeId, Cut), qforge_ir::Value> = BTreeMap::new();
    for ((node, slot), cut) in per_const {
        let n = g.node(node);
        let missing = || PruneError::Rewrite { node: n.name.clone(), msg: format!("input {slot} is not a constant") };
        let v = n.inputs().get(slot).copied().flatten().ok_or_else(missing)?;
        let key = (v.node, cut.clone());
        let nc = match made.get(&key) {
            Some(&nc) => nc,
            None => {
                let c = g.node(v.node);
                let Op::Const(t) = &c.op else { return Err(missing()) };
                let (name, t) = (c.name.clone(), remove_positions(t, &cut));
                let nc = g.add_const(name, t);
                made.insert(key, nc);
                nc
            }
        };
        g.set_input(node, slot, Some(nc));
    }
    let order = g.schedule().map_err(PruneError::Graph)?;
    for id in order {
        if matches!(g.node(id).op, Op::Const(_) | Op::Input) {
            continue;
        }
        let n = g.node(id);
        let ins: Vec<_> = n.inputs().iter().map(|v| v.map(|v| g.value_type(v).clone())).collect();
        let mut op = n.op.clone();
        if let (true, Op::Conv(c), Some(Some(w))) = (depthwise.contains(&id), &mut op, ins.get(1)) {
            c.group = w.shape.dims().first().and_then(|d| d.fixed()).unwrap_or(c.group);
        }
        if let (true, Op::Reshape { shape }, Some(Some(x))) = (reshapes.contains(&id), &mut op, ins.first()) {
            // a flatten to [N, C*H*W]: the column count follows the channels
            let cols: Option<usize> = x.shape.dims().get(1..).and_then(|d| d.iter().map(|d| d.fixed()).product());
            match (shape.first().copied(), cols) {
                (Some(-1), Some(cols)) => *shape = vec![-1, cols as i64],
                (Some(d0), _) if d0 != -1 => *shape = vec![d0, -1],
                _ => {
                    return Err(PruneError::Rewrite {
                        node: n.name.clone(),
                        msg: "cannot re-target the flatten".into(),
                    })
                }
            }
        }
        let in_refs: Vec<_> = ins.iter().map(|t| t.as_ref()).collect();
        let outs = qforge_ir::infer::infer(&op, &in_refs, Some(&n.outputs)).map_err(|e| PruneError::Infer {
            node: n.name.clone(),
            op: n.op.name(),
            msg: e.to_string(),
        })?;
        let nm = g.node_mut(id);
        nm.op = op;
        nm.outputs = outs;
    }
    g.remove_dead();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_along_two_axes() {
        // [3, 2, 2]: remove row 1 along axis 0 and column 0 along axis 2
        let t = Tensor::from_f32(vec![3, 2, 2], (0..12).map(|x| x as f32).collect());
        let cut = BTreeMap::from([(0, BTreeSet::from([1])), (2, BTreeSet::from([0]))]);
        let r = remove_positions(&t, &cut);
        assert_eq!(r.shape(), [2, 2, 1]);
        assert_eq!(r.to_f32_vec(), vec![1.0, 3.0, 9.0, 11.0]);
    }
}
