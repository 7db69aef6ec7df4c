//! Operator commands that change membership (`leave`, `remove`, `drain`) over the
//! authenticated peer channel, with the cluster key: for nodes without an auth
//! file (with one, an admin token does it through [`super::Client`]). With TLS,
//! the peer channel needs a certificate of the cluster's CA.

use ringkv_gossip::ClusterKey;

use super::ClientError;
use crate::net::{Network, TokioNetwork};
use crate::peer::Peers;
use crate::peer::pool::PeerError;
use crate::tls::DialTls;

fn admin_error(e: PeerError) -> ClientError {
    match e {
        PeerError::Connect { addr, reason } => ClientError::Connect {
            addr: addr.to_string(),
            reason,
        },
        PeerError::Lost { addr, reason } => ClientError::Unavailable {
            addr: addr.to_string(),
            reason,
        },
        PeerError::Api(api) => ClientError::Api(api),
    }
}

async fn admin_addr(addr: &str) -> Result<std::net::SocketAddr, ClientError> {
    let err = |reason: String| ClientError::Connect {
        addr: addr.to_string(),
        reason,
    };
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("address resolves to nothing".into()))
}

/// One call to the operator side of the peer API of the node at `addr`. An
/// operator's tool names no node: peers let it ask for membership changes and
/// drains only.
async fn operator<T, F, Fut>(
    addr: &str,
    key: ClusterKey,
    tls: Option<&DialTls>,
    f: F,
) -> Result<T, ClientError>
where
    F: FnOnce(crate::peer::PeerClient, tarpc::context::Context) -> Fut,
    Fut: std::future::Future<
            Output = Result<Result<T, crate::rpc::api::ApiError>, tarpc::client::RpcError>,
        >,
{
    let a = admin_addr(addr).await?;
    operator_on(TokioNetwork, a, key, tls, f).await
}

/// [`operator`] over any network, to an address already resolved.
async fn operator_on<N, T, F, Fut>(
    net: N,
    a: std::net::SocketAddr,
    key: ClusterKey,
    tls: Option<&DialTls>,
    f: F,
) -> Result<T, ClientError>
where
    N: Network,
    F: FnOnce(crate::peer::PeerClient, tarpc::context::Context) -> Fut,
    Fut: std::future::Future<
            Output = Result<Result<T, crate::rpc::api::ApiError>, tarpc::client::RpcError>,
        >,
{
    let mut peers = Peers::new(net, key, String::new(), 1 << 20);
    if let Some(tls) = tls.cloned() {
        peers = peers.with_tls(move || tls.clone());
    }
    peers
        .call_no_retry("", a, super::DEFAULT_TIMEOUT, f)
        .await
        .map_err(admin_error)
}

/// Operator command: the node at `addr` leaves the cluster. Needs the cluster key:
/// membership changes are not for anyone who can reach the client port.
///
/// # Errors
/// [`ClientError::Connect`] also when the node refuses the key.
pub async fn leave(
    addr: &str,
    key: ClusterKey,
    tls: Option<&DialTls>,
) -> Result<String, ClientError> {
    operator(addr, key, tls, |c, ctx| async move { c.leave(ctx).await }).await
}

/// [`leave`] over `net` (the simulation's network, say), without TLS.
///
/// # Errors
/// As [`leave`].
pub async fn leave_on<N: Network>(
    net: N,
    addr: std::net::SocketAddr,
    key: ClusterKey,
) -> Result<String, ClientError> {
    operator_on(
        net,
        addr,
        key,
        None,
        |c, ctx| async move { c.leave(ctx).await },
    )
    .await
}

/// [`remove`] over `net` (the simulation's network, say), without TLS.
///
/// # Errors
/// As [`remove`].
pub async fn remove_on<N: Network>(
    net: N,
    addr: std::net::SocketAddr,
    key: ClusterKey,
    node_id: &str,
) -> Result<(), ClientError> {
    let id = node_id.to_string();
    operator_on(net, addr, key, None, |c, ctx| async move {
        c.remove(ctx, id).await
    })
    .await
}

/// Operator command: remove `node_id` from the cluster, through the node at `addr`.
///
/// # Errors
/// [`ClientError::Connect`] also when the node refuses the key; unknown ids and the
/// node itself are refused with [`crate::rpc::api::ApiError::Membership`].
pub async fn remove(
    addr: &str,
    key: ClusterKey,
    tls: Option<&DialTls>,
    node_id: &str,
) -> Result<(), ClientError> {
    let id = node_id.to_string();
    operator(
        addr,
        key,
        tls,
        |c, ctx| async move { c.remove(ctx, id).await },
    )
    .await
}

/// Operator command: the node at `addr` stops gracefully, as on SIGTERM (readiness
/// off, peers told, requests finished, store synced, process exits). Returns its id.
///
/// # Errors
/// [`ClientError::Connect`] also when the node refuses the key.
pub async fn drain(
    addr: &str,
    key: ClusterKey,
    tls: Option<&DialTls>,
) -> Result<String, ClientError> {
    operator(addr, key, tls, |c, ctx| async move { c.drain(ctx).await }).await
}
