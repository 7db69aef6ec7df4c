//! Syncing fjall's journal without holding its journal lock while the disk works.
//!
//! fjall's `persist(SyncData)` runs `fdatasync` under the lock every commit needs,
//! so each sync stalls every writer for as long as the disk takes (tens of
//! milliseconds on a virtual disk: the p99 of every put, BENCHMARKS.md). Here fjall
//! only hands its buffered bytes to the OS under that lock, and the `fdatasync`
//! goes through a handle of our own to the active journal file, outside it:
//! `fdatasync` flushes a file whichever descriptor wrote it. Sealed journals need
//! nothing: fjall syncs a journal (and the directory) when it rotates it.
//!
//! On a [`crate::SimulatedDisk`] the sync is recorded like any other, but fjall
//! preallocates its journals (64 MiB files from the start), so a simulated power
//! loss, which cuts files back to their synced length, cuts nothing: on fjall the
//! simulation's crashes lose only what never reached the OS.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fjall::{Database, PersistMode};

use crate::disk::Disk;
use crate::error::{Result, StorageError};
use crate::store::lock;

/// The newest `N.jnl` in `dir`: the journal fjall appends to.
fn active_journal(dir: &Path) -> std::io::Result<Option<(u64, PathBuf)>> {
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
    Ok(newest)
}

/// Our own handle to the active journal.
pub(crate) struct JournalSync {
    dir: PathBuf,
    disk: Disk,
    /// The journal last synced, and its handle (reopened when fjall rotates).
    open: Mutex<Option<(u64, PathBuf, File)>>,
}

impl JournalSync {
    pub(crate) fn new(dir: &Path, disk: Disk) -> Self {
        JournalSync {
            dir: dir.to_path_buf(),
            disk,
            open: Mutex::new(None),
        }
    }

    /// Everything committed to `db` before the call is on disk when this returns
    /// `Ok`.
    pub(crate) fn sync(&self, db: &Database) -> Result<()> {
        db.persist(PersistMode::Buffer)
            .map_err(StorageError::engine("handing the journal to the OS"))?;
        let newest =
            active_journal(&self.dir).map_err(StorageError::io("listing fjall's journals"))?;
        let Some((id, path)) = newest else {
            // No journal file at all: fall back to fjall's own (locked) sync.
            return db
                .persist(PersistMode::SyncData)
                .map_err(StorageError::engine("syncing the journal"));
        };
        let mut open = lock(&self.open);
        if open.as_ref().is_none_or(|(have, _, _)| *have != id) {
            match File::open(&path) {
                Ok(file) => *open = Some((id, path, file)),
                // Rotated and removed between the listing and the open: the rotated
                // journal was synced by fjall, and the new one is covered by fjall's
                // own sync.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return db
                        .persist(PersistMode::SyncData)
                        .map_err(StorageError::engine("syncing the journal"));
                }
                Err(e) => return Err(StorageError::io("opening the journal")(e)),
            }
        }
        let Some((_, path, file)) = open.as_ref() else {
            unreachable!("a journal was opened above");
        };
        self.disk
            .sync_data(file, path)
            .map_err(StorageError::io("syncing the journal"))
    }
}
