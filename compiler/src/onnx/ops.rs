//! One function per ONNX op (or op family): an ONNX node becomes IR nodes.
//!
//! Every function returns the IR values of the node's outputs in ONNX order (`None` for an
//! optional output qforge does not compute, such as Dropout's mask). Attributes are read through
//! [`Attrs`]; inputs that the IR keeps as attributes (shapes, axes, clip bounds, quantization
//! parameters) must be constants, and the error says so.

use super::attrs::{Attrs, NodeRef};
use super::import::Importer;
use super::proto::NodeProto;
use super::symbolic::{self, Mono, SymVal};
use super::tensors::{checked_numel, dtype_from_onnx, tensor_from_proto};
use super::ImportError;
use qforge_ir::infer::norm_axis;
use qforge_ir::{
    BinaryOp, ConvAttrs, DType, Dim, DimExpr, Epilogue, Op, PoolAttrs, QuantParams, Shape, Tensor, TensorData,
    TensorType, UnaryOp, Value,
};
use std::sync::Arc;

type R<T> = Result<T, ImportError>;
type Outs = Vec<Option<Value>>;

/// Largest value accepted for kernel sizes, strides, pads and dilations, and for each dim of a
/// constant target shape: far beyond any real model, small enough that shape arithmetic cannot
/// overflow.
const MAX_ATTR_DIM: usize = 1 << 24;

/// Imports one node (see the module docs).
pub fn import_node(im: &mut Importer, node: &NodeProto, at: &NodeRef) -> R<Outs> {
    let mut cx = Cx { im, node, at };
    match node.domain.as_str() {
        "" | "ai.onnx" => cx.default_domain(),
        "com.microsoft" => cx.microsoft(),
        _ => Err(at.unsupported()),
    }
}

fn one(v: Value) -> R<Outs> {
    Ok(vec![Some(v)])
}

struct Cx<'a> {
    im: &'a mut Importer,
    node: &'a NodeProto,
    at: &'a NodeRef,
}

impl<'a> Cx<'a> {
    fn default_domain(&mut self) -> R<Outs> {
        let opset = self.at.opset;
        match self.node.op_type.as_str() {
            "Conv" => self.conv(),
            "BatchNormalization" => self.batch_norm(),
            "Relu" => self.unary(UnaryOp::Relu),
            "Sigmoid" => self.unary(UnaryOp::Sigmoid),
            "Tanh" => self.unary(UnaryOp::Tanh),
            "HardSwish" => self.unary(UnaryOp::HardSwish),
            "Erf" => self.unary(UnaryOp::Erf),
            "Exp" => self.unary(UnaryOp::Exp),
            "Log" => self.unary(UnaryOp::Log),
            "Sqrt" => self.unary(UnaryOp::Sqrt),
            "Neg" => self.unary(UnaryOp::Neg),
            "Abs" => self.unary(UnaryOp::Abs),
            "Reciprocal" => self.unary(UnaryOp::Reciprocal),
            "Floor" => self.unary(UnaryOp::Floor),
            "Ceil" => self.unary(UnaryOp::Ceil),
            "Not" => self.unary(UnaryOp::Not),
            "Gelu" if opset >= 20 => self.gelu(),
            "LeakyRelu" => {
                let alpha = self.attrs().float_or("alpha", 0.01)?;
                self.simple(Op::LeakyRelu { alpha }, 1)
            }
            "HardSigmoid" => {
                let a = self.attrs();
                let (alpha, beta) = (a.float_or("alpha", 0.2)?, a.float_or("beta", 0.5)?);
                self.simple(Op::HardSigmoid { alpha, beta }, 1)
            }
            "Clip" => self.clip(),
            "Add" => self.binary(BinaryOp::Add),
            "Sub" => self.binary(BinaryOp::Sub),
            "Mul" => self.binary(BinaryOp::Mul),
            "Div" => self.binary(BinaryOp::Div),
            "Pow" => self.binary(BinaryOp::Pow),
            "Equal" => self.binary(BinaryOp::Equal),
            "GreaterOrEqual" => self.binary(BinaryOp::GreaterOrEqual),
            "LessOrEqual" => self.binary(BinaryOp::LessOrEqual),
            "Mod" => {
                let fmod = self.attrs().int_or("fmod", 0)? != 0;
                self.binary(if fmod { BinaryOp::Fmod } else { BinaryOp::Mod })
            }
            "Range" => self.range(),
            "GatherElements" => {
                let axis = self.attrs().int_or("axis", 0)?;
                self.simple(Op::GatherElements { axis }, 2)
            }
            "Less" => self.binary(BinaryOp::Less),
            "Greater" => self.binary(BinaryOp::Greater),
            "And" => self.binary(BinaryOp::And),
            "Or" => self.binary(BinaryOp::Or),
            "Sum" => self.variadic(BinaryOp::Add),
            "Max" => self.variadic(BinaryOp::Max),
            "Min" => self.variadic(BinaryOp::Min),
            "Where" => self.simple(Op::Where, 3),
            "MatMul" => self.simple(Op::MatMul, 2),
            "Gemm" => self.gemm(),
            "MaxPool" => self.pool(false),
            "AveragePool" => self.pool(true),
            "GlobalAveragePool" => self.simple(Op::GlobalAveragePool, 1),
            "GlobalMaxPool" => self.simple(Op::GlobalMaxPool, 1),
            "LRN" => self.lrn(),
            "Softmax" => self.softmax(false),
            "LogSoftmax" => self.softmax(true),
            "LayerNormalization" if opset >= 17 => self.layer_norm(),
            "ReduceMean" => self.reduce(Reduce::Mean),
            "ReduceSum" => self.reduce(Reduce::Sum),
            "ReduceMax" => self.reduce(Reduce::Max),
            "Flatten" => {
                let axis = self.attrs().int_or("axis", 1)?;
                self.simple(Op::Flatten { axis }, 1)
            }
            "Reshape" => self.reshape(),
            "Transpose" => self.transpose(),
            "Concat" => self.concat(),
            "Slice" => self.slice(),
            "Gather" => {
                let axis = self.attrs().int_or("axis", 0)?;
                self.simple(Op::Gather { axis }, 2)
            }
            "Unsqueeze" => self.unsqueeze(),
            "Squeeze" => self.squeeze(),
            "Split" => self.split(),
            "Expand" => self.expand(),
            "Cast" => self.cast(),
            "Identity" => Ok(vec![Some(self.input(0)?)]),
            "Dropout" => self.dropout(),
            "Constant" => self.constant(),
            "ConstantOfShape" => self.constant_of_shape(),
            "Shape" => self.shape(),
            "QuantizeLinear" => self.quantize_linear(),
            "DequantizeLinear" => self.dequantize_linear(),
            "DynamicQuantizeLinear" => self.dynamic_quantize_linear(),
            "QLinearConv" => self.qlinear_conv(),
            "QLinearMatMul" => self.qlinear_matmul(),
            "ConvInteger" => self.conv_integer(),
            "MatMulInteger" => {
                let ins = self.inputs_upto(2, 4)?;
                one(self.add(Op::MatMulInteger, ins, None)?)
            }
            _ => Err(self.at.unsupported()),
        }
    }

    fn microsoft(&mut self) -> R<Outs> {
        match self.node.op_type.as_str() {
            "QGemm" => self.qgemm(),
            "QLinearGlobalAveragePool" => self.qlinear_global_average_pool(),
            "QLinearAveragePool" => self.qlinear_average_pool(),
            "QLinearAdd" => self.qlinear_binary(Op::QAdd),
            "QLinearMul" => self.qlinear_binary(Op::QMul),
            "QLinearConcat" => self.qlinear_concat(),
            "Gelu" => self.unary(UnaryOp::Gelu),
            _ => Err(self.at.unsupported()),
        }
    }

    // ---------------------------------------------------------------- plumbing

    fn attrs(&self) -> Attrs<'a> {
        Attrs::new(self.node, self.at)
    }

    fn err(&self, msg: impl Into<String>) -> ImportError {
        self.at.err(msg)
    }

    /// The name of input `i`, or `None` when it is absent (missing or empty).
    fn input_name(&self, i: usize) -> Option<&'a str> {
        self.node.input.get(i).map(String::as_str).filter(|s| !s.is_empty())
    }

    fn value(&mut self, name: &str) -> R<Value> {
        if self.im.bound(name).is_none() && self.im.sym.contains_key(name) {
            let v = symbolic::materialize(self.im, name).map_err(|m| self.err(format!("input `{name}`: {m}")))?;
            self.im.bind_value(name, v);
            return Ok(v);
        }
        if let Some(v) = self.im.lookup(name) {
            return Ok(v);
        }
        Err(match self.im.dropped(name) {
            Some(d) => self.err(format!("input `{name}` is the {d}, which qforge does not compute")),
            None => {
                self.err(format!("input `{name}` is not defined by an earlier node, an initializer or a graph input"))
            }
        })
    }

    fn input(&mut self, i: usize) -> R<Value> {
        let name = self.input_name(i).ok_or_else(|| self.err(format!("required input {i} is missing")))?;
        self.value(name)
    }

    fn opt_input(&mut self, i: usize) -> R<Option<Value>> {
        match self.input_name(i) {
            None => Ok(None),
            Some(n) => self.value(n).map(Some),
        }
    }

    /// Inputs `0..min` (required) and `min..max` (optional), as IR input slots; trailing absent
    /// inputs are dropped.
    fn inputs_upto(&mut self, min: usize, max: usize) -> R<Vec<Option<Value>>> {
        if self.node.input.len() > max {
            return Err(self.err(format!("has {} inputs; at most {max} are allowed", self.node.input.len())));
        }
        let mut v = vec![];
        for i in 0..min {
            v.push(Some(self.input(i)?));
        }
        for i in min..max {
            v.push(self.opt_input(i)?);
        }
        while v.len() > min && v.last() == Some(&None) {
            v.pop();
        }
        Ok(v)
    }

    fn ty(&self, v: Value) -> TensorType {
        self.im.g.value_type(v).clone()
    }

    /// Adds the node that produces this ONNX node's result (it takes the ONNX node's name).
    fn add(&mut self, op: Op, inputs: Vec<Option<Value>>, declared: Option<Vec<TensorType>>) -> R<Value> {
        self.im.add(self.at, op, inputs, declared, self.at.name.clone())
    }

    /// Adds an intermediate node of a multi-node expansion, named `{node}/{tag}`.
    fn add_helper(&mut self, tag: &str, op: Op, inputs: Vec<Option<Value>>) -> R<Value> {
        let name = self.im.fresh_name(&format!("{}/{tag}", self.at.name));
        self.im.add(self.at, op, inputs, None, name)
    }

    fn simple(&mut self, op: Op, n: usize) -> R<Outs> {
        let ins = self.inputs_upto(n, n)?;
        one(self.add(op, ins, None)?)
    }

    /// The symbolic content of input `i` when it is a tracked shape value with symbolic elements.
    fn sym_input(&self, i: usize) -> Option<SymVal> {
        self.im.sym.get(self.input_name(i)?).cloned()
    }

    /// Sizes for an op taking `x` then reference inputs: the monomials as [`DimExpr`]s reading
    /// their symbols from the graph inputs, which are appended to `ins`.
    fn dim_exprs(&self, monos: &[Mono], ins: &mut Vec<Option<Value>>) -> R<Vec<DimExpr>> {
        let base = ins.len();
        let mut refs = vec![];
        let out = monos
            .iter()
            .map(|m| symbolic::dim_expr(self.im, m, &mut refs, base).map_err(|e| self.err(e)))
            .collect::<R<Vec<_>>>()?;
        ins.extend(refs.into_iter().map(Some));
        Ok(out)
    }

    /// A scalar input as a monomial: a constant or a tracked shape value.
    fn scalar_mono(&self, i: usize, what: &str) -> R<Mono> {
        let name = self.input_name(i).ok_or_else(|| self.err(format!("input {i} ({what}) is missing")))?;
        let s = symbolic::sym_of(self.im, name);
        match s.as_ref().map(|s| s.elems.as_slice()) {
            Some([m]) => Ok(m.clone()),
            _ => Err(self.err(format!(
                "input `{name}` ({what}) must be a constant or computed from input shapes: qforge does not \
                 support a {what} computed from tensor data"
            ))),
        }
    }

    /// The constant tensor of input `i`, which must be present.
    fn const_input(&self, i: usize, what: &str) -> R<Arc<Tensor>> {
        self.opt_const_input(i, what)?.ok_or_else(|| self.err(format!("input {i} ({what}) is missing")))
    }

    /// The constant tensor of input `i`, or `None` when the input is absent. A present input that
    /// is not a constant is an error.
    fn opt_const_input(&self, i: usize, what: &str) -> R<Option<Arc<Tensor>>> {
        let Some(name) = self.input_name(i) else { return Ok(None) };
        if let Some(t) = self.im.const_by_name(name) {
            return Ok(Some(t));
        }
        Err(if self.im.knows(name) {
            self.err(format!(
                "input `{name}` ({what}) must be a constant (an initializer or a Constant node): \
                 qforge does not support a computed {what}"
            ))
        } else {
            self.err(format!(
                "input `{name}` ({what}) is not defined by an earlier node, an initializer or a graph input"
            ))
        })
    }

    fn opt_ints_input(&self, i: usize, what: &str) -> R<Option<Vec<i64>>> {
        let Some(t) = self.opt_const_input(i, what)? else { return Ok(None) };
        if t.rank() > 1 {
            return Err(self.err(format!("input {i} ({what}) must be a scalar or 1-D, got shape {:?}", t.shape())));
        }
        t.to_i64_vec()
            .map(Some)
            .ok_or_else(|| self.err(format!("input {i} ({what}) must be an integer tensor, got {}", t.dtype())))
    }

    fn ints_input(&self, i: usize, what: &str) -> R<Vec<i64>> {
        self.opt_ints_input(i, what)?.ok_or_else(|| self.err(format!("input {i} ({what}) is missing")))
    }

    /// A constant scalar input as f32 (Clip bounds).
    fn opt_scalar_f32(&self, i: usize, what: &str) -> R<Option<f32>> {
        let Some(t) = self.opt_const_input(i, what)? else { return Ok(None) };
        match t.to_f32_vec().as_slice() {
            [x] => Ok(Some(*x)),
            _ => Err(self.err(format!("input {i} ({what}) must hold one value, got shape {:?}", t.shape()))),
        }
    }

    /// Checks a list of spatial sizes from the file against [`MAX_ATTR_DIM`].
    fn bounded(&self, what: &str, v: Vec<usize>) -> R<Vec<usize>> {
        match v.iter().find(|&&x| x > MAX_ATTR_DIM) {
            Some(x) => Err(self.err(format!("`{what}` entry {x} is out of range"))),
            None => Ok(v),
        }
    }

    /// A constant target shape (Reshape, Expand): entries from -1 up, bounded.
    fn target_shape(&self, shape: Vec<i64>, what: &str) -> R<Vec<i64>> {
        if let Some(d) = shape.iter().find(|&&d| d < -1 || d > MAX_ATTR_DIM as i64) {
            return Err(self.err(format!("{what} {shape:?} has an invalid entry {d}")));
        }
        let mut n: u128 = 1;
        for &d in shape.iter().filter(|&&d| d > 0) {
            n = n.saturating_mul(d as u128);
        }
        if n > 1 << 48 {
            return Err(self.err(format!("{what} {shape:?} has too many elements")));
        }
        Ok(shape)
    }

    // ---------------------------------------------------------------- float ops

    fn unary(&mut self, u: UnaryOp) -> R<Outs> {
        self.simple(Op::Unary(u), 1)
    }

    fn gelu(&mut self) -> R<Outs> {
        let approx = self.attrs().string("approximate")?.unwrap_or_else(|| "none".into());
        let u = match approx.as_str() {
            "none" => UnaryOp::Gelu,
            "tanh" => UnaryOp::GeluTanh,
            other => return Err(self.err(format!("unknown approximate=\"{other}\""))),
        };
        self.unary(u)
    }

    fn clip(&mut self) -> R<Outs> {
        let x = self.input(0)?;
        let (min, max) = if self.at.opset < 11 {
            let a = self.attrs();
            (a.float_or("min", f32::NEG_INFINITY)?, a.float_or("max", f32::INFINITY)?)
        } else {
            (
                self.opt_scalar_f32(1, "min")?.unwrap_or(f32::NEG_INFINITY),
                self.opt_scalar_f32(2, "max")?.unwrap_or(f32::INFINITY),
            )
        };
        if min.is_nan() || max.is_nan() {
            return Err(self.err("clip bounds must not be NaN"));
        }
        one(self.add(Op::Clip { min, max }, vec![Some(x)], None)?)
    }

    fn binary(&mut self, b: BinaryOp) -> R<Outs> {
        let (x, mut y) = (self.input(0)?, self.input(1)?);
        // `x ** 2` is often exported with an exponent of another dtype: convert a constant one.
        if b == BinaryOp::Pow {
            let (xt, yt) = (self.ty(x), self.ty(y));
            if xt.dtype != yt.dtype && xt.dtype.is_float() && yt.quant.is_none() {
                if let Some(t) = self.im.const_of(y) {
                    let c = Tensor::from_f64_iter(xt.dtype, t.shape().to_vec(), t.to_f64_vec().into_iter());
                    let name = self.im.fresh_name(&format!("{}/exponent", self.at.name));
                    y = self.im.g.add_const(name, c);
                }
            }
        }
        one(self.add(Op::Binary(b), vec![Some(x), Some(y)], None)?)
    }

    /// Sum, Max, Min: a chain of binary ops, the last one named after the node.
    fn variadic(&mut self, b: BinaryOp) -> R<Outs> {
        let n = self.node.input.len();
        if n == 0 {
            return Err(self.err("needs at least one input"));
        }
        let mut acc = self.input(0)?;
        for i in 1..n {
            let next = self.input(i)?;
            acc = if i + 1 == n {
                self.add(Op::Binary(b), vec![Some(acc), Some(next)], None)?
            } else {
                self.add_helper(&i.to_string(), Op::Binary(b), vec![Some(acc), Some(next)])?
            };
        }
        one(acc)
    }

    fn batch_norm(&mut self) -> R<Outs> {
        let a = self.attrs();
        let epsilon = a.float_or("epsilon", 1e-5)?;
        if a.bool_or("training_mode", false)? {
            return Err(self.err("training_mode=1 is not supported (inference only)"));
        }
        let ins = self.inputs_upto(5, 5)?;
        one(self.add(Op::BatchNorm { epsilon }, ins, None)?)
    }

    fn gemm(&mut self) -> R<Outs> {
        let a = self.attrs();
        let op = Op::Gemm {
            alpha: a.float_or("alpha", 1.0)?,
            beta: a.float_or("beta", 1.0)?,
            trans_a: a.bool_or("transA", false)?,
            trans_b: a.bool_or("transB", false)?,
        };
        let ins = self.inputs_upto(2, 3)?;
        one(self.add(op, ins, None)?)
    }

    fn lrn(&mut self) -> R<Outs> {
        let a = self.attrs();
        let size = a.int("size")?.ok_or_else(|| self.err("attribute `size` is required"))?;
        let size = usize::try_from(size).ok().filter(|&s| s > 0 && s <= MAX_ATTR_DIM);
        let size = size.ok_or_else(|| self.err("attribute `size` must be positive"))?;
        let op = Op::Lrn {
            size,
            alpha: a.float_or("alpha", 1e-4)?,
            beta: a.float_or("beta", 0.75)?,
            bias: a.float_or("bias", 1.0)?,
        };
        self.simple(op, 1)
    }

    /// Softmax and LogSoftmax. From opset 13 the op normalizes along one axis. Before, it
    /// normalized the input coerced to 2-D at `axis` (`[d0*..*d(a-1), da*..*dn]`); that is one
    /// axis when every dim after `axis` is 1, and otherwise Flatten -> softmax(1) -> Reshape.
    fn softmax(&mut self, log: bool) -> R<Outs> {
        let x = self.input(0)?;
        let ty = self.ty(x);
        let mk = |axis| if log { Op::LogSoftmax { axis } } else { Op::Softmax { axis } };
        let opset = self.at.opset;
        let axis = self.attrs().int_or("axis", if opset >= 13 { -1 } else { 1 })?;
        if opset >= 13 {
            return one(self.add(mk(axis), vec![Some(x)], None)?);
        }
        let r = ty.rank();
        let a = norm_axis(axis, r).map_err(|m| self.err(m))?;
        let dims = &ty.shape.0;
        if dims[a + 1..].iter().all(|d| *d == Dim::Fixed(1)) {
            return one(self.add(mk(a as i64), vec![Some(x)], None)?);
        }
        // The original shape for the final Reshape: fixed dims, or a symbolic batch copied by 0
        // (the flattened dim 0 is d0 exactly when axis is 1).
        let target: Option<Vec<i64>> = dims
            .iter()
            .enumerate()
            .map(|(i, d)| match d {
                Dim::Fixed(n) => Some(*n as i64),
                Dim::Sym(_) if i == 0 && a == 1 => Some(0),
                Dim::Sym(_) => None,
            })
            .collect();
        let target = target.ok_or_else(|| {
            self.err(format!(
                "opset {opset} {} over the 2-D coercion of {} at axis {axis} needs fixed dims (or only a \
                 symbolic batch with axis 1)",
                self.at.op, ty.shape
            ))
        })?;
        let f = self.add_helper("flatten", Op::Flatten { axis: a as i64 }, vec![Some(x)])?;
        let s = self.add_helper("softmax", mk(1), vec![Some(f)])?;
        one(self.add(Op::Reshape { shape: target }, vec![Some(s)], None)?)
    }

    fn layer_norm(&mut self) -> R<Outs> {
        let a = self.attrs();
        let op = Op::LayerNorm { axis: a.int_or("axis", -1)?, epsilon: a.float_or("epsilon", 1e-5)? };
        let ins = self.inputs_upto(2, 3)?;
        let v = self.add(op, ins, None)?;
        Ok(vec![Some(v), None, None])
    }

    fn reduce(&mut self, kind: Reduce) -> R<Outs> {
        let opset = self.at.opset;
        let axes_input = match kind {
            Reduce::Sum => opset >= 13,
            Reduce::Mean | Reduce::Max => opset >= 18,
        };
        let a = self.attrs();
        let keepdims = a.bool_or("keepdims", true)?;
        let x = self.input(0)?;
        let axes = if axes_input {
            let axes = self.opt_ints_input(1, "axes")?.unwrap_or_default();
            if axes.is_empty() && a.bool_or("noop_with_empty_axes", false)? {
                return one(x);
            }
            axes
        } else {
            a.ints("axes")?.unwrap_or_default()
        };
        let op = match kind {
            Reduce::Mean => Op::ReduceMean { axes, keepdims },
            Reduce::Sum => Op::ReduceSum { axes, keepdims },
            Reduce::Max => Op::ReduceMax { axes, keepdims },
        };
        one(self.add(op, vec![Some(x)], None)?)
    }

    // ---------------------------------------------------------------- conv and pooling

    /// Sizes for each spatial dim: the attribute (of length `sp`) or `default`.
    fn spatial(&self, a: &Attrs, name: &str, sp: usize, default: usize) -> R<Vec<usize>> {
        match a.usizes(name)? {
            Some(v) if v.len() == sp => self.bounded(name, v),
            Some(v) => Err(self.err(format!("`{name}` has {} entries for {sp} spatial dims", v.len()))),
            None => Ok(vec![default; sp]),
        }
    }

    /// Begin-then-end pads from `pads` or `auto_pad`.
    fn pads(&self, a: &Attrs, x: &Shape, kernel: &[usize], strides: &[usize], dilations: &[usize]) -> R<Vec<usize>> {
        let sp = kernel.len();
        let auto = a.string("auto_pad")?.unwrap_or_default();
        match auto.as_str() {
            "" | "NOTSET" => match a.usizes("pads")? {
                Some(p) if p.len() == 2 * sp => self.bounded("pads", p),
                Some(p) => Err(self.err(format!("`pads` has {} entries for {sp} spatial dims", p.len()))),
                None => Ok(vec![0; 2 * sp]),
            },
            "VALID" => Ok(vec![0; 2 * sp]),
            "SAME_UPPER" | "SAME_LOWER" => {
                let mut pads = vec![0; 2 * sp];
                for i in 0..sp {
                    let n = x.0.get(2 + i).and_then(Dim::fixed).filter(|&n| n > 0);
                    let n = n.ok_or_else(|| self.err(format!("auto_pad={auto} needs fixed spatial dims, got {x}")))?;
                    let (k, s, d) = (kernel[i], strides[i], dilations[i]);
                    if k == 0 || s == 0 || d == 0 {
                        return Err(self.err("kernel, strides and dilations must be positive"));
                    }
                    let out = n.div_ceil(s);
                    let total = ((out - 1) * s + d * (k - 1) + 1).saturating_sub(n);
                    let (small, big) = (total / 2, total - total / 2);
                    (pads[i], pads[sp + i]) = if auto == "SAME_UPPER" { (small, big) } else { (big, small) };
                }
                Ok(pads)
            }
            other => Err(self.err(format!("unknown auto_pad \"{other}\""))),
        }
    }

    fn conv_attrs(&self, x: &TensorType, w: &TensorType) -> R<ConvAttrs> {
        let a = self.attrs();
        let wk = w.shape.as_fixed().filter(|ws| ws.len() >= 3).map(|ws| ws[2..].to_vec());
        let kernel = match (a.usizes("kernel_shape")?, wk) {
            (Some(k), Some(wk)) if k != wk => {
                return Err(self.err(format!("kernel_shape {k:?} does not match the weight shape {}", w.shape)))
            }
            (Some(k), _) | (None, Some(k)) => self.bounded("kernel_shape", k)?,
            (None, None) => return Err(self.err(format!("cannot tell the kernel shape from the weight {}", w.shape))),
        };
        let sp = kernel.len();
        let strides = self.spatial(&a, "strides", sp, 1)?;
        let dilations = self.spatial(&a, "dilations", sp, 1)?;
        let group = a.int_or("group", 1)?;
        let group = usize::try_from(group).ok().filter(|g| (1..=MAX_ATTR_DIM).contains(g));
        let group = group.ok_or_else(|| self.err("`group` must be positive"))?;
        let pads = self.pads(&a, &x.shape, &kernel, &strides, &dilations)?;
        Ok(ConvAttrs { kernel, strides, pads, dilations, group })
    }

    fn conv(&mut self) -> R<Outs> {
        let ins = self.inputs_upto(2, 3)?;
        let (x, w) = (self.input(0)?, self.input(1)?);
        let attrs = self.conv_attrs(&self.ty(x), &self.ty(w))?;
        one(self.add(Op::Conv(attrs), ins, None)?)
    }

    fn pool_attrs(&self, x: &TensorType, avg: bool) -> R<PoolAttrs> {
        let a = self.attrs();
        let kernel = a.usizes("kernel_shape")?.ok_or_else(|| self.err("attribute `kernel_shape` is required"))?;
        let kernel = self.bounded("kernel_shape", kernel)?;
        let sp = kernel.len();
        let strides = self.spatial(&a, "strides", sp, 1)?;
        let dilations = self.spatial(&a, "dilations", sp, 1)?;
        let pads = self.pads(&a, &x.shape, &kernel, &strides, &dilations)?;
        Ok(PoolAttrs {
            kernel,
            strides,
            pads,
            dilations,
            ceil_mode: a.bool_or("ceil_mode", false)?,
            count_include_pad: avg && a.bool_or("count_include_pad", false)?,
        })
    }

    fn pool(&mut self, avg: bool) -> R<Outs> {
        let x = self.input(0)?;
        let p = self.pool_attrs(&self.ty(x), avg)?;
        let op = if avg { Op::AveragePool(p) } else { Op::MaxPool(p) };
        // MaxPool's optional Indices output is not computed.
        Ok(vec![Some(self.add(op, vec![Some(x)], None)?), None])
    }

    // ---------------------------------------------------------------- data movement

    fn reshape(&mut self) -> R<Outs> {
        let x = self.input(0)?;
        if let Some(t) = self.sym_input(1) {
            return self.reshape_sym(x, t);
        }
        let shape = self.ints_input(1, "shape")?;
        let shape = self.target_shape(shape, "target shape")?;
        if self.attrs().bool_or("allowzero", false)? && shape.contains(&0) {
            return Err(self.err("allowzero=1 with a 0 in the target shape is not supported"));
        }
        one(self.add(Op::Reshape { shape }, vec![Some(x)], None)?)
    }

    /// Reshape to a target with symbolic entries: ONNX's `0` (copy) and `-1` (infer) when they
    /// say it, otherwise every size explicit (`reshape_dyn`).
    fn reshape_sym(&mut self, x: Value, t: SymVal) -> R<Outs> {
        if self.attrs().bool_or("allowzero", false)? {
            return Err(self.err("allowzero=1 with a computed target shape is not supported"));
        }
        let xt = self.ty(x);
        let xd: Option<Vec<Mono>> = xt.shape.0.iter().map(Mono::of_dim).collect();
        let xd = xd.ok_or_else(|| self.err(format!("cannot read the dims of {}", xt.shape)))?;
        // Resolve ONNX's 0 (copy) into the input's dim.
        let mut want: Vec<Option<Mono>> = vec![];
        for (i, m) in t.elems.iter().enumerate() {
            want.push(match m.konst() {
                Some(0) => Some(xd.get(i).cloned().ok_or_else(|| self.err(format!("target copies missing dim {i}")))?),
                Some(-1) => None,
                Some(k) if k < 0 => return Err(self.err(format!("invalid target dim {k}"))),
                _ => Some(m.clone()),
            });
        }
        // The plain reshape: entries equal to the input's dim at the same place become 0; if
        // exactly one symbolic entry is left, it becomes -1.
        let mut plain: Vec<Option<i64>> = want
            .iter()
            .enumerate()
            .map(|(i, w)| match w {
                None => Some(-1),
                Some(m) if xd.get(i) == Some(m) && m.konst().is_none() => Some(0),
                Some(m) => m.konst(),
            })
            .collect();
        let open: Vec<usize> = (0..plain.len()).filter(|&i| plain[i].is_none()).collect();
        if open.len() == 1 && !plain.contains(&Some(-1)) {
            plain[open[0]] = Some(-1);
        }
        if let Some(shape) = plain.into_iter().collect::<Option<Vec<i64>>>() {
            if qforge_ir::infer::reshape_shape(&xt.shape, &shape).is_ok() {
                return one(self.add(Op::Reshape { shape }, vec![Some(x)], None)?);
            }
        }
        // Explicit sizes: -1 is the input's element count over the rest.
        let total = xd.iter().try_fold(Mono::c(1), |a, m| a.mul(m));
        let total = total.ok_or_else(|| self.err("element count overflows"))?;
        let known = want.iter().flatten().try_fold(Mono::c(1), |a, m| a.mul(m));
        let known = known.ok_or_else(|| self.err("element count overflows"))?;
        let monos: Vec<Mono> = want
            .into_iter()
            .map(|w| match w {
                Some(m) => Some(m),
                None => total.div(&known),
            })
            .collect::<Option<_>>()
            .ok_or_else(|| self.err(format!("cannot infer the -1 of a target shape for {}", xt.shape)))?;
        let mut ins = vec![Some(x)];
        let shape = self.dim_exprs(&monos, &mut ins)?;
        one(self.add(Op::ReshapeDyn { shape }, ins, None)?)
    }

    /// ONNX Range; bounds computed from input shapes make a `range` whose length is a dim.
    fn range(&mut self) -> R<Outs> {
        let start = self.scalar_mono(0, "start")?;
        let limit = self.scalar_mono(1, "limit")?;
        let delta = self.scalar_mono(2, "delta")?;
        let delta = delta.konst().filter(|&d| d != 0).ok_or_else(|| self.err("delta must be a non-zero constant"))?;
        let dtype = {
            let name = self.input_name(0).unwrap_or("");
            match (symbolic::sym_of(self.im, name), self.im.const_by_name(name)) {
                (Some(s), _) => s.dtype,
                (None, Some(t)) => t.dtype(),
                (None, None) => DType::I64,
            }
        };
        if !matches!(dtype, DType::I32 | DType::I64) {
            return Err(self.err(format!("Range of {dtype} is not supported (i32 or i64)")));
        }
        if let (Some(s), Some(l)) = (start.konst(), limit.konst()) {
            let d = delta as i128;
            let n = ((l as i128 - s as i128) + d - d.signum()) / d;
            let n = usize::try_from(n.max(0)).ok().filter(|&n| n <= 1 << 24);
            let n = n.ok_or_else(|| self.err("range too long"))?;
            let v: Vec<i64> = (0..n as i64).map(|i| s + i * delta).collect();
            let t = Tensor::from_i64_wrapping(dtype, vec![n], &v);
            return one(self.im.g.add_const(self.at.name.clone(), t));
        }
        if start.konst() != Some(0) || delta != 1 {
            return Err(self.err("a Range with computed bounds must start at 0 with step 1"));
        }
        let mut ins = vec![];
        let e = self.dim_exprs(&[start, limit], &mut ins)?;
        let (s, l) = (e[0].clone(), e[1].clone());
        one(self.add(Op::Range { start: s, limit: l, delta, dtype }, ins, None)?)
    }

    fn transpose(&mut self) -> R<Outs> {
        let x = self.input(0)?;
        let rank = self.ty(x).rank();
        let perm = match self.attrs().usizes("perm")? {
            Some(p) => p,
            None => (0..rank).rev().collect(),
        };
        one(self.add(Op::Transpose { perm }, vec![Some(x)], None)?)
    }

    fn concat(&mut self) -> R<Outs> {
        let axis = self.attrs().int("axis")?.ok_or_else(|| self.err("attribute `axis` is required"))?;
        let n = self.node.input.len();
        let ins = (0..n).map(|i| self.input(i).map(Some)).collect::<R<Vec<_>>>()?;
        if ins.is_empty() {
            return Err(self.err("needs at least one input"));
        }
        one(self.add(Op::Concat { axis }, ins, None)?)
    }

    fn slice(&mut self) -> R<Outs> {
        let x = self.input(0)?;
        if self.at.opset >= 10 && (1..5).any(|i| self.sym_input(i).is_some()) {
            return self.slice_sym(x);
        }
        let (starts, ends, axes, steps) = if self.at.opset < 10 {
            let a = self.attrs();
            let starts = a.ints("starts")?.ok_or_else(|| self.err("attribute `starts` is required"))?;
            let ends = a.ints("ends")?.ok_or_else(|| self.err("attribute `ends` is required"))?;
            (starts, ends, a.ints("axes")?, None)
        } else {
            (
                self.ints_input(1, "starts")?,
                self.ints_input(2, "ends")?,
                self.opt_ints_input(3, "axes")?,
                self.opt_ints_input(4, "steps")?,
            )
        };
        let n = starts.len();
        let axes = axes.unwrap_or_else(|| (0..n as i64).collect());
        let steps = steps.unwrap_or_else(|| vec![1; n]);
        if ends.len() != n || axes.len() != n || steps.len() != n {
            return Err(self.err("starts, ends, axes and steps differ in length"));
        }
        // Keep the shape arithmetic well defined: no step of i64::MIN, no backwards slice of an
        // empty dim.
        let dims = self.ty(x).shape.0;
        for (&a, &st) in axes.iter().zip(&steps) {
            let empty = norm_axis(a, dims.len()).ok().is_some_and(|a| dims[a] == Dim::Fixed(0));
            if st == i64::MIN || (st < 0 && empty) {
                return Err(self.err(format!("step {st} on axis {a} is not supported")));
            }
        }
        one(self.add(Op::Slice { starts, ends, axes, steps }, vec![Some(x)], None)?)
    }

    /// A slice whose end is computed from input shapes: `[0, end)` with step 1 along one axis
    /// becomes a gather of `range(0, end)`. (ONNX would clamp an end beyond the dim; here that is
    /// an out-of-range index at run time.)
    fn slice_sym(&mut self, x: Value) -> R<Outs> {
        let unsupported = || self.err("a Slice with computed bounds must be one axis, from 0, step 1");
        let get = |i: usize| -> R<Option<Mono>> {
            match self.input_name(i) {
                None => Ok(None),
                Some(n) => match symbolic::sym_of(self.im, n).as_ref().map(|s| s.elems.as_slice()) {
                    Some([m]) => Ok(Some(m.clone())),
                    _ => Err(unsupported()),
                },
            }
        };
        let (start, end, axis, step) = (get(1)?, get(2)?, get(3)?, get(4)?);
        if start.and_then(|m| m.konst()) != Some(0) || step.is_some_and(|m| m.konst() != Some(1)) {
            return Err(unsupported());
        }
        let end = end.ok_or_else(unsupported)?;
        let axis = match axis {
            None => 0,
            Some(m) => m.konst().ok_or_else(unsupported)?,
        };
        let rank = self.ty(x).rank();
        norm_axis(axis, rank).map_err(|m| self.err(m))?;
        let mut ins = vec![];
        let e = self.dim_exprs(&[Mono::c(0), end], &mut ins)?;
        let r = self.add_helper(
            "range",
            Op::Range { start: e[0].clone(), limit: e[1].clone(), delta: 1, dtype: DType::I64 },
            ins,
        )?;
        one(self.add(Op::Gather { axis }, vec![Some(x), Some(r)], None)?)
    }

    fn unsqueeze(&mut self) -> R<Outs> {
        let x = self.input(0)?;
        let axes = if self.at.opset >= 13 {
            self.ints_input(1, "axes")?
        } else {
            self.attrs().ints("axes")?.ok_or_else(|| self.err("attribute `axes` is required"))?
        };
        if axes.len() > MAX_ATTR_DIM {
            return Err(self.err("too many axes"));
        }
        one(self.add(Op::Unsqueeze { axes }, vec![Some(x)], None)?)
    }

    fn squeeze(&mut self) -> R<Outs> {
        let x = self.input(0)?;
        let axes = if self.at.opset >= 13 { self.opt_ints_input(1, "axes")? } else { self.attrs().ints("axes")? };
        one(self.add(Op::Squeeze { axes: axes.unwrap_or_default() }, vec![Some(x)], None)?)
    }

    fn split(&mut self) -> R<Outs> {
        let x = self.input(0)?;
        let ty = self.ty(x);
        let a = self.attrs();
        let axis = a.int_or("axis", 0)?;
        let n_out = self.node.output.len();
        let sizes = if self.at.opset >= 13 { self.opt_ints_input(1, "split")? } else { a.ints("split")? };
        let sizes: Vec<usize> = match sizes {
            Some(s) => s
                .iter()
                .map(|&v| usize::try_from(v).ok().filter(|&v| v <= MAX_ATTR_DIM))
                .collect::<Option<_>>()
                .ok_or_else(|| self.err(format!("split sizes {s:?} must be non-negative")))?,
            None => {
                let parts = match a.int("num_outputs")? {
                    Some(k) => usize::try_from(k).ok().filter(|&k| k > 0),
                    None => Some(n_out).filter(|&k| k > 0),
                };
                let parts = parts.ok_or_else(|| self.err("the number of outputs must be positive"))?;
                if parts != n_out {
                    return Err(self.err(format!("num_outputs is {parts} but the node has {n_out} outputs")));
                }
                let ax = norm_axis(axis, ty.rank()).map_err(|m| self.err(m))?;
                let dim = ty.shape.0[ax].fixed().ok_or_else(|| self.err("split along a symbolic dimension"))?;
                let chunk = dim.div_ceil(parts);
                let last = dim.checked_sub(chunk * (parts - 1));
                let last = last.ok_or_else(|| self.err(format!("cannot split {dim} into {parts} parts")))?;
                let mut s = vec![chunk; parts - 1];
                s.push(last);
                s
            }
        };
        if sizes.len() != n_out {
            return Err(self.err(format!("{} split sizes for {n_out} outputs", sizes.len())));
        }
        let v = self.add(Op::Split { axis, sizes }, vec![Some(x)], None)?;
        Ok((0..n_out).map(|p| Some(Value::new(v.node, p))).collect())
    }

    fn expand(&mut self) -> R<Outs> {
        let x = self.input(0)?;
        if let Some(t) = self.sym_input(1) {
            if t.elems.iter().any(|m| m.k < 0) {
                return Err(self.err("shape has a negative entry"));
            }
            let mut ins = vec![Some(x)];
            let shape = self.dim_exprs(&t.elems, &mut ins)?;
            return one(self.add(Op::ExpandDyn { shape }, ins, None)?);
        }
        let shape = self.ints_input(1, "shape")?;
        let shape = self.target_shape(shape, "shape")?;
        if shape.contains(&-1) {
            return Err(self.err(format!("shape {shape:?} has a negative entry")));
        }
        one(self.add(Op::Expand { shape }, vec![Some(x)], None)?)
    }

    fn cast(&mut self) -> R<Outs> {
        let to = self.attrs().int("to")?.ok_or_else(|| self.err("attribute `to` is required"))?;
        let to = i32::try_from(to).map_err(|_| self.err(format!("unknown element type {to}")))?;
        let to = dtype_from_onnx(to).map_err(|m| self.err(format!("cast to {m}")))?;
        self.simple(Op::Cast { to }, 1)
    }

    fn dropout(&mut self) -> R<Outs> {
        // Inference: Dropout is the identity; its mask output is not computed.
        if self.at.opset >= 12 {
            if let Some(t) = self.opt_const_input(2, "training_mode")? {
                if t.to_f64_vec().iter().any(|&b| b != 0.0) {
                    return Err(self.err("training_mode=true is not supported (inference only)"));
                }
            }
        }
        Ok(vec![Some(self.input(0)?), None])
    }

    // ---------------------------------------------------------------- constants

    fn constant(&mut self) -> R<Outs> {
        let a = self.attrs();
        let t = if let Some(tp) = a.tensor("value")? {
            tensor_from_proto(tp).map_err(|m| self.err(m))?
        } else if let Some(f) = a.float("value_float")? {
            Tensor::scalar_f32(f)
        } else if let Some(v) = a.floats("value_floats")? {
            Tensor::from_f32(vec![v.len()], v)
        } else if let Some(i) = a.int("value_int")? {
            Tensor::from_i64(vec![], vec![i])
        } else if let Some(v) = a.ints("value_ints")? {
            Tensor::from_i64(vec![v.len()], v)
        } else if let Some(other) = a.names().find(|n| ["sparse_value", "value_string", "value_strings"].contains(n)) {
            return Err(self.err(format!("a Constant with `{other}` is not supported")));
        } else {
            return Err(self.err("Constant has no value attribute"));
        };
        one(self.im.g.add_const(self.at.name.clone(), t))
    }

    /// Folded here, never left as a node: the shape must be constant and the tensor small
    /// enough (see [`super::tensors::MAX_TENSOR_BYTES`]); it is checked before allocating.
    fn constant_of_shape(&mut self) -> R<Outs> {
        let value = match self.attrs().tensor("value")? {
            Some(tp) => tensor_from_proto(tp).map_err(|m| self.err(m))?,
            None => Tensor::scalar_f32(0.0),
        };
        if value.len() != 1 {
            return Err(self.err(format!("`value` must hold one element, got {}", value.len())));
        }
        if let Some(t) = self.sym_input(0) {
            // A shape computed from input shapes: the value broadcast to it.
            if t.elems.iter().any(|m| m.k < 0) {
                return Err(self.err("shape has a negative entry"));
            }
            let scalar = value.reshaped(vec![]).ok_or_else(|| self.err("`value` must hold one element"))?;
            let name = self.im.fresh_name(&format!("{}/value", self.at.name));
            let c = self.im.g.add_const(name, scalar);
            let mut ins = vec![Some(c)];
            let shape = self.dim_exprs(&t.elems, &mut ins)?;
            return one(self.add(Op::ExpandDyn { shape }, ins, None)?);
        }
        let dims = self.ints_input(0, "shape")?;
        let (shape, n) = checked_numel(&dims, value.dtype()).map_err(|m| self.err(m))?;
        self.im.charge(n as u128 * value.dtype().size_bytes() as u128).map_err(|m| self.err(m))?;
        let t = Tensor::new(shape, splat(value.data(), n)).ok_or_else(|| self.err("shape and data disagree"))?;
        one(self.im.g.add_const(self.at.name.clone(), t))
    }

    /// Folded when the selected dims are fixed. With symbolic dims the importer follows the
    /// value symbolically (see [`symbolic`]) and never gets here, unless a dim cannot be read as
    /// a product of symbols: then it is a `shape` op, computed at run time.
    fn shape(&mut self) -> R<Outs> {
        let x = self.input(0)?;
        let ty = self.ty(x);
        let r = ty.rank() as i64;
        let a = self.attrs();
        let (start, end) = if self.at.opset >= 15 { (a.int_or("start", 0)?, a.int_or("end", r)?) } else { (0, r) };
        let clamp = |v: i64| (if v < 0 { v.saturating_add(r) } else { v }).clamp(0, r) as usize;
        let (s, e) = (clamp(start), clamp(end).max(clamp(start)));
        let dims = &ty.shape.0[s..e];
        let vals: Option<Vec<i64>> = dims.iter().map(|d| d.fixed().map(|n| n as i64)).collect();
        match vals {
            Some(vals) => one(self.im.g.add_const(self.at.name.clone(), Tensor::from_i64(vec![vals.len()], vals))),
            None => one(self.add(Op::Shape { start: s, end: e }, vec![Some(x)], None)?),
        }
    }

    // ---------------------------------------------------------------- quantization

    /// Quantization parameters from the constant inputs `si` (scale) and `zi` (optional zero
    /// point). One value makes per-tensor parameters; a 1-D scale of several values makes per-axis
    /// ones along `axis` of a tensor of rank `rank`. Without a zero point the storage type is
    /// `default` with zero point 0.
    fn qparams(&self, si: usize, zi: usize, axis: i64, rank: usize, default: DType) -> R<(DType, QuantParams)> {
        let names = format!("(`{}`, `{}`)", self.input_name(si).unwrap_or(""), self.input_name(zi).unwrap_or(""));
        let scale = self.const_input(si, "scale")?;
        if !scale.dtype().is_float() || scale.rank() > 1 {
            return Err(self.err(format!(
                "scale {names} must be a float scalar or 1-D, got {}{:?}",
                scale.dtype(),
                scale.shape()
            )));
        }
        let scales = scale.to_f32_vec();
        let (dtype, zps) = match self.opt_const_input(zi, "zero point")? {
            Some(z) => {
                if !matches!(z.dtype(), DType::I8 | DType::U8 | DType::I32) {
                    return Err(self.err(format!("zero point {names} must be i8, u8 or i32, got {}", z.dtype())));
                }
                if z.len() != scales.len() {
                    return Err(self.err(format!(
                        "quantization parameters {names}: {} scales but {} zero points",
                        scales.len(),
                        z.len()
                    )));
                }
                let zps: Vec<i32> = z.to_i64_vec().unwrap_or_default().into_iter().map(|v| v as i32).collect();
                (z.dtype(), zps)
            }
            None => (default, vec![0; scales.len()]),
        };
        let q = match (scales.as_slice(), zps.as_slice()) {
            ([s], [z]) => QuantParams::per_tensor(*s, *z),
            _ => {
                let axis = norm_axis(axis, rank).map_err(|m| self.err(format!("quantization axis: {m}")))?;
                QuantParams::PerAxis { axis, scales, zero_points: zps }
            }
        };
        q.check().map_err(|m| self.err(format!("quantization parameters {names}: {m}")))?;
        Ok((dtype, q))
    }

    /// Input `vi` as a quantized value carrying the parameters of inputs `si`/`zi`: a constant
    /// integer tensor becomes a constant of that quantized type; any other value must already
    /// have exactly that type.
    fn quant_operand(&mut self, vi: usize, si: usize, zi: usize, axis: i64, what: &str) -> R<Value> {
        let name = self.input_name(vi).ok_or_else(|| self.err(format!("input {vi} ({what}) is missing")))?;
        let typed = self.im.bound(name).filter(|v| self.im.g.value_type(*v).quant.is_some());
        if typed.is_none() {
            if let Some(t) = self.im.const_by_name(name) {
                if !matches!(t.dtype(), DType::I8 | DType::U8 | DType::I32) {
                    return Err(self.err(format!(
                        "constant `{name}` ({what}) is {}; quantized constants are i8, u8 or i32",
                        t.dtype()
                    )));
                }
                let (dtype, q) = self.qparams(si, zi, axis, t.rank(), t.dtype())?;
                if dtype != t.dtype() {
                    return Err(
                        self.err(format!("constant `{name}` ({what}) is {} but its zero point is {dtype}", t.dtype()))
                    );
                }
                if let QuantParams::PerAxis { axis, scales, .. } = &q {
                    if t.shape().get(*axis) != Some(&scales.len()) {
                        return Err(self.err(format!(
                            "constant `{name}` ({what}) of shape {:?} has {} scales for axis {axis}",
                            t.shape(),
                            scales.len()
                        )));
                    }
                }
                let ty = TensorType::quantized(dtype, t.ir_shape(), q);
                return Ok(self.im.quant_const(name, &t, ty));
            }
        }
        let v = self.value(name)?;
        let ty = self.ty(v);
        if ty.quant.is_none() {
            return Err(self.err(format!(
                "input `{name}` ({what}) is {ty}, not a quantized value: it must come from QuantizeLinear, \
                 a quantized op or a constant"
            )));
        }
        let (dtype, q) = self.qparams(si, zi, axis, ty.rank(), ty.dtype)?;
        let declared = TensorType::quantized(dtype, ty.shape.clone(), q);
        if declared != ty {
            return Err(self.err(format!(
                "input `{name}` ({what}) is {ty}, but the node declares {declared}; qforge does not \
                 requantize between different parameters here"
            )));
        }
        Ok(v)
    }

    /// The `axis` attribute of QuantizeLinear / DequantizeLinear (default 1), after rejecting
    /// blocked quantization.
    fn q_axis(&self) -> R<i64> {
        let a = self.attrs();
        if a.int_or("block_size", 0)? != 0 {
            return Err(self.err("blocked quantization (block_size) is not supported"));
        }
        a.int_or("axis", 1)
    }

    fn quantize_linear(&mut self) -> R<Outs> {
        let x = self.input(0)?;
        let ty = self.ty(x);
        let axis = self.q_axis()?;
        let out_dtype = match self.attrs().int("output_dtype")? {
            None | Some(0) => None,
            Some(code) => {
                let code = i32::try_from(code).map_err(|_| self.err(format!("unknown output_dtype {code}")))?;
                Some(dtype_from_onnx(code).map_err(|m| self.err(format!("output_dtype: {m}")))?)
            }
        };
        let (dtype, q) = self.qparams(1, 2, axis, ty.rank(), out_dtype.unwrap_or(DType::U8))?;
        if out_dtype.is_some_and(|d| d != dtype) {
            return Err(self.err(format!("the zero point's type {dtype} differs from output_dtype")));
        }
        let declared = TensorType::quantized(dtype, ty.shape.clone(), q);
        one(self.add(Op::Quantize, vec![Some(x)], Some(vec![declared]))?)
    }

    fn dequantize_linear(&mut self) -> R<Outs> {
        let axis = self.q_axis()?;
        // From opset 19 the result has the scale's type; the IR's dequantize produces f32.
        let scale = self.const_input(1, "scale")?;
        if scale.dtype() != DType::F32 {
            return Err(self.err(format!("a {} scale is not supported (the result would be {0})", scale.dtype())));
        }
        let x = self.quant_operand(0, 1, 2, axis, "x")?;
        one(self.add(Op::Dequantize, vec![Some(x)], None)?)
    }

    fn dynamic_quantize_linear(&mut self) -> R<Outs> {
        let x = self.input(0)?;
        let v = self.add(Op::DynamicQuantize, vec![Some(x)], None)?;
        Ok((0..3).map(|p| Some(Value::new(v.node, p))).collect())
    }

    /// The declared result of a requantizing op: the storage type of `zi` (u8 when absent) and
    /// per-tensor parameters.
    fn declared_out(&self, si: usize, zi: usize, shape: &Shape) -> R<Vec<TensorType>> {
        let (dtype, q) = self.qparams(si, zi, 1, shape.rank(), DType::U8)?;
        Ok(vec![TensorType::quantized(dtype, shape.clone(), q)])
    }

    fn qlinear_conv(&mut self) -> R<Outs> {
        if self.node.input.len() > 9 {
            return Err(self.err("has more than 9 inputs"));
        }
        let x = self.quant_operand(0, 1, 2, 1, "x")?;
        let w = self.quant_operand(3, 4, 5, 0, "w")?;
        let b = self.opt_input(8)?;
        let (xt, wt) = (self.ty(x), self.ty(w));
        let conv = self.conv_attrs(&xt, &wt)?;
        let declared = self.declared_out(6, 7, &xt.shape)?;
        let epilogue = if b.is_some() { vec![Epilogue::Bias, Epilogue::Requant] } else { vec![Epilogue::Requant] };
        let mut ins = vec![Some(x), Some(w)];
        if b.is_some() {
            ins.push(b);
        }
        one(self.add(Op::QConv { conv, epilogue }, ins, Some(declared))?)
    }

    fn qlinear_matmul(&mut self) -> R<Outs> {
        let a = self.quant_operand(0, 1, 2, -1, "a")?;
        let b = self.quant_operand(3, 4, 5, -1, "b")?;
        let declared = self.declared_out(6, 7, &self.ty(a).shape)?;
        one(self.add(Op::QMatMul { epilogue: vec![Epilogue::Requant] }, vec![Some(a), Some(b)], Some(declared))?)
    }

    fn conv_integer(&mut self) -> R<Outs> {
        let ins = self.inputs_upto(2, 4)?;
        let (x, w) = (self.input(0)?, self.input(1)?);
        let attrs = self.conv_attrs(&self.ty(x), &self.ty(w))?;
        one(self.add(Op::ConvInteger(attrs), ins, None)?)
    }

    /// `com.microsoft` QGemm: `A, a_scale, a_zp, B, b_scale, b_zp, [C], [y_scale], [y_zp]`. Without
    /// `y_scale` the result is f32 (`[Bias?, Dequant]`).
    fn qgemm(&mut self) -> R<Outs> {
        let at = self.attrs();
        let (alpha, trans_a, trans_b) =
            (at.float_or("alpha", 1.0)?, at.bool_or("transA", false)?, at.bool_or("transB", false)?);
        let a = self.quant_operand(0, 1, 2, 1, "a")?;
        let b = self.quant_operand(3, 4, 5, if trans_b { 0 } else { 1 }, "b")?;
        let c = self.opt_input(6)?;
        let (declared, last) = if self.input_name(7).is_some() {
            (Some(self.declared_out(7, 8, &self.ty(a).shape)?), Epilogue::Requant)
        } else {
            (None, Epilogue::Dequant)
        };
        let mut epilogue = vec![last];
        let mut ins = vec![Some(a), Some(b)];
        if c.is_some() {
            epilogue.insert(0, Epilogue::Bias);
            ins.push(c);
        }
        one(self.add(Op::QGemm { alpha, trans_a, trans_b, epilogue }, ins, declared)?)
    }

    fn channels_first(&self) -> R<()> {
        if self.attrs().int_or("channels_last", 0)? != 0 {
            return Err(self.err("channels_last=1 is not supported (NCHW only)"));
        }
        Ok(())
    }

    fn qlinear_global_average_pool(&mut self) -> R<Outs> {
        self.channels_first()?;
        let x = self.quant_operand(0, 1, 2, 1, "x")?;
        let declared = self.declared_out(3, 4, &self.ty(x).shape)?;
        one(self.add(Op::QGlobalAveragePool, vec![Some(x)], Some(declared))?)
    }

    fn qlinear_average_pool(&mut self) -> R<Outs> {
        self.channels_first()?;
        let x = self.quant_operand(0, 1, 2, 1, "x")?;
        let xt = self.ty(x);
        let p = self.pool_attrs(&xt, true)?;
        let declared = self.declared_out(3, 4, &xt.shape)?;
        one(self.add(Op::QAveragePool(p), vec![Some(x)], Some(declared))?)
    }

    fn qlinear_binary(&mut self, op: Op) -> R<Outs> {
        let a = self.quant_operand(0, 1, 2, 1, "a")?;
        let b = self.quant_operand(3, 4, 5, 1, "b")?;
        let declared = self.declared_out(6, 7, &self.ty(a).shape)?;
        one(self.add(op, vec![Some(a), Some(b)], Some(declared))?)
    }

    /// `com.microsoft` QLinearConcat: `Y_scale, Y_zp`, then `(X, X_scale, X_zp)` per input.
    fn qlinear_concat(&mut self) -> R<Outs> {
        let axis = self.attrs().int("axis")?.ok_or_else(|| self.err("attribute `axis` is required"))?;
        let n = self.node.input.len();
        if n < 5 || 2 + (n - 2) / 3 * 3 != n {
            return Err(self.err(format!("has {n} inputs; expected Y_scale, Y_zp and (X, X_scale, X_zp) triples")));
        }
        let mut ins = vec![];
        for k in 0..(n - 2) / 3 {
            ins.push(Some(self.quant_operand(2 + 3 * k, 3 + 3 * k, 4 + 3 * k, 1, &format!("input {k}"))?));
        }
        let first = ins.first().copied().flatten().ok_or_else(|| self.err("needs at least one input"))?;
        let declared = self.declared_out(0, 1, &self.ty(first).shape)?;
        one(self.add(Op::QConcat { axis }, ins, Some(declared))?)
    }
}

#[derive(Clone, Copy)]
enum Reduce {
    Mean,
    Sum,
    Max,
}

/// `n` copies of the single element of `d`.
fn splat(d: &TensorData, n: usize) -> TensorData {
    fn rep<T: Copy + Default>(v: &[T], n: usize) -> Vec<T> {
        vec![v.first().copied().unwrap_or_default(); n]
    }
    match d {
        TensorData::F32(v) => TensorData::F32(rep(v, n)),
        TensorData::F16(v) => TensorData::F16(rep(v, n)),
        TensorData::BF16(v) => TensorData::BF16(rep(v, n)),
        TensorData::I8(v) => TensorData::I8(rep(v, n)),
        TensorData::U8(v) => TensorData::U8(rep(v, n)),
        TensorData::I32(v) => TensorData::I32(rep(v, n)),
        TensorData::I64(v) => TensorData::I64(rep(v, n)),
        TensorData::Bool(v) => TensorData::Bool(rep(v, n)),
    }
}
