//! A ringkv node as a turmoil host: host `n{i}`, listening on port 7400 of its host
//! address, seeded with `n1`, on the simulated network.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ringkv::node::{Node, NodeConfig};
use ringkv_storage::{Disk, Driver, SimulatedDisk, SyncPolicy};

use crate::SimNetwork;

/// RPC (and gossip) address of node `n{i}`; only callable inside a simulation.
pub fn addr_of(i: usize) -> SocketAddr {
    SocketAddr::new(turmoil::lookup(format!("n{i}")), 7400)
}

/// The configuration simulated nodes run with: the default sync policy (`interval`,
/// 100 ms) on a simulated disk whose unsynced bytes a crash drops, synced on the
/// simulation's clock; 2 s request deadlines, anti-entropy every 2 s.
pub fn config(i: usize, data: PathBuf, disk: Arc<SimulatedDisk>) -> NodeConfig {
    let mut c = NodeConfig::new(data, addr_of(i));
    c.node_id = Some(format!("n{i}"));
    c.sync = SyncPolicy::Interval(SyncPolicy::DEFAULT_INTERVAL);
    c.disk = Disk::Simulated(disk);
    c.store_driver = Driver::Caller;
    c.cluster.seeds = vec![addr_of(1)];
    c.cluster.settings.timeout = Duration::from_secs(2);
    c.repair.interval = Duration::from_secs(2);
    c.segment_bytes = Some(SEGMENT_BYTES);
    c
}

/// Log segments of simulated nodes: small, so a run seals several and the nemesis
/// has sealed files to damage.
pub const SEGMENT_BYTES: u64 = 256 << 10;

/// The key the simulated cluster shares (the default's): what an operator's tool
/// needs for `leave` and `remove` through the peer channel.
pub fn cluster_key() -> ringkv_gossip::ClusterKey {
    ringkv::node::ClusterConfig::default().key
}

/// How a simulated node differs from the default.
#[derive(Clone, Debug, Default)]
pub struct HostOptions {
    /// Registers resolve by last writer wins (to show the checker sees lost writes).
    pub unsafe_lww: bool,
    /// Tombstones reaped without acknowledgements (to show the checker sees
    /// resurrections).
    pub unsafe_reap: bool,
    /// The node's disk; the nemesis cuts it back to its last syncs on a crash. A
    /// disk of its own when `None`.
    pub disk: Option<Arc<SimulatedDisk>>,
    /// Changes to the configuration (scenario tests: hints off, rare anti-entropy).
    pub tweak: Option<fn(&mut NodeConfig)>,
    /// The storage engine (fjall: a crash loses only what never reached the OS,
    /// since its preallocated journals hide what a sync covered from the disk model).
    pub storage: ringkv_storage::Backend,
    /// The node's id (`n{i}` when `None`).
    pub node_id: Option<String>,
    /// Hosts it announces itself to (`n1` when empty).
    pub seeds: Vec<usize>,
}

/// Starts node `n{i}` with actor id `actor` and serves clients until the host stops.
///
/// # Errors
/// If the node cannot open its directory or bind its address.
pub async fn run(i: usize, data: PathBuf, actor: u64) -> Result<(), Box<dyn std::error::Error>> {
    run_with(i, data, actor, HostOptions::default()).await
}

/// As [`run`], with `options`.
///
/// # Errors
/// If the node cannot open its directory or bind its address.
pub async fn run_with(
    i: usize,
    data: PathBuf,
    actor: u64,
    options: HostOptions,
) -> Result<(), Box<dyn std::error::Error>> {
    let disk = options.disk.unwrap_or_default();
    let mut config = config(i, data, disk);
    if let Some(id) = options.node_id {
        config.node_id = Some(id);
    }
    if !options.seeds.is_empty() {
        config.cluster.seeds = options.seeds.iter().map(|&s| addr_of(s)).collect();
    }
    config.unsafe_lww = options.unsafe_lww;
    config.repair.unsafe_reap = options.unsafe_reap;
    // Virtual time, so a rebooted host's epoch is higher and the run replays.
    config.gossip_epoch = Some(turmoil::elapsed().as_micros() as u64 + 1);
    config.storage = options.storage;
    if let Some(tweak) = options.tweak {
        tweak(&mut config);
    }
    let node = Node::start(
        config,
        move || actor,
        SimNetwork,
        tokio_util::sync::CancellationToken::new(),
    )
    .await?;
    let listener = ringkv::rpc::server::bind(&SimNetwork, &node).await?;
    ringkv::rpc::server::serve(listener, node, std::future::pending()).await;
    Ok(())
}
