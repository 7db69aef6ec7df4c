//! A log-structured store with an in-memory key directory (the Bitcask design, Riak's
//! default backend), holding every keyspace of a node.
//!
//! Why not an LSM tree: fjall does disk I/O while holding locks that every read and
//! write needs (its flush fsyncs the journal under the journal lock; every flush and
//! compaction persists the new version, with fsyncs, and unlinks old tables under
//! the version lock). Behind a compaction those fsyncs took 10-60 ms, so a node
//! under load froze several times a second (workload A at half load: p99 78-113 ms).
//! Here no fsync, unlink or bulk write happens under a lock a request waits for:
//! - a write appends one record to the active segment (a `pwrite` into the page
//!   cache) and updates the in-memory directory;
//! - a read looks the key up in memory and `pread`s exactly the value (the store's
//!   per-key stripe locks are held across that `pread`, which only one key's
//!   requests share);
//! - syncing, the fsync of sealed segments and merging run outside every lock a
//!   request takes (a merge swaps directory entries in short chunks); rotation
//!   creates the next file, one metadata operation per 64 MiB, under the writer's.
//!
//! The cost is the Bitcask one: every key (not value) lives in memory, about 80
//! bytes plus the key each, and a restart reads the segments to rebuild the
//! directory.
//!
//! On disk: `NNNNNNNN.seg` segment files of [`record`]s, each starting with
//! [`SEGMENT_MAGIC`] and a random salt; a `LOCK` file held with `flock`; `MERGE`, present only between
//! a merge's commit and the removal of the segments it replaced.

mod descriptors;
mod engine;
pub(crate) mod hint;
mod merge;
pub(crate) mod record;
mod recovery;

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::disk::Disk;
use crate::error::{Result, StorageError};
use crate::store::lock;
pub(crate) use record::Op;

/// First bytes of every segment file: a name and the format version. Format 2 is
/// followed by the segment's random salt (8 bytes), mixed into every record
/// checksum of the segment; format 1 (read, never written) has no salt.
pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"RKVSEG\x00\x02";
/// The magic of format 1 segments.
pub(crate) const SEGMENT_MAGIC_V1: &[u8; 8] = b"RKVSEG\x00\x01";
/// Bytes before the first record of a segment this build writes.
pub(crate) const SEGMENT_HEADER_LEN: u64 = 16;

/// A fresh random salt for a new segment (from the OS, so no client can guess it).
pub(crate) fn new_salt() -> Result<[u8; 8]> {
    use std::io::Read;
    let mut salt = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut salt))
        .map_err(StorageError::io("reading random bytes for a segment salt"))?;
    Ok(salt)
}

/// The keyspaces of a node's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub(crate) enum Space {
    /// Objects, keyed by partition, Merkle segment and user key.
    Objects = 0,
    /// Merkle leaves, checkpoints and dirty markers.
    Merkle = 1,
    /// Hinted-handoff hints.
    Hints = 2,
    /// Node metadata.
    Meta = 3,
}

const SPACES: usize = 4;

/// Shards of the key directory. Objects and Merkle nodes shard by partition (their
/// keys' first four bytes), so an object and its leaf, and every prefix scan the
/// store makes, stay in one shard; hints and metadata live in shard 0. A merge
/// repointing one shard holds up only the requests of that shard.
pub(crate) const SHARDS: usize = 64;

/// The shard holding `key` of `space`.
pub(crate) fn shard_of(space: Space, key: &[u8]) -> usize {
    match (space, key) {
        (Space::Objects | Space::Merkle, [a, b, c, d, ..]) => {
            u32::from_be_bytes([*a, *b, *c, *d]) as usize % SHARDS
        }
        _ => 0,
    }
}

/// The shard every key starting with `prefix` is in, if there is one.
fn shard_of_prefix(space: Space, prefix: &[u8]) -> Option<usize> {
    match space {
        Space::Objects | Space::Merkle if prefix.len() < 4 => None,
        _ => Some(shard_of(space, prefix)),
    }
}

impl Space {
    pub(crate) fn from_byte(b: u8) -> Option<Space> {
        Some(match b {
            0 => Space::Objects,
            1 => Space::Merkle,
            2 => Space::Hints,
            3 => Space::Meta,
            _ => return None,
        })
    }
}

/// Sizes and thresholds of a log.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LogConfig {
    /// The active segment is sealed once a record would take it past this.
    pub(crate) segment_bytes: u64,
    /// A merge starts once sealed segments hold at least this many dead bytes and
    /// are at least 60 % dead (Bitcask's default fragmentation trigger: the disk
    /// holds at most 2.5 times the live data, and a merge copies at most 2 bytes
    /// for every 3 it frees).
    pub(crate) merge_min_dead_bytes: u64,
    /// Sealed segments kept open at most (`None`: from the descriptor limit).
    pub(crate) open_segments: Option<usize>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 64 << 20,
            merge_min_dead_bytes: 64 << 20,
            open_segments: None,
        }
    }
}

/// Where the current value of a key lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) segment: u32,
    /// crc32 of the value: checked on every read.
    pub(crate) crc: u32,
    pub(crate) offset: u64,
    pub(crate) len: u32,
    /// Sequence number of the record that wrote it (newest wins on recovery).
    pub(crate) seq: u64,
}

impl Entry {
    /// Bytes this entry keeps alive in its segment (its op, roughly).
    fn bytes(&self, key: &[u8]) -> u64 {
        10 + key.len() as u64 + u64::from(self.len)
    }
}

pub(crate) use descriptors::{Descriptors, Segment};

pub(crate) fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:08}.seg"))
}

impl Segment {
    /// Creates the next active segment; returns it with its (writable) file.
    fn create(
        dir: &Path,
        id: u32,
        disk: &Disk,
        fds: &Arc<Descriptors>,
    ) -> Result<(Segment, Arc<File>)> {
        let path = segment_path(dir, id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(StorageError::io("creating a log segment"))?;
        disk.created(&path);
        let salt = new_salt()?;
        let mut header = SEGMENT_MAGIC.to_vec();
        header.extend_from_slice(&salt);
        file.write_all_at(&header, 0)
            .map_err(StorageError::io("creating a log segment"))?;
        let file = Arc::new(file);
        let segment = Segment::pinned(id, path, SEGMENT_HEADER_LEN, Some(salt), file.clone(), fds);
        Ok((segment, file))
    }
}

/// One shard of the in-memory directory: its live keys of every space.
#[derive(Default)]
pub(crate) struct Shard {
    pub(crate) maps: [BTreeMap<Box<[u8]>, Entry>; SPACES],
    /// Bytes of each segment still referenced by this shard.
    pub(crate) live: HashMap<u32, u64>,
}

impl Shard {
    /// Points `key` at `entry` (or removes it), keeping the live-byte counts.
    pub(crate) fn set(&mut self, space: Space, key: &[u8], entry: Option<Entry>) {
        let map = &mut self.maps[space as usize];
        let old = match entry {
            Some(e) => {
                *self.live.entry(e.segment).or_default() += e.bytes(key);
                match map.get_mut(key) {
                    Some(slot) => Some(std::mem::replace(slot, e)),
                    None => {
                        map.insert(key.into(), e);
                        None
                    }
                }
            }
            None => map.remove(key),
        };
        if let Some(old) = old
            && let Some(live) = self.live.get_mut(&old.segment)
        {
            *live = live.saturating_sub(old.bytes(key));
        }
    }
}

struct Writer {
    active: Arc<Segment>,
    /// The active segment's file, open for writing.
    file: Arc<File>,
    /// Bytes in the active segment (where the next record goes).
    len: u64,
    next_seq: u64,
    /// Segments sealed since the last sync: their tails may not be on disk yet.
    unsynced: Vec<Arc<Segment>>,
    /// A segment file was created or removed since the last directory fsync.
    dir_dirty: bool,
}

/// Counters for `status` and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Segment files on disk.
    pub segments: u64,
    /// Bytes in segment files.
    pub bytes: u64,
    /// Bytes the directory still refers to (the rest is reclaimable by a merge).
    pub live_bytes: u64,
    /// Merges completed since open.
    pub merges: u64,
    /// Bytes of torn records cut off the segments' tails when the log was opened.
    pub truncated_bytes: u64,
    /// Damaged stretches skipped when the log was opened: a record that failed its
    /// checksum with good records after it, or a damaged tail of a sealed segment.
    pub skipped_records: u64,
    /// Bytes in those stretches (left on disk, never read again).
    pub skipped_bytes: u64,
    /// Segments whose keys the open read from their hint file (not the segment).
    pub hinted_segments: u64,
}

/// The log of one node.
pub(crate) struct Log {
    dir: PathBuf,
    config: LogConfig,
    writer: Mutex<Writer>,
    shards: Box<[RwLock<Shard>]>,
    /// Every segment file by id.
    segments: RwLock<BTreeMap<u32, Arc<Segment>>>,
    /// Serialises syncs, so a sync never returns while another still has a sealed
    /// segment's fsync in flight.
    sync_lock: Mutex<()>,
    /// One merge at a time.
    merge_lock: Mutex<()>,
    /// Ids for new segments, from rotation and merges alike.
    next_segment: AtomicU32,
    merges: AtomicU64,
    /// Set when an fsync failed: the kernel may have dropped the dirty pages it
    /// could not write and will not report it again, so a later sync that succeeds
    /// proves nothing. Writes are refused from then on, as fjall and PostgreSQL do.
    poisoned: AtomicBool,
    /// Fsync latencies, and the sync in flight (a stall shows while it lasts).
    pub(crate) fsyncs: crate::timing::LatencyHistogram,
    pub(crate) syncing: crate::timing::InFlight,
    /// Set by [`Log::close`]: commits are refused (checked under the writer lock).
    closed: AtomicBool,
    truncated_bytes: u64,
    skipped_records: u64,
    skipped_bytes: u64,
    /// Where recovery skipped damaged stretches: (segment, offset).
    skipped_at: Vec<(u32, u64)>,
    /// Recovery found no segment with a record in it.
    recovered_nothing: bool,
    /// Fsyncs, directory syncs and renames go through it.
    pub(crate) disk: Disk,
    /// The bounded set of open segment files.
    pub(crate) fds: Arc<Descriptors>,
    /// Values found damaged at run time, for the store's owner to drop and repair.
    damage: Mutex<Damage>,
    /// Which sealed segments have a hint file, or cannot get one.
    hints: Mutex<HintState>,
    /// Segments whose keys the open read from hint files.
    hinted_at_open: u64,
    _lock_file: File,
}

/// Values whose checksum failed when read, not yet dropped.
#[derive(Default)]
pub(crate) struct Damage {
    /// (space, key, segment) in the order found, each once.
    found: std::collections::VecDeque<(Space, Box<[u8]>, u32)>,
    /// Segments holding such a value, and how many: merges leave them alone (a
    /// merge that copied a damaged value would write it under a fresh checksum
    /// and hide the damage) until their values are dropped.
    held: BTreeMap<u32, usize>,
}

/// Sealed segments with a hint file (`done`), and those a clean read of found
/// damage (`skip`: they are read whole on every open, which accounts for it).
#[derive(Default)]
struct HintState {
    done: std::collections::BTreeSet<u32>,
    skip: std::collections::BTreeSet<u32>,
}

/// Sealed segments kept open while they wait for their fsync, at most.
const MAX_PINNED_UNSYNCED: usize = 64;

/// Hint files written per call of [`Log::write_hints`] (each reads one segment).
const HINTS_PER_ROUND: usize = 2;

/// Damaged values remembered at most (beyond, they are found again when read).
const MAX_DAMAGED: usize = 4096;

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // Every critical section leaves the directory consistent before it can panic.
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// Takes an exclusive `flock` on `dir/LOCK`, or reports that another process (or
/// another open in this one) holds it.
fn lock_dir(dir: &Path) -> Result<File> {
    use std::os::fd::AsRawFd;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("LOCK"))
        .map_err(StorageError::io("opening the lock file"))?;
    // SAFETY: flock takes a descriptor we own for the call's duration and flags.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::WouldBlock {
            return Err(StorageError::Locked {
                path: dir.to_path_buf(),
            });
        }
        return Err(StorageError::Io {
            during: "locking the data directory",
            source: err,
        });
    }
    Ok(file)
}

pub(crate) fn fsync_dir(disk: &Disk, dir: &Path) -> Result<()> {
    disk.sync_dir(dir)
        .map_err(StorageError::io("syncing the data directory"))
}

/// The smallest key greater than every key starting with `prefix` (`None`: no bound).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl Log {
    /// Opens the log in `dir` (which must exist), recovering what is on disk.
    pub(crate) fn open(dir: &Path, config: LogConfig, disk: Disk) -> Result<Log> {
        let lock_file = lock_dir(dir)?;
        let fds = Descriptors::new(config.open_segments);
        let recovered = recovery::recover(dir, &disk, &fds)?;
        let id = recovered.next_segment;
        let recovered_nothing = recovered.segments.is_empty();
        let (active, file) = Segment::create(dir, id, &disk, &fds)?;
        let active = Arc::new(active);
        let mut segments = recovered.segments;
        segments.insert(id, active.clone());
        fsync_dir(&disk, dir)?;
        Ok(Log {
            dir: dir.to_path_buf(),
            config,
            writer: Mutex::new(Writer {
                active,
                file,
                len: SEGMENT_HEADER_LEN,
                next_seq: recovered.next_seq,
                unsynced: Vec::new(),
                dir_dirty: false,
            }),
            shards: recovered.shards.into_iter().map(RwLock::new).collect(),
            segments: RwLock::new(segments),
            sync_lock: Mutex::new(()),
            merge_lock: Mutex::new(()),
            next_segment: AtomicU32::new(id + 1),
            merges: AtomicU64::new(0),
            poisoned: AtomicBool::new(false),
            fsyncs: Default::default(),
            syncing: Default::default(),
            closed: AtomicBool::new(false),
            truncated_bytes: recovered.truncated_bytes,
            skipped_records: recovered.skipped_records,
            skipped_bytes: recovered.skipped_bytes,
            skipped_at: recovered.skipped_at,
            recovered_nothing,
            disk,
            damage: Mutex::new(Damage::default()),
            fds,
            hints: Mutex::new(HintState {
                done: recovered.hinted.iter().copied().collect(),
                skip: Default::default(),
            }),
            hinted_at_open: recovered.hinted.len() as u64,
            _lock_file: lock_file,
        })
    }

    /// Remembers a value whose checksum failed (read by a request, a scan or a
    /// merge), once.
    pub(crate) fn note_damaged(&self, space: Space, key: &[u8], segment: u32) {
        let mut d = lock(&self.damage);
        if d.found.len() >= MAX_DAMAGED
            || d.found.iter().any(|(s, k, _)| *s == space && &k[..] == key)
        {
            return;
        }
        tracing::error!(
            segment,
            space = ?space,
            "a stored value fails its checksum; it will be dropped and repaired from a replica"
        );
        d.found.push_back((space, key.into(), segment));
        *d.held.entry(segment).or_default() += 1;
    }

    /// Up to `n` damaged values found, oldest first: (space, key).
    pub(crate) fn damaged(&self, n: usize) -> Vec<(Space, Box<[u8]>)> {
        let d = lock(&self.damage);
        d.found
            .iter()
            .take(n)
            .map(|(s, k, _)| (*s, k.clone()))
            .collect()
    }

    /// Forgets a damaged value (dropped, or no longer damaged); its segment may be
    /// merged again once none of its values is.
    pub(crate) fn damage_resolved(&self, space: Space, key: &[u8]) {
        let mut d = lock(&self.damage);
        if let Some(i) = d
            .found
            .iter()
            .position(|(s, k, _)| *s == space && &k[..] == key)
            && let Some((_, _, segment)) = d.found.remove(i)
            && let Some(n) = d.held.get_mut(&segment)
        {
            *n -= 1;
            if *n == 0 {
                d.held.remove(&segment);
            }
        }
    }

    /// Segments merges must leave alone for now.
    pub(crate) fn held_back(&self) -> Vec<u32> {
        lock(&self.damage).held.keys().copied().collect()
    }

    /// Where recovery skipped damaged stretches when the log was opened.
    pub(crate) fn skipped_at(&self) -> &[(u32, u64)] {
        &self.skipped_at
    }

    /// Whether the directory held no record when the log was opened.
    pub(crate) fn recovered_nothing(&self) -> bool {
        self.recovered_nothing
    }

    /// Refuses every later commit (the store is closing); syncs still work.
    pub(crate) fn close(&self) {
        let _w = lock(&self.writer);
        self.closed.store(true, Ordering::Release);
    }

    /// Appends `ops` as one atomic record and makes them visible. The record reaches
    /// the OS before this returns (it survives a process crash); [`Log::sync`] makes
    /// it survive an OS crash.
    ///
    /// # Errors
    /// [`StorageError::Io`] if the append fails (nothing of the batch is then
    /// visible); [`StorageError::Poisoned`] once an fsync has failed.
    pub(crate) fn commit(&self, ops: &[Op]) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        self.check_poisoned()?;
        let (mut rec, at) = record::encode(ops);
        let crcs: Vec<u32> = ops
            .iter()
            .map(|op| crc32fast::hash(op.value.as_deref().unwrap_or(&[])))
            .collect();
        let mut w = lock(&self.writer);
        if self.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        if w.len > SEGMENT_HEADER_LEN && w.len + rec.len() as u64 > self.config.segment_bytes {
            self.rotate(&mut w)?;
        }
        let seq = w.next_seq;
        record::seal(&mut rec, seq, &w.active.salt);
        let start = w.len;
        // On failure the length is not advanced: the next record overwrites whatever
        // part of this one reached the file, and recovery cuts a torn tail.
        w.file
            .write_all_at(&rec, start)
            .map_err(StorageError::io("appending to the log"))?;
        w.len += rec.len() as u64;
        w.next_seq += 1;
        w.active.len.store(w.len, Ordering::Release);
        let segment = w.active.id;
        // Shards in ascending order (the only order anyone takes more than one).
        let mut ids: Vec<usize> = ops.iter().map(|op| shard_of(op.space, &op.key)).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut guards: Vec<(usize, RwLockWriteGuard<'_, Shard>)> = ids
            .into_iter()
            .map(|i| (i, write(&self.shards[i])))
            .collect();
        for ((op, at), crc) in ops.iter().zip(&at).zip(crcs) {
            let entry = op.value.as_ref().map(|_| Entry {
                segment,
                crc,
                offset: start + u64::from(at.offset),
                len: at.len,
                seq,
            });
            let i = shard_of(op.space, &op.key);
            let Some((_, shard)) = guards.iter_mut().find(|(id, _)| *id == i) else {
                unreachable!("every op's shard is locked");
            };
            shard.set(op.space, &op.key, entry);
        }
        Ok(())
    }

    /// Seals the active segment and starts a new one (under the writer lock; the
    /// sealed one is fsynced by the next [`Log::sync`], outside it).
    fn rotate(&self, w: &mut Writer) -> Result<()> {
        let id = self.next_segment.fetch_add(1, Ordering::Relaxed);
        let (fresh, file) = Segment::create(&self.dir, id, &self.disk, &self.fds)?;
        let fresh = Arc::new(fresh);
        write(&self.segments).insert(id, fresh.clone());
        let sealed = std::mem::replace(&mut w.active, fresh);
        w.file = file;
        w.unsynced.push(sealed);
        // A sealed segment stays open until its fsync (a descriptor closed before
        // it would hide a writeback error from the fsync on a new one), but only so
        // many: with `--sync none` nothing syncs them.
        if let Some(old) = w.unsynced.iter().rev().nth(MAX_PINNED_UNSYNCED) {
            old.unpin();
        }
        w.len = SEGMENT_HEADER_LEN;
        w.dir_dirty = true;
        Ok(())
    }

    /// Everything committed before the call is on disk when this returns `Ok`.
    ///
    /// # Errors
    /// [`StorageError::Io`] if an fsync fails, and [`StorageError::Poisoned`] on
    /// every call after that.
    pub(crate) fn sync(&self) -> Result<()> {
        let _one = lock(&self.sync_lock);
        self.check_poisoned()?;
        let (active, sealed, dir_dirty) = {
            let mut w = lock(&self.writer);
            (
                w.active.clone(),
                std::mem::take(&mut w.unsynced),
                std::mem::take(&mut w.dir_dirty),
            )
        };
        crate::sync::timed_sync(&self.fsyncs, &self.syncing, &self.poisoned, || {
            for s in &sealed {
                self.disk
                    .sync_data(&*s.file()?, &segment_path(&self.dir, s.id))
                    .map_err(StorageError::io("syncing a sealed segment"))?;
                s.unpin();
            }
            self.disk
                .sync_data(&*active.file()?, &segment_path(&self.dir, active.id))
                .map_err(StorageError::io("syncing the log"))?;
            if dir_dirty {
                fsync_dir(&self.disk, &self.dir)?;
            }
            Ok(())
        })
    }

    /// Whether an fsync failed (the log takes no more writes).
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    fn check_poisoned(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StorageError::Poisoned);
        }
        Ok(())
    }

    /// The value of `key`, read from its segment and checked against its checksum.
    ///
    /// # Errors
    /// [`StorageError::Io`] if the read fails, [`StorageError::Corrupt`] if the bytes
    /// on disk are not the ones written.
    pub(crate) fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let (entry, segment) = {
            let shard = read(&self.shards[shard_of(space, key)]);
            let Some(entry) = shard.maps[space as usize].get(key).copied() else {
                return Ok(None);
            };
            // Under the shard lock (order: shard, then segments): a merge removes a
            // segment only after repointing every entry into it, which this lock
            // holds off for this one.
            (entry, self.segment(entry.segment)?)
        };
        let read = read_value(&segment, &entry);
        if let Err(StorageError::Corrupt { .. }) = &read {
            self.note_damaged(space, key, segment.id);
        }
        read.map(Some)
    }

    fn segment(&self, id: u32) -> Result<Arc<Segment>> {
        read(&self.segments)
            .get(&id)
            .cloned()
            .ok_or(StorageError::Corrupt {
                segment: id,
                offset: 0,
                reason: "the key directory points at a segment that is gone",
            })
    }

    /// Up to `limit` keys of `space` starting with `prefix`, in key order, with where
    /// their values lie (read them with [`read_value`]). A snapshot: later writes do
    /// not show, and the segments stay readable even if a merge removes them.
    pub(crate) fn prefix(&self, space: Space, prefix: &[u8], limit: usize) -> Vec<Located> {
        let end = prefix_end(prefix);
        let upper = match &end {
            Some(e) => Bound::Excluded(&e[..]),
            None => Bound::Unbounded,
        };
        let shards = match shard_of_prefix(space, prefix) {
            Some(i) => i..i + 1,
            None => 0..SHARDS,
        };
        let mut found: Vec<Located> = Vec::new();
        for i in shards {
            let shard = read(&self.shards[i]);
            // Segments looked up under the shard lock, as in `get`.
            let segments = read(&self.segments);
            found.extend(
                shard.maps[space as usize]
                    .range::<[u8], _>((Bound::Included(prefix), upper))
                    .take(limit)
                    .filter_map(|(k, e)| {
                        let segment = segments.get(&e.segment);
                        debug_assert!(segment.is_some(), "entry into a removed segment");
                        Some(Located {
                            key: k.clone(),
                            entry: *e,
                            segment: segment?.clone(),
                        })
                    }),
            );
        }
        found.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        found.truncate(limit);
        found
    }

    /// Bytes of the live values of `space`.
    pub(crate) fn value_bytes(&self, space: Space) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                read(s).maps[space as usize]
                    .values()
                    .map(|e| u64::from(e.len))
                    .sum::<u64>()
            })
            .sum()
    }

    /// Live keys in `space`.
    pub(crate) fn len(&self, space: Space) -> usize {
        self.shards
            .iter()
            .map(|s| read(s).maps[space as usize].len())
            .sum()
    }

    /// Counters of the log.
    pub(crate) fn stats(&self) -> LogStats {
        let live_bytes = self
            .shards
            .iter()
            .map(|s| read(s).live.values().sum::<u64>())
            .sum();
        let segments = read(&self.segments);
        LogStats {
            segments: segments.len() as u64,
            bytes: segments
                .values()
                .map(|s| s.len.load(Ordering::Acquire))
                .sum(),
            live_bytes,
            merges: self.merges.load(Ordering::Relaxed),
            truncated_bytes: self.truncated_bytes,
            skipped_records: self.skipped_records,
            skipped_bytes: self.skipped_bytes,
            hinted_segments: self.hinted_at_open,
        }
    }

    /// Writes hint files for up to `max` sealed segments that lack one (all but
    /// the active segment with `include_active` false; also the active one, which
    /// the next open seals, once the log is closed). Returns how many it wrote.
    ///
    /// # Errors
    /// A failed read of a segment, or write of its hint.
    pub(crate) fn write_hints(&self, max: usize, include_active: bool) -> Result<usize> {
        if self.is_poisoned() {
            // What the failed fsync lost is unknown: no hint may vouch for it.
            return Ok(0);
        }
        // Only segments whose bytes a sync made durable: not those still waiting
        // for theirs (a hint's own fsync of them would take the error report that
        // belongs to `sync`, and poison nothing), nor the active one while it is
        // written. Chosen under the writer lock, so no rotation slips in between.
        let todo: Vec<Arc<Segment>> = {
            let w = lock(&self.writer);
            let waiting: Vec<u32> = w.unsynced.iter().map(|s| s.id).collect();
            let state = lock(&self.hints);
            read(&self.segments)
                .values()
                .filter(|s| {
                    (include_active && self.closed.load(Ordering::Acquire)) || s.id != w.active.id
                })
                .filter(|s| !waiting.contains(&s.id))
                .filter(|s| !state.done.contains(&s.id) && !state.skip.contains(&s.id))
                .take(max)
                .cloned()
                .collect()
        };
        let mut written = 0;
        for segment in todo {
            if self.write_hint(&segment)? {
                written += 1;
            }
        }
        Ok(written)
    }

    /// Reads one sealed segment and writes its hint; `false` if it holds damage or
    /// nothing.
    fn write_hint(&self, segment: &Arc<Segment>) -> Result<bool> {
        let len = segment.len.load(Ordering::Acquire);
        let header_len = match segment.salt {
            Some(_) => SEGMENT_HEADER_LEN,
            None => SEGMENT_MAGIC.len() as u64,
        };
        let mut slots = recovery::new_slots();
        let mut max_seq = 0;
        let scan = recovery::scan_segment(
            &*segment.file()?,
            segment.id,
            header_len,
            &segment.salt,
            len,
            &mut slots,
            &mut max_seq,
        )?;
        let long_key = slots
            .iter()
            .flat_map(|per_space| per_space.iter())
            .any(|map| map.keys().any(|k| k.len() > usize::from(u16::MAX)));
        if scan.skipped.0 > 0 || scan.tail.is_some() || scan.records == 0 || long_key {
            // Read whole on every open instead (which also accounts for damage).
            lock(&self.hints).skip.insert(segment.id);
            return Ok(false);
        }
        let entries: Vec<hint::Hinted<'_>> = slots
            .iter()
            .flat_map(|per_space| {
                per_space.iter().enumerate().flat_map(|(space, map)| {
                    let space = Space::from_byte(space as u8);
                    map.iter().filter_map(move |(key, slot)| {
                        Some(hint::Hinted {
                            space: space?,
                            key,
                            entry: slot.entry,
                            deleted: slot.deleted,
                        })
                    })
                })
            })
            .collect();
        hint::write(
            &self.dir,
            &self.disk,
            segment.id,
            &segment.salt,
            len,
            entries,
        )?;
        lock(&self.hints).done.insert(segment.id);
        Ok(true)
    }
}

/// A key and where its value was when it was listed.
#[derive(Clone, Debug)]
pub(crate) struct Located {
    pub(crate) key: Box<[u8]>,
    pub(crate) entry: Entry,
    pub(crate) segment: Arc<Segment>,
}

impl Located {
    /// Reads the value.
    ///
    /// # Errors
    /// As [`Log::get`].
    #[cfg(test)]
    pub(crate) fn value(&self) -> Result<Vec<u8>> {
        read_value(&self.segment, &self.entry)
    }

    /// Reads the value; a damaged one is remembered in `log` and read as `None`.
    ///
    /// # Errors
    /// Other failures of [`Log::get`].
    pub(crate) fn value_or_damaged(&self, log: &Log, space: Space) -> Result<Option<Vec<u8>>> {
        match read_value(&self.segment, &self.entry) {
            Ok(v) => Ok(Some(v)),
            Err(StorageError::Corrupt { .. }) => {
                log.note_damaged(space, &self.key, self.segment.id);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// Reads the bytes an entry points at, without checking them (a merge copies a
/// damaged value as it is, under its original checksum, so the damage stays
/// visible to readers and one bad value never stops a merge: review C5).
pub(crate) fn read_unchecked(segment: &Arc<Segment>, entry: &Entry) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; entry.len as usize];
    segment
        .file()?
        .read_exact_at(&mut buf, entry.offset)
        .map_err(StorageError::io("reading a value"))?;
    Ok(buf)
}

/// Reads and checks the value an entry points at.
pub(crate) fn read_value(segment: &Arc<Segment>, entry: &Entry) -> Result<Vec<u8>> {
    let buf = read_unchecked(segment, entry)?;
    if crc32fast::hash(&buf) != entry.crc {
        return Err(StorageError::Corrupt {
            segment: segment.id,
            offset: entry.offset,
            reason: "value checksum mismatch",
        });
    }
    Ok(buf)
}

#[cfg(test)]
mod tests;
