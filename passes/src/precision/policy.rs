//! The precision policy: which op class each op belongs to, which nodes a user forces to f32, and
//! the overflow margin. The defaults follow PyTorch autocast (the seed, section 6.2.2); a user
//! overrides them with a TOML table:
//!
//! ```toml
//! # nodes whose name matches a pattern (`*` any run of characters, `?` one: `crate::glob`) stay
//! # f32, as the seed's custom_fwd(cast_inputs=torch.float32) region does
//! force_fp32 = ["/attn/*", "*/head/Gemm"]
//! # fraction of fp16's largest finite value (65504) an observed magnitude may reach before the
//! # overflow guard keeps the op in f32 (fp16 only; bf16 has f32's range)
//! overflow_margin = 0.5
//! # the accuracy guard (with calibration data): keep the first ops in f32 until the output
//! # reaches this SQNR against f32 on the calibration inputs (see `search`); `--min-sqnr` wins
//! min_sqnr_db = 40.0
//!
//! [classes]          # op name (as in the IR text) = "fp32" | "low" | "follow"
//! gelu = "fp32"
//! batch_norm = "follow"
//! ```

use qforge_ir::{BinaryOp, Op, UnaryOp};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// The three AMP op classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpClass {
    /// Numerically sensitive (softmax, norms, reductions, exp/log): always f32.
    Fp32,
    /// Compute bound and tolerant (conv, gemm, matmul): low precision.
    Low,
    /// Takes the widest precision of its inputs (element-wise, pooling, data movement); in
    /// `fp16`/`bf16` mode it runs in low precision.
    Follow,
}

impl fmt::Display for OpClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OpClass::Fp32 => "fp32",
            OpClass::Low => "low",
            OpClass::Follow => "follow",
        })
    }
}

/// Why a precision override table was rejected; every message names the table.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OverrideError {
    /// Not TOML, or not the table's fields.
    #[error("precision config `{origin}`: {msg}")]
    Toml { origin: String, msg: String },
    #[error("precision config `{origin}`: `{op}` is not an op precision assignment retypes (ops: {known})")]
    UnknownOp { origin: String, op: String, known: String },
    #[error("precision config `{origin}`: overflow_margin {margin} must be in (0, 1]")]
    Margin { origin: String, margin: f64 },
    #[error("precision config `{origin}`: {error}")]
    Target { origin: String, error: SqnrTargetError },
}

/// An SQNR target outside `(0, 200]` dB.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("min_sqnr_db {db} must be a number of dB in (0, 200]")]
pub struct SqnrTargetError {
    pub db: f64,
}

/// fp16's largest finite value.
pub const F16_MAX: f64 = 65504.0;

/// The default overflow margin: an activation may reach half of fp16's range (32752) before the
/// guard keeps its op in f32. Calibration sees a sample of the inputs; one binade of headroom
/// covers inputs somewhat larger than any it saw.
pub const DEFAULT_OVERFLOW_MARGIN: f64 = 0.5;

/// The class table, the forced-f32 patterns and the overflow margin.
#[derive(Clone, Debug, PartialEq)]
pub struct PrecisionPolicy {
    /// Op name -> class, for every op precision assignment may retype.
    pub classes: BTreeMap<String, OpClass>,
    /// Node-name patterns forced to f32.
    pub force_fp32: Vec<String>,
    /// Fraction of [`F16_MAX`] the overflow guard allows.
    pub overflow_margin: f64,
    /// The accuracy guard's SQNR target (dB); `None`: no guard.
    pub min_sqnr_db: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverrides {
    #[serde(default)]
    force_fp32: Vec<String>,
    overflow_margin: Option<f64>,
    min_sqnr_db: Option<f64>,
    #[serde(default)]
    classes: BTreeMap<String, OpClass>,
}

/// Representative ops, one per text name, for building the default table.
fn assignable_ops() -> Vec<(Op, OpClass)> {
    use OpClass::*;
    let mut v: Vec<(Op, OpClass)> = vec![
        (Op::Softmax { axis: -1 }, Fp32),
        (Op::LogSoftmax { axis: -1 }, Fp32),
        (Op::LayerNorm { axis: -1, epsilon: 0.0 }, Fp32),
        (Op::BatchNorm { epsilon: 0.0 }, Fp32),
        (Op::Lrn { size: 1, alpha: 0.0, beta: 0.0, bias: 0.0 }, Fp32),
        (Op::ReduceMean { axes: vec![], keepdims: false }, Fp32),
        (Op::ReduceSum { axes: vec![], keepdims: false }, Fp32),
        (Op::ReduceMax { axes: vec![], keepdims: false }, Fp32),
        (Op::GroupNorm { groups: 1, epsilon: 0.0 }, Fp32),
        (Op::Conv(conv0()), Low),
        (
            Op::ConvTranspose(qforge_ir::ConvTransposeAttrs {
                kernel: vec![],
                strides: vec![],
                pads: vec![],
                dilations: vec![],
                group: 1,
                output_padding: vec![],
            }),
            Low,
        ),
        (Op::Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: false }, Low),
        (Op::MatMul, Low),
        (Op::LeakyRelu { alpha: 0.0 }, Follow),
        (Op::Clip { min: 0.0, max: 0.0 }, Follow),
        (Op::HardSigmoid { alpha: 0.0, beta: 0.0 }, Follow),
        (Op::Where, Follow),
        (Op::MaxPool(pool0()), Follow),
        (Op::AveragePool(pool0()), Follow),
        (Op::GlobalAveragePool, Follow),
        (Op::GlobalMaxPool, Follow),
        (Op::Reshape { shape: vec![] }, Follow),
        (Op::Flatten { axis: 1 }, Follow),
        (Op::Transpose { perm: vec![] }, Follow),
        (Op::Concat { axis: 0 }, Follow),
        (Op::Slice { starts: vec![], ends: vec![], axes: vec![], steps: vec![] }, Follow),
        (Op::Gather { axis: 0 }, Follow),
        (Op::Unsqueeze { axes: vec![] }, Follow),
        (Op::Squeeze { axes: vec![] }, Follow),
        (Op::Split { axis: 0, sizes: vec![] }, Follow),
        (Op::Expand { shape: vec![] }, Follow),
        (Op::Identity, Follow),
        (Op::Resize(resize0()), Follow),
        (Op::Pad { mode: qforge_ir::PadMode::Constant, pads: vec![], computed: vec![], value: 0.0 }, Follow),
        (Op::Tile { repeats: vec![] }, Follow),
        (Op::ArgMax { axis: 0, keepdims: false, select_last: false }, Follow),
        (Op::ArgMin { axis: 0, keepdims: false, select_last: false }, Follow),
    ];
    for u in Op::UNARY {
        let class = match u {
            UnaryOp::Not => continue,
            // Transcendental functions whose results lose too much in f16 (sinh/cosh overflow as
            // exp does; the inverse functions are steep near their domain's ends): f32.
            UnaryOp::Exp
            | UnaryOp::Log
            | UnaryOp::Tan
            | UnaryOp::Asin
            | UnaryOp::Acos
            | UnaryOp::Sinh
            | UnaryOp::Cosh
            | UnaryOp::Asinh
            | UnaryOp::Acosh
            | UnaryOp::Atanh => Fp32,
            _ => Follow,
        };
        v.push((Op::Unary(u), class));
    }
    for b in Op::BINARY {
        let class = match b {
            BinaryOp::Equal
            | BinaryOp::Less
            | BinaryOp::Greater
            | BinaryOp::And
            | BinaryOp::Or
            | BinaryOp::BitAnd
            | BinaryOp::BitOr
            | BinaryOp::BitXor
            | BinaryOp::ShiftLeft
            | BinaryOp::ShiftRight => continue,
            BinaryOp::Pow => Fp32,
            _ => Follow,
        };
        v.push((Op::Binary(b), class));
    }
    v
}

fn conv0() -> qforge_ir::ConvAttrs {
    qforge_ir::ConvAttrs { kernel: vec![], strides: vec![], pads: vec![], dilations: vec![], group: 1 }
}

fn resize0() -> qforge_ir::ResizeAttrs {
    qforge_ir::ResizeAttrs {
        mode: qforge_ir::ResizeMode::Nearest,
        coord: qforge_ir::CoordMode::HalfPixel,
        nearest: qforge_ir::NearestMode::RoundPreferFloor,
        cubic_a: -0.75,
        exclude_outside: false,
        extrapolation: 0.0,
        antialias: false,
        roi: vec![],
        target: qforge_ir::ResizeTarget::Scales(vec![]),
    }
}

fn pool0() -> qforge_ir::PoolAttrs {
    qforge_ir::PoolAttrs {
        kernel: vec![],
        strides: vec![],
        pads: vec![],
        dilations: vec![],
        ceil_mode: false,
        count_include_pad: false,
    }
}

impl Default for PrecisionPolicy {
    fn default() -> Self {
        PrecisionPolicy {
            classes: assignable_ops().into_iter().map(|(op, c)| (op.name().to_string(), c)).collect(),
            force_fp32: vec![],
            overflow_margin: DEFAULT_OVERFLOW_MARGIN,
            min_sqnr_db: None,
        }
    }
}

impl PrecisionPolicy {
    /// The class of `op`; `None` for ops precision assignment never retypes (sources, casts,
    /// comparisons, quantization and integer kernels).
    pub fn class_of(&self, op: &Op) -> Option<OpClass> {
        self.classes.get(op.name()).copied()
    }

    /// The first force-f32 pattern matching `name`.
    pub fn forced_fp32(&self, name: &str) -> Option<&str> {
        self.force_fp32.iter().find(|p| crate::glob::glob_match(p, name)).map(String::as_str)
    }

    /// The largest magnitude the fp16 overflow guard allows.
    pub fn overflow_limit(&self) -> f64 {
        self.overflow_margin * F16_MAX
    }

    /// Applies a TOML override table (see the module docs); `origin` names it in errors.
    pub fn apply_overrides(&mut self, text: &str, origin: &str) -> Result<(), OverrideError> {
        let origin = origin.to_string();
        let raw: RawOverrides = toml::from_str(text)
            .map_err(|e| OverrideError::Toml { origin: origin.clone(), msg: e.message().trim().to_string() })?;
        for (op, class) in raw.classes {
            if !self.classes.contains_key(&op) {
                let known: Vec<&str> = self.classes.keys().map(String::as_str).collect();
                return Err(OverrideError::UnknownOp { origin, op, known: known.join(", ") });
            }
            self.classes.insert(op, class);
        }
        self.force_fp32.extend(raw.force_fp32);
        if let Some(m) = raw.overflow_margin {
            if !(m > 0.0 && m <= 1.0) {
                return Err(OverrideError::Margin { origin, margin: m });
            }
            self.overflow_margin = m;
        }
        if let Some(db) = raw.min_sqnr_db {
            check_sqnr_target(db).map_err(|error| OverrideError::Target { origin, error })?;
            self.min_sqnr_db = Some(db);
        }
        Ok(())
    }
}

/// An SQNR target must be a finite number of decibels above 0.
pub fn check_sqnr_target(db: f64) -> Result<(), SqnrTargetError> {
    if db.is_finite() && db > 0.0 && db <= 200.0 {
        Ok(())
    } else {
        Err(SqnrTargetError { db })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_classes_follow_the_seed() {
        let p = PrecisionPolicy::default();
        for (op, class) in [("softmax", OpClass::Fp32), ("layer_norm", OpClass::Fp32), ("batch_norm", OpClass::Fp32)] {
            assert_eq!(p.classes[op], class);
        }
        for op in ["conv", "gemm", "matmul"] {
            assert_eq!(p.classes[op], OpClass::Low);
        }
        for op in ["add", "mul", "relu", "concat", "max_pool", "reshape"] {
            assert_eq!(p.classes[op], OpClass::Follow);
        }
        assert_eq!(p.class_of(&Op::Cast { to: qforge_ir::DType::F16 }), None);
        assert_eq!(p.class_of(&Op::Binary(BinaryOp::Less)), None);
    }

    #[test]
    fn overrides_and_patterns() {
        let mut p = PrecisionPolicy::default();
        p.apply_overrides("force_fp32 = [\"/attn/*\"]\noverflow_margin = 0.25\n[classes]\ngelu = \"fp32\"\n", "t")
            .unwrap();
        assert_eq!(p.classes["gelu"], OpClass::Fp32);
        assert_eq!(p.forced_fp32("/attn/MatMul"), Some("/attn/*"));
        assert_eq!(p.forced_fp32("/mlp/MatMul"), None);
        assert_eq!(p.overflow_limit(), 16376.0);
        let e = p.apply_overrides("[classes]\nfoo = \"low\"\n", "t").unwrap_err().to_string();
        assert!(e.contains("`foo`") && e.contains("softmax"), "{e}");
        let e = p.apply_overrides("[classes]\nconv = \"fp8\"\n", "t").unwrap_err().to_string();
        assert!(e.contains("fp8"), "{e}");
        assert!(p.apply_overrides("overflow_margin = 2.0", "t").is_err());
    }
}
