//! Accepts client connections and serves [`Kv`] on each, within limits.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::{StreamExt, TryStreamExt};
use tarpc::context;
use tarpc::server::{BaseChannel, Channel};
use tokio::sync::Semaphore;

use super::api::{
    ApiError, Blob, GetReply, Kv, RequestOptions, RingInfo, ServerInfo, SharedBlob, Status,
};
use tokio_util::sync::CancellationToken;

use super::guard::{FrameBudget, Guarded, ReadLimits};
use crate::auth::preamble::{self, Verdict};
use crate::auth::{Access, Refusal, Role};
use crate::cluster::shell::Command;
use crate::net::{Listener, Network, Stream};
use crate::node::requests::{Op, Outcome, ReplicaOp};
use crate::node::{Node, NodeError, SharedNode};
use crate::object::Context;
use crate::peer::batch::{BATCH_BYTES, MAX_BATCH_ITEMS};
use crate::peer::{BatchReplies, Peer, WriteReply, WriteRequest, handshake};

/// The tarpc service handle: one clone per request.
#[derive(Clone)]
pub struct KvServer {
    node: SharedNode,
    /// What the connection's token allows.
    access: Arc<Access>,
}

/// The role each client operation needs.
pub(crate) fn needed(op: Op) -> Role {
    match op {
        Op::Get | Op::CounterGet | Op::SetMembers | Op::GetLocal => Role::Read,
        Op::Put | Op::Delete | Op::CounterAdd | Op::SetAdd | Op::SetRemove => Role::Write,
    }
}

impl KvServer {
    /// A handle for requests that arrive another way (the HTTP API), with what
    /// their token allows.
    pub fn new(node: SharedNode, access: Access) -> KvServer {
        KvServer {
            node,
            access: Arc::new(access),
        }
    }

    /// Refuses what the connection's token does not allow, before anything runs.
    fn allow(&self, needed: Role, what: &str) -> Result<(), ApiError> {
        self.current()?
            .allows(needed, what)
            .map_err(|reason| self.denied(reason))
    }

    /// The connection's access under the auth file in force now.
    fn current(&self) -> Result<Access, ApiError> {
        match &self.node.config().auth {
            Some(keyring) => keyring
                .recheck(&self.access)
                .map_err(|reason| ApiError::NotAuthorized { reason }),
            None => Ok((*self.access).clone()),
        }
    }

    fn denied(&self, reason: String) -> ApiError {
        if let Some(keyring) = &self.node.config().auth {
            keyring.count(Refusal::Role);
        }
        tracing::debug!(%reason, "request refused");
        ApiError::NotAuthorized { reason }
    }

    /// Runs a client request: refused once the node is closing (nothing applied, so
    /// the client may send it to another replica), counted in flight while it
    /// runs (a drain waits for it), timed by operation and outcome.
    async fn track<T>(
        &self,
        op: Op,
        request: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        if let Err(e) = self.allow(needed(op), op.label()) {
            return self.count(Err(e));
        }
        let Some(_running) = self.node.lifecycle.enter() else {
            return Err(ApiError::ShuttingDown {
                node: self.node.node_id().to_string(),
            });
        };
        let started = tokio::time::Instant::now();
        let r = request.await;
        self.node
            .requests
            .observe(op, Outcome::of(&r), started.elapsed());
        self.count(r)
    }

    fn count<T>(&self, r: Result<T, ApiError>) -> Result<T, ApiError> {
        self.node.stats.requests.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = &r {
            self.node
                .stats
                .request_errors
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%error, "request refused");
        }
        r
    }
}

impl Kv for KvServer {
    async fn hello(self, _: context::Context) -> ServerInfo {
        self.node.info()
    }

    async fn get(
        self,
        _: context::Context,
        key: Vec<u8>,
        opts: RequestOptions,
    ) -> Result<GetReply, ApiError> {
        self.track(Op::Get, async {
            self.node.coordinator().get(key, opts).await
        })
        .await
    }

    async fn put(
        self,
        _: context::Context,
        key: Vec<u8>,
        value: Blob,
        context: Option<Context>,
        opts: RequestOptions,
    ) -> Result<Context, ApiError> {
        self.track(Op::Put, async {
            self.node
                .coordinator()
                .put(key, Some(value.0), context, opts)
                .await
        })
        .await
    }

    async fn delete(
        self,
        _: context::Context,
        key: Vec<u8>,
        context: Option<Context>,
        opts: RequestOptions,
    ) -> Result<Context, ApiError> {
        self.track(Op::Delete, async {
            self.node.coordinator().put(key, None, context, opts).await
        })
        .await
    }

    async fn counter_add(
        self,
        _: context::Context,
        key: Vec<u8>,
        delta: i64,
        opts: RequestOptions,
    ) -> Result<i128, ApiError> {
        self.track(Op::CounterAdd, async {
            self.node.coordinator().counter_add(key, delta, opts).await
        })
        .await
    }

    async fn counter_get(
        self,
        _: context::Context,
        key: Vec<u8>,
        opts: RequestOptions,
    ) -> Result<Option<i128>, ApiError> {
        self.track(Op::CounterGet, async {
            self.node.coordinator().counter_get(key, opts).await
        })
        .await
    }

    async fn set_add(
        self,
        _: context::Context,
        key: Vec<u8>,
        member: Vec<u8>,
        opts: RequestOptions,
    ) -> Result<(), ApiError> {
        self.track(Op::SetAdd, async {
            self.node
                .coordinator()
                .set_update(key, member, true, opts)
                .await
                .map(|_| ())
        })
        .await
    }

    async fn set_remove(
        self,
        _: context::Context,
        key: Vec<u8>,
        member: Vec<u8>,
        opts: RequestOptions,
    ) -> Result<bool, ApiError> {
        self.track(Op::SetRemove, async {
            self.node
                .coordinator()
                .set_update(key, member, false, opts)
                .await
        })
        .await
    }

    async fn set_members(
        self,
        _: context::Context,
        key: Vec<u8>,
        opts: RequestOptions,
    ) -> Result<Option<Vec<Vec<u8>>>, ApiError> {
        self.track(Op::SetMembers, async {
            self.node.coordinator().set_members(key, opts).await
        })
        .await
    }

    async fn status(self, _: context::Context) -> Status {
        self.node.status()
    }

    async fn get_local(self, _: context::Context, key: Vec<u8>) -> Result<GetReply, ApiError> {
        self.track(Op::GetLocal, async {
            self.node.coordinator().get_local(key).await
        })
        .await
    }

    async fn ring(self, _: context::Context) -> RingInfo {
        self.node.ring()
    }

    async fn cluster_health(self, _: context::Context) -> super::api::ClusterHealth {
        self.node.cluster_health()
    }

    async fn transfers(self, _: context::Context) -> super::api::Transfers {
        let node = self.node.clone();
        // Scans partitions: off the runtime's workers, and one at a time, so
        // clients asking again and again queue instead of scanning in parallel.
        let _one = node.transfers_lock.lock().await;
        let scanning = node.clone();
        tokio::task::spawn_blocking(move || scanning.transfers())
            .await
            .unwrap_or_default()
    }

    async fn partition_roots(self, _: context::Context) -> Result<Vec<[u8; 32]>, ApiError> {
        self.allow(Role::Read, "partition roots")?;
        let c = self.node.coordinator();
        let all: Vec<u32> = (0..c.replica().ring_size()).collect();
        crate::repair::local::roots(c, &all).map(|(_, roots)| roots)
    }

    async fn repair(
        self,
        _: context::Context,
        partition: Option<u32>,
    ) -> Result<super::api::RoundReport, ApiError> {
        self.allow(Role::Admin, "repair")?;
        self.node
            .repair()
            .run_now(partition)
            .await
            .map_err(|reason| ApiError::Unavailable { reason })
    }

    async fn leave(self, _: context::Context) -> Result<String, ApiError> {
        self.current()?
            .allows_membership("leave")
            .map_err(|r| self.denied(r))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        membership(self.node.cluster().command(Command::Leave(tx)).await, rx).await?;
        Ok(self.node.node_id().to_string())
    }

    async fn remove(self, _: context::Context, node_id: String) -> Result<(), ApiError> {
        self.current()?
            .allows_membership("remove")
            .map_err(|r| self.denied(r))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let command = Command::Remove(node_id, tx);
        membership(self.node.cluster().command(command).await, rx).await
    }

    async fn drain(self, _: context::Context) -> Result<String, ApiError> {
        self.current()?
            .allows_membership("drain")
            .map_err(|r| self.denied(r))?;
        self.node.request_stop();
        Ok(self.node.node_id().to_string())
    }
}

async fn membership(
    sent: Result<(), String>,
    rx: tokio::sync::oneshot::Receiver<Result<(), String>>,
) -> Result<(), ApiError> {
    sent.map_err(|reason| ApiError::Unavailable { reason })?;
    match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(reason)) => Err(ApiError::Membership { reason }),
        Err(_) => Err(ApiError::Unavailable {
            reason: "membership has stopped".into(),
        }),
    }
}

/// The peer service handle: what other nodes may ask once the handshake passed.
#[derive(Clone)]
pub struct PeerServer {
    node: SharedNode,
    /// The node id the other side proved in the handshake (empty: an operator's tool).
    peer: std::sync::Arc<str>,
}

impl PeerServer {
    /// Refuses replica traffic that must not be taken: from an operator's tool (it
    /// may only change membership), from a node an operator removed (its data was
    /// declared lost, review A9: it must not come back through anti-entropy,
    /// handoff or hints), or to this node if it was removed (a coordinator that does
    /// not know yet must not count it toward a quorum).
    fn admit(&self) -> Result<(), ApiError> {
        let refused = self.refusal();
        if refused.is_err() {
            self.node
                .stats
                .peer_requests_refused
                .fetch_add(1, Ordering::Relaxed);
        }
        refused
    }

    fn refusal(&self) -> Result<(), ApiError> {
        if self.node.cluster().is_removed() {
            return Err(ApiError::Membership {
                reason: format!(
                    "node {} was removed from the cluster and takes no replica traffic",
                    self.node.node_id()
                ),
            });
        }
        if self.peer.is_empty() {
            return Err(ApiError::Membership {
                reason: "a connection that names no node may only ask for membership changes"
                    .into(),
            });
        }
        if self.node.cluster().view().is_removed(&self.peer) {
            return Err(ApiError::Membership {
                reason: format!(
                    "node {} was removed from the cluster; its requests are refused",
                    self.peer
                ),
            });
        }
        Ok(())
    }
}

impl Peer for PeerServer {
    async fn coordinate(
        self,
        _: context::Context,
        request: WriteRequest,
        opts: RequestOptions,
    ) -> Result<WriteReply, ApiError> {
        if self.node.cluster().is_removed() {
            // Nothing applied: the forwarder, whose view still lists this node as a
            // primary, tries the next one.
            return Err(ApiError::NotPrimary {
                node: self.node.node_id().to_string(),
            });
        }
        self.admit()?;
        let Some(_running) = self.node.lifecycle.enter() else {
            // Nothing applied: the forwarder tries the next primary.
            return Err(ApiError::ShuttingDown {
                node: self.node.node_id().to_string(),
            });
        };
        self.node.coordinator().write(request, opts, true).await
    }

    async fn replicate(
        self,
        _: context::Context,
        key: Vec<u8>,
        object: SharedBlob,
    ) -> Result<(), ApiError> {
        self.admit()?;
        let started = tokio::time::Instant::now();
        let r = self.node.coordinator().replicate(key, &object.0).await;
        self.node
            .requests
            .observe_replica(ReplicaOp::Write, started.elapsed());
        r
    }

    async fn hint(
        self,
        _: context::Context,
        owner: String,
        key: Vec<u8>,
        object: SharedBlob,
    ) -> Result<(), ApiError> {
        self.admit()?;
        self.node
            .coordinator()
            .store_hint(owner, key, object.0.to_vec())
            .await
    }

    async fn read(self, _: context::Context, key: Vec<u8>) -> Result<Option<Blob>, ApiError> {
        self.admit()?;
        let started = tokio::time::Instant::now();
        let bytes = self.node.coordinator().read_local_bytes(key).await;
        self.node
            .requests
            .observe_replica(ReplicaOp::Read, started.elapsed());
        Ok(bytes?.map(Blob))
    }

    async fn ae_roots(
        self,
        _: context::Context,
        partitions: Vec<u32>,
    ) -> Result<(String, Vec<[u8; 32]>), ApiError> {
        self.admit()?;
        crate::repair::local::roots(self.node.coordinator(), &partitions)
    }

    async fn ae_children(
        self,
        _: context::Context,
        partition: u32,
        nodes: Vec<(u8, u32)>,
    ) -> Result<Vec<Vec<[u8; 32]>>, ApiError> {
        self.admit()?;
        crate::repair::local::children(self.node.coordinator(), partition, &nodes)
    }

    async fn ae_segments(
        self,
        _: context::Context,
        partition: u32,
        segments: Vec<u16>,
    ) -> Result<Vec<crate::peer::KeyDigests>, ApiError> {
        self.admit()?;
        crate::repair::local::segments(self.node.coordinator(), partition, &segments)
    }

    async fn fetch(
        self,
        _: context::Context,
        keys: Vec<Vec<u8>>,
    ) -> Result<crate::peer::Fetched, ApiError> {
        self.admit()?;
        crate::repair::local::fetch(self.node.coordinator(), keys)
    }

    async fn replicate_many(
        self,
        _: context::Context,
        items: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), ApiError> {
        self.admit()?;
        if items.len() > crate::repair::local::MAX_KEYS {
            return Err(ApiError::InvalidOptions {
                reason: "too many objects in one request".into(),
            });
        }
        for (key, object) in items {
            self.node.coordinator().replicate(key, &object).await?;
        }
        // Handoff drops the giver's copy once this answer arrives: make it durable.
        self.node.coordinator().sync_store().await
    }

    async fn digests(
        self,
        _: context::Context,
        keys: Vec<Vec<u8>>,
    ) -> Result<crate::peer::HeldDigests, ApiError> {
        self.admit()?;
        crate::repair::local::digests(self.node.coordinator(), &keys).await
    }

    async fn reap(
        self,
        _: context::Context,
        items: Vec<(Vec<u8>, [u8; 32])>,
    ) -> Result<u64, ApiError> {
        self.admit()?;
        let n = crate::repair::local::reap(self.node.coordinator(), &items)?;
        self.node.repair().count_reaped(n);
        Ok(n)
    }

    async fn leave(self, _: context::Context) -> Result<String, ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        membership(self.node.cluster().command(Command::Leave(tx)).await, rx).await?;
        Ok(self.node.node_id().to_string())
    }

    async fn drain(self, _: context::Context) -> Result<String, ApiError> {
        self.node.request_stop();
        Ok(self.node.node_id().to_string())
    }

    async fn remove(self, _: context::Context, node_id: String) -> Result<(), ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        membership(
            self.node
                .cluster()
                .command(Command::Remove(node_id, tx))
                .await,
            rx,
        )
        .await
    }

    async fn replicate_batch(
        self,
        _: context::Context,
        items: Vec<(Vec<u8>, SharedBlob)>,
    ) -> Result<BatchReplies<()>, ApiError> {
        self.admit()?;
        if items.len() > MAX_BATCH_ITEMS {
            return Err(ApiError::InvalidOptions {
                reason: format!("more than {MAX_BATCH_ITEMS} items in one batch"),
            });
        }
        let (coordinator, requests) = (self.node.coordinator(), &self.node.requests);
        // Side by side: under `--sync always` each waits for the fsync that covers
        // it, and one fsync covers them all.
        let each = items.into_iter().map(|(key, object)| async move {
            let started = tokio::time::Instant::now();
            let r = coordinator.replicate(key, &object.0).await;
            requests.observe_replica(ReplicaOp::Write, started.elapsed());
            r
        });
        Ok(futures::future::join_all(each).await)
    }

    async fn read_batch(
        self,
        _: context::Context,
        keys: Vec<Vec<u8>>,
    ) -> Result<BatchReplies<Option<Blob>>, ApiError> {
        self.admit()?;
        if keys.len() > MAX_BATCH_ITEMS {
            return Err(ApiError::InvalidOptions {
                reason: format!("more than {MAX_BATCH_ITEMS} keys in one batch"),
            });
        }
        let coordinator = self.node.coordinator();
        // The answer stays well within a frame; what is left out is asked again.
        let budget = (self.node.config().limits.frame_bytes() / 4).min(BATCH_BYTES);
        let mut out = Vec::with_capacity(keys.len());
        let mut bytes = 0usize;
        for key in keys {
            let started = tokio::time::Instant::now();
            let r = coordinator.read_local_bytes(key).await;
            self.node
                .requests
                .observe_replica(ReplicaOp::Read, started.elapsed());
            let size = r.as_ref().map_or(0, |b| b.as_ref().map_or(0, Vec::len));
            if !out.is_empty() && bytes + size > budget {
                break;
            }
            bytes += size;
            out.push(r.map(|b| b.map(Blob)));
        }
        Ok(out)
    }
}

/// Binds the node's listen address.
///
/// # Errors
/// [`NodeError::Bind`] if the address is taken or not local.
pub async fn bind<N: Network>(net: &N, node: &Node) -> Result<N::Listener, NodeError> {
    let addr = node.config().listen;
    net.bind(addr)
        .await
        .map_err(|source| NodeError::Bind { addr, source })
}

/// Peer connections served at once (one per member and direction, plus tools).
pub const MAX_PEER_CONNECTIONS: usize = ringkv_gossip::membership::MAX_MEMBERS;

/// The connection slots of one listener. A new connection is always taken, in
/// `unidentified`, until its first bytes (and TLS, and a token or the peer
/// handshake) say what it is, within [`FIRST_BYTES_TIMEOUT`] and
/// [`OPENING_TIMEOUT`]; when that is full, the oldest unidentified connection is
/// closed to make room, so a flood of silent connections delays others by their
/// handshake's few milliseconds instead of locking them out. An identified
/// connection holds one of `clients` or, once it proved the cluster key, of
/// `peers`: anyone who can reach the port can fill the client slots (of a node
/// without an auth file), but never the peers' (review A6).
#[derive(Clone)]
struct Slots {
    unidentified: Arc<Unidentified>,
    clients: Arc<Semaphore>,
    peers: Arc<Semaphore>,
    client_frames: Arc<FrameBudget>,
    peer_frames: Arc<FrameBudget>,
}

/// Connections not identified yet, oldest first, each with the token that closes it.
struct Unidentified {
    cap: usize,
    queue: std::sync::Mutex<std::collections::VecDeque<(u64, CancellationToken)>>,
    next: std::sync::atomic::AtomicU64,
}

/// A connection's place among the unidentified; leaves when dropped.
struct Place {
    owner: Arc<Unidentified>,
    id: u64,
}

impl Unidentified {
    /// A place for a new connection, and its closing token; closes the oldest
    /// (returns true) if every place is taken.
    fn enter(self: &Arc<Self>) -> (Place, CancellationToken, bool) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut q = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let evicted = q.len() >= self.cap;
        if evicted && let Some((_, oldest)) = q.pop_front() {
            oldest.cancel();
        }
        q.push_back((id, token.clone()));
        let place = Place {
            owner: self.clone(),
            id,
        };
        (place, token, evicted)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut q = self
            .owner
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(i) = q.iter().position(|(id, _)| *id == self.id) {
            q.remove(i);
        }
    }
}

/// Bytes of large frames being received at once, per kind of connection.
pub const FRAME_BUDGET_BYTES: usize = 256 << 20;
/// Longest a client connection may send nothing (clients redial after less,
/// see [`crate::client`]).
pub const CLIENT_IDLE: std::time::Duration = std::time::Duration::from_secs(600);
/// Longest a peer connection may send nothing (the pool dials again on use).
pub const PEER_IDLE: std::time::Duration = std::time::Duration::from_secs(600);
/// Longest one frame may take from its first byte to its last.
pub const SLOW_FRAME: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves clients on `listener` until `shutdown` completes.
///
/// Client connections beyond `max_connections` are closed at once, and so are peer
/// connections beyond [`MAX_PEER_CONNECTIONS`]: each kind has its own slots. Each
/// connection carries at most `max_in_flight_per_connection` requests; a malformed
/// or oversized frame closes only its own connection.
pub async fn serve<L: Listener>(
    mut listener: L,
    node: SharedNode,
    shutdown: impl Future<Output = ()>,
) {
    let max = node.config().max_connections;
    let slots = Slots {
        unidentified: Arc::new(Unidentified {
            cap: max + MAX_PEER_CONNECTIONS,
            queue: std::sync::Mutex::new(std::collections::VecDeque::new()),
            next: std::sync::atomic::AtomicU64::new(0),
        }),
        clients: Arc::new(Semaphore::new(max)),
        peers: Arc::new(Semaphore::new(MAX_PEER_CONNECTIONS)),
        client_frames: FrameBudget::new(FRAME_BUDGET_BYTES),
        peer_frames: FrameBudget::new(FRAME_BUDGET_BYTES),
    };
    let per_conn = PerConnection {
        max_frame: node.config().limits.frame_bytes(),
        in_flight: node.config().max_in_flight_per_connection,
        write_per_frame: listener.write_per_frame(),
    };
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(error) => {
                // Typically EMFILE; back off briefly instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (place, closing, evicted) = slots.unidentified.enter();
        if evicted {
            node.stats
                .connections_evicted
                .fetch_add(1, Ordering::Relaxed);
        }
        let node = node.clone();
        let slots = slots.clone();
        tokio::spawn(async move {
            node.stats.connections_open.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                biased;
                () = closing.cancelled() => {}
                () = connection(stream, peer, node.clone(), per_conn, slots, place) => {}
            }
            node.stats.connections_open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// What every connection of a listener is served with.
#[derive(Clone, Copy)]
struct PerConnection {
    max_frame: usize,
    in_flight: usize,
    write_per_frame: bool,
}

/// Longest a new connection may stay silent before its first bytes.
const FIRST_BYTES_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest a TLS handshake, or the rest of a client preamble, may take.
const OPENING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn refuse(node: &Node, peer: std::net::SocketAddr, kind: &str) {
    node.stats
        .connections_refused
        .fetch_add(1, Ordering::Relaxed);
    tracing::warn!(%peer, kind, "connection limit reached; closing new connection");
}

/// The first bytes of a connection, read within `limit`.
async fn first_bytes<S: Stream, const K: usize>(
    stream: &mut S,
    limit: std::time::Duration,
) -> Option<[u8; K]> {
    use tokio::io::AsyncReadExt;
    let mut first = [0u8; K];
    match tokio::time::timeout(limit, stream.read_exact(&mut first)).await {
        Ok(Ok(_)) => Some(first),
        Ok(Err(_)) | Err(_) => None,
    }
}

async fn connection<S: Stream>(
    mut stream: S,
    peer: std::net::SocketAddr,
    node: SharedNode,
    per_conn: PerConnection,
    slots: Slots,
    unidentified: Place,
) {
    let Some(tls) = node.config().tls.clone() else {
        identify(stream, peer, node, per_conn, slots, unidentified, false).await;
        return;
    };
    let Some([byte]) = first_bytes::<_, 1>(&mut stream, FIRST_BYTES_TIMEOUT).await else {
        return;
    };
    let stream = Prefixed::new(&[byte], stream);
    if byte != crate::tls::HANDSHAKE_RECORD {
        plaintext_on_tls(stream, peer, &node).await;
        return;
    }
    let accepted = tokio::time::timeout(OPENING_TIMEOUT, tls.acceptor().accept(stream)).await;
    let secured = match accepted {
        Ok(Ok(s)) => s,
        failed => {
            let error = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".to_string(),
            };
            node.stats.tls_refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, %error, "TLS handshake failed");
            return;
        }
    };
    let certified = secured.get_ref().1.peer_certificates().is_some();
    let secured = CloseIsEof(secured);
    identify(
        secured,
        peer,
        node,
        per_conn,
        slots,
        unidentified,
        certified,
    )
    .await;
}

/// A connection in the clear to a node that serves TLS only: a client's preamble
/// is answered with a refusal it can print, anything else is closed.
async fn plaintext_on_tls<S: Stream>(mut stream: S, peer: std::net::SocketAddr, node: &Node) {
    node.stats.tls_refused.fetch_add(1, Ordering::Relaxed);
    tracing::info!(%peer, "plaintext connection to a TLS node refused");
    if first_bytes::<_, 4>(&mut stream, FIRST_BYTES_TIMEOUT).await == Some(preamble::MAGIC) {
        let reason = "this node takes TLS connections only: give --tls-ca FILE (or RINGKV_TLS_CA)";
        let _ = tokio::time::timeout(OPENING_TIMEOUT, async {
            preamble::receive(&mut stream).await?;
            preamble::answer(&mut stream, &Verdict::Refused(reason.into())).await
        })
        .await;
    }
}

/// Tells a peer from a client by the first bytes (inside TLS, if any), admits it
/// and serves it. `certified`: TLS showed a client certificate of the CA.
async fn identify<S: Stream>(
    mut stream: S,
    peer: std::net::SocketAddr,
    node: SharedNode,
    per_conn: PerConnection,
    slots: Slots,
    unidentified: Place,
    certified: bool,
) {
    let Some(first) = first_bytes::<_, 4>(&mut stream, FIRST_BYTES_TIMEOUT).await else {
        return;
    };
    if first == handshake::MAGIC {
        if node.config().tls.is_some() && !certified {
            node.stats
                .peer_handshakes_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "peer connection without a certificate of the cluster's CA refused");
            return;
        }
        let key = node.config().cluster.key.clone();
        let view = node.cluster().view();
        let admitted =
            handshake::accept(&mut stream, &key, &view.self_id, |id| !view.is_removed(id)).await;
        drop(view);
        let id = match admitted {
            Ok(id) => id,
            Err(error) => {
                node.stats
                    .peer_handshakes_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, %error, "peer connection refused");
                return;
            }
        };
        let Ok(_slot) = slots.peers.try_acquire_owned() else {
            refuse(&node, peer, "peer");
            return;
        };
        drop(unidentified);
        let limits = ReadLimits {
            idle: PEER_IDLE,
            slow_frame: SLOW_FRAME,
            max_frame: per_conn.max_frame,
        };
        let stream = Guarded::new(stream, limits, slots.peer_frames.clone());
        let transport = counted(stream, per_conn, node.clone(), peer);
        let server = PeerServer {
            node,
            peer: id.into(),
        };
        BaseChannel::with_defaults(transport)
            .max_concurrent_requests(per_conn.in_flight)
            .execute(server.serve())
            .for_each(run_request)
            .await;
        return;
    }
    let access = if first == preamble::MAGIC {
        match tokio::time::timeout(OPENING_TIMEOUT, admit_client(&mut stream, &node)).await {
            Ok(Some(access)) => access,
            Ok(None) | Err(_) => return,
        }
    } else if first[0] == crate::tls::HANDSHAKE_RECORD && first[1] == 3 {
        // A TLS ClientHello (record type 22, version 3.x) to a node without TLS.
        node.stats.tls_refused.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%peer, "TLS connection to a node without TLS closed");
        return;
    } else if let Some(keyring) = &node.config().auth {
        // An RPC frame straight away: a client without the preamble cannot show a
        // token, and cannot be told why it is refused.
        keyring.count(Refusal::Missing);
        tracing::info!(%peer, "client connection without a token refused");
        return;
    } else {
        Access::Open
    };
    let Ok(_slot) = slots.clients.try_acquire_owned() else {
        refuse(&node, peer, "client");
        return;
    };
    drop(unidentified);
    let server = KvServer {
        node: node.clone(),
        access: Arc::new(access),
    };
    let limits = ReadLimits {
        idle: CLIENT_IDLE,
        slow_frame: SLOW_FRAME,
        max_frame: per_conn.max_frame,
    };
    let budget = slots.client_frames.clone();
    if first == preamble::MAGIC {
        let stream = Guarded::new(stream, limits, budget);
        serve_kv(counted(stream, per_conn, node, peer), server, per_conn).await;
    } else {
        let stream = Guarded::new(Prefixed::new(&first, stream), limits, budget);
        serve_kv(counted(stream, per_conn, node, peer), server, per_conn).await;
    }
}

async fn serve_kv(
    transport: impl tarpc::Transport<
        tarpc::Response<super::api::KvResponse>,
        tarpc::ClientMessage<super::api::KvRequest>,
    > + Send
    + 'static,
    server: KvServer,
    per_conn: PerConnection,
) {
    BaseChannel::with_defaults(transport)
        .max_concurrent_requests(per_conn.in_flight)
        .execute(server.serve())
        .for_each(run_request)
        .await;
}

/// Reads a client's preamble, checks its token and answers; what the connection
/// may do, or `None` if it was refused (and told why).
async fn admit_client<S: Stream>(stream: &mut S, node: &Node) -> Option<Access> {
    let token = match preamble::receive(stream).await {
        Ok(token) => token,
        Err(error) => {
            tracing::info!(%error, "bad client preamble");
            let _ = preamble::answer(stream, &Verdict::Refused(error.to_string())).await;
            return None;
        }
    };
    let (access, verdict) = match &node.config().auth {
        None => (Access::Open, Verdict::Accepted(None)),
        Some(keyring) => match keyring.check(token.as_deref()) {
            Ok(access) => {
                let role = match &access {
                    Access::Token { role, .. } => Some(*role),
                    Access::Open => None,
                };
                (access, Verdict::Accepted(role))
            }
            Err((_, reason)) => {
                tracing::info!(%reason, "client token refused");
                let _ = preamble::answer(stream, &Verdict::Refused(reason)).await;
                return None;
            }
        },
    };
    preamble::answer(stream, &verdict).await.ok()?;
    Some(access)
}

/// Runs one request: polled once right here, and only if it is still waiting (for a
/// peer, a quorum, an fsync) moved onto a task of its own. Most reads and buffered
/// writes finish on that first poll, so their responses leave together with the
/// others of the same batch in one write, instead of one task wake-up and one send
/// per request.
async fn run_request<F>(request: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let mut request = Box::pin(request);
    if futures::poll!(request.as_mut()).is_pending() {
        tokio::spawn(request);
    }
}

/// The framed transport of one connection; a malformed or oversized frame closes it
/// and is counted.
fn counted<S: Stream, In, Out>(
    stream: S,
    per_conn: PerConnection,
    node: SharedNode,
    peer: std::net::SocketAddr,
) -> impl tarpc::Transport<Out, In>
where
    In: super::codec::Incoming,
    Out: serde::Serialize,
{
    super::framed(stream, per_conn.max_frame, per_conn.write_per_frame).inspect_err(move |error| {
        // An idle or trickling connection closed by its guard is no bad frame.
        if error.kind() == std::io::ErrorKind::TimedOut {
            tracing::debug!(%peer, %error, "closing connection");
            return;
        }
        node.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%peer, %error, "closing connection after a bad frame");
    })
}

/// A TLS stream whose peer may close without a close_notify: that is the end of
/// the stream, not an error (every frame carries its length, so a cut is noticed
/// anyway), and a client closing its connection is not worth a warning.
struct CloseIsEof<S>(S);

impl<S: Stream> tokio::io::AsyncRead for CloseIsEof<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match std::pin::Pin::new(&mut self.0).poll_read(cx, buf) {
            std::task::Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                std::task::Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: Stream> tokio::io::AsyncWrite for CloseIsEof<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A stream whose first bytes were already read: replays them, then reads on.
struct Prefixed<S> {
    prefix: [u8; 4],
    len: usize,
    read: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    fn new(first: &[u8], inner: S) -> Prefixed<S> {
        let mut prefix = [0u8; 4];
        prefix[..first.len()].copy_from_slice(first);
        Prefixed {
            prefix,
            len: first.len(),
            read: 0,
            inner,
        }
    }
}

impl<S: Stream> tokio::io::AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.read < self.len {
            let n = (self.len - self.read).min(buf.remaining());
            let start = self.read;
            buf.put_slice(&self.prefix[start..start + n]);
            self.read += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: Stream> tokio::io::AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
