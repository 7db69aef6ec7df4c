//! The benchmark harness: YCSB core workloads (A, B, C, D, F) against a node or a
//! cluster through the Rust client, in a closed loop or an open loop at a target
//! rate, with HDR latency histograms per operation kind, a per-second timeline, an
//! optional fault window (a node killed and restarted mid-run), JSON and an SVG plot.
//!
//! A run has a load phase (every record written once, as fast as it goes) and a run
//! phase (an optional warm-up, then the measured operations). Keys are
//! `user000000000042`; values are random bytes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ringkv::bench::BenchError> {
//! use ringkv::bench::{BenchConfig, ProgressMode, Workload, run};
//! let config = BenchConfig {
//!     workload: Workload::A,
//!     records: 10_000,
//!     operations: Some(100_000),
//!     ..BenchConfig::default()
//! };
//! let report = run(config, None, ProgressMode::Quiet).await?;
//! println!("{report}");
//! # Ok(()) }
//! ```

mod contexts;
mod cpu;
mod driver;
mod http_target;
mod keys;
mod plot;
mod progress;
mod recorder;
mod report;
mod workload;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Serialize, Serializer};
use tokio::time::Instant;

pub use cpu::CpuReport;
pub use driver::{Bound, Target, error_kind, key_of};
pub use keys::{Distribution, ZIPFIAN_CONSTANT};
pub use plot::svg;
pub use progress::ProgressMode;
pub use report::{
    BenchReport, Environment, FaultReport, Latency, OpReport, PhaseReport, TimelinePoint,
};
pub use workload::{OpKind, Workload, WorkloadError};

use crate::client::{Client, ClientError};
use crate::rpc::api::{RequestOptions, RingInfo};
use contexts::ContextCache;
use cpu::CpuMeter;
use driver::{Phase, Targets};
use keys::{InsertCounter, KeyChooser};
use progress::{Progress, Tick};
use recorder::Recorder;
use workload::Mix;

/// Most requests in flight one bench may keep.
pub const MAX_CONCURRENCY: usize = 10_000;
/// Most connections one bench may open.
pub const MAX_CONNECTIONS: usize = 1024;
/// Largest value the bench writes (the server's default value limit).
pub const MAX_VALUE_SIZE: usize = 4 << 20;

/// A node taken down during the run phase, and brought back.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultPlan {
    /// The node id.
    pub node: String,
    /// When to kill it, from the start of the run phase.
    #[serde(serialize_with = "secs")]
    pub at: Duration,
    /// When to start it again (never, if `None`).
    #[serde(serialize_with = "secs_opt")]
    pub restart_at: Option<Duration>,
}

/// Kills and restarts nodes for a fault window; the CLI implements it for the
/// clusters it starts itself.
pub trait NodeControl: Send + 'static {
    /// Kills `node` abruptly (as a crash would).
    ///
    /// # Errors
    /// What went wrong, for the report.
    fn kill(&mut self, node: &str) -> Result<(), String>;
    /// Starts `node` again and returns once it answers.
    ///
    /// # Errors
    /// What went wrong, for the report.
    fn restart(&mut self, node: &str) -> Result<(), String>;
}

/// What to run. Every field is in the JSON report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchConfig {
    /// The YCSB workload.
    pub workload: Workload,
    /// How keys are chosen (the workload's own unless overridden).
    pub distribution: Distribution,
    /// Records written by the load phase and chosen from by the run phase.
    pub records: u64,
    /// Measured operations of the run phase (when `duration` is `None`).
    pub operations: Option<u64>,
    /// Length of the measured run phase (instead of `operations`).
    #[serde(serialize_with = "secs_opt")]
    pub duration: Option<Duration>,
    /// Unmeasured run before the measured one (not part of `operations`/`duration`).
    #[serde(serialize_with = "secs")]
    pub warmup: Duration,
    /// Operations in flight at once (workers).
    pub concurrency: usize,
    /// Client connections the workers share.
    pub connections: usize,
    /// Open loop at this rate (operations per second); closed loop if `None`.
    pub target_ops_per_sec: Option<f64>,
    /// Bytes per value.
    pub value_size: usize,
    /// Nodes to connect to (any members; connections are spread over them).
    pub connect: Vec<String>,
    /// Replies a read needs (the node's default if `None`).
    pub r: Option<u8>,
    /// Acknowledgements a write needs (the node's default if `None`).
    pub w: Option<u8>,
    /// Deadline of one request, milliseconds.
    pub timeout_ms: u64,
    /// Seed of the key choosers and values.
    pub seed: u64,
    /// Send each request straight to a primary of its key.
    pub routing: bool,
    /// Run the load phase (off when the records are already there).
    pub load: bool,
    /// A node killed and restarted during the run phase.
    pub fault: Option<FaultPlan>,
    /// Nodes of the cluster the bench started itself (`None`: an existing cluster).
    pub local_nodes: Option<u16>,
    /// Token and TLS of every connection (the report says only whether each is on).
    pub security: Security,
    /// Drive the data API over HTTP at this address (a node's `--http-listen`,
    /// plaintext; one connection per worker) instead of the client port; `connect`
    /// still names the node the report and the CPU meter ask.
    pub http: Option<String>,
}

/// The credentials a bench connects with.
#[derive(Clone, Debug, Default)]
pub struct Security(pub crate::client::Credentials);

impl PartialEq for Security {
    fn eq(&self, other: &Security) -> bool {
        self.0.token == other.0.token && self.0.tls.is_some() == other.0.tls.is_some()
    }
}

impl Serialize for Security {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Security", 2)?;
        st.serialize_field("tls", &self.0.tls.is_some())?;
        st.serialize_field("token", &self.0.token.is_some())?;
        st.end()
    }
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            workload: Workload::A,
            distribution: Workload::A.distribution(),
            records: 100_000,
            operations: Some(100_000),
            duration: None,
            warmup: Duration::ZERO,
            concurrency: 64,
            connections: 4,
            target_ops_per_sec: None,
            value_size: 1000,
            connect: vec!["127.0.0.1:7400".to_string()],
            r: None,
            w: None,
            timeout_ms: 10_000,
            seed: 1,
            routing: true,
            load: true,
            fault: None,
            local_nodes: None,
            security: Security::default(),
            http: None,
        }
    }
}

fn secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn secs_opt<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// Why a bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A setting makes no sense.
    #[error("{setting}: {reason}")]
    Invalid {
        /// The setting, as the CLI spells it.
        setting: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The cluster refused the bench's first request: the settings (say, `--r`
    /// above N) are wrong for it.
    #[error("the cluster refused the bench's requests: {source}")]
    Refused {
        /// The refusal.
        source: ClientError,
    },
    /// No node could be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> BenchError {
    BenchError::Invalid {
        setting,
        reason: reason.into(),
    }
}

impl BenchConfig {
    /// Checks that every setting makes sense.
    ///
    /// # Errors
    /// [`BenchError::Invalid`] naming the setting.
    pub fn validate(&self) -> Result<(), BenchError> {
        if self.records == 0 {
            return Err(invalid("--records", "must be at least 1"));
        }
        match (self.operations, self.duration) {
            (Some(0), _) => return Err(invalid("--operations", "must be at least 1")),
            (_, Some(d)) if d.is_zero() => return Err(invalid("--duration", "must be above 0")),
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "--duration",
                    "give --operations or --duration, not both",
                ));
            }
            (None, None) => return Err(invalid("--operations", "give --operations or --duration")),
            _ => {}
        }
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            return Err(invalid(
                "--concurrency",
                format!("must be between 1 and {MAX_CONCURRENCY}"),
            ));
        }
        if self.connections == 0 || self.connections > MAX_CONNECTIONS {
            return Err(invalid(
                "--connections",
                format!("must be between 1 and {MAX_CONNECTIONS}"),
            ));
        }
        if let Some(t) = self.target_ops_per_sec
            && !(t.is_finite() && t > 0.0)
        {
            return Err(invalid(
                "--target",
                format!(
                    "{t} is not a rate above 0 operations per second (leave it out for a closed loop)"
                ),
            ));
        }
        if self.value_size > MAX_VALUE_SIZE {
            return Err(invalid(
                "--value-size",
                format!("at most {MAX_VALUE_SIZE} bytes (the server's value limit)"),
            ));
        }
        if self.connect.is_empty() {
            return Err(invalid("--connect", "give at least one node"));
        }
        if self.r == Some(0) || self.w == Some(0) {
            return Err(invalid("--r/--w", "quorums must be at least 1"));
        }
        let max = u64::from(crate::coordinator::MAX_TIMEOUT_MS) * 10 / 9;
        if self.timeout_ms == 0 || self.timeout_ms > max {
            return Err(invalid(
                "--timeout-ms",
                format!("must be between 1 and {max}"),
            ));
        }
        if let Some(f) = &self.fault {
            if let Some(back) = f.restart_at
                && back <= f.at
            {
                return Err(invalid("--restart-at", "must come after --at"));
            }
            if let Some(d) = self.duration {
                let end = self.warmup + d;
                if f.at >= end {
                    return Err(invalid(
                        "--at",
                        "falls after the end of the run (--warmup plus --duration)",
                    ));
                }
                if f.restart_at.is_some_and(|back| back >= end) {
                    return Err(invalid(
                        "--restart-at",
                        "falls after the end of the run (--warmup plus --duration)",
                    ));
                }
            }
        }
        Ok(())
    }

    /// One line saying what runs.
    pub fn describe(&self) -> String {
        format!("{}, {}", self.workload.describe(), self.details())
    }

    /// Everything [`BenchConfig::describe`] says but the workload.
    pub fn details(&self) -> String {
        let bound = match (self.operations, self.duration) {
            (_, Some(d)) => format!("{:.0} s", d.as_secs_f64()),
            (Some(n), None) => format!("{n} ops"),
            (None, None) => "?".to_string(),
        };
        let pace = match self.target_ops_per_sec {
            Some(t) => format!("open loop at {t:.0} ops/s"),
            None => "closed loop".to_string(),
        };
        format!(
            "{} over {} records of {} B; {} in flight, {pace}, {bound}",
            self.distribution.name(),
            self.records,
            self.value_size,
            self.concurrency
        )
    }

    fn request_options(&self) -> RequestOptions {
        RequestOptions {
            r: self.r,
            w: self.w,
            pr: None,
            pw: None,
            // The node gets a little less than the client waits, so its answer (a
            // quorum failure, say) arrives before the client gives up.
            timeout_ms: Some((self.timeout_ms - self.timeout_ms / 10).max(1) as u32),
        }
    }
}

/// Opens the bench's connections, spread over the given nodes.
async fn connect(config: &BenchConfig) -> Result<Vec<Client>, BenchError> {
    // More connections than workers would sit idle.
    let count = config.connections.min(config.concurrency);
    let mut clients = Vec::with_capacity(count);
    for i in 0..count {
        let n = config.connect.len();
        let seeds: Vec<&str> = (0..n)
            .map(|j| config.connect[(i + j) % n].as_str())
            .collect();
        let mut c = Client::connect_any_as(&seeds, &config.security.0).await?;
        c.set_timeout(Duration::from_millis(config.timeout_ms));
        c.set_options(config.request_options());
        if !config.routing {
            c.disable_routing();
        }
        clients.push(c);
    }
    Ok(clients)
}

/// One read and one write with the run's options: a cluster that refuses them
/// (say, `--r` above N) fails the bench at once instead of every operation.
async fn preflight(client: &Client) -> Result<(), BenchError> {
    let key = b"ringkv-bench-preflight";
    let refused = |e: ClientError| match e {
        ClientError::Api(_) => BenchError::Refused { source: e },
        other => BenchError::Client(other),
    };
    let read = client.get(key).await.map_err(refused)?;
    client
        .put(key, b"ok", Some(&read.context))
        .await
        .map_err(refused)?;
    Ok(())
}

async fn environment(client: &Client) -> Environment {
    let info = client.server().clone();
    let ring = client.ring().await.ok();
    Environment {
        ringkv_version: env!("CARGO_PKG_VERSION").to_string(),
        server_version: info.version,
        server_node_id: info.node_id,
        cluster_members: ring.as_ref().map_or(1, RingInfo::active_members),
        cluster_n: ring.as_ref().map_or(0, |r| r.n),
        cpus: std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        os: std::env::consts::OS.to_string(),
        // Only for the report: the bench is not protocol logic.
        started_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }
}

/// The processes whose CPU the run measures: the nodes given and every member the
/// cluster names (a client routed to a node it was not given still costs that node).
async fn meter(config: &BenchConfig, client: &Client) -> CpuMeter {
    let ring = client.ring().await.ok();
    let members = ring
        .iter()
        .flat_map(|r| r.members.iter())
        .filter(|m| m.status == "active" || m.status == "leaving")
        .map(|m| m.address.as_str());
    CpuMeter::discover(config.connect.iter().map(String::as_str).chain(members))
}

/// What every phase is built from.
struct Common<'a> {
    config: &'a BenchConfig,
    contexts: Arc<ContextCache>,
    chooser: KeyChooser,
}

impl Common<'_> {
    fn phase(
        &self,
        load: bool,
        bound: Bound,
        measured: bool,
        recorder: Arc<Recorder>,
        inserts: Arc<InsertCounter>,
    ) -> Arc<Phase> {
        Arc::new(Phase {
            load,
            bound,
            rate: if load {
                None
            } else {
                self.config.target_ops_per_sec
            },
            measured,
            mix: Mix::new(self.config.workload),
            chooser: self.chooser.clone(),
            value_size: self.config.value_size,
            seed: self.config.seed ^ u64::from(load),
            recorder,
            contexts: self.contexts.clone(),
            inserts,
            claimed: AtomicU64::new(0),
            start: Instant::now(),
        })
    }
}

async fn load_phase(common: &Common<'_>, targets: &Targets, progress: ProgressMode) -> PhaseReport {
    let config = common.config;
    let recorder = Arc::new(Recorder::new());
    let phase = common.phase(
        true,
        Bound::Operations(config.records),
        true,
        recorder.clone(),
        Arc::new(InsertCounter::new(0)),
    );
    let started = Instant::now();
    let mut bar = Progress::start(progress, "load", config.records, "records");
    let workers = targets.drive(phase, config.concurrency);
    tokio::pin!(workers);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last = (Instant::now(), 0u64);
    loop {
        tokio::select! {
            biased;
            () = &mut workers => break,
            _ = tick.tick() => {
                let (done, p99_us) = recorder.progress();
                let now = Instant::now();
                let throughput = (done - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-9);
                last = (now, done);
                let errors = recorder.totals().iter().map(recorder::KindTotals::error_count).sum();
                bar.update(&Tick { position: done, elapsed_s: started.elapsed().as_secs_f64(), throughput, p99_us, errors });
            }
        }
    }
    bar.finish();
    PhaseReport::new("load", started.elapsed().as_secs_f64(), &recorder.totals())
}

/// The fault window as it happened, filled in by the fault task.
#[derive(Default)]
struct FaultLog {
    killed_at_s: Option<f64>,
    restarted_at_s: Option<f64>,
    problems: Vec<String>,
}

#[derive(Clone, Copy)]
enum Action {
    Kill,
    Restart,
}

/// Performs `action` off the async workers (it spawns or waits for processes) and
/// returns when it ended, seconds into the run phase.
async fn act(
    control: &Arc<Mutex<Box<dyn NodeControl>>>,
    node: &str,
    action: Action,
    start: Instant,
) -> Result<f64, String> {
    let (control, node) = (control.clone(), node.to_string());
    let done = tokio::task::spawn_blocking(move || {
        let mut c = control.lock().unwrap_or_else(|p| p.into_inner());
        match action {
            Action::Kill => c.kill(&node),
            Action::Restart => c.restart(&node),
        }
    })
    .await;
    match done {
        Ok(Ok(())) => Ok(start.elapsed().as_secs_f64()),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(e.to_string()),
    }
}

fn spawn_fault(
    plan: FaultPlan,
    control: Box<dyn NodeControl>,
    start: Instant,
    log: Arc<Mutex<FaultLog>>,
) -> tokio::task::JoinHandle<()> {
    let control = Arc::new(Mutex::new(control));
    tokio::spawn(async move {
        let note = |action: Action, outcome: Result<f64, String>| {
            let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
            match (action, outcome) {
                (Action::Kill, Ok(at)) => l.killed_at_s = Some(at),
                (Action::Restart, Ok(at)) => l.restarted_at_s = Some(at),
                (Action::Kill, Err(e)) => l.problems.push(format!("kill: {e}")),
                (Action::Restart, Err(e)) => l.problems.push(format!("restart: {e}")),
            }
        };
        tokio::time::sleep_until(start + plan.at).await;
        note(
            Action::Kill,
            act(&control, &plan.node, Action::Kill, start).await,
        );
        let Some(back) = plan.restart_at else {
            return;
        };
        tokio::time::sleep_until(start + back).await;
        note(
            Action::Restart,
            act(&control, &plan.node, Action::Restart, start).await,
        );
    })
}

fn fault_report(plan: &FaultPlan, log: FaultLog, timeline: &[TimelinePoint]) -> FaultReport {
    let mut r = FaultReport {
        node: plan.node.clone(),
        kill_at_s: plan.at.as_secs_f64(),
        killed_at_s: log.killed_at_s,
        restart_at_s: plan.restart_at.map(|d| d.as_secs_f64()),
        restarted_at_s: log.restarted_at_s,
        problems: log.problems,
        ..FaultReport::default()
    };
    let Some(killed) = r.killed_at_s else {
        return r;
    };
    let back = r.restarted_at_s.unwrap_or(f64::MAX);
    let rate = |points: Vec<&TimelinePoint>| {
        let secs: f64 = points.iter().map(|p| p.seconds).sum();
        let ops: u64 = points.iter().map(|p| p.operations).sum();
        ops as f64 / secs.max(1e-9)
    };
    // A bucket belongs to the window if it overlaps it.
    let window: Vec<&TimelinePoint> = timeline
        .iter()
        .filter(|p| p.t_s > killed && p.t_s - p.seconds < back)
        .collect();
    r.errors_in_window = window.iter().map(|p| p.errors).sum();
    r.throughput_in_window_ops_per_sec = rate(window);
    r.throughput_before_ops_per_sec = rate(
        timeline
            .iter()
            .filter(|p| !p.warmup && p.t_s <= killed)
            .collect(),
    );
    r
}

/// Runs the bench: connect, check, load, run, report. `control` kills and
/// restarts nodes for `config.fault` (a fault window needs one).
///
/// # Errors
/// [`BenchError::Invalid`] for settings that make no sense, [`BenchError::Refused`]
/// when the cluster refuses the run's requests, [`BenchError::Client`] when no node
/// answers.
pub async fn run(
    config: BenchConfig,
    control: Option<Box<dyn NodeControl>>,
    progress: ProgressMode,
) -> Result<BenchReport, BenchError> {
    config.validate()?;
    if config.fault.is_some() && control.is_none() {
        return Err(invalid(
            "--kill-node",
            "a fault window needs a cluster the bench starts itself (--nodes K), whose nodes it can kill and restart",
        ));
    }
    let clients = connect(&config).await?;
    preflight(&clients[0]).await?;
    let environment = environment(&clients[0]).await;
    let meter = meter(&config, &clients[0]).await;
    let targets = match &config.http {
        None => Targets::Rpc(clients),
        Some(addr) => {
            let timeout = Duration::from_millis(config.timeout_ms);
            let token = config.security.0.token.as_deref();
            let target = || http_target::HttpTarget::new(addr, config.r, config.w, timeout, token);
            http_target::preflight(&target()).await?;
            Targets::Http((0..config.concurrency).map(|_| target()).collect())
        }
    };
    let common = Common {
        config: &config,
        contexts: Arc::new(ContextCache::default()),
        chooser: KeyChooser::new(config.distribution, config.records),
    };
    let load = if config.load {
        let before = meter.sample();
        let mut load = load_phase(&common, &targets, progress).await;
        load.cpu = Some(meter.report(&before, &meter.sample(), load.operations));
        Some(load)
    } else {
        None
    };

    // The run phase: warm-up, then measured; one recorder and one timeline for both.
    let recorder = Arc::new(Recorder::new());
    let inserts = Arc::new(InsertCounter::new(config.records));
    let start = Instant::now();
    let fault_log = Arc::new(Mutex::new(FaultLog::default()));
    let fault_task = match (&config.fault, control) {
        (Some(plan), Some(control)) => {
            Some(spawn_fault(plan.clone(), control, start, fault_log.clone()))
        }
        _ => None,
    };
    let (length, unit) = match (config.operations, config.duration) {
        (_, Some(d)) => (d.as_secs().max(1), "s"),
        (Some(n), None) => (n, "ops"),
        (None, None) => (0, "ops"),
    };
    let mut bar = Progress::start(progress, "run", length, unit);
    let measured_start = Arc::new(Mutex::new(None::<Instant>));
    let sampler = {
        let (recorder, measured_start, warmup) =
            (recorder.clone(), measured_start.clone(), config.warmup);
        let timed = config.duration.is_some();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let mut timeline = Vec::new();
            let mut tick =
                tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = start;
            let mut errors = 0u64;
            loop {
                let stopping = tokio::select! {
                    biased;
                    _ = &mut stop_rx => true,
                    _ = tick.tick() => false,
                };
                let now = Instant::now();
                let s = recorder.sample();
                let seconds = (now - last).as_secs_f64();
                // The last, partial bucket is kept if anything landed in it: every
                // operation is in exactly one bucket.
                if !stopping || s.ops > 0 || s.errors > 0 {
                    let t_s = (now - start).as_secs_f64();
                    errors += s.errors;
                    let point = TimelinePoint {
                        t_s,
                        seconds,
                        operations: s.ops,
                        errors: s.errors,
                        throughput_ops_per_sec: s.ops as f64 / seconds.max(1e-9),
                        p50_us: if s.ops > 0 {
                            s.hist.value_at_quantile(0.5)
                        } else {
                            0
                        },
                        p99_us: if s.ops > 0 {
                            s.hist.value_at_quantile(0.99)
                        } else {
                            0
                        },
                        max_us: s.hist.max(),
                        warmup: t_s - seconds / 2.0 < warmup.as_secs_f64(),
                    };
                    let (done, p99_us) = recorder.progress();
                    let measured_since = *measured_start.lock().unwrap_or_else(|p| p.into_inner());
                    let position = match (timed, measured_since) {
                        (true, Some(m)) => (now - m).as_secs(),
                        (true, None) => 0,
                        (false, _) => done,
                    };
                    bar.update(&Tick {
                        position,
                        elapsed_s: t_s,
                        throughput: point.throughput_ops_per_sec,
                        p99_us,
                        errors,
                    });
                    timeline.push(point);
                }
                last = now;
                if stopping {
                    bar.finish();
                    return timeline;
                }
            }
        });
        (stop_tx, handle)
    };

    if !config.warmup.is_zero() {
        let warm = common.phase(
            false,
            Bound::Until(start + config.warmup),
            false,
            recorder.clone(),
            inserts.clone(),
        );
        targets.drive(warm, config.concurrency).await;
    }
    let measured_from = Instant::now();
    let cpu_before = meter.sample();
    *measured_start.lock().unwrap_or_else(|p| p.into_inner()) = Some(measured_from);
    let bound = match (config.operations, config.duration) {
        (_, Some(d)) => Bound::Until(measured_from + d),
        (Some(n), None) => Bound::Operations(n),
        (None, None) => Bound::Operations(0),
    };
    let measured = common.phase(false, bound, true, recorder.clone(), inserts.clone());
    targets.drive(measured, config.concurrency).await;
    let seconds = measured_from.elapsed().as_secs_f64();
    let cpu_after = meter.sample();

    let (stop, sampler) = sampler;
    let _ = stop.send(());
    let timeline = sampler.await.unwrap_or_default();
    if let Some(task) = fault_task {
        // A restart still pending when the run ended is not waited for.
        task.abort();
        let _ = task.await;
    }
    let mut run = PhaseReport::new("run", seconds, &recorder.totals());
    run.cpu = Some(meter.report(&cpu_before, &cpu_after, run.operations));
    let fault = config.fault.as_ref().map(|plan| {
        let log = std::mem::take(&mut *fault_log.lock().unwrap_or_else(|p| p.into_inner()));
        fault_report(plan, log, &timeline)
    });
    Ok(BenchReport {
        throughput_ops_per_sec: run.throughput_ops_per_sec,
        config,
        environment,
        load,
        run,
        timeline,
        fault,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonsense_is_refused() {
        let ok = BenchConfig::default();
        assert!(ok.validate().is_ok());
        let cases: Vec<(BenchConfig, &str)> = vec![
            (
                BenchConfig {
                    records: 0,
                    ..ok.clone()
                },
                "--records",
            ),
            (
                BenchConfig {
                    operations: Some(0),
                    ..ok.clone()
                },
                "--operations",
            ),
            (
                BenchConfig {
                    operations: None,
                    ..ok.clone()
                },
                "--operations",
            ),
            (
                BenchConfig {
                    duration: Some(Duration::from_secs(5)),
                    ..ok.clone()
                },
                "--duration",
            ),
            (
                BenchConfig {
                    operations: None,
                    duration: Some(Duration::ZERO),
                    ..ok.clone()
                },
                "--duration",
            ),
            (
                BenchConfig {
                    concurrency: 0,
                    ..ok.clone()
                },
                "--concurrency",
            ),
            (
                BenchConfig {
                    connections: 0,
                    ..ok.clone()
                },
                "--connections",
            ),
            (
                BenchConfig {
                    target_ops_per_sec: Some(-1.0),
                    ..ok.clone()
                },
                "--target",
            ),
            (
                BenchConfig {
                    target_ops_per_sec: Some(0.0),
                    ..ok.clone()
                },
                "--target",
            ),
            (
                BenchConfig {
                    target_ops_per_sec: Some(f64::NAN),
                    ..ok.clone()
                },
                "--target",
            ),
            (
                BenchConfig {
                    value_size: MAX_VALUE_SIZE + 1,
                    ..ok.clone()
                },
                "--value-size",
            ),
            (
                BenchConfig {
                    connect: vec![],
                    ..ok.clone()
                },
                "--connect",
            ),
            (
                BenchConfig {
                    r: Some(0),
                    ..ok.clone()
                },
                "--r/--w",
            ),
            (
                BenchConfig {
                    fault: Some(FaultPlan {
                        node: "n".into(),
                        at: Duration::from_secs(5),
                        restart_at: Some(Duration::from_secs(4)),
                    }),
                    ..ok.clone()
                },
                "--restart-at",
            ),
            (
                BenchConfig {
                    operations: None,
                    duration: Some(Duration::from_secs(10)),
                    fault: Some(FaultPlan {
                        node: "n".into(),
                        at: Duration::from_secs(10),
                        restart_at: None,
                    }),
                    ..ok.clone()
                },
                "--at",
            ),
        ];
        for (config, setting) in cases {
            match config.validate() {
                Err(BenchError::Invalid { setting: s, .. }) => assert_eq!(s, setting),
                other => panic!("{setting}: {other:?}"),
            }
        }
    }

    fn point(t_s: f64, operations: u64, errors: u64) -> TimelinePoint {
        TimelinePoint {
            t_s,
            seconds: 1.0,
            operations,
            errors,
            throughput_ops_per_sec: operations as f64,
            p50_us: 1,
            p99_us: 2,
            max_us: 3,
            warmup: t_s <= 1.0,
        }
    }

    #[test]
    fn fault_window_figures() {
        let timeline: Vec<TimelinePoint> = (1..=10)
            .map(|t| {
                let down = (4..=6).contains(&t);
                point(
                    f64::from(t),
                    if down { 100 } else { 1000 },
                    u64::from(down) * 5,
                )
            })
            .collect();
        let plan = FaultPlan {
            node: "node-2".into(),
            at: Duration::from_secs(3),
            restart_at: Some(Duration::from_secs(6)),
        };
        let log = FaultLog {
            killed_at_s: Some(3.0),
            restarted_at_s: Some(6.0),
            problems: vec![],
        };
        let r = fault_report(&plan, log, &timeline);
        assert_eq!(r.errors_in_window, 15);
        assert!((r.throughput_in_window_ops_per_sec - 100.0).abs() < 1e-9);
        assert!((r.throughput_before_ops_per_sec - 1000.0).abs() < 1e-9);
        // Never killed: no window figures.
        let r = fault_report(&plan, FaultLog::default(), &timeline);
        assert_eq!(r.killed_at_s, None);
        assert_eq!(r.errors_in_window, 0);
    }
}
