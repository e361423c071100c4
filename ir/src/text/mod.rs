//! The text form of the IR: a deterministic printer and a parser that reads it back.
//!
//! ```
//! use qforge_ir::text::{parse, print, print_default, ConstMode};
//!
//! let text = r#"graph tiny(%x: f32[N,4]) -> (y: f32[N,2], "scale/out": f32[]) {
//!   %0 = const f32[2,4] = [0.5, -0.5, 1.0, 0.0, 0.25, 0.25, -1.0, 2.0]  # "fc.weight"
//!   %1 = gemm %x, %0, _ {alpha=1.0, beta=1.0, trans_a=false, trans_b=true} : f32[N,2]  # "/fc/Gemm"
//!   %2 = quantize %1 : u8<0.003921569:0>[N,2]  # "/q/QuantizeLinear"
//!   %3 = dequantize %2 : f32[N,2]  # "/dq/DequantizeLinear" from ["/relu/Relu"]
//!   %4, %5, %6 = dynamic_quantize %3 : u8[N,2], f32[], u8[]  # "dq"
//!   return %3, %5
//! }
//! "#;
//! let g = parse(text)?;
//! assert_eq!(print(&g, ConstMode::Full)?, text);
//! assert_eq!(print_default(&g)?, text); // every constant is small enough to stay inline
//! # Ok::<(), qforge_ir::IrError>(())
//! ```
//!
//! * Nodes print in [`Graph::schedule`] order, results renumbered `%0, %1, ...`; graph inputs
//!   are named in the signature. `print(parse(t)) == t` for printed text.
//! * Names that are not plain identifiers (`[A-Za-z_][A-Za-z0-9_.]*`) are JSON-style quoted
//!   strings; node names are always quoted. Symbolic dims are `[A-Za-z_][A-Za-z0-9_*]*` or quoted.
//! * Floats print with `{:?}` (shortest round trip, `inf`, `-inf`, `NaN`), so they parse back
//!   exactly; f16/bf16 constants print their f32 value.
//! * Each op prints all its attributes, in the order of its fields; ops without attributes print
//!   no braces. Absent optional operands are `_`. A size read from the op's inputs' dims
//!   ([`crate::DimExpr`]) is `d(K,I,A,...)`: `K` times dim `A` of input `I` (times ...), e.g.
//!   `range %ids {start=0, limit=d(1,0,1), delta=1, dtype=i64} : i64[S]`.
//! * Constants are inline (`const f32[3] = [...]`) or, in summary mode, `const TYPE #DIGEST
//!   [MIN, MAX]`, which does not parse back.
//! * `//` comment lines are allowed before `graph` only (and are not preserved).
//! * The parser checks each node as it reads it (errors carry a line and column), then runs the
//!   verifier on the whole graph.

mod lexer;
mod ops;
pub use ops::epilogue as epilogue_text;
mod parse;
mod print;
#[cfg(test)]
mod tests;

use crate::{Graph, IrError};
use std::borrow::Cow;

/// How constants are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConstMode {
    /// Every constant in full, inline: the text is the whole graph and parses back.
    Full,
    /// Constants of at most `inline_limit` elements inline, larger ones as type, digest and range
    /// (snapshots, dumps). Text with summarized constants does not parse back.
    Summary { inline_limit: usize },
}

/// Prints the graph. Errors (never panics) on a graph that cannot be scheduled or names values
/// that do not exist; a graph that merely fails verification still prints.
pub fn print(g: &Graph, mode: ConstMode) -> Result<String, IrError> {
    print::print(g, mode)
}

/// Prints the graph with constants of up to 16 elements inline and larger ones summarized: the
/// form of snapshots and dumps.
pub fn print_default(g: &Graph) -> Result<String, IrError> {
    print(g, ConstMode::Summary { inline_limit: 16 })
}

/// Parses the text form and verifies the graph. Errors are [`IrError::Parse`] with a line and
/// column, or the verifier's error; never a panic.
pub fn parse(text: &str) -> Result<Graph, IrError> {
    parse::parse(text)
}

/// Whether `s` may be written without quotes as a graph, input or output name.
fn is_plain_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// Whether `s` may be written without quotes as a symbolic dimension.
fn is_plain_dim(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '*')
}

/// `s` as a JSON-style double-quoted string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A name as written: plain when it can be, quoted otherwise.
fn name(s: &str) -> Cow<'_, str> {
    if is_plain_name(s) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(quote(s))
    }
}
