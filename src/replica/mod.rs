//! One replica's view of its keys: validated, atomic read-merge-write of objects in
//! the local store. Coordinators call it for the writes they coordinate and for the
//! states other replicas send.
//!
//! ## Actors and epochs (Riak's kv679)
//!
//! A write coordinated here gets a version (a register dot, a counter total, a set
//! dot) from this replica's actor, built on the local copy. Each kind assumes that
//! copy holds every earlier version of that actor: a register clock entry `n` claims
//! to have seen dots 1..n, a counter entry is the actor's running total, a set add
//! takes the actor's next dot. A copy that lost some of them (a power loss under
//! `--sync interval`, a damaged record, a partition handed away and back) would mint
//! versions that erase acknowledged writes on the other replicas (review A2).
//!
//! So the actor is not fixed: it is derived from the data directory's random id, a
//! global epoch and a per-partition epoch. The global epoch rises on every open that
//! follows an unclean stop or found damage (any key may have lost versions); a
//! partition's epoch rises before this node drops keys of it (handoff away), if
//! its actor minted anything since its last epoch. Within one epoch the local copy of a key loses nothing but
//! tombstones that every replica agreed to reap, and the node-wide dot floor keeps
//! dots after a reap above the old ones. The cost is one more clock entry for keys
//! written after an epoch changes (one per crash, or per handoff of their partition),
//! not one per write.

use crdts::VClock;
use ringkv_storage::{Change, StorageError, Store};

use crate::object::{Actor, Counter, Kind, Object, ObjectError, Register, Set};
use crate::ring::partition_of;

/// Size limits on what clients may store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Longest register value or set member, in bytes.
    pub max_value_bytes: usize,
    /// Largest encoded object (all siblings or members together), in bytes.
    pub max_object_bytes: usize,
    /// Siblings at which a write is logged as a warning.
    pub warn_siblings: usize,
    /// Siblings beyond which a write is refused.
    pub max_siblings: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 1024,
            max_value_bytes: 4 << 20,
            max_object_bytes: 16 << 20,
            warn_siblings: 25,
            max_siblings: 100,
        }
    }
}

/// How many times `max_object_bytes` a merge of replicas' states may reach (see
/// [`Limits::max_merged_bytes`]).
pub const MERGE_FACTOR: usize = 4;

impl Limits {
    /// Largest object a merge of replicas' states may store or a read return:
    /// [`MERGE_FACTOR`] times `max_object_bytes` (at most 1 GiB). A coordinated
    /// write never takes an object past `max_object_bytes`, but replicas that took
    /// concurrent writes apart (a partition) each stay under it and their merge
    /// need not. Refusing that merge would keep them apart for good and make the key
    /// unreadable through any node (review C9); so merges and reads go up to this,
    /// and the next write of the key must resolve it (a write that does not bring
    /// it under `max_object_bytes` is refused).
    pub fn max_merged_bytes(&self) -> usize {
        self.max_object_bytes
            .saturating_mul(MERGE_FACTOR)
            .min(1 << 30)
            .max(self.max_object_bytes)
    }

    /// Largest frame the RPC layer must accept to carry any object these limits
    /// allow, merged ones included.
    pub fn frame_bytes(&self) -> usize {
        self.max_merged_bytes() + self.max_key_bytes + 64 * 1024
    }
}

/// Why a replica refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// Empty key.
    #[error("key must not be empty")]
    EmptyKey,
    /// Key over the limit.
    #[error("key of {size} bytes is over the limit of {limit} bytes")]
    KeyTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Value or member over the limit.
    #[error("value of {size} bytes is over the limit of {limit} bytes")]
    ValueTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The object would grow past the limit.
    #[error(
        "object would grow to {size} bytes, over the limit of {limit} bytes; resolve siblings or remove members first"
    )]
    ObjectTooLarge {
        /// The size it would have.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// An object-level refusal (wrong kind, sibling limit, bad context, corrupt bytes).
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Dot counters reserved on disk at a time: a restart skips what is left of the
/// block, so a counter is never handed out twice.
const DOT_BLOCK: u64 = 1 << 20;

/// The node-wide dot counter of this replica's actor (see [`Register::write_at`]).
struct Dots {
    next: std::sync::atomic::AtomicU64,
    /// Every dot below this is reserved on disk (raised only once that is durable).
    reserved: std::sync::atomic::AtomicU64,
    /// Serialises writers of the reservation.
    extending: std::sync::Mutex<()>,
    /// A reservation is being written in the background.
    ahead: std::sync::atomic::AtomicBool,
}

/// Metadata names of the epochs.
const META_GLOBAL_EPOCH: &str = "actor_epoch";
const META_PARTITION_EPOCHS: &str = "partition_epochs";

/// The epochs the actors of this replica derive from (see the module docs).
struct Epochs {
    /// The data directory's random actor id.
    base: Actor,
    global: u64,
    /// Epochs of partitions whose epoch ever rose (the others are at 0).
    partitions: std::sync::Mutex<std::collections::BTreeMap<u32, u64>>,
    /// The current actor of each partition.
    actors: Box<[std::sync::atomic::AtomicU64]>,
    /// Whether the current actor of a partition may have minted a version (true
    /// after every open: earlier runs may have). A partition whose actor minted
    /// nothing holds no version of it, so dropping its keys needs no new epoch.
    used: Box<[std::sync::atomic::AtomicBool]>,
}

/// Hands the actor of a key's partition to a write, under the key's stripe lock,
/// and notes that it minted with it.
struct Minter<'a> {
    epochs: &'a Epochs,
    partition: u32,
}

impl Minter<'_> {
    fn actor(&self) -> Actor {
        use std::sync::atomic::Ordering::SeqCst;
        let i = self.partition as usize % self.epochs.actors.len();
        // The actor first, then the mark: a retire between the two either started
        // its epoch after this load (the mark then makes the next retire start
        // another) or saw the mark of an earlier write. Marking first could let a
        // retire clear the mark and this write then mint with the new actor unseen.
        let actor = self.epochs.actors[i].load(SeqCst);
        self.epochs.used[i].store(true, SeqCst);
        actor
    }
}

/// The actor of `partition` in the given epochs: a hash, so actors of different
/// epochs, partitions and data directories never meet (2^-64 per pair).
fn derive_actor(base: Actor, global: u64, partition: u32, epoch: u64) -> Actor {
    let mut h = blake3::Hasher::new();
    h.update(b"ringkv actor v1");
    h.update(&base.to_be_bytes());
    h.update(&global.to_be_bytes());
    h.update(&partition.to_be_bytes());
    h.update(&epoch.to_be_bytes());
    let b = h.finalize();
    u64::from_be_bytes(b.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The local replica of a node.
#[derive(Clone)]
pub struct Replica {
    store: Store,
    epochs: std::sync::Arc<Epochs>,
    limits: Limits,
    ring_size: u32,
    dots: std::sync::Arc<Dots>,
    /// Registers resolve by last writer wins (unsafe, simulation only).
    unsafe_lww: bool,
}

fn read_meta_u64(store: &Store, name: &str) -> Result<Option<u64>, ReplicaError> {
    match store.meta(name)? {
        None => Ok(None),
        Some(v) => <[u8; 8]>::try_from(v.as_slice())
            .map(u64::from_be_bytes)
            .map(Some)
            .map_err(|_| {
                ReplicaError::Object(ObjectError::Corrupt {
                    reason: format!("metadata {name} of {} bytes", v.len()),
                })
            }),
    }
}

impl Replica {
    /// A replica over `store`, whose actors derive from `base` (the data
    /// directory's random actor id); reserves a block of dot counters and, if the
    /// store was not closed cleanly, starts a new global epoch.
    ///
    /// # Errors
    /// [`ReplicaError::Storage`] if the metadata cannot be read or written.
    pub fn new(
        store: Store,
        base: Actor,
        limits: Limits,
        ring_size: u32,
    ) -> Result<Self, ReplicaError> {
        let reserved = read_meta_u64(&store, "dot_reserved")?.unwrap_or(0);
        let exhausted = || ReplicaError::Object(ObjectError::DotsExhausted { actor: base });
        let next = reserved.checked_add(1).ok_or_else(exhausted)?;
        let block = next.checked_add(DOT_BLOCK).ok_or_else(exhausted)?;
        let mut global = read_meta_u64(&store, META_GLOBAL_EPOCH)?.unwrap_or(0);
        if !store.opened_clean() {
            global = global.checked_add(1).ok_or_else(exhausted)?;
            tracing::warn!(
                epoch = global,
                "the store was not closed cleanly (or recovery found damage): writes coordinated here take new actor ids, so nothing this copy may have lost can be overwritten"
            );
        }
        // Both durable before the first write: a crash now repeats this, never less.
        // The store keeps saying "unclean" on every open until the new epoch is
        // written, in the same write (a start that fails before this point must
        // not let the next one look clean).
        let entries: [(&str, &[u8]); 2] = [
            ("dot_reserved", &block.to_be_bytes()),
            (META_GLOBAL_EPOCH, &global.to_be_bytes()),
        ];
        if store.opened_clean() {
            store.set_metas(&entries)?;
        } else {
            store.acknowledge_unclean_open(&entries)?;
        }
        let partitions: std::collections::BTreeMap<u32, u64> =
            match store.meta(META_PARTITION_EPOCHS)? {
                None => Default::default(),
                Some(raw) => postcard::from_bytes(&raw).map_err(|e| {
                    ReplicaError::Object(ObjectError::Corrupt {
                        reason: format!("partition epochs: {e}"),
                    })
                })?,
            };
        let actors = (0..ring_size)
            .map(|p| {
                let epoch = partitions.get(&p).copied().unwrap_or(0);
                std::sync::atomic::AtomicU64::new(derive_actor(base, global, p, epoch))
            })
            .collect();
        let used = (0..ring_size)
            .map(|_| std::sync::atomic::AtomicBool::new(true))
            .collect();
        Ok(Replica {
            store,
            epochs: std::sync::Arc::new(Epochs {
                base,
                global,
                partitions: std::sync::Mutex::new(partitions),
                actors,
                used,
            }),
            limits,
            ring_size,
            dots: std::sync::Arc::new(Dots {
                next: std::sync::atomic::AtomicU64::new(next),
                reserved: std::sync::atomic::AtomicU64::new(block),
                extending: std::sync::Mutex::new(()),
                ahead: std::sync::atomic::AtomicBool::new(false),
            }),
            unsafe_lww: false,
        })
    }

    /// The data directory's actor id, from which the actors derive.
    pub fn base_actor(&self) -> Actor {
        self.epochs.base
    }

    /// The global epoch (rises on every open after an unclean stop).
    pub fn global_epoch(&self) -> u64 {
        self.epochs.global
    }

    /// The actor that coordinates writes to keys of `partition` now.
    pub fn actor_of(&self, partition: u32) -> Actor {
        self.epochs.actors[partition as usize % self.epochs.actors.len()]
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Starts a new epoch for `partition`, durably, before this node drops keys of
    /// it (a handoff away, a damaged value): a later write here takes a new actor,
    /// so it cannot claim versions of the old one that only other replicas kept.
    ///
    /// # Errors
    /// [`ReplicaError::Storage`] if the epoch cannot be persisted (then nothing may
    /// be dropped).
    pub fn retire_actor(&self, partition: u32) -> Result<(), ReplicaError> {
        use std::sync::atomic::Ordering::SeqCst;
        let mut epochs = self
            .epochs
            .partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let i = partition as usize % self.epochs.actors.len();
        // Nothing minted with the current actor since the last epoch: no key of the
        // partition holds a version of it, whatever is dropped. (A write minting
        // after this check changes its key, so a drop guarded by the key's digest
        // leaves that key alone; the next handoff pass then starts an epoch.)
        if !self.epochs.used[i].swap(false, SeqCst) {
            return Ok(());
        }
        let bumped = self.bump_epoch(&mut epochs, partition);
        if bumped.is_err() {
            self.epochs.used[i].store(true, SeqCst);
        }
        bumped
    }

    fn bump_epoch(
        &self,
        epochs: &mut std::collections::BTreeMap<u32, u64>,
        partition: u32,
    ) -> Result<(), ReplicaError> {
        let mut next = epochs.clone();
        let epoch = next.entry(partition).or_insert(0);
        *epoch = epoch.checked_add(1).ok_or(ObjectError::DotsExhausted {
            actor: self.epochs.base,
        })?;
        let epoch = *epoch;
        let raw = postcard::to_stdvec(&next).map_err(|e| ObjectError::Corrupt {
            reason: format!("partition epochs: {e}"),
        })?;
        self.store.set_meta(META_PARTITION_EPOCHS, &raw)?;
        *epochs = next;
        self.epochs.actors[partition as usize % self.epochs.actors.len()].store(
            derive_actor(self.epochs.base, self.epochs.global, partition, epoch),
            std::sync::atomic::Ordering::SeqCst,
        );
        Ok(())
    }

    /// Makes registers resolve by last writer wins, dropping concurrent siblings
    /// after every write and merge. **Loses acknowledged writes**: it exists so the
    /// simulation can prove its checker sees lost writes (`ringkv-sim --unsafe-lww`).
    #[must_use]
    pub fn with_unsafe_lww(mut self, on: bool) -> Self {
        self.unsafe_lww = on;
        self
    }

    /// The next node-wide dot counter. The next block is reserved on disk once half
    /// of this one is used, on a thread of its own, so no write waits for that fsync
    /// (review C14) unless a whole half block goes by during it.
    fn next_dot(&self) -> Result<u64, ReplicaError> {
        use std::sync::atomic::Ordering::SeqCst;
        let n = self.dots.next.fetch_add(1, SeqCst);
        let reserved = self.dots.reserved.load(SeqCst);
        if n.saturating_add(DOT_BLOCK / 2) >= reserved && !self.dots.ahead.swap(true, SeqCst) {
            if self.store.driver() == ringkv_storage::Driver::Caller {
                // The simulation: no thread of its own (when it lands must not
                // depend on the host), and the metadata write costs nothing.
                let r = self.extend_reservation(reserved);
                self.dots.ahead.store(false, SeqCst);
                r?;
            } else {
                let this = self.clone();
                let spawned = std::thread::Builder::new()
                    .name("ringkv-dots".into())
                    .spawn(move || {
                        if let Err(error) = this.extend_reservation(reserved) {
                            tracing::error!(%error, "cannot reserve dot counters ahead");
                        }
                        this.dots.ahead.store(false, SeqCst);
                    });
                if spawned.is_err() {
                    self.dots.ahead.store(false, SeqCst);
                }
            }
        }
        while n >= self.dots.reserved.load(SeqCst) {
            self.extend_reservation(self.dots.reserved.load(SeqCst))?;
        }
        Ok(n)
    }

    /// Reserves the block after `from` (if nobody did meanwhile), durably.
    fn extend_reservation(&self, from: u64) -> Result<(), ReplicaError> {
        use std::sync::atomic::Ordering::SeqCst;
        let _one = self
            .dots
            .extending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.dots.reserved.load(SeqCst) > from {
            return Ok(());
        }
        let block = from
            .checked_add(DOT_BLOCK)
            .ok_or(ObjectError::DotsExhausted {
                actor: self.epochs.base,
            })?;
        self.store.set_meta("dot_reserved", &block.to_be_bytes())?;
        self.dots.reserved.store(block, SeqCst);
        Ok(())
    }

    /// Partitions on the ring.
    pub fn ring_size(&self) -> u32 {
        self.ring_size
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The underlying store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Refuses keys that are empty or over the limit.
    ///
    /// # Errors
    /// [`ReplicaError::EmptyKey`] or [`ReplicaError::KeyTooLarge`].
    pub fn check_key(&self, key: &[u8]) -> Result<(), ReplicaError> {
        if key.is_empty() {
            return Err(ReplicaError::EmptyKey);
        }
        if key.len() > self.limits.max_key_bytes {
            return Err(ReplicaError::KeyTooLarge {
                size: key.len(),
                limit: self.limits.max_key_bytes,
            });
        }
        Ok(())
    }

    /// Refuses values over the limit.
    ///
    /// # Errors
    /// [`ReplicaError::ValueTooLarge`].
    pub fn check_value(&self, value: &[u8]) -> Result<(), ReplicaError> {
        if value.len() > self.limits.max_value_bytes {
            return Err(ReplicaError::ValueTooLarge {
                size: value.len(),
                limit: self.limits.max_value_bytes,
            });
        }
        Ok(())
    }

    /// Reads the local object of `key`.
    ///
    /// # Errors
    /// Key limits, storage failures, or corrupt stored bytes.
    pub fn get(&self, key: &[u8]) -> Result<Option<Object>, ReplicaError> {
        let raw = self.get_raw(key)?;
        Ok(raw.map(|b| Object::decode(&b)).transpose()?)
    }

    /// The stored bytes of `key`'s object. A value whose checksum fails is dropped
    /// (see [`Replica::heal`]) and read as absent: a replica brings it back.
    ///
    /// # Errors
    /// Key limits or storage failures.
    pub fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReplicaError> {
        self.check_key(key)?;
        let partition = partition_of(key, self.ring_size);
        match self.store.get(partition, key) {
            Err(e) if e.is_damage() => {
                self.heal(partition, key)?;
                Ok(None)
            }
            other => Ok(other?),
        }
    }

    /// Drops the damaged value of `key`, after starting a new epoch for its
    /// partition: what the value held is lost here, and a write coordinated here
    /// must not claim it (kv679). Anti-entropy and read repair then bring the key
    /// back from a replica. Nothing else waits for it: merges, scans and hint
    /// delivery go on around it (review C5).
    ///
    /// # Errors
    /// [`ReplicaError::Storage`] if the epoch or the drop cannot be written.
    pub fn heal(&self, partition: u32, key: &[u8]) -> Result<(), ReplicaError> {
        self.retire_actor(partition)?;
        self.store.drop_damaged(partition, key)?;
        Ok(())
    }

    /// Drops the damaged values the store found (by scans and merges) since the
    /// last call, up to a bound; returns how many were dropped.
    pub fn heal_damaged(&self) -> usize {
        let mut healed = 0;
        for (partition, key) in self.store.damaged(256) {
            match self.heal(partition, &key) {
                Ok(()) => healed += 1,
                Err(error) => tracing::warn!(%error, "cannot drop a damaged value yet"),
            }
        }
        healed
    }

    /// Atomically applies `f` to the object of `key` (created empty as `kind` if
    /// absent) and stores the result if `f` returns `true`. `f` runs under the key's
    /// stripe lock and gets the actor of the key's partition, read under that lock
    /// (so no write can slip between [`Replica::retire_actor`] and a drop).
    fn modify<R>(
        &self,
        key: &[u8],
        kind: Kind,
        f: impl FnOnce(&mut Object, &Minter<'_>) -> Result<(bool, R), ReplicaError>,
    ) -> Result<(Object, R), ReplicaError> {
        self.modify_within(key, kind, self.limits.max_object_bytes, f)
    }

    /// As [`Replica::modify`], storing objects up to `limit` bytes.
    fn modify_within<R>(
        &self,
        key: &[u8],
        kind: Kind,
        limit: usize,
        f: impl FnOnce(&mut Object, &Minter<'_>) -> Result<(bool, R), ReplicaError>,
    ) -> Result<(Object, R), ReplicaError> {
        self.check_key(key)?;
        let lww = self.unsafe_lww;
        let partition = partition_of(key, self.ring_size);
        // Taken once, by whichever attempt reads a current value: a damaged one is
        // healed first and the update runs again.
        let mut f = Some(f);
        for attempt in 0..2 {
            let updated = self.store.update(partition, key, |cur| {
                let Some(f) = f.take() else {
                    unreachable!("the closure runs once");
                };
                self.apply(kind, partition, limit, lww, cur, f)
            });
            match updated {
                Err(ReplicaError::Storage(e)) if e.is_damage() && attempt == 0 && f.is_some() => {
                    self.heal(partition, key)?;
                }
                other => return other.map(|(_, out)| out),
            }
        }
        unreachable!("the second attempt returns")
    }

    #[allow(clippy::too_many_arguments)]
    fn apply<R>(
        &self,
        kind: Kind,
        partition: u32,
        limit: usize,
        lww: bool,
        cur: Option<&[u8]>,
        f: impl FnOnce(&mut Object, &Minter<'_>) -> Result<(bool, R), ReplicaError>,
    ) -> Result<(Change, (Object, R)), ReplicaError> {
        {
            let mut obj = match cur {
                Some(bytes) => Object::decode(bytes)?,
                None => Object::empty(kind),
            };
            if obj.kind() != kind {
                return Err(ReplicaError::Object(ObjectError::WrongKind {
                    stored: obj.kind(),
                    requested: kind,
                }));
            }
            let mint = Minter {
                epochs: &self.epochs,
                partition,
            };
            let (write, r) = f(&mut obj, &mint)?;
            if lww && let Object::Register(reg) = &mut obj {
                reg.keep_last_writer();
            }
            if !write {
                return Ok((Change::Keep, (obj, r)));
            }
            let bytes = obj.encode()?;
            if bytes.len() > limit {
                return Err(ReplicaError::ObjectTooLarge {
                    size: bytes.len(),
                    limit,
                });
            }
            Ok((Change::Put(bytes), (obj, r)))
        }
    }

    /// Writes a register value (`None` = tombstone) with the client's context, as
    /// this replica's actor. Returns the register after the write.
    ///
    /// # Errors
    /// Limits, [`ObjectError::WrongKind`], [`ObjectError::TooManySiblings`],
    /// [`ObjectError::InvalidContext`], or storage failures.
    pub fn write_register(
        &self,
        key: &[u8],
        value: Option<Vec<u8>>,
        context: &VClock<Actor>,
    ) -> Result<Register, ReplicaError> {
        if let Some(v) = &value {
            self.check_value(v)?;
        }
        let limits = self.limits;
        let deleting = value.is_none();
        let (obj, ()) = self.modify(key, Kind::Register, |obj, mint| {
            let Object::Register(reg) = obj else {
                unreachable!("modify checked the kind")
            };
            if deleting && reg.siblings().is_empty() && context.is_empty() {
                // Deleting, without having seen anything, a key this replica never
                // held: nothing to cover, nothing to store. With a context the
                // client saw values (on other replicas): the tombstone must cover
                // them, or the delete is acknowledged and changes nothing (A1).
                return Ok((false, ()));
            }
            // Taken under the key's lock, so this key's dots follow the floor's
            // order (review C16: taken before, a racing write could run ahead of it
            // and a write after a reap reuse a dot).
            let floor = self.next_dot()?;
            let mut next = reg.clone();
            next.write_at(mint.actor(), floor, context, value)?;
            let count = next.siblings().len();
            if count > limits.max_siblings && count > reg.siblings().len() {
                return Err(ObjectError::TooManySiblings {
                    count,
                    limit: limits.max_siblings,
                }
                .into());
            }
            if count >= limits.warn_siblings {
                tracing::warn!(key = ?String::from_utf8_lossy(key), siblings = count, "key has many siblings; clients should resolve them");
            }
            *reg = next;
            Ok((true, ()))
        })?;
        match obj {
            Object::Register(r) => Ok(r),
            Object::Counter(_) | Object::Set(_) => unreachable!("modify checked the kind"),
        }
    }

    /// Adds `delta` to a counter. Returns the counter after the write.
    ///
    /// # Errors
    /// Limits, [`ObjectError::WrongKind`], or storage failures.
    pub fn counter_add(&self, key: &[u8], delta: i64) -> Result<Counter, ReplicaError> {
        let (obj, ()) = self.modify(key, Kind::Counter, |obj, mint| {
            if let Object::Counter(c) = obj {
                c.add(mint.actor(), delta)?;
            }
            Ok((true, ()))
        })?;
        match obj {
            Object::Counter(c) => Ok(c),
            Object::Register(_) | Object::Set(_) => unreachable!("modify checked the kind"),
        }
    }

    /// Adds a member to a set (`add = true`) or removes it. Returns the set after the
    /// write and whether the member was present before a removal.
    ///
    /// # Errors
    /// Limits, [`ObjectError::WrongKind`], or storage failures.
    pub fn set_update(
        &self,
        key: &[u8],
        member: &[u8],
        add: bool,
    ) -> Result<(Set, bool), ReplicaError> {
        if member.len() > self.limits.max_key_bytes {
            return Err(ReplicaError::ValueTooLarge {
                size: member.len(),
                limit: self.limits.max_key_bytes,
            });
        }
        let (obj, present) = self.modify(key, Kind::Set, |obj, mint| {
            let Object::Set(s) = obj else {
                unreachable!("modify checked the kind")
            };
            if add {
                s.add(mint.actor(), member.to_vec())?;
                Ok((true, true))
            } else {
                let present = s.remove(member);
                Ok((present, present))
            }
        })?;
        match obj {
            Object::Set(s) => Ok((s, present)),
            Object::Register(_) | Object::Counter(_) => unreachable!("modify checked the kind"),
        }
    }

    /// Merges a state received from another replica into the local one (up to
    /// [`Limits::max_merged_bytes`]).
    ///
    /// # Errors
    /// [`ObjectError::WrongKind`] if the kinds differ, [`ReplicaError::ObjectTooLarge`]
    /// past the merge limit, or storage failures.
    pub fn merge(&self, key: &[u8], incoming: &Object) -> Result<Object, ReplicaError> {
        let limit = self.limits.max_merged_bytes();
        let (obj, ()) = self.modify_within(key, incoming.kind(), limit, |obj, _| {
            let before = obj.clone();
            obj.merge(incoming)?;
            Ok((*obj != before, ()))
        })?;
        Ok(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_storage::{Disk, Driver, SimulatedDisk, StoreConfig, SyncPolicy};

    fn replica(dir: &std::path::Path, limits: Limits) -> Replica {
        let mut cfg = StoreConfig::new(dir);
        cfg.sync = SyncPolicy::None;
        Replica::new(Store::open(cfg).expect("open"), 7, limits, 256).expect("replica")
    }

    /// Another replica (another data directory's actor).
    fn second(dir: &std::path::Path, limits: Limits) -> Replica {
        Replica::new(
            Store::open(StoreConfig::new(dir)).expect("open"),
            8,
            limits,
            256,
        )
        .expect("replica")
    }

    #[test]
    fn sibling_limit_refuses_growth_but_allows_resolution() {
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = Limits {
            max_siblings: 3,
            warn_siblings: 2,
            ..Limits::default()
        };
        let r = replica(dir.path(), limits);
        for i in 0..3u8 {
            r.write_register(b"k", Some(vec![i]), &VClock::new())
                .expect("write");
        }
        let err = r
            .write_register(b"k", Some(vec![9]), &VClock::new())
            .expect_err("over limit");
        assert!(matches!(
            err,
            ReplicaError::Object(ObjectError::TooManySiblings { count: 4, limit: 3 })
        ));
        let ctx = r
            .get(b"k")
            .expect("get")
            .map(|o| match o {
                Object::Register(reg) => reg.context().clone(),
                _ => unreachable!(),
            })
            .expect("found");
        let reg = r
            .write_register(b"k", Some(vec![9]), &ctx)
            .expect("resolving write");
        assert_eq!(reg.values(), vec![&[9u8][..]]);
    }

    #[test]
    fn wrong_kind_and_limits_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = replica(
            dir.path(),
            Limits {
                max_value_bytes: 4,
                max_key_bytes: 4,
                ..Limits::default()
            },
        );
        r.write_register(b"k", Some(b"v".to_vec()), &VClock::new())
            .expect("write");
        let before = r.store().root(partition_of(b"k", 256)).expect("root");
        assert!(matches!(
            r.counter_add(b"k", 1),
            Err(ReplicaError::Object(ObjectError::WrongKind { .. }))
        ));
        assert!(matches!(
            r.set_update(b"k", b"m", true),
            Err(ReplicaError::Object(ObjectError::WrongKind { .. }))
        ));
        assert!(matches!(
            r.write_register(b"k", Some(vec![0; 5]), &VClock::new()),
            Err(ReplicaError::ValueTooLarge { size: 5, limit: 4 })
        ));
        assert!(matches!(
            r.write_register(b"kkkkk", Some(vec![0]), &VClock::new()),
            Err(ReplicaError::KeyTooLarge { .. })
        ));
        assert!(matches!(
            r.write_register(b"", Some(vec![0]), &VClock::new()),
            Err(ReplicaError::EmptyKey)
        ));
        assert_eq!(
            r.store().root(partition_of(b"k", 256)).expect("root"),
            before
        );
    }

    /// A replica on a simulated disk (so a power loss can take its unsynced writes).
    fn on_disk(
        dir: &std::path::Path,
        disk: &std::sync::Arc<SimulatedDisk>,
        base: Actor,
    ) -> Replica {
        let mut cfg = StoreConfig::new(dir);
        cfg.disk = Disk::Simulated(disk.clone());
        cfg.driver = Driver::Caller;
        Replica::new(
            Store::open(cfg).expect("open"),
            base,
            Limits::default(),
            256,
        )
        .expect("replica")
    }

    /// The power goes, the machine reboots: what the last sync did not cover is gone.
    fn power_loss(
        r: Replica,
        dir: &std::path::Path,
        disk: &std::sync::Arc<SimulatedDisk>,
    ) -> Replica {
        let base = r.base_actor();
        disk.power_off();
        drop(r);
        disk.restore(None).expect("restore");
        on_disk(dir, disk, base)
    }

    fn register(o: Object) -> Register {
        match o {
            Object::Register(r) => r,
            other => panic!("not a register: {other:?}"),
        }
    }

    #[test]
    fn a_delete_with_a_context_at_a_replica_without_the_key_leaves_a_covering_tombstone() {
        // Review A1: the coordinator lacks the key the client read elsewhere.
        let (da, db) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let a = replica(da.path(), Limits::default());
        let b = second(db.path(), Limits::default());
        let r = a
            .write_register(b"k", Some(b"v".to_vec()), &VClock::new())
            .expect("put");
        let d = b.write_register(b"k", None, r.context()).expect("delete");
        assert!(
            d.is_deleted() && !d.siblings().is_empty(),
            "a tombstone: {d:?}"
        );
        assert!(d.context() >= r.context(), "covering what the client saw");
        a.merge(b"k", &Object::Register(d)).expect("merge");
        let held = register(a.get(b"k").expect("get").expect("held"));
        assert!(held.is_deleted(), "the value is gone: {held:?}");
    }

    #[test]
    fn a_replica_that_lost_writes_in_a_power_loss_erases_none_of_them() {
        // Review A2 (kv679): x coordinates, a keeps a copy, x loses its own.
        let (dx, da) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let disk = SimulatedDisk::new();
        let x = on_disk(dx.path(), &disk, 1);
        let a = replica(da.path(), Limits::default());
        let empty = VClock::new();
        let r1 = x
            .write_register(b"r", Some(b"v1".to_vec()), &empty)
            .expect("put");
        a.merge(b"r", &Object::Register(r1)).expect("merge");
        let c1 = x.counter_add(b"c", 5).expect("add");
        a.merge(b"c", &Object::Counter(c1)).expect("merge");
        let (s1, _) = x.set_update(b"s", b"m1", true).expect("add");
        a.merge(b"s", &Object::Set(s1)).expect("merge");
        let epoch = x.global_epoch();
        let x = power_loss(x, dx.path(), &disk);
        assert_eq!(
            x.global_epoch(),
            epoch + 1,
            "an unclean open starts an epoch"
        );
        assert_eq!(
            x.get(b"r").expect("get"),
            None,
            "the power loss took x's copies"
        );
        let r2 = x
            .write_register(b"r", Some(b"v2".to_vec()), &empty)
            .expect("put");
        let c2 = x.counter_add(b"c", 1).expect("add");
        let (s2, _) = x.set_update(b"s", b"m2", true).expect("add");
        a.merge(b"r", &Object::Register(r2)).expect("merge");
        a.merge(b"c", &Object::Counter(c2)).expect("merge");
        a.merge(b"s", &Object::Set(s2)).expect("merge");
        let held = register(a.get(b"r").expect("get").expect("held"));
        let mut values = held.values();
        values.sort();
        assert_eq!(
            values,
            vec![&b"v1"[..], &b"v2"[..]],
            "two blind writes, two siblings"
        );
        match a.get(b"c").expect("get") {
            Some(Object::Counter(c)) => assert_eq!(c.value(), Ok(6), "both increments"),
            other => panic!("{other:?}"),
        }
        match a.get(b"s").expect("get") {
            Some(Object::Set(s)) => {
                assert_eq!(
                    s.members(),
                    vec![b"m1".to_vec(), b"m2".to_vec()],
                    "both adds"
                )
            }
            other => panic!("{other:?}"),
        }
        // A clean close keeps the epoch.
        drop(x);
        let x = on_disk(dx.path(), &disk, 1);
        assert_eq!(x.global_epoch(), epoch + 1);
    }

    #[test]
    fn a_partition_handed_away_and_back_erases_nothing() {
        // Review A2, the handoff path: x drops its copy after the new owners took
        // it (retiring the partition's actor first), then owns the key again.
        let (dx, da) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let x = replica(dx.path(), Limits::default());
        let a = second(da.path(), Limits::default());
        let p = partition_of(b"c", 256);
        let c1 = x.counter_add(b"c", 5).expect("add");
        a.merge(b"c", &Object::Counter(c1.clone())).expect("merge");
        let before = x.actor_of(p);
        x.retire_actor(p).expect("retire");
        assert_ne!(x.actor_of(p), before);
        let retired = x.actor_of(p);
        x.retire_actor(p).expect("retire");
        assert_eq!(x.actor_of(p), retired, "nothing minted since: no new epoch");
        let digest = Object::Counter(c1).digest(b"c").expect("digest");
        assert!(x.store().remove_if(p, b"c", &digest).expect("drop"));
        let c2 = x.counter_add(b"c", 1).expect("add");
        a.merge(b"c", &Object::Counter(c2)).expect("merge");
        match a.get(b"c").expect("get") {
            Some(Object::Counter(c)) => assert_eq!(c.value(), Ok(6)),
            other => panic!("{other:?}"),
        }
        // The epoch survives a restart.
        let retired = x.actor_of(p);
        drop(x);
        let x = replica(dx.path(), Limits::default());
        assert_eq!(x.actor_of(p), retired);
    }

    #[test]
    fn a_state_claiming_the_last_dot_refuses_writes_instead_of_wrapping() {
        // Review A3 at the replica: a clock entry of u64::MAX for b's actor (which
        // signed contexts keep clients from sending) must not make b's next write
        // wrap, vanish on merge, or panic.
        let (da, db) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let a = replica(da.path(), Limits::default());
        let b = second(db.path(), Limits::default());
        let b_actor = b.actor_of(partition_of(b"k", 256));
        let mut poisoned = VClock::new();
        crdts::CmRDT::apply(&mut poisoned, crdts::Dot::new(b_actor, u64::MAX));
        let r = a
            .write_register(b"k", Some(b"v0".to_vec()), &poisoned)
            .expect("put");
        b.merge(b"k", &Object::Register(r.clone())).expect("merge");
        assert!(matches!(
            b.write_register(b"k", Some(b"v1".to_vec()), r.context()),
            Err(ReplicaError::Object(ObjectError::DotsExhausted { .. }))
        ));
        let held = register(b.get(b"k").expect("get").expect("held"));
        assert_eq!(held.values(), vec![&b"v0"[..]], "nothing changed");
    }

    #[test]
    fn merges_past_the_sibling_limit_are_kept_and_writes_must_resolve_them() {
        // Review B4: the limit binds coordinated writes only. A merge is never
        // refused for its sibling count: refusing would leave the replicas apart
        // for good (anti-entropy retrying every round), dropping siblings would
        // lose acknowledged writes. What the limit then does is make the next
        // write resolve them: a write that adds a sibling is refused, one with the
        // read's context replaces them all.
        let limits = Limits {
            max_siblings: 10,
            warn_siblings: 5,
            ..Limits::default()
        };
        let (da, db) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let a = replica(da.path(), limits);
        let b = second(db.path(), limits);
        for i in 0..10u8 {
            a.write_register(b"k", Some(vec![b'a', i]), &VClock::new())
                .expect("a");
            b.write_register(b"k", Some(vec![b'b', i]), &VClock::new())
                .expect("b");
        }
        let theirs = b.get(b"k").expect("get").expect("held");
        let merged = register(a.merge(b"k", &theirs).expect("a merge is never refused"));
        assert_eq!(merged.values().len(), 20);
        assert!(matches!(
            a.write_register(b"k", Some(b"one more".to_vec()), &VClock::new()),
            Err(ReplicaError::Object(ObjectError::TooManySiblings {
                count: 21,
                limit: 10
            }))
        ));
        let resolved = a
            .write_register(b"k", Some(b"resolved".to_vec()), merged.context())
            .expect("a resolving write");
        assert_eq!(resolved.values(), vec![&b"resolved"[..]]);
    }

    #[test]
    fn a_damaged_value_is_dropped_under_a_new_epoch_and_the_key_takes_writes_again() {
        // Review C5: a value failing its checksum made its key unwritable here.
        let dir = tempfile::tempdir().expect("tempdir");
        let r = replica(dir.path(), Limits::default());
        r.write_register(b"k", Some(b"damaged-soon".to_vec()), &VClock::new())
            .expect("put");
        let p = partition_of(b"k", 256);
        let before = r.actor_of(p);
        for e in std::fs::read_dir(dir.path()).expect("list") {
            let path = e.expect("entry").path();
            let mut bytes = std::fs::read(&path).expect("read");
            if let Some(at) = bytes.windows(12).position(|w| w == b"damaged-soon") {
                bytes[at] ^= 0x01;
                std::fs::write(&path, &bytes).expect("write");
            }
        }
        let reg = r
            .write_register(b"k", Some(b"fresh".to_vec()), &VClock::new())
            .expect("a write heals it");
        assert_eq!(reg.values(), vec![&b"fresh"[..]]);
        assert_ne!(
            r.actor_of(p),
            before,
            "what the value held is never claimed"
        );
        assert_eq!(r.store().damaged_dropped(), 1);
        let read = register(r.get(b"k").expect("get").expect("held"));
        assert_eq!(read.values(), vec![&b"fresh"[..]]);
    }

    #[test]
    fn replicas_apart_merge_past_the_object_limit_and_a_write_must_resolve_them() {
        // Review C9: each replica holds less than the limit, their merge more; it
        // was refused everywhere, so they never converged.
        let limits = Limits {
            max_value_bytes: 1 << 10,
            max_object_bytes: 4 << 10,
            ..Limits::default()
        };
        let (da, db) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let a = replica(da.path(), limits);
        let b = second(db.path(), limits);
        for i in 0..3u8 {
            a.write_register(b"k", Some(vec![i; 1000]), &VClock::new())
                .expect("a");
            b.write_register(b"k", Some(vec![10 + i; 1000]), &VClock::new())
                .expect("b");
        }
        let theirs = b.get(b"k").expect("get").expect("held");
        let merged = register(
            a.merge(b"k", &theirs)
                .expect("merged past the object limit"),
        );
        assert_eq!(merged.values().len(), 6);
        assert!(
            Object::Register(merged.clone())
                .encode()
                .expect("encode")
                .len()
                > limits.max_object_bytes
        );
        assert!(matches!(
            a.write_register(b"k", Some(vec![99; 1000]), &VClock::new()),
            Err(ReplicaError::ObjectTooLarge { .. })
        ));
        let resolved = a
            .write_register(b"k", Some(b"resolved".to_vec()), merged.context())
            .expect("a resolving write");
        assert_eq!(resolved.values(), vec![&b"resolved"[..]]);
        // Past the merge limit a merge is still refused, with the reason.
        let mut big = Register::new();
        for i in 0..20u64 {
            big.write(100 + i, &VClock::new(), Some(vec![7; 1000]))
                .expect("write");
        }
        assert!(matches!(
            a.merge(b"other", &Object::Register(big)),
            Err(ReplicaError::ObjectTooLarge { .. })
        ));
    }

    #[test]
    fn deleting_a_missing_key_stores_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = replica(dir.path(), Limits::default());
        r.write_register(b"gone", None, &VClock::new())
            .expect("delete");
        assert!(r.get(b"gone").expect("get").is_none());
    }

    #[test]
    fn a_write_after_a_partial_reap_is_not_shadowed_by_the_old_tombstone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = replica(dir.path(), Limits::default());
        let empty = VClock::new();
        for _ in 0..3 {
            r.write_register(b"k", Some(b"v".to_vec()), &empty)
                .expect("put");
        }
        let reg = match r.get(b"k").expect("get") {
            Some(Object::Register(reg)) => reg,
            other => panic!("{other:?}"),
        };
        let tomb = r.write_register(b"k", None, reg.context()).expect("delete");
        // Another replica still holds the tombstone; this one reaps it.
        let held = Object::Register(tomb.clone());
        let digest = held.digest(b"k").expect("digest");
        let p = partition_of(b"k", 256);
        assert!(r.store().remove_if(p, b"k", &digest).expect("reap"));
        let fresh = r
            .write_register(b"k", Some(b"new".to_vec()), &empty)
            .expect("put after reap");
        let mut other = held;
        other.merge(&Object::Register(fresh)).expect("merge");
        match other {
            Object::Register(m) => assert_eq!(m.values(), vec![b"new".as_slice()]),
            other => panic!("{other:?}"),
        }
        // A context from before the reap is still accepted.
        r.write_register(b"k", Some(b"newer".to_vec()), tomb.context())
            .expect("old context");
    }

    #[test]
    fn dot_counters_never_repeat_across_reopens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = {
            let r = replica(dir.path(), Limits::default());
            r.next_dot().expect("dot")
        };
        let r = replica(dir.path(), Limits::default());
        assert!(r.next_dot().expect("dot") > first + DOT_BLOCK - 1);
    }

    #[test]
    fn the_next_dot_block_is_reserved_ahead_without_holding_up_writes() {
        use std::sync::atomic::Ordering::SeqCst;
        let dir = tempfile::tempdir().expect("tempdir");
        let r = replica(dir.path(), Limits::default());
        let first_block = r.dots.reserved.load(SeqCst);
        let start = r.next_dot().expect("dot");
        // Jump to just past half the block, as that many writes would.
        r.dots.next.store(first_block - DOT_BLOCK / 2, SeqCst);
        r.next_dot().expect("dot");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while r.dots.reserved.load(SeqCst) == first_block {
            assert!(std::time::Instant::now() < deadline, "never reserved ahead");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(r.dots.reserved.load(SeqCst), first_block + DOT_BLOCK);
        let on_disk = read_meta_u64(r.store(), "dot_reserved").expect("meta");
        assert_eq!(on_disk, Some(first_block + DOT_BLOCK));
        // Past the whole block at once: reserved in line, never handed out twice.
        r.dots.next.store(first_block + 3 * DOT_BLOCK, SeqCst);
        let far = r.next_dot().expect("dot");
        assert!(far < r.dots.reserved.load(SeqCst));
        assert!(far > start);
    }

    #[test]
    fn unsafe_lww_loses_concurrent_writes_on_write_and_merge() {
        let a_dir = tempfile::tempdir().expect("tempdir");
        let b_dir = tempfile::tempdir().expect("tempdir");
        let a = replica(a_dir.path(), Limits::default()).with_unsafe_lww(true);
        let b = second(b_dir.path(), Limits::default());
        a.write_register(b"k", Some(b"1".to_vec()), &VClock::new())
            .expect("write");
        let reg = a
            .write_register(b"k", Some(b"2".to_vec()), &VClock::new())
            .expect("write");
        assert_eq!(
            reg.values(),
            vec![&b"2"[..]],
            "a blind write replaced the first"
        );
        b.write_register(b"k", Some(b"3".to_vec()), &VClock::new())
            .expect("write");
        let theirs = b.get(b"k").expect("get").expect("found");
        match a.merge(b"k", &theirs).expect("merge") {
            Object::Register(r) => assert_eq!(r.values().len(), 1, "one writer kept"),
            other => panic!("not a register: {other:?}"),
        }
        // The causal replica keeps both.
        let ours = a.get(b"k").expect("get").expect("found");
        b.write_register(b"k", Some(b"4".to_vec()), &VClock::new())
            .expect("write");
        match b.merge(b"k", &ours).expect("merge") {
            Object::Register(r) => assert!(r.values().len() >= 2),
            other => panic!("not a register: {other:?}"),
        }
    }

    #[test]
    fn merge_of_remote_state_converges() {
        let a_dir = tempfile::tempdir().expect("tempdir");
        let b_dir = tempfile::tempdir().expect("tempdir");
        let a = replica(a_dir.path(), Limits::default());
        let b = second(b_dir.path(), Limits::default());
        a.counter_add(b"c", 5).expect("add");
        b.counter_add(b"c", -2).expect("add");
        let sa = a.get(b"c").expect("get").expect("found");
        let sb = b.get(b"c").expect("get").expect("found");
        a.merge(b"c", &sb).expect("merge");
        b.merge(b"c", &sa).expect("merge");
        assert_eq!(a.get(b"c").expect("get"), b.get(b"c").expect("get"));
    }
}
