//! The Pareto front of accuracy against latency, the chosen point, and the front as a table.
//!
//! Accuracy orders by top-1 when there are labels, ties broken by the output's SQNR against
//! FP32 (top-1 on a small set ties often); without labels by SQNR alone. A candidate is on the
//! front when no other is at least as fast and at least as accurate and strictly better in one
//! of the two. The chosen point is the most accurate candidate within the latency budget that
//! meets the accuracy constraint (`--max-drop`: top-1 at most that far below FP32's;
//! `--min-sqnr`), the faster one on a tie.

use super::evaluate::{Evaluated, Setup};
use std::cmp::Ordering;

/// What accuracy a candidate must keep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Constraint {
    None,
    /// Top-1 at most this far (a fraction) below the FP32 model's.
    MaxDrop(f64),
    /// Output SQNR against FP32 at least this (dB).
    MinSqnr(f64),
}

/// Orders two candidates by accuracy (top-1, then SQNR).
pub fn cmp_accuracy(a: &Evaluated, b: &Evaluated) -> Ordering {
    let t = |e: &Evaluated| e.top1.unwrap_or(0.0);
    t(a).total_cmp(&t(b)).then(a.sqnr_db.total_cmp(&b.sqnr_db))
}

/// Whether `a` dominates `b`.
pub fn dominates(a: &Evaluated, b: &Evaluated) -> bool {
    let acc = cmp_accuracy(a, b);
    a.latency_ms <= b.latency_ms && acc != Ordering::Less && (a.latency_ms < b.latency_ms || acc == Ordering::Greater)
}

/// The candidates sorted by latency (then accuracy, best first, then fewer per-layer exceptions,
/// then key), with whether each is on the front.
pub fn front(all: &[Evaluated]) -> Vec<(Evaluated, bool)> {
    let mut v: Vec<Evaluated> = all.to_vec();
    v.sort_by(|a, b| {
        a.latency_ms
            .total_cmp(&b.latency_ms)
            .then(cmp_accuracy(b, a))
            .then(a.candidate.policy.layers.len().cmp(&b.candidate.policy.layers.len()))
            .then(a.key.cmp(&b.key))
    });
    // of candidates with the same latency and accuracy, the first (fewest exceptions) stands for
    // them on the front
    let same = |a: &Evaluated, b: &Evaluated| a.latency_ms == b.latency_ms && cmp_accuracy(a, b) == Ordering::Equal;
    let on: Vec<bool> = v
        .iter()
        .enumerate()
        .map(|(i, e)| !v.iter().any(|o| dominates(o, e)) && !v[..i].iter().any(|o| same(o, e)))
        .collect();
    v.into_iter().zip(on).collect()
}

/// Whether `e` meets the accuracy constraint.
pub fn meets(e: &Evaluated, c: Constraint, fp32_top1: Option<f64>) -> bool {
    match c {
        Constraint::None => true,
        Constraint::MaxDrop(d) => match (e.top1, fp32_top1) {
            (Some(t), Some(f)) => f - t <= d + 1e-12,
            _ => false,
        },
        Constraint::MinSqnr(db) => e.sqnr_db >= db,
    }
}

/// Why no candidate could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum NoChoice {
    #[error(
        "no candidate meets --max-latency-ms {budget}: the fastest, `{label}`, takes {latency:.4} ms ({kind}) at {acc}"
    )]
    Latency { budget: f64, label: String, latency: f64, kind: &'static str, acc: String },
    #[error(
        "no candidate within --max-latency-ms {budget} meets the accuracy constraint: the most accurate of them, \
         `{label}`, reaches {acc} at {latency:.4} ms"
    )]
    Accuracy { budget: f64, label: String, latency: f64, acc: String },
    #[error("no candidate was evaluated")]
    Empty,
}

/// `top-1 99.50%, SQNR 31.20 dB` (or the SQNR alone).
pub fn accuracy_text(e: &Evaluated) -> String {
    match e.top1 {
        Some(t) => format!("top-1 {:.2}%, SQNR {}", t * 100.0, db(e.sqnr_db)),
        None => format!("SQNR {}, cosine {:.6}", db(e.sqnr_db), e.cosine),
    }
}

/// An SQNR: `31.20 dB`, or `inf dB` for an exact output.
pub fn db(x: f64) -> String {
    if x.is_infinite() && x > 0.0 {
        "inf dB".to_string()
    } else {
        format!("{x:.2} dB")
    }
}

/// The most accurate candidate within `budget` ms meeting `c` (the faster on a tie).
pub fn choose(all: &[Evaluated], budget: f64, c: Constraint, fp32_top1: Option<f64>) -> Result<Evaluated, NoChoice> {
    let kind = |e: &Evaluated| if e.predicted { "predicted" } else { "measured" };
    let fastest = all
        .iter()
        .min_by(|a, b| a.latency_ms.total_cmp(&b.latency_ms).then(cmp_accuracy(b, a)))
        .ok_or(NoChoice::Empty)?;
    let within: Vec<&Evaluated> = all.iter().filter(|e| e.latency_ms <= budget).collect();
    if within.is_empty() {
        return Err(NoChoice::Latency {
            budget,
            label: fastest.candidate.label.clone(),
            latency: fastest.latency_ms,
            kind: kind(fastest),
            acc: accuracy_text(fastest),
        });
    }
    let best = |v: &[&Evaluated]| -> Option<Evaluated> {
        v.iter()
            .max_by(|a, b| cmp_accuracy(a, b).then(b.latency_ms.total_cmp(&a.latency_ms)).then(b.key.cmp(&a.key)))
            .map(|e| (*e).clone())
    };
    let ok: Vec<&Evaluated> = within.iter().copied().filter(|e| meets(e, c, fp32_top1)).collect();
    match best(&ok) {
        Some(e) => Ok(e),
        None => {
            let e = best(&within).ok_or(NoChoice::Empty)?;
            let acc = accuracy_text(&e);
            Err(NoChoice::Accuracy { budget, label: e.candidate.label, latency: e.latency_ms, acc })
        }
    }
}

/// The table of every candidate, by latency: id (its place in that order), how it was made, its
/// precision summary, accuracy, latency, and marks for the front (`*`) and the chosen point
/// (`>`).
pub fn table(rows: &[(Evaluated, bool)], chosen: Option<&str>, setup: &Setup) -> String {
    let labels = rows.iter().any(|(e, _)| e.top1.is_some());
    let predicted = rows.first().is_some_and(|(e, _)| e.predicted);
    let lat = if predicted { "predicted ms" } else { "measured ms" };
    let wl = rows.iter().map(|(e, _)| e.candidate.label.len()).max().unwrap_or(9).max(9);
    let ws = rows.iter().map(|(e, _)| e.summary.len()).max().unwrap_or(9).max(9);
    let mut s = format!("latency: {}\n", setup.latency_kind());
    s.push_str(&format!(
        "   {:>3} {:<wl$}  {:<ws$}  {:>7}  {:>9}  {:>8}  {:>12}  {}\n",
        "#",
        "candidate",
        "precision",
        if labels { "top-1" } else { "" },
        "SQNR dB",
        "cosine",
        lat,
        "round"
    ));
    for (i, (e, on)) in rows.iter().enumerate() {
        let mark = match (chosen == Some(e.key.as_str()), on) {
            (true, _) => ">*",
            (false, true) => " *",
            (false, false) => "  ",
        };
        let sq = if e.sqnr_db.is_infinite() { "inf".to_string() } else { format!("{:.2}", e.sqnr_db) };
        s.push_str(&format!(
            "{mark} {:>3} {:<wl$}  {:<ws$}  {:>7}  {:>9}  {:>8.6}  {:>12.4}  {}\n",
            i + 1,
            e.candidate.label,
            e.summary,
            e.top1.map_or(String::new(), |t| format!("{:.2}%", t * 100.0)),
            sq,
            e.cosine,
            e.latency_ms,
            e.candidate.round
        ));
    }
    s.push_str("* on the Pareto front (accuracy against latency), > chosen\n");
    s
}
