//! The node's store: objects, Merkle leaves, hints and metadata in one engine (the
//! log or fjall, [`crate::backend`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::{Backend, Engine};
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
    /// The engine (a directory keeps the one it was created with).
    pub backend: Backend,
    /// fjall's block cache, in bytes (the log reads through the page cache).
    pub cache_bytes: u64,
    /// The log seals its active segment once a record would take it past this
    /// (64 MiB; small values make many segments, as in the descriptor tests).
    pub segment_bytes: u64,
}

impl StoreConfig {
    /// Defaults for a directory: interval sync, the OS's disk, background threads.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StoreConfig {
            path: path.into(),
            sync: SyncPolicy::Interval(SyncPolicy::DEFAULT_INTERVAL),
            disk: Disk::Os,
            driver: Driver::Threads,
            backend: Backend::Log,
            cache_bytes: 64 << 20,
            segment_bytes: LogConfig::default().segment_bytes,
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

/// One node's storage. Cheap to clone; all clones share one engine, closed (trees
/// checkpointed, everything synced) when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    log: Arc<dyn Engine>,
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
    /// Keys of damaged hints dropped and not yet taken by
    /// [`Store::take_dropped_hints`] (bounded by [`MAX_DROPPED_HINTS`]).
    dropped_hints: Mutex<Vec<Vec<u8>>>,
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

/// Most keys of dropped damaged hints kept until taken (past it, their counts are
/// only corrected by a restart, which counts the hints afresh).
pub const MAX_DROPPED_HINTS: usize = 4096;

impl Store {
    /// Opens (or creates) the store in `config.path`.
    ///
    /// The log's open reads its segments (or their hint files) once to rebuild the
    /// key directory (checking every record's checksum); fjall's replays its journal.
    /// Neither rebuilds a tree: Merkle upper nodes come from their checkpoint per
    /// partition on first use. The directory must hold `config.backend`'s data, or
    /// none.
    ///
    /// # Errors
    /// [`StorageError::WrongBackend`] if the directory holds the other engine's
    /// data (nothing is touched), [`StorageError::Locked`] if another process has
    /// the directory open, [`StorageError::Io`], [`StorageError::Corrupt`] or
    /// [`StorageError::Engine`] if the engine cannot recover it,
    /// [`StorageError::ForeignFormat`] if the directory holds files no engine of
    /// this build wrote.
    pub fn open(config: StoreConfig) -> Result<Store> {
        std::fs::create_dir_all(&config.path)
            .map_err(StorageError::io("creating the data directory"))?;
        crate::backend::claim(&config.path, config.backend, &config.disk)?;
        let log: Arc<dyn Engine> = match config.backend {
            Backend::Log => Arc::new(Log::open(
                &config.path,
                LogConfig {
                    segment_bytes: config.segment_bytes.max(4096),
                    ..LogConfig::default()
                },
                config.disk.clone(),
            )?),
            Backend::Fjall => Arc::new(crate::lsm::Lsm::open(
                &config.path,
                config.disk.clone(),
                config.sync == SyncPolicy::Always,
                config.cache_bytes,
            )?),
        };
        let (meta, meta_existed) = MetaFile::open(&config.path, config.disk.clone())?;
        let opened = log.opened();
        let fresh = !meta_existed && opened.nothing;
        if !meta_existed && !fresh {
            // A directory from before the metadata file: its metadata is in the log.
            let mut old: Vec<(String, Vec<u8>)> = Vec::new();
            for item in log.prefix(Space::Meta, &[], usize::MAX)? {
                if crate::tree::is_tree_meta(item.key()) {
                    continue;
                }
                let value = log.get(Space::Meta, item.key())?.unwrap_or_default();
                old.push((String::from_utf8_lossy(item.key()).into_owned(), value));
            }
            meta.set_all(old.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        let trees = Arc::new(Trees::new(log.clone()));
        // A damaged stretch an earlier open skipped is skipped again on every open
        // until a merge rewrites its segment: only new damage lost anything now.
        let known: Vec<(u32, u64)> = meta
            .get(META_KNOWN_DAMAGE)
            .and_then(|raw| postcard::from_bytes(&raw).ok())
            .unwrap_or_default();
        let skipped = opened.skipped_at;
        let damaged = opened.truncated_bytes > 0 || skipped.iter().any(|d| !known.contains(d));
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
                dropped_hints: Mutex::new(Vec::new()),
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

    /// The engine holding this store's data.
    pub fn backend(&self) -> Backend {
        self.inner.log.backend()
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
            Some(ticket) => self.inner.group.wait(&*self.inner.log, ticket),
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
            // Damaged: it cannot be what the caller saw (the engine remembers it
            // for [`Store::damaged`]).
            Err(e) if e.is_damage() => return Ok(false),
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
        self.inner.log.fsyncs()
    }

    /// How long the sync now in flight has been running, if one is (a disk that
    /// stopped answering shows here).
    pub fn sync_running_for(&self) -> Option<std::time::Duration> {
        self.inner.log.sync_running_for()
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
        )? {
            // A damaged value is left out (as if absent), so the peer sends its
            // copy; the engine remembers it for [`Store::damaged`].
            let Some(v) = self.inner.log.read(Space::Objects, &item)? else {
                continue;
            };
            let user = item
                .key()
                .get(PREFIX_LEN..)
                .ok_or(StorageError::CorruptKey {
                    len: item.key().len(),
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
        let (items, failed) =
            match self
                .inner
                .log
                .prefix(Space::Objects, &partition.to_be_bytes(), usize::MAX)
            {
                Ok(items) => (items, None),
                Err(e) => (Vec::new(), Some(Err(e))),
            };
        failed
            .into_iter()
            .chain(items.into_iter().filter_map(move |item| {
                let v = match log.read(Space::Objects, &item) {
                    Ok(Some(v)) => v,
                    Ok(None) => return None,
                    Err(e) => return Some(Err(e)),
                };
                let user = match item.key().get(PREFIX_LEN..) {
                    Some(u) => u,
                    None => {
                        return Some(Err(StorageError::CorruptKey {
                            len: item.key().len(),
                        }));
                    }
                };
                Some(Ok((user.to_vec(), v)))
            }))
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
                        let mut taken = lock(&self.inner.dropped_hints);
                        if taken.len() < MAX_DROPPED_HINTS {
                            taken.push(key.to_vec());
                        }
                    }
                }
                // A hash-tree record is recomputed here from what it summarizes
                // (its reads already did so meanwhile); nothing to fetch elsewhere.
                Space::Merkle => match self.inner.trees.repair(&key) {
                    Ok(_) => self.inner.log.damage_resolved(space, &key),
                    Err(error) => {
                        tracing::warn!(%error, "a damaged hash-tree record could not be recomputed yet");
                    }
                },
                // The node's metadata lives in its own file; the log's meta space
                // holds only the trees' rebuild marker, which recovery rewrites.
                Space::Meta => {}
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
            Err(e) if e.is_damage() => {}
            // Gone or rewritten meanwhile: nothing damaged is left.
            Ok(_) => {
                drop(guard);
                self.inner.log.damage_resolved(Space::Objects, &okey);
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        let fresh = self.leaf_of_objects(partition, segment, Some(&okey))?;
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

    /// The leaf a segment's objects make (the XOR of their digests), leaving out
    /// `except` and any damaged value (dropped in its turn). Call under the
    /// segment's stripe lock.
    fn leaf_of_objects(&self, partition: u32, segment: u16, except: Option<&[u8]>) -> Result<Hash> {
        let mut fresh = crate::merkle::EMPTY;
        for item in self.inner.log.prefix(
            Space::Objects,
            &segment_prefix(partition, segment),
            usize::MAX,
        )? {
            if Some(item.key()) == except {
                continue;
            }
            if let Some(v) = self.inner.log.read(Space::Objects, &item)?
                && let Some(user) = item.key().get(PREFIX_LEN..)
            {
                fresh = xor(&fresh, &object_digest(user, &v));
            }
        }
        Ok(fresh)
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
        let fresh = self.leaf_of_objects(partition, segment, None)?;
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

    /// Recomputes a partition's upper hash-tree nodes from its leaves if they no
    /// longer match them; returns whether they did not. Without `with_leaves` only
    /// the upper levels are checked against one another (in memory); with it, the
    /// lowest one against the leaves too. Anti-entropy calls this when an exchange
    /// finds an interior node different from a replica's while all its children
    /// agree (with the leaves when those children were leaves).
    ///
    /// # Errors
    /// [`StorageError`] of the reads or the commit.
    pub fn verify_upper(&self, partition: u32, with_leaves: bool) -> Result<bool> {
        self.inner.trees.verify_upper(partition, with_leaves)
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

    /// Keys of the damaged hints dropped since the last call (by [`Store::damaged`]),
    /// so whoever counts hints can count them out: a hint counted as waiting for
    /// good holds up reaping on every member and a leave.
    pub fn take_dropped_hints(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *lock(&self.inner.dropped_hints))
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
        for item in self.inner.log.prefix(Space::Hints, prefix, limit)? {
            // A damaged hint is skipped, so the ones after it are still delivered
            // (review C5: one stalled every hint to its owner), and dropped by
            // [`Store::damaged`].
            if let Some(v) = self.inner.log.read(Space::Hints, &item)? {
                out.push((item.key().to_vec(), v));
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
mod tests;
