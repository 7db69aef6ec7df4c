//! Argument definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// ringkv: a leaderless, Dynamo-style key-value store.
#[derive(Parser, Debug)]
#[command(name = "ringkv", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every client command.
#[derive(Args, Debug, Clone)]
pub struct ClientOpts {
    /// Node to talk to.
    #[arg(long, default_value = "127.0.0.1:7400", global = true)]
    pub connect: String,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// Request deadline in milliseconds.
    #[arg(long = "timeout-ms", global = true)]
    pub timeout_ms: Option<u64>,
    /// Replies a read needs [default: the node's --r].
    #[arg(long, global = true)]
    pub r: Option<u8>,
    /// Acknowledgements a write needs [default: the node's --w].
    #[arg(long, global = true)]
    pub w: Option<u8>,
    /// Of the read replies, how many must come from primaries [default: 0].
    #[arg(long, global = true)]
    pub pr: Option<u8>,
    /// Of the write acknowledgements, how many must come from primaries [default: 0].
    #[arg(long, global = true)]
    pub pw: Option<u8>,
    #[command(flatten)]
    pub security: SecurityOpts,
}

/// How client commands prove themselves: a token, TLS.
#[derive(Args, Debug, Clone, Default)]
pub struct SecurityOpts {
    /// Token for nodes with an auth file (`ringkv token create`).
    #[arg(long, global = true, env = "RINGKV_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The cluster's CA certificate: connect with TLS, checking the node against it.
    #[arg(long = "tls-ca", global = true, env = "RINGKV_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// A client certificate to show (with --tls-key): the membership commands'
    /// cluster-secret path needs one on a TLS cluster.
    #[arg(long = "tls-cert", global = true, env = "RINGKV_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(long = "tls-key", global = true, env = "RINGKV_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node in the foreground.
    Serve(Box<ServeArgs>),
    /// Write a register value; prints the new context.
    Put {
        /// The key.
        key: String,
        /// The value (or use --value-file).
        value: Option<String>,
        /// Context from a previous read: replaces exactly what that read saw.
        #[arg(long)]
        context: Option<String>,
        /// Read the value from a file, or from stdin with `-`.
        #[arg(long = "value-file", conflicts_with = "value")]
        value_file: Option<PathBuf>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Read a register: one line per sibling.
    Get {
        /// The key.
        key: String,
        /// Also print the context (last line, `context: CTX`).
        #[arg(long = "show-context")]
        show_context: bool,
        /// Print values base64-encoded.
        #[arg(long)]
        base64: bool,
        /// Read only the connected node's own replica (diagnostics).
        #[arg(long)]
        local: bool,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Delete a register (what --context covers, else every value visible now).
    Delete {
        /// The key.
        key: String,
        /// Context from a previous read.
        #[arg(long)]
        context: Option<String>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Counters (PN-counters).
    Counter {
        #[command(subcommand)]
        op: CounterOp,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Sets (observed-remove sets of strings).
    Set {
        #[command(subcommand)]
        op: SetOp,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Show the node's status.
    Status {
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Show the ring: partition owners and counts per node.
    Ring {
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Make the connected node leave the cluster (needs the cluster secret).
    Leave {
        /// Print the partitions that would move, and change nothing.
        #[arg(long = "dry-run")]
        dry_run: bool,
        /// Block, printing progress, until the node owns and holds nothing.
        #[arg(long)]
        wait: bool,
        /// Longest --wait [default: 1h].
        #[arg(long, value_parser = parse_duration, requires = "wait")]
        timeout: Option<std::time::Duration>,
        #[command(flatten)]
        secret: SecretOpts,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Remove a (dead) node from the cluster (needs the cluster secret).
    Remove {
        /// Id of the node to remove.
        node_id: String,
        /// Print the partitions that would move, and change nothing.
        #[arg(long = "dry-run")]
        dry_run: bool,
        #[command(flatten)]
        secret: SecretOpts,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Run an anti-entropy round on the connected node now and report it.
    Repair {
        /// Only this partition.
        #[arg(long)]
        partition: Option<u32>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Probe a node's HTTP port: exit 0 when live (or ready, with --ready), 3 if
    /// not (the container health check: a scratch image has no curl).
    Health {
        /// Check readiness (/readyz) instead of liveness (/livez).
        #[arg(long)]
        ready: bool,
        /// The node's HTTP address [default: RINGKV_HTTP_LISTEN, an unspecified IP
        /// read as 127.0.0.1, else 127.0.0.1:7480].
        #[arg(long)]
        http: Option<String>,
        /// Print machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Wait until every partition has all its replicas up, every member agrees on
    /// the ring and no hints wait anywhere (the gate between two restarts); exit 0,
    /// or 3 at the timeout.
    WaitHealthy {
        /// Longest wait [default: 5m].
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<std::time::Duration>,
        /// Hints allowed to wait, summed over the members [default: 0].
        #[arg(long = "max-hints", default_value_t = 0)]
        max_hints: u64,
        /// Also wait until at least this many members are active (a cluster
        /// starting: the connected node may not know the others yet).
        #[arg(long)]
        members: Option<usize>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Show handoffs out of the node (keys and bytes left), what repair moved, and
    /// hints by target.
    Transfers {
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Stop the connected node gracefully, as SIGTERM does (not a leave: no data
    /// moves; needs the cluster secret).
    Drain {
        #[command(flatten)]
        secret: SecretOpts,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Run a local cluster of K nodes for development (stops them all on Ctrl-C).
    Dev(DevArgs),
    /// Client tokens for nodes with an auth file.
    Token {
        #[command(subcommand)]
        op: TokenOp,
    },
    /// Certificates for TLS: a cluster CA, node and client certificates.
    Certs {
        #[command(subcommand)]
        op: CertsOp,
    },
    /// Measure put and get throughput and latency against a node.
    Bench(BenchArgs),
}

#[derive(Subcommand, Debug)]
pub enum TokenOp {
    /// Make a new random token: prints it on the first line and, on the second, the
    /// line to append to every node's --auth-file (nodes keep only its hash).
    Create {
        /// What it may do: read, write (also put, delete, counter add, set add and
        /// remove) or admin (also repair, leave, remove, drain).
        #[arg(long, value_enum)]
        role: RoleArg,
        /// A name for it, shown in refusals and logs [default: the role].
        #[arg(long)]
        name: Option<String>,
        /// Print JSON instead.
        #[arg(long)]
        json: bool,
    },
}

/// A token's role.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleArg {
    Read,
    Write,
    Admin,
}

#[derive(Subcommand, Debug)]
pub enum CertsOp {
    /// Make a cluster CA: DIR/ca.crt and DIR/ca.key (keep the key off the nodes).
    Init {
        /// Where the files go.
        #[arg(long)]
        dir: PathBuf,
        /// Days it is valid [default: 3650].
        #[arg(long, default_value_t = 3650)]
        days: i64,
    },
    /// A node certificate signed by the CA in DIR: DIR/NAME.crt and DIR/NAME.key,
    /// valid for NAME, localhost, 127.0.0.1 and every --host.
    Node {
        /// The node's name (a host name it is reached by).
        name: String,
        /// Where the CA is and the files go.
        #[arg(long)]
        dir: PathBuf,
        /// Another DNS name or IP address the node is reached at (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Days it is valid [default: 365].
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// A client certificate signed by the CA in DIR: DIR/NAME.crt and DIR/NAME.key.
    Client {
        /// The client's name.
        name: String,
        /// Where the CA is and the files go.
        #[arg(long)]
        dir: PathBuf,
        /// Days it is valid [default: 365].
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
}

/// The cluster secret, for operator commands.
#[derive(Args, Debug, Clone)]
pub struct SecretOpts {
    /// File holding the cluster secret (or set RINGKV_CLUSTER_SECRET).
    #[arg(long = "cluster-secret-file")]
    pub cluster_secret_file: Option<PathBuf>,
    /// The cluster runs without a secret (`ringkv dev`).
    #[arg(long = "insecure-dev")]
    pub insecure_dev: bool,
}

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Nodes to start.
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Port of the first node; the others follow.
    #[arg(long = "base-port", default_value_t = 7400)]
    pub base_port: u16,
    /// Directory holding one data directory per node.
    #[arg(long = "data-dir", default_value = "./ringkv-dev")]
    pub data_dir: PathBuf,
    /// Replicas per key.
    #[arg(long, default_value_t = 3)]
    pub n: u8,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

#[derive(Subcommand, Debug)]
pub enum CounterOp {
    /// Add DELTA (may be negative); prints the new value.
    #[command(allow_negative_numbers = true)]
    Add {
        /// The key.
        key: String,
        /// Signed amount.
        delta: i64,
    },
    /// Print the value.
    Get {
        /// The key.
        key: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SetOp {
    /// Add a member.
    Add {
        /// The key.
        key: String,
        /// The member.
        member: String,
    },
    /// Remove a member.
    Remove {
        /// The key.
        key: String,
        /// The member.
        member: String,
    },
    /// List members, one per line.
    Members {
        /// The key.
        key: String,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncArg {
    /// fsync before acknowledging every write.
    Always,
    /// Group commit: fsync every --sync-interval-ms.
    Interval,
    /// Never fsync.
    None,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageArg {
    /// ringkv's log: every key in memory, the best tail latency.
    Log,
    /// fjall's LSM tree: key sets larger than memory.
    Fjall,
}

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML file with any of the options below (flags win, then RINGKV_* variables).
    #[arg(long, env = "RINGKV_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./ringkv-data].
    #[arg(long = "data-dir", env = "RINGKV_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// RPC and gossip address to bind [default: 127.0.0.1:7400].
    #[arg(long, env = "RINGKV_LISTEN")]
    pub listen: Option<String>,
    /// Address peers and clients reach this node at, IP:PORT or NAME:PORT; gossip
    /// and the ring carry it [default: the listen address].
    #[arg(long, env = "RINGKV_ADVERTISE")]
    pub advertise: Option<String>,
    /// HTTP address for /metrics, /livez, /readyz, /v1/cluster/health and the status
    /// page [default: 127.0.0.1:7480].
    #[arg(long = "http-listen", env = "RINGKV_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// On SIGTERM, how long the node reports not ready before it stops taking
    /// requests, so load balancers route away first [default: 5s].
    #[arg(long = "shutdown-delay", env = "RINGKV_SHUTDOWN_DELAY")]
    pub shutdown_delay: Option<String>,
    /// A storage write stuck this long makes /livez fail [default: 30s].
    #[arg(long = "stall-threshold", env = "RINGKV_STALL_THRESHOLD")]
    pub stall_threshold: Option<String>,
    /// Node id [default: stored id, else the advertised address].
    #[arg(long = "node-id", env = "RINGKV_NODE_ID")]
    pub node_id: Option<String>,
    /// Sync policy [default: interval].
    #[arg(long, value_enum, env = "RINGKV_SYNC")]
    pub sync: Option<SyncArg>,
    /// Group-commit window of --sync interval [default: 100].
    #[arg(long = "sync-interval-ms", env = "RINGKV_SYNC_INTERVAL_MS")]
    pub sync_interval_ms: Option<u64>,
    /// Storage engine of a new data directory; an existing one keeps its own and
    /// refuses the other [default: log].
    #[arg(long, value_enum, env = "RINGKV_STORAGE")]
    pub storage: Option<StorageArg>,
    /// fjall's block cache in MiB (--storage fjall only) [default: 64].
    #[arg(long = "fjall-cache-mb", env = "RINGKV_FJALL_CACHE_MB")]
    pub fjall_cache_mb: Option<u64>,
    /// Partitions on the ring, a power of two [default: 256].
    #[arg(long = "ring-size", env = "RINGKV_RING_SIZE")]
    pub ring_size: Option<u32>,
    /// Longest key in bytes [default: 1024].
    #[arg(long = "max-key-bytes", env = "RINGKV_MAX_KEY_BYTES")]
    pub max_key_bytes: Option<usize>,
    /// Longest value in bytes [default: 4194304].
    #[arg(long = "max-value-bytes", env = "RINGKV_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<usize>,
    /// Largest object (all siblings together) in bytes [default: 16777216].
    #[arg(long = "max-object-bytes", env = "RINGKV_MAX_OBJECT_BYTES")]
    pub max_object_bytes: Option<usize>,
    /// Siblings beyond which writes are refused [default: 100].
    #[arg(long = "max-siblings", env = "RINGKV_MAX_SIBLINGS")]
    pub max_siblings: Option<usize>,
    /// Most client connections at once [default: 1024].
    #[arg(long = "max-connections", env = "RINGKV_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most requests in flight on one connection; more are refused at once [default: 256].
    #[arg(long = "max-in-flight", env = "RINGKV_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    /// Node to join through, IP:PORT or NAME:PORT; a name stands for every address
    /// it resolves to, resolved again on every join attempt (repeatable).
    #[arg(long = "seed", value_delimiter = ',', env = "RINGKV_SEEDS")]
    pub seeds: Vec<String>,
    /// Failure zone of this node (replicas spread over zones).
    #[arg(long, env = "RINGKV_ZONE")]
    pub zone: Option<String>,
    /// Replicas per key [default: 3].
    #[arg(long, env = "RINGKV_N")]
    pub n: Option<u8>,
    /// Default read quorum [default: 2].
    #[arg(long, env = "RINGKV_R")]
    pub r: Option<u8>,
    /// Default write quorum [default: 2].
    #[arg(long, env = "RINGKV_W")]
    pub w: Option<u8>,
    /// Default request deadline in milliseconds [default: 5000].
    #[arg(long = "request-timeout-ms", env = "RINGKV_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Whether fallbacks take writes for unreachable primaries [default: on].
    #[arg(long = "hinted-handoff", value_enum, env = "RINGKV_HINTED_HANDOFF")]
    pub hinted_handoff: Option<OnOff>,
    /// File holding the cluster secret (or put the secret in RINGKV_CLUSTER_SECRET).
    #[arg(long = "cluster-secret-file", env = "RINGKV_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// File holding a second cluster secret, accepted but never used to sign: to
    /// rotate, restart every node accepting the new secret, then signing with the
    /// new and accepting the old, then with the new alone.
    #[arg(
        long = "accept-cluster-secret-file",
        env = "RINGKV_ACCEPT_CLUSTER_SECRET_FILE"
    )]
    pub accept_cluster_secret_file: Option<PathBuf>,
    /// Join without a cluster secret (local development only: anyone can join).
    #[arg(long = "insecure-dev", env = "RINGKV_INSECURE_DEV")]
    pub insecure_dev: bool,
    /// The node's TLS certificate (PEM; `ringkv certs node`): TLS on the client
    /// port and peer connections. Reloaded when it changes or on SIGHUP.
    #[arg(long = "tls-cert", env = "RINGKV_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long = "tls-key", env = "RINGKV_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The cluster's CA certificate (PEM): peers must show a certificate it signed.
    #[arg(long = "tls-ca", env = "RINGKV_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// The tokens clients must show: lines `NAME ROLE HASH` (`ringkv token create`
    /// prints them). Reloaded when it changes or on SIGHUP.
    #[arg(long = "auth-file", env = "RINGKV_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
    /// Serve a non-loopback address without TLS or without an auth file (anyone
    /// who can reach the port can read and write everything).
    #[arg(long, env = "RINGKV_INSECURE")]
    pub insecure: bool,
    /// SWIM probe period in milliseconds [default: 500].
    #[arg(long = "probe-ms", env = "RINGKV_PROBE_MS")]
    pub probe_ms: Option<u64>,
    /// Time between anti-entropy rounds in milliseconds [default: 10000].
    #[arg(
        long = "anti-entropy-interval-ms",
        env = "RINGKV_ANTI_ENTROPY_INTERVAL_MS"
    )]
    pub anti_entropy_interval_ms: Option<u64>,
    /// Anti-entropy exchanges running at once [default: 2].
    #[arg(
        long = "anti-entropy-concurrency",
        env = "RINGKV_ANTI_ENTROPY_CONCURRENCY"
    )]
    pub anti_entropy_concurrency: Option<usize>,
    /// Repair bandwidth in MiB/s (objects moved by anti-entropy and handoff) [default: 16].
    #[arg(
        long = "anti-entropy-mb-per-sec",
        env = "RINGKV_ANTI_ENTROPY_MB_PER_SEC"
    )]
    pub anti_entropy_mb_per_sec: Option<u64>,
    /// Parse the flags, file and environment, print the effective configuration
    /// (secrets left out) and exit.
    #[arg(long = "check-config")]
    pub check_config: bool,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub security: SecurityOpts,
    /// YCSB core workload: a (50% read, 50% update), b (95/5), c (read only),
    /// d (95% read latest, 5% insert), f (50% read, 50% read-modify-write).
    /// E (scans) is refused: keys are hash partitioned.
    #[arg(long, default_value = "c")]
    pub workload: String,
    /// Key distribution instead of the workload's own: uniform, zipfian or latest.
    #[arg(long)]
    pub distribution: Option<String>,
    /// Records written by the load phase.
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    /// Measured operations of the run phase [default: 100000 unless --duration].
    #[arg(long, conflicts_with = "duration")]
    pub operations: Option<u64>,
    /// Length of the measured run phase instead of --operations (90s, 2m, 500ms).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Unmeasured run before the measured one (shown shaded in the plot).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub warmup: std::time::Duration,
    /// Operations in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Client connections the operations are multiplexed over. A few spread the
    /// server's work over its cores and still let requests batch; one per operation
    /// in flight (YCSB's habit) loses the batching.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Open loop at this many operations per second; latency counts from each
    /// operation's intended start. Without it: closed loop, as fast as it goes.
    #[arg(long, allow_negative_numbers = true)]
    pub target: Option<f64>,
    /// Bytes per value.
    #[arg(long = "value-size", default_value_t = 1000)]
    pub value_size: usize,
    /// Seed of the key choosers and values.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Nodes to drive (repeatable; connections are spread over them).
    #[arg(long, num_args = 1.., default_value = "127.0.0.1:7400", conflicts_with = "nodes")]
    pub connect: Vec<String>,
    /// Replies a read needs [default: the node's --r].
    #[arg(long)]
    pub r: Option<u8>,
    /// Acknowledgements a write needs [default: the node's --w].
    #[arg(long)]
    pub w: Option<u8>,
    /// Deadline of one request in milliseconds.
    #[arg(long = "timeout-ms", default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Skip the load phase (the records were loaded by an earlier run).
    #[arg(long = "skip-load")]
    pub skip_load: bool,
    /// Write every figure and the configuration as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw throughput and p99 per second as SVG to this file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// No progress display.
    #[arg(long)]
    pub quiet: bool,
    /// Send everything to --connect instead of straight to each key's primary.
    #[arg(long = "no-routing")]
    pub no_routing: bool,
    /// Drive the data API over HTTP at this address (a node's --http-listen,
    /// plaintext, one connection per worker) instead of the client port;
    /// --connect still names that node (for the report and the CPU meter).
    #[arg(long, conflicts_with = "nodes")]
    pub http: Option<String>,
    /// Start a local cluster of this many nodes for the run (ports from
    /// --base-port, data in --data-dir) and stop it afterwards, instead of --connect.
    #[arg(long)]
    pub nodes: Option<u16>,
    /// Replicas per key of the local cluster.
    #[arg(long, default_value_t = 3, requires = "nodes")]
    pub n: u8,
    /// First port of the local cluster.
    #[arg(long = "base-port", default_value_t = 7700, requires = "nodes")]
    pub base_port: u16,
    /// Data directory of the local cluster [default: a fresh one, removed afterwards].
    #[arg(long = "data-dir", requires = "nodes")]
    pub data_dir: Option<PathBuf>,
    /// Kill this node of the local cluster during the run (node-1, node-2, ...).
    #[arg(long = "kill-node", requires_all = ["nodes", "at"])]
    pub kill_node: Option<String>,
    /// When to kill it, from the start of the run phase (20s).
    #[arg(long, value_parser = parse_duration, requires = "kill_node")]
    pub at: Option<std::time::Duration>,
    /// When to start it again, from the start of the run phase (40s).
    #[arg(long = "restart-at", value_parser = parse_duration, requires = "kill_node")]
    pub restart_at: Option<std::time::Duration>,
}

/// `90`, `90s`, `2m`, `500ms` or `1.5s`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 2m or 500ms"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "ms" => n / 1000.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?} (use ms, s, m or h)"
            ));
        }
    };
    std::time::Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is out of range"))
}
