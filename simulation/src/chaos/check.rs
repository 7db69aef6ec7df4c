//! The checker: judges a run's [`History`].
//!
//! - **Registers**: every acknowledged write is still a sibling on one of its key's
//!   primaries, unless a later write (acknowledged or perhaps applied) carried a
//!   context that covers it: the context the acknowledged write returned is ≤ the
//!   later write's context. States travel whole, so any state that holds the write's
//!   dot has seen all of that returned context: the comparison is exact, not a
//!   heuristic. Conversely, no value an acknowledged write covered may be held at
//!   the end (a resurrection, say after a tombstone was reaped too early).
//! - **Sets**: every acknowledged add is present at the end, unless a remove of the
//!   same member (acknowledged or perhaps applied) returned after the add was sent,
//!   the only removes that can have observed it.
//! - Every register value and set member read, or held at the end, was written by an
//!   operation that did not certainly fail.
//! - Every counter ends between the sum of acknowledged deltas and the sum of
//!   attempted (not certainly failed) deltas.
//! - Every partition's primaries hold equal Merkle roots.
//! - No write whose context was forged (another key's, truncated, altered, unsigned)
//!   is acknowledged, and its value is never read or held.

use std::collections::BTreeSet;

use super::history::{History, Status};
use ringkv::ring::Ring;

/// Prefix of the violations that are lost acknowledged writes.
pub const LOST: &str = "lost ";
/// How a resurrection's violation starts.
pub const RESURRECTED: &str = "resurrected";
/// How an unfinished handoff's violation starts.
pub const HELD_ELSEWHERE: &str = "handoff unfinished: ";
/// The root of a partition that holds nothing.
const EMPTY_ROOT: [u8; 32] = [0; 32];

/// Everything wrong with `h` (empty = the run passed).
pub fn check(h: &History) -> Vec<String> {
    let mut v: Vec<String> = h.check_errors.clone();
    if h.ring.is_none() && !v.is_empty() {
        // The final reads stopped early: the rest would only repeat it.
        return v;
    }
    registers(h, &mut v);
    sets(h, &mut v);
    counters(h, &mut v);
    convergence(h, &mut v);
    v
}

/// The ring at the end, if it was read and rebuilds.
fn final_ring(h: &History) -> Option<(Ring, u32, usize)> {
    let info = h.ring.as_ref()?;
    Some((info.rebuild()?, info.ring_size, usize::from(info.n)))
}

/// The values the primaries of `key` hold at the end (every node's, without a ring).
fn held_by_primaries<'a>(
    h: &'a History,
    ring: Option<&(Ring, u32, usize)>,
    key: &str,
) -> BTreeSet<&'a str> {
    let primaries: Option<BTreeSet<String>> = ring.map(|(r, size, n)| {
        let p = ringkv::ring::partition_of(key.as_bytes(), *size);
        ringkv::cluster::walk_of(r, p, *n).0.into_iter().collect()
    });
    h.final_registers
        .iter()
        .filter(|(node, _)| primaries.as_ref().is_none_or(|p| p.contains(*node)))
        .filter_map(|(_, keys)| keys.get(key))
        .flatten()
        .map(String::as_str)
        .collect()
}

fn registers(h: &History, v: &mut Vec<String>) {
    let ring = final_ring(h);
    let written: BTreeSet<(&str, &str)> = h
        .register_writes
        .iter()
        .filter(|w| w.status != Status::Fail && w.forged.is_none())
        .filter_map(|w| Some((w.key.as_str(), w.value.as_deref()?)))
        .collect();
    for w in h.register_writes.iter().filter(|w| w.forged.is_some()) {
        if w.status == Status::Ok {
            v.push(format!(
                "a forged context ({}) was accepted: {} = {}",
                w.forged.unwrap_or("?"),
                w.key,
                w.value.as_deref().unwrap_or("-")
            ));
        }
    }
    // Writes that may have applied, whose contexts may cover others.
    let genuine = |w: &&super::history::RegisterWrite| w.forged.is_none();
    for w in h
        .register_writes
        .iter()
        .filter(genuine)
        .filter(|w| !w.weak && !h.doubly_exposed(w.at))
    {
        let (Status::Ok, Some(value)) = (w.status, &w.value) else {
            continue;
        };
        if held_by_primaries(h, ring.as_ref(), &w.key).contains(value.as_str()) {
            continue;
        }
        let covered = w.returned.as_ref().is_some_and(|mine| {
            h.register_writes.iter().filter(genuine).any(|later| {
                later.key == w.key
                    && later.status != Status::Fail
                    && later.context.as_ref().is_some_and(|ctx| ctx >= mine)
            })
        });
        if !covered {
            v.push(format!(
                "{LOST}write: {} = {value} was acknowledged, is on no replica, and no later write's context covers it",
                w.key
            ));
        }
    }
    for (k, val) in &h.read_values {
        if !written.contains(&(k.as_str(), val.as_str())) {
            v.push(format!("read a value nobody wrote: {k} = {val}"));
        }
    }
    for (node, keys) in &h.final_registers {
        for (k, vals) in keys {
            for val in vals {
                if !written.contains(&(k.as_str(), val.as_str())) {
                    v.push(format!("{node} holds a value nobody wrote: {k} = {val}"));
                }
            }
        }
    }
    // Resurrections: a held value whose write an acknowledged write covered.
    let keys: BTreeSet<&str> = h.register_writes.iter().map(|w| w.key.as_str()).collect();
    for key in keys {
        for value in held_by_primaries(h, ring.as_ref(), key) {
            let Some(mine) = h
                .register_writes
                .iter()
                .filter(genuine)
                .find(|w| w.key == key && w.value.as_deref() == Some(value))
                .and_then(|w| w.returned.as_ref())
            else {
                continue;
            };
            // A covering write that two failures may have lost (acknowledged by a
            // replica that never synced it, the other replica's disk lost after)
            // leaves what it covered standing (seed 363).
            let over = h.register_writes.iter().filter(genuine).find(|later| {
                later.key == key
                    && later.status == Status::Ok
                    && !h.doubly_exposed(later.at)
                    && later.context.as_ref().is_some_and(|ctx| ctx >= mine)
            });
            if let Some(over) = over {
                v.push(format!(
                    "resurrected: {key} = {value} is held (by {}), yet an acknowledged {} covered it (the write returned {:?}; the covering one carried {:?})",
                    holders(h, key, value).join(", "),
                    match &over.value {
                        Some(x) => format!("write of {x}"),
                        None => "delete".into(),
                    },
                    mine.dots,
                    over.context.as_ref().map(|c| &c.dots)
                ));
            }
        }
    }
}

/// The members whose final read of `key` held `value`, each with the clock it read.
fn holders(h: &History, key: &str, value: &str) -> Vec<String> {
    h.final_registers
        .iter()
        .filter(|(_, keys)| {
            keys.get(key)
                .is_some_and(|vals| vals.iter().any(|x| x == value))
        })
        .map(|(node, _)| {
            let clock = h.final_clocks.get(node).and_then(|keys| keys.get(key));
            format!(
                "{node} at {:?}",
                clock.and_then(|c| c.as_ref()).map(|c| &c.dots)
            )
        })
        .collect()
}

fn sets(h: &History, v: &mut Vec<String>) {
    let added: BTreeSet<(&str, &str)> = h
        .set_updates
        .iter()
        .filter(|u| u.add && u.status != Status::Fail)
        .map(|u| (u.key.as_str(), u.member.as_str()))
        .collect();
    for a in h
        .set_updates
        .iter()
        .filter(|u| u.add && u.status == Status::Ok && !h.doubly_exposed(u.at))
    {
        let present = h
            .final_sets
            .get(&a.key)
            .is_some_and(|m| m.contains(&a.member));
        let removed = h.set_updates.iter().any(|r| {
            !r.add
                && r.key == a.key
                && r.member == a.member
                && r.status != Status::Fail
                && r.completed > a.invoked
        });
        if !present && !removed {
            v.push(format!(
                "{LOST}set add: {} += {} was acknowledged, is missing, and no remove of it came after",
                a.key, a.member
            ));
        }
    }
    let reads = h.read_members.iter().map(|(k, m)| (k, m, "read"));
    let held = h
        .final_sets
        .iter()
        .flat_map(|(k, ms)| ms.iter().map(move |m| (k, m, "held")));
    for (k, m, how) in reads.chain(held) {
        if !added.contains(&(k.as_str(), m.as_str())) {
            v.push(format!("set member nobody added was {how}: {k} ∋ {m}"));
        }
    }
}

fn counters(h: &History, v: &mut Vec<String>) {
    for (key, (acked, attempted)) in &h.counters {
        let got = h.final_counters.get(key).copied().flatten().unwrap_or(0);
        // Increments a second failure may have taken lower the floor.
        let exposed: i64 = h
            .counter_acks
            .iter()
            .filter(|(k, _, at)| k == key && h.doubly_exposed(*at))
            .map(|(_, d, _)| d)
            .sum();
        let acked = acked - exposed;
        if got < i128::from(acked) || got > i128::from(*attempted) {
            v.push(format!(
                "counter {key} = {got}, outside [{acked}, {attempted}]"
            ));
        }
    }
}

fn convergence(h: &History, v: &mut Vec<String>) {
    if h.ring.is_none() {
        v.push("the final reads never read the ring".into());
        return;
    }
    let Some((r, size, n)) = final_ring(h) else {
        v.push("the final ring does not rebuild".into());
        return;
    };
    for p in diverged(&h.roots, &r, size, n as u8) {
        let (primaries, _) = ringkv::cluster::walk_of(&r, p, n);
        v.push(format!(
            "partition {p}: replicas did not converge{}",
            differing_registers(h, &primaries, p, size)
        ));
    }
    for (p, id) in held_elsewhere(&h.roots, &r, size, n as u8) {
        v.push(format!(
            "{HELD_ELSEWHERE}{id} still holds data of partition {p}, which it is no primary of"
        ));
    }
    let missing: Vec<&String> = r
        .members()
        .iter()
        .map(|m| &m.id)
        .filter(|id| !h.roots.contains_key(*id))
        .collect();
    if !missing.is_empty() {
        v.push(format!("no roots read from {missing:?}"));
    }
}

/// The partitions whose primaries (on `ring`) hold different Merkle roots in
/// `roots` (node index -> root of every partition).
pub fn diverged(
    roots: &std::collections::BTreeMap<String, Vec<[u8; 32]>>,
    ring: &Ring,
    size: u32,
    n: u8,
) -> Vec<u32> {
    (0..size)
        .filter(|&p| {
            let (primaries, _) = ringkv::cluster::walk_of(ring, p, usize::from(n));
            let held: BTreeSet<[u8; 32]> = primaries
                .iter()
                .filter_map(|id| roots.get(id).and_then(|rs| rs.get(p as usize)).copied())
                .collect();
            held.len() > 1
        })
        .collect()
}

/// (partition, node) pairs where a node in `roots` that is not one of the
/// partition's primaries still holds data of it: a handoff that never finished.
pub fn held_elsewhere(
    roots: &std::collections::BTreeMap<String, Vec<[u8; 32]>>,
    ring: &Ring,
    size: u32,
    n: u8,
) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for p in 0..size {
        let (primaries, _) = ringkv::cluster::walk_of(ring, p, usize::from(n));
        for (id, rs) in roots {
            if !primaries.contains(id) && rs.get(p as usize).is_some_and(|r| *r != EMPTY_ROOT) {
                out.push((p, id.clone()));
            }
        }
    }
    out
}

/// The register keys of partition `p` whose values differ between `primaries`, for
/// a convergence failure's message (counters and sets were read at R=3, not per
/// replica).
fn differing_registers(h: &History, primaries: &[String], p: u32, size: u32) -> String {
    let held = |id: &String, key: &str| {
        let values = h.final_registers.get(id).and_then(|keys| keys.get(key));
        let clock = h.final_clocks.get(id).and_then(|keys| keys.get(key));
        (
            values.cloned().unwrap_or_default(),
            clock.cloned().flatten(),
        )
    };
    let keys: BTreeSet<&String> = h
        .final_registers
        .values()
        .flat_map(|keys| keys.keys())
        .filter(|k| ringkv::ring::partition_of(k.as_bytes(), size) == p)
        .collect();
    let mut out = Vec::new();
    for key in keys {
        let views: Vec<String> = primaries
            .iter()
            .map(|id| {
                let (values, clock) = held(id, key);
                let values: Vec<String> = values.into_iter().collect();
                let clock = clock.map_or("?".to_string(), |c| format!("{c:?}"));
                format!("{id}={{{}}}@{clock}", values.join(","))
            })
            .collect();
        let first = held(&primaries[0], key);
        if primaries.iter().any(|id| held(id, key) != first) {
            out.push(format!("{key}: {}", views.join(" ")));
        }
    }
    if out.is_empty() {
        " (its registers agree: a counter or set differs)".into()
    } else {
        format!(" ({})", out.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::super::history::{Clock, RegisterWrite, SetUpdate};
    use super::*;
    use crdts::{CmRDT, Dot};
    use std::time::Duration;

    fn clock(entries: &[(u64, u64)]) -> Clock {
        let mut c = Clock::new();
        for &(a, n) in entries {
            c.apply(Dot::new(a, n));
        }
        c
    }

    fn put(key: &str, value: &str, context: Option<Clock>, returned: Clock) -> RegisterWrite {
        RegisterWrite {
            key: key.into(),
            value: Some(value.into()),
            context,
            returned: Some(returned),
            status: Status::Ok,
            forged: None,
            weak: false,
            at: Duration::ZERO,
        }
    }

    fn held(h: &mut History, key: &str, values: &[&str]) {
        h.final_registers
            .entry("n1".into())
            .or_default()
            .insert(key.into(), values.iter().map(|s| s.to_string()).collect());
    }

    fn register_violations(h: &History) -> Vec<String> {
        let mut v = Vec::new();
        registers(h, &mut v);
        v
    }

    #[test]
    fn a_missing_blind_write_is_lost() {
        let mut h = History::default();
        h.register_writes
            .push(put("r1", "a", None, clock(&[(1, 1)])));
        h.register_writes
            .push(put("r1", "b", None, clock(&[(1, 2)])));
        held(&mut h, "r1", &["b"]);
        let v = register_violations(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].starts_with(LOST) && v[0].contains("r1 = a"));
        held(&mut h, "r1", &["a", "b"]);
        assert!(register_violations(&h).is_empty());
    }

    #[test]
    fn a_write_covered_by_a_later_context_may_be_gone() {
        let mut h = History::default();
        h.register_writes
            .push(put("r1", "a", None, clock(&[(1, 1)])));
        // Read {1:1, 2:4} and wrote over it.
        let mut over = put(
            "r1",
            "b",
            Some(clock(&[(1, 1), (2, 4)])),
            clock(&[(1, 2), (2, 4)]),
        );
        over.status = Status::Maybe;
        h.register_writes.push(over);
        held(&mut h, "r1", &["b"]);
        assert!(register_violations(&h).is_empty());
    }

    #[test]
    fn a_context_that_misses_part_of_the_write_does_not_cover_it() {
        let mut h = History::default();
        h.register_writes
            .push(put("r1", "a", None, clock(&[(1, 3), (2, 1)])));
        h.register_writes.push(put(
            "r1",
            "b",
            Some(clock(&[(1, 2), (2, 1)])),
            clock(&[(1, 4)]),
        ));
        // Another key's context covers nothing here.
        h.register_writes.push(put(
            "r2",
            "c",
            Some(clock(&[(1, 9), (2, 9)])),
            clock(&[(1, 10)]),
        ));
        held(&mut h, "r1", &["b"]);
        held(&mut h, "r2", &["c"]);
        assert_eq!(register_violations(&h).len(), 1);
    }

    #[test]
    fn a_covered_value_held_at_the_end_is_a_resurrection() {
        let mut h = History::default();
        h.register_writes
            .push(put("r1", "a", None, clock(&[(1, 1)])));
        let mut delete = put("r1", "-", Some(clock(&[(1, 1)])), clock(&[(1, 2)]));
        delete.value = None;
        h.register_writes.push(delete);
        held(&mut h, "r1", &[]);
        assert!(register_violations(&h).is_empty());
        held(&mut h, "r1", &["a"]);
        let v = register_violations(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].starts_with("resurrected"), "{v:?}");
    }

    #[test]
    fn a_covering_write_two_failures_may_have_lost_leaves_what_it_covered() {
        let mut h = History::default();
        h.register_writes
            .push(put("r1", "a", None, clock(&[(1, 1)])));
        let mut over = put("r1", "b", Some(clock(&[(1, 1)])), clock(&[(1, 2)]));
        over.at = Duration::from_secs(10);
        h.register_writes.push(over);
        held(&mut h, "r1", &["a"]);
        // Acknowledged by a replica whose fsyncs then failed: one failure.
        h.exposed
            .push((Duration::from_secs(9), Duration::from_secs(11)));
        let v = register_violations(&h);
        assert!(v.len() == 2 && v[1].starts_with("resurrected"), "{v:?}");
        // And the other replica's disk lost after: two, beyond what W=2 promises.
        h.disk_losses.push(Duration::from_secs(12));
        assert!(register_violations(&h).is_empty());
    }

    #[test]
    fn a_covering_write_that_certainly_failed_covers_nothing() {
        let mut h = History::default();
        h.register_writes
            .push(put("r1", "a", None, clock(&[(1, 1)])));
        let mut over = put("r1", "b", Some(clock(&[(1, 1)])), clock(&[(1, 2)]));
        over.status = Status::Fail;
        over.returned = None;
        h.register_writes.push(over);
        held(&mut h, "r1", &[]);
        assert_eq!(register_violations(&h).len(), 1);
    }

    #[test]
    fn invented_values_are_reported() {
        let mut h = History::default();
        h.register_writes
            .push(put("r1", "a", None, clock(&[(1, 1)])));
        let mut failed = put("r1", "f", None, clock(&[(1, 2)]));
        failed.status = Status::Fail;
        h.register_writes.push(failed);
        held(&mut h, "r1", &["a", "f"]);
        h.read_values.push(("r1".into(), "zz".into()));
        let v = register_violations(&h);
        assert_eq!(v.len(), 2, "{v:?}");
    }

    #[test]
    fn an_accepted_forged_context_is_reported_and_covers_nothing() {
        let mut h = History::default();
        h.register_writes
            .push(put("r1", "a", None, clock(&[(1, 1)])));
        let mut forged = put("r1", "f", Some(clock(&[(1, 9)])), clock(&[(1, 10)]));
        forged.forged = Some("unsigned");
        forged.status = Status::Maybe;
        h.register_writes.push(forged.clone());
        // Refused or unknown: fine, as long as nothing it claims to cover is gone...
        held(&mut h, "r1", &["a"]);
        assert!(register_violations(&h).is_empty());
        // ...and its value never shows up.
        held(&mut h, "r1", &["a", "f"]);
        assert_eq!(register_violations(&h).len(), 1);
        // A value it would have covered is lost, not legitimately overwritten.
        held(&mut h, "r1", &[]);
        let v = register_violations(&h);
        assert!(v.iter().any(|v| v.starts_with(LOST)), "{v:?}");
        // Acknowledged at all: a violation of its own.
        forged.status = Status::Ok;
        h.register_writes.push(forged);
        held(&mut h, "r1", &["a"]);
        let v = register_violations(&h);
        assert!(v.iter().any(|v| v.contains("forged")), "{v:?}");
    }

    fn update(add: bool, member: &str, invoked: u64, completed: u64, status: Status) -> SetUpdate {
        SetUpdate {
            key: "s1".into(),
            member: member.into(),
            add,
            invoked,
            completed,
            status,
            at: Duration::ZERO,
        }
    }

    fn set_violations(h: &History) -> Vec<String> {
        let mut v = Vec::new();
        sets(h, &mut v);
        v
    }

    #[test]
    fn set_adds_survive_unless_a_later_remove_took_them() {
        let mut h = History::default();
        h.set_updates.push(update(true, "a", 1, 2, Status::Ok));
        h.set_updates.push(update(true, "b", 3, 4, Status::Ok));
        h.final_sets
            .insert("s1".into(), ["b".to_string()].into_iter().collect());
        assert_eq!(
            set_violations(&h).len(),
            1,
            "a is missing, nothing removed it"
        );
        h.set_updates.push(update(false, "a", 5, 6, Status::Maybe));
        assert!(set_violations(&h).is_empty());
    }

    #[test]
    fn a_remove_that_returned_before_the_add_was_sent_cannot_cover_it() {
        let mut h = History::default();
        h.set_updates.push(update(false, "a", 1, 2, Status::Ok));
        h.set_updates.push(update(true, "a", 3, 4, Status::Ok));
        h.final_sets.insert("s1".into(), BTreeSet::new());
        assert_eq!(set_violations(&h).len(), 1);
        h.read_members.push(("s1".into(), "ghost".into()));
        assert_eq!(set_violations(&h).len(), 2);
    }

    #[test]
    fn a_write_exposed_to_two_failures_may_be_lost_but_no_other() {
        let mut h = History::default();
        let mut w = put("r1", "a", None, clock(&[(1, 1)]));
        w.at = Duration::from_millis(10_000);
        h.register_writes.push(w);
        held(&mut h, "r1", &[]);
        assert_eq!(register_violations(&h).len(), 1, "lost");
        // A power loss just after it: one failure, still a loss.
        h.exposed
            .push((Duration::from_millis(9_900), Duration::from_millis(10_200)));
        assert_eq!(register_violations(&h).len(), 1, "one failure is survived");
        // A disk lost before it: its replicas did not include that disk.
        h.disk_losses.push(Duration::from_millis(5_000));
        assert_eq!(register_violations(&h).len(), 1);
        // A disk lost after it as well: two failures, beyond W=2's promise.
        h.disk_losses.push(Duration::from_millis(30_000));
        assert!(register_violations(&h).is_empty());
        h.counters.insert("k0".into(), (5, 9));
        h.counter_acks
            .push(("k0".into(), 2, Duration::from_millis(10_100)));
        h.final_counters.insert("k0".into(), Some(3));
        let mut v = Vec::new();
        counters(&h, &mut v);
        assert!(
            v.is_empty(),
            "the exposed increment lowers the floor: {v:?}"
        );
        h.final_counters.insert("k0".into(), Some(2));
        counters(&h, &mut v);
        assert_eq!(v.len(), 1);
    }

    #[test]
    fn data_held_outside_a_partitions_primaries_is_an_unfinished_handoff() {
        let members: Vec<ringkv::ring::Member> = ["n1", "n2", "n3", "n4"]
            .iter()
            .map(|id| ringkv::ring::Member {
                id: id.to_string(),
                zone: String::new(),
            })
            .collect();
        let ring = Ring::build(&members, 16, 3).expect("ring");
        let mut roots: std::collections::BTreeMap<String, Vec<[u8; 32]>> = members
            .iter()
            .map(|m| (m.id.clone(), vec![[0u8; 32]; 16]))
            .collect();
        for p in 0..16u32 {
            for id in ringkv::cluster::walk_of(&ring, p, 3).0 {
                roots.get_mut(&id).expect("member")[p as usize] = [p as u8 + 1; 32];
            }
        }
        assert!(diverged(&roots, &ring, 16, 3).is_empty());
        assert!(held_elsewhere(&roots, &ring, 16, 3).is_empty());
        let (primaries, _) = ringkv::cluster::walk_of(&ring, 5, 3);
        let outsider = members
            .iter()
            .find(|m| !primaries.contains(&m.id))
            .expect("4 nodes, 3 primaries");
        roots.get_mut(&outsider.id).expect("member")[5] = [9; 32];
        assert_eq!(
            held_elsewhere(&roots, &ring, 16, 3),
            vec![(5, outsider.id.clone())]
        );
        // One primary apart from the others: diverged.
        roots.get_mut(&primaries[0]).expect("primary")[5] = [7; 32];
        assert_eq!(diverged(&roots, &ring, 16, 3), vec![5]);
    }

    #[test]
    fn counters_must_end_within_their_bounds() {
        let mut h = History::default();
        h.counters.insert("k0".into(), (5, 9));
        h.final_counters.insert("k0".into(), Some(7));
        let mut v = Vec::new();
        counters(&h, &mut v);
        assert!(v.is_empty());
        h.final_counters.insert("k0".into(), Some(4));
        counters(&h, &mut v);
        assert_eq!(v.len(), 1);
    }
}
