//! AdaRound (learned weight rounding, `--rounding adaround` or a qconfig rule's `rounding`) on
//! the digits CNN, against round-to-nearest on the same calibration: every layer's
//! reconstruction error on the calibration set goes down, the output SQNR against FP32 and the
//! top-1 on the 597 test images do not get worse, with 8-bit and 4-bit per-channel weights; the
//! pass is idempotent and a `[[node]]` rule selects single layers.
//!
//! One helper, [`digits`], compiles the model under a qconfig text; the cases are data.

use qforge::compiler::Stage;
use qforge::options::{CalibMethod, QuantizeMode, Switch};
use qforge::{Compiler, PipelineOptions};
use qforge_passes::PassReport;
use qforge_tests::{agreement, corpus_file};

/// What one compile gave: the AdaRound stage's report (if it ran), SQNR of the test logits
/// against FP32 (dB) and top-1 on the test images.
struct Outcome {
    report: Option<PassReport>,
    sqnr_db: f64,
    top1: f64,
}

/// A compiler for static INT8 of digits_cnn under the qconfig `text` (written to a temporary
/// file, removed when the compiler is built), calibrated on the corpus calibration set, with
/// `o`'s other options.
fn compiler(tag: &str, text: &str, o: PipelineOptions) -> Compiler {
    let dir = std::env::temp_dir().join(format!("qforge-adaround-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("qconfig.toml");
    std::fs::write(&cfg, text).unwrap();
    let o = PipelineOptions {
        quantize: QuantizeMode::Int8,
        calib: Some(corpus_file("digits_calib_x.npy")),
        qconfig: Some(cfg),
        ..o
    };
    let c = Compiler::new(o).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    c
}

/// digits_cnn under the qconfig `text` (MinMax; bias correction off, so that the two roundings
/// are compared alone).
fn digits(tag: &str, text: &str) -> Outcome {
    let o = PipelineOptions {
        calib_method: Some(CalibMethod::MinMax),
        bias_correction: Some(Switch::Off),
        ..PipelineOptions::default()
    };
    let c = compiler(tag, text, o);
    let st = c.run(qforge::load_model(&corpus_file("digits_cnn.onnx")).unwrap(), &mut |_, _| {}).unwrap();
    let report = st.reports.iter().find(|r| r.pass == "adaround").cloned();
    let exe = c.executable(st.graph);
    let x = qforge::npy::read(&corpus_file("digits_test_x.npy")).unwrap();
    let y = exe.run(&[x]).unwrap().remove(0);
    let fp32 = qforge::npy::read(&corpus_file("digits_test_logits_fp32.npy")).unwrap();
    let labels = qforge::data::labels(&qforge::npy::read(&corpus_file("digits_test_y.npy")).unwrap()).unwrap();
    let top1 = qforge::data::top1(&qforge::data::argmax_rows(&y).unwrap(), &labels).unwrap();
    Outcome { report, sqnr_db: agreement(&y, &fp32, None).unwrap().sqnr_db, top1 }
}

/// The reconstruction errors (nearest, learned) from a report line of the pass.
fn errors(line: &str) -> (f64, f64) {
    let tail = line.rsplit("reconstruction error ").next().unwrap();
    let (a, b) = tail.split_once(" -> ").unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

/// Measured with 300 steps of 32 samples per layer (the test's budget; the default is 1,000),
/// 200 calibration images, 597 test images: the printed lines; the README's "AdaRound" table
/// has the figures at the default.
#[test]
fn adaround_beats_nearest_on_digits_at_8_and_4_bits() {
    for bits in [8, 4] {
        let nearest = digits(&format!("nearest{bits}"), &format!("[default]\nbits = {bits}\n"));
        let ada = digits(
            &format!("ada{bits}"),
            &format!("[default]\nbits = {bits}\nrounding = \"adaround\"\n\n[adaround]\niterations = 300\n"),
        );
        assert!(nearest.report.is_none(), "the adaround stage ran without being asked");
        let report = ada.report.expect("an adaround report");
        println!(
            "digits_cnn W{bits}A8 per channel: nearest {:.2} dB, top-1 {:.2}%; adaround {:.2} dB, top-1 {:.2}%\n  {}",
            nearest.sqnr_db,
            nearest.top1 * 100.0,
            ada.sqnr_db,
            ada.top1 * 100.0,
            report.notes.join("\n  ")
        );
        // every conv and the gemm: 4 layers, each fitted to a lower error than nearest's
        assert_eq!(report.notes.len(), 4, "{:?}", report.notes);
        for line in &report.notes {
            let (n, a) = errors(line);
            assert!(a < n, "{line}");
        }
        assert!(
            ada.sqnr_db > nearest.sqnr_db,
            "W{bits}: adaround {:.2} dB, nearest {:.2} dB",
            ada.sqnr_db,
            nearest.sqnr_db
        );
        assert!(ada.top1 >= nearest.top1, "W{bits}: adaround top-1 {}, nearest {}", ada.top1, nearest.top1);
    }
}

/// A `[[node]]` rule rounds one layer adaptively and leaves the others to nearest; running the
/// stage's pass again on its own result changes nothing.
#[test]
fn a_node_rule_selects_layers_and_the_pass_is_idempotent() {
    let text = "[[node]]\nmatch = \"/conv2/*\"\nrounding = \"adaround\"\n\n[adaround]\niterations = 200\n";
    let c = compiler("rule", text, PipelineOptions::default());
    let g = qforge::load_model(&corpus_file("digits_cnn.onnx")).unwrap();
    let st = c.run_until(g, Stage::AdaRound, &mut |_, _| {}).unwrap();
    let report = st.reports.iter().find(|r| r.pass == "adaround").expect("an adaround report");
    assert_eq!(report.notes.len(), 1, "{:?}", report.notes);
    assert!(report.notes[0].starts_with("node `/conv2/Conv`"), "{:?}", report.notes);
    // the pass again, with the same fits, on its own result: no change
    let fits = report.notes.clone();
    let again = qforge_passes::quantize::AdaRound {
        weights: st
            .graph
            .node_ids()
            .filter(|&id| st.graph.node(id).name == "/conv2/Conv")
            .map(|id| {
                let w = st.graph.node(id).inputs()[1].unwrap();
                let qforge_ir::Op::Const(t) = &st.graph.node(w.node).op else { panic!("weight is not a constant") };
                ("/conv2/Conv".to_string(), (t.clone(), fits[0].clone()))
            })
            .collect(),
    };
    let mut g2 = st.graph.clone();
    let r = qforge_passes::Pass::run(&again, &mut g2, &qforge_passes::PassContext::default()).unwrap();
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    let text = |g: &qforge_ir::Graph| qforge_ir::text::print(g, qforge_ir::text::ConstMode::Full).unwrap();
    assert_eq!(text(&g2), text(&st.graph));
}
