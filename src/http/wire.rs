//! What the data API reads from and writes to HTTP: keys percent-decoded to bytes,
//! query parameters checked strictly, and every error as one JSON shape with a
//! fitting status (docs/openapi.yaml describes all of it).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::rpc::api::{ApiError, RequestOptions};

/// The causal context travels in this header, both ways.
pub const CONTEXT_HEADER: &str = "x-ringkv-context";

/// Decodes `%XX` escapes to bytes; anything else stays as it is. A `%` not followed
/// by two hex digits is refused rather than guessed at.
pub fn percent_decode(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok().filter(|_| is_hex(h)));
            match hex {
                Some(b) => out.push(b),
                None => {
                    return Err(format!(
                        "bad percent-encoding at byte {i}: '%' must be followed by two hex digits"
                    ));
                }
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn is_hex(h: &str) -> bool {
    h.len() == 2 && h.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What a query string holds: the request options, and the set member of a removal.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// `r`, `w`, `pr`, `pw`, `timeout_ms`.
    pub opts: RequestOptions,
    /// `member` (set removal only).
    pub member: Option<Vec<u8>>,
}

/// Which parameters a route takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Params {
    /// `r`, `pr`, `timeout_ms`.
    Read,
    /// `w`, `pw`, `timeout_ms`.
    Write,
    /// As `Write`, plus `member`.
    WriteMember,
}

/// Parses `query` for a route taking `params`: a parameter the route does not take,
/// given twice, or not a number in range is refused (a typo must not silently
/// leave a default in force).
pub fn parse_query(query: Option<&str>, params: Params) -> Result<Query, ApiError> {
    let mut q = Query::default();
    let bad = |reason: String| ApiError::InvalidOptions { reason };
    let mut seen: Vec<String> = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = String::from_utf8(percent_decode(name).map_err(bad)?)
            .map_err(|_| bad("a parameter name is not UTF-8".into()))?;
        if seen.contains(&name) {
            return Err(bad(format!("parameter {name:?} is given twice")));
        }
        seen.push(name.clone());
        let value = percent_decode(value).map_err(bad)?;
        let number = |max: u64| -> Result<u64, ApiError> {
            std::str::from_utf8(&value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|v| (1..=max).contains(v))
                .ok_or_else(|| bad(format!("{name} must be a whole number from 1 to {max}")))
        };
        let small = |max| number(max).map(|v| Some(v as u8));
        match (name.as_str(), params) {
            ("r", Params::Read) => q.opts.r = small(255)?,
            ("pr", Params::Read) => q.opts.pr = small(255)?,
            ("w", Params::Write | Params::WriteMember) => q.opts.w = small(255)?,
            ("pw", Params::Write | Params::WriteMember) => q.opts.pw = small(255)?,
            ("timeout_ms", _) => q.opts.timeout_ms = Some(number(u64::from(u32::MAX))? as u32),
            ("member", Params::WriteMember) => q.member = Some(value),
            _ => {
                let takes = match params {
                    Params::Read => "r, pr, timeout_ms",
                    Params::Write => "w, pw, timeout_ms",
                    Params::WriteMember => "member, w, pw, timeout_ms",
                };
                return Err(bad(format!(
                    "unknown parameter {name:?} here (this route takes {takes})"
                )));
            }
        }
    }
    Ok(q)
}

/// An error answer: `{"error": kind, "message": ..}` and, for a quorum not reached,
/// what the client needs to decide whether to retry.
pub fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({"error": kind, "message": message.into()});
    (status, axum::Json(body)).into_response()
}

/// The answer to a refused request.
pub fn api_error(e: &ApiError) -> Response {
    let (status, kind) = match e {
        ApiError::EmptyKey => (StatusCode::BAD_REQUEST, "bad_request"),
        ApiError::InvalidContext { .. } => (StatusCode::BAD_REQUEST, "invalid_context"),
        ApiError::InvalidOptions { .. } => (StatusCode::BAD_REQUEST, "invalid_options"),
        ApiError::Membership { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
        ApiError::KeyTooLarge { .. }
        | ApiError::ValueTooLarge { .. }
        | ApiError::ObjectTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        ApiError::WrongKind { .. } => (StatusCode::CONFLICT, "wrong_kind"),
        ApiError::TooManySiblings { .. } => (StatusCode::CONFLICT, "too_many_siblings"),
        ApiError::CounterOverflow { .. } => (StatusCode::CONFLICT, "counter_overflow"),
        ApiError::NotAuthorized { .. } => (StatusCode::FORBIDDEN, "forbidden"),
        ApiError::QuorumNotReached(q) => {
            let body = serde_json::json!({
                "error": "quorum_not_reached",
                "message": e.to_string(),
                "indeterminate": q.indeterminate,
                "required": q.required,
                "succeeded": q.succeeded,
                "attempted": q.attempted,
            });
            return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
        }
        ApiError::Unavailable { .. }
        | ApiError::NotPrimary { .. }
        | ApiError::ShuttingDown { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        ApiError::Corrupt { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "corrupt"),
        ApiError::Storage { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
    };
    error(status, kind, e.to_string())
}

/// Adds the context header to `response`, also an empty one (no causal history:
/// a client may send back whatever it got).
pub fn with_context(mut response: Response, context: &crate::object::Context) -> Response {
    if let Ok(v) = HeaderValue::from_str(&context.to_text()) {
        response.headers_mut().insert(CONTEXT_HEADER, v);
    }
    response
}

/// The context a request sends, if any.
pub fn request_context(
    headers: &axum::http::HeaderMap,
) -> Result<Option<crate::object::Context>, ApiError> {
    let Some(v) = headers.get(CONTEXT_HEADER) else {
        return Ok(None);
    };
    let text = v.to_str().map_err(|_| ApiError::InvalidContext {
        reason: format!("the {CONTEXT_HEADER} header is not ASCII text"),
    })?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    crate::object::Context::from_text(text)
        .map(Some)
        .map_err(|e| ApiError::InvalidContext {
            reason: e.to_string(),
        })
}

/// The token of an `Authorization: Bearer TOKEN` header (the scheme in any case).
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether the client takes JSON for siblings: only a request whose `Accept` names
/// raw bytes and nothing that JSON fits gets 409 instead of 300.
pub fn accepts_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    accept.split(',').any(|part| {
        let media = part.split(';').next().unwrap_or("").trim();
        matches!(media, "application/json" | "application/*" | "*/*" | "")
    }) || !accept.contains("application/octet-stream")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_is_binary_safe_and_strict() {
        assert_eq!(percent_decode("a%2Fb/c").unwrap(), b"a/b/c");
        assert_eq!(percent_decode("%00%ff%FF").unwrap(), vec![0, 255, 255]);
        assert_eq!(percent_decode("plain").unwrap(), b"plain");
        for bad in ["%", "%4", "%zz", "a%g1", "%+1", "%-1"] {
            assert!(percent_decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn queries_take_only_their_routes_parameters() {
        let q = parse_query(Some("r=2&pr=1&timeout_ms=500"), Params::Read).unwrap();
        assert_eq!(
            q.opts,
            RequestOptions {
                r: Some(2),
                pr: Some(1),
                timeout_ms: Some(500),
                ..RequestOptions::default()
            }
        );
        // `+` is a plus, as in keys (RFC 3986), not a form's space.
        let q = parse_query(Some("member=a%00b+c%20&w=3"), Params::WriteMember).unwrap();
        assert_eq!(q.member.as_deref(), Some(&b"a\0b+c "[..]));
        assert_eq!(q.opts.w, Some(3));
        assert_eq!(parse_query(None, Params::Write).unwrap(), Query::default());
        for (bad, params) in [
            ("w=2", Params::Read),
            ("r=2", Params::Write),
            ("r=0", Params::Read),
            ("r=256", Params::Read),
            ("r=-1", Params::Read),
            ("r=two", Params::Read),
            ("r=", Params::Read),
            ("r=1&r=2", Params::Read),
            ("timeout_ms=4294967296", Params::Read),
            ("member=x", Params::Write),
            ("rr=2", Params::Read),
            ("r=%zz", Params::Read),
        ] {
            assert!(
                matches!(
                    parse_query(Some(bad), params),
                    Err(ApiError::InvalidOptions { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn siblings_come_as_json_unless_only_raw_bytes_are_accepted() {
        let mut h = axum::http::HeaderMap::new();
        assert!(accepts_json(&h));
        for (accept, json) in [
            ("application/octet-stream", false),
            ("application/octet-stream, application/json", true),
            ("*/*", true),
            ("application/json;q=0.5", true),
            ("text/plain", true),
        ] {
            h.insert(header::ACCEPT, HeaderValue::from_static(accept));
            assert_eq!(accepts_json(&h), json, "{accept}");
        }
    }

    #[test]
    fn bearer_tokens_are_read_in_any_case_of_the_scheme() {
        let mut h = axum::http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        for (value, token) in [
            ("Bearer rkv_1", Some("rkv_1")),
            ("bearer  rkv_2 ", Some("rkv_2")),
            ("BEARER rkv_3", Some("rkv_3")),
            ("Basic dXNlcg==", None),
            ("rkv_4", None),
        ] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(bearer(&h), token, "{value}");
        }
    }

    #[test]
    fn garbage_contexts_are_refused_and_empty_ones_are_none() {
        let mut h = axum::http::HeaderMap::new();
        assert_eq!(request_context(&h).unwrap(), None);
        h.insert(CONTEXT_HEADER, HeaderValue::from_static(" "));
        assert_eq!(request_context(&h).unwrap(), None);
        for garbage in ["!!!", "AAAA", "not a context"] {
            h.insert(CONTEXT_HEADER, HeaderValue::from_static(garbage));
            assert!(
                matches!(request_context(&h), Err(ApiError::InvalidContext { .. })),
                "{garbage}"
            );
        }
    }
}
