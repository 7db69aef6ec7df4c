//! The client service: what any node answers to clients, and the types on the wire.

use serde::{Deserialize, Serialize};

use crate::object::{Context, Kind, ObjectError};
use crate::replica::{Limits, ReplicaError};

/// Per-request consistency options. `None` takes the node's configured default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestOptions {
    /// Replies needed for a read.
    pub r: Option<u8>,
    /// Acknowledgements needed for a write.
    pub w: Option<u8>,
    /// Primary replicas that must answer a read.
    pub pr: Option<u8>,
    /// Primary replicas that must acknowledge a write.
    pub pw: Option<u8>,
    /// Deadline for the whole request, in milliseconds.
    pub timeout_ms: Option<u32>,
}

/// Answer to a register read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetReply {
    /// Whether any live value exists.
    pub found: bool,
    /// Live siblings, in canonical order.
    #[serde(with = "byte_strings")]
    pub values: Vec<Vec<u8>>,
    /// Causal context to send with the next write of this key.
    pub context: Context,
}

/// What a client learns on connecting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// The node's id.
    pub node_id: String,
    /// ringkv version of the server.
    pub version: String,
    /// Limits the server enforces.
    pub limits: Limits,
}

/// Counters a node keeps about its own service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStats {
    /// Requests answered.
    pub requests: u64,
    /// Requests answered with an error.
    pub request_errors: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Connections refused because the limit was reached.
    pub connections_refused: u64,
    /// Connections closed because of a malformed or oversized frame.
    pub bad_frames: u64,
}

/// A node's self-description.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Node id.
    pub node_id: String,
    /// RPC listen address.
    pub address: String,
    /// ringkv version.
    pub version: String,
    /// Data directory.
    pub data_dir: String,
    /// Sync policy (`always`, `interval`, `none`).
    pub sync: String,
    /// Number of partitions.
    pub ring_size: u32,
    /// Start count of this data directory.
    pub generation: u64,
    /// Approximate number of objects stored.
    pub keys_approx: u64,
    /// Milliseconds since the node started.
    pub uptime_ms: u64,
    /// Limits in force.
    pub limits: Limits,
    /// Service counters.
    pub stats: ServiceStats,
    /// Storage figures.
    pub storage: StorageStatus,
    /// Cluster figures.
    pub cluster: ClusterStatus,
    /// Anti-entropy, handoff and reaping figures.
    pub repair: crate::repair::RepairStatus,
    /// What `/readyz` answers: the store takes writes, the node is an active member
    /// with a ring that sees itself alive, and it is not draining.
    pub ready: bool,
}

/// One member as a node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Node id.
    pub node_id: String,
    /// RPC address.
    pub address: String,
    /// Failure zone.
    pub zone: String,
    /// `joining`, `active`, `leaving` or `removed`.
    pub status: String,
    /// `alive`, `suspect`, `down` or `unknown`.
    pub liveness: String,
}

/// The cluster as a node sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Members, by node id.
    pub members: Vec<MemberInfo>,
    /// Epoch of the current ring (hex; empty without a ring).
    pub ring_epoch: String,
    /// Replicas per key and default quorums.
    pub n: u8,
    /// Default read quorum.
    pub r: u8,
    /// Default write quorum.
    pub w: u8,
    /// Hints waiting for their owners.
    pub hints_pending: u64,
    /// Bytes of those hints (one merged state per owner and key).
    pub hints_bytes: u64,
    /// Hints stored since start.
    pub hints_stored: u64,
    /// Hints delivered since start.
    pub hints_delivered: u64,
    /// Writes forwarded to a primary since start.
    pub forwarded: u64,
    /// Replicas repaired after reads since start.
    pub read_repairs: u64,
    /// Requests that failed for want of a quorum.
    pub quorum_failures: u64,
    /// Gossip datagrams received.
    pub gossip_in: u64,
    /// Gossip datagrams refused: not authenticated (wrong secret).
    pub gossip_rejected_auth: u64,
    /// Gossip datagrams refused: oversized.
    pub gossip_rejected_oversized: u64,
    /// Gossip datagrams refused: undecodable.
    pub gossip_rejected_malformed: u64,
    /// Peer connections refused at the handshake.
    pub peer_handshakes_refused: u64,
    /// Peer requests refused (from removed nodes, or operators' tools).
    pub peer_requests_refused: u64,
    /// Gossip datagrams refused: authentic but seen before (a replay) or older
    /// than what their sender has sent since.
    pub gossip_rejected_replay: u64,
    /// Earlier rings whose owners reads still ask (until their moved partitions
    /// are all handed off).
    pub earlier_rings: u64,
    /// Requests to peers that carried several replica writes or reads.
    pub peer_batches: u64,
    /// Replica writes and reads those batches carried.
    pub peer_batched_items: u64,
    /// Members dialled again at once when gossip saw them come back (restarted, or
    /// alive again) after dials to them had failed.
    pub peer_redials: u64,
}

/// `/v1/cluster/health`: the cluster as this node sees it, for alerting.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterHealth {
    /// This node.
    pub node_id: String,
    /// Members not removed.
    pub members: u64,
    /// Of those, seen alive.
    pub members_alive: u64,
    /// Members by id that are not alive.
    pub members_not_alive: Vec<String>,
    /// Partitions on the ring.
    pub partitions: u64,
    /// Partitions whose primaries are all alive.
    pub partitions_all_up: u64,
    /// Partitions with at least W primaries alive.
    pub partitions_write_quorum: u64,
    /// Partitions with at least R primaries alive.
    pub partitions_read_quorum: u64,
    /// Replicas per key, and the default quorums.
    pub n: u8,
    /// Default read quorum.
    pub r: u8,
    /// Default write quorum.
    pub w: u8,
    /// Hints this node keeps for others.
    pub hints_pending: u64,
    /// Seconds since the target waiting longest got its first waiting hint (an
    /// upper bound on the oldest hint's age).
    pub hints_oldest_seconds: u64,
    /// Partitions this node holds but no longer owns.
    pub handoffs_in_flight: u64,
    /// This node's ring epoch (empty without a ring).
    pub ring_epoch: String,
    /// Every alive peer answered anti-entropy's last root comparison with this
    /// node's ring epoch (peers not heard from yet count as disagreeing).
    pub ring_agreement: bool,
    /// Whether every partition has all its replicas up and no hints wait here.
    pub healthy: bool,
}

/// A partition this node holds but no longer owns, on its way to its owners.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    /// The partition.
    pub partition: u32,
    /// Its primaries now.
    pub to: Vec<String>,
    /// Keys still held here.
    pub keys_left: u64,
    /// Bytes of them (keys and states).
    pub bytes_left: u64,
}

/// Hints kept for one target.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HintsFor {
    /// The node they wait for (`None`: kept from before this node's start, target
    /// not counted).
    pub target: Option<String>,
    /// Hints waiting.
    pub pending: u64,
}

/// What `ringkv transfers` shows of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfers {
    /// The node.
    pub node_id: String,
    /// Partitions on their way out.
    pub handoffs_out: Vec<Handoff>,
    /// Partitions handed off since start.
    pub handoffs_done: u64,
    /// Keys anti-entropy and handoff moved (both ways) since start.
    pub keys_moved: u64,
    /// Bytes they sent since start.
    pub bytes_sent: u64,
    /// Bytes they received since start (handoffs and repairs coming in).
    pub bytes_received: u64,
    /// Hints by target.
    pub hints: Vec<HintsFor>,
    /// Hints waiting in all.
    pub hints_pending: u64,
    /// Their bytes.
    pub hints_bytes: u64,
}

impl RingInfo {
    /// Members whose status is active (the ones that own partitions).
    pub fn active_members(&self) -> usize {
        self.members.iter().filter(|m| m.status == "active").count()
    }

    /// The ring rebuilt from the active members (ownership is a pure function of
    /// them); `None` without active members or if it cannot be built.
    pub fn rebuild(&self) -> Option<crate::ring::Ring> {
        let members: Vec<crate::ring::Member> = self
            .members
            .iter()
            .filter(|m| m.status == "active")
            .map(|m| crate::ring::Member {
                id: m.node_id.clone(),
                zone: m.zone.clone(),
            })
            .collect();
        if members.is_empty() {
            return None;
        }
        crate::ring::Ring::build(&members, self.ring_size, usize::from(self.n)).ok()
    }
}

/// The ring as a node sees it: enough for a client to route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingInfo {
    /// Epoch (hex).
    pub epoch: String,
    /// Partitions.
    pub ring_size: u32,
    /// Replicas per key.
    pub n: u8,
    /// Members (all records, with liveness).
    pub members: Vec<MemberInfo>,
    /// Owner of each partition, by partition number (empty without a ring).
    pub owners: Vec<String>,
}

/// What the node's store looks like.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageStatus {
    /// The engine: `log` or `fjall`.
    pub backend: String,
    /// Bytes of the engine's files.
    pub disk_bytes: u64,
    /// Bytes the key directory still refers to (the rest awaits a merge); fjall
    /// cannot tell, and reports all its bytes.
    pub live_bytes: u64,
    /// Segment files of the log (read on the next open); fjall's tables and
    /// journals.
    pub segment_files: u64,
    /// Merges of the log (compactions of fjall) since start.
    pub merges: u64,
    /// Bytes of torn records cut off the last segment's tail when the store was opened.
    pub truncated_bytes: u64,
    /// Damaged stretches of segments skipped when the store was opened.
    pub skipped_records: u64,
    /// Bytes in them (left on disk, never read).
    pub skipped_bytes: u64,
    /// Whether the previous run ended with a clean close and recovery found no damage.
    pub opened_clean: bool,
    /// Values whose checksum failed at run time, dropped (and repaired from replicas).
    pub damaged_values_dropped: u64,
    /// Partitions whose hash tree came from a checkpoint since start.
    pub trees_from_checkpoint: u64,
    /// Partitions whose hash tree was recomputed from leaves after an unclean stop.
    pub trees_rebuilt_from_leaves: u64,
    /// An fsync failed: the store takes no writes until the node restarts (and the
    /// node reports not ready).
    pub poisoned: bool,
}

/// What one round did (answer to `ringkv repair`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundReport {
    /// Partitions whose roots were compared.
    pub compared: u64,
    /// Partitions whose roots differed.
    pub exchanges: u64,
    /// Keys repaired.
    pub keys_repaired: u64,
    /// Partitions handed off.
    pub handed_off: u64,
    /// Tombstones reaped.
    pub reaped: u64,
}

/// Errors a client can receive, with enough detail to act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApiError {
    /// Empty key.
    #[error("key must not be empty")]
    EmptyKey,
    /// Key over the limit.
    #[error("key of {size} bytes is over the limit of {limit} bytes")]
    KeyTooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Value or set member over the limit.
    #[error("value of {size} bytes is over the limit of {limit} bytes")]
    ValueTooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The object would grow past its limit.
    #[error(
        "object would grow to {size} bytes, over the limit of {limit}; resolve siblings or remove members first"
    )]
    ObjectTooLarge {
        /// The size it would have.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The key holds another kind of object.
    #[error("key holds a {stored}, not a {requested}")]
    WrongKind {
        /// What the key holds.
        stored: Kind,
        /// What the request needs.
        requested: Kind,
    },
    /// Too many siblings: read and write back with the context.
    #[error(
        "key has {count} siblings (limit {limit}): read it and write with its context to resolve them"
    )]
    TooManySiblings {
        /// Siblings the write would leave.
        count: u64,
        /// The limit.
        limit: u64,
    },
    /// A context the server cannot use.
    #[error("invalid context: {reason}")]
    InvalidContext {
        /// Why.
        reason: String,
    },
    /// Request options that make no sense (for example `r` above `n`).
    #[error("invalid request options: {reason}")]
    InvalidOptions {
        /// Why.
        reason: String,
    },
    /// Stored bytes that cannot be decoded (disk corruption or a newer format).
    #[error("stored object is unreadable: {reason}")]
    Corrupt {
        /// Why.
        reason: String,
    },
    /// The node's storage failed.
    #[error("storage failure: {reason}")]
    Storage {
        /// What failed.
        reason: String,
    },
    /// Too few replicas answered in time.
    #[error("{0}")]
    QuorumNotReached(crate::coordinator::quorum::QuorumNotReached),
    /// A membership operation that makes no sense (unknown node, removing oneself).
    #[error("membership: {reason}")]
    Membership {
        /// Why.
        reason: String,
    },
    /// The node is shutting down or overloaded.
    #[error("node unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// A counter increment refused because a replica's running total would wrap.
    #[error("{reason}")]
    CounterOverflow {
        /// Why.
        reason: String,
    },
    /// A forwarded write reached a node that is not a primary of its key in its own
    /// view (the ring is changing): nothing was applied; another primary may take it.
    #[error(
        "node {node} is not a primary of this key in its view of the ring; nothing was applied"
    )]
    NotPrimary {
        /// The node that refused.
        node: String,
    },
    /// The node is stopping (past its shutdown delay): nothing was applied, and
    /// another replica may take the request.
    #[error("node {node} is shutting down; nothing was applied")]
    ShuttingDown {
        /// The node that refused.
        node: String,
    },
    /// The connection's token does not allow the request: nothing was done.
    #[error("not authorized: {reason}")]
    NotAuthorized {
        /// Why (the token's name and role, and the role needed).
        reason: String,
    },
}

/// What kind of failure an [`ApiError`] is: the one classification the CLI's exit
/// codes, the request metrics and the coordinator's retry decisions share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request itself is wrong (too large, wrong kind, bad context or options,
    /// a membership change that makes no sense): sending it again cannot help.
    Invalid,
    /// Not done now, for want of replicas or because a node is stopping or not a
    /// primary: it may succeed later or elsewhere.
    Unavailable,
    /// A node's storage failed or holds bytes it cannot read.
    Failed,
    /// The caller's token does not allow it: another node would say the same.
    Denied,
}

impl ApiError {
    /// Its [`ErrorClass`].
    pub fn class(&self) -> ErrorClass {
        match self {
            ApiError::EmptyKey
            | ApiError::KeyTooLarge { .. }
            | ApiError::ValueTooLarge { .. }
            | ApiError::ObjectTooLarge { .. }
            | ApiError::WrongKind { .. }
            | ApiError::TooManySiblings { .. }
            | ApiError::InvalidContext { .. }
            | ApiError::InvalidOptions { .. }
            | ApiError::CounterOverflow { .. }
            | ApiError::Membership { .. } => ErrorClass::Invalid,
            ApiError::QuorumNotReached(_)
            | ApiError::Unavailable { .. }
            | ApiError::NotPrimary { .. }
            | ApiError::ShuttingDown { .. } => ErrorClass::Unavailable,
            ApiError::Corrupt { .. } | ApiError::Storage { .. } => ErrorClass::Failed,
            ApiError::NotAuthorized { .. } => ErrorClass::Denied,
        }
    }
}

impl From<ObjectError> for ApiError {
    fn from(e: ObjectError) -> Self {
        match e {
            ObjectError::WrongKind { stored, requested } => {
                ApiError::WrongKind { stored, requested }
            }
            ObjectError::TooManySiblings { count, limit } => ApiError::TooManySiblings {
                count: count as u64,
                limit: limit as u64,
            },
            ObjectError::InvalidContext { reason } => ApiError::InvalidContext { reason },
            ObjectError::CounterOverflow { .. } => ApiError::CounterOverflow {
                reason: e.to_string(),
            },
            ObjectError::Corrupt { .. }
            | ObjectError::UnsupportedVersion { .. }
            | ObjectError::Overflow
            | ObjectError::DotsExhausted { .. } => ApiError::Corrupt {
                reason: e.to_string(),
            },
        }
    }
}

impl From<ReplicaError> for ApiError {
    fn from(e: ReplicaError) -> Self {
        match e {
            ReplicaError::EmptyKey => ApiError::EmptyKey,
            ReplicaError::KeyTooLarge { size, limit } => ApiError::KeyTooLarge {
                size: size as u64,
                limit: limit as u64,
            },
            ReplicaError::ValueTooLarge { size, limit } => ApiError::ValueTooLarge {
                size: size as u64,
                limit: limit as u64,
            },
            ReplicaError::ObjectTooLarge { size, limit } => ApiError::ObjectTooLarge {
                size: size as u64,
                limit: limit as u64,
            },
            ReplicaError::Object(o) => o.into(),
            ReplicaError::Storage(s) => ApiError::Storage {
                reason: s.to_string(),
            },
        }
    }
}

/// The service every node offers to clients.
#[tarpc::service]
pub trait Kv {
    /// Identity and limits of the node.
    async fn hello() -> ServerInfo;
    /// Reads a register.
    async fn get(key: Vec<u8>, opts: RequestOptions) -> Result<GetReply, ApiError>;
    /// Writes a register value; returns the new context.
    async fn put(
        key: Vec<u8>,
        value: Blob,
        context: Option<Context>,
        opts: RequestOptions,
    ) -> Result<Context, ApiError>;
    /// Deletes a register (with the given context, or everything visible now).
    async fn delete(
        key: Vec<u8>,
        context: Option<Context>,
        opts: RequestOptions,
    ) -> Result<Context, ApiError>;
    /// Adds to a counter; returns the value after the add as this node sees it.
    async fn counter_add(key: Vec<u8>, delta: i64, opts: RequestOptions) -> Result<i128, ApiError>;
    /// Reads a counter (`None` if the key does not exist).
    async fn counter_get(key: Vec<u8>, opts: RequestOptions) -> Result<Option<i128>, ApiError>;
    /// Adds a member to a set.
    async fn set_add(key: Vec<u8>, member: Vec<u8>, opts: RequestOptions) -> Result<(), ApiError>;
    /// Removes a member from a set; says whether it was present.
    async fn set_remove(
        key: Vec<u8>,
        member: Vec<u8>,
        opts: RequestOptions,
    ) -> Result<bool, ApiError>;
    /// Members of a set (`None` if the key does not exist).
    async fn set_members(
        key: Vec<u8>,
        opts: RequestOptions,
    ) -> Result<Option<Vec<Vec<u8>>>, ApiError>;
    /// The node's status.
    async fn status() -> Status;
    /// Reads only this node's replica of a register (diagnostics and tests).
    async fn get_local(key: Vec<u8>) -> Result<GetReply, ApiError>;
    /// The ring and members as this node sees them.
    async fn ring() -> RingInfo;
    /// Root hashes of every partition's tree on this node, by partition (diagnostics).
    async fn partition_roots() -> Result<Vec<[u8; 32]>, ApiError>;
    /// Runs an anti-entropy round now (all partitions, or one) and reports it.
    async fn repair(partition: Option<u32>) -> Result<RoundReport, ApiError>;
    /// The cluster's health as this node sees it (`/v1/cluster/health`).
    async fn cluster_health() -> ClusterHealth;
    /// Handoffs and hints of this node.
    async fn transfers() -> Transfers;
    /// The node leaves the cluster (needs an admin token); returns its id.
    async fn leave() -> Result<String, ApiError>;
    /// Removes `node_id` from the cluster (needs an admin token).
    async fn remove(node_id: String) -> Result<(), ApiError>;
    /// The node stops gracefully, as on SIGTERM (needs an admin token); returns its id.
    async fn drain() -> Result<String, ApiError>;
}

/// Bytes that travel as one byte string: postcard writes the length, then the
/// bytes, which is exactly how it writes a `Vec<u8>`, but without serde's call per
/// byte (a 1 KB value cost a thousand calls to encode and as many to decode).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Blob(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// A [`Blob`] that several requests share without copies: the coordinator encodes a
/// written object once and every replica's request refers to the same bytes. On
/// the wire it is exactly a [`Blob`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedBlob(pub std::sync::Arc<[u8]>);

impl Serialize for SharedBlob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for SharedBlob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        Ok(SharedBlob(bytes.into_vec().into()))
    }
}

/// A list of byte strings as a sequence of postcard byte strings: the same bytes as
/// a `Vec<Vec<u8>>`, without serde's call per byte.
mod byte_strings {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|b| serde_bytes::Bytes::new(b)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let bufs = Vec::<serde_bytes::ByteBuf>::deserialize(d)?;
        Ok(bufs
            .into_iter()
            .map(serde_bytes::ByteBuf::into_vec)
            .collect())
    }

    #[cfg(test)]
    mod tests {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Fast(#[serde(with = "super")] Vec<Vec<u8>>);

        #[test]
        fn same_bytes_as_a_plain_list() {
            let v = vec![vec![1u8, 2, 3], vec![], vec![0xff; 200]];
            let plain = postcard::to_allocvec(&v).expect("ser");
            let fast = postcard::to_allocvec(&Fast(v.clone())).expect("ser");
            assert_eq!(plain, fast);
            let back: Fast = postcard::from_bytes(&plain).expect("de");
            assert_eq!(back.0, v);
            let blob = postcard::to_allocvec(&super::super::Blob(v[2].clone())).expect("ser");
            assert_eq!(blob, postcard::to_allocvec(&v[2]).expect("ser"));
        }
    }
}
