//! `qforge run MODEL --input X.npy [--input NAME=Y.npy] --output OUT.npy [PIPELINE]`.

use crate::artifact::Source;
use crate::files;
use crate::onnx::ImportError;
use crate::options::PipelineOptions;
use anyhow::{bail, Context, Result};
use qforge_ir::{Graph, SignatureEntry, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, clap::Args)]
pub struct Args {
    model: PathBuf,
    /// An input: `X.npy` for the next graph input in order, or `NAME=X.npy` (none for a model
    /// without graph inputs). An input the model needs as a constant (a Reshape's shape, a
    /// Slice's bounds) specializes the model on the value given: it is compiled for it.
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
    let (source, specialized) = open(&a)?;
    match specialized.as_slice() {
        [] => {}
        [one] => eprintln!("note: input `{one}` is specialized: the model is compiled for its value"),
        many => eprintln!(
            "note: inputs {} are specialized: the model is compiled for their values",
            many.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
        ),
    }
    let n_out = source.graph().outputs().len();
    if a.output.len() > n_out {
        bail!("{} --output files for the model's {n_out} outputs", a.output.len());
    }
    // NumPy has no bf16 type: say so before running rather than after.
    for o in source.graph().outputs().iter().take(a.output.len()) {
        let ty = source.graph().value_type(o.value);
        if ty.dtype == qforge_ir::DType::BF16 {
            bail!(
                "output `{}` is {ty}, which .npy cannot carry (NumPy has no bf16 type); cast it to f32 in the model",
                o.name
            );
        }
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

/// MODEL opened; an ONNX model that needs as a constant an input computed from graph inputs the
/// user gave with `--input` is imported again specialized on those values (only those inputs:
/// the others stay run-time inputs), until it imports or needs an input not given. Returns the
/// inputs specialized that way.
fn open(a: &Args) -> Result<(Source, Vec<String>)> {
    let mut more: BTreeMap<String, Arc<Tensor>> = BTreeMap::new();
    let mut given: Option<BTreeMap<String, PathBuf>> = None;
    loop {
        let e = match Source::open_specialized(&a.model, &a.pipeline, &more) {
            Ok(s) => return Ok((s, more.into_keys().collect())),
            Err(e) => e,
        };
        let Some(ImportError::NotConstant { sources, .. }) = e.downcast_ref::<ImportError>() else { return Err(e) };
        let given = match &mut given {
            Some(g) => g,
            None => given.insert(given_paths(&a.model, &a.input)?),
        };
        let new: Vec<&String> = sources.iter().filter(|s| !more.contains_key(*s)).collect();
        if new.is_empty() || !new.iter().all(|s| given.contains_key(*s)) {
            return Err(e);
        }
        let types = crate::onnx::input_types_of_file(&a.model)?;
        for name in new {
            // Raw `.npy` data (bf16, float8, int4, ...) is read as the input's declared type.
            let t = match types.get(name) {
                Some(&(dtype, wire)) => crate::npy::read_input(&given[name], dtype, wire)?,
                None => crate::npy::read(&given[name])?,
            };
            more.insert(name.clone(), Arc::new(t));
        }
    }
}

/// The files `--input` gives for the ONNX model's declared inputs, by name (positional ones in
/// the declared order), for [`open`].
fn given_paths(model: &Path, args: &[String]) -> Result<BTreeMap<String, PathBuf>> {
    let names = crate::onnx::input_names_of_file(model)?;
    let mut out = BTreeMap::new();
    for (slot, path) in assign(&names, args)?.into_iter().enumerate() {
        if let Some(p) = path {
            out.insert(names[slot].clone(), PathBuf::from(p));
        }
    }
    Ok(out)
}

/// Pairs `[NAME=]path` arguments with the declared inputs `names`: named ones by name, the rest in
/// order. Returns each input's path, if given.
fn assign<'a>(names: &[String], args: &'a [String]) -> Result<Vec<Option<&'a str>>> {
    let mut slots: Vec<Option<&str>> = vec![None; names.len()];
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
        slots[slot] = Some(path);
    }
    Ok(slots)
}

/// Pairs `[NAME=]path` arguments with the graph's declared inputs (its signature, specialized
/// inputs included): named ones by name, the rest in order. A value given for a specialized
/// input must be the one the graph was compiled for; the result holds the run-time inputs only.
pub fn bind_inputs(g: &Graph, args: &[String]) -> Result<Vec<Tensor>> {
    let bound = bind_some_inputs(g, args)?;
    bound
        .into_iter()
        .zip(g.inputs())
        .map(|(t, &id)| t.with_context(|| format!("no --input for the model's input `{}`", g.node(id).name)))
        .collect()
}

/// [`bind_inputs`] where an input may be left out: one entry per run-time input (in the graph's
/// input order), `None` for an input no argument names.
pub fn bind_some_inputs(g: &Graph, args: &[String]) -> Result<Vec<Option<Tensor>>> {
    let sig = g.signature();
    let names: Vec<String> = sig
        .iter()
        .map(|e| match e {
            SignatureEntry::Input(id) => g.node(*id).name.clone(),
            SignatureEntry::Specialized(s) => s.name.clone(),
        })
        .collect();
    let paths = assign(&names, args)?;
    let mut out = vec![];
    for ((entry, path), name) in sig.iter().zip(paths).zip(&names) {
        match (entry, path) {
            (SignatureEntry::Input(id), Some(p)) => {
                // Raw `.npy` data (bf16, float8, int4, ...) is read as the input's declared type.
                let dtype = g.node(*id).outputs.first().map_or(qforge_ir::DType::F32, |t| t.dtype);
                out.push(Some(crate::npy::read_input(Path::new(p), dtype, g.wire(name))?))
            }
            (SignatureEntry::Input(_), None) => out.push(None),
            (SignatureEntry::Specialized(sp), Some(p)) => {
                let t = crate::npy::read_input(Path::new(p), sp.value.dtype(), g.wire(name))?;
                crate::artifact::check_specialized(g, name, &t, "--input")?;
            }
            (SignatureEntry::Specialized(_), None) => {}
        }
    }
    Ok(out)
}
