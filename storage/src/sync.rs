//! When acknowledged writes reach the disk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

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

/// Background thread of a store: syncs the journal every interval under
/// [`SyncPolicy::Interval`] (group commit) and checkpoints hash trees.
pub(crate) struct Background {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

/// How often the thread checks whether it should stop (bounds shutdown latency).
const STOP_POLL: Duration = Duration::from_millis(10);

impl Background {
    pub(crate) fn start(
        db: Database,
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
                while !flag.load(Ordering::Acquire) {
                    std::thread::sleep(STOP_POLL);
                    since_sync += STOP_POLL;
                    since_checkpoint += STOP_POLL;
                    if sync_every.is_some_and(|every| since_sync >= every) {
                        since_sync = Duration::ZERO;
                        if let Err(error) = db.persist(PersistMode::SyncData) {
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
                if let Err(error) = db.persist(PersistMode::SyncData) {
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
    pub(crate) fn wait(&self, db: &Database, ticket: u64) -> Result<(), fjall::Error> {
        let mut g = crate::store::lock(&self.state);
        loop {
            if g.synced >= ticket {
                return Ok(());
            }
            if !g.syncing {
                g.syncing = true;
                let target = g.committed;
                drop(g);
                let result = db.persist(PersistMode::SyncData);
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
    fn concurrent_writers_share_syncs_and_all_return() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::builder(dir.path()).open().expect("open");
        let group = Arc::new(GroupSync::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (db, group) = (db.clone(), group.clone());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let t = group.ticket();
                        group.wait(&db, t).expect("sync");
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
