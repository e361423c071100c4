//! `qforge inspect MODEL [--json | --ir | --precision-report | --quantizable] [PIPELINE]`.

use crate::compiler::Stage;
use crate::options::{PipelineOptions, QuantizeMode};
use crate::summary::Summary;
use anyhow::Result;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// An .onnx model, a .qir IR text file or a .qfa artifact.
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
}

pub fn run(a: Args) -> Result<()> {
    if a.quantizable {
        return quantizable(a);
    }
    if a.precision_report && !a.ir {
        return precision_report(a);
    }
    // an artifact: its stored graph, and where it came from
    let (g, header) = if crate::artifact::is_artifact(&a.model) {
        let art = crate::artifact::load_for(&a.model, &a.pipeline)?;
        (art.graph, Some(art.header))
    } else {
        let c = super::compiler(a.pipeline)?;
        (c.optimize(c.load(&a.model)?)?, None)
    };
    if a.ir {
        print!("{}", qforge_ir::text::print_default(&g)?);
        return Ok(());
    }
    let s = Summary::of(&g)?;
    if a.json {
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

/// `--quantizable`: the pipeline up to batch-norm folding (the graph static quantization sees),
/// then each node's decision.
fn quantizable(mut a: Args) -> Result<()> {
    if a.pipeline.quantize == QuantizeMode::None {
        a.pipeline.quantize = QuantizeMode::Int8;
    }
    let c = super::compiler(a.pipeline)?;
    let st = c.run_until(c.load(&a.model)?, Stage::FoldBatchNorm, &mut |_, _| {})?;
    let rows = crate::quantizable::rows(&st.graph, c.qconfig())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "nodes": rows }))?);
        return Ok(());
    }
    let quantized = rows.iter().filter(|r| r.decision == "quantize").count();
    println!("{quantized} of {} nodes quantized", rows.len());
    let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
    for r in &rows {
        println!("{:<w$}  {:<20} {:<17} {}", r.name, r.op, r.decision, r.reason);
    }
    Ok(())
}

/// `--precision-report`: the profile, then the precision and padding passes' reports.
fn precision_report(a: Args) -> Result<()> {
    let c = super::compiler(a.pipeline)?;
    let st = c.run(c.load(&a.model)?, &mut |_, _| {})?;
    print!("profile {}", c.profile().describe());
    let mut any = false;
    for r in st.reports.iter().filter(|r| r.pass == "precision" || r.pass == "align-channels") {
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
