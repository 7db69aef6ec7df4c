//! Hinted handoff: object states a fallback keeps for an unreachable owner, and
//! their delivery once the owner is alive again (DESIGN.md §6, §7).
//!
//! Hints live in the store's own keyspace, so they survive restarts; delivery is
//! rate-limited and resumes where it stopped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ringkv_storage::{StorageError, Store};

/// Hints delivered per second at most.
pub const DELIVERY_RATE: usize = 500;
/// Most hints a node keeps; beyond it, new hints are refused (the write then counts
/// one replica fewer) rather than filling the disk while an owner stays dead.
pub const MAX_PENDING: u64 = 1_000_000;
/// Interval between delivery rounds.
pub const DELIVERY_INTERVAL: Duration = Duration::from_millis(250);

/// The hint store of one node.
pub struct Hints {
    store: Store,
    pending: AtomicU64,
    next_seq: AtomicU64,
    /// Hints stored since start.
    pub stored: AtomicU64,
    /// Hints delivered since start.
    pub delivered: AtomicU64,
}

/// One stored hint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hint {
    /// Storage key (to remove it once delivered).
    pub id: Vec<u8>,
    /// Node the state is for.
    pub owner: String,
    /// User key.
    pub key: Vec<u8>,
    /// Encoded object state.
    pub object: Vec<u8>,
}

fn hint_key(owner: &str, seq: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + owner.len() + 8 + key.len());
    k.push(owner.len() as u8);
    k.extend_from_slice(owner.as_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn parse_hint_key(k: &[u8]) -> Option<(String, Vec<u8>)> {
    let (&len, rest) = k.split_first()?;
    let len = usize::from(len);
    if rest.len() < len + 8 {
        return None;
    }
    let owner = std::str::from_utf8(&rest[..len]).ok()?.to_string();
    Some((owner, rest[len + 8..].to_vec()))
}

impl Hints {
    /// Opens the hints of `store`; `generation` makes hint ids of this start unique.
    ///
    /// # Errors
    /// [`StorageError`] if counting the stored hints fails.
    pub fn open(store: Store, generation: u64) -> Result<Hints, StorageError> {
        // Counted, not loaded: a node back from a long outage may hold many.
        let pending = store.hint_count()? as u64;
        Ok(Hints {
            store,
            pending: AtomicU64::new(pending),
            next_seq: AtomicU64::new(generation << 40),
            stored: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
        })
    }

    /// Hints waiting for delivery.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Whether another hint may be stored.
    pub fn has_room(&self) -> bool {
        self.pending() < MAX_PENDING
    }

    /// Keeps `object` of `key` for `owner` (durable before returning).
    ///
    /// # Errors
    /// [`StorageError`]; owner ids are at most 128 bytes (checked by membership).
    pub fn put(&self, owner: &str, key: &[u8], object: &[u8]) -> Result<(), StorageError> {
        debug_assert!(owner.len() <= usize::from(u8::MAX));
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        self.store.put_hint(&hint_key(owner, seq, key), object)?;
        self.pending.fetch_add(1, Ordering::Relaxed);
        self.stored.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Up to `limit` hints for `owner`, oldest first.
    ///
    /// # Errors
    /// [`StorageError`].
    pub fn for_owner(&self, owner: &str, limit: usize) -> Result<Vec<Hint>, StorageError> {
        let mut prefix = vec![owner.len() as u8];
        prefix.extend_from_slice(owner.as_bytes());
        Ok(self
            .store
            .hints(&prefix, limit)?
            .into_iter()
            .filter_map(|(id, object)| {
                let (o, key) = parse_hint_key(&id)?;
                Some(Hint {
                    id,
                    owner: o,
                    key,
                    object,
                })
            })
            .collect())
    }

    /// Up to `limit` hints, grouped by owner.
    ///
    /// # Errors
    /// [`StorageError`].
    pub fn batch(&self, limit: usize) -> Result<BTreeMap<String, Vec<Hint>>, StorageError> {
        let mut out: BTreeMap<String, Vec<Hint>> = BTreeMap::new();
        for (id, object) in self.store.hints(&[], limit)? {
            match parse_hint_key(&id) {
                Some((owner, key)) => out.entry(owner.clone()).or_default().push(Hint {
                    id,
                    owner,
                    key,
                    object,
                }),
                None => {
                    tracing::warn!("dropping an unreadable hint");
                    self.remove(&id)?;
                }
            }
        }
        Ok(out)
    }

    /// Drops a delivered hint.
    ///
    /// # Errors
    /// [`StorageError`].
    pub fn remove(&self, id: &[u8]) -> Result<(), StorageError> {
        self.store.remove_hint(id)?;
        let _ = self
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| p.checked_sub(1));
        Ok(())
    }
}

/// Shared handle.
pub type SharedHints = Arc<Hints>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_survive_reopen_and_parse_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(ringkv_storage::StoreConfig::new(dir.path())).expect("open");
            let h = Hints::open(store, 1).expect("hints");
            h.put("node-a", b"k1", b"o1").expect("put");
            h.put("node-b", b"k2", b"o2").expect("put");
            h.put("node-a", b"k1", b"o3").expect("put");
            assert_eq!(h.pending(), 3);
        }
        let store = Store::open(ringkv_storage::StoreConfig::new(dir.path())).expect("open");
        let h = Hints::open(store, 2).expect("hints");
        assert_eq!(h.pending(), 3);
        let b = h.batch(10).expect("batch");
        assert_eq!(b["node-a"].len(), 2);
        assert_eq!(b["node-a"][1].object, b"o3");
        assert_eq!(b["node-b"][0].key, b"k2");
        h.remove(&b["node-b"][0].id).expect("remove");
        assert_eq!(h.pending(), 2);
        assert_eq!(parse_hint_key(&[200]), None);
    }
}
