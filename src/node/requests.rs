//! What a node counts of the requests it serves: latency by operation and outcome,
//! and the requests in flight (which a drain waits for).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ringkv_storage::timing::LatencyHistogram;

use crate::rpc::api::{ApiError, ErrorClass};

/// A client operation, as metrics label it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Register read.
    Get,
    /// Register write.
    Put,
    /// Register delete.
    Delete,
    /// Counter increment.
    CounterAdd,
    /// Counter read.
    CounterGet,
    /// Set add.
    SetAdd,
    /// Set remove.
    SetRemove,
    /// Set read.
    SetMembers,
    /// Read of this node's own replica.
    GetLocal,
}

impl Op {
    /// Every operation, in label order.
    pub const ALL: [Op; 9] = [
        Op::Get,
        Op::Put,
        Op::Delete,
        Op::CounterAdd,
        Op::CounterGet,
        Op::SetAdd,
        Op::SetRemove,
        Op::SetMembers,
        Op::GetLocal,
    ];

    /// Its label value.
    pub fn label(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Delete => "delete",
            Op::CounterAdd => "counter_add",
            Op::CounterGet => "counter_get",
            Op::SetAdd => "set_add",
            Op::SetRemove => "set_remove",
            Op::SetMembers => "set_members",
            Op::GetLocal => "get_local",
        }
    }
}

/// How a request ended, as metrics label it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered.
    Ok,
    /// Refused for what the client sent (too large, wrong kind, bad context).
    Invalid,
    /// Not done, for certain: too few replicas, or this node stopping.
    Unavailable,
    /// A write that may or may not have been applied (some replica may hold it).
    Indeterminate,
    /// A storage or internal failure.
    Error,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 5] = [
        Outcome::Ok,
        Outcome::Invalid,
        Outcome::Unavailable,
        Outcome::Indeterminate,
        Outcome::Error,
    ];

    /// Its label value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Invalid => "invalid",
            Outcome::Unavailable => "unavailable",
            Outcome::Indeterminate => "indeterminate",
            Outcome::Error => "error",
        }
    }

    /// The outcome of a request that ended with `r`.
    pub fn of<T>(r: &Result<T, ApiError>) -> Outcome {
        match r {
            Ok(_) => Outcome::Ok,
            Err(ApiError::QuorumNotReached(q)) if q.indeterminate => Outcome::Indeterminate,
            Err(e) => match e.class() {
                ErrorClass::Invalid | ErrorClass::Denied => Outcome::Invalid,
                ErrorClass::Unavailable => Outcome::Unavailable,
                ErrorClass::Failed => Outcome::Error,
            },
        }
    }
}

/// A replica operation served for a peer's coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaOp {
    /// A replica read.
    Read,
    /// A replica write (or hint).
    Write,
}

/// Request latencies by operation and outcome, and replica latencies.
#[derive(Debug, Default)]
pub struct RequestStats {
    by_op: [[LatencyHistogram; Outcome::ALL.len()]; Op::ALL.len()],
    replica: [LatencyHistogram; 2],
}

impl RequestStats {
    /// Records a client request this node coordinated.
    pub fn observe(&self, op: Op, outcome: Outcome, took: Duration) {
        self.by_op[op as usize][outcome as usize].observe(took);
    }

    /// Records a replica operation served to a peer.
    pub fn observe_replica(&self, op: ReplicaOp, took: Duration) {
        self.replica[op as usize].observe(took);
    }

    /// The histogram of `op` ending in `outcome`.
    pub fn histogram(&self, op: Op, outcome: Outcome) -> &LatencyHistogram {
        &self.by_op[op as usize][outcome as usize]
    }

    /// The histogram of replica operation `op`.
    pub fn replica_histogram(&self, op: ReplicaOp) -> &LatencyHistogram {
        &self.replica[op as usize]
    }
}

/// Where a node is between start and exit.
#[derive(Debug, Default)]
pub struct Lifecycle {
    /// A stop was asked for: not ready, peers told, still serving.
    draining: AtomicBool,
    /// Past the shutdown delay: new requests are refused, the ones in flight finish.
    closing: AtomicBool,
    in_flight: AtomicU64,
    /// Requests refused since closing began.
    refused: AtomicU64,
}

impl Lifecycle {
    /// Whether a stop was asked for.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Marks the node draining; returns whether it already was.
    pub fn start_draining(&self) -> bool {
        self.draining.swap(true, Ordering::SeqCst)
    }

    /// Whether new requests are refused.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Refuses new requests from now on.
    pub fn close(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Requests refused (answered `ShuttingDown`) since closing began.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    /// Client and forwarded requests running now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Counts a request as running until the guard drops; `None` once closing.
    pub fn enter(&self) -> Option<InFlight<'_>> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        // Checked after counting, both sequentially consistent (as is `close`):
        // either this sees `closing`, or `close_requests` sees this count, never
        // neither (a store then a load of two different atomics needs SeqCst).
        if self.is_closing() {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.refused.fetch_add(1, Ordering::SeqCst);
            return None;
        }
        Some(InFlight(self))
    }
}

/// A request in flight; see [`Lifecycle::enter`].
pub struct InFlight<'a>(&'a Lifecycle);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_refuses_new_requests_and_counts_the_running_ones() {
        let l = Lifecycle::default();
        let a = l.enter().expect("open");
        assert_eq!(l.in_flight(), 1);
        assert!(!l.start_draining());
        assert!(l.is_draining() && !l.is_closing());
        let b = l.enter().expect("draining still serves");
        l.close();
        assert!(l.enter().is_none(), "closing refuses");
        assert_eq!(l.in_flight(), 2);
        drop((a, b));
        assert_eq!(l.in_flight(), 0);
    }

    #[test]
    fn outcomes_tell_uncertain_writes_from_certain_failures() {
        use crate::coordinator::quorum::QuorumNotReached;
        let q = |indeterminate| {
            Err::<(), _>(ApiError::QuorumNotReached(QuorumNotReached {
                required: 2,
                succeeded: 1,
                primaries_required: 0,
                primaries_succeeded: 1,
                attempted: 3,
                errors: Vec::new(),
                indeterminate,
            }))
        };
        assert_eq!(Outcome::of(&q(true)), Outcome::Indeterminate);
        assert_eq!(Outcome::of(&q(false)), Outcome::Unavailable);
        assert_eq!(Outcome::of(&Ok::<(), ApiError>(())), Outcome::Ok);
        assert_eq!(
            Outcome::of(&Err::<(), _>(ApiError::EmptyKey)),
            Outcome::Invalid
        );
    }
}
