//! Element-wise ops: `dx = dy * f'(x)`, written with the forward result `y` where that is
//! cheaper (`exp`, `sigmoid`, `tanh`, `sqrt`, `reciprocal`), and binary ops with their broadcast
//! operands' gradients summed back to their shapes.
//!
//! * relu: `dy` where `x > 0`; leaky relu: `dy` where `x >= 0`, `alpha * dy` elsewhere (the
//!   forward's own branch); clip: `dy` where `min <= x <= max` (see the module docs of
//!   `autodiff`), one `clip_grad` node; hard sigmoid: `alpha * dy` where `0 < alpha * x + beta < 1`.
//! * sigmoid `y (1 - y)`, tanh `1 - y^2`, exp `y`, log `1 / x`, sqrt `1 / (2 y)`, reciprocal
//!   `-y^2`, neg `-1`, abs `sign(x)`, erf `2 / sqrt(pi) exp(-x^2)`, sin `cos x`, cos `-sin x`.
//! * hard swish `x * relu6(x + 3) / 6`: `0` below -3, `1` above 3, `(2x + 3) / 6` between.
//! * gelu (erf form) `x Phi(x)`: `Phi(x) + x phi(x)` with `Phi(x) = (1 + erf(x / sqrt 2)) / 2`,
//!   `phi(x) = exp(-x^2 / 2) / sqrt(2 pi)`; gelu (tanh form) `x (1 + tanh u) / 2`,
//!   `u = sqrt(2 / pi) (x + 0.044715 x^3)` (Hendrycks and Gimpel 2016): `(1 + t) / 2 + x (1 - t^2)
//!   sqrt(2 / pi) (1 + 3 * 0.044715 x^2) / 2` with `t = tanh u`.
//! * round: the straight-through estimator (`dy`); floor, ceil, sign: 0.
//! * add, sub, mul, div (`da = dy / b`, `db = -dy * y / b`), pow (`da = dy * b * a^(b - 1)`,
//!   `db = dy * y * ln a`), max/min (`dy` to the operand the forward picked, `a` on ties).
//! * where: `dy` to `x` where the condition holds, to `y` elsewhere (the condition has none).
//! * cast (float to float): `dy` cast back to the input's dtype; identity: `dy`.

use super::{Builder, Fwd};
use crate::autodiff::AutodiffError;
use qforge_ir::{BinaryOp, Op, UnaryOp, Value};
use std::f64::consts::PI;

pub(crate) fn vjp(b: &mut Builder, f: &Fwd) -> Result<Vec<Option<Value>>, AutodiffError> {
    let dy = f.dy(b)?;
    match &f.op {
        Op::Unary(u) => Ok(vec![unary(b, f, *u, dy)?]),
        Op::LeakyRelu { alpha } => {
            let x = f.x(b, 0)?;
            let pos = b.compare("pos", BinaryOp::GreaterOrEqual, x, 0.0)?;
            let neg = b.scale("neg", dy, *alpha as f64)?;
            Ok(vec![Some(b.op("", Op::Where, &[pos, dy, neg])?)])
        }
        Op::Clip { min, max } => {
            let x = f.x(b, 0)?;
            Ok(vec![Some(b.op("", Op::ClipGrad { min: *min, max: *max }, &[x, dy])?)])
        }
        Op::HardSigmoid { alpha, beta } => {
            let x = f.x(b, 0)?;
            let v = b.scale("v", x, *alpha as f64)?;
            let beta = b.scalar_like("beta", x, *beta as f64);
            let v = b.add("v", v, beta)?;
            let lo = b.compare("gt0", BinaryOp::Greater, v, 0.0)?;
            let hi = b.compare("lt1", BinaryOp::Less, v, 1.0)?;
            let inside = b.binary("inside", BinaryOp::And, lo, hi)?;
            let g = b.scale("scaled", dy, *alpha as f64)?;
            Ok(vec![Some(b.mask("", inside, g)?)])
        }
        Op::Binary(op) => binary(b, f, *op, dy),
        Op::Where => {
            let (c, x, y) = (f.x(b, 0)?, f.x(b, 1)?, f.x(b, 2)?);
            let mut out = vec![None, None, None];
            if f.wants(1) {
                let g = b.mask("dx.masked", c, dy)?;
                out[1] = Some(b.unbroadcast("dx", g, x)?);
            }
            if f.wants(2) {
                let zero = b.scalar_like("dy.zero", dy, 0.0);
                let g = b.op("dy.masked", Op::Where, &[c, zero, dy])?;
                out[2] = Some(b.unbroadcast("dy", g, y)?);
            }
            Ok(out)
        }
        Op::Cast { .. } => {
            let x = f.x(b, 0)?;
            let to = b.dtype(x);
            if b.dtype(dy) == to {
                return Ok(vec![Some(dy)]);
            }
            Ok(vec![Some(b.op("", Op::Cast { to }, &[dy])?)])
        }
        _ => Ok(vec![Some(dy)]),
    }
}

fn unary(b: &mut Builder, f: &Fwd, u: UnaryOp, dy: Value) -> Result<Option<Value>, AutodiffError> {
    let x = f.x(b, 0)?;
    let y = f.y();
    let g = match u {
        UnaryOp::Relu => {
            let pos = b.compare("pos", BinaryOp::Greater, x, 0.0)?;
            b.mask("", pos, dy)?
        }
        UnaryOp::Sigmoid => {
            let one = b.scalar_like("one", y, 1.0);
            let c = b.sub("one_minus_y", one, y)?;
            let d = b.mul("dsig", y, c)?;
            b.mul("", dy, d)?
        }
        UnaryOp::Tanh => {
            let one = b.scalar_like("one", y, 1.0);
            let y2 = b.mul("y2", y, y)?;
            let d = b.sub("dtanh", one, y2)?;
            b.mul("", dy, d)?
        }
        UnaryOp::Exp => b.mul("", dy, y)?,
        UnaryOp::Log => b.div("", dy, x)?,
        UnaryOp::Sqrt => {
            let h = b.scale("half", dy, 0.5)?;
            b.div("", h, y)?
        }
        UnaryOp::Reciprocal => {
            let y2 = b.mul("y2", y, y)?;
            let d = b.mul("dy_y2", dy, y2)?;
            b.unary("", UnaryOp::Neg, d)?
        }
        UnaryOp::Neg => b.unary("", UnaryOp::Neg, dy)?,
        UnaryOp::Abs => {
            let s = b.unary("sign", UnaryOp::Sign, x)?;
            b.mul("", dy, s)?
        }
        UnaryOp::Erf => {
            let d = gauss(b, x, 1.0, 2.0 / PI.sqrt())?;
            b.mul("", dy, d)?
        }
        UnaryOp::Sin => {
            let c = b.unary("cos", UnaryOp::Cos, x)?;
            b.mul("", dy, c)?
        }
        UnaryOp::Cos => {
            let s = b.unary("sin", UnaryOp::Sin, x)?;
            let d = b.mul("dy_sin", dy, s)?;
            b.unary("", UnaryOp::Neg, d)?
        }
        UnaryOp::HardSwish => {
            // (2x + 3) / 6 = x / 3 + 1/2, 1 above 3, 0 below -3
            let mid = b.scale("mid", x, 1.0 / 3.0)?;
            let half = b.scalar_like("half", x, 0.5);
            let mid = b.add("mid", mid, half)?;
            let one = b.scalar_like("one", x, 1.0);
            let zero = b.scalar_like("zero", x, 0.0);
            let above = b.compare("above", BinaryOp::Greater, x, 3.0)?;
            let below = b.compare("below", BinaryOp::Less, x, -3.0)?;
            let d = b.op("d_upper", Op::Where, &[above, one, mid])?;
            let d = b.op("d", Op::Where, &[below, zero, d])?;
            b.mul("", dy, d)?
        }
        UnaryOp::Gelu => {
            // Phi(x) + x phi(x)
            let r = b.scale("x_over_sqrt2", x, std::f64::consts::FRAC_1_SQRT_2)?;
            let e = b.unary("erf", UnaryOp::Erf, r)?;
            let one = b.scalar_like("one", x, 1.0);
            let cdf = b.add("cdf2", e, one)?;
            let cdf = b.scale("cdf", cdf, 0.5)?;
            let pdf = gauss(b, x, 0.5, 1.0 / (2.0 * PI).sqrt())?;
            let xp = b.mul("x_pdf", x, pdf)?;
            let d = b.add("d", cdf, xp)?;
            b.mul("", dy, d)?
        }
        UnaryOp::GeluTanh => {
            let k = (2.0 / PI).sqrt();
            let c = 0.044715;
            let x2 = b.mul("x2", x, x)?;
            let x3 = b.mul("x3", x2, x)?;
            let cx3 = b.scale("cx3", x3, c)?;
            let inner = b.add("inner", x, cx3)?;
            let u = b.scale("u", inner, k)?;
            let t = b.unary("t", UnaryOp::Tanh, u)?;
            let one = b.scalar_like("one", x, 1.0);
            let a = b.add("one_plus_t", one, t)?;
            let a = b.scale("left", a, 0.5)?;
            let t2 = b.mul("t2", t, t)?;
            let sech2 = b.sub("sech2", one, t2)?;
            let du = b.scale("du", x2, 3.0 * c)?;
            let du = b.add("du", du, one)?;
            let du = b.scale("du", du, 0.5 * k)?;
            let r = b.mul("x_sech2", x, sech2)?;
            let r = b.mul("right", r, du)?;
            let d = b.add("d", a, r)?;
            b.mul("", dy, d)?
        }
        UnaryOp::Round => dy,
        UnaryOp::Floor | UnaryOp::Ceil | UnaryOp::Sign => b.zeros_like("", x)?,
        other => {
            return Err(AutodiffError::NoRule { node: b.node_name().to_string(), op: Op::Unary(other).name() });
        }
    };
    Ok(Some(g))
}

/// `k * exp(-a * x^2)`.
fn gauss(b: &mut Builder, x: Value, a: f64, k: f64) -> Result<Value, AutodiffError> {
    let x2 = b.mul("x2", x, x)?;
    let e = b.scale("neg_x2", x2, -a)?;
    let e = b.unary("exp", UnaryOp::Exp, e)?;
    b.scale("gauss", e, k)
}

fn binary(b: &mut Builder, f: &Fwd, op: BinaryOp, dy: Value) -> Result<Vec<Option<Value>>, AutodiffError> {
    let (l, r) = (f.x(b, 0)?, f.x(b, 1)?);
    let (wl, wr) = (f.wants(0), f.wants(1));
    let mut da = None;
    let mut db = None;
    match op {
        BinaryOp::Add => {
            if wl {
                da = Some(b.unbroadcast("da", dy, l)?);
            }
            if wr {
                db = Some(b.unbroadcast("db", dy, r)?);
            }
        }
        BinaryOp::Sub => {
            if wl {
                da = Some(b.unbroadcast("da", dy, l)?);
            }
            if wr {
                let n = b.unary("db.neg", UnaryOp::Neg, dy)?;
                db = Some(b.unbroadcast("db", n, r)?);
            }
        }
        BinaryOp::Mul => {
            if wl {
                let g = b.mul("da.mul", dy, r)?;
                da = Some(b.unbroadcast("da", g, l)?);
            }
            if wr {
                let g = b.mul("db.mul", dy, l)?;
                db = Some(b.unbroadcast("db", g, r)?);
            }
        }
        BinaryOp::Div => {
            if wl {
                let g = b.div("da.div", dy, r)?;
                da = Some(b.unbroadcast("da", g, l)?);
            }
            if wr {
                let g = b.mul("db.dy_y", dy, f.y())?;
                let g = b.div("db.div", g, r)?;
                let g = b.unary("db.neg", UnaryOp::Neg, g)?;
                db = Some(b.unbroadcast("db", g, r)?);
            }
        }
        BinaryOp::Pow => {
            if wl {
                let one = b.scalar_like("da.one", r, 1.0);
                let e = b.sub("da.exp_minus_1", r, one)?;
                let p = b.binary("da.pow", BinaryOp::Pow, l, e)?;
                let p = b.mul("da.d", p, r)?;
                let g = b.mul("da.mul", dy, p)?;
                da = Some(b.unbroadcast("da", g, l)?);
            }
            if wr {
                let ln = b.unary("db.ln", UnaryOp::Log, l)?;
                let p = b.mul("db.y_ln", f.y(), ln)?;
                let g = b.mul("db.mul", dy, p)?;
                db = Some(b.unbroadcast("db", g, r)?);
            }
        }
        BinaryOp::Max | BinaryOp::Min => {
            let cmp = if op == BinaryOp::Max { BinaryOp::GreaterOrEqual } else { BinaryOp::LessOrEqual };
            let pick_a = b.binary("pick_a", cmp, l, r)?;
            if wl {
                let g = b.mask("da.masked", pick_a, dy)?;
                da = Some(b.unbroadcast("da", g, l)?);
            }
            if wr {
                let zero = b.scalar_like("db.zero", dy, 0.0);
                let g = b.op("db.masked", Op::Where, &[pick_a, zero, dy])?;
                db = Some(b.unbroadcast("db", g, r)?);
            }
        }
        other => {
            return Err(AutodiffError::NoRule { node: b.node_name().to_string(), op: Op::Binary(other).name() });
        }
    }
    Ok(vec![da, db])
}
