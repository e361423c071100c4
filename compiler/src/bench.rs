//! `qforge bench`: latency and throughput of a compiled model, measured the way
//! `../shared/bench/ort_latency.py` measures ONNX Runtime (warm-ups, then timed runs of one
//! inference each), a batch sweep that picks the best throughput, a per-kernel time breakdown,
//! and a latency budget that fails the command when missed.

use crate::driver::Compiler;
use crate::pipeline::{Engine, PipelineOptions};
use anyhow::{bail, Context, Result};
use qforge_ir::{DType, Dim, Graph, Tensor};
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Arguments of `qforge bench` besides the pipeline.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Batch sizes to measure (comma-separated); the best throughput is reported as the choice.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub batch: Vec<usize>,
    /// Timed runs per batch size.
    #[arg(long, default_value_t = 30)]
    pub iters: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Input data (.npy); its first rows are used. Default: a fixed pseudo-random normal input.
    #[arg(long, value_name = "X.npy")]
    pub input: Option<PathBuf>,
    /// Per-kernel time breakdown (JIT), averaged over the timed runs of the first batch size.
    #[arg(long)]
    pub profile_kernels: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Exit non-zero when the median latency of the first batch size exceeds this budget.
    #[arg(long, value_name = "MS")]
    pub max_latency_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
struct BatchResult {
    batch: usize,
    median_ms: f64,
    p99_ms: f64,
    min_ms: f64,
    /// Samples per second at the median latency.
    throughput: f64,
    /// Arena bytes of the compiled program (JIT) and the sum of its intermediate tensors.
    arena_bytes: Option<usize>,
    intermediate_bytes: Option<usize>,
    codegen_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
struct KernelTime {
    name: String,
    what: String,
    ms: f64,
    share: f64,
    gmacs: Option<f64>,
}

#[derive(Debug, Serialize)]
struct BenchReport {
    model: String,
    engine: Engine,
    threads: usize,
    kernels: Vec<(String, String)>,
    /// The first batch size's figures at the top level (the keys scripts rely on).
    batch: usize,
    median_ms: f64,
    p99_ms: f64,
    throughput: f64,
    compile_ms: f64,
    sweep: Vec<BatchResult>,
    best_batch: usize,
    host_ops: Vec<(String, usize)>,
    profile: Vec<KernelTime>,
    /// Multiply-accumulates per sample and the achieved rate at the first batch size.
    macs: u64,
    gmacs_per_s: f64,
}

/// A deterministic standard-normal input of `shape` (Box-Muller over a xorshift generator).
fn random_input(dtype: DType, shape: Vec<usize>) -> Result<Tensor> {
    if dtype != DType::F32 {
        bail!("bench generates f32 inputs only; give --input for a {} input", dtype.name());
    }
    let n: usize = shape.iter().product();
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let v = (0..n)
        .map(|_| {
            let (u, w) = (next(), next());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * w).cos()) as f32
        })
        .collect();
    Ok(Tensor::from_f32(shape, v))
}

fn inputs_for(g: &Graph, batch: usize, data: Option<&Tensor>) -> Result<Vec<Tensor>> {
    let mut out = Vec::new();
    for (i, &id) in g.inputs().iter().enumerate() {
        let ty = &g.node(id).outputs[0];
        if i == 0 {
            if let Some(x) = data {
                let n = x.shape().first().copied().unwrap_or(0);
                if n < batch {
                    bail!("--input has {n} rows, fewer than the batch of {batch}");
                }
                out.push(crate::data::slice_batch(x, 0, batch)?);
                continue;
            }
        }
        let shape: Vec<usize> = ty
            .shape
            .dims()
            .iter()
            .enumerate()
            .map(|(k, d)| match d {
                Dim::Fixed(n) => Ok(*n),
                Dim::Sym(_) if k == 0 => Ok(batch),
                Dim::Sym(s) => bail!("input `{}` has the symbolic dim `{s}`; give --input", g.node(id).name),
            })
            .collect::<Result<_>>()?;
        out.push(random_input(ty.dtype, shape)?);
    }
    Ok(out)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((p * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)]
}

/// `qforge bench MODEL`.
pub fn run(model: &std::path::Path, args: &BenchArgs, pipeline: PipelineOptions) -> Result<()> {
    if args.iters == 0 {
        bail!("--iters must be at least 1");
    }
    if args.batch.is_empty() || args.batch.contains(&0) {
        bail!("--batch sizes must be at least 1");
    }
    let t0 = Instant::now();
    let crate::artifact::Prepared { compiler, exe, .. } = crate::artifact::prepare(model, pipeline)?;
    let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
    tracing::info!("bench: model ready in {compile_ms:.1} ms; batch sizes {:?}", args.batch);
    let data = match &args.input {
        Some(p) => Some(crate::npy::read(p).with_context(|| format!("`{}`", p.display()))?),
        None => None,
    };
    let threads = compiler.options().threads as usize;
    let mut sweep = Vec::new();
    let mut profile = Vec::new();
    let mut host_ops = Vec::new();
    let mut kernels = Vec::new();
    let mut macs_per_sample = 0u64;
    for (bi, &batch) in args.batch.iter().enumerate() {
        let inputs = inputs_for(exe.graph(), batch, data.as_ref())?;
        let (mut arena, mut inter, mut codegen_ms) = (None, None, None);
        let program = match exe.jit() {
            Some(j) => {
                let t = Instant::now();
                let p = j.program(&inputs)?;
                codegen_ms = Some(t.elapsed().as_secs_f64() * 1e3);
                arena = Some(p.report.arena_bytes);
                inter = Some(p.report.intermediate_bytes);
                if bi == 0 {
                    host_ops = p.report.host_ops.clone();
                    kernels = p.report.microkernels.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
                    macs_per_sample = p.report.steps.iter().map(|s| s.macs).sum::<u64>() / batch as u64;
                }
                Some(p)
            }
            None => None,
        };
        tracing::info!("bench batch {batch}: {} warm-up and {} timed runs", args.warmup, args.iters);
        // one bar per batch size over its warm-ups and timed runs (updated outside the timed span)
        let runs = args.warmup + args.iters;
        let mut bar = crate::progress::bar(format!("batch {batch}"), "runs");
        for k in 0..args.warmup {
            exe.run(&inputs)?;
            bar(k + 1, runs);
        }
        let mut times = Vec::with_capacity(args.iters);
        let mut step_times: Vec<Duration> = Vec::new();
        for k in 0..args.iters {
            bar(args.warmup + k, runs);
            let t = Instant::now();
            match (&program, args.profile_kernels && bi == 0) {
                (Some(p), true) => {
                    p.run(&inputs, Some(&mut step_times))?;
                }
                (Some(p), false) => {
                    p.run(&inputs, None)?;
                }
                (None, _) => {
                    exe.run(&inputs)?;
                }
            }
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        bar(runs, runs);
        times.sort_by(|a, b| a.total_cmp(b));
        let median = percentile(&times, 0.5);
        tracing::debug!(
            "bench batch {batch}: median {median:.3} ms, min {:.3} ms, max {:.3} ms",
            times[0],
            times[times.len() - 1]
        );
        sweep.push(BatchResult {
            batch,
            median_ms: median,
            p99_ms: percentile(&times, 0.99),
            min_ms: times[0],
            throughput: batch as f64 / (median / 1e3),
            arena_bytes: arena,
            intermediate_bytes: inter,
            codegen_ms,
        });
        if let (Some(p), true) = (&program, args.profile_kernels && bi == 0) {
            let total: f64 = step_times.iter().map(|d| d.as_secs_f64()).sum::<f64>().max(1e-12);
            let mut rows: Vec<KernelTime> = p
                .report
                .steps
                .iter()
                .zip(&step_times)
                .map(|(s, d)| {
                    let secs = d.as_secs_f64() / args.iters as f64;
                    KernelTime {
                        name: s.name.clone(),
                        what: s.what.clone(),
                        ms: secs * 1e3,
                        share: d.as_secs_f64() / total,
                        gmacs: (s.macs > 0 && secs > 0.0).then(|| s.macs as f64 / secs / 1e9),
                    }
                })
                .collect();
            rows.sort_by(|a, b| b.ms.total_cmp(&a.ms));
            profile = rows;
        }
    }
    let first = &sweep[0];
    let best = sweep.iter().max_by(|a, b| a.throughput.total_cmp(&b.throughput)).map_or(first.batch, |b| b.batch);
    let report = BenchReport {
        model: model.display().to_string(),
        engine: compiler.options().engine,
        threads,
        kernels,
        batch: first.batch,
        median_ms: first.median_ms,
        p99_ms: first.p99_ms,
        throughput: first.throughput,
        compile_ms,
        best_batch: best,
        host_ops,
        gmacs_per_s: macs_per_sample as f64 * first.batch as f64 / (first.median_ms / 1e3) / 1e9,
        macs: macs_per_sample,
        profile,
        sweep,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_text(&report);
    }
    if let Some(budget) = args.max_latency_ms {
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

/// The JIT part of `compile --report`: code generation for the graph's inputs (symbolic dims
/// bound to 1), the compile time of each stage (import, passes, JIT), the kernels with their
/// epilogue lists, the ops left to the interpreter, and the arena against the sum of all
/// intermediate tensors.
pub fn jit_report(compiler: &Compiler, g: &Graph, import: Duration, passes: Duration) -> Result<()> {
    if compiler.options().engine != Engine::Jit {
        println!("compile time: import {:.1} ms, passes {:.1} ms", ms(import), ms(passes));
        return Ok(());
    }
    let inputs = inputs_for(g, 1, None)?;
    let exe = compiler.executable(g.clone());
    let jit = exe.jit().context("the JIT executable")?;
    let t = Instant::now();
    let program = jit.program(&inputs)?;
    let codegen = t.elapsed();
    let r = &program.report;
    println!(
        "compile time: import {:.1} ms, passes {:.1} ms, JIT {:.1} ms (batch 1), total {:.1} ms",
        ms(import),
        ms(passes),
        ms(codegen),
        ms(import + passes + codegen)
    );
    let mk: Vec<String> = r.microkernels.iter().map(|(a, b)| format!("{a}={b}")).collect();
    println!("JIT: {} steps, microkernels {}", r.steps.len(), mk.join(", "));
    println!(
        "memory plan: arena {:.2} MiB for {:.2} MiB of intermediate tensors ({:.0}% reused), scratch {:.1} KiB per thread",
        r.arena_bytes as f64 / (1 << 20) as f64,
        r.intermediate_bytes as f64 / (1 << 20) as f64,
        100.0 * (1.0 - r.arena_bytes as f64 / (r.intermediate_bytes.max(1)) as f64),
        r.scratch_bytes as f64 / 1024.0
    );
    if r.host_ops.is_empty() {
        println!("every op runs in generated code");
    } else {
        let h: Vec<String> = r.host_ops.iter().map(|(o, n)| format!("{o} x{n}")).collect();
        println!("ops run by the interpreter (no kernel yet): {}", h.join(", "));
    }
    for s in &r.steps {
        println!("  {:<12} {}  {}", s.kind, s.what, s.name);
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
