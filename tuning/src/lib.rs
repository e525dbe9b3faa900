//! `s2tune`: what limits a SciStream gateway's throughput on this host, and
//! the exact fix.
//!
//! A 100 Gbit/s path over a 50 ms WAN needs 625 MB in flight; default Linux
//! buffers, a missing `fq` qdisc or a 1500-byte MTU quietly cap a tunnel at
//! a fraction of that. In the spirit of ESnet's host-tuning guidance
//! (fasterdata.es.net):
//!
//! - [`target`]: the bandwidth-delay product and the buffer sizes it implies.
//! - [`host`]: reading (and writing) sysctls and `/sys` facts under a root
//!   that tests point at a synthetic tree.
//! - [`check`]: one verdict per item (ok / warn / fail / unknown) with the
//!   current value, the recommended one and the command that fixes it.
//! - [`apply`]: the sysctl part of those fixes as a diff, applied with the
//!   previous values saved for `revert`.
//! - [`rtt`]: round-trip time by timed TCP connects.
//! - [`sweep`]: `s2bench` over a grid of connections and buffer sizes.
#![forbid(unsafe_code)]

pub mod apply;
pub mod check;
pub mod host;
pub mod rtt;
pub mod sweep;
pub mod target;
