//! Wire formats shared by every scistream-rs component.
//!
//! - [`pb`]: the `scistream.Control` gRPC service, generated from
//!   `proto/scistream.proto` (byte-compatible with SciStream's own proto).
//! - [`handoff`]: messages between `s2cs` and `s2ds` over a Unix
//!   `SOCK_SEQPACKET` socket, with listening sockets passed as `SCM_RIGHTS`.
//! - [`endpoint`], [`session`]: validation of the strings users and clients
//!   send (listener/receiver addresses, uids, roles), shared so that `s2uc`
//!   rejects bad input with the same words as `s2cs`.
//!
//! This crate defines formats only; it holds no I/O policy (no retries, no
//! timeouts, no threads). Small helpers every component needs live here
//! too: [`tag`] (how logs name sessions), [`loglimit`] (bounding log
//! lines that anyone can cause), [`nofile`] (the open-file limit), and
//! [`options`] (the data plane's options, shared by `s2cs` and `s2ds`).
#![forbid(unsafe_code)]

pub mod datagram;
pub mod endpoint;
pub mod handoff;
pub mod loglimit;
pub mod nofile;
pub mod options;
pub mod parse;
pub mod preamble;
pub mod session;
pub mod tag;
pub mod target;
pub mod units;

/// Generated code for the `scistream` protobuf package.
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod pb {
    tonic::include_proto!("scistream");
}

pub use endpoint::{Endpoint, EndpointError, Host};
pub use target::Target;

/// gRPC metadata key with which `s2uc` marks its calls (value
/// `scistream-rs/VERSION`). `s2cs` enforces the rate of a `req` only when
/// it carries this mark: SciStream's own client always sends `rate=10000`,
/// which SciStream never enforced (docs/COMPAT.md).
pub const CLIENT_HEADER: &str = "scistream-client";
pub use session::{
    MAX_LISTENERS_PER_SESSION, MAX_UID_LEN, MIN_UID_LEN, Protocol, ProtocolError, Role, RoleError,
    UidError, UidKind, uid_kind, validate_uid,
};
