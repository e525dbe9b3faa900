//! Parsing the data-channel preamble: paid once per connection by the
//! inbound gateway, with a stranger's bytes. Also the cost of rejecting garbage.

use criterion::{Criterion, criterion_group, criterion_main};
use scistream_protocol::preamble::{Preamble, uid_matches};
use std::hint::black_box;

fn preamble(c: &mut Criterion) {
    let p = Preamble {
        flags: 1,
        conn_index: 3,
        uid: "4f1c2a9e-3b7d-4c1e-9f00-123456789abc".into(),
        origin: None,
    };
    let bytes = p.encode();
    c.bench_function("preamble_parse_valid", |b| {
        b.iter(|| Preamble::parse(black_box(&bytes)).expect("valid"))
    });
    let garbage = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec();
    c.bench_function("preamble_reject_tls_hello", |b| {
        b.iter(|| Preamble::parse(black_box(&garbage)).is_err())
    });
    c.bench_function("uid_compare_constant_time", |b| {
        b.iter(|| {
            uid_matches(
                black_box(&p.uid),
                black_box("4f1c2a9e-3b7d-4c1e-9f00-123456789abd"),
            )
        })
    });
}

criterion_group!(benches, preamble);
criterion_main!(benches);
