//! `qforge graph MODEL [PIPELINE] [--after PASS] [-o OUT.svg|OUT.dot]`: DOT on stdout without `-o`.

use crate::files;
use crate::graph_dot::{graph_after, render_svg, to_dot, Format, RenderError};
use crate::options::PipelineOptions;
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    model: PathBuf,
    /// `.svg` (needs Graphviz `dot`) or `.dot`; without it, DOT on stdout.
    #[arg(short, long, value_name = "OUT.svg|OUT.dot")]
    output: Option<PathBuf>,
    /// Draw the graph right after this pass (its first run) instead of after the pipeline.
    #[arg(long, value_name = "PASS")]
    after: Option<String>,
    #[command(flatten)]
    pipeline: PipelineOptions,
}

pub fn run(a: Args) -> Result<()> {
    let format = a.output.as_deref().map(Format::of).transpose()?;
    if let Some(o) = &a.output {
        files::check_output(o, "-o")?;
    }
    let compiler = super::compiler(a.pipeline)?;
    let (g, title) = graph_after(&compiler, &a.model, a.after.as_deref())?;
    let dot = to_dot(&g, &title)?;
    let Some(path) = &a.output else {
        print!("{dot}");
        return Ok(());
    };
    let text = match format {
        Some(Format::Svg) => match render_svg(&dot) {
            Ok(svg) => svg,
            Err(RenderError::NotInstalled(prog)) => {
                let fallback = path.with_extension("dot");
                files::write(&fallback, dot.as_bytes())?;
                bail!(
                    "graphviz `{prog}` is not installed, so no SVG: wrote the DOT text to `{}` instead \
                     (install graphviz, or ask for -o OUT.dot)",
                    fallback.display()
                );
            }
            Err(e) => return Err(e.into()),
        },
        _ => dot,
    };
    files::write(path, text.as_bytes())?;
    let nodes = crate::summary::Summary::of(&g)?.nodes.len();
    println!("wrote `{}` ({}): {title}, {nodes} nodes", path.display(), files::human_bytes(text.len() as u64));
    Ok(())
}
