//! ringkv membership: SWIM gossip over foca and UDP, node records merged as a CRDT,
//! and datagram authentication with a keyed-blake3 MAC (DESIGN.md §5).
//!
//! Built so far: [`auth`] (sealing and checking datagrams) and [`record`] (node
//! records and the member set). The foca driver arrives with the cluster issue. This
//! crate knows nothing of the `ringkv` crate or of storage.

pub mod auth;
pub mod record;

pub use auth::{AuthError, ClusterKey};
pub use record::{Members, NodeRecord, Status};
