//! Quantization-aware fine-tuning on the tiny CNN fixture (`tests/fixtures/train/tiny_cnn.qir`):
//! the QAT graph at its initial values is the static quantizer's graph; conversion gives the QAT
//! graph's outputs bit for bit (at the initial and at changed values); snapshots of the QAT graph
//! and of its conversion.

use qforge_ir::{interp, text, Graph, Tensor};
use qforge_passes::evaluator::Interpreter;
use qforge_passes::quantize::{calibrate, QConfig, QuantizeStatic};
use qforge_passes::train::{self, QatModel};
use qforge_passes::{Pass, PassContext};

fn fixture() -> Graph {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/train/tiny_cnn.qir");
    text::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `n` samples of `[1, 4, 4]` in [0, 1] from a fixed linear congruential sequence.
fn samples(n: usize, seed: u64) -> Tensor {
    let mut s = seed;
    let v: Vec<f32> = (0..n * 16)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    Tensor::from_f32(vec![n, 1, 4, 4], v)
}

fn prepared(qconfig: &QConfig) -> (Graph, QatModel, qforge_passes::quantize::Calibration) {
    let folded = train::fold_for_training(&fixture()).unwrap();
    let targets = train::calibration_targets(&folded, qconfig).unwrap();
    let batches = vec![vec![samples(8, 1)], vec![samples(8, 2)]];
    let cal =
        calibrate(&folded, &Interpreter::default(), &mut batches.into_iter(), 2, &targets, &mut |_, _| {}).unwrap();
    let qat = QatModel::prepare(&folded, qconfig, &cal).unwrap();
    (folded, qat, cal)
}

fn run_qat(qat: &QatModel, values: &[Tensor], x: &Tensor) -> Vec<f32> {
    let mut inputs = vec![x.clone()];
    inputs.extend(values.iter().cloned());
    interp::run(&qat.graph, &inputs).unwrap()[0].to_f32_vec()
}

fn qconfig() -> QConfig {
    QConfig { default: QConfig::builtin(), ..QConfig::default() }
}

#[test]
fn qat_graph_at_its_initial_values_is_the_static_quantizers_graph() {
    let q = qconfig();
    let (folded, qat, cal) = prepared(&q);
    let mut ptq = folded.clone();
    QuantizeStatic { config: q, calibration: cal }.run(&mut ptq, &PassContext::default()).unwrap();
    let x = samples(32, 7);
    let want = interp::run(&ptq, std::slice::from_ref(&x)).unwrap()[0].to_f32_vec();
    let got = run_qat(&qat, &qat.values(), &x);
    assert_eq!(got, want);
    // and the conversion at the initial values is that graph too
    let conv = train::convert(&qat, &qat.values()).unwrap();
    assert_eq!(text::print_default(&conv).unwrap(), text::print_default(&ptq).unwrap());
}

#[test]
fn conversion_gives_the_qat_outputs_bit_for_bit() {
    let (_, qat, _) = prepared(&qconfig());
    // changed values: weights and biases moved, scales off their min-max values, a zero point moved
    let mut values = qat.values();
    for (i, p) in qat.params.iter().enumerate() {
        let v: Vec<f32> = values[i]
            .to_f32_vec()
            .iter()
            .enumerate()
            .map(|(k, &x)| match p.kind {
                train::ParamKind::Weight | train::ParamKind::Bias => x + 0.01 * ((k % 5) as f32 - 2.0),
                train::ParamKind::WeightScale { .. } | train::ParamKind::ActScale { .. } => x * 0.93,
                train::ParamKind::ActZeroPoint { .. } => x + 1.0,
            })
            .collect();
        values[i] = Tensor::from_f32(values[i].shape().to_vec(), v);
    }
    let conv = train::convert(&qat, &values).unwrap();
    for seed in [3, 4] {
        let x = samples(64, seed);
        let want = run_qat(&qat, &values, &x);
        let got = interp::run(&conv, std::slice::from_ref(&x)).unwrap()[0].to_f32_vec();
        assert_eq!(got, want, "seed {seed}");
    }
}

#[test]
fn snapshots_of_the_qat_graph_and_its_conversion() {
    let (_, qat, _) = prepared(&qconfig());
    let names: Vec<String> = qat.params.iter().map(|p| format!("{} {:?}", p.name, p.value.shape())).collect();
    let conv = train::convert(&qat, &qat.values()).unwrap();
    let snap = format!(
        "# parameters\n{}\n\n# QAT graph\n{}\n# converted\n{}",
        names.join("\n"),
        text::print_default(&qat.graph).unwrap(),
        text::print_default(&conv).unwrap()
    );
    insta::with_settings!({ snapshot_path => "../../snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("train__tiny_cnn_qat", snap);
    });
}

#[test]
fn four_bit_weights_stay_on_the_four_bit_grid() {
    let mut q = qconfig();
    q.default.weights = Some(qforge_passes::quantize::scheme::Scheme::symmetric(qforge_passes::quantize::QType::I4));
    let (_, qat, _) = prepared(&q);
    let conv = train::convert(&qat, &qat.values()).unwrap();
    let x = samples(16, 9);
    assert_eq!(interp::run(&conv, std::slice::from_ref(&x)).unwrap()[0].to_f32_vec(), run_qat(&qat, &qat.values(), &x));
    // every quantized weight constant holds codes in [-8, 7]
    let mut seen = 0;
    for id in conv.node_ids() {
        if let qforge_ir::Op::Const(t) = &conv.node(id).op {
            if conv.value_type(qforge_ir::Value::new(id, 0)).quant.is_some() && t.dtype() == qforge_ir::DType::I8 {
                seen += 1;
                assert!(t.to_f32_vec().iter().all(|&c| (-8.0..=7.0).contains(&c)), "{}", conv.node(id).name);
            }
        }
    }
    assert_eq!(seen, 2);
}

/// The seed's exercise 6.3: a gradient of 1e-8 underflows to 0 when the backward pass stores
/// FP16 without loss scaling, survives with a loss scale of 2^16 (unscaled in f32), and survives
/// in BF16 without one.
#[test]
fn a_tiny_gradient_underflows_in_fp16_and_survives_scaling_or_bf16() {
    use qforge_ir::{BinaryOp, DType, Op, Shape, TensorType};
    let mut g = Graph::new("tiny_grad");
    let w = g.add_input("w", TensorType::new(DType::F32, Shape::fixed(&[1])));
    let s = g.add_input("loss_scale", TensorType::new(DType::F32, Shape::fixed(&[])));
    // 1e-8 as 1e-4 * 1e-4: each factor is an FP16 normal number, their product is not
    let c = g.add_const("c", Tensor::from_f32(vec![1], vec![1e-4]));
    let y = g.add_node(Op::Binary(BinaryOp::Mul), vec![Some(w), Some(c)], None, "y0").unwrap();
    let y = g.add_node(Op::Binary(BinaryOp::Mul), vec![Some(y), Some(c)], None, "y").unwrap();
    let l = g.add_node(Op::ReduceSum { axes: vec![0], keepdims: false }, vec![Some(y)], None, "loss").unwrap();
    let sl = g.add_node(Op::Binary(BinaryOp::Mul), vec![Some(l), Some(s)], None, "scaled").unwrap();
    g.add_output("scaled", sl);
    let d = qforge_passes::autodiff::differentiate(&g, 0, &["w"]).unwrap();
    let grad = |storage: Option<DType>, scale: f32| -> f32 {
        let gr = match storage {
            Some(st) => train::round_to_storage(&d.graph, st, &["loss_scale"]).unwrap(),
            None => d.graph.clone(),
        };
        let out = interp::run(&gr, &[Tensor::from_f32(vec![1], vec![1.0]), Tensor::scalar_f32(scale)]).unwrap();
        let mut v = out[d.grads[0]].to_f32_vec();
        let scaler = train::GradScaler { scale, ..train::GradScaler::default() };
        scaler.unscale(&mut [&mut v]);
        v[0]
    };
    assert!((grad(None, 1.0) - 1e-8).abs() < 1e-14);
    assert_eq!(grad(Some(DType::F16), 1.0), 0.0, "fp16 without scaling");
    // the loss scale itself stays f32 (as under autocast), but the loss here is one FP16 element,
    // so its gradient is the scale itself: 2^16 is beyond FP16's largest finite value (65504), the
    // scaler's first step overflows and halves it (PyTorch's GradScaler does the same for an FP16
    // tensor whose gradient is the scale); 2^15 is the scale that step leaves
    let mut first = [grad(Some(DType::F16), 65536.0)];
    assert!(first[0].is_nan() || first[0].is_infinite(), "{first:?}");
    let mut scaler = train::GradScaler::default();
    scaler.update(!first.iter_mut().all(|x| x.is_finite()));
    assert_eq!(scaler.scale, 32768.0);
    let scaled = grad(Some(DType::F16), scaler.scale);
    assert!((scaled - 1e-8).abs() < 2e-11, "fp16 with a 2^15 loss scale: {scaled}");
    let bf = grad(Some(DType::BF16), 1.0);
    assert!((bf - 1e-8).abs() < 1e-10, "bf16 without scaling: {bf}");
}

/// Two trainings with one seed give the same values, every loss finite.
#[test]
fn training_is_deterministic_for_a_seed() {
    let (_, qat, _) = prepared(&qconfig());
    let data = train::TrainData { inputs: vec![samples(40, 11)], labels: None, teacher: None };
    let cfg = train::TrainConfig { epochs: 4, batch: 8, lr: 1e-2, ..train::TrainConfig::default() };
    let run =
        || train::train(&qat, &train::Objective::seed(), &data, &Interpreter::default(), &cfg, &mut |_| {}).unwrap();
    let (a, b) = (run(), run());
    assert_eq!(
        a.values.iter().map(|t| t.to_f32_vec()).collect::<Vec<_>>(),
        b.values.iter().map(|t| t.to_f32_vec()).collect::<Vec<_>>()
    );
    assert_eq!(a.steps.len(), 20);
    assert!(a.steps.iter().all(|s| s.loss.is_finite() && !s.skipped));
}

/// With Adam, a learned scale is updated through its logarithm: Adam's first step is the
/// learning rate times `m / (sqrt(v) + eps)`, at most 1 in size, so every scale is multiplied by
/// at most `exp(±10·lr)` (the scales' rate is ten times the weights'), whatever its size; none
/// turns negative or reaches the clamp, as a step of `±lr` on the scale itself would take a
/// scale smaller than the learning rate.
#[test]
fn adam_moves_learned_scales_by_a_factor() {
    use train::ParamKind;
    let (_, qat, _) = prepared(&qconfig());
    let data = train::TrainData { inputs: vec![samples(40, 11)], labels: None, teacher: None };
    let lr = 0.05;
    let cfg = train::TrainConfig { epochs: 1, batch: 40, lr, observer_steps: Some(0), ..train::TrainConfig::default() };
    let t = train::train(&qat, &train::Objective::seed(), &data, &Interpreter::default(), &cfg, &mut |_| {}).unwrap();
    let step = f64::from(lr * train::ADAM_SCALE_LR_FACTOR);
    let (mut moved, mut small) = (0, 0);
    for (p, v) in qat.params.iter().zip(&t.values) {
        if !matches!(p.kind, ParamKind::WeightScale { .. } | ParamKind::ActScale { .. }) {
            continue;
        }
        for (s0, s1) in p.value.to_f32_vec().iter().zip(v.to_f32_vec()) {
            let r = (f64::from(s1) / f64::from(*s0)).ln();
            assert!(r.abs() <= step + 1e-5, "{}: {s0} -> {s1}, ln ratio {r}, at most ±{step}", p.name);
            moved += usize::from(r != 0.0);
            small += usize::from(*s0 < lr);
        }
    }
    assert!(moved > 0 && small > 0, "{moved} scales moved, {small} below the learning rate");
}
