//! Lowering: an optimized graph with concrete input shapes becomes a list of steps over buffers.
//! Each node becomes a JIT kernel ([`KernelSpec`] or an element-wise step), an alias of its input
//! (reshape and flatten when the bytes already have the right order), a layout conversion, or,
//! for an op no kernel covers, a host step that runs the reference interpreter on that one node
//! (reported with the reason, never silent).
//!
//! Layouts: 4-D activations that convolutions and pooling touch are NHWC; everything else is the
//! graph's own row-major ("plain") order. A conversion step is inserted where a consumer needs
//! the other layout; a 4-D tensor whose `H * W` or `C` is 1 has one byte order for both.
//!
//! Float convolutions and matrix products with a constant right operand absorb what follows
//! them when their result has no other use: ReLU, Clip and a same-shape residual Add become
//! epilogue steps (and for a matrix product a bias added along the last axis), so ResNet's
//! `conv -> add -> relu` and a linear layer's `matmul -> add` are one kernel each.
//!
//! This file is the driver: concrete types, the walk over the schedule, buffers and layouts, and
//! the dispatch of each node to its kernel family, one file each:
//!
//! * `conv.rs`: float and quantized convolutions, GEMMs and matrix products, their weight packing
//!   and the fusion groups;
//! * `dynamic.rs`: dynamic quantization chains (quantize, integer matmul, cast, scale) as one step;
//! * `elementwise.rs`: quantize, dequantize, quantized add, float add and clamp, unary
//!   activations, casts;
//! * `pool.rs`: max, average and global average pooling;
//! * `rows.rs`: softmax, layer norm, per-channel and last-axis constants, hard sigmoid and the
//!   broadcast multiply of a squeeze-and-excitation gate;
//! * `spatial.rs`: resize and pad as gathers in the input's layout;
//! * `movement.rs`: reshape aliases, strided views (transpose, slice, gather at constant
//!   indices), concatenation, layout conversions;
//! * `host.rs`: host steps (the interpreter on one node) and constant outputs.
//!
//! A family function returns `Ok(())` when it lowered the node, or `Skip::Host` with the
//! reason no kernel covers it (before it has emitted anything), and the driver then makes the
//! node a host step.

mod conv;
mod dynamic;
mod elementwise;
mod host;
mod movement;
mod pool;
mod rows;
mod spatial;
mod tables;

use crate::emit::elementwise::{Elementwise, IntTy};
use crate::micro::rowops::{ReduceKind, RowOp};
use crate::micro::{self, ConvGeom};
use crate::spec::KernelSpec;
use crate::JitError;
use qforge_ir::limits::{self, tensor_bytes, Allocation};
use qforge_ir::{infer, BinaryOp, DType, Graph, NodeId, Op, QuantParams, Tensor, TensorType, UnaryOp, Value};
use std::collections::{HashMap, HashSet};
use std::fmt::Write;
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
        op: RowOp,
        input: usize,
        /// A second input ([`crate::micro::rowops::RowKind::GateMul`]'s gate).
        input2: Option<usize>,
        output: usize,
        units: usize,
    },
    /// One node run by the reference interpreter on plain tensors; `reason` says why no kernel
    /// covers it.
    Host {
        op: Op,
        inputs: Vec<HostArg>,
        outputs: Vec<(usize, TensorType)>,
        reason: String,
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
    /// Buffers of the graph outputs (plain layout) with their concrete types, taps excluded.
    pub outputs: Vec<(usize, TensorType)>,
    /// Observation taps (the last graph outputs, see [`lower`]): each one's buffer in the layout
    /// it was computed in, its concrete type, and whether that layout is channels-last.
    pub taps: Vec<(usize, TensorType, bool)>,
    /// Ops run by the interpreter, with their counts.
    pub host_ops: Vec<(String, usize)>,
}

impl StepKind {
    /// The kind's name as reports show it.
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Kernel { .. } => "kernel",
            StepKind::Elementwise { .. } => "elementwise",
            StepKind::MaxPool { .. } => "max_pool",
            StepKind::Convert { .. } => "layout",
            StepKind::Concat { .. } => "concat",
            StepKind::AvgPool { .. } => "avg_pool",
            StepKind::Rows { .. } => "rows",
            StepKind::Host { .. } => "host",
        }
    }
}

/// `b3` for buffer 3.
fn buf_name(b: usize) -> String {
    format!("b{b}")
}

/// A resize or pad plan in one line: the kind, dims and the per-axis taps' shape.
fn describe_plan(p: &crate::micro::rowops::SpatialPlan) -> String {
    use crate::micro::rowops::SpatialPlan;
    use qforge_ir::interp::resize::Taps;
    let taps = |t: &Option<Vec<Taps>>| match t {
        None => "same".to_string(),
        Some(v) => {
            let k = v.iter().map(|t| if let Taps::Weighted(w) = t { w.len() } else { 1 }).max().unwrap_or(0);
            format!("{}x{k} taps", v.len())
        }
    };
    match p {
        SpatialPlan::Resize { dtype, in_dims, out_dims, h, w, .. } => {
            format!(" resize {} {in_dims:?}->{out_dims:?} h {} w {}", dtype.name(), taps(h), taps(w))
        }
        SpatialPlan::Pad { elem, in_dims, out_dims, fill, .. } => {
            format!(" pad {elem}B {in_dims:?}->{out_dims:?} fill {fill:#x}")
        }
    }
}

fn type_str(t: &TensorType) -> String {
    format!("{}{:?}", t.dtype.name(), t.shape.as_fixed().unwrap_or_default())
}

impl LoweredStep {
    /// One deterministic line: the kind, the node name(s), what the step computes and the
    /// buffers it reads and writes (`b<index>`), e.g.
    /// `kernel /conv/Conv: gemm_f32(im2col 3x3 s1) 64x8 k=27 [add_f32] -> f32; b2 -> b3 cols 0..8 of 8`.
    pub fn describe(&self) -> String {
        let mut s = format!("{} {}: ", self.kind.name(), self.name);
        let bufs = |v: &[usize]| v.iter().map(|&b| buf_name(b)).collect::<Vec<_>>().join(", ");
        let _ = match &self.kind {
            StepKind::Kernel { spec, input, residual, output, out_col, ld_out } => {
                let res = residual.map(|r| format!(" + residual {}", buf_name(r))).unwrap_or_default();
                write!(
                    s,
                    "{}; {}{res} -> {} cols {out_col}..{} of {ld_out}",
                    spec.describe(),
                    buf_name(*input),
                    buf_name(*output),
                    out_col + spec.cols
                )
            }
            StepKind::Elementwise { op, inputs, output, len } => {
                write!(s, "{op:?} x{len}; {} -> {}", bufs(inputs), buf_name(*output))
            }
            StepKind::MaxPool { geom: g, dtype, input, output } => write!(
                s,
                "{} {}x{} s{} p{} {}x{}x{} -> {}x{}; {} -> {}",
                dtype.name(),
                g.kh,
                g.kw,
                g.sh,
                g.ph,
                g.h,
                g.w,
                g.c,
                g.oh,
                g.ow,
                buf_name(*input),
                buf_name(*output)
            ),
            StepKind::Convert { to_nhwc, n, c, hw, elem, input, output } => write!(
                s,
                "{} n={n} c={c} hw={hw} elem={elem}; {} -> {}",
                if *to_nhwc { "nchw->nhwc" } else { "nhwc->nchw" },
                buf_name(*input),
                buf_name(*output)
            ),
            StepKind::Concat { parts, output, outer, stride } => {
                let p: Vec<String> = parts.iter().map(|&(b, chunk)| format!("{} ({chunk} B)", buf_name(b))).collect();
                write!(s, "{outer} blocks of {stride} B from {} -> {}", p.join(", "), buf_name(*output))
            }
            StepKind::AvgPool { geom: a, input, output } => {
                let g = &a.geom;
                write!(
                    s,
                    "f32 {}x{} s{} p{} end pads {},{} include_pad={} {}x{}x{} -> {}x{}; {} -> {}",
                    g.kh,
                    g.kw,
                    g.sh,
                    g.ph,
                    a.pe_h,
                    a.pe_w,
                    a.include_pad,
                    g.h,
                    g.w,
                    g.c,
                    g.oh,
                    g.ow,
                    buf_name(*input),
                    buf_name(*output)
                )
            }
            StepKind::Rows { op, input, input2, output, units } => write!(
                s,
                "{:?}{}{} n={} inner={} consts={} index={} units={units}; {}{} -> {}",
                op.kind,
                op.plan.as_deref().map(describe_plan).unwrap_or_default(),
                if op.epilogue.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", crate::spec::describe_steps(&op.epilogue))
                },
                op.n,
                op.inner,
                op.scale.len() + op.bias.len(),
                if !op.lut.is_empty() {
                    format!("[{} entries]", op.lut.len())
                } else if op.index.len() > 32 {
                    format!("[{} entries]", op.index.len())
                } else {
                    format!("{:?}", op.index)
                },
                buf_name(*input),
                input2.map(|b| format!(", {}", buf_name(b))).unwrap_or_default(),
                buf_name(*output)
            ),
            StepKind::Host { op, inputs, outputs, reason } => {
                let ins: Vec<String> = inputs
                    .iter()
                    .map(|a| match a {
                        HostArg::Missing => "-".to_string(),
                        HostArg::Buffer(b, t) => format!("{} {}", buf_name(*b), type_str(t)),
                        HostArg::Const(_, t) => format!("const {}", type_str(t)),
                    })
                    .collect();
                let outs: Vec<String> =
                    outputs.iter().map(|(b, t)| format!("{} {}", buf_name(*b), type_str(t))).collect();
                write!(s, "{} ({reason}); [{}] -> [{}]", op.name(), ins.join(", "), outs.join(", "))
            }
        };
        s
    }
}

impl Lowered {
    /// The whole lowering as deterministic text: inputs, steps (one [`LoweredStep::describe`]
    /// line each), outputs, host ops and buffer sizes.
    pub fn describe(&self) -> String {
        let io = |v: &[(usize, TensorType)]| {
            v.iter().map(|(b, t)| format!("{} {}", buf_name(*b), type_str(t))).collect::<Vec<_>>().join(", ")
        };
        let mut s = format!("inputs: {}\n", io(&self.inputs));
        for st in &self.steps {
            let _ = writeln!(s, "  {}", st.describe());
        }
        let _ = writeln!(s, "outputs: {}", io(&self.outputs));
        if !self.host_ops.is_empty() {
            let h: Vec<String> = self.host_ops.iter().map(|(o, n)| format!("{o} x{n}")).collect();
            let _ = writeln!(s, "host ops: {}", h.join(", "));
        }
        let sizes: Vec<String> = self.buffers.iter().map(|b| b.bytes.to_string()).collect();
        let _ = writeln!(s, "buffer bytes: [{}]", sizes.join(", "));
        s
    }
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

/// Why a family function did not lower a node: no kernel covers it (the node becomes a host
/// step, with this reason), or lowering failed.
enum Skip {
    Host(String),
    Fail(JitError),
}

impl From<JitError> for Skip {
    fn from(e: JitError) -> Skip {
        Skip::Fail(e)
    }
}

/// What a family function returns.
type Lw<T = ()> = Result<T, Skip>;

/// No kernel covers the node, because `why`.
fn host<T>(why: impl Into<String>) -> Lw<T> {
    Err(Skip::Host(why.into()))
}

/// The value, or no kernel covers the node because `why`.
fn need<T>(v: Option<T>, why: &str) -> Lw<T> {
    v.ok_or_else(|| Skip::Host(why.to_string()))
}

/// `Ok` when `ok`, or no kernel covers the node because `why`.
fn ensure(ok: bool, why: &str) -> Lw {
    if ok {
        Ok(())
    } else {
        host(why)
    }
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

/// A 2-D sliding window (convolution or pooling) over an NCHW input `d` producing `od`, as a
/// [`ConvGeom`] with `cin` input channels per group.
fn window_geom(
    kernel: &[usize],
    strides: &[usize],
    pads: &[usize],
    dilations: &[usize],
    d: &[usize],
    od: &[usize],
    cin: usize,
) -> Option<ConvGeom> {
    if kernel.len() != 2 || strides.len() < 2 || pads.len() < 2 || dilations.len() < 2 || d.len() != 4 || od.len() != 4
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

/// The node being lowered: its name, inputs, first result and that result's concrete type.
struct At<'g> {
    op: &'g Op,
    name: String,
    ins: Vec<Option<Value>>,
    out: Value,
    oty: TensorType,
}

impl At<'_> {
    /// Input `i` if it is present.
    fn input(&self, i: usize) -> Option<Value> {
        self.ins.get(i).copied().flatten()
    }
}

struct Lowerer<'g> {
    g: &'g Graph,
    /// The size limit on every tensor, constant and packed weight copy (`--max-tensor-bytes`).
    limit: u128,
    types: HashMap<Value, TensorType>,
    vals: HashMap<Value, Vinfo>,
    /// Converted copies: (value, layout) -> buffer.
    converted: HashMap<(Value, Layout), usize>,
    buffers: Vec<Buf>,
    steps: Vec<LoweredStep>,
    host: HashMap<String, usize>,
    users: HashMap<Value, usize>,
    outputs: HashSet<Value>,
    /// Whether 3x3 stride-1 f32 convolutions may run as Winograd F(2x2, 3x3) (the native
    /// microkernels on a CPU with AVX-512F and FMA; see [`crate::micro::winograd`]).
    winograd: bool,
    /// The byte-table regions a quantized kernel absorbs as its last epilogue step, by root.
    fused_tables: HashMap<NodeId, tables::TableRegion>,
    /// Strided views whose result only another view reads ([`movement::PendingView`]).
    views: HashMap<Value, movement::PendingView>,
    /// Steps a later view made redundant (it reads their source), dropped at the end.
    dead_steps: HashSet<usize>,
}

/// Lowers `g` for inputs of the given concrete types (already checked against the graph).
///
/// Every constant and result is checked against `max_tensor_bytes` in schedule order, as the
/// interpreter checks them, before any buffer is planned; so are the JIT's packed weight copies
/// and the temporaries of the nodes the interpreter runs as host steps. An oversized one is
/// [`JitError::Ir`] with the interpreter's [`qforge_ir::IrError::TooLarge`]. `winograd`: 3x3
/// stride-1 f32 convolutions of enough channels run as Winograd F(2x2, 3x3).
///
/// The last `taps` graph outputs are observation taps: like any output they are materialized
/// (never fused away), but they are not converted to plain order nor kept to the end of the run;
/// the program hands each one over, in the layout it was computed in, right after the step that
/// wrote it ([`crate::program::Program::run_tapped`]).
pub fn lower(
    g: &Graph,
    input_types: &[TensorType],
    max_tensor_bytes: u128,
    winograd: bool,
    taps: usize,
) -> Result<Lowered, JitError> {
    let (mut lw, order) = Lowerer::new(g, input_types, max_tensor_bytes)?;
    lw.winograd = winograd;
    for &id in &order {
        for v in g.node(id).inputs().iter().flatten() {
            *lw.users.entry(*v).or_default() += 1;
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
    // element-wise regions over one byte value become tables first; their nodes (but the
    // root, where the table runs) join no other group
    let mut tables = lw.table_regions(&order);
    let ((mut absorbed, groups), fused) = lw.fusion_groups(&order, &tables);
    for r in tables.values() {
        absorbed.extend(r.nodes[..r.nodes.len().saturating_sub(1)].iter().copied());
    }
    // a region a kernel absorbs runs in that kernel's epilogue, not as a step of its own
    for root in fused {
        if let Some(r) = tables.remove(&root) {
            lw.fused_tables.insert(root, r);
        }
    }
    for &id in &order {
        lw.check_results(id)?;
        let node = g.node(id);
        if matches!(node.op, Op::Input | Op::Const(_)) || absorbed.contains(&id) {
            continue;
        }
        if let Some(r) = tables.get(&id) {
            lw.lower_table_region(r)?;
            continue;
        }
        if let Some((main, chain)) = groups.get(&id) {
            if matches!(g.node(*main).op, Op::Conv(_)) {
                lw.lower_float_conv(*main, chain)?;
            } else if matches!(g.node(*main).op, Op::QConv { .. }) {
                lw.lower_qconv_chain(*main, chain)?;
            } else if matches!(g.node(*main).op, Op::DynamicQuantize) {
                lw.lower_dynamic_chain(*main, chain)?;
            } else if matches!(g.node(*main).op, Op::Binary(qforge_ir::BinaryOp::Div)) {
                lw.lower_gelu(*main, chain)?;
            } else {
                lw.lower_float_matmul(*main, chain)?;
            }
            continue;
        }
        lw.lower_or_host(id)?;
    }
    let mut outputs = Vec::new();
    let mut tapped = Vec::new();
    let real = g.outputs().len().checked_sub(taps).ok_or_else(|| JitError::Lower {
        node: String::new(),
        msg: format!("{taps} taps of a graph with {} outputs", g.outputs().len()),
    })?;
    for (k, o) in g.outputs().iter().enumerate() {
        if !lw.vals.contains_key(&o.value) {
            lw.const_output(o.value, &o.name);
        }
        if k >= real {
            let info = lw.vals.get(&o.value).ok_or_else(|| err(&o.name, "a tapped value has no buffer"))?;
            let channels_last = info.layout == Layout::Nhwc && !layout_free(&info.ty);
            tapped.push((info.buf, info.ty.clone(), channels_last));
            continue;
        }
        let buf = lw.plain(o.value, &o.name)?;
        let ty = lw.vals[&o.value].ty.clone();
        outputs.push((buf, ty));
    }
    let mut host_ops: Vec<(String, usize)> = lw.host.into_iter().collect();
    host_ops.sort();
    let dead = lw.dead_steps;
    let steps = lw.steps.into_iter().enumerate().filter(|(i, _)| !dead.contains(i)).map(|(_, s)| s).collect();
    Ok(Lowered { buffers: lw.buffers, steps, inputs, outputs, taps: tapped, host_ops })
}

/// Checks every constant and result of `g` (for inputs of the given concrete types) against
/// `max_tensor_bytes` in schedule order, exactly as the interpreter does while it runs `g`, and
/// for the f16/bf16 nodes the JIT computes in f32 ([`crate::widen::is_widened`]) their f32
/// copies, which are the interpreter's temporaries for them. The JIT checks the graph it was
/// given with this before widening it (which renames nodes), so an oversized model gets the
/// interpreter's message.
pub fn check_sizes(g: &Graph, input_types: &[TensorType], max_tensor_bytes: u128) -> Result<(), JitError> {
    let (lw, order) = Lowerer::new(g, input_types, max_tensor_bytes)?;
    for &id in &order {
        lw.check_results(id)?;
        let node = g.node(id);
        if crate::widen::is_widened(node) {
            lw.check_temporaries(id)?;
        }
    }
    Ok(())
}

impl<'g> Lowerer<'g> {
    /// A lowerer for `g` with the concrete type of every value, and the schedule.
    fn new(g: &'g Graph, input_types: &[TensorType], limit: u128) -> Result<(Lowerer<'g>, Vec<NodeId>), JitError> {
        let order = g.schedule().map_err(|e| JitError::Lower { node: String::new(), msg: e.to_string() })?;
        let mut lw = Lowerer {
            g,
            limit,
            types: HashMap::new(),
            vals: HashMap::new(),
            converted: HashMap::new(),
            buffers: Vec::new(),
            steps: Vec::new(),
            host: HashMap::new(),
            users: HashMap::new(),
            outputs: g.outputs().iter().map(|o| o.value).collect(),
            winograd: false,
            fused_tables: HashMap::new(),
            views: HashMap::new(),
            dead_steps: HashSet::new(),
        };
        lw.concrete_types(&order, input_types)?;
        Ok((lw, order))
    }

    /// The concrete type of every value, in schedule order, from the input types.
    fn concrete_types(&mut self, order: &[NodeId], input_types: &[TensorType]) -> Result<(), JitError> {
        let g = self.g;
        for (&id, ty) in g.inputs().iter().zip(input_types) {
            self.types.insert(Value::new(id, 0), ty.clone());
        }
        for &id in order {
            let node = g.node(id);
            match &node.op {
                Op::Input => continue,
                Op::Const(t) => {
                    self.types.insert(Value::new(id, 0), node.outputs[0].with_shape(t.ir_shape()));
                }
                op => {
                    let ins: Vec<Option<&TensorType>> =
                        node.inputs().iter().map(|v| v.and_then(|v| self.types.get(&v))).collect();
                    let outs = infer::infer(op, &ins, Some(&node.outputs)).map_err(|m| err(&node.name, m))?;
                    for (p, t) in outs.into_iter().enumerate() {
                        if !t.shape.is_fixed() {
                            return Err(err(&node.name, "a result shape is not fixed by the input shapes"));
                        }
                        self.types.insert(Value::new(id, p), t);
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks node `id`'s constant or results against the size limit, as the interpreter does
    /// before it evaluates the node.
    fn check_results(&self, id: NodeId) -> Result<(), JitError> {
        let node = self.g.node(id);
        match &node.op {
            Op::Input => Ok(()),
            Op::Const(t) => self.check_size(&node.name, Allocation::Constant, tensor_bytes(t.dtype(), t.shape())),
            _ => {
                for p in 0..node.outputs.len() {
                    let ty = &self.types[&Value::new(id, p)];
                    let d = dims(ty).unwrap_or_default();
                    self.check_size(&node.name, Allocation::Result, tensor_bytes(ty.dtype, &d))?;
                }
                Ok(())
            }
        }
    }

    /// The interpreter's temporaries for node `id` (see [`qforge_ir::interp::temporary_bytes`])
    /// against the size limit.
    fn check_temporaries(&self, id: NodeId) -> Result<(), JitError> {
        let node = self.g.node(id);
        let in_types: Vec<Option<&TensorType>> =
            node.inputs().iter().map(|v| v.and_then(|v| self.types.get(&v))).collect();
        let out_types: Vec<TensorType> =
            (0..node.outputs.len()).filter_map(|p| self.types.get(&Value::new(id, p)).cloned()).collect();
        let bytes = qforge_ir::interp::temporary_bytes(&node.op, &in_types, &out_types);
        self.check_size(&node.name, Allocation::Temporary, bytes)
    }

    /// `bytes` of `what` for node `name` against the size limit.
    fn check_size(&self, name: &str, what: Allocation, bytes: u128) -> Result<(), JitError> {
        Ok(limits::check(name, what, bytes, self.limit)?)
    }

    /// Lowers node `id` to a kernel, or to a host step with the reason none covers it.
    fn lower_or_host(&mut self, id: NodeId) -> Result<(), JitError> {
        match self.lower_node(id) {
            Ok(()) => Ok(()),
            Err(Skip::Host(reason)) => self.lower_host(id, reason),
            Err(Skip::Fail(e)) => Err(e),
        }
    }

    /// Lowers one node to JIT code or an alias: the dispatch to the kernel families.
    fn lower_node(&mut self, id: NodeId) -> Lw {
        let node = self.g.node(id);
        let out = Value::new(id, 0);
        let oty = need(self.ty(out).cloned(), "the result has no concrete type")?;
        // Every non-constant input must already have a buffer.
        for v in node.inputs().iter().flatten() {
            if !self.is_const(*v) && !self.vals.contains_key(v) {
                return host("an input has no buffer");
            }
        }
        let n = At { op: &node.op, name: node.name.clone(), ins: node.inputs().to_vec(), out, oty };
        let f32_out = n.oty.dtype == DType::F32;
        match &node.op {
            Op::Flatten { .. }
            | Op::Reshape { .. }
            | Op::ReshapeDyn { .. }
            | Op::Identity
            | Op::Squeeze { .. }
            | Op::Unsqueeze { .. } => self.alias(&n),
            Op::Transpose { perm } => self.transpose(&n, perm),
            Op::Slice { starts, ends, axes, steps } => self.slice(&n, starts, ends, axes, steps),
            Op::Gather { axis } => self.gather(&n, *axis),
            Op::Expand { .. } | Op::ExpandDyn { .. } => self.expand(&n),
            Op::Where if f32_out => self.where_f32(&n),
            Op::Binary(op @ (BinaryOp::And | BinaryOp::Or)) => self.broadcast_bool(&n, *op),
            Op::QConv { conv, epilogue } => self.qconv(&n, conv, epilogue, &[]),
            Op::QGemm { alpha, trans_a: false, trans_b, epilogue } => self.qgemm(&n, *alpha, *trans_b, epilogue),
            Op::QMatMul { epilogue } if self.is_const_input(id, 1) => self.qgemm(&n, 1.0, false, epilogue),
            Op::QMatMul { epilogue } => self.qmatmul_act(&n, epilogue),
            Op::Gemm { alpha, beta, trans_a: false, trans_b } => self.fgemm(&n, *alpha, *beta, *trans_b, &[]),
            Op::MatMul if self.is_const_input(id, 1) => self.fgemm(&n, 1.0, 0.0, false, &[]),
            Op::MatMul => self.matmul_f32(&n),
            Op::Conv(_) => Ok(self.lower_float_conv(id, &[])?),
            Op::QGlobalAveragePool | Op::GlobalAveragePool => self.global_avg(&n),
            Op::MaxPool(p) => self.max_pool(&n, p),
            Op::Concat { axis } | Op::QConcat { axis } => self.concat(&n, *axis),
            Op::AveragePool(p) if f32_out => self.avg_pool(&n, p),
            Op::QAdd => self.qadd(&n).or_else(|e| match e {
                Skip::Host(_) => self.broadcast_qadd(&n),
                fail => Err(fail),
            }),
            Op::Quantize => self.quantize(&n),
            Op::Dequantize => self.dequantize(&n),
            Op::Unary(UnaryOp::Relu) | Op::Clip { .. } if f32_out => self.clamp(&n),
            Op::Unary(u) if f32_out && *u != UnaryOp::Not => self.unary(&n, *u),
            Op::Cast { to } => self.cast(&n, *to),
            Op::Softmax { axis } | Op::LogSoftmax { axis } if f32_out => self.softmax(&n, *axis),
            Op::LayerNorm { axis, epsilon } if f32_out => self.layer_norm(&n, *axis, *epsilon),
            Op::GroupNorm { groups, epsilon } if f32_out => self.group_norm(&n, *groups, *epsilon),
            Op::Binary(BinaryOp::Add)
                if f32_out && n.ins.iter().flatten().all(|v| self.types[v].shape == n.oty.shape) =>
            {
                self.add_f32(&n).or_else(|e| self.or_broadcast(e, &n, BinaryOp::Add))
            }
            Op::Binary(BinaryOp::Mul) if f32_out && n.ins.iter().flatten().all(|v| !self.is_const(*v)) => {
                self.gate_mul(&n).or_else(|e| self.or_broadcast(e, &n, BinaryOp::Mul))
            }
            Op::HardSigmoid { alpha, beta } if f32_out => self.hard_sigmoid(&n, *alpha, *beta),
            Op::ReduceSum { axes, .. } if f32_out => self.reduce(&n, axes, ReduceKind::Sum),
            Op::ReduceMean { axes, .. } if f32_out => self.reduce(&n, axes, ReduceKind::Mean),
            Op::ReduceMax { axes, .. } if f32_out => self.reduce(&n, axes, ReduceKind::Max),
            Op::Resize(a) => self.resize(&n, a),
            Op::Requantize => self.requantize(&n),
            Op::Pad { mode, pads, computed, value } => {
                // computed pads resolved from this program's concrete input shapes
                let ins: Vec<Option<&TensorType>> =
                    node.inputs().iter().map(|v| v.and_then(|v| self.types.get(&v))).collect();
                let pads =
                    qforge_ir::infer::fixed_pads(pads, computed, &ins).map_err(|e| Skip::Fail(err(&node.name, e)))?;
                self.pad(&n, *mode, &pads, *value)
            }
            Op::Binary(op @ (BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div)) if f32_out => {
                self.channel_binary(&n, *op).or_else(|e| self.or_broadcast(e, &n, *op))
            }
            Op::Gemm { trans_a: true, .. } | Op::QGemm { trans_a: true, .. } => host("a transposed left operand"),
            // the canonicalization stage (`qforge_passes::conv_transpose`) leaves only these
            Op::ConvTranspose(_) => host(
                "no JIT kernel for conv_transpose (it runs as a convolution when rewritten: a constant weight, \
                 1 or 2 spatial dims, --opt-level 1 and up)",
            ),
            op => host(format!("no JIT kernel for {} producing {}", op.name(), n.oty.dtype.name())),
        }
    }

    /// The general broadcasting kernel for an f32 binary op a more specific lowering declined
    /// (`e`, before it emitted anything).
    fn or_broadcast(&mut self, e: Skip, n: &At, op: BinaryOp) -> Lw {
        match e {
            Skip::Host(_) => self.broadcast_binary(n, op),
            fail => Err(fail),
        }
    }

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

    /// The outcome of lowering the fusion group of `id` and `chain` as one step (`fused`): done,
    /// a failure, or, where no kernel covers the group, its nodes lowered one by one.
    fn group_or_nodes(&mut self, fused: Lw, id: NodeId, chain: &[NodeId]) -> Result<(), JitError> {
        match fused {
            Ok(()) => Ok(()),
            Err(Skip::Fail(e)) => Err(e),
            Err(Skip::Host(_)) => {
                self.lower_or_host(id)?;
                for &c in chain {
                    self.lower_or_host(c)?;
                }
                Ok(())
            }
        }
    }

    /// The single user of `v` if it has exactly one and is not a graph output.
    fn only_user(&self, v: Value) -> Option<NodeId> {
        if self.outputs.contains(&v) || self.users.get(&v).copied() != Some(1) {
            return None;
        }
        self.g.value_users(v).first().map(|u| u.0)
    }

    /// A new buffer for `v` in `layout`.
    fn define(&mut self, v: Value, layout: Layout) -> usize {
        let ty = self.types[&v].clone();
        let buf = self.new_buf(&ty);
        self.vals.insert(v, Vinfo { ty, buf, layout });
        buf
    }

    fn push(&mut self, name: &str, kind: StepKind) {
        self.steps.push(LoweredStep { name: name.to_string(), kind });
    }

    /// A kernel writing all columns of its own output buffer.
    fn push_kernel(&mut self, name: &str, spec: KernelSpec, input: usize, output: usize) {
        let ld_out = spec.cols;
        self.push(name, StepKind::Kernel { out_col: 0, ld_out, spec, input, residual: None, output });
    }
}

#[cfg(test)]
mod test_util {
    //! The one helper every family's lowering test goes through.

    use qforge_ir::{Shape, TensorType};

    /// A lowering case: a graph in the text form and the concrete shapes of its inputs.
    pub struct Case {
        pub name: &'static str,
        pub shapes: &'static [&'static [usize]],
        pub qir: &'static str,
    }

    /// Lowers every case and snapshots the step lists (`snapshots/lower_<family>.snap`), one
    /// block per case: the case name, its input shapes, then [`super::Lowered::describe`].
    pub fn check_family(family: &str, cases: &[Case]) {
        let mut text = String::new();
        for c in cases {
            let g = qforge_ir::text::parse(c.qir).unwrap_or_else(|e| panic!("{}: {e}", c.name));
            qforge_ir::verify::verify(&g).unwrap_or_else(|e| panic!("{}: {e}", c.name));
            let types: Vec<TensorType> = g
                .inputs()
                .iter()
                .zip(c.shapes)
                .map(|(&id, s)| {
                    let decl = &g.node(id).outputs[0];
                    TensorType { dtype: decl.dtype, shape: Shape::fixed(s), quant: decl.quant.clone() }
                })
                .collect();
            assert_eq!(types.len(), g.inputs().len(), "{}: one shape per input", c.name);
            let lw = super::lower(&g, &types, u128::MAX, true, 0).unwrap_or_else(|e| panic!("{}: {e}", c.name));
            text.push_str(&format!("== {} {:?}\n{}\n", c.name, c.shapes, lw.describe()));
        }
        insta::with_settings!({ snapshot_path => "../../../snapshots", prepend_module_to_snapshot => false }, {
            insta::assert_snapshot!(format!("lower_{family}"), text);
        });
    }
}
