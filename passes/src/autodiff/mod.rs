//! Reverse-mode differentiation over the IR: [`differentiate`] extends a graph with the gradient
//! of one scalar output (the loss) with respect to some of its inputs, written as IR nodes, so
//! both engines run the backward pass and the reference interpreter is its oracle.
//!
//! # The result
//! The returned graph has the inputs of the original unchanged, all of its outputs first in their
//! order, then one output `grad.<input>` per `wrt` entry, of that input's type. The backward
//! nodes are named `grad.<forward node>[.<what>]` (see `builder.rs`), made in reverse schedule
//! order, so differentiating the same graph twice prints the same text.
//!
//! # Rules
//! Each op family's vector-Jacobian product is in `rules/` (one file per family, each with its
//! formulas); every backward op computes in the
//! dtype of the forward value it differentiates (an f16 forward gets an f16 backward). Gradients
//! that reach a value along several paths are summed with `add` nodes in the order the paths are
//! met; the gradient of a broadcast operand is summed over its broadcast axes (`reduce_sum`, then
//! a reshape). Integer and bool values (indices, masks, shapes) carry no gradient, nor do
//! constants. A `wrt` input that no path connects to the loss gets a zero gradient (a constant of
//! its shape). An op on the path without a rule is an [`AutodiffError::NoRule`].
//!
//! Two rules are conventions rather than derivatives:
//! * **Round** passes the gradient through unchanged: the straight-through estimator (Bengio,
//!   Léonard and Courville 2013, "Estimating or propagating gradients through stochastic neurons
//!   for conditional computation"). A fake quantizer written `(clip(round(x / s) + z, lo, hi) - z)
//!   * s` then trains `x` where it is not clipped and gives the scale `s` the LSQ gradient
//!   (Esser et al. 2020, "Learned step size quantization"): `round(x/s) - x/s` inside the range,
//!   `lo - z` or `hi - z` where clipped.
//! * **Clip** passes the gradient where `min <= x <= max` and gives 0 elsewhere (its derivative,
//!   with the boundary counted inside, as PyTorch's `hardtanh`/`clamp` backward does).
//!
//! Floor, ceil and sign have a zero gradient. The remaining kinks (relu at 0, the first of equal
//! maxima for max pooling, leaky relu at 0) follow the forward's own choice.
//!
//! # Invariants
//! The result passes [`qforge_ir::verify::verify`] and runs on the interpreter; the forward nodes
//! the original's outputs use are untouched (same ids, ops and names); nothing is left that no
//! output uses (dead nodes are removed, any the original had included).

mod builder;
mod rules;

use builder::Builder;
use qforge_ir::{Graph, IrError, NodeId, Op, TensorType, Value};
use std::collections::{BTreeMap, HashMap, HashSet};

/// A graph extended with gradients (see the module docs).
#[derive(Clone, Debug)]
pub struct Differentiated {
    pub graph: Graph,
    /// Output index of each gradient, in `wrt` order.
    pub grads: Vec<usize>,
}

/// Why a graph could not be differentiated.
#[derive(Debug, thiserror::Error)]
pub enum AutodiffError {
    #[error("loss output {index} does not exist (the graph has {count} outputs)")]
    NoSuchOutput { index: usize, count: usize },
    #[error("loss output `{name}` is {ty}: the loss must be a float scalar (shape [] or every dim 1)")]
    NotScalarLoss { name: String, ty: TensorType },
    #[error("`{name}` is not an input of the graph (gradients are taken with respect to graph inputs)")]
    NotAnInput { name: String },
    #[error("graph input `{name}` is {ty}: only float inputs have gradients")]
    NotFloat { name: String, ty: TensorType },
    #[error("graph input `{name}` is listed twice")]
    Duplicate { name: String },
    #[error("the graph already has an output named `{name}`")]
    OutputTaken { name: String },
    #[error("node `{node}`: no gradient rule for `{op}`")]
    NoRule { node: String, op: &'static str },
    #[error("node `{node}` ({op}): {msg}")]
    Unsupported { node: String, op: &'static str, msg: String },
    #[error("node `{node}` ({op}): its gradient does not type-check")]
    Build {
        node: String,
        op: &'static str,
        #[source]
        source: IrError,
    },
    #[error("the graph cannot be scheduled")]
    Graph(#[source] IrError),
}

/// Differentiates output `loss_output` of `g` (a float scalar) with respect to the graph inputs
/// named in `wrt`; see the module docs for the result's form.
pub fn differentiate(g: &Graph, loss_output: usize, wrt: &[&str]) -> Result<Differentiated, AutodiffError> {
    let loss = check_loss(g, loss_output)?;
    let wrt_ids = wrt_inputs(g, wrt)?;
    for name in wrt {
        let out = format!("grad.{name}");
        if g.outputs().iter().any(|o| o.name == out) {
            return Err(AutodiffError::OutputTaken { name: out });
        }
    }
    let order = g.schedule().map_err(AutodiffError::Graph)?;

    // Values that depend on a `wrt` input through float values: the only ones with a gradient.
    let wrt_set: HashSet<NodeId> = wrt_ids.iter().copied().collect();
    let mut needs: HashSet<Value> = wrt_ids.iter().map(|&n| Value::new(n, 0)).collect();
    for &n in &order {
        let node = g.node(n);
        if matches!(node.op, Op::Input | Op::Const(_)) {
            continue;
        }
        if node.inputs().iter().flatten().any(|v| needs.contains(v)) {
            for (port, t) in node.outputs.iter().enumerate() {
                if t.dtype.is_float() && t.quant.is_none() {
                    needs.insert(Value::new(n, port));
                }
            }
        }
    }
    // Nodes the loss depends on.
    let mut ancestors: HashSet<NodeId> = HashSet::new();
    let mut stack = vec![loss.node];
    while let Some(n) = stack.pop() {
        if ancestors.insert(n) {
            stack.extend(g.node(n).inputs().iter().flatten().map(|v| v.node));
        }
    }

    // A quantizer on the loss's path would silently cut the gradient (its result is an integer):
    // refused, fake quantization is written with round and clip (straight-through) instead.
    for &n in &order {
        let node = g.node(n);
        let quantizer = matches!(node.op, Op::Quantize | Op::DynamicQuantize);
        if quantizer && ancestors.contains(&n) && node.inputs().iter().flatten().any(|v| needs.contains(v)) {
            return Err(AutodiffError::Unsupported {
                node: node.name.clone(),
                op: node.op.name(),
                msg: "no gradient through a quantizer to integers (write fake quantization as \
                      `(clip(round(x / s) + z, lo, hi) - z) * s`, which has the straight-through one)"
                    .into(),
            });
        }
    }

    let mut out = g.clone();
    let mut b = Builder::new(&mut out);
    // Gradient contributions per value, in the order they are made.
    let mut parts: BTreeMap<Value, Vec<Value>> = BTreeMap::new();
    if needs.contains(&loss) {
        let ty = g.value_type(loss);
        let dims = ty.shape.as_fixed().unwrap_or_default();
        b.at(&g.node(loss.node).name, g.node(loss.node).op.name());
        let seed = b.constant("seed", ty.dtype, dims, vec![1.0]);
        parts.insert(loss, vec![seed]);
    }
    for &n in order.iter().rev() {
        if !ancestors.contains(&n) || wrt_set.contains(&n) {
            continue;
        }
        let node = g.node(n);
        if matches!(node.op, Op::Input | Op::Const(_)) {
            continue;
        }
        let ports: Vec<Value> = (0..node.outputs.len()).map(|p| Value::new(n, p)).collect();
        if !ports.iter().any(|v| parts.contains_key(v)) {
            continue;
        }
        let wants: Vec<bool> = node.inputs().iter().map(|v| v.is_some_and(|v| needs.contains(&v))).collect();
        if !wants.contains(&true) {
            continue;
        }
        b.at(&node.name, node.op.name());
        let mut dys = Vec::with_capacity(ports.len());
        for v in &ports {
            dys.push(match parts.remove(v) {
                Some(p) if p.len() == 1 => Some(p[0]),
                Some(p) => Some(b.sum("sum", &p)?),
                None => None,
            });
        }
        let grads = rules::vjp(&mut b, n, &dys, &wants)?;
        for (slot, gv) in grads.into_iter().enumerate() {
            let (Some(gv), Some(Some(x))) = (gv, node.inputs().get(slot)) else { continue };
            if wants[slot] {
                parts.entry(*x).or_default().push(gv);
            }
        }
    }

    let mut grads = Vec::with_capacity(wrt.len());
    let mut results = Vec::with_capacity(wrt.len());
    for (&id, name) in wrt_ids.iter().zip(wrt) {
        let x = Value::new(id, 0);
        b.at(name, "input");
        let mut gv = match parts.get(&x) {
            Some(p) if p.len() == 1 => p[0],
            Some(p) => b.sum("sum", p)?,
            None => b.zeros_like("zero", x)?,
        };
        // the gradient has the input's type: a symbolic size another op spells differently
        // (a transposed convolution's `(H+2)/1-2`) is given the input's own spelling
        if b.ty(gv).shape != b.ty(x).shape {
            gv = b.reshape_like("shape", gv, x)?;
        }
        if b.ty(gv) != b.ty(x) {
            return Err(b.unsupported(format!("internal: the gradient is {}, the input {}", b.ty(gv), b.ty(x))));
        }
        results.push((format!("grad.{name}"), gv));
    }
    for (name, gv) in results {
        grads.push(out.outputs().len());
        out.add_output(name, gv);
    }
    out.remove_dead();
    Ok(Differentiated { graph: out, grads })
}

/// The loss value, checked to be a float scalar.
fn check_loss(g: &Graph, index: usize) -> Result<Value, AutodiffError> {
    let o = g.outputs().get(index).ok_or(AutodiffError::NoSuchOutput { index, count: g.outputs().len() })?;
    let ty = g.value_type(o.value);
    let scalar = ty.shape.0.iter().all(|d| d.fixed() == Some(1));
    if !ty.dtype.is_float() || ty.quant.is_some() || !scalar {
        return Err(AutodiffError::NotScalarLoss { name: o.name.clone(), ty: ty.clone() });
    }
    Ok(o.value)
}

/// The input nodes named in `wrt`, in order.
fn wrt_inputs(g: &Graph, wrt: &[&str]) -> Result<Vec<NodeId>, AutodiffError> {
    let by_name: HashMap<&str, NodeId> = g.inputs().iter().map(|&i| (g.node(i).name.as_str(), i)).collect();
    let mut seen = HashSet::new();
    let mut ids = Vec::with_capacity(wrt.len());
    for &name in wrt {
        let &id = by_name.get(name).ok_or_else(|| AutodiffError::NotAnInput { name: name.to_string() })?;
        let ty = &g.node(id).outputs[0];
        if !ty.dtype.is_float() || ty.quant.is_some() {
            return Err(AutodiffError::NotFloat { name: name.to_string(), ty: ty.clone() });
        }
        if !seen.insert(id) {
            return Err(AutodiffError::Duplicate { name: name.to_string() });
        }
        ids.push(id);
    }
    Ok(ids)
}
