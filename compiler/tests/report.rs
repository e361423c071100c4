//! `qforge graph` and `qforge report` on the bundled digits model: the DOT picture (fused-node
//! labels, legend, folded constants, determinism), SVG through Graphviz when it is installed, the
//! HTML report's sections and determinism (apart from timings), and the report rendered in
//! headless Chromium without console errors. The Graphviz and Chromium checks are ignored unless
//! asked for (`--include-ignored`, as CI does), and then fail when the tool is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{expect_error_env as expect_error, expect_ok as qforge_ok, p, scratch};

/// A bundled asset's path as a string argument.
fn asset(name: &str) -> String {
    p(&common::asset(name)).to_string()
}

fn int8_args<'a>(model: &'a str, calib: &'a str) -> Vec<&'a str> {
    vec![model, "--quantize", "int8", "--calib", calib]
}

fn dot_installed() -> bool {
    Command::new("dot").arg("-V").stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

#[test]
fn graph_dot_labels_fused_nodes_folds_constants_and_has_a_legend() {
    let (model, calib) = (asset("digits_cnn.onnx"), asset("digits_calib_x.npy"));
    let dir = scratch("dot");
    let out = dir.join("g.dot");
    let mut args = vec!["graph"];
    args.extend(int8_args(&model, &calib));
    args.extend(["-o", p(&out)]);
    qforge_ok(&args);
    let dot = std::fs::read_to_string(&out).expect("dot written");
    assert!(dot.starts_with("digraph \"digits_cnn\" {"), "{dot}");
    // fused integer kernels, with what they absorbed
    assert!(dot.contains("qconv [bias, requant]"), "{dot}");
    assert!(dot.contains("absorbed 6:\\n"), "{dot}");
    for absorbed in ["/bn1/BatchNormalization", "/relu1/Relu", "/relu3/Relu_QuantizeLinear"] {
        assert!(dot.contains(absorbed), "no `{absorbed}` in:\n{dot}");
    }
    // the classifier returns its logits in f32 from the accumulator
    assert!(dot.contains("qgemm [bias, dequant]"), "{dot}");
    // constants are in their consumer's label, never boxes of their own
    assert!(dot.contains("in1 const i8<axis=0 x16>[16,1,3,3]"), "{dot}");
    assert!(!dot.lines().any(|l| l.contains("label=\"const")), "{dot}");
    let boxes =
        dot.lines().filter(|l| l.trim_start().starts_with('n') && !l.contains("->") && l.contains("[label=")).count();
    assert_eq!(boxes, 9, "input, quantize, 3 qconv, max_pool, qgap, flatten, qgemm:\n{dot}");
    // edges carry the value type; the legend lists the dtypes present with their colours
    assert!(dot.contains("-> n") && dot.contains("[label=\"u8<"), "{dot}");
    assert!(dot.contains("subgraph cluster_legend"), "{dot}");
    for (d, color) in [("f32", "#cfe2f3"), ("u8", "#fce5cd")] {
        assert!(dot.contains(&format!("<td bgcolor=\"{color}\">{d}</td>")), "no legend entry for {d}:\n{dot}");
    }
    assert!(!dot.contains(">i8</td>"), "i8 only in constants, which are not drawn:\n{dot}");
    // deterministic, and the same text on stdout without -o
    let again = qforge_ok(&args);
    assert_eq!(std::fs::read_to_string(&out).expect("dot"), dot);
    let kib = dot.len() as f64 / 1024.0;
    let line = format!("wrote `{}` ({kib:.1} KiB): digits_cnn: after the pipeline, 8 nodes\n", out.display());
    assert_eq!(again.stdout, line);
    let mut stdout_args = vec!["graph"];
    stdout_args.extend(int8_args(&model, &calib));
    assert_eq!(qforge_ok(&stdout_args).stdout, dot);
}

#[test]
fn graph_after_a_pass_and_errors() {
    let (model, calib) = (asset("digits_cnn.onnx"), asset("digits_calib_x.npy"));
    let mut args = vec!["graph"];
    args.extend(int8_args(&model, &calib));
    args.extend(["--after", "quantize-static"]);
    let before_opt = qforge_ok(&args).stdout;
    assert!(before_opt.contains("after pass quantize-static"), "{before_opt}");
    assert!(before_opt.contains("label=\"quantize\\n") && before_opt.contains("label=\"dequantize\\n"), "{before_opt}");
    assert!(!before_opt.contains("qconv"), "{before_opt}");
    let mut bad = vec!["graph"];
    bad.extend(int8_args(&model, &calib));
    bad.extend(["--after", "nosuch"]);
    expect_error(&bad, &[], "--after nosuch: no such pass ran (the passes: canonicalize,");
    expect_error(&["graph", &model, "-o", "/tmp/g.png"], &[], "unknown picture format (expected .svg, .dot or .gv)");
}

#[test]
fn graph_svg_without_graphviz_writes_the_dot_text() {
    let model = asset("digits_cnn.onnx");
    let dir = scratch("svg");
    let svg = dir.join("g.svg");
    // a missing `dot`: the DOT text lands beside the requested file, and one error line says so
    expect_error(
        &["graph", &model, "-o", p(&svg)],
        &[("QFORGE_DOT", "/nonexistent/dot")],
        "graphviz `/nonexistent/dot` is not installed",
    );
    assert!(std::fs::read_to_string(dir.join("g.dot")).expect("fallback dot").starts_with("digraph"));
    assert!(!svg.exists());
}

#[test]
#[ignore = "needs graphviz `dot` (apt install graphviz)"]
fn graph_svg_renders_with_graphviz() {
    common::require(dot_installed(), "graphviz `dot`");
    let model = asset("digits_cnn.onnx");
    let dir = scratch("svg-render");
    let svg = dir.join("g.svg");
    qforge_ok(&["graph", &model, "-o", p(&svg)]);
    let text = std::fs::read_to_string(&svg).expect("svg written");
    assert!(text.contains("<svg") && text.contains("</svg>"), "{text}");
    assert!(text.contains("digits_cnn") && text.contains("legend"), "{text}");
}

/// `s` without the `<!--timing-->` … `<!--/timing-->` regions.
fn strip_timings(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("<!--timing-->") {
        out.push_str(&rest[..i]);
        let j = rest[i..].find("<!--/timing-->").expect("closed timing region");
        rest = &rest[i + j + "<!--/timing-->".len()..];
    }
    out.push_str(rest);
    out
}

fn write_report(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    qforge_ok(&[
        "report",
        &asset("digits_cnn.onnx"),
        "--calib",
        &asset("digits_calib_x.npy"),
        "--input",
        &asset("digits_samples_x.npy"),
        "--labels",
        &asset("digits_samples_y.npy"),
        "--sensitivity-samples",
        "60",
        "--latency-iters",
        "3",
        "-o",
        p(&out),
    ]);
    out
}

#[test]
fn report_has_every_section_and_is_deterministic_apart_from_timings() {
    let dir = scratch("html");
    let a = std::fs::read_to_string(write_report(&dir, "a.html")).expect("report");
    let b = std::fs::read_to_string(write_report(&dir, "b.html")).expect("report");
    assert_eq!(strip_timings(&a), strip_timings(&b), "the report changed between runs (timings stripped)");
    assert!(a.starts_with("<!DOCTYPE html>") && a.trim_end().ends_with("</html>"));
    for (id, _) in qforge::report::SECTIONS {
        assert!(a.contains(&format!("<section id=\"{id}\">")), "no section `{id}`");
    }
    for needle in [
        "input: f32[N,1,8,8]",
        "logits: f32[N,10]",
        "weight bytes (fp32 → compiled)",
        "<th>quantization</th>",
        "qconv [bias, requant]",
        "per axis 0: 16 scales",
        "Every quantize/dequantize is in an integer kernel",
        "Per-layer INT8 sensitivity",
        "<svg xmlns=\"http://www.w3.org/2000/svg\"",
        "/conv1/Conv",
        "kernel",
        "Compression",
        "fp32 top-1",
        "compiled top-1",
        "output SQNR vs fp32",
        "output cosine similarity vs fp32",
    ] {
        assert!(a.contains(needle), "no `{needle}` in the report");
    }
    // self-contained: no scripts, no external resources
    assert!(!a.contains("<script"), "a script in the report");
    for attr in ["src=\"http", "href=\"http", "url(", "@import"] {
        assert!(!a.contains(attr), "an external resource: `{attr}`");
    }
    // the sensitivity chart has one bar per quantizable layer (3 conv + gemm, maybe more)
    let bars = a.matches("<rect x=\"300\"").count();
    assert!(bars >= 4, "{bars} sensitivity bars");
    // the argument checks are one line
    expect_error(
        &["report", &asset("digits_cnn.onnx"), "-o", p(&dir.join("x.html"))],
        &[],
        "report needs calibration data: add --calib X.npy",
    );
    expect_error(
        &["report", &asset("digits_cnn.onnx"), "--calib", &asset("digits_calib_x.npy"), "-o", "r.pdf"],
        &[],
        "the report is HTML",
    );
    expect_error(
        &["report", &asset("digits_cnn.onnx"), "--calib", &asset("digits_calib_x.npy"), "-o", "/nonexistent/r.html"],
        &[],
        "the directory `/nonexistent` does not exist",
    );
}

#[test]
fn report_escapes_text() {
    use qforge::report::render::{escape, sensitivity_svg};
    use qforge_passes::quantize::LayerSensitivity;
    assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;'");
    let layers = [LayerSensitivity {
        node: "<script>alert(1)</script>".into(),
        op: "conv",
        from: vec!["a&b".into()],
        sqnr_db: f64::INFINITY,
        top1: Some(0.5),
    }];
    let svg = sensitivity_svg(&layers);
    assert!(!svg.contains("<script>") && svg.contains("&lt;script&gt;") && svg.contains("a&amp;b"), "{svg}");
    assert!(svg.contains("∞ dB"), "{svg}");
}

/// Chromium's binary: `QFORGE_CHROMIUM`, else the first of the usual names on the PATH.
fn chromium() -> Option<String> {
    if let Ok(c) = std::env::var("QFORGE_CHROMIUM") {
        return Some(c);
    }
    ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"].into_iter().map(String::from).find(|c| {
        Command::new(c).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    })
}

/// Runs `cmd` for at most `limit`, returning its stdout and stderr.
fn run_with_timeout(mut cmd: Command, limit: Duration) -> (String, String) {
    let dir = scratch("chromium-io");
    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
    cmd.stdout(std::fs::File::create(&out_path).expect("stdout file"));
    cmd.stderr(std::fs::File::create(&err_path).expect("stderr file"));
    let mut child = cmd.spawn().expect("chromium starts");
    let t = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    (read(&out_path), read(&err_path))
}

fn headless(chromium: &str, profile: &Path) -> Command {
    let mut c = Command::new(chromium);
    c.args(["--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()));
    c
}

#[test]
#[ignore = "needs chromium (apt install chromium)"]
fn report_renders_in_headless_chromium_without_console_errors() {
    let chromium = chromium();
    common::require(chromium.is_some(), "chromium");
    let Some(chromium) = chromium else { return };
    let dir = scratch("chromium");
    let report = write_report(&dir, "digits_report.html");
    let url = format!("file://{}", report.display());
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let shot = shots.join("digits_report.png");
    let _ = std::fs::remove_file(&shot);
    let mut c = headless(&chromium, &dir.join("profile-shot"));
    c.args(["--enable-logging=stderr", "--v=0", "--window-size=1280,2000"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url);
    let (_, stderr) = run_with_timeout(c, Duration::from_secs(90));
    let console: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("Uncaught") || l.contains("ERROR:CONSOLE") || l.contains(":CONSOLE("))
        .collect();
    assert!(console.is_empty(), "console errors:\n{}", console.join("\n"));
    let png = std::fs::read(&shot).unwrap_or_else(|_| panic!("no screenshot; chromium said:\n{stderr}"));
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes of screenshot", png.len());
    eprintln!("screenshot of the digits report: {}", shot.display());
    // the DOM chromium built has every section and the sensitivity chart
    let mut c = headless(&chromium, &dir.join("profile-dom"));
    c.arg("--dump-dom").arg(&url);
    let (dom, stderr) = run_with_timeout(c, Duration::from_secs(90));
    for (id, _) in qforge::report::SECTIONS {
        assert!(dom.contains(&format!("id=\"{id}\"")), "no section `{id}` in the rendered DOM; chromium:\n{stderr}");
    }
    assert!(dom.contains("<rect"), "no sensitivity bars in the DOM");
}
