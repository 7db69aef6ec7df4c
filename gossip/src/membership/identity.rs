//! Who a member is to SWIM ([`Identity`]) and what SWIM says about it ([`Liveness`]).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A node's SWIM identity: its address, a generation that rises on every start,
/// so a restarted node wins over its previous incarnation at once, and which node
/// it is ([`node_hash`] of its id: 0 while unknown, as for a seed announced to).
///
/// The node is part of it so liveness belongs to a node, not to an address: a node
/// wiped and started again at the same address under a new id must not make the
/// old id look alive (review C10: W=2 was then met by one disk).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Identity {
    /// UDP address (same port number as the node's RPC address).
    pub addr: SocketAddr,
    /// Start count of the node's data directory.
    pub generation: u64,
    /// [`node_hash`] of the node id.
    pub node: u64,
}

/// The 64-bit hash of a node id that SWIM identities carry.
pub fn node_hash(node_id: &str) -> u64 {
    let h = blake3::hash(node_id.as_bytes());
    u64::from_be_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

impl foca::Identity for Identity {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Identity {
            generation: self.generation + 1,
            ..*self
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.generation, self.node) > (adversary.generation, adversary.node)
    }
}

/// What SWIM says about a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Liveness {
    /// Answering probes.
    Alive,
    /// Missed a probe; may be down.
    Suspect,
    /// Declared down (or left).
    Down,
    /// Never seen by SWIM.
    Unknown,
}

impl std::fmt::Display for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Liveness::Alive => "alive",
            Liveness::Suspect => "suspect",
            Liveness::Down => "down",
            Liveness::Unknown => "unknown",
        })
    }
}
