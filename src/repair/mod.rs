//! Repair (DESIGN.md §7): Merkle anti-entropy between the replicas of a partition,
//! ownership handoff when the ring changes, and acknowledged tombstone reaping.
//!
//! Every round (each `--anti-entropy-interval-ms`, or at once on `ringkv repair`):
//! - for each partition this node is a primary of, one batched root comparison with
//!   another primary (rotating); differing partitions run an [`exchange`] that
//!   descends only into differing branches, then the differing objects are merged
//!   both ways;
//! - for each partition this node holds data of but no longer owns (the ring
//!   changed, or it is leaving), the data is pushed into every current primary and,
//!   once all of them took it, dropped here, key by key, only where it did not change
//!   since (handoff; resumable, since it is driven by what is stored);
//! - tombstones are reaped once every ring member answers, holds no hints, every
//!   primary holds the same tombstone and no other node holds anything else.
//!
//! Work is bounded: exchanges run `concurrency` at a time, object bytes move at most
//! `bytes_per_sec`, every request is batched and capped.

pub mod exchange;
mod history;
pub mod local;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use ringkv_gossip::Liveness;
use ringkv_storage::{EMPTY, Hash, object_digest};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::cluster::{ClusterView, walk_of};
use crate::coordinator::Coordinator;
use crate::object::Object;
use crate::peer::pool::PeerError;
pub use crate::rpc::api::RoundReport;
use exchange::{Exchange, Need};

/// Keys moved per fetch or merge request at most.
const KEYS_PER_BATCH: usize = 256;
/// Object bytes per merge request at most.
const PUSH_BYTES: usize = 4 << 20;
/// Deadline of one repair request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Segments listed per request at most.
const SEGMENTS_PER_REQUEST: usize = 32;
/// Tombstones considered for reaping per round at most.
const REAP_PER_ROUND: usize = 256;

/// How repair runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepairSettings {
    /// Time between rounds.
    pub interval: Duration,
    /// Exchanges running at once.
    pub concurrency: usize,
    /// Object bytes moved per second at most (both directions together).
    pub bytes_per_sec: u64,
    /// Reap every tombstone on a timer, on each node alone, asking nobody and
    /// remembering nothing: deleted keys come back. Only for the simulation, to
    /// show its checker sees resurrections (`ringkv-sim --unsafe-reap`); `serve`
    /// has no way to set it.
    pub unsafe_reap: bool,
}

impl Default for RepairSettings {
    fn default() -> Self {
        RepairSettings {
            interval: Duration::from_secs(10),
            concurrency: 2,
            bytes_per_sec: 16 << 20,
            unsafe_reap: false,
        }
    }
}

/// Repair counters since start, as `status` shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairStatus {
    /// Exchanges run (partitions whose roots differed).
    pub exchanges: u64,
    /// Keys whose state was moved to or from a peer.
    pub keys_repaired: u64,
    /// State bytes sent (objects, hashes, digests).
    pub bytes_sent: u64,
    /// State bytes received (objects, hashes, digests).
    pub bytes_received: u64,
    /// Milliseconds since the last completed round (`None` before the first).
    pub last_exchange_ms_ago: Option<u64>,
    /// Root comparison requests sent (one per peer per round).
    pub root_requests: u64,
    /// Partition roots compared.
    pub roots_compared: u64,
    /// Partitions this node holds but no longer owns (handoffs in flight).
    pub handoffs_in_flight: u64,
    /// Partitions handed off and dropped here.
    pub handoffs_done: u64,
    /// Tombstones reaped (on this node).
    pub tombstones_reaped: u64,
    /// Tombstones waiting to be reaped.
    pub tombstones_pending: u64,
    /// Members reaping waits for: not removed, and not seen alive (a node that is
    /// down, or that left and was shut down before it finished handing off, blocks
    /// reaping everywhere until it is back or an operator removes it).
    pub reap_waiting_for: Vec<String>,
    /// States refused because a tombstone reaped here covered them (late copies
    /// from before the delete).
    pub late_states_refused: u64,
    /// Milliseconds since the partition of this node's verified longest ago was
    /// last found equal on a peer (since start for one never verified).
    pub oldest_unverified_ms: u64,
    /// The ring epoch each peer answered the last root comparison with.
    pub peer_epochs: BTreeMap<String, String>,
    /// Earlier rings forgotten once every partition they moved was handed off.
    pub rings_forgotten: u64,
}

#[derive(Default)]
struct Counters {
    exchanges: AtomicU64,
    keys_repaired: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    root_requests: AtomicU64,
    roots_compared: AtomicU64,
    handoffs_in_flight: AtomicU64,
    handoffs_done: AtomicU64,
    tombstones_reaped: AtomicU64,
    rings_forgotten: AtomicU64,
}

/// A request to run a round now.
pub type Trigger = (Option<u32>, oneshot::Sender<RoundReport>);

/// The repair service of one node.
pub struct Repair {
    coordinator: Coordinator,
    settings: RepairSettings,
    counters: Counters,
    last_round: Mutex<Option<Instant>>,
    /// When the current ring epoch was first seen (handoffs wait for it to settle).
    epoch_since: Mutex<(String, Instant)>,
    throttle: tokio::sync::Mutex<Instant>,
    rounds: AtomicU64,
    trigger: mpsc::Sender<Trigger>,
    /// The ring epoch each peer answered the last root comparison with: whether the
    /// cluster agrees on one ring, as far as this node has heard.
    peer_epochs: Mutex<BTreeMap<String, String>>,
    /// When each partition was last found equal on this node and a peer (roots
    /// equal, or an exchange done); `None` until then. The oldest is how stale
    /// anti-entropy's guarantee is.
    verified: Mutex<Vec<Option<Instant>>>,
    started: Instant,
}

/// Whether to store what the peer has (both ways) or only give ours (handoff).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Both,
    Give,
}

fn peer_err(e: PeerError) -> String {
    e.to_string()
}

impl Repair {
    /// Starts the repair loop; returns its handle.
    pub fn start(
        coordinator: Coordinator,
        settings: RepairSettings,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Arc<Repair> {
        let (tx, rx) = mpsc::channel(16);
        let r = Arc::new(Repair {
            coordinator,
            settings,
            counters: Counters::default(),
            last_round: Mutex::new(None),
            epoch_since: Mutex::new((String::new(), Instant::now())),
            throttle: tokio::sync::Mutex::new(Instant::now()),
            rounds: AtomicU64::new(0),
            trigger: tx,
            peer_epochs: Mutex::new(BTreeMap::new()),
            verified: Mutex::new(Vec::new()),
            started: Instant::now(),
        });
        tokio::spawn(r.clone().run(rx, shutdown));
        r
    }

    /// Runs a round now (all partitions, or one) and reports what it did.
    ///
    /// # Errors
    /// If the repair loop has stopped.
    pub async fn run_now(&self, partition: Option<u32>) -> Result<RoundReport, String> {
        let (tx, rx) = oneshot::channel();
        self.trigger
            .send((partition, tx))
            .await
            .map_err(|_| "repair has stopped".to_string())?;
        rx.await
            .map_err(|_| "repair round was abandoned".to_string())
    }

    /// Counts tombstones a peer asked this node to reap.
    pub fn count_reaped(&self, n: u64) {
        self.counters
            .tombstones_reaped
            .fetch_add(n, Ordering::Relaxed);
    }

    /// Counters for `status`.
    pub fn status(&self) -> RepairStatus {
        let c = &self.counters;
        RepairStatus {
            exchanges: c.exchanges.load(Ordering::Relaxed),
            keys_repaired: c.keys_repaired.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            last_exchange_ms_ago: self
                .last_round
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .map(|t| t.elapsed().as_millis() as u64),
            root_requests: c.root_requests.load(Ordering::Relaxed),
            roots_compared: c.roots_compared.load(Ordering::Relaxed),
            handoffs_in_flight: c.handoffs_in_flight.load(Ordering::Relaxed),
            handoffs_done: c.handoffs_done.load(Ordering::Relaxed),
            rings_forgotten: c.rings_forgotten.load(Ordering::Relaxed),
            tombstones_reaped: c.tombstones_reaped.load(Ordering::Relaxed),
            tombstones_pending: self.coordinator.tombstones_pending() as u64,
            late_states_refused: self.coordinator.late_states_refused(),
            oldest_unverified_ms: self.oldest_unverified().as_millis() as u64,
            peer_epochs: self
                .peer_epochs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            reap_waiting_for: {
                let view = self.coordinator.cluster().view();
                view.members
                    .iter()
                    .filter(|r| {
                        r.status != ringkv_gossip::Status::Removed
                            && view.liveness_of(&r.node_id) != Liveness::Alive
                    })
                    .map(|r| r.node_id.clone())
                    .collect()
            },
        }
    }

    /// How long ago the partition of this node's that was verified against a peer
    /// longest ago was last verified (since start, for one never verified).
    fn oldest_unverified(&self) -> Duration {
        let view = self.coordinator.cluster().view();
        let Some(ring) = &view.ring else {
            return Duration::ZERO;
        };
        let verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        (0..ring.ring_size())
            .filter(|&p| {
                walk_of(ring, p, view.n)
                    .0
                    .iter()
                    .any(|id| *id == view.self_id)
            })
            .map(|p| {
                let at = verified.get(p as usize).copied().flatten();
                now.duration_since(at.unwrap_or(self.started))
            })
            .max()
            .unwrap_or(Duration::ZERO)
    }

    fn mark_verified(&self, p: u32) {
        let mut v = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        let i = p as usize;
        if v.len() <= i {
            v.resize(i + 1, None);
        }
        v[i] = Some(Instant::now());
    }

    async fn run(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<Trigger>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let trigger = tokio::select! {
                biased;
                () = &mut shutdown => return,
                t = rx.recv() => match t {
                    Some(t) => Some(t),
                    None => return,
                },
                () = tokio::time::sleep(self.settings.interval) => None,
            };
            let (only, reply) = match trigger {
                Some((p, reply)) => (p, Some(reply)),
                None => (None, None),
            };
            let report = self.round(only).await;
            *self.last_round.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            if let Some(reply) = reply {
                let _ = reply.send(report);
            }
        }
    }

    /// Waits until moving `bytes` keeps within the bandwidth limit.
    async fn throttle(&self, bytes: usize) {
        let rate = self.settings.bytes_per_sec.max(1) as f64;
        let cost = Duration::from_secs_f64(bytes as f64 / rate);
        let wait_until = {
            let mut next = self.throttle.lock().await;
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + cost;
            start
        };
        tokio::time::sleep_until(wait_until).await;
    }

    fn settled(&self, view: &ClusterView) -> bool {
        let epoch = view.epoch_hex();
        let mut since = self.epoch_since.lock().unwrap_or_else(|p| p.into_inner());
        if since.0 != epoch {
            *since = (epoch, Instant::now());
            return false;
        }
        // Handoffs wait until the ring has been stable for a few rounds, so a node
        // with a passing view never gives its data away.
        since.1.elapsed() >= (self.settings.interval * 2).max(Duration::from_secs(3))
    }

    async fn round(&self, only: Option<u32>) -> RoundReport {
        let mut report = RoundReport::default();
        if self.coordinator.cluster().is_removed() {
            // Its data was declared lost when an operator removed it: pushing any of
            // it back (anti-entropy, handoff) would bring back what was deleted and
            // reaped since (review A9).
            return report;
        }
        // Values found damaged since the last round are dropped (under a new epoch
        // of their partition), so the exchanges below fetch them from a replica.
        let healed = self.coordinator.replica().heal_damaged();
        let hints_dropped = self.coordinator.hints().forget_dropped();
        if hints_dropped > 0 {
            tracing::warn!(
                hints_dropped,
                "damaged hints dropped; anti-entropy covers their owners"
            );
        }
        if healed > 0 {
            tracing::warn!(
                healed,
                "dropped damaged values; anti-entropy brings them back"
            );
        }
        let view = self.coordinator.cluster().view();
        let Some(ring) = view.ring.clone() else {
            return report;
        };
        let settled = self.settled(&view);
        let round = self.rounds.fetch_add(1, Ordering::Relaxed);
        let me = view.self_id.clone();
        let n = view.n;
        let store = self.coordinator.replica().store().clone();
        let mut by_peer: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        let mut handoff: Vec<(u32, Vec<String>)> = Vec::new();
        let partitions: Vec<u32> = match only {
            Some(p) if p < ring.ring_size() => vec![p],
            Some(_) => Vec::new(),
            None => (0..ring.ring_size()).collect(),
        };
        for p in partitions {
            let (primaries, _) = walk_of(&ring, p, n);
            if primaries.contains(&me) {
                let others: Vec<&String> = primaries
                    .iter()
                    .filter(|o| **o != me && view.reachable(o))
                    .collect();
                if others.is_empty() {
                    continue;
                }
                let peer = others[(round as usize + p as usize) % others.len()].clone();
                by_peer.entry(peer).or_default().push(p);
            } else if store.root(p).map(|r| r != EMPTY).unwrap_or(false) {
                handoff.push((p, primaries));
            }
        }
        if only.is_none() {
            self.counters
                .handoffs_in_flight
                .store(handoff.len() as u64, Ordering::Relaxed);
        }
        // 1. Root comparisons, one request per peer, then exchanges where they differ.
        let mut work: Vec<(String, SocketAddr, u32, Hash, Hash)> = Vec::new();
        for (peer, parts) in by_peer {
            let Some(addr) = view.address(&peer) else {
                continue;
            };
            let local: Vec<Hash> = match parts.iter().map(|&p| store.root(p)).collect() {
                Ok(l) => l,
                Err(error) => {
                    tracing::warn!(%error, "cannot read partition roots");
                    return report;
                }
            };
            let ps = parts.clone();
            self.counters.root_requests.fetch_add(1, Ordering::Relaxed);
            let remote = self
                .coordinator
                .peers()
                .call(&peer, addr, REQUEST_TIMEOUT, |c, ctx| {
                    let ps = ps.clone();
                    async move { c.ae_roots(ctx, ps).await }
                })
                .await;
            let (their_epoch, remote) = match remote {
                Ok(r) if r.1.len() == parts.len() => r,
                Ok(_) => continue,
                Err(error) => {
                    tracing::debug!(%peer, %error, "root comparison failed");
                    continue;
                }
            };
            self.counters
                .bytes_received
                .fetch_add(32 * remote.len() as u64, Ordering::Relaxed);
            self.counters
                .bytes_sent
                .fetch_add(4 * parts.len() as u64, Ordering::Relaxed);
            self.counters
                .roots_compared
                .fetch_add(parts.len() as u64, Ordering::Relaxed);
            report.compared += parts.len() as u64;
            let same_ring = their_epoch == view.epoch_hex();
            self.peer_epochs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(peer.clone(), their_epoch);
            for ((p, l), r) in parts.into_iter().zip(local).zip(remote) {
                if l != r {
                    work.push((peer.clone(), addr, p, l, r));
                } else if same_ring {
                    self.mark_verified(p);
                }
            }
        }
        report.exchanges = work.len() as u64;
        self.counters
            .exchanges
            .fetch_add(work.len() as u64, Ordering::Relaxed);
        let repaired: Vec<u64> = futures::stream::iter(work)
            .map(|(peer, addr, p, l, r)| async move {
                match self.exchange(&peer, addr, p, l, r, Mode::Both).await {
                    Ok(n) => {
                        self.mark_verified(p);
                        n
                    }
                    Err(error) => {
                        tracing::debug!(partition = p, %error, "exchange failed");
                        0
                    }
                }
            })
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;
        report.keys_repaired = repaired.iter().sum();
        // 2. Handoffs of partitions given away, once the ring has settled.
        if settled {
            for (p, primaries) in handoff {
                match self.hand_off(&view, p, &primaries).await {
                    Ok(true) => {
                        report.handed_off += 1;
                        self.counters.handoffs_done.fetch_add(1, Ordering::Relaxed);
                        let _ = self.counters.handoffs_in_flight.fetch_update(
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                            |n| n.checked_sub(1),
                        );
                    }
                    Ok(false) => {}
                    Err(error) => tracing::debug!(partition = p, %error, "handoff not done yet"),
                }
            }
        }
        // Earlier rings whose moved partitions all reached their new owners: reads
        // stop asking them.
        if settled && only.is_none() && !view.previous.is_empty() {
            self.forget_settled_rings(&view).await;
        }
        // 3. Tombstones. One owned partition per round is scanned for them, so
        // tombstones forgotten by a restart are found again (a full cycle takes Q
        // rounds).
        if only.is_none() {
            let p = (round % u64::from(ring.ring_size())) as u32;
            if walk_of(&ring, p, n).0.contains(&me) {
                for item in store.scan_partition(p).take(1_000_000) {
                    let Ok((k, v)) = item else { break };
                    if Object::decode(&v).is_ok_and(|o| o.is_tombstone()) {
                        self.coordinator.note_tombstone(&k);
                    }
                }
            }
        }
        if settled {
            report.reaped = self.reap(&view).await;
        }
        // A node that left and now holds no partition data and no hints is done:
        // it removes itself, so a shut-down leaver never blocks reaping.
        let leaving = view
            .record(&me)
            .is_some_and(|r| r.status == ringkv_gossip::Status::Leaving);
        if leaving
            && settled
            && only.is_none()
            && self.counters.handoffs_in_flight.load(Ordering::Relaxed) == 0
            && self.coordinator.hints().pending() == 0
            && (0..ring.ring_size()).all(|p| store.root(p).is_ok_and(|r| r == EMPTY))
        {
            let _ = self
                .coordinator
                .cluster()
                .command(crate::cluster::shell::Command::Retire)
                .await;
        }
        report
    }

    /// Runs one exchange of partition `p` with node `peer` at `addr`; returns the
    /// keys whose state moved.
    async fn exchange(
        &self,
        peer: &str,
        addr: SocketAddr,
        p: u32,
        local_root: Hash,
        remote_root: Hash,
        mode: Mode,
    ) -> Result<u64, String> {
        let store = self.coordinator.replica().store().clone();
        let peers = self.coordinator.peers();
        let mut x = Exchange::new(p, local_root, remote_root);
        // Bounded: at most DEPTH + 1 levels, each in batches of at most 256 nodes
        // out of 4,096 leaves.
        for _ in 0..64 {
            match x.next_need() {
                Need::Done => break,
                Need::Children(nodes) => {
                    let local: Vec<Vec<Hash>> = nodes
                        .iter()
                        .map(|&(level, index)| store.children(p, level, index))
                        .collect::<Result<_, _>>()
                        .map_err(|e| e.to_string())?;
                    let ns = nodes.clone();
                    let remote = peers
                        .call(peer, addr, REQUEST_TIMEOUT, |c, ctx| {
                            let ns = ns.clone();
                            async move { c.ae_children(ctx, p, ns).await }
                        })
                        .await
                        .map_err(peer_err)?;
                    let hashes: usize = remote.iter().map(Vec::len).sum();
                    self.counters
                        .bytes_received
                        .fetch_add(32 * hashes as u64, Ordering::Relaxed);
                    self.throttle(32 * hashes).await;
                    x.children(&local, &remote).map_err(|e| e.to_string())?;
                }
                Need::Segments(segs) => {
                    let local: Vec<Vec<(Vec<u8>, Hash)>> = segs
                        .iter()
                        .map(|&s| store.segment_digests(p, s))
                        .collect::<Result<_, _>>()
                        .map_err(|e| e.to_string())?;
                    // Segments are asked for a few at a time: each lists every key of
                    // its leaf, so a large partition makes large replies.
                    let mut remote: Vec<Vec<(Vec<u8>, Hash)>> = Vec::with_capacity(segs.len());
                    for chunk in segs.chunks(SEGMENTS_PER_REQUEST) {
                        let ss = chunk.to_vec();
                        let part = peers
                            .call(peer, addr, REQUEST_TIMEOUT, |c, ctx| {
                                let ss = ss.clone();
                                async move { c.ae_segments(ctx, p, ss).await }
                            })
                            .await
                            .map_err(peer_err)?;
                        if part.len() != chunk.len() {
                            return Err("peer sent a malformed segment reply".into());
                        }
                        remote.extend(part);
                    }
                    let bytes: usize = remote
                        .iter()
                        .flat_map(|v| v.iter().map(|(k, _)| k.len() + 32))
                        .sum();
                    self.counters
                        .bytes_received
                        .fetch_add(bytes as u64, Ordering::Relaxed);
                    self.throttle(bytes).await;
                    // A leaf that differs over keys that do not is wrong here or
                    // there: each side corrects its own (review S2).
                    for ((&seg, l), r) in segs.iter().zip(&local).zip(&remote) {
                        if l == r
                            && let Err(error) = store.verify_leaf(p, seg)
                        {
                            tracing::debug!(%error, "cannot check a hash-tree leaf");
                        }
                    }
                    x.segments(&local, &remote).map_err(|e| e.to_string())?;
                }
            }
        }
        let keys = x.take_keys();
        if keys.is_empty() && local_root != remote_root {
            // The roots differ and no leaf under them does: a side whose upper nodes
            // no longer match its own leaves. Each side corrects its own (seed 974).
            let leaves_below = x.level() + 1 >= exchange::DEPTH;
            match store.verify_upper(p, leaves_below) {
                Ok(fixed) => {
                    tracing::debug!(partition = p, %peer, level = x.level(), fixed, "an exchange found no key to move though the roots differ")
                }
                Err(error) => {
                    tracing::debug!(partition = p, %error, "cannot check the upper hash-tree nodes")
                }
            }
        }
        let mut moved = 0;
        for chunk in keys.chunks(KEYS_PER_BATCH) {
            moved += self.sync_keys(peer, addr, chunk.to_vec(), mode).await?;
        }
        self.counters
            .keys_repaired
            .fetch_add(moved, Ordering::Relaxed);
        Ok(moved)
    }

    /// Brings `keys` to the merge of both sides: on the peer always, here too unless
    /// handing off.
    async fn sync_keys(
        &self,
        peer: &str,
        addr: SocketAddr,
        keys: Vec<Vec<u8>>,
        mode: Mode,
    ) -> Result<u64, String> {
        // Counted as a repair in flight: reaping waits while a state fetched here could
        // still be written back somewhere.
        let _busy = self.coordinator.repair_started(&keys);
        let peers = self.coordinator.peers();
        let mut moved = 0;
        let mut rest = keys;
        while !rest.is_empty() {
            let ask = rest.clone();
            let got = peers
                .call(peer, addr, REQUEST_TIMEOUT, |c, ctx| {
                    let ask = ask.clone();
                    async move { c.fetch(ctx, ask).await }
                })
                .await
                .map_err(peer_err)?;
            if got.is_empty()
                || got.len() > rest.len()
                || got.iter().zip(&rest).any(|((k, _), asked)| k != asked)
            {
                return Err("peer sent a malformed fetch reply".into());
            }
            let bytes: usize = got
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
                .sum();
            self.counters
                .bytes_received
                .fetch_add(bytes as u64, Ordering::Relaxed);
            rest.drain(..got.len());
            // Applied and pushed at once (the local state re-read now), so no state
            // fetched here waits long before it is written anywhere.
            let mut push: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            for (key, theirs) in got {
                match self.merge_key(&key, theirs, mode).await {
                    Ok(Some(merged)) => {
                        moved += 1;
                        if let Some(m) = merged {
                            push.push((key, m));
                        }
                    }
                    Ok(None) => {}
                    Err(error) if mode == Mode::Give => {
                        // Never drop what could not be given.
                        return Err(format!("cannot hand off a key: {error}"));
                    }
                    Err(error) => {
                        tracing::warn!(%error, key = ?String::from_utf8_lossy(&key), "key left out of repair");
                    }
                }
            }
            let mut batch: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            let mut size = 0;
            for item in push {
                let item_size = item.0.len() + item.1.len();
                if !batch.is_empty()
                    && (size + item_size > PUSH_BYTES || batch.len() >= KEYS_PER_BATCH)
                {
                    self.push(peer, addr, std::mem::take(&mut batch), size)
                        .await?;
                    size = 0;
                }
                size += item_size;
                batch.push(item);
            }
            if !batch.is_empty() {
                self.push(peer, addr, batch, size).await?;
            }
            // Bandwidth is accounted after the fact: the next request waits.
            self.throttle(bytes).await;
        }
        Ok(moved)
    }

    /// Merges the peer's state of one key with ours. Returns `None` if nothing
    /// moves, `Some(None)` if only this side changed, `Some(Some(bytes))` if the peer
    /// must get the merged state.
    async fn merge_key(
        &self,
        key: &[u8],
        theirs: Option<Vec<u8>>,
        mode: Mode,
    ) -> Result<Option<Option<Vec<u8>>>, String> {
        let theirs_obj = theirs
            .as_deref()
            .map(Object::decode)
            .transpose()
            .map_err(|e| format!("peer sent an unreadable object: {e}"))?;
        let ours = self
            .coordinator
            .replica()
            .get(key)
            .map_err(|e| e.to_string())?;
        let merged = match (&ours, &theirs_obj) {
            (None, None) => return Ok(None),
            (Some(o), None) | (None, Some(o)) => o.clone(),
            (Some(a), Some(b)) => {
                let mut m = a.clone();
                m.merge(b)
                    .map_err(|e| format!("replicas hold different kinds: {e}"))?;
                m
            }
        };
        let mut changed = false;
        if mode == Mode::Both
            && let Some(t) = theirs_obj
            && ours.as_ref() != Some(&merged)
        {
            self.coordinator
                .replicate_object(key.to_vec(), t)
                .await
                .map_err(|e| e.to_string())?;
            changed = true;
        }
        if merged.is_tombstone() {
            self.coordinator.note_tombstone(key);
        }
        let merged_digest = merged.digest(key).map_err(|e| e.to_string())?;
        if theirs.as_ref().map(|b| object_digest(key, b)) != Some(merged_digest) {
            return Ok(Some(Some(merged.encode().map_err(|e| e.to_string())?)));
        }
        Ok(changed.then_some(None))
    }

    async fn push(
        &self,
        peer: &str,
        addr: SocketAddr,
        items: Vec<(Vec<u8>, Vec<u8>)>,
        bytes: usize,
    ) -> Result<(), String> {
        self.throttle(bytes).await;
        self.coordinator
            .peers()
            .call(peer, addr, REQUEST_TIMEOUT, |c, ctx| {
                let items = items.clone();
                async move { c.replicate_many(ctx, items).await }
            })
            .await
            .map_err(peer_err)?;
        self.counters
            .bytes_sent
            .fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Gives partition `p` to its current primaries; drops it here once all of them
    /// took it. Returns whether the partition is now empty here.
    async fn hand_off(
        &self,
        view: &ClusterView,
        p: u32,
        primaries: &[String],
    ) -> Result<bool, String> {
        let store = self.coordinator.replica().store().clone();
        // What we hold now, before giving it: only these exact states are dropped
        // afterwards, so a write landing here meanwhile is handed off next round.
        let mut snapshot: Vec<(Vec<u8>, Hash)> = Vec::new();
        for item in store.scan_partition(p) {
            let (k, v) = item.map_err(|e| e.to_string())?;
            let d = object_digest(&k, &v);
            snapshot.push((k, d));
            if snapshot.len() >= 100_000 {
                break;
            }
        }
        if snapshot.is_empty() {
            return Ok(true);
        }
        let epoch = view.epoch_hex();
        for q in primaries {
            let addr = view
                .address(q)
                .ok_or_else(|| format!("no address for {q}"))?;
            self.counters.root_requests.fetch_add(1, Ordering::Relaxed);
            let (their_epoch, roots) = self
                .coordinator
                .peers()
                .call(q, addr, REQUEST_TIMEOUT, |c, ctx| async move {
                    c.ae_roots(ctx, vec![p]).await
                })
                .await
                .map_err(peer_err)?;
            if their_epoch != epoch {
                return Err(format!("{q} sees another ring ({their_epoch}); waiting"));
            }
            let Some(&remote_root) = roots.first() else {
                return Err(format!("{q} sent no root"));
            };
            let local_root = store.root(p).map_err(|e| e.to_string())?;
            if local_root != remote_root {
                self.exchange(q, addr, p, local_root, remote_root, Mode::Give)
                    .await?;
            }
        }
        // Every primary now holds at least what the snapshot held. Before dropping
        // anything, writes to this partition coordinated here take a new actor:
        // should the partition come back to this node, a write on its then empty
        // copy must not claim versions only the other replicas kept (kv679).
        self.coordinator
            .replica()
            .retire_actor(p)
            .map_err(|e| e.to_string())?;
        for (k, d) in &snapshot {
            store.remove_if(p, k, d).map_err(|e| e.to_string())?;
        }
        let empty = store.root(p).map_err(|e| e.to_string())? == EMPTY;
        if empty {
            tracing::info!(partition = p, keys = snapshot.len(), "partition handed off");
        }
        Ok(empty)
    }

    /// Reaps tombstones this node is the first primary of, when every ring member
    /// answers, holds no hints, every primary holds the same tombstone and nobody
    /// holds anything else for the key (DESIGN.md §3: acknowledged, never on a timer).
    /// The broken reaper of [`RepairSettings::unsafe_reap`]: every tombstone this
    /// node holds goes at once, whatever the other replicas hold, and so do the
    /// tombstones waiting in its hints (a timer that knows nothing of hints).
    fn reap_unsafely(&self) -> u64 {
        let c = &self.coordinator;
        let q = c.replica().ring_size();
        let mut reaped = 0;
        let hints = c.hints();
        for (owner, _) in hints.by_owner() {
            let Some(owner) = owner else { continue };
            for h in hints.for_owner(&owner, REAP_PER_ROUND).unwrap_or_default() {
                if Object::decode(&h.object).is_ok_and(|o| o.is_tombstone())
                    && let Ok(true) = hints.remove_delivered(&h)
                {
                    reaped += 1;
                }
            }
        }
        for key in c.take_tombstones(REAP_PER_ROUND) {
            let Ok(Some(obj @ Object::Register(_))) = c.replica().get(&key) else {
                continue;
            };
            if !obj.is_tombstone() {
                continue;
            }
            let Ok(d) = obj.digest(&key) else {
                continue;
            };
            let partition = crate::ring::partition_of(&key, q);
            if let Ok(true) = c.replica().store().remove_if(partition, &key, &d) {
                reaped += 1;
            }
        }
        self.counters
            .tombstones_reaped
            .fetch_add(reaped, Ordering::Relaxed);
        reaped
    }

    async fn reap(&self, view: &ClusterView) -> u64 {
        if self.settings.unsafe_reap {
            return self.reap_unsafely();
        }
        let Some(ring) = &view.ring else {
            return 0;
        };
        let me = view.self_id.clone();
        let candidates = self.coordinator.take_tombstones(REAP_PER_ROUND);
        let mut keys: Vec<(Vec<u8>, Hash, Vec<String>)> = Vec::new();
        for key in candidates {
            let (primaries, _) = walk_of(
                ring,
                crate::ring::partition_of(&key, ring.ring_size()),
                view.n,
            );
            if primaries.first() != Some(&me) {
                // The first primary drives it (its per-round scan finds it too).
                continue;
            }
            match self.coordinator.replica().get(&key) {
                Ok(Some(obj @ Object::Register(_))) if obj.is_tombstone() => {
                    if let Ok(d) = obj.digest(&key) {
                        keys.push((key, d, primaries));
                    }
                }
                Ok(_) => {}
                Err(error) => tracing::debug!(%error, "cannot read a tombstone"),
            }
        }
        if keys.is_empty() {
            return 0;
        }
        let retry = |keys: &[(Vec<u8>, Hash, Vec<String>)]| {
            for (k, _, _) in keys {
                self.coordinator.note_tombstone(k);
            }
        };
        // Every member that is not removed must answer: any of them may hold a hint
        // or an older copy (earlier owner, fallback) that would bring the key back.
        let members: Vec<String> = view
            .members
            .iter()
            .filter(|r| r.status != ringkv_gossip::Status::Removed)
            .map(|r| r.node_id.clone())
            .collect();
        if let Some(m) = members
            .iter()
            .find(|m| view.liveness_of(m) != Liveness::Alive)
        {
            tracing::debug!(member = %m, tombstones = keys.len(), "reap waits: a member is not alive");
            retry(&keys);
            return 0;
        }
        let ks: Vec<Vec<u8>> = keys.iter().map(|(k, _, _)| k.clone()).collect();
        let ring_epoch = view.epoch_hex();
        // Asked twice: members answer one after another, so a state fetched from one
        // member before another took the tombstone could still be on its way after
        // the first pass. Anything fetched before the first pass ended is, during the
        // second, either marked in flight or merged under the tombstone.
        let mut held: BTreeMap<String, Vec<Option<Hash>>> = BTreeMap::new();
        for pass in 0..2 {
            for m in &members {
                let answer = if *m == me {
                    local::digests(&self.coordinator, &ks)
                        .await
                        .map_err(|e| e.to_string())
                } else if let Some(addr) = view.address(m) {
                    self.coordinator
                        .peers()
                        .call(m, addr, REQUEST_TIMEOUT, |c, ctx| {
                            let ks = ks.clone();
                            async move { c.digests(ctx, ks).await }
                        })
                        .await
                        .map_err(peer_err)
                } else {
                    Err("no address".to_string())
                };
                match answer {
                    // Every member on the reaper's ring: one that knows of a member
                    // the reaper does not (a node that joined a moment ago, and that
                    // a coordinator may have used as a fallback) has another ring,
                    // and that member would not be asked (review S7).
                    Ok((digests, 0, epoch))
                        if digests.len() == ks.len()
                            && epoch == ring_epoch
                            && (pass == 0 || held.get(m) == Some(&digests)) =>
                    {
                        held.insert(m.clone(), digests);
                    }
                    Ok((_, in_flight, epoch)) => {
                        tracing::debug!(member = %m, pass, in_flight, same_ring = epoch == ring_epoch, "reap waits: a member's answer changed or its ring differs");
                        retry(&keys);
                        return 0;
                    }
                    Err(error) => {
                        tracing::debug!(member = %m, %error, "reap waits: a member did not answer");
                        retry(&keys);
                        return 0;
                    }
                }
            }
        }
        let mut reaped = 0;
        let mut per_member: BTreeMap<String, Vec<(Vec<u8>, Hash)>> = BTreeMap::new();
        for (i, (key, d, primaries)) in keys.iter().enumerate() {
            let everyone_agrees = held.iter().all(|(m, digests)| {
                if primaries.contains(m) {
                    digests[i] == Some(*d)
                } else {
                    digests[i].is_none() || digests[i] == Some(*d)
                }
            });
            if !everyone_agrees {
                tracing::debug!(key = %String::from_utf8_lossy(key), "reap waits: the replicas hold different states");
                self.coordinator.note_tombstone(key);
                continue;
            }
            for (m, digests) in &held {
                if digests[i] == Some(*d) {
                    per_member
                        .entry(m.clone())
                        .or_default()
                        .push((key.clone(), *d));
                }
            }
        }
        for (m, items) in per_member {
            let r = if m == me {
                local::reap(&self.coordinator, &items).map_err(|e| e.to_string())
            } else if let Some(addr) = view.address(&m) {
                self.coordinator
                    .peers()
                    .call(&m, addr, REQUEST_TIMEOUT, |c, ctx| {
                        let items = items.clone();
                        async move { c.reap(ctx, items).await }
                    })
                    .await
                    .map_err(peer_err)
            } else {
                Err("no address".to_string())
            };
            match r {
                Ok(n) => {
                    if m == me {
                        reaped += n;
                        self.counters
                            .tombstones_reaped
                            .fetch_add(n, Ordering::Relaxed);
                    }
                }
                Err(error) => {
                    tracing::debug!(node = %m, %error, "reap failed; the tombstone stays")
                }
            }
        }
        reaped
    }
}
