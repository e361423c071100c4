//! Matrix products.
//!
//! * matmul `Y = A B` (numpy: batched, broadcast leading dims, 1-D operands lifted to a row or a
//!   column and the lifted axis dropped from `Y`): `dA = dY B^T`, `dB = A^T dY` on the lifted
//!   operands, each summed over the batch dims its operand was broadcast along, then the lifted
//!   axis dropped again.
//! * gemm `Y = alpha op(A) op(B) + beta C`: `d op(A) = alpha dY op(B)^T`, `d op(B) = alpha op(A)^T
//!   dY` (each written as one gemm with the transposes folded into its flags, so `dA` of a
//!   `trans_a` gemm is `alpha op(B) dY^T`), and `dC = beta dY` summed over `C`'s broadcast axes.

use super::{Builder, Fwd};
use crate::autodiff::AutodiffError;
use qforge_ir::{Op, Value};

pub(crate) fn vjp(b: &mut Builder, f: &Fwd) -> Result<Vec<Option<Value>>, AutodiffError> {
    match f.op {
        Op::MatMul => matmul(b, f),
        Op::Gemm { alpha, beta, trans_a, trans_b } => gemm(b, f, alpha, beta, trans_a, trans_b),
        _ => Ok(vec![]),
    }
}

fn matmul(b: &mut Builder, f: &Fwd) -> Result<Vec<Option<Value>>, AutodiffError> {
    let (a, bm, dy) = (f.x(b, 0)?, f.x(b, 1)?, f.dy(b)?);
    let (ra, rb) = (b.rank(a), b.rank(bm));
    // lift 1-D operands: a to a row [1, k], b to a column [k, 1]; dY gets the dropped axes back
    let a2 = if ra == 1 { b.op("da.row", Op::Unsqueeze { axes: vec![0] }, &[a])? } else { a };
    let b2 = if rb == 1 { b.op("db.col", Op::Unsqueeze { axes: vec![1] }, &[bm])? } else { bm };
    let mut dy2 = dy;
    let ry = b.rank(dy);
    if ra == 1 && rb == 1 {
        dy2 = b.op("dy.lift", Op::Unsqueeze { axes: vec![0, 1] }, &[dy])?;
    } else if ra == 1 {
        // Y is [..., n]: the row axis goes before the last
        dy2 = b.op("dy.lift", Op::Unsqueeze { axes: vec![ry as i64 - 1] }, &[dy])?;
    } else if rb == 1 {
        dy2 = b.op("dy.lift", Op::Unsqueeze { axes: vec![ry as i64] }, &[dy])?;
    }
    let mut out = vec![None, None];
    if f.wants(0) {
        let bt = b.transpose_last2("da.bt", b2)?;
        let g = b.op("da.matmul", Op::MatMul, &[dy2, bt])?;
        let mut g = b.unbroadcast("da.sum", g, a2)?;
        if ra == 1 {
            g = b.op("da", Op::Squeeze { axes: vec![0] }, &[g])?;
        }
        out[0] = Some(g);
    }
    if f.wants(1) {
        let at = b.transpose_last2("db.at", a2)?;
        let g = b.op("db.matmul", Op::MatMul, &[at, dy2])?;
        let mut g = b.unbroadcast("db.sum", g, b2)?;
        if rb == 1 {
            g = b.op("db", Op::Squeeze { axes: vec![1] }, &[g])?;
        }
        out[1] = Some(g);
    }
    Ok(out)
}

fn gemm(
    b: &mut Builder,
    f: &Fwd,
    alpha: f32,
    beta: f32,
    trans_a: bool,
    trans_b: bool,
) -> Result<Vec<Option<Value>>, AutodiffError> {
    let (a, bm, dy) = (f.x(b, 0)?, f.x(b, 1)?, f.dy(b)?);
    let gemm = |alpha: f32, ta: bool, tb: bool| Op::Gemm { alpha, beta: 0.0, trans_a: ta, trans_b: tb };
    let mut out = vec![None, None, None];
    if f.wants(0) {
        // op(A) = A: dA = alpha dY op(B)^T; op(A) = A^T: dA = alpha op(B) dY^T
        let g = if trans_a {
            b.op("da", gemm(alpha, trans_b, true), &[bm, dy])?
        } else {
            b.op("da", gemm(alpha, false, !trans_b), &[dy, bm])?
        };
        out[0] = Some(g);
    }
    if f.wants(1) {
        // op(B) = B: dB = alpha op(A)^T dY; op(B) = B^T: dB = alpha dY^T op(A)
        let g = if trans_b {
            b.op("db", gemm(alpha, true, trans_a), &[dy, a])?
        } else {
            b.op("db", gemm(alpha, !trans_a, false), &[a, dy])?
        };
        out[1] = Some(g);
    }
    if f.wants(2) {
        let c = f.x(b, 2)?;
        let g = if beta == 1.0 { dy } else { b.scale("dc.scaled", dy, beta as f64)? };
        out[2] = Some(b.unbroadcast("dc", g, c)?);
    }
    Ok(out)
}
