//! Real exported transformers (`fixtures/transformers/`, made by
//! `scripts/gen_transformer_fixtures.py`): torchvision's ViT and transformers' BERT, exported with
//! a dynamic batch (and sequence length) by `torch.onnx.export`. One imported graph, never
//! specialized to an input shape, reproduces ONNX Runtime's FP32 outputs at batch 1 and batch 4
//! (and BERT at two sequence lengths) on the reference interpreter and on the JIT.

use qforge_ir::{Graph, Tensor};
use qforge_tests::{agreement, check_jit, first_rows as rows};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/transformers")).join(name)
}

fn npy(name: &str) -> Tensor {
    qforge::npy::read(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Runs `g` on the interpreter and the JIT and checks both against ORT's output within 1e-4 of
/// its largest magnitude.
fn check(label: &str, g: &Graph, inputs: &[Tensor], reference: &Tensor) {
    let interp = qforge_ir::interp::run(g, inputs).unwrap_or_else(|e| panic!("{label}: {e}"));
    let a = agreement(&interp[0], reference, None).unwrap();
    println!("{label} interpreter: {a}");
    assert!(a.max_abs <= 1e-4 * a.ref_max_abs, "{label}: interpreter {a}");
    check_jit(g, inputs, &interp).unwrap_or_else(|e| panic!("{label}: {e:#}"));
    let exe = qforge_codegen::JitExecutable::new(g.clone(), qforge_codegen::JitOptions::default());
    let jit = exe.run(inputs).unwrap_or_else(|e| panic!("{label}: JIT: {e}"));
    let a = agreement(&jit[0], reference, None).unwrap();
    println!("{label} JIT: {a}");
    assert!(a.max_abs <= 1e-4 * a.ref_max_abs, "{label}: JIT {a}");
}

fn import(name: &str) -> Graph {
    let g = qforge::onnx::import_file(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    qforge_ir::verify::verify(&g).unwrap();
    // The graph stays symbolic: its inputs and outputs keep their dynamic dims.
    for &i in g.inputs() {
        assert!(!g.node(i).outputs[0].shape.is_fixed(), "{name}: input {} was specialized", g.node(i).name);
    }
    // The text form round-trips.
    let full = qforge_ir::text::ConstMode::Full;
    let text = qforge_ir::text::print(&g, full).unwrap();
    let back = qforge_ir::text::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(qforge_ir::text::print(&back, full).unwrap(), text);
    g
}

#[test]
fn vit_matches_onnx_runtime_at_batch_1_and_4() {
    let g = import("vit.onnx");
    assert_eq!(g.value_type(g.outputs()[0].value).to_string(), "f32[N,10]");
    let x = npy("vit_test_x.npy");
    check("vit batch 4", &g, std::slice::from_ref(&x), &npy("vit_test_out_fp32.npy"));
    check("vit batch 1", &g, &[rows(&x, 1)], &npy("vit_test_out_fp32_b1.npy"));
}

#[test]
fn bert_matches_onnx_runtime_at_batch_1_and_4_and_two_sequence_lengths() {
    let g = import("bert.onnx");
    assert_eq!(g.value_type(g.outputs()[0].value).to_string(), "f32[N,64]");
    let (ids, mask) = (npy("bert_test_ids.npy"), npy("bert_test_mask.npy"));
    check("bert batch 4 S=16", &g, &[ids.clone(), mask.clone()], &npy("bert_test_out_fp32.npy"));
    check("bert batch 1 S=16", &g, &[rows(&ids, 1), rows(&mask, 1)], &npy("bert_test_out_fp32_b1.npy"));
    let (ids, mask) = (npy("bert_test_ids_s32.npy"), npy("bert_test_mask_s32.npy"));
    check("bert batch 2 S=32", &g, &[ids, mask], &npy("bert_test_out_fp32_s32.npy"));
}
