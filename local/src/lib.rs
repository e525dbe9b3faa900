//! What runs SciStream on one machine, for the demo, the tests and the
//! benchmarks: local gateways (`s2cs` started as a child process), a
//! throwaway PKI, seeded payloads with their digests, and the demo itself.
//! Not linked by `s2cs` or the Python module: the client library
//! (`scistream-client`) is what talks to gateways.
#![forbid(unsafe_code)]

pub mod demo;
pub mod demo_udp;
pub mod gateway;
pub mod payload;
pub mod pki;
