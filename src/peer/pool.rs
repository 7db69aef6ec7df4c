//! Connections to other nodes: one multiplexed tarpc client per peer address and
//! node id it is meant to reach (after a lost disk, the old id and its new node share
//! an address until the old id is removed, and the handshake refuses the one that is
//! gone), opened lazily with the handshake and dropped when it breaks.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringkv_gossip::ClusterKey;
use tarpc::client::RpcError;

use super::{PeerClient, handshake};
use crate::net::{Dialer, Network};
use crate::rpc::api::ApiError;

/// Reason of a call that met a closed connection.
pub(crate) const CLOSED: &str = "connection closed";

/// Pause before dialling an address again after a failed dial or a dropped
/// connection.
pub const REDIAL_AFTER: std::time::Duration = std::time::Duration::from_millis(250);

/// Longest wait for a TCP connection to a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a call to a peer failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// No connection: the request was never sent.
    #[error("cannot reach {addr}: {reason}")]
    Connect {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        reason: String,
    },
    /// The request was sent but no answer came (it may have been applied).
    #[error("no answer from {addr}: {reason}")]
    Lost {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        reason: String,
    },
    /// The peer answered with a refusal.
    #[error("{0}")]
    Api(ApiError),
}

/// The pool.
#[derive(Clone)]
pub struct Peers {
    dialer: Dialer,
    key: ClusterKey,
    /// The node id this pool's connections prove (empty: an operator's tool).
    id: Arc<str>,
    max_frame: usize,
    conns: Arc<Mutex<HashMap<Dest, (u64, PeerClient)>>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
    /// When each destination may be dialled again after a failure (bounded redials:
    /// a peer that is partitioned away is not flooded with connection attempts).
    backoff: Arc<Mutex<HashMap<Dest, tokio::time::Instant>>>,
}

/// Where a connection goes: an address and the node id meant there (empty: whoever
/// answers, for an operator's tool).
pub(crate) type Dest = (SocketAddr, Arc<str>);

impl Peers {
    /// The same pool dialing with TLS (`tls` gives the configuration in force).
    pub fn with_tls(
        mut self,
        tls: impl Fn() -> crate::tls::DialTls + Send + Sync + 'static,
    ) -> Peers {
        self.dialer = self.dialer.with_tls(tls);
        self
    }

    /// A pool dialing through `net`, proving `key` as node `id` (empty for an
    /// operator's tool), with frames up to `max_frame` bytes.
    pub fn new<N: Network>(net: N, key: ClusterKey, id: String, max_frame: usize) -> Peers {
        Peers {
            dialer: Dialer::new(net),
            key,
            id: id.into(),
            max_frame,
            conns: Arc::new(Mutex::new(HashMap::new())),
            next_id: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            backoff: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn cached(&self, dest: &Dest) -> Option<PeerClient> {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(dest)
            .map(|(_, c)| c.clone())
    }

    fn forget(&self, dest: &Dest) {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(dest);
        self.back_off(dest);
    }

    fn back_off(&self, dest: &Dest) {
        self.backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(dest.clone(), tokio::time::Instant::now() + REDIAL_AFTER);
    }

    /// Lets `node` be dialled again at once: it came back (a new start, or alive
    /// again per gossip), so the pause after its last failure no longer protects
    /// anything and would only refuse the first requests to it.
    pub fn forgive(&self, node: &str) {
        self.backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|dest, _| &*dest.1 != node);
    }

    /// As [`Peers::forgive`], for every node.
    pub fn forgive_all(&self) {
        self.backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Whether a dial to `node` failed or a connection to it dropped since it was
    /// last forgiven (the pause may be over).
    pub fn has_failed(&self, node: &str) -> bool {
        self.backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .any(|dest| &*dest.1 == node)
    }

    /// Whether `node` is in its pause after a failed dial or dropped connection.
    #[cfg(test)]
    pub fn backing_off(&self, node: &str) -> bool {
        let now = tokio::time::Instant::now();
        self.backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(dest, at)| &*dest.1 == node && now < *at)
    }

    /// Drops the cached connections to `node` (it restarted: they lead to the
    /// process that is gone). Requests already sent on one fail as on any lost
    /// connection.
    pub fn drop_connections(&self, node: &str) {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|dest, _| &*dest.1 != node);
    }

    /// Forgives `node` and dials it at `addr` now, unless a connection is open.
    /// `Ok(true)`: dialled now; `Ok(false)`: a connection was open already.
    ///
    /// # Errors
    /// [`PeerError::Connect`] if the dial failed (the pause starts again).
    pub async fn reconnect(&self, node: &str, addr: SocketAddr) -> Result<bool, PeerError> {
        let dest: Dest = (addr, node.into());
        self.forgive(node);
        if self.cached(&dest).is_some() {
            return Ok(false);
        }
        self.client(&dest, CONNECT_TIMEOUT).await?;
        Ok(true)
    }

    /// The connection to `dest`, dialled (and proven) within `budget` if needed.
    async fn client(&self, dest: &Dest, budget: Duration) -> Result<PeerClient, PeerError> {
        if let Some(c) = self.cached(dest) {
            return Ok(c);
        }
        let addr = dest.0;
        let err = |reason: String| PeerError::Connect { addr, reason };
        let wait = self
            .backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(dest)
            .copied();
        if let Some(at) = wait
            && tokio::time::Instant::now() < at
        {
            return Err(err("recently unreachable; not dialling again yet".into()));
        }
        let dial = async {
            let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, self.dialer.dial(addr))
                .await
                .map_err(|_| err("connect timed out".into()))?
                .map_err(|e| err(e.to_string()))?;
            handshake::initiate(&mut stream, &self.key, &self.id, &dest.1)
                .await
                .map_err(|e| err(e.to_string()))?;
            Ok::<_, PeerError>(stream)
        };
        let stream = match tokio::time::timeout(budget, dial).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.back_off(dest);
                return Err(e);
            }
            Err(_) => {
                self.back_off(dest);
                return Err(err("no time left to connect".into()));
            }
        };
        let transport = crate::rpc::framed(stream, self.max_frame, self.dialer.write_per_frame);
        let tarpc::client::NewClient { client, dispatch } =
            PeerClient::new(tarpc::client::Config::default(), transport);
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(dest.clone(), (id, client.clone()));
        // When the connection ends, forget it at once, so the next call dials again
        // instead of failing on a dead channel (which would look like a lost request).
        let conns = self.conns.clone();
        let dest = dest.clone();
        tokio::spawn(async move {
            if let Err(error) = dispatch.await {
                tracing::debug!(addr = %dest.0, %error, "peer connection closed");
            }
            let mut conns = conns.lock().unwrap_or_else(|p| p.into_inner());
            if conns.get(&dest).is_some_and(|(i, _)| *i == id) {
                conns.remove(&dest);
            }
        });
        Ok(client)
    }

    /// Calls `f` on node `node` at `addr` (`""`: whichever node answers there) with a
    /// deadline of `timeout`. Idempotent
    /// calls (state merges, reads, hints) are retried once on a fresh connection when
    /// the cached one turns out to be closed; forwarded writes never are.
    ///
    /// # Errors
    /// [`PeerError`] saying whether the request was sent.
    pub async fn call<T, F, Fut>(
        &self,
        node: &str,
        addr: SocketAddr,
        timeout: Duration,
        f: F,
    ) -> Result<T, PeerError>
    where
        F: Fn(PeerClient, tarpc::context::Context) -> Fut,
        Fut: Future<Output = Result<Result<T, ApiError>, RpcError>>,
    {
        self.call_to(&(addr, node.into()), timeout, f).await
    }

    /// [`Peers::call`] to a destination already named.
    pub(crate) async fn call_to<T, F, Fut>(
        &self,
        dest: &Dest,
        timeout: Duration,
        f: F,
    ) -> Result<T, PeerError>
    where
        F: Fn(PeerClient, tarpc::context::Context) -> Fut,
        Fut: Future<Output = Result<Result<T, ApiError>, RpcError>>,
    {
        match self.call_once(dest, timeout, &f).await {
            Err(PeerError::Lost { reason, .. }) if reason == CLOSED => {
                self.call_once(dest, timeout, &f).await
            }
            other => other,
        }
    }

    /// Largest frame this pool's connections carry.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Like [`Peers::call`], never retried (for requests that must not apply twice).
    ///
    /// # Errors
    /// [`PeerError`] saying whether the request was sent.
    pub async fn call_no_retry<T, F, Fut>(
        &self,
        node: &str,
        addr: SocketAddr,
        timeout: Duration,
        f: F,
    ) -> Result<T, PeerError>
    where
        F: FnOnce(PeerClient, tarpc::context::Context) -> Fut,
        Fut: Future<Output = Result<Result<T, ApiError>, RpcError>>,
    {
        self.call_once(&(addr, node.into()), timeout, f).await
    }

    /// One attempt, never retried, to a destination already named.
    pub(crate) async fn call_once<T, F, Fut>(
        &self,
        dest: &Dest,
        timeout: Duration,
        f: F,
    ) -> Result<T, PeerError>
    where
        F: FnOnce(PeerClient, tarpc::context::Context) -> Fut,
        Fut: Future<Output = Result<Result<T, ApiError>, RpcError>>,
    {
        // The deadline covers dialling too: a request never outlives its caller's.
        let deadline = tokio::time::Instant::now() + timeout;
        let addr = dest.0;
        let client = self.client(dest, timeout).await?;
        // tokio's clock decides (see `rpc::DEADLINE_SLACK`), so the simulation's
        // virtual time governs it.
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let ctx = crate::rpc::context(remaining);
        let answer = match tokio::time::timeout(remaining, f(client, ctx)).await {
            Ok(a) => a,
            Err(_) => Err(RpcError::DeadlineExceeded),
        };
        match answer {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(api)) => Err(PeerError::Api(api)),
            Err(e) => {
                let reason = match &e {
                    RpcError::DeadlineExceeded => {
                        // A partition can leave a TCP stream hanging for good (lost
                        // segments are never resent once it heals): dial again.
                        self.forget(dest);
                        "deadline passed".to_string()
                    }
                    RpcError::Shutdown => {
                        // Closed (a restart, say): dial again at once, no back-off.
                        self.conns
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(dest);
                        CLOSED.to_string()
                    }
                    other => {
                        // The connection is gone: reconnect next time.
                        self.forget(dest);
                        other.to_string()
                    }
                };
                Err(PeerError::Lost { addr, reason })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::TokioNetwork;

    async fn dial_error(peers: &Peers, dest: &Dest) -> String {
        match peers.client(dest, Duration::from_millis(200)).await {
            Ok(_) => panic!("nobody answers at {}", dest.0),
            Err(e) => e.to_string(),
        }
    }

    #[tokio::test]
    async fn a_failed_dial_pauses_only_its_node_until_forgiven() {
        let key = ClusterKey::derive(b"pool tests, a secret of 16 bytes or more");
        let peers = Peers::new(TokioNetwork, key, "n1".into(), 1 << 20);
        // Held, never accepted from: every dial's handshake times out, and no other
        // test can take the port meanwhile.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = silent.local_addr().expect("addr");
        let dest: Dest = (addr, "n2".into());
        assert!(!peers.has_failed("n2"));
        let first = dial_error(&peers, &dest).await;
        assert!(!first.contains("recently unreachable"), "{first}");
        assert!(peers.has_failed("n2") && peers.backing_off("n2"));
        let other = dial_error(&peers, &(addr, "n3".into())).await;
        assert!(
            !other.contains("recently unreachable"),
            "another node's pause is its own: {other}"
        );
        let paused = dial_error(&peers, &dest).await;
        assert!(paused.contains("recently unreachable"), "{paused}");
        peers.forgive("n2");
        assert!(!peers.has_failed("n2") && !peers.backing_off("n2"));
        let again = dial_error(&peers, &dest).await;
        assert!(
            !again.contains("recently unreachable"),
            "dialled again: {again}"
        );
    }
}
