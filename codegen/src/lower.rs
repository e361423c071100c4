//! Lowering: an optimized graph with concrete input shapes becomes a list of steps over buffers.
//! Each node becomes a JIT kernel ([`KernelSpec`] or an element-wise step), an alias of its input
//! (reshape and flatten when the bytes already have the right order), a layout conversion, or,
//! for an op no kernel covers, a host step that runs the reference interpreter on that one node
//! (reported, never silent).
//!
//! Layouts: 4-D activations that convolutions and pooling touch are NHWC; everything else is the
//! graph's own row-major ("plain") order. A conversion step is inserted where a consumer needs
//! the other layout; a 4-D tensor whose `H * W` or `C` is 1 has one byte order for both.
//!
//! Float convolutions absorb what follows them when the convolution's result has no other use:
//! ReLU, Clip and a same-shape residual Add become epilogue steps, so ResNet's
//! `conv -> add -> relu` is one kernel.

use crate::emit::elementwise::{Elementwise, IntTy};
use crate::micro::rowops::{self, RowKind, RowOp};
use crate::micro::{self, ConvGeom};
use crate::spec::{mark_bounded, KernelSpec, MainOp, Rows, Step, Store};
use crate::JitError;
use qforge_ir::numerics;
use qforge_ir::{infer, BinaryOp, DType, Epilogue, Graph, NodeId, Op, QuantParams, Tensor, TensorType, UnaryOp, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Byte order of a buffer holding a 4-D tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    Plain,
    Nhwc,
}

/// A buffer: one tensor's bytes (several values may share one: aliases, in-place steps).
#[derive(Clone, Debug)]
pub struct Buf {
    pub bytes: usize,
}

/// What a step does.
#[derive(Clone, Debug)]
pub enum StepKind {
    /// A fused kernel writing columns `out_col..out_col + spec.cols` of output rows `ld_out` long.
    Kernel {
        spec: KernelSpec,
        input: usize,
        residual: Option<usize>,
        output: usize,
        out_col: usize,
        ld_out: usize,
    },
    Elementwise {
        op: Elementwise,
        inputs: Vec<usize>,
        output: usize,
        len: usize,
    },
    MaxPool {
        geom: ConvGeom,
        dtype: DType,
        input: usize,
        output: usize,
    },
    /// NCHW <-> NHWC of `n` images of `c` channels and `hw` pixels, `elem` bytes each.
    Convert {
        to_nhwc: bool,
        n: usize,
        c: usize,
        hw: usize,
        elem: usize,
        input: usize,
        output: usize,
    },
    /// Concatenation: for each of `outer` blocks, each part's `chunk` bytes go to its offset in
    /// the output block of `stride` bytes.
    Concat {
        parts: Vec<(usize, usize)>,
        output: usize,
        outer: usize,
        stride: usize,
    },
    /// Average pooling over NHWC f32.
    AvgPool {
        geom: micro::pool::AvgPoolGeom,
        input: usize,
        output: usize,
    },
    /// A row operation (activation, softmax, layer norm, f16/bf16 conversion) over `units`.
    Rows {
        op: crate::micro::rowops::RowOp,
        input: usize,
        output: usize,
        units: usize,
    },
    /// One node run by the reference interpreter on plain tensors.
    Host {
        op: Op,
        inputs: Vec<HostArg>,
        outputs: Vec<(usize, TensorType)>,
    },
}

/// An input of a host step: a buffer of a type, or a constant.
#[derive(Clone, Debug)]
pub enum HostArg {
    Missing,
    Buffer(usize, TensorType),
    Const(Arc<Tensor>, TensorType),
}

/// One step with the node names it came from.
#[derive(Clone, Debug)]
pub struct LoweredStep {
    pub name: String,
    pub kind: StepKind,
}

/// The lowered graph for one set of input shapes.
#[derive(Clone, Debug)]
pub struct Lowered {
    pub buffers: Vec<Buf>,
    pub steps: Vec<LoweredStep>,
    /// Buffers of the graph inputs (plain layout) with their concrete types.
    pub inputs: Vec<(usize, TensorType)>,
    /// Buffers of the graph outputs (plain layout) with their concrete types.
    pub outputs: Vec<(usize, TensorType)>,
    /// Ops run by the interpreter, with their counts.
    pub host_ops: Vec<(String, usize)>,
}

#[derive(Clone, Debug)]
struct Vinfo {
    ty: TensorType,
    buf: usize,
    layout: Layout,
}

fn err(node: &str, msg: impl Into<String>) -> JitError {
    JitError::Lower { node: node.to_string(), msg: msg.into() }
}

/// Concrete dims of a type.
fn dims(ty: &TensorType) -> Option<Vec<usize>> {
    ty.shape.as_fixed()
}

/// Whether NCHW and NHWC orders coincide for `ty`.
fn layout_free(ty: &TensorType) -> bool {
    match dims(ty) {
        Some(d) if d.len() == 4 => d[2] * d[3] == 1 || d[1] == 1,
        _ => true,
    }
}

fn numel(ty: &TensorType) -> usize {
    dims(ty).map_or(0, |d| d.iter().product())
}

fn int_ty(d: DType) -> Option<IntTy> {
    match d {
        DType::U8 => Some(IntTy::U8),
        DType::I8 => Some(IntTy::I8),
        _ => None,
    }
}

fn per_tensor(q: &Option<QuantParams>) -> Option<(f32, i32)> {
    match q {
        Some(QuantParams::PerTensor { scale, zero_point }) => Some((*scale, *zero_point)),
        Some(QuantParams::PerAxis { scales, zero_points, .. }) if scales.len() == 1 => {
            Some((scales[0], zero_points.first().copied().unwrap_or(0)))
        }
        _ => None,
    }
}

struct Lowerer<'g> {
    g: &'g Graph,
    types: HashMap<Value, TensorType>,
    vals: HashMap<Value, Vinfo>,
    /// Converted copies: (value, layout) -> buffer.
    converted: HashMap<(Value, Layout), usize>,
    buffers: Vec<Buf>,
    steps: Vec<LoweredStep>,
    host: HashMap<String, usize>,
    users: HashMap<Value, usize>,
    outputs: HashSet<Value>,
}

/// Lowers `g` for inputs of the given concrete types (already checked against the graph).
pub fn lower(g: &Graph, input_types: &[TensorType]) -> Result<Lowered, JitError> {
    let order = g.schedule().map_err(|e| JitError::Lower { node: String::new(), msg: e.to_string() })?;
    let mut lw = Lowerer {
        g,
        types: HashMap::new(),
        vals: HashMap::new(),
        converted: HashMap::new(),
        buffers: Vec::new(),
        steps: Vec::new(),
        host: HashMap::new(),
        users: HashMap::new(),
        outputs: g.outputs().iter().map(|o| o.value).collect(),
    };
    for &id in &order {
        for v in g.node(id).inputs().iter().flatten() {
            *lw.users.entry(*v).or_default() += 1;
        }
    }
    // Concrete types.
    for (&id, ty) in g.inputs().iter().zip(input_types) {
        lw.types.insert(Value::new(id, 0), ty.clone());
    }
    for &id in &order {
        let node = g.node(id);
        match &node.op {
            Op::Input => continue,
            Op::Const(t) => {
                lw.types.insert(Value::new(id, 0), node.outputs[0].with_shape(t.ir_shape()));
            }
            op => {
                let ins: Vec<Option<&TensorType>> =
                    node.inputs().iter().map(|v| v.and_then(|v| lw.types.get(&v))).collect();
                let outs = infer::infer(op, &ins, Some(&node.outputs)).map_err(|m| err(&node.name, m))?;
                for (p, t) in outs.into_iter().enumerate() {
                    if !t.shape.is_fixed() {
                        return Err(err(&node.name, "a result shape is not fixed by the input shapes"));
                    }
                    lw.types.insert(Value::new(id, p), t);
                }
            }
        }
    }
    let mut inputs = Vec::new();
    for &id in g.inputs() {
        let v = Value::new(id, 0);
        let ty = lw.types[&v].clone();
        let buf = lw.new_buf(&ty);
        lw.vals.insert(v, Vinfo { ty: ty.clone(), buf, layout: Layout::Plain });
        inputs.push((buf, ty));
    }
    // Fusion groups of float convolutions: last node -> (conv, absorbed nodes).
    let mut absorbed: HashSet<NodeId> = HashSet::new();
    let mut groups: HashMap<NodeId, (NodeId, Vec<NodeId>)> = HashMap::new();
    for &id in &order {
        if let Op::Conv(_) = g.node(id).op {
            // A node joins at most one group (a residual add is claimed by the first of its
            // two convolutions in schedule order).
            let mut chain = lw.float_chain(id);
            if let Some(p) = chain.iter().position(|c| absorbed.contains(c) || groups.contains_key(c)) {
                chain.truncate(p);
            }
            if let Some(&last) = chain.last() {
                absorbed.insert(id);
                for &c in &chain[..chain.len() - 1] {
                    absorbed.insert(c);
                }
                groups.insert(last, (id, chain));
            }
        }
    }
    for &id in &order {
        let node = g.node(id);
        if matches!(node.op, Op::Input | Op::Const(_)) || absorbed.contains(&id) {
            continue;
        }
        if let Some((conv, chain)) = groups.get(&id) {
            lw.lower_float_conv(*conv, chain)?;
            continue;
        }
        if !lw.lower_node(id)? {
            lw.lower_host(id)?;
        }
    }
    let mut outputs = Vec::new();
    for o in g.outputs() {
        if !lw.vals.contains_key(&o.value) {
            if let Some(t) = lw.const_of(Some(o.value)) {
                // A constant output: copied into the arena once per run.
                let ty = lw.types[&o.value].clone();
                let b = lw.define(o.value, Layout::Plain);
                lw.push(
                    &o.name,
                    StepKind::Host {
                        op: Op::Identity,
                        inputs: vec![HostArg::Const(t, ty.clone())],
                        outputs: vec![(b, ty)],
                    },
                );
            }
        }
        let buf = lw.plain(o.value, &o.name)?;
        let ty = lw.vals[&o.value].ty.clone();
        outputs.push((buf, ty));
    }
    let mut host_ops: Vec<(String, usize)> = lw.host.into_iter().collect();
    host_ops.sort();
    Ok(Lowered { buffers: lw.buffers, steps: lw.steps, inputs, outputs, host_ops })
}

impl Lowerer<'_> {
    fn new_buf(&mut self, ty: &TensorType) -> usize {
        self.buffers.push(Buf { bytes: numel(ty) * ty.dtype.size_bytes() });
        self.buffers.len() - 1
    }

    fn ty(&self, v: Value) -> Option<&TensorType> {
        self.types.get(&v)
    }

    fn const_of(&self, v: Option<Value>) -> Option<Arc<Tensor>> {
        match &self.g.node(v?.node).op {
            Op::Const(t) => Some(t.clone()),
            _ => None,
        }
    }

    fn is_const(&self, v: Value) -> bool {
        matches!(self.g.node(v.node).op, Op::Const(_))
    }

    /// The single user of `v` if it has exactly one and is not a graph output.
    fn only_user(&self, v: Value) -> Option<NodeId> {
        if self.outputs.contains(&v) || self.users.get(&v).copied() != Some(1) {
            return None;
        }
        self.g.value_users(v).first().map(|u| u.0)
    }

    /// The nodes a float conv at `id` absorbs (empty: none; the last one is where it runs).
    fn float_chain(&self, id: NodeId) -> Vec<NodeId> {
        let mut chain = Vec::new();
        let mut cur = Value::new(id, 0);
        let Some(ty) = self.ty(cur) else { return chain };
        if ty.dtype != DType::F32 {
            return chain;
        }
        let mut residual = false;
        while let Some(u) = self.only_user(cur) {
            let n = self.g.node(u);
            let ok = match &n.op {
                Op::Unary(UnaryOp::Relu) | Op::Clip { .. } => true,
                Op::Binary(BinaryOp::Add) if !residual => {
                    let ins = n.inputs();
                    let other = if ins.first().copied().flatten() == Some(cur) { ins.get(1) } else { ins.first() };
                    match other.copied().flatten() {
                        Some(o) if o != cur && !self.is_const(o) => {
                            residual = self.ty(o).map(|t| t.shape.clone()) == self.ty(cur).map(|t| t.shape.clone())
                                && self.ty(o).map(|t| t.dtype) == Some(DType::F32);
                            residual
                        }
                        _ => false,
                    }
                }
                _ => false,
            };
            if !ok {
                break;
            }
            chain.push(u);
            cur = Value::new(u, 0);
        }
        chain
    }

    /// The buffer of `v` in `layout`, converting (once) if needed.
    fn in_layout(&mut self, v: Value, layout: Layout, name: &str) -> Result<usize, JitError> {
        let info = self.vals.get(&v).cloned().ok_or_else(|| err(name, "an input has no buffer"))?;
        if info.layout == layout || layout_free(&info.ty) {
            return Ok(info.buf);
        }
        if let Some(&b) = self.converted.get(&(v, layout)) {
            return Ok(b);
        }
        let d = dims(&info.ty).ok_or_else(|| err(name, "a layout conversion of a symbolic shape"))?;
        let out = self.new_buf(&info.ty);
        self.steps.push(LoweredStep {
            name: format!("{name}.layout"),
            kind: StepKind::Convert {
                to_nhwc: layout == Layout::Nhwc,
                n: d[0],
                c: d[1],
                hw: d[2] * d[3],
                elem: info.ty.dtype.size_bytes(),
                input: info.buf,
                output: out,
            },
        });
        self.converted.insert((v, layout), out);
        Ok(out)
    }

    fn plain(&mut self, v: Value, name: &str) -> Result<usize, JitError> {
        self.in_layout(v, Layout::Plain, name)
    }

    fn define(&mut self, v: Value, layout: Layout) -> usize {
        let ty = self.types[&v].clone();
        let buf = self.new_buf(&ty);
        self.vals.insert(v, Vinfo { ty, buf, layout });
        buf
    }

    fn push(&mut self, name: &str, kind: StepKind) {
        self.steps.push(LoweredStep { name: name.to_string(), kind });
    }

    fn lower_host(&mut self, id: NodeId) -> Result<(), JitError> {
        let node = self.g.node(id);
        let mut args = Vec::new();
        for v in node.inputs() {
            args.push(match v {
                None => HostArg::Missing,
                Some(v) => match self.const_of(Some(*v)) {
                    Some(t) => HostArg::Const(t, self.types[v].clone()),
                    None => {
                        let b = self.plain(*v, &node.name)?;
                        HostArg::Buffer(b, self.types[v].clone())
                    }
                },
            });
        }
        let mut outs = Vec::new();
        for p in 0..node.outputs.len() {
            let v = Value::new(id, p);
            let b = self.define(v, Layout::Plain);
            outs.push((b, self.types[&v].clone()));
        }
        *self.host.entry(node.op.name().to_string()).or_default() += 1;
        self.push(&node.name, StepKind::Host { op: node.op.clone(), inputs: args, outputs: outs });
        Ok(())
    }

    /// Lowers one node to JIT code or an alias; false if no kernel covers it.
    fn lower_node(&mut self, id: NodeId) -> Result<bool, JitError> {
        let node = self.g.node(id);
        let name = node.name.clone();
        let ins: Vec<Option<Value>> = node.inputs().to_vec();
        let x0 = ins.first().copied().flatten();
        let out = Value::new(id, 0);
        let Some(oty) = self.ty(out).cloned() else { return Ok(false) };
        // Every non-constant input must already have a buffer.
        for v in ins.iter().flatten() {
            if !self.is_const(*v) && !self.vals.contains_key(v) {
                return Ok(false);
            }
        }
        match &node.op {
            Op::Flatten { .. } | Op::Reshape { .. } | Op::Identity | Op::Squeeze { .. } | Op::Unsqueeze { .. } => {
                let Some(x) = x0.filter(|v| !self.is_const(*v)) else { return Ok(false) };
                let buf = self.plain(x, &name)?;
                self.vals.insert(out, Vinfo { ty: oty, buf, layout: Layout::Plain });
                Ok(true)
            }
            Op::Transpose { perm } => {
                let Some(x) = x0.filter(|v| !self.is_const(*v)) else { return Ok(false) };
                let (Some(din), Some(dout)) = (dims(&self.types[&x]), dims(&oty)) else { return Ok(false) };
                let elem = oty.dtype.size_bytes();
                let rank = din.len();
                if perm.len() != rank || dout.len() != rank || !matches!(elem, 1 | 2 | 4 | 8) {
                    return Ok(false);
                }
                // row-major input strides, in elements
                let mut stride = vec![1usize; rank];
                for a in (0..rank.saturating_sub(1)).rev() {
                    stride[a] = stride[a + 1] * din[a + 1];
                }
                let mut index = dout.clone();
                for &p in perm {
                    let Some(&st) = stride.get(p) else { return Ok(false) };
                    index.push(st);
                }
                let input = self.plain(x, &name)?;
                let output = self.define(out, Layout::Plain);
                let n = numel(&oty);
                let kind = RowKind::Transpose { elem };
                let op = RowOp { kind, x: 0, y: 0, n, inner: 1, scale: vec![], bias: vec![], index };
                self.push(&name, StepKind::Rows { op, input, output, units: n.div_ceil(rowops::CHUNK) });
                Ok(true)
            }
            Op::QConv { conv, epilogue } => self.lower_qconv(id, conv, epilogue),
            Op::QGemm { alpha, trans_a: false, trans_b, epilogue } => self.lower_qgemm(id, *alpha, *trans_b, epilogue),
            Op::QMatMul { epilogue } => self.lower_qgemm(id, 1.0, false, epilogue),
            Op::Gemm { alpha, beta, trans_a: false, trans_b } => self.lower_fgemm(id, *alpha, *beta, *trans_b),
            Op::MatMul => self.lower_fgemm(id, 1.0, 0.0, false),
            Op::Conv(_) => self.lower_float_conv(id, &[]).map(|_| true),
            Op::QGlobalAveragePool | Op::GlobalAveragePool => self.lower_global_avg(id),
            Op::MaxPool(p) => {
                let (Some(x), Some(d)) = (x0, x0.and_then(|x| self.ty(x)).and_then(dims)) else { return Ok(false) };
                let od = dims(&oty).unwrap_or_default();
                if !matches!(oty.dtype, DType::U8 | DType::I8 | DType::F32) {
                    return Ok(false);
                }
                let Some(geom) = Self::pool_geom(p, &d, &od) else { return Ok(false) };
                let input = self.in_layout(x, Layout::Nhwc, &name)?;
                let output = self.define(out, Layout::Nhwc);
                self.push(&name, StepKind::MaxPool { geom, dtype: oty.dtype, input, output });
                Ok(true)
            }
            Op::Concat { axis } | Op::QConcat { axis } => {
                let Some(d) = dims(&oty) else { return Ok(false) };
                let Ok(a) = infer::norm_axis(*axis, d.len()) else { return Ok(false) };
                let vals: Vec<Value> = ins.iter().flatten().copied().collect();
                if vals.len() != ins.len() || vals.is_empty() || vals.iter().any(|v| self.is_const(*v)) {
                    return Ok(false);
                }
                for v in &vals {
                    let t = &self.types[v];
                    let same_params = matches!(node.op, Op::Concat { .. })
                        || (per_tensor(&t.quant).is_some() && t.quant == oty.quant);
                    if t.dtype != oty.dtype || !same_params {
                        return Ok(false);
                    }
                }
                let es = oty.dtype.size_bytes();
                // Channels of NHWC activations are the innermost dim; otherwise plain order.
                let nhwc = d.len() == 4 && a == 1 && self.vals[&vals[0]].layout == Layout::Nhwc;
                let layout = if nhwc { Layout::Nhwc } else { Layout::Plain };
                let (outer, inner) = if nhwc {
                    (d[0] * d[2] * d[3], 1)
                } else {
                    (d[..a].iter().product::<usize>(), d[a + 1..].iter().product::<usize>())
                };
                let mut parts = Vec::new();
                for v in &vals {
                    let dv = dims(&self.types[v]).unwrap_or_default();
                    let buf = self.in_layout(*v, layout, &name)?;
                    parts.push((buf, dv.get(a).copied().unwrap_or(0) * inner * es));
                }
                let output = self.define(out, layout);
                self.push(&name, StepKind::Concat { parts, output, outer, stride: d[a] * inner * es });
                Ok(true)
            }
            Op::AveragePool(p) if oty.dtype == DType::F32 => {
                let (Some(x), Some(d)) = (x0, x0.and_then(|x| self.ty(x)).and_then(dims)) else { return Ok(false) };
                let od = dims(&oty).unwrap_or_default();
                if self.is_const(x) {
                    return Ok(false);
                }
                let Some(geom) = Self::pool_geom(p, &d, &od) else { return Ok(false) };
                let geom = micro::pool::AvgPoolGeom {
                    geom,
                    pe_h: p.pads[2],
                    pe_w: p.pads[3],
                    include_pad: p.count_include_pad as usize,
                };
                let input = self.in_layout(x, Layout::Nhwc, &name)?;
                let output = self.define(out, Layout::Nhwc);
                self.push(&name, StepKind::AvgPool { geom, input, output });
                Ok(true)
            }
            Op::QAdd => {
                let (Some(a), Some(b)) = (x0, ins.get(1).copied().flatten()) else { return Ok(false) };
                let (ta, tb) = (self.types[&a].clone(), self.types[&b].clone());
                if self.is_const(a) || self.is_const(b) || ta.shape != oty.shape || tb.shape != oty.shape {
                    return Ok(false);
                }
                let (Some((sa, za)), Some((sb, zb)), Some((sc, zc))) =
                    (per_tensor(&ta.quant), per_tensor(&tb.quant), per_tensor(&oty.quant))
                else {
                    return Ok(false);
                };
                let (Some(ia), Some(ib), Some(io)) = (int_ty(ta.dtype), int_ty(tb.dtype), int_ty(oty.dtype)) else {
                    return Ok(false);
                };
                if numel(&oty) <= 1 {
                    return Ok(false);
                }
                let p = numerics::QAddParams::new(sa, za, sb, zb, sc, zc);
                self.elementwise(out, &[a, b], Elementwise::QAdd { p, a: ia, b: ib, out: io }, &name)
            }
            Op::Quantize => {
                let Some(x) = x0 else { return Ok(false) };
                let (Some((s, z)), Some(io)) = (per_tensor(&oty.quant), int_ty(oty.dtype)) else { return Ok(false) };
                if self.types[&x].dtype != DType::F32 || ins.len() > 1 && ins[1..].iter().any(|v| v.is_some()) {
                    return Ok(false);
                }
                self.elementwise(out, &[x], Elementwise::Quantize { scale: s, zp: z, out: io }, &name)
            }
            Op::Dequantize => {
                let Some(x) = x0 else { return Ok(false) };
                let t = self.types[&x].clone();
                let (Some((s, z)), Some(ii)) = (per_tensor(&t.quant), int_ty(t.dtype)) else { return Ok(false) };
                if oty.dtype != DType::F32 || ins.len() > 1 && ins[1..].iter().any(|v| v.is_some()) {
                    return Ok(false);
                }
                self.elementwise(out, &[x], Elementwise::Dequantize { scale: s, zp: z, input: ii }, &name)
            }
            Op::Unary(UnaryOp::Relu) | Op::Clip { .. } if oty.dtype == DType::F32 => {
                let Some(x) = x0 else { return Ok(false) };
                let (lo, hi) = match node.op {
                    Op::Clip { min, max } => (min, max),
                    _ => (0.0, f32::INFINITY),
                };
                self.elementwise(out, &[x], Elementwise::ClampF32 { lo, hi }, &name)
            }
            Op::Unary(u) if oty.dtype == DType::F32 && *u != UnaryOp::Not => {
                let Some(x) = x0.filter(|v| !self.is_const(*v)) else { return Ok(false) };
                let layout = self.vals[&x].layout;
                let input = self.in_layout(x, layout, &name)?;
                let output = self.define(out, layout);
                let n = numel(&oty);
                self.push_rows(
                    &name,
                    RowKind::Unary(*u),
                    input,
                    output,
                    n,
                    1,
                    n.div_ceil(rowops::CHUNK),
                    vec![],
                    vec![],
                );
                Ok(true)
            }
            Op::Cast { to } => {
                let Some(x) = x0.filter(|v| !self.is_const(*v)) else { return Ok(false) };
                let from = self.types[&x].dtype;
                let kind = match (from, *to) {
                    (a, b) if a == b => {
                        let v = self.vals[&x].clone();
                        self.vals.insert(out, Vinfo { ty: oty, buf: v.buf, layout: v.layout });
                        return Ok(true);
                    }
                    (DType::F16, DType::F32) => RowKind::WidenF16,
                    (DType::BF16, DType::F32) => RowKind::WidenBf16,
                    (DType::F32, DType::F16) => RowKind::RoundF16,
                    (DType::F32, DType::BF16) => RowKind::RoundBf16,
                    _ => return Ok(false),
                };
                let layout = self.vals[&x].layout;
                let input = self.in_layout(x, layout, &name)?;
                let output = self.define(out, layout);
                let n = numel(&oty);
                self.push_rows(&name, kind, input, output, n, 1, n.div_ceil(rowops::CHUNK), vec![], vec![]);
                Ok(true)
            }
            Op::Softmax { axis } | Op::LogSoftmax { axis } if oty.dtype == DType::F32 => {
                let Some(x) = x0.filter(|v| !self.is_const(*v)) else { return Ok(false) };
                let Some(d) = dims(&oty) else { return Ok(false) };
                let Ok(a) = infer::norm_axis(*axis, d.len()) else { return Ok(false) };
                let (n, inner) = (d[a], d[a + 1..].iter().product::<usize>());
                if n == 0 {
                    return Ok(false);
                }
                let log = matches!(node.op, Op::LogSoftmax { .. });
                let input = self.plain(x, &name)?;
                let output = self.define(out, Layout::Plain);
                let units = numel(&oty) / n;
                self.push_rows(&name, RowKind::Softmax { log }, input, output, n, inner, units, vec![], vec![]);
                Ok(true)
            }
            Op::LayerNorm { axis, epsilon } if oty.dtype == DType::F32 => {
                let Some(x) = x0.filter(|v| !self.is_const(*v)) else { return Ok(false) };
                let Some(d) = dims(&oty) else { return Ok(false) };
                let Ok(a) = infer::norm_axis(*axis, d.len()) else { return Ok(false) };
                let n: usize = d[a..].iter().product();
                let vec_of = |t: Option<Arc<Tensor>>| t.and_then(|t| t.as_f32().map(|v| v.to_vec()));
                let Some(scale) = vec_of(self.const_of(ins.get(1).copied().flatten())) else { return Ok(false) };
                let bias = match ins.get(2).copied().flatten() {
                    Some(b) => match vec_of(self.const_of(Some(b))) {
                        Some(v) => v,
                        None => return Ok(false),
                    },
                    None => vec![0.0; n],
                };
                if n == 0 || scale.len() != n || bias.len() != n {
                    return Ok(false);
                }
                let input = self.plain(x, &name)?;
                let output = self.define(out, Layout::Plain);
                let units = numel(&oty) / n;
                self.push_rows(&name, RowKind::LayerNorm { eps: *epsilon }, input, output, n, 1, units, scale, bias);
                Ok(true)
            }
            Op::Binary(BinaryOp::Add)
                if oty.dtype == DType::F32 && ins.iter().flatten().all(|v| self.types[v].shape == oty.shape) =>
            {
                let (Some(a), Some(b)) = (x0, ins.get(1).copied().flatten()) else { return Ok(false) };
                self.elementwise(out, &[a, b], Elementwise::AddF32 { relu: false }, &name)
            }
            Op::Binary(op @ (BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div))
                if oty.dtype == DType::F32 =>
            {
                // A tensor and a per-channel constant (a batch norm left as mul/add, a bias), or a
                // constant along the last axis (a transformer's bias, `[.., C] + [C]`).
                let (Some(a), Some(b)) = (x0, ins.get(1).copied().flatten()) else { return Ok(false) };
                let Some(d) = dims(&oty) else { return Ok(false) };
                let (x, k, const_first) = match (self.is_const(a), self.is_const(b)) {
                    (false, true) => (a, b, false),
                    (true, false) => (b, a, true),
                    _ => return Ok(false),
                };
                if self.types[&x].shape != oty.shape || d.len() < 2 {
                    return Ok(false);
                }
                let Some(kv) = self.const_of(Some(k)).and_then(|t| t.as_f32().map(|v| v.to_vec())) else {
                    return Ok(false);
                };
                let kd = dims(&self.types[&k]).unwrap_or_default();
                // The constant must vary along the channel axis (1) only.
                let c = d[1];
                let mut full = vec![1usize; d.len()];
                let off = d.len().saturating_sub(kd.len());
                if kd.len() > d.len() {
                    return Ok(false);
                }
                full[off..].copy_from_slice(&kd);
                let per_channel = full.iter().enumerate().all(|(i, &n)| n == 1 || (i == 1 && n == c));
                let last = d.len() - 1;
                let along_last = full.iter().enumerate().all(|(i, &n)| n == 1 || (i == last && n == d[last]));
                let (input, output, kind, c) = if per_channel {
                    let v_c = c;
                    let layout = self.vals[&x].layout;
                    let input = self.in_layout(x, layout, &name)?;
                    let output = self.define(out, layout);
                    let hw: usize = d[2..].iter().product();
                    let nhwc = layout == Layout::Nhwc && d.len() == 4;
                    (input, output, RowKind::ChannelBinary { op: *op, const_first, nhwc, c: v_c, hw }, v_c)
                } else if along_last {
                    // in row-major order the channel of element i is i % C: the NHWC indexing
                    let input = self.plain(x, &name)?;
                    let output = self.define(out, Layout::Plain);
                    let c = d[last];
                    (input, output, RowKind::ChannelBinary { op: *op, const_first, nhwc: true, c, hw: 1 }, c)
                } else {
                    return Ok(false);
                };
                let v: Vec<f32> = if kv.len() == 1 { vec![kv[0]; c] } else { kv };
                let n = numel(&oty);
                self.push_rows(&name, kind, input, output, n, 1, n.div_ceil(rowops::CHUNK), v, vec![]);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push_rows(
        &mut self,
        name: &str,
        kind: RowKind,
        input: usize,
        output: usize,
        n: usize,
        inner: usize,
        units: usize,
        scale: Vec<f32>,
        bias: Vec<f32>,
    ) {
        let op = RowOp { kind, x: 0, y: 0, n, inner, scale, bias, index: vec![] };
        self.push(name, StepKind::Rows { op, input, output, units });
    }

    fn elementwise(&mut self, out: Value, ins: &[Value], op: Elementwise, name: &str) -> Result<bool, JitError> {
        if ins.iter().any(|v| self.is_const(*v)) {
            return Ok(false);
        }
        let layout = self.vals[&ins[0]].layout;
        let mut bufs = Vec::new();
        for &v in ins {
            bufs.push(self.in_layout(v, layout, name)?);
        }
        let output = self.define(out, layout);
        let len = numel(&self.types[&out]);
        self.push(name, StepKind::Elementwise { op, inputs: bufs, output, len });
        Ok(true)
    }

    /// Pooling attributes as a [`ConvGeom`] for an NCHW input `d` and output `od` (every channel
    /// its own window).
    fn pool_geom(p: &qforge_ir::PoolAttrs, d: &[usize], od: &[usize]) -> Option<ConvGeom> {
        Self::window_geom(&p.kernel, &p.strides, &p.pads, &p.dilations, d, od, *d.get(1)?)
    }

    /// Conv attributes as a [`ConvGeom`] for an NCHW input `d` and output `od`.
    fn geom(a: &qforge_ir::ConvAttrs, d: &[usize], od: &[usize], cin: usize) -> Option<ConvGeom> {
        Self::window_geom(&a.kernel, &a.strides, &a.pads, &a.dilations, d, od, cin)
    }

    /// A 2-D sliding window over an NCHW input `d` producing `od`.
    fn window_geom(
        kernel: &[usize],
        strides: &[usize],
        pads: &[usize],
        dilations: &[usize],
        d: &[usize],
        od: &[usize],
        cin: usize,
    ) -> Option<ConvGeom> {
        if kernel.len() != 2
            || strides.len() < 2
            || pads.len() < 2
            || dilations.len() < 2
            || d.len() != 4
            || od.len() != 4
        {
            return None;
        }
        Some(ConvGeom {
            h: d[2],
            w: d[3],
            c: d[1],
            oh: od[2],
            ow: od[3],
            kh: kernel[0],
            kw: kernel[1],
            sh: strides[0],
            sw: strides[1],
            ph: pads[0],
            pw: pads[1],
            dh: dilations[0],
            dw: dilations[1],
            cin,
            cin_offset: 0,
        })
    }

    fn lower_qconv(&mut self, id: NodeId, conv: &qforge_ir::ConvAttrs, ep: &[Epilogue]) -> Result<bool, JitError> {
        let node = self.g.node(id);
        let name = node.name.clone();
        let ins = node.inputs().to_vec();
        let out = Value::new(id, 0);
        let (Some(x), Some(wv)) = (ins.first().copied().flatten(), ins.get(1).copied().flatten()) else {
            return Ok(false);
        };
        let Some(w) = self.const_of(Some(wv)) else { return Ok(false) };
        let bias = match ins.get(2).copied().flatten() {
            Some(b) => match self.const_of(Some(b)) {
                Some(t) => Some(t),
                None => return Ok(false),
            },
            None => None,
        };
        let (xt, wt, oty) = (self.types[&x].clone(), self.types[&wv].clone(), self.types[&out].clone());
        let (Some(d), Some(od), Some(wd)) = (dims(&xt), dims(&oty), dims(&wt)) else { return Ok(false) };
        let Some((sx, zx)) = per_tensor(&xt.quant) else { return Ok(false) };
        let Some(xi) = int_ty(xt.dtype) else { return Ok(false) };
        if wt.dtype != DType::I8 || wd.len() != 4 {
            return Ok(false);
        }
        let cout = wd[0];
        let (sw, zw) = match &wt.quant {
            Some(QuantParams::PerTensor { scale, zero_point }) => (vec![*scale; cout], vec![*zero_point; cout]),
            Some(QuantParams::PerAxis { axis: 0, scales, zero_points }) if scales.len() == cout => {
                (scales.clone(), zero_points.clone())
            }
            _ => return Ok(false),
        };
        if zw.iter().any(|&z| z != 0) {
            return Ok(false);
        }
        let Some(TensorDataI8(wdata)) = i8_data(&w) else { return Ok(false) };
        let group = conv.group;
        let cin_g = wd[1];
        let Some(mut geom) = Self::geom(conv, &d, &od, cin_g) else { return Ok(false) };
        let depthwise = group > 1 && group == d[1] && cout == d[1] && cin_g == 1;
        if group == 0 || cout % group != 0 || d[1] != cin_g * group {
            return Ok(false);
        }
        if depthwise && xi != IntTy::U8 {
            return Ok(false);
        }
        let Some(epi) = QuantEpilogue::new(ep, &oty, sx, &sw, 1.0) else { return Ok(false) };
        let (kh, kw) = (wd[2], wd[3]);
        let bias_v: Vec<i32> = match &bias {
            Some(b) => match b.to_i64_vec() {
                Some(v) if v.len() == cout => v.into_iter().map(|x| x as i32).collect(),
                _ => return Ok(false),
            },
            None => vec![0; cout],
        };
        let bias_v = if epi.has_bias { bias_v } else { vec![0; cout] };
        // |sum (x - zx) * w| <= taps * 255 * 128 (activations differ from their zero point by at most 255).
        let bound = (kh * kw * cin_g) as f64 * 255.0 * 128.0;
        let rows_out = od[0] * od[2] * od[3];
        let mut kernels: Vec<(KernelSpec, usize)> = Vec::new();
        if depthwise {
            geom.cin = 1;
            let packed = micro::int8::pack_depthwise_i8(&wdata, cout, kh, kw);
            let main = MainOp::DepthwiseU8I8 { geom, zx, weights: Arc::new(packed) };
            let mut steps = vec![Step::AddChannelI32(bias_v)];
            steps.extend(epi.steps.iter().cloned());
            mark_bounded(&mut steps, bound);
            kernels.push((KernelSpec { main, epilogue: steps, store: epi.store, rows: rows_out, cols: cout }, 0));
        } else {
            // One GEMM per group over its input channels, writing its slice of output channels.
            let cout_g = cout / group;
            let k = kh * kw * cin_g;
            let (xor, zxe) = if xi == IntTy::I8 { (0x80u8, zx + 128) } else { (0, zx) };
            for gi in 0..group {
                // [cout][cin][kh][kw] -> [cout][kh][kw][cin]
                let wk = to_ohwi(&wdata, gi * cout_g..(gi + 1) * cout_g, cin_g, kh, kw);
                let packed = micro::int8::pack_weights_i8(&wk, cout_g, k);
                let range = gi * cout_g..(gi + 1) * cout_g;
                let corr: Vec<i32> = bias_v[range.clone()]
                    .iter()
                    .zip(&packed.col_sums)
                    .map(|(&b, &s)| b.wrapping_sub(zxe.wrapping_mul(s)))
                    .collect();
                let direct = group == 1 && xor == 0 && is_pointwise(&geom);
                let g_geom = ConvGeom { cin_offset: gi * cin_g, ..geom };
                let rows = if direct {
                    Rows::Direct { lda: d[1] }
                } else {
                    Rows::Im2col { geom: g_geom, pad: (zxe as u8), xor }
                };
                let main = MainOp::GemmU8I8 { rows, weights: Arc::new(packed) };
                let mut steps = vec![Step::AddChannelI32(corr)];
                steps.extend(slice_steps(&epi.steps, range.clone()));
                mark_bounded(&mut steps, bound);
                kernels.push((
                    KernelSpec { main, epilogue: steps, store: epi.store, rows: rows_out, cols: cout_g },
                    range.start,
                ));
            }
        }
        let input = self.in_layout(x, Layout::Nhwc, &name)?;
        let output = self.define(out, Layout::Nhwc);
        let many = kernels.len() > 1;
        for (gi, (spec, out_col)) in kernels.into_iter().enumerate() {
            let label = if many { format!("{name}.group{gi}") } else { name.clone() };
            self.push(&label, StepKind::Kernel { out_col, ld_out: cout, spec, input, residual: None, output });
        }
        Ok(true)
    }

    fn lower_qgemm(&mut self, id: NodeId, alpha: f32, trans_b: bool, ep: &[Epilogue]) -> Result<bool, JitError> {
        let node = self.g.node(id);
        let name = node.name.clone();
        let ins = node.inputs().to_vec();
        let out = Value::new(id, 0);
        let (Some(a), Some(bv)) = (ins.first().copied().flatten(), ins.get(1).copied().flatten()) else {
            return Ok(false);
        };
        let Some(b) = self.const_of(Some(bv)) else { return Ok(false) };
        if self.is_const(a) {
            return Ok(false);
        }
        let (at, bt, oty) = (self.types[&a].clone(), self.types[&bv].clone(), self.types[&out].clone());
        let (Some(ad), Some(bd)) = (dims(&at), dims(&bt)) else { return Ok(false) };
        if bd.len() != 2 || ad.is_empty() || !matches!(at.dtype, DType::U8 | DType::I8) || bt.dtype != DType::I8 {
            return Ok(false);
        }
        let Some((sa, za)) = per_tensor(&at.quant) else { return Ok(false) };
        let (k, n) = if trans_b { (bd[1], bd[0]) } else { (bd[0], bd[1]) };
        if ad[ad.len() - 1] != k {
            return Ok(false);
        }
        let m: usize = ad[..ad.len() - 1].iter().product();
        let (sw, zw) = match &bt.quant {
            Some(QuantParams::PerTensor { scale, zero_point }) => (vec![*scale; n], vec![*zero_point; n]),
            Some(QuantParams::PerAxis { axis, scales, zero_points })
                if scales.len() == n && *axis == if trans_b { 0 } else { 1 } =>
            {
                (scales.clone(), zero_points.clone())
            }
            _ => return Ok(false),
        };
        if zw.iter().any(|&z| z != 0) {
            return Ok(false);
        }
        let Some(TensorDataI8(bdata)) = i8_data(&b) else { return Ok(false) };
        let Some(epi) = QuantEpilogue::new(ep, &oty, sa, &sw, alpha) else { return Ok(false) };
        let bias_v: Vec<i32> = if epi.has_bias {
            match self.const_of(ins.get(2).copied().flatten()).and_then(|t| t.to_i64_vec()) {
                Some(v) if v.len() == n => v.into_iter().map(|x| x as i32).collect(),
                _ => return Ok(false),
            }
        } else {
            vec![0; n]
        };
        let wk: Vec<i8> = if trans_b { bdata } else { transpose_kn(&bdata, k, n) };
        let packed = micro::int8::pack_weights_i8(&wk, n, k);
        // i8 activations become u8 (sign bit flipped, zero point + 128) while rows are gathered:
        // the matrix is an NHWC "image" of m pixels with k channels and a 1x1 window.
        let (rows, zae) = if at.dtype == DType::I8 {
            let geom = ConvGeom {
                h: m,
                w: 1,
                c: k,
                oh: m,
                ow: 1,
                kh: 1,
                kw: 1,
                sh: 1,
                sw: 1,
                ph: 0,
                pw: 0,
                dh: 1,
                dw: 1,
                cin: k,
                cin_offset: 0,
            };
            (Rows::Im2col { geom, pad: 0, xor: 0x80 }, za + 128)
        } else {
            (Rows::Direct { lda: k }, za)
        };
        let corr: Vec<i32> =
            bias_v.iter().zip(&packed.col_sums).map(|(&b, &s)| b.wrapping_sub(zae.wrapping_mul(s))).collect();
        let mut steps = vec![Step::AddChannelI32(corr)];
        steps.extend(epi.steps);
        mark_bounded(&mut steps, k as f64 * 255.0 * 128.0);
        let spec = KernelSpec {
            main: MainOp::GemmU8I8 { rows, weights: Arc::new(packed) },
            epilogue: steps,
            store: epi.store,
            rows: m,
            cols: n,
        };
        let input = self.plain(a, &name)?;
        let output = self.define(out, Layout::Plain);
        self.push(
            &name,
            StepKind::Kernel { out_col: 0, ld_out: spec.cols, spec: spec.clone(), input, residual: None, output },
        );
        Ok(true)
    }

    fn lower_fgemm(&mut self, id: NodeId, alpha: f32, beta: f32, trans_b: bool) -> Result<bool, JitError> {
        let node = self.g.node(id);
        let name = node.name.clone();
        let ins = node.inputs().to_vec();
        let out = Value::new(id, 0);
        let (Some(a), Some(bv)) = (ins.first().copied().flatten(), ins.get(1).copied().flatten()) else {
            return Ok(false);
        };
        let Some(b) = self.const_of(Some(bv)) else { return Ok(false) };
        let (at, oty) = (self.types[&a].clone(), self.types[&out].clone());
        let (Some(ad), bd) = (dims(&at), b.shape().to_vec()) else { return Ok(false) };
        if bd.len() != 2 || ad.is_empty() || at.dtype != DType::F32 || b.dtype() != DType::F32 || self.is_const(a) {
            return Ok(false);
        }
        let is_gemm = matches!(node.op, Op::Gemm { .. });
        if is_gemm && ad.len() != 2 {
            return Ok(false);
        }
        let (k, n) = if trans_b { (bd[1], bd[0]) } else { (bd[0], bd[1]) };
        if ad[ad.len() - 1] != k {
            return Ok(false);
        }
        let m: usize = ad[..ad.len() - 1].iter().product();
        let Some(bdata) = b.as_f32() else { return Ok(false) };
        let wk: Vec<f32> = if trans_b { bdata.to_vec() } else { transpose_kn(bdata, k, n) };
        let mut steps = Vec::new();
        if alpha != 1.0 {
            steps.push(Step::ScaleToF32(vec![alpha; n]));
        }
        if is_gemm {
            if let Some(cv) = ins.get(2).copied().flatten() {
                let Some(c) = self.const_of(Some(cv)) else { return Ok(false) };
                let Some(cd) = c.as_f32() else { return Ok(false) };
                let shape = c.shape();
                let per_col = shape.iter().product::<usize>() == n && shape.last() == Some(&n);
                if !per_col {
                    return Ok(false);
                }
                if beta != 0.0 {
                    steps.push(Step::AddChannelF32(cd.iter().map(|v| beta * v).collect()));
                }
            }
        }
        let packed = micro::float::pack_weights_f32(&wk, n, k);
        let spec = KernelSpec {
            main: MainOp::GemmF32 { rows: Rows::Direct { lda: k }, weights: Arc::new(packed) },
            epilogue: steps,
            store: Store::F32,
            rows: m,
            cols: n,
        };
        let _ = oty;
        let input = self.plain(a, &name)?;
        let output = self.define(out, Layout::Plain);
        self.push(
            &name,
            StepKind::Kernel { out_col: 0, ld_out: spec.cols, spec: spec.clone(), input, residual: None, output },
        );
        Ok(true)
    }

    /// A float conv at `id` followed by the absorbed nodes `chain` (Relu, Clip, residual Add).
    fn lower_float_conv(&mut self, id: NodeId, chain: &[NodeId]) -> Result<(), JitError> {
        if !self.try_float_conv(id, chain)? {
            // Run the conv on the host and the absorbed nodes one by one.
            self.lower_host(id)?;
            for &c in chain {
                if !self.lower_node(c)? {
                    self.lower_host(c)?;
                }
            }
        }
        Ok(())
    }

    fn try_float_conv(&mut self, id: NodeId, chain: &[NodeId]) -> Result<bool, JitError> {
        let node = self.g.node(id);
        let Op::Conv(conv) = &node.op else { return Ok(false) };
        let name = node.name.clone();
        let ins = node.inputs().to_vec();
        let out = Value::new(id, 0);
        let (Some(x), Some(wv)) = (ins.first().copied().flatten(), ins.get(1).copied().flatten()) else {
            return Ok(false);
        };
        if self.is_const(x) {
            return Ok(false);
        }
        let Some(w) = self.const_of(Some(wv)) else { return Ok(false) };
        let (xt, oty) = (self.types[&x].clone(), self.types[&out].clone());
        let (Some(d), Some(od)) = (dims(&xt), dims(&oty)) else { return Ok(false) };
        let wd = w.shape().to_vec();
        let Some(wdata) = w.as_f32() else { return Ok(false) };
        if xt.dtype != DType::F32 || wd.len() != 4 {
            return Ok(false);
        }
        let bias = match ins.get(2).copied().flatten() {
            Some(b) => match self.const_of(Some(b)).and_then(|t| t.as_f32().map(|v| v.to_vec())) {
                Some(v) => Some(v),
                None => return Ok(false),
            },
            None => None,
        };
        let (cout, cin_g, kh, kw) = (wd[0], wd[1], wd[2], wd[3]);
        let Some(mut geom) = Self::geom(conv, &d, &od, cin_g) else { return Ok(false) };
        let group = conv.group;
        let depthwise = group > 1 && group == d[1] && cout == d[1] && cin_g == 1;
        if group == 0 || cout % group != 0 || d[1] != cin_g * group {
            return Ok(false);
        }
        let mut steps = Vec::new();
        if let Some(b) = bias {
            steps.push(Step::AddChannelF32(b));
        }
        let mut residual = None;
        let mut cur = out;
        for &c in chain {
            let n = self.g.node(c);
            match &n.op {
                Op::Unary(UnaryOp::Relu) => steps.push(Step::MaxF32(0.0)),
                Op::Clip { min, max } => {
                    steps.push(Step::MaxF32(*min));
                    steps.push(Step::MinF32(*max));
                }
                Op::Binary(BinaryOp::Add) => {
                    let i = n.inputs();
                    let other = if i.first().copied().flatten() == Some(cur) { i.get(1) } else { i.first() };
                    let Some(o) = other.copied().flatten() else { return Ok(false) };
                    residual = Some(o);
                    steps.push(Step::AddResidualF32);
                }
                _ => return Ok(false),
            }
            cur = Value::new(c, 0);
        }
        let rows_out = od[0] * od[2] * od[3];
        let mut kernels: Vec<(KernelSpec, usize)> = Vec::new();
        if depthwise {
            geom.cin = 1;
            let main =
                MainOp::DepthwiseF32 { geom, weights: Arc::new(micro::float::pack_depthwise_f32(wdata, cout, kh, kw)) };
            kernels.push((KernelSpec { main, epilogue: steps, store: Store::F32, rows: rows_out, cols: cout }, 0));
        } else {
            let cout_g = cout / group;
            let k = kh * kw * cin_g;
            for gi in 0..group {
                let wk = to_ohwi(wdata, gi * cout_g..(gi + 1) * cout_g, cin_g, kh, kw);
                let direct = group == 1 && is_pointwise(&geom);
                let g_geom = ConvGeom { cin_offset: gi * cin_g, ..geom };
                let rows =
                    if direct { Rows::Direct { lda: d[1] } } else { Rows::Im2col { geom: g_geom, pad: 0, xor: 0 } };
                let main = MainOp::GemmF32 { rows, weights: Arc::new(micro::float::pack_weights_f32(&wk, cout_g, k)) };
                let range = gi * cout_g..(gi + 1) * cout_g;
                let spec = KernelSpec {
                    main,
                    epilogue: slice_steps(&steps, range.clone()),
                    store: Store::F32,
                    rows: rows_out,
                    cols: cout_g,
                };
                kernels.push((spec, range.start));
            }
        }
        let input = self.in_layout(x, Layout::Nhwc, &name)?;
        let res_buf = match residual {
            Some(r) => Some(self.in_layout(r, Layout::Nhwc, &name)?),
            None => None,
        };
        let output = self.define(cur, Layout::Nhwc);
        let mut label = name;
        for &c in chain {
            label.push('+');
            label.push_str(&self.g.node(c).name);
        }
        let many = kernels.len() > 1;
        for (gi, (spec, out_col)) in kernels.into_iter().enumerate() {
            let l = if many { format!("{label}.group{gi}") } else { label.clone() };
            self.push(&l, StepKind::Kernel { out_col, ld_out: cout, spec, input, residual: res_buf, output });
        }
        Ok(true)
    }

    fn lower_global_avg(&mut self, id: NodeId) -> Result<bool, JitError> {
        let node = self.g.node(id);
        let name = node.name.clone();
        let Some(x) = node.inputs().first().copied().flatten() else { return Ok(false) };
        let out = Value::new(id, 0);
        let (xt, oty) = (self.types[&x].clone(), self.types[&out].clone());
        let Some(d) = dims(&xt) else { return Ok(false) };
        if d.len() != 4 || self.is_const(x) || d[1] == 0 {
            return Ok(false);
        }
        let (n, c, hw) = (d[0], d[1], d[2] * d[3]);
        let (main, steps, store) = match node.op {
            Op::GlobalAveragePool if xt.dtype == DType::F32 => {
                (MainOp::GlobalSumF32 { hw }, vec![Step::DivF32(hw as f32)], Store::F32)
            }
            Op::QGlobalAveragePool => {
                let (Some((sx, zx)), Some((sy, zy))) = (per_tensor(&xt.quant), per_tensor(&oty.quant)) else {
                    return Ok(false);
                };
                let (Some(ii), Some(io)) = (int_ty(xt.dtype), int_ty(oty.dtype)) else { return Ok(false) };
                let (lo, hi) = if io == IntTy::U8 { (0, 255) } else { (-128, 127) };
                let mult = numerics::global_average_multiplier(sx, sy, hw);
                let mut steps = vec![
                    Step::AddChannelI32(vec![(zx as i64 * hw as i64).wrapping_neg() as i32; c]),
                    Step::ScaleToF32(vec![mult; c]),
                    Step::RoundToInt { zp: zy, lo, hi, bounded: false },
                ];
                mark_bounded(&mut steps, hw as f64 * 255.0);
                let store = if io == IntTy::U8 { Store::U8 } else { Store::I8 };
                (MainOp::GlobalSumU8 { hw, signed: ii == IntTy::I8 }, steps, store)
            }
            _ => return Ok(false),
        };
        let spec = KernelSpec { main, epilogue: steps, store, rows: n, cols: c };
        let input = self.in_layout(x, Layout::Nhwc, &name)?;
        let output = self.define(out, Layout::Nhwc);
        self.push(
            &name,
            StepKind::Kernel { out_col: 0, ld_out: spec.cols, spec: spec.clone(), input, residual: None, output },
        );
        Ok(true)
    }
}

struct TensorDataI8(Vec<i8>);

fn i8_data(t: &Tensor) -> Option<TensorDataI8> {
    match t.data() {
        qforge_ir::TensorData::I8(v) => Some(TensorDataI8(v.clone())),
        _ => None,
    }
}

/// The epilogue of a quantized kernel in codegen steps (after the bias/zero-point add).
struct QuantEpilogue {
    has_bias: bool,
    steps: Vec<Step>,
    store: Store,
}

impl QuantEpilogue {
    /// `None` when the IR epilogue has a form no kernel implements (a clamp on the raw
    /// accumulator, per-axis output parameters).
    fn new(ep: &[Epilogue], oty: &TensorType, sx: f32, sw: &[f32], alpha: f32) -> Option<QuantEpilogue> {
        let sx = alpha * sx;
        let mut has_bias = false;
        let mut conv: Option<bool> = None; // Some(true): requant, Some(false): dequant
        let (mut lo, mut hi) = (i64::MIN, i64::MAX);
        for s in ep {
            match s {
                Epilogue::Bias if conv.is_none() && !has_bias => has_bias = true,
                Epilogue::Requant if conv.is_none() => conv = Some(true),
                Epilogue::Dequant if conv.is_none() => conv = Some(false),
                Epilogue::Clamp { lo: l, hi: h } if conv.is_some() => {
                    lo = lo.max(*l);
                    hi = hi.min((*h).max(*l));
                }
                _ => return None,
            }
        }
        match conv? {
            true => {
                let (sy, zy) = per_tensor(&oty.quant)?;
                let (dlo, dhi) = oty.dtype.int_range()?;
                let store = match oty.dtype {
                    DType::U8 => Store::U8,
                    DType::I8 => Store::I8,
                    _ => return None,
                };
                let lo = lo.max(dlo).min(dhi);
                let hi = hi.min(dhi).max(lo);
                let m: Vec<f32> = sw.iter().map(|&s| numerics::requant_multiplier(sx, s, sy)).collect();
                Some(QuantEpilogue {
                    has_bias,
                    steps: vec![
                        Step::ScaleToF32(m),
                        Step::RoundToInt { zp: zy, lo: lo as i32, hi: hi as i32, bounded: false },
                    ],
                    store,
                })
            }
            false => {
                if oty.dtype != DType::F32 {
                    return None;
                }
                let mut steps = vec![Step::ScaleToF32(sw.iter().map(|&s| sx * s).collect())];
                if lo != i64::MIN {
                    steps.push(Step::MaxF32(lo as f32));
                }
                if hi != i64::MAX {
                    steps.push(Step::MinF32(hi as f32));
                }
                Some(QuantEpilogue { has_bias, steps, store: Store::F32 })
            }
        }
    }
}

/// `steps` restricted to the output channels `range` (per-channel arrays sliced).
fn slice_steps(steps: &[Step], range: std::ops::Range<usize>) -> Vec<Step> {
    steps
        .iter()
        .map(|st| match st {
            Step::AddChannelI32(v) => Step::AddChannelI32(v[range.clone()].to_vec()),
            Step::ScaleToF32(v) => Step::ScaleToF32(v[range.clone()].to_vec()),
            Step::AddChannelF32(v) => Step::AddChannelF32(v[range.clone()].to_vec()),
            other => other.clone(),
        })
        .collect()
}

/// Conv weights `[cout][cin_g][kh][kw]` for the output channels `oc` as GEMM rows in im2col
/// order: `[oc][kh][kw][cin_g]`.
fn to_ohwi<T: Copy + Default>(w: &[T], oc: std::ops::Range<usize>, cin_g: usize, kh: usize, kw: usize) -> Vec<T> {
    let k = kh * kw * cin_g;
    let mut out = vec![T::default(); oc.len() * k];
    for (o, c) in oc.enumerate() {
        for ci in 0..cin_g {
            for y in 0..kh {
                for x in 0..kw {
                    out[o * k + (y * kw + x) * cin_g + ci] = w[((c * cin_g + ci) * kh + y) * kw + x];
                }
            }
        }
    }
    out
}

/// A `[k][n]` matrix as `[n][k]` (the packers take one row per output column).
fn transpose_kn<T: Copy + Default>(b: &[T], k: usize, n: usize) -> Vec<T> {
    let mut t = vec![T::default(); n * k];
    for kk in 0..k {
        for j in 0..n {
            t[j * k + kk] = b[kk * n + j];
        }
    }
    t
}

/// Whether a convolution reads each output pixel's input pixel and nothing else (1x1, stride 1,
/// no padding), so its NHWC input already is the GEMM's left operand.
fn is_pointwise(g: &ConvGeom) -> bool {
    g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0 && g.oh == g.h && g.ow == g.w
}
