//! Connections to other nodes: one multiplexed tarpc client per peer address, opened
//! lazily with the handshake and dropped when it breaks.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringkv_gossip::ClusterKey;
use tarpc::client::RpcError;

use super::{PeerClient, handshake};
use crate::net::Network;
use crate::rpc::api::ApiError;

/// Longest wait for a TCP connection to a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A byte stream of any network.
pub trait IoStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> IoStream for T {}

type Connecting = Pin<Box<dyn Future<Output = io::Result<Box<dyn IoStream>>> + Send>>;
type Connector = Arc<dyn Fn(SocketAddr) -> Connecting + Send + Sync>;

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
    connector: Connector,
    key: ClusterKey,
    max_frame: usize,
    conns: Arc<Mutex<HashMap<SocketAddr, PeerClient>>>,
}

impl Peers {
    /// A pool dialing through `net`, proving `key`, with frames up to `max_frame` bytes.
    pub fn new<N: Network>(net: N, key: ClusterKey, max_frame: usize) -> Peers {
        let connector: Connector = Arc::new(move |addr| {
            let net = net.clone();
            Box::pin(async move {
                let s = net.connect(addr).await?;
                Ok(Box::new(s) as Box<dyn IoStream>)
            })
        });
        Peers {
            connector,
            key,
            max_frame,
            conns: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn cached(&self, addr: SocketAddr) -> Option<PeerClient> {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .cloned()
    }

    fn forget(&self, addr: SocketAddr) {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&addr);
    }

    async fn client(&self, addr: SocketAddr) -> Result<PeerClient, PeerError> {
        if let Some(c) = self.cached(addr) {
            return Ok(c);
        }
        let err = |reason: String| PeerError::Connect { addr, reason };
        let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, (self.connector)(addr))
            .await
            .map_err(|_| err("connect timed out".into()))?
            .map_err(|e| err(e.to_string()))?;
        handshake::initiate(&mut stream, &self.key)
            .await
            .map_err(|e| err(e.to_string()))?;
        let transport = crate::rpc::framed(stream, self.max_frame);
        let client = PeerClient::new(tarpc::client::Config::default(), transport).spawn();
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr, client.clone());
        Ok(client)
    }

    /// Calls `f` on the peer at `addr` with a deadline of `timeout`.
    ///
    /// # Errors
    /// [`PeerError`] saying whether the request was sent.
    pub async fn call<T, F, Fut>(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        f: F,
    ) -> Result<T, PeerError>
    where
        F: FnOnce(PeerClient, tarpc::context::Context) -> Fut,
        Fut: Future<Output = Result<Result<T, ApiError>, RpcError>>,
    {
        let client = self.client(addr).await?;
        let mut ctx = tarpc::context::current();
        ctx.deadline = std::time::Instant::now() + timeout;
        match f(client, ctx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(api)) => Err(PeerError::Api(api)),
            Err(e) => {
                let reason = match &e {
                    RpcError::DeadlineExceeded => "deadline passed".to_string(),
                    other => {
                        // The connection is gone: reconnect next time.
                        self.forget(addr);
                        other.to_string()
                    }
                };
                Err(PeerError::Lost { addr, reason })
            }
        }
    }
}
