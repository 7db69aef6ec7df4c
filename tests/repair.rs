//! Repair against real `ringkv serve` processes: anti-entropy healing, handoff on
//! membership change, acknowledged tombstone reaping.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Cluster, code, json, runtime, stderr};
use ringkv::Client;

/// Roots of every partition on every node in `up`.
async fn roots(c: &Cluster, up: &[usize]) -> BTreeMap<usize, Vec<[u8; 32]>> {
    let mut out = BTreeMap::new();
    for &i in up {
        let client = Client::connect(&c.nodes[i].addr).await.expect("connect");
        out.insert(i, client.partition_roots().await.expect("roots"));
    }
    out
}

/// Whether every partition's primaries (per node 0's ring) hold equal roots and
/// every other node holds nothing of it.
fn settled(c: &Cluster, roots: &BTreeMap<usize, Vec<[u8; 32]>>) -> bool {
    let (r, n) = c.ring();
    let (q, replicas) = (r.ring_size(), n.min(r.members().len()));
    (0..q).all(|p| {
        let (primaries, _) = ringkv::cluster::walk_of(&r, p, n);
        let mut owner_roots = Vec::new();
        for (&i, node_roots) in roots {
            let id = format!("n{}", i + 1);
            if primaries.contains(&id) {
                owner_roots.push(node_roots[p as usize]);
            } else if node_roots[p as usize] != [0u8; 32] {
                return false;
            }
        }
        owner_roots.len() == replicas && owner_roots.windows(2).all(|w| w[0] == w[1])
    })
}

#[test]
fn anti_entropy_alone_heals_a_replica_that_missed_10000_writes() {
    let mut c = Cluster::start(
        3,
        &[
            "--hinted-handoff",
            "off",
            "--anti-entropy-interval-ms",
            "1000",
        ],
    );
    c.wait_converged(&[0, 1, 2], 3);
    c.nodes[2].kill9();
    let rt = runtime();
    let addrs = [c.nodes[0].addr.clone(), c.nodes[1].addr.clone()];
    rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..8usize {
            let addr = addrs[t % 2].clone();
            tasks.push(tokio::spawn(async move {
                let client = Client::connect(&addr).await.expect("connect");
                for i in (t..10_000).step_by(8) {
                    let k = format!("heal-{i}");
                    client
                        .put(k.as_bytes(), format!("v{i}").as_bytes(), None)
                        .await
                        .expect("put with W=2 and two live replicas");
                }
            }));
        }
        for t in tasks {
            t.await.expect("writer");
        }
    });
    c.nodes[2].restart();
    c.wait_converged(&[0, 1, 2], 3);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = rt.block_on(roots(&c, &[0, 1, 2]));
        if settled(&c, &r) {
            break;
        }
        assert!(Instant::now() < deadline, "roots never agreed");
        std::thread::sleep(Duration::from_millis(500));
    }
    let missing: Vec<usize> = rt.block_on(async {
        let client = Client::connect(&c.nodes[2].addr).await.expect("connect");
        let mut missing = Vec::new();
        for i in 0..10_000 {
            let got = client
                .get_local(format!("heal-{i}").as_bytes())
                .await
                .expect("get --local");
            if got.siblings != vec![format!("v{i}").into_bytes()] {
                missing.push(i);
            }
        }
        missing
    });
    assert!(missing.is_empty(), "{} keys missing on C", missing.len());
    let s = c.status(2);
    let repair = &s["repair"];
    assert!(
        repair["exchanges"].as_u64().expect("exchanges") > 0
            || c.status(0)["repair"]["exchanges"].as_u64().expect("x") > 0
    );
    assert!(repair["last_exchange_ms_ago"].is_u64(), "{repair}");
    // `ringkv repair` now: identical replicas cost one root comparison per partition,
    // batched into one request per peer, and nothing else.
    let before = c.status(0)["repair"].clone();
    let out = c.nodes[0].cli(&["repair", "--json"]);
    let r = json(&out);
    let after = c.status(0)["repair"].clone();
    assert_eq!(r["compared"], 256, "{r}");
    assert_eq!(r["exchanges"], 0, "{r}");
    assert_eq!(r["keys_repaired"], 0, "{r}");
    let delta = |f: &str| after[f].as_u64().expect(f) - before[f].as_u64().expect(f);
    // The timer may run a round of its own meanwhile: at most two rounds' worth.
    assert!(delta("root_requests") <= 4, "{before} -> {after}");
    // At least the 256 of this round; a timer round caught half-way (it asks each
    // peer for its share of the partitions) may add part of its own.
    assert!(delta("roots_compared") >= 256, "{before} -> {after}");
    assert_eq!(delta("exchanges"), 0);
    assert_eq!(delta("keys_repaired"), 0);
    let out = c.nodes[0].cli(&["repair", "--partition", "7"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[test]
fn growing_and_shrinking_under_load_hands_partitions_off_and_loses_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let mut c = Cluster::start(3, &["--anti-entropy-interval-ms", "1000"]);
    c.wait_converged(&[0, 1, 2], 3);
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let addrs: Vec<String> = c.nodes.iter().map(|n| n.addr.clone()).collect();
    let writer = {
        let (stop, acked) = (stop.clone(), acked.clone());
        rt.spawn(async move {
            let client = Client::connect(&addrs[0]).await.expect("connect");
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 100_000 {
                let (k, v) = (format!("grow-{i}"), format!("v{i}"));
                if client.put(k.as_bytes(), v.as_bytes(), None).await.is_ok() {
                    acked.lock().expect("lock").push((k, v));
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    c.add();
    c.add();
    c.wait_converged(&[0, 1, 2, 3, 4], 5);
    std::thread::sleep(Duration::from_secs(2));
    let secret = c.secret_file.to_string_lossy().into_owned();
    let out = c.nodes[4].cli(&["leave", "--cluster-secret-file", &secret]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    rt.block_on(writer).expect("writer");
    let all = [0, 1, 2, 3, 4];
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let r = rt.block_on(roots(&c, &all));
        if settled(&c, &r) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "partitions never settled on their owners: {:?}",
            (0..5)
                .map(|i| c.status(i)["repair"].clone())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let ring = json(&c.nodes[0].cli(&["ring", "--json"]));
    assert!(
        ring["counts"].get("n5").is_none(),
        "the leaver owns nothing"
    );
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() > 500, "writes kept going: {}", acked.len());
    let missing: Vec<String> = rt.block_on(async {
        let client = Client::connect(&c.nodes[1].addr).await.expect("connect");
        let mut missing = Vec::new();
        for (k, v) in &acked {
            match client.get(k.as_bytes()).await {
                Ok(r) if r.siblings.contains(&v.clone().into_bytes()) => {}
                other => missing.push(format!("{k}: {other:?}")),
            }
        }
        missing
    });
    assert!(
        missing.is_empty(),
        "{} acknowledged writes missing: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let handed: u64 = (0..5)
        .map(|i| {
            c.status(i)["repair"]["handoffs_done"]
                .as_u64()
                .expect("counter")
        })
        .sum();
    assert!(handed > 0, "partitions were handed off");
    // Every partition is on its owners now: each node forgets the earlier rings, so
    // reads stop asking their owners.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let earlier: Vec<u64> = (0..4)
            .map(|i| {
                c.status(i)["earlier_rings"]
                    .as_u64()
                    .expect("earlier_rings")
            })
            .collect();
        if earlier.iter().all(|e| *e == 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "earlier rings still kept after every handoff: {earlier:?}, {:?}",
            (0..4)
                .map(|i| c.status(i)["repair"].clone())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let forgotten: u64 = (0..4)
        .map(|i| {
            c.status(i)["repair"]["rings_forgotten"]
                .as_u64()
                .expect("counter")
        })
        .sum();
    assert!(forgotten > 0, "earlier rings were forgotten");
}

#[test]
fn a_delete_missed_by_a_dead_replica_stays_deleted_and_is_reaped() {
    let mut c = Cluster::start(
        3,
        &[
            "--hinted-handoff",
            "off",
            "--anti-entropy-interval-ms",
            "1000",
        ],
    );
    c.wait_converged(&[0, 1, 2], 3);
    for i in 0..20 {
        assert_eq!(code(&c.nodes[0].cli(&["put", &format!("d-{i}"), "old"])), 0);
    }
    // All three hold "old"; C is cut off, and the others delete.
    let deadline = Instant::now() + Duration::from_secs(30);
    while (0..20).any(|i| code(&c.nodes[2].cli(&["get", &format!("d-{i}"), "--local"])) != 0) {
        assert!(Instant::now() < deadline, "C never got the writes");
        std::thread::sleep(Duration::from_millis(200));
    }
    c.nodes[2].kill9();
    for i in 0..20 {
        let out = c.nodes[1].cli(&["delete", &format!("d-{i}")]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    c.nodes[2].restart();
    c.wait_converged(&[0, 1, 2], 3);
    // Anti-entropy meets C's old values with the tombstones: the deletes win, and
    // once every replica holds the tombstone it is reaped everywhere.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let gone_everywhere = (0..3).all(|n| {
            (0..20).all(|i| code(&c.nodes[n].cli(&["get", &format!("d-{i}"), "--local"])) == 1)
        });
        let reaped: u64 = (0..3)
            .map(|n| {
                c.status(n)["repair"]["tombstones_reaped"]
                    .as_u64()
                    .expect("counter")
            })
            .sum();
        for i in 0..20 {
            let out = c.nodes[i % 3].cli(&["get", &format!("d-{i}"), "--r", "3"]);
            assert_eq!(code(&out), 1, "d-{i} came back: {}", common::stdout(&out));
        }
        if gone_everywhere && reaped >= 60 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tombstones never reaped (reaped {reaped})"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let roots = runtime().block_on(roots(&c, &[0, 1, 2]));
    assert!(settled(&c, &roots));
}

/// A byte flipped in one replica's segment (the value's checksum now fails): that
/// replica never serves the damaged value, drops it (counted in `status`), and
/// anti-entropy brings the good value back, so all three hold it again.
#[test]
fn a_value_damaged_on_one_replicas_disk_is_never_served_and_comes_back() {
    let mut c = Cluster::start(
        3,
        &[
            "--hinted-handoff",
            "off",
            "--anti-entropy-interval-ms",
            "1000",
        ],
    );
    c.wait_converged(&[0, 1, 2], 3);
    let value = format!("good-value-{}", "q".repeat(48));
    for i in 0..20 {
        let out = c.nodes[0].cli(&["put", &format!("dmg-{i}"), &value, "--w", "3"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    c.nodes[2].terminate();
    // Every copy of the value in n3's segments, so whichever record the directory
    // points at is damaged.
    let data = c.nodes[2].dir.join("data");
    let mut flipped = 0;
    for entry in std::fs::read_dir(&data).expect("list") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|x| x != "seg") {
            continue;
        }
        let mut bytes = std::fs::read(&path).expect("read");
        let mut at = 0;
        while let Some(i) = bytes[at..]
            .windows(value.len())
            .position(|w| w == value.as_bytes())
        {
            bytes[at + i + 5] ^= 0x20;
            at += i + value.len();
            flipped += 1;
        }
        std::fs::write(&path, &bytes).expect("write");
    }
    assert!(flipped >= 20, "the values were not on disk ({flipped})");
    c.nodes[2].restart();
    c.wait_converged(&[0, 1, 2], 3);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut good = 0;
        for i in 0..20 {
            let key = format!("dmg-{i}");
            // Never the damaged bytes, locally or through a quorum.
            let local = c.nodes[2].cli(&["get", &key, "--local"]);
            match code(&local) {
                0 => {
                    assert_eq!(common::stdout(&local), format!("{value}\n"), "{key}");
                    good += 1;
                }
                1 => {}
                other => panic!("{key}: exit {other}: {}", stderr(&local)),
            }
            let quorum = c.nodes[2].cli(&["get", &key, "--r", "3"]);
            assert_eq!(code(&quorum), 0, "{}", stderr(&quorum));
            assert_eq!(common::stdout(&quorum), format!("{value}\n"), "{key}");
        }
        if good == 20 {
            break;
        }
        assert!(Instant::now() < deadline, "only {good} of 20 repaired");
        std::thread::sleep(Duration::from_millis(500));
    }
    let dropped = c.status(2)["storage"]["damaged_values_dropped"]
        .as_u64()
        .expect("counter");
    assert!(dropped >= 1, "dropped {dropped}");
    let roots = runtime().block_on(roots(&c, &[0, 1, 2]));
    assert!(settled(&c, &roots), "replicas converged");
}
