//! Every calibration observer, per channel and per tensor, on the corpus MobileNetV2: the output
//! SQNR of its static INT8 Q/DQ graph against the stored fp32 output, beside ONNX Runtime's static
//! QDQ figures (the corpus README). Ten calibrations and runs of the model, so it is a benchmark
//! (`cargo bench -p qforge-tests --bench observer_sweep`), not part of the test suite; the suite
//! checks the MSE per-channel case (`mobilenet_v2_int8_sqnr_at_least_ort`).

use qforge::options::{CalibMethod, PipelineOptions, QuantizeMode};
use qforge::Compiler;
use qforge_tests::{agreement, corpus_file};

/// ONNX Runtime's static QDQ (MinMax) SQNR against fp32 on the same inputs (corpus README).
const ORT_PER_CHANNEL_DB: f64 = 13.68;
const ORT_PER_TENSOR_DB: f64 = 13.19;

fn main() -> anyhow::Result<()> {
    let model = qforge::load_model(&corpus_file("mobilenet_v2.onnx"))?;
    let x = qforge::npy::read(&corpus_file("imagenet_like_test_x.npy"))?;
    let fp32 = qforge::npy::read(&corpus_file("mobilenet_v2_test_out_fp32.npy"))?;
    println!("{:<11} {:>13} {:>12}", "observer", "per-channel", "per-tensor");
    let mut best = f64::NEG_INFINITY;
    for m in [CalibMethod::MinMax, CalibMethod::Ema, CalibMethod::Percentile, CalibMethod::Entropy, CalibMethod::Mse] {
        let mut row = vec![];
        for per_tensor in [false, true] {
            let o = PipelineOptions {
                quantize: QuantizeMode::Int8,
                calib: Some(corpus_file("imagenet_like_calib_x.npy")),
                calib_method: Some(m),
                per_tensor,
                opt_level: 1,
                ..PipelineOptions::default()
            };
            let exe = Compiler::new(o)?.compile(model.clone())?;
            let y = exe.run(std::slice::from_ref(&x))?.remove(0);
            let db = agreement(&y, &fp32, None)?.sqnr_db;
            best = best.max(db);
            row.push(db);
        }
        println!("{:<11} {:>10.2} dB {:>9.2} dB", m.name(), row[0], row[1]);
    }
    println!("ONNX Runtime {ORT_PER_CHANNEL_DB:>7.2} dB {ORT_PER_TENSOR_DB:>9.2} dB; best qforge {best:.2} dB");
    Ok(())
}
