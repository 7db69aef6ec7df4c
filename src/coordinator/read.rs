//! The read path: ask `R` primaries (this node first), answer with the merge of
//! their replies, repair the replicas that differed. The other primaries are asked
//! too when one of the first fails, when the first are slow (a speculative retry,
//! as Cassandra's, after 50 ms or half the deadline), or when nothing was found (one
//! of them may hold the key).
//!
//! Asking all `N` (Riak's way) read-repairs every replica on every read, but costs
//! every replica a read and the coordinator an RPC per extra replica on every read:
//! a third of a 3-node cluster's read work. Replicas a read does not ask are kept
//! in step by hinted handoff and anti-entropy instead. With strict quorums
//! (`R + W > N` among primaries) every read still meets every acknowledged write.
//! A write that a sloppy quorum acknowledged on fallbacks while primaries were
//! down can be missed until its hint is delivered, as it could before when the
//! stale primaries answered first; what changed is that such a read no longer
//! repairs the primaries it did not ask.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::quorum::{Quorum, Requirement, Step, Target};
use super::{Coordinator, Io, unavailable};
use crate::object::Object;
use crate::rpc::api::{ApiError, RequestOptions, SharedBlob};

type Reply = Option<Object>;
type Report = (String, Result<Reply, String>);

/// Longest a read that found nothing waits for slower replicas before answering
/// not-found (one of them may hold the key).
const NOT_FOUND_GRACE: Duration = Duration::from_millis(500);

/// When the first replicas asked have not made the quorum by then, the rest are
/// asked too (well above a loaded loopback round trip, far below a timeout).
const SPECULATE_AFTER: Duration = Duration::from_millis(50);

fn merge_all<'a>(replies: impl Iterator<Item = &'a Reply>) -> Result<Reply, ApiError> {
    let mut out: Option<Object> = None;
    for r in replies.flatten() {
        match &mut out {
            None => out = Some(r.clone()),
            Some(o) => o.merge(r)?,
        }
    }
    Ok(out)
}

impl Coordinator {
    /// Asks `node` for its copy of `key` through the peer's queue (one frame for the
    /// reads ready together); the reply goes to the request's quorum loop.
    fn spawn_read(&self, node: String, key: Vec<u8>, timeout: Duration, tx: mpsc::Sender<Report>) {
        let view = self.inner.cluster.view();
        // The loop holds at most one read per replica, far below the channel's room;
        // a loop that has finished no longer listens.
        let report = move |node: String, r: Result<Reply, String>| {
            let _ = tx.try_send((node, r));
        };
        let Some(addr) = view.address(&node) else {
            report(node, Err("no address known".to_string()));
            return;
        };
        let n = node.clone();
        self.inner.batches.read(
            &node,
            addr,
            key,
            timeout,
            Box::new(move |r| {
                let result = r.map_err(|e| e.to_string()).and_then(|bytes| match bytes {
                    None => Ok(None),
                    Some(b) => Object::decode(&b.0)
                        .map(Some)
                        .map_err(|e| format!("unreadable reply: {e}")),
                });
                report(n, result);
            }),
        );
    }

    /// Reads the merged object of `key` from a read quorum.
    ///
    /// # Errors
    /// [`ApiError`]: refusals, or [`ApiError::QuorumNotReached`].
    pub async fn read(
        &self,
        key: Vec<u8>,
        opts: RequestOptions,
    ) -> Result<Option<Object>, ApiError> {
        if self.inner.cluster.is_removed() {
            return Err(super::removed());
        }
        self.inner.replica.check_key(&key)?;
        let (r, pr, timeout) = self.need(&opts, false)?;
        let deadline = Instant::now() + timeout;
        // From the first reply on, this read holds states it may write back (read
        // repair): the key is not reaped meanwhile.
        let busy = self.repair_started(std::slice::from_ref(&key));
        let view = self.inner.cluster.view();
        let (primaries, _) = view.walk(&key);
        if primaries.is_empty() {
            return Err(unavailable(
                "this node has not joined a cluster yet (no active members known)",
            ));
        }
        // Capped like writes: a smaller ring has fewer replicas.
        let (r, pr) = (r.min(primaries.len()), pr.min(primaries.len()));
        let me = view.self_id.clone();
        let targets: Vec<Target> = primaries
            .iter()
            .map(|p| Target {
                node: p.clone(),
                primary: true,
            })
            .collect();
        let (mut quorum, now) = Quorum::<()>::new(
            Requirement {
                total: r,
                primaries: pr,
            },
            targets,
            Vec::new(),
            false,
        );
        let (tx, mut rx) = mpsc::channel::<Report>(256);
        let mut replies: BTreeMap<String, Reply> = BTreeMap::new();
        let mut outstanding = 0usize;
        let mut steps = Vec::new();
        // Remote primaries beyond what the quorum needs wait as spares.
        let local = usize::from(primaries.contains(&me));
        let mut first = r.max(pr).saturating_sub(local);
        let mut spares: Vec<String> = Vec::new();
        for t in &now {
            if t.node == me {
                continue;
            }
            if !view.reachable(&t.node) {
                steps.push(quorum.failed(&t.node, "down (per gossip)"));
            } else if first > 0 {
                first -= 1;
                outstanding += 1;
                self.spawn_read(t.node.clone(), key.clone(), timeout, tx.clone());
            } else {
                spares.push(t.node.clone());
            }
        }
        // Later ones first out of `pop`: the walk's order.
        spares.reverse();
        // Within half the deadline at most: a short deadline must leave the spares
        // time to answer when a first replica stalls without failing.
        let speculate_at = Instant::now() + SPECULATE_AFTER.min(timeout / 2);
        // A ring change moves keys to owners that may not hold them yet (earlier
        // owners keep their copies until their handoff is done): ask the earlier
        // primaries too. They never count toward R; what they hold is merged in.
        // Only live ones: a dead or forgotten earlier owner would hold every such read
        // for the whole grace period.
        let earlier: Vec<String> = view
            .previous_primaries(&key)
            .into_iter()
            .filter(|p| {
                view.liveness_of(p) == ringkv_gossip::Liveness::Alive
                    && view
                        .record(p)
                        .is_some_and(|r| r.status != ringkv_gossip::Status::Removed)
            })
            .collect();
        let mut earlier_outstanding = 0usize;
        for p in &earlier {
            if *p == me {
                continue;
            }
            earlier_outstanding += 1;
            self.spawn_read(p.clone(), key.clone(), timeout, tx.clone());
        }
        if primaries.contains(&me) || earlier.contains(&me) {
            let k = key.clone();
            match self.run(Io::Read, move |r| r.get(&k)).await {
                Ok(obj) => {
                    replies.insert(me.clone(), obj);
                    steps.push(quorum.ok(&me, ()));
                }
                Err(e) => steps.push(quorum.failed(&me, e.to_string())),
            }
        }
        let account = |node: &str, outstanding: &mut usize, earlier_outstanding: &mut usize| {
            if earlier.iter().any(|e| e == node) {
                *earlier_outstanding -= 1;
            } else {
                *outstanding -= 1;
            }
        };
        'wait: loop {
            for step in steps.drain(..) {
                match step {
                    Step::Wait | Step::SendTo(_) => {}
                    Step::Reached(_) => {
                        break 'wait;
                    }
                    Step::Failed(e) => return Err(self.quorum_failed(e)),
                }
            }
            tokio::select! {
                biased;
                Some((node, result)) = rx.recv() => {
                    account(&node, &mut outstanding, &mut earlier_outstanding);
                    // Replies of earlier owners are not targets: the machine ignores them.
                    match result {
                        Ok(obj) => {
                            replies.insert(node.clone(), obj);
                            steps.push(quorum.ok(&node, ()));
                        }
                        Err(e) => {
                            // A spare takes the place of a replica that failed.
                            if let Some(spare) = spares.pop() {
                                outstanding += 1;
                                self.spawn_read(spare, key.clone(), timeout, tx.clone());
                            }
                            steps.push(quorum.failed(&node, e));
                        }
                    }
                }
                () = tokio::time::sleep_until(speculate_at), if !spares.is_empty() => {
                    for spare in spares.drain(..) {
                        outstanding += 1;
                        self.spawn_read(spare, key.clone(), timeout, tx.clone());
                    }
                }
                () = tokio::time::sleep_until(deadline) => steps.push(quorum.deadline()),
            }
        }
        // Nothing found yet: the replicas not asked may hold the key.
        if !replies.values().any(Option::is_some) {
            for spare in spares.drain(..) {
                outstanding += 1;
                self.spawn_read(spare, key.clone(), timeout, tx.clone());
            }
        }
        // Wait a little longer for earlier owners, and, when nothing was found, for
        // slower primaries: one of them may hold the key.
        let grace = (Instant::now() + NOT_FOUND_GRACE).min(deadline);
        loop {
            let found = replies.values().any(Option::is_some);
            if earlier_outstanding == 0 && (found || outstanding == 0) {
                break;
            }
            // Biased: a reply that arrived in the grace's tick counts (and replays
            // never depend on tokio's per-process random start).
            tokio::select! {
                biased;
                Some((node, result)) = rx.recv() => {
                    account(&node, &mut outstanding, &mut earlier_outstanding);
                    if let Ok(obj) = result {
                        replies.insert(node, obj);
                    }
                }
                () = tokio::time::sleep_until(grace) => break,
            }
        }
        let merged = merge_all(replies.values())?;
        let pending = outstanding + earlier_outstanding;
        let settled = replies.values().all(|r| *r == merged);
        if pending == 0 && settled {
            // Every replica that answered holds the answer already (always so on a
            // single node): nothing to repair, no task to spawn.
            return Ok(merged);
        }
        if !settled && let Some(o) = &merged {
            // Replicas apart can merge past what any of them holds: beyond what a
            // reply may carry, say so (a reply too large for its frame would close
            // the client's whole connection, review C9).
            let size = o.encode()?.len();
            let limit = self.inner.replica.limits().max_merged_bytes();
            if size > limit {
                return Err(ApiError::ObjectTooLarge {
                    size: size as u64,
                    limit: limit as u64,
                });
            }
        }
        self.spawn_repair(
            key,
            merged.clone(),
            replies,
            outstanding + earlier_outstanding,
            rx,
            deadline,
            busy,
        );
        Ok(merged)
    }

    /// After answering: collect the replies still on their way, then send the merged
    /// state to every primary whose copy differed.
    #[allow(clippy::too_many_arguments)]
    fn spawn_repair(
        &self,
        key: Vec<u8>,
        answer: Reply,
        mut replies: BTreeMap<String, Reply>,
        mut outstanding: usize,
        mut rx: mpsc::Receiver<Report>,
        deadline: Instant,
        busy: super::RepairGuard,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let _busy = busy;
            while outstanding > 0 {
                tokio::select! {
                    biased;
                    Some((node, result)) = rx.recv() => {
                        outstanding -= 1;
                        if let Ok(obj) = result {
                            replies.insert(node, obj);
                        }
                    }
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
            let Ok(Some(merged)) = merge_all(replies.values().chain(std::iter::once(&answer)))
            else {
                return;
            };
            let Ok(digest) = merged.digest(&key) else {
                return;
            };
            let Ok(bytes) = merged.encode().map(|b| SharedBlob(b.into())) else {
                return;
            };
            let view = this.inner.cluster.view();
            let me = view.self_id.clone();
            let (primaries, _) = view.walk(&key);
            for p in primaries {
                let stale = match replies.get(&p) {
                    // Equal objects encode equally; only unequal ones (possibly
                    // the same state in another order) need their digest.
                    Some(Some(o)) if *o == merged => false,
                    Some(Some(o)) => o.digest(&key).map(|d| d != digest).unwrap_or(true),
                    Some(None) => true,
                    // No reply: it may be down; hints and anti-entropy cover it.
                    None => false,
                };
                if !stale {
                    continue;
                }
                this.inner
                    .stats
                    .read_repairs
                    .fetch_add(1, Ordering::Relaxed);
                if p == me {
                    let _ = this.replicate(key.clone(), &bytes.0).await;
                } else if let Some(addr) = view.address(&p) {
                    let (k, b) = (key.clone(), bytes.clone());
                    let r = this
                        .inner
                        .peers
                        .call(&p, addr, Duration::from_secs(2), |c, ctx| {
                            let (k, b) = (k.clone(), b.clone());
                            async move { c.replicate(ctx, k, b).await }
                        })
                        .await;
                    if let Err(error) = r {
                        tracing::debug!(node = %p, %error, "read repair failed");
                    }
                }
            }
        });
    }
}
