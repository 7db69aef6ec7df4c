//! Errors of the storage crate.

use std::path::PathBuf;

/// Everything that can go wrong in [`crate::Store`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A file operation failed; `during` names what the store was doing.
    #[error("storage I/O error during {during}: {source}")]
    Io {
        /// What the store was doing when the operation failed.
        during: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Bytes on disk are not the ones written: a checksum failed, or a well-formed
    /// record holds something this build cannot read.
    #[error("corrupt log segment {segment} at offset {offset}: {reason}")]
    Corrupt {
        /// Segment file id (the file is `{segment:08}.seg`).
        segment: u32,
        /// Byte offset of the bad value or record.
        offset: u64,
        /// What was wrong.
        reason: &'static str,
    },
    /// An earlier fsync failed, so what was written since may not be on disk; the
    /// store refuses writes and syncs until it is opened again (which recovers what
    /// the disk really holds).
    #[error("an earlier fsync failed; the store takes no writes until the node restarts")]
    Poisoned,
    /// The data directory holds another storage format (for example the fjall
    /// journals of ringkv before its own log): it is left untouched.
    #[error(
        "data directory {path} holds {found}, written by another storage engine (early ringkv builds used fjall); start with an empty directory"
    )]
    ForeignFormat {
        /// The directory.
        path: PathBuf,
        /// The file that gave it away.
        found: String,
    },
    /// The data directory holds the other engine's data: it is left untouched.
    #[error(
        "data directory {path} holds a {found} store; start with --storage {found}, or with an empty directory for --storage {wanted}"
    )]
    WrongBackend {
        /// The directory.
        path: PathBuf,
        /// The engine whose data it holds.
        found: &'static str,
        /// The engine asked for.
        wanted: &'static str,
    },
    /// fjall failed; `during` names what the store was doing.
    #[error("fjall error during {during}: {source}")]
    Engine {
        /// What the store was doing.
        during: &'static str,
        /// fjall's error.
        source: fjall::Error,
    },
    /// fjall found bytes on disk that are not the ones written (a block checksum
    /// failed, or a block does not decode): the value is treated as damaged.
    #[error("damaged fjall data during {during}: {detail}")]
    EngineDamage {
        /// What the store was doing.
        during: &'static str,
        /// fjall's description.
        detail: String,
    },
    /// The data directory is already opened by another process (or this one).
    #[error("data directory {path} is in use by another ringkv process")]
    Locked {
        /// The directory that is locked.
        path: PathBuf,
    },
    /// The node metadata file is damaged: the store refuses to open rather than
    /// let a counter that must never go back (dot reservations, epochs) roll back.
    #[error(
        "metadata file {path} is damaged ({reason}); restore it from a backup, or start this node with an empty data directory"
    )]
    CorruptMeta {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: &'static str,
    },
    /// Metadata grew past what the metadata file holds.
    #[error("node metadata would exceed 16 MiB")]
    MetaTooLarge,
    /// The store was closed (the node is shutting down).
    #[error("the store is closed")]
    Closed,
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
    /// Whether this says the bytes on disk are damaged (a checksum failed), as
    /// opposed to the disk failing: the value is dropped and repaired from a replica.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            StorageError::Corrupt { .. } | StorageError::EngineDamage { .. }
        )
    }

    pub(crate) fn engine(during: &'static str) -> impl FnOnce(fjall::Error) -> Self {
        move |source| {
            use fjall::Error as F;
            use fjall::LsmError as L;
            match source {
                F::Storage(
                    L::ChecksumMismatch { .. }
                    | L::Decompress(_)
                    | L::InvalidTag(_)
                    | L::InvalidTrailer
                    | L::InvalidHeader(_)
                    | L::Utf8(_),
                )
                | F::Decompress(_)
                | F::InvalidTrailer
                | F::InvalidTag(_) => StorageError::EngineDamage {
                    during,
                    detail: source.to_string(),
                },
                F::Poisoned => StorageError::Poisoned,
                source => StorageError::Engine { during, source },
            }
        }
    }

    pub(crate) fn io(during: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| StorageError::Io { during, source }
    }
}

/// Result alias of this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
