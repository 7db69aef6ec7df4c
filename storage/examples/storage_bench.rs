//! Raw storage throughput and restart time of `ringkv-storage`.
//!
//! ```text
//! cargo run --release -p ringkv-storage --example storage_bench -- [KEYS] [VALUE_BYTES] [DIR]
//! ```
//!
//! Writes KEYS objects through the atomic read-merge-write path (object + Merkle leaf
//! per batch, sync policy `none` so the disk's fsync rate does not hide the engine),
//! reads 200,000 random keys back, then closes the store and times the reopen and the
//! first root of every partition (leaves loaded, no key rescanned). For contrast it
//! also times a full scan of the objects, which is what a rebuild would have to read.
//!
//! With `CRASH=1` it aborts after the load (no checkpoint, no flush: a kill -9), and
//! `REOPEN_ONLY=1` then times opening that directory and loading every root.

use std::time::Instant;

use ringkv_storage::{Change, StorageError, Store, StoreConfig, SyncPolicy};

const PARTITIONS: u32 = 256;

fn partition(key: &[u8]) -> u32 {
    u32::from(blake3::hash(key).as_bytes()[0]) % PARTITIONS
}

fn key(i: u64) -> Vec<u8> {
    format!("user{i:012}").into_bytes()
}

fn open(dir: &std::path::Path) -> Store {
    let mut cfg = StoreConfig::new(dir);
    cfg.sync = SyncPolicy::None;
    Store::open(cfg).expect("open store")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let keys: u64 = args
        .next()
        .map(|a| a.parse().expect("KEYS"))
        .unwrap_or(1_000_000);
    let value_bytes: usize = args
        .next()
        .map(|a| a.parse().expect("VALUE_BYTES"))
        .unwrap_or(100);
    let tmp;
    let dir = match args.next() {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir().expect("tempdir");
            tmp.path().to_path_buf()
        }
    };
    let value = vec![b'x'; value_bytes];

    if std::env::var_os("REOPEN_ONLY").is_some() {
        let t = Instant::now();
        let store = open(&dir);
        let open_ms = t.elapsed().as_secs_f64() * 1000.0;
        let t = Instant::now();
        for p in 0..PARTITIONS {
            store.root(p).expect("root");
        }
        println!(
            "open {open_ms:.1} ms, then all {PARTITIONS} roots in {:.1} ms ({:?})",
            t.elapsed().as_secs_f64() * 1000.0,
            store.tree_stats()
        );
        return;
    }
    let store = open(&dir);
    let t = Instant::now();
    for i in 0..keys {
        let k = key(i);
        let v = value.clone();
        store
            .update::<_, StorageError>(partition(&k), &k, |_| Ok((Change::Put(v), ())))
            .expect("put");
    }
    let put_s = t.elapsed().as_secs_f64();
    println!(
        "put: {keys} keys of {value_bytes} B in {put_s:.2} s = {:.0} ops/s",
        keys as f64 / put_s
    );

    let reads = 200_000u64.min(keys);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let t = Instant::now();
    for _ in 0..reads {
        // xorshift: a cheap, seeded spread of keys.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = key(x % keys);
        assert!(store.get(partition(&k), &k).expect("get").is_some());
    }
    let get_s = t.elapsed().as_secs_f64();
    println!(
        "get: {reads} random keys in {get_s:.2} s = {:.0} ops/s",
        reads as f64 / get_s
    );

    let roots: Vec<_> = (0..PARTITIONS)
        .map(|p| store.root(p).expect("root"))
        .collect();
    if std::env::var_os("CRASH").is_some() {
        // Like kill -9: no checkpoint, no flush, nothing beyond what reached the OS.
        println!("crashing on purpose");
        std::process::abort();
    }
    store.sync().expect("sync");
    drop(store);

    let t = Instant::now();
    let store = open(&dir);
    let open_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    for p in 0..PARTITIONS {
        assert_eq!(
            store.root(p).expect("root"),
            roots[p as usize],
            "root of partition {p} changed"
        );
    }
    let roots_ms = t.elapsed().as_secs_f64() * 1000.0;
    println!(
        "reopen: open {open_ms:.1} ms, then all {PARTITIONS} Merkle roots in {roots_ms:.1} ms ({:?})",
        store.tree_stats()
    );

    let t = Instant::now();
    let mut scanned = 0u64;
    for p in 0..PARTITIONS {
        for item in store.scan_partition(p) {
            item.expect("scan");
            scanned += 1;
        }
    }
    let scan_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(scanned, keys);
    println!(
        "for contrast, a full rescan of {scanned} objects (what a rebuild reads): {scan_ms:.0} ms"
    );
}
