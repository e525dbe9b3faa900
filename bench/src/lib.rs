//! `s2bench`: sources, sinks and a detector simulator that verify every byte
//! they carry, and `compare`, which measures SciStream tunnels against
//! direct TCP and peer proxies side by side.
//!
//! - [`wire`]: the stream format (headers, verifiable payloads);
//! - [`send`], [`receive`]: one direction of one connection;
//! - [`source`], [`sink`]: many connections, with meters;
//! - [`report`]: summaries for people and JSON.
#![forbid(unsafe_code)]

pub mod compare;
pub mod idle;
pub mod receive;
pub mod report;
pub mod send;
pub mod setup;
pub mod sink;
pub mod source;
pub mod stats;
pub mod udp;
pub mod wire;
