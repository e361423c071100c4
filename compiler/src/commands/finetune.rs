//! `qforge finetune MODEL --calib X.npy [--labels Y.npy] --quantize int8|int4 --method qat|adaround
//! [--prune AMOUNT] -o OUT.onnx|OUT.qfa`: quantization-aware fine-tuning on the calibration data
//! (distillation from the model's own FP32 outputs, or from the unpruned model after `--prune`;
//! cross-entropy too with labels), or (`--method adaround`) post-training quantization with
//! AdaRound's learned rounding; written as QDQ ONNX (`.onnx`, the graph before the optimizer
//! lowers its Q/DQ, as `quantize` writes) or as a compiled artifact (`.qfa`, integer kernels).
//! A progress bar shows the loss, the loss scale and the skipped steps; `--report` writes QAT's
//! loss curve as an HTML page. The settings that mean something for one method only are one-line
//! errors with the other (`check_method_flags`).

use crate::artifact::Artifact;
use crate::calib_set::LazyFile;
use crate::compiler::Compiler;
use crate::evaluator::EngineEvaluator;
use crate::finetune::adaround::{self, AdaRoundRun};
use crate::finetune::{self, FinetuneOptions};
use crate::onnx::export::{export_qdq_with, ExportOptions};
use crate::options::{Engine, PipelineOptions};
use crate::{data, files, progress};
use anyhow::{bail, Context, Result};
use qforge_passes::prune::{Outcome, PruneOptions, PruneReport};
use qforge_passes::quantize::adaround::AdaRoundOptions;
use qforge_passes::quantize::CalibMethod;
use qforge_passes::train::{Objective, OptimizerKind, TrainConfig, TrainPrecision};
use std::path::PathBuf;
use std::sync::Arc;

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
    /// Post-training quantization with AdaRound's learned rounding (no training of the network).
    Adaround,
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
    /// Integer labels of the samples: cross-entropy joins distillation (0.1 CE + 0.9 KD). QAT only.
    #[arg(long, value_name = "Y.npy")]
    labels: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Quantize::Int8)]
    quantize: Quantize,
    #[arg(long, value_enum, default_value_t = Method::Qat)]
    method: Method,
    /// Structured pruning first: remove this fraction of every conv's output channels (those with
    /// the smallest L2 norm of their weights, PyTorch's ln_structured), in [0, 1]; QAT then
    /// distils from the unpruned model.
    #[arg(long, value_name = "AMOUNT", value_parser = parse_amount)]
    prune: Option<f64>,
    /// The distillation temperature (QAT; 4 by default).
    #[arg(long, value_name = "T")]
    kd_temperature: Option<f32>,
    /// The precision the forward and backward passes compute in, f32 master weights (QAT; fp32
    /// by default).
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// Loss scaling (QAT; none by default).
    #[arg(long, value_enum)]
    loss_scale: Option<LossScale>,
    /// Passes over the samples (QAT; 10 by default).
    #[arg(long, value_name = "N", value_parser = crate::options::parse_count)]
    epochs: Option<usize>,
    /// AdaRound's Adam steps per layer (--method adaround; 1000 by default).
    #[arg(long, value_name = "N", value_parser = crate::options::parse_count)]
    iterations: Option<usize>,
    /// The initial learning rate: QAT's, decayed to 0 by a cosine (1e-4 by default), or AdaRound's
    /// on its rounding variables (0.01 by default).
    #[arg(long, value_name = "R")]
    lr: Option<f32>,
    /// Samples per step (QAT's batch, AdaRound's samples per step).
    #[arg(long, default_value_t = 32, value_name = "B", value_parser = crate::options::parse_count)]
    batch: usize,
    /// Seeds the sample order (QAT's shuffle, AdaRound's samples).
    #[arg(long, default_value_t = 0, value_name = "S")]
    seed: u64,
    /// The optimizer (QAT; adam by default).
    #[arg(long, value_enum)]
    optimizer: Option<Optim>,
    /// The activation observer: minmax or ema for QAT (its first steps), any calibration method
    /// for AdaRound (minmax by default).
    #[arg(long, value_name = "METHOD", value_parser = crate::options::parse_calib_method)]
    calib_method: Option<CalibMethod>,
    #[arg(short, long, value_name = "OUT.onnx|OUT.qfa")]
    output: PathBuf,
    /// Write the loss curve and the run's figures as an HTML page (QAT).
    #[arg(long, value_name = "R.html")]
    report: Option<PathBuf>,
    /// The engine that runs calibration and every training step.
    #[arg(long, value_enum, default_value_t = Engine::Jit)]
    engine: Engine,
    /// JIT threads per kernel (one thread: the same result for a seed on every run).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
}

/// `--prune`: a fraction in [0, 1].
fn parse_amount(s: &str) -> Result<f64, String> {
    let a: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&a) {
        Ok(a)
    } else {
        Err(format!("{a} is not a fraction in [0, 1]"))
    }
}

/// The QAT-only flags given with `--method adaround`, or AdaRound's with `--method qat`: the first
/// one as a one-line error.
fn check_method_flags(a: &Args) -> Result<()> {
    let qat_only = [
        ("--epochs", a.epochs.is_some()),
        ("--optimizer", a.optimizer.is_some()),
        ("--kd-temperature", a.kd_temperature.is_some()),
        ("--precision", a.precision.is_some()),
        ("--loss-scale", a.loss_scale.is_some()),
        ("--labels", a.labels.is_some()),
        ("--report", a.report.is_some()),
    ];
    match a.method {
        Method::Adaround => {
            if let Some((flag, _)) = qat_only.iter().find(|(_, given)| *given) {
                bail!(
                    "{flag} is a QAT setting: --method adaround trains no network (it fits each layer's rounding to \
                     its own float output; its settings are --iterations, --lr, --batch and --seed)"
                );
            }
        }
        Method::Qat => {
            if a.iterations.is_some() {
                bail!("--iterations is AdaRound's steps per layer (--method adaround); QAT's length is --epochs");
            }
        }
    }
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    files::check_output(&a.output, "-o")?;
    let ext = a.output.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !matches!(ext, "onnx" | "qfa") {
        bail!("-o `{}`: expected an .onnx or .qfa file", a.output.display());
    }
    check_method_flags(&a)?;
    if let Some(r) = &a.report {
        files::check_output(r, "--report")?;
    }
    if let Some(t) = a.kd_temperature.filter(|t| !(t.is_finite() && *t > 0.0)) {
        bail!("--kd-temperature {t}: expected a positive number");
    }
    if let Some(lr) = a.lr.filter(|lr| !(lr.is_finite() && *lr > 0.0)) {
        bail!("--lr {lr}: expected a positive number");
    }
    let weight_bits = if a.quantize == Quantize::Int4 { 4 } else { 8 };
    let kind = if weight_bits == 4 { "W4A8" } else { "INT8" };
    let prune = a.prune.map(PruneOptions::amount);
    let model = crate::compiler::load_model(&a.model)?;
    let (graph, pruned) = match a.method {
        Method::Qat => qat(&a, &model, weight_bits, prune)?,
        Method::Adaround => {
            let defaults = AdaRoundOptions::default();
            let fit = AdaRoundOptions {
                iterations: a.iterations.unwrap_or(defaults.iterations),
                batch: a.batch,
                lr: a.lr.unwrap_or(defaults.lr),
                seed: a.seed,
                ..defaults
            };
            let o = AdaRoundRun {
                weight_bits,
                calib_method: a.calib_method,
                fit,
                bias_correction: true,
                prune,
                max_tensor_bytes: PipelineOptions::default().max_tensor_bytes,
                engine: a.engine,
                threads: a.threads,
            };
            let calib = Arc::new(LazyFile::new(&a.calib));
            let bars: crate::compiler::ProgressFactory = Arc::new(|what, unit| progress::bar(what.to_string(), unit));
            let r = adaround::adaround(&model, calib, &o, Some(bars))?;
            if let Some(p) = &r.pruned {
                println!("{}", prune_line(&a.model, p));
            }
            println!(
                "quantized `{}`: {kind} post-training with AdaRound ({} layers, {} steps each, batch {}, lr {}, seed {}; \
                 bias correction on) in {:.1} s",
                a.model.display(),
                r.layers.len(),
                o.fit.iterations,
                o.fit.batch,
                o.fit.lr,
                o.fit.seed,
                r.seconds
            );
            for l in &r.layers {
                println!("  {l}");
            }
            (r.graph, r.pruned)
        }
    };
    // the output: QDQ ONNX before the optimizer, or the compiled artifact
    let bytes = if ext == "onnx" {
        let c = Compiler::new(PipelineOptions { opt_level: 1, ..PipelineOptions::default() })?;
        let g = c.optimize(graph)?;
        let bytes = export_qdq_with(&g, ExportOptions { int4_per_axis: weight_bits == 4 })?;
        files::write(&a.output, &bytes)?;
        bytes.len() as u64
    } else {
        let c = Compiler::new(PipelineOptions::default())?;
        let g = c.optimize(graph)?;
        Artifact::new(g, &a.model, &c)?.save(&a.output)?;
        files::size_of(&a.output)
    };
    let macs = pruned.map(|p| format!(", {} MACs per sample", p.after.macs)).unwrap_or_default();
    println!("wrote `{}` ({}): {kind} Q/DQ{macs}", a.output.display(), files::human_bytes(bytes));
    Ok(())
}

/// QAT (with pruning first when asked): prints its lines, writes `--report`, and returns the
/// converted Q/DQ graph and what pruning did.
fn qat(
    a: &Args,
    model: &qforge_ir::Graph,
    weight_bits: u32,
    prune: Option<PruneOptions>,
) -> Result<(qforge_ir::Graph, Option<PruneReport>)> {
    let x = crate::npy::read(&a.calib).with_context(|| format!("--calib `{}`", a.calib.display()))?;
    let labels = match &a.labels {
        Some(p) => Some(data::labels(&crate::npy::read(p)?).with_context(|| format!("--labels `{}`", p.display()))?),
        None => None,
    };
    let precision = match a.precision.unwrap_or(Precision::Fp32) {
        Precision::Fp32 => TrainPrecision::Fp32,
        Precision::Fp16 => TrainPrecision::Fp16,
        Precision::Bf16 => TrainPrecision::Bf16,
    };
    let (epochs, lr, temperature) = (a.epochs.unwrap_or(10), a.lr.unwrap_or(1e-4), a.kd_temperature.unwrap_or(4.0));
    let optimizer = a.optimizer.unwrap_or(Optim::Adam);
    let loss_scale = a.loss_scale.unwrap_or(LossScale::None);
    let o = FinetuneOptions {
        weight_bits,
        calib_method: a.calib_method,
        objective: Objective { temperature, ..Objective::seed() },
        train: TrainConfig {
            epochs,
            batch: a.batch,
            seed: a.seed,
            optimizer: match optimizer {
                Optim::Adam => OptimizerKind::adam(),
                Optim::Sgd => OptimizerKind::sgd_momentum(),
            },
            lr,
            precision,
            loss_scaling: loss_scale == LossScale::Dynamic,
            ..TrainConfig::default()
        },
        eval: EngineEvaluator::new(&PipelineOptions {
            engine: a.engine,
            threads: a.threads,
            ..PipelineOptions::default()
        }),
        prune,
    };
    let mut cal_bar = progress::bar("calibrating", "batches");
    let mut bar = progress::bar_with_status("fine-tuning", "steps");
    let f = finetune::finetune(model, &x, labels.clone(), &o, &mut *cal_bar, &mut |s| {
        let status = format!("loss {:.4}  scale {}  skipped {}", s.loss, s.loss_scale, s.skipped_total);
        bar(s.step + 1, s.total, &status);
    })?;
    if let Some(p) = &f.pruned {
        println!("{}", prune_line(&a.model, p));
    }
    let steps = &f.trained.steps;
    let first = steps.first().map_or(f32::NAN, |s| s.loss);
    let last = mean_tail(steps);
    let kind = if weight_bits == 4 { "W4A8" } else { "INT8" };
    let skipped = steps.iter().filter(|s| s.skipped).count();
    let objective = what(temperature, labels.is_some(), f.pruned.is_some());
    println!(
        "fine-tuned `{}`: {kind} QAT ({objective}), {epochs} epochs x {} steps in {:.1} s (median step {:.1} ms at batch {}); loss {first:.5} -> {last:.5} (mean of the last epoch), {skipped} step(s) skipped, final loss scale {}",
        a.model.display(),
        steps.len() / epochs.max(1),
        f.seconds,
        f.median_step_seconds() * 1e3,
        a.batch,
        f.trained.loss_scale
    );
    if let Some(r) = &a.report {
        let mut settings: Vec<(String, String)> = vec![
            ("model".into(), a.model.display().to_string()),
            ("samples".into(), x.shape().first().copied().unwrap_or(0).to_string()),
            ("quantization".into(), kind.into()),
            ("objective".into(), objective.clone()),
            ("precision".into(), format!("{precision:?}, loss scale {loss_scale:?}").to_lowercase()),
            ("optimizer".into(), format!("{optimizer:?}, lr {lr} (cosine), batch {}, seed {}", a.batch, a.seed)),
            ("epochs".into(), epochs.to_string()),
        ];
        let mut figures: Vec<(String, String)> = vec![];
        if let Some(p) = &f.pruned {
            settings.push(("pruning".into(), format!("{} of each conv's output channels, L2 norm", p.amount)));
            figures
                .push(("MACs per sample".into(), format!("{} -> {} ({})", p.before.macs, p.after.macs, reduction(p))));
            let params = change(p.before.params, p.after.params);
            figures.push(("parameters".into(), format!("{} -> {} ({params})", p.before.params, p.after.params)));
        }
        figures.extend([
            ("steps".into(), steps.len().to_string()),
            ("median step".into(), format!("{:.1} ms", f.median_step_seconds() * 1e3)),
            ("first loss".into(), format!("{first:.5}")),
            ("last epoch's mean loss".into(), format!("{last:.5}")),
            ("skipped steps".into(), skipped.to_string()),
            ("final loss scale".into(), f.trained.loss_scale.to_string()),
            ("output".into(), a.output.display().to_string()),
        ]);
        let name = a.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        files::write(r, finetune::report::html(&name, &settings, &figures, steps).as_bytes())?;
        println!("wrote `{}`", r.display());
    }
    Ok((f.graph, f.pruned))
}

fn what(temperature: f32, labels: bool, pruned: bool) -> String {
    let from = if pruned { "the unpruned FP32 model" } else { "FP32" };
    if labels {
        format!("0.1 CE + 0.9 KD from {from}, T = {temperature}")
    } else {
        format!("KD from {from}, T = {temperature}")
    }
}

/// The MAC reduction, `-51.9%`.
fn reduction(p: &PruneReport) -> String {
    change(p.before.macs, p.after.macs)
}

/// `after` against `before` in percent, `-51.9%`.
fn change(before: u64, after: u64) -> String {
    if before == 0 {
        return "none counted".into();
    }
    format!("{:+.1}%", (after as f64 - before as f64) * 100.0 / before as f64)
}

/// The one line saying what pruning did, and one per conv it left alone.
fn prune_line(model: &std::path::Path, p: &PruneReport) -> String {
    let before: usize = p.convs.iter().map(|c| c.before).sum();
    let after: usize = p.convs.iter().map(|c| c.after).sum();
    let mut s = format!(
        "pruned `{}`: {} of each conv's output channels by L2 norm, {before} -> {after} channels; MACs per sample {} -> {} ({}), parameters {} -> {} ({})",
        model.display(),
        p.amount,
        p.before.macs,
        p.after.macs,
        reduction(p),
        p.before.params,
        p.after.params,
        change(p.before.params, p.after.params)
    );
    for c in &p.convs {
        if let Outcome::Refused(why) = &c.outcome {
            s.push_str(&format!("\n  conv `{}` keeps its {} channels: {why}", c.name, c.before));
        }
    }
    s
}

/// The mean finite loss over the last epoch's steps.
fn mean_tail(steps: &[qforge_passes::train::StepInfo]) -> f32 {
    let Some(last) = steps.last() else { return f32::NAN };
    let tail: Vec<f32> = steps.iter().filter(|s| s.epoch == last.epoch && s.loss.is_finite()).map(|s| s.loss).collect();
    tail.iter().sum::<f32>() / tail.len().max(1) as f32
}
