//! Window functions (HannWindow, HammingWindow, BlackmanWindow, opset 17): their values depend
//! only on the window's size, which must be a constant (a graph input is imported specialized on
//! its value by `qforge run`); each is folded to a constant at import, as EyeLike is. The
//! formulas are the ONNX operator spec's (`onnx.reference`'s `op_hann_window.py`,
//! `op_hamming_window.py`, `op_blackman_window.py`) with `N = size` when `periodic` (the
//! default) and `size - 1` otherwise, evaluated in f64 and rounded once to `output_datatype`
//! (default float).

use super::{one, Cx, OpDef, Outs, R};
use crate::onnx::tensors::checked_numel;
use qforge_ir::Tensor;
use std::f64::consts::PI;

pub(super) const OPS: &[OpDef] = &[
    OpDef::onnx("HannWindow", &[17], |cx| window(cx, Window::Hann)),
    OpDef::onnx("HammingWindow", &[17], |cx| window(cx, Window::Hamming)),
    OpDef::onnx("BlackmanWindow", &[17], |cx| window(cx, Window::Blackman)),
];

#[derive(Clone, Copy)]
enum Window {
    /// `sin^2(pi n / N)`.
    Hann,
    /// `alpha - beta cos(2 pi n / N)` with `alpha = 25/46`, `beta = 1 - alpha`.
    Hamming,
    /// `0.42 - 0.5 cos(2 pi n / N) + 0.08 cos(4 pi n / N)`, summed in the reference's order.
    Blackman,
}

fn window(cx: &mut Cx, w: Window) -> R<Outs> {
    let a = cx.attrs();
    let periodic = a.bool_or("periodic", true)?;
    let code = a.int_or("output_datatype", 1)?;
    let code = i32::try_from(code).map_err(|_| cx.err(format!("unknown output_datatype {code}")))?;
    let dtype = crate::onnx::tensors::dtype_from_onnx(code).map_err(|m| cx.err(format!("output_datatype {m}")))?;
    let size = match cx.const_input(0, "size")?.to_i64_vec().as_deref() {
        Some([n]) if *n >= 0 => *n,
        _ => return Err(cx.err("input 0 (size) must be one non-negative integer")),
    };
    let (shape, n) = checked_numel(&[size], dtype, cx.im.max_tensor_bytes).map_err(|m| cx.err(m))?;
    cx.im.charge(n as u128 * dtype.size_bytes() as u128).map_err(|m| cx.err(m))?;
    let big_n = if periodic { size as f64 } else { size as f64 - 1.0 };
    let values = (0..n).map(|i| {
        let x = i as f64;
        match w {
            Window::Hann => (PI * x / big_n).sin().powi(2),
            Window::Hamming => {
                let alpha = 25.0 / 46.0;
                alpha - (1.0 - alpha) * (2.0 * PI * x / big_n).cos()
            }
            // the reference's order: `-0.5 cos(...)`, plus `0.08 cos(...)`, plus 0.42 (exactly 0
            // at the ends of a symmetric window)
            Window::Blackman => ((2.0 * PI * x / big_n).cos() * -0.5 + (4.0 * PI * x / big_n).cos() * 0.08) + 0.42,
        }
    });
    one(cx.im.g.add_const(cx.at.name.clone(), Tensor::from_f64_iter(dtype, shape, values)))
}
