//! How a pass runs a graph without calling code generation: through an [`Evaluator`], which
//! `qforge` implements with its engine (the reference [`Interpreter`] serves in tests). Calibration,
//! sensitivity analysis and the fp16 overflow guard all use it.

use qforge_ir::interp::{self, RunOptions};
use qforge_ir::{Graph, IrError, NodeId, Tensor, Value};

/// Why an [`Evaluator`] could not run a graph.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The reference interpreter rejected the graph or its inputs (the error names the node or
    /// input).
    #[error(transparent)]
    Ir(#[from] IrError),
    /// The engine failed with its own error (the JIT's, say).
    #[error(transparent)]
    Engine(Box<dyn std::error::Error + Send + Sync>),
    /// The graph has no output to return.
    #[error("the graph has no output")]
    NoOutput,
}

impl EvalError {
    /// An engine's own error.
    pub fn engine(e: impl std::error::Error + Send + Sync + 'static) -> EvalError {
        EvalError::Engine(Box::new(e))
    }
}

/// Runs a graph, calling `observe(node, results)` after each computed node (constants included,
/// graph inputs excluded). `qforge` implements it with its engine.
pub trait Evaluator {
    fn run_observed(
        &self,
        g: &Graph,
        inputs: &[Tensor],
        observe: &mut dyn FnMut(NodeId, &[Tensor]),
    ) -> Result<Vec<Tensor>, EvalError>;

    /// Runs without observing.
    fn run(&self, g: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>, EvalError> {
        self.run_observed(g, inputs, &mut |_, _| {})
    }

    /// The first output of `g` on each batch. An engine that compiles overrides it to compile
    /// `g` once for all the batches.
    fn first_outputs(&self, g: &Graph, batches: &[Vec<Tensor>]) -> Result<Vec<Tensor>, EvalError> {
        batches.iter().map(|b| first(self.run(g, b)?)).collect()
    }

    /// A runner of `g` for many runs on inputs of one shape (a training step's): this one runs
    /// [`Evaluator::run`] each time; an engine that compiles overrides it to compile `g` once.
    fn runner<'a>(&'a self, g: &'a Graph) -> Result<Box<dyn Runner + 'a>, EvalError> {
        Ok(Box::new(EachRun { eval: self, g }))
    }

    /// A runner of `g` that returns the intermediate `values` on each batch (calibration's
    /// observers read them). None of them may be a graph input: the caller has those already.
    /// This one keeps the values out of an observed run ([`ObservedWatcher`]); an engine that
    /// compiles overrides it to compile `g` once, with the values as extra outputs.
    fn watch<'a>(&'a self, g: &'a Graph, values: &[Value]) -> Result<Box<dyn Watcher + 'a>, EvalError> {
        Ok(Box::new(ObservedWatcher::new(self, g, values)))
    }
}

/// Runs one graph again and again (see [`Evaluator::runner`]).
pub trait Runner {
    /// Every output of the graph on `inputs`.
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EvalError>;
}

/// A [`Runner`] that hands each run to its evaluator.
struct EachRun<'a, E: Evaluator + ?Sized> {
    eval: &'a E,
    g: &'a Graph,
}

impl<E: Evaluator + ?Sized> Runner for EachRun<'_, E> {
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EvalError> {
        self.eval.run(self.g, inputs)
    }
}

/// A watched value as an engine hands it over: a tensor, or f32 elements borrowed from the
/// engine's memory in the order it computed them (no copy, no layout conversion). Observers that
/// do not care about the order (ranges, histograms) read [`Watched::unordered_f32`]; the others
/// read the layout or ask for [`Watched::to_tensor`].
#[derive(Clone, Copy, Debug)]
pub enum Watched<'a> {
    /// A tensor in its logical (row-major) order.
    Tensor(&'a Tensor),
    /// f32 elements of logical `shape`, row-major.
    Plain { shape: &'a [usize], data: &'a [f32] },
    /// f32 elements of a 4-D value of logical `shape` `[n, c, h, w]`, stored channels-last
    /// (`[n, h, w, c]`).
    ChannelsLast { shape: &'a [usize], data: &'a [f32] },
}

impl<'a> Watched<'a> {
    /// The logical shape.
    pub fn shape(&self) -> &'a [usize] {
        match self {
            Watched::Tensor(t) => t.shape(),
            Watched::Plain { shape, .. } | Watched::ChannelsLast { shape, .. } => shape,
        }
    }

    /// Every element of an f32 value, in storage order (None for another dtype).
    pub fn unordered_f32(&self) -> Option<&'a [f32]> {
        match self {
            Watched::Tensor(t) => t.as_f32(),
            Watched::Plain { data, .. } | Watched::ChannelsLast { data, .. } => Some(data),
        }
    }

    /// The f32 elements in logical order, when they are stored so (None for channels-last or
    /// another dtype).
    pub fn plain_f32(&self) -> Option<&'a [f32]> {
        match self {
            Watched::Tensor(t) => t.as_f32(),
            Watched::Plain { data, .. } => Some(data),
            Watched::ChannelsLast { .. } => None,
        }
    }

    /// The value as a tensor in logical order (a copy unless it is one already); None when the
    /// elements do not fit the shape (an engine's bug).
    pub fn to_tensor(&self) -> Option<std::borrow::Cow<'a, Tensor>> {
        use qforge_ir::TensorData;
        use std::borrow::Cow;
        match *self {
            Watched::Tensor(t) => Some(Cow::Borrowed(t)),
            Watched::Plain { shape, data } => {
                Tensor::new(shape.to_vec(), TensorData::F32(data.to_vec())).map(Cow::Owned)
            }
            Watched::ChannelsLast { shape, data } => {
                let [n, c, ..] = shape[..] else { return None };
                let hw: usize = shape[2..].iter().product();
                if n.checked_mul(c)?.checked_mul(hw)? != data.len() {
                    return None;
                }
                let mut plain = vec![0f32; data.len()];
                for (s, sample) in data.chunks_exact((hw * c).max(1)).enumerate().take(n) {
                    for (p, px) in sample.chunks_exact(c.max(1)).enumerate() {
                        for (ch, &x) in px.iter().enumerate() {
                            plain[(s * c + ch) * hw + p] = x;
                        }
                    }
                }
                Tensor::new(shape.to_vec(), TensorData::F32(plain)).map(Cow::Owned)
            }
        }
    }
}

/// Runs one graph on batch after batch and hands chosen intermediate values to a callback (see
/// [`Evaluator::watch`]).
pub trait Watcher {
    /// Runs the graph on `inputs`, calling `each(i, value)` once for every watched value `i`
    /// (its index in the list asked for), in an order the watcher chooses.
    fn run(&self, inputs: &[Tensor], each: &mut dyn FnMut(usize, Watched<'_>)) -> Result<(), EvalError>;
}

/// A [`Watcher`] over any evaluator's observed run: each watched value is handed on as soon as
/// its node has run, so nothing is kept beyond what the evaluator keeps.
pub struct ObservedWatcher<'a, E: Evaluator + ?Sized> {
    eval: &'a E,
    g: &'a Graph,
    by_node: std::collections::HashMap<NodeId, Vec<(usize, usize)>>,
    count: usize,
}

impl<'a, E: Evaluator + ?Sized> ObservedWatcher<'a, E> {
    /// Watches `values` of `g` run by `eval`.
    pub fn new(eval: &'a E, g: &'a Graph, values: &[Value]) -> ObservedWatcher<'a, E> {
        let mut by_node: std::collections::HashMap<NodeId, Vec<(usize, usize)>> = Default::default();
        for (i, v) in values.iter().enumerate() {
            by_node.entry(v.node).or_default().push((i, v.port));
        }
        ObservedWatcher { eval, g, by_node, count: values.len() }
    }
}

impl<E: Evaluator + ?Sized> Watcher for ObservedWatcher<'_, E> {
    fn run(&self, inputs: &[Tensor], each: &mut dyn FnMut(usize, Watched<'_>)) -> Result<(), EvalError> {
        let mut seen = 0;
        self.eval.run_observed(self.g, inputs, &mut |id, results| {
            for &(i, port) in self.by_node.get(&id).into_iter().flatten() {
                if let Some(t) = results.get(port) {
                    seen += 1;
                    each(i, Watched::Tensor(t));
                }
            }
        })?;
        if seen != self.count {
            return Err(IrError::Graph(format!(
                "{} of {} watched values were computed (a graph input, or not in the graph)",
                seen, self.count
            ))
            .into());
        }
        Ok(())
    }
}

/// The first of a graph's outputs.
pub fn first(outputs: Vec<Tensor>) -> Result<Tensor, EvalError> {
    outputs.into_iter().next().ok_or(EvalError::NoOutput)
}

/// The reference interpreter as an [`Evaluator`].
#[derive(Clone, Debug, Default)]
pub struct Interpreter(pub RunOptions);

impl Evaluator for Interpreter {
    fn run_observed(
        &self,
        g: &Graph,
        inputs: &[Tensor],
        observe: &mut dyn FnMut(NodeId, &[Tensor]),
    ) -> Result<Vec<Tensor>, EvalError> {
        Ok(interp::run_observed(g, inputs, &self.0, observe)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine's error prints once under `{:#}` (anyhow's chain), whatever its own chain.
    #[test]
    fn engine_errors_print_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("kernel failed")]
        struct Jit;
        let e = EvalError::engine(Jit);
        assert_eq!(e.to_string(), "kernel failed");
        assert!(std::error::Error::source(&e).is_none());
        let e = EvalError::from(IrError::Graph("no outputs".into()));
        assert_eq!(e.to_string(), "invalid graph: no outputs");
        assert!(std::error::Error::source(&e).is_none());
    }
}
