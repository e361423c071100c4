//! `qforge demo`: the whole pipeline on the bundled digits model, with no arguments: import,
//! calibrate on the bundled calibration set, quantize to INT8, assign FP16, optimize, JIT-compile,
//! and print FP32 vs INT8 vs FP16: top-1 accuracy, latency, weight size and fused kernels.

use crate::data;
use crate::driver::Compiler;
use crate::pipeline::{PipelineOptions, Precision, QuantizeMode};
use crate::summary::Summary;
use anyhow::{Context, Result};
use qforge_ir::{Graph, Op, Tensor};
use std::time::Instant;

const MODEL: &[u8] = include_bytes!("../assets/digits_cnn.onnx");
const SAMPLES_X: &[u8] = include_bytes!("../assets/digits_samples_x.npy");
const SAMPLES_Y: &[u8] = include_bytes!("../assets/digits_samples_y.npy");
const CALIB_X: &[u8] = include_bytes!("../assets/digits_calib_x.npy");

struct Row {
    name: &'static str,
    top1: f64,
    batch1_us: f64,
    per_sample_us: f64,
    weight_kib: f64,
    fused: usize,
    host_ops: usize,
}

/// Kernels that absorbed other nodes (integer kernels with epilogues, folded batch norms...).
fn fused_kernels(g: &Graph) -> usize {
    g.node_ids()
        .filter(|&id| {
            let n = g.node(id);
            !matches!(n.op, Op::Const(_) | Op::Input) && n.from.len() > 1
        })
        .count()
}

fn measure(name: &'static str, opts: PipelineOptions, x: &Tensor, y: &[usize]) -> Result<Row> {
    let compiler = Compiler::new(opts)?;
    let g = crate::onnx::import_bytes(MODEL, "bundled digits_cnn.onnx")?;
    let exe = compiler.compile(g)?;
    let summary = Summary::of(exe.graph())?;
    let scores = exe.run_batched(x, 64)?;
    let top1 = data::top1(&data::argmax_rows(&scores)?, y)?;
    // Throughput at batch 64 and latency at batch 1, each the median of a few timed runs.
    let median = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        f()?;
        let mut t = Vec::new();
        for _ in 0..7 {
            let s = Instant::now();
            f()?;
            t.push(s.elapsed().as_secs_f64() * 1e6);
        }
        t.sort_by(|a, b| a.total_cmp(b));
        Ok(t[t.len() / 2])
    };
    let n = y.len();
    let per_sample_us = median(&mut || exe.run_batched(x, 64).map(|_| ()))? / n as f64;
    let one = data::slice_batch(x, 0, 1)?;
    let batch1_us = median(&mut || exe.run(std::slice::from_ref(&one)).map(|_| ()))?;
    let host_ops = match exe.jit() {
        Some(j) => j.program(std::slice::from_ref(&one))?.report.host_ops.iter().map(|h| h.1).sum(),
        None => 0,
    };
    Ok(Row {
        name,
        top1,
        batch1_us,
        per_sample_us,
        weight_kib: summary.weight_bytes as f64 / 1024.0,
        fused: fused_kernels(exe.graph()),
        host_ops,
    })
}

/// Runs the demo and prints its table.
pub fn run() -> Result<()> {
    let t = Instant::now();
    let g = crate::onnx::import_bytes(MODEL, "bundled digits_cnn.onnx")?;
    let import_ms = t.elapsed().as_secs_f64() * 1e3;
    let summary = Summary::of(&g)?;
    let x = crate::npy::read_bytes(SAMPLES_X).context("bundled samples")?;
    let y = data::labels(&crate::npy::read_bytes(SAMPLES_Y).context("bundled labels")?)?;
    // The pipeline reads calibration data from a file, as a user's would be.
    let dir = std::env::temp_dir().join(format!("qforge-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    let calib = dir.join("digits_calib_x.npy");
    std::fs::write(&calib, CALIB_X).with_context(|| format!("cannot write `{}`", calib.display()))?;

    println!("qforge demo: digits CNN (8x8 handwritten digits, bundled with qforge)\n");
    println!("  {:<22} {}", "nodes", summary.nodes.len());
    println!("  {:<22} {}", "parameters", summary.params);
    let ops: Vec<String> = summary.ops.iter().map(|(k, v)| format!("{k} x{v}")).collect();
    println!("  {:<22} {}", "ops", ops.join(", "));
    println!("  {:<22} {:.1} ms", "import", import_ms);
    println!(
        "  {:<22} {} samples, calibration {} images",
        "data",
        y.len(),
        crate::npy::read_bytes(CALIB_X)?.shape().first().copied().unwrap_or(0)
    );
    println!();

    let rows = (|| -> Result<Vec<Row>> {
        Ok(vec![
            measure("fp32", PipelineOptions::default(), &x, &y)?,
            measure(
                "int8",
                PipelineOptions {
                    quantize: QuantizeMode::Int8,
                    calib: Some(calib.clone()),
                    ..PipelineOptions::default()
                },
                &x,
                &y,
            )?,
            measure("fp16", PipelineOptions { precision: Precision::Fp16, ..PipelineOptions::default() }, &x, &y)?,
        ])
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let rows = rows?;
    println!(
        "  {:<6} {:>8} {:>13} {:>14} {:>12} {:>13} {:>11}",
        "", "top-1", "batch 1 (us)", "us/sample@64", "weights KiB", "fused kernels", "host ops"
    );
    for r in &rows {
        println!(
            "  {:<6} {:>7.2}% {:>13.1} {:>14.2} {:>12.1} {:>13} {:>11}",
            r.name,
            r.top1 * 100.0,
            r.batch1_us,
            r.per_sample_us,
            r.weight_kib,
            r.fused,
            r.host_ops
        );
    }
    println!("\n  JIT engine, 1 thread; host ops are ops the JIT hands to the reference interpreter.");
    println!(
        "\nNext, on your own model:\n  qforge inspect model.onnx\n  qforge eval model.onnx --input x.npy --labels y.npy --quantize int8 --calib calib.npy\n  qforge bench model.onnx --quantize int8 --calib calib.npy --profile-kernels"
    );
    Ok(())
}
