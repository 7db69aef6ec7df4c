//! Files a node reads again when they change (TLS certificates, the auth file):
//! a look at their metadata tells a new version from the one in force without
//! reading them.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// What identifies one version of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    // Through symbolic links: Kubernetes swaps a Secret's files by relinking.
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// A set of files read together, the versions last read, and how many changed
/// versions could not be used.
#[derive(Debug)]
pub struct Watched {
    paths: Vec<PathBuf>,
    last: Mutex<Vec<Option<Stamp>>>,
    failures: AtomicU64,
}

impl Watched {
    /// `paths`, taking their versions now (call before reading them, so a change
    /// made during the read is seen next time).
    pub fn new(paths: Vec<PathBuf>) -> Watched {
        let last = paths.iter().map(|p| stamp(p)).collect();
        Watched {
            paths,
            last: Mutex::new(last),
            failures: AtomicU64::new(0),
        }
    }

    /// The files.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Whether they should be read again: one changed since the last look, or
    /// `force` (SIGHUP). The versions seen now become the last read.
    pub fn changed(&self, force: bool) -> bool {
        let now: Vec<Option<Stamp>> = self.paths.iter().map(|p| stamp(p)).collect();
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !force && now == *last {
            return false;
        }
        *last = now;
        true
    }

    /// Counts a changed version that could not be used.
    pub fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Changed versions that could not be used.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_seen_once_and_a_forced_look_always_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, "one").expect("write");
        let w = Watched::new(vec![path.clone()]);
        assert!(!w.changed(false));
        assert!(w.changed(true));
        std::fs::write(&path, "three").expect("write");
        assert!(w.changed(false));
        assert!(!w.changed(false));
        std::fs::remove_file(&path).expect("remove");
        assert!(w.changed(false), "a file gone is a change");
    }
}
