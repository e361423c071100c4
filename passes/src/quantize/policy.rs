//! The quantization policy (`--qconfig FILE`): a default, per-op-type rules and per-node-name
//! rules (glob or regex), each setting some of: precision (`int8`, or `fp32`/`fp16`/`bf16` to keep
//! a region in float), activation and weight schemes, weight granularity and bits, observer.
//!
//! Resolution for a node: the built-in defaults, then `[default]`, then the rule for its op type,
//! then (for the two activation-by-activation matmuls of attention) the built-in default of its
//! [`Role`] and the rule for that role (`[op.attention_scores]`, `[op.attention_context]`), then
//! every node rule that matches its name, in file order (a later rule wins, field by field).
//! Original node names (the `from` list of fused nodes) match too, so a rule written against the
//! ONNX names keeps working after folding.
//!
//! # Attention
//! The default for attention blocks is the seed's policy (exercise 6.5): the Q, K, V and output
//! projections (weight matmuls) in INT8; the scores matmul `Q K^T` in float (fp32 here; the
//! precision pass may lower it to fp16 with `--precision`); softmax and layer norm in float (they
//! are never quantized, see [`mod@super::plan`]); the context matmul `P V` back in the quantized
//! domain (INT8, its probabilities calibrated in `[0, 1]`). The roles are found by
//! [`super::attention::attention_roles`]; a qconfig overrides them with `[op.attention_scores]`
//! and `[op.attention_context]`, which come after `[op.matmul]`.
//!
//! This module holds the data and the matching; reading TOML is `qforge`'s (it touches files and
//! reports the line of a bad entry).

use super::observer::{CalibMethod, ObserverConfig};
use super::scheme::{Granularity, QType, Scheme};
use qforge_ir::Node;
use std::fmt;

/// Why a policy (or one of its entries) was rejected.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown precision `{name}` (expected int8, fp32, fp16 or bf16)")]
    UnknownPrecision { name: String },
    #[error("invalid regex `{pattern}`: {error}")]
    Regex { pattern: String, error: regex::Error },
    /// `rule` names the entry (`[default]`, `[op.conv]`, `[[node]] match = "..."`).
    #[error("{rule}: activations must be 8-bit (u8 or i8), got {qtype}")]
    ActivationBits { rule: String, qtype: QType },
    #[error("{rule}: percentile {value} is not in (0, 100]")]
    Percentile { rule: String, value: f64 },
    #[error("{rule}: momentum {value} is not in [0, 1)")]
    Momentum { rule: String, value: f64 },
    #[error("[smoothquant]: alpha {alpha} is not in [0, 1]")]
    SmoothAlpha { alpha: f64 },
    #[error("unknown rounding `{name}` (expected nearest or adaround)")]
    UnknownRounding { name: String },
    /// An `[adaround]` setting out of its range.
    #[error("[adaround]: {msg}")]
    AdaRound { msg: String },
}

/// The precision a node runs at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// Quantized to integers (the default of `--quantize int8|dynamic`).
    #[default]
    Int8,
    Fp32,
    Fp16,
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Int8 => "int8",
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
        }
    }

    pub fn parse(s: &str) -> Result<Precision, PolicyError> {
        match s {
            "int8" => Ok(Precision::Int8),
            "fp32" => Ok(Precision::Fp32),
            "fp16" => Ok(Precision::Fp16),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(PolicyError::UnknownPrecision { name: s.to_string() }),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What an activation-by-activation matmul does in an attention block (see
/// [`super::attention::attention_roles`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// `Q K^T`: its result reaches a softmax (through scaling, masking and data movement).
    AttentionScores,
    /// `P V`: one of its operands comes from a softmax (through data movement).
    AttentionContext,
}

impl Role {
    /// The qconfig table name: `[op.attention_scores]`, `[op.attention_context]`.
    pub fn name(self) -> &'static str {
        match self {
            Role::AttentionScores => "attention_scores",
            Role::AttentionContext => "attention_context",
        }
    }

    /// The built-in rule of the role: scores stay float (fp32), context is INT8.
    pub fn builtin(self) -> Rule {
        match self {
            Role::AttentionScores => Rule { precision: Some(Precision::Fp32), ..Rule::default() },
            Role::AttentionContext => Rule { precision: Some(Precision::Int8), ..Rule::default() },
        }
    }
}

/// Some of a node's settings; `None` leaves the earlier value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rule {
    pub precision: Option<Precision>,
    /// Activation scheme (`u8` asymmetric by default, as ONNX Runtime's QUInt8 activations).
    pub activations: Option<Scheme>,
    /// Weight scheme (`i8` symmetric by default; `i4`/`u4` for 4-bit weights).
    pub weights: Option<Scheme>,
    pub granularity: Option<WeightGranularity>,
    pub observer: Option<CalibMethod>,
    pub percentile: Option<f64>,
    pub momentum: Option<f64>,
    pub bins: Option<usize>,
    /// How quantized weights are rounded (round to nearest unless a rule says AdaRound).
    pub rounding: Option<Rounding>,
}

/// How a quantized op's weights are rounded to their integer grid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Rounding {
    /// Round half to even (the numerics contract), as ONNX Runtime's quantizer does.
    #[default]
    Nearest,
    /// Learned rounding ([`super::adaround`]): each weight rounded up or down as fitted to
    /// reconstruct the layer's float output on the calibration data.
    AdaRound,
}

impl Rounding {
    pub fn name(self) -> &'static str {
        match self {
            Rounding::Nearest => "nearest",
            Rounding::AdaRound => "adaround",
        }
    }

    /// Parses `nearest` or `adaround`.
    pub fn parse(s: &str) -> Result<Rounding, PolicyError> {
        match s {
            "nearest" => Ok(Rounding::Nearest),
            "adaround" => Ok(Rounding::AdaRound),
            other => Err(PolicyError::UnknownRounding { name: other.to_string() }),
        }
    }
}

impl Rule {
    /// Overrides the fields `other` sets.
    pub fn merge(&mut self, other: &Rule) {
        macro_rules! take {
            ($($f:ident),*) => {$(if other.$f.is_some() { self.$f = other.$f.clone(); })*};
        }
        take!(precision, activations, weights, granularity, observer, percentile, momentum, bins, rounding);
    }
}

/// Weight granularity as written in a policy (the axis comes from the op).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightGranularity {
    PerTensor,
    PerChannel,
    /// Block-wise (meant for 4-bit weights): one scale and zero point per run of this many
    /// consecutive weights along the reduction axis (see [`NodeSettings::weight_granularity`]).
    /// Such weights have no integer kernel: the op computes in float on the dequantized weight.
    PerGroup(usize),
}

/// How a node-name pattern matches.
#[derive(Clone, Debug)]
pub enum Pattern {
    /// Shell glob over the whole name: `*` any run of characters (including `/`), `?` one
    /// ([`crate::glob`]).
    Glob(String),
    Regex(regex::Regex),
}

impl Pattern {
    pub fn regex(re: &str) -> Result<Pattern, PolicyError> {
        regex::Regex::new(re).map(Pattern::Regex).map_err(|error| PolicyError::Regex { pattern: re.to_string(), error })
    }

    /// A pattern matching exactly `name` (a glob when the name has no glob characters).
    pub fn exact(name: &str) -> Pattern {
        if name.contains(['*', '?']) {
            Pattern::Regex(regex::Regex::new(&format!("^{}$", regex::escape(name))).expect("escaped"))
        } else {
            Pattern::Glob(name.to_string())
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Glob(g) => crate::glob::glob_match(g, name),
            Pattern::Regex(r) => r.is_match(name),
        }
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        match (self, other) {
            (Pattern::Glob(a), Pattern::Glob(b)) => a == b,
            (Pattern::Regex(a), Pattern::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Glob(g) => write!(f, "match = {g:?}"),
            Pattern::Regex(r) => write!(f, "regex = {:?}", r.as_str()),
        }
    }
}

/// A rule for the nodes whose name matches.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeRule {
    pub pattern: Pattern,
    pub rule: Rule,
}

/// The whole policy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QConfig {
    pub default: Rule,
    /// Rules by op name in the IR text form (`conv`, `gemm`, `matmul`, `add`, ...) or by
    /// [`Role`] name (`attention_scores`, `attention_context`).
    pub op_types: Vec<(String, Rule)>,
    pub nodes: Vec<NodeRule>,
    /// SmoothQuant's migration strength α (`[smoothquant] alpha`), `None`: no smoothing (see
    /// [`super::smooth`]).
    pub smooth: Option<f64>,
    /// Bias correction before static quantization (`[bias_correction] enabled`), `None`: the
    /// default, [`QConfig::DEFAULT_BIAS_CORRECTION`] (see [`super::bias_correction`]).
    pub bias_correction: Option<bool>,
    /// Whether a conv, gemm or matmul result that is a graph output is rounded to 8 bits
    /// (`[outputs] quantize`), `None`: the default, [`QConfig::DEFAULT_QUANTIZE_OUTPUTS`] (see
    /// [`super::static_quant`]).
    pub quantize_outputs: Option<bool>,
    /// The fit of the layers whose rule says `rounding = "adaround"` (`[adaround]`; the
    /// defaults when `None`).
    pub adaround: Option<super::adaround::AdaRoundOptions>,
}

/// A node's resolved settings.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSettings {
    pub precision: Precision,
    pub activations: Scheme,
    pub weights: Scheme,
    pub granularity: WeightGranularity,
    pub observer: ObserverConfig,
    pub rounding: Rounding,
}

impl NodeSettings {
    pub fn quantized(&self) -> bool {
        self.precision == Precision::Int8
    }

    /// The weight granularity for a weight whose output-channel axis is `axis`.
    ///
    /// Per group, the groups run along the reduction axis: axis 1 when the output channel is axis
    /// 0 (conv weights `[O, I, kh, kw]`, gemm weights `[N, K]` with `transB`), else axis 0 (gemm
    /// weights `[K, N]` without `transB`, matmul weights `[K, N]`). For a conv weight each spatial
    /// position `(kh, kw)` of an output channel has its own groups of input channels, as ONNX's
    /// blocked `DequantizeLinear` along axis 1 has.
    pub fn weight_granularity(&self, axis: Option<usize>) -> Granularity {
        match (self.granularity, axis) {
            (WeightGranularity::PerChannel, Some(axis)) => Granularity::PerChannel { axis },
            (WeightGranularity::PerGroup(size), Some(axis)) => {
                Granularity::PerGroup { axis: if axis == 0 { 1 } else { 0 }, size }
            }
            _ => Granularity::PerTensor,
        }
    }

    /// The observer for an activation quantized with this node's activation scheme.
    pub fn activation_observer(&self) -> ObserverConfig {
        ObserverConfig {
            symmetric: self.activations.symmetric,
            bits: self.activations.qtype.bits(),
            ..self.observer.clone()
        }
    }
}

impl QConfig {
    /// Whether static quantization corrects biases when the qconfig and the flags do not say.
    pub const DEFAULT_BIAS_CORRECTION: bool = true;

    /// Whether static quantization rounds a graph output to 8 bits when the qconfig and the flags
    /// do not say: no, the integer kernel that computes it dequantizes its accumulator.
    pub const DEFAULT_QUANTIZE_OUTPUTS: bool = false;

    /// Whether static quantization rounds a conv, gemm or matmul result that is a graph output
    /// to 8 bits (ONNX Runtime's `quantize_static` does) instead of returning it in f32.
    pub fn quantizes_outputs(&self) -> bool {
        self.quantize_outputs.unwrap_or(Self::DEFAULT_QUANTIZE_OUTPUTS)
    }

    /// Whether any rule asks for AdaRound ([`super::adaround`]).
    pub fn rounds_adaptively(&self) -> bool {
        std::iter::once(&self.default)
            .chain(self.op_types.iter().map(|(_, r)| r))
            .chain(self.nodes.iter().map(|n| &n.rule))
            .any(|r| r.rounding == Some(Rounding::AdaRound))
    }

    /// Whether static quantization corrects biases ([`super::bias_correction`]).
    pub fn corrects_bias(&self) -> bool {
        self.bias_correction.unwrap_or(Self::DEFAULT_BIAS_CORRECTION)
    }

    /// The built-in defaults: int8, `u8` asymmetric activations, `i8` symmetric per-channel
    /// weights, min-max calibration (ONNX Runtime's `quantize_static` defaults).
    pub fn builtin() -> Rule {
        Rule {
            precision: Some(Precision::Int8),
            activations: Some(Scheme::asymmetric(QType::U8)),
            weights: Some(Scheme::symmetric(QType::I8)),
            granularity: Some(WeightGranularity::PerChannel),
            observer: Some(CalibMethod::MinMax),
            percentile: None,
            momentum: None,
            bins: None,
            rounding: Some(Rounding::Nearest),
        }
    }

    /// The rule that applies to `node` (every field set), as an op without a [`Role`].
    pub fn resolve_rule(&self, node: &Node) -> Rule {
        self.resolve_rule_as(node, None)
    }

    /// The rule that applies to `node` playing `role` (every field set).
    pub fn resolve_rule_as(&self, node: &Node, role: Option<Role>) -> Rule {
        let mut r = QConfig::builtin();
        r.merge(&self.default);
        let op = node.op.name();
        for (name, rule) in &self.op_types {
            if name == op {
                r.merge(rule);
            }
        }
        if let Some(role) = role {
            r.merge(&role.builtin());
            for (name, rule) in &self.op_types {
                if name == role.name() {
                    r.merge(rule);
                }
            }
        }
        for n in &self.nodes {
            if n.pattern.matches(&node.name) || node.from.iter().any(|f| n.pattern.matches(f)) {
                r.merge(&n.rule);
            }
        }
        r
    }

    /// The settings of `node` (as an op without a [`Role`]).
    pub fn settings(&self, node: &Node) -> NodeSettings {
        self.settings_as(node, None)
    }

    /// The settings of `node` playing `role`.
    pub fn settings_as(&self, node: &Node, role: Option<Role>) -> NodeSettings {
        let r = self.resolve_rule_as(node, role);
        let mut observer = ObserverConfig::new(r.observer.unwrap_or_default());
        if let Some(p) = r.percentile {
            observer.percentile = p;
        }
        if let Some(m) = r.momentum {
            observer.momentum = m;
        }
        if let Some(b) = r.bins {
            observer.bins = b;
        }
        NodeSettings {
            precision: r.precision.unwrap_or_default(),
            activations: r.activations.unwrap_or(Scheme::asymmetric(QType::U8)),
            weights: r.weights.unwrap_or(Scheme::symmetric(QType::I8)),
            granularity: r.granularity.unwrap_or(WeightGranularity::PerChannel),
            observer,
            rounding: r.rounding.unwrap_or_default(),
        }
    }

    /// Checks what cannot be checked while reading: activation schemes must be 8-bit.
    pub fn check(&self) -> Result<(), PolicyError> {
        let all = std::iter::once(("[default]".to_string(), &self.default))
            .chain(self.op_types.iter().map(|(n, r)| (format!("[op.{n}]"), r)))
            .chain(self.nodes.iter().map(|n| (format!("[[node]] {}", n.pattern), &n.rule)));
        for (rule, r) in all {
            if let Some(a) = r.activations {
                if a.qtype.bits() != 8 {
                    return Err(PolicyError::ActivationBits { rule, qtype: a.qtype });
                }
            }
            if let Some(p) = r.percentile {
                if !(p > 0.0 && p <= 100.0) {
                    return Err(PolicyError::Percentile { rule, value: p });
                }
            }
            if let Some(m) = r.momentum {
                if !(0.0..1.0).contains(&m) {
                    return Err(PolicyError::Momentum { rule, value: m });
                }
            }
        }
        if let Some(a) = self.smooth {
            if !(0.0..=1.0).contains(&a) {
                return Err(PolicyError::SmoothAlpha { alpha: a });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qforge_ir::{DType, Graph, Shape, TensorType, UnaryOp};

    #[test]
    fn later_rules_win_field_by_field() {
        let mut g = Graph::new("t");
        let x = g.add_input("x", TensorType::new(DType::F32, Shape::fixed(&[1, 4])));
        let r = g.add_node(Op::Unary(UnaryOp::Relu), vec![Some(x)], None, "/head/relu").unwrap();
        use qforge_ir::Op;
        let q = QConfig {
            default: Rule { observer: Some(CalibMethod::Entropy), ..Rule::default() },
            op_types: vec![(
                "relu".into(),
                Rule { granularity: Some(WeightGranularity::PerTensor), ..Rule::default() },
            )],
            nodes: vec![
                NodeRule {
                    pattern: Pattern::Glob("/head/*".into()),
                    rule: Rule { precision: Some(Precision::Fp16), ..Rule::default() },
                },
                NodeRule {
                    pattern: Pattern::regex("relu$").unwrap(),
                    rule: Rule { precision: Some(Precision::Fp32), ..Rule::default() },
                },
            ],
            smooth: None,
            bias_correction: None,
            quantize_outputs: None,
            adaround: None,
        };
        let s = q.settings(g.node(r.node));
        assert_eq!(s.precision, Precision::Fp32);
        assert_eq!(s.granularity, WeightGranularity::PerTensor);
        assert_eq!(s.observer.method, CalibMethod::Entropy);
        assert_eq!(s.activations, Scheme::asymmetric(QType::U8));
        assert!(!s.quantized());
    }
}
