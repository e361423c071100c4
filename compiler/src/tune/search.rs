//! The search, in rounds, each a list of candidates that depends only on the sensitivity
//! ranking and the figures of the rounds before it (so a round can be written as jobs, run
//! anywhere, and merged back: [`super::jobs`]).
//!
//! * Round 0, the seeds: every layer FP32; every layer in each low float type the target
//!   computes in (BF16 on a CPU with AVX512-BF16, FP16 with AVX512-FP16 or a profile that lists
//!   fp16 compute); every layer INT8 with per-channel and per-tensor weights under each of a few
//!   observers ([`SEED_OBSERVERS`]); every layer with INT4 weights where the profile has int4.
//! * Round 1, the ladder: from the most accurate uniform INT8 seed, the `k` most sensitive
//!   layers (the sensitivity study's ranking: each layer quantized alone, by output SQNR) kept in
//!   each float choice, for `k` = 1, 2, 3, 5, 8, 13, ... (below the number of layers).
//! * Round 2 on, greedy local moves: from each point of the current front, fastest first, flip
//!   one of the [`MOVE_LAYERS`] most sensitive layers: an integer layer to each float choice, a
//!   float layer to INT8 or to the other float choices; the first [`PER_ROUND`] policies not
//!   evaluated yet, in that order. The search stops when a round proposes nothing new, after
//!   `--rounds`, or when `--budget-minutes` runs out (checked before each candidate).

use super::candidates::{float_choices, Candidate, Choice, Granularity, Policy};
use super::evaluate::{Context, Evaluated};
use super::front;
use crate::compiler::Stage;
use anyhow::Result;
use qforge_passes::quantize::observer::CalibMethod;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The observers of the uniform INT8 seeds.
pub const SEED_OBSERVERS: [CalibMethod; 3] = [CalibMethod::MinMax, CalibMethod::Percentile, CalibMethod::Entropy];

/// How many of the most sensitive layers the greedy moves flip.
pub const MOVE_LAYERS: usize = 8;

/// How many interleaved passes [`remeasure_front`] makes.
pub const REMEASURE_PASSES: usize = 3;

/// The most candidates a greedy round proposes.
pub const PER_ROUND: usize = 12;

/// What the search chooses from.
#[derive(Clone, Debug, PartialEq)]
pub struct Space {
    /// The quantizable layers, most sensitive first.
    pub ranked: Vec<String>,
    /// The float choices a layer may take (fp32 first).
    pub floats: Vec<Choice>,
    /// Whether uniform INT4 weights are a seed.
    pub int4: bool,
}

impl Space {
    /// The space of `ctx`'s model and profile: the ranking from a sensitivity study on the
    /// evaluation set (the minmax calibration, every layer int8, each quantized alone).
    pub fn study(ctx: &mut Context) -> Result<Space> {
        let policy = Policy::uniform(Choice::Int8, Granularity::PerChannel, CalibMethod::MinMax);
        let c = ctx.compiler(&policy)?;
        let st = c.run_until(ctx.graph.clone(), Stage::Calibrate, &mut |_, _| {})?;
        ctx.counters.calibrations += 1;
        let eval = ctx.eval.clone();
        let study = crate::sensitivity::prepare(&c, &st, &eval, ctx.labels.as_deref())?;
        let ranked = study.rank()?.layers.into_iter().map(|l| l.node).collect();
        Ok(Space {
            ranked,
            floats: float_choices(&ctx.profile),
            int4: ctx.profile.dtypes.int4 && ctx.profile.dtypes.int8,
        })
    }

    /// The candidates of round `round`, given every candidate evaluated so far.
    pub fn round(&self, round: usize, done: &[Evaluated]) -> Vec<Candidate> {
        let seen: BTreeSet<&str> = done.iter().map(|e| e.key.as_str()).collect();
        let mut out: Vec<Candidate> = vec![];
        let push = |policy: Policy, label: String, out: &mut Vec<Candidate>| {
            let k = policy.key();
            if !seen.contains(k.as_str()) && !out.iter().any(|c| c.policy.key() == k) {
                out.push(Candidate { policy, round, label });
            }
        };
        match round {
            0 => {
                for &f in &self.floats {
                    push(
                        Policy::uniform(f, Granularity::PerChannel, CalibMethod::MinMax),
                        format!("uniform {}", f.name()),
                        &mut out,
                    );
                }
                for m in SEED_OBSERVERS {
                    for g in [Granularity::PerChannel, Granularity::PerTensor] {
                        push(Policy::uniform(Choice::Int8, g, m), format!("uniform int8 {} {m}", g.name()), &mut out);
                    }
                }
                if self.int4 {
                    push(
                        Policy::uniform(Choice::Int4, Granularity::PerChannel, CalibMethod::MinMax),
                        "uniform int4 weights".to_string(),
                        &mut out,
                    );
                }
            }
            1 => {
                let base = done
                    .iter()
                    .filter(|e| e.candidate.round == 0 && e.candidate.policy.default == Choice::Int8)
                    .max_by(|a, b| front::cmp_accuracy(a, b).then(b.key.cmp(&a.key)));
                let Some(base) = base else { return out };
                let n = self.ranked.len();
                for k in ladder(n) {
                    for &f in &self.floats {
                        let mut p = base.candidate.policy.clone();
                        for l in &self.ranked[..k] {
                            p = p.with(l, f);
                        }
                        push(p, format!("{k} most sensitive {}", f.name()), &mut out);
                    }
                }
            }
            _ => {
                let rows = front::front(done);
                for (e, on) in &rows {
                    if !on {
                        continue;
                    }
                    let p = &e.candidate.policy;
                    for l in self.ranked.iter().take(MOVE_LAYERS) {
                        let cur = p.choice(l);
                        let mut to: Vec<Choice> = self.floats.iter().copied().filter(|f| *f != cur).collect();
                        if !cur.is_int() {
                            to.insert(0, Choice::Int8);
                        }
                        for c in to {
                            push(p.with(l, c), format!("move {l} -> {}", c.name()), &mut out);
                        }
                    }
                }
                out.truncate(PER_ROUND);
            }
        }
        out
    }
}

/// The ladder of `k`: 1, 2, 3, 5, 8, 13, ... below `n`.
pub fn ladder(n: usize) -> Vec<usize> {
    let (mut a, mut b) = (1usize, 2usize);
    let mut v = vec![];
    while a < n {
        v.push(a);
        (a, b) = (b, a + b);
    }
    v
}

/// What an in-process search did.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub evaluated: Vec<Evaluated>,
    pub rounds: usize,
    /// The budget ran out before the search ended.
    pub budget_hit: bool,
    /// Candidates measured again side by side at the end ([`remeasure_front`]).
    pub remeasured: usize,
    pub elapsed: Duration,
}

/// Runs rounds `0..max_rounds` (all with `None`) in process, within `budget`; `progress(done,
/// round)` after each candidate.
pub fn run(
    ctx: &mut Context,
    space: &Space,
    max_rounds: Option<usize>,
    budget: Duration,
    start: Instant,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Outcome> {
    let mut done: Vec<Evaluated> = vec![];
    let mut rounds = 0;
    let mut budget_hit = false;
    'rounds: while max_rounds.is_none_or(|m| rounds < m) {
        let cands = space.round(rounds, &done);
        if cands.is_empty() {
            break;
        }
        for c in &cands {
            // the seeds always run: without them there is nothing to choose from
            if rounds > 0 && start.elapsed() >= budget {
                budget_hit = true;
                break 'rounds;
            }
            done.push(ctx.evaluate(c)?);
            progress(done.len(), rounds);
        }
        rounds += 1;
    }
    Ok(Outcome { evaluated: done, rounds, budget_hit, remeasured: 0, elapsed: start.elapsed() })
}

/// After a measured search: the seeds and the front measured again side by side
/// ([`Context::remeasure`], [`REMEASURE_PASSES`] passes), the outcome's latencies updated.
pub fn remeasure_front(ctx: &mut Context, out: &mut Outcome) -> Result<()> {
    if ctx.setup.latency.predicted() {
        return Ok(());
    }
    let rows = front::front(&out.evaluated);
    let keys: Vec<String> =
        rows.iter().filter(|(e, on)| *on || e.candidate.round == 0).map(|(e, _)| e.key.clone()).collect();
    ctx.remeasure(&keys, REMEASURE_PASSES)?;
    for e in out.evaluated.iter_mut() {
        if let Some(c) = ctx.cache.get(&e.key) {
            *e = c.clone();
        }
    }
    out.remeasured = keys.len();
    Ok(())
}
