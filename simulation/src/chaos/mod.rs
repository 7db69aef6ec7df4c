//! Seeded chaos runs of whole clusters: real ringkv nodes as turmoil hosts, client
//! tasks running a workload, a nemesis injecting faults, then heal, quiet, final
//! reads, and a checker over the recorded history (DESIGN.md §9).
//!
//! - [`workload`]: what the clients do;
//! - [`nemesis`]: the faults and their per-seed knobs;
//! - [`final_read`]: what is read after the quiet period;
//! - [`check`]: the rules a run must pass;
//! - [`history`]: the record in between.

pub mod check;
pub mod final_read;
pub mod history;
pub mod isolated;
pub mod nemesis;
pub mod roster;
pub mod workload;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use rand::{SeedableRng, rngs::SmallRng};

use history::History;
pub use nemesis::Knobs;
use nemesis::Nemesis;

/// Client tasks per run.
const CLIENTS: usize = 2;
/// Hosts beyond the initial members, with nothing running until a join.
pub const SPARE_HOSTS: usize = 2;
/// Simulated time before the workload starts (the cluster forms).
const WARM_UP: Duration = Duration::from_secs(5);

/// What one run does.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    /// Seed of everything.
    pub seed: u64,
    /// Nodes in the cluster (3..=9).
    pub nodes: usize,
    /// Simulated length of the fault phase.
    pub duration: Duration,
    /// Simulated quiet period after healing (hints, anti-entropy).
    pub quiet: Duration,
    /// Registers resolve by last writer wins (to show the checker sees lost writes).
    pub unsafe_lww: bool,
    /// Tombstones are reaped on a timer without acknowledgements (to show the
    /// checker sees resurrections).
    pub unsafe_reap: bool,
    /// The nodes' storage engine.
    pub storage: ringkv_storage::Backend,
}

impl ChaosConfig {
    /// The run CI does for `seed`: 3–5 nodes, 60 s of faults, 30 s of quiet.
    pub fn ci(seed: u64) -> ChaosConfig {
        ChaosConfig {
            seed,
            nodes: 3 + (seed % 3) as usize,
            duration: Duration::from_secs(60),
            quiet: Duration::from_secs(30),
            unsafe_lww: false,
            unsafe_reap: false,
            storage: ringkv_storage::Backend::Log,
        }
    }

    /// The command line that replays this run.
    pub fn replay_command(&self) -> String {
        format!(
            "cargo run --release -p ringkv-simulation --bin ringkv-sim -- --seed {} --nodes {} --duration {} --quiet {}{}{}{}",
            self.seed,
            self.nodes,
            flag_duration(self.duration),
            flag_duration(self.quiet),
            if self.unsafe_lww { " --unsafe-lww" } else { "" },
            if self.unsafe_reap {
                " --unsafe-reap"
            } else {
                ""
            },
            match self.storage {
                ringkv_storage::Backend::Log => "",
                ringkv_storage::Backend::Fjall => " --storage fjall",
            }
        )
    }
}

/// Disk faults of one run that took effect.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DiskFaults {
    /// Bits flipped in sealed files.
    pub bits_flipped: u64,
    /// fsyncs refused by failing disks.
    pub syncs_refused: u64,
    /// Values found damaged and dropped, by the nodes' counts at the end.
    pub damaged_values_dropped: u64,
}

/// The result of one run.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    /// Seed.
    pub seed: u64,
    /// Fault rates of this seed.
    pub knobs: Knobs,
    /// Nemesis actions taken.
    pub faults: u64,
    /// Nemesis actions by knob (heals included).
    #[serde(default)]
    pub faults_by_kind: std::collections::BTreeMap<String, u64>,
    /// Membership changes carried out (joins, leaves, removes, lost disks).
    #[serde(default)]
    pub membership_changes: u64,
    /// Disk faults that took effect: bits flipped in sealed files, fsyncs refused,
    /// values the nodes found damaged and dropped (counted since each last start).
    #[serde(default)]
    pub disk: DiskFaults,
    /// Wall seconds the run's process took (set by the runner, not the run).
    #[serde(default)]
    pub wall_s: f64,
    /// Operations acknowledged.
    pub acked: u64,
    /// Operations attempted.
    pub attempted: u64,
    /// Simulated seconds.
    pub simulated_s: f64,
    /// Digest of the history of operations and results.
    pub trace_hash: String,
    /// What the checker found wrong (empty = pass).
    pub violations: Vec<String>,
}

impl Outcome {
    /// Whether the run injected faults, did work, and passed the checker.
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.faults > 0 && self.acked > 0
    }

    /// Resurrections among the violations: values held at the end that an
    /// acknowledged write (a delete, say) covered.
    pub fn resurrections(&self) -> usize {
        self.violations
            .iter()
            .filter(|v| v.starts_with(check::RESURRECTED))
            .count()
    }

    /// Acknowledged writes the checker found lost.
    pub fn lost_writes(&self) -> usize {
        self.violations
            .iter()
            .filter(|v| v.starts_with(check::LOST))
            .count()
    }
}

/// Runs one seed.
///
/// # Errors
/// If the simulation itself fails (a host returned an error, or it ran out of time).
pub fn run(cfg: &ChaosConfig) -> Result<Outcome, String> {
    let dir = scratch_dir(cfg.seed)?;
    let result = simulate(cfg, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn simulate(cfg: &ChaosConfig, dir: &std::path::Path) -> Result<Outcome, String> {
    if !(3..=9).contains(&cfg.nodes) {
        return Err(format!("{} nodes: a run needs 3 to 9", cfg.nodes));
    }
    let mut rng = SmallRng::seed_from_u64(cfg.seed);
    let knobs = Knobs::draw(&mut rng);
    let fault_end = WARM_UP + cfg.duration;
    // Faults, the operator's last changes (a leave waits for its handoff, at most
    // four minutes), quiet, up to two minutes waiting to heal, the final reads.
    let limit = fault_end + cfg.quiet + Duration::from_secs(480);
    let mut sim = turmoil::Builder::new()
        .rng_seed(cfg.seed)
        .simulation_duration(limit)
        .min_message_latency(Duration::from_micros(200))
        .max_message_latency(Duration::from_millis(3))
        // A listen backlog like a real host's (turmoil panics when it overflows).
        .tcp_capacity(4096)
        .build();
    let hosts = cfg.nodes + SPARE_HOSTS;
    let roster = Rc::new(RefCell::new(roster::Roster::new(cfg.nodes, SPARE_HOSTS)));
    let mut disks = Vec::new();
    for i in 1..=hosts {
        let data = dir.join(format!("n{i}"));
        let disk = ringkv_storage::SimulatedDisk::new();
        disks.push(nemesis::NodeDisk {
            name: format!("n{i}"),
            disk: disk.clone(),
            data: data.clone(),
            log: cfg.storage == ringkv_storage::Backend::Log,
        });
        let options = crate::host::HostOptions {
            unsafe_lww: cfg.unsafe_lww,
            unsafe_reap: cfg.unsafe_reap,
            disk: Some(disk),
            tweak: None,
            storage: cfg.storage,
            node_id: None,
            // Every initial host is a seed, so a fresh node finds the cluster
            // whichever of them are gone.
            seeds: (1..=cfg.nodes).collect(),
        };
        let (roster, seed) = (roster.clone(), cfg.seed);
        sim.host(format!("n{i}"), move || {
            // What runs on this machine now: the roster says (a spare runs nothing
            // until it joins; a wiped one starts under a new id).
            let slot = roster.borrow().slots[i - 1].clone();
            let actor = seed
                .wrapping_mul(31)
                .wrapping_add(i as u64)
                .wrapping_add(1000 * u64::from(slot.incarnation));
            let options = crate::host::HostOptions {
                node_id: slot.id.clone(),
                ..options.clone()
            };
            let data = data.clone();
            async move {
                if slot.id.is_none() {
                    std::future::pending::<()>().await;
                }
                crate::host::run_with(i, data, actor, options).await
            }
        });
    }
    let history = Rc::new(RefCell::new(History {
        print: std::env::var_os("RINGKV_SIM_HISTORY").is_some(),
        ..History::default()
    }));
    let mut clients: Vec<String> = Vec::new();
    for c in 0..CLIENTS {
        let (h, seed, nodes) = (history.clone(), cfg.seed, cfg.nodes);
        let name = format!("client{c}");
        sim.client(name.as_str(), async move {
            tokio::time::sleep(WARM_UP).await;
            workload::client(c, seed, nodes, hosts, fault_end - WARM_UP, h).await
        });
        clients.push(name);
    }
    {
        let roster = roster.clone();
        sim.client("operator", roster::operator(roster, hosts));
        clients.push("operator".into());
    }
    {
        let (h, quiet, roster) = (history.clone(), cfg.quiet, roster.clone());
        sim.client("checker", async move {
            tokio::time::sleep(fault_end).await;
            final_read::run(roster, CLIENTS, quiet, h).await
        });
        clients.push("checker".into());
    }
    let clients: Vec<&str> = clients.iter().map(String::as_str).collect();
    let mut nemesis = Nemesis::new(
        knobs.clone(),
        rng,
        disks,
        roster.clone(),
        &clients,
        WARM_UP + Duration::from_secs(3),
    );
    let mut healed = false;
    loop {
        let now = sim.elapsed();
        if now < fault_end {
            nemesis.tick(&mut sim, now);
        } else if !healed {
            healed = true;
            nemesis.heal_all(&mut sim, now);
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return Err(format!("simulation failed: {e}")),
        }
    }
    let simulated_s = sim.elapsed().as_secs_f64();
    drop(sim);
    if let Some(e) = nemesis.disk_errors.first() {
        return Err(format!("a simulated power loss failed: {e}"));
    }
    {
        let r = roster.borrow();
        let mut h = history.borrow_mut();
        h.disk_losses = r.disk_losses.clone();
        h.exposed = r.exposed.clone();
    }
    let h = history.borrow();
    Ok(Outcome {
        seed: cfg.seed,
        knobs,
        faults: nemesis.faults,
        faults_by_kind: nemesis.by_kind.clone(),
        membership_changes: h.membership_changes,
        disk: DiskFaults {
            bits_flipped: nemesis.bits_flipped,
            syncs_refused: nemesis.refused_syncs(),
            damaged_values_dropped: h.damaged_values_dropped,
        },
        wall_s: 0.0,
        acked: h.acked,
        attempted: h.attempted,
        simulated_s,
        trace_hash: h.trace.clone().finalize().to_hex()[..16].to_string(),
        violations: check::check(&h),
    })
}

/// A duration as the CLI takes it.
fn flag_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn scratch_dir(seed: u64) -> Result<std::path::PathBuf, String> {
    // Runs of one seed may happen at once in one process (tests on threads).
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("ringkv-sim-{}-{seed}-{run}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}
