//! Element-wise ops: unary functions, binary arithmetic and comparisons with numpy broadcasting,
//! `where`, and the float maps (leaky ReLU, clip, hard sigmoid).
//!
//! The element formulas are [`crate::numerics`]'s ([`numerics::float_binary`],
//! [`numerics::int_binary`]) and [`unary_f64`]'s. Floats: f16/bf16 widen to f32; `+ - * /` give
//! the correctly rounded f32 result; `exp`, `sigmoid` and `erf` are the contract's f32 functions
//! ([`numerics::exp_f32`] and the others); the other transcendental functions (`log`, `tanh`,
//! `gelu`, `pow`, ...) are evaluated in f64 and rounded to f32; every result is then rounded once
//! to the storage type. f64 tensors compute in f64. `max`/`min` propagate NaN. The float maps
//! (leaky ReLU, clip, hard sigmoid) take f32, f16 and bf16 only.
//!
//! Integers (and bool, as 0/1) compute on i64 bits and wrap into the storage type (two's
//! complement, as ONNX Runtime's kernels do); u64 orders and divides as unsigned; division
//! truncates toward zero and a zero divisor is an error; integer `pow` is
//! `trunc(pow(a as f64, b as f64))`. Bitwise ops and shifts act on the storage type's bits (ONNX
//! BitwiseAnd/Or/Xor, BitShift-28: a shift count outside `0..width` gives 0, or -1 for a right
//! shift of a negative signed value). The formulas are [`numerics::int_binary`].

use super::{float_tensor, floats, for_each_broadcast, int_tensor, numel, tensor, Cx, R};
use crate::{numerics, BinaryOp, DType, Tensor, TensorData, UnaryOp};

/// The error function, to about 1 ulp in f64: the rational approximations of Sun's fdlibm
/// `s_erf.c` (piecewise on |x| < 0.84375, < 1.25, < 1/0.35, < 6; erf(x) = ±1 beyond). The
/// constants are fdlibm's, digit for digit.
#[allow(clippy::excessive_precision)]
pub fn erf(x: f64) -> f64 {
    const ERX: f64 = 8.45062911510467529297e-01;
    const EFX: f64 = 1.28379167095512586316e-01;
    const PP: [f64; 5] = [
        1.28379167095512558561e-01,
        -3.25042107247001499370e-01,
        -2.84817495755985104766e-02,
        -5.77027029648944159157e-03,
        -2.37630166566501626084e-05,
    ];
    const QQ: [f64; 5] = [
        3.97917223959155352819e-01,
        6.50222499887672944485e-02,
        5.08130628187576562776e-03,
        1.32494738004321644526e-04,
        -3.96022827877536812320e-06,
    ];
    const PA: [f64; 7] = [
        -2.36211856075265944077e-03,
        4.14856118683748331666e-01,
        -3.72207876035701323847e-01,
        3.18346619901161753674e-01,
        -1.10894694282396677476e-01,
        3.54783043256182359371e-02,
        -2.16637559486879084300e-03,
    ];
    const QA: [f64; 6] = [
        1.06420880400844228286e-01,
        5.40397917702171048937e-01,
        7.18286544141962662868e-02,
        1.26171219808761642112e-01,
        1.36370839120290507362e-02,
        1.19844998467991074170e-02,
    ];
    const RA: [f64; 8] = [
        -9.86494403484714822705e-03,
        -6.93858572707181764372e-01,
        -1.05586262253232909814e+01,
        -6.23753324503260060396e+01,
        -1.62396669462573470355e+02,
        -1.84605092906711035994e+02,
        -8.12874355063065934246e+01,
        -9.81432934416914548592e+00,
    ];
    const SA: [f64; 8] = [
        1.96512716674392571292e+01,
        1.37657754143519042600e+02,
        4.34565877475229228821e+02,
        6.45387271733267880336e+02,
        4.29008140027567833386e+02,
        1.08635005541779435134e+02,
        6.57024977031928170135e+00,
        -6.04244152148580987438e-02,
    ];
    const RB: [f64; 7] = [
        -9.86494292470009928597e-03,
        -7.99283237680523006574e-01,
        -1.77579549177547519889e+01,
        -1.60636384855821916062e+02,
        -6.37566443368389627722e+02,
        -1.02509513161107724954e+03,
        -4.83519191608651397019e+02,
    ];
    const SB: [f64; 7] = [
        3.03380607434824582924e+01,
        3.25792512996573918826e+02,
        1.53672958608443695994e+03,
        3.19985821950859553908e+03,
        2.55305040643316442583e+03,
        4.74528541206955367215e+02,
        -2.24409524465858183362e+01,
    ];
    /// `c[0] + z*(c[1] + z*(...))`
    fn horner(c: &[f64], z: f64) -> f64 {
        c.iter().rev().fold(0.0, |acc, &k| acc * z + k)
    }
    /// `1 + z*(c[0] + z*(c[1] + ...))`
    fn horner1(c: &[f64], z: f64) -> f64 {
        1.0 + z * horner(c, z)
    }

    if x.is_nan() {
        return x;
    }
    let (sign, a) = if x < 0.0 { (-1.0, -x) } else { (1.0, x) };
    if a < 0.84375 {
        if a < f64::powi(2.0, -28) {
            return x + EFX * x;
        }
        let z = x * x;
        return x + x * (horner(&PP, z) / horner1(&QQ, z));
    }
    if a < 1.25 {
        let s = a - 1.0;
        return sign * (ERX + horner(&PA, s) / horner1(&QA, s));
    }
    if a >= 6.0 {
        return sign;
    }
    let s = 1.0 / (a * a);
    let (r, q) = if a < 1.0 / 0.35 { (horner(&RA, s), horner1(&SA, s)) } else { (horner(&RB, s), horner1(&SB, s)) };
    // z: a with the low 32 bits cleared, so -z*z is exact
    let z = f64::from_bits(a.to_bits() & 0xffff_ffff_0000_0000);
    let e = (-z * z - 0.5625).exp() * ((z - a) * (z + a) + r / q).exp();
    sign * (1.0 - e / a)
}

/// Applies a float function element-wise (f16/bf16 widened, result rounded once).
pub(crate) fn map_float(cx: &Cx, f: impl Fn(f32) -> f32) -> R<Tensor> {
    let x = cx.x(0)?;
    if !x.dtype().is_compute_float() {
        return Err(format!("needs a float tensor, got {}", x.dtype()));
    }
    let y: Vec<f32> = floats(x).iter().map(|&v| f(v)).collect();
    float_tensor(x.dtype(), x.shape().to_vec(), y)
}

/// The gradient of clip ([`crate::Op::ClipGrad`]): `dy` where `min <= x <= max`, else 0.
pub(crate) fn clip_grad(cx: &Cx, min: f32, max: f32) -> R<Tensor> {
    let (x, dy) = (cx.x(0)?, cx.x(1)?);
    if x.shape() != dy.shape() {
        return Err(format!("dy has shape {:?} for x of shape {:?}", dy.shape(), x.shape()));
    }
    let dx: Vec<f32> =
        floats(x).iter().zip(floats(dy).iter()).map(|(&x, &g)| if x >= min && x <= max { g } else { 0.0 }).collect();
    float_tensor(cx.out_dtype(0), x.shape().to_vec(), dx)
}

pub(crate) fn unary(cx: &Cx, u: UnaryOp) -> R<Tensor> {
    let x = cx.x(0)?;
    if u == UnaryOp::Not {
        let TensorData::Bool(v) = x.data() else {
            return Err(format!("`not` needs bool, got {}", x.dtype()));
        };
        return tensor(x.shape().to_vec(), TensorData::Bool(v.iter().map(|b| !b).collect()));
    }
    if let TensorData::F64(v) = x.data() {
        return tensor(x.shape().to_vec(), TensorData::F64(v.iter().map(|&v| unary_f64(u, v)).collect()));
    }
    map_float(cx, |v| unary_scalar(u, v))
}

/// One float unary function on one f32 value: the element formula of [`UnaryOp`] for every engine
/// (the JIT's activation kernels call this too): `Exp`, `Sigmoid` and `Erf` are the numerics
/// contract's f32 functions ([`numerics::exp_f32`], [`numerics::sigmoid_f32`],
/// [`numerics::erf_f32`]); the others are
/// [`unary_f64`] rounded to f32 once. For the functions exact or correctly rounded in both widths
/// (ReLU, neg, abs, floor, ceil, reciprocal, square root) that is the f32 operation itself; the
/// others are evaluated in f64 and rounded.
#[inline]
pub fn unary_scalar(u: UnaryOp, v: f32) -> f32 {
    match u {
        UnaryOp::Exp => numerics::exp_f32(v),
        UnaryOp::Sigmoid => numerics::sigmoid_f32(v),
        UnaryOp::Erf => numerics::erf_f32(v),
        _ => unary_f64(u, v as f64) as f32,
    }
}

/// One float unary function on one f64 value (f64 tensors compute in f64). `Not` (bool) is the
/// identity here.
#[inline]
pub fn unary_f64(u: UnaryOp, v: f64) -> f64 {
    let f64_of = |f: fn(f64) -> f64| f(v);
    match u {
        UnaryOp::Relu => {
            if v < 0.0 {
                0.0
            } else {
                v
            }
        }
        UnaryOp::Sigmoid => f64_of(|v| 1.0 / (1.0 + (-v).exp())),
        UnaryOp::Tanh => f64_of(f64::tanh),
        UnaryOp::HardSwish => f64_of(|v| v * (v + 3.0).clamp(0.0, 6.0) / 6.0),
        UnaryOp::Gelu => f64_of(|v| 0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2))),
        UnaryOp::GeluTanh => f64_of(|v| {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * v * (1.0 + (k * (v + 0.044715 * v * v * v)).tanh())
        }),
        UnaryOp::Erf => f64_of(erf),
        UnaryOp::Exp => f64_of(f64::exp),
        UnaryOp::Log => f64_of(f64::ln),
        UnaryOp::Sqrt => f64_of(f64::sqrt),
        UnaryOp::Neg => -v,
        UnaryOp::Abs => v.abs(),
        UnaryOp::Reciprocal => 1.0 / v,
        UnaryOp::Floor => v.floor(),
        UnaryOp::Ceil => v.ceil(),
        UnaryOp::Not => v,
        UnaryOp::Sin => f64_of(f64::sin),
        UnaryOp::Cos => f64_of(f64::cos),
        UnaryOp::Tan => f64_of(f64::tan),
        UnaryOp::Asin => f64_of(f64::asin),
        UnaryOp::Acos => f64_of(f64::acos),
        UnaryOp::Atan => f64_of(f64::atan),
        UnaryOp::Sinh => f64_of(f64::sinh),
        UnaryOp::Cosh => f64_of(f64::cosh),
        UnaryOp::Asinh => f64_of(f64::asinh),
        UnaryOp::Acosh => f64_of(f64::acosh),
        UnaryOp::Atanh => f64_of(f64::atanh),
        // NaN stays NaN and zero keeps its sign (numpy's sign).
        UnaryOp::Sign => {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                v
            }
        }
        // half to even, the rounding of the numerics contract (`numerics::round_half_even`), in f64
        UnaryOp::Round => v.round_ties_even(),
    }
}

/// Calls `f(out_index, a_offset, b_offset)` over the broadcast of `a` and `b` to `out`.
fn zip_broadcast(a: &[usize], b: &[usize], out: &[usize], mut f: impl FnMut(usize, usize)) -> R<()> {
    if a == out && b == out {
        let n = numel(out).ok_or("result too large")?;
        for i in 0..n {
            f(i, i);
        }
        return Ok(());
    }
    for_each_broadcast(out, &[a, b], |_, o| f(o[0], o[1]))
}

pub(crate) fn binary(cx: &Cx, op: BinaryOp) -> R<Tensor> {
    let (a, b) = (cx.x(0)?, cx.x(1)?);
    if a.dtype() != b.dtype() {
        return Err(format!("operand dtypes differ: {} and {}", a.dtype(), b.dtype()));
    }
    let shape = cx.out_shape(0);
    let n = numel(&shape).ok_or("result too large")?;
    let cmp = matches!(
        op,
        BinaryOp::Equal | BinaryOp::Less | BinaryOp::Greater | BinaryOp::GreaterOrEqual | BinaryOp::LessOrEqual
    );
    let bool_op = || format!("`{}` needs bool operands", cx.op.name());
    if let (TensorData::F64(av), TensorData::F64(bv)) = (a.data(), b.data()) {
        // f64: computed in f64 (the formulas of `numerics`, no widened copy)
        if cmp {
            let mut y = Vec::with_capacity(n);
            zip_broadcast(a.shape(), b.shape(), &shape, |i, j| {
                y.push(numerics::float_compare(op, av[i], bv[j]).unwrap_or(false))
            })?;
            return tensor(shape, TensorData::Bool(y));
        }
        numerics::float_binary(op, 0.0, 0.0).ok_or_else(bool_op)?;
        let mut y = Vec::with_capacity(n);
        zip_broadcast(a.shape(), b.shape(), &shape, |i, j| {
            y.push(numerics::float_binary(op, av[i], bv[j]).unwrap_or(f64::NAN))
        })?;
        return tensor(shape, TensorData::F64(y));
    }
    if a.dtype().is_float() {
        // f32, and f16/bf16 widened to f32: the f64 formula rounded once to f32 is the f32
        // operation (see `numerics`)
        let (av, bv) = (floats(a), floats(b));
        if cmp {
            let mut y = Vec::with_capacity(n);
            zip_broadcast(a.shape(), b.shape(), &shape, |i, j| {
                y.push(numerics::float_compare(op, av[i] as f64, bv[j] as f64).unwrap_or(false))
            })?;
            return tensor(shape, TensorData::Bool(y));
        }
        numerics::float_binary(op, 0.0, 0.0).ok_or_else(bool_op)?;
        let mut y = Vec::with_capacity(n);
        zip_broadcast(a.shape(), b.shape(), &shape, |i, j| {
            y.push(numerics::float_binary(op, av[i] as f64, bv[j] as f64).unwrap_or(f64::NAN) as f32)
        })?;
        return float_tensor(a.dtype(), shape, y);
    }
    let av = a.to_i64_bits().ok_or("operands must be numeric")?;
    let bv = b.to_i64_bits().ok_or("operands must be numeric")?;
    let dtype = a.dtype();
    let mut y = Vec::with_capacity(n);
    let mut err = None;
    zip_broadcast(a.shape(), b.shape(), &shape, |i, j| {
        y.push(numerics::int_binary(op, av[i], bv[j], dtype).unwrap_or_else(|e| {
            err = Some(e);
            0
        }))
    })?;
    if let Some(e) = err {
        return Err(e.into());
    }
    int_tensor(if cmp { DType::Bool } else { dtype }, shape, &y)
}

/// `cond ? x : y` with broadcasting, any dtype.
pub(crate) fn where_(cx: &Cx) -> R<Tensor> {
    let (c, x, y) = (cx.x(0)?, cx.x(1)?, cx.x(2)?);
    let TensorData::Bool(cv) = c.data() else {
        return Err(format!("condition must be bool, got {}", c.dtype()));
    };
    let shape = cx.out_shape(0);
    let n = numel(&shape).ok_or("result too large")?;
    macro_rules! pick {
        ($xv:expr, $yv:expr) => {{
            let mut out = Vec::with_capacity(n);
            for_each_broadcast(&shape, &[c.shape(), x.shape(), y.shape()], |_, o| {
                out.push(if cv[o[0]] { $xv[o[1]] } else { $yv[o[2]] })
            })?;
            out
        }};
    }
    use TensorData as D;
    let data = match (x.data(), y.data()) {
        (D::F32(a), D::F32(b)) => D::F32(pick!(a, b)),
        (D::F16(a), D::F16(b)) => D::F16(pick!(a, b)),
        (D::BF16(a), D::BF16(b)) => D::BF16(pick!(a, b)),
        (D::F64(a), D::F64(b)) => D::F64(pick!(a, b)),
        (D::I8(a), D::I8(b)) => D::I8(pick!(a, b)),
        (D::U8(a), D::U8(b)) => D::U8(pick!(a, b)),
        (D::I16(a), D::I16(b)) => D::I16(pick!(a, b)),
        (D::U16(a), D::U16(b)) => D::U16(pick!(a, b)),
        (D::I32(a), D::I32(b)) => D::I32(pick!(a, b)),
        (D::U32(a), D::U32(b)) => D::U32(pick!(a, b)),
        (D::I64(a), D::I64(b)) => D::I64(pick!(a, b)),
        (D::U64(a), D::U64(b)) => D::U64(pick!(a, b)),
        (D::Bool(a), D::Bool(b)) => D::Bool(pick!(a, b)),
        _ => return Err(format!("operand dtypes differ: {} and {}", x.dtype(), y.dtype())),
    };
    tensor(shape, data)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::{Op, Tensor};

    #[test]
    fn erf_matches_known_values() {
        // reference values: Python's math.erf (correctly rounded here)
        let cases = [
            (0.0, 0.0),
            (1e-10, 1.1283791670955126e-10),
            (0.1, 0.1124629160182849),
            (0.5, 0.5204998778130465),
            (0.84375, 0.7672256612323416),
            (1.0, 0.8427007929497149),
            (1.25, 0.9229001282564582),
            (2.0, 0.9953222650189527),
            (2.857142857142857, 0.9999466876886117),
            (3.5, 0.9999992569016276),
            (5.9, 0.9999999999999999),
            (6.0, 1.0),
        ];
        for (x, want) in cases {
            let got = erf(x);
            assert!((got - want).abs() <= 2.0 * f64::EPSILON * want.abs().max(1e-300), "erf({x}) = {got}, want {want}");
            assert_eq!(erf(-x), -got);
        }
        assert!(erf(f64::NAN).is_nan());
        assert_eq!(erf(f64::INFINITY), 1.0);
    }

    #[test]
    fn unary_functions() {
        let x = f32t(&[5], &[-2.0, -0.5, 0.0, 0.5, 2.0]);
        let get = |u| eval1(&Op::Unary(u), &[&x]).unwrap().as_f32().unwrap().to_vec();
        assert_eq!(get(UnaryOp::Relu), [0.0, 0.0, 0.0, 0.5, 2.0]);
        assert_close(&get(UnaryOp::Sigmoid), &[0.11920292, 0.37754068, 0.5, 0.62245935, 0.8807971], 1e-7);
        assert_close(&get(UnaryOp::Gelu), &[-0.04550026, -0.15426877, 0.0, 0.34573123, 1.9544997], 1e-7);
        assert_close(&get(UnaryOp::GeluTanh), &[-0.04540231, -0.154286, 0.0, 0.345714, 1.9545977], 1e-7);
        assert_close(&get(UnaryOp::HardSwish), &[-0.33333334, -0.20833333, 0.0, 0.29166666, 1.6666666], 1e-7);
        assert_eq!(get(UnaryOp::Abs), [2.0, 0.5, 0.0, 0.5, 2.0]);
        assert_eq!(get(UnaryOp::Floor), [-2.0, -1.0, 0.0, 0.0, 2.0]);
        assert_eq!(get(UnaryOp::Ceil), [-2.0, -0.0, 0.0, 1.0, 2.0]);
        let b = Tensor::new(vec![2], TensorData::Bool(vec![true, false])).unwrap();
        let y = eval1(&Op::Unary(UnaryOp::Not), &[&b]).unwrap();
        assert_eq!(y.data(), &TensorData::Bool(vec![false, true]));
    }

    #[test]
    fn f16_results_round_once_to_nearest_even() {
        // exp(x) rounded to f16: computed in f64, rounded once.
        let x = Tensor::from_f32_slice(DType::F16, vec![3], &[0.0, 1.0, -1.0]);
        let y = eval1(&Op::Unary(UnaryOp::Exp), &[&x]).unwrap();
        assert_eq!(y.dtype(), DType::F16);
        let want: Vec<f32> =
            [1.0f64, 1f64.exp(), (-1f64).exp()].iter().map(|&v| half::f16::from_f32(v as f32).to_f32()).collect();
        assert_eq!(y.to_f32_vec(), want);
        // 2048 + 1 is a tie in f16 and rounds to even (2048); 2048 + 3 rounds up to 2052.
        let a = Tensor::from_f32_slice(DType::F16, vec![2], &[2048.0, 2048.0]);
        let b = Tensor::from_f32_slice(DType::F16, vec![2], &[1.0, 3.0]);
        let y = eval1(&Op::Binary(BinaryOp::Add), &[&a, &b]).unwrap();
        assert_eq!(y.to_f32_vec(), vec![2048.0, 2052.0]);
    }

    #[test]
    fn binary_broadcasting() {
        let a = f32t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b = f32t(&[3], &[10.0, 20.0, 30.0]);
        let c = f32t(&[2, 1], &[-1.0, 1.0]);
        let y = eval1(&Op::Binary(BinaryOp::Add), &[&a, &b]).unwrap();
        assert_eq!(y.as_f32().unwrap(), &[11.0, 22.0, 33.0, 14.0, 25.0, 36.0]);
        let y = eval1(&Op::Binary(BinaryOp::Mul), &[&c, &b]).unwrap();
        assert_eq!(y.shape(), &[2, 3]);
        assert_eq!(y.as_f32().unwrap(), &[-10.0, -20.0, -30.0, 10.0, 20.0, 30.0]);
        let y = eval1(&Op::Binary(BinaryOp::Greater), &[&a, &f32t(&[], &[3.0])]).unwrap();
        assert_eq!(y.data(), &TensorData::Bool(vec![false, false, false, true, true, true]));
        let y = eval1(&Op::Binary(BinaryOp::Max), &[&f32t(&[2], &[1.0, f32::NAN]), &f32t(&[1], &[2.0])]).unwrap();
        assert_eq!(y.as_f32().unwrap()[0], 2.0);
        assert!(y.as_f32().unwrap()[1].is_nan());
    }

    #[test]
    fn mod_fmod_and_ordered_comparisons() {
        // ONNX Mod: fmod=0 takes the divisor's sign, fmod=1 the dividend's.
        let a = Tensor::from_i64(vec![6], vec![-4, 7, 5, 4, -7, 8]);
        let b = Tensor::from_i64(vec![6], vec![2, -3, 8, -2, 3, 5]);
        assert_eq!(
            eval1(&Op::Binary(BinaryOp::Mod), &[&a, &b]).unwrap().to_i64_vec().unwrap(),
            vec![0, -2, 5, 0, 2, 3]
        );
        assert_eq!(
            eval1(&Op::Binary(BinaryOp::Fmod), &[&a, &b]).unwrap().to_i64_vec().unwrap(),
            vec![0, 1, 5, 0, -1, 3]
        );
        let zero = Tensor::from_i64(vec![1], vec![0]);
        assert!(eval1(&Op::Binary(BinaryOp::Mod), &[&a, &zero]).is_err());
        let x = f32t(&[3], &[-4.3, 7.2, 5.0]);
        let y = f32t(&[3], &[2.1, -3.4, 8.5]);
        let r = eval1(&Op::Binary(BinaryOp::Fmod), &[&x, &y]).unwrap().to_f32_vec();
        assert_eq!(r, vec![-4.3f32 % 2.1, 7.2f32 % -3.4, 5.0]);
        assert!(eval1(&Op::Binary(BinaryOp::Mod), &[&x, &y]).is_err(), "float Mod needs fmod=1");
        let ge = eval1(&Op::Binary(BinaryOp::GreaterOrEqual), &[&a, &b]).unwrap();
        assert_eq!(ge.data(), &TensorData::Bool(vec![false, true, false, true, false, true]));
        let le = eval1(&Op::Binary(BinaryOp::LessOrEqual), &[&x, &f32t(&[], &[5.0])]).unwrap();
        assert_eq!(le.data(), &TensorData::Bool(vec![true, false, true]));
    }

    #[test]
    fn integer_binary_wraps_and_truncates() {
        let a = i8t(&[3], &[100, -100, -7]);
        let b = i8t(&[3], &[100, 100, 2]);
        assert_eq!(eval1(&Op::Binary(BinaryOp::Add), &[&a, &b]).unwrap().to_i64_vec().unwrap(), vec![-56, 0, -5]);
        assert_eq!(eval1(&Op::Binary(BinaryOp::Div), &[&a, &b]).unwrap().to_i64_vec().unwrap(), vec![1, -1, -3]);
        let a = Tensor::from_i64(vec![2], vec![3, 1]);
        let b = Tensor::from_i64(vec![1], vec![4]);
        assert_eq!(eval1(&Op::Binary(BinaryOp::Pow), &[&a, &b]).unwrap().to_i64_vec().unwrap(), vec![81, 1]);
        assert!(eval1(&Op::Binary(BinaryOp::Div), &[&a, &Tensor::from_i64(vec![1], vec![0])]).is_err());
        let t = Tensor::new(vec![2], TensorData::Bool(vec![true, false])).unwrap();
        let f = Tensor::new(vec![1], TensorData::Bool(vec![true])).unwrap();
        assert_eq!(eval1(&Op::Binary(BinaryOp::And), &[&t, &f]).unwrap().data(), &TensorData::Bool(vec![true, false]));
    }

    #[test]
    fn where_selects_with_broadcasting() {
        let c = Tensor::new(vec![2, 1], TensorData::Bool(vec![true, false])).unwrap();
        let x = Tensor::from_i64(vec![1, 2], vec![1, 2]);
        let y = Tensor::from_i64(vec![], vec![9]);
        let r = eval1(&Op::Where, &[&c, &x, &y]).unwrap();
        assert_eq!(r.shape(), &[2, 2]);
        assert_eq!(r.to_i64_vec().unwrap(), vec![1, 2, 9, 9]);
    }

    #[test]
    fn float_maps() {
        let x = f32t(&[4], &[-2.0, 0.5, 7.0, f32::NAN]);
        let y = eval1(&Op::Clip { min: 0.0, max: 6.0 }, &[&x]).unwrap();
        assert_eq!(&y.as_f32().unwrap()[..3], &[0.0, 0.5, 6.0]);
        assert!(y.as_f32().unwrap()[3].is_nan());
        let y = eval1(&Op::LeakyRelu { alpha: 0.1 }, &[&x]).unwrap();
        assert_eq!(&y.as_f32().unwrap()[..3], &[-0.2, 0.5, 7.0]);
        let y = eval1(&Op::HardSigmoid { alpha: 0.2, beta: 0.5 }, &[&x]).unwrap();
        assert_close(&y.as_f32().unwrap()[..3], &[0.1, 0.6, 1.0], 1e-7);
    }
}
