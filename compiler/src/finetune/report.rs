//! The `finetune --report` page: the loss curve (an SVG line of every step's loss, skipped steps
//! marked, the observer freeze as a dashed line), in the plotting style of `tune`'s scatter, and
//! the run's settings and figures, through the one page builder (`report::render::page`). Every
//! interpolated value is escaped; no script, no external resource.

use crate::report::render::{kv, page};
use maud::{html, PreEscaped};
use qforge_passes::train::StepInfo;

const W: f64 = 640.0;
const H: f64 = 360.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 48.0;

/// The loss curve of `steps` (finite losses drawn; a skipped step as a red tick at the bottom).
pub fn svg(steps: &[StepInfo]) -> String {
    let finite: Vec<(usize, f64)> =
        steps.iter().filter(|s| s.loss.is_finite()).map(|s| (s.step, f64::from(s.loss))).collect();
    let x1 = steps.len().max(2) as f64 - 1.0;
    let (mut y0, mut y1) =
        finite.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &(_, y)| (a.min(y), b.max(y)));
    if !y0.is_finite() || !y1.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.06).max(1e-6);
    (y0, y1) = ((y0 - pad).max(0.0), y1 + pad);
    let px = |x: f64| LEFT + x / x1 * (W - LEFT - RIGHT);
    let py = |y: f64| TOP + (y1 - y) / (y1 - y0) * (H - TOP - BOTTOM);
    let mut path = String::new();
    for (i, &(x, y)) in finite.iter().enumerate() {
        path.push_str(&format!("{}{:.1},{:.1}", if i == 0 { "M" } else { " L" }, px(x as f64), py(y)));
    }
    let freeze = steps.iter().position(|s| !s.observing).filter(|&p| p > 0);
    let ticks = |a: f64, b: f64| -> Vec<f64> { (0..=4).map(|k| a + (b - a) * k as f64 / 4.0).collect() };
    html! {
        svg xmlns="http://www.w3.org/2000/svg" width=(W) height=(H) viewBox={ "0 0 " (W) " " (H) } font-family="sans-serif" font-size="11" {
            rect x=(LEFT) y=(TOP) width=(W - LEFT - RIGHT) height=(H - TOP - BOTTOM) fill="#fafafa" stroke="#999" {}
            @for t in ticks(0.0, x1) {
                line x1=(format!("{:.1}", px(t))) x2=(format!("{:.1}", px(t))) y1=(H - BOTTOM) y2=(H - BOTTOM + 4.0) stroke="#999" {}
                text x=(format!("{:.1}", px(t))) y=(H - BOTTOM + 16.0) text-anchor="middle" { (format!("{t:.0}")) }
            }
            @for t in ticks(y0, y1) {
                line x1=(LEFT - 4.0) x2=(LEFT) y1=(format!("{:.1}", py(t))) y2=(format!("{:.1}", py(t))) stroke="#999" {}
                text x=(LEFT - 6.0) y=(format!("{:.1}", py(t) + 4.0)) text-anchor="end" { (format!("{t:.4}")) }
            }
            text x=(LEFT + (W - LEFT - RIGHT) / 2.0) y=(H - 8.0) text-anchor="middle" { "step" }
            text x="14" y=(TOP + (H - TOP - BOTTOM) / 2.0) text-anchor="middle" transform={ "rotate(-90 14 " (format!("{:.1}", TOP + (H - TOP - BOTTOM) / 2.0)) ")" } { "loss" }
            @if let Some(f) = freeze {
                line x1=(format!("{:.1}", px(f as f64))) x2=(format!("{:.1}", px(f as f64))) y1=(TOP) y2=(H - BOTTOM) stroke="#26a269" stroke-dasharray="5,4" {}
                text x=(format!("{:.1}", px(f as f64) + 4.0)) y=(TOP + 12.0) fill="#26a269" { "observers frozen" }
            }
            path d=(path) fill="none" stroke="#1a5fb4" stroke-width="1.5" {}
            @for s in steps.iter().filter(|s| s.skipped) {
                line x1=(format!("{:.1}", px(s.step as f64))) x2=(format!("{:.1}", px(s.step as f64))) y1=(H - BOTTOM - 8.0) y2=(H - BOTTOM) stroke="#c01c28" {
                    title { "step " (s.step) " skipped (loss scale " (s.loss_scale) ")" }
                }
            }
        }
    }
    .into_string()
}

/// The page: `settings` and `figures` as key-value rows, then the curve.
pub fn html(model: &str, settings: &[(String, String)], figures: &[(String, String)], steps: &[StepInfo]) -> String {
    page(
        &format!("qforge finetune: {model}"),
        CSS,
        html! {
            section id="settings" {
                h2 { "Settings" }
                table { @for (k, v) in settings { (kv(k, v)) } }
            }
            section id="figures" {
                h2 { "Result" }
                table { @for (k, v) in figures { (kv(k, v)) } }
            }
            section id="loss" {
                h2 { "Loss" }
                (PreEscaped(svg(steps)))
            }
        },
    )
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:24px 32px;color:#222}\
    table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ddd;padding:3px 7px;text-align:left}";
