//! What is owed to members once gossip says they are alive again: their hints, and
//! a fresh dial instead of the pause after failures.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringkv_gossip::{Liveness, Status};

use tokio_util::sync::CancellationToken;

use super::Coordinator;
use crate::cluster::Revival;
use crate::hints::{DELIVERY_INTERVAL, DELIVERY_RATE, Hint};
use crate::peer::pool::PeerError;

/// Hints handed to one owner per round at most.
const PER_ROUND: usize = DELIVERY_RATE * DELIVERY_INTERVAL.as_millis() as usize / 1000;
const _: () = assert!(PER_ROUND > 0);

/// Dials a member that came back at most this many times, [`RECONNECT_EVERY`] apart
/// (each dial waits [`crate::peer::pool::CONNECT_TIMEOUT`] at most, so a task ends
/// within about 22 s).
pub const RECONNECT_TRIES: u32 = 20;
/// Pause between those dials: gossip hears a restarted node a moment before its RPC
/// port listens.
pub const RECONNECT_EVERY: Duration = Duration::from_millis(100);

/// Until `shutdown`: whenever gossip sees a member come back (restarted, or alive
/// again), lets it be dialled at once, and, if dialling it had failed, dials it
/// again now so the next request finds a connection. Without this the pause after
/// a failed dial (`REDIAL_AFTER`) refused the first requests to a node that had
/// just restarted, a quorum of all replicas among them, though gossip knew it was
/// back. `revivals` is subscribed before the node starts serving, so none is missed.
pub async fn forgive_revived_peers(
    coordinator: Coordinator,
    mut revivals: tokio::sync::broadcast::Receiver<Revival>,
    shutdown: CancellationToken,
) {
    // Nodes being dialled: a flapping node gets one dialling task, not one a flap.
    let dialling: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    loop {
        let next = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            next = revivals.recv() => next,
        };
        let Revival {
            node_id: node,
            restarted,
        } = match next {
            Ok(r) => r,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                // Which of the missed ones restarted is unknown: their connections
                // and the batch queues' fallback to single sends stay.
                coordinator.inner.peers.forgive_all();
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let batches = &coordinator.inner.batches;
        let failed = coordinator.inner.peers.has_failed(&node);
        batches.forgive(&node, restarted);
        if !failed
            || !dialling
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(node.clone())
        {
            continue;
        }
        tracing::debug!(%node, restarted, "member came back: dialling it again");
        let (c, dialling, stop) = (coordinator.clone(), dialling.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                biased;
                () = stop.cancelled() => {}
                () = redial(&c, &node) => {}
            }
            dialling
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&node);
        });
    }
}

/// Dials `node` until a connection is open, it is gone from gossip's view (down,
/// removed, no address), or [`RECONNECT_TRIES`] dials failed.
async fn redial(c: &Coordinator, node: &str) {
    for _ in 0..RECONNECT_TRIES {
        let view = c.inner.cluster.view();
        let Some(addr) = view.address(node) else {
            return;
        };
        if !view.reachable(node) || view.is_removed(node) {
            return;
        }
        match c.inner.peers.reconnect(node, addr).await {
            Ok(dialled) => {
                if dialled {
                    c.inner.stats.peer_redials.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            Err(_) => tokio::time::sleep(RECONNECT_EVERY).await,
        }
    }
}

/// Delivers hints until `shutdown`: every round, up to [`PER_ROUND`] hints in all go to
/// owners that are alive; hints for owners no longer in the cluster go to the key's
/// current primaries instead.
pub async fn deliver_hints(coordinator: Coordinator, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut rounds: u64 = 0;
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => return,
            () = tokio::time::sleep(DELIVERY_INTERVAL) => {}
        }
        rounds += 1;
        // A removed node's states were declared lost: it hands none of them on.
        if coordinator.inner.hints.pending() == 0 || coordinator.inner.cluster.is_removed() {
            continue;
        }
        let view = coordinator.inner.cluster.view();
        let mut budget = PER_ROUND;
        for record in view.members.iter() {
            if budget == 0 {
                break;
            }
            if record.node_id == view.self_id
                || record.status == Status::Removed
                || view.liveness_of(&record.node_id) != Liveness::Alive
            {
                continue;
            }
            let hints = match coordinator.inner.hints.for_owner(&record.node_id, budget) {
                Ok(h) => h,
                Err(error) => {
                    tracing::warn!(%error, "cannot read hints");
                    break;
                }
            };
            budget -= hints.len();
            coordinator.hand_over(&view, &record.node_id, hints).await;
        }
        // Now and then, sweep for hints whose owner was removed from the cluster: they
        // go to the key's current primaries instead. (Owners merely unknown here are
        // kept waiting: this node may not have heard of them yet.)
        if rounds.is_multiple_of(20) && budget > 0 {
            let removed: Vec<String> = view
                .members
                .iter()
                .filter(|r| r.status == Status::Removed && r.node_id != view.self_id)
                .map(|r| r.node_id.clone())
                .collect();
            for owner in removed {
                if budget == 0 {
                    break;
                }
                let Ok(hints) = coordinator.inner.hints.for_owner(&owner, budget) else {
                    break;
                };
                for hint in hints {
                    budget = budget.saturating_sub(1);
                    let (primaries, _) = view.walk(&hint.key);
                    let mut delivered = !primaries.is_empty();
                    for p in primaries {
                        let state = vec![(hint.key.clone(), hint.object.clone())];
                        match coordinator.send_states(&view, &p, state).await {
                            Ok(()) | Err(Delivery::Refused) => {}
                            Err(Delivery::Later) => delivered = false,
                        }
                    }
                    if !delivered || !coordinator.drop_hint(&hint) {
                        break;
                    }
                }
            }
        }
    }
}

/// Why a hint was not delivered.
enum Delivery {
    /// Try again later (unreachable, storage trouble).
    Later,
    /// The owner refuses this state for good (for example another object kind was
    /// written meanwhile): keeping the hint would block every later one.
    Refused,
}

/// Hints sent to an owner in one request at most, and their bytes.
const BATCH_HINTS: usize = 64;
const BATCH_BYTES: usize = 4 << 20;

impl Coordinator {
    /// Sends states to `node`, durable there before it answers (as a handoff push
    /// is): a hint is dropped once delivered, so its copy must not depend on the
    /// owner's next interval sync.
    async fn send_states(
        &self,
        view: &crate::cluster::ClusterView,
        node: &str,
        states: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), Delivery> {
        let sent = if node == view.self_id {
            // Here the drop of the hint is logged after the merge: a power loss
            // that keeps the drop keeps the merge.
            let mut r = Ok(());
            for (k, o) in states {
                r = self.replicate(k, &o).await;
                if r.is_err() {
                    break;
                }
            }
            r
        } else if let Some(addr) = view.address(node) {
            match self
                .inner
                .peers
                .call(node, addr, Duration::from_secs(5), |c, ctx| {
                    let states = states.clone();
                    async move { c.replicate_many(ctx, states).await }
                })
                .await
            {
                Ok(()) => Ok(()),
                Err(PeerError::Api(api)) => Err(api),
                Err(error) => {
                    tracing::debug!(%node, %error, "hint delivery failed; will retry");
                    return Err(Delivery::Later);
                }
            }
        } else {
            return Err(Delivery::Later);
        };
        match sent {
            Ok(()) => Ok(()),
            Err(api) if super::write::permanent(&api) => {
                tracing::warn!(%node, error = %api, "owner refuses a hinted state");
                Err(Delivery::Refused)
            }
            Err(api) => {
                tracing::debug!(%node, error = %api, "hint delivery failed; will retry");
                Err(Delivery::Later)
            }
        }
    }

    /// Removes a hint that needs no more delivery; false if the store failed or a
    /// newer state was merged into the hint meanwhile (delivered next round).
    fn drop_hint(&self, hint: &Hint) -> bool {
        match self.inner.hints.remove_delivered(hint) {
            Ok(true) => {
                self.inner.hints.delivered.fetch_add(1, Ordering::Relaxed);
                true
            }
            Ok(false) => false,
            Err(error) => {
                tracing::warn!(%error, "cannot drop a delivered hint");
                false
            }
        }
    }

    /// Hands hints to their owner in batches; removes each once delivered (or
    /// refused for good). Stops at the first batch that must wait.
    async fn hand_over(&self, view: &crate::cluster::ClusterView, node: &str, hints: Vec<Hint>) {
        let mut rest = hints.as_slice();
        while !rest.is_empty() {
            let mut n = 0;
            let mut bytes = 0;
            while n < rest.len()
                && n < BATCH_HINTS
                && (n == 0 || bytes + rest[n].object.len() <= BATCH_BYTES)
            {
                bytes += rest[n].object.len();
                n += 1;
            }
            let (batch, later) = rest.split_at(n);
            rest = later;
            let states = batch
                .iter()
                .map(|h| (h.key.clone(), h.object.clone()))
                .collect();
            match self.send_states(view, node, states).await {
                Ok(()) => {
                    for hint in batch {
                        self.drop_hint(hint);
                    }
                }
                // One of them is refused for good: find which, one at a time.
                Err(Delivery::Refused) => {
                    for hint in batch {
                        let one = vec![(hint.key.clone(), hint.object.clone())];
                        match self.send_states(view, node, one).await {
                            Ok(()) => {}
                            Err(Delivery::Refused) => {
                                tracing::warn!(%node, key = ?String::from_utf8_lossy(&hint.key), "owner refuses a hint; dropping it")
                            }
                            Err(Delivery::Later) => return,
                        }
                        self.drop_hint(hint);
                    }
                }
                Err(Delivery::Later) => return,
            }
        }
    }
}
