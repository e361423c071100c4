//! `qforge compile MODEL -o OUT.qfa [--report] [--dump-after PASS|all --dump-dir DIR] [PIPELINE]`.

use crate::files;
use crate::options::{Engine, PipelineOptions};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub struct Args {
    model: PathBuf,
    #[arg(short, long, value_name = "OUT.qfa")]
    output: Option<PathBuf>,
    /// Print each pass's report (time, counters, notes) and the fusion report: every Q/DQ
    /// pair not folded into an integer kernel, with the reason.
    #[arg(long)]
    report: bool,
    /// Write the IR text (large constants summarized) after this pass, or after every pass.
    #[arg(long, value_name = "PASS|all", requires = "dump_dir")]
    dump_after: Option<String>,
    /// Where `--dump-after` writes, one `NN-PASS.qir` file per dump.
    #[arg(long, value_name = "DIR", requires = "dump_after")]
    dump_dir: Option<PathBuf>,
    #[command(flatten)]
    pipeline: PipelineOptions,
}

pub fn run(a: Args) -> Result<()> {
    let dump = a.dump_after.zip(a.dump_dir);
    if let Some(out) = &a.output {
        if !crate::artifact::is_artifact(out) {
            let out = out.display();
            bail!("-o `{out}`: artifacts are `.qfa` files (run, eval, bench and inspect know them by that extension)");
        }
        files::check_output(out, "-o")?;
    }
    if a.output.is_none() && !a.report && dump.is_none() {
        bail!("`qforge compile` without -o only reports: give -o OUT.qfa, --report or --dump-after");
    }
    let compiler = super::compiler(a.pipeline)?;
    if let Some((_, dir)) = &dump {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    }
    let mut ran: Vec<String> = vec![];
    let mut failed: Option<anyhow::Error> = None;
    let mut after = |name: &str, g: &qforge_ir::Graph| {
        ran.push(name.to_string());
        let k = ran.len();
        let Some((pass, dir)) = &dump else { return };
        if failed.is_some() || (pass != "all" && pass != name) {
            return;
        }
        let path = dir.join(format!("{k:02}-{name}.qir"));
        let written = qforge_ir::text::print_default(g)
            .map_err(anyhow::Error::from)
            .and_then(|t| files::write(&path, t.as_bytes()));
        if let Err(e) = written {
            failed = Some(e);
        }
    };
    let t_import = Instant::now();
    let loaded = compiler.load(&a.model)?;
    let import_time = t_import.elapsed();
    let t_passes = Instant::now();
    let st = compiler.run(loaded, &mut after)?;
    let passes_time = t_passes.elapsed();
    if let Some(e) = failed {
        return Err(e);
    }
    if let Some((pass, _)) = &dump {
        if pass != "all" && !ran.contains(pass) {
            bail!("--dump-after {pass}: no such pass ran (the passes: {}; or `all`)", ran.join(", "));
        }
    }
    let g = st.graph;
    if let Some(out) = &a.output {
        crate::artifact::Artifact::new(g.clone(), &a.model, &compiler)?.save(out)?;
        let s = crate::summary::Summary::of(&g)?;
        println!(
            "wrote `{}` ({}): {} nodes after {} passes, {} of weights",
            out.display(),
            files::human_bytes(files::size_of(out)),
            s.nodes.len(),
            st.reports.len(),
            files::human_bytes(s.weight_bytes as u64)
        );
    }
    if !a.report {
        return Ok(());
    }
    for r in &st.reports {
        println!(
            "pass {}: {:.1} ms, {}",
            r.pass,
            r.time.as_secs_f64() * 1e3,
            if r.changed { "changed the graph" } else { "no change" }
        );
        for (k, v) in &r.stats {
            println!("  {k}: {v}");
        }
        for n in &r.notes {
            println!("  {n}");
        }
    }
    let unfused = qforge_passes::report::fusion_report(&g, compiler.profile().dtypes.int8);
    if unfused.is_empty() {
        println!("fusion report: every quantize/dequantize is in an integer kernel or at the graph's edge");
    } else {
        println!("fusion report: {} leftover(s)", unfused.len());
        for u in &unfused {
            println!("  {u}");
        }
    }
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let interpreted = qforge_codegen::interpreted(&g).filter(|_| compiler.options().engine == Engine::Jit);
    if let Some(why) = interpreted {
        println!("compile time: import {:.1} ms, passes {:.1} ms", ms(import_time), ms(passes_time));
        println!("JIT: {why}");
        return Ok(());
    }
    let Some(jit) = crate::bench::jit_report(&compiler, &g)? else {
        println!("compile time: import {:.1} ms, passes {:.1} ms", ms(import_time), ms(passes_time));
        return Ok(());
    };
    let r = &jit.report;
    println!(
        "compile time: import {:.1} ms, passes {:.1} ms, JIT {:.1} ms (batch 1), total {:.1} ms",
        ms(import_time),
        ms(passes_time),
        ms(jit.codegen),
        ms(import_time + passes_time + jit.codegen)
    );
    let mk: Vec<String> = r.microkernels.iter().map(|(a, b)| format!("{a}={b}")).collect();
    println!("JIT: {} steps, microkernels {}", r.steps.len(), mk.join(", "));
    println!(
        "memory plan: arena {:.2} MiB for {:.2} MiB of intermediate tensors ({:.0}% reused), scratch {:.1} KiB per thread",
        r.arena_bytes as f64 / (1 << 20) as f64,
        r.intermediate_bytes as f64 / (1 << 20) as f64,
        100.0 * (1.0 - r.arena_bytes as f64 / (r.intermediate_bytes.max(1)) as f64),
        r.scratch_bytes as f64 / 1024.0
    );
    if r.host_ops.is_empty() {
        println!("every op runs in generated code");
    } else {
        let h: Vec<String> = r.host_ops.iter().map(|(o, n)| format!("{o} x{n}")).collect();
        println!("ops run by the interpreter (no kernel yet): {}", h.join(", "));
    }
    for s in &r.steps {
        println!("  {:<12} {}  {}", s.kind, s.what, s.name);
    }
    Ok(())
}
