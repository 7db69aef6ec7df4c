//! `ringkv serve`: one node in the foreground until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ringkv::net::TokioNetwork;
use ringkv::node::{Node, NodeConfig};
use ringkv::ring::check_ring_size;
use ringkv_storage::SyncPolicy;
use serde::Deserialize;

use super::args::{OnOff, ServeArgs, SyncArg};
use super::{EXIT_OK, Failure};

/// The `--config` file: the same options as the flags.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    node_id: Option<String>,
    sync: Option<SyncArg>,
    sync_interval_ms: Option<u64>,
    ring_size: Option<u32>,
    max_key_bytes: Option<usize>,
    max_value_bytes: Option<usize>,
    max_object_bytes: Option<usize>,
    max_siblings: Option<usize>,
    max_connections: Option<usize>,
    max_in_flight: Option<usize>,
    seeds: Option<Vec<String>>,
    zone: Option<String>,
    n: Option<u8>,
    r: Option<u8>,
    w: Option<u8>,
    request_timeout_ms: Option<u64>,
    hinted_handoff: Option<OnOff>,
    cluster_secret_file: Option<PathBuf>,
    insecure_dev: Option<bool>,
    probe_ms: Option<u64>,
    anti_entropy_interval_ms: Option<u64>,
    anti_entropy_concurrency: Option<usize>,
    anti_entropy_mb_per_sec: Option<u64>,
}

fn node_config(args: ServeArgs) -> Result<NodeConfig, Failure> {
    let file = match &args.config {
        None => FileConfig::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Failure::usage(format!("cannot read config {}: {e}", path.display()))
            })?;
            toml::from_str(&text).map_err(|e| {
                Failure::usage(format!("bad config {}: {}", path.display(), e.message()))
            })?
        }
    };
    let listen_text = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| "127.0.0.1:7400".into());
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        Failure::usage(format!(
            "--listen {listen_text:?} is not HOST:PORT with a numeric IP"
        ))
    })?;
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("./ringkv-data"));
    let mut cfg = NodeConfig::new(data_dir, listen);
    cfg.node_id = args.node_id.or(file.node_id);
    if let Some(id) = &cfg.node_id
        && (id.is_empty() || id.len() > 128 || id.chars().any(char::is_whitespace))
    {
        return Err(Failure::usage(
            "--node-id must be 1-128 characters without spaces",
        ));
    }
    let interval_ms = args
        .sync_interval_ms
        .or(file.sync_interval_ms)
        .unwrap_or(100);
    if interval_ms == 0 || interval_ms > 60_000 {
        return Err(Failure::usage(
            "--sync-interval-ms must be between 1 and 60000",
        ));
    }
    cfg.sync = match args.sync.or(file.sync).unwrap_or(SyncArg::Interval) {
        SyncArg::Always => SyncPolicy::Always,
        SyncArg::Interval => SyncPolicy::Interval(Duration::from_millis(interval_ms)),
        SyncArg::None => SyncPolicy::None,
    };
    cfg.ring_size = check_ring_size(args.ring_size.or(file.ring_size).unwrap_or(cfg.ring_size))
        .map_err(|e| Failure::usage(e.to_string()))?;
    let limits = &mut cfg.limits;
    if let Some(v) = args.max_key_bytes.or(file.max_key_bytes) {
        limits.max_key_bytes = v;
    }
    if let Some(v) = args.max_value_bytes.or(file.max_value_bytes) {
        limits.max_value_bytes = v;
    }
    if let Some(v) = args.max_object_bytes.or(file.max_object_bytes) {
        limits.max_object_bytes = v;
    }
    if let Some(v) = args.max_siblings.or(file.max_siblings) {
        limits.max_siblings = v;
        limits.warn_siblings = limits.warn_siblings.min(v);
    }
    if limits.max_key_bytes == 0 || limits.max_key_bytes > 64 * 1024 {
        return Err(Failure::usage(
            "--max-key-bytes must be between 1 and 65536",
        ));
    }
    if limits.max_value_bytes == 0 || limits.max_value_bytes > 256 << 20 {
        return Err(Failure::usage(
            "--max-value-bytes must be between 1 and 268435456",
        ));
    }
    if limits.max_object_bytes < limits.max_value_bytes || limits.max_object_bytes > 1 << 30 {
        return Err(Failure::usage(
            "--max-object-bytes must be at least --max-value-bytes and at most 1 GiB",
        ));
    }
    if limits.max_siblings == 0 || limits.max_siblings > 10_000 {
        return Err(Failure::usage("--max-siblings must be between 1 and 10000"));
    }
    if let Some(v) = args.max_connections.or(file.max_connections) {
        if v == 0 {
            return Err(Failure::usage("--max-connections must be at least 1"));
        }
        cfg.max_connections = v;
    }
    if let Some(v) = args.max_in_flight.or(file.max_in_flight) {
        if v == 0 || v > 100_000 {
            return Err(Failure::usage(
                "--max-in-flight must be between 1 and 100000",
            ));
        }
        cfg.max_in_flight_per_connection = v;
    }
    let listen = cfg.listen;
    let cluster = &mut cfg.cluster;
    let seeds = if args.seeds.is_empty() {
        file.seeds.unwrap_or_default()
    } else {
        args.seeds
    };
    for seed in &seeds {
        let addr = seed.parse::<SocketAddr>().map_err(|_| {
            Failure::usage(format!(
                "--seed {seed:?} is not HOST:PORT with a numeric IP"
            ))
        })?;
        cluster.seeds.push(addr);
    }
    if let Some(zone) = args.zone.or(file.zone) {
        if zone.len() > 64 || zone.chars().any(char::is_whitespace) {
            return Err(Failure::usage(
                "--zone must be at most 64 characters without spaces",
            ));
        }
        cluster.zone = zone;
    }
    let s = &mut cluster.settings;
    s.n = args.n.or(file.n).unwrap_or(s.n);
    s.r = args.r.or(file.r).unwrap_or(s.r.min(s.n));
    s.w = args.w.or(file.w).unwrap_or(s.w.min(s.n));
    if s.n == 0 || s.n > 16 {
        return Err(Failure::usage("--n must be between 1 and 16"));
    }
    if s.r == 0 || s.r > s.n || s.w == 0 || s.w > s.n {
        return Err(Failure::usage(format!(
            "--r and --w must be between 1 and --n ({})",
            s.n
        )));
    }
    if let Some(ms) = args.request_timeout_ms.or(file.request_timeout_ms) {
        let max = u64::from(ringkv::coordinator::MAX_TIMEOUT_MS);
        if ms == 0 || ms > max {
            return Err(Failure::usage(format!(
                "--request-timeout-ms must be between 1 and {max}"
            )));
        }
        s.timeout = Duration::from_millis(ms);
    }
    s.hinted_handoff = args
        .hinted_handoff
        .or(file.hinted_handoff)
        .unwrap_or(OnOff::On)
        == OnOff::On;
    if let Some(ms) = args.probe_ms.or(file.probe_ms) {
        if !(50..=60_000).contains(&ms) {
            return Err(Failure::usage("--probe-ms must be between 50 and 60000"));
        }
        cluster.probe_period = Duration::from_millis(ms);
    }
    let repair = &mut cfg.repair;
    if let Some(ms) = args
        .anti_entropy_interval_ms
        .or(file.anti_entropy_interval_ms)
    {
        if !(100..=86_400_000).contains(&ms) {
            return Err(Failure::usage(
                "--anti-entropy-interval-ms must be between 100 and 86400000",
            ));
        }
        repair.interval = Duration::from_millis(ms);
    }
    if let Some(c) = args
        .anti_entropy_concurrency
        .or(file.anti_entropy_concurrency)
    {
        if c == 0 || c > 64 {
            return Err(Failure::usage(
                "--anti-entropy-concurrency must be between 1 and 64",
            ));
        }
        repair.concurrency = c;
    }
    if let Some(mb) = args
        .anti_entropy_mb_per_sec
        .or(file.anti_entropy_mb_per_sec)
    {
        if mb == 0 || mb > 10_000 {
            return Err(Failure::usage(
                "--anti-entropy-mb-per-sec must be between 1 and 10000",
            ));
        }
        repair.bytes_per_sec = mb << 20;
    }
    let cluster = &mut cfg.cluster;
    let secret_file = args.cluster_secret_file.or(file.cluster_secret_file);
    let secret = super::read_secret(secret_file.as_deref())?;
    let insecure = args.insecure_dev || file.insecure_dev.unwrap_or(false);
    match secret {
        Some(secret) => cluster.key = ringkv_gossip::ClusterKey::derive(&secret),
        None if insecure => {
            tracing::warn!(
                "--insecure-dev: no cluster secret; anyone who can reach this node can join"
            );
        }
        None => {
            let others = cluster.seeds.iter().any(|s| *s != listen);
            if others {
                return Err(Failure::usage(
                    "refusing to join a cluster without a secret: give --cluster-secret-file FILE or RINGKV_CLUSTER_SECRET (or --insecure-dev for local development)",
                ));
            }
            // Alone and without a secret: a random key nobody else knows, so nobody
            // joins (the node keeps it in its data directory).
            cluster.lone = true;
        }
    }
    Ok(cfg)
}

/// A fresh actor id for a new data directory, from the OS's random source: two
/// directories never share dots.
fn mint_actor() -> u64 {
    rand::random()
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        biased;
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tarpc=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

pub fn run(args: ServeArgs) -> Result<i32, Failure> {
    init_tracing();
    let cfg = node_config(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ringkv")
        .build()
        .map_err(|e| Failure::other(format!("cannot start runtime: {e}")))?;
    runtime.block_on(async move {
        let minted = mint_actor();
        let stop = tokio_util::sync::CancellationToken::new();
        let node = Node::start(cfg, || minted, TokioNetwork, stop.clone())
            .await
            .map_err(|e| Failure::other(e.to_string()))?;
        let listener = ringkv::rpc::server::bind(&TokioNetwork, &node)
            .await
            .map_err(|e| Failure {
                code: super::EXIT_UNAVAILABLE,
                message: e.to_string(),
            })?;
        let addr = listener
            .local_addr()
            .map_err(|e| Failure::other(e.to_string()))?;
        tracing::info!(node_id = node.node_id(), %addr, "ringkv listening");
        ringkv::rpc::server::serve(listener, node.clone(), shutdown_signal()).await;
        stop.cancel();
        node.close()
            .map_err(|e| Failure::other(format!("closing the store failed: {e}")))?;
        tracing::info!("stopped cleanly");
        Ok(EXIT_OK)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ringkv.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nsync = \"always\"\nmax_siblings = 7\n",
        )
        .expect("write");
        let args = ServeArgs {
            config: Some(path.clone()),
            listen: Some("127.0.0.1:9001".into()),
            ..ServeArgs::default()
        };
        let cfg = node_config(args).expect("valid");
        assert_eq!(cfg.listen.port(), 9001);
        assert_eq!(cfg.sync, SyncPolicy::Always);
        assert_eq!(cfg.limits.max_siblings, 7);
        std::fs::write(&path, "lisen = \"x\"\n").expect("write");
        assert!(
            node_config(ServeArgs {
                config: Some(path),
                ..ServeArgs::default()
            })
            .is_err()
        );
        assert!(
            node_config(ServeArgs {
                ring_size: Some(100),
                ..ServeArgs::default()
            })
            .is_err()
        );
        let no_slots = ServeArgs {
            max_in_flight: Some(0),
            ..ServeArgs::default()
        };
        assert!(node_config(no_slots).is_err());
        let eight = ServeArgs {
            max_in_flight: Some(8),
            ..ServeArgs::default()
        };
        assert_eq!(
            node_config(eight)
                .expect("valid")
                .max_in_flight_per_connection,
            8
        );
        assert!(
            node_config(ServeArgs {
                listen: Some("nohost".into()),
                ..ServeArgs::default()
            })
            .is_err()
        );
    }
}
