//! Element-wise regions over one quantized value as one byte table: a `quantize` whose value is
//! computed, through dequantizes, float element-wise ops with one-value constants and inner
//! quantizes (each used only inside the region), from a single per-tensor u8/i8 activation is a
//! function of that activation's byte alone. So the region is evaluated once, at compile time,
//! on all 256 bytes by the reference interpreter (a small graph of the region's own nodes on a
//! `[256]` input) and runs as one [`crate::micro::rowops::RowKind::Lut8`] step: the
//! interpreter's bytes by construction. Constants of one value per channel along one axis (a
//! bias before a GELU, a learnable affine) make one table per channel: the small graph then runs
//! on a `[256, C]` input, the constants as `[C]` vectors along its last axis. This is how a quantized model's GELU (`erf` and its
//! adds and multiplies quantized piece by piece), SiLU or hard-swish becomes one table lookup.

use super::{dims, per_tensor, At, Lowerer, Lw};
use qforge_ir::{DType, Graph, NodeId, Op, Shape, Tensor, TensorData, TensorType, UnaryOp, Value};
use std::collections::{HashMap, HashSet};

/// A region found by [`Lowerer::table_regions`]: its source byte value and its nodes in
/// schedule order (the root, a `quantize`, last).
#[derive(Clone, Debug)]
pub(super) struct TableRegion {
    pub src: Value,
    pub nodes: Vec<NodeId>,
    /// The axis and size of the channels its per-channel constants run along (one table per
    /// channel), or `None` (one table).
    pub channels: Option<(usize, usize)>,
}

/// Whether `t` is an 8-bit integer type quantized per tensor (a byte a table can index).
fn byte_type(t: &TensorType) -> bool {
    matches!(t.dtype, DType::U8 | DType::I8) && per_tensor(&t.quant).is_some()
}

impl Lowerer<'_> {
    /// The table regions of the schedule `order`, keyed by root, the latest root first claiming
    /// its nodes (a region never shares a node with another).
    pub(super) fn table_regions(&self, order: &[NodeId]) -> HashMap<NodeId, TableRegion> {
        let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let mut claimed: HashSet<NodeId> = HashSet::new();
        let mut out = HashMap::new();
        for &id in order.iter().rev() {
            if claimed.contains(&id) {
                continue;
            }
            if let Some(r) = self.table_region(id, &pos).filter(|r| !r.nodes.iter().any(|n| claimed.contains(n))) {
                claimed.extend(r.nodes.iter().copied());
                out.insert(id, r);
            }
        }
        out
    }

    /// The region rooted at the `quantize` node `root`, when it has at least two float ops
    /// besides its quantizes and dequantizes (one op alone already has its own step).
    fn table_region(&self, root: NodeId, pos: &HashMap<NodeId, usize>) -> Option<TableRegion> {
        let n = self.g.node(root);
        let out = Value::new(root, 0);
        let oty = self.ty(out)?;
        if !matches!(n.op, Op::Quantize) || !byte_type(oty) {
            return None;
        }
        let shape = oty.shape.clone();
        let dims_of = |t: &Tensor| t.shape().to_vec();
        let rank = shape.rank();
        let mut channels: Option<(usize, usize)> = None;
        let mut members: HashSet<NodeId> = HashSet::from([root]);
        let mut src: Option<Value> = None;
        let mut stack: Vec<Value> = n.inputs().iter().flatten().copied().collect();
        while let Some(w) = stack.pop() {
            if self.is_const(w) {
                // a one-value constant (a scale, a zero point, the 1 or 0.5 of a GELU), or one
                // value per channel along one axis (a learnable affine's scale and bias)
                let d = dims_of(&*self.const_of(Some(w))?);
                if d.iter().product::<usize>() == 1 {
                    continue;
                }
                let full = shape.dims().iter().map(|x| x.fixed()).collect::<Option<Vec<usize>>>()?;
                if d.len() > rank {
                    return None;
                }
                let off = rank - d.len();
                let mut axes = d.iter().enumerate().filter(|(_, &k)| k != 1);
                let (i, &c) = axes.next()?;
                if axes.next().is_some() || full[off + i] != c || channels.is_some_and(|ch| ch != (off + i, c)) {
                    return None;
                }
                channels = Some((off + i, c));
                continue;
            }
            let p = w.node;
            if members.contains(&p) {
                continue;
            }
            let ty = self.ty(w)?;
            let pn = self.g.node(p);
            if byte_type(ty) && !(self.byte_step(p) && self.only_user(w).is_some()) {
                // the source: one byte value, however many region nodes read it
                if src.is_some_and(|s| s != w) {
                    return None;
                }
                src = Some(w);
                continue;
            }
            let elementwise = match &pn.op {
                Op::Quantize | Op::Dequantize | Op::Clip { .. } | Op::Binary(_) => true,
                Op::Unary(u) => *u != UnaryOp::Not,
                _ => self.byte_step(p),
            };
            if !elementwise || ty.shape != shape || self.outputs.contains(&w) || pn.outputs.len() != 1 {
                return None;
            }
            members.insert(p);
            stack.extend(pn.inputs().iter().flatten().copied());
        }
        let src = src?;
        // every value inside is read only inside
        for &m in members.iter().filter(|&&m| m != root) {
            if self.g.value_users(Value::new(m, 0)).iter().any(|u| !members.contains(&u.0)) {
                return None;
            }
        }
        let ops = members.iter().filter(|&&m| !matches!(self.g.node(m).op, Op::Quantize | Op::Dequantize)).count();
        if ops < 2 {
            return None;
        }
        let mut nodes: Vec<NodeId> = members.into_iter().collect();
        nodes.sort_by_key(|m| pos.get(m).copied().unwrap_or(usize::MAX));
        Some(TableRegion { src, nodes, channels })
    }

    /// Whether node `p`, which produces a byte value, is a step the region may pass through: a
    /// quantize, a requantize, or a quantized add or multiply by a constant (which the walk
    /// then accepts as one value or one per channel, or rejects).
    fn byte_step(&self, p: NodeId) -> bool {
        let n = self.g.node(p);
        match n.op {
            Op::Quantize | Op::Requantize => true,
            Op::QAdd | Op::QMul => n.inputs().iter().flatten().any(|v| self.is_const(*v)),
            _ => false,
        }
    }

    /// The region's 256 result bytes: the interpreter on a graph of its nodes over all bytes of
    /// the source's type (entry `b` for the stored byte `b`).
    pub(super) fn region_table(&self, r: &TableRegion) -> Option<Vec<u8>> {
        let st = self.ty(r.src)?;
        // every byte along the first axis; with channels, every channel along the second
        let c = r.channels.map_or(1, |(_, c)| c);
        let lanes: Vec<usize> = if r.channels.is_some() { vec![256, c] } else { vec![256] };
        let one_d = |t: &TensorType| TensorType { dtype: t.dtype, shape: Shape::fixed(&lanes), quant: t.quant.clone() };
        let mut g = Graph::new("table");
        let mut map: HashMap<Value, Value> = HashMap::from([(r.src, g.add_input("x", one_d(st)))]);
        for &m in &r.nodes {
            let n = self.g.node(m);
            let mut ins = Vec::with_capacity(n.inputs().len());
            for v in n.inputs() {
                ins.push(match v {
                    None => None,
                    Some(v) if self.is_const(*v) => {
                        // the one value as a scalar, or the channel values as a vector along the
                        // last axis, of the constant's own (quantized) type
                        let t = self.const_of(Some(*v))?;
                        let d: Vec<usize> = if t.shape().iter().product::<usize>() == 1 { vec![] } else { vec![c] };
                        let scalar = Tensor::new(d.clone(), t.data().clone())?;
                        let ct = self.ty(*v)?;
                        let ty = TensorType { dtype: ct.dtype, shape: Shape::fixed(&d), quant: ct.quant.clone() };
                        let name = format!("c{}", v.node.index());
                        Some(*map.entry(*v).or_insert_with(|| g.add_const_typed(name, scalar, ty)))
                    }
                    Some(v) => Some(*map.get(v)?),
                });
            }
            let declared = vec![one_d(self.ty(Value::new(m, 0))?)];
            let y = g.add_node(n.op.clone(), ins, Some(declared), n.name.clone()).ok()?;
            map.insert(Value::new(m, 0), y);
        }
        let root = *r.nodes.last()?;
        g.add_output("y", *map.get(&Value::new(root, 0))?);
        let bytes: Vec<u8> = (0..=255u8).flat_map(|b| std::iter::repeat_n(b, c)).collect();
        let data = match st.dtype {
            DType::U8 => TensorData::U8(bytes),
            _ => TensorData::I8(bytes.into_iter().map(|b| b as i8).collect()),
        };
        let x = Tensor::new(lanes.clone(), data)?;
        let y = qforge_ir::interp::run(&g, &[x]).ok()?.into_iter().next()?;
        let out: Vec<u8> = match y.data() {
            TensorData::U8(v) => v.clone(),
            TensorData::I8(v) => v.iter().map(|&b| b as u8).collect(),
            _ => return None,
        };
        // table `ch`, entry `b`: the result at byte `b`, channel `ch`
        (out.len() == 256 * c)
            .then(|| (0..c).flat_map(|ch| (0..256).map(move |b| (b, ch))).map(|(b, ch)| out[b * c + ch]).collect())
    }

    /// The region `r` as one byte-table step in its source's layout; if no table covers it, its
    /// nodes are lowered one by one.
    pub(super) fn lower_table_region(&mut self, r: &TableRegion) -> Result<(), crate::JitError> {
        match self.table_step(r) {
            Ok(()) => Ok(()),
            Err(super::Skip::Fail(e)) => Err(e),
            Err(super::Skip::Host(_)) => {
                for &m in &r.nodes {
                    self.lower_or_host(m)?;
                }
                Ok(())
            }
        }
    }

    fn table_step(&mut self, r: &TableRegion) -> Lw {
        let root = *super::need(r.nodes.last(), "an empty region")?;
        let lut = super::need(self.region_table(r), "the region did not evaluate on the bytes")?;
        let out = Value::new(root, 0);
        let label = r.nodes.iter().map(|&m| self.g.node(m).name.clone()).collect::<Vec<_>>().join("+");
        let n =
            At { op: &self.g.node(root).op, name: label, ins: vec![Some(r.src)], out, oty: self.types[&out].clone() };
        let layout = self.vals[&r.src].layout;
        // element `i`'s table is `(i / plane) % tables`: the channel axis's stride in memory
        let d = super::need(dims(&self.types[&r.src]), "the source's shape is not fixed")?;
        let tables = match r.channels {
            None => (1, 1),
            Some((a, c)) => match layout {
                super::Layout::Plain => (c, d[a + 1..].iter().product()),
                super::Layout::Nhwc if d.len() == 4 && a == 1 => (c, 1),
                _ => return super::host("the channels are not an axis of the layout"),
            },
        };
        self.tables_step(&n, r.src, layout, lut, tables)
    }
}
