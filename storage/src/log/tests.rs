//! The log against a `BTreeMap` model, across rotations, merges, reopens, torn
//! tails and the crash states of a merge.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;

use super::recovery::{MERGE_MANIFEST, MERGE_SUFFIX};
use super::*;

/// Tiny segments and no garbage threshold, so a handful of writes rotate and merge;
/// two open segments at most, so reads keep closing and reopening files.
fn small() -> LogConfig {
    LogConfig {
        segment_bytes: 256,
        merge_min_dead_bytes: 0,
        open_segments: Some(2),
    }
}

fn put(space: Space, key: &[u8], value: &[u8]) -> Op {
    Op {
        space,
        key: key.to_vec(),
        value: Some(value.to_vec()),
    }
}

fn del(space: Space, key: &[u8]) -> Op {
    Op {
        space,
        key: key.to_vec(),
        value: None,
    }
}

type Model = BTreeMap<(u8, Vec<u8>), Vec<u8>>;

fn apply(model: &mut Model, ops: &[Op]) {
    for op in ops {
        let k = (op.space as u8, op.key.clone());
        match &op.value {
            Some(v) => model.insert(k, v.clone()),
            None => model.remove(&k),
        };
    }
}

/// Every key of the model reads back, and every space lists exactly the model.
fn check(log: &Log, model: &Model) {
    for space in [Space::Objects, Space::Merkle, Space::Hints, Space::Meta] {
        let listed: Vec<(Vec<u8>, Vec<u8>)> = log
            .prefix(space, &[], usize::MAX)
            .into_iter()
            .map(|l| (l.key.to_vec(), l.value().expect("value")))
            .collect();
        let expected: Vec<(Vec<u8>, Vec<u8>)> = model
            .iter()
            .filter(|((s, _), _)| *s == space as u8)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(listed, expected, "space {space:?}");
        assert_eq!(log.len(space), expected.len());
        for (k, v) in &expected {
            assert_eq!(log.get(space, k).expect("get").as_ref(), Some(v));
        }
    }
}

fn segment_files(dir: &Path) -> Vec<u32> {
    let mut ids: Vec<u32> = std::fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| {
            let name = e.expect("entry").file_name().into_string().ok()?;
            name.strip_suffix(".seg")?.parse().ok()
        })
        .collect();
    ids.sort_unstable();
    ids
}

#[derive(Clone, Debug)]
enum Step {
    Batch(Vec<(u8, u8, Option<u8>)>),
    Merge,
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => proptest::collection::vec((0u8..4, 0u8..12, proptest::option::of(any::<u8>())), 1..4)
            .prop_map(Step::Batch),
        1 => Just(Step::Merge),
        1 => Just(Step::Reopen),
    ]
}

/// Keys of objects and Merkle nodes need a partition prefix; spread them over shards.
fn key_of(space: Space, k: u8) -> Vec<u8> {
    match space {
        Space::Objects | Space::Merkle => vec![0, 0, 0, k % 5, k],
        Space::Hints | Space::Meta => vec![b'k', k],
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the interleaving of batches, merges and reopens, the log holds what
    /// a map holds.
    #[test]
    fn matches_a_map_through_merges_and_reopens(steps in proptest::collection::vec(step(), 1..60)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = Log::open(dir.path(), small(), crate::disk::Disk::Os).expect("open");
        let mut model = Model::new();
        for (n, step) in steps.into_iter().enumerate() {
            match step {
                Step::Batch(ops) => {
                    let ops: Vec<Op> = ops
                        .into_iter()
                        .map(|(s, k, v)| {
                            let space = Space::from_byte(s).expect("space");
                            let key = key_of(space, k);
                            match v {
                                // Values of varied size, some empty.
                                Some(v) => put(space, &key, &vec![v; usize::from(v % 50) + (n % 3)]),
                                None => del(space, &key),
                            }
                        })
                        .collect();
                    log.commit(&ops).expect("commit");
                    apply(&mut model, &ops);
                }
                Step::Merge => {
                    log.merge_now().expect("merge");
                }
                Step::Reopen => {
                    drop(log);
                    log = Log::open(dir.path(), small(), crate::disk::Disk::Os).expect("reopen");
                }
            }
            check(&log, &model);
        }
        // And once more from disk alone.
        drop(log);
        let log = Log::open(dir.path(), small(), crate::disk::Disk::Os).expect("reopen");
        check(&log, &model);
    }
}

#[test]
fn a_merge_reclaims_garbage_and_keeps_the_newest_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), small(), crate::disk::Disk::Os).expect("open");
    let mut model = Model::new();
    for round in 0..20u8 {
        for k in 0..10u8 {
            let ops = [put(
                Space::Objects,
                &key_of(Space::Objects, k),
                &[round; 40],
            )];
            log.commit(&ops).expect("commit");
            apply(&mut model, &ops);
        }
    }
    let ops = [del(Space::Objects, &key_of(Space::Objects, 3))];
    log.commit(&ops).expect("delete");
    apply(&mut model, &ops);
    let before = log.stats();
    assert!(before.segments > 10, "{before:?}");
    let merged = log.maybe_merge().expect("merge").expect("garbage is due");
    assert!(merged.values_copied <= 9, "only live values: {merged:?}");
    let after = log.stats();
    assert!(after.bytes * 5 < before.bytes, "{before:?} -> {after:?}");
    assert_eq!(after.merges, 1);
    assert!(
        log.maybe_merge().expect("merge").is_none(),
        "nothing left to reclaim"
    );
    check(&log, &model);
    assert_eq!(segment_files(dir.path()).len() as u64, after.segments);
    drop(log);
    check(
        &Log::open(dir.path(), small(), crate::disk::Disk::Os).expect("reopen"),
        &model,
    );
}

#[test]
fn a_tombstone_beats_an_older_copy_in_a_newer_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key_of(Space::Objects, 1);
    {
        let log = Log::open(dir.path(), small(), crate::disk::Disk::Os).expect("open");
        log.commit(&[put(Space::Objects, &key, &[1; 300])])
            .expect("put");
        // Seal it, so the merge copies the value into a segment numbered after the
        // active one; then delete the key in the active segment.
        log.commit(&[put(Space::Meta, b"x", &[0; 300])])
            .expect("rotate");
        log.merge_now().expect("merge").expect("merged");
        log.commit(&[del(Space::Objects, &key)]).expect("delete");
        assert_eq!(log.get(Space::Objects, &key).expect("get"), None);
    }
    let log = Log::open(dir.path(), small(), crate::disk::Disk::Os).expect("reopen");
    assert_eq!(log.get(Space::Objects, &key).expect("get"), None);
}

#[test]
fn torn_tails_are_cut_and_whole_records_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = LogConfig::default();
    let mut model = Model::new();
    {
        let log = Log::open(dir.path(), big, crate::disk::Disk::Os).expect("open");
        for k in 0..50u8 {
            let ops = [put(Space::Objects, &key_of(Space::Objects, k), &[k; 100])];
            log.commit(&ops).expect("commit");
            apply(&mut model, &ops);
        }
    }
    let last = *segment_files(dir.path()).last().expect("a segment");
    let path = segment_path(dir.path(), last);
    let len = std::fs::metadata(&path).expect("meta").len();
    // Half a record more (a torn append), as a killed process or machine leaves it.
    let (mut rec, _) = record::encode(&[put(Space::Objects, b"torn-key", &[9; 100])]);
    let mut bytes = std::fs::read(&path).expect("read");
    record::seal(&mut rec, 10_000, &salt_of(&bytes));
    bytes.extend_from_slice(&rec[..rec.len() / 2]);
    std::fs::write(&path, &bytes).expect("write");
    {
        let log = Log::open(dir.path(), big, crate::disk::Disk::Os).expect("reopen");
        check(&log, &model);
        assert_eq!(log.stats().truncated_bytes, (rec.len() / 2) as u64);
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), len);
        let ops = [put(Space::Hints, b"after", b"crash")];
        log.commit(&ops).expect("commit");
        apply(&mut model, &ops);
    }
    // Zeros where a record should be (a preallocated or unwritten tail).
    let last = *segment_files(dir.path()).last().expect("a segment");
    let path = segment_path(dir.path(), last);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes.extend_from_slice(&[0u8; 64]);
    std::fs::write(&path, &bytes).expect("write");
    let log = Log::open(dir.path(), big, crate::disk::Disk::Os).expect("reopen");
    check(&log, &model);
    assert_eq!(log.stats().truncated_bytes, 64);
}

#[test]
fn a_damaged_record_before_good_ones_is_skipped_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (key_of(Space::Objects, 1), key_of(Space::Objects, 2));
    {
        let log = Log::open(dir.path(), LogConfig::default(), crate::disk::Disk::Os).expect("open");
        log.commit(&[put(Space::Objects, &a, b"first value")])
            .expect("a");
        log.commit(&[put(Space::Objects, &b, b"second value")])
            .expect("b");
    }
    let seg = *segment_files(dir.path()).last().expect("segment");
    let path = segment_path(dir.path(), seg);
    let mut bytes = std::fs::read(&path).expect("read");
    let at = bytes
        .windows(5)
        .position(|w| w == b"first")
        .expect("on disk");
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    let log = Log::open(dir.path(), LogConfig::default(), crate::disk::Disk::Os).expect("reopen");
    assert_eq!(log.get(Space::Objects, &a).expect("get"), None);
    assert_eq!(
        log.get(Space::Objects, &b).expect("get").as_deref(),
        Some(&b"second value"[..])
    );
    let stats = log.stats();
    assert_eq!((stats.skipped_records, stats.truncated_bytes), (1, 0));
}

/// The salt of a segment file's bytes.
fn salt_of(bytes: &[u8]) -> record::Salt {
    assert_eq!(&bytes[..8], SEGMENT_MAGIC);
    Some(bytes[8..16].try_into().expect("salt"))
}

/// Offsets of the records of a segment file (after its header).
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = SEGMENT_HEADER_LEN as usize;
    while at + record::HEADER_LEN <= bytes.len() {
        out.push(at);
        let header: [u8; record::HEADER_LEN] = bytes[at..at + record::HEADER_LEN]
            .try_into()
            .expect("header");
        at += record::HEADER_LEN + record::body_len(&header);
    }
    out
}

/// Three records in a sealed segment, one in the next; returns the keys and the
/// sealed segment's path.
fn sealed_three_then_one(dir: &Path) -> (Vec<Vec<u8>>, std::path::PathBuf) {
    let cfg = LogConfig {
        segment_bytes: 450,
        merge_min_dead_bytes: u64::MAX,
        open_segments: None,
    };
    let keys: Vec<Vec<u8>> = (1..=4).map(|k| key_of(Space::Objects, k)).collect();
    let log = Log::open(dir, cfg, crate::disk::Disk::Os).expect("open");
    for (i, k) in keys.iter().enumerate() {
        log.commit(&[put(Space::Objects, k, &[i as u8; 100])])
            .expect("commit");
    }
    log.sync().expect("sync");
    let files = segment_files(dir);
    assert_eq!(
        files.len(),
        2,
        "three records sealed in one segment, one in the next"
    );
    let path = segment_path(dir, files[0]);
    let bytes = std::fs::read(&path).expect("read");
    assert_eq!(record_offsets(&bytes).len(), 3);
    (keys, path)
}

#[test]
fn a_damaged_length_in_a_sealed_segment_loses_only_its_own_record() {
    // Review A4: a length field damaged either way (too large for the file, or
    // smaller, so the checksum fails and the next offset is misaligned).
    for flip in [(3usize, 0x80u8), (0, 0x07)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (keys, path) = sealed_three_then_one(dir.path());
        let mut bytes = std::fs::read(&path).expect("read");
        let second = record_offsets(&bytes)[1];
        bytes[second + flip.0] ^= flip.1;
        std::fs::write(&path, &bytes).expect("write");
        let log =
            Log::open(dir.path(), LogConfig::default(), crate::disk::Disk::Os).expect("reopen");
        for (i, k) in keys.iter().enumerate() {
            let got = log.get(Space::Objects, k).expect("get");
            if i == 1 {
                assert_eq!(got, None, "the damaged record is not read");
            } else {
                assert_eq!(got, Some(vec![i as u8; 100]), "record {} survives", i + 1);
            }
        }
        let stats = log.stats();
        assert_eq!((stats.skipped_records, stats.truncated_bytes), (1, 0));
        assert!(stats.skipped_bytes > 0);
        assert_eq!(
            std::fs::read(&path).expect("read"),
            bytes,
            "a sealed segment is never cut"
        );
    }
}

#[test]
fn a_damaged_end_of_a_sealed_segment_is_skipped_not_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (keys, path) = sealed_three_then_one(dir.path());
    let mut bytes = std::fs::read(&path).expect("read");
    let third = record_offsets(&bytes)[2];
    bytes[third + 3] ^= 0x40;
    std::fs::write(&path, &bytes).expect("write");
    let log = Log::open(dir.path(), LogConfig::default(), crate::disk::Disk::Os).expect("reopen");
    assert_eq!(log.get(Space::Objects, &keys[2]).expect("get"), None);
    for i in [0, 1, 3] {
        assert!(log.get(Space::Objects, &keys[i]).expect("get").is_some());
    }
    let stats = log.stats();
    assert_eq!((stats.skipped_records, stats.truncated_bytes), (1, 0));
    assert_eq!(std::fs::read(&path).expect("read"), bytes);
}

#[test]
fn damage_in_the_last_segment_with_good_records_after_it_is_skipped_not_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys: Vec<Vec<u8>> = (1..=3).map(|k| key_of(Space::Objects, k)).collect();
    {
        let log = Log::open(dir.path(), LogConfig::default(), crate::disk::Disk::Os).expect("open");
        for k in &keys {
            log.commit(&[put(Space::Objects, k, &[7; 50])])
                .expect("commit");
        }
    }
    let last = *segment_files(dir.path()).last().expect("segment");
    let path = segment_path(dir.path(), last);
    let mut bytes = std::fs::read(&path).expect("read");
    let first = record_offsets(&bytes)[0];
    bytes[first + 2] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    let log = Log::open(dir.path(), LogConfig::default(), crate::disk::Disk::Os).expect("reopen");
    assert_eq!(log.get(Space::Objects, &keys[0]).expect("get"), None);
    assert!(log.get(Space::Objects, &keys[1]).expect("get").is_some());
    assert!(log.get(Space::Objects, &keys[2]).expect("get").is_some());
    assert_eq!(log.stats().truncated_bytes, 0);
    assert_eq!(
        std::fs::metadata(&path).expect("meta").len(),
        bytes.len() as u64
    );
}

#[test]
fn a_record_hidden_in_a_value_is_never_taken_for_a_real_one() {
    // Review of this resync: a client can store a value that holds a whole record.
    // If damage hits the header of the record carrying it, the scan for the next
    // record passes through the value; the segment's salt keeps the hidden one
    // from checking out.
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (key_of(Space::Objects, 1), key_of(Space::Objects, 2));
    let evil = key_of(Space::Objects, 3);
    {
        let log = Log::open(dir.path(), LogConfig::default(), crate::disk::Disk::Os).expect("open");
        // Forge records under no salt and under a guessed one.
        let mut value = Vec::new();
        for salt in [None, Some([0u8; 8])] {
            let (mut hidden, _) = record::encode(&[put(Space::Objects, &evil, b"injected")]);
            record::seal(&mut hidden, u64::MAX - 1, &salt);
            value.extend_from_slice(&hidden);
        }
        log.commit(&[put(Space::Objects, &a, &value)]).expect("a");
        log.commit(&[put(Space::Objects, &b, b"after")]).expect("b");
    }
    let last = *segment_files(dir.path()).last().expect("segment");
    let path = segment_path(dir.path(), last);
    let mut bytes = std::fs::read(&path).expect("read");
    let first = record_offsets(&bytes)[0];
    bytes[first + 3] ^= 0x80;
    std::fs::write(&path, &bytes).expect("write");
    let log = Log::open(dir.path(), LogConfig::default(), crate::disk::Disk::Os).expect("reopen");
    assert_eq!(
        log.get(Space::Objects, &evil).expect("get"),
        None,
        "nothing injected"
    );
    assert_eq!(log.get(Space::Objects, &a).expect("get"), None);
    assert_eq!(
        log.get(Space::Objects, &b).expect("get").as_deref(),
        Some(&b"after"[..])
    );
}

#[test]
fn a_segment_whose_header_never_reached_the_disk_is_set_aside() {
    // Review S3: later pages written back, the first one not.
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key_of(Space::Objects, 1);
    {
        let log = Log::open(dir.path(), LogConfig::default(), crate::disk::Disk::Os).expect("open");
        log.commit(&[put(Space::Objects, &key, b"kept")])
            .expect("commit");
    }
    // A later segment whose first page is zeros, the rest not.
    let last = *segment_files(dir.path()).last().expect("segment");
    let mut bytes = vec![0u8; 4096];
    bytes.extend_from_slice(&[7u8; 4096]);
    std::fs::write(segment_path(dir.path(), last + 1), &bytes).expect("write");
    let log = Log::open(dir.path(), LogConfig::default(), crate::disk::Disk::Os).expect("opens");
    assert_eq!(
        log.get(Space::Objects, &key).expect("get").as_deref(),
        Some(&b"kept"[..])
    );
    assert_eq!(log.stats().truncated_bytes, 8192);
    assert!(
        dir.path()
            .join(format!("{:08}.seg.torn", last + 1))
            .exists()
    );
}

#[test]
fn segments_of_format_1_are_still_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key_of(Space::Objects, 1);
    let (mut rec, _) = record::encode(&[put(Space::Objects, &key, b"old format")]);
    record::seal(&mut rec, 7, &None);
    let mut bytes = SEGMENT_MAGIC_V1.to_vec();
    bytes.extend_from_slice(&rec);
    std::fs::write(segment_path(dir.path(), 1), &bytes).expect("write");
    let log = Log::open(dir.path(), LogConfig::default(), crate::disk::Disk::Os).expect("open");
    assert_eq!(
        log.get(Space::Objects, &key).expect("get").as_deref(),
        Some(&b"old format"[..])
    );
    log.commit(&[put(Space::Objects, &key, b"new")])
        .expect("commit");
    drop(log);
    let log = Log::open(dir.path(), LogConfig::default(), crate::disk::Disk::Os).expect("reopen");
    assert_eq!(
        log.get(Space::Objects, &key).expect("get").as_deref(),
        Some(&b"new"[..])
    );
}

#[test]
fn random_bytes_never_make_recovery_panic_or_invent_records() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key_of(Space::Objects, 1);
    {
        let log = Log::open(dir.path(), LogConfig::default(), crate::disk::Disk::Os).expect("open");
        log.commit(&[put(Space::Objects, &key, b"kept")])
            .expect("commit");
    }
    let last = *segment_files(dir.path()).last().expect("segment");
    let path = segment_path(dir.path(), last);
    let len = std::fs::metadata(&path).expect("meta").len();
    // 4 MiB of noise after the record, from a fixed seed.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..4 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.write_all_at(&noise, len).expect("write");
    drop(f);
    let log = Log::open(dir.path(), LogConfig::default(), crate::disk::Disk::Os).expect("reopen");
    assert_eq!(
        log.get(Space::Objects, &key).expect("get").as_deref(),
        Some(&b"kept"[..])
    );
    assert_eq!(log.len(Space::Objects), 1);
    assert_eq!(log.stats().truncated_bytes, noise.len() as u64);
}

#[test]
fn a_flipped_value_byte_is_reported_not_returned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key_of(Space::Objects, 7);
    let log = Log::open(dir.path(), LogConfig::default(), crate::disk::Disk::Os).expect("open");
    log.commit(&[put(Space::Objects, &key, b"precious value")])
        .expect("commit");
    let seg = *segment_files(dir.path()).last().expect("segment");
    let path = segment_path(dir.path(), seg);
    let mut bytes = std::fs::read(&path).expect("read");
    let at = bytes
        .windows(8)
        .position(|w| w == b"precious")
        .expect("value on disk");
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    let err = log.get(Space::Objects, &key).expect_err("checksum");
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    drop(log);
    // Reopening finds the record's checksum broken mid-segment: a torn tail to cut,
    // never a wrong value.
    let log = Log::open(dir.path(), LogConfig::default(), crate::disk::Disk::Os).expect("reopen");
    assert_eq!(log.get(Space::Objects, &key).expect("get"), None);
}

/// Builds a log whose sealed segments a merge would replace; returns the model.
fn with_garbage(dir: &Path) -> Model {
    let log = Log::open(dir, small(), crate::disk::Disk::Os).expect("open");
    let mut model = Model::new();
    for round in 0..5u8 {
        for k in 0..8u8 {
            let space = Space::from_byte(k % 4).expect("space");
            let ops = if round == 4 && k % 3 == 0 {
                vec![del(space, &key_of(space, k))]
            } else {
                vec![put(space, &key_of(space, k), &[round; 60])]
            };
            log.commit(&ops).expect("commit");
            apply(&mut model, &ops);
        }
    }
    model
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).expect("list") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

#[test]
fn a_value_damaged_at_run_time_holds_back_its_segment_not_the_merge() {
    // Review C5: one value failing its checksum made every merge fail, forever.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), small(), crate::disk::Disk::Os).expect("open");
    let a = key_of(Space::Objects, 1);
    log.commit(&[put(Space::Objects, &a, b"precious-a")])
        .expect("a");
    overwrite(&log, 2..6);
    // Flip a byte of a's value in its (sealed) segment.
    let first = flip_in_first_segment(dir.path(), b"precious-a");
    // The merge finds it and holds its segment back, and with it every newer one
    // (their deletes may be all that hides older values in it).
    log.merge_now()
        .expect("a damaged value does not fail the merge");
    assert_eq!(log.held_back(), vec![first]);
    assert!(
        segment_path(dir.path(), first).exists(),
        "kept for the repair"
    );
    assert_eq!(log.damaged(10).len(), 1);
    for k in 2..6u8 {
        assert_eq!(
            log.get(Space::Objects, &key_of(Space::Objects, k))
                .expect("get"),
            Some(vec![5; 60])
        );
    }
    // Once the value is dropped, its segment merges again.
    log.commit(&[del(Space::Objects, &a)]).expect("drop");
    log.damage_resolved(Space::Objects, &a);
    assert!(log.held_back().is_empty());
    log.merge_now().expect("merge");
    assert!(!segment_path(dir.path(), first).exists());
}

#[test]
fn every_crash_state_of_a_merge_recovers_the_same_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = with_garbage(dir.path());
    let before = tempfile::tempdir().expect("tempdir");
    copy_dir(dir.path(), before.path());
    let old: Vec<u32> = segment_files(dir.path());
    {
        let log = Log::open(dir.path(), small(), crate::disk::Disk::Os).expect("open");
        log.merge_now().expect("merge").expect("merged");
        check(&log, &model);
    }
    let merged: Vec<u32> = segment_files(dir.path());

    // 1. Died while writing the outputs: `.merging` files beside all the old segments.
    let state = tempfile::tempdir().expect("tempdir");
    copy_dir(before.path(), state.path());
    std::fs::write(
        state.path().join(format!("00009999.seg{MERGE_SUFFIX}")),
        b"junk",
    )
    .expect("write");
    check(
        &Log::open(state.path(), small(), crate::disk::Disk::Os).expect("open"),
        &model,
    );
    assert!(
        !state
            .path()
            .join(format!("00009999.seg{MERGE_SUFFIX}"))
            .exists()
    );

    // 2. Died after renaming the outputs, before the manifest: both copies present.
    let state = tempfile::tempdir().expect("tempdir");
    copy_dir(before.path(), state.path());
    copy_dir(dir.path(), state.path());
    check(
        &Log::open(state.path(), small(), crate::disk::Disk::Os).expect("open"),
        &model,
    );

    // 3. Died after the manifest, with some old segments not yet removed.
    let state = tempfile::tempdir().expect("tempdir");
    copy_dir(dir.path(), state.path());
    for id in old.iter().take(old.len() / 2) {
        std::fs::copy(
            segment_path(before.path(), *id),
            segment_path(state.path(), *id),
        )
        .expect("copy");
    }
    let listing: String = old.iter().map(|id| format!("{id}\n")).collect();
    std::fs::write(state.path().join(MERGE_MANIFEST), listing).expect("manifest");
    let log = Log::open(state.path(), small(), crate::disk::Disk::Os).expect("open");
    check(&log, &model);
    assert!(!state.path().join(MERGE_MANIFEST).exists());
    for id in &old {
        assert!(
            !segment_path(state.path(), *id).exists() || merged.contains(id),
            "segment {id} of the finished merge is gone"
        );
    }
}

#[test]
fn readers_never_miss_a_key_while_merges_repoint_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes: 4096,
        merge_min_dead_bytes: 0,
        open_segments: Some(3),
    };
    let log = Arc::new(Log::open(dir.path(), config, crate::disk::Disk::Os).expect("open"));
    let keys: Vec<Vec<u8>> = (0..200u32)
        .map(|i| {
            let mut k = (i % 7).to_be_bytes().to_vec();
            k.extend_from_slice(&i.to_be_bytes());
            k
        })
        .collect();
    for k in &keys {
        log.commit(&[put(Space::Objects, k, k)]).expect("commit");
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (log, keys, stop) = (log.clone(), keys.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && reads < 2_000_000 {
                    for k in &keys {
                        let v = log.get(Space::Objects, k).expect("get");
                        assert_eq!(v.as_deref(), Some(&k[..]));
                        reads += 1;
                    }
                    let listed = log.prefix(Space::Objects, &3u32.to_be_bytes(), usize::MAX);
                    assert_eq!(listed.len(), keys.iter().filter(|k| k[3] == 3).count());
                    for l in listed {
                        assert_eq!(l.value().expect("value"), l.key.to_vec());
                    }
                }
            })
        })
        .collect();
    // Rewrite the same values (garbage piles up) and merge, over and over.
    let mut merges = 0;
    for _ in 0..30 {
        for k in &keys {
            log.commit(&[put(Space::Objects, k, k)]).expect("commit");
        }
        if log.merge_now().expect("merge").is_some() {
            merges += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        r.join().expect("reader");
    }
    assert!(merges >= 20, "{merges} merges");
}

#[test]
fn another_engines_directory_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("0.jnl"), b"fjall journal").expect("write");
    let Err(err) = Log::open(dir.path(), LogConfig::default(), crate::disk::Disk::Os) else {
        panic!("opened")
    };
    assert!(matches!(err, StorageError::ForeignFormat { .. }), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join("0.jnl")).expect("read"),
        b"fjall journal"
    );
}

#[test]
fn a_segment_with_a_foreign_header_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(segment_path(dir.path(), 1), b"NOTASEGMENT-----").expect("write");
    let Err(err) = Log::open(dir.path(), LogConfig::default(), crate::disk::Disk::Os) else {
        panic!("opened")
    };
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
}

#[test]
fn a_merge_waits_for_a_scan_still_reading_a_replaced_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(Log::open(dir.path(), small(), crate::disk::Disk::Os).expect("open"));
    for k in 0..20u8 {
        log.commit(&[put(Space::Objects, &key_of(Space::Objects, k), &[k; 50])])
            .expect("commit");
    }
    // A scan lists keys (holding their segments), then a merge replaces them all.
    let listed = log.prefix(Space::Objects, &[0, 0, 0, 1], usize::MAX);
    assert!(!listed.is_empty());
    let merger = {
        let log = log.clone();
        std::thread::spawn(move || log.merge_now().expect("merge").is_some())
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    // The merge is done with the directory but leaves the scan's segments whole.
    for l in &listed {
        assert_eq!(l.value().expect("still readable"), vec![l.key[4]; 50]);
    }
    assert!(!merger.is_finished(), "it waits for the scan");
    drop(listed);
    assert!(merger.join().expect("merge thread"));
    let old_left = segment_files(dir.path()).len() as u64;
    assert_eq!(old_left, log.stats().segments);
}

#[test]
fn at_most_the_cache_of_sealed_segments_stays_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = LogConfig {
        segment_bytes: 256,
        merge_min_dead_bytes: u64::MAX,
        open_segments: Some(4),
    };
    let log = Log::open(dir.path(), cfg, crate::disk::Disk::Os).expect("open");
    assert_eq!(log.fds.capacity(), 4);
    let keys: Vec<Vec<u8>> = (0..200).map(|k| key_of(Space::Objects, k)).collect();
    for (i, k) in keys.iter().enumerate() {
        log.commit(&[put(Space::Objects, k, &[i as u8; 100])])
            .expect("commit");
    }
    let open = |log: &Log| read(&log.segments).values().filter(|s| s.is_open()).count();
    // Sealed segments stay open until their fsync (at most 64 of them).
    assert!(open(&log) <= 64 + 4 + 1, "{}", open(&log));
    log.sync().expect("sync");
    for _ in 0..2 {
        for (i, k) in keys.iter().enumerate().rev() {
            assert_eq!(
                log.get(Space::Objects, k).expect("get"),
                Some(vec![i as u8; 100])
            );
        }
    }
    assert!(read(&log.segments).len() > 50, "many segments");
    assert!(open(&log) <= 4 + 1, "{} open", open(&log));
    assert!(
        log.fds.opened.load(Ordering::Relaxed) > 50,
        "files reopened"
    );
}

#[test]
fn a_delete_newer_than_a_held_back_segment_survives_merges() {
    // Review: a merge dropped the deletes of its victims while an older value of
    // the same key stayed in a held-back (damaged) segment: the next open read
    // that segment and the deleted key came back.
    let dir = tempfile::tempdir().expect("tempdir");
    let k = key_of(Space::Objects, 1);
    let bad = key_of(Space::Objects, 2);
    {
        let log = Log::open(dir.path(), small(), crate::disk::Disk::Os).expect("open");
        log.commit(&[put(Space::Objects, &k, b"deleted-later")])
            .expect("k");
        log.commit(&[put(Space::Objects, &bad, b"damaged-soon")])
            .expect("bad");
        overwrite(&log, 3..7);
        log.commit(&[del(Space::Objects, &k)]).expect("delete");
        overwrite(&log, 3..7);
        let first = flip_in_first_segment(dir.path(), b"damaged-soon");
        // Found by a read, so merges hold its segment back.
        assert!(log.get(Space::Objects, &bad).is_err());
        assert_eq!(log.held_back(), vec![first]);
        for _ in 0..3 {
            log.merge_now().expect("merge");
        }
        assert_eq!(log.get(Space::Objects, &k).expect("get"), None);
        log.sync().expect("sync");
    }
    let log = Log::open(dir.path(), small(), crate::disk::Disk::Os).expect("reopen");
    assert_eq!(
        log.get(Space::Objects, &k).expect("get"),
        None,
        "the deleted key stays deleted"
    );
}

/// Six rounds of overwriting keys `keys` with 60 bytes each: garbage to merge.
fn overwrite(log: &Log, keys: std::ops::Range<u8>) {
    for round in 0..6u8 {
        for k in keys.clone() {
            log.commit(&[put(
                Space::Objects,
                &key_of(Space::Objects, k),
                &[round; 60],
            )])
            .expect("garbage");
        }
    }
}

/// Flips a byte of `needle` in the oldest segment file; returns its id.
fn flip_in_first_segment(dir: &Path, needle: &[u8]) -> u32 {
    let first = *segment_files(dir).first().expect("segment");
    let path = segment_path(dir, first);
    let mut bytes = std::fs::read(&path).expect("read");
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("on disk");
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    first
}
