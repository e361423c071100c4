//! The command line's contract: errors are one line on stderr and a non-zero exit, never a panic
//! or a backtrace; `--json` output has the documented keys.

mod common;
use common::{asset, corpus, expect_error, p, qforge, scratch};

#[test]
fn missing_model_file() {
    expect_error(&["inspect", "/nonexistent/model.onnx"], "cannot read `/nonexistent/model.onnx`");
}

#[test]
fn truncated_onnx() {
    let d = scratch("truncated");
    let bytes = std::fs::read(asset("digits_cnn.onnx")).unwrap();
    let f = d.join("half.onnx");
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    expect_error(&["inspect", p(&f)], "is not a valid ONNX model");
}

#[test]
fn non_onnx_file() {
    let d = scratch("nononnx");
    let f = d.join("notes.onnx");
    std::fs::write(&f, "this is not a protobuf, just some text\n").unwrap();
    expect_error(&["inspect", p(&f)], "is not a valid ONNX model");
}

#[test]
fn unknown_model_extension() {
    expect_error(&["inspect", p(&asset("digits_samples_x.npy"))], "unknown model format");
}

#[test]
fn input_of_wrong_shape() {
    let d = scratch("shape");
    let x = qforge_ir::Tensor::from_f32(vec![2, 3], vec![0.0; 6]);
    let f = d.join("x.npy");
    qforge::npy::write(&f, &x).unwrap();
    let out = d.join("y.npy");
    expect_error(&["run", p(&asset("digits_cnn.onnx")), "--input", p(&f), "--output", p(&out)], "input `input`");
}

#[test]
fn input_of_wrong_dtype() {
    let d = scratch("dtype");
    let x = qforge_ir::Tensor::from_i64(vec![1, 1, 8, 8], vec![0; 64]);
    let f = d.join("x.npy");
    qforge::npy::write(&f, &x).unwrap();
    let out = d.join("y.npy");
    expect_error(&["run", p(&asset("digits_cnn.onnx")), "--input", p(&f), "--output", p(&out)], "i64");
}

#[test]
fn missing_input_npy() {
    let d = scratch("missingnpy");
    expect_error(
        &["run", p(&asset("digits_cnn.onnx")), "--input", "/nonexistent/x.npy", "--output", p(&d.join("y.npy"))],
        "/nonexistent/x.npy",
    );
}

#[test]
fn unsupported_op() {
    let d = scratch("unsupported");
    let f = d.join("einsum.onnx");
    std::fs::write(&f, qforge::onnx::builder::single_node_model("Einsum", "")).unwrap();
    expect_error(&["inspect", p(&f)], "unsupported op `Einsum`");
}

#[test]
fn bench_json_has_the_documented_keys_and_sweeps_batches() {
    let o = qforge(&[
        "bench",
        p(&asset("digits_cnn.onnx")),
        "--batch",
        "1,4",
        "--iters",
        "3",
        "--warmup",
        "1",
        "--profile-kernels",
        "--json",
    ]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).expect("one JSON object");
    for key in ["median_ms", "p99_ms", "batch", "threads", "throughput", "sweep", "best_batch", "profile"] {
        assert!(v.get(key).is_some(), "bench --json lacks `{key}`: {v}");
    }
    assert_eq!(v["batch"], 1);
    assert_eq!(v["sweep"].as_array().map(|a| a.len()), Some(2));
    assert!(v["profile"].as_array().is_some_and(|a| !a.is_empty()), "no kernel breakdown: {v}");
}

#[test]
fn bench_fails_a_missed_latency_budget() {
    expect_error(
        &["bench", p(&asset("digits_cnn.onnx")), "--iters", "2", "--warmup", "0", "--max-latency-ms", "0.000001"],
        "latency budget missed",
    );
}

#[test]
fn quantize_int8_needs_calibration_data() {
    expect_error(
        &["inspect", p(&asset("digits_cnn.onnx")), "--quantize", "int8"],
        "needs calibration data: add --calib",
    );
}

#[test]
fn bad_qconfig_names_the_line() {
    let d = scratch("qconfig");
    let f = d.join("bad.toml");
    std::fs::write(&f, "[default]\nobserver = \"kl\"\n").unwrap();
    expect_error(
        &["inspect", p(&asset("digits_cnn.onnx")), "--quantize", "dynamic", "--qconfig", p(&f)],
        "line 2: unknown calibration method `kl`",
    );
}

#[test]
fn labels_count_mismatch() {
    let d = scratch("labels");
    let y = qforge_ir::Tensor::from_i64(vec![3], vec![1, 2, 3]);
    let f = d.join("y.npy");
    qforge::npy::write(&f, &y).unwrap();
    expect_error(
        &["eval", p(&asset("digits_cnn.onnx")), "--input", p(&asset("digits_samples_x.npy")), "--labels", p(&f)],
        "200 inputs but 3 labels",
    );
}

#[test]
fn inspect_json_has_the_documented_keys() {
    let o = qforge(&["inspect", p(&asset("digits_cnn.onnx")), "--json"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("one JSON object");
    for key in ["inputs", "outputs", "ops", "params", "weight_bytes", "nodes"] {
        assert!(v.get(key).is_some(), "missing key {key}");
    }
    assert_eq!(v["inputs"][0]["name"], "input");
    assert_eq!(v["inputs"][0]["shape"], serde_json::json!(["N", 1, 8, 8]));
    assert_eq!(v["ops"]["conv"], 3);
    let node = &v["nodes"][0];
    for key in ["name", "op", "dtype", "quant", "from"] {
        assert!(node.get(key).is_some(), "node lacks {key}");
    }
}

#[test]
fn eval_json_and_run_roundtrip() {
    let o = qforge(&[
        "eval",
        p(&asset("digits_cnn.onnx")),
        "--input",
        p(&asset("digits_samples_x.npy")),
        "--labels",
        p(&asset("digits_samples_y.npy")),
        "--json",
    ]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("one JSON object");
    assert_eq!(v["samples"], 200);
    let top1 = v["top1"].as_f64().expect("top1");
    assert!(top1 > 0.97, "top-1 {top1}");

    let d = scratch("run");
    let out = d.join("logits.npy");
    let o = qforge(&[
        "run",
        p(&asset("digits_cnn.onnx")),
        "--input",
        p(&asset("digits_samples_x.npy")),
        "--output",
        p(&out),
    ]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let y = qforge::npy::read(&out).unwrap();
    assert_eq!(y.shape(), &[200, 10]);
}

#[test]
fn qop_model_runs_from_the_cli() {
    let o = qforge(&[
        "eval",
        p(&corpus("digits_cnn_int8_qop.onnx")),
        "--input",
        p(&corpus("digits_test_x.npy")),
        "--labels",
        p(&corpus("digits_test_y.npy")),
        "--json",
    ]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    // ORT's figure for this model (models README): 99.33 %.
    assert!((v["top1"].as_f64().unwrap() - 0.9933).abs() < 0.002, "{v}");
}

#[test]
fn demo_prints_its_table() {
    let o = qforge(&["demo"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(o.stdout.contains("top-1"), "{}", o.stdout);
    assert!(o.stdout.contains("qforge inspect"), "{}", o.stdout);
}
