//! Persistence of the per-partition hash trees (shape and XOR rule in [`crate::merkle`]).
//!
//! Leaves are written in the same batch as every object change, so on disk they are
//! always exact. The upper nodes (root and the two levels below it) are rewritten by
//! every write of their partition; writing all 273 of them with each write would
//! multiply the bytes logged per put by nine. So they live in memory and
//! are checkpointed, one value per partition, every [`CHECKPOINT_INTERVAL`] and on
//! close. The first write after a checkpoint also writes a dirty marker in its batch;
//! the checkpoint removes it atomically with the new snapshot. On first use after a
//! restart a partition loads its snapshot, or, if the marker survived (a crash since
//! the last checkpoint), recomputes the upper nodes from its ≤ 4,096 leaves. No object
//! is ever rescanned.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::Engine;
use crate::error::{Result, StorageError};
use crate::keys::{object_digest, split_object_key};
use crate::log::{Op, Space};
use crate::merkle::{DEPTH, EMPTY, FANOUT, Hash, LEAVES, is_interior, nodes_at, path, xor};
use crate::store::lock;

/// How often dirty partitions' upper nodes are checkpointed.
///
/// Under steady writes every partition is dirty at every checkpoint, so each one
/// writes 256 × 8.7 KB, all of it garbage by the next one; every 10 s keeps that
/// under 0.3 MB/s of log (on fjall, once a second, it filled a memtable every two
/// seconds and the flushes stalled writes). Recovery costs no more
/// with a longer interval: after a crash each partition written since its last
/// checkpoint recomputes its upper nodes from its own leaves, and that is bounded by
/// the partitions, not by the time since.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);

/// Nodes above the leaves: `1 + 16 + 256`.
const UPPER_NODES: usize = (LEAVES - 1) / (FANOUT - 1);
const _: () = assert!(UPPER_NODES == 273);

const MARKER: u8 = 0xfe;
/// Meta key present while [`Trees::rebuild_leaves`] runs, so a crash in the middle
/// of it starts it again on the next open.
const REBUILD_PENDING: &[u8] = b"merkle-leaf-rebuild-pending";

/// Whether a key of the log's metadata space is the trees' own (the node's
/// metadata lives in the metadata file).
pub(crate) fn is_tree_meta(key: &[u8]) -> bool {
    key == REBUILD_PENDING
}
const SNAPSHOT: u8 = 0xff;
const _: () = assert!(DEPTH < MARKER);

fn upper_offset(level: u8, index: u16) -> usize {
    debug_assert!(level < DEPTH);
    (nodes_at(level) - 1) / (FANOUT - 1) + index as usize
}

/// Key of a tree leaf: `partition (u32 BE) ‖ DEPTH ‖ segment (u16 BE)`.
fn leaf_key(partition: u32, segment: u16) -> [u8; 7] {
    let mut out = [0u8; 7];
    out[..4].copy_from_slice(&partition.to_be_bytes());
    out[4] = DEPTH;
    out[5..].copy_from_slice(&segment.to_be_bytes());
    out
}

fn tag_key(partition: u32, tag: u8) -> [u8; 5] {
    let mut out = [0u8; 5];
    out[..4].copy_from_slice(&partition.to_be_bytes());
    out[4] = tag;
    out
}

/// The write of a partition's dirty marker (its upper nodes differ from the last
/// checkpoint until the next one removes it).
fn dirty_marker(partition: u32) -> Op {
    Op {
        space: Space::Merkle,
        key: tag_key(partition, MARKER).to_vec(),
        value: Some(Vec::new()),
    }
}

pub(crate) struct Upper {
    pub(crate) nodes: Vec<Hash>,
    /// Changed since the last checkpoint (and the dirty marker is on disk).
    dirty: bool,
}

/// Counters about tree loading, for tests and status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Partitions whose upper nodes came from a checkpoint.
    pub loaded_from_checkpoint: u64,
    /// Partitions whose upper nodes were recomputed from leaves after a crash.
    pub rebuilt_from_leaves: u64,
}

pub(crate) struct Trees {
    log: Arc<dyn Engine>,
    parts: Mutex<HashMap<u32, Arc<Mutex<Upper>>>>,
    loaded: AtomicU64,
    rebuilt: AtomicU64,
}

fn decode(partition: u32, level: u8, index: u16, raw: &[u8]) -> Result<Hash> {
    raw.try_into().map_err(|_| StorageError::CorruptNode {
        partition,
        level,
        index,
        len: raw.len(),
    })
}

impl Trees {
    pub(crate) fn new(log: Arc<dyn Engine>) -> Self {
        Trees {
            log,
            parts: Mutex::new(HashMap::new()),
            loaded: AtomicU64::new(0),
            rebuilt: AtomicU64::new(0),
        }
    }

    pub(crate) fn stats(&self) -> TreeStats {
        TreeStats {
            loaded_from_checkpoint: self.loaded.load(Ordering::Relaxed),
            rebuilt_from_leaves: self.rebuilt.load(Ordering::Relaxed),
        }
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.log.get(Space::Merkle, key)
    }

    /// The leaf of `segment`. A damaged leaf record is recomputed from the
    /// segment's objects (and rewritten by [`Trees::repair`]): a checksum that fails
    /// on one hash-tree record must not stop the partition's writes and
    /// anti-entropy until a restart.
    pub(crate) fn leaf(&self, partition: u32, segment: u16) -> Result<Hash> {
        self.leaf_checked(partition, segment).map(|(leaf, _)| leaf)
    }

    /// [`Trees::leaf`], and whether its record was damaged (the leaf then comes
    /// from the objects, which need not be what the upper nodes were built from).
    fn leaf_checked(&self, partition: u32, segment: u16) -> Result<(Hash, bool)> {
        let recomputed = |s: &Self| s.leaf_from_objects(partition, segment).map(|l| (l, true));
        match self.get(&leaf_key(partition, segment)) {
            Ok(None) => Ok((EMPTY, false)),
            Ok(Some(v)) => match decode(partition, DEPTH, segment, &v) {
                Ok(leaf) => Ok((leaf, false)),
                Err(_) => recomputed(self),
            },
            Err(e) if e.is_damage() => recomputed(self),
            Err(e) => Err(e),
        }
    }

    /// The XOR of the digests of a segment's objects: what its leaf must hold.
    /// Damaged objects count as absent (their owner drops them in turn).
    fn leaf_from_objects(&self, partition: u32, segment: u16) -> Result<Hash> {
        let mut leaf = EMPTY;
        let prefix = crate::keys::segment_prefix(partition, segment);
        for item in self.log.prefix(Space::Objects, &prefix, usize::MAX)? {
            if let Some(value) = self.log.read(Space::Objects, &item)?
                && let Some((_, _, user)) = split_object_key(item.key())
            {
                leaf = xor(&leaf, &object_digest(user, &value));
            }
        }
        Ok(leaf)
    }

    /// Mends a hash-tree record found damaged (`key`, of the Merkle space): a leaf
    /// is recomputed from its segment's objects and written again; a damaged
    /// checkpoint or dirty marker makes the partition recompute its upper nodes
    /// from its leaves and checkpoint them anew. So does a damaged leaf: the upper
    /// nodes were built from what the leaf held, and its objects may now say
    /// otherwise (a value of the segment damaged too, and dropped). The partition's lock, which every
    /// leaf write holds across its commit, keeps writes out meanwhile. Returns the
    /// partition, or `None` for a key of no partition.
    ///
    /// # Errors
    /// [`StorageError`] of the reads or the commit.
    pub(crate) fn repair(&self, key: &[u8]) -> Result<Option<u32>> {
        let [a, b, c, d, tag, ..] = *key else {
            return Ok(None);
        };
        let partition = u32::from_be_bytes([a, b, c, d]);
        match *key {
            [_, _, _, _, DEPTH, hi, lo] => {
                let segment = u16::from_be_bytes([hi, lo]);
                let part = self.part(partition)?;
                let mut upper = lock(&part);
                let leaf = self.leaf_from_objects(partition, segment)?;
                self.log.commit(&[
                    Op {
                        space: Space::Merkle,
                        key: key.to_vec(),
                        value: (leaf != EMPTY).then(|| leaf.to_vec()),
                    },
                    dirty_marker(partition),
                ])?;
                *upper = self.upper_from_leaves(partition)?;
            }
            _ if tag == MARKER || tag == SNAPSHOT => {
                // Recomputed from the leaves now (under the partition's lock, which
                // every leaf write holds), checkpointed by the next round.
                let part = self.part(partition)?;
                let mut upper = lock(&part);
                let fresh = self.upper_from_leaves(partition)?;
                self.log.commit(&[dirty_marker(partition)])?;
                *upper = fresh;
            }
            _ => return Ok(None),
        }
        tracing::warn!(partition, "a damaged hash-tree record was recomputed");
        Ok(Some(partition))
    }

    fn load(&self, partition: u32) -> Result<Upper> {
        // A damaged marker or checkpoint counts as a crash since the checkpoint:
        // the leaves are exact, so the upper nodes come from them.
        let damaged = |r: Result<Option<Vec<u8>>>| match r {
            Ok(v) => Ok((v, false)),
            Err(e) if e.is_damage() => Ok((None, true)),
            Err(e) => Err(e),
        };
        let (marker, marker_damaged) = damaged(self.get(&tag_key(partition, MARKER)))?;
        let (snapshot, snapshot_damaged) = damaged(self.get(&tag_key(partition, SNAPSHOT)))?;
        let snapshot = snapshot.filter(|raw| raw.len() == UPPER_NODES * 32);
        if marker.is_some() || marker_damaged || snapshot_damaged {
            let upper = self.upper_from_leaves(partition)?;
            tracing::info!(
                partition,
                "hash tree upper nodes recomputed from leaves after an unclean stop"
            );
            return Ok(upper);
        }
        let mut nodes = vec![EMPTY; UPPER_NODES];
        if let Some(raw) = snapshot {
            for (node, chunk) in nodes.iter_mut().zip(raw.chunks_exact(32)) {
                node.copy_from_slice(chunk);
            }
            self.loaded.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Upper {
            nodes,
            dirty: false,
        })
    }

    /// A partition's upper nodes recomputed from its leaves (a damaged leaf from
    /// its objects), dirty: the marker stays, or is written, until the next
    /// checkpoint.
    fn upper_from_leaves(&self, partition: u32) -> Result<Upper> {
        let nodes = self.nodes_from_leaves(partition)?;
        self.rebuilt.fetch_add(1, Ordering::Relaxed);
        Ok(Upper { nodes, dirty: true })
    }

    /// The upper nodes that a partition's leaves make.
    fn nodes_from_leaves(&self, partition: u32) -> Result<Vec<Hash>> {
        let mut nodes = vec![EMPTY; UPPER_NODES];
        let prefix = &leaf_key(partition, 0)[..5];
        for item in self.log.prefix(Space::Merkle, prefix, LEAVES)? {
            let k = item.key();
            let segment = match k {
                [_, _, _, _, _, hi, lo] => u16::from_be_bytes([*hi, *lo]),
                _ => return Err(StorageError::CorruptKey { len: k.len() }),
            };
            if segment as usize >= LEAVES {
                return Err(StorageError::CorruptKey { len: k.len() });
            }
            let leaf = match self.log.read(Space::Merkle, &item)? {
                Some(v) => match decode(partition, DEPTH, segment, &v) {
                    Ok(leaf) => leaf,
                    Err(_) => self.leaf_from_objects(partition, segment)?,
                },
                // Gone since listed, or damaged: the objects say what it holds.
                None => self.leaf_from_objects(partition, segment)?,
            };
            for (level, index) in path(segment).into_iter().take(DEPTH as usize) {
                let o = upper_offset(level, index);
                nodes[o] = xor(&nodes[o], &leaf);
            }
        }
        Ok(nodes)
    }

    /// Checks a partition's upper nodes and recomputes them from its leaves if they
    /// do not match; returns whether they did not. Each node above the lowest upper
    /// level is checked against its children in memory; the lowest level against
    /// the leaves only if `with_leaves` (that reads up to 4,096 leaf records).
    /// Anti-entropy calls this when an interior node differs from a replica's while
    /// all its children agree: a side whose upper nodes no longer match its own
    /// leaves makes every exchange find nothing to move, for good.
    ///
    /// # Errors
    /// [`StorageError`] of the reads or the marker's commit.
    pub(crate) fn verify_upper(&self, partition: u32, with_leaves: bool) -> Result<bool> {
        let part = self.part(partition)?;
        let mut upper = lock(&part);
        let mut consistent = true;
        for level in 0..DEPTH - 1 {
            for index in 0..nodes_at(level) {
                let first = index * FANOUT;
                let children = upper_offset(level + 1, first as u16);
                let folded = upper.nodes[children..children + FANOUT]
                    .iter()
                    .fold(EMPTY, |acc, c| xor(&acc, c));
                consistent &= upper.nodes[upper_offset(level, index as u16)] == folded;
            }
        }
        if consistent && !with_leaves {
            return Ok(false);
        }
        let nodes = self.nodes_from_leaves(partition)?;
        if nodes == upper.nodes {
            return Ok(false);
        }
        if !upper.dirty {
            self.log.commit(&[dirty_marker(partition)])?;
        }
        *upper = Upper { nodes, dirty: true };
        tracing::warn!(
            partition,
            "hash tree upper nodes did not match their leaves; recomputed"
        );
        Ok(true)
    }

    /// Loads a partition's upper nodes from disk, bypassing the cache: `(root, rebuilt)`.
    #[cfg(test)]
    pub(crate) fn load_for_test(&self, partition: u32) -> Result<(Hash, bool)> {
        let before = self.rebuilt.load(Ordering::Relaxed);
        let upper = self.load(partition)?;
        Ok((
            upper.nodes[0],
            self.rebuilt.load(Ordering::Relaxed) > before,
        ))
    }

    /// A partition's upper nodes in memory, to set them off in tests.
    #[cfg(test)]
    pub(crate) fn part_for_test(&self, partition: u32) -> Arc<Mutex<Upper>> {
        self.part(partition).expect("partition")
    }

    fn part(&self, partition: u32) -> Result<Arc<Mutex<Upper>>> {
        let mut parts = lock(&self.parts);
        if let Some(p) = parts.get(&partition) {
            return Ok(p.clone());
        }
        let p = Arc::new(Mutex::new(self.load(partition)?));
        parts.insert(partition, p.clone());
        Ok(p)
    }

    /// Commits `batch` (which already holds an object change) together with XOR-ing
    /// `delta` into the leaf of `segment` and, after the commit, into its cached upper
    /// nodes. The partition's lock is held across the commit so paths never interleave.
    pub(crate) fn commit(
        &self,
        mut batch: Vec<Op>,
        partition: u32,
        segment: u16,
        delta: &Hash,
    ) -> Result<()> {
        let part = self.part(partition)?;
        let mut upper = lock(&part);
        let (old, recomputed) = self.leaf_checked(partition, segment)?;
        let leaf = xor(&old, delta);
        batch.push(Op {
            space: Space::Merkle,
            key: leaf_key(partition, segment).to_vec(),
            value: (leaf != EMPTY).then(|| leaf.to_vec()),
        });
        if !upper.dirty {
            batch.push(dirty_marker(partition));
        }
        self.log.commit(&batch)?;
        upper.dirty = true;
        if recomputed {
            // The upper nodes hold what the damaged record held, which the objects
            // need not agree with: rebuilt from the leaves, now all exact on disk.
            upper.nodes = self.nodes_from_leaves(partition)?;
            return Ok(());
        }
        for (level, index) in path(segment).into_iter().take(DEPTH as usize) {
            let o = upper_offset(level, index);
            upper.nodes[o] = xor(&upper.nodes[o], delta);
        }
        Ok(())
    }

    pub(crate) fn root(&self, partition: u32) -> Result<Hash> {
        let part = self.part(partition)?;
        let root = lock(&part).nodes[0];
        Ok(root)
    }

    pub(crate) fn children(&self, partition: u32, level: u8, index: u32) -> Result<Vec<Hash>> {
        if !is_interior(level, index) {
            return Err(StorageError::NoSuchNode { level, index });
        }
        let first = index as usize * FANOUT;
        if level + 1 < DEPTH {
            let part = self.part(partition)?;
            let upper = lock(&part);
            let start = upper_offset(level + 1, first as u16);
            return Ok(upper.nodes[start..start + FANOUT].to_vec());
        }
        (first..first + FANOUT)
            .map(|segment| self.leaf(partition, segment as u16))
            .collect()
    }

    /// Writes the upper nodes of every dirty partition; returns how many.
    ///
    /// One record per partition, written under that partition's lock alone, so no
    /// write waits for more than one small append: the snapshot and the removal of
    /// the dirty marker land atomically, and no write can slip in between them. (On
    /// fjall this was one batch for all partitions, because each commit there was
    /// costly; an append to the log is not, and one 2.2 MB batch held every
    /// partition's writes for the whole of it.)
    pub(crate) fn checkpoint(&self) -> Result<usize> {
        let mut parts: Vec<(u32, Arc<Mutex<Upper>>)> = lock(&self.parts)
            .iter()
            .map(|(p, u)| (*p, u.clone()))
            .collect();
        parts.sort_unstable_by_key(|(p, _)| *p);
        let mut written = 0;
        for (partition, part) in &parts {
            let mut upper = lock(part);
            if !upper.dirty {
                continue;
            }
            let mut snapshot = Vec::with_capacity(UPPER_NODES * 32);
            for node in &upper.nodes {
                snapshot.extend_from_slice(node);
            }
            self.log.commit(&[
                Op {
                    space: Space::Merkle,
                    key: tag_key(*partition, SNAPSHOT).to_vec(),
                    value: Some(snapshot),
                },
                Op {
                    space: Space::Merkle,
                    key: tag_key(*partition, MARKER).to_vec(),
                    value: None,
                },
            ])?;
            upper.dirty = false;
            written += 1;
        }
        Ok(written)
    }

    /// Whether the leaves must be recomputed from the objects: recovery cut or
    /// skipped records (`damaged`), or an earlier rebuild did not finish.
    pub(crate) fn needs_rebuild(&self, damaged: bool) -> Result<bool> {
        Ok(damaged || self.log.get(Space::Meta, REBUILD_PENDING)?.is_some())
    }

    /// Recomputes every leaf from the objects and marks every partition dirty, so
    /// its upper nodes are recomputed from the new leaves on first use. Returns the
    /// number of objects read.
    ///
    /// Needed after recovery lost records: a leaf is the XOR of its segment's object
    /// digests, kept by applying each write's delta, so once one record is missing
    /// from the middle of that history (a damaged record skipped, or the tail of one
    /// segment lost while a later segment survived a power loss) the leaf no longer
    /// matches the objects, and no later delta can make it. Anti-entropy then
    /// repairs the objects themselves from the other replicas.
    pub(crate) fn rebuild_leaves(&self) -> Result<usize> {
        self.log.commit(&[Op {
            space: Space::Meta,
            key: REBUILD_PENDING.to_vec(),
            value: Some(Vec::new()),
        }])?;
        self.log.sync()?;
        let mut leaves: BTreeMap<(u32, u16), Hash> = BTreeMap::new();
        let objects = self.log.prefix(Space::Objects, &[], usize::MAX)?;
        let count = objects.len();
        for item in objects {
            let (partition, segment, user) =
                split_object_key(item.key()).ok_or(StorageError::CorruptKey {
                    len: item.key().len(),
                })?;
            // A damaged value counts as absent (it is dropped and repaired later).
            let Some(value) = self.log.read(Space::Objects, &item)? else {
                continue;
            };
            let digest = object_digest(user, &value);
            let leaf = leaves.entry((partition, segment)).or_insert(EMPTY);
            *leaf = xor(leaf, &digest);
        }
        let mut ops = Vec::new();
        let mut partitions = BTreeSet::new();
        for item in self.log.prefix(Space::Merkle, &[], usize::MAX)? {
            let [a, b, c, d, ..] = *item.key() else {
                continue;
            };
            let partition = u32::from_be_bytes([a, b, c, d]);
            partitions.insert(partition);
            if let [_, _, _, _, DEPTH, hi, lo] = *item.key()
                && !leaves.contains_key(&(partition, u16::from_be_bytes([hi, lo])))
            {
                ops.push(Op {
                    space: Space::Merkle,
                    key: item.key().to_vec(),
                    value: None,
                });
            }
        }
        for ((partition, segment), leaf) in &leaves {
            partitions.insert(*partition);
            ops.push(Op {
                space: Space::Merkle,
                key: leaf_key(*partition, *segment).to_vec(),
                value: (*leaf != EMPTY).then(|| leaf.to_vec()),
            });
        }
        for partition in &partitions {
            ops.push(Op {
                space: Space::Merkle,
                key: tag_key(*partition, MARKER).to_vec(),
                value: Some(Vec::new()),
            });
        }
        for chunk in ops.chunks(4096) {
            self.log.commit(chunk)?;
        }
        lock(&self.parts).clear();
        self.log.commit(&[Op {
            space: Space::Meta,
            key: REBUILD_PENDING.to_vec(),
            value: None,
        }])?;
        self.log.sync()?;
        tracing::warn!(
            objects = count,
            partitions = partitions.len(),
            "hash tree leaves recomputed from the objects after the log lost records"
        );
        Ok(count)
    }
}
