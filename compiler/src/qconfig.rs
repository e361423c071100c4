//! Reading the quantization policy (`--qconfig FILE`, TOML) into a
//! [`qforge_passes::quantize::QConfig`]. Every error names the file and the line.
//!
//! ```toml
//! # every field is optional; later, more specific rules win field by field
//! [default]
//! precision = "int8"            # int8 | fp32 | fp16 | bf16 (fp16/bf16: for the precision pass)
//! activations = "u8-asymmetric" # u8-asymmetric | i8-symmetric | i8-asymmetric | u8-symmetric
//! weights = "i8-symmetric"      # as above, or i4-symmetric | u4-asymmetric | ... (4-bit)
//! granularity = "per-channel"   # per-channel | per-tensor | per-group:N (weights; see below)
//! bits = 8                      # weight bits: 8 or 4 (shorthand for the weight type)
//! observer = "minmax"           # minmax | ema | percentile | entropy | mse
//! percentile = 99.99            # percentile observer
//! momentum = 0.99               # ema observer
//! bins = 2048                   # histogram observers
//! rounding = "nearest"          # nearest | adaround (weights; `--rounding` overrides [default])
//!
//! [op.gemm]                     # by op type, as the IR names it (conv, gemm, matmul, add, ...)
//! granularity = "per-tensor"
//!
//! [op.attention_scores]         # attention's Q K^T matmul (built-in default: fp32)
//! precision = "fp32"
//!
//! [op.attention_context]        # attention's P V matmul (built-in default: int8)
//! precision = "int8"
//!
//! [smoothquant]                 # SmoothQuant before static int8 (`--smooth ALPHA` overrides)
//! alpha = 0.5                   # migration strength in [0, 1]
//!
//! [bias_correction]             # static int8 (`--bias-correction on|off` overrides)
//! enabled = true                # the default
//!
//! [adaround]                    # the fit of layers with rounding = "adaround" (these are the defaults)
//! iterations = 1000             # Adam steps per layer
//! batch = 32                    # calibration samples per step
//! lr = 0.01                     # Adam's learning rate on the rounding variables
//! reg_weight = 0.01             # weight of the regularizer that pushes each weight to up or down
//! beta = [20.0, 2.0]            # the regularizer's exponent, annealed from the first to the second
//! warm_start = 0.2              # share of the steps before the regularizer starts
//! seed = 0                      # sample order
//!
//! [outputs]                     # static int8 (`--quantize-outputs on|off` overrides)
//! quantize = false              # the default: graph outputs stay f32
//!
//! [[node]]                      # by node name (or an original ONNX node name it absorbed)
//! match = "/backbone/*"         # a glob ...
//! precision = "int8"
//!
//! [[node]]
//! regex = "^/neck/"             # ... or a regex
//! precision = "fp16"
//!
//! [[node]]
//! match = "/head/*"
//! skip = true                   # stay float (the same as precision = "fp32")
//! ```
//!
//! `granularity = "per-group:32"` (any group size N > 0; 32, 64 and 128 are the usual ones, with
//! `bits = 4`) quantizes weights block-wise: one scale and zero point per run of N consecutive
//! weights along the reduction axis (axis 1 of conv weights `[O, I, kh, kw]` and of gemm weights
//! `[N, K]` with `transB`; axis 0 of `[K, N]` gemm and matmul weights), the last run of an axis
//! not divisible by N shorter. 4-bit values are stored one per i8 (`[-8, 7]`, `i4`) or u8
//! (`[0, 15]`, `u4`) element (the ONNX export packs them two per byte). Per-group weights have
//! no integer kernel: the op runs in float on the dequantized weight (its activations are still
//! quantized), and the fusion report says so. Dynamic quantization treats per-group as
//! per-channel.
//!
//! `[op.attention_scores]` and `[op.attention_context]` address the two activation-by-activation
//! matmuls of attention (found by their place around the softmax:
//! `qforge_passes::quantize::attention`); they apply after `[op.matmul]` and before `[[node]]`
//! rules. Without them, attention follows the seed's policy: projections int8, scores fp32,
//! softmax and layer norm float, context int8.
//!
//! `[smoothquant]` turns SmoothQuant on for static int8: before calibration, each layer norm that
//! feeds only weight matmuls (Q, K, V; an MLP's first linear) has its gain and bias divided by
//! `s_j = max|X_j|^alpha / max|W_j|^(1-alpha)` per channel and the weights' rows multiplied by it
//! (the float function is unchanged; see `qforge_passes::quantize::smooth`). `alpha` defaults to
//! 0.5.
//!
//! `[bias_correction]` says whether static int8 corrects biases (on by default): after
//! calibration, the mean output error that rounding each conv's, gemm's and linear matmul's weight
//! causes on the calibration set is subtracted from its bias (see
//! `qforge_passes::quantize::bias_correction`).
//!
//! `[outputs]` says whether static int8 rounds a graph output that a conv, gemm or matmul computes
//! to 8 bits (`quantize = true`, what ONNX Runtime's `quantize_static` does) or returns it in f32
//! from the integer kernel's accumulator (the default: the rounding would only add error).

use crate::options::{PipelineOptions, QuantizeMode};
use anyhow::{bail, Context, Result};
use qforge_ir::Graph;
use qforge_passes::quantize::observer::CalibMethod;
use qforge_passes::quantize::scheme::{QType, Scheme};
use qforge_passes::quantize::{
    AdaRoundOptions, NodeRule, Pattern, Precision, QConfig, Rounding, Rule, WeightGranularity,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use toml::Spanned;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    default: Option<Spanned<RuleToml>>,
    #[serde(default)]
    op: BTreeMap<String, Spanned<RuleToml>>,
    #[serde(default)]
    node: Vec<Spanned<RuleToml>>,
    #[serde(default)]
    smoothquant: Option<Spanned<SmoothToml>>,
    #[serde(default)]
    bias_correction: Option<BiasCorrectionToml>,
    #[serde(default)]
    outputs: Option<OutputsToml>,
    #[serde(default)]
    adaround: Option<Spanned<AdaRoundToml>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AdaRoundToml {
    iterations: Option<usize>,
    batch: Option<usize>,
    lr: Option<f32>,
    reg_weight: Option<f32>,
    beta: Option<[f32; 2]>,
    warm_start: Option<f32>,
    seed: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OutputsToml {
    quantize: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BiasCorrectionToml {
    enabled: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SmoothToml {
    alpha: Option<Spanned<f64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RuleToml {
    #[serde(rename = "match")]
    glob: Option<Spanned<String>>,
    regex: Option<Spanned<String>>,
    precision: Option<Spanned<String>>,
    skip: Option<Spanned<bool>>,
    activations: Option<Spanned<String>>,
    weights: Option<Spanned<String>>,
    granularity: Option<Spanned<String>>,
    bits: Option<Spanned<u32>>,
    observer: Option<Spanned<String>>,
    percentile: Option<Spanned<f64>>,
    momentum: Option<Spanned<f64>>,
    bins: Option<Spanned<usize>>,
    rounding: Option<Spanned<String>>,
}

/// A qconfig file's error: the line it is on (when known) and what is wrong.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{}{msg}", line.map_or(String::new(), |l| format!("line {l}: ")))]
pub struct QConfigError {
    pub line: Option<usize>,
    pub msg: String,
}

/// A parsed qconfig with where its `[[node]]` rules are, so a rule that names no node can be
/// reported by its line.
#[derive(Clone, Debug, PartialEq)]
pub struct QConfigFile {
    pub config: QConfig,
    /// The line of each `[[node]]` rule, in the order of `config.nodes`.
    pub node_lines: Vec<usize>,
}

/// Reads a qconfig file.
pub fn load(path: &Path) -> Result<QConfigFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read qconfig `{}`", path.display()))?;
    parse_file(&text).with_context(|| format!("qconfig `{}`", path.display()))
}

/// Parses qconfig text.
pub fn parse(text: &str) -> Result<QConfig, QConfigError> {
    parse_file(text).map(|f| f.config)
}

/// Every `[[node]]` rule of `file` must match a node of `g` (by its name or a name it absorbed):
/// a rule that matches nothing is almost always a typo, and ignoring it would quantize the very
/// layer the user meant to keep. The error names the rule and the closest node names.
pub fn check_rules_match(file: &QConfigFile, g: &Graph, origin: &Path) -> Result<()> {
    let mut names: Vec<&str> = vec![];
    for id in g.node_ids() {
        let n = g.node(id);
        if matches!(n.op, qforge_ir::Op::Const(_) | qforge_ir::Op::Input) {
            continue;
        }
        names.push(&n.name);
        names.extend(n.from.iter().map(String::as_str));
    }
    names.sort_unstable();
    names.dedup();
    for (rule, line) in file.config.nodes.iter().zip(&file.node_lines) {
        if names.iter().any(|n| rule.pattern.matches(n)) {
            continue;
        }
        let wanted = match &rule.pattern {
            Pattern::Glob(g) => g.replace(['*', '?'], ""),
            Pattern::Regex(r) => r.as_str().trim_start_matches('^').trim_end_matches('$').to_string(),
        };
        let mut ranked: Vec<(usize, &str)> = names.iter().map(|n| (strsim::levenshtein(&wanted, n), *n)).collect();
        ranked.sort();
        let closest: Vec<String> = ranked.iter().take(3).map(|(_, n)| format!("`{n}`")).collect();
        bail!(
            "qconfig `{}` line {line}: the [[node]] rule {} names no node of the model (closest: {})",
            origin.display(),
            rule.pattern,
            closest.join(", ")
        );
    }
    Ok(())
}

/// The policy the pipeline quantizes with: `--qconfig` (if any) with the command-line scheme
/// options on top of its `[default]`: `--per-tensor`/`--per-channel`, `--symmetric` (i8
/// symmetric activations) or `--asymmetric` (u8 asymmetric), `--calib-method`, `--smooth`.
/// Dynamic quantization defaults to per-tensor weights, as ONNX Runtime's `quantize_dynamic`.
pub fn resolve(opts: &PipelineOptions) -> Result<(QConfig, Option<QConfigFile>)> {
    let file = opts.qconfig.as_deref().map(load).transpose()?;
    let mut cfg = file.as_ref().map(|f| f.config.clone()).unwrap_or_default();
    let d = &mut cfg.default;
    if opts.quantize == QuantizeMode::Dynamic && d.granularity.is_none() {
        d.granularity = Some(WeightGranularity::PerTensor);
    }
    if opts.per_tensor {
        d.granularity = Some(WeightGranularity::PerTensor);
    } else if opts.per_channel {
        d.granularity = Some(WeightGranularity::PerChannel);
    }
    if opts.symmetric {
        d.activations = Some(Scheme::symmetric(QType::I8));
    } else if opts.asymmetric {
        d.activations = Some(Scheme::asymmetric(QType::U8));
    }
    if let Some(m) = opts.calib_method {
        d.observer = Some(m);
    }
    if let Some(a) = opts.smooth {
        cfg.smooth = Some(a);
    }
    if let Some(s) = opts.bias_correction {
        cfg.bias_correction = Some(s.on());
    }
    if let Some(s) = opts.quantize_outputs {
        cfg.quantize_outputs = Some(s.on());
    }
    if let Some(r) = opts.rounding {
        cfg.default.rounding = Some(r.rounding());
    }
    Ok((cfg, file))
}

/// Where the default observer came from, for the calibration log: `minmax (the default)`,
/// `entropy (--calib-method)`, `mse (the qconfig's [default])`.
pub fn observer_origin(opts: &PipelineOptions, cfg: &QConfig) -> String {
    let m = cfg.default.observer.unwrap_or_default();
    let from = match (opts.calib_method, cfg.default.observer) {
        (Some(_), _) => "--calib-method",
        (None, Some(_)) => "the qconfig's [default]",
        (None, None) => "the default",
    };
    format!("{} ({from})", m.name())
}

/// A qconfig that keeps the named layers float: `header` (comment lines), `[smoothquant]` when
/// `cfg` smooths, and one `skip = true` rule per layer (`sensitivity -o` and `--min-sqnr` write
/// it; `compile --qconfig` reads it back).
pub fn skip_rules_text(header: &str, skip: &[String], cfg: &QConfig, base: Option<&Path>) -> String {
    let mut text = header.to_string();
    if let Some(p) = base {
        text.push_str(&format!("# on top of `{}`: copy its rules above these\n", p.display()));
    }
    if let Some(a) = cfg.smooth {
        text.push_str(&format!("\n[smoothquant]\nalpha = {a}\n"));
    }
    if let Some(on) = cfg.bias_correction {
        text.push_str(&format!("\n[bias_correction]\nenabled = {on}\n"));
    }
    if let Some(on) = cfg.quantize_outputs {
        text.push_str(&format!("\n[outputs]\nquantize = {on}\n"));
    }
    for s in skip {
        // a name with glob characters is matched exactly through an anchored, escaped regex
        let (key, pat) =
            if s.contains(['*', '?']) { ("regex", format!("^{}$", regex::escape(s))) } else { ("match", s.clone()) };
        text.push_str(&format!("\n[[node]]\n{key} = {}\nskip = true\n", toml::Value::String(pat)));
    }
    text
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

/// The error at a byte span of `text`.
fn at(text: &str, span: std::ops::Range<usize>, msg: impl ToString) -> QConfigError {
    QConfigError { line: Some(line_of(text, span.start)), msg: msg.to_string() }
}

/// Parses qconfig text, keeping the lines of the `[[node]]` rules.
pub fn parse_file(text: &str) -> Result<QConfigFile, QConfigError> {
    let file: FileToml = toml::from_str(text).map_err(|e| QConfigError {
        line: e.span().map(|s| line_of(text, s.start)),
        msg: e.message().trim_end().to_string(),
    })?;
    let mut cfg = QConfig::default();
    let mut node_lines = vec![];
    if let Some(d) = &file.default {
        no_pattern(d.get_ref(), "[default]").map_err(|(s, m)| at(text, s, m))?;
        cfg.default = rule(d.get_ref(), text)?;
    }
    for (name, r) in &file.op {
        no_pattern(r.get_ref(), &format!("[op.{name}]")).map_err(|(s, m)| at(text, s, m))?;
        if !KNOWN_OPS.contains(&name.as_str()) {
            return Err(at(
                text,
                r.span(),
                format!("unknown op type `{name}` in [op.{name}] (expected one of {})", KNOWN_OPS.join(", ")),
            ));
        }
        cfg.op_types.push((name.clone(), rule(r.get_ref(), text)?));
    }
    for n in &file.node {
        let r = n.get_ref();
        let pattern = match (&r.glob, &r.regex) {
            (Some(g), None) => Pattern::Glob(g.get_ref().clone()),
            (None, Some(re)) => Pattern::regex(re.get_ref()).map_err(|m| at(text, re.span(), m))?,
            (Some(g), Some(_)) => return Err(at(text, g.span(), "a [[node]] rule takes `match` or `regex`, not both")),
            (None, None) => {
                return Err(at(text, n.span(), "a [[node]] rule needs `match = \"GLOB\"` or `regex = \"RE\"`"))
            }
        };
        cfg.nodes.push(NodeRule { pattern, rule: rule(r, text)? });
        node_lines.push(line_of(text, n.span().start));
    }
    if let Some(sq) = &file.smoothquant {
        let alpha = match &sq.get_ref().alpha {
            Some(a) => {
                let v = *a.get_ref();
                if !(0.0..=1.0).contains(&v) {
                    return Err(at(text, a.span(), format!("[smoothquant] alpha {v} is not in [0, 1]")));
                }
                v
            }
            None => 0.5,
        };
        cfg.smooth = Some(alpha);
    }
    if let Some(bc) = &file.bias_correction {
        cfg.bias_correction = Some(bc.enabled.unwrap_or(QConfig::DEFAULT_BIAS_CORRECTION));
    }
    if let Some(o) = &file.outputs {
        cfg.quantize_outputs = Some(o.quantize.unwrap_or(QConfig::DEFAULT_QUANTIZE_OUTPUTS));
    }
    if let Some(a) = &file.adaround {
        let t = a.get_ref();
        let d = AdaRoundOptions::default();
        let o = AdaRoundOptions {
            iterations: t.iterations.unwrap_or(d.iterations),
            batch: t.batch.unwrap_or(d.batch),
            lr: t.lr.unwrap_or(d.lr),
            reg_weight: t.reg_weight.unwrap_or(d.reg_weight),
            beta: t.beta.map_or(d.beta, |[a, b]| (a, b)),
            warm_start: t.warm_start.unwrap_or(d.warm_start),
            seed: t.seed.unwrap_or(d.seed),
        };
        o.check().map_err(|m| at(text, a.span(), m))?;
        cfg.adaround = Some(o);
    }
    cfg.check().map_err(|msg| QConfigError { line: None, msg: msg.to_string() })?;
    Ok(QConfigFile { config: cfg, node_lines })
}

/// The op names the IR uses (what `[op.NAME]` may name).
const KNOWN_OPS: &[&str] = &[
    "conv",
    "gemm",
    "matmul",
    "add",
    "max_pool",
    "average_pool",
    "global_average_pool",
    "global_max_pool",
    "concat",
    "relu",
    "clip",
    "batch_norm",
    "softmax",
    "layer_norm",
    "mul",
    "sub",
    "div",
    "sigmoid",
    "hard_swish",
    "gelu",
    "reshape",
    "flatten",
    "transpose",
    "slice",
    "gather",
    "split",
    "attention_scores",
    "attention_context",
];

fn no_pattern(r: &RuleToml, what: &str) -> Result<(), (std::ops::Range<usize>, String)> {
    if let Some(g) = &r.glob {
        return Err((g.span(), format!("`match` belongs in a [[node]] rule, not in {what}")));
    }
    if let Some(g) = &r.regex {
        return Err((g.span(), format!("`regex` belongs in a [[node]] rule, not in {what}")));
    }
    Ok(())
}

fn scheme(s: &str, weights: bool) -> Result<Scheme, String> {
    let (ty, kind) = match s.split_once('-') {
        Some((t, k)) => (Some(t), k),
        None => (None, s),
    };
    let symmetric = match kind {
        "symmetric" => true,
        "asymmetric" => false,
        _ => return Err(format!("unknown scheme `{s}` (expected e.g. u8-asymmetric, i8-symmetric, symmetric)")),
    };
    let qtype = match ty {
        Some("i8") => QType::I8,
        Some("u8") => QType::U8,
        Some("i4") if weights => QType::I4,
        Some("u4") if weights => QType::U4,
        Some(t) => {
            return Err(format!("unknown type `{t}` in scheme `{s}` (i8, u8{})", if weights { ", i4, u4" } else { "" }))
        }
        None if symmetric => QType::I8,
        None => {
            if weights {
                QType::I8
            } else {
                QType::U8
            }
        }
    };
    Ok(Scheme { qtype, symmetric })
}

fn rule(r: &RuleToml, text: &str) -> Result<Rule, QConfigError> {
    let mut out = Rule::default();
    if let Some(p) = &r.precision {
        out.precision = Some(Precision::parse(p.get_ref()).map_err(|m| at(text, p.span(), m))?);
    }
    if let Some(s) = &r.skip {
        if *s.get_ref() {
            if out.precision.is_some_and(|p| p != Precision::Fp32) {
                return Err(at(text, s.span(), "`skip = true` contradicts the rule's precision"));
            }
            out.precision = Some(Precision::Fp32);
        }
    }
    if let Some(a) = &r.activations {
        let s = scheme(a.get_ref(), false).map_err(|m| at(text, a.span(), m))?;
        out.activations = Some(s);
    }
    if let Some(w) = &r.weights {
        out.weights = Some(scheme(w.get_ref(), true).map_err(|m| at(text, w.span(), m))?);
    }
    if let Some(b) = &r.bits {
        let base = out.weights.unwrap_or(Scheme::symmetric(QType::I8));
        let qtype = match (*b.get_ref(), base.qtype.is_signed()) {
            (8, true) => QType::I8,
            (8, false) => QType::U8,
            (4, true) => QType::I4,
            (4, false) => QType::U4,
            (n, _) => return Err(at(text, b.span(), format!("{n} weight bits (expected 8 or 4)"))),
        };
        out.weights = Some(Scheme { qtype, ..base });
    }
    if let Some(g) = &r.granularity {
        out.granularity = Some(match g.get_ref().as_str() {
            "per-channel" => WeightGranularity::PerChannel,
            "per-tensor" => WeightGranularity::PerTensor,
            other => match other.strip_prefix("per-group:").map(str::parse::<usize>) {
                Some(Ok(n)) if n > 0 => WeightGranularity::PerGroup(n),
                Some(_) => {
                    return Err(at(
                        text,
                        g.span(),
                        format!(
                        "bad group size in granularity `{other}` (expected per-group:N with N > 0, e.g. per-group:32)"
                    ),
                    ))
                }
                None => {
                    return Err(at(
                        text,
                        g.span(),
                        format!("unknown granularity `{other}` (expected per-channel, per-tensor or per-group:N)"),
                    ))
                }
            },
        });
    }
    if let Some(o) = &r.observer {
        out.observer = Some(o.get_ref().parse::<CalibMethod>().map_err(|m| at(text, o.span(), m))?);
    }
    if let Some(p) = &r.percentile {
        let v = *p.get_ref();
        if !(v > 0.0 && v <= 100.0) {
            return Err(at(text, p.span(), format!("percentile {v} is not in (0, 100]")));
        }
        out.percentile = Some(v);
    }
    if let Some(m) = &r.momentum {
        let v = *m.get_ref();
        if !(0.0..1.0).contains(&v) {
            return Err(at(text, m.span(), format!("momentum {v} is not in [0, 1)")));
        }
        out.momentum = Some(v);
    }
    if let Some(k) = &r.rounding {
        out.rounding = Some(Rounding::parse(k.get_ref()).map_err(|m| at(text, k.span(), m))?);
    }
    if let Some(b) = &r.bins {
        if *b.get_ref() < 16 {
            return Err(at(text, b.span(), format!("{} histogram bins (at least 16)", b.get_ref())));
        }
        out.bins = Some(*b.get_ref());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_example_backbone_int8_neck_fp16_head_fp32() {
        let cfg = parse(
            r#"
[default]
observer = "entropy"

[op.gemm]
granularity = "per-tensor"

[[node]]
match = "/backbone/*"
precision = "int8"

[[node]]
regex = "^/neck/"
precision = "fp16"

[[node]]
match = "/head/*"
skip = true
"#,
        )
        .unwrap();
        assert_eq!(cfg.default.observer, Some(CalibMethod::Entropy));
        assert_eq!(cfg.op_types[0].1.granularity, Some(WeightGranularity::PerTensor));
        assert_eq!(cfg.nodes.len(), 3);
        assert_eq!(cfg.nodes[1].rule.precision, Some(Precision::Fp16));
        assert_eq!(cfg.nodes[2].rule.precision, Some(Precision::Fp32));
        assert!(cfg.nodes[2].pattern.matches("/head/fc/Gemm"));
    }

    #[test]
    fn bad_files_name_the_line() {
        let cases: &[(&str, &str)] = &[
            ("[default]\nobserver = \"kl\"\n", "line 2: unknown calibration method `kl`"),
            ("[default]\n\ngranularity = \"per-row\"\n", "line 3: unknown granularity `per-row`"),
            ("[default]\nfoo = 1\n", "line 2: unknown field `foo`"),
            ("[[node]]\nprecision = \"fp16\"\n", "line 1: a [[node]] rule needs `match"),
            ("[[node]]\nregex = \"(\"\n", "line 2: invalid regex `(`"),
            ("[default]\nmatch = \"x\"\n", "line 2: `match` belongs in a [[node]] rule"),
            ("[default]\nbits = 3\n", "line 2: 3 weight bits"),
            ("[default]\ngranularity = \"per-group:0\"\n", "line 2: bad group size in granularity `per-group:0`"),
            ("[default]\ngranularity = \"per-group:x\"\n", "line 2: bad group size"),
            ("[default]\nactivations = \"i4-symmetric\"\n", "line 2: unknown type `i4`"),
            ("[default]\nprecision = \"int4\"\n", "line 2: unknown precision `int4`"),
            ("[op.convolution]\nskip = true\n", "line 1: unknown op type `convolution`"),
            ("[default]\npercentile = 120.0\n", "line 2: percentile 120"),
            ("[default\n", "line 1: "),
            ("[default]\nskip = \"yes\"\n", "line 2: "),
            ("[smoothquant]\nalpha = 1.5\n", "line 2: [smoothquant] alpha 1.5 is not in [0, 1]"),
            ("[smoothquant]\nbeta = 0.5\n", "line 2: unknown field `beta`"),
            ("[bias_correction]\nalpha = 0.5\n", "line 2: unknown field `alpha`"),
            ("[default]\nrounding = \"up\"\n", "line 2: unknown rounding `up` (expected nearest or adaround)"),
            ("[adaround]\nwarm_start = 1.5\n", "line 1: [adaround]: warm_start 1.5 is not in [0, 1)"),
            ("[adaround]\niterations = 0\n", "line 1: [adaround]: iterations and batch must be at least 1"),
            ("[bias_correction]\nenabled = \"no\"\n", "line 2: "),
        ];
        for (text, want) in cases {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.starts_with(want), "{text:?}: got `{e}`, want `{want}...`");
        }
    }

    #[test]
    fn attention_roles_and_smoothquant() {
        let cfg = parse("[op.attention_scores]\nprecision = \"fp16\"\n\n[smoothquant]\nalpha = 0.75\n").unwrap();
        assert_eq!(cfg.op_types[0].0, "attention_scores");
        assert_eq!(cfg.op_types[0].1.precision, Some(Precision::Fp16));
        assert_eq!(cfg.smooth, Some(0.75));
        assert_eq!(parse("[smoothquant]\n").unwrap().smooth, Some(0.5));
        assert_eq!(parse("").unwrap().smooth, None);
        assert_eq!(parse("[bias_correction]\nenabled = false\n").unwrap().bias_correction, Some(false));
        let ada =
            parse("[[node]]\nmatch = \"/conv*\"\nrounding = \"adaround\"\n[adaround]\niterations = 50\n").unwrap();
        assert!(ada.rounds_adaptively());
        assert_eq!(ada.adaround.map(|a| a.iterations), Some(50));
        assert!(!parse("[default]\nrounding = \"nearest\"\n").unwrap().rounds_adaptively());
        assert_eq!(parse("[bias_correction]\n").unwrap().bias_correction, Some(true));
        assert_eq!(parse("").unwrap().bias_correction, None);
        assert_eq!(parse("[outputs]\nquantize = true\n").unwrap().quantize_outputs, Some(true));
        assert_eq!(parse("").unwrap().quantize_outputs, None);
    }

    #[test]
    fn four_bit_weights_and_schemes() {
        let cfg = parse("[default]\nweights = \"u8-asymmetric\"\nbits = 4\nactivations = \"symmetric\"\n").unwrap();
        assert_eq!(cfg.default.weights, Some(Scheme::asymmetric(QType::U4)));
        assert_eq!(cfg.default.activations, Some(Scheme::symmetric(QType::I8)));
        let cfg = parse("[default]\nbits = 4\ngranularity = \"per-group:32\"\n").unwrap();
        assert_eq!(cfg.default.weights, Some(Scheme::symmetric(QType::I4)));
        assert_eq!(cfg.default.granularity, Some(WeightGranularity::PerGroup(32)));
    }
}
