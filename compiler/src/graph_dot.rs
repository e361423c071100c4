//! `qforge graph`: a picture of the IR (Graphviz DOT, or SVG through Graphviz's `dot`).
//!
//! One box per node, in schedule order: the op (with a fused kernel's epilogue), the node's name,
//! its output type, the constants it reads (folded into its label: weights are never boxes of
//! their own), and, for nodes that absorbed others (fusion, folding: [`qforge_ir::Node::from`]),
//! what they absorbed. The fill colour is the output dtype, explained by a legend of the dtypes
//! present; edges carry the value's type (quantization parameters shortened). Graph inputs are
//! ellipses, graph outputs plain-text sinks.
//!
//! The output is deterministic: nodes are numbered in schedule order and nothing depends on
//! hashing or time. For `.svg`, the DOT text is piped through `dot -Tsvg` (the program named by
//! `QFORGE_DOT` when set, else `dot` on the `PATH`); when it is missing the DOT text is written
//! beside the requested file and the command fails with one line saying so.

use crate::compiler::Compiler;
use anyhow::{bail, Result};
use qforge_ir::{DType, Graph, Node, NodeId, Op, QuantParams, TensorType};
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Most `from` entries listed in a node's label; the rest are counted.
const MAX_FROM: usize = 8;

/// The fill colour of a value of `dtype` (pastels, so the black text stays readable).
pub fn dtype_color(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "#cfe2f3",
        DType::F16 => "#d9ead3",
        DType::BF16 => "#a8d5a2",
        DType::I8 => "#f4cccc",
        DType::U8 => "#fce5cd",
        DType::I32 => "#d9d2e9",
        DType::I64 => "#ead1dc",
        DType::Bool => "#e0e0e0",
        DType::F64 => "#b4cfe8",
        DType::I16 => "#f9d9d9",
        DType::U16 => "#fdf0e0",
        DType::U32 => "#e6e1f0",
        DType::U64 => "#f2e2ea",
    }
}

/// Quantization parameters in a few characters: `<0.0145:0>` or `<axis=0 x16>`.
pub fn short_quant(q: &QuantParams) -> String {
    match q {
        QuantParams::PerTensor { scale, zero_point } => format!("<{scale:.4e}:{zero_point}>"),
        QuantParams::PerAxis { axis, scales, .. } => format!("<axis={axis} x{}>", scales.len()),
        QuantParams::PerGroup { axis, group_size, scales, .. } => {
            format!("<axis={axis} group={group_size} x{}>", scales.len())
        }
    }
}

/// A value type with its quantization parameters shortened: `u8<1.4526e-2:0>[N,16,8,8]`.
pub fn short_type(t: &TensorType) -> String {
    let q = t.quant.as_ref().map(short_quant).unwrap_or_default();
    format!("{}{q}{}", t.dtype, t.shape)
}

/// The op's name, with the epilogue of a fused integer kernel: `qconv [bias, requant, clamp(0,255)]`.
pub fn op_label(op: &Op) -> String {
    let ep = match op {
        Op::QConv { epilogue, .. } | Op::QMatMul { epilogue } | Op::QGemm { epilogue, .. } => epilogue,
        _ => return op.name().to_string(),
    };
    format!("{} {}", op.name(), qforge_ir::text::epilogue_text(ep))
}

/// Escapes text for a double-quoted DOT string (where `\n` is a line break).
fn dot_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' | '\r' => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

/// Escapes text for a DOT HTML-like label (the report's HTML escaper).
fn dot_html(s: &str) -> String {
    crate::report::render::escape(s)
}

/// The lines of a node's label (unescaped).
fn node_lines(g: &Graph, n: &Node) -> Vec<String> {
    let mut lines = vec![op_label(&n.op), n.name.clone()];
    match n.outputs.as_slice() {
        [t] => lines.push(short_type(t)),
        ts => lines.extend(ts.iter().enumerate().map(|(i, t)| format!("#{i}: {}", short_type(t)))),
    }
    for (slot, v) in n.inputs().iter().enumerate() {
        let Some(v) = v else { continue };
        if let Op::Const(t) = &g.node(v.node).op {
            let ty = g.value_type(*v);
            let what = if t.len() == 1 { "scalar" } else { "const" };
            lines.push(format!("in{slot} {what} {}", short_type(ty)));
        }
    }
    if !n.from.is_empty() {
        lines.push(format!("absorbed {}:", n.from.len()));
        lines.extend(n.from.iter().take(MAX_FROM).cloned());
        if n.from.len() > MAX_FROM {
            lines.push(format!("... and {} more", n.from.len() - MAX_FROM));
        }
    }
    lines
}

/// The DOT text of `g`, titled `title`. Constants are folded into their consumers' labels
/// (drawn only when they are a graph output themselves).
pub fn to_dot(g: &Graph, title: &str) -> Result<String> {
    let order = g.schedule()?;
    let outputs: BTreeSet<NodeId> = g.outputs().iter().map(|o| o.value.node).collect();
    // graph inputs first (the schedule leaves them out), then the schedule without constants
    let mut drawn: Vec<NodeId> = g.inputs().to_vec();
    drawn.extend(order.iter().copied().filter(|&id| !matches!(g.node(id).op, Op::Const(_)) || outputs.contains(&id)));
    let ids: HashMap<_, usize> = drawn.iter().enumerate().map(|(k, &id)| (id, k)).collect();
    let mut dtypes = BTreeSet::new();
    let mut s = String::new();
    let _ = writeln!(s, "digraph \"{}\" {{", dot_str(&g.name));
    let _ = writeln!(s, "  graph [rankdir=TB, fontname=\"Helvetica\", label=\"{}\", labelloc=t];", dot_str(title));
    let _ = writeln!(s, "  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\", fontsize=10];");
    let _ = writeln!(s, "  edge [fontname=\"Helvetica\", fontsize=8, color=\"#555555\"];");
    for &id in &drawn {
        let n = g.node(id);
        let dtype = n.outputs.first().map_or(DType::F32, |t| t.dtype);
        dtypes.insert(dtype.name());
        let label: Vec<String> = node_lines(g, n).iter().map(|l| dot_str(l)).collect();
        let shape = match n.op {
            Op::Input => ", shape=ellipse",
            _ if !n.from.is_empty() => ", penwidth=2",
            _ => "",
        };
        let _ = writeln!(
            s,
            "  n{} [label=\"{}\", fillcolor=\"{}\"{shape}];",
            ids[&id],
            label.join("\\n"),
            dtype_color(dtype)
        );
    }
    for &id in &drawn {
        for v in g.node(id).inputs().iter().flatten() {
            let Some(&from) = ids.get(&v.node) else { continue };
            let port = if g.node(v.node).outputs.len() > 1 { format!("#{} ", v.port) } else { String::new() };
            let label = format!("{port}{}", short_type(g.value_type(*v)));
            let _ = writeln!(s, "  n{from} -> n{} [label=\"{}\"];", ids[&id], dot_str(&label));
        }
    }
    for (k, o) in g.outputs().iter().enumerate() {
        let Some(&from) = ids.get(&o.value.node) else { continue };
        let _ = writeln!(s, "  out{k} [label=\"{}\", shape=plaintext, style=\"\"];", dot_str(&o.name));
        let _ = writeln!(s, "  n{from} -> out{k} [label=\"{}\"];", dot_str(&short_type(g.value_type(o.value))));
    }
    // the legend: the dtypes present, in DType order
    let _ = writeln!(s, "  subgraph cluster_legend {{");
    let _ = writeln!(s, "    label=\"legend\"; fontsize=10; color=\"#999999\";");
    let mut rows = String::new();
    for d in DType::ALL.iter().filter(|d| dtypes.contains(d.name())) {
        let _ = write!(rows, "<tr><td bgcolor=\"{}\">{}</td></tr>", dtype_color(*d), dot_html(d.name()));
    }
    rows.push_str("<tr><td>bold border: fused node</td></tr>");
    let _ = writeln!(
        s,
        "    legend [shape=plaintext, style=\"\", fontsize=9, label=<<table border=\"0\" cellborder=\"1\" \
         cellspacing=\"0\" cellpadding=\"3\"><tr><td><b>dtype</b></td></tr>{rows}</table>>];"
    );
    let _ = writeln!(s, "  }}");
    s.push_str("}\n");
    Ok(s)
}

/// What `-o` asks for, from its extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Dot,
    Svg,
}

impl Format {
    /// `.dot`/`.gv` or `.svg`; anything else is an error.
    pub fn of(path: &Path) -> Result<Format> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        match ext.as_str() {
            "dot" | "gv" => Ok(Format::Dot),
            "svg" => Ok(Format::Svg),
            _ => bail!("`{}`: unknown picture format (expected .svg, .dot or .gv)", path.display()),
        }
    }
}

/// The Graphviz program: `QFORGE_DOT` when set, else `dot`.
pub fn dot_program() -> PathBuf {
    std::env::var_os("QFORGE_DOT").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("dot"))
}

/// Why [`render_svg`] produced nothing.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("graphviz `{0}` is not installed")]
    NotInstalled(String),
    #[error("graphviz `{program}` failed: {msg}")]
    Failed { program: String, msg: String },
}

/// Runs `dot -Tsvg` on `dot` and returns the SVG text.
pub fn render_svg(dot: &str) -> std::result::Result<String, RenderError> {
    let prog = dot_program();
    let name = prog.display().to_string();
    let failed = |msg: String| RenderError::Failed { program: name.clone(), msg };
    let mut child = match Command::new(&prog)
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(RenderError::NotInstalled(name)),
        Err(e) => return Err(failed(e.to_string())),
    };
    let mut stdin = child.stdin.take().ok_or_else(|| failed("no stdin".into()))?;
    let text = dot.to_string();
    // write on a thread so a large SVG on stdout cannot deadlock against a full stdin pipe
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output().map_err(|e| failed(e.to_string()))?;
    let written = writer.join().map_err(|_| failed("the writer thread panicked".into()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(failed(err.lines().next().unwrap_or("no message").to_string()));
    }
    written.map_err(|e| failed(e.to_string()))?;
    String::from_utf8(out.stdout).map_err(|_| failed("the SVG is not UTF-8".into()))
}

/// The graph after the pipeline, or right after the first run of the pass named `after`.
pub fn graph_after(compiler: &Compiler, model: &Path, after: Option<&str>) -> Result<(Graph, String)> {
    let mut ran: Vec<String> = vec![];
    let mut snapshot: Option<Graph> = None;
    let mut hook = |name: &str, g: &Graph| {
        ran.push(name.to_string());
        if snapshot.is_none() && after == Some(name) {
            snapshot = Some(g.clone());
        }
    };
    let g = compiler.run(compiler.load(model)?, &mut hook)?.graph;
    let name = g.name.clone();
    match after {
        None => Ok((g, format!("{name}: after the pipeline"))),
        Some(pass) => match snapshot {
            Some(s) => Ok((s, format!("{name}: after pass {pass}"))),
            None if ran.is_empty() => bail!("--after {pass}: no pass ran (the pipeline is empty at this --opt-level)"),
            None => bail!("--after {pass}: no such pass ran (the passes: {})", ran.join(", ")),
        },
    }
}
