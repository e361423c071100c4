//! ONNX import must refuse any byte string with an error, never panic, hang or over-allocate;
//! what it accepts must verify and print.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = qforge::onnx::import_bytes(data, "fuzz") {
        qforge_ir::verify::verify(&g).expect("an imported graph verifies");
        let _ = qforge_ir::text::print_default(&g).expect("an imported graph prints");
    }
});
