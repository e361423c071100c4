//! # qforge: the compiler driver
//!
//! ONNX import ([`onnx`]), `.npy` I/O ([`npy`]), the [`Compiler`] API that strings the stages
//! together, and the `qforge` command line.
//!
//! ## Invariants
//! * This is the only crate that touches files, external formats and the command line.
//! * Errors reaching the user are one line with context; nothing here panics on user input.

pub mod npy;
pub mod onnx;
