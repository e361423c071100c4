//! `qforge quantize MODEL --calib X.npy -o OUT.onnx [QUANT]`: static INT8 by default
//! (`--quantize dynamic` for dynamic), exported as a QDQ ONNX model. The graph is exported before
//! the optimizer lowers its Q/DQ to integer kernels (`--opt-level` at most 1), which is the form
//! other runtimes fuse.

use crate::files;
use crate::options::{PipelineOptions, QuantizeMode};
use anyhow::Result;
use qforge_ir::{DType, Op};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    model: PathBuf,
    #[arg(short, long, value_name = "OUT.onnx")]
    output: PathBuf,
    #[command(flatten)]
    pipeline: PipelineOptions,
}

pub fn run(mut a: Args) -> Result<()> {
    files::check_output(&a.output, "-o")?;
    if a.pipeline.quantize == QuantizeMode::None {
        a.pipeline.quantize = QuantizeMode::Int8;
    }
    a.pipeline.opt_level = a.pipeline.opt_level.min(1);
    let mode = match a.pipeline.quantize {
        QuantizeMode::Dynamic => "dynamic INT8",
        _ => "static INT8",
    };
    let c = super::compiler(a.pipeline)?;
    let g = c.optimize(c.load(&a.model)?)?;
    let bytes = crate::onnx::export::export_qdq(&g)?;
    files::write(&a.output, &bytes)?;
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
    Ok(())
}
