//! TLS, tokens and secure defaults against real `ringkv serve` processes on
//! 127.0.0.1: every refusal (no token, an unknown one, a role too small, plaintext
//! to a TLS node, a CA the client does not trust, an expired certificate, a
//! non-loopback address without TLS) with its one line and exit code, and none of
//! them touching stored data; peers over mutual TLS; files reloaded in place.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Cluster, Server, code, free_port, run_cli, stderr, stdout};

/// The cluster's CA, a node certificate for 127.0.0.1 and a client certificate,
/// made by `ringkv certs`.
fn pki(dir: &Path) -> PathBuf {
    let d = dir.to_str().expect("utf-8");
    for args in [
        vec!["certs", "init", "--dir", d],
        vec!["certs", "node", "node", "--dir", d],
        vec!["certs", "client", "app", "--dir", d],
    ] {
        let out = run_cli(&args, None);
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
    }
    dir.join("ca.crt")
}

/// A new token of `role`: the token, and its auth-file line.
fn token(role: &str, name: &str) -> (String, String) {
    let out = run_cli(&["token", "create", "--role", role, "--name", name], None);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    let t = lines.next().expect("token line").to_string();
    let line = lines.next().expect("auth line").to_string();
    assert!(t.starts_with("rkv_"), "{t}");
    assert!(line.starts_with(&format!("{name} {role} ")), "{line}");
    (t, line)
}

fn tls_flags(pki: &Path) -> Vec<String> {
    let p = |f: &str| pki.join(f).to_string_lossy().into_owned();
    vec![
        "--tls-cert".into(),
        p("node.crt"),
        "--tls-key".into(),
        p("node.key"),
        "--tls-ca".into(),
        p("ca.crt"),
    ]
}

/// A node in `root/n1` with TLS from `root/pki`, the auth file `auth` and its HTTP
/// port at `http`; its client commands get the CA and `token`. Returns it and its
/// address.
fn secure_node(root: &Path, auth: &Path, http: &str, token: &str) -> (Server, String) {
    let mut extra = tls_flags(&root.join("pki"));
    extra.extend(["--auth-file".into(), auth.to_string_lossy().into_owned()]);
    extra.extend(["--http-listen".into(), http.to_string()]);
    let ca = root.join("pki/ca.crt").to_string_lossy().into_owned();
    let client = vec![
        "--tls-ca".to_string(),
        ca,
        "--token".into(),
        token.to_string(),
    ];
    let refs: Vec<&str> = extra.iter().map(String::as_str).collect();
    let dir = root.join("n1");
    std::fs::create_dir_all(&dir).expect("dir");
    let addr = format!("127.0.0.1:{}", free_port());
    (Server::start_secure(&dir, &addr, &refs, &client), addr)
}

fn http_get(addr: &str, path: &str, bearer: Option<&str>) -> (u16, String) {
    let r = common::docker::http_get_as(addr, path, Duration::from_secs(5), bearer)
        .unwrap_or_else(|e| panic!("{e}"));
    (r.status, r.text())
}

fn metric(http: &str, line_start: &str) -> Option<f64> {
    let (_, body) = http_get(http, "/metrics", None);
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn flags(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A one-line refusal with `exit`, whose text contains `wanted`.
fn refused(out: &std::process::Output, exit: i32, wanted: &str) {
    let err = stderr(out);
    assert_eq!(code(out), exit, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(wanted), "wanted {wanted:?} in {err}");
}

#[test]
fn every_credential_refusal_says_why_exits_5_and_changes_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let ca = pki(&root.path().join("pki"));
    let (writer, w_line) = token("write", "ci");
    let (reader, r_line) = token("read", "dash");
    let (admin, a_line) = token("admin", "ops");
    let auth = root.path().join("auth");
    std::fs::write(&auth, format!("# tokens\n{w_line}\n{r_line}\n{a_line}\n")).expect("auth");
    let http = format!("127.0.0.1:{}", free_port());
    let ca_s = ca.to_string_lossy().into_owned();
    let (s, addr) = secure_node(root.path(), &auth, &http, &writer);
    assert_eq!(code(&s.cli(&["put", "k", "kept"])), 0);

    let as_with = |args: &[&str], flags: &[&str]| {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--connect", &addr]);
        full.extend(flags);
        run_cli(&full, None)
    };
    let tls = ["--tls-ca", ca_s.as_str()];
    // No token, an unknown one, a role too small: exit 5, one line each.
    refused(
        &as_with(&["put", "k", "x"], &tls),
        5,
        "this node needs a token",
    );
    let unknown = format!("rkv_{}", "0".repeat(64));
    let with = |t: &str| [tls[0], tls[1], "--token", t].map(str::to_string);
    refused(
        &as_with(&["put", "k", "x"], &flags(&with(&unknown))),
        5,
        "token not recognized",
    );
    refused(
        &as_with(&["put", "k", "x"], &flags(&with(&reader))),
        5,
        "token \"dash\" has role read; put needs write",
    );
    refused(
        &as_with(&["delete", "k"], &flags(&with(&reader))),
        5,
        "delete needs write",
    );
    refused(
        &as_with(&["counter", "add", "c", "1"], &flags(&with(&reader))),
        5,
        "counter_add needs write",
    );
    refused(
        &as_with(&["repair"], &flags(&with(&writer))),
        5,
        "repair needs admin",
    );
    refused(
        &as_with(&["drain"], &flags(&with(&writer))),
        5,
        "drain needs admin",
    );
    refused(
        &as_with(&["remove", "nobody"], &flags(&with(&writer))),
        5,
        "remove needs admin",
    );
    // The environment works as the flags do.
    let mut cmd = std::process::Command::new(common::bin());
    cmd.args(["put", "k", "x", "--connect", &addr])
        .env("RINGKV_TLS_CA", &ca)
        .env("RINGKV_TOKEN", &reader);
    let out = cmd.output().expect("run");
    refused(&out, 5, "put needs write");
    // Plaintext to a TLS node, with or without a token.
    refused(
        &as_with(&["get", "k"], &["--token", &reader]),
        5,
        "this node takes TLS connections only",
    );
    // A CA that did not sign the node's certificate.
    let stranger = pki(&root.path().join("other"));
    let foreign = stranger.to_string_lossy().into_owned();
    refused(
        &as_with(&["get", "k", "--token", &reader], &["--tls-ca", &foreign]),
        5,
        "UnknownIssuer",
    );
    // A name the certificate lacks (the node's is valid for node, localhost, 127.0.0.1).
    let port = addr.rsplit(':').next().expect("port");
    let out = run_cli(
        &[
            "get",
            "k",
            "--connect",
            &format!("127.0.0.2:{port}"),
            "--tls-ca",
            &ca_s,
            "--token",
            &reader,
        ],
        None,
    );
    assert_ne!(code(&out), 0, "{}", stderr(&out));
    // The reader may read, the admin may repair.
    let out = as_with(&["get", "k"], &flags(&with(&reader)));
    assert_eq!(
        (code(&out), stdout(&out).trim().to_string()),
        (0, "kept".to_string()),
        "{}",
        stderr(&out)
    );
    assert_eq!(code(&as_with(&["repair"], &flags(&with(&admin)))), 0);
    assert_eq!(code(&as_with(&["status"], &flags(&with(&reader)))), 0);
    // HTTP: the health endpoint needs a token, probes and metrics do not.
    assert_eq!(http_get(&http, "/v1/cluster/health", None).0, 401);
    assert_eq!(http_get(&http, "/v1/cluster/health", Some(&unknown)).0, 401);
    assert_eq!(http_get(&http, "/v1/cluster/health", Some(&reader)).0, 200);
    assert_eq!(http_get(&http, "/readyz", None).0, 200);
    // Failures are counted by kind; the certificate's expiry is exported.
    assert!(
        metric(
            &http,
            "ringkv_client_auth_failures_total{reason=\"missing\"}"
        )
        .unwrap_or(0.0)
            >= 2.0
    );
    assert!(
        metric(
            &http,
            "ringkv_client_auth_failures_total{reason=\"unknown\"}"
        )
        .unwrap_or(0.0)
            >= 2.0
    );
    assert!(
        metric(&http, "ringkv_client_auth_failures_total{reason=\"role\"}").unwrap_or(0.0) >= 6.0
    );
    assert!(metric(&http, "ringkv_tls_refused_total").unwrap_or(0.0) >= 1.0);
    let expiry = metric(
        &http,
        "ringkv_tls_cert_expiry_timestamp_seconds{kind=\"node\"}",
    )
    .expect("expiry");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(expiry > now + 300.0 * 86_400.0, "{expiry}");
    // None of the refusals touched the data.
    let out = as_with(&["get", "k"], &flags(&with(&reader)));
    assert_eq!(stdout(&out).trim(), "kept");
    let out = as_with(&["counter", "get", "c"], &flags(&with(&reader)));
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    // An admin token drains the node.
    assert_eq!(code(&as_with(&["drain"], &flags(&with(&admin)))), 0);
    let mut s = s;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = s.child.try_wait().expect("wait") {
            break st;
        }
        assert!(Instant::now() < deadline, "drained node did not exit");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success());
}

#[test]
fn an_expired_certificate_is_refused_by_clients_and_files_reload_without_a_restart() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki_dir = root.path().join("pki");
    let ca = pki(&pki_dir);
    let (first, line) = token("write", "first");
    let auth = root.path().join("auth");
    std::fs::write(&auth, format!("{line}\n")).expect("auth");
    let http = format!("127.0.0.1:{}", free_port());
    let ca_s = ca.to_string_lossy().into_owned();
    let (s, addr) = secure_node(root.path(), &auth, &http, &first);
    assert_eq!(code(&s.cli(&["put", "k", "v"])), 0);
    let before = metric(
        &http,
        "ringkv_tls_cert_expiry_timestamp_seconds{kind=\"node\"}",
    )
    .expect("expiry");

    // A second token, appended: in force within a few seconds, no restart.
    let (second, line2) = token("read", "second");
    let mut text = std::fs::read_to_string(&auth).expect("read");
    text.push_str(&format!("{line2}\n"));
    std::fs::write(&auth, text).expect("append");
    let get = |t: &str| {
        run_cli(
            &[
                "get",
                "k",
                "--connect",
                &addr,
                "--tls-ca",
                &ca_s,
                "--token",
                t,
            ],
            None,
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while code(&get(&second)) != 0 {
        assert!(Instant::now() < deadline, "the new token never worked");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A broken auth file keeps the tokens in force and is counted.
    std::fs::write(&auth, "garbage\n").expect("break");
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&http, "ringkv_config_reload_failures_total{file=\"auth\"}").unwrap_or(0.0) < 1.0 {
        assert!(Instant::now() < deadline, "the broken file was not noticed");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(code(&get(&second)), 0);

    // The node certificate replaced by an expired one (written aside, renamed in
    // as a Secret update would): clients refuse the node, and say why.
    let aside = root.path().join("aside");
    std::fs::create_dir_all(&aside).expect("aside");
    for f in ["ca.crt", "ca.key"] {
        std::fs::copy(pki_dir.join(f), aside.join(f)).expect("copy");
    }
    let ca_pem = std::fs::read_to_string(aside.join("ca.crt")).expect("ca");
    let ca_key = std::fs::read_to_string(aside.join("ca.key")).expect("ca key");
    let hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let expired = ringkv::tls::issue::signed(
        &ca_pem,
        &ca_key,
        ringkv::tls::issue::Holder::Node,
        "node",
        &hosts,
        -3,
    )
    .expect("expired");
    std::fs::write(aside.join("node.crt"), &expired.cert_pem).expect("write");
    std::fs::write(aside.join("node.key"), &expired.key_pem).expect("write");
    std::fs::rename(aside.join("node.key"), pki_dir.join("node.key")).expect("rename");
    std::fs::rename(aside.join("node.crt"), pki_dir.join("node.crt")).expect("rename");
    // SIGHUP: read at once.
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &s.child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = metric(
            &http,
            "ringkv_tls_cert_expiry_timestamp_seconds{kind=\"node\"}",
        )
        .expect("expiry");
        if now < before - 86_400.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not loaded"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    refused(&get(&first), 5, "expired");
    // A fresh certificate again: served again, the data as it was.
    let fresh = ringkv::tls::issue::signed(
        &ca_pem,
        &ca_key,
        ringkv::tls::issue::Holder::Node,
        "node",
        &hosts,
        30,
    )
    .expect("fresh");
    std::fs::write(aside.join("node.crt"), &fresh.cert_pem).expect("write");
    std::fs::write(aside.join("node.key"), &fresh.key_pem).expect("write");
    std::fs::rename(aside.join("node.key"), pki_dir.join("node.key")).expect("rename");
    std::fs::rename(aside.join("node.crt"), pki_dir.join("node.crt")).expect("rename");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = get(&first);
        if code(&out) == 0 {
            assert_eq!(stdout(&out).trim(), "v");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never served again: {}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A token taken out of the auth file stops the connections already using it.
    let rt = common::runtime();
    let credentials = ringkv::Credentials {
        token: Some(first.clone()),
        tls: Some(
            ringkv::tls::DialTls::client(&ringkv::tls::ClientTlsFiles {
                ca: ca.clone(),
                identity: None,
            })
            .expect("client tls"),
        ),
    };
    let client = rt
        .block_on(ringkv::Client::connect_as(&addr, &credentials))
        .expect("connect");
    assert!(rt.block_on(client.get(b"k")).expect("get").is_found());
    std::fs::write(&auth, format!("{line2}\n")).expect("revoke");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match rt.block_on(client.get(b"k")) {
            Err(ringkv::ClientError::Api(ringkv::rpc::api::ApiError::NotAuthorized { reason })) => {
                assert!(reason.contains("no longer in the auth file"), "{reason}");
                break;
            }
            other => assert!(
                Instant::now() < deadline,
                "still served after the revocation: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn peers_talk_mutual_tls_and_a_node_of_another_ca_gets_no_data() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki_dir = root.path().join("pki");
    let ca = pki(&pki_dir);
    let (admin, line) = token("admin", "ops");
    let auth = root.path().join("auth");
    std::fs::write(&auth, format!("{line}\n")).expect("auth");
    let mut extra = tls_flags(&pki_dir);
    extra.extend(["--auth-file".into(), auth.to_string_lossy().into_owned()]);
    extra.extend([
        "--n".into(),
        "3".into(),
        "--w".into(),
        "3".into(),
        "--r".into(),
        "3".into(),
    ]);
    let client = vec![
        "--tls-ca".to_string(),
        ca.to_string_lossy().into_owned(),
        "--token".into(),
        admin.clone(),
    ];
    let refs: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut c = Cluster::start_secure(3, &refs, &client);
    c.wait_converged(&[0, 1, 2], 3);
    // W=3 and R=3: every write and read crosses peer connections, all TLS.
    for i in 0..20 {
        let out = c.nodes[i % 3].cli(&["put", &format!("k{i}"), "v"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    for i in 0..20 {
        let out = c.nodes[(i + 1) % 3].cli(&["get", &format!("k{i}")]);
        assert_eq!(stdout(&out).trim(), "v", "{}", stderr(&out));
    }
    // A fourth node with the right secret but another CA's certificate. Gossip
    // (UDP, sealed with the secret) lets it in, but every peer connection it
    // opens or is offered fails TLS: nothing it coordinates reaches a replica.
    let other = root.path().join("other");
    pki(&other);
    c.extra = {
        let mut e = tls_flags(&other);
        e.extend(["--auth-file".into(), auth.to_string_lossy().into_owned()]);
        e
    };
    c.client = vec![
        "--tls-ca".to_string(),
        other.join("ca.crt").to_string_lossy().into_owned(),
        "--token".into(),
        admin.clone(),
    ];
    let i = c.add();
    let out = c.nodes[i].cli(&["put", "stranger", "x", "--w", "3", "--timeout-ms", "3000"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(0..3).any(|j| c.nodes[j].log_text().contains("TLS handshake failed")) {
        assert!(
            Instant::now() < deadline,
            "no member logged a refused handshake"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for j in 0..3 {
        let out = c.nodes[j].cli(&["get", "stranger", "--local"]);
        assert_eq!(code(&out), 1, "n{}: {}", j + 1, stdout(&out));
    }
}

#[test]
fn a_node_reachable_beyond_loopback_needs_tls_and_tokens_unless_insecure() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki_dir = root.path().join("pki");
    pki(&pki_dir);
    let (_, line) = token("admin", "ops");
    let auth = root.path().join("auth");
    std::fs::write(&auth, format!("{line}\n")).expect("auth");
    let auth_s = auth.to_string_lossy().into_owned();
    let tls = tls_flags(&pki_dir);
    let check = |extra: &[String]| {
        let mut args = vec!["serve", "--check-config", "--listen", "0.0.0.0:7400"];
        args.extend(extra.iter().map(String::as_str));
        run_cli(&args, None)
    };
    refused(
        &check(&[]),
        2,
        "refusing to serve 0.0.0.0:7400 without TLS (--tls-cert, --tls-key, --tls-ca) and an auth file (--auth-file)",
    );
    refused(&check(&tls), 2, "without an auth file");
    refused(
        &check(&["--auth-file".into(), auth_s.clone()]),
        2,
        "without TLS",
    );
    let mut both = tls.clone();
    both.extend(["--auth-file".into(), auth_s]);
    assert_eq!(code(&check(&both)), 0);
    assert_eq!(code(&check(&["--insecure".into()])), 0);
    refused(
        &check(&tls[..2]),
        2,
        "--tls-cert, --tls-key and --tls-ca go together",
    );
    // Loopback stays as easy as it was.
    let out = run_cli(
        &["serve", "--check-config", "--listen", "127.0.0.1:7400"],
        None,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Raises this process's soft limit of open files (5,000 sockets).
fn raise_open_files() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reads and writes only the struct given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl), 0);
        rl.rlim_cur = rl.rlim_max.min(65_536);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &rl), 0);
    }
}

#[test]
fn a_flood_of_silent_and_half_open_connections_locks_out_neither_peers_nor_clients() {
    raise_open_files();
    let root = tempfile::tempdir().expect("tempdir");
    let (writer, line) = token("write", "app");
    let auth = root.path().join("auth");
    std::fs::write(&auth, format!("{line}\n")).expect("auth");
    let http = format!("127.0.0.1:{}", free_port());
    let auth_s = auth.to_string_lossy().into_owned();
    let extra = [
        "--auth-file",
        auth_s.as_str(),
        "--n",
        "2",
        "--w",
        "2",
        "--http-listen",
        http.as_str(),
    ];
    let client = vec!["--token".to_string(), writer.clone()];
    let mut c = Cluster::start_secure(1, &extra, &client);
    c.extra.truncate(c.extra.len() - 2); // node 2 takes its own HTTP port
    c.add();
    c.wait_converged(&[0, 1], 2);
    let pid = c.nodes[0].child.id();
    let before = rss_kib(pid);
    // A flood that goes on while the checks run: silent connections, and every
    // fifth one half a preamble, at most 5,000 held (the oldest let go). A silent
    // connection lasts 10 s, and opening thousands takes longer than that on a
    // loaded machine, so the flood must keep going to hold every place.
    let addr = c.nodes[0].addr.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooding = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut held = std::collections::VecDeque::new();
            let mut opened = 0u64;
            let start = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && start.elapsed() < Duration::from_secs(180)
            {
                let Ok(mut s) = std::net::TcpStream::connect(&addr) else {
                    continue;
                };
                if opened % 5 == 4 {
                    let _ = s.write_all(b"RKVC\x01\x00\x40rkv_0123");
                }
                held.push_back(s);
                if held.len() > 5_000 {
                    held.pop_front();
                }
                opened += 1;
            }
            opened
        })
    };
    let flood = Instant::now();
    let full = (0..600).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        metric(&http, "ringkv_connections").unwrap_or(0.0) >= 2_048.0
    });
    assert!(full, "the flood never held every place in 60 s");
    let during = rss_kib(pid);
    let filled = flood.elapsed();
    // Node 2 restarts: its peer connections to node 1 are new ones. A W=2 write
    // through it, which node 1 must take as a replica, succeeds within a 1 s
    // deadline; so does a token holder's read on node 1.
    c.nodes[1].kill9();
    c.nodes[1].restart();
    let out = c.nodes[1].cli(&[
        "put",
        "during-flood",
        "v",
        "--w",
        "2",
        "--timeout-ms",
        "1000",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = c.nodes[0].cli(&["get", "during-flood", "--local", "--timeout-ms", "1000"]);
    assert_eq!(stdout(&out).trim(), "v", "{}", stderr(&out));
    let served = flood.elapsed();
    // The checks ran while the flood held every place a new connection waits in
    // (1,024 client slots + 1,024 peer slots): without eviction they would have
    // been refused.
    let open = metric(&http, "ringkv_connections").unwrap_or(0.0);
    assert!(
        open >= 2_048.0,
        "{open} connections open: the flood had ended"
    );
    let evicted = metric(&http, "ringkv_connections_evicted_total").unwrap_or(0.0);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let opened = flooding.join().expect("the flood's thread");
    assert!(evicted > 0.0, "{evicted}");
    println!(
        "security: a flood of {opened} connections (4 in 5 silent, 1 in 5 half a preamble), every place held after {} ms: node RSS {before} KiB before, {during} KiB during; {evicted} evicted, {open} open; peer write and token read served {} ms after the flood began",
        filled.as_millis(),
        served.as_millis()
    );
}
