//! Post-training quantization.
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
//! * [`policy`]: the per-layer policy of `--qconfig` (default, per op type, per attention role,
//!   per node name); [`attention`] finds the scores and context matmuls of attention.
//! * [`smooth`]: SmoothQuant's scale migration from layer-norm outputs into the weights of the
//!   matmuls they feed (before calibration, with per-channel maxima from [`calibrate::channel_absmax`]).
//! * [`bias_correction`]: the mean output error that rounding each layer's weights causes,
//!   `ΔW E[x]` from its input's means observed during calibration
//!   ([`calibrate::calibrate_with_means`]; or measured on the calibration set,
//!   [`calibrate::channel_means`]), subtracted from its bias (after calibration, before Q/DQ
//!   insertion).
//! * [`adaround`]: learned weight rounding (AdaRound), fitted layer by layer on the calibration
//!   set to reconstruct each layer's float output, for the layers whose rule says
//!   `rounding = "adaround"` (after calibration, before bias correction).
//! * [`sensitivity`]: one layer quantized at a time, ranked by output SQNR; the most sensitive
//!   layers kept in float until an accuracy budget or an output SQNR target is met. Each
//!   evaluation runs only from where the quantized graph departs from the float one
//!   ([`float_prefix`]).
//!
//! The pipeline (in `qforge`): canonicalize, [`FoldBatchNorm`], [`SmoothQuant`] (when asked),
//! calibrate (int8), [`Study::keep_float_until_sqnr`] (with `--min-sqnr`), [`BiasCorrection`]
//! (unless turned off), then
//! [`QuantizeStatic`] or [`QuantizeDynamic`]; the optimizer then lowers the Q/DQ sandwiches to
//! integer kernels. ReLU/clip after a quantized op: see [`static_quant`] (removed when the
//! quantize after it clamps the same, as ORT does).

pub mod adaround;
pub mod attention;
pub mod bias_correction;
pub mod calibrate;
pub mod dynamic;
pub mod float_prefix;
pub mod histogram;
pub mod observer;
pub mod plan;
pub mod policy;
pub mod scheme;
pub mod sensitivity;
pub mod smooth;
pub mod static_quant;

pub use crate::batchnorm::FoldBatchNorm;
pub use adaround::{
    adaround_sites, fit_layer, site_inputs, AdaRound, AdaRoundError, AdaRoundOptions, AdaRoundSite, LayerFit,
};
pub use attention::attention_roles;
pub use bias_correction::{
    bias_sites, corrections_from_means, error_graph, input_stats, BiasCorrection, BiasSite, BiasSlot, InputReduce,
    InputStat,
};
pub use calibrate::{
    assess, calibrate, calibrate_with_means, channel_absmax, channel_means, CalibError, CalibWarning, Calibration,
    EvalError, Evaluator, Interpreter, RangeAssessment, Target,
};
pub use dynamic::QuantizeDynamic;
pub use histogram::{EntropyObserver, Histogram, MseObserver, PercentileObserver, RangeQuality};
pub use observer::{
    CalibMethod, Ema, MinMax, ObserveError, Observer, ObserverConfig, ParseCalibMethodError, PerChannelMinMax,
};
pub use plan::{plan, Decision, NodePlan, WeightInput};
pub use policy::{NodeRule, NodeSettings, Pattern, PolicyError, Precision, QConfig, Rounding, Rule, WeightGranularity};
pub use scheme::{Granularity, GroupParams, Params, QType, QuantResult, Scheme, SchemeError};
pub use sensitivity::{quantizing_only, skipping, EvalSet, LayerSensitivity, Study, StudyError};
pub use smooth::{smooth_sites, ChannelStats, NormStats, SmoothError, SmoothQuant, SmoothSite};
pub use static_quant::{activation_plan, ActivationPlan, QuantizeStatic};
