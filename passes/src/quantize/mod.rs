//! Post-training quantization (issue 4).
//!
//! * [`scheme`]: the formulas from a calibrated range to a scale and zero point (symmetric and
//!   asymmetric, per tensor, per channel and per group, 8 and 4 bits), and 4-bit packing.
//! * [`observer`] and [`histogram`]: streaming calibration observers (min-max, EMA, percentile,
//!   entropy, MSE) and the per-channel min-max for weights.
//! * [`mod@plan`]: which nodes static quantization quantizes and why the others are left alone.
//!
//! Still to come: calibration driving the graph through an evaluator, the static and dynamic
//! quantization passes (Q/DQ insertion, int32 biases), the qconfig policy, sensitivity analysis.

pub mod histogram;
pub mod observer;
pub mod plan;
pub mod scheme;

pub use histogram::{EntropyObserver, Histogram, MseObserver, PercentileObserver};
pub use observer::{CalibMethod, Ema, MinMax, ObserveError, Observer, ObserverConfig, PerChannelMinMax};
pub use plan::{plan, Decision, NodePlan, WeightInput};
pub use scheme::{Granularity, GroupParams, Params, QType, QuantResult, Scheme, SchemeError};
