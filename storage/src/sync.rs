//! When acknowledged writes reach the disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use fjall::{Database, PersistMode};

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

/// Background thread that syncs the journal every interval (group commit).
pub(crate) struct Syncer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

/// How often the syncer checks whether it should stop (bounds shutdown latency).
const STOP_POLL: Duration = Duration::from_millis(20);

impl Syncer {
    pub(crate) fn start(db: Database, interval: Duration) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("ringkv-sync".into())
            .spawn(move || {
                let mut waited = Duration::ZERO;
                while !flag.load(Ordering::Acquire) {
                    let step = STOP_POLL.min(interval);
                    std::thread::sleep(step);
                    waited += step;
                    if waited >= interval {
                        waited = Duration::ZERO;
                        if let Err(error) = db.persist(PersistMode::SyncData) {
                            tracing::error!(%error, "periodic journal sync failed");
                        }
                    }
                }
                if let Err(error) = db.persist(PersistMode::SyncData) {
                    tracing::error!(%error, "final journal sync failed");
                }
            })?;
        Ok(Syncer {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}
