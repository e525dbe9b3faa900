//! What an inbound gateway does with a peer's preamble, decided from the
//! preamble and the listener alone (no sockets, no reactor): refuse it
//! (with the answer the peer gets and the reason the log and status get),
//! answer a probe, or forward a TCP stream or a UDP flow.

use scistream_protocol::Protocol;
use scistream_protocol::preamble::{
    FLAG_PROBE, FLAG_TLS, FLAG_UDP, Preamble, Refusal, uid_matches,
};

/// What the listener expects of its connections' preambles.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expect<'a> {
    /// The channel is TLS.
    pub(crate) tls: bool,
    /// The session's uid.
    pub(crate) uid: &'a str,
    /// This listener's connection index in the session.
    pub(crate) index: usize,
    /// What the session carries.
    pub(crate) protocol: Protocol,
}

/// The decision.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Refused: the answer the peer gets (`None`: none, the connection is
    /// reset) and why.
    Refuse(Option<Refusal>, &'static str),
    /// An outbound s2cs checking this gateway: answer and close.
    Probe,
    /// Forward a TCP stream to the receiver.
    Stream,
    /// Forward a UDP flow.
    Flow,
}

/// Judges a preamble: `early_data` says the peer sent bytes after it
/// before it was accepted; `is_loop` whether its origin is one of this
/// gateway's own connections to a receiver (asked only of a preamble with
/// the right uid: it takes the shared loop guard's lock).
pub(crate) fn judge(
    p: &Preamble,
    expect: &Expect<'_>,
    early_data: bool,
    is_loop: impl FnOnce() -> bool,
) -> Verdict {
    if (p.flags & FLAG_TLS != 0) != expect.tls {
        return Verdict::Refuse(
            Some(Refusal::Malformed),
            "the preamble's TLS flag does not match the channel (is the peer misconfigured?)",
        );
    }
    if !uid_matches(&p.uid, expect.uid) || usize::from(p.conn_index) != expect.index {
        return Verdict::Refuse(
            Some(Refusal::WrongSession),
            "wrong session: the uid or connection index is not this listener's",
        );
    }
    if is_loop() {
        return Verdict::Refuse(
            Some(Refusal::Loop),
            "a tunnel loop: the connection comes from this gateway's own connection to the \
             session's receiver (the receiver is a gateway forwarding back here); release one \
             of the two sessions",
        );
    }
    if early_data && !expect.tls {
        // A plaintext peer that does not wait for the answer is not a SciStream gateway.
        return Verdict::Refuse(None, "the peer sent data before it was accepted");
    }
    if p.flags & FLAG_PROBE != 0 {
        return Verdict::Probe;
    }
    let udp = p.flags & FLAG_UDP != 0;
    match (
        udp,
        udp && expect.protocol.carries_udp() || !udp && expect.protocol.carries_tcp(),
    ) {
        (true, true) => Verdict::Flow,
        (false, true) => Verdict::Stream,
        (true, false) => Verdict::Refuse(
            Some(Refusal::Malformed),
            "a UDP flow for a session that carries TCP only (requested with --protocol tcp)",
        ),
        (false, false) => Verdict::Refuse(
            Some(Refusal::Malformed),
            "a TCP stream for a session that carries UDP only (requested with --protocol udp)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0d5e2f4a-1b3c-4d6e-8f70-9a1b2c3d4e5f";

    fn preamble(flags: u8, index: u16, uid: &str) -> Preamble {
        Preamble {
            flags,
            conn_index: index,
            uid: uid.into(),
            origin: None,
        }
    }

    fn expect(protocol: Protocol) -> Expect<'static> {
        Expect {
            tls: true,
            uid: UID,
            index: 2,
            protocol,
        }
    }

    #[test]
    fn a_good_preamble_is_forwarded_as_what_it_carries() {
        let e = expect(Protocol::Both);
        assert_eq!(
            judge(&preamble(FLAG_TLS, 2, UID), &e, false, || false),
            Verdict::Stream
        );
        assert_eq!(
            judge(&preamble(FLAG_TLS | FLAG_UDP, 2, UID), &e, false, || false),
            Verdict::Flow
        );
        assert_eq!(
            judge(&preamble(FLAG_TLS | FLAG_PROBE, 2, UID), &e, false, || {
                false
            }),
            Verdict::Probe
        );
        // Early data inside TLS is the relay's to deliver.
        assert_eq!(
            judge(&preamble(FLAG_TLS, 2, UID), &e, true, || false),
            Verdict::Stream
        );
    }

    #[test]
    fn each_fault_is_refused_with_its_own_answer() {
        let e = expect(Protocol::Tcp);
        let refusal = |v: Verdict| match v {
            Verdict::Refuse(r, _) => r,
            other => panic!("not refused: {other:?}"),
        };
        assert_eq!(
            refusal(judge(&preamble(0, 2, UID), &e, false, || false)),
            Some(Refusal::Malformed),
            "TLS flag against a TLS channel"
        );
        let other = "0d5e2f4a-1b3c-4d6e-8f70-000000000000";
        assert_eq!(
            refusal(judge(&preamble(FLAG_TLS, 2, other), &e, false, || false)),
            Some(Refusal::WrongSession)
        );
        assert_eq!(
            refusal(judge(&preamble(FLAG_TLS, 3, UID), &e, false, || false)),
            Some(Refusal::WrongSession)
        );
        assert_eq!(
            refusal(judge(&preamble(FLAG_TLS, 2, UID), &e, false, || true)),
            Some(Refusal::Loop)
        );
        assert_eq!(
            refusal(judge(
                &preamble(FLAG_TLS | FLAG_UDP, 2, UID),
                &e,
                false,
                || false
            )),
            Some(Refusal::Malformed),
            "UDP on a TCP-only session"
        );
        let udp_only = expect(Protocol::Udp);
        assert_eq!(
            refusal(judge(&preamble(FLAG_TLS, 2, UID), &udp_only, false, || {
                false
            })),
            Some(Refusal::Malformed),
            "TCP on a UDP-only session"
        );
        let plain = Expect { tls: false, ..e };
        assert_eq!(
            refusal(judge(&preamble(0, 2, UID), &plain, true, || false)),
            None,
            "a plaintext peer sending before the answer"
        );
    }

    #[test]
    fn a_wrong_uid_is_refused_before_anything_else_is_told() {
        // The loop and protocol checks come after the uid: a stranger
        // learns nothing about the session beyond "wrong session".
        let e = expect(Protocol::Udp);
        let v = judge(&preamble(FLAG_TLS, 2, "nope"), &e, false, || true);
        assert_eq!(
            v,
            Verdict::Refuse(
                Some(Refusal::WrongSession),
                "wrong session: the uid or connection index is not this listener's"
            )
        );
    }
}
