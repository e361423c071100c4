//! The reference interpreter: the semantic oracle.
//!
//! Plain, obviously correct loops for every op at every dtype; no cleverness that could make it
//! wrong. It follows [`crate::numerics`] for all integer and low-precision arithmetic.
//!
//! # Numerics
//! * Float ops on f16/bf16 widen their inputs to f32, compute in f32 (accumulating in plain loop
//!   order) and round each result once to the storage type. Transcendental functions are evaluated
//!   in f64 and rounded to f32 first (the "f32 result"), then once to the storage type.
//! * Integer kernels accumulate exactly (see [`quant`]) and saturate the accumulator to the i32
//!   range before the epilogue; [`quant`] documents every integer formula, its ONNX Runtime source
//!   and where ONNX Runtime's order differs from [`crate::numerics`]'s generic contract.
//! * Integer element-wise arithmetic wraps in the storage type (two's complement), as ONNX Runtime's
//!   kernels do; integer division by zero is an error, not a panic.
//!
//! # Layout
//! * this file: the graph runner ([`run`], [`run_observed`]), the op dispatch ([`eval_op`]) and
//!   small shared helpers (float views, broadcasting walkers, per-axis parameter lookup);
//! * [`conv`]: float convolution and the shared direct-convolution loop (also used for integers);
//! * [`pool`]: max/average/global pooling; [`matmul`]: matmul and gemm;
//! * [`elementwise`]: unary, binary, where, clip and friends; [`norm`]: batch/layer norm, softmax,
//!   LRN and reductions; [`movement`]: reshape, transpose, concat, slice, gather, cast, ...;
//! * [`resize`]: Resize (nearest, linear, cubic; every coordinate transformation);
//! * [`quant`]: everything on quantized or integer tensors;
//! * [`fake_quant`]: fake quantization (float in, float out) and its gradient;
//! * [`select`]: NonZero and NonMaxSuppression, whose result size depends on the data.
//!
//! Result shapes are never computed twice: before evaluating an op, [`eval_op`] runs
//! [`crate::infer::infer`] on the concrete input shapes; kernels take their result shapes from that.

pub mod conv;
pub mod elementwise;
pub mod fake_quant;
pub mod matmul;
pub mod movement;
pub mod norm;
pub mod pool;
pub mod quant;
pub mod resize;
pub mod select;

use crate::limits::{self, tensor_bytes, Allocation};
use crate::{infer, DType, Dim, Graph, IrError, NodeId, Op, QuantParams, Shape, Tensor, TensorData, TensorType, Value};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

/// Limits for a run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Largest tensor the interpreter may allocate, in bytes: every constant, result and
    /// widening temporary (see [`temporary_bytes`]) is checked against it first.
    pub max_tensor_bytes: u128,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { max_tensor_bytes: crate::DEFAULT_MAX_TENSOR_BYTES as u128 }
    }
}

/// Runs `g` on `inputs` (one tensor per graph input, in order) and returns the outputs in order.
pub fn run(g: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>, IrError> {
    run_observed(g, inputs, &RunOptions::default(), &mut |_, _| {})
}

/// Runs `g`, calling `observe(node, results)` after each node (calibration observers use this).
///
/// Inputs are checked first (count, dtype, rank, fixed dims, and symbolic dims bound consistently
/// across inputs). Nodes run in [`Graph::schedule`] order; every intermediate tensor is freed after
/// its last consumer. Each constant, result and temporary is checked against
/// [`RunOptions::max_tensor_bytes`] before it is allocated.
pub fn run_observed(
    g: &Graph,
    inputs: &[Tensor],
    opts: &RunOptions,
    observe: &mut dyn FnMut(NodeId, &[Tensor]),
) -> Result<Vec<Tensor>, IrError> {
    check_inputs(g, inputs)?;
    let order = g.schedule()?;

    // Remaining uses of each value (one per consuming input slot); graph outputs are never freed.
    let mut uses: HashMap<Value, usize> = HashMap::new();
    for &id in &order {
        for v in g.node(id).inputs().iter().flatten() {
            *uses.entry(*v).or_default() += 1;
        }
    }
    let outputs: HashSet<Value> = g.outputs().iter().map(|o| o.value).collect();

    let mut env: HashMap<Value, Cow<'_, Tensor>> = HashMap::new();
    for (&id, t) in g.inputs().iter().zip(inputs) {
        env.insert(Value::new(id, 0), Cow::Borrowed(t));
    }

    for &id in &order {
        let node = g.node(id);
        let results = match &node.op {
            Op::Input => continue,
            Op::Const(t) => {
                let bytes = tensor_bytes(t.dtype(), t.shape());
                limits::check(&node.name, Allocation::Constant, bytes, opts.max_tensor_bytes)?;
                observe(id, std::slice::from_ref(&**t));
                let v = Value::new(id, 0);
                if uses.get(&v).copied().unwrap_or(0) > 0 || outputs.contains(&v) {
                    env.insert(v, Cow::Borrowed(&**t));
                }
                continue;
            }
            _ => {
                let mut args: Vec<Option<&Tensor>> = Vec::with_capacity(node.inputs().len());
                for (slot, v) in node.inputs().iter().enumerate() {
                    match v {
                        None => args.push(None),
                        Some(v) if !g.contains_value(*v) => {
                            return Err(IrError::node(
                                &node.name,
                                node.op.name(),
                                format!("input {slot} names a missing value"),
                            ))
                        }
                        Some(v) => match env.get(v) {
                            Some(t) => args.push(Some(t.as_ref())),
                            None => {
                                return Err(IrError::node(
                                    &node.name,
                                    node.op.name(),
                                    format!("input {slot} has no value (it was freed or never computed)"),
                                ))
                            }
                        },
                    }
                }
                let types: Vec<Option<&TensorType>> =
                    node.inputs().iter().map(|v| v.map(|v| g.value_type(v))).collect();
                eval_node(&node.name, &node.op, &types, &node.outputs, &args, opts)?
            }
        };
        observe(id, &results);
        for v in node.inputs().iter().flatten() {
            if let Some(n) = uses.get_mut(v) {
                *n = n.saturating_sub(1);
                if *n == 0 && !outputs.contains(v) {
                    env.remove(v);
                }
            }
        }
        for (port, t) in results.into_iter().enumerate() {
            let v = Value::new(id, port);
            if uses.get(&v).copied().unwrap_or(0) > 0 || outputs.contains(&v) {
                env.insert(v, Cow::Owned(t));
            }
        }
    }

    let mut remaining: HashMap<Value, usize> = HashMap::new();
    for o in g.outputs() {
        *remaining.entry(o.value).or_default() += 1;
    }
    let mut result = Vec::with_capacity(g.outputs().len());
    for o in g.outputs() {
        let n = remaining.get_mut(&o.value).expect("counted above");
        *n -= 1;
        let t = if *n == 0 { env.remove(&o.value) } else { env.get(&o.value).cloned() };
        match t {
            Some(t) => result.push(t.into_owned()),
            None => return Err(IrError::Graph(format!("output `{}` has no value", o.name))),
        }
    }
    Ok(result)
}

/// Checks the inputs against the graph's input types; symbolic dims must bind consistently (every
/// engine checks its inputs with this before running anything).
pub fn check_inputs(g: &Graph, inputs: &[Tensor]) -> Result<(), IrError> {
    let ids = g.inputs();
    if inputs.len() < ids.len() {
        let missing = &g.node(ids[inputs.len()]).name;
        return Err(IrError::Input {
            name: missing.clone(),
            msg: format!("missing: the graph takes {} inputs, got {}", ids.len(), inputs.len()),
        });
    }
    if inputs.len() > ids.len() {
        return Err(IrError::Input {
            name: format!("#{}", ids.len()),
            msg: format!("unexpected: the graph takes {} inputs, got {}", ids.len(), inputs.len()),
        });
    }
    // symbol -> (size, input that bound it)
    let mut bound: HashMap<&str, (usize, &str)> = HashMap::new();
    for (&id, t) in ids.iter().zip(inputs) {
        let node = g.node(id);
        let name = node.name.as_str();
        let Some(ty) = node.outputs.first() else {
            return Err(IrError::Input { name: name.to_string(), msg: "the graph input has no type".into() });
        };
        let got = format!("{}{}", t.dtype(), Shape::fixed(t.shape()));
        let mismatch =
            |why: &str| IrError::Input { name: name.to_string(), msg: format!("expected {ty}, got {got}{why}") };
        if t.dtype() != ty.dtype || t.rank() != ty.rank() {
            return Err(mismatch(""));
        }
        for (k, d) in ty.shape.dims().iter().enumerate() {
            let n = t.shape()[k];
            match d {
                Dim::Fixed(f) if *f != n => return Err(mismatch(&format!(" (dim {k} must be {f})"))),
                Dim::Fixed(_) => {}
                Dim::Sym(s) => match bound.get(s.as_str()) {
                    Some(&(b, by)) if b != n => {
                        return Err(mismatch(&format!(" ({s} is {b}, bound by input `{by}`, but dim {k} is {n})")))
                    }
                    Some(_) => {}
                    None => {
                        bound.insert(s.as_str(), (n, name));
                    }
                },
            }
        }
    }
    Ok(())
}

/// Evaluates one op on concrete inputs. `in_types`/`out_types` are the node's types (they carry
/// the quantization parameters). Used by the graph runner and by constant folding.
pub fn eval_op(
    op: &Op,
    in_types: &[Option<&TensorType>],
    out_types: &[TensorType],
    inputs: &[Option<&Tensor>],
) -> Result<Vec<Tensor>, EvalError> {
    eval_limited(op, in_types, out_types, inputs, RunOptions::default().max_tensor_bytes)
}

/// Evaluates node `name` (`op` on concrete inputs) under the limits of `opts`; errors name the
/// node. The graph runner and the JIT's host steps both evaluate through here, so an oversized
/// tensor is the same [`IrError::TooLarge`] whichever engine meets it.
pub fn eval_node(
    name: &str,
    op: &Op,
    in_types: &[Option<&TensorType>],
    out_types: &[TensorType],
    inputs: &[Option<&Tensor>],
    opts: &RunOptions,
) -> Result<Vec<Tensor>, IrError> {
    eval_limited(op, in_types, out_types, inputs, opts.max_tensor_bytes).map_err(|e| match e {
        EvalError::Msg(msg) => IrError::node(name, op.name(), msg),
        EvalError::TooLarge { what, bytes, limit } => IrError::TooLarge { node: name.to_string(), what, bytes, limit },
    })
}

/// An upper bound of the largest temporary copy the kernel of `op` makes, in bytes, for inputs
/// and results of the given (concrete) types: the kernels of computing ops read inputs that are not f32 through a
/// widened copy (f16/bf16 to f32: 4 bytes per element; integers and bools to i64: 8 bytes per
/// element; f64 is computed in place) and build integer or low-precision float results in an i64 or f32 vector before
/// narrowing them. Data movement (reshape, transpose, slice, concat, gather, expand, split, cast,
/// ...) copies elements as they are; only gather's indices are widened. The interpreter holds
/// these copies to the same limit as tensors; an engine that does not make them (the JIT's
/// kernels) need not.
pub fn temporary_bytes(op: &Op, in_types: &[Option<&TensorType>], out_types: &[TensorType]) -> u128 {
    let bytes = |t: &TensorType, per: u128| -> u128 {
        let n = t.shape.as_fixed().map_or(0, |d| d.iter().fold(1u128, |a, &x| a.saturating_mul(x as u128)));
        n.saturating_mul(per)
    };
    // f64 is read and built in place (the ops that take it compute in f64).
    let widened_input = |t: &TensorType| match t.dtype {
        DType::F32 | DType::F64 => 0,
        DType::F16 | DType::BF16 => bytes(t, 4),
        DType::I8
        | DType::U8
        | DType::I16
        | DType::U16
        | DType::I32
        | DType::U32
        | DType::I64
        | DType::U64
        | DType::Bool => bytes(t, 8),
    };
    let widened_result = |t: &TensorType| match t.dtype {
        DType::F32 | DType::F64 | DType::Bool => 0,
        DType::F16 | DType::BF16 => bytes(t, 4),
        DType::I8 | DType::U8 | DType::I16 | DType::U16 | DType::I32 | DType::U32 | DType::I64 | DType::U64 => {
            bytes(t, 8)
        }
    };
    match op {
        Op::Input
        | Op::Const(_)
        | Op::Reshape { .. }
        | Op::ReshapeDyn { .. }
        | Op::Flatten { .. }
        | Op::Squeeze { .. }
        | Op::Unsqueeze { .. }
        | Op::Identity
        | Op::Transpose { .. }
        | Op::Slice { .. }
        | Op::Split { .. }
        | Op::Concat { .. }
        | Op::QConcat { .. }
        | Op::Expand { .. }
        | Op::ExpandDyn { .. }
        | Op::Shape { .. }
        | Op::Range { .. }
        | Op::Cast { .. } => 0,
        // The indices, as i64 (and as offsets).
        Op::Gather { .. } | Op::GatherElements { .. } => in_types.get(1).copied().flatten().map_or(0, |t| bytes(t, 8)),
        // Elements are copied as they are, through one map per axis.
        Op::Pad { .. } | Op::Tile { .. } => {
            out_types.first().and_then(|t| t.shape.as_fixed()).map_or(0, |d| movement::map_bytes(&d))
        }
        // The data in f64, twice (the axis being resized and the next), at most the larger of
        // the input and output size along every axis.
        Op::Resize(_) => match (in_types.first().copied().flatten(), out_types.first()) {
            (Some(i), Some(o)) => match (i.shape.as_fixed(), o.shape.as_fixed()) {
                (Some(a), Some(b)) => {
                    a.iter().zip(&b).fold(16u128, |acc, (&p, &q)| acc.saturating_mul(p.max(q) as u128))
                }
                _ => 0,
            },
            _ => 0,
        },
        // The f32 widening of the default arm, or the output offset of every (input position,
        // kernel tap) pair, whichever is larger.
        Op::ConvTranspose(a) => {
            let ins = in_types.iter().flatten().map(|t| widened_input(t));
            let outs = out_types.iter().map(widened_result);
            let widened = ins.chain(outs).max().unwrap_or(0);
            let plane =
                in_types.first().copied().flatten().and_then(|t| t.shape.as_fixed()).map_or(0, |d| {
                    d.iter().skip(2).chain(&a.kernel).fold(16u128, |acc, &x| acc.saturating_mul(x as u128))
                });
            widened.max(plane)
        }
        _ => {
            let ins = in_types.iter().flatten().map(|t| widened_input(t));
            let outs = out_types.iter().map(widened_result);
            ins.chain(outs).max().unwrap_or(0)
        }
    }
}

/// Why an op could not be evaluated (the graph runner adds the node as [`IrError`]).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// The inputs or attributes do not fit the op.
    #[error("{0}")]
    Msg(String),
    /// A result, constant or temporary would exceed the size limit.
    #[error("{what} needs {bytes} bytes, more than the limit of {limit} bytes (--max-tensor-bytes)")]
    TooLarge { what: Allocation, bytes: u128, limit: u128 },
}

impl From<String> for EvalError {
    fn from(m: String) -> Self {
        EvalError::Msg(m)
    }
}

impl From<&str> for EvalError {
    fn from(m: &str) -> Self {
        EvalError::Msg(m.to_string())
    }
}

/// Kernel result type: errors are plain messages (the runner adds the node's name).
pub(crate) type R<T> = std::result::Result<T, String>;

/// [`eval_op`] with a size limit on every result.
fn eval_limited(
    op: &Op,
    in_types: &[Option<&TensorType>],
    out_types: &[TensorType],
    inputs: &[Option<&Tensor>],
    limit: u128,
) -> Result<Vec<Tensor>, EvalError> {
    let (lo, hi) = op.arity();
    if inputs.len() < lo || inputs.len() > hi {
        return Err(format!("takes {lo} to {hi} inputs, got {}", inputs.len()).into());
    }
    match op {
        Op::Input => return Err("a graph input is not evaluated".into()),
        Op::Const(t) => {
            let bytes = tensor_bytes(t.dtype(), t.shape());
            if bytes > limit {
                return Err(EvalError::TooLarge { what: Allocation::Constant, bytes, limit });
            }
            return Ok(vec![(**t).clone()]);
        }
        _ => {}
    }
    // The concrete types of the inputs: the tensors' dtypes and shapes, the node's quantization.
    let mut conc: Vec<Option<TensorType>> = Vec::with_capacity(inputs.len());
    for (i, t) in inputs.iter().enumerate() {
        let declared = in_types.get(i).copied().flatten();
        conc.push(match (t, declared) {
            (None, None) => None,
            // an input read only for its dims (the reference inputs of shape, range,
            // reshape_dyn and expand_dyn) may come as a concrete type alone; an op that reads
            // its values finds it missing
            (None, Some(d)) if d.shape.is_fixed() && op.reads_only_dims(i) => Some(d.clone()),
            (None, Some(_)) => return Err(format!("input {i} has a type but no value").into()),
            (Some(t), d) => Some(TensorType {
                dtype: t.dtype(),
                shape: Shape::fixed(t.shape()),
                quant: d.and_then(|d| d.quant.clone()),
            }),
        });
    }
    let refs: Vec<Option<&TensorType>> = conc.iter().map(Option::as_ref).collect();
    let mut outs = infer::infer(op, &refs, Some(out_types)).map_err(String::from)?;
    // A data-dependent dim is held to the limit at its largest (every element selected).
    let bound = op.data_dependent().map(|c| (c, select_bound(op, &refs)));
    let mut shapes = Vec::with_capacity(outs.len());
    for o in &outs {
        let dims: Option<Vec<usize>> = o
            .shape
            .0
            .iter()
            .map(|d| match (d, bound) {
                (Dim::Sym(s), Some((c, n))) if s == c => n,
                _ => d.fixed(),
            })
            .collect();
        let dims = dims.ok_or_else(|| format!("result shape {} is not concrete", o.shape))?;
        let bytes = tensor_bytes(o.dtype, &dims);
        if bytes > limit {
            return Err(EvalError::TooLarge { what: Allocation::Result, bytes, limit });
        }
        shapes.push(dims);
    }
    let bytes = temporary_bytes(op, &refs, &outs);
    if bytes > limit {
        return Err(EvalError::TooLarge { what: Allocation::Temporary, bytes, limit });
    }
    let results = {
        let cx = Cx { op, inputs, in_types: conc, out_types: outs.clone(), out_shapes: shapes };
        dispatch(&cx)?
    };
    // The data-dependent dim is bound to the size of what the op selected.
    if let Some((c, _)) = bound {
        for (o, r) in outs.iter_mut().zip(&results) {
            if o.shape.rank() == r.rank() {
                for (d, &n) in o.shape.0.iter_mut().zip(r.shape()) {
                    if matches!(d, Dim::Sym(s) if s == c) {
                        *d = Dim::Fixed(n);
                    }
                }
            }
        }
    }
    let cx_out_types = outs;
    if results.len() != cx_out_types.len() {
        return Err(format!("internal: {} results for {} outputs", results.len(), cx_out_types.len()).into());
    }
    for (r, t) in results.iter().zip(&cx_out_types) {
        if r.dtype() != t.dtype || Shape::fixed(r.shape()) != t.shape {
            return Err(format!("internal: computed {}{} but inferred {t}", r.dtype(), Shape::fixed(r.shape())).into());
        }
    }
    Ok(results)
}

/// The largest size of a data-dependent result dim for inputs of these (concrete) types: every
/// element of NonZero's input, every box of every class of NonMaxSuppression (`None` when the
/// inputs do not say: inference has refused them already).
fn select_bound(op: &Op, inputs: &[Option<&TensorType>]) -> Option<usize> {
    let fixed = |i: usize| inputs.get(i).copied().flatten().and_then(|t| t.shape.as_fixed());
    match op {
        Op::NonZero { .. } => numel(&fixed(0)?),
        Op::NonMaxSuppression { .. } => {
            let s = fixed(1)?;
            numel(&s)
        }
        _ => None,
    }
}

/// What a kernel sees: the op, its inputs with concrete types, and the inferred result types.
pub(crate) struct Cx<'a> {
    pub op: &'a Op,
    pub inputs: &'a [Option<&'a Tensor>],
    pub in_types: Vec<Option<TensorType>>,
    pub out_types: Vec<TensorType>,
    pub out_shapes: Vec<Vec<usize>>,
}

impl Cx<'_> {
    /// A required input.
    pub fn x(&self, i: usize) -> R<&Tensor> {
        self.inputs.get(i).copied().flatten().ok_or_else(|| format!("input {i} is missing"))
    }
    /// An optional input.
    pub fn opt(&self, i: usize) -> Option<&Tensor> {
        self.inputs.get(i).copied().flatten()
    }
    /// Quantization parameters of input `i`.
    pub fn in_quant(&self, i: usize) -> R<&QuantParams> {
        self.in_types
            .get(i)
            .and_then(|t| t.as_ref())
            .and_then(|t| t.quant.as_ref())
            .ok_or_else(|| format!("input {i} has no quantization parameters"))
    }
    /// Quantization parameters of result `i`.
    pub fn out_quant(&self, i: usize) -> R<&QuantParams> {
        self.out_types.get(i).and_then(|t| t.quant.as_ref()).ok_or_else(|| format!("result {i} is not quantized"))
    }
    pub fn out_dtype(&self, i: usize) -> DType {
        self.out_types[i].dtype
    }
    pub fn out_shape(&self, i: usize) -> Vec<usize> {
        self.out_shapes[i].clone()
    }
}

fn dispatch(cx: &Cx) -> R<Vec<Tensor>> {
    let one = |t: R<Tensor>| t.map(|t| vec![t]);
    match cx.op {
        Op::Input | Op::Const(_) => Err("not a computation".into()),
        Op::Conv(a) => one(conv::conv(cx, a)),
        Op::BatchNorm { epsilon } => one(norm::batch_norm(cx, *epsilon)),
        Op::Unary(u) => one(elementwise::unary(cx, *u)),
        Op::LeakyRelu { alpha } => {
            let a = *alpha;
            one(elementwise::map_float(cx, move |x| if x >= 0.0 { x } else { a * x }))
        }
        Op::Clip { min, max } => {
            let (lo, hi) = (*min, *max);
            one(elementwise::map_float(cx, move |x| if x.is_nan() { x } else { x.max(lo).min(hi) }))
        }
        Op::HardSigmoid { alpha, beta } => {
            let (a, b) = (*alpha, *beta);
            one(elementwise::map_float(cx, move |x| (a * x + b).clamp(0.0, 1.0)))
        }
        Op::Binary(b) => one(elementwise::binary(cx, *b)),
        Op::Where => one(elementwise::where_(cx)),
        Op::MatMul => one(matmul::matmul(cx)),
        Op::Gemm { alpha, beta, trans_a, trans_b } => one(matmul::gemm(cx, *alpha, *beta, *trans_a, *trans_b)),
        Op::MaxPool(p) => one(pool::max_pool(cx, p)),
        Op::MaxPoolIndices { pool: p, column_major } => one(pool::max_pool_indices(cx, p, *column_major)),
        Op::AveragePool(p) => one(pool::average_pool(cx, p)),
        Op::GlobalAveragePool => one(pool::global_average_pool(cx)),
        Op::GlobalMaxPool => one(pool::global_max_pool(cx)),
        Op::MaxPoolGrad(p) => one(pool::max_pool_grad(cx, p)),
        Op::AveragePoolGrad(p) => one(pool::average_pool_grad(cx, p)),
        Op::ConvWeightGrad(a) => one(conv::conv_weight_grad(cx, a)),
        Op::ClipGrad { min, max } => one(elementwise::clip_grad(cx, *min, *max)),
        Op::FakeQuantize { qmin, qmax } => one(fake_quant::fake_quantize(cx, *qmin, *qmax)),
        Op::FakeQuantizeGrad { qmin, qmax } => fake_quant::fake_quantize_grad(cx, *qmin, *qmax),
        Op::ConvTranspose(a) => one(conv::conv_transpose(cx, a)),
        Op::Resize(a) => {
            let refs: Vec<Option<&TensorType>> = cx.in_types.iter().map(Option::as_ref).collect();
            let a = crate::infer::resolve_resize(a, &refs).map_err(String::from)?;
            one(resize::resize(cx, &a))
        }
        Op::GroupNorm { groups, epsilon } => one(norm::group_norm(cx, *groups, *epsilon)),
        Op::ArgMax { axis, select_last, .. } => one(norm::arg_extreme(cx, *axis, true, *select_last)),
        Op::ArgMin { axis, select_last, .. } => one(norm::arg_extreme(cx, *axis, false, *select_last)),
        Op::Pad { mode, pads, computed, value } => {
            let types: Vec<Option<&TensorType>> = cx.in_types.iter().map(Option::as_ref).collect();
            let pads = crate::infer::fixed_pads(pads, computed, &types).map_err(|e| e.to_string())?;
            one(movement::pad(cx, *mode, &pads, *value))
        }
        Op::Tile { .. } => one(movement::tile(cx)),
        Op::Lrn { size, alpha, beta, bias } => one(norm::lrn(cx, *size, *alpha, *beta, *bias)),
        Op::Softmax { axis } => one(norm::softmax(cx, *axis, false)),
        Op::LogSoftmax { axis } => one(norm::softmax(cx, *axis, true)),
        Op::LayerNorm { axis, epsilon } => one(norm::layer_norm(cx, *axis, *epsilon)),
        Op::ReduceMean { axes, .. } => one(norm::reduce(cx, axes, norm::Reduce::Mean)),
        Op::ReduceSum { axes, .. } => one(norm::reduce(cx, axes, norm::Reduce::Sum)),
        Op::ReduceMax { axes, .. } => one(norm::reduce(cx, axes, norm::Reduce::Max)),
        Op::ReduceProd { axes, .. } => one(norm::reduce(cx, axes, norm::Reduce::Prod)),
        Op::NonZero { .. } => one(select::non_zero(cx)),
        Op::NonMaxSuppression { center_point_box, .. } => one(select::non_max_suppression(cx, *center_point_box)),
        Op::Reshape { .. } | Op::Flatten { .. } | Op::Unsqueeze { .. } | Op::Squeeze { .. } | Op::Identity => {
            one(movement::reshape(cx))
        }
        Op::Transpose { perm } => one(movement::transpose(cx, perm)),
        Op::Concat { axis } => one(movement::concat(cx, *axis)),
        Op::Slice { starts, ends, axes, steps } => one(movement::slice(cx, starts, ends, axes, steps)),
        Op::Gather { axis } => one(movement::gather(cx, *axis)),
        Op::Split { axis, sizes } => movement::split(cx, *axis, sizes),
        Op::Expand { .. } | Op::ExpandDyn { .. } => one(movement::expand(cx)),
        Op::ReshapeDyn { .. } => one(movement::reshape(cx)),
        Op::Shape { start, end } => one(movement::shape(cx, *start, *end)),
        Op::Range { start, delta, .. } => one(movement::range(cx, start, *delta)),
        Op::GatherElements { axis } => one(movement::gather_elements(cx, *axis)),
        Op::GatherND { batch_dims } => one(movement::gather_nd(cx, *batch_dims)),
        Op::ScatterElements { axis, reduction } => one(movement::scatter_elements(cx, *axis, *reduction)),
        Op::ScatterND { reduction } => one(movement::scatter_nd(cx, *reduction)),
        Op::TopK { axis, k, largest } => norm::top_k(cx, *axis, *k, *largest),
        Op::CumSum { axis, exclusive, reverse } => one(norm::cumulative(cx, *axis, *exclusive, *reverse, false)),
        Op::CumProd { axis, exclusive, reverse } => one(norm::cumulative(cx, *axis, *exclusive, *reverse, true)),
        Op::Det => one(matmul::det(cx)),
        Op::GridSample { mode, padding, align_corners } => {
            one(resize::grid_sample(cx, *mode, *padding, *align_corners))
        }
        Op::Cast { to } => one(movement::cast(cx.x(0)?, *to)),
        Op::Quantize => one(quant::quantize(cx)),
        Op::Dequantize => one(quant::dequantize(cx)),
        Op::Requantize => one(quant::requantize(cx)),
        Op::DynamicQuantize => quant::dynamic_quantize(cx),
        Op::ConvInteger(a) => one(quant::conv_integer(cx, a)),
        Op::MatMulInteger => one(quant::matmul_integer(cx)),
        Op::QConv { conv, epilogue } => one(quant::qconv(cx, conv, epilogue)),
        Op::QMatMul { epilogue } => one(quant::qmatmul(cx, epilogue)),
        Op::QGemm { alpha, trans_a, trans_b, epilogue } => one(quant::qgemm(cx, *alpha, *trans_a, *trans_b, epilogue)),
        Op::QAdd => one(quant::qadd(cx)),
        Op::QMul => one(quant::qmul(cx)),
        Op::QGlobalAveragePool => one(quant::qglobal_average_pool(cx)),
        Op::QAveragePool(p) => one(quant::qaverage_pool(cx, p)),
        Op::QConcat { axis } => one(quant::qconcat(cx, *axis)),
    }
}

// ---------------------------------------------------------------------------------------------
// Shared helpers.

/// The elements of a tensor as f32: borrowed for f32 tensors, widened (exactly, for f16/bf16 and
/// 8-bit integers) otherwise.
pub(crate) fn floats(t: &Tensor) -> Cow<'_, [f32]> {
    match t.as_f32() {
        Some(v) => Cow::Borrowed(v),
        None => Cow::Owned(t.to_f32_vec()),
    }
}

/// Builds a float tensor of `dtype` from f32 results, rounding each once (f16/bf16: nearest even).
pub(crate) fn float_tensor(dtype: DType, shape: Vec<usize>, v: Vec<f32>) -> R<Tensor> {
    check_len(&shape, v.len())?;
    Ok(match dtype {
        DType::F32 => Tensor::new(shape, TensorData::F32(v)).ok_or("internal: shape mismatch")?,
        d if d.is_float() => Tensor::from_f32_slice(d, shape, &v),
        d => return Err(format!("internal: {d} is not a float type")),
    })
}

/// The elements of a numeric (or bool) tensor for kernels that compute on them: floats as f32
/// (f16/bf16 widened exactly), integers and bools as i64. [`Nums::into_tensor`] rounds floats
/// once to the storage type and wraps integers into it.
#[derive(Clone, Debug)]
pub(crate) enum Nums {
    F(Vec<f32>),
    I(Vec<i64>),
}

impl Nums {
    pub fn of(t: &Tensor) -> R<Nums> {
        if t.dtype().is_float() {
            return Ok(Nums::F(floats(t).into_owned()));
        }
        t.to_i64_vec().map(Nums::I).ok_or_else(|| format!("{} is not a numeric type", t.dtype()))
    }
    pub fn into_tensor(self, dtype: DType, shape: Vec<usize>) -> R<Tensor> {
        match self {
            Nums::F(v) => float_tensor(dtype, shape, v),
            Nums::I(v) => int_tensor(dtype, shape, &v),
        }
    }
}

/// An index along an axis of size `n`, negative counting from the end, checked.
pub(crate) fn index_in(i: i64, n: usize, what: &str) -> R<usize> {
    let j = if i < 0 { i.checked_add(n as i64) } else { Some(i) };
    match j {
        Some(j) if j >= 0 && (j as u64) < n as u64 => Ok(j as usize),
        _ => Err(format!("{what} index {i} out of range for an axis of size {n}")),
    }
}

/// Builds a tensor from data, checking the element count.
pub(crate) fn tensor(shape: Vec<usize>, data: TensorData) -> R<Tensor> {
    let n = data.len();
    Tensor::new(shape, data).ok_or_else(|| format!("internal: {n} elements do not fit the result shape"))
}

/// Builds an integer (or bool) tensor of `dtype` from i64 values that are already in range.
pub(crate) fn int_tensor(dtype: DType, shape: Vec<usize>, v: &[i64]) -> R<Tensor> {
    check_len(&shape, v.len())?;
    if dtype.is_float() {
        return Err(format!("internal: {dtype} is not an integer type"));
    }
    Ok(Tensor::from_i64_wrapping(dtype, shape, v))
}

pub(crate) fn check_len(shape: &[usize], n: usize) -> R<()> {
    match numel(shape) {
        Some(m) if m == n => Ok(()),
        _ => Err(format!("internal: {n} elements do not fit shape {shape:?}")),
    }
}

/// Element count with overflow checking.
pub(crate) fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// Row-major strides of a shape.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1].saturating_mul(shape[i + 1]);
    }
    s
}

/// Strides of `input` broadcast (numpy, right-aligned) to `out`: 0 where the input is broadcast.
pub(crate) fn broadcast_strides(input: &[usize], out: &[usize]) -> R<Vec<isize>> {
    if input.len() > out.len() {
        return Err(format!("cannot broadcast {input:?} to {out:?}"));
    }
    let st = strides(input);
    let off = out.len() - input.len();
    let mut r = vec![0isize; out.len()];
    for (i, &d) in input.iter().enumerate() {
        if d == out[off + i] {
            r[off + i] = if d == 1 { 0 } else { st[i] as isize };
        } else if d != 1 {
            return Err(format!("cannot broadcast {input:?} to {out:?}"));
        }
    }
    Ok(r)
}

/// Walks a row-major index space, tracking the offsets of several strided views at once.
pub(crate) struct Walker {
    shape: Vec<usize>,
    idx: Vec<usize>,
    strides: Vec<Vec<isize>>,
    offs: Vec<isize>,
    bases: Vec<isize>,
}

impl Walker {
    /// `views[k]` gives the (base, per-axis strides) of view k over `shape`.
    pub fn new(shape: &[usize], views: Vec<(isize, Vec<isize>)>) -> Walker {
        let bases: Vec<isize> = views.iter().map(|v| v.0).collect();
        Walker {
            shape: shape.to_vec(),
            idx: vec![0; shape.len()],
            offs: bases.clone(),
            bases,
            strides: views.into_iter().map(|v| v.1).collect(),
        }
    }
    /// Current offsets, one per view.
    #[inline]
    pub fn offs(&self) -> &[isize] {
        &self.offs
    }
    /// Moves to the next index (a no-op past the end: callers count elements themselves).
    #[inline]
    pub fn step(&mut self) {
        for a in (0..self.shape.len()).rev() {
            self.idx[a] += 1;
            if self.idx[a] < self.shape[a] {
                for (o, s) in self.offs.iter_mut().zip(&self.strides) {
                    *o += s[a];
                }
                return;
            }
            self.idx[a] = 0;
            for (o, s) in self.offs.iter_mut().zip(&self.strides) {
                *o -= s[a] * (self.shape[a] as isize - 1);
            }
        }
        self.offs.clone_from(&self.bases);
    }
}

/// For every element of `out` (row-major), the offsets into inputs of the given shapes broadcast
/// to it, passed to `f(out_index, offsets)`.
///
/// The index space is first collapsed: axes of size 1 are dropped, and an axis merges into the
/// one before it when every input steps through both as through one (same-shape operands
/// collapse to a single axis, a scalar to stride 0). The last collapsed axis runs as a tight
/// inner loop; only the others go through the [`Walker`].
pub(crate) fn for_each_broadcast(out: &[usize], inputs: &[&[usize]], mut f: impl FnMut(usize, &[usize])) -> R<()> {
    let n = numel(out).ok_or("result too large")?;
    let strides = inputs.iter().map(|s| broadcast_strides(s, out)).collect::<R<Vec<_>>>()?;
    // (length, per-input stride) of each collapsed axis
    let mut dims: Vec<(usize, Vec<isize>)> = vec![];
    for (a, &len) in out.iter().enumerate() {
        if len == 1 {
            continue;
        }
        let st: Vec<isize> = strides.iter().map(|s| s[a]).collect();
        if let Some((plen, prev)) = dims.last_mut() {
            if prev.iter().zip(&st).all(|(&p, &s)| p == s * len as isize) {
                *plen *= len;
                *prev = st;
                continue;
            }
        }
        dims.push((len, st));
    }
    if n == 0 {
        return Ok(());
    }
    let (inner, inner_st) = dims.pop().unwrap_or((1, vec![0; inputs.len()]));
    let outer_shape: Vec<usize> = dims.iter().map(|d| d.0).collect();
    let views = (0..inputs.len()).map(|k| (0isize, dims.iter().map(|d| d.1[k]).collect())).collect();
    let mut w = Walker::new(&outer_shape, views);
    let mut base = vec![0isize; inputs.len()];
    let mut buf = vec![0usize; inputs.len()];
    let mut i = 0;
    for _ in 0..n / inner {
        base.copy_from_slice(w.offs());
        for j in 0..inner as isize {
            for ((b, &o), &s) in buf.iter_mut().zip(&base).zip(&inner_st) {
                *b = (o + j * s) as usize;
            }
            f(i, &buf);
            i += 1;
        }
        w.step();
    }
    Ok(())
}

/// Which scale and zero point applies to each element of a tensor of `shape`.
#[derive(Clone, Copy)]
pub(crate) struct ParamIndex {
    inner: usize,
    dim: usize,
    /// Per group: the group size and the number of groups along the axis (0: not per group).
    group_size: usize,
    groups: usize,
}

impl ParamIndex {
    pub fn new(q: &QuantParams, shape: &[usize]) -> R<ParamIndex> {
        match q {
            QuantParams::PerTensor { .. } => Ok(ParamIndex { inner: 1, dim: 1, group_size: 0, groups: 0 }),
            QuantParams::PerAxis { axis, scales, zero_points } => {
                let dim = *shape.get(*axis).ok_or_else(|| format!("quantization axis {axis} out of range"))?;
                if scales.len() != dim || zero_points.len() != dim {
                    return Err(format!("{} scales for axis {axis} of size {dim}", scales.len()));
                }
                Ok(ParamIndex {
                    inner: numel(&shape[axis + 1..]).unwrap_or(usize::MAX).max(1),
                    dim: dim.max(1),
                    group_size: 0,
                    groups: 0,
                })
            }
            QuantParams::PerGroup { axis, group_size, zero_points, .. } => {
                q.check_shape(shape).map_err(|e| e.to_string())?;
                if zero_points.len() != q.len() {
                    return Err(format!("{} scales but {} zero points", q.len(), zero_points.len()));
                }
                let dim = shape[*axis].max(1);
                Ok(ParamIndex {
                    inner: numel(&shape[axis + 1..]).unwrap_or(usize::MAX).max(1),
                    dim,
                    group_size: *group_size,
                    groups: dim.div_ceil(*group_size),
                })
            }
        }
    }
    /// The parameter index of flat element `i`.
    #[inline]
    pub fn at(&self, i: usize) -> usize {
        if self.dim == 1 && self.group_size == 0 {
            return 0;
        }
        let a = (i / self.inner) % self.dim;
        match a.checked_div(self.group_size) {
            // per group: (outer index, group along the axis, inner index) in the parameter tensor
            Some(group) => (i / (self.dim * self.inner) * self.groups + group) * self.inner + i % self.inner,
            None => a,
        }
    }
}

/// `(scale, zero_point)` of a per-tensor quantized input, with a clear error otherwise.
pub(crate) fn per_tensor(q: &QuantParams, what: &str) -> R<(f32, i32)> {
    match q {
        QuantParams::PerTensor { scale, zero_point } => Ok((*scale, *zero_point)),
        QuantParams::PerAxis { .. } | QuantParams::PerGroup { .. } => {
            Err(format!("{what} must be quantized per tensor"))
        }
    }
}

/// Maps over the data of a tensor, rebuilding the same variant: `map_data!(data, v => expr)`.
macro_rules! map_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::TensorData::F32($v) => $crate::TensorData::F32($body),
            $crate::TensorData::F16($v) => $crate::TensorData::F16($body),
            $crate::TensorData::BF16($v) => $crate::TensorData::BF16($body),
            $crate::TensorData::I8($v) => $crate::TensorData::I8($body),
            $crate::TensorData::U8($v) => $crate::TensorData::U8($body),
            $crate::TensorData::I32($v) => $crate::TensorData::I32($body),
            $crate::TensorData::I64($v) => $crate::TensorData::I64($body),
            $crate::TensorData::Bool($v) => $crate::TensorData::Bool($body),
            $crate::TensorData::F64($v) => $crate::TensorData::F64($body),
            $crate::TensorData::I16($v) => $crate::TensorData::I16($body),
            $crate::TensorData::U16($v) => $crate::TensorData::U16($body),
            $crate::TensorData::U32($v) => $crate::TensorData::U32($body),
            $crate::TensorData::U64($v) => $crate::TensorData::U64($body),
        }
    };
}
pub(crate) use map_data;

#[cfg(test)]
pub(crate) mod testutil {
    use crate::{DType, QuantParams, Shape, Tensor, TensorData, TensorType};

    pub fn f32t(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_f32(shape.to_vec(), v.to_vec())
    }
    pub fn u8t(shape: &[usize], v: &[u8]) -> Tensor {
        Tensor::new(shape.to_vec(), TensorData::U8(v.to_vec())).unwrap()
    }
    pub fn i8t(shape: &[usize], v: &[i8]) -> Tensor {
        Tensor::new(shape.to_vec(), TensorData::I8(v.to_vec())).unwrap()
    }
    pub fn i32t(shape: &[usize], v: &[i32]) -> Tensor {
        Tensor::new(shape.to_vec(), TensorData::I32(v.to_vec())).unwrap()
    }
    pub fn ty(t: &Tensor) -> TensorType {
        TensorType::new(t.dtype(), Shape::fixed(t.shape()))
    }
    pub fn qty(t: &Tensor, q: QuantParams) -> TensorType {
        TensorType::quantized(t.dtype(), Shape::fixed(t.shape()), q)
    }
    /// A declared quantized result type (the shape is inferred, so any placeholder works).
    pub fn qout(dtype: DType, q: QuantParams) -> TensorType {
        TensorType::quantized(dtype, Shape(vec![]), q)
    }
    pub fn pt(scale: f32, zp: i32) -> QuantParams {
        QuantParams::per_tensor(scale, zp)
    }
    /// Evaluates `op` on plain (unquantized) inputs.
    pub fn eval1(op: &crate::Op, inputs: &[&Tensor]) -> Result<Tensor, super::EvalError> {
        let types: Vec<TensorType> = inputs.iter().map(|t| ty(t)).collect();
        evalq(op, inputs, &types, &[]).map(|mut v| v.remove(0))
    }
    /// Evaluates `op` with explicit input types and declared result types.
    pub fn evalq(
        op: &crate::Op,
        inputs: &[&Tensor],
        types: &[TensorType],
        out: &[TensorType],
    ) -> Result<Vec<Tensor>, super::EvalError> {
        let tr: Vec<Option<&TensorType>> = types.iter().map(Some).collect();
        let ins: Vec<Option<&Tensor>> = inputs.iter().map(|t| Some(*t)).collect();
        super::eval_op(op, &tr, out, &ins)
    }
    pub fn assert_close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len(), "lengths differ");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "element {i}: {x} vs {y}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use crate::{BinaryOp, Epilogue, UnaryOp};

    fn sym(dims: &[&str]) -> Shape {
        Shape(
            dims.iter()
                .map(|d| d.parse::<usize>().map(Dim::Fixed).unwrap_or_else(|_| Dim::Sym(d.to_string())))
                .collect(),
        )
    }

    /// x: f32[N,3] -> relu(x) + bias, and x * 2 as a second output.
    fn small_graph() -> Graph {
        let mut g = Graph::new("small");
        let x = g.add_input("x", TensorType::new(DType::F32, sym(&["N", "3"])));
        let b = g.add_const("b", f32t(&[3], &[1.0, -1.0, 0.5]));
        let two = g.add_const("two", Tensor::scalar_f32(2.0));
        let r = g.add_node(Op::Unary(UnaryOp::Relu), vec![Some(x)], None, "relu").unwrap();
        let y = g.add_node(Op::Binary(BinaryOp::Add), vec![Some(r), Some(b)], None, "add").unwrap();
        let z = g.add_node(Op::Binary(BinaryOp::Mul), vec![Some(x), Some(two)], None, "mul").unwrap();
        g.add_output("y", y);
        g.add_output("z", z);
        g
    }

    #[test]
    fn runs_a_small_graph() {
        let g = small_graph();
        crate::verify::verify(&g).unwrap();
        let x = f32t(&[2, 3], &[-1.0, 2.0, 3.0, 4.0, -5.0, 0.0]);
        let out = run(&g, &[x]).unwrap();
        assert_eq!(out[0].shape(), &[2, 3]);
        assert_eq!(out[0].as_f32().unwrap(), &[1.0, 1.0, 3.5, 5.0, -1.0, 0.5]);
        assert_eq!(out[1].as_f32().unwrap(), &[-2.0, 4.0, 6.0, 8.0, -10.0, 0.0]);
    }

    #[test]
    fn observes_every_node_and_frees_intermediates() {
        let g = small_graph();
        let x = f32t(&[1, 3], &[1.0, 2.0, 3.0]);
        let mut seen = vec![];
        run_observed(&g, &[x], &RunOptions::default(), &mut |id, r| seen.push((g.node(id).name.clone(), r.len())))
            .unwrap();
        let names: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(names, ["relu", "b", "add", "two", "mul"]);
    }

    #[test]
    fn rejects_mismatched_inputs() {
        let g = small_graph();
        let e = run(&g, &[f32t(&[2, 4], &[0.0; 8])]).unwrap_err();
        assert_eq!(
            e,
            IrError::Input { name: "x".into(), msg: "expected f32[N,3], got f32[2,4] (dim 1 must be 3)".into() }
        );
        let e = run(&g, &[]).unwrap_err();
        assert!(matches!(e, IrError::Input { ref name, .. } if name == "x"), "{e}");
        let e = run(&g, &[Tensor::from_i64(vec![1, 3], vec![1, 2, 3])]).unwrap_err();
        assert!(e.to_string().contains("expected f32[N,3], got i64[1,3]"), "{e}");
    }

    #[test]
    fn symbolic_dims_bind_across_inputs() {
        let mut g = Graph::new("two");
        let a = g.add_input("a", TensorType::new(DType::F32, sym(&["N", "2"])));
        let b = g.add_input("b", TensorType::new(DType::F32, sym(&["N", "2"])));
        let s = g.add_node(Op::Binary(BinaryOp::Add), vec![Some(a), Some(b)], None, "s").unwrap();
        g.add_output("s", s);
        let e = run(&g, &[f32t(&[2, 2], &[0.0; 4]), f32t(&[3, 2], &[0.0; 6])]).unwrap_err();
        assert_eq!(
            e,
            IrError::Input {
                name: "b".into(),
                msg: "expected f32[N,2], got f32[3,2] (N is 2, bound by input `a`, but dim 0 is 3)".into()
            }
        );
        let out = run(&g, &[f32t(&[1, 2], &[1.0, 2.0]), f32t(&[1, 2], &[3.0, 4.0])]).unwrap();
        assert_eq!(out[0].as_f32().unwrap(), &[4.0, 6.0]);
    }

    #[test]
    fn enforces_the_size_limit() {
        let g = small_graph();
        let x = f32t(&[4, 3], &[1.0; 12]);
        let opts = RunOptions { max_tensor_bytes: 40 };
        let e = run_observed(&g, &[x], &opts, &mut |_, _| {}).unwrap_err();
        assert_eq!(e, IrError::TooLarge { node: "relu".into(), what: Allocation::Result, bytes: 48, limit: 40 });
    }

    #[test]
    fn resize_pad_and_conv_transpose_temporaries_are_held_to_the_limit() {
        // Resize works in f64 on two copies of the larger of each axis' sizes: 16 * 1*1*4*6.
        let g = crate::text::parse(
            "graph g(%x: f32[1,1,2,2]) -> (y: f32[1,1,4,6]) {\n  %0 = resize %x {mode=linear, coord=half_pixel, \
             nearest=round_prefer_floor, cubic_a=-0.75, exclude_outside=false, extrapolation=0.0, antialias=false, \
             roi=[], scales=[1.0,1.0,2.0,3.0]} : f32[1,1,4,6]  # \"up\"\n  return %0\n}\n",
        )
        .unwrap();
        let x = f32t(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let opts = RunOptions { max_tensor_bytes: 383 };
        let e = run_observed(&g, std::slice::from_ref(&x), &opts, &mut |_, _| {}).unwrap_err();
        assert_eq!(e, IrError::TooLarge { node: "up".into(), what: Allocation::Temporary, bytes: 384, limit: 383 });
        assert!(run_observed(&g, &[x], &RunOptions { max_tensor_bytes: 384 }, &mut |_, _| {}).is_ok());
        // Pad reads through one map per axis (16 bytes per output position of each axis).
        let t = |s: &str| {
            TensorType::new(DType::F32, Shape::fixed(&s.split(',').map(|d| d.parse().unwrap()).collect::<Vec<_>>()))
        };
        let pad = Op::Pad { mode: crate::PadMode::Edge, pads: vec![1, 1, 1, 1], computed: vec![], value: 0.0 };
        assert_eq!(temporary_bytes(&pad, &[Some(&t("2,3"))], &[t("4,5")]), 9 * 16);
        // ConvTranspose: an offset per input position and kernel tap.
        let ct = Op::ConvTranspose(crate::ConvTransposeAttrs {
            kernel: vec![3, 3],
            strides: vec![1, 1],
            pads: vec![0; 4],
            dilations: vec![1, 1],
            group: 1,
            output_padding: vec![0, 0],
        });
        assert_eq!(temporary_bytes(&ct, &[Some(&t("1,1,4,5")), Some(&t("1,2,3,3"))], &[t("1,2,6,7")]), 20 * 9 * 16);
    }

    #[test]
    fn counts_the_widened_temporaries() {
        // u8 + u8 -> u8: ten bytes of result, but the kernel widens both operands to i64 (80
        // bytes each); a float add of f32 makes no copy.
        let mut g = Graph::new("add");
        let a = g.add_input("a", TensorType::new(DType::U8, Shape::fixed(&[10])));
        let s = g.add_node(Op::Binary(BinaryOp::Add), vec![Some(a), Some(a)], None, "add_u8").unwrap();
        g.add_output("s", s);
        let x = u8t(&[10], &[1; 10]);
        let opts = RunOptions { max_tensor_bytes: 79 };
        let e = run_observed(&g, std::slice::from_ref(&x), &opts, &mut |_, _| {}).unwrap_err();
        assert_eq!(e, IrError::TooLarge { node: "add_u8".into(), what: Allocation::Temporary, bytes: 80, limit: 79 });
        assert_eq!(
            e.to_string(),
            "node `add_u8`: a temporary needs 80 bytes, more than the limit of 79 bytes (--max-tensor-bytes)"
        );
        let opts = RunOptions { max_tensor_bytes: 80 };
        assert!(run_observed(&g, &[x], &opts, &mut |_, _| {}).is_ok());
        let f = TensorType::new(DType::F32, Shape::fixed(&[10]));
        assert_eq!(temporary_bytes(&Op::Binary(BinaryOp::Add), &[Some(&f), Some(&f)], std::slice::from_ref(&f)), 0);
        let i = TensorType::new(DType::I64, Shape::fixed(&[3]));
        assert_eq!(temporary_bytes(&Op::Gather { axis: 0 }, &[Some(&f), Some(&i)], std::slice::from_ref(&f)), 24);
        assert_eq!(temporary_bytes(&Op::Cast { to: DType::I8 }, &[Some(&f)], std::slice::from_ref(&f)), 0);
    }

    #[test]
    fn op_errors_name_the_node() {
        let mut g = Graph::new("div");
        let a = g.add_input("a", TensorType::new(DType::I32, Shape::fixed(&[2])));
        let z = g.add_const("z", i32t(&[2], &[1, 0]));
        let d = g.add_node(Op::Binary(BinaryOp::Div), vec![Some(a), Some(z)], None, "the_div").unwrap();
        g.add_output("d", d);
        let e = run(&g, &[i32t(&[2], &[4, 4])]).unwrap_err();
        assert!(matches!(&e, IrError::Node { node, op: "div", .. } if node == "the_div"), "{e}");
    }

    #[test]
    fn empty_tensors_flow_through() {
        let mut g = Graph::new("empty");
        let x = g.add_input("x", TensorType::new(DType::F32, sym(&["N", "1", "4", "4"])));
        let w = g.add_const("w", f32t(&[2, 1, 3, 3], &[0.5; 18]));
        let conv = crate::ConvAttrs {
            kernel: vec![3, 3],
            strides: vec![1, 1],
            pads: vec![1, 1, 1, 1],
            dilations: vec![1, 1],
            group: 1,
        };
        let c = g.add_node(Op::Conv(conv), vec![Some(x), Some(w)], None, "conv").unwrap();
        let p = g.add_node(Op::GlobalAveragePool, vec![Some(c)], None, "gap").unwrap();
        let s = g.add_node(Op::Softmax { axis: 1 }, vec![Some(p)], None, "softmax").unwrap();
        g.add_output("s", s);
        let out = run(&g, &[f32t(&[0, 1, 4, 4], &[])]).unwrap();
        assert_eq!(out[0].shape(), &[0, 2, 1, 1]);
    }

    #[test]
    fn same_value_twice_and_output_twice() {
        let mut g = Graph::new("twice");
        let x = g.add_input("x", TensorType::new(DType::F32, Shape::fixed(&[2])));
        let s = g.add_node(Op::Binary(BinaryOp::Mul), vec![Some(x), Some(x)], None, "sq").unwrap();
        g.add_output("a", s);
        g.add_output("b", s);
        g.add_output("x", x);
        let out = run(&g, &[f32t(&[2], &[3.0, -2.0])]).unwrap();
        assert_eq!(out[0].as_f32().unwrap(), &[9.0, 4.0]);
        assert_eq!(out[1], out[0]);
        assert_eq!(out[2].as_f32().unwrap(), &[3.0, -2.0]);
    }

    #[test]
    fn runs_a_quantized_graph_end_to_end() {
        // quantize -> qconv(bias, requant, clamp) -> dequantize
        let mut g = Graph::new("q");
        let x = g.add_input("x", TensorType::new(DType::F32, sym(&["N", "1", "3", "3"])));
        let xq_ty = TensorType::quantized(DType::U8, sym(&["N", "1", "3", "3"]), pt(0.1, 10));
        let xq = g.add_node(Op::Quantize, vec![Some(x)], Some(vec![xq_ty]), "q").unwrap();
        let w = i8t(&[1, 1, 1, 1], &[2]);
        let wty = qty(&w, pt(0.5, 0));
        let w = g.add_const_typed("w", w, wty);
        let b = g.add_const("b", i32t(&[1], &[-10]));
        let conv = crate::ConvAttrs {
            kernel: vec![1, 1],
            strides: vec![1, 1],
            pads: vec![0, 0, 0, 0],
            dilations: vec![1, 1],
            group: 1,
        };
        let op =
            Op::QConv { conv, epilogue: vec![Epilogue::Bias, Epilogue::Requant, Epilogue::Clamp { lo: 0, hi: 255 }] };
        let yq_ty = TensorType::quantized(DType::U8, Shape(vec![]), pt(0.2, 0));
        let y = g.add_node(op, vec![Some(xq), Some(w), Some(b)], Some(vec![yq_ty]), "conv").unwrap();
        let d = g.add_node(Op::Dequantize, vec![Some(y)], None, "dq").unwrap();
        g.add_output("y", d);
        crate::verify::verify(&g).unwrap();
        let x = f32t(&[1, 1, 3, 3], &[0.0, 0.1, 0.2, 0.5, 1.0, -1.0, 2.0, 3.0, 0.05]);
        let out = run(&g, &[x]).unwrap();
        // xq = round(x/0.1) + 10 (0.05 -> 0.5 -> 0, half to even); acc = (xq - 10) * 2 - 10;
        // m = 0.1 * 0.5 / 0.2 = 0.25: acc -10, -8, -6, 0, 10, -30, 30, 50, -10 -> round(acc / 4)
        // with ties to even (2.5 -> 2, 7.5 -> 8, 12.5 -> 12), clamped at 0.
        let expect: Vec<f32> = [0, 0, 0, 0, 2, 0, 8, 12, 0].iter().map(|&q| q as f32 * 0.2).collect();
        assert_close(out[0].as_f32().unwrap(), &expect, 1e-6);
    }
}
