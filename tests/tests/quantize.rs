//! Post-training quantization on the corpus: static INT8 accuracy of digits_cnn for every
//! observer, agreement with ONNX Runtime's QDQ and dynamic references, MobileNetV2 SQNR against
//! ORT's static QDQ figure, and the passes' contracts (verified, idempotent, clear errors on
//! degenerate calibration data). Transformers, on IR fixtures: SmoothQuant (f32 function
//! kept, idempotent, INT8 SQNR gain on LayerNorm outliers), the default attention policy (a
//! snapshot) and the SQNR-driven float fallback (`--min-sqnr`).
//!
//! One helper, [`quantize`], compiles a corpus model with a pipeline; the cases are data.

use anyhow::{Context, Result};
use qforge::options::{CalibMethod, QuantizeMode, Switch};
use qforge::{Compiler, PipelineOptions};
use qforge_ir::{verify::verify, ConvAttrs, DType, Graph, Op, Shape, Tensor, TensorType, UnaryOp};
use qforge_passes::quantize::{
    activation_plan, calibrate, FoldBatchNorm, Interpreter, QConfig, QuantizeDynamic, QuantizeStatic,
};
use qforge_passes::{Pass, PassContext};
use qforge_tests::{agreement, corpus_file};

/// ORT 1.32's static QDQ figures, measured with `tests/fixtures/quant/ort_static_qdq.py` (per
/// channel, QUInt8 activations, QInt8 weights, MinMax, calibration on imagenet_like_calib_x) and
/// `../shared/bench/compare.py` against `mobilenet_v2_test_out_fp32.npy`.
const ORT_MOBILENET_SQNR_PER_CHANNEL: f64 = 13.68;
const ORT_MOBILENET_SQNR_PER_TENSOR: f64 = 13.19;
/// From the corpus README: digits_cnn fp32 and ORT static INT8 (QDQ, per channel, MinMax).
const DIGITS_FP32_TOP1: f64 = 0.9950;
const DIGITS_ORT_INT8_TOP1: f64 = 0.9933;

fn opts(mode: QuantizeMode, calib: &str, method: CalibMethod, per_tensor: bool) -> PipelineOptions {
    PipelineOptions {
        quantize: mode,
        calib: (mode == QuantizeMode::Int8).then(|| corpus_file(calib)),
        calib_method: Some(method),
        per_tensor,
        ..PipelineOptions::default()
    }
}

/// Compiles `model` with `o` and runs it on `input` in one batch; returns the first output.
fn quantize(model: &str, input: &str, o: PipelineOptions) -> Result<(Graph, Tensor)> {
    let exe = Compiler::new(o)?.compile(qforge::load_model(&corpus_file(model))?)?;
    verify(exe.graph()).context("quantized graph does not verify")?;
    let x = qforge::npy::read(&corpus_file(input))?;
    let y = exe.run(&[x])?.into_iter().next().context("no output")?;
    Ok((exe.graph().clone(), y))
}

fn top1(scores: &Tensor, labels: &str) -> Result<f64> {
    let y = qforge::data::labels(&qforge::npy::read(&corpus_file(labels))?)?;
    qforge::data::top1(&qforge::data::argmax_rows(scores)?, &y)
}

// ---- digits_cnn: every observer within 0.5 points of fp32 and at least ORT's INT8 accuracy

fn digits_case(method: CalibMethod, per_tensor: bool) {
    let o = opts(QuantizeMode::Int8, "digits_calib_x.npy", method, per_tensor);
    let (g, y) = quantize("digits_cnn.onnx", "digits_test_x.npy", o).unwrap();
    let acc = top1(&y, "digits_test_y.npy").unwrap();
    let fp32 = qforge::npy::read(&corpus_file("digits_test_logits_fp32.npy")).unwrap();
    let a = agreement(&y, &fp32, None).unwrap();
    let q = g.node_ids().filter(|&n| g.node(n).op.is_integer_kernel()).count();
    println!(
        "digits_cnn int8 {method:?}{}: top-1 {:.2}% (fp32 {:.2}%, ORT int8 {:.2}%), SQNR vs fp32 {:.2} dB (ORT 34.71), {q} integer kernels",
        if per_tensor { " per-tensor" } else { "" },
        acc * 100.0,
        DIGITS_FP32_TOP1 * 100.0,
        DIGITS_ORT_INT8_TOP1 * 100.0,
        a.sqnr_db
    );
    assert!(acc >= DIGITS_FP32_TOP1 - 0.005 - 1e-9, "{method:?}: {acc} is more than 0.5 points below fp32");
    assert!(acc >= DIGITS_ORT_INT8_TOP1 - 1e-4, "{method:?}: {acc} is below ORT's static INT8 accuracy");
}

macro_rules! digits {
    ($($name:ident: $method:expr, $per_tensor:expr;)*) => {$(
        #[test]
        fn $name() {
            digits_case($method, $per_tensor);
        }
    )*};
}

digits! {
    digits_int8_minmax: CalibMethod::MinMax, false;
    digits_int8_ema: CalibMethod::Ema, false;
    digits_int8_percentile: CalibMethod::Percentile, false;
    digits_int8_entropy: CalibMethod::Entropy, false;
    digits_int8_mse: CalibMethod::Mse, false;
    digits_int8_minmax_per_tensor: CalibMethod::MinMax, true;
}

/// The default configuration without bias correction and with the graph output rounded to 8 bits
/// is ORT's `quantize_static` QDQ configuration: the outputs agree with ORT's stored QDQ logits
/// within one output step (both run fused integer kernels).
#[test]
fn digits_int8_matches_ort_qdq_within_one_step() {
    let o = PipelineOptions {
        bias_correction: Some(Switch::Off),
        quantize_outputs: Some(Switch::On),
        ..opts(QuantizeMode::Int8, "digits_calib_x.npy", CalibMethod::MinMax, false)
    };
    let (g, y) = quantize("digits_cnn.onnx", "digits_test_x.npy", o).unwrap();
    let ort = qforge::npy::read(&corpus_file("digits_test_logits_ort_qdq.npy")).unwrap();
    let a = agreement(&y, &ort, qforge_tests::output_step(&g)).unwrap();
    println!("digits_cnn int8 vs ORT QDQ: {a}");
    // The weights, biases and their scales are ORT's bit for bit; activation scales can differ
    // by an ulp (the float model calibrated on the interpreter vs on ORT), which moves every
    // dequantized logit by an ulp: the exact share is reported, not asserted.
    assert!(a.max_steps.unwrap() <= 1.0 + 1e-3, "{a}");
    assert_eq!(a.top1_same, a.rows);
}

/// Bias correction (on by default) on digits_cnn, against the same pipeline without it: each
/// conv's and gemm's bias less the mean output error its weight rounding causes on the calibration
/// set (the corrections, a snapshot: layer, channels, the largest correction, the first biases
/// before and after), and the logits closer to fp32 (measured: 34.71 dB without, 39.37 dB with;
/// top-1 99.33% -> 99.50%, fp32's).
#[test]
fn bias_correction_on_digits_raises_sqnr_and_keeps_accuracy() {
    use qforge::compiler::Stage;
    let base = opts(QuantizeMode::Int8, "digits_calib_x.npy", CalibMethod::MinMax, false);
    let c = Compiler::new(base.clone()).unwrap();
    let g = qforge::load_model(&corpus_file("digits_cnn.onnx")).unwrap();
    let before = c.run_until(g.clone(), Stage::Calibrate, &mut |_, _| {}).unwrap().graph;
    let st = c.run_until(g, Stage::BiasCorrection, &mut |_, _| {}).unwrap();
    let report = st.reports.iter().find(|r| r.pass == "bias-correction").expect("a bias-correction report");
    let bias = |g: &Graph, node: &str| -> Vec<f32> {
        let id = g.node_ids().find(|&id| g.node(id).name == node).unwrap();
        let v = g.node(id).inputs().get(2).copied().flatten().unwrap();
        match &g.node(v.node).op {
            Op::Const(t) => t.as_f32().unwrap().to_vec(),
            op => panic!("{node}: bias is {}", op.name()),
        }
    };
    let mut text = vec![];
    for id in st.graph.node_ids() {
        let n = st.graph.node(id);
        if !matches!(n.op, Op::Conv(_) | Op::Gemm { .. }) {
            continue;
        }
        let (b0, b1) = (bias(&before, &n.name), bias(&st.graph, &n.name));
        let largest = b0.iter().zip(&b1).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let first = |b: &[f32]| b.iter().take(3).map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(", ");
        text.push(format!(
            "{} ({}, {} channels): largest correction {largest:.2e}; bias [{}, ...] -> [{}, ...]",
            n.name,
            n.op.name(),
            b1.len(),
            first(&b0),
            first(&b1)
        ));
    }
    println!("{}\n{report:?}", text.join("\n"));
    insta::with_settings!({ snapshot_path => "../../snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("quantize__digits_bias_correction", text.join("\n"));
    });
    let fp32 = qforge::npy::read(&corpus_file("digits_test_logits_fp32.npy")).unwrap();
    let run = |bc: Switch| {
        let o = PipelineOptions { bias_correction: Some(bc), ..base.clone() };
        let (_, y) = quantize("digits_cnn.onnx", "digits_test_x.npy", o).unwrap();
        (agreement(&y, &fp32, None).unwrap().sqnr_db, top1(&y, "digits_test_y.npy").unwrap())
    };
    let ((off_db, off_top1), (on_db, on_top1)) = (run(Switch::Off), run(Switch::On));
    println!(
        "digits_cnn static int8: SQNR vs fp32 {off_db:.2} dB, top-1 {:.2}% without bias correction; {on_db:.2} dB, {:.2}% with it",
        off_top1 * 100.0,
        on_top1 * 100.0
    );
    assert!(on_db >= off_db + 3.0, "bias correction: {on_db:.2} dB, without {off_db:.2} dB");
    assert!(on_top1 >= off_top1, "bias correction: top-1 {on_top1}, without {off_top1}");
}

/// Dynamic quantization (DynamicQuantizeLinear + ConvInteger/MatMulInteger + float rescale) is ORT's
/// `quantize_dynamic`: bit-exact with its stored logits (the whole test set as one batch, as ORT ran).
#[test]
fn digits_dynamic_matches_ort_quantize_dynamic() {
    let o = opts(QuantizeMode::Dynamic, "", CalibMethod::MinMax, false);
    let (g, y) = quantize("digits_cnn.onnx", "digits_test_x.npy", o).unwrap();
    let ort = qforge::npy::read(&corpus_file("digits_test_logits_ort_dynamic.npy")).unwrap();
    let a = agreement(&y, &ort, None).unwrap();
    let acc = top1(&y, "digits_test_y.npy").unwrap();
    println!("digits_cnn dynamic: top-1 {:.2}% (ORT 99.33%), vs ORT: {a}", acc * 100.0);
    assert!(g.node_ids().any(|n| matches!(g.node(n).op, Op::ConvInteger(_))));
    assert!(g.node_ids().any(|n| matches!(g.node(n).op, Op::MatMulInteger)));
    assert_eq!(a.exact_share, 1.0, "{a}");
}

// ---- MobileNetV2: SQNR of the INT8 output against fp32, beside ORT's

/// `opt_level` 1: the Q/DQ graph the quantizer writes, run literally (dequantize, float op,
/// quantize), which is what ORT's QDQ model expresses; 2: lowered to integer kernels by the
/// optimizer.
fn mobilenet_sqnr(method: CalibMethod, per_tensor: bool, opt_level: u8, bias_correction: Switch) -> f64 {
    let o = PipelineOptions {
        opt_level,
        bias_correction: Some(bias_correction),
        ..opts(QuantizeMode::Int8, "imagenet_like_calib_x.npy", method, per_tensor)
    };
    let (_, y) = quantize("mobilenet_v2.onnx", "imagenet_like_test_x.npy", o).unwrap();
    let fp32 = qforge::npy::read(&corpus_file("mobilenet_v2_test_out_fp32.npy")).unwrap();
    let a = agreement(&y, &fp32, None).unwrap();
    let ort = if per_tensor { ORT_MOBILENET_SQNR_PER_TENSOR } else { ORT_MOBILENET_SQNR_PER_CHANNEL };
    println!(
        "mobilenet_v2 int8 {method:?} {} ({}, bias correction {bias_correction:?}): SQNR {:.2} dB vs fp32 (ORT static QDQ MinMax: {ort:.2} dB)",
        if per_tensor { "per-tensor" } else { "per-channel" },
        if opt_level >= 2 { "integer kernels" } else { "Q/DQ" },
        a.sqnr_db
    );
    a.sqnr_db
}

/// The suite's MobileNetV2 case: MSE calibration, per channel, and no bias correction, as ORT's
/// `quantize_static` (which has none); the Q/DQ graph reaches at least ORT's per-channel figure
/// (the integer-kernel figure is printed beside it). With bias correction (the default) the
/// figures are printed: on these two test images it gives 13.09 dB (integer kernels) and 13.34
/// (Q/DQ) against 13.82 and 13.84 without; across the ten images (calibrating on five, testing
/// on the other five, four splits) it gains 0.12 dB on average with MSE and 0.36 with min-max
/// (ResNet-18: 1.6 and 1.5), so the two-image figure is the draw of the images.
#[test]
fn mobilenet_v2_int8_sqnr_at_least_ort() {
    let lowered = mobilenet_sqnr(CalibMethod::Mse, false, 2, Switch::Off);
    assert!(lowered >= ORT_MOBILENET_SQNR_PER_CHANNEL - 0.5, "integer kernels: {lowered:.2} dB");
    let s = mobilenet_sqnr(CalibMethod::Mse, false, 1, Switch::Off);
    assert!(s >= ORT_MOBILENET_SQNR_PER_CHANNEL, "SQNR {s:.2} dB is below ORT's {ORT_MOBILENET_SQNR_PER_CHANNEL} dB");
    mobilenet_sqnr(CalibMethod::Mse, false, 2, Switch::On);
    mobilenet_sqnr(CalibMethod::Mse, false, 1, Switch::On);
}

// ---- the passes' contracts

fn prepared_digits() -> Graph {
    let mut g = qforge::load_model(&corpus_file("digits_cnn.onnx")).unwrap();
    FoldBatchNorm.run(&mut g, &PassContext::default()).unwrap();
    verify(&g).unwrap();
    g
}

fn calibrate_on(g: &Graph, cfg: &QConfig, x: &Tensor) -> Result<qforge_passes::quantize::Calibration, String> {
    let targets = activation_plan(g, cfg).unwrap().targets();
    let mut batches = qforge::data::batches(x, 50).unwrap();
    calibrate(g, &Interpreter::default(), &mut batches, 4, &targets, &mut |_, _| {}).map_err(|e| e.to_string())
}

#[test]
fn static_and_dynamic_passes_are_verified_and_idempotent() {
    let cfg = QConfig::default();
    let x = qforge::npy::read(&corpus_file("digits_calib_x.npy")).unwrap();
    let mut g = prepared_digits();
    let calibration = calibrate_on(&g, &cfg, &x).unwrap();
    let pass = QuantizeStatic { config: cfg.clone(), calibration };
    let cx = PassContext::default();
    let r1 = pass.run(&mut g, &cx).unwrap();
    verify(&g).unwrap();
    assert!(r1.changed);
    assert_eq!(r1.stats["ops quantized"], 6, "{r1:?}");
    assert_eq!(r1.stats["activations folded into quantize"], 3, "{r1:?}");
    let text = qforge_ir::text::print_default(&g).unwrap();
    let r2 = pass.run(&mut g, &cx).unwrap();
    assert!(!r2.changed, "second run changed the graph: {r2:?}");
    assert_eq!(qforge_ir::text::print_default(&g).unwrap(), text);
    // no relu left: the quantize after each conv clamps at its zero point 0
    assert!(!g.node_ids().any(|n| matches!(g.node(n).op, Op::Unary(UnaryOp::Relu))));

    let mut g = prepared_digits();
    let dynamic = QuantizeDynamic { config: cfg, conv: true };
    assert!(dynamic.run(&mut g, &cx).unwrap().changed);
    verify(&g).unwrap();
    let text = qforge_ir::text::print_default(&g).unwrap();
    assert!(!dynamic.run(&mut g, &cx).unwrap().changed);
    assert_eq!(qforge_ir::text::print_default(&g).unwrap(), text);
}

#[test]
fn symmetric_activations_keep_the_relu() {
    let mut cfg = QConfig::default();
    cfg.default.activations =
        Some(qforge_passes::quantize::scheme::Scheme::symmetric(qforge_passes::quantize::scheme::QType::I8));
    let x = qforge::npy::read(&corpus_file("digits_calib_x.npy")).unwrap();
    let mut g = prepared_digits();
    let calibration = calibrate_on(&g, &cfg, &x).unwrap();
    QuantizeStatic { config: cfg, calibration }.run(&mut g, &PassContext::default()).unwrap();
    verify(&g).unwrap();
    // an i8 symmetric quantize does not clamp at zero: the relus stay, between conv and quantize
    let relus = g.node_ids().filter(|&n| matches!(g.node(n).op, Op::Unary(UnaryOp::Relu))).count();
    assert_eq!(relus, 3);
}

#[test]
fn nan_or_inf_in_calibration_data_names_the_node() {
    let g = prepared_digits();
    let x = qforge::npy::read(&corpus_file("digits_calib_x.npy")).unwrap();
    for (bad, what) in [(f32::NAN, "NaN"), (f32::INFINITY, "+inf"), (f32::NEG_INFINITY, "-inf")] {
        let mut v = x.to_f32_vec();
        v[70] = bad;
        let t = Tensor::from_f32(x.shape().to_vec(), v);
        let e = calibrate_on(&g, &QConfig::default(), &t).unwrap_err();
        println!("{e}");
        assert!(e.contains("node `input`") && e.contains(what), "{e}");
    }
}

/// A conv whose weights are all zero: its output is constant zero on every sample. The range is
/// degenerate; quantization gives a valid scale (1) and a warning naming the node, never NaN.
#[test]
fn zero_range_activation_gives_a_valid_scale_and_a_warning() {
    let mut g = Graph::new("zero");
    let x = g.add_input("x", TensorType::new(DType::F32, Shape::fixed(&[2, 1, 4, 4])));
    let w = g.add_const("w", Tensor::from_f32(vec![2, 1, 1, 1], vec![0.0, 0.0]));
    let attrs =
        ConvAttrs { kernel: vec![1, 1], strides: vec![1, 1], pads: vec![0; 4], dilations: vec![1, 1], group: 1 };
    let c = g.add_node(Op::Conv(attrs), vec![Some(x), Some(w)], None, "dead_conv").unwrap();
    g.add_output("y", c);
    let cfg = QConfig::default();
    let xs = Tensor::from_f32(vec![2, 1, 4, 4], (0..32).map(|i| i as f32 / 8.0).collect());
    let targets = activation_plan(&g, &cfg).unwrap().targets();
    let mut batches = std::iter::once(vec![xs.clone()]);
    let calibration = calibrate(&g, &Interpreter::default(), &mut batches, 1, &targets, &mut |_, _| {}).unwrap();
    let r = QuantizeStatic { config: cfg, calibration }.run(&mut g, &PassContext::default()).unwrap();
    verify(&g).unwrap();
    println!("{:?}", r.notes);
    assert!(r.notes.iter().any(|n| n.contains("`dead_conv`") && n.contains("degenerate")), "{:?}", r.notes);
    assert!(r.notes.iter().any(|n| n.contains("`dead_conv` weight")), "{:?}", r.notes);
    let y = qforge_ir::interp::run(&g, &[xs]).unwrap().remove(0);
    assert!(y.to_f32_vec().iter().all(|v| *v == 0.0));
}

#[test]
fn qconfig_skip_keeps_a_node_float() {
    let cfg = qforge::qconfig::parse("[[node]]\nmatch = \"/fc/*\"\nskip = true\n").unwrap();
    let x = qforge::npy::read(&corpus_file("digits_calib_x.npy")).unwrap();
    let mut g = prepared_digits();
    let calibration = calibrate_on(&g, &cfg, &x).unwrap();
    let r = QuantizeStatic { config: cfg, calibration }.run(&mut g, &PassContext::default()).unwrap();
    verify(&g).unwrap();
    assert_eq!(r.stats["ops quantized"], 5);
    let gemm = g.node_ids().find(|&n| matches!(g.node(n).op, Op::Gemm { .. })).unwrap();
    let w = g.node(gemm).inputs()[1].unwrap();
    assert!(matches!(g.node(w.node).op, Op::Const(_)), "the skipped gemm's weight stays a float constant");
}

#[test]
fn seed_policy_backbone_int8_neck_fp16_head_fp32() {
    use qforge_passes::quantize::Precision;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/quant/backbone_neck_head.toml");
    let cfg = qforge::qconfig::load(&path).unwrap().config;
    let mut g = Graph::new("seed");
    let x = g.add_input("x", TensorType::new(DType::F32, Shape::fixed(&[1, 4])));
    let mut prec = vec![];
    for name in ["/backbone/conv1/Relu", "/neck/fpn/Relu", "/head/cls/Relu", "/other/Relu"] {
        let v = g.add_node(Op::Unary(UnaryOp::Relu), vec![Some(x)], None, name).unwrap();
        prec.push(cfg.settings(g.node(v.node)).precision);
    }
    assert_eq!(prec, [Precision::Int8, Precision::Fp16, Precision::Fp32, Precision::Int8]);
    let bad = std::env::temp_dir().join(format!("qforge-bad-qconfig-{}.toml", std::process::id()));
    std::fs::write(&bad, "[default]\nobserver = \"entropy\"\ngranularity = \"per-row\"\n").unwrap();
    let e = format!("{:#}", qforge::qconfig::load(&bad).unwrap_err());
    std::fs::remove_file(&bad).ok();
    assert!(e.contains("line 3: unknown granularity `per-row`"), "{e}");
}

#[test]
fn sensitivity_ranks_layers_and_keeps_float_within_budget() {
    use qforge_passes::quantize::{EvalSet, Study};
    let cfg = QConfig::default();
    let g = prepared_digits();
    let x = qforge::npy::read(&corpus_file("digits_calib_x.npy")).unwrap();
    let calibration = calibrate_on(&g, &cfg, &x).unwrap();
    let test = qforge::npy::read(&corpus_file("digits_test_x.npy")).unwrap();
    let labels = qforge::data::labels(&qforge::npy::read(&corpus_file("digits_test_y.npy")).unwrap()).unwrap();
    let batches: Vec<Vec<Tensor>> = qforge::data::batches(&test, 200).unwrap().collect();
    let eval = Interpreter::default();
    let reference: Vec<Tensor> = batches.iter().map(|b| qforge_ir::interp::run(&g, b).unwrap().remove(0)).collect();
    let study = Study {
        graph: &g,
        config: &cfg,
        calibration: &calibration,
        eval: &eval,
        set: EvalSet { batches: &batches, reference: &reference, labels: Some(&labels) },
    };
    let ranked = study.analyze(&mut |_, _| {}).unwrap();
    for l in &ranked {
        println!(
            "{:<24} {:<20} {:>6.2} dB  top-1 {:.2}%  from {:?}",
            l.node,
            l.op,
            l.sqnr_db,
            l.top1.unwrap() * 100.0,
            l.from
        );
    }
    assert_eq!(ranked.len(), 6);
    assert!(ranked.windows(2).all(|w| w[0].sqnr_db <= w[1].sqnr_db));
    assert!(ranked.iter().any(|l| l.from.contains(&"/bn1/BatchNormalization".to_string())));
    let (kept, top1) = study.keep_float_until(&ranked, DIGITS_FP32_TOP1, 0.0).unwrap();
    println!("kept float {kept:?}: top-1 {:.2}%", top1 * 100.0);
    assert!(top1 >= DIGITS_FP32_TOP1 - 1e-4);
}

/// The digits model quantized to static INT8 at opt level 1 (the Q/DQ graph), its output on the
/// test set, and its QDQ ONNX export.
fn digits_qdq_export() -> (Graph, Tensor, Vec<u8>) {
    let o =
        PipelineOptions { opt_level: 1, ..opts(QuantizeMode::Int8, "digits_calib_x.npy", CalibMethod::MinMax, false) };
    let (g, y) = quantize("digits_cnn.onnx", "digits_test_x.npy", o).unwrap();
    let bytes = qforge::onnx::export::export_qdq(&g).unwrap();
    (g, y, bytes)
}

/// The exported QDQ ONNX of digits_cnn, re-imported by qforge, computes exactly what the
/// quantized graph does.
#[test]
fn qdq_export_round_trips_through_qforge() {
    let (g, _, bytes) = digits_qdq_export();
    let dir = std::env::temp_dir().join(format!("qforge-qdq-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("digits_qdq.onnx");
    std::fs::write(&path, &bytes).unwrap();
    let back = qforge::load_model(&path).unwrap();
    verify(&back).unwrap();
    let x = qforge::npy::read(&corpus_file("digits_test_x.npy")).unwrap();
    // both on the interpreter: the claim is about the export, not about the engines
    let y = qforge_ir::interp::run(&g, std::slice::from_ref(&x)).unwrap().remove(0);
    let y2 = qforge_ir::interp::run(&back, &[x]).unwrap().remove(0);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(y.to_f32_vec(), y2.to_f32_vec(), "re-imported export differs");
}

/// ONNX Runtime runs the exported QDQ ONNX of digits_cnn to the same top-1 accuracy as qforge.
#[test]
#[ignore = "needs python3 with onnxruntime (pip install onnxruntime numpy) and a CPU with VNNI"]
fn qdq_export_runs_in_onnxruntime() {
    qforge_tests::require(qforge_tests::onnxruntime_available(), "python3 with onnxruntime");
    // ONNX Runtime is the oracle here only where its u8 x i8 kernels are exact
    qforge_tests::require(qforge_tests::has_vnni(), "a CPU with AVX-512 VNNI or AVX-VNNI (see `has_vnni`)");
    let (g, y, bytes) = digits_qdq_export();
    let acc = top1(&y, "digits_test_y.npy").unwrap();
    let dir = std::env::temp_dir().join(format!("qforge-qdq-export-ort-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("digits_qdq.onnx");
    std::fs::write(&path, &bytes).unwrap();
    let ort_y = qforge_tests::ort_first_output(&path, &corpus_file("digits_test_x.npy")).unwrap();
    let ort_acc = top1(&ort_y, "digits_test_y.npy").unwrap();
    let a = agreement(&ort_y, &y, qforge_tests::output_step(&g)).unwrap();
    println!(
        "digits_cnn QDQ export: qforge top-1 {:.2}%, ORT on the export {:.2}%; ORT vs qforge: {a}",
        acc * 100.0,
        ort_acc * 100.0
    );
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(acc, ort_acc);
}

/// The export computes sizes read from symbolic dims in the exported graph (`Shape` of the value
/// that carries each dim, multiplied out, concatenated), so the exported model is as dynamic as
/// the source: `fixtures/qir/symbolic_export.qir` (a channel shuffle through `reshape_dyn`, a
/// resize to the input's size, split, both GELUs, range, expands) exported once and run by ONNX
/// Runtime at two batches and image sizes agrees with qforge's interpreter within 1e-5 of the
/// output's largest magnitude (float: the summation order differs); the ONNX checker accepts it.
#[test]
#[ignore = "needs python3 with onnx and onnxruntime (pip install onnx onnxruntime numpy)"]
fn symbolic_sizes_export_runs_in_onnxruntime_at_every_size() {
    qforge_tests::require(qforge_tests::onnxruntime_available(), "python3 with onnxruntime");
    qforge_tests::require(qforge_tests::onnx_available(), "python3 with onnx");
    let g =
        qforge::load_model(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/qir/symbolic_export.qir"))
            .unwrap();
    let bytes = qforge::onnx::export::export_qdq(&g).unwrap();
    let dir = std::env::temp_dir().join(format!("qforge-symbolic-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("symbolic_export.onnx");
    std::fs::write(&path, &bytes).unwrap();
    qforge_tests::onnx_check(&path).unwrap();
    for shape in [[1, 4, 6, 8], [2, 4, 5, 7]] {
        let n: usize = shape.iter().product();
        let x = Tensor::from_f32(shape.to_vec(), (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect());
        let input = dir.join("x.npy");
        qforge::npy::write(&input, &x).unwrap();
        let y = qforge_ir::interp::run(&g, std::slice::from_ref(&x)).unwrap().remove(0);
        let ort_y = qforge_tests::ort_first_output(&path, &input).unwrap();
        let a = agreement(&ort_y, &y, None).unwrap();
        println!("symbolic_export at {shape:?}: ORT on the export vs qforge: {a}");
        assert!(a.max_abs <= 1e-5 * a.ref_max_abs, "{shape:?}: {a}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/quant").join(name)
}

/// The accumulators of every matmul_integer node, by the name of the matmul it came from.
fn integer_matmuls(g: &Graph, x: &Tensor, suffix: &str) -> std::collections::BTreeMap<String, Tensor> {
    let mut out = std::collections::BTreeMap::new();
    qforge_ir::interp::run_observed(g, std::slice::from_ref(x), &Default::default(), &mut |id, ts| {
        let n = g.node(id);
        if matches!(n.op, Op::MatMulInteger) {
            out.insert(n.name.trim_end_matches(suffix).to_string(), ts[0].clone());
        }
    })
    .unwrap();
    out
}

/// Dynamic quantization of a transformer-style block (layer norm, Q/K/V linears, softmax attention,
/// exact GELU, residuals; `tests/fixtures/quant/gen_transformer_block.py`) against ONNX Runtime's
/// `quantize_dynamic` of the same model: the integer matmuls agree within one step per element
/// (they are equal), the float output within 1e-2 of its largest magnitude.
#[test]
fn transformer_block_dynamic_matches_onnxruntime() {
    let o = PipelineOptions { opt_level: 1, ..opts(QuantizeMode::Dynamic, "", CalibMethod::MinMax, false) };
    let exe =
        Compiler::new(o).unwrap().compile(qforge::load_model(&fixture("transformer_block.onnx")).unwrap()).unwrap();
    let g = exe.graph();
    verify(g).unwrap();
    let x = qforge::npy::read(&fixture("transformer_block_x.npy")).unwrap();
    let y = exe.run(std::slice::from_ref(&x)).unwrap().remove(0);
    let ort_y = qforge::npy::read(&fixture("transformer_block_dynamic_ort_out.npy")).unwrap();
    let fp32 = qforge::npy::read(&fixture("transformer_block_fp32_out.npy")).unwrap();
    let a = agreement(&y, &ort_y, None).unwrap();
    let f = agreement(&y, &fp32, None).unwrap();
    println!("transformer block dynamic vs ORT quantize_dynamic: {a}");
    println!("transformer block dynamic vs fp32: SQNR {:.1} dB", f.sqnr_db);
    assert!(a.max_abs <= 1e-2 * a.ref_max_abs, "{a}");
    // integer matmuls: qforge's graph against ORT's quantized model run by the interpreter
    let ort_g = qforge::load_model(&fixture("transformer_block_dynamic_ort.onnx")).unwrap();
    let ours = integer_matmuls(g, &x, "_MatMulInteger");
    let theirs = integer_matmuls(&ort_g, &x, "_quant");
    assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>());
    assert_eq!(ours.len(), 6);
    for (name, t) in &ours {
        let (p, q) = (t.to_i64_vec().unwrap(), theirs[name].to_i64_vec().unwrap());
        let same = p.iter().zip(&q).filter(|(a, b)| a == b).count();
        let max = p.iter().zip(&q).map(|(a, b)| (a - b).abs()).max().unwrap_or(0);
        println!("  {name}: {same}/{} accumulators equal, max difference {max}", p.len());
        assert_eq!(same, p.len(), "{name}");
    }
}

// ---- 4-bit weights: per channel and per group (block-wise), on digits_cnn

fn asset(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../compiler/assets").join(name)
}

/// Compiles digits_cnn with a qconfig (`bits = 4` and the granularity, or the int8 defaults when
/// `bits` is 8) calibrated on the bundled calibration set, at `opt_level`; returns the graph and
/// its top-1 on the corpus test set (597 images) and on the bundled samples (200 images).
fn digits_weights(bits: u32, granularity: &str, opt_level: u8) -> (Graph, Tensor, f64, f64) {
    let dir = std::env::temp_dir().join(format!("qforge-int4-{}-{bits}-{granularity}-{opt_level}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("qconfig.toml");
    std::fs::write(&cfg, format!("[default]\nbits = {bits}\ngranularity = \"{granularity}\"\n")).unwrap();
    let o = PipelineOptions {
        quantize: QuantizeMode::Int8,
        calib: Some(asset("digits_calib_x.npy")),
        calib_method: Some(CalibMethod::MinMax),
        qconfig: Some(cfg),
        opt_level,
        ..PipelineOptions::default()
    };
    let exe = Compiler::new(o).unwrap().compile(qforge::load_model(&corpus_file("digits_cnn.onnx")).unwrap()).unwrap();
    verify(exe.graph()).unwrap();
    let x = qforge::npy::read(&corpus_file("digits_test_x.npy")).unwrap();
    let y = exe.run(&[x]).unwrap().remove(0);
    let test = top1(&y, "digits_test_y.npy").unwrap();
    let sx = qforge::npy::read(&asset("digits_samples_x.npy")).unwrap();
    let sy = qforge::data::labels(&qforge::npy::read(&asset("digits_samples_y.npy")).unwrap()).unwrap();
    let ys = exe.run(&[sx]).unwrap().remove(0);
    let samples = qforge::data::top1(&qforge::data::argmax_rows(&ys).unwrap(), &sy).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    (exe.graph().clone(), y, test, samples)
}

/// Constants of the graph quantized per group, and the bits their codes need.
fn per_group_weights(g: &Graph) -> Vec<(String, i64, i64)> {
    g.node_ids()
        .filter_map(|n| {
            let node = g.node(n);
            let Op::Const(t) = &node.op else { return None };
            node.outputs[0].quant.as_ref().filter(|q| q.is_per_group())?;
            let v = t.to_i64_vec()?;
            Some((node.name.clone(), *v.iter().min()?, *v.iter().max()?))
        })
        .collect()
}

/// 4-bit weights on digits_cnn (MinMax calibration on the bundled set, u8 activations, i4
/// symmetric weights). Measured top-1 on the 597 test images / the 200 bundled samples: fp32
/// 99.50% / 99.50%; int8 per channel 99.33% / 99.00%; int4 per channel 96.31% / 96.00%; int4 per
/// group of 32, 64 and 128: 99.33% / 99.50% each (the conv weights have at most 16 input
/// channels, so their groups are all input channels of one kernel position; the gemm's
/// reduction axis is grouped). Asserted: per channel within 4 points of fp32, per group within 2.
#[test]
fn digits_four_bit_weights_keep_top1() {
    let (_, _, int8, int8_s) = digits_weights(8, "per-channel", 2);
    println!("digits_cnn int8 per-channel: top-1 {:.2}% (samples {:.2}%)", int8 * 100.0, int8_s * 100.0);
    let mut results = vec![];
    for gran in ["per-channel", "per-group:32", "per-group:64", "per-group:128"] {
        let (g, _, acc, acc_s) = digits_weights(4, gran, 2);
        let groups = per_group_weights(&g);
        println!(
            "digits_cnn int4 {gran}: top-1 {:.2}% (samples {:.2}%; fp32 {:.2}%, int8 {:.2}%), per-group constants {groups:?}",
            acc * 100.0,
            acc_s * 100.0,
            DIGITS_FP32_TOP1 * 100.0,
            int8 * 100.0
        );
        results.push((gran, g, groups, acc, acc_s));
    }
    for (gran, g, groups, acc, acc_s) in results {
        // 4-bit per channel loses a few points on this model; per group keeps within 2
        let budget = if gran == "per-channel" { 0.04 } else { 0.02 };
        assert!(acc >= DIGITS_FP32_TOP1 - budget, "{gran}: top-1 {acc} is more than {budget} below fp32");
        assert!(acc_s >= 1.0 - budget - 0.01, "{gran}: samples top-1 {acc_s}");
        if gran.starts_with("per-group") {
            // the optimizer keeps dequantize(4-bit constant): the three convs and the gemm
            assert_eq!(groups.len(), 4, "{gran}: {groups:?}");
            for (name, lo, hi) in &groups {
                assert!(*lo >= -8 && *hi <= 7, "{name}: codes {lo}..{hi} are not 4-bit");
            }
            // no integer kernel takes a per-group weight; the fusion report says why
            let kernels = g
                .node_ids()
                .filter(|&n| matches!(g.node(n).op, Op::QConv { .. } | Op::QGemm { .. } | Op::QMatMul { .. }));
            assert_eq!(kernels.count(), 0, "{gran}");
            let report = qforge_passes::report::fusion_report(&g, true);
            let text = format!("{report:?}");
            assert!(text.contains("per-group weights have no integer kernel"), "{gran}: {text}");
        }
    }
}

/// The QDQ export of 4-bit per-group weights: blocked DequantizeLinear (opset 21, `block_size`)
/// of INT4 initializers packed two per byte. ONNX Runtime checks and runs it, and agrees with
/// qforge's Q/DQ graph up to the inner roundings that float summation order flips.
#[test]
#[ignore = "needs python3 with onnx and onnxruntime (pip install onnx onnxruntime numpy)"]
fn per_group_export_runs_in_onnxruntime() {
    qforge_tests::require(qforge_tests::onnxruntime_available(), "python3 with onnxruntime");
    let (g, y, _, _) = digits_weights(4, "per-group:32", 1);
    assert_eq!(per_group_weights(&g).len(), 4);
    let bytes = qforge::onnx::export::export_qdq(&g).unwrap();
    let dir = std::env::temp_dir().join(format!("qforge-int4-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("digits_int4.onnx");
    std::fs::write(&path, &bytes).unwrap();
    let out = dir.join("ort_out.npy");
    // graph optimizations off: ORT runs the Q/DQ graph as written, as qforge does at opt level 1
    let script = format!(
        "import numpy as np, onnx, onnxruntime as ort\n\
         m = onnx.load({p:?})\n\
         onnx.checker.check_model(m, full_check=True)\n\
         dq = [n for n in m.graph.node if n.op_type == 'DequantizeLinear' and any(a.name == 'block_size' for a in n.attribute)]\n\
         init = {{t.name: t for t in m.graph.initializer}}\n\
         assert len(dq) == 4, len(dq)\n\
         assert all(init[n.input[0]].data_type == onnx.TensorProto.INT4 for n in dq)\n\
         o = ort.SessionOptions()\n\
         o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL\n\
         s = ort.InferenceSession({p:?}, o, providers=['CPUExecutionProvider'])\n\
         x = np.load({x:?})\n\
         np.save({o:?}, s.run(None, {{s.get_inputs()[0].name: x}})[0])\n",
        p = path.display().to_string(),
        x = corpus_file("digits_test_x.npy").display().to_string(),
        o = out.display().to_string()
    );
    let r = std::process::Command::new("python3").args(["-c", &script]).output().unwrap();
    assert!(r.status.success(), "onnxruntime failed: {}", String::from_utf8_lossy(&r.stderr));
    let ort_y = qforge::npy::read(&out).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let a = agreement(&ort_y, &y, None).unwrap();
    println!("digits_cnn int4 per-group-32 QDQ export, ORT vs qforge: {a}");
    // The logits are the last gemm's f32 result (graph outputs are not rounded to 8 bits), and
    // per-group weights have no integer kernel: the convs and the gemm compute in f32 on the
    // dequantized weights, summed in a different order by each runtime (qforge's JIT runs the 3x3
    // ones as Winograd, the interpreter in plain loops, ORT as im2col + sgemm). A value next to a
    // rounding boundary of an inner quantize then lands one step away and moves the logits after
    // it, so the logits are not bit-exact (measured: 99.66% against the JIT, 45.6% against the
    // interpreter, 85-89 dB). A wrong export (a scale, an axis, a block size, the INT4 packing)
    // moves the logits by the order of the quantization error itself (these int4 logits are
    // 24 dB from fp32's): 60 dB separates the two.
    assert!(a.sqnr_db >= 60.0, "{a}");
    assert_eq!(a.top1_same, a.rows, "{a}");
}

/// SmoothQuant's SQNR gain on the outlier block, asserted as a floor: measured 18.99 dB without,
/// 41.11 dB with (alpha 0.5; the block without outliers: 41.08 dB), a 22.1 dB gain.
const SMOOTH_MARGIN_DB: f64 = 15.0;
/// The `--min-sqnr` target on the outlier block (all int8: 18.97 dB on the calibration set;
/// measured: q, k, v and fc1 kept float, 41.01 dB, 4 of 11 layers).
const MIN_SQNR_TARGET_DB: f64 = 30.0;

// ---- transformers: SmoothQuant, the attention policy, the SQNR fallback, on IR
// fixtures: `fixtures/precision/transformer_block.qir` and its copy with LayerNorm outlier
// channels `fixtures/quant/transformer_block_outliers.qir`

fn qir(rel: &str) -> Graph {
    let g = qforge::load_model(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(rel)).unwrap();
    verify(&g).unwrap();
    g
}

/// `n` token sequences `[n, 4, 8]`, features uniform in [-2, 2] (xorshift from `seed`).
fn tokens(n: usize, seed: u32) -> Tensor {
    let mut s = seed.wrapping_mul(0x9e37_79b9) | 1;
    let v = (0..n * 32)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32 * 2.0 - 1.0) * 2.0
        })
        .collect();
    Tensor::from_f32(vec![n, 4, 8], v)
}

fn cx_verify() -> PassContext {
    PassContext { verify: true, ..PassContext::default() }
}

/// `g` statically quantized under `cfg`, calibrated on `calib` (Q/DQ form, verified).
fn static_int8(g: &Graph, cfg: &QConfig, calib: &Tensor) -> Graph {
    let mut q = g.clone();
    let calibration = calibrate_on(&q, cfg, calib).unwrap();
    let pass = QuantizeStatic { config: cfg.clone(), calibration };
    qforge_passes::Pipeline::new().with(pass).run(&mut q, &cx_verify(), &mut |_, _| {}).unwrap();
    q
}

/// SQNR (dB) of `g`'s first output against `reference`'s on `x`.
fn sqnr_on(g: &Graph, reference: &Graph, x: &Tensor) -> f64 {
    let y = qforge_ir::interp::run(g, std::slice::from_ref(x)).unwrap().remove(0);
    let r = qforge_ir::interp::run(reference, std::slice::from_ref(x)).unwrap().remove(0);
    agreement(&y, &r, None).unwrap().sqnr_db
}

/// Per-channel maxima of every smoothing site's layer norm result on `x`, by the norm's name.
fn norm_maxima(g: &Graph, x: &Tensor) -> std::collections::BTreeMap<(String, usize), Vec<f32>> {
    use qforge_passes::quantize::{channel_absmax, smooth_sites};
    let values: Vec<_> = smooth_sites(g).iter().map(|s| s.value()).collect();
    let mut b = qforge::data::batches(x, 50).unwrap();
    channel_absmax(g, &Interpreter::default(), &mut b, 4, &values, &mut |_, _| {}).unwrap()
}

/// `g` smoothed with strength `alpha` on channel maxima observed on `x`: the graph, the pass and
/// its report (run through a verifying pipeline).
fn smoothed(
    g: &Graph,
    alpha: f64,
    x: &Tensor,
) -> (Graph, qforge_passes::quantize::SmoothQuant, qforge_passes::PassReport) {
    use qforge_passes::quantize::{smooth_sites, ChannelStats, SmoothQuant};
    let stats = ChannelStats::new(g, &smooth_sites(g), &norm_maxima(g, x)).unwrap();
    let pass = SmoothQuant { alpha, stats };
    let mut s = g.clone();
    let r = qforge_passes::Pipeline::new().with(pass.clone()).run(&mut s, &cx_verify(), &mut |_, _| {}).unwrap();
    (s, pass, r.into_iter().next().unwrap())
}

/// Largest over smallest channel maximum of each layer norm's result.
fn spread(m: &std::collections::BTreeMap<(String, usize), Vec<f32>>) -> Vec<(String, f32)> {
    m.iter()
        .map(|((n, _), v)| {
            let hi = v.iter().cloned().fold(0f32, f32::max);
            let lo = v.iter().cloned().fold(f32::INFINITY, f32::min);
            (n.clone(), hi / lo)
        })
        .collect()
}

#[test]
fn smoothquant_keeps_the_f32_function_and_is_idempotent() {
    use qforge_passes::quantize::smooth_sites;
    let g = qir("quant/transformer_block_outliers.qir");
    let (calib, test) = (tokens(200, 1), tokens(64, 2));
    let sites = smooth_sites(&g);
    let names: Vec<(&str, usize)> = sites.iter().map(|s| (g.node(s.norm).name.as_str(), s.consumers.len())).collect();
    assert_eq!(names, [("/ln1/LayerNormalization", 3), ("/ln2/LayerNormalization", 1)], "Q, K, V share ln1");
    let (s, pass, r) = smoothed(&g, 0.5, &calib);
    println!("{r:?}");
    assert_eq!(r.stats["layer norms smoothed"], 2);
    assert_eq!(r.stats["weights rescaled"], 4);
    // the f32 function is unchanged up to rounding
    let y0 = qforge_ir::interp::run(&g, std::slice::from_ref(&test)).unwrap().remove(0);
    let y1 = qforge_ir::interp::run(&s, std::slice::from_ref(&test)).unwrap().remove(0);
    let a = agreement(&y1, &y0, None).unwrap();
    println!("smoothed f32 vs original: {a}");
    assert!(a.max_abs <= 1e-5 * a.ref_max_abs, "{a}");
    // the outlier channels are tamed: channel maxima of each layer norm's result much closer
    let (before, after) = (spread(&norm_maxima(&g, &calib)), spread(&norm_maxima(&s, &calib)));
    println!("channel max spread (largest / smallest) before {before:?}, after {after:?}");
    for ((n, b), (_, a)) in before.iter().zip(&after) {
        assert!(a * 10.0 < *b, "{n}: spread {b} -> {a}");
    }
    // idempotent: the same pass again, and a pass on fresh statistics of the smoothed graph
    let text = qforge_ir::text::print_default(&s).unwrap();
    let mut again = s.clone();
    assert!(!pass.run(&mut again, &cx_verify()).unwrap().changed);
    assert_eq!(qforge_ir::text::print_default(&again).unwrap(), text);
    let (fresh, _, r2) = smoothed(&s, 0.5, &calib);
    assert!(!r2.changed, "{r2:?}");
    assert_eq!(qforge_ir::text::print_default(&fresh).unwrap(), text);
}

/// Per-tensor u8 activations after a layer norm with gain-100 channels lose the other channels;
/// SmoothQuant (alpha 0.5) moves the outliers into the Q/K/V and fc1 weights (per channel i8) and
/// recovers the SQNR of the block without outliers (figures at [`SMOOTH_MARGIN_DB`]). On the
/// block without outliers smoothing changes little (within 1 dB either way is asserted).
#[test]
fn smoothquant_raises_int8_sqnr_on_layer_norm_outliers() {
    let cfg = QConfig::default();
    let (calib, test) = (tokens(200, 1), tokens(64, 2));
    for (fixture, margin) in
        [("quant/transformer_block_outliers.qir", SMOOTH_MARGIN_DB), ("precision/transformer_block.qir", -1.0)]
    {
        let g = qir(fixture);
        let plain = sqnr_on(&static_int8(&g, &cfg, &calib), &g, &test);
        let (s, _, _) = smoothed(&g, 0.5, &calib);
        let smooth = sqnr_on(&static_int8(&s, &cfg, &calib), &g, &test);
        println!("{fixture}: static int8 SQNR vs f32 {plain:.2} dB, with SmoothQuant (alpha 0.5) {smooth:.2} dB");
        assert!(smooth >= plain + margin, "{fixture}: {smooth:.2} dB with smoothing, {plain:.2} dB without");
    }
}

/// What static quantization decided for each matmul of `g` under `cfg`: (name, role, int8?).
fn matmul_decisions(g: &Graph, cfg: &QConfig) -> Vec<(String, String, bool)> {
    let ops: Vec<_> = activation_plan(g, cfg).unwrap().ops.iter().map(|(id, _, _)| *id).collect();
    let roles = qforge_passes::quantize::attention_roles(g);
    let mut out: Vec<_> = g
        .node_ids()
        .filter(|&n| matches!(g.node(n).op, Op::MatMul))
        .map(|n| {
            let role = roles.get(&n).map_or("weight", |r| r.name());
            (g.node(n).name.clone(), role.to_string(), ops.contains(&n))
        })
        .collect();
    out.sort();
    out
}

/// The seed's attention policy (exercise 6.5) is the default: Q, K, V and output projections
/// int8, the scores matmul `Q K^T` float with softmax and layer norm, the context matmul `P V`
/// int8. Snapshot of the quantized transformer block with the decision table.
#[test]
fn attention_policy_is_the_default_for_attention_blocks() {
    let g = qir("precision/transformer_block.qir");
    let cfg = QConfig::default();
    let decisions = matmul_decisions(&g, &cfg);
    let table: String =
        decisions.iter().map(|(n, r, q)| format!("{n:<24} {r:<18} {}\n", if *q { "int8" } else { "float" })).collect();
    print!("{table}");
    let float: Vec<&str> = decisions.iter().filter(|d| !d.2).map(|d| d.0.as_str()).collect();
    assert_eq!(float, ["/attn/scores/MatMul"]);
    assert!(decisions.iter().any(|d| d.0 == "/attn/context/MatMul" && d.1 == "attention_context" && d.2));
    let q = static_int8(&g, &cfg, &tokens(200, 1));
    // the scores matmul reads Q and K^T in float and its result stays float up to the softmax; Q
    // and K come from the int8 projections as float (only the float scores matmul reads them,
    // through data movement, so their kernels dequantize the accumulator: no Q/DQ between)
    let by_name = |n: &str| q.node_ids().find(|&i| q.node(i).name == n).unwrap();
    let scores = by_name("/attn/scores/MatMul");
    for v in q.node(scores).inputs().iter().flatten() {
        let mut n = v.node;
        while matches!(q.node(n).op, Op::Transpose { .. } | Op::Reshape { .. }) {
            n = q.node(n).inputs()[0].unwrap().node;
        }
        let projection = q.node(n);
        assert!(
            matches!(projection.op, Op::MatMul)
                && projection.inputs().iter().flatten().all(|x| matches!(q.node(x.node).op, Op::Dequantize)),
            "scores input {}",
            projection.name
        );
    }
    assert!(q.users(scores).iter().all(|(u, _)| !matches!(q.node(*u).op, Op::Quantize)));
    // the context matmul reads quantized probabilities
    let ctx = by_name("/attn/context/MatMul");
    let p = q.node(ctx).inputs()[0].unwrap();
    assert!(matches!(q.node(p.node).op, Op::Dequantize));
    let s = sqnr_on(&q, &g, &tokens(64, 2));
    println!("transformer block, default attention policy: SQNR vs f32 {s:.2} dB");
    assert!(s > 20.0, "{s:.2} dB");
    let text = qforge_ir::text::print_default(&q).unwrap();
    let snap = format!("{text}\n{table}");
    insta::with_settings!({ snapshot_path => "../../snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("quantize__transformer_block__attention_policy", snap);
    });
    // the roles are addressable in the qconfig language
    let cfg =
        qforge::qconfig::parse("[op.attention_scores]\nprecision = \"int8\"\n\n[op.attention_context]\nskip = true\n")
            .unwrap();
    let d = matmul_decisions(&g, &cfg);
    let float: Vec<&str> = d.iter().filter(|d| !d.2).map(|d| d.0.as_str()).collect();
    assert_eq!(float, ["/attn/context/MatMul"]);
}

/// A temporary `.npy` of `x`, for the pipeline's `--calib`.
fn npy_file(x: &Tensor, tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("qforge-9q-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("calib.npy");
    qforge::npy::write(&f, x).unwrap();
    f
}

/// The whole pipeline (`--quantize int8`, integer kernels at opt level 2, the JIT) on the outlier
/// block with and without `--smooth 0.5`: the graph runs, verifies, and smoothing wins.
#[test]
fn pipeline_int8_with_smooth_runs_on_the_jit() {
    let (calib, test) = (tokens(200, 1), tokens(64, 2));
    let f = npy_file(&calib, "smooth");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/quant/transformer_block_outliers.qir");
    let g = qforge::load_model(&path).unwrap();
    let reference = qforge_ir::interp::run(&g, std::slice::from_ref(&test)).unwrap().remove(0);
    let mut figures = vec![];
    for smooth in [None, Some(0.5)] {
        let o = PipelineOptions {
            quantize: QuantizeMode::Int8,
            calib: Some(f.clone()),
            smooth,
            ..PipelineOptions::default()
        };
        let exe = Compiler::new(o).unwrap().compile(qforge::load_model(&path).unwrap()).unwrap();
        verify(exe.graph()).unwrap();
        let y = exe.run(std::slice::from_ref(&test)).unwrap().remove(0);
        let a = agreement(&y, &reference, None).unwrap();
        let mut ops: Vec<&str> = exe.graph().node_ids().map(|n| exe.graph().node(n).op.name()).collect();
        ops.sort();
        ops.dedup();
        println!("pipeline int8, smooth {smooth:?}: SQNR vs f32 {:.2} dB; ops {ops:?}", a.sqnr_db);
        figures.push(a.sqnr_db);
    }
    std::fs::remove_dir_all(f.parent().unwrap()).ok();
    assert!(figures[1] >= figures[0] + SMOOTH_MARGIN_DB, "{figures:?}");
}

/// `--min-sqnr`: the most sensitive layers (by the study) kept float until the output SQNR on the
/// calibration inputs reaches the target; on the outlier block (no smoothing) that takes fewer
/// than all of them. In the pipeline too.
#[test]
fn sqnr_fallback_reaches_its_target_with_fewer_float_layers() {
    use qforge_passes::quantize::{EvalSet, Study};
    let g = qir("quant/transformer_block_outliers.qir");
    let cfg = QConfig::default();
    let calib = tokens(200, 1);
    let calibration = calibrate_on(&g, &cfg, &calib).unwrap();
    let batches: Vec<Vec<Tensor>> = qforge::data::batches(&calib, 50).unwrap().collect();
    let reference: Vec<Tensor> = batches.iter().map(|b| qforge_ir::interp::run(&g, b).unwrap().remove(0)).collect();
    let eval = Interpreter::default();
    let study = Study {
        graph: &g,
        config: &cfg,
        calibration: &calibration,
        eval: &eval,
        set: EvalSet { batches: &batches, reference: &reference, labels: None },
    };
    let ranked = study.analyze(&mut |_, _| {}).unwrap();
    for l in &ranked {
        println!("{:<28} {:<8} {:>7.2} dB", l.node, l.op, l.sqnr_db);
    }
    let (all, _) = study.evaluate(&cfg).unwrap();
    let (kept, reached) = study.keep_float_until_sqnr(&ranked, MIN_SQNR_TARGET_DB).unwrap();
    println!(
        "all int8 {all:.2} dB; target {MIN_SQNR_TARGET_DB} dB: {} of {} float {kept:?}, {reached:.2} dB",
        kept.len(),
        ranked.len()
    );
    assert!(all < MIN_SQNR_TARGET_DB, "the target must need a fallback ({all:.2} dB all int8)");
    assert!(reached >= MIN_SQNR_TARGET_DB);
    assert!(!kept.is_empty() && kept.len() < ranked.len(), "{kept:?}");
    assert_eq!(kept[..], ranked[..kept.len()].iter().map(|l| l.node.clone()).collect::<Vec<_>>()[..]);

    // the same through the pipeline (Q/DQ graph at opt level 1, on the interpreter)
    let f = npy_file(&calib, "minsqnr");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/quant/transformer_block_outliers.qir");
    let o = PipelineOptions {
        quantize: QuantizeMode::Int8,
        calib: Some(f.clone()),
        min_sqnr: Some(MIN_SQNR_TARGET_DB),
        opt_level: 1,
        engine: qforge::options::Engine::Interp,
        ..PipelineOptions::default()
    };
    let exe = Compiler::new(o).unwrap().compile(qforge::load_model(&path).unwrap()).unwrap();
    std::fs::remove_dir_all(f.parent().unwrap()).ok();
    verify(exe.graph()).unwrap();
    let y = exe.run(std::slice::from_ref(&calib)).unwrap().remove(0);
    let r = qforge_ir::interp::run(&g, std::slice::from_ref(&calib)).unwrap().remove(0);
    let a = agreement(&y, &r, None).unwrap();
    println!("pipeline --min-sqnr {MIN_SQNR_TARGET_DB}: {:.2} dB on the calibration set", a.sqnr_db);
    assert!(a.sqnr_db >= MIN_SQNR_TARGET_DB - 1e-6, "{a}");
}

/// FNV-1a over the bits of `words`: a digest of many parameters for a snapshot line.
fn digest(words: impl Iterator<Item = u32>) -> u64 {
    words.fold(0xcbf2_9ce4_8422_2325u64, |h, w| {
        w.to_le_bytes().iter().fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
    })
}

/// One line per quantized value of `g` (a graph after static quantization, before the
/// optimizer): its producer, type and parameters; a single pair exactly, several (a per-channel
/// weight's, a bias's `sx * sw[c]`) as their count, extremes and a digest of every bit.
fn quant_params(g: &Graph) -> Vec<String> {
    use qforge_ir::QuantParams;
    let mut lines = vec![];
    for id in g.node_ids() {
        let n = g.node(id);
        for (port, ty) in n.outputs.iter().enumerate() {
            let Some(q) = &ty.quant else { continue };
            let p = match q {
                QuantParams::PerTensor { scale, zero_point } => format!("scale {scale:e} zero point {zero_point}"),
                QuantParams::PerAxis { axis, scales, zero_points }
                | QuantParams::PerGroup { axis, scales, zero_points, .. } => {
                    let (lo, hi) = scales.iter().fold((f32::INFINITY, 0f32), |(a, b), &s| (a.min(s), b.max(s)));
                    let bits = scales.iter().map(|s| s.to_bits()).chain(zero_points.iter().map(|&z| z as u32));
                    format!("axis {axis}: {} scales in [{lo:e}, {hi:e}], digest {:016x}", scales.len(), digest(bits))
                }
            };
            lines.push(format!("{}:{port} {} {p}", n.name, ty.dtype));
        }
    }
    lines.sort();
    lines
}

/// The quantization parameters the pipeline chooses for ResNet-18 and MobileNetV2 (static INT8
/// with the defaults, the 8-image calibration set) and the layers `--min-sqnr 30` keeps float on
/// MobileNetV2, as a snapshot: how calibration, bias correction and the fallback are computed
/// may change (their speed), what they choose may not. Bias codes are not in it (bias correction
/// moves them; `bias_correction_matches_the_measured_output_error` bounds that). The calibration
/// run is the float JIT program on the native kernels (Winograd for 3x3 convolutions), whose sums
/// the snapshot's scales follow to the last digit.
#[test]
fn corpus_quantization_parameters_are_stable() {
    use qforge::compiler::Stage;
    let mut text = vec![];
    for model in ["resnet18.onnx", "mobilenet_v2.onnx"] {
        let o = opts(QuantizeMode::Int8, "imagenet_like_calib_x.npy", CalibMethod::MinMax, false);
        let c = Compiler::new(o).unwrap();
        let st =
            c.run_until(qforge::load_model(&corpus_file(model)).unwrap(), Stage::Quantize, &mut |_, _| {}).unwrap();
        let lines = quant_params(&st.graph);
        text.push(format!("# {model}: {} quantized values", lines.len()));
        text.extend(lines);
    }
    let o = PipelineOptions {
        min_sqnr: Some(30.0),
        ..opts(QuantizeMode::Int8, "imagenet_like_calib_x.npy", CalibMethod::MinMax, false)
    };
    let c = Compiler::new(o).unwrap();
    let st = c
        .run_until(qforge::load_model(&corpus_file("mobilenet_v2.onnx")).unwrap(), Stage::FloatFallback, &mut |_, _| {})
        .unwrap();
    let quantized = |cfg: &QConfig| -> Vec<String> {
        let ap = activation_plan(&st.graph, cfg).unwrap();
        ap.ops.iter().map(|(id, _, _)| st.graph.node(*id).name.clone()).collect()
    };
    let all = quantized(c.qconfig());
    let kept = quantized(&st.qconfig);
    let float: Vec<&String> = all.iter().filter(|n| !kept.contains(n)).collect();
    text.push(format!("# mobilenet_v2.onnx --min-sqnr 30: {} of {} layers kept float", float.len(), all.len()));
    text.extend(float.iter().map(|n| n.to_string()));
    insta::with_settings!({ snapshot_path => "../../snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("quantize__corpus_quant_params", text.join("\n"));
    });
}

/// The sensitivity study runs each probe, and each step of the `--min-sqnr` search, from where
/// the quantized graph departs from the float one, on float values from watched runs of the
/// float graph. On the JIT, for every layer of zoo models with channel split, shuffle and
/// concatenation (ShuffleNetV2), squeeze-excitation gates and residual adds (RegNetY), and
/// skip concatenations (UNet), and for the search's answer, its figures must be those of the
/// whole quantized graph, bit for bit.
#[test]
fn probes_from_the_float_prefix_are_the_whole_graphs_figures() {
    use qforge::compiler::Stage;
    use qforge_passes::quantize::{quantizing_only, skipping, EvalSet, Study};
    let zoo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/zoo");
    for (model, images) in
        [("shufflenet_v2", "64x64_96x96"), ("regnet_y_400mf", "64x64_96x96"), ("unet", "64x64_96x64")]
    {
        let o = PipelineOptions {
            quantize: QuantizeMode::Int8,
            calib: Some(zoo.join(format!("images_{images}_calib.npy"))),
            ..PipelineOptions::default()
        };
        let c = Compiler::new(o).unwrap();
        let g = qforge::load_model(&zoo.join(format!("{model}.onnx"))).unwrap();
        let st = c.run_until(g, Stage::Calibrate, &mut |_, _| {}).unwrap();
        let batches = c.calib_batches(&st.graph).unwrap();
        let reference = qforge_passes::evaluator::Evaluator::first_outputs(c.evaluator(), &st.graph, &batches).unwrap();
        let study = Study {
            graph: &st.graph,
            config: c.qconfig(),
            calibration: st.calibration.as_ref().unwrap(),
            eval: c.evaluator(),
            set: EvalSet { batches: &batches, reference: &reference, labels: None },
        };
        let ranked = study.analyze(&mut |_, _| {}).unwrap();
        let mut probes = vec![];
        for l in &ranked {
            let (whole, _) = study.evaluate(&quantizing_only(c.qconfig(), std::slice::from_ref(&l.node))).unwrap();
            probes.push((l.node.clone(), l.sqnr_db, whole));
        }
        let differ: Vec<_> = probes.iter().filter(|(_, a, b)| a.to_bits() != b.to_bits()).collect();
        assert!(differ.is_empty(), "{model}: {} of {} probes differ: {differ:?}", differ.len(), probes.len());
        // a target 3 dB above the all-int8 figure: the search stops inside the ranking
        let (all, _) = study.evaluate(c.qconfig()).unwrap();
        let target = all + 3.0;
        let (kept, reached) = study.keep_float_until_sqnr(&ranked, target).unwrap();
        let (whole, _) = study.evaluate(&skipping(c.qconfig(), &kept)).unwrap();
        println!(
            "{model}: {} probes the same ({:.2} to {:.2} dB); all int8 {all:.2} dB, {} of {} float for {target:.2} dB: {reached:.4} dB",
            probes.len(),
            ranked[0].sqnr_db,
            ranked[ranked.len() - 1].sqnr_db,
            kept.len(),
            ranked.len()
        );
        assert!(all.is_finite() && !kept.is_empty() && kept.len() < ranked.len(), "{model}: {kept:?}");
        assert_eq!(reached.to_bits(), whole.to_bits(), "{model}: {reached} against {whole}");
    }
}

/// Bias correction from the input means calibration observes against the reference, each layer
/// run with its weight error on the calibration set and its output averaged (one more pass), on
/// ResNet-18 and MobileNetV2: the two are the same sum, exact in f64 against the JIT's f32 outputs
/// averaged, so they agree to a few f32 roundings of the layer's outputs (measured: 4.6e-7 and
/// 3.8e-7 of each layer's largest); the corrected f32 biases differ by as little, and their i32
/// codes (the bias at scale `sx * sw`, what the compiled model stores) by at most one step (none
/// differs on these two models).
#[test]
fn bias_correction_matches_the_measured_output_error() {
    use qforge::compiler::Stage;
    use qforge_passes::quantize::{bias_sites, channel_means, corrections_from_means, error_graph, BiasCorrection};
    use std::collections::BTreeMap;
    for model in ["resnet18.onnx", "mobilenet_v2.onnx"] {
        let o = opts(QuantizeMode::Int8, "imagenet_like_calib_x.npy", CalibMethod::MinMax, false);
        let c = Compiler::new(o).unwrap();
        let st =
            c.run_until(qforge::load_model(&corpus_file(model)).unwrap(), Stage::Calibrate, &mut |_, _| {}).unwrap();
        let cal = st.calibration.as_ref().unwrap();
        let cx = c.pass_context();
        let sites = bias_sites(&st.graph, &st.qconfig, cal, &cx).unwrap();
        let ours = corrections_from_means(&st.graph, &sites, &cal.input_means).unwrap().expect("calibration's means");
        let (eg, values) = error_graph(&st.graph, &sites).unwrap();
        let batches = c.calib_batches(&st.graph).unwrap();
        let means = channel_means(&eg, c.evaluator(), &mut batches.into_iter(), 1, &values, &mut |_, _| {}).unwrap();
        let mut worst = 0f64;
        for (s, (v, _)) in sites.iter().zip(&values) {
            let name = &st.graph.node(s.node).name;
            let measured = &means[&(eg.node(v.node).name.clone(), v.port)];
            let scale = measured.iter().fold(0f64, |a, x| a.max(x.abs())).max(1e-30);
            for (a, b) in ours[name].iter().zip(measured) {
                worst = worst.max((a - b).abs() / scale);
            }
        }
        // the corrected biases and their i32 codes, both ways
        let quantized = |corrections: BTreeMap<String, Vec<f64>>| -> (Graph, BTreeMap<String, Vec<f64>>) {
            let mut g = st.graph.clone();
            BiasCorrection { corrections }.run(&mut g, &cx).unwrap();
            let corrected = g.clone();
            QuantizeStatic { config: st.qconfig.clone(), calibration: cal.clone() }.run(&mut g, &cx).unwrap();
            let codes = g
                .node_ids()
                .filter_map(|id| match &g.node(id).op {
                    Op::Const(t) if t.dtype() == DType::I32 && g.node(id).name.ends_with("_quantized") => {
                        Some((g.node(id).name.clone(), t.to_f64_vec()))
                    }
                    _ => None,
                })
                .collect();
            (corrected, codes)
        };
        let measured: BTreeMap<String, Vec<f64>> = sites
            .iter()
            .zip(&values)
            .map(|(s, (v, _))| {
                (st.graph.node(s.node).name.clone(), means[&(eg.node(v.node).name.clone(), v.port)].clone())
            })
            .collect();
        let ((ga, ca), (gb, cb)) = (quantized(ours), quantized(measured));
        let (mut ulps, mut biases, mut steps, mut codes) = (0u32, 0usize, 0f64, 0usize);
        for s in &sites {
            let (a, b) = (bias_of(&ga, s.node), bias_of(&gb, s.node));
            for (x, y) in a.iter().zip(&b) {
                ulps = ulps.max(x.to_bits().abs_diff(y.to_bits()));
                biases += usize::from(x != y);
            }
        }
        assert_eq!(ca.keys().collect::<Vec<_>>(), cb.keys().collect::<Vec<_>>());
        for (k, a) in &ca {
            for (x, y) in a.iter().zip(&cb[k]) {
                steps = steps.max((x - y).abs());
                codes += usize::from(x != y);
            }
        }
        println!(
            "{model}: {} layers; corrections differ by at most {worst:.2e} of the layer's largest; {biases} f32 biases differ (at most {ulps} ulp), {codes} i32 codes (at most {steps} step)",
            sites.len()
        );
        assert!(worst <= 1e-4, "{model}: corrections differ by {worst:e} of the largest");
        assert!(steps <= 1.0, "{model}: i32 bias codes differ by {steps} steps");
    }
}

/// The f32 bias a conv's, gemm's or matmul's correction went to.
fn bias_of(g: &Graph, id: qforge_ir::NodeId) -> Vec<f32> {
    use qforge_passes::quantize::bias_correction::{bias_slot, BiasSlot};
    let (user, slot) = match bias_slot(g, id).expect("a bias slot").0 {
        BiasSlot::Own { .. } => (id, 2),
        BiasSlot::Add { add, slot } => (add, slot),
    };
    let v = g.node(user).inputs()[slot].expect("a bias");
    match &g.node(v.node).op {
        Op::Const(t) => t.as_f32().unwrap().to_vec(),
        op => panic!("a bias from {}", op.name()),
    }
}
