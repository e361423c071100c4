//! Shared helpers of qforge's integration tests.
