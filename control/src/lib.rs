//! `s2cs`, the SciStream control server.
//!
//! It serves SciStream's `scistream.Control` gRPC API ([`service`]), keeps
//! the sessions and their state machine ([`sessions`]), hands out data
//! listener ports ([`ports`]), and runs the data plane `s2ds` as a child
//! process that it hands listening sockets to ([`dataplane`]).
#![forbid(unsafe_code)]

pub mod access;
pub mod auth;
pub mod compat;
pub mod config;
pub mod config_file;
pub mod conn_limits;
pub mod dataplane;
pub mod error;
pub mod gateway;
pub mod logsafe;
pub mod metrics;
pub mod ports;
pub mod probe;
pub mod service;
pub mod sessions;
pub mod state_dir;
pub mod status;
pub mod store;
pub mod targets;
pub mod tls;

pub use config::Config;
pub use gateway::{RunError, check_config, run};
