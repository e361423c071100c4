//! The IR text form round-trips on every fixture in `tests/fixtures/qir/`: each file is in
//! canonical printed form (after its leading `//` comment lines), so `print(parse(t)) == t`.
//!
//! To rewrite the fixtures into canonical form after editing them by hand (comments kept), run
//! `QFORGE_BLESS_QIR=1 cargo test -p qforge-ir --test text_roundtrip`, then read the diff.

use qforge_ir::text::{parse, print, print_default, ConstMode};
use qforge_ir::{IrError, Op};
use std::path::PathBuf;

fn fixture_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/qir"))
}

fn fixtures() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixture_dir())
        .expect("fixture directory exists")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "qir"))
        .collect();
    v.sort();
    v
}

/// Splits a fixture into its leading `//` comment lines (and blank lines among them) and the
/// graph text.
fn split_comments(text: &str) -> (&str, &str) {
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.is_empty() || t.starts_with("//") {
            at += line.len();
        } else {
            break;
        }
    }
    text.split_at(at)
}

#[test]
fn fixtures_print_back_exactly() {
    let bless = std::env::var_os("QFORGE_BLESS_QIR").is_some();
    let files = fixtures();
    assert!(files.len() >= 6, "expected at least 6 fixtures in {}", fixture_dir().display());
    for path in files {
        let file = path.display();
        let text = std::fs::read_to_string(&path).expect("fixture is readable");
        let (comments, body) = split_comments(&text);
        let g = parse(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        let printed = print(&g, ConstMode::Full).unwrap_or_else(|e| panic!("{file}: {e}"));
        if bless && printed != body {
            std::fs::write(&path, format!("{comments}{printed}")).expect("fixture is writable");
            eprintln!("rewrote {file}");
        } else {
            assert_eq!(printed, body, "{file} is not in canonical printed form");
        }

        // Printing is stable through another round trip.
        let g2 = parse(&printed).unwrap_or_else(|e| panic!("{file}, reprinted: {e}"));
        assert_eq!(print(&g2, ConstMode::Full).unwrap(), printed, "{file}: print(parse(print(g))) differs");

        // Summary mode prints the same text when every constant is small enough to be inline,
        // and text that refuses to parse otherwise.
        let largest = g
            .schedule()
            .unwrap()
            .into_iter()
            .filter_map(|id| match &g.node(id).op {
                Op::Const(t) => Some(t.len()),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let summary = print_default(&g).unwrap();
        if largest <= 16 {
            assert_eq!(summary, printed, "{file}: summary and full forms differ");
        } else {
            match parse(&summary) {
                Err(IrError::Parse { msg, .. }) => {
                    assert!(msg.contains("summary form"), "{file}: {msg}")
                }
                other => panic!("{file}: summarized text parsed: {other:?}"),
            }
            assert_eq!(print_default(&parse(&printed).unwrap()).unwrap(), summary);
        }
    }
}

#[test]
fn every_truncation_of_every_fixture_is_an_error_not_a_panic() {
    for path in fixtures() {
        let text = std::fs::read_to_string(&path).unwrap();
        let (_, body) = split_comments(&text);
        let body = body.trim_end();
        for (i, _) in body.char_indices() {
            match parse(&body[..i]) {
                Err(IrError::Parse { line, col, .. }) => assert!(line >= 1 && col >= 1),
                Err(_) => {}
                Ok(_) => panic!("{}: the prefix of {i} bytes parsed", path.display()),
            }
        }
    }
}

/// Deterministic token-level mutations of every fixture (numbers replaced by huge, negative or
/// symbolic values, operands and separators swapped in): any outcome but a panic is fine, and
/// whatever parses prints stably.
#[test]
fn mutated_fixtures_never_panic() {
    let replacements = [
        "18446744073709551615",
        "9223372036854775807",
        "-9223372036854775808",
        "4294967296",
        "0",
        "1",
        "-1",
        "N",
        "N*3",
        "[]",
        "[0,0]",
        "_",
        "%0",
        "%x",
        ",",
        "inf",
        "-inf",
        "NaN",
        "1e38",
        "-0.0",
        "axis=9: 0.1:0",
        "axis=1 group=0: 0.1:0",
        "axis=1 group=3: 0.1:0",
    ];
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    for path in fixtures() {
        let text = std::fs::read_to_string(&path).unwrap();
        for _ in 0..1500 {
            let mut s = text.clone();
            for _ in 0..1 + next(2) {
                // Replace the word (or empty run) at a random character boundary.
                let at = next(s.len());
                if !s.is_char_boundary(at) {
                    continue;
                }
                let len = s[at..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'))
                    .unwrap_or(s.len() - at);
                s.replace_range(at..at + len, replacements[next(replacements.len())]);
            }
            if let Ok(g) = parse(&s) {
                let p = print(&g, ConstMode::Full).unwrap_or_else(|e| panic!("{e}\n{s}"));
                assert_eq!(print(&parse(&p).unwrap(), ConstMode::Full).unwrap(), p);
            }
        }
    }
}

/// Per-group parameters: `<axis=A group=G: s:z, ...>` with one pair per group, the pairs in the
/// row-major order of the parameter tensor (the value's shape with `ceil(dim / G)` at `A`); the
/// round trip is exact, and malformed parameters are errors that say what is wrong.
#[test]
fn per_group_parameters_round_trip_and_are_checked() {
    let good = "graph g() -> (w: f32[2,3]) {\n  %0 = const i8<axis=1 group=2: 0.5:0, 1e-7:-8, 0.1:3, 0.30000001:7>[2,3] = [-8, 7, 0, 1, 2, 3]  # \"w_q\"\n  %1 = dequantize %0 : f32[2,3]  # \"w_dq\"\n  return %1\n}\n";
    let g = parse(good).unwrap();
    let printed = print(&g, ConstMode::Full).unwrap();
    assert_eq!(print(&parse(&printed).unwrap(), ConstMode::Full).unwrap(), printed);
    assert!(printed.contains("i8<axis=1 group=2: 0.5:0, 1e-7:-8, 0.1:3, 0.3:7>[2,3]"), "{printed}");
    let bad = [("group=0", "group size 0"), ("group=5", "per-group scales"), ("group=3", "per-group scales")];
    for (group, want) in bad {
        let text = good.replace("group=2", group);
        let e = parse(&text).expect_err(group).to_string();
        assert!(e.contains(want), "{group}: {e}");
    }
    // a per-group axis out of range
    let e = parse(&good.replace("axis=1 group=2", "axis=2 group=2")).expect_err("axis 2").to_string();
    assert!(e.contains("out of range"), "{e}");
}
