//! The quantization-aware training (QAT) graph: a float graph with fake quantization where the
//! static quantizer would put Q/DQ, and its weights, biases and quantization parameters as graph
//! inputs (the parameters), their values kept beside it.
//!
//! # What is fake-quantized, and where
//! The sites are exactly those of static quantization: [`activation_plan`] decides which
//! activations get Q/DQ (with the ReLU/clip a quantized op's result is calibrated after, the results
//! that only float ops read left float, pooling and data movement sharing their input's
//! parameters) and which ops get quantized weights, under the same [`QConfig`]. So [`super::convert`]
//! turns a trained graph into the graph [`crate::quantize::QuantizeStatic`] would have written with
//! the trained parameters, which the optimizer lowers to integer kernels.
//!
//! # The fake quantization
//! `fq(x) = (clip(round(x / s) + z, qmin, qmax) - z) * s` in f32, built from existing ops (`div`,
//! `round`, `add`, `clip`, `sub`, `mul`): ONNX `QuantizeLinear` (round half to even, then the
//! zero point, then saturation) followed by `DequantizeLinear`, operation for operation as
//! [`qforge_ir::numerics::quantize`] and [`qforge_ir::numerics::dequantize`] compute them, so the
//! converted graph's Q/DQ give the same values bit for bit. Weights: symmetric per channel on
//! the op's output-channel axis (zero point 0: `clip(round(w / s), qmin, qmax) * s`), 8 or 4 bits
//! as the [`QConfig`]'s weight scheme says; activations: per tensor, the activation scheme. A
//! conv's or gemm's bias is fake-quantized to i32 at `s_x * s_w[c]` as static quantization
//! stores it (`round(b / (s_x s_w)) * (s_x s_w)`; no saturation: an i32 bias out of range is not
//! a concern at these scales, and static quantization's raising of a weight scale for an
//! oversized bias is not applied).
//!
//! Gradients (through [`crate::autodiff`]): `round` has the straight-through estimator and `clip`
//! passes the gradient inside its range, so a weight gets the gradient of its fake-quantized value
//! where it is not clipped, and a scale input gets LSQ's gradient (Esser et al. 2020, "Learned Step
//! Size Quantization", eq. 3: `round(x/s) - x/s` inside the range, `qmin - z` or `qmax - z`
//! outside); LSQ's gradient scale `1 / sqrt(N * qmax)` is applied by the trainer
//! ([`Param::grad_scale`]).
//!
//! # Inputs of the QAT graph
//! The float graph's inputs first (same names, same order), then one input per [`Param`] in
//! [`QatModel::params`] order: `w:NODE` (a weight), `b:NODE` (a bias), `ws:NODE` (a weight's
//! per-channel scales, 1-D), `as:VALUE` and `az:VALUE` (an activation's scale and zero point, f32
//! scalars). Outputs: the float graph's outputs, then one `observe:VALUE` per activation with its
//! own parameters: the value before its fake quantization, for the observers.
//!
//! Invariants: pure; the float graph is never changed; every value is f32.

use super::TrainError;
use crate::canonicalize::Canonicalize;
use crate::quantize::calibrate::{Calibration, Target};
use crate::quantize::plan::WeightInput;
use crate::quantize::policy::QConfig;
use crate::quantize::scheme::{self, Scheme};
use crate::quantize::static_quant::{activation_plan, Source};
use crate::quantize::ObserverConfig;
use crate::{batchnorm::FoldBatchNorm, Pass, PassContext};
use qforge_ir::{BinaryOp, DType, Graph, NodeId, Op, Shape, Tensor, TensorType, UnaryOp, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// What a parameter is.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamKind {
    /// A conv, gemm or matmul weight.
    Weight,
    Bias,
    /// The per-channel scales of the weight of [`QatModel::layers`]`[layer]`.
    WeightScale {
        layer: usize,
    },
    /// The scale of [`QatModel::activations`]`[site]`.
    ActScale {
        site: usize,
    },
    /// The zero point of [`QatModel::activations`]`[site]` (an integer held in f32; never trained).
    ActZeroPoint {
        site: usize,
    },
}

/// One input of the QAT graph that is not data: its name (the graph input's), kind and value.
#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub kind: ParamKind,
    pub value: Tensor,
    /// LSQ's gradient scale for a scale parameter, `1 / sqrt(N * qmax)` with `N` the elements one
    /// scale covers (Esser et al. 2020, section 2.2); 1 for the others.
    pub grad_scale: f32,
}

impl Param {
    /// Whether the optimizer updates it: weights and biases always, scales when `learn_scales`
    /// (LSQ), zero points never.
    pub fn trainable(&self, learn_scales: bool) -> bool {
        match self.kind {
            ParamKind::Weight | ParamKind::Bias => true,
            ParamKind::WeightScale { .. } | ParamKind::ActScale { .. } => learn_scales,
            ParamKind::ActZeroPoint { .. } => false,
        }
    }

    /// Whether weight decay applies (weights only, as is usual for QAT fine-tuning).
    pub fn decays(&self) -> bool {
        self.kind == ParamKind::Weight
    }
}

/// An activation with its own quantization parameters (or sharing another's).
#[derive(Clone, Debug)]
pub struct ActSite {
    /// The value in the float graph.
    pub value: Value,
    pub scheme: Scheme,
    pub observer: ObserverConfig,
    /// Indices into [`QatModel::params`] of its scale and zero point (a shared site names its
    /// source's).
    pub scale: usize,
    pub zero_point: usize,
    /// Index into the QAT graph's outputs of the observed value, for a site with its own
    /// parameters (`None` for one that shares another's).
    pub observed: Option<usize>,
}

/// A conv, gemm or matmul whose weight (and bias) are parameters.
#[derive(Clone, Debug)]
pub struct Layer {
    pub node: NodeId,
    pub weight: usize,
    pub weight_slot: usize,
    /// Fake-quantized weights: the scale parameter, the output-channel axis and the scheme.
    pub quant: Option<(usize, usize, Scheme)>,
    pub bias: Option<usize>,
    /// Whether the bias is fake-quantized to i32 (and the activation site of the op's input).
    pub bias_site: Option<usize>,
}

/// The QAT graph and its parameters (see the module documentation).
#[derive(Clone, Debug)]
pub struct QatModel {
    /// The float graph it was built from (batch norm folded), which [`super::convert`] quantizes.
    pub float: Graph,
    pub graph: Graph,
    pub params: Vec<Param>,
    pub activations: Vec<ActSite>,
    pub layers: Vec<Layer>,
    pub qconfig: QConfig,
    /// How many data inputs come before the parameters.
    pub data_inputs: usize,
    /// How many of the QAT graph's outputs are the model's (the observed values follow).
    pub model_outputs: usize,
    /// ReLU/clip nodes calibrated in place of the op they follow (static quantization may remove
    /// them when converting).
    pub fused: Vec<(NodeId, NodeId)>,
}

/// Canonicalizes `g` and folds its batch norms into the convs before them, as the compiler does
/// before calibration: the graph QAT starts from.
pub fn fold_for_training(g: &Graph) -> Result<Graph, TrainError> {
    let mut g = g.clone();
    let cx = PassContext::default();
    for p in [&Canonicalize as &dyn Pass, &FoldBatchNorm, &Canonicalize] {
        p.run(&mut g, &cx).map_err(|e| TrainError::Pass(e.to_string()))?;
    }
    Ok(g)
}

/// The activations to calibrate before QAT starts (its initial ranges), with their observers:
/// the static quantizer's targets under `qconfig`.
pub fn calibration_targets(float: &Graph, qconfig: &QConfig) -> Result<Vec<Target>, TrainError> {
    let ap = activation_plan(float, qconfig).map_err(|e| TrainError::ir("planning quantization", e))?;
    Ok(ap
        .values
        .iter()
        .filter_map(|(_, s)| match s {
            Source::Calibrated { target, .. } => Some(target.clone()),
            Source::SameAs { .. } => None,
        })
        .collect())
}

/// The broadcast shape of per-channel scales along `axis` of a rank-`rank` tensor.
fn channel_shape(rank: usize, axis: usize, c: usize) -> Vec<i64> {
    (0..rank).map(|i| if i == axis { c as i64 } else { 1 }).collect()
}

struct Builder<'a> {
    g: &'a mut Graph,
}

impl Builder<'_> {
    fn node(&mut self, op: Op, inputs: Vec<Value>, name: String) -> Result<Value, TrainError> {
        self.g
            .add_node(op, inputs.into_iter().map(Some).collect(), None, name.clone())
            .map_err(|e| TrainError::ir(&format!("building `{name}`"), e))
    }

    fn bin(&mut self, op: BinaryOp, a: Value, b: Value, name: String) -> Result<Value, TrainError> {
        self.node(Op::Binary(op), vec![a, b], name)
    }

    /// `(clip(round(x / s) + z, lo, hi) - z) * s`; without `z`, `clip(round(x / s), lo, hi) * s`:
    /// one [`Op::FakeQuantize`] (the composition of those ops bit for bit, with one fused
    /// gradient node instead of a dozen element-wise ones).
    fn fake_quant(
        &mut self,
        x: Value,
        s: Value,
        z: Option<Value>,
        (lo, hi): (i32, i32),
        base: &str,
    ) -> Result<Value, TrainError> {
        let name = format!("{base}/fake_quantize");
        self.g
            .add_node(Op::FakeQuantize { qmin: lo, qmax: hi }, vec![Some(x), Some(s), z], None, name.clone())
            .map_err(|e| TrainError::ir(&format!("building `{name}`"), e))
    }
}

fn value_name(g: &Graph, v: Value) -> String {
    let n = &g.node(v.node).name;
    if g.node(v.node).outputs.len() > 1 {
        format!("{n}:{}", v.port)
    } else {
        n.clone()
    }
}

fn f32_const(g: &Graph, v: Value) -> Option<Arc<Tensor>> {
    match &g.node(v.node).op {
        Op::Const(t) if t.dtype() == DType::F32 && g.value_type(v).quant.is_none() => Some(t.clone()),
        _ => None,
    }
}

/// The activation scale and zero point for a calibrated range.
pub(crate) fn act_params(min: f32, max: f32, s: Scheme) -> Result<(f32, i32), TrainError> {
    let p = scheme::params_for_range(min, max, s).map_err(|e| TrainError::Data(e.to_string()))?;
    Ok((p.scale, p.zero_point))
}

/// Per-channel symmetric weight scales of `w` along `axis` (the static quantizer's formula).
pub(crate) fn weight_scales(w: &Tensor, axis: usize, s: Scheme) -> Result<Vec<f32>, TrainError> {
    let values = w.as_f32().ok_or_else(|| TrainError::Data("a weight is not f32".into()))?;
    let r = scheme::tensor_params(values, w.shape(), Some(axis), s).map_err(|e| TrainError::Data(e.to_string()))?;
    Ok((0..w.shape()[axis]).map(|c| r.params.scale(c)).collect())
}

impl QatModel {
    /// Builds the QAT graph from `float` (canonicalized, batch norm folded: [`fold_for_training`])
    /// under `qconfig`, with the initial activation ranges of `calibration` (calibrated on `float`
    /// with [`calibration_targets`]) and per-channel min-max weight scales: at these initial
    /// values the QAT graph computes what static quantization's Q/DQ graph computes.
    pub fn prepare(float: &Graph, qconfig: &QConfig, calibration: &Calibration) -> Result<QatModel, TrainError> {
        let ap = activation_plan(float, qconfig).map_err(|e| TrainError::ir("planning quantization", e))?;
        let mut g = float.clone();
        let data_inputs = g.inputs().len();
        let model_outputs = g.outputs().len();
        let mut params: Vec<Param> = vec![];
        let scalar = TensorType::new(DType::F32, Shape::fixed(&[]));
        let mut activations: Vec<ActSite> = vec![];
        let mut site_of: HashMap<Value, usize> = HashMap::new();
        // 1. activation parameters, in schedule order (a shared site follows its source)
        for (v, src) in &ap.values {
            let name = value_name(float, *v);
            let site = match src {
                Source::Calibrated { scheme, target } => {
                    let (min, max) = match calibration.range(float, *v) {
                        Some(r) => r,
                        None => match &float.node(v.node).op {
                            Op::Const(t) => t.range().map(|(a, b)| (a as f32, b as f32)).unwrap_or((0.0, 0.0)),
                            _ => {
                                return Err(TrainError::Data(format!(
                                    "node `{name}`: no calibrated range (calibrate the folded graph first)"
                                )))
                            }
                        },
                    };
                    let (s, z) = act_params(min, max, *scheme)?;
                    let qmax = scheme.qtype.range().1 - z;
                    let n =
                        float.value_type(*v).shape.dims().iter().skip(1).filter_map(|d| d.fixed()).product::<usize>();
                    let gs = 1.0 / ((n.max(1) as f32) * qmax.max(1) as f32).sqrt();
                    let k = activations.len();
                    params.push(Param {
                        name: format!("as:{name}"),
                        kind: ParamKind::ActScale { site: k },
                        value: Tensor::scalar_f32(s),
                        grad_scale: gs,
                    });
                    params.push(Param {
                        name: format!("az:{name}"),
                        kind: ParamKind::ActZeroPoint { site: k },
                        value: Tensor::scalar_f32(z as f32),
                        grad_scale: 1.0,
                    });
                    ActSite {
                        value: *v,
                        scheme: *scheme,
                        observer: target.observer.clone(),
                        scale: params.len() - 2,
                        zero_point: params.len() - 1,
                        observed: Some(0),
                    }
                }
                Source::SameAs { from, target } => {
                    let &src = site_of.get(from).ok_or_else(|| {
                        TrainError::Data(format!("node `{name}`: its source value has no parameters"))
                    })?;
                    let s = &activations[src];
                    ActSite {
                        value: *v,
                        scheme: s.scheme,
                        observer: target.observer.clone(),
                        scale: s.scale,
                        zero_point: s.zero_point,
                        observed: None,
                    }
                }
            };
            site_of.insert(*v, activations.len());
            activations.push(site);
        }
        // 2. layers: the weights and biases of every quantized op (and of float convs, gemms and
        // matmuls with constant weights: they train too)
        let mut layers: Vec<Layer> = vec![];
        let quantized: HashMap<NodeId, (Option<WeightInput>, Scheme)> =
            ap.ops.iter().map(|(id, w, s)| (*id, (*w, s.weights))).collect();
        let order = float.schedule().map_err(|e| TrainError::ir("scheduling", e))?;
        for id in order {
            let node = float.node(id);
            let slot = match (&node.op, quantized.get(&id)) {
                (_, Some((Some(w), _))) => w.slot,
                (Op::Conv(_) | Op::Gemm { .. } | Op::MatMul, _) => 1,
                _ => continue,
            };
            let Some(wv) = node.inputs().get(slot).copied().flatten() else { continue };
            let Some(wt) = f32_const(float, wv) else { continue };
            let mut layer = Layer { node: id, weight: 0, weight_slot: slot, quant: None, bias: None, bias_site: None };
            let wname = format!("w:{}", node.name);
            layer.weight = params.len();
            params.push(Param { name: wname, kind: ParamKind::Weight, value: (*wt).clone(), grad_scale: 1.0 });
            if let Some((Some(WeightInput { axis, .. }), scheme)) = quantized.get(&id) {
                if !scheme.symmetric {
                    return Err(TrainError::Unsupported {
                        node: node.name.clone(),
                        what: "asymmetric weights (finetune trains symmetric per-channel weights)".into(),
                    });
                }
                let Some(axis) = *axis else {
                    return Err(TrainError::Unsupported {
                        node: node.name.clone(),
                        what: "a weight without an output-channel axis".into(),
                    });
                };
                let scales = weight_scales(&wt, axis, *scheme)?;
                let c = scales.len();
                let per = wt.len() / c.max(1);
                let gs = 1.0 / ((per.max(1) as f32) * scheme.qtype.range().1 as f32).sqrt();
                params.push(Param {
                    name: format!("ws:{}", node.name),
                    kind: ParamKind::WeightScale { layer: layers.len() },
                    value: Tensor::from_f32(vec![c], scales),
                    grad_scale: gs,
                });
                layer.quant = Some((params.len() - 1, axis, *scheme));
            }
            let bias_slot = matches!(node.op, Op::Conv(_) | Op::Gemm { .. }).then_some(2);
            if let Some(bv) = bias_slot.and_then(|s| node.inputs().get(s).copied().flatten()) {
                if let Some(bt) = f32_const(float, bv).filter(|t| t.rank() == 1) {
                    layer.bias = Some(params.len());
                    params.push(Param {
                        name: format!("b:{}", node.name),
                        kind: ParamKind::Bias,
                        value: (*bt).clone(),
                        grad_scale: 1.0,
                    });
                    let bias_ok = match node.op {
                        Op::Conv(_) => true,
                        Op::Gemm { alpha, beta, .. } => alpha == 1.0 && beta == 1.0,
                        _ => false,
                    };
                    let x = node.inputs().first().copied().flatten();
                    if bias_ok && layer.quant.is_some() {
                        layer.bias_site = x.and_then(|x| site_of.get(&x).copied());
                    }
                }
            }
            layers.push(layer);
        }
        // 3. the parameter inputs
        let mut inputs: Vec<Value> = Vec::with_capacity(params.len());
        for p in &params {
            let ty = TensorType::new(DType::F32, p.value.ir_shape());
            inputs.push(g.add_input(p.name.clone(), if p.value.rank() == 0 { scalar.clone() } else { ty }));
        }
        let mut b = Builder { g: &mut g };
        // 4. weights and biases (before the activations' users are rewired)
        for l in &layers {
            let node = float.node(l.node);
            let name = node.name.clone();
            let mut w = inputs[l.weight];
            if let Some((sp, axis, scheme)) = l.quant {
                let rank = params[l.weight].value.rank();
                let c = params[sp].value.len();
                let s = b.node(
                    Op::Reshape { shape: channel_shape(rank, axis, c) },
                    vec![inputs[sp]],
                    format!("{name}/w_scale"),
                )?;
                w = b.fake_quant(w, s, None, scheme.qtype.range(), &format!("{name}/weight"))?;
            }
            b.g.set_input(l.node, l.weight_slot, Some(w));
            if let Some(bp) = l.bias {
                let mut bias = inputs[bp];
                if let (Some(site), Some((sp, _, _))) = (l.bias_site, l.quant) {
                    let sx = inputs[activations[site].scale];
                    let sb = b.bin(BinaryOp::Mul, sx, inputs[sp], format!("{name}/b_scale"))?;
                    let d = b.bin(BinaryOp::Div, bias, sb, format!("{name}/bias/fq_div"))?;
                    let r = b.node(Op::Unary(UnaryOp::Round), vec![d], format!("{name}/bias/fq_round"))?;
                    bias = b.bin(BinaryOp::Mul, r, sb, format!("{name}/bias/fq_mul"))?;
                }
                b.g.set_input(l.node, 2, Some(bias));
            }
        }
        // 5. activations: each value's users read its fake-quantized form
        for site in activations.iter_mut() {
            let v = site.value;
            let users = b.g.value_users(v);
            let outs: Vec<usize> =
                b.g.outputs().iter().enumerate().filter(|(_, o)| o.value == v).map(|(i, _)| i).collect();
            let name = value_name(float, v);
            let (s, z) = (inputs[site.scale], inputs[site.zero_point]);
            let y = b.fake_quant(v, s, Some(z), site.scheme.qtype.range(), &name)?;
            for (n, slot) in users {
                b.g.set_input(n, slot, Some(y));
            }
            for i in outs {
                b.g.set_output_value(i, y);
            }
            if site.observed.is_some() {
                site.observed = Some(b.g.outputs().len());
                b.g.add_output(format!("observe:{name}"), v);
            }
        }
        g.remove_dead();
        qforge_ir::verify::verify(&g).map_err(|e| TrainError::ir("the QAT graph", e))?;
        Ok(QatModel {
            float: float.clone(),
            graph: g,
            params,
            activations,
            layers,
            qconfig: qconfig.clone(),
            data_inputs,
            model_outputs,
            fused: ap.fused.clone(),
        })
    }

    /// The parameter values, in [`QatModel::params`] order (what the QAT graph's inputs after the
    /// data take).
    pub fn values(&self) -> Vec<Tensor> {
        self.params.iter().map(|p| p.value.clone()).collect()
    }

    /// Sets the weight scales of every quantized layer from its current weight (per-channel
    /// min-max, what a weight observer gives at each step).
    pub fn observe_weights(&mut self) -> Result<(), TrainError> {
        for l in &self.layers {
            if let Some((sp, axis, scheme)) = l.quant {
                let s = weight_scales(&self.params[l.weight].value, axis, scheme)?;
                self.params[sp].value = Tensor::from_f32(vec![s.len()], s);
            }
        }
        Ok(())
    }

    /// Sets an activation site's scale and zero point from an observed range.
    pub fn set_range(&mut self, site: usize, (min, max): (f32, f32)) -> Result<(), TrainError> {
        let a = &self.activations[site];
        let (s, z) = act_params(min, max, a.scheme)?;
        let (sp, zp) = (a.scale, a.zero_point);
        self.params[sp].value = Tensor::scalar_f32(s);
        self.params[zp].value = Tensor::scalar_f32(z as f32);
        Ok(())
    }
}
