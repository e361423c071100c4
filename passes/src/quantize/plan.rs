//! Which nodes static quantization quantizes, and why the others stay as they are
//! (`qforge inspect --quantizable`).
//!
//! Quantized (Q/DQ around the op): conv, gemm, matmul, add, pooling (max, average,
//! global), concat. Around them, data movement carries its input's parameters through, ReLU and
//! clip that directly follow a quantized op fold into its requantization (a clamp), and every
//! other op stays as it is, with the reason. A pure function of the graph: it reads op kinds,
//! dtypes and which inputs are constants, never values.

use qforge_ir::{BinaryOp, CoordMode, DType, Graph, IrError, Node, NodeId, Op, UnaryOp};
use std::fmt;

/// A constant weight input of a quantized op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightInput {
    /// Input slot of the weight.
    pub slot: usize,
    /// The output-channel axis for per-channel parameters (`None`: per tensor only, e.g. a
    /// rank-1 matmul operand).
    pub axis: Option<usize>,
}

/// What static quantization does with a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Quantized: its float activations get Q/DQ (calibrated), its constant weight (if any) is
    /// quantized offline.
    Quantize { weight: Option<WeightInput> },
    /// Data movement: carries its input's scale and zero point through, no Q/DQ of its own.
    PassThrough,
    /// ReLU or clip folded into the requantization of the quantized op it follows.
    Fused,
    /// Already quantized (Q/DQ or integer ops in the model).
    AlreadyQuantized,
    /// Stays as it is (float, or not a float tensor at all).
    Keep,
}

impl Decision {
    pub fn name(&self) -> &'static str {
        match self {
            Decision::Quantize { .. } => "quantize",
            Decision::PassThrough => "pass-through",
            Decision::Fused => "fused",
            Decision::AlreadyQuantized => "already-quantized",
            Decision::Keep => "keep",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The decision for one node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodePlan {
    pub id: NodeId,
    pub name: String,
    pub op: &'static str,
    pub decision: Decision,
    pub reason: String,
}

impl NodePlan {
    pub fn is_quantized(&self) -> bool {
        matches!(self.decision, Decision::Quantize { .. })
    }
}

/// Decides every scheduled node (graph inputs and constants left out), in schedule order.
/// Errors only when the graph has a cycle.
pub fn plan(g: &Graph) -> Result<Vec<NodePlan>, IrError> {
    let order = g.schedule()?;
    let mut out: Vec<NodePlan> = Vec::with_capacity(order.len());
    let mut decided: std::collections::HashMap<NodeId, usize> = Default::default();
    for id in order {
        let node = g.node(id);
        if matches!(node.op, Op::Input | Op::Const(_)) {
            continue;
        }
        let (decision, reason) = decide(g, node, |p| decided.get(&p).map(|&i| &out[i].decision));
        decided.insert(id, out.len());
        out.push(NodePlan { id, name: node.name.clone(), op: node.op.name(), decision, reason });
    }
    Ok(out)
}

fn is_const(g: &Graph, node: &Node, slot: usize) -> bool {
    node.inputs().get(slot).copied().flatten().is_some_and(|v| matches!(g.node(v.node).op, Op::Const(_)))
}

fn weight(g: &Graph, node: &Node, slot: usize, axis: impl Fn(usize) -> Option<usize>) -> Option<WeightInput> {
    if !is_const(g, node, slot) {
        return None;
    }
    let v = node.inputs()[slot]?;
    Some(WeightInput { slot, axis: axis(g.value_type(v).rank()) })
}

fn decide<'a>(g: &Graph, node: &Node, decided: impl Fn(NodeId) -> Option<&'a Decision>) -> (Decision, String) {
    use Decision::*;
    let op = &node.op;
    let keep = |why: String| (Keep, why);
    if matches!(op, Op::Quantize | Op::Dequantize | Op::Requantize | Op::DynamicQuantize) || op.is_integer_kernel() {
        return (AlreadyQuantized, "already quantized in the model (Q/DQ or integer op)".into());
    }
    let dtype = node.outputs.first().map_or(DType::F32, |t| t.dtype);
    let in_dtype = node.inputs().first().copied().flatten().map(|v| g.value_type(v).dtype);
    if !dtype.is_float() || in_dtype.is_some_and(|d| !d.is_float()) {
        let d = in_dtype.filter(|d| !d.is_float()).unwrap_or(dtype);
        return keep(format!("computes on {d} values, not a float tensor"));
    }
    if node.inputs().iter().flatten().any(|v| matches!(g.node(v.node).op, Op::Dequantize)) {
        return (AlreadyQuantized, "reads a dequantized value: the model's Q/DQ already decides it".into());
    }
    if dtype == DType::F64 {
        return keep("computes in f64: quantization starts from f32".into());
    }
    if dtype != DType::F32 {
        return keep(format!("{dtype} already reduced precision: quantization starts from f32"));
    }
    let with_weight = |w: Option<WeightInput>, what: &str| {
        let how = match w {
            Some(WeightInput { axis: Some(a), .. }) => {
                format!("{what}: constant weight quantized per channel (axis {a}), activations calibrated")
            }
            Some(WeightInput { axis: None, .. }) => {
                format!("{what}: constant weight quantized per tensor, activations calibrated")
            }
            None => format!("{what}: both operands are activations, each calibrated"),
        };
        (Quantize { weight: w }, how)
    };
    match op {
        Op::Conv(_) => with_weight(weight(g, node, 1, |_| Some(0)), "conv"),
        Op::Gemm { trans_b, .. } => {
            let axis = if *trans_b { 0 } else { 1 };
            with_weight(weight(g, node, 1, |_| Some(axis)), "gemm")
        }
        Op::MatMul => with_weight(weight(g, node, 1, |r| (r >= 2).then(|| r - 1)), "matmul"),
        Op::Binary(BinaryOp::Add) => (Quantize { weight: None }, "add: operands and sum calibrated (QAdd)".into()),
        Op::MaxPool(_) | Op::GlobalMaxPool => {
            (Quantize { weight: None }, "max pool: order-preserving, keeps its input's scale and zero point".into())
        }
        Op::AveragePool(_) | Op::GlobalAveragePool => {
            (Quantize { weight: None }, "average pool: integer average with requantization".into())
        }
        Op::Concat { .. } => {
            (Quantize { weight: None }, "concat: inputs requantized to one output scale (QConcat)".into())
        }
        Op::Reshape { .. }
        | Op::Flatten { .. }
        | Op::Transpose { .. }
        | Op::Squeeze { .. }
        | Op::Unsqueeze { .. }
        | Op::Slice { .. }
        | Op::Gather { .. }
        | Op::Split { .. }
        | Op::Expand { .. }
        | Op::Identity => (PassThrough, "data movement: carries its input's scale and zero point".into()),
        Op::Unary(UnaryOp::Relu) | Op::Clip { .. } => {
            let producer = node.inputs().first().copied().flatten();
            let fused = producer.and_then(|v| {
                let sole_user = g.value_users(v).len() == 1 && !g.is_output(v);
                let quantized = matches!(decided(v.node), Some(Quantize { .. }));
                (sole_user && quantized).then(|| g.node(v.node).name.clone())
            });
            match fused {
                Some(p) => (Fused, format!("{}: folded into the requantization clamp of `{p}`", op.name())),
                None => keep(format!(
                    "{}: stays float (not the only user of a quantized conv/gemm/matmul/add/pool/concat)",
                    op.name()
                )),
            }
        }
        Op::BatchNorm { .. } => {
            keep("batch norm: folded into the preceding conv before quantization; alone it stays float".into())
        }
        Op::Softmax { .. } | Op::LogSoftmax { .. } => keep(format!(
            "{}: exponentials and normalization need float range (stays float, as in ONNX Runtime)",
            op.name()
        )),
        Op::LayerNorm { .. } | Op::Lrn { .. } | Op::GroupNorm { .. } => {
            keep(format!("{}: normalization statistics need float precision", op.name()))
        }
        Op::Unary(_) | Op::LeakyRelu { .. } | Op::HardSigmoid { .. } => {
            keep(format!("{}: non-linear function without an integer kernel; stays float", op.name()))
        }
        Op::Binary(_) | Op::Where => {
            keep(format!("{}: element-wise op outside the quantized set (only add is quantized)", op.name()))
        }
        Op::ReduceMean { .. }
        | Op::ReduceSum { .. }
        | Op::ReduceMax { .. }
        | Op::ReduceProd { .. }
        | Op::ArgMax { .. }
        | Op::ArgMin { .. } => keep(format!("{}: reduction stays float", op.name())),
        Op::Cast { to } => keep(format!("cast to {to}: a type conversion, not quantized")),
        Op::Resize(a) if a.coord != CoordMode::TfCropAndResize && !a.exclude_outside => (
            Quantize { weight: None },
            "resize: interpolates the stored integers, keeps its input's scale and zero point".into(),
        ),
        Op::Pad { .. } => (
            Quantize { weight: None },
            "pad: data movement with a quantized fill, keeps its input's scale and zero point".into(),
        ),
        Op::Resize(_) | Op::Tile { .. } => keep(format!(
            "{}: no quantized form (tile, and resize with tf_crop_and_resize or exclude_outside); stays float",
            op.name()
        )),
        Op::ConvTranspose(_) => keep(
            "conv_transpose: no integer kernel; stays float (canonicalization rewrites one with a constant weight \
             as a convolution, which is quantized)"
                .into(),
        ),
        _ => keep(format!("{}: not in the quantized set (conv, gemm, matmul, add, pooling, concat)", op.name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qforge_ir::{ConvAttrs, Dim, PoolAttrs, Shape, Tensor, TensorType, Value};

    fn add(g: &mut Graph, op: Op, inputs: &[Value], name: &str) -> Value {
        g.add_node(op, inputs.iter().map(|&v| Some(v)).collect(), None, name).unwrap()
    }

    /// input -> conv -> relu -> maxpool -> flatten -> gemm -> softmax, plus a residual add,
    /// a concat, a mul, a conv whose output is also a graph output (its relu is not fused), a
    /// matmul of two activations and shape arithmetic on i64.
    fn graph() -> Graph {
        let mut g = Graph::new("t");
        let x = g.add_input(
            "x",
            TensorType::new(DType::F32, Shape(vec![Dim::Sym("N".into()), 4.into(), 8.into(), 8.into()])),
        );
        let conv = |g: &mut Graph, x, name: &str| {
            let w = g.add_const(format!("{name}.w"), Tensor::from_f32(vec![4, 4, 3, 3], vec![0.1; 144]));
            let attrs = ConvAttrs {
                kernel: vec![3, 3],
                strides: vec![1, 1],
                pads: vec![1; 4],
                dilations: vec![1, 1],
                group: 1,
            };
            add(g, Op::Conv(attrs), &[x, w], name)
        };
        let c1 = conv(&mut g, x, "conv1");
        let r1 = add(&mut g, Op::Unary(UnaryOp::Relu), &[c1], "relu1");
        let c2 = conv(&mut g, r1, "conv2");
        let r2 = add(&mut g, Op::Unary(UnaryOp::Relu), &[c2], "relu2");
        g.add_output("side", c2);
        let sum = add(&mut g, Op::Binary(BinaryOp::Add), &[r1, r2], "add");
        let prod = add(&mut g, Op::Binary(BinaryOp::Mul), &[sum, r1], "mul");
        let cat = add(&mut g, Op::Concat { axis: 1 }, &[prod, sum], "concat");
        let pool = PoolAttrs {
            kernel: vec![2, 2],
            strides: vec![2, 2],
            pads: vec![0; 4],
            dilations: vec![1, 1],
            ceil_mode: false,
            count_include_pad: false,
        };
        let mp = add(&mut g, Op::MaxPool(pool), &[cat], "pool");
        let flat = add(&mut g, Op::Flatten { axis: 1 }, &[mp], "flatten");
        let w = g.add_const("fc.w", Tensor::from_f32(vec![10, 128], vec![0.01; 1280]));
        let fc = add(&mut g, Op::Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: true }, &[flat, w], "fc");
        let sm = add(&mut g, Op::Softmax { axis: -1 }, &[fc], "softmax");
        let t = add(&mut g, Op::Transpose { perm: vec![1, 0] }, &[fc], "transpose");
        let mm = add(&mut g, Op::MatMul, &[t, fc], "attn");
        g.add_output("probs", sm);
        g.add_output("gram", mm);
        let i = g.add_input("idx", TensorType::new(DType::I64, Shape::fixed(&[3])));
        let one = g.add_const("one", Tensor::from_i64(vec![3], vec![1, 1, 1]));
        let s = add(&mut g, Op::Binary(BinaryOp::Add), &[i, one], "shape_add");
        g.add_output("shape", s);
        g
    }

    #[test]
    fn decisions_and_reasons() {
        let g = graph();
        let p = plan(&g).unwrap();
        let by_name = |n: &str| p.iter().find(|x| x.name == n).unwrap_or_else(|| panic!("no {n}"));
        // sources are not listed
        assert!(p.iter().all(|x| x.op != "input" && x.op != "const"));
        assert_eq!(
            by_name("conv1").decision,
            Decision::Quantize { weight: Some(WeightInput { slot: 1, axis: Some(0) }) }
        );
        assert!(by_name("conv1").reason.contains("per channel (axis 0)"), "{}", by_name("conv1").reason);
        // relu1 feeds conv2, add and mul, but it is conv1's only user
        assert_eq!(by_name("relu1").decision, Decision::Fused);
        assert_eq!(by_name("fc").decision, Decision::Quantize { weight: Some(WeightInput { slot: 1, axis: Some(0) }) });
        assert_eq!(by_name("attn").decision, Decision::Quantize { weight: None });
        assert!(by_name("attn").reason.contains("both operands are activations"));
        assert!(by_name("add").is_quantized());
        assert!(by_name("concat").is_quantized());
        assert!(by_name("pool").is_quantized());
        assert_eq!(by_name("flatten").decision, Decision::PassThrough);
        assert_eq!(by_name("transpose").decision, Decision::PassThrough);
        assert_eq!(by_name("softmax").decision, Decision::Keep);
        assert!(by_name("softmax").reason.contains("float"));
        assert_eq!(by_name("mul").decision, Decision::Keep);
        assert!(by_name("mul").reason.contains("only add is quantized"));
        // conv2's output is also a graph output: its relu cannot be folded into it
        assert_eq!(by_name("relu2").decision, Decision::Keep);
        let s = by_name("shape_add");
        assert_eq!(s.decision, Decision::Keep);
        assert_eq!(s.reason, "computes on i64 values, not a float tensor");
        // every listed node has a reason
        assert!(p.iter().all(|x| !x.reason.is_empty()));
    }

    #[test]
    fn relu_after_a_sole_conv_is_fused() {
        let mut g = Graph::new("t");
        let x = g.add_input("x", TensorType::new(DType::F32, Shape::fixed(&[1, 2, 4, 4])));
        let w = g.add_const("w", Tensor::from_f32(vec![2, 2, 1, 1], vec![1.0; 4]));
        let attrs =
            ConvAttrs { kernel: vec![1, 1], strides: vec![1, 1], pads: vec![0; 4], dilations: vec![1, 1], group: 1 };
        let c = add(&mut g, Op::Conv(attrs), &[x, w], "conv");
        let r = add(&mut g, Op::Clip { min: 0.0, max: 6.0 }, &[c], "relu6");
        // matmul with a constant rank-2 weight: per channel along its last axis
        let f = add(&mut g, Op::Flatten { axis: 1 }, &[r], "flat");
        let w2 = g.add_const("w2", Tensor::from_f32(vec![32, 3], vec![0.5; 96]));
        let m = add(&mut g, Op::MatMul, &[f, w2], "mm");
        g.add_output("y", m);
        let p = plan(&g).unwrap();
        let names: Vec<_> = p.iter().map(|x| (x.name.as_str(), x.decision.name())).collect();
        assert_eq!(names, vec![("conv", "quantize"), ("relu6", "fused"), ("flat", "pass-through"), ("mm", "quantize")]);
        assert_eq!(p[1].reason, "clip: folded into the requantization clamp of `conv`");
        assert_eq!(p[3].decision, Decision::Quantize { weight: Some(WeightInput { slot: 1, axis: Some(1) }) });
    }
}
