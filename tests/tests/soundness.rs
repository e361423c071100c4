//! Soundness of the optimizer on random graphs (proptest): small graphs (a handful of compute
//! nodes) from convolutions (1x1 and 3x3, with and without bias, dense and depthwise), batch norm
//! with constant parameters, relu, clip, per-channel affine constants, same-shape adds, gemm and
//! matmul with constant weights, flatten and reshape, in float or as QDQ graphs (Q/DQ pairs with
//! random u8/i8 parameters on activations; i8 or u8 weights, per tensor or per output channel;
//! i32 biases at the input scale times the weight scale, the pattern the optimizer lowers to
//! integer kernels, or at another scale, the pattern it must leave alone).
//!
//! For every graph: it verifies, the compiler pipeline (default options) optimizes it, the result
//! verifies, the interpreter gives the same outputs before and after (float: within 1e-4 of the
//! largest magnitude; quantized outputs: within the output steps `tests/optimizer.rs`'s
//! differential allows), and the JIT agrees with the interpreter on the optimized graph
//! ([`qforge_tests::check_jit`]; graphs that mix integer values with float compute within 1e-5 or
//! the output steps, see [`jit`]). The distinct rewrite rules that fired are printed and counted. A failing case is shrunk and its `.qir` text printed (and
//! written to `$CARGO_TARGET_TMPDIR/soundness-failure.qir`), ready to be saved under
//! `tests/fixtures/soundness/`, whose files [`soundness_fixtures`] runs through the same checks.
//!
//! The random run is seeded (`SEED`, or `PROPTEST_RNG_SEED` to explore) and runs `CASES` cases
//! (`PROPTEST_CASES` to override).

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};
use qforge_ir::{BinaryOp, ConvAttrs, DType, Dim, Graph, Op, QuantParams, Shape, Tensor, TensorType, UnaryOp, Value};
use qforge_passes::PassReport;
use qforge_tests::{agreement, check_jit, fixture_inputs};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::Path;

const CASES: u32 = 256;
const SEED: u64 = 0x005e_ed0f_500d_11e5;
/// Distinct rewrite rules that must fire over a run of `CASES` cases.
const MIN_RULES: usize = 12;

// ---- the generator

/// Quantization parameters of an activation Q/DQ pair.
#[derive(Clone, Debug)]
struct QSpec {
    unsigned: bool,
    /// The scale is `mantissa * 2^exp`.
    exp: i32,
    mantissa: f32,
    /// A zero point: 0, the middle of the range, or anywhere in it.
    zp: ZeroPoint,
}

#[derive(Clone, Copy, Debug)]
enum ZeroPoint {
    Zero,
    Middle,
    Any(u8),
}

impl QSpec {
    fn dtype(&self) -> DType {
        if self.unsigned {
            DType::U8
        } else {
            DType::I8
        }
    }
    fn scale(&self) -> f32 {
        self.mantissa * (self.exp as f32).exp2()
    }
    fn zero_point(&self) -> i32 {
        match (self.zp, self.unsigned) {
            (ZeroPoint::Zero, _) => 0,
            (ZeroPoint::Middle, true) => 128,
            (ZeroPoint::Middle, false) => 0,
            (ZeroPoint::Any(z), true) => z as i32,
            (ZeroPoint::Any(z), false) => z as i32 - 128,
        }
    }
}

fn qspec() -> impl Strategy<Value = QSpec> {
    let zp = prop_oneof![Just(ZeroPoint::Zero), Just(ZeroPoint::Middle), any::<u8>().prop_map(ZeroPoint::Any)];
    (any::<bool>(), -9i32..=0, 1.0f32..2.0, zp).prop_map(|(unsigned, exp, mantissa, zp)| QSpec {
        unsigned,
        exp,
        mantissa: (mantissa * 64.0).round() / 64.0,
        zp,
    })
}

/// How a weight is stored in a QDQ graph.
#[derive(Clone, Copy, Debug)]
enum WQuant {
    /// Symmetric i8, one scale per output channel.
    I8PerAxis,
    /// Symmetric i8, one scale.
    I8PerTensor,
    /// u8 with a zero point (the optimizer's integer kernels want symmetric weights).
    U8PerTensor,
    /// i8 per output channel with nonzero zero points.
    I8PerAxisZp,
}

/// How a bias is stored in a QDQ graph.
#[derive(Clone, Copy, Debug)]
enum BQuant {
    /// i32 at the input scale times the weight scale (lowerable).
    I32Matching,
    /// i32 at twice that scale (not lowerable as is).
    I32Other,
    /// A float bias.
    Float,
}

#[derive(Clone, Debug)]
enum Step {
    Conv {
        k3: bool,
        out: usize,
        depthwise: bool,
        bias: bool,
        pad: bool,
        stride2: bool,
        wq: WQuant,
        bq: BQuant,
    },
    BatchNorm,
    Relu,
    Clip {
        min: f32,
        max: f32,
    },
    /// Multiply and/or add per-channel constants.
    Affine {
        mul: bool,
        add: bool,
    },
    /// Add an earlier value of the same type (the current value itself when there is none).
    AddEarlier {
        back: usize,
    },
    Gemm {
        out: usize,
        bias: bool,
        trans_b: bool,
        wq: WQuant,
        bq: BQuant,
    },
    MatMul {
        out: usize,
        bias_add: bool,
        wq: WQuant,
    },
    Flatten,
    /// 4-D to `[0, -1]`, 2-D to `[0, K, 1, 1]`.
    Reshape,
    /// An explicit Q/DQ pair on the current value (in float graphs too).
    Qdq(QSpec),
}

#[derive(Clone, Debug)]
struct Spec {
    /// Input `[N, C, H, W]` (or `[N, C]` when `flat`).
    c: usize,
    h: usize,
    w: usize,
    flat: bool,
    /// A QDQ graph: the input is quantized and every compute step is followed by a Q/DQ pair
    /// (the step's `after`, when present), weights and biases stored quantized.
    quant: bool,
    input_q: QSpec,
    steps: Vec<(Step, Option<QSpec>)>,
    seed: u64,
}

fn wquant() -> impl Strategy<Value = WQuant> {
    prop_oneof![
        4 => Just(WQuant::I8PerAxis),
        2 => Just(WQuant::I8PerTensor),
        1 => Just(WQuant::U8PerTensor),
        1 => Just(WQuant::I8PerAxisZp),
    ]
}

fn bquant() -> impl Strategy<Value = BQuant> {
    prop_oneof![4 => Just(BQuant::I32Matching), 1 => Just(BQuant::I32Other), 1 => Just(BQuant::Float)]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (any::<bool>(), 1usize..=4, any::<bool>(), any::<bool>(), any::<bool>(), prop::bool::weighted(0.2),
            wquant(), bquant())
            .prop_map(|(k3, out, depthwise, bias, pad, stride2, wq, bq)| Step::Conv {
                k3, out, depthwise, bias, pad, stride2, wq, bq
            }),
        2 => Just(Step::BatchNorm),
        3 => Just(Step::Relu),
        1 => (-1.0f32..0.0, 0.25f32..6.0).prop_map(|(min, max)| Step::Clip {
            min: (min * 8.0).round() / 8.0,
            max: (max * 8.0).round() / 8.0,
        }),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(mul, add)| Step::Affine { mul, add: add || !mul }),
        2 => (0usize..4).prop_map(|back| Step::AddEarlier { back }),
        3 => (1usize..=6, any::<bool>(), any::<bool>(), wquant(), bquant())
            .prop_map(|(out, bias, trans_b, wq, bq)| Step::Gemm { out, bias, trans_b, wq, bq }),
        2 => (1usize..=6, any::<bool>(), wquant()).prop_map(|(out, bias_add, wq)| Step::MatMul { out, bias_add, wq }),
        1 => Just(Step::Flatten),
        1 => Just(Step::Reshape),
        1 => qspec().prop_map(Step::Qdq),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        1usize..=4,
        3usize..=6,
        3usize..=6,
        prop::bool::weighted(0.2),
        any::<bool>(),
        qspec(),
        prop::collection::vec((step(), prop::option::weighted(0.8, qspec())), 2..=8),
        any::<u64>(),
    )
        .prop_map(|(c, h, w, flat, quant, input_q, steps, seed)| Spec {
            c,
            h,
            w,
            flat,
            quant,
            input_q,
            steps,
            seed,
        })
}

/// Deterministic values for constants (xorshift), in `[lo, hi)`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| lo + self.next() * (hi - lo)).collect()
    }
}

/// Builds the graph a spec describes. Steps that do not apply to the current value (a conv on a
/// 2-D value, a gemm on a 4-D one) are skipped.
struct Builder {
    g: Graph,
    rng: Rng,
    quant: bool,
    /// Every value produced, for the adds.
    values: Vec<Value>,
    n: usize,
}

impl Builder {
    fn name(&mut self, what: &str) -> String {
        self.n += 1;
        format!("{what}{}", self.n)
    }

    fn node(&mut self, op: Op, inputs: Vec<Value>, declared: Option<TensorType>, what: &str) -> Value {
        let name = self.name(what);
        let v = self
            .g
            .add_node(op, inputs.into_iter().map(Some).collect(), declared.map(|t| vec![t]), &name)
            .unwrap_or_else(|e| panic!("generator bug: {e}"));
        self.values.push(v);
        v
    }

    fn ty(&self, v: Value) -> TensorType {
        self.g.value_type(v).clone()
    }

    fn fixed_dims(&self, v: Value) -> Vec<Option<usize>> {
        self.ty(v).shape.dims().iter().map(|d| d.fixed()).collect()
    }

    fn qdq(&mut self, x: Value, q: &QSpec) -> Value {
        let t = self.ty(x);
        let qt = TensorType::quantized(q.dtype(), t.shape.clone(), QuantParams::per_tensor(q.scale(), q.zero_point()));
        let xq = self.node(Op::Quantize, vec![x], Some(qt), "q");
        self.node(Op::Dequantize, vec![xq], None, "dq")
    }

    /// The scale of `x` when it is the dequantization of a per-tensor quantized value.
    fn input_scale(&self, x: Value) -> Option<f32> {
        let n = self.g.node(x.node);
        if !matches!(n.op, Op::Dequantize) {
            return None;
        }
        match &self.g.value_type(n.inputs()[0]?).quant {
            Some(QuantParams::PerTensor { scale, .. }) => Some(*scale),
            _ => None,
        }
    }

    fn const_f32(&mut self, what: &str, shape: Vec<usize>, lo: f64, hi: f64) -> Value {
        let n = shape.iter().product();
        let t = Tensor::from_f64_iter(DType::F32, shape, self.rng.vec(n, lo, hi).into_iter());
        let name = self.name(what);
        self.g.add_const(name, t)
    }

    /// A weight of `shape` (output channels on `axis`), with values in `[-r, r)`: a float constant,
    /// or in a QDQ graph a quantized constant and its dequantization. Returns the value and the
    /// per-channel weight scales when quantized.
    fn weight(&mut self, shape: Vec<usize>, axis: usize, r: f64, wq: WQuant) -> (Value, Option<Vec<f32>>) {
        if !self.quant {
            return (self.const_f32("w", shape, -r, r), None);
        }
        let n: usize = shape.iter().product();
        let ch = shape[axis];
        let stride: usize = shape[axis + 1..].iter().product();
        let scales: Vec<f32> = (0..ch).map(|_| (r / 127.0 * (0.5 + self.rng.next())) as f32).collect();
        let (dtype, quant, zps) = match wq {
            WQuant::I8PerAxis | WQuant::I8PerAxisZp => {
                let zps: Vec<i32> = if matches!(wq, WQuant::I8PerAxisZp) {
                    (0..ch).map(|_| (self.rng.next() * 20.0) as i32 - 10).collect()
                } else {
                    vec![0; ch]
                };
                (DType::I8, QuantParams::PerAxis { axis, scales: scales.clone(), zero_points: zps.clone() }, zps)
            }
            WQuant::I8PerTensor => (DType::I8, QuantParams::per_tensor(scales[0], 0), vec![0; ch]),
            WQuant::U8PerTensor => {
                let zp = 100 + (self.rng.next() * 56.0) as i32;
                (DType::U8, QuantParams::per_tensor(scales[0], zp), vec![zp; ch])
            }
        };
        let (lo, hi) = if dtype == DType::U8 { (0.0, 255.0) } else { (-127.0, 127.0) };
        let vals: Vec<f64> = (0..n)
            .map(|i| {
                let c = (i / stride) % ch;
                (zps[c] as f64 + (self.rng.next() * 254.0 - 127.0).round()).clamp(lo, hi)
            })
            .collect();
        let t = Tensor::from_f64_iter(dtype, shape.clone(), vals.into_iter());
        let name = self.name("wq");
        let wv = self.g.add_const_typed(name, t, TensorType::quantized(dtype, Shape::fixed(&shape), quant.clone()));
        let per_channel: Vec<f32> = (0..ch).map(|c| quant.scale(c)).collect();
        (self.node(Op::Dequantize, vec![wv], None, "w_dq"), Some(per_channel))
    }

    /// A bias of `ch` channels: float, or in a QDQ graph an i32 constant dequantized.
    fn bias(&mut self, ch: usize, sx: Option<f32>, sw: Option<&[f32]>, bq: BQuant) -> Value {
        let (Some(sx), Some(sw), false) = (sx, sw, matches!(bq, BQuant::Float)) else {
            return self.const_f32("b", vec![ch], -0.5, 0.5);
        };
        let k = if matches!(bq, BQuant::I32Other) { 2.0 } else { 1.0 };
        let scales: Vec<f32> = sw.iter().map(|&s| sx * s * k).collect();
        let vals: Vec<f64> = scales.iter().map(|&s| (self.rng.next() - 0.5) / s as f64).collect();
        let t = Tensor::from_f64_iter(DType::I32, vec![ch], vals.into_iter());
        let quant = QuantParams::PerAxis { axis: 0, scales, zero_points: vec![0; ch] };
        let name = self.name("bq");
        let b = self.g.add_const_typed(name, t, TensorType::quantized(DType::I32, Shape::fixed(&[ch]), quant));
        self.node(Op::Dequantize, vec![b], None, "b_dq")
    }

    /// Applies one step to `x`; `None` when it does not apply.
    fn step(&mut self, x: Value, s: &Step) -> Option<Value> {
        let dims = self.fixed_dims(x);
        let rank = dims.len();
        let sx = self.input_scale(x);
        Some(match *s {
            Step::Conv { k3, out, depthwise, bias, pad, stride2, wq, bq } => {
                if rank != 4 {
                    return None;
                }
                let (c, h, w) = (dims[1]?, dims[2]?, dims[3]?);
                let k = if k3 { 3 } else { 1 };
                let p = if k3 && pad { 1 } else { 0 };
                if h + 2 * p < k || w + 2 * p < k {
                    return None;
                }
                let (out, group, cin) = if depthwise { (c, c, 1) } else { (out, 1, c) };
                let fan_in = (cin * k * k) as f64;
                let (wv, sw) = self.weight(vec![out, cin, k, k], 0, 1.5 / fan_in.sqrt(), wq);
                let mut inputs = vec![x, wv];
                if bias {
                    inputs.push(self.bias(out, sx, sw.as_deref(), bq));
                }
                let st = if stride2 { 2 } else { 1 };
                let attrs = ConvAttrs {
                    kernel: vec![k, k],
                    strides: vec![st, st],
                    pads: vec![p; 4],
                    dilations: vec![1, 1],
                    group,
                };
                self.node(Op::Conv(attrs), inputs, None, "conv")
            }
            Step::BatchNorm => {
                if rank != 4 {
                    return None;
                }
                let c = dims[1]?;
                let scale = self.const_f32("bn_scale", vec![c], 0.5, 1.5);
                let bias = self.const_f32("bn_bias", vec![c], -0.3, 0.3);
                let mean = self.const_f32("bn_mean", vec![c], -0.3, 0.3);
                let var = self.const_f32("bn_var", vec![c], 0.25, 2.0);
                self.node(Op::BatchNorm { epsilon: 1e-5 }, vec![x, scale, bias, mean, var], None, "bn")
            }
            Step::Relu => self.node(Op::Unary(UnaryOp::Relu), vec![x], None, "relu"),
            Step::Clip { min, max } => self.node(Op::Clip { min, max }, vec![x], None, "clip"),
            Step::Affine { mul, add } => {
                if rank != 4 {
                    return None;
                }
                let c = dims[1]?;
                let mut y = x;
                if mul {
                    let m = self.const_f32("mul_c", vec![1, c, 1, 1], 0.5, 1.5);
                    y = self.node(Op::Binary(BinaryOp::Mul), vec![y, m], None, "mul");
                }
                if add {
                    let a = self.const_f32("add_c", vec![1, c, 1, 1], -0.5, 0.5);
                    y = self.node(Op::Binary(BinaryOp::Add), vec![y, a], None, "add_c");
                }
                y
            }
            Step::AddEarlier { back } => {
                let t = self.ty(x);
                let same: Vec<Value> =
                    self.values.iter().copied().filter(|&v| v != x && *self.g.value_type(v) == t).collect();
                let other = if same.is_empty() { x } else { same[same.len() - 1 - back % same.len()] };
                self.node(Op::Binary(BinaryOp::Add), vec![x, other], None, "add")
            }
            Step::Gemm { out, bias, trans_b, wq, bq } => {
                if rank != 2 {
                    return None;
                }
                let kdim = dims[1]?;
                let r = 1.5 / (kdim as f64).sqrt();
                let (wv, sw) = if trans_b {
                    self.weight(vec![out, kdim], 0, r, wq)
                } else {
                    self.weight(vec![kdim, out], 1, r, wq)
                };
                let mut inputs = vec![x, wv];
                if bias {
                    inputs.push(self.bias(out, sx, sw.as_deref(), bq));
                }
                self.node(Op::Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b }, inputs, None, "gemm")
            }
            Step::MatMul { out, bias_add, wq } => {
                if rank != 2 {
                    return None;
                }
                let kdim = dims[1]?;
                let (wv, _) = self.weight(vec![kdim, out], 1, 1.5 / (kdim as f64).sqrt(), wq);
                let y = self.node(Op::MatMul, vec![x, wv], None, "matmul");
                if bias_add {
                    let b = self.const_f32("mm_bias", vec![out], -0.5, 0.5);
                    self.node(Op::Binary(BinaryOp::Add), vec![y, b], None, "add_b")
                } else {
                    y
                }
            }
            Step::Flatten => {
                if rank != 4 {
                    return None;
                }
                self.node(Op::Flatten { axis: 1 }, vec![x], None, "flatten")
            }
            Step::Reshape => {
                let shape = match rank {
                    4 => vec![0, -1],
                    2 => vec![0, dims[1]? as i64, 1, 1],
                    _ => return None,
                };
                self.node(Op::Reshape { shape }, vec![x], None, "reshape")
            }
            Step::Qdq(ref q) => self.qdq(x, q),
        })
    }
}

fn build(spec: &Spec) -> Graph {
    let mut b =
        Builder { g: Graph::new("soundness"), rng: Rng(spec.seed | 1), quant: spec.quant, values: vec![], n: 0 };
    let n = Dim::Sym("N".into());
    let dims = if spec.flat {
        vec![n, Dim::Fixed(spec.c * spec.h)]
    } else {
        vec![n, Dim::Fixed(spec.c), Dim::Fixed(spec.h), Dim::Fixed(spec.w)]
    };
    let x = b.g.add_input("x", TensorType::new(DType::F32, Shape(dims)));
    b.values.push(x);
    let mut cur = if spec.quant { b.qdq(x, &spec.input_q) } else { x };
    for (s, after) in &spec.steps {
        let Some(y) = b.step(cur, s) else { continue };
        cur = y;
        let compute = !matches!(s, Step::Relu | Step::Clip { .. } | Step::Flatten | Step::Reshape | Step::Qdq(_));
        if let (true, true, Some(q)) = (spec.quant, compute, after) {
            cur = b.qdq(cur, q);
        }
    }
    if spec.quant && !matches!(b.g.node(cur.node).op, Op::Dequantize) {
        cur = b.qdq(cur, &spec.input_q);
    }
    b.g.add_output("y", cur);
    b.g
}

// ---- the checks

/// How many output steps the optimized graph may be off: one per quantized layer the literal
/// graph rounds in float and the integer kernels round once (`differential` allows one step for
/// the single-layer fixtures and two for the digits models), at most two.
fn allowed_steps(g: &Graph) -> f32 {
    let quantizes = g.node_ids().filter(|&n| matches!(g.node(n).op, Op::Quantize)).count();
    if quantizes <= 2 {
        1.0
    } else {
        2.0
    }
}

/// The rules that fired in the optimizer's report.
fn rules_fired(reports: &[PassReport]) -> Vec<String> {
    reports
        .iter()
        .filter(|r| r.pass == "optimize")
        .flat_map(|r| r.stats.iter())
        .filter(|(_, &v)| v > 0)
        .filter_map(|(k, _)| k.strip_prefix("applied ").map(str::to_string))
        .collect()
}

/// The soundness checks on one graph; returns the rules that fired.
fn check(g: &Graph) -> Result<Vec<String>, String> {
    qforge_ir::verify::verify(g).map_err(|e| format!("the generated graph does not verify: {e}"))?;
    let compiler = qforge::Compiler::new(qforge::PipelineOptions::default()).map_err(|e| format!("{e:#}"))?;
    let qforge::State { graph: opt, reports, .. } =
        compiler.run(g.clone(), &mut |_, _| {}).map_err(|e| format!("the pipeline fails: {e:#}"))?;
    qforge_ir::verify::verify(&opt).map_err(|e| format!("the optimized graph does not verify: {e}"))?;
    let x = fixture_inputs(g);
    let before = qforge_ir::interp::run(g, &x).map_err(|e| format!("interpreter, before: {e}"))?;
    let after = qforge_ir::interp::run(&opt, &x).map_err(|e| format!("interpreter, after: {e}"))?;
    if before.len() != after.len() {
        return Err(format!("{} outputs before, {} after", before.len(), after.len()));
    }
    let steps = allowed_steps(g);
    for (i, (a, b)) in before.iter().zip(&after).enumerate() {
        let step = qforge_tests::output_step_at(g, i);
        let quantized = g.value_type(g.outputs()[i].value).quant.is_some();
        let ag = agreement(b, a, step.filter(|_| !quantized)).map_err(|e| format!("output {i}: {e:#}"))?;
        let tol = match step {
            Some(_) if quantized => steps + 1e-3,
            Some(s) => (1e-4 * ag.ref_max_abs).max(s * (steps + 1e-3)),
            None => 1e-4 * ag.ref_max_abs.max(1e-30),
        };
        if ag.max_abs > tol || ag.max_abs.is_nan() {
            return Err(format!(
                "the optimized graph disagrees with the original on output {i}: {ag} (tolerance {tol})\n\
                 --- optimized ---\n{}",
                qforge_ir::text::print_default(&opt).unwrap_or_default()
            ));
        }
    }
    jit(&opt, &x, &after, steps).map_err(|e| {
        format!(
            "the JIT disagrees with the interpreter on the optimized graph: {e:#}\n--- optimized ---\n{}",
            qforge_ir::text::print_default(&opt).unwrap_or_default()
        )
    })?;
    Ok(rules_fired(&reports))
}

/// Float compute (summed or multiplied in f32, where the JIT may round differently from the
/// interpreter by summation order).
fn has_float_compute(g: &Graph) -> bool {
    g.node_ids().any(|n| {
        let node = g.node(n);
        matches!(node.op, Op::Conv(_) | Op::Gemm { .. } | Op::MatMul | Op::BatchNorm { .. } | Op::Binary(_))
            && node.outputs.iter().any(|t| t.dtype == DType::F32)
    })
}

/// The JIT against the interpreter: [`check_jit`] (bit for bit on graphs with integer values,
/// 1e-5 relative on float graphs), except on graphs that mix integer values with float compute:
/// there `check_jit` demands bit-exactness of float sums the JIT may order differently, so those
/// are compared within 1e-5 of the largest magnitude or, for a dequantized output, `steps`
/// output steps (a float sum an ulp apart may round to the next step).
fn jit(g: &Graph, x: &[Tensor], expected: &[Tensor], steps: f32) -> anyhow::Result<()> {
    if !(qforge_tests::has_integer_values(g) && has_float_compute(g)) {
        return check_jit(g, x, expected);
    }
    for mk in [qforge_codegen::Microkernels::Native, qforge_codegen::Microkernels::Cranelift] {
        let exe = qforge_codegen::JitExecutable::new(
            g.clone(),
            qforge_codegen::JitOptions { microkernels: mk, threads: 1, ..Default::default() },
        );
        let outs = exe.run(x).map_err(|e| anyhow::anyhow!("JIT ({mk:?}): {e}"))?;
        for (i, (o, e)) in outs.iter().zip(expected).enumerate() {
            let a = agreement(o, e, None)?;
            let tol =
                (1e-5 * a.ref_max_abs).max(qforge_tests::output_step_at(g, i).map_or(0.0, |s| s * (steps + 1e-3)));
            anyhow::ensure!(a.max_abs <= tol, "JIT ({mk:?}) output {i}: {a} (tolerance {tol}, mixed graph)");
        }
    }
    Ok(())
}

/// The text form with every constant in full (so it parses back as a fixture).
fn qir(g: &Graph) -> String {
    qforge_ir::text::print(g, qforge_ir::text::ConstMode::Full).unwrap_or_else(|e| format!("(does not print: {e})"))
}

#[test]
fn optimizer_is_sound_on_random_graphs() {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(CASES);
    let seed = std::env::var("PROPTEST_RNG_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(SEED);
    let config = Config { cases, failure_persistence: None, rng_seed: RngSeed::Fixed(seed), ..Config::default() };
    let mut runner = TestRunner::new(config);
    let fired: RefCell<BTreeMap<String, usize>> = Default::default();
    let (run, quantized, nodes) = (Cell::new(0usize), Cell::new(0usize), Cell::new(0usize));
    let failure_file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("soundness-failure.qir");
    // `QFORGE_SOUNDNESS_DUMP=DIR` writes every passing graph there (candidates for fixtures).
    let dump = std::env::var_os("QFORGE_SOUNDNESS_DUMP");
    let started = std::time::Instant::now();
    let result = runner.run(&spec(), |s| {
        let g = build(&s);
        match check(&g) {
            Ok(rules) => {
                if let Some(dir) = &dump {
                    let _ = std::fs::write(Path::new(dir).join(format!("case{:03}.qir", run.get())), qir(&g));
                }
                run.set(run.get() + 1);
                quantized.set(quantized.get() + s.quant as usize);
                nodes.set(nodes.get() + g.node_count());
                for r in rules {
                    *fired.borrow_mut().entry(r).or_default() += 1;
                }
                Ok(())
            }
            Err(e) => {
                let text = qir(&g);
                let _ = std::fs::write(&failure_file, &text);
                Err(TestCaseError::fail(format!("{e}\n--- qir (save under tests/fixtures/soundness/) ---\n{text}")))
            }
        }
    });
    let fired = fired.into_inner();
    let (run, quantized, nodes) = (run.get(), quantized.get(), nodes.get());
    println!(
        "{run} graphs passed ({quantized} QDQ, {:.1} nodes on average) in {:.1?}",
        nodes as f64 / run.max(1) as f64,
        started.elapsed()
    );
    println!("{} distinct rules fired (cases where each fired):", fired.len());
    for (r, n) in &fired {
        println!("  {r}: {n}");
    }
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, s)) => {
            panic!("soundness failure (minimal case written to {}):\n{reason}\nspec: {s:#?}", failure_file.display())
        }
        Err(e) => panic!("{e}"),
    }
    assert!(fired.len() >= MIN_RULES, "only {} distinct rules fired: {:?}", fired.len(), fired.keys());
}

/// Every saved regression (and seed) case in `tests/fixtures/soundness/` through the same checks.
#[test]
fn soundness_fixtures() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/soundness");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures/soundness exists")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "qir"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    let mut failures = vec![];
    for path in &files {
        let text = std::fs::read_to_string(path).expect("fixture reads");
        let g = qforge_ir::text::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match check(&g) {
            Ok(rules) => println!("{}: ok, rules fired: {}", path.display(), rules.join(", ")),
            Err(e) => failures.push(format!("{}: {e}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{} of {} fail:\n{}", failures.len(), files.len(), failures.join("\n\n"));
}
