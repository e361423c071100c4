//! The exhaustive check of `micro::transcendental`: its exp, sigmoid and erf against the
//! interpreter's (`unary_scalar`) on every f32 input, bit for bit, on the kernels this CPU runs
//! (AVX-512, AVX2 or the baseline). A check too slow for the test suite (about thirteen minutes in
//! a release build), so it lives behind `cargo bench -p qforge-codegen --bench transcendental`;
//! it prints the kernel's time per element (over every bit pattern, most of them NaN or out of
//! the polynomials' range and so computed again by the interpreter's function) and exits
//! non-zero on the first difference.

use qforge_codegen::micro::transcendental::map;
use qforge_ir::interp::elementwise::unary_scalar;
use qforge_ir::UnaryOp;
use std::time::Instant;

fn main() {
    let mut y = vec![0f32; 1 << 24];
    for u in [UnaryOp::Exp, UnaryOp::Sigmoid, UnaryOp::Erf] {
        let (mut kernel, t0) = (0f64, Instant::now());
        for hi in 0..1u32 << 8 {
            let xs: Vec<f32> = (0..1u32 << 24).map(|lo| f32::from_bits(hi << 24 | lo)).collect();
            let t = Instant::now();
            map(u, &xs, &mut y);
            kernel += t.elapsed().as_secs_f64();
            for (&x, &got) in xs.iter().zip(&y) {
                let want = unary_scalar(u, x);
                if got.to_bits() != want.to_bits() {
                    eprintln!("{u:?}({x:e} = {:#x}): {got:e}, the interpreter's {want:e}", x.to_bits());
                    std::process::exit(1);
                }
            }
        }
        println!(
            "{u:?}: all 2^32 f32 inputs equal the interpreter's bit for bit; kernel {:.2} ns per element \
             ({:.0} s in all)",
            kernel * 1e9 / 2f64.powi(32),
            t0.elapsed().as_secs_f64()
        );
    }
}
