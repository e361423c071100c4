//! The float prefix of a partly quantized graph: the part of the float graph it still computes
//! unchanged. A sensitivity probe quantizes one layer of the float graph; everything before that
//! layer (in data-flow terms: every value that does not depend on anything quantization
//! changed) is the float graph's own and already known from one run of it. [`cut_at_float_prefix`]
//! turns such a copy into its suffix, with those values as extra graph inputs, and
//! [`FloatValues`] supplies them from watched runs of the float graph, so a probe runs (and is
//! compiled) only from where it departs from the float graph.
//!
//! The suffix computes what the whole copy computes, bit for bit: its nodes are the copy's own,
//! and the values fed in are those the float graph computes with the same nodes on the same
//! inputs. (An engine must compute a node the same whatever produced its inputs. The JIT does:
//! `tests/quantize.rs` compares every probe of three zoo models with the whole graph's figure,
//! bit for bit, and the snapshot of the layers `--min-sqnr` keeps float on MobileNetV2 checks
//! the study end to end.)

use super::calibrate::{EvalError, Evaluator};
use qforge_ir::{Graph, IrError, NodeId, Op, Tensor, Value};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};

/// Whether node `id` of `q` computes what node `id` of `g` computes, given which of `q`'s nodes
/// do (`same`): the same op with the same attributes and constants, the same result types, and
/// the same input values, each computed the same. Passes keep a node's id when they leave it
/// alone; a node they add may take a removed node's id, and is then compared like any other.
fn computes_the_same(g: &Graph, q: &Graph, id: NodeId, same: &HashSet<NodeId>) -> bool {
    if !g.contains_node(id) {
        return false;
    }
    let (a, b) = (q.node(id), g.node(id));
    let op_same = match (&a.op, &b.op) {
        (Op::Const(x), Op::Const(y)) => std::sync::Arc::ptr_eq(x, y) || x == y,
        (x, y) => x == y,
    };
    op_same
        && a.outputs == b.outputs
        && a.inputs() == b.inputs()
        && a.inputs().iter().flatten().all(|v| same.contains(&v.node))
}

/// Cuts `q`, a partly quantized copy of `g` (the same node ids for the nodes it left alone),
/// where it departs from `g`: every value of `q` that `g` computes the same way, that depends
/// on a graph input (constants stay constants) and that a changed node or a graph output reads
/// becomes a new graph input of `q` (after the original ones), and the nodes only they needed
/// are removed. Returns the values of `g` the new inputs stand for, in order. The original
/// inputs stay (a run feeds them as before, read or not).
pub fn cut_at_float_prefix(g: &Graph, q: &mut Graph) -> Result<Vec<Value>, IrError> {
    // which of g's nodes depend on a graph input
    let mut varying: HashSet<NodeId> = g.inputs().iter().copied().collect();
    for id in g.schedule()? {
        if g.node(id).inputs().iter().flatten().any(|v| varying.contains(&v.node)) {
            varying.insert(id);
        }
    }
    let mut same: HashSet<NodeId> = q.inputs().iter().copied().filter(|id| g.inputs().contains(id)).collect();
    let order = q.schedule()?;
    for &id in &order {
        if computes_the_same(g, q, id, &same) {
            same.insert(id);
        }
    }
    // a value of the prefix is cut where a changed node or an output reads it
    let cut_here = |v: &Value| same.contains(&v.node) && varying.contains(&v.node) && !q.inputs().contains(&v.node);
    let mut cut: Vec<Value> = vec![];
    for &id in order.iter().filter(|id| !same.contains(id)) {
        for v in q.node(id).inputs().iter().flatten().filter(|v| cut_here(v)) {
            if !cut.contains(v) {
                cut.push(*v);
            }
        }
    }
    for v in q.outputs().iter().map(|o| o.value).filter(|v| cut_here(v)) {
        if !cut.contains(&v) {
            cut.push(v);
        }
    }
    for (k, &v) in cut.iter().enumerate() {
        let ty = q.value_type(v).clone();
        let input = q.add_input(format!("qforge.float_prefix.{k}"), ty);
        q.replace_all_uses(v, input);
    }
    q.remove_dead();
    Ok(cut)
}

/// The most bytes of float values [`FloatValues`] keeps by default: as many as one watched run
/// of the JIT holds at a time. The values a probe of an early, wide layer starts from can take
/// more by themselves (MobileNetV2's first expansion at batch 8: 77 MB); such a probe runs the
/// whole graph, whose prefix is short anyway.
pub const FLOAT_VALUES_BYTES: u128 = 64 << 20;

/// Values of the float graph on the evaluation batches, for the inputs [`cut_at_float_prefix`]
/// adds: fetched by a watched run of the float graph over all the batches when one is missing,
/// together with the values the caller expects to need next, and kept while they fit the byte
/// budget (the values fetched last are kept; at least the ones asked for).
pub struct FloatValues<'a> {
    g: &'a Graph,
    eval: &'a dyn Evaluator,
    batches: &'a [Vec<Tensor>],
    budget: u128,
    /// Each value's tensor on every batch.
    kept: RefCell<HashMap<Value, Vec<Tensor>>>,
    /// Watched runs made so far.
    runs: Cell<usize>,
}

impl<'a> FloatValues<'a> {
    /// Values of `g` on `batches`, through `eval`, within `budget` bytes.
    pub fn new(g: &'a Graph, eval: &'a dyn Evaluator, batches: &'a [Vec<Tensor>], budget: u128) -> FloatValues<'a> {
        FloatValues { g, eval, batches, budget, kept: RefCell::default(), runs: Cell::new(0) }
    }

    /// Watched runs of the float graph made so far.
    pub fn runs(&self) -> usize {
        self.runs.get()
    }

    /// Bytes of value `v` over all the batches, from its type with each batch's input shapes
    /// sizing its symbolic dimensions (None when one stays unknown).
    fn bytes(&self, v: Value) -> Option<u128> {
        let ty = self.g.value_type(v);
        self.batches
            .iter()
            .try_fold(0u128, |total, batch| Some(total.saturating_add(ty.bytes_with(&self.g.input_dim_sizes(batch))?)))
    }

    /// Runs `f` on the evaluation batches with the tensors of `values` appended to each batch's
    /// inputs (in order), or returns None without running it when those values take more than
    /// the budget by themselves (the caller runs the whole graph instead). A value not kept is
    /// fetched first by a watched run of the float graph, with as many of `ahead` (the values
    /// the caller will ask for next, soonest first) as fit the budget beside the ones asked
    /// for; everything else kept is dropped then. The kept tensors are lent to `f`, not copied.
    pub fn with_inputs<R>(
        &self,
        values: &[Value],
        ahead: &[Value],
        f: impl FnOnce(&[Vec<Tensor>]) -> R,
    ) -> Result<Option<R>, EvalError> {
        let missing = values.iter().any(|v| !self.kept.borrow().contains_key(v));
        if missing {
            let mut wanted: Vec<Value> = vec![];
            let mut bytes = 0u128;
            for &v in values {
                if !wanted.contains(&v) {
                    bytes = bytes.saturating_add(self.bytes(v).unwrap_or(u128::MAX));
                    wanted.push(v);
                }
            }
            if bytes > self.budget {
                return Ok(None);
            }
            for &v in ahead {
                if wanted.contains(&v) {
                    continue;
                }
                match self.bytes(v) {
                    Some(b) if bytes.saturating_add(b) <= self.budget => {
                        bytes += b;
                        wanted.push(v);
                    }
                    _ => break,
                }
            }
            self.fetch(&wanted)?;
        }
        // each batch's inputs, then the values, moved out of `kept` and back after `f`
        let mut lent: Vec<Vec<Tensor>> = self.batches.to_vec();
        {
            let mut kept = self.kept.borrow_mut();
            for v in values {
                let tensors = kept.remove(v).ok_or(EvalError::NoOutput)?;
                for (batch, t) in lent.iter_mut().zip(tensors) {
                    batch.push(t);
                }
            }
        }
        let r = f(&lent);
        let mut kept = self.kept.borrow_mut();
        for v in values.iter().rev() {
            kept.insert(*v, lent.iter_mut().filter_map(|batch| batch.pop()).collect());
        }
        Ok(Some(r))
    }

    /// Runs the float graph over every batch watching `wanted`, and keeps exactly those.
    fn fetch(&self, wanted: &[Value]) -> Result<(), EvalError> {
        let mut kept = self.kept.borrow_mut();
        kept.retain(|v, _| wanted.contains(v));
        let todo: Vec<Value> = wanted.iter().copied().filter(|v| !kept.contains_key(v)).collect();
        if todo.is_empty() {
            return Ok(());
        }
        self.runs.set(self.runs.get() + 1);
        let watcher = self.eval.watch(self.g, &todo)?;
        // a watcher may run a batch in slices of samples: each value's rows are appended as
        // they come, so no more than one slice is held beside what is kept
        let mut got: Vec<Vec<Tensor>> = vec![Vec::with_capacity(self.batches.len()); todo.len()];
        let malformed = |i: usize, why: &str| {
            let node = &self.g.node(todo[i].node).name;
            EvalError::Ir(IrError::node(node, "watch", format!("the engine handed over a malformed value: {why}")))
        };
        for batch in self.batches {
            let mut rows: Vec<Option<Tensor>> = vec![None; todo.len()];
            let mut failed = None;
            watcher.run(batch, &mut |i, w| {
                let appended = match (w.to_tensor(), &mut rows[i]) {
                    (None, _) => Err("its elements do not fit its shape".to_string()),
                    (Some(t), slot @ None) => {
                        *slot = Some(t.into_owned());
                        Ok(())
                    }
                    (Some(t), Some(acc)) => acc.append_rows(&t).map_err(|e| e.to_string()),
                };
                if let Err(e) = appended {
                    failed = failed.take().or(Some((i, e)));
                }
            })?;
            if let Some((i, e)) = failed {
                return Err(malformed(i, &e));
            }
            for (i, t) in rows.into_iter().enumerate() {
                got[i].push(t.ok_or_else(|| malformed(i, "the engine did not hand it over"))?);
            }
        }
        kept.extend(todo.into_iter().zip(got));
        tracing::debug!(
            "float prefix: {} values of the float graph kept, {} bytes",
            kept.len(),
            kept.values().flatten().map(|t| t.len() * t.dtype().size_bytes()).sum::<usize>()
        );
        Ok(())
    }
}
