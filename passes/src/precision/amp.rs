//! Precision assignment: retypes f32 ops to f16 or bf16 under the AMP policy.
//!
//! First, a batch norm that follows a conv is folded into it ([`crate::batchnorm`]): the conv then
//! computes the normalized value and rounds it once.
//!
//! # Decisions (per node, in schedule order)
//! Only plain f32 ops the policy knows are retyped ([`PrecisionPolicy::class_of`]); sources,
//! casts, comparisons, quantization, integer kernels and nodes that are already f16/bf16 keep
//! their types. For the others, the first rule that applies decides ([`Rule`]):
//! 1. the node's name matches a `force_fp32` pattern: f32;
//! 2. the node is next to quantization (reads a dequantized or integer-converted value, or a
//!    quantize reads it): f32, so Q/DQ patterns stay whole for the optimizer's integer kernels;
//! 3. the op is in the `fp32` class: f32 (also inside a qconfig fp16 region, as in autocast);
//! 4. the qconfig (`regions`) resolves the node to `fp32`: f32; with `regions_only`
//!    (`--precision fp32`), a node in no fp16/bf16 region: f32;
//! 5. fp16 only: the overflow guard. A node stays f32 when a constant float input holds a value
//!    beyond fp16's range, or, with calibration ranges, when its result or a float input was
//!    observed beyond `overflow_margin * 65504` (see [`super::policy::DEFAULT_OVERFLOW_MARGIN`]);
//! 6. the qconfig resolves the node to `fp16` or `bf16`: that type;
//! 7. the op's class: `low` runs in the low type; `follow` takes the widest type of its
//!    non-constant float inputs under `amp` and the low type under `fp16`/`bf16`.
//!
//! Then the accuracy guard ([`F32Prefix`], chosen by [`super::search`]): the first `count` nodes
//! that these rules put in low precision stay f32.
//!
//! # Rewriting
//! A retyped node's float inputs are converted to its type, a kept node's back to their original
//! type: a constant is converted offline (a new f16/bf16 constant, never a runtime cast), any other
//! value through one `cast` per (value, type), shared by every consumer. A cast that widened a
//! 16-bit float exactly (f16/bf16 to f32) is looked through: the pair cancels when the consumer
//! wants the narrow type back, and one cast from the narrow value replaces the chain otherwise, so
//! no cast ever reads a cast this pass made. Graph inputs and outputs keep their types (keep_io_types): an output
//! whose value became low precision is cast back.
//!
//! A `cast` already in the graph reads its input as it now is (f16/bf16 widen to f32 exactly, so
//! its result is unchanged) and disappears when it would convert a value to its own type.
//!
//! Running the pass twice changes nothing: retyped nodes are no longer f32, and every f32 node
//! decides as before.

use super::policy::{OpClass, PrecisionPolicy, F16_MAX};
use crate::pass::{Pass, PassContext, PassError, PassReport};
use crate::quantize::policy::{Precision as QPrecision, QConfig, Rule as QRule};
use qforge_ir::{DType, Graph, NodeId, Op, Tensor, TensorType, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// Observed largest magnitude per node name (graph inputs by their names), from calibration.
pub type Ranges = BTreeMap<String, f64>;

/// The accuracy guard's decision ([`super::search`]): the first `count` nodes, in schedule
/// order, that would run in low precision stay f32, because that is the shortest such prefix whose
/// output reaches `target_db` SQNR against f32 on the calibration inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct F32Prefix {
    pub count: usize,
    pub target_db: f64,
}

/// What to assign.
#[derive(Clone, Debug, PartialEq)]
pub struct PrecisionConfig {
    /// The low-precision type: f16 or bf16.
    pub low: DType,
    /// `true`: the three-class AMP policy; `false` (`--precision fp16|bf16`): every op that is not
    /// in the f32 class runs in `low`.
    pub amp: bool,
    pub policy: PrecisionPolicy,
    /// Calibration ranges for the fp16 overflow guard.
    pub ranges: Option<Ranges>,
    /// Fold a batch norm into the conv before it first (see [`crate::batchnorm`]).
    pub fold_batch_norm: bool,
    /// The quantization policy's float regions (`--qconfig`): a node whose rules resolve to
    /// `fp16` or `bf16` runs in that type (unless its op is in the f32 class, as inside an
    /// autocast region), one that resolves to `fp32` (or `skip`) stays f32.
    pub regions: Option<QConfig>,
    /// Only the `regions` are lowered; every other node stays f32 (`--precision fp32` with a
    /// qconfig that asks for fp16 or bf16 somewhere).
    pub regions_only: bool,
    /// The accuracy guard's f32 prefix.
    pub f32_prefix: Option<F32Prefix>,
}

impl PrecisionConfig {
    pub fn new(low: DType, amp: bool) -> PrecisionConfig {
        PrecisionConfig {
            low,
            amp,
            policy: PrecisionPolicy::default(),
            ranges: None,
            fold_batch_norm: true,
            regions: None,
            regions_only: false,
            f32_prefix: None,
        }
    }

    /// Assignment of the qconfig's float regions alone (`--precision fp32` with regions).
    pub fn regions_only(regions: QConfig) -> PrecisionConfig {
        PrecisionConfig { regions: Some(regions), regions_only: true, ..PrecisionConfig::new(DType::F16, false) }
    }

    /// Whether a qconfig asks for fp16 or bf16 anywhere (so `--precision fp32` still needs the
    /// pass).
    pub fn has_low_regions(q: &QConfig) -> bool {
        let low = |r: &QRule| matches!(r.precision, Some(QPrecision::Fp16 | QPrecision::Bf16));
        low(&q.default) || q.op_types.iter().any(|(_, r)| low(r)) || q.nodes.iter().any(|n| low(&n.rule))
    }
}

/// Why a node got its type.
#[derive(Clone, Debug, PartialEq)]
pub enum Rule {
    /// Matched a `force_fp32` pattern.
    Forced(String),
    /// fp16 overflow guard: what was too large, and the limit.
    Guard { what: String, max: f64, limit: f64 },
    /// Reads a dequantized or integer-converted value, or feeds a quantize: the Q/DQ pattern the
    /// optimizer lowers to integer kernels stays f32 (and an i32 accumulator would overflow fp16).
    QuantDomain(String),
    /// The op's class (`fp32` or `low`).
    Class(OpClass),
    /// `follow` under `amp`: the widest input type.
    FollowWidest,
    /// `follow` under `fp16`/`bf16`: the low type.
    FollowLowMode,
    /// The qconfig's rules for the node resolve to this precision.
    Region(&'static str),
    /// Outside every qconfig float region with `--precision fp32`.
    OutsideRegions,
    /// Among the first nodes that would run in low precision, kept f32 to reach the SQNR target.
    AccuracyGuard { target_db: f64 },
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Forced(p) => write!(f, "forced to fp32 by pattern `{p}`"),
            Rule::Guard { what, max, limit } => {
                write!(f, "overflow guard: {what} reaches {max:.6e}, beyond the fp16 limit {limit}")
            }
            Rule::QuantDomain(why) => write!(f, "next to quantization ({why}): stays f32"),
            Rule::Class(OpClass::Fp32) => f.write_str("fp32 class (numerically sensitive)"),
            Rule::Class(OpClass::Low) => f.write_str("low-precision class (compute bound)"),
            Rule::Class(OpClass::Follow) => f.write_str("follow class"),
            Rule::FollowWidest => f.write_str("follows its widest input"),
            Rule::FollowLowMode => f.write_str("follow class, low precision in this mode"),
            Rule::Region(p) => write!(f, "qconfig region asks for {p}"),
            Rule::OutsideRegions => f.write_str("outside the qconfig's float regions"),
            Rule::AccuracyGuard { target_db } => {
                write!(f, "accuracy guard: in the f32 prefix that reaches {target_db} dB SQNR on the calibration data")
            }
        }
    }
}

/// One node's decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub node: String,
    pub op: &'static str,
    pub dtype: DType,
    pub rule: Rule,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {} — {}", self.node, self.op, self.dtype, self.rule)
    }
}

/// The precision assignment pass.
#[derive(Clone, Debug)]
pub struct AssignPrecision {
    pub config: PrecisionConfig,
}

impl AssignPrecision {
    pub fn new(config: PrecisionConfig) -> AssignPrecision {
        AssignPrecision { config }
    }
}

/// The stat keys of the report.
pub const STAT_CASTS: &str = "casts inserted";
pub const STAT_CONSTS: &str = "constants converted";
pub const STAT_LOW: &str = "nodes low precision";
pub const STAT_FP32: &str = "nodes kept fp32";
pub const STAT_GUARDED: &str = "nodes kept fp32 by the overflow guard";
pub const STAT_CASTS_REMOVED: &str = "casts made redundant";
pub const STAT_FOLDED: &str = "batch norms folded into convs";
pub const STAT_ACCURACY_GUARD: &str = "nodes kept fp32 by the accuracy guard";

impl Pass for AssignPrecision {
    fn name(&self) -> &'static str {
        "precision"
    }

    fn run(&self, g: &mut Graph, _cx: &PassContext) -> Result<PassReport, PassError> {
        let cfg = &self.config;
        let mut report = PassReport::new(self.name());
        let fail = |msg: String| PassError::Failed { pass: "precision".into(), msg };
        if !matches!(cfg.low, DType::F16 | DType::BF16) {
            return Err(fail(format!("the low-precision type must be f16 or bf16, not {}", cfg.low)));
        }
        let ir = |error| PassError::Ir { pass: "precision".into(), error };
        if cfg.fold_batch_norm {
            report.count(STAT_FOLDED, crate::batchnorm::fold_batch_norms(g) as u64);
        }
        let order = g.schedule().map_err(ir)?;
        let decisions = decide(g, cfg, &order);

        // Original dtypes of every value read, before any retyping.
        let mut orig: HashMap<Value, DType> = HashMap::new();
        for &id in &order {
            for v in g.node(id).inputs().iter().flatten() {
                orig.insert(*v, g.value_type(*v).dtype);
            }
        }
        let out_types: Vec<DType> = g.outputs().iter().map(|o| g.value_type(o.value).dtype).collect();
        let target: HashMap<NodeId, DType> = decisions.iter().map(|(id, d)| (*id, d.dtype)).collect();

        let mut conv = Converter::default();
        for &id in &order {
            if matches!(g.node(id).op, Op::Input | Op::Const(_)) {
                continue;
            }
            let want_all = target.get(&id).copied();
            if let Op::Cast { to } = g.node(id).op {
                // a cast of the graph's own reads its (possibly now 16-bit) float input directly:
                // widening f16/bf16 to f32 is exact, so the result is the same, without a chain;
                // a cast that now converts to its input's own type goes away
                let Some(src) = g.node(id).inputs().first().copied().flatten() else { continue };
                if g.value_type(src).dtype == to && g.value_type(src).quant.is_none() {
                    g.replace_all_uses(Value::new(id, 0), src);
                    report.count(STAT_CASTS_REMOVED, 1);
                }
                continue;
            }
            let inputs: Vec<Option<Value>> = g.node(id).inputs().to_vec();
            for (slot, v) in inputs.into_iter().enumerate() {
                let Some(v) = v else { continue };
                let t = g.value_type(v);
                if !t.dtype.is_float() || t.quant.is_some() {
                    continue;
                }
                let want = want_all.unwrap_or_else(|| orig.get(&v).copied().unwrap_or(t.dtype));
                let nv = conv.convert(g, v, want);
                if nv != v {
                    g.set_input(id, slot, Some(nv));
                }
            }
            if let Some(d) = want_all {
                if d != DType::F32 {
                    for t in &mut g.node_mut(id).outputs {
                        t.dtype = d;
                    }
                }
            }
        }
        for (i, &want) in out_types.iter().enumerate() {
            let v = g.outputs()[i].value;
            let nv = conv.convert(g, v, want);
            if nv != v {
                g.set_output_value(i, nv);
            }
        }
        g.remove_dead();

        let low = decisions.iter().filter(|(_, d)| d.dtype != DType::F32).count() as u64;
        report.count(STAT_LOW, low);
        report.stats.insert(STAT_FP32.into(), decisions.len() as u64 - low);
        let guarded = decisions.iter().filter(|(_, d)| matches!(d.rule, Rule::Guard { .. })).count();
        report.stats.insert(STAT_GUARDED.into(), guarded as u64);
        report.count(STAT_CASTS, conv.casts);
        report.count(STAT_CONSTS, conv.consts);
        if let Some(p) = &cfg.f32_prefix {
            report.stats.insert(STAT_ACCURACY_GUARD.into(), p.count as u64);
            report.notes.push(format!(
                "accuracy guard: the first {} nodes that would run in low precision stay f32 (target {} dB SQNR \
                 against f32 on the calibration data)",
                p.count, p.target_db
            ));
        }
        report.notes.push(format!(
            "mode {}{}",
            if cfg.regions_only {
                "qconfig regions only".to_string()
            } else {
                format!("{} with {}", if cfg.amp { "amp" } else { "all-low" }, cfg.low)
            },
            match (&cfg.ranges, cfg.low) {
                (_, DType::BF16) => String::new(),
                (Some(_), _) => format!(", overflow guard at {}", cfg.policy.overflow_limit()),
                (None, _) => ", overflow guard on constants only (no calibration data)".into(),
            }
        ));
        for (_, d) in &decisions {
            report.notes.push(d.to_string());
        }
        Ok(report)
    }
}

/// Decides the type of every plain-f32 node the policy knows, in schedule order.
pub fn decide(g: &Graph, cfg: &PrecisionConfig, order: &[NodeId]) -> Vec<(NodeId, Decision)> {
    let policy = &cfg.policy;
    let mut chosen: HashMap<NodeId, DType> = HashMap::new();
    let mut out = vec![];
    let limit = policy.overflow_limit();
    // nodes that would have run in low precision so far (for the accuracy guard's prefix)
    let mut lowered = 0usize;
    for &id in order {
        let node = g.node(id);
        if matches!(node.op, Op::Input | Op::Const(_)) {
            continue;
        }
        let Some(class) = policy.class_of(&node.op) else { continue };
        let plain_f32 = |t: &TensorType| t.dtype == DType::F32 && t.quant.is_none();
        if node.outputs.is_empty() || !node.outputs.iter().all(plain_f32) {
            continue;
        }
        let float_inputs: Vec<Value> =
            node.inputs().iter().flatten().copied().filter(|v| g.value_type(*v).dtype.is_float()).collect();
        if float_inputs.iter().any(|v| g.value_type(*v).quant.is_some()) {
            continue;
        }
        let region = cfg.regions.as_ref().and_then(|q| match q.resolve_rule(node).precision {
            Some(QPrecision::Fp32) => Some((DType::F32, "fp32")),
            Some(QPrecision::Fp16) => Some((DType::F16, "fp16")),
            Some(QPrecision::Bf16) => Some((DType::BF16, "bf16")),
            Some(QPrecision::Int8) | None => None,
        });
        // the type this node lowers to: its region's, or the mode's
        let low = match region {
            Some((d, _)) if d != DType::F32 => d,
            _ => cfg.low,
        };
        let guard = || -> Option<Rule> {
            if low != DType::F16 {
                return None;
            }
            // constants become f16 offline: anything beyond fp16's range would be infinite
            for v in &float_inputs {
                if let Op::Const(t) = &g.node(v.node).op {
                    let m = t.range().map(|(lo, hi)| lo.abs().max(hi.abs())).unwrap_or(0.0);
                    if m > F16_MAX {
                        let what = format!("constant `{}`", g.node(v.node).name);
                        return Some(Rule::Guard { what, max: m, limit: F16_MAX });
                    }
                }
            }
            let ranges = cfg.ranges.as_ref()?;
            // a node that absorbed others (a folded batch norm) produces what the last of them did
            for name in std::iter::once(&node.name).chain(&node.from) {
                if let Some(&m) = ranges.get(name) {
                    if m > limit {
                        return Some(Rule::Guard { what: "its result".into(), max: m, limit });
                    }
                }
            }
            for v in &float_inputs {
                let p = g.node(v.node);
                if matches!(p.op, Op::Const(_)) {
                    continue;
                }
                for name in std::iter::once(&p.name).chain(&p.from) {
                    if let Some(&m) = ranges.get(name) {
                        if m > limit {
                            return Some(Rule::Guard { what: format!("input `{}`", p.name), max: m, limit });
                        }
                    }
                }
            }
            None
        };
        let (dtype, rule) = if let Some(p) = policy.forced_fp32(&node.name) {
            (DType::F32, Rule::Forced(p.to_string()))
        } else if let Some(why) = quant_adjacent(g, id, &float_inputs) {
            (DType::F32, Rule::QuantDomain(why))
        } else if class == OpClass::Fp32 {
            (DType::F32, Rule::Class(OpClass::Fp32))
        } else if let Some((DType::F32, p)) = region {
            (DType::F32, Rule::Region(p))
        } else if region.is_none() && cfg.regions_only {
            (DType::F32, Rule::OutsideRegions)
        } else if let Some(rule) = guard() {
            (DType::F32, rule)
        } else if let Some((d, p)) = region {
            (d, Rule::Region(p))
        } else {
            match class {
                OpClass::Fp32 => (DType::F32, Rule::Class(OpClass::Fp32)),
                OpClass::Low => (low, Rule::Class(OpClass::Low)),
                OpClass::Follow if !cfg.amp => (low, Rule::FollowLowMode),
                OpClass::Follow => {
                    let mut widest: Option<DType> = None;
                    for v in &float_inputs {
                        if matches!(g.node(v.node).op, Op::Const(_)) {
                            continue;
                        }
                        let d = chosen.get(&v.node).copied().unwrap_or(g.value_type(*v).dtype);
                        widest = Some(match widest {
                            None => d,
                            Some(w) => wider(w, d),
                        });
                    }
                    (widest.unwrap_or(DType::F32), Rule::FollowWidest)
                }
            }
        };
        let (dtype, rule) = match &cfg.f32_prefix {
            Some(p) if dtype != DType::F32 => {
                lowered += 1;
                if lowered <= p.count {
                    (DType::F32, Rule::AccuracyGuard { target_db: p.target_db })
                } else {
                    (dtype, rule)
                }
            }
            _ => (dtype, rule),
        };
        chosen.insert(id, dtype);
        out.push((id, Decision { node: node.name.clone(), op: node.op.name(), dtype, rule }));
    }
    out
}

/// Why `id` belongs to a quantized region: it reads a value made from integers (dequantize,
/// dynamic quantize's scale, a cast from an integer type, an integer kernel's float result) or
/// a quantize reads its result.
fn quant_adjacent(g: &Graph, id: NodeId, float_inputs: &[Value]) -> Option<String> {
    for v in float_inputs {
        let p = g.node(v.node);
        let from_int = match &p.op {
            Op::Dequantize | Op::DynamicQuantize => true,
            Op::Cast { .. } => p.inputs().first().copied().flatten().is_some_and(|u| !g.value_type(u).dtype.is_float()),
            op => op.is_integer_kernel(),
        };
        if from_int {
            return Some(format!("reads `{}`", p.name));
        }
    }
    for (u, _) in g.users(id) {
        let n = g.node(u);
        if matches!(n.op, Op::Quantize | Op::DynamicQuantize) {
            return Some(format!("`{}` quantizes its result", n.name));
        }
    }
    None
}

/// The wider of two float types: f32 over both 16-bit types; f16 and bf16 together widen to f32
/// (neither holds the other).
fn wider(a: DType, b: DType) -> DType {
    if a == b {
        a
    } else {
        DType::F32
    }
}

/// Converts values to a dtype, memoizing casts and converted constants.
#[derive(Default)]
struct Converter {
    done: HashMap<(Value, DType), Value>,
    casts: u64,
    consts: u64,
}

impl Converter {
    fn convert(&mut self, g: &mut Graph, v: Value, want: DType) -> Value {
        if g.value_type(v).dtype == want {
            return v;
        }
        if let Some(&c) = self.done.get(&(v, want)) {
            return c;
        }
        let p = g.node(v.node);
        let name = p.name.clone();
        let nv = match &p.op {
            Op::Const(t) if g.value_type(v).quant.is_none() => {
                let t = Tensor::from_f32_slice(want, t.shape().to_vec(), &t.to_f32_vec());
                let c = g.add_const(name, t);
                self.consts += 1;
                c
            }
            // a cast that widened a 16-bit float exactly is looked through: the pair cancels when
            // its source has the wanted type, else one cast from the source replaces the chain
            Op::Cast { to: DType::F32 }
                if p.inputs()
                    .first()
                    .copied()
                    .flatten()
                    .is_some_and(|u| matches!(g.value_type(u).dtype, DType::F16 | DType::BF16)) =>
            {
                let u = p.inputs()[0].expect("checked");
                self.convert(g, u, want)
            }
            _ => {
                let ty = TensorType::new(want, g.value_type(v).shape.clone());
                let id =
                    g.add_node_unchecked(Op::Cast { to: want }, vec![Some(v)], vec![ty], format!("{name}:to_{want}"));
                self.casts += 1;
                Value::new(id, 0)
            }
        };
        self.done.insert((v, want), nv);
        nv
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qforge_ir::{ConvAttrs, Shape};

    fn conv_attrs() -> ConvAttrs {
        ConvAttrs { kernel: vec![1, 1], strides: vec![1, 1], pads: vec![0; 4], dilations: vec![1, 1], group: 1 }
    }

    /// x: f16 -> cast f32 -> conv (weights [1, 2, 3, w3]) -> relu -> output
    fn graph(w3: f32) -> Graph {
        let mut g = Graph::new("t");
        let x = g.add_input("x", TensorType::new(DType::F16, Shape::fixed(&[1, 2, 2, 2])));
        let c = g.add_node(Op::Cast { to: DType::F32 }, vec![Some(x)], None, "widen").unwrap();
        let w = g.add_const("w", Tensor::from_f32(vec![2, 2, 1, 1], vec![1.0, 2.0, 3.0, w3]));
        let y = g.add_node(Op::Conv(conv_attrs()), vec![Some(c), Some(w)], None, "conv").unwrap();
        let r = g.add_node(Op::Unary(qforge_ir::UnaryOp::Relu), vec![Some(y)], None, "relu").unwrap();
        g.add_output("y", r);
        g
    }

    #[test]
    fn cast_pairs_cancel_and_the_guard_sees_constants() {
        let cx = PassContext::default();
        // fp16: the widening cast cancels against the narrowing the conv needs
        let mut g = graph(4.0);
        let r = AssignPrecision::new(PrecisionConfig::new(DType::F16, true)).run(&mut g, &cx).unwrap();
        qforge_ir::verify::verify(&g).unwrap();
        let text = qforge_ir::text::print_default(&g).unwrap();
        assert!(!text.contains("\"widen\"") && text.contains("conv %x,"), "{text}");
        assert_eq!(r.stats[STAT_CASTS], 1, "only the cast back to the f32 output: {text}");
        // bf16: one cast from the f16 source replaces the chain f16 -> f32 -> bf16
        let mut g = graph(4.0);
        AssignPrecision::new(PrecisionConfig::new(DType::BF16, true)).run(&mut g, &cx).unwrap();
        let text = qforge_ir::text::print_default(&g).unwrap();
        assert!(!text.contains("\"widen\"") && text.contains("cast %x {to=bf16}"), "{text}");
        // fp16: the weight 70000 does not fit, the guard keeps the conv (and so relu) in f32
        let mut g = graph(70000.0);
        let r = AssignPrecision::new(PrecisionConfig::new(DType::F16, true)).run(&mut g, &cx).unwrap();
        assert!(
            r.notes.iter().any(|n| n.starts_with("conv (conv): f32") && n.contains("constant `w`")),
            "{:?}",
            r.notes
        );
        assert_eq!(r.stats[STAT_LOW], 0);
    }
}
