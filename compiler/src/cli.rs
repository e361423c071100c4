//! The `qforge` command line (DESIGN.md, "Command line"): argument parsing and the commands.

use crate::data;
use crate::driver::{load_model, Compiler};
use crate::pipeline::PipelineOptions;
use crate::summary::Summary;
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use qforge_ir::Tensor;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// qforge: compile trained models to INT8, FP16 and BF16 for edge deployment.
#[derive(Debug, Parser)]
#[command(name = "qforge", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the graph after the pipeline: inputs, outputs, op counts, parameters.
    Inspect {
        /// An .onnx model or a .qir IR text file.
        model: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Print the IR text (large constants summarized).
        #[arg(long, conflicts_with = "json")]
        ir: bool,
        #[command(flatten)]
        pipeline: PipelineOptions,
    },
    /// Run the model on .npy inputs and write its outputs as .npy.
    Run {
        model: PathBuf,
        /// An input: `X.npy` for the next graph input in order, or `NAME=X.npy`.
        #[arg(long, required = true, value_name = "[NAME=]X.npy")]
        input: Vec<String>,
        /// Where to write the outputs, one per graph output in order.
        #[arg(long, required = true, value_name = "OUT.npy")]
        output: Vec<PathBuf>,
        #[command(flatten)]
        pipeline: PipelineOptions,
    },
    /// Top-1 accuracy on a labelled set.
    Eval {
        model: PathBuf,
        /// Inputs, batch on axis 0.
        #[arg(long, value_name = "X.npy")]
        input: PathBuf,
        /// Integer labels, one per sample.
        #[arg(long, value_name = "Y.npy")]
        labels: PathBuf,
        /// Samples per run.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        pipeline: PipelineOptions,
    },
    /// Compile to a deployable artifact (not implemented yet).
    Compile {
        model: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        pipeline: PipelineOptions,
    },
    /// Write a QDQ ONNX model that other runtimes run (not implemented yet).
    Quantize {
        model: PathBuf,
        #[arg(long)]
        calib: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Measure latency (not implemented yet).
    Bench {
        model: PathBuf,
        #[command(flatten)]
        pipeline: PipelineOptions,
    },
    /// The whole pipeline on the bundled digits model.
    Demo,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect { model, json, ir, pipeline } => inspect(&model, json, ir, pipeline),
        Command::Run { model, input, output, pipeline } => run_model(&model, &input, &output, pipeline),
        Command::Eval { model, input, labels, batch, json, pipeline } => {
            eval(&model, &input, &labels, batch, json, pipeline)
        }
        Command::Compile { .. } => bail!("`qforge compile` is not implemented yet (compiled artifacts have not landed)"),
        Command::Quantize { .. } => bail!("`qforge quantize` is not implemented yet (post-training quantization has not landed)"),
        Command::Bench { .. } => bail!("`qforge bench` is not implemented yet (the JIT and its benchmark have not landed)"),
        Command::Demo => crate::demo::run(),
    }
}

fn inspect(model: &Path, json: bool, ir: bool, pipeline: PipelineOptions) -> Result<()> {
    let compiler = Compiler::new(pipeline)?;
    let g = compiler.optimize(load_model(model)?)?;
    if ir {
        print!("{}", qforge_ir::text::print_default(&g)?);
        return Ok(());
    }
    let s = Summary::of(&g)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", s.to_text());
    }
    Ok(())
}

/// Pairs `[NAME=]path` arguments with graph inputs: named ones by name, the rest in order.
fn bind_inputs(g: &qforge_ir::Graph, args: &[String]) -> Result<Vec<Tensor>> {
    let names: Vec<String> = g.inputs().iter().map(|&i| g.node(i).name.clone()).collect();
    let mut slots: Vec<Option<Tensor>> = vec![None; names.len()];
    let mut next = 0;
    for a in args {
        let (slot, path) = match a.split_once('=') {
            Some((name, path)) if !Path::new(a).exists() => {
                let i = names
                    .iter()
                    .position(|n| n == name)
                    .with_context(|| format!("the model has no input `{name}` (inputs: {})", names.join(", ")))?;
                (i, path)
            }
            _ => {
                while next < slots.len() && slots[next].is_some() {
                    next += 1;
                }
                if next >= slots.len() {
                    bail!("more --input files than the model's {} inputs", names.len());
                }
                (next, a.as_str())
            }
        };
        if slots[slot].is_some() {
            bail!("input `{}` given twice", names[slot]);
        }
        slots[slot] = Some(crate::npy::read(Path::new(path))?);
    }
    slots
        .into_iter()
        .zip(&names)
        .map(|(t, n)| t.with_context(|| format!("no --input for the model's input `{n}`")))
        .collect()
}

fn run_model(model: &Path, inputs: &[String], outputs: &[PathBuf], pipeline: PipelineOptions) -> Result<()> {
    let exe = Compiler::new(pipeline)?.compile(load_model(model)?)?;
    let x = bind_inputs(exe.graph(), inputs)?;
    let n_out = exe.graph().outputs().len();
    if outputs.len() > n_out {
        bail!("{} --output files for the model's {n_out} outputs", outputs.len());
    }
    let ys = exe.run(&x)?;
    for (y, path) in ys.iter().zip(outputs) {
        crate::npy::write(path, y)?;
    }
    Ok(())
}

fn eval(model: &Path, input: &Path, labels: &Path, batch: usize, json: bool, pipeline: PipelineOptions) -> Result<()> {
    let exe = Compiler::new(pipeline)?.compile(load_model(model)?)?;
    if exe.graph().inputs().len() != 1 {
        bail!("eval needs a model with one input; this one has {}", exe.graph().inputs().len());
    }
    let x = crate::npy::read(input)?;
    let y = data::labels(&crate::npy::read(labels)?).with_context(|| format!("`{}`", labels.display()))?;
    if x.shape().first() != Some(&y.len()) {
        bail!("{} inputs but {} labels", x.shape().first().copied().unwrap_or(0), y.len());
    }
    let t = Instant::now();
    let scores = exe.run_batched(&x, batch)?;
    let secs = t.elapsed().as_secs_f64();
    let pred = data::argmax_rows(&scores)?;
    let acc = data::top1(&pred, &y)?;
    let correct = pred.iter().zip(&y).filter(|(p, l)| p == l).count();
    if json {
        let v = serde_json::json!({
            "top1": acc,
            "samples": y.len(),
            "correct": correct,
            "engine": exe.engine(),
            "seconds": secs,
        });
        println!("{v}");
    } else {
        println!("top-1 {:.2}% ({correct}/{}) in {:.2} s", acc * 100.0, y.len(), secs);
    }
    Ok(())
}
