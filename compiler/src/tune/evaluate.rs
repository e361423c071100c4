//! Evaluating a candidate: compile it through the pipeline with its qconfig, score its outputs
//! on the evaluation set against the FP32 model's, and time it.
//!
//! A candidate is compiled by a [`Compiler`] built from the same options `compile --quantize
//! int8 --calib X --qconfig CANDIDATE.toml` builds (the candidate's text written to a file and
//! read back by the one qconfig reader), so what the search measures is what that command
//! produces. Calibration is the one expensive stage shared between candidates: in a search
//! ([`Context::evaluate`]) the pipeline runs once per observer up to [`Stage::Calibrate`] with
//! every quantizable layer int8 (the calibration of the full set of activations), and each
//! candidate resumes from a copy of that state with its own policy. That is the same state its
//! own pipeline reaches: calibration runs the float graph and keys ranges by value, so a
//! candidate quantizing fewer layers needs a subset of the same ranges, observed the same way
//! (the observer and activation scheme are the candidate's `[default]`, common to the family).
//! A job ([`Context::evaluate_fresh`]) compiles from scratch. The tests check both give the same
//! graph and the same figures.

use super::candidates::{Candidate, Policy};
use super::latency::{profile_scale, KernelTable, Source};
use crate::compiler::{Compiler, Executable, Stage, State};
use crate::data;
use crate::options::{Kernels, PipelineOptions, QuantizeMode};
use anyhow::{bail, Context as _, Result};
use qforge_codegen::StepInfo;
use qforge_ir::{Graph, Tensor};
use qforge_passes::precision::Profile;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Samples per evaluation run (what `qforge eval` runs by default).
pub const EVAL_BATCH: usize = 64;

/// Everything a candidate's evaluation depends on besides its policy: the model, the data and
/// how latency is obtained. A job carries it whole.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    pub model: PathBuf,
    pub calib: PathBuf,
    pub calib_batch: usize,
    /// Evaluation inputs (default: the calibration set).
    pub input: Option<PathBuf>,
    pub labels: Option<PathBuf>,
    /// The hardware profile (`None`: host).
    pub profile: Option<String>,
    pub latency: Source,
    pub warmup: usize,
    pub iters: usize,
    /// The JIT's microkernels (`--kernels`): the native ones by default; the Cranelift-only set
    /// generates the same steps on every x86-64 CPU, which a stored cost table's prediction needs
    /// to be the same everywhere.
    #[serde(default)]
    pub kernels: Kernels,
}

impl Setup {
    /// The pipeline options of a candidate whose qconfig is at `qconfig` (what `compile`
    /// reproduces it with: `--quantize int8 --calib X --qconfig FILE`, one thread).
    pub fn options(&self, qconfig: Option<PathBuf>) -> PipelineOptions {
        PipelineOptions {
            quantize: QuantizeMode::Int8,
            calib: Some(self.calib.clone()),
            calib_batch: self.calib_batch,
            profile: self.profile.clone(),
            qconfig,
            kernels: self.kernels,
            threads: 1,
            ..PipelineOptions::default()
        }
    }

    /// The command line that compiles a candidate's qconfig at `toml`.
    pub fn reproduce(&self, toml: &str) -> String {
        let mut s = format!(
            "qforge compile {} --quantize int8 --calib {} --qconfig {toml}",
            self.model.display(),
            self.calib.display()
        );
        if self.calib_batch != 50 {
            s.push_str(&format!(" --calib-batch {}", self.calib_batch));
        }
        if let Some(p) = &self.profile {
            s.push_str(&format!(" --profile {p}"));
        }
        s.push_str(" -o MODEL.qfa");
        s
    }

    /// `measured (JIT on this host, 1 thread, median of N runs)` or what it is predicted from.
    pub fn latency_kind(&self) -> String {
        match &self.latency {
            Source::Measured => {
                format!("measured: this host's JIT, 1 thread, batch 1, median of {} runs", self.iters)
            }
            Source::Table { path } => format!("predicted from the kernel cost table `{}`", path.display()),
            Source::Profile => format!(
                "predicted for profile `{}`: per-kernel times measured here, scaled by the profile's relative costs",
                self.profile.as_deref().unwrap_or("host")
            ),
        }
    }
}

/// An SQNR in JSON: a number, or the string `"inf"` for an exact output (JSON has no infinity).
mod db {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f64(*x)
        } else {
            s.serialize_str(if *x > 0.0 { "inf" } else { "-inf" })
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum V {
            N(f64),
            S(String),
        }
        match V::deserialize(d)? {
            V::N(x) => Ok(x),
            V::S(s) if s == "inf" => Ok(f64::INFINITY),
            V::S(s) if s == "-inf" => Ok(f64::NEG_INFINITY),
            V::S(s) => Err(serde::de::Error::custom(format!("`{s}` is not an SQNR"))),
        }
    }
}

/// A candidate with what it scored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluated {
    /// [`Policy::key`].
    pub key: String,
    pub candidate: Candidate,
    /// The canonical qconfig text.
    pub toml: String,
    pub summary: String,
    /// Top-1 on the evaluation set (with labels).
    pub top1: Option<f64>,
    /// Output SQNR against the FP32 model on the evaluation set (dB).
    #[serde(with = "db")]
    pub sqnr_db: f64,
    /// Cosine similarity of the outputs with the FP32 model's (all samples as one vector).
    pub cosine: f64,
    /// Latency at batch 1 (ms), measured or predicted ([`Setup::latency`]).
    pub latency_ms: f64,
    pub predicted: bool,
}

/// Counters of a search.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// Candidates compiled (cache misses).
    pub compiled: usize,
    /// Latency measurements (timed runs of a compiled program).
    pub measured: usize,
    /// Latency predictions from a table.
    pub predicted: usize,
    /// Calibration passes.
    pub calibrations: usize,
}

/// A search's state: the model, the evaluation set, the FP32 reference, the calibration per
/// observer and the candidates evaluated, by key.
pub struct Context {
    pub setup: Setup,
    /// The imported model.
    pub graph: Graph,
    pub eval: Vec<Vec<Tensor>>,
    pub labels: Option<Vec<usize>>,
    /// The FP32 model's first output on the evaluation set, concatenated.
    pub reference: Tensor,
    pub fp32_top1: Option<f64>,
    pub profile: Profile,
    table: Option<KernelTable>,
    host: Profile,
    /// The pipeline after calibration, per observer.
    families: HashMap<String, State>,
    pub cache: BTreeMap<String, Evaluated>,
    pub counters: Counters,
    /// Measured steps `(step, ns)` of every program timed, when [`Context::keep_steps`] (for
    /// `--save-latency-table`).
    pub steps: Vec<(StepInfo, f64)>,
    /// Time each step too (runs the timed runs again with per-step timing), to fill `steps`.
    pub keep_steps: bool,
    dir: PathBuf,
}

impl Drop for Context {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Context {
    /// Loads the model and the data, and runs the FP32 model on the evaluation set.
    pub fn new(setup: Setup) -> Result<Context> {
        let base = Compiler::new(setup.options(None).fp32_baseline())?;
        let graph = base.load(&setup.model)?;
        let eval_path = setup.input.as_deref().unwrap_or(&setup.calib);
        let set = crate::calib_set::load(eval_path, &graph)?;
        qforge_ir::interp::check_inputs(&graph, &set.first_sample()?)
            .with_context(|| format!("`{}` does not fit the model", eval_path.display()))?;
        let eval = set.batches(EVAL_BATCH)?;
        let labels = match &setup.labels {
            Some(p) => {
                let l = data::labels(&crate::npy::read(p)?).with_context(|| format!("`{}`", p.display()))?;
                if l.len() != set.samples {
                    bail!("{} evaluation samples but {} labels in `{}`", set.samples, l.len(), p.display());
                }
                Some(l)
            }
            None => None,
        };
        let fp32 = base.compile(graph.clone())?;
        let reference = first_outputs(&fp32, &eval).context("running the FP32 model on the evaluation set")?;
        let fp32_top1 = match &labels {
            Some(l) => Some(data::top1(&data::argmax_rows(&reference)?, l)?),
            None => None,
        };
        let table = match &setup.latency {
            Source::Table { path } => Some(KernelTable::load(path)?),
            _ => None,
        };
        let profile = base.profile().clone();
        let dir = std::env::temp_dir().join(format!("qforge-tune-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
        Ok(Context {
            setup,
            graph,
            eval,
            labels,
            reference,
            fp32_top1,
            profile,
            table,
            host: crate::compiler::host_profile(),
            families: HashMap::new(),
            cache: BTreeMap::new(),
            counters: Counters::default(),
            steps: vec![],
            keep_steps: false,
            dir,
        })
    }

    /// The compiler of `policy`: its qconfig text written to a file and read back, as `compile
    /// --qconfig` reads it.
    pub(crate) fn compiler(&self, policy: &Policy) -> Result<Compiler> {
        let path = self.dir.join(format!("{}.toml", policy.key()));
        std::fs::write(&path, policy.toml()).with_context(|| format!("cannot write `{}`", path.display()))?;
        Compiler::new(self.setup.options(Some(path)))
    }

    /// The pipeline after calibration for `policy`'s observer, made once per observer with every
    /// quantizable layer int8.
    fn family(&mut self, policy: &Policy) -> Result<State> {
        if let Some(st) = self.families.get(&policy.observer) {
            return Ok(st.clone());
        }
        let full = Policy { layers: BTreeMap::new(), default: super::candidates::Choice::Int8, ..policy.clone() };
        let c = self.compiler(&full)?;
        let st = c.run_until(self.graph.clone(), Stage::Calibrate, &mut |_, _| {})?;
        self.counters.calibrations += 1;
        self.families.insert(policy.observer.clone(), st.clone());
        Ok(st)
    }

    /// Evaluates `cand` (once per policy: a policy seen before returns its figures).
    pub fn evaluate(&mut self, cand: &Candidate) -> Result<Evaluated> {
        let key = cand.policy.key();
        if let Some(e) = self.cache.get(&key) {
            return Ok(e.clone());
        }
        let c = self.compiler(&cand.policy)?;
        c.check(&self.graph, None)?;
        let family = self.family(&cand.policy)?;
        let st = State { qconfig: c.qconfig().clone(), ..family };
        let graph = c.resume(st, &mut |_, _| {})?.graph;
        let e = self.score(&c, graph, cand)?;
        self.cache.insert(key, e.clone());
        Ok(e)
    }

    /// Evaluates `cand` compiling it from scratch (its own calibration): what a job does.
    pub fn evaluate_fresh(&mut self, cand: &Candidate) -> Result<Evaluated> {
        let c = self.compiler(&cand.policy)?;
        let graph = c.optimize(self.graph.clone())?;
        self.counters.calibrations += 1;
        self.score(&c, graph, cand)
    }

    /// The compiled graph of `policy` through the whole pipeline from scratch (the tests compare
    /// it with what the search compiled).
    pub fn compile_fresh(&self, policy: &Policy) -> Result<Graph> {
        self.compiler(policy)?.optimize(self.graph.clone())
    }

    /// The compiled graph of `policy` resumed from its family's calibration, as the search
    /// compiles it.
    pub fn compile_cached(&mut self, policy: &Policy) -> Result<Graph> {
        let c = self.compiler(policy)?;
        let family = self.family(policy)?;
        Ok(c.resume(State { qconfig: c.qconfig().clone(), ..family }, &mut |_, _| {})?.graph)
    }

    fn score(&mut self, c: &Compiler, graph: Graph, cand: &Candidate) -> Result<Evaluated> {
        self.counters.compiled += 1;
        let exe = c.executable(graph);
        let out = first_outputs(&exe, &self.eval)
            .with_context(|| format!("running candidate `{}` on the evaluation set", cand.label))?;
        let (sqnr_db, cosine) = compare(&out, &self.reference);
        let top1 = match &self.labels {
            Some(l) => Some(data::top1(&data::argmax_rows(&out)?, l)?),
            None => None,
        };
        let latency_ms = self.latency(&exe)?;
        Ok(Evaluated {
            key: cand.policy.key(),
            candidate: cand.clone(),
            toml: cand.policy.toml(),
            summary: cand.policy.summary(),
            top1,
            sqnr_db,
            cosine,
            latency_ms,
            predicted: self.setup.latency.predicted(),
        })
    }

    /// Measures the candidates of `keys` again, interleaved: `passes` times over the list, each
    /// candidate's warm-up and timed runs in turn, its latency then the median of all its timed
    /// runs. A measured search runs for minutes on a machine whose load changes; measured
    /// side by side, the candidates the choice is between are compared under the same
    /// conditions. (Predicted latencies are left as they are.)
    pub fn remeasure(&mut self, keys: &[String], passes: usize) -> Result<()> {
        if self.setup.latency.predicted() {
            return Ok(());
        }
        let inputs = self.bench_inputs()?;
        let mut progs = vec![];
        for k in keys {
            let Some(e) = self.cache.get(k) else { continue };
            let policy = e.candidate.policy.clone();
            let c = self.compiler(&policy)?;
            let graph = self.compile_cached(&policy)?;
            let exe = c.executable(graph);
            let jit = exe.jit().context("tune measures on the JIT")?;
            progs.push((k.clone(), jit.program(&inputs)?, vec![]));
        }
        for _ in 0..passes.max(1) {
            for (_, p, times) in progs.iter_mut() {
                for _ in 0..self.setup.warmup {
                    p.run(&inputs, None)?;
                }
                for _ in 0..self.setup.iters.max(1) {
                    let t = Instant::now();
                    p.run(&inputs, None)?;
                    times.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        for (k, _, mut times) in progs {
            self.counters.measured += 1;
            if let Some(e) = self.cache.get_mut(&k) {
                e.latency_ms = crate::stats::median(&mut times);
            }
        }
        Ok(())
    }

    /// The first evaluation sample, at batch 1 (what latency is measured on).
    fn bench_inputs(&self) -> Result<Vec<Tensor>> {
        let first = self.eval.first().context("the evaluation set is empty")?;
        first.iter().map(|t| data::slice_batch(t, 0, 1)).collect()
    }

    /// The latency of `exe` at batch 1 (ms), as [`Setup::latency`] says.
    fn latency(&mut self, exe: &Executable) -> Result<f64> {
        let inputs = self.bench_inputs()?;
        let jit = exe.jit().context("tune measures on the JIT")?;
        let program = jit.program(&inputs)?;
        if let (Source::Table { .. }, Some(t)) = (&self.setup.latency, &self.table) {
            self.counters.predicted += 1;
            return Ok(t.predict_ms(&program.report.steps));
        }
        self.counters.measured += 1;
        for _ in 0..self.setup.warmup {
            program.run(&inputs, None)?;
        }
        let mut times = Vec::with_capacity(self.setup.iters);
        for _ in 0..self.setup.iters.max(1) {
            let t = Instant::now();
            program.run(&inputs, None)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let median = crate::stats::median(&mut times);
        let scale = matches!(self.setup.latency, Source::Profile);
        if !scale && !self.keep_steps {
            return Ok(median);
        }
        // per-step times over as many runs again (for the profile's scaling and a saved table;
        // apart from the median's runs, which per-step timing would slow)
        let mut step_times: Vec<Duration> = vec![];
        let runs = self.setup.iters.max(1);
        for _ in 0..runs {
            program.run(&inputs, Some(&mut step_times))?;
        }
        let per_step: Vec<f64> = step_times.iter().map(|d| d.as_secs_f64() * 1e9 / runs as f64).collect();
        if self.keep_steps {
            self.steps.extend(program.report.steps.iter().cloned().zip(per_step.iter().copied()));
        }
        if scale {
            let total: f64 = per_step.iter().sum::<f64>().max(1e-9);
            let scaled: f64 = program
                .report
                .steps
                .iter()
                .zip(&per_step)
                .map(|(s, ns)| ns * profile_scale(&super::latency::kernel_key(s), &self.profile, &self.host))
                .sum();
            // the per-step sum misses the time between steps: scale the measured median by it
            return Ok(median * scaled / total);
        }
        Ok(median)
    }
}

/// A process-unique counter (two contexts in one process get different directories).
fn unique() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The first output of `exe` over `batches`, concatenated.
fn first_outputs(exe: &Executable, batches: &[Vec<Tensor>]) -> Result<Tensor> {
    let mut parts = Vec::with_capacity(batches.len());
    for b in batches {
        let mut out = exe.run(b)?;
        if out.is_empty() {
            bail!("the model has no outputs");
        }
        parts.push(out.swap_remove(0));
    }
    data::concat_batch(&parts)
}

/// SQNR (dB) and cosine similarity of `out` against `reference`, in f64.
pub fn compare(out: &Tensor, reference: &Tensor) -> (f64, f64) {
    let (o, r) = (out.to_f32_vec(), reference.to_f32_vec());
    let (mut sig, mut noise, mut dot, mut oo) = (0f64, 0f64, 0f64, 0f64);
    for (&a, &b) in o.iter().zip(&r) {
        let (a, b) = (a as f64, b as f64);
        sig += b * b;
        noise += (a - b) * (a - b);
        dot += a * b;
        oo += a * a;
    }
    let sqnr = if noise == 0.0 { f64::INFINITY } else { 10.0 * (sig / noise).log10() };
    let cosine = if sig > 0.0 && oo > 0.0 { dot / (sig.sqrt() * oo.sqrt()) } else { 1.0 };
    (sqnr, cosine)
}
