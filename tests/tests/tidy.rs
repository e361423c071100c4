//! The crates' invariants (ARCHITECTURE.md), checked on the source text the way rust-analyzer's
//! tidy tests check theirs: what each crate may depend on, who may print or touch files, typed
//! errors at every crate boundary, and comments that say what the code does rather than which
//! issue asked for it.
//!
//! Each rule is a row of [`RULES`]; [`violations`] applies a row to every Rust file under a
//! crate's `src/`, skipping `#[cfg(test)]` modules (tests may print and use files).

use std::path::{Path, PathBuf};

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())).flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The file's text up to its first `#[cfg(test)]` (the test module, by convention last).
fn non_test_text(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    match text.find("#[cfg(test)]") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Code lines (comments dropped) with their 1-based numbers.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.split("//").next().unwrap_or("").to_string()))
        .filter(|(_, l)| !l.trim().is_empty())
        .collect()
}

/// One invariant: in the files of `crates` (minus `allowed` paths, relative to the root), no code
/// line contains any of `forbidden`.
struct Rule {
    what: &'static str,
    crates: &'static [&'static str],
    allowed: &'static [&'static str],
    forbidden: &'static [&'static str],
}

const PRINT: &[&str] = &["println!", "print!(", "eprintln!", "eprint!(", "dbg!("];
const FILES: &[&str] = &["std::fs", "fs::read", "fs::write", "File::open", "File::create", "std::process::Command"];

const RULES: &[Rule] = &[
    Rule {
        what: "ir, passes and codegen never print (the compiler's commands do)",
        crates: &["ir", "passes", "codegen"],
        allowed: &[],
        forbidden: PRINT,
    },
    Rule {
        what: "ir, passes and codegen never touch files or run programs (only compiler does)",
        crates: &["ir", "passes", "codegen"],
        allowed: &[],
        forbidden: FILES,
    },
    Rule {
        what: "in compiler, only the commands and main print",
        crates: &["compiler"],
        allowed: &["compiler/src/commands/", "compiler/src/main.rs"],
        forbidden: PRINT,
    },
    Rule {
        what: "the Python bindings never print (they return objects and raise exceptions)",
        crates: &["python"],
        allowed: &[],
        forbidden: PRINT,
    },
    Rule {
        what: "ir knows nothing of egg, Cranelift, ONNX or the other crates",
        crates: &["ir"],
        allowed: &[],
        forbidden: &["egg::", "cranelift", "prost::", "onnx", "qforge_passes", "qforge_codegen", "qforge::"],
    },
    Rule {
        what: "passes never calls codegen (it asks for an Evaluator) and knows nothing of ONNX",
        crates: &["passes"],
        allowed: &[],
        forbidden: &["qforge_codegen", "cranelift", "qforge::", "prost::"],
    },
    Rule {
        what: "codegen depends on ir only",
        crates: &["codegen"],
        allowed: &[],
        forbidden: &["qforge_passes", "egg::", "qforge::", "prost::"],
    },
];

fn violations(rule: &Rule) -> Vec<String> {
    let root = root();
    let mut out = vec![];
    for krate in rule.crates {
        for path in rust_files(&root.join(krate).join("src")) {
            let rel = path.strip_prefix(&root).unwrap_or(&path).display().to_string();
            if rule.allowed.iter().any(|a| rel.starts_with(a)) {
                continue;
            }
            for (n, line) in code_lines(&non_test_text(&path)) {
                for f in rule.forbidden {
                    if line.contains(f) {
                        out.push(format!("{rel}:{n}: `{f}` ({})", rule.what));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn crate_invariants_hold() {
    let all: Vec<String> = RULES.iter().flat_map(violations).collect();
    assert!(all.is_empty(), "{} violation(s):\n{}", all.len(), all.join("\n"));
}

/// The internal dependencies each crate's manifest may name (DESIGN.md's layout table).
#[test]
fn crate_dependencies_follow_the_layout() {
    let allowed: &[(&str, &[&str])] = &[
        ("ir", &[]),
        ("passes", &["qforge-ir"]),
        ("codegen", &["qforge-ir"]),
        ("compiler", &["qforge-ir", "qforge-passes", "qforge-codegen"]),
    ];
    let internal = ["qforge-ir", "qforge-passes", "qforge-codegen", "qforge "];
    for (krate, may) in allowed {
        let manifest = std::fs::read_to_string(root().join(krate).join("Cargo.toml")).expect("manifest");
        let deps = manifest.split("[dependencies]").nth(1).unwrap_or("");
        let deps = deps.split("\n[").next().unwrap_or("");
        for line in deps.lines() {
            let name = line.split(['=', '.']).next().unwrap_or("").trim();
            if internal.iter().any(|i| i.trim() == name) {
                assert!(may.contains(&name), "{krate}/Cargo.toml depends on {name}; the layout allows {may:?}");
            }
        }
    }
}

/// Every function signature in `text`, as the text from `fn` to its body or `;`, with the line it
/// starts on and whether it is public API (`pub fn`, or a method of a `pub trait`).
fn signatures(text: &str) -> Vec<(usize, bool, String)> {
    let mut out = vec![];
    let mut trait_depth: Option<i32> = None;
    let mut depth = 0i32;
    let lines: Vec<(usize, String)> = code_lines(text);
    let mut i = 0;
    while i < lines.len() {
        let (n, line) = &lines[i];
        let t = line.trim_start();
        if t.starts_with("pub trait ") {
            trait_depth = Some(depth);
        }
        let is_fn = t.starts_with("pub fn ") || t.starts_with("fn ") || t.starts_with("pub const fn ");
        if is_fn {
            let public = t.starts_with("pub ") || trait_depth.is_some_and(|d| depth == d + 1);
            let mut sig = String::new();
            let mut j = i;
            while j < lines.len() {
                let l = &lines[j].1;
                let end = l.find(['{', ';']);
                sig.push_str(&l[..end.unwrap_or(l.len())]);
                sig.push(' ');
                if end.is_some() {
                    break;
                }
                j += 1;
            }
            out.push((*n, public, sig));
        }
        depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
        if trait_depth.is_some_and(|d| depth <= d) && line.contains('}') {
            trait_depth = None;
        }
        i += 1;
    }
    out
}

/// No public function or trait method of any crate returns `Result<_, String>`: errors crossing a
/// crate boundary are typed (thiserror enums) so callers can match on them and the CLI still
/// prints one line.
#[test]
fn no_string_errors_cross_a_crate_boundary() {
    let root = root();
    let mut bad = vec![];
    for krate in ["ir", "passes", "codegen", "compiler", "python"] {
        for path in rust_files(&root.join(krate).join("src")) {
            let rel = path.strip_prefix(&root).unwrap_or(&path).display().to_string();
            for (n, public, sig) in signatures(&non_test_text(&path)) {
                let ret = sig.split("->").nth(1).unwrap_or("").replace(' ', "");
                if public && ret.starts_with("Result<") && ret.ends_with(",String>") {
                    bad.push(format!("{rel}:{n}: {}", sig.trim()));
                }
            }
        }
    }
    assert!(bad.is_empty(), "{} public function(s) return Result<_, String>:\n{}", bad.len(), bad.join("\n"));
}

/// Comments say what the code does and why, and cite public sources; they never point at the
/// issue tracker (issue numbers mean nothing to a reader of the code).
#[test]
fn comments_cite_sources_not_issues() {
    let root = root();
    let issue = |l: &str| {
        let l = l.to_ascii_lowercase();
        l.match_indices("issue").any(|(i, _)| {
            let rest = l[i + 5..].trim_start_matches([' ', '#']);
            rest.starts_with(|c: char| c.is_ascii_digit())
        })
    };
    let mut bad = vec![];
    for dir in [
        "ir/src",
        "passes/src",
        "codegen/src",
        "compiler/src",
        "tests/src",
        "tests/tests",
        "compiler/tests",
        "python/src",
    ] {
        for path in rust_files(&root.join(dir)) {
            let text = std::fs::read_to_string(&path).expect("source");
            for (n, line) in text.lines().enumerate() {
                if line.contains("//") && issue(line) {
                    bad.push(format!(
                        "{}:{}: {}",
                        path.strip_prefix(&root).unwrap_or(&path).display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(bad.is_empty(), "comments naming issues:\n{}", bad.join("\n"));
}
