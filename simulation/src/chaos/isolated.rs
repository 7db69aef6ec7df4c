//! Every run in a fresh process.
//!
//! A run's trace depends only on its seed and options *within a fresh process*:
//! the second run of a seed in one process came out different (seed 1 on 5 nodes,
//! every time), while fresh processes always agreed. Process-wide state outside
//! ringkv (tokio's global task ids, for one, which decide the order in which a
//! crashed host's tasks are dropped) carries over from one run to the next. So the
//! CLI and the tests run each seed as `ringkv-sim --child ...`, which prints the
//! outcome as one JSON line, and a seed found failing anywhere replays identically
//! from its command line.

use std::path::Path;
use std::process::{Command, Stdio};

use super::{ChaosConfig, Outcome};

/// Runs `cfg` in a child process of the `ringkv-sim` binary at `exe`.
///
/// # Errors
/// If the child cannot start, fails, or prints no outcome.
pub fn run(exe: &Path, cfg: &ChaosConfig) -> Result<Outcome, String> {
    let mut cmd = Command::new(exe);
    cmd.arg("--child")
        .args(["--seed", &cfg.seed.to_string()])
        .args(["--nodes", &cfg.nodes.to_string()])
        .args(["--duration", &super::flag_duration(cfg.duration)])
        .args(["--quiet", &super::flag_duration(cfg.quiet)]);
    if cfg.unsafe_lww {
        cmd.arg("--unsafe-lww");
    }
    if cfg.unsafe_reap {
        cmd.arg("--unsafe-reap");
    }
    if cfg.storage == ringkv_storage::Backend::Fjall {
        cmd.args(["--storage", "fjall"]);
    }
    let started = std::time::Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{'));
    match (out.status.success(), line) {
        (true, Some(line)) => serde_json::from_str::<Outcome>(line)
            .map(|mut o| {
                o.wall_s = started.elapsed().as_secs_f64();
                o
            })
            .map_err(|e| format!("unreadable outcome {line:?}: {e}")),
        _ => Err(format!(
            "the run's process ended with {}: {}",
            out.status,
            stdout.trim()
        )),
    }
}

/// What a finished run reports.
pub type Done = (ChaosConfig, Result<Outcome, String>);

/// Runs every config, `jobs` processes at a time, calling `done` as each finishes;
/// returns the results in the order given.
pub fn run_many(
    exe: &Path,
    cfgs: Vec<ChaosConfig>,
    jobs: usize,
    done: &(dyn Fn(&Done) + Sync),
) -> Vec<Done> {
    let jobs = jobs.clamp(1, 64);
    let queue = std::sync::Mutex::new(cfgs.into_iter().enumerate().collect::<Vec<_>>());
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let next = {
                        let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
                        if q.is_empty() {
                            break;
                        }
                        q.remove(0)
                    };
                    let (i, cfg) = next;
                    let out = (cfg.clone(), run(exe, &cfg));
                    let mut all = results.lock().unwrap_or_else(|p| p.into_inner());
                    done(&out);
                    all.push((i, out));
                }
            });
        }
    });
    let mut all = results.into_inner().unwrap_or_else(|p| p.into_inner());
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, d)| d).collect()
}
