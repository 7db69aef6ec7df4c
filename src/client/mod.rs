//! The Rust client: [`Client`] talks to a cluster over the client service and returns
//! typed results.
//!
//! It learns the ring from the node it connects to (any member), computes each key's
//! primaries itself (ownership is a pure function of the member set), sends every
//! request straight to a primary, and fails over to the next one, then to the node it
//! connected to. Writes are retried elsewhere only when they were never sent.
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

pub mod admin;
mod routing;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tarpc::client::RpcError;

use crate::net::{Network, TokioNetwork};
use crate::object::Context;
use crate::rpc::api::{ApiError, Blob, KvClient, RequestOptions, RingInfo, ServerInfo, Status};
use routing::Routing;

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
    /// The node refused the connection's token (none, unknown) or TLS: nothing
    /// was done.
    #[error("not authorized by {addr}: {reason}")]
    NotAuthorized {
        /// Address of the node.
        addr: String,
        /// The node's reason.
        reason: String,
    },
    /// The request was refused or failed, by the server or by the same rule checked
    /// locally before sending.
    #[error("{0}")]
    Api(#[from] ApiError),
}

/// How a client proves itself: a token for a node with an auth file, TLS for a
/// node with certificates.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// The token (`ringkv token create`), sent first on every connection.
    pub token: Option<String>,
    /// TLS to dial with (the cluster's CA, and a client certificate if any).
    pub tls: Option<crate::tls::DialTls>,
}

impl Credentials {
    /// From `RINGKV_TOKEN`, and `RINGKV_TLS_CA` (with `RINGKV_TLS_CERT` and
    /// `RINGKV_TLS_KEY` for a client certificate), as the CLI reads them.
    ///
    /// # Errors
    /// [`crate::tls::TlsError`] if the TLS files cannot be used.
    pub fn from_env() -> Result<Credentials, crate::tls::TlsError> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let tls = match var("RINGKV_TLS_CA") {
            None => None,
            Some(ca) => {
                let identity = var("RINGKV_TLS_CERT")
                    .zip(var("RINGKV_TLS_KEY"))
                    .map(|(c, k)| (c.into(), k.into()));
                Some(crate::tls::DialTls::client(&crate::tls::ClientTlsFiles {
                    ca: ca.into(),
                    identity,
                })?)
            }
        };
        Ok(Credentials {
            token: std::env::var("RINGKV_TOKEN").ok().filter(|t| !t.is_empty()),
            tls,
        })
    }
}

/// What every connection of one client is opened with.
#[derive(Clone)]
pub(crate) struct Link {
    dialer: crate::net::Dialer,
    token: Option<Arc<str>>,
    /// The address the user gave and its host name, checked against the node's
    /// certificate (members learned from the ring need only a node certificate).
    home: Option<(SocketAddr, Arc<str>)>,
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

/// A connection to one node.
#[derive(Clone)]
struct Conn {
    rpc: KvClient,
    addr: SocketAddr,
    /// Set when the connection ended: the next request dials again.
    closed: Arc<std::sync::atomic::AtomicBool>,
    /// When a request last went out on it.
    used: Arc<std::sync::Mutex<tokio::time::Instant>>,
}

/// A connection unused this long is dialed again rather than used: well before
/// the node's idle timeout ([`crate::rpc::server::CLIENT_IDLE`]) closes it, which
/// could cut a request just sent (its outcome then unknown).
const REDIAL_IDLE: Duration = Duration::from_secs(300);

impl Conn {
    /// Whether it may carry a request now (marking it used), or should be dialed
    /// again.
    fn take(&self) -> bool {
        if self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if used.elapsed() >= REDIAL_IDLE {
            return false;
        }
        *used = tokio::time::Instant::now();
        true
    }
}

/// A client of a ringkv cluster.
#[derive(Clone)]
pub struct Client {
    home: Conn,
    info: ServerInfo,
    routing: Arc<Routing>,
    timeout: Duration,
    options: RequestOptions,
}

fn rpc_error(addr: SocketAddr, e: RpcError) -> ClientError {
    ClientError::Unavailable {
        addr: addr.to_string(),
        reason: match e {
            RpcError::DeadlineExceeded => "request timed out".to_string(),
            RpcError::Server(s) => format!("server refused the request: {}", s.detail),
            other => other.to_string(),
        },
    }
}

/// The error of a request refused by a node after an earlier attempt at another
/// (`earlier`) ended with an unknown outcome: a refusal that says nothing was
/// applied would be wrong, since the earlier attempt may have been.
fn unknown_outcome(refusal: ApiError, earlier: Option<ClientError>) -> ClientError {
    match (refusal, earlier) {
        (refusal, None) => refusal.into(),
        (ApiError::QuorumNotReached(mut q), Some(_)) => {
            q.indeterminate = true;
            ApiError::QuorumNotReached(q).into()
        }
        (_, Some(earlier)) => earlier,
    }
}

/// Opens a client-service connection to `addr`: TLS if set, the preamble with the
/// token, and a hello that checks it answers.
async fn open_conn(link: &Link, addr: SocketAddr) -> Result<(Conn, ServerInfo), ClientError> {
    let err = |reason: String| ClientError::Connect {
        addr: addr.to_string(),
        reason,
    };
    let name = link
        .home
        .as_ref()
        .filter(|(a, _)| *a == addr)
        .map(|(_, n)| n.clone());
    let opening = async {
        let mut stream = link
            .dialer
            .dial_named(addr, name.as_deref())
            .await
            .map_err(|e| {
                // A certificate refused either way (an unknown CA, expired, not
                // for this name; or ours refused by the node) is a matter of
                // credentials, like a token; anything else is the network's.
                if link.dialer.is_tls() && e.kind() == std::io::ErrorKind::InvalidData {
                    ClientError::NotAuthorized {
                        addr: addr.to_string(),
                        reason: e.to_string(),
                    }
                } else if link.dialer.is_tls() && e.kind() == std::io::ErrorKind::UnexpectedEof {
                    err(format!("{e} (does the node serve TLS? it closed the connection during the handshake)"))
                } else {
                    err(e.to_string())
                }
            })?;
        crate::auth::preamble::send(&mut stream, link.token.as_deref())
            .await
            .map_err(|e| err(e.to_string()))?;
        match crate::auth::preamble::verdict(&mut stream).await {
            Ok(_) => Ok(stream),
            Err(crate::auth::preamble::PreambleError::Refused { reason }) => {
                Err(ClientError::NotAuthorized {
                    addr: addr.to_string(),
                    reason,
                })
            }
            Err(e) if !link.dialer.is_tls() => Err(err(format!(
                "{e} (if the node serves TLS, give --tls-ca FILE or RINGKV_TLS_CA)"
            ))),
            Err(e) => Err(err(e.to_string())),
        }
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, opening)
        .await
        .map_err(|_| err("timed out".into()))??;
    // The client accepts frames as large as any object it may read back; the
    // server enforces its own (smaller or equal) limit on what it receives.
    let transport = crate::rpc::framed(
        stream,
        crate::replica::Limits::default()
            .frame_bytes()
            .max(64 << 20),
        link.dialer.write_per_frame,
    );
    let tarpc::client::NewClient {
        client: rpc,
        dispatch,
    } = KvClient::new(tarpc::client::Config::default(), transport);
    let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = closed.clone();
    tokio::spawn(async move {
        let _ = dispatch.await;
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let info = tokio::time::timeout(
        CONNECT_TIMEOUT,
        rpc.hello(crate::rpc::context(CONNECT_TIMEOUT)),
    )
    .await
    .map_err(|_| err("handshake timed out".into()))?
    .map_err(|e| err(format!("handshake failed: {e}")))?;
    let used = Arc::new(std::sync::Mutex::new(tokio::time::Instant::now()));
    Ok((
        Conn {
            rpc,
            addr,
            closed,
            used,
        },
        info,
    ))
}

/// Whether a failed attempt may be retried on another node.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads: any transport failure.
    Always,
    /// Writes: only when the request was never sent.
    IfNotSent,
}

impl Client {
    /// Connects to `addr` (`host:port`), any member of the cluster, over TCP.
    ///
    /// # Errors
    /// [`ClientError::Connect`] if the address does not resolve or nobody answers.
    pub async fn connect(addr: &str) -> Result<Client, ClientError> {
        Self::connect_as(addr, &Credentials::default()).await
    }

    /// Connects to `addr` (`host:port`) with a token and TLS. With TLS, the node's
    /// certificate must name `host`.
    ///
    /// # Errors
    /// [`ClientError::Connect`] if the address does not resolve, nobody answers or
    /// TLS fails; [`ClientError::NotAuthorized`] if the node refuses the token.
    pub async fn connect_as(addr: &str, credentials: &Credentials) -> Result<Client, ClientError> {
        let err = |reason: String| ClientError::Connect {
            addr: addr.to_string(),
            reason,
        };
        let resolved = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| err(e.to_string()))?
            .next()
            .ok_or_else(|| err("address resolves to nothing".into()))?;
        let host = addr
            .rsplit_once(':')
            .map_or(addr, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        Self::open(&TokioNetwork, resolved, Some(host), credentials).await
    }

    /// Connects to a member at `addr` as another member's ring gave it: with TLS,
    /// it need only hold a node certificate of the CA, whatever its names (the
    /// address came from an authenticated node; container addresses change).
    ///
    /// # Errors
    /// As [`Client::connect_as`].
    pub async fn connect_member(
        addr: &str,
        credentials: &Credentials,
    ) -> Result<Client, ClientError> {
        let resolved = tokio::net::lookup_host(addr)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| ClientError::Connect {
                addr: addr.to_string(),
                reason: "address resolves to nothing".into(),
            })?;
        Self::open(&TokioNetwork, resolved, None, credentials).await
    }

    /// Connects to the first of `seeds` that answers (any members of the cluster).
    ///
    /// # Errors
    /// [`ClientError::Connect`] naming every seed tried, if none answers.
    pub async fn connect_any(seeds: &[&str]) -> Result<Client, ClientError> {
        Self::connect_any_as(seeds, &Credentials::default()).await
    }

    /// [`Client::connect_any`] with a token and TLS. A seed that refuses the
    /// token ends the search: the others hold the same auth file.
    ///
    /// # Errors
    /// [`ClientError::Connect`] naming every seed tried, if none answers;
    /// [`ClientError::NotAuthorized`] if one refuses.
    pub async fn connect_any_as(
        seeds: &[&str],
        credentials: &Credentials,
    ) -> Result<Client, ClientError> {
        let mut reasons = Vec::new();
        for seed in seeds {
            match Self::connect_as(seed, credentials).await {
                Ok(c) => return Ok(c),
                Err(e @ ClientError::NotAuthorized { .. }) => return Err(e),
                Err(e) => reasons.push(e.to_string()),
            }
        }
        Err(ClientError::Connect {
            addr: seeds.join(","),
            reason: if reasons.is_empty() {
                "no seed given".to_string()
            } else {
                reasons.join("; ")
            },
        })
    }

    /// Connects through any [`Network`] (the simulation uses its own).
    ///
    /// # Errors
    /// [`ClientError::Connect`] if nobody answers.
    pub async fn connect_with<N: Network>(
        net: &N,
        addr: SocketAddr,
    ) -> Result<Client, ClientError> {
        Self::open(net, addr, None, &Credentials::default()).await
    }

    async fn open<N: Network>(
        net: &N,
        addr: SocketAddr,
        host: Option<&str>,
        credentials: &Credentials,
    ) -> Result<Client, ClientError> {
        let mut dialer = crate::net::Dialer::new(net.clone());
        if let Some(tls) = credentials.tls.clone() {
            dialer = dialer.with_tls(move || tls.clone());
        }
        let link = Link {
            dialer,
            token: credentials.token.as_deref().map(Arc::from),
            home: host.map(|h| (addr, Arc::from(h))),
        };
        let (home, info) = open_conn(&link, addr).await?;
        let routing = Arc::new(Routing::new(link));
        routing.add_conn(home.clone());
        let client = Client {
            home,
            info,
            routing,
            timeout: DEFAULT_TIMEOUT,
            options: RequestOptions::default(),
        };
        // A node that cannot describe its ring still serves requests itself.
        if let Ok(ring) = client.ring().await {
            client.routing.learn(&ring);
        }
        Ok(client)
    }

    /// What the connected node said about itself on connect.
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

    /// The consistency options requests are sent with.
    pub fn options(&self) -> RequestOptions {
        self.options
    }

    /// Sends every request to the connected node only (it forwards as needed).
    pub fn disable_routing(&mut self) {
        self.routing = Arc::new(Routing::new(self.routing.link()));
        self.routing.add_conn(self.home.clone());
    }

    /// Calls the connected node, bounded by `timeout` on tokio's clock.
    async fn on_home<T, F, Fut>(&self, timeout: Duration, f: F) -> Result<T, ClientError>
    where
        F: FnOnce(KvClient, tarpc::context::Context) -> Fut,
        Fut: Future<Output = Result<T, RpcError>>,
    {
        let conn = self.home().await?;
        let answer = tokio::time::timeout(timeout, f(conn.rpc, crate::rpc::context(timeout)))
            .await
            .unwrap_or(Err(RpcError::DeadlineExceeded));
        answer.map_err(|e| {
            self.routing.drop_conn(self.home.addr);
            rpc_error(self.home.addr, e)
        })
    }

    /// Runs `f` against the primaries of `key` in order, then the connected node.
    async fn routed<T, F, Fut>(&self, key: &[u8], retry: Retry, f: F) -> Result<T, ClientError>
    where
        F: Fn(KvClient, tarpc::context::Context) -> Fut,
        Fut: Future<Output = Result<Result<T, ApiError>, RpcError>>,
    {
        self.refresh_if_stale();
        let mut candidates = self.routing.route(key);
        if !candidates.contains(&self.home.addr) {
            candidates.push(self.home.addr);
        }
        let mut last = None;
        // An attempt that was sent and then failed may have been applied: if a later
        // attempt fails for certain (cannot connect), the caller must still hear
        // that the outcome is unknown.
        let mut unknown = None;
        for addr in candidates {
            let conn = match self.routing.conn(addr).await {
                Ok(c) => c,
                Err(e) => {
                    self.routing.mark_failed(addr);
                    last = Some(e);
                    continue;
                }
            };
            // tarpc's deadline is on the wall clock; tokio's timer also bounds the
            // call, so virtual time (the simulation) governs it as well.
            let answer = match tokio::time::timeout(
                self.timeout,
                f(conn.rpc.clone(), crate::rpc::context(self.timeout)),
            )
            .await
            {
                Ok(a) => a,
                Err(_) => Err(RpcError::DeadlineExceeded),
            };
            match answer {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e @ ApiError::ShuttingDown { .. })) => {
                    // Refused before anything was applied: safe to send elsewhere,
                    // writes included.
                    self.routing.mark_failed(addr);
                    last = Some(ClientError::Api(e));
                }
                Ok(Err(e)) => return Err(unknown_outcome(e, unknown)),
                Err(e) => {
                    // Even `Shutdown` may come after the request left (the connection
                    // broke mid-flight): a write is never retried once handed to tarpc.
                    self.routing.drop_conn(addr);
                    let err = rpc_error(addr, e);
                    if retry == Retry::IfNotSent {
                        return Err(err);
                    }
                    unknown = Some(err);
                }
            }
        }
        Err(unknown
            .or(last)
            .unwrap_or_else(|| ClientError::Unavailable {
                addr: self.home.addr.to_string(),
                reason: "no node to send to".into(),
            }))
    }

    fn refresh_if_stale(&self) {
        if !self.routing.stale() {
            return;
        }
        self.routing.refreshing();
        let this = self.clone();
        tokio::spawn(async move {
            // From the connected node, else from any member that answers: the
            // connected node may be the one restarting.
            let mut ring = this.ring().await.ok();
            if ring.is_none() {
                for addr in this.routing.known_addresses() {
                    if addr == this.home.addr {
                        continue;
                    }
                    let Ok(conn) = this.routing.conn(addr).await else {
                        continue;
                    };
                    let timeout = this.timeout;
                    let answer =
                        tokio::time::timeout(timeout, conn.rpc.ring(crate::rpc::context(timeout)))
                            .await;
                    if let Ok(Ok(r)) = answer {
                        ring = Some(r);
                        break;
                    }
                }
            }
            if let Some(ring) = ring {
                this.routing.learn(&ring);
            }
        });
    }

    /// The connection to the node this client connected to, dialled again if it
    /// closed (the node restarted).
    async fn home(&self) -> Result<Conn, ClientError> {
        self.routing.conn(self.home.addr).await
    }

    /// The cluster's health as the connected node sees it.
    ///
    /// # Errors
    /// [`ClientError::Unavailable`].
    pub async fn cluster_health(&self) -> Result<crate::rpc::api::ClusterHealth, ClientError> {
        self.on_home(self.timeout, |rpc, ctx| async move {
            rpc.cluster_health(ctx).await
        })
        .await
    }

    /// Handoffs and hints of the connected node.
    ///
    /// # Errors
    /// [`ClientError::Unavailable`].
    pub async fn transfers(&self) -> Result<crate::rpc::api::Transfers, ClientError> {
        self.on_home(
            self.timeout,
            |rpc, ctx| async move { rpc.transfers(ctx).await },
        )
        .await
    }

    /// The ring and members as the connected node sees them.
    ///
    /// # Errors
    /// [`ClientError::Unavailable`].
    pub async fn ring(&self) -> Result<RingInfo, ClientError> {
        self.on_home(self.timeout, |rpc, ctx| async move { rpc.ring(ctx).await })
            .await
    }

    /// Root hashes of every partition's tree on the connected node (diagnostics).
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn partition_roots(&self) -> Result<Vec<[u8; 32]>, ClientError> {
        Ok(self
            .on_home(self.timeout, |rpc, ctx| async move {
                rpc.partition_roots(ctx).await
            })
            .await??)
    }

    /// Runs an anti-entropy round on the connected node now (all partitions, or one).
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn repair(
        &self,
        partition: Option<u32>,
    ) -> Result<crate::rpc::api::RoundReport, ClientError> {
        // A round over every partition may move a lot of data.
        let timeout = self.timeout.max(Duration::from_secs(300));
        Ok(self
            .on_home(timeout, |rpc, ctx| async move {
                rpc.repair(ctx, partition).await
            })
            .await??)
    }

    /// Reads only the connected node's replica of a register (diagnostics).
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn get_local(&self, key: &[u8]) -> Result<GetResult, ClientError> {
        self.check_key(key)?;
        let key = key.to_vec();
        let reply = self
            .on_home(self.timeout, |rpc, ctx| async move {
                rpc.get_local(ctx, key).await
            })
            .await??;
        Ok(GetResult {
            siblings: reply.values,
            context: reply.context,
        })
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
        let (k, o) = (key.to_vec(), self.options);

        let (k,) = (&k,);
        let reply = self
            .routed(key, Retry::Always, |c, ctx| async move {
                c.get(ctx, k.clone(), o).await
            })
            .await?;
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
        let (k, v, c, o) = (key.to_vec(), value.to_vec(), context.cloned(), self.options);

        let (k, v, c) = (&k, &v, &c);
        self.routed(key, Retry::IfNotSent, |rpc, ctx| async move {
            rpc.put(ctx, k.clone(), Blob(v.clone()), c.clone(), o).await
        })
        .await
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
        let (k, c, o) = (key.to_vec(), context.cloned(), self.options);

        let (k, c) = (&k, &c);
        self.routed(key, Retry::IfNotSent, |rpc, ctx| async move {
            rpc.delete(ctx, k.clone(), c.clone(), o).await
        })
        .await
    }

    /// Adds `delta` to a counter; returns the value the coordinating node sees after it.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn counter_add(&self, key: &[u8], delta: i64) -> Result<i128, ClientError> {
        self.check_key(key)?;
        let (k, o) = (key.to_vec(), self.options);

        let (k,) = (&k,);
        self.routed(key, Retry::IfNotSent, |rpc, ctx| async move {
            rpc.counter_add(ctx, k.clone(), delta, o).await
        })
        .await
    }

    /// Reads a counter (`None` if the key does not exist).
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn counter_get(&self, key: &[u8]) -> Result<Option<i128>, ClientError> {
        self.check_key(key)?;
        let (k, o) = (key.to_vec(), self.options);

        let (k,) = (&k,);
        self.routed(key, Retry::Always, |rpc, ctx| async move {
            rpc.counter_get(ctx, k.clone(), o).await
        })
        .await
    }

    /// Adds a member to a set.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn set_add(&self, key: &[u8], member: &[u8]) -> Result<(), ClientError> {
        self.check_key(key)?;
        self.check_value(member, self.info.limits.max_key_bytes)?;
        let (k, m, o) = (key.to_vec(), member.to_vec(), self.options);

        let (k, m) = (&k, &m);
        // Adds are idempotent: safe to retry anywhere.
        self.routed(key, Retry::Always, |rpc, ctx| async move {
            rpc.set_add(ctx, k.clone(), m.clone(), o).await
        })
        .await
    }

    /// Removes a member from a set; returns whether it was present.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn set_remove(&self, key: &[u8], member: &[u8]) -> Result<bool, ClientError> {
        self.check_key(key)?;
        self.check_value(member, self.info.limits.max_key_bytes)?;
        let (k, m, o) = (key.to_vec(), member.to_vec(), self.options);

        let (k, m) = (&k, &m);
        self.routed(key, Retry::IfNotSent, |rpc, ctx| async move {
            rpc.set_remove(ctx, k.clone(), m.clone(), o).await
        })
        .await
    }

    /// Members of a set, sorted (`None` if the key does not exist).
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn set_members(&self, key: &[u8]) -> Result<Option<Vec<Vec<u8>>>, ClientError> {
        self.check_key(key)?;
        let (k, o) = (key.to_vec(), self.options);

        let (k,) = (&k,);
        self.routed(key, Retry::Always, |rpc, ctx| async move {
            rpc.set_members(ctx, k.clone(), o).await
        })
        .await
    }

    /// The connected node leaves the cluster (an admin token); returns its id.
    ///
    /// # Errors
    /// [`ApiError::NotAuthorized`] without an admin token.
    pub async fn leave(&self) -> Result<String, ClientError> {
        let r = self
            .on_home(self.timeout, |rpc, ctx| async move { rpc.leave(ctx).await })
            .await?;
        Ok(r?)
    }

    /// Removes `node_id` from the cluster, through the connected node (an admin
    /// token).
    ///
    /// # Errors
    /// [`ApiError::NotAuthorized`] without an admin token; unknown ids and the node
    /// itself are refused with [`ApiError::Membership`].
    pub async fn remove(&self, node_id: &str) -> Result<(), ClientError> {
        let id = node_id.to_string();
        let r = self
            .on_home(
                self.timeout,
                |rpc, ctx| async move { rpc.remove(ctx, id).await },
            )
            .await?;
        Ok(r?)
    }

    /// The connected node stops gracefully, as on SIGTERM (an admin token);
    /// returns its id.
    ///
    /// # Errors
    /// [`ApiError::NotAuthorized`] without an admin token.
    pub async fn drain(&self) -> Result<String, ClientError> {
        let r = self
            .on_home(self.timeout, |rpc, ctx| async move { rpc.drain(ctx).await })
            .await?;
        Ok(r?)
    }

    /// The connected node's status.
    ///
    /// # Errors
    /// [`ClientError::Unavailable`].
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.on_home(
            self.timeout,
            |rpc, ctx| async move { rpc.status(ctx).await },
        )
        .await
    }
}
