//! `qforge run MODEL --input X.npy [--input NAME=Y.npy] --output OUT.npy [PIPELINE]`.

use crate::artifact::Source;
use crate::files;
use crate::options::PipelineOptions;
use anyhow::{bail, Context, Result};
use qforge_ir::{Graph, Tensor};
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct Args {
    model: PathBuf,
    /// An input: `X.npy` for the next graph input in order, or `NAME=X.npy` (none for a model
    /// without graph inputs).
    #[arg(long, value_name = "[NAME=]X.npy")]
    input: Vec<String>,
    /// Where to write the outputs, one per graph output in order.
    #[arg(long, required = true, value_name = "OUT.npy")]
    output: Vec<PathBuf>,
    #[command(flatten)]
    pipeline: PipelineOptions,
}

pub fn run(a: Args) -> Result<()> {
    for o in &a.output {
        files::check_output(o, "--output")?;
    }
    let source = Source::open(&a.model, &a.pipeline)?;
    let n_out = source.graph().outputs().len();
    if a.output.len() > n_out {
        bail!("{} --output files for the model's {n_out} outputs", a.output.len());
    }
    let x = bind_inputs(source.graph(), &a.input)?;
    qforge_ir::interp::check_inputs(source.graph(), &x)?;
    crate::data::check_finite(&x, "--input", crate::data::NonFinite::strict(a.pipeline.strict))?;
    let exe = source.prepare(a.pipeline, super::compiler)?.exe;
    let ys = exe.run(&x)?;
    let mut written = vec![];
    for (y, path) in ys.iter().zip(&a.output) {
        crate::npy::write(path, y)?;
        written.push(format!(
            "`{}` ({}{:?}, {})",
            path.display(),
            y.dtype(),
            y.shape(),
            files::human_bytes(files::size_of(path))
        ));
    }
    println!("wrote {}", written.join(", "));
    Ok(())
}

/// Pairs `[NAME=]path` arguments with graph inputs: named ones by name, the rest in order.
pub fn bind_inputs(g: &Graph, args: &[String]) -> Result<Vec<Tensor>> {
    let names: Vec<String> = g.inputs().iter().map(|&i| g.node(i).name.clone()).collect();
    let mut slots: Vec<Option<Tensor>> = vec![None; names.len()];
    let mut next = 0;
    for a in args {
        let (slot, path) = match a.split_once('=') {
            Some((name, path)) if !Path::new(a).exists() => {
                let i = names
                    .iter()
                    .position(|n| n == name)
                    .with_context(|| format!("the model has no input `{name}` (inputs: {})", names.join(", ")))?;
                (i, path)
            }
            _ => {
                while next < slots.len() && slots[next].is_some() {
                    next += 1;
                }
                if next >= slots.len() {
                    bail!("more --input files than the model's {} inputs", names.len());
                }
                (next, a.as_str())
            }
        };
        if slots[slot].is_some() {
            bail!("input `{}` given twice", names[slot]);
        }
        slots[slot] = Some(crate::npy::read(Path::new(path))?);
    }
    slots
        .into_iter()
        .zip(&names)
        .map(|(t, n)| t.with_context(|| format!("no --input for the model's input `{n}`")))
        .collect()
}
