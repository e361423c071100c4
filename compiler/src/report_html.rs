//! `qforge report`: one self-contained HTML file about a compiled model.
//!
//! The file has no external resources and no script: inline CSS, inline SVG charts, and tables.
//! Its sections, each an element with a fixed `id`:
//!
//! * `summary`: inputs, outputs, the pipeline options, op counts (fp32 graph beside the compiled
//!   one), parameters and weight bytes ([`crate::summary::Summary`]);
//! * `passes`: what each pass of the pipeline did (counters and notes);
//! * `nodes`: each compiled node's op, output dtype, shape and quantization parameters, the
//!   constants it reads and what it absorbed;
//! * `fusion`: the fusion report ([`qforge_passes::report::fusion_report`]);
//! * `sensitivity`: per-layer INT8 sensitivity (each quantizable layer quantized alone, the rest
//!   float; the machinery of `qforge sensitivity`) as a horizontal bar chart of output SQNR, on at
//!   most `--sensitivity-samples` evaluation samples;
//! * `latency`: per-kernel time of the JIT program at batch 1 (`Program::run` with per-step
//!   times), and the end-to-end median of the fp32 and the compiled model;
//! * `size`: weight bytes of the fp32 and the compiled graph, and the JIT's arena;
//! * `accuracy`: fp32 against compiled on the evaluation set: top-1 with `--labels`, and always
//!   the output's SQNR, cosine similarity, largest difference and argmax agreement;
//! * `graph`: the compiled IR as an inline SVG picture ([`crate::graph_dot`]) when Graphviz is
//!   installed.
//!
//! "fp32" is the same model through the same pipeline without quantization or reduced precision.
//! Without `--quantize` and `--precision`, the report quantizes to static INT8 (as `qforge
//! quantize` does): the comparison is its point.
//!
//! Everything is deterministic except measured times, which are all inside `<!--timing-->` …
//! `<!--/timing-->` comments (tests strip those and compare the rest). All text from the model
//! (names, ops, notes) is HTML-escaped.

use crate::calibrate::{self, EngineEvaluator};
use crate::data;
use crate::driver::{load_model, Compiler};
use crate::pipeline::{PipelineOptions, Precision, QuantizeMode};
use crate::summary::Summary;
use anyhow::{bail, Context, Result};
use qforge_ir::interp::RunOptions;
use qforge_ir::{Graph, Op, QuantParams, Tensor};
use qforge_passes::quantize::{EvalSet, LayerSensitivity, Study};
use qforge_passes::report::Unfused;
use qforge_passes::PassReport;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Arguments of `qforge report` besides the pipeline (`--calib` is required).
#[derive(Clone, Debug, clap::Args)]
pub struct ReportArgs {
    /// Where to write the HTML report.
    #[arg(short, long, value_name = "OUT.html")]
    pub output: PathBuf,
    /// Evaluation inputs, batch on axis 0 (default: the calibration set).
    #[arg(long, value_name = "X.npy")]
    pub input: Option<PathBuf>,
    /// Integer labels of the evaluation inputs: adds top-1 accuracy (fp32, compiled, per layer).
    #[arg(long, value_name = "Y.npy")]
    pub labels: Option<PathBuf>,
    /// At most this many evaluation samples for the sensitivity study (0: all of them).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub sensitivity_samples: usize,
    /// Timed runs at batch 1 for the per-kernel latency.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub latency_iters: usize,
    /// Samples per run for the accuracy and sensitivity runs.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
}

/// One compiled node, as the `nodes` table shows it.
#[derive(Clone, Debug)]
pub struct NodeRow {
    pub name: String,
    pub op: String,
    pub dtype: qforge_ir::DType,
    pub shape: String,
    pub quant: String,
    /// The constants it reads: `in1 i8 [16,1,3,3] per axis 0`.
    pub consts: Vec<String>,
    pub from: Vec<String>,
}

/// Per-layer sensitivity and the all-layers figures.
#[derive(Clone, Debug)]
pub struct Sensitivity {
    pub layers: Vec<LayerSensitivity>,
    pub all_sqnr_db: f64,
    pub all_top1: Option<f64>,
    pub fp32_top1: Option<f64>,
    pub samples: usize,
}

/// One step of the JIT program with its mean time.
#[derive(Clone, Debug)]
pub struct StepTime {
    pub name: String,
    pub kind: &'static str,
    pub what: String,
    pub mean: Duration,
}

/// Per-kernel and end-to-end latency at batch 1.
#[derive(Clone, Debug)]
pub struct Latency {
    pub steps: Vec<StepTime>,
    pub iters: usize,
    pub fp32_median: Duration,
    pub compiled_median: Duration,
    pub arena_bytes: usize,
}

/// Compiled against fp32 on the evaluation set.
#[derive(Clone, Debug)]
pub struct Accuracy {
    pub samples: usize,
    pub fp32_top1: Option<f64>,
    pub compiled_top1: Option<f64>,
    pub sqnr_db: f64,
    pub cosine: f64,
    pub max_abs_diff: f64,
    pub argmax_agreement: f64,
}

/// Everything the report shows; [`Report::to_html`] renders it.
#[derive(Debug)]
pub struct Report {
    pub model: String,
    pub options: Vec<(String, String)>,
    pub profile: String,
    pub fp32: Summary,
    pub compiled: Summary,
    pub passes: Vec<PassReport>,
    pub nodes: Vec<NodeRow>,
    pub unfused: Vec<Unfused>,
    /// The study, or why there is none.
    pub sensitivity: std::result::Result<Sensitivity, String>,
    pub latency: std::result::Result<Latency, String>,
    pub accuracy: Accuracy,
    /// The inline SVG picture of the compiled graph, or why there is none.
    pub graph_svg: std::result::Result<String, String>,
}

/// The quantization parameters in a table cell: `scale 0.0145, zp 0` or a per-axis summary.
fn quant_cell(q: Option<&QuantParams>) -> String {
    match q {
        None => String::new(),
        Some(QuantParams::PerTensor { scale, zero_point }) => format!("scale {scale:.6e}, zp {zero_point}"),
        Some(QuantParams::PerAxis { axis, scales, zero_points }) => {
            let lo = scales.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = scales.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let zps: std::collections::BTreeSet<i32> = zero_points.iter().copied().collect();
            let zp = match zps.len() {
                1 => format!("zp {}", zps.iter().next().copied().unwrap_or(0)),
                n => format!("{n} distinct zps"),
            };
            format!("per axis {axis}: {} scales {lo:.4e}…{hi:.4e}, {zp}", scales.len())
        }
        Some(QuantParams::PerGroup { axis, group_size, scales, .. }) => {
            let lo = scales.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = scales.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            format!("per group of {group_size} on axis {axis}: {} scales {lo:.4e}…{hi:.4e}", scales.len())
        }
    }
}

/// The `nodes` table's rows: every node but the constants, in schedule order.
pub fn node_rows(g: &Graph) -> Result<Vec<NodeRow>> {
    let mut rows = vec![];
    for id in g.schedule()? {
        let n = g.node(id);
        if matches!(n.op, Op::Const(_)) {
            continue;
        }
        let Some(t) = n.outputs.first() else { continue };
        let consts = n
            .inputs()
            .iter()
            .enumerate()
            .filter_map(|(slot, v)| {
                let v = (*v)?;
                matches!(g.node(v.node).op, Op::Const(_)).then(|| {
                    let ty = g.value_type(v);
                    let q = quant_cell(ty.quant.as_ref());
                    let q = if q.is_empty() { String::new() } else { format!(" ({q})") };
                    format!("in{slot} {}{}{q}", ty.dtype, ty.shape)
                })
            })
            .collect();
        rows.push(NodeRow {
            name: n.name.clone(),
            op: crate::graph_dot::op_label(&n.op),
            dtype: t.dtype,
            shape: t.shape.to_string(),
            quant: quant_cell(t.quant.as_ref()),
            consts,
            from: n.from.clone(),
        });
    }
    Ok(rows)
}

/// SQNR (dB), cosine similarity and largest absolute difference of `out` against `reference`.
fn compare(out: &[f32], reference: &[f32]) -> (f64, f64, f64) {
    let (mut sig, mut noise, mut dot, mut oo, mut max) = (0f64, 0f64, 0f64, 0f64, 0f64);
    for (&a, &b) in out.iter().zip(reference) {
        let (a, b) = (a as f64, b as f64);
        sig += b * b;
        noise += (a - b) * (a - b);
        dot += a * b;
        oo += a * a;
        max = max.max((a - b).abs());
    }
    let sqnr = if noise == 0.0 { f64::INFINITY } else { 10.0 * (sig / noise).log10() };
    let cos = if sig == 0.0 || oo == 0.0 {
        if sig == oo {
            1.0
        } else {
            0.0
        }
    } else {
        dot / (sig.sqrt() * oo.sqrt())
    };
    (sqnr, cos, max)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// The first `n` rows of `x` (all of them when `n` is 0 or larger).
fn head(x: &Tensor, n: usize) -> Result<Tensor> {
    let rows = x.shape().first().copied().context("the evaluation input has no batch dimension")?;
    if n == 0 || n >= rows {
        return Ok(x.clone());
    }
    data::slice_batch(x, 0, n)
}

/// The sensitivity study of `qforge sensitivity` on the first `cap` samples of `x`.
fn sensitivity(
    model: &Path,
    opts: &PipelineOptions,
    calib: &Path,
    x: &Tensor,
    labels: Option<&[usize]>,
    args: &ReportArgs,
) -> Result<Sensitivity> {
    let cfg = calibrate::qconfig(opts)?;
    let g = calibrate::prepared_graph(model, opts)?;
    let eval =
        EngineEvaluator { engine: opts.engine, run: RunOptions { max_tensor_bytes: opts.max_tensor_bytes as u128 } };
    let calibration = calibrate::calibrate_file(&g, &cfg, calib, opts.calib_batch, &eval)?;
    let xs = head(x, args.sensitivity_samples)?;
    let samples = xs.shape()[0];
    let labels = labels.map(|l| &l[..samples.min(l.len())]);
    let batches: Vec<Vec<Tensor>> = calibrate::batches(&xs, args.batch)?.collect();
    let (reference, fp32_top1) = calibrate::reference_outputs(&g, &batches, &eval, labels)?;
    let study = Study {
        graph: &g,
        config: &cfg,
        calibration: &calibration,
        eval: &eval,
        set: EvalSet { batches: &batches, reference: &reference, labels },
    };
    let layers = calibrate::analyze(&study)?;
    let (all_sqnr_db, all_top1) = study.evaluate(&cfg).map_err(anyhow::Error::msg)?;
    Ok(Sensitivity { layers, all_sqnr_db, all_top1, fp32_top1, samples })
}

/// Per-step mean times of the compiled program and the end-to-end medians, at batch 1.
fn latency(exe: &crate::Executable, fp32: &crate::Executable, x: &Tensor, iters: usize) -> Result<Latency> {
    let (Some(jit), Some(fp_jit)) = (exe.jit(), fp32.jit()) else {
        bail!("per-kernel latency needs the JIT engine (--engine jit)");
    };
    let inputs = vec![data::slice_batch(x, 0, 1)?];
    let program = jit.program(&inputs)?;
    let fp_program = fp_jit.program(&inputs)?;
    let iters = iters.max(1);
    for _ in 0..3 {
        program.run(&inputs, None)?;
        fp_program.run(&inputs, None)?;
    }
    let mut times: Vec<Duration> = vec![];
    let (mut e2e, mut fp_e2e) = (vec![], vec![]);
    for _ in 0..iters {
        let t = Instant::now();
        fp_program.run(&inputs, None)?;
        fp_e2e.push(t.elapsed());
        let t = Instant::now();
        program.run(&inputs, None)?;
        e2e.push(t.elapsed());
        program.run(&inputs, Some(&mut times))?;
    }
    times.resize(program.report.steps.len(), Duration::ZERO);
    let steps = program
        .report
        .steps
        .iter()
        .zip(&times)
        .map(|(s, d)| StepTime { name: s.name.clone(), kind: s.kind, what: s.what.clone(), mean: *d / iters as u32 })
        .collect();
    Ok(Latency {
        steps,
        iters,
        fp32_median: median(fp_e2e),
        compiled_median: median(e2e),
        arena_bytes: program.report.arena_bytes,
    })
}

impl Report {
    /// Compiles `model` as `opts` says (INT8 when neither quantization nor precision is asked
    /// for), and the same model in fp32, and measures everything the report shows.
    pub fn build(model: &Path, args: &ReportArgs, mut opts: PipelineOptions) -> Result<Report> {
        let calib = opts.calib.clone().context("report needs calibration data: add --calib X.npy")?;
        if opts.quantize == QuantizeMode::None && opts.precision == Precision::Fp32 {
            opts.quantize = QuantizeMode::Int8;
        }
        let compiler = Compiler::new(opts.clone())?;
        let (g, passes) = compiler.optimize_reported(load_model(model)?, &mut |_, _| {})?;
        let fp_opts = PipelineOptions {
            quantize: QuantizeMode::None,
            calib: None,
            qconfig: None,
            smooth: None,
            min_sqnr: None,
            precision: Precision::Fp32,
            precision_config: None,
            ..opts.clone()
        };
        let fp_compiler = Compiler::new(fp_opts)?;
        let fp_g = fp_compiler.optimize(load_model(model)?)?;
        if g.inputs().len() != 1 {
            bail!("report needs a model with one input; this one has {}", g.inputs().len());
        }
        let x_path = args.input.as_deref().unwrap_or(&calib);
        let x = crate::npy::read(x_path)?;
        let n = x.shape().first().copied().context("the evaluation input has no batch dimension")?;
        if n == 0 {
            bail!("`{}` has no samples", x_path.display());
        }
        let labels = match &args.labels {
            Some(p) => {
                let l = data::labels(&crate::npy::read(p)?).with_context(|| format!("`{}`", p.display()))?;
                if l.len() != n {
                    bail!("{n} evaluation inputs (`{}`) but {} labels", x_path.display(), l.len());
                }
                Some(l)
            }
            None => None,
        };

        let exe = compiler.executable(g.clone());
        let fp_exe = fp_compiler.executable(fp_g.clone());
        let out = exe.run_batched(&x, args.batch)?;
        let reference = fp_exe.run_batched(&x, args.batch)?;
        let (sqnr_db, cosine, max_abs_diff) = compare(&out.to_f32_vec(), &reference.to_f32_vec());
        let (pred, fp_pred) = (data::argmax_rows(&out)?, data::argmax_rows(&reference)?);
        let agree = pred.iter().zip(&fp_pred).filter(|(a, b)| a == b).count() as f64 / n as f64;
        let top1 = |p: &[usize]| labels.as_deref().map(|l| data::top1(p, l)).transpose();
        let accuracy = Accuracy {
            samples: n,
            fp32_top1: top1(&fp_pred)?,
            compiled_top1: top1(&pred)?,
            sqnr_db,
            cosine,
            max_abs_diff,
            argmax_agreement: agree,
        };

        let sensitivity = sensitivity(model, &opts, &calib, &x, labels.as_deref(), args).map_err(|e| format!("{e:#}"));
        let latency = latency(&exe, &fp_exe, &x, args.latency_iters).map_err(|e| format!("{e:#}"));
        let title = format!("{}: compiled", g.name);
        let graph_svg = crate::graph_dot::to_dot(&g, &title)
            .map_err(|e| format!("{e:#}"))
            .and_then(|dot| crate::graph_dot::render_svg(&dot).map_err(|e| e.to_string()));

        let mut options = vec![
            ("quantize".to_string(), format!("{:?}", opts.quantize).to_lowercase()),
            ("precision".to_string(), format!("{:?}", opts.precision).to_lowercase()),
            ("opt-level".to_string(), opts.opt_level.to_string()),
            ("engine".to_string(), format!("{:?}", opts.engine).to_lowercase()),
            ("calib".to_string(), calib.display().to_string()),
        ];
        if let Some(m) = opts.calib_method {
            options.push(("calib-method".into(), m.name().to_string()));
        }
        if let Some(q) = &opts.qconfig {
            options.push(("qconfig".into(), q.display().to_string()));
        }
        options.push(("evaluation set".into(), format!("{} ({n} samples)", x_path.display())));
        Ok(Report {
            model: model.display().to_string(),
            options,
            profile: compiler.profile().name.clone(),
            fp32: Summary::of(&fp_g)?,
            compiled: Summary::of(&g)?,
            unfused: qforge_passes::report::fusion_report(&g, compiler.profile().dtypes.int8),
            nodes: node_rows(&g)?,
            passes,
            sensitivity,
            latency,
            accuracy,
            graph_svg,
        })
    }

    /// The HTML text.
    pub fn to_html(&self) -> String {
        let mut h = String::new();
        let title = format!("qforge report: {}", self.compiled.name);
        let _ = write!(
            h,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<h1>{}</h1>\n<p class=\"sub\">{}</p>\n",
            esc(&title),
            esc(&title),
            esc(&self.model)
        );
        h.push_str("<nav>");
        for (id, name) in SECTIONS {
            let _ = write!(h, "<a href=\"#{id}\">{name}</a> ");
        }
        h.push_str("</nav>\n");
        self.summary(&mut h);
        self.passes_section(&mut h);
        self.nodes_section(&mut h);
        self.fusion(&mut h);
        self.sensitivity_section(&mut h);
        self.latency_section(&mut h);
        self.size(&mut h);
        self.accuracy_section(&mut h);
        self.graph(&mut h);
        h.push_str("</body>\n</html>\n");
        h
    }

    fn summary(&self, h: &mut String) {
        h.push_str("<section id=\"summary\">\n<h2>Model summary</h2>\n<table class=\"kv\">\n");
        let sig = |v: &crate::summary::ValueInfo| {
            let dims: Vec<String> =
                v.shape.iter().map(|d| d.as_str().map(str::to_string).unwrap_or_else(|| d.to_string())).collect();
            format!("{}: {}[{}]", v.name, v.dtype, dims.join(","))
        };
        for v in &self.compiled.inputs {
            kv(h, "input", &sig(v));
        }
        for v in &self.compiled.outputs {
            kv(h, "output", &sig(v));
        }
        for (k, v) in &self.options {
            kv(h, k, v);
        }
        kv(h, "profile", &self.profile);
        kv(h, "nodes (fp32 → compiled)", &format!("{} → {}", self.fp32.nodes.len(), self.compiled.nodes.len()));
        kv(h, "parameters (fp32 → compiled)", &format!("{} → {}", self.fp32.params, self.compiled.params));
        kv(
            h,
            "weight bytes (fp32 → compiled)",
            &format!("{} → {}", self.fp32.weight_bytes, self.compiled.weight_bytes),
        );
        h.push_str("</table>\n<h3>Op counts</h3>\n<table>\n<tr><th>op</th><th>fp32</th><th>compiled</th></tr>\n");
        let ops: std::collections::BTreeSet<&String> = self.fp32.ops.keys().chain(self.compiled.ops.keys()).collect();
        for op in ops {
            let count = |m: &std::collections::BTreeMap<String, usize>| {
                m.get(op.as_str()).map_or("–".into(), |n| n.to_string())
            };
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                esc(op),
                count(&self.fp32.ops),
                count(&self.compiled.ops)
            );
        }
        h.push_str("</table>\n</section>\n");
    }

    fn passes_section(&self, h: &mut String) {
        h.push_str("<section id=\"passes\">\n<h2>Passes</h2>\n");
        if self.passes.is_empty() {
            h.push_str("<p>No pass ran (--opt-level 0 and nothing asked for).</p>\n</section>\n");
            return;
        }
        h.push_str("<table>\n<tr><th>pass</th><th>changed</th><th>counters</th><th>notes</th></tr>\n");
        for p in &self.passes {
            let stats: Vec<String> = p.stats.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let notes = match p.notes.len() {
                0 => String::new(),
                n => format!(
                    "<details><summary>{n} note(s)</summary><ul>{}</ul></details>",
                    p.notes.iter().map(|s| format!("<li>{}</li>", esc(s))).collect::<String>()
                ),
            };
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{notes}</td></tr>",
                esc(&p.pass),
                if p.changed { "yes" } else { "no" },
                esc(&stats.join(", "))
            );
        }
        h.push_str("</table>\n</section>\n");
    }

    fn nodes_section(&self, h: &mut String) {
        h.push_str("<section id=\"nodes\">\n<h2>Precision and quantization per node</h2>\n<p>");
        let mut dtypes: Vec<qforge_ir::DType> = self.nodes.iter().map(|n| n.dtype).collect();
        dtypes.sort_by_key(|d| d.name());
        dtypes.dedup();
        for d in qforge_ir::DType::ALL.iter().filter(|d| dtypes.contains(d)) {
            let count = self.nodes.iter().filter(|n| n.dtype == *d).count();
            let _ = write!(h, "{} ×{count} ", chip(*d));
        }
        h.push_str("</p>\n<table>\n<tr><th>#</th><th>node</th><th>op</th><th>dtype</th><th>shape</th>");
        h.push_str("<th>quantization</th><th>constants</th><th>absorbed</th></tr>\n");
        for (i, n) in self.nodes.iter().enumerate() {
            let consts: Vec<String> = n.consts.iter().map(|c| esc(c)).collect();
            let from = match n.from.len() {
                0 => String::new(),
                k => format!(
                    "<details><summary>{k}</summary>{}</details>",
                    n.from.iter().map(|f| esc(f)).collect::<Vec<_>>().join("<br>")
                ),
            };
            let _ = writeln!(
                h,
                "<tr><td class=\"num\">{i}</td><td class=\"name\">{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{from}</td></tr>",
                esc(&n.name),
                esc(&n.op),
                chip(n.dtype),
                esc(&n.shape),
                esc(&n.quant),
                consts.join("<br>")
            );
        }
        h.push_str("</table>\n</section>\n");
    }

    fn fusion(&self, h: &mut String) {
        h.push_str("<section id=\"fusion\">\n<h2>Fusion report</h2>\n");
        if self.unfused.is_empty() {
            h.push_str(
                "<p class=\"ok\">Every quantize/dequantize is in an integer kernel or at the graph's edge.</p>\n",
            );
        } else {
            let _ = writeln!(h, "<p class=\"warn\">{} leftover(s):</p>", self.unfused.len());
            h.push_str("<table>\n<tr><th>node</th><th>op</th><th>reason</th></tr>\n");
            for u in &self.unfused {
                let _ = writeln!(
                    h,
                    "<tr><td class=\"name\">{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&u.node),
                    esc(&u.op),
                    esc(&u.reason)
                );
            }
            h.push_str("</table>\n");
        }
        h.push_str("</section>\n");
    }

    fn sensitivity_section(&self, h: &mut String) {
        h.push_str("<section id=\"sensitivity\">\n<h2>Per-layer INT8 sensitivity</h2>\n");
        let s = match &self.sensitivity {
            Ok(s) => s,
            Err(e) => {
                let _ = writeln!(h, "<p class=\"warn\">No sensitivity study: {}</p>\n</section>", esc(e));
                return;
            }
        };
        let pct = |x: Option<f64>| x.map_or("–".to_string(), |t| format!("{:.2}%", t * 100.0));
        let _ = writeln!(
            h,
            "<p>Each quantizable layer quantized alone (static INT8, the rest float), output SQNR against \
             the float model on {} sample(s); least robust first. All layers INT8: SQNR {}, top-1 {} \
             (float {}).</p>",
            s.samples,
            db(s.all_sqnr_db),
            pct(s.all_top1),
            pct(s.fp32_top1)
        );
        h.push_str(&sensitivity_svg(&s.layers));
        h.push_str("\n</section>\n");
    }

    fn latency_section(&self, h: &mut String) {
        h.push_str("<section id=\"latency\">\n<h2>Latency per kernel</h2>\n");
        let l = match &self.latency {
            Ok(l) => l,
            Err(e) => {
                let _ = writeln!(h, "<p class=\"warn\">No latency figures: {}</p>\n</section>", esc(e));
                return;
            }
        };
        let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1e3);
        let total: Duration = l.steps.iter().map(|s| s.mean).sum();
        let _ = writeln!(
            h,
            "<p>JIT program at batch 1, mean of {} timed run(s) after warm-up.</p>\n<!--timing-->\n\
             <table class=\"kv\">",
            l.iters
        );
        kv(h, "fp32 end-to-end median (ms)", &ms(l.fp32_median));
        kv(h, "compiled end-to-end median (ms)", &ms(l.compiled_median));
        let speedup = l.fp32_median.as_secs_f64() / l.compiled_median.as_secs_f64().max(1e-12);
        kv(h, "speed-up", &format!("{speedup:.2}×"));
        kv(h, "sum of kernel means (ms)", &ms(total));
        h.push_str("</table>\n<!--/timing-->\n");
        h.push_str("<table>\n<tr><th>#</th><th>step</th><th>kind</th><th>what</th><th>µs</th><th>share</th></tr>\n");
        let total_s = total.as_secs_f64().max(1e-12);
        for (i, s) in l.steps.iter().enumerate() {
            let share = s.mean.as_secs_f64() / total_s;
            let _ = writeln!(
                h,
                "<tr><td class=\"num\">{i}</td><td class=\"name\">{}</td><td>{}</td><td class=\"what\">{}</td>\
                 <!--timing--><td class=\"num\">{:.2}</td><td class=\"share\"><div class=\"bar\" style=\"width:{:.0}px\"></div>{:.1}%</td>\
                 <!--/timing--></tr>",
                esc(&s.name),
                esc(s.kind),
                esc(&s.what),
                s.mean.as_secs_f64() * 1e6,
                share * 120.0,
                share * 100.0
            );
        }
        h.push_str("</table>\n</section>\n");
    }

    fn size(&self, h: &mut String) {
        h.push_str("<section id=\"size\">\n<h2>Size</h2>\n");
        let (f, c) = (self.fp32.weight_bytes, self.compiled.weight_bytes);
        let max = f.max(c).max(1) as f64;
        let kib = |b: usize| format!("{:.1} KiB", b as f64 / 1024.0);
        h.push_str("<table>\n<tr><th></th><th>weight bytes</th><th></th></tr>\n");
        for (name, b) in [("fp32", f), ("compiled", c)] {
            let _ = writeln!(
                h,
                "<tr><td>{name}</td><td class=\"num\">{b} ({})</td><td class=\"wide\"><div class=\"bar\" \
                 style=\"width:{:.1}%\"></div></td></tr>",
                kib(b),
                b as f64 / max * 100.0
            );
        }
        h.push_str("</table>\n");
        let ratio = if c == 0 { "–".to_string() } else { format!("{:.2}×", f as f64 / c as f64) };
        let _ = write!(h, "<p>Compression {ratio}.");
        if let Ok(l) = &self.latency {
            let _ = write!(h, " JIT arena at batch 1: {}.", kib(l.arena_bytes));
        }
        h.push_str("</p>\n</section>\n");
    }

    fn accuracy_section(&self, h: &mut String) {
        let a = &self.accuracy;
        h.push_str("<section id=\"accuracy\">\n<h2>Accuracy</h2>\n");
        let _ = writeln!(h, "<p>fp32 against compiled on {} sample(s).</p>", a.samples);
        h.push_str("<table class=\"kv\">\n");
        let pct = |x: Option<f64>| x.map_or("–".to_string(), |t| format!("{:.2}%", t * 100.0));
        if a.fp32_top1.is_some() {
            kv(h, "fp32 top-1", &pct(a.fp32_top1));
            kv(h, "compiled top-1", &pct(a.compiled_top1));
            if let (Some(f), Some(c)) = (a.fp32_top1, a.compiled_top1) {
                kv(h, "change", &format!("{:+.2} points", (c - f) * 100.0));
            }
        } else {
            kv(h, "top-1", "– (no --labels)");
        }
        kv(h, "output SQNR vs fp32", &db(a.sqnr_db));
        kv(h, "output cosine similarity vs fp32", &format!("{:.6}", a.cosine));
        kv(h, "largest absolute difference", &format!("{:.6}", a.max_abs_diff));
        kv(h, "argmax agreement with fp32", &format!("{:.2}%", a.argmax_agreement * 100.0));
        h.push_str("</table>\n</section>\n");
    }

    fn graph(&self, h: &mut String) {
        h.push_str("<section id=\"graph\">\n<h2>Compiled graph</h2>\n");
        match &self.graph_svg {
            Ok(svg) => {
                // drop the XML prolog and doctype: the SVG element is inlined
                let start = svg.find("<svg").unwrap_or(0);
                let _ = writeln!(h, "<div class=\"graph\">{}</div>", &svg[start..]);
            }
            Err(e) => {
                let _ =
                    writeln!(h, "<p>No picture: {} (`qforge graph MODEL -o g.dot` writes the DOT text).</p>", esc(e));
            }
        }
        h.push_str("</section>\n");
    }
}

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

/// Escapes text for HTML (element content and attribute values).
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn kv(h: &mut String, k: &str, v: &str) {
    let _ = writeln!(h, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(v));
}

/// A dtype as a coloured chip (the colours of `qforge graph`).
fn chip(d: qforge_ir::DType) -> String {
    format!("<span class=\"chip\" style=\"background:{}\">{}</span>", crate::graph_dot::dtype_color(d), d.name())
}

fn db(x: f64) -> String {
    if x.is_infinite() && x > 0.0 {
        "∞ dB (exact)".to_string()
    } else {
        format!("{x:.2} dB")
    }
}

/// The sensitivity bar chart: one horizontal bar per layer (in the given order), its length the
/// output SQNR (infinite SQNR drawn at the largest finite one), coloured by robustness.
pub fn sensitivity_svg(layers: &[LayerSensitivity]) -> String {
    const ROW: f64 = 22.0;
    const LABEL: f64 = 300.0;
    const BARS: f64 = 520.0;
    const RIGHT: f64 = 170.0;
    if layers.is_empty() {
        return "<p>No quantizable layers.</p>".to_string();
    }
    let finite_max = layers.iter().map(|l| l.sqnr_db).filter(|x| x.is_finite()).fold(0f64, f64::max);
    let scale_max = (finite_max.max(1.0) / 10.0).ceil() * 10.0;
    let height = ROW * layers.len() as f64 + 30.0;
    let width = LABEL + BARS + RIGHT;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} \
         {height}\" font-family=\"sans-serif\" font-size=\"12\" role=\"img\" aria-label=\"per-layer SQNR\">"
    );
    // grid every 10 dB
    let mut t = 0.0;
    while t <= scale_max + 1e-9 {
        let x = LABEL + t / scale_max * BARS;
        let _ = write!(
            s,
            "<line x1=\"{x:.1}\" y1=\"0\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#e3e3e3\"/><text x=\"{x:.1}\" \
             y=\"{:.1}\" text-anchor=\"middle\" fill=\"#666\" font-size=\"10\">{t:.0} dB</text>",
            height - 24.0,
            height - 10.0
        );
        t += if scale_max > 100.0 { 20.0 } else { 10.0 };
    }
    for (i, l) in layers.iter().enumerate() {
        let y = ROW * i as f64;
        let v = if l.sqnr_db.is_finite() { l.sqnr_db } else { scale_max };
        let w = (v.max(0.0) / scale_max * BARS).max(1.0);
        let color = match l.sqnr_db {
            x if x < 15.0 => "#d9534f",
            x if x < 25.0 => "#f0ad4e",
            _ => "#5cb85c",
        };
        let mut name = l.node.clone();
        if name.chars().count() > 44 {
            name =
                format!("…{}", name.chars().rev().take(43).collect::<Vec<_>>().into_iter().rev().collect::<String>());
        }
        let top1 = l.top1.map_or(String::new(), |t| format!(", top-1 {:.2}%", t * 100.0));
        let _ = write!(
            s,
            "<g><title>{} ({}): {}{}; from {}</title><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
             <rect x=\"{LABEL}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#333\">{}{}</text></g>",
            esc(&l.node),
            esc(l.op),
            esc(&db(l.sqnr_db)),
            esc(&top1),
            esc(&l.from.join(", ")),
            LABEL - 6.0,
            y + 15.0,
            esc(&name),
            y + 4.0,
            ROW - 8.0,
            LABEL + w + 5.0,
            y + 15.0,
            esc(&db(l.sqnr_db)),
            esc(&top1)
        );
    }
    s.push_str("</svg>");
    s
}

/// `qforge report MODEL [PIPELINE] --calib X.npy [--labels Y.npy] [--input X.npy] -o OUT.html`.
pub fn run(model: &Path, args: &ReportArgs, pipeline: PipelineOptions) -> Result<()> {
    let ext = args.output.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if ext != "html" && ext != "htm" {
        bail!("`{}`: the report is HTML; give -o with a .html name", args.output.display());
    }
    if let Some(dir) = args.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            bail!("cannot write `{}`: the directory `{}` does not exist", args.output.display(), dir.display());
        }
    }
    let report = Report::build(model, args, pipeline)?;
    std::fs::write(&args.output, report.to_html()).with_context(|| format!("cannot write `{}`", args.output.display()))
}
