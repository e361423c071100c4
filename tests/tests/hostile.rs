//! Hostile models: malformed, inconsistent or absurd ONNX files. Each must be refused with a
//! one-line error of the expected kind, never a panic or an unbounded allocation; and the opposite
//! case, a valid graph tens of thousands of nodes deep, must import, pass the pipeline and run.

use prost::Message;
use qforge::onnx::builder::*;
use qforge::onnx::proto::{
    tensor_proto::DataLocation, GraphProto, ModelProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
};
use qforge::onnx::{import_bytes, ImportError};
use qforge_ir::{Dim, Tensor};

/// The kind of error a case must produce.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// The bytes are not an ONNX model.
    Decode,
    /// An op qforge does not import.
    Unsupported,
    /// A node is malformed or ill-typed (named, with its ONNX op, in the message).
    Node,
    /// The model as a whole is malformed (or one of its initializers, named in the message).
    Model,
    /// The imported graph is malformed as a whole.
    IrGraph,
}

fn kind(e: &ImportError) -> Kind {
    match e {
        ImportError::Io { .. } | ImportError::Decode { .. } => Kind::Decode,
        ImportError::Unsupported { .. } | ImportError::OpVersion { .. } => Kind::Unsupported,
        ImportError::Node { .. } | ImportError::NotConstant { .. } => Kind::Node,
        ImportError::Model(_) | ImportError::Initializer { .. } | ImportError::Specialize { .. } => Kind::Model,
        // The importer reports a node's type errors as `Node`, with the ONNX op; what reaches
        // here from the IR concerns the graph as a whole.
        ImportError::Ir(_) => Kind::IrGraph,
    }
}

const U8: i32 = 2;
const I64: i32 = 7;

fn fixed(d: &[usize]) -> Vec<Dim> {
    d.iter().map(|&n| Dim::Fixed(n)).collect()
}

fn f32s(shape: &[usize], v: f32) -> Tensor {
    Tensor::from_f32(shape.to_vec(), vec![v; shape.iter().product()])
}

fn i64s(v: &[i64]) -> Tensor {
    Tensor::from_i64(vec![v.len()], v.to_vec())
}

fn one_node(
    op: &str,
    ins: &[&str],
    attrs: Vec<qforge::onnx::proto::AttributeProto>,
    inits: Vec<TensorProto>,
) -> Vec<u8> {
    model(17, vec![f32_input("x", &[1, 4, 8, 8])], inits, vec![node(op, ins, &["y"], attrs)], &["y"])
}

/// QuantizeLinear of `x` with the given scale tensor (and u8 zero point of the same length).
fn quantize_with(scale: Tensor, axis: Option<i64>) -> Vec<u8> {
    let n = scale.len();
    let zp = Tensor::new(scale.shape().to_vec(), qforge_ir::TensorData::U8(vec![0; n])).expect("zp");
    let attrs = axis.map(|a| vec![int("axis", a)]).unwrap_or_default();
    one_node("QuantizeLinear", &["x", "s", "z"], attrs, vec![init("s", &scale), init("z", &zp)])
}

fn raw_model(graph: Option<GraphProto>, opset: i64) -> Vec<u8> {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: opset }],
        graph,
        ..Default::default()
    }
    .encode_to_vec()
}

fn relu_graph() -> GraphProto {
    GraphProto {
        name: "g".into(),
        node: vec![node("Relu", &["x"], &["y"], vec![])],
        input: vec![f32_input("x", &[1, 4])],
        output: vec![output("y")],
        ..Default::default()
    }
}

fn digits() -> Vec<u8> {
    std::fs::read(qforge_tests::corpus_file("digits_cnn.onnx")).expect("corpus model")
}

type Build = fn() -> Vec<u8>;

/// (name, model, expected kind, a word the message must contain)
const CASES: &[(&str, Build, Kind, &str)] = &[
    ("empty file", || vec![], Kind::Decode, "empty"),
    ("random bytes", || (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect(), Kind::Decode, "ONNX"),
    ("text file", || b"hello, this is not a model\n".to_vec(), Kind::Decode, "ONNX"),
    (
        "truncated protobuf",
        || {
            let b = digits();
            b[..b.len() / 2].to_vec()
        },
        Kind::Decode,
        "ONNX",
    ),
    ("truncated to the header", || digits()[..40].to_vec(), Kind::Decode, "ONNX"),
    ("no graph", || raw_model(None, 17), Kind::Model, "no graph"),
    ("opset below 1", || raw_model(Some(relu_graph()), 0), Kind::Model, "opset"),
    ("opset too new", || raw_model(Some(relu_graph()), 99), Kind::Model, "opset"),
    (
        "cycle",
        || {
            model(
                17,
                vec![f32_input("x", &[1, 4])],
                vec![],
                vec![node("Relu", &["b"], &["a"], vec![]), node("Relu", &["a"], &["b"], vec![])],
                &["b"],
            )
        },
        Kind::Node,
        "`b`",
    ),
    (
        "dangling value",
        || model(17, vec![f32_input("x", &[1, 4])], vec![], vec![node("Relu", &["nope"], &["y"], vec![])], &["y"]),
        Kind::Node,
        "nope",
    ),
    (
        "output names an undefined value",
        || model(17, vec![f32_input("x", &[1, 4])], vec![], vec![node("Relu", &["x"], &["y"], vec![])], &["z"]),
        Kind::Model,
        "`z`",
    ),
    (
        "two nodes write one value",
        || {
            model(
                17,
                vec![f32_input("x", &[1, 4])],
                vec![],
                vec![node("Relu", &["x"], &["y"], vec![]), node("Sigmoid", &["x"], &["y"], vec![])],
                &["y"],
            )
        },
        Kind::Node,
        "`y`",
    ),
    (
        "duplicate graph outputs",
        || model(17, vec![f32_input("x", &[1, 4])], vec![], vec![node("Relu", &["x"], &["y"], vec![])], &["y", "y"]),
        Kind::IrGraph,
        "duplicate",
    ),
    ("missing input", || one_node("Conv", &["x"], vec![], vec![]), Kind::Node, "input"),
    ("extra input", || one_node("Relu", &["x", "x"], vec![], vec![]), Kind::Node, "input"),
    (
        "negative ConstantOfShape",
        || {
            model(
                17,
                vec![f32_input("x", &[1, 4])],
                vec![init("s", &i64s(&[2, -3]))],
                vec![node("ConstantOfShape", &["s"], &["y"], vec![])],
                &["y"],
            )
        },
        Kind::Node,
        "-3",
    ),
    (
        "allocation bomb",
        || {
            model(
                17,
                vec![f32_input("x", &[1, 4])],
                vec![init("s", &i64s(&[1 << 20, 1 << 20]))],
                vec![node("ConstantOfShape", &["s"], &["y"], vec![])],
                &["y"],
            )
        },
        Kind::Node,
        "bytes",
    ),
    (
        "dims overflow",
        || {
            model(
                17,
                vec![f32_input("x", &[1, 4])],
                vec![init("s", &i64s(&[1 << 62, 1 << 62]))],
                vec![node("ConstantOfShape", &["s"], &["y"], vec![])],
                &["y"],
            )
        },
        Kind::Node,
        "bytes",
    ),
    (
        "initializer smaller than its dims",
        || {
            let mut t = init("w", &f32s(&[3], 1.0));
            t.dims = vec![2, 2];
            one_node("Add", &["x", "w"], vec![], vec![t])
        },
        Kind::Model,
        "`w`",
    ),
    (
        "external data",
        || {
            let mut t = init("w", &f32s(&[4], 1.0));
            t.raw_data.clear();
            t.data_location = DataLocation::External as i32;
            t.external_data = vec![StringStringEntryProto { key: "location".into(), value: "w.bin".into() }];
            one_node("Add", &["x", "w"], vec![], vec![t])
        },
        Kind::Model,
        "external",
    ),
    (
        "string tensor",
        || {
            let t = TensorProto {
                name: "w".into(),
                dims: vec![1],
                data_type: 8,
                string_data: vec![b"a".to_vec()],
                ..Default::default()
            };
            one_node("Add", &["x", "w"], vec![], vec![t])
        },
        Kind::Model,
        "`w`",
    ),
    (
        "wrong dtype for conv",
        || {
            model(
                17,
                vec![vi("x", I64, &fixed(&[1, 1, 4, 4]))],
                vec![init("w", &f32s(&[1, 1, 1, 1], 1.0))],
                vec![node("Conv", &["x", "w"], &["y"], vec![])],
                &["y"],
            )
        },
        Kind::Node,
        "float",
    ),
    ("zero scale", || quantize_with(Tensor::scalar_f32(0.0), None), Kind::Node, "scale"),
    ("negative scale", || quantize_with(Tensor::scalar_f32(-0.5), None), Kind::Node, "scale"),
    ("NaN scale", || quantize_with(Tensor::scalar_f32(f32::NAN), None), Kind::Node, "scale"),
    ("infinite scale", || quantize_with(Tensor::scalar_f32(f32::INFINITY), None), Kind::Node, "scale"),
    ("per-axis scales of the wrong length", || quantize_with(f32s(&[3], 0.1), Some(1)), Kind::Node, "3"),
    ("per-axis axis out of range", || quantize_with(f32s(&[4], 0.1), Some(7)), Kind::Node, "axis"),
    ("unknown domain", || single_node_model("Frobnicate", "com.example"), Kind::Unsupported, "com.example"),
    ("unsupported op", || single_node_model("Col2Im", ""), Kind::Unsupported, "Col2Im"),
    (
        "kernel larger than input",
        || one_node("Conv", &["x", "w"], vec![], vec![init("w", &f32s(&[2, 4, 9, 9], 1.0))]),
        Kind::Node,
        "exceeds",
    ),
    (
        "conv channels do not fit",
        || one_node("Conv", &["x", "w"], vec![], vec![init("w", &f32s(&[2, 3, 3, 3], 1.0))]),
        Kind::Node,
        "channels",
    ),
    (
        "gemm inner dims differ",
        || {
            model(
                17,
                vec![f32_input("x", &[2, 3])],
                vec![init("w", &f32s(&[4, 5], 1.0))],
                vec![node("Gemm", &["x", "w"], &["y"], vec![])],
                &["y"],
            )
        },
        Kind::Node,
        "inner",
    ),
    (
        "concat shapes differ",
        || {
            model(
                17,
                vec![f32_input("x", &[2, 3])],
                vec![init("w", &f32s(&[4, 5], 1.0))],
                vec![node("Concat", &["x", "w"], &["y"], vec![int("axis", 0)])],
                &["y"],
            )
        },
        Kind::Node,
        "shape",
    ),
    (
        "transpose perm is not a permutation",
        || one_node("Transpose", &["x"], vec![ints("perm", &[0, 0, 1, 2])], vec![]),
        Kind::Node,
        "perm",
    ),
    ("softmax axis out of range", || one_node("Softmax", &["x"], vec![int("axis", 9)], vec![]), Kind::Node, "axis"),
    (
        "slice step zero",
        || {
            one_node(
                "Slice",
                &["x", "s", "e", "a", "st"],
                vec![],
                vec![init("s", &i64s(&[0])), init("e", &i64s(&[2])), init("a", &i64s(&[1])), init("st", &i64s(&[0]))],
            )
        },
        Kind::Node,
        "step",
    ),
    (
        "gather with float indices",
        || one_node("Gather", &["x", "i"], vec![], vec![init("i", &f32s(&[2], 0.0))]),
        Kind::Node,
        "indices",
    ),
    (
        "pool pads not smaller than kernel",
        || one_node("MaxPool", &["x"], vec![ints("kernel_shape", &[2, 2]), ints("pads", &[2, 2, 2, 2])], vec![]),
        Kind::Node,
        "pads",
    ),
    (
        "squeeze of a dim that is not 1",
        || one_node("Squeeze", &["x", "a"], vec![], vec![init("a", &i64s(&[1]))]),
        Kind::Node,
        "squeeze",
    ),
    (
        "split sizes do not add up",
        || {
            model(
                17,
                vec![f32_input("x", &[1, 4, 8, 8])],
                vec![init("s", &i64s(&[1, 1]))],
                vec![node("Split", &["x", "s"], &["a", "b"], vec![int("axis", 1)])],
                &["a", "b"],
            )
        },
        Kind::Node,
        "split",
    ),
    (
        "attribute of the wrong type",
        || one_node("Conv", &["x", "w"], vec![float("group", 1.0)], vec![init("w", &f32s(&[2, 4, 3, 3], 1.0))]),
        Kind::Node,
        "group",
    ),
    ("clip bound not a scalar", || one_node("Clip", &["x", "x"], vec![], vec![]), Kind::Node, "scalar"),
    (
        "reshape shape not constant",
        || {
            model(
                17,
                vec![f32_input("x", &[1, 4]), vi("s", I64, &fixed(&[2]))],
                vec![],
                vec![node("Reshape", &["x", "s"], &["y"], vec![])],
                &["y"],
            )
        },
        Kind::Node,
        "constant",
    ),
    (
        "reshape to a different size",
        || one_node("Reshape", &["x", "s"], vec![], vec![init("s", &i64s(&[3, 7]))]),
        Kind::Node,
        "reshape",
    ),
    (
        "dequantize of a float",
        || one_node("DequantizeLinear", &["x", "s"], vec![], vec![init("s", &Tensor::scalar_f32(0.1))]),
        Kind::Node,
        "quantized",
    ),
    (
        "graph input without a type",
        || {
            let mut g = relu_graph();
            g.input[0].r#type = None;
            raw_model(Some(g), 17)
        },
        Kind::Model,
        "`x`",
    ),
    (
        "qlinear conv with mismatched input scale",
        || {
            model(
                17,
                vec![vi("x", U8, &fixed(&[1, 1, 4, 4]))],
                vec![
                    init("xs", &Tensor::scalar_f32(0.1)),
                    init("xz", &Tensor::new(vec![], qforge_ir::TensorData::U8(vec![0])).unwrap()),
                ],
                vec![node("QLinearConv", &["x", "xs", "xz"], &["y"], vec![])],
                &["y"],
            )
        },
        Kind::Node,
        "QLinearConv",
    ),
];

#[test]
fn hostile_models_are_refused_with_the_right_error() {
    assert!(CASES.len() >= 40, "the hostile corpus has {} cases", CASES.len());
    let mut failures = vec![];
    for &(name, build, want, needle) in CASES {
        let bytes = build();
        let got = std::panic::catch_unwind(|| import_bytes(&bytes, name));
        match got {
            Err(_) => failures.push(format!("{name}: PANIC")),
            Ok(Ok(_)) => failures.push(format!("{name}: imported without error")),
            Ok(Err(e)) => {
                let msg = e.to_string();
                println!("{name:<42} {:?}: {msg}", kind(&e));
                if kind(&e) != want || !msg.contains(needle) || msg.contains('\n') {
                    failures
                        .push(format!("{name}: expected {want:?} mentioning `{needle}`, got {:?}: {msg}", kind(&e)));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), CASES.len(), failures.join("\n"));
}

/// Every single-byte corruption of a small model is an error or a model, never a panic.
#[test]
fn bit_flips_never_panic() {
    let base = model(
        17,
        vec![f32_input("x", &[1, 4, 8, 8])],
        vec![init("w", &f32s(&[2, 4, 3, 3], 0.5)), init("b", &f32s(&[2], 0.1))],
        vec![
            node("Conv", &["x", "w", "b"], &["c"], vec![ints("pads", &[1, 1, 1, 1])]),
            node("Relu", &["c"], &["y"], vec![]),
        ],
        &["y"],
    );
    let mut outcomes = (0, 0);
    for i in 0..base.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut b = base.clone();
            b[i] ^= flip;
            match std::panic::catch_unwind(|| import_bytes(&b, "flipped")) {
                Err(_) => panic!("byte {i} ^ {flip:#x} panics"),
                Ok(Ok(_)) => outcomes.0 += 1,
                Ok(Err(_)) => outcomes.1 += 1,
            }
        }
    }
    println!("{} corruptions: {} still import, {} refused", 3 * base.len(), outcomes.0, outcomes.1);
}

/// A chain 20 000 nodes deep imports, goes through the pipeline and runs: nothing recurses.
#[test]
fn very_deep_graph_imports_optimizes_and_runs() {
    const DEPTH: usize = 20_000;
    let names: Vec<String> = (0..=DEPTH).map(|i| if i == 0 { "x".into() } else { format!("v{i}") }).collect();
    let nodes = (0..DEPTH)
        .map(|i| node(if i % 2 == 0 { "Relu" } else { "Neg" }, &[&names[i]], &[&names[i + 1]], vec![]))
        .collect();
    let bytes = model(17, vec![f32_input("x", &[1, 4])], vec![], nodes, &[&names[DEPTH]]);
    let g = import_bytes(&bytes, "deep").expect("imports");
    let compiler = qforge::Compiler::new(qforge::PipelineOptions::default()).expect("options");
    let exe = compiler.compile(g).expect("compiles");
    let y = exe.run(&[Tensor::from_f32(vec![1, 4], vec![1.0, -2.0, 3.0, -4.0])]).expect("runs");
    // relu then neg, 10 000 times: relu(x) then -relu(x), and relu of that is 0 from the second pair on.
    assert_eq!(y[0].as_f32().expect("f32"), &[0.0, 0.0, 0.0, 0.0]);
    let text = qforge_ir::text::print_default(exe.graph()).expect("prints");
    assert_eq!(qforge_ir::text::parse(&text).expect("parses").node_count(), exe.graph().node_count());
}
