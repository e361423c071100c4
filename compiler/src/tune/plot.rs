//! The search drawn: an SVG scatter plot of every candidate (latency across, accuracy up: top-1
//! with labels, else SQNR), the Pareto front as a step line through its points, the chosen point
//! ringed and the latency budget as a dashed line; and the `--report` HTML page around it (the
//! plot, the search's figures and the table), written with maud as `qforge report` is: every
//! interpolated value escaped, no script, no external resource.

use super::evaluate::{Evaluated, Setup};
use super::front::{accuracy_text, db};
use crate::report::render::{kv, page};
use maud::{html, PreEscaped};

const W: f64 = 640.0;
const H: f64 = 400.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 48.0;

/// The y value of a candidate: top-1 (%) with labels, else SQNR (dB; an exact output drawn at
/// the top of the axis).
fn y_of(e: &Evaluated, top_db: f64) -> f64 {
    match e.top1 {
        Some(t) => t * 100.0,
        None if e.sqnr_db.is_finite() => e.sqnr_db,
        None => top_db,
    }
}

/// The scatter plot of `rows` (by latency, with their front marks).
pub fn svg(rows: &[(Evaluated, bool)], chosen: Option<&str>, budget: f64) -> String {
    let labels = rows.iter().any(|(e, _)| e.top1.is_some());
    let finite: Vec<f64> = rows.iter().map(|(e, _)| e.sqnr_db).filter(|x| x.is_finite()).collect();
    let top_db = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max).max(0.0) + 10.0;
    let ys: Vec<f64> = rows.iter().map(|(e, _)| y_of(e, top_db)).collect();
    let xs: Vec<f64> = rows.iter().map(|(e, _)| e.latency_ms).collect();
    let (mut x0, mut x1) = (0.0f64, xs.iter().copied().fold(budget, f64::max) * 1.08);
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let (mut y0, mut y1) =
        (ys.iter().copied().fold(f64::INFINITY, f64::min), ys.iter().copied().fold(f64::NEG_INFINITY, f64::max));
    if !y0.is_finite() || !y1.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.08).max(if labels { 0.5 } else { 1.0 });
    (y0, y1) = (y0 - pad, y1 + pad);
    x0 = x0.min(0.0);
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let py = |y: f64| TOP + (y1 - y) / (y1 - y0) * (H - TOP - BOTTOM);
    let kind = if rows.first().is_some_and(|(e, _)| e.predicted) { "predicted" } else { "measured" };
    // the front as a staircase: each front point's accuracy holds until the next, faster-to-slower
    let mut path = String::new();
    for ((_, on), (x, y)) in rows.iter().zip(xs.iter().zip(&ys)) {
        if !on {
            continue;
        }
        if path.is_empty() {
            path.push_str(&format!("M{:.1},{:.1}", px(*x), py(*y)));
        } else {
            path.push_str(&format!(" H{:.1} V{:.1}", px(*x), py(*y)));
        }
    }
    let ticks = |a: f64, b: f64| -> Vec<f64> { (0..=4).map(|k| a + (b - a) * k as f64 / 4.0).collect() };
    let ylabel = if labels { "top-1 (%)" } else { "SQNR against FP32 (dB)" };
    html! {
        svg xmlns="http://www.w3.org/2000/svg" width=(W) height=(H) viewBox={ "0 0 " (W) " " (H) } font-family="sans-serif" font-size="11" {
            rect x=(LEFT) y=(TOP) width=(W - LEFT - RIGHT) height=(H - TOP - BOTTOM) fill="#fafafa" stroke="#999" {}
            @for t in ticks(x0, x1) {
                line x1=(format!("{:.1}", px(t))) x2=(format!("{:.1}", px(t))) y1=(H - BOTTOM) y2=(H - BOTTOM + 4.0) stroke="#999" {}
                text x=(format!("{:.1}", px(t))) y=(H - BOTTOM + 16.0) text-anchor="middle" { (format!("{t:.3}")) }
            }
            @for t in ticks(y0, y1) {
                line x1=(LEFT - 4.0) x2=(LEFT) y1=(format!("{:.1}", py(t))) y2=(format!("{:.1}", py(t))) stroke="#999" {}
                text x=(LEFT - 6.0) y=(format!("{:.1}", py(t) + 4.0)) text-anchor="end" { (format!("{t:.2}")) }
            }
            text x=(LEFT + (W - LEFT - RIGHT) / 2.0) y=(H - 8.0) text-anchor="middle" { "latency, ms (" (kind) ")" }
            text x="14" y=(TOP + (H - TOP - BOTTOM) / 2.0) text-anchor="middle" transform={ "rotate(-90 14 " (format!("{:.1}", TOP + (H - TOP - BOTTOM) / 2.0)) ")" } { (ylabel) }
            @if budget.is_finite() {
                line x1=(format!("{:.1}", px(budget))) x2=(format!("{:.1}", px(budget))) y1=(TOP) y2=(H - BOTTOM) stroke="#c01c28" stroke-dasharray="5,4" {}
                text x=(format!("{:.1}", px(budget) + 4.0)) y=(TOP + 12.0) fill="#c01c28" { "budget " (budget) " ms" }
            }
            path d=(path) fill="none" stroke="#1a5fb4" stroke-width="1.5" {}
            @for ((e, on), (x, y)) in rows.iter().zip(xs.iter().zip(&ys)) {
                circle cx=(format!("{:.1}", px(*x))) cy=(format!("{:.1}", py(*y))) r=(if *on { 4.5 } else { 3.0 })
                    fill=(if *on { "#1a5fb4" } else { "#9a9996" }) {
                    title { (e.candidate.label) ": " (e.summary) ", " (accuracy_text(e)) ", " (format!("{:.4}", e.latency_ms)) " ms" }
                }
                @if chosen == Some(e.key.as_str()) {
                    circle cx=(format!("{:.1}", px(*x))) cy=(format!("{:.1}", py(*y))) r="8" fill="none" stroke="#c01c28" stroke-width="2" {}
                }
            }
        }
    }
    .into_string()
}

/// What the report's header states about the search.
pub struct Figures {
    pub model: String,
    pub budget: f64,
    pub compiled: usize,
    pub measured: usize,
    pub predicted: usize,
    pub calibrations: usize,
    pub rounds: usize,
    pub seconds: f64,
    pub fp32_top1: Option<f64>,
}

/// The `--report` page.
pub fn html(rows: &[(Evaluated, bool)], chosen: Option<&Evaluated>, setup: &Setup, f: &Figures) -> String {
    let title = format!("qforge tune: {}", f.model);
    let pct = |x: Option<f64>| x.map_or("–".to_string(), |t| format!("{:.2}%", t * 100.0));
    let kv = |k: &str, v: String| kv(k, &v);
    page(
        &title,
        CSS,
        html! {
                section id="search" {
                    h2 { "Search" }
                    table {
                        (kv("latency", setup.latency_kind()))
                        (kv("budget", format!("{} ms", f.budget)))
                        (kv("candidates compiled", f.compiled.to_string()))
                        (kv("latencies measured / predicted", format!("{} / {}", f.measured, f.predicted)))
                        (kv("calibration passes", f.calibrations.to_string()))
                        (kv("rounds", f.rounds.to_string()))
                        (kv("search time", format!("{:.1} s", f.seconds)))
                        (kv("fp32 top-1", pct(f.fp32_top1)))
                        @if let Some(c) = chosen {
                            (kv("chosen", format!("{} ({}): {}, {:.4} ms", c.candidate.label, c.summary, accuracy_text(c), c.latency_ms)))
                        }
                    }
                }
                section id="front" {
                    h2 { "Accuracy against latency" }
                    (PreEscaped(svg(rows, chosen.map(|c| c.key.as_str()), f.budget)))
                }
                section id="candidates" {
                    h2 { "Candidates" }
                    table {
                        tr { th { "#" } th { "candidate" } th { "precision" } th { "top-1" } th { "SQNR" } th { "cosine" }
                             th { (if setup.latency.predicted() { "predicted ms" } else { "measured ms" }) } th { "front" } th { "round" } }
                        @for (i, (e, on)) in rows.iter().enumerate() {
                            tr class=(if chosen.is_some_and(|c| c.key == e.key) { "chosen" } else if *on { "front" } else { "" }) {
                                td.num { (i + 1) } td.name { (e.candidate.label) } td { (e.summary) } td.num { (pct(e.top1)) }
                                td.num { (db(e.sqnr_db)) } td.num { (format!("{:.6}", e.cosine)) } td.num { (format!("{:.4}", e.latency_ms)) }
                                td { (if *on { "yes" } else { "" }) } td.num { (e.candidate.round) }
                            }
                        }
                    }
                }
        },
    )
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:24px 32px;color:#222}\
    table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ddd;padding:3px 7px;text-align:left}\
    th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}td.name{font-family:monospace}\
    tr.front td{font-weight:600}tr.chosen td{background:#fdecea}";
