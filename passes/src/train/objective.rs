//! Training losses built as IR on top of the QAT graph's logits.
//!
//! * Knowledge distillation from the FP32 model itself (Hinton, Vinyals & Dean 2015, "Distilling the
//!   Knowledge in a Neural Network"): `T^2 * KL(softmax(t/T) || softmax(s/T))`, averaged over the
//!   batch (PyTorch's `KLDivLoss(reduction="batchmean")` of `log_softmax(s/T)` against
//!   `softmax(t/T)`, times `T * T`, as the seed's `apply_knowledge_distillation` writes it, with
//!   `T = 4`). `t` are the teacher's logits, a graph input the trainer fills by running the FP32
//!   graph.
//! * Cross-entropy against one-hot labels when labels are given: `mean(-sum(y * log_softmax(s)))`
//!   (`torch.nn.CrossEntropyLoss`).
//! * Their mix `ce * CE + kd * KD` (the seed: `0.1 * CE + 0.9 * KD`).
//! * Optional feature matching: `w * mean((f_s - f_t)^2)` on chosen values (a node's first result),
//!   the teacher's values again graph inputs.
//!
//! The loss graph's outputs are the QAT graph's (in order), then the loss, then the loss times the
//! `loss_scale` input (what is differentiated: dynamic loss scaling, [`super::scaler`]).
//! Its inputs are the QAT graph's, then `teacher:logits`, one `teacher:NODE` per feature, then
//! `labels` (when CE is on), then `loss_scale` (an f32 scalar).
//!
//! Invariants: pure; builds only existing ops; the QAT graph is not changed.

use super::fake_quant::QatModel;
use super::TrainError;
use qforge_ir::{BinaryOp, DType, Graph, Op, Shape, Tensor, TensorType, UnaryOp, Value};

/// The name of the loss graph's f32 scalar input that multiplies the loss (dynamic loss scaling).
pub const LOSS_SCALE: &str = "loss_scale";

/// What the fine-tuning minimizes.
#[derive(Clone, Debug, PartialEq)]
pub struct Objective {
    /// The distillation temperature `T`.
    pub temperature: f32,
    /// The weight of the distillation term.
    pub kd_weight: f32,
    /// The weight of cross-entropy (used only when labels are given).
    pub ce_weight: f32,
    /// Feature matching: (node name, weight) pairs.
    pub features: Vec<(String, f32)>,
}

impl Objective {
    /// The seed's mix: `T = 4`, `0.1 * CE + 0.9 * KD` (KD alone without labels).
    pub fn seed() -> Objective {
        Objective { temperature: 4.0, kd_weight: 0.9, ce_weight: 0.1, features: vec![] }
    }

    /// The weights used with or without labels: without labels, distillation alone (weight 1).
    pub fn weights(&self, labels: bool) -> (f32, f32) {
        if labels {
            (self.ce_weight, self.kd_weight)
        } else {
            (0.0, 1.0)
        }
    }
}

/// The loss graph and where its parts are.
#[derive(Clone, Debug)]
pub struct LossGraph {
    pub graph: Graph,
    /// Output index of the loss, and of the scaled loss (`loss * loss_scale`).
    pub loss: usize,
    pub scaled_loss: usize,
    /// Whether a `labels` input (one-hot, f32 `[N, classes]`) is expected.
    pub labels: bool,
    /// The feature values the teacher must provide, in input order after the logits.
    pub features: Vec<String>,
}

struct B<'a> {
    g: &'a mut Graph,
    n: usize,
}

impl B<'_> {
    fn op(&mut self, op: Op, inputs: Vec<Value>, what: &str) -> Result<Value, TrainError> {
        self.n += 1;
        let name = format!("loss/{what}_{}", self.n);
        self.g
            .add_node(op, inputs.into_iter().map(Some).collect(), None, name.clone())
            .map_err(|e| TrainError::ir(&format!("building `{name}`"), e))
    }
    fn bin(&mut self, op: BinaryOp, a: Value, b: Value, what: &str) -> Result<Value, TrainError> {
        self.op(Op::Binary(op), vec![a, b], what)
    }
    fn c(&mut self, x: f32) -> Value {
        self.n += 1;
        self.g.add_const(format!("loss/const_{}", self.n), Tensor::scalar_f32(x))
    }
    fn sum(&mut self, x: Value, axes: Vec<i64>) -> Result<Value, TrainError> {
        self.op(Op::ReduceSum { axes, keepdims: false }, vec![x], "sum")
    }
    fn mean(&mut self, x: Value, axes: Vec<i64>) -> Result<Value, TrainError> {
        self.op(Op::ReduceMean { axes, keepdims: false }, vec![x], "mean")
    }
    fn scaled(&mut self, x: Value, w: f32) -> Result<Value, TrainError> {
        if w == 1.0 {
            return Ok(x);
        }
        let c = self.c(w);
        self.bin(BinaryOp::Mul, x, c, "weighted")
    }
}

/// The loss graph of `model` under `objective`, with a `labels` input when `labels`.
pub fn attach(model: &QatModel, objective: &Objective, labels: bool) -> Result<LossGraph, TrainError> {
    let mut g = model.graph.clone();
    let Some(out) = g.outputs().first().map(|o| o.value) else {
        return Err(TrainError::Data("the model has no output".into()));
    };
    let lty = g.value_type(out).clone();
    if lty.shape.rank() != 2 {
        return Err(TrainError::Data(format!(
            "the model's first output `{}` has rank {}: distillation needs logits [N, classes]",
            g.outputs()[0].name,
            lty.shape.rank()
        )));
    }
    let teacher = g.add_input("teacher:logits", lty.clone());
    let mut feats = vec![];
    for (name, w) in &objective.features {
        let Some(id) = g.node_ids().find(|&id| g.node(id).name == *name && !matches!(g.node(id).op, Op::Input)) else {
            return Err(TrainError::Data(format!("feature matching: no node `{name}`")));
        };
        let v = Value::new(id, 0);
        let t = g.add_input(format!("teacher:{name}"), g.value_type(v).clone());
        feats.push((v, t, *w));
    }
    let y = labels.then(|| g.add_input("labels", lty.clone()));
    let scale = g.add_input(LOSS_SCALE, TensorType::new(DType::F32, Shape::fixed(&[])));
    let mut b = B { g: &mut g, n: 0 };
    let (ce_w, kd_w) = objective.weights(labels);
    let mut terms = vec![];
    if kd_w != 0.0 {
        let t_inv = b.c(objective.temperature);
        let s = b.bin(BinaryOp::Div, out, t_inv, "student_t")?;
        let t = b.bin(BinaryOp::Div, teacher, t_inv, "teacher_t")?;
        let ls = b.op(Op::LogSoftmax { axis: 1 }, vec![s], "student_log_p")?;
        let lt = b.op(Op::LogSoftmax { axis: 1 }, vec![t], "teacher_log_p")?;
        let pt = b.op(Op::Unary(UnaryOp::Exp), vec![lt], "teacher_p")?;
        let d = b.bin(BinaryOp::Sub, lt, ls, "log_ratio")?;
        let m = b.bin(BinaryOp::Mul, pt, d, "kl_terms")?;
        let kl = b.sum(m, vec![1])?;
        let kl = b.mean(kl, vec![0])?;
        let t2 = objective.temperature * objective.temperature;
        terms.push(b.scaled(kl, t2 * kd_w)?);
    }
    if let (Some(y), true) = (y, ce_w != 0.0) {
        let ls = b.op(Op::LogSoftmax { axis: 1 }, vec![out], "log_p")?;
        let m = b.bin(BinaryOp::Mul, y, ls, "ce_terms")?;
        let s = b.sum(m, vec![1])?;
        let s = b.mean(s, vec![0])?;
        terms.push(b.scaled(s, -ce_w)?);
    }
    for (v, t, w) in &feats {
        let rank = b.g.value_type(*v).shape.rank() as i64;
        let d = b.bin(BinaryOp::Sub, *v, *t, "feature_diff")?;
        let sq = b.bin(BinaryOp::Mul, d, d, "feature_sq")?;
        let m = b.mean(sq, (0..rank).collect())?;
        terms.push(b.scaled(m, *w)?);
    }
    let Some(mut loss) = terms.first().copied() else {
        return Err(TrainError::Data("the objective has no term (every weight is 0)".into()));
    };
    for t in &terms[1..] {
        loss = b.bin(BinaryOp::Add, loss, *t, "total")?;
    }
    let scaled = b.bin(BinaryOp::Mul, loss, scale, "scaled")?;
    let loss_at = g.outputs().len();
    g.add_output("loss", loss);
    g.add_output("scaled_loss", scaled);
    qforge_ir::verify::verify(&g).map_err(|e| TrainError::ir("the loss graph", e))?;
    Ok(LossGraph {
        graph: g,
        loss: loss_at,
        scaled_loss: loss_at + 1,
        labels,
        features: objective.features.iter().map(|(n, _)| n.clone()).collect(),
    })
}

/// The teacher: the float graph with each feature's value as a further output, after its own.
pub fn teacher_graph(float: &Graph, objective: &Objective) -> Result<Graph, TrainError> {
    let mut g = float.clone();
    for (name, _) in &objective.features {
        let Some(id) = g.node_ids().find(|&id| g.node(id).name == *name && !matches!(g.node(id).op, Op::Input)) else {
            return Err(TrainError::Data(format!("feature matching: no node `{name}`")));
        };
        g.add_output(format!("feature:{name}"), Value::new(id, 0));
    }
    Ok(g)
}
