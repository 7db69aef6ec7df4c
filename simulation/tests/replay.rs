//! Replays: a seed run twice, each time in a fresh process, gives the same trace
//! hash. Alone in its test binary, so no other test loads the machine meanwhile
//! (see SIMULATION.md on what load still changes).

use std::time::Duration;

use ringkv_simulation::chaos::{ChaosConfig, isolated};

#[test]
fn seeds_replay_with_identical_trace_hashes() {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_ringkv-sim"));
    // 3, 5 and 9 nodes: 5-node runs once diverged (unbiased `select!`s whose
    // branch order tokio draws from a per-process seed; SIMULATION.md).
    for (seed, nodes) in [(2u64, 3), (6, 5), (13, 9)] {
        let cfg = ChaosConfig {
            nodes,
            duration: Duration::from_secs(20),
            quiet: Duration::from_secs(20),
            ..ChaosConfig::ci(seed)
        };
        let a = isolated::run(exe, &cfg).expect("run");
        assert!(a.passed(), "seed {seed} on {nodes} nodes: {a:?}");
        let b = isolated::run(exe, &cfg).expect("replay");
        assert_eq!(
            a.trace_hash,
            b.trace_hash,
            "seed {seed} on {nodes} nodes replays identically\n  replay: {}",
            cfg.replay_command()
        );
    }
}

/// Every `select!` in the node's code is `biased;`: an unbiased one starts polling
/// at a branch drawn from tokio's per-process seed, so two processes given the same
/// simulation seed take different branches when two are ready in the same tick.
#[test]
fn every_select_in_the_node_code_is_biased() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut unbiased = Vec::new();
    let mut dirs: Vec<std::path::PathBuf> = ["src", "gossip/src", "storage/src"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    let mut seen = 0;
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read a source folder") {
            let path = entry.expect("a folder entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read a source file");
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                if line.trim_end().ends_with("select! {") {
                    seen += 1;
                    if lines.get(i + 1).is_none_or(|next| next.trim() != "biased;") {
                        unbiased.push(format!("{}:{}", path.display(), i + 1));
                    }
                }
            }
        }
    }
    assert!(
        seen > 10,
        "found only {seen} select!s: is the scan looking in the right place?"
    );
    assert!(
        unbiased.is_empty(),
        "select! without `biased;`: {unbiased:?}"
    );
}
