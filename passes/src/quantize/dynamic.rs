//! Dynamic quantization, as ONNX Runtime's `quantize_dynamic` writes it: weights quantized
//! offline (`i8` symmetric, per tensor by default as in ORT, per channel on request), activations
//! quantized at run time, per batch, by `DynamicQuantizeLinear`:
//!
//! ```text
//! x -> dynamic_quantize -> (x_q: u8, s_x, z_x)
//! acc = matmul_integer(x_q, w_q, z_x, z_w)          (conv_integer for conv)
//! y   = cast<f32>(acc) * (s_x * s_w)  [+ bias]       (s_w: scalar, or per output channel)
//! ```
//!
//! For matmul and gemm with a constant weight (gemm's `trans_b` weight is transposed offline, its
//! `alpha` folded into `s_w` and `beta` into the bias; `trans_a` stays float), and for conv when
//! [`QuantizeDynamic::conv`] is set (ORT's default `op_types_to_quantize` includes Conv). No
//! calibration. Idempotent: the integer ops it writes are left alone on a second run.

use super::plan::{plan, Decision};
use super::policy::{QConfig, WeightGranularity};
use super::scheme::{self, Scheme};
use crate::pass::{Pass, PassContext, PassError, PassReport};
use qforge_ir::{BinaryOp, DType, Graph, NodeId, Op, QuantParams, Tensor, Value};

/// The dynamic quantization pass.
#[derive(Clone, Debug, Default)]
pub struct QuantizeDynamic {
    pub config: QConfig,
    /// Quantize convolutions too (ConvInteger).
    pub conv: bool,
}

fn konst(g: &Graph, v: Value) -> Option<&Tensor> {
    match &g.node(v.node).op {
        Op::Const(t) => Some(t),
        _ => None,
    }
}

/// Transposes a row-major 2-D f32 tensor.
fn transpose2(t: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; t.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = t[r * cols + c];
        }
    }
    out
}

impl QuantizeDynamic {
    fn rewrite(&self, g: &mut Graph, id: NodeId, report: &mut PassReport) -> Result<bool, String> {
        let node = g.node(id).clone();
        let s = self.config.settings(&node);
        if !s.quantized() {
            return Ok(false);
        }
        let Some(x) = node.inputs()[0] else { return Ok(false) };
        let Some(wv) = node.inputs().get(1).copied().flatten() else { return Ok(false) };
        let Some(w) = konst(g, wv) else { return Ok(false) };
        let Some(wf) = w.as_f32() else { return Ok(false) };
        if g.value_type(x).dtype != DType::F32 || konst(g, x).is_some() {
            return Ok(false);
        }
        let wshape = w.shape().to_vec();
        // dynamic quantization runs integer kernels, which per-group weights have not: per channel
        let per_channel = matches!(s.granularity, WeightGranularity::PerChannel | WeightGranularity::PerGroup(_));
        // (weight values, weight shape, channel axis, scale multiplier, bias multiplier, conv?)
        let (wvals, wshape, axis, alpha, beta, is_conv) = match &node.op {
            Op::MatMul if wshape.len() >= 2 => (wf.to_vec(), wshape.clone(), wshape.len() - 1, 1.0, 1.0, false),
            Op::Gemm { alpha, beta, trans_a: false, trans_b } if wshape.len() == 2 => {
                if *trans_b {
                    let t = transpose2(wf, wshape[0], wshape[1]);
                    (t, vec![wshape[1], wshape[0]], 1, *alpha, *beta, false)
                } else {
                    (wf.to_vec(), wshape.clone(), 1, *alpha, *beta, false)
                }
            }
            Op::Conv(_) if self.conv => (wf.to_vec(), wshape.clone(), 0, 1.0, 1.0, true),
            _ => return Ok(false),
        };
        // the bias, checked before anything is added: reshaped for conv, scaled by beta for gemm
        let bias = match node.inputs().get(2).copied().flatten() {
            None => None,
            Some(b) => Some(match (konst(g, b).cloned(), is_conv) {
                (Some(t), true) if t.rank() == 1 => {
                    let mut shape = vec![t.len()];
                    shape.extend(std::iter::repeat_n(1, wshape.len() - 2));
                    Err(t.reshaped(shape).ok_or("bias reshape")?)
                }
                (_, true) => return Ok(false),
                (_, false) if beta == 1.0 => Ok(b),
                (Some(t), false) => {
                    let v: Vec<f32> = t.as_f32().ok_or("bias is not f32")?.iter().map(|&x| x * beta).collect();
                    Err(Tensor::from_f32(t.shape().to_vec(), v))
                }
                (None, false) => return Ok(false),
            }),
        };
        let scheme: Scheme = s.weights;
        if scheme.qtype.bits() != 8 {
            return Err(format!("dynamic quantization needs 8-bit weights, got {}", scheme.qtype));
        }
        let r =
            scheme::tensor_params(&wvals, &wshape, per_channel.then_some(axis), scheme).map_err(|e| e.to_string())?;
        for warn in &r.warnings {
            report.notes.push(format!("node `{}` weight: {warn}", node.name));
        }
        let wq = scheme::quantize_tensor(&wvals, &wshape, &r.params, scheme.qtype).map_err(|e| e.to_string())?;
        let name = node.name.clone();
        let ir = |e: qforge_ir::IrError| e.to_string();
        let wq = g.add_const(format!("{name}.weight_quantized"), wq);
        let channels = wshape[axis];
        let (scales, zps): (Vec<f32>, Vec<i32>) = match &r.params {
            QuantParams::PerTensor { scale, zero_point } => (vec![*scale], vec![*zero_point]),
            QuantParams::PerAxis { scales, zero_points, .. } => (scales.clone(), zero_points.clone()),
            QuantParams::PerGroup { .. } => return Err("dynamic quantization has no per-group weights".into()),
        };
        let zshape = if zps.len() == 1 { vec![] } else { vec![channels] };
        let wzp = g.add_const(
            format!("{name}.weight_zero_point"),
            Tensor::from_f64_iter(r.dtype, zshape, zps.iter().map(|&z| z as f64)),
        );
        // the scale vector broadcasts against the output: [N] for matmul, [M,1,1...] for conv
        let sshape = if scales.len() == 1 {
            vec![]
        } else if is_conv {
            let mut s = vec![channels];
            s.extend(std::iter::repeat_n(1, wshape.len() - 2));
            s
        } else {
            vec![channels]
        };
        let ws = g.add_const(
            format!("{name}.weight_scale"),
            Tensor::from_f32(sshape.clone(), scales.iter().map(|&s| s * alpha).collect()),
        );
        let dq = g
            .add_node(Op::DynamicQuantize, vec![Some(x)], None, format!("{name}_DynamicQuantizeLinear"))
            .map_err(ir)?;
        let (xq, sx, zx) = (dq, Value::new(dq.node, 1), Value::new(dq.node, 2));
        let acc = match &node.op {
            Op::Conv(a) => g
                .add_node(
                    Op::ConvInteger(a.clone()),
                    vec![Some(xq), Some(wq), Some(zx), Some(wzp)],
                    None,
                    format!("{name}_ConvInteger"),
                )
                .map_err(ir)?,
            _ => g
                .add_node(
                    Op::MatMulInteger,
                    vec![Some(xq), Some(wq), Some(zx), Some(wzp)],
                    None,
                    format!("{name}_MatMulInteger"),
                )
                .map_err(ir)?,
        };
        let f = g.add_node(Op::Cast { to: DType::F32 }, vec![Some(acc)], None, format!("{name}_Cast")).map_err(ir)?;
        let scale = g
            .add_node(Op::Binary(BinaryOp::Mul), vec![Some(sx), Some(ws)], None, format!("{name}_ScaleMul"))
            .map_err(ir)?;
        let mut y = g
            .add_node(Op::Binary(BinaryOp::Mul), vec![Some(f), Some(scale)], None, format!("{name}_Mul"))
            .map_err(ir)?;
        if let Some(b) = bias {
            // Ok: the bias value as it is; Err: a new constant replacing it
            let b = match b {
                Ok(v) => v,
                Err(t) => g.add_const(format!("{name}.bias_prepared"), t),
            };
            y = g
                .add_node(Op::Binary(BinaryOp::Add), vec![Some(y), Some(b)], None, format!("{name}_AddBias"))
                .map_err(ir)?;
        }
        let mut from = node.from.clone();
        if from.is_empty() {
            from.push(name.clone());
        }
        g.node_mut(y.node).from = from;
        g.replace_all_uses(Value::new(id, 0), y);
        Ok(true)
    }
}

impl Pass for QuantizeDynamic {
    fn name(&self) -> &'static str {
        "quantize-dynamic"
    }

    fn run(&self, g: &mut Graph, _cx: &PassContext) -> Result<PassReport, PassError> {
        let mut report = PassReport::new(self.name());
        let nodes = plan(g).map_err(|error| PassError::Ir { pass: self.name().into(), error })?;
        for np in nodes {
            if !matches!(np.decision, Decision::Quantize { weight: Some(_) }) {
                continue;
            }
            let done = self.rewrite(g, np.id, &mut report).map_err(|msg| PassError::Failed {
                pass: self.name().into(),
                msg: format!("node `{}`: {msg}", np.name),
            })?;
            if done {
                report.count("ops quantized", 1);
            }
        }
        if report.changed {
            report.count("dead nodes removed", g.remove_dead() as u64);
        }
        Ok(report)
    }
}
