//! ONNX import: every corpus model imports and verifies; malformed files, unsupported ops and bad
//! quantization parameters are the right errors, never panics; small hand-built models check the
//! opset-dependent mappings.

use prost::Message;
use qforge::onnx::builder::*;
use qforge::onnx::proto::{
    attribute_proto::AttributeType, tensor_shape_proto::dimension, tensor_shape_proto::Dimension, type_proto,
    AttributeProto, ModelProto, NodeProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use qforge::onnx::tensors::{tensor_to_proto, TensorError};
use qforge::onnx::{import_bytes, import_bytes_with, import_file, ImportError, ImportOptions};
use qforge_ir::{DType, Dim, Graph, Op, QuantParams, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const MODELS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/models");

fn models_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("corpus directory {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    v.sort();
    v
}

fn histogram(g: &Graph) -> BTreeMap<&'static str, usize> {
    let mut h = BTreeMap::new();
    for id in g.node_ids().filter(|&id| !matches!(g.node(id).op, Op::Input)) {
        *h.entry(g.node(id).op.name()).or_default() += 1;
    }
    h
}

fn import_and_report(path: &Path) -> Graph {
    let g = import_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let inputs: Vec<String> =
        g.inputs().iter().map(|&i| format!("{}: {}", g.node(i).name, g.node(i).outputs[0])).collect();
    let outputs: Vec<String> = g.outputs().iter().map(|o| format!("{}: {}", o.name, g.value_type(o.value))).collect();
    println!("{}: inputs {inputs:?} outputs {outputs:?}", path.display());
    println!("    {:?}", histogram(&g));
    g
}

fn count(g: &Graph, name: &str) -> usize {
    histogram(g).get(name).copied().unwrap_or(0)
}

// ------------------------------------------------------------------------------------ corpus

#[test]
fn digits_models_import_and_verify() {
    let dir = Path::new(MODELS);
    let paths: Vec<PathBuf> = models_in(dir)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("digits")))
        .collect();
    assert_eq!(paths.len(), 5, "{paths:?}");
    for p in &paths {
        let g = import_and_report(p);
        // Symbolic batch from dim_param `N`, through to the logits.
        let input = g.node(g.inputs()[0]);
        assert_eq!(input.outputs[0].shape.0[0], Dim::Sym("N".into()), "{}", p.display());
        assert_eq!(g.outputs()[0].name, "logits");
        let out = g.value_type(g.outputs()[0].value);
        assert_eq!(out.shape.0, vec![Dim::Sym("N".into()), Dim::Fixed(10)], "{}", p.display());
        assert_eq!(out.dtype, DType::F32);
        let stem = p.file_stem().unwrap().to_string_lossy().to_string();
        assert_eq!(g.name, stem);
        match stem.as_str() {
            "digits_cnn" => {
                assert_eq!((count(&g, "conv"), count(&g, "batch_norm"), count(&g, "gemm")), (3, 3, 1));
            }
            "digits_cnn_int8_qop" => {
                assert_eq!((count(&g, "qconv"), count(&g, "qgemm"), count(&g, "qglobal_average_pool")), (3, 1, 1));
                assert_eq!((count(&g, "quantize"), count(&g, "dequantize")), (1, 1));
                // Weights are quantized constants, per output channel.
                let qconv = g.node_ids().find(|&id| matches!(g.node(id).op, Op::QConv { .. })).unwrap();
                let w = g.value_type(g.node(qconv).inputs()[1].unwrap());
                assert!(
                    matches!(&w.quant, Some(QuantParams::PerAxis { axis: 0, scales, .. }) if scales.len() == 16),
                    "{w}"
                );
                // The logits come out of a requantizing gemm and are dequantized.
                let out_q = g.node(g.outputs()[0].value.node).inputs()[0].unwrap();
                assert_eq!(g.value_type(out_q).quant, Some(QuantParams::per_tensor(0.070_809_39, 105)));
            }
            "digits_cnn_int8_qdq" => {
                assert_eq!((count(&g, "quantize"), count(&g, "dequantize"), count(&g, "conv")), (8, 16, 3));
            }
            "digits_cnn_int8_dynamic" => {
                assert_eq!(
                    (count(&g, "dynamic_quantize"), count(&g, "conv_integer"), count(&g, "matmul_integer")),
                    (4, 3, 1)
                );
                // The bias reshapes are folded at import.
                assert_eq!(count(&g, "reshape"), 0);
            }
            "digits_cnn_qat" => {
                assert_eq!((count(&g, "quantize"), count(&g, "dequantize"), count(&g, "conv")), (10, 10, 3));
            }
            other => panic!("unexpected model {other}"),
        }
    }
}

#[test]
fn imagenet_models_import_and_verify() {
    for name in ["mobilenet_v2.onnx", "resnet18.onnx"] {
        let g = import_and_report(&Path::new(MODELS).join(name));
        let out = g.value_type(g.outputs()[0].value);
        assert_eq!(out.shape.0, vec![Dim::Sym("N".into()), Dim::Fixed(1000)]);
        if name.starts_with("mobilenet") {
            assert_eq!((count(&g, "conv"), count(&g, "clip")), (52, 35));
            let clip = g.node_ids().find(|&id| matches!(g.node(id).op, Op::Clip { .. })).unwrap();
            assert_eq!(g.node(clip).op, Op::Clip { min: 0.0, max: 6.0 });
        } else {
            assert_eq!((count(&g, "conv"), count(&g, "add")), (20, 8));
        }
    }
}

#[test]
fn light_models_import_and_verify() {
    let paths = models_in(&Path::new(MODELS).join("light"));
    assert_eq!(paths.len(), 9, "{paths:?}");
    for p in &paths {
        let g = import_and_report(p);
        // IR 3: every initializer is also a graph input; only the data input remains.
        assert_eq!(g.inputs().len(), 1, "{}", p.display());
        let input = &g.node(g.inputs()[0]).outputs[0];
        assert_eq!(input.shape.as_fixed(), Some(vec![1, 3, 224, 224]));
        assert_eq!(count(&g, "unsqueeze"), 0, "constant Unsqueezes are folded: {}", p.display());
        let stem = p.file_stem().unwrap().to_string_lossy().to_string();
        let out = g.value_type(g.outputs()[0].value);
        let want: &[usize] =
            if stem.contains("densenet") || stem.contains("squeezenet") { &[1, 1000, 1, 1] } else { &[1, 1000] };
        assert_eq!(out.shape.as_fixed().as_deref(), Some(want), "{stem}");
    }
}

/// The imported digits models, run by the reference interpreter on the 597 test images, agree
/// with the ONNX Runtime outputs stored in the corpus (the importer's semantics, end to end).
#[test]
fn digits_models_match_onnx_runtime() {
    let dir = Path::new(MODELS);
    let x = qforge::npy::read(&dir.join("digits_test_x.npy")).unwrap();
    let fp32 = qforge::npy::read(&dir.join("digits_test_logits_fp32.npy")).unwrap().to_f32_vec();
    let sqnr = |r: &[f32], q: &[f32]| {
        let s: f64 = r.iter().map(|&a| (a as f64).powi(2)).sum();
        let e: f64 = r.iter().zip(q).map(|(&a, &b)| ((a - b) as f64).powi(2)).sum();
        10.0 * (s / e).log10()
    };
    for (model, reference, min_exact, max_diff, min_sqnr) in [
        ("digits_cnn", "digits_test_logits_fp32", 0.0, 1e-4, 100.0),
        ("digits_cnn_int8_qop", "digits_test_logits_ort_qop", 1.0, 0.0, f64::INFINITY),
        // ORT runs the QDQ graph with fused integer kernels: a few logits differ by one step.
        ("digits_cnn_int8_qdq", "digits_test_logits_ort_qdq", 0.99, 0.0709, 60.0),
        ("digits_cnn_int8_dynamic", "digits_test_logits_ort_dynamic", 0.99, 0.1, 60.0),
        // ORT fuses the QAT graph's Q/DQ into integer kernels: differences of up to 2 steps.
        ("digits_cnn_qat", "digits_test_logits_qat_ort", 0.9, 0.17, 45.0),
    ] {
        let g = import_file(&dir.join(format!("{model}.onnx"))).unwrap();
        let want = qforge::npy::read(&dir.join(format!("{reference}.npy"))).unwrap().to_f32_vec();
        let y = qforge_ir::interp::run(&g, std::slice::from_ref(&x)).unwrap_or_else(|e| panic!("{model}: {e}"));
        let y = y[0].to_f32_vec();
        assert_eq!(y.len(), want.len());
        let exact = y.iter().zip(&want).filter(|(a, b)| a == b).count() as f64 / y.len() as f64;
        let diff = y.iter().zip(&want).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0f32, f32::max);
        let (s_ref, s_fp32) = (sqnr(&want, &y), sqnr(&fp32, &y));
        println!(
            "{model}: {:.2}% exact, max diff {diff:e}, SQNR {s_ref:.2} dB vs ORT, {s_fp32:.2} dB vs fp32",
            exact * 100.0
        );
        assert!(exact >= min_exact && diff <= max_diff && s_ref >= min_sqnr, "{model}: {exact} {diff} {s_ref}");
    }
}

#[test]
fn constant_subgraphs_fold_at_import() {
    // Shape arithmetic on constants (as exporters write it) folds into one constant shape.
    let nodes = vec![
        node(
            "Constant",
            &[],
            &["two"],
            vec![AttributeProto {
                name: "value_ints".into(),
                r#type: AttributeType::Ints as i32,
                ints: vec![2],
                ..Default::default()
            }],
        ),
        node("Mul", &["two", "three"], &["six"], vec![]),
        node("Concat", &["six", "minus_one"], &["shape"], vec![int("axis", 0)]),
        node("Reshape", &["x", "shape"], &["y"], vec![]),
    ];
    let inits = vec![
        init("three", &Tensor::from_i64(vec![1], vec![3])),
        init("minus_one", &Tensor::from_i64(vec![1], vec![-1])),
    ];
    let g = import(&model(13, vec![f32_input("x", &[2, 3, 4])], inits, nodes, &["y"])).unwrap();
    assert_eq!(histogram(&g), BTreeMap::from([("reshape", 1)]));
    assert_eq!(g.node(g.outputs()[0].value.node).op, Op::Reshape { shape: vec![6, -1] });
    assert_eq!(g.value_type(g.outputs()[0].value).shape.as_fixed(), Some(vec![6, 4]));
}

/// Shape arithmetic on a dynamic batch `N` and sequence length `S` (as exported transformers write
/// it) is evaluated symbolically: the graph is not specialized, and one graph runs at every size.
#[test]
fn dynamic_shape_arithmetic_stays_symbolic() {
    let nodes = vec![
        node("Shape", &["x"], &["s"], vec![]),
        node("Gather", &["s", "i0"], &["n"], vec![int("axis", 0)]),
        node("Gather", &["s", "i1"], &["sq"], vec![int("axis", 0)]),
        node("Mul", &["n", "sq"], &["ns"], vec![]),
        node("Unsqueeze", &["ns", "axes0"], &["ns1"], vec![]),
        node("Concat", &["ns1", "eight"], &["target"], vec![int("axis", 0)]),
        // [N,S,8] -> [N*S,8]: a plain reshape with -1
        node("Reshape", &["x", "target"], &["flat"], vec![]),
        // positions 0..S
        node("Range", &["zero", "sq", "one"], &["pos"], vec![]),
        // ones of shape [N,1]
        node("Unsqueeze", &["n", "axes0"], &["n1"], vec![]),
        node("Concat", &["n1", "one1"], &["n_1"], vec![int("axis", 0)]),
        node(
            "ConstantOfShape",
            &["n_1"],
            &["ones"],
            vec![tensor_attr("value", init("v", &Tensor::from_f32(vec![1], vec![1.0])))],
        ),
        // S used as data: x * S
        node("Cast", &["sq"], &["sqf"], vec![int("to", 1)]),
        node("Mul", &["x", "sqf"], &["scaled"], vec![]),
        // [N*S,8] -> [N,S,8]: two symbolic sizes, so every size is explicit
        node("Concat", &["n1", "sq1", "eight"], &["back"], vec![int("axis", 0)]),
        node("Unsqueeze", &["sq", "axes0"], &["sq1"], vec![]),
        node("Reshape", &["flat", "back"], &["unflat"], vec![]),
        // a slice of a position buffer up to S
        node("Slice", &["buffer", "zero1", "sq1", "axes1"], &["buf"], vec![]),
    ];
    // Concat uses sq1 before it is defined above: put the nodes in order.
    let mut nodes = nodes;
    let at = nodes.iter().position(|n| n.output[0] == "sq1").unwrap();
    let sq1 = nodes.remove(at);
    nodes.insert(11, sq1);
    let i64s = |v: Vec<i64>| Tensor::from_i64(vec![v.len()], v);
    let inits = vec![
        init("i0", &Tensor::from_i64(vec![], vec![0])),
        init("i1", &Tensor::from_i64(vec![], vec![1])),
        init("axes0", &i64s(vec![0])),
        init("axes1", &i64s(vec![1])),
        init("eight", &i64s(vec![8])),
        init("zero", &Tensor::from_i64(vec![], vec![0])),
        init("one", &Tensor::from_i64(vec![], vec![1])),
        init("one1", &i64s(vec![1])),
        init("zero1", &i64s(vec![0])),
        init("buffer", &Tensor::from_i64(vec![1, 10], (100..110).collect())),
    ];
    let x = vi("x", 1, &[Dim::Sym("N".into()), Dim::Sym("S".into()), Dim::Fixed(8)]);
    let outs = ["flat", "pos", "ones", "scaled", "unflat", "buf"];
    let g = import(&model(17, vec![x], inits, nodes, &outs)).unwrap();
    let types: Vec<String> = g.outputs().iter().map(|o| g.value_type(o.value).to_string()).collect();
    assert_eq!(types, ["f32[N*S,8]", "i64[S]", "f32[N,1]", "f32[N,S,8]", "f32[N,S,8]", "i64[1,S]"]);
    assert_eq!(g.node(g.outputs()[0].value.node).op, Op::Reshape { shape: vec![-1, 8] });
    // The text form round-trips the new ops.
    let text = qforge_ir::text::print(&g, qforge_ir::text::ConstMode::Full).unwrap();
    assert_eq!(
        qforge_ir::text::print(&qforge_ir::text::parse(&text).unwrap(), qforge_ir::text::ConstMode::Full).unwrap(),
        text
    );
    for (n, sq) in [(2usize, 3usize), (1, 5)] {
        let xs: Vec<f32> = (0..n * sq * 8).map(|i| i as f32).collect();
        let x = Tensor::from_f32(vec![n, sq, 8], xs.clone());
        let y = qforge_ir::interp::run(&g, &[x]).unwrap();
        assert_eq!(y[0].shape(), &[n * sq, 8]);
        assert_eq!(y[1].to_i64_vec().unwrap(), (0..sq as i64).collect::<Vec<_>>());
        assert_eq!((y[2].shape(), y[2].to_f32_vec()), (&[n, 1][..], vec![1.0; n]));
        assert_eq!(y[3].to_f32_vec(), xs.iter().map(|v| v * sq as f32).collect::<Vec<_>>());
        assert_eq!((y[4].shape(), y[4].to_f32_vec()), (&[n, sq, 8][..], xs.clone()));
        assert_eq!(y[5].to_i64_vec().unwrap(), (100..100 + sq as i64).collect::<Vec<_>>());
    }
}

/// The dynamo exporter's arithmetic on an image size (`(H-1)//4 + 1`, plus the width) is the
/// derived size `(H+3)/4` and a sum of sizes; used as data, it is computed at run time from the
/// dims it derives from (no value carries it), truncating division being the floor on sizes.
#[test]
fn derived_sizes_from_shape_arithmetic_compute_at_run_time() {
    let nodes = vec![
        node("Shape", &["x"], &["s"], vec![]),
        node("Gather", &["s", "i2"], &["h"], vec![int("axis", 0)]),
        node("Add", &["h", "minus1"], &["h1"], vec![]),
        node("Div", &["h1", "four"], &["q"], vec![]),
        node("Add", &["q", "one"], &["cells"], vec![]),
        node("Gather", &["s", "i3"], &["w"], vec![int("axis", 0)]),
        node("Add", &["cells", "w"], &["total"], vec![]),
        node("Cast", &["total"], &["totalf"], vec![int("to", 1)]),
        node("Mul", &["x", "totalf"], &["y"], vec![]),
    ];
    let scalar = |name: &str, v: i64| init(name, &Tensor::from_i64(vec![], vec![v]));
    let inits = vec![scalar("i2", 2), scalar("i3", 3), scalar("minus1", -1), scalar("four", 4), scalar("one", 1)];
    let x = vi("x", 1, &[Dim::Sym("N".into()), Dim::Fixed(1), Dim::Sym("H".into()), Dim::Sym("W".into())]);
    let g = import(&model(17, vec![x], inits, nodes, &["y"])).unwrap();
    assert_eq!(g.value_type(g.outputs()[0].value).to_string(), "f32[N,1,H,W]");
    for (h, w) in [(13usize, 7usize), (1, 5), (4, 1)] {
        let xs: Vec<f32> = (0..h * w).map(|i| i as f32).collect();
        let y = qforge_ir::interp::run(&g, &[Tensor::from_f32(vec![1, 1, h, w], xs.clone())]).unwrap();
        let k = ((h - 1) / 4 + 1 + w) as f32;
        assert_eq!(y[0].to_f32_vec(), xs.iter().map(|v| v * k).collect::<Vec<_>>(), "H={h} W={w}");
    }
}

#[test]
fn mod_gather_elements_and_ordered_comparisons_import() {
    let nodes = vec![
        node("Mod", &["a", "b"], &["m"], vec![]),
        node("Mod", &["a", "b"], &["f"], vec![int("fmod", 1)]),
        node("GreaterOrEqual", &["a", "b"], &["ge"], vec![]),
        node("LessOrEqual", &["a", "b"], &["le"], vec![]),
        node("GatherElements", &["a2", "idx"], &["ge2"], vec![int("axis", 1)]),
    ];
    let inits = vec![
        init("b", &Tensor::from_i64(vec![4], vec![3, -3, 3, 5])),
        init("idx", &Tensor::from_i64(vec![2, 2], vec![1, 0, -1, 1])),
    ];
    let a = vi("a", 7, &[Dim::Fixed(4)]);
    let a2 = vi("a2", 7, &[Dim::Fixed(2), Dim::Fixed(2)]);
    let g = import(&model(17, vec![a, a2], inits, nodes, &["m", "f", "ge", "le", "ge2"])).unwrap();
    let y = qforge_ir::interp::run(
        &g,
        &[Tensor::from_i64(vec![4], vec![-7, 7, 7, 5]), Tensor::from_i64(vec![2, 2], vec![1, 2, 3, 4])],
    )
    .unwrap();
    assert_eq!(y[0].to_i64_vec().unwrap(), vec![2, -2, 1, 0]);
    assert_eq!(y[1].to_i64_vec().unwrap(), vec![-1, 1, 1, 0]);
    assert_eq!(y[2].to_i64_vec().unwrap(), vec![0, 1, 1, 1]);
    assert_eq!(y[3].to_i64_vec().unwrap(), vec![1, 0, 0, 1]);
    assert_eq!(y[4].to_i64_vec().unwrap(), vec![2, 1, 4, 4]);
    // Float Mod without fmod=1 is an error naming the node.
    let bytes = model(17, vec![f32_input("x", &[2])], vec![], vec![node("Mod", &["x", "x"], &["y"], vec![])], &["y"]);
    assert!(node_msg(&import(&bytes).unwrap_err()).contains("fmod"));
}

/// Partial support is a one-line error naming the op: a Range whose bounds come from tensor data.
#[test]
fn range_of_tensor_data_is_a_clear_error() {
    let nodes = vec![
        node("ReduceMax", &["x"], &["m"], vec![int("keepdims", 0)]),
        node("Range", &["zero", "m", "one"], &["r"], vec![]),
    ];
    let inits = vec![init("zero", &Tensor::from_i64(vec![], vec![0])), init("one", &Tensor::from_i64(vec![], vec![1]))];
    let bytes = model(17, vec![vi("x", 7, &[Dim::Fixed(3)])], inits, nodes, &["r"]);
    let e = import(&bytes).unwrap_err();
    assert!(
        matches!(&e, ImportError::NotConstant { op, sources, .. } if op == "Range" && sources[..] == ["x"]),
        "{e:?}"
    );
    let line = e.to_string();
    assert!(line.contains("Range") && line.contains("limit") && !line.contains('\n'), "{line}");
}

/// An input the IR needs as a constant, computed from graph inputs, is an error naming them;
/// importing with values for them specializes the model: they become those constants, recorded
/// in the graph at their places in the signature, and the rest stay run-time inputs.
#[test]
fn specializing_on_the_inputs_a_not_constant_error_names() {
    let nodes =
        vec![node("Cast", &["k"], &["shape"], vec![int("to", 7)]), node("Reshape", &["x", "shape"], &["y"], vec![])];
    let inputs = vec![vi("k", 1, &[Dim::Fixed(2)]), vi("x", 1, &[Dim::Sym("N".into()), Dim::Fixed(3)])];
    let bytes = model(17, inputs, vec![], nodes, &["y"]);
    let e = import(&bytes).unwrap_err();
    let ImportError::NotConstant { input, sources, .. } = &e else { panic!("{e:?}") };
    assert_eq!((input.as_str(), &sources[..]), ("shape", &["k".to_string()][..]));
    let with = |t: Tensor| {
        let opts =
            ImportOptions::default().with_specialize(BTreeMap::from([("k".to_string(), std::sync::Arc::new(t))]));
        import_bytes_with(&bytes, "test.onnx", &opts)
    };
    let g = with(f32t(&[2], &[3.0, -1.0])).unwrap();
    assert_eq!(g.inputs().iter().map(|&i| g.node(i).name.as_str()).collect::<Vec<_>>(), ["x"]);
    let [k] = g.specialized() else { panic!("{:?}", g.specialized()) };
    assert_eq!((k.name.as_str(), k.position), ("k", 0));
    let y = qforge_ir::interp::run(&g, &[f32t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])]).unwrap();
    assert_eq!(y[0].shape(), &[3, 2]);
    for (bad, what) in [(i64t(&[3, -1]), "i64[2]"), (f32t(&[3], &[3.0, -1.0, 1.0]), "f32[3]")] {
        let e = with(bad).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("cannot specialize input `k`: the model declares it f32[2], the value given is {what}")
        );
    }
}

// ------------------------------------------------------------------------------------ malformed files

#[test]
fn missing_empty_random_and_truncated_files_are_errors() {
    let e = import_file(Path::new("/nonexistent/model.onnx")).unwrap_err();
    assert!(matches!(e, ImportError::Io { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/model.onnx"));

    let e = import_bytes(&[], "empty.onnx").unwrap_err();
    assert!(matches!(e, ImportError::Decode { .. }), "{e}");

    // Deterministic pseudo-random bytes (an LCG), several lengths.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    for len in [1usize, 7, 100, 4096] {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                (state >> 56) as u8
            })
            .collect();
        let e = import_bytes(&bytes, "random.onnx").unwrap_err();
        assert!(matches!(e, ImportError::Decode { .. }), "{len} bytes: {e}");
    }

    let full = std::fs::read(Path::new(MODELS).join("digits_cnn.onnx")).unwrap();
    let e = import_bytes(&full[..full.len() / 2], "half.onnx").unwrap_err();
    assert!(matches!(e, ImportError::Decode { .. }), "{e}");
    // Every prefix length near the start, too: errors, never panics.
    for n in (1..200).chain((200..full.len()).step_by(997)) {
        // A prefix that ends between the header fields is a well-formed model without a graph.
        let e = import_bytes(&full[..n], "prefix.onnx").unwrap_err();
        let ok = match &e {
            ImportError::Decode { .. } => true,
            ImportError::Model(m) => m.contains("has no graph"),
            _ => false,
        };
        assert!(ok, "prefix of {n} bytes: {e}");
    }
    // Text is not a model either.
    let e = import_bytes(b"graph main(%x: f32[1]) -> (%x) {}", "text.onnx").unwrap_err();
    assert!(matches!(e, ImportError::Decode { .. }), "{e}");
    // No graph at all.
    let e = import_bytes(&ModelProto { ir_version: 8, ..Default::default() }.encode_to_vec(), "m").unwrap_err();
    assert!(matches!(e, ImportError::Model(ref m) if m.contains("no graph")), "{e}");
}

/// No error in the chain repeats its source's message (which `{:#}` would print twice).
fn assert_sources_not_repeated(e: &(dyn std::error::Error + 'static)) {
    let mut link = Some(e);
    while let Some(l) = link {
        if let Some(src) = l.source() {
            assert!(!l.to_string().contains(&src.to_string()), "`{l}` repeats its source `{src}`");
        }
        link = l.source();
    }
}

#[test]
fn an_os_error_is_printed_once() {
    let path = Path::new("/nonexistent/missing.onnx");
    let os = std::fs::read(path).unwrap_err().to_string();
    assert!(os.contains("os error"), "{os}");
    let e = import_file(path).unwrap_err();
    assert_sources_not_repeated(&e);
    let source = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<std::io::Error>());
    assert_eq!(source.map(std::io::Error::kind), Some(std::io::ErrorKind::NotFound), "{e:?}");
    // What the CLI prints: anyhow's alternate form joins the chain with ": ".
    let line = format!("{:#}", anyhow::Error::from(e));
    assert_eq!(line, format!("cannot read `/nonexistent/missing.onnx`: {os}"));
    assert_eq!(line.matches("os error").count(), 1, "{line}");
    // Errors that wrap another error of the importer's own carry it in the message only.
    let mut t = init("w", &Tensor::from_f32(vec![2], vec![1.0, 2.0]));
    t.raw_data.truncate(3);
    let bytes = model(13, vec![f32_input("x", &[2])], vec![t], vec![node("Add", &["x", "w"], &["y"], vec![])], &["y"]);
    let e = import(&bytes).unwrap_err();
    assert_sources_not_repeated(&e);
    assert_eq!(
        format!("{:#}", anyhow::Error::from(e)),
        "initializer `w`: raw_data has 3 bytes, but 2 f32 elements need 8"
    );
}

fn import(bytes: &[u8]) -> Result<Graph, ImportError> {
    import_bytes(bytes, "test.onnx")
}

fn node_msg(e: &ImportError) -> String {
    match e {
        ImportError::Node { msg, .. } => msg.clone(),
        other => panic!("expected a node error, got {other:?}"),
    }
}

#[test]
fn unsupported_op_names_the_op() {
    let bytes = model(
        17,
        vec![f32_input("x", &[2, 3])],
        vec![],
        vec![NodeProto {
            name: "my_einsum".into(),
            ..node(
                "Col2Im",
                &["x"],
                &["y"],
                vec![AttributeProto {
                    name: "equation".into(),
                    r#type: AttributeType::String as i32,
                    s: b"ij->ji".to_vec(),
                    ..Default::default()
                }],
            )
        }],
        &["y"],
    );
    match import(&bytes).unwrap_err() {
        ImportError::Unsupported { op, domain, opset, node } => {
            assert_eq!((op.as_str(), domain.as_str(), opset, node.as_str()), ("Col2Im", "ai.onnx", 17, "my_einsum"));
        }
        e => panic!("expected Unsupported, got {e:?}"),
    }
    let custom = model(
        17,
        vec![f32_input("x", &[2])],
        vec![],
        vec![NodeProto { domain: "my.domain".into(), ..node("Foo", &["x"], &["y"], vec![]) }],
        &["y"],
    );
    assert!(matches!(import(&custom).unwrap_err(), ImportError::Unsupported { op, .. } if op == "Foo"));
}

#[test]
fn opset_range_is_checked() {
    for opset in [0, 29] {
        let bytes =
            model(opset, vec![f32_input("x", &[2])], vec![], vec![node("Relu", &["x"], &["y"], vec![])], &["y"]);
        let e = import(&bytes).unwrap_err();
        assert!(matches!(e, ImportError::Model(ref m) if m.contains(&format!("opset {opset}"))), "{e}");
    }
}

#[test]
fn dangling_input_and_wrong_attribute_type_are_node_errors() {
    let bytes =
        model(17, vec![f32_input("x", &[2])], vec![], vec![node("Add", &["x", "nowhere"], &["y"], vec![])], &["y"]);
    let e = import(&bytes).unwrap_err();
    assert!(node_msg(&e).contains("`nowhere`"), "{e}");
    assert!(e.to_string().contains("Add_0"), "unnamed nodes are called {{op}}_{{index}}: {e}");

    let bytes = model(
        17,
        vec![f32_input("x", &[1, 2, 3])],
        vec![],
        vec![node("Flatten", &["x"], &["y"], vec![ints("axis", &[1])])],
        &["y"],
    );
    let e = import(&bytes).unwrap_err();
    assert!(node_msg(&e).contains("`axis` must be INT, got INTS"), "{e}");

    let bytes = model(17, vec![f32_input("x", &[2])], vec![], vec![node("Relu", &["x"], &["y"], vec![])], &["z"]);
    assert!(matches!(import(&bytes).unwrap_err(), ImportError::Model(m) if m.contains("`z`")));
}

#[test]
fn symbolic_dims() {
    // A first dim with no size and no name becomes N; a named dim keeps its name.
    let unnamed = ValueInfoProto {
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: 1,
                shape: Some(TensorShapeProto {
                    dim: vec![
                        Dimension::default(),
                        Dimension { value: Some(dimension::Value::DimValue(4)), ..Default::default() },
                    ],
                }),
            })),
            ..Default::default()
        }),
        ..output("x")
    };
    let g =
        import(&model(17, vec![unnamed.clone()], vec![], vec![node("Relu", &["x"], &["y"], vec![])], &["y"])).unwrap();
    assert_eq!(g.value_type(g.outputs()[0].value).shape.0, vec![Dim::Sym("N".into()), Dim::Fixed(4)]);

    let seq = vi("x", 1, &[Dim::Sym("batch".into()), Dim::Sym("seq".into()), Dim::Fixed(8)]);
    let g = import(&model(17, vec![seq], vec![], vec![node("Relu", &["x"], &["y"], vec![])], &["y"])).unwrap();
    assert_eq!(g.value_type(g.outputs()[0].value).shape.to_string(), "[batch,seq,8]");

    // An unknown inner dim, or a `-1` (as Paddle2ONNX writes), is a symbol named after the input
    // and the axis; a `-1` first dim is the batch.
    let mut inner = unnamed;
    if let Some(type_proto::Value::TensorType(t)) = inner.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        t.shape.as_mut().unwrap().dim.reverse();
    }
    let g = import(&model(17, vec![inner], vec![], vec![node("Relu", &["x"], &["y"], vec![])], &["y"])).unwrap();
    assert_eq!(g.value_type(g.outputs()[0].value).shape.to_string(), "[4,x_d1]");
    let mut paddle = vi("x", 1, &[Dim::Fixed(1), Dim::Fixed(3), Dim::Fixed(1)]);
    if let Some(type_proto::Value::TensorType(t)) = paddle.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        for d in [0, 2] {
            t.shape.as_mut().unwrap().dim[d].value = Some(dimension::Value::DimValue(-1));
        }
    }
    let g = import(&model(17, vec![paddle], vec![], vec![node("Relu", &["x"], &["y"], vec![])], &["y"])).unwrap();
    assert_eq!(g.value_type(g.outputs()[0].value).shape.to_string(), "[N,3,x_d2]");
}

#[test]
fn softmax_before_opset_13_coerces_to_2d() {
    let sm = |opset, dims: &[usize], axis: Option<i64>| {
        let attrs = axis.map(|a| vec![int("axis", a)]).unwrap_or_default();
        import(&model(opset, vec![f32_input("x", dims)], vec![], vec![node("Softmax", &["x"], &["y"], attrs)], &["y"]))
            .unwrap()
    };
    // Dims after the axis are all 1: one softmax on that axis.
    let g = sm(9, &[1, 1000, 1, 1], None);
    assert_eq!(histogram(&g), BTreeMap::from([("softmax", 1)]));
    // Otherwise: flatten, softmax over axis 1, reshape back.
    let g = sm(11, &[2, 3, 4], Some(1));
    assert_eq!(histogram(&g), BTreeMap::from([("flatten", 1), ("softmax", 1), ("reshape", 1)]));
    assert_eq!(g.value_type(g.outputs()[0].value).shape.as_fixed(), Some(vec![2, 3, 4]));
    // Opset 13: one axis (default -1).
    let g = sm(13, &[2, 3, 4], None);
    let id = g.outputs()[0].value.node;
    assert_eq!(g.node(id).op, Op::Softmax { axis: -1 });
}

#[test]
fn clip_sum_identity_dropout_and_constants() {
    let x = || f32_input("x", &[2, 3]);
    // Clip before opset 11: attributes; absent bounds are infinite.
    let g = import(&model(9, vec![x()], vec![], vec![node("Clip", &["x"], &["y"], vec![float("max", 6.0)])], &["y"]))
        .unwrap();
    assert_eq!(g.node(g.outputs()[0].value.node).op, Op::Clip { min: f32::NEG_INFINITY, max: 6.0 });
    // From opset 11: constant inputs, "" for an absent one.
    let lo = node("Constant", &[], &["lo"], vec![float("value_float", 0.5)]);
    let g = import(&model(13, vec![x()], vec![], vec![lo, node("Clip", &["x", "lo", ""], &["y"], vec![])], &["y"]))
        .unwrap();
    assert_eq!(g.node(g.outputs()[0].value.node).op, Op::Clip { min: 0.5, max: f32::INFINITY });
    // A bound computed at run time (a scalar, as Clip-11 requires) is numpy's clip, a max then a
    // min; a bound that is not a scalar is an error naming the input.
    let g = import(&model(
        13,
        vec![x(), f32_input("m", &[])],
        vec![],
        vec![node("Clip", &["x", "m"], &["y"], vec![])],
        &["y"],
    ))
    .unwrap();
    assert_eq!(g.node(g.outputs()[0].value.node).op, Op::Binary(qforge_ir::BinaryOp::Max));
    let y = qforge_ir::interp::run(
        &g,
        &[Tensor::from_f32(vec![2, 3], vec![-1.0, 0.5, 2.0, f32::NAN, 0.0, 3.0]), Tensor::scalar_f32(0.5)],
    )
    .unwrap();
    let y = y[0].to_f32_vec();
    assert_eq!((&y[..3], &y[4..]), (&[0.5, 0.5, 2.0][..], &[0.5, 3.0][..]));
    assert!(y[3].is_nan());
    let e = import(&model(
        13,
        vec![x(), f32_input("m", &[2])],
        vec![],
        vec![node("Clip", &["x", "m"], &["y"], vec![])],
        &["y"],
    ))
    .unwrap_err();
    assert!(node_msg(&e).contains("input 1 (min) must be a scalar"), "{e}");

    // Sum of three: a chain of two adds, the last one named after the node; Identity and
    // Dropout are aliases.
    let nodes = vec![
        node("Identity", &["x"], &["i"], vec![]),
        node("Dropout", &["i"], &["d", "mask"], vec![]),
        NodeProto { name: "total".into(), ..node("Sum", &["x", "i", "d"], &["y"], vec![]) },
    ];
    let g = import(&model(13, vec![x()], vec![], nodes, &["y"])).unwrap();
    assert_eq!(histogram(&g), BTreeMap::from([("add", 2)]));
    assert_eq!(g.node(g.outputs()[0].value.node).name, "total");
    // In inference the mask is all true.
    let nodes = vec![node("Dropout", &["x"], &["d", "mask"], vec![]), node("Not", &["mask"], &["y"], vec![])];
    let g = import(&model(13, vec![x()], vec![], nodes, &["y"])).unwrap();
    let y = qforge_ir::interp::run(&g, &[Tensor::from_f32(vec![2, 3], vec![1.0; 6])]).unwrap();
    assert_eq!(y[0].to_i64_vec(), Some(vec![0; 6]));

    // ConstantOfShape is folded; its size is guarded before allocation.
    let shape = init("s", &Tensor::from_i64(vec![2], vec![2, 3]));
    let value = tensor_to_proto("", &Tensor::scalar_f32(0.25));
    let nodes = vec![
        node("ConstantOfShape", &["s"], &["c"], vec![tensor_attr("value", value.clone())]),
        node("Add", &["x", "c"], &["y"], vec![]),
    ];
    let g = import(&model(13, vec![x()], vec![shape], nodes, &["y"])).unwrap();
    assert_eq!(histogram(&g), BTreeMap::from([("add", 1), ("const", 1)]));
    let huge = init("s", &Tensor::from_i64(vec![3], vec![1 << 20, 1 << 20, 1 << 20]));
    let nodes = vec![node("ConstantOfShape", &["s"], &["y"], vec![tensor_attr("value", value)])];
    let e = import(&model(13, vec![x()], vec![huge], nodes, &["y"])).unwrap_err();
    assert!(node_msg(&e).contains("limit"), "{e}");

    // Shape of a fixed-shape value folds into a constant; of a symbolic one it stays symbolic (a
    // reshape copying the symbolic dim), and as data it is a `shape` op computed at run time.
    let nodes = vec![node("Shape", &["x"], &["s"], vec![]), node("Reshape", &["x", "s"], &["y"], vec![])];
    let g = import(&model(13, vec![x()], vec![], nodes.clone(), &["y"])).unwrap();
    assert_eq!(count(&g, "reshape"), 1);
    let xn = || vi("x", 1, &[Dim::Sym("N".into()), Dim::Fixed(3)]);
    let g = import(&model(13, vec![xn()], vec![], nodes, &["y"])).unwrap();
    assert_eq!(g.node(g.outputs()[0].value.node).op, Op::Reshape { shape: vec![0, 3] });
    let g = import(&model(13, vec![xn()], vec![], vec![node("Shape", &["x"], &["y"], vec![])], &["y"])).unwrap();
    assert_eq!(count(&g, "shape"), 1);
    let y = qforge_ir::interp::run(&g, &[Tensor::from_f32(vec![5, 3], vec![0.0; 15])]).unwrap();
    assert_eq!(y[0].to_i64_vec().unwrap(), vec![5, 3]);
}

#[test]
fn unsqueeze_and_split_follow_the_opset() {
    let x = || f32_input("x", &[4, 6]);
    let g = import(&model(
        11,
        vec![x()],
        vec![],
        vec![node("Unsqueeze", &["x"], &["y"], vec![ints("axes", &[0])])],
        &["y"],
    ))
    .unwrap();
    assert_eq!(g.value_type(g.outputs()[0].value).shape.as_fixed(), Some(vec![1, 4, 6]));
    let axes = init("axes", &Tensor::from_i64(vec![1], vec![-1]));
    let g = import(&model(13, vec![x()], vec![axes], vec![node("Unsqueeze", &["x", "axes"], &["y"], vec![])], &["y"]))
        .unwrap();
    assert_eq!(g.value_type(g.outputs()[0].value).shape.as_fixed(), Some(vec![4, 6, 1]));

    let sizes = init("sizes", &Tensor::from_i64(vec![2], vec![2, 4]));
    let g = import(&model(
        13,
        vec![x()],
        vec![sizes],
        vec![node("Split", &["x", "sizes"], &["a", "b"], vec![int("axis", 1)])],
        &["a", "b"],
    ))
    .unwrap();
    let shapes: Vec<_> = g.outputs().iter().map(|o| g.value_type(o.value).shape.as_fixed().unwrap()).collect();
    assert_eq!(shapes, vec![vec![4, 2], vec![4, 4]]);
    let g = import(&model(
        11,
        vec![x()],
        vec![],
        vec![node("Split", &["x"], &["a", "b", "c"], vec![int("axis", 1)])],
        &["a", "b", "c"],
    ))
    .unwrap();
    assert_eq!(g.value_type(g.outputs()[2].value).shape.as_fixed(), Some(vec![4, 2]));
}

/// `x -> QuantizeLinear(s, zp) -> DequantizeLinear(s2, zp2) -> y`.
fn qdq_model(s: f32, zp: u8, s2: f32, zp2: u8) -> Vec<u8> {
    let inits = vec![
        init("s", &Tensor::scalar_f32(s)),
        init("zp", &Tensor::from_f64_iter(DType::U8, vec![], [zp as f64].into_iter())),
        init("s2", &Tensor::scalar_f32(s2)),
        init("zp2", &Tensor::from_f64_iter(DType::U8, vec![], [zp2 as f64].into_iter())),
    ];
    let nodes = vec![
        NodeProto { name: "q".into(), ..node("QuantizeLinear", &["x", "s", "zp"], &["xq"], vec![]) },
        NodeProto { name: "dq".into(), ..node("DequantizeLinear", &["xq", "s2", "zp2"], &["y"], vec![]) },
    ];
    model(13, vec![f32_input("x", &[1, 4])], inits, nodes, &["y"])
}

#[test]
fn quantization_parameters_live_in_types() {
    let g = import(&qdq_model(0.5, 3, 0.5, 3)).unwrap();
    let dq = g.outputs()[0].value.node;
    let xq = g.value_type(g.node(dq).inputs()[0].unwrap());
    assert_eq!((xq.dtype, xq.quant.clone()), (DType::U8, Some(QuantParams::per_tensor(0.5, 3))));

    // Different parameters on the two sides: an error naming both types.
    let e = import(&qdq_model(0.5, 3, 0.25, 3)).unwrap_err();
    let m = node_msg(&e);
    assert!(m.contains("u8<0.5:3>") && m.contains("u8<0.25:3>"), "{m}");
    // Zero, negative and NaN scales are rejected with the node's name.
    for bad in [0.0, -1.0, f32::NAN] {
        let e = import(&qdq_model(bad, 0, 0.5, 0)).unwrap_err();
        assert!(matches!(&e, ImportError::Node { node, .. } if node == "q"), "{e}");
        assert!(e.to_string().contains("scale"), "{e}");
    }

    // A quantized weight: an i8 initializer with per-channel parameters (axis 0) becomes a
    // quantized constant.
    let w = Tensor::from_f64_iter(DType::I8, vec![3, 2], [1.0, -2.0, 3.0, -4.0, 5.0, -6.0].into_iter());
    let inits = vec![
        init("w", &w),
        init("ws", &Tensor::from_f32(vec![3], vec![0.1, 0.2, 0.3])),
        init("wz", &Tensor::from_f64_iter(DType::I8, vec![3], [0.0; 3].into_iter())),
    ];
    let nodes = vec![
        node("DequantizeLinear", &["w", "ws", "wz"], &["wf"], vec![int("axis", 0)]),
        node("MatMul", &["x", "wf"], &["y"], vec![]),
    ];
    let g = import(&model(13, vec![f32_input("x", &[5, 3])], inits.clone(), nodes, &["y"])).unwrap();
    let c = g.node_ids().find(|&id| matches!(g.node(id).op, Op::Const(_))).unwrap();
    assert_eq!(g.node(c).name, "w");
    assert!(
        matches!(&g.node(c).outputs[0].quant, Some(QuantParams::PerAxis { axis: 0, scales, .. }) if scales.len() == 3)
    );
    // Per-axis along an axis of the wrong size: an error, not a bad type.
    let nodes = vec![node("DequantizeLinear", &["w", "ws", "wz"], &["y"], vec![])];
    let e = import(&model(13, vec![], inits, nodes, &["y"])).unwrap_err();
    assert!(node_msg(&e).contains("3 scales for axis 1"), "{e}");
}

#[test]
fn qlinear_conv_checks_its_input_parameters() {
    let u8s = |v: f64| Tensor::from_f64_iter(DType::U8, vec![], [v].into_iter());
    let inits = vec![
        init("xs", &Tensor::scalar_f32(0.02)),
        init("xz", &u8s(10.0)),
        init("w", &Tensor::from_f64_iter(DType::I8, vec![2, 1, 1, 1], [3.0, -3.0].into_iter())),
        init("ws", &Tensor::from_f32(vec![2], vec![0.01, 0.02])),
        init("wz", &Tensor::from_f64_iter(DType::I8, vec![2], [0.0, 0.0].into_iter())),
        init("ys", &Tensor::scalar_f32(0.05)),
        init("yz", &u8s(128.0)),
        init("b", &Tensor::from_f64_iter(DType::I32, vec![2], [100.0, -100.0].into_iter())),
        init("other_s", &Tensor::scalar_f32(0.03)),
    ];
    let qconv = |xs: &str| {
        let nodes = vec![
            node("QuantizeLinear", &["x", "xs", "xz"], &["xq"], vec![]),
            NodeProto {
                name: "conv".into(),
                ..node("QLinearConv", &["xq", xs, "xz", "w", "ws", "wz", "ys", "yz", "b"], &["yq"], vec![])
            },
            node("DequantizeLinear", &["yq", "ys", "yz"], &["y"], vec![]),
        ];
        import(&model(
            13,
            vec![vi("x", 1, &[Dim::Sym("N".into()), Dim::Fixed(1), Dim::Fixed(4), Dim::Fixed(4)])],
            inits.clone(),
            nodes,
            &["y"],
        ))
    };
    let g = qconv("xs").unwrap();
    let id = g.node_ids().find(|&id| matches!(g.node(id).op, Op::QConv { .. })).unwrap();
    let n = g.node(id);
    assert_eq!(n.name, "conv");
    assert!(matches!(&n.op, Op::QConv { epilogue, .. } if epilogue.len() == 2));
    assert_eq!(n.outputs[0].to_string(), "u8<0.05:128>[N,2,4,4]");
    let e = qconv("other_s").unwrap_err();
    assert!(node_msg(&e).contains("u8<0.02:10>") && node_msg(&e).contains("u8<0.03:10>"), "{e}");
}

#[test]
fn external_data_is_an_error_naming_the_tensor() {
    let mut t = init("big_weight", &Tensor::from_f32(vec![2], vec![1.0, 2.0]));
    t.raw_data.clear();
    t.data_location = 1; // EXTERNAL
    let bytes =
        model(13, vec![f32_input("x", &[2])], vec![t], vec![node("Add", &["x", "big_weight"], &["y"], vec![])], &["y"]);
    let e = import(&bytes).unwrap_err();
    assert!(e.to_string().contains("`big_weight`") && e.to_string().contains("external"), "{e}");
    assert!(
        matches!(&e, ImportError::Initializer { name, error: TensorError::ExternalData } if name == "big_weight"),
        "{e:?}"
    );
}

#[test]
fn the_tensor_size_limit_is_an_import_option() {
    let with_limit = |bytes: &[u8], limit: u64| {
        import_bytes_with(bytes, "test.onnx", &ImportOptions::default().with_max_tensor_bytes(limit))
    };
    assert_eq!(ImportOptions::default().max_tensor_bytes, 1 << 31);

    // An initializer of 4 f32 (16 bytes).
    let w = init("w", &Tensor::from_f32(vec![4], vec![1.0; 4]));
    let bytes = model(13, vec![f32_input("x", &[4])], vec![w], vec![node("Add", &["x", "w"], &["y"], vec![])], &["y"]);
    import(&bytes).unwrap();
    with_limit(&bytes, 16).unwrap();
    let e = with_limit(&bytes, 15).unwrap_err();
    assert!(
        matches!(&e, ImportError::Initializer { name, error: TensorError::TooLarge { bytes: 16, limit: 15, .. } }
            if name == "w"),
        "{e:?}"
    );
    assert!(e.to_string().contains("limit of 15 bytes (--max-tensor-bytes)"), "{e}");

    // Two ConstantOfShape of 6 f32 (24 bytes each): each one, then their total, is bounded.
    let nodes = vec![
        node("ConstantOfShape", &["s"], &["c1"], vec![]),
        node("ConstantOfShape", &["s"], &["c2"], vec![]),
        node("Add", &["x", "c1"], &["a"], vec![]),
        node("Add", &["a", "c2"], &["y"], vec![]),
    ];
    let s = init("s", &Tensor::from_i64(vec![2], vec![2, 3]));
    let bytes = model(13, vec![f32_input("x", &[2, 3])], vec![s], nodes, &["y"]);
    with_limit(&bytes, 48).unwrap();
    let e = with_limit(&bytes, 23).unwrap_err();
    assert!(node_msg(&e).contains("needs 24 bytes, more than the limit of 23 bytes (--max-tensor-bytes)"), "{e}");
    let e = with_limit(&bytes, 40).unwrap_err();
    assert!(matches!(&e, ImportError::Node { node, .. } if node == "ConstantOfShape_1"), "{e:?}");
    assert!(node_msg(&e).contains("total 48 bytes, more than the limit of 40 bytes (--max-tensor-bytes)"), "{e}");

    // Range is bounded the same way (10 i64: 80 bytes).
    let inits = vec![
        init("zero", &Tensor::from_i64(vec![], vec![0])),
        init("ten", &Tensor::from_i64(vec![], vec![10])),
        init("one", &Tensor::from_i64(vec![], vec![1])),
    ];
    let bytes = model(13, vec![], inits, vec![node("Range", &["zero", "ten", "one"], &["y"], vec![])], &["y"]);
    with_limit(&bytes, 80).unwrap();
    assert!(node_msg(&with_limit(&bytes, 79).unwrap_err()).contains("--max-tensor-bytes"));

    // A constant fold over the limit is not an error: the node stays, computed at run time.
    let inits = vec![init("v", &Tensor::scalar_f32(0.5)), init("shape", &Tensor::from_i64(vec![2], vec![2, 3]))];
    let nodes = vec![node("Expand", &["v", "shape"], &["e"], vec![]), node("Add", &["x", "e"], &["y"], vec![])];
    let bytes = model(13, vec![f32_input("x", &[2, 3])], inits, nodes, &["y"]);
    assert_eq!(histogram(&with_limit(&bytes, 24).unwrap()), BTreeMap::from([("add", 1), ("const", 1)]));
    assert_eq!(histogram(&with_limit(&bytes, 23).unwrap()), BTreeMap::from([("add", 1), ("const", 1), ("expand", 1)]));
}

#[test]
fn npy_of_an_unsupported_dtype_is_an_error() {
    // A complex64 .npy, written by hand.
    let dict = "{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }";
    let mut header = dict.to_string();
    header.push_str(&" ".repeat((64 - (10 + header.len() + 1) % 64) % 64));
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(1.5f64.to_le_bytes());
    bytes.extend(2.5f64.to_le_bytes());
    let e = qforge::npy::read_bytes(&bytes).unwrap_err();
    assert!(matches!(e, qforge::npy::NpyError::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("`<c8` is not supported"), "{e}");

    let dir = std::env::temp_dir().join(format!("qforge-import-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("x64.npy");
    std::fs::write(&p, &bytes).unwrap();
    let e = qforge::npy::read(&p).unwrap_err();
    assert!(e.to_string().contains("x64.npy"), "{e}");
    // And the round trip of what is supported.
    let t = Tensor::from_f32(vec![2, 2], vec![0.5, -1.0, 2.0, 3.25]);
    let p = dir.join("x32.npy");
    qforge::npy::write(&p, &t).unwrap();
    assert_eq!(qforge::npy::read(&p).unwrap(), t);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ------------------------------------------------------------------------------------ opset forms

/// What importing (and running) a case must give.
enum Want {
    /// The outputs of the reference interpreter, in order (the values the ONNX reference, numpy,
    /// computes for the same inputs; floats within 1e-6 relative, NaN equal to NaN).
    Values(Vec<Tensor>),
    /// An import error whose one-line message contains this text.
    Error(&'static str),
}

/// One small model in one opset form.
struct Case {
    name: &'static str,
    model: Vec<u8>,
    inputs: Vec<Tensor>,
    /// The imported graph's op counts (graph inputs left out), when they matter.
    ops: Option<Vec<(&'static str, usize)>>,
    want: Want,
}

fn tf(dtype: DType, shape: &[usize], v: &[f64]) -> Tensor {
    Tensor::from_f64_iter(dtype, shape.to_vec(), v.iter().copied())
}

fn f32t(shape: &[usize], v: &[f64]) -> Tensor {
    tf(DType::F32, shape, v)
}

fn i64t(v: &[i64]) -> Tensor {
    Tensor::from_i64(vec![v.len()], v.to_vec())
}

fn fixed_vi(name: &str, elem: i32, dims: &[usize]) -> ValueInfoProto {
    vi(name, elem, &dims.iter().map(|&d| Dim::Fixed(d)).collect::<Vec<_>>())
}

/// A one-node model of `opset`: graph inputs, initializers, the node, its outputs.
fn one_op(
    opset: i64,
    inputs: Vec<ValueInfoProto>,
    inits: Vec<qforge::onnx::proto::TensorProto>,
    op: &str,
    ins: &[&str],
    outs: &[&str],
    attrs: Vec<AttributeProto>,
) -> Vec<u8> {
    model(opset, inputs, inits, vec![node(op, ins, outs, attrs)], outs)
}

fn string_attr(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: s.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// An INT4 initializer: `v` packed two per byte, low nibble first.
fn int4_init(name: &str, shape: &[i64], v: &[i8]) -> qforge::onnx::proto::TensorProto {
    let raw = v.chunks(2).map(|p| (p[0] as u8 & 0xf) | ((p.get(1).copied().unwrap_or(0) as u8 & 0xf) << 4)).collect();
    qforge::onnx::proto::TensorProto {
        name: name.into(),
        dims: shape.to_vec(),
        data_type: qforge::onnx::proto::tensor_proto::DataType::Int4 as i32,
        raw_data: raw,
        ..Default::default()
    }
}

/// An initializer of a wire type (float8, INT2, ...) from its packed `raw_data`.
fn wire_init(name: &str, shape: &[i64], elem: i32, raw: Vec<u8>) -> qforge::onnx::proto::TensorProto {
    qforge::onnx::proto::TensorProto {
        name: name.into(),
        dims: shape.to_vec(),
        data_type: elem,
        raw_data: raw,
        ..Default::default()
    }
}

/// `model` with its graph outputs declared of these element types.
fn typed_outputs(model: Vec<u8>, elems: &[i32]) -> Vec<u8> {
    let mut m = ModelProto::decode(model.as_slice()).unwrap();
    let g = m.graph.as_mut().unwrap();
    for (o, &e) in g.output.iter_mut().zip(elems) {
        *o = vi(&o.name, e, &[]);
        o.r#type = Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type: e, shape: None })),
            ..Default::default()
        });
    }
    m.encode_to_vec()
}

fn opset_cases() -> Vec<Case> {
    const F32: i32 = 1;
    const U16: i32 = 4;
    const I16: i32 = 5;
    const F8E4M3FN: i32 = 17;
    const F8E5M2: i32 = 19;
    const INT2: i32 = 26;
    const U8: i32 = 2;
    const I8: i32 = 3;
    const I32: i32 = 6;
    const I64: i32 = 7;
    const BOOL: i32 = 9;
    let x23 = || f32t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let in23 = || fixed_vi("x", F32, &[2, 3]);
    let act_x = || f32t(&[2, 3], &[-2.0, -0.5, 0.0, 0.5, 2.0, 3.0]);
    let case =
        |name, model, inputs, ops: Option<Vec<(&'static str, usize)>>, want| Case { name, model, inputs, ops, want };
    vec![
        // ---- reductions: axes attribute (ReduceSum before 13, the others before 18) or input
        case(
            "ReduceSum-11 axes attribute",
            one_op(11, vec![in23()], vec![], "ReduceSum", &["x"], &["y"], vec![ints("axes", &[1]), int("keepdims", 0)]),
            vec![x23()],
            Some(vec![("reduce_sum", 1)]),
            Want::Values(vec![f32t(&[2], &[6.0, 15.0])]),
        ),
        case(
            "ReduceSum-13 axes input",
            one_op(13, vec![in23()], vec![init("axes", &i64t(&[0]))], "ReduceSum", &["x", "axes"], &["y"], vec![]),
            vec![x23()],
            None,
            Want::Values(vec![f32t(&[1, 3], &[5.0, 7.0, 9.0])]),
        ),
        case(
            // axes = Size(Shape(x)) - [1], computed from the input's shape and folded at import
            "ReduceSum-13 axes computed from the shape",
            model(
                13,
                vec![in23()],
                vec![init("one", &i64t(&[1]))],
                vec![
                    node("Shape", &["x"], &["s"], vec![]),
                    node("Size", &["s"], &["rank"], vec![]),
                    node("Sub", &["rank", "one"], &["axes"], vec![]),
                    node("ReduceSum", &["x", "axes"], &["y"], vec![int("keepdims", 0)]),
                ],
                &["y"],
            ),
            vec![x23()],
            Some(vec![("reduce_sum", 1)]),
            Want::Values(vec![f32t(&[2], &[6.0, 15.0])]),
        ),
        case(
            "ReduceMean-13 axes attribute",
            one_op(13, vec![in23()], vec![], "ReduceMean", &["x"], &["y"], vec![ints("axes", &[1]), int("keepdims", 0)]),
            vec![x23()],
            None,
            Want::Values(vec![f32t(&[2], &[2.0, 5.0])]),
        ),
        case(
            "ReduceMean-18 axes input",
            one_op(18, vec![in23()], vec![init("a", &i64t(&[-1]))], "ReduceMean", &["x", "a"], &["y"], vec![]),
            vec![x23()],
            None,
            Want::Values(vec![f32t(&[2, 1], &[2.0, 5.0])]),
        ),
        case(
            // an empty axes graph input holds its one possible value: no axes
            "ReduceMax-18 empty axes input with noop_with_empty_axes",
            one_op(
                18,
                vec![in23(), fixed_vi("axes", I64, &[0])],
                vec![],
                "ReduceMax",
                &["x", "axes"],
                &["y"],
                vec![int("noop_with_empty_axes", 1)],
            ),
            vec![x23(), i64t(&[])],
            None,
            Want::Values(vec![x23()]),
        ),
        case(
            "ReduceMax-18 empty axes input reduces every axis",
            one_op(18, vec![in23(), fixed_vi("axes", I64, &[0])], vec![], "ReduceMax", &["x", "axes"], &["y"], vec![]),
            vec![x23(), i64t(&[])],
            None,
            Want::Values(vec![f32t(&[1, 1], &[6.0])]),
        ),
        case(
            "ReduceL2-18 axes input",
            one_op(18, vec![in23()], vec![init("a", &i64t(&[1]))], "ReduceL2", &["x", "a"], &["y"], vec![int("keepdims", 0)]),
            vec![f32t(&[2, 3], &[3.0, 4.0, 0.0, 1.0, 2.0, 2.0])],
            Some(vec![("mul", 1), ("reduce_sum", 1), ("sqrt", 1)]),
            Want::Values(vec![f32t(&[2], &[5.0, 3.0])]),
        ),
        case(
            "ReduceL1-13 axes attribute",
            one_op(13, vec![in23()], vec![], "ReduceL1", &["x"], &["y"], vec![ints("axes", &[1]), int("keepdims", 0)]),
            vec![f32t(&[2, 3], &[3.0, -4.0, 0.0, 1.0, -2.0, 2.0])],
            None,
            Want::Values(vec![f32t(&[2], &[7.0, 5.0])]),
        ),
        case(
            "ReduceSumSquare-18 noop_with_empty_axes squares element-wise",
            one_op(18, vec![in23()], vec![], "ReduceSumSquare", &["x"], &["y"], vec![int("noop_with_empty_axes", 1)]),
            vec![x23()],
            None,
            Want::Values(vec![f32t(&[2, 3], &[1.0, 4.0, 9.0, 16.0, 25.0, 36.0])]),
        ),
        case(
            "ReduceLogSum-13 axes attribute",
            one_op(13, vec![in23()], vec![], "ReduceLogSum", &["x"], &["y"], vec![ints("axes", &[1]), int("keepdims", 0)]),
            vec![x23()],
            None,
            Want::Values(vec![f32t(&[2], &[1.791_759_5, 2.708_050_3])]),
        ),
        // ---- Split: attribute (before 13), input (13), num_outputs and uneven parts (18)
        case(
            "Split-11 split attribute",
            one_op(11, vec![in23()], vec![], "Split", &["x"], &["a", "b"], vec![int("axis", 1), ints("split", &[1, 2])]),
            vec![x23()],
            None,
            Want::Values(vec![f32t(&[2, 1], &[1.0, 4.0]), f32t(&[2, 2], &[2.0, 3.0, 5.0, 6.0])]),
        ),
        case(
            "Split-13 split input computed from constants",
            model(
                13,
                vec![in23()],
                vec![init("one", &i64t(&[1])), init("two", &i64t(&[2]))],
                vec![
                    node("Concat", &["one", "two"], &["sizes"], vec![int("axis", 0)]),
                    node("Split", &["x", "sizes"], &["a", "b"], vec![int("axis", 1)]),
                ],
                &["a", "b"],
            ),
            vec![x23()],
            Some(vec![("split", 1)]),
            Want::Values(vec![f32t(&[2, 1], &[1.0, 4.0]), f32t(&[2, 2], &[2.0, 3.0, 5.0, 6.0])]),
        ),
        case(
            "Split-18 num_outputs, last part smaller",
            one_op(
                18,
                vec![fixed_vi("x", F32, &[1, 5])],
                vec![],
                "Split",
                &["x"],
                &["a", "b"],
                vec![int("axis", 1), int("num_outputs", 2)],
            ),
            vec![f32t(&[1, 5], &[1.0, 2.0, 3.0, 4.0, 5.0])],
            None,
            Want::Values(vec![f32t(&[1, 3], &[1.0, 2.0, 3.0]), f32t(&[1, 2], &[4.0, 5.0])]),
        ),
        case(
            "Split-13 uneven parts are invalid",
            one_op(13, vec![fixed_vi("x", F32, &[1, 5])], vec![], "Split", &["x"], &["a", "b"], vec![int("axis", 1)]),
            vec![],
            None,
            Want::Error("does not divide into 2"),
        ),
        // ---- Softmax: 2-D coercion before 13, one axis from 13
        case(
            "Softmax-11 axis 1 over the 2-D coercion",
            one_op(11, vec![fixed_vi("x", F32, &[1, 2, 2])], vec![], "Softmax", &["x"], &["y"], vec![int("axis", 1)]),
            vec![f32t(&[1, 2, 2], &[0.0, 0.0, 3f64.ln(), 3f64.ln()])],
            None,
            Want::Values(vec![f32t(&[1, 2, 2], &[0.125, 0.125, 0.375, 0.375])]),
        ),
        case(
            "Softmax-13 axis 1 alone",
            one_op(13, vec![fixed_vi("x", F32, &[1, 2, 2])], vec![], "Softmax", &["x"], &["y"], vec![int("axis", 1)]),
            vec![f32t(&[1, 2, 2], &[0.0, 0.0, 3f64.ln(), 3f64.ln()])],
            None,
            Want::Values(vec![f32t(&[1, 2, 2], &[0.25, 0.25, 0.75, 0.75])]),
        ),
        // ---- Clip: attributes before 11, inputs from 11, integers from 12
        case(
            "Clip-9 attributes",
            one_op(9, vec![fixed_vi("x", F32, &[3])], vec![], "Clip", &["x"], &["y"], vec![float("min", 0.0), float("max", 6.0)]),
            vec![f32t(&[3], &[-1.0, 3.0, 7.0])],
            Some(vec![("clip", 1)]),
            Want::Values(vec![f32t(&[3], &[0.0, 3.0, 6.0])]),
        ),
        case(
            "Clip-13 int8 with a min only",
            one_op(
                13,
                vec![fixed_vi("x", I8, &[3])],
                vec![init("lo", &tf(DType::I8, &[], &[-2.0]))],
                "Clip",
                &["x", "lo"],
                &["y"],
                vec![],
            ),
            vec![tf(DType::I8, &[3], &[-5.0, 0.0, 100.0])],
            Some(vec![("const", 1), ("max", 1)]),
            Want::Values(vec![tf(DType::I8, &[3], &[-2.0, 0.0, 100.0])]),
        ),
        // ---- Cast (saturate from 19 only concerns float8), CastLike (15)
        case(
            "Cast-19 to f16 rounds to nearest even",
            one_op(19, vec![fixed_vi("x", F32, &[2])], vec![], "Cast", &["x"], &["y"], vec![int("to", 10), int("saturate", 1)]),
            vec![f32t(&[2], &[1.000_976_562_5, 65520.0])],
            None,
            Want::Values(vec![tf(DType::F16, &[2], &[1.000_976_562_5, f64::INFINITY])]),
        ),
        case(
            "Cast-19 to float8 is refused, naming the type",
            one_op(19, vec![fixed_vi("x", F32, &[2])], vec![], "Cast", &["x"], &["y"], vec![int("to", 17), int("saturate", 0)]),
            vec![],
            None,
            Want::Error("cast to f8e4m3fn is not supported"),
        ),
        case(
            "CastLike-15 to the second input's type",
            one_op(15, vec![fixed_vi("x", F32, &[2])], vec![init("like", &i64t(&[0]))], "CastLike", &["x", "like"], &["y"], vec![]),
            vec![f32t(&[2], &[1.5, -2.5])],
            Some(vec![("cast", 1)]),
            Want::Values(vec![i64t(&[1, -2])]),
        ),
        // ---- Size: a constant from fixed dims, a shape value on symbolic ones
        case(
            "Size-13 of fixed dims is a constant",
            one_op(13, vec![in23()], vec![], "Size", &["x"], &["y"], vec![]),
            vec![x23()],
            Some(vec![("const", 1)]),
            Want::Values(vec![Tensor::from_i64(vec![], vec![6])]),
        ),
        case(
            "Size-21 of a symbolic batch",
            one_op(21, vec![vi("x", F32, &[Dim::Sym("N".into()), Dim::Fixed(3)])], vec![], "Size", &["x"], &["y"], vec![]),
            vec![f32t(&[4, 3], &[0.0; 12])],
            None,
            Want::Values(vec![Tensor::from_i64(vec![], vec![12])]),
        ),
        // ---- Mod: fmod=0 on floats from 28 only
        case(
            "Mod-28 fmod=0 on floats (numpy's mod)",
            one_op(
                28,
                vec![fixed_vi("a", F32, &[6]), fixed_vi("b", F32, &[6])],
                vec![],
                "Mod",
                &["a", "b"],
                &["y"],
                vec![],
            ),
            vec![f32t(&[6], &[-7.5, 7.5, -2.0, 5.25, -0.0, 3.0]), f32t(&[6], &[2.0, -2.0, 3.0, -1.5, 2.0, f64::INFINITY])],
            None,
            Want::Values(vec![f32t(&[6], &[0.5, -0.5, 1.0, -0.75, 0.0, 3.0])]),
        ),
        case(
            "Mod-13 fmod=0 on floats is invalid",
            one_op(13, vec![fixed_vi("a", F32, &[2])], vec![], "Mod", &["a", "a"], &["y"], vec![]),
            vec![],
            None,
            Want::Error("fmod"),
        ),
        case(
            "Neg-13 of integers",
            one_op(13, vec![fixed_vi("x", I32, &[3])], vec![], "Neg", &["x"], &["y"], vec![]),
            vec![tf(DType::I32, &[3], &[-3.0, 0.0, 5.0])],
            None,
            Want::Values(vec![tf(DType::I32, &[3], &[3.0, 0.0, -5.0])]),
        ),
        case(
            "Mean-13 of three inputs",
            one_op(
                13,
                vec![fixed_vi("a", F32, &[2]), fixed_vi("b", F32, &[2]), fixed_vi("c", F32, &[1])],
                vec![],
                "Mean",
                &["a", "b", "c"],
                &["y"],
                vec![],
            ),
            vec![f32t(&[2], &[1.0, 2.0]), f32t(&[2], &[3.0, 4.0]), f32t(&[1], &[5.0])],
            None,
            Want::Values(vec![f32t(&[2], &[3.0, 11.0 / 3.0])]),
        ),
        case(
            "IsNaN-20 and IsInf-20 (positive only)",
            model(
                20,
                vec![fixed_vi("x", F32, &[4])],
                vec![],
                vec![node("IsNaN", &["x"], &["n"], vec![]), node("IsInf", &["x"], &["i"], vec![int("detect_negative", 0)])],
                &["n", "i"],
            ),
            vec![f32t(&[4], &[1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY])],
            None,
            Want::Values(vec![tf(DType::Bool, &[4], &[0.0, 1.0, 0.0, 0.0]), tf(DType::Bool, &[4], &[0.0, 0.0, 1.0, 0.0])]),
        ),
        // ---- LayerNormalization-17: Mean and InvStdDev, stash_type
        case(
            "LayerNormalization-17 with Mean and InvStdDev",
            one_op(
                17,
                vec![fixed_vi("x", F32, &[2, 4])],
                vec![init("w", &f32t(&[4], &[1.0; 4]))],
                "LayerNormalization",
                &["x", "w"],
                &["y", "mean", "inv"],
                vec![],
            ),
            vec![f32t(&[2, 4], &[1.0, 2.0, 3.0, 4.0, 2.0, 4.0, 6.0, 8.0])],
            None,
            Want::Values(vec![
                f32t(&[2, 4], &[-1.341_635_5, -0.447_211_83, 0.447_211_83, 1.341_635_5, -1.341_639_5, -0.447_213_17, 0.447_213_17, 1.341_639_5]),
                f32t(&[2, 1], &[2.5, 5.0]),
                f32t(&[2, 1], &[0.894_423_66, 0.447_213_17]),
            ]),
        ),
        case(
            "LayerNormalization-17 stash_type=0 is refused",
            one_op(
                17,
                vec![fixed_vi("x", F32, &[2, 4])],
                vec![init("w", &f32t(&[4], &[1.0; 4]))],
                "LayerNormalization",
                &["x", "w"],
                &["y"],
                vec![int("stash_type", 0)],
            ),
            vec![],
            None,
            Want::Error("stash_type=0 is not supported"),
        ),
        // ---- QuantizeLinear / DequantizeLinear 19 to 28
        case(
            // a constant graph (no inputs): 4-bit weights in blocks of 3 with 4-bit zero points
            "DequantizeLinear-21 blocked INT4 constant",
            model(
                21,
                vec![],
                vec![
                    int4_init("w", &[2, 6], &[-8, 7, -1, 0, 3, 2, 1, 2, 3, 4, 5, 6]),
                    init("s", &f32t(&[2, 2], &[0.5, 0.25, 2.0, 1.0])),
                    int4_init("z", &[2, 2], &[0, 1, -1, 0]),
                ],
                vec![node("DequantizeLinear", &["w", "s", "z"], &["y"], vec![int("axis", 1), int("block_size", 3)])],
                &["y"],
            ),
            vec![],
            Some(vec![("const", 1), ("dequantize", 1)]),
            Want::Values(vec![f32t(&[2, 6], &[-4.0, 3.5, -0.5, -0.25, 0.5, 0.25, 4.0, 6.0, 8.0, 4.0, 5.0, 6.0])]),
        ),
        case(
            "QuantizeLinear-21 blocked",
            one_op(
                21,
                vec![fixed_vi("x", F32, &[2, 4])],
                vec![
                    init("s", &f32t(&[2, 2], &[1.0, 2.0, 0.5, 4.0])),
                    init("z", &tf(DType::U8, &[2, 2], &[0.0, 1.0, 10.0, 0.0])),
                ],
                "QuantizeLinear",
                &["x", "s", "z"],
                &["y"],
                vec![int("axis", 1), int("block_size", 2)],
            ),
            vec![f32t(&[2, 4], &[0.0, 1.0, 2.0, 3.0, -1.0, -2.0, 4.0, 8.0])],
            None,
            Want::Values(vec![tf(DType::U8, &[2, 4], &[0.0, 1.0, 2.0, 3.0, 8.0, 6.0, 1.0, 2.0])]),
        ),
        case(
            // from 19 the result has the scale's type: dequantize, then a cast
            "DequantizeLinear-19 f16 scale",
            one_op(
                19,
                vec![],
                vec![
                    init("x", &tf(DType::U8, &[3], &[0.0, 10.0, 255.0])),
                    init("s", &tf(DType::F16, &[], &[0.5])),
                    init("z", &tf(DType::U8, &[], &[10.0])),
                ],
                "DequantizeLinear",
                &["x", "s", "z"],
                &["y"],
                vec![],
            ),
            vec![],
            Some(vec![("cast", 1), ("const", 1), ("dequantize", 1)]),
            Want::Values(vec![tf(DType::F16, &[3], &[-5.0, 0.0, 122.5])]),
        ),
        case(
            "DequantizeLinear-23 output_dtype",
            one_op(
                23,
                vec![],
                vec![init("x", &tf(DType::I8, &[2], &[-3.0, 5.0])), init("s", &f32t(&[], &[0.25]))],
                "DequantizeLinear",
                &["x", "s"],
                &["y"],
                vec![int("output_dtype", 10)],
            ),
            vec![],
            None,
            Want::Values(vec![tf(DType::F16, &[2], &[-0.75, 1.25])]),
        ),
        case(
            // quantized data fed to the model: the graph input takes the quantized type
            "DequantizeLinear-13 of a graph input",
            one_op(
                13,
                vec![fixed_vi("x", U8, &[3])],
                vec![init("s", &f32t(&[], &[0.5])), init("z", &tf(DType::U8, &[], &[128.0]))],
                "DequantizeLinear",
                &["x", "s", "z"],
                &["y"],
                vec![],
            ),
            vec![tf(DType::U8, &[3], &[128.0, 130.0, 0.0])],
            None,
            Want::Values(vec![f32t(&[3], &[0.0, 1.0, -64.0])]),
        ),
        case(
            "QuantizeLinear-21 to INT4 is refused",
            one_op(
                21,
                vec![fixed_vi("x", F32, &[2])],
                vec![init("s", &f32t(&[], &[0.5]))],
                "QuantizeLinear",
                &["x", "s"],
                &["y"],
                vec![int("output_dtype", 22)],
            ),
            vec![],
            None,
            Want::Error("quantizing to a 4-bit type (INT4, UINT4) is not supported"),
        ),
        case(
            "QuantizeLinear-23 precision=FLOAT16 is refused",
            one_op(
                23,
                vec![fixed_vi("x", F32, &[2])],
                vec![init("s", &f32t(&[], &[0.5]))],
                "QuantizeLinear",
                &["x", "s"],
                &["y"],
                vec![int("precision", 10)],
            ),
            vec![],
            None,
            Want::Error("precision=10 (f16) is not supported"),
        ),
        case(
            "QuantizeLinear-19 with an f16 scale divides in f16: refused",
            one_op(
                19,
                vec![fixed_vi("x", 10, &[2])],
                vec![init("s", &tf(DType::F16, &[], &[0.5]))],
                "QuantizeLinear",
                &["x", "s"],
                &["y"],
                vec![],
            ),
            vec![],
            None,
            Want::Error("a f16 scale makes QuantizeLinear version 19 divide in f16"),
        ),
        case(
            "QLinearMatMul-10 with f16 scales is refused (version 21 allows them)",
            one_op(
                10,
                vec![fixed_vi("a", U8, &[2, 2]), fixed_vi("b", U8, &[2, 2])],
                vec![init("s", &tf(DType::F16, &[], &[0.5])), init("z", &tf(DType::U8, &[], &[0.0]))],
                "QLinearMatMul",
                &["a", "s", "z", "b", "s", "z", "s", "z"],
                &["y"],
                vec![],
            ),
            vec![],
            None,
            Want::Error("a f16 scale (`s`) is not supported"),
        ),
        // ---- inputs computed from constants, and one computed from data
        case(
            "Unsqueeze-13 axes computed by Neg",
            model(
                13,
                vec![in23()],
                vec![init("m", &i64t(&[-1]))],
                vec![node("Neg", &["m"], &["axes"], vec![]), node("Unsqueeze", &["x", "axes"], &["y"], vec![])],
                &["y"],
            ),
            vec![x23()],
            Some(vec![("unsqueeze", 1)]),
            Want::Values(vec![f32t(&[2, 1, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])]),
        ),
        case(
            "Slice-13 starts computed from constants",
            model(
                13,
                vec![fixed_vi("x", F32, &[4])],
                vec![init("zero", &i64t(&[0])), init("one", &i64t(&[1])), init("e", &i64t(&[3]))],
                vec![node("Add", &["zero", "one"], &["st"], vec![]), node("Slice", &["x", "st", "e"], &["y"], vec![])],
                &["y"],
            ),
            vec![f32t(&[4], &[10.0, 11.0, 12.0, 13.0])],
            Some(vec![("slice", 1)]),
            Want::Values(vec![f32t(&[2], &[11.0, 12.0])]),
        ),
        case(
            "ReduceSum-13 axes from tensor data are refused, naming node, input and graph input",
            model(
                13,
                vec![in23(), fixed_vi("a", F32, &[1])],
                vec![],
                vec![
                    node("Cast", &["a"], &["axes"], vec![int("to", 7)]),
                    NodeProto { name: "sum".into(), ..node("ReduceSum", &["x", "axes"], &["y"], vec![]) },
                ],
                &["y"],
            ),
            vec![],
            None,
            Want::Error("node `sum` (ReduceSum): input `axes` (axes) must be a constant (or computed from constants or input shapes), but it is computed at run time from graph input `a`"),
        ),
        // ---- rewrites into existing ops
        case(
            "DepthToSpace-9 (DCR, no mode attribute)",
            one_op(9, vec![fixed_vi("x", F32, &[1, 8, 1, 1])], vec![], "DepthToSpace", &["x"], &["y"], vec![int("blocksize", 2)]),
            vec![f32t(&[1, 8, 1, 1], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])],
            Some(vec![("reshape", 2), ("transpose", 1)]),
            Want::Values(vec![f32t(&[1, 2, 2, 2], &[0.0, 2.0, 4.0, 6.0, 1.0, 3.0, 5.0, 7.0])]),
        ),
        case(
            "DepthToSpace-13 CRD",
            one_op(
                13,
                vec![fixed_vi("x", F32, &[1, 8, 1, 1])],
                vec![],
                "DepthToSpace",
                &["x"],
                &["y"],
                vec![int("blocksize", 2), string_attr("mode", "CRD")],
            ),
            vec![f32t(&[1, 8, 1, 1], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])],
            None,
            Want::Values(vec![f32t(&[1, 2, 2, 2], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])]),
        ),
        case(
            "SpaceToDepth-13",
            one_op(13, vec![fixed_vi("x", F32, &[1, 2, 2, 2])], vec![], "SpaceToDepth", &["x"], &["y"], vec![int("blocksize", 2)]),
            vec![f32t(&[1, 2, 2, 2], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])],
            None,
            Want::Values(vec![f32t(&[1, 8, 1, 1], &[0.0, 4.0, 1.0, 5.0, 2.0, 6.0, 3.0, 7.0])]),
        ),
        case(
            "InstanceNormalization-13 (version 6)",
            one_op(
                13,
                vec![fixed_vi("x", F32, &[1, 1, 4])],
                vec![init("s", &f32t(&[1], &[2.0])), init("b", &f32t(&[1], &[1.0]))],
                "InstanceNormalization",
                &["x", "s", "b"],
                &["y"],
                vec![],
            ),
            vec![f32t(&[1, 1, 4], &[1.0, 2.0, 3.0, 4.0])],
            None,
            Want::Values(vec![f32t(&[1, 1, 4], &[-1.683_270_9, 0.105_576_34, 1.894_423_7, 3.683_270_9])]),
        ),
        case(
            "LpNormalization-22 L2, a zero norm gives zeros",
            one_op(22, vec![fixed_vi("x", F32, &[2, 2])], vec![], "LpNormalization", &["x"], &["y"], vec![int("axis", 1)]),
            vec![f32t(&[2, 2], &[3.0, 4.0, 0.0, 0.0])],
            None,
            Want::Values(vec![f32t(&[2, 2], &[0.6, 0.8, 0.0, 0.0])]),
        ),
        // ---- graph edges and constants
        case(
            "A graph without inputs (Constant-25, folded)",
            model(
                25,
                vec![],
                vec![],
                vec![
                    node("Constant", &[], &["c"], vec![ints("value_ints", &[1, 2, 3])]),
                    node("Add", &["c", "c"], &["y"], vec![]),
                ],
                &["y"],
            ),
            vec![],
            Some(vec![("const", 1)]),
            Want::Values(vec![i64t(&[2, 4, 6])]),
        ),
        case(
            "Range-11 of float constants, folded",
            one_op(
                11,
                vec![],
                vec![init("a", &f32t(&[], &[0.0])), init("b", &f32t(&[], &[1.0])), init("d", &f32t(&[], &[0.25]))],
                "Range",
                &["a", "b", "d"],
                &["y"],
                vec![],
            ),
            vec![],
            Some(vec![("const", 1)]),
            Want::Values(vec![f32t(&[4], &[0.0, 0.25, 0.5, 0.75])]),
        ),
        case(
            "Reshape-14 allowzero=1 keeps a 0",
            one_op(
                14,
                vec![fixed_vi("x", F32, &[0, 3])],
                vec![init("s", &i64t(&[3, 0]))],
                "Reshape",
                &["x", "s"],
                &["y"],
                vec![int("allowzero", 1)],
            ),
            vec![f32t(&[0, 3], &[])],
            None,
            Want::Values(vec![f32t(&[3, 0], &[])]),
        ),
        case(
            "Gelu-20 tanh approximation",
            one_op(20, vec![fixed_vi("x", F32, &[1])], vec![], "Gelu", &["x"], &["y"], vec![string_attr("approximate", "tanh")]),
            vec![f32t(&[1], &[0.0])],
            Some(vec![("gelu_tanh", 1)]),
            Want::Values(vec![f32t(&[1], &[0.0])]),
        ),
        // ---- perception ops: Resize, Upsample, ConvTranspose, Pad, Tile, GroupNormalization
        case(
            "Resize-13 linear, empty roi, constant scales",
            one_op(
                13,
                vec![fixed_vi("x", F32, &[1, 1, 2, 2])],
                vec![init("scales", &f32t(&[4], &[1.0, 1.0, 2.0, 2.0]))],
                "Resize",
                &["x", "", "scales"],
                &["y"],
                vec![string_attr("mode", "linear")],
            ),
            vec![f32t(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0])],
            Some(vec![("resize", 1)]),
            Want::Values(vec![f32t(
                &[1, 1, 4, 4],
                &[1.0, 1.25, 1.75, 2.0, 1.5, 1.75, 2.25, 2.5, 2.5, 2.75, 3.25, 3.5, 3.0, 3.25, 3.75, 4.0],
            )]),
        ),
        case(
            // F.interpolate(size=...): sizes = Concat(Shape(x)[0:2], [H, W]) on a symbolic batch
            "Resize-13 sizes computed from the input's own shape",
            model(
                13,
                vec![vi("x", F32, &[Dim::Sym("N".into()), Dim::Fixed(1), Dim::Fixed(2), Dim::Fixed(2)])],
                vec![init("zero", &i64t(&[0])), init("two", &i64t(&[2])), init("hw", &i64t(&[2, 4]))],
                vec![
                    node("Shape", &["x"], &["s"], vec![]),
                    node("Slice", &["s", "zero", "two"], &["nc"], vec![]),
                    node("Concat", &["nc", "hw"], &["sizes"], vec![int("axis", 0)]),
                    node(
                        "Resize",
                        &["x", "", "", "sizes"],
                        &["y"],
                        vec![string_attr("coordinate_transformation_mode", "asymmetric")],
                    ),
                ],
                &["y"],
            ),
            vec![f32t(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0])],
            Some(vec![("resize", 1)]),
            Want::Values(vec![f32t(&[1, 1, 2, 4], &[1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0])]),
        ),
        case(
            "Resize-13 with both scales and sizes is refused",
            one_op(
                13,
                vec![fixed_vi("x", F32, &[1, 1, 2, 2])],
                vec![init("scales", &f32t(&[4], &[1.0, 1.0, 2.0, 2.0])), init("sizes", &i64t(&[1, 1, 4, 4]))],
                "Resize",
                &["x", "", "scales", "sizes"],
                &["y"],
                vec![],
            ),
            vec![],
            None,
            Want::Error("scales and sizes are both given"),
        ),
        case(
            "Resize-11 tf_crop_and_resize needs the roi",
            one_op(
                11,
                vec![fixed_vi("x", F32, &[1, 1, 2, 2])],
                vec![init("scales", &f32t(&[4], &[1.0, 1.0, 2.0, 2.0]))],
                "Resize",
                &["x", "", "scales"],
                &["y"],
                vec![string_attr("coordinate_transformation_mode", "tf_crop_and_resize")],
            ),
            vec![],
            None,
            Want::Error("needs the roi input"),
        ),
        case(
            "Resize-11 tf_half_pixel_for_nn is refused by name",
            one_op(
                11,
                vec![fixed_vi("x", F32, &[1, 1, 2, 2])],
                vec![init("scales", &f32t(&[4], &[1.0, 1.0, 2.0, 2.0]))],
                "Resize",
                &["x", "", "scales"],
                &["y"],
                vec![string_attr("coordinate_transformation_mode", "tf_half_pixel_for_nn")],
            ),
            vec![],
            None,
            Want::Error("coordinate_transformation_mode=\"tf_half_pixel_for_nn\" is not supported"),
        ),
        case(
            "Upsample-9 nearest repeats",
            one_op(
                9,
                vec![fixed_vi("x", F32, &[1, 1, 2, 2])],
                vec![init("scales", &f32t(&[4], &[1.0, 1.0, 1.0, 2.0]))],
                "Upsample",
                &["x", "scales"],
                &["y"],
                vec![],
            ),
            vec![f32t(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0])],
            Some(vec![("resize", 1)]),
            Want::Values(vec![f32t(&[1, 1, 2, 4], &[1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0])]),
        ),
        case(
            "Resize-10 nearest downscaling is refused (ONNX Runtime rounds up there)",
            one_op(
                10,
                vec![fixed_vi("x", F32, &[1, 1, 2, 2])],
                vec![init("scales", &f32t(&[4], &[1.0, 1.0, 0.5, 0.5]))],
                "Resize",
                &["x", "scales"],
                &["y"],
                vec![],
            ),
            vec![],
            None,
            Want::Error("nearest downscaling"),
        ),
        case(
            "ConvTranspose-11 SAME_UPPER with strides",
            one_op(
                11,
                vec![fixed_vi("x", F32, &[1, 1, 2, 2])],
                vec![init("w", &f32t(&[1, 1, 2, 2], &[1.0, -1.0, 0.5, 2.0]))],
                "ConvTranspose",
                &["x", "w"],
                &["y"],
                vec![string_attr("auto_pad", "SAME_UPPER"), ints("strides", &[2, 2])],
            ),
            vec![f32t(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0])],
            Some(vec![("conv_transpose", 1), ("const", 1)]),
            Want::Values(vec![f32t(
                &[1, 1, 4, 4],
                &[1.0, -1.0, 2.0, -2.0, 0.5, 2.0, 1.0, 4.0, 3.0, -3.0, 4.0, -4.0, 1.5, 6.0, 2.0, 8.0],
            )]),
        ),
        case(
            "ConvTranspose-11 pads that leave no output are refused",
            one_op(
                11,
                vec![fixed_vi("x", F32, &[1, 1, 2, 2])],
                vec![init("w", &f32t(&[1, 1, 2, 2], &[1.0, -1.0, 0.5, 2.0]))],
                "ConvTranspose",
                &["x", "w"],
                &["y"],
                vec![ints("pads", &[2, 2, 2, 2])],
            ),
            vec![],
            None,
            Want::Error("give an output of"),
        ),
        case(
            "Pad-18 axes and a constant value",
            one_op(
                18,
                vec![fixed_vi("x", F32, &[1, 1, 2, 2])],
                vec![init("pads", &i64t(&[1, 2])), init("v", &Tensor::scalar_f32(0.5)), init("axes", &i64t(&[-1]))],
                "Pad",
                &["x", "pads", "v", "axes"],
                &["y"],
                vec![],
            ),
            vec![f32t(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0])],
            Some(vec![("pad", 1)]),
            Want::Values(vec![f32t(&[1, 1, 2, 5], &[0.5, 1.0, 2.0, 0.5, 0.5, 0.5, 3.0, 4.0, 0.5, 0.5])]),
        ),
        case(
            "Pad-11 reflect",
            one_op(
                11,
                vec![in23()],
                vec![init("pads", &i64t(&[0, 2, 0, 1]))],
                "Pad",
                &["x", "pads"],
                &["y"],
                vec![string_attr("mode", "reflect")],
            ),
            vec![x23()],
            None,
            Want::Values(vec![f32t(&[2, 6], &[3.0, 2.0, 1.0, 2.0, 3.0, 2.0, 6.0, 5.0, 4.0, 5.0, 6.0, 5.0])]),
        ),
        case(
            "Pad-2 pads attribute, edge mode",
            one_op(9, vec![in23()], vec![], "Pad", &["x"], &["y"], vec![ints("pads", &[1, 0, 0, 1]), string_attr("mode", "edge")]),
            vec![x23()],
            None,
            Want::Values(vec![f32t(&[3, 4], &[1.0, 2.0, 3.0, 3.0, 1.0, 2.0, 3.0, 3.0, 4.0, 5.0, 6.0, 6.0])]),
        ),
        case(
            "Pad-13 reflect with a negative pad is refused",
            one_op(
                13,
                vec![in23()],
                vec![init("pads", &i64t(&[0, -1, 0, 1]))],
                "Pad",
                &["x", "pads"],
                &["y"],
                vec![string_attr("mode", "reflect")],
            ),
            vec![],
            None,
            Want::Error("negative pads"),
        ),
        case(
            "Tile-13 constant repeats",
            one_op(13, vec![in23()], vec![init("r", &i64t(&[2, 1]))], "Tile", &["x", "r"], &["y"], vec![]),
            vec![x23()],
            Some(vec![("tile", 1)]),
            Want::Values(vec![f32t(&[4, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])]),
        ),
        case(
            "GroupNormalization-18 repeats each group's scale and bias per channel",
            one_op(
                18,
                vec![fixed_vi("x", F32, &[1, 4, 2])],
                vec![init("s", &f32t(&[2], &[2.0, -1.0])), init("b", &f32t(&[2], &[0.0, 1.0]))],
                "GroupNormalization",
                &["x", "s", "b"],
                &["y"],
                vec![int("num_groups", 2), float("epsilon", 0.0)],
            ),
            vec![f32t(&[1, 4, 2], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])],
            None,
            Want::Values(vec![f32t(
                &[1, 4, 2],
                &[
                    -2.683281421661377,
                    -0.8944271802902222,
                    0.8944271802902222,
                    2.683281421661377,
                    2.3416407108306885,
                    1.4472136497497559,
                    0.5527864098548889,
                    -0.3416407108306885,
                ],
            )]),
        ),
        case(
            "GroupNormalization-21 one scale and bias per channel",
            one_op(
                21,
                vec![fixed_vi("x", F32, &[1, 4, 2])],
                vec![init("s", &f32t(&[4], &[2.0, -1.0, 1.0, 1.0])), init("b", &f32t(&[4], &[0.0, 1.0, 0.0, 0.0]))],
                "GroupNormalization",
                &["x", "s", "b"],
                &["y"],
                vec![int("num_groups", 2), float("epsilon", 0.0)],
            ),
            vec![f32t(&[1, 4, 2], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])],
            Some(vec![("group_norm", 1), ("const", 2)]),
            Want::Values(vec![f32t(
                &[1, 4, 2],
                &[
                    -2.683281421661377,
                    -0.8944271802902222,
                    0.5527864098548889,
                    -0.3416407108306885,
                    -1.3416407108306885,
                    -0.4472135901451111,
                    0.4472135901451111,
                    1.3416407108306885,
                ],
            )]),
        ),
        // ---- activations composed of element-wise ops (x = [[-2, -0.5, 0], [0.5, 2, 3]])
        case(
            "PRelu-16 as element-wise ops",
            one_op(16, vec![in23()], vec![init("s", &f32t(&[3], &[0.25, -1.0, 2.0]))], "PRelu", &["x", "s"], &["y"], vec![]),
            vec![act_x()],
            None,
            Want::Values(vec![f32t(&[2, 3], &[-0.5, 0.5, 0.0, 0.5, 2.0, 3.0])]),
        ),
        case(
            "Elu-9 as element-wise ops",
            one_op(9, vec![in23()], vec![], "Elu", &["x"], &["y"], vec![float("alpha", 0.5)]),
            vec![act_x()],
            None,
            Want::Values(vec![f32t(&[2, 3], &[-0.4323323667049408, -0.19673466682434082, 0.0, 0.5, 2.0, 3.0])]),
        ),
        case(
            "Selu-9 as element-wise ops",
            one_op(9, vec![in23()], vec![], "Selu", &["x"], &["y"], vec![]),
            vec![act_x()],
            None,
            Want::Values(vec![f32t(&[2, 3], &[-1.5201665163040161, -0.6917582154273987, 0.0, 0.5253505110740662, 2.1014020442962646, 3.1521029472351074])]),
        ),
        case(
            "Celu-12 as element-wise ops",
            one_op(12, vec![in23()], vec![], "Celu", &["x"], &["y"], vec![float("alpha", 2.0)]),
            vec![act_x()],
            None,
            Want::Values(vec![f32t(&[2, 3], &[-1.264241099357605, -0.44239842891693115, 0.0, 0.5, 2.0, 3.0])]),
        ),
        case(
            "ThresholdedRelu-10 as element-wise ops",
            one_op(10, vec![in23()], vec![], "ThresholdedRelu", &["x"], &["y"], vec![float("alpha", 0.5)]),
            vec![act_x()],
            None,
            Want::Values(vec![f32t(&[2, 3], &[0.0, 0.0, 0.0, 0.0, 2.0, 3.0])]),
        ),
        case(
            "Softplus-9 as element-wise ops",
            one_op(9, vec![in23()], vec![], "Softplus", &["x"], &["y"], vec![]),
            vec![act_x()],
            None,
            Want::Values(vec![f32t(&[2, 3], &[0.12692800164222717, 0.4740769863128662, 0.6931471824645996, 0.9740769863128662, 2.1269280910491943, 3.0485873222351074])]),
        ),
        case(
            "Softsign-9 as element-wise ops",
            one_op(9, vec![in23()], vec![], "Softsign", &["x"], &["y"], vec![]),
            vec![act_x()],
            None,
            Want::Values(vec![f32t(&[2, 3], &[-0.6666666865348816, -0.3333333432674408, 0.0, 0.3333333432674408, 0.6666666865348816, 0.75])]),
        ),
        case(
            "Mish-18 as element-wise ops",
            one_op(18, vec![in23()], vec![], "Mish", &["x"], &["y"], vec![]),
            vec![act_x()],
            None,
            Want::Values(vec![f32t(&[2, 3], &[-0.2525014579296112, -0.22074377536773682, 0.0, 0.37524518370628357, 1.9439588785171509, 2.98653507232666])]),
        ),
        case(
            "Xor-7 broadcast (opset 9)",
            one_op(9, vec![fixed_vi("a", BOOL, &[2, 3]), fixed_vi("b", BOOL, &[3])], vec![], "Xor", &["a", "b"], &["y"], vec![]),
            vec![tf(DType::Bool, &[2, 3], &[1.0, 0.0, 1.0, 0.0, 0.0, 1.0]), tf(DType::Bool, &[3], &[1.0, 0.0, 0.0])],
            None,
            Want::Values(vec![tf(DType::Bool, &[2, 3], &[0.0, 0.0, 1.0, 1.0, 0.0, 1.0])]),
        ),
        case(
            "Trilu-14 upper with k=1",
            one_op(14, vec![fixed_vi("x", F32, &[3, 4])], vec![init("k", &i64t(&[1]))], "Trilu", &["x", "k"], &["y"], vec![]),
            vec![f32t(&[3, 4], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0])],
            Some(vec![("where", 1), ("const", 2)]),
            Want::Values(vec![f32t(&[3, 4], &[0.0, 2.0, 3.0, 4.0, 0.0, 0.0, 7.0, 8.0, 0.0, 0.0, 0.0, 12.0])]),
        ),
        case(
            "Trilu-14 lower with k=-1",
            one_op(
                14,
                vec![fixed_vi("x", F32, &[3, 4])],
                vec![init("k", &Tensor::from_i64(vec![], vec![-1]))],
                "Trilu",
                &["x", "k"],
                &["y"],
                vec![int("upper", 0)],
            ),
            vec![f32t(&[3, 4], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0])],
            None,
            Want::Values(vec![f32t(&[3, 4], &[0.0, 0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 9.0, 10.0, 0.0, 0.0])]),
        ),
        case(
            "TopK-1 k attribute, last axis",
            one_op(9, vec![in23()], vec![], "TopK", &["x"], &["v", "i"], vec![int("k", 2)]),
            vec![f32t(&[2, 3], &[1.0, 5.0, 3.0, 4.0, 2.0, 6.0])],
            Some(vec![("top_k", 1)]),
            Want::Values(vec![
                f32t(&[2, 2], &[5.0, 3.0, 6.0, 4.0]),
                Tensor::from_i64(vec![2, 2], vec![1, 2, 2, 0]),
            ]),
        ),
        case(
            "Scatter-9 is ScatterElements without reduction",
            one_op(
                9,
                vec![fixed_vi("x", F32, &[3, 3])],
                vec![
                    init("i", &Tensor::from_i64(vec![2, 3], vec![1, 0, 2, 0, 2, 1])),
                    init("u", &f32t(&[2, 3], &[1.0, 1.1, 1.2, 2.0, 2.1, 2.2])),
                ],
                "Scatter",
                &["x", "i", "u"],
                &["y"],
                vec![],
            ),
            vec![f32t(&[3, 3], &[0.0; 9])],
            Some(vec![("const", 2), ("scatter_elements", 1)]),
            Want::Values(vec![f32t(&[3, 3], &[2.0, 1.1, 0.0, 1.0, 0.0, 2.2, 0.0, 2.1, 1.2])]),
        ),
        case(
            "GridSample-16 bilinear at the centre",
            one_op(
                16,
                vec![fixed_vi("x", F32, &[1, 1, 2, 2])],
                vec![init("g", &f32t(&[1, 1, 1, 2], &[0.0, 0.0]))],
                "GridSample",
                &["x", "g"],
                &["y"],
                vec![string_attr("mode", "bilinear")],
            ),
            vec![f32t(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0])],
            Some(vec![("const", 1), ("grid_sample", 1)]),
            Want::Values(vec![f32t(&[1, 1, 1, 1], &[2.5])]),
        ),
        case(
            "GridSample-20 refuses the version 16 mode name",
            one_op(
                20,
                vec![fixed_vi("x", F32, &[1, 1, 2, 2])],
                vec![init("g", &f32t(&[1, 1, 1, 2], &[0.0, 0.0]))],
                "GridSample",
                &["x", "g"],
                &["y"],
                vec![string_attr("mode", "bilinear")],
            ),
            vec![],
            None,
            Want::Error("mode=\"bilinear\" is not a GridSample-20 mode"),
        ),
        case(
            "Einsum-12 batched matrix product is a MatMul",
            model(
                12,
                vec![fixed_vi("a", F32, &[1, 2, 2]), fixed_vi("b", F32, &[1, 2, 1])],
                vec![],
                vec![node("Einsum", &["a", "b"], &["y"], vec![string_attr("equation", "bij, bjk -> bik")])],
                &["y"],
            ),
            vec![f32t(&[1, 2, 2], &[1.0, 2.0, 3.0, 4.0]), f32t(&[1, 2, 1], &[1.0, 1.0])],
            Some(vec![("matmul", 1)]),
            Want::Values(vec![f32t(&[1, 2, 1], &[3.0, 7.0])]),
        ),
        case(
            "Einsum-12 implicit output sums the repeated label",
            model(
                12,
                vec![fixed_vi("a", F32, &[2, 2]), fixed_vi("b", F32, &[2])],
                vec![],
                vec![node("Einsum", &["a", "b"], &["y"], vec![string_attr("equation", "ji,j")])],
                &["y"],
            ),
            vec![f32t(&[2, 2], &[1.0, 2.0, 3.0, 4.0]), f32t(&[2], &[10.0, 1.0])],
            None,
            Want::Values(vec![f32t(&[2], &[13.0, 24.0])]),
        ),
        case(
            "Einsum-12 diagonal is refused",
            model(
                12,
                vec![fixed_vi("a", F32, &[2, 2])],
                vec![],
                vec![node("Einsum", &["a"], &["y"], vec![string_attr("equation", "ii->i")])],
                &["y"],
            ),
            vec![],
            None,
            Want::Error("a subscript repeated within one operand (a diagonal) is not supported"),
        ),
        case(
            "BitShift-11 right on u8",
            model(
                11,
                vec![fixed_vi("a", U8, &[3])],
                vec![init("s", &tf(DType::U8, &[3], &[1.0, 4.0, 7.0]))],
                vec![node("BitShift", &["a", "s"], &["y"], vec![string_attr("direction", "RIGHT")])],
                &["y"],
            ),
            vec![tf(DType::U8, &[3], &[255.0, 255.0, 128.0])],
            None,
            Want::Values(vec![tf(DType::U8, &[3], &[127.0, 15.0, 1.0])]),
        ),
        case(
            "EyeLike-9 folds to a constant of the input's shape",
            one_op(9, vec![fixed_vi("x", I32, &[2, 3])], vec![], "EyeLike", &["x"], &["y"], vec![int("k", 1)]),
            vec![tf(DType::I32, &[2, 3], &[0.0; 6])],
            Some(vec![("const", 1)]),
            Want::Values(vec![tf(DType::I32, &[2, 3], &[0.0, 1.0, 0.0, 0.0, 0.0, 1.0])]),
        ),
        // ---- wire types (float8, int2, ...: decoded at the edge into the IR type holding them),
        // int16/uint16 quantization, f16 QLinearMatMul scales; values as onnx.reference computes
        // them (ml_dtypes decodes, `(x - zp) * scale`, `rint(x / scale) + zp` clipped)
        case(
            "Cast-21 from a FLOAT8E4M3FN graph input (held in f16) to FLOAT",
            one_op(21, vec![fixed_vi("x", F8E4M3FN, &[4])], vec![], "Cast", &["x"], &["y"], vec![int("to", 1)]),
            vec![tf(DType::F16, &[4], &[1.0, -448.0, 0.001953125, f64::NAN])],
            Some(vec![("cast", 1)]),
            Want::Values(vec![f32t(&[4], &[1.0, -448.0, 0.001953125, f64::NAN])]),
        ),
        case(
            "Cast-21 to FLOAT8E4M3FN inside the graph is refused",
            model(
                21,
                vec![in23()],
                vec![],
                vec![node("Cast", &["x"], &["f8"], vec![int("to", 17)]), node("Cast", &["f8"], &["y"], vec![int("to", 1)])],
                &["y"],
            ),
            vec![],
            None,
            Want::Error("cast to f8e4m3fn is not supported"),
        ),
        case(
            "A graph output of FLOAT8E5M2 is refused before anything is imported",
            typed_outputs(
                one_op(21, vec![in23()], vec![], "Cast", &["x"], &["y"], vec![int("to", F8E5M2 as i64)]),
                &[F8E5M2],
            ),
            vec![],
            None,
            Want::Error("graph output `y` is FLOAT8E5M2, which qforge does not produce"),
        ),
        case(
            // w: INT2 [1, -2, 0, -1] packed four to a byte; zero point INT2 -1
            "DequantizeLinear-21 of an INT2 initializer",
            model(
                21,
                vec![fixed_vi("x", F32, &[4])],
                vec![
                    wire_init("w", &[4], INT2, vec![0b11_00_10_01]),
                    init("s", &f32t(&[], &[0.5])),
                    wire_init("z", &[], INT2, vec![0b11]),
                ],
                vec![node("DequantizeLinear", &["w", "s", "z"], &["d"], vec![]), node("Add", &["d", "x"], &["y"], vec![])],
                &["y"],
            ),
            vec![f32t(&[4], &[0.0; 4])],
            None,
            Want::Values(vec![f32t(&[4], &[1.0, -0.5, 0.5, 0.0])]),
        ),
        case(
            // FLOAT8E5M2 [1, inf, 2^-16, -2] from raw bytes, times 2
            "DequantizeLinear-21 of a FLOAT8E5M2 initializer",
            model(
                21,
                vec![fixed_vi("x", F32, &[4])],
                vec![wire_init("w", &[4], F8E5M2, vec![0x3c, 0x7c, 0x01, 0xc0]), init("s", &f32t(&[], &[2.0]))],
                vec![node("DequantizeLinear", &["w", "s"], &["d"], vec![]), node("Add", &["d", "x"], &["y"], vec![])],
                &["y"],
            ),
            vec![f32t(&[4], &[0.0; 4])],
            None,
            Want::Values(vec![f32t(&[4], &[2.0, f64::INFINITY, 3.0517578125e-05, -4.0])]),
        ),
        case(
            "DequantizeLinear-21 of an int16 graph input, per axis",
            one_op(
                21,
                vec![fixed_vi("x", I16, &[2, 3])],
                vec![init("s", &f32t(&[2], &[0.5, 2.0])), init("z", &tf(DType::I16, &[2], &[-1.0, 3.0]))],
                "DequantizeLinear",
                &["x", "s", "z"],
                &["y"],
                vec![int("axis", 0)],
            ),
            vec![tf(DType::I16, &[2, 3], &[-32768.0, 0.0, 32767.0, 1.0, 2.0, 3.0])],
            None,
            Want::Values(vec![f32t(&[2, 3], &[-16383.5, 0.5, 16384.0, -4.0, -2.0, 0.0])]),
        ),
        case(
            "DequantizeLinear-21 of a uint16 graph input, blocked (block_size 3 along axis 1)",
            one_op(
                21,
                vec![fixed_vi("x", U16, &[2, 4])],
                vec![
                    init("s", &f32t(&[2, 2], &[1.0, 2.0, 0.5, 4.0])),
                    init("z", &tf(DType::U16, &[2, 2], &[0.0, 1.0, 2.0, 3.0])),
                ],
                "DequantizeLinear",
                &["x", "s", "z"],
                &["y"],
                vec![int("axis", 1), int("block_size", 3)],
            ),
            vec![tf(DType::U16, &[2, 4], &[0.0, 1.0, 2.0, 3.0, 65535.0, 4.0, 5.0, 6.0])],
            None,
            Want::Values(vec![f32t(&[2, 4], &[0.0, 1.0, 2.0, 4.0, 32766.5, 1.0, 1.5, 12.0])]),
        ),
        case(
            // half to even, saturation, and NaN to the zero point (the numerics contract)
            "QuantizeLinear-21 to int16",
            one_op(
                21,
                vec![fixed_vi("x", F32, &[6])],
                vec![init("s", &f32t(&[], &[1.0])), init("z", &tf(DType::I16, &[], &[10.0]))],
                "QuantizeLinear",
                &["x", "s", "z"],
                &["y"],
                vec![],
            ),
            vec![f32t(&[6], &[0.5, 1.5, -2.5, 1e9, -1e9, f64::NAN])],
            None,
            Want::Values(vec![tf(DType::I16, &[6], &[10.0, 12.0, 8.0, 32767.0, -32768.0, 10.0])]),
        ),
        case(
            "QuantizeLinear-21 to uint16 by output_dtype",
            one_op(
                21,
                vec![fixed_vi("x", F32, &[4])],
                vec![init("s", &f32t(&[], &[0.5]))],
                "QuantizeLinear",
                &["x", "s"],
                &["y"],
                vec![int("output_dtype", U16 as i64)],
            ),
            vec![f32t(&[4], &[-1.0, 0.25, 1.25, 40000.0])],
            None,
            Want::Values(vec![tf(DType::U16, &[4], &[0.0, 0.0, 2.0, 65535.0])]),
        ),
        case(
            // acc = 2*1 + 4*3 = 14; multiplier 0.5 * 0.25 / 0.125 = 1; plus the zero point 1
            "QLinearMatMul-21 with f16 scales (widened to f32)",
            one_op(
                21,
                vec![fixed_vi("a", U8, &[1, 2]), fixed_vi("b", U8, &[2, 1])],
                vec![
                    init("sa", &tf(DType::F16, &[], &[0.5])),
                    init("za", &tf(DType::U8, &[], &[0.0])),
                    init("sb", &tf(DType::F16, &[], &[0.25])),
                    init("zb", &tf(DType::U8, &[], &[0.0])),
                    init("sy", &tf(DType::F16, &[], &[0.125])),
                    init("zy", &tf(DType::U8, &[], &[1.0])),
                ],
                "QLinearMatMul",
                &["a", "sa", "za", "b", "sb", "zb", "sy", "zy"],
                &["y"],
                vec![],
            ),
            vec![tf(DType::U8, &[1, 2], &[2.0, 4.0]), tf(DType::U8, &[2, 1], &[1.0, 3.0])],
            None,
            Want::Values(vec![tf(DType::U8, &[1, 1], &[15.0])]),
        ),
        // ---- ReduceProd, the data-dependent NonZero and NonMaxSuppression, training-mode
        // outputs of BatchNormalization and Dropout's mask
        case(
            "ReduceProd-13 axes attribute",
            one_op(13, vec![in23()], vec![], "ReduceProd", &["x"], &["y"], vec![ints("axes", &[1]), int("keepdims", 0)]),
            vec![x23()],
            Some(vec![("reduce_prod", 1)]),
            Want::Values(vec![f32t(&[2], &[6.0, 120.0])]),
        ),
        case(
            "ReduceProd-18 axes input",
            one_op(18, vec![in23()], vec![init("a", &i64t(&[0]))], "ReduceProd", &["x", "a"], &["y"], vec![]),
            vec![x23()],
            None,
            Want::Values(vec![f32t(&[1, 3], &[4.0, 10.0, 18.0])]),
        ),
        case(
            // x[x != 0]: what follows NonZero sees the count it bound when it ran
            "NonZero-13 then GatherND of the selected elements",
            model(
                13,
                vec![vi("x", F32, &[Dim::Sym("N".into()), Dim::Fixed(3)])],
                vec![],
                vec![
                    node("NonZero", &["x"], &["nz"], vec![]),
                    node("Transpose", &["nz"], &["idx"], vec![]),
                    node("GatherND", &["x", "idx"], &["y"], vec![]),
                ],
                &["y"],
            ),
            vec![f32t(&[2, 3], &[0.0, 1.0, 2.0, 3.0, 0.0, -1.0])],
            Some(vec![("non_zero", 1), ("transpose", 1), ("gather_nd", 1)]),
            Want::Values(vec![f32t(&[4], &[1.0, 2.0, 3.0, -1.0])]),
        ),
        case(
            // TopK's k must be known when the graph is compiled
            "NonZero-13 count fed to TopK's k is refused",
            model(
                13,
                vec![in23()],
                vec![init("one", &i64t(&[1]))],
                vec![
                    node("NonZero", &["x"], &["nz"], vec![]),
                    node("Shape", &["nz"], &["s"], vec![]),
                    node("Gather", &["s", "one"], &["k"], vec![]),
                    node("TopK", &["x", "k"], &["y", "i"], vec![]),
                ],
                &["y"],
            ),
            vec![],
            None,
            Want::Error("input `k` (K) must be a constant (or computed from constants or input shapes), but it is computed at run time"),
        ),
        case(
            // box 1 overlaps box 0 by IoU 0.82 and is suppressed; box 2 is below the score threshold
            "NonMaxSuppression-11 corners, thresholds as graph inputs",
            model(
                11,
                vec![
                    fixed_vi("boxes", F32, &[1, 4, 4]),
                    fixed_vi("scores", F32, &[1, 1, 4]),
                    fixed_vi("max", I64, &[1]),
                    fixed_vi("iou", F32, &[1]),
                    fixed_vi("score", F32, &[1]),
                ],
                vec![],
                vec![node("NonMaxSuppression", &["boxes", "scores", "max", "iou", "score"], &["y"], vec![])],
                &["y"],
            ),
            vec![
                f32t(&[1, 4, 4], &[0.0, 0.0, 1.0, 1.0, 0.0, 0.1, 1.0, 1.1, 5.0, 5.0, 6.0, 6.0, 2.0, 2.0, 3.0, 3.0]),
                f32t(&[1, 1, 4], &[0.9, 0.95, 0.1, 0.5]),
                i64t(&[5]),
                f32t(&[1], &[0.5]),
                f32t(&[1], &[0.2]),
            ],
            Some(vec![("non_max_suppression", 1)]),
            Want::Values(vec![Tensor::from_i64(vec![2, 3], vec![0, 0, 1, 0, 0, 3])]),
        ),
        case(
            // the values of onnx.reference's _batchnorm_training_mode on these inputs
            "BatchNormalization-15 training_mode outputs running mean and variance",
            model(
                15,
                vec![fixed_vi("x", F32, &[2, 2, 1])],
                vec![
                    init("s", &f32t(&[2], &[1.0, 2.0])),
                    init("b", &f32t(&[2], &[0.0, 0.5])),
                    init("m", &f32t(&[2], &[0.5, -1.0])),
                    init("v", &f32t(&[2], &[1.0, 2.0])),
                ],
                vec![node(
                    "BatchNormalization",
                    &["x", "s", "b", "m", "v"],
                    &["y", "rm", "rv"],
                    vec![int("training_mode", 1)],
                )],
                &["y", "rm", "rv"],
            ),
            vec![f32t(&[2, 2, 1], &[1.0, 2.0, 3.0, -2.0])],
            None,
            Want::Values(vec![
                f32t(&[2, 2, 1], &[-0.9999949932098389, 2.499997615814209, 0.9999949932098389, -1.499997615814209]),
                f32t(&[2], &[0.6499999761581421, -0.8999999761581421]),
                f32t(&[2], &[1.0, 2.200000047683716]),
            ]),
        ),
        case(
            "Dropout-13 mask output is all true in inference",
            one_op(13, vec![in23()], vec![], "Dropout", &["x"], &["y", "mask"], vec![]),
            vec![x23()],
            None,
            Want::Values(vec![x23(), tf(DType::Bool, &[2, 3], &[1.0; 6])]),
        ),
        case(
            "Dropout-13 training with a non-zero ratio is refused",
            one_op(
                13,
                vec![in23()],
                vec![init("r", &f32t(&[], &[0.25])), init("t", &tf(DType::Bool, &[], &[1.0]))],
                "Dropout",
                &["x", "r", "t"],
                &["y"],
                vec![],
            ),
            vec![],
            None,
            Want::Error("training_mode=true with ratio 0.25 drops elements at random"),
        ),
        // ---- AffineGrid composed, window functions folded (the values of onnx.reference)
        case(
            "AffineGrid-20 2-D",
            model(
                20,
                vec![fixed_vi("t", F32, &[1, 2, 3])],
                vec![init("s", &i64t(&[1, 1, 2, 3]))],
                vec![node("AffineGrid", &["t", "s"], &["y"], vec![])],
                &["y"],
            ),
            vec![f32t(&[1, 2, 3], &[1.0, 0.5, 0.1, -0.2, 1.0, 0.3])],
            None,
            Want::Values(vec![f32t(
                &[1, 2, 3, 2],
                &[
                    -0.8166666626930237,
                    -0.06666665524244308,
                    -0.15000000596046448,
                    -0.19999998807907104,
                    0.5166666507720947,
                    -0.3333333134651184,
                    -0.3166666626930237,
                    0.9333333373069763,
                    0.3499999940395355,
                    0.800000011920929,
                    1.0166666507720947,
                    0.6666666865348816,
                ],
            )]),
        ),
        case(
            "AffineGrid-20 2-D align_corners",
            model(
                20,
                vec![fixed_vi("t", F32, &[1, 2, 3])],
                vec![init("s", &i64t(&[1, 1, 2, 3]))],
                vec![node("AffineGrid", &["t", "s"], &["y"], vec![int("align_corners", 1)])],
                &["y"],
            ),
            vec![f32t(&[1, 2, 3], &[1.0, 0.5, 0.1, -0.2, 1.0, 0.3])],
            None,
            Want::Values(vec![f32t(
                &[1, 2, 3, 2],
                &[-1.4, -0.5, -0.4, -0.7, 0.6, -0.9, -0.4, 1.5, 0.6, 1.3, 1.6, 1.1],
            )]),
        ),
        case(
            "HannWindow-17 periodic",
            model(17, vec![], vec![init("n", &Tensor::from_i64(vec![], vec![4]))], vec![node("HannWindow", &["n"], &["y"], vec![])], &["y"]),
            vec![],
            Some(vec![("const", 1)]),
            Want::Values(vec![f32t(&[4], &[0.0, 0.5, 1.0, 0.5])]),
        ),
        case(
            "BlackmanWindow-17 symmetric",
            model(
                17,
                vec![],
                vec![init("n", &Tensor::from_i64(vec![], vec![5]))],
                vec![node("BlackmanWindow", &["n"], &["y"], vec![int("periodic", 0)])],
                &["y"],
            ),
            vec![],
            None,
            Want::Values(vec![f32t(&[5], &[0.0, 0.3400000035762787, 1.0, 0.3400000035762787, 0.0])]),
        ),
        case(
            "HammingWindow-17 as f64",
            model(
                17,
                vec![],
                vec![init("n", &Tensor::from_i64(vec![], vec![3]))],
                vec![node("HammingWindow", &["n"], &["y"], vec![int("output_datatype", 11)])],
                &["y"],
            ),
            vec![],
            None,
            Want::Values(vec![tf(DType::F64, &[3], &[0.08695652173913038, 0.7717391304347825, 0.7717391304347828])]),
        ),
        // ---- opsets before 9: a node whose op has the schema it has at opset 9 imports
        case(
            "And-7 at opset 7 (the schema opset 9 resolves to)",
            model(
                7,
                vec![fixed_vi("a", BOOL, &[2]), fixed_vi("b", BOOL, &[2])],
                vec![],
                vec![node("And", &["a", "b"], &["y"], vec![])],
                &["y"],
            ),
            vec![tf(DType::Bool, &[2], &[1.0, 1.0]), tf(DType::Bool, &[2], &[0.0, 1.0])],
            Some(vec![("and", 1)]),
            Want::Values(vec![tf(DType::Bool, &[2], &[0.0, 1.0])]),
        ),
        case(
            "BatchNormalization-7 at opset 8 is refused naming the version",
            model(
                8,
                vec![fixed_vi("x", F32, &[1, 2])],
                vec![
                    init("s", &f32t(&[2], &[1.0, 1.0])),
                    init("b", &f32t(&[2], &[0.0, 0.0])),
                    init("m", &f32t(&[2], &[0.0, 0.0])),
                    init("v", &f32t(&[2], &[1.0, 1.0])),
                ],
                vec![node("BatchNormalization", &["x", "s", "b", "m", "v"], &["y"], vec![])],
                &["y"],
            ),
            vec![],
            None,
            Want::Error("opset 8 resolves BatchNormalization-7, a schema older than qforge implements (qforge implements BatchNormalization-9)"),
        ),
        case(
            "Opset 29 is refused with the highest supported",
            one_op(29, vec![in23()], vec![], "Relu", &["x"], &["y"], vec![]),
            vec![],
            None,
            Want::Error("uses opset 29 of the default domain; qforge imports opsets 9 to 28"),
        ),
    ]
}

fn same_values(got: &Tensor, want: &Tensor) -> bool {
    if got.dtype() != want.dtype() || got.shape() != want.shape() {
        return false;
    }
    if !want.dtype().is_float() {
        return got.to_i64_vec() == want.to_i64_vec();
    }
    got.to_f64_vec()
        .iter()
        .zip(want.to_f64_vec())
        .all(|(&g, w)| (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= 1e-6 * w.abs().max(1.0))
}

/// Every opset form in [`opset_cases`]: imported, checked by op counts, and run by the reference
/// interpreter against the values written in the table (or refused with the message in it).
#[test]
fn opset_forms_import_with_each_versions_semantics() {
    let mut failures = vec![];
    for c in opset_cases() {
        let result = import(&c.model);
        match (&c.want, result) {
            (Want::Error(text), Err(e)) => {
                let line = e.to_string();
                if !line.contains(text) || line.contains('\n') {
                    failures.push(format!("{}: error `{line}` lacks `{text}`", c.name));
                }
            }
            (Want::Error(text), Ok(_)) => {
                failures.push(format!("{}: imported, expected an error with `{text}`", c.name))
            }
            (Want::Values(_), Err(e)) => failures.push(format!("{}: {e}", c.name)),
            (Want::Values(want), Ok(g)) => {
                if let Some(ops) = &c.ops {
                    let want_ops: BTreeMap<&str, usize> = ops.iter().copied().collect();
                    if histogram(&g) != want_ops {
                        failures.push(format!("{}: ops {:?}, expected {want_ops:?}", c.name, histogram(&g)));
                    }
                }
                match qforge_ir::interp::run(&g, &c.inputs) {
                    Err(e) => failures.push(format!("{}: run: {e}", c.name)),
                    Ok(got) => {
                        let ok = got.len() == want.len() && got.iter().zip(want).all(|(g, w)| same_values(g, w));
                        if !ok {
                            failures.push(format!("{}: got {got:?}, expected {want:?}", c.name));
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of the opset cases failed:\n{}", failures.len(), failures.join("\n"));
}

/// The registry's version lists are ONNX's operator changelog, as the installed `onnx` package
/// records it (`onnx.defs.get_all_schemas_with_history()`), up to the newest opset imported.
#[test]
#[ignore = "needs python3 with the onnx package"]
fn registry_versions_match_the_onnx_changelog() {
    let ops = qforge::onnx::default_domain_ops();
    let names: Vec<&str> = ops.iter().map(|o| o.0).collect();
    let script = format!(
        "import onnx.defs as d\nh = {{}}\nfor s in d.get_all_schemas_with_history():\n    if s.domain == '':\n        \
         h.setdefault(s.name, set()).add(s.since_version)\nfor n in {names:?}:\n    print(n, *sorted(v for v in \
         h.get(n, ()) if v <= {}))\n",
        qforge::onnx::MAX_OPSET
    );
    let out = std::process::Command::new("python3").args(["-c", &script]).output().expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    for ((name, versions, until), line) in ops.iter().zip(text.lines()) {
        let want: Vec<i64> = line.split_whitespace().skip(1).map(|v| v.parse().expect("a version")).collect();
        assert_eq!((*versions, *until), (want.as_slice(), qforge::onnx::MAX_OPSET), "{name}: {line}");
    }
    assert_eq!(text.lines().count(), ops.len());
}
