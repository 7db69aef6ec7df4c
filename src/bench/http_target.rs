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
    conn: Arc<tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>>,
}

impl HttpTarget {
    /// A target at `addr` (`IP:PORT` of `--http-listen`) with the run's options.
    pub fn new(addr: &str, r: Option<u8>, w: Option<u8>, timeout: Duration) -> HttpTarget {
        let ms = timeout.as_millis().clamp(1, u128::from(u32::MAX));
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
    /// reads the whole answer, within the run's deadline.
    async fn send(
        &self,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<(hyper::StatusCode, hyper::HeaderMap, Bytes), ClientError> {
        let exchange = async {
            let mut conn = self.conn.lock().await;
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
            let answer = match sender.send_request(request).await {
                Ok(a) => a,
                Err(e) => {
                    *conn = None;
                    return Err(self.unavailable(e));
                }
            };
            let (parts, body) = answer.into_parts();
            let body = http_body_util::Limited::new(body, MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| self.unavailable(e))?
                .to_bytes();
            Ok((parts.status, parts.headers, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| self.unavailable("request timed out"))?
    }

    /// An error answer as the bench counts it: its kind and message.
    fn refused(&self, status: hyper::StatusCode, body: &[u8]) -> ClientError {
        let text = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .map(|j| format!("{}: {}", j["error"], j["message"]))
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
        self.unavailable(format!("HTTP {status}: {text}"))
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
