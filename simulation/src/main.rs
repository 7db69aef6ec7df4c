//! `ringkv-sim`: seeded simulations of ringkv.
//!
//! `ringkv-sim --seeds N | --seed S [--nodes K] [--duration 120s] [--quiet 30s]
//! [--check-determinism] [--unsafe-lww | --unsafe-reap]`
//! runs chaos simulations of whole clusters (one summary line per seed; a failure
//! prints the command that replays it). `ringkv-sim gossip-scale [--members N]...`
//! measures membership at scale. See SIMULATION.md.

use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use ringkv_simulation::chaos::{self, ChaosConfig, isolated};

#[derive(Parser, Debug)]
#[command(name = "ringkv-sim", about = "Seeded simulations of ringkv")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Run seeds 1..=N.
    #[arg(long, conflicts_with = "seed")]
    seeds: Option<u64>,
    /// Run this one seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Nodes per cluster, 3 to 9; a range such as `3-5` gives seed S
    /// `3 + S % 3` nodes (as CI's seeds do).
    #[arg(long, default_value = "3", value_parser = parse_nodes)]
    nodes: NodeCount,
    /// Simulated time of faults (`120s`, `2m`, or seconds).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Simulated quiet time after healing, before the final reads.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    quiet: Duration,
    /// Run every seed twice and compare trace hashes.
    #[arg(long = "check-determinism")]
    check_determinism: bool,
    /// Nodes resolve registers by last writer wins, which loses concurrent writes:
    /// shows that the checker notices. A seed "passes" here when lost writes are
    /// reported; the run succeeds when at least 90% of the seeds report them.
    #[arg(long = "unsafe-lww", conflicts_with = "unsafe_reap")]
    unsafe_lww: bool,
    /// Nodes reap tombstones on a timer without asking the other replicas, which
    /// brings deleted keys back: shows that the checker notices. A seed "passes"
    /// when resurrections are reported; the run succeeds when at least 90% do.
    #[arg(long = "unsafe-reap")]
    unsafe_reap: bool,
    /// Storage engine of the nodes: log or fjall.
    #[arg(long, default_value = "log")]
    storage: ringkv_storage::Backend,
    /// Seeds run at once, each in its own process (default: the number of CPUs).
    #[arg(long)]
    jobs: Option<usize>,
    /// Run one seed in this process and print its outcome as JSON (used by the
    /// runner, which gives every seed a fresh process).
    #[arg(long, hide = true, requires = "seed")]
    child: bool,
}

/// `90`, `90s`, `2m` or `500ms`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 2m or 500ms"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => n
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{s:?} is too long")),
        "ms" => Ok(Duration::from_millis(n)),
        _ => Err(format!("unknown unit {unit:?} in {s:?} (use s, m or ms)")),
    }
}

/// Log lines stamped with the simulation's clock (what a replay reproduces), not
/// the wall clock.
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(t) => write!(w, "{:>9.3}s", t.as_secs_f64()),
            None => write!(w, "{:>10}", "-"),
        }
    }
}

/// Nodes per run: one count, or a range spread over the seeds.
#[derive(Clone, Copy, Debug)]
struct NodeCount {
    lo: usize,
    hi: usize,
}

impl NodeCount {
    fn for_seed(self, seed: u64) -> usize {
        self.lo + (seed % (self.hi - self.lo + 1) as u64) as usize
    }
}

impl std::fmt::Display for NodeCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// `5` or `3-5`, within 3..=9.
fn parse_nodes(s: &str) -> Result<NodeCount, String> {
    let bad = || format!("{s:?} is not a node count (3 to 9) or a range like 3-5");
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        ),
        None => {
            let n = s.trim().parse().map_err(|_| bad())?;
            (n, n)
        }
    };
    if !(3..=9).contains(&lo) || !(lo..=9).contains(&hi) {
        return Err(bad());
    }
    Ok(NodeCount { lo, hi })
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Membership alone at scale: join, traffic, failure detection, dissemination.
    GossipScale {
        /// Member counts to run (repeatable).
        #[arg(long = "members", default_values_t = [100usize, 1000])]
        members: Vec<usize>,
        /// Seed of the run.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Ok(filter) = std::env::var("RINGKV_SIM_LOG") {
        // Logs of all hosts, each line in its turmoil `node` span.
        let _ = tracing_subscriber::fmt()
            .with_timer(SimTime)
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .try_init();
    }
    if let Some(Command::GossipScale { members, seed }) = cli.command {
        for m in members {
            if !(3..=100_000).contains(&m) {
                anyhow::bail!("--members must be between 3 and 100000");
            }
            println!("{}", ringkv_simulation::gossip_scale::run(m, seed));
        }
        return Ok(());
    }
    let seeds: Vec<u64> = match (cli.seeds, cli.seed) {
        (Some(n), None) => (1..=n).collect(),
        (None, Some(s)) => vec![s],
        _ => anyhow::bail!("give --seeds N or --seed S"),
    };
    if cli.duration < Duration::from_secs(1) || cli.duration > Duration::from_secs(24 * 3600) {
        anyhow::bail!("--duration must be between 1s and 24h");
    }
    if cli.quiet > Duration::from_secs(3600) {
        anyhow::bail!("--quiet must be at most 1h");
    }
    let config = |seed| ChaosConfig {
        seed,
        nodes: cli.nodes.for_seed(seed),
        duration: cli.duration,
        quiet: cli.quiet,
        unsafe_lww: cli.unsafe_lww,
        unsafe_reap: cli.unsafe_reap,
        storage: cli.storage,
    };
    if cli.child {
        let out = chaos::run(&config(seeds[0])).map_err(anyhow::Error::msg)?;
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let jobs = cli
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let wall = Instant::now();
    let runs = if cli.check_determinism { 2 } else { 1 };
    let cfgs: Vec<ChaosConfig> = seeds
        .iter()
        .flat_map(|&s| std::iter::repeat_n(config(s), runs))
        .collect();
    println!(
        "running {} seed(s) on {} nodes{}, {jobs} at a time, each in its own process",
        seeds.len(),
        cli.nodes,
        if runs == 2 { " twice" } else { "" }
    );
    let results = isolated::run_many(&exe, cfgs, jobs, &|_| {});
    let mut failed = 0;
    let mut flagged = 0;
    let mut simulated = 0.0;
    let count = seeds.len();
    let mut sweep = Sweep::default();
    for pair in results.chunks(runs) {
        let (cfg, first) = &pair[0];
        let seed = cfg.seed;
        let replay = cfg.replay_command();
        let out = match first {
            Ok(o) => o,
            Err(e) => {
                failed += 1;
                println!("seed {seed} FAILED: {e}\n  replay: {replay}");
                continue;
            }
        };
        simulated += out.simulated_s;
        sweep.add(cfg, out);
        let (found, what) = if cli.unsafe_reap {
            (out.resurrections(), "resurrections")
        } else {
            (out.lost_writes(), "lost writes")
        };
        let proving = cli.unsafe_lww || cli.unsafe_reap;
        let mut verdict = match (proving, out.passed()) {
            (false, true) => "ok".to_string(),
            (false, false) => "FAILED".to_string(),
            (true, _) if found > 0 => {
                flagged += 1;
                format!("flagged {found} {what}")
            }
            (true, _) => "NOT flagged".to_string(),
        };
        if let Some((_, again)) = pair.get(1) {
            match again {
                Ok(again) if again.trace_hash == out.trace_hash => {
                    verdict.push_str(" deterministic")
                }
                Ok(again) => {
                    verdict = format!(
                        "FAILED nondeterministic ({} vs {})",
                        out.trace_hash, again.trace_hash
                    );
                }
                Err(e) => verdict = format!("FAILED on replay: {e}"),
            }
        }
        println!(
            "seed {seed} {verdict}: faults={} acked={}/{} simulated={:.0}s trace={} knobs[{}]",
            out.faults, out.acked, out.attempted, out.simulated_s, out.trace_hash, out.knobs
        );
        if verdict.starts_with("FAILED") {
            failed += 1;
            for v in out.violations.iter().take(10) {
                println!("  {v}");
            }
            println!("  replay: {replay}");
            sweep.failures.push(format!(
                "seed {seed} ({} nodes): {}\n    replay: {replay}",
                cfg.nodes,
                out.violations
                    .first()
                    .map_or(verdict.as_str(), String::as_str)
            ));
        }
    }
    let wall_s = wall.elapsed().as_secs_f64();
    if count > 1 {
        sweep.print(count, failed);
    }
    println!(
        "{} simulated seconds in {wall_s:.1} wall seconds, {jobs} at a time ({:.0} simulated seconds per wall second)",
        simulated.round(),
        simulated * runs as f64 / wall_s.max(1e-9)
    );
    if cli.unsafe_reap {
        println!("--unsafe-reap: resurrections reported in {flagged} of {count} seeds");
        if flagged * 10 < count * 9 {
            anyhow::bail!("the checker missed resurrections in more than 10% of the seeds");
        }
    }
    if cli.unsafe_lww {
        println!("--unsafe-lww: lost writes reported in {flagged} of {count} seeds");
        if flagged * 10 < count * 9 {
            anyhow::bail!("the checker missed lost writes in more than 10% of the seeds");
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} seed(s) failed");
    }
    Ok(())
}

/// What a run of many seeds adds up to.
#[derive(Default)]
struct Sweep {
    /// Nemesis actions by knob, over all seeds.
    faults: std::collections::BTreeMap<String, u64>,
    /// (wall seconds, seed, nodes) of every seed that ran.
    walls: Vec<(f64, u64, usize)>,
    /// One line (and its replay command) per failed seed.
    failures: Vec<String>,
    acked: u64,
    attempted: u64,
    /// Disk faults that took effect, over all seeds.
    disk: chaos::DiskFaults,
    /// Membership changes carried out, over all seeds.
    membership: u64,
}

impl Sweep {
    fn add(&mut self, cfg: &ChaosConfig, out: &chaos::Outcome) {
        for (kind, n) in &out.faults_by_kind {
            *self.faults.entry(kind.clone()).or_default() += n;
        }
        self.walls.push((out.wall_s, cfg.seed, cfg.nodes));
        self.membership += out.membership_changes;
        self.disk.bits_flipped += out.disk.bits_flipped;
        self.disk.syncs_refused += out.disk.syncs_refused;
        self.disk.damaged_values_dropped += out.disk.damaged_values_dropped;
        self.acked += out.acked;
        self.attempted += out.attempted;
    }

    fn print(&mut self, count: usize, failed: usize) {
        println!("== summary");
        println!(
            "seeds: {count}, passed {}, failed {failed}; operations acknowledged {} of {}",
            count - failed,
            self.acked,
            self.attempted
        );
        let kinds: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        println!("faults injected by kind: {}", kinds.join(" "));
        println!(
            "membership changes carried out (joins, leaves, removes, lost disks): {}",
            self.membership
        );
        println!(
            "disk faults that took effect: {} bits flipped in sealed files, {} fsyncs refused, {} damaged values found and dropped",
            self.disk.bits_flipped, self.disk.syncs_refused, self.disk.damaged_values_dropped
        );
        self.walls.sort_by(|a, b| b.0.total_cmp(&a.0));
        let slowest: Vec<String> = self
            .walls
            .iter()
            .take(5)
            .map(|(w, seed, nodes)| format!("seed {seed} ({nodes} nodes) {w:.1} s"))
            .collect();
        println!("slowest seeds (wall): {}", slowest.join(", "));
        if self.failures.is_empty() {
            println!("failures: none");
        } else {
            println!("failures:");
            for f in &self.failures {
                println!("  {f}");
            }
        }
    }
}
