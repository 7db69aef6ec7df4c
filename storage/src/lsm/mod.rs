//! fjall as an [`Engine`]: one keyspace per [`Space`], every store commit one
//! atomic fjall batch across them, so an object and its Merkle leaf land together.
//!
//! Configured as well as it goes (BENCHMARKS.md measured each): small memtables
//! (a 64 MiB one made puts three times slower and recovery take 15 s), two worker
//! threads at background priority (one deadlocked: it blocked sending a flush
//! request into its own full queue), journals bounded to 64 MiB so a crash replays
//! little, and syncs through [`journal::JournalSync`], outside fjall's journal lock.
//! Under `--sync always` the journal is persisted by our group commit only
//! (`manual_journal_persist`): one hand-over to the OS and one `fdatasync` serve
//! every writer waiting. What remains is fjall's own: flushes and compactions
//! install their results under its version lock with fsyncs and unlinks, and
//! requests wait behind them (upstream fjall#257, #293; PR #282 covers only journal
//! rotation). That is the tail BENCHMARKS.md reports.
//!
//! Damage: fjall checksums its blocks; a read that fails one is an
//! [`StorageError::EngineDamage`] (never a panic), remembered like the log's
//! damaged values. Unlike the log, fjall cannot list the keys of a damaged block,
//! so a scan over it fails as a whole and its keys cannot be dropped one by one
//! (their Merkle leaf could not be recomputed): reads of that block keep failing
//! with the damage while the rest of the store serves, until the node is rebuilt
//! from its replicas (an empty directory; anti-entropy and handoff refill it).

mod journal;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fjall::{Database, Keyspace, KeyspaceCreateOptions};

use crate::backend::{Backend, Engine, FJALL_DIR, Item, Opened};
use crate::disk::Disk;
use crate::error::{Result, StorageError};
use crate::log::{LogStats, Op, Space};
use crate::store::lock;
use crate::timing::{InFlight, LatencyHistogram, LatencySnapshot};

/// Damaged keys remembered at most (beyond, they are found again when read).
const MAX_DAMAGED: usize = 4096;

/// Name and memtable size of each space's keyspace.
const KEYSPACES: [(Space, &str, u64); 4] = [
    (Space::Objects, "objects", 16 << 20),
    (Space::Merkle, "merkle", 4 << 20),
    (Space::Hints, "hints", 8 << 20),
    (Space::Meta, "meta", 1 << 20),
];

/// The fjall engine of one store.
pub(crate) struct Lsm {
    // Keyspaces before the database: fields drop in order, and fjall wants the
    // database to outlive them (CRATES.md).
    spaces: [Keyspace; 4],
    db: Database,
    journal: journal::JournalSync,
    /// Serialises syncs (one `fdatasync` of the journal at a time).
    sync_lock: Mutex<()>,
    poisoned: AtomicBool,
    closed: AtomicBool,
    fsyncs: LatencyHistogram,
    syncing: InFlight,
    damage: Mutex<VecDeque<(Space, Box<[u8]>)>>,
    nothing: bool,
    disk: Disk,
}

fn locked_or(path: &Path) -> impl FnOnce(fjall::Error) -> StorageError + '_ {
    move |e| match e {
        fjall::Error::Locked => StorageError::Locked {
            path: path.to_path_buf(),
        },
        e => StorageError::engine("opening fjall")(e),
    }
}

impl Lsm {
    /// Opens (or creates) fjall's database in `data/fjall`, recovering its journal.
    pub(crate) fn open(
        data: &Path,
        disk: Disk,
        manual_persist: bool,
        cache_bytes: u64,
    ) -> Result<Lsm> {
        let dir = data.join(FJALL_DIR);
        let nothing = !dir.exists();
        let db = Database::builder(&dir)
            .cache_size(cache_bytes)
            .worker_threads(2)
            .max_journaling_size(64 << 20)
            .manual_journal_persist(manual_persist)
            .open()
            .map_err(locked_or(data))?;
        let ks = |name: &str, memtable: u64| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(memtable)
            })
            .map_err(StorageError::engine("opening a keyspace"))
        };
        let spaces = [
            ks(KEYSPACES[0].1, KEYSPACES[0].2)?,
            ks(KEYSPACES[1].1, KEYSPACES[1].2)?,
            ks(KEYSPACES[2].1, KEYSPACES[2].2)?,
            ks(KEYSPACES[3].1, KEYSPACES[3].2)?,
        ];
        crate::priority::lower_threads("fjall");
        Ok(Lsm {
            spaces,
            journal: journal::JournalSync::new(&dir, disk.clone()),
            disk,
            db,
            sync_lock: Mutex::new(()),
            poisoned: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            fsyncs: LatencyHistogram::default(),
            syncing: InFlight::default(),
            damage: Mutex::new(VecDeque::new()),
            nothing,
        })
    }

    fn ks(&self, space: Space) -> &Keyspace {
        &self.spaces[space as usize]
    }

    fn note_damaged(&self, space: Space, key: &[u8]) {
        let mut d = lock(&self.damage);
        if d.len() >= MAX_DAMAGED || d.iter().any(|(s, k)| *s == space && &k[..] == key) {
            return;
        }
        tracing::error!(space = ?space, "a fjall block holding a value fails its checksum; the value will be dropped and repaired from a replica");
        d.push_back((space, key.into()));
    }
}

impl Drop for Lsm {
    fn drop(&mut self) {
        // Flush memtables so the next open replays (almost) no journal; not after
        // a failed fsync, nor on a simulated disk whose power is gone (a real
        // machine would not write those tables).
        if self.is_poisoned() || !self.disk.powered() {
            return;
        }
        for ks in &self.spaces {
            if let Err(error) = ks.rotate_memtable_and_wait() {
                tracing::warn!(%error, "flushing a fjall memtable on close failed");
            }
        }
    }
}

impl Engine for Lsm {
    fn backend(&self) -> Backend {
        Backend::Fjall
    }

    fn commit(&self, ops: &[Op]) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StorageError::Poisoned);
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        let mut batch = self.db.batch();
        for op in ops {
            match &op.value {
                Some(v) => batch.insert(self.ks(op.space), &op.key[..], &v[..]),
                None => batch.remove(self.ks(op.space), &op.key[..]),
            }
        }
        batch
            .commit()
            .map_err(StorageError::engine("committing a batch"))
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.ks(space).get(key) {
            Ok(v) => Ok(v.map(|v| v.to_vec())),
            Err(e) => {
                let e = StorageError::engine("reading a value")(e);
                if e.is_damage() {
                    self.note_damaged(space, key);
                }
                Err(e)
            }
        }
    }

    fn prefix(&self, space: Space, prefix: &[u8], limit: usize) -> Result<Vec<Item>> {
        let mut out = Vec::new();
        for guard in self.ks(space).prefix(prefix).take(limit) {
            let key = guard.key().map_err(StorageError::engine("listing keys"))?;
            out.push(Item::Key(key.to_vec().into_boxed_slice()));
        }
        Ok(out)
    }

    fn read(&self, space: Space, item: &Item) -> Result<Option<Vec<u8>>> {
        match Engine::get(self, space, item.key()) {
            Err(e) if e.is_damage() => Ok(None),
            other => other,
        }
    }

    fn sync(&self) -> Result<()> {
        let _one = lock(&self.sync_lock);
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StorageError::Poisoned);
        }
        crate::sync::timed_sync(&self.fsyncs, &self.syncing, &self.poisoned, || {
            self.journal.sync(&self.db)
        })
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    fn stats(&self) -> LogStats {
        let bytes = self.db.disk_space().unwrap_or(0);
        LogStats {
            segments: self
                .spaces
                .iter()
                .map(|k| k.table_count() as u64)
                .sum::<u64>()
                + self.db.journal_count() as u64,
            bytes,
            // An LSM does not know which of its bytes are garbage.
            live_bytes: bytes,
            merges: self.db.compactions_completed() as u64,
            ..LogStats::default()
        }
    }

    fn fsyncs(&self) -> LatencySnapshot {
        self.fsyncs.snapshot()
    }

    fn sync_running_for(&self) -> Option<Duration> {
        self.syncing.running_for()
    }

    fn damaged(&self, n: usize) -> Vec<(Space, Box<[u8]>)> {
        lock(&self.damage).iter().take(n).cloned().collect()
    }

    fn damage_resolved(&self, space: Space, key: &[u8]) {
        lock(&self.damage).retain(|(s, k)| !(*s == space && &k[..] == key));
    }

    fn opened(&self) -> Opened {
        Opened {
            nothing: self.nothing,
            ..Opened::default()
        }
    }

    fn len(&self, space: Space) -> usize {
        match space {
            // Objects: fjall's estimate (a count would read every key).
            Space::Objects | Space::Merkle => self.ks(space).approximate_len(),
            // Hints are few and mostly deleted again: the estimate counts
            // tombstones, and an operator waits for this to reach 0.
            Space::Hints | Space::Meta => self.ks(space).len().unwrap_or_else(|error| {
                tracing::warn!(%error, "counting fjall keys failed");
                self.ks(space).approximate_len()
            }),
        }
    }

    fn value_bytes(&self, space: Space) -> u64 {
        match space {
            // fjall's files: an estimate (tables only, garbage included).
            Space::Objects | Space::Merkle => self.ks(space).disk_space(),
            // Exact, as the hint store's byte budget needs: a scan of a keyspace
            // that this budget keeps small.
            Space::Hints | Space::Meta => self
                .ks(space)
                .iter()
                .map(|guard| guard.size().map_or(0, u64::from))
                .sum(),
        }
    }

    fn maintain(&self) -> Result<()> {
        // fjall names its threads from inside them, and may start more later.
        crate::priority::lower_threads("fjall");
        Ok(())
    }

    #[cfg(test)]
    fn compact(&self) -> Result<()> {
        for ks in &self.spaces {
            ks.rotate_memtable_and_wait()
                .map_err(StorageError::engine("flushing a memtable"))?;
            ks.major_compact()
                .map_err(StorageError::engine("compacting"))?;
        }
        Ok(())
    }
}
