//! # qforge: the compiler driver
//!
//! ONNX import and export ([`onnx`]), `.npy`/`.npz` I/O ([`npy`], [`calib_set`]), the
//! [`Compiler`] that resolves the options once and owns the one list of pipeline stages
//! ([`compiler`], carried out by [`stages`]), compiled artifacts ([`artifact`]), what the commands
//! measure and report ([`bench`], [`sensitivity`], [`report`], [`summary`], [`demo`]), and the
//! `qforge` command line ([`commands`]).
//!
//! ## Invariants
//! * This is the only crate that touches files, external formats and the command line.
//! * Only [`commands`] (and the binary's `main`) print; every other module returns data, logs
//!   through `tracing`, and reports progress through the [`Compiler`]'s progress hook.
//! * The pipeline is assembled in one place, [`Compiler::stages`]; whoever needs part of it runs
//!   a prefix of that list ([`Compiler::run_until`]), never a copy.
//! * Errors reaching the user are one line with context; nothing here panics on user input.

pub mod artifact;
pub mod bench;
pub mod calib_set;
pub mod commands;
pub mod compiler;
pub mod data;
pub mod demo;
pub mod evaluator;
pub mod files;
pub mod finetune;
pub mod graph_dot;
pub mod npy;
pub mod onnx;
pub mod options;
pub mod pipeline;
pub mod progress;
pub mod qconfig;
pub mod quantizable;
pub mod report;
pub mod sensitivity;
pub mod stages;
pub mod stats;
pub mod summary;
pub mod tune;

pub use compiler::{load_model, Compiler, Executable, Stage, State};
pub use options::PipelineOptions;
