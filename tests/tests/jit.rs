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
    for dir in ["qir", "opt", "precision", "conv_transpose"] {
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

/// f16 storage on the JIT (widen, compute in f32, round back once per op, the rounding in the
/// kernel's epilogue): the JIT and the interpreter sum in different orders, so an f16 result may
/// land one f16 step apart; over MobileNetV2 that keeps the two engines above 40 dB SQNR of each
/// other and both at the same distance from FP32.
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
    assert_rounds_in_kernels(&program.report, "F16", "mobilenet_v2");
    let jit = exe.run(&[x]).expect("jit").remove(0);
    let a = qforge_tests::agreement(&jit, &interp, None).expect("same shape");
    println!("fp16 mobilenet_v2, JIT vs interpreter: {a}");
    assert!(a.sqnr_db > 40.0, "{a}");
    assert_eq!(a.top1_same, a.rows, "{a}");
}

/// Deterministic values in [-1, 1) for generated fixtures, written as text.
fn values_text(n: usize, seed: u64) -> String {
    let mut s = seed | 1;
    let v: Vec<String> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            format!("{:.6}", (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
        })
        .collect();
    v.join(", ")
}

/// One bf16 convolution (with an absorbed activation) as IR text: `cin -> cout` channels on an
/// `h x w` image, a `k x k` kernel.
#[allow(clippy::too_many_arguments)]
fn bf16_conv(
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    group: usize,
    act: &str,
) -> String {
    let (oh, ow) = ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1);
    let y = format!("bf16[1,{cout},{oh},{ow}]");
    let act = match act {
        "relu" => format!("  %3 = relu %2 : {y}  # \"act\"\n  return %3\n"),
        "clip" => format!("  %3 = clip %2 {{min=0.0, max=0.5}} : {y}  # \"act\"\n  return %3\n"),
        _ => "  return %2\n".to_string(),
    };
    format!(
        "graph conv(%x: bf16[1,{cin},{h},{w}]) -> (y: {y}) {{\n  %0 = const bf16[{cout},{},{k},{k}] = [{}]  # \"w\"\n  %1 = const bf16[{cout}] = [{}]  # \"b\"\n  %2 = conv %x, %0, %1 {{kernel=[{k},{k}], strides=[{stride},{stride}], pads=[{pad},{pad},{pad},{pad}], dilations=[1,1], group={group}}} : {y}  # \"conv\"\n{act}}}\n",
        cin / group,
        values_text(cout * cin / group * k * k, (cin * 31 + cout) as u64),
        values_text(cout, 5),
    )
}

/// The bf16 kernels' contract (`qforge_ir::numerics`, bf16 dot products) on one op per graph, for
/// every shape class the bf16 GEMM has: rows gathered by im2col and read in place, groups,
/// strides, odd reductions, reductions longer than a k block, partial column panels, absorbed
/// ReLU and Clip, a GEMM with bias and a batched matrix product; and the bf16 depthwise kernel:
/// 3x3 and 5x5, strides 1 and 2, a partial channel block, bias and Clip. The JIT and the
/// interpreter sum the same exact products in different orders before one rounding to bf16, so
/// every element is within one bf16 step (2^-7 of the larger magnitude's binade) of the
/// interpreter's and nearly all are identical (the depthwise kernel sums in the interpreter's tap
/// order: all of them). Every way of computing bf16 this CPU has runs them (`bf16_rungs`): the
/// bf16 kernels where it has AVX512-BF16, and the f32 kernels on widened values everywhere; the
/// test checks which path ran.
#[test]
fn bf16_kernels_round_once_like_the_interpreter() -> Result<()> {
    for rung in bf16_rungs() {
        bf16_single_ops(qforge_codegen::JitOptions { bf16: rung, ..Default::default() })?;
    }
    Ok(())
}

/// The ways of computing bf16 this CPU has, one option each: the bf16 kernels (with
/// AVX512-BF16) and the f32 kernels on widened values.
fn bf16_rungs() -> Vec<qforge_codegen::Bf16Kernels> {
    use qforge_codegen::Bf16Kernels::{Dot, F32};
    let has_dot = qforge_codegen::JitOptions { bf16: Dot, ..Default::default() }.bf16_compute();
    println!("bf16 rungs: {}", if has_dot { "bf16 kernels, f32 kernels" } else { "f32 kernels" });
    if has_dot {
        vec![Dot, F32]
    } else {
        vec![F32]
    }
}

fn bf16_single_ops(opts: qforge_codegen::JitOptions) -> Result<()> {
    let native = opts.bf16_compute();
    let gemm = format!(
        "graph gemm(%x: bf16[5,300]) -> (y: bf16[5,70]) {{\n  %0 = const bf16[70,300] = [{}]  # \"w\"\n  %1 = const bf16[70] = [{}]  # \"b\"\n  %2 = gemm %x, %0, %1 {{alpha=1.0, beta=1.0, trans_a=false, trans_b=true}} : bf16[5,70]  # \"gemm\"\n  return %2\n}}\n",
        values_text(70 * 300, 11),
        values_text(70, 12)
    );
    let matmul = format!(
        "graph mm(%x: bf16[2,3,7]) -> (y: bf16[2,3,20]) {{\n  %0 = const bf16[7,20] = [{}]  # \"w\"\n  %1 = matmul %x, %0 : bf16[2,3,20]  # \"mm\"\n  return %1\n}}\n",
        values_text(7 * 20, 13)
    );
    let cases = [
        ("conv 3x3, k=27 (odd)", bf16_conv(3, 8, 9, 9, 3, 1, 1, 1, "")),
        ("conv 1x1 in place, 40 columns, relu", bf16_conv(16, 40, 6, 6, 1, 1, 0, 1, "relu")),
        ("conv 3x3 s2, 2 groups, clip", bf16_conv(8, 16, 7, 7, 3, 2, 1, 2, "clip")),
        ("conv 1x1, k=33, 17 columns", bf16_conv(33, 17, 5, 5, 1, 1, 0, 1, "")),
        ("conv 3x3, k=576 (k blocks), relu", bf16_conv(64, 64, 8, 8, 3, 1, 1, 1, "relu")),
        ("depthwise 3x3, 40 channels, clip", bf16_conv(40, 40, 9, 13, 3, 1, 1, 40, "clip")),
        ("depthwise 3x3 s2, 32 channels, relu", bf16_conv(32, 32, 12, 19, 3, 2, 1, 32, "relu")),
        ("depthwise 5x5, 24 channels", bf16_conv(24, 24, 7, 10, 5, 1, 2, 24, "")),
        ("gemm k=300, bias", gemm),
        ("batched matmul k=7", matmul),
    ];
    for (what, text) in cases {
        let g = qforge_ir::text::parse(&text).map_err(|e| anyhow::anyhow!("{what}: parse: {e}"))?;
        let x = fixture_inputs(&g);
        let want = qforge_ir::interp::run(&g, &x).with_context(|| format!("{what}: interpreter"))?.remove(0);
        let exe = qforge_codegen::JitExecutable::new(g, opts);
        let program = exe.program(&x).with_context(|| format!("{what}: JIT"))?;
        let kernels: Vec<&str> =
            program.report.steps.iter().filter(|s| s.kind == "kernel").map(|s| s.what.as_str()).collect();
        let bf16_kernels =
            kernels.iter().filter(|w| w.starts_with("gemm_bf16") || w.starts_with("depthwise_bf16")).count();
        anyhow::ensure!(program.report.host_ops.is_empty(), "{what}: host steps {:?}", program.report.host_ops);
        if native {
            anyhow::ensure!(
                bf16_kernels > 0 && kernels.len() == bf16_kernels,
                "{what}: not all bf16 kernels: {kernels:?}"
            );
        } else {
            anyhow::ensure!(bf16_kernels == 0, "{what}: bf16 kernels with {:?}: {kernels:?}", opts.bf16);
        }
        let got = exe.run(&x)?.remove(0);
        anyhow::ensure!(got.dtype() == qforge_ir::DType::BF16, "{what}: a {} result", got.dtype().name());
        let (a, b) = (got.to_f32_vec(), want.to_f32_vec());
        let mut same = 0;
        for (i, (p, q)) in a.iter().zip(&b).enumerate() {
            let top = p.abs().max(q.abs());
            let step = if top > 0.0 { 2f32.powi(top.log2().floor() as i32 - 7) } else { 0.0 };
            anyhow::ensure!((p - q).abs() <= step, "{what}: element {i}: JIT {p}, interpreter {q}");
            same += usize::from(p.to_bits() == q.to_bits());
        }
        println!("{:?}: {what}: {same} of {} identical, {bf16_kernels} bf16 kernel step(s)", opts.bf16, a.len());
        anyhow::ensure!(same * 100 >= a.len() * 99, "{what}: only {same} of {} identical", a.len());
        if what.starts_with("depthwise") {
            anyhow::ensure!(
                same == a.len(),
                "{what}: the interpreter's tap order, yet {same} of {} identical",
                a.len()
            );
        }
    }
    Ok(())
}

/// bf16 on the JIT over whole models: as for fp16, an element may land one bf16 step from the
/// interpreter's (different summation orders), and the steps travel through the depth; over
/// MobileNetV2 and ResNet-18 the two engines stay above 30 dB SQNR of each other with the same
/// top-1, and every op runs in generated code, on every way of computing bf16 this CPU has. With
/// the bf16 kernels, MobileNetV2's depthwise convolutions run on the bf16 depthwise kernel (none
/// is widened to the f32 one); with the f32 kernels, each kernel rounds its result in its
/// epilogue, so no rounding or widening step is left but around the pools and at the input.
#[test]
fn bf16_models_on_the_jit_track_the_interpreter() {
    for (model, rung) in
        ["mobilenet_v2.onnx", "resnet18.onnx"].into_iter().flat_map(|m| bf16_rungs().into_iter().map(move |r| (m, r)))
    {
        let opts = PipelineOptions { precision: qforge::options::Precision::Bf16, ..PipelineOptions::default() };
        let g =
            Compiler::new(opts).and_then(|c| c.optimize(qforge::load_model(&corpus_file(model))?)).expect("bf16 graph");
        let x = qforge::npy::read(&corpus_file("imagenet_like_test_x.npy")).expect("test input");
        let x = qforge::data::slice_batch(&x, 0, 1).expect("one image");
        let interp = qforge_ir::interp::run(&g, std::slice::from_ref(&x)).expect("interpreter").remove(0);
        let opts = qforge_codegen::JitOptions { bf16: rung, ..Default::default() };
        let exe = qforge_codegen::JitExecutable::new(g, opts);
        let program = exe.program(std::slice::from_ref(&x)).expect("program");
        assert!(
            program.report.host_ops.is_empty(),
            "{model}: bf16 ops left to the interpreter: {:?}",
            program.report.host_ops
        );
        let native = opts.bf16_compute();
        if !native {
            assert_rounds_in_kernels(&program.report, "Bf16", model);
        }
        let bf16_steps = program.report.steps.iter().filter(|s| s.what.starts_with("gemm_bf16")).count();
        assert_eq!(bf16_steps > 0, native, "{model}: {bf16_steps} bf16 GEMMs");
        let count = |p: &str| program.report.steps.iter().filter(|s| s.what.starts_with(p)).count();
        let (dw_bf16, dw_f32) = (count("depthwise_bf16"), count("depthwise_f32"));
        if model.starts_with("mobilenet") {
            let (want_bf16, want_f32) = if native { (17, 0) } else { (0, 17) };
            assert_eq!((dw_bf16, dw_f32), (want_bf16, want_f32), "{model}: depthwise steps (bf16, f32)");
        }
        let jit = exe.run(&[x]).expect("jit").remove(0);
        let a = qforge_tests::agreement(&jit, &interp, None).expect("same shape");
        println!(
            "bf16 {model} ({rung:?}), JIT vs interpreter: {a}; {bf16_steps} bf16 GEMM steps, {dw_bf16} bf16 depthwise steps"
        );
        assert!(a.sqnr_db > 30.0, "{model}: {a}");
        assert_eq!(a.top1_same, a.rows, "{model}: {a}");
    }
}

/// An f16/bf16 (`low`: the row step's suffix) model computed by the f32 kernels: every kernel
/// rounds its own result in its epilogue (the rounding and the next op's widening fused), so at
/// most the roundings and widenings of the input, of ResNet-18's max pool and of the global
/// pool before the classifier are left as steps of their own.
fn assert_rounds_in_kernels(report: &qforge_codegen::ProgramReport, low: &str, model: &str) {
    let rows = |kind: &str| report.steps.iter().filter(|s| s.what == format!("{kind}{low}")).count();
    let (round, widen) = (rows("Round"), rows("Widen"));
    assert!(round <= 3 && widen <= 3, "{model}: {round} rounding and {widen} widening steps");
    let fused = report.steps.iter().filter(|s| s.what.contains(&format!("round_{}", low.to_lowercase()))).count();
    assert!(fused > 10, "{model}: {fused} kernels round in their epilogue");
}

/// `fixtures/precision/depthwise_bf16.qir` (bf16 depthwise convolutions with bias, Clip, a
/// residual add, stride 2 and ReLU) and its f16 twin `depthwise_f16.qir`. Both depthwise kernels
/// sum each output's taps in the interpreter's order, and the epilogue rounds each result as
/// `half` does (bf16 stores and `round_bf16`; `vcvtps2ph` in the 512-bit epilogue, integer and f32
/// lanes in the Cranelift one), so on every set of microkernels (the bf16 kernel with
/// AVX512-BF16, the f32 one on widened values, `--kernels cranelift`, two threads) the result is
/// the interpreter's bit for bit. The bf16 kernel runs the three convolutions with their
/// activation and residual in the epilogue and no other step; the f32 kernels round in their
/// epilogues, leaving one widening at the input and one rounding at the output.
#[test]
fn low_precision_depthwise_fixtures_are_the_interpreters_bit_for_bit() -> Result<()> {
    use qforge_codegen::Bf16Kernels::{Auto, Dot, F32};
    use qforge_codegen::Microkernels::{Cranelift, Native};
    use qforge_ir::DType;
    for (file, dtype, low) in [("depthwise_bf16.qir", DType::BF16, "Bf16"), ("depthwise_f16.qir", DType::F16, "F16")] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/precision").join(file);
        let g = fixture(&path);
        let x = fixture_inputs(&g);
        let want = qforge_ir::interp::run(&g, &x)?.remove(0);
        for (mk, threads, bf16) in [(Native, 1, Dot), (Native, 1, F32), (Cranelift, 1, Auto), (Native, 2, Auto)] {
            let what = format!("{file} {mk:?} {bf16:?} ({threads} threads)");
            let opts = qforge_codegen::JitOptions { microkernels: mk, threads, bf16, ..Default::default() };
            let exe = qforge_codegen::JitExecutable::new(g.clone(), opts);
            let program = exe.program(&x)?;
            let steps: Vec<&str> = program.report.steps.iter().map(|s| s.what.as_str()).collect();
            anyhow::ensure!(program.report.host_ops.is_empty(), "{what}: host steps {:?}", program.report.host_ops);
            if dtype == DType::BF16 && opts.bf16_compute() {
                // the layout conversions of the input and output besides three bf16 depthwise steps
                let dw = steps.iter().filter(|w| w.starts_with("depthwise_bf16")).count();
                let others: Vec<&&str> =
                    steps.iter().filter(|w| !w.starts_with("depthwise_bf16") && !w.contains("nhwc")).collect();
                anyhow::ensure!(
                    dw == 3 && others.is_empty(),
                    "{what}: not three bf16 depthwise steps alone: {steps:?}"
                );
            } else {
                let fused = format!("round_{}", low.to_lowercase());
                let rounding = steps.iter().filter(|w| w.contains(&fused)).count();
                let (round, widen) = (format!("Round{low}"), format!("Widen{low}"));
                let apart = steps.iter().filter(|w| **w == round || **w == widen).count();
                anyhow::ensure!(rounding == 2 && apart == 2, "{what}: rounding steps {steps:?}");
            }
            let got = exe.run(&x)?.remove(0);
            anyhow::ensure!(got.dtype() == dtype, "{what}: a {} result", got.dtype().name());
            let (a, b) = (got.to_f32_vec(), want.to_f32_vec());
            let differ = a.iter().zip(&b).filter(|(p, q)| p.to_bits() != q.to_bits()).count();
            anyhow::ensure!(differ == 0, "{what}: {differ} of {} elements differ", a.len());
        }
    }
    Ok(())
}

/// The transposed convolutions of `fixtures/conv_transpose/` under static INT8 (calibrated on
/// the fixture's own inputs), and the QDQ one as it is: each rewritten one runs as an integer
/// convolution with no host step and no Q/DQ pair left, bit for bit on the JIT and the
/// interpreter.
#[test]
fn conv_transposes_in_static_int8_are_integer_convolutions_on_the_jit() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/conv_transpose");
    let tmp = std::env::temp_dir().join(format!("qforge-jit-convt-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let mut failures = vec![];
    // the float fixtures quantized by qforge, and a QDQ model as it is
    for name in ["k2s2_symbolic", "k3s2_padded", "k3s2_symbolic", "grouped", "dilated_1d", "qdq"] {
        let g = fixture(&dir.join(format!("{name}.qir")));
        let x = fixture_inputs(&g);
        let opts = if name == "qdq" {
            PipelineOptions::default()
        } else {
            let calib = tmp.join(format!("{name}.npy"));
            qforge::npy::write(&calib, &x[0]).expect("calibration set written");
            PipelineOptions { quantize: QuantizeMode::Int8, calib: Some(calib), ..PipelineOptions::default() }
        };
        let q = Compiler::new(opts).and_then(|c| c.optimize(g)).expect("quantized and optimized");
        let ops: Vec<&str> = q.node_ids().map(|n| q.node(n).op.name()).collect();
        if ops.iter().any(|&o| o == "conv" || o == "conv_transpose") || !ops.contains(&"qconv") {
            failures.push(format!("{name}: a float convolution is left or none is integer: {ops:?}"));
        }
        let unfused = qforge_passes::report::fusion_report(&q, true);
        if !unfused.is_empty() {
            failures
                .push(format!("{name}: Q/DQ left around {:?}", unfused.iter().map(|u| &u.node).collect::<Vec<_>>()));
        }
        let exe = qforge_codegen::JitExecutable::new(q.clone(), qforge_codegen::JitOptions::default());
        match exe.program(&x) {
            Ok(p) if p.report.host_ops.is_empty() => {}
            Ok(p) => failures.push(format!("{name}: host steps {:?}", p.report.host_ops)),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
        if let Err(e) = jit_case(&format!("{name} (int8)"), &q) {
            failures.push(format!("{e:#}"));
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Observation taps (how calibration watches values on the JIT) hand over exactly what the same
/// values return as graph outputs, bit for bit, on every fixture: every computed value of the
/// graph is tapped once, in whatever layout the program computed it (converted back to logical
/// order here), right after the step that wrote it and before anything reuses its memory.
#[test]
fn taps_hand_over_what_outputs_return() -> Result<()> {
    use qforge_codegen::{JitExecutable, JitOptions};
    use qforge_ir::{Op, Value};
    let (mut checked, mut tapped, mut channels_last) = (0, 0, 0);
    for dir in ["qir", "opt", "precision", "conv_transpose"] {
        let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(dir);
        let mut files: Vec<_> = std::fs::read_dir(&d)?.flatten().map(|e| e.path()).collect();
        files.sort();
        for path in files.into_iter().filter(|p| p.extension().is_some_and(|e| e == "qir")) {
            let g = fixture(&path);
            let name = path.display().to_string();
            let values: Vec<Value> = g
                .node_ids()
                .filter(|&id| !matches!(g.node(id).op, Op::Input | Op::Const(_)))
                .flat_map(|id| (0..g.node(id).outputs.len()).map(move |p| Value::new(id, p)))
                .collect();
            let (mut as_outputs, mut as_taps) = (g.clone(), g.clone());
            for (i, &v) in values.iter().enumerate() {
                as_outputs.add_output(format!("watched.{i}"), v);
                as_taps.add_output(format!("watched.{i}"), v);
            }
            let plain = JitExecutable::new(as_outputs, JitOptions::default());
            let taps = JitExecutable::with_taps(as_taps, JitOptions::default(), values.len());
            if plain.interpreted().is_some() {
                continue;
            }
            let x = fixture_inputs(&g);
            let Ok(want) = plain.run(&x) else {
                assert!(taps.run(&x).is_err(), "{name}: runs with taps but not with outputs");
                continue;
            };
            let mut got: Vec<Option<qforge_ir::Tensor>> = vec![None; values.len()];
            let real = taps
                .run_tapped(&x, &mut |k, view| {
                    assert!(got[k].is_none(), "{name}: tap {k} handed over twice");
                    channels_last += usize::from(view.channels_last);
                    got[k] = Some(view.to_tensor().expect("tap"));
                })
                .with_context(|| name.clone())?;
            // compared as printed: NaN equals NaN there, and -0.0 differs from 0.0
            let n = g.outputs().len();
            assert_eq!(format!("{real:?}"), format!("{:?}", &want[..n]), "{name}: the graph's own outputs");
            for (k, (t, w)) in got.iter().zip(&want[n..]).enumerate() {
                assert_eq!(format!("{t:?}"), format!("{:?}", Some(w)), "{name}: tap {k} ({:?})", values[k]);
            }
            checked += 1;
            tapped += values.len();
        }
    }
    println!("{checked} fixtures, {tapped} values tapped, {channels_last} of them channels-last");
    assert!(
        checked >= 30 && tapped >= 300 && channels_last >= 20,
        "{checked} fixtures, {tapped} values, {channels_last}"
    );
    Ok(())
}
