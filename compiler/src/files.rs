//! Files the commands write: checked before any expensive work ([`check_output`]), written
//! atomically where a half-written file would be mistaken for a good one ([`write_atomic`]), and
//! temporary files left by an interrupted write removed by the next one.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The environment variable of the atomic writer's fault hook, and its value.
pub const FAULT_VAR: &str = "QFORGE_FAULT";
pub const FAULT_MIDWAY: &str = "artifact-midway";

/// Checks that `path` can be written before the work that produces it starts: its directory
/// exists and is writable, and `path` is not a directory. `what` names the flag (`-o`,
/// `--output`) in the error.
pub fn check_output(path: &Path, what: &str) -> Result<()> {
    let shown = path.display();
    if path.is_dir() {
        bail!("{what} `{shown}` is a directory; give a file name");
    }
    let dir = parent_dir(path);
    if !dir.is_dir() {
        bail!("cannot write {what} `{shown}`: the directory `{}` does not exist", dir.display());
    }
    // Writability is what the OS says when asked to create a file, so ask it.
    let probe = dir.join(format!(".qforge-write-check.{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => bail!("cannot write {what} `{shown}`: the directory `{}` is not writable ({e})", dir.display()),
    }
}

/// Writes `bytes` to `path` (not atomically: for outputs a reader opens after the command ends).
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write `{}`", path.display()))
}

/// `12.3 KiB`, `4.5 MiB`: a size for the one-line summaries commands print.
pub fn human_bytes(n: u64) -> String {
    match n {
        n if n < 1 << 10 => format!("{n} B"),
        n if n < 1 << 20 => format!("{:.1} KiB", n as f64 / 1024.0),
        n if n < 1 << 30 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
    }
}

/// The size of the file at `path`, for the one-line summaries (0 when it cannot be read).
pub fn size_of(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn fault_midway() -> bool {
    std::env::var(FAULT_VAR).is_ok_and(|v| v.split(',').any(|f| f.trim() == FAULT_MIDWAY))
}

/// The temporary file [`write_atomic`] writes `path` through: `.NAME.PID.tmp` beside it.
fn temporary(dir: &Path, file_name: &str, pid: u32) -> PathBuf {
    dir.join(format!(".{file_name}.{pid}.tmp"))
}

/// Whether process `pid` is running. Where that cannot be told (not Linux), a process is taken
/// to be running, so a temporary file is never removed from under a live writer.
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// Removes the temporary files of earlier writes of `file_name` in `dir` whose writer is no
/// longer running (a compile killed mid-write cannot remove its own). Returns what was removed.
pub fn remove_stale_temporaries(dir: &Path, file_name: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    let prefix = format!(".{file_name}.");
    let mut removed = vec![];
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = name.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".tmp")) else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if pid != std::process::id() && !process_alive(pid) && std::fs::remove_file(e.path()).is_ok() {
            tracing::info!("removed `{}`, left by an interrupted write (process {pid})", e.path().display());
            removed.push(e.path());
        }
    }
    removed
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsynced, renamed over it. On
/// error the temporary file is removed and `path` is left as it was; temporary files of earlier
/// writes that were killed are removed first.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_name = path.file_name().with_context(|| format!("`{}` is not a file name", path.display()))?;
    let file_name = file_name.to_string_lossy();
    let dir = parent_dir(path);
    remove_stale_temporaries(&dir, &file_name);
    let tmp = temporary(&dir, &file_name, std::process::id());
    let written = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot create `{}`", tmp.display()))?;
        if fault_midway() {
            f.write_all(&bytes[..bytes.len() / 2]).with_context(|| format!("cannot write `{}`", tmp.display()))?;
            let _ = f.sync_all();
            bail!(
                "injected fault ({FAULT_VAR}={FAULT_MIDWAY}): stopped after {} of {} bytes",
                bytes.len() / 2,
                bytes.len()
            );
        }
        f.write_all(bytes).with_context(|| format!("cannot write `{}`", tmp.display()))?;
        f.sync_all().with_context(|| format!("cannot sync `{}`", tmp.display()))?;
        drop(f);
        std::fs::rename(&tmp, path).with_context(|| format!("cannot move the artifact into `{}`", path.display()))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("writing `{}`", path.display())));
    }
    // make the rename durable (best effort: not every platform syncs directories)
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary file whose writer is gone is removed; one of a live process (this one's parent
    /// stands in for a concurrent writer) and unrelated files are kept.
    #[test]
    #[cfg(unix)]
    fn stale_temporaries_of_dead_writers_are_removed() {
        let dir = std::env::temp_dir().join(format!("qforge-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let dead = temporary(&dir, "m.qfa", u32::MAX - 1);
        let live = temporary(&dir, "m.qfa", std::os::unix::process::parent_id());
        let other = temporary(&dir, "other.qfa", u32::MAX - 1);
        for f in [&dead, &live, &other] {
            std::fs::write(f, b"partial").expect("write");
        }
        let removed = remove_stale_temporaries(&dir, "m.qfa");
        assert_eq!(removed, vec![dead.clone()]);
        assert!(!dead.exists() && live.exists() && other.exists());
        std::fs::remove_dir_all(&dir).ok();
    }
}
