//! The artifact loader must refuse any byte string with an error, never panic, hang or
//! over-allocate; what it loads must verify, print, and write back to bytes that load again to
//! the same text.
//!
//! Almost every mutation breaks the trailing checksum, which the loader checks before anything
//! else, so each input is also tried with its last eight bytes replaced by the checksum of the
//! bytes before them: that is what reaches the header, payload and graph parsers.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qforge::artifact::{fnv1a64, Artifact};

fn check(bytes: &[u8]) {
    if let Ok(a) = Artifact::from_bytes(bytes) {
        qforge_ir::verify::verify(&a.graph).expect("a loaded graph verifies");
        let text = qforge_ir::text::print(&a.graph, qforge_ir::text::ConstMode::Full).expect("a loaded graph prints");
        let again = Artifact::from_bytes(&a.to_bytes().expect("a loaded artifact writes")).expect("loads back");
        assert_eq!(qforge_ir::text::print(&again.graph, qforge_ir::text::ConstMode::Full).expect("prints"), text);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(body) = data.len().checked_sub(8) {
        let mut fixed = data.to_vec();
        let sum = fnv1a64(&data[..body]);
        fixed[body..].copy_from_slice(&sum.to_le_bytes());
        if fixed != data {
            check(&fixed);
        }
    }
});
