//! `qforge bench MODEL [--batch 1,8] [--iters N] [--threads T] [--json] [PIPELINE]`.

use crate::bench::{BenchArgs, BenchReport};
use crate::options::PipelineOptions;
use anyhow::{bail, Result};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub struct Args {
    model: PathBuf,
    #[command(flatten)]
    args: BenchArgs,
    #[command(flatten)]
    pipeline: PipelineOptions,
}

pub fn run(a: Args) -> Result<()> {
    let t0 = Instant::now();
    let source = crate::artifact::Source::open(&a.model, &a.pipeline)?;
    let open_ms = t0.elapsed().as_secs_f64() * 1e3;
    // reading the inputs is not part of the compile time
    let data = super::run::bind_some_inputs(source.graph(), &a.args.input)?;
    for t in data.iter().flatten() {
        crate::data::check_finite(
            std::slice::from_ref(t),
            "--input",
            crate::data::NonFinite::strict(a.pipeline.strict),
        )?;
    }
    let t1 = Instant::now();
    let prepared = source.prepare(a.pipeline, super::compiler)?;
    let compile_ms = open_ms + t1.elapsed().as_secs_f64() * 1e3;
    let report = crate::bench::measure(&a.model, &prepared.compiler, &prepared.exe, &a.args, &data, compile_ms)?;
    if a.args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_text(&report);
    }
    if let Some(budget) = a.args.max_latency_ms {
        if report.median_ms > budget {
            bail!(
                "latency budget missed: median {:.2} ms at batch {} exceeds --max-latency-ms {budget}",
                report.median_ms,
                report.batch
            );
        }
    }
    Ok(())
}

fn print_text(r: &BenchReport) {
    println!("{} ({:?}, {} thread(s); compile {:.0} ms)", r.model, r.engine, r.threads, r.compile_ms);
    if !r.kernels.is_empty() {
        let k: Vec<String> = r.kernels.iter().map(|(a, b)| format!("{a}={b}")).collect();
        println!("microkernels: {}", k.join(", "));
    }
    if !r.host_ops.is_empty() {
        let h: Vec<String> = r.host_ops.iter().map(|(o, n)| format!("{o} x{n}")).collect();
        println!("ops run by the interpreter: {}", h.join(", "));
    }
    println!(
        "{:>6} {:>10} {:>10} {:>10} {:>12} {:>12}",
        "batch", "median ms", "p99 ms", "min ms", "samples/s", "arena MiB"
    );
    for b in &r.sweep {
        println!(
            "{:>6} {:>10.3} {:>10.3} {:>10.3} {:>12.1} {:>12}",
            b.batch,
            b.median_ms,
            b.p99_ms,
            b.min_ms,
            b.throughput,
            b.arena_bytes.map_or("-".into(), |a| format!("{:.2}", a as f64 / (1 << 20) as f64))
        );
    }
    if r.sweep.len() > 1 {
        println!("best throughput at batch {}", r.best_batch);
    }
    if r.macs > 0 {
        println!("{:.3} GMAC per sample, {:.1} GMAC/s at batch {}", r.macs as f64 / 1e9, r.gmacs_per_s, r.batch);
    }
    if !r.profile.is_empty() {
        println!("per-kernel time (batch {}, mean of the timed runs):", r.batch);
        for k in &r.profile {
            println!(
                "  {:>8.3} ms {:>5.1}% {:>8} {}  {}",
                k.ms,
                k.share * 100.0,
                k.gmacs.map_or(String::new(), |g| format!("{g:.1} G/s")),
                k.name,
                k.what
            );
        }
    }
}
