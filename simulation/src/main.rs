//! `ringkv-sim`: seeded simulations of ringkv.
//!
//! `ringkv-sim --seeds N | --seed S [--nodes K] [--duration SECS] [--check-determinism]`
//! runs chaos simulations of whole clusters (one summary line per seed; a failure
//! prints the command that replays it). `ringkv-sim gossip-scale [--members N]...`
//! measures membership at scale. See SIMULATION.md.

use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use ringkv_simulation::chaos::{self, ChaosConfig};

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
    /// Nodes per cluster (3 to 9).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Simulated seconds of faults.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Simulated seconds of quiet after healing.
    #[arg(long, default_value_t = 30)]
    quiet: u64,
    /// Run every seed twice and compare trace hashes.
    #[arg(long = "check-determinism")]
    check_determinism: bool,
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
    if !(3..=9).contains(&cli.nodes) {
        anyhow::bail!("--nodes must be between 3 and 9");
    }
    let seeds: Vec<u64> = match (cli.seeds, cli.seed) {
        (Some(n), None) => (1..=n).collect(),
        (None, Some(s)) => vec![s],
        _ => anyhow::bail!("give --seeds N or --seed S"),
    };
    let wall = Instant::now();
    let mut failed = 0;
    let mut simulated = 0.0;
    for seed in seeds {
        let cfg = ChaosConfig {
            seed,
            nodes: cli.nodes,
            duration: Duration::from_secs(cli.duration),
            quiet: Duration::from_secs(cli.quiet),
        };
        let replay = format!(
            "cargo run --release -p ringkv-simulation --bin ringkv-sim -- --seed {seed} --nodes {} --duration {} --quiet {}",
            cli.nodes, cli.duration, cli.quiet
        );
        let out = match chaos::run(&cfg) {
            Ok(o) => o,
            Err(e) => {
                failed += 1;
                println!("seed {seed} FAILED: {e}\n  replay: {replay}");
                continue;
            }
        };
        simulated += out.simulated_s;
        let mut verdict = if out.violations.is_empty() {
            "ok"
        } else {
            "FAILED"
        }
        .to_string();
        if cli.check_determinism {
            match chaos::run(&cfg) {
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
        }
    }
    println!(
        "{} simulated seconds in {:.1} wall seconds",
        simulated.round(),
        wall.elapsed().as_secs_f64()
    );
    if failed > 0 {
        anyhow::bail!("{failed} seed(s) failed");
    }
    Ok(())
}
