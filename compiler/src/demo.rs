//! `qforge demo`: the pipeline on the bundled digits model, with no arguments.

use crate::data;
use crate::driver::Compiler;
use crate::pipeline::PipelineOptions;
use crate::summary::Summary;
use anyhow::{Context, Result};
use std::time::Instant;

const MODEL: &[u8] = include_bytes!("../assets/digits_cnn.onnx");
const SAMPLES_X: &[u8] = include_bytes!("../assets/digits_samples_x.npy");
const SAMPLES_Y: &[u8] = include_bytes!("../assets/digits_samples_y.npy");

/// Imports the bundled model, runs it on the bundled samples and prints a summary table.
pub fn run() -> Result<()> {
    let t = Instant::now();
    let g = crate::onnx::import_bytes(MODEL, "bundled digits_cnn.onnx")?;
    let import_ms = t.elapsed().as_secs_f64() * 1e3;
    let summary = Summary::of(&g)?;
    let exe = Compiler::new(PipelineOptions::default())?.compile(g)?;
    let x = crate::npy::read_bytes(SAMPLES_X).context("bundled samples")?;
    let y = data::labels(&crate::npy::read_bytes(SAMPLES_Y).context("bundled labels")?)?;
    let t = Instant::now();
    let scores = exe.run_batched(&x, 64)?;
    let run_ms = t.elapsed().as_secs_f64() * 1e3;
    let acc = data::top1(&data::argmax_rows(&scores)?, &y)?;

    println!("qforge demo: digits CNN (8x8 handwritten digits, bundled with qforge)\n");
    println!("  {:<22} {}", "nodes", summary.nodes.len());
    println!("  {:<22} {}", "parameters", summary.params);
    println!("  {:<22} {:.1} KiB", "fp32 weights", summary.weight_bytes as f64 / 1024.0);
    let ops: Vec<String> = summary.ops.iter().map(|(k, v)| format!("{k} x{v}")).collect();
    println!("  {:<22} {}", "ops", ops.join(", "));
    println!("  {:<22} {:.1} ms", "import", import_ms);
    println!();
    println!("  {:<10} {:<8} {:>8} {:>14}", "precision", "engine", "top-1", "ms / sample");
    println!("  {:<10} {:<8} {:>7.2}% {:>14.3}", "fp32", "interp", acc * 100.0, run_ms / y.len() as f64);
    println!("\n  ({} samples; INT8, FP16 and the JIT join this table as they land)", y.len());
    println!("\nNext, on your own model:\n  qforge inspect model.onnx\n  qforge eval model.onnx --input x.npy --labels y.npy");
    Ok(())
}
