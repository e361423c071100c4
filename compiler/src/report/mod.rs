//! `qforge report`: one self-contained HTML file about a compiled model, in two halves:
//! [`measure`] compiles and measures ([`Report::build`] returns data) and [`render`] writes the
//! HTML from it.
//!
//! The file has no external resources and no script: inline CSS, inline SVG charts, and tables.
//! Its sections, each an element with a fixed `id`:
//!
//! * `summary`: inputs, outputs, the pipeline options, op counts (fp32 graph beside the compiled
//!   one), parameters and weight bytes ([`crate::summary::Summary`]);
//! * `passes`: what each pass of the pipeline did (counters and notes);
//! * `nodes`: each compiled node's op, output dtype, shape and quantization parameters, the
//!   constants it reads and what it absorbed;
//! * `fusion`: the fusion report ([`qforge_passes::report::fusion_report`]);
//! * `sensitivity`: per-layer INT8 sensitivity (each quantizable layer quantized alone, the rest
//!   float; the machinery of `qforge sensitivity`) as a horizontal bar chart of output SQNR, on at
//!   most `--sensitivity-samples` evaluation samples;
//! * `latency`: per-kernel time of the JIT program at batch 1 (`Program::run` with per-step
//!   times), and the end-to-end median of the fp32 and the compiled model;
//! * `size`: weight bytes of the fp32 and the compiled graph, and the JIT's arena;
//! * `accuracy`: fp32 against compiled on the evaluation set: top-1 with `--labels`, and always
//!   the output's SQNR, cosine similarity, largest difference and argmax agreement;
//! * `graph`: the compiled IR as an inline SVG picture ([`crate::graph_dot`]) when Graphviz is
//!   installed.
//!
//! "fp32" is the same model through the same pipeline without quantization or reduced precision.
//! Without `--quantize` and `--precision`, the report quantizes to static INT8 (as `qforge
//! quantize` does): the comparison is its point.
//!
//! Everything is deterministic except measured times, which are all inside `<!--timing-->` …
//! `<!--/timing-->` comments (tests strip those and compare the rest). All text from the model
//! (names, ops, notes) is HTML-escaped by the templates.

pub mod measure;
pub mod render;

pub use measure::{Accuracy, Latency, NodeRow, Report, ReportArgs, StepTime};
pub use render::{sensitivity_svg, SECTIONS};

impl Report {
    /// The report's HTML text.
    pub fn to_html(&self) -> String {
        render::to_html(self)
    }
}
