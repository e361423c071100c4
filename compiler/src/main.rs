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
    let cli = match qforge::commands::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_logging(cli.log_level());
    match qforge::commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// A command line clap refuses: help and version print as clap prints them; an error is one line
/// (clap's first paragraph, without its usage block and hint) and exit status 2, clap's status for
/// usage errors.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
    }
    let text = e.render().to_string();
    let first: Vec<&str> =
        text.lines().map(str::trim).skip_while(|l| l.is_empty()).take_while(|l| !l.is_empty()).collect();
    eprintln!("error: {}", first.join(" ").trim_start_matches("error:").trim());
    ExitCode::from(2)
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
