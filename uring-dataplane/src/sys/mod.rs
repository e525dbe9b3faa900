//! The data plane's only `unsafe` code: kernel interfaces that have no safe
//! wrapper in rustix or socket2. Each `unsafe` block says why it is sound.
//!
//! - [`uring`]: an io_uring used purely for readiness (multishot `POLL_ADD`,
//!   `POLL_REMOVE`); no buffer is ever handed to the kernel;
//! - [`sockopt`]: the `SO_MAX_PACING_RATE` socket option;
//! - [`ktls`]: attaching the `tls` ULP, installing keys, TLS record types.
#![allow(unsafe_code)]

pub mod ktls;
pub mod sockopt;
pub mod uring;
