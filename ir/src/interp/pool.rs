//! Pooling: max (any dtype), average (float), global average and global max.
//!
//! Windows follow ONNX: window `o` along a dim starts at `o * stride - pad_begin` and visits
//! `kernel` positions `dilation` apart; positions outside the input are skipped. The output shape
//! (including `ceil_mode`) comes from [`crate::infer::pool_shape`].
//!
//! Average pooling divides the f32 sum (plain order) by the number of visited positions that lie
//! in the input (`count_include_pad = false`) or in the padded input `[-pad_begin, n + pad_end)`
//! (`count_include_pad = true`; positions past the padded end, which `ceil_mode` can create, never
//! count). This is what ONNX Runtime's CPU kernel computes. A window with nothing to count gives
//! NaN (0/0). Max pooling over a window that holds no input element gives the dtype's lowest value.

use super::{float_tensor, floats, int_tensor, Cx, R};
use crate::{DType, PoolAttrs, Tensor, TensorData};

/// Pooling geometry with up to three spatial dims in (d, h, w) order.
pub(crate) struct PoolGeom {
    /// N * C: the number of independent planes.
    pub planes: usize,
    pub input: [usize; 3],
    pub output: [usize; 3],
    pub kernel: [usize; 3],
    pub strides: [usize; 3],
    pub pads: [usize; 3],
    pub pads_end: [usize; 3],
    pub dilations: [usize; 3],
}

impl PoolGeom {
    pub fn new(p: &PoolAttrs, x: &[usize], y: &[usize]) -> R<PoolGeom> {
        let r = x.len();
        if r < 3 || y.len() != r {
            return Err(format!("pooling needs rank 3 or more, got {x:?}"));
        }
        let sp = r - 2;
        if sp > 3 {
            return Err(format!("{sp}-D pooling is not supported (at most 3 spatial dims)"));
        }
        if p.kernel.len() != sp || p.strides.len() != sp || p.dilations.len() != sp || p.pads.len() != 2 * sp {
            return Err("pool attributes do not fit the spatial rank".into());
        }
        let pad3 = |v: &[usize], fill: usize| -> [usize; 3] {
            let mut o = [fill; 3];
            o[3 - v.len()..].copy_from_slice(v);
            o
        };
        let g = PoolGeom {
            planes: x[0].checked_mul(x[1]).ok_or("too many planes")?,
            input: pad3(&x[2..], 1),
            output: pad3(&y[2..], 1),
            kernel: pad3(&p.kernel, 1),
            strides: pad3(&p.strides, 1),
            pads: pad3(&p.pads[..sp], 0),
            pads_end: pad3(&p.pads[sp..], 0),
            dilations: pad3(&p.dilations, 1),
        };
        if g.strides.contains(&0) || g.dilations.contains(&0) {
            return Err("strides and dilations must be positive".into());
        }
        Ok(g)
    }

    fn in_plane(&self) -> usize {
        self.input.iter().product()
    }
    fn out_plane(&self) -> usize {
        self.output.iter().product()
    }

    /// For output position `o` along axis `a`: the input indices its window visits that lie in
    /// the input, and how many of its positions lie in the padded input.
    fn window(&self, a: usize, o: usize) -> (Vec<usize>, usize) {
        let start = (o * self.strides[a]) as isize - self.pads[a] as isize;
        let n = self.input[a] as isize;
        let mut valid = Vec::with_capacity(self.kernel[a]);
        let mut padded = 0;
        for k in 0..self.kernel[a] {
            let i = start + (k * self.dilations[a]) as isize;
            if i >= 0 && i < n {
                valid.push(i as usize);
            }
            if i >= -(self.pads[a] as isize) && i < n + self.pads_end[a] as isize {
                padded += 1;
            }
        }
        (valid, padded)
    }

    /// Calls `f(out_index_in_plane, in_offsets_in_plane, padded_count)` for every output position.
    fn for_each_window(&self, mut f: impl FnMut(usize, &[usize], usize)) {
        let [od, oh, ow] = self.output;
        let [_, ih, iw] = self.input;
        let wd: Vec<_> = (0..od).map(|o| self.window(0, o)).collect();
        let wh: Vec<_> = (0..oh).map(|o| self.window(1, o)).collect();
        let ww: Vec<_> = (0..ow).map(|o| self.window(2, o)).collect();
        let mut offs = Vec::new();
        for (z, (vz, pz)) in wd.iter().enumerate() {
            for (y, (vy, py)) in wh.iter().enumerate() {
                for (x, (vx, px)) in ww.iter().enumerate() {
                    offs.clear();
                    for &iz in vz {
                        for &iy in vy {
                            for &ix in vx {
                                offs.push((iz * ih + iy) * iw + ix);
                            }
                        }
                    }
                    f((z * oh + y) * ow + x, &offs, pz * py * px);
                }
            }
        }
    }
}

/// The lowest value of a float storage type, as f32.
fn float_lowest(d: DType) -> f32 {
    match d {
        DType::F16 => half::f16::MIN.to_f32(),
        DType::BF16 => half::bf16::MIN.to_f32(),
        _ => f32::MIN,
    }
}

/// Max pooling on any dtype (quantized tensors keep their parameters: max commutes with the
/// monotone dequantization).
pub(crate) fn max_pool(cx: &Cx, p: &PoolAttrs) -> R<Tensor> {
    let x = cx.x(0)?;
    let y_shape = cx.out_shape(0);
    let g = PoolGeom::new(p, x.shape(), &y_shape)?;
    let (ip, op) = (g.in_plane(), g.out_plane());
    if x.dtype().is_float() {
        let xv = floats(x);
        let lowest = float_lowest(x.dtype());
        let mut y = vec![lowest; g.planes * op];
        for c in 0..g.planes {
            let xp = &xv[c * ip..][..ip];
            let yp = &mut y[c * op..][..op];
            g.for_each_window(|o, offs, _| {
                let mut m = lowest;
                for &i in offs {
                    if xp[i] > m {
                        m = xp[i];
                    }
                }
                yp[o] = m;
            });
        }
        float_tensor(x.dtype(), y_shape, y)
    } else {
        let xv = x.to_i64_vec().ok_or("max pooling needs a numeric tensor")?;
        let lowest = x.dtype().int_range().map_or(i64::MIN, |r| r.0);
        let mut y = vec![lowest; g.planes * op];
        for c in 0..g.planes {
            let xp = &xv[c * ip..][..ip];
            let yp = &mut y[c * op..][..op];
            g.for_each_window(|o, offs, _| {
                yp[o] = offs.iter().map(|&i| xp[i]).max().unwrap_or(lowest);
            });
        }
        int_tensor(x.dtype(), y_shape, &y)
    }
}

/// The index of the element each max-pooling window takes, as the ONNX reference's
/// `_max_pool_2d` (and 1-D, 3-D) computes it: the first element of the window larger than every
/// element before it (the window's first valid element to start), as a flat index into the
/// input: `plane * plane_size + spatial offset`, the offset row-major, or for `column_major`
/// (2-D `storage_order=1`) `h + w * height`.
pub(crate) fn max_pool_indices(cx: &Cx, p: &PoolAttrs, column_major: bool) -> R<Tensor> {
    let x = cx.x(0)?;
    let y_shape = cx.out_shape(0);
    let g = PoolGeom::new(p, x.shape(), &y_shape)?;
    let (ip, op) = (g.in_plane(), g.out_plane());
    let xv: Vec<f64> = x.to_f64_vec();
    let [_, ih, iw] = g.input;
    let mut y = vec![0i64; g.planes * op];
    for c in 0..g.planes {
        let xp = &xv[c * ip..][..ip];
        let yp = &mut y[c * op..][..op];
        g.for_each_window(|o, offs, _| {
            let mut best: Option<usize> = None;
            for &i in offs {
                if best.is_none_or(|b| xp[i] > xp[b]) {
                    best = Some(i);
                }
            }
            // an empty window (all padding) takes no element; the reference leaves its -1 there
            yp[o] = match best {
                None => -1,
                Some(i) if column_major => {
                    let (h, w) = ((i / iw) % ih, i % iw);
                    (c * ip + h + w * ih) as i64
                }
                Some(i) => (c * ip + i) as i64,
            };
        });
    }
    int_tensor(DType::I64, y_shape, &y)
}

/// The gradient of max pooling with respect to its input ([`crate::Op::MaxPoolGrad`]): `x, dy`
/// -> `dx`, each window's `dy` added (in f32, windows in row-major order) to the element
/// [`max_pool`] takes from it: the first element larger than every one before it, as
/// [`max_pool_indices`] picks; rounded once to the dtype.
pub(crate) fn max_pool_grad(cx: &Cx, p: &PoolAttrs) -> R<Tensor> {
    let (x, dy) = (cx.x(0)?, cx.x(1)?);
    let g = PoolGeom::new(p, x.shape(), dy.shape())?;
    let (ip, op) = (g.in_plane(), g.out_plane());
    let (xv, dv) = (floats(x), floats(dy));
    if xv.len() != g.planes * ip || dv.len() != g.planes * op {
        return Err("internal: max_pool_grad operand sizes do not match the geometry".into());
    }
    let mut dx = vec![0f32; xv.len()];
    for c in 0..g.planes {
        let xp = &xv[c * ip..][..ip];
        let dp = &dv[c * op..][..op];
        let gp = &mut dx[c * ip..][..ip];
        g.for_each_window(|o, offs, _| {
            let mut best: Option<usize> = None;
            for &i in offs {
                if best.is_none_or(|b| xp[i] > xp[b]) {
                    best = Some(i);
                }
            }
            if let Some(i) = best {
                gp[i] += dp[o];
            }
        });
    }
    float_tensor(x.dtype(), x.shape().to_vec(), dx)
}

/// The gradient of average pooling with respect to its input ([`crate::Op::AveragePoolGrad`]):
/// `x, dy` -> `dx` (`x` read for its shape), each window's `dy / count` added (in f32, windows in
/// row-major order) to every input element the window visits, `count` the divisor
/// [`average_pool`] uses; rounded once to the dtype.
pub(crate) fn average_pool_grad(cx: &Cx, p: &PoolAttrs) -> R<Tensor> {
    let (x, dy) = (cx.x(0)?, cx.x(1)?);
    let g = PoolGeom::new(p, x.shape(), dy.shape())?;
    let (ip, op) = (g.in_plane(), g.out_plane());
    let dv = floats(dy);
    if dv.len() != g.planes * op {
        return Err("internal: average_pool_grad operand sizes do not match the geometry".into());
    }
    let n = super::numel(x.shape()).ok_or("input too large")?;
    let mut dx = vec![0f32; n];
    for c in 0..g.planes {
        let dp = &dv[c * op..][..op];
        let gp = &mut dx[c * ip..][..ip];
        g.for_each_window(|o, offs, padded| {
            let count = if p.count_include_pad { padded } else { offs.len() };
            let share = dp[o] / count as f32;
            for &i in offs {
                gp[i] += share;
            }
        });
    }
    float_tensor(x.dtype(), x.shape().to_vec(), dx)
}

/// Average pooling on float tensors.
pub(crate) fn average_pool(cx: &Cx, p: &PoolAttrs) -> R<Tensor> {
    let x = cx.x(0)?;
    let y_shape = cx.out_shape(0);
    let g = PoolGeom::new(p, x.shape(), &y_shape)?;
    let div = if p.count_include_pad { Divisor::Padded } else { Divisor::Valid };
    let y = average_pool_f32(&floats(x), &g, div);
    float_tensor(x.dtype(), y_shape, y)
}

/// What an average divides by.
#[derive(Clone, Copy)]
pub(crate) enum Divisor {
    /// The window positions inside the input (`count_include_pad = false`).
    Valid,
    /// The window positions inside the padded input (ONNX `count_include_pad = true`).
    Padded,
    /// The kernel size (ONNX Runtime's QLinearAveragePool with `count_include_pad`).
    Kernel,
}

/// The average-pooling loop on f32 planes (shared with [`super::quant`]).
pub(crate) fn average_pool_f32(xv: &[f32], g: &PoolGeom, div: Divisor) -> Vec<f32> {
    let ksize: usize = g.kernel.iter().product();
    let (ip, op) = (g.in_plane(), g.out_plane());
    let mut y = vec![0f32; g.planes * op];
    for c in 0..g.planes {
        let xp = &xv[c * ip..][..ip];
        let yp = &mut y[c * op..][..op];
        g.for_each_window(|o, offs, padded| {
            let mut s = 0f32;
            for &i in offs {
                s += xp[i];
            }
            let count = match div {
                Divisor::Valid => offs.len(),
                Divisor::Padded => padded,
                Divisor::Kernel => ksize,
            };
            yp[o] = s / count as f32;
        });
    }
    y
}

/// The (planes, plane size) view of an (N, C, spatial...) tensor.
pub(crate) fn planes(shape: &[usize]) -> R<(usize, usize)> {
    if shape.len() < 3 {
        return Err(format!("global pooling needs rank 3 or more, got {shape:?}"));
    }
    let planes = shape[0].checked_mul(shape[1]).ok_or("too many planes")?;
    let size = super::numel(&shape[2..]).ok_or("plane too large")?;
    Ok((planes, size))
}

/// Mean over the spatial dims, f32 accumulation in plain order.
pub(crate) fn global_average_pool(cx: &Cx) -> R<Tensor> {
    let x = cx.x(0)?;
    let (np, size) = planes(x.shape())?;
    let xv = floats(x);
    let y: Vec<f32> = (0..np)
        .map(|c| {
            let mut s = 0f32;
            for &v in &xv[c * size..][..size] {
                s += v;
            }
            s / size as f32
        })
        .collect();
    float_tensor(x.dtype(), cx.out_shape(0), y)
}

/// Max over the spatial dims, any dtype.
pub(crate) fn global_max_pool(cx: &Cx) -> R<Tensor> {
    let x = cx.x(0)?;
    let (np, size) = planes(x.shape())?;
    let y_shape = cx.out_shape(0);
    if x.dtype().is_float() {
        let xv = floats(x);
        let lowest = float_lowest(x.dtype());
        let y =
            (0..np).map(|c| xv[c * size..][..size].iter().fold(lowest, |m, &v| if v > m { v } else { m })).collect();
        float_tensor(x.dtype(), y_shape, y)
    } else {
        let xv = x.to_i64_vec().ok_or("max pooling needs a numeric tensor")?;
        let lowest = x.dtype().int_range().map_or(i64::MIN, |r| r.0);
        let y: Vec<i64> = (0..np).map(|c| xv[c * size..][..size].iter().copied().max().unwrap_or(lowest)).collect();
        match x.data() {
            TensorData::Bool(_) => int_tensor(DType::Bool, y_shape, &y),
            _ => int_tensor(x.dtype(), y_shape, &y),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use crate::{DType, Op, PoolAttrs, QuantParams, Shape, Tensor, TensorType};

    fn attrs(k: usize, s: usize, pads: [usize; 4], ceil: bool, include: bool) -> PoolAttrs {
        PoolAttrs {
            kernel: vec![k, k],
            strides: vec![s, s],
            pads: pads.to_vec(),
            dilations: vec![1, 1],
            ceil_mode: ceil,
            count_include_pad: include,
        }
    }

    fn ones(n: usize) -> Tensor {
        f32t(&[1, 1, n, n], &vec![1.0; n * n])
    }

    #[test]
    fn average_pool_ceil_mode_and_count_include_pad() {
        // 5x5, kernel 2, stride 2, ceil: the last window holds one element and divides by 1.
        let y = eval1(&Op::AveragePool(attrs(2, 2, [0; 4], true, true)), &[&ones(5)]).unwrap();
        assert_eq!(y.shape(), &[1, 1, 3, 3]);
        assert!(y.as_f32().unwrap().iter().all(|&v| v == 1.0));
        // 6x6, kernel 3, stride 2, pads 1, ceil: 4x4; the padded end counts, the overhang does not.
        let y = eval1(&Op::AveragePool(attrs(3, 2, [1; 4], true, true)), &[&ones(6)]).unwrap();
        assert_eq!(y.shape(), &[1, 1, 4, 4]);
        let v = y.as_f32().unwrap();
        assert_close(&v[..4], &[4.0 / 9.0, 6.0 / 9.0, 6.0 / 9.0, 2.0 / 6.0], 1e-7);
        assert_close(&v[12..], &[2.0 / 6.0, 3.0 / 6.0, 3.0 / 6.0, 1.0 / 4.0], 1e-7);
        // without count_include_pad every average of ones is one
        let y = eval1(&Op::AveragePool(attrs(3, 2, [1; 4], true, false)), &[&ones(6)]).unwrap();
        assert!(y.as_f32().unwrap().iter().all(|&v| v == 1.0));
    }

    #[test]
    fn average_pool_values() {
        let x = f32t(&[1, 1, 3, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
        let y = eval1(&Op::AveragePool(attrs(2, 1, [0; 4], false, false)), &[&x]).unwrap();
        assert_eq!(y.as_f32().unwrap(), &[3.0, 4.0, 6.0, 7.0]);
        let y = eval1(&Op::AveragePool(attrs(2, 1, [1, 1, 0, 0], false, false)), &[&x]).unwrap();
        assert_eq!(y.as_f32().unwrap(), &[1.0, 1.5, 2.5, 2.5, 3.0, 4.0, 5.5, 6.0, 7.0]);
    }

    #[test]
    fn max_pool_on_u8_and_i8_keeps_quant_params() {
        let x = u8t(&[1, 1, 2, 4], &[1, 200, 3, 4, 250, 6, 7, 8]);
        let q = QuantParams::per_tensor(0.5, 10);
        let ty = qty(&x, q.clone());
        let op = Op::MaxPool(attrs(2, 2, [0; 4], false, false));
        let y = evalq(&op, &[&x], &[ty], &[]).unwrap().remove(0);
        assert_eq!(y.to_i64_vec().unwrap(), vec![250, 8]);
        let x = i8t(&[1, 1, 2, 2], &[-100, -5, -7, -128]);
        let y = eval1(&Op::MaxPool(attrs(2, 1, [0, 0, 1, 1], false, false)), &[&x]).unwrap();
        // the padded windows on the right and bottom see fewer elements, never a pad value
        assert_eq!(y.to_i64_vec().unwrap(), vec![-5, -5, -7, -128]);
        // the inferred type carries the input's parameters
        let t = crate::infer::infer(
            &op,
            &[Some(&TensorType::quantized(DType::U8, Shape::fixed(&[1, 1, 2, 4]), q.clone()))],
            None,
        )
        .unwrap();
        assert_eq!(t[0].quant, Some(q));
    }

    #[test]
    fn max_pool_float_with_dilation_and_f16() {
        let x = f32t(&[1, 1, 1, 5], &[1.0, 9.0, 2.0, -3.0, 4.0]);
        let mut a = attrs(2, 1, [0; 4], false, false);
        a.kernel = vec![1, 2];
        a.dilations = vec![1, 2];
        let y = eval1(&Op::MaxPool(a), &[&x]).unwrap();
        assert_eq!(y.as_f32().unwrap(), &[2.0, 9.0, 4.0]);
        let x = Tensor::from_f32_slice(DType::F16, vec![1, 1, 2, 2], &[0.5, -1.0, 3.0, 2.0]);
        let y = eval1(&Op::GlobalMaxPool, &[&x]).unwrap();
        assert_eq!((y.dtype(), y.to_f32_vec()), (DType::F16, vec![3.0]));
    }

    /// The pooling gradients are the adjoints of the poolings: `<pool(x), dy> = <x, grad(x, dy)>`
    /// (average pooling is linear; max pooling picks one element per window, the one its
    /// gradient sends `dy` to, ties included).
    #[test]
    fn pooling_gradients_are_adjoints() {
        let x: Vec<f32> = (0..2 * 3 * 7 * 6).map(|i| ((i * 37 % 23) as f32 - 11.0) / 4.0).collect();
        let xt = f32t(&[2, 3, 7, 6], &x);
        for (k, s, pads, ceil, include) in [
            (2, 2, [0, 0, 0, 0], false, false),
            (3, 2, [1, 1, 1, 1], true, true),
            (3, 1, [1, 0, 2, 1], false, true),
            (3, 2, [1, 1, 0, 0], true, false),
        ] {
            let p = attrs(k, s, pads, ceil, include);
            for (fwd, grad) in [
                (Op::MaxPool(p.clone()), Op::MaxPoolGrad(p.clone())),
                (Op::AveragePool(p.clone()), Op::AveragePoolGrad(p.clone())),
            ] {
                let y = eval1(&fwd, &[&xt]).unwrap();
                let dy: Vec<f32> = (0..y.len()).map(|i| ((i * 13 % 7) as f32 - 3.0) / 2.0).collect();
                let dyt = f32t(y.shape(), &dy);
                let dx = eval1(&grad, &[&xt, &dyt]).unwrap();
                assert_eq!(dx.shape(), xt.shape());
                let lhs: f64 = y.as_f32().unwrap().iter().zip(&dy).map(|(&a, &b)| a as f64 * b as f64).sum();
                let rhs: f64 = x.iter().zip(dx.as_f32().unwrap()).map(|(&a, &b)| a as f64 * b as f64).sum();
                assert!((lhs - rhs).abs() <= 1e-4 * lhs.abs().max(1.0), "{}: {lhs} vs {rhs}", fwd.name());
            }
        }
    }

    #[test]
    fn global_average_pool() {
        let x = f32t(&[1, 2, 2, 2], &[1.0, 2.0, 3.0, 4.0, -1.0, -1.0, -1.0, 3.0]);
        let y = eval1(&Op::GlobalAveragePool, &[&x]).unwrap();
        assert_eq!(y.shape(), &[1, 2, 1, 1]);
        assert_eq!(y.as_f32().unwrap(), &[2.5, 0.0]);
    }
}
