//! Shared helpers of qforge's integration tests: where the corpus is, and the one comparison
//! every reference check goes through.
//!
//! A reference case names a model, an input and a stored ONNX Runtime output; [`check`] imports the
//! model, runs it on the reference interpreter, measures the agreement and asserts the case's
//! expectation, printing the figures (max error, SQNR, bit-exact share, top-1 agreement) so the
//! test log carries them.

use anyhow::{bail, Context, Result};
use qforge_ir::{Graph, Op, QuantParams, Tensor};
use std::path::PathBuf;

/// The first `n` samples (rows of axis 0) of `t`: a batch-1 input from a batch-4 fixture.
pub fn first_rows(t: &Tensor, n: usize) -> Tensor {
    let mut shape = t.shape().to_vec();
    let per: usize = shape[1..].iter().product();
    shape[0] = n;
    Tensor::from_f64_iter(t.dtype(), shape, t.to_f64_vec().into_iter().take(n * per))
}

/// The shared model corpus, `../shared/models` beside the checkout.
pub fn corpus() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/models"))
}

/// A file in the corpus.
pub fn corpus_file(rel: &str) -> PathBuf {
    corpus().join(rel)
}

/// What a case must achieve.
#[derive(Clone, Copy, Debug)]
pub enum Expect {
    /// Float outputs: every element within `rel` times the reference's largest magnitude.
    Float { rel: f32 },
    /// Quantized outputs (dequantized at the end): at least `min_exact` of the elements bit-exact,
    /// every element within `max_steps` output quantization steps, and the same top-1 as the
    /// reference on every sample when `same_top1`.
    Quantized { min_exact: f64, max_steps: f32, same_top1: bool },
}

/// One stored-reference check.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub model: &'static str,
    pub input: &'static str,
    pub reference: &'static str,
    pub expect: Expect,
}

/// Agreement figures between an output and its reference.
#[derive(Clone, Debug)]
pub struct Agreement {
    pub elements: usize,
    pub max_abs: f32,
    pub ref_max_abs: f32,
    pub sqnr_db: f64,
    pub exact_share: f64,
    /// Largest difference in output quantization steps, when the output has a step.
    pub max_steps: Option<f32>,
    pub top1_same: usize,
    pub rows: usize,
    /// Cosine similarity of each row (axis 0) with the reference's, averaged over the rows (as
    /// `scripts/gen_transformer_fixtures.py` computes ONNX Runtime's figures).
    pub mean_cosine: f64,
}

impl std::fmt::Display for Agreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "max |err| {:.3e} (ref max {:.3e}), SQNR {:.1} dB, bit-exact {:.2}% of {}, top-1 same {}/{}",
            self.max_abs,
            self.ref_max_abs,
            self.sqnr_db,
            self.exact_share * 100.0,
            self.elements,
            self.top1_same,
            self.rows
        )?;
        if let Some(s) = self.max_steps {
            write!(f, ", max {s:.2} output steps")?;
        }
        Ok(())
    }
}

/// Compares `out` with `reference` (same shape); `step` is the output quantization step.
pub fn agreement(out: &Tensor, reference: &Tensor, step: Option<f32>) -> Result<Agreement> {
    if out.shape() != reference.shape() {
        bail!("output shape {:?} differs from the reference's {:?}", out.shape(), reference.shape());
    }
    let (a, r) = (out.to_f32_vec(), reference.to_f32_vec());
    let mut max_abs = 0f32;
    let (mut sig, mut noise) = (0f64, 0f64);
    let mut exact = 0;
    for (&x, &y) in a.iter().zip(&r) {
        // equal values differ by nothing, infinities included (an f64 output beyond the f32
        // range is an infinity on both sides here)
        let d = if x == y { 0.0 } else { (x - y).abs() };
        if d.is_nan() {
            bail!("NaN in the output where the reference has {y}");
        }
        max_abs = max_abs.max(d);
        sig += (y as f64) * (y as f64);
        noise += ((x - y) as f64).powi(2);
        exact += (x.to_bits() == y.to_bits()) as usize;
    }
    let ref_max_abs = r.iter().fold(0f32, |m, x| m.max(x.abs()));
    let rows = reference.shape().first().copied().unwrap_or(1).max(1);
    let cols = r.len() / rows;
    let argmax = |v: &[f32]| v.iter().enumerate().fold(0, |b, (i, &x)| if x > v[b] { i } else { b });
    let top1_same = if cols == 0 {
        rows
    } else {
        a.chunks(cols).zip(r.chunks(cols)).filter(|(x, y)| argmax(x) == argmax(y)).count()
    };
    let mean_cosine = if cols == 0 {
        1.0
    } else {
        let cos = |x: &[f32], y: &[f32]| {
            let dot: f64 = x.iter().zip(y).map(|(&a, &b)| a as f64 * b as f64).sum();
            let n = |v: &[f32]| v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
            dot / (n(x) * n(y))
        };
        a.chunks(cols).zip(r.chunks(cols)).map(|(x, y)| cos(x, y)).sum::<f64>() / rows as f64
    };
    Ok(Agreement {
        mean_cosine,
        elements: r.len(),
        max_abs,
        ref_max_abs,
        sqnr_db: if noise == 0.0 { f64::INFINITY } else { 10.0 * (sig / noise).log10() },
        exact_share: exact as f64 / r.len().max(1) as f64,
        max_steps: step.map(|s| max_abs / s),
        top1_same,
        rows,
    })
}

/// The quantization step of output 0 (see [`output_step_at`]).
pub fn output_step(g: &Graph) -> Option<f32> {
    output_step_at(g, 0)
}

/// The quantization step of output `i`: its own per-tensor scale if it is quantized, else the
/// per-tensor scale of the value a final dequantize reads; `None` otherwise.
pub fn output_step_at(g: &Graph, i: usize) -> Option<f32> {
    let v = g.outputs().get(i)?.value;
    let per_tensor = |t: &qforge_ir::TensorType| match &t.quant {
        Some(QuantParams::PerTensor { scale, .. }) => Some(*scale),
        _ => None,
    };
    if let Some(s) = per_tensor(g.value_type(v)) {
        return Some(s);
    }
    let node = g.node(v.node);
    if !matches!(node.op, Op::Dequantize) {
        return None;
    }
    per_tensor(g.value_type(node.inputs().first().copied().flatten()?))
}

/// Imports the case's model, runs it on the reference interpreter, prints the agreement with the
/// stored reference and asserts the expectation.
pub fn check(case: &Case) -> Result<Agreement> {
    check_at(case, 0)
}

/// As [`check`], on the graph after the compiler pipeline at `--opt-level opt_level` (0: the graph
/// as imported; every pass verified after it runs).
pub fn check_at(case: &Case, opt_level: u8) -> Result<Agreement> {
    let g = qforge::load_model(&corpus_file(case.model))?;
    qforge_ir::verify::verify(&g).context("imported graph does not verify")?;
    let g = if opt_level == 0 {
        g
    } else {
        let opts = qforge::PipelineOptions { opt_level, ..qforge::PipelineOptions::default() };
        qforge::Compiler::new(opts)?.optimize(g)?
    };
    let x = qforge::npy::read(&corpus_file(case.input))?;
    let reference = qforge::npy::read(&corpus_file(case.reference))?;
    let outs = qforge_ir::interp::run(&g, std::slice::from_ref(&x))?;
    check_jit(&g, &[x], &outs).with_context(|| format!("{}: the JIT disagrees with the interpreter", case.model))?;
    let out = outs.into_iter().next().context("no output")?;
    let step = output_step(&g);
    let a = agreement(&out, &reference, step)?;
    println!("{} (opt-level {opt_level}): {a}", case.model);
    match case.expect {
        Expect::Float { rel } => {
            if a.max_abs > rel * a.ref_max_abs {
                bail!(
                    "{}: max error {:.3e} exceeds {rel:e} of the reference's largest magnitude",
                    case.model,
                    a.max_abs
                );
            }
        }
        Expect::Quantized { min_exact, max_steps, same_top1 } => {
            let Some(steps) = a.max_steps else {
                bail!("{}: the output is not a dequantized per-tensor value", case.model)
            };
            if a.exact_share < min_exact {
                bail!(
                    "{}: bit-exact share {:.2}% is below {:.2}%",
                    case.model,
                    a.exact_share * 100.0,
                    min_exact * 100.0
                );
            }
            if steps > max_steps + 1e-3 {
                bail!("{}: {steps:.2} output steps off, more than {max_steps}", case.model);
            }
            if same_top1 && a.top1_same != a.rows {
                bail!("{}: top-1 differs from the reference on {} samples", case.model, a.rows - a.top1_same);
            }
        }
    }
    Ok(a)
}

/// Whether `g`'s JIT results must be bit-exact: it computes on integers and has no float op
/// whose result depends on summation order (float convolutions, matrix products, pooling
/// averages, normalizations), which the JIT may sum in another order than the interpreter.
/// Element-wise float ops use one formula in both engines and stay exact.
pub fn has_integer_values(g: &Graph) -> bool {
    let float_sum = |op: &Op| {
        matches!(
            op,
            Op::Conv(_)
                | Op::Gemm { .. }
                | Op::MatMul
                | Op::GlobalAveragePool
                | Op::AveragePool(_)
                | Op::Softmax { .. }
                | Op::LogSoftmax { .. }
                | Op::LayerNorm { .. }
                | Op::BatchNorm { .. }
                | Op::Lrn { .. }
                | Op::ReduceMean { .. }
                | Op::ReduceSum { .. }
        )
    };
    let mut ints = false;
    for id in g.node_ids() {
        let n = g.node(id);
        if matches!(n.op, Op::Const(_)) {
            continue;
        }
        if n.outputs.iter().any(|t| t.dtype.is_float()) && float_sum(&n.op) {
            return false;
        }
        ints |= n.outputs.iter().any(|t| t.dtype.is_int());
    }
    ints
}

/// The JIT oracle: runs `g` on the JIT with each set of microkernels (the native intrinsics and
/// the Cranelift-only GEMMs, and the native ones on two threads), with guard bytes after every
/// arena buffer checked after every step, and compares every output with the interpreter's
/// `expected`: bit for bit on graphs with integer values; on float graphs that quantize float
/// sums (Q/DQ graphs run literally, as at `--opt-level 0`), at least 99.9% bit for bit and no
/// element more than one output quantization step apart; within 1e-5 of the largest magnitude
/// otherwise.
pub fn check_jit(g: &Graph, inputs: &[Tensor], expected: &[Tensor]) -> Result<()> {
    check_jit_within(g, inputs, expected, 1e-5)
}

/// [`check_jit`] with float outputs within `rel` of the largest magnitude instead of 1e-5, for a
/// model whose engines' summation orders drift further apart through its depth (each caller says
/// by how much, measured).
pub fn check_jit_within(g: &Graph, inputs: &[Tensor], expected: &[Tensor], rel: f32) -> Result<()> {
    let exact = has_integer_values(g);
    let fake_quant = !exact && g.node_ids().any(|id| matches!(g.node(id).op, Op::Quantize));
    use qforge_codegen::Microkernels::{Cranelift, Native};
    for (mk, threads) in [(Native, 1), (Cranelift, 1), (Native, 2)] {
        let opts = qforge_codegen::JitOptions { microkernels: mk, threads, check_guards: true, ..Default::default() };
        let exe = qforge_codegen::JitExecutable::new(g.clone(), opts);
        let outs = exe.run(inputs).with_context(|| format!("JIT ({mk:?})"))?;
        if outs.len() != expected.len() {
            bail!("JIT ({mk:?}): {} outputs, the interpreter has {}", outs.len(), expected.len());
        }
        for (i, (o, e)) in outs.iter().zip(expected).enumerate() {
            if o.dtype() != e.dtype() {
                bail!("JIT ({mk:?}) output {i}: {} where the interpreter has {}", o.dtype().name(), e.dtype().name());
            }
            let a = agreement(o, e, None)?;
            if exact && a.exact_share < 1.0 {
                bail!("JIT ({mk:?}) output {i} is not bit-exact on an integer graph: {a}");
            }
            if let (true, Some(step)) = (fake_quant, output_step_at(g, i)) {
                // a quantize after a float sum: a value the engines sum to either side of a
                // rounding boundary lands one step apart, and the step travels on; anything
                // beyond a rare one-step difference in the output is a defect
                let a = agreement(o, e, Some(step))?;
                if a.exact_share < 0.999 || a.max_steps.unwrap_or(f32::INFINITY) > 1.0 + 1e-3 {
                    bail!("JIT ({mk:?}) output {i} differs by more than rare single quantization steps: {a}");
                }
            } else if !exact && a.max_abs > rel * a.ref_max_abs.max(f32::MIN_POSITIVE) {
                bail!("JIT ({mk:?}) output {i} differs by more than {rel:e} relative: {a}");
            }
        }
    }
    Ok(())
}

/// Deterministic inputs for a graph: symbolic dims bound to 2 (image axes to 8), floats in [-1.5, 1.5), quantized
/// inputs over their whole range.
pub fn fixture_inputs(g: &Graph) -> Vec<Tensor> {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    g.inputs()
        .iter()
        .map(|&i| {
            let t = &g.node(i).outputs[0];
            // image axes (2 and up of a rank-4 or higher input) at 8: a stride-2 conv then a 2x2
            // pool needs at least 4
            let shape: Vec<usize> = t
                .shape
                .dims()
                .iter()
                .enumerate()
                .map(|(k, d)| d.fixed().unwrap_or(if k >= 2 && t.shape.rank() >= 4 { 8 } else { 2 }))
                .collect();
            let n: usize = shape.iter().product();
            let vals: Vec<f64> = match t.dtype.int_range() {
                Some((lo, hi)) => {
                    let (lo, hi) = (lo.max(-128) as f64, hi.min(255) as f64);
                    (0..n).map(|_| (lo + next() * (hi - lo + 1.0)).floor()).collect()
                }
                None => (0..n).map(|_| next() * 3.0 - 1.5).collect(),
            };
            Tensor::from_f64_iter(t.dtype, shape, vals.into_iter())
        })
        .collect()
}

/// `python3` with onnxruntime importable.
pub fn onnxruntime_available() -> bool {
    python_imports("onnxruntime")
}

/// Whether `python3` can import the `onnx` package (its checker validates exported models).
pub fn onnx_available() -> bool {
    python_imports("onnx")
}

/// Whether `python3 -c "import {module}"` succeeds.
fn python_imports(module: &str) -> bool {
    let code = format!("import {module}");
    std::process::Command::new("python3").args(["-c", &code]).output().is_ok_and(|o| o.status.success())
}

/// Runs the ONNX model `model` (a file) in ONNX Runtime (CPU) on the `.npy` file `input` as its
/// first input and returns its first output, or ORT's last error line.
pub fn ort_first_output(model: &std::path::Path, input: &std::path::Path) -> Result<Tensor, String> {
    let out = model.with_extension("ort_out.npy");
    let script = format!(
        "import numpy as np, onnxruntime as ort\n\
         s = ort.InferenceSession({:?}, providers=['CPUExecutionProvider'])\n\
         x = np.load({:?})\n\
         np.save({:?}, s.run(None, {{s.get_inputs()[0].name: x}})[0])\n",
        model.display().to_string(),
        input.display().to_string(),
        out.display().to_string()
    );
    let r = std::process::Command::new("python3").args(["-c", &script]).output().map_err(|e| e.to_string())?;
    if !r.status.success() {
        let err = String::from_utf8_lossy(&r.stderr);
        return Err(format!("onnxruntime: {}", err.lines().last().unwrap_or_default()));
    }
    qforge::npy::read(&out).map_err(|e| format!("{e:#}"))
}

/// `python3` with OpenVINO importable (`pip install openvino`).
pub fn openvino_available() -> bool {
    python_imports("openvino")
}

/// One layer of an OpenVINO runtime model (`compiled_model.get_runtime_model()`): its layer type
/// (`Convolution`, `FullyConnected`, ...), the primitive the CPU plugin chose for it (int8 ones
/// end in `_I8`, e.g. `brgconv_avx512_1x1_I8`) and its runtime precision (`u8`, `i8`, `f32`).
#[derive(Clone, Debug)]
pub struct OvLayer {
    pub layer_type: String,
    pub primitive: String,
    pub precision: String,
}

/// Runs the ONNX model `model` in OpenVINO (CPU plugin, f32 inference precision, one thread) on
/// the `.npy` file `input` as its first input; returns its first output and the runtime model's
/// layers, or OpenVINO's last error line.
pub fn openvino_first_output(
    model: &std::path::Path,
    input: &std::path::Path,
) -> Result<(Tensor, Vec<OvLayer>), String> {
    let out = model.with_extension("ov_out.npy");
    let script = format!(
        "import json, numpy as np, openvino as ov\n\
         cm = ov.Core().compile_model({:?}, 'CPU', {{'INFERENCE_PRECISION_HINT': 'f32', 'INFERENCE_NUM_THREADS': 1}})\n\
         np.save({:?}, cm({{0: np.load({:?})}})[cm.output(0)])\n\
         rt = [op.get_rt_info() for op in cm.get_runtime_model().get_ops()]\n\
         get = lambda r, k: str(r[k].astype(str)) if k in r.keys() else ''\n\
         print(json.dumps([{{'layer_type': get(r, 'layerType'), 'primitive': get(r, 'primitiveType'), \
         'precision': get(r, 'runtimePrecision')}} for r in rt]))\n",
        model.display().to_string(),
        out.display().to_string(),
        input.display().to_string()
    );
    let r = std::process::Command::new("python3").args(["-c", &script]).output().map_err(|e| e.to_string())?;
    if !r.status.success() {
        let err = String::from_utf8_lossy(&r.stderr);
        return Err(format!("openvino: {}", err.lines().last().unwrap_or_default()));
    }
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).map_err(|e| format!("openvino's layer list: {e}"))?;
    let field = |l: &serde_json::Value, k: &str| l[k].as_str().unwrap_or_default().to_string();
    let layers = v
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|l| OvLayer {
            layer_type: field(l, "layer_type"),
            primitive: field(l, "primitive"),
            precision: field(l, "precision"),
        })
        .collect();
    Ok((qforge::npy::read(&out).map_err(|e| format!("{e:#}"))?, layers))
}

/// The ONNX checker with strict shape inference (`onnx.checker.check_model(full_check=True)`) on
/// the model file `model`: an export is valid ONNX, not only something ORT accepts. The checker's
/// last error line otherwise.
pub fn onnx_check(model: &std::path::Path) -> Result<(), String> {
    let script = format!(
        "import onnx\nonnx.checker.check_model(onnx.load({:?}), full_check=True)\n",
        model.display().to_string()
    );
    let r = std::process::Command::new("python3").args(["-c", &script]).output().map_err(|e| e.to_string())?;
    if r.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&r.stderr);
    Err(format!("onnx.checker: {}", err.lines().last().unwrap_or_default()))
}

/// Whether this CPU has an int8 dot-product instruction without intermediate saturation
/// (AVX-512 VNNI or AVX-VNNI). Without one, ONNX Runtime's u8 x i8 kernels (and OpenVINO's
/// oneDNN ones) multiply with `vpmaddubsw`, which saturates each pair of products to i16, so
/// they do not compute the ONNX operators exactly (ONNX Runtime's quantization guide: "This
/// instruction might suffer from saturation issues"; qforge's integer kernels are exact on every
/// CPU): tests that use them as an oracle need this.
pub fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512vnni") || std::is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The first thing a test marked `#[ignore = "needs ..."]` does: it runs only when asked for
/// (`cargo test -- --include-ignored`, as CI does after installing the tools), and then a missing
/// tool is a failure, never a silent pass.
pub fn require(available: bool, what: &str) {
    assert!(available, "this test needs {what}; install it, or run the suite without --include-ignored");
}
