//! Python keyword arguments to [`PipelineOptions`]: the same fields the CLI's flags set, with the
//! CLI's defaults and the CLI's value checks, so a call and the command with the same options
//! build the same `Compiler`.

use crate::errors::{BadOption, Error, Kind, Result};
use qforge::options::{CalibMethod, Engine, Kernels, Precision, QuantizeMode};
use qforge::{Compiler, PipelineOptions};
use std::path::PathBuf;

fn bad(msg: String) -> Error {
    Error::from_anyhow(BadOption(msg).into(), Kind::Option)
}

pub fn quantize_mode(s: &str) -> Result<QuantizeMode> {
    match s.to_ascii_lowercase().as_str() {
        "int8" => Ok(QuantizeMode::Int8),
        "dynamic" => Ok(QuantizeMode::Dynamic),
        _ => Err(bad(format!("mode `{s}`: expected \"int8\" or \"dynamic\""))),
    }
}

pub fn precision(s: &str) -> Result<Precision> {
    match s.to_ascii_lowercase().as_str() {
        "fp32" => Ok(Precision::Fp32),
        "fp16" => Ok(Precision::Fp16),
        "bf16" => Ok(Precision::Bf16),
        "amp" => Ok(Precision::Amp),
        _ => Err(bad(format!("precision `{s}`: expected \"fp16\", \"bf16\", \"amp\" or \"fp32\""))),
    }
}

pub fn engine(s: &str) -> Result<Engine> {
    match s.to_ascii_lowercase().as_str() {
        "jit" => Ok(Engine::Jit),
        "interp" => Ok(Engine::Interp),
        _ => Err(bad(format!("engine `{s}`: expected \"jit\" or \"interp\""))),
    }
}

pub fn kernels(s: &str) -> Result<Kernels> {
    match s.to_ascii_lowercase().as_str() {
        "native" => Ok(Kernels::Native),
        "cranelift" => Ok(Kernels::Cranelift),
        _ => Err(bad(format!("kernels `{s}`: expected \"native\" or \"cranelift\""))),
    }
}

pub fn calib_method(s: &str) -> Result<CalibMethod> {
    s.parse().map_err(|e: qforge_passes::quantize::ParseCalibMethodError| bad(format!("method: {e}")))
}

/// A count that must be at least 1 (the CLI's one rule for counts).
pub fn count(name: &str, n: i64) -> Result<usize> {
    if n < 1 {
        return Err(bad(format!("{name} must be at least 1, got {n}")));
    }
    usize::try_from(n).map_err(|_| bad(format!("{name} {n} is too large")))
}

pub fn threads(n: i64) -> Result<u16> {
    match u16::try_from(n) {
        Ok(t) if (1..=256).contains(&t) => Ok(t),
        _ => Err(bad(format!("threads must be in 1..=256, got {n}"))),
    }
}

pub fn opt_level(n: i64) -> Result<u8> {
    match u8::try_from(n) {
        Ok(l) if l <= 2 => Ok(l),
        _ => Err(bad(format!("opt_level must be 0, 1 or 2, got {n}"))),
    }
}

pub fn smooth(a: Option<f64>) -> Result<Option<f64>> {
    match a {
        Some(a) if !(0.0..=1.0).contains(&a) => Err(bad(format!("smooth {a} is not in [0, 1]"))),
        a => Ok(a),
    }
}

pub fn min_sqnr(db: Option<f64>) -> Result<Option<f64>> {
    if let Some(db) = db {
        qforge_passes::precision::policy::check_sqnr_target(db).map_err(|e| bad(format!("min_sqnr: {e}")))?;
    }
    Ok(db)
}

/// A qconfig given as a file, or as a dict (kept as the TOML text it stands for).
#[derive(Clone, Debug)]
pub enum QConfigArg {
    Path(PathBuf),
    Toml(String),
}

/// Pipeline options plus a qconfig that may exist only as text: [`Options::materialize`] writes
/// it to a temporary file for as long as the library needs to read it (the library reads a
/// qconfig from its path).
#[derive(Clone, Debug)]
pub struct Options {
    pub pipeline: PipelineOptions,
    pub qconfig: Option<QConfigArg>,
}

/// Options with their qconfig on disk: the directory lives as long as this does.
pub struct Materialized {
    pub pipeline: PipelineOptions,
    pub dir: Option<tempfile::TempDir>,
}

impl Materialized {
    /// An error message with the temporary qconfig's path replaced by what the user gave.
    pub fn rename_err(&self, e: Error) -> Error {
        let Some(dir) = &self.dir else { return e };
        let path = dir.path().join(QCONFIG_FILE).display().to_string();
        let text = format!("{:#}", e.error);
        if !text.contains(&path) {
            return e;
        }
        let text = text
            .replace(&format!("qconfig `{path}`"), "the qconfig dict")
            .replace(&format!("`{path}`"), "the qconfig dict")
            .replace(&path, "the qconfig dict");
        Error { kind: e.kind, error: anyhow::anyhow!("{text}") }
    }
}

const QCONFIG_FILE: &str = "qconfig.toml";

impl Options {
    pub fn new(pipeline: PipelineOptions) -> Options {
        Options { pipeline, qconfig: None }
    }

    /// The options with the qconfig (if any) as a file the library can read.
    pub fn materialize(&self) -> Result<Materialized> {
        let mut pipeline = self.pipeline.clone();
        match &self.qconfig {
            None => Ok(Materialized { pipeline, dir: None }),
            Some(QConfigArg::Path(p)) => {
                pipeline.qconfig = Some(p.clone());
                Ok(Materialized { pipeline, dir: None })
            }
            Some(QConfigArg::Toml(text)) => {
                let dir = tempfile::Builder::new()
                    .prefix("qforge-py-")
                    .tempdir()
                    .map_err(|e| Error::new(Kind::File, format!("cannot create a temporary directory: {e}")))?;
                let path = dir.path().join(QCONFIG_FILE);
                std::fs::write(&path, text)
                    .map_err(|e| Error::new(Kind::File, format!("cannot write `{}`: {e}", path.display())))?;
                pipeline.qconfig = Some(path);
                Ok(Materialized { pipeline, dir: Some(dir) })
            }
        }
    }

    /// The compiler for these options (the qconfig read once, into the compiler).
    pub fn compiler(&self) -> Result<Compiler> {
        let m = self.materialize()?;
        Compiler::new(m.pipeline.clone()).map_err(|e| m.rename_err(Error::from_anyhow(e, Kind::Option)))
    }
}

/// A qconfig dict as TOML text: tables as tables, lists of tables (`node = [{...}]`) as arrays of
/// tables.
pub fn qconfig_toml(v: &serde_json::Value) -> Result<String> {
    if !v.is_object() {
        return Err(bad("qconfig: a dict (the TOML file's tables) or a path".to_string()));
    }
    toml::to_string(v).map_err(|e| bad(format!("qconfig: the dict has no TOML form: {e}")))
}

/// The options that only change how a compiled graph runs; the rest stay at their defaults (what
/// an artifact, whose graph is fixed, is run with).
pub fn runtime_only(opts: &PipelineOptions) -> PipelineOptions {
    PipelineOptions {
        engine: opts.engine,
        threads: opts.threads,
        kernels: opts.kernels,
        max_tensor_bytes: opts.max_tensor_bytes,
        ..PipelineOptions::default()
    }
}
