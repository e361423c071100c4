//! Symbolic image sizes (`fixtures/spatial/`, made by `scripts/gen_spatial_fixtures.py`): a fully
//! convolutional network exported with dynamic batch, height and width. One imported graph, never
//! specialized to an image size, runs at two sizes and two batches on the interpreter and the JIT,
//! equal to ONNX Runtime's FP32 outputs and bit for bit to the graph imported with that size fixed;
//! the Paddle-style copy (input dims `-1`) imports to the same graph up to the symbols' names; INT8
//! calibrated at one size runs at the other.

use qforge::options::{Engine, PipelineOptions, Precision, QuantizeMode};
use qforge::Compiler;
use qforge_ir::{Graph, Tensor};
use qforge_tests::{agreement, check_jit, first_rows as rows};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/spatial")).join(name)
}

fn npy(name: &str) -> Tensor {
    qforge::npy::read(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn import(name: &str) -> Graph {
    let g = qforge::onnx::import_file(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    qforge_ir::verify::verify(&g).unwrap();
    let full = qforge_ir::text::ConstMode::Full;
    let text = qforge_ir::text::print(&g, full).unwrap();
    let back = qforge_ir::text::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(qforge_ir::text::print(&back, full).unwrap(), text, "{name}: the text form round-trips");
    g
}

/// Every case: the symbolic model, the image size (the fixed model and the input), the batch.
const CASES: &[(&str, &str, usize)] = &[
    ("fcn.onnx", "64x96", 2),
    ("fcn.onnx", "64x96", 1),
    ("fcn.onnx", "80x112", 2),
    ("fcn.onnx", "80x112", 1),
    ("fcn_paddle.onnx", "64x96", 2),
    ("fcn_paddle.onnx", "80x112", 1),
];

#[test]
fn the_symbolic_graph_matches_onnx_runtime_and_the_fixed_graph_at_two_sizes_and_batches() {
    for &(model, size, n) in CASES {
        let g = import(model);
        let label = format!("{model} {size} batch {n}");
        let x = rows(&npy(&format!("x_{size}.npy")), n);
        let reference = npy(&format!("y_{size}_b{n}.npy"));
        let fixed = import(&format!("fcn_fixed_{size}.onnx"));
        let inputs = std::slice::from_ref(&x);
        let interp = qforge_ir::interp::run(&g, inputs).unwrap_or_else(|e| panic!("{label}: {e}"));
        let a = agreement(&interp[0], &reference, None).unwrap();
        println!("{label} interpreter: {a}");
        assert!(a.max_abs <= 1e-4 * a.ref_max_abs, "{label}: interpreter {a}");
        let interp_fixed = qforge_ir::interp::run(&fixed, inputs).unwrap();
        let same = agreement(&interp[0], &interp_fixed[0], None).unwrap();
        assert_eq!(same.exact_share, 1.0, "{label}: interpreter differs from the fixed-size graph: {same}");
        check_jit(&g, inputs, &interp).unwrap_or_else(|e| panic!("{label}: {e:#}"));
        let jit = qforge_codegen::JitExecutable::new(g.clone(), Default::default()).run(inputs).unwrap();
        let a = agreement(&jit[0], &reference, None).unwrap();
        println!("{label} JIT: {a}");
        assert!(a.max_abs <= 1e-4 * a.ref_max_abs, "{label}: JIT {a}");
        let jit_fixed = qforge_codegen::JitExecutable::new(fixed, Default::default()).run(inputs).unwrap();
        let same = agreement(&jit[0], &jit_fixed[0], None).unwrap();
        assert_eq!(same.exact_share, 1.0, "{label}: JIT differs from the fixed-size graph: {same}");
    }
}

/// The graph keeps its symbols: `H` and `W` from the named dims, `x_d2` and `x_d3` from the
/// `-1` dims; the output is the input's own size.
#[test]
fn inputs_with_named_or_negative_dims_stay_symbolic() {
    for (model, input, output) in
        [("fcn.onnx", "f32[N,3,H,W]", "f32[N,4,H,W]"), ("fcn_paddle.onnx", "f32[N,3,x_d2,x_d3]", "f32[N,4,x_d2,x_d3]")]
    {
        let g = import(model);
        assert_eq!(g.node(g.inputs()[0]).outputs[0].to_string(), input, "{model}");
        assert_eq!(g.value_type(g.outputs()[0].value).to_string(), output, "{model}");
    }
}

/// The JIT compiles one program per input shape and reuses it.
#[test]
fn the_jit_compiles_one_program_per_image_size() {
    let exe = qforge_codegen::JitExecutable::new(import("fcn.onnx"), Default::default());
    let (a, b) = (npy("x_64x96.npy"), npy("x_80x112.npy"));
    let pa = exe.program(std::slice::from_ref(&a)).unwrap();
    let pb = exe.program(std::slice::from_ref(&b)).unwrap();
    assert!(!std::sync::Arc::ptr_eq(&pa, &pb), "two image sizes share a program");
    assert!(std::sync::Arc::ptr_eq(&pa, &exe.program(&[a]).unwrap()), "the program is compiled again");
}

/// Static INT8 calibrated on 64x96 images runs on 80x112 ones (calibration observes values, not
/// shapes), the integer graph bit-exact between the engines; dynamic INT8 and FP16 run too.
#[test]
fn quantized_and_fp16_graphs_run_at_another_size_than_calibrated() {
    let x = npy("x_80x112.npy");
    let reference = npy("y_80x112_b2.npy");
    let static_int8 =
        PipelineOptions { quantize: QuantizeMode::Int8, calib: Some(fixture("calib_64x96.npy")), ..Default::default() };
    // Measured: static 37.3 dB, dynamic 39.1 dB, fp16 64.8 dB; floors sit under them.
    let settings = [
        ("static int8", static_int8, 35.0),
        ("dynamic int8", PipelineOptions { quantize: QuantizeMode::Dynamic, ..Default::default() }, 37.0),
        ("fp16", PipelineOptions { precision: Precision::Fp16, ..Default::default() }, 60.0),
    ];
    for (label, opts, floor) in settings {
        for engine in [Engine::Interp, Engine::Jit] {
            let opts = PipelineOptions { engine, ..opts.clone() };
            let exe = Compiler::new(opts).unwrap().compile(import("fcn.onnx")).unwrap();
            let y = exe.run(std::slice::from_ref(&x)).unwrap_or_else(|e| panic!("{label} {engine:?}: {e:#}"));
            let a = agreement(&y[0], &reference, None).unwrap();
            println!("{label} {engine:?} at 80x112: {a}");
            assert!(a.sqnr_db >= floor, "{label} {engine:?}: {a}");
            if label == "static int8" && engine == Engine::Interp {
                check_jit(exe.graph(), std::slice::from_ref(&x), &y).unwrap_or_else(|e| panic!("{label}: {e:#}"));
            }
        }
    }
}
