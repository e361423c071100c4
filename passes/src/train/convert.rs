//! A trained QAT model back to a plain float graph with Quantize/Dequantize ops: the graph
//! [`crate::quantize::QuantizeStatic`] writes, with the trained weights, biases, scales and zero
//! points in place of calibrated ones (parameters in the types, as the importer gives a QDQ
//! model), which the optimizer lowers to integer kernels and the QDQ exporter writes as ONNX.
//!
//! Each fake quantization of [`super::fake_quant`] becomes the Q/DQ pair computing the same
//! values: a weight's `clip(round(w / s), qmin, qmax) * s` is a constant of codes
//! ([`crate::quantize::scheme::quantize_tensor`], the same f32 division and rounding) and a
//! `dequantize` with the per-channel scales; a bias is an i32 constant at `s_x * s_w[c]`; an
//! activation is `quantize -> dequantize` with its scale and zero point. So the converted graph,
//! run as it is (before the optimizer), gives the QAT graph's outputs bit for bit; the optimizer's
//! integer kernels then requantize with `s_x s_w / s_y` in one rounding, which differs from
//! rounding the f32 product in a few elements.
//!
//! As static quantization does, a ReLU (or a clip from 0) calibrated after a quantized op is
//! removed when the quantize after it clamps the same (asymmetric activations).
//!
//! Invariants: pure; the result passes the verifier.

use super::fake_quant::QatModel;
use super::TrainError;
use crate::quantize::scheme;
use crate::quantize::static_quant::{fold_activation, insert_qdq, quantize_bias};
use qforge_ir::{Graph, NodeId, Op, QuantParams, Tensor, TensorType, Value};
use std::collections::HashMap;

fn scalar(t: &Tensor) -> Result<f32, TrainError> {
    t.as_f32().and_then(|v| v.first().copied()).ok_or_else(|| TrainError::Data("a scale is not an f32 scalar".into()))
}

/// The QDQ float graph of `model` with `values` (one per [`QatModel::params`], as the trainer
/// returns them).
pub fn convert(model: &QatModel, values: &[Tensor]) -> Result<Graph, TrainError> {
    if values.len() != model.params.len() {
        return Err(TrainError::Data(format!(
            "{} parameter values for {} parameters",
            values.len(),
            model.params.len()
        )));
    }
    let mut g = model.float.clone();
    let ir = |what: &str| {
        let what = what.to_string();
        move |e| TrainError::ir(&what, e)
    };
    // 1. activation parameters
    let mut act: HashMap<Value, TensorType> = HashMap::new();
    for a in &model.activations {
        let s = scalar(&values[a.scale])?;
        let z = scalar(&values[a.zero_point])?;
        if !(s.is_finite() && s > 0.0) {
            let name = g.node(a.value.node).name.clone();
            return Err(TrainError::Data(format!("node `{name}`: the trained activation scale {s} is not positive")));
        }
        let ty = TensorType::quantized(
            a.scheme.qtype.storage(),
            g.value_type(a.value).shape.clone(),
            QuantParams::per_tensor(s, z as i32),
        );
        act.insert(a.value, ty);
    }
    // 2. weights and biases
    for l in &model.layers {
        let name = g.node(l.node).name.clone();
        // the constants keep the float graph's names, as static quantization's do
        let old = |g: &Graph, slot: usize| {
            g.node(l.node).inputs()[slot].map_or_else(|| format!("{name}.{slot}"), |v| g.node(v.node).name.clone())
        };
        let wname = old(&g, l.weight_slot);
        let w = &values[l.weight];
        let wv = match l.quant {
            Some((sp, axis, sch)) => {
                let scales = values[sp].as_f32().ok_or_else(|| TrainError::Data("weight scales are not f32".into()))?;
                if let Some(s) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
                    return Err(TrainError::Data(format!("node `{name}`: a trained weight scale is {s}")));
                }
                let params = QuantParams::PerAxis { axis, scales: scales.to_vec(), zero_points: vec![0; scales.len()] };
                let wf = w.as_f32().ok_or_else(|| TrainError::Data("a weight is not f32".into()))?;
                let qt = scheme::quantize_tensor(wf, w.shape(), &params, sch.qtype)
                    .map_err(|e| TrainError::Data(format!("node `{name}` weight: {e}")))?;
                let ty = TensorType::quantized(qt.dtype(), qt.ir_shape(), params);
                let c = g.add_const_typed(format!("{wname}_quantized"), qt, ty);
                g.add_node(Op::Dequantize, vec![Some(c)], None, format!("{wname}_DequantizeLinear"))
                    .map_err(ir("the weight's dequantize"))?
            }
            None => g.add_const(wname, w.clone()),
        };
        g.set_input(l.node, l.weight_slot, Some(wv));
        if let Some(bp) = l.bias {
            let b = g.add_const(old(&g, 2), values[bp].clone());
            let mut bv = b;
            if let (Some(site), Some((sp, axis, _))) = (l.bias_site, l.quant) {
                let sx = scalar(&values[model.activations[site].scale])?;
                let scales = values[sp].to_f32_vec();
                let wq = QuantParams::PerAxis { axis, scales: scales.clone(), zero_points: vec![0; scales.len()] };
                bv = quantize_bias(&mut g, b, sx, &wq).ok_or_else(|| {
                    TrainError::Data(format!("node `{name}`: the bias scale underflows (input scale {sx})"))
                })?;
            }
            g.set_input(l.node, 2, Some(bv));
        }
    }
    // 3. activations
    let mut qnodes: HashMap<Value, NodeId> = HashMap::new();
    for a in &model.activations {
        let q = insert_qdq(&mut g, a.value, act[&a.value].clone()).map_err(|e| TrainError::Pass(e.to_string()))?;
        qnodes.insert(a.value, q);
    }
    // 4. ReLU/clip removal where the quantize clamps exactly the same (as static quantization)
    for (actn, op) in &model.fused {
        let r = Value::new(*actn, 0);
        let (Some(&q), Some(ty)) = (qnodes.get(&r), act.get(&r)) else { continue };
        fold_activation(&mut g, *actn, *op, q, ty);
    }
    g.remove_dead();
    qforge_ir::verify::verify(&g).map_err(ir("the converted graph"))?;
    Ok(g)
}

/// The trained float graph without quantization: the float graph with the trained weights and
/// biases (what the fine-tuned model computes with fake quantization taken away).
pub fn trained_float(model: &QatModel, values: &[Tensor]) -> Result<Graph, TrainError> {
    let mut g = model.float.clone();
    for l in &model.layers {
        let name = |g: &Graph, slot: usize| g.node(l.node).inputs()[slot].map(|v| g.node(v.node).name.clone());
        let wname = name(&g, l.weight_slot).unwrap_or_default();
        let w = g.add_const(wname, values[l.weight].clone());
        g.set_input(l.node, l.weight_slot, Some(w));
        if let Some(bp) = l.bias {
            let b = g.add_const(name(&g, 2).unwrap_or_default(), values[bp].clone());
            g.set_input(l.node, 2, Some(b));
        }
    }
    g.remove_dead();
    Ok(g)
}
