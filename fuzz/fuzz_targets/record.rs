//! The TLS 1.3 record layer a peer gateway reaches: the header check and
//! record opening, under a fixed key, on arbitrary bytes — and the promise
//! that matters: a genuine record with any byte changed never opens.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scistream_dataplane::record::{Cipher, ContentType, Crypto, HEADER, SLOT, Suite, check_header};

fn cipher(sel: u8) -> Cipher {
    let suite = Suite::ALL[usize::from(sel % 3)];
    let crypto = if sel & 4 == 0 {
        Crypto::Ring
    } else {
        Crypto::AwsLc
    };
    let key: Vec<u8> = (0..suite.key_len() as u8).collect();
    Cipher::from_raw(crypto, suite, &key, [7u8; 12], 0).expect("a valid key")
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    // 1. A stream of arbitrary bytes, taken record by record as the relay does.
    let mut rx = cipher(sel);
    let mut stream = rest.to_vec();
    let mut at = 0;
    while let Ok(Some(len)) = check_header(&stream[at..]) {
        let end = at + HEADER + len;
        if end > stream.len() {
            break;
        }
        if let Ok((ty, range)) = rx.open(&mut stream[at..end]) {
            assert!(range.end <= end - at, "payload outside the record");
            let _ = ty;
        }
        at = end;
    }

    // 2. A genuine record of this payload, one byte changed: never opens.
    if rest.len() < 2 {
        return;
    }
    let (spot, payload) = (
        usize::from(u16::from_be_bytes([rest[0], rest[1]])),
        &rest[2..],
    );
    let payload = &payload[..payload.len().min(SLOT - HEADER - 17)];
    let mut tx = cipher(sel);
    let mut rx = cipher(sel);
    let mut rec = vec![0u8; SLOT];
    rec[HEADER..HEADER + payload.len()].copy_from_slice(payload);
    let n = tx
        .seal(&mut rec, payload.len(), ContentType::ApplicationData)
        .expect("sealing a payload that fits");
    let mut changed = rec[..n].to_vec();
    changed[spot % n] ^= 1 | (sel >> 1);
    if changed[spot % n] != rec[spot % n] {
        assert!(
            rx.open(&mut changed).is_err(),
            "a record with byte {} changed opened",
            spot % n
        );
    }
    let mut genuine = rec[..n].to_vec();
    let mut rx = cipher(sel);
    let (ty, range) = rx.open(&mut genuine).expect("the genuine record opens");
    assert_eq!(ty, ContentType::ApplicationData);
    assert_eq!(&genuine[range], payload);
});
