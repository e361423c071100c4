//! The rewrite rules, by topic: [`qdq`] (quantize/dequantize algebra and the lowering of
//! DQ -> op -> Q sandwiches to integer kernels), [`fold`] (batch norm and affine constants into
//! convolutions, cast pairs), [`fuse`] (activations into integer epilogues, bias into gemm),
//! [`spatial`] (resize and pad through dequantize).
//!
//! Every rule is a small Rust matcher ([`Rule::rewrite`]) over one e-node and the analysis data of
//! its operands' e-classes (types, quantization parameters, constants), because the conditions
//! (equal scales, zero point at the bottom of the range, constant per-channel operands) are about
//! types and data, not syntax. Each rule's doc comment states its law. There is no general
//! commutativity or associativity: a rule that accepts a binary op's operands either way round
//! checks both orders itself.
//!
//! A rule that fired on an e-node is not retried on it (the [`Adapter`] remembers), so rules that
//! compute new constants (BN folding) do that work once per match, not once per iteration.

pub mod fold;
pub mod fuse;
pub mod qdq;
pub mod spatial;

use super::analysis::{ConstEntry, QAnalysis, EG};
use super::cost::CostTable;
use super::lang::{OpData, QNode, QType};
use egg::{Id, Rewrite, SearchMatches, Subst, Symbol, Var};
use qforge_ir::{DType, Op, QuantParams, Tensor, TensorType};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Adds the replacement term to the e-graph and returns its e-class (`None`: nothing to add).
pub type Build = Box<dyn FnOnce(&mut EG) -> Option<Id>>;

/// One rewrite rule: a law, and the code that finds and builds its right-hand side.
pub trait Rule: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// The replacement for `node` (an e-node of e-class `class`), if the rule applies.
    fn rewrite(&self, eg: &EG, class: Id, node: &QNode) -> Option<Build>;
}

/// Runs a [`Rule`] as an egg searcher and applier: the search reports the e-classes where the
/// rule applies; the applier builds each replacement and unions it with its class.
pub struct Adapter {
    rule: Box<dyn Rule>,
    done: Mutex<HashSet<(Id, QNode)>>,
}

impl Adapter {
    fn is_done(&self, eg: &EG, class: Id, node: &QNode) -> bool {
        let key = (eg.find(class), node.clone());
        self.done.lock().map(|d| d.contains(&key)).unwrap_or(false)
    }
}

impl egg::Searcher<QNode, QAnalysis> for Adapter {
    fn search_eclass_with_limit(&self, eg: &EG, eclass: Id, _limit: usize) -> Option<SearchMatches<'_, QNode>> {
        for node in &eg[eclass].nodes {
            if !self.is_done(eg, eclass, node) && self.rule.rewrite(eg, eclass, node).is_some() {
                return Some(SearchMatches { eclass, substs: vec![Subst::default()], ast: None });
            }
        }
        None
    }

    fn vars(&self) -> Vec<Var> {
        vec![]
    }
}

impl egg::Applier<QNode, QAnalysis> for Adapter {
    fn apply_one(
        &self,
        eg: &mut EG,
        eclass: Id,
        _subst: &Subst,
        _ast: Option<&egg::PatternAst<QNode>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        let eclass = eg.find(eclass);
        let nodes = eg[eclass].nodes.clone();
        let mut out = vec![];
        for node in nodes {
            if self.is_done(eg, eclass, &node) {
                continue;
            }
            let Some(build) = self.rule.rewrite(eg, eclass, &node) else { continue };
            if let Ok(mut d) = self.done.lock() {
                d.insert((eclass, node.clone()));
            }
            if let Some(new) = build(eg) {
                if eg.union(eclass, new) {
                    out.push(new);
                }
            }
        }
        out
    }
}

fn rewrite(rule: impl Rule) -> Rewrite<QNode, QAnalysis> {
    let name = rule.name();
    let a = Arc::new(Adapter { rule: Box::new(rule), done: Mutex::new(HashSet::new()) });
    Rewrite::new(name, SharedAdapter(a.clone()), SharedAdapter(a)).expect("rules have no pattern variables")
}

/// An [`Adapter`] shared by a rewrite's searcher and applier (they share the memo).
struct SharedAdapter(Arc<Adapter>);

impl egg::Searcher<QNode, QAnalysis> for SharedAdapter {
    fn search_eclass_with_limit(&self, eg: &EG, eclass: Id, limit: usize) -> Option<SearchMatches<'_, QNode>> {
        self.0.search_eclass_with_limit(eg, eclass, limit)
    }
    fn vars(&self) -> Vec<Var> {
        vec![]
    }
}

impl egg::Applier<QNode, QAnalysis> for SharedAdapter {
    fn apply_one(
        &self,
        eg: &mut EG,
        eclass: Id,
        subst: &Subst,
        ast: Option<&egg::PatternAst<QNode>>,
        rule: Symbol,
    ) -> Vec<Id> {
        self.0.apply_one(eg, eclass, subst, ast, rule)
    }
}

/// Every rule, for a target described by `cost` (without int8 kernels, no integer lowering).
pub fn all(cost: &CostTable) -> Vec<Rewrite<QNode, QAnalysis>> {
    let mut r = vec![
        rewrite(qdq::QDqSame),
        rewrite(qdq::DqForward),
        rewrite(spatial::DqThroughSpatial),
        rewrite(qdq::QBackward),
        rewrite(qdq::QDropRelu),
        rewrite(qdq::DqDropRelu),
        rewrite(qdq::QFoldConst),
        rewrite(fold::BnIntoConv),
        rewrite(fold::BnToAffine),
        rewrite(fold::MulIntoConv),
        rewrite(fold::AddIntoConv),
        rewrite(fold::CastPair),
        rewrite(fold::ConstChain),
        rewrite(fold::DistributeConst),
        rewrite(fuse::MatMulAddToGemm),
        rewrite(fuse::GemmAddBias),
    ];
    if cost.int8 {
        r.extend([
            rewrite(qdq::QDqRequant),
            rewrite(qdq::LowerToInteger),
            rewrite(qdq::LowerToDequantizing),
            rewrite(fuse::ActIntoClamp),
        ]);
    }
    r
}

/// The names of the rules [`all`] returns, with their laws, for reports and docs.
pub fn laws() -> Vec<(&'static str, &'static str)> {
    vec![
        ("q-dq-same", "q_t(dq(y)) = y when y has type t"),
        ("q-dq-requant", "q_t(dq(y)) = requantize_t(y)"),
        ("dq-forward", "op(dq(y)) = dq(op(y)) for movement ops and max pooling (dq is monotone)"),
        ("q-backward", "q_t(op(x)) = op(q_t(x)) for movement ops, max pooling and concat"),
        ("q-drop-relu", "q_t(relu(x)) = q_t(x) when t's zero point is the bottom of its range"),
        ("dq-drop-relu", "relu(dq(y)) = dq(y) when y's zero point is the bottom of its range"),
        ("q-fold-const", "q_t(c) = the constant quantize(c)"),
        ("lower-to-integer", "q_t(act(op(dq(x), dq(w), b))) = qop(x, w, b_i32){bias, requant, clamp}"),
        ("lower-to-dequantizing", "op(dq(x), dq(w), b) = qop(x, w, b_i32){bias, dequant} when the result stays float"),
        ("act-into-clamp", "relu(dq(k)) = dq(k{clamp(zp, qmax)}) for an integer kernel k"),
        ("bn-into-conv", "bn(conv(x, W, b)) = conv(x, W*k, (b - mean)*k + beta), k = gamma/sqrt(var+eps)"),
        ("bn-to-affine", "bn(x) = x*k + (beta - mean*k)"),
        ("mul-into-conv", "conv(x, W, b) * c = conv(x, W*c, b*c) for a per-channel constant c"),
        ("add-into-conv", "conv(x, W, b) + c = conv(x, W, b + c) for a per-channel constant c"),
        ("const-chain", "(x * a) * b = x * (a * b) and (x + a) + b = x + (a + b) for same-shaped constants a, b"),
        ("distribute-const", "(x + c) * k = x * k + c * k for same-shaped constants c, k"),
        ("cast-pair", "cast_a(cast_b(x)) = x when b holds every value of x's type a"),
        ("matmul-add-to-gemm", "matmul(a, b) + c = gemm(a, b, c) for 2-D a, b and a row-vector constant c"),
        ("gemm-add-bias", "gemm(a, b) + c = gemm(a, b, c) for a constant c broadcast over rows"),
    ]
}

// ---- helpers shared by the rules

/// The op e-nodes of a class.
pub(crate) fn ops(eg: &EG, c: Id) -> impl Iterator<Item = (&Op, &OpData, &[Id])> {
    eg[c].nodes.iter().filter_map(|n| match n {
        QNode::Op(d, ch) => Some((d.op(), d, ch.as_slice())),
        _ => None,
    })
}

/// The operand of a `dequantize` in class `c`.
pub(crate) fn dq_of(eg: &EG, c: Id) -> Option<Id> {
    ops(eg, c).find(|(op, _, _)| matches!(op, Op::Dequantize)).map(|(_, _, ch)| ch[0])
}

pub(crate) fn ty(eg: &EG, c: Id) -> Option<&TensorType> {
    eg[c].data.ty()
}

pub(crate) fn konst(eg: &EG, c: Id) -> Option<&ConstEntry> {
    eg[c].data.konst.map(|r| eg.analysis.konst(r))
}

/// A float constant's values.
pub(crate) fn float_const(eg: &EG, c: Id) -> Option<(Vec<f32>, Vec<usize>)> {
    let e = konst(eg, c)?;
    (e.ty.dtype == DType::F32 && e.ty.quant.is_none()).then(|| (e.tensor.to_f32_vec(), e.tensor.shape().to_vec()))
}

pub(crate) fn is_absent(eg: &EG, c: Id) -> bool {
    eg[c].nodes.iter().any(|n| matches!(n, QNode::Absent))
}

/// Per-tensor (scale, zero point) of an i8/u8 type.
pub(crate) fn per_tensor_q(t: &TensorType) -> Option<(f32, i32)> {
    match (&t.quant, t.dtype) {
        (Some(QuantParams::PerTensor { scale, zero_point }), DType::I8 | DType::U8) => Some((*scale, *zero_point)),
        _ => None,
    }
}

pub(crate) fn add_op(eg: &mut EG, op: Op, decl: Option<QType>, ch: Vec<Id>) -> Id {
    eg.add(QNode::Op(OpData::new(op, decl), ch))
}

pub(crate) fn add_const(eg: &mut EG, tensor: Tensor, ty: TensorType, name: String, from: Vec<String>) -> Id {
    let r = eg.analysis.intern_const(ConstEntry { tensor: Arc::new(tensor), ty, name, from });
    eg.add(QNode::Const(r))
}

/// `c`'s values as one per output channel of an `[N, m, ...]` result of rank `rank`, when `c`
/// broadcasts per channel (a scalar, or `m` values on axis 1 and ones elsewhere).
pub(crate) fn per_channel(vals: &[f32], shape: &[usize], m: usize, rank: usize) -> Option<Vec<f32>> {
    if vals.len() == 1 && shape.len() <= rank {
        return Some(vec![vals[0]; m]);
    }
    if vals.len() != m || shape.len() > rank || rank < 2 {
        return None;
    }
    // Right-aligned: the const's axis `a` is the result's axis `a + rank - shape.len()`.
    let off = rank - shape.len();
    for (a, &d) in shape.iter().enumerate() {
        let want = if a + off == 1 { m } else { 1 };
        if d != want {
            return None;
        }
    }
    if off > 1 {
        return None;
    }
    Some(vals.to_vec())
}
