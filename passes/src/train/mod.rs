//! Quantization-aware fine-tuning (`qforge finetune`): repairing a quantized model's accuracy from
//! the ONNX file and calibration data alone.
//!
//! * [`fake_quant`]: the QAT graph, fake quantization at exactly the static quantizer's Q/DQ
//!   sites, weights, biases and scales as graph inputs ([`QatModel`]).
//! * [`convert`]: the trained QAT model back to a float graph with Q/DQ, which the optimizer lowers
//!   to integer kernels and the QDQ exporter writes.
//! * [`objective`]: knowledge distillation from the FP32 model, cross-entropy, their mix, feature
//!   matching, built as IR on the logits.
//! * [`optim`]: SGD with momentum and Adam (PyTorch's formulas), the cosine schedule.
//! * [`scaler`]: dynamic loss scaling (GradScaler's semantics) and the FP16/BF16 rounding of a
//!   training graph.
//! * [`trainer`]: the loop.
//!
//! The flow: [`fold_for_training`], calibrate the folded graph on [`calibration_targets`] (the
//! initial ranges), [`QatModel::prepare`], [`train`], [`convert()`].
//!
//! Invariants: pure (no files, no printing, no `qforge-codegen`: graphs run through an
//! [`crate::evaluator::Evaluator`]); deterministic for a seed on a deterministic evaluator; errors are
//! [`TrainError`] values naming the node or step.

pub mod convert;
pub mod fake_quant;
pub mod objective;
pub mod optim;
pub mod scaler;
pub mod trainer;

pub use convert::{convert, trained_float};
pub use fake_quant::{calibration_targets, fold_for_training, ActSite, Layer, Param, ParamKind, QatModel};
pub use objective::{attach, teacher_graph, LossGraph, Objective};
pub use optim::{CosineSchedule, Optimizer, OptimizerKind};
pub use scaler::{round_to_storage, GradScaler, TrainPrecision};
pub use trainer::{train, StepInfo, TrainConfig, TrainData, Trained, ADAM_SCALE_LR_FACTOR};

use crate::autodiff::AutodiffError;
use crate::evaluator::EvalError;
use crate::quantize::ObserveError;
use qforge_ir::IrError;

/// Why fine-tuning failed. A wrapped error's message is part of this one's (no `source()`), so
/// `{:#}` prints it once.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{context}: {error}")]
    Ir { context: String, error: IrError },
    #[error("{0}")]
    Pass(String),
    #[error("node `{node}`: {what} cannot be fine-tuned")]
    Unsupported { node: String, what: String },
    #[error("{0}")]
    Data(String),
    #[error("differentiating the loss: {0}")]
    Autodiff(Box<AutodiffError>),
    #[error("{}: {error}", match step { Some(s) => format!("training step {s}"), None => "running the FP32 teacher".to_string() })]
    Eval { step: Option<usize>, error: EvalError },
    #[error("observing node `{node}`: {error}")]
    Observe { node: String, error: ObserveError },
}

impl TrainError {
    pub(crate) fn ir(context: &str, error: IrError) -> TrainError {
        TrainError::Ir { context: context.to_string(), error }
    }
}
