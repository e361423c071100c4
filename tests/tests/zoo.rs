//! The zoo (`fixtures/zoo/`, made by `scripts/gen_zoo_fixtures.py`): detectors, segmenters,
//! classifiers, a text recognizer and a YOLO-style detector from torchvision architectures at
//! reduced width, each exported by the TorchScript exporter (opset 17) and by the dynamo exporter
//! (opset 18+) with dynamic batch, height and width. One imported graph per file, never
//! specialized to an input shape, reproduces ONNX Runtime's FP32 outputs at batch 1 and 4 at one
//! image size and batch 2 at another, on the reference interpreter and on the JIT (the JIT also
//! through the oracle of `check_jit`: every microkernel set, guard bytes checked). The exports
//! qforge does not import yet are listed with their refusal ([`KNOWN_GAPS`]).

use anyhow::Context;
use qforge_ir::{Graph, Tensor};
use qforge_tests::{agreement, check_jit, check_jit_within, first_rows as rows};
use std::path::PathBuf;

/// The exports qforge does not import yet, with the refusal each gives today (a substring). The
/// test fails when one of them imports (take it off the list) or refuses differently, so the list
/// is always the current state: none today (the last were the two Swin exports, whose window
/// padding `(4 - H % 4) % 4` is now a pad computed from the image size).
const KNOWN_GAPS: &[(&str, &str)] = &[];

/// Imports `file`: the graph, or `None` for a known gap refusing as listed; any other outcome is
/// a failure pushed on `failures`.
fn import(file: &str, failures: &mut Vec<String>) -> Option<Graph> {
    let gap = KNOWN_GAPS.iter().find(|(f, _)| *f == file).map(|(_, why)| *why);
    match (qforge::onnx::import_file(&fixture(file)), gap) {
        (Ok(g), None) => Some(g),
        (Ok(_), Some(_)) => {
            failures.push(format!("{file} imports now: take it off KNOWN_GAPS"));
            None
        }
        (Err(e), Some(why)) if e.to_string().contains(why) => {
            println!("{file}: known gap: {e}");
            None
        }
        (Err(e), _) => {
            failures.push(format!("{file}: import: {e}"));
            None
        }
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/zoo")).join(name)
}

fn npy(name: &str) -> Tensor {
    qforge::npy::read(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// One model of the manifest.
struct Model {
    name: String,
    /// The prefix of its image set (`<images>_calib.npy`, `_test_a.npy`, `_test_b.npy`).
    images: String,
    /// Whether the dynamo export exists.
    dynamo: bool,
}

fn models() -> Vec<Model> {
    let text = std::fs::read_to_string(fixture("manifest.json")).expect("the zoo manifest");
    let m: serde_json::Value = serde_json::from_str(&text).expect("manifest.json is JSON");
    let models = m["models"].as_object().expect("a `models` object");
    models
        .iter()
        .map(|(name, info)| Model {
            name: name.clone(),
            images: info["images"].as_str().expect("an `images` prefix").to_string(),
            dynamo: info["dynamo"].get("error").is_none(),
        })
        .collect()
}

/// How far the JIT may be from the interpreter (relative to the largest magnitude) in the oracle
/// of `check_jit`: 1e-5, except where the two summation orders were measured to drift further
/// apart through a model's depth, each with its figures. Both engines are held to 1e-4 of ORT
/// whatever this says.
fn jit_oracle_bound(file: &str) -> f32 {
    match file {
        // SSDLite's output: 1.6e-5 (size A, batch 1) and 2.6e-5 (size B, batch 2) relative. Node
        // by node (on 64x64 images), the distance grows evenly through the backbone's four extra
        // stride-2 blocks on their smallest maps, from 4e-6 to 2.5e-5, with no op jumping: the
        // two summation orders, not a formula (each engine is as far from ORT as from the other)
        "ssdlite_mobilenet_v3.onnx" | "ssdlite_mobilenet_v3_dynamo.onnx" => 5e-5,
        _ => 1e-5,
    }
}

/// Runs `g` on the interpreter and the JIT; an error says which engine and how far from ORT's
/// output (more than 1e-4 of its largest magnitude).
fn check(file: &str, g: &Graph, x: &Tensor, reference: &Tensor) -> Result<String, String> {
    let inputs = std::slice::from_ref(x);
    let interp = qforge_ir::interp::run(g, inputs).map_err(|e| format!("interpreter: {e}"))?;
    let a = agreement(&interp[0], reference, None).map_err(|e| format!("interpreter: {e:#}"))?;
    if a.max_abs > 1e-4 * a.ref_max_abs {
        return Err(format!("interpreter: {a}"));
    }
    check_jit_within(g, inputs, &interp, jit_oracle_bound(file))
        .map_err(|e| format!("JIT against the interpreter: {e:#}"))?;
    let exe = qforge_codegen::JitExecutable::new(g.clone(), qforge_codegen::JitOptions::default());
    let jit = exe.run(inputs).map_err(|e| format!("JIT: {e}"))?;
    let b = agreement(&jit[0], reference, None).map_err(|e| format!("JIT: {e:#}"))?;
    if b.max_abs > 1e-4 * b.ref_max_abs {
        return Err(format!("JIT: {b}"));
    }
    Ok(format!("interpreter {a}; JIT {b}"))
}

#[test]
fn every_zoo_model_matches_onnx_runtime_at_two_batches_and_two_image_sizes() {
    let mut failures = vec![];
    for Model { name, images, dynamo } in models() {
        let (a, b) = (npy(&format!("{images}_test_a.npy")), npy(&format!("{images}_test_b.npy")));
        let runs = [
            ("size A batch 1", rows(&a, 1), npy(&format!("{name}_out_a_b1.npy"))),
            ("size A batch 4", a.clone(), npy(&format!("{name}_out_a.npy"))),
            ("size B batch 2", b, npy(&format!("{name}_out_b.npy"))),
        ];
        let files = if dynamo {
            vec![format!("{name}.onnx"), format!("{name}_dynamo.onnx")]
        } else {
            vec![format!("{name}.onnx")]
        };
        for file in files {
            let Some(g) = import(&file, &mut failures) else { continue };
            for (label, x, reference) in &runs {
                match check(&file, &g, x, reference) {
                    Ok(s) => println!("{file} {label}: {s}"),
                    Err(e) => failures.push(format!("{file} {label}: {e}")),
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

/// ONNX Runtime's `quantize_static` SQNR for `name` (`manifest.json`).
fn ort_static_sqnr(name: &str) -> Option<f64> {
    let text = std::fs::read_to_string(fixture("manifest.json")).ok()?;
    let m: serde_json::Value = serde_json::from_str(&text).ok()?;
    m["models"][name]["ort_int8_qdq_sqnr_db"].as_f64()
}

/// Every zoo model (TorchScript export) compiled for the JIT with static INT8 (calibrated on its
/// calibration images), dynamic INT8 and FP16, run on the size-A test images: SQNR against ONNX
/// Runtime's FP32 output, printed beside ORT's `quantize_static` on the same calibration images.
/// The static INT8 graph must agree with the interpreter on the JIT (the oracle of `check_jit`).
/// Static INT8 must reach at least ORT's figure (qforge's defaults: per-channel weights, bias
/// correction, and conv/gemm/matmul results that only float ops or the caller read returned in
/// f32, where ORT rounds them to 8 bits); dynamic INT8 and FP16 must run (their SQNR is printed).
#[test]
fn zoo_int8_and_fp16_against_onnx_runtime() {
    use qforge::options::{PipelineOptions, Precision, QuantizeMode};
    let mut failures = vec![];
    let mut reports = vec![];
    println!("| model | static int8 SQNR dB | ORT quantize_static SQNR dB | dynamic int8 SQNR dB | fp16 SQNR dB |");
    println!("|---|---|---|---|---|");
    for Model { name, images, .. } in models() {
        if import(&format!("{name}.onnx"), &mut failures).is_none() {
            continue;
        }
        let x = npy(&format!("{images}_test_a.npy"));
        let reference = npy(&format!("{name}_out_a.npy"));
        let base = PipelineOptions::default();
        let settings = [
            (
                "static int8",
                PipelineOptions {
                    quantize: QuantizeMode::Int8,
                    calib: Some(fixture(&format!("{images}_calib.npy"))),
                    ..base.clone()
                },
            ),
            ("dynamic int8", PipelineOptions { quantize: QuantizeMode::Dynamic, ..base.clone() }),
            ("fp16", PipelineOptions { precision: Precision::Fp16, ..base.clone() }),
        ];
        let mut row = vec![];
        for (label, opts) in settings {
            let static_int8 = label == "static int8";
            let run = || -> anyhow::Result<f64> {
                let model = qforge::load_model(&fixture(&format!("{name}.onnx")))?;
                let exe = qforge::Compiler::new(opts)?.compile(model)?;
                let y = exe.run(std::slice::from_ref(&x))?.remove(0);
                if static_int8 {
                    reports.push(int8_report(&name, &exe, &x, &mut failures)?);
                    // the integer kernels against the interpreter on the compiled graph: bit for
                    // bit where it has integer values (the oracle of `check_jit`)
                    let inputs = std::slice::from_ref(&x);
                    let interp = qforge_ir::interp::run(exe.graph(), inputs)?;
                    check_jit(exe.graph(), inputs, &interp).context("static int8: JIT against the interpreter")?;
                }
                Ok(agreement(&y, &reference, None)?.sqnr_db)
            };
            match run() {
                Ok(db) => row.push(format!("{db:.3}")),
                Err(e) => {
                    failures.push(format!("{name}: {label}: {e:#}"));
                    row.push("error".into());
                    continue;
                }
            }
        }
        let ort = ort_static_sqnr(&name);
        println!(
            "| {name} | {} | {} | {} | {} |",
            row[0],
            ort.map_or("-".into(), |d| format!("{d:.1}")),
            row[1],
            row[2]
        );
        if let (Ok(ours), Some(theirs)) = (row[0].parse::<f64>(), ort) {
            if ours < theirs {
                failures.push(format!("{name}: static int8 SQNR {ours:.3} dB is below ORT's {theirs:.3} dB"));
            }
        }
    }
    insta::with_settings!({ snapshot_path => "../../snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("zoo_int8_report", reports.join("\n"));
    });
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

/// Ops that detection and segmentation heads must keep int8 through (no Q/DQ pair left around
/// them): the optimizer commutes Q/DQ with them or lowers them to integer kernels.
const INT8_THROUGH: &[&str] = &["resize", "concat", "pad", "max_pool"];

/// What `qforge compile --report` says of a static INT8 model, as one deterministic block: the
/// ops the JIT leaves to the interpreter (host steps) and the Q/DQ pairs the optimizer left around
/// float ops, counted by op and reason. A leftover around an op of [`INT8_THROUGH`] is a failure.
fn int8_report(
    name: &str,
    exe: &qforge::Executable,
    x: &qforge_ir::Tensor,
    failures: &mut Vec<String>,
) -> anyhow::Result<String> {
    let program = exe.jit().ok_or_else(|| anyhow::anyhow!("{name}: no JIT"))?.program(std::slice::from_ref(x))?;
    let host: Vec<String> = program.report.host_ops.iter().map(|(op, n)| format!("{op} x{n}")).collect();
    let unfused = qforge_passes::report::fusion_report(exe.graph(), true);
    let mut by_reason: std::collections::BTreeMap<(String, String), usize> = Default::default();
    for u in &unfused {
        *by_reason.entry((u.op.clone(), u.reason.clone())).or_default() += 1;
        if INT8_THROUGH.contains(&u.op.as_str()) {
            failures.push(format!("{name}: `{}` ({}) is float between Q/DQ: {}", u.node, u.op, u.reason));
        }
    }
    let mut text = format!(
        "{name}: host steps: {}; unfused Q/DQ: {}",
        if host.is_empty() { "none".to_string() } else { host.join(", ") },
        unfused.len()
    );
    for ((op, reason), n) in by_reason {
        text.push_str(&format!("\n  {op} x{n}: {reason}"));
    }
    Ok(text)
}
