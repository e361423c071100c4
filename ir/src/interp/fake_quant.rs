//! Fake quantization ([`crate::Op::FakeQuantize`]) and its straight-through gradient
//! ([`crate::Op::FakeQuantizeGrad`]): the quantize-dequantize of quantization-aware training as
//! one float op, and the gradient of the scale that LSQ learns (Esser et al. 2020, "Learned Step
//! Size Quantization", eq. 3).
//!
//! Per element, with `s` and `z` the element's scale and zero point (broadcast), the codes of
//! [`crate::numerics::fake_quantize_codes`] (`q = x / s`, `r = round_half_even(q) + z`,
//! `c = clip(r, qmin, qmax)`) and `y = (c - z) * s`, each step an f32 operation as the separate
//! ops compute it, so the fused op and the composition agree bit for bit. f16 and bf16 operands
//! widen to f32 and the results round once to the storage type.

use super::{float_tensor, floats, for_each_broadcast, Cx, R};
use crate::limits::try_vec;
use crate::numerics::{fake_quantize_codes as codes, fake_quantize_grad_terms};

/// The operands: `x`, the scale and zero point (`first` the slot of `x`), their elements and
/// the broadcast offsets into them per element of `x`.
fn walk(cx: &Cx, first: usize, mut each: impl FnMut(usize, f32, f32, Option<f32>, usize)) -> R<()> {
    let (x, s) = (cx.x(first)?, cx.x(first + 1)?);
    let z = cx.opt(first + 2);
    let (xv, sv) = (floats(x), floats(s));
    let zv = z.map(floats);
    let shapes = [x.shape(), s.shape(), z.map_or(s.shape(), |z| z.shape())];
    for_each_broadcast(x.shape(), &shapes, |i, o| {
        each(i, xv[o[0]], sv[o[1]], zv.as_ref().map(|z| z[o[2]]), o[1]);
    })
}

/// `y = (clip(round(x / s) + z, qmin, qmax) - z) * s` (see the module documentation).
pub(crate) fn fake_quantize(cx: &Cx, qmin: i32, qmax: i32) -> R<crate::Tensor> {
    let (lo, hi) = (qmin as f32, qmax as f32);
    let n = cx.x(0)?.len();
    let mut y: Vec<f32> = try_vec(n)?;
    y.resize(n, 0.0);
    walk(cx, 0, |i, x, s, z, _| {
        let (_, _, mut c) = codes(x, s, z, lo, hi);
        if let Some(z) = z {
            c -= z;
        }
        y[i] = c * s;
    })?;
    float_tensor(cx.out_dtype(0), cx.out_shape(0), y)
}

/// `dy, x, s, [z]` -> `dx`, `ds`: `dx = dy` where `qmin <= r <= qmax` (0 elsewhere, and for a
/// NaN), `ds = sum dy * ((c - z) - inside * q)` over the elements of each scale, in f64.
pub(crate) fn fake_quantize_grad(cx: &Cx, qmin: i32, qmax: i32) -> R<Vec<crate::Tensor>> {
    let (lo, hi) = (qmin as f32, qmax as f32);
    let dy = floats(cx.x(0)?);
    let n = cx.x(1)?.len();
    if dy.len() != n {
        return Err(format!("dy has {} elements for {n} of x", dy.len()));
    }
    let mut dx: Vec<f32> = try_vec(n)?;
    dx.resize(n, 0.0);
    let scales = cx.x(2)?.len();
    let mut ds: Vec<f64> = try_vec(scales)?;
    ds.resize(scales, 0.0);
    walk(cx, 1, |i, x, s, z, k| {
        let (inside, term) = fake_quantize_grad_terms(x, s, z, lo, hi);
        let g = dy[i];
        if inside {
            dx[i] = g;
        }
        ds[k] += f64::from(g) * term;
    })?;
    Ok(vec![
        float_tensor(cx.out_dtype(0), cx.out_shape(0), dx)?,
        float_tensor(cx.out_dtype(1), cx.out_shape(1), ds.into_iter().map(|v| v as f32).collect())?,
    ])
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{eval1, f32t};
    use crate::{BinaryOp, Op, Tensor, UnaryOp};

    /// The composition `(clip(round(x / s) + z) - z) * s` with the interpreter's separate ops.
    fn composed(x: &Tensor, s: &Tensor, z: Option<&Tensor>, lo: i32, hi: i32) -> Vec<f32> {
        let bin = |op, a: &Tensor, b: &Tensor| eval1(&Op::Binary(op), &[a, b]).unwrap();
        let mut r = eval1(&Op::Unary(UnaryOp::Round), &[&bin(BinaryOp::Div, x, s)]).unwrap();
        if let Some(z) = z {
            r = bin(BinaryOp::Add, &r, z);
        }
        let mut c = eval1(&Op::Clip { min: lo as f32, max: hi as f32 }, &[&r]).unwrap();
        if let Some(z) = z {
            c = bin(BinaryOp::Sub, &c, z);
        }
        bin(BinaryOp::Mul, &c, s).to_f32_vec()
    }

    #[test]
    fn equals_its_composition_bit_for_bit() {
        // ties of x / s, the clipping bounds, signed zeros, a NaN and an infinity
        let v = [
            -3.0,
            -0.5,
            0.5,
            1.5,
            2.5,
            -0.0,
            0.0,
            0.1,
            12.7,
            12.8,
            12.85,
            -12.8,
            -12.9,
            100.0,
            f32::NAN,
            f32::INFINITY,
        ];
        let x = f32t(&[2, 8], &v);
        let per_tensor = (f32t(&[], &[0.1]), f32t(&[], &[3.0]));
        let per_row = (f32t(&[2, 1], &[0.1, 0.37]), f32t(&[2, 1], &[0.0, -5.0]));
        for (s, z) in [&per_tensor, &per_row] {
            for (lo, hi, zp) in [(-128, 127, None), (0, 255, Some(z)), (-8, 7, None), (-2147483648, 2147483647, None)] {
                let fused =
                    eval1(&Op::FakeQuantize { qmin: lo, qmax: hi }, &[&x, s].into_iter().chain(zp).collect::<Vec<_>>());
                let want = composed(&x, s, zp, lo, hi);
                let got = fused.unwrap().to_f32_vec();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "range [{lo}, {hi}], zero point {}", zp.is_some());
            }
        }
    }

    #[test]
    fn the_gradient_passes_inside_the_range_and_sums_the_lsq_terms_per_scale() {
        let x = f32t(&[2, 3], &[0.26, 10.0, -10.0, 0.26, 10.0, f32::NAN]);
        let s = f32t(&[2, 1], &[0.1, 1.0]);
        let dy = f32t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let out = super::super::testutil::evalq(
            &Op::FakeQuantizeGrad { qmin: -8, qmax: 7 },
            &[&dy, &x, &s],
            &[super::super::testutil::ty(&dy), super::super::testutil::ty(&x), super::super::testutil::ty(&s)],
            &[],
        )
        .unwrap();
        let dx = out[0].to_f32_vec();
        assert_eq!(&dx[..5], &[1.0, 0.0, 0.0, 4.0, 0.0]);
        assert_eq!(dx[5], 0.0, "a NaN gets no gradient");
        // row 0: q = 2.6 (inside: round 3 - 2.6), 100 (clipped at 7), -100 (clipped at -8)
        let q0 = f64::from(0.26f32 / 0.1f32);
        let want0 = 1.0 * (3.0 - q0) + 2.0 * 7.0 + 3.0 * -8.0;
        let ds = out[1].to_f32_vec();
        assert_eq!(out[1].shape(), &[2, 1]);
        assert!((f64::from(ds[0]) - want0).abs() < 1e-6, "{} vs {want0}", ds[0]);
        assert!(ds[1].is_nan(), "a NaN element makes its scale's gradient NaN");
    }
}
