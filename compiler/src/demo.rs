//! The demo: the whole pipeline on the bundled digits model, with no arguments: import,
//! calibrate on the bundled calibration set, quantize to INT8, assign FP16, optimize, JIT-compile,
//! and measure FP32 vs INT8 vs FP16: top-1 accuracy, latency, weight size and fused kernels.
//! `qforge demo` prints what [`run`] returns.

use crate::compiler::Compiler;
use crate::data;
use crate::options::{PipelineOptions, Precision, QuantizeMode};
use crate::stats::median;
use crate::summary::Summary;
use anyhow::{Context, Result};
use qforge_ir::{Graph, Op, Tensor};
use std::time::Instant;

const MODEL: &[u8] = include_bytes!("../assets/digits_cnn.onnx");
const SAMPLES_X: &[u8] = include_bytes!("../assets/digits_samples_x.npy");
const SAMPLES_Y: &[u8] = include_bytes!("../assets/digits_samples_y.npy");
const CALIB_X: &[u8] = include_bytes!("../assets/digits_calib_x.npy");

/// One compiled variant of the model.
pub struct Row {
    pub name: &'static str,
    pub top1: f64,
    pub batch1_us: f64,
    pub per_sample_us: f64,
    pub weight_kib: f64,
    /// Nodes after the pipeline (batch norm folded, kernels fused).
    pub nodes: usize,
    pub fused: usize,
    pub host_ops: usize,
}

/// What the demo measured.
pub struct Demo {
    /// The model as imported.
    pub imported: Summary,
    pub import_ms: f64,
    pub samples: usize,
    pub calib_samples: usize,
    pub rows: Vec<Row>,
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
        Ok(median(&mut t))
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
        nodes: summary.nodes.len(),
        fused: fused_kernels(exe.graph()),
        host_ops,
    })
}

/// Runs the demo: imports the bundled model and measures each variant.
pub fn run() -> Result<Demo> {
    let t = Instant::now();
    let g = crate::onnx::import_bytes(MODEL, "bundled digits_cnn.onnx")?;
    let import_ms = t.elapsed().as_secs_f64() * 1e3;
    let imported = Summary::of(&g)?;
    let x = crate::npy::read_bytes(SAMPLES_X).context("bundled samples")?;
    let y = data::labels(&crate::npy::read_bytes(SAMPLES_Y).context("bundled labels")?)?;
    let calib_samples = crate::npy::read_bytes(CALIB_X)?.shape().first().copied().unwrap_or(0);
    // The pipeline reads calibration data from a file, as a user's would be.
    let dir = std::env::temp_dir().join(format!("qforge-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    let calib = dir.join("digits_calib_x.npy");
    let rows = (|| -> Result<Vec<Row>> {
        crate::files::write(&calib, CALIB_X)?;
        let int8 =
            PipelineOptions { quantize: QuantizeMode::Int8, calib: Some(calib.clone()), ..PipelineOptions::default() };
        let fp16 = PipelineOptions { precision: Precision::Fp16, ..PipelineOptions::default() };
        Ok(vec![
            measure("fp32", PipelineOptions::default(), &x, &y)?,
            measure("int8", int8, &x, &y)?,
            measure("fp16", fp16, &x, &y)?,
        ])
    })();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Demo { imported, import_ms, samples: y.len(), calib_samples, rows: rows? })
}
