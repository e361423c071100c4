//! `finetune` on the digits CNN, as the README's "Fine-tuning" table runs it: QAT with
//! label-free distillation from the FP32 model on the 200 calibration images, evaluated on the
//! 597 test images. INT8 and W4A8 reach their targets (99.50% and 99.0%; post-training gives
//! 99.33% and 96.31%); the compiled integer graph (optimizer and JIT) agrees with the converted
//! Q/DQ graph on the interpreter; the exported QDQ ONNX gives the same top-1 in ONNX Runtime
//! (within 0.1 points).

use qforge::finetune::{finetune, FinetuneOptions};
use qforge::{Compiler, PipelineOptions};
use qforge_ir::Tensor;
use qforge_passes::train::{Objective, TrainConfig};
use qforge_tests::{corpus_file, onnxruntime_available, ort_first_output, require};

fn top1(y: &Tensor) -> f64 {
    let labels = qforge::data::labels(&qforge::npy::read(&corpus_file("digits_test_y.npy")).unwrap()).unwrap();
    qforge::data::top1(&qforge::data::argmax_rows(y).unwrap(), &labels).unwrap()
}

/// Fine-tunes digits with `bits`-bit weights (the command's defaults but 10 epochs, as the
/// README runs it); returns the converted Q/DQ graph.
fn tuned(bits: u32) -> qforge_ir::Graph {
    let model = qforge::load_model(&corpus_file("digits_cnn.onnx")).unwrap();
    let x = qforge::npy::read(&corpus_file("digits_calib_x.npy")).unwrap();
    let o = FinetuneOptions {
        weight_bits: bits,
        calib_method: None,
        objective: Objective::seed(),
        train: TrainConfig { epochs: 10, ..TrainConfig::default() },
        eval: qforge::evaluator::EngineEvaluator::new(&PipelineOptions::default()),
    };
    finetune(&model, &x, None, &o, &mut |_, _| {}, &mut |_| {}).unwrap().graph
}

#[test]
fn digits_int8_and_w4a8_reach_their_targets_on_both_engines() {
    let x = qforge::npy::read(&corpus_file("digits_test_x.npy")).unwrap();
    // the targets as the README rounds them: 99.50% is 594 of 597 images (99.497%), 99.0% is 592
    for (bits, target) in [(8, 594.0 / 597.0), (4, 592.0 / 597.0)] {
        let g = tuned(bits);
        let interp = qforge_ir::interp::run(&g, std::slice::from_ref(&x)).unwrap().remove(0);
        let exe = Compiler::new(PipelineOptions::default()).unwrap().compile(g).unwrap();
        let jit = exe.run(std::slice::from_ref(&x)).unwrap().remove(0);
        let (a, b) = (top1(&interp), top1(&jit));
        println!(
            "digits W{bits}A8 fine-tuned: top-1 {:.2}% (Q/DQ graph, interpreter), {:.2}% (compiled, JIT)",
            a * 100.0,
            b * 100.0
        );
        assert!(a >= target - 1e-9, "W{bits}A8: top-1 {a} below {target}");
        assert!((a - b).abs() <= 0.002, "W{bits}A8: the compiled graph's top-1 {b} differs from the Q/DQ graph's {a}");
    }
}

#[test]
#[ignore = "needs onnxruntime (pip install onnxruntime)"]
fn exported_finetuned_models_run_in_onnxruntime() {
    require(onnxruntime_available(), "onnxruntime");
    let dir = std::env::temp_dir().join(format!("qforge-finetune-ort-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let x = qforge::npy::read(&corpus_file("digits_test_x.npy")).unwrap();
    for bits in [8, 4] {
        let g = tuned(bits);
        let ours = top1(
            &Compiler::new(PipelineOptions::default())
                .unwrap()
                .compile(g.clone())
                .unwrap()
                .run(std::slice::from_ref(&x))
                .unwrap()
                .remove(0),
        );
        let c = Compiler::new(PipelineOptions { opt_level: 1, ..PipelineOptions::default() }).unwrap();
        let opts = qforge::onnx::export::ExportOptions { int4_per_axis: bits == 4 };
        let bytes = qforge::onnx::export::export_qdq_with(&c.optimize(g).unwrap(), opts).unwrap();
        let path = dir.join(format!("w{bits}.onnx"));
        std::fs::write(&path, bytes).unwrap();
        let ort = top1(&ort_first_output(&path, &corpus_file("digits_test_x.npy")).unwrap());
        println!(
            "digits W{bits}A8 fine-tuned: qforge {:.2}%, ONNX Runtime on the export {:.2}%",
            ours * 100.0,
            ort * 100.0
        );
        assert!((ours - ort).abs() <= 0.001 + 1e-9, "W{bits}A8: ORT {ort}, qforge {ours}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
