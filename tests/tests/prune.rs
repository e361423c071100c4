//! Structured channel pruning (`prune-channels`) against its oracle: the pruned graph computes
//! exactly (bit for bit, on the reference interpreter) what the original graph computes with the
//! removed channels' input weights zeroed in every consumer. A removed channel contributes nothing
//! downstream; zeroing its consumers' weights is the one edit of the original that does the same
//! (zeroing the conv's own weights would not: its bias and a batch norm's shift still make the
//! channel non-zero). On small `.qir` fixtures (a concatenation, a residual add, a depthwise
//! inverted residual, each refusal, whose reports are snapshots), the digits CNN (batch norm
//! unfolded and folded), ResNet-18 and MobileNetV2.

use proptest::prelude::*;
use qforge_ir::text::{parse, print, ConstMode};
use qforge_ir::{Graph, Op, Tensor};
use qforge_passes::prune::{prune_channels, Outcome, PruneChannels, PruneOptions, PruneReport};
use qforge_passes::{PassContext, Pipeline};
use qforge_tests::{corpus_file, first_rows, fixture_inputs};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn fixture(name: &str) -> Graph {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/prune")).join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn text(g: &Graph) -> String {
    print(g, ConstMode::Full).expect("prints")
}

/// `g` with every consumer's removed input positions zeroed (the oracle's original).
fn zeroed_consumers(g: &Graph, r: &PruneReport) -> Graph {
    let mut z = g.clone();
    for cut in &r.consumer_cuts {
        let v = z.node(cut.node).inputs()[cut.slot].expect("a consumer's weight");
        let Op::Const(t) = &z.node(v.node).op else { panic!("consumer weight is not a constant") };
        let (shape, mut vals) = (t.shape().to_vec(), t.to_f32_vec());
        let inner: usize = shape[cut.axis + 1..].iter().product();
        let outer: usize = shape[..cut.axis].iter().product();
        for o in 0..outer {
            for &p in &cut.positions {
                let at = (o * shape[cut.axis] + p) * inner;
                vals[at..at + inner].fill(0.0);
            }
        }
        let c = z.add_const(z.node(v.node).name.clone(), Tensor::from_f32(shape, vals));
        z.set_input(cut.node, cut.slot, Some(c));
    }
    z.remove_dead();
    z
}

/// Every output of `a` equals `b`'s bit for bit.
fn assert_same(what: &str, a: &[Tensor], b: &[Tensor]) {
    assert_eq!(a.len(), b.len(), "{what}: output count");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.shape(), y.shape(), "{what}: output {i} shape");
        let (x, y) = (x.to_f32_vec(), y.to_f32_vec());
        let diff = x.iter().zip(&y).filter(|(p, q)| p.to_bits() != q.to_bits()).count();
        let max = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert_eq!(diff, 0, "{what}: output {i}: {diff} of {} elements differ, by up to {max:e}", x.len());
    }
}

/// Prunes a copy of `g` and checks it against the oracle on `inputs`; returns the report.
fn oracle(what: &str, g: &Graph, opts: &PruneOptions, inputs: &[Tensor]) -> (Graph, PruneReport) {
    oracle_with(what, g, opts, inputs, true)
}

/// [`oracle`], with the JIT's run of the small pruned graphs when `jit`.
fn oracle_with(what: &str, g: &Graph, opts: &PruneOptions, inputs: &[Tensor], jit: bool) -> (Graph, PruneReport) {
    let mut pruned = g.clone();
    let r = prune_channels(&mut pruned, opts).unwrap_or_else(|e| panic!("{what}: {e}"));
    qforge_ir::verify::verify(&pruned).unwrap_or_else(|e| panic!("{what}: the pruned graph does not verify: {e}"));
    let zeroed = zeroed_consumers(g, &r);
    let run = |g: &Graph| qforge_ir::interp::run(g, inputs).unwrap_or_else(|e| panic!("{what}: {e}"));
    let (want, got) = (run(&zeroed), run(&pruned));
    assert_same(what, &got, &want);
    if jit && r.after.macs < 10_000_000 {
        // the JIT runs the odd channel counts pruning leaves (the large models' JIT runs are
        // left to the corpus tests: compiling them here would double this test's time)
        qforge_tests::check_jit(&pruned, inputs, &got).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    }
    if r.removed() > 0 {
        // (MACs of convs on a symbolic image size are not counted: they may all be)
        assert!(r.after.macs <= r.before.macs && r.after.params < r.before.params, "{what}: {r}");
        assert!(r.after.macs < r.before.macs || !r.after.unknown.is_empty(), "{what}: {r}");
    }
    if r.removed() > 0 && !what.starts_with("light") {
        // the removed channels mattered: the oracle is not the original itself (the light models'
        // constant weights make every channel alike, so there it may be)
        let orig = run(g);
        assert!(
            orig.iter().zip(&want).any(|(a, b)| a.to_f32_vec() != b.to_f32_vec()),
            "{what}: zeroing the removed channels changed nothing"
        );
    }
    (pruned, r)
}

/// The report text and each consumer's removed positions (by node name).
fn snapshot_text(g: &Graph, r: &PruneReport) -> String {
    let mut s = r.to_string();
    for c in &r.consumer_cuts {
        s.push_str(&format!(
            "consumer `{}` input {} axis {}: positions {:?} removed\n",
            g.node(c.node).name,
            c.slot,
            c.axis,
            c.positions
        ));
    }
    s
}

#[test]
fn fixtures_equal_their_zeroed_originals() {
    for name in ["concat.qir", "residual.qir", "depthwise.qir", "se.qir", "concat_depthwise.qir"] {
        let g = fixture(name);
        let (_, r) = oracle(name, &g, &PruneOptions::amount(0.5), &fixture_inputs(&g));
        assert!(r.removed() > 0, "{name}: nothing pruned\n{r}");
        insta::with_settings!({ snapshot_path => "../../snapshots", prepend_module_to_snapshot => false }, {
            insta::assert_snapshot!(format!("prune@{name}"), snapshot_text(&g, &r));
        });
    }
}

/// Each refusal leaves the graph as it was and says why, per conv.
#[test]
fn refusals_leave_the_graph_alone() {
    let g = fixture("refusals.qir");
    let mut pruned = g.clone();
    let r = prune_channels(&mut pruned, &PruneOptions::amount(0.5)).expect("prunes");
    assert_eq!(text(&pruned), text(&g));
    assert!(r.convs.iter().all(|c| matches!(c.outcome, Outcome::Refused(_))), "{r}");
    insta::with_settings!({ snapshot_path => "../../snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("prune@refusals.qir", snapshot_text(&g, &r));
    });
}

/// A conv the patterns leave out keeps its channels; the others are still pruned exactly.
#[test]
fn patterns_select_convs() {
    let g = fixture("concat.qir");
    let opts = PruneOptions { amount: 0.5, include: vec!["/*/Conv".into()], exclude: vec!["/b/*".into()] };
    let (_, r) = oracle("concat.qir without /b/", &g, &opts, &fixture_inputs(&g));
    let by_name: BTreeMap<&str, (usize, usize, &Outcome)> =
        r.convs.iter().map(|c| (c.name.as_str(), (c.before, c.after, &c.outcome))).collect();
    assert_eq!(by_name["/b/Conv"], (3, 3, &Outcome::Refused("not selected by the patterns".into())));
    assert_eq!(by_name["/a/Conv"].1, 2);
    assert_eq!(by_name["/c/Conv"].1, 3);
}

fn digits_cnn() -> Graph {
    qforge::load_model(&corpus_file("digits_cnn.onnx")).expect("digits_cnn.onnx imports")
}

fn digits_inputs() -> Vec<Tensor> {
    let x = qforge::npy::read(&corpus_file("digits_test_x.npy")).expect("digits_test_x.npy");
    vec![first_rows(&x, 16)]
}

/// Amount 0 is the identity on every graph.
#[test]
fn amount_zero_is_the_identity() {
    let graphs =
        ["concat.qir", "residual.qir", "depthwise.qir", "se.qir", "concat_depthwise.qir", "refusals.qir"].map(fixture);
    for g in graphs.into_iter().chain([digits_cnn()]) {
        let mut p = g.clone();
        let r = prune_channels(&mut p, &PruneOptions::amount(0.0)).expect("prunes");
        assert!(!r.changed() && r.before == r.after, "{r}");
        assert_eq!(text(&p), text(&g));
    }
}

/// The amount applies to the original count, recorded on each pruned conv (and kept by the text
/// form): the same amount again changes nothing, a larger one prunes to its own target, a smaller
/// one cannot put channels back.
#[test]
fn amount_applies_to_the_original_count() {
    for name in ["residual.qir", "depthwise.qir", "se.qir"] {
        let mut g = fixture(name);
        let first = prune_channels(&mut g, &PruneOptions::amount(0.3)).expect("prunes");
        assert!(first.changed());
        let once = text(&g);
        // through the text form, as a saved model would be
        let mut again = parse(&once).expect("parses");
        let r = prune_channels(&mut again, &PruneOptions::amount(0.3)).expect("prunes");
        assert!(!r.changed(), "{name}: a second run changed the graph:\n{r}");
        assert_eq!(text(&again), once);
        // through the pass (verified by the pipeline), as the compiler would run it
        let cx = PassContext { verify: true, ..PassContext::default() };
        let reports =
            Pipeline::new().with(PruneChannels(PruneOptions::amount(0.3))).run(&mut again, &cx, &mut |_, _| {});
        assert!(!reports.expect("runs")[0].changed);
        let r = prune_channels(&mut again, &PruneOptions::amount(0.75)).expect("prunes");
        for c in r.convs.iter().filter(|c| matches!(c.outcome, Outcome::Pruned { .. })) {
            let want = c.original - qforge_passes::prune::channels_to_prune(0.75, c.original);
            assert_eq!(c.after, want, "{name}: `{}` after 0.3 then 0.75:\n{r}", c.name);
        }
        let text75 = text(&again);
        let r = prune_channels(&mut again, &PruneOptions::amount(0.3)).expect("prunes");
        assert!(!r.changed());
        assert_eq!(text(&again), text75);
    }
}

/// The digits CNN as exported (batch norm unfolded) and with batch norm folded into the convs.
#[test]
fn digits_cnn_equals_its_zeroed_original() {
    let g = digits_cnn();
    let x = digits_inputs();
    let (_, r) = oracle("digits_cnn", &g, &PruneOptions::amount(0.3), &x);
    println!("digits_cnn (batch norm unfolded):\n{r}");
    let channels: Vec<(usize, usize)> = r.convs.iter().map(|c| (c.before, c.after)).collect();
    // round(0.3 * 16) = 5, round(0.3 * 32) = 10, round(0.3 * 64) = 19
    assert_eq!(channels, vec![(16, 11), (32, 22), (64, 45)]);
    let mut folded = g.clone();
    assert_eq!(qforge_passes::batchnorm::fold_batch_norms(&mut folded), 3);
    let (_, rf) = oracle("digits_cnn (folded)", &folded, &PruneOptions::amount(0.3), &x);
    println!("digits_cnn (batch norm folded):\n{rf}");
    assert_eq!(rf.convs.iter().map(|c| (c.before, c.after)).collect::<Vec<_>>(), channels);
}

/// One 224x224 image of the corpus's ImageNet-like inputs.
fn imagenet_input() -> Vec<Tensor> {
    let x = qforge::npy::read(&corpus_file("imagenet_like_test_x.npy")).expect("imagenet_like_test_x.npy");
    vec![first_rows(&x, 1)]
}

/// ResNet-18: every residual stage is one group (the stem or downsample conv with each block's
/// last conv), pruned by the summed norm.
#[test]
fn resnet18_equals_its_zeroed_original() {
    let g = qforge::load_model(&corpus_file("resnet18.onnx")).expect("resnet18.onnx imports");
    let (_, r) = oracle("resnet18", &g, &PruneOptions::amount(0.3), &imagenet_input());
    println!("resnet18:\n{r}");
    let refused: Vec<&str> =
        r.convs.iter().filter(|c| matches!(c.outcome, Outcome::Refused(_))).map(|c| c.name.as_str()).collect();
    assert!(refused.is_empty(), "refused: {refused:?}\n{r}");
}

/// MobileNetV2: depthwise convs follow their expansion conv; the projection convs of a stage
/// share the residual adds' channels.
#[test]
fn mobilenet_v2_equals_its_zeroed_original() {
    let g = qforge::load_model(&corpus_file("mobilenet_v2.onnx")).expect("mobilenet_v2.onnx imports");
    let (_, r) = oracle("mobilenet_v2", &g, &PruneOptions::amount(0.3), &imagenet_input());
    println!("mobilenet_v2:\n{r}");
    assert!(r.convs.iter().any(|c| matches!(c.outcome, Outcome::Follows { .. }) && c.after < c.before), "{r}");
}

/// One model's line of figures and its refusal reasons, each once with how many convs it stopped
/// (node names left out: the reasons name the op that refused).
fn summary(name: &str, r: &PruneReport) -> String {
    let pruned = r.convs.iter().filter(|c| c.after < c.before).count();
    let mut s = format!(
        "{name}: MACs {} -> {}{}, parameters {} -> {}; {} convs, {pruned} pruned\n",
        r.before.macs,
        r.after.macs,
        if r.after.unknown.is_empty() {
            String::new()
        } else {
            format!(" ({} convs of symbolic size uncounted)", r.after.unknown.len())
        },
        r.before.params,
        r.after.params,
        r.convs.len()
    );
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for c in &r.convs {
        if let Outcome::Refused(why) = &c.outcome {
            let general: Vec<&str> =
                why.split('`').enumerate().map(|(i, p)| if i % 2 == 1 { "_" } else { p }).collect();
            *reasons.entry(general.join("`")).or_default() += 1;
        }
    }
    for (why, n) in reasons {
        s.push_str(&format!("  {n} refused: {why}\n"));
    }
    s
}

/// Model-zoo architectures with constant weights (`light/`): concatenations (Inception,
/// SqueezeNet, DenseNet, whose batch norms after each concatenation are sliced at the offsets),
/// flattening reshapes with an explicit size (AlexNet), and the refusals real models make: LRN,
/// grouped convs and channel shuffles, a softmax over the channels, a graph output. Every channel
/// ties on the norm, so the lowest indices go; the oracle holds all the same. (VGG-19, ZFNet-512
/// and ResNet-50 take 4 to 10 s each on the interpreter and add nothing these do not cover.)
#[test]
fn light_models_equal_their_zeroed_originals() {
    let mut text = String::new();
    for m in ["squeezenet", "inception_v1", "inception_v2", "densenet121", "shufflenet", "bvlc_alexnet"] {
        let g = qforge::load_model(&corpus_file(&format!("light/light_{m}.onnx"))).expect("imports");
        let x = qforge::npy::read(&corpus_file(&format!("light/light_{m}_input.npy"))).expect("input");
        let (_, r) = oracle(&format!("light_{m}"), &g, &PruneOptions::amount(0.3), &[x]);
        text.push_str(&summary(m, &r));
    }
    insta::with_settings!({ snapshot_path => "../../snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("prune@light_models", text);
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any amount: the oracle holds, each pruned conv keeps `M - round(amount * M)` channels (at
    /// least one), and the same amount again changes nothing.
    #[test]
    fn any_amount_keeps_the_oracle(amount in 0.0f64..=1.0, which in 0usize..5) {
        let name = ["concat.qir", "residual.qir", "depthwise.qir", "se.qir", "concat_depthwise.qir"][which];
        let g = fixture(name);
        let what = format!("{name} at {amount}");
        let (mut pruned, r) = oracle_with(&what, &g, &PruneOptions::amount(amount), &fixture_inputs(&g), false);
        for c in &r.convs {
            let k = qforge_passes::prune::channels_to_prune(amount, c.original);
            match &c.outcome {
                Outcome::Pruned { .. } => prop_assert_eq!(c.after, c.original - k, "{}", r),
                // these fixtures refuse only an amount that removes every channel (a depthwise conv
                // then follows its unpruned input; one after a concatenation follows two groups,
                // whose counts the oracle checks)
                Outcome::Refused(why) if !why.starts_with("depthwise") => prop_assert_eq!(k, c.original, "{}", r),
                Outcome::Refused(_) | Outcome::Follows { .. } => {}
            }
        }
        let once = text(&pruned);
        let again = prune_channels(&mut pruned, &PruneOptions::amount(amount)).expect("prunes");
        prop_assert!(!again.changed());
        prop_assert_eq!(text(&pruned), once);
    }
}

/// Every `.qir` fixture of the other topics (quantized graphs, symbolic sizes, transformers,
/// spatial ops): pruning never fails, and whatever it prunes keeps the oracle.
#[test]
fn every_fixture_prunes_or_refuses() {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures"));
    let mut pruned = 0;
    let mut files = 0;
    for dir in std::fs::read_dir(&root).expect("fixtures") {
        let dir = dir.expect("entry").path();
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for f in entries {
            let path = f.expect("entry").path();
            if path.extension().is_none_or(|e| e != "qir") || dir.ends_with("prune") {
                continue;
            }
            let Ok(g) = std::fs::read_to_string(&path).map_err(|_| ()).and_then(|t| parse(&t).map_err(|_| ())) else {
                continue;
            };
            files += 1;
            let what = path.display().to_string();
            let (_, r) = oracle_with(&what, &g, &PruneOptions::amount(0.5), &fixture_inputs(&g), false);
            pruned += (r.removed() > 0) as usize;
        }
    }
    println!("{files} fixtures, {pruned} pruned");
    assert!(files > 50 && pruned > 0, "{files} fixtures, {pruned} pruned");
}

/// The zoo (`fixtures/zoo/`: torchvision detectors, segmenters and classifiers, a UNet, a text
/// recognizer, PP-LCNet- and YOLOv8-style models, each from both exporters, on a symbolic image
/// size) at its first test image: every pruned graph keeps the oracle, and the snapshot records
/// what each model gives up and why (transposes of ConvNeXt, grouped convs of RegNet, channel
/// shuffles, detector heads whose weights are shared across levels, constants the TorchScript
/// exporter shares between equal initializers).
#[test]
fn zoo_equals_its_zeroed_originals() {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/zoo"));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).expect("manifest")).expect("json");
    let mut text = String::new();
    for (name, m) in manifest["models"].as_object().expect("models") {
        let images = m["images"].as_str().expect("images");
        let x = qforge::npy::read(&dir.join(format!("{images}_test_a.npy"))).expect("images");
        for suffix in ["", "_dynamo"] {
            let g = qforge::load_model(&dir.join(format!("{name}{suffix}.onnx"))).expect("imports");
            let (_, r) = oracle(&format!("{name}{suffix}"), &g, &PruneOptions::amount(0.3), &[first_rows(&x, 1)]);
            text.push_str(&summary(&format!("{name}{suffix}"), &r));
        }
    }
    insta::with_settings!({ snapshot_path => "../../snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("prune@zoo", text);
    });
}
