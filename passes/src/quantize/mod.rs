//! Post-training quantization (issue 4).
//!
//! * [`scheme`]: the formulas from a calibrated range to a scale and zero point (symmetric and
//!   asymmetric, per tensor, per channel and per group, 8 and 4 bits), and 4-bit packing.
//! * [`observer`] and [`histogram`]: streaming calibration observers (min-max, EMA, percentile,
//!   entropy, MSE) and the per-channel min-max for weights.
//! * [`mod@plan`]: which nodes static quantization quantizes and why the others are left alone.
//! * batch norm is folded into convolutions before calibration ([`crate::batchnorm`], as ORT's pre-processing does).
//! * [`mod@calibrate`]: the [`Evaluator`] trait and calibration (one streaming observer per
//!   quantized activation, batches from an iterator, progress through a callback).
//! * [`static_quant`]: static quantization, Q/DQ insertion in ONNX Runtime's QDQ form.
//! * [`dynamic`]: dynamic quantization (DynamicQuantizeLinear + MatMulInteger/ConvInteger).
//! * [`policy`]: the per-layer policy of `--qconfig` (default, per op type, per node name).
//! * [`sensitivity`]: one layer quantized at a time, ranked by output SQNR.
//!
//! The pipeline (in `qforge`): canonicalize, [`FoldBatchNorm`], calibrate (int8), then
//! [`QuantizeStatic`] or [`QuantizeDynamic`]; the optimizer then lowers the Q/DQ sandwiches to
//! integer kernels. ReLU/clip after a quantized op: see [`static_quant`] (removed when the
//! quantize after it clamps the same, as ORT does).

pub mod calibrate;
pub mod dynamic;
pub mod histogram;
pub mod observer;
pub mod plan;
pub mod policy;
pub mod scheme;
pub mod sensitivity;
pub mod static_quant;

pub use crate::batchnorm::FoldBatchNorm;
pub use calibrate::{calibrate, CalibError, Calibration, Evaluator, Interpreter, Target};
pub use dynamic::QuantizeDynamic;
pub use histogram::{EntropyObserver, Histogram, MseObserver, PercentileObserver};
pub use observer::{CalibMethod, Ema, MinMax, ObserveError, Observer, ObserverConfig, PerChannelMinMax};
pub use plan::{plan, Decision, NodePlan, WeightInput};
pub use policy::{NodeRule, NodeSettings, Pattern, Precision, QConfig, Rule, WeightGranularity};
pub use scheme::{Granularity, GroupParams, Params, QType, QuantResult, Scheme, SchemeError};
pub use sensitivity::{EvalSet, LayerSensitivity, Study};
pub use static_quant::{activation_plan, ActivationPlan, QuantizeStatic};
