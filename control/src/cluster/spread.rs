//! A session whose listeners are spread over several nodes, served by the
//! node that holds it: each call goes to every part at once (this node's
//! own part straight to its registry, the others as `part` calls that the
//! receiving node serves on its own sessions), and the answers are joined
//! in the order of the session's listener list.
//!
//! Each part is an ordinary session on its node (same uid and role, its
//! share of the listeners and of the rate), so everything a single node
//! does (admission, its own `s2ds`, the UID check on every connection,
//! recovery after a restart) holds for each part unchanged.

use std::future::Future;
use std::sync::Arc;

use scistream_client::connect::Control;
use scistream_protocol::pb;
use tokio::task::JoinSet;
use tonic::Status;
use tonic::metadata::MetadataMap;
use tracing::{info, warn};

use super::directory::Part;
use super::relay::Relay;
use crate::auth::Identity;
use crate::error::ControlError;
use crate::sessions::Registry;
use crate::status::RateMemory;

/// One authenticated call, as the holder serves it on every part.
#[derive(Debug)]
pub(crate) struct Caller {
    pub(crate) registry: Arc<Registry>,
    pub(crate) relay: Arc<Relay>,
    pub(crate) who: Identity,
    /// The caller's headers, passed on to the other nodes (they check the
    /// caller themselves).
    pub(crate) metadata: MetadataMap,
    pub(crate) marked: bool,
}

/// A node's refusal, as this node answers it: same code, naming the node.
fn from_node(node: &str, s: Status) -> ControlError {
    let named = Status::new(s.code(), format!("node {node}: {}", s.message()));
    ControlError::from_status(&named)
}

impl Caller {
    fn is_here(&self, part: &Part) -> bool {
        part.node == self.relay.node()
    }

    async fn client(&self, part: &Part) -> Result<Control, ControlError> {
        let client = self.relay.part(part, &self.metadata).await;
        client.map_err(|s| from_node(&part.node, s))
    }

    async fn req_part(
        self: Arc<Self>,
        uid: String,
        protocol: String,
        part: Part,
    ) -> Result<pb::Response, ControlError> {
        let m = pb::Request {
            uid,
            role: part.role.clone(),
            num_conn: i32::try_from(part.count).unwrap_or(i32::MAX),
            rate: part.rate,
            protocol,
        };
        if self.is_here(&part) {
            let first = u16::try_from(part.offset).unwrap_or(u16::MAX);
            return self.registry.req_at(&self.who, m, self.marked, first).await;
        }
        let answer = self.client(&part).await?.req(m).await;
        answer
            .map(tonic::Response::into_inner)
            .map_err(|s| from_node(&part.node, s))
    }

    async fn hello_part(
        self: Arc<Self>,
        h: pb::Hello,
        part: Part,
    ) -> Result<pb::AppResponse, ControlError> {
        if self.is_here(&part) {
            return self.registry.hello(&self.who, h).await;
        }
        let answer = self.client(&part).await?.hello(h).await;
        answer
            .map(tonic::Response::into_inner)
            .map_err(|s| from_node(&part.node, s))
    }

    async fn update_part(
        self: Arc<Self>,
        mut u: pb::UpdateTargets,
        part: Part,
    ) -> Result<pb::Response, ControlError> {
        u.remote_listeners = targets_of(&u.remote_listeners, &part);
        if self.is_here(&part) {
            return self.registry.update(&self.who, u).await;
        }
        let answer = self.client(&part).await?.update(u).await;
        answer
            .map(tonic::Response::into_inner)
            .map_err(|s| from_node(&part.node, s))
    }
}

/// The targets a part forwards to: the session's list from the part's
/// first listener on (so that listener i of the session gets target
/// i mod len, wherever it is placed), at most one per listener.
fn targets_of(given: &[String], part: &Part) -> Vec<String> {
    let n = given.len();
    (0..part.count.min(n))
        .map(|j| given[(part.offset + j) % n].clone())
        .collect()
}

/// Runs `call` on every part at once. The first failure cancels the calls
/// still running; the answers that came are returned with it.
async fn each<T, F, Fut>(
    caller: &Arc<Caller>,
    parts: &[Part],
    call: F,
) -> (Vec<Option<T>>, Option<ControlError>)
where
    F: Fn(Arc<Caller>, Part) -> Fut,
    Fut: Future<Output = Result<T, ControlError>> + Send + 'static,
    T: Send + 'static,
{
    let mut set = JoinSet::new();
    for (i, p) in parts.iter().enumerate() {
        let call = call(caller.clone(), p.clone());
        set.spawn(async move { (i, call.await) });
    }
    let mut got: Vec<Option<T>> = parts.iter().map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, Ok(v))) => got[i] = Some(v),
            Ok((_, Err(e))) => return (got, Some(e)),
            Err(e) => {
                let e = ControlError::Internal(format!(
                    "a call to one of the session's nodes failed: {e}"
                ));
                return (got, Some(e));
            }
        }
    }
    (got, None)
}

/// Like [`each`]: every part's answer in order, or the first failure.
async fn all<T, F, Fut>(
    caller: &Arc<Caller>,
    parts: &[Part],
    call: F,
) -> Result<Vec<T>, ControlError>
where
    F: Fn(Arc<Caller>, Part) -> Fut,
    Fut: Future<Output = Result<T, ControlError>> + Send + 'static,
    T: Send + 'static,
{
    match each(caller, parts, call).await {
        (_, Some(e)) => Err(e),
        (got, None) => Ok(got.into_iter().flatten().collect()),
    }
}

/// `req` of a session placed as `parts`: every part's listeners, in order,
/// once every part has its hello. A part that fails fails the whole `req`
/// and releases every part.
pub(crate) async fn req(
    caller: Arc<Caller>,
    uid: String,
    protocol: String,
    parts: Vec<Part>,
) -> Result<pb::Response, ControlError> {
    let role = parts.first().map(|p| p.role.clone()).unwrap_or_default();
    let nodes: Vec<&str> = parts.iter().map(|p| p.node.as_str()).collect();
    info!(?nodes, "listeners spread over nodes");
    let for_each = {
        let uid = uid.clone();
        move |c: Arc<Caller>, p| c.req_part(uid.clone(), protocol.clone(), p)
    };
    let (got, failed) = each(&caller, &parts, for_each).await;
    if let Some(e) = failed {
        // Every part is released, not only those whose answer came: a part
        // whose hello landed just as the others failed holds listeners too.
        if let Err(again) = release_parts(&caller, &uid, &parts).await {
            warn!(error = %again, "a part of the failed request could not be released; its node expires it (--update-timeout)");
        }
        caller.relay.record_parts(&uid, &role, &[]).await;
        return Err(e);
    }
    let answers: Vec<pb::Response> = got.into_iter().flatten().collect();
    let mut placed = parts;
    for (p, a) in placed.iter_mut().zip(&answers) {
        p.listeners = a.listeners.clone();
        p.owner = caller.who.to_string();
    }
    caller.relay.record_parts(&uid, &role, &placed).await;
    Ok(pb::Response {
        listeners: answers.iter().flat_map(|a| a.listeners.clone()).collect(),
        prod_listeners: answers
            .first()
            .map(|a| a.prod_listeners.clone())
            .unwrap_or_default(),
        ..Default::default()
    })
}

/// `hello`: to every part (each completes its node's waiting `req`).
pub(crate) async fn hello(
    caller: Arc<Caller>,
    h: pb::Hello,
    parts: Vec<Part>,
) -> Result<pb::AppResponse, ControlError> {
    let answers = all(&caller, &parts, move |c, p| c.hello_part(h.clone(), p)).await?;
    Ok(pb::AppResponse {
        message: answers
            .first()
            .map(|a| a.message.clone())
            .unwrap_or_default(),
        listeners: answers.iter().flat_map(|a| a.listeners.clone()).collect(),
    })
}

/// `update`: every part forwards to its listeners' targets (the parts on
/// nodes gone from the cluster are left out, and said in the log).
pub(crate) async fn update(
    caller: Arc<Caller>,
    u: pb::UpdateTargets,
    mut parts: Vec<Part>,
) -> Result<pb::Response, ControlError> {
    parts.retain(|p| {
        let live = caller.is_here(p) || caller.relay.is_live(&p.node);
        if !live {
            warn!(node = %p.node, "a node holding part of the session is gone from the cluster; its part is not updated");
        }
        live
    });
    let (uid, given) = (u.uid.clone(), u.remote_listeners.clone());
    let answers = all(&caller, &parts, move |c, p| c.update_part(u.clone(), p)).await?;
    record_targets(&caller, &uid, &given, parts).await;
    Ok(pb::Response {
        listeners: answers.iter().flat_map(|a| a.listeners.clone()).collect(),
        prod_listeners: answers
            .iter()
            .flat_map(|a| a.prod_listeners.clone())
            .collect(),
        ..Default::default()
    })
}

/// Records each updated part's targets in the session's record (so that
/// `status` shows them for a part whose node is lost).
async fn record_targets(caller: &Caller, uid: &str, given: &[String], updated: Vec<Part>) {
    let set = caller.relay.change_record(uid, |record| {
        for p in &mut record.parts {
            let was_updated = updated
                .iter()
                .any(|u| u.role == p.role && u.node == p.node && u.offset == p.offset);
            if was_updated {
                p.targets = targets_of(given, p);
            }
        }
    });
    set.await;
}

/// The nodes of `parts`, each once, in order.
fn nodes_of(parts: &[Part]) -> Vec<&Part> {
    let mut seen: Vec<&Part> = Vec::new();
    for p in parts {
        if !seen.iter().any(|s| s.node == p.node) {
            seen.push(p);
        }
    }
    seen
}

/// `release` (of every role of the uid) on every node holding a part.
/// A node that is gone from the cluster, or does not answer, is skipped
/// (said in the log): its listeners went with it, or it releases them when
/// it is back and finds the session gone from etcd ([`super::Cluster::drop_released`]).
pub(crate) async fn release_parts(
    caller: &Caller,
    uid: &str,
    parts: &[Part],
) -> Result<Vec<String>, ControlError> {
    let mut first_error = None;
    // Parts on nodes that are down: released when their node is back.
    let mut pending = Vec::new();
    let pending_part = |part: &Part, why: &str| {
        let listeners: Vec<&str> = parts
            .iter()
            .filter(|p| p.node == part.node)
            .flat_map(|p| p.listeners.iter().map(String::as_str))
            .collect();
        format!(
            "node {}: {} listener(s) {} not released now ({why}); that node releases its part when it is back, and its listeners stay closed",
            part.node,
            listeners.len(),
            listeners.join(","),
        )
    };
    // Whether some node released a part for the caller, and whether a node
    // that answered holds none of the caller's: another identity's session
    // must neither be released nor forgotten in etcd.
    let (mut released_any, mut not_theirs) = (false, false);
    for part in nodes_of(parts) {
        let r = pb::Release {
            uid: uid.to_owned(),
            ..Default::default()
        };
        let released = if caller.is_here(part) {
            caller.registry.release(&caller.who, r).await.map(drop)
        } else if !caller.relay.is_live(&part.node) {
            warn!(node = %part.node, "a node holding part of the session is gone from the cluster; it releases its part when it is back");
            pending.push(pending_part(part, "its node is gone from the cluster"));
            continue;
        } else {
            match caller.client(part).await {
                Ok(mut c) => c
                    .release(r)
                    .await
                    .map(drop)
                    .map_err(|s| from_node(&part.node, s)),
                Err(e) => Err(e),
            }
        };
        match released {
            Ok(()) => released_any = true,
            Err(ControlError::NotFound(_)) => not_theirs = true,
            // A registered node that does not answer (killed, its lease
            // not yet expired): the release is recorded in etcd, and the
            // node releases its part when it comes back.
            Err(ControlError::Unavailable(why)) => {
                warn!(node = %part.node, reason = %why, "a node holding part of the session does not answer; it releases its part when it is back");
                pending.push(pending_part(part, "its node does not answer"));
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    // The owner releasing parts that their nodes lost (restarted without
    // state) still gets the record forgotten.
    let callers = parts.iter().any(|p| p.owner == caller.who.to_string());
    if not_theirs && !released_any && !callers {
        return Err(ControlError::NotFound(format!(
            "no session with this uid (tag {}) to release",
            scistream_protocol::tag::session_tag(uid)
        )));
    }
    Ok(pending)
}

/// `status`: every node's part of the session, each naming its node. A
/// part whose node is gone from the cluster, or that its node no longer
/// holds (restarted without its state), shows as `lost` with the listeners
/// it had; one whose node does not answer now, as `unreachable`.
pub(crate) async fn status(
    caller: &Caller,
    uid: &str,
    parts: &[Part],
    rates: &RateMemory,
) -> Result<pb::SessionList, ControlError> {
    let mut sessions = Vec::new();
    // Whether some node showed the caller a part as theirs, and whether a
    // node that could answer said the caller has none there.
    let (mut theirs, mut not_theirs) = (false, false);
    for part in nodes_of(parts) {
        let mut found = if caller.is_here(part) {
            match crate::status::sessions(&caller.registry, rates, &caller.who, Some(uid)).await {
                Err(ControlError::NotFound(_)) => {
                    not_theirs = true;
                    missing(uid, parts, &part.node, "lost")
                }
                other => {
                    theirs = true;
                    other?.sessions
                }
            }
        } else if caller.relay.is_live(&part.node) {
            match remote_status(caller, uid, parts, part).await? {
                Some(found) => {
                    theirs |= found.iter().any(|s| s.phase != "unreachable");
                    found
                }
                None => {
                    not_theirs = true;
                    missing(uid, parts, &part.node, "lost")
                }
            }
        } else {
            missing(uid, parts, &part.node, "lost")
        };
        for s in &mut found {
            s.node = part.node.clone();
        }
        sessions.extend(found);
    }
    // Another identity's session: the same answer as a single node gives
    // (the record's owner, listeners and targets are not the caller's to see).
    if not_theirs && !theirs {
        return Err(ControlError::NotFound(format!(
            "no session with this uid (tag {}) that you may see here",
            scistream_protocol::tag::session_tag(uid)
        )));
    }
    Ok(pb::SessionList { sessions })
}

/// A node's part as it reports it; `None` when the node holds nothing of
/// the uid for this caller (NOT_FOUND); an unreachable node's part as such.
async fn remote_status(
    caller: &Caller,
    uid: &str,
    parts: &[Part],
    part: &Part,
) -> Result<Option<Vec<pb::SessionStatus>>, ControlError> {
    let request = pb::StatusRequest {
        uid: uid.to_owned(),
    };
    let answer = match caller.client(part).await {
        Ok(mut c) => c.status(request).await,
        Err(e) => Err(Status::unavailable(e.to_string())),
    };
    match answer {
        Ok(a) => Ok(Some(a.into_inner().sessions)),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) if s.code() == tonic::Code::Unavailable => {
            warn!(node = %part.node, error = %s.message(), "a node holding part of the session does not answer");
            Ok(Some(missing(uid, parts, &part.node, "unreachable")))
        }
        Err(s) => Err(from_node(&part.node, s)),
    }
}

/// The parts on `node` as placed, one entry per role, in `phase`.
fn missing(uid: &str, parts: &[Part], node: &str, phase: &str) -> Vec<pb::SessionStatus> {
    parts
        .iter()
        .filter(|p| p.node == node)
        .map(|p| pb::SessionStatus {
            uid: uid.to_owned(),
            role: p.role.clone(),
            phase: phase.into(),
            owner: p.owner.clone(),
            targets: p.targets.clone(),
            listeners: p.listeners.clone(),
            tag: scistream_protocol::tag::session_tag(uid),
            node: node.to_owned(),
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(offset: usize, count: usize) -> Part {
        Part {
            role: "CONS".into(),
            node: "n".into(),
            control: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
            count,
            offset,
            rate: 0,
            listeners: Vec::new(),
            owner: String::new(),
            targets: Vec::new(),
        }
    }

    #[test]
    fn each_listener_gets_the_target_of_its_index_in_the_session() {
        let given: Vec<String> = (0..6).map(|i| format!("t{i}")).collect();
        assert_eq!(targets_of(&given, &part(0, 2)), ["t0", "t1"]);
        assert_eq!(targets_of(&given, &part(2, 2)), ["t2", "t3"]);
        assert_eq!(targets_of(&given, &part(4, 2)), ["t4", "t5"]);
        // Fewer targets than listeners: the list cycles, as on one node.
        let one = vec!["r".to_owned()];
        assert_eq!(targets_of(&one, &part(3, 2)), ["r"]);
        let two = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(targets_of(&two, &part(3, 3)), ["b", "a"]);
        assert!(targets_of(&[], &part(0, 2)).is_empty());
    }
}
