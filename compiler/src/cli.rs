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
    Inspect {
        /// An .onnx model or a .qir IR text file.
        model: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Print the IR text (large constants summarized).
        #[arg(long, conflicts_with = "json")]
        ir: bool,
        /// Print the precision report: the profile, each node's dtype and the rule that chose it,
        /// cast counts and channel padding.
        #[arg(long, conflicts_with = "json")]
        precision_report: bool,
        /// List which nodes static quantization quantizes and why the others stay as they are
        /// (after batch-norm folding and the qconfig policy).
        #[arg(long)]
        quantizable: bool,
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
    /// Compile to a deployable artifact (`-o OUT.qfa`: the optimized graph with its weights, which
    /// run, eval, bench and inspect take as MODEL); with `--report`, print what every pass did and
    /// the fusion report.
    Compile {
        model: PathBuf,
        #[arg(short, long, value_name = "OUT.qfa")]
        output: Option<PathBuf>,
        /// Print each pass's report (time, counters, notes) and the fusion report: every Q/DQ
        /// pair not folded into an integer kernel, with the reason.
        #[arg(long)]
        report: bool,
        /// Write the IR text (large constants summarized) after this pass, or after every pass.
        #[arg(long, value_name = "PASS|all", requires = "dump_dir")]
        dump_after: Option<String>,
        /// Where `--dump-after` writes, one `NN-PASS.qir` file per dump.
        #[arg(long, value_name = "DIR", requires = "dump_after")]
        dump_dir: Option<PathBuf>,
        #[command(flatten)]
        pipeline: PipelineOptions,
    },
    /// Write a QDQ ONNX model that other runtimes run: static INT8 (or --quantize dynamic) with
    /// the pipeline's quantization options; needs --calib for int8.
    Quantize {
        model: PathBuf,
        #[arg(short, long, value_name = "OUT.onnx")]
        output: PathBuf,
        #[command(flatten)]
        pipeline: PipelineOptions,
    },
    /// Measure latency and throughput: warm-ups, timed runs, median/p99, a batch sweep, a
    /// per-kernel breakdown, and a latency budget.
    Bench {
        model: PathBuf,
        #[command(flatten)]
        args: crate::bench::BenchArgs,
        #[command(flatten)]
        pipeline: PipelineOptions,
    },
    /// Quantize one layer at a time and rank the layers by output SQNR (and accuracy with labels).
    Sensitivity {
        model: PathBuf,
        /// Evaluation inputs (default: the calibration set).
        #[arg(long, value_name = "X.npy")]
        input: Option<PathBuf>,
        /// Labels of the evaluation inputs: adds each layer's top-1 accuracy.
        #[arg(long, value_name = "Y.npy")]
        labels: Option<PathBuf>,
        /// Keep the most sensitive layers in float until the top-1 drop is at most D (a fraction,
        /// 0.005 = half a point) and write the resulting qconfig to --output.
        #[arg(long, value_name = "D", requires_all = ["labels", "output"])]
        max_accuracy_drop: Option<f64>,
        /// Where --max-accuracy-drop (or --min-sqnr, which needs no labels) writes its qconfig.
        #[arg(short, long, value_name = "QCONFIG.toml")]
        output: Option<PathBuf>,
        /// Samples per run.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        pipeline: PipelineOptions,
    },
    /// Draw the IR after the pipeline (or after one pass): DOT, or SVG through Graphviz `dot`.
    Graph {
        model: PathBuf,
        /// `.svg` (needs Graphviz `dot`) or `.dot`; without it, DOT on stdout.
        #[arg(short, long, value_name = "OUT.svg|OUT.dot")]
        output: Option<PathBuf>,
        /// Draw the graph right after this pass (its first run) instead of after the pipeline.
        #[arg(long, value_name = "PASS")]
        after: Option<String>,
        #[command(flatten)]
        pipeline: PipelineOptions,
    },
    /// Write one self-contained HTML report: summary, per-node precision, fusion, per-layer
    /// sensitivity, per-kernel latency, size and accuracy against fp32; needs --calib.
    Report {
        model: PathBuf,
        #[command(flatten)]
        args: crate::report_html::ReportArgs,
        #[command(flatten)]
        pipeline: PipelineOptions,
    },
    /// Compare two compiled artifacts node by node: changed quantization parameters and dtypes,
    /// nodes only in one of them, differing header fields.
    Diff {
        a: PathBuf,
        b: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The whole pipeline on the bundled digits model.
    Demo,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect { model, json, quantizable: true, pipeline, .. } => {
            crate::calibrate::inspect_quantizable(&model, json, pipeline)
        }
        Command::Inspect { model, json, ir, precision_report: true, pipeline, .. } if !json && !ir => {
            precision_report(&model, pipeline)
        }
        Command::Inspect { model, json, ir, pipeline, .. } => inspect(&model, json, ir, pipeline),
        Command::Run { model, input, output, pipeline } => run_model(&model, &input, &output, pipeline),
        Command::Eval { model, input, labels, batch, json, pipeline } => {
            eval(&model, &input, &labels, batch, json, pipeline)
        }
        Command::Compile { model, output, report, dump_after, dump_dir, pipeline } => {
            let dump = dump_after.zip(dump_dir);
            compile(&model, output.as_deref(), report, dump, pipeline)
        }
        Command::Quantize { model, output, pipeline } => crate::calibrate::quantize_to_onnx(&model, &output, pipeline),
        Command::Bench { model, args, pipeline } => crate::bench::run(&model, &args, pipeline),
        Command::Sensitivity { model, input, labels, max_accuracy_drop, output, batch, json, pipeline } => {
            let args = crate::calibrate::SensitivityArgs { input, labels, max_accuracy_drop, output, batch, json };
            crate::calibrate::sensitivity(&model, &args, pipeline)
        }
        Command::Graph { model, output, after, pipeline } => {
            crate::graph_dot::run(&model, output.as_deref(), after.as_deref(), pipeline)
        }
        Command::Report { model, args, pipeline } => crate::report_html::run(&model, &args, pipeline),
        Command::Diff { a, b, json } => crate::artifact::diff::run(&a, &b, json),
        Command::Demo => crate::demo::run(),
    }
}

/// `compile`: runs the pipeline; `--report` prints the pass reports and the fusion report;
/// `--dump-after PASS|all --dump-dir DIR` writes the IR text after the named pass (or every pass).
fn compile(
    model: &Path,
    output: Option<&Path>,
    report: bool,
    dump: Option<(String, PathBuf)>,
    pipeline: PipelineOptions,
) -> Result<()> {
    if let Some(out) = output.filter(|o| !crate::artifact::is_artifact(o)) {
        let out = out.display();
        bail!("-o `{out}`: artifacts are `.qfa` files (run, eval, bench and inspect know them by that extension)");
    }
    if output.is_none() && !report && dump.is_none() {
        bail!("`qforge compile` without -o only reports: give -o OUT.qfa, --report or --dump-after");
    }
    let compiler = Compiler::new(pipeline)?;
    if let Some((_, dir)) = &dump {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    }
    let mut ran: Vec<String> = vec![];
    let mut failed: Option<anyhow::Error> = None;
    let mut after = |name: &str, g: &qforge_ir::Graph| {
        ran.push(name.to_string());
        let k = ran.len();
        let Some((pass, dir)) = &dump else { return };
        if failed.is_some() || (pass != "all" && pass != name) {
            return;
        }
        let path = dir.join(format!("{k:02}-{name}.qir"));
        let written = qforge_ir::text::print_default(g)
            .map_err(anyhow::Error::from)
            .and_then(|t| std::fs::write(&path, t).with_context(|| format!("cannot write `{}`", path.display())));
        if let Err(e) = written {
            failed = Some(e);
        }
    };
    let t_import = Instant::now();
    let loaded = load_model(model)?;
    let import_time = t_import.elapsed();
    let t_passes = Instant::now();
    let (g, reports) = compiler.optimize_reported(loaded, &mut after)?;
    let passes_time = t_passes.elapsed();
    if let Some(e) = failed {
        return Err(e);
    }
    if let Some((pass, _)) = &dump {
        if pass != "all" && !ran.contains(pass) {
            bail!("--dump-after {pass}: no such pass ran (the passes: {}; or `all`)", ran.join(", "));
        }
    }
    if let Some(out) = output {
        crate::artifact::Artifact::new(g.clone(), model, &compiler)?.save(out)?;
    }
    if !report {
        return Ok(());
    }
    for r in &reports {
        println!(
            "pass {}: {:.1} ms, {}",
            r.pass,
            r.time.as_secs_f64() * 1e3,
            if r.changed { "changed the graph" } else { "no change" }
        );
        for (k, v) in &r.stats {
            println!("  {k}: {v}");
        }
        for n in &r.notes {
            println!("  {n}");
        }
    }
    let unfused = qforge_passes::report::fusion_report(&g, compiler.profile().dtypes.int8);
    if unfused.is_empty() {
        println!("fusion report: every quantize/dequantize is in an integer kernel or at the graph's edge");
    } else {
        println!("fusion report: {} leftover(s)", unfused.len());
        for u in &unfused {
            println!("  {u}");
        }
    }
    crate::bench::jit_report(&compiler, &g, import_time, passes_time)
}

fn inspect(model: &Path, json: bool, ir: bool, pipeline: PipelineOptions) -> Result<()> {
    // an artifact: its stored graph, and where it came from
    let (g, header) = if crate::artifact::is_artifact(model) {
        let a = crate::artifact::load_for(model, &pipeline)?;
        (a.graph, Some(a.header))
    } else {
        (Compiler::new(pipeline)?.optimize(load_model(model)?)?, None)
    };
    if ir {
        print!("{}", qforge_ir::text::print_default(&g)?);
        return Ok(());
    }
    let s = Summary::of(&g)?;
    if json {
        let mut v = serde_json::to_value(&s)?;
        if let Some(h) = &header {
            v["artifact"] = serde_json::to_value(h)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", s.to_text());
        if let Some(h) = &header {
            print!("{}", h.to_text());
        }
    }
    Ok(())
}

/// `inspect --precision-report`: the profile, then the precision and padding passes' reports.
fn precision_report(model: &Path, pipeline: PipelineOptions) -> Result<()> {
    let compiler = Compiler::new(pipeline)?;
    let (_, reports) = compiler.optimize_reported(load_model(model)?, &mut |_, _| {})?;
    print!("profile {}", compiler.profile().describe());
    let mut any = false;
    for r in reports.iter().filter(|r| r.pass == "precision" || r.pass == "align-channels") {
        any = true;
        println!("pass {}:", r.pass);
        for (k, v) in &r.stats {
            println!("  {k}: {v}");
        }
        for n in &r.notes {
            println!("  {n}");
        }
    }
    if !any {
        println!("no precision assignment (--precision fp32) and no channel padding");
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
    let exe = crate::artifact::prepare(model, pipeline)?.exe;
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
    let prepared = crate::artifact::prepare(model, pipeline.clone())?;
    let exe = prepared.exe;
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
    // quantized: the float model's accuracy beside it (not for an artifact: no source model)
    let fp32 = match prepared.artifact {
        Some(_) => None,
        None => crate::calibrate::fp32_top1(&pipeline, model, &x, &y, batch)?,
    };
    if json {
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
