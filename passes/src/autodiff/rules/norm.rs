//! Normalizations and reductions.
//!
//! * batch norm (inference form) `y = (x - mean) k + bias`, `k = scale / sqrt(var + eps)` per
//!   channel (axis 1): `dx = dy k`, `dbias = sum dy`, `dscale = sum dy (x - mean) / sqrt(var + eps)`,
//!   `dmean = -k sum dy`, `dvar = -scale / 2 (var + eps)^(-3/2) sum dy (x - mean)`, the sums over
//!   every axis but the channel's.
//! * softmax: `dx = y (dy - sum(dy y))`; log-softmax: `dx = dy - exp(y) sum(dy)`, the sums along
//!   the axis.
//! * layer norm over axes `axis..`: with `xhat = (x - mean) r`, `r = 1 / sqrt(var + eps)` and
//!   `g = dy scale`: `dx = r (g - mean(g) - xhat mean(g xhat))`, `dscale = dy xhat`,
//!   `dbias = dy`, the last two summed to their operands' shapes.
//! * reduce sum: `dy` broadcast back over the reduced axes; reduce mean: the same divided by the
//!   number of reduced elements; reduce max: `dy` to every element equal to the maximum (each of
//!   tied maxima gets the whole gradient).

use super::{Builder, Fwd};
use crate::autodiff::AutodiffError;
use qforge_ir::infer::norm_axis;
use qforge_ir::{BinaryOp, Op, UnaryOp, Value};

pub(crate) fn vjp(b: &mut Builder, f: &Fwd) -> Result<Vec<Option<Value>>, AutodiffError> {
    let (x, dy) = (f.x(b, 0)?, f.dy(b)?);
    match &f.op {
        Op::BatchNorm { epsilon } => batch_norm(b, f, *epsilon),
        Op::Softmax { axis } => {
            let a = axis_of(b, x, *axis)?;
            let y = f.y();
            let p = b.mul("dy_y", dy, y)?;
            let s = b.reduce_sum("sum", p, &[a], true)?;
            let d = b.sub("centered", dy, s)?;
            Ok(vec![Some(b.mul("", y, d)?)])
        }
        Op::LogSoftmax { axis } => {
            let a = axis_of(b, x, *axis)?;
            let p = b.unary("softmax", UnaryOp::Exp, f.y())?;
            let s = b.reduce_sum("sum", dy, &[a], true)?;
            let t = b.mul("softmax_sum", p, s)?;
            Ok(vec![Some(b.sub("", dy, t)?)])
        }
        Op::LayerNorm { axis, epsilon } => layer_norm(b, f, *axis, *epsilon),
        Op::ReduceSum { axes, keepdims } | Op::ReduceMean { axes, keepdims } | Op::ReduceMax { axes, keepdims } => {
            let r = b.rank(x);
            let mut ax: Vec<usize> = if axes.is_empty() {
                (0..r).collect()
            } else {
                axes.iter().map(|&a| axis_of(b, x, a)).collect::<Result<_, _>>()?
            };
            ax.sort_unstable();
            ax.dedup();
            let kept = |b: &mut Builder, what: &str, v: Value| -> Result<Value, AutodiffError> {
                if *keepdims || ax.is_empty() {
                    Ok(v)
                } else {
                    b.op(what, Op::Unsqueeze { axes: ax.iter().map(|&a| a as i64).collect() }, &[v])
                }
            };
            let dyk = kept(b, "dy.keep", dy)?;
            let g = match &f.op {
                Op::ReduceSum { .. } => b.expand_like("", dyk, x)?,
                Op::ReduceMean { .. } => {
                    let s = b.div_by_count("mean", dyk, x, &ax)?;
                    b.expand_like("", s, x)?
                }
                _ => {
                    let yk = kept(b, "y.keep", f.y())?;
                    let at_max = b.binary("at_max", BinaryOp::Equal, x, yk)?;
                    b.mask("", at_max, dyk)?
                }
            };
            Ok(vec![Some(g)])
        }
        _ => Ok(vec![]),
    }
}

fn axis_of(b: &Builder, x: Value, axis: i64) -> Result<usize, AutodiffError> {
    norm_axis(axis, b.rank(x)).map_err(|e| b.unsupported(format!("axis {axis}: {}", String::from(e))))
}

fn batch_norm(b: &mut Builder, f: &Fwd, eps: f32) -> Result<Vec<Option<Value>>, AutodiffError> {
    let (x, scale, mean, var, dy) = (f.x(b, 0)?, f.x(b, 1)?, f.x(b, 3)?, f.x(b, 4)?, f.dy(b)?);
    let r = b.rank(x);
    // per-channel [C] as [1, C, 1, ...] against x
    let spread: Vec<i64> = std::iter::once(0).chain(2..r as i64).collect();
    let chan = |b: &mut Builder, what: &str, v: Value| b.op(what, Op::Unsqueeze { axes: spread.clone() }, &[v]);
    let others: Vec<usize> = std::iter::once(0).chain(2..r).collect();
    let e = b.scalar_like("eps", var, eps as f64);
    let ve = b.add("var_eps", var, e)?;
    let sd = b.unary("std", UnaryOp::Sqrt, ve)?;
    let inv = b.unary("inv_std", UnaryOp::Reciprocal, sd)?;
    let k = b.mul("k", scale, inv)?;
    let mut out = vec![None; 5];
    if f.wants(0) {
        let kb = chan(b, "k.b", k)?;
        out[0] = Some(b.mul("x", dy, kb)?);
    }
    let need_sum = f.wants(2) || f.wants(3);
    let sum_dy = if need_sum { Some(b.reduce_sum("sum_dy", dy, &others, false)?) } else { None };
    if f.wants(2) {
        out[2] = sum_dy;
    }
    if let (true, Some(s)) = (f.wants(3), sum_dy) {
        let t = b.mul("mean.k", s, k)?;
        out[3] = Some(b.unary("mean", UnaryOp::Neg, t)?);
    }
    if f.wants(1) || f.wants(4) {
        let mb = chan(b, "mean.b", mean)?;
        let xc = b.sub("xc", x, mb)?;
        let p = b.mul("dy_xc", dy, xc)?;
        let s = b.reduce_sum("sum_dy_xc", p, &others, false)?;
        if f.wants(1) {
            out[1] = Some(b.mul("scale", s, inv)?);
        }
        if f.wants(4) {
            // -scale / 2 * inv^3 * s
            let inv2 = b.mul("inv2", inv, inv)?;
            let inv3 = b.mul("inv3", inv2, inv)?;
            let t = b.mul("var.scale", scale, inv3)?;
            let t = b.scale("var.half", t, -0.5)?;
            out[4] = Some(b.mul("var", t, s)?);
        }
    }
    Ok(out)
}

fn layer_norm(b: &mut Builder, f: &Fwd, axis: i64, eps: f32) -> Result<Vec<Option<Value>>, AutodiffError> {
    let (x, scale, dy) = (f.x(b, 0)?, f.x(b, 1)?, f.dy(b)?);
    let r = b.rank(x);
    let a = axis_of(b, x, axis)?;
    let axes: Vec<i64> = (a as i64..r as i64).collect();
    let mean =
        |b: &mut Builder, what: &str, v: Value| b.op(what, Op::ReduceMean { axes: axes.clone(), keepdims: true }, &[v]);
    let mu = mean(b, "mean", x)?;
    let xc = b.sub("xc", x, mu)?;
    let sq = b.mul("sq", xc, xc)?;
    let var = mean(b, "var", sq)?;
    let e = b.scalar_like("eps", x, eps as f64);
    let ve = b.add("var_eps", var, e)?;
    let sd = b.unary("std", UnaryOp::Sqrt, ve)?;
    let rstd = b.unary("rstd", UnaryOp::Reciprocal, sd)?;
    let xhat = b.mul("xhat", xc, rstd)?;
    let mut out = vec![None; 3];
    if f.wants(0) {
        let g = b.mul("g", dy, scale)?;
        let mg = mean(b, "mean_g", g)?;
        let gx = b.mul("g_xhat", g, xhat)?;
        let mgx = mean(b, "mean_g_xhat", gx)?;
        let t = b.mul("xhat_mean", xhat, mgx)?;
        let d = b.sub("g_centered", g, mg)?;
        let d = b.sub("g_proj", d, t)?;
        out[0] = Some(b.mul("x", d, rstd)?);
    }
    if f.wants(1) {
        let p = b.mul("scale.mul", dy, xhat)?;
        out[1] = Some(b.unbroadcast("scale", p, scale)?);
    }
    if f.wants(2) {
        let bias = f.x(b, 2)?;
        out[2] = Some(b.unbroadcast("bias", dy, bias)?);
    }
    Ok(out)
}
