//! `qforge tune MODEL --calib X [--input T --labels Y] --max-latency-ms L [--max-drop P |
//! --min-sqnr D] [--profile P] [--budget-minutes M] -o CHOSEN.toml`: the Pareto front of
//! per-layer precision policies and the most accurate one within the budget (see
//! [`crate::tune`]); and `qforge tune-job`, one candidate of a `--emit-jobs` list.

use crate::files;
use crate::options::{parse_count, Kernels};
use crate::tune::latency::{KernelTable, Source};
use crate::tune::search::{self, Space};
use crate::tune::{front, jobs, plot, Constraint, Context, Evaluated, Setup};
use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model (with --merge: taken from the results).
    #[arg(required_unless_present = "merge")]
    model: Option<PathBuf>,
    /// Calibration inputs (.npy, or .npz with one array per input name).
    #[arg(long, value_name = "X.npy", required_unless_present = "merge")]
    calib: Option<PathBuf>,
    /// Calibration samples per run.
    #[arg(long, default_value_t = 50, value_name = "N", value_parser = parse_count)]
    calib_batch: usize,
    /// Evaluation inputs (default: the calibration set).
    #[arg(long, value_name = "T.npy")]
    input: Option<PathBuf>,
    /// Labels of the evaluation inputs: accuracy is top-1 (else SQNR against FP32).
    #[arg(long, value_name = "Y.npy")]
    labels: Option<PathBuf>,
    /// The latency budget at batch 1.
    #[arg(long, value_name = "MS")]
    max_latency_ms: f64,
    /// Keep top-1 at most P (a fraction: 0.005 is half a point) below FP32's (needs --labels).
    #[arg(long, value_name = "P", requires = "labels", conflicts_with = "min_sqnr")]
    max_drop: Option<f64>,
    /// Keep the output SQNR against FP32 at least D dB.
    #[arg(long, value_name = "D")]
    min_sqnr: Option<f64>,
    /// Hardware profile: `host` (measured) or another (latency predicted from the kernels measured
    /// here, scaled by the profile's costs).
    #[arg(long, value_name = "NAME|FILE")]
    profile: Option<String>,
    /// Stop proposing candidates after this long (the uniform seeds always run).
    #[arg(long, default_value_t = 2.0, value_name = "M")]
    budget_minutes: f64,
    /// Search rounds at most (0: the seeds, 1: the sensitivity ladder, then greedy moves).
    #[arg(long, value_name = "N")]
    rounds: Option<usize>,
    /// Where the chosen candidate's qconfig goes.
    #[arg(short, long, value_name = "CHOSEN.toml")]
    output: Option<PathBuf>,
    /// Write an HTML report: the accuracy-latency plot with the front, and every candidate.
    #[arg(long, value_name = "OUT.html")]
    report: Option<PathBuf>,
    /// Predict latency from this per-kernel cost table (JSON; deterministic) instead of measuring.
    #[arg(long, value_name = "FILE", conflicts_with = "profile")]
    latency_table: Option<PathBuf>,
    /// Fit a per-kernel cost table to the kernels measured during the search and write it.
    #[arg(long, value_name = "FILE")]
    save_latency_table: Option<PathBuf>,
    /// The JIT's GEMM microkernels: `native` (this CPU's, as `compile`/`bench` use) or
    /// `cranelift` (the same generated steps on every x86-64 CPU, for a stored cost table whose
    /// predictions must not depend on the machine).
    #[arg(long, value_enum, default_value_t = Kernels::Native)]
    kernels: Kernels,
    /// Timed runs per candidate (measured latency).
    #[arg(long, default_value_t = 30, value_parser = parse_count)]
    iters: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Write the candidates of the next round as a job list (JSON lines) instead of searching
    /// (with --merge: the round after the merged ones).
    #[arg(long, value_name = "jobs.jsonl")]
    emit_jobs: Option<PathBuf>,
    /// Read the results `qforge tune-job` wrote in DIR and choose from them.
    #[arg(long, value_name = "DIR")]
    merge: Option<PathBuf>,
}

/// `qforge tune-job`: one line of a `--emit-jobs` list.
#[derive(Debug, clap::Args)]
pub struct JobArgs {
    /// The job: one line of the list (JSON), or `-` to read it from stdin.
    job: String,
    /// Directory the result JSON is written to.
    #[arg(long, value_name = "DIR")]
    results: PathBuf,
}

pub fn run_job(a: JobArgs) -> Result<()> {
    let line = if a.job == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the job from stdin")?
    } else {
        a.job
    };
    let job = jobs::parse_job(&line)?;
    let (path, r) = jobs::run_job(&job, &a.results)?;
    println!(
        "`{}`: {}, {:.4} ms; written to `{}`",
        r.result.candidate.label,
        front::accuracy_text(&r.result),
        r.result.latency_ms,
        path.display()
    );
    Ok(())
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("`{}`", p.display()))
}

pub fn run(a: Args) -> Result<()> {
    if a.max_latency_ms.is_nan() || a.max_latency_ms <= 0.0 {
        bail!("--max-latency-ms must be a positive number of milliseconds");
    }
    for (p, what) in [(&a.output, "-o"), (&a.report, "--report"), (&a.save_latency_table, "--save-latency-table")] {
        if let Some(p) = p {
            files::check_output(p, what)?;
        }
    }
    if let Some(p) = &a.emit_jobs {
        files::check_output(p, "--emit-jobs")?;
    }
    let constraint = match (a.max_drop, a.min_sqnr) {
        (Some(d), _) => Constraint::MaxDrop(d),
        (None, Some(db)) => Constraint::MinSqnr(db),
        (None, None) => Constraint::None,
    };
    let start = Instant::now();
    if let Some(dir) = &a.merge {
        let (setup, evaluated) = jobs::merge(dir)?;
        if let Some(out) = &a.emit_jobs {
            let mut ctx = Context::new(setup.clone())?;
            let space = Space::study(&mut ctx)?;
            let next = evaluated.iter().map(|e| e.candidate.round + 1).max().unwrap_or(0);
            return emit(out, &setup, &space.round(next, &evaluated), next);
        }
        let fp32_top1 = fp32_top1(&setup)?;
        let figures = Figures { compiled: 0, measured: 0, predicted: 0, calibrations: 0, rounds: rounds(&evaluated) };
        return finish(&a, &setup, &evaluated, fp32_top1, constraint, figures, start, None);
    }
    let (Some(model), Some(calib)) = (&a.model, &a.calib) else { bail!("tune needs MODEL and --calib") };
    let profile_is_host = a.profile.as_deref().is_none_or(|p| p == "host");
    let latency = match (&a.latency_table, profile_is_host) {
        (Some(t), _) => Source::Table { path: absolute(t)? },
        (None, true) => Source::Measured,
        (None, false) => Source::Profile,
    };
    let setup = Setup {
        model: absolute(model)?,
        calib: absolute(calib)?,
        calib_batch: a.calib_batch,
        input: a.input.as_deref().map(absolute).transpose()?,
        labels: a.labels.as_deref().map(absolute).transpose()?,
        profile: a.profile.clone(),
        latency,
        warmup: a.warmup,
        iters: a.iters,
        kernels: a.kernels,
    };
    if let Some(out) = &a.emit_jobs {
        // the seeds need no ranking: check the model loads, then write them
        crate::compiler::load_model(&setup.model)?;
        let profile = crate::compiler::resolve_profile(setup.profile.as_deref())?;
        let space = Space {
            ranked: vec![],
            floats: crate::tune::candidates::float_choices(&profile),
            int4: profile.dtypes.int4 && profile.dtypes.int8,
        };
        return emit(out, &setup, &space.round(0, &[]), 0);
    }
    let mut ctx = Context::new(setup.clone())?;
    ctx.keep_steps = a.save_latency_table.is_some();
    let space = Space::study(&mut ctx)?;
    let budget = Duration::from_secs_f64((a.budget_minutes * 60.0).max(0.0));
    let mut bar = crate::progress::bar("tuning".to_string(), "candidates");
    let mut outcome = search::run(&mut ctx, &space, a.rounds, budget, start, &mut |n, _| bar(n, n))?;
    search::remeasure_front(&mut ctx, &mut outcome)?;
    if outcome.remeasured > 0 {
        eprintln!(
            "note: the {} seeds and front candidates were measured again side by side ({} interleaved passes)",
            outcome.remeasured,
            search::REMEASURE_PASSES
        );
    }
    if outcome.budget_hit {
        eprintln!(
            "note: --budget-minutes {} ran out in round {}; the front is of the candidates evaluated so far",
            a.budget_minutes, outcome.rounds
        );
    }
    if let Some(p) = &a.save_latency_table {
        let t = KernelTable::fit(
            &format!(
                "fitted by `qforge tune` on {} measured kernel steps of {}",
                ctx.steps.len(),
                setup.model.display()
            ),
            &ctx.steps,
        );
        files::write(p, serde_json::to_string_pretty(&t)?.as_bytes())?;
        println!("kernel cost table written to `{}`", p.display());
    }
    let figures = Figures {
        compiled: ctx.counters.compiled,
        measured: ctx.counters.measured,
        predicted: ctx.counters.predicted,
        calibrations: ctx.counters.calibrations,
        rounds: rounds(&outcome.evaluated),
    };
    let fp32_top1 = ctx.fp32_top1;
    finish(&a, &setup, &outcome.evaluated, fp32_top1, constraint, figures, start, Some(&mut ctx))
}

struct Figures {
    compiled: usize,
    measured: usize,
    predicted: usize,
    calibrations: usize,
    rounds: usize,
}

fn rounds(e: &[Evaluated]) -> usize {
    e.iter().map(|e| e.candidate.round + 1).max().unwrap_or(0)
}

/// The FP32 model's top-1 for merged results (with labels): the FP32 model run on the
/// evaluation set, as an in-process search runs it.
fn fp32_top1(setup: &Setup) -> Result<Option<f64>> {
    if setup.labels.is_none() {
        return Ok(None);
    }
    Ok(Context::new(setup.clone())?.fp32_top1)
}

fn emit(out: &Path, setup: &Setup, cands: &[crate::tune::Candidate], round: usize) -> Result<()> {
    if cands.is_empty() {
        println!("round {round} proposes no new candidate: the search is complete; merge the results to choose");
        return Ok(());
    }
    files::write(out, jobs::job_lines(setup, cands)?.as_bytes())?;
    println!(
        "{} jobs of round {round} written to `{}`; run each line with `qforge tune-job --results DIR LINE` \
         (e.g. `xargs -P 2 -d '\\n' -n 1 qforge tune-job --results DIR < {}`), then `qforge tune --merge DIR`",
        cands.len(),
        out.display(),
        out.display()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn finish(
    a: &Args,
    setup: &Setup,
    evaluated: &[Evaluated],
    fp32_top1: Option<f64>,
    constraint: Constraint,
    f: Figures,
    start: Instant,
    ctx: Option<&mut Context>,
) -> Result<()> {
    let rows = front::front(evaluated);
    let chosen = front::choose(evaluated, a.max_latency_ms, constraint, fp32_top1);
    let key = chosen.as_ref().ok().map(|c| c.key.clone());
    print!("{}", front::table(&rows, key.as_deref(), setup));
    let seconds = start.elapsed().as_secs_f64();
    let on = rows.iter().filter(|(_, on)| *on).count();
    if a.merge.is_some() {
        println!("{} candidates merged from job results ({on} on the front) in {seconds:.1} s", evaluated.len());
    } else {
        println!(
            "{} candidates ({on} on the front) in {} rounds: {} compiled, {} latencies {}, {} calibration passes; \
             search time {seconds:.1} s",
            evaluated.len(),
            f.rounds,
            f.compiled,
            f.measured.max(f.predicted),
            if f.predicted > 0 { "predicted" } else { "measured" },
            f.calibrations
        );
    }
    if let Some(p) = &a.report {
        let figures = plot::Figures {
            model: setup.model.display().to_string(),
            budget: a.max_latency_ms,
            compiled: f.compiled,
            measured: f.measured,
            predicted: f.predicted,
            calibrations: f.calibrations,
            rounds: f.rounds,
            seconds,
            fp32_top1,
        };
        files::write(p, plot::html(&rows, chosen.as_ref().ok(), setup, &figures).as_bytes())?;
        println!("report written to `{}`", p.display());
    }
    let chosen = chosen?;
    println!(
        "chosen: `{}` ({}): {}, {:.4} ms ({})",
        chosen.candidate.label,
        chosen.summary,
        front::accuracy_text(&chosen),
        chosen.latency_ms,
        if chosen.predicted { "predicted" } else { "measured" }
    );
    if let Some(ctx) = ctx {
        // compiled again from its qconfig alone, through the whole pipeline (its own calibration)
        let again = ctx.evaluate_fresh(&chosen.candidate)?;
        let same = again.top1 == chosen.top1 && again.sqnr_db.to_bits() == chosen.sqnr_db.to_bits();
        println!(
            "re-compiled from its qconfig: {}, {:.4} ms ({}){}",
            front::accuracy_text(&again),
            again.latency_ms,
            if again.predicted { "predicted" } else { "re-measured" },
            if same { "" } else { " -- differs from the search's figures" }
        );
        if !same {
            bail!("the chosen qconfig does not reproduce the candidate's accuracy; please report this");
        }
        // a measured point near the budget can come out above it when timed again: say so rather
        // than let the choice look safer than the measurements are
        if !again.predicted && again.latency_ms > a.max_latency_ms {
            tracing::warn!(
                "the chosen point re-measured at {:.4} ms, above --max-latency-ms {}: the timings vary by more \
                 than its margin on this machine (more --iters, a quieter machine, or a budget with margin)",
                again.latency_ms,
                a.max_latency_ms
            );
        }
    }
    if let Some(o) = &a.output {
        files::write(o, crate::tune::chosen_text(&chosen, setup, a.max_latency_ms, fp32_top1).as_bytes())?;
        println!("qconfig written to `{}`", o.display());
    }
    Ok(())
}
