//! The per-partition hash tree used by anti-entropy.
//!
//! Shape: a fixed tree of [`FANOUT`]-way nodes, [`DEPTH`] levels below the root, so
//! [`LEAVES`] leaves (segments). Every node is the XOR of the digests of all objects
//! below it: a leaf covers one segment, the root the whole partition. XOR makes the
//! tree order independent and lets a write update its path in O(DEPTH) point writes
//! (XOR out the old digest, XOR in the new one), in the same storage batch as the
//! object, without reading sibling nodes. Every node is persisted, so a restart reads
//! nothing until a query arrives, and a query reads only the nodes it names.
//!
//! Two replicas' nodes differ exactly where the XOR of the digest differences below
//! them is non-zero; with 256-bit blake3 digests an accidental cancellation has
//! probability 2^-256 per node.
//!
//! With 4,096 leaves per partition, 1,000,000 keys over 256 partitions are about one
//! key per leaf: finding one differing key costs `1 + 16 × 3` hashes plus that leaf's
//! key digests.

/// Children per interior node.
pub const FANOUT: usize = 16;
/// Levels below the root.
pub const DEPTH: u8 = 3;
/// Leaves per partition tree (`FANOUT ^ DEPTH`).
pub const LEAVES: usize = FANOUT * FANOUT * FANOUT;
const _: () = assert!(LEAVES == FANOUT.pow(DEPTH as u32));
const _: () = assert!(LEAVES <= u16::MAX as usize);

/// A 32-byte tree hash; all zeroes means "empty".
pub type Hash = [u8; 32];

/// The all-zero hash of an empty subtree.
pub const EMPTY: Hash = [0u8; 32];

/// XOR of two hashes.
pub fn xor(a: &Hash, b: &Hash) -> Hash {
    let mut out = *a;
    for (o, x) in out.iter_mut().zip(b.iter()) {
        *o ^= x;
    }
    out
}

/// Number of nodes at `level` (0 = root, [`DEPTH`] = leaves).
pub fn nodes_at(level: u8) -> usize {
    FANOUT.pow(u32::from(level))
}

/// `(level, index)` of every node from the root down to the leaf of `segment`.
pub fn path(segment: u16) -> [(u8, u16); DEPTH as usize + 1] {
    let mut out = [(0u8, 0u16); DEPTH as usize + 1];
    for level in 0..=DEPTH {
        let span = nodes_at(DEPTH - level);
        out[level as usize] = (level, (segment as usize / span) as u16);
    }
    out
}

/// Whether `(level, index)` names a node with children.
pub fn is_interior(level: u8, index: u32) -> bool {
    level < DEPTH && (index as usize) < nodes_at(level)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn paths_run_from_root_to_leaf() {
        assert_eq!(path(0), [(0, 0), (1, 0), (2, 0), (3, 0)]);
        assert_eq!(path(4095), [(0, 0), (1, 15), (2, 255), (3, 4095)]);
        assert_eq!(path(17), [(0, 0), (1, 0), (2, 1), (3, 17)]);
        assert!(is_interior(2, 255));
        assert!(!is_interior(3, 0));
        assert!(!is_interior(1, 16));
    }

    proptest! {
        /// A node's parent on the path contains it as one of its children.
        #[test]
        fn parents_contain_children(segment in 0u16..LEAVES as u16) {
            let p = path(segment);
            for w in p.windows(2) {
                let (_, parent) = w[0];
                let (_, child) = w[1];
                prop_assert_eq!(child as usize / FANOUT, parent as usize);
            }
        }

        #[test]
        fn xor_is_its_own_inverse(a in any::<[u8; 32]>(), b in any::<[u8; 32]>()) {
            prop_assert_eq!(xor(&xor(&a, &b), &b), a);
        }
    }
}
