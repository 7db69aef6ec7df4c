//! ringkv storage: one store per node, on one of two engines behind one seam
//! ([`Backend`]): ringkv's own log (segment files and an in-memory key directory,
//! the Bitcask design; the default) or fjall's LSM tree, with keyspaces for
//! objects, Merkle leaves, hints and metadata.
//!
//! The crate is bytes in, bytes out. Callers hand it canonical object encodings; it
//! keeps, per partition, a hash tree over the digests of those bytes, updated in the
//! same batch as every write and persisted, so a restart never rescans the keys. It
//! knows nothing of networking, rings or object kinds.

mod backend;
pub mod disk;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod keys;
mod log;
mod lsm;
pub mod merkle;
mod meta;
mod priority;
mod store;
mod sync;
pub mod timing;
mod tree;

pub use backend::Backend;
pub use disk::{Disk, SimulatedDisk};
pub use error::{Result, StorageError};
pub use keys::{object_digest, segment_of};
pub use log::LogStats;
pub use merkle::{EMPTY, Hash, LEAVES};
pub use store::{Change, Driver, Store, StoreConfig, Updated};
pub use sync::SyncPolicy;
pub use timing::{LATENCY_BUCKETS, LatencySnapshot};
pub use tree::{CHECKPOINT_INTERVAL, TreeStats};
