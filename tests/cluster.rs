//! Clusters of real `ringkv serve` processes on 127.0.0.1: membership, quorums,
//! hinted handoff, siblings across nodes, counters through failures, secrets, joins.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, code, json, runtime, stderr, stdout};
use ringkv::rpc::api::{ApiError, RequestOptions};
use ringkv::{Client, ClientError};

#[test]
fn five_nodes_agree_on_members_and_one_ring() {
    let c = Cluster::start(5, &[]);
    let all: Vec<usize> = (0..5).collect();
    let epoch = c.wait_converged(&all, 5);
    let rings: Vec<serde_json::Value> = all
        .iter()
        .map(|&i| {
            let mut r = json(&c.nodes[i].cli(&["ring", "--json"]));
            // Liveness is a local observation; the ring itself must be identical.
            r.as_object_mut().expect("object").remove("members");
            r
        })
        .collect();
    for r in &rings {
        assert_eq!(r, &rings[0]);
        assert_eq!(r["epoch"], epoch.as_str());
    }
    let counts = rings[0]["counts"].as_object().expect("counts");
    assert_eq!(counts.len(), 5);
    let total: u64 = counts.values().map(|v| v.as_u64().expect("count")).sum();
    assert_eq!(total, 256);
    for v in counts.values() {
        let v = v.as_u64().expect("count");
        assert!((51..=52).contains(&v), "balanced to within one: {counts:?}");
    }
    assert_eq!(
        rings[0]["partitions"].as_array().expect("partitions").len(),
        256
    );
}

#[test]
fn killed_primary_gets_its_writes_by_hinted_handoff() {
    let mut c = Cluster::start(4, &["--n", "3", "--r", "2", "--w", "2"]);
    c.wait_converged(&[0, 1, 2, 3], 4);
    // A key whose primaries leave one node as a fallback; kill a primary that is
    // not node 0 (node 0 is our entry point).
    let (key, victim) = (0..1000)
        .map(|i| format!("key-{i}"))
        .find_map(|k| {
            let p = c.primaries(k.as_bytes());
            p.iter()
                .find(|id| id.as_str() != "n1")
                .map(|id| (k.clone(), Cluster::index(id)))
        })
        .expect("a key");
    let entry = 0;
    let victim_id = format!("n{}", victim + 1);
    let key2 = (0..1000)
        .map(|i| format!("other-{i}"))
        .find(|k| c.primaries(k.as_bytes()).contains(&victim_id))
        .expect("a second key on the victim");
    assert_eq!(code(&c.nodes[entry].cli(&["put", &key, "v1"])), 0);
    c.nodes[victim].kill9();
    let up: Vec<usize> = (0..4).filter(|&i| i != victim).collect();
    // Writes and reads keep working while the primary is dead.
    let get = json(&c.nodes[entry].cli(&["get", &key, "--json"]));
    assert_eq!(get["values"], serde_json::json!(["v1"]));
    let ctx = get["context"].as_str().expect("context").to_string();
    let put = c.nodes[entry].cli(&["put", &key, "v2", "--context", &ctx]);
    assert_eq!(code(&put), 0, "{}", stderr(&put));
    for i in 0..20 {
        let k = format!("more-{i}");
        let out = c.nodes[up[i % up.len()]].cli(&["put", &k, "x"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    let get = json(&c.nodes[up[1]].cli(&["get", &key, "--json"]));
    assert_eq!(get["values"], serde_json::json!(["v2"]));
    // Strict quorums cannot count the fallback: all three primaries are required.
    // (Another key: the refused write is indeterminate, it may be applied.)
    let strict = c.nodes[entry].cli(&["put", &key2, "v3", "--pw", "3", "--w", "3"]);
    assert_eq!(code(&strict), 3, "{}", stderr(&strict));
    assert!(
        stderr(&strict).contains("quorum not reached"),
        "{}",
        stderr(&strict)
    );
    let strict = c.nodes[entry].cli(&["get", &key2, "--pr", "3", "--r", "3"]);
    assert_eq!(code(&strict), 3, "{}", stderr(&strict));
    let nonsense = c.nodes[entry].cli(&["get", &key, "--r", "4"]);
    assert_eq!(code(&nonsense), 2, "{}", stderr(&nonsense));
    let pending: u64 = up
        .iter()
        .map(|&i| c.status(i)["hints_pending"].as_u64().expect("hints"))
        .sum();
    assert!(pending > 0, "a fallback holds hints for the dead primary");
    c.nodes[victim].restart();
    c.wait_hints_drained(&[0, 1, 2, 3]);
    let local = json(&c.nodes[victim].cli(&["get", &key, "--local", "--json"]));
    assert_eq!(local["values"], serde_json::json!(["v2"]));
}

#[test]
fn concurrent_blind_writes_through_two_nodes_make_siblings() {
    let c = Cluster::start(3, &[]);
    c.wait_converged(&[0, 1, 2], 3);
    assert_eq!(code(&c.nodes[0].cli(&["put", "k", "from-n1"])), 0);
    assert_eq!(code(&c.nodes[1].cli(&["put", "k", "from-n2"])), 0);
    let get = json(&c.nodes[2].cli(&["get", "k", "--json"]));
    let mut values: Vec<String> = get["values"]
        .as_array()
        .expect("values")
        .iter()
        .map(|v| v.as_str().expect("text").to_string())
        .collect();
    values.sort();
    assert_eq!(values, vec!["from-n1", "from-n2"]);
    let ctx = get["context"].as_str().expect("context");
    assert_eq!(
        code(&c.nodes[2].cli(&["put", "k", "merged", "--context", ctx])),
        0
    );
    for i in 0..3 {
        let get = json(&c.nodes[i].cli(&["get", "k", "--json", "--r", "3"]));
        assert_eq!(get["values"], serde_json::json!(["merged"]), "node {i}");
    }
}

#[test]
fn counter_through_a_node_failure_equals_the_acknowledged_sum() {
    let mut c = Cluster::start(4, &[]);
    c.wait_converged(&[0, 1, 2, 3], 4);
    let victim = 3;
    let addrs: Vec<String> = c.nodes.iter().map(|n| n.addr.clone()).collect();
    let acked = Arc::new(AtomicU64::new(0));
    let maybe = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let rt = runtime();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for client_no in 0..5usize {
            let addr = addrs[client_no % addrs.len()].clone();
            let (acked, maybe, done) = (acked.clone(), maybe.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let mut client = Client::connect(&addr).await.expect("connect");
                client.set_timeout(Duration::from_secs(5));
                for _ in 0..200 {
                    match client.counter_add(b"hits", 1).await {
                        Ok(_) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(ClientError::Api(ApiError::QuorumNotReached(q)))
                            if !q.indeterminate => {}
                        Err(ClientError::Api(ApiError::Unavailable { .. })) => {}
                        Err(ClientError::Connect { .. }) => {}
                        Err(_) => {
                            maybe.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        // Kill one node midway.
        let deadline = Instant::now() + Duration::from_secs(120);
        while done.load(Ordering::Relaxed) < 500 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::task::block_in_place(|| c.nodes[victim].kill9());
        for t in tasks {
            t.await.expect("client task");
        }
    });
    let (acked, maybe) = (acked.load(Ordering::Relaxed), maybe.load(Ordering::Relaxed));
    assert!(acked >= 500, "most increments succeed: {acked}");
    c.nodes[victim].restart();
    c.wait_converged(&[0, 1, 2, 3], 4);
    c.wait_hints_drained(&[0, 1, 2, 3]);
    // At once: a coordinator that failed to dial the victim while it was down
    // dials it again as soon as gossip sees it back, without waiting out its pause
    // after failures (REDIAL_AFTER); R=3 needs the victim.
    let out = c.nodes[0].cli(&["counter", "get", "hits", "--r", "3", "--json"]);
    let value = json(&out)["value"].as_u64().expect("value");
    assert!(
        value >= acked && value <= acked + maybe,
        "final {value}, acknowledged {acked}, indeterminate {maybe}"
    );
}

#[test]
fn a_restarted_node_is_dialled_again_as_soon_as_gossip_sees_it_back() {
    let mut c = Cluster::start(3, &[]);
    c.wait_converged(&[0, 1, 2], 3);
    c.nodes[2].kill9();
    // n1 sends these writes to n3 too: the first meets the dead connection, the
    // next dial and fail, and n1 pauses before dialling n3 again (SWIM needs a
    // few probe periods to suspect n3, so n1 still tries it).
    for i in 0..3 {
        let out = c.nodes[0].cli(&["put", &format!("k{i}"), "v", "--w", "2"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        std::thread::sleep(Duration::from_millis(50));
    }
    let redials = |c: &Cluster| c.status(0)["peer_redials"].as_u64().expect("peer_redials");
    let before = redials(&c);
    // Back within a probe period or two: SWIM may never have suspected it; the
    // new generation in its announcement is what n1 goes by.
    c.nodes[2].restart();
    common::wait_until("n1 dials n3 again", Duration::from_secs(30), || {
        redials(&c) > before
    });
    // A quorum of all three answers at once: n1 holds a connection to n3.
    let out = c.nodes[0].cli(&["get", "k2", "--r", "3"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "v");
}

#[test]
fn wrong_secret_never_joins_and_missing_secret_is_refused() {
    let c = Cluster::start(3, &[]);
    c.wait_converged(&[0, 1, 2], 3);
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad-secret");
    std::fs::write(&bad, "not the cluster's secret at all").expect("write");
    common::private(&bad);
    let intruder = common::Server::start(
        dir.path(),
        &[
            "--node-id",
            "intruder",
            "--cluster-secret-file",
            bad.to_str().expect("path"),
            "--seed",
            &c.nodes[0].addr,
        ],
    );
    std::thread::sleep(Duration::from_secs(4));
    let mut rejected = 0;
    for i in 0..3 {
        let s = c.status(i);
        let ids: Vec<&str> = s["members"]
            .as_array()
            .expect("members")
            .iter()
            .map(|m| m["node_id"].as_str().expect("id"))
            .collect();
        assert_eq!(ids, vec!["n1", "n2", "n3"]);
        rejected += s["gossip_rejected_auth"].as_u64().expect("counter");
    }
    assert!(rejected > 0, "the intruder's datagrams are counted");
    let s = json(&intruder.cli(&["status", "--json"]));
    assert_eq!(s["members"].as_array().expect("members").len(), 1);
    // No secret at all: refused at start, with one line.
    let out = common::run_cli(
        &[
            "serve",
            "--data-dir",
            dir.path().join("x").to_str().expect("path"),
            "--listen",
            "127.0.0.1:1",
            "--seed",
            &c.nodes[0].addr,
        ],
        None,
    );
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("without a secret"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).trim().lines().count(), 1);
}

#[test]
fn sixth_node_joins_under_write_load_without_losing_reads() {
    let mut c = Cluster::start(5, &[]);
    let all: Vec<usize> = (0..5).collect();
    let before = c.wait_converged(&all, 5);
    let addrs: Vec<String> = c.nodes.iter().map(|n| n.addr.clone()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let misses = Arc::new(Mutex::new(Vec::<String>::new()));
    let rt = runtime();
    let (writer, reader) = {
        let _guard = rt.enter();
        let (stop_w, acked_w, addrs_w) = (stop.clone(), acked.clone(), addrs.clone());
        let writer = rt.spawn(async move {
            let mut clients = Vec::new();
            for a in &addrs_w {
                clients.push(Client::connect(a).await.expect("connect"));
            }
            let mut i = 0u64;
            while !stop_w.load(Ordering::Relaxed) && i < 20_000 {
                let key = format!("load-{i}");
                let value = format!("v{i}");
                let client = &clients[(i as usize) % clients.len()];
                if client
                    .put(key.as_bytes(), value.as_bytes(), None)
                    .await
                    .is_ok()
                {
                    acked_w.lock().expect("lock").insert(key, value);
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let (stop_r, acked_r, misses_r) = (stop.clone(), acked.clone(), misses.clone());
        let reader = rt.spawn(async move {
            let client = Client::connect(&addrs[0]).await.expect("connect");
            let mut round = 0;
            while !stop_r.load(Ordering::Relaxed) && round < 10_000 {
                round += 1;
                let sample: Vec<(String, String)> = {
                    let a = acked_r.lock().expect("lock");
                    a.iter()
                        .rev()
                        .take(50)
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                };
                for (k, v) in sample {
                    match client.get(k.as_bytes()).await {
                        Ok(r) if r.siblings.contains(&v.into_bytes()) => {}
                        Ok(r) => misses_r
                            .lock()
                            .expect("lock")
                            .push(format!("{k}: {:?}", r.siblings)),
                        // A timeout is not a lost key; not-found is.
                        Err(_) => {}
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        (writer, reader)
    };
    std::thread::sleep(Duration::from_secs(2));
    c.add();
    let all: Vec<usize> = (0..6).collect();
    let after = c.wait_converged(&all, 6);
    assert_ne!(before, after, "the epoch changes everywhere");
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        writer.await.expect("writer");
        reader.await.expect("reader");
    });
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() > 100, "writes kept succeeding: {}", acked.len());
    // Every acknowledged write is readable from every node at R=2.
    let misses_after: Vec<String> = rt.block_on(async {
        let mut out = Vec::new();
        for a in c.nodes.iter().map(|n| n.addr.clone()) {
            let mut client = Client::connect(&a).await.expect("connect");
            client.set_options(RequestOptions {
                r: Some(2),
                ..RequestOptions::default()
            });
            for (k, v) in acked.iter().step_by(7) {
                match client.get(k.as_bytes()).await {
                    Ok(r) if r.siblings.contains(&v.clone().into_bytes()) => {}
                    other => out.push(format!("{a} {k}: {other:?}")),
                }
            }
        }
        out
    });
    assert!(misses_after.is_empty(), "{misses_after:?}");
    let misses = misses.lock().expect("lock");
    assert!(misses.is_empty(), "reads during the join: {misses:?}");
}

#[test]
fn read_repair_fixes_a_replica_that_missed_a_write() {
    let mut c = Cluster::start(3, &["--hinted-handoff", "off"]);
    c.wait_converged(&[0, 1, 2], 3);
    c.nodes[2].kill9();
    let put = c.nodes[0].cli(&["put", "rr", "value"]);
    assert_eq!(code(&put), 0, "{}", stderr(&put));
    c.nodes[2].restart();
    c.wait_converged(&[0, 1, 2], 3);
    let local = c.nodes[2].cli(&["get", "rr", "--local"]);
    assert_eq!(code(&local), 1, "the restarted replica missed the write");
    // A read that hears from all three repairs the one that differed.
    let get = json(&c.nodes[0].cli(&["get", "rr", "--r", "3", "--json"]));
    assert_eq!(get["values"], serde_json::json!(["value"]));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let local = c.nodes[2].cli(&["get", "rr", "--local", "--json"]);
        if code(&local) == 0 {
            assert_eq!(json(&local)["values"], serde_json::json!(["value"]));
            break;
        }
        assert!(Instant::now() < deadline, "read repair never reached n3");
        std::thread::sleep(Duration::from_millis(100));
    }
    let repairs: u64 = (0..3)
        .map(|i| c.status(i)["read_repairs"].as_u64().expect("counter"))
        .sum();
    assert!(repairs >= 1);
}

#[test]
fn leave_and_remove_change_the_ring_and_keep_data_readable() {
    let mut c = Cluster::start(5, &[]);
    let all: Vec<usize> = (0..5).collect();
    let first = c.wait_converged(&all, 5);
    for i in 0..50 {
        let out = c.nodes[i % 5].cli(&["put", &format!("lr-{i}"), &format!("v{i}")]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    // Membership commands need the cluster secret.
    let secret = c.secret_file.to_string_lossy().into_owned();
    let out = c.nodes[4].cli(&["leave"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let wrong = c.root.path().join("wrong");
    std::fs::write(&wrong, "some other secret of 32 bytes...").expect("write");
    common::private(&wrong);
    let out = c.nodes[4].cli(&[
        "leave",
        "--cluster-secret-file",
        wrong.to_str().expect("path"),
    ]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("secret"), "{}", stderr(&out));
    // n5 leaves: it stops owning partitions but stays up and readable.
    let out = c.nodes[4].cli(&["leave", "--json", "--cluster-secret-file", &secret]);
    assert_eq!(json(&out)["node_id"], "n5");
    let deadline = Instant::now() + Duration::from_secs(30);
    let second = loop {
        let rings: Vec<serde_json::Value> = (0..5)
            .map(|i| json(&c.nodes[i].cli(&["ring", "--json"])))
            .collect();
        let left_everywhere = rings
            .iter()
            .all(|r| r["counts"].get("n5").is_none() && r["epoch"] == rings[0]["epoch"]);
        if left_everywhere {
            break rings[0]["epoch"].as_str().expect("epoch").to_string();
        }
        assert!(Instant::now() < deadline, "leave did not spread");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_ne!(first, second);
    let s = c.status(0);
    let n5 = s["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["node_id"] == "n5")
        .cloned()
        .expect("n5 listed");
    assert_eq!(n5["status"], "leaving");
    // n4 dies and an operator removes it.
    c.nodes[3].kill9();
    let remove = |id: &str| c.nodes[0].cli(&["remove", id, "--cluster-secret-file", &secret]);
    assert_eq!(code(&remove("nobody")), 2, "unknown nodes are refused");
    assert_eq!(code(&remove("n1")), 2, "a node cannot remove itself");
    let out = remove("n4");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = json(&c.nodes[1].cli(&["ring", "--json"]));
        let counts = r["counts"].as_object().expect("counts").clone();
        if counts.len() == 3 && counts.get("n4").is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "removal did not spread: {counts:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every key is still readable at R=2 from the three remaining owners.
    for i in 0..50 {
        let out = c.nodes[i % 3].cli(&["get", &format!("lr-{i}"), "--json"]);
        assert_eq!(
            json(&out)["values"],
            serde_json::json!([format!("v{i}")]),
            "lr-{i}"
        );
    }
}

#[test]
fn garbage_datagrams_and_failed_peer_handshakes_are_counted() {
    use std::io::{Read, Write};
    let c = Cluster::start(1, &[]);
    let addr: std::net::SocketAddr = c.nodes[0].addr.parse().expect("addr");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    udp.send_to(b"hello", addr).expect("send");
    udp.send_to(&[0u8; 1500], addr).expect("send");
    udp.send_to(&[1u8; 64], addr).expect("send");
    // A peer handshake with a proof made without the secret.
    let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut hello = b"RKVP\x03".to_vec();
    hello.extend_from_slice(&[7u8; 32]);
    // Naming node "n9", meaning to reach n1.
    hello.push(2);
    hello.extend_from_slice(b"n9");
    hello.push(2);
    hello.extend_from_slice(b"n1");
    tcp.write_all(&hello).expect("write");
    let mut reply = [0u8; 64];
    tcp.read_exact(&mut reply).expect("acceptor answers");
    tcp.write_all(&[9u8; 32]).expect("write");
    let mut verdict = [0u8; 1];
    let _ = tcp.read(&mut verdict);
    assert_ne!(verdict[0], 1, "a wrong proof is never accepted");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = c.status(0);
        let auth = s["gossip_rejected_auth"].as_u64().expect("counter");
        let big = s["gossip_rejected_oversized"].as_u64().expect("counter");
        let peers = s["peer_handshakes_refused"].as_u64().expect("counter");
        if auth >= 2 && big >= 1 && peers >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counters: auth {auth}, oversized {big}, handshakes {peers}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Still serving.
    assert_eq!(code(&c.nodes[0].cli(&["put", "still", "here"])), 0);
}

#[test]
fn without_fallbacks_the_coordinator_keeps_the_hint_and_a_lone_restart_remembers_the_ring() {
    let mut c = Cluster::start(3, &[]);
    c.wait_converged(&[0, 1, 2], 3);
    c.nodes[2].kill9();
    let put = c.nodes[0].cli(&["put", "kept", "v"]);
    assert_eq!(code(&put), 0, "{}", stderr(&put));
    let pending: u64 = (0..2)
        .map(|i| c.status(i)["hints_pending"].as_u64().expect("hints"))
        .sum();
    assert!(
        pending >= 1,
        "with no node to stand in, a replica keeps the hint"
    );
    c.nodes[2].restart();
    c.wait_hints_drained(&[0, 1, 2]);
    let local = json(&c.nodes[2].cli(&["get", "kept", "--local", "--json"]));
    assert_eq!(local["values"], serde_json::json!(["v"]));
    // Everyone stops; n1 comes back alone. It remembers a three-node ring, so it
    // neither claims every key nor pretends one copy is a quorum.
    for i in [1, 2, 0] {
        c.nodes[i].kill9();
    }
    c.nodes[0].restart();
    let ring = json(&c.nodes[0].cli(&["ring", "--json"]));
    assert_eq!(ring["counts"].as_object().expect("counts").len(), 3);
    let get = c.nodes[0].cli(&["get", "kept", "--timeout-ms", "3000"]);
    assert_eq!(code(&get), 3, "{}", stderr(&get));
    let put = c.nodes[0].cli(&["put", "kept", "w", "--timeout-ms", "3000"]);
    assert_eq!(code(&put), 3, "{}", stderr(&put));
    let local = json(&c.nodes[0].cli(&["get", "kept", "--local", "--json"]));
    assert!(
        local["values"]
            .as_array()
            .expect("values")
            .contains(&serde_json::json!("v"))
    );
}

/// A base port with `k` consecutive free TCP and UDP ports after it.
#[test]
fn dev_starts_a_local_cluster_and_stops_it_on_ctrl_c() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::free_run(3);
    let mut dev = std::process::Command::new(common::bin())
        .args([
            "dev",
            "--nodes",
            "3",
            "--base-port",
            &base.to_string(),
            "--data-dir",
        ])
        .arg(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn dev");
    let addr = |i: u16| format!("127.0.0.1:{}", base + i);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = common::run_cli(&["ring", "--json", "--connect", &addr(2)], None);
        if code(&out) == 0
            && json(&out)["counts"]
                .as_object()
                .is_some_and(|c| c.len() == 3)
        {
            break;
        }
        assert!(Instant::now() < deadline, "dev cluster did not form");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        code(&common::run_cli(
            &["put", "k", "v", "--connect", &addr(0)],
            None
        )),
        0
    );
    let got = common::run_cli(&["get", "k", "--connect", &addr(2)], None);
    assert_eq!(common::stdout(&got).trim(), "v");
    // The Rust client finds the cluster through any live seed.
    let rt = runtime();
    let read = rt.block_on(async {
        let c = Client::connect_any(&["127.0.0.1:1", &addr(1)])
            .await
            .expect("connect");
        c.get(b"k").await.expect("get")
    });
    assert_eq!(read.siblings, vec![b"v".to_vec()]);
    let _ = std::process::Command::new("kill")
        .args(["-INT", &dev.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = dev.try_wait() {
            assert!(status.success(), "dev exits cleanly: {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = dev.kill();
            panic!("dev did not stop");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut text = String::new();
    use std::io::Read;
    dev.stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut text)
        .expect("read");
    assert!(text.contains("--connect"), "prints how to connect: {text}");
    for i in 0..3 {
        assert!(
            std::net::TcpStream::connect(addr(i)).is_err(),
            "node {i} stopped with dev"
        );
    }
}

/// A real gossip datagram, captured (node 2 announces to a "seed" this test holds)
/// and sent again to node 1, from the test's two sockets: refused as a replay and
/// counted; membership goes on.
#[test]
fn a_captured_gossip_datagram_replayed_is_refused_and_counted() {
    let sniffer = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    sniffer
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let fake_seed = sniffer.local_addr().expect("addr").to_string();
    // n2 also names a seed that never answers (this test's socket): it keeps
    // announcing there, and the test keeps what arrives.
    let mut c = Cluster::start(1, &[]);
    c.extra.extend(["--seed".to_string(), fake_seed]);
    c.add();
    c.wait_converged(&[0, 1], 2);
    let from_n2: std::net::SocketAddr = c.nodes[1].addr.parse().expect("addr");
    let mut buf = [0u8; 2048];
    let captured = loop {
        let (len, from) = sniffer
            .recv_from(&mut buf)
            .expect("an announce reaches the seed");
        if from == from_n2 {
            break buf[..len].to_vec();
        }
    };
    // Sent on to n1, which hears n2's datagrams all the time.
    let n2: std::net::SocketAddr = c.nodes[0].addr.parse().expect("addr");
    let before = c.status(0)["gossip_rejected_replay"]
        .as_u64()
        .expect("counter");
    let attacker = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    for _ in 0..3 {
        sniffer.send_to(&captured, n2).expect("replay");
        attacker.send_to(&captured, n2).expect("replay");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = c.status(0);
        let replayed = s["gossip_rejected_replay"].as_u64().expect("counter") - before;
        // The first copy may be fresh to n2 (it never heard that announce); every
        // other is a replay.
        if replayed >= 5 {
            assert_eq!(
                s["gossip_rejected_auth"].as_u64(),
                Some(0),
                "authentic bytes"
            );
            break;
        }
        assert!(Instant::now() < deadline, "replays counted: {replayed}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(common::stdout(&c.nodes[0].cli(&["status"])).contains("replayed"));
    c.wait_converged(&[0, 1], 2);
    assert_eq!(code(&c.nodes[0].cli(&["put", "after-replay", "v"])), 0);
}

/// The cluster secret rotates with three rolling restarts (accept the new; sign
/// with the new and accept the old; the new alone) without a node ever dropping out
/// of the membership; afterwards a node with only the old secret is refused.
#[test]
fn the_cluster_secret_rotates_with_rolling_restarts_without_losing_membership() {
    let mut c = Cluster::start(3, &[]);
    c.wait_converged(&[0, 1, 2], 3);
    let old = c.secret_file.to_string_lossy().into_owned();
    let new_path = c.root.path().join("secret-new");
    std::fs::write(&new_path, "a new cluster secret, 32 bytes!\n").expect("secret");
    common::private(&new_path);
    let new = new_path.to_string_lossy().into_owned();
    let phases = [
        vec![
            "--cluster-secret-file",
            &old,
            "--accept-cluster-secret-file",
            &new,
        ],
        vec![
            "--cluster-secret-file",
            &new,
            "--accept-cluster-secret-file",
            &old,
        ],
        vec!["--cluster-secret-file", &new],
    ];
    let mut written = Vec::new();
    for phase in &phases {
        for i in 0..3 {
            let args = &mut c.nodes[i].args;
            for flag in ["--cluster-secret-file", "--accept-cluster-secret-file"] {
                if let Some(at) = args.iter().position(|a| a == flag) {
                    args.drain(at..at + 2);
                }
            }
            args.extend(phase.iter().map(|s| s.to_string()));
            assert_eq!(c.nodes[i].terminate(), Some(0));
            c.nodes[i].restart();
            c.wait_converged(&[0, 1, 2], 3);
            let key = format!("rot-{}", written.len());
            let out = c.nodes[(i + 1) % 3].cli(&["put", &key, "v", "--w", "3"]);
            assert_eq!(code(&out), 0, "{key}: {}", common::stderr(&out));
            written.push(key);
        }
    }
    for key in &written {
        assert_eq!(
            common::stdout(&c.nodes[0].cli(&["get", key, "--r", "3"])),
            "v\n"
        );
    }
    let refused_before = c.status(0)["gossip_rejected_auth"]
        .as_u64()
        .expect("counter");
    // Only the old secret: its datagrams and handshakes no longer get in.
    let dir = c.root.path().join("n-old");
    std::fs::create_dir_all(&dir).expect("dir");
    let stale = common::Server::start(
        &dir,
        &[
            "--node-id",
            "n-old",
            "--cluster-secret-file",
            &old,
            "--seed",
            &c.nodes[0].addr,
            "--probe-ms",
            "200",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.status(0)["gossip_rejected_auth"]
        .as_u64()
        .expect("counter")
        <= refused_before
    {
        assert!(
            Instant::now() < deadline,
            "the old secret's datagrams were not refused"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let members = c.status(0)["members"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(members.len(), 3, "{members:?}");
    drop(stale);
}

#[test]
fn replica_writes_and_reads_ready_together_share_a_frame_and_all_arrive() {
    let c = Cluster::start(3, &[]);
    c.wait_converged(&[0, 1, 2], 3);
    let rt = runtime();
    let addr = c.nodes[0].addr.clone();
    // Many writes and reads in flight through one coordinator at once: its replica
    // requests to each peer queue up and leave together.
    let written: Vec<(String, String)> = rt.block_on(async {
        let mut client = Client::connect(&addr).await.expect("connect");
        client.disable_routing();
        let mut tasks = Vec::new();
        for t in 0..64 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..20 {
                    let (k, v) = (format!("batch-{t}-{i}"), format!("v{t}-{i}"));
                    if client.put(k.as_bytes(), v.as_bytes(), None).await.is_ok() {
                        let r = client.get(k.as_bytes()).await.expect("read at R=2");
                        assert!(
                            r.siblings.contains(&v.clone().into_bytes()),
                            "{k} read back"
                        );
                        acked.push((k, v));
                    }
                }
                acked
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        all
    });
    assert_eq!(written.len(), 64 * 20, "every write acknowledged");
    let s = c.status(0);
    let (batches, items) = (
        s["peer_batches"].as_u64().expect("peer_batches"),
        s["peer_batched_items"]
            .as_u64()
            .expect("peer_batched_items"),
    );
    assert!(batches > 0, "some replica requests shared a frame: {s}");
    assert!(
        items >= 2 * batches,
        "a batch carries two items or more: {items} in {batches}"
    );
    // Every replica got every write (W=2 answered; the third arrives as well).
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in [1, 2] {
        let missing: Vec<String> = rt.block_on(async {
            let client = Client::connect(&c.nodes[i].addr).await.expect("connect");
            let mut missing = Vec::new();
            for (k, v) in &written {
                loop {
                    match client.get_local(k.as_bytes()).await {
                        Ok(r) if r.siblings.contains(&v.clone().into_bytes()) => break,
                        _ if Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        other => {
                            missing.push(format!("{k}: {other:?}"));
                            break;
                        }
                    }
                }
            }
            missing
        });
        assert!(
            missing.is_empty(),
            "node {i} lacks {} writes: {:?}",
            missing.len(),
            &missing[..missing.len().min(3)]
        );
    }
}
