//! The store's tests. Those that hold for any engine run on both (the
//! `on_log` and `on_fjall` modules at the end); the log's recovery and damage
//! tests run on the log.

use super::*;
use crate::merkle::EMPTY;
use std::collections::BTreeMap;

fn config(dir: &Path, backend: Backend) -> StoreConfig {
    let mut cfg = StoreConfig::new(dir);
    cfg.sync = SyncPolicy::None;
    cfg.backend = backend;
    cfg
}

fn open_on(dir: &Path, backend: Backend) -> Store {
    Store::open(config(dir, backend)).expect("open")
}

fn open(dir: &Path) -> Store {
    open_on(dir, Backend::Log)
}

fn put(s: &Store, p: u32, k: &[u8], v: &[u8]) -> Updated {
    let v = v.to_vec();
    let (u, ()) = s
        .update::<_, StorageError>(p, k, |_| Ok((Change::Put(v), ())))
        .expect("update");
    u
}

fn update_sees_previous_value_and_keep_changes_nothing(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open_on(dir.path(), backend);
    put(&s, 1, b"k", b"v1");
    let root = s.root(1).expect("root");
    let (u, seen) = s
        .update::<_, StorageError>(1, b"k", |cur| Ok((Change::Keep, cur.map(<[u8]>::to_vec))))
        .expect("update");
    assert_eq!(seen.as_deref(), Some(&b"v1"[..]));
    assert!(!u.changed());
    assert_eq!(s.root(1).expect("root"), root);
    assert_eq!(s.get(1, b"k").expect("get").as_deref(), Some(&b"v1"[..]));
    assert_eq!(s.get(2, b"k").expect("get"), None);
}

fn failing_merge_writes_nothing(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open_on(dir.path(), backend);
    let r: std::result::Result<(Updated, ()), StorageError> = s.update(3, b"k", |_| {
        Err(StorageError::NoSuchNode { level: 9, index: 9 })
    });
    assert!(r.is_err());
    assert_eq!(s.get(3, b"k").expect("get"), None);
    assert_eq!(s.root(3).expect("root"), EMPTY);
}

fn roots_depend_on_content_not_history(backend: Backend) {
    let a_dir = tempfile::tempdir().expect("tempdir");
    let b_dir = tempfile::tempdir().expect("tempdir");
    let a = open_on(a_dir.path(), backend);
    let b = open_on(b_dir.path(), backend);
    for i in 0..200u32 {
        put(&a, 0, &i.to_be_bytes(), b"x");
    }
    for i in (0..200u32).rev() {
        put(&b, 0, &i.to_be_bytes(), b"old");
        put(&b, 0, &i.to_be_bytes(), b"x");
    }
    assert_eq!(a.root(0).expect("root"), b.root(0).expect("root"));
    put(&b, 0, &7u32.to_be_bytes(), b"y");
    assert_ne!(a.root(0).expect("root"), b.root(0).expect("root"));
    // Removing everything empties the tree again.
    for i in 0..200u32 {
        let k = i.to_be_bytes();
        let d = object_digest(&k, b"x");
        assert!(a.remove_if(0, &k, &d).expect("remove"));
    }
    assert_eq!(a.root(0).expect("root"), EMPTY);
}

fn remove_if_refuses_a_changed_object(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open_on(dir.path(), backend);
    let u = put(&s, 0, b"k", b"v1");
    put(&s, 0, b"k", b"v2");
    let stale = u.after.expect("written");
    assert!(!s.remove_if(0, b"k", &stale).expect("remove"));
    assert!(s.get(0, b"k").expect("get").is_some());
}

fn trees_survive_reopen_without_rescan(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let roots: BTreeMap<u32, Hash>;
    {
        let s = open_on(dir.path(), backend);
        for i in 0..500u32 {
            put(&s, i % 4, &i.to_be_bytes(), &i.to_le_bytes());
        }
        roots = (0..4).map(|p| (p, s.root(p).expect("root"))).collect();
        s.sync().expect("sync");
    }
    let s = open_on(dir.path(), backend);
    for (p, r) in roots {
        assert_eq!(s.root(p).expect("root"), r);
    }
    // The tree matches one rebuilt from the objects: the root is the XOR of all
    // digests, every leaf the XOR of its segment, every parent the XOR of its children.
    let mut root = EMPTY;
    let mut leaves = vec![EMPTY; crate::merkle::LEAVES];
    for item in s.scan_partition(2) {
        let (k, v) = item.expect("scan");
        let d = object_digest(&k, &v);
        root = xor(&root, &d);
        let seg = segment_of(&k) as usize;
        leaves[seg] = xor(&leaves[seg], &d);
    }
    assert_eq!(root, s.root(2).expect("root"));
    let mut level2 = Vec::new();
    for i in 0..256u32 {
        let children = s.children(2, 2, i).expect("children");
        assert_eq!(children[..], leaves[i as usize * 16..(i as usize + 1) * 16]);
        level2.push(children.iter().fold(EMPTY, |a, c| xor(&a, c)));
    }
    let level1: Vec<Hash> = (0..16u32)
        .flat_map(|i| s.children(2, 1, i).expect("children"))
        .collect();
    assert_eq!(level1, level2);
    let rebuilt = s
        .children(2, 0, 0)
        .expect("children")
        .iter()
        .fold(EMPTY, |a, c| xor(&a, c));
    assert!(s.children(2, 3, 0).is_err());
    assert_eq!(rebuilt, s.root(2).expect("root"));
}

fn upper_nodes_come_back_from_checkpoint_or_leaves(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open_on(dir.path(), backend);
    for i in 0..300u32 {
        put(&s, 1, &i.to_be_bytes(), b"a");
    }
    assert_eq!(s.checkpoint().expect("checkpoint"), 1);
    assert_eq!(
        s.checkpoint().expect("checkpoint"),
        0,
        "nothing dirty any more"
    );
    let root = s.root(1).expect("root");
    let fresh = s.inner.trees.load_for_test(1).expect("load");
    assert_eq!(fresh, (root, false));
    // Writes after the checkpoint leave the marker: a fresh load recomputes from leaves.
    for i in 300..400u32 {
        put(&s, 1, &i.to_be_bytes(), b"b");
    }
    let root = s.root(1).expect("root");
    let fresh = s.inner.trees.load_for_test(1).expect("load");
    assert_eq!(fresh, (root, true));
    assert_eq!(s.tree_stats().rebuilt_from_leaves, 1);
}

fn segment_digests_list_exactly_the_segment(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open_on(dir.path(), backend);
    for i in 0..300u32 {
        put(&s, 5, &i.to_be_bytes(), b"v");
    }
    let seg = segment_of(&17u32.to_be_bytes());
    let listed = s.segment_digests(5, seg).expect("scan");
    assert!(listed.iter().any(|(k, _)| k == &17u32.to_be_bytes()));
    assert!(listed.iter().all(|(k, _)| segment_of(k) == seg));
}

fn hints_and_meta_round_trip(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open_on(dir.path(), backend);
    s.set_meta("node_id", b"a").expect("meta");
    assert_eq!(s.meta("node_id").expect("meta").as_deref(), Some(&b"a"[..]));
    s.put_hint(b"n1/1", b"x").expect("hint");
    s.put_hint(b"n1/2", b"y").expect("hint");
    s.put_hint(b"n2/1", b"z").expect("hint");
    assert_eq!(s.hints(b"n1/", 10).expect("hints").len(), 2);
    assert_eq!(s.hints(b"n1/", 1).expect("hints").len(), 1);
    s.remove_hint(b"n1/1").expect("remove");
    assert_eq!(s.hints(b"n1/", 10).expect("hints").len(), 1);
    // Exact on both engines: the hint store's byte budget counts on it.
    assert_eq!(s.hint_bytes(), 2);
    assert_eq!(s.hint_count().expect("count"), 2);
}

#[test]
fn leaves_are_recomputed_when_recovery_skips_a_damaged_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = open(dir.path());
        for i in 0..200u32 {
            put(
                &s,
                i % 3,
                &i.to_be_bytes(),
                format!("value-{i:05}").as_bytes(),
            );
        }
        s.checkpoint().expect("checkpoint");
    }
    // Damage the record of one object in the middle of the log: recovery skips
    // it, and with it that write's leaf update.
    let seg = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".seg"))
        .max()
        .expect("segment");
    let path = dir.path().join(seg);
    let mut bytes = std::fs::read(&path).expect("read");
    let at = bytes
        .windows(11)
        .position(|w| w == b"value-00100")
        .expect("on disk");
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    // Without its hint file the open reads the segment, and finds the damage.
    remove_hints(dir.path());
    let s = open(dir.path());
    assert_eq!(s.log_stats().skipped_records, 1);
    assert_eq!(s.get(100 % 3, &100u32.to_be_bytes()).expect("get"), None);
    // Every root is again the XOR of the digests of what the store holds.
    for p in 0..3u32 {
        let mut root = EMPTY;
        for item in s.scan_partition(p) {
            let (k, v) = item.expect("scan");
            root = xor(&root, &object_digest(&k, &v));
        }
        assert_eq!(s.root(p).expect("root"), root, "partition {p}");
    }
    assert_eq!(s.tree_stats().rebuilt_from_leaves, 3);
    // And the rebuild is not repeated on the next open.
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.root(1).expect("root"), {
        let mut root = EMPTY;
        for item in s.scan_partition(1) {
            let (k, v) = item.expect("scan");
            root = xor(&root, &object_digest(&k, &v));
        }
        root
    });
}

fn simulated_on(dir: &Path, disk: &Arc<crate::disk::SimulatedDisk>, backend: Backend) -> Store {
    let mut cfg = StoreConfig::new(dir);
    cfg.disk = Disk::Simulated(disk.clone());
    cfg.driver = Driver::Caller;
    cfg.backend = backend;
    Store::open(cfg).expect("open")
}

fn a_power_loss_drops_what_the_last_sync_did_not_cover(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = crate::disk::SimulatedDisk::new();
    let s = simulated_on(dir.path(), &disk, backend);
    assert!(s.opened_clean(), "a new directory holds nothing to lose");
    put(&s, 1, b"synced", b"v");
    s.tick(true, false).expect("interval sync");
    put(&s, 1, b"unsynced", b"v");
    disk.power_off();
    // What the shutdown path writes after the power went is lost too.
    drop(s);
    disk.restore(None).expect("restore");
    let s = simulated_on(dir.path(), &disk, backend);
    assert!(!s.opened_clean(), "a crash is noticed");
    assert!(s.get(1, b"synced").expect("get").is_some());
    if backend == Backend::Log {
        // fjall preallocates its journal, so the simulated disk cannot tell which of
        // its bytes a sync covered: on fjall a simulated crash loses only what never
        // reached the OS.
        assert_eq!(s.get(1, b"unsynced").expect("get"), None);
    }
    // The hash tree matches what survived.
    let mut root = EMPTY;
    for item in s.scan_partition(1) {
        let (k, v) = item.expect("scan");
        root = xor(&root, &object_digest(&k, &v));
    }
    assert_eq!(s.root(1).expect("root"), root);
    s.acknowledge_unclean_open(&[]).expect("ack");
    drop(s);
    let s = simulated_on(dir.path(), &disk, backend);
    assert!(s.opened_clean(), "a clean close is noticed too");
    if backend == Backend::Fjall {
        // fjall cuts a torn journal tail itself and reports nothing of it.
        return;
    }
    // A torn append: part of the unsynced record survives, recovery cuts it.
    put(&s, 2, b"torn", &[5; 200]);
    disk.power_off();
    drop(s);
    assert!(disk.restore(Some(100)).expect("restore") > 0);
    let s = simulated_on(dir.path(), &disk, backend);
    assert!(s.log_stats().truncated_bytes > 0);
    assert_eq!(s.get(2, b"torn").expect("get"), None);
    assert!(!s.opened_clean());
}

fn an_unclean_open_stays_unclean_until_acknowledged(backend: Backend) {
    // A start that fails after opening (a wrong flag, a busy port) closes the
    // store cleanly: the next start must still know what the crash lost.
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = crate::disk::SimulatedDisk::new();
    let s = simulated_on(dir.path(), &disk, backend);
    put(&s, 1, b"k", b"v");
    disk.power_off();
    drop(s);
    disk.restore(None).expect("restore");
    let s = simulated_on(dir.path(), &disk, backend);
    assert!(!s.opened_clean());
    drop(s);
    let s = simulated_on(dir.path(), &disk, backend);
    assert!(!s.opened_clean(), "still owed an answer");
    s.acknowledge_unclean_open(&[("epoch", &[1u8][..])])
        .expect("ack");
    drop(s);
    let s = simulated_on(dir.path(), &disk, backend);
    assert!(s.opened_clean());
    assert_eq!(s.meta("epoch").expect("meta").as_deref(), Some(&[1u8][..]));
}

#[test]
fn damage_an_earlier_open_accounted_for_is_not_new() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = open(dir.path());
        for i in 0..20u32 {
            put(&s, 0, &i.to_be_bytes(), format!("value-{i:05}").as_bytes());
        }
    }
    let seg = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".seg"))
        .min()
        .expect("segment");
    let path = dir.path().join(seg);
    let mut bytes = std::fs::read(&path).expect("read");
    let at = bytes
        .windows(11)
        .position(|w| w == b"value-00007")
        .expect("on disk");
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    // Without its hint file the open reads the segment, and finds the damage.
    remove_hints(dir.path());
    let s = open(dir.path());
    assert!(!s.opened_clean(), "new damage");
    s.acknowledge_unclean_open(&[]).expect("ack");
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.log_stats().skipped_records, 1, "still skipped");
    assert!(s.opened_clean(), "but not new");
    assert_eq!(s.tree_stats().rebuilt_from_leaves, 0, "no rebuild again");
}

/// Flips the first byte of `needle` in the store's segment files.
fn damage(dir: &Path, needle: &[u8]) {
    for e in std::fs::read_dir(dir).expect("list") {
        let path = e.expect("entry").path();
        if path.extension().is_some_and(|x| x == "seg") {
            let mut bytes = std::fs::read(&path).expect("read");
            if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
                bytes[at] ^= 0x01;
                std::fs::write(&path, &bytes).expect("write");
                return;
            }
        }
    }
    panic!("not on disk");
}

#[test]
fn a_damaged_value_is_skipped_by_scans_and_dropped_with_its_leaf_recomputed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    for i in 0..50u32 {
        put(&s, 3, &i.to_be_bytes(), format!("value-{i:05}").as_bytes());
    }
    s.put_hint(b"h1", b"hint-one").expect("hint");
    s.put_hint(b"h2", b"hint-two").expect("hint");
    damage(dir.path(), b"value-00007");
    damage(dir.path(), b"hint-one");
    let seven = 7u32.to_be_bytes();
    assert!(matches!(
        s.get(3, &seven),
        Err(StorageError::Corrupt { .. })
    ));
    // Scans, digests and hints go on around it.
    let scanned: Vec<_> = s.scan_partition(3).collect::<Result<_>>().expect("scan");
    assert_eq!(scanned.len(), 49);
    let seg = segment_of(&seven);
    assert!(
        s.segment_digests(3, seg)
            .expect("digests")
            .iter()
            .all(|(k, _)| k != &seven)
    );
    assert_eq!(s.hints(b"h", 10).expect("hints").len(), 1, "the good one");
    assert!(!s.remove_if(3, &seven, &EMPTY).expect("remove_if"));
    // The owner drops it; the tree again matches what is held.
    assert_eq!(s.damaged(10), vec![(3, seven.to_vec())]);
    assert!(s.drop_damaged(3, &seven).expect("drop"));
    assert_eq!(s.get(3, &seven).expect("get"), None);
    assert_eq!(
        s.damaged(10),
        Vec::new(),
        "the damaged hint was dropped too"
    );
    assert_eq!(s.damaged_dropped(), 2);
    let mut root = EMPTY;
    for item in s.scan_partition(3) {
        let (k, v) = item.expect("scan");
        root = xor(&root, &object_digest(&k, &v));
    }
    assert_eq!(s.root(3).expect("root"), root);
    assert!(
        !s.drop_damaged(3, &seven).expect("again"),
        "nothing left to drop"
    );
}

/// The root of partition `p` computed from its objects.
fn root_of_objects(s: &Store, p: u32) -> Hash {
    let mut root = EMPTY;
    for item in s.scan_partition(p) {
        let (k, v) = item.expect("scan");
        root = xor(&root, &object_digest(&k, &v));
    }
    root
}

/// A closed store holding `value-00000`..`value-00039` in partition 3, its hash
/// tree checkpointed.
fn forty_values_checkpointed() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    for i in 0..40u32 {
        put(&s, 3, &i.to_be_bytes(), format!("value-{i:05}").as_bytes());
    }
    s.inner.trees.checkpoint().expect("checkpoint");
    dir
}

#[test]
fn a_damaged_hash_tree_checkpoint_or_leaf_is_recomputed_while_the_store_runs() {
    let dir = forty_values_checkpointed();
    // Opened clean: the partition loads its checkpoint on first use, and that
    // record is damaged at rest after the open indexed it.
    let s = open(dir.path());
    let root = root_of_objects(&s, 3);
    damage(dir.path(), &root);
    assert_eq!(s.root(3).expect("root despite a damaged checkpoint"), root);
    // A leaf record damaged too: reads and writes of its segment go on.
    let seven = 7u32.to_be_bytes();
    let seg = segment_of(&seven);
    let leaf = s.inner.trees.leaf(3, seg).expect("leaf");
    damage(dir.path(), &leaf);
    assert_eq!(s.inner.trees.leaf(3, seg).expect("leaf from objects"), leaf);
    put(&s, 3, &seven, b"rewritten");
    assert_eq!(s.root(3).expect("root"), root_of_objects(&s, 3));
    // The owner's scan for damage mends the hash-tree records; nothing is left.
    assert!(
        s.damaged(10).is_empty(),
        "hash-tree damage is mended, not handed out"
    );
    assert!(s.damaged(10).is_empty());
    s.inner.trees.checkpoint().expect("checkpoint");
    let root = root_of_objects(&s, 3);
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.root(3).expect("root after reopening"), root);
}

/// A leaf record and a value of the same segment damaged at once (seed 974 of the
/// 1,000-seed sweep: flipped bits in one sealed segment). The leaf then comes from
/// the objects without the damaged value, while the upper nodes still hold the old
/// leaf: dropping the value changed the leaf by nothing, the upper nodes kept its
/// digest for good, and anti-entropy found the root different on every round with
/// no key to move. Whichever comes first, the drop or the owner's scan that mends
/// the leaf record, the root ends up the one the objects make.
#[test]
fn a_damaged_leaf_and_a_damaged_value_of_its_segment_leave_a_consistent_tree() {
    for scan_first in [false, true] {
        let dir = forty_values_checkpointed();
        let s = open(dir.path());
        let seven = 7u32.to_be_bytes();
        let seg = segment_of(&seven);
        let leaf = s.inner.trees.leaf(3, seg).expect("leaf");
        assert_eq!(s.root(3).expect("root"), root_of_objects(&s, 3));
        damage(dir.path(), b"value-00007");
        damage(dir.path(), &leaf);
        assert!(s.get(3, &seven).is_err(), "the value is damaged");
        if scan_first {
            // The scan mends the leaf record (and lists the value).
            assert_eq!(s.damaged(10), vec![(3, seven.to_vec())]);
        }
        assert!(s.drop_damaged(3, &seven).expect("drop"));
        assert_eq!(
            s.root(3).expect("root"),
            root_of_objects(&s, 3),
            "scan first: {scan_first}"
        );
        assert!(
            !s.verify_upper(3, true).expect("verify"),
            "the upper nodes match the leaves (scan first: {scan_first})"
        );
    }
}

#[test]
fn upper_nodes_that_do_not_match_their_leaves_are_recomputed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    for i in 0..20u32 {
        put(&s, 2, &i.to_be_bytes(), b"v");
    }
    assert!(!s.verify_upper(2, true).expect("verify"), "right ones stay");
    let right = s.root(2).expect("root");
    // A root off from the nodes below it: found without reading the leaves.
    let set_off = |offset: usize| {
        let part = s.inner.trees.part_for_test(2);
        let mut upper = part.lock().expect("lock");
        upper.nodes[offset] = xor(&upper.nodes[offset], &[9u8; 32]);
    };
    set_off(0);
    assert_ne!(s.root(2).expect("root"), right);
    assert!(s.verify_upper(2, false).expect("verify"));
    assert_eq!(s.root(2).expect("root"), right);
    // The lowest upper level and the root, both off by the same delta (as a
    // leaf's change that never reached its leaf): only the leaves tell.
    let lowest = 1 + 16;
    set_off(lowest);
    set_off(1);
    set_off(0);
    assert!(
        !s.verify_upper(2, false).expect("verify"),
        "consistent above"
    );
    assert_ne!(s.root(2).expect("root"), right);
    assert!(s.verify_upper(2, true).expect("verify"));
    assert_eq!(s.root(2).expect("root"), right);
}

fn a_leaf_that_does_not_match_its_objects_is_corrected(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open_on(dir.path(), backend);
    for i in 0..20u32 {
        put(&s, 2, &i.to_be_bytes(), b"v");
    }
    let seg = segment_of(&3u32.to_be_bytes());
    assert!(
        !s.verify_leaf(2, seg).expect("verify"),
        "a right leaf stays"
    );
    // A delta whose object never made it (as a lost record leaves it).
    s.inner
        .trees
        .commit(Vec::new(), 2, seg, &[9u8; 32])
        .expect("commit");
    assert!(s.verify_leaf(2, seg).expect("verify"));
    let mut root = EMPTY;
    for item in s.scan_partition(2) {
        let (k, v) = item.expect("scan");
        root = xor(&root, &object_digest(&k, &v));
    }
    assert_eq!(s.root(2).expect("root"), root);
}

fn a_killed_process_leaves_an_unclean_directory(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open_on(dir.path(), backend);
    put(&s, 0, b"k", b"v");
    // As `kill -9` would: the marker written at open stays.
    let raw = std::fs::read(dir.path().join(crate::meta::META_FILE)).expect("meta");
    s.close().expect("close");
    assert!(
        s.set_meta("x", b"y").is_err(),
        "closed stores take no writes"
    );
    assert!(matches!(
        s.inner.log.commit(&[Op {
            space: Space::Hints,
            key: b"h".to_vec(),
            value: None
        }]),
        Err(StorageError::Closed)
    ));
    drop(s);
    std::fs::write(dir.path().join(crate::meta::META_FILE), raw).expect("write");
    assert!(!open_on(dir.path(), backend).opened_clean());
}

#[test]
fn metadata_of_an_older_directory_moves_into_its_own_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = Log::open(dir.path(), LogConfig::default(), Disk::Os).expect("open");
        log.commit(&[Op {
            space: Space::Meta,
            key: b"node_id".to_vec(),
            value: Some(b"n7".to_vec()),
        }])
        .expect("commit");
    }
    let s = open(dir.path());
    assert_eq!(
        s.meta("node_id").expect("meta").as_deref(),
        Some(&b"n7"[..])
    );
    assert!(!s.opened_clean(), "no clean shutdown was ever recorded");
    s.set_meta("node_id", b"n8").expect("set");
    drop(s);
    let s = open(dir.path());
    assert_eq!(
        s.meta("node_id").expect("meta").as_deref(),
        Some(&b"n8"[..])
    );
}

fn a_damaged_metadata_file_refuses_the_open(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = open_on(dir.path(), backend);
        s.set_meta("dot_reserved", &(1u64 << 21).to_be_bytes())
            .expect("meta");
    }
    let path = dir.path().join(crate::meta::META_FILE);
    let mut raw = std::fs::read(&path).expect("read");
    let at = raw.len() / 2;
    raw[at] ^= 0x01;
    std::fs::write(&path, &raw).expect("write");
    let err = Store::open(config(dir.path(), backend))
        .err()
        .expect("refused");
    assert!(matches!(err, StorageError::CorruptMeta { .. }), "{err}");
    assert!(err.to_string().contains("META"), "{err}");
}

fn second_open_is_refused(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let _s = open_on(dir.path(), backend);
    let again = Store::open(config(dir.path(), backend));
    assert!(
        matches!(again, Err(StorageError::Locked { .. })),
        "{:?}",
        again.err()
    );
}

/// Runs each named `fn(Backend)` once per engine, in modules `$log` and `$fjall`.
macro_rules! on_engines {
    ($log:ident, $fjall:ident: $($name:ident),* $(,)?) => {
        mod $log {
            $(#[test] fn $name() { super::$name(crate::Backend::Log) })*
        }
        mod $fjall {
            $(#[test] fn $name() { super::$name(crate::Backend::Fjall) })*
        }
    };
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => { on_engines!(on_log, on_fjall: $($name),*); };
}

macro_rules! on_both_too {
    ($($name:ident),* $(,)?) => { on_engines!(also_on_log, also_on_fjall: $($name),*); };
}

on_both!(
    update_sees_previous_value_and_keep_changes_nothing,
    failing_merge_writes_nothing,
    roots_depend_on_content_not_history,
    remove_if_refuses_a_changed_object,
    trees_survive_reopen_without_rescan,
    upper_nodes_come_back_from_checkpoint_or_leaves,
    segment_digests_list_exactly_the_segment,
    hints_and_meta_round_trip,
    a_power_loss_drops_what_the_last_sync_did_not_cover,
    an_unclean_open_stays_unclean_until_acknowledged,
    a_leaf_that_does_not_match_its_objects_is_corrected,
    a_killed_process_leaves_an_unclean_directory,
    a_damaged_metadata_file_refuses_the_open,
    second_open_is_refused,
);

/// One step of [`the_store_matches_a_model_through_reopens_and_compactions`].
#[derive(Clone, Debug)]
enum Step {
    Put(u32, u8, u8),
    Remove(u32, u8),
    Hint(u8, bool),
    Reopen,
    Compact,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        8 => (0..3u32, any::<u8>(), any::<u8>()).prop_map(|(p, k, v)| Step::Put(p, k % 40, v)),
        3 => (0..3u32, any::<u8>()).prop_map(|(p, k)| Step::Remove(p, k % 40)),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(k, add)| Step::Hint(k % 10, add)),
        1 => Just(Step::Reopen),
        1 => Just(Step::Compact),
    ]
}

/// Everything the store answers matches a map of what was written: gets, scans,
/// hints and every partition's root (the XOR of its objects' digests), across
/// reopens and the engine's merges or compactions.
fn the_store_matches_a_model(backend: Backend, steps: &[Step]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = open_on(dir.path(), backend);
    let mut objects: BTreeMap<(u32, Vec<u8>), Vec<u8>> = BTreeMap::new();
    let mut hints: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let check = |s: &Store,
                 objects: &BTreeMap<(u32, Vec<u8>), Vec<u8>>,
                 hints: &BTreeMap<Vec<u8>, Vec<u8>>| {
        for p in 0..3u32 {
            let held: BTreeMap<Vec<u8>, Vec<u8>> =
                s.scan_partition(p).collect::<Result<_>>().expect("scan");
            let want: BTreeMap<Vec<u8>, Vec<u8>> = objects
                .iter()
                .filter(|((q, _), _)| *q == p)
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(held, want, "partition {p}");
            let root = want
                .iter()
                .fold(EMPTY, |r, (k, v)| xor(&r, &object_digest(k, v)));
            assert_eq!(s.root(p).expect("root"), root, "root of {p}");
            for (k, v) in &want {
                assert_eq!(s.get(p, k).expect("get").as_ref(), Some(v));
            }
        }
        let held: BTreeMap<Vec<u8>, Vec<u8>> =
            s.hints(b"", 1000).expect("hints").into_iter().collect();
        assert_eq!(&held, hints);
        assert_eq!(s.hint_count().expect("count"), hints.len());
    };
    for step in steps {
        match step {
            Step::Put(p, k, v) => {
                let value = vec![*v; 1 + *v as usize % 64];
                put(&s, *p, &[*k], &value);
                objects.insert((*p, vec![*k]), value);
            }
            Step::Remove(p, k) => {
                let key = vec![*k];
                let removed = match objects.get(&(*p, key.clone())) {
                    Some(v) => s
                        .remove_if(*p, &key, &object_digest(&key, v))
                        .expect("remove"),
                    None => !s.remove_if(*p, &key, &EMPTY).expect("remove"),
                };
                assert!(removed);
                objects.remove(&(*p, key));
            }
            Step::Hint(k, add) => {
                let key = vec![b'h', *k];
                if *add {
                    s.put_hint(&key, &[*k; 3]).expect("hint");
                    hints.insert(key, vec![*k; 3]);
                } else {
                    s.remove_hint(&key).expect("remove hint");
                    hints.remove(&key);
                }
            }
            Step::Reopen => {
                drop(s);
                s = open_on(dir.path(), backend);
                assert!(s.opened_clean());
                check(&s, &objects, &hints);
            }
            Step::Compact => s.inner.log.compact().expect("compact"),
        }
    }
    check(&s, &objects, &hints);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
    #[test]
    fn the_log_store_matches_a_model(steps in proptest::collection::vec(step(), 1..120)) {
        the_store_matches_a_model(Backend::Log, &steps);
    }

    #[test]
    fn the_fjall_store_matches_a_model(steps in proptest::collection::vec(step(), 1..120)) {
        the_store_matches_a_model(Backend::Fjall, &steps);
    }
}

#[test]
fn a_directory_of_the_other_backend_is_refused_untouched() {
    for (made, asked) in [
        (Backend::Log, Backend::Fjall),
        (Backend::Fjall, Backend::Log),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = open_on(dir.path(), made);
            put(&s, 0, b"k", b"v");
        }
        let before = listing(dir.path());
        let err = Store::open(config(dir.path(), asked))
            .err()
            .expect("refused");
        assert!(matches!(err, StorageError::WrongBackend { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains(&format!("holds a {made} store")), "{text}");
        assert!(text.contains(&format!("--storage {made}")), "{text}");
        assert_eq!(listing(dir.path()), before, "nothing touched");
        let s = open_on(dir.path(), made);
        assert_eq!(s.get(0, b"k").expect("get").as_deref(), Some(&b"v"[..]));
        assert_eq!(s.backend(), made);
    }
    // A log directory from before the marker is still a log directory.
    let dir = tempfile::tempdir().expect("tempdir");
    drop(open_on(dir.path(), Backend::Log));
    std::fs::remove_file(dir.path().join(crate::backend::MARKER)).expect("rm");
    assert!(matches!(
        Store::open(config(dir.path(), Backend::Fjall)),
        Err(StorageError::WrongBackend { .. })
    ));
    drop(open_on(dir.path(), Backend::Log));
    assert!(
        dir.path().join(crate::backend::MARKER).exists(),
        "recorded now"
    );
    // A marker naming something unknown is refused, not overwritten.
    std::fs::write(
        dir.path().join(crate::backend::MARKER),
        "ringkv-storage rocks\n",
    )
    .expect("write");
    let err = Store::open(config(dir.path(), Backend::Log))
        .err()
        .expect("refused");
    assert!(matches!(err, StorageError::ForeignFormat { .. }), "{err}");
}

/// Names and contents of every file under `dir`.
fn listing(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).expect("list") {
        let path = e.expect("entry").path();
        if path.is_dir() {
            out.extend(listing(&path));
        } else {
            out.insert(path.clone(), std::fs::read(&path).expect("read"));
        }
    }
    out
}

/// Writes 2,000 objects to a fjall store, flushed into tables, then flips bytes of
/// its object tables at the offsets `at(len)` gives.
fn damaged_fjall(at: fn(usize) -> Vec<usize>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = open_on(dir.path(), Backend::Fjall);
        for i in 0..2_000u32 {
            put(
                &s,
                4,
                &i.to_be_bytes(),
                format!("value-{i:08}").repeat(4).as_bytes(),
            );
        }
        s.inner.log.compact().expect("flush");
    }
    let mut flipped = 0;
    for (path, mut bytes) in listing(&dir.path().join("fjall").join("keyspaces")) {
        if path.components().any(|c| c.as_os_str() == "tables") && bytes.len() > 16 << 10 {
            for i in at(bytes.len()) {
                bytes[i] ^= 0x40;
            }
            std::fs::write(&path, &bytes).expect("write");
            flipped += 1;
        }
    }
    assert!(flipped > 0, "no table written");
    dir
}

#[test]
fn a_damaged_fjall_block_fails_its_reads_without_a_panic() {
    // One byte in the data blocks: the table opens, the keys of that block fail
    // their checksum, the others read.
    let dir = damaged_fjall(|len| vec![len / 4]);
    let s = std::panic::catch_unwind(|| Store::open(config(dir.path(), Backend::Fjall)))
        .expect("no panic on open")
        .expect("a damaged data block does not stop the open");
    let mut damaged = 0;
    for i in 0..2_000u32 {
        let got =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.get(4, &i.to_be_bytes())))
                .expect("no panic");
        match got {
            Ok(Some(v)) => assert_eq!(v, format!("value-{i:08}").repeat(4).into_bytes()),
            Ok(None) => panic!("key {i} vanished without an error"),
            Err(e) => {
                assert!(e.is_damage(), "{e}");
                damaged += 1;
            }
        }
    }
    assert!(damaged > 0 && damaged < 2_000, "{damaged} damaged");
    // Remembered, so the replica drops and repairs them.
    assert!(!s.damaged(10).is_empty());
    let scan = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        s.scan_partition(4).collect::<Vec<_>>()
    }))
    .expect("no panic");
    assert!(scan.iter().any(|r| r.is_err()), "a scan over damage fails");
    // Its keys cannot be listed, so its leaf cannot be recomputed: dropping one
    // fails with the damage, and changes nothing.
    let (p, key) = s.damaged(1).remove(0);
    let dropped =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.drop_damaged(p, &key)))
            .expect("no panic");
    assert!(dropped.is_err_and(|e| e.is_damage()));
    assert!(s.get(p, &key).is_err_and(|e| e.is_damage()));
}

#[test]
fn a_fjall_store_damaged_throughout_is_refused_or_fails_without_a_panic() {
    let dir = damaged_fjall(|len| (1024..len - 1024).step_by(512).collect());
    let opened = std::panic::catch_unwind(|| Store::open(config(dir.path(), Backend::Fjall)))
        .expect("no panic on open");
    match opened {
        Err(e) => assert!(
            e.is_damage() || matches!(e, StorageError::Engine { .. }),
            "{e}"
        ),
        Ok(s) => {
            for i in 0..2_000u32 {
                let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    s.get(4, &i.to_be_bytes())
                }))
                .expect("no panic");
                if let Ok(Some(v)) = got {
                    assert_eq!(v, format!("value-{i:08}").repeat(4).into_bytes());
                }
            }
        }
    }
}

/// A failing fsync poisons the store: under `always` the write that needed it fails
/// and is not acknowledged, every later write fails with the same clear error,
/// reads go on, and a reopen (after the disk is back) recovers.
fn a_failed_fsync_poisons_the_store(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = crate::disk::SimulatedDisk::new();
    let open = || {
        let mut cfg = StoreConfig::new(dir.path());
        cfg.disk = Disk::Simulated(disk.clone());
        cfg.driver = Driver::Caller;
        cfg.backend = backend;
        cfg.sync = SyncPolicy::Always;
        Store::open(cfg).expect("open")
    };
    let s = open();
    put(&s, 1, b"before", b"v");
    disk.fail_syncs(true);
    let failed =
        s.update::<_, StorageError>(1, b"during", |_| Ok((Change::Put(b"x".to_vec()), ())));
    let err = failed.expect_err("not acknowledged");
    assert!(matches!(err, StorageError::Io { .. }), "{err}");
    assert!(err.to_string().contains("fsync"), "{err}");
    assert!(s.is_poisoned());
    // Later writes are refused before they touch anything, even once the disk
    // answers again: what the failed fsync dropped cannot be known.
    disk.fail_syncs(false);
    let again = s.update::<_, StorageError>(1, b"after", |_| Ok((Change::Put(b"y".to_vec()), ())));
    assert!(matches!(again, Err(StorageError::Poisoned)), "{again:?}");
    assert!(s.put_hint(b"h", b"v").is_err());
    // Reads go on.
    assert_eq!(
        s.get(1, b"before").expect("read").as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(s.get(1, b"after").expect("read"), None);
    drop(s);
    let s = open();
    assert!(!s.is_poisoned());
    assert_eq!(
        s.get(1, b"before").expect("read").as_deref(),
        Some(&b"v"[..])
    );
    put(&s, 1, b"after", b"y");
}

/// Under `interval`, the periodic sync is what fails: the next write is refused.
fn a_failed_interval_sync_refuses_the_next_write(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = crate::disk::SimulatedDisk::new();
    let s = simulated_on(dir.path(), &disk, backend);
    put(&s, 1, b"a", b"v");
    disk.fail_syncs(true);
    assert!(s.tick(true, false).is_err());
    assert!(s.is_poisoned());
    let refused = s.update::<_, StorageError>(1, b"b", |_| Ok((Change::Put(b"x".to_vec()), ())));
    assert!(
        matches!(refused, Err(StorageError::Poisoned)),
        "{refused:?}"
    );
    assert_eq!(s.get(1, b"a").expect("read").as_deref(), Some(&b"v"[..]));
}

on_both_too!(
    a_failed_fsync_poisons_the_store,
    a_failed_interval_sync_refuses_the_next_write,
);

/// Removes every hint file of a log directory.
fn remove_hints(dir: &Path) {
    for e in std::fs::read_dir(dir).expect("list") {
        let path = e.expect("entry").path();
        if path.extension().is_some_and(|x| x == "hint") {
            std::fs::remove_file(&path).expect("remove hint");
        }
    }
}

fn hint_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "hint"))
        .collect();
    out.sort();
    out
}

/// Everything a store holds, as `(partition, key, value)` and roots.
type Contents = (Vec<(u32, Vec<u8>, Vec<u8>)>, Vec<Hash>);

fn contents(s: &Store) -> Contents {
    let mut all = Vec::new();
    let mut roots = Vec::new();
    for p in 0..4u32 {
        for item in s.scan_partition(p) {
            let (k, v) = item.expect("scan");
            all.push((p, k, v));
        }
        roots.push(s.root(p).expect("root"));
    }
    (all, roots)
}

#[test]
fn a_clean_restart_reads_hint_files_and_a_bad_hint_falls_back_to_its_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let before = {
        let s = open(dir.path());
        for i in 0..3_000u32 {
            put(
                &s,
                i % 4,
                &i.to_be_bytes(),
                format!("value-{i:06}").as_bytes(),
            );
        }
        for i in (0..3_000u32).step_by(7) {
            let k = i.to_be_bytes();
            let d = object_digest(&k, format!("value-{i:06}").as_bytes());
            assert!(s.remove_if(i % 4, &k, &d).expect("remove"));
        }
        s.put_hint(b"h1", b"x").expect("hint");
        contents(&s)
    };
    let hints = hint_files(dir.path());
    assert_eq!(hints.len(), 1, "the closed active segment got its hint");
    let s = open(dir.path());
    assert_eq!(s.log_stats().hinted_segments, 1);
    assert!(s.opened_clean());
    assert_eq!(contents(&s), before);
    assert_eq!(s.hint(b"h1").expect("hint").as_deref(), Some(&b"x"[..]));
    drop(s);
    // A damaged hint: ignored, the segment is read, nothing differs.
    let mut raw = std::fs::read(&hints[0]).expect("read");
    let mid = raw.len() / 2;
    raw[mid] ^= 0x10;
    std::fs::write(&hints[0], &raw).expect("write");
    let s = open(dir.path());
    assert_eq!(
        s.log_stats().hinted_segments,
        0,
        "the damaged hint is ignored"
    );
    assert_eq!(contents(&s), before);
    drop(s);
    // That close wrote it again.
    let s = open(dir.path());
    assert_eq!(s.log_stats().hinted_segments, 1);
    drop(s);
    // Missing hints, and a hint that does not describe its segment (cut short):
    // both read the segments.
    remove_hints(dir.path());
    std::fs::write(hint_path_of(dir.path(), 999), b"RKVHINT\x01 stale").expect("orphan");
    let s = open(dir.path());
    assert_eq!(s.log_stats().hinted_segments, 0);
    assert_eq!(contents(&s), before);
    assert!(
        !hint_path_of(dir.path(), 999).exists(),
        "an orphan hint is removed"
    );
}

fn hint_path_of(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:08}.hint"))
}

#[test]
fn a_value_damaged_under_a_hint_is_found_when_read_and_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = open(dir.path());
        for i in 0..50u32 {
            put(&s, 3, &i.to_be_bytes(), format!("value-{i:05}").as_bytes());
        }
    }
    damage(dir.path(), b"value-00011");
    let s = open(dir.path());
    assert_eq!(
        s.log_stats().hinted_segments,
        1,
        "the hint is trusted for keys"
    );
    let k = 11u32.to_be_bytes();
    assert!(s.get(3, &k).is_err_and(|e| e.is_damage()), "never served");
    assert_eq!(s.damaged(10), vec![(3, k.to_vec())]);
    assert!(s.drop_damaged(3, &k).expect("drop"));
    let (all, roots) = contents(&s);
    assert_eq!(all.len(), 49);
    let root = all
        .iter()
        .fold(EMPTY, |r, (_, k, v)| xor(&r, &object_digest(k, v)));
    assert_eq!(roots[3], root);
}
