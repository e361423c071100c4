//! Runs a pipeline: every stage compiled once with its precision policy (the one
//! [`Compiler`] pipeline), then frames run end to end either one after another on one thread
//! ([`Pipeline::run_sequential`]) or pipelined across frames with each stage on its own thread
//! ([`Pipeline::run_pipelined`]): bounded channels between stage threads, a stage with several
//! consumers sending its outputs to each, a stage with several producers taking one message from
//! each per frame. Both modes run the same compiled programs on the same inputs, so a frame's
//! outputs are the same bit for bit.

use super::config::{Config, StageConfig};
use super::graph::{self, Plan, Port, Source};
use crate::compiler::{Compiler, Executable};
use crate::options::PipelineOptions;
use anyhow::{bail, Context, Result};
use qforge_ir::{Tensor, TensorType};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

/// Messages a stage thread may have waiting from each producer: one lets a producer start the
/// next frame while its consumer is busy, without letting it run far ahead (each queued frame
/// adds a stage's time to the end-to-end latency).
const CHANNEL_DEPTH: usize = 1;

/// One stage's outputs for one frame, shared by its consumers.
pub type Outputs = Arc<Vec<Tensor>>;

/// A pipeline, loaded and compiled.
pub struct Pipeline {
    pub config: Config,
    pub plan: Plan,
    /// Per stage, its model's input and output ports.
    pub inputs: Vec<Vec<Port>>,
    pub outputs: Vec<Vec<Port>>,
    /// Per stage, the weights of its compiled graph (bytes of constants).
    pub weight_bytes: Vec<usize>,
    /// Per pipeline input, one tensor per sample frame (axis 0 of its `.npy`, kept as one row).
    samples: Vec<Vec<Tensor>>,
    /// Per stage, the compiled model with its precision policy.
    stages: Vec<Executable>,
    base: PipelineOptions,
}

/// What is kept of a run's outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    Nothing,
    /// The outputs of the stages no stage reads ([`Plan::sinks`]).
    Sinks,
    /// Every stage's outputs.
    All,
}

/// The figures of one run.
#[derive(Clone, Debug)]
pub struct Run {
    pub frames: usize,
    /// Per stage (file order), the time of each frame's run of its model, in ms.
    pub stage_ms: Vec<Vec<f64>>,
    /// Per frame, from the moment a stage takes it from the pipeline input (sequentially: the
    /// moment its first stage starts) to the moment its last output is done, in ms.
    pub end_to_end_ms: Vec<f64>,
    /// From the first frame offered to the last one done, in seconds.
    pub wall_s: f64,
    /// Per frame, per stage, the outputs kept ([`Keep`]).
    pub outputs: Vec<Vec<Option<Outputs>>>,
}

impl Run {
    pub fn fps(&self) -> f64 {
        self.frames as f64 / self.wall_s.max(1e-12)
    }
}

/// The memory one stage's compiled program works in.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct StageMemory {
    /// The JIT program's arena: every intermediate tensor, placed by the liveness plan (`None`
    /// on the interpreter).
    pub arena_bytes: Option<usize>,
    /// The JIT program's scratch per thread (im2col rows, packed tiles).
    pub scratch_bytes: Option<usize>,
    /// The compiled graph's constants (weights).
    pub weight_bytes: usize,
}

/// The process's peak resident set size in bytes (`VmHWM` of `/proc/self/status`: the peak over
/// the process's life, compilation included); `None` where there is no such file.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// `context` for an error of stage `s`.
fn at_stage(cfg: &Config, s: usize) -> String {
    format!("`{}`: stage `{}`", cfg.file, cfg.stages[s].name)
}

impl Pipeline {
    /// Reads `path`, its frames and models, checks the stages' graph and compiles every stage
    /// once with its precision policy over `base` (engine, threads, kernels, limits), using
    /// `make` to build each stage's compiler.
    pub fn load(
        path: &Path,
        base: &PipelineOptions,
        make: &dyn Fn(PipelineOptions) -> Result<Compiler>,
    ) -> Result<Pipeline> {
        let config = Config::read(path)?;
        let mut samples = Vec::new();
        let mut frame_types: Vec<TensorType> = Vec::new();
        for i in &config.inputs {
            let what = format!("`{}`: input `{}`: frames `{}`", config.file, i.name, i.frames.display());
            let x = crate::npy::read(&i.frames).with_context(|| what.clone())?;
            crate::data::check_finite(std::slice::from_ref(&x), &what, crate::data::NonFinite::strict(base.strict))?;
            let n = x.shape().first().copied().unwrap_or(0);
            if n == 0 {
                bail!("{what} holds no frames (frames are the rows of axis 0)");
            }
            let rows = (0..n).map(|k| crate::data::slice_batch(&x, k, k + 1)).collect::<Result<Vec<_>>>()?;
            frame_types.push(TensorType::new(rows[0].dtype(), rows[0].ir_shape()));
            samples.push(rows);
        }
        let mut graphs = Vec::new();
        let mut compilers = Vec::new();
        for (s, st) in config.stages.iter().enumerate() {
            let c = make(st.options(base)).with_context(|| at_stage(&config, s))?;
            let g = c
                .load(&st.model)
                .with_context(|| format!("{}: model `{}`", at_stage(&config, s), st.model.display()))?;
            graphs.push(g);
            compilers.push(c);
        }
        let inputs: Vec<Vec<Port>> = graphs.iter().map(graph::input_ports).collect();
        let outputs: Vec<Vec<Port>> = graphs.iter().map(graph::output_ports).collect();
        let plan = graph::plan(&config, &inputs, &outputs, &frame_types)?;
        let mut stages = Vec::new();
        let mut weight_bytes = Vec::new();
        for (s, (c, g)) in compilers.iter().zip(graphs).enumerate() {
            tracing::info!(
                "pipeline: compiling stage `{}` ({})",
                config.stages[s].name,
                config.stages[s].precision.name()
            );
            let exe = c.compile(g).with_context(|| at_stage(&config, s))?;
            let summary = crate::summary::Summary::of(exe.graph()).with_context(|| at_stage(&config, s))?;
            weight_bytes.push(summary.weight_bytes);
            stages.push(exe);
        }
        Ok(Pipeline { config, plan, inputs, outputs, weight_bytes, samples, stages, base: base.clone() })
    }

    /// The stages compiled with their precision policies.
    pub fn stages(&self) -> &[Executable] {
        &self.stages
    }

    /// The stages compiled in FP32 (the stages whose policy is FP32 shared, not compiled again).
    pub fn fp32_stages(&self, make: &dyn Fn(PipelineOptions) -> Result<Compiler>) -> Result<Vec<Executable>> {
        let fp32 = self.base.fp32_baseline();
        self.config
            .stages
            .iter()
            .enumerate()
            .map(|(s, st)| {
                if st.precision == super::config::StagePrecision::Fp32 {
                    return Ok(self.stages[s].clone());
                }
                let c = make(fp32.clone()).with_context(|| at_stage(&self.config, s))?;
                let g = c.load(&st.model).with_context(|| at_stage(&self.config, s))?;
                c.compile(g).with_context(|| at_stage(&self.config, s))
            })
            .collect()
    }

    /// How many sample frames the pipeline inputs hold (the largest count; a shorter input is
    /// cycled).
    pub fn sample_frames(&self) -> usize {
        self.samples.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// Frame `i`: row `i mod F` of each pipeline input (`F` its number of frames).
    pub fn frame(&self, i: usize) -> Vec<Tensor> {
        self.samples.iter().map(|rows| rows[i % rows.len()].clone()).collect()
    }

    /// The inputs of stage `s`: from the frame or from its producers' outputs.
    fn bind(&self, s: usize, frame: &[Tensor], produced: &dyn Fn(usize) -> Option<Outputs>) -> Result<Vec<Tensor>> {
        self.plan.bindings[s]
            .iter()
            .map(|src| match *src {
                Source::Input(i) => Ok(frame[i].clone()),
                Source::Stage { stage, output } => produced(stage)
                    .and_then(|o| o.get(output).cloned())
                    .with_context(|| format!("stage `{}` ran before its producer", self.config.stages[s].name)),
            })
            .collect()
    }

    fn stage(&self, s: usize) -> &StageConfig {
        &self.config.stages[s]
    }

    /// Runs `frames` frames one after another on this thread, each through the stages in order,
    /// with `exes` (one per stage: [`Pipeline::stages`], or a mix for the cascade study).
    pub fn run_sequential(&self, exes: &[Executable], frames: usize, keep: Keep) -> Result<Run> {
        let n = self.config.stages.len();
        let sinks = self.plan.sinks();
        let inputs: Vec<Vec<Tensor>> = (0..self.sample_frames()).map(|i| self.frame(i)).collect();
        let mut stage_ms = vec![Vec::with_capacity(frames); n];
        let mut e2e = Vec::with_capacity(frames);
        let mut outputs = Vec::new();
        let start = Instant::now();
        for f in 0..frames {
            let frame = &inputs[f % inputs.len()];
            let t0 = Instant::now();
            let mut produced: Vec<Option<Outputs>> = vec![None; n];
            for &s in &self.plan.order {
                let ins = self.bind(s, frame, &|p| produced[p].clone())?;
                let t = Instant::now();
                let out = exes[s].run(&ins).with_context(|| at_stage(&self.config, s))?;
                stage_ms[s].push(t.elapsed().as_secs_f64() * 1e3);
                produced[s] = Some(Arc::new(out));
            }
            e2e.push(t0.elapsed().as_secs_f64() * 1e3);
            match keep {
                Keep::Nothing => {}
                Keep::All => outputs.push(produced),
                Keep::Sinks => outputs
                    .push(produced.into_iter().enumerate().map(|(s, o)| o.filter(|_| sinks.contains(&s))).collect()),
            }
        }
        Ok(Run { frames, stage_ms, end_to_end_ms: e2e, wall_s: start.elapsed().as_secs_f64(), outputs })
    }

    /// Runs `frames` frames pipelined: each stage on its own thread, frames offered as fast as the
    /// first stages take them, or at `rate` frames per second (a camera's rate) when given. A
    /// frame's end-to-end latency runs from the moment the first stage takes it.
    pub fn run_pipelined(&self, frames: usize, rate: Option<f64>, keep: Keep) -> Result<Run> {
        let n = self.config.stages.len();
        let inputs: Vec<Outputs> = (0..self.sample_frames()).map(|i| Arc::new(self.frame(i))).collect();
        // one channel per edge: the frame feeder to each stage reading a pipeline input, and each
        // producer to each of its consumers
        struct Msg {
            frame: usize,
            t0: Instant,
            data: Outputs,
        }
        let mut feeders = Vec::new();
        let mut from_input: Vec<Option<mpsc::Receiver<Msg>>> = (0..n).map(|_| None).collect();
        let mut to: Vec<Vec<mpsc::SyncSender<Msg>>> = (0..n).map(|_| Vec::new()).collect();
        let mut from: Vec<Vec<(usize, mpsc::Receiver<Msg>)>> = (0..n).map(|_| Vec::new()).collect();
        for s in 0..n {
            if self.plan.reads_input[s] {
                let (tx, rx) = mpsc::sync_channel(CHANNEL_DEPTH);
                feeders.push(tx);
                from_input[s] = Some(rx);
            }
            for &p in &self.plan.producers[s] {
                let (tx, rx) = mpsc::sync_channel(CHANNEL_DEPTH);
                to[p].push(tx);
                from[s].push((p, rx));
            }
        }
        let (done_tx, done_rx) = mpsc::channel::<(usize, usize, Instant, Instant, Outputs)>();
        let sinks = self.plan.sinks();
        std::thread::scope(|scope| -> Result<Run> {
            let mut handles = Vec::new();
            for (s, ((input_rx, rxs), txs)) in from_input.into_iter().zip(from).zip(to).enumerate() {
                let done = sinks.contains(&s).then(|| done_tx.clone());
                let exe = &self.stages[s];
                let body = move || -> Result<Vec<f64>> {
                    let mut times = Vec::new();
                    loop {
                        // one message from each feed per frame, in frame order
                        // a frame enters the pipeline when a stage reading a pipeline input takes it
                        let frame_msg = match &input_rx {
                            Some(rx) => match rx.recv() {
                                Ok(m) => Some(Msg { t0: Instant::now(), ..m }),
                                Err(_) => return Ok(times),
                            },
                            None => None,
                        };
                        let mut got: Vec<(usize, Msg)> = Vec::with_capacity(rxs.len());
                        for (p, rx) in &rxs {
                            match rx.recv() {
                                Ok(m) => got.push((*p, m)),
                                Err(_) => return Ok(times),
                            }
                        }
                        let first =
                            frame_msg.as_ref().or(got.first().map(|g| &g.1)).context("a stage with no inputs")?;
                        let frame = first.frame;
                        let t0 = got
                            .iter()
                            .map(|(_, m)| m.t0)
                            .chain(frame_msg.as_ref().map(|m| m.t0))
                            .min()
                            .unwrap_or(first.t0);
                        if got.iter().any(|(_, m)| m.frame != frame) {
                            bail!("{}: frames arrived out of order", at_stage(&self.config, s));
                        }
                        let empty: &[Tensor] = &[];
                        let frame_inputs = frame_msg.as_ref().map_or(empty, |m| m.data.as_slice());
                        let ins = self.bind(s, frame_inputs, &|p| {
                            got.iter().find(|(q, _)| *q == p).map(|(_, m)| m.data.clone())
                        })?;
                        let t = Instant::now();
                        let out = Arc::new(exe.run(&ins).with_context(|| at_stage(&self.config, s))?);
                        times.push(t.elapsed().as_secs_f64() * 1e3);
                        for tx in &txs {
                            if tx.send(Msg { frame, t0, data: out.clone() }).is_err() {
                                return Ok(times);
                            }
                        }
                        if let Some(d) = &done {
                            let _ = d.send((s, frame, t0, Instant::now(), out));
                        }
                    }
                };
                let h = std::thread::Builder::new()
                    .name(format!("stage-{}", self.stage(s).name))
                    .spawn_scoped(scope, body)
                    .context("cannot start a stage thread")?;
                handles.push(h);
            }
            drop(done_tx);
            let start = Instant::now();
            // feed the frames; a send fails only when the stage has stopped on an error
            'feed: for f in 0..frames {
                if let Some(r) = rate {
                    let due = start + std::time::Duration::from_secs_f64(f as f64 / r);
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                }
                let data = inputs[f % inputs.len()].clone();
                let t0 = Instant::now();
                for tx in &feeders {
                    if tx.send(Msg { frame: f, t0, data: data.clone() }).is_err() {
                        break 'feed;
                    }
                }
            }
            drop(feeders);
            let mut last_done: Vec<Option<Instant>> = vec![None; frames];
            let mut first_offer: Vec<Option<Instant>> = vec![None; frames];
            let mut outputs: Vec<Vec<Option<Outputs>>> =
                if keep == Keep::Nothing { vec![] } else { vec![vec![None; n]; frames] };
            for (s, f, t0, t, out) in done_rx {
                first_offer[f] = Some(t0);
                last_done[f] = Some(last_done[f].map_or(t, |d| d.max(t)));
                if keep != Keep::Nothing {
                    outputs[f][s] = Some(out);
                }
            }
            let mut stage_ms = vec![Vec::new(); n];
            for (s, h) in handles.into_iter().enumerate() {
                match h.join() {
                    Ok(r) => stage_ms[s] = r?,
                    Err(_) => bail!("{}: the stage thread panicked", at_stage(&self.config, s)),
                }
            }
            let mut e2e = Vec::with_capacity(frames);
            let mut end = start;
            for (t0, t) in first_offer.iter().zip(&last_done) {
                let (Some(t0), Some(t)) = (t0, t) else { bail!("a frame did not reach every output") };
                e2e.push(t.duration_since(*t0).as_secs_f64() * 1e3);
                end = end.max(*t);
            }
            Ok(Run { frames, stage_ms, end_to_end_ms: e2e, wall_s: end.duration_since(start).as_secs_f64(), outputs })
        })
    }

    /// The working memory of each stage's compiled program for frame 0's inputs (runs frame 0
    /// once, sequentially, which also generates the JIT programs).
    pub fn memory(&self) -> Result<Vec<StageMemory>> {
        let frame = self.frame(0);
        let n = self.config.stages.len();
        let mut produced: Vec<Option<Outputs>> = vec![None; n];
        let mut mem = vec![StageMemory { arena_bytes: None, scratch_bytes: None, weight_bytes: 0 }; n];
        for &s in &self.plan.order {
            let ins = self.bind(s, &frame, &|p| produced[p].clone())?;
            produced[s] = Some(Arc::new(self.stages[s].run(&ins).with_context(|| at_stage(&self.config, s))?));
            mem[s].weight_bytes = self.weight_bytes[s];
            if let Some(j) = self.stages[s].jit().filter(|j| j.interpreted().is_none()) {
                let p = j.program(&ins).with_context(|| at_stage(&self.config, s))?;
                mem[s].arena_bytes = Some(p.report.arena_bytes);
                mem[s].scratch_bytes = Some(p.report.scratch_bytes);
            }
        }
        Ok(mem)
    }
}
