//! Hardware profiles: what a deployment target can compute and what it costs, as data (TOML).
//!
//! The shipped profiles live in `passes/profiles/*.toml` and are embedded with `include_str!`;
//! [`Profile::shipped`] finds one by name, [`Profile::parse`] reads a user's file (the `qforge`
//! crate reads the file: passes never touch files). `host` is special: [`Profile::shipped`]
//! returns `host.toml` with the CPU's features detected ([`Profile::host`]), while
//! [`Profile::host_base`] is the file as written (deterministic, for snapshots).
//!
//! A profile decides which dtypes exist (`int8`, `int4`, `fp16`, `bf16`; f32 always does), the
//! preferred layout, the channel alignment (the padding pass pads conv and gemm output channels
//! to it), the preferred batch, the low-precision dtype `--precision amp` uses, and the cost table
//! the optimizer extracts with ([`Profile::cost`], [`Profile::op_cost`]), and the export
//! conventions of the target's toolchain (the optional `[export]` table,
//! [`super::conventions`]: what `qforge quantize --profile` writes).
//!
//! # Format
//! Every field is required and unknown fields are errors (a misspelt key must not be ignored):
//!
//! ```toml
//! name = "my-board"
//! description = "what it is"
//! [dtypes]                     # f32 always exists
//! int8 = true
//! int4 = false
//! fp16 = true
//! bf16 = false
//! [features]
//! vnni = false                 # x86 AVX-512 VNNI / AVX-VNNI
//! int8_dot_product = true      # any 4-way int8 dot product (VNNI, SDOT, dp4a)
//! tensor_cores = false
//! fp16_compute = true          # arithmetic in fp16, not only storage
//! bf16_compute = false
//! [layout]
//! preferred = "NCHW"           # or "NHWC"
//! channel_align = 1            # pad conv/gemm output channels to a multiple of this
//! preferred_batch = 1
//! [amp]
//! low = "f16"                  # the type --precision amp uses: "f16" or "bf16"
//! [cost]
//! byte = 0.1                   # cost of moving one byte
//! [cost.ops]                   # per multiply-accumulate (conv, matmul) or element; f32 conv = 1
//! conv = { f32 = 1.0, f16 = 0.5, i8 = 0.25 }
//! depthwise_conv = { f32 = 1.0, f16 = 0.5, i8 = 0.5 }
//! matmul = { f32 = 1.0, f16 = 0.5, i8 = 0.25 }
//! elementwise = { f32 = 0.5, f16 = 0.25 }
//! normalization = { f32 = 2.0 }
//! pooling = { f32 = 0.5 }
//! movement = { f32 = 0.25 }
//! convert = { f32 = 0.5 }
//! [export]                     # optional: see `conventions.rs` (default: ONNX Runtime's QDQ)
//! family = "onnxruntime"
//! toolchain = "ONNX Runtime QDQ"
//! activations = ["u8-asymmetric", "i8-symmetric"]
//! weights = ["i8-symmetric", "i4-symmetric"]
//! granularity = ["per-channel", "per-tensor"]
//! float_ops = []
//! pad_channels = false
//! int32_bias = true
//! ```
//!
//! Every class needs an f32 cost; a cost for a type the profile lacks is an error; a supported
//! type without a cost costs what f32 does (storage only). The interpreter (and so every engine)
//! accumulates f16/bf16 products in f32, as every shipped target's hardware does.

use super::conventions::{ExportConventions, RawConventions};
use qforge_ir::{DType, Op};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// The shipped profiles: (name, TOML text).
pub const SHIPPED: [(&str, &str); 5] = [
    ("host", include_str!("../../profiles/host.toml")),
    ("nvidia-xavier", include_str!("../../profiles/nvidia-xavier.toml")),
    ("qualcomm-snapdragon", include_str!("../../profiles/qualcomm-snapdragon.toml")),
    ("intel-movidius", include_str!("../../profiles/intel-movidius.toml")),
    ("arm-cortex-a78", include_str!("../../profiles/arm-cortex-a78.toml")),
];

/// A profile could not be found or read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProfileError {
    #[error("unknown hardware profile `{name}` (shipped profiles: {}; or give a .toml file)", shipped_names().join(", "))]
    Unknown { name: String },
    #[error("hardware profile `{origin}`: {msg} (see passes/profiles/*.toml for the format; shipped profiles: {})", shipped_names().join(", "))]
    Invalid { origin: String, msg: String },
}

/// Names of the shipped profiles.
pub fn shipped_names() -> Vec<&'static str> {
    SHIPPED.iter().map(|(n, _)| *n).collect()
}

/// Memory layout of activations the target prefers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Layout {
    #[serde(rename = "NCHW")]
    Nchw,
    #[serde(rename = "NHWC")]
    Nhwc,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Nchw => "NCHW",
            Layout::Nhwc => "NHWC",
        })
    }
}

/// The numeric types a cost table speaks of (int4 has no IR dtype yet: it is packed storage).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NumType {
    F32,
    F16,
    Bf16,
    I8,
    I4,
}

impl NumType {
    /// The cost-table type of an IR dtype: u8 and i8 are both 8-bit integer arithmetic.
    pub fn of(d: DType) -> Option<NumType> {
        match d {
            DType::F32 => Some(NumType::F32),
            DType::F16 => Some(NumType::F16),
            DType::BF16 => Some(NumType::Bf16),
            DType::I8 | DType::U8 => Some(NumType::I8),
            _ => None,
        }
    }
}

/// Op classes of the cost table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CostClass {
    /// Dense and grouped convolution (per multiply-accumulate).
    Conv,
    /// Grouped and depthwise convolution, per multiply-accumulate.
    DepthwiseConv,
    /// Matmul and gemm (per multiply-accumulate).
    Matmul,
    /// Element-wise arithmetic and activations (per element).
    Elementwise,
    /// Batch/layer norm, softmax, LRN, reductions (per element).
    Normalization,
    /// Pooling (per element of the input).
    Pooling,
    /// Reshape, transpose, concat, slice, ... (per element).
    Movement,
    /// Cast, quantize, dequantize, requantize (per element).
    Convert,
}

impl CostClass {
    pub const ALL: [CostClass; 8] = [
        CostClass::Conv,
        CostClass::DepthwiseConv,
        CostClass::Matmul,
        CostClass::Elementwise,
        CostClass::Normalization,
        CostClass::Pooling,
        CostClass::Movement,
        CostClass::Convert,
    ];

    /// The class of an op; `None` for sources (inputs, constants).
    pub fn of(op: &Op) -> Option<CostClass> {
        Some(match op {
            Op::Input | Op::Const(_) => return None,
            // grouped convolutions (depthwise the common case) run like depthwise ones
            Op::Conv(a) | Op::ConvInteger(a) | Op::QConv { conv: a, .. } if a.group > 1 => CostClass::DepthwiseConv,
            Op::Conv(_) | Op::ConvInteger(_) | Op::QConv { .. } => CostClass::Conv,
            Op::ConvTranspose(a) if a.group > 1 => CostClass::DepthwiseConv,
            Op::ConvTranspose(_) => CostClass::Conv,
            Op::ConvWeightGrad(_) => CostClass::Conv,
            Op::MatMul | Op::Gemm { .. } | Op::MatMulInteger | Op::QMatMul { .. } | Op::QGemm { .. } => {
                CostClass::Matmul
            }
            Op::BatchNorm { .. }
            | Op::LayerNorm { .. }
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::Lrn { .. }
            | Op::ReduceMean { .. }
            | Op::ReduceSum { .. }
            | Op::ReduceMax { .. }
            | Op::GroupNorm { .. }
            | Op::ArgMax { .. }
            | Op::ArgMin { .. }
            | Op::TopK { .. }
            | Op::CumSum { .. }
            | Op::CumProd { .. }
            | Op::ReduceProd { .. }
            | Op::NonZero { .. }
            | Op::NonMaxSuppression { .. } => CostClass::Normalization,
            Op::Det => CostClass::Matmul,
            Op::MaxPool(_)
            | Op::MaxPoolIndices { .. }
            | Op::AveragePool(_)
            | Op::GlobalAveragePool
            | Op::GlobalMaxPool
            | Op::QGlobalAveragePool
            | Op::QAveragePool(_)
            | Op::MaxPoolGrad(_)
            | Op::AveragePoolGrad(_) => CostClass::Pooling,
            Op::Reshape { .. }
            | Op::Flatten { .. }
            | Op::Transpose { .. }
            | Op::Concat { .. }
            | Op::QConcat { .. }
            | Op::Slice { .. }
            | Op::Gather { .. }
            | Op::Unsqueeze { .. }
            | Op::Squeeze { .. }
            | Op::Split { .. }
            | Op::Expand { .. }
            | Op::ExpandDyn { .. }
            | Op::ReshapeDyn { .. }
            | Op::GatherElements { .. }
            | Op::GatherND { .. }
            | Op::ScatterElements { .. }
            | Op::ScatterND { .. }
            | Op::Shape { .. }
            | Op::Range { .. }
            | Op::Pad { .. }
            | Op::Tile { .. }
            | Op::Identity => CostClass::Movement,
            Op::Cast { .. } | Op::Quantize | Op::Dequantize | Op::Requantize | Op::DynamicQuantize => {
                CostClass::Convert
            }
            Op::Unary(_)
            | Op::LeakyRelu { .. }
            | Op::Clip { .. }
            | Op::HardSigmoid { .. }
            | Op::Binary(_)
            | Op::Where
            | Op::Resize(_)
            | Op::GridSample { .. }
            | Op::QAdd
            | Op::QMul
            | Op::FakeQuantize { .. }
            | Op::FakeQuantizeGrad { .. }
            | Op::ClipGrad { .. } => CostClass::Elementwise,
        })
    }
}

/// Which numeric types the target computes in (f32 always).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DTypes {
    pub int8: bool,
    pub int4: bool,
    pub fp16: bool,
    pub bf16: bool,
}

/// Instruction-level features.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Features {
    /// x86 AVX-512 VNNI or AVX-VNNI (`vpdpbusd`).
    pub vnni: bool,
    /// A 4-way int8 dot product instruction (VNNI, Arm SDOT/UDOT, dp4a).
    pub int8_dot_product: bool,
    /// Matrix units (NVIDIA tensor cores).
    pub tensor_cores: bool,
    /// FP16 arithmetic, not only storage.
    pub fp16_compute: bool,
    /// BF16 arithmetic, not only storage.
    pub bf16_compute: bool,
}

/// Layout preferences.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutPrefs {
    pub preferred: Layout,
    /// Conv and gemm output channels are padded to a multiple of this (1: no padding).
    pub channel_align: usize,
    pub preferred_batch: usize,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct AmpPrefs {
    low: String,
}

/// The cost table: relative cost per op class and numeric type, and per byte moved.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostTable {
    /// Cost of moving one byte to or from memory.
    pub byte: f64,
    /// Cost of one multiply-accumulate (conv, matmul) or one element (other classes).
    pub ops: BTreeMap<CostClass, BTreeMap<NumType, f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: String,
    #[serde(default)]
    description: String,
    dtypes: DTypes,
    features: Features,
    layout: LayoutPrefs,
    amp: AmpPrefs,
    cost: CostTable,
    export: Option<RawConventions>,
}

/// A hardware profile.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub name: String,
    pub description: String,
    pub dtypes: DTypes,
    pub features: Features,
    pub layout: LayoutPrefs,
    /// The low-precision float type `--precision amp` uses (f16 or bf16).
    pub amp_low: DType,
    pub cost: CostTable,
    /// How an export for this target is quantized (`[export]`; ONNX Runtime's QDQ without one).
    pub export: ExportConventions,
}

impl Profile {
    /// A shipped profile by name (`host` detected from this CPU).
    pub fn shipped(name: &str) -> Result<Profile, ProfileError> {
        if name == "host" {
            return Ok(Profile::host());
        }
        let (_, text) =
            SHIPPED.iter().find(|(n, _)| *n == name).ok_or_else(|| ProfileError::Unknown { name: name.to_string() })?;
        Profile::parse(text, name)
    }

    /// Every shipped profile as written (`host` undetected), in [`SHIPPED`] order.
    pub fn all_shipped() -> Vec<Profile> {
        SHIPPED.iter().map(|(n, t)| Profile::parse(t, n).expect("shipped profiles parse")).collect()
    }

    /// `host.toml` as written, before detection.
    pub fn host_base() -> Profile {
        Profile::parse(SHIPPED[0].1, "host").expect("host.toml parses")
    }

    /// This CPU with bf16 compute wherever it has AVX512-BF16 ([`Profile::host_for`]); the
    /// compiler asks the JIT instead, which computes bf16 as f32 where that is faster.
    pub fn host() -> Profile {
        Profile::host_for(detect().1)
    }

    /// This CPU as qforge's JIT computes on it: `host.toml` with VNNI (int8 dot product)
    /// detected, and `bf16_compute` as the JIT says (the bf16 kernels run: AVX512-BF16 present
    /// and faster there than f32 FMA); where one is present its costs drop (int8 matmul/conv
    /// halve with VNNI, bf16 ones cost half of f32). f16 arithmetic never costs less: the JIT
    /// computes f16 ops in f32, since the numerics contract sums products in f32 and the one
    /// faster f16 instruction, AVX512-FP16's FMA, sums in f16.
    pub fn host_for(bf16_compute: bool) -> Profile {
        let mut p = Profile::host_base();
        let (vnni, has_bf16) = detect();
        let bf16 = bf16_compute && has_bf16;
        let fp16 = false;
        p.features.vnni = vnni;
        p.features.int8_dot_product = vnni;
        p.features.fp16_compute = fp16;
        p.features.bf16_compute = bf16;
        for (class, row) in p.cost.ops.iter_mut() {
            if !matches!(class, CostClass::Conv | CostClass::DepthwiseConv | CostClass::Matmul) {
                continue;
            }
            let f32c = row.get(&NumType::F32).copied().unwrap_or(1.0);
            if vnni {
                if let Some(c) = row.get_mut(&NumType::I8) {
                    *c *= 0.5;
                }
            }
            for (on, t) in [(fp16, NumType::F16), (bf16, NumType::Bf16)] {
                if on {
                    row.insert(t, f32c * 0.5);
                }
            }
        }
        p
    }

    /// Reads a profile from TOML; `origin` (a file name) is used in errors. Every field is
    /// required, unknown fields are errors, and the profile is checked for consistency.
    pub fn parse(text: &str, origin: &str) -> Result<Profile, ProfileError> {
        let bad = |msg: String| ProfileError::Invalid { origin: origin.to_string(), msg };
        let raw: RawProfile = toml::from_str(text).map_err(|e| bad(e.message().to_string()))?;
        let amp_low = match raw.amp.low.as_str() {
            "f16" => DType::F16,
            "bf16" => DType::BF16,
            other => return Err(bad(format!("[amp] low = \"{other}\" must be \"f16\" or \"bf16\""))),
        };
        let export = match raw.export {
            Some(r) => ExportConventions::from_raw(r).map_err(bad)?,
            None => ExportConventions::onnxruntime(),
        };
        let p = Profile {
            export,
            name: raw.name,
            description: raw.description,
            dtypes: raw.dtypes,
            features: raw.features,
            layout: raw.layout,
            amp_low,
            cost: raw.cost,
        };
        p.check().map_err(bad)?;
        Ok(p)
    }

    fn check(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("name is empty".into());
        }
        if self.layout.channel_align == 0 || self.layout.preferred_batch == 0 {
            return Err("channel_align and preferred_batch must be at least 1".into());
        }
        if !self.supports(self.amp_low) {
            return Err(format!("[amp] low is {} but the profile does not support it", self.amp_low));
        }
        if self.cost.byte.is_nan() || self.cost.byte < 0.0 {
            return Err("cost.byte must be a non-negative number".into());
        }
        for class in CostClass::ALL {
            let row =
                self.cost.ops.get(&class).ok_or_else(|| format!("[cost.ops] has no `{}` row", class_name(class)))?;
            if !row.contains_key(&NumType::F32) {
                return Err(format!("[cost.ops] {} has no f32 cost", class_name(class)));
            }
            for (t, c) in row {
                if !self.supports_num(*t) {
                    return Err(format!(
                        "[cost.ops] {} gives a {t:?} cost but the profile does not support it",
                        class_name(class)
                    )
                    .to_lowercase());
                }
                if c.is_nan() || *c < 0.0 {
                    return Err(format!("[cost.ops] {} has a negative or NaN cost", class_name(class)));
                }
            }
        }
        Ok(())
    }

    /// Whether the target has `d` (f32, f64, bool and the integers wider than 8 bits always; i8/u8
    /// with int8).
    pub fn supports(&self, d: DType) -> bool {
        match d {
            DType::F16 => self.dtypes.fp16,
            DType::BF16 => self.dtypes.bf16,
            DType::I8 | DType::U8 => self.dtypes.int8,
            DType::F32
            | DType::F64
            | DType::I16
            | DType::U16
            | DType::I32
            | DType::U32
            | DType::I64
            | DType::U64
            | DType::Bool => true,
        }
    }

    fn supports_num(&self, t: NumType) -> bool {
        match t {
            NumType::F32 => true,
            NumType::F16 => self.dtypes.fp16,
            NumType::Bf16 => self.dtypes.bf16,
            NumType::I8 => self.dtypes.int8,
            NumType::I4 => self.dtypes.int4,
        }
    }

    /// The supported low-precision float types, for messages.
    pub fn float_types(&self) -> Vec<DType> {
        [DType::F32, DType::F16, DType::BF16].into_iter().filter(|&d| self.supports(d)).collect()
    }

    /// Relative cost of one unit of `class` in `t`: `None` when the target lacks `t`; the f32 cost
    /// when the table has no entry for a supported `t` (the type is storage only there).
    pub fn cost(&self, class: CostClass, t: NumType) -> Option<f64> {
        if !self.supports_num(t) {
            return None;
        }
        let row = self.cost.ops.get(&class)?;
        row.get(&t).or_else(|| row.get(&NumType::F32)).copied()
    }

    /// Relative cost of one unit of `op` computing in `d` (see [`Profile::cost`]).
    pub fn op_cost(&self, op: &Op, d: DType) -> Option<f64> {
        self.cost(CostClass::of(op)?, NumType::of(d)?)
    }

    /// The cost of moving `bytes` bytes.
    pub fn bytes_cost(&self, bytes: u64) -> f64 {
        self.cost.byte * bytes as f64
    }

    /// A multi-line description for reports and `--help`-like listings.
    pub fn describe(&self) -> String {
        let yes = |b: bool| if b { "yes" } else { "no" };
        format!(
            "{}: {}\n  dtypes: int8 {}, int4 {}, fp16 {}, bf16 {}\n  features: vnni {}, int8 dot product {}, \
             tensor cores {}, fp16 arithmetic {}, bf16 arithmetic {}\n  layout {}, channel alignment {}, \
             preferred batch {}, amp uses {}\n",
            self.name,
            self.description,
            yes(self.dtypes.int8),
            yes(self.dtypes.int4),
            yes(self.dtypes.fp16),
            yes(self.dtypes.bf16),
            yes(self.features.vnni),
            yes(self.features.int8_dot_product),
            yes(self.features.tensor_cores),
            yes(self.features.fp16_compute),
            yes(self.features.bf16_compute),
            self.layout.preferred,
            self.layout.channel_align,
            self.layout.preferred_batch,
            self.amp_low,
        )
    }
}

fn class_name(c: CostClass) -> &'static str {
    match c {
        CostClass::Conv => "conv",
        CostClass::DepthwiseConv => "depthwise_conv",
        CostClass::Matmul => "matmul",
        CostClass::Elementwise => "elementwise",
        CostClass::Normalization => "normalization",
        CostClass::Pooling => "pooling",
        CostClass::Movement => "movement",
        CostClass::Convert => "convert",
    }
}

/// (int8 dot product via VNNI, fp16 arithmetic, bf16 arithmetic) on this CPU.
#[cfg(target_arch = "x86_64")]
fn detect() -> (bool, bool) {
    let vnni = std::is_x86_feature_detected!("avx512vnni") || std::is_x86_feature_detected!("avxvnni");
    (vnni, std::is_x86_feature_detected!("avx512bf16"))
}

#[cfg(target_arch = "aarch64")]
fn detect() -> (bool, bool) {
    (false, std::arch::is_aarch64_feature_detected!("bf16"))
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detect() -> (bool, bool) {
    (false, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_profile_parses_and_is_consistent() {
        for p in Profile::all_shipped() {
            assert!(SHIPPED.iter().any(|(n, _)| *n == p.name), "{} is named as its file", p.name);
            for class in CostClass::ALL {
                assert!(p.cost(class, NumType::F32).is_some());
            }
        }
        let x = Profile::shipped("nvidia-xavier").unwrap();
        assert_eq!((x.layout.preferred, x.layout.channel_align, x.layout.preferred_batch), (Layout::Nhwc, 8, 8));
        assert!(x.dtypes.fp16 && x.dtypes.int8 && !x.dtypes.bf16 && x.features.tensor_cores);
        let s = Profile::shipped("qualcomm-snapdragon").unwrap();
        assert!(s.dtypes.int4 && s.dtypes.int8);
        assert_eq!((s.layout.preferred, s.layout.preferred_batch), (Layout::Nchw, 1));
        let m = Profile::shipped("intel-movidius").unwrap();
        assert!(m.dtypes.fp16 && m.dtypes.int8 && !m.dtypes.int4);
        let a = Profile::shipped("arm-cortex-a78").unwrap();
        assert!(a.features.int8_dot_product && !a.features.vnni);
        assert_eq!(x.cost(CostClass::Conv, NumType::Bf16), None);
        assert!(x.op_cost(&Op::MatMul, DType::F16).unwrap() < x.op_cost(&Op::MatMul, DType::F32).unwrap());
    }

    #[test]
    fn host_detection_only_lowers_costs() {
        let (base, host) = (Profile::host_base(), Profile::host());
        assert_eq!(host.dtypes, base.dtypes);
        for class in CostClass::ALL {
            for t in [NumType::F32, NumType::F16, NumType::Bf16, NumType::I8] {
                assert!(host.cost(class, t) <= base.cost(class, t));
            }
        }
        assert_eq!(host.features.vnni, host.features.int8_dot_product);
        // f16 costs what f32 does on every CPU; bf16 less only where the JIT computes in it
        assert!(!host.features.fp16_compute && !Profile::host_for(false).features.bf16_compute);
        for class in CostClass::ALL {
            assert_eq!(host.cost(class, NumType::F16), base.cost(class, NumType::F16));
            assert_eq!(Profile::host_for(false).cost(class, NumType::Bf16), base.cost(class, NumType::Bf16));
        }
    }

    #[test]
    fn errors_list_what_exists() {
        let e = Profile::shipped("jetson-nano").unwrap_err().to_string();
        assert!(e.contains("unknown hardware profile `jetson-nano`") && e.contains("nvidia-xavier"), "{e}");
        let bad = SHIPPED[1].1.replace("channel_align = 8", "channel_align = 8\nchannel_alignment = 8");
        let e = Profile::parse(&bad, "my.toml").unwrap_err().to_string();
        assert!(e.contains("my.toml") && e.contains("channel_alignment"), "{e}");
        let bad = SHIPPED[1].1.replace("i8 = 0.0625 }", "i4 = 0.01 }");
        let e = Profile::parse(&bad, "x.toml").unwrap_err().to_string();
        assert!(e.contains("does not support"), "{e}");
        let e = Profile::parse("name = 3", "y.toml").unwrap_err().to_string();
        assert!(e.contains("y.toml"), "{e}");
    }
}
