//! What a node can say about its own health (readiness, liveness) and, as far as
//! it sees, the cluster's: the answers behind `/readyz`, `/livez` and
//! `/v1/cluster/health`.

use std::time::Duration;

use ringkv_gossip::{Liveness, Status};
use serde::{Deserialize, Serialize};

use super::Node;
use crate::cluster::{ClusterView, walk_of};
use crate::rpc::api::{ClusterHealth, HintsFor, Transfers};

/// The local checks behind `/readyz`. Never about other nodes: a readiness that
/// fails when peers are down takes every node out of a Service during a rolling
/// restart (OPS-NOTES.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// The store is open and took its last fsync (not poisoned).
    pub store_open: bool,
    /// This node is an active member and has a ring.
    pub member_with_ring: bool,
    /// It sees itself alive (not removed).
    pub self_alive: bool,
    /// It is not stopping.
    pub not_draining: bool,
}

impl Readiness {
    /// Whether every check passes.
    pub fn ready(&self) -> bool {
        self.store_open && self.member_with_ring && self.self_alive && self.not_draining
    }
}

/// The local checks behind `/livez`: the process works, whatever its peers do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Liveliness {
    /// Milliseconds the storage sync in flight has been running (0: none).
    pub storage_sync_running_ms: u64,
    /// Past this, the node is not live.
    pub stall_threshold_ms: u64,
}

impl Liveliness {
    /// Whether the node is live.
    pub fn live(&self) -> bool {
        self.storage_sync_running_ms < self.stall_threshold_ms
    }
}

/// Partition counts of `view`: (all primaries alive, >= w alive, >= r alive).
pub fn partition_health(view: &ClusterView, r: usize, w: usize) -> (u64, u64, u64, u64) {
    let Some(ring) = &view.ring else {
        return (0, 0, 0, 0);
    };
    let (mut all, mut wq, mut rq) = (0, 0, 0);
    for p in 0..ring.ring_size() {
        let (primaries, _) = walk_of(ring, p, view.n);
        let alive = primaries
            .iter()
            .filter(|id| view.liveness_of(id) == Liveness::Alive)
            .count();
        all += u64::from(alive == primaries.len());
        wq += u64::from(alive >= w);
        rq += u64::from(alive >= r);
    }
    (u64::from(ring.ring_size()), all, wq, rq)
}

impl Node {
    /// The checks behind `/readyz`.
    pub fn readiness(&self) -> Readiness {
        let view = self.cluster().view();
        let own = view.record(self.node_id());
        Readiness {
            store_open: !self.coordinator().replica().store().is_poisoned(),
            member_with_ring: own.is_some_and(|r| r.status == Status::Active)
                && view.ring.is_some(),
            self_alive: !self.cluster().is_removed()
                && view.liveness_of(self.node_id()) == Liveness::Alive,
            not_draining: !self.lifecycle.is_draining(),
        }
    }

    /// The checks behind `/livez`.
    pub fn liveliness(&self, stall_threshold: Duration) -> Liveliness {
        let running = self
            .coordinator()
            .replica()
            .store()
            .sync_running_for()
            .unwrap_or(Duration::ZERO);
        Liveliness {
            storage_sync_running_ms: running.as_millis() as u64,
            stall_threshold_ms: stall_threshold.as_millis() as u64,
        }
    }

    /// `/v1/cluster/health`.
    pub fn cluster_health(&self) -> ClusterHealth {
        let view = self.cluster().view();
        let s = self.coordinator().settings();
        let (partitions, all, wq, rq) = partition_health(&view, usize::from(s.r), usize::from(s.w));
        let members: Vec<_> = view
            .members
            .iter()
            .filter(|r| r.status != Status::Removed)
            .collect();
        let not_alive: Vec<String> = members
            .iter()
            .filter(|r| view.liveness_of(&r.node_id) != Liveness::Alive)
            .map(|r| r.node_id.clone())
            .collect();
        let repair = self.repair().status();
        let epoch = view.epoch_hex();
        let agreement = !epoch.is_empty()
            && members
                .iter()
                .filter(|r| {
                    r.node_id != view.self_id
                        && r.status == Status::Active
                        && view.liveness_of(&r.node_id) == Liveness::Alive
                })
                .all(|r| repair.peer_epochs.get(&r.node_id) == Some(&epoch));
        let hints = self.coordinator().hints();
        let hints_pending = hints.pending();
        ClusterHealth {
            node_id: self.node_id().to_string(),
            members: members.len() as u64,
            members_alive: (members.len() - not_alive.len()) as u64,
            members_not_alive: not_alive,
            partitions,
            partitions_all_up: all,
            partitions_write_quorum: wq,
            partitions_read_quorum: rq,
            n: s.n,
            r: s.r,
            w: s.w,
            hints_pending,
            hints_oldest_seconds: hints.oldest_age().as_secs(),
            handoffs_in_flight: repair.handoffs_in_flight,
            ring_epoch: epoch,
            ring_agreement: agreement,
            healthy: partitions > 0 && all == partitions && hints_pending == 0,
        }
    }
}

impl Node {
    /// What `ringkv transfers` shows: partitions this node hands off (keys and
    /// bytes left in each, read now, at most [`SCAN_LIMIT`] keys per partition),
    /// what anti-entropy and handoff moved so far, and hints by target.
    pub fn transfers(&self) -> Transfers {
        let view = self.cluster().view();
        let store = self.coordinator().replica().store();
        let mut out_partitions = Vec::new();
        if let Some(ring) = &view.ring {
            for p in 0..ring.ring_size() {
                let (primaries, _) = walk_of(ring, p, view.n);
                if primaries.iter().any(|id| *id == view.self_id) {
                    continue;
                }
                let (mut keys, mut bytes) = (0u64, 0u64);
                for item in store.scan_partition(p).take(SCAN_LIMIT) {
                    let Ok((k, v)) = item else { break };
                    keys += 1;
                    bytes += (k.len() + v.len()) as u64;
                }
                if keys > 0 {
                    out_partitions.push((p, primaries, keys, bytes));
                }
            }
        }
        let repair = self.repair().status();
        let hints = self.coordinator().hints();
        Transfers {
            node_id: self.node_id().to_string(),
            handoffs_out: out_partitions
                .into_iter()
                .map(
                    |(partition, to, keys_left, bytes_left)| crate::rpc::api::Handoff {
                        partition,
                        to,
                        keys_left,
                        bytes_left,
                    },
                )
                .collect(),
            handoffs_done: repair.handoffs_done,
            keys_moved: repair.keys_repaired,
            bytes_sent: repair.bytes_sent,
            bytes_received: repair.bytes_received,
            hints: hints
                .by_owner()
                .into_iter()
                .map(|(target, pending)| HintsFor { target, pending })
                .collect(),
            hints_pending: hints.pending(),
            hints_bytes: hints.bytes(),
        }
    }
}

/// Keys read at most per partition for [`Node::transfers`].
pub const SCAN_LIMIT: usize = 1_000_000;
