//! The e-class analysis: the type (dtype, shape, quantization parameters) of every e-class and
//! whether it is a constant, computed in `make` from the IR's own inference
//! ([`qforge_ir::infer::infer`]), and the constant table rules can add to.
//!
//! `merge` checks that the two classes agree on their types: every rewrite is an equality, so a
//! mismatch means a rule is unsound. The mismatch is recorded (and the pass fails with it) rather
//! than silently kept.

use super::lang::{ConstRef, QNode};
use egg::{DidMerge, Id};
use qforge_ir::{Tensor, TensorType};
use std::collections::HashMap;
use std::sync::Arc;

/// The e-graph type of the optimizer.
pub type EG = egg::EGraph<QNode, QAnalysis>;

/// A constant: its data, type (quantization parameters included), name and origin.
#[derive(Clone, Debug)]
pub struct ConstEntry {
    pub tensor: Arc<Tensor>,
    pub ty: TensorType,
    pub name: String,
    /// Original nodes the constant was computed from (folding), for `node.from`.
    pub from: Vec<String>,
}

/// What the analysis knows about an e-class.
#[derive(Clone, Debug, PartialEq)]
pub struct Data {
    /// The result types: one for a value, several for a multi-result op, none for the root.
    pub types: Vec<TensorType>,
    /// A constant in the class, if any.
    pub konst: Option<ConstRef>,
}

impl Data {
    /// The type of a single-result class.
    pub fn ty(&self) -> Option<&TensorType> {
        match self.types.as_slice() {
            [t] => Some(t),
            _ => None,
        }
    }
}

/// The analysis state: input types, the constant table, and any unsoundness found.
#[derive(Clone, Debug, Default)]
pub struct QAnalysis {
    pub inputs: Vec<TensorType>,
    pub consts: Vec<ConstEntry>,
    /// Constants added by rules, by content, so a rule firing twice adds one constant.
    dedup: HashMap<(String, String), ConstRef>,
    /// Type mismatches found by `merge` and ill-typed nodes found by `make`: rule bugs.
    pub errors: Vec<String>,
}

impl QAnalysis {
    /// An analysis for a graph with inputs of these types and no constants yet.
    pub fn new(inputs: Vec<TensorType>) -> QAnalysis {
        QAnalysis { inputs, ..QAnalysis::default() }
    }

    /// Adds an original constant (no deduplication: names differ).
    pub fn push_const(&mut self, e: ConstEntry) -> ConstRef {
        self.consts.push(e);
        ConstRef((self.consts.len() - 1) as u32)
    }

    /// Adds a constant computed by a rule, reusing an equal one (same name, type and data: rule
    /// names are derived from their inputs, so the name is a cheap first test and the data
    /// comparison settles it).
    pub fn intern_const(&mut self, e: ConstEntry) -> ConstRef {
        let key = (e.name.clone(), e.ty.to_string());
        if let Some(&r) = self.dedup.get(&key) {
            if self.consts[r.0 as usize].tensor == e.tensor {
                return r;
            }
        }
        let r = self.push_const(e);
        self.dedup.insert(key, r);
        r
    }

    pub fn konst(&self, r: ConstRef) -> &ConstEntry {
        &self.consts[r.0 as usize]
    }
}

impl egg::Analysis<QNode> for QAnalysis {
    type Data = Data;

    fn make(egraph: &mut EG, enode: &QNode, _id: Id) -> Data {
        let none = Data { types: vec![], konst: None };
        match enode {
            QNode::Root(_) | QNode::Absent => none,
            QNode::Input(i) => Data { types: vec![egraph.analysis.inputs[i.0 as usize].clone()], konst: None },
            QNode::Const(c) => Data { types: vec![egraph.analysis.konst(*c).ty.clone()], konst: Some(*c) },
            QNode::Proj(p, [t]) => match egraph[*t].data.types.get(p.0 as usize) {
                Some(ty) => Data { types: vec![ty.clone()], konst: None },
                None => {
                    egraph.analysis.errors.push(format!("result {} of a value with fewer results", p.0));
                    none
                }
            },
            QNode::Op(d, ch) => {
                let mut ins: Vec<Option<TensorType>> = Vec::with_capacity(ch.len());
                for &c in ch {
                    let data = &egraph[c].data;
                    if data.types.is_empty() {
                        ins.push(None);
                    } else {
                        match data.ty() {
                            Some(t) => ins.push(Some(t.clone())),
                            None => {
                                egraph.analysis.errors.push(format!("`{}` reads a multi-result value", d.op().name()));
                                return none;
                            }
                        }
                    }
                }
                let refs: Vec<Option<&TensorType>> = ins.iter().map(Option::as_ref).collect();
                let decl = d.decl().map(|q| vec![q.tensor_type()]);
                match qforge_ir::infer::infer(d.op(), &refs, decl.as_deref()) {
                    Ok(types) => Data { types, konst: None },
                    Err(e) => {
                        egraph.analysis.errors.push(format!("a rule built an ill-typed `{}`: {e}", d.op().name()));
                        none
                    }
                }
            }
        }
    }

    fn merge(&mut self, a: &mut Data, b: Data) -> DidMerge {
        if a.types != b.types && !a.types.is_empty() && !b.types.is_empty() {
            let show = |ts: &[TensorType]| ts.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ");
            self.errors.push(format!("unsound rewrite: merged {} with {}", show(&a.types), show(&b.types)));
        }
        let mut changed_a = false;
        if a.types.is_empty() && !b.types.is_empty() {
            a.types = b.types.clone();
            changed_a = true;
        }
        let changed_b = a.konst.is_some() && b.konst.is_none();
        if a.konst.is_none() && b.konst.is_some() {
            a.konst = b.konst;
            changed_a = true;
        }
        DidMerge(changed_a, changed_b || a.types != b.types)
    }
}
