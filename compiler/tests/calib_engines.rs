//! Calibration follows the engine: on the JIT the float graph is compiled once with the observed
//! tensors as extra outputs, on the interpreter they are observed node by node. Both must see the
//! same tensors (up to the float summation order of the two engines), and the JIT must see the
//! same ones whether a batch runs whole or in slices of samples.

mod common;
use anyhow::Result;
use qforge::evaluator::EngineEvaluator;
use qforge::options::{Engine, PipelineOptions, QuantizeMode};
use qforge::{Compiler, Stage};
use qforge_passes::quantize::{activation_plan, calibrate, CalibMethod, Calibration};

/// The calibrated ranges of the digits model (min-max, batches of 50) on `eval`.
fn ranges(eval: &EngineEvaluator) -> Result<Calibration> {
    let opts = PipelineOptions {
        quantize: QuantizeMode::Int8,
        calib: Some(common::asset("digits_calib_x.npy")),
        calib_method: Some(CalibMethod::MinMax),
        engine: Engine::Interp,
        ..Default::default()
    };
    let compiler = Compiler::new(opts)?;
    // the graph calibration sees: after canonicalization and batch-norm folding
    let st =
        compiler.run_until(compiler.load(&common::asset("digits_cnn.onnx"))?, Stage::FoldBatchNorm, &mut |_, _| {})?;
    let targets = activation_plan(&st.graph, &st.qconfig)?.targets();
    let batches = compiler.calib_batches(&st.graph)?;
    let total = batches.len();
    Ok(calibrate(&st.graph, eval, &mut batches.into_iter(), total, &targets, &mut |_, _| {})?)
}

fn engine(engine: Engine) -> EngineEvaluator {
    EngineEvaluator::new(&PipelineOptions { engine, ..Default::default() })
}

#[test]
fn the_jit_observes_what_the_interpreter_observes() -> Result<()> {
    let interp = ranges(&engine(Engine::Interp))?;
    let jit = ranges(&engine(Engine::Jit))?;
    assert_eq!((jit.batches, jit.samples), (interp.batches, interp.samples));
    // the input and the six activations the integer kernels read (the logits stay f32)
    assert!(interp.ranges.len() >= 7, "{} ranges", interp.ranges.len());
    assert_eq!(jit.ranges.keys().collect::<Vec<_>>(), interp.ranges.keys().collect::<Vec<_>>());
    for (key, &(lo, hi)) in &interp.ranges {
        let (jlo, jhi) = jit.ranges[key];
        // the engines sum the products of a dot product in different orders: a few units in the
        // last place of f32 (2^-23 relative) per accumulation; 1e-5 of the range is far above that
        // and far below one quantization step (1/255 of the range)
        let tol = 1e-5 * (hi - lo).abs().max(1e-6);
        assert!(
            (jlo - lo).abs() <= tol && (jhi - hi).abs() <= tol,
            "{key:?}: jit [{jlo}, {jhi}] vs interp [{lo}, {hi}]"
        );
    }
    Ok(())
}

#[test]
fn slicing_a_batch_changes_nothing_the_observers_see() -> Result<()> {
    let whole = ranges(&engine(Engine::Jit))?;
    // a budget below one sample's observed tensors: every sample runs alone
    let sliced = ranges(&engine(Engine::Jit).with_watch_bytes(1))?;
    assert_eq!((sliced.batches, sliced.samples), (whole.batches, whole.samples));
    // one thread computes each sample the same way whatever the batch: bit for bit
    assert_eq!(sliced.ranges, whole.ranges);
    Ok(())
}
