//! insta snapshots of the IR text of corpus models as imported (`snapshots/import__*.snap`).

use qforge_tests::corpus_file;

fn snapshot_import(model: &str) {
    let g = qforge::load_model(&corpus_file(model)).expect("model imports");
    let text = qforge_ir::text::print_default(&g).expect("graph prints");
    let name = format!("import__{}", model.trim_end_matches(".onnx").replace('/', "__"));
    insta::with_settings!({ snapshot_path => "../../snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!(name, text);
    });
}

#[test]
fn digits_cnn_imported_ir() {
    snapshot_import("digits_cnn.onnx");
}

#[test]
fn digits_cnn_int8_qdq_imported_ir() {
    snapshot_import("digits_cnn_int8_qdq.onnx");
}

/// The imported BERT (`fixtures/transformers/bert.onnx`): shape arithmetic on the dynamic batch
/// and sequence length stays symbolic (`range`, `reshape_dyn`, `expand_dyn` read `N` and `S` from
/// the inputs' dims), nothing is specialized to one input shape.
#[test]
fn transformer_bert_imported_ir() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/transformers/bert.onnx");
    let g = qforge::load_model(&path).expect("model imports");
    let text = qforge_ir::text::print_default(&g).expect("graph prints");
    insta::with_settings!({ snapshot_path => "../../snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("import__transformers__bert", text);
    });
}

/// The imported Paddle-style FCN (`fixtures/spatial/fcn_paddle.onnx`, input dims `-1`): the
/// anonymous dims become `x_d2` and `x_d3`, every spatial op carries a derived size (`(x_d2+1)/2`),
/// and the segmentation head's resize reads its sizes from the input's dims (`dim_sizes`).
#[test]
fn spatial_fcn_paddle_imported_ir() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/spatial/fcn_paddle.onnx");
    let g = qforge::load_model(&path).expect("model imports");
    let text = qforge_ir::text::print_default(&g).expect("graph prints");
    insta::with_settings!({ snapshot_path => "../../snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("import__spatial__fcn_paddle", text);
    });
}
