//! The HTTP port: Prometheus metrics, liveness and readiness probes, the cluster's
//! health as JSON, a status page, and the data API under `/v1/kv`, `/v1/counter`
//! and `/v1/set` (docs/openapi.yaml). Served by axum (hyper), never parsed by hand;
//! on a node with TLS the same port also speaks HTTPS.

mod data;
mod listener;
mod metrics;
mod page;
mod process;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::auth::Access;
use crate::node::SharedNode;

pub use metrics::render as render_metrics;
pub use wire::percent_decode;

/// What the HTTP handlers share.
#[derive(Clone)]
pub(crate) struct Ops {
    node: SharedNode,
    stall_threshold: Duration,
    registry: Arc<prometheus_client::registry::Registry>,
    last_page: Arc<page::LastReading>,
    /// Bytes of request bodies being received now, across the port.
    bodies: Arc<tokio::sync::Semaphore>,
}

/// Why the HTTP listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address is taken or not local.
    #[error("cannot bind the HTTP address {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The router of the operations port.
pub fn router(node: SharedNode, stall_threshold: Duration) -> Router {
    let registry = Arc::new(metrics::registry(node.clone()));
    Router::new()
        .merge(data::routes())
        .route("/", get(status_page))
        .route("/metrics", get(metrics_text))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/v1/cluster/health", get(cluster_health))
        .fallback(not_found)
        .with_state(Ops {
            node,
            stall_threshold,
            registry,
            last_page: Arc::default(),
            bodies: Arc::new(tokio::sync::Semaphore::new(data::BODY_BUDGET_BYTES)),
        })
}

/// Binds `addr` and serves the operations port until `shutdown` completes; a
/// request that is malformed or too large gets a 4xx from hyper and closes only
/// its own connection.
///
/// # Errors
/// [`HttpError::Bind`].
pub async fn serve(
    addr: SocketAddr,
    node: SharedNode,
    stall_threshold: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), HttpError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| HttpError::Bind { addr, source })?;
    let app = router(node.clone(), stall_threshold);
    let task = tokio::spawn(listener::run(listener, app, node, shutdown));
    Ok((local, task))
}

async fn not_found(uri: axum::http::Uri) -> Response {
    let path = uri.path();
    // The API's paths answer in JSON, as every other answer of the API does.
    if path.starts_with("/v1/") {
        return if data::is_data_path(path) && path.ends_with('/') && path.matches('/').count() == 3
        {
            wire::error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "key must not be empty",
            )
        } else {
            wire::error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route: keys go after /v1/kv/, /v1/counter/ or /v1/set/; the cluster's health is /v1/cluster/health",
            )
        };
    }
    (
        StatusCode::NOT_FOUND,
        "not found: try /, /metrics, /livez, /readyz, /v1/cluster/health or /v1/kv/KEY\n",
    )
        .into_response()
}

async fn metrics_text(State(ops): State<Ops>) -> Response {
    match metrics::render(&ops.registry) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response(),
    }
}

/// `?verbose` on a probe lists its checks.
#[derive(serde::Deserialize, Default)]
struct ProbeQuery {
    verbose: Option<String>,
}

async fn livez(State(ops): State<Ops>, Query(q): Query<ProbeQuery>) -> Response {
    let l = ops.node.liveliness(ops.stall_threshold);
    let code = if l.live() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = if l.live() {
        "ok\n".to_string()
    } else {
        format!(
            "not live: a storage sync has run for {} ms (threshold {} ms)\n",
            l.storage_sync_running_ms, l.stall_threshold_ms
        )
    };
    if q.verbose.is_some() {
        body.push_str(&format!(
            "[{}] storage not stalled ({} ms running)\n",
            if l.live() { "+" } else { "-" },
            l.storage_sync_running_ms
        ));
    }
    (code, body).into_response()
}

async fn readyz(State(ops): State<Ops>, Query(q): Query<ProbeQuery>) -> Response {
    let r = ops.node.readiness();
    let code = if r.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = String::from(if r.ready() { "ok\n" } else { "not ready\n" });
    if q.verbose.is_some() || !r.ready() {
        for (ok, what) in [
            (r.store_open, "store open"),
            (r.member_with_ring, "an active member with a ring"),
            (r.self_alive, "sees itself alive"),
            (r.not_draining, "not draining"),
        ] {
            body.push_str(&format!("[{}] {what}\n", if ok { "+" } else { "-" }));
        }
    }
    (code, body).into_response()
}

/// What the request's bearer token allows under the auth file in force (everything
/// when the node has none), or why it is refused (counted by the keyring).
fn token_access(ops: &Ops, headers: &axum::http::HeaderMap) -> Result<Access, String> {
    match ops.node.config().auth.as_ref() {
        None => Ok(Access::Open),
        Some(keyring) => keyring
            .check(wire::bearer(headers))
            .map_err(|(_, reason)| reason),
    }
}

/// The refusal, if any: with an auth file, what the node says about its data and members needs a
/// token (`Authorization: Bearer`); probes and metrics do not (kubelets and
/// Prometheus reach them, and they name no key).
fn authorize(ops: &Ops, headers: &axum::http::HeaderMap) -> Option<Response> {
    let reason = token_access(ops, headers).err()?;
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            format!("not authorized: {reason} (HTTP: Authorization: Bearer TOKEN)\n"),
        )
            .into_response(),
    )
}

async fn cluster_health(State(ops): State<Ops>, headers: axum::http::HeaderMap) -> Response {
    if let Some(refused) = authorize(&ops, &headers) {
        return refused;
    }
    axum::Json(ops.node.cluster_health()).into_response()
}

async fn status_page(State(ops): State<Ops>, headers: axum::http::HeaderMap) -> Response {
    if let Some(refused) = authorize(&ops, &headers) {
        return refused;
    }
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page::render(&ops.node, &ops.last_page),
    )
        .into_response()
}
