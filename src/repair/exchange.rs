//! One anti-entropy exchange of a partition between this replica and a peer, as a
//! state machine without I/O (DESIGN.md §7, STYLE.md).
//!
//! Both replicas keep the same fixed hash tree per partition ([`FANOUT`]-way,
//! [`DEPTH`] levels, XOR-combined digests). The exchange compares roots, then walks
//! down level by level only where the two sides differ, asking for whole levels of
//! differing nodes at once (one round trip per level), and ends with the keys whose
//! digests differ or exist on one side only. The shell fetches what the machine
//! asks for from both sides and moves the objects.

use std::collections::BTreeMap;

use ringkv_storage::{EMPTY, Hash, LEAVES};

/// Children per node.
pub const FANOUT: usize = 16;
/// Levels below the root.
pub const DEPTH: u8 = 3;
const _: () = assert!(LEAVES == FANOUT * FANOUT * FANOUT);

/// Most nodes or segments asked for in one request.
pub const MAX_BATCH: usize = 256;

/// What the shell must fetch next, from both replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    /// Children of these interior nodes (`level`, `index`), 16 hashes each.
    Children(Vec<(u8, u32)>),
    /// `(key, digest)` lists of these segments (leaves).
    Segments(Vec<u16>),
    /// Nothing more: take the differing keys.
    Done,
}

/// Counters of one exchange.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExchangeStats {
    /// Requests (each one round trip to the peer) after the root comparison.
    pub requests: u64,
    /// Tree hashes received from the peer (root included).
    pub hashes: u64,
    /// Key digests received from the peer.
    pub key_digests: u64,
}

/// Why fed data was refused (a peer sending nonsense, or a shell bug).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// A children list that is not 16 hashes per node asked for.
    #[error("expected {expected} child hashes, got {got}")]
    BadChildren {
        /// Expected count.
        expected: usize,
        /// Received count.
        got: usize,
    },
    /// Data nobody asked for.
    #[error("unexpected reply")]
    Unexpected,
}

/// One partition's exchange.
#[derive(Debug)]
pub struct Exchange {
    partition: u32,
    /// Level of the nodes in `current`.
    level: u8,
    /// Differing nodes of `level` not yet asked about.
    current: Vec<u32>,
    /// Differing nodes of `level + 1` found so far.
    found: Vec<u32>,
    asked: Option<Need>,
    keys: Vec<Vec<u8>>,
    stats: ExchangeStats,
}

impl Exchange {
    /// Starts from both roots; equal roots finish at once.
    pub fn new(partition: u32, local_root: Hash, remote_root: Hash) -> Exchange {
        Exchange {
            partition,
            level: 0,
            current: if local_root == remote_root {
                Vec::new()
            } else {
                vec![0]
            },
            found: Vec::new(),
            asked: None,
            keys: Vec::new(),
            stats: ExchangeStats {
                requests: 0,
                hashes: 1,
                key_digests: 0,
            },
        }
    }

    /// The partition.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The level reached.
    pub fn level(&self) -> u8 {
        self.level
    }

    /// Counters so far.
    pub fn stats(&self) -> ExchangeStats {
        self.stats
    }

    /// What to fetch next. Call again after feeding the answer.
    pub fn next_need(&mut self) -> Need {
        if let Some(asked) = &self.asked {
            return asked.clone();
        }
        if self.current.is_empty() {
            if self.found.is_empty() {
                return Need::Done;
            }
            debug_assert!(self.level < DEPTH);
            self.level += 1;
            self.current = std::mem::take(&mut self.found);
        }
        let take = self.current.len().min(MAX_BATCH);
        let batch: Vec<u32> = self.current.drain(..take).collect();
        self.stats.requests += 1;
        let need = if self.level < DEPTH {
            Need::Children(batch.into_iter().map(|i| (self.level, i)).collect())
        } else {
            Need::Segments(batch.into_iter().map(|i| i as u16).collect())
        };
        self.asked = Some(need.clone());
        need
    }

    /// Feeds the children of the nodes last asked for: `local[i]` and `remote[i]` are
    /// the 16 child hashes of the i-th node, on each side.
    ///
    /// # Errors
    /// [`ExchangeError`] if the shapes do not match the request.
    pub fn children(
        &mut self,
        local: &[Vec<Hash>],
        remote: &[Vec<Hash>],
    ) -> Result<(), ExchangeError> {
        let Some(Need::Children(nodes)) = self.asked.take() else {
            return Err(ExchangeError::Unexpected);
        };
        if local.len() != nodes.len() || remote.len() != nodes.len() {
            return Err(ExchangeError::BadChildren {
                expected: nodes.len(),
                got: remote.len(),
            });
        }
        for (((_, index), l), r) in nodes.iter().zip(local).zip(remote) {
            if l.len() != FANOUT || r.len() != FANOUT {
                return Err(ExchangeError::BadChildren {
                    expected: FANOUT,
                    got: r.len(),
                });
            }
            self.stats.hashes += FANOUT as u64;
            for (c, (lh, rh)) in l.iter().zip(r).enumerate() {
                if lh != rh {
                    self.found.push(index * FANOUT as u32 + c as u32);
                }
            }
        }
        Ok(())
    }

    /// Feeds the `(key, digest)` lists of the segments last asked for, sorted by key.
    ///
    /// # Errors
    /// [`ExchangeError`] if the shapes do not match the request.
    pub fn segments(
        &mut self,
        local: &[Vec<(Vec<u8>, Hash)>],
        remote: &[Vec<(Vec<u8>, Hash)>],
    ) -> Result<(), ExchangeError> {
        let Some(Need::Segments(segs)) = self.asked.take() else {
            return Err(ExchangeError::Unexpected);
        };
        if local.len() != segs.len() || remote.len() != segs.len() {
            return Err(ExchangeError::BadChildren {
                expected: segs.len(),
                got: remote.len(),
            });
        }
        for (l, r) in local.iter().zip(remote) {
            self.stats.key_digests += r.len() as u64;
            let mut both: BTreeMap<&[u8], (Hash, Hash)> = BTreeMap::new();
            for (k, d) in l {
                both.entry(k).or_insert((EMPTY, EMPTY)).0 = *d;
            }
            for (k, d) in r {
                both.entry(k).or_insert((EMPTY, EMPTY)).1 = *d;
            }
            self.keys.extend(
                both.into_iter()
                    .filter(|(_, (a, b))| a != b)
                    .map(|(k, _)| k.to_vec()),
            );
        }
        Ok(())
    }

    /// The keys found to differ (call when [`Exchange::next_need`] says [`Need::Done`]).
    pub fn take_keys(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap as Map;

    /// A reference replica: keys and digests; the tree computed the obvious way.
    #[derive(Clone, Default)]
    struct Side(Map<Vec<u8>, Hash>);

    fn seg(key: &[u8]) -> usize {
        ringkv_storage::segment_of(key) as usize
    }

    impl Side {
        fn node(&self, level: u8, index: u32) -> Hash {
            let span = FANOUT.pow(u32::from(DEPTH - level));
            let mut h = EMPTY;
            for (k, d) in &self.0 {
                if seg(k) / span == index as usize {
                    for (a, b) in h.iter_mut().zip(d) {
                        *a ^= b;
                    }
                }
            }
            h
        }
        fn children(&self, level: u8, index: u32) -> Vec<Hash> {
            (0..FANOUT as u32)
                .map(|c| self.node(level + 1, index * FANOUT as u32 + c))
                .collect()
        }
        fn segment(&self, s: u16) -> Vec<(Vec<u8>, Hash)> {
            self.0
                .iter()
                .filter(|(k, _)| seg(k) == s as usize)
                .map(|(k, d)| (k.clone(), *d))
                .collect()
        }
    }

    fn run(a: &Side, b: &Side) -> (Vec<Vec<u8>>, ExchangeStats) {
        let mut x = Exchange::new(7, a.node(0, 0), b.node(0, 0));
        for _ in 0..100 {
            match x.next_need() {
                Need::Done => return (x.take_keys(), x.stats()),
                Need::Children(nodes) => {
                    let l: Vec<_> = nodes.iter().map(|&(lv, i)| a.children(lv, i)).collect();
                    let r: Vec<_> = nodes.iter().map(|&(lv, i)| b.children(lv, i)).collect();
                    x.children(&l, &r).expect("children");
                }
                Need::Segments(segs) => {
                    let l: Vec<_> = segs.iter().map(|&s| a.segment(s)).collect();
                    let r: Vec<_> = segs.iter().map(|&s| b.segment(s)).collect();
                    x.segments(&l, &r).expect("segments");
                }
            }
        }
        panic!("exchange did not finish");
    }

    fn digest(i: u32, v: u8) -> Hash {
        *blake3::hash(&[&i.to_be_bytes()[..], &[v]].concat()).as_bytes()
    }

    proptest::proptest! {
        #[test]
        fn finds_exactly_the_differing_keys(
            n in 0u32..400,
            changes in proptest::collection::vec((0u32..500, 0u8..3), 0..40),
        ) {
            let mut a = Side::default();
            for i in 0..n {
                a.0.insert(i.to_be_bytes().to_vec(), digest(i, 0));
            }
            let mut b = a.clone();
            for (i, what) in changes {
                let k = i.to_be_bytes().to_vec();
                match what {
                    0 => { b.0.remove(&k); }
                    1 => { b.0.insert(k, digest(i, 1)); }
                    _ => { a.0.insert(k, digest(i, 2)); }
                }
            }
            let expected: Vec<Vec<u8>> = a.0.keys().chain(b.0.keys())
                .filter(|k| a.0.get(*k) != b.0.get(*k))
                .cloned()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let (mut got, stats) = run(&a, &b);
            got.sort();
            proptest::prop_assert_eq!(&got, &expected);
            if expected.is_empty() {
                proptest::prop_assert_eq!(stats.requests, 0);
                proptest::prop_assert_eq!(stats.hashes, 1);
            }
        }
    }

    #[test]
    fn one_differing_key_costs_at_most_49_hashes_and_four_round_trips() {
        let mut a = Side::default();
        for i in 0..2000u32 {
            a.0.insert(i.to_be_bytes().to_vec(), digest(i, 0));
        }
        let mut b = a.clone();
        b.0.insert(5u32.to_be_bytes().to_vec(), digest(5, 9));
        let (keys, stats) = run(&a, &b);
        assert_eq!(keys, vec![5u32.to_be_bytes().to_vec()]);
        assert_eq!(stats.hashes, 1 + 16 * 3);
        assert_eq!(stats.requests, 4);
    }

    #[test]
    fn nonsense_replies_are_refused() {
        let mut x = Exchange::new(0, [1; 32], [2; 32]);
        assert_eq!(x.segments(&[], &[]), Err(ExchangeError::Unexpected));
        assert!(matches!(x.next_need(), Need::Children(_)));
        assert!(x.children(&[vec![EMPTY; 3]], &[vec![EMPTY; 16]]).is_err());
    }
}
