//! Node records and the member set they form, merged as a CRDT (DESIGN.md §5).
//!
//! Each node publishes its own record with a rising version; operators' decisions
//! about a node (`remove`) are published by any node, and removal is final (a node id
//! once removed cannot come back; a wiped node rejoins under a new id). Merging
//! keeps, per node id, the record with the highest version; records with equal
//! versions but different contents (which only a misbehaving node produces) are
//! ordered by a total order on their contents, so every node still converges.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Lifecycle of a member. Ordered: a later state wins a version tie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Status {
    /// Announced, not yet owning partitions.
    Joining,
    /// A full member.
    Active,
    /// Handing its partitions away.
    Leaving,
    /// Gone for good (left, or removed by an operator).
    Removed,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Joining => "joining",
            Status::Active => "active",
            Status::Leaving => "leaving",
            Status::Removed => "removed",
        })
    }
}

/// What a node says about itself (or an operator about it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Version: higher wins.
    pub version: u64,
    /// Lifecycle state.
    pub status: Status,
    /// Node id.
    pub node_id: String,
    /// RPC address (`host:port`); gossip uses the same port over UDP.
    pub address: String,
    /// Failure zone; empty when not given.
    pub zone: String,
}

impl NodeRecord {
    /// Whether `self` should replace `other` (same node id).
    ///
    /// Removal is final: a removed record beats any record that is not removed,
    /// whatever its version, so a removed node that restarts (with a higher version)
    /// cannot undo its removal. Otherwise the derived `Ord` decides: version first,
    /// then status, then the rest. That is a total order, so merges commute.
    pub fn supersedes(&self, other: &NodeRecord) -> bool {
        let removed = |r: &NodeRecord| r.status == Status::Removed;
        (removed(self), self) > (removed(other), other)
    }
}

/// The member set: one record per node id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    records: BTreeMap<String, NodeRecord>,
}

impl Members {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Merges one record; returns whether it changed the set.
    pub fn apply(&mut self, record: NodeRecord) -> bool {
        match self.records.get(&record.node_id) {
            Some(current) if !record.supersedes(current) => false,
            _ => {
                self.records.insert(record.node_id.clone(), record);
                true
            }
        }
    }

    /// Merges another set; returns the ids whose record changed.
    pub fn merge(&mut self, other: &Members) -> Vec<String> {
        other
            .records
            .values()
            .filter(|r| self.apply((*r).clone()))
            .map(|r| r.node_id.clone())
            .collect()
    }

    /// The record of a node.
    pub fn get(&self, node_id: &str) -> Option<&NodeRecord> {
        self.records.get(node_id)
    }

    /// All records, by node id.
    pub fn iter(&self) -> impl Iterator<Item = &NodeRecord> {
        self.records.values()
    }

    /// Records of members that own partitions (active or leaving), by node id.
    pub fn ring_members(&self) -> impl Iterator<Item = &NodeRecord> {
        self.records
            .values()
            .filter(|r| matches!(r.status, Status::Active | Status::Leaving))
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Number of records of members that are not removed.
    pub fn live_len(&self) -> usize {
        self.records
            .values()
            .filter(|r| r.status != Status::Removed)
            .count()
    }

    /// Keeps at most `max` records of removed members, forgetting those lowest in
    /// (version, node id) order. Every node forgets the same ones, so member sets
    /// still converge; a node whose record is forgotten could rejoin, which is why
    /// the bound is generous.
    pub fn forget_oldest_removed(&mut self, max: usize) {
        let mut removed: Vec<(u64, String)> = self
            .records
            .values()
            .filter(|r| r.status == Status::Removed)
            .map(|r| (r.version, r.node_id.clone()))
            .collect();
        if removed.len() <= max {
            return;
        }
        removed.sort_unstable();
        for (_, id) in &removed[..removed.len() - max] {
            self.records.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record() -> impl Strategy<Value = NodeRecord> {
        (0u64..4, 0u8..4, 0u8..3, 0u8..2).prop_map(|(version, status, id, addr)| NodeRecord {
            version,
            status: [
                Status::Joining,
                Status::Active,
                Status::Leaving,
                Status::Removed,
            ][status as usize],
            node_id: format!("n{id}"),
            address: format!("127.0.0.1:{}", 7400 + u16::from(addr)),
            zone: String::new(),
        })
    }

    fn set() -> impl Strategy<Value = Members> {
        proptest::collection::vec(record(), 0..8).prop_map(|rs| {
            let mut m = Members::new();
            for r in rs {
                m.apply(r);
            }
            m
        })
    }

    fn merged(a: &Members, b: &Members) -> Members {
        let mut out = a.clone();
        out.merge(b);
        out
    }

    proptest! {
        #[test]
        fn merge_laws(a in set(), b in set(), c in set()) {
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
            prop_assert_eq!(merged(&a, &a), a.clone());
        }
    }

    #[test]
    fn higher_version_wins_and_ties_prefer_later_states() {
        let mut m = Members::new();
        let base = NodeRecord {
            version: 1,
            status: Status::Active,
            node_id: "a".into(),
            address: "127.0.0.1:1".into(),
            zone: String::new(),
        };
        assert!(m.apply(base.clone()));
        assert!(!m.apply(base.clone()), "same record changes nothing");
        assert!(!m.apply(NodeRecord {
            version: 0,
            status: Status::Leaving,
            ..base.clone()
        }));
        assert!(m.apply(NodeRecord {
            status: Status::Leaving,
            ..base.clone()
        }));
        assert!(m.apply(NodeRecord {
            version: 2,
            status: Status::Joining,
            ..base.clone()
        }));
        assert_eq!(m.get("a").map(|r| r.status), Some(Status::Joining));
        assert_eq!(m.ring_members().count(), 0);
        assert_eq!(m.len(), 1);
        // Removal is final, even against a restart's higher version.
        assert!(m.apply(NodeRecord {
            version: 3,
            status: Status::Removed,
            ..base.clone()
        }));
        assert!(!m.apply(NodeRecord {
            version: 1 << 40,
            status: Status::Active,
            ..base.clone()
        }));
        assert_eq!(m.get("a").map(|r| r.status), Some(Status::Removed));
    }
}
