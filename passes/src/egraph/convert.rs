//! Graph -> term -> e-graph, and the extracted e-graph back to a graph.
//!
//! [`lower`] writes the graph as one [`RecExpr`] in schedule order whose last node, a
//! [`QNode::Root`], joins all outputs; constants go to the constant table. [`raise`] rebuilds a
//! graph from the e-node chosen for each e-class. Names survive the trip: an extracted node takes
//! the name of an original node of its e-class (preferring one of the same op family, so a
//! `qconv` that replaced a `conv` keeps the conv's name), and `node.from` lists every original node
//! it absorbed: the originals of its e-class and the originals no longer in the graph whose
//! results only flowed into it (the `dequantize`s, `quantize` and `relu` of a fused sandwich).

use super::analysis::{ConstEntry, QAnalysis, EG};
use super::lang::{InputRef, OpData, Port, QNode, QType};
use egg::{Id, Language, RecExpr};
use qforge_ir::{Graph, NodeId, Op, TensorType, Value};
use std::collections::{HashMap, HashSet};

/// Why a graph could not be written as a term, or the extracted term rebuilt as a graph.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConvertError {
    /// The graph does not schedule, or a rebuilt node does not type (the error names the node).
    #[error(transparent)]
    Ir(#[from] qforge_ir::IrError),
    /// A node's result type is neither inferred nor a declared quantized type.
    #[error("node `{node}` ({op}): result type is not derivable")]
    Underivable { node: String, op: &'static str },
    /// The extraction is not a well-formed term (a bug in extraction).
    #[error("the extracted term cannot be rebuilt: {0}")]
    Malformed(&'static str),
}

/// A graph written as one term.
pub struct Lowered {
    pub expr: RecExpr<QNode>,
    pub analysis: QAnalysis,
    /// The term node of each original node (schedule order).
    pub nodes: Vec<(NodeId, Id)>,
}

/// Writes `g` as a term (see the module docs).
pub fn lower(g: &Graph) -> Result<Lowered, ConvertError> {
    let mut expr: RecExpr<QNode> = RecExpr::default();
    let mut an = QAnalysis::default();
    let mut at: HashMap<NodeId, Id> = HashMap::new();
    let mut nodes = vec![];
    for (i, &n) in g.inputs().iter().enumerate() {
        an.inputs.push(g.node(n).outputs[0].clone());
        let id = expr.add(QNode::Input(InputRef(i as u32)));
        at.insert(n, id);
    }
    let mut absent = None;
    let mut projs: HashMap<Value, Id> = HashMap::new();
    let mut value = |expr: &mut RecExpr<QNode>, at: &HashMap<NodeId, Id>, v: Option<Value>| -> Id {
        match v {
            None => *absent.get_or_insert_with(|| expr.add(QNode::Absent)),
            Some(v) if g.node(v.node).outputs.len() > 1 => {
                *projs.entry(v).or_insert_with(|| expr.add(QNode::Proj(Port(v.port as u32), [at[&v.node]])))
            }
            Some(v) => at[&v.node],
        }
    };
    for n in g.schedule()? {
        let node = g.node(n);
        let id = match &node.op {
            Op::Input => continue,
            Op::Const(t) => {
                let r = an.push_const(ConstEntry {
                    tensor: t.clone(),
                    ty: node.outputs[0].clone(),
                    name: node.name.clone(),
                    from: node.from.clone(),
                });
                expr.add(QNode::Const(r))
            }
            op => {
                let ch: Vec<Id> = node.inputs().iter().map(|&v| value(&mut expr, &at, v)).collect();
                let in_types: Vec<Option<&TensorType>> =
                    node.inputs().iter().map(|v| v.map(|v| g.value_type(v))).collect();
                let decl = match qforge_ir::infer::infer(op, &in_types, None) {
                    Ok(t) if t == node.outputs => None,
                    _ => match node.outputs.as_slice() {
                        [TensorType { dtype, quant: Some(q), .. }] => Some(QType::new(*dtype, q.clone())),
                        _ => return Err(ConvertError::Underivable { node: node.name.clone(), op: op.name() }),
                    },
                };
                expr.add(QNode::Op(OpData::new(op.clone(), decl), ch))
            }
        };
        at.insert(n, id);
        nodes.push((n, id));
    }
    let outs: Vec<Id> = g.outputs().iter().map(|o| value(&mut expr, &at, Some(o.value))).collect();
    expr.add(QNode::Root(outs.into_boxed_slice()));
    Ok(Lowered { expr, analysis: an, nodes })
}

/// Adds the term to the e-graph; returns the e-class of each term node.
pub fn add_expr(eg: &mut EG, expr: &RecExpr<QNode>) -> Vec<Id> {
    let mut ids: Vec<Id> = Vec::with_capacity(expr.len());
    for node in expr.iter() {
        let n = node.clone().map_children(|c| ids[usize::from(c)]);
        ids.push(eg.add(n));
    }
    ids
}

/// The op family used to match names: an integer kernel belongs to its float op's family.
fn family(name: &str) -> &str {
    match name {
        "qconv" => "conv",
        "qgemm" => "gemm",
        "qmatmul" => "matmul",
        "qadd" => "add",
        "qmul" => "mul",
        "qglobal_average_pool" => "global_average_pool",
        "qaverage_pool" => "average_pool",
        "qconcat" => "concat",
        n => n,
    }
}

/// Rebuilds a graph from the chosen e-node of each e-class reachable from `root`.
/// `originals` are the original nodes (schedule order) with their e-classes.
pub fn raise(
    eg: &EG,
    root: Id,
    choice: &HashMap<Id, QNode>,
    orig: &Graph,
    originals: &[(NodeId, Id)],
) -> Result<Graph, ConvertError> {
    let root = eg.find(root);
    // Post-order of the extracted classes.
    let mut order: Vec<Id> = vec![];
    let mut seen: HashSet<Id> = HashSet::new();
    let mut stack: Vec<(Id, usize)> = vec![(root, 0)];
    seen.insert(root);
    while let Some(&mut (c, ref mut k)) = stack.last_mut() {
        let node = choice.get(&c).ok_or(ConvertError::Malformed("an e-class without a choice"))?;
        if *k < node.children().len() {
            let ch = eg.find(node.children()[*k]);
            *k += 1;
            if seen.insert(ch) {
                stack.push((ch, 0));
            }
        } else {
            order.push(c);
            stack.pop();
        }
    }
    let extracted: HashSet<Id> = order.iter().copied().collect();

    // Original nodes per extracted class: members (same class) and absorbed (no longer in the
    // graph, their results flowed only into it).
    let mut assign: HashMap<NodeId, Id> = HashMap::new();
    let mut group: HashMap<Id, Vec<usize>> = HashMap::new();
    for (i, &(n, c)) in originals.iter().enumerate().rev() {
        let c = eg.find(c);
        let target = if extracted.contains(&c) {
            Some(c)
        } else {
            orig.users(n).iter().find_map(|(u, _)| assign.get(u).copied())
        };
        if let Some(t) = target {
            assign.insert(n, t);
            group.entry(t).or_default().push(i);
        }
    }
    for v in group.values_mut() {
        v.sort_unstable();
    }
    // A node created by a rule (no original in its class) takes the name of an original of its
    // op family that was absorbed by a consumer of a different family: the `max_pool` moved
    // before a dequantize keeps the name of the max pool it replaced.
    let fam_of = |c: Id| match &choice[&c] {
        QNode::Op(d, _) => Some(family(d.op().name())),
        _ => None,
    };
    let mut parents: HashMap<Id, Vec<Id>> = HashMap::new();
    for &c in &order {
        for &ch in choice[&c].children() {
            parents.entry(eg.find(ch)).or_default().push(c);
        }
    }
    for &c in &order {
        let Some(fam) = fam_of(c) else { continue };
        let has = |g: &HashMap<Id, Vec<usize>>, c: Id| {
            g.get(&c).is_some_and(|v| v.iter().any(|&i| family(orig.node(originals[i].0).op.name()) == fam))
        };
        if has(&group, c) {
            continue;
        }
        // Consumers, breadth first (a moved transpose's original may sit a few nodes down).
        let mut queue: Vec<Id> = parents.get(&c).cloned().unwrap_or_default();
        let mut visited: HashSet<Id> = queue.iter().copied().collect();
        let mut k = 0;
        while k < queue.len() && k < 16 {
            let p = queue[k];
            k += 1;
            for &pp in parents.get(&p).map(|v| v.as_slice()).unwrap_or(&[]) {
                if visited.insert(pp) {
                    queue.push(pp);
                }
            }
            if fam_of(p) == Some(fam) {
                continue;
            }
            let found =
                group.get(&p).and_then(|v| v.iter().position(|&i| family(orig.node(originals[i].0).op.name()) == fam));
            if let Some(k) = found {
                let i = group.get_mut(&p).expect("found above").remove(k);
                let mine = group.entry(c).or_default();
                mine.push(i);
                mine.sort_unstable();
                break;
            }
        }
    }

    let mut g = Graph::new(orig.name.clone());
    // the same inputs in the same order, so the specialized ones keep their places
    g.set_specialized(orig.specialized().to_vec());
    g.set_wire_types(orig.wire_types().clone());
    let mut val: HashMap<Id, Option<Value>> = HashMap::new();
    for (i, &n) in orig.inputs().iter().enumerate() {
        let node = orig.node(n);
        let v = g.add_input(node.name.clone(), node.outputs[0].clone());
        let c = eg.lookup(QNode::Input(InputRef(i as u32)));
        if let Some(c) = c {
            val.insert(eg.find(c), Some(v));
        }
    }
    let mut used: HashSet<String> = orig.inputs().iter().map(|&n| orig.node(n).name.clone()).collect();
    let mut fresh = 0usize;
    for &c in &order {
        let node = &choice[&c];
        let origin: &[usize] = group.get(&c).map(|v| v.as_slice()).unwrap_or(&[]);
        let names_of = |i: &usize| &orig.node(originals[*i].0).name;
        let (mut name, mut from) = match node {
            QNode::Const(r) => {
                let e = eg.analysis.konst(*r);
                (e.name.clone(), e.from.clone())
            }
            QNode::Op(d, _) => {
                let fam = family(d.op().name());
                let member = |i: &&usize| eg.find(originals[**i].1) == c;
                let same = |i: &&usize| family(orig.node(originals[**i].0).op.name()) == fam;
                let pick = origin
                    .iter()
                    .find(|i| member(i) && same(i))
                    .or_else(|| origin.iter().find(same))
                    .or_else(|| origin.iter().find(member))
                    .or_else(|| origin.first());
                match pick {
                    Some(i) => (names_of(i).clone(), vec![]),
                    None => {
                        fresh += 1;
                        (format!("{}_{fresh}", d.op().name()), vec![])
                    }
                }
            }
            _ => (String::new(), vec![]),
        };
        if let QNode::Const(_) | QNode::Op(..) = node {
            for i in origin {
                let o = orig.node(originals[*i].0);
                for f in std::iter::once(&o.name).chain(&o.from) {
                    if *f != name && !from.contains(f) {
                        from.push(f.clone());
                    }
                }
            }
            if !used.insert(name.clone()) {
                let base = name.clone();
                let mut k = 1;
                while !used.insert(format!("{base}_{k}")) {
                    k += 1;
                }
                name = format!("{base}_{k}");
            }
        }
        let input = |ch: Id| -> Result<Option<Value>, ConvertError> {
            val.get(&eg.find(ch)).copied().ok_or(ConvertError::Malformed("an operand built after its user"))
        };
        let v = match node {
            QNode::Root(_) => None,
            QNode::Absent => None,
            QNode::Input(_) => Some(
                val.get(&c).copied().flatten().ok_or(ConvertError::Malformed("an input that is not a graph input"))?,
            ),
            QNode::Const(r) => {
                let e = eg.analysis.konst(*r);
                let id = g.add_node_unchecked(Op::Const(e.tensor.clone()), vec![], vec![e.ty.clone()], name);
                g.node_mut(id).from = from;
                Some(Value::new(id, 0))
            }
            QNode::Proj(p, [t]) => {
                let t = input(*t)?.ok_or(ConvertError::Malformed("a result of nothing"))?;
                Some(Value::new(t.node, p.0 as usize))
            }
            QNode::Op(d, ch) => {
                let ins: Vec<Option<Value>> = ch.iter().map(|&c| input(c)).collect::<Result<_, _>>()?;
                let declared = match (d.decl(), eg[c].data.types.as_slice()) {
                    (Some(q), [t]) => Some(vec![TensorType::quantized(q.dtype, t.shape.clone(), q.quant.clone())]),
                    _ => None,
                };
                let v = g.add_node(d.op().clone(), ins, declared, name)?;
                g.node_mut(v.node).from = from;
                Some(v)
            }
        };
        val.insert(c, v);
    }
    let QNode::Root(outs) = &choice[&root] else { return Err(ConvertError::Malformed("the root is not a root")) };
    for (o, &c) in orig.outputs().iter().zip(outs.iter()) {
        let v = val.get(&eg.find(c)).copied().flatten().ok_or(ConvertError::Malformed("an output without a value"))?;
        g.add_output(o.name.clone(), v);
    }
    Ok(g)
}
