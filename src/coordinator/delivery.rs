//! Delivery of hints to their owners once gossip says they are alive again.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ringkv_gossip::{Liveness, Status};

use super::Coordinator;
use crate::hints::{DELIVERY_INTERVAL, DELIVERY_RATE, Hint};

/// Hints handed to one owner per round at most.
const PER_ROUND: usize = DELIVERY_RATE * DELIVERY_INTERVAL.as_millis() as usize / 1000;
const _: () = assert!(PER_ROUND > 0);

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
        if coordinator.inner.hints.pending() == 0 {
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
            for hint in hints {
                budget -= 1;
                if !coordinator.hand_over(&view, &record.node_id, &hint).await {
                    break;
                }
            }
        }
        // Now and then, sweep for hints whose owner left the cluster.
        if rounds.is_multiple_of(20) && budget > 0 {
            let Ok(batch) = coordinator.inner.hints.batch(budget) else {
                continue;
            };
            for (owner, hints) in batch {
                let gone = view
                    .record(&owner)
                    .is_none_or(|r| r.status == Status::Removed);
                if !gone {
                    continue;
                }
                for hint in hints {
                    let (primaries, _) = view.walk(&hint.key);
                    let mut ok = !primaries.is_empty();
                    for p in primaries {
                        ok &= coordinator.hand_over(&view, &p, &hint).await;
                    }
                    if !ok {
                        break;
                    }
                }
            }
        }
    }
}

impl Coordinator {
    /// Sends one hint's state to `node`; on success removes the hint.
    async fn hand_over(&self, view: &crate::cluster::ClusterView, node: &str, hint: &Hint) -> bool {
        let sent = if node == view.self_id {
            self.replicate(hint.key.clone(), hint.object.clone())
                .await
                .map_err(|e| e.to_string())
        } else if let Some(addr) = view.address(node) {
            let (k, o) = (hint.key.clone(), hint.object.clone());
            self.inner
                .peers
                .call(addr, Duration::from_secs(2), |c, ctx| async move {
                    c.replicate(ctx, k, o).await
                })
                .await
                .map_err(|e| e.to_string())
        } else {
            Err("no address".to_string())
        };
        match sent {
            Ok(()) => {
                if let Err(error) = self.inner.hints.remove(&hint.id) {
                    tracing::warn!(%error, "cannot drop a delivered hint");
                    return false;
                }
                self.inner.hints.delivered.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(error) => {
                tracing::debug!(%node, %error, "hint delivery failed; will retry");
                false
            }
        }
    }
}
