//! The printer: nodes in the canonical schedule, results renumbered `%0, %1, ...` in print order.

use super::{name, ops, quote, ConstMode};
use crate::{
    Dim, Graph, IrError, Node, NodeId, Op, QuantParams, SignatureEntry, Tensor, TensorData, TensorType, Value,
};
use std::collections::HashMap;
use std::fmt::Write;

type Result<T> = std::result::Result<T, IrError>;

/// A type as the text form writes it: `TensorType`'s `Display`, except that a symbolic dim that
/// is not a plain symbol (`[A-Za-z_][A-Za-z0-9_*]*`) is written as a quoted string.
pub(super) fn type_str(t: &TensorType) -> String {
    let mut s = String::new();
    write_type(&mut s, t);
    s
}

fn write_type(s: &mut String, t: &TensorType) {
    s.push_str(t.dtype.name());
    match &t.quant {
        None => {}
        Some(QuantParams::PerTensor { scale, zero_point }) => {
            let _ = write!(s, "<{scale:?}:{zero_point}>");
        }
        Some(
            q @ (QuantParams::PerAxis { axis, scales, zero_points }
            | QuantParams::PerGroup { axis, scales, zero_points, .. }),
        ) => {
            match q.group() {
                Some((_, g)) => {
                    let _ = write!(s, "<axis={axis} group={g}:");
                }
                None => {
                    let _ = write!(s, "<axis={axis}:");
                }
            }
            for (i, (sc, z)) in scales.iter().zip(zero_points).enumerate() {
                if i > 0 {
                    s.push(',');
                }
                let _ = write!(s, " {sc:?}:{z}");
            }
            s.push('>');
        }
    }
    s.push('[');
    for (i, d) in t.shape.0.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        match d {
            Dim::Fixed(n) => {
                let _ = write!(s, "{n}");
            }
            Dim::Sym(sym) if super::is_plain_dim(sym) => s.push_str(sym),
            Dim::Sym(sym) => s.push_str(&quote(sym)),
        }
    }
    s.push(']');
}

fn node_at(g: &Graph, id: NodeId) -> Result<&Node> {
    g.petgraph().node_weight(id).ok_or_else(|| IrError::Graph("the graph refers to a removed node".into()))
}

pub(super) fn print(g: &Graph, mode: ConstMode) -> Result<String> {
    let order = g.schedule()?;
    let mut names: HashMap<Value, String> = HashMap::new();
    let mut s = String::new();

    let _ = write!(s, "graph {}(", name(&g.name));
    for (i, entry) in g.signature().into_iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let id = match entry {
            SignatureEntry::Input(id) => id,
            SignatureEntry::Specialized(sp) => {
                // `%name: TYPE = [values]`: an input the graph was compiled for one value of.
                let t = &sp.value;
                let _ = write!(s, "%{}: ", name(&sp.name));
                write_type(&mut s, &TensorType::new(t.dtype(), t.ir_shape()));
                if let Some(w) = g.wire(&sp.name) {
                    let _ = write!(s, " wire {w}");
                }
                if inline(mode, t) {
                    s.push_str(" = ");
                    write_data(&mut s, t);
                } else {
                    write_summary(&mut s, t);
                }
                continue;
            }
        };
        let n = node_at(g, id)?;
        let ty = match (&n.op, n.outputs.as_slice()) {
            (Op::Input, [ty]) => ty,
            _ => return Err(IrError::Graph(format!("graph input `{}` is not an input node with one result", n.name))),
        };
        let r = format!("%{}", name(&n.name));
        let _ = write!(s, "{r}: {}", type_str(ty));
        // `wire W`: the element type the source model declares for it (see `crate::wire`).
        if let Some(w) = g.wire(&n.name) {
            let _ = write!(s, " wire {w}");
        }
        names.insert(Value::new(id, 0), r);
    }
    s.push_str(") -> (");
    for (i, o) in g.outputs().iter().enumerate() {
        if !g.contains_value(o.value) {
            return Err(IrError::Graph(format!("output `{}` names a value that does not exist", o.name)));
        }
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{}: {}", name(&o.name), type_str(g.value_type(o.value)));
    }
    s.push_str(") {\n");

    let mut next = 0usize;
    for id in order {
        let n = node_at(g, id)?;
        if n.outputs.is_empty() {
            return Err(IrError::node(&n.name, n.op.name(), "a node without results cannot be printed"));
        }
        let mut results = vec![];
        for port in 0..n.outputs.len() {
            let r = format!("%{next}");
            next += 1;
            names.insert(Value::new(id, port), r.clone());
            results.push(r);
        }
        s.push_str("  ");
        s.push_str(&results.join(", "));
        s.push_str(" = ");
        s.push_str(n.op.name());
        if let Op::Const(t) = &n.op {
            let [ty] = n.outputs.as_slice() else {
                return Err(IrError::node(&n.name, "const", "a constant must have exactly one result"));
            };
            s.push(' ');
            write_type(&mut s, ty);
            if inline(mode, t) {
                s.push_str(" = ");
                write_data(&mut s, t);
            } else {
                write_summary(&mut s, t);
            }
        } else {
            for (i, v) in n.inputs().iter().enumerate() {
                s.push_str(if i == 0 { " " } else { ", " });
                match v {
                    None => s.push('_'),
                    Some(v) => match names.get(v) {
                        Some(r) => s.push_str(r),
                        None => {
                            return Err(IrError::node(
                                &n.name,
                                n.op.name(),
                                format!("input {i} is neither a graph input nor the result of an earlier node"),
                            ))
                        }
                    },
                }
            }
            let attrs = ops::print_attrs(&n.op);
            if !attrs.is_empty() {
                let items: Vec<String> = attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let _ = write!(s, " {{{}}}", items.join(", "));
            }
            s.push_str(" : ");
            for (i, t) in n.outputs.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                write_type(&mut s, t);
            }
        }
        let _ = write!(s, "  # {}", quote(&n.name));
        if !n.from.is_empty() {
            let from: Vec<String> = n.from.iter().map(|f| quote(f)).collect();
            let _ = write!(s, " from [{}]", from.join(", "));
        }
        s.push('\n');
    }

    s.push_str("  return");
    for (i, o) in g.outputs().iter().enumerate() {
        s.push_str(if i == 0 { " " } else { ", " });
        match names.get(&o.value) {
            Some(r) => s.push_str(r),
            None => {
                return Err(IrError::Graph(format!(
                    "output `{}` is neither a graph input nor the result of a node",
                    o.name
                )))
            }
        }
    }
    s.push_str("\n}\n");
    Ok(s)
}

/// Whether a constant prints its values (else its summary).
fn inline(mode: ConstMode, t: &Tensor) -> bool {
    match mode {
        ConstMode::Full => true,
        ConstMode::Summary { inline_limit } => t.len() <= inline_limit,
    }
}

/// `[v, v, ...]`, flat and row-major.
fn write_data(s: &mut String, t: &Tensor) {
    fn list<T>(s: &mut String, v: &[T], f: impl Fn(&mut String, &T)) {
        s.push('[');
        for (i, x) in v.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            f(s, x);
        }
        s.push(']');
    }
    match t.data() {
        TensorData::F32(v) => list(s, v, |s, x| {
            let _ = write!(s, "{x:?}");
        }),
        TensorData::F16(v) => list(s, v, |s, x| {
            let _ = write!(s, "{:?}", x.to_f32());
        }),
        TensorData::BF16(v) => list(s, v, |s, x| {
            let _ = write!(s, "{:?}", x.to_f32());
        }),
        TensorData::I8(v) => list(s, v, |s, x| {
            let _ = write!(s, "{x}");
        }),
        TensorData::U8(v) => list(s, v, |s, x| {
            let _ = write!(s, "{x}");
        }),
        TensorData::I32(v) => list(s, v, |s, x| {
            let _ = write!(s, "{x}");
        }),
        TensorData::I64(v) => list(s, v, |s, x| {
            let _ = write!(s, "{x}");
        }),
        TensorData::Bool(v) => list(s, v, |s, x| {
            let _ = write!(s, "{x}");
        }),
        // `{:?}` is the shortest form that reads back to the same f64
        TensorData::F64(v) => list(s, v, |s, x| {
            let _ = write!(s, "{x:?}");
        }),
        TensorData::I16(v) => list(s, v, |s, x| {
            let _ = write!(s, "{x}");
        }),
        TensorData::U16(v) => list(s, v, |s, x| {
            let _ = write!(s, "{x}");
        }),
        TensorData::U32(v) => list(s, v, |s, x| {
            let _ = write!(s, "{x}");
        }),
        TensorData::U64(v) => list(s, v, |s, x| {
            let _ = write!(s, "{x}");
        }),
    }
}

/// ` #DIGEST [MIN, MAX]` (`[]` when the tensor is empty or all NaN).
fn write_summary(s: &mut String, t: &Tensor) {
    let d = t.digest();
    let _ = write!(s, " #{:08x}", (d as u32) ^ ((d >> 32) as u32));
    match t.range() {
        Some((lo, hi)) => {
            let _ = write!(s, " [{:?}, {:?}]", lo as f32, hi as f32);
        }
        None => s.push_str(" []"),
    }
}
