//! The equality-saturation optimizer (`qforge_passes::egraph`):
//!
//! * golden snapshots of every fixture in `tests/fixtures/opt/` before and after, with the rules
//!   that fired and the fusion report (`snapshots/opt@*.snap`);
//! * idempotence: optimizing an optimized graph changes nothing;
//! * differential: every fixture and every corpus model runs on the interpreter before and after
//!   optimization and the results agree (float: within 1e-4 of the largest magnitude; quantized:
//!   within one output step, since the integer kernels round once where the literal Q/DQ graph
//!   rounds in float);
//! * the corpus: the optimized QDQ and QAT digits models against ONNX Runtime's outputs, their
//!   structure (fused integer kernels, no Q/DQ between two integer ops), and no batch norm left
//!   in the float models.

use qforge_ir::{Graph, Op, Tensor};
use qforge_passes::egraph::{cost::CostTable, Optimize};
use qforge_passes::{PassContext, PassReport, Pipeline};
use qforge_tests::{agreement, check_at, corpus_file, Case, Expect};
use std::path::Path;

fn cx() -> PassContext {
    PassContext { verify: true, ..PassContext::default() }
}

/// Runs the optimizer alone (verified after), returning the graph and its report.
fn optimize_with(g: &Graph, opt: Optimize) -> (Graph, PassReport) {
    let mut g = g.clone();
    let mut reports = Pipeline::new().with(opt).run(&mut g, &cx(), &mut |_, _| {}).expect("the optimizer runs");
    (g, reports.remove(0))
}

fn optimize(g: &Graph) -> (Graph, PassReport) {
    optimize_with(g, Optimize::default())
}

fn fixture(path: &Path) -> Graph {
    let text = std::fs::read_to_string(path).expect("fixture reads");
    qforge_ir::text::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn text(g: &Graph) -> String {
    qforge_ir::text::print_default(g).expect("graph prints")
}

/// What the snapshot records of a report: the rules that fired and the notes.
fn report_text(r: &PassReport) -> String {
    let mut s = String::new();
    let fired: Vec<String> =
        r.stats.iter().filter_map(|(k, v)| k.strip_prefix("applied ").filter(|_| *v > 0).map(str::to_string)).collect();
    s.push_str(&format!("changed: {}\nrules fired: {}\n", r.changed, fired.join(", ")));
    for key in ["nodes before", "nodes after"] {
        s.push_str(&format!("{key}: {}\n", r.stats.get(key).copied().unwrap_or(0)));
    }
    for n in &r.notes {
        s.push_str(n);
        s.push('\n');
    }
    s
}

#[test]
fn golden_fixtures() {
    insta::glob!("../fixtures/opt", "*.qir", |path| {
        let g = fixture(path);
        let (after, report) = optimize(&g);
        let (cost_before, cost_after) = (report.stats["cost before"], report.stats["cost after"]);
        assert!(cost_after <= cost_before, "{}: cost {cost_before} -> {cost_after}", path.display());
        let snap = format!("{}\n// after optimize\n{}\n// report\n{}", text(&g), text(&after), report_text(&report));
        insta::with_settings!({ snapshot_path => "../../snapshots", prepend_module_to_snapshot => false }, {
            insta::assert_snapshot!("opt", snap);
        });
    });
}

#[test]
fn optimizing_twice_changes_nothing() {
    insta::glob!("../fixtures/opt", "*.qir", |path| {
        let (once, _) = optimize(&fixture(path));
        let (twice, r) = optimize(&once);
        assert_eq!(text(&once), text(&twice), "{}: the second run changed the graph", path.display());
        assert!(!r.changed, "{}: the second run reports a change", path.display());
    });
    for model in ["digits_cnn.onnx", "digits_cnn_int8_qdq.onnx", "digits_cnn_qat.onnx", "light/light_inception_v2.onnx"]
    {
        let (once, _) = optimize(&qforge::load_model(&corpus_file(model)).expect("imports"));
        let (twice, r) = optimize(&once);
        assert_eq!(text(&once), text(&twice), "{model}: the second run changed the graph");
        assert!(!r.changed, "{model}: the second run reports a change");
    }
}

fn inputs(g: &Graph) -> Vec<Tensor> {
    qforge_tests::fixture_inputs(g)
}

/// Runs `before` and `after` on the same inputs and checks every output agrees: floats within
/// 1e-4 of the largest magnitude, quantized results within `steps` output steps.
fn differential(name: &str, before: &Graph, after: &Graph, x: &[Tensor], steps: f32) {
    let a = qforge_ir::interp::run(before, x).unwrap_or_else(|e| panic!("{name}: before: {e}"));
    let b = qforge_ir::interp::run(after, x).unwrap_or_else(|e| panic!("{name}: after: {e}"));
    for (i, (a, b)) in a.iter().zip(&b).enumerate() {
        let step = qforge_tests::output_step_at(before, i);
        let quantized = before.value_type(before.outputs()[i].value).quant.is_some();
        let ag = agreement(b, a, step.filter(|_| !quantized)).unwrap_or_else(|e| panic!("{name}: output {i}: {e}"));
        let tol = match step {
            Some(_) if quantized => steps + 1e-3,
            Some(s) => (1e-4 * ag.ref_max_abs).max(s * (steps + 1e-3)),
            None => 1e-4 * ag.ref_max_abs.max(1e-30),
        };
        println!("{name} output {i}: {ag}");
        assert!(ag.max_abs <= tol, "{name}: output {i} differs by {} (tolerance {tol})", ag.max_abs);
    }
}

#[test]
fn fixtures_agree_before_and_after() {
    insta::glob!("../fixtures/opt", "*.qir", |path| {
        let g = fixture(path);
        let (after, _) = optimize(&g);
        differential(&path.display().to_string(), &g, &after, &inputs(&g), 1.0);
    });
}

#[test]
fn without_int8_nothing_is_lowered_and_the_report_says_why() {
    let g = fixture(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/opt/qdq_conv_relu.qir"));
    let opt = Optimize { cost: CostTable { int8: false, ..CostTable::host() }, ..Optimize::default() };
    let (after, r) = optimize_with(&g, opt);
    assert!(!after.node_ids().any(|n| after.node(n).op.is_integer_kernel()));
    assert!(
        r.notes.iter().any(|n| n.contains("`/conv/Conv` (conv): the profile lacks int8 kernels")),
        "{:#?}",
        r.notes
    );
}

// ---- the corpus

fn optimized_model(model: &str) -> (Graph, Graph, Vec<PassReport>) {
    let g = qforge::load_model(&corpus_file(model)).expect("imports");
    let compiler = qforge::Compiler::new(qforge::PipelineOptions::default()).expect("default options");
    let st = compiler.run(g.clone(), &mut |_, _| {}).expect("the pipeline runs");
    let (opt, reports) = (st.graph, st.reports);
    (g, opt, reports)
}

fn op_counts(g: &Graph) -> std::collections::BTreeMap<&'static str, usize> {
    let mut m = std::collections::BTreeMap::new();
    for n in g.schedule().expect("schedules") {
        *m.entry(g.node(n).op.name()).or_default() += 1;
    }
    m
}

/// The integer digits models: every conv and the gemm are fused integer kernels with an
/// epilogue, no float compute is left, no Q/DQ sits between two integer ops, and the fusion
/// report is empty.
fn assert_fully_lowered(model: &str) {
    let (before, g, reports) = optimized_model(model);
    let ops = op_counts(&g);
    println!(
        "{model}: {} nodes before, {} after: {ops:?}",
        before.schedule().unwrap().len(),
        g.schedule().unwrap().len()
    );
    assert_eq!(ops.get("qconv"), Some(&3), "{model}: {ops:?}");
    assert_eq!(ops.get("qgemm"), Some(&1), "{model}: {ops:?}");
    for float_op in ["conv", "gemm", "relu", "global_average_pool", "requantize"] {
        assert!(!ops.contains_key(float_op), "{model}: a `{float_op}` is left: {ops:?}");
    }
    assert_eq!((ops.get("quantize"), ops.get("dequantize")), (Some(&1), Some(&1)), "{model}: {ops:?}");
    for n in g.node_ids() {
        if let Op::QConv { epilogue, .. } | Op::QGemm { epilogue, .. } = &g.node(n).op {
            assert!(epilogue.len() >= 2, "{model}: `{}` has epilogue {epilogue:?}", g.node(n).name);
        }
    }
    let opt = reports.iter().find(|r| r.pass == "optimize").expect("the optimizer ran");
    assert!(!opt.notes.iter().any(|n| n.starts_with("not fused")), "{model}: {:#?}", opt.notes);
    println!("{model}: {:#?}", opt);
}

#[test]
fn qdq_digits_lowers_to_integer_kernels() {
    assert_fully_lowered("digits_cnn_int8_qdq.onnx");
}

#[test]
fn qat_digits_lowers_to_integer_kernels() {
    assert_fully_lowered("digits_cnn_qat.onnx");
}

macro_rules! optimized_cases {
    ($($name:ident: $model:expr, $input:expr, $reference:expr, $expect:expr;)*) => {$(
        #[test]
        fn $name() {
            let case = Case { model: $model, input: $input, reference: $reference, expect: $expect };
            if let Err(e) = check_at(&case, 2) {
                panic!("{e:#}");
            }
        }
    )*};
}

optimized_cases! {
    // The optimized QDQ model runs ORT's own integer kernels: bit-exact but for rare ties.
    digits_int8_qdq_optimized: "digits_cnn_int8_qdq.onnx", "digits_test_x.npy", "digits_test_logits_ort_qdq.npy",
        Expect::Quantized { min_exact: 0.99, max_steps: 1.0, same_top1: true };
    // QAT: ORT keeps the convs in float (FusedConv on dequantized inputs, its bias quantized to
    // i32 first) and lowers only the gemm; the optimizer lowers all of them, within one step.
    digits_qat_optimized: "digits_cnn_qat.onnx", "digits_test_x.npy", "digits_test_logits_qat_ort.npy",
        Expect::Quantized { min_exact: 0.0, max_steps: 1.0, same_top1: true };
    digits_cnn_optimized: "digits_cnn.onnx", "digits_test_x.npy", "digits_test_logits_fp32.npy",
        Expect::Float { rel: 1e-4 };
}

/// A float corpus model: no batch norm left after optimization, the optimized graph agrees with
/// the unoptimized one and with ORT.
fn float_model(model: &str, input: &str, reference: &str) {
    let (before, after, reports) = optimized_model(model);
    let (b, a) = (op_counts(&before), op_counts(&after));
    println!("{model}: {} nodes as imported {b:?}", before.schedule().unwrap().len());
    println!("{model}: {} nodes optimized {a:?}", after.schedule().unwrap().len());
    for r in &reports {
        println!("{model}: {} {:?} {:?} {:?}", r.pass, r.time, r.stats, r.notes);
    }
    assert!(!a.contains_key("batch_norm"), "{model}: batch norm left: {a:?}");
    batch_norm_summary(model, &before, &after, &reports);
    let x = qforge::npy::read(&corpus_file(input)).expect("input reads");
    differential(model, &before, &after, std::slice::from_ref(&x), 0.0);
    let out = qforge_ir::interp::run(&after, &[x]).expect("runs").remove(0);
    let reference = qforge::npy::read(&corpus_file(reference)).expect("reference reads");
    let ag = agreement(&out, &reference, None).expect("compares");
    println!("{model} vs ORT: {ag}");
    assert!(ag.max_abs <= 1e-4 * ag.ref_max_abs, "{model}: {ag}");
}

macro_rules! float_models {
    ($($name:ident: $model:expr, $input:expr, $reference:expr;)*) => {$(
        #[test]
        fn $name() {
            float_model($model, $input, $reference);
        }
    )*};
}

float_models! {
    digits_cnn_before_after: "digits_cnn.onnx", "digits_test_x.npy", "digits_test_logits_fp32.npy";
    mobilenet_v2_before_after: "mobilenet_v2.onnx", "imagenet_like_test_x.npy", "mobilenet_v2_test_out_fp32.npy";
    resnet18_before_after: "resnet18.onnx", "imagenet_like_test_x.npy", "resnet18_test_out_fp32.npy";
    light_resnet50_before_after: "light/light_resnet50.onnx", "light/light_resnet50_input.npy", "light/light_resnet50_output.npy";
    light_densenet121_before_after: "light/light_densenet121.onnx", "light/light_densenet121_input.npy", "light/light_densenet121_output.npy";
    light_inception_v2_before_after: "light/light_inception_v2.onnx", "light/light_inception_v2_input.npy", "light/light_inception_v2_output.npy";
    light_shufflenet_before_after: "light/light_shufflenet.onnx", "light/light_shufflenet_input.npy", "light/light_shufflenet_output.npy";
    light_bvlc_alexnet_before_after: "light/light_bvlc_alexnet.onnx", "light/light_bvlc_alexnet_input.npy", "light/light_bvlc_alexnet_output.npy";
    light_inception_v1_before_after: "light/light_inception_v1.onnx", "light/light_inception_v1_input.npy", "light/light_inception_v1_output.npy";
    light_squeezenet_before_after: "light/light_squeezenet.onnx", "light/light_squeezenet_input.npy", "light/light_squeezenet_output.npy";
    light_vgg19_before_after: "light/light_vgg19.onnx", "light/light_vgg19_input.npy", "light/light_vgg19_output.npy";
    light_zfnet512_before_after: "light/light_zfnet512.onnx", "light/light_zfnet512_input.npy", "light/light_zfnet512_output.npy";
}

// ---- batch norm folding

/// The batch norms of `before` and what became of them after the default pipeline: how many were
/// folded into a conv, and the optimizer's note for each one that was not. Checks that every
/// batch norm left in `after` has a note saying why it could not fold (none may be left
/// although it could fold), and that the optimizer never made the graph costlier.
fn batch_norm_summary(name: &str, before: &Graph, after: &Graph, reports: &[PassReport]) -> String {
    let bns: Vec<&str> = before
        .node_ids()
        .map(|n| before.node(n))
        .filter(|n| matches!(n.op, Op::BatchNorm { .. }))
        .map(|n| n.name.as_str())
        .collect();
    let opt = reports.iter().find(|r| r.pass == "optimize").expect("the optimizer ran");
    let (cost_before, cost_after) = (opt.stats["cost before"], opt.stats["cost after"]);
    assert!(cost_after <= cost_before, "{name}: cost {cost_before} -> {cost_after}");
    let notes: Vec<&String> = opt.notes.iter().filter(|n| n.starts_with("batch norm `")).collect();
    for n in &notes {
        assert!(!n.contains("although it could be"), "{name}: {n}");
    }
    for id in after.node_ids() {
        let node = after.node(id);
        if matches!(node.op, Op::BatchNorm { .. }) {
            let why = format!("batch norm `{}` not folded into a conv: ", node.name);
            assert!(
                notes.iter().any(|n| n.starts_with(&why)),
                "{name}: `{}` is left unexplained: {notes:#?}",
                node.name
            );
        }
    }
    let folded = opt.stats.get("batch norms folded").copied().unwrap_or(0);
    let plural = if bns.len() == 1 { "" } else { "s" };
    let mut s = format!("{name}: {} batch norm{plural}, {folded} folded\n", bns.len());
    for n in notes {
        s.push_str(&format!("  {n}\n"));
    }
    s
}

/// Every FP32 model of the corpus (`digits_cnn`, the ImageNet-shaped and the `light/` models) has
/// a `float_models` case above, which checks that no batch norm is left.
#[test]
fn every_float_corpus_model_has_a_case() {
    let src = include_str!("optimizer.rs");
    let mut models = vec![];
    for dir in ["", "light"] {
        for e in std::fs::read_dir(corpus_file(dir)).expect("the corpus is there") {
            let name = e.expect("reads").file_name().to_string_lossy().to_string();
            let float = name.ends_with(".onnx") && !name.contains("int8") && !name.contains("qat");
            if float {
                models.push(if dir.is_empty() { name } else { format!("{dir}/{name}") });
            }
        }
    }
    models.sort();
    assert_eq!(models.len(), 12, "{models:?}");
    for m in models {
        assert!(src.contains(&format!("_before_after: \"{m}\"")), "{m} has no float_models case");
    }
}

/// Every float fixture (the `.qir` fixtures without quantized values and the FP32 transformer
/// exports) after the default pipeline: each batch norm is folded into the conv before it, or
/// the optimizer's report says why it cannot be (no conv before it, a conv with other users,
/// parameters that are not constants). The snapshot lists every batch norm left.
#[test]
fn batch_norms_fold_in_every_float_fixture() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut files = vec![];
    let mut dirs = vec![root.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("fixtures read") {
            let p = e.expect("reads").path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "qir") {
                files.push(p);
            }
        }
    }
    for m in ["transformers/vit.onnx", "transformers/bert.onnx", "quant/transformer_block.onnx"] {
        files.push(root.join(m));
    }
    files.sort();
    let mut summary = String::new();
    for path in files {
        let g = qforge::load_model(&path).expect("loads");
        let quantized = g.node_ids().any(|n| {
            let node = g.node(n);
            node.op.is_integer_kernel()
                || matches!(node.op, Op::Quantize | Op::Dequantize | Op::DynamicQuantize)
                || node.outputs.iter().any(|t| t.quant.is_some())
        });
        if quantized {
            continue;
        }
        let compiler = qforge::Compiler::new(qforge::PipelineOptions::default()).expect("default options");
        let qforge::State { graph: after, reports, .. } =
            compiler.run(g.clone(), &mut |_, _| {}).expect("the pipeline runs");
        let name = path.strip_prefix(&root).expect("under fixtures").display().to_string();
        summary.push_str(&batch_norm_summary(&name, &g, &after, &reports));
    }
    insta::with_settings!({ snapshot_path => "../../snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("optimizer__batch_norms_in_float_fixtures", summary);
    });
}

/// The integer corpus models before and after, on the interpreter: within two output steps (the
/// literal Q/DQ graph rounds in float at every layer, the integer kernels once per layer; ORT's
/// own literal and fused runs differ by as much).
#[test]
fn integer_models_before_after() {
    for model in
        ["digits_cnn_int8_qdq.onnx", "digits_cnn_qat.onnx", "digits_cnn_int8_qop.onnx", "digits_cnn_int8_dynamic.onnx"]
    {
        let (before, after, _) = optimized_model(model);
        let x = qforge::npy::read(&corpus_file("digits_test_x.npy")).expect("input reads");
        differential(model, &before, &after, &[x], 2.0);
    }
}

/// The transposed convolutions of `fixtures/conv_transpose/` (made by `make_fixtures.py`) through
/// the canonicalization stage's `conv-transpose-as-conv`: the graph before and after with the
/// pass's report (`snapshots/conv_transpose@*.snap`), the same results on the interpreter
/// before and after (float, within 1e-4 of the largest magnitude), and a second run that
/// changes nothing.
#[test]
fn conv_transposes_become_convolutions() {
    use qforge_passes::conv_transpose::ConvTransposeAsConv;
    insta::glob!("../fixtures/conv_transpose", "*.qir", |path| {
        let g = fixture(path);
        let run = |g: &Graph| {
            let mut g = g.clone();
            let mut r = Pipeline::new().with(ConvTransposeAsConv).run(&mut g, &cx(), &mut |_, _| {}).expect("runs");
            (g, r.remove(0))
        };
        let (after, report) = run(&g);
        let (twice, r2) = run(&after);
        assert_eq!(text(&after), text(&twice), "{}: the second run changed the graph", path.display());
        assert!(!r2.changed, "{}: the second run reports a change", path.display());
        differential(&path.display().to_string(), &g, &after, &inputs(&g), 0.0);
        let mut said = format!("changed: {}\n", report.changed);
        for (k, v) in &report.stats {
            said.push_str(&format!("{k}: {v}\n"));
        }
        for n in &report.notes {
            said.push_str(&format!("{n}\n"));
        }
        let snap = format!("{}\n// after conv-transpose-as-conv\n{}\n// report\n{said}", text(&g), text(&after));
        insta::with_settings!({ snapshot_path => "../../snapshots", prepend_module_to_snapshot => false }, {
            insta::assert_snapshot!("conv_transpose", snap);
        });
    });
}
