//! Compiled artifacts (`.qfa`): save and load are bit-exact (the loaded graph runs to the same bits
//! as the graph compiled in the process), writes are atomic (the fault hook leaves nothing behind),
//! every malformed file is a one-line error, and `qforge diff` lists changed quantization.

use qforge::artifact::{fnv1a64, Artifact, FAULT_MIDWAY, FAULT_VAR, FORMAT_VERSION};
use qforge::options::QuantizeMode;
use qforge::{load_model, Compiler, PipelineOptions};
use qforge_ir::Tensor;
use std::path::Path;

mod common;
use common::*;

fn bits(ts: &[Tensor]) -> Vec<Vec<u32>> {
    ts.iter().map(|t| t.as_f32().expect("f32 output").iter().map(|x| x.to_bits()).collect()).collect()
}

/// Compiles `model` in this process, runs `x`; saves, loads, runs again: the same bits, and the
/// same graph (the printed form includes every constant's digest).
fn roundtrip(model: &Path, opts: PipelineOptions, x: &Tensor, dir: &Path) {
    let compiler = Compiler::new(opts).unwrap();
    let g = compiler.optimize(load_model(model).unwrap()).unwrap();
    let want = compiler.executable(g.clone()).run(std::slice::from_ref(x)).unwrap();
    let path = dir.join("model.qfa");
    Artifact::new(g.clone(), model, &compiler).unwrap().save(&path).unwrap();
    let a = Artifact::load(&path).unwrap();
    assert_eq!(a.header.format_version, FORMAT_VERSION);
    assert_eq!(a.header.qforge_version, env!("CARGO_PKG_VERSION"));
    let digest = fnv1a64(&std::fs::read(model).unwrap());
    assert_eq!(a.header.model_digest, format!("fnv1a64:{digest:016x}"));
    assert_eq!(a.header.profile, compiler.profile().name);
    assert_eq!(a.header.pipeline, serde_json::to_value(compiler.options()).unwrap());
    assert_eq!(qforge_ir::text::print_default(&a.graph).unwrap(), qforge_ir::text::print_default(&g).unwrap());
    // straight to the executable: no pipeline
    let got = compiler.executable(a.graph).run(std::slice::from_ref(x)).unwrap();
    assert_eq!(bits(&got), bits(&want));
}

fn first_image() -> Tensor {
    let x = qforge::npy::read(&corpus("imagenet_like_test_x.npy")).unwrap();
    qforge::data::slice_batch(&x, 0, 1).unwrap()
}

#[test]
fn mobilenet_fp32_loads_and_runs_bit_identical() {
    let d = scratch("mnv2-fp32");
    roundtrip(&corpus("mobilenet_v2.onnx"), PipelineOptions::default(), &first_image(), &d);
}

#[test]
fn mobilenet_int8_loads_and_runs_bit_identical() {
    let d = scratch("mnv2-int8");
    let calib = qforge::npy::read(&corpus("imagenet_like_calib_x.npy")).unwrap();
    let calib_path = d.join("calib4.npy");
    qforge::npy::write(&calib_path, &qforge::data::slice_batch(&calib, 0, 4).unwrap()).unwrap();
    let opts = PipelineOptions { quantize: QuantizeMode::Int8, calib: Some(calib_path), ..PipelineOptions::default() };
    roundtrip(&corpus("mobilenet_v2.onnx"), opts, &first_image(), &d);
}

#[test]
fn digits_artifact_runs_evaluates_benches_and_inspects() {
    let d = scratch("digits-cli");
    let (model, xs, ys) = (asset("digits_cnn.onnx"), asset("digits_samples_x.npy"), asset("digits_samples_y.npy"));
    let (calib, qfa) = (asset("digits_calib_x.npy"), d.join("digits.qfa"));
    let quant = ["--quantize", "int8", "--calib", p(&calib)];
    let o = expect_ok(&[&["compile", p(&model), "-o", p(&qfa), "--report"][..], &quant].concat());
    assert!(o.stdout.contains("pass "), "{}", o.stdout);
    // run: the artifact's outputs are the compiled model's, to the byte
    let (y1, y2) = (d.join("y1.npy"), d.join("y2.npy"));
    expect_ok(&[&["run", p(&model), "--input", p(&xs), "--output", p(&y1)][..], &quant].concat());
    expect_ok(&["run", p(&qfa), "--input", p(&xs), "--output", p(&y2)]);
    assert_eq!(std::fs::read(&y1).unwrap(), std::fs::read(&y2).unwrap());
    // the options it was compiled with may be repeated; runtime options apply
    expect_ok(&[&["run", p(&qfa), "--input", p(&xs), "--output", p(&y2), "--engine", "interp"][..], &quant].concat());
    let o = expect_ok(&["eval", p(&qfa), "--input", p(&xs), "--labels", p(&ys), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert!(v["top1"].as_f64().unwrap() > 0.9, "{v}");
    let o = expect_ok(&["bench", p(&qfa), "--iters", "2", "--warmup", "0", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert!(v["median_ms"].is_number(), "{v}");
    let o = expect_ok(&["inspect", p(&qfa)]);
    assert!(o.stdout.contains("artifact format 1") && o.stdout.contains("--quantize int8"), "{}", o.stdout);
    let o = expect_ok(&["inspect", p(&qfa), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["artifact"]["model"], "digits_cnn.onnx");
    assert!(v["nodes"].as_array().is_some_and(|n| !n.is_empty()));
    // conflicting graph options, recompiling an artifact, a non-.qfa output
    expect_error(
        &["run", p(&qfa), "--input", p(&xs), "--output", p(&y2), "--per-tensor"],
        "--per-tensor true conflicts",
    );
    expect_error(&["inspect", p(&qfa), "--precision", "fp16"], "conflicts with the artifact");
    expect_error(&["compile", p(&qfa), "-o", p(&d.join("again.qfa"))], "is a compiled artifact");
    expect_error(&["compile", p(&model), "-o", p(&d.join("x.bin"))], "artifacts are `.qfa` files");
    expect_error(&["compile", p(&model)], "without -o only reports");
}

#[test]
fn fault_midway_leaves_no_artifact_and_no_temp_file() {
    let d = scratch("fault");
    let model = asset("digits_cnn.onnx");
    let out = d.join("m.qfa");
    let fault = [(FAULT_VAR, FAULT_MIDWAY)];
    expect_error_env(&["compile", p(&model), "-o", p(&out)], &fault, "injected fault");
    let left: Vec<_> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // an existing artifact is left as it was
    expect_ok(&["compile", p(&model), "-o", p(&out)]);
    let before = std::fs::read(&out).unwrap();
    expect_error_env(&["compile", p(&model), "-o", p(&out), "--per-tensor"], &fault, "injected fault");
    assert_eq!(std::fs::read(&out).unwrap(), before);
    let left: Vec<_> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("m.qfa")]);
}

/// A well-formed container around `header` and `payload` (correct checksum).
fn container(version: u32, header: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut b = b"QFA\0".to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&(header.len() as u64).to_le_bytes());
    b.extend_from_slice(header);
    b.extend_from_slice(payload);
    let sum = fnv1a64(&b);
    b.extend_from_slice(&sum.to_le_bytes());
    b
}

#[test]
fn malformed_artifacts_are_one_line_errors() {
    let d = scratch("malformed");
    let good = d.join("good.qfa");
    expect_ok(&["compile", asset("digits_cnn.onnx").to_str().unwrap(), "-o", p(&good)]);
    let bytes = std::fs::read(&good).unwrap();
    let n = bytes.len();
    let header_len = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[16..16 + header_len]).unwrap();
    let write = |name: &str, b: &[u8]| {
        let f = d.join(name);
        std::fs::write(&f, b).unwrap();
        f
    };
    let mut flipped = bytes.clone();
    flipped[n / 2] ^= 0x10;
    let mut newer = bytes.clone();
    newer[4..8].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let mut bad_magic = bytes.clone();
    bad_magic[..4].copy_from_slice(b"PK\x03\x04");
    // a valid checksum around a payload that is not an IR graph
    let garbage = b"\x05\0\0\0\0\0\0\0hello";
    let mut h = header.clone();
    h["payload_bytes"] = serde_json::json!(garbage.len());
    let unparsable = container(FORMAT_VERSION, &serde_json::to_vec(&h).unwrap(), garbage);
    let bad_header = container(FORMAT_VERSION, b"{not json", b"");
    let cases: [(&str, &[u8], &str); 8] = [
        ("truncated.qfa", &bytes[..n - 100], "is truncated"),
        ("tiny.qfa", &bytes[..10], "is truncated"),
        ("flipped.qfa", &flipped, "is corrupted (checksum mismatch"),
        ("newer.qfa", &newer, &format!("format version {}, newer than", FORMAT_VERSION + 1)),
        ("magic.qfa", &bad_magic, "not a qforge artifact"),
        ("empty.qfa", b"", "is truncated"),
        ("unparsable.qfa", &unparsable, "payload does not parse"),
        ("header.qfa", &bad_header, "header does not parse"),
    ];
    for (name, b, needle) in cases {
        let f = write(name, b);
        expect_error(&["inspect", p(&f)], needle);
        expect_error(&["run", p(&f), "--input", "x.npy", "--output", "y.npy"], needle);
    }
    expect_error(&["diff", p(&good), p(&d.join("flipped.qfa"))], "checksum mismatch");
    // no input makes the reader panic: every truncation and a sweep of byte flips
    for len in (0..n).step_by((n / 300).max(1)) {
        assert!(Artifact::from_bytes(&bytes[..len]).is_err(), "prefix of {len} bytes loaded");
    }
    for at in (0..n).step_by((n / 300).max(1)) {
        let mut b = bytes.clone();
        b[at] ^= 0xff;
        assert!(Artifact::from_bytes(&b).is_err(), "flip at {at} loaded");
    }
    // and flips under a recomputed checksum reach the parsers, which must not panic either
    for at in (16..n - 8).step_by((n / 300).max(1)) {
        let mut b = bytes[..n - 8].to_vec();
        b[at] ^= 0x41;
        let sum = fnv1a64(&b);
        b.extend_from_slice(&sum.to_le_bytes());
        let _ = Artifact::from_bytes(&b);
    }
}

#[test]
fn diff_lists_changed_quantization() {
    let d = scratch("diff");
    let (model, calib) = (asset("digits_cnn.onnx"), asset("digits_calib_x.npy"));
    let (pc, pt) = (d.join("per_channel.qfa"), d.join("per_tensor.qfa"));
    let q = ["--quantize", "int8", "--calib", p(&calib)];
    expect_ok(&[&["compile", p(&model), "-o", p(&pc)][..], &q].concat());
    expect_ok(&[&["compile", p(&model), "-o", p(&pt), "--per-tensor"][..], &q].concat());
    let o = expect_ok(&["diff", p(&pc), p(&pt)]);
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert!(o.stdout.contains("header pipeline.per_tensor: false -> true"), "{}", o.stdout);
    assert!(lines.iter().any(|l| l.contains("per-axis axis 0") && l.contains("-> per-tensor scale")), "{}", o.stdout);
    let summary = lines.last().unwrap();
    assert!(summary.contains("nodes matched") && !summary.contains(" 0 quantization changes"), "{summary}");
    let o = expect_ok(&["diff", p(&pc), p(&pt), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let changes = v["changes"].as_array().unwrap();
    assert!(changes.iter().any(|c| c["kind"] == "quant"), "{v}");
    assert!(v["summary"]["quant_changes"].as_u64().unwrap() > 0);
    // against itself: nothing
    let o = expect_ok(&["diff", p(&pc), p(&pc)]);
    assert!(o.stdout.contains("0 quantization changes, 0 dtype changes, 0 op changes; 0 only in A, 0 only in B"));
    // an fp32 artifact: quantized nodes become float, fused nodes only in one of them
    let fp = d.join("fp32.qfa");
    expect_ok(&["compile", p(&model), "-o", p(&fp)]);
    let o = expect_ok(&["diff", p(&fp), p(&pc)]);
    assert!(o.stdout.lines().any(|l| l.starts_with("+ ") || l.contains("float ->")), "{}", o.stdout);
}
