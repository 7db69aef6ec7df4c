//! Key choosers of the YCSB core workloads: uniform, zipfian (Gray et al., "Quickly
//! generating billion-record synthetic databases", SIGMOD 1994), scrambled zipfian
//! (popular keys spread over the key space instead of clustered at the low numbers),
//! and "latest" (the most recently inserted keys are the most popular).
//!
//! Every chooser draws from a caller-seeded RNG, so a run's key sequence is a
//! function of its seed.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::{Rng, RngExt};

/// The skew of the YCSB core workloads.
pub const ZIPFIAN_CONSTANT: f64 = 0.99;

/// Items of the space a scrambled zipfian draws from before hashing onto the
/// records: large, so that hashing spreads even the hottest few items evenly.
const SCRAMBLE_ITEMS: u64 = 10_000_000_000;

/// Terms of ζ summed exactly; the rest of the sum is integrated (midpoint rule),
/// which at this depth is exact to about 1e-12 relative.
const ZETA_EXACT_TERMS: u64 = 1_000_000;

/// ζ(n, θ) = Σ_{i=1..n} 1/i^θ.
pub fn zeta(n: u64, theta: f64) -> f64 {
    zeta_from(0, 0.0, n, theta)
}

/// ζ(n, θ) given ζ(`from`, θ) = `partial`; exact up to [`ZETA_EXACT_TERMS`] terms,
/// integrated beyond.
fn zeta_from(from: u64, partial: f64, n: u64, theta: f64) -> f64 {
    let mut sum = partial;
    let exact_to = n.min(from.max(ZETA_EXACT_TERMS));
    for i in (from + 1)..=exact_to {
        sum += 1.0 / (i as f64).powf(theta);
    }
    if n > exact_to {
        // ∫ x^-θ dx over [a + ½, n + ½] approximates Σ_{a+1..n} i^-θ.
        let a = exact_to as f64 + 0.5;
        let b = n as f64 + 0.5;
        let e = 1.0 - theta;
        sum += (b.powf(e) - a.powf(e)) / e;
    }
    sum
}

/// Zipfian over `0..n`: item 0 is the most popular, item i has weight 1/(i+1)^θ.
#[derive(Clone, Debug)]
pub struct Zipfian {
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
    half_pow_theta: f64,
}

impl Zipfian {
    /// A zipfian over `0..n` (`n` ≥ 1) with skew `theta` in (0, 1).
    ///
    /// # Panics
    /// If `n` is 0 or `theta` is outside (0, 1): callers validate both.
    pub fn new(n: u64, theta: f64) -> Zipfian {
        Self::with_zeta(n, theta, zeta(n, theta))
    }

    fn with_zeta(n: u64, theta: f64, zetan: f64) -> Zipfian {
        assert!(n >= 1, "a zipfian needs at least one item");
        assert!(theta > 0.0 && theta < 1.0, "theta must be in (0, 1)");
        let zeta2 = 1.0 + 0.5f64.powf(theta);
        let eta = (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
        Zipfian {
            n,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta,
            half_pow_theta: 0.5f64.powf(theta),
        }
    }

    /// Items drawn from.
    pub fn items(&self) -> u64 {
        self.n
    }

    /// Grows the item space to `n` (never shrinks), extending ζ incrementally.
    pub fn grow_to(&mut self, n: u64) {
        if n > self.n {
            let zetan = zeta_from(self.n, self.zetan, n, self.theta);
            *self = Self::with_zeta(n, self.theta, zetan);
        }
    }

    /// The item for a uniform `u` in [0, 1).
    pub fn sample_at(&self, u: f64) -> u64 {
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + self.half_pow_theta {
            return 1.min(self.n - 1);
        }
        let v = self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha);
        (v as u64).min(self.n - 1)
    }

    /// Draws an item.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        self.sample_at(rng.random::<f64>())
    }
}

/// FNV-1a over the eight little-endian bytes of `v`.
pub fn fnv1a64(v: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in v.to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Shared by the workers of a run that inserts: the keys whose insert was
/// acknowledged, as the highest number below which every key was (reads of "latest"
/// keys choose only among those, so they never ask for a key still being written).
#[derive(Debug)]
pub struct InsertCounter {
    next: AtomicU64,
    acked: Mutex<Acked>,
    /// Copy of `acked.below`, read without the lock.
    below: AtomicU64,
}

#[derive(Debug)]
struct Acked {
    below: u64,
    /// Acknowledged keys at or above `below` (at most one per insert in flight).
    ahead: BTreeSet<u64>,
}

impl InsertCounter {
    /// Keys `0..records` already exist.
    pub fn new(records: u64) -> InsertCounter {
        InsertCounter {
            next: AtomicU64::new(records),
            acked: Mutex::new(Acked {
                below: records,
                ahead: BTreeSet::new(),
            }),
            below: AtomicU64::new(records),
        }
    }

    /// The number of the next key to insert.
    pub fn claim(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Records that the insert of `key` finished (acknowledged or failed: a failed
    /// insert must not hold back every later one).
    pub fn finished(&self, key: u64) {
        let mut a = self.acked.lock().unwrap_or_else(|p| p.into_inner());
        if key < a.below {
            return;
        }
        a.ahead.insert(key);
        loop {
            let below = a.below;
            if !a.ahead.remove(&below) {
                break;
            }
            a.below += 1;
        }
        self.below.store(a.below, Ordering::Release);
    }

    /// Every key below this one was inserted.
    pub fn acknowledged(&self) -> u64 {
        self.below.load(Ordering::Acquire)
    }
}

/// How a run chooses the keys it reads and updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    /// Every record equally likely.
    Uniform,
    /// Zipfian (θ = 0.99) with popular keys scattered over the key space.
    Zipfian,
    /// Zipfian over recency: the newest inserted key is the most popular.
    Latest,
}

impl Distribution {
    /// Parses `uniform`, `zipfian` or `latest`.
    ///
    /// # Errors
    /// A message naming the choices.
    pub fn parse(s: &str) -> Result<Distribution, String> {
        match s.to_ascii_lowercase().as_str() {
            "uniform" => Ok(Distribution::Uniform),
            "zipfian" => Ok(Distribution::Zipfian),
            "latest" => Ok(Distribution::Latest),
            other => Err(format!(
                "unknown distribution {other:?} (choose uniform, zipfian or latest)"
            )),
        }
    }

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Distribution::Uniform => "uniform",
            Distribution::Zipfian => "zipfian",
            Distribution::Latest => "latest",
        }
    }
}

/// One worker's key chooser (cheap to clone; the zipfian constants are computed
/// once per run and cloned into every worker).
#[derive(Clone, Debug)]
pub enum KeyChooser {
    /// Uniform over `0..records`.
    Uniform {
        /// Records.
        records: u64,
    },
    /// Scrambled zipfian over `0..records`.
    Scrambled {
        /// Zipfian over the large scramble space.
        zipf: Zipfian,
        /// Records.
        records: u64,
    },
    /// Zipfian over recency of acknowledged inserts.
    Latest {
        /// Zipfian over the keys acknowledged so far (grown as inserts land).
        zipf: Zipfian,
    },
}

impl KeyChooser {
    /// A chooser of `distribution` over `records` loaded keys (`records` ≥ 1).
    pub fn new(distribution: Distribution, records: u64) -> KeyChooser {
        match distribution {
            Distribution::Uniform => KeyChooser::Uniform { records },
            Distribution::Zipfian => KeyChooser::Scrambled {
                zipf: Zipfian::new(SCRAMBLE_ITEMS, ZIPFIAN_CONSTANT),
                records,
            },
            Distribution::Latest => KeyChooser::Latest {
                zipf: Zipfian::new(records, ZIPFIAN_CONSTANT),
            },
        }
    }

    /// Draws a key number; `acknowledged` is how many keys exist (every key below
    /// it), which only "latest" follows as it grows.
    pub fn next<R: Rng + ?Sized>(&mut self, rng: &mut R, acknowledged: u64) -> u64 {
        match self {
            KeyChooser::Uniform { records } => rng.random_range(0..*records),
            KeyChooser::Scrambled { zipf, records } => fnv1a64(zipf.sample(rng)) % *records,
            KeyChooser::Latest { zipf } => {
                zipf.grow_to(acknowledged);
                let newest = zipf.items() - 1;
                newest - zipf.sample(rng)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::SmallRng};

    #[test]
    fn zeta_integration_matches_the_exact_sum() {
        let theta = ZIPFIAN_CONSTANT;
        let n = 3_000_000u64;
        let exact: f64 = (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum();
        let approx = zeta(n, theta);
        assert!(
            ((exact - approx) / exact).abs() < 1e-9,
            "{exact} vs {approx}"
        );
        // Extending from a partial sum gives the same as summing at once.
        let grown = zeta_from(1000, zeta(1000, theta), n, theta);
        assert!(((grown - approx) / approx).abs() < 1e-12);
        // YCSB's published ζ(10^10, 0.99), an independent check of the tail.
        let big = zeta(SCRAMBLE_ITEMS, theta);
        assert!((big - 26.469_028_201_783_02).abs() < 1e-6, "{big}");
    }

    #[test]
    fn zipfian_frequencies_follow_the_power_law() {
        let n = 1000;
        let z = Zipfian::new(n, ZIPFIAN_CONSTANT);
        let mut rng = SmallRng::seed_from_u64(7);
        let draws = 400_000;
        let mut counts = vec![0u64; n as usize];
        for _ in 0..draws {
            let k = z.sample(&mut rng);
            assert!(k < n);
            counts[k as usize] += 1;
        }
        let zn = zeta(n, ZIPFIAN_CONSTANT);
        // Gray et al.'s method is exact for the two most popular items and an
        // approximation (within a fifth or so) for the rest.
        for (rank, tolerance) in [(0usize, 0.05), (1, 0.05), (2, 0.25), (9, 0.25), (99, 0.25)] {
            let expected = draws as f64 / ((rank + 1) as f64).powf(ZIPFIAN_CONSTANT) / zn;
            let got = counts[rank] as f64;
            assert!(
                (got - expected).abs() < tolerance * expected + 30.0,
                "rank {rank}: {got} vs {expected}"
            );
        }
        // Monotone in bulk: the top tenth is drawn far more than the bottom tenth.
        let top: u64 = counts[..100].iter().sum();
        let bottom: u64 = counts[900..].iter().sum();
        assert!(top > 10 * bottom, "{top} vs {bottom}");
    }

    #[test]
    fn scrambled_zipfian_is_skewed_but_scattered() {
        let records = 10_000;
        let mut c = KeyChooser::new(Distribution::Zipfian, records);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut counts = vec![0u64; records as usize];
        for _ in 0..200_000 {
            let k = c.next(&mut rng, records);
            assert!(k < records);
            counts[k as usize] += 1;
        }
        let mut sorted = counts.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        // Skewed: the hottest 1% of keys take about a fifth of all draws (the top
        // hundred of the 10^10-item zipfian hold 5.2 / 26.5 of its weight), twenty
        // times their uniform share.
        let hot: u64 = sorted[..100].iter().sum();
        assert!(hot > 200_000 * 15 / 100, "hottest 1% drew {hot}");
        // Scattered: the hottest key is not simply key 0, and the first tenth of the
        // key space is not where the draws pile up.
        let first_tenth: u64 = counts[..1000].iter().sum();
        assert!(first_tenth < 200_000 / 4, "first tenth drew {first_tenth}");
    }

    #[test]
    fn latest_prefers_the_newest_and_follows_inserts() {
        let mut c = KeyChooser::new(Distribution::Latest, 100);
        let mut rng = SmallRng::seed_from_u64(3);
        let mut newest = 0;
        for _ in 0..10_000 {
            let k = c.next(&mut rng, 100);
            assert!(k < 100);
            newest += u64::from(k == 99);
        }
        assert!(newest > 10_000 / 10, "newest drawn {newest} times");
        // After inserts are acknowledged, the new keys become the popular ones.
        let mut hits = 0;
        for _ in 0..10_000 {
            let k = c.next(&mut rng, 150);
            assert!(k < 150);
            hits += u64::from(k >= 100);
        }
        assert!(hits > 5_000, "{hits}");
    }

    #[test]
    fn uniform_covers_the_records() {
        let mut c = KeyChooser::new(Distribution::Uniform, 10);
        let mut rng = SmallRng::seed_from_u64(3);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            seen[c.next(&mut rng, 10) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn insert_counter_acknowledges_contiguously() {
        let c = InsertCounter::new(10);
        let (a, b, d) = (c.claim(), c.claim(), c.claim());
        assert_eq!((a, b, d), (10, 11, 12));
        c.finished(b);
        assert_eq!(c.acknowledged(), 10, "11 landed but 10 has not");
        c.finished(a);
        assert_eq!(c.acknowledged(), 12);
        c.finished(d);
        assert_eq!(c.acknowledged(), 13);
        c.finished(3); // an old key changes nothing
        assert_eq!(c.acknowledged(), 13);
    }

    #[test]
    fn same_seed_same_keys() {
        let draw = || {
            let mut c = KeyChooser::new(Distribution::Zipfian, 1000);
            let mut rng = SmallRng::seed_from_u64(42);
            (0..100).map(|_| c.next(&mut rng, 1000)).collect::<Vec<_>>()
        };
        assert_eq!(draw(), draw());
    }
}
