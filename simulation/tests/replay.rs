//! Replays: a seed run twice, each time in a fresh process, gives the same trace
//! hash. Alone in its test binary, so no other test loads the machine meanwhile
//! (see SIMULATION.md on what load still changes).

use std::time::Duration;

use ringkv_simulation::chaos::{ChaosConfig, isolated};

#[test]
fn seeds_replay_with_identical_trace_hashes() {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_ringkv-sim"));
    for seed in [2u64, 3] {
        let cfg = ChaosConfig {
            nodes: 3,
            duration: Duration::from_secs(20),
            quiet: Duration::from_secs(20),
            ..ChaosConfig::ci(seed)
        };
        let a = isolated::run(exe, &cfg).expect("run");
        assert!(a.passed(), "seed {seed}: {a:?}");
        let b = isolated::run(exe, &cfg).expect("replay");
        assert_eq!(
            a.trace_hash,
            b.trace_hash,
            "seed {seed} replays identically\n  replay: {}",
            cfg.replay_command()
        );
    }
}
