//! Time in a worker: the tokens that name what an event is for, and the
//! deadlines a worker keeps (a connection's setup, its idleness).

use std::cmp::Reverse;
use std::time::Instant;

use tracing::info;

use super::Worker;
use crate::conn::ConnCtx;
use crate::reactor::Token;

/// Token layout: kind (4 bits) | generation (28 bits) | slot (32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Waker = 0,
    Listener = 1,
    Client = 2,
    Target = 3,
}

pub(crate) fn token(kind: Kind, slot: usize, generation: u32) -> Token {
    ((kind as u64) << 60)
        | (u64::from(generation & 0x0fff_ffff) << 32)
        | (slot as u64 & 0xffff_ffff)
}

pub(crate) fn untoken(t: Token) -> (Option<Kind>, usize, u32) {
    let kind = match t >> 60 {
        0 => Some(Kind::Waker),
        1 => Some(Kind::Listener),
        2 => Some(Kind::Client),
        3 => Some(Kind::Target),
        _ => None,
    };
    (
        kind,
        (t & 0xffff_ffff) as usize,
        ((t >> 32) & 0x0fff_ffff) as u32,
    )
}

impl Worker {
    /// Closes connections that moved no byte for `--idle-timeout` (only
    /// when the admin set one: paused detectors are not dead ones).
    pub(super) fn expire_idle(&mut self) {
        let Some(idle) = self.options.idle_timeout else {
            return;
        };
        let now = Instant::now();
        while let Some(Reverse((at, t))) = self.idle_timers.peek().copied() {
            if at > now {
                return;
            }
            self.idle_timers.pop();
            let (_, slot, generation) = untoken(t);
            let Some(c) = self.conns.get(slot).filter(|c| c.generation == generation) else {
                continue;
            };
            let due = c.last_active + idle;
            if due > now {
                self.idle_timers.push(Reverse((due, t)));
                continue;
            }
            info!(worker = self.id, session = %c.key, peer = %c.peer, idle_s = idle.as_secs_f32(), "closing a connection idle for --idle-timeout");
            self.close_conn(slot, false);
        }
    }

    /// Closes connections whose setup outlived its deadline.
    pub(super) fn expire(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, t))) = self.timers.peek().copied() {
            if at > now {
                return;
            }
            self.timers.pop();
            let (_, slot, generation) = untoken(t);
            let expired = self.conns.get(slot).is_some_and(|c| {
                c.generation == generation && c.deadline.is_some_and(|d| d <= now)
            });
            if expired && !self.fail_over_after_timeout(slot) {
                let secs = self.options.handshake_timeout.as_secs_f32();
                self.reject(
                    slot,
                    &format!("setup did not finish within {secs} s (handshake timeout)"),
                );
            }
        }
    }

    /// An outbound connection whose setup timed out tries the session's
    /// next target, with a new deadline; `false` when none is left.
    fn fail_over_after_timeout(&mut self, slot: usize) -> bool {
        let Some(c) = self.conns.get_mut(slot) else {
            return false;
        };
        let mut ctx = ConnCtx {
            worker: self.id,
            reactor: &mut *self.reactor,
            options: &self.options,
            again: &mut self.again,
        };
        let secs = self.options.handshake_timeout.as_secs_f32();
        let why = format!("setup did not finish within {secs} s");
        if c.fail_over(slot, &mut ctx, &why).is_none() {
            return false;
        }
        let at = Instant::now() + self.options.handshake_timeout;
        c.deadline = Some(at);
        self.timers
            .push(Reverse((at, token(Kind::Client, slot, c.generation))));
        self.drive(slot);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for (k, slot, g) in [
            (Kind::Listener, 0, 1),
            (Kind::Client, 123_456, 0x0fff_ffff),
            (Kind::Target, 7, 42),
        ] {
            let (k2, s2, g2) = untoken(token(k, slot, g));
            assert_eq!((k2, s2, g2), (Some(k), slot, g));
        }
    }
}
