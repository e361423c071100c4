//! Calibration: run the graph on sample batches and feed one streaming observer per activation
//! that static quantization will quantize.
//!
//! The graph is run through an [`Evaluator`] (this crate never calls code generation: `qforge`
//! implements the trait with its engine; [`Interpreter`] is the reference interpreter, for tests
//! and as the default). Memory stays bounded: batches come one at a time from an iterator, the
//! evaluator frees intermediates after their last use, and the observers keep a few numbers or a
//! fixed-size histogram each. Progress is reported through a callback (the pass never prints).
//!
//! [`channel_absmax`] is the other observation: the largest magnitude of each channel along the
//! last axis (all other axes and every batch reduced), which SmoothQuant ([`super::smooth`]) needs.
//!
//! Ranges are keyed by the producing node's name and result port, so a calibration made on one
//! copy of a graph applies to another copy (sensitivity analysis quantizes many copies).

use super::observer::{ObserveError, Observer, ObserverConfig};
pub use crate::evaluator::{EvalError, Evaluator, Interpreter};
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

/// Why calibration failed; every error names the node (or the batch). Messages include their
/// cause, kept as a field rather than as `source()`, so that `{:#}` prints it once.
#[derive(Debug, thiserror::Error)]
pub enum CalibError {
    #[error("calibration: node `{node}` ({op}) result {port}: {error}")]
    Observe { node: String, op: &'static str, port: usize, error: ObserveError },
    #[error("calibration: running batch {batch}: {error}")]
    Eval { batch: usize, error: EvalError },
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
    }
    let values: Vec<Value> = targets.iter().map(|t| t.value).collect();
    let mut observe = |i: usize, t: &Tensor, _batch: usize| -> Result<(), CalibError> {
        let Some(x) = t.as_f32() else { return Ok(()) };
        observers[i].observe(x).map_err(|error| {
            let n = g.node(values[i].node);
            CalibError::Observe { node: n.name.clone(), op: n.op.name(), port: values[i].port, error }
        })
    };
    let (batches, samples) = observe_values(g, eval, batches, total, &values, progress, &mut observe)?;
    let mut cal = Calibration { batches, samples, ..Calibration::default() };
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

/// Per-channel absolute maxima by (producing node's name, result port).
pub type ChannelMaxima = BTreeMap<(String, usize), Vec<f32>>;

/// Runs `g` on every batch and returns, for each of `values`, the largest `|x|` of each channel
/// along the last axis (all other axes and every batch reduced). The channel count is the last
/// dimension, which must be the same on every batch. NaN or infinity is an error naming the node.
pub fn channel_absmax(
    g: &Graph,
    eval: &dyn Evaluator,
    batches: &mut dyn Iterator<Item = Vec<Tensor>>,
    total: usize,
    values: &[Value],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ChannelMaxima, CalibError> {
    let mut maxima: Vec<Option<Vec<f32>>> = vec![None; values.len()];
    let mut observe = |i: usize, t: &Tensor, b: usize| -> Result<(), CalibError> {
        let n = g.node(values[i].node);
        let fail = |msg: String| CalibError::Node { node: n.name.clone(), op: n.op.name(), msg };
        let x = t.as_f32().ok_or_else(|| fail("channel maxima need an f32 value".into()))?;
        let c = t.shape().last().copied().unwrap_or(1).max(1);
        let m = maxima[i].get_or_insert_with(|| vec![0.0; c]);
        if m.len() != c {
            return Err(fail(format!("{c} channels on batch {b}, {} before", m.len())));
        }
        for (k, &v) in x.iter().enumerate() {
            if !v.is_finite() {
                return Err(fail(format!("non-finite value {v} on batch {b}")));
            }
            let a = &mut m[k % c];
            *a = a.max(v.abs());
        }
        Ok(())
    };
    let (seen, _) = observe_values(g, eval, batches, total, values, progress, &mut observe)?;
    if seen == 0 {
        return Err(CalibError::Empty);
    }
    let mut out = ChannelMaxima::new();
    for (v, m) in values.iter().zip(maxima) {
        let n = g.node(v.node);
        let m = m.ok_or_else(|| CalibError::Node {
            node: n.name.clone(),
            op: n.op.name(),
            msg: "no value was observed".into(),
        })?;
        out.insert((n.name.clone(), v.port), m);
    }
    Ok(out)
}

/// Runs `g` on every batch (`total` of them, for progress), handing each of `values` (by its
/// index) to `observe` as it is produced, graph inputs included; the first error stops the run.
/// `progress(done, total)` is called after each batch. Returns the batches and samples seen.
fn observe_values(
    g: &Graph,
    eval: &dyn Evaluator,
    batches: &mut dyn Iterator<Item = Vec<Tensor>>,
    total: usize,
    values: &[Value],
    progress: &mut dyn FnMut(usize, usize),
    observe: &mut dyn FnMut(usize, &Tensor, usize) -> Result<(), CalibError>,
) -> Result<(usize, usize), CalibError> {
    let mut by_node: HashMap<NodeId, Vec<usize>> = HashMap::new();
    for (i, v) in values.iter().enumerate() {
        if !g.contains_value(*v) {
            return Err(CalibError::Node { node: format!("{v:?}"), op: "?", msg: "not in the graph".into() });
        }
        by_node.entry(v.node).or_default().push(i);
    }
    let inputs: Vec<NodeId> = g.inputs().to_vec();
    let (mut seen, mut samples) = (0usize, 0usize);
    for (b, batch) in batches.enumerate() {
        let failure: std::cell::RefCell<Option<CalibError>> = Default::default();
        {
            let mut feed = |id: NodeId, results: &[Tensor]| {
                if failure.borrow().is_some() {
                    return;
                }
                let Some(ix) = by_node.get(&id) else { return };
                for &i in ix {
                    let Some(t) = results.get(values[i].port) else { continue };
                    if let Err(e) = observe(i, t, b) {
                        *failure.borrow_mut() = Some(e);
                        return;
                    }
                }
            };
            for (&id, t) in inputs.iter().zip(&batch) {
                feed(id, std::slice::from_ref(t));
            }
            if failure.borrow().is_none() {
                eval.run_observed(g, &batch, &mut feed).map_err(|error| CalibError::Eval { batch: b, error })?;
            }
        }
        if let Some(e) = failure.into_inner() {
            return Err(e);
        }
        seen += 1;
        samples += batch.first().and_then(|t| t.shape().first().copied()).unwrap_or(1);
        progress(b + 1, total);
    }
    Ok((seen, samples))
}
