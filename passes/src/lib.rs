//! # qforge-passes: graph-to-graph passes
//!
//! Everything that rewrites a [`qforge_ir::Graph`]: canonicalization, batch-norm folding,
//! calibration observers, quantization (static, dynamic, SmoothQuant), sensitivity analysis,
//! precision assignment and hardware profiles, and the egg optimizer. Layout (NHWC) and memory
//! planning are code generation's (`qforge-codegen`), not graph passes.
//!
//! ## Invariants
//! * One signature: [`Pass::run`] takes a graph and a [`PassContext`] and returns a
//!   [`PassReport`]. A pass is pure: it never prints, never touches files and never calls
//!   `qforge-codegen`; where it must run the graph (calibration, sensitivity) it asks for an
//!   evaluator through a trait defined here, which `qforge` implements.
//! * Every pass leaves a graph that passes [`qforge_ir::verify::verify`] (the [`Pipeline`] checks
//!   after each pass when asked, always in tests), and running it twice changes nothing the second
//!   time.
//!
//! * Callers: the `qforge` crate's `Compiler` (which decides which passes run, in what order) and
//!   tests. Nothing here reads files, the command line or ONNX.
//!
//! The passes: [`canonicalize::Canonicalize`]; [`conv_transpose::ConvTransposeAsConv`] (a
//! transposed convolution as a convolution and a depth-to-space); [`batchnorm::FoldBatchNorm`]; quantization
//! ([`quantize::SmoothQuant`], [`quantize::QuantizeStatic`] after calibration through an
//! [`evaluator::Evaluator`], [`quantize::QuantizeDynamic`]); precision
//! ([`precision::AssignPrecision`], [`precision::AlignChannels`]); the optimizer
//! ([`egraph::Optimize`]); structured channel pruning ([`prune::PruneChannels`], and
//! [`prune::prune_channels`] for the trainer: L2-norm output channels physically removed, through
//! residual adds, concatenations and depthwise convs). Not a pass: [`autodiff::differentiate`]
//! extends a graph with the gradient of a scalar output (reverse mode, as IR nodes), for training
//! (`finetune`) and AdaRound.

pub mod autodiff;
pub mod batchnorm;
pub mod bisect;
pub mod canonicalize;
pub mod conv_transpose;
pub mod egraph;
pub mod evaluator;
pub mod glob;
pub mod pass;
pub mod precision;
pub mod prune;
pub mod quantize;
pub mod report;
mod rng;
pub mod train;

pub use pass::{Pass, PassContext, PassError, PassReport, Pipeline};
