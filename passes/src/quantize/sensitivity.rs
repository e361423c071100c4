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

use super::calibrate::{Calibration, EvalError, Evaluator};
use super::policy::{NodeRule, Pattern, Precision, QConfig, Rule};
use super::static_quant::{activation_plan, QuantizeStatic};
use crate::pass::{Pass, PassContext, PassError};
use qforge_ir::{Graph, IrError, Tensor};

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

/// `cfg` with every quantizable op but `keep` in float.
fn only(cfg: &QConfig, keep: &[String]) -> QConfig {
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

    /// Each quantizable op's sensitivity, least robust (lowest SQNR) first. `progress(done,
    /// total)` after each layer.
    pub fn analyze(&self, progress: &mut dyn FnMut(usize, usize)) -> Result<Vec<LayerSensitivity>, StudyError> {
        let g = self.graph;
        let ap = activation_plan(g, self.config)?;
        let total = ap.ops.len();
        let mut out = Vec::with_capacity(total);
        for (i, (id, _, _)) in ap.ops.iter().enumerate() {
            let node = g.node(*id);
            let (sqnr_db, top1) = self.evaluate(&only(self.config, std::slice::from_ref(&node.name)))?;
            let from = if node.from.is_empty() { vec![node.name.clone()] } else { node.from.clone() };
            out.push(LayerSensitivity { node: node.name.clone(), op: node.op.name(), from, sqnr_db, top1 });
            progress(i + 1, total);
        }
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
        let mut skip: Vec<String> = vec![];
        loop {
            let (_, top1) = self.evaluate(&skipping(self.config, &skip))?;
            let top1 = top1.ok_or(StudyError::NoLabels)?;
            if fp32_top1 - top1 <= max_drop + 1e-12 || skip.len() == ranked.len() {
                return Ok((skip, top1));
            }
            skip.push(ranked[skip.len()].node.clone());
        }
    }

    /// Keeps the most sensitive layers (in `ranked` order) in float, one more at a time, until the
    /// output SQNR of the rest quantized against the float model reaches `min_db`. Returns the
    /// layers kept in float and the SQNR reached (every ranked layer float when the target is
    /// never met: then the quantized part is only what the ranking did not cover).
    pub fn keep_float_until_sqnr(
        &self,
        ranked: &[LayerSensitivity],
        min_db: f64,
    ) -> Result<(Vec<String>, f64), StudyError> {
        let mut skip: Vec<String> = vec![];
        loop {
            let (sqnr, _) = self.evaluate(&skipping(self.config, &skip))?;
            if sqnr >= min_db || skip.len() == ranked.len() {
                return Ok((skip, sqnr));
            }
            skip.push(ranked[skip.len()].node.clone());
        }
    }
}
