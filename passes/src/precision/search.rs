//! The accuracy guard: the shortest f32 prefix that reaches an SQNR target.
//!
//! Rounding to fp16 or bf16 perturbs every op a little; the network then amplifies each
//! perturbation by everything downstream of it, so perturbations made early cost the most (on
//! the corpus's random-weight MobileNetV2 about 1.5 dB per block). With calibration inputs and
//! a target (`min_sqnr_db`), the guard keeps the first `k` nodes (in schedule order) that
//! assignment would lower in f32, for the smallest `k` whose output on the calibration inputs
//! reaches the target against the f32 graph. A prefix of the schedule is also where the fewest
//! casts are needed: the f32 region ends at one frontier of f32-to-low casts.
//!
//! `k` is found by bisection ([`crate::bisect::count_reaching`]) between 0 (everything low) and
//! the number of lowered nodes (everything f32, which reaches any target): about log2(n) + 2 runs
//! of the calibration set.

use super::amp::{AssignPrecision, F32Prefix, PrecisionConfig, STAT_LOW};
use super::PrecisionError;
use crate::bisect::count_reaching;
use crate::evaluator::Evaluator;
use crate::pass::{Pass, PassContext};
use crate::quantize::sensitivity::score;
use qforge_ir::{Graph, Tensor};

/// What the guard decided and what it measured.
#[derive(Clone, Debug, PartialEq)]
pub struct GuardOutcome {
    /// The prefix to keep in f32 (0: the target is met with everything low).
    pub prefix: F32Prefix,
    /// Nodes assignment lowers without the guard.
    pub lowered: usize,
    /// SQNR (dB) on the calibration inputs with everything lowered, and with the prefix kept.
    pub all_low_db: f64,
    pub chosen_db: f64,
    /// Every prefix length measured, with its SQNR.
    pub probes: Vec<(usize, f64)>,
}

/// Finds the shortest f32 prefix that brings `g` under `cfg` to `target_db` on `batches`.
pub fn f32_prefix_for(
    g: &Graph,
    cfg: &PrecisionConfig,
    target_db: f64,
    batches: &[Vec<Tensor>],
    ev: &dyn Evaluator,
    cx: &PassContext,
) -> Result<GuardOutcome, PrecisionError> {
    let reference = ev.first_outputs(g, batches)?;
    let probe = |count: usize| -> Result<(f64, usize), PrecisionError> {
        let mut h = g.clone();
        let c = PrecisionConfig { f32_prefix: Some(F32Prefix { count, target_db }), ..cfg.clone() };
        let r = AssignPrecision::new(c).run(&mut h, cx)?;
        let lowered = r.stats.get(STAT_LOW).copied().unwrap_or(0) as usize;
        let (db, _) = score(&ev.first_outputs(&h, batches)?, &reference, None);
        Ok((db, lowered))
    };
    let (all_low_db, lowered) = probe(0)?;
    let found = count_reaching(lowered, target_db, all_low_db, |count| probe(count).map(|(db, _)| db))?;
    Ok(GuardOutcome {
        prefix: F32Prefix { count: found.count, target_db },
        lowered,
        all_low_db,
        chosen_db: found.score,
        probes: found.probes,
    })
}
