//! The one pass signature, the pass report, and the pipeline that runs passes in order.

use qforge_ir::{Graph, IrError};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Settings every pass may read.
#[derive(Clone, Debug)]
pub struct PassContext {
    /// Run the verifier after every pass (always in debug builds and tests).
    pub verify: bool,
    /// Largest tensor a pass may create (constant folding), in bytes.
    pub max_tensor_bytes: u128,
}

impl Default for PassContext {
    fn default() -> Self {
        PassContext { verify: cfg!(debug_assertions), max_tensor_bytes: qforge_ir::DEFAULT_MAX_TENSOR_BYTES as u128 }
    }
}

/// What a pass did, for `--report` and the logs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassReport {
    pub pass: String,
    /// Whether the graph changed.
    pub changed: bool,
    /// Named counters (rewrites applied, nodes removed, e-graph size, ...), sorted by name.
    pub stats: BTreeMap<String, u64>,
    /// Free-form findings (why something was not done), in the order found.
    pub notes: Vec<String>,
    pub time: Duration,
}

impl PassReport {
    pub fn new(pass: &str) -> PassReport {
        PassReport { pass: pass.to_string(), ..PassReport::default() }
    }
    /// Adds `n` to counter `key` (and marks the graph changed when `n > 0`).
    pub fn count(&mut self, key: &str, n: u64) {
        *self.stats.entry(key.to_string()).or_insert(0) += n;
        self.changed |= n > 0;
    }
}

/// A pass failed. Every variant's message includes its cause (kept as a field, not as
/// `source()`, so that `{:#}` prints it once).
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("pass `{pass}`: {error}")]
    Ir { pass: String, error: IrError },
    #[error("pass `{pass}` left an invalid graph: {error}")]
    Verify { pass: String, error: IrError },
    #[error("pass `{pass}`: {msg}")]
    Failed { pass: String, msg: String },
}

/// A graph-to-graph transformation. Pure: it never prints, touches files or runs code
/// generation. Idempotent: a second run reports no change.
pub trait Pass {
    /// The name used by `--dump-after` and in reports.
    fn name(&self) -> &'static str;
    fn run(&self, g: &mut Graph, cx: &PassContext) -> Result<PassReport, PassError>;
}

/// Passes in order.
#[derive(Default)]
pub struct Pipeline {
    passes: Vec<Box<dyn Pass>>,
}

impl Pipeline {
    pub fn new() -> Pipeline {
        Pipeline::default()
    }

    pub fn with(mut self, p: impl Pass + 'static) -> Pipeline {
        self.passes.push(Box::new(p));
        self
    }

    pub fn pass_names(&self) -> Vec<&'static str> {
        self.passes.iter().map(|p| p.name()).collect()
    }

    /// Runs every pass, verifying after each when `cx.verify`, and calls `after(pass, graph)`
    /// after each (the caller dumps IR text there).
    pub fn run(
        &self,
        g: &mut Graph,
        cx: &PassContext,
        after: &mut dyn FnMut(&str, &Graph),
    ) -> Result<Vec<PassReport>, PassError> {
        let mut reports = vec![];
        for p in &self.passes {
            let before = g.node_count();
            let t = Instant::now();
            let mut r = p.run(g, cx)?;
            r.time = t.elapsed();
            tracing::info!(
                "pass {}: {before} -> {} nodes in {:.1} ms{}",
                p.name(),
                g.node_count(),
                r.time.as_secs_f64() * 1e3,
                if r.changed { "" } else { " (no change)" }
            );
            if !r.stats.is_empty() {
                let stats: Vec<String> = r.stats.iter().map(|(k, v)| format!("{k} {v}")).collect();
                tracing::debug!("pass {}: {}", p.name(), stats.join(", "));
            }
            if cx.verify {
                qforge_ir::verify::verify(g).map_err(|error| PassError::Verify { pass: p.name().into(), error })?;
            }
            after(p.name(), g);
            reports.push(r);
        }
        Ok(reports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egraph::{convert::ConvertError, OptimizeError};
    use crate::evaluator::EvalError;
    use crate::precision::PrecisionError;
    use crate::quantize::{CalibError, StudyError};
    use std::error::Error;

    /// `e` as the CLI prints it (anyhow's `{:#}`): its message and each source's, joined by ": ".
    fn chain(e: &dyn Error) -> String {
        let mut s = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cur = c.source();
        }
        s
    }

    /// Every error that wraps another prints the cause once: in its message or as its source,
    /// never both.
    #[test]
    fn errors_print_each_cause_once() {
        let ir = || IrError::node("/conv/Conv", "conv", "input 1 is missing");
        let pass = || PassError::Ir { pass: "canonicalize".into(), error: ir() };
        let cases: Vec<Box<dyn Error>> = vec![
            Box::new(pass()),
            Box::new(PassError::Verify { pass: "optimize".into(), error: ir() }),
            Box::new(CalibError::Eval { batch: 3, error: EvalError::Ir(ir()) }),
            Box::new(StudyError::Quantize(pass())),
            Box::new(StudyError::Eval(EvalError::engine(pass()))),
            Box::new(PrecisionError::Eval(EvalError::Ir(ir()))),
            Box::new(PrecisionError::Pass(pass())),
            Box::new(OptimizeError::Convert(ConvertError::Ir(ir()))),
        ];
        for e in cases {
            let s = chain(e.as_ref());
            assert_eq!(s.matches("input 1 is missing").count(), 1, "{s}");
            assert!(!s.contains('\n'), "{s}");
        }
    }
}
