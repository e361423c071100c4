//! Sensitivity analysis: quantize one layer at a time (every other op stays float) and measure how
//! far the output moves from the float model's, as SQNR (and top-1 accuracy when labels are
//! given). The least robust layers come first; [`Study::keep_float_until`] then keeps the most sensitive
//! ones in float until the accuracy drop is within a budget, and [`Study::keep_float_until_sqnr`]
//! (no labels needed: transformers have none) until the output SQNR against the float model on
//! the evaluation set reaches a target.
//!
//! The calibration is made once, on the prepared float graph with every layer quantized: ranges
//! are keyed by value, and a value's range does not depend on which other layers are quantized
//! (calibration runs the float graph).
//!
//! A probe computes the float graph's own values up to the layer it quantizes. The study's
//! searches ([`Study::analyze`], [`Study::keep_float_until`], [`Study::keep_float_until_sqnr`])
//! therefore run each quantized copy only from where it departs from the float graph, on the
//! float values there from watched runs of the float graph ([`super::float_prefix`]): their
//! figures are [`Study::evaluate`]'s bit for bit, for about half the work on MobileNetV2.

use super::calibrate::{Calibration, EvalError, Evaluator};
use super::float_prefix::{cut_at_float_prefix, FloatValues, FLOAT_VALUES_BYTES};
use super::policy::{NodeRule, Pattern, Precision, QConfig, Rule};
use super::static_quant::{activation_plan, QuantizeStatic};
use crate::bisect::count_reaching;
use crate::pass::{Pass, PassContext, PassError};
use qforge_ir::{Graph, IrError, NodeId, Op, Tensor, Value};

/// Why a sensitivity study failed.
#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    /// The graph has no plan of quantizable ops.
    #[error(transparent)]
    Plan(#[from] IrError),
    /// Quantizing a copy of the graph failed.
    #[error(transparent)]
    Quantize(#[from] PassError),
    /// Running a quantized copy failed.
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// An accuracy budget was asked for without labels.
    #[error("--max-accuracy-drop needs labels")]
    NoLabels,
}

/// One layer's sensitivity.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSensitivity {
    pub node: String,
    pub op: &'static str,
    /// The original (ONNX) node names it stands for.
    pub from: Vec<String>,
    /// SQNR of the first output, all batches together, against the float output (dB).
    pub sqnr_db: f64,
    /// Top-1 accuracy with only this layer quantized (with labels).
    pub top1: Option<f64>,
}

/// The evaluation set: input batches, the float model's first output on each, optional labels.
pub struct EvalSet<'a> {
    pub batches: &'a [Vec<Tensor>],
    pub reference: &'a [Tensor],
    pub labels: Option<&'a [usize]>,
}

/// `cfg` with every quantizable op but `keep` in float (a probe of the study).
pub fn quantizing_only(cfg: &QConfig, keep: &[String]) -> QConfig {
    let mut c = cfg.clone();
    c.default.precision = Some(Precision::Fp32);
    c.op_types.iter_mut().for_each(|(_, r)| r.precision = None);
    for n in &mut c.nodes {
        n.rule.precision = None;
    }
    for k in keep {
        c.nodes.push(NodeRule {
            pattern: Pattern::exact(k),
            rule: Rule { precision: Some(Precision::Int8), ..Rule::default() },
        });
    }
    c
}

/// `cfg` with the named nodes kept in float.
pub fn skipping(cfg: &QConfig, skip: &[String]) -> QConfig {
    let mut c = cfg.clone();
    for k in skip {
        c.nodes.push(NodeRule {
            pattern: Pattern::exact(k),
            rule: Rule { precision: Some(Precision::Fp32), ..Rule::default() },
        });
    }
    c
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold(0, |b, (i, &x)| if x > v[b] { i } else { b })
}

/// SQNR (dB) of `outs` against `refs` and top-1 against `labels`.
pub(crate) fn score(outs: &[Tensor], refs: &[Tensor], labels: Option<&[usize]>) -> (f64, Option<f64>) {
    let (mut sig, mut noise) = (0f64, 0f64);
    let mut preds = vec![];
    for (o, r) in outs.iter().zip(refs) {
        let rows = o.shape().first().copied().unwrap_or(1).max(1);
        let (o, r) = (o.to_f32_vec(), r.to_f32_vec());
        for (&a, &b) in o.iter().zip(&r) {
            sig += (b as f64).powi(2);
            noise += ((a - b) as f64).powi(2);
        }
        let cols = o.len() / rows;
        if cols > 0 {
            preds.extend(o.chunks(cols).map(argmax));
        }
    }
    let sqnr = if noise == 0.0 { f64::INFINITY } else { 10.0 * (sig / noise).log10() };
    let top1 = labels
        .filter(|l| l.len() == preds.len() && !l.is_empty())
        .map(|l| preds.iter().zip(l).filter(|(p, y)| p == y).count() as f64 / l.len() as f64);
    (sqnr, top1)
}

/// What a sensitivity study works on: the prepared float graph (batch norm folded), the policy
/// and calibration of the full quantization, the engine and the evaluation set.
pub struct Study<'a> {
    pub graph: &'a Graph,
    pub config: &'a QConfig,
    pub calibration: &'a Calibration,
    pub eval: &'a dyn Evaluator,
    pub set: EvalSet<'a>,
}

impl Study<'_> {
    /// Quantizes the graph under `cfg` and scores it on the evaluation set: (SQNR, top-1).
    pub fn evaluate(&self, cfg: &QConfig) -> Result<(f64, Option<f64>), StudyError> {
        let mut q = self.graph.clone();
        QuantizeStatic { config: cfg.clone(), calibration: self.calibration.clone() }
            .run(&mut q, &PassContext::default())?;
        let outs = self.eval.first_outputs(&q, self.set.batches)?;
        Ok(score(&outs, self.set.reference, self.set.labels))
    }

    /// [`Study::evaluate`] run from where the quantized graph departs from the float one
    /// ([`cut_at_float_prefix`]), on float values from `prefix` (asking it for `ahead` too when
    /// it runs the float graph): the same figures, bit for bit, without running (or compiling)
    /// the float prefix again.
    fn evaluate_after_prefix(
        &self,
        cfg: &QConfig,
        prefix: &FloatValues<'_>,
        ahead: &[Value],
    ) -> Result<(f64, Option<f64>), StudyError> {
        let mut q = self.graph.clone();
        QuantizeStatic { config: cfg.clone(), calibration: self.calibration.clone() }
            .run(&mut q, &PassContext::default())?;
        let mut suffix = q.clone();
        let cut = cut_at_float_prefix(self.graph, &mut suffix)?;
        // an output the float graph computes itself is the reference (every layer float)
        let output = q.outputs().first().map(|o| o.value);
        if output.is_some_and(|v| cut.contains(&v) && self.graph.outputs().first().map(|o| o.value) == Some(v)) {
            return Ok(score(self.set.reference, self.set.reference, self.set.labels));
        }
        // what is fetched ahead starts at this cut: the next evaluations cut near it
        let from = ahead.iter().position(|v| cut.contains(v)).unwrap_or(0);
        let suffix_outputs =
            prefix.with_inputs(&cut, &ahead[from..], |batches| self.eval.first_outputs(&suffix, batches))?;
        let outs = match suffix_outputs {
            Some(outs) => outs?,
            None => self.eval.first_outputs(&q, self.set.batches)?,
        };
        Ok(score(&outs, self.set.reference, self.set.labels))
    }

    /// The float values a graph with some of the planned ops quantized is likely to be cut at
    /// ([`cut_at_float_prefix`]), op by op in plan order: each op's inputs that depend on the
    /// graph's inputs, then the other inputs of their readers (a quantized value's Q/DQ pair
    /// is shared by all its readers). Returns the values and where each op's start.
    fn prefix_values(&self, ops: &[NodeId]) -> (Vec<Value>, Vec<usize>) {
        let g = self.graph;
        let varying = |v: &Value| !matches!(g.node(v.node).op, Op::Const(_));
        let (mut values, mut starts) = (Vec::<Value>::new(), vec![]);
        for &id in ops {
            let start = values.len();
            starts.push(start);
            for &x in g.node(id).inputs().iter().flatten().filter(|v| varying(v)) {
                let readers = g.value_users(x).into_iter().map(|(r, _)| r);
                let around = readers.flat_map(|r| g.node(r).inputs().iter().flatten().copied().collect::<Vec<_>>());
                for v in std::iter::once(x).chain(around).filter(|v| varying(v) && !g.inputs().contains(&v.node)) {
                    if !values[start..].contains(&v) {
                        values.push(v);
                    }
                }
            }
        }
        (values, starts)
    }

    /// Float values for evaluations whose cuts are not known in advance (a search over
    /// configurations): every value [`Study::prefix_values`] lists for the planned ops, fetched
    /// in plan order as far as the budget allows on the first evaluation that needs one.
    fn whole_prefix(&self) -> Result<(FloatValues<'_>, Vec<Value>), StudyError> {
        let ap = activation_plan(self.graph, self.config)?;
        let ops: Vec<NodeId> = ap.ops.iter().map(|(id, _, _)| *id).collect();
        let (ahead, _) = self.prefix_values(&ops);
        Ok((FloatValues::new(self.graph, self.eval, self.set.batches, FLOAT_VALUES_BYTES), ahead))
    }

    /// Each quantizable op's sensitivity, least robust (lowest SQNR) first. `progress(done,
    /// total)` after each layer.
    ///
    /// Each probe runs from the quantized op on: the float values it starts from come from
    /// watched runs of the float graph ([`FloatValues`], at most [`FLOAT_VALUES_BYTES`] of them
    /// kept at a time, fetched ahead in plan order), and what it computes is what
    /// [`Study::evaluate`] computes for the same configuration.
    pub fn analyze(&self, progress: &mut dyn FnMut(usize, usize)) -> Result<Vec<LayerSensitivity>, StudyError> {
        let g = self.graph;
        let ap = activation_plan(g, self.config)?;
        let ops: Vec<NodeId> = ap.ops.iter().map(|(id, _, _)| *id).collect();
        let (ahead, starts) = self.prefix_values(&ops);
        let prefix = FloatValues::new(g, self.eval, self.set.batches, FLOAT_VALUES_BYTES);
        let total = ops.len();
        let mut out = Vec::with_capacity(total);
        for (i, &id) in ops.iter().enumerate() {
            let node = g.node(id);
            let cfg = quantizing_only(self.config, std::slice::from_ref(&node.name));
            let (sqnr_db, top1) = self.evaluate_after_prefix(&cfg, &prefix, &ahead[starts[i]..])?;
            let from = if node.from.is_empty() { vec![node.name.clone()] } else { node.from.clone() };
            out.push(LayerSensitivity { node: node.name.clone(), op: node.op.name(), from, sqnr_db, top1 });
            progress(i + 1, total);
        }
        tracing::debug!("sensitivity: {} watched runs of the float graph for {total} probes", prefix.runs());
        out.sort_by(|a, b| a.sqnr_db.total_cmp(&b.sqnr_db).then_with(|| a.node.cmp(&b.node)));
        Ok(out)
    }

    /// Keeps the most sensitive layers (in `ranked` order) in float, one more at a time, until the
    /// top-1 accuracy of the rest quantized is within `max_drop` of `fp32_top1`. Returns the
    /// layers kept in float and the accuracy reached.
    pub fn keep_float_until(
        &self,
        ranked: &[LayerSensitivity],
        fp32_top1: f64,
        max_drop: f64,
    ) -> Result<(Vec<String>, f64), StudyError> {
        let (prefix, ahead) = self.whole_prefix()?;
        let mut skip: Vec<String> = vec![];
        loop {
            let (_, top1) = self.evaluate_after_prefix(&skipping(self.config, &skip), &prefix, &ahead)?;
            let top1 = top1.ok_or(StudyError::NoLabels)?;
            if fp32_top1 - top1 <= max_drop + 1e-12 || skip.len() == ranked.len() {
                return Ok((skip, top1));
            }
            skip.push(ranked[skip.len()].node.clone());
        }
    }

    /// Keeps the `k` most sensitive layers (in `ranked` order) in float, for a `k` at which the
    /// output SQNR of the rest quantized against the float model reaches `min_db` and `k - 1`
    /// misses it. Returns the layers kept in float and the SQNR reached (every ranked layer float
    /// when the target is never met: then the quantized part is only what the ranking did not
    /// cover).
    ///
    /// `k` is found by bisection ([`count_reaching`], as mixed precision's accuracy guard finds its
    /// f32 prefix) between 0 (nothing float) and `ranked.len()` (every ranked layer float): about
    /// log2(n) + 2 evaluations instead of one per layer kept. The output SQNR grows with `k` but
    /// not strictly:
    /// each layer added to the float set removes its own quantization noise, and also moves the
    /// rounding of every quantized layer after it, which can cost a tenth of a dB (measured on
    /// MobileNetV2). Where it dips across the target, the `k` returned is still measured to reach
    /// it and its predecessor to miss it, but a smaller `k` may reach it too.
    pub fn keep_float_until_sqnr(
        &self,
        ranked: &[LayerSensitivity],
        min_db: f64,
    ) -> Result<(Vec<String>, f64), StudyError> {
        let (prefix, ahead) = self.whole_prefix()?;
        let first = |k: usize| ranked[..k].iter().map(|l| l.node.clone()).collect::<Vec<_>>();
        let sqnr = |k: usize| -> Result<f64, StudyError> {
            let (db, _) = self.evaluate_after_prefix(&skipping(self.config, &first(k)), &prefix, &ahead)?;
            tracing::debug!("--min-sqnr search: {k} of {} layers float: {db:.4} dB", ranked.len());
            Ok(db)
        };
        let found = count_reaching(ranked.len(), min_db, sqnr(0)?, sqnr)?;
        Ok((first(found.count), found.score))
    }
}
