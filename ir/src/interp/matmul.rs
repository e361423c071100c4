//! Matrix products: numpy `matmul` (batched, broadcasting leading dims, 1-D operands) and ONNX
//! `Gemm`; and ONNX `Det` (LU in f64).
//!
//! The core is the i-k-j loop `c[i][..] += a[i][k] * b[k][..]` over contiguous rows of `b` and
//! `c`, which LLVM vectorizes; each output element accumulates its K terms in plain order, from
//! zero. The integer kernels of [`super::quant`] share it.

use super::conv::Acc;
use super::{broadcast_strides, float_tensor, floats, numel, Cx, Walker, R};
use crate::Tensor;

/// `c = a @ b` for row-major `a` (M x K) and `b` (K x N), operands widened to `T` and accumulated
/// in `T`.
pub(crate) fn gemm_core<X: Copy, T: Acc + From<X>>(a: &[X], b: &[X], m: usize, k: usize, n: usize) -> Vec<T> {
    let mut c = vec![T::default(); m * n];
    if n == 0 {
        return c;
    }
    for i in 0..m {
        let row = &mut c[i * n..][..n];
        let a_row = &a[i * k..][..k];
        for (kk, &av) in a_row.iter().enumerate() {
            let av = T::from(av);
            let b_row = &b[kk * n..][..n];
            for (cv, &bv) in row.iter_mut().zip(b_row) {
                *cv += av * T::from(bv);
            }
        }
    }
    c
}

/// A row-major matrix `rows x cols` transposed.
pub(crate) fn transpose2<T: Copy>(v: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut t = Vec::with_capacity(v.len());
    for j in 0..cols {
        for i in 0..rows {
            t.push(v[i * cols + j]);
        }
    }
    t
}

/// The batched layout of a numpy matmul of `a` and `b`: per batch, the offsets of the operand
/// matrices, and M, K, N.
pub struct BatchedMatMul {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// (offset into a, offset into b) for each output matrix, in output order.
    pub pairs: Vec<(usize, usize)>,
}

impl BatchedMatMul {
    /// The layout for operands of dims `a` and `b`, or `None` when they do not multiply (the
    /// JIT's batched matrix product follows the interpreter's pairing of batches).
    pub fn of(a: &[usize], b: &[usize]) -> Option<BatchedMatMul> {
        BatchedMatMul::new(a, b).ok()
    }

    pub(crate) fn new(a: &[usize], b: &[usize]) -> R<BatchedMatMul> {
        if a.is_empty() || b.is_empty() {
            return Err("matmul operands must have rank 1 or more".into());
        }
        let a2: Vec<usize> = if a.len() == 1 { vec![1, a[0]] } else { a.to_vec() };
        let b2: Vec<usize> = if b.len() == 1 { vec![b[0], 1] } else { b.to_vec() };
        let (ra, rb) = (a2.len(), b2.len());
        let (m, k, k2, n) = (a2[ra - 2], a2[ra - 1], b2[rb - 2], b2[rb - 1]);
        if k != k2 {
            return Err(format!("inner dimensions differ: {a:?} @ {b:?}"));
        }
        let (ab, bb) = (&a2[..ra - 2], &b2[..rb - 2]);
        let r = ab.len().max(bb.len());
        let mut batch = vec![1usize; r];
        for (i, d) in batch.iter_mut().enumerate() {
            let da = if i + ab.len() >= r { ab[i + ab.len() - r] } else { 1 };
            let db = if i + bb.len() >= r { bb[i + bb.len() - r] } else { 1 };
            *d = if da == 1 { db } else { da };
            if da != db && da != 1 && db != 1 {
                return Err(format!("batch dims of {a:?} and {b:?} do not broadcast"));
            }
        }
        let mat_a = m.checked_mul(k).ok_or("matrix too large")?;
        let mat_b = k.checked_mul(n).ok_or("matrix too large")?;
        let sa: Vec<isize> = broadcast_strides(ab, &batch)?.iter().map(|&s| s * mat_a as isize).collect();
        let sb: Vec<isize> = broadcast_strides(bb, &batch)?.iter().map(|&s| s * mat_b as isize).collect();
        let count = numel(&batch).ok_or("too many batches")?;
        let mut w = Walker::new(&batch, vec![(0, sa), (0, sb)]);
        let mut pairs = Vec::with_capacity(count);
        for _ in 0..count {
            pairs.push((w.offs()[0] as usize, w.offs()[1] as usize));
            w.step();
        }
        Ok(BatchedMatMul { m, k, n, pairs })
    }

    /// Runs `core(a_matrix, b_matrix)` per batch and concatenates the results.
    pub(crate) fn run<X: Copy, T>(&self, a: &[X], b: &[X], core: impl Fn(&[X], &[X]) -> Vec<T>) -> Vec<T> {
        let (ma, mb) = (self.m * self.k, self.k * self.n);
        let mut out = Vec::with_capacity(self.pairs.len() * self.m * self.n);
        for &(oa, ob) in &self.pairs {
            out.extend(core(&a[oa..oa + ma], &b[ob..ob + mb]));
        }
        out
    }
}

/// Numpy matmul of two float tensors.
pub(crate) fn matmul(cx: &Cx) -> R<Tensor> {
    let (a, b) = (cx.x(0)?, cx.x(1)?);
    let bm = BatchedMatMul::new(a.shape(), b.shape())?;
    let (m, k, n) = (bm.m, bm.k, bm.n);
    let y: Vec<f32> = bm.run(&floats(a), &floats(b), |x, w| gemm_core(x, w, m, k, n));
    float_tensor(cx.out_dtype(0), cx.out_shape(0), y)
}

/// `alpha * op(a) @ op(b) + beta * c` with `c` broadcast to (M, N).
pub(crate) fn gemm(cx: &Cx, alpha: f32, beta: f32, trans_a: bool, trans_b: bool) -> R<Tensor> {
    let (a, b) = (cx.x(0)?, cx.x(1)?);
    let (sa, sb) = (a.shape(), b.shape());
    if sa.len() != 2 || sb.len() != 2 {
        return Err(format!("gemm needs 2-D operands, got {sa:?} and {sb:?}"));
    }
    let (m, k) = if trans_a { (sa[1], sa[0]) } else { (sa[0], sa[1]) };
    let n = if trans_b { sb[0] } else { sb[1] };
    let av = floats(a);
    let bv = floats(b);
    let av = if trans_a { std::borrow::Cow::Owned(transpose2(&av, k, m)) } else { av };
    let bv = if trans_b { std::borrow::Cow::Owned(transpose2(&bv, n, k)) } else { bv };
    let mut y: Vec<f32> = gemm_core(&av, &bv, m, k, n);
    for v in &mut y {
        *v *= alpha;
    }
    if let Some(c) = cx.opt(2) {
        let cv = floats(c);
        let out = [m, n];
        let st = broadcast_strides(c.shape(), &out)?;
        for i in 0..m {
            for j in 0..n {
                let off = i as isize * st[0] + j as isize * st[1];
                y[i * n + j] += beta * cv[off as usize];
            }
        }
    }
    float_tensor(cx.out_dtype(0), cx.out_shape(0), y)
}

/// ONNX Det: the determinant of each square matrix in the last two axes, by LU decomposition
/// with partial pivoting (as LAPACK's `getrf`, which numpy's `det` calls) in f64, rounded once
/// to the storage type. A singular matrix gives 0 (of the sign the elimination leaves).
pub(crate) fn det(cx: &Cx) -> R<Tensor> {
    let x = cx.x(0)?;
    let s = x.shape();
    let n = s[s.len() - 1];
    let v = floats(x);
    let count = numel(&s[..s.len() - 2]).ok_or("input too large")?;
    let mut out = Vec::with_capacity(count);
    let mut a = vec![0f64; n * n];
    for m in 0..count {
        for (d, &e) in a.iter_mut().zip(&v[m * n * n..(m + 1) * n * n]) {
            *d = e as f64;
        }
        let mut det = 1f64;
        for c in 0..n {
            // The row with the largest magnitude in column `c` (the first on ties) is the pivot.
            let mut p = c;
            for r in c + 1..n {
                if a[r * n + c].abs() > a[p * n + c].abs() {
                    p = r;
                }
            }
            if p != c {
                for k in 0..n {
                    a.swap(c * n + k, p * n + k);
                }
                det = -det;
            }
            let pivot = a[c * n + c];
            det *= pivot;
            if pivot == 0.0 {
                break;
            }
            for r in c + 1..n {
                let f = a[r * n + c] / pivot;
                for k in c..n {
                    a[r * n + k] -= f * a[c * n + k];
                }
            }
        }
        out.push(det as f32);
    }
    float_tensor(x.dtype(), cx.out_shape(0), out)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use crate::{DType, Op, Tensor};

    #[test]
    fn matmul_2d_batched_and_vectors() {
        let a = f32t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b = f32t(&[3, 2], &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        let y = eval1(&Op::MatMul, &[&a, &b]).unwrap();
        assert_eq!(y.as_f32().unwrap(), &[4.0, 5.0, 10.0, 11.0]);
        // batched a (2 batches) against a shared b
        let a = f32t(&[2, 1, 3], &[1.0, 2.0, 3.0, -1.0, 0.0, 1.0]);
        let y = eval1(&Op::MatMul, &[&a, &b]).unwrap();
        assert_eq!(y.shape(), &[2, 1, 2]);
        assert_eq!(y.as_f32().unwrap(), &[4.0, 5.0, 0.0, 1.0]);
        // broadcasting batch dims [2,1] x [3] -> [2,3]
        let a = f32t(&[2, 1, 1, 2], &[1.0, 1.0, 2.0, 2.0]);
        let b = f32t(&[3, 2, 1], &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        let y = eval1(&Op::MatMul, &[&a, &b]).unwrap();
        assert_eq!(y.shape(), &[2, 3, 1, 1]);
        assert_eq!(y.as_f32().unwrap(), &[1.0, 1.0, 2.0, 2.0, 2.0, 4.0]);
        // vector @ matrix and matrix @ vector
        let v = f32t(&[2], &[1.0, -1.0]);
        let m = f32t(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(eval1(&Op::MatMul, &[&v, &m]).unwrap().as_f32().unwrap(), &[-2.0, -2.0]);
        let y = eval1(&Op::MatMul, &[&m, &v]).unwrap();
        assert_eq!((y.shape(), y.as_f32().unwrap()), (&[2usize][..], &[-1.0f32, -1.0][..]));
        let y = eval1(&Op::MatMul, &[&v, &v]).unwrap();
        assert_eq!((y.shape(), y.as_f32().unwrap()), (&[][..], &[2.0f32][..]));
    }

    #[test]
    fn gemm_transposes_alpha_beta_and_broadcast_c() {
        let a = f32t(&[3, 2], &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]); // a^T = [[1,2,3],[4,5,6]]
        let b = f32t(&[2, 3], &[1.0, 0.0, 1.0, 0.0, 1.0, 1.0]); // b^T = [[1,0],[0,1],[1,1]]
        let c = f32t(&[2], &[100.0, 200.0]);
        let op = Op::Gemm { alpha: 2.0, beta: 0.5, trans_a: true, trans_b: true };
        let y = eval1(&op, &[&a, &b, &c]).unwrap();
        assert_eq!(y.as_f32().unwrap(), &[58.0, 110.0, 70.0, 122.0]);
        let c = f32t(&[2, 1], &[1.0, 2.0]);
        let op = Op::Gemm { alpha: 1.0, beta: 1.0, trans_a: true, trans_b: true };
        let y = eval1(&op, &[&a, &b, &c]).unwrap();
        assert_eq!(y.as_f32().unwrap(), &[5.0, 6.0, 12.0, 13.0]);
        let bf = Tensor::from_f32_slice(DType::BF16, vec![2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let op = Op::Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: false };
        let y = eval1(&op, &[&bf, &bf]).unwrap();
        assert_eq!((y.dtype(), y.to_f32_vec()), (DType::BF16, vec![7.0, 10.0, 15.0, 22.0]));
    }
}
