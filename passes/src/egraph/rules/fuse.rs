//! Fusion: activations into the clamp of an integer kernel's requantization, and a bias add into
//! a float gemm.
//!
//! (Conv + bias + relu in the integer domain is [`super::qdq::LowerToInteger`] with the
//! activation absorbed, or this module's [`ActIntoClamp`] when the kernel already exists; a
//! residual add followed by relu lowers to `qadd` when the relu is implied by the output's zero
//! point ([`super::qdq::QDropRelu`]). The IR has no fused float conv + relu form, so in float
//! graphs conv and relu stay two ops.)

use super::{add_op, dq_of, float_const, is_absent, ops, per_tensor_q, ty, Build, Rule};
use crate::egraph::analysis::EG;
use crate::egraph::lang::QNode;
use egg::Id;
use qforge_ir::{numerics, BinaryOp, Epilogue, Op, UnaryOp};

/// `relu(dq(k)) = dq(k')` and `clip(lo, hi)(dq(k)) = dq(k')` for an integer kernel `k` (qconv,
/// qgemm, qmatmul) that requantizes to per-tensor parameters `(s, z)`, where `k'` also clamps its
/// stored result to `[z, qmax]` (relu: `relu(dq(y)) = dq(max(y, z))`) or `[q(lo), q(hi)]` (clip,
/// only when `lo` and `hi` are exactly representable, so that no value is rounded).
pub struct ActIntoClamp;
impl Rule for ActIntoClamp {
    fn name(&self) -> &'static str {
        "act-into-clamp"
    }
    fn rewrite(&self, eg: &EG, _: Id, node: &QNode) -> Option<Build> {
        let QNode::Op(d, ch) = node else { return None };
        let y = dq_of(eg, ch[0])?;
        let yt = ty(eg, y)?;
        let (s, z) = per_tensor_q(yt)?;
        let (qmin, qmax) = yt.dtype.int_range()?;
        let (lo, hi) = match d.op() {
            Op::Unary(UnaryOp::Relu) => (z as i64, qmax),
            Op::Clip { min, max } => {
                let lo = numerics::quantize(*min, s, z, yt.dtype);
                let hi = if max.is_infinite() { qmax } else { numerics::quantize(*max, s, z, yt.dtype) };
                let exact = |v: f32, q: i64| v.is_infinite() || numerics::dequantize(q, s, z) == v;
                if !(exact(*min, lo) || lo <= qmin) || !(exact(*max, hi) || hi >= qmax) {
                    return None;
                }
                (lo.max(qmin), hi.min(qmax))
            }
            _ => return None,
        };
        let (kd, kch) = ops(eg, y).find_map(|(op, kd, kch)| {
            let ep = match op {
                Op::QConv { epilogue, .. } | Op::QGemm { epilogue, .. } | Op::QMatMul { epilogue } => epilogue,
                _ => return None,
            };
            ep.contains(&Epilogue::Requant).then_some((kd, kch))
        })?;
        let mut op = kd.op().clone();
        let ep = match &mut op {
            Op::QConv { epilogue, .. } | Op::QGemm { epilogue, .. } | Op::QMatMul { epilogue } => epilogue,
            _ => return None,
        };
        let (mut lo, mut hi) = (lo, hi);
        if let Some(Epilogue::Clamp { lo: l, hi: h }) = ep.last().cloned() {
            ep.pop();
            lo = lo.max(l);
            hi = hi.min(h);
        }
        if lo <= qmin && hi >= qmax {
            return None;
        }
        ep.push(Epilogue::Clamp { lo, hi });
        let decl = kd.decl().cloned();
        let kch = kch.to_vec();
        Some(Box::new(move |eg| {
            let k = add_op(eg, op, decl, kch);
            Some(add_op(eg, Op::Dequantize, None, vec![k]))
        }))
    }
}

/// `matmul(a, b) + c = gemm(a, b, c)` (alpha = beta = 1) for 2-D `a`, `b` and a constant `c` of
/// shape `[n]` or `[1, n]` (either operand order of the add).
pub struct MatMulAddToGemm;
impl Rule for MatMulAddToGemm {
    fn name(&self) -> &'static str {
        "matmul-add-to-gemm"
    }
    fn rewrite(&self, eg: &EG, _: Id, node: &QNode) -> Option<Build> {
        let QNode::Op(d, ch) = node else { return None };
        let Op::Binary(BinaryOp::Add) = d.op() else { return None };
        for (m, c) in [(ch[0], ch[1]), (ch[1], ch[0])] {
            let Some((_, cshape)) = float_const(eg, c) else { continue };
            let Some((a, b)) = ops(eg, m).find_map(|(op, _, mch)| match op {
                Op::MatMul => Some((mch[0], mch[1])),
                _ => None,
            }) else {
                continue;
            };
            let (at, bt) = (ty(eg, a)?, ty(eg, b)?);
            if at.rank() != 2 || bt.rank() != 2 || at.dtype != qforge_ir::DType::F32 {
                continue;
            }
            let n = bt.shape.dims()[1].fixed()?;
            if !(cshape == [n] || cshape == [1, n]) {
                continue;
            }
            return Some(Box::new(move |eg| {
                let op = Op::Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: false };
                Some(add_op(eg, op, None, vec![a, b, c]))
            }));
        }
        None
    }
}

/// `gemm(a, b) + c = gemm(a, b, c)` for a gemm without bias, beta = 1, and a constant `c` that
/// broadcasts over its rows (`[n]` or `[1, n]`), in either operand order.
pub struct GemmAddBias;
impl Rule for GemmAddBias {
    fn name(&self) -> &'static str {
        "gemm-add-bias"
    }
    fn rewrite(&self, eg: &EG, _: Id, node: &QNode) -> Option<Build> {
        let QNode::Op(d, ch) = node else { return None };
        let Op::Binary(BinaryOp::Add) = d.op() else { return None };
        for (g, c) in [(ch[0], ch[1]), (ch[1], ch[0])] {
            let Some((_, cshape)) = float_const(eg, c) else { continue };
            let n = ty(eg, g)?.shape.dims().get(1)?.fixed();
            let Some((op, gch)) = ops(eg, g).find_map(|(op, _, gch)| match op {
                Op::Gemm { beta, .. } if *beta == 1.0 && (gch.len() == 2 || is_absent(eg, gch[2])) => {
                    Some((op.clone(), gch))
                }
                _ => None,
            }) else {
                continue;
            };
            let Some(n) = n else { continue };
            if !(cshape == [n] || cshape == [1, n]) {
                continue;
            }
            let (a, b) = (gch[0], gch[1]);
            return Some(Box::new(move |eg| Some(add_op(eg, op, None, vec![a, b, c]))));
        }
        None
    }
}
