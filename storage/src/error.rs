//! Errors of the storage crate.

use std::path::PathBuf;

/// Everything that can go wrong in [`crate::Store`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// fjall refused an operation; `during` names what we were doing.
    #[error("storage engine error during {during}: {source}")]
    Engine {
        /// What the store was doing when fjall failed.
        during: &'static str,
        /// The underlying fjall error.
        source: fjall::Error,
    },
    /// The data directory is already opened by another process (or this one).
    #[error("data directory {path} is in use by another ringkv process")]
    Locked {
        /// The directory that is locked.
        path: PathBuf,
    },
    /// A persisted Merkle node did not have the expected shape.
    #[error(
        "corrupt Merkle node for partition {partition} level {level} index {index}: {len} bytes"
    )]
    CorruptNode {
        /// Partition of the node.
        partition: u32,
        /// Level of the node.
        level: u8,
        /// Index within the level.
        index: u16,
        /// Length found on disk.
        len: usize,
    },
    /// A persisted key in the objects keyspace is shorter than its fixed prefix.
    #[error("corrupt object key of {len} bytes")]
    CorruptKey {
        /// Length found on disk.
        len: usize,
    },
    /// A tree query named a node that does not exist.
    #[error("no tree node at level {level} index {index}")]
    NoSuchNode {
        /// Requested level (0 = root).
        level: u8,
        /// Requested index within the level.
        index: u32,
    },
}

impl StorageError {
    pub(crate) fn engine(during: &'static str) -> impl FnOnce(fjall::Error) -> Self {
        move |source| StorageError::Engine { during, source }
    }
}

/// Result alias of this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
