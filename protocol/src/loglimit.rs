//! Rate limits for log lines that anyone on the network can cause.
//!
//! A refused data connection is worth one line, but a scanner or a
//! misconfigured peer can cause thousands a second. A [`LogLimit`] lets
//! the first few lines of each window through and counts the rest, which
//! are then summed up in one line ("N more … in the last 10 s") when the
//! next window starts. The counters in `s2cs status` and the metrics count
//! every event regardless.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A window of `burst` lines per `window`, shared by every worker.
#[derive(Debug)]
pub struct LogLimit {
    burst: u32,
    window: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    started: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

/// What to do with one event.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Log this event's line.
    pub log: bool,
    /// Before it, say that this many lines of the last window were not logged.
    pub suppressed_before: u64,
}

impl LogLimit {
    /// `burst` lines per `window`.
    pub const fn new(burst: u32, window: Duration) -> Self {
        LogLimit {
            burst,
            window,
            state: Mutex::new(State {
                started: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// The window's length (for the summary line).
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Counts one event at `now`.
    pub fn check(&self, now: Instant) -> Verdict {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut suppressed_before = 0;
        if s.started
            .is_none_or(|t| now.duration_since(t) >= self.window)
        {
            suppressed_before = s.suppressed;
            *s = State {
                started: Some(now),
                logged: 0,
                suppressed: 0,
            };
        }
        if s.logged < self.burst {
            s.logged += 1;
            Verdict {
                log: true,
                suppressed_before,
            }
        } else {
            s.suppressed += 1;
            Verdict {
                log: false,
                suppressed_before,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_a_summary() {
        let l = LogLimit::new(3, Duration::from_secs(10));
        let t = Instant::now();
        let logged: Vec<bool> = (0..1000).map(|_| l.check(t).log).collect();
        assert_eq!(logged.iter().filter(|&&x| x).count(), 3);
        let next = l.check(t + Duration::from_secs(10));
        assert_eq!(
            next,
            Verdict {
                log: true,
                suppressed_before: 997
            }
        );
        let quiet = l.check(t + Duration::from_secs(30));
        assert_eq!(quiet.suppressed_before, 0);
    }
}
