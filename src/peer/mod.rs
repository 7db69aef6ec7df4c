//! The peer service: what nodes ask each other (forwarded writes, replica writes,
//! hints, replica reads), reachable only after the cluster-secret [`handshake`].

pub mod handshake;
pub mod pool;

use serde::{Deserialize, Serialize};

use crate::object::Context;
use crate::rpc::api::{ApiError, RequestOptions};

pub use pool::Peers;

/// A client write forwarded to a primary of its key, which coordinates it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteRequest {
    /// Register write (`None` = delete).
    Put {
        /// Key.
        key: Vec<u8>,
        /// Value.
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

/// What nodes ask each other.
#[tarpc::service]
pub trait Peer {
    /// Coordinates a write this node is a primary for.
    async fn coordinate(
        request: WriteRequest,
        opts: RequestOptions,
    ) -> Result<WriteReply, ApiError>;
    /// Merges an object state into the local replica (durable per the sync policy).
    async fn replicate(key: Vec<u8>, object: Vec<u8>) -> Result<(), ApiError>;
    /// Keeps an object state for `owner`, which was unreachable (sloppy quorum).
    async fn hint(owner: String, key: Vec<u8>, object: Vec<u8>) -> Result<(), ApiError>;
    /// The local replica's encoded object of `key`.
    async fn read(key: Vec<u8>) -> Result<Option<Vec<u8>>, ApiError>;
}
