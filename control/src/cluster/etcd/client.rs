//! A client of one etcd member, over the gRPC code generated from
//! `proto/etcd.proto` (our subset of etcd's v3 API). Only the calls cluster
//! mode makes: reads, writes, transactions, leases, a watch, and a status
//! call that shows the member answers.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Status, Streaming};

/// The generated messages and clients (package `etcdserverpb`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub(crate) mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::maintenance_client::MaintenanceClient;
use pb::watch_client::WatchClient;

/// Why a call to etcd failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The member's address is not a URL tonic can use, or its TLS
    /// settings were refused.
    #[error("{0}")]
    Endpoint(String),
    /// The member answered with an error, or could not be reached (tonic
    /// reports a failed connection as `UNAVAILABLE`).
    #[error("{}", status_words(.0))]
    Status(Box<Status>),
    /// A stream the member had open ended.
    #[error("etcd ended the {0} stream")]
    StreamEnded(&'static str),
}

impl From<Status> for EtcdError {
    fn from(s: Status) -> EtcdError {
        EtcdError::Status(Box::new(s))
    }
}

/// A status in words: etcd's message (or the transport's cause), then the code.
fn status_words(s: &Status) -> String {
    let mut words = s.message().to_owned();
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        let cause = e.to_string();
        if !words.contains(&cause) {
            if !words.is_empty() {
                words.push_str(": ");
            }
            words.push_str(&cause);
        }
        source = e.source();
    }
    if words.is_empty() {
        words = "no reason given".into();
    }
    format!("{words} ({:?})", s.code())
}

/// TLS towards etcd: the CA that signed the members' certificates, and this
/// node's own certificate and key when etcd asks for client certificates.
#[derive(Debug, Clone)]
pub(crate) struct EtcdTls {
    pub(crate) ca_pem: Vec<u8>,
    pub(crate) identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

/// A client of one member. Cheap to clone: the connection is shared.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    channel: Channel,
}

impl Client {
    /// A client of the member at `url` (`http://` or `https://`); the
    /// connection is made at the first call and made again after a failure.
    pub(crate) fn lazy(
        url: &str,
        tls: Option<&EtcdTls>,
        timeout: Duration,
    ) -> Result<Client, EtcdError> {
        let bad =
            |e: tonic::transport::Error| EtcdError::Endpoint(format!("etcd member {url}: {e}"));
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(bad)?
            .connect_timeout(timeout)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(timeout)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        if let Some(tls) = tls {
            let mut config =
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.identity_pem {
                config = config.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint.tls_config(config).map_err(bad)?;
        }
        Ok(Client {
            channel: endpoint.connect_lazy(),
        })
    }

    /// The value at `key`, or every key under the prefix `key` when `prefix`.
    pub(crate) async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        prefix: bool,
    ) -> Result<pb::RangeResponse, EtcdError> {
        let key = key.into();
        let range_end = if prefix { prefix_end(&key) } else { Vec::new() };
        let request = pb::RangeRequest {
            key,
            range_end,
            ..Default::default()
        };
        Ok(KvClient::new(self.channel.clone())
            .range(request)
            .await?
            .into_inner())
    }

    /// Writes `value` at `key`, attached to `lease` (0: none).
    pub(crate) async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: i64,
    ) -> Result<pb::PutResponse, EtcdError> {
        let request = pb::PutRequest {
            key: key.into(),
            value: value.into(),
            lease,
        };
        Ok(KvClient::new(self.channel.clone())
            .put(request)
            .await?
            .into_inner())
    }

    /// Deletes `key`.
    pub(crate) async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
    ) -> Result<pb::DeleteRangeResponse, EtcdError> {
        let request = pb::DeleteRangeRequest {
            key: key.into(),
            range_end: Vec::new(),
        };
        Ok(KvClient::new(self.channel.clone())
            .delete_range(request)
            .await?
            .into_inner())
    }

    /// One transaction: `success` when every comparison holds, else `failure`.
    pub(crate) async fn txn(
        &self,
        compare: Vec<pb::Compare>,
        success: Vec<pb::RequestOp>,
        failure: Vec<pb::RequestOp>,
    ) -> Result<pb::TxnResponse, EtcdError> {
        let request = pb::TxnRequest {
            compare,
            success,
            failure,
        };
        Ok(KvClient::new(self.channel.clone())
            .txn(request)
            .await?
            .into_inner())
    }

    /// A new lease of `ttl` seconds.
    pub(crate) async fn lease_grant(&self, ttl: i64) -> Result<pb::LeaseGrantResponse, EtcdError> {
        let answer = LeaseClient::new(self.channel.clone())
            .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
            .await?
            .into_inner();
        if !answer.error.is_empty() {
            return Err(Status::failed_precondition(answer.error).into());
        }
        Ok(answer)
    }

    /// Revokes `lease`: the keys attached to it go at once.
    pub(crate) async fn lease_revoke(&self, lease: i64) -> Result<(), EtcdError> {
        LeaseClient::new(self.channel.clone())
            .lease_revoke(pb::LeaseRevokeRequest { id: lease })
            .await?;
        Ok(())
    }

    /// A keep-alive stream for `lease`. The first renewal is sent before
    /// the call is made: etcd answers a stream only once a message is on it.
    pub(crate) async fn lease_keep_alive(
        &self,
        lease: i64,
    ) -> Result<(LeaseKeeper, Streaming<pb::LeaseKeepAliveResponse>), EtcdError> {
        let (tx, rx) = mpsc::channel(4);
        let keeper = LeaseKeeper { tx, lease };
        keeper.keep_alive().await?;
        let answers = LeaseClient::new(self.channel.clone())
            .lease_keep_alive(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok((keeper, answers))
    }

    /// Watches `key` (every key under it when `prefix`) from `start_revision`.
    /// The returned sender keeps the request side of the stream open.
    pub(crate) async fn watch(
        &self,
        key: impl Into<Vec<u8>>,
        prefix: bool,
        start_revision: i64,
    ) -> Result<Watch, EtcdError> {
        let key = key.into();
        let range_end = if prefix { prefix_end(&key) } else { Vec::new() };
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key,
                    range_end,
                    start_revision,
                },
            )),
        };
        let (tx, rx) = mpsc::channel(1);
        tx.send(create)
            .await
            .map_err(|_| EtcdError::StreamEnded("watch"))?;
        let events = WatchClient::new(self.channel.clone())
            .watch(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Watch { _tx: tx, events })
    }

    /// The member's status: shows that it answers.
    pub(crate) async fn status(&self) -> Result<pb::StatusResponse, EtcdError> {
        Ok(MaintenanceClient::new(self.channel.clone())
            .status(pb::StatusRequest {})
            .await?
            .into_inner())
    }
}

/// Sends renewals of one lease on its keep-alive stream.
#[derive(Debug)]
pub(crate) struct LeaseKeeper {
    tx: mpsc::Sender<pb::LeaseKeepAliveRequest>,
    lease: i64,
}

impl LeaseKeeper {
    /// Asks for one renewal; the answer comes on the stream.
    pub(crate) async fn keep_alive(&self) -> Result<(), EtcdError> {
        self.tx
            .send(pb::LeaseKeepAliveRequest { id: self.lease })
            .await
            .map_err(|_| EtcdError::StreamEnded("lease keep-alive"))
    }
}

/// An open watch: its events, and the request side held open.
#[derive(Debug)]
pub(crate) struct Watch {
    _tx: mpsc::Sender<pb::WatchRequest>,
    events: Streaming<pb::WatchResponse>,
}

impl Watch {
    /// The next answer on the watch; `None` when etcd ended it.
    pub(crate) async fn message(&mut self) -> Result<Option<pb::WatchResponse>, EtcdError> {
        let answer = self.events.message().await?;
        if let Some(a) = &answer
            && a.canceled
        {
            let why = if a.cancel_reason.is_empty() {
                format!("compacted at revision {}", a.compact_revision)
            } else {
                a.cancel_reason.clone()
            };
            return Err(Status::aborted(format!("etcd cancelled the watch: {why}")).into());
        }
        Ok(answer)
    }
}

/// The end of the range of keys that start with `prefix` (etcd's rule: the
/// prefix with its last byte below 0xff incremented; `\0` for "to the end").
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Holds when `key` does not exist (its create revision is 0) or, with
/// `revision` > 0, when `key` was last changed at `revision`.
pub(crate) fn unchanged_since(key: &str, revision: i64) -> pb::Compare {
    let (target, union) = if revision == 0 {
        (CompareTarget::Create, TargetUnion::CreateRevision(0))
    } else {
        (CompareTarget::Mod, TargetUnion::ModRevision(revision))
    };
    pb::Compare {
        result: CompareResult::Equal as i32,
        target: target as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(union),
    }
}

/// A put inside a transaction.
pub(crate) fn put_op(key: &str, value: Vec<u8>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value,
            lease: 0,
        })),
    }
}

/// A read inside a transaction.
pub(crate) fn get_op(key: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

/// A read of every key under `prefix` inside a transaction.
pub(crate) fn prefix_op(prefix: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            ..Default::default()
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_etcds() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }

    #[test]
    fn a_key_that_must_not_exist_compares_its_create_revision() {
        let c = unchanged_since("k", 0);
        assert_eq!(c.target, CompareTarget::Create as i32);
        assert_eq!(c.target_union, Some(TargetUnion::CreateRevision(0)));
        let c = unchanged_since("k", 7);
        assert_eq!(c.target, CompareTarget::Mod as i32);
        assert_eq!(c.target_union, Some(TargetUnion::ModRevision(7)));
    }

    #[test]
    fn a_put_encodes_as_etcds_fields() {
        use prost::Message;
        // PutRequest{key=1:"k", value=2:"v", lease=3:5}
        let bytes = pb::PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            lease: 5,
        }
        .encode_to_vec();
        assert_eq!(bytes, [0x0a, 1, b'k', 0x12, 1, b'v', 0x18, 5]);
    }
}
