//! The disk under a store: the operating system's, or a simulated one that models a
//! power loss.
//!
//! Every fsync, directory sync and rename of the store goes through [`Disk`]. On the
//! real disk they are the system calls. On a [`SimulatedDisk`] an fsync records how
//! many bytes of the file are durable, and [`SimulatedDisk::power_off`] followed by
//! [`SimulatedDisk::restore`] cuts every file back to what its last completed fsync
//! covered: the bytes a machine loses when its power goes, which a killed process
//! (or a dropped simulated host) never loses. The chaos simulation crashes nodes this
//! way, so what a sync policy allows to be lost is lost.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where a store's files live.
#[derive(Clone, Debug, Default)]
pub enum Disk {
    /// The operating system's disk: fsyncs are real.
    #[default]
    Os,
    /// A simulated disk whose unsynced bytes a power loss drops.
    Simulated(Arc<SimulatedDisk>),
}

/// What a simulated disk knows.
#[derive(Debug, Default)]
struct SimState {
    /// Power is off: syncs and renames no longer reach the disk.
    off: bool,
    /// Durable length of every file the store created or synced.
    synced: BTreeMap<PathBuf, u64>,
    /// Every fsync fails (a disk that reports write errors).
    failing: bool,
    /// Power losses so far.
    losses: u64,
    /// Bytes dropped by them.
    dropped_bytes: u64,
    /// fsyncs refused while `failing`.
    refused_syncs: u64,
}

/// A disk that keeps, per file, the length its last completed fsync made durable.
#[derive(Debug, Default)]
pub struct SimulatedDisk {
    state: Mutex<SimState>,
}

fn power_is_off() -> io::Error {
    io::Error::other("the simulated machine has lost power")
}

impl SimulatedDisk {
    /// A disk with power on and nothing tracked.
    pub fn new() -> Arc<SimulatedDisk> {
        Arc::new(SimulatedDisk::default())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The power goes: from now on nothing more becomes durable (syncs do nothing,
    /// renames fail), until [`SimulatedDisk::restore`].
    pub fn power_off(&self) {
        self.state().off = true;
    }

    /// Brings the disk back as a power loss leaves it: every file the store wrote is
    /// cut to its durable length. With `torn = Some(n)`, a file with unsynced bytes
    /// keeps `n` modulo (their count + 1) of them, a torn append, but only while it
    /// is the only file with unsynced bytes (so the disk still holds a prefix of what
    /// was written). Returns the bytes dropped.
    ///
    /// # Errors
    /// If a file cannot be cut.
    pub fn restore(&self, torn: Option<u64>) -> io::Result<u64> {
        let mut s = self.state();
        let mut pending: Vec<(PathBuf, u64, u64)> = Vec::new();
        for (path, &durable) in &s.synced {
            match std::fs::metadata(path) {
                Ok(m) if m.len() > durable => pending.push((path.clone(), durable, m.len())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let single = pending.len() == 1;
        let mut dropped = 0;
        for (path, durable, len) in pending {
            let keep = match torn {
                Some(n) if single => durable + n % (len - durable + 1),
                _ => durable,
            };
            let file = std::fs::OpenOptions::new().write(true).open(&path)?;
            file.set_len(keep)?;
            dropped += len - keep;
            s.synced.insert(path, keep);
        }
        s.off = false;
        s.losses += 1;
        s.dropped_bytes += dropped;
        Ok(dropped)
    }

    /// From now on every fsync of the store's files fails with an I/O error (or, with
    /// `false`, works again), as a disk that can no longer write reports it.
    pub fn fail_syncs(&self, failing: bool) {
        self.state().failing = failing;
    }

    /// A new, empty disk in place of this one (the machine's disk was lost and its
    /// directory is gone): nothing tracked, power on, syncs working. Counts of
    /// power losses and refused syncs stay.
    pub fn replace(&self) {
        let mut s = self.state();
        s.synced.clear();
        s.off = false;
        s.failing = false;
    }

    /// fsyncs refused so far (see [`SimulatedDisk::fail_syncs`]).
    pub fn refused_syncs(&self) -> u64 {
        self.state().refused_syncs
    }

    /// Power losses so far and the bytes they dropped.
    pub fn losses(&self) -> (u64, u64) {
        let s = self.state();
        (s.losses, s.dropped_bytes)
    }
}

impl Disk {
    /// Whether writes still reach this disk (a simulated one loses its power).
    pub(crate) fn powered(&self) -> bool {
        match self {
            Disk::Os => true,
            Disk::Simulated(sim) => !sim.state().off,
        }
    }

    /// Makes a file's data durable up to its current length.
    pub(crate) fn sync_data(&self, file: &File, path: &Path) -> io::Result<()> {
        match self {
            Disk::Os => file.sync_data(),
            Disk::Simulated(sim) => {
                let len = file.metadata()?.len();
                let mut s = sim.state();
                if s.failing {
                    s.refused_syncs += 1;
                    return Err(io::Error::other("injected fsync failure (simulated disk)"));
                }
                if !s.off {
                    s.synced.insert(path.to_path_buf(), len);
                }
                Ok(())
            }
        }
    }

    /// Makes the entries of a directory (files created, renamed, removed) durable.
    pub(crate) fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        match self {
            Disk::Os => File::open(dir).and_then(|d| d.sync_all()),
            // Directory operations are taken as durable when made: the log orders
            // them with fsyncs of its own, and the model is about lost data.
            Disk::Simulated(_) => Ok(()),
        }
    }

    /// A file the store just created: none of it is durable yet.
    pub(crate) fn created(&self, path: &Path) {
        if let Disk::Simulated(sim) = self {
            sim.state().synced.insert(path.to_path_buf(), 0);
        }
    }

    /// A file found on open: whatever it holds survived.
    pub(crate) fn found(&self, path: &Path, len: u64) {
        if let Disk::Simulated(sim) = self {
            sim.state().synced.insert(path.to_path_buf(), len);
        }
    }

    /// A file the store removed.
    pub(crate) fn removed(&self, path: &Path) {
        if let Disk::Simulated(sim) = self {
            sim.state().synced.remove(path);
        }
    }

    /// Renames `from` to `to` atomically.
    pub(crate) fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        match self {
            Disk::Os => std::fs::rename(from, to),
            Disk::Simulated(sim) => {
                let mut s = sim.state();
                if s.off {
                    return Err(power_is_off());
                }
                std::fs::rename(from, to)?;
                if let Some(len) = s.synced.remove(from) {
                    s.synced.insert(to.to_path_buf(), len);
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_power_loss_cuts_files_to_their_last_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sim = SimulatedDisk::new();
        let disk = Disk::Simulated(sim.clone());
        let a = dir.path().join("a");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&a)
            .expect("create");
        disk.created(&a);
        f.write_all(b"durable").expect("write");
        disk.sync_data(&f, &a).expect("sync");
        f.write_all(b" lost").expect("write");
        sim.power_off();
        // Nothing after the power went counts, not even a sync.
        disk.sync_data(&f, &a).expect("sync");
        assert!(disk.rename(&a, &dir.path().join("b")).is_err());
        assert_eq!(sim.restore(None).expect("restore"), 5);
        assert_eq!(std::fs::read(&a).expect("read"), b"durable");
        assert_eq!(sim.losses(), (1, 5));
        // A torn append keeps part of the unsynced tail of the only such file.
        f.write_all(b"0123456789").expect("write");
        sim.power_off();
        assert_eq!(sim.restore(Some(4)).expect("restore"), 6);
        assert_eq!(std::fs::read(&a).expect("read"), b"durable0123");
    }
}
