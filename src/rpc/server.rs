//! Accepts client connections and serves [`Kv`] on each, within limits.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::{StreamExt, TryStreamExt};
use tarpc::context;
use tarpc::server::{BaseChannel, Channel};
use tokio::sync::Semaphore;

use super::api::{ApiError, GetReply, Kv, RequestOptions, ServerInfo, Status};
use crate::net::{Listener, Network};
use crate::node::{Node, NodeError, SharedNode};
use crate::object::Context;

/// The tarpc service handle: one clone per request.
#[derive(Clone)]
pub struct KvServer {
    node: SharedNode,
}

impl KvServer {
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
        let r = self.node.coordinator().get(key, opts).await;
        self.count(r)
    }

    async fn put(
        self,
        _: context::Context,
        key: Vec<u8>,
        value: Vec<u8>,
        context: Option<Context>,
        opts: RequestOptions,
    ) -> Result<Context, ApiError> {
        let r = self
            .node
            .coordinator()
            .put(key, Some(value), context, opts)
            .await;
        self.count(r)
    }

    async fn delete(
        self,
        _: context::Context,
        key: Vec<u8>,
        context: Option<Context>,
        opts: RequestOptions,
    ) -> Result<Context, ApiError> {
        let r = self.node.coordinator().put(key, None, context, opts).await;
        self.count(r)
    }

    async fn counter_add(
        self,
        _: context::Context,
        key: Vec<u8>,
        delta: i64,
        opts: RequestOptions,
    ) -> Result<i128, ApiError> {
        let r = self.node.coordinator().counter_add(key, delta, opts).await;
        self.count(r)
    }

    async fn counter_get(
        self,
        _: context::Context,
        key: Vec<u8>,
        opts: RequestOptions,
    ) -> Result<Option<i128>, ApiError> {
        let r = self.node.coordinator().counter_get(key, opts).await;
        self.count(r)
    }

    async fn set_add(
        self,
        _: context::Context,
        key: Vec<u8>,
        member: Vec<u8>,
        opts: RequestOptions,
    ) -> Result<(), ApiError> {
        let r = self
            .node
            .coordinator()
            .set_update(key, member, true, opts)
            .await
            .map(|_| ());
        self.count(r)
    }

    async fn set_remove(
        self,
        _: context::Context,
        key: Vec<u8>,
        member: Vec<u8>,
        opts: RequestOptions,
    ) -> Result<bool, ApiError> {
        let r = self
            .node
            .coordinator()
            .set_update(key, member, false, opts)
            .await;
        self.count(r)
    }

    async fn set_members(
        self,
        _: context::Context,
        key: Vec<u8>,
        opts: RequestOptions,
    ) -> Result<Option<Vec<Vec<u8>>>, ApiError> {
        let r = self.node.coordinator().set_members(key, opts).await;
        self.count(r)
    }

    async fn status(self, _: context::Context) -> Status {
        self.node.status()
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

/// Serves clients on `listener` until `shutdown` completes.
///
/// Connections beyond `max_connections` are closed at once; each connection carries
/// at most `max_in_flight_per_connection` requests; a malformed or oversized frame
/// closes only its own connection.
pub async fn serve<L: Listener>(
    mut listener: L,
    node: SharedNode,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(node.config().max_connections));
    let max_frame = node.config().limits.frame_bytes();
    let in_flight = node.config().max_in_flight_per_connection;
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
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            node.stats
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "connection limit reached; closing new connection");
            drop(stream);
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let _permit = permit;
            node.stats.connections_open.fetch_add(1, Ordering::Relaxed);
            let stats_node = node.clone();
            let transport = super::framed(stream, max_frame).inspect_err(move |error| {
                stats_node.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%peer, %error, "closing connection after a bad frame");
            });
            let server = KvServer { node: node.clone() };
            BaseChannel::with_defaults(transport)
                .max_concurrent_requests(in_flight)
                .execute(server.serve())
                .for_each(|request| async move {
                    tokio::spawn(request);
                })
                .await;
            node.stats.connections_open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}
