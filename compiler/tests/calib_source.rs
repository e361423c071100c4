//! Calibration from a library user's own batches ([`CalibSource`]): the same quantized model as
//! from the file, one pass over the data (calibration, which also takes the input means bias
//! correction needs), and each batch observed before the next is asked for (the pass is
//! streamed, never collected first).

mod common;
use anyhow::Result;
use qforge::calib_set::CalibSource;
use qforge::options::{PipelineOptions, QuantizeMode};
use qforge::Compiler;
use qforge_ir::{Graph, Tensor};
use std::sync::{Arc, Mutex};

/// What happened, in order: `Pass` when a pass starts, `Made(i)` when the source produced batch
/// `i`, `Observed(k)` when the calibration or bias correction stage reported `k` batches done.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Event {
    Pass,
    Made(usize),
    Observed(usize),
}

/// Batches sliced from one tensor on demand, logging each.
struct Sliced {
    x: Tensor,
    log: Arc<Mutex<Vec<Event>>>,
}

impl CalibSource for Sliced {
    fn describe(&self) -> String {
        "sliced batches".into()
    }

    fn stream<'a>(&'a self, _g: &Graph, batch: usize) -> Result<Box<dyn Iterator<Item = Result<Vec<Tensor>>> + 'a>> {
        self.log.lock().expect("log").push(Event::Pass);
        let n = self.x.shape()[0];
        Ok(Box::new((0..n.div_ceil(batch)).map(move |i| {
            self.log.lock().expect("log").push(Event::Made(i));
            Ok(vec![qforge::data::slice_batch(&self.x, i * batch, ((i + 1) * batch).min(n))?])
        })))
    }

    fn batch_count(&self, _g: &Graph, batch: usize) -> Option<usize> {
        Some(self.x.shape()[0].div_ceil(batch))
    }

    fn check(&self, _g: &Graph) -> Result<()> {
        Ok(())
    }
}

#[test]
fn streamed_batches_quantize_as_the_file_does() -> Result<()> {
    let model = common::asset("digits_cnn.onnx");
    let calib = common::asset("digits_calib_x.npy");
    let batch = 20;
    let from_file = PipelineOptions {
        quantize: QuantizeMode::Int8,
        calib: Some(calib.clone()),
        calib_batch: batch,
        ..Default::default()
    };
    let want = Compiler::new(from_file)?.optimize(qforge::load_model(&model)?)?;

    let log = Arc::new(Mutex::new(vec![]));
    let src = Arc::new(Sliced { x: qforge::npy::read(&calib)?, log: log.clone() });
    let progress_log = log.clone();
    let opts = PipelineOptions { quantize: QuantizeMode::Int8, calib_batch: batch, ..Default::default() };
    let compiler = Compiler::new(opts)?.with_calibration(src).with_progress(Arc::new(move |what, _| {
        let log = progress_log.clone();
        let streaming = what == "calibrating" || what == "bias correction";
        Box::new(move |done, _| {
            if streaming {
                log.lock().expect("log").push(Event::Observed(done));
            }
        })
    }));
    let got = compiler.optimize(qforge::load_model(&model)?)?;
    assert_eq!(qforge_ir::text::print_default(&got)?, qforge_ir::text::print_default(&want)?);

    let log = log.lock().expect("log").clone();
    let batches = 100usize.div_ceil(batch);
    let mut expected = vec![];
    expected.push(Event::Pass);
    for i in 0..batches {
        expected.extend([Event::Made(i), Event::Observed(i + 1)]);
    }
    assert_eq!(log, expected, "one pass, each batch observed before the next is made");
    Ok(())
}
