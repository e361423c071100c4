//! What the command-line tests share: the built binary, the corpus and asset paths, scratch
//! directories, and the one way every test runs `qforge` and checks its exit and its one-line
//! errors. (Each test binary uses part of it.)
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub const QFORGE: &str = env!("CARGO_BIN_EXE_qforge");
const ASSETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets");

/// A file of the shared model corpus.
pub fn corpus(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/models")).join(rel)
}

/// A file bundled in `compiler/assets/`.
pub fn asset(name: &str) -> PathBuf {
    Path::new(ASSETS).join(name)
}

/// A fresh, empty scratch directory unique to this process, test binary and test.
pub fn scratch(test: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("qforge-{}-{}-{test}", env!("CARGO_CRATE_NAME"), std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    Scratch(d)
}

/// A test's scratch directory: removed when the test ends, kept (for a look) when it fails.
#[must_use = "the directory is removed when the guard is dropped"]
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn p(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `qforge` with extra environment variables (and without backtraces, fault hooks or a log
/// filter from the caller's environment).
pub fn qforge_env(args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let mut c = Command::new(QFORGE);
    c.args(args).env_remove("RUST_BACKTRACE").env_remove("QFORGE_FAULT").env_remove("RUST_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("qforge runs");
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn qforge(args: &[&str]) -> Outcome {
    qforge_env(args, &[])
}

/// Exit code 0.
pub fn expect_ok(args: &[&str]) -> Outcome {
    let o = qforge(args);
    assert_eq!(o.code, Some(0), "qforge {args:?} failed: {}", o.stderr);
    o
}

/// The one check every error case goes through: exit code 1, one line on stderr starting with
/// `error:` and containing `needle`, no panic or backtrace.
pub fn expect_error_env(args: &[&str], env: &[(&str, &str)], needle: &str) {
    let o = qforge_env(args, env);
    assert_eq!(o.code, Some(1), "qforge {args:?} exited with {:?}: {}", o.code, o.stderr);
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "qforge {args:?} printed more than one line:\n{}", o.stderr);
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    assert!(!o.stderr.contains("panicked") && !o.stderr.contains("internal error"), "{}", o.stderr);
    assert!(lines[0].contains(needle), "qforge {args:?}: expected `{needle}` in: {}", lines[0]);
}

pub fn expect_error(args: &[&str], needle: &str) {
    expect_error_env(args, &[], needle)
}

/// The first thing a test marked `#[ignore = "needs ..."]` does: it runs only when asked for
/// (`cargo test -- --include-ignored`, as CI does after installing the tools), and then a missing
/// tool is a failure, never a silent pass.
pub fn require(available: bool, what: &str) {
    assert!(available, "this test needs {what}; install it, or run the suite without --include-ignored");
}
