//! Channel alignment padding for profiles that ask for it (`channel_align` > 1; NVIDIA tensor
//! cores want multiples of 8, and the seed pads Linear layers so).
//!
//! 1. A conv (group 1), gemm or 2-D-weight matmul whose weight is a constant and whose output
//!    channel count is not a multiple of the alignment gets zero weight rows (and zero bias) up to
//!    the next multiple; a `slice` named `NAME:unpad` takes the original channels back, so every
//!    consumer sees the same values.
//! 2. The slice then sinks towards the next weighted op where that is exact: through channel-wise
//!    ops that map finite values to finite values (relu, clip, sigmoid, gelu, ..., batch norm with
//!    constant parameters padded with scale 1, bias 0, mean 0, var 1, and pooling), and into a
//!    conv, gemm or matmul that reads it as its input channels, whose weight gets zero input
//!    channels instead. The extra terms are `0 * finite = 0`, added after the real ones, so every
//!    real output is computed exactly as before.
//!
//! The first layer's input channels (a graph input) are not padded. Grouped convolutions are left
//! alone (padding them changes the grouping). Running the pass twice changes nothing.

use crate::pass::{Pass, PassContext, PassError, PassReport};
use qforge_ir::{Dim, Graph, NodeId, Op, Shape, Tensor, TensorType, UnaryOp, Value};

/// The padding pass.
#[derive(Clone, Copy, Debug)]
pub struct AlignChannels {
    pub align: usize,
}

const UNPAD: &str = ":unpad";

impl Pass for AlignChannels {
    fn name(&self) -> &'static str {
        "align-channels"
    }

    fn run(&self, g: &mut Graph, _cx: &PassContext) -> Result<PassReport, PassError> {
        let mut report = PassReport::new(self.name());
        if self.align <= 1 {
            return Ok(report);
        }
        let order = g.schedule().map_err(|error| PassError::Ir { pass: self.name().into(), error })?;
        for id in order {
            if let Some(n) = pad_outputs(g, id, self.align) {
                report.count("ops padded", 1);
                report.notes.push(format!(
                    "{}: {} output channels padded to {n}",
                    g.node(id).name,
                    orig_channels(g, id)
                ));
            }
        }
        if !report.changed {
            report
                .notes
                .push(format!("every conv, gemm and matmul output already has a multiple of {} channels", self.align));
        }
        loop {
            let slices: Vec<NodeId> = g
                .node_ids()
                .filter(|&id| matches!(g.node(id).op, Op::Slice { .. }) && g.node(id).name.ends_with(UNPAD))
                .collect();
            let mut changed = false;
            for s in slices {
                if g.contains_node(s) && sink(g, s) {
                    changed = true;
                    report.count("slices sunk", 1);
                }
            }
            g.remove_dead();
            if !changed {
                break;
            }
        }
        Ok(report)
    }
}

fn orig_channels(g: &Graph, id: NodeId) -> String {
    g.users(id)
        .iter()
        .find_map(|&(u, _)| match &g.node(u).op {
            Op::Slice { ends, .. } => Some(ends[0].to_string()),
            _ => None,
        })
        .unwrap_or_else(|| "?".into())
}

fn round_up(n: usize, a: usize) -> usize {
    n.div_ceil(a) * a
}

/// A constant float input (not quantized).
fn const_float(g: &Graph, v: Option<Value>) -> Option<Tensor> {
    let v = v?;
    match &g.node(v.node).op {
        Op::Const(t) if t.dtype().is_float() && g.value_type(v).quant.is_none() => Some((**t).clone()),
        _ => None,
    }
}

/// `t` with axis `axis` grown to `n`, new entries `fill`.
fn pad_axis(t: &Tensor, axis: usize, n: usize, fill: f32) -> Tensor {
    let shape = t.shape();
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let old = shape[axis];
    let v = t.to_f32_vec();
    let mut out = Vec::with_capacity(outer * n * inner);
    for o in 0..outer {
        out.extend_from_slice(&v[o * old * inner..(o + 1) * old * inner]);
        out.extend(std::iter::repeat_n(fill, (n - old) * inner));
    }
    let mut s = shape.to_vec();
    s[axis] = n;
    Tensor::from_f32_slice(t.dtype(), s, &out)
}

fn set_const(g: &mut Graph, id: NodeId, slot: usize, t: Tensor) {
    let name = g.node(g.node(id).inputs()[slot].expect("constant input").node).name.clone();
    let c = g.add_const(name, t);
    g.set_input(id, slot, Some(c));
}

fn set_dim(t: &mut TensorType, axis: usize, n: usize) {
    t.shape.0[axis] = Dim::Fixed(n);
}

/// Puts `slice(value, 0..m along axis)` between `value` and its consumers.
fn insert_unpad(g: &mut Graph, v: Value, axis: usize, m: usize, ty: TensorType) {
    let users = g.value_users(v);
    let name = format!("{}{UNPAD}", g.node(v.node).name);
    let op = Op::Slice { starts: vec![0], ends: vec![m as i64], axes: vec![axis as i64], steps: vec![1] };
    let s = Value::new(g.add_node_unchecked(op, vec![Some(v)], vec![ty], name), 0);
    for (n, slot) in users {
        g.set_input(n, slot, Some(s));
    }
    for i in 0..g.outputs().len() {
        if g.outputs()[i].value == v {
            g.set_output_value(i, s);
        }
    }
}

/// Pads the output channels of a conv, gemm or matmul; returns the padded count.
fn pad_outputs(g: &mut Graph, id: NodeId, a: usize) -> Option<usize> {
    let node = g.node(id);
    let inputs = node.inputs().to_vec();
    let ty = node.outputs[0].clone();
    let w = const_float(g, inputs.get(1).copied().flatten())?;
    let (w_axis, out_axis) = match &node.op {
        Op::Conv(c) if c.group == 1 => (0, 1),
        Op::Gemm { trans_b, .. } => (if *trans_b { 0 } else { 1 }, 1),
        Op::MatMul if w.rank() == 2 && ty.rank() >= 2 => (1, ty.rank() - 1),
        _ => return None,
    };
    let m = w.shape()[w_axis];
    let n = round_up(m, a);
    if n == m {
        return None;
    }
    // the bias must be padded along with the weight, or broadcast
    let bias = match inputs.get(2).copied().flatten() {
        None => None,
        Some(b) => {
            let bt = const_float(g, Some(b))?;
            match bt.shape() {
                [k] if *k == m => Some(pad_axis(&bt, 0, n, 0.0)),
                [1, k] if *k == m && matches!(node.op, Op::Gemm { .. }) => Some(pad_axis(&bt, 1, n, 0.0)),
                [] | [1] | [1, 1] => None,
                _ => return None,
            }
        }
    };
    set_const(g, id, 1, pad_axis(&w, w_axis, n, 0.0));
    if let Some(b) = bias {
        set_const(g, id, 2, b);
    }
    set_dim(&mut g.node_mut(id).outputs[0], out_axis, n);
    insert_unpad(g, Value::new(id, 0), out_axis, m, ty);
    Some(n)
}

/// Channel-wise ops that map finite values to finite values, through which a slice sinks.
fn sinks_through(op: &Op) -> bool {
    match op {
        Op::Unary(u) => matches!(
            u,
            UnaryOp::Relu
                | UnaryOp::Sigmoid
                | UnaryOp::Tanh
                | UnaryOp::HardSwish
                | UnaryOp::Gelu
                | UnaryOp::GeluTanh
                | UnaryOp::Neg
                | UnaryOp::Abs
                | UnaryOp::Erf
        ),
        Op::LeakyRelu { .. } | Op::Clip { .. } | Op::HardSigmoid { .. } | Op::Identity => true,
        _ => false,
    }
}

/// Moves one unpad slice `s` towards its consumers; true if anything changed.
fn sink(g: &mut Graph, s: NodeId) -> bool {
    let Op::Slice { ends, axes, .. } = g.node(s).op.clone() else { return false };
    let (m, axis) = (ends[0] as usize, axes[0] as usize);
    let Some(p) = g.node(s).inputs()[0] else { return false };
    let pty = g.value_type(p).clone();
    let Some(n) = pty.shape.0[axis].fixed() else { return false };
    let rank = pty.rank();
    let mut changed = false;
    for (u, slot) in g.value_users(Value::new(s, 0)) {
        let op = g.node(u).op.clone();
        let uty = g.node(u).outputs[0].clone();
        let w = const_float(g, g.node(u).inputs().get(1).copied().flatten());
        match (&op, slot) {
            // into a weighted consumer: zero weights for the padded input channels
            (Op::Conv(c), 0) if c.group == 1 && axis == 1 && w.as_ref().is_some_and(|w| w.shape()[1] == m) => {
                set_const(g, u, 1, pad_axis(w.as_ref().expect("checked"), 1, n, 0.0));
                g.set_input(u, 0, Some(p));
            }
            (Op::Gemm { trans_a: false, trans_b, .. }, 0) if axis == 1 && rank == 2 => {
                let k_axis = if *trans_b { 1 } else { 0 };
                let Some(w) = w.filter(|w| w.shape()[k_axis] == m) else { continue };
                set_const(g, u, 1, pad_axis(&w, k_axis, n, 0.0));
                g.set_input(u, 0, Some(p));
            }
            (Op::MatMul, 0) if axis == rank - 1 && rank >= 2 => {
                let Some(w) = w.filter(|w| w.rank() == 2 && w.shape()[0] == m) else { continue };
                set_const(g, u, 1, pad_axis(&w, 0, n, 0.0));
                g.set_input(u, 0, Some(p));
            }
            // through channel-wise ops: the op runs on the padded tensor, the slice follows it
            (op, 0) if sinks_through(op) && g.node(u).inputs().len() == 1 => {
                sink_past(g, u, p, axis, n, m, uty);
            }
            (Op::MaxPool(_) | Op::AveragePool(_) | Op::GlobalAveragePool | Op::GlobalMaxPool, 0) if axis == 1 => {
                sink_past(g, u, p, axis, n, m, uty);
            }
            (Op::BatchNorm { .. }, 0) if axis == 1 => {
                let ins = g.node(u).inputs().to_vec();
                let params: Option<Vec<Tensor>> = ins[1..].iter().map(|v| const_float(g, *v)).collect();
                let Some(params) = params.filter(|ps| ps.iter().all(|t| t.shape() == [m])) else { continue };
                for (i, (t, fill)) in params.iter().zip([1.0, 0.0, 0.0, 1.0]).enumerate() {
                    set_const(g, u, i + 1, pad_axis(t, 0, n, fill));
                }
                sink_past(g, u, p, axis, n, m, uty);
            }
            _ => continue,
        }
        changed = true;
    }
    changed
}

/// Makes `u` read the padded `p` (its result grows to `n` along `axis`) and slices after it.
fn sink_past(g: &mut Graph, u: NodeId, p: Value, axis: usize, n: usize, m: usize, uty: TensorType) {
    g.set_input(u, 0, Some(p));
    let mut padded = uty.clone();
    let mut dims = padded.shape.0.clone();
    dims[axis] = Dim::Fixed(n);
    padded.shape = Shape(dims);
    g.node_mut(u).outputs[0] = padded;
    insert_unpad(g, Value::new(u, 0), axis, m, uty);
}
