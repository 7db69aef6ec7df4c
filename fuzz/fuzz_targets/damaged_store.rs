//! A data directory damaged on disk, then opened and read: a store written once
//! (objects in four partitions, a delete, hints, metadata, hint files from a clean
//! close) is copied, the input flips bytes, cuts files short or appends to them,
//! and the store is opened and every key, partition and hint read. An error is
//! fine; a panic or a hang is not.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ringkv_storage::{Change, Store, StoreConfig, SyncPolicy};

const PARTITIONS: u32 = 4;

fn template() -> &'static Vec<(PathBuf, Vec<u8>)> {
    static T: OnceLock<Vec<(PathBuf, Vec<u8>)>> = OnceLock::new();
    T.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = StoreConfig::new(dir.path());
        cfg.sync = SyncPolicy::Always;
        cfg.segment_bytes = 4096;
        let store = Store::open(cfg).expect("open");
        for i in 0..60u32 {
            let key = format!("key-{i}");
            let value = vec![i as u8; 20 + (i as usize * 7) % 200];
            store
                .update::<_, ringkv_storage::StorageError>(i % PARTITIONS, key.as_bytes(), |_| {
                    Ok((Change::Put(value), ()))
                })
                .expect("put");
        }
        store
            .put_hint(b"hint-a", b"for another node")
            .expect("hint");
        store.set_meta("fuzz", b"meta").expect("meta");
        store.close().expect("close");
        let mut files = Vec::new();
        collect(dir.path(), dir.path(), &mut files);
        files.sort();
        files
    })
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(root, &p, out);
        } else {
            let rel = p.strip_prefix(root).expect("inside").to_path_buf();
            out.push((rel, std::fs::read(&p).expect("read")));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let files = template();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut contents: Vec<Vec<u8>> = files.iter().map(|(_, b)| b.clone()).collect();
    // Each 6 bytes: file, operation, position (u32 LE).
    for op in data.chunks_exact(6).take(64) {
        let f = op[0] as usize % contents.len();
        let at = u32::from_le_bytes([op[2], op[3], op[4], op[5]]) as usize;
        let bytes = &mut contents[f];
        match op[1] % 4 {
            0 | 1 if !bytes.is_empty() => {
                let i = at % bytes.len();
                bytes[i] ^= op[1] | 1;
            }
            2 => {
                let cut = if bytes.is_empty() {
                    0
                } else {
                    at % bytes.len()
                };
                bytes.truncate(cut);
            }
            _ => bytes.extend_from_slice(&op[2..]),
        }
    }
    for ((rel, _), bytes) in files.iter().zip(&contents) {
        let p = dir.path().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("dir");
        }
        std::fs::write(&p, bytes).expect("write");
    }
    let mut cfg = StoreConfig::new(dir.path());
    cfg.sync = SyncPolicy::Always;
    cfg.segment_bytes = 4096;
    let Ok(store) = Store::open(cfg) else {
        return;
    };
    for i in 0..60u32 {
        let _ = store.get(i % PARTITIONS, format!("key-{i}").as_bytes());
    }
    for p in 0..PARTITIONS {
        for item in store.scan_partition(p).take(1000) {
            let _ = item;
        }
        let _ = store.root(p);
    }
    let _ = store.hints(b"", 100);
    let _ = store.meta("fuzz");
    let _ = store.damaged(100);
    let _ = store.close();
});
