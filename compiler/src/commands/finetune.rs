//! `qforge finetune MODEL --calib X.npy [--labels Y.npy] --quantize int8|int4 -o OUT.onnx|OUT.qfa`:
//! quantization-aware fine-tuning on the calibration data (distillation from the model's own FP32
//! outputs; cross-entropy too with labels), written as QDQ ONNX (`.onnx`, the graph before the
//! optimizer lowers its Q/DQ, as `quantize` writes) or as a compiled artifact (`.qfa`, integer
//! kernels). A progress bar shows the loss, the loss scale and the skipped steps; `--report`
//! writes the loss curve as an HTML page.

use crate::artifact::Artifact;
use crate::compiler::Compiler;
use crate::evaluator::EngineEvaluator;
use crate::finetune::{self, FinetuneOptions};
use crate::onnx::export::{export_qdq_with, ExportOptions};
use crate::options::{Engine, PipelineOptions};
use crate::{data, files, progress};
use anyhow::{bail, Context, Result};
use qforge_passes::quantize::CalibMethod;
use qforge_passes::train::{Objective, OptimizerKind, TrainConfig, TrainPrecision};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Quantize {
    /// 8-bit activations and per-channel weights.
    Int8,
    /// 8-bit activations, 4-bit per-channel weights (W4A8).
    Int4,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// Quantization-aware training: fake quantization, straight-through gradients, LSQ scales.
    Qat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    Fp32,
    Fp16,
    Bf16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LossScale {
    /// GradScaler's dynamic loss scaling (2^16, halved on overflow, doubled after 2000 steps).
    Dynamic,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Optim {
    Adam,
    Sgd,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    model: PathBuf,
    /// The training samples (the calibration set), `[N, ...]` f32.
    #[arg(long, value_name = "X.npy")]
    calib: PathBuf,
    /// Integer labels of the samples: cross-entropy joins distillation (0.1 CE + 0.9 KD).
    #[arg(long, value_name = "Y.npy")]
    labels: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Quantize::Int8)]
    quantize: Quantize,
    #[arg(long, value_enum, default_value_t = Method::Qat)]
    method: Method,
    /// The distillation temperature.
    #[arg(long, default_value_t = 4.0, value_name = "T")]
    kd_temperature: f32,
    /// The precision the forward and backward passes compute in (f32 master weights).
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    precision: Precision,
    #[arg(long, value_enum, default_value_t = LossScale::None)]
    loss_scale: LossScale,
    #[arg(long, default_value_t = 10, value_name = "N", value_parser = crate::options::parse_count)]
    epochs: usize,
    /// The initial learning rate (cosine decay to 0).
    #[arg(long, default_value_t = 1e-4, value_name = "R")]
    lr: f32,
    #[arg(long, default_value_t = 32, value_name = "B", value_parser = crate::options::parse_count)]
    batch: usize,
    #[arg(long, default_value_t = 0, value_name = "S")]
    seed: u64,
    #[arg(long, value_enum, default_value_t = Optim::Adam)]
    optimizer: Optim,
    /// The activation observer during the first steps: minmax or ema.
    #[arg(long, value_name = "minmax|ema", value_parser = crate::options::parse_calib_method)]
    calib_method: Option<CalibMethod>,
    #[arg(short, long, value_name = "OUT.onnx|OUT.qfa")]
    output: PathBuf,
    /// Write the loss curve and the run's figures as an HTML page.
    #[arg(long, value_name = "R.html")]
    report: Option<PathBuf>,
    /// The engine that runs calibration and every training step.
    #[arg(long, value_enum, default_value_t = Engine::Jit)]
    engine: Engine,
    /// JIT threads per kernel (one thread: the same result for a seed on every run).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
}

pub fn run(a: Args) -> Result<()> {
    files::check_output(&a.output, "-o")?;
    let ext = a.output.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !matches!(ext, "onnx" | "qfa") {
        bail!("-o `{}`: expected an .onnx or .qfa file", a.output.display());
    }
    if let Some(r) = &a.report {
        files::check_output(r, "--report")?;
    }
    if !(a.kd_temperature.is_finite() && a.kd_temperature > 0.0) {
        bail!("--kd-temperature {}: expected a positive number", a.kd_temperature);
    }
    if !(a.lr.is_finite() && a.lr > 0.0) {
        bail!("--lr {}: expected a positive number", a.lr);
    }
    let model = crate::compiler::load_model(&a.model)?;
    let x = crate::npy::read(&a.calib).with_context(|| format!("--calib `{}`", a.calib.display()))?;
    let labels = match &a.labels {
        Some(p) => Some(data::labels(&crate::npy::read(p)?).with_context(|| format!("--labels `{}`", p.display()))?),
        None => None,
    };
    let precision = match a.precision {
        Precision::Fp32 => TrainPrecision::Fp32,
        Precision::Fp16 => TrainPrecision::Fp16,
        Precision::Bf16 => TrainPrecision::Bf16,
    };
    let o = FinetuneOptions {
        weight_bits: if a.quantize == Quantize::Int4 { 4 } else { 8 },
        calib_method: a.calib_method,
        objective: Objective { temperature: a.kd_temperature, ..Objective::seed() },
        train: TrainConfig {
            epochs: a.epochs,
            batch: a.batch,
            seed: a.seed,
            optimizer: match a.optimizer {
                Optim::Adam => OptimizerKind::adam(),
                Optim::Sgd => OptimizerKind::sgd_momentum(),
            },
            lr: a.lr,
            precision,
            loss_scaling: a.loss_scale == LossScale::Dynamic,
            ..TrainConfig::default()
        },
        eval: EngineEvaluator::new(&PipelineOptions {
            engine: a.engine,
            threads: a.threads,
            ..PipelineOptions::default()
        }),
    };
    let mut cal_bar = progress::bar("calibrating", "batches");
    let mut bar = progress::bar_with_status("fine-tuning", "steps");
    let f = finetune::finetune(&model, &x, labels.clone(), &o, &mut *cal_bar, &mut |s| {
        let status = format!("loss {:.4}  scale {}  skipped {}", s.loss, s.loss_scale, s.skipped_total);
        bar(s.step + 1, s.total, &status);
    })?;
    let steps = &f.trained.steps;
    let first = steps.first().map_or(f32::NAN, |s| s.loss);
    let last = mean_tail(steps);
    let kind = if o.weight_bits == 4 { "W4A8" } else { "INT8" };
    let skipped = steps.iter().filter(|s| s.skipped).count();
    println!(
        "fine-tuned `{}`: {kind} QAT ({}), {} epochs x {} steps in {:.1} s (median step {:.1} ms at batch {}); loss {first:.5} -> {last:.5} (mean of the last epoch), {skipped} step(s) skipped, final loss scale {}",
        a.model.display(),
        what(&a, labels.is_some()),
        a.epochs,
        steps.len() / a.epochs.max(1),
        f.seconds,
        f.median_step_seconds() * 1e3,
        a.batch,
        f.trained.loss_scale
    );
    // the output: QDQ ONNX before the optimizer, or the compiled artifact
    let bytes = if ext == "onnx" {
        let c = Compiler::new(PipelineOptions { opt_level: 1, ..PipelineOptions::default() })?;
        let g = c.optimize(f.graph.clone())?;
        let bytes = export_qdq_with(&g, ExportOptions { int4_per_axis: o.weight_bits == 4 })?;
        files::write(&a.output, &bytes)?;
        bytes.len() as u64
    } else {
        let c = Compiler::new(PipelineOptions::default())?;
        let g = c.optimize(f.graph.clone())?;
        Artifact::new(g, &a.model, &c)?.save(&a.output)?;
        files::size_of(&a.output)
    };
    println!("wrote `{}` ({}): {kind} Q/DQ", a.output.display(), files::human_bytes(bytes));
    if let Some(r) = &a.report {
        let settings: Vec<(String, String)> = vec![
            ("model".into(), a.model.display().to_string()),
            ("samples".into(), x.shape().first().copied().unwrap_or(0).to_string()),
            ("quantization".into(), kind.into()),
            ("objective".into(), what(&a, labels.is_some())),
            ("precision".into(), format!("{:?}, loss scale {:?}", a.precision, a.loss_scale).to_lowercase()),
            (
                "optimizer".into(),
                format!("{:?}, lr {} (cosine), batch {}, seed {}", a.optimizer, a.lr, a.batch, a.seed),
            ),
            ("epochs".into(), a.epochs.to_string()),
        ];
        let figures: Vec<(String, String)> = vec![
            ("steps".into(), steps.len().to_string()),
            ("median step".into(), format!("{:.1} ms", f.median_step_seconds() * 1e3)),
            ("first loss".into(), format!("{first:.5}")),
            ("last epoch's mean loss".into(), format!("{last:.5}")),
            ("skipped steps".into(), skipped.to_string()),
            ("final loss scale".into(), f.trained.loss_scale.to_string()),
            ("output".into(), a.output.display().to_string()),
        ];
        let name = a.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        files::write(r, finetune::report::html(&name, &settings, &figures, steps).as_bytes())?;
        println!("wrote `{}`", r.display());
    }
    Ok(())
}

fn what(a: &Args, labels: bool) -> String {
    if labels {
        format!("0.1 CE + 0.9 KD, T = {}", a.kd_temperature)
    } else {
        format!("KD from FP32, T = {}", a.kd_temperature)
    }
}

/// The mean finite loss over the last epoch's steps.
fn mean_tail(steps: &[qforge_passes::train::StepInfo]) -> f32 {
    let Some(last) = steps.last() else { return f32::NAN };
    let tail: Vec<f32> = steps.iter().filter(|s| s.epoch == last.epoch && s.loss.is_finite()).map(|s| s.loss).collect();
    tail.iter().sum::<f32>() / tail.len().max(1) as f32
}
