//! The benchmark harness: drives a node through the Rust client with a fixed number
//! of concurrent requests and reports throughput and latency percentiles from HDR
//! histograms.
//!
//! Phases: `load` writes each of `records` keys once (blind puts), then `read` issues
//! `operations` gets of keys drawn uniformly from the loaded ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::{RngExt, SeedableRng, rngs::SmallRng};
use serde::Serialize;

use crate::client::{Client, ClientError};

/// What to run.
#[derive(Clone, Debug, Serialize)]
pub struct BenchConfig {
    /// Node to connect to.
    pub connect: String,
    /// Keys written in the load phase.
    pub records: u64,
    /// Gets in the read phase.
    pub operations: u64,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Client connections the requests share.
    pub connections: usize,
    /// Bytes per value.
    pub value_size: usize,
    /// Seed of the key chooser.
    pub seed: u64,
    /// Send each request straight to a primary of its key (otherwise everything goes
    /// to `connect`, which forwards writes it does not own).
    pub routing: bool,
}

/// Figures of one phase.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseReport {
    /// Phase name (`put` or `get`).
    pub phase: String,
    /// Operations completed successfully.
    pub operations: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Wall time of the phase, in seconds.
    pub seconds: f64,
    /// Successful operations per second.
    pub throughput_ops_per_sec: f64,
    /// Median latency, microseconds.
    pub p50_us: u64,
    /// 95th percentile latency, microseconds.
    pub p95_us: u64,
    /// 99th percentile latency, microseconds.
    pub p99_us: u64,
    /// 99.9th percentile latency, microseconds.
    pub p999_us: u64,
    /// Largest latency, microseconds.
    pub max_us: u64,
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// Configuration used.
    pub config: BenchConfig,
    /// One entry per phase.
    pub phases: Vec<PhaseReport>,
}

fn key_of(i: u64) -> Vec<u8> {
    format!("user{i:012}").into_bytes()
}

async fn phase(
    name: &str,
    clients: &[Client],
    config: &BenchConfig,
    total: u64,
    is_put: bool,
) -> Result<PhaseReport, ClientError> {
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let value = Arc::new(vec![b'x'; config.value_size]);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(config.concurrency);
    for worker in 0..config.concurrency {
        let client = clients[worker % clients.len()].clone();
        let next = next.clone();
        let errors = errors.clone();
        let value = value.clone();
        let records = config.records.max(1);
        let mut rng = SmallRng::seed_from_u64(
            config.seed ^ (worker as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        tasks.push(tokio::spawn(async move {
            // Latencies from 1 µs to 60 s with 3 significant digits.
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = Instant::now();
                let ok = if is_put {
                    client.put(&key_of(i), &value, None).await.is_ok()
                } else {
                    let k = rng.random_range(0..records);
                    client.get(&key_of(k)).await.is_ok()
                };
                let us = t.elapsed().as_micros() as u64;
                if ok {
                    hist.saturating_record(us.max(1));
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            hist
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    for t in tasks {
        let h = t.await.map_err(|e| ClientError::Unavailable {
            addr: config.connect.clone(),
            reason: format!("worker failed: {e}"),
        })?;
        hist.add(h).expect("same bounds");
    }
    let seconds = started.elapsed().as_secs_f64();
    let ok = hist.len();
    Ok(PhaseReport {
        phase: name.to_string(),
        operations: ok,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        throughput_ops_per_sec: ok as f64 / seconds.max(1e-9),
        p50_us: hist.value_at_quantile(0.50),
        p95_us: hist.value_at_quantile(0.95),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
    })
}

/// Runs the benchmark.
///
/// # Errors
/// [`ClientError`] if the node cannot be reached.
pub async fn run(config: BenchConfig) -> Result<BenchReport, ClientError> {
    let mut clients = Vec::with_capacity(config.connections.max(1));
    for _ in 0..config.connections.max(1) {
        let mut c = Client::connect(&config.connect).await?;
        c.set_timeout(Duration::from_secs(30));
        if !config.routing {
            c.disable_routing();
        }
        clients.push(c);
    }
    let put = phase("put", &clients, &config, config.records, true).await?;
    let get = phase("get", &clients, &config, config.operations, false).await?;
    Ok(BenchReport {
        config,
        phases: vec![put, get],
    })
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<6} {:>10} {:>7} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "phase", "ops", "errors", "ops/s", "p50 µs", "p95 µs", "p99 µs", "p99.9", "max µs"
        )?;
        for p in &self.phases {
            writeln!(
                f,
                "{:<6} {:>10} {:>7} {:>12.0} {:>8} {:>8} {:>8} {:>8} {:>8}",
                p.phase,
                p.operations,
                p.errors,
                p.throughput_ops_per_sec,
                p.p50_us,
                p.p95_us,
                p.p99_us,
                p.p999_us,
                p.max_us
            )?;
        }
        Ok(())
    }
}
