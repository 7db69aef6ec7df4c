//! The operations surface against real `ringkv serve` processes: the HTTP port
//! (metrics, probes, health, bad requests), configuration from the environment and
//! files, the drain on SIGTERM, and a node that comes back at a new address.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{Cluster, Server, code, free_port, run_cli, stderr, wait_until};

/// Sends raw bytes to `addr` and reads the answer (bounded): the status line and
/// the rest.
fn http_raw(addr: &str, request: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(request).expect("send");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
        if out.len() > 4 << 20 {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn get(addr: &str, path: &str) -> (u16, String) {
    let text = http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

fn single(http: &str) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(
        dir.path(),
        &["--http-listen", http, "--shutdown-delay", "1s"],
    );
    (dir, s)
}

#[test]
fn the_http_port_serves_metrics_probes_and_health_and_answers_bad_requests_with_4xx() {
    let http = format!("127.0.0.1:{}", free_port());
    let (_dir, s) = single(&http);
    assert!(s.cli(&["put", "k", "v"]).status.success());
    assert!(s.cli(&["get", "k"]).status.success());
    wait_until("ready", Duration::from_secs(20), || {
        get(&http, "/readyz").0 == 200
    });
    let (code, body) = get(&http, "/metrics");
    assert_eq!(code, 200);
    for needle in [
        "# TYPE ringkv_requests_total counter",
        "ringkv_requests_total{op=\"put\",result=\"ok\"} 1",
        "ringkv_requests_total{op=\"get\",result=\"ok\"} 1",
        "# TYPE ringkv_request_duration_seconds histogram",
        "ringkv_request_duration_seconds_bucket{op=\"put\",le=\"0.0001\"}",
        "ringkv_request_duration_seconds_bucket{op=\"put\",le=\"10\"} 1",
        "ringkv_request_duration_seconds_bucket{op=\"put\",le=\"+Inf\"} 1",
        "ringkv_storage_fsync_duration_seconds_bucket",
        "ringkv_members{status=\"active\",liveness=\"alive\"} 1",
        "ringkv_ready 1",
        "ringkv_build_info{version=",
        "process_resident_memory_bytes",
        "ringkv_disk_available_bytes",
    ] {
        assert!(body.contains(needle), "no {needle:?} in:\n{body}");
    }
    assert!(!body.contains("quantile"), "histograms, never summaries");
    assert!(!body.contains("e+308"), "one +Inf bucket");
    // Every metric the alerts and the dashboard use is exported.
    let listed = std::process::Command::new("bash")
        .args(["scripts/check_deploy.sh", "--list-metrics"])
        .output()
        .expect("list metrics");
    assert!(listed.status.success(), "{}", stderr(&listed));
    let names = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(names.lines().count() > 30, "{names}");
    // Exported by TLS nodes only (tests/security.rs reads it there).
    let tls_only = ["ringkv_tls_cert_expiry_timestamp_seconds"];
    for name in names
        .lines()
        .map(str::trim)
        .filter(|n| !n.is_empty() && !tls_only.contains(n))
    {
        let exported = body.lines().any(|l| {
            l.strip_prefix(name).is_some_and(|rest| {
                rest.starts_with(['{', ' '])
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| rest.starts_with(s))
            })
        });
        assert!(
            exported,
            "deploy/ uses {name}, which /metrics does not export"
        );
    }
    let (code, body) = get(&http, "/livez");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, body) = get(&http, "/v1/cluster/health");
    assert_eq!(code, 200);
    let h: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(h["members_alive"], 1);
    assert_eq!(h["partitions_all_up"], h["partitions"]);
    assert_eq!(h["healthy"], true);
    let (code, page) = get(&http, "/");
    assert_eq!(code, 200);
    assert!(
        page.contains("<svg") && page.contains("Members (1 of 1 alive)"),
        "{page}"
    );
    assert!(
        !page.contains("src=\"http"),
        "nothing loaded from elsewhere"
    );
    // Bad requests: 4xx, and the node keeps serving.
    assert!(http_raw(&http, b"GARBAGE\r\n\r\n").starts_with("HTTP/1.1 400"));
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let answer = http_raw(&http, huge.as_bytes());
    assert!(
        answer.starts_with("HTTP/1.1 431")
            || answer.starts_with("HTTP/1.1 400")
            || answer.is_empty(),
        "{answer:.200}"
    );
    assert_eq!(get(&http, "/nope").0, 404);
    let post = http_raw(
        &http,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(post.starts_with("HTTP/1.1 405"), "{post:.200}");
    assert_eq!(get(&http, "/livez").0, 200);
    // The CLI probe a scratch image uses.
    let out = run_cli(&["health", "--ready", "--http", &http], None);
    assert_eq!(code_of(&out), 0, "{}", stderr(&out));
    let out = run_cli(
        &["health", "--http", &format!("127.0.0.1:{}", free_port())],
        None,
    );
    assert_eq!(code_of(&out), 3, "nothing listening: not healthy");
    let out = s.cli(&["wait-healthy", "--timeout", "30s"]);
    assert_eq!(code_of(&out), 0, "{}", stderr(&out));
    let out = s.cli(&["transfers", "--json"]);
    assert_eq!(code_of(&out), 0, "{}", stderr(&out));
}

fn code_of(o: &std::process::Output) -> i32 {
    code(o)
}

#[test]
fn unknown_keys_and_variables_are_refused_by_name_and_check_config_prints_no_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = std::process::Command::new(common::bin());
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("run")
    };
    let out = run(
        &["serve", "--check-config"],
        &[("RINGKV_LISTN", "127.0.0.1:1")],
    );
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("RINGKV_LISTN"), "{}", stderr(&out));
    let file = dir.path().join("ringkv.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:7400\"\nlisen = 1\n").expect("write");
    let out = run(
        &[
            "serve",
            "--check-config",
            "--config",
            file.to_str().expect("utf8"),
        ],
        &[],
    );
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("lisen"), "{}", stderr(&out));
    // Flags over variables over the file; the secret is never printed.
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:7400\"\nzone = \"from-file\"\nn = 2\n",
    )
    .expect("write");
    let out = run(
        &[
            "serve",
            "--check-config",
            "--config",
            file.to_str().expect("utf8"),
            "--n",
            "3",
        ],
        &[
            ("RINGKV_ZONE", "from-env"),
            ("RINGKV_N", "1"),
            ("RINGKV_SEEDS", "peers.example:7400,10.0.0.9:7400"),
            ("RINGKV_ADVERTISE", "10.0.0.8:7400"),
            ("RINGKV_CLUSTER_SECRET", "a secret of more than 16 bytes"),
            ("RINGKV_SERVICE_HOST", "10.96.0.1"),
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("zone = \"from-env\""), "{text}");
    assert!(text.contains("n = 3"), "{text}");
    assert!(text.contains("\"peers.example:7400\""), "{text}");
    assert!(
        text.contains("# cluster secret: set (from RINGKV_CLUSTER_SECRET)"),
        "{text}"
    );
    assert!(!text.contains("more than 16 bytes"), "{text}");
    // A node with peers and nothing they can reach it at refuses in one line.
    let out = run(
        &[
            "serve",
            "--check-config",
            "--listen",
            "0.0.0.0:7400",
            "--seed",
            "10.0.0.9:7400",
            "--insecure-dev",
        ],
        &[],
    );
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("--advertise"), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim().lines().count(), 1);
}

#[test]
fn sigterm_drains_not_ready_at_once_then_exits_cleanly() {
    let http = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Server::start(
        dir.path(),
        &["--http-listen", &http, "--shutdown-delay", "3s"],
    );
    wait_until("ready", Duration::from_secs(20), || {
        get(&http, "/readyz").0 == 200
    });
    let pid = s.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    wait_until("not ready once draining", Duration::from_secs(2), || {
        get(&http, "/readyz").0 == 503
    });
    // Draining, not dead: still live, and still serving during the delay.
    assert_eq!(get(&http, "/livez").0, 200);
    assert!(get(&http, "/readyz?verbose").1.contains("[-] not draining"));
    assert!(s.cli(&["put", "during", "drain"]).status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = s.child.try_wait().expect("wait") {
            break st;
        }
        assert!(Instant::now() < deadline, "did not exit: {}", s.log_text());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}: {}", s.log_text());
    assert!(s.log_text().contains("stopped cleanly"));
    // What was acknowledged during the drain is there after a restart.
    s.restart();
    let out = s.cli(&["get", "during"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "drain");
}

#[test]
fn a_node_restarted_at_a_new_address_rejoins_as_itself() {
    let mut c = Cluster::start(3, &[]);
    c.wait_converged(&[0, 1, 2], 3);
    for i in 0..20 {
        let out = c.nodes[0].cli(&["put", &format!("k{i}"), &format!("v{i}"), "--w", "3"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let old = c.nodes[2].addr.clone();
    assert_eq!(c.nodes[2].terminate(), Some(0));
    let new = format!("127.0.0.1:{}", free_port());
    c.nodes[2].restart_at(&new);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ring = common::json(&c.nodes[0].cli(&["ring", "--json"]));
        let members = ring["members"].as_array().cloned().unwrap_or_default();
        let n3 = members.iter().find(|m| m["node_id"] == "n3").cloned();
        if members.len() == 3
            && n3
                .as_ref()
                .is_some_and(|m| m["address"] == new.as_str() && m["liveness"] == "alive")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n3 not back at {new} (was {old}): {ring}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    c.wait_converged(&[0, 1, 2], 3);
    // Its data stayed with it: no remove, nothing moved.
    for i in 0..20 {
        let out = c.nodes[2].cli(&["get", &format!("k{i}"), "--local"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("v{i}"));
    }
    let out = c.nodes[0].cli(&["remove", "n3", "--dry-run", "--insecure-dev"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("would move"));
}

#[test]
fn a_rolling_restart_under_load_fails_no_request_and_loses_no_write() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    let mut c = Cluster::start(3, &["--shutdown-delay", "3s"]);
    c.wait_converged(&[0, 1, 2], 3);
    let rt = common::runtime();
    let addr = c.nodes[0].addr.clone();
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let requests = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (acked, failures, requests, stop) = (
            acked.clone(),
            failures.clone(),
            requests.clone(),
            stop.clone(),
        );
        rt.spawn(async move {
            let mut client = ringkv::Client::connect(&addr).await.expect("connect");
            client.set_options(ringkv::rpc::api::RequestOptions {
                r: Some(2),
                w: Some(2),
                ..Default::default()
            });
            let mut seq = 0u64;
            // Bounded: at most 10 minutes of 40 writes and reads a second.
            while !stop.load(Ordering::Relaxed) && seq < 24_000 {
                seq += 1;
                let (k, v) = (format!("k-{seq}"), format!("v-{seq}"));
                requests.fetch_add(2, Ordering::Relaxed);
                match client.put(k.as_bytes(), v.as_bytes(), None).await {
                    Ok(_) => acked.lock().expect("lock").push((k.clone(), v)),
                    Err(e) => failures.lock().expect("lock").push(format!("put {k}: {e}")),
                }
                if let Err(e) = client.get(k.as_bytes()).await {
                    failures.lock().expect("lock").push(format!("get {k}: {e}"));
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    for i in 0..3 {
        assert_eq!(c.nodes[i].terminate(), Some(0), "{}", c.nodes[i].log_text());
        c.nodes[i].restart();
        let out = c.nodes[(i + 1) % 3].cli(&["wait-healthy", "--timeout", "120s"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    stop.store(true, Ordering::Relaxed);
    rt.block_on(load).expect("load task");
    let failures = failures.lock().expect("lock").clone();
    let acked = acked.lock().expect("lock").clone();
    eprintln!(
        "rolling restart: {} requests in {:.1} s, {} failed, {} writes acknowledged",
        requests.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        failures.len(),
        acked.len()
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(acked.len() > 100, "the load ran");
    // Every acknowledged write, read back at R=2.
    rt.block_on(async {
        let mut client = ringkv::Client::connect(&c.nodes[1].addr)
            .await
            .expect("connect");
        client.set_options(ringkv::rpc::api::RequestOptions {
            r: Some(2),
            ..Default::default()
        });
        for (k, v) in &acked {
            let got = client.get(k.as_bytes()).await.expect("read back");
            assert_eq!(got.siblings, vec![v.as_bytes().to_vec()], "{k}");
        }
    });
}
