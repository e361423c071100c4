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
