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
    assert!(matches!(&e, ImportError::Node { op, .. } if op == "Range"), "{e:?}");
    let line = e.to_string();
    assert!(line.contains("Range") && line.contains("limit") && !line.contains('\n'), "{line}");
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
                "Einsum",
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
            assert_eq!((op.as_str(), domain.as_str(), opset, node.as_str()), ("Einsum", "ai.onnx", 17, "my_einsum"));
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
    for opset in [8, 29] {
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

    // An unknown inner dim is an error.
    let mut inner = unnamed;
    if let Some(type_proto::Value::TensorType(t)) = inner.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        t.shape.as_mut().unwrap().dim.reverse();
    }
    let e = import(&model(17, vec![inner], vec![], vec![node("Relu", &["x"], &["y"], vec![])], &["y"])).unwrap_err();
    assert!(matches!(e, ImportError::Model(ref m) if m.contains("unknown dimension 1")), "{e}");
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
    // The mask is not computed: consuming it is a clear error.
    let nodes = vec![node("Dropout", &["x"], &["d", "mask"], vec![]), node("Not", &["mask"], &["y"], vec![])];
    let e = import(&model(13, vec![x()], vec![], nodes, &["y"])).unwrap_err();
    assert!(node_msg(&e).contains("optional output 1 of Dropout"), "{e}");

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
    // A float64 .npy, written by hand.
    let dict = "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }";
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
    assert!(e.to_string().contains("float64"), "{e}");

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
