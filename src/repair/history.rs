//! Forgetting earlier rings once their data has moved.
//!
//! After a ring change, reads also ask the partitions' earlier primaries (they keep
//! their copies until their handoff is done), which costs every read of a moved key
//! a replica read more. Each round, once the ring has settled, this node asks every
//! earlier primary for the roots of the partitions it no longer owns (the
//! anti-entropy request every release answers): all empty means it has handed them
//! off and dropped its copies, since a handoff drops the giver's copy only after the
//! new owners made it durable. When every earlier primary of a ring has, the ring
//! leaves the history and reads stop asking its owners.
//!
//! Members an operator removed do not hold a ring back (their copies were declared
//! lost); one that is down does, until it is back and has handed off, or is removed.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use ringkv_gossip::Liveness;
use ringkv_storage::EMPTY;

use super::{REQUEST_TIMEOUT, Repair};
use crate::cluster::{ClusterView, walk_of};
use crate::ring::Ring;

/// Partitions each earlier primary of `old` held that it does not own in `now`.
pub(super) fn owed(old: &Ring, now: &Ring, n: usize) -> BTreeMap<String, Vec<u32>> {
    let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    if old.ring_size() != now.ring_size() {
        return out;
    }
    for p in 0..now.ring_size() {
        let (then, _) = walk_of(old, p, n);
        let (current, _) = walk_of(now, p, n);
        for id in then {
            if !current.contains(&id) {
                out.entry(id).or_default().push(p);
            }
        }
    }
    out
}

impl Repair {
    /// Forgets the earlier rings whose moved partitions every earlier primary has
    /// handed off; returns how many it forgot.
    pub(super) async fn forget_settled_rings(&self, view: &ClusterView) -> usize {
        let Some(now) = view.ring.as_ref() else {
            return 0;
        };
        let mut done = Vec::new();
        for old in &view.previous {
            let mut all = true;
            for (id, parts) in owed(old, now, view.n) {
                if !self.handed_off(view, &id, parts).await {
                    all = false;
                    break;
                }
            }
            if all {
                done.push(old.epoch());
            }
        }
        if done.is_empty() {
            return 0;
        }
        let forgotten = self.coordinator.cluster().forget_rings(&done);
        if forgotten > 0 {
            tracing::info!(
                forgotten,
                "earlier rings forgotten: their partitions are all on their new owners"
            );
            self.counters
                .rings_forgotten
                .fetch_add(forgotten as u64, Ordering::Relaxed);
        }
        forgotten
    }

    /// Whether `id` holds nothing of `parts` any more.
    async fn handed_off(&self, view: &ClusterView, id: &str, parts: Vec<u32>) -> bool {
        if view.is_removed(id) {
            return true;
        }
        if id == view.self_id {
            let store = self.coordinator.replica().store();
            return parts
                .iter()
                .all(|p| store.root(*p).is_ok_and(|r| r == EMPTY));
        }
        if view.liveness_of(id) != Liveness::Alive {
            return false;
        }
        let Some(addr) = view.address(id) else {
            return false;
        };
        let asked = parts.len();
        let answer = self
            .coordinator
            .peers()
            .call(id, addr, REQUEST_TIMEOUT, |c, ctx| {
                let parts = parts.clone();
                async move { c.ae_roots(ctx, parts).await }
            })
            .await;
        match answer {
            // On another ring it may not have handed off what this one moved.
            Ok((epoch, roots)) => {
                epoch == view.epoch_hex()
                    && roots.len() == asked
                    && roots.iter().all(|r| *r == EMPTY)
            }
            Err(error) => {
                tracing::debug!(node = %id, %error, "cannot ask an earlier owner about its handoff");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::Member;

    fn ring(ids: &[&str]) -> Ring {
        let members: Vec<Member> = ids
            .iter()
            .map(|id| Member {
                id: (*id).to_string(),
                zone: String::new(),
            })
            .collect();
        Ring::build(&members, 64, 3).expect("ring")
    }

    #[test]
    fn what_earlier_primaries_owe_is_what_they_no_longer_own() {
        let old = ring(&["a", "b", "c", "d"]);
        let now = ring(&["a", "b", "c", "d", "e"]);
        let owed = owed(&old, &now, 3);
        assert!(!owed.is_empty(), "a join moves partitions");
        assert!(!owed.contains_key("e"), "the newcomer owed nothing");
        for (id, parts) in &owed {
            for p in parts {
                assert!(walk_of(&old, *p, 3).0.contains(id));
                assert!(!walk_of(&now, *p, 3).0.contains(id));
            }
        }
        // Every moved primary slot is owed by someone.
        let moved: usize = (0..64)
            .map(|p| {
                let (a, b) = (walk_of(&old, p, 3).0, walk_of(&now, p, 3).0);
                a.iter().filter(|x| !b.contains(x)).count()
            })
            .sum();
        assert_eq!(owed.values().map(Vec::len).sum::<usize>(), moved);
        assert!(super::owed(&now, &now, 3).is_empty());
    }
}
