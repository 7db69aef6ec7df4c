//! The Rust client: [`Client`] talks to a node over the client service and returns
//! typed results.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ringkv::client::ClientError> {
//! let client = ringkv::Client::connect("127.0.0.1:7400").await?;
//! let ctx = client.put(b"k", b"v", None).await?;
//! let read = client.get(b"k").await?;
//! assert_eq!(read.siblings, vec![b"v".to_vec()]);
//! client.put(b"k", b"w", Some(&read.context)).await?;
//! # let _ = ctx; Ok(()) }
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use tarpc::client::RpcError;

use crate::net::{Network, TokioNetwork};
use crate::object::Context;
use crate::rpc::api::{ApiError, KvClient, RequestOptions, ServerInfo, Status};

/// Default deadline of one request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default deadline of connecting.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// Address tried.
        addr: String,
        /// Cause.
        reason: String,
    },
    /// The connection broke or the deadline passed; a write may or may not have been
    /// applied.
    #[error("node {addr} unavailable: {reason}")]
    Unavailable {
        /// Address of the node.
        addr: String,
        /// Cause.
        reason: String,
    },
    /// The request was refused or failed, by the server or by the same rule checked
    /// locally before sending.
    #[error("{0}")]
    Api(#[from] ApiError),
}

/// A register read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetResult {
    /// Live values: more than one means concurrent writes the caller should resolve.
    pub siblings: Vec<Vec<u8>>,
    /// Context to pass to the next write of this key (also when not found: it covers
    /// the tombstones).
    pub context: Context,
}

impl GetResult {
    /// Whether the key has any live value.
    pub fn is_found(&self) -> bool {
        !self.siblings.is_empty()
    }
}

/// A connection to one ringkv node.
#[derive(Clone)]
pub struct Client {
    rpc: KvClient,
    info: ServerInfo,
    addr: SocketAddr,
    timeout: Duration,
    options: RequestOptions,
}

impl Client {
    /// Connects to `addr` (`host:port`) over TCP.
    ///
    /// # Errors
    /// [`ClientError::Connect`] if the address does not resolve or nobody answers.
    pub async fn connect(addr: &str) -> Result<Client, ClientError> {
        let err = |reason: String| ClientError::Connect {
            addr: addr.to_string(),
            reason,
        };
        let resolved = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| err(e.to_string()))?
            .next()
            .ok_or_else(|| err("address resolves to nothing".into()))?;
        Self::connect_with(&TokioNetwork, resolved).await
    }

    /// Connects through any [`Network`] (the simulation uses its own).
    ///
    /// # Errors
    /// [`ClientError::Connect`] if nobody answers.
    pub async fn connect_with<N: Network>(
        net: &N,
        addr: SocketAddr,
    ) -> Result<Client, ClientError> {
        let err = |reason: String| ClientError::Connect {
            addr: addr.to_string(),
            reason,
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, net.connect(addr))
            .await
            .map_err(|_| err("timed out".into()))?
            .map_err(|e| err(e.to_string()))?;
        // The client accepts frames as large as any object it may read back; the
        // server enforces its own (smaller or equal) limit on what it receives.
        let transport = crate::rpc::framed(
            stream,
            crate::replica::Limits::default()
                .frame_bytes()
                .max(64 << 20),
        );
        let rpc = KvClient::new(tarpc::client::Config::default(), transport).spawn();
        let mut client = Client {
            rpc,
            info: ServerInfo {
                node_id: String::new(),
                version: String::new(),
                limits: crate::replica::Limits::default(),
            },
            addr,
            timeout: CONNECT_TIMEOUT,
            options: RequestOptions::default(),
        };
        client.info = client
            .rpc
            .hello(client.ctx())
            .await
            .map_err(|e| err(format!("handshake failed: {e}")))?;
        client.timeout = DEFAULT_TIMEOUT;
        Ok(client)
    }

    /// What the node said about itself on connect.
    pub fn server(&self) -> &ServerInfo {
        &self.info
    }

    /// Sets the deadline of every later request.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Sets the consistency options of every later request.
    pub fn set_options(&mut self, options: RequestOptions) {
        self.options = options;
    }

    fn ctx(&self) -> tarpc::context::Context {
        let mut ctx = tarpc::context::current();
        ctx.deadline = std::time::Instant::now() + self.timeout;
        ctx
    }

    fn rpc_error(&self, e: RpcError) -> ClientError {
        ClientError::Unavailable {
            addr: self.addr.to_string(),
            reason: match e {
                RpcError::DeadlineExceeded => "request timed out".to_string(),
                RpcError::Server(s) => format!("server refused the request: {}", s.detail),
                other => other.to_string(),
            },
        }
    }

    fn check_key(&self, key: &[u8]) -> Result<(), ClientError> {
        let limit = self.info.limits.max_key_bytes;
        if key.is_empty() {
            return Err(ApiError::EmptyKey.into());
        }
        if key.len() > limit {
            return Err(ApiError::KeyTooLarge {
                size: key.len() as u64,
                limit: limit as u64,
            }
            .into());
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8], limit: usize) -> Result<(), ClientError> {
        if value.len() > limit {
            return Err(ApiError::ValueTooLarge {
                size: value.len() as u64,
                limit: limit as u64,
            }
            .into());
        }
        Ok(())
    }

    /// Reads a register.
    ///
    /// # Errors
    /// [`ClientError`]; a missing key is not an error (see [`GetResult::is_found`]).
    pub async fn get(&self, key: &[u8]) -> Result<GetResult, ClientError> {
        self.check_key(key)?;
        let reply = self
            .rpc
            .get(self.ctx(), key.to_vec(), self.options)
            .await
            .map_err(|e| self.rpc_error(e))??;
        Ok(GetResult {
            siblings: reply.values,
            context: reply.context,
        })
    }

    /// Writes a register value. Without a context the write is concurrent with every
    /// existing value (it becomes a sibling); with the context of a read it replaces
    /// what that read saw. Returns the new context.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn put(
        &self,
        key: &[u8],
        value: &[u8],
        context: Option<&Context>,
    ) -> Result<Context, ClientError> {
        self.check_key(key)?;
        self.check_value(value, self.info.limits.max_value_bytes)?;
        Ok(self
            .rpc
            .put(
                self.ctx(),
                key.to_vec(),
                value.to_vec(),
                context.cloned(),
                self.options,
            )
            .await
            .map_err(|e| self.rpc_error(e))??)
    }

    /// Deletes a register: what `context` covers, or without one everything visible now.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn delete(
        &self,
        key: &[u8],
        context: Option<&Context>,
    ) -> Result<Context, ClientError> {
        self.check_key(key)?;
        Ok(self
            .rpc
            .delete(self.ctx(), key.to_vec(), context.cloned(), self.options)
            .await
            .map_err(|e| self.rpc_error(e))??)
    }

    /// Adds `delta` to a counter; returns the value the coordinating node sees after it.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn counter_add(&self, key: &[u8], delta: i64) -> Result<i128, ClientError> {
        self.check_key(key)?;
        Ok(self
            .rpc
            .counter_add(self.ctx(), key.to_vec(), delta, self.options)
            .await
            .map_err(|e| self.rpc_error(e))??)
    }

    /// Reads a counter (`None` if the key does not exist).
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn counter_get(&self, key: &[u8]) -> Result<Option<i128>, ClientError> {
        self.check_key(key)?;
        Ok(self
            .rpc
            .counter_get(self.ctx(), key.to_vec(), self.options)
            .await
            .map_err(|e| self.rpc_error(e))??)
    }

    /// Adds a member to a set.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn set_add(&self, key: &[u8], member: &[u8]) -> Result<(), ClientError> {
        self.check_key(key)?;
        self.check_value(member, self.info.limits.max_key_bytes)?;
        Ok(self
            .rpc
            .set_add(self.ctx(), key.to_vec(), member.to_vec(), self.options)
            .await
            .map_err(|e| self.rpc_error(e))??)
    }

    /// Removes a member from a set; returns whether it was present.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn set_remove(&self, key: &[u8], member: &[u8]) -> Result<bool, ClientError> {
        self.check_key(key)?;
        self.check_value(member, self.info.limits.max_key_bytes)?;
        Ok(self
            .rpc
            .set_remove(self.ctx(), key.to_vec(), member.to_vec(), self.options)
            .await
            .map_err(|e| self.rpc_error(e))??)
    }

    /// Members of a set, sorted (`None` if the key does not exist).
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn set_members(&self, key: &[u8]) -> Result<Option<Vec<Vec<u8>>>, ClientError> {
        self.check_key(key)?;
        Ok(self
            .rpc
            .set_members(self.ctx(), key.to_vec(), self.options)
            .await
            .map_err(|e| self.rpc_error(e))??)
    }

    /// The node's status.
    ///
    /// # Errors
    /// [`ClientError::Unavailable`].
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.rpc
            .status(self.ctx())
            .await
            .map_err(|e| self.rpc_error(e))
    }
}
