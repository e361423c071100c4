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
                BinaryOp::BitAnd | BinaryOp::BitOr | BinaryOp::BitXor | BinaryOp::ShiftLeft | BinaryOp::ShiftRight
                    if !l.dtype.is_int() =>
                {
                    return Err(InferError::Operand(format!("`{}` needs integer operands, got {}", op.name(), l.dtype)))
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
        Op::MaxPoolIndices { pool, column_major } => {
            let t = widenable(x(0)?, "x")?;
            if *column_major && pool.kernel.len() != 2 {
                return Err(InferError::Attribute(format!(
                    "column-major indices are defined for 2-D pooling, got {} spatial dims",
                    pool.kernel.len()
                )));
            }
            one(TensorType::new(DType::I64, pool_shape(pool, &t.shape)?))
        }
        Op::AveragePool(p) => {
            let t = float(x(0)?, "x")?;
            one(t.with_shape(pool_shape(p, &t.shape)?))
        }
        Op::GlobalAveragePool | Op::GlobalMaxPool => {
            let t = if matches!(op, Op::GlobalMaxPool) { widenable(x(0)?, "x")? } else { float(x(0)?, "x")? };
            one(t.with_shape(global_pool_shape(&t.shape)?))
        }
        Op::ConvWeightGrad(a) => {
            let (xt, dy) = (float(x(0)?, "x")?, float(x(1)?, "dy")?);
            same_dtype(xt, dy)?;
            one(TensorType::new(xt.dtype, conv_weight_grad_shape(a, &xt.shape, &dy.shape)?))
        }
        Op::FakeQuantize { qmin, qmax } | Op::FakeQuantizeGrad { qmin, qmax } => {
            if qmin > qmax {
                return Err(InferError::Attribute(format!("qmin {qmin} exceeds qmax {qmax}")));
            }
            let first = usize::from(matches!(op, Op::FakeQuantizeGrad { .. }));
            let xt = float(x(first)?, "x")?;
            let st = float(x(first + 1)?, "scale")?;
            let mut shapes = vec![&xt.shape, &st.shape];
            if let Some(z) = opt(first + 2) {
                same_dtype(st, float(z, "zero_point")?)?;
                shapes.push(&z.shape);
            }
            // the scale and zero point broadcast to x, not x to them
            let b = broadcast(&shapes)?;
            same_shape(&xt.shape, &b, "the broadcast of x, scale and zero point")?;
            let y = TensorType::new(xt.dtype, xt.shape.clone());
            if first == 0 {
                return one(y);
            }
            let dy = float(x(0)?, "dy")?;
            same_dtype(xt, dy)?;
            same_shape(&xt.shape, &dy.shape, "dy")?;
            Ok(vec![y, TensorType::new(st.dtype, st.shape.clone())])
        }
        Op::ClipGrad { .. } => {
            let (xt, dy) = (float(x(0)?, "x")?, float(x(1)?, "dy")?);
            same_dtype(xt, dy)?;
            same_shape(&xt.shape, &dy.shape, "dy")?;
            one(TensorType::new(xt.dtype, xt.shape.clone()))
        }
        Op::MaxPoolGrad(p) | Op::AveragePoolGrad(p) => {
            let (xt, dy) = (float(x(0)?, "x")?, float(x(1)?, "dy")?);
            same_dtype(xt, dy)?;
            let y = pool_shape(p, &xt.shape)?;
            same_shape(&y, &dy.shape, "dy")?;
            one(xt.clone())
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
            let t = per_tensor_int8_or_plain(x(0)?, "x")?;
            if t.dtype == DType::Bool {
                return Err(InferError::Operand("resize needs a numeric tensor, got bool".into()));
            }
            if let ResizeTarget::DimSizes { axes, sizes } = &a.target {
                let dims: Vec<Dim> = sizes.iter().map(|e| dim_expr(e, inputs)).collect::<R<_>>()?;
                check_resize(a, t.rank())?;
                if dims.iter().all(|d| d.fixed().is_some()) && t.shape.is_fixed() {
                    return one(t.with_shape(resize_shape(resolve_resize(a, inputs)?.as_ref(), &t.shape)?));
                }
                let mut out = t.shape.0.clone();
                for (&ax, d) in axes.iter().zip(dims) {
                    out[ax] = d;
                }
                return one(t.with_shape(Shape(out)));
            }
            if inputs.len() > 1 {
                return Err(InferError::Attribute(format!(
                    "{} inputs, but only sizes read from dims take reference inputs",
                    inputs.len()
                )));
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
        Op::Pad { mode, pads, computed, value } => {
            let t = per_tensor_int8_or_plain(x(0)?, "x")?;
            let r = t.rank();
            if pads.len() != 2 * r {
                return Err(InferError::Attribute(format!(
                    "{} pads for rank {r} (begin and end per axis)",
                    pads.len()
                )));
            }
            if !computed.is_empty() {
                if *mode != PadMode::Constant {
                    return Err(InferError::Attribute(format!("computed pads need constant mode, not {mode:?}")));
                }
                let amounts = pad_amounts(pads, computed, inputs)?;
                let mut dims = vec![];
                for (i, d) in t.shape.0.iter().enumerate() {
                    let sum = Dim::linear(&[(1, d.clone()), (1, amounts[i].clone()), (1, amounts[r + i].clone())], 0);
                    dims.push(sum.ok_or_else(|| {
                        InferError::Shape(format!("padding dim {d} by {}, {} overflows", amounts[i], amounts[r + i]))
                    })?);
                }
                return one(t.with_shape(Shape(dims)));
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
                    Dim::Sym(_) => d.affine(1, b.saturating_add(e), 1).ok_or_else(|| {
                        InferError::Shape(format!("padding the symbolic dim {d} by {b}, {e} overflows"))
                    })?,
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
        Op::ReduceMean { axes, keepdims }
        | Op::ReduceSum { axes, keepdims }
        | Op::ReduceMax { axes, keepdims }
        | Op::ReduceProd { axes, keepdims } => {
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
            let mut along = vec![];
            for i in 0..inputs.len() {
                let t = x(i)?;
                if t.dtype != first.dtype || t.quant != first.quant || t.rank() != first.rank() {
                    return Err(InferError::Operand(format!("input {i} is {t}, input 0 is {first}")));
                }
                for (k, (d, e)) in t.shape.0.iter().zip(&first.shape.0).enumerate() {
                    if k != a && unify_dims(d, e).is_none() {
                        return Err(InferError::Shape(format!(
                            "input {i} has shape {}, input 0 has {}",
                            t.shape, first.shape
                        )));
                    }
                }
                along.push(t.shape.0[a].clone());
            }
            let mut dims = unified_dims(inputs.iter().flatten().map(|t| &t.shape), a)?;
            dims[a] = concat_dim(&along)?;
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
                let (s, e, st) = (starts[i], ends[i], steps[i]);
                dims[a] = match dims[a].fixed() {
                    Some(n) => Dim::Fixed(slice_len(n, s, e, st)?),
                    None => symbolic_slice_len(&dims[a], s, e, st)?,
                };
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
        Op::GatherND { batch_dims } => {
            let (d, i) = (plain(x(0)?, "data")?, x(1)?);
            index_type(i)?;
            let (q, b) = (i.rank(), *batch_dims);
            let m = nd_depth(d, i, b)?;
            let mut dims = i.shape.0[..q - 1].to_vec();
            dims.extend(d.shape.0[b + m..].iter().cloned());
            one(d.with_shape(Shape(dims)))
        }
        Op::ScatterND { .. } => {
            let (d, i, u) = (plain(x(0)?, "data")?, x(1)?, plain(x(2)?, "updates")?);
            index_type(i)?;
            same_dtype(d, u)?;
            let m = nd_depth(d, i, 0)?;
            let mut want = i.shape.0[..i.rank() - 1].to_vec();
            want.extend(d.shape.0[m..].iter().cloned());
            expect_shape(u, &want, "updates")?;
            one(d.clone())
        }
        Op::ScatterElements { axis, .. } => {
            let (d, i, u) = (plain(x(0)?, "data")?, x(1)?, plain(x(2)?, "updates")?);
            index_type(i)?;
            same_dtype(d, u)?;
            if d.rank() != i.rank() {
                return Err(InferError::Shape(format!("data {} and indices {} differ in rank", d.shape, i.shape)));
            }
            norm_axis(*axis, d.rank())?;
            expect_shape(u, &i.shape.0, "updates")?;
            for (k, (dd, id)) in d.shape.0.iter().zip(&i.shape.0).enumerate() {
                if let (Some(dn), Some(inn)) = (dd.fixed(), id.fixed()) {
                    if inn > dn {
                        return Err(InferError::Shape(format!(
                            "indices {} exceed data {} on axis {k}",
                            i.shape, d.shape
                        )));
                    }
                }
            }
            one(d.clone())
        }
        Op::TopK { axis, k, .. } => {
            let t = plain(x(0)?, "x")?;
            if t.dtype == DType::Bool {
                return Err(InferError::Operand(format!("{} needs a numeric tensor, got bool", op.name())));
            }
            let a = norm_axis(*axis, t.rank())?;
            if let Some(n) = t.shape.0[a].fixed() {
                if *k > n {
                    return Err(InferError::Attribute(format!("k = {k} exceeds the {n} elements of axis {a}")));
                }
            }
            let mut dims = t.shape.0.clone();
            dims[a] = Dim::Fixed(*k);
            Ok(vec![t.with_shape(Shape(dims.clone())), TensorType::new(DType::I64, Shape(dims))])
        }
        Op::CumSum { axis, .. } | Op::CumProd { axis, .. } => {
            let t = plain(x(0)?, "x")?;
            if t.dtype == DType::Bool {
                return Err(InferError::Operand(format!("{} needs a numeric tensor, got bool", op.name())));
            }
            norm_axis(*axis, t.rank())?;
            one(t.clone())
        }
        Op::NonZero { .. } | Op::NonMaxSuppression { .. } => data_dependent_types(op, inputs),
        Op::Det => {
            let t = float(x(0)?, "x")?;
            let r = t.rank();
            if r < 2 || t.shape.0[r - 1] != t.shape.0[r - 2] {
                return Err(InferError::Shape(format!(
                    "det needs square matrices in the last two axes, got {}",
                    t.shape
                )));
            }
            one(t.with_shape(Shape(t.shape.0[..r - 2].to_vec())))
        }
        Op::GridSample { mode, .. } => {
            let (t, g) = (float(x(0)?, "x")?, float(x(1)?, "grid")?);
            same_dtype(t, g)?;
            let r = t.rank();
            if !(r == 4 || r == 5) || g.rank() != r {
                return Err(InferError::Shape(format!(
                    "grid_sample needs x (N, C, spatial...) and grid (N, spatial..., {}) of rank 4 or 5, got {} and {}",
                    r.saturating_sub(2),
                    t.shape,
                    g.shape
                )));
            }
            if g.shape.0[r - 1] != Dim::Fixed(r - 2) {
                return Err(InferError::Shape(format!("grid {} must end in {} coordinates", g.shape, r - 2)));
            }
            if *mode == ResizeMode::Cubic && r != 4 {
                return Err(InferError::Attribute("cubic grid sampling is 2-D only".into()));
            }
            if t.shape.0[0] != g.shape.0[0] {
                return Err(InferError::Shape(format!("x {} and grid {} differ in batch", t.shape, g.shape)));
            }
            let mut dims = vec![t.shape.0[0].clone(), t.shape.0[1].clone()];
            dims.extend(g.shape.0[1..r - 1].iter().cloned());
            one(t.with_shape(Shape(dims)))
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
            let mut along = vec![];
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
                    if k != a && unify_dims(d, e).is_none() {
                        return Err(InferError::Shape(format!(
                            "input {i} has shape {}, input 0 has {}",
                            t.shape, first.shape
                        )));
                    }
                }
                along.push(t.shape.0[a].clone());
            }
            let mut dims = unified_dims(inputs.iter().flatten().map(|t| &t.shape), a)?;
            dims[a] = concat_dim(&along)?;
            declared_quant(declared, &Shape(dims), &[DType::I8, DType::U8])
        }
    }
}

/// The size of a concatenation along its axis: the sum of the inputs' sizes, a number when they
/// are fixed and otherwise a symbolic sum ([`Dim::sum`]: a detection head's anchors from every
/// level of a feature pyramid of any image size).
fn concat_dim(along: &[Dim]) -> R<Dim> {
    Dim::sum(along)
        .ok_or_else(|| InferError::Shape(format!("the concatenated size {} overflows", Shape(along.to_vec()))))
}

/// The dims of concatenated shapes of one rank but the `axis` dim, each unified across the shapes
/// ([`unify_dims`]; the caller has checked that they unify).
fn unified_dims<'a>(shapes: impl Iterator<Item = &'a Shape>, axis: usize) -> R<Vec<Dim>> {
    let mut out: Option<Vec<Dim>> = None;
    for s in shapes {
        out = Some(match out {
            None => s.0.clone(),
            Some(o) => o
                .iter()
                .zip(&s.0)
                .enumerate()
                .map(|(k, (d, e))| if k == axis { Some(d.clone()) } else { unify_dims(d, e) })
                .collect::<Option<_>>()
                .ok_or_else(|| InferError::Shape(format!("concatenated shapes {s} and {} differ", Shape(o.clone()))))?,
        });
    }
    out.ok_or(InferError::MissingInput(0))
}

/// A float operand of an op that computes in f32 (f16/bf16 widened to f32): f64 is refused, with
/// the way out, rather than computed in f32.
/// The result types of the ops whose result size depends on the data ([`Op::data_dependent`]):
/// the data-dependent dim is the op's own symbol.
fn data_dependent_types(op: &Op, inputs: &[Option<&TensorType>]) -> R<Vec<TensorType>> {
    let x = |i: usize| -> R<&TensorType> { inputs.get(i).copied().flatten().ok_or(InferError::MissingInput(i)) };
    let count = |c: &str| -> R<Dim> {
        let name = c.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name {
            return Err(InferError::Attribute(format!("count symbol `{c}` must be a name")));
        }
        Ok(Dim::Sym(c.to_string()))
    };
    match op {
        Op::NonZero { count: c } => {
            let t = plain(x(0)?, "x")?;
            if t.rank() == 0 {
                return Err(InferError::Shape("non_zero needs an input of rank 1 or more".into()));
            }
            Ok(vec![TensorType::new(DType::I64, Shape(vec![Dim::Fixed(t.rank()), count(c)?]))])
        }
        Op::NonMaxSuppression { count: c, .. } => {
            let (b, s) = (float(x(0)?, "boxes")?, float(x(1)?, "scores")?);
            if b.dtype != DType::F32 || s.dtype != DType::F32 {
                return Err(InferError::Operand(format!(
                    "non_max_suppression takes f32 boxes and scores, got {b} and {s}"
                )));
            }
            let fits = b.rank() == 3
                && s.rank() == 3
                && b.shape.0[2] == Dim::Fixed(4)
                && unify_dims(&b.shape.0[0], &s.shape.0[0]).is_some()
                && unify_dims(&b.shape.0[1], &s.shape.0[2]).is_some();
            if !fits {
                return Err(InferError::Shape(format!(
                    "non_max_suppression needs boxes [batch, boxes, 4] and scores [batch, classes, boxes], got {} and {}",
                    b.shape, s.shape
                )));
            }
            for (i, what, dtype) in [
                (2, "max_output_boxes_per_class", DType::I64),
                (3, "iou_threshold", DType::F32),
                (4, "score_threshold", DType::F32),
            ] {
                if let Some(t) = inputs.get(i).copied().flatten() {
                    let one = t.shape.as_fixed().is_some_and(|d| d.iter().product::<usize>() == 1);
                    if t.dtype != dtype || t.quant.is_some() || !one {
                        return Err(InferError::Operand(format!("{what} must be one {dtype}, got {t}")));
                    }
                }
            }
            Ok(vec![TensorType::new(DType::I64, Shape(vec![count(c)?, Dim::Fixed(3)]))])
        }
        _ => Err(InferError::Result(format!("{} has no data-dependent result", op.name()))),
    }
}

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

/// A plain tensor, or an i8/u8 one quantized per tensor: the data movement and interpolation
/// ops (resize, pad) compute on its stored integers and carry its scale and zero point (a
/// linear resize's weights sum to one, so interpolating the integers interpolates the values).
fn per_tensor_int8_or_plain<'a>(t: &'a TensorType, what: &str) -> R<&'a TensorType> {
    match &t.quant {
        None => Ok(t),
        Some(QuantParams::PerTensor { .. }) if matches!(t.dtype, DType::I8 | DType::U8) => Ok(t),
        Some(_) => {
            Err(InferError::Operand(format!("{what} must be plain or an i8/u8 tensor quantized per tensor, got {t}")))
        }
    }
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

/// Indices of a gather or scatter are i32 or i64.
fn index_type(i: &TensorType) -> R<()> {
    if !matches!(i.dtype, DType::I32 | DType::I64) || i.quant.is_some() {
        return Err(InferError::Operand(format!("indices must be i32 or i64, got {i}")));
    }
    Ok(())
}

/// The number of data axes each index tuple of GatherND/ScatterND addresses (the fixed last dim
/// of `indices`), checked against the data's rank and the `b` batch axes both share.
fn nd_depth(d: &TensorType, i: &TensorType, b: usize) -> R<usize> {
    let (r, q) = (d.rank(), i.rank());
    if q == 0 || r == 0 || b >= q.min(r) {
        return Err(InferError::Shape(format!(
            "data {} and indices {} need rank 1 or more and more axes than the {b} batch dims",
            d.shape, i.shape
        )));
    }
    let m =
        i.shape.0[q - 1].fixed().ok_or_else(|| InferError::Shape("the last dim of indices must be fixed".into()))?;
    if m == 0 || b + m > r {
        return Err(InferError::Shape(format!(
            "index tuples of {m} entries do not fit data {} after {b} batch dims",
            d.shape
        )));
    }
    if d.shape.0[..b] != i.shape.0[..b] {
        return Err(InferError::Shape(format!("data {} and indices {} differ in the batch dims", d.shape, i.shape)));
    }
    Ok(m)
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
        let (k, s, d) = (a.kernel[i] as i128, a.strides[i] as i128, a.dilations[i] as i128);
        if k == 0 || s == 0 || d == 0 {
            return Err(InferError::Attribute("kernel, strides and dilations must be positive".into()));
        }
        let Some(n) = x.0[2 + i].fixed() else {
            // stride * (n - 1) + (kernel - 1) * dilation + 1 + output_padding - pads, as
            // `stride * n + b`
            let b = (k - 1) * d + 1 + a.output_padding[i] as i128 - a.pads[i] as i128 - a.pads[sp + i] as i128 - s;
            let sym = &x.0[2 + i];
            let dim = i64::try_from(b).ok().and_then(|b| sym.affine(a.strides[i] as u64, b, 1));
            dims.push(dim.ok_or_else(|| {
                InferError::Shape(format!("spatial dim {i}: the transposed convolution of {sym} overflows"))
            })?);
            continue;
        };
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

/// A resize whose sizes are read from its inputs' dims ([`ResizeTarget::DimSizes`]) as one with
/// those sizes ([`ResizeTarget::Sizes`], stretched), when the dims are fixed; others as they are.
pub fn resolve_resize<'a>(a: &'a ResizeAttrs, inputs: &[Option<&TensorType>]) -> R<std::borrow::Cow<'a, ResizeAttrs>> {
    let ResizeTarget::DimSizes { axes, sizes } = &a.target else { return Ok(std::borrow::Cow::Borrowed(a)) };
    let sizes = sizes
        .iter()
        .map(|e| {
            let d = dim_expr(e, inputs)?;
            d.fixed().ok_or_else(|| InferError::Shape(format!("the resize size {d} is not concrete")))
        })
        .collect::<R<Vec<usize>>>()?;
    let target = ResizeTarget::Sizes { axes: axes.clone(), sizes, policy: AspectPolicy::Stretch };
    Ok(std::borrow::Cow::Owned(ResizeAttrs { target, ..a.clone() }))
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
        ResizeTarget::DimSizes { axes, sizes } => {
            if axes.len() != sizes.len() || axes.is_empty() {
                return Err(InferError::Attribute(format!("{} sizes for axes {axes:?}", sizes.len())));
            }
            for (i, &ax) in axes.iter().enumerate() {
                if ax >= r || axes[..i].contains(&ax) {
                    return Err(InferError::Attribute(format!("axes {axes:?} are not distinct axes of rank {r}")));
                }
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
        ResizeTarget::DimSizes { .. } => {
            Err(InferError::Attribute("the sizes read from dims must be resolved first (resolve_resize)".into()))
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
    let sym_err =
        |d: &Dim| InferError::Shape(format!("resizing the symbolic dim {d} needs a scale between 1/65536 and 65536"));
    match &a.target {
        ResizeTarget::DimSizes { .. } => {
            Err(InferError::Attribute("the sizes read from dims must be resolved first (resolve_resize)".into()))
        }
        ResizeTarget::Scales(s) => {
            let dims =
                x.0.iter()
                    .zip(s)
                    .map(|(d, &k)| match d {
                        Dim::Fixed(n) => scaled_size(*n, k).map(Dim::Fixed),
                        Dim::Sym(_) => {
                            let (p, q) = scale_ratio(k).ok_or_else(|| sym_err(d))?;
                            d.affine(p, 0, q).ok_or_else(|| sym_err(d))
                        }
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
            let fixed: Vec<usize> = axes
                .iter()
                .map(|&ax| {
                    x.0[ax].fixed().ok_or_else(|| {
                        InferError::Shape(format!(
                            "keep_aspect_ratio_policy on the symbolic dim {} (its scale depends on its size)",
                            x.0[ax]
                        ))
                    })
                })
                .collect::<R<_>>()?;
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

/// The largest scale, and the inverse of the smallest, applied to a symbolic dim.
const MAX_SYMBOLIC_SCALE: f32 = 65536.0;

/// A positive f32 scale as the exact fraction `p / q` with `q` a power of two (every finite f32
/// is one), within [`MAX_SYMBOLIC_SCALE`]: `floor(n * scale)` in f64, as [`scaled_size`]
/// computes it, is `floor(n * p / q)` exactly while `n * p < 2^53`.
fn scale_ratio(scale: f32) -> Option<(u64, u64)> {
    if !(1.0 / MAX_SYMBOLIC_SCALE..=MAX_SYMBOLIC_SCALE).contains(&scale) {
        return None;
    }
    let (mut v, mut q) = (f64::from(scale), 1u64);
    while v.fract() != 0.0 {
        v *= 2.0;
        q = q.checked_mul(2)?;
    }
    Some((v as u64, q))
}

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

/// The pads of a pad with `computed` entries ([`Op::Pad`]), as dims, from the types of its
/// inputs: the constant ones (never negative then) and the computed ones.
pub fn pad_amounts(pads: &[i64], computed: &[(usize, DimExpr)], inputs: &[Option<&TensorType>]) -> R<Vec<Dim>> {
    let mut out = pads
        .iter()
        .map(|&p| {
            usize::try_from(p)
                .map(Dim::Fixed)
                .map_err(|_| InferError::Attribute(format!("pad {p} is negative beside computed pads")))
        })
        .collect::<R<Vec<_>>>()?;
    for (i, e) in computed {
        let slot = out
            .get_mut(*i)
            .ok_or_else(|| InferError::Attribute(format!("computed pad {i} is out of range ({} pads)", pads.len())))?;
        if *slot != Dim::Fixed(0) {
            return Err(InferError::Attribute(format!("pad {i} is both constant and computed")));
        }
        *slot = dim_expr(e, inputs)?;
    }
    Ok(out)
}

/// The pads of [`Op::Pad`] as numbers, for inputs of concrete types (what the interpreter and the
/// JIT pad by): `pads` itself when none is computed.
pub fn fixed_pads(pads: &[i64], computed: &[(usize, DimExpr)], inputs: &[Option<&TensorType>]) -> R<Vec<i64>> {
    if computed.is_empty() {
        return Ok(pads.to_vec());
    }
    pad_amounts(pads, computed, inputs)?
        .iter()
        .map(|d| {
            d.fixed()
                .and_then(|n| i64::try_from(n).ok())
                .ok_or_else(|| InferError::Shape(format!("pad {d} is not fixed by the input shapes")))
        })
        .collect()
}

/// The size a [`DimExpr`] names, from the types of the op's inputs.
pub fn dim_expr(e: &DimExpr, inputs: &[Option<&TensorType>]) -> R<Dim> {
    let k = usize::try_from(e.k).map_err(|_| InferError::Attribute(format!("size factor {} is negative", e.k)))?;
    let mut dims = vec![Dim::Fixed(k)];
    if let Some(expr) = &e.expr {
        let bind = |name: &str| -> Option<Dim> {
            let (i, a) = Dim::parse_input_dim(name)?;
            inputs.get(i).copied().flatten()?.shape.0.get(a).cloned()
        };
        dims.push(expr.subst(&bind).ok_or_else(|| {
            InferError::Attribute(format!(
                "size {expr} does not evaluate on these inputs (a dim it names is missing, or it is negative)"
            ))
        })?);
    }
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

/// Two dims that must be equal at run time, when the shapes may still agree: the dim to carry, or
/// `None` when they cannot. Equal dims agree. Two different symbols, or a derived size (a symbolic
/// conv, pool, resize or pad output) and a fixed size, are unknown until the concrete shapes are
/// inferred (every engine re-infers per input shape, where a mismatch is refused): the result
/// keeps the fixed size, else the simpler symbol (a name before a derived size, then the shorter,
/// then the first in order), so the choice does not depend on operand order. Two different
/// fixed sizes, or a plain name (the batch `N`) and a fixed size, never agree.
pub fn unify_dims(a: &Dim, b: &Dim) -> Option<Dim> {
    match (a, b) {
        _ if a == b => Some(a.clone()),
        (Dim::Fixed(_), Dim::Fixed(_)) => None,
        (Dim::Fixed(_), s) | (s, Dim::Fixed(_)) if !s.is_derived() => None,
        (Dim::Fixed(_), _) => Some(a.clone()),
        (_, Dim::Fixed(_)) => Some(b.clone()),
        (Dim::Sym(x), Dim::Sym(y)) => {
            let key = |d: &Dim, s: &String| (d.is_derived(), s.len(), s.clone());
            Some(if key(a, x) <= key(b, y) { a.clone() } else { b.clone() })
        }
    }
}

/// Numpy broadcasting of several shapes. A symbolic dim broadcasts with 1 and with itself, and
/// with another symbol or a fixed size as [`unify_dims`] says.
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
                (a, b) if unify_dims(a, b).is_some() => unify_dims(a, b).unwrap_or_else(|| a.clone()),
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
    if s == 0 || d == 0 || k == 0 {
        return Err(InferError::Attribute("kernel, strides and dilations must be positive".into()));
    }
    let Some(n) = input.fixed() else { return symbolic_spatial_out(input, k, s, pb, pe, d, ceil) };
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

/// [`spatial_out`] of a symbolic dim `n`, the same integer function written as one
/// `floor((n + b) / s)` (see [`Dim::affine`]). Floor mode: `floor((P - span) / s) + 1` with
/// `P = n + pb + pe` is `floor((n + pb + pe - span + s) / s)`. Ceil mode: `ceil((P - span) / s) + 1`
/// windows, less the last one when it starts at or past `n + pb`; when the end pad is smaller than
/// the kernel extent (pooling's pads are smaller than its kernel) at most that one window goes,
/// so the count is the smaller of `ceil((P - span) / s) + 1` and `ceil((n + pb) / s)`, both
/// `floor((n + b) / s)`, i.e. `floor((n + min(b1, b2)) / s)`. Where `n` is too small for the
/// kernel, the concrete inference (every engine re-infers per input shape) refuses.
fn symbolic_spatial_out(n: &Dim, k: usize, s: usize, pb: usize, pe: usize, d: usize, ceil: bool) -> R<Dim> {
    let too_large = || InferError::Shape(format!("kernel {k}, stride {s}, pads {pb}+{pe} or dilation {d} too large"));
    let span =
        k.checked_sub(1).and_then(|k1| d.checked_mul(k1)).and_then(|v| v.checked_add(1)).ok_or_else(too_large)?;
    let [span, s64, pb, pe] = [span, s, pb, pe].map(|v| i64::try_from(v).ok());
    let (span, s64, pb, pe) =
        (span.ok_or_else(too_large)?, s64.ok_or_else(too_large)?, pb.ok_or_else(too_large)?, pe.ok_or_else(too_large)?);
    let floor_b = pb.checked_add(pe).and_then(|v| v.checked_sub(span)).ok_or_else(too_large)?;
    let b = if !ceil {
        floor_b.checked_add(s64)
    } else {
        if pe >= span {
            return Err(InferError::Shape(format!(
                "ceil_mode with an end pad of {pe} not smaller than the kernel extent {span} on the symbolic dim {n}"
            )));
        }
        let b1 = s64.checked_mul(2).and_then(|v| floor_b.checked_add(v - 1));
        let b2 = pb.checked_add(s64 - 1);
        b1.zip(b2).map(|(x, y)| x.min(y))
    };
    let b = b.ok_or_else(too_large)?;
    n.affine(1, b, s as u64).ok_or_else(too_large)
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

/// The weight shape `(M, C/group, kernel...)` of a convolution of `x` whose result has the shape
/// of `dy` (`M` its channels), checking that the convolution of `x` with such a weight gives
/// `dy`'s shape ([`Op::ConvWeightGrad`]).
pub fn conv_weight_grad_shape(a: &ConvAttrs, x: &Shape, dy: &Shape) -> R<Shape> {
    if x.rank() < 3 || dy.rank() != x.rank() {
        return Err(InferError::Shape(format!(
            "conv_weight_grad needs x of rank 3 or more and dy of the same rank, got {x} and {dy}"
        )));
    }
    let c = x.0[1].fixed().ok_or_else(|| InferError::Shape("channel dimension of x must be fixed".into()))?;
    let m = dy.0[1].fixed().ok_or_else(|| InferError::Shape("channel dimension of dy must be fixed".into()))?;
    if a.group == 0 || c % a.group != 0 || m % a.group != 0 {
        return Err(InferError::Shape(format!(
            "{c} input channels, {m} output channels and group {} do not fit",
            a.group
        )));
    }
    let mut w = vec![Dim::Fixed(m), Dim::Fixed(c / a.group)];
    w.extend(a.kernel.iter().map(|&k| Dim::Fixed(k)));
    let w = Shape(w);
    let y = conv_shape(a, x, &w)?;
    same_shape(&y, dy, "dy")?;
    Ok(w)
}

/// Checks that `got` is the shape `want` an op's forward computes (dims that are equal, or that
/// [`unify_dims`] lets meet).
fn same_shape(want: &Shape, got: &Shape, what: &str) -> R<()> {
    if want.rank() != got.rank() || want.0.iter().zip(&got.0).any(|(a, b)| unify_dims(a, b).is_none()) {
        return Err(InferError::Shape(format!("{what} has shape {got}, expected {want}")));
    }
    Ok(())
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

/// The ends at or past which a slice runs to the end of any dim (ONNX exporters write
/// `INT64_MAX` or `INT32_MAX`).
const SLICE_TO_END: i64 = i32::MAX as i64;

/// [`slice_len`] of a symbolic dim `n`, where it is `n` less a constant: step 1 from a start `s >= 0`
/// to the end (`n - s`) or to `e < 0` counted from the end (`n + e - s`); or a constant range
/// `s..e` (`e - s`); or every `step`-th element from `s` to the end (`ceil((n - s) / step)`).
/// Where `n` is too short for the bounds the concrete inference (re-run per input shape) gives
/// the clamped length.
fn symbolic_slice_len(n: &Dim, s: i64, e: i64, step: i64) -> R<Dim> {
    let refuse = || {
        InferError::Shape(format!(
            "slice {s}..{e} by {step} of the symbolic dim {n}: its length is not `{n}` less a constant \
             (qforge supports step 1 from a start >= 0 to the end or to a negative end)"
        ))
    };
    // counted from the end (a shifted window mask's `m[-4:-2]`, `m[-2:]`): a constant length,
    // where `n` is long enough
    if s < 0 && step == 1 {
        let e = if e >= SLICE_TO_END { 0 } else { e };
        if e > 0 {
            return Err(refuse());
        }
        return usize::try_from(e.saturating_sub(s).max(0)).map(Dim::Fixed).map_err(|_| refuse());
    }
    if s < 0 || step < 1 {
        return Err(refuse());
    }
    // a constant range from the start (a roll's `x[:2]`): its length, where `n` is long enough
    if (0..SLICE_TO_END).contains(&e) {
        let len = e.saturating_sub(s).max(0).unsigned_abs().div_ceil(step.unsigned_abs());
        return usize::try_from(len).map(Dim::Fixed).map_err(|_| refuse());
    }
    // every `step`-th from `s` to the end (a patch merging's `x[0::2]`, `x[1::2]`):
    // `ceil((n - s) / step)`
    if step > 1 {
        if e < SLICE_TO_END {
            return Err(refuse());
        }
        let b = (step - 1).checked_sub(s).ok_or_else(refuse)?;
        return n.affine(1, b, step.unsigned_abs()).ok_or_else(refuse);
    }
    let b = if e >= SLICE_TO_END {
        -s
    } else if e < 0 {
        e.checked_sub(s).ok_or_else(refuse)?
    } else {
        return Err(refuse());
    };
    n.affine(1, b, 1).ok_or_else(refuse)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CoordMode, NearestMode};

    /// Every spatial op's symbolic size, evaluated at `H = n`, is the size concrete inference
    /// gives for an input of `n`, wherever that succeeds: the symbolic stage never names a size
    /// the concrete stage does not compute.
    #[test]
    fn symbolic_spatial_sizes_equal_the_concrete_ones() {
        let x = |d: Dim| TensorType::new(DType::F32, Shape(vec![Dim::Fixed(1), Dim::Fixed(1), d]));
        let w = |k: usize| TensorType::new(DType::F32, Shape::fixed(&[1, 1, k]));
        let mut ops: Vec<(Op, Option<TensorType>)> = vec![];
        for k in 1..=4 {
            for s in 1..=3 {
                for d in 1..=2 {
                    for (pb, pe) in [(0, 0), (1, 0), (0, 1), (1, 1), (2, 1), (3, 3)] {
                        let conv = ConvAttrs {
                            kernel: vec![k],
                            strides: vec![s],
                            pads: vec![pb, pe],
                            dilations: vec![d],
                            group: 1,
                        };
                        ops.push((Op::Conv(conv), Some(w(k))));
                        for ceil_mode in [false, true] {
                            let p = PoolAttrs {
                                kernel: vec![k],
                                strides: vec![s],
                                pads: vec![pb, pe],
                                dilations: vec![d],
                                ceil_mode,
                                count_include_pad: false,
                            };
                            ops.push((Op::MaxPool(p), None));
                        }
                        let ct = ConvTransposeAttrs {
                            kernel: vec![k],
                            strides: vec![s],
                            pads: vec![pb as i64, pe as i64 - 1],
                            dilations: vec![d],
                            group: 1,
                            output_padding: vec![pb.min(s - 1)],
                        };
                        ops.push((Op::ConvTranspose(ct), Some(w(k))));
                    }
                }
            }
        }
        for pads in [[1i64, 2], [-1, 0], [0, -2], [3, -1]] {
            let p = vec![0, 0, pads[0], 0, 0, pads[1]];
            ops.push((Op::Pad { mode: PadMode::Constant, pads: p, computed: vec![], value: 0.0 }, None));
        }
        for (s, e) in
            [(0, i64::MAX), (2, i64::MAX), (1, -1), (0, -3), (3, -2), (0, 2), (1, 3), (-4, -2), (-2, i64::MAX)]
        {
            ops.push((Op::Slice { starts: vec![s], ends: vec![e], axes: vec![2], steps: vec![1] }, None));
        }
        for (s, step) in [(0, 2), (1, 2), (0, 3), (2, 3)] {
            ops.push((Op::Slice { starts: vec![s], ends: vec![i64::MAX], axes: vec![2], steps: vec![step] }, None));
        }
        // pads computed from the input's own dim: to a multiple of c (`(c - d % c) % c`, written
        // as `Dim::rem` writes it), and by `d % 2`
        for c in [2u64, 3, 4, 7] {
            let d = Dim::input_dim(0, 2);
            let amount = d.rem(c).unwrap().sub_from(c as i64).unwrap().rem(c).unwrap();
            let computed = vec![(5, DimExpr { k: 1, of: vec![], expr: Some(amount) })];
            ops.push((Op::Pad { mode: PadMode::Constant, pads: vec![0; 6], computed, value: 0.0 }, None));
        }
        let odd = DimExpr { k: 1, of: vec![], expr: Some(Dim::input_dim(0, 2).rem(2).unwrap()) };
        ops.push((Op::Pad { mode: PadMode::Constant, pads: vec![0; 6], computed: vec![(5, odd)], value: 0.0 }, None));
        for scale in [2.0f32, 0.5, 1.5, 0.75, 3.0, 0.3, 1.0] {
            let a = ResizeAttrs {
                mode: ResizeMode::Nearest,
                coord: CoordMode::Asymmetric,
                nearest: NearestMode::Floor,
                cubic_a: -0.75,
                exclude_outside: false,
                extrapolation: 0.0,
                antialias: false,
                roi: vec![],
                target: ResizeTarget::Scales(vec![1.0, 1.0, scale]),
            };
            ops.push((Op::Resize(a), None));
        }
        for (op, wt) in &ops {
            // the symbolic dim alone and under one derived size (a stride-2 pad-1 conv's output)
            for base in [Dim::Sym("H".into()), Dim::Sym("H".into()).affine(1, 1, 2).unwrap()] {
                let sym = x(base.clone());
                let ins = [Some(&sym), wt.as_ref()];
                let out = match infer(op, &ins, None) {
                    Ok(t) => t[0].shape.0[2].clone(),
                    Err(e) => {
                        // refused symbolically only where every size is refused (invalid attributes)
                        for n in 1..48 {
                            let conc = x(Dim::Fixed(n));
                            assert!(infer(op, &[Some(&conc), wt.as_ref()], None).is_err(), "{op:?} on {base}: {e}");
                        }
                        continue;
                    }
                };
                for n in 1..48usize {
                    let h = base.eval(&|_| Some(n)).unwrap();
                    let conc = x(Dim::Fixed(h));
                    let ins = [Some(&conc), wt.as_ref()];
                    if let Ok(t) = infer(op, &ins, None) {
                        let want = t[0].shape.0[2].fixed().unwrap();
                        let got = out.eval(&|_| Some(n));
                        // a slice clamps at the ends of a short dim, where `n - c` (or a
                        // constant range) is not its length
                        if !(matches!(op, Op::Slice { .. }) && (want == 0 || h < 4)) {
                            assert_eq!(got, Some(want), "{op:?}: {out} at H={n} (input {h})");
                        }
                    }
                }
            }
        }
    }

    /// Equal sizes computed by different ops are the same dim; sizes that may differ unify only
    /// where the concrete stage can still decide.
    #[test]
    fn derived_sizes_are_canonical_and_unify() {
        let h = Dim::Sym("H".into());
        let conv3 = spatial_out(&h, 3, 2, 1, 1, 1, false).unwrap();
        let conv1 = spatial_out(&h, 1, 2, 0, 0, 1, false).unwrap();
        assert_eq!(conv3, conv1);
        assert_eq!(conv3.to_string(), "(H+1)/2");
        // a 'same' stride-1 conv keeps H; a valid 3x3 does not
        assert_eq!(spatial_out(&h, 3, 1, 1, 1, 1, false).unwrap(), h);
        assert_eq!(spatial_out(&h, 3, 1, 0, 0, 1, false).unwrap().to_string(), "(H-2)");
        // nested stride-2 steps compose, products stay one factor
        let twice = spatial_out(&conv3, 3, 2, 1, 1, 1, false).unwrap();
        assert_eq!(twice.to_string(), "(H+3)/4");
        let area = Dim::product(&[Dim::Sym("N".into()), twice.clone(), Dim::Fixed(16)]).unwrap();
        assert_eq!(area.to_string(), "(H+3)/4*N*16");
        assert_eq!(area.factors(), Some((16, vec!["(H+3)/4".to_string(), "N".to_string()])));
        let up = twice.affine(2, 0, 1).unwrap();
        assert_eq!(up.to_string(), "(H+3)/4*2");
        assert_eq!(up.affine(2, 1, 1).unwrap().to_string(), "((H+3)/4*4+1)");
        // unknown until concrete: two symbols, or a derived size and a fixed one
        assert_eq!(unify_dims(&up, &h), Some(h.clone()));
        assert_eq!(unify_dims(&h, &up), Some(h.clone()));
        assert_eq!(unify_dims(&up, &Dim::Fixed(8)), Some(Dim::Fixed(8)));
        // a real mismatch stays one
        assert_eq!(unify_dims(&Dim::Fixed(4), &Dim::Fixed(8)), None);
        assert_eq!(unify_dims(&Dim::Sym("N".into()), &Dim::Fixed(8)), None);
    }

    /// A concatenation along a symbolic axis (a detection head's anchors over the levels of a
    /// feature pyramid) sums the sizes in one canonical form whatever the order of its inputs,
    /// and the sum evaluates to the concrete size.
    #[test]
    fn concatenated_sizes_sum_canonically() {
        let (h, w) = (Dim::Sym("H".into()), Dim::Sym("W".into()));
        let level = |s: u64| {
            let b = s as i64 - 1;
            Dim::product(&[h.affine(1, b, s).unwrap(), w.affine(1, b, s).unwrap(), Dim::Fixed(9)]).unwrap()
        };
        let (p3, p4) = (level(8), level(16));
        let both = Dim::sum(&[p3.clone(), p4.clone()]).unwrap();
        assert_eq!(both, Dim::sum(&[p4.clone(), p3.clone()]).unwrap());
        assert_eq!(both.to_string(), "((H+15)/16*(W+15)/16*9+(H+7)/8*(W+7)/8*9)");
        // sums of sums add term by term; like terms and constants combine
        let more = Dim::sum(&[both.clone(), p3.clone(), Dim::Fixed(4)]).unwrap();
        assert_eq!(more.to_string(), "((H+15)/16*(W+15)/16*9+(H+7)/8*(W+7)/8*18+4)");
        assert_eq!(Dim::sum(&[h.clone(), h.clone()]), Some(Dim::Sym("H*2".into())));
        assert_eq!(Dim::sum(&[h.affine(1, -2, 1).unwrap(), Dim::Fixed(2)]), Some(h.clone()));
        assert_eq!(Dim::sum(&[Dim::Fixed(3), Dim::Fixed(4)]), Some(Dim::Fixed(7)));
        for (hv, wv) in [(1usize, 1usize), (17, 40), (64, 96)] {
            let bind = |s: &str| match s {
                "H" => Some(hv),
                "W" => Some(wv),
                _ => None,
            };
            let want = 9 * hv.div_ceil(8) * wv.div_ceil(8) + 9 * hv.div_ceil(16) * wv.div_ceil(16);
            assert_eq!(both.eval(&bind), Some(want));
            assert_eq!(more.eval(&bind), Some(want + 9 * hv.div_ceil(8) * wv.div_ceil(8) + 4));
            assert!(both.lower_bound() <= want);
        }
        let t = |d: Dim| TensorType::new(DType::F32, Shape(vec![Dim::Sym("N".into()), d, Dim::Fixed(4)]));
        let out = infer(&Op::Concat { axis: 1 }, &[Some(&t(p3)), Some(&t(p4))], None).unwrap();
        assert_eq!(out[0].shape.0[1], both);
    }
}
