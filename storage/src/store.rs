//! The node's store: objects, Merkle leaves, hints and metadata in one log.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::disk::Disk;
use crate::error::{Result, StorageError};
use crate::keys::{PREFIX_LEN, object_digest, object_key, segment_of, segment_prefix};
use crate::log::{Log, LogConfig, LogStats, Op, Space};
use crate::merkle::{Hash, xor};
use crate::meta::MetaFile;
use crate::sync::{Background, GroupSync, SyncPolicy};
use crate::tree::{TreeStats, Trees};

/// Metadata entry saying the store was closed cleanly (`[1]`); `[0]` while open.
const META_CLEAN: &str = "clean_shutdown";
/// Metadata entry set (`[1]`) by an open that was not clean, until the caller has
/// acted on it ([`Store::acknowledge_unclean_open`]): a later clean close, even one
/// that follows a failed start, must not make the next open look clean.
const META_UNCLEAN_PENDING: &str = "unclean_pending";
/// Metadata entry listing the damaged stretches of segments that an earlier open
/// already skipped and accounted for (they are not read again, and are not new).
const META_KNOWN_DAMAGE: &str = "known_damage";

/// Number of lock stripes for read-merge-write. Keys of one Merkle segment share a
/// stripe, so the stripe lock also serialises updates of that segment's leaf.
const STRIPES: usize = 1024;
/// Who runs a store's periodic work (interval syncs, tree checkpoints, merges).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Driver {
    /// Background threads of the store's own, on the wall clock.
    #[default]
    Threads,
    /// The caller, through [`Store::tick`], on whatever clock it keeps (the
    /// simulation's virtual time: what is synced when a simulated machine loses
    /// power must not depend on how fast the host runs).
    Caller,
}

/// Settings of [`Store::open`].
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Directory of the database (created if missing).
    pub path: PathBuf,
    /// When writes are synced to disk.
    pub sync: SyncPolicy,
    /// The disk the files are on.
    pub disk: Disk,
    /// Who runs the periodic work.
    pub driver: Driver,
}

impl StoreConfig {
    /// Defaults for a directory: interval sync, the OS's disk, background threads.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StoreConfig {
            path: path.into(),
            sync: SyncPolicy::Interval(SyncPolicy::DEFAULT_INTERVAL),
            disk: Disk::Os,
            driver: Driver::Threads,
        }
    }
}

/// What a read-merge-write closure decided.
#[derive(Debug)]
pub enum Change {
    /// Leave the stored value as it is.
    Keep,
    /// Store these (canonical) bytes.
    Put(Vec<u8>),
}

/// What [`Store::update`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updated {
    /// Digest before the update (`None` if absent).
    pub before: Option<Hash>,
    /// Digest after the update (`None` if absent).
    pub after: Option<Hash>,
}

impl Updated {
    /// Whether the stored state changed.
    pub fn changed(&self) -> bool {
        self.before != self.after
    }
}

/// One node's storage. Cheap to clone; all clones share one log, closed (trees
/// checkpointed, everything synced) when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    log: Arc<Log>,
    stripes: Box<[Mutex<()>]>,
    trees: Arc<Trees>,
    meta: MetaFile,
    group: GroupSync,
    sync: SyncPolicy,
    driver: Driver,
    path: PathBuf,
    /// Whether the previous run closed the store cleanly and recovery found no
    /// damage: nothing this store once held can be missing now.
    opened_clean: bool,
    /// Set once [`Store::close`] has run.
    closed: std::sync::atomic::AtomicBool,
    /// Damaged values dropped since open.
    damaged_dropped: AtomicU64,
    // Stopped first on close: it checkpoints the trees and syncs once more.
    background: Mutex<Option<Background>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(error) = self.close() {
            tracing::error!(%error, "closing the store failed; the next open recovers as after a crash");
        }
    }
}

impl Inner {
    /// Stops the background work, checkpoints the trees, syncs, refuses later
    /// writes, and records a clean shutdown once everything is on disk.
    fn close(&self) -> Result<()> {
        if self.closed.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return Ok(());
        }
        drop(lock(&self.background).take());
        self.trees.checkpoint()?;
        self.log.close();
        self.log.sync()?;
        self.meta.set_all([(META_CLEAN, &[1u8][..])])
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of our locks cannot leave the protected data half
    // written (every critical section writes the map/tree last), so poisoning is ignored.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Store {
    /// Opens (or creates) the store in `config.path`.
    ///
    /// Opening reads the log's segments once to rebuild the key directory (checking
    /// every record's checksum) and rebuilds no tree: Merkle upper nodes come
    /// from their checkpoint per partition on first use.
    ///
    /// # Errors
    /// [`StorageError::Locked`] if another process has the directory open, or
    /// [`StorageError::Io`] or [`StorageError::Corrupt`] if the log cannot be recovered,
    /// [`StorageError::ForeignFormat`] if the directory holds another engine's files.
    pub fn open(config: StoreConfig) -> Result<Store> {
        std::fs::create_dir_all(&config.path)
            .map_err(StorageError::io("creating the data directory"))?;
        let log = Arc::new(Log::open(
            &config.path,
            LogConfig::default(),
            config.disk.clone(),
        )?);
        let (meta, meta_existed) = MetaFile::open(&config.path, config.disk.clone())?;
        let fresh = !meta_existed && log.recovered_nothing();
        if !meta_existed && !fresh {
            // A directory from before the metadata file: its metadata is in the log.
            let old: Vec<(String, Vec<u8>)> = log
                .prefix(Space::Meta, &[], usize::MAX)
                .into_iter()
                .filter(|item| !crate::tree::is_tree_meta(&item.key))
                .map(|item| {
                    Ok((
                        String::from_utf8_lossy(&item.key).into_owned(),
                        item.value()?,
                    ))
                })
                .collect::<Result<_>>()?;
            meta.set_all(old.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        let trees = Arc::new(Trees::new(log.clone()));
        // A damaged stretch an earlier open skipped is skipped again on every open
        // until a merge rewrites its segment: only new damage lost anything now.
        let known: Vec<(u32, u64)> = meta
            .get(META_KNOWN_DAMAGE)
            .and_then(|raw| postcard::from_bytes(&raw).ok())
            .unwrap_or_default();
        let skipped = log.skipped_at().to_vec();
        let damaged = log.stats().truncated_bytes > 0 || skipped.iter().any(|d| !known.contains(d));
        if trees.needs_rebuild(damaged)? {
            trees.rebuild_leaves()?;
        }
        let was_clean = meta.get(META_CLEAN).as_deref() == Some(&[1u8][..]);
        let pending = meta.get(META_UNCLEAN_PENDING).as_deref() == Some(&[1u8][..]);
        let opened_clean = (fresh || was_clean) && !damaged && !pending;
        let skipped_raw = postcard::to_stdvec(&skipped).map_err(|_| StorageError::MetaTooLarge)?;
        // From now until a clean close, a crash must be noticed on the next open.
        meta.set_all([
            (META_CLEAN, &[0u8][..]),
            (META_UNCLEAN_PENDING, &[u8::from(!opened_clean)][..]),
            (META_KNOWN_DAMAGE, &skipped_raw[..]),
        ])?;
        let background = match config.driver {
            Driver::Caller => None,
            Driver::Threads => {
                let sync_every = match config.sync {
                    SyncPolicy::Interval(interval) => Some(interval),
                    SyncPolicy::Always | SyncPolicy::None => None,
                };
                Some(
                    Background::start(log.clone(), sync_every, trees.clone())
                        .map_err(StorageError::io("starting the storage threads"))?,
                )
            }
        };
        let stripes = (0..STRIPES).map(|_| Mutex::new(())).collect();
        Ok(Store {
            inner: Arc::new(Inner {
                log,
                stripes,
                trees,
                meta,
                group: GroupSync::default(),
                sync: config.sync,
                driver: config.driver,
                path: config.path,
                opened_clean,
                closed: std::sync::atomic::AtomicBool::new(false),
                damaged_dropped: AtomicU64::new(0),
                background: Mutex::new(background),
            }),
        })
    }

    /// Whether the previous run of this directory ended with a clean close and
    /// recovery found no new damage (a new directory counts as clean). After a
    /// crash, a power loss or damage, some record this store once held may be
    /// gone: a replica must then not build new versions on what it holds (Riak's
    /// kv679). It stays false on every open until [`Store::acknowledge_unclean_open`].
    pub fn opened_clean(&self) -> bool {
        self.inner.opened_clean
    }

    /// Writes `entries` (what the caller did about an unclean open: a new actor
    /// epoch) and, in the same write, forgets that the open was unclean.
    ///
    /// # Errors
    /// As [`Store::set_meta`].
    pub fn acknowledge_unclean_open(&self, entries: &[(&str, &[u8])]) -> Result<()> {
        let mut all = entries.to_vec();
        all.push((META_UNCLEAN_PENDING, &[0u8][..]));
        self.set_metas(&all)
    }

    /// Runs the periodic work of a store opened with [`Driver::Caller`]: an interval
    /// sync when `sync_due`, a checkpoint of the trees when `checkpoint_due`. Does
    /// nothing for a store with its own threads.
    ///
    /// # Errors
    /// [`StorageError`] of the sync or checkpoint.
    pub fn tick(&self, sync_due: bool, checkpoint_due: bool) -> Result<()> {
        if self.inner.driver != Driver::Caller {
            return Ok(());
        }
        if checkpoint_due {
            self.inner.trees.checkpoint()?;
        }
        if sync_due && matches!(self.inner.sync, SyncPolicy::Interval(_)) {
            self.inner.log.sync()?;
        }
        Ok(())
    }

    /// Who runs the periodic work of this store.
    pub fn driver(&self) -> Driver {
        self.inner.driver
    }

    /// Closes the store: background work stopped, trees checkpointed, everything
    /// synced, a clean shutdown recorded. Writes fail from then on. (Dropping the
    /// last clone closes too; this lets a shutdown report a failure.)
    ///
    /// # Errors
    /// [`StorageError`] if the checkpoint, sync or metadata write fails: the next
    /// open then recovers as after a crash.
    pub fn close(&self) -> Result<()> {
        self.inner.close()
    }

    /// The directory of this store.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The sync policy in force.
    pub fn sync_policy(&self) -> SyncPolicy {
        self.inner.sync
    }

    /// Under [`SyncPolicy::Always`], the group-commit ticket that covers what this
    /// caller committed or saw; wait for it with [`Store::make_durable`] after
    /// releasing locks, so concurrent writers can group.
    ///
    /// Take the ticket while still holding the key's stripe lock: a caller that sees
    /// (and acknowledges) this state after the lock is released must find it
    /// counted in [`GroupSync::committed`].
    fn ticket(&self, wrote: bool) -> Option<u64> {
        if self.inner.sync != SyncPolicy::Always {
            return None;
        }
        Some(if wrote {
            self.inner.group.ticket()
        } else {
            self.inner.group.committed()
        })
    }

    /// Waits until a [`Store::ticket`] is durable (at once without one).
    fn make_durable(&self, ticket: Option<u64>) -> Result<()> {
        match ticket {
            None => Ok(()),
            Some(ticket) => self.inner.group.wait(&self.inner.log, ticket),
        }
    }

    fn stripe(&self, partition: u32, segment: u16) -> &Mutex<()> {
        let idx = (partition as usize).wrapping_mul(4099) ^ segment as usize;
        &self.inner.stripes[idx % STRIPES]
    }

    fn read_raw(&self, okey: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.log.get(Space::Objects, okey)
    }

    /// Reads one object.
    ///
    /// # Errors
    /// [`StorageError::Io`] on an I/O failure.
    pub fn get(&self, partition: u32, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.read_raw(&object_key(partition, key))
    }

    /// Atomic read-merge-write of one key: `merge` sees the stored bytes and decides.
    ///
    /// The object and its Merkle leaf are committed in one batch, with the durability of
    /// the store's [`SyncPolicy`]. `merge` runs under the key's stripe lock: keep it short.
    ///
    /// # Errors
    /// Whatever `merge` returns, or a [`StorageError`] (converted into `E`).
    pub fn update<R, E>(
        &self,
        partition: u32,
        key: &[u8],
        merge: impl FnOnce(Option<&[u8]>) -> std::result::Result<(Change, R), E>,
    ) -> std::result::Result<(Updated, R), E>
    where
        E: From<StorageError>,
    {
        let (segment, okey) = (segment_of(key), object_key(partition, key));
        let guard = lock(self.stripe(partition, segment));
        let current = self.read_raw(&okey)?;
        let before = current.as_ref().map(|v| object_digest(key, v));
        let (change, out) = merge(current.as_deref())?;
        let after = match change {
            Change::Put(bytes) => {
                let after = object_digest(key, &bytes);
                if before != Some(after) {
                    let delta = match &before {
                        Some(b) => xor(b, &after),
                        None => after,
                    };
                    let batch = vec![Op {
                        space: Space::Objects,
                        key: okey,
                        value: Some(bytes),
                    }];
                    self.inner.trees.commit(batch, partition, segment, &delta)?;
                }
                Some(after)
            }
            Change::Keep => before,
        };
        // Also when nothing changed: the state the caller saw may be another writer's,
        // not yet synced, and the caller is about to acknowledge it.
        let ticket = self.ticket(before != after);
        drop(guard);
        self.make_durable(ticket)?;
        Ok((Updated { before, after }, out))
    }

    /// Removes an object only if its digest is still `expected` (for tombstone reaping:
    /// a newer write that raced in is never removed).
    ///
    /// # Errors
    /// [`StorageError::Io`] on an I/O failure.
    pub fn remove_if(&self, partition: u32, key: &[u8], expected: &Hash) -> Result<bool> {
        let (segment, okey) = (segment_of(key), object_key(partition, key));
        let guard = lock(self.stripe(partition, segment));
        let current = match self.read_raw(&okey) {
            // Damaged: it cannot be what the caller saw (the log remembers it for
            // [`Store::damaged`]).
            Err(StorageError::Corrupt { .. }) => return Ok(false),
            other => other?,
        };
        let Some(current) = current else {
            return Ok(false);
        };
        if &object_digest(key, &current) != expected {
            return Ok(false);
        }
        let batch = vec![Op {
            space: Space::Objects,
            key: okey,
            value: None,
        }];
        self.inner
            .trees
            .commit(batch, partition, segment, expected)?;
        let ticket = self.ticket(true);
        drop(guard);
        self.make_durable(ticket)?;
        Ok(true)
    }

    /// Root hash of a partition's tree ([`EMPTY`] if it holds nothing).
    ///
    /// # Errors
    /// A [`StorageError`] if the node cannot be read.
    pub fn root(&self, partition: u32) -> Result<Hash> {
        self.inner.trees.root(partition)
    }

    /// Hashes of the 16 children of the node at `level` / `index` of a partition's
    /// tree (children at the last level are leaves, one per segment).
    ///
    /// # Errors
    /// [`StorageError::NoSuchNode`] for a node outside the tree or a leaf.
    pub fn children(&self, partition: u32, level: u8, index: u32) -> Result<Vec<Hash>> {
        self.inner.trees.children(partition, level, index)
    }

    /// Bytes the log occupies on disk.
    ///
    /// # Errors
    /// None today; kept fallible for engines that must ask the file system.
    pub fn disk_bytes(&self) -> Result<u64> {
        Ok(self.inner.log.stats().bytes)
    }

    /// Counters of the log: segments, bytes, live bytes, merges, torn bytes cut.
    pub fn log_stats(&self) -> LogStats {
        self.inner.log.stats()
    }

    /// Latencies of the log's fsyncs so far.
    pub fn fsync_latency(&self) -> crate::timing::LatencySnapshot {
        self.inner.log.fsyncs.snapshot()
    }

    /// How long the sync now in flight has been running, if one is (a disk that
    /// stopped answering shows here).
    pub fn sync_running_for(&self) -> Option<std::time::Duration> {
        self.inner.log.syncing.running_for()
    }

    /// Bytes available to this process and in all on the data directory's file
    /// system, if the system says.
    pub fn disk_space(&self) -> Option<(u64, u64)> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.path().as_os_str().as_bytes()).ok()?;
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
        // SAFETY: a NUL-terminated path and a buffer of the right type, which the
        // call fills when it returns 0.
        let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
        if rc != 0 {
            return None;
        }
        // SAFETY: statvfs returned 0, so it filled the buffer.
        let st = unsafe { st.assume_init() };
        // u64 on Linux (the only target this is built for).
        let frsize = st.f_frsize;
        Some((
            st.f_bavail.saturating_mul(frsize),
            st.f_blocks.saturating_mul(frsize),
        ))
    }

    /// Whether an fsync failed: the store takes no more writes until restarted.
    pub fn is_poisoned(&self) -> bool {
        self.inner.log.is_poisoned()
    }

    /// How trees were loaded since open (checkpoint or, after a crash, from leaves).
    pub fn tree_stats(&self) -> TreeStats {
        self.inner.trees.stats()
    }

    /// Checkpoints the hash trees now (also done every 10 s and on close).
    ///
    /// # Errors
    /// [`StorageError::Io`] if the write fails.
    pub fn checkpoint(&self) -> Result<usize> {
        self.inner.trees.checkpoint()
    }

    /// `(user key, digest)` of every object in one segment, sorted by key.
    ///
    /// # Errors
    /// [`StorageError::Io`] on an I/O failure.
    pub fn segment_digests(&self, partition: u32, segment: u16) -> Result<Vec<(Vec<u8>, Hash)>> {
        let mut out = Vec::new();
        for item in self.inner.log.prefix(
            Space::Objects,
            &segment_prefix(partition, segment),
            usize::MAX,
        ) {
            // A damaged value is left out (as if absent), so the peer sends its
            // copy; the log remembers it for [`Store::damaged`].
            let Some(v) = item.value_or_damaged(&self.inner.log, Space::Objects)? else {
                continue;
            };
            let user = item.key.get(PREFIX_LEN..).ok_or(StorageError::CorruptKey {
                len: item.key.len(),
            })?;
            out.push((user.to_vec(), object_digest(user, &v)));
        }
        Ok(out)
    }

    /// Iterates over every `(user key, value)` of a partition, in key-layout order:
    /// the keys present when it was called, each value read when its turn comes.
    /// Damaged values are left out (see [`Store::damaged`]).
    pub fn scan_partition(
        &self,
        partition: u32,
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + use<> {
        let log = self.inner.log.clone();
        self.inner
            .log
            .prefix(Space::Objects, &partition.to_be_bytes(), usize::MAX)
            .into_iter()
            .filter_map(move |item| {
                let v = match item.value_or_damaged(&log, Space::Objects) {
                    Ok(Some(v)) => v,
                    Ok(None) => return None,
                    Err(e) => return Some(Err(e)),
                };
                let user = match item.key.get(PREFIX_LEN..) {
                    Some(u) => u,
                    None => {
                        return Some(Err(StorageError::CorruptKey {
                            len: item.key.len(),
                        }));
                    }
                };
                Some(Ok((user.to_vec(), v)))
            })
    }

    /// Up to `n` objects found damaged (their checksum failed when read by a
    /// request, a scan or a merge), as (partition, user key). The owner of the store
    /// drops each with [`Store::drop_damaged`] once it is safe to (a replica first
    /// makes sure nothing it writes later can claim versions the value held), and
    /// anti-entropy or read repair brings the key back from another replica.
    /// Damaged hints are dropped here (a hint is an extra copy; the replicas it was
    /// for still get the state from anti-entropy).
    pub fn damaged(&self, n: usize) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        for (space, key) in self.inner.log.damaged(n) {
            match space {
                Space::Objects => match crate::keys::split_object_key(&key) {
                    Some((partition, _, user)) => out.push((partition, user.to_vec())),
                    None => self.inner.log.damage_resolved(space, &key),
                },
                Space::Hints => {
                    let dropped = self.inner.log.commit(&[Op {
                        space,
                        key: key.to_vec(),
                        value: None,
                    }]);
                    if dropped.is_ok() {
                        self.inner
                            .damaged_dropped
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        self.inner.log.damage_resolved(space, &key);
                    }
                }
                // Hash-tree values are rewritten by the next write of their
                // partition segment, or rebuilt from the objects on the next open
                // (recovery finds the damaged record): nothing to drop here.
                Space::Merkle | Space::Meta => {}
            }
        }
        out
    }

    /// Drops a damaged object (if it still is damaged) and recomputes its leaf
    /// from the other objects of its segment: the leaf holds the lost value's
    /// digest, which cannot be read back to take it out. Returns whether it was
    /// dropped.
    ///
    /// # Errors
    /// [`StorageError`] if the drop cannot be written.
    pub fn drop_damaged(&self, partition: u32, key: &[u8]) -> Result<bool> {
        let (segment, okey) = (segment_of(key), object_key(partition, key));
        let guard = lock(self.stripe(partition, segment));
        match self.read_raw(&okey) {
            Err(StorageError::Corrupt { .. }) => {}
            // Gone or rewritten meanwhile: nothing damaged is left.
            Ok(_) => {
                drop(guard);
                self.inner.log.damage_resolved(Space::Objects, &okey);
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        let mut fresh = crate::merkle::EMPTY;
        for item in self.inner.log.prefix(
            Space::Objects,
            &segment_prefix(partition, segment),
            usize::MAX,
        ) {
            if item.key[..] == okey[..] {
                continue;
            }
            // Another damaged value of the same leaf is left out too (and dropped
            // in its turn).
            if let Some(v) = item.value_or_damaged(&self.inner.log, Space::Objects)?
                && let Some(user) = item.key.get(PREFIX_LEN..)
            {
                fresh = xor(&fresh, &object_digest(user, &v));
            }
        }
        let delta = xor(&self.inner.trees.leaf(partition, segment)?, &fresh);
        let batch = vec![Op {
            space: Space::Objects,
            key: okey.clone(),
            value: None,
        }];
        self.inner.trees.commit(batch, partition, segment, &delta)?;
        let ticket = self.ticket(true);
        drop(guard);
        self.make_durable(ticket)?;
        self.inner.log.damage_resolved(Space::Objects, &okey);
        self.inner
            .damaged_dropped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            partition,
            key = ?String::from_utf8_lossy(key),
            "dropped a damaged value; a replica will bring it back"
        );
        Ok(true)
    }

    /// Recomputes the leaf of a segment from its objects and corrects it if it
    /// differs; returns whether it did. A leaf is kept by deltas, so once a delta's
    /// record is lost while later ones survive (a power loss that wrote back a later
    /// segment but not the end of an earlier one, review S2) it is wrong for good,
    /// and anti-entropy would find it different on every round with nothing to
    /// move. Anti-entropy calls this when a leaf differs but its keys do not.
    ///
    /// # Errors
    /// [`StorageError`] of the reads or the commit.
    pub fn verify_leaf(&self, partition: u32, segment: u16) -> Result<bool> {
        let guard = lock(self.stripe(partition, segment));
        let mut fresh = crate::merkle::EMPTY;
        for item in self.inner.log.prefix(
            Space::Objects,
            &segment_prefix(partition, segment),
            usize::MAX,
        ) {
            if let Some(v) = item.value_or_damaged(&self.inner.log, Space::Objects)?
                && let Some(user) = item.key.get(PREFIX_LEN..)
            {
                fresh = xor(&fresh, &object_digest(user, &v));
            }
        }
        let delta = xor(&self.inner.trees.leaf(partition, segment)?, &fresh);
        if delta == crate::merkle::EMPTY {
            return Ok(false);
        }
        self.inner
            .trees
            .commit(Vec::new(), partition, segment, &delta)?;
        let ticket = self.ticket(true);
        drop(guard);
        self.make_durable(ticket)?;
        tracing::warn!(
            partition,
            segment,
            "corrected a hash-tree leaf that did not match its objects"
        );
        Ok(true)
    }

    /// Damaged values dropped since open.
    pub fn damaged_dropped(&self) -> u64 {
        self.inner
            .damaged_dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Number of stored objects (tombstones of the object model included: they are
    /// objects here).
    pub fn approximate_len(&self) -> usize {
        self.inner.log.len(Space::Objects)
    }

    /// Reads a metadata value (from memory: the metadata file is read on open).
    ///
    /// # Errors
    /// None today; kept fallible for backends that read it from disk.
    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.meta.get(name))
    }

    /// Writes a metadata value, durable before returning whatever the policy (the
    /// metadata file is rewritten through a synced temporary file and a rename).
    ///
    /// # Errors
    /// [`StorageError::Io`] on an I/O failure, [`StorageError::Closed`] after close.
    pub fn set_meta(&self, name: &str, value: &[u8]) -> Result<()> {
        self.set_metas(&[(name, value)])
    }

    /// Writes several metadata values at once, all or none.
    ///
    /// # Errors
    /// As [`Store::set_meta`].
    pub fn set_metas(&self, entries: &[(&str, &[u8])]) -> Result<()> {
        if self.inner.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        self.inner.meta.set_all(entries.iter().copied())
    }

    /// Stores a hint (opaque to this crate) under `key`.
    ///
    /// # Errors
    /// [`StorageError::Io`] on an I/O failure.
    pub fn put_hint(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.inner.log.commit(&[Op {
            space: Space::Hints,
            key: key.to_vec(),
            value: Some(value.to_vec()),
        }])?;
        self.make_durable(self.ticket(true))
    }

    /// Deletes a hint.
    ///
    /// # Errors
    /// [`StorageError::Io`] on an I/O failure.
    pub fn remove_hint(&self, key: &[u8]) -> Result<()> {
        self.inner.log.commit(&[Op {
            space: Space::Hints,
            key: key.to_vec(),
            value: None,
        }])
    }

    /// One hint, if stored.
    ///
    /// # Errors
    /// [`StorageError::Io`] or [`StorageError::Corrupt`] on a failed read.
    pub fn hint(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.log.get(Space::Hints, key)
    }

    /// Bytes of all stored hints (their values).
    pub fn hint_bytes(&self) -> u64 {
        self.inner.log.value_bytes(Space::Hints)
    }

    /// How many hints are stored (a scan, without copying them out).
    ///
    /// # Errors
    /// [`StorageError::Io`] on an I/O failure.
    pub fn hint_count(&self) -> Result<usize> {
        Ok(self.inner.log.len(Space::Hints))
    }

    /// Up to `limit` hints whose keys start with `prefix`, in key order.
    ///
    /// # Errors
    /// [`StorageError::Io`] on an I/O failure.
    pub fn hints(&self, prefix: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self.inner.log.prefix(Space::Hints, prefix, limit) {
            // A damaged hint is skipped, so the ones after it are still delivered
            // (review C5: one stalled every hint to its owner), and dropped by
            // [`Store::damaged`].
            if let Some(v) = item.value_or_damaged(&self.inner.log, Space::Hints)? {
                out.push((item.key.to_vec(), v));
            }
        }
        Ok(out)
    }

    /// Forces everything written so far to disk.
    ///
    /// # Errors
    /// [`StorageError::Io`] if the sync fails.
    pub fn sync(&self) -> Result<()> {
        self.inner.log.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::EMPTY;
    use std::collections::BTreeMap;

    fn open(dir: &Path) -> Store {
        let mut cfg = StoreConfig::new(dir);
        cfg.sync = SyncPolicy::None;
        Store::open(cfg).expect("open")
    }

    fn put(s: &Store, p: u32, k: &[u8], v: &[u8]) -> Updated {
        let v = v.to_vec();
        let (u, ()) = s
            .update::<_, StorageError>(p, k, |_| Ok((Change::Put(v), ())))
            .expect("update");
        u
    }

    #[test]
    fn update_sees_previous_value_and_keep_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        put(&s, 1, b"k", b"v1");
        let root = s.root(1).expect("root");
        let (u, seen) = s
            .update::<_, StorageError>(1, b"k", |cur| Ok((Change::Keep, cur.map(<[u8]>::to_vec))))
            .expect("update");
        assert_eq!(seen.as_deref(), Some(&b"v1"[..]));
        assert!(!u.changed());
        assert_eq!(s.root(1).expect("root"), root);
        assert_eq!(s.get(1, b"k").expect("get").as_deref(), Some(&b"v1"[..]));
        assert_eq!(s.get(2, b"k").expect("get"), None);
    }

    #[test]
    fn failing_merge_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        let r: std::result::Result<(Updated, ()), StorageError> = s.update(3, b"k", |_| {
            Err(StorageError::NoSuchNode { level: 9, index: 9 })
        });
        assert!(r.is_err());
        assert_eq!(s.get(3, b"k").expect("get"), None);
        assert_eq!(s.root(3).expect("root"), EMPTY);
    }

    #[test]
    fn roots_depend_on_content_not_history() {
        let a_dir = tempfile::tempdir().expect("tempdir");
        let b_dir = tempfile::tempdir().expect("tempdir");
        let a = open(a_dir.path());
        let b = open(b_dir.path());
        for i in 0..200u32 {
            put(&a, 0, &i.to_be_bytes(), b"x");
        }
        for i in (0..200u32).rev() {
            put(&b, 0, &i.to_be_bytes(), b"old");
            put(&b, 0, &i.to_be_bytes(), b"x");
        }
        assert_eq!(a.root(0).expect("root"), b.root(0).expect("root"));
        put(&b, 0, &7u32.to_be_bytes(), b"y");
        assert_ne!(a.root(0).expect("root"), b.root(0).expect("root"));
        // Removing everything empties the tree again.
        for i in 0..200u32 {
            let k = i.to_be_bytes();
            let d = object_digest(&k, b"x");
            assert!(a.remove_if(0, &k, &d).expect("remove"));
        }
        assert_eq!(a.root(0).expect("root"), EMPTY);
    }

    #[test]
    fn remove_if_refuses_a_changed_object() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        let u = put(&s, 0, b"k", b"v1");
        put(&s, 0, b"k", b"v2");
        let stale = u.after.expect("written");
        assert!(!s.remove_if(0, b"k", &stale).expect("remove"));
        assert!(s.get(0, b"k").expect("get").is_some());
    }

    #[test]
    fn trees_survive_reopen_without_rescan() {
        let dir = tempfile::tempdir().expect("tempdir");
        let roots: BTreeMap<u32, Hash>;
        {
            let s = open(dir.path());
            for i in 0..500u32 {
                put(&s, i % 4, &i.to_be_bytes(), &i.to_le_bytes());
            }
            roots = (0..4).map(|p| (p, s.root(p).expect("root"))).collect();
            s.sync().expect("sync");
        }
        let s = open(dir.path());
        for (p, r) in roots {
            assert_eq!(s.root(p).expect("root"), r);
        }
        // The tree matches one rebuilt from the objects: the root is the XOR of all
        // digests, every leaf the XOR of its segment, every parent the XOR of its children.
        let mut root = EMPTY;
        let mut leaves = vec![EMPTY; crate::merkle::LEAVES];
        for item in s.scan_partition(2) {
            let (k, v) = item.expect("scan");
            let d = object_digest(&k, &v);
            root = xor(&root, &d);
            let seg = segment_of(&k) as usize;
            leaves[seg] = xor(&leaves[seg], &d);
        }
        assert_eq!(root, s.root(2).expect("root"));
        let mut level2 = Vec::new();
        for i in 0..256u32 {
            let children = s.children(2, 2, i).expect("children");
            assert_eq!(children[..], leaves[i as usize * 16..(i as usize + 1) * 16]);
            level2.push(children.iter().fold(EMPTY, |a, c| xor(&a, c)));
        }
        let level1: Vec<Hash> = (0..16u32)
            .flat_map(|i| s.children(2, 1, i).expect("children"))
            .collect();
        assert_eq!(level1, level2);
        let rebuilt = s
            .children(2, 0, 0)
            .expect("children")
            .iter()
            .fold(EMPTY, |a, c| xor(&a, c));
        assert!(s.children(2, 3, 0).is_err());
        assert_eq!(rebuilt, s.root(2).expect("root"));
    }

    #[test]
    fn upper_nodes_come_back_from_checkpoint_or_leaves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        for i in 0..300u32 {
            put(&s, 1, &i.to_be_bytes(), b"a");
        }
        assert_eq!(s.checkpoint().expect("checkpoint"), 1);
        assert_eq!(
            s.checkpoint().expect("checkpoint"),
            0,
            "nothing dirty any more"
        );
        let root = s.root(1).expect("root");
        let fresh = s.inner.trees.load_for_test(1).expect("load");
        assert_eq!(fresh, (root, false));
        // Writes after the checkpoint leave the marker: a fresh load recomputes from leaves.
        for i in 300..400u32 {
            put(&s, 1, &i.to_be_bytes(), b"b");
        }
        let root = s.root(1).expect("root");
        let fresh = s.inner.trees.load_for_test(1).expect("load");
        assert_eq!(fresh, (root, true));
        assert_eq!(s.tree_stats().rebuilt_from_leaves, 1);
    }

    #[test]
    fn segment_digests_list_exactly_the_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        for i in 0..300u32 {
            put(&s, 5, &i.to_be_bytes(), b"v");
        }
        let seg = segment_of(&17u32.to_be_bytes());
        let listed = s.segment_digests(5, seg).expect("scan");
        assert!(listed.iter().any(|(k, _)| k == &17u32.to_be_bytes()));
        assert!(listed.iter().all(|(k, _)| segment_of(k) == seg));
    }

    #[test]
    fn hints_and_meta_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        s.set_meta("node_id", b"a").expect("meta");
        assert_eq!(s.meta("node_id").expect("meta").as_deref(), Some(&b"a"[..]));
        s.put_hint(b"n1/1", b"x").expect("hint");
        s.put_hint(b"n1/2", b"y").expect("hint");
        s.put_hint(b"n2/1", b"z").expect("hint");
        assert_eq!(s.hints(b"n1/", 10).expect("hints").len(), 2);
        assert_eq!(s.hints(b"n1/", 1).expect("hints").len(), 1);
        s.remove_hint(b"n1/1").expect("remove");
        assert_eq!(s.hints(b"n1/", 10).expect("hints").len(), 1);
    }

    #[test]
    fn leaves_are_recomputed_when_recovery_skips_a_damaged_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = open(dir.path());
            for i in 0..200u32 {
                put(
                    &s,
                    i % 3,
                    &i.to_be_bytes(),
                    format!("value-{i:05}").as_bytes(),
                );
            }
            s.checkpoint().expect("checkpoint");
        }
        // Damage the record of one object in the middle of the log: recovery skips
        // it, and with it that write's leaf update.
        let seg = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".seg"))
            .max()
            .expect("segment");
        let path = dir.path().join(seg);
        let mut bytes = std::fs::read(&path).expect("read");
        let at = bytes
            .windows(11)
            .position(|w| w == b"value-00100")
            .expect("on disk");
        bytes[at] ^= 0x01;
        std::fs::write(&path, &bytes).expect("write");
        let s = open(dir.path());
        assert_eq!(s.log_stats().skipped_records, 1);
        assert_eq!(s.get(100 % 3, &100u32.to_be_bytes()).expect("get"), None);
        // Every root is again the XOR of the digests of what the store holds.
        for p in 0..3u32 {
            let mut root = EMPTY;
            for item in s.scan_partition(p) {
                let (k, v) = item.expect("scan");
                root = xor(&root, &object_digest(&k, &v));
            }
            assert_eq!(s.root(p).expect("root"), root, "partition {p}");
        }
        assert_eq!(s.tree_stats().rebuilt_from_leaves, 3);
        // And the rebuild is not repeated on the next open.
        drop(s);
        let s = open(dir.path());
        assert_eq!(s.root(1).expect("root"), {
            let mut root = EMPTY;
            for item in s.scan_partition(1) {
                let (k, v) = item.expect("scan");
                root = xor(&root, &object_digest(&k, &v));
            }
            root
        });
    }

    fn simulated(dir: &Path, disk: &Arc<crate::disk::SimulatedDisk>) -> Store {
        let mut cfg = StoreConfig::new(dir);
        cfg.disk = Disk::Simulated(disk.clone());
        cfg.driver = Driver::Caller;
        Store::open(cfg).expect("open")
    }

    #[test]
    fn a_power_loss_drops_what_the_last_sync_did_not_cover() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = crate::disk::SimulatedDisk::new();
        let s = simulated(dir.path(), &disk);
        assert!(s.opened_clean(), "a new directory holds nothing to lose");
        put(&s, 1, b"synced", b"v");
        s.tick(true, false).expect("interval sync");
        put(&s, 1, b"unsynced", b"v");
        disk.power_off();
        // What the shutdown path writes after the power went is lost too.
        drop(s);
        disk.restore(None).expect("restore");
        let s = simulated(dir.path(), &disk);
        assert!(!s.opened_clean(), "a crash is noticed");
        assert!(s.get(1, b"synced").expect("get").is_some());
        assert_eq!(s.get(1, b"unsynced").expect("get"), None);
        // The hash tree matches what survived.
        let mut root = EMPTY;
        for item in s.scan_partition(1) {
            let (k, v) = item.expect("scan");
            root = xor(&root, &object_digest(&k, &v));
        }
        assert_eq!(s.root(1).expect("root"), root);
        s.acknowledge_unclean_open(&[]).expect("ack");
        drop(s);
        let s = simulated(dir.path(), &disk);
        assert!(s.opened_clean(), "a clean close is noticed too");
        // A torn append: part of the unsynced record survives, recovery cuts it.
        put(&s, 2, b"torn", &[5; 200]);
        disk.power_off();
        drop(s);
        assert!(disk.restore(Some(100)).expect("restore") > 0);
        let s = simulated(dir.path(), &disk);
        assert!(s.log_stats().truncated_bytes > 0);
        assert_eq!(s.get(2, b"torn").expect("get"), None);
        assert!(!s.opened_clean());
    }

    #[test]
    fn an_unclean_open_stays_unclean_until_acknowledged() {
        // A start that fails after opening (a wrong flag, a busy port) closes the
        // store cleanly: the next start must still know what the crash lost.
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = crate::disk::SimulatedDisk::new();
        let s = simulated(dir.path(), &disk);
        put(&s, 1, b"k", b"v");
        disk.power_off();
        drop(s);
        disk.restore(None).expect("restore");
        let s = simulated(dir.path(), &disk);
        assert!(!s.opened_clean());
        drop(s);
        let s = simulated(dir.path(), &disk);
        assert!(!s.opened_clean(), "still owed an answer");
        s.acknowledge_unclean_open(&[("epoch", &[1u8][..])])
            .expect("ack");
        drop(s);
        let s = simulated(dir.path(), &disk);
        assert!(s.opened_clean());
        assert_eq!(s.meta("epoch").expect("meta").as_deref(), Some(&[1u8][..]));
    }

    #[test]
    fn damage_an_earlier_open_accounted_for_is_not_new() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = open(dir.path());
            for i in 0..20u32 {
                put(&s, 0, &i.to_be_bytes(), format!("value-{i:05}").as_bytes());
            }
        }
        let seg = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".seg"))
            .min()
            .expect("segment");
        let path = dir.path().join(seg);
        let mut bytes = std::fs::read(&path).expect("read");
        let at = bytes
            .windows(11)
            .position(|w| w == b"value-00007")
            .expect("on disk");
        bytes[at] ^= 0x01;
        std::fs::write(&path, &bytes).expect("write");
        let s = open(dir.path());
        assert!(!s.opened_clean(), "new damage");
        s.acknowledge_unclean_open(&[]).expect("ack");
        drop(s);
        let s = open(dir.path());
        assert_eq!(s.log_stats().skipped_records, 1, "still skipped");
        assert!(s.opened_clean(), "but not new");
        assert_eq!(s.tree_stats().rebuilt_from_leaves, 0, "no rebuild again");
    }

    /// Flips the first byte of `needle` in the store's segment files.
    fn damage(dir: &Path, needle: &[u8]) {
        for e in std::fs::read_dir(dir).expect("list") {
            let path = e.expect("entry").path();
            if path.extension().is_some_and(|x| x == "seg") {
                let mut bytes = std::fs::read(&path).expect("read");
                if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
                    bytes[at] ^= 0x01;
                    std::fs::write(&path, &bytes).expect("write");
                    return;
                }
            }
        }
        panic!("not on disk");
    }

    #[test]
    fn a_damaged_value_is_skipped_by_scans_and_dropped_with_its_leaf_recomputed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        for i in 0..50u32 {
            put(&s, 3, &i.to_be_bytes(), format!("value-{i:05}").as_bytes());
        }
        s.put_hint(b"h1", b"hint-one").expect("hint");
        s.put_hint(b"h2", b"hint-two").expect("hint");
        damage(dir.path(), b"value-00007");
        damage(dir.path(), b"hint-one");
        let seven = 7u32.to_be_bytes();
        assert!(matches!(
            s.get(3, &seven),
            Err(StorageError::Corrupt { .. })
        ));
        // Scans, digests and hints go on around it.
        let scanned: Vec<_> = s.scan_partition(3).collect::<Result<_>>().expect("scan");
        assert_eq!(scanned.len(), 49);
        let seg = segment_of(&seven);
        assert!(
            s.segment_digests(3, seg)
                .expect("digests")
                .iter()
                .all(|(k, _)| k != &seven)
        );
        assert_eq!(s.hints(b"h", 10).expect("hints").len(), 1, "the good one");
        assert!(!s.remove_if(3, &seven, &EMPTY).expect("remove_if"));
        // The owner drops it; the tree again matches what is held.
        assert_eq!(s.damaged(10), vec![(3, seven.to_vec())]);
        assert!(s.drop_damaged(3, &seven).expect("drop"));
        assert_eq!(s.get(3, &seven).expect("get"), None);
        assert_eq!(
            s.damaged(10),
            Vec::new(),
            "the damaged hint was dropped too"
        );
        assert_eq!(s.damaged_dropped(), 2);
        let mut root = EMPTY;
        for item in s.scan_partition(3) {
            let (k, v) = item.expect("scan");
            root = xor(&root, &object_digest(&k, &v));
        }
        assert_eq!(s.root(3).expect("root"), root);
        assert!(
            !s.drop_damaged(3, &seven).expect("again"),
            "nothing left to drop"
        );
    }

    #[test]
    fn a_leaf_that_does_not_match_its_objects_is_corrected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        for i in 0..20u32 {
            put(&s, 2, &i.to_be_bytes(), b"v");
        }
        let seg = segment_of(&3u32.to_be_bytes());
        assert!(
            !s.verify_leaf(2, seg).expect("verify"),
            "a right leaf stays"
        );
        // A delta whose object never made it (as a lost record leaves it).
        s.inner
            .trees
            .commit(Vec::new(), 2, seg, &[9u8; 32])
            .expect("commit");
        assert!(s.verify_leaf(2, seg).expect("verify"));
        let mut root = EMPTY;
        for item in s.scan_partition(2) {
            let (k, v) = item.expect("scan");
            root = xor(&root, &object_digest(&k, &v));
        }
        assert_eq!(s.root(2).expect("root"), root);
    }

    #[test]
    fn a_killed_process_leaves_an_unclean_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        put(&s, 0, b"k", b"v");
        // As `kill -9` would: the marker written at open stays.
        let raw = std::fs::read(dir.path().join(crate::meta::META_FILE)).expect("meta");
        s.close().expect("close");
        assert!(
            s.set_meta("x", b"y").is_err(),
            "closed stores take no writes"
        );
        assert!(matches!(
            s.inner.log.commit(&[Op {
                space: Space::Hints,
                key: b"h".to_vec(),
                value: None
            }]),
            Err(StorageError::Closed)
        ));
        drop(s);
        std::fs::write(dir.path().join(crate::meta::META_FILE), raw).expect("write");
        assert!(!open(dir.path()).opened_clean());
    }

    #[test]
    fn metadata_of_an_older_directory_moves_into_its_own_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = Log::open(dir.path(), LogConfig::default(), Disk::Os).expect("open");
            log.commit(&[Op {
                space: Space::Meta,
                key: b"node_id".to_vec(),
                value: Some(b"n7".to_vec()),
            }])
            .expect("commit");
        }
        let s = open(dir.path());
        assert_eq!(
            s.meta("node_id").expect("meta").as_deref(),
            Some(&b"n7"[..])
        );
        assert!(!s.opened_clean(), "no clean shutdown was ever recorded");
        s.set_meta("node_id", b"n8").expect("set");
        drop(s);
        let s = open(dir.path());
        assert_eq!(
            s.meta("node_id").expect("meta").as_deref(),
            Some(&b"n8"[..])
        );
    }

    #[test]
    fn a_damaged_metadata_file_refuses_the_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = open(dir.path());
            s.set_meta("dot_reserved", &(1u64 << 21).to_be_bytes())
                .expect("meta");
        }
        let path = dir.path().join(crate::meta::META_FILE);
        let mut raw = std::fs::read(&path).expect("read");
        let at = raw.len() / 2;
        raw[at] ^= 0x01;
        std::fs::write(&path, &raw).expect("write");
        let err = Store::open(StoreConfig::new(dir.path()))
            .err()
            .expect("refused");
        assert!(matches!(err, StorageError::CorruptMeta { .. }), "{err}");
        assert!(err.to_string().contains("META"), "{err}");
    }

    #[test]
    fn second_open_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _s = open(dir.path());
        let again = Store::open(StoreConfig::new(dir.path()));
        assert!(
            matches!(again, Err(StorageError::Locked { .. })),
            "{:?}",
            again.err()
        );
    }
}
