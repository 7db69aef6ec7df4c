//! Ownership of partitions: a pure function of the member set (DESIGN.md §4).
//!
//! Every (member, partition) pair has a rendezvous score `blake3(id ‖ p)`, which does
//! not depend on the other members. The assignment is a greedy stable matching on
//! those scores: pairs are taken from the highest score down, and a pair is kept when
//! the partition is still free, the member is below its quota, and the member fits the
//! window rule there (no member twice, and no zone beyond its fair share, among any
//! `w = min(N, S)` consecutive partitions, counting across the wrap). Quotas keep the
//! loads balanced: every member gets `⌊Q/S⌋` or `⌈Q/S⌉`, the first `Q mod S` members
//! to reach `⌈Q/S⌉` filling the spare places. When a member joins it wins its
//! strongest pairs and the rest of the matching mostly stands, so fewer partitions move
//! than when loads were balanced after the fact (BENCHMARKS.md, "Ring"). Partitions
//! left over (every member with room breaks a window there) go to the member breaking
//! the fewest windows; then a bounded search re-orders the neighbourhood of each
//! window still breaking the rule, and owners of nearby partitions are swapped where
//! that lowers the breaches (both permutations, so counts stay balanced).
//!
//! The greedy order can paint itself into a corner on tight member sets (few members,
//! zones of unequal size, `N` close to `S`). Whenever the matching breaks the rule, the
//! ring is also built the older way — a walk over the partitions giving each to the
//! best-scoring member that fits, then balancing, then the re-ordering search — and the
//! one with fewer breaches is kept (the matching on a tie), so no member set gets a
//! worse spread than that walk gives it.
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

    /// Breaches in every window containing `a` or `b` (each window counted once).
    fn around_both(&self, owner: &[usize], a: usize, b: usize) -> usize {
        let q = owner.len();
        let mut starts: Vec<usize> = (0..self.w)
            .flat_map(|back| [(a + q - back) % q, (b + q - back) % q])
            .collect();
        starts.sort_unstable();
        starts.dedup();
        starts.into_iter().map(|s| self.window(owner, s)).sum()
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
    let rule = Rule::new(members, n.min(members.len()).max(1));
    let matched = matching(members, q, &rule);
    let breaches = rule.total(&matched);
    if breaches == 0 {
        return matched;
    }
    let walked = walk(members, q, &rule);
    if rule.total(&walked) < breaches {
        walked
    } else {
        matched
    }
}

/// Per-member quotas: `lo = ⌊Q/S⌋` each, and `Q mod S` members may reach `hi = lo + 1`.
struct Quota {
    lo: usize,
    hi: usize,
    spare: usize,
    count: Vec<usize>,
}

impl Quota {
    fn new(q: usize, s: usize) -> Quota {
        Quota {
            lo: q / s,
            hi: q.div_ceil(s),
            spare: q % s,
            count: vec![0; s],
        }
    }

    fn has_room(&self, i: usize) -> bool {
        let c = self.count[i];
        c < self.lo || (c < self.hi && self.spare > 0)
    }

    fn take(&mut self, i: usize) {
        debug_assert!(self.has_room(i));
        if self.count[i] == self.lo {
            self.spare -= 1;
        }
        self.count[i] += 1;
    }
}

/// Pairs of a member and one of `partitions` with a score in `floor..ceiling` (no
/// upper bound when `ceiling` is `None`), best first.
fn pairs_between(
    members: &[Member],
    partitions: &[usize],
    floor: u64,
    ceiling: Option<u64>,
) -> Vec<(u64, usize, usize)> {
    let mut pairs = Vec::new();
    for (i, m) in members.iter().enumerate() {
        for &p in partitions {
            let sc = score(&m.id, p as u32);
            if sc >= floor && ceiling.is_none_or(|c| sc < c) {
                pairs.push((sc, i, p));
            }
        }
    }
    pairs.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    pairs
}

/// The greedy stable matching described in the module comment, then repair.
fn matching(members: &[Member], q: usize, rule: &Rule) -> Vec<usize> {
    let s = members.len();
    let mut quota = Quota::new(q, s);
    let mut owner = vec![FREE; q];
    let mut free = q;
    // Pairs come in bands of descending score, each twice as wide as the last, so the
    // few needed are sorted rather than all S·Q of them (the first band holds about
    // eight pairs per partition).
    let step = (u64::MAX / q as u64).saturating_mul(8 * quota.hi as u64);
    let mut ceiling = None;
    for band in 1u64.. {
        let reach = step.saturating_mul(1 << (band - 1).min(63));
        let floor = u64::MAX.saturating_sub(reach);
        let unowned: Vec<usize> = (0..q).filter(|&p| owner[p] == FREE).collect();
        for (_, i, p) in pairs_between(members, &unowned, floor, ceiling) {
            if free == 0 {
                break;
            }
            if owner[p] != FREE || !quota.has_room(i) {
                continue;
            }
            owner[p] = i;
            if rule.around(&owner, p) == 0 {
                quota.take(i);
                free -= 1;
            } else {
                owner[p] = FREE;
            }
        }
        if free == 0 || floor == 0 {
            break;
        }
        ceiling = Some(floor);
    }
    for p in 0..q {
        if owner[p] == FREE {
            let i = least_breaching(&mut owner, p, members, &quota, rule);
            quota.take(i);
        }
    }
    assert!(
        quota.count.iter().all(|&c| c == quota.lo || c == quota.hi),
        "matching balanced"
    );
    repair(&mut owner, rule);
    swap_repair(&mut owner, rule);
    owner
}

/// How far apart two partitions swapped by [`swap_repair`] may be.
const SWAP_REACH: usize = 16;

/// Swaps the owners of a breached partition and of the nearest partition that lowers
/// the breaches (counts unchanged), in one pass over the ring.
fn swap_repair(owner: &mut [usize], rule: &Rule) {
    let q = owner.len();
    if rule.w <= 1 {
        return;
    }
    let mut start = 0;
    while start < q {
        if rule.window(owner, start) == 0 {
            start += 1;
        } else if let Some((a, b)) = swap_partner(owner, start, rule) {
            owner.swap(a, b);
            // The swap may have breached a window just behind; look again from there.
            start = start.saturating_sub(SWAP_REACH + rule.w);
        } else {
            start += 1;
        }
    }
}

/// The nearest swap of owners (at most [`SWAP_REACH`] apart) between a partition in
/// the window at `start` and another partition that lowers the breaches.
fn swap_partner(owner: &mut [usize], start: usize, rule: &Rule) -> Option<(usize, usize)> {
    let q = owner.len();
    for dist in 1..SWAP_REACH.min(q) {
        for back in 0..rule.w {
            let p = (start + back) % q;
            for other in [(p + dist) % q, (p + q - dist) % q] {
                if owner[other] == owner[p] {
                    continue;
                }
                let before = rule.around_both(owner, p, other);
                owner.swap(p, other);
                let after = rule.around_both(owner, p, other);
                owner.swap(p, other);
                if after < before {
                    return Some((p, other));
                }
            }
        }
    }
    None
}

/// Gives free partition `p` to the member with room that breaks the fewest windows
/// there (then the best score); returns it.
fn least_breaching(
    owner: &mut [usize],
    p: usize,
    members: &[Member],
    quota: &Quota,
    rule: &Rule,
) -> usize {
    let mut best: Option<(usize, std::cmp::Reverse<u64>, usize)> = None;
    for i in (0..members.len()).filter(|&i| quota.has_room(i)) {
        owner[p] = i;
        let key = (
            rule.around(owner, p),
            std::cmp::Reverse(score(&members[i].id, p as u32)),
            i,
        );
        if best.is_none_or(|b| key < b) {
            best = Some(key);
        }
    }
    let (_, _, i) = best.expect("a member has room while partitions are free");
    owner[p] = i;
    i
}

/// The older construction, kept for member sets where the matching breaks the rule:
/// each partition in order to the best-scoring member that fits, then balancing,
/// then repair.
fn walk(members: &[Member], q: usize, rule: &Rule) -> Vec<usize> {
    let s = members.len();
    let mut owner = vec![FREE; q];
    let mut ranked: Vec<usize> = (0..s).collect();
    for p in 0..q {
        ranked.sort_by_cached_key(|&i| (std::cmp::Reverse(score(&members[i].id, p as u32)), i));
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
    balance(&mut owner, members, rule);
    repair(&mut owner, rule);
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

/// Re-orders the neighbourhood of each breached window (bounded search), moving on
/// to the next breached window when one cannot be improved.
fn repair(owner: &mut [usize], rule: &Rule) {
    let q = owner.len();
    let w = rule.w;
    if w <= 1 || q < 3 * w {
        return;
    }
    let mut from = 0;
    for _attempt in 0..16 {
        let Some(start) = (from..q).find(|&s| rule.window(owner, s) > 0) else {
            return;
        };
        if !repair_at(owner, start, rule) {
            from = start + 1;
        }
    }
}

/// Tries spans of growing size around the breached window at `start`; true when one
/// re-ordering lowered the total breaches.
fn repair_at(owner: &mut [usize], start: usize, rule: &Rule) -> bool {
    let q = owner.len();
    let w = rule.w;
    let before = rule.total(owner);
    for span in [3 * w, 5 * w, 8 * w] {
        let span = span.min(q);
        let first = (start + q - (span - w) / 2) % q;
        let slots: Vec<usize> = (0..span).map(|i| (first + i) % q).collect();
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
            return true;
        }
    }
    false
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
