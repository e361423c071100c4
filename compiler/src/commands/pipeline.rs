//! `qforge pipeline PIPELINE.toml [--frames N] [--sequential] [--report out.html] [--cascade]`.

use crate::files;
use crate::options::{parse_count, Engine, PipelineOptions};
use crate::pipeline::report::RunReport;
use crate::pipeline::{cascade, runner, Cascade, Keep, Pipeline};
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pipeline: stages (models with precision policies, budgets and inputs), inputs, budget.
    pipeline: PathBuf,
    /// Frames to time (the sample frames cycled).
    #[arg(long, default_value_t = 200, value_parser = parse_count)]
    frames: usize,
    /// Untimed frames first, run one after another.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Run the frames one after another on one thread instead of pipelined with a thread per stage.
    #[arg(long)]
    sequential: bool,
    /// Also run the other mode on the same frames and print its frames per second beside.
    #[arg(long)]
    compare: bool,
    /// Cascaded error: each stage at its precision (the others in FP32) against the FP32
    /// pipeline, at every output downstream of it.
    #[arg(long)]
    cascade: bool,
    /// Write an HTML report (with the cascaded-error table).
    #[arg(long, value_name = "OUT.html")]
    report: Option<PathBuf>,
    /// Pipelined: offer frames at this rate (frames per second, a camera's) instead of as fast as
    /// the pipeline takes them.
    #[arg(long, value_name = "FPS", value_parser = parse_rate, conflicts_with = "sequential")]
    rate: Option<f64>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Execution engine of every stage.
    #[arg(long, value_enum, default_value_t = Engine::Jit)]
    engine: Engine,
    /// JIT threads per kernel within each stage.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
}

pub fn run(a: Args) -> Result<()> {
    if let Some(r) = &a.report {
        files::check_output(r, "--report")?;
    }
    let base = PipelineOptions { engine: a.engine, threads: a.threads, ..PipelineOptions::default() };
    let p = Pipeline::load(&a.pipeline, &base, &super::compiler)?;
    let memory = p.memory()?;
    p.run_sequential(p.stages(), a.warmup, Keep::Nothing)?;
    let pipelined = !a.sequential;
    let run_mode = |pipelined: bool| {
        if pipelined {
            p.run_pipelined(a.frames, a.rate, Keep::Nothing)
        } else {
            p.run_sequential(p.stages(), a.frames, Keep::Nothing)
        }
    };
    let run = run_mode(pipelined)?;
    let other = if a.compare { Some(run_mode(!pipelined)?) } else { None };
    let mut report = RunReport::new(&p, &run, pipelined, a.warmup, &memory, runner::peak_rss_bytes());
    if let Some(o) = &other {
        report.other_fps = Some((if pipelined { "sequential" } else { "pipelined" }.to_string(), o.fps()));
    }
    let study =
        if a.cascade || a.report.is_some() { Some(cascade(&p, &p.fp32_stages(&super::compiler)?)?) } else { None };
    if a.json {
        let v = serde_json::json!({ "run": &report, "cascade": &study });
        println!("{}", serde_json::to_string(&v)?);
    } else {
        print_text(&p, &report, study.as_ref());
    }
    if let Some(path) = &a.report {
        files::write(path, report.to_html(&p, study.as_ref()).as_bytes())?;
        if !a.json {
            println!("wrote `{}` ({})", path.display(), files::human_bytes(files::size_of(path)));
        }
    }
    if let Some(f) = report.failures() {
        bail!("{f}");
    }
    Ok(())
}

fn print_text(p: &Pipeline, r: &RunReport, cascade: Option<&Cascade>) {
    println!(
        "pipeline `{}` (`{}`): {} stages, {}, {} frames after {} warm-up",
        r.pipeline,
        p.config.file,
        r.stages.len(),
        r.mode,
        r.frames,
        r.warmup
    );
    for &s in &p.plan.order {
        println!("  {:<12} {}", p.config.stages[s].name, crate::pipeline::report::sources(p, s));
    }
    let mib = |b: usize| format!("{:.2}", b as f64 / (1 << 20) as f64);
    println!(
        "{:<14} {:<6} {:>9} {:>9} {:>9} {:>10} {:>10} {:>11}  result",
        "stage", "prec", "mean ms", "p99 ms", "max ms", "budget ms", "arena MiB", "weights MiB"
    );
    for s in &r.stages {
        println!(
            "{:<14} {:<6} {:>9.3} {:>9.3} {:>9.3} {:>10} {:>10} {:>11}  {}",
            s.name,
            s.precision,
            s.latency.mean_ms,
            s.latency.p99_ms,
            s.latency.max_ms,
            s.budget_ms.map_or("-".into(), |b| b.to_string()),
            s.memory.arena_bytes.map_or("-".into(), mib),
            mib(s.memory.weight_bytes),
            match s.pass {
                Some(true) => "pass",
                Some(false) => "FAIL",
                None => "-",
            }
        );
    }
    let e = &r.end_to_end;
    println!(
        "{:<14} {:<6} {:>9.3} {:>9.3} {:>9.3} {:>10}",
        "end to end",
        "",
        e.mean_ms,
        e.p99_ms,
        e.max_ms,
        p.config.budget.latency_ms.map_or("-".into(), |b| b.to_string())
    );
    let other =
        r.other_fps.as_ref().map_or(String::new(), |(m, f)| format!(" ({m}: {f:.1} frames/s; {:.2}x)", r.fps / f));
    println!(
        "{:.1} frames/s{other}; process peak RSS {}",
        r.fps,
        r.peak_rss_bytes.map_or("unknown".into(), |b| format!("{} MiB", mib(b as usize)))
    );
    println!(
        "(stage: one run of its compiled model; end to end: first stage taking the frame to its last output, queueing between stages included; arena: \
         the JIT program's intermediate tensors; peak RSS: the process's VmHWM, compilation included)"
    );
    for c in &r.checks {
        println!("budget {}: {} against {}: {}", c.what, c.measured, c.budget, if c.pass { "pass" } else { "FAIL" });
    }
    if let Some(c) = cascade {
        println!("cascaded error against the FP32 pipeline ({} frames):", c.frames);
        print!("{}", c.table());
    }
}

/// `--rate`: a positive number of frames per second.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("`{s}` is not a positive number of frames per second")),
    }
}
