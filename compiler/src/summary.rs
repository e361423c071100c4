//! What `qforge inspect` reports about a graph: inputs, outputs, op counts, parameters, nodes.

use qforge_ir::{Dim, Graph, Op, TensorType};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// A value's name and type, as `inspect --json` prints it.
#[derive(Debug, Serialize, PartialEq)]
pub struct ValueInfo {
    pub name: String,
    pub dtype: String,
    /// Fixed dims as numbers, symbolic ones (the batch `N`) as strings.
    pub shape: Vec<serde_json::Value>,
}

/// One node, as `inspect --json` prints it.
#[derive(Debug, Serialize, PartialEq)]
pub struct NodeInfo {
    pub name: String,
    pub op: String,
    pub dtype: String,
    pub quant: Option<String>,
    pub from: Vec<String>,
}

/// The graph summary; serializes to DESIGN.md's `inspect --json` keys.
#[derive(Debug, Serialize, PartialEq)]
pub struct Summary {
    pub name: String,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    pub ops: BTreeMap<String, usize>,
    /// Elements in all constants (weights, biases, quantized weights).
    pub params: usize,
    /// Bytes of all constants as stored.
    pub weight_bytes: usize,
    pub nodes: Vec<NodeInfo>,
}

fn value_info(name: &str, t: &TensorType) -> ValueInfo {
    ValueInfo {
        name: name.to_string(),
        dtype: t.dtype.to_string(),
        shape: t
            .shape
            .0
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => serde_json::Value::from(*n),
                Dim::Sym(s) => serde_json::Value::from(s.as_str()),
            })
            .collect(),
    }
}

impl Summary {
    /// Summarizes `g`, nodes in schedule order (constants counted in `params`, not listed).
    pub fn of(g: &Graph) -> qforge_ir::Result<Summary> {
        let mut ops = BTreeMap::new();
        let (mut params, mut weight_bytes) = (0, 0);
        let mut nodes = vec![];
        for id in g.schedule()? {
            let n = g.node(id);
            if let Op::Const(t) = &n.op {
                params += t.len();
                weight_bytes += t.len() * t.dtype().size_bytes();
                continue;
            }
            *ops.entry(n.op.name().to_string()).or_insert(0) += 1;
            let ty = &n.outputs[0];
            nodes.push(NodeInfo {
                name: n.name.clone(),
                op: n.op.name().to_string(),
                dtype: ty.dtype.to_string(),
                quant: ty.quant.as_ref().map(|q| q.to_string()),
                from: n.from.clone(),
            });
        }
        Ok(Summary {
            name: g.name.clone(),
            inputs: g.inputs().iter().map(|&i| value_info(&g.node(i).name, &g.node(i).outputs[0])).collect(),
            outputs: g.outputs().iter().map(|o| value_info(&o.name, g.value_type(o.value))).collect(),
            ops,
            params,
            weight_bytes,
            nodes,
        })
    }

    /// The human-readable form.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let sig = |v: &ValueInfo| {
            let dims: Vec<String> =
                v.shape.iter().map(|d| d.as_str().map(str::to_string).unwrap_or_else(|| d.to_string())).collect();
            format!("{}: {}[{}]", v.name, v.dtype, dims.join(","))
        };
        let _ = writeln!(s, "graph    {}", self.name);
        for v in &self.inputs {
            let _ = writeln!(s, "input    {}", sig(v));
        }
        for v in &self.outputs {
            let _ = writeln!(s, "output   {}", sig(v));
        }
        let _ = writeln!(s, "params   {} ({:.1} KiB of weights)", self.params, self.weight_bytes as f64 / 1024.0);
        let _ = writeln!(s, "nodes    {}", self.nodes.len());
        let width = self.ops.keys().map(|k| k.len()).max().unwrap_or(0);
        for (op, n) in &self.ops {
            let _ = writeln!(s, "  {op:<width$}  {n}");
        }
        s
    }
}
