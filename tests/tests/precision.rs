//! Mixed precision: the fp16/bf16 facts of the seed, precision assignment snapshots on a
//! conv net and a transformer block under fp16, bf16, amp and every shipped profile, the overflow
//! guard, channel alignment padding, and accuracy on the corpus (digits_cnn top-1, mobilenet_v2
//! SQNR against fp32 and against ONNX Runtime's fp16 model).
//!
//! Every snapshot case goes through one helper, [`check`], which asserts the invariants (softmax,
//! layer norm and batch norm stay f32; conv, gemm and matmul run low; no cast reads a cast; graph
//! inputs and outputs keep their types; the result verifies; a second run changes nothing; the
//! outputs stay finite and close to f32) and then snapshots the IR and the pass report.

use anyhow::{bail, ensure, Context, Result};
use qforge::options::{PipelineOptions, Precision};
use qforge::Compiler;
use qforge_ir::{interp, DType, Dim, Graph, Op, Tensor};
use qforge_passes::precision::amp::STAT_ACCURACY_GUARD;
use qforge_passes::precision::{
    config_for, observe_ranges, AlignChannels, AssignPrecision, Interpreter, PrecisionConfig, Profile,
};
use qforge_passes::{PassContext, PassReport, Pipeline};
use qforge_tests::{agreement, corpus_file};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/precision")).join(name)
}

fn load(name: &str) -> Graph {
    qforge::load_model(&fixture(&format!("{name}.qir"))).expect("fixture parses")
}

/// Deterministic inputs in [-scale, scale] for every graph input, symbolic dims bound to 2.
fn inputs(g: &Graph, scale: f32) -> Vec<Tensor> {
    let mut s: u32 = 0x9e37_79b9;
    g.inputs()
        .iter()
        .map(|&id| {
            let dims: Vec<usize> = g.node(id).outputs[0].shape.dims().iter().map(|d| d.fixed().unwrap_or(2)).collect();
            let n = dims.iter().product();
            let v = (0..n)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 17;
                    s ^= s << 5;
                    (s as f32 / u32::MAX as f32 * 2.0 - 1.0) * scale
                })
                .collect();
            Tensor::from_f32(dims, v)
        })
        .collect()
}

fn cx() -> PassContext {
    PassContext { verify: true, ..PassContext::default() }
}

/// How a snapshot case assigns precision.
#[derive(Clone, Copy, Debug)]
enum Setting {
    /// `--precision fp16|bf16|amp` on the host profile as written (not detected: snapshots must
    /// not depend on the CPU).
    Mode(&'static str),
    /// `--precision amp` under a shipped profile, with its channel padding.
    Profile(&'static str),
    /// `--precision fp32` with a qconfig (a fixture file) whose float regions ask for fp16/bf16.
    Regions(&'static str),
}

fn shipped(name: &str) -> Profile {
    Profile::all_shipped().into_iter().find(|p| p.name == name).expect("a shipped profile")
}

/// The pipeline of a setting, the low type every conv and matmul must get (`None`: the regions
/// decide), and the snapshot label.
fn pipeline(setting: Setting) -> (Pipeline, Option<DType>, String) {
    let (profile, mode) = match setting {
        Setting::Mode(m) => (Profile::host_base(), m),
        Setting::Profile(p) => (shipped(p), "amp"),
        Setting::Regions(file) => {
            let q = qforge::qconfig::load(&fixture(file)).expect("the region fixture parses").config;
            let p = Pipeline::new().with(AssignPrecision::new(PrecisionConfig::regions_only(q)));
            return (p, None, format!("regions_{}", file.trim_end_matches(".toml")));
        }
    };
    let c = config_for(mode, &profile).expect("the profile supports the mode");
    let low = Some(c.low);
    let mut p = Pipeline::new().with(AssignPrecision::new(c));
    if profile.layout.channel_align > 1 {
        p = p.with(AlignChannels { align: profile.layout.channel_align });
    }
    let label = match setting {
        Setting::Mode(m) => m.to_string(),
        Setting::Profile(p) => format!("amp_{}", p.replace('-', "_")),
        Setting::Regions(_) => unreachable!("returned above"),
    };
    (p, low, label)
}

fn report_text(reports: &[PassReport]) -> String {
    let mut s = String::new();
    for r in reports {
        s += &format!("pass {}\n", r.pass);
        for (k, v) in &r.stats {
            s += &format!("  {k}: {v}\n");
        }
        for n in &r.notes {
            s += &format!("  {n}\n");
        }
    }
    s
}

/// The invariants of precision assignment on `g` (assigned from `g0` with low type `low`, if
/// every conv and matmul must have it).
fn invariants(g0: &Graph, g: &Graph, low: Option<DType>) -> Result<()> {
    qforge_ir::verify::verify(g)?;
    for id in g.schedule()? {
        let n = g.node(id);
        let d = n.outputs[0].dtype;
        match &n.op {
            Op::Softmax { .. } | Op::LogSoftmax { .. } | Op::LayerNorm { .. } | Op::BatchNorm { .. } => {
                ensure!(d == DType::F32, "{} ({}) is {d}, not f32", n.name, n.op.name())
            }
            Op::Conv(_) | Op::MatMul | Op::Gemm { .. } => {
                if let Some(low) = low {
                    ensure!(d == low, "{} ({}) is {d}, not {low}", n.name, n.op.name())
                }
            }
            Op::Cast { .. } => {
                let src = n.inputs()[0].context("cast without input")?;
                let p = g.node(src.node);
                ensure!(!matches!(p.op, Op::Cast { .. }), "cast chain: {} reads {}", n.name, p.name);
                ensure!(!matches!(p.op, Op::Const(_)), "runtime cast of constant {}", p.name);
            }
            _ => {}
        }
    }
    let types = |g: &Graph| -> Vec<String> {
        let ins = g.inputs().iter().map(|&i| g.node(i).outputs[0].to_string());
        ins.chain(g.outputs().iter().map(|o| g.value_type(o.value).to_string())).collect()
    };
    ensure!(types(g0) == types(g), "graph input/output types changed: {:?} -> {:?}", types(g0), types(g));
    Ok(())
}

/// Runs `setting` on `fixture`: invariants, idempotence, agreement with f32, then the snapshot.
fn check(fixture_name: &str, setting: Setting) -> Result<()> {
    let g0 = load(fixture_name);
    let (p, low, label) = pipeline(setting);
    let mut g = g0.clone();
    let reports = p.run(&mut g, &cx(), &mut |_, _| {})?;
    invariants(&g0, &g, low)?;

    let text = qforge_ir::text::print_default(&g)?;
    let full = qforge_ir::text::print(&g, qforge_ir::text::ConstMode::Full)?;
    let back = qforge_ir::text::parse(&full).context("the assigned graph's text parses back")?;
    ensure!(qforge_ir::text::print(&back, qforge_ir::text::ConstMode::Full)? == full, "text round trip");
    let mut again = g.clone();
    for r in p.run(&mut again, &cx(), &mut |_, _| {})? {
        ensure!(!r.changed, "second run of `{}` changed the graph: {:?}", r.pass, r.stats);
    }
    ensure!(qforge_ir::text::print_default(&again)? == text, "second run changed the IR text");

    let x = inputs(&g0, 1.0);
    let (want, got) = (interp::run(&g0, &x)?, interp::run(&g, &x)?);
    let min_db = if low == Some(DType::F16) { 45.0 } else { 25.0 };
    for (w, y) in want.iter().zip(&got) {
        ensure!(y.to_f32_vec().iter().all(|v| v.is_finite()), "non-finite output");
        let a = agreement(y, w, None)?;
        println!("{fixture_name} {label}: {a}");
        ensure!(a.sqnr_db > min_db, "SQNR {:.1} dB against f32 is below {min_db} dB", a.sqnr_db);
    }

    let snap = format!("{text}\n{}", report_text(&reports));
    let name = format!("precision__{fixture_name}__{label}");
    insta::with_settings!({ snapshot_path => "../../snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!(name, snap);
    });
    Ok(())
}

macro_rules! cases {
    ($($name:ident: $fixture:expr, $setting:expr;)*) => {$(
        #[test]
        fn $name() {
            if let Err(e) = check($fixture, $setting) {
                panic!("{e:#}");
            }
        }
    )*};
}

cases! {
    conv_net_fp16: "conv_net", Setting::Mode("fp16");
    conv_net_bf16: "conv_net", Setting::Mode("bf16");
    conv_net_amp: "conv_net", Setting::Mode("amp");
    transformer_fp16: "transformer_block", Setting::Mode("fp16");
    transformer_bf16: "transformer_block", Setting::Mode("bf16");
    transformer_amp: "transformer_block", Setting::Mode("amp");
    conv_net_host: "conv_net", Setting::Profile("host");
    conv_net_xavier: "conv_net", Setting::Profile("nvidia-xavier");
    conv_net_snapdragon: "conv_net", Setting::Profile("qualcomm-snapdragon");
    conv_net_movidius: "conv_net", Setting::Profile("intel-movidius");
    conv_net_cortex_a78: "conv_net", Setting::Profile("arm-cortex-a78");
    transformer_host: "transformer_block", Setting::Profile("host");
    transformer_xavier: "transformer_block", Setting::Profile("nvidia-xavier");
    transformer_snapdragon: "transformer_block", Setting::Profile("qualcomm-snapdragon");
    transformer_movidius: "transformer_block", Setting::Profile("intel-movidius");
    transformer_cortex_a78: "transformer_block", Setting::Profile("arm-cortex-a78");
    transformer_regions: "transformer_block", Setting::Regions("regions_attention_fp16_mlp_bf16.toml");
}

/// Converts through the interpreter's `cast` and returns the f32 value of the result.
fn stored(x: f32, d: DType) -> f32 {
    let t = Tensor::from_f32(vec![1], vec![x]);
    let ty = qforge_ir::TensorType::new(DType::F32, qforge_ir::Shape::fixed(&[1]));
    let y = interp::eval_op(&Op::Cast { to: d }, &[Some(&ty)], &[], &[Some(&t)]).expect("cast runs");
    y[0].to_f32_vec()[0]
}

/// `w - g` computed by the interpreter with both operands stored in `d`.
fn update(w: f32, g: f32, d: DType) -> f32 {
    let mut gr = Graph::new("update");
    let ty = qforge_ir::TensorType::new(d, qforge_ir::Shape(vec![Dim::Fixed(1)]));
    let a = gr.add_input("w", ty.clone());
    let b = gr.add_input("g", ty);
    let s = gr.add_node(Op::Binary(qforge_ir::BinaryOp::Sub), vec![Some(a), Some(b)], None, "sub").unwrap();
    gr.add_output("w2", s);
    let t = |v| Tensor::from_f32_slice(d, vec![1], &[v]);
    let out = interp::run(&gr, &[t(w), t(g)]).unwrap();
    assert_eq!(out[0].dtype(), d);
    out[0].to_f32_vec()[0]
}

/// The seed's section 6.2.1 facts, on the interpreter's numerics.
#[test]
fn fp16_and_bf16_facts_from_the_seed() {
    // 1e-8 is below fp16's smallest subnormal (2^-24, about 6e-8): it underflows to 0. bf16 has
    // f32's exponent range and keeps it (to 3 significant digits).
    assert_eq!(stored(1e-8, DType::F16), 0.0);
    let b = stored(1e-8, DType::BF16);
    assert!(b != 0.0 && (b - 1e-8).abs() < 1e-8 * 0.005, "bf16(1e-8) = {b:e}");
    // The 1e-5 gradient itself is representable in both, but the update 1.0 - 1e-5 is lost in
    // fp16 and in bf16 storage: their spacing just below 1.0 is 2^-11 and 2^-8.
    assert!(stored(1e-5, DType::F16) > 0.0 && stored(1e-5, DType::BF16) > 0.0);
    assert_eq!(update(1.0, 1e-5, DType::F16), 1.0);
    assert_eq!(update(1.0, 1e-5, DType::BF16), 1.0);
    assert_eq!(update(1.0, 1e-5, DType::F32), 1.0 - 1e-5);
    // 65504 is fp16's largest finite value: it is stored exactly, 65519 rounds down to it, 65520
    // (the midpoint to the next binade) rounds to infinity; bf16 holds 1e5 and 3e38.
    assert_eq!(stored(65504.0, DType::F16), 65504.0);
    assert_eq!(stored(65519.0, DType::F16), 65504.0);
    assert_eq!(stored(65520.0, DType::F16), f32::INFINITY);
    assert!((stored(1e5, DType::BF16) - 1e5).abs() < 1e5 * 0.004);
    assert!(stored(3e38, DType::BF16).is_finite());
    // 1.0 + 2^-11 is a tie in fp16 and rounds to even (1.0); 1.0 + 3 * 2^-11 rounds up.
    assert_eq!(stored(1.0 + 2f32.powi(-11), DType::F16), 1.0);
    assert_eq!(stored(1.0 + 3.0 * 2f32.powi(-11), DType::F16), 1.0 + 2.0 * 2f32.powi(-10));
}

fn run_with(g: &Graph, c: PrecisionConfig) -> Result<(Graph, PassReport)> {
    let mut g = g.clone();
    let mut r = Pipeline::new().with(AssignPrecision::new(c)).run(&mut g, &cx(), &mut |_, _| {})?;
    Ok((g, r.remove(0)))
}

fn dtype_of(g: &Graph, name: &str) -> DType {
    let id = g.node_ids().find(|&i| g.node(i).name == name).unwrap_or_else(|| panic!("no node {name}"));
    g.node(id).outputs[0].dtype
}

fn all_finite(t: &[Tensor]) -> bool {
    t.iter().all(|t| t.to_f32_vec().iter().all(|v| v.is_finite()))
}

/// The overflow fixture's calibration and test input: |/big/Gemm| reaches about 1.4e5.
fn overflow_input() -> Tensor {
    Tensor::from_f32(vec![3, 4], vec![10.0, -10.0, 10.0, -10.0, 6.0, -6.0, 6.0, -6.0, 1.0, 2.0, 3.0, 4.0])
}

#[test]
fn overflow_guard_keeps_large_activations_in_f32() -> Result<()> {
    let g = load("overflow");
    let x = overflow_input();
    let want = interp::run(&g, std::slice::from_ref(&x))?;
    let profile = Profile::host_base();

    // Without calibration, fp16 overflows: /big/Gemm's result is infinite and softmax gives NaN.
    let (plain, _) = run_with(&g, config_for("fp16", &profile).unwrap())?;
    assert_eq!(dtype_of(&plain, "/big/Gemm"), DType::F16);
    assert!(!all_finite(&interp::run(&plain, std::slice::from_ref(&x))?), "fp16 without the guard should overflow");

    // With calibration ranges, the guard keeps /big/Gemm (result beyond 32752) and /scale/Mul
    // (its input is) in f32; the head gemm (about 14) runs in fp16.
    let ranges = observe_ranges(&g, &[vec![x.clone()]], &Interpreter::default()).map_err(anyhow::Error::msg)?;
    assert!(ranges["/big/Gemm"] > 65504.0, "{ranges:?}");
    let mut c = config_for("fp16", &profile).unwrap();
    c.ranges = Some(ranges.clone());
    let (guarded, report) = run_with(&g, c.clone())?;
    assert_eq!(dtype_of(&guarded, "/big/Gemm"), DType::F32);
    assert_eq!(dtype_of(&guarded, "/scale/Mul"), DType::F32);
    assert_eq!(dtype_of(&guarded, "/head/Gemm"), DType::F16);
    assert_eq!(report.stats["nodes kept fp32 by the overflow guard"], 2);
    let note = report.notes.iter().find(|n| n.starts_with("/big/Gemm")).unwrap();
    assert!(note.contains("overflow guard") && note.contains("32752"), "{note}");
    let got = interp::run(&guarded, std::slice::from_ref(&x))?;
    assert!(all_finite(&got));
    let a = agreement(&got[0], &want[0], None)?;
    println!("overflow fp16 with the guard: {a}");
    assert!(a.max_abs < 1e-2, "{a}");
    // idempotent with the guard too
    let (twice, r2) = run_with(&guarded, c)?;
    assert!(!r2.changed);
    assert_eq!(qforge_ir::text::print_default(&twice)?, qforge_ir::text::print_default(&guarded)?);

    // bf16 has f32's range: no guard needed, the output is finite.
    let (bf, _) = run_with(&g, config_for("bf16", &profile).unwrap())?;
    assert_eq!(dtype_of(&bf, "/big/Gemm"), DType::BF16);
    assert!(all_finite(&interp::run(&bf, std::slice::from_ref(&x))?));

    // A user forces a region to f32 by name (the seed's custom_fwd(cast_inputs=float32)).
    let mut c = config_for("amp", &profile).unwrap();
    c.policy.apply_overrides("force_fp32 = [\"/head/*\", \"/big/*\"]", "test").map_err(anyhow::Error::msg)?;
    let (forced, report) = run_with(&g, c)?;
    assert_eq!(dtype_of(&forced, "/head/Gemm"), DType::F32);
    assert!(report.notes.iter().any(|n| n.starts_with("/head/Gemm") && n.contains("pattern `/head/*`")));
    assert!(all_finite(&interp::run(&forced, std::slice::from_ref(&x))?));
    Ok(())
}

/// The same guard through the compiler: `--precision fp16 --calib X.npy`.
#[test]
fn overflow_guard_through_the_compiler() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("qforge-precision-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let calib = dir.join("overflow_calib.npy");
    qforge::npy::write(&calib, &overflow_input())?;
    let opts = PipelineOptions { precision: Precision::Fp16, calib: Some(calib), ..PipelineOptions::default() };
    let exe = Compiler::new(opts)?.compile(load("overflow"))?;
    assert_eq!(dtype_of(exe.graph(), "/big/Gemm"), DType::F32);
    assert!(all_finite(&exe.run(&[overflow_input()])?));
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

fn bits(t: &[Tensor]) -> Vec<Vec<u32>> {
    t.iter().map(|t| t.to_f32_vec().iter().map(|v| v.to_bits()).collect()).collect()
}

#[test]
fn xavier_padding_leaves_outputs_unchanged() -> Result<()> {
    let g0 = load("odd_channels");
    let x = inputs(&g0, 1.0);
    let align = shipped("nvidia-xavier").layout.channel_align;
    assert_eq!(align, 8);
    let pad = || Pipeline::new().with(AlignChannels { align });

    // f32: bit-identical outputs
    let mut g = g0.clone();
    let r = pad().run(&mut g, &cx(), &mut |_, _| {})?;
    println!("{}", report_text(&r));
    assert_eq!(r[0].stats["ops padded"], 3, "conv1, conv2 and the gemm");
    for id in g.node_ids() {
        let n = g.node(id);
        if matches!(n.op, Op::Conv(_) | Op::Gemm { .. }) {
            let w = g.value_type(n.inputs()[1].unwrap());
            let m = w.shape.dims()[0].fixed().unwrap();
            assert_eq!(m % 8, 0, "{} has {m} output channels", n.name);
        }
        if n.name == "/conv2/Conv" {
            // the unpad slice sank through batch norm and relu into conv2's input channels
            let w = g.value_type(n.inputs()[1].unwrap());
            assert_eq!(w.shape.dims()[1], Dim::Fixed(8));
        }
    }
    assert_eq!(bits(&interp::run(&g, &x)?), bits(&interp::run(&g0, &x)?));
    let mut again = g.clone();
    assert!(!pad().run(&mut again, &cx(), &mut |_, _| {})?[0].changed);

    // amp fp16 then padding (xavier's pipeline) gives exactly what amp fp16 alone gives
    let c = config_for("amp", &shipped("nvidia-xavier")).unwrap();
    let (amp, _) = run_with(&g0, c)?;
    let mut padded = amp.clone();
    pad().run(&mut padded, &cx(), &mut |_, _| {})?;
    assert_eq!(bits(&interp::run(&padded, &x)?), bits(&interp::run(&amp, &x)?));
    Ok(())
}

fn options(precision: Precision) -> PipelineOptions {
    PipelineOptions { precision, ..PipelineOptions::default() }
}

fn top1(opts: PipelineOptions) -> Result<f64> {
    let exe = Compiler::new(opts)?.compile(qforge::load_model(&corpus_file("digits_cnn.onnx"))?)?;
    let x = qforge::npy::read(&corpus_file("digits_test_x.npy"))?;
    let y = qforge::data::labels(&qforge::npy::read(&corpus_file("digits_test_y.npy"))?)?;
    let scores = exe.run_batched(&x, 128)?;
    qforge::data::top1(&qforge::data::argmax_rows(&scores)?, &y)
}

#[test]
fn digits_fp16_and_bf16_keep_top1() -> Result<()> {
    let fp32 = top1(options(Precision::Fp32))?;
    assert_eq!((fp32 * 597.0).round(), 594.0, "fp32 top-1 {fp32} (99.50%: 594 of 597)");
    for p in [Precision::Fp16, Precision::Bf16, Precision::Amp] {
        let acc = top1(options(p))?;
        println!("digits_cnn {p:?}: top-1 {:.2}% (fp32 {:.2}%)", acc * 100.0, fp32 * 100.0);
        ensure!(acc >= fp32 - 0.005, "{p:?} top-1 {acc} is more than 0.5 points below fp32 {fp32}");
    }
    Ok(())
}

fn mobilenet(opts: PipelineOptions) -> Result<Tensor> {
    let exe = Compiler::new(opts)?.compile(qforge::load_model(&corpus_file("mobilenet_v2.onnx"))?)?;
    let x = qforge::npy::read(&corpus_file("imagenet_like_test_x.npy"))?;
    Ok(exe.run(&[x])?.remove(0))
}

/// mobilenet_v2 in fp16 against fp32 and against ONNX Runtime's fp16 model.
///
/// The weights are random (see the corpus README), and such a network amplifies a perturbation by
/// about 1.5 dB per block: fp16 storage everywhere reaches 37.0 dB against fp32 (ONNX Runtime's
/// own fp16 conversion: 35.2 dB; ORT running the f32 model with only its weights rounded to fp16:
/// 39.3 dB, so no all-fp16 assignment can reach 40 dB). The accuracy guard (`--min-sqnr 40` with
/// the corpus's calibration inputs) keeps the shortest prefix of ops in f32 that reaches 40 dB on
/// the calibration inputs: 6 of 100 (measured 40.7 dB on the test inputs).
///
/// Against ORT fp16 (`fixtures/precision/make_fp16_reference.py`): both are fp16 roundings of the
/// same network, ORT's with batch norm in fp16 and tiny weights clamped to 1e-7, so they differ by
/// their two noises: measured max |diff| 0.0110 on outputs of max 0.512 (2.1 %), SQNR 32.8 dB, same
/// top-1. Tolerance: max |diff| 0.015, SQNR 30 dB, same argmax.
#[test]
fn mobilenet_v2_fp16_against_fp32_and_onnx_runtime() -> Result<()> {
    let fp32 = qforge::npy::read(&corpus_file("mobilenet_v2_test_out_fp32.npy"))?;
    let ort16 = qforge::npy::read(&fixture("mobilenet_v2_test_out_ort_fp16.npy"))?;
    let ort = agreement(&ort16, &fp32, None)?;
    println!("ORT fp16 vs fp32: {ort}");

    let y = mobilenet(options(Precision::Fp16))?;
    let a = agreement(&y, &fp32, None)?;
    println!("qforge fp16 vs fp32: {a}");
    ensure!(a.sqnr_db > 36.0 && a.sqnr_db > ort.sqnr_db, "fp16 SQNR {:.1} dB", a.sqnr_db);
    ensure!(a.top1_same == a.rows, "top-1 differs from fp32");

    let b = agreement(&y, &ort16, None)?;
    println!("qforge fp16 vs ORT fp16: {b}");
    ensure!(b.max_abs <= 0.015 && b.sqnr_db >= 30.0 && b.top1_same == b.rows, "against ORT fp16: {b}");

    let guarded = PipelineOptions {
        calib: Some(corpus_file("imagenet_like_calib_x.npy")),
        min_sqnr: Some(40.0),
        ..options(Precision::Fp16)
    };
    let compiler = Compiler::new(guarded)?;
    let qforge::State { graph: g, reports, .. } =
        compiler.run(qforge::load_model(&corpus_file("mobilenet_v2.onnx"))?, &mut |_, _| {})?;
    let kept = reports.iter().find_map(|r| r.stats.get(STAT_ACCURACY_GUARD).copied()).context("no guard stat")?;
    let y = compiler.executable(g).run(&[qforge::npy::read(&corpus_file("imagenet_like_test_x.npy"))?])?.remove(0);
    let c = agreement(&y, &fp32, None)?;
    println!("qforge fp16 with the accuracy guard at 40 dB ({kept} ops kept f32) vs fp32: {c}");
    ensure!(c.sqnr_db > 40.0, "SQNR {:.1} dB", c.sqnr_db);
    ensure!(kept > 0 && kept < 20, "the guard kept {kept} ops in f32");
    Ok(())
}

#[test]
fn profile_and_precision_errors_are_clear() -> Result<()> {
    let err = |opts: PipelineOptions| match Compiler::new(opts) {
        Ok(_) => panic!("accepted"),
        Err(e) => format!("{e:#}"),
    };
    let e = err(PipelineOptions { profile: Some("jetson-nano".into()), ..PipelineOptions::default() });
    assert!(e.contains("unknown hardware profile `jetson-nano`") && e.contains("intel-movidius"), "{e}");
    for p in ["nvidia-xavier", "qualcomm-snapdragon", "intel-movidius", "arm-cortex-a78"] {
        let e = err(PipelineOptions { profile: Some(p.into()), ..options(Precision::Bf16) });
        assert!(e.contains(&format!("profile `{p}` has no bf16")), "{e}");
    }
    let dir = std::env::temp_dir().join(format!("qforge-precision-err-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "name = \"mine\"\n[dtypes]\nint8 = true\n")?;
    let e = err(PipelineOptions { profile: Some(bad.display().to_string()), ..PipelineOptions::default() });
    assert!(e.contains("bad.toml") && e.contains("nvidia-xavier"), "{e}");
    // a user's profile file works
    let mine = dir.join("mine.toml");
    let text = Profile::all_shipped()[2].clone();
    let src = qforge_passes::precision::profile::SHIPPED[2].1.replace("qualcomm-snapdragon", "mine");
    std::fs::write(&mine, src)?;
    let c = Compiler::new(PipelineOptions { profile: Some(mine.display().to_string()), ..options(Precision::Amp) })?;
    assert_eq!(c.profile().name, "mine");
    assert_eq!(c.profile().dtypes, text.dtypes);
    let bad_cfg = dir.join("bad_precision.toml");
    std::fs::write(&bad_cfg, "[classes]\nsoftmax = \"fp8\"\n")?;
    let e = err(PipelineOptions { precision_config: Some(bad_cfg), ..options(Precision::Amp) });
    assert!(e.contains("bad_precision.toml") && e.contains("fp8"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
    if Compiler::new(options(Precision::Bf16)).is_err() {
        bail!("the host profile has bf16 storage: --precision bf16 must work without --profile");
    }
    Ok(())
}

/// A corpus model whose activations leave fp16's range (light_squeezenet: constant 0.02 weights,
/// activations grow layer by layer): fp16 without calibration overflows; with `--calib` the guard
/// keeps the large layers in f32 and the output matches ONNX Runtime's f32 output.
#[test]
fn squeezenet_fp16_needs_the_overflow_guard() -> Result<()> {
    let model = corpus_file("light/light_squeezenet.onnx");
    let input = corpus_file("light/light_squeezenet_input.npy");
    let x = qforge::npy::read(&input)?;
    let reference = qforge::npy::read(&corpus_file("light/light_squeezenet_output.npy"))?;
    let exe = Compiler::new(options(Precision::Fp16))?.compile(qforge::load_model(&model)?)?;
    assert!(!all_finite(&exe.run(std::slice::from_ref(&x))?), "expected fp16 to overflow without the guard");

    let opts = PipelineOptions { calib: Some(input), ..options(Precision::Fp16) };
    let compiler = Compiler::new(opts)?;
    let qforge::State { graph: g, reports, .. } = compiler.run(qforge::load_model(&model)?, &mut |_, _| {})?;
    let r = reports.iter().find(|r| r.pass == "precision").context("no precision report")?;
    let guarded = r.stats["nodes kept fp32 by the overflow guard"];
    println!("light_squeezenet fp16: {guarded} nodes guarded, {} low precision", r.stats["nodes low precision"]);
    assert!(guarded > 0 && r.stats["nodes low precision"] > 0);
    let y = interp::run(&g, &[x])?;
    assert!(all_finite(&y));
    let a = agreement(&y[0], &reference, None)?;
    println!("light_squeezenet fp16 with the guard vs ORT f32: {a}");
    ensure!(a.max_abs <= 1e-4 * a.ref_max_abs, "{a}");
    Ok(())
}

/// Every IR fixture (the golden ones of `fixtures/qir` too: quantized, multi-output, data
/// movement) under every mode: verifies, no cast chains, inputs and outputs keep their types, a
/// second run changes nothing, and the result runs to finite outputs wherever f32 did.
#[test]
fn every_fixture_assigns_cleanly() -> Result<()> {
    let mut paths = vec![];
    for dir in ["fixtures/qir", "fixtures/precision"] {
        for e in std::fs::read_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir))? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "qir") {
                paths.push(p);
            }
        }
    }
    paths.sort();
    for path in paths {
        let g0 = qforge::load_model(&path)?;
        for mode in ["fp16", "bf16", "amp"] {
            let what = format!("{} {mode}", path.file_name().unwrap().to_string_lossy());
            let c = config_for(mode, &Profile::host_base()).unwrap();
            let low = c.low;
            let (g, _) = run_with(&g0, c.clone()).with_context(|| what.clone())?;
            // conv/matmul/gemm in these fixtures may stay f32 only if they are not f32 to begin with
            invariants_loose(&g0, &g).with_context(|| what.clone())?;
            let (again, r) = run_with(&g, c)?;
            ensure!(!r.changed, "{what}: second run changed {:?}", r.stats);
            ensure!(qforge_ir::text::print_default(&again)? == qforge_ir::text::print_default(&g)?, "{what}");
            let x = inputs(&g0, 1.0);
            if let Ok(want) = interp::run(&g0, &x) {
                let got = interp::run(&g, &x).with_context(|| what.clone())?;
                ensure!(all_finite(&got) || !all_finite(&want) || what.starts_with("overflow"), "{what}: {low}");
            }
        }
    }
    Ok(())
}

/// [`invariants`] without requiring compute ops to be low (a fixture may hold quantized ones).
fn invariants_loose(g0: &Graph, g: &Graph) -> Result<()> {
    qforge_ir::verify::verify(g)?;
    for id in g.schedule()? {
        let n = g.node(id);
        if let Op::Cast { .. } = n.op {
            let p = g.node(n.inputs()[0].context("cast without input")?.node);
            // a model's own cast from a type precision assignment never produces (f64, the
            // integers) may feed a boundary cast: folding the two would round twice differently
            let from_model_type = p
                .inputs()
                .first()
                .copied()
                .flatten()
                .is_some_and(|v| !matches!(g.value_type(v).dtype, DType::F32 | DType::F16 | DType::BF16));
            ensure!(!matches!(p.op, Op::Cast { .. }) || from_model_type, "cast chain: {} reads {}", n.name, p.name);
        }
        if matches!(n.op, Op::Softmax { .. } | Op::LayerNorm { .. } | Op::BatchNorm { .. }) {
            ensure!(
                n.outputs[0].dtype == DType::F32
                    || g0.node_ids().any(|i| g0.node(i).name == n.name && g0.node(i).outputs[0].dtype != DType::F32),
                "{} is not f32",
                n.name
            );
        }
    }
    let types = |g: &Graph| -> Vec<String> {
        let ins = g.inputs().iter().map(|&i| g.node(i).outputs[0].to_string());
        ins.chain(g.outputs().iter().map(|o| g.value_type(o.value).to_string())).collect()
    };
    ensure!(types(g0) == types(g), "graph input/output types changed: {:?} -> {:?}", types(g0), types(g));
    Ok(())
}

/// `--precision fp32 --qconfig` with fp16 and bf16 regions goes through the compiler: the
/// attention's matmuls run in fp16, the MLP's in bf16, softmax, layer norm and the rest in f32.
#[test]
fn qconfig_regions_through_the_compiler() -> Result<()> {
    let opts = PipelineOptions {
        qconfig: Some(fixture("regions_attention_fp16_mlp_bf16.toml")),
        opt_level: 1,
        ..options(Precision::Fp32)
    };
    let g = Compiler::new(opts)?.optimize(load("transformer_block"))?;
    let mut seen = std::collections::BTreeMap::new();
    for id in g.schedule()? {
        let n = g.node(id);
        if matches!(n.op, Op::MatMul | Op::Softmax { .. } | Op::LayerNorm { .. }) {
            seen.insert(n.name.clone(), n.outputs[0].dtype.to_string());
        }
    }
    let want: Vec<(&str, &str)> = vec![
        ("/attn/context/MatMul", "f16"),
        ("/attn/k/MatMul", "f16"),
        ("/attn/out/MatMul", "f16"),
        ("/attn/q/MatMul", "f16"),
        ("/attn/scores/MatMul", "f16"),
        ("/attn/v/MatMul", "f16"),
        ("/attn/Softmax", "f32"),
        ("/ln1/LayerNormalization", "f32"),
        ("/ln2/LayerNormalization", "f32"),
        ("/mlp/fc1/MatMul", "bf16"),
        ("/mlp/fc2/MatMul", "bf16"),
    ];
    let got: Vec<(&str, &str)> = seen.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut want = want;
    want.sort();
    ensure!(got == want, "{got:?}");
    Ok(())
}
