//! The HTML of `qforge report`, written with [maud], whose templates escape every interpolated
//! value by default: text from the model (names, ops, notes) cannot become markup. Raw markup
//! enters only through `PreEscaped`: the stylesheet, the timing comments and Graphviz's SVG.

use super::measure::{Accuracy, Latency, Report};
use crate::sensitivity::Sensitivity;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use qforge_ir::DType;
use qforge_passes::quantize::LayerSensitivity;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The section ids and titles, in order.
pub const SECTIONS: [(&str, &str); 9] = [
    ("summary", "Summary"),
    ("passes", "Passes"),
    ("nodes", "Nodes"),
    ("fusion", "Fusion"),
    ("sensitivity", "Sensitivity"),
    ("latency", "Latency"),
    ("size", "Size"),
    ("accuracy", "Accuracy"),
    ("graph", "Graph"),
];

const CSS: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px 32px;color:#222;
 max-width:1400px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:28px}
h3{font-size:15px}.sub{color:#666;margin:0 0 12px}nav a{margin-right:10px;color:#1a5fb4}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}th{background:#f3f3f3}
table.kv td:first-child{color:#555;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums}td.name{font-family:monospace;word-break:break-all}
td.what{font-family:monospace;font-size:12px;max-width:520px}td.share{white-space:nowrap;min-width:170px}td.wide{width:320px}
.chip{display:inline-block;padding:0 6px;border-radius:3px;border:1px solid #999;font-family:monospace}
.bar{display:inline-block;height:10px;background:#4a86c5;margin-right:6px;vertical-align:middle;min-width:1px}
.ok{color:#276221}.warn{color:#9c4a00}
details summary{cursor:pointer}.graph{overflow:auto;max-height:900px;border:1px solid #ddd}
";

/// Measured times sit between these comments; everything else in the report is deterministic
/// (tests strip the timing regions and compare the rest).
const TIMING: PreEscaped<&str> = PreEscaped("<!--timing-->");
const TIMING_END: PreEscaped<&str> = PreEscaped("<!--/timing-->");

/// `text` escaped for HTML element content and attribute values: the one escaper, shared with
/// the HTML-like labels of `qforge graph`.
pub fn escape(text: &str) -> String {
    html! { (text) }.into_string()
}

/// A standalone HTML page: `title` as the document title and first heading, `css` inline, then
/// `body` (every page qforge writes: the report, tune's and pipeline's).
pub fn page(title: &str, css: &str, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) }
                style { (PreEscaped(css)) }
            }
            body {
                h1 { (title) }
                (body)
            }
        }
    }
    .into_string()
}

/// The report's HTML text.
pub fn to_html(r: &Report) -> String {
    let title = format!("qforge report: {}", r.compiled.name);
    page(
        &title,
        CSS,
        html! {
                p.sub { (r.model) }
                nav { @for (id, name) in SECTIONS { a href={ "#" (id) } { (name) } " " } }
                (summary(r))
                (passes(r))
                (nodes(r))
                (fusion(r))
                (sensitivity_section(&r.sensitivity))
                (latency_section(&r.latency))
                (size(r))
                (accuracy_section(&r.accuracy))
                (graph(&r.graph_svg))
        },
    )
}

/// A two-column table row: a name and its value.
pub fn kv(k: &str, v: &str) -> Markup {
    html! { tr { td { (k) } td { (v) } } }
}

/// A dtype as a coloured chip (the colours of `qforge graph`).
fn chip(d: DType) -> Markup {
    html! { span.chip style={ "background:" (crate::graph_dot::dtype_color(d)) } { (d.name()) } }
}

/// An SQNR: `12.34 dB`, or `∞ dB (exact)` when there is no error at all.
fn db(x: f64) -> String {
    if x.is_infinite() && x > 0.0 {
        "∞ dB (exact)".to_string()
    } else {
        format!("{x:.2} dB")
    }
}

fn pct(x: Option<f64>) -> String {
    x.map_or("–".to_string(), |t| format!("{:.2}%", t * 100.0))
}

fn summary(r: &Report) -> Markup {
    let sig = |v: &crate::summary::ValueInfo| {
        let dims: Vec<String> =
            v.shape.iter().map(|d| d.as_str().map(str::to_string).unwrap_or_else(|| d.to_string())).collect();
        format!("{}: {}[{}]", v.name, v.dtype, dims.join(","))
    };
    let (f, c) = (&r.fp32, &r.compiled);
    let ops: BTreeSet<&String> = f.ops.keys().chain(c.ops.keys()).collect();
    let count = |m: &BTreeMap<String, usize>, op: &str| m.get(op).map_or("–".into(), |n| n.to_string());
    html! {
        section id="summary" {
            h2 { "Model summary" }
            table.kv {
                @for v in &c.inputs { (kv("input", &sig(v))) }
                @for v in &c.outputs { (kv("output", &sig(v))) }
                @for (k, v) in &r.options { (kv(k, v)) }
                (kv("profile", &r.profile))
                (kv("nodes (fp32 → compiled)", &format!("{} → {}", f.nodes.len(), c.nodes.len())))
                (kv("parameters (fp32 → compiled)", &format!("{} → {}", f.params, c.params)))
                (kv("weight bytes (fp32 → compiled)", &format!("{} → {}", f.weight_bytes, c.weight_bytes)))
            }
            h3 { "Op counts" }
            table {
                tr { th { "op" } th { "fp32" } th { "compiled" } }
                @for op in ops {
                    tr { td { (op) } td.num { (count(&f.ops, op)) } td.num { (count(&c.ops, op)) } }
                }
            }
        }
    }
}

fn passes(r: &Report) -> Markup {
    html! {
        section id="passes" {
            h2 { "Passes" }
            @if r.passes.is_empty() {
                p { "No pass ran (--opt-level 0 and nothing asked for)." }
            } @else {
                table {
                    tr { th { "pass" } th { "changed" } th { "counters" } th { "notes" } }
                    @for p in &r.passes {
                        @let stats: Vec<String> = p.stats.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                        tr {
                            td { (p.pass) }
                            td { @if p.changed { "yes" } @else { "no" } }
                            td { (stats.join(", ")) }
                            td {
                                @if !p.notes.is_empty() {
                                    details {
                                        summary { (p.notes.len()) " note(s)" }
                                        ul { @for n in &p.notes { li { (n) } } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn nodes(r: &Report) -> Markup {
    let present: BTreeSet<&str> = r.nodes.iter().map(|n| n.dtype.name()).collect();
    html! {
        section id="nodes" {
            h2 { "Precision and quantization per node" }
            p {
                @for d in DType::ALL.iter().filter(|d| present.contains(d.name())) {
                    (chip(*d)) " ×" (r.nodes.iter().filter(|n| n.dtype == *d).count()) " "
                }
            }
            table {
                tr {
                    th { "#" } th { "node" } th { "op" } th { "dtype" } th { "shape" }
                    th { "quantization" } th { "constants" } th { "absorbed" }
                }
                @for (i, n) in r.nodes.iter().enumerate() {
                    tr {
                        td.num { (i) }
                        td.name { (n.name) }
                        td { (n.op) }
                        td { (chip(n.dtype)) }
                        td { (n.shape) }
                        td { (n.quant) }
                        td { @for (k, c) in n.consts.iter().enumerate() { @if k > 0 { br; } (c) } }
                        td {
                            @if !n.from.is_empty() {
                                details {
                                    summary { (n.from.len()) }
                                    @for (k, f) in n.from.iter().enumerate() { @if k > 0 { br; } (f) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn fusion(r: &Report) -> Markup {
    html! {
        section id="fusion" {
            h2 { "Fusion report" }
            @if r.unfused.is_empty() {
                p.ok { "Every quantize/dequantize is in an integer kernel or at the graph's edge." }
            } @else {
                p.warn { (r.unfused.len()) " leftover(s):" }
                table {
                    tr { th { "node" } th { "op" } th { "reason" } }
                    @for u in &r.unfused { tr { td.name { (u.node) } td { (u.op) } td { (u.reason) } } }
                }
            }
        }
    }
}

fn sensitivity_section(s: &Result<Sensitivity, String>) -> Markup {
    html! {
        section id="sensitivity" {
            h2 { "Per-layer INT8 sensitivity" }
            @match s {
                Err(e) => { p.warn { "No sensitivity study: " (e) } }
                Ok(s) => {
                    p {
                        "Each quantizable layer quantized alone (static INT8, the rest float), output SQNR against \
                         the float model on " (s.samples) " sample(s); least robust first. All layers INT8: SQNR "
                        (db(s.all_sqnr_db)) ", top-1 " (pct(s.all_top1)) " (float " (pct(s.fp32_top1)) ")."
                    }
                    (sensitivity_chart(&s.layers))
                }
            }
        }
    }
}

fn latency_section(l: &Result<Latency, String>) -> Markup {
    let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1e3);
    html! {
        section id="latency" {
            h2 { "Latency per kernel" }
            @match l {
                Err(e) => { p.warn { "No latency figures: " (e) } }
                Ok(l) => {
                    @let total: Duration = l.steps.iter().map(|s| s.mean).sum();
                    @let total_s = total.as_secs_f64().max(1e-12);
                    @let speedup = l.fp32_median.as_secs_f64() / l.compiled_median.as_secs_f64().max(1e-12);
                    p { "JIT program at batch 1, mean of " (l.iters) " timed run(s) after warm-up." }
                    (TIMING)
                    table.kv {
                        (kv("fp32 end-to-end median (ms)", &ms(l.fp32_median)))
                        (kv("compiled end-to-end median (ms)", &ms(l.compiled_median)))
                        (kv("speed-up", &format!("{speedup:.2}×")))
                        (kv("sum of kernel means (ms)", &ms(total)))
                    }
                    (TIMING_END)
                    table {
                        tr { th { "#" } th { "step" } th { "kind" } th { "what" } th { "µs" } th { "share" } }
                        @for (i, s) in l.steps.iter().enumerate() {
                            @let share = s.mean.as_secs_f64() / total_s;
                            tr {
                                td.num { (i) }
                                td.name { (s.name) }
                                td { (s.kind) }
                                td.what { (s.what) }
                                (TIMING)
                                td.num { (format!("{:.2}", s.mean.as_secs_f64() * 1e6)) }
                                td.share {
                                    div.bar style={ "width:" (format!("{:.0}", share * 120.0)) "px" } {}
                                    (format!("{:.1}%", share * 100.0))
                                }
                                (TIMING_END)
                            }
                        }
                    }
                }
            }
        }
    }
}

fn size(r: &Report) -> Markup {
    let (f, c) = (r.fp32.weight_bytes, r.compiled.weight_bytes);
    let max = f.max(c).max(1) as f64;
    let kib = |b: usize| format!("{:.1} KiB", b as f64 / 1024.0);
    let ratio = if c == 0 { "–".to_string() } else { format!("{:.2}×", f as f64 / c as f64) };
    html! {
        section id="size" {
            h2 { "Size" }
            table {
                tr { th {} th { "weight bytes" } th {} }
                @for (name, b) in [("fp32", f), ("compiled", c)] {
                    tr {
                        td { (name) }
                        td.num { (b) " (" (kib(b)) ")" }
                        td.wide { div.bar style={ "width:" (format!("{:.1}", b as f64 / max * 100.0)) "%" } {} }
                    }
                }
            }
            p {
                "Compression " (ratio) "."
                @if let Ok(l) = &r.latency { " JIT arena at batch 1: " (kib(l.arena_bytes)) "." }
            }
        }
    }
}

fn accuracy_section(a: &Accuracy) -> Markup {
    html! {
        section id="accuracy" {
            h2 { "Accuracy" }
            p { "fp32 against compiled on " (a.samples) " sample(s)." }
            table.kv {
                @if a.fp32_top1.is_some() {
                    (kv("fp32 top-1", &pct(a.fp32_top1)))
                    (kv("compiled top-1", &pct(a.compiled_top1)))
                    @if let (Some(f), Some(c)) = (a.fp32_top1, a.compiled_top1) {
                        (kv("change", &format!("{:+.2} points", (c - f) * 100.0)))
                    }
                } @else {
                    (kv("top-1", "– (no --labels)"))
                }
                (kv("output SQNR vs fp32", &db(a.sqnr_db)))
                (kv("output cosine similarity vs fp32", &format!("{:.6}", a.cosine)))
                (kv("largest absolute difference", &format!("{:.6}", a.max_abs_diff)))
                (kv("argmax agreement with fp32", &format!("{:.2}%", a.argmax_agreement * 100.0)))
            }
        }
    }
}

fn graph(svg: &Result<String, String>) -> Markup {
    html! {
        section id="graph" {
            h2 { "Compiled graph" }
            @match svg {
                // Graphviz's own SVG, inlined without its XML prolog and doctype
                Ok(svg) => { div.graph { (PreEscaped(&svg[svg.find("<svg").unwrap_or(0)..])) } }
                Err(e) => { p { "No picture: " (e) " (`qforge graph MODEL -o g.dot` writes the DOT text)." } }
            }
        }
    }
}

/// The sensitivity bar chart as SVG text (see [`sensitivity_chart`]).
pub fn sensitivity_svg(layers: &[LayerSensitivity]) -> String {
    sensitivity_chart(layers).into_string()
}

/// The sensitivity bar chart: one horizontal bar per layer (in the given order), its length the
/// output SQNR (infinite SQNR drawn at the largest finite one), coloured by robustness.
fn sensitivity_chart(layers: &[LayerSensitivity]) -> Markup {
    const ROW: f64 = 22.0;
    const LABEL: f64 = 300.0;
    const BARS: f64 = 520.0;
    const RIGHT: f64 = 170.0;
    if layers.is_empty() {
        return html! { p { "No quantizable layers." } };
    }
    let finite_max = layers.iter().map(|l| l.sqnr_db).filter(|x| x.is_finite()).fold(0f64, f64::max);
    let scale_max = (finite_max.max(1.0) / 10.0).ceil() * 10.0;
    let height = ROW * layers.len() as f64 + 30.0;
    let width = LABEL + BARS + RIGHT;
    let step = if scale_max > 100.0 { 20.0 } else { 10.0 };
    let ticks: Vec<f64> = (0..).map(|k| k as f64 * step).take_while(|t| *t <= scale_max + 1e-9).collect();
    let f1 = |x: f64| format!("{x:.1}");
    html! {
        svg xmlns="http://www.w3.org/2000/svg" width=(width) height=(height)
            viewBox={ "0 0 " (width) " " (height) } font-family="sans-serif" font-size="12" role="img"
            aria-label="per-layer SQNR" {
            // grid every 10 dB (20 dB past 100)
            @for t in &ticks {
                @let x = LABEL + t / scale_max * BARS;
                line x1=(f1(x)) y1="0" x2=(f1(x)) y2=(f1(height - 24.0)) stroke="#e3e3e3" {}
                text x=(f1(x)) y=(f1(height - 10.0)) text-anchor="middle" fill="#666" font-size="10" {
                    (format!("{t:.0} dB"))
                }
            }
            @for (i, l) in layers.iter().enumerate() {
                @let y = ROW * i as f64;
                @let v = if l.sqnr_db.is_finite() { l.sqnr_db } else { scale_max };
                @let w = (v.max(0.0) / scale_max * BARS).max(1.0);
                @let color = match l.sqnr_db { x if x < 15.0 => "#d9534f", x if x < 25.0 => "#f0ad4e", _ => "#5cb85c" };
                @let name = if l.node.chars().count() > 44 {
                    format!("…{}", l.node.chars().rev().take(43).collect::<Vec<_>>().into_iter().rev().collect::<String>())
                } else {
                    l.node.clone()
                };
                @let top1 = l.top1.map_or(String::new(), |t| format!(", top-1 {:.2}%", t * 100.0));
                g {
                    title { (l.node) " (" (l.op) "): " (db(l.sqnr_db)) (top1) "; from " (l.from.join(", ")) }
                    text x=(f1(LABEL - 6.0)) y=(f1(y + 15.0)) text-anchor="end" { (name) }
                    rect x=(LABEL) y=(f1(y + 4.0)) width=(f1(w)) height=(f1(ROW - 8.0)) fill=(color) {}
                    text x=(f1(LABEL + w + 5.0)) y=(f1(y + 15.0)) fill="#333" { (db(l.sqnr_db)) (top1) }
                }
            }
        }
    }
}
