//! Latency histograms, throughput meters and their summaries.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use scistream_protocol::units::format_rate;
use serde::Serialize;

/// A latency histogram in microseconds (1 µs to 1 h, 3 significant digits).
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}

/// Percentiles of a latency histogram, microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
}

impl Latency {
    /// Summarises `h`.
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }

    /// `p50 1.2 ms  p99 …` for people.
    pub fn human(&self) -> String {
        let f = |us: u64| {
            if us >= 10_000 {
                format!("{:.1} ms", us as f64 / 1000.0)
            } else {
                format!("{us} µs")
            }
        };
        format!(
            "p50 {}  p99 {}  p99.9 {}  max {}",
            f(self.p50_us),
            f(self.p99_us),
            f(self.p999_us),
            f(self.max_us)
        )
    }
}

/// Gbit/s of `bytes` over `secs`.
pub fn gbps(bytes: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        0.0
    } else {
        bytes as f64 * 8.0 / secs / 1e9
    }
}

/// Samples a byte counter once a second, printing a line per second when
/// asked; stop it to get the per-second Gbit/s.
#[derive(Debug)]
pub struct Meter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<f64>>>,
}

impl Meter {
    /// Starts sampling `counter`.
    pub fn start(label: &'static str, counter: Arc<AtomicU64>, print: bool) -> Meter {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            let start = Instant::now();
            let mut last = counter.load(Ordering::Relaxed);
            let mut tick = 1u64;
            while !s.load(Ordering::Relaxed) {
                let due = start + Duration::from_secs(tick);
                // Wake often enough to stop promptly, sample on the second.
                while Instant::now() < due && !s.load(Ordering::Relaxed) {
                    std::thread::sleep((due - Instant::now()).min(Duration::from_millis(50)));
                }
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let now = counter.load(Ordering::Relaxed);
                let rate = gbps(now - last, 1.0);
                samples.push(rate);
                if print {
                    eprintln!("{label} {tick:>4} s  {}", format_rate(rate * 1e9));
                }
                last = now;
                tick += 1;
            }
            samples
        });
        Meter {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns the per-second samples.
    pub fn finish(mut self) -> Vec<f64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
