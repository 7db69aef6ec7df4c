//! When acknowledged writes reach the disk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::backend::Engine;
use crate::error::StorageError;
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

/// Runs an engine's sync `f`, timing it into `fsyncs` and showing it in `syncing`
/// while it runs; a failure sets `poisoned`: the kernel may have dropped the pages
/// it could not write and will not report it again, so no later sync can prove
/// anything and writes are refused from then on (as PostgreSQL and fjall do).
pub(crate) fn timed_sync(
    fsyncs: &crate::timing::LatencyHistogram,
    syncing: &crate::timing::InFlight,
    poisoned: &AtomicBool,
    f: impl FnOnce() -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    let in_flight = syncing.start();
    let result = f();
    fsyncs.observe(in_flight.elapsed());
    drop(in_flight);
    if let Err(error) = &result {
        tracing::error!(%error, "an fsync failed: the store takes no more writes until restarted");
        poisoned.store(true, Ordering::Release);
    }
    result
}

/// Background threads of a store: one syncs the log every interval under
/// [`SyncPolicy::Interval`] (group commit) and checkpoints hash trees; the other
/// merges the log when garbage outweighs live data, at background CPU priority.
pub(crate) struct Background {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

/// How often the merge thread looks for garbage to reclaim.
const MERGE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// How often the thread checks whether it should stop (bounds shutdown latency).
const STOP_POLL: Duration = Duration::from_millis(10);

impl Background {
    pub(crate) fn start(
        log: Arc<dyn Engine>,
        sync_every: Option<Duration>,
        trees: Arc<Trees>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let merger_log = log.clone();
        let syncer = std::thread::Builder::new()
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
                        if let Err(error) = log.sync() {
                            tracing::error!(%error, "periodic log sync failed");
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
                if let Err(error) = log.sync() {
                    tracing::error!(%error, "final log sync failed");
                }
            })?;
        let flag = stop.clone();
        let merger = std::thread::Builder::new()
            .name("ringkv-merge".into())
            .spawn(move || {
                // Merging reads and rewrites every live value: it yields the CPU to
                // requests, as RocksDB's background threads can be made to. (At
                // normal priority workload A's p99 at half load rose from 3.9 ms to
                // 5.0 ms.) The locks it shares with requests it holds for tens of
                // microseconds at a time, so a preempted merge holds nobody up long.
                crate::priority::lower_threads("ringkv-merge");
                let mut since_check = Duration::ZERO;
                while !flag.load(Ordering::Acquire) {
                    std::thread::sleep(STOP_POLL);
                    since_check += STOP_POLL;
                    if since_check < MERGE_CHECK_EVERY {
                        continue;
                    }
                    since_check = Duration::ZERO;
                    if let Err(error) = merger_log.maintain() {
                        tracing::error!(%error, "storage upkeep (the log's merge) failed; retried later");
                    }
                }
            });
        let merger = match merger {
            Ok(handle) => handle,
            Err(e) => {
                stop.store(true, Ordering::Release);
                let _ = syncer.join();
                return Err(e);
            }
        };
        Ok(Background {
            stop,
            handles: vec![syncer, merger],
        })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

/// Group commit for [`SyncPolicy::Always`]: a writer that committed to the log
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
    /// Writes committed to the log so far (tickets handed out).
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
    pub(crate) fn wait(&self, log: &dyn Engine, ticket: u64) -> Result<(), StorageError> {
        let mut g = crate::store::lock(&self.state);
        loop {
            if g.synced >= ticket {
                return Ok(());
            }
            if !g.syncing {
                g.syncing = true;
                let target = g.committed;
                drop(g);
                let result = log.sync();
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
        let log = Arc::new(
            crate::log::Log::open(
                dir.path(),
                crate::log::LogConfig::default(),
                crate::disk::Disk::Os,
            )
            .expect("open"),
        );
        let group = Arc::new(GroupSync::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (log, group) = (log.clone(), group.clone());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let t = group.ticket();
                        group.wait(&*log, t).expect("sync");
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
