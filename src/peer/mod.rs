//! The peer service: what nodes ask each other (forwarded writes, replica writes,
//! hints, replica reads) and what operators ask of the cluster (leave, remove),
//! reachable only after the cluster-secret [`handshake`].

pub mod batch;
pub mod handshake;
pub mod pool;

use serde::{Deserialize, Serialize};

use crate::object::Context;
use crate::rpc::api::{ApiError, Blob, RequestOptions, SharedBlob};

pub use batch::Batches;
pub use pool::Peers;

/// A client write forwarded to a primary of its key, which coordinates it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteRequest {
    /// Register write (`None` = delete).
    Put {
        /// Key.
        key: Vec<u8>,
        /// Value (one byte string on the wire, see [`Blob`]).
        #[serde(with = "serde_bytes")]
        value: Option<Vec<u8>>,
        /// Client context.
        context: Option<Context>,
    },
    /// Counter increment.
    CounterAdd {
        /// Key.
        key: Vec<u8>,
        /// Amount.
        delta: i64,
    },
    /// Set update.
    SetUpdate {
        /// Key.
        key: Vec<u8>,
        /// Member.
        member: Vec<u8>,
        /// Add (true) or remove.
        add: bool,
    },
}

impl WriteRequest {
    /// The key written.
    pub fn key(&self) -> &[u8] {
        match self {
            WriteRequest::Put { key, .. }
            | WriteRequest::CounterAdd { key, .. }
            | WriteRequest::SetUpdate { key, .. } => key,
        }
    }
}

/// The answer to a coordinated write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteReply {
    /// New context of a register.
    Put(Context),
    /// Counter value after the add, as the coordinator sees it.
    Counter(i128),
    /// Whether the member was present (removals) or `true` (adds).
    Set(bool),
}

/// `(key, digest)` of every object of one segment.
pub type KeyDigests = Vec<(Vec<u8>, [u8; 32])>;
/// Keys with their encoded objects (`None`: absent).
pub type Fetched = Vec<(Vec<u8>, Option<Vec<u8>>)>;
/// One answer per item of a batch, in order. A reply may answer only a prefix of a
/// read batch (the rest did not fit its size budget; ask again).
pub type BatchReplies<T> = Vec<Result<T, ApiError>>;
/// Digests of keys (`None`: absent), the number of hints and states in flight the
/// node holds, and its ring epoch.
pub type HeldDigests = (Vec<Option<[u8; 32]>>, u64, String);

/// What nodes ask each other.
#[tarpc::service]
pub trait Peer {
    /// Coordinates a write this node is a primary for.
    async fn coordinate(
        request: WriteRequest,
        opts: RequestOptions,
    ) -> Result<WriteReply, ApiError>;
    /// Merges an object state into the local replica (durable per the sync policy).
    async fn replicate(key: Vec<u8>, object: SharedBlob) -> Result<(), ApiError>;
    /// Keeps an object state for `owner`, which was unreachable (sloppy quorum).
    async fn hint(owner: String, key: Vec<u8>, object: SharedBlob) -> Result<(), ApiError>;
    /// The local replica's encoded object of `key`.
    async fn read(key: Vec<u8>) -> Result<Option<Blob>, ApiError>;
    /// Anti-entropy: this node's ring epoch and the roots of `partitions`.
    async fn ae_roots(partitions: Vec<u32>) -> Result<(String, Vec<[u8; 32]>), ApiError>;
    /// Anti-entropy: the 16 child hashes of each `(level, index)` node of a partition.
    async fn ae_children(
        partition: u32,
        nodes: Vec<(u8, u32)>,
    ) -> Result<Vec<Vec<[u8; 32]>>, ApiError>;
    /// Anti-entropy: `(key, digest)` of every object in each segment of a partition.
    async fn ae_segments(partition: u32, segments: Vec<u16>) -> Result<Vec<KeyDigests>, ApiError>;
    /// Encoded objects of `keys`, in order, for a prefix of the keys that fits the
    /// reply size budget (the caller asks again for the rest).
    async fn fetch(keys: Vec<Vec<u8>>) -> Result<Fetched, ApiError>;
    /// Merges many object states into the local replica.
    async fn replicate_many(items: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), ApiError>;
    /// Reaping: digests of `keys` here (None = absent), and the hints this node holds.
    async fn digests(keys: Vec<Vec<u8>>) -> Result<HeldDigests, ApiError>;
    /// Reaping: removes each key whose object still has exactly this digest.
    async fn reap(items: Vec<(Vec<u8>, [u8; 32])>) -> Result<u64, ApiError>;
    /// Operator: this node leaves the cluster; returns its id.
    async fn leave() -> Result<String, ApiError>;
    /// Operator: remove a (dead) node from the cluster.
    async fn remove(node_id: String) -> Result<(), ApiError>;
    /// Operator: stop this node gracefully, as SIGTERM would (not a leave: no data
    /// moves). Returns its id.
    async fn drain() -> Result<String, ApiError>;
    /// Several [`Peer::replicate`]s that were ready together, each on its own: one
    /// answer per item, in order. (Last in the trait: the earlier methods keep
    /// their numbers on the wire.)
    async fn replicate_batch(
        items: Vec<(Vec<u8>, SharedBlob)>,
    ) -> Result<BatchReplies<()>, ApiError>;
    /// Several [`Peer::read`]s that were ready together: one answer per key, in
    /// order, for a prefix of the keys within the reply's size budget.
    async fn read_batch(keys: Vec<Vec<u8>>) -> Result<BatchReplies<Option<Blob>>, ApiError>;
}
