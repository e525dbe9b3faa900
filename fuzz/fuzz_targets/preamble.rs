//! The data-channel preamble an inbound gateway reads from any peer, and
//! the answer an outbound gateway reads: arbitrary bytes never panic, and
//! whatever parses encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scistream_protocol::preamble::{Preamble, Refusal};

fuzz_target!(|data: &[u8]| {
    // Read as a gateway does: grow the buffer by what `wanted` asks.
    let mut have = 0;
    loop {
        let want = Preamble::wanted(&data[..have]).min(data.len());
        match Preamble::parse(&data[..want]) {
            Ok(Some((p, used))) => {
                assert_eq!(used, want);
                assert_eq!(p.encode(), &data[..used], "re-encoding differs");
                break;
            }
            Ok(None) if want > have => have = want,
            Ok(None) | Err(_) => break,
        }
    }
    if let Some(&code) = data.first() {
        if let Some(r) = Refusal::from_code(code) {
            let _ = r.describe();
        }
    }
});
