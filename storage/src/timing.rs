//! Latency of the operations that can stall a node (fsyncs), for its metrics and
//! its liveness check.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Upper bounds in seconds of the latency buckets every ringkv histogram uses,
/// 100 µs to 10 s: fixed, so histograms from many nodes add up.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A histogram over [`LATENCY_BUCKETS`], lock-free.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Per bucket (not cumulative); the last counts what exceeds every bound.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

/// A reading of a [`LatencyHistogram`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencySnapshot {
    /// Cumulative counts per bound of [`LATENCY_BUCKETS`] (Prometheus' `le`).
    pub cumulative: Vec<u64>,
    /// Observations.
    pub count: u64,
    /// Their sum in seconds.
    pub sum_seconds: f64,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> LatencySnapshot {
        // The count is the buckets' sum, read in the same pass: never below a
        // bucket, even while observations land (Prometheus needs le="+Inf" last and
        // largest).
        let mut running = 0;
        let mut cumulative: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| {
                running += b.load(Ordering::Relaxed);
                running
            })
            .collect();
        cumulative.pop();
        LatencySnapshot {
            cumulative,
            count: running,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// When the operation now in flight started, if one is: a stuck fsync shows here
/// while it is stuck, not only once it returns.
#[derive(Debug)]
pub(crate) struct InFlight {
    origin: Instant,
    /// Nanoseconds after `origin` plus one; zero when nothing is in flight.
    since: AtomicU64,
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight {
            origin: Instant::now(),
            since: AtomicU64::new(0),
        }
    }
}

impl InFlight {
    /// Marks the start of an operation; its end is the guard's drop.
    pub(crate) fn start(&self) -> InFlightGuard<'_> {
        let at = Instant::now();
        let nanos = u64::try_from(at.duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX);
        self.since.store(nanos.saturating_add(1), Ordering::Release);
        InFlightGuard { owner: self, at }
    }

    /// How long the operation in flight has run, if one is.
    pub(crate) fn running_for(&self) -> Option<Duration> {
        match self.since.load(Ordering::Acquire) {
            0 => None,
            n => Some(
                self.origin
                    .elapsed()
                    .saturating_sub(Duration::from_nanos(n - 1)),
            ),
        }
    }
}

/// Ends an [`InFlight`] operation when dropped; tells how long it took.
pub(crate) struct InFlightGuard<'a> {
    owner: &'a InFlight,
    at: Instant,
}

impl InFlightGuard<'_> {
    /// Time since the operation started.
    pub(crate) fn elapsed(&self) -> Duration {
        self.at.elapsed()
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.owner.since.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(20));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.cumulative[0], 1, "50 µs is under 100 µs");
        assert_eq!(s.cumulative[4], 1, "3 ms is over 2.5 ms");
        assert_eq!(s.cumulative[5], 2, "3 ms is under 5 ms");
        assert_eq!(
            *s.cumulative.last().expect("buckets"),
            2,
            "20 s is past 10 s"
        );
        assert!((s.sum_seconds - 20.00305).abs() < 1e-6);
    }

    #[test]
    fn an_operation_in_flight_shows_until_it_ends() {
        let f = InFlight::default();
        assert_eq!(f.running_for(), None);
        let guard = f.start();
        std::thread::sleep(Duration::from_millis(5));
        assert!(f.running_for().expect("in flight") >= Duration::from_millis(5));
        drop(guard);
        assert_eq!(f.running_for(), None);
    }
}
