//! What the reviews of 2026-12-02 found (REVIEW-2026-12-02.md), against clusters of
//! real `ringkv serve` processes: deletes through a primary that lacks the key (A1),
//! a primary that owns a partition again after handing it off (A2), a removed node
//! that comes back (A9), and a forwarded write that reaches a node that is no
//! primary (B1).

mod common;

use std::time::Duration;

use common::{Cluster, code, json, runtime, stderr, stdout, wait_until};

/// Active members of node `i`'s ring.
fn ring_members(c: &Cluster, i: usize) -> Vec<String> {
    let r = json(&c.nodes[i].cli(&["ring", "--json"]));
    let mut ids: Vec<String> = r["counts"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Review A1 and C1: a primary that missed a put (it was down; hints are off)
/// coordinates the delete, with the put's context or without one, and a set
/// remove. Before the fixes each stored nothing, answered OK, and the value (or
/// member) stayed.
#[test]
fn a_delete_through_a_primary_that_missed_the_put_deletes_it() {
    let mut c = Cluster::start(
        3,
        &[
            "--hinted-handoff",
            "off",
            "--anti-entropy-interval-ms",
            "3600000",
        ],
    );
    c.wait_converged(&[0, 1, 2], 3);
    // Keys n3 coordinates (the client sends each request to the first primary).
    let led_by_n3 = |prefix: &str| {
        (0..10_000)
            .map(|i| format!("{prefix}-{i}"))
            .find(|k| c.primaries(k.as_bytes())[0] == "n3")
            .expect("a key n3 leads")
    };
    let (with, without, set) = (led_by_n3("with"), led_by_n3("without"), led_by_n3("set"));
    c.nodes[2].kill9();
    let put = c.nodes[0].cli(&["put", &with, "v"]);
    assert_eq!(code(&put), 0, "{}", stderr(&put));
    let ctx = stdout(&put).trim().to_string();
    assert_eq!(code(&c.nodes[0].cli(&["put", &without, "v"])), 0);
    assert_eq!(code(&c.nodes[0].cli(&["set", "add", &set, "m"])), 0);
    c.nodes[2].restart();
    c.wait_converged(&[0, 1, 2], 3);
    for key in [&with, &without] {
        let local = c.nodes[2].cli(&["get", key, "--local"]);
        assert_eq!(code(&local), 1, "n3 missed {key}");
    }
    let del = c.nodes[2].cli(&["delete", &with, "--context", &ctx]);
    assert_eq!(code(&del), 0, "{}", stderr(&del));
    let del = c.nodes[2].cli(&["delete", &without]);
    assert_eq!(code(&del), 0, "{}", stderr(&del));
    // Review C1: a set remove coordinated by a replica without the member.
    let rm = c.nodes[2].cli(&["set", "remove", &set, "m", "--json"]);
    assert_eq!(code(&rm), 0, "{}", stderr(&rm));
    assert_eq!(json(&rm)["removed"], true, "it saw the member");
    for key in [&with, &without] {
        for i in 0..3 {
            let got = c.nodes[i].cli(&["get", key, "--r", "3"]);
            assert_eq!(code(&got), 1, "{key} via n{}: {}", i + 1, stdout(&got));
        }
    }
    for i in 0..3 {
        let got = c.nodes[i].cli(&["set", "members", &set, "--r", "3"]);
        assert_eq!(stdout(&got), "", "the member is gone via n{}", i + 1);
    }
}

/// Review A2 (Riak's kv679) without any crash: a fourth node joins and takes a
/// partition from its first primary X, which hands it off and drops it; the node is
/// then removed, X owns the partition again with an empty copy, and increments land
/// on X before anti-entropy refills it. Before the fix X's new total started from
/// zero under its old actor, and the maximum-merge on the other replicas dropped the
/// acknowledged increments.
#[test]
fn counter_increments_survive_a_partition_handed_away_and_back() {
    let mut c = Cluster::start(3, &["--anti-entropy-interval-ms", "1000"]);
    c.wait_converged(&[0, 1, 2], 3);
    let (ring3, n) = c.ring();
    let mut four: Vec<ringkv::ring::Member> = ring3.members().to_vec();
    four.push(ringkv::ring::Member {
        id: "n4".into(),
        zone: String::new(),
    });
    four.sort();
    let ring4 = ringkv::ring::Ring::build(&four, ring3.ring_size(), n).expect("ring");
    let walk = |r: &ringkv::ring::Ring, k: &str| {
        ringkv::cluster::walk_of(
            r,
            ringkv::ring::partition_of(k.as_bytes(), r.ring_size()),
            n,
        )
        .0
    };
    // A key whose first primary leaves its replica set when n4 joins.
    let (key, x) = (0..10_000)
        .map(|i| format!("hits-{i}"))
        .find_map(|k| {
            let first = walk(&ring3, &k)[0].clone();
            (!walk(&ring4, &k).contains(&first)).then_some((k, first))
        })
        .expect("a key n4 takes from its first primary");
    let xi = Cluster::index(&x);
    let add = |c: &Cluster, d: &str| {
        let out = c.nodes[0].cli(&["counter", "add", &key, d]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    };
    add(&c, "5");
    let n4 = c.add();
    c.wait_converged(&[0, 1, 2, n4], 4);
    wait_until("X hands the partition off", Duration::from_secs(90), || {
        let s = c.status(xi);
        s["repair"]["handoffs_done"].as_u64().unwrap_or(0) > 0
            && s["repair"]["handoffs_in_flight"].as_u64() == Some(0)
    });
    c.nodes[n4].kill9();
    let secret = c.secret_file.to_string_lossy().into_owned();
    let out = c.nodes[xi].cli(&["remove", "n4", "--cluster-secret-file", &secret]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    wait_until(
        "X owns the partition again",
        Duration::from_secs(30),
        || ring_members(&c, xi).len() == 3,
    );
    // As fast as the client goes: anti-entropy refills X within a round or two.
    let rt = runtime();
    let acked = rt.block_on(async {
        let client = ringkv::Client::connect(&c.nodes[xi].addr)
            .await
            .expect("connect");
        let mut acked = 0i64;
        for _ in 0..40 {
            if client.counter_add(key.as_bytes(), 1).await.is_ok() {
                acked += 1;
            }
        }
        acked
    });
    assert!(acked > 30, "increments mostly acknowledged: {acked}");
    let expected = 5 + acked;
    wait_until(
        "all replicas agree on the acknowledged sum",
        Duration::from_secs(60),
        || {
            (0..3).all(|i| {
                let out = c.nodes[i].cli(&["counter", "get", &key, "--r", "3"]);
                stdout(&out).trim() == expected.to_string()
            })
        },
    );
}

/// Review A9: a node that is alive but cut off (frozen here) is removed by an
/// operator; a key it holds is deleted and its tombstone reaped everywhere else;
/// then the node comes back. Before the fix its anti-entropy and handoff pushed the
/// old value back into every replica.
#[test]
fn a_removed_node_that_comes_back_brings_no_deleted_value_back() {
    let c = Cluster::start(4, &["--anti-entropy-interval-ms", "1000"]);
    c.wait_converged(&[0, 1, 2, 3], 4);
    let keys: Vec<String> = (0..1000)
        .map(|i| format!("gone-{i}"))
        .filter(|k| c.primaries(k.as_bytes()).contains(&"n4".to_string()))
        .take(10)
        .collect();
    for k in &keys {
        assert_eq!(code(&c.nodes[0].cli(&["put", k, "old"])), 0);
    }
    wait_until("n4 holds every key", Duration::from_secs(30), || {
        keys.iter()
            .all(|k| code(&c.nodes[3].cli(&["get", k, "--local"])) == 0)
    });
    c.nodes[3].pause();
    let secret = c.secret_file.to_string_lossy().into_owned();
    wait_until("n4 is seen down", Duration::from_secs(30), || {
        c.status(0)["members"].as_array().is_some_and(|m| {
            m.iter()
                .any(|m| m["node_id"] == "n4" && m["liveness"] == "down")
        })
    });
    let out = c.nodes[0].cli(&["remove", "n4", "--cluster-secret-file", &secret]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    wait_until("the removal spreads", Duration::from_secs(30), || {
        (0..3).all(|i| ring_members(&c, i).len() == 3)
    });
    let up = [0usize, 1, 2];
    // Anti-entropy gives each key to the node that just became its primary, so every
    // delete below finds the value where it is coordinated.
    wait_until(
        "the new primaries hold every key",
        Duration::from_secs(60),
        || {
            keys.iter().all(|k| {
                up.iter()
                    .all(|&i| code(&c.nodes[i].cli(&["get", k, "--local"])) == 0)
            })
        },
    );
    for k in &keys {
        let out = c.nodes[1].cli(&["delete", k]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    wait_until(
        "the tombstones are reaped",
        Duration::from_secs(120),
        || c.repair_sum(&up, "tombstones_reaped") >= 3 * keys.len() as u64,
    );
    let refused_before = c.status(0)["peer_handshakes_refused"].as_u64().unwrap_or(0);
    c.nodes[3].resume();
    // Long enough for several anti-entropy rounds and a handoff (3 s to settle).
    std::thread::sleep(Duration::from_secs(8));
    for k in &keys {
        for i in up {
            let got = c.nodes[i].cli(&["get", k, "--r", "3"]);
            assert_eq!(
                code(&got),
                1,
                "{k} came back via n{}: {}",
                i + 1,
                stdout(&got)
            );
        }
    }
    // n4 learned it was removed and serves nothing (what it tried before it knew,
    // its peers refused: counted, though how much it tried depends on timing).
    let got = c.nodes[3].cli(&["get", &keys[0], "--local"]);
    assert_eq!(code(&got), 3, "{}", stderr(&got));
    assert!(stderr(&got).contains("removed"), "{}", stderr(&got));
    let refused: u64 = up
        .iter()
        .map(|&i| {
            let s = c.status(i);
            s["peer_handshakes_refused"].as_u64().unwrap_or(0)
                + s["peer_requests_refused"].as_u64().unwrap_or(0)
        })
        .sum();
    println!(
        "refused from n4 after it came back: {}",
        refused - refused_before
    );
    assert!(
        c.nodes[3].log_text().contains("removed this node"),
        "n4 says why it stopped"
    );
}

/// Review B1: a write forwarded to a node that is not a primary of the key in its own
/// view (it left: views disagree while a ring change spreads) is refused with nothing
/// applied. Before the fix that node counted its own copy toward W, so the write
/// could be acknowledged on one primary plus a node reads never ask.
#[test]
fn a_forwarded_write_to_a_node_that_is_no_primary_is_refused_unapplied() {
    let c = Cluster::start(3, &[]);
    c.wait_converged(&[0, 1, 2], 3);
    let secret = c.secret_file.to_string_lossy().into_owned();
    let out = c.nodes[2].cli(&["leave", "--cluster-secret-file", &secret]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    wait_until("n3 leaves the ring", Duration::from_secs(30), || {
        (0..3).all(|i| ring_members(&c, i) == ["n1", "n2"])
    });
    // As n1 would forward it.
    let rt = runtime();
    let r = rt.block_on(async {
        let peers =
            ringkv::peer::Peers::new(ringkv::net::TokioNetwork, c.key(), "n1".into(), 1 << 20);
        let addr = c.nodes[2].addr.parse().expect("addr");
        peers
            .call_no_retry("n3", addr, Duration::from_secs(5), |p, ctx| async move {
                p.coordinate(
                    ctx,
                    ringkv::peer::WriteRequest::Put {
                        key: b"forwarded".to_vec(),
                        value: Some(b"v".to_vec()),
                        context: None,
                    },
                    ringkv::rpc::api::RequestOptions::default(),
                )
                .await
            })
            .await
    });
    assert!(
        matches!(
            r,
            Err(ringkv::peer::pool::PeerError::Api(
                ringkv::rpc::api::ApiError::NotPrimary { .. }
            ))
        ),
        "{r:?}"
    );
    assert_eq!(code(&c.nodes[2].cli(&["get", "forwarded", "--local"])), 1);
    assert_eq!(code(&c.nodes[0].cli(&["get", "forwarded", "--r", "2"])), 1);
    // A write through n3 as a client sends it is forwarded to a primary and works.
    assert_eq!(code(&c.nodes[2].cli(&["put", "through-n3", "v"])), 0);
    assert_eq!(stdout(&c.nodes[0].cli(&["get", "through-n3"])), "v\n");
}

/// Review A6: connections that send four bytes and go silent hold client slots, but
/// never the slots of peers (they have their own, taken once the cluster key is
/// proven), so replication goes on while anonymous connections fill the rest.
#[test]
fn idle_anonymous_connections_cannot_lock_peers_out() {
    use std::io::Write;
    let c = Cluster::start(2, &["--max-connections", "4"]);
    c.wait_converged(&[0, 1], 2);
    let idle: Vec<std::net::TcpStream> = (0..6)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&c.nodes[1].addr).expect("connect");
            s.write_all(&[0, 0, 0, 16]).expect("write");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let client = c.nodes[1].cli(&["get", "k", "--timeout-ms", "2000"]);
    assert_eq!(
        code(&client),
        3,
        "client slots are full: {}",
        stderr(&client)
    );
    let rt = runtime();
    let replicated = rt.block_on(async {
        let peers =
            ringkv::peer::Peers::new(ringkv::net::TokioNetwork, c.key(), "n1".into(), 1 << 20);
        let addr = c.nodes[1].addr.parse().expect("addr");
        peers
            .call("n2", addr, Duration::from_secs(5), |p, ctx| async move {
                p.read(ctx, b"k".to_vec()).await
            })
            .await
    });
    assert!(replicated.is_ok(), "a peer still gets in: {replicated:?}");
    // Writes through the other node replicate to this one as usual.
    assert_eq!(code(&c.nodes[0].cli(&["put", "k", "v", "--w", "2"])), 0);
    drop(idle);
    wait_until("client slots free again", Duration::from_secs(10), || {
        stdout(&c.nodes[1].cli(&["get", "k", "--local"])) == "v\n"
    });
}

/// Review C9: two replicas that took blind writes apart each hold less than the
/// object limit, their merge more. Before the fix every replica refused the merge,
/// so they never converged; now they merge (up to four times the limit), a read
/// returns every sibling, and a write with its context resolves them.
#[test]
fn replicas_apart_converge_past_the_object_limit_and_a_write_resolves_them() {
    let mut c = Cluster::start(
        2,
        &[
            "--n",
            "2",
            "--r",
            "1",
            "--w",
            "1",
            "--hinted-handoff",
            "off",
            "--anti-entropy-interval-ms",
            "1000",
            "--max-value-bytes",
            "1024",
            "--max-object-bytes",
            "4096",
        ],
    );
    c.wait_converged(&[0, 1], 2);
    let blind = |c: &Cluster, i: usize, tag: &str| {
        for n in 0..3 {
            let v = format!("{tag}{n}-{}", "x".repeat(990));
            let out = c.nodes[i].cli(&["put", "wide", &v]);
            assert_eq!(code(&out), 0, "{}", stderr(&out));
        }
    };
    c.nodes[1].kill9();
    blind(&c, 0, "a");
    c.nodes[1].restart();
    c.nodes[0].kill9();
    blind(&c, 1, "b");
    c.nodes[0].restart();
    c.wait_converged(&[0, 1], 2);
    let local_count = |c: &Cluster, i: usize| {
        let out = c.nodes[i].cli(&["get", "wide", "--local", "--json"]);
        json(&out)["values"].as_array().map_or(0, Vec::len)
    };
    wait_until(
        "both replicas hold all six",
        Duration::from_secs(60),
        || local_count(&c, 0) == 6 && local_count(&c, 1) == 6,
    );
    let read = json(&c.nodes[0].cli(&["get", "wide", "--json", "--r", "2"]));
    assert_eq!(read["values"].as_array().map(Vec::len), Some(6));
    let more = c.nodes[0].cli(&["put", "wide", "one more"]);
    assert_eq!(
        code(&more),
        2,
        "a write that adds to it is refused: {}",
        stderr(&more)
    );
    let ctx = read["context"].as_str().expect("context");
    let out = c.nodes[0].cli(&["put", "wide", "resolved", "--context", ctx]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    wait_until("resolved everywhere", Duration::from_secs(30), || {
        (0..2).all(|i| stdout(&c.nodes[i].cli(&["get", "wide", "--local"])) == "resolved\n")
    });
}

/// Review C10: liveness belongs to a node, not to an address. A node wiped and
/// started again at the same address comes back under a new id; the old id must
/// not look alive (before the fix it did, for good: writes counted it, W=2 could be
/// met by one disk, and nothing told the operator to remove it).
#[test]
fn a_wiped_node_back_at_its_address_does_not_keep_its_old_id_alive() {
    let mut c = Cluster::start(3, &[]);
    c.wait_converged(&[0, 1, 2], 3);
    let addr = c.nodes[2].addr.clone();
    c.nodes[2].kill9();
    let wiped = c.root.path().join("n3-wiped");
    std::fs::create_dir_all(&wiped).expect("dir");
    let secret = c.secret_file.to_string_lossy().into_owned();
    let seed = c.nodes[0].addr.clone();
    // No --node-id: the default id of a new directory is new.
    c.nodes[2] = common::Server::start_at(
        &wiped,
        &addr,
        &[
            "--cluster-secret-file",
            &secret,
            "--probe-ms",
            "200",
            "--seed",
            &seed,
        ],
    );
    let liveness = |c: &Cluster, id: &str| -> Option<String> {
        let s = c.status(0);
        s["members"]
            .as_array()?
            .iter()
            .find(|m| m["node_id"] == id)
            .map(|m| m["liveness"].as_str().unwrap_or("").to_string())
    };
    let new_id = json(&c.nodes[2].cli(&["status", "--json"]))["node_id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_ne!(new_id, "n3");
    wait_until("the new id is alive", Duration::from_secs(60), || {
        liveness(&c, &new_id).as_deref() == Some("alive")
    });
    wait_until("the old id is not alive", Duration::from_secs(60), || {
        liveness(&c, "n3").is_some_and(|l| l != "alive")
    });
    // And it stays so: the old id is for the operator to remove.
    std::thread::sleep(Duration::from_secs(3));
    assert_ne!(liveness(&c, "n3").as_deref(), Some("alive"));
    let out = c.nodes[0].cli(&["remove", "n3", "--cluster-secret-file", &secret]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// Review C15: a node that left and was then shut down blocked tombstone reaping
/// everywhere (reaping hears from every member that is not removed). A leaver that
/// handed everything off now removes itself; `status` names whom reaping waits for.
#[test]
fn a_node_that_left_and_stopped_does_not_block_reaping() {
    let mut c = Cluster::start(4, &["--anti-entropy-interval-ms", "1000"]);
    c.wait_converged(&[0, 1, 2, 3], 4);
    for i in 0..10 {
        assert_eq!(
            code(&c.nodes[0].cli(&["put", &format!("gone-{i}"), "v"])),
            0
        );
    }
    let secret = c.secret_file.to_string_lossy().into_owned();
    let out = c.nodes[3].cli(&["leave", "--cluster-secret-file", &secret]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let status_of = |c: &Cluster, id: &str| -> String {
        c.status(0)["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["node_id"] == id).cloned())
            .map(|m| m["status"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    wait_until(
        "n4 hands off and removes itself",
        Duration::from_secs(90),
        || status_of(&c, "n4") == "removed",
    );
    assert!(c.nodes[3].log_text().contains("removes itself"));
    c.nodes[3].kill9();
    for i in 0..10 {
        let out = c.nodes[1].cli(&["delete", &format!("gone-{i}")]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    let up = [0usize, 1, 2];
    wait_until(
        "the tombstones are reaped",
        Duration::from_secs(120),
        || c.repair_sum(&up, "tombstones_reaped") >= 30,
    );
    for i in 0..10 {
        let got = c.nodes[0].cli(&["get", &format!("gone-{i}"), "--r", "3"]);
        assert_eq!(code(&got), 1, "{}", stdout(&got));
    }
    let waiting = c.status(0)["repair"]["reap_waiting_for"].clone();
    assert_eq!(waiting, serde_json::json!([]), "nobody to wait for");
    // A member that is down is named.
    c.nodes[2].kill9();
    wait_until(
        "status names the node reaping waits for",
        Duration::from_secs(30),
        || c.status(0)["repair"]["reap_waiting_for"] == serde_json::json!(["n3"]),
    );
}
