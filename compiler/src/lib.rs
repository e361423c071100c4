//! # qforge: the compiler driver
//!
//! ONNX import ([`onnx`]), `.npy` I/O ([`npy`]), the [`Compiler`] API that strings the stages
//! together ([`driver`]), the options every command shares ([`pipeline`]), and the `qforge`
//! command line ([`cli`]).
//!
//! ## Invariants
//! * This is the only crate that touches files, external formats and the command line.
//! * Errors reaching the user are one line with context; nothing here panics on user input.
//! * Options whose stage has not landed are rejected by name ([`PipelineOptions::check_supported`]),
//!   never silently ignored.

pub mod artifact;
pub mod bench;
pub mod calib_set;
pub mod calibrate;
pub mod cli;
pub mod data;
pub mod demo;
pub mod driver;
pub mod graph_dot;
pub mod npy;
pub mod onnx;
pub mod pipeline;
pub mod progress;
pub mod qconfig;
pub mod report_html;
pub mod summary;

pub use driver::{load_model, Compiler, Executable};
pub use pipeline::PipelineOptions;
