//! The handoff messages between s2cs and s2ds (JSON over a Unix socket
//! that only the same user can reach): any bytes decode or are refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scistream_protocol::handoff::{FromDataPlane, Request};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<Request>(data) {
        let again = serde_json::to_vec(&r).expect("re-encoding");
        let back: Request = serde_json::from_slice(&again).expect("decoding our own encoding");
        assert_eq!(back, r);
    }
    let _ = serde_json::from_slice::<FromDataPlane>(data);
});
