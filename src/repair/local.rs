//! This node's side of repair requests from peers: tree nodes, segment digests,
//! objects, merges and reaps, each bounded in size and checked before use.

use ringkv_storage::{Hash, LEAVES, object_digest};

use super::exchange::{DEPTH, MAX_BATCH};
use crate::coordinator::Coordinator;
use crate::object::Object;
use crate::ring::partition_of;
use crate::rpc::api::ApiError;

/// Reply budget of one fetch, in object bytes (at least one object is always sent).
pub const FETCH_BYTES: usize = 4 << 20;
/// Most keys in one fetch, merge, digest or reap request.
pub const MAX_KEYS: usize = 1024;

fn bad(reason: impl Into<String>) -> ApiError {
    ApiError::InvalidOptions {
        reason: reason.into(),
    }
}

fn storage(e: ringkv_storage::StorageError) -> ApiError {
    ApiError::Storage {
        reason: e.to_string(),
    }
}

fn check_partition(c: &Coordinator, p: u32) -> Result<(), ApiError> {
    let q = c.replica().ring_size();
    if p >= q {
        return Err(bad(format!("partition {p} is not below the ring size {q}")));
    }
    Ok(())
}

/// Ring epoch and the roots of `partitions`.
///
/// # Errors
/// [`ApiError`] for partitions out of range or storage failures.
pub fn roots(c: &Coordinator, partitions: &[u32]) -> Result<(String, Vec<Hash>), ApiError> {
    if partitions.len() > crate::ring::MAX_RING_SIZE as usize {
        return Err(bad("too many partitions in one request"));
    }
    let mut out = Vec::with_capacity(partitions.len());
    for &p in partitions {
        check_partition(c, p)?;
        out.push(c.replica().store().root(p).map_err(storage)?);
    }
    Ok((c.cluster().view().epoch_hex(), out))
}

/// Child hashes of interior nodes.
///
/// # Errors
/// [`ApiError`] for nodes outside the tree, too many nodes, or storage failures.
pub fn children(
    c: &Coordinator,
    partition: u32,
    nodes: &[(u8, u32)],
) -> Result<Vec<Vec<Hash>>, ApiError> {
    check_partition(c, partition)?;
    if nodes.len() > MAX_BATCH {
        return Err(bad(format!("more than {MAX_BATCH} nodes in one request")));
    }
    nodes
        .iter()
        .map(|&(level, index)| {
            if level >= DEPTH {
                return Err(bad(format!("level {level} has no children")));
            }
            c.replica()
                .store()
                .children(partition, level, index)
                .map_err(|e| match e {
                    // The asker's fault; anything else is this node's storage.
                    ringkv_storage::StorageError::NoSuchNode { .. } => bad(e.to_string()),
                    e => storage(e),
                })
        })
        .collect()
}

/// `(key, digest)` lists of segments.
///
/// # Errors
/// [`ApiError`] for segments out of range, too many segments, or storage failures.
pub fn segments(
    c: &Coordinator,
    partition: u32,
    segments: &[u16],
) -> Result<Vec<crate::peer::KeyDigests>, ApiError> {
    check_partition(c, partition)?;
    if segments.len() > MAX_BATCH {
        return Err(bad(format!(
            "more than {MAX_BATCH} segments in one request"
        )));
    }
    segments
        .iter()
        .map(|&s| {
            if s as usize >= LEAVES {
                return Err(bad(format!("segment {s} is out of range")));
            }
            c.replica()
                .store()
                .segment_digests(partition, s)
                .map_err(storage)
        })
        .collect()
}

/// Encoded objects of a prefix of `keys` within [`FETCH_BYTES`].
///
/// # Errors
/// [`ApiError`] for bad keys or storage failures.
pub fn fetch(c: &Coordinator, keys: Vec<Vec<u8>>) -> Result<crate::peer::Fetched, ApiError> {
    if keys.len() > MAX_KEYS {
        return Err(bad(format!("more than {MAX_KEYS} keys in one request")));
    }
    let mut out = Vec::with_capacity(keys.len());
    let mut bytes = 0usize;
    for key in keys {
        let obj = c.replica().get(&key)?;
        let encoded = obj.map(|o| o.encode()).transpose()?;
        let size = encoded.as_ref().map_or(0, Vec::len) + key.len();
        // Always at least one object; never past the budget otherwise.
        if !out.is_empty() && bytes + size > FETCH_BYTES {
            break;
        }
        bytes += size;
        out.push((key, encoded));
    }
    Ok(out)
}

/// Digests of `keys` here (synced to disk first), and how many hints and repairs in
/// flight this node has (reaping needs zero everywhere).
///
/// # Errors
/// [`ApiError`] for bad keys or storage failures.
pub async fn digests(
    c: &Coordinator,
    keys: &[Vec<u8>],
) -> Result<crate::peer::HeldDigests, ApiError> {
    if keys.len() > MAX_KEYS {
        return Err(bad(format!("more than {MAX_KEYS} keys in one request")));
    }
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        // A damaged value is dropped and counts as absent (it is repaired from a
        // replica, and reaping waits for that, since the primaries then differ).
        let raw = c.replica().get_raw(key)?;
        out.push(raw.map(|b| object_digest(key, &b)));
    }
    // Reaping relies on this answer: it must survive a crash of this node.
    c.sync_store().await?;
    Ok((
        out,
        c.hints().pending() + c.keys_in_flight(keys),
        c.cluster().view().epoch_hex(),
    ))
}

/// Removes each key whose stored object still has the given digest and is a
/// tombstone; returns how many were removed.
///
/// # Errors
/// [`ApiError`] for bad keys or storage failures.
pub fn reap(c: &Coordinator, items: &[(Vec<u8>, Hash)]) -> Result<u64, ApiError> {
    if items.len() > MAX_KEYS {
        return Err(bad(format!("more than {MAX_KEYS} keys in one request")));
    }
    let q = c.replica().ring_size();
    let mut removed = 0;
    for (key, digest) in items {
        c.replica().check_key(key)?;
        // Only tombstones are ever reaped, whatever a peer asks.
        let clock = match c.replica().get(key)? {
            Some(Object::Register(r)) if r.is_deleted() => r.context().clone(),
            Some(_) | None => continue,
        };
        if c.replica()
            .store()
            .remove_if(partition_of(key, q), key, digest)
            .map_err(storage)?
        {
            tracing::debug!(key = %String::from_utf8_lossy(key), "tombstone reaped");
            c.remember_reaped(key, clock);
            removed += 1;
        }
    }
    Ok(removed)
}
