//! `qforge pipeline` on the command line: the budget table and its exit code (every budget met:
//! 0; one missed: 1 and one line naming it), both modes, the JSON keys and the HTML report.

mod common;
use common::{expect_error, expect_ok, p, scratch};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/pipeline").join(name)
}

/// The fixture's pipeline with the budgets given, written into `dir`.
fn pipeline(dir: &Path, planner_budget_ms: f64, end_to_end: &str) -> PathBuf {
    let f = |n: &str| fixture(n).display().to_string();
    let text = format!(
        "name = \"ppc\"\n[input.camera]\nframes = \"{}\"\n[budget]\n{end_to_end}\n\
         [[stage]]\nname = \"detector\"\nmodel = \"{}\"\nprecision = \"int8\"\ncalib = \"{}\"\nbudget_ms = 1000.0\nfrom = \"camera\"\n\
         [[stage]]\nname = \"planner\"\nmodel = \"{}\"\nprecision = \"fp16\"\nbudget_ms = {planner_budget_ms:?}\nfrom = \"detector.features\"\n\
         [[stage]]\nname = \"control\"\nmodel = \"{}\"\nfrom = [\"planner.out0\", \"detector.out1\"]\n",
        f("frames.npy"),
        f("detector.onnx"),
        f("calib.npy"),
        f("planner.onnx"),
        f("control.onnx"),
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn budgets_met() {
    let d = scratch("pipeline_ok");
    let toml = pipeline(&d, 1000.0, "latency_ms = 1000.0\nfps = 0.5\nmemory_mb = 100000");
    for mode in ["--compare", "--sequential"] {
        let o = expect_ok(&["pipeline", p(&toml), "--frames", "12", "--warmup", "1", mode]);
        for line in [
            "stage `detector` p99 latency",
            "stage `planner` p99 latency",
            "end-to-end p99 latency",
            "frames per second",
            "process peak RSS",
        ] {
            assert!(
                o.stdout.lines().any(|l| l.contains(line) && l.ends_with(": pass")),
                "no passing `{line}` in:\n{}",
                o.stdout
            );
        }
        assert!(!o.stdout.contains("FAIL"), "{}", o.stdout);
    }
}

#[test]
fn budget_missed_exits_non_zero() {
    let d = scratch("pipeline_fail");
    let toml = pipeline(&d, 1e-6, "");
    expect_error(
        &["pipeline", p(&toml), "--frames", "4", "--warmup", "0"],
        "budget missed: stage `planner` p99 latency",
    );
    let toml = pipeline(&d, 1000.0, "fps = 1e9");
    expect_error(&["pipeline", p(&toml), "--frames", "4", "--warmup", "0"], "budget missed: frames per second");
}

#[test]
fn json_and_report() {
    let d = scratch("pipeline_json");
    let toml = pipeline(&d, 1000.0, "");
    let html = d.join("report.html");
    let o = expect_ok(&["pipeline", p(&toml), "--frames", "8", "--json", "--report", p(&html)]);
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).expect("one JSON object");
    let run = &v["run"];
    for key in ["mode", "frames", "stages", "end_to_end", "fps", "peak_rss_bytes", "checks"] {
        assert!(!run[key].is_null(), "no `{key}` in {run}");
    }
    assert_eq!(run["stages"].as_array().map(Vec::len), Some(3));
    assert!(run["stages"][0]["memory"]["arena_bytes"].as_u64().is_some_and(|b| b > 0));
    let rows = v["cascade"]["rows"].as_array().expect("cascade rows");
    assert!(rows.iter().any(|r| r["quantized"] == "detector" && r["output"] == "control.control"));
    let page = std::fs::read_to_string(&html).unwrap();
    for part in ["Cascaded error", "control.control", "end to end", "detector.features"] {
        assert!(page.contains(part), "the report has no `{part}`");
    }
}

#[test]
fn file_errors_are_one_line() {
    let d = scratch("pipeline_err");
    let path = d.join("bad.toml");
    let head = format!("[input.camera]\nframes = \"{}\"\n", fixture("frames.npy").display());
    std::fs::write(&path, format!("{head}[[stage]]\nname = \"a\"\nmodel = \"a.onnx\"\nfrom = \"camera\"\n")).unwrap();
    expect_error(&["pipeline", p(&path)], "bad.toml`: stage `a`: model `");
    std::fs::write(
        &path,
        "[input.camera]\nframes = \"nowhere.npy\"\n[[stage]]\nname = \"a\"\nmodel = \"a.onnx\"\nfrom = \"camera\"\n",
    )
    .unwrap();
    expect_error(&["pipeline", p(&path)], "bad.toml`: input `camera`: frames `");
    expect_error(&["pipeline", "/nonexistent/pipeline.toml"], "cannot read pipeline `/nonexistent/pipeline.toml`");
}
