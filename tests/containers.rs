//! The container deployment end to end: the image deploy/docker/build.sh makes
//! from the binary cargo built, the three-node cluster of
//! deploy/compose/docker-compose.yml, and what operations do to it under load:
//! a real network partition (`docker network disconnect`), a `docker kill`, a
//! rolling restart with the drain, a node recreated with a new IP and its old
//! volume, and a real Prometheus scraping the nodes.
//!
//! Skipped (one line, and a pass) when no Docker daemon answers. One test: the
//! scenarios share one cluster, in sequence, every wait bounded; the project
//! (`ringkv-test-<pid>`, its own published ports, network and volumes) is torn
//! down at the end, also on a panic.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::docker::{
    Compose, Teardown, aliases_on, docker, docker_available, docker_try, free_ports, health_of,
    http_get, http_get_as, inspect, ip_on, must, networks_of, repo_root, run_for, run_with_stdin,
    write_secret,
};
use futures::StreamExt;
use ringkv::rpc::api::RequestOptions;
use ringkv::{Client, Credentials};

const IMAGE: &str = "ringkv:test";
/// Puts per second of the background load (all workers together).
const LOAD_RATE: u64 = 60;
const LOAD_WORKERS: u64 = 4;
/// How long node 3 stays cut off.
const PARTITION: Duration = Duration::from_secs(20);
/// The bound of every "until healthy / until readable" wait.
const HEAL_LIMIT: Duration = Duration::from_secs(120);

/// The CA and the admin token security.sh made for the test's project: every
/// client command, Rust client and health request of the host uses them.
static SECURITY: std::sync::OnceLock<(std::path::PathBuf, String)> = std::sync::OnceLock::new();

fn creds() -> Credentials {
    let (ca, token) = SECURITY.get().expect("security.sh ran");
    let files = ringkv::tls::ClientTlsFiles {
        ca: ca.clone(),
        identity: None,
    };
    Credentials {
        token: Some(token.clone()),
        tls: Some(ringkv::tls::DialTls::client(&files).expect("the test's CA")),
    }
}

async fn connect_secure(addr: &str) -> Result<Client, ringkv::ClientError> {
    Client::connect_as(addr, &creds()).await
}

/// One node of the compose cluster, as the host sees it.
struct Node {
    service: String,
    client_port: u16,
    http_port: u16,
}

impl Node {
    fn client_addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }
    fn http_addr(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }
}

/// The background writer: unique keys `k-<seq>` at a steady rate, every
/// acknowledged write logged, every failed request counted.
struct Load {
    stop: AtomicBool,
    seq: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    acked: Mutex<Vec<(String, String)>>,
    errors: Mutex<Vec<String>>,
    phase: Mutex<String>,
    started: Instant,
}

impl Load {
    fn counts(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::SeqCst),
            self.failures.load(Ordering::SeqCst),
        )
    }
    fn acked(&self) -> Vec<(String, String)> {
        self.acked.lock().unwrap().clone()
    }
    fn set_phase(&self, p: &str) {
        *self.phase.lock().unwrap() = p.to_string();
    }
    fn errors_since(&self, n: usize) -> Vec<String> {
        self.errors
            .lock()
            .unwrap()
            .iter()
            .skip(n)
            .cloned()
            .collect()
    }
    fn error_count(&self) -> usize {
        self.errors.lock().unwrap().len()
    }
}

fn quorum_options() -> RequestOptions {
    RequestOptions {
        r: Some(2),
        w: Some(2),
        ..RequestOptions::default()
    }
}

/// `ringkv ARGS` on the host with a bound of `limit`; (exit code, stdout, stderr).
fn cli(args: &[&str], limit: Duration) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(common::bin());
    cmd.args(args);
    if let Some((ca, token)) = SECURITY.get() {
        cmd.env("RINGKV_TLS_CA", ca).env("RINGKV_TOKEN", token);
    }
    let out = run_for(&mut cmd, limit).unwrap_or_else(|e| panic!("{e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ringkv wait-healthy --connect ADDR --timeout 120s`, which must exit 0;
/// returns how long it took.
fn wait_healthy(addr: &str) -> Duration {
    let t = Instant::now();
    let (code, out, err) = cli(
        &[
            "wait-healthy",
            "--connect",
            addr,
            "--members",
            "3",
            "--timeout",
            "120s",
        ],
        HEAL_LIMIT + Duration::from_secs(30),
    );
    assert_eq!(
        code, 0,
        "ringkv wait-healthy --connect {addr} exited {code}:\n{out}{err}"
    );
    t.elapsed()
}

/// Polls every 500 ms until `ok` holds (the error it returns says why not), or
/// panics after `limit`; returns the time taken.
fn poll(what: &str, limit: Duration, mut ok: impl FnMut() -> Result<(), String>) -> Duration {
    let t = Instant::now();
    loop {
        match ok() {
            Ok(()) => return t.elapsed(),
            Err(why) => assert!(
                t.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}: {why}"
            ),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Reads `keys` (local: only the connected node's replica; else through the
/// ring-aware client at its R) until each returns its logged value, or `limit`
/// passes; the keys still missing then, with the last reason of each.
fn wait_readable(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    keys: &[(String, String)],
    local: bool,
    limit: Duration,
) -> BTreeMap<String, String> {
    let deadline = Instant::now() + limit;
    let mut left: BTreeMap<String, (String, String)> = keys
        .iter()
        .map(|(k, v)| (k.clone(), (v.clone(), String::from("not read yet"))))
        .collect();
    loop {
        let batch: Vec<(String, String)> = left
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect();
        let results: Vec<(String, Result<bool, String>)> = rt.block_on(async {
            futures::stream::iter(batch.into_iter().map(|(k, v)| {
                let client = client.clone();
                async move {
                    let got = if local {
                        client.get_local(k.as_bytes()).await
                    } else {
                        client.get(k.as_bytes()).await
                    };
                    let r = match got {
                        Ok(g) => Ok(g.siblings.iter().any(|s| s == v.as_bytes())),
                        Err(e) => Err(e.to_string()),
                    };
                    (k, r)
                }
            }))
            .buffer_unordered(32)
            .collect()
            .await
        });
        for (k, r) in results {
            match r {
                Ok(true) => {
                    left.remove(&k);
                }
                Ok(false) => left.get_mut(&k).unwrap().1 = "value missing".into(),
                Err(e) => left.get_mut(&k).unwrap().1 = format!("read failed: {e}"),
            }
        }
        if left.is_empty() || Instant::now() >= deadline {
            return left.into_iter().map(|(k, (_, why))| (k, why)).collect();
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn show_missing(missing: &BTreeMap<String, String>) -> String {
    let first: Vec<String> = missing
        .iter()
        .take(10)
        .map(|(k, why)| format!("{k} ({why})"))
        .collect();
    format!("{} keys, first: {}", missing.len(), first.join(", "))
}

/// `/v1/cluster/health` of a node as JSON.
fn cluster_health(node: &Node) -> Result<serde_json::Value, String> {
    let token = SECURITY.get().map(|(_, t)| t.as_str());
    let r = http_get_as(
        &node.http_addr(),
        "/v1/cluster/health",
        Duration::from_secs(3),
        token,
    )?;
    if r.status != 200 {
        return Err(format!("/v1/cluster/health {}: {}", r.status, r.text()));
    }
    r.json()
}

fn readyz(node: &Node) -> Result<u16, String> {
    http_get(&node.http_addr(), "/readyz", Duration::from_secs(2)).map(|r| r.status)
}

/// The ring the node at `addr` reports.
fn ring_of(rt: &tokio::runtime::Runtime, addr: &str) -> Result<ringkv::rpc::api::RingInfo, String> {
    rt.block_on(async {
        let c = connect_secure(addr).await.map_err(|e| e.to_string())?;
        c.ring().await.map_err(|e| e.to_string())
    })
}

#[test]
fn compose_cluster_survives_partition_kill_rolling_restart_and_a_new_ip() {
    if !docker_available() {
        println!("containers: skipped, no Docker daemon");
        return;
    }
    if run_for(
        std::process::Command::new("docker-compose").arg("version"),
        Duration::from_secs(30),
    )
    .map_or(true, |o| !o.status.success())
    {
        println!("containers: skipped, no docker-compose");
        return;
    }
    let t_test = Instant::now();
    let root = repo_root();
    let tmp = tempfile::tempdir().expect("tempdir");

    // --- the image, from the binary cargo built for the tests -------------------
    let t = Instant::now();
    let built = must(
        std::process::Command::new("bash")
            .arg(root.join("deploy/docker/build.sh"))
            .args(["--bin", &common::bin(), "--tag", IMAGE, "--no-init"]),
        Duration::from_secs(600),
    );
    for line in built.lines().filter(|l| l.contains("image size")) {
        println!("containers: {line}");
    }
    println!(
        "containers: image {IMAGE} built in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // --- the compose project: own name, ports and secret ------------------------
    let secret = tmp.path().join("cluster-secret");
    write_secret(&secret).unwrap_or_else(|e| panic!("containers: {e}"));
    let security = tmp.path().join("security");
    must(
        std::process::Command::new("bash")
            .arg(root.join("deploy/compose/security.sh"))
            .arg(&security)
            .env("RINGKV_BIN", common::bin()),
        Duration::from_secs(60),
    );
    let admin = std::fs::read_to_string(security.join("admin.token")).expect("admin.token");
    let _ = SECURITY.set((security.join("ca.crt"), admin.trim().to_string()));
    let ports = free_ports(7);
    let nodes: Vec<Node> = (0..3)
        .map(|i| Node {
            service: format!("ringkv-{}", i + 1),
            client_port: ports[2 * i],
            http_port: ports[2 * i + 1],
        })
        .collect();
    let mut env = vec![
        ("RINGKV_IMAGE".to_string(), IMAGE.to_string()),
        (
            "RINGKV_COMPOSE_SECRET_FILE".to_string(),
            secret.to_string_lossy().into_owned(),
        ),
        (
            "RINGKV_COMPOSE_SECURITY_DIR".to_string(),
            security.to_string_lossy().into_owned(),
        ),
        (
            "RINGKV_COMPOSE_PROMETHEUS_PORT".to_string(),
            ports[6].to_string(),
        ),
    ];
    for (i, n) in nodes.iter().enumerate() {
        env.push((
            format!("RINGKV_COMPOSE_{}_CLIENT_PORT", i + 1),
            n.client_port.to_string(),
        ));
        env.push((
            format!("RINGKV_COMPOSE_{}_HTTP_PORT", i + 1),
            n.http_port.to_string(),
        ));
    }
    let compose = Compose {
        project: format!("ringkv-test-{}", std::process::id()),
        files: vec![root.join("deploy/compose/docker-compose.yml")],
        env,
    };
    // From here on, whatever happens, the project is torn down.
    let guard = Teardown::new(compose, vec![IMAGE.to_string()]);
    let compose = &guard.compose;

    // --- a. the cluster forms -------------------------------------------------------
    let t_up = Instant::now();
    compose.run(&["up", "-d"], Duration::from_secs(180));
    let rt = common::runtime();
    let ids: Vec<String> = nodes
        .iter()
        .map(|n| compose.container(&n.service))
        .collect();
    assert!(
        ids.iter().all(|id| !id.is_empty()),
        "compose started no containers: {ids:?}"
    );
    let mut epoch = String::new();
    poll(
        "three ready, healthy members on one ring epoch",
        HEAL_LIMIT,
        || {
            let mut epochs = Vec::new();
            for (n, id) in nodes.iter().zip(&ids) {
                let code = readyz(n)?;
                if code != 200 {
                    return Err(format!("{} /readyz {code}", n.service));
                }
                let h = cluster_health(n)?;
                if h["members"] != 3 || h["members_alive"] != 3 {
                    return Err(format!(
                        "{} sees members {} alive {}",
                        n.service, h["members"], h["members_alive"]
                    ));
                }
                if h["ring_agreement"] != true {
                    return Err(format!(
                        "{}: ring_agreement {}",
                        n.service, h["ring_agreement"]
                    ));
                }
                epochs.push(ring_of(&rt, &n.client_addr())?.epoch);
                let health = health_of(id);
                if health != "healthy" {
                    return Err(format!("{}: docker health {health}", n.service));
                }
            }
            epochs.dedup();
            if epochs.len() != 1 || epochs[0].is_empty() {
                return Err(format!("ring epochs {epochs:?}"));
            }
            epoch = epochs.remove(0);
            Ok(())
        },
    );
    println!(
        "containers: cluster ready in {:.1} s (3 members alive, ring epoch {epoch}, docker health healthy)",
        t_up.elapsed().as_secs_f64()
    );

    // --- b. background load: ring-aware client, R=2 W=2 ---------------------------
    let mut client1 = rt
        .block_on(connect_secure(&nodes[0].client_addr()))
        .expect("connect to node 1");
    client1.set_options(quorum_options());
    let load = Arc::new(Load {
        stop: AtomicBool::new(false),
        seq: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        failures: AtomicU64::new(0),
        acked: Mutex::new(Vec::new()),
        errors: Mutex::new(Vec::new()),
        phase: Mutex::new("load".into()),
        started: Instant::now(),
    });
    let period = Duration::from_micros(1_000_000 * LOAD_WORKERS / LOAD_RATE);
    let workers: Vec<_> = (0..LOAD_WORKERS)
        .map(|_| {
            let (client, load) = (client1.clone(), load.clone());
            rt.spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // Bounded: at most an hour's worth of puts per worker.
                for _ in 0..(3600 * LOAD_RATE / LOAD_WORKERS) {
                    tick.tick().await;
                    if load.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let i = load.seq.fetch_add(1, Ordering::SeqCst);
                    let (key, value) = (format!("k-{i}"), format!("v-{i}-{}", std::process::id()));
                    load.requests.fetch_add(1, Ordering::SeqCst);
                    match client.put(key.as_bytes(), value.as_bytes(), None).await {
                        Ok(_) => load.acked.lock().unwrap().push((key, value)),
                        Err(e) => {
                            load.failures.fetch_add(1, Ordering::SeqCst);
                            let phase = load.phase.lock().unwrap().clone();
                            load.errors.lock().unwrap().push(format!(
                                "[{phase} +{:.1}s] put {key}: {e}",
                                load.started.elapsed().as_secs_f64()
                            ));
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(10));
    let (req, fail) = load.counts();
    println!(
        "containers: load {LOAD_RATE}/s with {LOAD_WORKERS} workers: {req} requests, {fail} failed, {} acknowledged in 10 s",
        load.acked().len()
    );
    assert!(
        load.acked().len() > 100,
        "the load makes no progress: {:?}",
        load.errors_since(0)
    );

    // --- c. a real partition: node 3 off the network for 20 s --------------------
    load.set_phase("partition");
    let c3 = compose.container("ringkv-3");
    let net = networks_of(&c3)
        .into_iter()
        .next()
        .expect("node 3 on a network");
    let ip3 = ip_on(&c3, &net);
    let aliases: Vec<String> = aliases_on(&c3, &net)
        .into_iter()
        .filter(|a| !c3.starts_with(a.as_str()))
        .collect();
    let (req0, fail0) = load.counts();
    docker(
        &["network", "disconnect", &net, &c3],
        Duration::from_secs(60),
    );
    let t_cut = Instant::now();
    let mut not_ready = Vec::new();
    let mut polls = 0;
    while t_cut.elapsed() < PARTITION {
        for n in &nodes[..2] {
            polls += 1;
            match readyz(n) {
                Ok(200) => {}
                other => not_ready.push(format!(
                    "+{:.1}s {}: {other:?}",
                    t_cut.elapsed().as_secs_f64(),
                    n.service
                )),
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Back with its aliases (the service name), and its address if the network
    // allows choosing it; node 3 resolved its advertise name at start.
    let mut connect: Vec<String> = vec!["network".into(), "connect".into()];
    for a in &aliases {
        connect.extend(["--alias".into(), a.clone()]);
    }
    let mut with_ip = connect.clone();
    with_ip.extend(["--ip".into(), ip3.clone(), net.clone(), c3.clone()]);
    let refs: Vec<&str> = with_ip.iter().map(String::as_str).collect();
    let out = docker_try(&refs, Duration::from_secs(60)).expect("docker network connect");
    if !out.status.success() {
        // "user specified IP address is supported only when connecting to networks
        // with user configured subnets": Docker gives the lowest free address, which
        // on this project's own network is the one node 3 had.
        connect.extend([net.clone(), c3.clone()]);
        let refs: Vec<&str> = connect.iter().map(String::as_str).collect();
        docker(&refs, Duration::from_secs(60));
    }
    let t_heal = Instant::now();
    let ip3_after = ip_on(&c3, &net);
    let (req1, fail1) = load.counts();
    assert!(
        not_ready.is_empty(),
        "/readyz of nodes 1 and 2 was not 200 during the partition ({} of {polls} polls): {not_ready:?}",
        not_ready.len()
    );
    assert_eq!(
        ip3_after, ip3,
        "node 3 came back on the network with another IP; it advertises the one it resolved at start"
    );
    println!(
        "containers: partition of node 3 ({ip3}, aliases {aliases:?}) for {} s: /readyz of nodes 1 and 2 200 in all {polls} polls; load {} requests, {} failed",
        PARTITION.as_secs(),
        req1 - req0,
        fail1 - fail0
    );
    let waited = wait_healthy(&nodes[0].client_addr());
    let acked = load.acked();
    let client3 = rt
        .block_on(connect_secure(&nodes[2].client_addr()))
        .expect("connect to node 3");
    let left = HEAL_LIMIT.saturating_sub(t_heal.elapsed());
    let missing = wait_readable(&rt, &client3, &acked, true, left);
    assert!(
        missing.is_empty(),
        "acknowledged writes not on node 3 (get --local) {HEAL_LIMIT:?} after the heal: {}",
        show_missing(&missing)
    );
    println!(
        "containers: partition heal time {:.1} s (reconnect -> wait-healthy {:.1} s -> all {} acknowledged writes readable with get --local on node 3)",
        t_heal.elapsed().as_secs_f64(),
        waited.as_secs_f64(),
        acked.len()
    );

    // --- d. docker kill of node 2 mid-load ------------------------------------------
    load.set_phase("kill");
    let c2 = compose.container("ringkv-2");
    let (req0, fail0) = load.counts();
    docker(&["kill", &c2], Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(5));
    docker(&["start", &c2], Duration::from_secs(60));
    let t_start = Instant::now();
    let waited = wait_healthy(&nodes[0].client_addr());
    let acked = load.acked();
    let missing = wait_readable(&rt, &client1, &acked, false, Duration::from_secs(60));
    assert!(
        missing.is_empty(),
        "acknowledged writes lost after docker kill of node 2 (read at R=2): {}",
        show_missing(&missing)
    );
    let (req1, fail1) = load.counts();
    println!(
        "containers: docker kill + start of node 2: healthy {:.1} s after the start (wait-healthy {:.1} s); {} requests, {} failed; all {} acknowledged writes read back at R=2",
        t_start.elapsed().as_secs_f64(),
        waited.as_secs_f64(),
        req1 - req0,
        fail1 - fail0,
        acked.len()
    );

    // --- e. rolling restart under load: zero failed requests -------------------------
    load.set_phase("rolling restart");
    let (req0, fail0) = load.counts();
    let errors0 = load.error_count();
    let t_roll = Instant::now();
    for n in &nodes {
        let id = compose.container(&n.service);
        // Watch /readyz through the drain: it must turn 503 before the node goes.
        let watching = Arc::new(AtomicBool::new(true));
        let watcher = {
            let (watching, addr) = (watching.clone(), n.http_addr());
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let t = Instant::now();
                while watching.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(60) {
                    let s = match http_get(&addr, "/readyz", Duration::from_secs(1)) {
                        Ok(r) => r.status.to_string(),
                        Err(_) => "down".to_string(),
                    };
                    if seen.last() != Some(&s) {
                        seen.push(s);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                seen
            })
        };
        // `docker restart -t 30` is this stop and start; apart, the exit code and
        // the drain's duration can be checked.
        let t = Instant::now();
        docker(&["stop", "-t", "30", &id], Duration::from_secs(90));
        let stopped_in = t.elapsed();
        watching.store(false, Ordering::SeqCst);
        let seen = watcher.join().expect("watcher");
        let exit = inspect(&id, "{{.State.ExitCode}}");
        assert_eq!(
            exit, "0",
            "{} exited {exit} on SIGTERM (stopped in {stopped_in:?}; /readyz went {seen:?})",
            n.service
        );
        assert!(
            stopped_in < Duration::from_secs(29),
            "{} took {stopped_in:?} to stop: it was killed at the grace period, not drained",
            n.service
        );
        assert!(
            seen.iter().any(|s| s == "503"),
            "{}: /readyz never turned 503 during the drain: {seen:?}",
            n.service
        );
        docker(&["start", &id], Duration::from_secs(60));
        let waited = wait_healthy(&n.client_addr());
        println!(
            "containers: rolling restart of {}: drained and exited 0 in {:.1} s (/readyz {}), healthy {:.1} s after the start",
            n.service,
            stopped_in.as_secs_f64(),
            seen.join(" -> "),
            waited.as_secs_f64()
        );
    }
    let (req1, fail1) = load.counts();
    let roll_errors = load.errors_since(errors0);
    load.set_phase("after the rolling restart");
    load.stop.store(true, Ordering::SeqCst);
    rt.block_on(async {
        let _ =
            tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(workers)).await;
    });
    let acked = load.acked();
    let missing = wait_readable(&rt, &client1, &acked, false, Duration::from_secs(60));
    println!(
        "containers: rolling restart in {:.1} s under load: {} requests, {} failed, {} acknowledged writes lost (of {})",
        t_roll.elapsed().as_secs_f64(),
        req1 - req0,
        fail1 - fail0,
        missing.len(),
        acked.len()
    );
    assert_eq!(
        fail1 - fail0,
        0,
        "requests failed during the rolling restart: {:?}",
        &roll_errors[..roll_errors.len().min(20)]
    );
    assert!(
        missing.is_empty(),
        "acknowledged writes lost: {}",
        show_missing(&missing)
    );
    let (req, fail) = load.counts();
    println!(
        "containers: load total {req} requests, {fail} failed, {} acknowledged, none lost",
        acked.len()
    );

    // --- f. node 3 recreated with a new IP and its old volume ------------------------
    let t_new = Instant::now();
    let old = compose.container("ringkv-3");
    let old_ip = ip_on(&old, &net);
    compose.run(&["stop", "-t", "30", "ringkv-3"], Duration::from_secs(90));
    compose.run(&["rm", "-f", "ringkv-3"], Duration::from_secs(60));
    // Something else takes the old address first (Docker hands out the lowest
    // free one): a container of the same image that listens on nothing.
    let holder = docker(
        &[
            "run",
            "-d",
            "--network",
            &net,
            "--read-only",
            IMAGE,
            "wait-healthy",
            "--connect",
            "127.0.0.1:9",
            "--timeout",
            "600s",
        ],
        Duration::from_secs(60),
    );
    guard.container(&holder);
    compose.run(&["up", "-d", "ringkv-3"], Duration::from_secs(120));
    let new = compose.container("ringkv-3");
    let new_ip = ip_on(&new, &net);
    println!(
        "containers: ringkv-3 recreated: {old_ip} -> {new_ip} (the old address held by {})",
        ip_on(&holder, &net)
    );
    guard.remove_container(&holder);
    assert_ne!(
        new_ip, old_ip,
        "node 3 got its old IP back; the test meant a new one"
    );
    let want = format!("{new_ip}:7400");
    poll(
        "ringkv-3 in the ring at its new address, alive, 3 members",
        HEAL_LIMIT,
        || {
            for n in &nodes {
                let ring = ring_of(&rt, &n.client_addr())?;
                let summary: Vec<String> = ring
                    .members
                    .iter()
                    .map(|m| format!("{} {} {} {}", m.node_id, m.address, m.status, m.liveness))
                    .collect();
                if ring.members.len() != 3 {
                    return Err(format!(
                        "{} lists {} members: {summary:?}",
                        n.service,
                        ring.members.len()
                    ));
                }
                let me = ring.members.iter().find(|m| m.node_id == "ringkv-3");
                match me {
                    Some(m)
                        if m.address == want && m.status == "active" && m.liveness == "alive" => {}
                    _ => return Err(format!("{} sees {summary:?}", n.service)),
                }
                let h = cluster_health(n)?;
                if h["members"] != 3 || h["members_alive"] != 3 {
                    return Err(format!(
                        "{}: members {} alive {}",
                        n.service, h["members"], h["members_alive"]
                    ));
                }
            }
            Ok(())
        },
    );
    wait_healthy(&nodes[2].client_addr());
    let client3 = rt
        .block_on(connect_secure(&nodes[2].client_addr()))
        .expect("connect to the new node 3");
    let missing = wait_readable(&rt, &client3, &acked, true, HEAL_LIMIT);
    assert!(
        missing.is_empty(),
        "the recreated node 3 lacks acknowledged writes (get --local): {}",
        show_missing(&missing)
    );
    println!(
        "containers: ringkv-3 rejoined as itself at {want} in {:.1} s: 3 members, all {} writes readable with get --local",
        t_new.elapsed().as_secs_f64(),
        acked.len()
    );

    // --- g. a real Prometheus, and promtool on every /metrics -----------------------
    prometheus(&guard, &rt, &nodes, tmp.path());

    drop(guard);
    println!(
        "containers: all scenarios passed in {:.1} s",
        t_test.elapsed().as_secs_f64()
    );
}

/// Finds Debian's prometheus and promtool, installing the package when missing
/// and this runs as root with apt-get; `None` (after one line) if they cannot be had.
fn prometheus_tools() -> Option<(String, String)> {
    let (prom, tool) = ("/usr/bin/prometheus", "/usr/bin/promtool");
    let present = || std::path::Path::new(prom).exists() && std::path::Path::new(tool).exists();
    if present() {
        return Some((prom.into(), tool.into()));
    }
    let root = run_for(
        std::process::Command::new("id").arg("-u"),
        Duration::from_secs(10),
    )
    .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
    .unwrap_or(false);
    let apt = std::path::Path::new("/usr/bin/apt-get").exists();
    if !root || !apt {
        println!(
            "containers: prometheus part skipped: /usr/bin/prometheus missing (and not root with apt-get to install it)"
        );
        return None;
    }
    let apt_get = |args: &[&str]| {
        run_for(
            std::process::Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            Duration::from_secs(600),
        )
        .map(|o| o.status.success())
        .unwrap_or(false)
    };
    let ok = apt_get(&["update", "-qq"])
        && apt_get(&[
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "prometheus",
        ]);
    if !ok || !present() {
        println!("containers: prometheus part skipped: apt-get install prometheus failed");
        return None;
    }
    Some((prom.into(), tool.into()))
}

fn prometheus(
    guard: &Teardown,
    rt: &tokio::runtime::Runtime,
    nodes: &[Node],
    dir: &std::path::Path,
) {
    let Some((prom, promtool)) = prometheus_tools() else {
        return;
    };
    let t = Instant::now();
    // Requests on every node, so each exports ringkv_requests_total samples.
    for (i, n) in nodes.iter().enumerate() {
        rt.block_on(async {
            let mut c = connect_secure(&n.client_addr()).await.expect("connect");
            c.disable_routing();
            let key = format!("prometheus-{i}");
            c.put(key.as_bytes(), b"x", None).await.expect("put");
            c.get(key.as_bytes()).await.expect("get");
        });
    }
    // promtool check metrics on each node's /metrics.
    for n in nodes {
        let r = http_get(&n.http_addr(), "/metrics", Duration::from_secs(5)).expect("GET /metrics");
        assert_eq!(r.status, 200, "{} /metrics: {}", n.service, r.text());
        let ctype = r.header("content-type").unwrap_or("").to_string();
        assert!(
            ctype.starts_with("text/plain") && ctype.contains("version=0.0.4"),
            "{} /metrics content-type {ctype:?}",
            n.service
        );
        let file = dir.join(format!("metrics-{}.txt", n.service));
        std::fs::write(&file, &r.body).expect("write metrics");
        let out = run_with_stdin(
            std::process::Command::new(&promtool).args(["check", "metrics"]),
            std::fs::File::open(&file).expect("metrics file").into(),
            Duration::from_secs(60),
        )
        .expect("promtool");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for line in said.lines().filter(|l| !l.trim().is_empty()) {
            println!("containers: promtool check metrics {}: {line}", n.service);
        }
        assert!(
            out.status.success(),
            "promtool check metrics failed on {}'s /metrics ({}): {said}",
            n.service,
            out.status
        );
        let series = r
            .text()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count();
        println!(
            "containers: {} /metrics: {series} samples, promtool check metrics exit 0",
            n.service
        );
    }
    // Prometheus on the host, scraping the three published HTTP ports every second.
    let port = free_ports(1)[0];
    let targets: Vec<String> = nodes
        .iter()
        .map(|n| format!("'{}'", n.http_addr()))
        .collect();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: ringkv\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
    )
    .expect("prometheus.yml");
    let log = dir.join("prometheus.log");
    let log_file = std::fs::File::create(&log).expect("log");
    let child = std::process::Command::new(&prom)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(std::process::Stdio::null())
        .stdout(log_file.try_clone().expect("log"))
        .stderr(log_file)
        .spawn()
        .expect("start prometheus");
    let pid = guard.child(child);
    let api = format!("127.0.0.1:{port}");
    let want: std::collections::BTreeSet<String> = nodes.iter().map(|n| n.http_addr()).collect();
    let waited = poll(
        "Prometheus: 3 targets up and ringkv_requests_total from each",
        Duration::from_secs(90),
        || {
            let r = http_get(&api, "/api/v1/targets", Duration::from_secs(3)).map_err(|e| {
                format!(
                    "{e}; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })?;
            let j = r.json()?;
            let active = j["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let up: std::collections::BTreeSet<String> = active
                .iter()
                .filter(|t| t["health"] == "up")
                .filter_map(|t| t["labels"]["instance"].as_str().map(str::to_string))
                .collect();
            if up != want {
                let states: Vec<String> = active
                    .iter()
                    .map(|t| {
                        format!(
                            "{} {} {}",
                            t["labels"]["instance"], t["health"], t["lastError"]
                        )
                    })
                    .collect();
                return Err(format!("targets {states:?}"));
            }
            let q = http_get(
                &api,
                "/api/v1/query?query=ringkv_requests_total",
                Duration::from_secs(3),
            )?
            .json()?;
            let got: std::collections::BTreeSet<String> = q["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|s| s["metric"]["instance"].as_str().map(str::to_string))
                .collect();
            if got != want {
                return Err(format!("ringkv_requests_total from {got:?}"));
            }
            Ok(())
        },
    );
    guard.kill_child(pid);
    println!(
        "containers: Prometheus {port}: 3 targets up, ringkv_requests_total from all 3 instances after {:.1} s (killed, pid {pid}); prometheus part {:.1} s",
        waited.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
}
