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
