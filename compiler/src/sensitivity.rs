//! The sensitivity study: each quantizable layer quantized alone, ranked by the output's SQNR
//! against the float model (and top-1 with labels), on the graph and calibration the pipeline
//! has at [`Stage::Calibrate`]. `qforge sensitivity`, the float fallback (`--min-sqnr` with
//! INT8) and `qforge report` all run it through [`study`].

use crate::compiler::{Compiler, Stage, State};
use crate::data;
use anyhow::{Context, Result};
use qforge_codegen::reuse;
use qforge_ir::Tensor;
use qforge_passes::quantize::{Calibration, EvalSet, LayerSensitivity, QConfig, Study};

/// What a study measured.
#[derive(Clone, Debug)]
pub struct Sensitivity {
    /// Layers, least robust first.
    pub layers: Vec<LayerSensitivity>,
    /// Every layer quantized: output SQNR (dB) and top-1.
    pub all_sqnr_db: f64,
    pub all_top1: Option<f64>,
    /// The float model's top-1 (with labels).
    pub fp32_top1: Option<f64>,
    /// Evaluation samples.
    pub samples: usize,
}

/// What the study keeps float for a target, and what that reaches.
#[derive(Clone, Debug)]
pub struct KeptFloat {
    pub layers: Vec<String>,
    /// The top-1 (for an accuracy budget) or output SQNR in dB (for an SQNR target) reached.
    pub reached: f64,
}

/// A study bound to the pipeline's state after [`Stage::Calibrate`] and an evaluation set, with
/// the float model's outputs on it computed once.
pub struct Prepared<'a> {
    compiler: &'a Compiler,
    st: &'a State,
    calibration: &'a Calibration,
    batches: &'a [Vec<Tensor>],
    labels: Option<&'a [usize]>,
    reference: Vec<Tensor>,
    /// The float model's top-1 on the evaluation set (with labels).
    pub fp32_top1: Option<f64>,
    /// Evaluation samples.
    pub samples: usize,
}

/// The float graph and the calibration at `st` (which must have run [`Stage::Calibrate`]),
/// evaluated on `batches` (with `labels`).
pub fn prepare<'a>(
    compiler: &'a Compiler,
    st: &'a State,
    batches: &'a [Vec<Tensor>],
    labels: Option<&'a [usize]>,
) -> Result<Prepared<'a>> {
    let calibration = st
        .calibration
        .as_ref()
        .filter(|_| st.done.contains(&Stage::Calibrate))
        .context("the sensitivity study needs the pipeline's calibration stage (--quantize int8 --calib X)")?;
    let reference = qforge_passes::evaluator::Evaluator::first_outputs(compiler.evaluator(), &st.graph, batches)
        .map_err(anyhow::Error::msg)
        .context("running the float model for the sensitivity study")?;
    let fp32_top1 = match labels {
        Some(l) => Some(data::top1(&data::argmax_rows(&data::concat_batch(&reference)?)?, l)?),
        None => None,
    };
    let samples = batches.iter().map(|b| b.first().and_then(|t| t.shape().first().copied()).unwrap_or(0)).sum();
    Ok(Prepared { compiler, st, calibration, batches, labels, reference, fp32_top1, samples })
}

impl Prepared<'_> {
    fn study(&self) -> Study<'_> {
        Study {
            graph: &self.st.graph,
            config: self.compiler.qconfig(),
            calibration: self.calibration,
            eval: self.compiler.evaluator(),
            set: EvalSet { batches: self.batches, reference: &self.reference, labels: self.labels },
        }
    }

    /// Ranks every quantizable layer (progress per layer through the compiler's progress hook).
    pub fn rank(&self) -> Result<Sensitivity> {
        let study = self.study();
        tracing::info!("sensitivity: quantizing one layer at a time, evaluated on {} batches", self.batches.len());
        let t = std::time::Instant::now();
        let mut bar = self.compiler.progress("sensitivity", "layers");
        let (layers, (all_sqnr_db, all_top1)) = reuse::between_programs(|| -> Result<_> {
            let layers = study.analyze(&mut *bar).map_err(anyhow::Error::msg)?;
            tracing::info!("sensitivity: {} layers ranked in {:.1} ms", layers.len(), t.elapsed().as_secs_f64() * 1e3);
            Ok((layers, study.evaluate(study.config).map_err(anyhow::Error::msg)?))
        })?;
        Ok(Sensitivity { layers, all_sqnr_db, all_top1, fp32_top1: self.fp32_top1, samples: self.samples })
    }

    /// The most sensitive layers kept float, one more at a time, until the top-1 drop is at most
    /// `max_drop` (needs labels).
    pub fn keep_float_for_accuracy(&self, ranked: &Sensitivity, max_drop: f64) -> Result<KeptFloat> {
        let fp32 = self.fp32_top1.context("an accuracy budget needs labels")?;
        let (layers, reached) =
            reuse::between_programs(|| self.study().keep_float_until(&ranked.layers, fp32, max_drop))
                .map_err(anyhow::Error::msg)?;
        Ok(KeptFloat { layers, reached })
    }

    /// The most sensitive layers kept float, as many as a bisection over the ranking finds the
    /// output SQNR to reach `min_db` with ([`Study::keep_float_until_sqnr`]).
    pub fn keep_float_for_sqnr(&self, ranked: &Sensitivity, min_db: f64) -> Result<KeptFloat> {
        let (layers, reached) = reuse::between_programs(|| self.study().keep_float_until_sqnr(&ranked.layers, min_db))
            .map_err(anyhow::Error::msg)?;
        Ok(KeptFloat { layers, reached })
    }
}

/// `cfg` with `kept` layers float.
pub fn skipping(cfg: &QConfig, kept: &KeptFloat) -> QConfig {
    qforge_passes::quantize::skipping(cfg, &kept.layers)
}
