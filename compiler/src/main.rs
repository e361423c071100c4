//! The `qforge` binary: parses the command line, runs it, and reports any error as one line.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // A panic is a bug in qforge, never the user's fault: say so on one line, without a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        // `qforge inspect ... | head`: the reader went away, which is not an error.
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("error: internal error (a qforge bug){at}: {msg}");
    }));
    let cli = qforge::commands::Cli::parse();
    init_logging(cli.log_level());
    match qforge::commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// Installs the one log subscriber: events at `level` (from `-v`) or as `RUST_LOG` says when it
/// is set, on stderr without timestamps. A `RUST_LOG` that does not parse is reported as a
/// warning and `level` is used.
fn init_logging(level: &str) {
    use tracing_subscriber::EnvFilter;
    let from_env = std::env::var("RUST_LOG").ok().filter(|s| !s.trim().is_empty());
    let (filter, bad) = match from_env.map(|s| EnvFilter::try_new(&s).map_err(|e| (s, e))) {
        Some(Ok(f)) => (f, None),
        Some(Err(bad)) => (EnvFilter::new(level), Some(bad)),
        None => (EnvFilter::new(level), None),
    };
    let installed =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).without_time().try_init();
    if let Some((s, e)) = bad {
        if installed.is_ok() {
            tracing::warn!("RUST_LOG `{s}` ignored ({e}); logging at {level}");
        }
    }
}

/// Errors are reported on one line, whatever their sources contain.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
