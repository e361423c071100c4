//! What a pipeline run measured against its budgets: per-stage and end-to-end mean and p99
//! latency, frames per second, the memory each stage's program works in and the process's peak
//! RSS, each budget passed or failed; and the HTML page of it with the cascaded-error table.

use super::cascade::Cascade;
use super::config::Statistic;
use super::runner::{Pipeline, Run, StageMemory};
use crate::stats::percentile;
use maud::{html, Markup};
use serde::Serialize;

/// Latency figures of a list of times (ms).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Latency {
    pub mean_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(times: &[f64]) -> Latency {
        let mut v = times.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        Latency {
            mean_ms: v.iter().sum::<f64>() / v.len().max(1) as f64,
            p99_ms: percentile(&v, 0.99),
            max_ms: v.last().copied().unwrap_or(f64::NAN),
        }
    }

    fn get(&self, s: Statistic) -> f64 {
        match s {
            Statistic::Mean => self.mean_ms,
            Statistic::P99 => self.p99_ms,
        }
    }
}

/// One stage's row.
#[derive(Clone, Debug, Serialize)]
pub struct StageRow {
    pub name: String,
    pub precision: String,
    pub latency: Latency,
    pub budget_ms: Option<f64>,
    pub pass: Option<bool>,
    pub memory: StageMemory,
}

/// One budget, checked.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What is checked: `stage detector p99 latency`, `end-to-end p99 latency`, ...
    pub what: String,
    pub measured: String,
    pub budget: String,
    pub pass: bool,
}

/// A run's report.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub pipeline: String,
    /// `pipelined` or `sequential`.
    pub mode: String,
    pub frames: usize,
    pub warmup: usize,
    pub statistic: Statistic,
    pub stages: Vec<StageRow>,
    pub end_to_end: Latency,
    pub fps: f64,
    pub wall_s: f64,
    pub peak_rss_bytes: Option<u64>,
    pub checks: Vec<Check>,
    /// With a comparison run of the other mode: its frames per second.
    pub other_fps: Option<(String, f64)>,
}

impl RunReport {
    /// The figures of `run` against `p`'s budgets.
    pub fn new(
        p: &Pipeline,
        run: &Run,
        pipelined: bool,
        warmup: usize,
        memory: &[StageMemory],
        peak: Option<u64>,
    ) -> RunReport {
        let st = p.config.budget.statistic;
        let mut checks = Vec::new();
        let stages: Vec<StageRow> = p
            .config
            .stages
            .iter()
            .enumerate()
            .map(|(s, c)| {
                let latency = Latency::of(&run.stage_ms[s]);
                let pass = c.budget_ms.map(|b| latency.get(st) <= b);
                if let (Some(b), Some(ok)) = (c.budget_ms, pass) {
                    checks.push(Check {
                        what: format!("stage `{}` {} latency", c.name, st.name()),
                        measured: format!("{:.3} ms", latency.get(st)),
                        budget: format!("{b} ms"),
                        pass: ok,
                    });
                }
                StageRow {
                    name: c.name.clone(),
                    precision: c.precision.name().to_string(),
                    latency,
                    budget_ms: c.budget_ms,
                    pass,
                    memory: memory[s],
                }
            })
            .collect();
        let end_to_end = Latency::of(&run.end_to_end_ms);
        let b = &p.config.budget;
        if let Some(l) = b.latency_ms {
            checks.push(Check {
                what: format!("end-to-end {} latency", st.name()),
                measured: format!("{:.3} ms", end_to_end.get(st)),
                budget: format!("{l} ms"),
                pass: end_to_end.get(st) <= l,
            });
        }
        if let Some(f) = b.fps {
            checks.push(Check {
                what: "frames per second".into(),
                measured: format!("{:.1}", run.fps()),
                budget: format!("at least {f}"),
                pass: run.fps() >= f,
            });
        }
        if let Some(m) = b.memory_mb {
            let mb = peak.map(|p| p as f64 / (1 << 20) as f64);
            checks.push(Check {
                what: "process peak RSS".into(),
                measured: mb.map_or("unknown".into(), |v| format!("{v:.1} MiB")),
                budget: format!("{m} MiB"),
                pass: mb.is_some_and(|v| v <= m),
            });
        }
        RunReport {
            pipeline: p.config.name.clone(),
            mode: if pipelined { "pipelined" } else { "sequential" }.into(),
            frames: run.frames,
            warmup,
            statistic: st,
            stages,
            end_to_end,
            fps: run.fps(),
            wall_s: run.wall_s,
            peak_rss_bytes: peak,
            checks,
            other_fps: None,
        }
    }

    /// The budgets missed, as one line; `None` when every budget holds.
    pub fn failures(&self) -> Option<String> {
        let failed: Vec<String> = self
            .checks
            .iter()
            .filter(|c| !c.pass)
            .map(|c| format!("{} {} exceeds {}", c.what, c.measured, c.budget))
            .collect();
        (!failed.is_empty()).then(|| format!("budget missed: {}", failed.join("; ")))
    }

    /// The HTML page: the stages, the budget table and, when given, the cascaded-error table.
    pub fn to_html(&self, p: &Pipeline, cascade: Option<&Cascade>) -> String {
        let title = format!("qforge pipeline: {}", self.pipeline);
        let mib = |b: usize| format!("{:.2}", b as f64 / (1 << 20) as f64);
        let body: Markup = html! {
                    p.sub { (self.mode) ", " (self.frames) " frames after " (self.warmup) " warm-up frames; budgets checked against the "
                        (self.statistic.name()) " latency" }
                    h2 { "Stages" }
                    table {
                        tr { th { "stage" } th { "model" } th { "precision" } th { "inputs from" } }
                        @for &s in &p.plan.order {
                            @let c = &p.config.stages[s];
                            tr {
                                td.name { (c.name) }
                                td.name { (c.model.display().to_string()) }
                                td { (c.precision.name()) }
                                td.name { (sources(p, s)) }
                            }
                        }
                    }
                    h2 { "Budgets" }
                    table {
                        tr { th { "" } th { "mean ms" } th { "p99 ms" } th { "max ms" } th { "budget ms" } th { "arena MiB" } th { "weights MiB" } th { "" } }
                        @for r in &self.stages {
                            tr {
                                td.name { (r.name) " (" (r.precision) ")" }
                                td.num { (format!("{:.3}", r.latency.mean_ms)) }
                                td.num { (format!("{:.3}", r.latency.p99_ms)) }
                                td.num { (format!("{:.3}", r.latency.max_ms)) }
                                td.num { (r.budget_ms.map_or("-".into(), |b| b.to_string())) }
                                td.num { (r.memory.arena_bytes.map_or("-".into(), mib)) }
                                td.num { (mib(r.memory.weight_bytes)) }
                                td { (verdict(r.pass)) }
                            }
                        }
                        tr {
                            td { b { "end to end" } }
                            td.num { (format!("{:.3}", self.end_to_end.mean_ms)) }
                            td.num { (format!("{:.3}", self.end_to_end.p99_ms)) }
                            td.num { (format!("{:.3}", self.end_to_end.max_ms)) }
                            td.num { (p.config.budget.latency_ms.map_or("-".into(), |b| b.to_string())) }
                            td {} td {} td {}
                        }
                    }
                    p { (format!("{:.1} frames per second", self.fps))
                        @if let Some((mode, fps)) = &self.other_fps { (format!(" ({mode}: {fps:.1}, {:.2}x)", self.fps / fps)) }
                        "; process peak RSS " (self.peak_rss_bytes.map_or("unknown".into(), |b| format!("{} MiB", mib(b as usize)))) }
                    @if !self.checks.is_empty() {
                        table {
                            tr { th { "budget" } th { "measured" } th { "limit" } th { "" } }
                            @for c in &self.checks {
                                tr { td { (c.what) } td.num { (c.measured) } td.num { (c.budget) } td { (verdict(Some(c.pass))) } }
                            }
                        }
                    }
                    @if let Some(c) = cascade {
                        h2 { "Cascaded error" }
                        p.sub { "Each row: the pipeline with one stage at its precision policy and every other stage in FP32, compared at each output downstream of it with the all-FP32 pipeline, on the "
                            (c.frames) " sample frames." }
                        table {
                            tr { th { "quantized" } th { "precision" } th { "output" } th { "SQNR dB" } th { "cosine" } th { "max |err|" } }
                            @for r in &c.rows {
                                tr {
                                    td.name { (r.quantized) } td { (r.precision) } td.name { (r.output) }
                                    td.num { (if r.sqnr_db.is_infinite() { "inf".to_string() } else { format!("{:.1}", r.sqnr_db) }) }
                                    td.num { (format!("{:.6}", r.cosine)) }
                                    td.num { (format!("{:.2e}", r.max_abs)) }
                                }
                            }
                        }
                    }
                    p.sub { "Stage latency: the time of one run of the stage's compiled model. End-to-end latency: from the moment the first stage takes a frame to the moment its last output is done (queueing between stages included). Arena: the JIT program's intermediate tensors as its liveness plan places them; weights: the compiled graph's constants; peak RSS: VmHWM of the process (compilation included)." }
        };
        crate::report::render::page(&title, CSS, body)
    }
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:24px 32px;color:#222}table{border-collapse:collapse;font-size:13px;margin:6px 0}\
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left}th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}\
td.name{font-family:monospace}.sub{color:#666}.ok{color:#276221}.fail{color:#a01010;font-weight:bold}";

fn verdict(pass: Option<bool>) -> Markup {
    match pass {
        Some(true) => html! { span.ok { "pass" } },
        Some(false) => html! { span.fail { "FAIL" } },
        None => html! { "-" },
    }
}

/// Where stage `s`'s inputs come from, as `model input <- source` items.
pub fn sources(p: &Pipeline, s: usize) -> String {
    use super::graph::Source;
    p.plan.bindings[s]
        .iter()
        .zip(&p.inputs[s])
        .map(|(src, port)| {
            let from = match *src {
                Source::Input(i) => format!("input {}", p.config.inputs[i].name),
                Source::Stage { stage, output } => {
                    format!("{}.{}", p.config.stages[stage].name, p.plan.outputs[stage][output])
                }
            };
            format!("{} <- {from}", port.name)
        })
        .collect::<Vec<_>>()
        .join(", ")
}
