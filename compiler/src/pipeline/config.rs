//! `PIPELINE.toml`: the stages of a multi-model pipeline, each a model with its precision policy,
//! a latency budget and where its inputs come from; the pipeline inputs (sample frames); and the
//! end-to-end budget. Read and checked here for everything that needs no model
//! ([`super::graph`] checks what needs the models: cycles, outputs, shapes and dtypes).
//!
//! ```toml
//! name = "perception-planning-control"
//!
//! [input.camera]
//! frames = "frames.npy"          # samples on axis 0; frame i is row i (cycled)
//!
//! [budget]                       # optional, end to end
//! latency_ms = 40.0              # per-frame latency, first offer to last output
//! fps = 100.0                    # frames per second at least
//! memory_mb = 512                # process peak RSS at most
//! statistic = "p99"              # what latency budgets are checked against: "p99" (default) or "mean"
//!
//! [[stage]]
//! name = "detector"
//! model = "detector.onnx"        # relative to this file
//! precision = "int8"             # int8 | fp16 | bf16 | amp | fp32 (default)
//! calib = "calib.npy"            # int8: calibration inputs
//! qconfig = "detector.qconfig.toml"  # optional per-layer policy
//! budget_ms = 15.0
//! from = "camera"                # a pipeline input, or "stage.output" (output by name or `outK`)
//!
//! [[stage]]
//! name = "control"
//! model = "control.onnx"
//! from = { tokens = "planner.tokens", boxes = "detector.boxes" }  # by model input name
//! # or from = ["planner.out0", "detector.out1"], in the model's input order
//! ```

use crate::options::{PipelineOptions, Precision, QuantizeMode};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// A pipeline file that cannot be used: each a one-line message naming the file (and the line or
/// the stage where there is one).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The file cannot be read.
    #[error("cannot read pipeline `{file}`")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or not the pipeline's keys.
    #[error("`{file}`{}: {msg}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Syntax { file: String, line: Option<usize>, msg: String },
    /// A stage setting that cannot be used.
    #[error("`{file}` line {line}: stage `{stage}`: {msg}")]
    Stage { file: String, line: usize, stage: String, msg: String },
    /// A stage input names neither a pipeline input nor a stage.
    #[error("`{file}`: stage `{stage}`: `{source_name}` names no pipeline input or stage (inputs: {inputs}; stages: {stages})")]
    UnknownSource { file: String, stage: String, source_name: String, inputs: String, stages: String },
    /// A stage input names an output its producer does not have.
    #[error("`{file}`: stage `{stage}`: `{output}` names no output of stage `{producer}` (its outputs: {outputs})")]
    UnknownOutput { file: String, stage: String, producer: String, output: String, outputs: String },
    /// The stages' inputs form a cycle.
    #[error("`{file}`: stage `{stage}` is on a cycle: {cycle}")]
    Cycle { file: String, stage: String, cycle: String },
    /// What a stage is given does not fit its model's input.
    #[error("`{file}`: stage `{stage}`: input `{}` is {}, but `{}` gives {}", .types.input, .types.want, .types.source_name, .types.got)]
    Mismatch { file: String, stage: String, types: Box<Mismatch> },
    /// The stage's inputs do not cover its model's inputs.
    #[error("`{file}`: stage `{stage}`: {msg}")]
    Inputs { file: String, stage: String, msg: String },
}

/// What a stage input takes and what its source gives.
#[derive(Debug)]
pub struct Mismatch {
    /// The model input.
    pub input: String,
    /// Its source as written (`camera`, `detector.features`).
    pub source_name: String,
    /// The model input's type and the source's.
    pub want: String,
    pub got: String,
}

/// A stage's precision policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StagePrecision {
    Fp32,
    Int8,
    Fp16,
    Bf16,
    Amp,
}

impl StagePrecision {
    fn parse(s: &str) -> Option<StagePrecision> {
        Some(match s {
            "fp32" => StagePrecision::Fp32,
            "int8" => StagePrecision::Int8,
            "fp16" => StagePrecision::Fp16,
            "bf16" => StagePrecision::Bf16,
            "amp" => StagePrecision::Amp,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            StagePrecision::Fp32 => "fp32",
            StagePrecision::Int8 => "int8",
            StagePrecision::Fp16 => "fp16",
            StagePrecision::Bf16 => "bf16",
            StagePrecision::Amp => "amp",
        }
    }
}

/// Where a stage's inputs come from, as written.
#[derive(Clone, Debug)]
pub enum Sources {
    /// One source per model input, in the model's input order.
    Ordered(Vec<String>),
    /// Sources by model input name.
    Named(BTreeMap<String, String>),
}

/// One stage, with its paths resolved against the pipeline file's directory.
#[derive(Clone, Debug)]
pub struct StageConfig {
    pub name: String,
    pub model: PathBuf,
    pub precision: StagePrecision,
    pub calib: Option<PathBuf>,
    pub qconfig: Option<PathBuf>,
    /// The stage's latency budget (ms), checked against [`Budget::statistic`] of its run time.
    pub budget_ms: Option<f64>,
    pub from: Sources,
    /// The line of its `[[stage]]` table (for messages).
    pub line: usize,
}

impl StageConfig {
    /// The pipeline options that compile this stage: its precision policy over `base` (engine,
    /// threads, kernels, limits), `--calib` and `--qconfig` from the stage.
    pub fn options(&self, base: &PipelineOptions) -> PipelineOptions {
        let mut o = base.fp32_baseline();
        match self.precision {
            StagePrecision::Fp32 => {}
            StagePrecision::Int8 => o.quantize = QuantizeMode::Int8,
            StagePrecision::Fp16 => o.precision = Precision::Fp16,
            StagePrecision::Bf16 => o.precision = Precision::Bf16,
            StagePrecision::Amp => o.precision = Precision::Amp,
        }
        o.calib = self.calib.clone();
        o.qconfig = self.qconfig.clone();
        o
    }
}

/// The statistic latency budgets are checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Statistic {
    Mean,
    P99,
}

impl Statistic {
    pub fn name(self) -> &'static str {
        match self {
            Statistic::Mean => "mean",
            Statistic::P99 => "p99",
        }
    }
}

/// The end-to-end budget.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Budget {
    pub latency_ms: Option<f64>,
    pub fps: Option<f64>,
    pub memory_mb: Option<f64>,
    pub statistic: Statistic,
}

/// A pipeline input: sample frames on axis 0.
#[derive(Clone, Debug)]
pub struct InputConfig {
    pub name: String,
    pub frames: PathBuf,
}

/// A pipeline file, read.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file, as given (for messages).
    pub file: String,
    pub name: String,
    pub inputs: Vec<InputConfig>,
    pub stages: Vec<StageConfig>,
    pub budget: Budget,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    name: Option<String>,
    #[serde(default)]
    input: BTreeMap<String, InputToml>,
    budget: Option<BudgetToml>,
    #[serde(default)]
    stage: Vec<Spanned<StageToml>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputToml {
    frames: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetToml {
    latency_ms: Option<f64>,
    fps: Option<f64>,
    memory_mb: Option<f64>,
    statistic: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StageToml {
    name: String,
    model: PathBuf,
    precision: Option<String>,
    calib: Option<PathBuf>,
    qconfig: Option<PathBuf>,
    budget_ms: Option<f64>,
    from: FromToml,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FromToml {
    One(String),
    Ordered(Vec<String>),
    Named(BTreeMap<String, String>),
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// A budget value: a positive finite number.
fn positive(v: Option<f64>) -> Option<bool> {
    v.map(|x| x.is_finite() && x > 0.0)
}

impl Config {
    /// Reads and checks `path`.
    pub fn read(path: &Path) -> Result<Config, PipelineError> {
        let file = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| PipelineError::Read { file: file.clone(), source })?;
        Config::parse(&text, &file, path.parent().unwrap_or(Path::new("")))
    }

    /// Parses the text of a pipeline file named `file`, resolving paths against `dir`.
    pub fn parse(text: &str, file: &str, dir: &Path) -> Result<Config, PipelineError> {
        let syntax = |line: Option<usize>, msg: String| PipelineError::Syntax { file: file.to_string(), line, msg };
        let raw: FileToml = toml::from_str(text)
            .map_err(|e| syntax(e.span().map(|s| line_of(text, s.start)), e.message().trim().replace('\n', " ")))?;
        if raw.stage.is_empty() {
            return Err(syntax(None, "no stages: add a [[stage]] table for each model".into()));
        }
        if raw.input.is_empty() {
            return Err(syntax(None, "no pipeline inputs: add an [input.NAME] table with `frames = \"X.npy\"`".into()));
        }
        let budget = match raw.budget {
            None => Budget { latency_ms: None, fps: None, memory_mb: None, statistic: Statistic::P99 },
            Some(b) => {
                for (key, v) in [("latency_ms", b.latency_ms), ("fps", b.fps), ("memory_mb", b.memory_mb)] {
                    if positive(v) == Some(false) {
                        return Err(syntax(None, format!("[budget] {key} must be a positive number")));
                    }
                }
                let statistic = match b.statistic.as_deref() {
                    None | Some("p99") => Statistic::P99,
                    Some("mean") => Statistic::Mean,
                    Some(other) => {
                        return Err(syntax(None, format!("[budget] statistic `{other}` is not `p99` or `mean`")))
                    }
                };
                Budget { latency_ms: b.latency_ms, fps: b.fps, memory_mb: b.memory_mb, statistic }
            }
        };
        let inputs: Vec<InputConfig> =
            raw.input.into_iter().map(|(name, i)| InputConfig { name, frames: dir.join(i.frames) }).collect();
        let mut stages: Vec<StageConfig> = Vec::new();
        for s in raw.stage {
            let line = line_of(text, s.span().start);
            let s = s.into_inner();
            let err = |msg: String| PipelineError::Stage { file: file.to_string(), line, stage: s.name.clone(), msg };
            if s.name.is_empty() || s.name.contains('.') {
                return Err(err(
                    "a stage name must be non-empty and contain no `.` (it names outputs as `stage.output`)".into(),
                ));
            }
            if stages.iter().any(|o| o.name == s.name) || inputs.iter().any(|i| i.name == s.name) {
                return Err(err("the name is used twice (stage and input names must all differ)".into()));
            }
            let precision = match s.precision.as_deref() {
                None => StagePrecision::Fp32,
                Some(p) => StagePrecision::parse(p)
                    .ok_or_else(|| err(format!("precision `{p}` is not one of int8, fp16, bf16, amp, fp32")))?,
            };
            if precision == StagePrecision::Int8 && s.calib.is_none() {
                return Err(err("precision `int8` needs calibration inputs: add `calib = \"X.npy\"`".into()));
            }
            if precision != StagePrecision::Int8 && s.calib.is_some() {
                return Err(err(format!("`calib` is for precision `int8`; this stage is `{}`", precision.name())));
            }
            if positive(s.budget_ms) == Some(false) {
                return Err(err("budget_ms must be a positive number".into()));
            }
            let from = match s.from {
                FromToml::One(src) => Sources::Ordered(vec![src]),
                FromToml::Ordered(v) if v.is_empty() => return Err(err("`from` lists no inputs".into())),
                FromToml::Ordered(v) => Sources::Ordered(v),
                FromToml::Named(m) if m.is_empty() => return Err(err("`from` lists no inputs".into())),
                FromToml::Named(m) => Sources::Named(m),
            };
            stages.push(StageConfig {
                model: dir.join(&s.model),
                calib: s.calib.map(|c| dir.join(c)),
                qconfig: s.qconfig.map(|q| dir.join(q)),
                name: s.name,
                precision,
                budget_ms: s.budget_ms,
                from,
                line,
            });
        }
        let name = raw.name.unwrap_or_else(|| {
            Path::new(file).file_stem().map_or("pipeline".into(), |s| s.to_string_lossy().into_owned())
        });
        Ok(Config { file: file.to_string(), name, inputs, stages, budget })
    }
}
