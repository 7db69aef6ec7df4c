//! ringkv membership: SWIM gossip over foca and UDP, node records merged as a CRDT,
//! and datagram authentication with a keyed-blake3 MAC (DESIGN.md §5).
//!
//! Not built yet: the cluster issue fills this crate. It will know nothing of the
//! `ringkv` crate or of storage; the node hands it a UDP socket through the transport
//! seam.
