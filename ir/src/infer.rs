//! Type and shape inference for every op.
//!
//! [`infer`] derives result types from input types. Ops whose result type is a choice rather than
//! a consequence (the output dtype and quantization parameters of quantize, requantize and the
//! fused integer ops) take it from `declared`; inference then checks that choice against the
//! inputs and fills in nothing but what follows from them. Symbolic dimensions (the batch `N`)
//! flow through every op that does not need their value.

use crate::{
    AspectPolicy, BinaryOp, ConvAttrs, ConvTransposeAttrs, DType, Dim, DimExpr, Epilogue, Op, PadMode, PoolAttrs,
    QuantError, QuantParams, ResizeAttrs, ResizeMode, ResizeTarget, Shape, TensorType, UnaryOp,
};

/// Why inference rejected an op: its operands, attributes or declared result type do not fit. The
/// messages name the operand or attribute; callers add the node.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum InferError {
    /// A required input is absent.
    #[error("input {0} is missing")]
    MissingInput(usize),
    /// An operand's dtype or quantization does not fit the op.
    #[error("{0}")]
    Operand(String),
    /// Shapes or dims do not fit the op (or overflow).
    #[error("{0}")]
    Shape(String),
    /// An attribute is invalid, or does not fit the operands.
    #[error("{0}")]
    Attribute(String),
    /// The declared result type is missing or does not fit.
    #[error("{0}")]
    Result(String),
    /// Quantization parameters are invalid or do not fit their value.
    #[error(transparent)]
    Quant(#[from] QuantError),
}

/// The interpreter's kernels and the IR's own wrappers ([`crate::IrError::Node`]) carry plain
/// messages, to which the caller adds the node.
impl From<InferError> for String {
    fn from(e: InferError) -> String {
        e.to_string()
    }
}

type R<T> = std::result::Result<T, InferError>;

/// Infers the result types of `op` applied to `inputs` (`None` for an absent optional input).
/// `declared` is required for ops whose output quantization is chosen (see the module docs).
pub fn infer(op: &Op, inputs: &[Option<&TensorType>], declared: Option<&[TensorType]>) -> R<Vec<TensorType>> {
    let out = infer_op(op, inputs, declared)?;
    for t in &out {
        check_group_params(t)?;
    }
    Ok(out)
}

/// Per-group parameters fit the (fixed) shape of the value they quantize. A movement op that
/// keeps its input's parameters (reshape, flatten, ...) on a per-group value fails here.
pub fn check_group_params(t: &TensorType) -> R<()> {
    match &t.quant {
        Some(q @ QuantParams::PerGroup { .. }) => {
            let shape = t.shape.as_fixed().ok_or_else(|| QuantError::GroupNeedsFixedShape { ty: t.to_string() })?;
            Ok(q.check_shape(&shape)?)
        }
        _ => Ok(()),
    }
}

fn infer_op(op: &Op, inputs: &[Option<&TensorType>], declared: Option<&[TensorType]>) -> R<Vec<TensorType>> {
    let x = |i: usize| -> R<&TensorType> { inputs.get(i).copied().flatten().ok_or(InferError::MissingInput(i)) };
    let opt = |i: usize| -> Option<&TensorType> { inputs.get(i).copied().flatten() };
    let one = |t: TensorType| Ok(vec![t]);
    match op {
        Op::Input | Op::Const(_) => {
            declared.map(|d| d.to_vec()).ok_or_else(|| InferError::Result("needs a declared type".into()))
        }
        Op::Conv(a) => {
            let (xt, wt) = (float(x(0)?, "x")?, float(x(1)?, "w")?);
            same_dtype(xt, wt)?;
            let shape = conv_shape(a, &xt.shape, &wt.shape)?;
            if let Some(b) = opt(2) {
                same_dtype(xt, float(b, "bias")?)?;
                expect_shape(b, &[wt.shape.0[0].clone()], "bias")?;
            }
            one(TensorType::new(xt.dtype, shape))
        }
        Op::BatchNorm { .. } => {
            let xt = float(x(0)?, "x")?;
            if xt.rank() < 2 {
                return Err(InferError::Shape("batch norm needs an input of rank 2 or more".into()));
            }
            for (i, n) in ["scale", "bias", "mean", "var"].iter().enumerate() {
                let p = float(x(i + 1)?, n)?;
                expect_shape(p, &[xt.shape.0[1].clone()], n)?;
            }
            one(xt.clone())
        }
        Op::Unary(UnaryOp::Not) => {
            let t = x(0)?;
            if t.dtype != DType::Bool {
                return Err(InferError::Operand(format!("`not` needs bool, got {}", t.dtype)));
            }
            one(t.clone())
        }
        // The unary functions compute f64 in f64; the float maps and LRN in f32.
        Op::Unary(_) => one(any_float(x(0)?, "x")?.clone()),
        Op::LeakyRelu { .. } | Op::Clip { .. } | Op::HardSigmoid { .. } | Op::Lrn { .. } => {
            one(float(x(0)?, "x")?.clone())
        }
        Op::Softmax { axis } | Op::LogSoftmax { axis } => {
            let t = float(x(0)?, "x")?;
            norm_axis(*axis, t.rank())?;
            one(t.clone())
        }
        Op::LayerNorm { axis, .. } => {
            let t = float(x(0)?, "x")?;
            norm_axis(*axis, t.rank())?;
            float(x(1)?, "scale")?;
            if let Some(b) = opt(2) {
                float(b, "bias")?;
            }
            one(t.clone())
        }
        Op::Binary(b) => {
            let (l, r) = (plain(x(0)?, "a")?, plain(x(1)?, "b")?);
            if l.dtype != r.dtype {
                return Err(InferError::Operand(format!("operand dtypes differ: {} and {}", l.dtype, r.dtype)));
            }
            let shape = broadcast(&[&l.shape, &r.shape])?;
            let dtype = match b {
                BinaryOp::Equal
                | BinaryOp::Less
                | BinaryOp::Greater
                | BinaryOp::GreaterOrEqual
                | BinaryOp::LessOrEqual => DType::Bool,
                BinaryOp::Mod if l.dtype.is_float() || l.dtype == DType::Bool => {
                    return Err(InferError::Operand(format!(
                        "`mod` needs integer operands (use `fmod` for floats), got {}",
                        l.dtype
                    )))
                }
                BinaryOp::Fmod if l.dtype == DType::Bool => {
                    return Err(InferError::Operand("`fmod` needs numeric operands".into()))
                }
                BinaryOp::And | BinaryOp::Or if l.dtype != DType::Bool => {
                    return Err(InferError::Operand(format!("`{}` needs bool operands", op.name())))
                }
                _ => l.dtype,
            };
            one(TensorType::new(dtype, shape))
        }
        Op::Where => {
            let (c, a, b) = (x(0)?, plain(x(1)?, "x")?, plain(x(2)?, "y")?);
            if c.dtype != DType::Bool {
                return Err(InferError::Operand("condition must be bool".into()));
            }
            if a.dtype != b.dtype {
                return Err(InferError::Operand(format!("operand dtypes differ: {} and {}", a.dtype, b.dtype)));
            }
            one(TensorType::new(a.dtype, broadcast(&[&c.shape, &a.shape, &b.shape])?))
        }
        Op::MatMul => {
            let (a, b) = (float(x(0)?, "a")?, float(x(1)?, "b")?);
            same_dtype(a, b)?;
            one(TensorType::new(a.dtype, matmul_shape(&a.shape, &b.shape)?))
        }
        Op::Gemm { trans_a, trans_b, .. } => {
            let (a, b) = (float(x(0)?, "a")?, float(x(1)?, "b")?);
            same_dtype(a, b)?;
            let shape = gemm_shape(&a.shape, &b.shape, *trans_a, *trans_b)?;
            if let Some(c) = opt(2) {
                same_dtype(a, float(c, "c")?)?;
                let bc = broadcast(&[&c.shape, &shape])?;
                if bc != shape {
                    return Err(InferError::Shape(format!("c of shape {} does not broadcast to {}", c.shape, shape)));
                }
            }
            one(TensorType::new(a.dtype, shape))
        }
        Op::MaxPool(p) => {
            let t = widenable(x(0)?, "x")?;
            one(t.with_shape(pool_shape(p, &t.shape)?))
        }
        Op::AveragePool(p) => {
            let t = float(x(0)?, "x")?;
            one(t.with_shape(pool_shape(p, &t.shape)?))
        }
        Op::GlobalAveragePool | Op::GlobalMaxPool => {
            let t = if matches!(op, Op::GlobalMaxPool) { widenable(x(0)?, "x")? } else { float(x(0)?, "x")? };
            one(t.with_shape(global_pool_shape(&t.shape)?))
        }
        Op::ConvTranspose(a) => {
            let (xt, wt) = (float(x(0)?, "x")?, float(x(1)?, "w")?);
            same_dtype(xt, wt)?;
            let shape = conv_transpose_shape(a, &xt.shape, &wt.shape)?;
            if let Some(b) = opt(2) {
                same_dtype(xt, float(b, "bias")?)?;
                expect_shape(b, &[shape.0[1].clone()], "bias")?;
            }
            one(TensorType::new(xt.dtype, shape))
        }
        Op::Resize(a) => {
            let t = plain(x(0)?, "x")?;
            if t.dtype == DType::Bool {
                return Err(InferError::Operand("resize needs a numeric tensor, got bool".into()));
            }
            one(t.with_shape(resize_shape(a, &t.shape)?))
        }
        Op::GroupNorm { groups, .. } => {
            let t = float(x(0)?, "x")?;
            if t.rank() < 2 {
                return Err(InferError::Shape(format!("{} needs an input of rank 2 or more", op.name())));
            }
            let c = &t.shape.0[1];
            let n = c.fixed().ok_or_else(|| InferError::Shape("group norm needs a fixed channel dim".into()))?;
            if *groups == 0 || n % groups != 0 {
                return Err(InferError::Attribute(format!("{n} channels do not split into {groups} groups")));
            }
            for (i, n) in ["scale", "bias"].iter().enumerate() {
                let p = float(x(i + 1)?, n)?;
                same_dtype(t, p)?;
                expect_shape(p, std::slice::from_ref(c), n)?;
            }
            one(t.clone())
        }
        Op::Pad { mode, pads, value } => {
            let t = plain(x(0)?, "x")?;
            let r = t.rank();
            if pads.len() != 2 * r {
                return Err(InferError::Attribute(format!(
                    "{} pads for rank {r} (begin and end per axis)",
                    pads.len()
                )));
            }
            if *mode == PadMode::Constant && value.is_nan() && !t.dtype.is_float() {
                return Err(InferError::Attribute(format!("pad value NaN for {}", t.dtype)));
            }
            let mut dims = vec![];
            for (i, d) in t.shape.0.iter().enumerate() {
                let (b, e) = (pads[i], pads[r + i]);
                if *mode != PadMode::Constant && (b < 0 || e < 0) {
                    return Err(InferError::Attribute(format!("negative pads {b}, {e} need constant mode")));
                }
                dims.push(match d {
                    _ if b == 0 && e == 0 => d.clone(),
                    Dim::Sym(_) => return Err(InferError::Shape(format!("padding the symbolic dim {d} by {b}, {e}"))),
                    Dim::Fixed(n) => {
                        if *mode != PadMode::Constant && *n == 0 {
                            return Err(InferError::Shape(format!("cannot pad the empty axis {i} in {mode:?} mode")));
                        }
                        let m = (*n as i128) + b as i128 + e as i128;
                        let m = usize::try_from(m).map_err(|_| {
                            InferError::Shape(format!("pads {b}, {e} remove more than the {n} elements of axis {i}"))
                        })?;
                        Dim::Fixed(m)
                    }
                });
            }
            one(t.with_shape(Shape(dims)))
        }
        Op::Tile { repeats } => {
            let t = x(0)?;
            if repeats.len() != t.rank() {
                return Err(InferError::Attribute(format!("{} repeats for rank {}", repeats.len(), t.rank())));
            }
            per_tensor_or_plain(t, "x")?;
            let dims = t
                .shape
                .0
                .iter()
                .zip(repeats)
                .map(|(d, &k)| dim_product(&[d.clone(), Dim::Fixed(k)]))
                .collect::<R<_>>()?;
            one(t.with_shape(Shape(dims)))
        }
        Op::ReduceMean { axes, keepdims } | Op::ReduceSum { axes, keepdims } | Op::ReduceMax { axes, keepdims } => {
            // f64 reduces in f64; the other integers are widened to i64, which u64 does not fit
            let t = plain(x(0)?, "x")?;
            if t.dtype != DType::F64 {
                widenable(t, "x")?;
            }
            let r = t.rank();
            let axes: Vec<usize> = if axes.is_empty() {
                (0..r).collect()
            } else {
                axes.iter().map(|&a| norm_axis(a, r)).collect::<R<_>>()?
            };
            let mut dims = vec![];
            for (i, d) in t.shape.0.iter().enumerate() {
                if axes.contains(&i) {
                    if *keepdims {
                        dims.push(Dim::Fixed(1));
                    }
                } else {
                    dims.push(d.clone());
                }
            }
            one(TensorType::new(t.dtype, Shape(dims)))
        }
        Op::ArgMax { axis, keepdims, .. } | Op::ArgMin { axis, keepdims, .. } => {
            let t = plain(x(0)?, "x")?;
            if t.dtype == DType::Bool {
                return Err(InferError::Operand(format!("{} needs a numeric tensor, got bool", op.name())));
            }
            let ax = norm_axis(*axis, t.rank())?;
            if t.shape.0[ax].fixed() == Some(0) {
                return Err(InferError::Shape(format!("{} along the empty axis {ax}", op.name())));
            }
            let mut dims = t.shape.0.clone();
            if *keepdims {
                dims[ax] = Dim::Fixed(1);
            } else {
                dims.remove(ax);
            }
            one(TensorType::new(DType::I64, Shape(dims)))
        }
        Op::Reshape { shape } => {
            let t = x(0)?;
            one(t.with_shape(reshape_shape(&t.shape, shape)?))
        }
        Op::Flatten { axis } => {
            let t = x(0)?;
            let r = t.rank();
            let a = if *axis < 0 { *axis + r as i64 } else { *axis };
            if a < 0 || a as usize > r {
                return Err(InferError::Attribute(format!("axis {axis} out of range for rank {r}")));
            }
            let (h, tl) = t.shape.0.split_at(a as usize);
            one(t.with_shape(Shape(vec![dim_product(h)?, dim_product(tl)?])))
        }
        Op::Transpose { perm } => {
            let t = x(0)?;
            let mut seen = perm.clone();
            seen.sort_unstable();
            if seen != (0..t.rank()).collect::<Vec<_>>() {
                return Err(InferError::Attribute(format!("perm {perm:?} is not a permutation of 0..{}", t.rank())));
            }
            if t.quant.as_ref().is_some_and(|q| q.axis().is_some() || q.is_per_group()) {
                return Err(InferError::Operand("transpose of a per-axis or per-group quantized value".into()));
            }
            one(t.with_shape(Shape(perm.iter().map(|&p| t.shape.0[p].clone()).collect())))
        }
        Op::Concat { axis } => {
            let first = x(0)?;
            let a = norm_axis(*axis, first.rank())?;
            let mut total = Some(0usize);
            for i in 0..inputs.len() {
                let t = x(i)?;
                if t.dtype != first.dtype || t.quant != first.quant || t.rank() != first.rank() {
                    return Err(InferError::Operand(format!("input {i} is {t}, input 0 is {first}")));
                }
                for (k, (d, e)) in t.shape.0.iter().zip(&first.shape.0).enumerate() {
                    if k != a && d != e {
                        return Err(InferError::Shape(format!(
                            "input {i} has shape {}, input 0 has {}",
                            t.shape, first.shape
                        )));
                    }
                }
                total = total.zip(t.shape.0[a].fixed()).map(|(s, d)| s.saturating_add(d));
            }
            let mut dims = first.shape.0.clone();
            dims[a] = match total {
                Some(n) => Dim::Fixed(n),
                None if inputs.len() == 1 => dims[a].clone(),
                None => return Err(InferError::Shape("concatenation along a symbolic dimension".into())),
            };
            one(first.with_shape(Shape(dims)))
        }
        Op::Slice { starts, ends, axes, steps } => {
            let t = x(0)?;
            if starts.len() != ends.len() || starts.len() != axes.len() || starts.len() != steps.len() {
                return Err(InferError::Attribute("starts, ends, axes and steps differ in length".into()));
            }
            let mut dims = t.shape.0.clone();
            for i in 0..starts.len() {
                let a = norm_axis(axes[i], t.rank())?;
                let n = dims[a].fixed().ok_or_else(|| InferError::Shape("slice along a symbolic dimension".into()))?;
                let (s, e, st) = (starts[i], ends[i], steps[i]);
                dims[a] = Dim::Fixed(slice_len(n, s, e, st)?);
            }
            one(t.with_shape(Shape(dims)))
        }
        Op::Gather { axis } => {
            let (d, i) = (x(0)?, x(1)?);
            if !matches!(i.dtype, DType::I32 | DType::I64) {
                return Err(InferError::Operand(format!("indices must be i32 or i64, got {}", i.dtype)));
            }
            let a = norm_axis(*axis, d.rank())?;
            let mut dims = d.shape.0[..a].to_vec();
            dims.extend(i.shape.0.iter().cloned());
            dims.extend(d.shape.0[a + 1..].iter().cloned());
            one(d.with_shape(Shape(dims)))
        }
        Op::Unsqueeze { axes } => {
            let t = x(0)?;
            let r = t.rank() + axes.len();
            let mut ax: Vec<usize> = axes.iter().map(|&a| norm_axis(a, r)).collect::<R<_>>()?;
            ax.sort_unstable();
            let mut it = t.shape.0.iter();
            let dims = (0..r)
                .map(|i| if ax.contains(&i) { Dim::Fixed(1) } else { it.next().cloned().unwrap_or(Dim::Fixed(1)) })
                .collect();
            one(t.with_shape(Shape(dims)))
        }
        Op::Squeeze { axes } => {
            let t = x(0)?;
            let ax: Vec<usize> = if axes.is_empty() {
                (0..t.rank()).filter(|&i| t.shape.0[i] == Dim::Fixed(1)).collect()
            } else {
                axes.iter().map(|&a| norm_axis(a, t.rank())).collect::<R<_>>()?
            };
            for &a in &ax {
                if t.shape.0[a] != Dim::Fixed(1) {
                    return Err(InferError::Shape(format!("cannot squeeze axis {a} of size {}", t.shape.0[a])));
                }
            }
            let dims = (0..t.rank()).filter(|i| !ax.contains(i)).map(|i| t.shape.0[i].clone()).collect();
            one(t.with_shape(Shape(dims)))
        }
        Op::Split { axis, sizes } => {
            let t = x(0)?;
            let a = norm_axis(*axis, t.rank())?;
            let n = t.shape.0[a].fixed().ok_or_else(|| InferError::Shape("split along a symbolic dimension".into()))?;
            if sizes.iter().try_fold(0usize, |a, &s| a.checked_add(s)) != Some(n) {
                return Err(InferError::Attribute(format!("split sizes {sizes:?} do not add up to {n}")));
            }
            Ok(sizes
                .iter()
                .map(|&s| {
                    let mut d = t.shape.0.clone();
                    d[a] = Dim::Fixed(s);
                    t.with_shape(Shape(d))
                })
                .collect())
        }
        Op::Expand { shape } => {
            let t = x(0)?;
            let target = Shape(shape.iter().map(|&d| Dim::Fixed(d.max(0) as usize)).collect());
            one(t.with_shape(broadcast(&[&t.shape, &target])?))
        }
        Op::Cast { to } => {
            let t = plain(x(0)?, "x")?;
            one(TensorType::new(*to, t.shape.clone()))
        }
        Op::Identity => one(x(0)?.clone()),
        Op::Shape { start, end } => {
            let t = x(0)?;
            if start > end || *end > t.rank() {
                return Err(InferError::Attribute(format!("dims {start}..{end} out of range for rank {}", t.rank())));
            }
            one(TensorType::new(DType::I64, Shape(vec![Dim::Fixed(end - start)])))
        }
        Op::Range { start, limit, delta, dtype } => {
            if !matches!(dtype, DType::I32 | DType::I64 | DType::F32) {
                return Err(InferError::Attribute(format!("range of {dtype} is not supported (i32, i64 or f32)")));
            }
            let (s, l) = (dim_expr(start, inputs)?, dim_expr(limit, inputs)?);
            one(TensorType::new(*dtype, Shape(vec![range_len(&s, &l, *delta)?])))
        }
        Op::ReshapeDyn { shape } => {
            let t = x(0)?;
            let dims: Vec<Dim> = shape.iter().map(|e| dim_expr(e, inputs)).collect::<R<_>>()?;
            let (have, want) = (dim_product(&t.shape.0)?, dim_product(&dims)?);
            if have != want {
                return Err(InferError::Shape(format!(
                    "cannot reshape {} ({have} elements) to {} ({want})",
                    t.shape,
                    Shape(dims)
                )));
            }
            if t.quant.as_ref().is_some_and(|q| q.axis().is_some() || q.is_per_group()) {
                return Err(InferError::Operand("reshape of a per-axis or per-group quantized value".into()));
            }
            one(t.with_shape(Shape(dims)))
        }
        Op::ExpandDyn { shape } => {
            let t = x(0)?;
            let dims: Vec<Dim> = shape.iter().map(|e| dim_expr(e, inputs)).collect::<R<_>>()?;
            one(t.with_shape(broadcast(&[&t.shape, &Shape(dims)])?))
        }
        Op::GatherElements { axis } => {
            let (d, i) = (x(0)?, x(1)?);
            if !matches!(i.dtype, DType::I32 | DType::I64) {
                return Err(InferError::Operand(format!("indices must be i32 or i64, got {}", i.dtype)));
            }
            if d.rank() != i.rank() {
                return Err(InferError::Shape(format!("data {} and indices {} differ in rank", d.shape, i.shape)));
            }
            let a = norm_axis(*axis, d.rank())?;
            for (k, (dd, id)) in d.shape.0.iter().zip(&i.shape.0).enumerate() {
                if let (Some(dn), Some(inn)) = (dd.fixed(), id.fixed()) {
                    if k != a && inn > dn {
                        return Err(InferError::Shape(format!(
                            "indices {} exceed data {} on axis {k}",
                            i.shape, d.shape
                        )));
                    }
                }
            }
            if d.quant.as_ref().is_some_and(|q| q.axis().is_some() || q.is_per_group()) {
                return Err(InferError::Operand("gather_elements of a per-axis or per-group quantized value".into()));
            }
            one(d.with_shape(i.shape.clone()))
        }
        Op::Quantize => {
            let t = float(x(0)?, "x")?;
            declared_quant(declared, &t.shape, &[DType::I8, DType::U8, DType::I32])
        }
        Op::Dequantize => {
            let t = quantized(x(0)?, "x")?;
            one(TensorType::new(DType::F32, t.shape.clone()))
        }
        Op::Requantize => {
            let t = quantized(x(0)?, "x")?;
            declared_quant(declared, &t.shape, &[DType::I8, DType::U8])
        }
        Op::DynamicQuantize => {
            let t = float(x(0)?, "x")?;
            Ok(vec![
                TensorType::new(DType::U8, t.shape.clone()),
                TensorType::new(DType::F32, Shape(vec![])),
                TensorType::new(DType::U8, Shape(vec![])),
            ])
        }
        Op::ConvInteger(a) => {
            let (xt, wt) = (int8(x(0)?, "x")?, int8(x(1)?, "w")?);
            zero_point_input(opt(2), xt.dtype, "x_zero_point")?;
            zero_point_input(opt(3), wt.dtype, "w_zero_point")?;
            one(TensorType::new(DType::I32, conv_shape(a, &xt.shape, &wt.shape)?))
        }
        Op::MatMulInteger => {
            let (a, b) = (int8(x(0)?, "a")?, int8(x(1)?, "b")?);
            zero_point_input(opt(2), a.dtype, "a_zero_point")?;
            zero_point_input(opt(3), b.dtype, "b_zero_point")?;
            one(TensorType::new(DType::I32, matmul_shape(&a.shape, &b.shape)?))
        }
        Op::QConv { conv, epilogue } => {
            let (xt, wt) = (quantized(x(0)?, "x")?, quantized(x(1)?, "w")?);
            per_tensor(xt, "x")?;
            let m = wt
                .shape
                .0
                .first()
                .and_then(Dim::fixed)
                .ok_or_else(|| InferError::Shape("weight needs a fixed output-channel dim".into()))?;
            channel_params(wt, 0, m, "w")?;
            let shape = conv_shape(conv, &xt.shape, &wt.shape)?;
            int_epilogue(epilogue, opt(2), m, declared, &shape)
        }
        Op::QMatMul { epilogue } => {
            let (a, b) = (quantized(x(0)?, "a")?, quantized(x(1)?, "b")?);
            per_tensor(a, "a")?;
            let shape = matmul_shape(&a.shape, &b.shape)?;
            let n = match shape.0.last().and_then(Dim::fixed) {
                Some(n) => n,
                // a symbolic last dim (attention's scores, [N,H,S,S]): per-tensor b, no bias
                None => {
                    per_tensor(b, "b (the result's last dim is symbolic)")?;
                    if opt(2).is_some() {
                        return Err(InferError::Shape("a bias needs a fixed last dim".into()));
                    }
                    0
                }
            };
            channel_params(b, b.rank().saturating_sub(1), n, "b")?;
            int_epilogue(epilogue, opt(2), n, declared, &shape)
        }
        Op::QGemm { trans_a, trans_b, .. } => {
            let Op::QGemm { epilogue, .. } = op else { unreachable!() };
            let (a, b) = (quantized(x(0)?, "a")?, quantized(x(1)?, "b")?);
            per_tensor(a, "a")?;
            let shape = gemm_shape(&a.shape, &b.shape, *trans_a, *trans_b)?;
            let n = shape.0[1].fixed().ok_or_else(|| InferError::Shape("gemm needs a fixed N".into()))?;
            channel_params(b, if *trans_b { 0 } else { 1 }, n, "b")?;
            int_epilogue(epilogue, opt(2), n, declared, &shape)
        }
        Op::QAdd | Op::QMul => {
            let (a, b) = (quantized(x(0)?, "a")?, quantized(x(1)?, "b")?);
            per_tensor(a, "a")?;
            per_tensor(b, "b")?;
            let shape = broadcast(&[&a.shape, &b.shape])?;
            declared_quant(declared, &shape, &[DType::I8, DType::U8])
        }
        Op::QGlobalAveragePool => {
            let t = quantized(x(0)?, "x")?;
            per_tensor(t, "x")?;
            declared_quant(declared, &global_pool_shape(&t.shape)?, &[DType::I8, DType::U8])
        }
        Op::QAveragePool(p) => {
            let t = quantized(x(0)?, "x")?;
            per_tensor(t, "x")?;
            declared_quant(declared, &pool_shape(p, &t.shape)?, &[DType::I8, DType::U8])
        }
        Op::QConcat { axis } => {
            let first = quantized(x(0)?, "input 0")?;
            let a = norm_axis(*axis, first.rank())?;
            let mut dims = first.shape.0.clone();
            let mut total = 0usize;
            for i in 0..inputs.len() {
                let t = quantized(x(i)?, "input")?;
                per_tensor(t, "input")?;
                if t.rank() != first.rank() {
                    return Err(InferError::Shape(format!(
                        "input {i} has rank {}, input 0 has {}",
                        t.rank(),
                        first.rank()
                    )));
                }
                for (k, (d, e)) in t.shape.0.iter().zip(&first.shape.0).enumerate() {
                    if k != a && d != e {
                        return Err(InferError::Shape(format!(
                            "input {i} has shape {}, input 0 has {}",
                            t.shape, first.shape
                        )));
                    }
                }
                total = total.saturating_add(
                    t.shape.0[a]
                        .fixed()
                        .ok_or_else(|| InferError::Shape("concatenation along a symbolic dimension".into()))?,
                );
            }
            dims[a] = Dim::Fixed(total);
            declared_quant(declared, &Shape(dims), &[DType::I8, DType::U8])
        }
    }
}

/// A float operand of an op that computes in f32 (f16/bf16 widened to f32): f64 is refused, with
/// the way out, rather than computed in f32.
fn float<'a>(t: &'a TensorType, what: &str) -> R<&'a TensorType> {
    if t.dtype == DType::F64 {
        return Err(InferError::Operand(format!(
            "{what} is {t}: this op does not compute on f64 (cast it to f32 first)"
        )));
    }
    any_float(t, what)
}

/// A float operand of an op that computes f64 in f64 (and f32, f16, bf16 as [`float`]).
fn any_float<'a>(t: &'a TensorType, what: &str) -> R<&'a TensorType> {
    if !t.dtype.is_float() {
        return Err(InferError::Operand(format!("{what} must be a float tensor, got {t}")));
    }
    if t.quant.is_some() {
        return Err(InferError::Operand(format!("{what} must not be quantized, got {t}")));
    }
    Ok(t)
}

/// An operand of an op whose kernel widens floats to f32 and integers to i64 (max pooling,
/// reductions): f64 and u64 are refused (with the way out) rather than computed in a narrower type.
fn widenable<'a>(t: &'a TensorType, what: &str) -> R<&'a TensorType> {
    let to = match t.dtype {
        DType::F64 => "f32",
        DType::U64 => "i64",
        _ => return Ok(t),
    };
    Err(InferError::Operand(format!("{what} is {t}: this op does not compute on {} (cast it to {to} first)", t.dtype)))
}

fn plain<'a>(t: &'a TensorType, what: &str) -> R<&'a TensorType> {
    if t.quant.is_some() {
        return Err(InferError::Operand(format!("{what} must not be quantized (dequantize it first), got {t}")));
    }
    Ok(t)
}

fn int8<'a>(t: &'a TensorType, what: &str) -> R<&'a TensorType> {
    if !matches!(t.dtype, DType::I8 | DType::U8) {
        return Err(InferError::Operand(format!("{what} must be i8 or u8, got {t}")));
    }
    Ok(t)
}

fn quantized<'a>(t: &'a TensorType, what: &str) -> R<&'a TensorType> {
    if t.quant.is_none() || !t.dtype.is_quantizable_storage() {
        return Err(InferError::Operand(format!("{what} must be a quantized i8/u8 tensor, got {t}")));
    }
    Ok(t)
}

fn per_tensor(t: &TensorType, what: &str) -> R<()> {
    match &t.quant {
        Some(QuantParams::PerTensor { .. }) => Ok(()),
        _ => Err(InferError::Operand(format!("{what} must be quantized per tensor, got {t}"))),
    }
}

/// Checks per-tensor parameters, or per-axis ones on `axis` with `n` entries.
fn channel_params(t: &TensorType, axis: usize, n: usize, what: &str) -> R<()> {
    match &t.quant {
        Some(QuantParams::PerGroup { .. }) => {
            Err(InferError::Operand(format!("{what} is quantized per group: per-group weights have no integer kernel")))
        }
        Some(QuantParams::PerAxis { axis: a, scales, .. }) if *a != axis || scales.len() != n => {
            Err(InferError::Operand(format!(
                "{what} is quantized on axis {a} with {} scales; expected axis {axis} with {n}",
                scales.len()
            )))
        }
        _ => Ok(()),
    }
}

fn zero_point_input(t: Option<&TensorType>, dtype: DType, what: &str) -> R<()> {
    if let Some(t) = t {
        if t.dtype != dtype {
            return Err(InferError::Operand(format!("{what} must be {dtype}, got {t}")));
        }
    }
    Ok(())
}

fn same_dtype(a: &TensorType, b: &TensorType) -> R<()> {
    if a.dtype != b.dtype {
        return Err(InferError::Operand(format!("operand dtypes differ: {} and {}", a.dtype, b.dtype)));
    }
    Ok(())
}

fn expect_shape(t: &TensorType, dims: &[Dim], what: &str) -> R<()> {
    if t.shape.0 != dims {
        return Err(InferError::Shape(format!("{what} has shape {}, expected {}", t.shape, Shape(dims.to_vec()))));
    }
    Ok(())
}

/// Plain values, or values quantized per tensor (which movement ops that reorder elements across
/// axes keep).
fn per_tensor_or_plain(t: &TensorType, what: &str) -> R<()> {
    match &t.quant {
        None | Some(QuantParams::PerTensor { .. }) => Ok(()),
        Some(_) => Err(InferError::Operand(format!("{what} must not be quantized per axis or per group, got {t}"))),
    }
}

/// Output shape of a transposed convolution of `x` (N, C, spatial...) with `w` (C, M/group,
/// kernel...): per spatial dim `stride * (in - 1) + (kernel - 1) * dilation + 1 + output_padding
/// - pad_begin - pad_end` (see [`ConvTransposeAttrs`]).
pub fn conv_transpose_shape(a: &ConvTransposeAttrs, x: &Shape, w: &Shape) -> R<Shape> {
    if x.rank() < 3 || w.rank() != x.rank() {
        return Err(InferError::Shape(format!(
            "conv_transpose needs x of rank 3 or more and w of the same rank, got {x} and {w}"
        )));
    }
    let sp = x.rank() - 2;
    if a.kernel.len() != sp
        || a.strides.len() != sp
        || a.dilations.len() != sp
        || a.pads.len() != 2 * sp
        || a.output_padding.len() != sp
    {
        return Err(InferError::Attribute(format!(
            "attributes do not fit {sp} spatial dims (kernel {:?}, strides {:?}, pads {:?}, dilations {:?}, output_padding {:?})",
            a.kernel, a.strides, a.pads, a.dilations, a.output_padding
        )));
    }
    let wd = w.as_fixed().ok_or_else(|| InferError::Shape("weight shape must be fixed".into()))?;
    if wd[2..] != a.kernel[..] {
        return Err(InferError::Attribute(format!("kernel attribute {:?} does not match weight shape {w}", a.kernel)));
    }
    let c = x.0[1].fixed().ok_or_else(|| InferError::Shape("channel dimension must be fixed".into()))?;
    if a.group == 0 || c % a.group != 0 || wd[0] != c {
        return Err(InferError::Shape(format!("{c} input channels, weight {w} and group {} do not fit", a.group)));
    }
    let m = wd[1].checked_mul(a.group).ok_or_else(|| InferError::Shape("too many output channels".into()))?;
    let mut dims = vec![x.0[0].clone(), Dim::Fixed(m)];
    for i in 0..sp {
        let n = x.0[2 + i].fixed().ok_or_else(|| InferError::Shape("spatial dimensions must be fixed".into()))?;
        let (k, s, d) = (a.kernel[i] as i128, a.strides[i] as i128, a.dilations[i] as i128);
        if k == 0 || s == 0 || d == 0 {
            return Err(InferError::Attribute("kernel, strides and dilations must be positive".into()));
        }
        if n == 0 {
            return Err(InferError::Shape("conv_transpose of an empty spatial dim".into()));
        }
        let out = s * (n as i128 - 1) + (k - 1) * d + 1 + a.output_padding[i] as i128
            - a.pads[i] as i128
            - a.pads[sp + i] as i128;
        let out =
            usize::try_from(out).ok().filter(|&o| o > 0).ok_or_else(|| {
                InferError::Shape(format!(
                "spatial dim {i}: input {n}, kernel {k}, stride {s}, dilation {d}, pads {}+{} and output_padding {} \
                 give an output of {out}",
                a.pads[i], a.pads[sp + i], a.output_padding[i]
            ))
            })?;
        dims.push(Dim::Fixed(out));
    }
    Ok(Shape(dims))
}

/// `floor(n * scale)`, the size of a dim of `n` resized by `scale` (ONNX Resize; computed in f64
/// from the f32 scale, as the ONNX reference does).
fn scaled_size(n: usize, scale: f32) -> R<usize> {
    let v = (n as f64 * scale as f64).floor();
    if !(0.0..=(1u64 << 48) as f64).contains(&v) {
        return Err(InferError::Shape(format!("resizing {n} by {scale} gives {v}")));
    }
    Ok(v as usize)
}

/// The scale the aspect-ratio policy applies to every listed axis (the smallest of the stretch
/// scales for `not_larger`, the largest for `not_smaller`), from fixed input sizes.
fn policy_scale(policy: AspectPolicy, ratios: &[f64]) -> f64 {
    let it = ratios.iter().copied();
    match policy {
        AspectPolicy::NotLarger => it.fold(f64::INFINITY, f64::min),
        _ => it.fold(f64::NEG_INFINITY, f64::max),
    }
}

/// Checks a resize's attributes against the input rank.
fn check_resize(a: &ResizeAttrs, r: usize) -> R<()> {
    if a.mode == ResizeMode::Nearest && a.antialias {
        return Err(InferError::Attribute("antialias applies to linear and cubic resizing only".into()));
    }
    if !a.roi.is_empty() && a.roi.len() != 2 * r {
        return Err(InferError::Attribute(format!("{} roi values for rank {r} (start and end per axis)", a.roi.len())));
    }
    if !a.cubic_a.is_finite() || a.roi.iter().any(|v| !v.is_finite()) {
        return Err(InferError::Attribute("cubic_a and the roi must be finite".into()));
    }
    match &a.target {
        ResizeTarget::Scales(s) => {
            if s.len() != r {
                return Err(InferError::Attribute(format!("{} scales for rank {r}", s.len())));
            }
            if let Some(v) = s.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                return Err(InferError::Attribute(format!("scale {v} must be a positive number")));
            }
        }
        ResizeTarget::Sizes { axes, sizes, .. } => {
            if axes.len() != sizes.len() || axes.is_empty() {
                return Err(InferError::Attribute(format!("{} sizes for axes {axes:?}", sizes.len())));
            }
            for (i, &ax) in axes.iter().enumerate() {
                if ax >= r || axes[..i].contains(&ax) {
                    return Err(InferError::Attribute(format!("axes {axes:?} are not distinct axes of rank {r}")));
                }
            }
        }
    }
    Ok(())
}

/// The scale and output size of every axis of a resize of a fixed-shape input (the ONNX
/// reference's `_interpolate_nd`): scales as given, or `size / in` from sizes, both in f64; under
/// an aspect-ratio policy every listed axis takes the policy's scale and the size
/// `floor(scale * in + 0.5)`.
pub fn resize_scales(a: &ResizeAttrs, input: &[usize]) -> R<(Vec<f64>, Vec<usize>)> {
    check_resize(a, input.len())?;
    match &a.target {
        ResizeTarget::Scales(s) => {
            let sizes = input.iter().zip(s).map(|(&n, &k)| scaled_size(n, k)).collect::<R<_>>()?;
            Ok((s.iter().map(|&k| k as f64).collect(), sizes))
        }
        ResizeTarget::Sizes { axes, sizes, policy } => {
            let mut scales = vec![1.0f64; input.len()];
            let mut out = input.to_vec();
            for (&ax, &m) in axes.iter().zip(sizes) {
                if input[ax] == 0 {
                    return Err(InferError::Shape(format!("cannot resize the empty axis {ax} to {m}")));
                }
                scales[ax] = m as f64 / input[ax] as f64;
                out[ax] = m;
            }
            if *policy != AspectPolicy::Stretch {
                let ratios: Vec<f64> = axes.iter().map(|&ax| scales[ax]).collect();
                let s = policy_scale(*policy, &ratios);
                for &ax in axes {
                    scales[ax] = s;
                    let v = (s * input[ax] as f64 + 0.5).floor();
                    if !(0.0..=(1u64 << 48) as f64).contains(&v) {
                        return Err(InferError::Shape(format!("resizing {} by {s} gives {v}", input[ax])));
                    }
                    out[ax] = v as usize;
                }
            }
            Ok((scales, out))
        }
    }
}

/// The output shape of a resize: [`resize_scales`] when the input is fixed; with symbolic dims,
/// a symbolic dim may be scaled by a whole number (`N` by 2 is `N*2`) or keep its size.
fn resize_shape(a: &ResizeAttrs, x: &Shape) -> R<Shape> {
    if let Some(d) = x.as_fixed() {
        return Ok(Shape::fixed(&resize_scales(a, &d)?.1));
    }
    check_resize(a, x.rank())?;
    let sym_err = |d: &Dim| InferError::Shape(format!("resizing the symbolic dim {d} needs a whole-number scale"));
    match &a.target {
        ResizeTarget::Scales(s) => {
            let dims =
                x.0.iter()
                    .zip(s)
                    .map(|(d, &k)| match d {
                        Dim::Fixed(n) => scaled_size(*n, k).map(Dim::Fixed),
                        Dim::Sym(_) if k.fract() == 0.0 && (1.0..=MAX_WHOLE_SCALE).contains(&k) => {
                            dim_product(&[d.clone(), Dim::Fixed(k as usize)])
                        }
                        Dim::Sym(_) => Err(sym_err(d)),
                    })
                    .collect::<R<_>>()?;
            Ok(Shape(dims))
        }
        ResizeTarget::Sizes { axes, sizes, policy } => {
            let mut dims = x.0.clone();
            if *policy == AspectPolicy::Stretch {
                for (&ax, &m) in axes.iter().zip(sizes) {
                    dims[ax] = Dim::Fixed(m);
                }
                return Ok(Shape(dims));
            }
            // The policy's scale needs every listed axis fixed; the others keep their dims.
            let fixed: Vec<usize> =
                axes.iter().map(|&ax| x.0[ax].fixed().ok_or_else(|| sym_err(&x.0[ax]))).collect::<R<_>>()?;
            let sub = ResizeAttrs {
                target: ResizeTarget::Sizes { axes: (0..axes.len()).collect(), sizes: sizes.clone(), policy: *policy },
                roi: vec![],
                ..a.clone()
            };
            let (_, out) = resize_scales(&sub, &fixed)?;
            for (&ax, m) in axes.iter().zip(out) {
                dims[ax] = Dim::Fixed(m);
            }
            Ok(Shape(dims))
        }
    }
}

/// The largest whole-number scale applied to a symbolic dim.
const MAX_WHOLE_SCALE: f32 = 65536.0;

/// The epilogue of a fused integer kernel decides the result: requantized (declared quantized
/// type) or dequantized (f32). The bias, when the epilogue adds one, is i32 with one value per
/// output channel.
fn int_epilogue(
    ep: &[Epilogue],
    bias: Option<&TensorType>,
    channels: usize,
    declared: Option<&[TensorType]>,
    shape: &Shape,
) -> R<Vec<TensorType>> {
    let has_bias = ep.contains(&Epilogue::Bias);
    match (has_bias, bias) {
        (true, None) => return Err(InferError::Attribute("epilogue adds a bias but there is no bias input".into())),
        (false, Some(_)) => {
            return Err(InferError::Attribute("bias input given but the epilogue does not add it".into()))
        }
        (true, Some(b)) if b.dtype != DType::I32 || b.shape.0 != [Dim::Fixed(channels)] => {
            return Err(InferError::Operand(format!("bias must be i32[{channels}], got {b}")));
        }
        _ => {}
    }
    let requant = ep.iter().filter(|e| matches!(e, Epilogue::Requant)).count();
    let dequant = ep.iter().filter(|e| matches!(e, Epilogue::Dequant)).count();
    match (requant, dequant) {
        (1, 0) => declared_quant(declared, shape, &[DType::I8, DType::U8]),
        (0, 1) => Ok(vec![TensorType::new(DType::F32, shape.clone())]),
        _ => {
            Err(InferError::Attribute("the epilogue must end the accumulator in exactly one requant or dequant".into()))
        }
    }
}

/// A declared quantized result: dtype among `allowed`, shape as inferred, valid parameters.
fn declared_quant(declared: Option<&[TensorType]>, shape: &Shape, allowed: &[DType]) -> R<Vec<TensorType>> {
    let d = match declared {
        Some([d]) => d,
        _ => {
            return Err(InferError::Result(
                "the result type (dtype and quantization parameters) must be declared".into(),
            ))
        }
    };
    if !allowed.contains(&d.dtype) {
        return Err(InferError::Result(format!("result dtype {} is not one of {:?}", d.dtype, allowed)));
    }
    let q = d
        .quant
        .as_ref()
        .ok_or_else(|| InferError::Result(format!("result type {d} has no quantization parameters")))?;
    q.check()?;
    if let QuantParams::PerAxis { axis, scales, .. } = q {
        let n =
            shape.0.get(*axis).ok_or_else(|| InferError::Result(format!("quantization axis {axis} out of range")))?;
        if n.fixed() != Some(scales.len()) {
            return Err(InferError::Result(format!("{} scales for axis {axis} of size {n}", scales.len())));
        }
    }
    Ok(vec![TensorType { dtype: d.dtype, shape: shape.clone(), quant: Some(q.clone()) }])
}

/// The size a [`DimExpr`] names, from the types of the op's inputs.
pub fn dim_expr(e: &DimExpr, inputs: &[Option<&TensorType>]) -> R<Dim> {
    let k = usize::try_from(e.k).map_err(|_| InferError::Attribute(format!("size factor {} is negative", e.k)))?;
    let mut dims = vec![Dim::Fixed(k)];
    for &(i, a) in &e.of {
        let t = inputs
            .get(i)
            .copied()
            .flatten()
            .ok_or_else(|| InferError::Attribute(format!("size refers to missing input {i}")))?;
        dims.push(
            t.shape
                .0
                .get(a)
                .cloned()
                .ok_or_else(|| InferError::Attribute(format!("size refers to dim {a} of input {i} ({t})")))?,
        );
    }
    dim_product(&dims)
}

/// The length of `start, start + delta, ...` below `limit` (ONNX Range): computed when both are
/// fixed; with symbols, only `0..limit` with step 1 has a known length.
fn range_len(start: &Dim, limit: &Dim, delta: i64) -> R<Dim> {
    if delta == 0 {
        return Err(InferError::Attribute("range step must not be zero".into()));
    }
    match (start.fixed(), limit.fixed()) {
        (Some(s), Some(l)) => {
            let (s, l) = (s as i128, l as i128);
            let d = delta as i128;
            let n = ((l - s) + d - d.signum()) / d;
            Ok(Dim::Fixed(usize::try_from(n.max(0)).map_err(|_| InferError::Shape("range too long".into()))?))
        }
        (Some(0), None) if delta == 1 => Ok(limit.clone()),
        _ => Err(InferError::Shape(format!(
            "the length of a range from {start} to {limit} by {delta} is not a dim qforge can express"
        ))),
    }
}

/// Normalizes a possibly negative axis into `0..rank`.
pub fn norm_axis(axis: i64, rank: usize) -> R<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a >= rank as i64 {
        return Err(InferError::Attribute(format!("axis {axis} out of range for rank {rank}")));
    }
    Ok(a as usize)
}

/// Numpy broadcasting of several shapes. A symbolic dim broadcasts with 1 and with itself.
pub fn broadcast(shapes: &[&Shape]) -> R<Shape> {
    let r = shapes.iter().map(|s| s.rank()).max().unwrap_or(0);
    let mut out = vec![Dim::Fixed(1); r];
    for s in shapes {
        let off = r - s.rank();
        for (i, d) in s.0.iter().enumerate() {
            let o = &mut out[off + i];
            *o = match (&*o, d) {
                (Dim::Fixed(1), d) => d.clone(),
                (o, Dim::Fixed(1)) => o.clone(),
                (a, b) if a == b => a.clone(),
                (a, b) => {
                    return Err(InferError::Shape(format!(
                        "shapes {} do not broadcast (dim {a} vs {b})",
                        shapes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
                    )))
                }
            };
        }
    }
    Ok(Shape(out))
}

fn spatial_out(input: &Dim, k: usize, s: usize, pb: usize, pe: usize, d: usize, ceil: bool) -> R<Dim> {
    let n = input.fixed().ok_or_else(|| InferError::Shape("spatial dimensions must be fixed".into()))?;
    if s == 0 || d == 0 || k == 0 {
        return Err(InferError::Attribute("kernel, strides and dilations must be positive".into()));
    }
    let too_large = || {
        InferError::Shape(format!(
            "kernel, pads or input too large (input {n}, kernel {k}, pads {pb}+{pe}, dilation {d})"
        ))
    };
    let span = d.checked_mul(k - 1).and_then(|v| v.checked_add(1)).ok_or_else(too_large)?;
    let padded = n.checked_add(pb).and_then(|v| v.checked_add(pe)).ok_or_else(too_large)?;
    if padded < span {
        return Err(InferError::Shape(format!("kernel extent {span} exceeds the padded input {padded}")));
    }
    let out = if ceil { (padded - span).div_ceil(s) } else { (padded - span) / s };
    let mut out = out.checked_add(1).ok_or_else(too_large)?;
    // ONNX: with ceil_mode, the last window must start inside the input or the begin padding.
    if ceil && (out - 1).checked_mul(s).is_none_or(|v| v >= n + pb) {
        out -= 1;
    }
    Ok(Dim::Fixed(out))
}

fn check_spatial(kernel: &[usize], strides: &[usize], pads: &[usize], dilations: &[usize], sp: usize) -> R<()> {
    if kernel.len() != sp || strides.len() != sp || dilations.len() != sp || pads.len() != 2 * sp {
        return Err(InferError::Attribute(format!(
            "attributes do not fit {sp} spatial dims (kernel {kernel:?}, strides {strides:?}, pads {pads:?}, dilations {dilations:?})"
        )));
    }
    Ok(())
}

/// Output shape of a convolution of `x` (N, C, spatial...) with `w` (M, C/group, kernel...).
pub fn conv_shape(a: &ConvAttrs, x: &Shape, w: &Shape) -> R<Shape> {
    if x.rank() < 3 || w.rank() != x.rank() {
        return Err(InferError::Shape(format!(
            "conv needs x of rank 3 or more and w of the same rank, got {x} and {w}"
        )));
    }
    let sp = x.rank() - 2;
    check_spatial(&a.kernel, &a.strides, &a.pads, &a.dilations, sp)?;
    let wd = w.as_fixed().ok_or_else(|| InferError::Shape("weight shape must be fixed".into()))?;
    if wd[2..] != a.kernel[..] {
        return Err(InferError::Attribute(format!("kernel attribute {:?} does not match weight shape {w}", a.kernel)));
    }
    let c = x.0[1].fixed().ok_or_else(|| InferError::Shape("channel dimension must be fixed".into()))?;
    if a.group == 0 || c % a.group != 0 || wd[0] % a.group != 0 || wd[1].checked_mul(a.group) != Some(c) {
        return Err(InferError::Shape(format!("{c} input channels, weight {w} and group {} do not fit", a.group)));
    }
    let mut dims = vec![x.0[0].clone(), Dim::Fixed(wd[0])];
    for i in 0..sp {
        dims.push(spatial_out(
            &x.0[2 + i],
            a.kernel[i],
            a.strides[i],
            a.pads[i],
            a.pads[sp + i],
            a.dilations[i],
            false,
        )?);
    }
    Ok(Shape(dims))
}

/// Output shape of a max or average pool.
pub fn pool_shape(p: &PoolAttrs, x: &Shape) -> R<Shape> {
    if x.rank() < 3 {
        return Err(InferError::Shape(format!("pooling needs rank 3 or more, got {x}")));
    }
    let sp = x.rank() - 2;
    check_spatial(&p.kernel, &p.strides, &p.pads, &p.dilations, sp)?;
    let mut dims = x.0[..2].to_vec();
    for i in 0..sp {
        if p.pads[i] >= p.kernel[i] || p.pads[sp + i] >= p.kernel[i] {
            return Err(InferError::Attribute("pads must be smaller than the kernel".into()));
        }
        dims.push(spatial_out(
            &x.0[2 + i],
            p.kernel[i],
            p.strides[i],
            p.pads[i],
            p.pads[sp + i],
            p.dilations[i],
            p.ceil_mode,
        )?);
    }
    Ok(Shape(dims))
}

fn global_pool_shape(x: &Shape) -> R<Shape> {
    if x.rank() < 3 {
        return Err(InferError::Shape(format!("global pooling needs rank 3 or more, got {x}")));
    }
    let mut dims = x.0[..2].to_vec();
    dims.extend(std::iter::repeat_n(Dim::Fixed(1), x.rank() - 2));
    Ok(Shape(dims))
}

/// Numpy matmul shapes, 1-D operands included.
pub fn matmul_shape(a: &Shape, b: &Shape) -> R<Shape> {
    if a.rank() == 0 || b.rank() == 0 {
        return Err(InferError::Shape("matmul operands must have rank 1 or more".into()));
    }
    let a2 = if a.rank() == 1 { Shape(vec![Dim::Fixed(1), a.0[0].clone()]) } else { a.clone() };
    let b2 = if b.rank() == 1 { Shape(vec![b.0[0].clone(), Dim::Fixed(1)]) } else { b.clone() };
    let (ra, rb) = (a2.rank(), b2.rank());
    let k1 = &a2.0[ra - 1];
    let k2 = &b2.0[rb - 2];
    if k1 != k2 {
        return Err(InferError::Shape(format!("inner dimensions differ: {a} @ {b}")));
    }
    let batch = broadcast(&[&Shape(a2.0[..ra - 2].to_vec()), &Shape(b2.0[..rb - 2].to_vec())])?;
    let mut dims = batch.0;
    if a.rank() > 1 {
        dims.push(a2.0[ra - 2].clone());
    }
    if b.rank() > 1 {
        dims.push(b2.0[rb - 1].clone());
    }
    Ok(Shape(dims))
}

fn gemm_shape(a: &Shape, b: &Shape, ta: bool, tb: bool) -> R<Shape> {
    if a.rank() != 2 || b.rank() != 2 {
        return Err(InferError::Shape(format!("gemm needs 2-D operands, got {a} and {b}")));
    }
    let (m, k1) = if ta { (&a.0[1], &a.0[0]) } else { (&a.0[0], &a.0[1]) };
    let (k2, n) = if tb { (&b.0[1], &b.0[0]) } else { (&b.0[0], &b.0[1]) };
    if k1 != k2 {
        return Err(InferError::Shape(format!("inner dimensions differ: {a} and {b} (trans_a={ta}, trans_b={tb})")));
    }
    Ok(Shape(vec![m.clone(), n.clone()]))
}

/// Number of elements an ONNX slice selects from a dim of size `n`.
pub fn slice_len(n: usize, start: i64, end: i64, step: i64) -> R<usize> {
    let (s, e) = slice_bounds(n, start, end, step)?;
    Ok(if step > 0 {
        if e > s {
            ((e - s) as u64).div_ceil(step as u64) as usize
        } else {
            0
        }
    } else if s > e {
        ((s - e) as u64).div_ceil(step.unsigned_abs()) as usize
    } else {
        0
    })
}

/// ONNX's clamped (start, end) of a slice over a dim of size `n`.
pub fn slice_bounds(n: usize, start: i64, end: i64, step: i64) -> R<(i64, i64)> {
    if step == 0 {
        return Err(InferError::Attribute("slice step must not be zero".into()));
    }
    let n = i64::try_from(n).map_err(|_| InferError::Shape(format!("dimension {n} is too large to slice")))?;
    if n == 0 {
        return Ok((0, 0));
    }
    let fix = |v: i64| if v < 0 { v.saturating_add(n) } else { v };
    let (s, e) = (fix(start), fix(end));
    Ok(if step > 0 { (s.clamp(0, n), e.clamp(0, n)) } else { (s.clamp(0, n - 1), e.clamp(-1, n - 1)) })
}

/// The product of dims, in [`Dim::product`]'s canonical form (`N*16`, `N*S`).
fn dim_product(dims: &[Dim]) -> R<Dim> {
    Dim::product(dims)
        .ok_or_else(|| InferError::Shape(format!("the product of dims {} overflows", Shape(dims.to_vec()))))
}

/// ONNX Reshape with a constant target: `0` copies the input dim, `-1` is inferred from the rest.
/// With a symbolic input, the symbol must be copied by a `0` or be what `-1` stands for.
pub fn reshape_shape(input: &Shape, target: &[i64]) -> R<Shape> {
    if target.iter().filter(|&&d| d == -1).count() > 1 {
        return Err(InferError::Attribute(format!("target shape {target:?} has more than one -1")));
    }
    let mut dims = vec![];
    let mut copied = vec![false; input.rank()];
    for (i, &t) in target.iter().enumerate() {
        dims.push(match t {
            0 => {
                let d = input
                    .0
                    .get(i)
                    .ok_or_else(|| InferError::Attribute(format!("target {target:?} copies dim {i} of {input}")))?;
                copied[i] = true;
                Some(d.clone())
            }
            -1 => None,
            t if t > 0 => Some(Dim::Fixed(t as usize)),
            t => return Err(InferError::Attribute(format!("invalid target dim {t}"))),
        });
    }
    // Element counts of what is not copied on either side, as a constant factor and symbols
    // (a symbolic dim like `N*4` contributes both).
    let rest_in: Vec<Dim> = input.0.iter().zip(&copied).filter(|(_, c)| !**c).map(|(d, _)| d.clone()).collect();
    let overflow = || InferError::Shape(format!("cannot reshape {input} to {target:?}: element count overflows"));
    let (fixed_in, syms_in) = dim_product(&rest_in).map_err(|_| overflow())?.factors().ok_or_else(overflow)?;
    let fixed_out = target.iter().filter(|&&t| t > 0).try_fold(1usize, |a, &t| a.checked_mul(t as usize));
    let fixed_out = fixed_out.ok_or_else(overflow)?;
    match dims.iter().position(Option::is_none) {
        Some(pos) => {
            if fixed_out == 0 || fixed_in % fixed_out != 0 {
                return Err(InferError::Shape(format!("cannot reshape {input} to {target:?}")));
            }
            dims[pos] = Some(Dim::from_factors(fixed_in / fixed_out, syms_in));
        }
        None => {
            if !syms_in.is_empty() || fixed_in != fixed_out {
                return Err(InferError::Shape(format!("cannot reshape {input} to {target:?}")));
            }
        }
    }
    Ok(Shape(dims.into_iter().map(|d| d.expect("filled above")).collect()))
}
