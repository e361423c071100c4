//! The `qforge` command line (DESIGN.md, "Command line"): one file per subcommand, each with its
//! arguments and its `run`. Commands are the only code that prints: the library returns data,
//! and a command turns it into text, JSON or a file, plus one line saying what was written.

pub mod bench;
pub mod compile;
pub mod demo;
pub mod diff;
pub mod eval;
pub mod finetune;
pub mod graph;
pub mod inspect;
pub mod pipeline;
pub mod quantize;
pub mod report;
pub mod run;
pub mod sensitivity;
pub mod tune;

use crate::compiler::Compiler;
use crate::options::PipelineOptions;
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::sync::Arc;

/// qforge: compile trained models to INT8, FP16 and BF16 for edge deployment.
#[derive(Debug, Parser)]
#[command(name = "qforge", version, about, propagate_version = true)]
pub struct Cli {
    /// Log what each stage does on stderr: -v info (import, passes, calibration, JIT, artifacts),
    /// -vv debug, -vvv trace. RUST_LOG, when set, overrides it (e.g. RUST_LOG=qforge=debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The log level `-v` asks for: warn by default, then info, debug and trace.
    pub fn log_level(&self) -> &'static str {
        match self.verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the graph after the pipeline: inputs, outputs, op counts, parameters.
    Inspect(inspect::Args),
    /// Run the model on .npy inputs and write its outputs as .npy.
    Run(run::Args),
    /// Top-1 accuracy on a labelled set.
    Eval(eval::Args),
    /// Compile to a deployable artifact (`-o OUT.qfa`: the optimized graph with its weights, which
    /// run, eval, bench and inspect take as MODEL); with `--report`, print what every pass did and
    /// the fusion report.
    Compile(compile::Args),
    /// Write a QDQ ONNX model that other runtimes run: static INT8 (or --quantize dynamic) with
    /// the pipeline's quantization options; needs --calib for int8.
    Quantize(quantize::Args),
    /// Measure latency and throughput: warm-ups, timed runs, median/p99, a batch sweep, a
    /// per-kernel breakdown, and a latency budget.
    Bench(bench::Args),
    /// Quantize one layer at a time and rank the layers by output SQNR (and accuracy with labels).
    Sensitivity(sensitivity::Args),
    /// Draw the IR after the pipeline (or after one pass): DOT, or SVG through Graphviz `dot`.
    Graph(graph::Args),
    /// Write one self-contained HTML report: summary, per-node precision, fusion, per-layer
    /// sensitivity, per-kernel latency, size and accuracy against fp32; needs --calib.
    Report(report::Args),
    /// Compare two compiled artifacts node by node: changed quantization parameters and dtypes,
    /// nodes only in one of them, differing header fields.
    Diff(diff::Args),
    /// The whole pipeline on the bundled digits model.
    Demo,
    /// Run several models as one pipeline (PIPELINE.toml: stages with precision policies,
    /// budgets and inputs), pipelined with a thread per stage; latency, throughput and memory
    /// against the budgets, and the cascaded error of each stage's precision.
    Pipeline(pipeline::Args),
    /// Search per-layer precision policies for the most accurate one within a latency budget:
    /// the accuracy-latency Pareto front, the chosen qconfig (-o), an HTML plot (--report).
    Tune(tune::Args),
    /// Evaluate one candidate of a `tune --emit-jobs` list and write its result JSON.
    TuneJob(tune::JobArgs),
    /// Quantization-aware fine-tuning on the calibration data (distillation from the model's own
    /// FP32 outputs, cross-entropy with --labels), written as QDQ ONNX or a compiled artifact.
    Finetune(finetune::Args),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Run(a) => run::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Compile(a) => compile::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Sensitivity(a) => sensitivity::run(a),
        Command::Graph(a) => graph::run(a),
        Command::Report(a) => report::run(a),
        Command::Diff(a) => diff::run(a),
        Command::Demo => demo::run(),
        Command::Pipeline(a) => pipeline::run(a),
        Command::Tune(a) => tune::run(a),
        Command::TuneJob(a) => tune::run_job(a),
        Command::Finetune(a) => finetune::run(a),
    }
}

/// The compiler for a command: the options resolved, with progress bars on a terminal.
pub fn compiler(opts: PipelineOptions) -> Result<Compiler> {
    Ok(Compiler::new(opts)?.with_progress(Arc::new(|what, unit| crate::progress::bar(what.to_string(), unit))))
}
