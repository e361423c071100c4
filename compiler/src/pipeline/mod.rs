//! `qforge pipeline`: several models as one deployment, each stage with its precision policy and
//! latency budget, connected as a graph (DESIGN.md: "pipeline ... drives this whole path from
//! above"), as the seed's `benchmark_deployment` and its exercise 6.8 (perception INT8 in 15 ms,
//! planning FP16 in 10 ms, control FP32 in 5 ms, pipelined, with the cascaded error) describe.
//!
//! * [`config`]: the `PIPELINE.toml` file.
//! * [`graph`]: the stages' graph, checked (sources, cycles, shapes and dtypes) and ordered.
//! * [`runner`]: compiling every stage once and running frames sequentially or pipelined.
//! * [`cascade`]: one stage at its policy at a time, compared at every downstream output.
//! * [`report`]: the figures against the budgets, and the HTML page.

pub mod cascade;
pub mod config;
pub mod graph;
pub mod report;
pub mod runner;

pub use cascade::{cascade, Cascade, CascadeRow};
pub use config::{Config, PipelineError};
pub use report::RunReport;
pub use runner::{Keep, Pipeline, Run};
