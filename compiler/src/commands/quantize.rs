//! `qforge quantize MODEL --calib X.npy -o OUT.onnx [QUANT]`: static INT8 by default
//! (`--quantize dynamic` for dynamic), exported as a QDQ ONNX model. The graph is exported before
//! the optimizer lowers its Q/DQ to integer kernels (`--opt-level` at most 1), which is the form
//! other runtimes fuse.
//!
//! With `--profile P` the export follows the conventions of P's toolchain (the profile's
//! `[export]` table: TensorRT, QNN, OpenVINO or ONNX Runtime; see `onnx::conventions`): they set
//! the quantization policy's defaults, refuse the flags and qconfig rules the toolchain does not
//! take, and may pad channels; the report says which conventions were applied.

use crate::files;
use crate::onnx::conventions;
use crate::options::{PipelineOptions, QuantizeMode};
use anyhow::Result;
use qforge_ir::{DType, Op};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    model: PathBuf,
    #[arg(short, long, value_name = "OUT.onnx")]
    output: PathBuf,
    /// Weight bits: 8, or 4 where the target takes 4-bit weights (the profile's [export]
    /// weights; without --profile, i4 symmetric).
    #[arg(long, value_name = "8|4", value_parser = parse_bits)]
    weight_bits: Option<u32>,
    #[command(flatten)]
    pipeline: PipelineOptions,
}

fn parse_bits(s: &str) -> Result<u32, String> {
    match s {
        "8" => Ok(8),
        "4" => Ok(4),
        _ => Err(format!("`{s}` weight bits (expected 8 or 4)")),
    }
}

pub fn run(mut a: Args) -> Result<()> {
    files::check_output(&a.output, "-o")?;
    if a.pipeline.quantize == QuantizeMode::None {
        a.pipeline.quantize = QuantizeMode::Int8;
    }
    a.pipeline.opt_level = a.pipeline.opt_level.min(1);
    let mode = match (a.pipeline.quantize, a.weight_bits) {
        (QuantizeMode::Dynamic, _) => "dynamic INT8",
        (_, Some(4)) => "static INT8 (4-bit weights)",
        _ => "static INT8",
    };
    let c = super::compiler(a.pipeline)?;
    let e = conventions::export(c, &a.model, a.weight_bits)?;
    let (g, bytes, padded) = (&e.graph, &e.bytes, &e.padded);
    files::write(&a.output, bytes)?;
    let weights = g
        .node_ids()
        .filter(|&id| {
            let n = g.node(id);
            // quantized weights; an int32 bias carries quantization parameters too, but is no weight
            matches!(n.op, Op::Const(_))
                && n.outputs.first().is_some_and(|t| t.quant.is_some() && t.dtype != DType::I32)
        })
        .count();
    println!(
        "wrote `{}` ({}): {mode} QDQ ONNX, {weights} weight tensor(s) quantized",
        a.output.display(),
        files::human_bytes(bytes.len() as u64)
    );
    if let Some(p) = &e.profile {
        // the policy's [default] in force: the conventions' defaults under the user's choices
        let (d, c) = (&e.compiler.qconfig().default, &p.export);
        let line = c.describe(
            d.activations.unwrap_or(c.activation_default()),
            d.weights.unwrap_or(c.weights[0]),
            d.granularity.unwrap_or(c.granularity[0]),
        );
        println!("conventions of `{}`: {line}", p.name);
        let (count, kinds) = activation_qdq(g);
        println!("activations: {count} Q/DQ pair(s), {kinds}");
        if p.export.pad_channels {
            let align = p.layout.channel_align;
            match padded.is_empty() {
                true => println!("channels: every conv and gemm output already a multiple of {align}"),
                false => println!("channels padded to a multiple of {align}: {}", padded.join("; ")),
            }
        }
        if !p.export.int32_bias {
            println!("biases: {} written as float (the values their int32 form dequantizes to)", e.float_biases);
        }
    }
    Ok(())
}

/// The activation quantizations of `g`: how many, and their storage types and zero points
/// (`i8 zero point 0`, `u8 zero points 0..=37`).
fn activation_qdq(g: &qforge_ir::Graph) -> (usize, String) {
    use std::collections::BTreeMap;
    let mut by: BTreeMap<DType, (i32, i32, usize)> = BTreeMap::new();
    for id in g.node_ids() {
        let n = g.node(id);
        let Some(t) = n.outputs.first().filter(|_| matches!(n.op, Op::Quantize)) else { continue };
        let Some(z) = t.quant.as_ref().map(|q| q.zero_point(0)) else { continue };
        let e = by.entry(t.dtype).or_insert((z, z, 0));
        e.0 = e.0.min(z);
        e.1 = e.1.max(z);
        e.2 += 1;
    }
    let count = by.values().map(|e| e.2).sum();
    let kinds: Vec<String> = by
        .iter()
        .map(|(d, (lo, hi, n))| match lo == hi {
            true => format!("{n} {d} with zero point {lo}"),
            false => format!("{n} {d} with zero points {lo}..={hi}"),
        })
        .collect();
    (count, if kinds.is_empty() { "none".into() } else { kinds.join(", ") })
}
