//! `qforge._qforge`: the native half of the `qforge` Python package.
//!
//! A thin layer over the `qforge` crate: every method calls the library the way the matching
//! CLI command does (no second implementation of any stage, no subprocess). The pure-Python
//! half (`qforge/__init__.py`) defines the exception classes, the result dataclasses and the
//! documentation.
//!
//! Invariants: no Rust panic crosses into Python (every entry point runs under
//! [`errors::guard`], which turns a panic into `qforge.InternalError`); the GIL is released
//! while the library works (pipeline stages, code generation, runs, benches); calibration data
//! is streamed from Python one batch at a time ([`calib`]).

mod calib;
mod convert;
mod errors;
mod model;
mod options;

use pyo3::prelude::*;

#[pymodule]
fn _qforge(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(model::load, m)?)?;
    m.add_class::<model::Model>()?;
    m.add_class::<model::Staged>()?;
    m.add_class::<model::Executable>()?;
    m.add("__version__", model::qforge_version())?;
    m.add("DEFAULT_MAX_TENSOR_BYTES", qforge::options::DEFAULT_MAX_TENSOR_BYTES)?;
    Ok(())
}
