//! `ringkv-sim`: seeded simulations of ringkv.
//!
//! Today: `ringkv-sim gossip-scale [--members N]... [--seed S]` runs the membership
//! state machine with N members on a deterministic event queue and prints detection
//! and dissemination figures (see SIMULATION.md).

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "ringkv-sim", about = "Seeded simulations of ringkv")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    match cli.command {
        Command::GossipScale { members, seed } => {
            for m in members {
                if !(3..=100_000).contains(&m) {
                    anyhow::bail!("--members must be between 3 and 100000");
                }
                println!("{}", ringkv_simulation::gossip_scale::run(m, seed));
            }
        }
    }
    Ok(())
}
