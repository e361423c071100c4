//! Batch norm folded into the convolution it follows, before quantization (as ONNX Runtime's
//! `quant_pre_process` does before `quantize_static`: quantizing the convolution's weights after
//! the fold is what makes per-channel scales fit the weights that run) and before precision
//! assignment (unfolded, the conv output is rounded to f16 before the mean is subtracted, which
//! costs about 1.5 dB of SQNR per layer on mobilenet_v2).
//!
//! `conv(x, w, b) -> batch_norm(gamma, beta, mean, var, eps)` becomes `conv(x, w', b')` with
//! `k[c] = gamma[c] / sqrt(var[c] + eps)`, `w'[c] = w[c] * k[c]`, `b'[c] = (b[c] - mean[c]) * k[c] +
//! beta[c]`, each step in f32 in this order, as ONNX Runtime's `ConvBNFusion` computes it (so the
//! folded weights, and the scales derived from them, are ORT's bit for bit). Folded only when the
//! convolution's weight
//! (and bias) and every batch-norm parameter are f32 constants and the batch norm is the
//! convolution's only user. The folded convolution keeps its name and lists the batch norm in
//! `from`.

use crate::pass::{Pass, PassContext, PassError, PassReport};
use qforge_ir::{Graph, NodeId, Op, Tensor, Value};

/// The per-channel scale of an inference batch norm, `k[c] = gamma[c] / sqrt(var[c] + eps)` in
/// f32 (ONNX Runtime's order): the one place qforge computes it.
pub fn channel_scale(gamma: &[f32], var: &[f32], epsilon: f32) -> Vec<f32> {
    gamma.iter().zip(var).map(|(&g, &v)| g / (v + epsilon).sqrt()).collect()
}

/// The folded bias `(b[c] - mean[c]) * k[c] + beta[c]` in f32, in that order.
pub fn folded_bias(bias: &[f32], mean: &[f32], k: &[f32], beta: &[f32]) -> Vec<f32> {
    (0..k.len()).map(|c| (bias[c] - mean[c]) * k[c] + beta[c]).collect()
}

/// The batch-norm folding pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct FoldBatchNorm;

/// Folds every foldable conv + batch norm pair; returns how many were folded.
pub fn fold_batch_norms(g: &mut Graph) -> usize {
    let Ok(order) = g.schedule() else { return 0 };
    let mut n = 0;
    for bn in order {
        let Some((conv, w, b)) = fold_one(g, bn) else { continue };
        let conv_name = g.node(conv).name.clone();
        let wc = g.add_const(format!("{conv_name}.weight_folded"), w);
        let bc = g.add_const(format!("{conv_name}.bias_folded"), b);
        g.set_input(conv, 1, Some(wc));
        g.set_input(conv, 2, Some(bc));
        let bn_node = g.node(bn);
        let mut from = bn_node.from.clone();
        if from.is_empty() {
            from.push(bn_node.name.clone());
        }
        let cn = g.node_mut(conv);
        if cn.from.is_empty() {
            cn.from.push(conv_name.clone());
        }
        cn.from.extend(from);
        g.replace_all_uses(Value::new(bn, 0), Value::new(conv, 0));
        n += 1;
    }
    if n > 0 {
        g.remove_dead();
    }
    n
}

fn const_f32(g: &Graph, v: Option<Value>) -> Option<Vec<f32>> {
    let v = v?;
    match &g.node(v.node).op {
        Op::Const(t) => t.as_f32().map(|s| s.to_vec()),
        _ => None,
    }
}

/// The folded weight and bias for the batch norm `bn`, if it can be folded.
fn fold_one(g: &Graph, bn: NodeId) -> Option<(NodeId, Tensor, Tensor)> {
    let node = g.node(bn);
    let Op::BatchNorm { epsilon } = node.op else { return None };
    let x = node.inputs()[0]?;
    let conv = g.node(x.node);
    if !matches!(conv.op, Op::Conv(_)) || g.value_users(x).len() != 1 || g.is_output(x) {
        return None;
    }
    let w_v = conv.inputs()[1]?;
    let Op::Const(w) = &g.node(w_v.node).op else { return None };
    let wv = w.as_f32()?;
    let m = *w.shape().first()?;
    let bias = match conv.inputs().get(2).copied().flatten() {
        None => vec![0.0; m],
        b => const_f32(g, b)?,
    };
    let p: Vec<Vec<f32>> = (1..5).map(|i| const_f32(g, node.inputs()[i])).collect::<Option<_>>()?;
    if bias.len() != m || p.iter().any(|v| v.len() != m) || m == 0 {
        return None;
    }
    let (gamma, beta, mean, var) = (&p[0], &p[1], &p[2], &p[3]);
    let k = channel_scale(gamma, var, epsilon);
    let inner = wv.len() / m;
    let w2: Vec<f32> = wv.iter().enumerate().map(|(i, &x)| x * k[i / inner]).collect();
    let b2 = folded_bias(&bias, mean, &k, beta);
    Some((x.node, Tensor::from_f32(w.shape().to_vec(), w2), Tensor::from_f32(vec![m], b2)))
}

/// Why a batch norm cannot be folded into a conv before it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FoldBlocker {
    #[error("it has no input")]
    NoInput,
    #[error("no conv before it: its input is the graph input `{0}`")]
    GraphInput(String),
    #[error("no conv before it: its input comes from `{op}` `{node}`")]
    NotAConv { op: &'static str, node: String },
    #[error("the result of the conv `{0}` before it is also a graph output")]
    ConvIsOutput(String),
    #[error("the result of the conv `{conv}` before it has {}", if *.others == 1 { "another user".to_string() } else { format!("{} other users", .others) })]
    ConvShared { conv: String, others: usize },
    #[error("its parameters are not all constants")]
    ParamsNotConstant,
    #[error("the weight of the conv `{0}` before it is not a constant")]
    WeightNotConstant(String),
}

/// Why the batch norm `bn` cannot be folded into a conv before it, or `Ok` with that conv. The
/// rule is this pass's and the optimizer's (`bn-into-conv`): the batch norm's input is the result
/// of a conv that has no other user and is not a graph output, its parameters are constants, and
/// the conv's weight is a constant (f32, or the dequantized i8 weight of a quantized graph). The
/// optimizer reports the reason for every batch norm it leaves unfolded.
pub fn fold_blocker(g: &Graph, bn: NodeId) -> Result<NodeId, FoldBlocker> {
    let node = g.node(bn);
    let Some(x) = node.inputs().first().copied().flatten() else { return Err(FoldBlocker::NoInput) };
    let prod = g.node(x.node);
    match prod.op {
        Op::Conv(_) => {}
        Op::Input => return Err(FoldBlocker::GraphInput(prod.name.clone())),
        _ => return Err(FoldBlocker::NotAConv { op: prod.op.name(), node: prod.name.clone() }),
    }
    if g.is_output(x) {
        return Err(FoldBlocker::ConvIsOutput(prod.name.clone()));
    }
    let users = g.value_users(x).len();
    if users != 1 {
        return Err(FoldBlocker::ConvShared { conv: prod.name.clone(), others: users.saturating_sub(1) });
    }
    let is_const = |v: Option<Value>| v.is_some_and(|v| matches!(g.node(v.node).op, Op::Const(_)));
    if !(1..5).all(|i| is_const(node.inputs().get(i).copied().flatten())) {
        return Err(FoldBlocker::ParamsNotConstant);
    }
    let w = prod.inputs().get(1).copied().flatten();
    let dq_const = w.is_some_and(|w| {
        let d = g.node(w.node);
        matches!(d.op, Op::Dequantize) && is_const(d.inputs().first().copied().flatten())
    });
    if !(is_const(w) || dq_const) {
        return Err(FoldBlocker::WeightNotConstant(prod.name.clone()));
    }
    Ok(x.node)
}

impl Pass for FoldBatchNorm {
    fn name(&self) -> &'static str {
        "fold-batch-norm"
    }

    fn run(&self, g: &mut Graph, _cx: &PassContext) -> Result<PassReport, PassError> {
        let mut report = PassReport::new(self.name());
        g.schedule().map_err(|error| PassError::Ir { pass: self.name().into(), error })?;
        report.count("batch norms folded", fold_batch_norms(g) as u64);
        Ok(report)
    }
}
