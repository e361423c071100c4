//! # qforge
