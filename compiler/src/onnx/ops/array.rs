//! Data movement and shape changes: Reshape, Flatten, Transpose, Concat, Slice, Gather,
//! GatherElements, GatherND, ScatterElements (and Scatter), ScatterND, Split, Squeeze, Unsqueeze,
//! Expand, Pad, Tile, Trilu, DepthToSpace, SpaceToDepth, OneHot, CenterCropPad,
//! plus Cast, CastLike and Identity (semantics: the ONNX operator spec, <https://onnx.ai/onnx/operators/>).
//! Target shapes, axes and slice bounds must be constants (or computed from constants: the
//! importer folds them), or shape values computed from the inputs' dims (see
//! [`crate::onnx::symbolic`]), which become the IR's `0`/`-1` reshapes or
//! [`qforge_ir::DimExpr`] sizes.

use super::{one, Cx, OpDef, Outs, MAX_ATTR_DIM, R};
use crate::onnx::symbolic::{self, Mono, SymVal};
use crate::onnx::tensors::{dtype_from_onnx, wire_from_onnx};
use qforge_ir::infer::norm_axis;
use qforge_ir::{BinaryOp, DType, Dim, DimExpr, Op, PadMode, ScatterReduction, Tensor, TensorType, Value};

pub(super) const OPS: &[OpDef] = &[
    OpDef::onnx("Reshape", &[1, 5, 13, 14, 19, 21, 23, 24, 25], reshape),
    OpDef::onnx("Flatten", &[1, 9, 11, 13, 21, 23, 24, 25], flatten),
    OpDef::onnx("Transpose", &[1, 13, 21, 23, 24, 25], transpose),
    OpDef::onnx("Concat", &[1, 4, 11, 13], concat),
    OpDef::onnx("Slice", &[1, 10, 11, 13], slice),
    OpDef::onnx("Gather", &[1, 11, 13], gather),
    OpDef::onnx("GatherElements", &[11, 13], gather_elements),
    OpDef::onnx("GatherND", &[11, 12, 13], gather_nd),
    OpDef::onnx("ScatterElements", &[11, 13, 16, 18], |cx| scatter(cx, false)),
    OpDef::onnx("Scatter", &[9, 11], |cx| scatter(cx, false)),
    OpDef::onnx("ScatterND", &[11, 13, 16, 18], |cx| scatter(cx, true)),
    OpDef::onnx("OneHot", &[9, 11, 28], one_hot),
    OpDef::onnx("CenterCropPad", &[18], center_crop_pad),
    OpDef::onnx("Split", &[1, 2, 11, 13, 18], split),
    OpDef::onnx("Squeeze", &[1, 11, 13, 21, 23, 24, 25], squeeze),
    OpDef::onnx("Unsqueeze", &[1, 11, 13, 21, 23, 24, 25], unsqueeze),
    OpDef::onnx("Expand", &[8, 13], expand),
    OpDef::onnx("Pad", &[1, 2, 11, 13, 18, 19, 21, 23, 24, 25], pad),
    OpDef::onnx("Tile", &[1, 6, 13], tile),
    OpDef::onnx("Trilu", &[14], trilu),
    OpDef::onnx("Cast", &[1, 6, 9, 13, 19, 21, 23, 24, 25, 28], cast),
    OpDef::onnx("CastLike", &[15, 19, 21, 23, 24, 25], cast_like),
    OpDef::onnx("DepthToSpace", &[1, 11, 13, 28], |cx| depth_space(cx, true)),
    OpDef::onnx("SpaceToDepth", &[1, 13, 28], |cx| depth_space(cx, false)),
    OpDef::onnx("Identity", &[1, 13, 14, 16, 19, 21, 23, 24, 25], |cx| Ok(vec![Some(cx.input(0)?)])),
];

fn flatten(cx: &mut Cx) -> R<Outs> {
    let axis = cx.attrs().int_or("axis", 1)?;
    cx.simple(Op::Flatten { axis }, 1)
}

fn gather(cx: &mut Cx) -> R<Outs> {
    let axis = cx.attrs().int_or("axis", 0)?;
    cx.simple(Op::Gather { axis }, 2)
}

fn gather_elements(cx: &mut Cx) -> R<Outs> {
    let axis = cx.attrs().int_or("axis", 0)?;
    cx.simple(Op::GatherElements { axis }, 2)
}

/// GatherND: `batch_dims` from version 12 (default 0).
fn gather_nd(cx: &mut Cx) -> R<Outs> {
    let b = if cx.version >= 12 { cx.attrs().int_or("batch_dims", 0)? } else { 0 };
    let batch_dims = usize::try_from(b).map_err(|_| cx.err(format!("batch_dims = {b} must not be negative")))?;
    cx.simple(Op::GatherND { batch_dims }, 2)
}

/// ScatterElements, its deprecated form Scatter (versions 9 and 11, no reduction), and
/// ScatterND: `reduction` from version 16 (`none`, `add`, `mul`; `max` and `min` from 18).
fn scatter(cx: &mut Cx, nd: bool) -> R<Outs> {
    let a = cx.attrs();
    let scatter_v9 = cx.node.op_type == "Scatter";
    let reduction = match a.string("reduction")?.as_deref() {
        None | Some("none") => ScatterReduction::None,
        Some("add") if cx.version >= 16 && !scatter_v9 => ScatterReduction::Add,
        Some("mul") if cx.version >= 16 && !scatter_v9 => ScatterReduction::Mul,
        Some("max") if cx.version >= 18 && !scatter_v9 => ScatterReduction::Max,
        Some("min") if cx.version >= 18 && !scatter_v9 => ScatterReduction::Min,
        Some(r) => return Err(cx.err(format!("reduction=\"{r}\" is not defined at version {}", cx.version))),
    };
    let op =
        if nd { Op::ScatterND { reduction } } else { Op::ScatterElements { axis: a.int_or("axis", 0)?, reduction } };
    cx.simple(op, 3)
}

/// OneHot: `depth` a constant (any numeric type, truncated to an integer), `values` the
/// `[off, on]` pair, `axis` (default -1, counted in the output's rank). As the ONNX reference:
/// a negative index gets `depth` added, then `where(index == range(depth), on, off)`, the index
/// unsqueezed at `axis` and compared with the range broadcast along it, so an index outside
/// `[-depth, depth - 1]` gives a row of `off`.
fn one_hot(cx: &mut Cx) -> R<Outs> {
    let axis = cx.attrs().int_or("axis", -1)?;
    let depth = match cx.const_input(1, "depth")?.to_f64_vec().as_slice() {
        [d] if d.is_finite() && *d >= 1.0 && *d <= MAX_ATTR_DIM as f64 => d.trunc() as usize,
        [d] => return Err(cx.err(format!("depth {d} is out of range (1 to {MAX_ATTR_DIM})"))),
        d => return Err(cx.err(format!("input 1 (depth) must hold one value, got {}", d.len()))),
    };
    let (ind, values) = (cx.input(0)?, cx.input(2)?);
    let it = cx.ty(ind);
    if it.dtype == DType::Bool || it.quant.is_some() {
        return Err(cx.err(format!("OneHot indices of {it} are not supported (numeric types)")));
    }
    let r = it.rank();
    let a = norm_axis(axis, r + 1).map_err(|m| cx.err(m))?;
    let konst = |cx: &mut Cx, tag: &str, t: Tensor| {
        let name = cx.im.fresh_name(&format!("{}/{tag}", cx.at.name));
        cx.im.g.add_const(name, t)
    };
    let d = konst(cx, "depth", Tensor::from_f64_iter(it.dtype, vec![], [depth as f64].into_iter()));
    let z = konst(cx, "zero", Tensor::from_f64_iter(it.dtype, vec![], [0.0].into_iter()));
    let neg = cx.add_helper("negative", Op::Binary(BinaryOp::Less), vec![Some(ind), Some(z)])?;
    let up = cx.add_helper("shifted", Op::Binary(BinaryOp::Add), vec![Some(ind), Some(d)])?;
    let wrapped = cx.add_helper("wrapped", Op::Where, vec![Some(neg), Some(up), Some(ind)])?;
    let unsq = cx.add_helper("unsqueeze", Op::Unsqueeze { axes: vec![a as i64] }, vec![Some(wrapped)])?;
    let mut shape = vec![depth];
    shape.extend(std::iter::repeat_n(1, r - a));
    let range = konst(cx, "range", Tensor::from_f64_iter(it.dtype, shape, (0..depth).map(|v| v as f64)));
    let hot = cx.add_helper("hot", Op::Binary(BinaryOp::Equal), vec![Some(unsq), Some(range)])?;
    let pick = |cx: &mut Cx, tag: &str, i: i64| {
        let idx = konst(cx, &format!("{tag}_index"), Tensor::from_i64(vec![], vec![i]));
        cx.add_helper(tag, Op::Gather { axis: 0 }, vec![Some(values), Some(idx)])
    };
    if cx.ty(values).shape.0 != [Dim::Fixed(2)] {
        return Err(cx.err(format!("values must hold 2 elements (off, on), got {}", cx.ty(values))));
    }
    let off = pick(cx, "off", 0)?;
    let on = pick(cx, "on", 1)?;
    one(cx.add(Op::Where, vec![Some(hot), Some(on), Some(off)], None)?)
}

/// CenterCropPad: each listed axis (`axes`, default all) cropped or zero-padded to the constant
/// `shape`, centred as the ONNX reference does (a difference `d` removes or adds `d / 2` elements
/// at the start, the rest at the end): one constant-mode pad, negative where it crops.
fn center_crop_pad(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    let xt = cx.ty(x);
    let r = xt.rank();
    let target = cx.ints_input(1, "shape")?;
    let axes: Vec<usize> = match cx.attrs().ints("axes")? {
        None => (0..r).collect(),
        Some(ax) => ax.iter().map(|&v| norm_axis(v, r)).collect::<Result<_, _>>().map_err(|m| cx.err(m))?,
    };
    if target.len() != axes.len() {
        return Err(cx.err(format!("{} sizes in `shape` for {} axes", target.len(), axes.len())));
    }
    let mut pads = vec![0i64; 2 * r];
    for (&ax, &want) in axes.iter().zip(&target) {
        let have = xt.shape.0[ax]
            .fixed()
            .ok_or_else(|| cx.err(format!("cropping or padding the symbolic axis {ax} of {xt}")))?;
        if !(0..=MAX_ATTR_DIM as i64).contains(&want) {
            return Err(cx.err(format!("size {want} is out of range")));
        }
        let d = want - have as i64;
        // A crop (d < 0) removes floor(|d| / 2) at the start; a pad adds floor(d / 2) there.
        let begin = if d >= 0 { d / 2 } else { -((-d) / 2) };
        pads[ax] = begin;
        pads[r + ax] = d - begin;
    }
    one(cx.add(Op::Pad { mode: PadMode::Constant, pads, computed: vec![], value: 0.0 }, vec![Some(x)], None)?)
}

fn reshape(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    if let Some(t) = cx.sym_input(1) {
        return reshape_sym(cx, x, t);
    }
    let shape = cx.ints_input(1, "shape")?;
    let shape = cx.target_shape(shape, "target shape")?;
    // Reshape-14 `allowzero=1`: a 0 in the target is a size of 0, not a copy of the input's dim.
    // The result then has no elements, so the input must have none either, and the result is
    // the one tensor of its type and shape.
    if cx.version >= 14 && cx.attrs().bool_or("allowzero", false)? && shape.contains(&0) {
        let xt = cx.ty(x);
        let empty_in = xt.shape.as_fixed().is_some_and(|s| s.contains(&0));
        if shape.contains(&-1) || !empty_in || xt.quant.is_some() {
            return Err(cx.err(format!(
                "allowzero=1 with the target shape {shape:?} needs an empty (non-quantized) input without -1 in the \
                 target, got {xt}"
            )));
        }
        let dims = shape.iter().map(|&d| d as usize).collect();
        return one(cx.im.g.add_const(cx.at.name.clone(), qforge_ir::Tensor::zeros(xt.dtype, dims)));
    }
    one(cx.add(Op::Reshape { shape }, vec![Some(x)], None)?)
}

/// Reshape to a target with symbolic entries: ONNX's `0` (copy) and `-1` (infer) when they
/// say it, otherwise every size explicit (`reshape_dyn`).
fn reshape_sym(cx: &mut Cx, x: Value, t: SymVal) -> R<Outs> {
    if cx.version >= 14 && cx.attrs().bool_or("allowzero", false)? && t.elems.iter().any(|m| m.konst() == Some(0)) {
        return Err(cx.err("allowzero=1 with a 0 in a computed target shape is not supported"));
    }
    let xt = cx.ty(x);
    let xd: Option<Vec<Mono>> = xt.shape.0.iter().map(Mono::of_dim).collect();
    let xd = xd.ok_or_else(|| cx.err(format!("cannot read the dims of {}", xt.shape)))?;
    // Resolve ONNX's 0 (copy) into the input's dim.
    let mut want: Vec<Option<Mono>> = vec![];
    for (i, m) in t.elems.iter().enumerate() {
        want.push(match m.konst() {
            Some(0) => Some(xd.get(i).cloned().ok_or_else(|| cx.err(format!("target copies missing dim {i}")))?),
            Some(-1) => None,
            Some(k) if k < 0 => return Err(cx.err(format!("invalid target dim {k}"))),
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
            return one(cx.add(Op::Reshape { shape }, vec![Some(x)], None)?);
        }
    }
    // Explicit sizes: -1 is the input's element count over the rest.
    let total = xd.iter().try_fold(Mono::c(1), |a, m| a.mul(m));
    let total = total.ok_or_else(|| cx.err("element count overflows"))?;
    let known = want.iter().flatten().try_fold(Mono::c(1), |a, m| a.mul(m));
    let known = known.ok_or_else(|| cx.err("element count overflows"))?;
    let monos: Vec<Mono> = want
        .into_iter()
        .map(|w| match w {
            Some(m) => Some(m),
            None => total.div(&known),
        })
        .collect::<Option<_>>()
        .ok_or_else(|| cx.err(format!("cannot infer the -1 of a target shape for {}", xt.shape)))?;
    let mut ins = vec![Some(x)];
    let shape = cx.dim_exprs(&monos, &mut ins)?;
    one(cx.add(Op::ReshapeDyn { shape }, ins, None)?)
}

/// Transpose; without `perm` the axes are reversed.
fn transpose(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    let rank = cx.ty(x).rank();
    let perm = match cx.attrs().usizes("perm")? {
        Some(p) => p,
        None => (0..rank).rev().collect(),
    };
    one(cx.add(Op::Transpose { perm }, vec![Some(x)], None)?)
}

fn concat(cx: &mut Cx) -> R<Outs> {
    let axis = cx.attrs().int("axis")?.ok_or_else(|| cx.err("attribute `axis` is required"))?;
    let n = cx.node.input.len();
    let ins = (0..n).map(|i| cx.input(i).map(Some)).collect::<R<Vec<_>>>()?;
    if ins.is_empty() {
        return Err(cx.err("needs at least one input"));
    }
    one(cx.add(Op::Concat { axis }, ins, None)?)
}

/// Slice: bounds are attributes before opset 10, constant inputs (with optional axes and steps)
/// from then on.
fn slice(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    let resolved = if cx.version >= 10 && (1..5).any(|i| cx.sym_input(i).is_some()) {
        match slice_to_end(cx, x) {
            Some(b) => Some(b),
            None => return slice_sym(cx, x),
        }
    } else {
        None
    };
    let (starts, ends, axes, steps) = if let Some(b) = resolved {
        b
    } else if cx.version < 10 {
        let a = cx.attrs();
        let starts = a.ints("starts")?.ok_or_else(|| cx.err("attribute `starts` is required"))?;
        let ends = a.ints("ends")?.ok_or_else(|| cx.err("attribute `ends` is required"))?;
        (starts, ends, a.ints("axes")?, None)
    } else {
        (
            cx.ints_input(1, "starts")?,
            cx.ints_input(2, "ends")?,
            cx.opt_ints_input(3, "axes")?,
            cx.opt_ints_input(4, "steps")?,
        )
    };
    let n = starts.len();
    let axes = axes.unwrap_or_else(|| (0..n as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; n]);
    if ends.len() != n || axes.len() != n || steps.len() != n {
        return Err(cx.err("starts, ends, axes and steps differ in length"));
    }
    // Keep the shape arithmetic well defined: no step of i64::MIN, no backwards slice of an
    // empty dim.
    let dims = cx.ty(x).shape.0;
    for (&a, &st) in axes.iter().zip(&steps) {
        let empty = norm_axis(a, dims.len()).ok().is_some_and(|a| dims[a] == Dim::Fixed(0));
        if st == i64::MIN || (st < 0 && empty) {
            return Err(cx.err(format!("step {st} on axis {a} is not supported")));
        }
    }
    one(cx.add(Op::Slice { starts, ends, axes, steps }, vec![Some(x)], None)?)
}

/// The bounds of a slice whose computed ends are the very dims they slice (the dynamo export's
/// roll, `x[shift:size]`) and whose computed starts are a constant less than them
/// (`x[size-shift:]`): constant bounds counted from the end; `None` otherwise.
type SliceBounds = (Vec<i64>, Vec<i64>, Option<Vec<i64>>, Option<Vec<i64>>);
fn slice_to_end(cx: &Cx, x: Value) -> Option<SliceBounds> {
    let monos = |i: usize| -> Option<Option<Vec<Mono>>> {
        match cx.input_name(i) {
            None => Some(None),
            Some(n) => Some(Some(symbolic::sym_of(cx.im, n)?.elems)),
        }
    };
    let consts = |v: &[Mono]| v.iter().map(Mono::konst).collect::<Option<Vec<i64>>>();
    let starts = monos(1)??;
    let ends = monos(2)??;
    let axes = monos(3)?.map(|a| consts(&a)).map_or(Some(None), |a| a.map(Some))?;
    let steps = monos(4)?.map(|a| consts(&a)).map_or(Some(None), |a| a.map(Some))?;
    let dims = cx.ty(x).shape.0;
    // each bound as a constant: a constant as it is, a symbolic one by `sym(i, bound, the dim it
    // slices)` (or the slice is not of this form)
    let resolve = |ms: &[Mono], sym: &dyn Fn(usize, &Mono, &Dim) -> Option<i64>| -> Option<Vec<i64>> {
        let axis_of = |i: usize| -> Option<usize> {
            let a = axes.as_ref().map_or(Some(i as i64), |a| a.get(i).copied())?;
            norm_axis(a, dims.len()).ok()
        };
        ms.iter().enumerate().map(|(i, m)| m.konst().or_else(|| sym(i, m, &dims[axis_of(i)?]))).collect()
    };
    // a start a constant below the dim it slices (the reverse roll's `x[size-2:]`): that
    // constant counted from the end
    let starts = resolve(&starts, &|_, m, d| {
        let c = Mono::of_dim(d)?.sub(m)?.konst()?;
        (c > 0).then_some(-c)
    })?;
    // an end that is the dim it slices, stepping forward: to the end
    let ends = resolve(&ends, &|i, m, d| {
        let step = steps.as_ref().map_or(Some(1), |s| s.get(i).copied())?;
        (step > 0 && Mono::of_dim(d).as_ref() == Some(m)).then_some(i64::MAX)
    })?;
    Some((starts, ends, axes, steps))
}

/// A slice whose end is computed from input shapes: `[0, end)` with step 1 along one axis
/// becomes a gather of `range(0, end)`. (ONNX would clamp an end beyond the dim; here that is
/// an out-of-range index at run time.)
fn slice_sym(cx: &mut Cx, x: Value) -> R<Outs> {
    let unsupported = || cx.err("a Slice with computed bounds must be one axis, from 0, step 1");
    let get = |i: usize| -> R<Option<Mono>> {
        match cx.input_name(i) {
            None => Ok(None),
            Some(n) => match symbolic::sym_of(cx.im, n).as_ref().map(|s| s.elems.as_slice()) {
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
    let rank = cx.ty(x).rank();
    norm_axis(axis, rank).map_err(|m| cx.err(m))?;
    let mut ins = vec![];
    let e = cx.dim_exprs(&[Mono::c(0), end], &mut ins)?;
    let r = cx.add_helper(
        "range",
        Op::Range { start: e[0].clone(), limit: e[1].clone(), delta: 1, dtype: DType::I64 },
        ins,
    )?;
    one(cx.add(Op::Gather { axis }, vec![Some(x), Some(r)], None)?)
}

/// Unsqueeze: axes are an attribute before version 13, an input from then on.
fn unsqueeze(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    let axes = if cx.version >= 13 {
        cx.ints_input(1, "axes")?
    } else {
        cx.attrs().ints("axes")?.ok_or_else(|| cx.err("attribute `axes` is required"))?
    };
    if axes.len() > MAX_ATTR_DIM {
        return Err(cx.err("too many axes"));
    }
    one(cx.add(Op::Unsqueeze { axes }, vec![Some(x)], None)?)
}

/// Squeeze: axes are an attribute before version 13, an optional input from then on.
fn squeeze(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    let axes = if cx.version >= 13 { cx.opt_ints_input(1, "axes")? } else { cx.attrs().ints("axes")? };
    one(cx.add(Op::Squeeze { axes: axes.unwrap_or_default() }, vec![Some(x)], None)?)
}

/// Split: sizes from the `split` attribute (before version 13) or input, otherwise equal parts,
/// one per output. Before version 18 the parts must be equal; from version 18 (with
/// `num_outputs`, or without `split`) the last part is smaller when the dim does not divide.
fn split(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    let ty = cx.ty(x);
    let a = cx.attrs();
    let axis = a.int_or("axis", 0)?;
    let n_out = cx.node.output.len();
    let sizes = if cx.version >= 13 { cx.opt_ints_input(1, "split")? } else { a.ints("split")? };
    let num_outputs = if cx.version >= 18 { a.int("num_outputs")? } else { None };
    if sizes.is_some() && num_outputs.is_some() {
        return Err(cx.err("both the `split` input and the `num_outputs` attribute are given"));
    }
    let sizes: Vec<usize> = match sizes {
        Some(s) => s
            .iter()
            .map(|&v| usize::try_from(v).ok().filter(|&v| v <= MAX_ATTR_DIM))
            .collect::<Option<_>>()
            .ok_or_else(|| cx.err(format!("split sizes {s:?} must be non-negative")))?,
        None => {
            let parts = match num_outputs {
                Some(k) => usize::try_from(k).ok().filter(|&k| k > 0),
                None => Some(n_out).filter(|&k| k > 0),
            };
            let parts = parts.ok_or_else(|| cx.err("the number of outputs must be positive"))?;
            if parts != n_out {
                return Err(cx.err(format!("num_outputs is {parts} but the node has {n_out} outputs")));
            }
            let ax = norm_axis(axis, ty.rank()).map_err(|m| cx.err(m))?;
            let dim = ty.shape.0[ax].fixed().ok_or_else(|| cx.err("split along a symbolic dimension"))?;
            if cx.version < 18 && dim % parts != 0 {
                return Err(cx.err(format!(
                    "Split version {} splits into equal parts, and dim {dim} does not divide into {parts}",
                    cx.version
                )));
            }
            let chunk = dim.div_ceil(parts);
            let last = dim.checked_sub(chunk * (parts - 1));
            let last = last.ok_or_else(|| cx.err(format!("cannot split {dim} into {parts} parts")))?;
            let mut s = vec![chunk; parts - 1];
            s.push(last);
            s
        }
    };
    if sizes.len() != n_out {
        return Err(cx.err(format!("{} split sizes for {n_out} outputs", sizes.len())));
    }
    let vs = cx.add_multi(Op::Split { axis, sizes }, vec![Some(x)])?;
    Ok(vs.into_iter().map(Some).collect())
}

/// Expand to a constant shape, or to one computed from input shapes (`expand_dyn`).
fn expand(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    if let Some(t) = cx.sym_input(1) {
        if t.elems.iter().any(|m| m.k < 0) {
            return Err(cx.err("shape has a negative entry"));
        }
        let mut ins = vec![Some(x)];
        let shape = cx.dim_exprs(&t.elems, &mut ins)?;
        return one(cx.add(Op::ExpandDyn { shape }, ins, None)?);
    }
    let shape = cx.ints_input(1, "shape")?;
    let shape = cx.target_shape(shape, "shape")?;
    if shape.contains(&-1) {
        return Err(cx.err(format!("shape {shape:?} has a negative entry")));
    }
    one(cx.add(Op::Expand { shape }, vec![Some(x)], None)?)
}

/// Cast. Version 19 adds `saturate` and version 24 `round_mode`, which only apply to float8
/// targets; float8 (and every other type the IR has no dtype for) is refused, naming the type.
fn cast(cx: &mut Cx) -> R<Outs> {
    let to = cx.attrs().int("to")?.ok_or_else(|| cx.err("attribute `to` is required"))?;
    let to = i32::try_from(to).map_err(|_| cx.err(format!("unknown element type {to}")))?;
    if let Some(w) = wire_from_onnx(to) {
        return Err(cast_to_wire(cx, w));
    }
    let to = dtype_from_onnx(to).map_err(|m| cx.err(format!("cast to {m}")))?;
    cx.simple(Op::Cast { to }, 1)
}

/// A cast to a type the IR holds only at the graph's inputs (float8, float4, 4- and 2-bit
/// integers, see [`qforge_ir::wire`]): refused, since its result would have to be rounded to that
/// type's grid. (A cast *from* one is a cast from the IR type that holds its values exactly.)
fn cast_to_wire(cx: &Cx, w: qforge_ir::WireType) -> crate::onnx::ImportError {
    cx.err(format!(
        "cast to {w} is not supported: qforge holds {w} values only where a graph input or constant declares them"
    ))
}

/// CastLike (version 15): a Cast to the element type of the second input, whose values are not
/// read. Its `saturate` (version 19) and `round_mode` (version 24) only apply to float8 types,
/// which the IR does not cast to (a `like` of a wire type is refused as Cast to it is).
fn cast_like(cx: &mut Cx) -> R<Outs> {
    if cx.node.input.len() != 2 {
        return Err(cx.err(format!("has {} inputs; CastLike takes 2", cx.node.input.len())));
    }
    if let Some(w) = cx.input_name(1).and_then(|n| cx.im.wire_of(n)) {
        return Err(cast_to_wire(cx, w));
    }
    let x = cx.input(0)?;
    let like = cx.input(1)?;
    let lt = cx.ty(like);
    if lt.quant.is_some() {
        return Err(cx.err(format!("the target type {lt} is quantized; CastLike takes a plain type")));
    }
    one(cx.add(Op::Cast { to: lt.dtype }, vec![Some(x)], None)?)
}

/// DepthToSpace (`to_space`) and SpaceToDepth: the reshape to 6-D, transpose and reshape back
/// that the ONNX spec writes out, NCHW with fixed C, H and W (a symbolic batch is copied with
/// `0`; DepthToSpace on a symbolic H or W reads the sizes from the input's dims). `mode` is DCR (the default) or CRD: DepthToSpace has it from version 11, SpaceToDepth
/// from version 28; before, both are DCR.
fn depth_space(cx: &mut Cx, to_space: bool) -> R<Outs> {
    let a = cx.attrs();
    let b = a.int("blocksize")?.ok_or_else(|| cx.err("attribute `blocksize` is required"))?;
    let b = usize::try_from(b).ok().filter(|&b| b > 0 && b <= MAX_ATTR_DIM);
    let b = b.ok_or_else(|| cx.err("attribute `blocksize` must be positive"))?;
    let has_mode = if to_space { cx.version >= 11 } else { cx.version >= 28 };
    let mode = if has_mode { a.string("mode")?.unwrap_or_else(|| "DCR".into()) } else { "DCR".into() };
    let crd = match mode.as_str() {
        "DCR" => false,
        "CRD" => true,
        other => return Err(cx.err(format!("unknown mode \"{other}\" (DCR or CRD)"))),
    };
    let x = cx.input(0)?;
    let xt = cx.ty(x);
    let dims: Option<Vec<usize>> = xt.shape.0.get(1..).and_then(|d| d.iter().map(Dim::fixed).collect());
    let (c, h, w) = match (xt.rank(), dims.as_deref()) {
        (4, Some(&[c, h, w])) => (c, h, w),
        (4, _) if to_space && xt.shape.0[1].fixed().is_some() => {
            return depth_to_space_symbolic(cx, x, &xt, b, crd);
        }
        _ => {
            return Err(cx.err(format!(
                "needs an NCHW input with fixed C{}, got {}",
                if to_space { "" } else { ", H and W (H / blocksize of a symbolic H is not a size qforge expresses)" },
                xt.shape
            )))
        }
    };
    let n: i64 = match xt.shape.0[0] {
        Dim::Fixed(n) => n as i64,
        _ => 0,
    };
    let bb = b * b;
    let i = |v: usize| v as i64;
    let (tmp, perm, out) = if to_space {
        if c % bb != 0 {
            return Err(cx.err(format!("C={c} is not a multiple of blocksize^2={bb}")));
        }
        let (tmp, perm) = if crd {
            (vec![n, i(c / bb), i(b), i(b), i(h), i(w)], vec![0, 1, 4, 2, 5, 3])
        } else {
            (vec![n, i(b), i(b), i(c / bb), i(h), i(w)], vec![0, 3, 4, 1, 5, 2])
        };
        (tmp, perm, vec![n, i(c / bb), i(h * b), i(w * b)])
    } else {
        if h % b != 0 || w % b != 0 {
            return Err(cx.err(format!("H={h} and W={w} must be multiples of blocksize={b}")));
        }
        let tmp = vec![n, i(c), i(h / b), i(b), i(w / b), i(b)];
        let perm = if crd { vec![0, 1, 3, 5, 2, 4] } else { vec![0, 3, 5, 1, 2, 4] };
        (tmp, perm, vec![n, i(c * bb), i(h / b), i(w / b)])
    };
    let r = cx.add_helper("reshape", Op::Reshape { shape: tmp }, vec![Some(x)])?;
    let t = cx.add_helper("transpose", Op::Transpose { perm }, vec![Some(r)])?;
    one(cx.add(Op::Reshape { shape: out }, vec![Some(t)], None)?)
}

/// DepthToSpace on a symbolic height or width: the same reshape, transpose and reshape, with the
/// sizes read from the input's dims at run time (`reshape_dyn`; the output is `H*b` by `W*b`).
fn depth_to_space_symbolic(cx: &mut Cx, x: Value, xt: &TensorType, b: usize, crd: bool) -> R<Outs> {
    let c = xt.shape.0[1].fixed().ok_or_else(|| cx.err(format!("needs a fixed channel dim, got {}", xt.shape)))?;
    let bb = b * b;
    if c % bb != 0 {
        return Err(cx.err(format!("C={c} is not a multiple of blocksize^2={bb}")));
    }
    // input 1 of each reshape_dyn is `x`, whose dims the sizes read
    let dim = |k: usize, axis: usize| DimExpr::product(k as i64, vec![(1, axis)]);
    let k = |v: usize| DimExpr::fixed(v as i64);
    let (tmp, perm) = if crd {
        (vec![dim(1, 0), k(c / bb), k(b), k(b), dim(1, 2), dim(1, 3)], vec![0, 1, 4, 2, 5, 3])
    } else {
        (vec![dim(1, 0), k(b), k(b), k(c / bb), dim(1, 2), dim(1, 3)], vec![0, 3, 4, 1, 5, 2])
    };
    let out = vec![dim(1, 0), k(c / bb), dim(b, 2), dim(b, 3)];
    let r = cx.add_helper("reshape", Op::ReshapeDyn { shape: tmp }, vec![Some(x), Some(x)])?;
    let t = cx.add_helper("transpose", Op::Transpose { perm }, vec![Some(r)])?;
    one(cx.add(Op::ReshapeDyn { shape: out }, vec![Some(t), Some(x)], None)?)
}

/// Pad: pads (and the fill) are attributes before opset 11, constant inputs from then on; `axes`
/// (opset 18) limits the pads to some axes; `wrap` mode from opset 19. Negative pads crop
/// (constant mode only).
fn pad(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    let r = cx.ty(x).rank();
    let a = cx.attrs();
    let mode = match a.string("mode")?.as_deref().unwrap_or("constant") {
        "constant" => PadMode::Constant,
        "reflect" => PadMode::Reflect,
        "edge" => PadMode::Edge,
        "wrap" => PadMode::Wrap,
        other => return Err(cx.err(format!("mode=\"{other}\" is not supported (constant, reflect, edge, wrap)"))),
    };
    let (raw, value, axes) = if cx.version < 11 {
        let pads = a.ints("pads")?.ok_or_else(|| cx.err("attribute `pads` is required"))?;
        (pads, a.float_or("value", 0.0)? as f64, None)
    } else {
        if cx.node.input.len() > 4 {
            return Err(cx.err(format!("has {} inputs; at most 4 are allowed", cx.node.input.len())));
        }
        if let Some(sym) = cx.sym_input(1) {
            return pad_computed(cx, x, mode, &sym.elems);
        }
        let pads = cx.ints_input(1, "pads")?;
        let value = match cx.opt_const_input(2, "constant_value")? {
            None => 0.0,
            Some(t) => match t.to_f64_vec().as_slice() {
                [] => 0.0,
                [v] => *v,
                _ => return Err(cx.err(format!("constant_value must hold one value, got shape {:?}", t.shape()))),
            },
        };
        (pads, value, if cx.version >= 18 { cx.opt_ints_input(3, "axes")? } else { None })
    };
    let axes: Vec<usize> = match axes {
        None => (0..r).collect(),
        Some(ax) => ax.iter().map(|&v| norm_axis(v, r)).collect::<Result<_, _>>().map_err(|m| cx.err(m))?,
    };
    if raw.len() != 2 * axes.len() {
        return Err(cx.err(format!("{} pads for {} axes (begin and end per axis)", raw.len(), axes.len())));
    }
    if let Some(v) = raw.iter().find(|v| v.unsigned_abs() > MAX_ATTR_DIM as u64) {
        return Err(cx.err(format!("pad {v} is out of range")));
    }
    let mut pads = vec![0i64; 2 * r];
    for (i, &ax) in axes.iter().enumerate() {
        // The spec leaves a repeated axis undefined; the last one wins, as in numpy.
        pads[ax] = raw[i];
        pads[r + ax] = raw[axes.len() + i];
    }
    if mode != PadMode::Constant && pads.iter().any(|&p| p < 0) {
        return Err(cx.err(format!("negative pads {pads:?} with mode {mode:?} are not supported (constant mode only)")));
    }
    one(cx.add(Op::Pad { mode, pads, computed: vec![], value }, vec![Some(x)], None)?)
}

/// Pad with pads computed from input shapes (Swin's window padding `(4 - H % 4) % 4` of a
/// symbolic size, evaluated at import to a derived size): the constant pads stay, the others
/// become computed pads read from the dims of the values that carry their symbols, so one graph
/// pads every input size. Constant mode, a zero fill and every axis only (the form exporters
/// write for `F.pad`).
fn pad_computed(cx: &mut Cx, x: Value, mode: PadMode, elems: &[Mono]) -> R<Outs> {
    let r = cx.ty(x).rank();
    if mode != PadMode::Constant {
        return Err(cx.err(format!("pads computed from input shapes need constant mode, not {mode:?}")));
    }
    if cx.node.input.len() > 2 && cx.input_name(2).is_some() {
        match cx.opt_const_input(2, "constant_value")?.map(|t| t.to_f64_vec()) {
            Some(v) if v.iter().any(|&v| v != 0.0) => {
                return Err(cx.err("pads computed from input shapes with a non-zero fill are not supported"))
            }
            _ => {}
        }
    }
    if cx.input_name(3).is_some() {
        return Err(cx.err("pads computed from input shapes with `axes` are not supported"));
    }
    if elems.len() != 2 * r {
        return Err(cx.err(format!("{} pads for rank {r} (begin and end per axis)", elems.len())));
    }
    let mut pads = vec![0i64; 2 * r];
    let (mut idx, mut monos) = (vec![], vec![]);
    for (i, m) in elems.iter().enumerate() {
        match m.konst() {
            Some(p) if p >= 0 && p.unsigned_abs() <= MAX_ATTR_DIM as u64 => pads[i] = p,
            Some(p) => return Err(cx.err(format!("pad {p} beside pads computed from input shapes"))),
            None => {
                idx.push(i);
                monos.push(m.clone());
            }
        }
    }
    let mut ins = vec![Some(x)];
    let exprs = cx.dim_exprs(&monos, &mut ins)?;
    let computed = idx.into_iter().zip(exprs).collect();
    one(cx.add(Op::Pad { mode, pads, computed, value: 0.0 }, ins, None)?)
}

/// Tile with constant repeats.
fn tile(cx: &mut Cx) -> R<Outs> {
    let x = cx.input(0)?;
    let reps = cx.ints_input(1, "repeats")?;
    let repeats = reps
        .iter()
        .map(|&v| usize::try_from(v).ok().filter(|&v| v <= MAX_ATTR_DIM))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| cx.err(format!("repeats {reps:?} must be non-negative")))?;
    one(cx.add(Op::Tile { repeats }, vec![Some(x)], None)?)
}

/// Trilu: keeps the upper (`upper=1`, the default: column - row >= k) or lower (column - row <= k)
/// triangle of the last two axes and zeroes the rest, as `where(mask, x, 0)` with the mask a
/// constant over the last two axes (which must be fixed), `k` a constant (default 0).
fn trilu(cx: &mut Cx) -> R<Outs> {
    let upper = cx.attrs().bool_or("upper", true)?;
    let x = cx.input(0)?;
    let k = match cx.opt_ints_input(1, "k")?.as_deref() {
        None => 0,
        Some([k]) => *k,
        Some(v) => return Err(cx.err(format!("input 1 (k) must hold one value, got {} values", v.len()))),
    };
    let t = cx.ty(x);
    let r = t.rank();
    let dims = (r >= 2).then(|| (t.shape.0[r - 2].fixed(), t.shape.0[r - 1].fixed()));
    let Some((Some(n), Some(m))) = dims else {
        return Err(cx.err(format!("needs an input of rank 2 or more with fixed last two dims, got {}", t.shape)));
    };
    if (n as u128).saturating_mul(m as u128) > cx.im.max_tensor_bytes {
        return Err(cx.err(format!("the {n}x{m} mask exceeds the tensor size limit")));
    }
    let keep = |i: usize, j: usize| {
        let d = j as i128 - i as i128;
        if upper {
            d >= k as i128
        } else {
            d <= k as i128
        }
    };
    let mask = (0..n).flat_map(|i| (0..m).map(move |j| f64::from(u8::from(keep(i, j)))));
    let mname = cx.im.fresh_name(&format!("{}/mask", cx.at.name));
    let mask = cx.im.g.add_const(mname, qforge_ir::Tensor::from_f64_iter(DType::Bool, vec![n, m], mask));
    let zname = cx.im.fresh_name(&format!("{}/zero", cx.at.name));
    let zero = cx.im.g.add_const(zname, qforge_ir::Tensor::from_f64_iter(t.dtype, vec![], [0.0].into_iter()));
    one(cx.add(Op::Where, vec![Some(mask), Some(x), Some(zero)], None)?)
}
