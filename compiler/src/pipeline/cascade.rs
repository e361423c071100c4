//! Cascaded error: how one stage's reduced precision shows at every output downstream of it.
//!
//! For each stage whose policy is not FP32, the pipeline runs with that stage at its policy and
//! every other stage in FP32, and each output of that stage and of every stage reading from it
//! (directly or not) is compared with the all-FP32 pipeline's on the same frames; a last group
//! runs every stage at its policy. The frames are the sample frames, each once, run one after
//! another on one thread with the same compiled programs, so the figures are deterministic.

use super::runner::{Keep, Outputs, Pipeline};
use crate::compiler::Executable;
use anyhow::{bail, Result};
use qforge_ir::Tensor;

/// The comparison of one output with the FP32 pipeline's.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CascadeRow {
    /// The stage run at its policy (the others in FP32), or `all` for every stage at its policy.
    pub quantized: String,
    /// Its policy (`int8`, `fp16`, ...), or `as configured`.
    pub precision: String,
    /// The output compared: `stage.output`.
    pub output: String,
    /// Signal-to-quantization-noise ratio over every element of every frame, in dB:
    /// `10 log10(sum y^2 / sum (x - y)^2)` with `y` the FP32 pipeline's value (infinite when equal).
    pub sqnr_db: f64,
    /// Cosine similarity of all the elements (every frame's, flattened) with the FP32 pipeline's.
    pub cosine: f64,
    /// The largest absolute difference.
    pub max_abs: f64,
}

/// The cascaded-error study.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Cascade {
    /// The frames compared (the sample frames, each once).
    pub frames: usize,
    pub rows: Vec<CascadeRow>,
    /// Stages whose policy is FP32 (nothing to compare).
    pub fp32_stages: Vec<String>,
}

/// The figures of `got` against `reference`, every frame's elements together.
fn compare(got: &[&Tensor], reference: &[&Tensor]) -> Result<(f64, f64, f64)> {
    let (mut sig, mut noise, mut dot, mut gg, mut max_abs) = (0f64, 0f64, 0f64, 0f64, 0f64);
    for (g, r) in got.iter().zip(reference) {
        if g.shape() != r.shape() {
            bail!("shape {:?} differs from the FP32 pipeline's {:?}", g.shape(), r.shape());
        }
        for (x, y) in g.to_f64_vec().into_iter().zip(r.to_f64_vec()) {
            let d = if x == y { 0.0 } else { x - y };
            sig += y * y;
            noise += d * d;
            dot += x * y;
            gg += x * x;
            max_abs = max_abs.max(d.abs());
        }
    }
    let sqnr = if noise == 0.0 { f64::INFINITY } else { 10.0 * (sig / noise).log10() };
    let cosine =
        if sig == 0.0 || gg == 0.0 { f64::from(u8::from(noise == 0.0)) } else { dot / (sig.sqrt() * gg.sqrt()) };
    Ok((sqnr, cosine, max_abs))
}

/// Runs the study on `p` with `fp32` (the stages compiled in FP32, [`Pipeline::fp32_stages`]).
pub fn cascade(p: &Pipeline, fp32: &[Executable]) -> Result<Cascade> {
    let frames = p.sample_frames();
    let reference = p.run_sequential(fp32, frames, Keep::All)?;
    let n = p.config.stages.len();
    let mut rows = Vec::new();
    let mut fp32_stages = Vec::new();
    let mut groups: Vec<(String, String, Vec<Executable>, Vec<bool>)> = Vec::new();
    for &s in &p.plan.order {
        let st = &p.config.stages[s];
        if st.precision == super::config::StagePrecision::Fp32 {
            fp32_stages.push(st.name.clone());
            continue;
        }
        let mut exes = fp32.to_vec();
        exes[s] = p.stages()[s].clone();
        groups.push((st.name.clone(), st.precision.name().to_string(), exes, p.plan.downstream_of(s)));
    }
    if groups.len() > 1 {
        let mut all = vec![false; n];
        for (_, _, _, down) in &groups {
            for (a, d) in all.iter_mut().zip(down) {
                *a |= d;
            }
        }
        groups.push(("all".into(), "as configured".into(), p.stages().to_vec(), all));
    }
    for (name, precision, exes, down) in groups {
        let run = p.run_sequential(&exes, frames, Keep::All)?;
        for &d in p.plan.order.iter().filter(|&&d| down[d]) {
            for (k, out) in p.plan.outputs[d].iter().enumerate() {
                let pick = |r: &[Vec<Option<Outputs>>]| -> Vec<Tensor> {
                    r.iter().filter_map(|f| f[d].as_ref().and_then(|o| o.get(k).cloned())).collect()
                };
                let (got, want) = (pick(&run.outputs), pick(&reference.outputs));
                let (sqnr_db, cosine, max_abs) =
                    compare(&got.iter().collect::<Vec<_>>(), &want.iter().collect::<Vec<_>>())?;
                rows.push(CascadeRow {
                    quantized: name.clone(),
                    precision: precision.clone(),
                    output: format!("{}.{out}", p.config.stages[d].name),
                    sqnr_db,
                    cosine,
                    max_abs,
                });
            }
        }
    }
    Ok(Cascade { frames, rows, fp32_stages })
}

impl Cascade {
    /// The table as text: one line per output, figures printed at a precision that does not
    /// change with the last bits of a float sum (SQNR to 0.1 dB, cosine to 6 decimals, the
    /// largest error to 3 significant digits).
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<12} {:<14} {:<24} {:>9} {:>10} {:>11}",
            "quantized", "precision", "output", "SQNR dB", "cosine", "max |err|"
        );
        for r in &self.rows {
            let sqnr = if r.sqnr_db.is_infinite() { "inf".to_string() } else { format!("{:.1}", r.sqnr_db) };
            let _ = writeln!(
                s,
                "{:<12} {:<14} {:<24} {:>9} {:>10.6} {:>11.2e}",
                r.quantized, r.precision, r.output, sqnr, r.cosine, r.max_abs
            );
        }
        if !self.fp32_stages.is_empty() {
            let _ = writeln!(s, "fp32 by policy (nothing to compare): {}", self.fp32_stages.join(", "));
        }
        s
    }
}
