//! # qforge-passes: graph-to-graph passes
//!
//! Everything that rewrites a [`qforge_ir::Graph`]: canonicalization, calibration observers,
//! quantization, precision assignment and hardware profiles, the egg optimizer, layout and memory
//! planning, sensitivity analysis.
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
//! Passes so far: [`canonicalize::Canonicalize`]; quantization ([`quantize::FoldBatchNorm`],
//! [`quantize::QuantizeStatic`] after calibration through [`quantize::Evaluator`],
//! [`quantize::QuantizeDynamic`]). Precision and the egg optimizer arrive with their issues.

pub mod batchnorm;
pub mod canonicalize;
pub mod egraph;
pub mod evaluator;
pub mod glob;
pub mod pass;
pub mod precision;
pub mod quantize;
pub mod report;

pub use pass::{Pass, PassContext, PassError, PassReport, Pipeline};
