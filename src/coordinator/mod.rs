//! Coordination of client requests across the replicas of a key (DESIGN.md §6).
//!
//! Writes are coordinated by a primary of the key (others forward to one, which
//! keeps vector-clock actors bounded to replica nodes): it applies the write to its
//! own replica, minting the dot, and sends the resulting state to the other
//! replicas; unreachable primaries are replaced by fallbacks that keep a hint. Reads
//! can be coordinated by any node: ask every primary, answer with the merge of `R`
//! replies, then repair the replicas that differed. The decision of each request is
//! the [`quorum`] state machine; this module is its tokio shell.
//!
//! Local reads and buffered writes take microseconds and run inline on the runtime;
//! writes that fsync (`--sync always`) run on the blocking pool.

mod delivery;
pub mod quorum;
mod read;
mod write;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::cluster::ClusterState;
use crate::hints::Hints;
use crate::object::{Context, ContextKey, Kind, Object};
use crate::peer::{Batches, Peers, WriteReply, WriteRequest};
use crate::replica::{Replica, ReplicaError};
use crate::rpc::api::{ApiError, GetReply, RequestOptions};

pub use delivery::{deliver_hints, forgive_revived_peers};

/// Longest deadline a request may ask for. A request's tasks, the copies of the
/// states it sends and the guard that keeps its key from being reaped live until
/// its deadline when a replica takes a request and never answers (review C8: up to
/// 49 days were accepted).
pub const MAX_TIMEOUT_MS: u32 = 60_000;

/// Cluster-wide request defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Replicas per key.
    pub n: u8,
    /// Default read quorum.
    pub r: u8,
    /// Default write quorum.
    pub w: u8,
    /// Default request deadline.
    pub timeout: Duration,
    /// Whether fallbacks take writes for unreachable primaries.
    pub hinted_handoff: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            n: 3,
            r: 2,
            w: 2,
            timeout: Duration::from_secs(5),
            hinted_handoff: true,
        }
    }
}

/// Keys with states in flight (writes replicating, repairs), with their counts.
type BusyKeys = Arc<std::sync::Mutex<std::collections::HashMap<Vec<u8>, u32>>>;

/// Marks keys as having states in flight until dropped.
pub struct RepairGuard {
    busy: BusyKeys,
    keys: Vec<Vec<u8>>,
}

impl Drop for RepairGuard {
    fn drop(&mut self) {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        for k in &self.keys {
            if let Some(n) = busy.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    busy.remove(k);
                }
            }
        }
    }
}

/// Counters of coordination work.
#[derive(Debug, Default)]
pub struct CoordinatorStats {
    /// Writes forwarded to a primary.
    pub forwarded: AtomicU64,
    /// Replicas repaired after reads.
    pub read_repairs: AtomicU64,
    /// Requests that failed for want of a quorum.
    pub quorum_failures: AtomicU64,
    /// Members dialled again at once when gossip saw them come back after dials
    /// to them had failed.
    pub peer_redials: AtomicU64,
}

/// Answers client requests.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

/// Keys in turn, and the same keys as a set.
type TombstoneQueue = (
    std::collections::VecDeque<Vec<u8>>,
    std::collections::HashSet<Vec<u8>>,
);

/// Tombstones remembered for reaping at most (beyond, they stay until seen again).
const MAX_TOMBSTONES: usize = 100_000;

/// How long the clock of a reaped tombstone is remembered, to refuse late states it
/// covers. A state of the key may still be on its way when every replica agreed
/// to reap (a request stuck in a TCP buffer of a link that stalls one way while
/// SWIM still sees both ends, then delivered: review S1); applied after the reap
/// it would bring back what was deleted.
pub const REAPED_GRACE: Duration = Duration::from_secs(600);
/// Reaped clocks remembered at most (the oldest are forgotten first).
const MAX_REAPED: usize = 100_000;

/// Clocks of reaped tombstones by key, with when they were reaped, oldest first.
#[derive(Default)]
struct Reaped {
    by_key: std::collections::HashMap<
        Vec<u8>,
        (crdts::VClock<crate::object::Actor>, tokio::time::Instant),
    >,
    order: std::collections::VecDeque<(Vec<u8>, tokio::time::Instant)>,
}

struct Inner {
    busy: BusyKeys,
    /// Keys to consider for reaping, in turn (a queue, so keys that cannot be reaped
    /// yet never starve the others), with a set to keep them unique.
    tombstones: std::sync::Mutex<TombstoneQueue>,
    replica: Replica,
    fsync_writes: bool,
    cluster: Arc<ClusterState>,
    peers: Peers,
    /// Per-peer queues of replica writes and reads (one frame for those ready together).
    batches: Batches,
    hints: Arc<Hints>,
    settings: Settings,
    stats: CoordinatorStats,
    /// Signs the contexts handed to clients and verifies those they send.
    contexts: ContextKey,
    /// Tombstones reaped here lately.
    reaped: std::sync::Mutex<Reaped>,
    /// Late states refused because a reaped tombstone covered them.
    late_states: AtomicU64,
}

/// Whether a storage call may wait on the disk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Io {
    Read,
    Write,
}

fn wrong_kind(found: &Object, wanted: Kind) -> ApiError {
    ApiError::WrongKind {
        stored: found.kind(),
        requested: wanted,
    }
}

fn unavailable(reason: impl Into<String>) -> ApiError {
    ApiError::Unavailable {
        reason: reason.into(),
    }
}

/// The refusal of a node an operator removed from the cluster.
pub(crate) fn removed() -> ApiError {
    unavailable(
        "an operator removed this node from the cluster: it serves no requests (connect to another member)",
    )
}

/// The client view of a register object of `key`, its context signed with `contexts`.
pub fn get_reply(
    contexts: &ContextKey,
    key: &[u8],
    obj: Option<Object>,
) -> Result<GetReply, ApiError> {
    match obj {
        None => Ok(GetReply {
            found: false,
            values: Vec::new(),
            context: Context::empty(),
        }),
        Some(Object::Register(reg)) => Ok(GetReply {
            found: !reg.is_deleted(),
            values: reg.values().into_iter().map(<[u8]>::to_vec).collect(),
            context: contexts.sign(key, reg.context()),
        }),
        Some(other) => Err(wrong_kind(&other, Kind::Register)),
    }
}

/// Whether `obj` is a register state with values every version of which the reaped
/// tombstone's `clock` covered: a copy from before the delete, which would bring the
/// deleted values back.
///
/// A tombstone is never refused: a member the reap request did not reach still holds
/// it, and anti-entropy must be able to bring it back here so that the next round
/// reaps it everywhere (refusing it left that replica apart for good; seed 31 of the
/// four-node simulation found it). Sets and counters have no tombstones to reap.
fn late_after_reap(clock: &crdts::VClock<crate::object::Actor>, obj: &Object) -> bool {
    let Object::Register(reg) = obj else {
        return false;
    };
    !reg.is_deleted() && reg.context() <= clock
}

impl Coordinator {
    /// A coordinator over the local replica and the cluster; `contexts` is the
    /// cluster's context key.
    pub fn new(
        replica: Replica,
        cluster: Arc<ClusterState>,
        peers: Peers,
        hints: Arc<Hints>,
        settings: Settings,
        contexts: ContextKey,
    ) -> Self {
        let fsync_writes = replica.store().sync_policy() == ringkv_storage::SyncPolicy::Always;
        Coordinator {
            inner: Arc::new(Inner {
                busy: Arc::new(std::sync::Mutex::new(std::collections::HashMap::new())),
                tombstones: std::sync::Mutex::new(Default::default()),
                replica,
                fsync_writes,
                cluster,
                batches: Batches::new(peers.clone()),
                peers,
                hints,
                settings,
                stats: CoordinatorStats::default(),
                contexts,
                reaped: std::sync::Mutex::new(Reaped::default()),
                late_states: AtomicU64::new(0),
            }),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        io: Io,
        f: impl FnOnce(&Replica) -> Result<T, ReplicaError> + Send + 'static,
    ) -> Result<T, ApiError> {
        if io == Io::Read || !self.inner.fsync_writes {
            return f(&self.inner.replica).map_err(ApiError::from);
        }
        let r = self.inner.replica.clone();
        match tokio::task::spawn_blocking(move || f(&r)).await {
            Ok(r) => r.map_err(ApiError::from),
            Err(join) => Err(unavailable(format!("request task failed: {join}"))),
        }
    }

    /// Makes everything written so far durable, on the blocking pool, so an fsync
    /// never holds up a runtime worker and the requests queued on it (review C14).
    /// Inline for a store driven by its caller (the simulation, whose disk syncs
    /// cost nothing and whose threads must all be its own).
    ///
    /// # Errors
    /// [`ApiError::Storage`] if the sync fails.
    pub async fn sync_store(&self) -> Result<(), ApiError> {
        let store = self.inner.replica.store().clone();
        let storage = |e: ringkv_storage::StorageError| ApiError::Storage {
            reason: e.to_string(),
        };
        if store.driver() == ringkv_storage::Driver::Caller {
            return store.sync().map_err(storage);
        }
        match tokio::task::spawn_blocking(move || store.sync()).await {
            Ok(r) => r.map_err(storage),
            Err(join) => Err(unavailable(format!("sync task failed: {join}"))),
        }
    }

    /// The local replica.
    pub fn replica(&self) -> &Replica {
        &self.inner.replica
    }

    /// The key contexts are signed with.
    pub fn contexts(&self) -> &ContextKey {
        &self.inner.contexts
    }

    /// What the per-peer queues sent (batches of replica writes and reads).
    pub fn batch_stats(&self) -> &crate::peer::batch::BatchStats {
        self.inner.batches.stats()
    }

    /// Connections to peers.
    pub fn peers(&self) -> &Peers {
        &self.inner.peers
    }

    /// Marks `keys` as having states in flight (a write replicating, a read repair, an
    /// anti-entropy batch) until the guard drops: such a state may still be written
    /// somewhere, so these keys are not reaped meanwhile.
    pub fn repair_started(&self, keys: &[Vec<u8>]) -> RepairGuard {
        let mut busy = self.inner.busy.lock().unwrap_or_else(|p| p.into_inner());
        for k in keys {
            *busy.entry(k.clone()).or_insert(0) += 1;
        }
        RepairGuard {
            busy: self.inner.busy.clone(),
            keys: keys.to_vec(),
        }
    }

    /// How many of `keys` have states in flight here now.
    pub fn keys_in_flight(&self, keys: &[Vec<u8>]) -> u64 {
        let busy = self.inner.busy.lock().unwrap_or_else(|p| p.into_inner());
        keys.iter().filter(|k| busy.contains_key(*k)).count() as u64
    }

    /// Remembers a key whose object is (or may be) a tombstone, for reaping.
    pub fn note_tombstone(&self, key: &[u8]) {
        let mut t = self
            .inner
            .tombstones
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if t.1.len() < MAX_TOMBSTONES && t.1.insert(key.to_vec()) {
            t.0.push_back(key.to_vec());
        }
    }

    /// Takes up to `n` remembered tombstone keys.
    pub fn take_tombstones(&self, n: usize) -> Vec<Vec<u8>> {
        let mut t = self
            .inner
            .tombstones
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let take = n.min(t.0.len());
        let keys: Vec<Vec<u8>> = t.0.drain(..take).collect();
        for k in &keys {
            t.1.remove(k);
        }
        keys
    }

    /// Tombstones remembered for reaping.
    pub fn tombstones_pending(&self) -> usize {
        self.inner
            .tombstones
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .len()
    }

    /// The cluster view holder.
    pub fn cluster(&self) -> &Arc<ClusterState> {
        &self.inner.cluster
    }

    /// The hint store.
    pub fn hints(&self) -> &Arc<Hints> {
        &self.inner.hints
    }

    /// Request defaults.
    pub fn settings(&self) -> Settings {
        self.inner.settings
    }

    /// Counters.
    pub fn stats(&self) -> &CoordinatorStats {
        &self.inner.stats
    }

    fn quorum_failed(&self, e: quorum::QuorumNotReached) -> ApiError {
        self.inner
            .stats
            .quorum_failures
            .fetch_add(1, Ordering::Relaxed);
        ApiError::QuorumNotReached(e)
    }

    /// Checks options against `n` and resolves defaults: `(needed, of which primaries,
    /// deadline)`.
    fn need(
        &self,
        opts: &RequestOptions,
        write: bool,
    ) -> Result<(usize, usize, Duration), ApiError> {
        let n = self.inner.settings.n;
        let (q, pq, qname, pname) = if write {
            (opts.w, opts.pw, "w", "pw")
        } else {
            (opts.r, opts.pr, "r", "pr")
        };
        let q = q.unwrap_or(if write {
            self.inner.settings.w
        } else {
            self.inner.settings.r
        });
        let pq = pq.unwrap_or(0);
        if q == 0 {
            return Err(ApiError::InvalidOptions {
                reason: format!("{qname} must be at least 1"),
            });
        }
        for (name, v) in [(qname, q), (pname, pq)] {
            if v > n {
                return Err(ApiError::InvalidOptions {
                    reason: format!("{name}={v} is more than the {n} replica(s) of every key"),
                });
            }
        }
        if pq > q {
            return Err(ApiError::InvalidOptions {
                reason: format!("{pname}={pq} is more than {qname}={q}"),
            });
        }
        let timeout = match opts.timeout_ms {
            Some(0) => {
                return Err(ApiError::InvalidOptions {
                    reason: "timeout_ms must be at least 1".into(),
                });
            }
            Some(ms) if ms > MAX_TIMEOUT_MS => {
                return Err(ApiError::InvalidOptions {
                    reason: format!("timeout_ms={ms} is over the limit of {MAX_TIMEOUT_MS}"),
                });
            }
            Some(ms) => Duration::from_millis(u64::from(ms)),
            None => self.inner.settings.timeout,
        };
        Ok((usize::from(q), usize::from(pq), timeout))
    }

    /// Reads a register.
    ///
    /// # Errors
    /// [`ApiError`] naming the refusal or failure.
    pub async fn get(&self, key: Vec<u8>, opts: RequestOptions) -> Result<GetReply, ApiError> {
        let obj = self.read(key.clone(), opts).await?;
        get_reply(&self.inner.contexts, &key, obj)
    }

    /// Reads only this node's replica of a register (diagnostics).
    ///
    /// # Errors
    /// [`ApiError`] naming the refusal or failure.
    pub async fn get_local(&self, key: Vec<u8>) -> Result<GetReply, ApiError> {
        if self.inner.cluster.is_removed() {
            return Err(removed());
        }
        let k = key.clone();
        let obj = self.run(Io::Read, move |r| r.get(&k)).await?;
        get_reply(&self.inner.contexts, &key, obj)
    }

    /// Writes a register value (`None` = delete).
    ///
    /// A delete without a context deletes every value a read quorum sees now.
    ///
    /// # Errors
    /// [`ApiError`] naming the refusal or failure.
    pub async fn put(
        &self,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        context: Option<Context>,
        opts: RequestOptions,
    ) -> Result<Context, ApiError> {
        match self
            .write(
                WriteRequest::Put {
                    key,
                    value,
                    context,
                },
                opts,
                false,
            )
            .await?
        {
            WriteReply::Put(c) => Ok(c),
            other => Err(unavailable(format!("unexpected reply {other:?}"))),
        }
    }

    /// Adds to a counter.
    ///
    /// # Errors
    /// [`ApiError`] naming the refusal or failure.
    pub async fn counter_add(
        &self,
        key: Vec<u8>,
        delta: i64,
        opts: RequestOptions,
    ) -> Result<i128, ApiError> {
        match self
            .write(WriteRequest::CounterAdd { key, delta }, opts, false)
            .await?
        {
            WriteReply::Counter(v) => Ok(v),
            other => Err(unavailable(format!("unexpected reply {other:?}"))),
        }
    }

    /// Reads a counter.
    ///
    /// # Errors
    /// [`ApiError`] naming the refusal or failure.
    pub async fn counter_get(
        &self,
        key: Vec<u8>,
        opts: RequestOptions,
    ) -> Result<Option<i128>, ApiError> {
        match self.read(key, opts).await? {
            None => Ok(None),
            Some(Object::Counter(c)) => Ok(Some(c.value()?)),
            Some(other) => Err(wrong_kind(&other, Kind::Counter)),
        }
    }

    /// Adds or removes a set member; returns whether it was present (for removals).
    ///
    /// # Errors
    /// [`ApiError`] naming the refusal or failure.
    pub async fn set_update(
        &self,
        key: Vec<u8>,
        member: Vec<u8>,
        add: bool,
        opts: RequestOptions,
    ) -> Result<bool, ApiError> {
        match self
            .write(WriteRequest::SetUpdate { key, member, add }, opts, false)
            .await?
        {
            WriteReply::Set(p) => Ok(p),
            other => Err(unavailable(format!("unexpected reply {other:?}"))),
        }
    }

    /// Members of a set.
    ///
    /// # Errors
    /// [`ApiError`] naming the refusal or failure.
    pub async fn set_members(
        &self,
        key: Vec<u8>,
        opts: RequestOptions,
    ) -> Result<Option<Vec<Vec<u8>>>, ApiError> {
        match self.read(key, opts).await? {
            None => Ok(None),
            Some(Object::Set(s)) => Ok(Some(s.members())),
            Some(other) => Err(wrong_kind(&other, Kind::Set)),
        }
    }

    /// Merges a state another replica sent (replication, repair, hint delivery).
    ///
    /// # Errors
    /// [`ApiError`] for undecodable states, wrong kinds or storage failures.
    pub async fn replicate(&self, key: Vec<u8>, object: &[u8]) -> Result<(), ApiError> {
        let obj = Object::decode(object)?;
        self.replicate_object(key, obj).await
    }

    /// Merges a decoded state into the local replica; remembers tombstones.
    ///
    /// # Errors
    /// [`ApiError`] for wrong kinds or storage failures.
    pub async fn replicate_object(&self, key: Vec<u8>, obj: Object) -> Result<(), ApiError> {
        if self.covered_by_reaped(&key, &obj) {
            // Nothing in it that the reaped tombstone had not seen: a late copy of a
            // state from before the delete. Taking it would resurrect the key.
            self.inner.late_states.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(key = ?String::from_utf8_lossy(&key), "refused a state older than the reaped tombstone of its key");
            return Ok(());
        }
        let k = key.clone();
        let merged = self.run(Io::Write, move |r| r.merge(&k, &obj)).await?;
        if merged.is_tombstone() {
            self.note_tombstone(&key);
        }
        Ok(())
    }

    /// Remembers the clock of a tombstone reaped here (for [`REAPED_GRACE`]).
    pub fn remember_reaped(&self, key: &[u8], clock: crdts::VClock<crate::object::Actor>) {
        let now = tokio::time::Instant::now();
        let mut r = self.inner.reaped.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((k, at)) = r.order.front().cloned() {
            if now.duration_since(at) < REAPED_GRACE && r.order.len() < MAX_REAPED {
                break;
            }
            r.order.pop_front();
            if r.by_key.get(&k).is_some_and(|(_, t)| *t == at) {
                r.by_key.remove(&k);
            }
        }
        r.by_key.insert(key.to_vec(), (clock, now));
        r.order.push_back((key.to_vec(), now));
    }

    /// Whether `obj` is a late state of a key whose tombstone was reaped here within
    /// [`REAPED_GRACE`] (see [`late_after_reap`]).
    fn covered_by_reaped(&self, key: &[u8], obj: &Object) -> bool {
        let r = self.inner.reaped.lock().unwrap_or_else(|p| p.into_inner());
        let Some((clock, at)) = r.by_key.get(key) else {
            return false;
        };
        at.elapsed() < REAPED_GRACE && late_after_reap(clock, obj)
    }

    /// Late states refused since start (see [`REAPED_GRACE`]).
    pub fn late_states_refused(&self) -> u64 {
        self.inner.late_states.load(Ordering::Relaxed)
    }

    /// Keeps a state for an unreachable owner.
    ///
    /// # Errors
    /// [`ApiError`] for undecodable states or storage failures.
    pub async fn store_hint(
        &self,
        owner: String,
        key: Vec<u8>,
        object: Vec<u8>,
    ) -> Result<(), ApiError> {
        self.inner.replica.check_key(&key)?;
        Object::decode(&object)?;
        if owner.is_empty() || owner.len() > ringkv_gossip::membership::MAX_RECORD_FIELD_BYTES {
            return Err(ApiError::InvalidOptions {
                reason: "hint owner id must be 1-128 bytes".into(),
            });
        }
        let hints = self.inner.hints.clone();
        let put = move || hints.put(&owner, &key, &object);
        let r = if self.inner.fsync_writes {
            tokio::task::spawn_blocking(put)
                .await
                .map_err(|e| unavailable(format!("hint task failed: {e}")))?
        } else {
            put()
        };
        r.map_err(|e| match e {
            crate::hints::HintError::Full { .. } => unavailable(e.to_string()),
            crate::hints::HintError::Conflict { reason } => ApiError::Corrupt { reason },
            crate::hints::HintError::Storage(e) => ApiError::Storage {
                reason: e.to_string(),
            },
        })
    }

    /// The local replica's encoded object, as stored (checksummed by the store; the
    /// asking coordinator decodes it, so decoding and encoding it again here would
    /// only cost a replica read twice the work).
    ///
    /// # Errors
    /// [`ApiError`] for bad keys or storage failures.
    pub async fn read_local_bytes(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, ApiError> {
        self.run(Io::Read, move |r| r.get_raw(&key)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::Register;
    use crdts::VClock;

    fn written(values: &[(u64, &str)]) -> Register {
        let mut r = Register::new();
        for (actor, v) in values {
            r.write(*actor, &VClock::new(), Some(v.as_bytes().to_vec()))
                .expect("write");
        }
        r
    }

    #[test]
    fn a_late_copy_from_before_the_delete_is_refused() {
        let before = written(&[(1, "a"), (2, "b")]);
        let mut reaped = before.clone();
        reaped
            .write(1, &before.context().clone(), None)
            .expect("delete");
        assert!(late_after_reap(
            reaped.context(),
            &Object::Register(before.clone())
        ));
        // A write the delete never saw is new data, not a resurrection.
        let mut after = before;
        after
            .write(3, &VClock::new(), Some(b"c".to_vec()))
            .expect("write");
        assert!(!late_after_reap(reaped.context(), &Object::Register(after)));
    }

    #[test]
    fn a_tombstone_is_never_refused_so_a_missed_member_can_be_reaped_later() {
        let before = written(&[(1, "a")]);
        let mut tomb = before.clone();
        tomb.write(1, &before.context().clone(), None)
            .expect("delete");
        assert!(tomb.is_deleted());
        assert!(!late_after_reap(
            tomb.context(),
            &Object::Register(tomb.clone())
        ));
    }
}
