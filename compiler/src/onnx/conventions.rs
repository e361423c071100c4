//! A target toolchain's export conventions applied to `qforge quantize --profile P`: the
//! profile's `[export]` table ([`ExportConventions`]) becomes the quantization policy's defaults
//! (a user's qconfig and flags still override them where the toolchain allows it), the choices it
//! does not take are refused in one line, and conv and gemm output channels are padded to the
//! profile's alignment before quantization when the conventions ask for it.
//!
//! * NVIDIA (TensorRT Developer Guide, "Explicit Quantization", "Q/DQ Layer-Placement
//!   Recommendations"): TensorRT's explicit quantization takes signed int8 only, symmetric (zero
//!   point 0) for activations and weights; it wants the inputs of weighted ops quantized, the
//!   outputs of weighted ops left in float where a float op follows, and the residual input of an
//!   element-wise add quantized so it fuses the add into the conv before it: the add stays float
//!   here (`float_ops = ["add"]`), its skip input is the quantized value the next conv reads too.
//!   Channels are padded to the tensor cores' multiple (`pad_channels`, the profile's
//!   `channel_align`; the padded channels are zero weights, so every real output is unchanged).
//!   Biases stay float (`int32_bias = false`): TensorRT's DequantizeLinear takes 8-bit inputs,
//!   and it adds a float bias in the fused kernel.
//! * Qualcomm (QNN, as ONNX Runtime's QNN execution provider takes QDQ): u8 asymmetric
//!   activations, signed symmetric weights per channel, int8 or int4.
//! * Intel (OpenVINO's low-precision transformations): u8 (or i8) activations, i8 symmetric
//!   weights per output channel.
//!
//! Without `--profile` nothing here applies and the export is ONNX Runtime's QDQ form.

use crate::compiler::Compiler;
use crate::options::{PipelineOptions, QuantizeMode};
use anyhow::{bail, Context, Result};
use qforge_ir::{DType, Graph, Op, Value};
use qforge_passes::pass::{Pass, PassContext};
use qforge_passes::precision::conventions::granularity_name;
use qforge_passes::precision::{AlignChannels, ExportConventions, ExportFamily, Profile};
use qforge_passes::quantize::scheme::{QType, Scheme};
use qforge_passes::quantize::{Precision, QConfig, Rule, WeightGranularity};
use std::path::Path;

/// Whether the toolchain takes granularity `g` (a per-group entry stands for any group size).
fn takes_granularity(c: &ExportConventions, g: WeightGranularity) -> bool {
    c.granularity.iter().any(|&t| match (t, g) {
        (WeightGranularity::PerGroup(_), WeightGranularity::PerGroup(_)) => true,
        (a, b) => a == b,
    })
}

/// "`nvidia-xavier`'s export (TensorRT explicit quantization)", for messages.
fn whose(profile: &Profile) -> String {
    format!("the `{}` export ({})", profile.name, profile.export.toolchain)
}

fn names(s: &[Scheme]) -> String {
    s.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
}

/// Refuses a rule's settings the toolchain does not take; `what` names the rule.
fn check_rule(profile: &Profile, what: &str, r: &Rule) -> Result<()> {
    let c = &profile.export;
    if let Some(a) = r.activations {
        if !c.activations.contains(&a) {
            bail!("{what}: activations {}: {} takes {} activations", a.name(), whose(profile), names(&c.activations));
        }
    }
    if let Some(w) = r.weights {
        if !c.weights.contains(&w) {
            bail!("{what}: weights {}: {} takes {} weights", w.name(), whose(profile), names(&c.weights));
        }
    }
    if let Some(g) = r.granularity {
        if !takes_granularity(c, g) {
            let list: Vec<String> = c.granularity.iter().map(|&g| granularity_name(g)).collect();
            bail!("{what}: {} weights: {} takes {} weights", granularity_name(g), whose(profile), list.join(" or "));
        }
    }
    Ok(())
}

/// The quantization policy of an export for `profile` (`None`: no `--profile`, the policy as
/// the qconfig and flags give it): the conventions' schemes and granularity as defaults under the
/// user's `[default]`, and the ops the toolchain fuses in float kept float under the user's op
/// rules; `weight_bits` (`--weight-bits`) picks the weight scheme of that width. Refuses, in one
/// line naming the flag or qconfig rule, what the toolchain does not take.
pub fn policy(
    profile: Option<&Profile>,
    opts: &PipelineOptions,
    qconfig: &QConfig,
    weight_bits: Option<u32>,
) -> Result<QConfig> {
    let mut cfg = qconfig.clone();
    let Some(profile) = profile else {
        if let Some(bits) = weight_bits {
            let qtype = if bits == 4 { QType::I4 } else { QType::I8 };
            cfg.default.weights = Some(Scheme::symmetric(qtype));
        }
        return Ok(cfg);
    };
    let c = &profile.export;
    if opts.quantize == QuantizeMode::Dynamic && c.family != ExportFamily::Onnxruntime {
        bail!("--quantize dynamic: {} takes static Q/DQ only (calibrated scales: use --calib)", whose(profile));
    }
    // the flags first, so the message names the flag rather than the [default] it was merged into
    let flags = [
        (opts.symmetric, "--symmetric", Rule { activations: Some(Scheme::symmetric(QType::I8)), ..Rule::default() }),
        (opts.asymmetric, "--asymmetric", Rule { activations: Some(Scheme::asymmetric(QType::U8)), ..Rule::default() }),
        (opts.per_tensor, "--per-tensor", Rule { granularity: Some(WeightGranularity::PerTensor), ..Rule::default() }),
    ];
    for (on, flag, rule) in flags {
        if on {
            check_rule(profile, flag, &rule)?;
        }
    }
    let weights = match weight_bits {
        None => c.weights[0],
        Some(bits) => c.weight_scheme(bits).ok_or_else(|| {
            anyhow::anyhow!("--weight-bits {bits}: {} takes {} weights", whose(profile), names(&c.weights))
        })?,
    };
    check_rule(profile, "the qconfig's [default]", &cfg.default)?;
    for (op, r) in &cfg.op_types {
        check_rule(profile, &format!("the qconfig's [op.{op}]"), r)?;
    }
    for n in &cfg.nodes {
        check_rule(profile, &format!("the qconfig's [[node]] {}", n.pattern), &n.rule)?;
    }
    let mut default = Rule {
        activations: Some(c.activation_default()),
        weights: Some(weights),
        granularity: Some(c.granularity[0]),
        ..Rule::default()
    };
    let mut user = cfg.default.clone();
    if weight_bits.is_some() {
        // --weight-bits decides the width over the qconfig's [default] (a node rule still wins)
        user.weights = None;
    }
    default.merge(&user);
    cfg.default = default;
    let float: Vec<(String, Rule)> = c
        .float_ops
        .iter()
        .map(|op| (op.clone(), Rule { precision: Some(Precision::Fp32), ..Rule::default() }))
        .collect();
    cfg.op_types = float.into_iter().chain(cfg.op_types).collect();
    Ok(cfg)
}

/// Pads conv and gemm output channels of the float model to the profile's `channel_align` when
/// its conventions ask for it ([`AlignChannels`], before calibration, so the padded channels are
/// quantized with the rest: zero weights, zero bias, zero outputs that the next layer's zero input
/// channels or a final slice drop). Returns one note per padded op.
pub fn pad(g: &mut Graph, profile: &Profile, cx: &PassContext) -> Result<Vec<String>> {
    let align = profile.layout.channel_align;
    if !profile.export.pad_channels || align <= 1 {
        return Ok(vec![]);
    }
    let r = AlignChannels { align }.run(g, cx)?;
    Ok(if r.changed { r.notes } else { vec![] })
}

/// Writes each int32 bias `dequantize(const)` of `g` as the f32 constant it dequantizes to (the
/// interpreter's dequantize, so the values are the ones the graph computed); returns how many.
pub fn float_biases(g: &mut Graph) -> Result<usize> {
    let mut n = 0;
    for id in g.node_ids().collect::<Vec<_>>() {
        let node = g.node(id);
        let Some(x) = node.inputs().first().copied().flatten().filter(|_| matches!(node.op, Op::Dequantize)) else {
            continue;
        };
        let Op::Const(t) = &g.node(x.node).op else { continue };
        if g.value_type(x).dtype != DType::I32 {
            continue;
        }
        let ins = [Some(g.value_type(x))];
        let y = qforge_ir::interp::eval_op(&node.op, &ins, &node.outputs, &[Some(&**t)])
            .with_context(|| format!("node `{}`: dequantizing the bias", node.name))?;
        let f = y.into_iter().next().context("dequantize gave no result")?;
        let c = g.add_const(format!("{}_float", g.node(x.node).name), f);
        g.replace_all_uses(Value::new(id, 0), c);
        n += 1;
    }
    g.remove_dead();
    Ok(n)
}

/// An export for a target: the quantized Q/DQ graph (what qforge runs), its ONNX bytes, and what
/// the conventions changed.
#[derive(Debug)]
pub struct TargetExport {
    /// The profile whose conventions applied (`None` without `--profile`).
    pub profile: Option<Profile>,
    pub graph: Graph,
    pub bytes: Vec<u8>,
    /// One note per op whose channels were padded.
    pub padded: Vec<String>,
    /// Biases written as float.
    pub float_biases: usize,
    /// The compiler with the policy the export used (to run `graph` as qforge does).
    pub compiler: Compiler,
}

/// Quantizes the model at `model` with `c` (its options: static INT8 unless dynamic, Q/DQ form:
/// opt level at most 1) under the conventions of the `--profile` it was given, and exports it.
pub fn export(c: Compiler, model: &Path, weight_bits: Option<u32>) -> Result<TargetExport> {
    let profile = c.options().profile.is_some().then(|| c.profile().clone());
    let qconfig = policy(profile.as_ref(), c.options(), c.qconfig(), weight_bits)?;
    let c = c.with_qconfig(qconfig);
    let mut g = c.load(model)?;
    let padded = match &profile {
        Some(p) => pad(&mut g, p, &c.pass_context())?,
        None => vec![],
    };
    let mut g = c.optimize(g)?;
    let float_biases = match &profile {
        Some(p) if !p.export.int32_bias => float_biases(&mut g)?,
        _ => 0,
    };
    // 4-bit per-channel weights are written as INT4 (what QNN's int4 weights are)
    let cfg = c.qconfig();
    let rules = std::iter::once(&cfg.default).chain(cfg.op_types.iter().map(|(_, r)| r));
    let int4_per_axis =
        rules.chain(cfg.nodes.iter().map(|n| &n.rule)).any(|r| r.weights.is_some_and(|w| w.qtype.bits() == 4));
    let bytes = super::export::export_qdq_with(&g, super::export::ExportOptions { int4_per_axis })?;
    Ok(TargetExport { profile, graph: g, bytes, padded, float_biases, compiler: c })
}
