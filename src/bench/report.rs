//! The figures of a run: per phase and per operation kind, the per-second timeline,
//! the fault window; as JSON (every figure and the whole configuration) and as a
//! table for people.

use std::collections::BTreeMap;
use std::fmt;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::BenchConfig;
use super::recorder::{KindTotals, latency_histogram};
use super::workload::OpKind;

/// Latency figures of one histogram, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 95th percentile.
    pub p95_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
}

impl Latency {
    /// The figures of `h` (all zero when it is empty).
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p95_us: h.value_at_quantile(0.95),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// Figures of one operation kind in one phase.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpReport {
    /// Successful operations.
    pub operations: u64,
    /// Failed operations.
    pub errors: u64,
    /// Failed operations by kind of error.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Reads that found nothing (not errors: the key may not exist).
    pub not_found: u64,
    /// Most siblings one read returned.
    pub max_siblings: usize,
    /// Successful operations per second of the phase.
    pub throughput_ops_per_sec: f64,
    /// Latencies of the successful operations.
    #[serde(flatten)]
    pub latency: Latency,
}

/// Figures of one phase (load or run).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhaseReport {
    /// `load` or `run`.
    pub phase: String,
    /// Measured seconds (the warm-up excluded).
    pub seconds: f64,
    /// Successful operations.
    pub operations: u64,
    /// Failed operations.
    pub errors: u64,
    /// Failed operations by kind of error, over all operation kinds.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Successful operations per second.
    pub throughput_ops_per_sec: f64,
    /// Latencies of every successful operation.
    #[serde(flatten)]
    pub latency: Latency,
    /// Per operation kind (only the kinds that ran).
    pub ops: BTreeMap<String, OpReport>,
    /// CPU the phase cost across the bench and the servers on this machine.
    pub cpu: Option<super::CpuReport>,
}

impl PhaseReport {
    /// Builds the report of a phase from its totals.
    pub fn new(phase: &str, seconds: f64, totals: &[KindTotals]) -> PhaseReport {
        let seconds = seconds.max(1e-9);
        let mut all = latency_histogram();
        let mut ops = BTreeMap::new();
        let mut errors_by_kind: BTreeMap<String, u64> = BTreeMap::new();
        for kind in OpKind::ALL {
            let t = &totals[kind.index()];
            if t.hist.is_empty() && t.errors.is_empty() {
                continue;
            }
            // Same bounds everywhere: adding cannot fail.
            let _ = all.add(&t.hist);
            for (e, n) in &t.errors {
                *errors_by_kind.entry((*e).to_string()).or_insert(0) += n;
            }
            ops.insert(
                kind.name().to_string(),
                OpReport {
                    operations: t.hist.len(),
                    errors: t.error_count(),
                    errors_by_kind: t
                        .errors
                        .iter()
                        .map(|(e, n)| ((*e).to_string(), *n))
                        .collect(),
                    not_found: t.not_found,
                    max_siblings: t.max_siblings,
                    throughput_ops_per_sec: t.hist.len() as f64 / seconds,
                    latency: Latency::of(&t.hist),
                },
            );
        }
        PhaseReport {
            phase: phase.to_string(),
            seconds,
            operations: all.len(),
            errors: errors_by_kind.values().sum(),
            errors_by_kind,
            throughput_ops_per_sec: all.len() as f64 / seconds,
            latency: Latency::of(&all),
            ops,
            cpu: None,
        }
    }
}

/// One second of the run phase.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimelinePoint {
    /// End of the bucket, seconds since the run phase started.
    pub t_s: f64,
    /// Length of the bucket, seconds.
    pub seconds: f64,
    /// Successful operations that completed in it.
    pub operations: u64,
    /// Failed operations.
    pub errors: u64,
    /// Successful operations per second.
    pub throughput_ops_per_sec: f64,
    /// Median latency of the bucket (0 when nothing completed).
    pub p50_us: u64,
    /// 99th percentile latency of the bucket.
    pub p99_us: u64,
    /// Largest latency of the bucket.
    pub max_us: u64,
    /// Whether the bucket was (mostly) in the warm-up.
    pub warmup: bool,
}

/// The node taken down during the run and when.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FaultReport {
    /// The node.
    pub node: String,
    /// When it was to be killed, seconds into the run phase.
    pub kill_at_s: f64,
    /// When it was killed (`None` if the run ended first or killing failed).
    pub killed_at_s: Option<f64>,
    /// When it was to be restarted.
    pub restart_at_s: Option<f64>,
    /// When it answered again after the restart.
    pub restarted_at_s: Option<f64>,
    /// What went wrong with killing or restarting it.
    pub problems: Vec<String>,
    /// Failed operations of the buckets in the window (from the kill to the end of
    /// the run when it was not restarted).
    pub errors_in_window: u64,
    /// Successful operations per second in the window.
    pub throughput_in_window_ops_per_sec: f64,
    /// Successful operations per second before the kill (after any warm-up).
    pub throughput_before_ops_per_sec: f64,
}

/// Where the bench ran.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Environment {
    /// ringkv version of the bench.
    pub ringkv_version: String,
    /// Version of the node the bench connected to first.
    pub server_version: String,
    /// Node id of that node.
    pub server_node_id: String,
    /// Members of the cluster when the run started.
    pub cluster_members: usize,
    /// Replicas per key.
    pub cluster_n: u8,
    /// CPUs the bench machine has.
    pub cpus: usize,
    /// Operating system.
    pub os: String,
    /// Unix time the bench started.
    pub started_unix_s: u64,
}

/// The whole run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchReport {
    /// The configuration, every knob.
    pub config: BenchConfig,
    /// Where it ran.
    pub environment: Environment,
    /// Throughput of the run phase (the headline figure).
    pub throughput_ops_per_sec: f64,
    /// The load phase (`None` with `--skip-load`).
    pub load: Option<PhaseReport>,
    /// The run phase.
    pub run: PhaseReport,
    /// The run phase in one-second buckets.
    pub timeline: Vec<TimelinePoint>,
    /// The fault window, if one was asked for.
    pub fault: Option<FaultReport>,
}

fn ms(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.0}", us as f64 / 1000.0)
    } else {
        format!("{:.2}", us as f64 / 1000.0)
    }
}

fn row(f: &mut fmt::Formatter<'_>, phase: &str, op: &str, o: &OpReport) -> fmt::Result {
    writeln!(
        f,
        "{:<5} {:<18} {:>10} {:>7} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>8}",
        phase,
        op,
        o.operations,
        o.errors,
        o.throughput_ops_per_sec,
        ms(o.latency.p50_us),
        ms(o.latency.p95_us),
        ms(o.latency.p99_us),
        ms(o.latency.p999_us),
        ms(o.latency.max_us),
    )
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(f, "{}", c.describe())?;
        writeln!(
            f,
            "{:<5} {:<18} {:>10} {:>7} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "phase",
            "operation",
            "ops",
            "errors",
            "ops/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "p99.9",
            "max ms"
        )?;
        for p in self.load.iter().chain(std::iter::once(&self.run)) {
            for (name, o) in &p.ops {
                row(f, &p.phase, name, o)?;
            }
            if p.ops.len() > 1 {
                let all = OpReport {
                    operations: p.operations,
                    errors: p.errors,
                    errors_by_kind: p.errors_by_kind.clone(),
                    not_found: 0,
                    max_siblings: 0,
                    throughput_ops_per_sec: p.throughput_ops_per_sec,
                    latency: p.latency.clone(),
                };
                row(f, &p.phase, "all", &all)?;
            }
        }
        for p in self.load.iter().chain(std::iter::once(&self.run)) {
            if let Some(cpu) = &p.cpu {
                write!(
                    f,
                    "{:<5} cpu: {:.0} us per operation ({:.0} in {} server process{}, {:.0} in the bench)",
                    p.phase,
                    cpu.us_per_op,
                    cpu.server_us_per_op,
                    cpu.servers_measured,
                    if cpu.servers_measured == 1 { "" } else { "es" },
                    cpu.us_per_op - cpu.server_us_per_op,
                )?;
                if cpu.servers_unmeasured.is_empty() {
                    writeln!(f)?;
                } else {
                    writeln!(f, "; not measured: {}", cpu.servers_unmeasured.join(", "))?;
                }
            }
        }
        if !self.run.errors_by_kind.is_empty() {
            let parts: Vec<String> = self
                .run
                .errors_by_kind
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            writeln!(f, "run errors: {}", parts.join(", "))?;
        }
        let not_found: u64 = self.run.ops.values().map(|o| o.not_found).sum();
        if not_found > 0 {
            writeln!(f, "reads that found nothing: {not_found}")?;
        }
        if let Some(fault) = &self.fault {
            let when = |t: Option<f64>| t.map_or("never".to_string(), |t| format!("{t:.1} s"));
            writeln!(
                f,
                "fault: {} killed at {}, back at {}; {:.0} ops/s before, {:.0} ops/s and {} errors in the window",
                fault.node,
                when(fault.killed_at_s),
                when(fault.restarted_at_s),
                fault.throughput_before_ops_per_sec,
                fault.throughput_in_window_ops_per_sec,
                fault.errors_in_window
            )?;
            for p in &fault.problems {
                writeln!(f, "fault problem: {p}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::recorder::{Outcome, Recorder};

    #[test]
    fn phase_report_sums_kinds_and_errors() {
        let r = Recorder::new();
        let ok = Outcome::Ok {
            not_found: false,
            siblings: 1,
        };
        for i in 1..=100 {
            r.record(OpKind::Read, i * 10, ok, true);
            r.record(OpKind::Update, i * 20, ok, true);
        }
        r.record(OpKind::Update, 5, Outcome::Failed("timeout"), true);
        r.record(OpKind::Read, 5, Outcome::Failed("connect"), true);
        let p = PhaseReport::new("run", 2.0, &r.totals());
        assert_eq!(p.operations, 200);
        assert_eq!(p.errors, 2);
        assert_eq!(p.throughput_ops_per_sec, 100.0);
        assert_eq!(p.ops["read"].operations, 100);
        assert_eq!(p.ops["update"].errors_by_kind["timeout"], 1);
        assert_eq!(p.errors_by_kind["connect"], 1);
        assert!(
            !p.ops.contains_key("insert"),
            "kinds that did not run are left out"
        );
        assert!(p.ops["update"].latency.p50_us > p.ops["read"].latency.p50_us);
        let v = serde_json::to_value(&p).expect("json");
        assert!(v["p99_us"].as_u64().expect("p99") > 0);
        assert!(v["ops"]["read"]["p50_us"].is_u64());
        assert!(v["throughput_ops_per_sec"].is_f64());
    }
}
