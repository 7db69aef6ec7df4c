//! Drives operations at a target: a fixed number of workers, each with one operation
//! in flight, either as fast as answers come back (closed loop) or on a fixed
//! schedule (open loop, `--target`).
//!
//! In the open loop operation `i` is due at `start + i / rate`, and its latency is
//! measured from that intended start, not from when a worker got round to sending
//! it: when the system stalls, the operations that should have been sent meanwhile
//! count the stall too, instead of silently not being sent (no coordinated
//! omission). Time is tokio's, so tests drive the loop on a paused clock.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::{RngExt, SeedableRng, rngs::SmallRng};
use tokio::time::Instant;

use super::contexts::ContextCache;

/// Half of tokio's timer resolution (see [`Phase::next_due`]).
const HALF_TICK: Duration = Duration::from_micros(500);
use super::keys::{InsertCounter, KeyChooser};
use super::recorder::{Outcome, Recorder};
use super::workload::{Mix, OpKind};
use crate::client::{Client, ClientError, GetResult};
use crate::object::Context;

/// What the bench drives: a register store. [`Client`] is the real one; tests use
/// stand-ins.
pub trait Target: Clone + Send + Sync + 'static {
    /// Reads a register.
    fn read(&self, key: &[u8]) -> impl Future<Output = Result<GetResult, ClientError>> + Send;
    /// Writes a register value with an optional context; returns the new context.
    fn write(
        &self,
        key: &[u8],
        value: &[u8],
        context: Option<&Context>,
    ) -> impl Future<Output = Result<Context, ClientError>> + Send;
}

impl Target for Client {
    fn read(&self, key: &[u8]) -> impl Future<Output = Result<GetResult, ClientError>> + Send {
        self.get(key)
    }

    fn write(
        &self,
        key: &[u8],
        value: &[u8],
        context: Option<&Context>,
    ) -> impl Future<Output = Result<Context, ClientError>> + Send {
        self.put(key, value, context)
    }
}

/// The key of record number `n` (what the load phase writes and later phases read).
pub fn key_of(n: u64) -> Vec<u8> {
    format!("user{n:012}").into_bytes()
}

/// When a phase stops.
#[derive(Clone, Copy, Debug)]
pub enum Bound {
    /// After this many operations were started.
    Operations(u64),
    /// At this moment (no operation starts later).
    Until(Instant),
}

/// What every worker of one phase shares.
pub struct Phase {
    /// Operations of the load phase (inserts of `0..records`) or the run phase.
    pub load: bool,
    /// When to stop.
    pub bound: Bound,
    /// Open loop at this many operations per second; closed loop if `None`.
    pub rate: Option<f64>,
    /// Whether operations count in the totals (false during the warm-up).
    pub measured: bool,
    /// Operation kinds of the run phase.
    pub mix: Mix,
    /// Key chooser, cloned into every worker.
    pub chooser: KeyChooser,
    /// Bytes per written value.
    pub value_size: usize,
    /// Seed of the workers' RNGs.
    pub seed: u64,
    /// Where latencies go.
    pub recorder: Arc<Recorder>,
    /// Contexts seen per key.
    pub contexts: Arc<ContextCache>,
    /// Inserted keys (load phase and workload D).
    pub inserts: Arc<InsertCounter>,
    /// Operations claimed so far.
    pub claimed: AtomicU64,
    /// When the phase started (the open-loop schedule counts from here).
    pub start: Instant,
}

/// The error kind used in reports: stable snake_case names.
pub fn error_kind(e: &ClientError) -> &'static str {
    use crate::rpc::api::ApiError;
    match e {
        ClientError::Connect { .. } => "connect",
        ClientError::Unavailable { reason, .. } if reason.contains("timed out") => "timeout",
        ClientError::Unavailable { .. } => "unavailable",
        ClientError::NotAuthorized { .. } => "not_authorized",
        ClientError::Api(api) => match api {
            ApiError::EmptyKey => "empty_key",
            ApiError::KeyTooLarge { .. } => "key_too_large",
            ApiError::ValueTooLarge { .. } => "value_too_large",
            ApiError::ObjectTooLarge { .. } => "object_too_large",
            ApiError::WrongKind { .. } => "wrong_kind",
            ApiError::TooManySiblings { .. } => "too_many_siblings",
            ApiError::InvalidContext { .. } => "invalid_context",
            ApiError::InvalidOptions { .. } => "invalid_options",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::QuorumNotReached(_) => "quorum_not_reached",
            ApiError::Membership { .. } => "membership",
            ApiError::Corrupt { .. } => "corrupt",
            ApiError::Storage { .. } => "storage",
            ApiError::CounterOverflow { .. } => "counter_overflow",
            ApiError::NotPrimary { .. } => "not_primary",
            ApiError::ShuttingDown { .. } => "shutting_down",
            ApiError::NotAuthorized { .. } => "not_authorized",
        },
    }
}

fn read_outcome(r: &GetResult) -> Outcome {
    Outcome::Ok {
        not_found: !r.is_found(),
        siblings: r.siblings.len(),
    }
}

const WRITTEN: Outcome = Outcome::Ok {
    not_found: false,
    siblings: 0,
};

/// A worker's value buffer: random bytes (so compression flatters nothing), with
/// the operation number stamped in front so every write differs.
fn stamp(value: &mut [u8], n: u64) {
    let bytes = n.to_le_bytes();
    let k = bytes.len().min(value.len());
    value[..k].copy_from_slice(&bytes[..k]);
}

impl Phase {
    /// Claims the next operation and waits until it is due; `None` when the phase
    /// is over. Returns the moment latency is measured from.
    async fn next_due(&self) -> Option<Instant> {
        let i = self.claimed.fetch_add(1, Ordering::Relaxed);
        let due = match self.rate {
            Some(rate) => self.start + Duration::from_secs_f64(i as f64 / rate),
            None => Instant::now(),
        };
        match self.bound {
            Bound::Operations(n) if i >= n => return None,
            // In the open loop an operation due before the end runs even if late:
            // dropping the backlog would hide exactly the slow part.
            Bound::Until(end) if due >= end => return None,
            _ => {}
        }
        if self.rate.is_some() {
            // tokio's timer fires on whole milliseconds, rounding deadlines up, so
            // waiting for `due` itself sent every operation 0-1 ms late and charged
            // that to the server (at 5 ms budgets, a fifth of it). Aim half a tick
            // early instead: sends spread around their due time. Latency counts
            // from the earlier of the due time and the actual send: a late send
            // still counts its lateness (no coordinated omission), an early one is
            // measured from when it really left, never flattered.
            tokio::time::sleep_until(due.checked_sub(HALF_TICK).unwrap_or(due)).await;
            return Some(due.min(Instant::now()));
        }
        Some(due)
    }

    async fn execute<T: Target>(
        &self,
        target: &T,
        kind: OpKind,
        key: u64,
        value: &[u8],
    ) -> Result<Outcome, ClientError> {
        let k = key_of(key);
        match kind {
            OpKind::Read => {
                let r = target.read(&k).await?;
                let outcome = read_outcome(&r);
                self.contexts.learn(key, r.context);
                Ok(outcome)
            }
            OpKind::Update => {
                let known = self.contexts.get(key);
                let c = target.write(&k, value, known.as_ref()).await?;
                self.contexts.learn(key, c);
                Ok(WRITTEN)
            }
            OpKind::Insert => {
                let c = target.write(&k, value, None).await;
                self.inserts.finished(key);
                self.contexts.learn(key, c?);
                Ok(WRITTEN)
            }
            OpKind::ReadModifyWrite => {
                let r = target.read(&k).await?;
                let outcome = read_outcome(&r);
                let c = target.write(&k, value, Some(&r.context)).await?;
                self.contexts.learn(key, c);
                Ok(outcome)
            }
        }
    }

    /// One worker: claims operations until the phase is over.
    pub async fn worker<T: Target>(self: Arc<Self>, id: usize, target: T) {
        let mut rng = SmallRng::seed_from_u64(
            self.seed ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        let mut chooser = self.chooser.clone();
        let mut value: Vec<u8> = (0..self.value_size).map(|_| rng.random::<u8>()).collect();
        let mut n = 0u64;
        while let Some(due) = self.next_due().await {
            let (kind, key) = if self.load {
                (OpKind::Insert, self.inserts.claim())
            } else {
                match self.mix.pick(rng.random_range(0..100)) {
                    OpKind::Insert => (OpKind::Insert, self.inserts.claim()),
                    kind => (kind, chooser.next(&mut rng, self.inserts.acknowledged())),
                }
            };
            n += 1;
            stamp(&mut value, n ^ ((id as u64) << 40));
            let outcome = match self.execute(&target, kind, key, &value).await {
                Ok(o) => o,
                Err(e) => Outcome::Failed(error_kind(&e)),
            };
            let us = due.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
            self.recorder.record(kind, us, outcome, self.measured);
        }
    }
}

/// Runs `phase` with `concurrency` workers over `targets` (worker `i` uses target
/// `i % targets.len()`) and waits for all of them.
/// The connections the workers drive: the client port's, or the HTTP port's.
pub enum Targets {
    /// Client-port connections (tarpc), shared by the workers.
    Rpc(Vec<Client>),
    /// One HTTP connection per worker.
    Http(Vec<super::http_target::HttpTarget>),
}

impl Targets {
    /// Runs `phase` with `concurrency` workers over these connections.
    pub async fn drive(&self, phase: Arc<Phase>, concurrency: usize) {
        match self {
            Targets::Rpc(clients) => run_workers(phase, clients, concurrency).await,
            Targets::Http(targets) => run_workers(phase, targets, concurrency).await,
        }
    }
}

pub async fn run_workers<T: Target>(phase: Arc<Phase>, targets: &[T], concurrency: usize) {
    assert!(!targets.is_empty(), "at least one target");
    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..concurrency {
        tasks.spawn(
            phase
                .clone()
                .worker(id, targets[id % targets.len()].clone()),
        );
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            // A worker panicking is a bug in the bench: surface it.
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::keys::{Distribution, KeyChooser};
    use crate::bench::workload::Workload;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// Per key: the live values and how many writes it has had.
    type Data = HashMap<Vec<u8>, (Vec<Vec<u8>>, u64)>;

    /// A store in memory that answers after `delay`, or after `stall` for requests
    /// sent within the stall window.
    #[derive(Clone)]
    struct Fake {
        data: Arc<Mutex<Data>>,
        delay: Duration,
        stall: Option<(Instant, Instant)>,
        writes_with_context: Arc<AtomicU64>,
    }

    impl Fake {
        fn new(delay: Duration) -> Fake {
            Fake {
                data: Arc::default(),
                delay,
                stall: None,
                writes_with_context: Arc::default(),
            }
        }

        async fn wait(&self) {
            let now = Instant::now();
            match self.stall {
                Some((from, to)) if now >= from && now < to => tokio::time::sleep_until(to).await,
                _ => tokio::time::sleep(self.delay).await,
            }
        }
    }

    fn ctx_of(version: u64) -> Context {
        let mut c = crdts::VClock::new();
        for _ in 0..version {
            let dot = c.inc(1u64);
            crdts::CmRDT::apply(&mut c, dot);
        }
        crate::object::ContextKey::of_cluster(&ringkv_gossip::ClusterKey::derive(b"bench test"))
            .sign(b"k", &c)
    }

    impl Target for Fake {
        async fn read(&self, key: &[u8]) -> Result<GetResult, ClientError> {
            self.wait().await;
            let d = self.data.lock().expect("lock");
            let (siblings, v) = d.get(key).cloned().unwrap_or_default();
            Ok(GetResult {
                siblings,
                context: ctx_of(v),
            })
        }

        async fn write(
            &self,
            key: &[u8],
            value: &[u8],
            context: Option<&Context>,
        ) -> Result<Context, ClientError> {
            self.wait().await;
            let mut d = self.data.lock().expect("lock");
            let e = d.entry(key.to_vec()).or_default();
            // Like a register: a write covering the newest version replaces it, a
            // blind one adds a sibling.
            let covers = context
                .is_some_and(|c| c.clock().expect("clock").get(&1u64) >= e.1 && !e.0.is_empty());
            if context.is_some() {
                self.writes_with_context.fetch_add(1, Ordering::Relaxed);
            }
            if covers {
                e.0.clear();
            }
            e.0.push(value.to_vec());
            e.1 += 1;
            Ok(ctx_of(e.1))
        }
    }

    fn phase(workload: Workload, bound: Bound, rate: Option<f64>, records: u64) -> Phase {
        Phase {
            load: false,
            bound,
            rate,
            measured: true,
            mix: Mix::new(workload),
            chooser: KeyChooser::new(Distribution::Uniform, records),
            value_size: 16,
            seed: 9,
            recorder: Arc::new(Recorder::new()),
            contexts: Arc::new(ContextCache::default()),
            inserts: Arc::new(InsertCounter::new(records)),
            claimed: AtomicU64::new(0),
            start: Instant::now(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn load_then_updates_keep_siblings_bounded() {
        let fake = Fake::new(Duration::from_millis(1));
        let records = 20;
        let mut load = phase(Workload::A, Bound::Operations(records), None, 0);
        load.load = true;
        let load = Arc::new(load);
        run_workers(load.clone(), std::slice::from_ref(&fake), 4).await;
        assert_eq!(fake.data.lock().expect("lock").len(), records as usize);
        let t = load.recorder.totals();
        assert_eq!(t[OpKind::Insert.index()].hist.len(), records);

        let mut run = phase(Workload::A, Bound::Operations(2_000), None, records);
        run.contexts = load.contexts.clone();
        let run = Arc::new(run);
        run_workers(run.clone(), std::slice::from_ref(&fake), 8).await;
        let t = run.recorder.totals();
        let (reads, updates) = (
            t[OpKind::Read.index()].hist.len(),
            t[OpKind::Update.index()].hist.len(),
        );
        assert_eq!(reads + updates, 2_000);
        assert!((800..1200).contains(&reads), "{reads} reads of 2000");
        assert!(fake.writes_with_context.load(Ordering::Relaxed) >= updates);
        // Updates carry what was seen, so concurrent ones leave few siblings.
        assert!(t[OpKind::Read.index()].max_siblings <= 8);
        assert_eq!(t[OpKind::Read.index()].not_found, 0);
    }

    /// Read latencies of 10 s of workload C with four workers against a store that
    /// answers in 1 ms, except that requests sent between 3 s and 4 s wait until 4 s.
    async fn through_a_stall(rate: Option<f64>) -> hdrhistogram::Histogram<u64> {
        let mut fake = Fake::new(Duration::from_millis(1));
        let t0 = Instant::now();
        fake.stall = Some((t0 + Duration::from_secs(3), t0 + Duration::from_secs(4)));
        let run = Arc::new(phase(
            Workload::C,
            Bound::Until(t0 + Duration::from_secs(10)),
            rate,
            100,
        ));
        run_workers(run.clone(), std::slice::from_ref(&fake), 4).await;
        run.recorder.totals()[OpKind::Read.index()].hist.clone()
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_counts_a_stall_for_every_operation_it_delays() {
        let hist = through_a_stall(Some(1000.0)).await;
        assert!((9_990..=10_000).contains(&hist.len()), "{}", hist.len());
        // Four workers are stuck for the stall; the ~1,000 operations due during it
        // are late by up to a second each, and the backlog drains by 3 per ms after
        // it, so about 13 % are late. A closed loop would have recorded only four
        // slow operations and hidden the rest.
        let p80 = hist.value_at_quantile(0.80);
        let p95 = hist.value_at_quantile(0.95);
        assert!(p80 < 5_000, "p80 {p80} µs");
        assert!(p95 > 400_000, "p95 {p95} µs shows the stall");
        assert!(hist.max() >= 990_000, "max {}", hist.max());
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_hides_what_open_loop_shows() {
        let hist = through_a_stall(None).await;
        assert!(hist.value_at_quantile(0.99) < 5_000);
        assert!(hist.len() > 20_000, "{}", hist.len());
    }

    #[tokio::test(start_paused = true)]
    async fn workload_d_reads_only_acknowledged_keys() {
        let fake = Fake::new(Duration::from_millis(1));
        let records = 50;
        let mut load = phase(Workload::D, Bound::Operations(records), None, 0);
        load.load = true;
        let load = Arc::new(load);
        run_workers(load.clone(), std::slice::from_ref(&fake), 4).await;
        let mut run = phase(Workload::D, Bound::Operations(4_000), None, records);
        run.chooser = KeyChooser::new(Distribution::Latest, records);
        let run = Arc::new(run);
        run_workers(run.clone(), std::slice::from_ref(&fake), 8).await;
        let t = run.recorder.totals();
        let inserts = t[OpKind::Insert.index()].hist.len();
        assert!((100..320).contains(&inserts), "{inserts} inserts");
        assert_eq!(
            t[OpKind::Read.index()].not_found,
            0,
            "never a key not yet written"
        );
        assert_eq!(
            fake.data.lock().expect("lock").len() as u64,
            records + inserts
        );
    }

    #[tokio::test(start_paused = true)]
    async fn read_modify_writes_carry_the_read_context() {
        let fake = Fake::new(Duration::from_millis(1));
        let mut load = phase(Workload::F, Bound::Operations(10), None, 0);
        load.load = true;
        run_workers(Arc::new(load), std::slice::from_ref(&fake), 2).await;
        let run = Arc::new(phase(Workload::F, Bound::Operations(500), None, 10));
        run_workers(run.clone(), std::slice::from_ref(&fake), 1).await;
        let t = run.recorder.totals();
        let rmw = t[OpKind::ReadModifyWrite.index()].hist.len();
        assert!(rmw > 150, "{rmw}");
        // One worker: every read-modify-write replaced what it read.
        for (siblings, _) in fake.data.lock().expect("lock").values() {
            assert_eq!(siblings.len(), 1);
        }
        // Each takes two round trips.
        assert!(
            t[OpKind::ReadModifyWrite.index()]
                .hist
                .value_at_quantile(0.5)
                >= 2_000
        );
    }

    #[test]
    fn error_kinds_are_named() {
        let e = ClientError::Unavailable {
            addr: "a".into(),
            reason: "request timed out".into(),
        };
        assert_eq!(error_kind(&e), "timeout");
        let e = ClientError::Connect {
            addr: "a".into(),
            reason: "refused".into(),
        };
        assert_eq!(error_kind(&e), "connect");
    }
}
