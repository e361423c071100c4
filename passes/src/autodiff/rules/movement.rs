//! Data movement: the adjoint of each rearrangement.
//!
//! * reshape, flatten, squeeze, unsqueeze: `dy` reshaped to the input's shape;
//! * transpose: `dy` transposed by the inverse permutation;
//! * concat: the slice of `dy` each input filled; split: the parts' gradients concatenated (zeros
//!   for a part that does not reach the loss);
//! * slice: `dy` put back where it was taken, zeros elsewhere: a constant pad for step 1, a
//!   `scatter_elements` into zeros for other steps, one sliced axis at a time in reverse order;
//! * gather: `dy` scatter-added (`scatter_nd`, reduction add) into zeros at the gathered
//!   indices (the gathered axis moved first and back), so an index gathered twice gets both
//!   gradients; gather_elements: the same with `scatter_elements`;
//! * tile: `dy` summed over the copies;
//! * expand: `dy` summed over the broadcast axes;
//! * pad (constant): `dy` padded by the negated pads (a crop where the forward padded, zeros
//!   where it cropped).

use super::{Builder, Fwd};
use crate::autodiff::AutodiffError;
use qforge_ir::infer::{norm_axis, slice_bounds};
use qforge_ir::{DType, Dim, Op, PadMode, ScatterReduction, Tensor, Value};

pub(crate) fn vjp(b: &mut Builder, f: &Fwd) -> Result<Vec<Option<Value>>, AutodiffError> {
    if let Op::Split { axis, .. } = &f.op {
        let x = f.x(b, 0)?;
        let mut parts = Vec::with_capacity(f.outs.len());
        for (i, (&y, dy)) in f.outs.iter().zip(&f.dys).enumerate() {
            parts.push(match dy {
                Some(d) => *d,
                None => b.zeros_like(&format!("part{i}.zero"), y)?,
            });
        }
        let g = b.op("", Op::Concat { axis: *axis }, &parts)?;
        return Ok(vec![Some(b.reshape_like("shape", g, x)?)]);
    }
    let (x, dy) = (f.x(b, 0)?, f.dy(b)?);
    let axis_of = |b: &Builder, v: Value, a: i64| {
        norm_axis(a, b.rank(v)).map_err(|e| b.unsupported(format!("axis {a}: {}", String::from(e))))
    };
    match &f.op {
        Op::Reshape { .. } | Op::ReshapeDyn { .. } | Op::Flatten { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } => {
            Ok(vec![Some(b.reshape_like("", dy, x)?)])
        }
        Op::Transpose { perm } => {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            Ok(vec![Some(b.op("", Op::Transpose { perm: inv }, &[dy])?)])
        }
        Op::Concat { axis } => {
            let a = axis_of(b, x, *axis)?;
            let mut out = vec![None; f.ins.len()];
            let mut off = 0i64;
            for (i, v) in f.ins.iter().enumerate() {
                let v = v.ok_or_else(|| b.unsupported("internal: a concat input is missing"))?;
                let d = b.dims(v)[a].clone();
                let Some(n) = d.fixed() else {
                    if f.wants[i..].iter().any(|&w| w) {
                        return Err(
                            b.unsupported(format!("the gradient of a concatenation along a symbolic size ({d})"))
                        );
                    }
                    break;
                };
                if f.wants(i) {
                    let s = Op::Slice {
                        starts: vec![off],
                        ends: vec![off + n as i64],
                        axes: vec![a as i64],
                        steps: vec![1],
                    };
                    out[i] = Some(b.op(&format!("in{i}"), s, &[dy])?);
                }
                off += n as i64;
            }
            Ok(out)
        }
        Op::Slice { starts, ends, axes, steps } => {
            // the shape before each sliced axis is cut, in order
            let mut dims = b.dims(x);
            let mut stages = Vec::with_capacity(axes.len());
            for i in 0..axes.len() {
                let a = axis_of(b, x, axes[i])?;
                stages.push((a, dims.clone()));
                let len = match dims[a].fixed() {
                    Some(n) => qforge_ir::infer::slice_len(n, starts[i], ends[i], steps[i])
                        .map(Dim::Fixed)
                        .map_err(|e| b.unsupported(String::from(e)))?,
                    None => b.dims(f.y())[a].clone(),
                };
                dims[a] = len;
            }
            let mut g = dy;
            for (i, (a, before)) in stages.into_iter().enumerate().rev() {
                g = unslice(b, g, &before, a, starts[i], ends[i], steps[i], i)?;
            }
            Ok(vec![Some(b.reshape_like("", g, x)?)])
        }
        Op::Gather { axis } => {
            let idx = f.x(b, 1)?;
            let a = axis_of(b, x, *axis)?;
            Ok(vec![Some(gather(b, x, idx, dy, a)?), None])
        }
        Op::GatherElements { axis } => {
            let idx = f.x(b, 1)?;
            let a = axis_of(b, x, *axis)?;
            let (xd, id) = (b.dims(x), b.dims(idx));
            if let (Some(n), Some(k)) = (xd[a].fixed(), id[a].fixed()) {
                if k > n {
                    // scatter_elements takes no more indices than the data has along the axis
                    return Err(b.unsupported(format!(
                        "the gradient of gathering {k} elements from an axis of {n} (more than the axis holds)"
                    )));
                }
            }
            let zeros = b.zeros_like("zero", x)?;
            let op = Op::ScatterElements { axis: a as i64, reduction: ScatterReduction::Add };
            Ok(vec![Some(b.op("", op, &[zeros, idx, dy])?), None])
        }
        Op::Tile { repeats } => {
            // y is [r0 * d0, r1 * d1, ...] with the copy index outer: as [r0, d0, r1, d1, ...],
            // summed over the copies
            let xd = b.fixed_dims(x, "the gradient of a tile")?;
            let split: Vec<i64> = xd.iter().zip(repeats).flat_map(|(&d, &r)| [r as i64, d as i64]).collect();
            let v = b.op("copies", Op::Reshape { shape: split }, &[dy])?;
            let axes: Vec<usize> = (0..xd.len()).map(|i| 2 * i).collect();
            if axes.is_empty() {
                return Ok(vec![Some(dy)]);
            }
            Ok(vec![Some(b.reduce_sum("", v, &axes, false)?)])
        }
        Op::Expand { .. } | Op::ExpandDyn { .. } => Ok(vec![Some(b.unbroadcast("", dy, x)?)]),
        Op::Pad { mode: PadMode::Constant, pads, computed, .. } if computed.is_empty() => {
            let neg = pads.iter().map(|&p| -p).collect();
            let p = Op::Pad { mode: PadMode::Constant, pads: neg, computed: vec![], value: 0.0 };
            Ok(vec![Some(b.op("", p, &[dy])?)])
        }
        Op::Pad { mode, .. } => Err(b.unsupported(format!(
            "no gradient for {} padding or pads computed at run time (constant padding only)",
            match mode {
                PadMode::Constant => "constant",
                PadMode::Reflect => "reflect",
                PadMode::Edge => "edge",
                PadMode::Wrap => "wrap",
            }
        ))),
        _ => Ok(vec![]),
    }
}

/// The adjoint of slicing axis `a` of a value of dims `before` (`start..end` by `step`): `g`
/// placed back at the positions it came from, zeros elsewhere.
#[allow(clippy::too_many_arguments)]
fn unslice(
    b: &mut Builder,
    g: Value,
    before: &[Dim],
    a: usize,
    start: i64,
    end: i64,
    step: i64,
    k: usize,
) -> Result<Value, AutodiffError> {
    let r = before.len();
    match before[a].fixed() {
        Some(n) if step == 1 => {
            let (s, e) = slice_bounds(n, start, end, step).map_err(|e| b.unsupported(String::from(e)))?;
            let len = (e - s).max(0);
            let mut pads = vec![0i64; 2 * r];
            pads[a] = s;
            pads[r + a] = n as i64 - s - len;
            b.op(&format!("axis{k}"), Op::Pad { mode: PadMode::Constant, pads, computed: vec![], value: 0.0 }, &[g])
        }
        Some(n) => {
            let (s, _) = slice_bounds(n, start, end, step).map_err(|e| b.unsupported(String::from(e)))?;
            let gd = b.fixed_dims(g, "the gradient of a strided slice")?;
            let target: Vec<usize> = before
                .iter()
                .map(|d| d.fixed())
                .collect::<Option<_>>()
                .ok_or_else(|| b.unsupported("the gradient of a strided slice needs fixed dims"))?;
            let len = gd[a];
            let positions: Vec<i64> = (0..len as i64).map(|j| s + j * step).collect();
            let mut idims = vec![1usize; r];
            idims[a] = len;
            let total: usize = gd.iter().product();
            // each element's position along the axis, laid out as `g`
            let stride_in: usize = gd[a + 1..].iter().product();
            let idx: Vec<i64> = (0..total).map(|i| positions[(i / stride_in.max(1)) % len.max(1)]).collect();
            let idx = b.tensor(&format!("axis{k}.indices"), Tensor::from_i64(gd.clone(), idx));
            let dt = b.dtype(g);
            let zeros = b.constant(&format!("axis{k}.zero"), dt, target.clone(), vec![0.0; target.iter().product()]);
            let op = Op::ScatterElements { axis: a as i64, reduction: ScatterReduction::Add };
            b.op(&format!("axis{k}"), op, &[zeros, idx, g])
        }
        None if step == 1 && start >= 0 && end >= i64::MAX / 2 => {
            let mut pads = vec![0i64; 2 * r];
            pads[a] = start;
            b.op(&format!("axis{k}"), Op::Pad { mode: PadMode::Constant, pads, computed: vec![], value: 0.0 }, &[g])
        }
        None => Err(b.unsupported(format!(
            "the gradient of a slice of a symbolic size ({}) needs a fixed size, or a slice to the end",
            before[a]
        ))),
    }
}

/// The adjoint of `gather(x, idx, axis a)`: `dy` scatter-added (`scatter_nd`, reduction add)
/// into zeros of `x`'s shape with the gathered axis moved first, then moved back.
fn gather(b: &mut Builder, x: Value, idx: Value, dy: Value, a: usize) -> Result<Value, AutodiffError> {
    let r = b.rank(x);
    let ir = b.rank(idx);
    // the indices as [k, 1]; dy with the k gathered positions first: [k, x[..a], x[a+1..]]
    let id = b.fixed_dims(idx, "the gradient of a gather")?;
    let k: usize = id.iter().product();
    let idx = if b.dtype(idx) == DType::I64 { idx } else { b.op("indices.i64", Op::Cast { to: DType::I64 }, &[idx])? };
    let col = b.op("indices", Op::Reshape { shape: vec![k as i64, 1] }, &[idx])?;
    // dy is [x[..a], idx dims..., x[a+1..]]: its index axes a..a+ir first, as one
    let mut perm: Vec<usize> = (a..a + ir).collect();
    perm.extend(0..a);
    perm.extend(a + ir..a + ir + (r - a - 1));
    let moved = if perm.iter().enumerate().all(|(i, &p)| i == p) {
        dy
    } else {
        b.op("dy.moved", Op::Transpose { perm }, &[dy])?
    };
    let md = b.dims(moved);
    let mut flat: Vec<i64> = vec![k as i64];
    for d in &md[ir..] {
        flat.push(match d.fixed() {
            Some(n) => n as i64,
            None if md.len() - ir == 1 || flat.iter().all(|&v| v != -1) => -1,
            None => return Err(b.unsupported("the gradient of a gather needs at most one symbolic dim")),
        });
    }
    let updates = if ir == 1 { moved } else { b.op("dy.flat", Op::Reshape { shape: flat }, &[moved])? };
    // zeros of x with axis a first
    let mut to_front: Vec<usize> = vec![a];
    to_front.extend(0..a);
    to_front.extend(a + 1..r);
    let zeros = b.zeros_like("zero", x)?;
    let zeros = if a == 0 { zeros } else { b.op("zero.moved", Op::Transpose { perm: to_front.clone() }, &[zeros])? };
    let op = Op::ScatterND { reduction: ScatterReduction::Add };
    let g = b.op(if a == 0 { "" } else { "moved" }, op, &[zeros, col, updates])?;
    if a == 0 {
        return Ok(g);
    }
    let mut back = vec![0; r];
    for (i, &p) in to_front.iter().enumerate() {
        back[p] = i;
    }
    b.op("", Op::Transpose { perm: back }, &[g])
}
