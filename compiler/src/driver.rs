//! The [`Compiler`] API: load a model, run the pipeline, get something that runs.
//!
//! ```no_run
//! use qforge::{Compiler, PipelineOptions};
//! let compiler = Compiler::new(PipelineOptions::default())?;
//! let graph = qforge::load_model("model.onnx".as_ref())?;
//! let exe = compiler.compile(graph)?;
//! let x = qforge::npy::read("x.npy".as_ref())?;
//! let outputs = exe.run(&[x])?;
//! # Ok::<(), anyhow::Error>(())
//! ```

use crate::pipeline::{Engine, PipelineOptions};
use anyhow::{bail, Context, Result};
use qforge_ir::interp::{self, RunOptions};
use qforge_ir::{Graph, Tensor};
use qforge_passes::canonicalize::Canonicalize;
use qforge_passes::{PassContext, PassReport, Pipeline};
use std::path::Path;

/// Loads a model by its extension: `.onnx` (imported) or `.qir` (the IR text form).
pub fn load_model(path: &Path) -> Result<Graph> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "onnx" => Ok(crate::onnx::import_file(path)?),
        "qir" => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read `{}`", path.display()))?;
            qforge_ir::text::parse(&text).with_context(|| format!("`{}`", path.display()))
        }
        _ => bail!(
            "`{}`: unknown model format (expected a .onnx model or a .qir IR text file)",
            path.display()
        ),
    }
}

/// Strings the stages together according to [`PipelineOptions`].
#[derive(Clone, Debug)]
pub struct Compiler {
    opts: PipelineOptions,
}

impl Compiler {
    /// Checks the options; options whose stage is not built yet are an error here.
    pub fn new(opts: PipelineOptions) -> Result<Compiler> {
        opts.check_supported()?;
        Ok(Compiler { opts })
    }

    pub fn options(&self) -> &PipelineOptions {
        &self.opts
    }

    /// Runs the pipeline on `graph` (verified before and after) and prepares it for execution.
    pub fn compile(&self, graph: Graph) -> Result<Executable> {
        let graph = self.optimize(graph)?;
        Ok(Executable {
            graph,
            engine: self.opts.engine,
            run: RunOptions { max_tensor_bytes: self.opts.max_tensor_bytes as u128 },
        })
    }

    /// The passes `--opt-level` selects: none at 0; canonicalization from 1 (the optimizer, the
    /// quantizer and precision assignment join as they land).
    pub fn pipeline(&self) -> Pipeline {
        let mut p = Pipeline::new();
        if self.opts.opt_level >= 1 {
            p = p.with(Canonicalize);
        }
        p
    }

    /// The graph after the pipeline (what `inspect` shows), verified before and after each pass.
    pub fn optimize(&self, graph: Graph) -> Result<Graph> {
        self.optimize_reported(graph, &mut |_, _| {}).map(|(g, _)| g)
    }

    /// As [`Compiler::optimize`], calling `after(pass, graph)` after each pass and returning the
    /// pass reports.
    pub fn optimize_reported(
        &self,
        mut graph: Graph,
        after: &mut dyn FnMut(&str, &Graph),
    ) -> Result<(Graph, Vec<PassReport>)> {
        qforge_ir::verify::verify(&graph).context("the imported graph does not verify")?;
        let cx = PassContext { verify: true, max_tensor_bytes: self.opts.max_tensor_bytes as u128 };
        let reports = self.pipeline().run(&mut graph, &cx, after)?;
        Ok((graph, reports))
    }
}

/// A compiled model, ready to run.
#[derive(Clone, Debug)]
pub struct Executable {
    graph: Graph,
    engine: Engine,
    run: RunOptions,
}

impl Executable {
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Runs on one tensor per graph input; checks the inputs' dtypes and shapes first.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        match self.engine {
            Engine::Interp => Ok(interp::run_observed(&self.graph, inputs, &self.run, &mut |_, _| {})?),
            Engine::Jit => bail!("the JIT engine is not implemented yet"),
        }
    }

    /// Runs a single-input graph over `x` in batches of `batch` along axis 0 and concatenates
    /// the first output.
    pub fn run_batched(&self, x: &Tensor, batch: usize) -> Result<Tensor> {
        let n = x.shape().first().copied().context("the input has no batch dimension")?;
        let mut parts = vec![];
        let mut start = 0;
        while start < n {
            let end = (start + batch.max(1)).min(n);
            let xb = crate::data::slice_batch(x, start, end)?;
            let mut out = self.run(&[xb])?;
            if out.is_empty() {
                bail!("the model has no outputs");
            }
            parts.push(out.swap_remove(0));
            start = end;
        }
        crate::data::concat_batch(&parts)
    }
}
