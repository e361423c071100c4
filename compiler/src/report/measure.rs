//! What `qforge report` measures: the compiled model and its fp32 baseline, their summaries,
//! the pass reports, per-node precision, the fusion report, the per-layer sensitivity study,
//! per-kernel latency, size and accuracy. [`Report::build`] returns the data;
//! [`super::render`] turns it into HTML.

use crate::compiler::{Compiler, Stage, State};
use crate::data;
use crate::options::{parse_count, PipelineOptions, Precision, QuantizeMode};
use crate::sensitivity::Sensitivity;
use crate::summary::Summary;
use anyhow::{bail, Context, Result};
use qforge_ir::{Graph, Op, QuantParams, Tensor};
use qforge_passes::report::Unfused;
use qforge_passes::PassReport;
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
    #[arg(long, default_value_t = 20, value_name = "N", value_parser = parse_count)]
    pub latency_iters: usize,
    /// Samples per run for the accuracy and sensitivity runs.
    #[arg(long, default_value_t = 64, value_parser = parse_count)]
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
pub fn quant_cell(q: Option<&QuantParams>) -> String {
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

fn median(v: Vec<Duration>) -> Duration {
    let mut secs: Vec<f64> = v.iter().map(Duration::as_secs_f64).collect();
    let m = crate::stats::median(&mut secs);
    if m.is_finite() {
        Duration::from_secs_f64(m)
    } else {
        Duration::ZERO
    }
}

/// The first `n` rows of `x` (all of them when `n` is 0 or larger).
fn head(x: &Tensor, n: usize) -> Result<Tensor> {
    let rows = x.shape().first().copied().context("the evaluation input has no batch dimension")?;
    if n == 0 || n >= rows {
        return Ok(x.clone());
    }
    data::slice_batch(x, 0, n)
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
    /// for), and the same model in fp32 ([`PipelineOptions::fp32_baseline`]), and measures
    /// everything the report shows. The sensitivity study runs on the INT8 pipeline's own prefix
    /// up to calibration ([`Stage::Calibrate`]); when the report's pipeline is INT8 that prefix is
    /// shared with the compiled model.
    pub fn build(
        model: &Path,
        args: &ReportArgs,
        mut opts: PipelineOptions,
        make: fn(PipelineOptions) -> Result<Compiler>,
    ) -> Result<Report> {
        let calib = opts.calib.clone().context("report needs calibration data: add --calib X.npy")?;
        if opts.quantize == QuantizeMode::None && opts.precision == Precision::Fp32 {
            opts.quantize = QuantizeMode::Int8;
        }
        let compiler = make(opts.clone())?;
        let source = compiler.load(model)?;
        if source.inputs().len() != 1 {
            bail!("report needs a model with one input; this one has {}", source.inputs().len());
        }
        let x_path = args.input.as_deref().unwrap_or(&calib);
        let x = crate::npy::read(x_path)?;
        let n = x.shape().first().copied().context("the evaluation input has no batch dimension")?;
        if n == 0 {
            bail!("`{}` has no samples", x_path.display());
        }
        qforge_ir::interp::check_inputs(&source, &[data::slice_batch(&x, 0, 1)?])
            .with_context(|| format!("`{}` does not fit the model", x_path.display()))?;
        data::check_finite(
            std::slice::from_ref(&x),
            &format!("`{}`", x_path.display()),
            crate::data::NonFinite::strict(opts.strict),
        )?;
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
        let xs = head(&x, args.sensitivity_samples)?;
        let study_labels = labels.as_deref().map(|l| &l[..xs.shape()[0].min(l.len())]);
        let study_batches: Vec<Vec<Tensor>> =
            crate::calib_set::CalibSet { samples: xs.shape()[0], inputs: vec![xs] }.batches(args.batch)?;

        // The INT8 prefix: the compiled pipeline's own when it quantizes to INT8, else the same
        // options with INT8 quantization.
        let (st, sensitivity) = if opts.quantize == QuantizeMode::Int8 {
            let st = compiler.run_until(source.clone(), Stage::Calibrate, &mut |_, _| {})?;
            let s = study(&compiler, &st, &study_batches, study_labels);
            (Some(st), s)
        } else {
            let int8 = make(PipelineOptions { quantize: QuantizeMode::Int8, ..opts.clone() });
            let s = int8.and_then(|c| {
                let st = c.run_until(source.clone(), Stage::Calibrate, &mut |_, _| {})?;
                study(&c, &st, &study_batches, study_labels)
            });
            (None, s)
        };
        let sensitivity = sensitivity.map_err(|e| format!("{e:#}"));
        let st = match st {
            Some(st) => compiler.resume(st, &mut |_, _| {})?,
            None => compiler.run(source.clone(), &mut |_, _| {})?,
        };
        let (g, passes) = (st.graph, st.reports);
        let fp_compiler = make(opts.fp32_baseline())?;
        let fp_g = fp_compiler.optimize(source)?;

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
}

/// The sensitivity study of the INT8 pipeline at `st` on the evaluation batches.
fn study(c: &Compiler, st: &State, batches: &[Vec<Tensor>], labels: Option<&[usize]>) -> Result<Sensitivity> {
    crate::sensitivity::prepare(c, st, batches, labels)?.rank()
}
