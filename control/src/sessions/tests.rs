//! The state machine alone: no process, no gRPC, no disk. A [`Harness`]
//! carries out the machine's effects the way the [`super::Registry`] does,
//! on an in-memory store and a fake data plane that records what it was
//! told to forward, so that every test can check all three agree.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use scistream_protocol::handoff::{Command, SessionKey};
use scistream_protocol::{Role, Target, pb};
use tokio::sync::oneshot;

use super::machine::{Machine, Phase, ReqEnd};
use super::policy::Policy;
use super::request::{HelloMsg, NewSession};
use crate::auth::Identity;
use crate::error::ControlError;
use crate::ports::{PortAllocator, free_range};
use crate::store::{StoredPhase, StoredSession};

fn who(name: &str) -> Identity {
    Identity {
        id: name.into(),
        username: None,
        linked: Vec::new(),
        source: None,
    }
}

fn uid(n: usize) -> String {
    format!("5c1e57e0-0000-4000-8000-{n:012}")
}

fn key(n: usize, role: Role) -> SessionKey {
    SessionKey { uid: uid(n), role }
}

fn target(port: u16) -> Target {
    Target::from_addr(SocketAddr::from(([10, 0, 0, 7], port)))
}

/// The machine, and what the Registry would have done with its effects.
struct Harness {
    machine: Machine,
    /// The store: what a restart would bring back.
    store: BTreeMap<SessionKey, StoredSession>,
    /// The fake data plane: the sessions it forwards, with their targets.
    forwarding: BTreeMap<SessionKey, Vec<Target>>,
    /// The `req` calls waiting for their hello.
    reqs: BTreeMap<SessionKey, (u64, oneshot::Receiver<()>)>,
    /// Hellos matched and not yet stored: (key, serial, record).
    recording: Vec<(SessionKey, u64, StoredSession)>,
    /// The next store write fails.
    disk_full: bool,
}

impl Harness {
    fn new(ports: u16, policy: Policy) -> Self {
        let ports = PortAllocator::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_range(ports));
        Harness {
            machine: Machine::new(ports, Arc::new(policy)),
            store: BTreeMap::new(),
            forwarding: BTreeMap::new(),
            reqs: BTreeMap::new(),
            recording: Vec::new(),
            disk_full: false,
        }
    }

    fn req_as(
        &mut self,
        owner: &str,
        k: &SessionKey,
        n: i32,
        rate: i32,
    ) -> Result<(), ControlError> {
        let r = pb::Request {
            uid: k.uid.clone(),
            role: k.role.as_str().into(),
            num_conn: n,
            rate,
            protocol: String::new(),
        };
        let owner = who(owner);
        let new = NewSession::parse(r, true, &owner, &self.policy())?;
        let w = self.machine.on_req(&owner, new)?;
        self.reqs.insert(k.clone(), (w.serial, w.hello));
        Ok(())
    }

    fn req(&mut self, k: &SessionKey, n: i32) -> Result<(), ControlError> {
        self.req_as("alice", k, n, 0)
    }

    fn policy(&self) -> Policy {
        self.machine.policy().clone()
    }

    /// The first half of a hello: matched, not stored yet.
    fn hello_begin(
        &mut self,
        owner: &str,
        uid: &str,
        hint: Option<Role>,
    ) -> Result<bool, ControlError> {
        let hello = HelloMsg {
            uid: uid.into(),
            role_hint: hint,
            receivers: vec!["10.0.0.9:7000".into()],
        };
        match self.machine.on_hello(&who(owner), &hello)? {
            Some(r) => {
                self.recording.push((r.key, r.serial, r.record));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The second half of the oldest hello being recorded.
    fn hello_finish(&mut self) -> Option<bool> {
        if self.recording.is_empty() {
            return None;
        }
        let (key, serial, record) = self.recording.remove(0);
        if !self.machine.is_current(&key, serial) {
            return Some(false);
        }
        if std::mem::take(&mut self.disk_full) {
            self.machine.hello_not_recorded(&key, serial);
            return Some(false);
        }
        self.store.insert(key.clone(), record);
        Some(
            self.machine
                .hello_recorded(&key, serial, Instant::now())
                .is_some(),
        )
    }

    fn hello(&mut self, uid: &str) -> Result<bool, ControlError> {
        let matched = self.hello_begin("alice", uid, None)?;
        Ok(matched && self.hello_finish() == Some(true))
    }

    /// The caller of `k`'s req stopped waiting.
    fn req_end(&mut self, k: &SessionKey) -> Option<ReqEnd> {
        let (serial, _) = self.reqs.remove(k)?;
        Some(self.machine.on_req_end(k, serial))
    }

    fn update_as(
        &mut self,
        owner: &str,
        uid: &str,
        role: Option<Role>,
        targets: &[Target],
    ) -> Result<pb::Response, ControlError> {
        let owner = who(owner);
        let key = self.machine.find_for(&owner, uid, role)?;
        let (command, fds) = self.machine.begin_update(&owner, &key, targets)?;
        match command {
            Command::AddSession(spec) => {
                assert_eq!(fds.len(), spec.listeners.len(), "a socket per listener");
                assert_eq!(
                    spec.targets.len(),
                    spec.listeners.len(),
                    "a target per listener"
                );
                assert!(self.forwarding.insert(spec.key, spec.targets).is_none());
            }
            Command::UpdateTargets { key, targets } => {
                assert!(fds.is_empty());
                let old = self
                    .forwarding
                    .get_mut(&key)
                    .expect("updates a forwarded session");
                assert_eq!(old.len(), targets.len());
                *old = targets;
            }
            other => panic!("unexpected {other:?}"),
        }
        let (record, reply) = self
            .machine
            .finish_update(&key, targets)
            .expect("still there");
        self.store.insert(key, record);
        Ok(reply)
    }

    fn update(&mut self, uid: &str, targets: &[Target]) -> Result<pb::Response, ControlError> {
        self.update_as("alice", uid, None, targets)
    }

    fn release_as(&mut self, owner: &str, uid: &str) -> Result<usize, ControlError> {
        let keys = self.machine.releasable(&who(owner), uid)?;
        for key in &keys {
            self.store.remove(key);
            if let Some(s) = self.machine.remove(key) {
                if s.phase() == Phase::Forwarding {
                    assert!(self.forwarding.remove(key).is_some());
                }
            }
        }
        Ok(keys.len())
    }

    /// Store, data plane, table and ports agree.
    fn check(&self) {
        let sessions = self.machine.sessions();
        let held: usize = sessions.values().map(|s| s.listeners.len()).sum();
        assert_eq!(
            self.machine.ports_in_use(),
            held,
            "ports in use = ports held"
        );
        let mut ports: Vec<u16> = sessions
            .values()
            .flat_map(|s| s.listeners.iter().map(|l| l.addr.port()))
            .collect();
        ports.sort_unstable();
        let n = ports.len();
        ports.dedup();
        assert_eq!(ports.len(), n, "no port held twice");
        for (k, s) in sessions {
            let stored = self.store.get(k).map(|r| r.phase);
            match s.phase() {
                Phase::AwaitingHello => assert_eq!(stored, None, "{k}"),
                Phase::RecordingHello => {}
                Phase::Ready { .. } => assert_eq!(stored, Some(StoredPhase::Ready), "{k}"),
                Phase::Forwarding => assert_eq!(stored, Some(StoredPhase::Forwarding), "{k}"),
            }
            assert_eq!(
                self.forwarding.contains_key(k),
                s.phase() == Phase::Forwarding,
                "{k}"
            );
        }
        for k in self.store.keys().chain(self.forwarding.keys()) {
            assert!(
                sessions.contains_key(k),
                "{k} stored or forwarded but not in the table"
            );
        }
    }
}

fn code(r: Result<impl std::fmt::Debug, ControlError>) -> &'static str {
    r.expect_err("must fail").kind()
}

#[test]
fn a_session_goes_through_its_life() {
    let mut h = Harness::new(8, Policy::default());
    let k = key(1, Role::Prod);
    h.req(&k, 2).unwrap();
    h.check();
    assert!(h.hello(&k.uid).unwrap());
    h.check();
    assert!(
        matches!(h.req_end(&k), Some(ReqEnd::Ready(r)) if r.listeners.len() == 2 && r.prod_listeners == ["10.0.0.9:7000"])
    );
    let reply = h.update(&k.uid, &[target(7000)]).unwrap();
    assert_eq!(
        reply.prod_listeners,
        ["10.0.0.7:7000", "10.0.0.7:7000"],
        "targets cycled"
    );
    h.check();
    h.update(&k.uid, &[target(7001), target(7002)]).unwrap();
    assert_eq!(
        h.forwarding[&k]
            .iter()
            .map(|t| t.addr.port())
            .collect::<Vec<_>>(),
        [7001, 7002]
    );
    h.check();
    assert_eq!(h.release_as("alice", &k.uid).unwrap(), 1);
    h.check();
    assert_eq!(h.machine.ports_in_use(), 0);
}

#[test]
fn a_req_without_its_hello_frees_its_ports() {
    let mut h = Harness::new(8, Policy::default());
    let k = key(1, Role::Cons);
    h.req(&k, 3).unwrap();
    assert_eq!(h.machine.ports_in_use(), 3);
    assert!(matches!(h.req_end(&k), Some(ReqEnd::Abandoned(_))));
    h.check();
    assert_eq!(h.machine.ports_in_use(), 0);
    // A hello now finds nothing, and says so.
    assert!(!h.hello(&k.uid).unwrap());
    let e = h.machine.hello_unmatched(&k.uid, Duration::from_secs(2));
    assert_eq!(e.kind(), "not_found", "{e}");
}

#[test]
fn a_hello_before_its_req_matches_once_the_req_comes() {
    let mut h = Harness::new(8, Policy::default());
    let k = key(2, Role::Prod);
    assert!(!h.hello(&k.uid).unwrap(), "nothing waits yet");
    h.req(&k, 1).unwrap();
    assert!(h.hello(&k.uid).unwrap());
    h.check();
    // A second hello for the same uid has nothing left to bind to.
    assert!(!h.hello(&k.uid).unwrap());
    // The same answer as for a uid nobody holds: no existence oracle.
    let e = h.machine.hello_unmatched(&k.uid, Duration::from_secs(2));
    let none = h
        .machine
        .hello_unmatched("never-held-uid-0123", Duration::from_secs(2));
    assert_eq!(e.kind(), "not_found", "{e}");
    assert_eq!(
        e.to_string().replace(&k.tag(), "TAG"),
        none.to_string().replace(
            &scistream_protocol::tag::session_tag("never-held-uid-0123"),
            "TAG"
        )
    );
}

#[test]
fn the_hello_picks_the_role_it_names_and_only_its_owner_may_send_it() {
    let mut h = Harness::new(8, Policy::default());
    let (p, c) = (key(3, Role::Prod), key(3, Role::Cons));
    h.req(&p, 1).unwrap();
    h.req(&c, 1).unwrap();
    // Another identity's hello finds nothing waiting (as for an unknown uid).
    assert!(!h.hello_begin("mallory", &p.uid, None).unwrap());
    assert!(h.hello_begin("alice", &c.uid, Some(Role::Cons)).unwrap());
    assert_eq!(h.machine.sessions()[&c].phase(), Phase::RecordingHello);
    assert_eq!(h.machine.sessions()[&p].phase(), Phase::AwaitingHello);
    assert_eq!(h.hello_finish(), Some(true));
    h.check();
}

#[test]
fn an_update_before_the_hello_is_refused() {
    let mut h = Harness::new(8, Policy::default());
    let k = key(4, Role::Cons);
    h.req(&k, 1).unwrap();
    assert_eq!(
        code(h.update(&k.uid, &[target(7000)])),
        "failed_precondition"
    );
    assert!(h.hello_begin("alice", &k.uid, None).unwrap());
    // Also while the hello is being recorded.
    assert_eq!(
        code(h.update(&k.uid, &[target(7000)])),
        "failed_precondition"
    );
    h.hello_finish();
    h.update(&k.uid, &[target(7000)]).unwrap();
    h.check();
}

#[test]
fn a_release_while_waiting_ends_the_req() {
    let mut h = Harness::new(8, Policy::default());
    let k = key(5, Role::Prod);
    h.req(&k, 2).unwrap();
    h.release_as("alice", &k.uid).unwrap();
    h.check();
    let (_, mut hello) = h.reqs.remove(&k).unwrap();
    assert!(
        matches!(hello.try_recv(), Err(oneshot::error::TryRecvError::Closed)),
        "the waiting req is woken"
    );
    assert!(matches!(h.machine.on_req_end(&k, 1), ReqEnd::Gone));
    assert_eq!(h.machine.ports_in_use(), 0);
}

#[test]
fn a_release_while_the_hello_is_recorded_wins() {
    let mut h = Harness::new(8, Policy::default());
    let k = key(6, Role::Prod);
    h.req(&k, 1).unwrap();
    assert!(h.hello_begin("alice", &k.uid, None).unwrap());
    h.release_as("alice", &k.uid).unwrap();
    // The same uid asked for again before the first hello finished.
    h.req(&k, 1).unwrap();
    assert_eq!(
        h.hello_finish(),
        Some(false),
        "the old hello does not touch the new session"
    );
    assert_eq!(h.machine.sessions()[&k].phase(), Phase::AwaitingHello);
    h.check();
}

#[test]
fn a_hello_that_cannot_be_stored_ends_the_session() {
    let mut h = Harness::new(8, Policy::default());
    let k = key(7, Role::Cons);
    h.req(&k, 2).unwrap();
    h.disk_full = true;
    assert!(!h.hello(&k.uid).unwrap());
    h.check();
    assert!(h.machine.sessions().is_empty());
    assert_eq!(h.machine.ports_in_use(), 0);
    assert!(matches!(h.req_end(&k), Some(ReqEnd::Gone)));
}

#[test]
fn a_req_that_times_out_while_its_hello_is_recorded_waits_for_it() {
    let mut h = Harness::new(8, Policy::default());
    let k = key(8, Role::Prod);
    h.req(&k, 1).unwrap();
    assert!(h.hello_begin("alice", &k.uid, None).unwrap());
    let serial = h.reqs[&k].0;
    assert!(matches!(
        h.machine.on_req_end(&k, serial),
        ReqEnd::Recording
    ));
    assert_eq!(h.hello_finish(), Some(true));
    assert!(matches!(h.machine.on_req_end(&k, serial), ReqEnd::Ready(_)));
    h.check();
}

#[test]
fn uids_belong_to_their_first_user_across_roles() {
    let mut h = Harness::new(8, Policy::default());
    h.req_as("alice", &key(9, Role::Prod), 1, 0).unwrap();
    assert_eq!(
        code(h.req_as("bob", &key(9, Role::Cons), 1, 0)),
        "permission_denied"
    );
    assert_eq!(
        code(h.req_as("alice", &key(9, Role::Prod), 1, 0)),
        "already_exists"
    );
    h.req_as("alice", &key(9, Role::Cons), 1, 0).unwrap();
    // Another identity's session: as if there were none.
    assert_eq!(code(h.release_as("bob", &uid(9))), "not_found");
    h.hello(&uid(9)).unwrap();
    h.hello(&uid(9)).unwrap();
    // Both roles here: an update must name one.
    assert_eq!(code(h.update(&uid(9), &[target(1)])), "invalid_argument");
    h.update_as("alice", &uid(9), Some(Role::Cons), &[target(1)])
        .unwrap();
    assert_eq!(
        code(h.update_as("bob", &uid(9), Some(Role::Prod), &[target(1)])),
        "not_found"
    );
    assert_eq!(h.release_as("alice", &uid(9)).unwrap(), 2);
    h.check();
}

#[test]
fn admission_limits_hold() {
    let policy = Policy {
        max_sessions: Some(3),
        max_pending_per_identity: 2,
        max_conns_per_session: 4,
        ..Policy::default()
    };
    let mut h = Harness::new(16, policy);
    h.req(&key(10, Role::Prod), 1).unwrap();
    h.req(&key(11, Role::Prod), 1).unwrap();
    assert_eq!(code(h.req(&key(12, Role::Prod), 1)), "resource_exhausted",);
    // Another identity has its own pending quota, not more sessions.
    h.req_as("bob", &key(13, Role::Prod), 1, 0).unwrap();
    assert_eq!(
        code(h.req_as("carol", &key(14, Role::Prod), 1, 0)),
        "resource_exhausted"
    );
    assert_eq!(
        code(h.req_as("carol", &key(14, Role::Prod), 5, 0)),
        "invalid_argument",
        "max conns per session"
    );
    h.check();
    assert_eq!(h.machine.ports_in_use(), 3, "refusals hold no port");
}

#[test]
fn capacity_and_per_identity_quotas_hold() {
    let policy = Policy {
        capacity_bps: Some(10_000_000),
        max_ports_per_identity: 3,
        max_sessions_per_identity: 2,
        ..Policy::default()
    };
    let mut h = Harness::new(16, policy);
    assert_eq!(
        code(h.req_as("alice", &key(20, Role::Prod), 1, 0)),
        "invalid_argument",
        "a rate is needed"
    );
    h.req_as("alice", &key(20, Role::Prod), 2, 6000).unwrap();
    assert_eq!(
        code(h.req_as("bob", &key(21, Role::Prod), 1, 5000)),
        "resource_exhausted",
        "capacity"
    );
    h.req_as("bob", &key(21, Role::Prod), 1, 4000).unwrap();
    h.release_as("bob", &uid(21)).unwrap();
    assert_eq!(
        code(h.req_as("alice", &key(22, Role::Prod), 2, 100)),
        "resource_exhausted",
        "ports per identity"
    );
    h.req_as("alice", &key(22, Role::Prod), 1, 100).unwrap();
    assert_eq!(
        code(h.req_as("alice", &key(23, Role::Prod), 1, 100)),
        "resource_exhausted",
        "sessions per identity"
    );
    h.check();
}

#[test]
fn exhausted_ports_are_refused_and_nothing_leaks() {
    let mut h = Harness::new(4, Policy::default());
    h.req(&key(30, Role::Prod), 3).unwrap();
    assert_eq!(code(h.req(&key(31, Role::Prod), 2)), "resource_exhausted");
    assert_eq!(h.machine.ports_in_use(), 3);
    h.check();
}

#[test]
fn a_stored_table_comes_back() {
    let mut h = Harness::new(8, Policy::default());
    let (p, c) = (key(40, Role::Prod), key(41, Role::Cons));
    h.req(&p, 2).unwrap();
    h.req(&c, 1).unwrap();
    h.hello(&p.uid).unwrap();
    h.hello(&c.uid).unwrap();
    h.update(&c.uid, &[target(7100)]).unwrap();
    let stored: Vec<StoredSession> = h.store.values().cloned().collect();
    let ports = h.machine.ports_in_use();
    // A restart: the listeners are bound again from the records.
    let mut listeners = BTreeMap::new();
    for s in &stored {
        listeners.insert(s.key(), h.machine.remove(&s.key()).unwrap().listeners);
    }
    assert_eq!(h.machine.ports_in_use(), 0);
    let now = Instant::now();
    for s in stored {
        let l = listeners.remove(&s.key()).unwrap();
        h.machine.restore(s, l, false, now);
    }
    h.check();
    assert_eq!(h.machine.ports_in_use(), ports);
    assert_eq!(h.machine.forwarding(), vec![c.clone()]);
    let (spec, fds) = h.machine.handoff(&c).unwrap().unwrap();
    assert_eq!((spec.targets, fds.len()), (vec![target(7100)], 1));
    // The ready one expires if nobody updates it.
    assert!(h.machine.expired(now, Duration::from_secs(60)).is_empty());
    assert_eq!(
        h.machine
            .expired(now + Duration::from_secs(60), Duration::from_secs(60)),
        vec![p]
    );
}

/// One step of a random sequence of calls.
#[derive(Debug, Clone)]
enum Op {
    Req {
        uid: usize,
        prod: bool,
        n: i32,
        owner: bool,
    },
    HelloBegin {
        uid: usize,
    },
    HelloFinish {
        disk_full: bool,
    },
    ReqEnd {
        uid: usize,
        prod: bool,
    },
    Update {
        uid: usize,
        port: u16,
    },
    Release {
        uid: usize,
        owner: bool,
    },
    Expire,
}

fn op() -> impl Strategy<Value = Op> {
    let uid = 0..4usize;
    prop_oneof![
        (uid.clone(), any::<bool>(), 1..4i32, any::<bool>()).prop_map(|(uid, prod, n, owner)| {
            Op::Req {
                uid,
                prod,
                n,
                owner,
            }
        }),
        uid.clone().prop_map(|uid| Op::HelloBegin { uid }),
        any::<bool>().prop_map(|disk_full| Op::HelloFinish { disk_full }),
        (uid.clone(), any::<bool>()).prop_map(|(uid, prod)| Op::ReqEnd { uid, prod }),
        (uid.clone(), 1..4u16).prop_map(|(uid, port)| Op::Update { uid, port }),
        (uid, any::<bool>()).prop_map(|(uid, owner)| Op::Release { uid, owner }),
        Just(Op::Expire),
    ]
}

impl Harness {
    fn apply(&mut self, op: Op) {
        let owner = |mine: bool| if mine { "alice" } else { "bob" };
        let role = |prod: bool| if prod { Role::Prod } else { Role::Cons };
        match op {
            Op::Req {
                uid,
                prod,
                n,
                owner: o,
            } => {
                let _ = self.req_as(owner(o), &key(uid, role(prod)), n, 0);
            }
            Op::HelloBegin { uid } => {
                let _ = self.hello_begin("alice", &self::uid(uid), None);
            }
            Op::HelloFinish { disk_full } => {
                self.disk_full = disk_full;
                self.hello_finish();
                self.disk_full = false;
            }
            Op::ReqEnd { uid, prod } => {
                self.req_end(&key(uid, role(prod)));
            }
            Op::Update { uid, port } => {
                let _ = self.update(&self::uid(uid), &[target(port)]);
            }
            Op::Release { uid, owner: o } => {
                let _ = self.release_as(owner(o), &self::uid(uid));
            }
            Op::Expire => {
                let later = Instant::now() + Duration::from_secs(3600);
                for k in self.machine.expired(later, Duration::from_secs(1)) {
                    self.store.remove(&k);
                    self.machine.remove(&k);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever the order of calls, no port leaks and table, store and data
    /// plane agree on every session's one phase.
    #[test]
    fn random_calls_never_leak_a_port_or_split_a_session(ops in proptest::collection::vec(op(), 1..60)) {
        let mut h = Harness::new(10, Policy::default());
        for op in ops {
            h.apply(op);
            h.check();
        }
        let uids: Vec<usize> = (0..4).collect();
        for u in uids {
            let _ = h.release_as("alice", &uid(u));
            let _ = h.release_as("bob", &uid(u));
        }
        h.check();
        prop_assert_eq!(h.machine.ports_in_use(), 0);
        prop_assert!(h.machine.sessions().is_empty());
    }
}
