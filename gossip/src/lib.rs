//! ringkv membership: SWIM gossip over foca and UDP, node records merged as a CRDT,
//! and datagram authentication with a keyed-blake3 MAC (DESIGN.md §5).
//!
//! [`auth`] seals and checks datagrams, [`replay`] drops replayed ones, [`record`] holds node records and the member
//! set, [`membership`] drives foca without I/O. This crate knows nothing of the
//! `ringkv` crate or of storage: the node's tokio shell owns the socket and the clock.

pub mod auth;
pub mod membership;
pub mod record;
pub mod replay;

pub use auth::{AuthError, ClusterKey, Stamp};
pub use membership::{
    Gossip, GossipConfig, GossipStats, GossipTimer, Identity, Liveness, MAX_SEEDS, Output,
    node_hash,
};
pub use record::{Members, NodeRecord, Status};
