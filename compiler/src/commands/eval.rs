//! `qforge eval MODEL --input X.npy --labels Y.npy [--json] [PIPELINE]`: top-1 accuracy, and the
//! same model's fp32 accuracy beside it when the pipeline quantizes or lowers precision.

use crate::artifact::Source;
use crate::data;
use crate::options::{parse_count, PipelineOptions};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub struct Args {
    model: PathBuf,
    /// Inputs, batch on axis 0.
    #[arg(long, value_name = "X.npy")]
    input: PathBuf,
    /// Integer labels, one per sample.
    #[arg(long, value_name = "Y.npy")]
    labels: PathBuf,
    /// Samples per run.
    #[arg(long, default_value_t = 64, value_parser = parse_count)]
    batch: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pipeline: PipelineOptions,
}

pub fn run(a: Args) -> Result<()> {
    let source = Source::open(&a.model, &a.pipeline)?;
    let g = source.graph();
    if g.inputs().len() != 1 {
        bail!("eval needs a model with one input; this one has {}", g.inputs().len());
    }
    let x = crate::npy::read(&a.input)?;
    let y = data::labels(&crate::npy::read(&a.labels)?).with_context(|| format!("`{}`", a.labels.display()))?;
    if x.shape().first() != Some(&y.len()) {
        bail!("{} inputs but {} labels", x.shape().first().copied().unwrap_or(0), y.len());
    }
    let first = data::slice_batch(&x, 0, x.shape()[0].min(1))?;
    qforge_ir::interp::check_inputs(g, std::slice::from_ref(&first))
        .with_context(|| format!("`{}`", a.input.display()))?;
    data::check_finite(
        std::slice::from_ref(&x),
        &format!("--input `{}`", a.input.display()),
        crate::data::NonFinite::strict(a.pipeline.strict),
    )?;
    // quantized or reduced precision: the float model's accuracy beside it (not for an artifact,
    // which has no source model)
    let baseline = match &source {
        Source::Model(g) if a.pipeline.changes_numerics() => Some(g.clone()),
        _ => None,
    };
    let prepared = source.prepare(a.pipeline.clone(), super::compiler)?;
    let exe = prepared.exe;
    let t = Instant::now();
    let scores = exe.run_batched(&x, a.batch)?;
    let secs = t.elapsed().as_secs_f64();
    let pred = data::argmax_rows(&scores)?;
    let acc = data::top1(&pred, &y)?;
    let correct = pred.iter().zip(&y).filter(|(p, l)| p == l).count();
    let fp32 = match baseline {
        Some(g) => {
            let fp = super::compiler(a.pipeline.fp32_baseline())?.compile(g)?;
            Some(data::top1(&data::argmax_rows(&fp.run_batched(&x, a.batch)?)?, &y)?)
        }
        None => None,
    };
    if a.json {
        let mut v = serde_json::json!({
            "top1": acc,
            "samples": y.len(),
            "correct": correct,
            "engine": exe.engine(),
            "seconds": secs,
        });
        if let Some(f) = fp32 {
            v["fp32_top1"] = serde_json::json!(f);
        }
        println!("{v}");
    } else {
        println!("top-1 {:.2}% ({correct}/{}) in {:.2} s", acc * 100.0, y.len(), secs);
        if let Some(f) = fp32 {
            println!("fp32 top-1 {:.2}% ({:+.2} points)", f * 100.0, (acc - f) * 100.0);
        }
    }
    Ok(())
}
