//! The seam between the store and its engines: the log (the default) and fjall.
//!
//! The store above keeps everything that must behave the same whichever engine holds
//! the bytes: the striped read-merge-write, hash trees committed in the same atomic
//! batch as their object, group commit, the metadata file and the clean-shutdown
//! bookkeeping. An engine offers keyspaces ([`Space`]) with atomic multi-keyspace
//! batches, point reads, prefix listings, a sync that makes every earlier commit
//! durable, and poisoning once a sync failed.
//!
//! A data directory records its engine in [`MARKER`]; opening it with the other one
//! is refused before either engine touches a file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::disk::Disk;
use crate::error::{Result, StorageError};
use crate::log::{LogStats, Op, Space};
use crate::timing::LatencySnapshot;

/// Which engine holds a store's data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Backend {
    /// ringkv's own log (Bitcask design): every key in memory, one read per get,
    /// no fsync under a lock requests take. The default.
    #[default]
    Log,
    /// fjall's LSM tree: key sets larger than memory, at a worse write tail.
    Fjall,
}

impl Backend {
    /// The name used by `--storage`, the marker file and `status`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Log => "log",
            Backend::Fjall => "fjall",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "log" => Ok(Backend::Log),
            "fjall" => Ok(Backend::Fjall),
            other => Err(format!(
                "unknown storage backend {other:?}: expected log or fjall"
            )),
        }
    }
}

/// File naming the engine of a data directory.
pub(crate) const MARKER: &str = "BACKEND";
/// What the marker file holds before the engine's name.
const MARKER_PREFIX: &str = "ringkv-storage ";
/// Subdirectory of the data directory that fjall owns.
pub(crate) const FJALL_DIR: &str = "fjall";

/// The engine a data directory was created with, if it holds any data: the marker
/// file, or, for directories from before it, the files that give the engine away.
///
/// # Errors
/// [`StorageError::Io`] if the directory cannot be listed, or
/// [`StorageError::ForeignFormat`] if the marker names no engine this build knows.
fn recorded(dir: &Path) -> Result<Option<Backend>> {
    match std::fs::read_to_string(dir.join(MARKER)) {
        Ok(text) => {
            let name = text.trim().strip_prefix(MARKER_PREFIX).unwrap_or("");
            return name
                .parse()
                .map(Some)
                .map_err(|_| StorageError::ForeignFormat {
                    path: dir.to_path_buf(),
                    found: format!("{MARKER} naming {:?}", text.trim()),
                });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StorageError::io("reading the backend marker")(e)),
    }
    let entries = std::fs::read_dir(dir).map_err(StorageError::io("listing the data directory"))?;
    for entry in entries {
        let entry = entry.map_err(StorageError::io("listing the data directory"))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".seg") {
            return Ok(Some(Backend::Log));
        }
        if name == FJALL_DIR {
            return Ok(Some(Backend::Fjall));
        }
    }
    Ok(None)
}

/// Checks that `dir` (which exists) may be opened with `wanted`, recording the
/// engine in a new directory. Nothing is written when the answer is no.
///
/// # Errors
/// [`StorageError::WrongBackend`] if the directory holds the other engine's data,
/// [`StorageError::Io`] if the marker cannot be read or written.
pub(crate) fn claim(dir: &Path, wanted: Backend, disk: &Disk) -> Result<()> {
    match recorded(dir)? {
        Some(found) if found == wanted => {
            if !dir.join(MARKER).exists() {
                write_marker(dir, wanted, disk)?;
            }
            Ok(())
        }
        Some(found) => Err(StorageError::WrongBackend {
            path: dir.to_path_buf(),
            found: found.name(),
            wanted: wanted.name(),
        }),
        None => write_marker(dir, wanted, disk),
    }
}

fn write_marker(dir: &Path, backend: Backend, disk: &Disk) -> Result<()> {
    let tmp: PathBuf = dir.join(format!("{MARKER}.tmp"));
    std::fs::write(&tmp, format!("{MARKER_PREFIX}{}\n", backend.name()))
        .map_err(StorageError::io("writing the backend marker"))?;
    let file = std::fs::File::open(&tmp).map_err(StorageError::io("writing the backend marker"))?;
    disk.sync_data(&file, &tmp)
        .map_err(StorageError::io("writing the backend marker"))?;
    disk.rename(&tmp, &dir.join(MARKER))
        .map_err(StorageError::io("writing the backend marker"))?;
    disk.sync_dir(dir)
        .map_err(StorageError::io("syncing the data directory"))
}

/// A key listed by [`Engine::prefix`], with what the engine needs to read its value.
pub(crate) enum Item {
    /// Where the log held the value when it was listed (readable even if a merge
    /// removes the segment meanwhile).
    Log(crate::log::Located),
    /// Only the key: the value is looked up when read.
    Key(Box<[u8]>),
}

impl Item {
    /// The listed key.
    pub(crate) fn key(&self) -> &[u8] {
        match self {
            Item::Log(located) => &located.key,
            Item::Key(key) => key,
        }
    }
}

/// What an engine found when it opened.
#[derive(Clone, Debug, Default)]
pub(crate) struct Opened {
    /// No record at all: a new directory.
    pub(crate) nothing: bool,
    /// Where damaged stretches were skipped: (segment, offset).
    pub(crate) skipped_at: Vec<(u32, u64)>,
    /// Bytes of a torn tail cut off.
    pub(crate) truncated_bytes: u64,
}

/// One engine under a [`crate::Store`]. Every method may be called from many
/// threads at once.
pub(crate) trait Engine: Send + Sync {
    /// Which engine this is.
    fn backend(&self) -> Backend;

    /// Applies `ops` atomically (all or nothing, also across a crash) and makes
    /// them visible. They survive a killed process once this returns; a power loss
    /// only once a later [`Engine::sync`] returned.
    ///
    /// # Errors
    /// [`StorageError::Poisoned`] after a failed sync, [`StorageError::Closed`]
    /// after [`Engine::close`], or the engine's I/O failure (nothing applied).
    fn commit(&self, ops: &[Op]) -> Result<()>;

    /// The value of `key`.
    ///
    /// # Errors
    /// The engine's I/O failure, or damage ([`StorageError::is_damage`]), which is
    /// also remembered for [`Engine::damaged`].
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Up to `limit` keys of `space` starting with `prefix`, in key order: a
    /// snapshot of the keys; read each value with [`Engine::read`].
    ///
    /// # Errors
    /// The engine's failure to list (damage included).
    fn prefix(&self, space: Space, prefix: &[u8], limit: usize) -> Result<Vec<Item>>;

    /// The value of a listed key: `None` if it is gone since, or damaged (then
    /// remembered for [`Engine::damaged`]).
    ///
    /// # Errors
    /// The engine's I/O failure.
    fn read(&self, space: Space, item: &Item) -> Result<Option<Vec<u8>>>;

    /// Makes every earlier commit durable.
    ///
    /// # Errors
    /// The fsync's failure, after which the engine is poisoned.
    fn sync(&self) -> Result<()>;

    /// Refuses later commits (syncs still work).
    fn close(&self);

    /// Whether a sync failed: writes are refused until the store is opened again.
    fn is_poisoned(&self) -> bool;

    /// Files, bytes, merges or compactions, recovery figures.
    fn stats(&self) -> LogStats;

    /// Latencies of the engine's syncs so far.
    fn fsyncs(&self) -> LatencySnapshot;

    /// How long the sync in flight has been running, if one is.
    fn sync_running_for(&self) -> Option<Duration>;

    /// Up to `n` values found damaged and not yet resolved, oldest first.
    fn damaged(&self, n: usize) -> Vec<(Space, Box<[u8]>)>;

    /// Forgets a damaged value (dropped, or readable again).
    fn damage_resolved(&self, space: Space, key: &[u8]);

    /// What the open found.
    fn opened(&self) -> Opened;

    /// Live keys of `space` (approximate for an LSM).
    fn len(&self, space: Space) -> usize;

    /// Bytes of the live values of `space` (exact for hints and metadata; for
    /// objects an estimate on an LSM).
    fn value_bytes(&self, space: Space) -> u64;

    /// Background upkeep the store's thread runs every second: the log's merge.
    ///
    /// # Errors
    /// The upkeep's failure (retried on the next call).
    fn maintain(&self) -> Result<()>;

    /// Runs the engine's garbage collection now, whatever its triggers say (the
    /// log's merge; fjall's memtable flush and a major compaction).
    ///
    /// # Errors
    /// The engine's failure.
    #[cfg(test)]
    fn compact(&self) -> Result<()>;
}
