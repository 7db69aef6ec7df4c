//! The per-partition hash tree used by anti-entropy.
//!
//! Shape: a fixed tree of [`FANOUT`]-way nodes, [`DEPTH`] levels below the root, so
//! [`LEAVES`] leaves. A leaf is the XOR of the digests of the objects in its segment:
//! order independent, and updated in O(1) by XOR-ing out the old digest and in the new
//! one, in the same storage batch as the object. Interior nodes are recomputed from the
//! leaves lazily (only when a query arrives after a change), so writes pay one leaf
//! update and a restart reads only the persisted leaves, never the keys.
//!
//! With 4,096 leaves per partition, a replica of 1,000,000 keys over 256 partitions
//! has about one key per leaf; finding one differing key costs `1 + 16 × 3` hashes
//! plus the leaf's key digests.

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

fn combine(children: &[Hash]) -> Hash {
    if children.iter().all(|c| c == &EMPTY) {
        return EMPTY;
    }
    let mut hasher = blake3::Hasher::new();
    for child in children {
        hasher.update(child);
    }
    *hasher.finalize().as_bytes()
}

/// The hash tree of one partition.
#[derive(Clone, Debug)]
pub struct PartitionTree {
    /// `levels[d]` holds the `FANOUT^d` hashes of level `d`; `levels[DEPTH]` are leaves.
    levels: Vec<Vec<Hash>>,
    dirty: bool,
}

impl Default for PartitionTree {
    fn default() -> Self {
        Self::new()
    }
}

impl PartitionTree {
    /// An empty tree.
    pub fn new() -> Self {
        let levels = (0..=DEPTH).map(|d| vec![EMPTY; nodes_at(d)]).collect();
        PartitionTree {
            levels,
            dirty: false,
        }
    }

    /// The current value of one leaf.
    pub fn leaf(&self, segment: u16) -> Hash {
        self.levels[DEPTH as usize][segment as usize]
    }

    /// Replaces one leaf.
    ///
    /// # Panics
    /// If `segment` is not below [`LEAVES`] (an invariant of the key layout).
    pub fn set_leaf(&mut self, segment: u16, value: Hash) {
        assert!((segment as usize) < LEAVES, "segment {segment} out of range");
        self.levels[DEPTH as usize][segment as usize] = value;
        self.dirty = true;
    }

    fn refresh(&mut self) {
        if !self.dirty {
            return;
        }
        for level in (0..DEPTH as usize).rev() {
            let (upper, lower) = self.levels.split_at_mut(level + 1);
            for (i, node) in upper[level].iter_mut().enumerate() {
                *node = combine(&lower[0][i * FANOUT..(i + 1) * FANOUT]);
            }
        }
        self.dirty = false;
    }

    /// The root hash ([`EMPTY`] for an empty partition).
    pub fn root(&mut self) -> Hash {
        self.refresh();
        self.levels[0][0]
    }

    /// The hashes of the children of node `index` at `level` (`level < DEPTH`).
    pub fn children(&mut self, level: u8, index: u32) -> Option<Vec<Hash>> {
        if level >= DEPTH || index as usize >= nodes_at(level) {
            return None;
        }
        self.refresh();
        let start = index as usize * FANOUT;
        Some(self.levels[level as usize + 1][start..start + FANOUT].to_vec())
    }

    /// Whether every leaf is empty.
    pub fn is_empty(&mut self) -> bool {
        self.root() == EMPTY
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(i: u8) -> Hash {
        *blake3::hash(&[i]).as_bytes()
    }

    #[test]
    fn empty_tree_has_empty_root() {
        assert_eq!(PartitionTree::new().root(), EMPTY);
    }

    #[test]
    fn xor_in_and_out_restores_the_root() {
        let mut t = PartitionTree::new();
        t.set_leaf(5, h(1));
        let root = t.root();
        let leaf = xor(&t.leaf(5), &h(2));
        t.set_leaf(5, leaf);
        assert_ne!(t.root(), root);
        let back = xor(&t.leaf(5), &h(2));
        t.set_leaf(5, back);
        assert_eq!(t.root(), root);
    }

    #[test]
    fn children_locate_the_difference() {
        let mut a = PartitionTree::new();
        let mut b = PartitionTree::new();
        a.set_leaf(4095, h(9));
        assert_ne!(a.root(), b.root());
        let ca = a.children(0, 0).expect("root has children");
        let cb = b.children(0, 0).expect("root has children");
        let diff: Vec<usize> = (0..FANOUT).filter(|&i| ca[i] != cb[i]).collect();
        assert_eq!(diff, vec![15]);
        assert!(a.children(DEPTH, 0).is_none());
        assert!(a.children(1, 16).is_none());
    }

    proptest! {
        /// The root depends only on the set of leaf contributions, not on their order.
        #[test]
        fn root_is_order_independent(items in proptest::collection::vec((0u16..LEAVES as u16, any::<u8>()), 0..50)) {
            let mut a = PartitionTree::new();
            for (seg, v) in &items {
                let leaf = xor(&a.leaf(*seg), &h(*v));
                a.set_leaf(*seg, leaf);
            }
            let mut b = PartitionTree::new();
            for (seg, v) in items.iter().rev() {
                let leaf = xor(&b.leaf(*seg), &h(*v));
                b.set_leaf(*seg, leaf);
            }
            prop_assert_eq!(a.root(), b.root());
        }
    }
}
