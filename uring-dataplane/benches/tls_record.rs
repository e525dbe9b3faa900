//! The user-space TLS record path per chunk size: what the outbound gateway
//! pays to encrypt and the inbound gateway to decrypt, in memory (no
//! sockets). Two groups side by side: `tls_record_path` is rustls's
//! buffered API (what the relay used before the record layer: a copy into
//! rustls and out again, a buffer per record), `record_layer` is the data
//! plane's own record layer (sealed and opened in place) with each crypto
//! provider.

use std::io::{Read, Write};
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rustls::crypto::ring::{cipher_suite, default_provider};

fn pair(
    suite: rustls::SupportedCipherSuite,
) -> (rustls::ClientConnection, rustls::ServerConnection) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let cert = ck.cert.der().clone();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).expect("key");
    let mut provider = default_provider();
    provider.cipher_suites = vec![suite];
    let provider = Arc::new(provider);
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut c =
        rustls::ClientConnection::new(Arc::new(client), "localhost".try_into().expect("name"))
            .expect("client");
    let mut s = rustls::ServerConnection::new(Arc::new(server)).expect("server");
    let mut buf = Vec::new();
    while c.is_handshaking() || s.is_handshaking() {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).expect("write");
        }
        s.read_tls(&mut &buf[..]).expect("read");
        s.process_new_packets().expect("process");
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).expect("write");
        }
        c.read_tls(&mut &buf[..]).expect("read");
        c.process_new_packets().expect("process");
    }
    c.set_buffer_limit(None);
    s.set_buffer_limit(None);
    (c, s)
}

fn record_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("tls_record_path");
    for (name, suite) in [
        ("aes128gcm", cipher_suite::TLS13_AES_128_GCM_SHA256),
        ("aes256gcm", cipher_suite::TLS13_AES_256_GCM_SHA384),
        (
            "chacha20poly1305",
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ),
    ] {
        for chunk in [16usize << 10, 256 << 10] {
            let (mut client, mut server) = pair(suite);
            let data = vec![7u8; chunk];
            let mut wire = Vec::with_capacity(chunk * 2);
            let mut out = vec![0u8; chunk];
            group.throughput(Throughput::Bytes(chunk as u64));
            group.bench_with_input(BenchmarkId::new(name, chunk), &chunk, |b, _| {
                b.iter(|| {
                    client.writer().write_all(&data).expect("encrypt");
                    wire.clear();
                    while client.wants_write() {
                        client.write_tls(&mut wire).expect("write");
                    }
                    let mut rest = &wire[..];
                    while !rest.is_empty() {
                        server.read_tls(&mut rest).expect("read");
                        server.process_new_packets().expect("decrypt");
                        while let Ok(n) = server.reader().read(&mut out) {
                            if n == 0 {
                                break;
                            }
                        }
                    }
                })
            });
        }
    }
    group.finish();
}

fn record_layer(c: &mut Criterion) {
    use scistream_dataplane::record::{Cipher, ContentType, Crypto, MAX_PAYLOAD, SLOT, Suite};
    let mut group = c.benchmark_group("record_layer");
    for crypto in [Crypto::Ring, Crypto::AwsLc] {
        for suite in Suite::ALL {
            // 16 full records: what one readv of the relay seals.
            let records = 16;
            let key = vec![3u8; suite.key_len()];
            let mut tx = Cipher::from_raw(crypto, suite, &key, [5u8; 12], 0).expect("key");
            let mut rx = Cipher::from_raw(crypto, suite, &key, [5u8; 12], 0).expect("key");
            let mut buf = vec![7u8; records * SLOT];
            group.throughput(Throughput::Bytes((records * MAX_PAYLOAD) as u64));
            group.bench_function(BenchmarkId::new(crypto.name(), suite.name()), |b| {
                b.iter(|| {
                    for slot in buf.chunks_mut(SLOT) {
                        let n = tx
                            .seal(slot, MAX_PAYLOAD, ContentType::ApplicationData)
                            .expect("seal");
                        rx.open(&mut slot[..n]).expect("open");
                    }
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, record_path, record_layer);
criterion_main!(benches);
