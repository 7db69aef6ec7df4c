//! When acknowledged writes reach the disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use fjall::{Database, PersistMode};

use crate::tree::{CHECKPOINT_INTERVAL, Trees};

/// The durability a write has when [`crate::Store::update`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `fdatasync` before every write returns: nothing acknowledged is ever lost.
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
