//! The .qir parser must refuse any text with an error, never panic; what it accepts prints back to
//! text that parses to the same text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qforge_ir::text::{parse, print, ConstMode};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(g) = parse(text) {
        let printed = print(&g, ConstMode::Full).expect("a parsed graph prints");
        let again = parse(&printed).expect("printed text parses");
        assert_eq!(print(&again, ConstMode::Full).expect("prints"), printed);
    }
});
