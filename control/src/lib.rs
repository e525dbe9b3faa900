//! `s2cs`, the SciStream control server.
//!
//! It serves SciStream's `scistream.Control` gRPC API ([`service`]), keeps
//! the sessions and their state machine ([`sessions`]), hands out data
//! listener ports ([`ports`]), and runs the data plane `s2ds` as a child
//! process that it hands listening sockets to ([`dataplane`]).
#![forbid(unsafe_code)]

pub(crate) mod access;
pub(crate) mod auth;
pub(crate) mod cluster;
pub mod compat;
pub mod config;
pub mod config_file;
pub(crate) mod conn_limits;
pub(crate) mod dataplane;
pub(crate) mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod gateway;
pub(crate) mod logsafe;
pub(crate) mod metrics;
pub(crate) mod operations;
pub(crate) mod ports;
pub(crate) mod probe;
pub(crate) mod service;
pub(crate) mod sessions;
pub(crate) mod state_dir;
pub(crate) mod status;
pub(crate) mod store;
pub(crate) mod targets;
pub(crate) mod tls;

pub use config::Config;
pub use gateway::{RunError, check_config, run};
