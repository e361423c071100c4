//! `qforge tune`: the most accurate per-layer precision policy that meets a latency budget,
//! found on the Pareto front of accuracy against latency.
//!
//! # What a candidate is
//! A per-layer precision policy ([`candidates::Policy`]): a default (int8, int4 weights, bf16,
//! fp16 or fp32), the int8 layers' weight granularity and calibration observer, and per-layer
//! exceptions by node name. It is written as qconfig TOML, and the search compiles each
//! candidate through exactly what `qforge compile MODEL --quantize int8 --calib X --qconfig
//! CANDIDATE.toml` runs ([`evaluate`]), so the chosen file reproduces the chosen point: the same
//! graph, the same accuracy.
//!
//! # How a candidate is scored
//! * Accuracy on the evaluation set (`--input`, else the calibration set): top-1 against
//!   `--labels` when given (ties broken by SQNR), else the output's SQNR against the FP32
//!   model's; the cosine similarity is reported beside it.
//! * Latency at batch 1 ([`latency`]): measured on this host's JIT (one thread, median of
//!   `--iters` runs after `--warmup`, as `qforge bench` measures), or predicted: from a stored
//!   per-kernel cost table (`--latency-table`, deterministic), or for a `--profile` other than
//!   `host` from the kernels measured here scaled by the profile's relative costs. The table
//!   header and the report say which.
//!
//! # The search ([`search`])
//! 1. A sensitivity study ranks the quantizable layers (each quantized alone, by output SQNR).
//! 2. Round 0: the uniform seeds: FP32; BF16/FP16 where the target computes in them; INT8
//!    per-channel and per-tensor under min-max, percentile and entropy calibration.
//! 3. Round 1: from the most accurate uniform INT8, the `k` most sensitive layers kept in each
//!    float choice, for `k` = 1, 2, 3, 5, 8, ...
//! 4. Rounds 2 on: greedy local moves from each point of the front (one of the most sensitive
//!    layers flipped to another precision), while they find new policies, up to `--rounds`, and
//!    while `--budget-minutes` lasts.
//!
//! 5. With measured latency, the seeds and the front are measured again at the end, side by
//!    side in interleaved passes ([`search::remeasure_front`]): a search takes minutes on a
//!    machine whose load changes, and the points the choice is between must be timed under the
//!    same conditions.
//!
//! Compiled candidates are cached by their canonical qconfig text, and calibration runs once per
//! observer, not once per candidate ([`evaluate::Context`]).
//!
//! # The result ([`front`], [`plot`])
//! The candidates as a table by latency with the front marked, the chosen point (the most
//! accurate within `--max-latency-ms` that meets `--max-drop` or `--min-sqnr`) written to `-o` as
//! qconfig with a comment header giving its figures, and with `--report` an HTML page with an SVG
//! scatter of every candidate and the front drawn. A budget below every candidate is an error
//! naming the fastest candidate's latency and accuracy.
//!
//! # Beyond one machine ([`jobs`])
//! `--emit-jobs` writes a round's candidates as JSON lines that `qforge tune-job` evaluates one
//! at a time anywhere; `--merge DIR` reads their results into the same front and choice.

pub mod candidates;
pub mod evaluate;
pub mod front;
pub mod jobs;
pub mod latency;
pub mod plot;
pub mod search;

pub use candidates::{Candidate, Choice, Granularity, Policy};
pub use evaluate::{Context, Evaluated, Setup};
pub use front::Constraint;
pub use search::Space;

/// The `-o` file of the chosen candidate: a comment header with its figures and how to compile
/// it, then its qconfig text.
pub fn chosen_text(e: &Evaluated, setup: &Setup, budget: f64, fp32_top1: Option<f64>) -> String {
    let mut h = format!(
        "# written by `qforge tune`: the most accurate candidate within --max-latency-ms {budget}\n\
         # candidate `{}` ({}): {}, latency {:.4} ms\n\
         # latency {}\n",
        e.candidate.label,
        e.summary,
        front::accuracy_text(e),
        e.latency_ms,
        setup.latency_kind()
    );
    if let Some(f) = fp32_top1 {
        h.push_str(&format!("# fp32 top-1 {:.2}%\n", f * 100.0));
    }
    h.push_str(&format!("# reproduce: {}\n\n", setup.reproduce("THIS.toml")));
    h + &e.toml
}
