//! AffineGrid (opset 20), composed from IR ops as the ONNX reference (`op_affine_grid.py`)
//! computes it: the homogeneous coordinates of every output position, `(x, y, 1)` (2-D) or
//! `(x, y, z, 1)` (3-D), each coordinate spaced over `[-1, 1]` by `align_corners` (`-1 + i * 2 /
//! (n - 1)`, or `-1 + 1 / n + i * 2 / n`; in f64 like numpy's `arange`), are a constant; each
//! output is `theta[n] @ coords` summed in f64 in coordinate order, as the reference's f64
//! `matmul` of the f32 `theta` and its f64 grid, then rounded to theta's type. The size input
//! must be a constant (`qforge run` imports a model again specialized on a size given as a graph
//! input).

use super::{one, Cx, OpDef, Outs, R};
use crate::onnx::tensors::checked_numel;
use qforge_ir::{BinaryOp, DType, Op, Tensor};

pub(super) const OPS: &[OpDef] = &[OpDef::onnx("AffineGrid", &[20], affine_grid)];

fn affine_grid(cx: &mut Cx) -> R<Outs> {
    let align = cx.attrs().bool_or("align_corners", false)?;
    let theta = cx.input(0)?;
    let tt = cx.ty(theta);
    let size = cx.ints_input(1, "size")?;
    // [N, C, H, W] or [N, C, D, H, W]: the spatial sizes, outermost first
    let spatial: Vec<usize> = match size.as_slice() {
        [_, _, rest @ ..] if rest.len() == 2 || rest.len() == 3 => rest
            .iter()
            .map(|&d| usize::try_from(d).ok().filter(|&d| d > 0))
            .collect::<Option<_>>()
            .ok_or_else(|| cx.err(format!("size {size:?} must have positive spatial sizes")))?,
        _ => return Err(cx.err(format!("size {size:?} must be [N, C, H, W] or [N, C, D, H, W]"))),
    };
    let sp = spatial.len();
    let fits = tt.rank() == 3
        && tt.shape.0[1].fixed() == Some(sp)
        && tt.shape.0[2].fixed() == Some(sp + 1)
        && tt.dtype.is_compute_float()
        && tt.quant.is_none();
    if !fits {
        return Err(cx.err(format!("theta must be a float [N, {sp}, {}] for a {sp}-D size, got {tt}", sp + 1)));
    }
    let dims: Vec<i64> = spatial.iter().map(|&d| d as i64).chain([1, sp as i64 + 1]).collect();
    let (shape, n) = checked_numel(&dims, DType::F64, cx.im.max_tensor_bytes).map_err(|m| cx.err(m))?;
    cx.im.charge(n as u128 * 8).map_err(|m| cx.err(m))?;
    let axis_values = |d: usize| -> Vec<f64> {
        (0..d)
            .map(|i| {
                let i = i as f64;
                let n = d as f64;
                match (align, d) {
                    (true, 1) => -1.0,
                    (true, _) => -1.0 + i * (2.0 / (n - 1.0)),
                    (false, _) => (-1.0 + (2.0 / n) / 2.0) + i * (2.0 / n),
                }
            })
            .collect()
    };
    let per_axis: Vec<Vec<f64>> = spatial.iter().map(|&d| axis_values(d)).collect();
    // every position in row-major order; its coordinates innermost axis first (x, y, z), then 1
    let positions: usize = spatial.iter().product();
    let mut coords = Vec::with_capacity(n);
    for p in 0..positions {
        let mut rest = p;
        let mut idx = vec![0; sp];
        for a in (0..sp).rev() {
            idx[a] = rest % spatial[a];
            rest /= spatial[a];
        }
        for a in (0..sp).rev() {
            coords.push(per_axis[a][idx[a]]);
        }
        coords.push(1.0);
    }
    let name = cx.im.fresh_name(&format!("{}/coords", cx.at.name));
    let grid = cx.im.g.add_const(name, Tensor::from_f64_iter(DType::F64, shape, coords.into_iter()));
    // theta [N, sp, sp+1] -> [N, 1, ..., 1, sp, sp+1], times the coordinates [spatial..., 1, sp+1]
    let t64 = cx.add_helper("theta_f64", Op::Cast { to: DType::F64 }, vec![Some(theta)])?;
    let axes: Vec<i64> = (1..=sp as i64).collect();
    let t = cx.add_helper("theta_per_position", Op::Unsqueeze { axes }, vec![Some(t64)])?;
    let products = cx.add_helper("products", Op::Binary(BinaryOp::Mul), vec![Some(t), Some(grid)])?;
    let last = -1;
    let sum = cx.add_helper("sum", Op::ReduceSum { axes: vec![last], keepdims: false }, vec![Some(products)])?;
    one(cx.add(Op::Cast { to: tt.dtype }, vec![Some(sum)], None)?)
}
