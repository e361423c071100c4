//! The .npy reader must refuse any byte string with an error, never panic or over-allocate; what
//! it accepts writes back to bytes that read back to the same bytes (NaN payloads included).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = qforge::npy::read_bytes(data) {
        let bytes = qforge::npy::write_bytes(&t).expect("a read tensor writes");
        let again = qforge::npy::read_bytes(&bytes).expect("reads back");
        assert_eq!(qforge::npy::write_bytes(&again).expect("writes"), bytes);
    }
});
