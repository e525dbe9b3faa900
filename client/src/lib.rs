//! `s2uc`, the SciStream user client, as a library for workflow tools.
//!
//! ```no_run
//! # async fn f() -> Result<(), scistream_client::ClientError> {
//! use scistream_client::{Auth, RequestOptions, Trust, connect, inbound_request};
//! let hpc = connect("hpc-gw.example.org:5000", &Trust::Root("hpc.crt".into()), Auth::none()).await?;
//! let t = inbound_request(&hpc, "10.0.1.5", &[5001], &RequestOptions { num_conn: 4, ..Default::default() }).await?;
//! println!("give the instrument side uid {} and listeners {}", t.uid, t.listeners.join(","));
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod connect;
pub mod error;
pub mod tunnel;
pub mod whole;

pub use connect::{Auth, Connection, Trust, connect};
pub use error::ClientError;
pub use tunnel::{RequestOptions, Tunnel, inbound_request, outbound_request, release};
