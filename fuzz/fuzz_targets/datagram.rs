//! UDP datagram framing inside a data channel: frames cut at any byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scistream_protocol::datagram::{Deframer, MAX_DATAGRAM};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(cut).max(1);
    let mut d = Deframer::new();
    for chunk in stream.chunks(piece) {
        d.push(chunk);
        loop {
            match d.next_datagram() {
                Ok(Some(dg)) => assert!(dg.len() <= MAX_DATAGRAM),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    assert!(d.pending() <= stream.len());
});
