//! The bench's HTTP target: YCSB reads and writes through the data API
//! (`GET`/`PUT /v1/kv/{key}`), one keep-alive HTTP/1.1 connection per worker, so
//! the same workload can be measured over HTTP and over the client port.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::driver::Target;
use crate::client::{ClientError, GetResult};
use crate::object::Context;
use crate::object::Kind;
use crate::rpc::api::ApiError;

/// Largest answer read (a value of the node's largest size, as siblings in base64).
const MAX_ANSWER: usize = 64 << 20;

/// One worker's connection to a node's HTTP port (plaintext).
#[derive(Clone)]
pub struct HttpTarget {
    addr: String,
    timeout: Duration,
    /// `?r=..&w=..` of the run, ready to append.
    read_query: String,
    write_query: String,
    /// `Bearer TOKEN` for a node with an auth file.
    authorization: Option<String>,
    conn: Arc<tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>>,
}

impl HttpTarget {
    /// A target at `addr` (`IP:PORT` of `--http-listen`) with the run's options.
    pub fn new(
        addr: &str,
        r: Option<u8>,
        w: Option<u8>,
        timeout: Duration,
        token: Option<&str>,
    ) -> HttpTarget {
        // As the client port's client does: the node gets 90 % of the deadline, so
        // its own answer (a quorum not reached, with the detail) arrives first.
        let ms = (timeout.as_millis() * 9 / 10).clamp(1, u128::from(u32::MAX));
        HttpTarget {
            addr: addr.to_string(),
            timeout,
            read_query: match r {
                Some(r) => format!("?r={r}&timeout_ms={ms}"),
                None => format!("?timeout_ms={ms}"),
            },
            write_query: match w {
                Some(w) => format!("?w={w}&timeout_ms={ms}"),
                None => format!("?timeout_ms={ms}"),
            },
            authorization: token.map(|t| format!("Bearer {t}")),
            conn: Arc::default(),
        }
    }

    fn unavailable(&self, reason: impl std::fmt::Display) -> ClientError {
        ClientError::Unavailable {
            addr: self.addr.clone(),
            reason: reason.to_string(),
        }
    }

    /// Sends one request on the worker's connection (dialled again if it broke) and
    /// reads the whole answer, within the run's deadline. After any failure the
    /// connection is dropped: hyper may still be closing it, and the next request
    /// must not fail for that.
    async fn send(
        &self,
        mut request: hyper::Request<Full<Bytes>>,
    ) -> Result<(hyper::StatusCode, hyper::HeaderMap, Bytes), ClientError> {
        if let Some(a) = &self.authorization
            && let Ok(v) = hyper::header::HeaderValue::from_str(a)
        {
            request
                .headers_mut()
                .insert(hyper::header::AUTHORIZATION, v);
        }
        let mut conn = self.conn.lock().await;
        let exchange = async {
            if conn.as_ref().is_none_or(|c| c.is_closed()) {
                let tcp = tokio::net::TcpStream::connect(&self.addr)
                    .await
                    .map_err(|e| ClientError::Connect {
                        addr: self.addr.clone(),
                        reason: e.to_string(),
                    })?;
                let _ = tcp.set_nodelay(true);
                let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|e| self.unavailable(e))?;
                tokio::spawn(connection);
                *conn = Some(sender);
            }
            let sender = conn.as_mut().expect("connected above");
            sender.ready().await.map_err(|e| self.unavailable(e))?;
            let answer = sender
                .send_request(request)
                .await
                .map_err(|e| self.unavailable(e))?;
            let (parts, body) = answer.into_parts();
            let body = http_body_util::Limited::new(body, MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| self.unavailable(e))?
                .to_bytes();
            Ok((parts.status, parts.headers, body))
        };
        let outcome = tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(self.unavailable("request timed out")));
        if outcome.is_err() {
            *conn = None;
        }
        outcome
    }

    /// An error answer as the bench counts it: the API's error of its kind, so the
    /// error breakdown reads as the client port's.
    fn refused(&self, status: hyper::StatusCode, body: &[u8]) -> ClientError {
        let j: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let kind = j["error"].as_str().unwrap_or("");
        let reason = j["message"]
            .as_str()
            .map_or_else(|| format!("HTTP {status}"), str::to_string);
        match kind {
            "unauthorized" | "forbidden" | "tls_required" => ClientError::NotAuthorized {
                addr: self.addr.clone(),
                reason,
            },
            "quorum_not_reached" | "unavailable" => self.unavailable(reason),
            "too_large" => ClientError::Api(ApiError::ValueTooLarge { size: 0, limit: 0 }),
            "wrong_kind" => {
                let stored = if reason.contains("holds a set") {
                    Kind::Set
                } else {
                    Kind::Counter
                };
                ClientError::Api(ApiError::WrongKind {
                    stored,
                    requested: Kind::Register,
                })
            }
            "too_many_siblings" => {
                ClientError::Api(ApiError::TooManySiblings { count: 0, limit: 0 })
            }
            "invalid_context" => ClientError::Api(ApiError::InvalidContext { reason }),
            "storage" | "corrupt" => ClientError::Api(ApiError::Storage { reason }),
            _ => ClientError::Api(ApiError::InvalidOptions {
                reason: format!("HTTP {status}: {reason}"),
            }),
        }
    }
}

fn context_of(headers: &hyper::HeaderMap) -> Result<Context, String> {
    match headers
        .get("x-ringkv-context")
        .and_then(|v| v.to_str().ok())
    {
        None => Ok(Context::empty()),
        Some(text) => Context::from_text(text).map_err(|e| e.to_string()),
    }
}

/// Percent-encodes every byte outside RFC 3986's unreserved set.
pub fn encode_key(key: &[u8]) -> String {
    let mut out = String::with_capacity(key.len());
    for &b in key {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Target for HttpTarget {
    async fn read(&self, key: &[u8]) -> Result<GetResult, ClientError> {
        let request = hyper::Request::get(format!("/v1/kv/{}{}", encode_key(key), self.read_query))
            .header(hyper::header::HOST, &self.addr)
            .body(Full::new(Bytes::new()))
            .map_err(|e| self.unavailable(e))?;
        let (status, headers, body) = self.send(request).await?;
        let context = context_of(&headers).map_err(|e| self.unavailable(e))?;
        let siblings = match status.as_u16() {
            200 => vec![body.to_vec()],
            404 => Vec::new(),
            300 => {
                let j: serde_json::Value =
                    serde_json::from_slice(&body).map_err(|e| self.unavailable(e))?;
                j["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str())
                    .map(|v| base64::engine::general_purpose::STANDARD.decode(v))
                    .collect::<Result<_, _>>()
                    .map_err(|e| self.unavailable(e))?
            }
            _ => return Err(self.refused(status, &body)),
        };
        Ok(GetResult { siblings, context })
    }

    async fn write(
        &self,
        key: &[u8],
        value: &[u8],
        context: Option<&Context>,
    ) -> Result<Context, ClientError> {
        let mut request =
            hyper::Request::put(format!("/v1/kv/{}{}", encode_key(key), self.write_query))
                .header(hyper::header::HOST, &self.addr);
        if let Some(c) = context.filter(|c| !c.is_empty()) {
            request = request.header("x-ringkv-context", c.to_text());
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(value)))
            .map_err(|e| self.unavailable(e))?;
        let (status, headers, body) = self.send(request).await?;
        if status != hyper::StatusCode::NO_CONTENT {
            return Err(self.refused(status, &body));
        }
        context_of(&headers).map_err(|e| self.unavailable(e))
    }
}

/// One read and one write with the run's options, so a node that refuses them
/// (`--r` above N, TLS required) fails the bench at once instead of every operation.
pub async fn preflight(target: &HttpTarget) -> Result<(), super::BenchError> {
    let key = b"ringkv-bench-preflight";
    let refused = |source| super::BenchError::Refused { source };
    let read = target.read(key).await.map_err(refused)?;
    target
        .write(key, b"ok", Some(&read.context))
        .await
        .map_err(refused)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_encoded_outside_the_unreserved_set() {
        assert_eq!(encode_key(b"user000000000042"), "user000000000042");
        assert_eq!(encode_key(b"a/b c\0~"), "a%2Fb%20c%00~");
        assert_eq!(
            crate::http::percent_decode(&encode_key(&[0, 255, b'%'])),
            Ok(vec![0, 255, b'%'])
        );
    }
}
