//! Every calibration observer on hard distributions: for each synthetic distribution (heavy tails,
//! two modes, a constant spike, outliers, one-sided) and each method, per-tensor activations with
//! the default asymmetric u8 scheme and the symmetric i8 one, the range the observer proposes, the
//! share of values that range clips, and the tensor's own SQNR when the observed data is quantized
//! and dequantized with the resulting scale and zero point. The table is a snapshot
//! (`snapshots/observers__hard_distributions.snap`); clearly wrong results are asserted against.
//!
//! The data is deterministic (xorshift64* with fixed seeds, 200 000 values in batches of 1000, so
//! the histograms grow as in a calibration run).

use qforge_ir::numerics;
use qforge_passes::quantize::scheme::{params_for_range, QType, Scheme};
use qforge_passes::quantize::{calibrate, CalibMethod, ObserverConfig};
use std::fmt::Write;

const N: usize = 200_000;
const BATCH: usize = 1000;

/// Uniform (0, 1) numbers from a seed (xorshift64*).
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        let s = &mut self.0;
        *s ^= *s >> 12;
        *s ^= *s << 25;
        *s ^= *s >> 27;
        ((s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    /// A standard normal number (Box-Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// The distributions: name and generator.
fn distributions() -> Vec<(&'static str, Vec<f32>)> {
    let gen = |seed: u64, f: &dyn Fn(&mut Rng) -> f64| -> Vec<f32> {
        let mut r = Rng(seed);
        (0..N).map(|_| f(&mut r) as f32).collect()
    };
    vec![
        ("gaussian", gen(1, &|r| r.normal())),
        // heavy tails: Cauchy (no variance; |x| > 1000 about once in 300) and Student-t, 3 degrees
        ("cauchy", gen(2, &|r| (std::f64::consts::PI * (r.uniform() - 0.5)).tan())),
        (
            "student_t3",
            gen(3, &|r| {
                let z = r.normal();
                let chi2: f64 = (0..3).map(|_| r.normal().powi(2)).sum();
                z / (chi2 / 3.0).sqrt()
            }),
        ),
        // two separated modes: N(-2, 0.5) and N(6, 0.5), equally likely
        ("bimodal", gen(4, &|r| if r.uniform() < 0.5 { -2.0 + 0.5 * r.normal() } else { 6.0 + 0.5 * r.normal() })),
        // mostly constant: 99% exact zeros (a ReLU that is mostly off), 1% |N(0, 1)|
        ("zeros_99", gen(5, &|r| if r.uniform() < 0.99 { 0.0 } else { r.normal().abs() })),
        // mostly constant: 99% exactly 6 (a saturated relu6), 1% uniform in [0, 6)
        ("sixes_99", gen(6, &|r| if r.uniform() < 0.99 { 6.0 } else { 6.0 * r.uniform() })),
        // outlier-dominated: N(0, 1) with one value in 2000 at +-100
        (
            "outliers_100x",
            gen(7, &|r| {
                let x = r.normal();
                if r.uniform() < 0.0005 {
                    100f64.copysign(x)
                } else {
                    x
                }
            }),
        ),
        // one-sided: ReLU of N(0, 1) (half exact zeros)
        ("relu", gen(8, &|r| r.normal().max(0.0))),
        // mostly constant, zero inside the data: 99% exact zeros, 1% N(0, 1)
        ("zeros_99_signed", gen(9, &|r| if r.uniform() < 0.99 { 0.0 } else { r.normal() })),
        // mostly constant away from zero: 99% exactly 1, 1% N(0, 2)
        ("ones_99", gen(10, &|r| if r.uniform() < 0.99 { 1.0 } else { 2.0 * r.normal() })),
        // discrete values, most bins empty: integers -2..=3
        ("discrete", gen(11, &|r| (r.uniform() * 6.0).floor() - 2.0)),
        // a narrow spread far from zero: N(1000, 0.001), all in one bin of a grid from zero
        ("narrow_far", gen(12, &|r| 1000.0 + 0.001 * r.normal())),
    ]
}

/// What a range does to the data under a scheme.
struct Outcome {
    range: (f32, f32),
    /// Share of values outside the representable range by more than half a step (saturated).
    clipped: f64,
    /// `10 log10(sum x^2 / sum (x - dq(q(x)))^2)`.
    sqnr_db: f64,
}

/// Quantizes and dequantizes `data` with the parameters `scheme` gives `range` (the formula
/// [`params_for_range`] and the numerics contract's rounding, [`numerics::quantize`]).
fn outcome(data: &[f32], range: (f32, f32), scheme: Scheme) -> Outcome {
    let p = params_for_range(range.0, range.1, scheme).expect("a finite range");
    let dtype = scheme.qtype.storage();
    let (qmin, qmax) = scheme.qtype.range();
    // beyond half a step outside the grid (the zero point's rounding moves the grid by up to half
    // a step), with 1% of a step for float error: as `Histogram::quality` counts
    let half = 0.51 * p.scale as f64;
    let lo = numerics::dequantize(qmin as i64, p.scale, p.zero_point) as f64 - half;
    let hi = numerics::dequantize(qmax as i64, p.scale, p.zero_point) as f64 + half;
    let (mut sig, mut noise, mut clipped) = (0f64, 0f64, 0usize);
    for &x in data {
        let y = numerics::dequantize(numerics::quantize(x, p.scale, p.zero_point, dtype), p.scale, p.zero_point);
        sig += (x as f64).powi(2);
        noise += (x as f64 - y as f64).powi(2);
        clipped += usize::from((x as f64) < lo || (x as f64) > hi);
    }
    let sqnr_db = if noise == 0.0 { f64::INFINITY } else { 10.0 * (sig / noise).log10() };
    Outcome { range, clipped: clipped as f64 / data.len() as f64, sqnr_db }
}

/// The observer's range for `data`, observed batch by batch.
fn observe(data: &[f32], method: CalibMethod, symmetric: bool) -> (f32, f32) {
    let mut o = ObserverConfig { method, symmetric, ..ObserverConfig::default() }.build().expect("valid settings");
    for b in data.chunks(BATCH) {
        o.observe(b).expect("finite data");
    }
    o.range().expect("data was observed")
}

#[test]
fn observers_on_hard_distributions() {
    let schemes = [("u8 asym", Scheme::asymmetric(QType::U8)), ("i8 sym", Scheme::symmetric(QType::I8))];
    let mut table = String::new();
    writeln!(
        table,
        "{:<16} {:<8} {:<10} {:>12} {:>12} {:>9} {:>9}  warning",
        "distribution", "scheme", "method", "min", "max", "clipped%", "SQNR dB"
    )
    .unwrap();
    let mut failures = vec![];
    for (name, data) in distributions() {
        for (sname, scheme) in schemes {
            let minmax = outcome(&data, observe(&data, CalibMethod::MinMax, scheme.symmetric), scheme);
            for method in CalibMethod::ALL {
                let o = outcome(&data, observe(&data, method, scheme.symmetric), scheme);
                let assessment = calibrate::assess(&data_histogram(&data, scheme.symmetric), method, o.range, scheme);
                let warning = assessment.as_ref().map_or("-".to_string(), |a| {
                    format!("warn (estimated {:.1} dB, min-max {:.1} dB)", a.sqnr_db, a.minmax_sqnr_db)
                });
                writeln!(
                    table,
                    "{name:<16} {sname:<8} {:<10} {:>12.5e} {:>12.5e} {:>9.4} {:>9.2}  {warning}",
                    method.name(),
                    o.range.0,
                    o.range.1,
                    o.clipped * 100.0,
                    o.sqnr_db
                )
                .unwrap();
                let row = format!(
                    "{name} {sname} {method}: range {:?} clips {:.3}%, {:.1} dB (min-max {:.1} dB)",
                    o.range,
                    o.clipped * 100.0,
                    o.sqnr_db,
                    minmax.sqnr_db
                );
                // Clearly wrong: a range that saturates more than 1% of the values where min-max
                // saturates none, or quantizes the tensor more than 10 dB worse than min-max (the
                // thresholds of `calibrate::assess`). Such a result is never silent.
                let bad = (o.clipped > 0.01 && minmax.clipped == 0.0) || o.sqnr_db < minmax.sqnr_db - 10.0;
                if bad && assessment.is_none() {
                    failures.push(format!("no warning: {row}"));
                }
                // MSE chooses the range of least squared error, the tensor's best SQNR: never
                // below min-max's (which it can always choose), within rounding of the estimate.
                if method == CalibMethod::Mse && o.sqnr_db < minmax.sqnr_db - 0.5 {
                    failures.push(format!("mse below min-max: {row}"));
                }
                // Entropy (KL divergence) trades rare outliers for resolution by design, which is
                // what costs SQNR on the heavy tails and the outliers (and is warned about); on
                // every other distribution it stays within 10 dB of min-max. It did not before
                // the smoothing and spike fixes (mostly-constant and discrete data).
                let outliers = matches!(name, "cauchy" | "outliers_100x");
                if method == CalibMethod::Entropy && !outliers && o.sqnr_db < minmax.sqnr_db - 10.0 {
                    failures.push(format!("entropy far below min-max: {row}"));
                }
            }
        }
    }
    insta::with_settings!({ snapshot_path => "../../snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("observers__hard_distributions", table);
    });
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The histogram calibration keeps of `data` for the warnings (as it observes batch by batch).
fn data_histogram(data: &[f32], symmetric: bool) -> qforge_passes::quantize::Histogram {
    let mut h = qforge_passes::quantize::Histogram::new(qforge_passes::quantize::histogram::DEFAULT_BINS, symmetric);
    for b in data.chunks(BATCH) {
        h.observe(b).expect("finite data");
    }
    h
}
