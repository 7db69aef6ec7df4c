//! Ownership of partitions: a pure function of the member set (DESIGN.md §4).
//!
//! Deterministic, in three steps:
//! 1. **Walk with rendezvous preferences**: partitions are assigned in order; each goes
//!    to the member with the highest `blake3(id ‖ p)` score that fits the window rule
//!    (no member twice, and no zone beyond its fair share, among any `w = min(N, S)`
//!    consecutive partitions, counting across the wrap). A member's preference for a
//!    partition does not depend on the other members, so adding one changes mostly
//!    the partitions the newcomer wins.
//! 2. **Balance**: members below `⌊Q/S⌋` take, and members above `⌈Q/S⌉` give, one
//!    partition at a time, choosing the move that breaks the fewest windows and then
//!    the receiver's highest score.
//! 3. **Local repair**: every window still breaking the rule has its neighbourhood
//!    re-ordered (a permutation, so counts stay balanced) by a bounded search.
//!
//! Known limit: some member sets have no balanced assignment obeying the rule (with
//! `S == N` and `Q` not a multiple of `S`, none exists at all); then windows may
//! repeat a member, and preference lists skip repeats, so every key still gets `N`
//! distinct replicas.

use std::collections::BTreeSet;

/// One member as the ring sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    /// Node id (unique in the cluster).
    pub id: String,
    /// Failure zone (rack, availability zone); empty when not given.
    pub zone: String,
}

fn score(id: &str, partition: u32) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&(id.len() as u64).to_be_bytes());
    h.update(id.as_bytes());
    h.update(&partition.to_be_bytes());
    let b = h.finalize();
    u64::from_be_bytes(b.as_bytes()[..8].try_into().expect("8 bytes"))
}

const FREE: usize = usize::MAX;

/// The window rule over one assignment (entries may be [`FREE`]).
struct Rule {
    w: usize,
    zone_of: Vec<usize>,
    zones: usize,
}

impl Rule {
    fn new(members: &[Member], w: usize) -> Rule {
        let names: BTreeSet<&str> = members.iter().map(|m| m.zone.as_str()).collect();
        let zone_of = members
            .iter()
            .map(|m| names.iter().position(|z| *z == m.zone).expect("listed"))
            .collect();
        Rule {
            w,
            zone_of,
            zones: names.len().max(1),
        }
    }

    /// Breaches in the window starting at `start` (free slots ignored).
    fn window(&self, owner: &[usize], start: usize) -> usize {
        let q = owner.len();
        let zone_cap = self.w.div_ceil(self.zones);
        let mut seen: Vec<usize> = Vec::with_capacity(self.w);
        let mut per_zone = vec![0usize; self.zones];
        let mut cost = 0;
        for i in 0..self.w {
            let o = owner[(start + i) % q];
            if o == FREE {
                continue;
            }
            if seen.contains(&o) {
                cost += 1;
            }
            seen.push(o);
            let z = self.zone_of[o];
            per_zone[z] += 1;
            if per_zone[z] > zone_cap {
                cost += 1;
            }
        }
        cost
    }

    /// Breaches in every window containing `p`.
    fn around(&self, owner: &[usize], p: usize) -> usize {
        let q = owner.len();
        (0..self.w)
            .map(|back| self.window(owner, (p + q - back) % q))
            .sum()
    }

    fn total(&self, owner: &[usize]) -> usize {
        (0..owner.len()).map(|s| self.window(owner, s)).sum()
    }
}

/// Computes the owner (index into `members`, which must be sorted by id and
/// non-empty) of every partition.
///
/// # Panics
/// If `members` is empty or unsorted (callers check both).
pub fn claim(members: &[Member], ring_size: u32, n: usize) -> Vec<usize> {
    assert!(!members.is_empty(), "a ring needs members");
    assert!(
        members.windows(2).all(|w| w[0].id < w[1].id),
        "members sorted and unique"
    );
    let q = ring_size as usize;
    let s = members.len();
    let rule = Rule::new(members, n.min(s).max(1));
    let mut owner = vec![FREE; q];
    let mut ranked: Vec<usize> = (0..s).collect();
    for p in 0..q {
        ranked.sort_by_key(|&i| (std::cmp::Reverse(score(&members[i].id, p as u32)), i));
        let mut best = (usize::MAX, ranked[0]);
        for &i in &ranked {
            owner[p] = i;
            let breaches = rule.around(&owner, p);
            if breaches < best.0 {
                best = (breaches, i);
                if breaches == 0 {
                    break;
                }
            }
        }
        owner[p] = best.1;
    }
    balance(&mut owner, members, &rule);
    repair(&mut owner, &rule);
    owner
}

fn balance(owner: &mut [usize], members: &[Member], rule: &Rule) {
    let q = owner.len();
    let s = members.len();
    let (lo, hi) = (q / s, q.div_ceil(s));
    let mut count = vec![0usize; s];
    for &o in owner.iter() {
        count[o] += 1;
    }
    let sc = |i: usize, p: usize| i128::from(score(&members[i].id, p as u32));
    // Every move brings one member closer to [lo, hi] without pushing another out.
    // Moves prefer partitions the giver holds most weakly relative to the taker, so
    // adding a member (which only lowers counts) mostly repeats a subset of the moves.
    for _ in 0..q {
        let (takers, min_giver): (Vec<usize>, usize) =
            if let Some(t) = (0..s).find(|&i| count[i] < lo) {
                (vec![t], lo + 1)
            } else if (0..s).any(|i| count[i] > hi) {
                ((0..s).filter(|&i| count[i] < hi).collect(), hi + 1)
            } else {
                return;
            };
        let mut best: Option<(usize, std::cmp::Reverse<i128>, usize, usize)> = None;
        for p in 0..q {
            let giver = owner[p];
            if count[giver] < min_giver {
                continue;
            }
            for &taker in &takers {
                if taker == giver {
                    continue;
                }
                let before = rule.around(owner, p);
                owner[p] = taker;
                let after = rule.around(owner, p);
                owner[p] = giver;
                let key = (
                    after.saturating_sub(before),
                    std::cmp::Reverse(sc(taker, p) - sc(giver, p)),
                    p,
                    taker,
                );
                if best.is_none_or(|b| key < b) {
                    best = Some(key);
                }
            }
        }
        let Some((_, _, p, taker)) = best else { return };
        count[owner[p]] -= 1;
        count[taker] += 1;
        owner[p] = taker;
    }
}

/// Re-orders the neighbourhood of each breached window (bounded search).
fn repair(owner: &mut [usize], rule: &Rule) {
    let q = owner.len();
    let w = rule.w;
    if w <= 1 || q < 3 * w {
        return;
    }
    for _pass in 0..4 {
        let Some(start) = (0..q).find(|&s| rule.window(owner, s) > 0) else {
            return;
        };
        let mut fixed_any = false;
        for span in [3 * w, 5 * w, 8 * w] {
            let span = span.min(q);
            let first = (start + q - (span - w) / 2) % q;
            let slots: Vec<usize> = (0..span).map(|i| (first + i) % q).collect();
            let before = rule.total(owner);
            let pool: Vec<usize> = slots.iter().map(|&p| owner[p]).collect();
            let mut budget = 20_000usize;
            let mut trial = owner.to_vec();
            for &p in &slots {
                trial[p] = FREE;
            }
            let mut used = vec![false; pool.len()];
            if place(&mut trial, &slots, 0, &pool, &mut used, rule, &mut budget)
                && rule.total(&trial) < before
            {
                owner.copy_from_slice(&trial);
                fixed_any = true;
                break;
            }
        }
        if !fixed_any {
            return;
        }
    }
}

/// Depth-first placement of `pool` into `slots` with no breach; false when the budget
/// runs out or no order works.
fn place(
    trial: &mut [usize],
    slots: &[usize],
    k: usize,
    pool: &[usize],
    used: &mut [bool],
    rule: &Rule,
    budget: &mut usize,
) -> bool {
    if k == slots.len() {
        return true;
    }
    let p = slots[k];
    let mut tried: Vec<usize> = Vec::new();
    for j in 0..pool.len() {
        if used[j] || tried.contains(&pool[j]) {
            continue;
        }
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        tried.push(pool[j]);
        trial[p] = pool[j];
        if rule.around(trial, p) == 0 {
            used[j] = true;
            if place(trial, slots, k + 1, pool, used, rule, budget) {
                return true;
            }
            used[j] = false;
        }
        trial[p] = FREE;
    }
    false
}

/// Total window breaches of an assignment (0 = every window of `w` consecutive
/// partitions has distinct owners and fairly spread zones).
pub fn violations(owner: &[usize], members: &[Member], w: usize) -> usize {
    Rule::new(members, w).total(owner)
}
