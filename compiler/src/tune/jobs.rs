//! A search round as a job list, and its results merged back: the candidates of a round are
//! independent, so they can run on any batch engine the user has (GNU parallel, `xargs -P`, a
//! Kubernetes indexed Job); qforge schedules nothing itself.
//!
//! `tune --emit-jobs jobs.jsonl` writes one JSON object per line ([`Job`]): the setup (model,
//! calibration and evaluation files as absolute paths, the latency source), the candidate
//! (policy, round, label) and its qconfig text. `qforge tune-job --results DIR 'LINE'` evaluates
//! one line, compiling the candidate from scratch, and writes `DIR/KEY.json` ([`JobResult`],
//! written atomically: a killed job leaves no half file). `tune --merge DIR` reads every result
//! (they must share one setup), prints the same front and writes the same chosen qconfig as an
//! in-process search over the same candidates; with `--emit-jobs` as well it writes the next
//! round's jobs.

use super::candidates::{check_text, Candidate};
use super::evaluate::{Context, Evaluated, Setup};
use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The format version of jobs and results.
pub const VERSION: u32 = 1;

/// One candidate to evaluate, self-contained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub qforge_tune_job: u32,
    pub setup: Setup,
    pub candidate: Candidate,
    /// The candidate's qconfig text ([`super::candidates::Policy::toml`]).
    pub toml: String,
}

/// What a job wrote.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub job: Job,
    pub result: Evaluated,
    /// How long the job took (s).
    pub seconds: f64,
}

/// The job list of `cands`, one JSON line each.
pub fn job_lines(setup: &Setup, cands: &[Candidate]) -> Result<String> {
    let mut s = String::new();
    for c in cands {
        let job = Job { qforge_tune_job: VERSION, setup: setup.clone(), candidate: c.clone(), toml: c.policy.toml() };
        s.push_str(&serde_json::to_string(&job)?);
        s.push('\n');
    }
    Ok(s)
}

/// Parses one job line.
pub fn parse_job(line: &str) -> Result<Job> {
    let job: Job = serde_json::from_str(line.trim()).context("a tune job (one line of a --emit-jobs file)")?;
    if job.qforge_tune_job != VERSION {
        bail!("tune job format {} (this qforge reads {VERSION})", job.qforge_tune_job);
    }
    check_text(&job.candidate.policy, &job.toml)?;
    Ok(job)
}

/// Runs one job: the candidate compiled from scratch, scored and timed; the result written to
/// `results/KEY.json`. Returns the file written.
pub fn run_job(job: &Job, results: &Path) -> Result<(PathBuf, JobResult)> {
    if !results.is_dir() {
        bail!("--results `{}` is not a directory", results.display());
    }
    let t = std::time::Instant::now();
    let mut ctx = Context::new(job.setup.clone())?;
    let result = ctx.evaluate_fresh(&job.candidate)?;
    let out = JobResult { job: job.clone(), result, seconds: t.elapsed().as_secs_f64() };
    let path = results.join(format!("{}.json", out.result.key));
    crate::files::write_atomic(&path, serde_json::to_string_pretty(&out)?.as_bytes())?;
    Ok((path, out))
}

/// Reads every `*.json` result in `dir` (by file name): their common setup and results.
pub fn merge(dir: &Path) -> Result<(Setup, Vec<Evaluated>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read --merge `{}`", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut setup: Option<Setup> = None;
    let mut out: Vec<Evaluated> = vec![];
    for f in &files {
        let text = std::fs::read_to_string(f).with_context(|| format!("cannot read `{}`", f.display()))?;
        let r: JobResult =
            serde_json::from_str(&text).with_context(|| format!("`{}`: not a tune job result", f.display()))?;
        check_text(&r.job.candidate.policy, &r.result.toml).with_context(|| format!("`{}`", f.display()))?;
        match &setup {
            None => setup = Some(r.job.setup.clone()),
            Some(s) if *s != r.job.setup => {
                bail!(
                    "`{}` comes from a different tune setup than the other results in `{}`",
                    f.display(),
                    dir.display()
                )
            }
            Some(_) => {}
        }
        if !out.iter().any(|e| e.key == r.result.key) {
            out.push(r.result);
        }
    }
    let Some(setup) = setup else { bail!("--merge `{}` holds no job results (*.json)", dir.display()) };
    Ok((setup, out))
}
