//! A log of 10,000 segments works under `ulimit -n 1024`: segments are opened
//! lazily through a bounded cache, and recovery opens one at a time. Its own test
//! binary, because the limit is the whole process's.

use ringkv_storage::{
    Change, Disk, Driver, SimulatedDisk, StorageError, Store, StoreConfig, SyncPolicy,
};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn value(i: u32) -> Vec<u8> {
    let mut v = format!("value-{i:08}-").into_bytes();
    v.resize(1000, (i % 251) as u8);
    v
}

#[test]
fn ten_thousand_segments_work_under_ulimit_1024() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl), 0);
        rl.rlim_cur = rl.rlim_max.min(1024);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &rl), 0);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // The simulated disk makes 10,000 fsyncs free; files are real.
    let disk = SimulatedDisk::new();
    let open = || {
        let mut cfg = StoreConfig::new(dir.path());
        cfg.sync = SyncPolicy::None;
        cfg.driver = Driver::Caller;
        cfg.disk = Disk::Simulated(disk.clone());
        cfg.segment_bytes = 4096;
        Store::open(cfg).expect("open")
    };
    let s = open();
    let mut written = 0u32;
    while s.log_stats().segments < 10_000 {
        let i = written;
        s.update::<_, StorageError>(i % 256, &i.to_be_bytes(), |_| {
            Ok((Change::Put(value(i)), ()))
        })
        .expect("put");
        written += 1;
        assert!(written < 100_000, "segments do not grow");
    }
    assert!(open_fds() < 1024);
    let check = |s: &Store| {
        // A stride through the keys, so reads jump between segments.
        for n in 0..written {
            let i = (n * 7919) % written;
            let got = s.get(i % 256, &i.to_be_bytes()).expect("get");
            assert_eq!(got, Some(value(i)), "key {i}");
        }
        assert!(open_fds() < 1024, "{} descriptors open", open_fds());
    };
    check(&s);
    s.close().expect("close");
    drop(s);
    let s = open();
    assert!(s.log_stats().segments >= 10_000);
    check(&s);
    let root = s.root(3).expect("root");
    assert_ne!(root, ringkv_storage::EMPTY);
}
