//! One replica's view of its keys: validated, atomic read-merge-write of objects in
//! the local store. Coordinators call it for the writes they coordinate and for the
//! states other replicas send.

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

impl Limits {
    /// Largest frame the RPC layer must accept to carry any object these limits allow.
    pub fn frame_bytes(&self) -> usize {
        self.max_object_bytes + self.max_key_bytes + 64 * 1024
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
    reserved: std::sync::Mutex<u64>,
}

/// The local replica of a node.
#[derive(Clone)]
pub struct Replica {
    store: Store,
    actor: Actor,
    limits: Limits,
    ring_size: u32,
    dots: std::sync::Arc<Dots>,
    /// Registers resolve by last writer wins (unsafe, simulation only).
    unsafe_lww: bool,
}

impl Replica {
    /// A replica over `store`, writing as `actor`; reserves a block of dot counters.
    ///
    /// # Errors
    /// [`ReplicaError::Storage`] if the reservation cannot be read or written.
    pub fn new(
        store: Store,
        actor: Actor,
        limits: Limits,
        ring_size: u32,
    ) -> Result<Self, ReplicaError> {
        let reserved = match store.meta("dot_reserved")? {
            None => 0,
            Some(v) => <[u8; 8]>::try_from(v.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| {
                    ReplicaError::Object(ObjectError::Corrupt {
                        reason: format!("dot reservation of {} bytes", v.len()),
                    })
                })?,
        };
        let next = reserved + 1;
        let block = next + DOT_BLOCK;
        store.set_meta("dot_reserved", &block.to_be_bytes())?;
        Ok(Replica {
            store,
            actor,
            limits,
            ring_size,
            dots: std::sync::Arc::new(Dots {
                next: std::sync::atomic::AtomicU64::new(next),
                reserved: std::sync::Mutex::new(block),
            }),
            unsafe_lww: false,
        })
    }

    /// Makes registers resolve by last writer wins, dropping concurrent siblings
    /// after every write and merge. **Loses acknowledged writes**: it exists so the
    /// simulation can prove its checker sees lost writes (`ringkv-sim --unsafe-lww`).
    #[must_use]
    pub fn with_unsafe_lww(mut self, on: bool) -> Self {
        self.unsafe_lww = on;
        self
    }

    /// The next node-wide dot counter, reserving a new block on disk when needed.
    fn next_dot(&self) -> Result<u64, ReplicaError> {
        let n = self
            .dots
            .next
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut reserved = self.dots.reserved.lock().unwrap_or_else(|p| p.into_inner());
        if n >= *reserved {
            let block = n + DOT_BLOCK;
            self.store.set_meta("dot_reserved", &block.to_be_bytes())?;
            *reserved = block;
        }
        Ok(n)
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
        self.check_key(key)?;
        let raw = self.store.get(partition_of(key, self.ring_size), key)?;
        Ok(raw.map(|b| Object::decode(&b)).transpose()?)
    }

    /// Atomically applies `f` to the object of `key` (created empty as `kind` if
    /// absent) and stores the result if `f` returns `true`.
    fn modify<R>(
        &self,
        key: &[u8],
        kind: Kind,
        f: impl FnOnce(&mut Object) -> Result<(bool, R), ReplicaError>,
    ) -> Result<(Object, R), ReplicaError> {
        self.check_key(key)?;
        let limit = self.limits.max_object_bytes;
        let lww = self.unsafe_lww;
        let (_, out) = self
            .store
            .update(partition_of(key, self.ring_size), key, |cur| {
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
                let (write, r) = f(&mut obj)?;
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
            })?;
        Ok(out)
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
        let actor = self.actor;
        let limits = self.limits;
        let deleting = value.is_none();
        let floor = self.next_dot()?;
        let (obj, ()) = self.modify(key, Kind::Register, |obj| {
            let Object::Register(reg) = obj else {
                unreachable!("modify checked the kind")
            };
            if deleting && reg.siblings().is_empty() {
                // Deleting a key that never existed here stores nothing.
                return Ok((false, ()));
            }
            let mut next = reg.clone();
            next.write_at(actor, floor, context, value)?;
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
        let actor = self.actor;
        let (obj, ()) = self.modify(key, Kind::Counter, |obj| {
            if let Object::Counter(c) = obj {
                c.add(actor, delta);
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
        let actor = self.actor;
        let (obj, present) = self.modify(key, Kind::Set, |obj| {
            let Object::Set(s) = obj else {
                unreachable!("modify checked the kind")
            };
            if add {
                s.add(actor, member.to_vec());
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

    /// Merges a state received from another replica into the local one.
    ///
    /// # Errors
    /// [`ObjectError::WrongKind`] if the kinds differ, or storage failures.
    pub fn merge(&self, key: &[u8], incoming: &Object) -> Result<Object, ReplicaError> {
        let (obj, ()) = self.modify(key, incoming.kind(), |obj| {
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
    use ringkv_storage::{StoreConfig, SyncPolicy};

    fn replica(dir: &std::path::Path, limits: Limits) -> Replica {
        let mut cfg = StoreConfig::new(dir);
        cfg.sync = SyncPolicy::None;
        Replica::new(Store::open(cfg).expect("open"), 7, limits, 256).expect("replica")
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
    fn unsafe_lww_loses_concurrent_writes_on_write_and_merge() {
        let a_dir = tempfile::tempdir().expect("tempdir");
        let b_dir = tempfile::tempdir().expect("tempdir");
        let a = replica(a_dir.path(), Limits::default()).with_unsafe_lww(true);
        let b = Replica::new(
            Store::open(StoreConfig::new(b_dir.path())).expect("open"),
            8,
            Limits::default(),
            256,
        )
        .expect("replica");
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
        let b = Replica::new(
            Store::open(StoreConfig::new(b_dir.path())).expect("open"),
            8,
            Limits::default(),
            256,
        )
        .expect("replica");
        a.counter_add(b"c", 5).expect("add");
        b.counter_add(b"c", -2).expect("add");
        let sa = a.get(b"c").expect("get").expect("found");
        let sb = b.get(b"c").expect("get").expect("found");
        a.merge(b"c", &sb).expect("merge");
        b.merge(b"c", &sa).expect("merge");
        assert_eq!(a.get(b"c").expect("get"), b.get(b"c").expect("get"));
    }
}
