//! `qforge report MODEL --calib X.npy [--input X.npy --labels Y.npy] -o OUT.html [PIPELINE]`.

use crate::files;
use crate::options::PipelineOptions;
use crate::report::{Report, ReportArgs};
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    model: PathBuf,
    #[command(flatten)]
    args: ReportArgs,
    #[command(flatten)]
    pipeline: PipelineOptions,
}

pub fn run(a: Args) -> Result<()> {
    let out = &a.args.output;
    let ext = out.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if ext != "html" && ext != "htm" {
        bail!("`{}`: the report is HTML; give -o with a .html name", out.display());
    }
    files::check_output(out, "-o")?;
    let report = Report::build(&a.model, &a.args, a.pipeline, super::compiler)?;
    let html = report.to_html();
    files::write(out, html.as_bytes())?;
    let acc = &report.accuracy;
    let top1 = match (acc.compiled_top1, acc.fp32_top1) {
        (Some(c), Some(f)) => format!("top-1 {:.2}% (fp32 {:.2}%), ", c * 100.0, f * 100.0),
        _ => String::new(),
    };
    println!(
        "wrote `{}` ({}): {top1}output SQNR {:.2} dB against fp32 on {} sample(s)",
        out.display(),
        files::human_bytes(html.len() as u64),
        acc.sqnr_db,
        acc.samples
    );
    Ok(())
}
