//! The exhaustive check of `micro::transcendental`: its exp, sigmoid and erf against the
//! interpreter's (`unary_scalar`) on every f32 input, bit for bit, and against libm's f64 values
//! within the numerics contract's ulp bounds (`qforge_ir::numerics::EXP_ULPS` and the others),
//! and its GELU against the composition of GELU's nodes, on the kernels this CPU runs (AVX-512,
//! AVX2 or the baseline). A check too slow for the test suite (about ten minutes in a release
//! build), so it lives behind `cargo bench -p qforge-codegen --bench transcendental`; it prints
//! the kernel's time per element over every bit pattern and each function's largest distance
//! from libm's value, and exits non-zero on the first difference or bound exceeded. First, in
//! under a minute, the hard-swish without a division: the row kernel's
//! `spec::hard_swish_by_mul` and the 512-bit epilogue's f64 lanes.
//!
//! Before all that, the kernel's speed where it matters: nanoseconds per element on 2^20
//! normally distributed inputs of a few spreads (activations, GELU's `x / sqrt 2`), the median of
//! 15 runs. `cargo bench -p qforge-codegen --bench transcendental -- speed` stops after it;
//! `-- Exp Sigmoid` (any of `HardSwish`, `Exp`, `Sigmoid`, `Erf`, `GELU`) runs
//! only the checks named.

use qforge_codegen::micro::fepilogue::{available, epilogue_f32, FloatEpilogue};
use qforge_codegen::micro::transcendental::{gelu, map, Gelu};
use qforge_codegen::spec::{hard_swish_by_mul, Step, Store};
use qforge_ir::interp::elementwise::erf;
use qforge_ir::interp::elementwise::unary_scalar;
use qforge_ir::numerics::{f32_ulps, ERF_ULPS, EXP_ULPS, SIGMOID_ULPS};
use qforge_ir::UnaryOp;
use std::time::Instant;

/// Every f32 input of the hard-swish forms that multiply by 1/6 instead of dividing by 6, against
/// the interpreter's; exits non-zero on the first difference.
fn hard_swish_forms() {
    let epi = FloatEpilogue::from_steps(&[Step::HardSwish], Store::F32).filter(|_| available(Store::F32));
    let t0 = Instant::now();
    let mut y = vec![0f32; 1 << 24];
    for hi in 0..1u32 << 8 {
        let xs: Vec<f32> = (0..1u32 << 24).map(|lo| f32::from_bits(hi << 24 | lo)).collect();
        if let Some(p) = &epi {
            // SAFETY: `xs` and `y` hold 2^24 = 2^18 rows of 64 floats; the list has no per-channel
            // arrays and no residual; the CPU has AVX-512F (`available`).
            unsafe { epilogue_f32(p, xs.as_ptr(), 64, 1 << 18, 0, 64, y.as_mut_ptr().cast(), 256, std::ptr::null()) };
        }
        for (i, &x) in xs.iter().enumerate() {
            let want = unary_scalar(UnaryOp::HardSwish, x);
            let forms = [("hard_swish_by_mul", hard_swish_by_mul(x)), ("the 512-bit epilogue", y[i])];
            for (name, got) in forms.into_iter().take(if epi.is_some() { 2 } else { 1 }) {
                if got.to_bits() != want.to_bits() && !(got.is_nan() && want.is_nan()) {
                    eprintln!("HardSwish({x:e} = {:#x}) by {name}: {got:e}, the interpreter's {want:e}", x.to_bits());
                    std::process::exit(1);
                }
            }
        }
    }
    let which = if epi.is_some() { "the row kernel's and the 512-bit epilogue's" } else { "the row kernel's" };
    println!("HardSwish: {which} equal the interpreter's on all 2^32 f32 inputs ({:.0} s)", t0.elapsed().as_secs_f64());
}

/// Nanoseconds per element of `map` on `N(0, sigma^2)` inputs, for the spreads activations
/// have; the median of 15 runs over 2^20 elements.
fn speed() {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut uniform = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        ((rng >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    // Box-Muller
    let normal: Vec<f32> = (0..1 << 20)
        .map(|_| ((-2.0 * uniform().ln()).sqrt() * (std::f64::consts::TAU * uniform()).cos()) as f32)
        .collect();
    let mut y = vec![0f32; normal.len()];
    println!("ns per element, N(0, sigma^2) inputs:   sigma = 0.3     1     2     4");
    for u in [UnaryOp::Exp, UnaryOp::Sigmoid, UnaryOp::Erf] {
        let mut row = format!("{:<40}", format!("{u:?}"));
        for sigma in [0.3f32, 1.0, 2.0, 4.0] {
            let xs: Vec<f32> = normal.iter().map(|&v| v * sigma).collect();
            let mut times: Vec<f64> = (0..15)
                .map(|_| {
                    let t = Instant::now();
                    map(u, &xs, &mut y);
                    t.elapsed().as_secs_f64()
                })
                .collect();
            times.sort_by(f64::total_cmp);
            row += &format!(" {:>5.2}", times[7] * 1e9 / xs.len() as f64);
        }
        println!("{row}");
    }
    let k = Gelu { div: std::f32::consts::SQRT_2, one: 1.0, half: 0.5 };
    let mut row = format!("{:<40}", "GELU (erf form, x / sqrt 2)");
    for sigma in [0.3f32, 1.0, 2.0, 4.0] {
        let xs: Vec<f32> = normal.iter().map(|&v| v * sigma).collect();
        let mut times: Vec<f64> = (0..15)
            .map(|_| {
                let t = Instant::now();
                gelu(&xs, &mut y, &k);
                t.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        row += &format!(" {:>5.2}", times[7] * 1e9 / xs.len() as f64);
    }
    println!("{row}");
}

/// The numerics contract's bound on `exp_f32`, `sigmoid_f32` and `erf_f32`'s distance from libm's
/// f64 value, in f32 ulps (`qforge_ir::numerics`).
fn contract_bound(u: UnaryOp) -> Option<f64> {
    match u {
        UnaryOp::Exp => Some(EXP_ULPS),
        UnaryOp::Sigmoid => Some(SIGMOID_ULPS),
        UnaryOp::Erf => Some(ERF_ULPS),
        _ => None,
    }
}

/// libm's f64 value of `u` at `x`.
fn truth(u: UnaryOp, x: f32) -> f64 {
    let v = f64::from(x);
    match u {
        UnaryOp::Exp => v.exp(),
        UnaryOp::Erf => erf(v),
        _ => 1.0 / (1.0 + (-v).exp()),
    }
}

fn main() {
    speed();
    if std::env::args().any(|a| a == "speed") {
        return;
    }
    // `-- Exp Sigmoid ...`: only the named checks
    let named: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wanted = |name: &str| named.is_empty() || named.iter().any(|n| n == name);
    if wanted("HardSwish") {
        hard_swish_forms();
    }
    let mut y = vec![0f32; 1 << 24];
    for u in [UnaryOp::Exp, UnaryOp::Sigmoid, UnaryOp::Erf].into_iter().filter(|u| wanted(&format!("{u:?}"))) {
        let (mut kernel, t0) = (0f64, Instant::now());
        let mut worst = (0f64, 0f32);
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
                if let Some(bound) = contract_bound(u) {
                    let e = f32_ulps(got, truth(u, x));
                    if e > worst.0 {
                        worst = (e, x);
                    }
                    if e > bound {
                        eprintln!("{u:?}({x:e} = {:#x}): {got:e}, {e:.2} ulp from libm's, above {bound}", x.to_bits());
                        std::process::exit(1);
                    }
                }
            }
        }
        let accuracy = match contract_bound(u) {
            Some(_) => format!("; {:.2} ulp at most from libm's f64 value (at {:e})", worst.0, worst.1),
            None => String::new(),
        };
        println!(
            "{u:?}: all 2^32 f32 inputs equal the interpreter's bit for bit{accuracy}; kernel {:.2} ns per \
             element ({:.0} s in all)",
            kernel * 1e9 / 2f64.powi(32),
            t0.elapsed().as_secs_f64()
        );
    }
    if !wanted("GELU") {
        return;
    }
    let k = Gelu { div: std::f32::consts::SQRT_2, one: 1.0, half: 0.5 };
    let (mut kernel, t0) = (0f64, Instant::now());
    for hi in 0..1u32 << 8 {
        let xs: Vec<f32> = (0..1u32 << 24).map(|lo| f32::from_bits(hi << 24 | lo)).collect();
        let t = Instant::now();
        gelu(&xs, &mut y, &k);
        kernel += t.elapsed().as_secs_f64();
        for (&x, &got) in xs.iter().zip(&y) {
            let want = ((unary_scalar(UnaryOp::Erf, x / k.div) + k.one) * x) * k.half;
            if got.to_bits() != want.to_bits() && !(got.is_nan() && want.is_nan()) {
                eprintln!("Gelu({x:e} = {:#x}): {got:e}, the nodes' {want:e}", x.to_bits());
                std::process::exit(1);
            }
        }
    }
    println!(
        "GELU: all 2^32 f32 inputs equal the nodes' composition (NaN for NaN); kernel {:.2} ns per element \
         ({:.0} s in all)",
        kernel * 1e9 / 2f64.powi(32),
        t0.elapsed().as_secs_f64()
    );
}
