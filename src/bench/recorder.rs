//! What a phase measured: an HDR histogram of latencies per operation kind, errors by
//! kind, and the interval since the last sample (for the per-second timeline and the
//! progress line).
//!
//! Workers record into one shared recorder behind a mutex: at the rates this bench
//! reaches on a couple of cores the lock is uncontended most of the time, and it
//! keeps memory at one histogram per kind instead of one per worker.

use std::collections::BTreeMap;
use std::sync::Mutex;

use hdrhistogram::Histogram;

use super::workload::OpKind;

/// Largest latency a histogram holds (one hour); longer ones are recorded as this.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds, 1 µs to an hour, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant bounds are valid")
}

/// How one operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It succeeded; a read reports whether it found the key and how many siblings.
    Ok {
        /// A read found nothing.
        not_found: bool,
        /// Siblings a read returned.
        siblings: usize,
    },
    /// It failed, for a reason of this kind (see [`super::error_kind`]).
    Failed(&'static str),
}

/// Totals of one operation kind.
#[derive(Clone, Debug)]
pub struct KindTotals {
    /// Latencies of the successful operations.
    pub hist: Histogram<u64>,
    /// Failed operations by kind of error.
    pub errors: BTreeMap<&'static str, u64>,
    /// Reads that found nothing.
    pub not_found: u64,
    /// Most siblings one read returned.
    pub max_siblings: usize,
}

impl KindTotals {
    fn new() -> KindTotals {
        KindTotals {
            hist: latency_histogram(),
            errors: BTreeMap::new(),
            not_found: 0,
            max_siblings: 0,
        }
    }

    /// Failed operations.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// What happened since the previous sample.
#[derive(Clone, Debug)]
pub struct IntervalSample {
    /// Successful operations.
    pub ops: u64,
    /// Failed operations.
    pub errors: u64,
    /// Latencies of the successful ones.
    pub hist: Histogram<u64>,
}

struct State {
    totals: Vec<KindTotals>,
    interval: IntervalSample,
}

/// The shared recorder of one phase.
pub struct Recorder {
    state: Mutex<State>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Recorder {
        Recorder {
            state: Mutex::new(State {
                totals: OpKind::ALL.iter().map(|_| KindTotals::new()).collect(),
                interval: IntervalSample {
                    ops: 0,
                    errors: 0,
                    hist: latency_histogram(),
                },
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A worker that panicked mid-record leaves counts that are still counts.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one operation; `measured` is false during the warm-up, whose
    /// operations appear in the timeline but not in the totals.
    pub fn record(&self, kind: OpKind, latency_us: u64, outcome: Outcome, measured: bool) {
        let latency_us = latency_us.clamp(1, MAX_LATENCY_US);
        let mut s = self.lock();
        match outcome {
            Outcome::Ok {
                not_found,
                siblings,
            } => {
                s.interval.ops += 1;
                s.interval.hist.saturating_record(latency_us);
                if measured {
                    let t = &mut s.totals[kind.index()];
                    t.hist.saturating_record(latency_us);
                    t.not_found += u64::from(not_found);
                    t.max_siblings = t.max_siblings.max(siblings);
                }
            }
            Outcome::Failed(error) => {
                s.interval.errors += 1;
                if measured {
                    *s.totals[kind.index()].errors.entry(error).or_insert(0) += 1;
                }
            }
        }
    }

    /// Takes what happened since the previous call.
    pub fn sample(&self) -> IntervalSample {
        let mut s = self.lock();
        let fresh = IntervalSample {
            ops: 0,
            errors: 0,
            hist: latency_histogram(),
        };
        std::mem::replace(&mut s.interval, fresh)
    }

    /// Measured successful operations so far, and their p99 in microseconds.
    pub fn progress(&self) -> (u64, u64) {
        let s = self.lock();
        let mut all = latency_histogram();
        for t in &s.totals {
            // Same bounds everywhere: adding cannot fail.
            let _ = all.add(&t.hist);
        }
        (all.len(), all.value_at_quantile(0.99))
    }

    /// The totals per kind, indexed by [`OpKind::index`].
    pub fn totals(&self) -> Vec<KindTotals> {
        self.lock().totals.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_totals_intervals_and_warmup() {
        let r = Recorder::new();
        let ok = Outcome::Ok {
            not_found: false,
            siblings: 1,
        };
        r.record(OpKind::Read, 100, ok, false);
        r.record(OpKind::Read, 200, ok, true);
        r.record(
            OpKind::Read,
            300,
            Outcome::Ok {
                not_found: true,
                siblings: 0,
            },
            true,
        );
        r.record(OpKind::Update, 0, Outcome::Failed("timeout"), true);
        r.record(OpKind::Update, 50, Outcome::Failed("timeout"), true);
        r.record(OpKind::Update, u64::MAX, ok, true);
        let s = r.sample();
        assert_eq!((s.ops, s.errors), (4, 2), "warm-up counts in the timeline");
        assert_eq!(r.sample().ops, 0, "sampling resets the interval");
        let t = r.totals();
        let read = &t[OpKind::Read.index()];
        assert_eq!(read.hist.len(), 2, "the warm-up op is not in the totals");
        assert_eq!(read.not_found, 1);
        assert_eq!(read.max_siblings, 1);
        let update = &t[OpKind::Update.index()];
        assert_eq!(update.errors.get("timeout"), Some(&2));
        assert_eq!(update.error_count(), 2);
        assert!(update.hist.max() >= MAX_LATENCY_US / 2, "clamped, not lost");
        let (ops, p99) = r.progress();
        assert_eq!(ops, 3);
        assert!(p99 > 0);
    }
}
