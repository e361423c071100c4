//! The pipeline options every command shares (DESIGN.md, "Command line"): the flags as the user
//! gave them. [`crate::Compiler::new`] resolves them once (qconfig merged with the flags, the
//! hardware profile, the precision configuration, the evaluator); nothing else interprets them.

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use qforge_ir::Tensor;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// How (and whether) to quantize.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantizeMode {
    /// Keep the model's own precision (a QDQ or QAT model keeps its Q/DQ).
    #[default]
    None,
    /// Static INT8 post-training quantization with calibration.
    Int8,
    /// Dynamic quantization: INT8 weights, activations quantized per batch at run time.
    Dynamic,
}

pub use qforge_passes::quantize::observer::CalibMethod;

/// Floating-point precision policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Fp16,
    Bf16,
    Amp,
}

/// A setting turned on or off (`--bias-correction on|off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    On,
    Off,
}

impl Switch {
    pub fn on(self) -> bool {
        self == Switch::On
    }
}

/// How static INT8 rounds weights (`--rounding`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RoundingArg {
    /// Round half to even, as ONNX Runtime's quantizer does.
    Nearest,
    /// AdaRound: each weight rounded up or down as fitted on --calib to reconstruct its layer's
    /// float output.
    Adaround,
}

impl RoundingArg {
    pub fn rounding(self) -> qforge_passes::quantize::Rounding {
        match self {
            RoundingArg::Nearest => qforge_passes::quantize::Rounding::Nearest,
            RoundingArg::Adaround => qforge_passes::quantize::Rounding::AdaRound,
        }
    }
}

/// Which engine runs the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// The Cranelift JIT.
    #[default]
    Jit,
    /// The reference interpreter.
    Interp,
}

/// Which GEMM microkernels the JIT calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// Rust intrinsics kernels for this CPU (AVX-512 VNNI / FMA when present), registered as JIT symbols.
    #[default]
    Native,
    /// GEMMs emitted by Cranelift itself with 128-bit vectors.
    Cranelift,
}

/// How bf16 convolutions and matrix products compute on the JIT (`--bf16-kernels`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bf16Kernels {
    /// bf16 kernels (`vdpbf16ps`) where this CPU runs them faster than f32 FMA (measured once
    /// per process), the f32 kernels elsewhere.
    #[default]
    Auto,
    /// bf16 kernels wherever the CPU has AVX512-BF16.
    Dot,
    /// f32 kernels on the exactly widened bf16 values, each result rounded once to bf16.
    F32,
}

/// Options that choose what happens between import and execution.
#[derive(Clone, Debug, Args, serde::Serialize)]
pub struct PipelineOptions {
    /// Quantization: none keeps the model's precision.
    #[arg(long, value_enum, default_value_t = QuantizeMode::None)]
    pub quantize: QuantizeMode,
    /// Calibration inputs, samples on axis 0: a .npy for a model with one input, a .npz with one
    /// array per input name (numpy.savez) for several.
    #[arg(long, value_name = "X.npy|X.npz")]
    pub calib: Option<PathBuf>,
    /// Calibration observer.
    #[arg(long, value_name = "minmax|ema|percentile|entropy|mse", value_parser = parse_calib_method)]
    #[serde(serialize_with = "serialize_method")]
    pub calib_method: Option<CalibMethod>,
    /// Calibration samples per run.
    #[arg(long, default_value_t = 50, value_name = "N", value_parser = parse_count)]
    pub calib_batch: usize,
    /// Quantize weights per output channel (the default).
    #[arg(long, overrides_with = "per_tensor")]
    pub per_channel: bool,
    /// Quantize weights with one scale per tensor.
    #[arg(long)]
    pub per_tensor: bool,
    /// Symmetric quantization (zero point 0).
    #[arg(long, overrides_with = "asymmetric")]
    pub symmetric: bool,
    /// Asymmetric quantization.
    #[arg(long)]
    pub asymmetric: bool,
    /// Floating-point precision.
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    /// Hardware profile: a shipped name (host, nvidia-xavier, qualcomm-snapdragon, intel-movidius,
    /// arm-cortex-a78) or a TOML file.
    #[arg(long, value_name = "NAME|FILE")]
    pub profile: Option<String>,
    /// Overrides of the mixed-precision policy (TOML: op classes, force_fp32 name patterns,
    /// overflow_margin).
    #[arg(long, value_name = "FILE")]
    pub precision_config: Option<PathBuf>,
    /// Per-layer quantization policy (TOML).
    #[arg(long, value_name = "FILE")]
    pub qconfig: Option<PathBuf>,
    /// SmoothQuant before static INT8: migrate layer-norm outlier channels into the weights of
    /// the matmuls they feed, with migration strength ALPHA in [0, 1] (0.5 is the usual value;
    /// overrides the qconfig's `[smoothquant] alpha`).
    #[arg(long, value_name = "ALPHA", value_parser = parse_alpha)]
    pub smooth: Option<f64>,
    /// Bias correction with static INT8: subtract from each conv, gemm and linear layer's bias
    /// the mean output error its weight rounding causes on --calib (on by default; overrides the
    /// qconfig's `[bias_correction] enabled`).
    #[arg(long, value_enum, value_name = "ON|OFF")]
    pub bias_correction: Option<Switch>,
    /// With static INT8, round a graph output that a conv, gemm or matmul computes to 8 bits, as
    /// ONNX Runtime's quantize_static does (off by default: the integer kernel returns it in f32;
    /// overrides the qconfig's `[outputs] quantize`).
    #[arg(long, value_enum, value_name = "ON|OFF")]
    pub quantize_outputs: Option<Switch>,
    /// How static INT8 rounds weights: `nearest` (round half to even, the default) or `adaround`
    /// (learned rounding: each conv, gemm and matmul weight rounded up or down as fitted on
    /// --calib to reconstruct the layer's float output; overrides the qconfig's `rounding`; the
    /// qconfig's `[adaround]` table sets the fit).
    #[arg(long, value_enum, value_name = "NEAREST|ADAROUND")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rounding: Option<RoundingArg>,
    /// Automatic fallback, measured on --calib: with --quantize int8, keep the most sensitive
    /// layers (ranked by a sensitivity study) in float; with --precision fp16|bf16|amp, keep the
    /// shortest prefix of low-precision ops in f32; either until the output SQNR against fp32
    /// reaches DB.
    #[arg(long, value_name = "DB", value_parser = parse_sqnr_target)]
    pub min_sqnr: Option<f64>,
    /// Execution engine.
    #[arg(long, value_enum, default_value_t = Engine::Jit)]
    pub engine: Engine,
    /// JIT: threads per kernel.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
    /// JIT: which GEMM microkernels generated code calls.
    #[arg(long, value_enum, default_value_t = Kernels::Native)]
    pub kernels: Kernels,
    /// JIT: how bf16 convolutions and matrix products compute (the same bf16 dot product, a
    /// different speed and summation order).
    #[arg(long, value_enum, default_value_t = Bf16Kernels::Auto)]
    pub bf16_kernels: Bf16Kernels,
    /// 0: the graph as imported; 1 and 2: the optimizations that exist (2 is the default).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub opt_level: u8,
    /// Largest tensor any stage may create, in bytes (import, constant folding, both engines).
    #[arg(long, default_value_t = DEFAULT_MAX_TENSOR_BYTES, value_name = "BYTES")]
    pub max_tensor_bytes: u64,
    /// Refuse input data that the model cannot represent (NaN or infinite values in --input or
    /// --calib) instead of warning about it.
    #[arg(long)]
    pub strict: bool,
    /// Compile the model for one value of graph input NAME, read from X.npy (repeatable): the
    /// input becomes that constant, so what it feeds (a Reshape's shape, a Slice's bounds, a
    /// scale) may be one; it is no longer fed at run time, and an artifact records the value.
    /// ONNX models only.
    #[arg(long, value_name = "NAME=X.npy", value_parser = parse_specialize)]
    #[serde(skip)]
    pub specialize: Vec<SpecializeArg>,
}

/// One `--specialize NAME=X.npy`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecializeArg {
    /// The graph input.
    pub name: String,
    /// The `.npy` file holding its value.
    pub path: PathBuf,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            quantize: QuantizeMode::None,
            calib: None,
            calib_method: None,
            calib_batch: 50,
            per_channel: false,
            per_tensor: false,
            symmetric: false,
            asymmetric: false,
            precision: Precision::Fp32,
            profile: None,
            precision_config: None,
            qconfig: None,
            smooth: None,
            bias_correction: None,
            quantize_outputs: None,
            rounding: None,
            min_sqnr: None,
            engine: Engine::Jit,
            threads: 1,
            kernels: Kernels::Native,
            bf16_kernels: Bf16Kernels::Auto,
            opt_level: 2,
            max_tensor_bytes: DEFAULT_MAX_TENSOR_BYTES,
            strict: false,
            specialize: vec![],
        }
    }
}

/// The default of `--max-tensor-bytes`: the one limit every stage shares (2 GiB).
pub const DEFAULT_MAX_TENSOR_BYTES: u64 = qforge_ir::DEFAULT_MAX_TENSOR_BYTES;

impl PipelineOptions {
    /// The same pipeline without quantization or reduced precision: the "fp32" every comparison
    /// (`eval`'s `fp32_top1`, `report`, `demo`) measures against. Engine, threads, kernels,
    /// profile, opt level and limits stay as given.
    pub fn fp32_baseline(&self) -> PipelineOptions {
        PipelineOptions {
            quantize: QuantizeMode::None,
            calib: None,
            calib_method: None,
            qconfig: None,
            smooth: None,
            bias_correction: None,
            quantize_outputs: None,
            rounding: None,
            min_sqnr: None,
            precision: Precision::Fp32,
            precision_config: None,
            ..self.clone()
        }
    }

    /// Whether the pipeline changes the model's numbers (quantization, reduced precision, or a
    /// qconfig that may hold fp16/bf16 regions): then [`PipelineOptions::fp32_baseline`] is a
    /// different model worth comparing against.
    pub fn changes_numerics(&self) -> bool {
        self.quantize != QuantizeMode::None || self.precision != Precision::Fp32 || self.qconfig.is_some()
    }

    /// The values of `--specialize`, read from their files, by input name (a name given twice is
    /// an error).
    pub fn specialize_values(&self) -> Result<BTreeMap<String, Arc<Tensor>>> {
        let mut out = BTreeMap::new();
        for a in &self.specialize {
            if out.contains_key(&a.name) {
                bail!("--specialize gives input `{}` twice", a.name);
            }
            out.insert(a.name.clone(), Arc::new(crate::npy::read(&a.path)?));
        }
        Ok(out)
    }

    /// The largest tensor any stage may create, as the passes and the engines take it.
    pub fn tensor_limit(&self) -> u128 {
        self.max_tensor_bytes as u128
    }
}

/// A count that must be at least 1 (batch sizes, iterations): the one rule for every such flag.
pub(crate) fn parse_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

/// `--specialize NAME=X.npy`.
fn parse_specialize(s: &str) -> Result<SpecializeArg, String> {
    match s.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok(SpecializeArg { name: name.to_string(), path: PathBuf::from(path) })
        }
        _ => Err(format!("`{s}` is not NAME=X.npy (a graph input's name and the file of its value)")),
    }
}

/// `--smooth`: a migration strength in [0, 1].
fn parse_alpha(s: &str) -> Result<f64, String> {
    let a: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&a) {
        Ok(a)
    } else {
        Err(format!("{a} is not in [0, 1]"))
    }
}

/// `--calib-method`: the observer names of [`CalibMethod`]'s `FromStr`, the one list of them.
pub(crate) fn parse_calib_method(s: &str) -> Result<CalibMethod, String> {
    s.parse().map_err(|e: qforge_passes::quantize::ParseCalibMethodError| e.to_string())
}

fn serialize_method<S: serde::Serializer>(m: &Option<CalibMethod>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => s.serialize_str(m.name()),
        None => s.serialize_none(),
    }
}

fn parse_sqnr_target(s: &str) -> Result<f64, String> {
    let db: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number of dB"))?;
    qforge_passes::precision::policy::check_sqnr_target(db).map_err(|e| e.to_string())?;
    Ok(db)
}
