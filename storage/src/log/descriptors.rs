//! Open segment files, bounded: a log of 10,000 segments must run under
//! `ulimit -n 1024`. A sealed segment is opened when first read and stays open
//! while it is among the most recently opened [`Descriptors::capacity`]; the
//! oldest is closed when another opens. The active segment is pinned open (every
//! commit writes it), as is a segment a merge retires (readers that listed its
//! keys before the merge read it after its unlink, through that handle).

use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use super::record::Salt;
use crate::error::{Result, StorageError};
use crate::store::lock;

/// Segments the cache keeps open at most when the descriptor limit does not say.
const DEFAULT_CAPACITY: usize = 256;

/// The bounded set of open sealed segments of one log.
#[derive(Debug)]
pub(crate) struct Descriptors {
    /// Segments opened through the cache, oldest first (a segment opened again
    /// after being closed appears again; a dropped one is skipped).
    open: Mutex<VecDeque<Weak<Segment>>>,
    capacity: usize,
    /// Files opened so far (for tests and status).
    pub(crate) opened: AtomicU64,
}

impl Descriptors {
    /// A cache of `capacity` open segments; `None`: a quarter of this process's
    /// descriptor limit, between 16 and 256.
    pub(crate) fn new(capacity: Option<usize>) -> Arc<Descriptors> {
        let capacity = capacity.unwrap_or_else(|| {
            soft_limit().map_or(DEFAULT_CAPACITY, |n| (n / 4).clamp(16, DEFAULT_CAPACITY))
        });
        Arc::new(Descriptors {
            open: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            opened: AtomicU64::new(0),
        })
    }

    /// Segments kept open at most.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    fn admit(&self, segment: &Arc<Segment>) {
        let mut open = lock(&self.open);
        open.push_back(Arc::downgrade(segment));
        while open.len() > self.capacity {
            if let Some(oldest) = open.pop_front().and_then(|w| w.upgrade()) {
                oldest.release();
            }
        }
    }
}

/// This process's soft limit on open files.
fn soft_limit() -> Option<usize> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own and touches nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    (rc == 0).then(|| usize::try_from(rl.rlim_cur).unwrap_or(usize::MAX))
}

/// One segment file, shared by readers.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) id: u32,
    path: PathBuf,
    /// Bytes written (the file's length once sealed).
    pub(crate) len: AtomicU64,
    /// Mixed into the checksum of every record (`None` in format 1 segments).
    pub(crate) salt: Salt,
    /// The open file, while it is open.
    handle: RwLock<Option<Arc<File>>>,
    /// Kept open whatever the cache says.
    pinned: AtomicBool,
    fds: Arc<Descriptors>,
}

impl Segment {
    /// A segment whose file is not open now (it opens when read).
    pub(crate) fn closed(
        id: u32,
        path: PathBuf,
        len: u64,
        salt: Salt,
        fds: &Arc<Descriptors>,
    ) -> Segment {
        Segment {
            id,
            path,
            len: AtomicU64::new(len),
            salt,
            handle: RwLock::new(None),
            pinned: AtomicBool::new(false),
            fds: fds.clone(),
        }
    }

    /// The active segment: `file` (open for writing) stays open until
    /// [`Segment::unpin`].
    pub(crate) fn pinned(
        id: u32,
        path: PathBuf,
        len: u64,
        salt: Salt,
        file: Arc<File>,
        fds: &Arc<Descriptors>,
    ) -> Segment {
        let s = Segment::closed(id, path, len, salt, fds);
        *s.handle.write().unwrap_or_else(|p| p.into_inner()) = Some(file);
        s.pinned.store(true, Ordering::Release);
        s
    }

    /// The open file (opened now if it is not).
    ///
    /// # Errors
    /// [`StorageError::Io`] if it cannot be opened.
    pub(crate) fn file(self: &Arc<Self>) -> Result<Arc<File>> {
        if let Some(f) = self
            .handle
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return Ok(f.clone());
        }
        let file = {
            let mut h = self.handle.write().unwrap_or_else(|p| p.into_inner());
            if let Some(f) = h.as_ref() {
                return Ok(f.clone());
            }
            let f = Arc::new(
                File::open(&self.path).map_err(StorageError::io("opening a log segment"))?,
            );
            *h = Some(f.clone());
            f
        };
        self.fds.opened.fetch_add(1, Ordering::Relaxed);
        self.fds.admit(self);
        Ok(file)
    }

    /// Keeps the file open from now on, whatever the cache says (a segment about
    /// to be unlinked: its listed readers need this handle).
    ///
    /// # Errors
    /// As [`Segment::file`].
    pub(crate) fn pin(self: &Arc<Self>) -> Result<()> {
        // Under the handle's lock, as `release` checks: an eviction racing this
        // either closed the file before (and it is opened here) or sees the pin.
        let mut h = self.handle.write().unwrap_or_else(|p| p.into_inner());
        self.pinned.store(true, Ordering::Release);
        if h.is_none() {
            let f = File::open(&self.path).map_err(StorageError::io("opening a log segment"))?;
            self.fds.opened.fetch_add(1, Ordering::Relaxed);
            *h = Some(Arc::new(f));
        }
        Ok(())
    }

    /// Lets the cache close the file (the active segment, once sealed).
    pub(crate) fn unpin(&self) {
        let mut h = self.handle.write().unwrap_or_else(|p| p.into_inner());
        self.pinned.store(false, Ordering::Release);
        *h = None;
    }

    /// Closes the file unless pinned (readers holding it keep it until they drop it).
    fn release(&self) {
        let mut h = self.handle.write().unwrap_or_else(|p| p.into_inner());
        if !self.pinned.load(Ordering::Acquire) {
            *h = None;
        }
    }

    /// Whether the file is open now.
    #[cfg(test)]
    pub(crate) fn is_open(&self) -> bool {
        self.handle
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}
