//! QDQ ONNX export (`qforge quantize MODEL --calib X.npy -o OUT.onnx`): a graph in the Q/DQ form
//! the quantizer writes becomes a standard ONNX model (opset 17, IR 8) that ONNX Runtime and other
//! runtimes load: `quantize` is QuantizeLinear, `dequantize` DequantizeLinear (per-axis parameters
//! with `axis`), quantized constants become integer initializers whose scale and zero point feed
//! their DequantizeLinear, and the float ops map one to one. Integer ops the optimizer makes
//! (qconv, qgemm, ...) are not exported: export the Q/DQ graph (`--opt-level 1`), which is what
//! other runtimes fuse themselves.
//!
//! A size the IR reads from its inputs' dims at run time ([`DimExpr`]: a reshape, expand or range
//! on a dynamic batch, a resize to another tensor's height and width, a resize's untouched
//! symbolic axes) is computed in the exported graph the same way, from `Shape` of the value whose
//! dim it reads ([`Out::size`]), so the exported model is dynamic in every dim the source is. GELU
//! (an opset-20 operator) is written as the function body the ONNX spec gives it.
//!
//! Per-group (block-wise) parameters become a blocked DequantizeLinear/QuantizeLinear (`axis` and
//! `block_size`, opset 21: the model is then opset 21, IR 10); a per-group constant whose codes
//! and zero points fit in 4 bits (`[-8, 7]` for i8, `[0, 15]` for u8) is written as an INT4/UINT4
//! initializer, two values per byte, with INT4/UINT4 zero points; with
//! [`ExportOptions::int4_per_axis`] a per-axis (per-channel) one is too (opset 21).

use super::builder::{float, int, ints, vi};
use super::proto::attribute_proto::AttributeType;
use super::proto::tensor_proto::DataType;
use super::proto::AttributeProto;
use super::proto::{GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto};
use super::tensors::{dtype_to_onnx, tensor_to_proto};
use prost::Message;
use qforge_ir::{
    BinaryOp, CoordMode, DType, Dim, DimExpr, Graph, NearestMode, Op, PadMode, QuantParams, ResizeMode, ResizeTarget,
    ScatterReduction, Tensor, TensorType, UnaryOp, Value,
};
use qforge_passes::quantize::scheme::{pack_int4, QType, SchemeError};
use std::collections::{HashMap, HashSet};

/// Export failed: an op has no ONNX form here, or the graph is malformed.
#[derive(Debug, thiserror::Error)]
#[error("QDQ export: node `{node}` ({op}): {msg}")]
pub struct ExportError {
    pub node: String,
    pub op: &'static str,
    pub msg: String,
}

/// Why quantization parameters cannot be written (part of an [`ExportError`]'s message).
#[derive(Debug, thiserror::Error)]
enum ParamsError {
    #[error("per-group parameters of a value without a fixed shape")]
    NoFixedShape,
    #[error("per-group parameters do not fit the value's shape")]
    GroupShape,
    #[error("4-bit zero points: {0}")]
    Pack(SchemeError),
}

struct Names {
    used: HashSet<String>,
    of: HashMap<Value, String>,
}

impl Names {
    fn fresh(&mut self, base: &str) -> String {
        let base = if base.is_empty() { "v" } else { base };
        let mut name = base.to_string();
        let mut i = 1;
        while !self.used.insert(name.clone()) {
            name = format!("{base}_{i}");
            i += 1;
        }
        name
    }
}

/// A string attribute.
fn string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn scalar(dtype: DType, x: f64) -> Tensor {
    Tensor::from_f64_iter(dtype, vec![], std::iter::once(x))
}

/// What an export writes beyond the graph itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExportOptions {
    /// Per-channel (per-axis) quantized constants whose codes and zero points fit in 4 bits are
    /// written as INT4/UINT4 too (opset 21), as per-group ones always are: the 4-bit weights a
    /// target takes per channel (QNN's int4 weights).
    pub int4_per_axis: bool,
}

/// The 4-bit ONNX type (INT4 for i8, UINT4 for u8) of a per-group (or, with `per_axis`, per-axis)
/// quantized constant whose codes and zero points all fit in 4 bits.
fn four_bit(t: &Tensor, ty: &TensorType, per_axis: bool) -> Option<DataType> {
    let zero_points = match &ty.quant {
        Some(QuantParams::PerGroup { zero_points, .. }) => zero_points,
        Some(QuantParams::PerAxis { zero_points, .. }) if per_axis => zero_points,
        _ => return None,
    };
    let (dt, lo, hi) = match t.dtype() {
        DType::I8 => (DataType::Int4, -8, 7),
        DType::U8 => (DataType::Uint4, 0, 15),
        _ => return None,
    };
    let fits = |v: i64| (lo..=hi).contains(&v);
    (t.to_i64_vec()?.into_iter().all(fits) && zero_points.iter().all(|&z| fits(z as i64))).then_some(dt)
}

/// An INT4/UINT4 initializer: `codes` packed two per byte (element `2i` in the low nibble).
/// [`four_bit`] has checked that the codes fit; packing reports it if they do not.
fn int4_proto(name: &str, shape: &[usize], codes: &[i64], dt: DataType) -> Result<TensorProto, SchemeError> {
    let qtype = if dt == DataType::Int4 { QType::I4 } else { QType::U4 };
    let codes: Vec<i32> = codes.iter().map(|&c| c as i32).collect();
    Ok(TensorProto {
        name: name.to_string(),
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: dt as i32,
        raw_data: pack_int4(&codes, qtype)?,
        ..Default::default()
    })
}

/// Scale and zero-point initializers for `q` with zero points of `dtype` (or of `int4`, the 4-bit
/// type of the quantized value) for a value of `shape`; returns their names, the axis for
/// per-axis and per-group parameters, and the block size for per-group ones.
fn qparams(
    q: &QuantParams,
    dtype: DType,
    int4: Option<DataType>,
    shape: Option<&[usize]>,
    base: &str,
    names: &mut Names,
    inits: &mut Vec<TensorProto>,
) -> Result<(String, String, Option<usize>, Option<usize>), ParamsError> {
    let (sn, zn) = (names.fresh(&format!("{base}_scale")), names.fresh(&format!("{base}_zero_point")));
    // a 4-bit per-axis constant: INT4/UINT4 zero points, as its codes
    if let (QuantParams::PerAxis { axis, scales, zero_points }, Some(dt)) = (q, int4) {
        let zs: Vec<i64> = zero_points.iter().map(|&z| z as i64).collect();
        inits.push(tensor_to_proto(&sn, &Tensor::from_f32(vec![scales.len()], scales.clone())));
        inits.push(int4_proto(&zn, &[zs.len()], &zs, dt).map_err(ParamsError::Pack)?);
        return Ok((sn, zn, Some(*axis), None));
    }
    let (s, z, axis, block) = match q {
        QuantParams::PerTensor { scale, zero_point } => {
            (scalar(DType::F32, *scale as f64), scalar(dtype, *zero_point as f64), None, None)
        }
        QuantParams::PerAxis { axis, scales, zero_points } => (
            Tensor::from_f32(vec![scales.len()], scales.clone()),
            Tensor::from_f64_iter(dtype, vec![zero_points.len()], zero_points.iter().map(|&z| z as f64)),
            Some(*axis),
            None,
        ),
        QuantParams::PerGroup { axis, group_size, scales, zero_points } => {
            let shape = shape.ok_or(ParamsError::NoFixedShape)?;
            let ps = QuantParams::group_param_shape(*axis, *group_size, shape).ok_or(ParamsError::GroupShape)?;
            let s = Tensor::from_f32(ps.clone(), scales.clone());
            if let Some(dt) = int4 {
                let zs: Vec<i64> = zero_points.iter().map(|&z| z as i64).collect();
                inits.push(tensor_to_proto(&sn, &s));
                inits.push(int4_proto(&zn, &ps, &zs, dt).map_err(ParamsError::Pack)?);
                return Ok((sn, zn, Some(*axis), Some(*group_size)));
            }
            let z = Tensor::from_f64_iter(dtype, ps, zero_points.iter().map(|&z| z as f64));
            (s, z, Some(*axis), Some(*group_size))
        }
    };
    inits.push(tensor_to_proto(&sn, &s));
    inits.push(tensor_to_proto(&zn, &z));
    Ok((sn, zn, axis, block))
}

fn value_info(name: &str, t: &TensorType) -> super::proto::ValueInfoProto {
    vi(name, dtype_to_onnx(t.dtype), t.shape.dims())
}

/// The exported graph as it is built: value names, initializers and nodes.
struct Out {
    names: Names,
    inits: Vec<TensorProto>,
    nodes: Vec<NodeProto>,
    /// Node names given out: ONNX wants them unique (the IR's need not be: a shared dequantize
    /// copied per user).
    node_names: HashSet<String>,
}

impl Out {
    /// `base`, or `base_1`, `base_2`, ... the first one no node has.
    fn node_name(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while !self.node_names.insert(name.clone()) {
            name = format!("{base}_{k}");
            k += 1;
        }
        name
    }

    /// An initializer holding `t`; returns its name.
    fn constant(&mut self, base: &str, t: &Tensor) -> String {
        let n = self.names.fresh(base);
        self.inits.push(tensor_to_proto(&n, t));
        n
    }

    /// A node the export adds (run-time size arithmetic, a decomposition) with one result, named
    /// after `base`; returns the result's name.
    fn helper(&mut self, op_type: &str, base: &str, input: Vec<String>, attribute: Vec<AttributeProto>) -> String {
        let y = self.names.fresh(&format!("{base}/{op_type}"));
        let name = self.node_name(&y);
        self.nodes.push(NodeProto {
            op_type: op_type.into(),
            name,
            input,
            output: vec![y.clone()],
            attribute,
            ..Default::default()
        });
        y
    }

    /// A size as the exported graph computes it: a [`DimExpr`] is `k` times the product of dims
    /// of the op's inputs (`ins`, the names of its inputs in order), which the IR reads from their
    /// types, so a symbolic one (the batch `N`, a derived `(H+1)/2`) is whatever size that input
    /// has at run time. It becomes `Shape(start=a, end=a+1)` of each input it reads (opset 15+),
    /// multiplied together and by `k`: a 1-element int64 tensor. Reading the dims of the values
    /// themselves, not recomputing the symbol from the graph inputs, is what the op does in the
    /// IR, so the exported graph stays dynamic in every dim the source model is dynamic in.
    fn size(&mut self, e: &DimExpr, ins: &[String], base: &str) -> Result<String, String> {
        let mut acc: Option<String> = None;
        for &(i, a) in &e.of {
            let x = ins.get(i).filter(|n| !n.is_empty()).ok_or_else(|| format!("a size reads missing input {i}"))?;
            let d = self.helper("Shape", base, vec![x.clone()], vec![int("start", a as i64), int("end", a as i64 + 1)]);
            acc = Some(match acc {
                None => d,
                Some(p) => self.helper("Mul", base, vec![p, d], vec![]),
            });
        }
        if let Some(d) = &e.expr {
            let v = self.dim(d, ins, base)?;
            acc = Some(match acc {
                None => v,
                Some(p) => self.helper("Mul", base, vec![p, v], vec![]),
            });
        }
        Ok(self.times(acc, e.k, base))
    }

    /// `k` times `acc` (a 1-element int64 tensor), or the constant `k` without one.
    fn times(&mut self, acc: Option<String>, k: i64, base: &str) -> String {
        let kn = |out: &mut Out| out.constant(&format!("{base}/k"), &Tensor::from_i64(vec![1], vec![k]));
        match acc {
            None => kn(self),
            Some(p) if k == 1 => p,
            Some(p) => {
                let kv = kn(self);
                self.helper("Mul", base, vec![p, kv], vec![])
            }
        }
    }

    /// A size derived from the op's inputs' dims ([`Dim`] over the placeholders `$I.A`, see
    /// [`DimExpr::expr`]) as a 1-element int64 tensor: its constant factor times its factors, a
    /// derived factor `floor((k1*B1 + ... + b) / c)` computed with floor division (ONNX `Div`
    /// truncates integers toward zero; `a - Mod(a, c)`, with `Mod`'s result taking the divisor's
    /// sign, is the multiple of `c` at or below `a`, so the division is exact).
    fn dim(&mut self, d: &Dim, ins: &[String], base: &str) -> Result<String, String> {
        let (k, syms) = d.factors().ok_or_else(|| format!("the size {d} has no product form"))?;
        let mut acc: Option<String> = None;
        for f in &syms {
            let v = if let Some((terms, b, c)) = Dim::derived_parts(f) {
                let mut total: Option<String> = None;
                for (kt, bt) in terms {
                    let v = self.dim(&Dim::Sym(bt), ins, base)?;
                    let v = self.times(Some(v), kt, base);
                    total = Some(match total {
                        None => v,
                        Some(t) => self.helper("Add", base, vec![t, v], vec![]),
                    });
                }
                let mut t = total.ok_or_else(|| format!("the derived size {f} has no terms"))?;
                if b != 0 {
                    let bn = self.constant(&format!("{base}/b"), &Tensor::from_i64(vec![1], vec![b]));
                    t = self.helper("Add", base, vec![t, bn], vec![]);
                }
                if c != 1 {
                    let c = i64::try_from(c).map_err(|_| format!("the divisor {c} does not fit int64"))?;
                    let cn = self.constant(&format!("{base}/c"), &Tensor::from_i64(vec![1], vec![c]));
                    let r = self.helper("Mod", base, vec![t.clone(), cn.clone()], vec![]);
                    let m = self.helper("Sub", base, vec![t, r], vec![]);
                    t = self.helper("Div", base, vec![m, cn], vec![]);
                }
                t
            } else if let Some((i, a)) = Dim::parse_input_dim(f) {
                let x =
                    ins.get(i).filter(|n| !n.is_empty()).ok_or_else(|| format!("a size reads missing input {i}"))?;
                self.helper("Shape", base, vec![x.clone()], vec![int("start", a as i64), int("end", a as i64 + 1)])
            } else {
                return Err(format!("the size {d} reads `{f}`, not a dim of the op's inputs"));
            };
            acc = Some(match acc {
                None => v,
                Some(p) => self.helper("Mul", base, vec![p, v], vec![]),
            });
        }
        let k = i64::try_from(k).map_err(|_| format!("the size {d} does not fit int64"))?;
        Ok(self.times(acc, k, base))
    }

    /// A 1-D int64 shape of [`Out::size`]s: one initializer when every size is fixed, otherwise
    /// the sizes concatenated.
    fn sizes(&mut self, es: &[DimExpr], ins: &[String], base: &str) -> Result<String, String> {
        if es.iter().all(|e| e.of.is_empty() && e.expr.is_none()) {
            let v: Vec<i64> = es.iter().map(|e| e.k).collect();
            return Ok(self.constant(base, &Tensor::from_i64(vec![v.len()], v)));
        }
        let parts = es.iter().map(|e| self.size(e, ins, base)).collect::<Result<Vec<_>, _>>()?;
        Ok(self.helper("Concat", base, parts, vec![int("axis", 0)]))
    }
}

/// The sizes a resize to sizes produces, one per axis (ONNX Resize before opset 18 takes every
/// axis' size): the result's own dim where it is fixed; where it is symbolic, the size the op
/// reads from its inputs' dims ([`ResizeTarget::DimSizes`]) or, on an axis it does not resize,
/// the input's dim (input 0).
fn resize_sizes(target: &ResizeTarget, y: &TensorType) -> Result<Vec<DimExpr>, String> {
    let dims = y.shape.dims();
    (0..dims.len())
        .map(|ax| {
            if let Some(n) = dims[ax].fixed() {
                let n = i64::try_from(n).map_err(|_| format!("the size {n} does not fit int64"))?;
                return Ok(DimExpr::fixed(n));
            }
            match target {
                ResizeTarget::DimSizes { axes, sizes } => {
                    if let Some(j) = axes.iter().position(|&a| a == ax) {
                        return sizes.get(j).cloned().ok_or_else(|| format!("no size for axis {ax}"));
                    }
                }
                ResizeTarget::Sizes { axes, .. } if axes.contains(&ax) => {
                    return Err(format!("the resized axis {ax} has the symbolic size {}", dims[ax]));
                }
                _ => {}
            }
            Ok(DimExpr::product(1, vec![(0, ax)]))
        })
        .collect()
}

/// The model's bytes.
pub fn export_qdq(g: &Graph) -> Result<Vec<u8>, ExportError> {
    export_qdq_with(g, ExportOptions::default())
}

/// The model's bytes, with `opts`.
pub fn export_qdq_with(g: &Graph, opts: ExportOptions) -> Result<Vec<u8>, ExportError> {
    let order = g.schedule().map_err(|e| ExportError { node: g.name.clone(), op: "graph", msg: e.to_string() })?;
    let mut out = Out {
        names: Names { used: HashSet::new(), of: HashMap::new() },
        inits: vec![],
        nodes: vec![],
        node_names: HashSet::new(),
    };
    let mut inputs = vec![];
    for &i in g.inputs() {
        let n = g.node(i);
        let name = out.names.fresh(&n.name);
        inputs.push(value_info(&name, &n.outputs[0]));
        out.names.of.insert(Value::new(i, 0), name);
    }
    // graph outputs keep their names (a value that is an output under two names gets an Identity)
    let mut out_alias: HashMap<Value, String> = HashMap::new();
    for o in g.outputs() {
        if !out_alias.contains_key(&o.value)
            && !out.names.of.contains_key(&o.value)
            && out.names.used.insert(o.name.clone())
        {
            out_alias.insert(o.value, o.name.clone());
        }
    }
    // blocked (per-group) quantization needs opset 21; 4-bit constants are exported as INT4/UINT4
    let mut per_group = false;
    let mut int4: HashMap<Value, DataType> = HashMap::new();
    for &id in &order {
        let node = g.node(id);
        per_group |= node.outputs.iter().any(|t| t.quant.as_ref().is_some_and(QuantParams::is_per_group));
        if let Op::Const(t) = &node.op {
            if let Some(dt) = four_bit(t, &node.outputs[0], opts.int4_per_axis) {
                int4.insert(Value::new(id, 0), dt);
            }
        }
    }
    for id in order {
        let node = g.node(id);
        let err = |msg: String| ExportError { node: node.name.clone(), op: node.op.name(), msg };
        let outs: Vec<String> = (0..node.outputs.len())
            .map(|p| {
                let v = Value::new(id, p);
                out_alias.get(&v).cloned().unwrap_or_else(|| {
                    let base = if node.outputs.len() > 1 { format!("{}:{p}", node.name) } else { node.name.clone() };
                    out.names.fresh(&base)
                })
            })
            .collect();
        for (p, n) in outs.iter().enumerate() {
            out.names.of.insert(Value::new(id, p), n.clone());
        }
        if let Op::Const(t) = &node.op {
            match int4.get(&Value::new(id, 0)) {
                Some(&dt) => out.inits.push(
                    int4_proto(&outs[0], t.shape(), &t.to_i64_vec().unwrap_or_default(), dt)
                        .map_err(|e| err(format!("4-bit constant: {e}")))?,
                ),
                None => out.inits.push(tensor_to_proto(&outs[0], t)),
            }
            continue;
        }
        let mut ins: Vec<String> = vec![];
        for v in node.inputs() {
            ins.push(match v {
                Some(v) => out.names.of.get(v).cloned().ok_or_else(|| err("input has no name".into()))?,
                None => String::new(),
            });
        }
        while ins.last().is_some_and(|s| s.is_empty()) {
            ins.pop();
        }
        let in_ty = |i: usize| node.inputs().get(i).copied().flatten().map(|v| g.value_type(v));
        let mut attrs = vec![];
        let op_type: &str = match &node.op {
            Op::Quantize | Op::Dequantize => {
                let (ty, qdtype) = match node.op {
                    Op::Quantize => (&node.outputs[0], node.outputs[0].dtype),
                    _ => {
                        let t = in_ty(0).ok_or_else(|| err("no input".into()))?;
                        (t, t.dtype)
                    }
                };
                let q = ty.quant.as_ref().ok_or_else(|| err("no quantization parameters".into()))?;
                if matches!(node.op, Op::Quantize) && qdtype == DType::I32 {
                    return Err(err("QuantizeLinear to int32 has no ONNX form (opset 17)".into()));
                }
                let packed = match node.op {
                    Op::Dequantize => node.inputs()[0].and_then(|v| int4.get(&v).copied()),
                    _ => None,
                };
                let shape = ty.shape.as_fixed();
                let (s, z, axis, block) =
                    qparams(q, qdtype, packed, shape.as_deref(), &outs[0], &mut out.names, &mut out.inits)
                        .map_err(|e| err(e.to_string()))?;
                ins.push(s);
                if qdtype != DType::I32 || q.len() > 1 || q.zero_point(0) != 0 {
                    ins.push(z);
                }
                if let Some(a) = axis {
                    attrs.push(int("axis", a as i64));
                }
                if let Some(b) = block {
                    attrs.push(int("block_size", b as i64));
                }
                if matches!(node.op, Op::Quantize) {
                    "QuantizeLinear"
                } else {
                    "DequantizeLinear"
                }
            }
            Op::Conv(a) | Op::ConvInteger(a) => {
                attrs.push(ints("kernel_shape", &a.kernel.iter().map(|&x| x as i64).collect::<Vec<_>>()));
                attrs.push(ints("strides", &a.strides.iter().map(|&x| x as i64).collect::<Vec<_>>()));
                attrs.push(ints("pads", &a.pads.iter().map(|&x| x as i64).collect::<Vec<_>>()));
                attrs.push(ints("dilations", &a.dilations.iter().map(|&x| x as i64).collect::<Vec<_>>()));
                attrs.push(int("group", a.group as i64));
                if matches!(node.op, Op::Conv(_)) {
                    "Conv"
                } else {
                    "ConvInteger"
                }
            }
            Op::Gemm { alpha, beta, trans_a, trans_b } => {
                attrs.push(float("alpha", *alpha));
                attrs.push(float("beta", *beta));
                attrs.push(int("transA", *trans_a as i64));
                attrs.push(int("transB", *trans_b as i64));
                "Gemm"
            }
            Op::MatMul => "MatMul",
            Op::MatMulInteger => "MatMulInteger",
            Op::DynamicQuantize => "DynamicQuantizeLinear",
            Op::Binary(b) => match b {
                BinaryOp::Add => "Add",
                BinaryOp::Sub => "Sub",
                BinaryOp::Mul => "Mul",
                BinaryOp::Div => "Div",
                BinaryOp::Pow => "Pow",
                BinaryOp::Max => "Max",
                BinaryOp::Min => "Min",
                BinaryOp::Equal => "Equal",
                BinaryOp::Less => "Less",
                BinaryOp::Greater => "Greater",
                BinaryOp::LessOrEqual => "LessOrEqual",
                BinaryOp::GreaterOrEqual => "GreaterOrEqual",
                BinaryOp::And => "And",
                BinaryOp::Or => "Or",
                BinaryOp::Mod => "Mod",
                BinaryOp::Fmod => {
                    attrs.push(int("fmod", 1));
                    "Mod"
                }
                _ => return Err(err("no export for this binary op".into())),
            },
            Op::Where => "Where",
            // GELU is an opset-20 operator; the export writes opset 17, so it is written as the
            // function body the ONNX spec gives for Gelu (onnx/defs/math/defs.cc, opset 20):
            // exact, `Y = (0.5 X) (1 + Erf(X / Sqrt(2)))`; tanh, `Y = (0.5 X) (1 + Tanh(Sqrt(2/pi)
            // (X + 0.044715 X^3)))`; the result is the spec's last Mul
            Op::Unary(u @ (UnaryOp::Gelu | UnaryOp::GeluTanh)) => {
                let t = in_ty(0).ok_or_else(|| err("no input".into()))?;
                if t.quant.is_some() || !t.dtype.is_compute_float() {
                    return Err(err(format!("GELU of {t} has no ONNX form (a float input is needed)")));
                }
                let (x, base) = (ins[0].clone(), outs[0].clone());
                let mut c = |v: f64| out.constant(&format!("{base}/c"), &scalar(t.dtype, v));
                let (one, half) = (c(1.0), c(0.5));
                let inner = if *u == UnaryOp::Gelu {
                    let sqrt2 = c(std::f64::consts::SQRT_2);
                    let d = out.helper("Div", &base, vec![x.clone(), sqrt2], vec![]);
                    out.helper("Erf", &base, vec![d], vec![])
                } else {
                    // Sqrt(2/pi) rounded once to the element type (the spec rounds 2/pi first
                    // and takes Sqrt of it, which can differ by one unit in the last place)
                    let (three, c0, k) = (c(3.0), c(0.044715), c((2.0 / std::f64::consts::PI).sqrt()));
                    let cube = out.helper("Pow", &base, vec![x.clone(), three], vec![]);
                    let cube = out.helper("Mul", &base, vec![c0, cube], vec![]);
                    let sum = out.helper("Add", &base, vec![x.clone(), cube], vec![]);
                    let arg = out.helper("Mul", &base, vec![k, sum], vec![]);
                    out.helper("Tanh", &base, vec![arg], vec![])
                };
                let phi = out.helper("Add", &base, vec![one, inner], vec![]);
                let half_x = out.helper("Mul", &base, vec![half, x], vec![]);
                ins = vec![half_x, phi];
                "Mul"
            }
            Op::Unary(u) => match u {
                UnaryOp::Relu => "Relu",
                UnaryOp::Sigmoid => "Sigmoid",
                UnaryOp::Tanh => "Tanh",
                UnaryOp::HardSwish => "HardSwish",
                UnaryOp::Erf => "Erf",
                UnaryOp::Exp => "Exp",
                UnaryOp::Sqrt => "Sqrt",
                UnaryOp::Neg => "Neg",
                UnaryOp::Abs => "Abs",
                UnaryOp::Log => "Log",
                UnaryOp::Reciprocal => "Reciprocal",
                UnaryOp::Floor => "Floor",
                UnaryOp::Ceil => "Ceil",
                UnaryOp::Sign => "Sign",
                UnaryOp::Round => "Round",
                UnaryOp::Sin => "Sin",
                UnaryOp::Cos => "Cos",
                UnaryOp::Not => "Not",
                _ => return Err(err("no export for this unary op".into())),
            },
            Op::Clip { min, max } => {
                for (what, x) in [("min", *min), ("max", *max)] {
                    let n = out.constant(&format!("{}_{what}", outs[0]), &scalar(DType::F32, x as f64));
                    ins.push(n);
                }
                "Clip"
            }
            Op::MaxPool(p) | Op::AveragePool(p) => {
                attrs.push(ints("kernel_shape", &p.kernel.iter().map(|&x| x as i64).collect::<Vec<_>>()));
                attrs.push(ints("strides", &p.strides.iter().map(|&x| x as i64).collect::<Vec<_>>()));
                attrs.push(ints("pads", &p.pads.iter().map(|&x| x as i64).collect::<Vec<_>>()));
                attrs.push(int("ceil_mode", p.ceil_mode as i64));
                if matches!(node.op, Op::MaxPool(_)) {
                    attrs.push(ints("dilations", &p.dilations.iter().map(|&x| x as i64).collect::<Vec<_>>()));
                    "MaxPool"
                } else {
                    if p.dilations.iter().any(|&d| d != 1) {
                        return Err(err("dilated average pooling needs opset 19".into()));
                    }
                    attrs.push(int("count_include_pad", p.count_include_pad as i64));
                    "AveragePool"
                }
            }
            Op::GlobalAveragePool => "GlobalAveragePool",
            Op::GlobalMaxPool => "GlobalMaxPool",
            Op::BatchNorm { epsilon } => {
                attrs.push(float("epsilon", *epsilon));
                "BatchNormalization"
            }
            Op::Flatten { axis } => {
                attrs.push(int("axis", *axis));
                "Flatten"
            }
            Op::Reshape { shape } => {
                let n =
                    out.constant(&format!("{}_shape", outs[0]), &Tensor::from_i64(vec![shape.len()], shape.clone()));
                ins.push(n);
                "Reshape"
            }
            Op::ReshapeDyn { shape } => {
                let n = out.sizes(shape, &ins, &format!("{}_shape", outs[0])).map_err(&err)?;
                ins.truncate(1);
                ins.push(n);
                // every size is explicit (reshape_dyn has no `0` or `-1` entries): a size that is
                // 0 at run time is an empty axis, not "the input's dim" (`allowzero`, opset 14)
                attrs.push(int("allowzero", 1));
                "Reshape"
            }
            Op::Range { start, limit, delta, dtype } => {
                // computed in int64, as the IR computes it, then cast (ONNX Range takes scalars)
                let base = outs[0].clone();
                let zero = out.constant(&format!("{base}/axes"), &Tensor::from_i64(vec![1], vec![0]));
                let mut bounds = vec![];
                for e in [start, limit] {
                    let v = out.size(e, &ins, &base).map_err(&err)?;
                    bounds.push(out.helper("Squeeze", &base, vec![v, zero.clone()], vec![]));
                }
                bounds.push(out.constant(&format!("{base}/delta"), &Tensor::from_i64(vec![], vec![*delta])));
                ins = bounds;
                if *dtype != DType::I64 {
                    let r = out.helper("Range", &base, std::mem::take(&mut ins), vec![]);
                    ins.push(r);
                    attrs.push(int("to", dtype_to_onnx(*dtype) as i64));
                    "Cast"
                } else {
                    "Range"
                }
            }
            Op::Expand { shape } => {
                let n =
                    out.constant(&format!("{}_shape", outs[0]), &Tensor::from_i64(vec![shape.len()], shape.clone()));
                ins.push(n);
                "Expand"
            }
            Op::ExpandDyn { shape } => {
                let n = out.sizes(shape, &ins, &format!("{}_shape", outs[0])).map_err(&err)?;
                ins.truncate(1);
                ins.push(n);
                "Expand"
            }
            Op::Split { axis, sizes } => {
                let v = sizes.iter().map(|&d| i64::try_from(d)).collect::<Result<Vec<_>, _>>();
                let v = v.map_err(|_| err("a part size does not fit int64".into()))?;
                let n = out.constant(&format!("{}_split", outs[0]), &Tensor::from_i64(vec![v.len()], v));
                ins.truncate(1);
                ins.push(n);
                attrs.push(int("axis", *axis));
                "Split"
            }
            Op::Transpose { perm } => {
                attrs.push(ints("perm", &perm.iter().map(|&x| x as i64).collect::<Vec<_>>()));
                "Transpose"
            }
            Op::Concat { axis } => {
                attrs.push(int("axis", *axis));
                "Concat"
            }
            Op::Softmax { axis } | Op::LogSoftmax { axis } => {
                attrs.push(int("axis", *axis));
                if matches!(node.op, Op::Softmax { .. }) {
                    "Softmax"
                } else {
                    "LogSoftmax"
                }
            }
            Op::Cast { to } => {
                attrs.push(int("to", dtype_to_onnx(*to) as i64));
                "Cast"
            }
            Op::Identity => "Identity",
            Op::Gather { axis } => {
                attrs.push(int("axis", *axis));
                "Gather"
            }
            Op::ScatterND { reduction } => {
                let r = match reduction {
                    ScatterReduction::None => "none",
                    ScatterReduction::Add => "add",
                    ScatterReduction::Mul => "mul",
                    ScatterReduction::Max | ScatterReduction::Min => {
                        return Err(err("a max or min scatter reduction needs opset 18".into()))
                    }
                };
                attrs.push(string("reduction", r));
                "ScatterND"
            }
            Op::Slice { starts, ends, axes, steps } => {
                for (what, v) in [("starts", starts), ("ends", ends), ("axes", axes), ("steps", steps)] {
                    let n = out.constant(&format!("{}_{what}", outs[0]), &Tensor::from_i64(vec![v.len()], v.clone()));
                    ins.push(n);
                }
                "Slice"
            }
            Op::Unsqueeze { axes } | Op::Squeeze { axes } => {
                let n = out.constant(&format!("{}_axes", outs[0]), &Tensor::from_i64(vec![axes.len()], axes.clone()));
                ins.push(n);
                if matches!(node.op, Op::Unsqueeze { .. }) {
                    "Unsqueeze"
                } else {
                    "Squeeze"
                }
            }
            Op::LayerNorm { axis, epsilon } => {
                attrs.push(int("axis", *axis));
                attrs.push(float("epsilon", *epsilon));
                "LayerNormalization"
            }
            // one group per channel is ONNX InstanceNormalization (opset 6: per-channel scale and
            // bias, statistics over the spatial axes); fewer groups need GroupNormalization,
            // an opset-18 operator the opset-17 export does not write
            Op::GroupNorm { groups, epsilon } => {
                let c = in_ty(0).and_then(|t| t.shape.0.get(1).and_then(Dim::fixed));
                if c != Some(*groups) {
                    return Err(err("group normalization with fewer groups than channels needs opset 18".into()));
                }
                attrs.push(float("epsilon", *epsilon));
                "InstanceNormalization"
            }
            Op::ConvTranspose(a) => {
                if a.pads.iter().any(|&p| p < 0) {
                    return Err(err("negative transposed-convolution pads have no ONNX form".into()));
                }
                let v = |x: &[usize]| x.iter().map(|&d| d as i64).collect::<Vec<_>>();
                attrs.push(ints("kernel_shape", &v(&a.kernel)));
                attrs.push(ints("strides", &v(&a.strides)));
                attrs.push(ints("pads", &a.pads));
                attrs.push(ints("dilations", &v(&a.dilations)));
                attrs.push(int("group", a.group as i64));
                attrs.push(ints("output_padding", &v(&a.output_padding)));
                "ConvTranspose"
            }
            Op::HardSigmoid { alpha, beta } => {
                attrs.push(float("alpha", *alpha));
                attrs.push(float("beta", *beta));
                "HardSigmoid"
            }
            Op::LeakyRelu { alpha } => {
                attrs.push(float("alpha", *alpha));
                "LeakyRelu"
            }
            // opset 17: ReduceSum takes its axes as an input, the others as an attribute
            Op::ReduceMean { axes, keepdims } | Op::ReduceMax { axes, keepdims } => {
                attrs.push(ints("axes", axes));
                attrs.push(int("keepdims", *keepdims as i64));
                if matches!(node.op, Op::ReduceMean { .. }) {
                    "ReduceMean"
                } else {
                    "ReduceMax"
                }
            }
            Op::ReduceSum { axes, keepdims } => {
                let n = out.constant(&format!("{}_axes", outs[0]), &Tensor::from_i64(vec![axes.len()], axes.clone()));
                ins.push(n);
                attrs.push(int("keepdims", *keepdims as i64));
                "ReduceSum"
            }
            Op::Pad { mode, pads, computed, value } => {
                let mode = match mode {
                    PadMode::Constant => "constant",
                    PadMode::Reflect => "reflect",
                    PadMode::Edge => "edge",
                    PadMode::Wrap => return Err(err("wrap padding needs opset 19".into())),
                };
                // pads computed from the inputs' dims (a window padding) are written as the
                // arithmetic on `Shape` of the inputs it reads, which are then cut from the node
                let es: Vec<DimExpr> = pads
                    .iter()
                    .enumerate()
                    .map(|(i, &p)| computed.iter().find(|(j, _)| *j == i).map_or(DimExpr::fixed(p), |(_, e)| e.clone()))
                    .collect();
                let n = out.sizes(&es, &ins, &format!("{}_pads", outs[0])).map_err(err)?;
                ins.truncate(1);
                ins.push(n);
                let x = in_ty(0).ok_or_else(|| err("no input".into()))?;
                if mode == "constant" && x.quant.is_none() {
                    let n = out.constant(&format!("{}_value", outs[0]), &scalar(x.dtype, *value));
                    ins.push(n);
                } else if mode == "constant" {
                    return Err(err("a pad of quantized values has no QDQ form (export the Q/DQ graph)".into()));
                }
                attrs.push(string("mode", mode));
                "Pad"
            }
            Op::Resize(a) => {
                if a.antialias {
                    return Err(err("antialiased resize needs opset 18".into()));
                }
                if in_ty(0).is_some_and(|t| t.quant.is_some()) {
                    return Err(err("a resize of quantized values has no QDQ form (export the Q/DQ graph)".into()));
                }
                let coord = match a.coord {
                    CoordMode::HalfPixel => "half_pixel",
                    CoordMode::HalfPixelSymmetric => return Err(err("half_pixel_symmetric needs opset 19".into())),
                    CoordMode::PytorchHalfPixel => "pytorch_half_pixel",
                    CoordMode::AlignCorners => "align_corners",
                    CoordMode::Asymmetric => "asymmetric",
                    CoordMode::TfCropAndResize => "tf_crop_and_resize",
                };
                attrs.push(string("coordinate_transformation_mode", coord));
                attrs.push(string(
                    "mode",
                    match a.mode {
                        ResizeMode::Nearest => "nearest",
                        ResizeMode::Linear => "linear",
                        ResizeMode::Cubic => "cubic",
                    },
                ));
                attrs.push(string(
                    "nearest_mode",
                    match a.nearest {
                        NearestMode::RoundPreferFloor => "round_prefer_floor",
                        NearestMode::RoundPreferCeil => "round_prefer_ceil",
                        NearestMode::Floor => "floor",
                        NearestMode::Ceil => "ceil",
                    },
                ));
                attrs.push(float("cubic_coeff_a", a.cubic_a));
                attrs.push(int("exclude_outside", a.exclude_outside as i64));
                attrs.push(float("extrapolation_value", a.extrapolation));
                // inputs: X, roi, scales, sizes (opset 13-17: sizes for every axis, so the sizes
                // are computed, from the inputs `ins` still lists, before they are cut to X)
                let sizes = match &a.target {
                    ResizeTarget::Scales(_) => String::new(),
                    target => {
                        let sizes = resize_sizes(target, &node.outputs[0]).map_err(&err)?;
                        out.sizes(&sizes, &ins, &format!("{}_sizes", outs[0])).map_err(&err)?
                    }
                };
                ins.truncate(1);
                let roi =
                    out.constant(&format!("{}_roi", outs[0]), &Tensor::from_f32(vec![a.roi.len()], a.roi.clone()));
                ins.push(roi);
                match &a.target {
                    ResizeTarget::Scales(s) => {
                        let n =
                            out.constant(&format!("{}_scales", outs[0]), &Tensor::from_f32(vec![s.len()], s.clone()));
                        ins.push(n);
                    }
                    ResizeTarget::Sizes { .. } | ResizeTarget::DimSizes { .. } => {
                        ins.push(String::new());
                        ins.push(sizes);
                    }
                }
                "Resize"
            }
            other => {
                return Err(err(format!(
                    "`{}` has no QDQ export (export the Q/DQ graph, --opt-level 1)",
                    other.name()
                )));
            }
        };
        let name = out.node_name(&node.name);
        out.nodes.push(NodeProto {
            op_type: op_type.into(),
            name,
            input: ins,
            output: outs,
            attribute: attrs,
            ..Default::default()
        });
    }
    // outputs: aliases, or an Identity where a value is output twice or is a graph input
    let mut outputs = vec![];
    for o in g.outputs() {
        let have = out.names.of.get(&o.value).cloned().ok_or_else(|| ExportError {
            node: o.name.clone(),
            op: "output",
            msg: "no value".into(),
        })?;
        if have != o.name {
            let name = out.names.fresh(&o.name);
            out.nodes.push(NodeProto {
                op_type: "Identity".into(),
                name: format!("{name}_Identity"),
                input: vec![have],
                output: vec![name.clone()],
                ..Default::default()
            });
            outputs.push(value_info(&name, g.value_type(o.value)));
        } else {
            outputs.push(value_info(&have, g.value_type(o.value)));
        }
    }
    let (ir_version, opset) = if per_group || !int4.is_empty() { (10, 21) } else { (8, 17) };
    Ok(ModelProto {
        ir_version,
        producer_name: "qforge".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: opset }],
        graph: Some(GraphProto {
            name: g.name.clone(),
            node: out.nodes,
            input: inputs,
            initializer: out.inits,
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec())
}
