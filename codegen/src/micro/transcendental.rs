//! `exp`, `sigmoid` and `erf` on f32 rows, and GELU's erf form, giving exactly the interpreter's
//! values ([`qforge_ir::interp::elementwise::unary_scalar`]) in loops the compiler vectorizes.
//!
//! The three functions are the numerics contract's f32 algorithms
//! ([`qforge_ir::numerics::exp_f32`], [`qforge_ir::numerics::sigmoid_f32`],
//! [`qforge_ir::numerics::erf_f32`]): fixed f32 operations with fused multiply-adds and no
//! branches, so a loop of them vectorizes (16 lanes with AVX-512, 8 with AVX2, each fused
//! multiply-add one instruction; the baseline compilation calls libm's `fmaf`, which rounds the
//! same) and gives the interpreter's scalar values by construction. GELU's erf form ([`gelu`]:
//! `((erf(x / d) + one) * x) * half`) is its nodes in one loop, each rounded to f32 as its node
//! would be.
//!
//! Invariants: the values are [`unary_scalar`]'s bit for bit (the GELU's, its nodes'), on every
//! CPU (checked on every f32 input by `cargo bench -p qforge-codegen --bench transcendental`,
//! which also measures each function's distance from libm's f64 value against the contract's
//! bound, and on 2^24 spread inputs by the unit tests, in the dispatched and the baseline
//! compilations). Never allocates.

use qforge_ir::interp::elementwise::unary_scalar;
use qforge_ir::numerics::{erf_f32, exp_f32, sigmoid_f32, SOFTMAX_EXP_CUT};
use qforge_ir::{multiversion, UnaryOp};

/// Whether [`map`] computes `u` (the others are [`unary_scalar`]'s loop).
pub fn supported(u: UnaryOp) -> bool {
    matches!(u, UnaryOp::Exp | UnaryOp::Sigmoid | UnaryOp::Erf)
}

multiversion! {
    baseline = map_baseline;
    /// `y[i] = unary_scalar(u, x[i])` for `u` [`supported`] (any other `u`: [`unary_scalar`]
    /// element by element), compiled for AVX-512 and AVX2 as well.
    pub fn map(u: UnaryOp, x: &[f32], y: &mut [f32]) -> () {
        match u {
            UnaryOp::Exp => {
                for (o, &v) in y.iter_mut().zip(x) {
                    *o = exp_f32(v);
                }
            }
            UnaryOp::Sigmoid => {
                for (o, &v) in y.iter_mut().zip(x) {
                    *o = sigmoid_f32(v);
                }
            }
            UnaryOp::Erf => {
                for (o, &v) in y.iter_mut().zip(x) {
                    *o = erf_f32(v);
                }
            }
            _ => {
                for (o, &v) in y.iter_mut().zip(x) {
                    *o = unary_scalar(u, v);
                }
            }
        }
    }
}

/// The constants of GELU's erf form: `((erf(x / div) + one) * x) * half`.
#[derive(Clone, Copy, Debug)]
pub struct Gelu {
    pub div: f32,
    pub one: f32,
    pub half: f32,
}

impl Gelu {
    /// The composition as the interpreter computes it, node by node.
    #[inline(always)]
    pub fn exact(&self, x: f32) -> f32 {
        ((erf_f32(x / self.div) + self.one) * x) * self.half
    }
}

multiversion! {
    baseline = gelu_baseline;
    /// [`Gelu::exact`] of every `x` into `y`, compiled for AVX-512 and AVX2 as well.
    pub fn gelu(x: &[f32], y: &mut [f32], k: &Gelu) -> () {
        let k = *k;
        for (o, &v) in y.iter_mut().zip(x) {
            *o = k.exact(v);
        }
    }
}

multiversion! {
    baseline = softmax_exps_baseline;
    /// Softmax's exponentials ([`softmax_exp`]) of every `x` into `y`: [`exp_f32`] of `x` raised
    /// to [`SOFTMAX_EXP_CUT`], then 0 where `x` is below the cut, so no lane computes a subnormal
    /// (each would cost a microcode assist on an Intel core); compiled for AVX-512 and AVX2 as
    /// well.
    pub fn softmax_exps(x: &[f32], y: &mut [f32]) -> () {
        for (o, &v) in y.iter_mut().zip(x) {
            let below = v < SOFTMAX_EXP_CUT;
            let e = exp_f32(if below { SOFTMAX_EXP_CUT } else { v });
            *o = if below { 0.0 } else { e };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qforge_ir::numerics::softmax_exp;

    /// 2^24 inputs spread over every exponent and sign (every 256th bit pattern), the special
    /// values, the edges of f32's range and of the functions' pieces, and dense ranges, through
    /// the dispatched and the baseline compilations, against the interpreter.
    #[test]
    fn matches_the_interpreter_bit_for_bit() {
        let mut xs: Vec<f32> =
            (0..1u32 << 24).map(|i| f32::from_bits(i.wrapping_mul(256).wrapping_add(i % 251))).collect();
        xs.extend([0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::MIN_POSITIVE, f32::MAX, f32::MIN]);
        xs.extend([
            88.72283,
            88.72284,
            -87.33655,
            SOFTMAX_EXP_CUT,
            -87.336_55,
            -103.97208,
            -103.97209,
            16.635532,
            -16.635532,
        ]);
        xs.extend([1.0, -1.0, 1.0000001, -1.0000001, 0.99999994, 4.0, -4.0, 3.9999998, 1e-30, -1e-30, 1e-45]);
        xs.extend((0..1u32 << 20).map(|i| (i as f32 / (1u32 << 19) as f32 - 1.0) * 6.5));
        let mut y = vec![0f32; xs.len()];
        for u in [UnaryOp::Exp, UnaryOp::Sigmoid, UnaryOp::Erf] {
            for (way, run) in [("dispatched", map as fn(UnaryOp, &[f32], &mut [f32])), ("baseline", map_baseline)] {
                run(u, &xs, &mut y);
                for (&x, &got) in xs.iter().zip(&y) {
                    let want = unary_scalar(u, x);
                    assert!(
                        got.to_bits() == want.to_bits(),
                        "{u:?}({x:e} = {:#x}) {way}: {got:e}, the interpreter's {want:e}",
                        x.to_bits()
                    );
                }
            }
        }
        for (way, run) in [("dispatched", softmax_exps as fn(&[f32], &mut [f32])), ("baseline", softmax_exps_baseline)]
        {
            run(&xs, &mut y);
            for (&x, &got) in xs.iter().zip(&y) {
                let want = softmax_exp(x);
                assert!(
                    got.to_bits() == want.to_bits(),
                    "softmax_exp({x:e} = {:#x}) {way}: {got:e}, the contract's {want:e}",
                    x.to_bits()
                );
            }
        }
        let k = Gelu { div: std::f32::consts::SQRT_2, one: 1.0, half: 0.5 };
        for (way, run) in [("dispatched", gelu as fn(&[f32], &mut [f32], &Gelu)), ("baseline", gelu_baseline)] {
            run(&xs, &mut y, &k);
            for (&x, &got) in xs.iter().zip(&y) {
                let want = ((unary_scalar(UnaryOp::Erf, x / k.div) + k.one) * x) * k.half;
                assert!(
                    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "Gelu({x:e} = {:#x}) {way}: {got:e}, the nodes' {want:e}",
                    x.to_bits()
                );
            }
        }
    }
}
