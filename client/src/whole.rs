//! A whole tunnel in one call: the inbound request at the HPC gateway, then
//! the outbound request at the instrument gateway with the uid and
//! listeners the first returned, released as a unit. What `s2uc connect`
//! and the Python `connect()` stand on.
//!
//! The uid is chosen here before anything is asked, so that whatever
//! happens after (the second half refused, the caller interrupted) the
//! tunnel can be released at both gateways by uid.

use serde::Serialize;

use crate::connect::Connection;
use crate::error::ClientError;
use crate::tunnel::{self, RequestOptions, Tunnel};

/// Both halves of a tunnel.
#[derive(Debug, Clone, Serialize)]
pub struct WholeTunnel {
    /// The session uid, the same at both gateways.
    pub uid: String,
    /// The HPC gateway's half (PROD): its listeners forward to the receivers.
    pub inbound: Tunnel,
    /// The instrument gateway's half (CONS): its listeners are where the
    /// instrument connects.
    pub outbound: Tunnel,
}

impl WholeTunnel {
    /// The instrument-facing listeners (`host:port`): where the instrument
    /// sends its data.
    pub fn listeners(&self) -> &[String] {
        &self.outbound.listeners
    }
}

/// The two gateways of a tunnel.
#[derive(Debug, Clone, Copy)]
pub struct Gateways<'a> {
    /// The HPC (inbound) gateway's control server.
    pub hpc: &'a Connection,
    /// The instrument (outbound) gateway's control server.
    pub instrument: &'a Connection,
}

/// Opens a whole tunnel under `uid` (from [`tunnel::new_uid`]): listeners at
/// the HPC gateway forwarding to `remote_ip:receiver_ports`, and listeners
/// at the instrument gateway forwarding to those. When the second half
/// fails, the first is released (and whatever the failed request left on
/// the instrument gateway), and the error says so.
pub async fn open(
    gateways: Gateways<'_>,
    uid: &str,
    remote_ip: &str,
    receiver_ports: &[u16],
    options: &RequestOptions,
) -> Result<WholeTunnel, ClientError> {
    tunnel::receiver_endpoints(remote_ip, receiver_ports)?;
    let inbound =
        match tunnel::inbound_request_as(gateways.hpc, uid, remote_ip, receiver_ports, options)
            .await
        {
            Ok(t) => t,
            Err(e) => {
                // A refused update leaves the request's listeners behind.
                let _ = release_at(gateways.hpc, uid).await;
                return Err(e);
            }
        };
    let announce = Vec::new();
    match tunnel::outbound_request(
        gateways.instrument,
        uid,
        inbound.listeners.clone(),
        announce,
        options,
    )
    .await
    {
        Ok(outbound) => Ok(WholeTunnel {
            uid: uid.to_owned(),
            inbound,
            outbound,
        }),
        Err(second) => {
            let released = close(gateways, uid).await;
            Err(ClientError::SecondHalf {
                instrument: gateways.instrument.addr.clone(),
                hpc: gateways.hpc.addr.clone(),
                cause: Box::new(second),
                released: released.is_ok(),
            })
        }
    }
}

/// Releases `uid` at both gateways; both are tried whatever the first
/// answers. A gateway that holds nothing for the uid is not an error (a
/// half that was never made, or was released already).
pub async fn close(gateways: Gateways<'_>, uid: &str) -> Result<(), ClientError> {
    let (inst, hpc) = tokio::join!(
        release_at(gateways.instrument, uid),
        release_at(gateways.hpc, uid)
    );
    inst.and(hpc)
}

/// Waits until no connection of `uid` is open at either gateway (what the
/// instrument sent has reached the receivers and both ends closed), at most
/// `bound`; whether that happened. Releasing before this would cut streams
/// that are still draining through the gateways.
pub async fn drained(gateways: Gateways<'_>, uid: &str, bound: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let (inst, hpc) = tokio::join!(
            tunnel::status(gateways.instrument, uid),
            tunnel::status(gateways.hpc, uid)
        );
        let open = |r: &Result<Vec<scistream_protocol::pb::SessionStatus>, ClientError>| match r {
            Ok(sessions) => sessions.iter().map(|s| s.conns_open).sum::<u64>(),
            // NOT_FOUND: nothing there; anything else: cannot tell, wait.
            Err(e) if e.grpc_code() == Some(tonic::Code::NotFound) => 0,
            Err(_) => 1,
        };
        if open(&inst) + open(&hpc) == 0 {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn release_at(conn: &Connection, uid: &str) -> Result<(), ClientError> {
    match tunnel::release(conn, uid).await {
        Err(e) if e.grpc_code() == Some(tonic::Code::NotFound) => Ok(()),
        other => other,
    }
}
