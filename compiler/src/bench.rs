//! Latency and throughput of a compiled model (`qforge bench`), measured the way
//! `../shared/bench/ort_latency.py` measures ONNX Runtime (warm-ups, then timed runs of one
//! inference each), a batch sweep that picks the best throughput, and a per-kernel time
//! breakdown; and the JIT part of `compile --report`. Returns data; `commands::bench` prints it.

use crate::compiler::{Compiler, Executable};
use crate::options::{parse_count, Engine};
use crate::stats::percentile;
use anyhow::{bail, Result};
use qforge_ir::{DType, Dim, Graph, Tensor};
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Arguments of `qforge bench` besides the pipeline.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Batch sizes to measure (comma-separated); the best throughput is reported as the choice.
    #[arg(long, value_delimiter = ',', default_value = "1", value_parser = parse_count)]
    pub batch: Vec<usize>,
    /// Timed runs per batch size.
    #[arg(long, default_value_t = 30, value_parser = parse_count)]
    pub iters: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Input data: `X.npy` for the next graph input in order, or `NAME=X.npy`; the first rows
    /// of each are used. An f32 input not given gets a fixed pseudo-random normal tensor, its
    /// symbolic dims taken from the given inputs (the first one is the batch); other inputs
    /// (token ids, masks) must be given.
    #[arg(long, value_name = "[NAME=]X.npy")]
    pub input: Vec<String>,
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
pub struct BatchResult {
    pub batch: usize,
    pub median_ms: f64,
    pub p99_ms: f64,
    pub min_ms: f64,
    /// Samples per second at the median latency.
    pub throughput: f64,
    /// Arena bytes of the compiled program (JIT) and the sum of its intermediate tensors.
    pub arena_bytes: Option<usize>,
    pub intermediate_bytes: Option<usize>,
    pub codegen_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct KernelTime {
    pub name: String,
    pub what: String,
    pub ms: f64,
    pub share: f64,
    pub gmacs: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub engine: Engine,
    pub threads: usize,
    pub kernels: Vec<(String, String)>,
    /// The first batch size's figures at the top level (the keys scripts rely on).
    pub batch: usize,
    pub median_ms: f64,
    pub p99_ms: f64,
    pub throughput: f64,
    pub compile_ms: f64,
    pub sweep: Vec<BatchResult>,
    pub best_batch: usize,
    pub host_ops: Vec<(String, usize)>,
    pub profile: Vec<KernelTime>,
    /// Multiply-accumulates per sample and the achieved rate at the first batch size.
    pub macs: u64,
    pub gmacs_per_s: f64,
}

/// A deterministic standard-normal f32 input of `shape` (Box-Muller over a xorshift generator).
fn random_input(shape: Vec<usize>) -> Tensor {
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
    Tensor::from_f32(shape, v)
}

/// The inputs of one timed run at `batch`: each given input's first `batch` rows (`data`, one
/// entry per graph input, `None` where none was given), the others generated.
fn inputs_for(g: &Graph, batch: usize, data: &[Option<Tensor>]) -> Result<Vec<Tensor>> {
    // a symbolic dim of a generated input takes its size from a given input with the same symbol
    let mut sizes: HashMap<&str, usize> = HashMap::new();
    for (&id, t) in g.inputs().iter().zip(data) {
        let Some(t) = t else { continue };
        for (k, (d, &n)) in g.node(id).outputs[0].shape.dims().iter().zip(t.shape()).enumerate() {
            if let Dim::Sym(s) = d {
                sizes.insert(s, if k == 0 { batch } else { n });
            }
        }
    }
    let mut out = Vec::new();
    for (i, &id) in g.inputs().iter().enumerate() {
        let node = g.node(id);
        if let Some(Some(x)) = data.get(i) {
            let n = x.shape().first().copied().unwrap_or(0);
            if n < batch {
                bail!("--input for `{}` has {n} rows, fewer than the batch of {batch}", node.name);
            }
            out.push(crate::data::slice_batch(x, 0, batch)?);
            continue;
        }
        let ty = &node.outputs[0];
        let shape: Vec<usize> = ty
            .shape
            .dims()
            .iter()
            .enumerate()
            .map(|(k, d)| match d {
                Dim::Fixed(n) => Ok(*n),
                Dim::Sym(_) if k == 0 => Ok(batch),
                Dim::Sym(s) => match sizes.get(s.as_str()) {
                    Some(&n) => Ok(n),
                    None => bail!("input `{}` has the symbolic dim `{s}`; give --input {}=X.npy", node.name, node.name),
                },
            })
            .collect::<Result<_>>()?;
        if ty.dtype != DType::F32 {
            bail!(
                "input `{}` is {}: bench generates f32 inputs only; give --input {}=X.npy",
                node.name,
                ty.dtype.name(),
                node.name
            );
        }
        out.push(random_input(shape));
    }
    Ok(out)
}

/// Measures `exe` (compiled by `compiler` from `model`) as `args` say; `data` holds `--input`'s
/// tensors, one entry per graph input (their first rows are used), `compile_ms` how long
/// preparing it took.
pub fn measure(
    model: &std::path::Path,
    compiler: &Compiler,
    exe: &Executable,
    args: &BenchArgs,
    data: &[Option<Tensor>],
    compile_ms: f64,
) -> Result<BenchReport> {
    tracing::info!("bench: model ready in {compile_ms:.1} ms; batch sizes {:?}", args.batch);
    let threads = compiler.options().threads as usize;
    let mut sweep = Vec::new();
    let mut profile = Vec::new();
    let mut host_ops = Vec::new();
    let mut kernels = Vec::new();
    let mut macs_per_sample = 0u64;
    for (bi, &batch) in args.batch.iter().enumerate() {
        let inputs = inputs_for(exe.graph(), batch, data)?;
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
        let mut bar = compiler.progress(&format!("batch {batch}"), "runs");
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
    let Some(first) = sweep.first() else { bail!("--batch names no batch size") };
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
    Ok(report)
}

/// The JIT part of `compile --report`: the program generated for the graph's inputs (symbolic
/// dims bound to 1) and how long code generation took.
pub struct JitReport {
    pub report: qforge_codegen::ProgramReport,
    pub codegen: Duration,
}

/// Generates the JIT program of `g` at batch 1 (`None` with `--engine interp`). The JIT compiles
/// one program per input shape: an input with a symbolic dim other than the batch (an image's
/// height and width) takes the shape of the first calibration sample.
pub fn jit_report(compiler: &Compiler, g: &Graph) -> Result<Option<JitReport>> {
    if compiler.options().engine != Engine::Jit {
        return Ok(None);
    }
    let inputs = match inputs_for(g, 1, &[]) {
        Ok(inputs) => inputs,
        Err(e) if compiler.has_calibration() => match compiler.calib_source()?.stream(g, 1)?.next() {
            Some(batch) => batch?,
            None => return Err(e),
        },
        Err(e) => {
            return Err(e.context(
                "the JIT report compiles the program for one input shape: give --calib, whose first \
                                  sample's shape it then takes",
            ))
        }
    };
    let exe = compiler.executable(g.clone());
    let Some(jit) = exe.jit() else { return Ok(None) };
    let t = Instant::now();
    let program = jit.program(&inputs)?;
    Ok(Some(JitReport { report: program.report.clone(), codegen: t.elapsed() }))
}
