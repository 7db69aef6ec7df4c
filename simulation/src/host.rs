//! A ringkv node as a turmoil host: host `n{i}`, listening on port 7400 of its host
//! address, seeded with `n1`, on the simulated network.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ringkv::node::{Node, NodeConfig};
use ringkv_storage::SyncPolicy;

use crate::SimNetwork;

/// RPC (and gossip) address of node `n{i}`; only callable inside a simulation.
pub fn addr_of(i: usize) -> SocketAddr {
    SocketAddr::new(turmoil::lookup(format!("n{i}")), 7400)
}

/// The configuration simulated nodes run with: no fsync (a turmoil crash drops the
/// store without tearing a write anyway), 2 s request deadlines, anti-entropy every 2 s.
pub fn config(i: usize, data: PathBuf) -> NodeConfig {
    let mut c = NodeConfig::new(data, addr_of(i));
    c.node_id = Some(format!("n{i}"));
    c.sync = SyncPolicy::None;
    c.cluster.seeds = vec![addr_of(1)];
    c.cluster.settings.timeout = Duration::from_secs(2);
    c.repair.interval = Duration::from_secs(2);
    c
}

/// Starts node `n{i}` with actor id `actor` and serves clients until the host stops.
///
/// # Errors
/// If the node cannot open its directory or bind its address.
pub async fn run(i: usize, data: PathBuf, actor: u64) -> Result<(), Box<dyn std::error::Error>> {
    run_with(i, data, actor, false).await
}

/// As [`run`]; with `unsafe_lww` the node resolves registers by last writer wins.
///
/// # Errors
/// If the node cannot open its directory or bind its address.
pub async fn run_with(
    i: usize,
    data: PathBuf,
    actor: u64,
    unsafe_lww: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = config(i, data);
    config.unsafe_lww = unsafe_lww;
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
