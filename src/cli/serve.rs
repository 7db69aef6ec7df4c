//! `ringkv serve`: one node in the foreground until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ringkv::net::TokioNetwork;
use ringkv::node::{Node, NodeConfig};
use ringkv::ring::check_ring_size;
use ringkv_storage::SyncPolicy;
use serde::{Deserialize, Serialize};

use super::args::{OnOff, ServeArgs, StorageArg, SyncArg};
use super::{EXIT_OK, Failure};

/// The `--config` file: the same options as the flags, named as the flags without
/// their dashes (`max_key_bytes`); `RINGKV_` and the name in capitals is its
/// environment variable. Also what `--check-config` prints, so its output is a
/// config file that gives the same node.
#[derive(Deserialize, Serialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shutdown_delay: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stall_threshold: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sync: Option<SyncArg>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sync_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    storage: Option<StorageArg>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fjall_cache_mb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ring_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_key_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_value_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_object_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_siblings: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_in_flight: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seeds: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    zone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    r: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    w: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hinted_handoff: Option<OnOff>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_secret_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    accept_cluster_secret_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    insecure_dev: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_ca: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    insecure: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    probe_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    anti_entropy_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    anti_entropy_concurrency: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    anti_entropy_mb_per_sec: Option<u64>,
}

/// `RINGKV_*` variables `serve` ignores on purpose: the client commands' own, the
/// test and simulation harnesses', and the cluster secret (read directly, never a
/// flag, so it shows in no process listing).
const OTHER_VARIABLES: &[&str] = &[
    "RINGKV_CLUSTER_SECRET",
    "RINGKV_TOKEN",
    "RINGKV_CONNECT",
    "RINGKV_TEST_BIN",
    "RINGKV_IMAGE",
];
const OTHER_PREFIXES: &[&str] = &["RINGKV_SIM_", "RINGKV_TEST_", "RINGKV_COMPOSE_"];

/// Refuses a `RINGKV_*` variable `serve` does not know (a typo would otherwise be
/// ignored silently, the node starting with a default the operator meant to
/// change). Returns the names skipped with a warning: Kubernetes makes
/// `RINGKV_SERVICE_HOST`, `RINGKV_PORT_7400_TCP` and the like for a Service named
/// `ringkv` in every pod of its namespace, which nobody chose.
fn check_environment(
    vars: impl IntoIterator<Item = String>,
    known: &[String],
) -> Result<Vec<String>, Failure> {
    let mut skipped = Vec::new();
    for name in vars {
        if !name.starts_with("RINGKV_")
            || known.contains(&name)
            || OTHER_VARIABLES.contains(&name.as_str())
            || OTHER_PREFIXES.iter().any(|p| name.starts_with(p))
        {
            continue;
        }
        if name.starts_with("RINGKV_SERVICE_") || name.starts_with("RINGKV_PORT") {
            skipped.push(name);
            continue;
        }
        return Err(Failure::usage(format!(
            "unknown environment variable {name} (serve --help lists every RINGKV_ variable)"
        )));
    }
    Ok(skipped)
}

/// The `RINGKV_*` names of `serve`'s flags.
fn known_variables() -> Vec<String> {
    use clap::{Args, Command};
    ServeArgs::augment_args(Command::new("serve"))
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect()
}

/// Where `serve` reaches and is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Advertise {
    /// The listen address (no `--advertise`).
    Listen,
    /// A numeric address.
    Addr(SocketAddr),
    /// A name, resolved once the node starts (a container's own hostname).
    Name(String),
}

/// Everything `serve` runs with: the node's configuration and the process's own.
#[derive(Debug)]
struct ServeConfig {
    node: NodeConfig,
    advertise: Advertise,
    http_listen: SocketAddr,
    /// `--http-listen` was given (else a taken default port only warns).
    http_explicit: bool,
    shutdown_delay: Duration,
    stall_threshold: Duration,
    /// What `--check-config` prints.
    effective: FileConfig,
    /// Where the cluster secret came from, if there is one.
    secret_source: Option<String>,
}

/// `HOST:PORT` with a name for the host: the name's characters and a port in
/// 1..=65535.
fn check_name(flag: &str, text: &str) -> Result<(), Failure> {
    let bad = || {
        Failure::usage(format!(
            "{flag} {text:?} is not IP:PORT or NAME:PORT (a DNS name, then a port)"
        ))
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let name_chars = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    if port == 0 || host.is_empty() || host.len() > 253 || !host.chars().all(name_chars) {
        return Err(bad());
    }
    Ok(())
}

fn duration_setting(flag: &str, text: &str, max: Duration) -> Result<Duration, Failure> {
    let d =
        super::args::parse_duration(text).map_err(|e| Failure::usage(format!("{flag}: {e}")))?;
    if d > max {
        return Err(Failure::usage(format!(
            "{flag} must be at most {}s",
            max.as_secs()
        )));
    }
    Ok(d)
}

fn serve_config(args: ServeArgs) -> Result<ServeConfig, Failure> {
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
            "--listen {listen_text:?} is not IP:PORT (bind a numeric address; --advertise takes a name)"
        ))
    })?;
    let advertise_text = args.advertise.or(file.advertise);
    let advertise = match &advertise_text {
        None => Advertise::Listen,
        Some(text) => match text.parse::<SocketAddr>() {
            Ok(addr) if addr.ip().is_unspecified() || addr.port() == 0 => {
                return Err(Failure::usage(format!(
                    "--advertise {text} must be an address peers can reach, not an unspecified IP or port 0"
                )));
            }
            Ok(addr) => Advertise::Addr(addr),
            Err(_) => {
                check_name("--advertise", text)?;
                Advertise::Name(text.clone())
            }
        },
    };
    let http_given = args.http_listen.or(file.http_listen);
    let http_explicit = http_given.is_some();
    let http_text = http_given.unwrap_or_else(|| "127.0.0.1:7480".into());
    let http_listen: SocketAddr = http_text
        .parse()
        .map_err(|_| Failure::usage(format!("--http-listen {http_text:?} is not IP:PORT")))?;
    let delay_text = args
        .shutdown_delay
        .or(file.shutdown_delay)
        .unwrap_or_else(|| "5s".into());
    let shutdown_delay =
        duration_setting("--shutdown-delay", &delay_text, Duration::from_secs(600))?;
    let stall_text = args
        .stall_threshold
        .or(file.stall_threshold)
        .unwrap_or_else(|| "30s".into());
    let stall_threshold =
        duration_setting("--stall-threshold", &stall_text, Duration::from_secs(3600))?;
    if stall_threshold < Duration::from_secs(1) {
        return Err(Failure::usage("--stall-threshold must be at least 1s"));
    }
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("./ringkv-data"));
    let mut cfg = NodeConfig::new(data_dir, listen);
    if let Advertise::Addr(a) = advertise {
        cfg.advertise = Some(a);
    }
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
    let sync = args.sync.or(file.sync).unwrap_or(SyncArg::Interval);
    cfg.sync = match sync {
        SyncArg::Always => SyncPolicy::Always,
        SyncArg::Interval => SyncPolicy::Interval(Duration::from_millis(interval_ms)),
        SyncArg::None => SyncPolicy::None,
    };
    let storage = args.storage.or(file.storage).unwrap_or(StorageArg::Log);
    cfg.storage = match storage {
        StorageArg::Log => ringkv_storage::Backend::Log,
        StorageArg::Fjall => ringkv_storage::Backend::Fjall,
    };
    let cache_mb = args.fjall_cache_mb.or(file.fjall_cache_mb).unwrap_or(64);
    if !(1..=1 << 20).contains(&cache_mb) {
        return Err(Failure::usage(
            "--fjall-cache-mb must be between 1 and 1048576",
        ));
    }
    cfg.fjall_cache_bytes = cache_mb << 20;
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
    let advertised = cfg.advertise;
    let cluster = &mut cfg.cluster;
    let seeds = if args.seeds.is_empty() {
        file.seeds.unwrap_or_default()
    } else {
        args.seeds
    };
    if seeds.len() > ringkv_gossip::MAX_SEEDS {
        return Err(Failure::usage(format!(
            "at most {} seeds",
            ringkv_gossip::MAX_SEEDS
        )));
    }
    for seed in &seeds {
        match seed.parse::<SocketAddr>() {
            Ok(addr) if addr.ip().is_unspecified() || addr.port() == 0 => {
                return Err(Failure::usage(format!(
                    "--seed {seed} is not an address a node can be reached at"
                )));
            }
            Ok(addr) => cluster.seeds.push(addr),
            Err(_) => {
                check_name("--seed", seed)?;
                cluster.seed_names.push(seed.clone());
            }
        }
    }
    // A node that gossips an unspecified address gives its peers nothing to reach
    // it at: the cluster would see it join and then fail every request to it.
    let own = match (&advertise, advertised) {
        (_, Some(a)) => Some(a),
        (Advertise::Name(_), None) => None,
        _ => Some(listen),
    };
    let has_peers = !cluster.seed_names.is_empty() || cluster.seeds.iter().any(|s| Some(*s) != own);
    if has_peers && advertise == Advertise::Listen && listen.ip().is_unspecified() {
        return Err(Failure::usage(format!(
            "--listen {listen} is unspecified and the node has peers: give --advertise HOST:PORT, the address they reach it at"
        )));
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
    let hinted = args
        .hinted_handoff
        .or(file.hinted_handoff)
        .unwrap_or(OnOff::On);
    s.hinted_handoff = hinted == OnOff::On;
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
    let secret_source = match (&secret, &secret_file) {
        (None, _) => None,
        (Some(_), Some(path)) => Some(format!("file {}", path.display())),
        (Some(_), None) => Some("RINGKV_CLUSTER_SECRET".to_string()),
    };
    let insecure = args.insecure_dev || file.insecure_dev.unwrap_or(false);
    let accept_file = args
        .accept_cluster_secret_file
        .or(file.accept_cluster_secret_file);
    let accepted = match &accept_file {
        None => None,
        Some(path) if secret.is_some() => super::read_secret(Some(path))?,
        Some(_) => {
            return Err(Failure::usage(
                "--accept-cluster-secret-file needs a cluster secret to sign with (--cluster-secret-file or RINGKV_CLUSTER_SECRET)",
            ));
        }
    };
    match secret {
        Some(secret) => {
            let key = ringkv_gossip::ClusterKey::derive(&secret);
            cluster.key = match &accepted {
                Some(other) => key.also_accepting(&ringkv_gossip::ClusterKey::derive(other)),
                None => key,
            };
        }
        None if insecure => {
            tracing::warn!(
                "--insecure-dev: no cluster secret; anyone who can reach this node can join"
            );
        }
        None => {
            if has_peers {
                return Err(Failure::usage(
                    "refusing to join a cluster without a secret: give --cluster-secret-file FILE or RINGKV_CLUSTER_SECRET (or --insecure-dev for local development)",
                ));
            }
            // Alone and without a secret: a random key nobody else knows, so nobody
            // joins (the node keeps it in its data directory).
            cluster.lone = true;
        }
    }
    let tls_cert = args.tls_cert.or(file.tls_cert);
    let tls_key = args.tls_key.or(file.tls_key);
    let tls_ca = args.tls_ca.or(file.tls_ca);
    cfg.tls = match (&tls_cert, &tls_key, &tls_ca) {
        (None, None, None) => None,
        (Some(cert), Some(key), Some(ca)) => {
            let files = ringkv::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            };
            let tls =
                ringkv::tls::NodeTls::load(files).map_err(|e| Failure::usage(e.to_string()))?;
            Some(std::sync::Arc::new(tls))
        }
        _ => {
            return Err(Failure::usage(
                "--tls-cert, --tls-key and --tls-ca go together",
            ));
        }
    };
    let auth_file = args.auth_file.or(file.auth_file);
    cfg.auth = match &auth_file {
        None => None,
        Some(path) => {
            let keyring =
                ringkv::auth::Keyring::open(path).map_err(|e| Failure::usage(e.to_string()))?;
            if keyring.is_empty() {
                tracing::warn!(file = %path.display(), "the auth file holds no token: every client is refused");
            }
            Some(std::sync::Arc::new(keyring))
        }
    };
    let insecure_net = args.insecure || file.insecure.unwrap_or(false);
    secure_by_default(listen, cfg.tls.is_some(), cfg.auth.is_some(), insecure_net)?;
    let s = cfg.cluster.settings;
    let effective = FileConfig {
        data_dir: Some(cfg.data_dir.clone()),
        listen: Some(listen.to_string()),
        advertise: advertise_text,
        http_listen: Some(http_listen.to_string()),
        shutdown_delay: Some(delay_text),
        stall_threshold: Some(stall_text),
        node_id: cfg.node_id.clone(),
        sync: Some(sync),
        sync_interval_ms: Some(interval_ms),
        storage: Some(storage),
        fjall_cache_mb: Some(cache_mb),
        ring_size: Some(cfg.ring_size),
        max_key_bytes: Some(cfg.limits.max_key_bytes),
        max_value_bytes: Some(cfg.limits.max_value_bytes),
        max_object_bytes: Some(cfg.limits.max_object_bytes),
        max_siblings: Some(cfg.limits.max_siblings),
        max_connections: Some(cfg.max_connections),
        max_in_flight: Some(cfg.max_in_flight_per_connection),
        seeds: Some(seeds),
        zone: Some(cfg.cluster.zone.clone()),
        n: Some(s.n),
        r: Some(s.r),
        w: Some(s.w),
        request_timeout_ms: Some(s.timeout.as_millis() as u64),
        hinted_handoff: Some(hinted),
        cluster_secret_file: secret_file,
        accept_cluster_secret_file: accept_file,
        insecure_dev: Some(insecure),
        tls_cert,
        tls_key,
        tls_ca,
        auth_file,
        insecure: Some(insecure_net),
        probe_ms: Some(cfg.cluster.probe_period.as_millis() as u64),
        anti_entropy_interval_ms: Some(cfg.repair.interval.as_millis() as u64),
        anti_entropy_concurrency: Some(cfg.repair.concurrency),
        anti_entropy_mb_per_sec: Some(cfg.repair.bytes_per_sec >> 20),
    };
    Ok(ServeConfig {
        node: cfg,
        advertise,
        http_listen,
        http_explicit,
        shutdown_delay,
        stall_threshold,
        effective,
        secret_source,
    })
}

/// A node reachable beyond this machine needs TLS and tokens, unless told
/// `--insecure` (CockroachDB's rule: Riak's and etcd's users show what
/// off-by-default security leaves open).
fn secure_by_default(
    listen: SocketAddr,
    tls: bool,
    auth: bool,
    insecure: bool,
) -> Result<(), Failure> {
    if listen.ip().is_loopback() {
        return Ok(());
    }
    let missing = match (tls, auth) {
        (true, true) => return Ok(()),
        (false, true) => "TLS (--tls-cert, --tls-key, --tls-ca)",
        (true, false) => "an auth file (--auth-file)",
        (false, false) => "TLS (--tls-cert, --tls-key, --tls-ca) and an auth file (--auth-file)",
    };
    if insecure {
        tracing::warn!(%listen, "--insecure: serving without {missing}; anyone who can reach this port can read and write everything");
        return Ok(());
    }
    Err(Failure::usage(format!(
        "refusing to serve {listen} without {missing}: anyone who can reach it could read and write everything; give them, or --insecure"
    )))
}

/// What `--check-config` prints: the effective configuration as a config file, and
/// where the secret comes from (never the secret).
fn render_effective(cfg: &ServeConfig) -> Result<String, Failure> {
    let body = toml::to_string(&cfg.effective)
        .map_err(|e| Failure::other(format!("cannot print the configuration: {e}")))?;
    let secret = match &cfg.secret_source {
        Some(source) => format!("# cluster secret: set (from {source})\n"),
        None if cfg.node.cluster.lone => {
            "# cluster secret: none (alone: a random key nobody else knows)\n".to_string()
        }
        None => "# cluster secret: none\n".to_string(),
    };
    Ok(format!("{body}{secret}"))
}

/// Resolves an advertised name to the address it stands for now, retrying for a
/// while: a container's own name may appear in DNS a moment after it starts.
async fn resolve_advertised(name: &str) -> Result<SocketAddr, Failure> {
    const ATTEMPTS: u32 = 30;
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        match tokio::net::lookup_host(name).await {
            Ok(addrs) => {
                let mut addrs: Vec<SocketAddr> = addrs.collect();
                // Prefer IPv4 when a name has both, so one node is not known by two
                // address families on different peers.
                addrs.sort_by_key(|a| (a.is_ipv6(), *a));
                if let Some(a) = addrs.first() {
                    return Ok(*a);
                }
                last = "it resolves to no address".into();
            }
            Err(e) => last = e.to_string(),
        }
        if attempt + 1 < ATTEMPTS {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Err(Failure {
        code: super::EXIT_UNAVAILABLE,
        message: format!("--advertise {name}: cannot resolve ({last})"),
    })
}

/// A fresh actor id for a new data directory, from the OS's random source: two
/// directories never share dots.
fn mint_actor() -> u64 {
    rand::random()
}

/// The next SIGTERM or SIGINT.
/// How often the TLS and auth files are looked at for changes.
const RELOAD_POLL: Duration = Duration::from_secs(2);

/// Reads the TLS and auth files again when they change, and on SIGHUP (a file
/// that cannot be used leaves the last good one in force, said once per change).
async fn reload_files(
    tls: Option<std::sync::Arc<ringkv::tls::NodeTls>>,
    auth: Option<std::sync::Arc<ringkv::auth::Keyring>>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    if tls.is_none() && auth.is_none() {
        return;
    }
    let mut hup = signal(SignalKind::hangup()).ok();
    loop {
        let forced = tokio::select! {
            biased;
            () = tokio::time::sleep(RELOAD_POLL) => false,
            Some(()) = async { match &mut hup { Some(h) => h.recv().await, None => None } } => true,
        };
        if forced {
            tracing::info!("SIGHUP: reading the TLS and auth files again");
        }
        if let Some(tls) = &tls {
            match tls.reload(forced) {
                Ok(true) => {
                    tracing::info!(cert = %tls.files().cert.display(), "TLS certificates reloaded")
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, "TLS files changed but cannot be used; the previous certificates stay in force")
                }
            }
        }
        if let Some(auth) = &auth {
            match auth.reload(forced) {
                Ok(true) => {
                    tracing::info!(file = %auth.path().display(), tokens = auth.len(), "auth file reloaded")
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, "auth file changed but cannot be used; the previous tokens stay in force")
                }
            }
        }
    }
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

/// Raises the soft limit of open files to the hard one (at most 65,536): the
/// default 1,024 is below what the connection slots and the store's descriptors
/// may take together, and a node out of descriptors cannot even accept its peers.
fn raise_open_files() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return;
        }
        let (was, want) = (rl.rlim_cur, rl.rlim_max.min(65_536));
        if was < want {
            rl.rlim_cur = want;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                tracing::warn!(limit = was, "cannot raise the open-file limit");
            }
        }
    }
}

pub fn run(args: ServeArgs) -> Result<i32, Failure> {
    init_tracing();
    raise_open_files();
    let skipped = check_environment(
        std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()),
        &known_variables(),
    )?;
    for name in skipped {
        tracing::warn!(variable = %name, "ignoring a variable Kubernetes sets for a Service named ringkv");
    }
    let check_only = args.check_config;
    let cfg = serve_config(args)?;
    if check_only {
        print!("{}", render_effective(&cfg)?);
        return Ok(EXIT_OK);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ringkv")
        .build()
        .map_err(|e| Failure::other(format!("cannot start runtime: {e}")))?;
    let outcome = runtime.block_on(serve_node(cfg));
    // Blocking-pool work still running (a DNS lookup that hangs, a transfers scan)
    // must not keep the process past its grace period: the store is closed by now.
    runtime.shutdown_timeout(Duration::from_secs(2));
    outcome
}

async fn serve_node(cfg: ServeConfig) -> Result<i32, Failure> {
    let ServeConfig {
        node: mut node_cfg,
        advertise,
        http_listen,
        http_explicit,
        shutdown_delay,
        stall_threshold,
        ..
    } = cfg;
    if let Advertise::Name(name) = &advertise {
        let addr = resolve_advertised(name).await?;
        tracing::info!(%name, %addr, "advertised name resolved");
        node_cfg.advertise = Some(addr);
    }
    let minted = mint_actor();
    let stop = tokio_util::sync::CancellationToken::new();
    let reloading = tokio::spawn(reload_files(node_cfg.tls.clone(), node_cfg.auth.clone()));
    let node = Node::start(node_cfg, || minted, TokioNetwork, stop.clone())
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
    let http_stop = tokio_util::sync::CancellationToken::new();
    let http = match ringkv::http::serve(
        http_listen,
        node.clone(),
        stall_threshold,
        http_stop.clone().cancelled_owned(),
    )
    .await
    {
        Ok((http_addr, task)) => {
            tracing::info!(node_id = node.node_id(), %addr, http = %http_addr, "ringkv listening");
            Some(task)
        }
        Err(e) if !http_explicit => {
            // A second node on one machine with the defaults: it still serves, but
            // says loudly that it has no metrics or probes.
            tracing::warn!(error = %e, "no HTTP port (metrics, probes): give each node its own --http-listen");
            tracing::info!(node_id = node.node_id(), %addr, "ringkv listening");
            None
        }
        Err(e) => {
            return Err(Failure {
                code: super::EXIT_UNAVAILABLE,
                message: e.to_string(),
            });
        }
    };
    // The drain (DESIGN: operations): not ready at once, peers told, requests go
    // on for the shutdown delay so load balancers and ring-aware clients move
    // away, then new requests are refused (nothing applied: clients retry
    // elsewhere) and those in flight finish.
    let drained = {
        let node = node.clone();
        async move {
            tokio::select! {
                biased;
                () = shutdown_signal() => {}
                () = node.stop_requested() => tracing::info!("drain asked for by an operator"),
            }
            node.begin_drain().await;
            tracing::info!(
                delay_ms = shutdown_delay.as_millis() as u64,
                "waiting the shutdown delay before refusing requests"
            );
            tokio::select! {
                biased;
                () = tokio::time::sleep(shutdown_delay) => {}
                () = shutdown_signal() => tracing::warn!("second signal: skipping the rest of the shutdown delay"),
            }
            let left = node
                .close_requests(Duration::from_millis(u64::from(
                    ringkv::coordinator::MAX_TIMEOUT_MS,
                )))
                .await;
            if left > 0 {
                tracing::warn!(left, "requests still running at the end of the drain");
            }
        }
    };
    ringkv::rpc::server::serve(listener, node.clone(), drained).await;
    reloading.abort();
    stop.cancel();
    http_stop.cancel();
    if let Some(task) = http {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    node.close()
        .map_err(|e| Failure::other(format!("closing the store failed: {e}")))?;
    tracing::info!("stopped cleanly");
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_config_node(args: ServeArgs) -> Result<NodeConfig, Failure> {
        serve_config(args).map(|c| c.node)
    }

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
        let cfg = serve_config_node(args).expect("valid");
        assert_eq!(cfg.listen.port(), 9001);
        assert_eq!(cfg.sync, SyncPolicy::Always);
        assert_eq!(cfg.limits.max_siblings, 7);
        std::fs::write(&path, "lisen = \"x\"\n").expect("write");
        assert!(
            serve_config_node(ServeArgs {
                config: Some(path),
                ..ServeArgs::default()
            })
            .is_err()
        );
        assert!(
            serve_config_node(ServeArgs {
                ring_size: Some(100),
                ..ServeArgs::default()
            })
            .is_err()
        );
        let no_slots = ServeArgs {
            max_in_flight: Some(0),
            ..ServeArgs::default()
        };
        assert!(serve_config_node(no_slots).is_err());
        let eight = ServeArgs {
            max_in_flight: Some(8),
            ..ServeArgs::default()
        };
        assert_eq!(
            serve_config_node(eight)
                .expect("valid")
                .max_in_flight_per_connection,
            8
        );
        assert!(
            serve_config_node(ServeArgs {
                listen: Some("nohost".into()),
                ..ServeArgs::default()
            })
            .is_err()
        );
    }

    #[test]
    fn unknown_variables_are_refused_by_name_and_service_links_skipped() {
        let known = known_variables();
        assert!(known.contains(&"RINGKV_ADVERTISE".to_string()));
        assert!(known.contains(&"RINGKV_SEEDS".to_string()));
        let ok = check_environment(
            [
                "PATH".to_string(),
                "RINGKV_LISTEN".into(),
                "RINGKV_CLUSTER_SECRET".into(),
                "RINGKV_SERVICE_HOST".into(),
                "RINGKV_PORT_7400_TCP".into(),
            ],
            &known,
        )
        .expect("known");
        assert_eq!(ok, vec!["RINGKV_SERVICE_HOST", "RINGKV_PORT_7400_TCP"]);
        let err = check_environment(["RINGKV_LISTN".to_string()], &known).expect_err("typo");
        assert_eq!(err.code, crate::cli::EXIT_USAGE);
        assert!(err.message.contains("RINGKV_LISTN"), "{}", err.message);
    }

    #[test]
    fn advertise_and_seeds_take_names_and_refuse_what_peers_cannot_reach() {
        let named = serve_config(ServeArgs {
            listen: Some("0.0.0.0:7400".into()),
            advertise: Some("ringkv-1:7400".into()),
            seeds: vec!["ringkv-peers:7400".into(), "10.0.0.2:7400".into()],
            insecure_dev: true,
            insecure: true,
            ..ServeArgs::default()
        })
        .expect("valid");
        assert_eq!(named.advertise, Advertise::Name("ringkv-1:7400".into()));
        assert_eq!(named.node.cluster.seed_names, vec!["ringkv-peers:7400"]);
        assert_eq!(named.node.cluster.seeds.len(), 1);
        let unspecified = serve_config(ServeArgs {
            listen: Some("0.0.0.0:7400".into()),
            seeds: vec!["10.0.0.2:7400".into()],
            insecure_dev: true,
            insecure: true,
            ..ServeArgs::default()
        })
        .expect_err("peers and nothing to reach this node at");
        assert!(
            unspecified.message.contains("--advertise"),
            "{}",
            unspecified.message
        );
        for bad in ["0.0.0.0:7400", "host", "host:0", "bad name:1"] {
            assert!(
                serve_config(ServeArgs {
                    advertise: Some(bad.into()),
                    ..ServeArgs::default()
                })
                .is_err(),
                "{bad}"
            );
        }
        // A seed name means peers: without a secret the node refuses to start.
        assert!(
            serve_config(ServeArgs {
                seeds: vec!["ringkv-peers:7400".into()],
                ..ServeArgs::default()
            })
            .is_err()
        );
    }

    #[test]
    fn the_effective_configuration_reads_back_as_the_same_configuration() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "0123456789abcdef0123").expect("write");
        let open_to_all = serve_config(ServeArgs {
            cluster_secret_file: Some(secret.clone()),
            ..ServeArgs::default()
        });
        {
            use std::os::unix::fs::PermissionsExt;
            if std::fs::metadata(&secret)
                .expect("meta")
                .permissions()
                .mode()
                & 0o004
                != 0
            {
                let e = open_to_all.expect_err("a world-readable secret is refused");
                assert!(e.message.contains("chmod 600"), "{}", e.message);
            }
            std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640))
                .expect("chmod");
        }
        let cfg = serve_config(ServeArgs {
            listen: Some("127.0.0.1:9100".into()),
            advertise: Some("10.1.2.3:9100".into()),
            http_listen: Some("127.0.0.1:9180".into()),
            shutdown_delay: Some("2s".into()),
            seeds: vec!["10.1.2.4:9100".into(), "peers.local:9100".into()],
            zone: Some("a".into()),
            cluster_secret_file: Some(secret.clone()),
            ..ServeArgs::default()
        })
        .expect("valid");
        let text = render_effective(&cfg).expect("render");
        assert!(text.contains("# cluster secret: set (from file"), "{text}");
        assert!(!text.contains("0123456789abcdef"), "no secret printed");
        let path = dir.path().join("effective.toml");
        std::fs::write(&path, &text).expect("write");
        let again = serve_config(ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
        .expect("reads back");
        assert_eq!(render_effective(&again).expect("render"), text);
        assert_eq!(again.shutdown_delay, Duration::from_secs(2));
        assert_eq!(again.http_listen.port(), 9180);
    }
}
