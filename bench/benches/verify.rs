//! What the sink pays per message to prove it intact (header decode, XXH3
//! of the payload, sequence check), by message size. The sink must stay far
//! above line rate: compare the throughput printed here with the link.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use scistream_bench::wire::{Body, HEADER_LEN, Header, Kind, verify};
use std::hint::black_box;

fn verify_messages(c: &mut Criterion) {
    let mut group = c.benchmark_group("sink_verify");
    for size in [4 << 10, 64 << 10, 1 << 20] {
        let mut body = Body::new(size, 7);
        let (payload, check) = body.message(42, size);
        let payload = payload.to_vec();
        let h = Header {
            kind: Kind::Data,
            flags: 0,
            conn: 0,
            seq: 42,
            sent_ns: 0,
            len: size as u32,
            aux: 0,
            check,
            aux2: 0,
        };
        let mut raw = [0u8; HEADER_LEN];
        h.encode(&mut raw);
        group.throughput(Throughput::Bytes((size + HEADER_LEN) as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                let h = Header::decode(black_box(&raw)).expect("valid header");
                assert!(verify(&h, black_box(&payload)));
            })
        });
    }
    group.finish();
}

fn source_messages(c: &mut Criterion) {
    let mut group = c.benchmark_group("source_message");
    for size in [4 << 10, 1 << 20] {
        let mut body = Body::new(size, 7);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
            let mut seq = 0u64;
            b.iter(|| {
                seq += 1;
                black_box(body.message(seq, size));
            })
        });
    }
    group.finish();
}

criterion_group!(benches, verify_messages, source_messages);
criterion_main!(benches);
