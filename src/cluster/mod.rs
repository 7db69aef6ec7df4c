//! The node's view of the cluster: members, their liveness, and the ring they form.
//!
//! The gossip shell ([`shell`]) owns the membership state machine and publishes a new
//! immutable [`ClusterView`] whenever members or liveness change; requests read the
//! current view without locks held across awaits. The ring is rebuilt only when the
//! set of ring members changes, and the last few rings are kept so reads can find
//! data that a ring change left on its previous owners (until ownership handoff).

pub mod shell;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use ringkv_gossip::{GossipStats, Liveness, Members, NodeRecord, Status};

use crate::ring::{Member, Ring, partition_of};

/// Previous rings kept for reads that miss on the current owners.
pub const RING_HISTORY: usize = 8;

/// One immutable snapshot of the cluster as this node sees it.
#[derive(Debug)]
pub struct ClusterView {
    /// This node's id.
    pub self_id: String,
    /// All member records.
    pub members: Members,
    /// SWIM liveness per node id.
    pub liveness: BTreeMap<String, Liveness>,
    /// The ring of the active members (`None` until some member is active).
    pub ring: Option<Arc<Ring>>,
    /// Earlier rings, newest first, at most [`RING_HISTORY`].
    pub previous: Vec<Arc<Ring>>,
    /// Replicas per key.
    pub n: usize,
    addresses: BTreeMap<String, SocketAddr>,
}

/// Members whose records make them own partitions: active ones. Leaving members
/// give their partitions up at once (they keep serving reads of what they hold).
pub fn ring_members(members: &Members) -> Vec<Member> {
    members
        .iter()
        .filter(|r| r.status == Status::Active)
        .map(|r| Member {
            id: r.node_id.clone(),
            zone: r.zone.clone(),
        })
        .collect()
}

impl ClusterView {
    /// A view of `members`, reusing `prior`'s ring if the ring members did not change.
    /// `liveness_by_node` is SWIM's, by [`ringkv_gossip::node_hash`] of node ids: a
    /// member whose node SWIM does not know is unknown, whoever holds its address.
    pub fn new(
        self_id: String,
        members: Members,
        liveness_by_node: &BTreeMap<u64, Liveness>,
        ring_size: u32,
        n: usize,
        prior: Option<&ClusterView>,
    ) -> ClusterView {
        let mut addresses = BTreeMap::new();
        let mut liveness = BTreeMap::new();
        for r in members.iter() {
            let addr: Option<SocketAddr> = r.address.parse().ok();
            if let Some(a) = addr {
                addresses.insert(r.node_id.clone(), a);
            }
            let l = if r.node_id == self_id {
                Liveness::Alive
            } else {
                liveness_by_node
                    .get(&ringkv_gossip::node_hash(&r.node_id))
                    .copied()
                    .unwrap_or(Liveness::Unknown)
            };
            liveness.insert(r.node_id.clone(), l);
        }
        let mut wanted = ring_members(&members);
        wanted.sort();
        let (ring, previous) = match prior {
            Some(p) if p.ring.as_ref().map(|r| r.members().to_vec()) == Some(wanted.clone()) => {
                (p.ring.clone(), p.previous.clone())
            }
            _ if wanted.is_empty() => (
                None,
                prior.map(|p| p.history_with_current()).unwrap_or_default(),
            ),
            _ => {
                let ring = Ring::build(&wanted, ring_size, n).ok().map(Arc::new);
                (
                    ring,
                    prior.map(|p| p.history_with_current()).unwrap_or_default(),
                )
            }
        };
        ClusterView {
            self_id,
            members,
            liveness,
            ring,
            previous,
            n,
            addresses,
        }
    }

    /// This view without the earlier rings of `epochs`.
    fn without_rings(&self, epochs: &[[u8; 32]]) -> ClusterView {
        ClusterView {
            self_id: self.self_id.clone(),
            members: self.members.clone(),
            liveness: self.liveness.clone(),
            ring: self.ring.clone(),
            previous: self
                .previous
                .iter()
                .filter(|r| !epochs.contains(&r.epoch()))
                .cloned()
                .collect(),
            n: self.n,
            addresses: self.addresses.clone(),
        }
    }

    fn history_with_current(&self) -> Vec<Arc<Ring>> {
        let mut h: Vec<Arc<Ring>> = self.ring.iter().cloned().collect();
        h.extend(self.previous.iter().cloned());
        h.truncate(RING_HISTORY);
        h
    }

    /// RPC address of a member.
    pub fn address(&self, node_id: &str) -> Option<SocketAddr> {
        self.addresses.get(node_id).copied()
    }

    /// The record of a member.
    pub fn record(&self, node_id: &str) -> Option<&NodeRecord> {
        self.members.get(node_id)
    }

    /// Whether `node_id` is a member an operator removed.
    pub fn is_removed(&self, node_id: &str) -> bool {
        self.record(node_id)
            .is_some_and(|r| r.status == Status::Removed)
    }

    /// SWIM's view of a member.
    pub fn liveness_of(&self, node_id: &str) -> Liveness {
        self.liveness
            .get(node_id)
            .copied()
            .unwrap_or(Liveness::Unknown)
    }

    /// Whether requests should be sent to a member (it is not known to be down).
    pub fn reachable(&self, node_id: &str) -> bool {
        self.liveness_of(node_id) != Liveness::Down
    }

    /// The primaries of `key` then the fallbacks (every other ring member, in walk
    /// order). Empty when there is no ring yet.
    pub fn walk(&self, key: &[u8]) -> (Vec<String>, Vec<String>) {
        let Some(ring) = &self.ring else {
            return (Vec::new(), Vec::new());
        };
        walk_of(ring, partition_of(key, ring.ring_size()), self.n)
    }

    /// Primaries of `key` in earlier rings that are not primaries now, newest first.
    pub fn previous_primaries(&self, key: &[u8]) -> Vec<String> {
        let (now, _) = self.walk(key);
        let mut out: Vec<String> = Vec::new();
        for ring in &self.previous {
            let (p, _) = walk_of(ring, partition_of(key, ring.ring_size()), self.n);
            for id in p {
                if !now.contains(&id) && !out.contains(&id) {
                    out.push(id);
                }
            }
        }
        out
    }

    /// Epoch of the current ring, hex (empty without a ring).
    pub fn epoch_hex(&self) -> String {
        self.ring
            .as_ref()
            .map(|r| hex(&r.epoch()[..8]))
            .unwrap_or_default()
    }
}

/// Primaries and fallbacks of `partition` on `ring`.
pub fn walk_of(ring: &Ring, partition: u32, n: usize) -> (Vec<String>, Vec<String>) {
    let all = ring.preference_list(partition, ring.members().len());
    let mut primaries: Vec<String> = all.iter().map(|m| m.id.clone()).collect();
    let fallbacks = primaries.split_off(n.min(primaries.len()));
    (primaries, fallbacks)
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Revivals a receiver may fall behind by before it is told it lagged.
pub const REVIVALS_QUEUE: usize = 64;

/// A member that came back (see [`ClusterState::revivals`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revival {
    /// Its node id.
    pub node_id: String,
    /// Under a higher generation than seen before: a new process, so connections
    /// to the old one are dead, and it may run another release.
    pub restarted: bool,
}

/// Node hashes that came back between two looks at SWIM, each with whether it
/// restarted: alive now, and either not alive before or alive under a higher
/// generation (restarted between two probes, never suspected).
pub fn revived(
    liveness_before: &BTreeMap<u64, Liveness>,
    liveness_now: &BTreeMap<u64, Liveness>,
    generations_before: &BTreeMap<u64, u64>,
    generations_now: &BTreeMap<u64, u64>,
) -> BTreeMap<u64, bool> {
    liveness_now
        .iter()
        .filter(|(_, l)| **l == Liveness::Alive)
        .filter_map(|(h, _)| {
            // A first sighting is no restart: nothing was known of it.
            let restarted = generations_before
                .get(h)
                .is_some_and(|before| generations_now.get(h) > Some(before));
            (liveness_before.get(h) != Some(&Liveness::Alive) || restarted)
                .then_some((*h, restarted))
        })
        .collect()
}

/// What the rest of the node shares with the gossip shell.
pub struct ClusterState {
    view: RwLock<Arc<ClusterView>>,
    gossip_stats: RwLock<GossipStats>,
    commands: tokio::sync::mpsc::Sender<shell::Command>,
    /// An operator removed this node: it serves, repairs and hands off nothing more.
    removed: std::sync::atomic::AtomicBool,
    /// Ids of members that came back: a new start (generation) seen, or SWIM alive
    /// again after suspicion or down (see [`ClusterState::revivals`]).
    revivals: tokio::sync::broadcast::Sender<Revival>,
}

impl ClusterState {
    /// Whether an operator removed this node from the cluster. Its data was declared
    /// lost: it must not push any of it into the cluster (anti-entropy, handoff,
    /// hints, read repair), and it serves no requests.
    pub fn is_removed(&self) -> bool {
        self.removed.load(std::sync::atomic::Ordering::Acquire)
    }

    fn set_removed(&self) {
        self.removed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The current view.
    pub fn view(&self) -> Arc<ClusterView> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forgets the earlier rings of `epochs` (their moved partitions are all on
    /// their new owners): reads stop asking those rings' owners. Returns how many
    /// were forgotten. Done on the view current at the time, so a view the gossip
    /// shell published meanwhile is never overwritten by an older one.
    pub fn forget_rings(&self, epochs: &[[u8; 32]]) -> usize {
        let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
        let next = view.without_rings(epochs);
        let forgotten = view.previous.len() - next.previous.len();
        if forgotten > 0 {
            *view = Arc::new(next);
        }
        forgotten
    }

    fn set_view(&self, v: ClusterView) {
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(v);
    }

    /// Members that came back from now on: a restarted node (a higher generation),
    /// or one SWIM holds alive again. Removed members are left out. Whoever stopped dialling it after
    /// failures may dial again at once. A receiver that falls behind gets
    /// `Lagged` and should treat every member as come back.
    pub fn revivals(&self) -> tokio::sync::broadcast::Receiver<Revival> {
        self.revivals.subscribe()
    }

    /// Datagram counters.
    pub fn gossip_stats(&self) -> GossipStats {
        *self.gossip_stats.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the gossip shell to do something.
    ///
    /// # Errors
    /// If the shell has stopped.
    pub async fn command(&self, c: shell::Command) -> Result<(), String> {
        self.commands
            .send(c)
            .await
            .map_err(|_| "membership has stopped".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ids: &[&str]) -> Members {
        let mut m = Members::new();
        for (i, id) in ids.iter().enumerate() {
            m.apply(NodeRecord {
                version: 1,
                status: Status::Active,
                node_id: (*id).into(),
                address: format!("127.0.0.1:{}", 7000 + i),
                zone: String::new(),
            });
        }
        m
    }

    #[test]
    fn a_member_revives_when_alive_again_or_restarted_and_not_otherwise() {
        let l = |v: &[(u64, Liveness)]| v.iter().copied().collect::<BTreeMap<_, _>>();
        let g = |v: &[(u64, u64)]| v.iter().copied().collect::<BTreeMap<_, _>>();
        use Liveness::{Alive, Down, Suspect};
        let before = l(&[(1, Alive), (2, Suspect), (3, Down), (4, Alive)]);
        let now = l(&[(1, Alive), (2, Alive), (3, Alive), (4, Alive), (5, Alive)]);
        let gen_before = g(&[(1, 1), (2, 1), (3, 1), (4, 1)]);
        let gen_now = g(&[(1, 1), (2, 1), (3, 2), (4, 2), (5, 1)]);
        // 1: unchanged; 2: alive again; 3: alive again, restarted; 4: restarted
        // unsuspected; 5: new.
        assert_eq!(
            revived(&before, &now, &gen_before, &gen_now),
            BTreeMap::from([(2, false), (3, true), (4, true), (5, false)])
        );
        assert!(revived(&now, &now, &gen_now, &gen_now).is_empty());
        // Going down is no revival, whatever the generation says.
        let down = l(&[(1, Down), (2, Suspect)]);
        assert!(revived(&now, &down, &gen_now, &g(&[(1, 9), (2, 9)])).is_empty());
    }

    /// The view of node "a" among `ids`, 64 partitions, N=3, nobody's liveness known.
    fn view(ids: &[&str], prior: Option<&ClusterView>) -> ClusterView {
        ClusterView::new("a".into(), members(ids), &BTreeMap::new(), 64, 3, prior)
    }

    #[test]
    fn walk_gives_n_distinct_primaries_then_the_rest() {
        let v = view(&["a", "b", "c", "d", "e"], None);
        for k in 0..100u32 {
            let (p, f) = v.walk(&k.to_be_bytes());
            assert_eq!(p.len(), 3);
            assert_eq!(f.len(), 2);
            let mut all = p.clone();
            all.extend(f);
            all.sort();
            all.dedup();
            assert_eq!(all.len(), 5);
        }
    }

    #[test]
    fn ring_history_keeps_earlier_owners() {
        let v1 = view(&["a", "b", "c"], None);
        assert!(v1.previous.is_empty());
        let v2 = view(&["a", "b", "c", "d"], Some(&v1));
        assert_eq!(v2.previous.len(), 1);
        assert_ne!(v1.epoch_hex(), v2.epoch_hex());
        // Some key moved to d; its earlier primaries are remembered.
        let moved = (0..1000u32)
            .map(|k| k.to_be_bytes())
            .find(|k| v2.walk(k).0.contains(&"d".to_string()))
            .expect("d owns something");
        assert!(!v2.previous_primaries(&moved).is_empty());
        // Same members again: the ring is reused, history unchanged.
        let v3 = view(&["a", "b", "c", "d"], Some(&v2));
        assert_eq!(v3.previous.len(), 1);
        assert!(Arc::ptr_eq(
            v3.ring.as_ref().expect("ring"),
            v2.ring.as_ref().expect("ring")
        ));
    }

    #[test]
    fn a_forgotten_ring_is_no_longer_asked_and_stays_forgotten() {
        let v1 = view(&["a", "b", "c"], None);
        let v2 = view(&["a", "b", "c", "d"], Some(&v1));
        let moved = (0..1000u32)
            .map(|k| k.to_be_bytes())
            .find(|k| !v2.previous_primaries(k).is_empty())
            .expect("some key moved");
        let old = v1.ring.as_ref().expect("ring").epoch();
        let pruned = v2.without_rings(&[old]);
        assert!(pruned.previous.is_empty());
        assert!(pruned.previous_primaries(&moved).is_empty());
        assert_eq!(
            pruned.walk(&moved),
            v2.walk(&moved),
            "the current ring stays"
        );
        // The next view built on it (liveness changed, same members) keeps it forgotten.
        let v3 = view(&["a", "b", "c", "d"], Some(&pruned));
        assert!(v3.previous.is_empty());
        // Unknown epochs change nothing.
        assert_eq!(v2.without_rings(&[[9u8; 32]]).previous.len(), 1);
    }
}
