//! Placement of keys on the ring of `Q` fixed partitions (DESIGN.md §4).
//!
//! A key's partition is the top `log2(Q)` bits of `blake3(key)`. Which node owns which
//! partition is [`claim`]ed from the member set alone, so every node that knows the
//! same members computes the same [`Ring`], named by its epoch.

pub mod claim;

use std::collections::BTreeSet;

pub use claim::Member;

/// Default number of partitions.
pub const DEFAULT_RING_SIZE: u32 = 256;
/// Largest ring allowed (keeps partition numbers in 16 bits of the hash).
pub const MAX_RING_SIZE: u32 = 1 << 16;
const _: () = assert!(DEFAULT_RING_SIZE.is_power_of_two() && DEFAULT_RING_SIZE <= MAX_RING_SIZE);

/// A ring size that is not a power of two in `1..=MAX_RING_SIZE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ring size {size} must be a power of two between 1 and {MAX_RING_SIZE}")]
pub struct BadRingSize {
    /// The size refused.
    pub size: u32,
}

/// Checks a ring size.
///
/// # Errors
/// [`BadRingSize`] if it is not a power of two up to [`MAX_RING_SIZE`].
pub fn check_ring_size(size: u32) -> Result<u32, BadRingSize> {
    if size.is_power_of_two() && size <= MAX_RING_SIZE {
        Ok(size)
    } else {
        Err(BadRingSize { size })
    }
}

/// Why a ring cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// No members.
    #[error("a ring needs at least one member")]
    NoMembers,
    /// Two members share an id.
    #[error("member id {id:?} appears twice")]
    DuplicateMember {
        /// The repeated id.
        id: String,
    },
    /// Bad ring size.
    #[error(transparent)]
    BadSize(#[from] BadRingSize),
}

/// Partition ownership for one member set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    ring_size: u32,
    n: usize,
    members: Vec<Member>,
    owners: Vec<usize>,
    epoch: [u8; 32],
}

impl Ring {
    /// Builds the ring of `members` (any order) with `ring_size` partitions, spacing
    /// owners for `n` replicas.
    ///
    /// # Errors
    /// [`RingError`] for no members, duplicate ids or a bad size.
    pub fn build(members: &[Member], ring_size: u32, n: usize) -> Result<Ring, RingError> {
        check_ring_size(ring_size)?;
        let mut sorted = members.to_vec();
        sorted.sort();
        if sorted.is_empty() {
            return Err(RingError::NoMembers);
        }
        if let Some(w) = sorted.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(RingError::DuplicateMember {
                id: w[0].id.clone(),
            });
        }
        let mut h = blake3::Hasher::new();
        h.update(b"ringkv ring v1");
        h.update(&ring_size.to_be_bytes());
        h.update(&(n as u64).to_be_bytes());
        for m in &sorted {
            for part in [&m.id, &m.zone] {
                h.update(&(part.len() as u64).to_be_bytes());
                h.update(part.as_bytes());
            }
        }
        let owners = claim::claim(&sorted, ring_size, n);
        Ok(Ring {
            ring_size,
            n,
            members: sorted,
            owners,
            epoch: *h.finalize().as_bytes(),
        })
    }

    /// Digest of the member set, size and `n`: equal epochs mean equal rings.
    pub fn epoch(&self) -> [u8; 32] {
        self.epoch
    }

    /// Number of partitions.
    pub fn ring_size(&self) -> u32 {
        self.ring_size
    }

    /// Members, sorted by id.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The owner of a partition.
    ///
    /// # Panics
    /// If `partition` is not below the ring size.
    pub fn owner(&self, partition: u32) -> &Member {
        &self.members[self.owners[partition as usize]]
    }

    /// Partitions owned per member, in member order.
    pub fn counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.members.len()];
        for &o in &self.owners {
            c[o] += 1;
        }
        c
    }

    /// The primaries of the keys in `partition`: walking clockwise from it, the first
    /// `n` distinct owners, taking an owner only if its zone is not used yet while
    /// unused zones remain (so replicas spread over zones whatever the layout), then
    /// any distinct owner. Fewer than `n` if the cluster is smaller.
    pub fn preference_list(&self, partition: u32, n: usize) -> Vec<&Member> {
        let q = self.ring_size as usize;
        let zones: BTreeSet<&str> = self.members.iter().map(|m| m.zone.as_str()).collect();
        let mut picked: Vec<usize> = Vec::with_capacity(n);
        let mut used_zones: BTreeSet<&str> = BTreeSet::new();
        // First walk: new zones only, while some zone is unused.
        for i in 0..q {
            if picked.len() == n || used_zones.len() == zones.len() {
                break;
            }
            let o = self.owners[(partition as usize + i) % q];
            let zone = self.members[o].zone.as_str();
            if !picked.contains(&o) && !used_zones.contains(zone) {
                picked.push(o);
                used_zones.insert(zone);
            }
        }
        // Second walk: any distinct owner, in ring order.
        for i in 0..q {
            if picked.len() == n {
                break;
            }
            let o = self.owners[(partition as usize + i) % q];
            if !picked.contains(&o) {
                picked.push(o);
            }
        }
        picked.into_iter().map(|o| &self.members[o]).collect()
    }

    /// Window violations for the `n` this ring was built with (0 = perfectly spaced).
    pub fn violations(&self) -> usize {
        claim::violations(&self.owners, &self.members, self.n.min(self.members.len()))
    }

    /// How many partitions change owner between two rings of the same size.
    pub fn moved_from(&self, other: &Ring) -> usize {
        (0..self.ring_size)
            .filter(|&p| self.owner(p).id != other.owner(p).id)
            .count()
    }
}

/// The partition of `key` on a ring of `ring_size` partitions (a power of two).
pub fn partition_of(key: &[u8], ring_size: u32) -> u32 {
    debug_assert!(ring_size.is_power_of_two());
    let hash = blake3::hash(key);
    let b = hash.as_bytes();
    let top = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let bits = ring_size.trailing_zeros();
    if bits == 0 { 0 } else { top >> (32 - bits) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_in_range_and_roughly_even() {
        let mut counts = vec![0u32; 256];
        for i in 0u32..25_600 {
            let p = partition_of(&i.to_be_bytes(), 256);
            counts[p as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 50 && c < 160), "{counts:?}");
        assert_eq!(partition_of(b"x", 1), 0);
    }

    use proptest::prelude::*;

    fn members(ids: &[usize], zones: usize) -> Vec<Member> {
        ids.iter()
            .map(|i| Member {
                id: format!("node-{i:03}"),
                zone: if zones == 0 {
                    String::new()
                } else {
                    format!("z{}", i % zones)
                },
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Balanced within one partition; N distinct owners in every window of N
        /// (where that is possible); preference lists always distinct.
        #[test]
        fn balanced_and_spaced(s in 1usize..24, q_bits in 4u32..9, n in 1usize..5) {
            let q = 1u32 << q_bits;
            prop_assume!(s <= q as usize);
            let m = members(&(0..s).collect::<Vec<_>>(), 0);
            let ring = Ring::build(&m, q, n).expect("ring");
            let c = ring.counts();
            prop_assert!(c.iter().max().expect("members") - c.iter().min().expect("members") <= 1, "{:?}", c);
            let w = n.min(s);
            // A balanced assignment obeying the rule needs room: more members than the
            // window, each owning at least 2w partitions; or an exact round robin.
            if (s > w && (q as usize) / s >= 2 * w) || (s == w && (q as usize).is_multiple_of(s)) {
                prop_assert_eq!(ring.violations(), 0, "s={} q={} n={}", s, q, n);
            }
            for p in 0..q {
                let pl = ring.preference_list(p, n);
                prop_assert_eq!(pl.len(), w);
                let ids: std::collections::BTreeSet<_> = pl.iter().map(|m| &m.id).collect();
                prop_assert_eq!(ids.len(), w);
            }
        }

        /// The same for arbitrary ids (the assignment follows their hashes).
        #[test]
        fn balanced_and_spaced_for_any_ids(
            ids in proptest::collection::btree_set("[a-z0-9-]{1,12}", 1..24),
            n in 1usize..5,
        ) {
            let m: Vec<Member> = ids
                .iter()
                .map(|id| Member { id: id.clone(), zone: String::new() })
                .collect();
            let s = m.len();
            let ring = Ring::build(&m, 256, n).expect("ring");
            let c = ring.counts();
            prop_assert!(c.iter().max().expect("members") - c.iter().min().expect("members") <= 1, "{:?}", c);
            let w = n.min(s);
            if (s > w && 256 / s >= 2 * w) || (s == w && 256 % s == 0) {
                prop_assert_eq!(ring.violations(), 0, "s={} n={}", s, n);
            }
        }

        /// With as many equally sized zones as replicas, every preference list spans
        /// distinct zones.
        #[test]
        fn zones_spread_replicas(per_zone in 2usize..6, zones in 2usize..4) {
            let n = zones;
            let m = members(&(0..per_zone * zones).collect::<Vec<_>>(), zones);
            let ring = Ring::build(&m, 256, n).expect("ring");
            for p in 0..256 {
                let z: std::collections::BTreeSet<_> = ring.preference_list(p, n).iter().map(|m| m.zone.clone()).collect();
                prop_assert_eq!(z.len(), n, "partition {}", p);
            }
        }

        /// Input order does not matter.
        #[test]
        fn pure_function_of_the_member_set(s in 1usize..12, seed in any::<u64>()) {
            let mut m = members(&(0..s).collect::<Vec<_>>(), 2);
            let a = Ring::build(&m, 64, 3).expect("ring");
            let k = (seed as usize) % s;
            m.rotate_left(k);
            m.reverse();
            let b = Ring::build(&m, 64, 3).expect("ring");
            prop_assert_eq!(a.epoch(), b.epoch());
            prop_assert_eq!(a, b);
        }
    }

    /// Adding one node to S moves close to the ideal Q/(S+1) partitions; prints the
    /// ratio for S = 3 through 32 (recorded in BENCHMARKS.md).
    #[test]
    fn adding_a_node_moves_close_to_the_ideal() {
        let q = 256u32;
        // (sum of ratios, cases, worst) over S = 3..=15 and over S = 3..=32.
        let mut short = (0.0, 0.0, 0.0f64);
        let mut long = (0.0, 0.0, 0.0f64);
        for s in 3..33usize {
            let before = Ring::build(&members(&(0..s).collect::<Vec<_>>(), 0), q, 3).expect("ring");
            let after = Ring::build(&members(&(0..=s).collect::<Vec<_>>(), 0), q, 3).expect("ring");
            let moved = after.moved_from(&before) as f64;
            let ideal = f64::from(q) / (s as f64 + 1.0);
            let ratio = moved / ideal;
            println!(
                "ring move: S={s} -> {} Q={q}: moved {moved} partitions, ideal {ideal:.1}, ratio {ratio:.2}",
                s + 1
            );
            for (range, acc) in [(3..16, &mut short), (3..33, &mut long)] {
                if range.contains(&s) {
                    acc.0 += ratio;
                    acc.1 += 1.0;
                    acc.2 = acc.2.max(ratio);
                }
            }
        }
        let (mean_short, mean_long) = (short.0 / short.1, long.0 / long.1);
        println!(
            "ring move ratio: S=3..15 mean {mean_short:.2}, worst {:.2}; S=3..32 mean {mean_long:.2}, worst {:.2}",
            short.2, long.2
        );
        // Measured (greedy matching): S=3..15 mean 1.76, worst 2.98; S=3..32 mean 2.01,
        // worst 3.27 (S=30 -> 31). Before (walk, then balance): 1.98 and 2.49, worst
        // 5.16. S=3 -> 4 stays high because S = N = 3 cannot be spaced on 256
        // partitions; the large-S rows because the ideal there is under 10 partitions
        // while keeping loads within one moves about √Q more. These bounds catch
        // regressions; the goal, 1.3 over S=3..32, is not reached.
        assert!(
            mean_short < 1.9 && short.2 < 3.5,
            "S=3..15: adding a node moved {mean_short:.2}x the ideal on average, {:.2}x at worst",
            short.2
        );
        assert!(
            mean_long < 2.15 && long.2 < 3.6,
            "S=3..32: adding a node moved {mean_long:.2}x the ideal on average, {:.2}x at worst",
            long.2
        );
    }

    #[test]
    fn bad_member_sets_are_refused() {
        assert_eq!(Ring::build(&[], 64, 3), Err(RingError::NoMembers));
        let dup = vec![
            Member {
                id: "a".into(),
                zone: String::new()
            };
            2
        ];
        assert!(matches!(
            Ring::build(&dup, 64, 3),
            Err(RingError::DuplicateMember { .. })
        ));
        assert!(Ring::build(&members(&[1], 0), 100, 3).is_err());
    }

    #[test]
    fn ring_sizes_are_checked() {
        assert!(check_ring_size(256).is_ok());
        assert!(check_ring_size(0).is_err());
        assert!(check_ring_size(100).is_err());
        assert!(check_ring_size(1 << 17).is_err());
    }
}
