//! When acknowledged writes reach the disk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use std::path::{Path, PathBuf};

use fjall::{Database, PersistMode};

use crate::tree::{CHECKPOINT_INTERVAL, Trees};

/// The durability a write has when [`crate::Store::update`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `fdatasync` before every write returns: nothing acknowledged is ever lost.
    /// Concurrent writes share fsyncs (group commit).
    Always,
    /// Writes reach the OS page cache before returning (they survive a process crash);
    /// a background thread syncs every `interval`, so an OS crash or power loss loses at
    /// most that window.
    Interval(Duration),
    /// Writes reach the OS page cache before returning; nothing forces them to disk.
    /// A process crash loses nothing, a power loss may lose everything not yet flushed.
    None,
}

impl SyncPolicy {
    /// The default group-commit window of [`SyncPolicy::Interval`].
    pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);
}

/// Makes the journal durable without holding fjall's journal lock while the disk
/// works.
///
/// fjall's `persist(SyncData)` runs `fdatasync` under the lock every commit needs, so
/// each sync stalled every writer for as long as the disk took (tens of
/// milliseconds on a virtual disk: the p99 of every put). Here fjall only hands its
/// buffered bytes to the OS under that lock, and the `fdatasync` goes through a
/// handle of our own to the active journal file, outside it. `fdatasync` flushes the
/// file, whichever descriptor wrote it. Sealed journals need nothing: fjall syncs a
/// journal (and the directory) when it rotates it.
#[derive(Clone)]
pub(crate) struct JournalSync {
    db: Database,
    dir: PathBuf,
}

/// The newest `N.jnl` in `dir`: the journal fjall writes to.
fn active_journal(dir: &Path) -> std::io::Result<Option<PathBuf>> {
    let mut newest: Option<(u64, PathBuf)> = None;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".jnl"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if newest.as_ref().is_none_or(|(n, _)| id > *n) {
            newest = Some((id, entry.path()));
        }
    }
    Ok(newest.map(|(_, p)| p))
}

impl JournalSync {
    pub(crate) fn new(db: Database, dir: &Path) -> Self {
        JournalSync {
            db,
            dir: dir.to_path_buf(),
        }
    }

    /// Everything committed before the call is on disk when it returns `Ok`.
    pub(crate) fn sync(&self) -> Result<(), fjall::Error> {
        self.db.persist(PersistMode::Buffer)?;
        let Some(path) = active_journal(&self.dir)? else {
            // No journal file at all: fall back to fjall's own (locked) sync.
            return self.db.persist(PersistMode::SyncData);
        };
        match std::fs::File::open(&path) {
            Ok(file) => file.sync_data().map_err(fjall::Error::Io),
            // Rotated and removed between the listing and the open: a rotated
            // journal was synced by fjall, and the new one holds only later commits
            // unless the rotation raced ours, which fjall's own sync covers.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.db.persist(PersistMode::SyncData)
            }
            Err(e) => Err(fjall::Error::Io(e)),
        }
    }
}

/// Background thread of a store: syncs the journal every interval under
/// [`SyncPolicy::Interval`] (group commit) and checkpoints hash trees.
pub(crate) struct Background {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

/// How often the engine's threads are looked for and given background priority.
const PRIORITY_EVERY: Duration = Duration::from_secs(1);

/// How often the thread checks whether it should stop (bounds shutdown latency).
const STOP_POLL: Duration = Duration::from_millis(10);

impl Background {
    pub(crate) fn start(
        journal: JournalSync,
        sync_every: Option<Duration>,
        trees: Arc<Trees>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("ringkv-storage".into())
            .spawn(move || {
                let mut since_sync = Duration::ZERO;
                let mut since_checkpoint = Duration::ZERO;
                let mut since_priority = PRIORITY_EVERY;
                while !flag.load(Ordering::Acquire) {
                    std::thread::sleep(STOP_POLL);
                    since_sync += STOP_POLL;
                    since_checkpoint += STOP_POLL;
                    since_priority += STOP_POLL;
                    // Again and again: fjall names its threads from inside them,
                    // and may start more later.
                    if since_priority >= PRIORITY_EVERY {
                        since_priority = Duration::ZERO;
                        crate::priority::lower_threads("fjall");
                    }
                    if sync_every.is_some_and(|every| since_sync >= every) {
                        since_sync = Duration::ZERO;
                        if let Err(error) = journal.sync() {
                            tracing::error!(%error, "periodic journal sync failed");
                        }
                    }
                    if since_checkpoint >= CHECKPOINT_INTERVAL {
                        since_checkpoint = Duration::ZERO;
                        if let Err(error) = trees.checkpoint() {
                            tracing::error!(%error, "hash tree checkpoint failed");
                        }
                    }
                }
                if let Err(error) = trees.checkpoint() {
                    tracing::error!(%error, "final hash tree checkpoint failed");
                }
                if let Err(error) = journal.sync() {
                    tracing::error!(%error, "final journal sync failed");
                }
            })?;
        Ok(Background {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Group commit for [`SyncPolicy::Always`]: a writer that committed to the journal
/// waits until an `fdatasync` that started after its commit has finished. One waiter
/// performs the sync for everybody committed before it started; the others sleep, so
/// 50 concurrent writers pay for a handful of fsyncs instead of 50.
#[derive(Default)]
pub(crate) struct GroupSync {
    state: Mutex<GroupState>,
    done: Condvar,
}

#[derive(Default)]
struct GroupState {
    /// Writes committed to the journal so far (tickets handed out).
    committed: u64,
    /// Every ticket up to this one is on disk.
    synced: u64,
    /// A sync is running.
    syncing: bool,
}

impl GroupSync {
    /// Called right after a commit: the ticket that [`GroupSync::wait`] waits for.
    pub(crate) fn ticket(&self) -> u64 {
        let mut g = crate::store::lock(&self.state);
        g.committed += 1;
        g.committed
    }

    /// The newest ticket handed out (to wait for writes already committed by others).
    pub(crate) fn committed(&self) -> u64 {
        crate::store::lock(&self.state).committed
    }

    /// Returns once `ticket` is durable.
    ///
    /// Each turn of the loop either returns, performs a sync, or sleeps until the
    /// running sync finishes, so it ends after at most two syncs.
    pub(crate) fn wait(&self, journal: &JournalSync, ticket: u64) -> Result<(), fjall::Error> {
        let mut g = crate::store::lock(&self.state);
        loop {
            if g.synced >= ticket {
                return Ok(());
            }
            if !g.syncing {
                g.syncing = true;
                let target = g.committed;
                drop(g);
                let result = journal.sync();
                g = crate::store::lock(&self.state);
                g.syncing = false;
                if result.is_ok() {
                    g.synced = g.synced.max(target);
                }
                self.done.notify_all();
                result?;
                continue;
            }
            g = self.done.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_active_journal_and_syncs_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["3.jnl", "12.jnl", "7.jnl", "x.jnl", "12.jnl.tmp", "lock"] {
            std::fs::write(dir.path().join(name), b"").expect("file");
        }
        assert_eq!(
            active_journal(dir.path()).expect("list"),
            Some(dir.path().join("12.jnl"))
        );
        let empty = tempfile::tempdir().expect("tempdir");
        assert_eq!(active_journal(empty.path()).expect("list"), None);
        // A real database: its journal is found and syncing succeeds.
        let db_dir = tempfile::tempdir().expect("tempdir");
        let db = Database::builder(db_dir.path()).open().expect("open");
        let ks = db
            .keyspace("t", fjall::KeyspaceCreateOptions::default)
            .expect("keyspace");
        ks.insert(b"k", b"v").expect("insert");
        assert!(active_journal(db_dir.path()).expect("list").is_some());
        JournalSync::new(db, db_dir.path()).sync().expect("sync");
    }

    #[test]
    fn concurrent_writers_share_syncs_and_all_return() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::builder(dir.path()).open().expect("open");
        let journal = JournalSync::new(db, dir.path());
        let group = Arc::new(GroupSync::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (journal, group) = (journal.clone(), group.clone());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let t = group.ticket();
                        group.wait(&journal, t).expect("sync");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("writer");
        }
        let g = crate::store::lock(&group.state);
        assert_eq!(g.committed, 160);
        assert_eq!(g.synced, 160);
    }
}
