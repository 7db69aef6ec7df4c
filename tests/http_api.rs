//! The HTTP data API against real `ringkv serve` processes: registers with siblings
//! and contexts, counters, sets, malformed requests (each refused with a 4xx and
//! changing nothing), and tokens and TLS on the same port.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Server, code, free_port, run_cli, stderr, stdout};

/// An HTTP answer: status, headers (names in lower case) and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The error kind of a JSON error answer.
    fn kind(&self) -> String {
        self.json()["error"].as_str().unwrap_or("").to_string()
    }
}

fn parse(raw: &[u8]) -> Answer {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// Sends raw bytes (then, if `half_close`, ends the sending side) and reads the
/// answer until the server closes (bounded: 10 s).
fn raw(addr: &str, request: &[u8], half_close: bool) -> Answer {
    let mut s = std::net::TcpStream::connect(addr).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(request).expect("send");
    if half_close {
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    }
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 16 << 10];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    parse(&out)
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: ringkv\r\nConnection: close\r\n");
    for (n, v) in headers {
        r.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "PUT" | "POST") {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn call(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    raw(addr, &request(method, path, headers, body), false)
}

/// A node with its HTTP port on a free port; returns its directory, the node and
/// that port's address.
fn node(extra: &[&str]) -> (tempfile::TempDir, Server, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let http = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["--http-listen", http.as_str()];
    args.extend_from_slice(extra);
    let s = Server::start(dir.path(), &args);
    (dir, s, http)
}

#[test]
fn registers_counters_and_sets_round_trip_with_siblings_and_contexts() {
    let (_dir, s, http) = node(&[]);
    // A key of every byte value, written with every byte escaped and read with
    // only those outside the unreserved set escaped (and '/' raw): the same key.
    let all: String = (0u8..=255).map(|b| format!("%{b:02X}")).collect();
    let some: String = (0u8..=255)
        .map(|b| match b {
            b'/' => "/".to_string(),
            b if b.is_ascii_alphanumeric() => (b as char).to_string(),
            b => format!("%{b:02x}"),
        })
        .collect();
    let value: Vec<u8> = (0u8..=255).rev().collect();
    let put = call(&http, "PUT", &format!("/v1/kv/{all}"), &[], &value);
    assert_eq!(put.status, 204, "{put:?}");
    let got = call(&http, "GET", &format!("/v1/kv/{some}"), &[], b"");
    assert_eq!((got.status, &got.body), (200, &value));
    assert_eq!(got.header("content-type"), Some("application/octet-stream"));
    assert_eq!(
        got.header("x-ringkv-context"),
        put.header("x-ringkv-context")
    );
    // What the path names is what the client port reads: '+' is a plus, %25 a '%'.
    let put = call(&http, "PUT", "/v1/kv/dir/a%20b+c%25zz", &[], b"shared");
    assert_eq!(put.status, 204);
    let out = s.cli(&["get", "dir/a b+c%zz"]);
    assert_eq!(
        (code(&out), stdout(&out).trim()),
        (0, "shared"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        call(&http, "GET", "/v1/kv/dir%2Fa%20b%2Bc%25zz", &[], b"").status,
        200
    );
    assert_eq!(call(&http, "GET", "/v1/kv/dir/a b", &[], b"").status, 400);

    // Keep-alive: two requests on one connection, both answered in order.
    let first = String::from_utf8(request("PUT", "/v1/kv/ka", &[], b"first")).expect("ascii");
    let mut two = first.replacen("Connection: close\r\n", "", 1).into_bytes();
    two.extend(request("GET", "/v1/kv/ka", &[], b""));
    let answers = raw(&http, &two, false);
    let whole = String::from_utf8_lossy(&answers.body).into_owned();
    assert_eq!(answers.status, 204, "{answers:?}");
    assert!(whole.starts_with("HTTP/1.1 200 OK"), "{whole}");
    assert!(whole.ends_with("first"), "{whole}");

    // Two blind writes: siblings, 300 with both, 409 for a client that takes only bytes.
    assert_eq!(call(&http, "PUT", "/v1/kv/s", &[], b"one").status, 204);
    assert_eq!(call(&http, "PUT", "/v1/kv/s", &[], b"two").status, 204);
    let both = call(&http, "GET", "/v1/kv/s", &[], b"");
    assert_eq!(both.status, 300, "{both:?}");
    let j = both.json();
    let mut values: Vec<&str> = j["values"]
        .as_array()
        .expect("values")
        .iter()
        .map(|v| v.as_str().expect("base64"))
        .collect();
    values.sort_unstable();
    assert_eq!(values, ["b25l", "dHdv"]);
    let ctx = both
        .header("x-ringkv-context")
        .expect("context")
        .to_string();
    assert_eq!(j["context"], ctx.as_str());
    let raw_only = call(
        &http,
        "GET",
        "/v1/kv/s",
        &[("Accept", "application/octet-stream")],
        b"",
    );
    assert_eq!(
        (raw_only.status, raw_only.kind().as_str()),
        (409, "siblings")
    );

    // The read's context resolves them; a delete with the next context removes it,
    // and a write with the tombstone's context supersedes the delete.
    let resolved = call(
        &http,
        "PUT",
        "/v1/kv/s",
        &[("X-Ringkv-Context", &ctx)],
        b"three",
    );
    assert_eq!(resolved.status, 204);
    let one = call(&http, "GET", "/v1/kv/s", &[], b"");
    assert_eq!((one.status, one.body.as_slice()), (200, &b"three"[..]));
    let ctx = one.header("x-ringkv-context").expect("context").to_string();
    let del = call(
        &http,
        "DELETE",
        "/v1/kv/s",
        &[("X-Ringkv-Context", &ctx)],
        b"",
    );
    assert_eq!(del.status, 204);
    let gone = call(&http, "GET", "/v1/kv/s", &[], b"");
    assert_eq!((gone.status, gone.kind().as_str()), (404, "not_found"));
    let tomb = gone
        .header("x-ringkv-context")
        .expect("a deleted key's context");
    let again = call(
        &http,
        "PUT",
        "/v1/kv/s",
        &[("X-Ringkv-Context", tomb)],
        b"4",
    );
    assert_eq!(again.status, 204);
    assert_eq!(call(&http, "GET", "/v1/kv/s", &[], b"").status, 200);

    // Counters and sets, and the wrong kind.
    assert_eq!(call(&http, "GET", "/v1/counter/c", &[], b"").status, 404);
    let add = call(&http, "POST", "/v1/counter/c?w=1", &[], br#"{"add": 5}"#);
    assert_eq!((add.status, add.json()["value"].as_i64()), (200, Some(5)));
    let add = call(&http, "POST", "/v1/counter/c", &[], br#"{"add": -7}"#);
    assert_eq!(add.json()["value"].as_i64(), Some(-2));
    let read = call(&http, "GET", "/v1/counter/c?r=1", &[], b"");
    assert_eq!(read.json()["value"].as_i64(), Some(-2));
    let wrong = call(&http, "POST", "/v1/counter/s", &[], br#"{"add": 1}"#);
    assert_eq!((wrong.status, wrong.kind().as_str()), (409, "wrong_kind"));
    assert_eq!(call(&http, "POST", "/v1/set/t", &[], b"a\0b").status, 204);
    assert_eq!(call(&http, "POST", "/v1/set/t", &[], b"c").status, 204);
    let members = call(&http, "GET", "/v1/set/t", &[], b"").json();
    assert_eq!(members, serde_json::json!({"members": ["YQBi", "Yw=="]}));
    assert_eq!(call(&http, "POST", "/v1/set/t", &[], b"x+y").status, 204);
    let removed = call(&http, "DELETE", "/v1/set/t?member=x+y", &[], b"").json();
    assert_eq!(removed, serde_json::json!({"removed": true}));
    let removed = call(&http, "DELETE", "/v1/set/t?member=a%00b", &[], b"").json();
    assert_eq!(removed, serde_json::json!({"removed": true}));
    let absent = call(&http, "DELETE", "/v1/set/t?member=zz", &[], b"").json();
    assert_eq!(absent, serde_json::json!({"removed": false}));
    let members = call(&http, "GET", "/v1/set/t", &[], b"").json();
    assert_eq!(members, serde_json::json!({"members": ["Yw=="]}));
}

#[test]
fn malformed_requests_get_a_4xx_and_change_nothing() {
    let (_dir, s, http) = node(&["--max-value-bytes", "1024"]);
    assert_eq!(call(&http, "PUT", "/v1/kv/k", &[], b"original").status, 204);
    let before = call(&http, "GET", "/v1/kv/k", &[], b"");
    assert_eq!(before.status, 200);
    let unchanged = |what: &str| {
        let now = call(&http, "GET", "/v1/kv/k", &[], b"");
        assert_eq!(
            (
                now.status,
                now.body.as_slice(),
                now.header("x-ringkv-context")
            ),
            (200, &b"original"[..], before.header("x-ringkv-context")),
            "after {what}"
        );
    };

    // Bad percent-encoding, in the key and in the query.
    for path in ["/v1/kv/k%zz", "/v1/kv/k%4", "/v1/kv/%", "/v1/kv/k?w=%zz"] {
        let a = call(&http, "PUT", path, &[], b"bad");
        assert_eq!(a.status, 400, "{path}: {a:?}");
        assert!(matches!(
            a.kind().as_str(),
            "bad_request" | "invalid_options"
        ));
    }
    // Options that are not numbers, or not this route's.
    for path in [
        "/v1/kv/k?w=0",
        "/v1/kv/k?w=x",
        "/v1/kv/k?r=2",
        "/v1/kv/k?w=99",
    ] {
        let a = call(&http, "PUT", path, &[], b"bad");
        assert_eq!(
            (a.status, a.kind().as_str()),
            (400, "invalid_options"),
            "{path}"
        );
    }
    unchanged("bad encodings and options");
    assert_eq!(call(&http, "GET", "/v1/kv/k%25zz", &[], b"").status, 404);

    // A body over the limit: declared, and sent in chunks without a length.
    let big = vec![b'x'; 2000];
    let a = call(&http, "PUT", "/v1/kv/k", &[], &big);
    assert_eq!((a.status, a.kind().as_str()), (413, "too_large"), "{a:?}");
    let mut chunked =
        b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..4 {
        chunked.extend_from_slice(b"1F4\r\n");
        chunked.extend_from_slice(&[b'y'; 500]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let a = raw(&http, &chunked, false);
    assert_eq!((a.status, a.kind().as_str()), (413, "too_large"), "{a:?}");
    unchanged("bodies over the limit");

    // A wrong content length: a body that ends before it, and one that is no number.
    let short =
        b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 100\r\n\r\nonly ten b";
    let a = raw(&http, short, true);
    assert_eq!(a.status, 400, "{a:?}");
    let nonsense =
        b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: ten\r\n\r\n0123456789";
    let a = raw(&http, nonsense, true);
    assert_eq!(a.status, 400, "{a:?}");
    unchanged("wrong content lengths");

    // Garbage and forged contexts.
    for ctx in [
        "garbage!",
        "AAAA",
        "AgEBuJST9dKi_J7PAQFyGBalhnHw2G_tiURN3w7-",
    ] {
        for method in ["PUT", "DELETE"] {
            let a = call(
                &http,
                method,
                "/v1/kv/k",
                &[("X-Ringkv-Context", ctx)],
                b"new",
            );
            assert_eq!(
                (a.status, a.kind().as_str()),
                (400, "invalid_context"),
                "{method} with {ctx}: {a:?}"
            );
        }
    }
    unchanged("garbage contexts");

    // Bodies that are not what the route takes, and methods it does not take.
    for body in [
        &b"five"[..],
        br#"{"add": "5"}"#,
        br#"{"add": 1, "x": 2}"#,
        b"",
    ] {
        let a = call(&http, "POST", "/v1/counter/c", &[], body);
        assert_eq!((a.status, a.kind().as_str()), (400, "bad_request"));
    }
    assert_eq!(call(&http, "GET", "/v1/counter/c", &[], b"").status, 404);
    let a = call(&http, "DELETE", "/v1/set/t", &[], b"");
    assert_eq!((a.status, a.kind().as_str()), (400, "bad_request"));
    let a = call(&http, "PATCH", "/v1/kv/k", &[], b"x");
    assert_eq!(a.status, 405);
    assert_eq!(a.header("allow"), Some("GET, PUT, DELETE"));
    let a = call(&http, "GET", "/v1/nothing", &[], b"");
    assert_eq!((a.status, a.kind().as_str()), (404, "not_found"));
    let a = call(&http, "PUT", "/v1/kv/", &[], b"x");
    assert_eq!((a.status, a.kind().as_str()), (400, "bad_request"));
    let long_key = format!("/v1/kv/{}", "k".repeat(2000));
    let a = call(&http, "PUT", &long_key, &[], b"x");
    assert_eq!((a.status, a.kind().as_str()), (413, "too_large"));
    unchanged("wrong bodies and methods");

    // Refusals made before the service are counted as the client port counts its
    // own: one request and one error each.
    let stats = || {
        let out = s.cli(&["status", "--json"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let j = common::json(&out);
        (
            j["stats"]["requests"].as_u64().expect("requests"),
            j["stats"]["request_errors"].as_u64().expect("errors"),
        )
    };
    let before = stats();
    for (method, path, headers) in [
        ("PUT", "/v1/kv/k%zz", vec![]),
        ("GET", "/v1/kv/k?w=1", vec![]),
        ("PUT", "/v1/kv/k", vec![("X-Ringkv-Context", "!!")]),
    ] {
        assert_eq!(call(&http, method, path, &headers, b"x").status, 400);
    }
    let after = stats();
    assert_eq!((after.0 - before.0, after.1 - before.1), (3, 3));
}

fn token(role: &str, name: &str) -> (String, String) {
    let out = run_cli(&["token", "create", "--role", role, "--name", name], None);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    (
        lines.next().expect("token").to_string(),
        lines.next().expect("auth line").to_string(),
    )
}

/// Sends `request` over TLS (the CA in `pki`) and reads the answer.
fn tls_raw(addr: &str, pki: &Path, request: &[u8]) -> std::io::Result<Answer> {
    let dial = ringkv::tls::DialTls::client(&ringkv::tls::ClientTlsFiles {
        ca: pki.join("ca.crt"),
        identity: None,
    })
    .expect("client tls");
    let sock: std::net::SocketAddr = addr.parse().expect("addr");
    common::runtime().block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect(sock).await?;
        let mut s = tokio::time::timeout(Duration::from_secs(10), dial.connect(tcp, sock, None))
            .await
            .map_err(|_| std::io::Error::other("handshake timed out"))??;
        s.write_all(request).await?;
        let mut out = Vec::new();
        // A server closing without close_notify is an error to rustls after the
        // bytes, which are what counts here.
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        if read.is_err() {
            return Err(std::io::Error::other("read timed out"));
        }
        Ok(parse(&out))
    })
}

#[test]
fn tokens_and_tls_guard_the_data_api_on_the_same_port() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki = root.path().join("pki");
    let d = pki.to_str().expect("utf-8");
    for args in [
        vec!["certs", "init", "--dir", d],
        vec!["certs", "node", "node", "--dir", d],
    ] {
        let out = run_cli(&args, None);
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
    }
    let (writer, w_line) = token("write", "app");
    let (reader, r_line) = token("read", "dash");
    let auth = root.path().join("auth");
    std::fs::write(&auth, format!("{w_line}\n{r_line}\n")).expect("auth");
    let p = |f: &str| pki.join(f).to_string_lossy().into_owned();
    let (cert, key, ca) = (p("node.crt"), p("node.key"), p("ca.crt"));
    let auth_path = auth.to_string_lossy().into_owned();
    let client = vec![
        "--tls-ca".to_string(),
        ca.clone(),
        "--token".into(),
        writer.clone(),
    ];
    let http = format!("127.0.0.1:{}", free_port());
    let dir = root.path().join("n1");
    std::fs::create_dir_all(&dir).expect("dir");
    let addr = format!("127.0.0.1:{}", free_port());
    let _s = Server::start_secure(
        &dir,
        &addr,
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-ca",
            &ca,
            "--auth-file",
            &auth_path,
            "--http-listen",
            &http,
        ],
        &client,
    );
    let bearer = |t: &str| format!("Bearer {t}");

    // Plaintext: probes and metrics as before; data refused, even with a good token.
    assert_eq!(call(&http, "GET", "/readyz", &[], b"").status, 200);
    assert_eq!(call(&http, "GET", "/metrics", &[], b"").status, 200);
    let w = bearer(&writer);
    let a = call(&http, "PUT", "/v1/kv/k", &[("Authorization", &w)], b"v");
    assert_eq!((a.status, a.kind().as_str()), (403, "tls_required"));

    // HTTPS on the same port: the token rules of the client port.
    let put = |auth: Option<&str>| {
        let mut h = vec![];
        let line;
        if let Some(t) = auth {
            line = bearer(t);
            h.push(("Authorization", line.as_str()));
        }
        tls_raw(&http, &pki, &request("PUT", "/v1/kv/k", &h, b"secret")).expect("https")
    };
    let a = put(None);
    assert_eq!((a.status, a.kind().as_str()), (401, "unauthorized"));
    assert_eq!(a.header("www-authenticate"), Some("Bearer"));
    assert_eq!(put(Some("rkv_unknown")).status, 401);
    let a = put(Some(&reader));
    assert_eq!((a.status, a.kind().as_str()), (403, "forbidden"), "{a:?}");
    let read = |t: &str| {
        let line = bearer(t);
        tls_raw(
            &http,
            &pki,
            &request("GET", "/v1/kv/k", &[("Authorization", &line)], b""),
        )
        .expect("https")
    };
    assert_eq!(
        read(&reader).status,
        404,
        "the read token's PUT stored nothing"
    );
    // The role is checked before anything else of the request, as on the client
    // port: before the context, and before a body of 5 MiB is even sent.
    let r = bearer(&reader);
    let a = tls_raw(
        &http,
        &pki,
        &request(
            "PUT",
            "/v1/kv/k",
            &[("Authorization", &r), ("X-Ringkv-Context", "garbage!")],
            b"value",
        ),
    )
    .expect("https");
    assert_eq!((a.status, a.kind().as_str()), (403, "forbidden"), "{a:?}");
    let head = format!(
        "PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {r}\r\nContent-Length: {}\r\n\r\n",
        5 << 20
    );
    let a = tls_raw(&http, &pki, head.as_bytes()).expect("https");
    assert_eq!((a.status, a.kind().as_str()), (403, "forbidden"), "{a:?}");
    let lower = format!("bearer {reader}");
    let a = tls_raw(
        &http,
        &pki,
        &request("GET", "/v1/kv/k", &[("Authorization", &lower)], b""),
    )
    .expect("https");
    assert_eq!(a.status, 404, "the scheme's case does not matter: {a:?}");
    assert_eq!(put(Some(&writer)).status, 204);
    let a = read(&reader);
    assert_eq!((a.status, a.body.as_slice()), (200, &b"secret"[..]));
    let probe = tls_raw(&http, &pki, &request("GET", "/readyz", &[], b"")).expect("https");
    assert_eq!(probe.status, 200);

    // What the HTTP answer wrote, the client port reads.
    let out = _s.cli(&["get", "k"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("secret"), "{}", stdout(&out));
}
