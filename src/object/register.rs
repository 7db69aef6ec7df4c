//! The register: a dotted-version-vector set (DVVSet) of byte values.
//!
//! State = a causal context (`clock`, a version vector summarising every write this
//! replica has seen) plus the siblings: values that no seen write has overwritten, each
//! tagged with the unique dot of the write that made it. A value of `None` is a
//! tombstone. Dots come from the coordinating replica's actor, which must write on
//! top of its own complete history, so clocks stay downward closed and "dot ≤ clock"
//! means "seen". The replica guarantees that by changing actor whenever its copy may
//! have lost something (`Replica`'s actor epochs: Riak's kv679).
//!
//! Not `crdts::MVReg`: with server-side actors it reuses dots on blind writes or drops
//! concurrent siblings (DESIGN.md §3).

use crdts::{CmRDT, CvRDT, Dot, VClock};
use serde::{Deserialize, Serialize};

use super::{Actor, ObjectError};

/// One sibling: the dot of the write that produced it and its value (`None` = deleted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sibling {
    /// Unique identity of the write.
    pub dot: Dot<Actor>,
    /// The written bytes; `None` for a delete. Encoded as one byte string (the
    /// same bytes postcard gives a sequence of u8, without a call per byte).
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
}

/// A multi-value register with causal siblings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    clock: VClock<Actor>,
    /// Sorted by `(actor, counter)`; dots are unique.
    siblings: Vec<Sibling>,
}

fn covers(clock: &VClock<Actor>, dot: &Dot<Actor>) -> bool {
    clock.get(&dot.actor) >= dot.counter
}

fn sort_key(s: &Sibling) -> (Actor, u64) {
    (s.dot.actor, s.dot.counter)
}

impl Register {
    /// An empty register (never written).
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a client write coordinated by `actor`, with the next dot counter of
    /// this key (`own + 1`). See [`Register::write_at`].
    ///
    /// # Errors
    /// [`ObjectError::InvalidContext`] if `context` claims writes by `actor` that this
    /// replica never made (a forged or foreign context).
    pub fn write(
        &mut self,
        actor: Actor,
        context: &VClock<Actor>,
        value: Option<Vec<u8>>,
    ) -> Result<Dot<Actor>, ObjectError> {
        let next = self
            .clock
            .get(&actor)
            .checked_add(1)
            .ok_or(ObjectError::DotsExhausted { actor })?;
        self.write_at(actor, next, context, value)
    }

    /// Applies a client write coordinated by `actor`, numbering its dot at least
    /// `floor`: a node-wide counter that never goes back, so a dot is never reused even
    /// after the key's tombstone was reaped here and the per-key count restarted
    /// (another replica still holding the old clock would otherwise take the new
    /// write for one it had already seen).
    ///
    /// Siblings covered by `context` are replaced; the others stay as concurrent
    /// siblings. `value = None` writes a tombstone. Returns the new write's dot.
    ///
    /// # Errors
    /// [`ObjectError::InvalidContext`] if `context` claims writes by `actor` that this
    /// replica never made (beyond both this key's count and the node-wide counter);
    /// [`ObjectError::DotsExhausted`] if the next dot would not fit in a `u64`.
    pub fn write_at(
        &mut self,
        actor: Actor,
        floor: u64,
        context: &VClock<Actor>,
        value: Option<Vec<u8>>,
    ) -> Result<Dot<Actor>, ObjectError> {
        let own = self.clock.get(&actor);
        let claimed = context.get(&actor);
        if claimed > own && claimed >= floor {
            return Err(ObjectError::InvalidContext {
                reason: format!(
                    "context claims {claimed} writes by this replica, which has made {}",
                    own.max(floor.saturating_sub(1))
                ),
            });
        }
        let exhausted = ObjectError::DotsExhausted { actor };
        let next = own.max(claimed).checked_add(1).ok_or(exhausted)?;
        self.siblings.retain(|s| !covers(context, &s.dot));
        let dot = Dot::new(actor, next.max(floor));
        self.clock.merge(context.clone());
        self.clock.apply(dot);
        self.siblings.push(Sibling { dot, value });
        self.siblings.sort_by_key(sort_key);
        Ok(dot)
    }

    /// Merges another replica's state into this one (commutative, associative,
    /// idempotent).
    pub fn merge(&mut self, other: &Register) {
        let mut out: Vec<Sibling> = Vec::with_capacity(self.siblings.len() + other.siblings.len());
        for s in &self.siblings {
            match other.siblings.iter().find(|o| o.dot == s.dot) {
                // Equal dots carry equal values; should corrupt input disagree, the
                // larger value wins so the merge stays commutative.
                Some(o) => out.push(if o.value > s.value {
                    o.clone()
                } else {
                    s.clone()
                }),
                None if !covers(&other.clock, &s.dot) => out.push(s.clone()),
                None => {}
            }
        }
        for o in &other.siblings {
            let known = self.siblings.iter().any(|s| s.dot == o.dot);
            if !known && !covers(&self.clock, &o.dot) {
                out.push(o.clone());
            }
        }
        out.sort_by_key(sort_key);
        self.siblings = out;
        self.clock.merge(other.clock.clone());
    }

    /// Keeps only the sibling with the highest dot (counter, then actor), as a
    /// last-writer-wins store would. This loses concurrent writes by design: it exists
    /// only so the simulation can show that its checker notices lost writes.
    pub fn keep_last_writer(&mut self) {
        if let Some(last) = self
            .siblings
            .iter()
            .max_by_key(|s| (s.dot.counter, s.dot.actor))
            .cloned()
        {
            self.siblings = vec![last];
        }
    }

    /// The causal context of everything this state has seen.
    pub fn context(&self) -> &VClock<Actor> {
        &self.clock
    }

    /// All siblings, tombstones included, in canonical order.
    pub fn siblings(&self) -> &[Sibling] {
        &self.siblings
    }

    /// Live values (tombstones left out), in canonical order.
    pub fn values(&self) -> Vec<&[u8]> {
        self.siblings
            .iter()
            .filter_map(|s| s.value.as_deref())
            .collect()
    }

    /// Whether a read should answer not-found: no live value.
    pub fn is_deleted(&self) -> bool {
        self.siblings.iter().all(|s| s.value.is_none())
    }

    /// Checks the invariants a decoded state must hold.
    ///
    /// # Errors
    /// [`ObjectError::Corrupt`] if dots repeat, are unsorted, or are not covered by the clock.
    pub fn validate(&self) -> Result<(), ObjectError> {
        for pair in self.siblings.windows(2) {
            if sort_key(&pair[0]) >= sort_key(&pair[1]) {
                return Err(ObjectError::Corrupt {
                    reason: "register siblings unsorted or repeated".into(),
                });
            }
        }
        if let Some(s) = self.siblings.iter().find(|s| !covers(&self.clock, &s.dot)) {
            return Err(ObjectError::Corrupt {
                reason: format!("sibling dot {:?} not covered by the clock", s.dot),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn v(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    #[test]
    fn blind_writes_become_siblings_and_context_resolves() {
        let mut r = Register::new();
        r.write(1, &VClock::new(), v("a")).expect("write");
        r.write(1, &VClock::new(), v("b")).expect("write");
        assert_eq!(r.values(), vec![&b"a"[..], &b"b"[..]]);
        let ctx = r.context().clone();
        r.write(1, &ctx, v("c")).expect("write");
        assert_eq!(r.values(), vec![&b"c"[..]]);
    }

    #[test]
    fn keep_last_writer_drops_concurrent_siblings() {
        let mut a = Register::new();
        let mut b = Register::new();
        a.write(1, &VClock::new(), v("a")).expect("write");
        b.write(2, &VClock::new(), v("b")).expect("write");
        b.write(2, &VClock::new(), v("c")).expect("write");
        a.merge(&b);
        assert_eq!(a.values().len(), 3, "a causal register keeps all three");
        a.keep_last_writer();
        assert_eq!(a.values(), vec![&b"c"[..]], "highest dot wins");
        let mut empty = Register::new();
        empty.keep_last_writer();
        assert_eq!(empty, Register::new());
    }

    #[test]
    fn delete_with_context_leaves_a_tombstone_only() {
        let mut r = Register::new();
        r.write(1, &VClock::new(), v("a")).expect("write");
        let ctx = r.context().clone();
        r.write(1, &ctx, None).expect("delete");
        assert!(r.is_deleted());
        assert_eq!(r.siblings().len(), 1);
    }

    #[test]
    fn forged_context_is_refused() {
        let mut r = Register::new();
        let mut forged = VClock::new();
        forged.apply(Dot::new(1, 99));
        assert!(matches!(
            r.write(1, &forged, v("x")),
            Err(ObjectError::InvalidContext { .. })
        ));
        assert_eq!(r, Register::new());
    }

    #[test]
    fn concurrent_writes_at_two_replicas_merge_to_siblings() {
        let mut a = Register::new();
        let mut b = Register::new();
        a.write(1, &VClock::new(), v("a")).expect("write");
        b.write(2, &VClock::new(), v("b")).expect("write");
        let mut ab = a.clone();
        ab.merge(&b);
        assert_eq!(ab.values().len(), 2);
        // A write at replica b with the merged context supersedes both everywhere.
        b.merge(&ab);
        let ctx = ab.context().clone();
        b.write(2, &ctx, v("c")).expect("write");
        a.merge(&b);
        assert_eq!(a.values(), vec![&b"c"[..]]);
    }

    // ---- reference model -------------------------------------------------------

    #[derive(Clone, Debug)]
    enum Op {
        /// Write at replica `at`; the context is the state read at replica `ctx_from`
        /// (None = blind).
        Write {
            at: usize,
            ctx_from: Option<usize>,
            delete: bool,
        },
        Sync {
            from: usize,
            to: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                0..3usize,
                proptest::option::of(0..3usize),
                proptest::bool::weighted(0.2)
            )
                .prop_map(|(at, ctx_from, delete)| Op::Write {
                    at,
                    ctx_from,
                    delete
                }),
            (0..3usize, 0..3usize).prop_map(|(from, to)| Op::Sync { from, to }),
        ]
    }

    /// The obvious model: each replica knows a set of write ids; a write is live iff it
    /// is known and no known write's context covered it.
    #[derive(Clone, Default)]
    struct Model {
        seen: Vec<BTreeSet<u32>>,
    }

    fn live(seen: &BTreeSet<u32>, covered_by: &BTreeMap<u32, BTreeSet<u32>>) -> BTreeSet<u32> {
        seen.iter()
            .copied()
            .filter(|w| !seen.iter().any(|o| covered_by[o].contains(w)))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn matches_the_reference_model(ops in proptest::collection::vec(op(), 1..40)) {
            let mut regs = vec![Register::new(); 3];
            let mut model = Model { seen: vec![BTreeSet::new(); 3] };
            let mut covered_by: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
            let mut deleted: BTreeSet<u32> = BTreeSet::new();
            let mut next = 0u32;
            for op in ops {
                match op {
                    Op::Write { at, ctx_from, delete } => {
                        let (ctx, covered) = match ctx_from {
                            Some(r) => (regs[r].context().clone(), model.seen[r].clone()),
                            None => (VClock::new(), BTreeSet::new()),
                        };
                        let id = next;
                        next += 1;
                        let value = if delete { None } else { Some(id.to_be_bytes().to_vec()) };
                        if delete { deleted.insert(id); }
                        regs[at].write(at as Actor, &ctx, value).expect("valid context");
                        covered_by.insert(id, covered.clone());
                        model.seen[at].extend(covered);
                        model.seen[at].insert(id);
                    }
                    Op::Sync { from, to } => {
                        let src = regs[from].clone();
                        regs[to].merge(&src);
                        let s = model.seen[from].clone();
                        model.seen[to].extend(s);
                    }
                }
                for (r, reg) in regs.iter().enumerate() {
                    reg.validate().expect("invariants hold");
                    let expect: BTreeSet<u32> = live(&model.seen[r], &covered_by)
                        .into_iter().filter(|w| !deleted.contains(w)).collect();
                    let got: BTreeSet<u32> = reg.values().iter()
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])).collect();
                    prop_assert_eq!(&got, &expect, "replica {}", r);
                    let tombs = live(&model.seen[r], &covered_by).into_iter().filter(|w| deleted.contains(w)).count();
                    prop_assert_eq!(reg.siblings().len(), expect.len() + tombs);
                }
            }
        }
    }
}
