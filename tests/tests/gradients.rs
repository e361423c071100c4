//! Reverse-mode differentiation (`qforge_passes::autodiff`) against finite differences, and the
//! backward graph of a small CNN as a golden.
//!
//! # The gradient property
//! For each op: random shapes and attributes, random inputs, the loss `sum(op(x) * r)` with a
//! random constant `r`, differentiated with respect to the op's float operands; the analytic
//! gradient (the differentiated graph run on the interpreter) is compared with the gradient of
//! the same loss by finite differences, element by element.
//!
//! The interpreter computes the compute ops (convolution, pooling, normalization, matrix
//! products) in f32 only, so the forward runs in f32 and the difference quotient is the
//! fourth-order central one, `(8 (f(x+h) - f(x-h)) - (f(x+2h) - f(x-2h))) / 12h`, with `h = 1e-2`
//! (inputs are O(1)): its truncation error is `h^4 f^(5) / 30` (about 1e-9 here) and its rounding
//! error about `1.5 * (f32 rounding of the op's results) / h`, about 1e-5 of the gradient on these
//! sizes; the weighting by `r` and the sum are computed in f64 (the result cast to f64 first), so
//! the loss adds no rounding of its own and results that do not move cancel exactly.
//!
//! The measure is the whole gradient's relative error (the usual gradient-check norm: every
//! operand's gradient concatenated), `|g - g_fd|_2 <= 1e-3 |g_fd|_2 + e`, so a wrong element
//! anywhere shows unless it is below 1e-3 of the gradient's norm. `e` estimates the quotient's
//! own rounding error per case (a formula, not a tuned constant): each loss evaluation is taken
//! to be off by two ulps of each f32 result it weighs (`sum |r y| 2^-23`: the result's rounding
//! and its f32 arithmetic), which the quotient scales by `1.5 / h`, per element (so
//! `sqrt(elements)` for the norm). It matters only where the gradient is small against the
//! results (a softmax over two elements weighted almost alike); elsewhere the relative term
//! dominates. Where the loss does not depend on the operands at all (every difference exactly 0,
//! a relu of negative values) the analytic gradient must be exactly 0 too.
//!
//! Kinks are kept out of reach of the quotient by construction: relu, leaky relu, abs, hard
//! swish, hard sigmoid and clip inputs stay at least `4h` from their kinks, the operands of
//! binary max/min lie on grids 0.05 apart, max pooling and reduce max see distinct values at
//! least `8h` apart (so no perturbation changes which element a window takes), and layer norm
//! rows are distinct values 0.3 apart (two close values normalize to a step).
//!
//! Every property test runs 64 cases (25 of them: about 1600 cases, under a second on the test
//! profile), each a fresh random shape, attribute set and input.
//!
//! Round (straight-through), floor, ceil and sign have no finite-difference derivative to compare
//! with; their gradients are checked exactly (`r` through round, zeros for the others), and the
//! fake quantizer's LSQ scale gradient against its formula. f16 and bf16 forwards are checked to
//! give a backward of their own dtype that agrees with the f32 gradient within their precision.

use proptest::prelude::*;
use qforge_ir::{BinaryOp, ConvAttrs, DType, Graph, Op, PadMode, PoolAttrs, Shape, Tensor, TensorType, UnaryOp, Value};
use qforge_passes::autodiff::differentiate;
use std::path::Path;

/// The finite-difference step.
const H: f64 = 1e-2;
/// The largest relative error of the gradient.
const TOL: f64 = 1e-3;

/// A deterministic generator for tensor values (xorshift).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Uniform in [0, 1).
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn uniform(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| lo + (hi - lo) * self.next()).collect()
    }
    /// Values at least `gap` from every kink in `kinks`, in [lo, hi).
    fn away_from(&mut self, n: usize, lo: f64, hi: f64, kinks: &[f64], gap: f64) -> Vec<f64> {
        (0..n)
            .map(|_| loop {
                let v = lo + (hi - lo) * self.next();
                if kinks.iter().all(|k| (v - k).abs() >= gap) {
                    break v;
                }
            })
            .collect()
    }
    /// `n` distinct values `gap` apart (a shuffled grid), centred on 0.
    fn distinct(&mut self, n: usize, gap: f64) -> Vec<f64> {
        let mut v: Vec<f64> = (0..n).map(|i| (i as f64 - n as f64 / 2.0) * gap).collect();
        for i in (1..n).rev() {
            let j = (self.next() * (i + 1) as f64) as usize;
            v.swap(i, j.min(i));
        }
        v
    }
    fn index(&mut self, n: usize) -> usize {
        ((self.next() * n as f64) as usize).min(n - 1)
    }
}

fn f32_tensor(dims: &[usize], v: Vec<f64>) -> Tensor {
    Tensor::from_f64_iter(DType::F32, dims.to_vec(), v.into_iter())
}

/// A forward computation on the graph inputs.
type Forward = Box<dyn Fn(&mut Graph, &[Value]) -> Value>;

/// One gradient case: graph inputs (name, value, whether differentiated) and the forward.
struct Case {
    inputs: Vec<(String, Tensor, bool)>,
    forward: Forward,
    r_seed: u64,
}

impl Case {
    fn new(forward: impl Fn(&mut Graph, &[Value]) -> Value + 'static, seed: u64) -> Case {
        Case { inputs: vec![], forward: Box::new(forward), r_seed: seed ^ 0x5eed }
    }
    fn input(mut self, name: &str, t: Tensor) -> Case {
        self.inputs.push((name.to_string(), t, true));
        self
    }
    /// An input that is not differentiated.
    fn fixed(mut self, name: &str, t: Tensor) -> Case {
        self.inputs.push((name.to_string(), t, false));
        self
    }
}

/// `sum(forward(x) * r)` as a graph with one output, the loss, computed in f64 from the
/// forward's result.
fn loss_graph(case: &Case, dtype: DType) -> Graph {
    let mut g = Graph::new("case");
    let vals: Vec<Value> = case
        .inputs
        .iter()
        .map(|(n, t, _)| {
            let dt = if t.dtype().is_float() { dtype } else { t.dtype() };
            g.add_input(n.clone(), TensorType::new(dt, Shape::fixed(t.shape())))
        })
        .collect();
    let y = (case.forward)(&mut g, &vals);
    let yd = g.value_type(y).shape.as_fixed().expect("fixed result");
    let n: usize = yd.iter().product();
    let mut rng = Rng::new(case.r_seed);
    // the weighting and the sum in f64: the loss adds no rounding of its own
    let r = g.add_const("r", Tensor::from_f64_iter(DType::F64, yd.clone(), rng.uniform(n, -1.0, 1.0).into_iter()));
    let y = g.add_node(Op::Cast { to: DType::F64 }, vec![Some(y)], None, "widen").expect("cast");
    let p = g.add_node(Op::Binary(BinaryOp::Mul), vec![Some(y), Some(r)], None, "weighted").expect("mul");
    let l = if yd.is_empty() {
        p
    } else {
        let axes = (0..yd.len() as i64).collect();
        g.add_node(Op::ReduceSum { axes, keepdims: false }, vec![Some(p)], None, "loss").expect("sum")
    };
    g.add_output("loss", l);
    // the size of the loss's terms, for the rounding error of the difference quotient
    let a = g.add_node(Op::Unary(UnaryOp::Abs), vec![Some(p)], None, "magnitude").expect("abs");
    let a = if yd.is_empty() {
        a
    } else {
        let axes = (0..yd.len() as i64).collect();
        g.add_node(Op::ReduceSum { axes, keepdims: false }, vec![Some(a)], None, "magnitude.sum").expect("sum")
    };
    g.add_output("magnitude", a);
    g
}

fn cast_inputs(case: &Case, dtype: DType) -> Vec<Tensor> {
    case.inputs
        .iter()
        .map(|(_, t, _)| {
            if t.dtype().is_float() {
                Tensor::from_f64_iter(dtype, t.shape().to_vec(), t.to_f64_vec().into_iter())
            } else {
                t.clone()
            }
        })
        .collect()
}

/// The analytic gradients (in `wrt` order) of the case's loss at `dtype`.
fn analytic(case: &Case, dtype: DType) -> Result<(Graph, Vec<Tensor>), String> {
    let g = loss_graph(case, dtype);
    let wrt: Vec<&str> = case.inputs.iter().filter(|i| i.2).map(|i| i.0.as_str()).collect();
    let d = differentiate(&g, 0, &wrt).map_err(|e| format!("differentiate: {e}"))?;
    qforge_ir::verify::verify(&d.graph).map_err(|e| format!("verify: {e}"))?;
    let outs = qforge_ir::interp::run(&d.graph, &cast_inputs(case, dtype)).map_err(|e| format!("run: {e}"))?;
    for (i, (&k, name)) in d.grads.iter().zip(&wrt).enumerate() {
        let want = &case.inputs.iter().find(|c| c.0 == *name).expect("input").1;
        let got = &outs[k];
        if got.dtype() != dtype || got.shape() != want.shape() {
            return Err(format!(
                "gradient {i} of `{name}` is {}{:?}, expected {dtype}{:?}",
                got.dtype(),
                got.shape(),
                want.shape()
            ));
        }
    }
    Ok((d.graph.clone(), d.grads.iter().map(|&k| outs[k].clone()).collect()))
}

fn loss_at(g: &Graph, inputs: &[Tensor]) -> Result<f64, String> {
    let out = qforge_ir::interp::run(g, inputs).map_err(|e| format!("forward: {e}"))?;
    Ok(out[0].to_f64_vec()[0])
}

/// The analytic gradient's distance from fourth-order central differences, `|g - g_fd|_2`, and
/// what it may be (see the module docs): `TOL * |g_fd|_2` plus the rounding error of the
/// quotient.
fn gradient_error(case: &Case) -> Result<(f64, f64), String> {
    let (_, grads) = analytic(case, DType::F32)?;
    let g = loss_graph(case, DType::F32);
    let base = cast_inputs(case, DType::F32);
    let magnitude = qforge_ir::interp::run(&g, &base).map_err(|e| format!("forward: {e}"))?[1].to_f64_vec()[0];
    let (mut diff2, mut norm2, mut count) = (0.0f64, 0.0f64, 0usize);
    let mut gi = 0;
    for (k, (_, t, wrt)) in case.inputs.iter().enumerate() {
        if !wrt {
            continue;
        }
        let ga = grads[gi].to_f64_vec();
        gi += 1;
        let x0 = t.to_f64_vec();
        for e in 0..x0.len() {
            let at = |d: f64| -> Result<f64, String> {
                let mut xs = base.clone();
                let mut v = x0.clone();
                v[e] += d;
                xs[k] = f32_tensor(t.shape(), v);
                loss_at(&g, &xs)
            };
            let (p1, m1, p2, m2) = (at(H)?, at(-H)?, at(2.0 * H)?, at(-2.0 * H)?);
            let fd = (8.0 * (p1 - m1) - (p2 - m2)) / (12.0 * H);
            diff2 += (ga[e] - fd).powi(2);
            norm2 += fd * fd;
            count += 1;
        }
    }
    if norm2 == 0.0 {
        // the loss does not depend on the operands here (a relu of negative values, a strided
        // convolution that skips the input): the gradient must be exactly zero too
        return Ok((diff2.sqrt(), 0.0));
    }
    // each evaluation of the loss taken to be off by 2 ulps of every f32 result it weighs
    // (sum |r y| 2^-23); the quotient multiplies that by (8 + 8 + 1 + 1) / 12h = 1.5 / h
    let rounding = 1.5 * magnitude * f64::powi(2.0, -23) / H * (count as f64).sqrt();
    Ok((diff2.sqrt(), TOL * norm2.sqrt() + rounding))
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let (err, bound) = gradient_error(case).map_err(TestCaseError::fail)?;
    prop_assert!(err <= bound, "gradient error {err:.3e} > {bound:.3e}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Op builders

fn node(g: &mut Graph, op: Op, ins: &[Value]) -> Value {
    let name = format!("n{}", g.node_count());
    g.add_node(op, ins.iter().map(|&v| Some(v)).collect(), None, name).expect("forward node type-checks")
}

fn unary_case(u: UnaryOp, dims: Vec<usize>, lo: f64, hi: f64, kinks: &[f64], seed: u64) -> Case {
    let n = dims.iter().product();
    let mut rng = Rng::new(seed);
    let x = rng.away_from(n, lo, hi, kinks, 4.0 * H);
    Case::new(move |g, v| node(g, Op::Unary(u), &[v[0]]), seed).input("x", f32_tensor(&dims, x))
}

fn small_dims() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..5, 1..4)
}

fn cfg(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// A shape and, for each of two operands, a shape that broadcasts to it (leading dims dropped,
/// some dims 1).
fn broadcast_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>, Vec<usize>)> {
    prop::collection::vec(1usize..4, 1..4).prop_flat_map(|full| {
        let r = full.len();
        (Just(full), 0..=r, 0..=r, prop::collection::vec(any::<bool>(), r), prop::collection::vec(any::<bool>(), r))
            .prop_map(|(full, da, db, oa, ob)| {
                let cut = |drop: usize, ones: &[bool]| -> Vec<usize> {
                    (drop.min(full.len() - 1)..full.len()).map(|i| if ones[i] { 1 } else { full[i] }).collect()
                };
                let a = cut(da, &oa);
                let b = cut(db, &ob);
                (full, a, b)
            })
    })
}

/// The numpy broadcast of two shapes (right-aligned).
fn broadcast_dims(a: &[usize], b: &[usize]) -> Vec<usize> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let x = if i + a.len() >= r { a[i + a.len() - r] } else { 1 };
            let y = if i + b.len() >= r { b[i + b.len() - r] } else { 1 };
            x.max(y)
        })
        .collect()
}

fn numel(d: &[usize]) -> usize {
    d.iter().product()
}

/// A convolution's geometry: spatial rank, batch, groups, channels per group in and out, and per
/// spatial dim kernel, stride, dilation, pads (begins then ends) and the input rows beyond the
/// smallest that gives one output.
struct ConvSpec<'a> {
    sp: usize,
    n: usize,
    group: usize,
    cg: usize,
    mg: usize,
    k: &'a [usize],
    s: &'a [usize],
    d: &'a [usize],
    pads: &'a [usize],
    extra: &'a [usize],
    bias: bool,
}

fn conv_case(spec: &ConvSpec, seed: u64) -> Case {
    let ConvSpec { sp, n, group, cg, mg, k, s, d, pads, extra, bias } = *spec;
    let (c, m) = (group * cg, group * mg);
    let mut xd = vec![n, c];
    for i in 0..sp {
        // at least one output position
        let need = (k[i] - 1) * d[i] + 1;
        xd.push((need + extra[i]).saturating_sub(pads[i] + pads[sp + i]).max(1));
    }
    let mut wd = vec![m, cg];
    wd.extend_from_slice(&k[..sp]);
    let attrs = ConvAttrs {
        kernel: k[..sp].to_vec(),
        strides: s[..sp].to_vec(),
        pads: pads.to_vec(),
        dilations: d[..sp].to_vec(),
        group,
    };
    let mut rng = Rng::new(seed);
    let x = rng.uniform(numel(&xd), -1.0, 1.0);
    let w = rng.uniform(numel(&wd), -1.0, 1.0);
    let mut case =
        Case::new(move |g, v| node(g, Op::Conv(attrs.clone()), &v[..if v.len() == 3 { 3 } else { 2 }]), seed)
            .input("x", f32_tensor(&xd, x))
            .input("w", f32_tensor(&wd, w));
    if bias {
        let b = rng.uniform(m, -1.0, 1.0);
        case = case.input("b", f32_tensor(&[m], b));
    }
    case
}

fn pool_attrs(
    sp: usize,
    k: &[usize],
    s: &[usize],
    d: &[usize],
    pads: &[usize],
    ceil: bool,
    include: bool,
) -> PoolAttrs {
    PoolAttrs {
        kernel: k[..sp].to_vec(),
        strides: s[..sp].to_vec(),
        pads: pads.to_vec(),
        dilations: d[..sp].to_vec(),
        ceil_mode: ceil,
        count_include_pad: include,
    }
}

/// Whether a forward on these inputs is finite and in range (a pooling window over padding alone
/// averages 0/0, or takes the dtype's lowest value as its maximum).
fn finite_forward(case: &Case) -> bool {
    let mut g = Graph::new("f");
    let vals: Vec<Value> = case
        .inputs
        .iter()
        .map(|(n, t, _)| g.add_input(n.clone(), TensorType::new(t.dtype(), Shape::fixed(t.shape()))))
        .collect();
    let y = (case.forward)(&mut g, &vals);
    g.add_output("y", y);
    let ins: Vec<Tensor> = case.inputs.iter().map(|i| i.1.clone()).collect();
    qforge_ir::interp::run(&g, &ins).is_ok_and(|o| o[0].to_f64_vec().iter().all(|v| v.abs() < 1e30))
}

proptest! {
    #![proptest_config(cfg(64))]

    #[test]
    fn unary_smooth(dims in small_dims(), seed in any::<u64>(), which in 0usize..12) {
        let (u, lo, hi) = [
            (UnaryOp::Sigmoid, -3.0, 3.0),
            (UnaryOp::Tanh, -2.0, 2.0),
            (UnaryOp::Exp, -2.0, 2.0),
            (UnaryOp::Log, 0.5, 3.0),
            (UnaryOp::Sqrt, 0.5, 3.0),
            (UnaryOp::Reciprocal, 0.5, 3.0),
            (UnaryOp::Neg, -2.0, 2.0),
            (UnaryOp::Erf, -2.0, 2.0),
            (UnaryOp::Gelu, -3.0, 3.0),
            (UnaryOp::GeluTanh, -3.0, 3.0),
            (UnaryOp::Sin, -3.0, 3.0),
            (UnaryOp::Cos, -3.0, 3.0),
        ][which];
        check(&unary_case(u, dims, lo, hi, &[], seed))?;
    }

    #[test]
    fn unary_kinked(dims in small_dims(), seed in any::<u64>(), which in 0usize..3) {
        let (u, kinks): (UnaryOp, &[f64]) =
            [(UnaryOp::Relu, &[0.0][..]), (UnaryOp::Abs, &[0.0][..]), (UnaryOp::HardSwish, &[-3.0, 3.0][..])][which];
        check(&unary_case(u, dims, -4.0, 4.0, kinks, seed))?;
    }

    #[test]
    fn activations_with_attributes(
        dims in small_dims(),
        seed in any::<u64>(),
        which in 0usize..4,
        a in 0.05f32..0.5,
        lo in -1.5f32..0.0,
        width in 0.5f32..2.0,
    ) {
        let n = numel(&dims);
        let mut rng = Rng::new(seed);
        let (op, kinks) = match which {
            0 => (Op::LeakyRelu { alpha: a }, vec![0.0]),
            1 => (Op::Clip { min: lo, max: lo + width }, vec![lo as f64, (lo + width) as f64]),
            2 => (Op::Clip { min: 0.0, max: 6.0 }, vec![0.0, 6.0]),
            _ => {
                let (alpha, beta) = (a, 0.5);
                (Op::HardSigmoid { alpha, beta }, vec![-0.5 / alpha as f64, 0.5 / alpha as f64])
            }
        };
        let (l, h) = if which == 2 { (-2.0, 8.0) } else { (-3.0, 3.0) };
        let x = rng.away_from(n, l, h, &kinks, 4.0 * H);
        let case = Case::new(move |g, v| node(g, op.clone(), &[v[0]]), seed).input("x", f32_tensor(&dims, x));
        check(&case)?;
    }

    #[test]
    fn binary_broadcasting((full, da, db) in broadcast_pair(), seed in any::<u64>(), which in 0usize..7) {
        let _ = full;
        let mut rng = Rng::new(seed);
        let (a, b) = match which {
            // pow: a positive base; max/min: operands from interleaved grids, never close
            4 | 5 => (rng.uniform(numel(&da), 0.5, 2.0), rng.uniform(numel(&db), -1.5, 2.5)),
            6 => (
                (0..numel(&da)).map(|_| (rng.index(40) as f64 - 20.0) * 0.1).collect(),
                (0..numel(&db)).map(|_| (rng.index(40) as f64 - 20.0) * 0.1 + 0.05).collect(),
            ),
            3 => (rng.uniform(numel(&da), -2.0, 2.0), rng.away_from(numel(&db), -2.0, 2.0, &[0.0], 0.5)),
            _ => (rng.uniform(numel(&da), -2.0, 2.0), rng.uniform(numel(&db), -2.0, 2.0)),
        };
        use BinaryOp::*;
        let op = [Add, Sub, Mul, Div, Pow, Pow, Max][which];
        let op = if which == 6 && seed % 2 == 0 { BinaryOp::Min } else { op };
        let mut case =
            Case::new(move |g, v| node(g, Op::Binary(op), &[v[0], v[1]]), seed).input("a", f32_tensor(&da, a));
        // pow with a constant exponent (5) and with a differentiated one (4)
        case = if which == 5 { case.fixed("b", f32_tensor(&db, b)) } else { case.input("b", f32_tensor(&db, b)) };
        check(&case)?;
    }

    #[test]
    fn where_broadcasting((_full, da, db) in broadcast_pair(), seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let out = broadcast_dims(&da, &db);
        let cond: Vec<f64> = (0..numel(&out)).map(|_| if rng.next() < 0.5 { 1.0 } else { 0.0 }).collect();
        let cond = Tensor::from_f64_iter(DType::Bool, out.clone(), cond.into_iter());
        let case = Case::new(move |g, v| node(g, Op::Where, &[v[0], v[1], v[2]]), seed)
            .fixed("cond", cond)
            .input("x", f32_tensor(&da, rng.uniform(numel(&da), -1.0, 1.0)))
            .input("y", f32_tensor(&db, rng.uniform(numel(&db), -1.0, 1.0)));
        check(&case)?;
    }

    #[test]
    fn conv_1d_and_2d(
        sp in 1usize..3,
        n in 1usize..3,
        group in 1usize..3,
        cg in 1usize..3,
        mg in 1usize..3,
        k in prop::collection::vec(1usize..4, 2),
        s in prop::collection::vec(1usize..3, 2),
        d in prop::collection::vec(1usize..3, 2),
        pads in prop::collection::vec(0usize..3, 4),
        extra in prop::collection::vec(0usize..4, 2),
        bias in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let pads: Vec<usize> = pads[..sp].iter().chain(&pads[2..2 + sp]).copied().collect();
        let spec = ConvSpec { sp, n, group, cg, mg, k: &k, s: &s, d: &d, pads: &pads, extra: &extra, bias };
        check(&conv_case(&spec, seed))?;
    }

    #[test]
    fn conv_transpose(
        sp in 1usize..3,
        n in 1usize..3,
        group in 1usize..3,
        cg in 1usize..3,
        mg in 1usize..3,
        size in prop::collection::vec(1usize..5, 2),
        k in prop::collection::vec(1usize..4, 2),
        s in prop::collection::vec(1usize..3, 2),
        d in prop::collection::vec(1usize..3, 2),
        pads in prop::collection::vec(0i64..3, 4),
        op in prop::collection::vec(0usize..2, 2),
        bias in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let c = group * cg;
        let mut xd = vec![n, c];
        xd.extend_from_slice(&size[..sp]);
        let mut wd = vec![c, mg];
        wd.extend_from_slice(&k[..sp]);
        let attrs = qforge_ir::ConvTransposeAttrs {
            kernel: k[..sp].to_vec(),
            strides: s[..sp].to_vec(),
            pads: pads[..sp].iter().chain(&pads[2..2 + sp]).copied().collect(),
            dilations: d[..sp].to_vec(),
            group,
            output_padding: (0..sp).map(|i| op[i].min(s[i] - 1)).collect(),
        };
        let x_ty = TensorType::new(DType::F32, Shape::fixed(&xd));
        let w_ty = TensorType::new(DType::F32, Shape::fixed(&wd));
        // an output of at least one element
        let fits = qforge_ir::infer::infer(&Op::ConvTranspose(attrs.clone()), &[Some(&x_ty), Some(&w_ty)], None);
        prop_assume!(fits.is_ok());
        let mut rng = Rng::new(seed);
        let mut case = Case::new(move |g, v| node(g, Op::ConvTranspose(attrs.clone()), v), seed)
            .input("x", f32_tensor(&xd, rng.uniform(numel(&xd), -1.0, 1.0)))
            .input("w", f32_tensor(&wd, rng.uniform(numel(&wd), -1.0, 1.0)));
        if bias {
            case = case.input("b", f32_tensor(&[group * mg], rng.uniform(group * mg, -1.0, 1.0)));
        }
        check(&case)?;
    }

    #[test]
    fn gemm_every_form(
        m in 1usize..4, kk in 1usize..4, nn in 1usize..4,
        ta in any::<bool>(), tb in any::<bool>(),
        alpha in -2.0f32..2.0, beta in -2.0f32..2.0,
        c_form in 0usize..6,
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let ad = if ta { vec![kk, m] } else { vec![m, kk] };
        let bd = if tb { vec![nn, kk] } else { vec![kk, nn] };
        let forms = [None, Some(vec![]), Some(vec![nn]), Some(vec![1, nn]), Some(vec![m, 1]), Some(vec![m, nn])];
        let cd: Option<Vec<usize>> = forms[c_form].clone();
        let op = Op::Gemm { alpha, beta, trans_a: ta, trans_b: tb };
        let mut case = Case::new(move |g, v| node(g, op.clone(), v), seed)
            .input("a", f32_tensor(&ad, rng.uniform(numel(&ad), -1.0, 1.0)))
            .input("b", f32_tensor(&bd, rng.uniform(numel(&bd), -1.0, 1.0)));
        if let Some(cd) = cd {
            case = case.input("c", f32_tensor(&cd, rng.uniform(numel(&cd), -1.0, 1.0)));
        }
        check(&case)?;
    }

    #[test]
    fn matmul_batched_and_broadcast(
        m in 1usize..4, kk in 1usize..4, nn in 1usize..4,
        batch in prop::collection::vec(1usize..3, 0..3),
        a_lead in 0usize..3, b_lead in 0usize..3,
        a_vec in any::<bool>(), b_vec in any::<bool>(),
        ones in prop::collection::vec(any::<bool>(), 3),
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let lead = |drop: usize, flip: bool| -> Vec<usize> {
            let from = drop.min(batch.len());
            batch[from..].iter().enumerate().map(|(i, &d)| if flip && ones[i % 3] { 1 } else { d }).collect()
        };
        let mut ad = if a_vec { vec![] } else { lead(a_lead, true) };
        ad.extend(if a_vec { vec![kk] } else { vec![m, kk] });
        let mut bd = if b_vec { vec![] } else { lead(b_lead, false) };
        bd.extend(if b_vec { vec![kk] } else { vec![kk, nn] });
        let case = Case::new(move |g, v| node(g, Op::MatMul, &[v[0], v[1]]), seed)
            .input("a", f32_tensor(&ad, rng.uniform(numel(&ad), -1.0, 1.0)))
            .input("b", f32_tensor(&bd, rng.uniform(numel(&bd), -1.0, 1.0)));
        check(&case)?;
    }

    #[test]
    fn max_and_average_pool(
        sp in 1usize..3,
        n in 1usize..3,
        c in 1usize..3,
        k in prop::collection::vec(1usize..4, 2),
        s in prop::collection::vec(1usize..3, 2),
        d in prop::collection::vec(1usize..3, 2),
        pads in prop::collection::vec(0usize..3, 4),
        extra in prop::collection::vec(0usize..4, 2),
        ceil in any::<bool>(),
        include in any::<bool>(),
        max in any::<bool>(),
        seed in any::<u64>(),
    ) {
        // pads below the kernel (ONNX); average pooling without dilation (ONNX AveragePool-19
        // has it, but keep to the common form)
        let d: Vec<usize> = if max { d } else { vec![1, 1] };
        let pads: Vec<usize> =
            (0..2 * sp).map(|i| pads[if i < sp { i } else { 2 + i - sp }].min(k[i % sp] - 1)).collect();
        let mut xd = vec![n, c];
        for i in 0..sp {
            xd.push(((k[i] - 1) * d[i] + 1 + extra[i]).saturating_sub(pads[i] + pads[sp + i]).max(1));
        }
        let p = pool_attrs(sp, &k, &s, &d, &pads, ceil, include);
        let mut rng = Rng::new(seed);
        let x = if max { rng.distinct(numel(&xd), 8.0 * H) } else { rng.uniform(numel(&xd), -1.0, 1.0) };
        let op = if max { Op::MaxPool(p) } else { Op::AveragePool(p) };
        let case = Case::new(move |g, v| node(g, op.clone(), &[v[0]]), seed).input("x", f32_tensor(&xd, x));
        prop_assume!(finite_forward(&case));
        check(&case)?;
    }

    #[test]
    fn global_pools(dims in prop::collection::vec(1usize..4, 3..5), max in any::<bool>(), seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let x = if max { rng.distinct(numel(&dims), 8.0 * H) } else { rng.uniform(numel(&dims), -1.0, 1.0) };
        let op = if max { Op::GlobalMaxPool } else { Op::GlobalAveragePool };
        check(&Case::new(move |g, v| node(g, op.clone(), &[v[0]]), seed).input("x", f32_tensor(&dims, x)))?;
    }

    #[test]
    fn softmax_and_log_softmax(dims in small_dims(), axis in -3i64..3, log in any::<bool>(), seed in any::<u64>()) {
        let r = dims.len() as i64;
        let axis = axis.rem_euclid(r) - if axis < 0 { r } else { 0 };
        // a softmax over one element is constant
        prop_assume!(dims[axis.rem_euclid(r) as usize] >= 2);
        let mut rng = Rng::new(seed);
        let x = rng.uniform(numel(&dims), -2.0, 2.0);
        let op = if log { Op::LogSoftmax { axis } } else { Op::Softmax { axis } };
        check(&Case::new(move |g, v| node(g, op.clone(), &[v[0]]), seed).input("x", f32_tensor(&dims, x)))?;
    }

    #[test]
    fn layer_norm(
        dims in prop::collection::vec(1usize..5, 1..4),
        axis in 0usize..3,
        trailing in 0usize..3,
        bias in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let r = dims.len();
        let axis = axis.min(r - 1);
        // at least two normalized elements (one alone normalizes to 0 whatever it is)
        prop_assume!(numel(&dims[axis..]) >= 2);
        let sd: Vec<usize> = dims[(axis + trailing).min(r - 1)..].to_vec();
        let mut rng = Rng::new(seed);
        let op = Op::LayerNorm { axis: axis as i64, epsilon: 1e-5 };
        // distinct values well apart: two close values normalize to a step whose curvature the
        // difference quotient cannot follow
        let mut case = Case::new(move |g, v| node(g, op.clone(), v), seed)
            .input("x", f32_tensor(&dims, rng.distinct(numel(&dims), 0.3)))
            .input("scale", f32_tensor(&sd, rng.uniform(numel(&sd), 0.5, 1.5)));
        if bias {
            case = case.input("bias", f32_tensor(&sd, rng.uniform(numel(&sd), -1.0, 1.0)));
        }
        check(&case)?;
    }

    #[test]
    fn batch_norm(
        n in 1usize..3,
        c in 1usize..4,
        rest in prop::collection::vec(1usize..4, 0..3),
        seed in any::<u64>(),
    ) {
        let mut dims = vec![n, c];
        dims.extend(rest);
        let mut rng = Rng::new(seed);
        let op = Op::BatchNorm { epsilon: 1e-5 };
        let case = Case::new(move |g, v| node(g, op.clone(), v), seed)
            .input("x", f32_tensor(&dims, rng.uniform(numel(&dims), -2.0, 2.0)))
            .input("scale", f32_tensor(&[c], rng.uniform(c, 0.5, 1.5)))
            .input("bias", f32_tensor(&[c], rng.uniform(c, -1.0, 1.0)))
            .input("mean", f32_tensor(&[c], rng.uniform(c, -0.5, 0.5)))
            .input("var", f32_tensor(&[c], rng.uniform(c, 0.5, 1.5)));
        check(&case)?;
    }

    #[test]
    fn reductions(
        dims in small_dims(),
        axes in prop::collection::vec(any::<bool>(), 3),
        keepdims in any::<bool>(),
        which in 0usize..3,
        seed in any::<u64>(),
    ) {
        let axes: Vec<i64> = (0..dims.len()).filter(|&i| axes[i]).map(|i| i as i64).collect();
        let mut rng = Rng::new(seed);
        let x = if which == 2 { rng.distinct(numel(&dims), 8.0 * H) } else { rng.uniform(numel(&dims), -2.0, 2.0) };
        let op = match which {
            0 => Op::ReduceSum { axes, keepdims },
            1 => Op::ReduceMean { axes, keepdims },
            _ => Op::ReduceMax { axes, keepdims },
        };
        check(&Case::new(move |g, v| node(g, op.clone(), &[v[0]]), seed).input("x", f32_tensor(&dims, x)))?;
    }

    #[test]
    fn reshapes(dims in small_dims(), which in 0usize..5, axis in 0usize..4, seed in any::<u64>()) {
        let r = dims.len();
        let op = match which {
            0 => Op::Reshape { shape: vec![-1] },
            1 => Op::Flatten { axis: axis.min(r) as i64 },
            2 => Op::Unsqueeze { axes: vec![axis.min(r) as i64] },
            3 => Op::Identity,
            _ => {
                let mut perm: Vec<usize> = (0..r).collect();
                let mut rng = Rng::new(seed);
                for i in (1..r).rev() {
                    perm.swap(i, rng.index(i + 1));
                }
                Op::Transpose { perm }
            }
        };
        let mut rng = Rng::new(seed);
        let x = rng.uniform(numel(&dims), -1.0, 1.0);
        check(&Case::new(move |g, v| node(g, op.clone(), &[v[0]]), seed).input("x", f32_tensor(&dims, x)))?;
    }

    #[test]
    fn squeeze_and_expand(
        dims in small_dims(),
        ones in prop::collection::vec(any::<bool>(), 3),
        lead in 0usize..3,
        seed in any::<u64>(),
    ) {
        // x has 1s where `ones`; squeeze them, or expand them (and `lead` new axes) to `dims`
        let xd: Vec<usize> = dims.iter().enumerate().map(|(i, &d)| if ones[i] { 1 } else { d }).collect();
        let mut rng = Rng::new(seed);
        let x = rng.uniform(numel(&xd), -1.0, 1.0);
        let squeeze_axes: Vec<i64> = (0..xd.len()).filter(|&i| xd[i] == 1).map(|i| i as i64).collect();
        let op = if seed % 2 == 0 && !squeeze_axes.is_empty() {
            Op::Squeeze { axes: squeeze_axes }
        } else {
            let mut shape: Vec<i64> = vec![2; lead];
            shape.extend(dims.iter().map(|&d| d as i64));
            Op::Expand { shape }
        };
        check(&Case::new(move |g, v| node(g, op.clone(), &[v[0]]), seed).input("x", f32_tensor(&xd, x)))?;
    }

    #[test]
    fn concat(
        dims in small_dims(),
        axis in 0usize..3,
        sizes in prop::collection::vec(1usize..4, 1..4),
        seed in any::<u64>(),
    ) {
        let a = axis.min(dims.len() - 1);
        let mut rng = Rng::new(seed);
        let mut case = Case::new(move |g, v| node(g, Op::Concat { axis: a as i64 }, v), seed);
        for (i, &s) in sizes.iter().enumerate() {
            let mut d = dims.clone();
            d[a] = s;
            case = case.input(&format!("x{i}"), f32_tensor(&d, rng.uniform(numel(&d), -1.0, 1.0)));
        }
        check(&case)?;
    }

    #[test]
    fn slice(
        dims in prop::collection::vec(2usize..6, 1..4),
        bounds in prop::collection::vec((-6i64..6, -7i64..7, 0usize..4), 1..3),
        seed in any::<u64>(),
    ) {
        let r = dims.len();
        let mut starts = vec![];
        let mut ends = vec![];
        let mut axes = vec![];
        let mut steps = vec![];
        for (i, &(s, e, st)) in bounds.iter().enumerate() {
            if i >= r {
                break;
            }
            let step = [1i64, 2, -1, -2][st];
            axes.push(i as i64);
            starts.push(s);
            ends.push(if e == 6 { i64::MAX } else { e });
            steps.push(step);
        }
        let op = Op::Slice { starts, ends, axes, steps };
        // an empty slice has nothing to differentiate
        let out = qforge_ir::infer::infer(&op, &[Some(&TensorType::new(DType::F32, Shape::fixed(&dims)))], None);
        prop_assume!(out.is_ok_and(|t| t[0].shape.as_fixed().is_some_and(|d| numel(&d) > 0)));
        let mut rng = Rng::new(seed);
        let x = rng.uniform(numel(&dims), -1.0, 1.0);
        check(&Case::new(move |g, v| node(g, op.clone(), &[v[0]]), seed).input("x", f32_tensor(&dims, x)))?;
    }

    #[test]
    fn split(
        dims in small_dims(),
        axis in 0usize..3,
        cuts in prop::collection::vec(any::<bool>(), 3),
        all in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let a = axis.min(dims.len() - 1);
        // parts of sizes that sum to the axis, from cut points after each position
        let mut sizes = vec![];
        let mut run = 0;
        for i in 0..dims[a] {
            run += 1;
            if i + 1 == dims[a] || cuts[i % 3] {
                sizes.push(run);
                run = 0;
            }
        }
        let k = sizes.len();
        let fwd = move |g: &mut Graph, v: &[Value]| {
            let op = Op::Split { axis: a as i64, sizes: sizes.clone() };
            let id = g.add_node(op, vec![Some(v[0])], None, "split").expect("split").node;
            // every part, in reverse order (or the last part alone: the others get no gradient)
            let parts: Vec<Value> = (0..k).rev().map(|p| Value::new(id, p)).collect();
            if all { node(g, Op::Concat { axis: a as i64 }, &parts) } else { parts[0] }
        };
        let mut rng = Rng::new(seed);
        let x = rng.uniform(numel(&dims), -1.0, 1.0);
        check(&Case::new(fwd, seed).input("x", f32_tensor(&dims, x)))?;
    }

    #[test]
    fn gather(
        dims in small_dims(),
        axis in 0usize..3,
        idims in prop::collection::vec(1usize..4, 0..3),
        seed in any::<u64>(),
    ) {
        let a = axis.min(dims.len() - 1);
        let mut rng = Rng::new(seed);
        let n = dims[a] as i64;
        // repeated and negative indices included
        let idx: Vec<i64> = (0..numel(&idims)).map(|_| rng.index(2 * n as usize) as i64 - n).collect();
        let x = rng.uniform(numel(&dims), -1.0, 1.0);
        let case = Case::new(move |g, v| node(g, Op::Gather { axis: a as i64 }, &[v[0], v[1]]), seed)
            .input("x", f32_tensor(&dims, x))
            .fixed("indices", Tensor::from_i64(idims.clone(), idx));
        check(&case)?;
    }

    #[test]
    fn gather_elements(
        dims in small_dims(),
        axis in 0usize..3,
        less in prop::collection::vec(0usize..3, 3),
        seed in any::<u64>(),
    ) {
        let a = axis.min(dims.len() - 1);
        // indices no larger than the data (along the axis too: see the rule)
        let idims: Vec<usize> = dims.iter().enumerate().map(|(i, &d)| d.saturating_sub(less[i]).max(1)).collect();
        let mut rng = Rng::new(seed);
        let n = dims[a];
        let idx: Vec<i64> = (0..numel(&idims)).map(|_| rng.index(n) as i64).collect();
        let x = rng.uniform(numel(&dims), -1.0, 1.0);
        let case = Case::new(move |g, v| node(g, Op::GatherElements { axis: a as i64 }, &[v[0], v[1]]), seed)
            .input("x", f32_tensor(&dims, x))
            .fixed("indices", Tensor::from_i64(idims.clone(), idx));
        check(&case)?;
    }

    #[test]
    fn tile(dims in small_dims(), repeats in prop::collection::vec(1usize..4, 3), seed in any::<u64>()) {
        let repeats = repeats[..dims.len()].to_vec();
        let mut rng = Rng::new(seed);
        let x = rng.uniform(numel(&dims), -1.0, 1.0);
        let op = Op::Tile { repeats };
        check(&Case::new(move |g, v| node(g, op.clone(), &[v[0]]), seed).input("x", f32_tensor(&dims, x)))?;
    }

    #[test]
    fn pad_constant(
        dims in small_dims(),
        pads in prop::collection::vec(-1i64..3, 6),
        value in -1.0f64..1.0,
        seed in any::<u64>(),
    ) {
        let r = dims.len();
        let mut p: Vec<i64> = pads[..r].to_vec();
        p.extend_from_slice(&pads[3..3 + r]);
        // a crop keeps at least one element
        prop_assume!((0..r).all(|i| dims[i] as i64 + p[i] + p[r + i] >= 1));
        let op = Op::Pad { mode: PadMode::Constant, pads: p, computed: vec![], value };
        let mut rng = Rng::new(seed);
        let x = rng.uniform(numel(&dims), -1.0, 1.0);
        check(&Case::new(move |g, v| node(g, op.clone(), &[v[0]]), seed).input("x", f32_tensor(&dims, x)))?;
    }

    #[test]
    fn cast_float_to_float(dims in small_dims(), seed in any::<u64>()) {
        // f32 -> f64 (squared in f64) -> f32
        let mut rng = Rng::new(seed);
        let x = rng.uniform(numel(&dims), -1.0, 1.0);
        let fwd = |g: &mut Graph, v: &[Value]| {
            let w = node(g, Op::Cast { to: DType::F64 }, &[v[0]]);
            let sq = node(g, Op::Binary(BinaryOp::Mul), &[w, w]);
            node(g, Op::Cast { to: DType::F32 }, &[sq])
        };
        check(&Case::new(fwd, seed).input("x", f32_tensor(&dims, x)))?;
    }
}

// ---------------------------------------------------------------------------------------------
// The golden

fn fixture(name: &str) -> Graph {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/autodiff").join(name);
    let text = std::fs::read_to_string(&path).expect("fixture readable");
    qforge_ir::text::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const CNN_WEIGHTS: [&str; 6] = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc.weight", "fc.bias"];

/// The small CNN's backward graph, printed: the golden of the rules' output and of its naming.
#[test]
fn small_cnn_backward_graph() {
    let g = fixture("small_cnn.qir");
    let d = differentiate(&g, 1, &CNN_WEIGHTS).expect("the CNN differentiates");
    qforge_ir::verify::verify(&d.graph).expect("the backward graph verifies");
    assert_eq!(d.grads, vec![2, 3, 4, 5, 6, 7]);
    let text = qforge_ir::text::print_default(&d.graph).expect("prints");
    // differentiating again gives the same text
    let again = differentiate(&g, 1, &CNN_WEIGHTS).expect("the CNN differentiates");
    assert_eq!(qforge_ir::text::print_default(&again.graph).expect("prints"), text);
    insta::with_settings!({ snapshot_path => "../../snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("autodiff__small_cnn", text);
    });
    // the text form carries the backward ops: printed in full, it parses back to the same text
    let full = qforge_ir::text::print(&d.graph, qforge_ir::text::ConstMode::Full).expect("prints");
    let back = qforge_ir::text::parse(&full).expect("parses back");
    assert_eq!(qforge_ir::text::print(&back, qforge_ir::text::ConstMode::Full).expect("prints"), full);
}

// ---------------------------------------------------------------------------------------------
// Conventions, dtypes, errors

/// Round passes the gradient through (straight-through); floor, ceil and sign give zeros.
#[test]
fn round_is_straight_through_and_floor_ceil_sign_are_flat() {
    let dims = [2usize, 5];
    let mut rng = Rng::new(7);
    let x = rng.uniform(10, -3.0, 3.0);
    let r: Vec<f64> = Rng::new(7 ^ 0x5eed).uniform(10, -1.0, 1.0);
    for (u, through) in
        [(UnaryOp::Round, true), (UnaryOp::Floor, false), (UnaryOp::Ceil, false), (UnaryOp::Sign, false)]
    {
        let case = Case::new(move |g, v| node(g, Op::Unary(u), &[v[0]]), 7).input("x", f32_tensor(&dims, x.clone()));
        let (_, grads) = analytic(&case, DType::F32).expect("differentiates");
        let want: Vec<f64> = if through { r.iter().map(|&v| v as f32 as f64).collect() } else { vec![0.0; 10] };
        assert_eq!(grads[0].to_f64_vec(), want, "{}", Op::Unary(u).name());
    }
}

/// A fake quantizer `(clip(round(x / s) + z, lo, hi) - z) * s` differentiated, as the separate
/// ops and as the fused `fake_quantize`: `x` gets `dy` where it is not clipped, the scale gets the
/// LSQ gradient (Esser et al. 2020): `sum dy * (round(x/s) - x/s)` inside the range,
/// `sum dy * (lo - z)` or `(hi - z)` where clipped.
#[test]
fn fake_quantizer_gets_the_lsq_gradient() {
    for fused in [false, true] {
        lsq_gradient(fused);
    }
}

fn lsq_gradient(fused: bool) {
    let (lo, hi, z) = (-8.0f64, 7.0f64, 1.0f64);
    let n = 64;
    let mut rng = Rng::new(11);
    let x = rng.uniform(n, -2.0, 2.0);
    let s = 0.17f64;
    let fwd = move |g: &mut Graph, v: &[Value]| {
        let zc = g.add_const("z", Tensor::scalar_f32(z as f32));
        if fused {
            let op = Op::FakeQuantize { qmin: lo as i32, qmax: hi as i32 };
            return g.add_node(op, vec![Some(v[0]), Some(v[1]), Some(zc)], None, "fq").unwrap();
        }
        let q = node(g, Op::Binary(BinaryOp::Div), &[v[0], v[1]]);
        let q = node(g, Op::Unary(UnaryOp::Round), &[q]);
        let q = node(g, Op::Binary(BinaryOp::Add), &[q, zc]);
        let q = node(g, Op::Clip { min: lo as f32, max: hi as f32 }, &[q]);
        let q = node(g, Op::Binary(BinaryOp::Sub), &[q, zc]);
        node(g, Op::Binary(BinaryOp::Mul), &[q, v[1]])
    };
    let case = Case::new(fwd, 11).input("x", f32_tensor(&[n], x.clone())).input("s", f32_tensor(&[], vec![s]));
    let (_, grads) = analytic(&case, DType::F32).expect("differentiates");
    let r = Rng::new(11 ^ 0x5eed).uniform(n, -1.0, 1.0);
    let (mut want_s, mut want_x) = (0.0f64, vec![0.0f64; n]);
    let mut clipped = 0;
    for i in 0..n {
        let (xs, r32) = ((x[i] as f32 / s as f32) as f64, r[i] as f32 as f64);
        let q = xs.round_ties_even() + z;
        if q < lo {
            want_s += r32 * (lo - z);
            clipped += 1;
        } else if q > hi {
            want_s += r32 * (hi - z);
            clipped += 1;
        } else {
            want_s += r32 * (xs.round_ties_even() - xs);
            want_x[i] = r32;
        }
    }
    assert!(clipped > 0 && clipped < n, "the case clips some values and not others ({clipped} of {n})");
    let gx = grads[0].to_f64_vec();
    for i in 0..n {
        assert!((gx[i] - want_x[i]).abs() <= 1e-6, "fused {fused}: x[{i}]: {} vs {}", gx[i], want_x[i]);
    }
    let gs = grads[1].to_f64_vec()[0];
    assert!((gs - want_s).abs() <= 1e-4 * want_s.abs().max(1.0), "fused {fused}: scale gradient {gs} vs LSQ {want_s}");
}

/// f16 and bf16 forwards get backward graphs of their own dtype, within their precision of the
/// f32 gradient: the relative error of the whole gradient at most 1e-2 for f16 (11-bit
/// significand) and 5e-2 for bf16 (8-bit), through a few roundings per element.
#[test]
fn half_precision_backward_keeps_its_dtype() {
    let spec = ConvSpec {
        sp: 2,
        n: 1,
        group: 1,
        cg: 2,
        mg: 2,
        k: &[3, 3],
        s: &[1, 1],
        d: &[1, 1],
        pads: &[1, 1, 1, 1],
        extra: &[2, 2],
        bias: true,
    };
    let conv = conv_case(&spec, 3);
    let mut rng = Rng::new(5);
    let gemm = Case::new(|g, v| node(g, Op::Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: true }, v), 5)
        .input("a", f32_tensor(&[3, 4], rng.uniform(12, -1.0, 1.0)))
        .input("b", f32_tensor(&[2, 4], rng.uniform(8, -1.0, 1.0)))
        .input("c", f32_tensor(&[2], rng.uniform(2, -1.0, 1.0)));
    let softmax = Case::new(|g, v| node(g, Op::LogSoftmax { axis: -1 }, &[v[0]]), 6)
        .input("x", f32_tensor(&[2, 5], rng.uniform(10, -2.0, 2.0)));
    let relu = unary_case(UnaryOp::Relu, vec![3, 4], -2.0, 2.0, &[0.0], 8);
    for (name, case) in [("conv", conv), ("gemm", gemm), ("log_softmax", softmax), ("relu", relu)] {
        let (_, want) = analytic(&case, DType::F32).expect("f32 differentiates");
        for (dt, tol) in [(DType::F16, 1e-2), (DType::BF16, 5e-2)] {
            let (g, got) = analytic(&case, dt).unwrap_or_else(|e| panic!("{name} {dt}: {e}"));
            // every backward node computes in the forward's dtype (the loss, and so its own
            // gradient, is f64)
            for id in g.node_ids() {
                let n = g.node(id);
                for t in &n.outputs {
                    let ok = !t.dtype.is_float() || t.dtype == dt || t.dtype == DType::F64;
                    assert!(ok, "{name} {dt}: `{}` is {}", n.name, t.dtype);
                }
            }
            let (mut d2, mut n2) = (0.0f64, 0.0f64);
            for (a, b) in got.iter().zip(&want) {
                for (x, y) in a.to_f64_vec().iter().zip(b.to_f64_vec()) {
                    d2 += (x - y).powi(2);
                    n2 += y * y;
                }
            }
            let err = (d2 / n2).sqrt();
            assert!(err <= tol, "{name} {dt}: relative error {err:.3e} > {tol:e}");
        }
    }
}

/// An input no path connects to the loss gets a zero gradient; integer inputs carry none.
#[test]
fn unconnected_inputs_get_zeros() {
    let text = "graph g(%x: f32[N,3], %u: f32[2,2]) -> (loss: f32[]) {
  %0 = reduce_sum %x {axes=[], keepdims=false} : f32[]  # \"s\"
  return %0
}
";
    let g = qforge_ir::text::parse(text).expect("parses");
    let d = differentiate(&g, 0, &["x", "u"]).expect("differentiates");
    qforge_ir::verify::verify(&d.graph).expect("verifies");
    let x = Tensor::from_f64_iter(DType::F32, vec![2, 3], (0..6).map(|i| i as f64));
    let u = Tensor::zeros(DType::F32, vec![2, 2]);
    let out = qforge_ir::interp::run(&d.graph, &[x, u]).expect("runs");
    assert_eq!(out[d.grads[0]].to_f64_vec(), vec![1.0; 6]);
    assert_eq!(out[d.grads[1]].to_f64_vec(), vec![0.0; 4]);
}

/// An op without a rule on the loss's path is one error naming the node and the op; bad requests
/// are refused with what is wrong.
#[test]
fn errors_name_the_node_and_the_op() {
    let text = "graph g(%x: f32[3], %i: i64[3]) -> (loss: f32[], v: f32[3]) {
  %0 = cumsum %x {axis=0, exclusive=false, reverse=false} : f32[3]  # \"running\"
  %1 = reduce_sum %0 {axes=[], keepdims=false} : f32[]  # \"s\"
  return %1, %0
}
";
    let g = qforge_ir::text::parse(text).expect("parses");
    let e = differentiate(&g, 0, &["x"]).expect_err("no rule for cumsum").to_string();
    assert_eq!(e, "node `running`: no gradient rule for `cumsum`");
    let q = "graph q(%x: f32[4]) -> (loss: f32[]) {
  %0 = quantize %x : u8<0.1:128>[4]  # \"q\"
  %1 = dequantize %0 : f32[4]  # \"dq\"
  %2 = reduce_sum %1 {axes=[], keepdims=false} : f32[]  # \"s\"
  return %2
}
";
    let q = qforge_ir::text::parse(q).expect("parses");
    let e = differentiate(&q, 0, &["x"]).expect_err("a quantizer cuts the gradient").to_string();
    assert!(e.starts_with("node `q` (quantize): no gradient through a quantizer"), "{e}");
    let e = differentiate(&g, 1, &["x"]).expect_err("not a scalar").to_string();
    assert!(e.contains("must be a float scalar"), "{e}");
    let e = differentiate(&g, 0, &["nope"]).expect_err("not an input").to_string();
    assert!(e.contains("`nope` is not an input"), "{e}");
    let e = differentiate(&g, 0, &["i"]).expect_err("integer").to_string();
    assert!(e.contains("only float inputs"), "{e}");
}

/// The small CNN's backward graph on the JIT: it runs (the backward ops without a kernel are host
/// steps) and agrees with the interpreter, before and after the optimizer.
#[test]
fn small_cnn_backward_runs_on_the_jit() {
    let g = fixture("small_cnn.qir");
    let d = differentiate(&g, 1, &CNN_WEIGHTS).expect("the CNN differentiates");
    let inputs = qforge_tests::fixture_inputs(&d.graph);
    let expected = qforge_ir::interp::run(&d.graph, &inputs).expect("interpreter runs");
    qforge_tests::check_jit_within(&d.graph, &inputs, &expected, 1e-4).expect("the JIT agrees");
    // and after the optimizer (which keeps the backward ops it has no rule for)
    let optimized = qforge::Compiler::new(qforge::PipelineOptions::default())
        .and_then(|c| c.optimize(d.graph.clone()))
        .expect("the optimizer takes the backward graph");
    let got = qforge_ir::interp::run(&optimized, &inputs).expect("the optimized graph runs");
    for (i, (a, b)) in got.iter().zip(&expected).enumerate() {
        let scale = b.to_f64_vec().iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
        for (u, v) in a.to_f64_vec().iter().zip(b.to_f64_vec()) {
            assert!((u - v).abs() <= 1e-4 * scale, "output {i} after the optimizer: {u} vs {v}");
        }
    }
    qforge_tests::check_jit_within(&optimized, &inputs, &got, 1e-4).expect("the JIT agrees after the optimizer");
}

/// A forward on an input of symbolic batch `N`.
type BatchForward = fn(&mut Graph, Value) -> Value;

/// The loss `sum(f(x) * r)` for `x: f32[N?, 2, 5, 5]` (`n` the batch, symbolic when `None`) and
/// its gradient with respect to every input.
fn batch_gradients(f: BatchForward, n: Option<usize>, batch: usize) -> Result<Vec<Tensor>, String> {
    let mut g = Graph::new("batch");
    let n_dim = n.map_or(qforge_ir::Dim::Sym("N".into()), qforge_ir::Dim::Fixed);
    let dims = vec![n_dim, 2.into(), 5.into(), 5.into()];
    let x = g.add_input("x", TensorType::new(DType::F32, Shape(dims)));
    let y = f(&mut g, x);
    let yd = g.value_type(y).shape.0.clone();
    let mut rd: Vec<usize> = yd[1..].iter().map(|d| d.fixed().expect("fixed")).collect();
    rd.insert(0, 1);
    let r = g.add_const("r", f32_tensor(&rd, Rng::new(3).uniform(numel(&rd), -1.0, 1.0)));
    let p = node(&mut g, Op::Binary(BinaryOp::Mul), &[y, r]);
    let l = node(&mut g, Op::ReduceSum { axes: vec![], keepdims: false }, &[p]);
    g.add_output("loss", l);
    let names: Vec<String> = g.inputs().iter().map(|&i| g.node(i).name.clone()).collect();
    let wrt: Vec<&str> = names.iter().map(String::as_str).collect();
    let d = differentiate(&g, 0, &wrt).map_err(|e| e.to_string())?;
    qforge_ir::verify::verify(&d.graph).map_err(|e| format!("verify: {e}"))?;
    let mut rng = Rng::new(9);
    let inputs: Vec<Tensor> = d
        .graph
        .inputs()
        .iter()
        .map(|&i| {
            let t = &d.graph.node(i).outputs[0];
            let shape: Vec<usize> = t.shape.0.iter().map(|d| d.fixed().unwrap_or(batch)).collect();
            f32_tensor(&shape, rng.distinct(numel(&shape), 0.05))
        })
        .collect();
    let out = qforge_ir::interp::run(&d.graph, &inputs).map_err(|e| format!("run: {e}"))?;
    Ok(d.grads.iter().map(|&k| out[k].clone()).collect())
}

fn weight(g: &mut Graph, name: &str, dims: &[usize]) -> Value {
    g.add_input(name, TensorType::new(DType::F32, Shape::fixed(dims)))
}

/// With a symbolic batch the gradients are written with sizes read at run time (`expand_dyn`,
/// `reshape_dyn`, a mean's count from the shape), and equal those of the same graph at a fixed
/// batch, at two batch sizes.
#[test]
fn symbolic_batch_gradients_equal_fixed_ones() {
    let cases: Vec<(&str, BatchForward)> = vec![
        ("conv", |g, x| {
            let w = weight(g, "w", &[3, 2, 3, 3]);
            let b = weight(g, "b", &[3]);
            let a = ConvAttrs {
                kernel: vec![3, 3],
                strides: vec![1, 1],
                pads: vec![1; 4],
                dilations: vec![1, 1],
                group: 1,
            };
            node(g, Op::Conv(a), &[x, w, b])
        }),
        ("conv_stride2", |g, x| {
            let w = weight(g, "w", &[4, 1, 3, 3]);
            let a = ConvAttrs {
                kernel: vec![3, 3],
                strides: vec![2, 2],
                pads: vec![1; 4],
                dilations: vec![1, 1],
                group: 2,
            };
            node(g, Op::Conv(a), &[x, w])
        }),
        ("relu_max_pool", |g, x| {
            let r = node(g, Op::Unary(UnaryOp::Relu), &[x]);
            let p = PoolAttrs {
                kernel: vec![2, 2],
                strides: vec![2, 2],
                pads: vec![0; 4],
                dilations: vec![1, 1],
                ceil_mode: false,
                count_include_pad: false,
            };
            node(g, Op::MaxPool(p), &[r])
        }),
        ("average_pool", |g, x| {
            let p = PoolAttrs {
                kernel: vec![3, 3],
                strides: vec![2, 2],
                pads: vec![1; 4],
                dilations: vec![1, 1],
                ceil_mode: false,
                count_include_pad: true,
            };
            node(g, Op::AveragePool(p), &[x])
        }),
        ("gap_flatten_gemm", |g, x| {
            let p = node(g, Op::GlobalAveragePool, &[x]);
            let f = node(g, Op::Flatten { axis: 1 }, &[p]);
            let w = weight(g, "w", &[3, 2]);
            let c = weight(g, "c", &[3]);
            node(g, Op::Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: true }, &[f, w, c])
        }),
        ("global_max_pool", |g, x| node(g, Op::GlobalMaxPool, &[x])),
        ("log_softmax", |g, x| node(g, Op::LogSoftmax { axis: 1 }, &[x])),
        ("softmax", |g, x| node(g, Op::Softmax { axis: -1 }, &[x])),
        ("layer_norm", |g, x| {
            let s = weight(g, "scale", &[5]);
            let b = weight(g, "bias", &[5]);
            node(g, Op::LayerNorm { axis: -1, epsilon: 1e-5 }, &[x, s, b])
        }),
        ("batch_norm", |g, x| {
            let ps: Vec<Value> = ["scale", "bias", "mean"].iter().map(|n| weight(g, n, &[2])).collect();
            let var = weight(g, "var", &[2]);
            let var = node(g, Op::Unary(UnaryOp::Abs), &[var]);
            node(g, Op::BatchNorm { epsilon: 1e-3 }, &[x, ps[0], ps[1], ps[2], var])
        }),
        ("mean_over_batch", |g, x| node(g, Op::ReduceMean { axes: vec![0], keepdims: true }, &[x])),
        ("mean_over_all", |g, x| node(g, Op::ReduceMean { axes: vec![], keepdims: true }, &[x])),
        ("max_over_channels", |g, x| node(g, Op::ReduceMax { axes: vec![1], keepdims: false }, &[x])),
        ("reshape_transpose", |g, x| {
            let r = node(g, Op::Reshape { shape: vec![0, -1, 5] }, &[x]);
            node(g, Op::Transpose { perm: vec![0, 2, 1] }, &[r])
        }),
        ("slice_pad_concat", |g, x| {
            let s = node(g, Op::Slice { starts: vec![1], ends: vec![4], axes: vec![2], steps: vec![1] }, &[x]);
            let p = node(
                g,
                Op::Pad { mode: PadMode::Constant, pads: vec![0, 0, 1, 0, 0, 0, 1, 0], computed: vec![], value: 0.0 },
                &[s],
            );
            node(g, Op::Concat { axis: 1 }, &[p, x])
        }),
        ("gather_expand_where", |g, x| {
            let i = g.add_const("i", Tensor::from_i64(vec![3], vec![1, 0, 1]));
            let t = node(g, Op::Gather { axis: 1 }, &[x, i]);
            let m = weight(g, "m", &[1, 3, 1, 5]);
            let e = node(g, Op::Binary(BinaryOp::Mul), &[t, m]);
            let c =
                g.add_const("c", Tensor::from_f64_iter(DType::Bool, vec![5, 1], [1.0, 0.0, 1.0, 1.0, 0.0].into_iter()));
            node(g, Op::Where, &[c, e, t])
        }),
        ("reshape_dyn_expand_dyn", |g, x| {
            // the batch read from x's dims, as an imported dynamic-batch model writes it
            let n = qforge_ir::DimExpr::product(1, vec![(1, 0)]);
            let flat = Op::ReshapeDyn { shape: vec![n.clone(), qforge_ir::DimExpr::fixed(50)] };
            let f = g.add_node(flat, vec![Some(x), Some(x)], None, "flat").expect("reshape_dyn");
            let back =
                Op::ReshapeDyn { shape: vec![n.clone(), qforge_ir::DimExpr::fixed(2), qforge_ir::DimExpr::fixed(25)] };
            let b = g.add_node(back, vec![Some(f), Some(x)], None, "back").expect("reshape_dyn");
            let m = node(g, Op::ReduceMean { axes: vec![1], keepdims: true }, &[b]);
            let e = Op::ExpandDyn { shape: vec![n, qforge_ir::DimExpr::fixed(2), qforge_ir::DimExpr::fixed(25)] };
            let e = g.add_node(e, vec![Some(m), Some(x)], None, "wide").expect("expand_dyn");
            node(g, Op::Binary(BinaryOp::Mul), &[e, b])
        }),
        ("residual_silu", |g, x| {
            // x * sigmoid(x) + x: two paths to x
            let s = node(g, Op::Unary(UnaryOp::Sigmoid), &[x]);
            let silu = node(g, Op::Binary(BinaryOp::Mul), &[x, s]);
            node(g, Op::Binary(BinaryOp::Add), &[silu, x])
        }),
    ];
    for (name, f) in cases {
        for batch in [2, 3] {
            let sym = batch_gradients(f, None, batch).unwrap_or_else(|e| panic!("{name} (symbolic batch): {e}"));
            let fixed =
                batch_gradients(f, Some(batch), batch).unwrap_or_else(|e| panic!("{name} (batch {batch}): {e}"));
            for (i, (a, b)) in sym.iter().zip(&fixed).enumerate() {
                assert_eq!(a.shape(), b.shape(), "{name} gradient {i}");
                for (u, v) in a.to_f64_vec().iter().zip(b.to_f64_vec()) {
                    assert!((u - v).abs() <= 1e-5 * v.abs().max(1.0), "{name} batch {batch} gradient {i}: {u} vs {v}");
                }
            }
        }
    }
}

/// The corpus's digits CNN as imported (batch norms unfolded, then folded), a cross-entropy loss
/// appended: its gradient with respect to the image verifies, runs on the interpreter, and agrees
/// on the JIT.
#[test]
fn digits_cnn_input_gradient_runs_on_both_engines() {
    let mut g = qforge::load_model(&qforge_tests::corpus_file("digits_cnn.onnx")).expect("digits imports");
    for fold in [false, true] {
        if fold {
            assert!(qforge_passes::batchnorm::fold_batch_norms(&mut g) > 0, "batch norms fold");
        }
        let mut lg = g.clone();
        let logits = lg.outputs()[0].value;
        let target = lg
            .add_input("target", TensorType::new(DType::F32, Shape(vec![qforge_ir::Dim::Sym("N".into()), 10.into()])));
        let ls = node(&mut lg, Op::LogSoftmax { axis: 1 }, &[logits]);
        let p = node(&mut lg, Op::Binary(BinaryOp::Mul), &[target, ls]);
        let s = node(&mut lg, Op::ReduceSum { axes: vec![], keepdims: false }, &[p]);
        let loss = node(&mut lg, Op::Unary(UnaryOp::Neg), &[s]);
        lg.add_output("loss", loss);
        let d = differentiate(&lg, 1, &["input"]).expect("digits differentiates");
        qforge_ir::verify::verify(&d.graph).expect("verifies");
        let batch = 2;
        let mut rng = Rng::new(21);
        let x = f32_tensor(&[batch, 1, 8, 8], rng.uniform(batch * 64, 0.0, 1.0));
        let mut t = vec![0.0; batch * 10];
        t[3] = 1.0;
        t[10 + 7] = 1.0;
        let inputs = vec![x, f32_tensor(&[batch, 10], t)];
        let out = qforge_ir::interp::run(&d.graph, &inputs).expect("runs");
        let grad = &out[d.grads[0]];
        assert_eq!(grad.shape(), &[batch, 1, 8, 8]);
        assert!(grad.to_f64_vec().iter().any(|&v| v != 0.0), "the image gradient is not all zeros");
        qforge_tests::check_jit_within(&d.graph, &inputs, &out, 1e-4).expect("the JIT agrees");
    }
}

/// A symbolic image size: a stride-1 convolution's input gradient (its size restored from the
/// transposed convolution's own spelling of it), a global average pool's divisor read from the
/// shape, run at two sizes against the same graph with the size fixed.
#[test]
fn symbolic_image_size_gradients_equal_fixed_ones() {
    let text = |h: &str, w: &str| {
        format!(
            "graph g(%x: f32[N,2,{h},{w}], %w: f32[3,2,3,3]) -> (loss: f32[]) {{
  %0 = conv %x, %w {{kernel=[3,3], strides=[1,1], pads=[1,1,1,1], dilations=[1,1], group=1}} : f32[N,3,{h},{w}]  # \"conv\"
  %1 = relu %0 : f32[N,3,{h},{w}]  # \"relu\"
  %2 = global_average_pool %1 : f32[N,3,1,1]  # \"gap\"
  %3 = reduce_sum %2 {{axes=[], keepdims=false}} : f32[]  # \"loss\"
  return %3
}}
"
        )
    };
    // a strided convolution's input gradient needs the size fixed (the rows its floor division
    // drops are known only at run time)
    let strided = qforge_ir::text::parse(
        &text("H", "W")
            .replace("strides=[1,1]", "strides=[2,2]")
            .replace("f32[N,3,H,W]", "f32[N,3,\"(H+1)/2\",\"(W+1)/2\"]"),
    )
    .expect("parses");
    let e = differentiate(&strided, 0, &["x"]).expect_err("refused").to_string();
    assert!(e.contains("strided convolution needs a fixed spatial size, got H"), "{e}");
    let sym = qforge_ir::text::parse(&text("H", "W")).expect("parses");
    let ds = differentiate(&sym, 0, &["x", "w"]).expect("differentiates");
    qforge_ir::verify::verify(&ds.graph).expect("verifies");
    for (h, w) in [(5usize, 7usize), (8, 4)] {
        let fixed = qforge_ir::text::parse(&text(&h.to_string(), &w.to_string())).expect("parses");
        let df = differentiate(&fixed, 0, &["x", "w"]).expect("differentiates");
        let mut rng = Rng::new(h as u64);
        let inputs = vec![
            f32_tensor(&[2, 2, h, w], rng.uniform(4 * h * w, -1.0, 1.0)),
            f32_tensor(&[3, 2, 3, 3], rng.uniform(54, -1.0, 1.0)),
        ];
        let a = qforge_ir::interp::run(&ds.graph, &inputs).expect("symbolic runs");
        let b = qforge_ir::interp::run(&df.graph, &inputs).expect("fixed runs");
        for (&i, &j) in ds.grads.iter().zip(&df.grads) {
            assert_eq!(a[i].shape(), b[j].shape());
            for (u, v) in a[i].to_f64_vec().iter().zip(b[j].to_f64_vec()) {
                assert!((u - v).abs() <= 1e-6 * v.abs().max(1.0), "{h}x{w}: {u} vs {v}");
            }
        }
    }
}
