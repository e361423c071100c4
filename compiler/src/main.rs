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
    let cli = qforge::cli::Cli::parse();
    match qforge::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// Errors are reported on one line, whatever their sources contain.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
