//! What the workload did and saw: every operation with its outcome, in the order it
//! happened, and what the final reads found. The checker judges this record alone.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ringkv::ClientError;
use ringkv::rpc::api::{ApiError, RingInfo};

/// The causal context clients hand back with writes.
pub type Clock = crdts::VClock<u64>;

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Acknowledged.
    Ok,
    /// Certainly applied nowhere.
    Fail,
    /// Perhaps applied (timed out, connection broke, quorum missed after applying).
    Maybe,
}

impl Status {
    /// The status of a client call's result.
    pub fn of<T>(r: &Result<T, ClientError>) -> Status {
        match r {
            Ok(_) => Status::Ok,
            Err(e) if determinate(e) => Status::Fail,
            Err(_) => Status::Maybe,
        }
    }

    /// For the trace.
    pub fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Fail => "fail",
            Status::Maybe => "maybe",
        }
    }
}

/// Whether a failed write certainly did not apply anywhere.
fn determinate(e: &ClientError) -> bool {
    match e {
        // Refused before the connection served anything.
        ClientError::Connect { .. } | ClientError::NotAuthorized { .. } => true,
        ClientError::Api(ApiError::QuorumNotReached(q)) => !q.indeterminate,
        // Refused by the replica before storing anything.
        ClientError::Api(ApiError::TooManySiblings { .. }) => true,
        // `Api(Unavailable)` can come after the coordinator applied the write (its
        // coordination stopped, or a forwarded primary's answer): unknown.
        ClientError::Unavailable { .. } | ClientError::Api(_) => false,
    }
}

/// One register write: a put (`value`) or a delete (`None`), blind or with the
/// context of an earlier read.
#[derive(Clone, Debug)]
pub struct RegisterWrite {
    /// Key.
    pub key: String,
    /// Value written; `None` for a delete.
    pub value: Option<String>,
    /// Context the write carried (`None` = blind).
    pub context: Option<Clock>,
    /// Context the node returned (acknowledged writes only): every state holding
    /// this write's dot has seen all of it.
    pub returned: Option<Clock>,
    /// Outcome.
    pub status: Status,
    /// How the context was forged, for writes whose context no node may accept.
    pub forged: Option<&'static str>,
    /// Acknowledged by one replica (W=1): a power loss of that replica within the
    /// sync interval may lose it, as the sync policy allows.
    pub weak: bool,
    /// Simulated time it returned.
    pub at: Duration,
}

/// One set update.
#[derive(Clone, Debug)]
pub struct SetUpdate {
    /// Key.
    pub key: String,
    /// Member added or removed.
    pub member: String,
    /// Add (`true`) or remove.
    pub add: bool,
    /// Position in the history when it was sent.
    pub invoked: u64,
    /// Position when it returned.
    pub completed: u64,
    /// Outcome.
    pub status: Status,
    /// Simulated time it returned.
    pub at: Duration,
}

/// The record of one run.
#[derive(Default)]
pub struct History {
    /// Logical clock of the history: each invocation and completion takes the next
    /// number (all simulated hosts run on one thread, so this is real order).
    pub seq: u64,
    /// Register writes in the order they returned.
    pub register_writes: Vec<RegisterWrite>,
    /// Set updates in the order they returned.
    pub set_updates: Vec<SetUpdate>,
    /// Counter key -> (acknowledged sum, attempted sum) of deltas.
    pub counters: BTreeMap<String, (i64, i64)>,
    /// Acknowledged counter increments: key, delta, simulated time.
    pub counter_acks: Vec<(String, i64, Duration)>,
    /// Simulated times of lost disks (copied from the roster at the end).
    pub disk_losses: Vec<Duration>,
    /// Windows in which a node could lose writes it acknowledged (see
    /// [`super::roster::Roster::exposed`]; copied at the end).
    pub exposed: Vec<(Duration, Duration)>,
    /// Write-once register keys the workload made (read at the end with the others).
    pub once_keys: BTreeSet<String>,
    /// (key, value) pairs register reads returned.
    pub read_values: Vec<(String, String)>,
    /// (key, member) pairs set reads returned.
    pub read_members: Vec<(String, String)>,
    /// Digest of every operation and its outcome.
    pub trace: blake3::Hasher,
    /// Operations acknowledged.
    pub acked: u64,
    /// Operations attempted.
    pub attempted: u64,
    /// Node id -> register key -> the values that node holds at the end.
    pub final_registers: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    /// Node id -> register key -> the causal context that node's copy returns (a
    /// tombstone's is not empty), for diagnostics.
    pub final_clocks: BTreeMap<String, BTreeMap<String, Option<Clock>>>,
    /// Set key -> members at the end (read from all replicas).
    pub final_sets: BTreeMap<String, BTreeSet<String>>,
    /// Counter key -> value at the end (read from all replicas).
    pub final_counters: BTreeMap<String, Option<i128>>,
    /// Node id -> Merkle root of every partition (members at the end).
    pub roots: BTreeMap<String, Vec<[u8; 32]>>,
    /// Membership changes carried out (joins, leaves, removes, lost disks).
    pub membership_changes: u64,
    /// The ring at the end.
    pub ring: Option<RingInfo>,
    /// Values the nodes found damaged and dropped (their status at the end).
    pub damaged_values_dropped: u64,
    /// Problems the final reads ran into.
    pub check_errors: Vec<String>,
    /// Print every trace line to stderr.
    pub print: bool,
    /// Client tasks that have finished their last operation.
    pub clients_done: usize,
}

impl History {
    /// Whether a write acknowledged at `at` may be gone for want of a second
    /// failure: a node could lose acknowledged writes then (power loss within the
    /// sync interval, failing fsyncs), and a disk was lost later. W=2 of N=3
    /// promises survival of one such failure, not of both.
    pub fn doubly_exposed(&self, at: Duration) -> bool {
        self.exposed
            .iter()
            .any(|(from, to)| *from <= at && at <= *to)
            && self.disk_losses.iter().any(|lost| *lost >= at)
    }

    /// The next position in the history.
    pub fn tick(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Adds a line to the trace (also printed when `RINGKV_SIM_HISTORY` is set).
    pub fn trace(&mut self, line: &str) {
        if self.print {
            eprintln!("history: {line}");
        }
        self.trace.update(line.as_bytes());
        self.trace.update(b"\n");
    }

    /// Counts an attempted write and whether it was acknowledged.
    pub fn count(&mut self, status: Status) {
        self.attempted += 1;
        if status == Status::Ok {
            self.acked += 1;
        }
    }
}
