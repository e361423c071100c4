//! Calibration: run the graph on sample batches and feed one streaming observer per activation
//! that static quantization will quantize.
//!
//! The graph is run through an [`Evaluator`] (this crate never calls code generation: `qforge`
//! implements the trait with its engine; [`Interpreter`] is the reference interpreter, for tests
//! and as the default). Memory stays bounded: batches come one at a time from an iterator, the
//! evaluator frees intermediates after their last use, and the observers keep a few numbers or a
//! fixed-size histogram each. Progress is reported through a callback (the pass never prints).
//!
//! Ranges are keyed by the producing node's name and result port, so a calibration made on one
//! copy of a graph applies to another copy (sensitivity analysis quantizes many copies).

use super::observer::{ObserveError, Observer, ObserverConfig};
pub use crate::evaluator::{Evaluator, Interpreter};
use qforge_ir::{Graph, NodeId, Op, Tensor, Value};
use std::collections::{BTreeMap, HashMap};

/// One activation to observe, with the observer it gets.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub value: Value,
    pub observer: ObserverConfig,
}

/// Calibrated ranges, by (producing node's name, result port).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Calibration {
    pub ranges: BTreeMap<(String, usize), (f32, f32)>,
    pub batches: usize,
    pub samples: usize,
}

impl Calibration {
    /// The range of `v` in `g`, looked up by its producer's name.
    pub fn range(&self, g: &Graph, v: Value) -> Option<(f32, f32)> {
        self.ranges.get(&(g.node(v.node).name.clone(), v.port)).copied()
    }
}

/// Why calibration failed; every error names the node.
#[derive(Debug, thiserror::Error)]
pub enum CalibError {
    #[error("calibration: node `{node}` ({op}) result {port}: {error}")]
    Observe { node: String, op: &'static str, port: usize, error: ObserveError },
    #[error("calibration: running batch {batch}: {msg}")]
    Eval { batch: usize, msg: String },
    #[error("calibration: node `{node}` ({op}): {msg}")]
    Node { node: String, op: &'static str, msg: String },
    #[error("calibration: no calibration samples (the calibration set is empty)")]
    Empty,
}

/// Runs `g` on every batch (`total` of them, for progress) and returns each target's range.
/// `progress(done, total)` is called after each batch. NaN or infinity in any observed tensor
/// (the calibration inputs or an activation) is an error naming the node.
pub fn calibrate(
    g: &Graph,
    eval: &dyn Evaluator,
    batches: &mut dyn Iterator<Item = Vec<Tensor>>,
    total: usize,
    targets: &[Target],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Calibration, CalibError> {
    let node_err = |id: NodeId, msg: String| {
        let n = g.node(id);
        CalibError::Node { node: n.name.clone(), op: n.op.name(), msg }
    };
    let mut observers: Vec<Box<dyn Observer>> = Vec::with_capacity(targets.len());
    let mut by_node: HashMap<NodeId, Vec<usize>> = HashMap::new();
    let mut keys: BTreeMap<(String, usize), usize> = BTreeMap::new();
    for (i, t) in targets.iter().enumerate() {
        if !g.contains_value(t.value) {
            return Err(CalibError::Node { node: format!("{:?}", t.value), op: "?", msg: "not in the graph".into() });
        }
        let key = (g.node(t.value.node).name.clone(), t.value.port);
        if keys.insert(key, i).is_some() {
            return Err(node_err(t.value.node, "two calibrated values share this node name".into()));
        }
        observers.push(t.observer.build().map_err(|e| node_err(t.value.node, e.to_string()))?);
        by_node.entry(t.value.node).or_default().push(i);
    }
    let inputs: Vec<NodeId> = g.inputs().to_vec();
    let mut cal = Calibration::default();
    for (b, batch) in batches.enumerate() {
        let failure: std::cell::RefCell<Option<CalibError>> = Default::default();
        {
            let mut feed = |id: NodeId, results: &[Tensor]| {
                if failure.borrow().is_some() {
                    return;
                }
                let Some(ts) = by_node.get(&id) else { return };
                for &i in ts {
                    let port = targets[i].value.port;
                    let Some(values) = results.get(port).and_then(|t| t.as_f32()) else { continue };
                    if let Err(error) = observers[i].observe(values) {
                        let n = g.node(id);
                        *failure.borrow_mut() =
                            Some(CalibError::Observe { node: n.name.clone(), op: n.op.name(), port, error });
                        return;
                    }
                }
            };
            for (&id, t) in inputs.iter().zip(&batch) {
                feed(id, std::slice::from_ref(t));
            }
            if failure.borrow().is_none() {
                eval.run_observed(g, &batch, &mut feed).map_err(|msg| CalibError::Eval { batch: b, msg })?;
            }
        }
        if let Some(e) = failure.into_inner() {
            return Err(e);
        }
        cal.batches += 1;
        cal.samples += batch.first().and_then(|t| t.shape().first().copied()).unwrap_or(1);
        progress(b + 1, total);
    }
    if cal.batches == 0 || cal.samples == 0 {
        return Err(CalibError::Empty);
    }
    for (i, t) in targets.iter().enumerate() {
        let n = g.node(t.value.node);
        match observers[i].range() {
            Some(r) => {
                cal.ranges.insert((n.name.clone(), t.value.port), r);
            }
            None if matches!(n.op, Op::Const(_)) => {}
            None => return Err(node_err(t.value.node, "no value was observed (empty tensors on every batch)".into())),
        }
    }
    Ok(cal)
}
