//! Measures what anti-entropy exchanges cost: two replicas of `KEYS` keys (default
//! 1,000,000) that differ in `DIFF` keys (default 100), compared partition by
//! partition with the same exchange state machine the nodes run, in one process.
//!
//!     cargo run --release --example ae_efficiency -- [KEYS] [DIFF] [DIR]
//!
//! Prints the hashes and key digests exchanged, the object bytes moved, and a full
//! transfer for comparison.

use std::time::Instant;

use rand::{RngExt, SeedableRng, rngs::SmallRng};
use ringkv::object::Object;
use ringkv::repair::exchange::{Exchange, Need};
use ringkv::replica::{Limits, Replica};
use ringkv_storage::{Store, StoreConfig, SyncPolicy};

const Q: u32 = 256;

fn open(path: &std::path::Path, actor: u64) -> Replica {
    let mut cfg = StoreConfig::new(path);
    cfg.sync = SyncPolicy::None;
    Replica::new(Store::open(cfg).expect("open"), actor, Limits::default(), Q).expect("replica")
}

fn key(i: u64) -> Vec<u8> {
    format!("user{i:010}").into_bytes()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let keys: u64 = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let diff: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(100);
    let dir = args
        .get(3)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("ringkv-ae-efficiency"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let (a_dir, b_dir) = (dir.join("a"), dir.join("b"));
    let t = Instant::now();
    {
        let a = open(&a_dir, 1);
        let value = vec![b'x'; 100];
        let empty = crdts::VClock::new();
        for i in 0..keys {
            a.write_register(&key(i), Some(value.clone()), &empty)
                .expect("write");
        }
        a.store().sync().expect("sync");
    }
    println!("loaded {keys} keys in {:.1} s", t.elapsed().as_secs_f64());
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(&a_dir)
        .arg(&b_dir)
        .status()
        .expect("cp");
    assert!(status.success());
    let a = open(&a_dir, 1);
    let b = open(&b_dir, 2);
    let mut rng = SmallRng::seed_from_u64(7);
    let empty = crdts::VClock::new();
    let mut changed = std::collections::BTreeSet::new();
    while (changed.len() as u64) < diff {
        let i = rng.random_range(0..keys);
        if changed.insert(i) {
            b.write_register(&key(i), Some(b"changed on b".to_vec()), &empty)
                .expect("write");
        }
    }
    let t = Instant::now();
    let (mut requests, mut hashes, mut digests, mut digest_bytes) = (0u64, 0u64, 0u64, 0u64);
    let mut found = Vec::new();
    for p in 0..Q {
        let (sa, sb) = (a.store(), b.store());
        let mut x = Exchange::new(p, sa.root(p).expect("root"), sb.root(p).expect("root"));
        loop {
            match x.next_need() {
                Need::Done => break,
                Need::Children(nodes) => {
                    let l: Vec<_> = nodes
                        .iter()
                        .map(|&(lv, i)| sa.children(p, lv, i).expect("c"))
                        .collect();
                    let r: Vec<_> = nodes
                        .iter()
                        .map(|&(lv, i)| sb.children(p, lv, i).expect("c"))
                        .collect();
                    x.children(&l, &r).expect("children");
                }
                Need::Segments(segs) => {
                    let l: Vec<_> = segs
                        .iter()
                        .map(|&s| sa.segment_digests(p, s).expect("s"))
                        .collect();
                    let r: Vec<_> = segs
                        .iter()
                        .map(|&s| sb.segment_digests(p, s).expect("s"))
                        .collect();
                    digest_bytes += r
                        .iter()
                        .flatten()
                        .map(|(k, _)| k.len() as u64 + 32)
                        .sum::<u64>();
                    x.segments(&l, &r).expect("segments");
                }
            }
        }
        let s = x.stats();
        requests += s.requests + 1;
        hashes += s.hashes;
        digests += s.key_digests;
        found.extend(x.take_keys());
    }
    let elapsed = t.elapsed();
    // Objects moved: each differing key's state fetched from b, the merge pushed back.
    let mut object_bytes = 0u64;
    for k in &found {
        let ob = b
            .get(k)
            .expect("get")
            .map(|o| o.encode().expect("enc").len())
            .unwrap_or(0);
        let mut merged: Option<Object> = a.get(k).expect("get");
        if let (Some(m), Some(o)) = (&mut merged, b.get(k).expect("get")) {
            m.merge(&o).expect("merge");
        }
        let mb = merged.map(|o| o.encode().expect("enc").len()).unwrap_or(0);
        object_bytes += (k.len() + ob + k.len() + mb) as u64;
    }
    let full: u64 = (0..Q)
        .map(|p| {
            b.store()
                .scan_partition(p)
                .map(|r| r.map(|(k, v)| (k.len() + v.len()) as u64).unwrap_or(0))
                .sum::<u64>()
        })
        .sum();
    let tree_bytes = hashes * 32 + digest_bytes;
    println!(
        "differing keys: {} found of {} changed",
        found.len(),
        changed.len()
    );
    println!("requests (root comparisons included): {requests}");
    println!(
        "tree hashes: {hashes} ({:.1} per differing key beyond the {Q} roots); key digests: {digests}",
        (hashes - u64::from(Q)) as f64 / found.len().max(1) as f64
    );
    println!("tree and digest bytes: {tree_bytes}; object bytes both ways: {object_bytes}");
    println!(
        "state bytes in all: {} = {:.2}x the differing objects, {:.5} of a full transfer ({full} bytes)",
        tree_bytes + object_bytes,
        (tree_bytes + object_bytes) as f64 / object_bytes.max(1) as f64,
        (tree_bytes + object_bytes) as f64 / full.max(1) as f64
    );
    println!("comparison took {:.2} s in process", elapsed.as_secs_f64());
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}
