//! What this host's kernel and CPU offer the data plane, found the way
//! `s2ds` finds it at start: for `s2tune check` and the tests, so that what
//! they report is what `s2ds` will do.

use std::io;

pub use crate::crypto::{CryptoChoice, CryptoPlan};
pub use crate::ktls::KtlsSupport;
use crate::reactor::{EngineChoice, choose};

/// `Ok` when io_uring works here for what `s2ds` uses it for (ring setup
/// and the operations it submits); the error says why not
/// (`kernel.io_uring_disabled`, seccomp, an old kernel).
pub fn io_uring() -> io::Result<()> {
    choose(EngineChoice::IoUring).map(|_| ())
}
