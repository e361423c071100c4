//! The JIT against the reference interpreter (DESIGN.md's first oracle) on every fixture, before
//! and after the optimizer, and on the INT8 models qforge's own quantizer produces. The corpus
//! cases in `corpus.rs` check the JIT too (through `check`). Integer graphs must agree bit for
//! bit, float graphs within 1e-5 of the largest magnitude, with both sets of microkernels.

use anyhow::{Context, Result};
use qforge::options::QuantizeMode;
use qforge::{Compiler, PipelineOptions};
use qforge_ir::Graph;
use qforge_tests::{check_jit, corpus_file, fixture_inputs};
use std::path::Path;

fn jit_case(name: &str, g: &Graph) -> Result<()> {
    let x = fixture_inputs(g);
    let expected = qforge_ir::interp::run(g, &x).with_context(|| format!("{name}: interpreter"))?;
    check_jit(g, &x, &expected).with_context(|| name.to_string())
}

fn fixture(path: &Path) -> Graph {
    let text = std::fs::read_to_string(path).expect("fixture readable");
    qforge_ir::text::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_fixture_agrees_before_and_after_optimization() {
    let mut failures = Vec::new();
    let mut n = 0;
    for dir in ["qir", "opt", "precision"] {
        let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(dir);
        let mut files: Vec<_> = std::fs::read_dir(&d).expect("fixture dir").flatten().map(|e| e.path()).collect();
        files.sort();
        for path in files.into_iter().filter(|p| p.extension().is_some_and(|e| e == "qir")) {
            let g = fixture(&path);
            let name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            n += 1;
            if let Err(e) = jit_case(&name, &g) {
                failures.push(format!("{e:#}"));
            }
            let optimized = Compiler::new(PipelineOptions::default()).and_then(|c| c.optimize(g.clone()));
            if let Ok(o) = optimized {
                n += 1;
                if let Err(e) = jit_case(&format!("{name} (optimized)"), &o) {
                    failures.push(format!("{e:#}"));
                }
            }
        }
    }
    println!("{n} graphs checked");
    assert!(failures.is_empty(), "{} of {n} disagree:\n{}", failures.len(), failures.join("\n"));
}

/// A model quantized by qforge (calibrated on the first images of the calibration set, to keep
/// the suite fast), run on both engines over the test input.
fn quantized_model_agrees(model: &str) {
    let calib = qforge::npy::read(&corpus_file("imagenet_like_calib_x.npy")).expect("calibration set");
    let few = qforge::data::slice_batch(&calib, 0, 4).expect("four images");
    let dir = std::env::temp_dir().join(format!("qforge-jit-{}-{model}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let calib_path = dir.join("calib.npy");
    qforge::npy::write(&calib_path, &few).expect("write calibration subset");
    let opts = PipelineOptions { quantize: QuantizeMode::Int8, calib: Some(calib_path), ..PipelineOptions::default() };
    let g = Compiler::new(opts)
        .and_then(|c| c.optimize(qforge::load_model(&corpus_file(model))?))
        .expect("quantized and optimized");
    let x = qforge::npy::read(&corpus_file("imagenet_like_test_x.npy")).expect("test input");
    let x = qforge::data::slice_batch(&x, 0, 1).expect("one image");
    let expected = qforge_ir::interp::run(&g, std::slice::from_ref(&x)).expect("interpreter");
    if let Err(e) = check_jit(&g, &[x], &expected) {
        panic!("{model}: {e:#}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn qforge_int8_resnet18_is_bit_exact_on_the_jit() {
    quantized_model_agrees("resnet18.onnx");
}

#[test]
fn qforge_int8_mobilenet_v2_is_bit_exact_on_the_jit() {
    quantized_model_agrees("mobilenet_v2.onnx");
}

/// The inner loops of the Cranelift-emitted u8 x i8 GEMM (the conv kernel of `--kernels
/// cranelift`), as the x64 backend compiles them on a VNNI host: the CLIF widening
/// dot-product tree must become `vpdpbusd`. Only the basic blocks that contain a dot product
/// are kept, so the snapshot is the hot code and nothing else.
#[test]
#[ignore = "needs an x86-64 CPU with AVX-512 VNNI or AVX-VNNI"]
fn cranelift_gemm_inner_loops_use_vpdpbusd() {
    #[cfg(target_arch = "x86_64")]
    let vnni = std::is_x86_feature_detected!("avx512vnni") || std::is_x86_feature_detected!("avxvnni");
    #[cfg(not(target_arch = "x86_64"))]
    let vnni = false;
    qforge_tests::require(vnni, "an x86-64 CPU with AVX-512 VNNI or AVX-VNNI");
    let text = qforge_codegen::emit::gemm_clif::gemm_u8i8_disassembly().expect("disassembly");
    let mut blocks: Vec<Vec<&str>> = vec![];
    for line in text.lines() {
        if line.starts_with("block") || blocks.is_empty() {
            blocks.push(vec![]);
        }
        if let Some(b) = blocks.last_mut() {
            b.push(line);
        }
    }
    let hot: Vec<String> =
        blocks.into_iter().filter(|b| b.iter().any(|l| l.contains("vpdpbusd"))).map(|b| b.join("\n")).collect();
    assert!(!hot.is_empty(), "no vpdpbusd in:\n{text}");
    insta::with_settings!({ snapshot_path => "../../snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("disasm_cranelift_gemm_u8i8_inner_loops", hot.join("\n\n"));
    });
}

/// f16 storage on the JIT (widen, compute in f32, round back once per op): the JIT and the
/// interpreter sum in different orders, so an f16 result may land one f16 step apart; over
/// MobileNetV2 that keeps the two engines above 40 dB SQNR of each other and both at the same
/// distance from FP32.
#[test]
fn fp16_mobilenet_v2_on_the_jit_tracks_the_interpreter() {
    let opts = PipelineOptions { precision: qforge::options::Precision::Fp16, ..PipelineOptions::default() };
    let g = Compiler::new(opts)
        .and_then(|c| c.optimize(qforge::load_model(&corpus_file("mobilenet_v2.onnx"))?))
        .expect("fp16 graph");
    let x = qforge::npy::read(&corpus_file("imagenet_like_test_x.npy")).expect("test input");
    let x = qforge::data::slice_batch(&x, 0, 1).expect("one image");
    let interp = qforge_ir::interp::run(&g, std::slice::from_ref(&x)).expect("interpreter").remove(0);
    let exe = qforge_codegen::JitExecutable::new(g, qforge_codegen::JitOptions::default());
    let program = exe.program(std::slice::from_ref(&x)).expect("program");
    assert!(program.report.host_ops.is_empty(), "f16 ops left to the interpreter: {:?}", program.report.host_ops);
    let jit = exe.run(&[x]).expect("jit").remove(0);
    let a = qforge_tests::agreement(&jit, &interp, None).expect("same shape");
    println!("fp16 mobilenet_v2, JIT vs interpreter: {a}");
    assert!(a.sqnr_db > 40.0, "{a}");
    assert_eq!(a.top1_same, a.rows, "{a}");
}
