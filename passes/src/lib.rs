//! # qforge-passes: graph-to-graph passes
//!
//! Everything that rewrites a [`qforge_ir::Graph`]: canonicalization, calibration observers,
//! quantization, precision assignment and hardware profiles, the egg optimizer, layout and memory
//! planning, sensitivity analysis.
//!
//! ## Invariants
//! * A pass is pure: graph in, graph out, plus a report. It never prints, never touches files and
//!   never calls `qforge-codegen`; where it must run the graph (calibration, sensitivity) it asks for
//!   an evaluator through a trait defined here, which `qforge` implements.
//! * Every pass leaves a graph that passes [`qforge_ir::verify::verify`], and running it twice
//!   changes nothing the second time.
//!
//! This crate is at its beginning: the pass trait and pipeline arrive with the optimizer issue.
