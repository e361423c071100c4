//! Resize (ONNX Resize-19, and the older forms the importer maps onto it: Resize-10/11/13/18 and
//! Upsample-9), and GridSample (at the end of the file).
//!
//! The computation is the ONNX reference implementation's (`onnx/reference/ops/op_resize.py`):
//! separable, one axis at a time in increasing axis order, in f64 throughout; the result is
//! rounded once to the storage type (integers round half to even and saturate, as the reference's
//! `saturate_cast`). Along one axis of input width `n` resized by `scale` to `m` outputs, output
//! `y` maps to the input coordinate `x` of the coordinate transformation, then
//! * nearest: `x` itself when it is an integer, else `floor(x)` or `floor(x) + 1` by the nearest
//!   mode (on the fraction `x - floor(x)`);
//! * linear: taps `floor(x), floor(x) + 1` weighted `1 - r, r` (`r` the fraction);
//! * cubic: four taps `floor(x) - 1 ..= floor(x) + 2` with Keys' kernel of parameter `a`;
//! * antialias (linear and cubic, downscaling): the kernel stretched by `1 / scale`, with as many
//!   taps as it covers, weights normalized to sum 1;
//!
//! taps outside `0..n` read the edge (or, with `exclude_outside`, get weight 0 and the rest is
//! renormalized). An axis whose scale is 1 (to 1e-9), whose size does not change and whose region
//! of interest is the whole axis is left as it is, as the reference does. Under
//! `tf_crop_and_resize`, an output whose coordinate falls outside `[0, n - 1]` is the
//! extrapolation value.

use super::{floats, numel, Cx, R};
use crate::infer::resize_scales;
use crate::{CoordMode, GridPadding, NearestMode, ResizeAttrs, ResizeMode, Tensor};

/// The taps of one output position along one axis: input indices (in range) and weights, or the
/// extrapolation value.
#[derive(Clone, Debug, PartialEq)]
pub enum Taps {
    /// Input indices and weights, summed in f64 from 0 in this order.
    Weighted(Vec<(usize, f64)>),
    /// Nearest: one input index, copied (no multiplication, so infinities stay infinite).
    Pick(Option<usize>),
    Extrapolate,
}

/// The input coordinate of output `y` (the reference's `_compute_x_ori`) and whether it is
/// extrapolated (`tf_crop_and_resize` only).
fn source_coord(coord: CoordMode, y: f64, scale: f64, n: usize, m: usize, roi: (f64, f64)) -> (f64, bool) {
    let nf = n as f64;
    let out_w = scale * nf;
    match coord {
        CoordMode::AlignCorners => (if out_w == 1.0 { 0.0 } else { y * (nf - 1.0) / (out_w - 1.0) }, false),
        CoordMode::Asymmetric => (y / scale, false),
        CoordMode::TfCropAndResize => {
            let (r0, r1) = roi;
            let x =
                if out_w == 1.0 { (r1 - r0) * (nf - 1.0) / 2.0 } else { y * (r1 - r0) * (nf - 1.0) / (out_w - 1.0) };
            let x = x + r0 * (nf - 1.0);
            (x, x < 0.0 || x > nf - 1.0)
        }
        CoordMode::PytorchHalfPixel => (if out_w == 1.0 { -0.5 } else { (y + 0.5) / scale - 0.5 }, false),
        CoordMode::HalfPixel => ((y + 0.5) / scale - 0.5, false),
        CoordMode::HalfPixelSymmetric => {
            let adjustment = m as f64 / out_w;
            let center = nf / 2.0;
            let offset = center * (1.0 - adjustment);
            (offset + (y + 0.5) / scale - 0.5, false)
        }
    }
}

/// Keys' cubic convolution kernel with parameter `a` at distance `x`.
fn cubic_kernel(x: f64, a: f64) -> f64 {
    let x = x.abs();
    let (x2, x3) = (x * x, x * x * x);
    if x <= 1.0 {
        (a + 2.0) * x3 - (a + 3.0) * x2 + 1.0
    } else if x < 2.0 {
        a * x3 - 5.0 * a * x2 + 8.0 * a * x - 4.0 * a
    } else {
        0.0
    }
}

/// The weights of the taps for fraction `ratio` in `(0, 1]` (the reference's `_*_coeffs`).
fn coeffs(a: &ResizeAttrs, ratio: f64, scale: f64) -> Vec<f64> {
    let ca = a.cubic_a as f64;
    match (a.mode, a.antialias) {
        (ResizeMode::Linear, false) | (ResizeMode::Nearest, _) => vec![1.0 - ratio, ratio],
        (ResizeMode::Cubic, false) => {
            let r = ratio;
            vec![
                ((ca * (r + 1.0) - 5.0 * ca) * (r + 1.0) + 8.0 * ca) * (r + 1.0) - 4.0 * ca,
                ((ca + 2.0) * r - (ca + 3.0)) * r * r + 1.0,
                ((ca + 2.0) * (1.0 - r) - (ca + 3.0)) * (1.0 - r) * (1.0 - r) + 1.0,
                ((ca * ((1.0 - r) + 1.0) - 5.0 * ca) * ((1.0 - r) + 1.0) + 8.0 * ca) * ((1.0 - r) + 1.0) - 4.0 * ca,
            ]
        }
        (ResizeMode::Linear, true) => {
            let s = scale.min(1.0);
            let start = (-1.0 / s).floor() as i64 + 1;
            let n = 2 - 2 * start;
            let c: Vec<f64> =
                (start..start + n).map(|i| (1.0 - ((i as f64 - ratio) * s).abs()).clamp(0.0, 1.0)).collect();
            normalized(c)
        }
        (ResizeMode::Cubic, true) => {
            let s = scale.min(1.0);
            let start = (-2.0 / s).floor() as i64 + 1;
            let end = 2 - start;
            let c: Vec<f64> = (start..end).map(|i| cubic_kernel(s * (i as f64 - ratio), ca)).collect();
            normalized(c)
        }
    }
}

fn normalized(mut c: Vec<f64>) -> Vec<f64> {
    let sum: f64 = c.iter().sum();
    for v in &mut c {
        *v /= sum;
    }
    c
}

/// The taps of every output position along one axis of input width `n` resized to `m`.
fn axis_taps(a: &ResizeAttrs, n: usize, m: usize, scale: f64, roi: (f64, f64)) -> R<Vec<Taps>> {
    if n == 0 && m > 0 {
        return Err("cannot resize an empty axis to a non-empty one".into());
    }
    let last = n as i64 - 1;
    let mut out = Vec::with_capacity(m);
    for y in 0..m {
        let (x, extrapolated) = source_coord(a.coord, y as f64, scale, n, m, roi);
        if extrapolated {
            out.push(Taps::Extrapolate);
            continue;
        }
        if !x.is_finite() {
            return Err(format!("resize maps output {y} to the input coordinate {x}"));
        }
        let fl = x.floor();
        let xi = fl as i64;
        // The reference prefers the pixel left of x: an integer x has ratio 1, not 0.
        let integer = x == fl;
        let ratio = if integer { 1.0 } else { x - fl };
        if a.mode == ResizeMode::Nearest {
            let pick = if integer {
                xi
            } else {
                let up = match a.nearest {
                    NearestMode::RoundPreferFloor => ratio > 0.5,
                    NearestMode::RoundPreferCeil => ratio >= 0.5,
                    NearestMode::Floor => false,
                    NearestMode::Ceil => true,
                };
                xi + up as i64
            };
            let inside = (0..=last).contains(&pick);
            out.push(Taps::Pick(if a.exclude_outside && !inside { None } else { Some(pick.clamp(0, last) as usize) }));
            continue;
        }
        let mut c = coeffs(a, ratio, scale);
        let k = c.len() as i64;
        // The k taps nearest to x, ties to the smaller index (k is even).
        let first = if integer { xi - k / 2 } else { xi - k / 2 + 1 };
        if a.exclude_outside {
            for (j, w) in c.iter_mut().enumerate() {
                if !(0..=last).contains(&(first + j as i64)) {
                    *w = 0.0;
                }
            }
            let sum: f64 = c.iter().sum();
            let sum = if sum == 0.0 { 1.0 } else { sum };
            for w in &mut c {
                *w /= sum;
            }
        }
        out.push(Taps::Weighted(
            c.into_iter().enumerate().map(|(j, w)| ((first + j as i64).clamp(0, last) as usize, w)).collect(),
        ));
    }
    Ok(out)
}

/// Resizes axis `axis` of `data` (shape `shape`) through `taps` (one per output position).
fn resize_axis(a: &ResizeAttrs, data: &[f64], shape: &[usize], axis: usize, taps: &[Taps]) -> R<Vec<f64>> {
    let n = shape[axis];
    let m = taps.len();
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let total = outer.checked_mul(m).and_then(|v| v.checked_mul(inner)).ok_or("result too large")?;
    let mut out = Vec::with_capacity(total);
    let extrapolation = a.extrapolation as f64;
    for o in 0..outer {
        let base = o * n * inner;
        for t in taps {
            for i in 0..inner {
                out.push(match t {
                    Taps::Extrapolate => extrapolation,
                    Taps::Pick(None) => 0.0,
                    Taps::Pick(Some(j)) => data[base + j * inner + i],
                    Taps::Weighted(ws) => {
                        let mut acc = 0.0;
                        for &(j, w) in ws {
                            acc += w * data[base + j * inner + i];
                        }
                        acc
                    }
                });
            }
        }
    }
    Ok(out)
}

/// The taps of every axis of a resize of `in_shape` (`None`: the axis is left as it is), with
/// the result's sizes. [`resize`] applies them one axis at a time in increasing axis order; the
/// JIT's resize kernel computes each output from the same taps in the same order, so the two
/// agree bit for bit.
#[allow(clippy::type_complexity)]
pub fn resize_plan(a: &ResizeAttrs, in_shape: &[usize]) -> R<(Vec<Option<Vec<Taps>>>, Vec<usize>)> {
    let r = in_shape.len();
    let (scales, sizes) = resize_scales(a, in_shape)?;
    let mut plan = Vec::with_capacity(r);
    for axis in 0..r {
        let roi = if a.roi.len() == 2 * r { (a.roi[axis] as f64, a.roi[r + axis] as f64) } else { (0.0, 1.0) };
        let close = |v: f64, to: f64| (v - to).abs() <= 1e-9 * v.abs().max(to.abs());
        let whole = a.roi.len() != 2 * r || (roi.0 == 0.0 && close(roi.1, 1.0));
        if close(scales[axis], 1.0) && sizes[axis] == in_shape[axis] && whole {
            plan.push(None);
            continue;
        }
        plan.push(Some(axis_taps(a, in_shape[axis], sizes[axis], scales[axis], roi)?));
    }
    Ok((plan, sizes))
}

pub(crate) fn resize(cx: &Cx, a: &ResizeAttrs) -> R<Tensor> {
    let x = cx.x(0)?;
    let in_shape = x.shape().to_vec();
    let (plan, sizes) = resize_plan(a, &in_shape)?;
    let out_shape = cx.out_shape(0);
    if sizes != out_shape {
        return Err(format!("internal: resize sizes {sizes:?} differ from the inferred {out_shape:?}"));
    }
    let mut shape = in_shape.clone();
    let mut data = x.to_f64_vec();
    for (axis, taps) in plan.iter().enumerate() {
        let Some(taps) = taps else { continue };
        data = resize_axis(a, &data, &shape, axis, taps)?;
        shape[axis] = sizes[axis];
    }
    Ok(Tensor::from_f64_iter(x.dtype(), shape, data.into_iter()))
}

/// ONNX GridSample-22 (2-D and 3-D), as the ONNX reference computes it
/// (`onnx/reference/ops/op_grid_sample.py`): output point `p` of sample `n` reads the grid's
/// normalized coordinates (last axis, `x` first, so reversed to the input's axis order), each
/// mapped to an input position by `((v + 1) * size - 1) / 2`, or `(v + 1) / 2 * (size - 1)` with
/// `align_corners` (in f32, as the reference). Nearest rounds that half to even. A position
/// outside the border (`[-0.5, size - 0.5]`, or `[0, size - 1]` with `align_corners`) is clamped
/// to `[0, size - 1]` (`border`) or reflected at the border until inside (`reflection`) before
/// interpolating. Taps: nearest one (the position truncated), linear two (`floor`, `floor + 1`;
/// weights `1 - t, t`), cubic four (`floor - 1 ..= floor + 2`, Keys' kernel with `a = -0.75`);
/// the tensor product over the spatial axes, summed in f64. A tap outside the input reads 0
/// (`zeros`), the nearest edge (`border`) or its reflection (`reflection`).
pub(crate) fn grid_sample(cx: &Cx, mode: ResizeMode, padding: GridPadding, align: bool) -> R<Tensor> {
    let (x, g) = (cx.x(0)?, cx.x(1)?);
    let (xs, gs) = (x.shape(), g.shape());
    let (batch, channels, dims) = (xs[0], xs[1], &xs[2..]);
    let k = dims.len();
    let (xv, gv) = (floats(x), floats(g));
    let points = numel(&gs[1..gs.len() - 1]).ok_or("grid too large")?;
    let plane = numel(dims).ok_or("input too large")?;
    let st = super::strides(dims);
    let border: Vec<(f64, f64)> =
        dims.iter().map(|&d| if align { (0.0, d as f64 - 1.0) } else { (-0.5, d as f64 - 0.5) }).collect();
    let shape = cx.out_shape(0);
    let total = numel(&shape).ok_or("result too large")?;
    let mut out = crate::limits::try_vec(total)?;
    out.resize(total, 0f32);
    // The input index a tap reads along axis `i`, or `None` for a zero (outside, `zeros` padding).
    let tap_index = |i: usize, t: i64| -> Option<usize> {
        let d = dims[i] as i64;
        match padding {
            GridPadding::Zeros => (0..d).contains(&t).then_some(t as usize),
            GridPadding::Border => Some(t.clamp(0, d - 1) as usize),
            GridPadding::Reflection => {
                Some((reflect(t as f64, border[i].0, border[i].1) as i64).clamp(0, d - 1) as usize)
            }
        }
    };
    let mut taps: Vec<Vec<(Option<usize>, f64)>> = vec![vec![]; k];
    for n in 0..batch {
        for p in 0..points {
            let coords = &gv[(n * points + p) * k..][..k];
            for i in 0..k {
                let v = coords[k - 1 - i];
                let size = dims[i] as f32;
                let mut pos =
                    if align { (v + 1.0) / 2.0 * (size - 1.0) } else { ((v + 1.0) * size - 1.0) / 2.0 } as f64;
                if mode == ResizeMode::Nearest {
                    pos = pos.round_ties_even();
                }
                let (lo, hi) = border[i];
                if pos < lo || pos > hi {
                    match padding {
                        GridPadding::Border => pos = pos.clamp(0.0, dims[i] as f64 - 1.0),
                        GridPadding::Reflection => pos = reflect(pos, lo, hi),
                        GridPadding::Zeros => {}
                    }
                }
                let f = pos.floor();
                let (base, t) = (f as i64, pos - f);
                taps[i].clear();
                match mode {
                    ResizeMode::Nearest => taps[i].push((tap_index(i, pos as i64), 1.0)),
                    ResizeMode::Linear => {
                        taps[i].push((tap_index(i, base), 1.0 - t));
                        taps[i].push((tap_index(i, base.saturating_add(1)), t));
                    }
                    ResizeMode::Cubic => {
                        for (j, w) in cubic_coeffs(t).into_iter().enumerate() {
                            taps[i].push((tap_index(i, base.saturating_add(j as i64 - 1)), w));
                        }
                    }
                }
            }
            // Every combination of one tap per axis: (offset in the plane, weight).
            let mut combos: Vec<(usize, f64)> = vec![(0, 1.0)];
            for (i, ti) in taps.iter().enumerate() {
                let mut next = Vec::with_capacity(combos.len() * ti.len());
                for &(o, w) in &combos {
                    for &(t, tw) in ti {
                        if let Some(t) = t {
                            next.push((o + t * st[i], w * tw));
                        }
                    }
                }
                combos = next;
            }
            for c in 0..channels {
                let src = &xv[(n * channels + c) * plane..][..plane];
                let v: f64 = combos.iter().map(|&(o, w)| w * src[o] as f64).sum();
                out[(n * channels + c) * points + p] = v as f32;
            }
        }
    }
    super::float_tensor(x.dtype(), shape, out)
}

/// Reflects `x` at the borders `lo`, `hi` until it lies between them (the ONNX reference's
/// `_gs_reflect`); a border of no width gives `lo`.
fn reflect(x: f64, lo: f64, hi: f64) -> f64 {
    let range = hi - lo;
    if range <= 0.0 || !x.is_finite() {
        return lo;
    }
    let fold = |dx: f64| {
        let n = (dx / range).trunc();
        (n, dx - n * range)
    };
    if x < lo {
        let (n, r) = fold(lo - x);
        if n % 2.0 == 0.0 {
            lo + r
        } else {
            hi - r
        }
    } else if x > hi {
        let (n, r) = fold(x - hi);
        if n % 2.0 == 0.0 {
            hi - r
        } else {
            lo + r
        }
    } else {
        x
    }
}

/// Keys' cubic convolution weights (`a = -0.75`) of the taps at `-1, 0, 1, 2` from `floor(x)`,
/// for the fraction `t` (the ONNX reference's `_gs_get_cubic_coeffs`).
fn cubic_coeffs(t: f64) -> [f64; 4] {
    let a = -0.75;
    let t = t.abs();
    let far = |d: f64| ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a;
    let near = |d: f64| ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}
