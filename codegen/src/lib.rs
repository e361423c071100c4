//! # qforge-codegen: the Cranelift JIT
//!
//! Compiles an optimized, planned [`qforge_ir::Graph`] into machine code: fused integer and float
//! kernels described as data (main op plus epilogue list), the executable and its buffer arena.
//!
//! ## Invariants
//! * Depends on `qforge-ir` only; reads the plan that `qforge-passes` writes into the graph.
//! * Follows [`qforge_ir::numerics`] exactly: the JIT agrees with the reference interpreter bit for
//!   bit on integer graphs.
//!
//! This crate is at its beginning: the kernels arrive with the JIT issue. Until then every engine
//! request is served by the reference interpreter in `qforge-ir`.
