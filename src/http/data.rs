//! The data API: registers with siblings and contexts, counters and sets over HTTP
//! (docs/openapi.yaml). Every request runs through the same service as the client
//! port ([`KvServer`]): the same limits, quorum options, role checks, request
//! metrics and errors; only the framing differs.

use axum::Router;
use axum::body::Body;
use axum::extract::{Request as HttpRequest, State};
use axum::http::request::Parts as Head;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use tarpc::context;

use super::Ops;
use super::wire::{self, Params, api_error, error, with_context};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::auth::{Access, Refusal};
use crate::node::requests::Op;
use crate::rpc::api::{ApiError, Blob, Kv};
use crate::rpc::server::{KvServer, needed};

/// Whether the request came over TLS (set per connection by the listener).
#[derive(Clone, Copy, Debug, Default)]
pub struct Transport {
    /// The connection is TLS.
    pub tls: bool,
}

/// Largest counter request body: `{"add": -9223372036854775808}` with room to spare.
const COUNTER_BODY_LIMIT: usize = 1024;

/// Bytes of request bodies being received at once across the HTTP port, as the
/// client port's budget for its large frames: a body of unknown length reserves its
/// route's limit, so at most 64 of 4 MiB arrive at once; one that finds no room is
/// refused with 503 instead of waiting.
pub const BODY_BUDGET_BYTES: usize = crate::rpc::server::FRAME_BUDGET_BYTES;

/// Time for a request's body to arrive once its head has (a client trickling a
/// body holds a connection and budget no longer).
const SLOW_BODY: Duration = crate::rpc::server::SLOW_FRAME;

/// The data routes.
pub fn routes() -> Router<Ops> {
    Router::new()
        .route(
            "/v1/kv/{*key}",
            get(kv_get)
                .put(kv_put)
                .delete(kv_delete)
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/counter/{*key}",
            get(counter_get)
                .post(counter_add)
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/set/{*key}",
            get(set_members)
                .post(set_add)
                .delete(set_remove)
                .fallback(method_not_allowed),
        )
}

/// Whether `path` is one of the data API's.
pub fn is_data_path(path: &str) -> bool {
    ["/v1/kv", "/v1/counter", "/v1/set"]
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")))
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let allow = if uri.path().starts_with("/v1/kv/") {
        "GET, PUT, DELETE"
    } else if uri.path().starts_with("/v1/counter/") {
        "GET, POST"
    } else {
        "GET, POST, DELETE"
    };
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed here (allowed: {allow})"),
    );
    if let Ok(v) = header::HeaderValue::from_str(allow) {
        r.headers_mut().insert(header::ALLOW, v);
    }
    r
}

/// One request's way in: its key, query and token checked, and the service handle
/// that runs it with what the token allows.
struct Request {
    server: KvServer,
    key: Vec<u8>,
    query: wire::Query,
}

impl Request {
    /// Checks what every request of `op` needs before its body is read: TLS where
    /// the node has it, a token whose role allows `op` (403 here, before any work,
    /// as on the client port), the key and the query.
    fn read(
        ops: &Ops,
        parts: &Head,
        prefix: &str,
        params: Params,
        op: Op,
    ) -> Result<Request, Refused> {
        let tls = parts.extensions.get::<Transport>().is_some_and(|t| t.tls);
        if ops.node.config().tls.is_some() && !tls {
            ops.node.stats.tls_refused.fetch_add(1, Ordering::Relaxed);
            return Err(early(
                StatusCode::FORBIDDEN,
                "tls_required",
                "this node has TLS: send data requests over https:// to the same port",
            ));
        }
        let access = authorize(ops, &parts.headers)?;
        if let Err(reason) = access.allows(needed(op), op.label()) {
            if let Some(keyring) = &ops.node.config().auth {
                keyring.count(Refusal::Role);
            }
            return Err(early(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("not authorized: {reason}"),
            ));
        }
        let raw = parts.uri.path().strip_prefix(prefix).unwrap_or("");
        let key = wire::percent_decode(raw)
            .map_err(|reason| early(StatusCode::BAD_REQUEST, "bad_request", reason))?;
        if key.is_empty() {
            return Err(early(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "key must not be empty",
            ));
        }
        let query = wire::parse_query(parts.uri.query(), params).map_err(invalid)?;
        Ok(Request {
            server: KvServer::new(ops.node.clone(), access),
            key,
            query,
        })
    }
}

/// The token's access, or the refusal (401: no token or an unknown one; a role too
/// small is refused later, by the service, with 403).
fn authorize(ops: &Ops, headers: &HeaderMap) -> Result<Access, Refused> {
    super::token_access(ops, headers).map_err(|reason| {
        let mut r = early(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!("not authorized: {reason} (send Authorization: Bearer TOKEN)"),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        r
    })
}

/// The body, at most `limit` bytes: a larger one is refused with 413 (before it is
/// read when its length says so), one that ends early or breaks off with 400, one
/// that takes longer than [`SLOW_BODY`] with 408, and one that finds the port's
/// body budget taken with 503.
async fn body(
    ops: &Ops,
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Vec<u8>, Refused> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared
        && len > limit as u64
    {
        return Err(early(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("body of {len} bytes is over the limit of {limit} bytes"),
        ));
    }
    let reserve = declared.map_or(limit, |len| len as usize).max(1);
    let budget = u32::try_from(reserve)
        .ok()
        .and_then(|n| ops.bodies.clone().try_acquire_many_owned(n).ok());
    let Some(_budget) = budget else {
        return Err(early(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "node unavailable: too many request bodies arriving at once; try again",
        ));
    };
    let collect = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit));
    match tokio::time::timeout(SLOW_BODY, collect).await {
        Ok(Ok(collected)) => Ok(Vec::from(collected.to_bytes())),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(early(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("body of more than {limit} bytes is over the limit of {limit} bytes"),
        )),
        Ok(Err(e)) => Err(early(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the body could not be read: {e}"),
        )),
        Err(_) => Err(early(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the body did not arrive within {} s", SLOW_BODY.as_secs()),
        )),
    }
}

fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8], shape: &str) -> Result<T, Refused> {
    serde_json::from_slice(bytes).map_err(|e| {
        early(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the body must be JSON {shape}: {e}"),
        )
    })
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A refusal: the answer to send instead (boxed: a response is large).
type Refused = Box<Response>;

/// Marks a refusal made here, before the request reached the service (which
/// counts its own), so that [`answer`] counts it as the client port would.
#[derive(Clone, Copy)]
struct Early;

fn early(status: StatusCode, kind: &str, message: impl Into<String>) -> Refused {
    let mut r = error(status, kind, message);
    r.extensions_mut().insert(Early);
    Box::new(r)
}

/// A request the service refused or failed (counted by it).
fn refused(e: ApiError) -> Refused {
    Box::new(api_error(&e))
}

/// A request refused here for what the service would also refuse.
fn invalid(e: ApiError) -> Refused {
    let mut r = api_error(&e);
    r.extensions_mut().insert(Early);
    Box::new(r)
}

/// Turns either outcome into the answer, counting the refusals made here.
fn answer(ops: &Ops, r: Result<Response, Refused>) -> Response {
    match r {
        Ok(response) => response,
        Err(refused) => {
            if refused.extensions().get::<Early>().is_some() {
                let stats = &ops.node.stats;
                stats.requests.fetch_add(1, Ordering::Relaxed);
                stats.request_errors.fetch_add(1, Ordering::Relaxed);
            }
            *refused
        }
    }
}

async fn kv_get(State(ops): State<Ops>, request: HttpRequest) -> Response {
    let (parts, _) = request.into_parts();
    answer(&ops, async {
        let req = Request::read(&ops, &parts, "/v1/kv/", Params::Read, Op::Get)?;
        let reply = Kv::get(req.server, context::current(), req.key, req.query.opts)
            .await
            .map_err(refused)?;
        let found = reply.found && !reply.values.is_empty();
        let response = if !found {
            error(StatusCode::NOT_FOUND, "not_found", "key not found")
        } else if let [one] = reply.values.as_slice() {
            (
                [(header::CONTENT_TYPE, "application/octet-stream")],
                one.clone(),
            )
                .into_response()
        } else if wire::accepts_json(&parts.headers) {
            let values: Vec<String> = reply.values.iter().map(|v| b64(v)).collect();
            let body = serde_json::json!({"context": reply.context.to_text(), "values": values});
            (StatusCode::MULTIPLE_CHOICES, axum::Json(body)).into_response()
        } else {
            error(
                StatusCode::CONFLICT,
                "siblings",
                format!(
                    "key has {} siblings: accept application/json to read them all, then write with the context to resolve them",
                    reply.values.len()
                ),
            )
        };
        Ok(with_context(response, &reply.context))
    }
    .await)
}

async fn kv_put(State(ops): State<Ops>, request: HttpRequest) -> Response {
    let (parts, raw) = request.into_parts();
    answer(
        &ops,
        async {
            let req = Request::read(&ops, &parts, "/v1/kv/", Params::Write, Op::Put)?;
            let ctx = wire::request_context(&parts.headers).map_err(invalid)?;
            let limit = ops.node.config().limits.max_value_bytes;
            let value = body(&ops, raw, &parts.headers, limit).await?;
            let written = Kv::put(
                req.server,
                context::current(),
                req.key,
                Blob(value),
                ctx,
                req.query.opts,
            )
            .await
            .map_err(refused)?;
            Ok(with_context(no_content(), &written))
        }
        .await,
    )
}

async fn kv_delete(State(ops): State<Ops>, request: HttpRequest) -> Response {
    let (parts, _) = request.into_parts();
    answer(
        &ops,
        async {
            let req = Request::read(&ops, &parts, "/v1/kv/", Params::Write, Op::Delete)?;
            let ctx = wire::request_context(&parts.headers).map_err(invalid)?;
            let written = Kv::delete(req.server, context::current(), req.key, ctx, req.query.opts)
                .await
                .map_err(refused)?;
            Ok(with_context(no_content(), &written))
        }
        .await,
    )
}

/// A counter's value: an `i128`, written as a JSON integer of any size.
#[derive(serde::Serialize)]
struct CounterValue {
    value: i128,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CounterAdd {
    add: i64,
}

async fn counter_get(State(ops): State<Ops>, request: HttpRequest) -> Response {
    let (parts, _) = request.into_parts();
    answer(
        &ops,
        async {
            let req = Request::read(&ops, &parts, "/v1/counter/", Params::Read, Op::CounterGet)?;
            match Kv::counter_get(req.server, context::current(), req.key, req.query.opts)
                .await
                .map_err(refused)?
            {
                Some(value) => Ok(axum::Json(CounterValue { value }).into_response()),
                None => Ok(error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "counter not found",
                )),
            }
        }
        .await,
    )
}

async fn counter_add(State(ops): State<Ops>, request: HttpRequest) -> Response {
    let (parts, raw) = request.into_parts();
    answer(
        &ops,
        async {
            let req = Request::read(&ops, &parts, "/v1/counter/", Params::Write, Op::CounterAdd)?;
            let bytes = body(&ops, raw, &parts.headers, COUNTER_BODY_LIMIT).await?;
            let shape = r#"{"add": INTEGER}"#;
            // serde would take `[5]` for the struct too: only an object is one.
            let object: serde_json::Value = json_body(&bytes, shape)?;
            if !object.is_object() {
                return Err(early(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("the body must be a JSON object {shape}"),
                ));
            }
            let add: CounterAdd = json_body(&bytes, shape)?;
            let value = Kv::counter_add(
                req.server,
                context::current(),
                req.key,
                add.add,
                req.query.opts,
            )
            .await
            .map_err(refused)?;
            Ok(axum::Json(CounterValue { value }).into_response())
        }
        .await,
    )
}

async fn set_members(State(ops): State<Ops>, request: HttpRequest) -> Response {
    let (parts, _) = request.into_parts();
    answer(
        &ops,
        async {
            let req = Request::read(&ops, &parts, "/v1/set/", Params::Read, Op::SetMembers)?;
            match Kv::set_members(req.server, context::current(), req.key, req.query.opts)
                .await
                .map_err(refused)?
            {
                Some(mut members) => {
                    members.sort();
                    let members: Vec<String> = members.iter().map(|m| b64(m)).collect();
                    Ok(axum::Json(serde_json::json!({ "members": members })).into_response())
                }
                None => Ok(error(StatusCode::NOT_FOUND, "not_found", "set not found")),
            }
        }
        .await,
    )
}

async fn set_add(State(ops): State<Ops>, request: HttpRequest) -> Response {
    let (parts, raw) = request.into_parts();
    answer(
        &ops,
        async {
            let req = Request::read(&ops, &parts, "/v1/set/", Params::Write, Op::SetAdd)?;
            let limit = ops.node.config().limits.max_value_bytes;
            let member = body(&ops, raw, &parts.headers, limit).await?;
            Kv::set_add(
                req.server,
                context::current(),
                req.key,
                member,
                req.query.opts,
            )
            .await
            .map_err(refused)?;
            Ok(no_content())
        }
        .await,
    )
}

async fn set_remove(State(ops): State<Ops>, request: HttpRequest) -> Response {
    let (parts, _) = request.into_parts();
    answer(
        &ops,
        async {
            let req = Request::read(&ops, &parts, "/v1/set/", Params::WriteMember, Op::SetRemove)?;
            let Some(member) = req.query.member else {
                return Err(early(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "say which member to remove: ?member=PERCENT-ENCODED-BYTES",
                ));
            };
            let removed = Kv::set_remove(
                req.server,
                context::current(),
                req.key,
                member,
                req.query.opts,
            )
            .await
            .map_err(refused)?;
            Ok(axum::Json(serde_json::json!({ "removed": removed })).into_response())
        }
        .await,
    )
}
