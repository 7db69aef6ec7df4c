//! Layout of keys in the objects and Merkle keyspaces.
//!
//! Objects live under `partition (u32 BE) ‖ segment (u16 BE) ‖ user key`. DESIGN.md §8
//! says `partition ‖ key`; the segment in between makes every Merkle leaf a contiguous
//! prefix range, so anti-entropy can list the keys behind one differing leaf without
//! scanning the whole partition.

use crate::merkle::LEAVES;

/// Bytes of the fixed prefix before the user key.
pub const PREFIX_LEN: usize = 6;

/// The Merkle segment (leaf index) of a user key: low bits of `blake3(key)`.
///
/// The ring uses the top bits of the same hash for the partition, so segments spread
/// evenly inside every partition.
pub fn segment_of(key: &[u8]) -> u16 {
    let hash = blake3::hash(key);
    let bytes = hash.as_bytes();
    let raw = u16::from_be_bytes([bytes[30], bytes[31]]);
    raw % (LEAVES as u16)
}

/// Digest of one stored object: `blake3(len(key) ‖ key ‖ value)`.
///
/// The key length is included so that `(key, value)` pairs cannot collide by moving
/// bytes across the boundary. Values handed to the store are canonical encodings, so
/// equal digests mean equal logical state.
pub fn object_digest(key: &[u8], value: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&(key.len() as u64).to_be_bytes());
    hasher.update(key);
    hasher.update(value);
    *hasher.finalize().as_bytes()
}

/// Full objects-keyspace key for a user key.
pub fn object_key(partition: u32, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX_LEN + key.len());
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(&segment_of(key).to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// Prefix of every object key of one segment of one partition.
pub fn segment_prefix(partition: u32, segment: u16) -> [u8; PREFIX_LEN] {
    let mut out = [0u8; PREFIX_LEN];
    out[..4].copy_from_slice(&partition.to_be_bytes());
    out[4..].copy_from_slice(&segment.to_be_bytes());
    out
}

/// Splits a stored object key into `(partition, segment, user key)`.
pub fn split_object_key(raw: &[u8]) -> Option<(u32, u16, &[u8])> {
    if raw.len() < PREFIX_LEN {
        return None;
    }
    let partition = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let segment = u16::from_be_bytes([raw[4], raw[5]]);
    Some((partition, segment, &raw[PREFIX_LEN..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_key_round_trips() {
        let raw = object_key(7, b"hello");
        let (p, s, k) = split_object_key(&raw).expect("well formed");
        assert_eq!((p, s, k), (7, segment_of(b"hello"), &b"hello"[..]));
        assert!(split_object_key(&raw[..3]).is_none());
    }

    #[test]
    fn digest_separates_key_and_value() {
        assert_ne!(object_digest(b"ab", b"c"), object_digest(b"a", b"bc"));
    }

    #[test]
    fn segments_stay_in_range() {
        for i in 0u32..10_000 {
            assert!((segment_of(&i.to_be_bytes()) as usize) < LEAVES);
        }
    }
}
