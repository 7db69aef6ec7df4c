//! A running node: its identity, storage, coordinator and counters.

pub mod health;
pub mod requests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ringkv_gossip::ClusterKey;
use ringkv_storage::{Backend, Disk, Driver, StorageError, Store, StoreConfig, SyncPolicy};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::shell::{ShellConfig, ShellError};
use crate::cluster::{ClusterState, ClusterView};
use crate::coordinator::{Coordinator, Settings};
use crate::hints::Hints;
use crate::net::Network;
use crate::object::Actor;
use crate::peer::Peers;
use crate::replica::{Limits, Replica};
use crate::ring::DEFAULT_RING_SIZE;
use crate::rpc::api::{
    ClusterStatus, MemberInfo, RingInfo, ServerInfo, ServiceStats, Status, StorageStatus,
};

/// After the last request in flight, how long no request may have been refused
/// before connections close (ring-aware clients stop sending once refused).
const LINGER_QUIET: Duration = Duration::from_millis(200);
/// The longest the refusals go on.
const LINGER_MAX: Duration = Duration::from_secs(2);

/// How a node takes part in a cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Addresses of nodes to join through.
    pub seeds: Vec<SocketAddr>,
    /// Seeds given by name (`HOST:PORT`), resolved to all their addresses on every
    /// join attempt (a headless Service name finds every pod).
    pub seed_names: Vec<String>,
    /// Failure zone of this node.
    pub zone: String,
    /// Request defaults (N, R, W, deadline, hinted handoff).
    pub settings: Settings,
    /// Key proving membership (datagram MACs, peer handshakes).
    pub key: ClusterKey,
    /// SWIM probe period.
    pub probe_period: Duration,
    /// A node alone without a shared secret: `key` is replaced by a random key kept
    /// in the data directory (so nobody can join, and the contexts it signs stay
    /// valid across its restarts).
    pub lone: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            seeds: Vec::new(),
            seed_names: Vec::new(),
            zone: String::new(),
            settings: Settings::default(),
            key: ClusterKey::derive(b"ringkv insecure development cluster"),
            probe_period: Duration::from_millis(500),
            lone: false,
        }
    }
}

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Data directory.
    pub data_dir: PathBuf,
    /// RPC listen address; gossip binds UDP on it too.
    pub listen: SocketAddr,
    /// The address peers and clients reach this node at, carried by gossip and the
    /// ring; `None` means the listen address (which then must not be unspecified
    /// when the node has peers).
    pub advertise: Option<SocketAddr>,
    /// Node id; defaults to the one stored in the data directory, else the listen
    /// address with a suffix unique to the directory.
    pub node_id: Option<String>,
    /// Sync policy of the store.
    pub sync: SyncPolicy,
    /// Client-visible limits.
    pub limits: Limits,
    /// Partitions on the ring.
    pub ring_size: u32,
    /// Most client connections served at once.
    pub max_connections: usize,
    /// Most requests in flight on one connection.
    pub max_in_flight_per_connection: usize,
    /// Cluster membership and request defaults.
    pub cluster: ClusterConfig,
    /// Anti-entropy, handoff and reaping.
    pub repair: crate::repair::RepairSettings,
    /// Registers resolve by last writer wins, losing concurrent writes. Never set
    /// this outside the simulation (see [`Replica::with_unsafe_lww`]).
    pub unsafe_lww: bool,
    /// The disk under the store (the simulation's models power loss).
    pub disk: Disk,
    /// Who runs the store's periodic syncs and checkpoints: its own threads, or
    /// this node's runtime on tokio's clock (the simulation's virtual time).
    pub store_driver: Driver,
    /// Storage engine of a new data directory (an existing one must match).
    pub storage: Backend,
    /// fjall's block cache in bytes.
    pub fjall_cache_bytes: u64,
    /// The log's segment size (`None`: the store's default, 64 MiB). The simulation
    /// uses small segments, so its runs have sealed files for the nemesis to damage.
    pub segment_bytes: Option<u64>,
    /// The epoch gossip datagrams of this start are stamped with (`None`: the
    /// clock's microseconds; the simulation gives its virtual time).
    pub gossip_epoch: Option<u64>,
    /// TLS on the client port and peer connections (`None`: plaintext).
    pub tls: Option<Arc<crate::tls::NodeTls>>,
    /// The tokens clients must show (`None`: no auth file, every client served).
    pub auth: Option<Arc<crate::auth::Keyring>>,
}

impl NodeConfig {
    /// Defaults for a data directory and listen address.
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        NodeConfig {
            data_dir: data_dir.into(),
            listen,
            advertise: None,
            node_id: None,
            sync: SyncPolicy::Interval(SyncPolicy::DEFAULT_INTERVAL),
            limits: Limits::default(),
            ring_size: DEFAULT_RING_SIZE,
            max_connections: 1024,
            max_in_flight_per_connection: 256,
            cluster: ClusterConfig::default(),
            repair: crate::repair::RepairSettings::default(),
            unsafe_lww: false,
            disk: Disk::Os,
            store_driver: Driver::Threads,
            storage: Backend::Log,
            fjall_cache_bytes: 64 << 20,
            segment_bytes: None,
            gossip_epoch: None,
            tls: None,
            auth: None,
        }
    }

    /// The address gossip and the ring carry for this node.
    pub fn advertised(&self) -> SocketAddr {
        self.advertise.unwrap_or(self.listen)
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The store could not be opened.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The data directory belongs to another node.
    #[error("data directory belongs to node {stored:?}, not {requested:?}")]
    NodeIdMismatch {
        /// Id recorded in the directory.
        stored: String,
        /// Id asked for.
        requested: String,
    },
    /// The data directory was created with another ring size.
    #[error("data directory was created with ring size {stored}, not {requested}")]
    RingSizeMismatch {
        /// Ring size recorded in the directory.
        stored: u32,
        /// Ring size asked for.
        requested: u32,
    },
    /// A metadata value has the wrong shape.
    #[error("corrupt metadata {name}: {len} bytes")]
    CorruptMeta {
        /// Metadata name.
        name: &'static str,
        /// Length found.
        len: usize,
    },
    /// The replica could not be prepared.
    #[error("replica: {0}")]
    Replica(String),
    /// Membership could not start.
    #[error(transparent)]
    Membership(#[from] ShellError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// Service counters, updated lock-free.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests answered.
    pub requests: AtomicU64,
    /// Requests answered with an error.
    pub request_errors: AtomicU64,
    /// Connections open.
    pub connections_open: AtomicU64,
    /// Connections refused at the limit.
    pub connections_refused: AtomicU64,
    /// Connections dropped for a bad frame.
    pub bad_frames: AtomicU64,
    /// Peer connections refused at the handshake.
    pub peer_handshakes_refused: AtomicU64,
    /// Peer requests refused (from removed nodes, or operators' tools asking for more
    /// than membership changes).
    pub peer_requests_refused: AtomicU64,
    /// Connections refused by TLS (a failed handshake, or plaintext to a TLS node).
    pub tls_refused: AtomicU64,
    /// Unidentified connections closed to make room for a newer one (a flood).
    pub connections_evicted: AtomicU64,
}

impl Stats {
    fn snapshot(&self) -> ServiceStats {
        ServiceStats {
            requests: self.requests.load(Ordering::Relaxed),
            request_errors: self.request_errors.load(Ordering::Relaxed),
            connections_open: self.connections_open.load(Ordering::Relaxed),
            connections_refused: self.connections_refused.load(Ordering::Relaxed),
            bad_frames: self.bad_frames.load(Ordering::Relaxed),
        }
    }
}

/// One node.
pub struct Node {
    config: NodeConfig,
    node_id: String,
    generation: u64,
    coordinator: Coordinator,
    repair: Arc<crate::repair::Repair>,
    started: Instant,
    /// Service counters.
    pub stats: Stats,
    /// Request latencies by operation and outcome.
    pub requests: requests::RequestStats,
    /// Serving, draining or closing; requests in flight.
    pub lifecycle: requests::Lifecycle,
    stop: tokio::sync::Notify,
    /// One `transfers` scan at a time.
    pub transfers_lock: tokio::sync::Mutex<()>,
}

fn read_u64(store: &Store, name: &'static str) -> Result<Option<u64>, NodeError> {
    match store.meta(name)? {
        None => Ok(None),
        Some(v) => {
            let arr: [u8; 8] = v
                .as_slice()
                .try_into()
                .map_err(|_| NodeError::CorruptMeta { name, len: v.len() })?;
            Ok(Some(u64::from_be_bytes(arr)))
        }
    }
}

impl Node {
    /// Opens the data directory, joins the cluster and starts background work (hint
    /// delivery) until `shutdown` is cancelled; `mint_actor` is called once, when the
    /// directory is new, for the random actor id of this replica.
    ///
    /// # Errors
    /// [`NodeError`] if the directory is locked, corrupt, belongs to another node, or
    /// the gossip socket cannot be bound.
    pub async fn start<N: Network>(
        mut config: NodeConfig,
        mint_actor: impl FnOnce() -> Actor,
        net: N,
        shutdown: CancellationToken,
    ) -> Result<SharedNode, NodeError> {
        let store = Store::open(StoreConfig {
            sync: config.sync,
            disk: config.disk.clone(),
            driver: config.store_driver,
            backend: config.storage,
            cache_bytes: config.fjall_cache_bytes,
            segment_bytes: config
                .segment_bytes
                .unwrap_or(StoreConfig::new(&config.data_dir).segment_bytes),
            ..StoreConfig::new(config.data_dir.clone())
        })?;
        let actor = match read_u64(&store, "actor")? {
            Some(a) => a,
            None => {
                let a = mint_actor();
                store.set_meta("actor", &a.to_be_bytes())?;
                a
            }
        };
        if config.cluster.lone {
            // From the OS's random source, never from guessable inputs (review C11).
            let key: [u8; 32] = match store.meta("lone_cluster_key")? {
                Some(k) => k
                    .as_slice()
                    .try_into()
                    .map_err(|_| NodeError::CorruptMeta {
                        name: "lone_cluster_key",
                        len: k.len(),
                    })?,
                None => {
                    let k: [u8; 32] = rand::random();
                    store.set_meta("lone_cluster_key", &k)?;
                    k
                }
            };
            config.cluster.key = ClusterKey::from_bytes(key);
        }
        let node_id = match (store.meta("node_id")?, &config.node_id) {
            (Some(stored), requested) => {
                let stored = String::from_utf8_lossy(&stored).into_owned();
                if let Some(requested) = requested
                    && requested != &stored
                {
                    return Err(NodeError::NodeIdMismatch {
                        stored,
                        requested: requested.clone(),
                    });
                }
                stored
            }
            (None, requested) => {
                // The default id is unique to this data directory: removal from a
                // cluster is final for an id, and a wiped node must come back as new.
                let id = requested
                    .clone()
                    .unwrap_or_else(|| format!("{}-{:04x}", config.advertised(), actor >> 48));
                store.set_meta("node_id", id.as_bytes())?;
                id
            }
        };
        match read_u64(&store, "ring_size")? {
            Some(stored) if stored != u64::from(config.ring_size) => {
                return Err(NodeError::RingSizeMismatch {
                    stored: stored as u32,
                    requested: config.ring_size,
                });
            }
            Some(_) => {}
            None => store.set_meta("ring_size", &u64::from(config.ring_size).to_be_bytes())?,
        }
        if store.driver() == Driver::Caller {
            tokio::spawn(drive_store(
                store.clone(),
                config.sync,
                shutdown.clone().cancelled_owned(),
            ));
        }
        let generation = read_u64(&store, "generation")?.unwrap_or(0) + 1;
        store.set_meta("generation", &generation.to_be_bytes())?;
        // Gossip datagrams are stamped with it: receivers refuse an epoch lower
        // than one they have seen, so it must rise on every start, even if the
        // clock went back (the last one is kept) or the directory is new (the clock).
        let clock = config.gossip_epoch.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64)
        });
        let epoch = clock.max(read_u64(&store, "gossip_epoch")?.unwrap_or(0) + 1);
        store.set_meta("gossip_epoch", &epoch.to_be_bytes())?;
        let hints = Arc::new(Hints::open(store.clone())?);
        let settings = config.cluster.settings;
        let (cluster, _gossip) = crate::cluster::shell::start(
            &net,
            ShellConfig {
                node_id: node_id.clone(),
                listen: config.listen,
                address: config.advertised(),
                zone: config.cluster.zone.clone(),
                generation,
                epoch,
                key: config.cluster.key.clone(),
                seeds: config.cluster.seeds.clone(),
                seed_names: config.cluster.seed_names.clone(),
                ring_size: config.ring_size,
                n: usize::from(settings.n),
                probe_period: config.cluster.probe_period,
            },
            store.clone(),
            shutdown.clone().cancelled_owned(),
        )
        .await?;
        let replica = Replica::new(store, actor, config.limits, config.ring_size)
            .map_err(|e| NodeError::Replica(e.to_string()))?
            .with_unsafe_lww(config.unsafe_lww);
        if config.unsafe_lww {
            tracing::warn!("registers resolve by last writer wins: concurrent writes WILL be lost");
        }
        let mut peers = Peers::new(
            net,
            config.cluster.key.clone(),
            node_id.clone(),
            config.limits.frame_bytes(),
        );
        if let Some(tls) = config.tls.clone() {
            peers = peers.with_tls(move || tls.peer_dialer());
        }
        let contexts = crate::object::ContextKey::of_cluster(&config.cluster.key);
        // Subscribed before anything dials a peer: no revival goes unheard.
        let revivals = cluster.revivals();
        let coordinator = Coordinator::new(replica, cluster, peers, hints, settings, contexts);
        tokio::spawn(crate::coordinator::deliver_hints(
            coordinator.clone(),
            shutdown.clone().cancelled_owned(),
        ));
        tokio::spawn(crate::coordinator::forgive_revived_peers(
            coordinator.clone(),
            revivals,
            shutdown.clone(),
        ));
        let repair = crate::repair::Repair::start(
            coordinator.clone(),
            config.repair,
            shutdown.cancelled_owned(),
        );
        tracing::info!(node_id, generation, actor = format!("{actor:016x}"), data_dir = %config.data_dir.display(), n = settings.n, r = settings.r, w = settings.w, "node opened");
        Ok(Arc::new(Node {
            coordinator,
            repair,
            config,
            node_id,
            generation,
            started: Instant::now(),
            stats: Stats::default(),
            requests: Default::default(),
            lifecycle: Default::default(),
            stop: tokio::sync::Notify::new(),
            transfers_lock: tokio::sync::Mutex::new(()),
        }))
    }

    /// The node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The request coordinator.
    pub fn coordinator(&self) -> &Coordinator {
        &self.coordinator
    }

    /// What clients learn on connecting.
    pub fn info(&self) -> ServerInfo {
        ServerInfo {
            node_id: self.node_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            limits: self.config.limits,
        }
    }

    /// The node's status.
    pub fn status(&self) -> Status {
        let store = self.coordinator.replica().store();
        Status {
            node_id: self.node_id.clone(),
            address: self.config.advertised().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            data_dir: self.config.data_dir.display().to_string(),
            sync: match self.config.sync {
                SyncPolicy::Always => "always".into(),
                SyncPolicy::Interval(d) => format!("interval ({} ms)", d.as_millis()),
                SyncPolicy::None => "none".into(),
            },
            ring_size: self.config.ring_size,
            generation: self.generation,
            keys_approx: store.approximate_len() as u64,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            limits: self.config.limits,
            stats: self.stats.snapshot(),
            cluster: self.cluster_status(),
            repair: self.repair.status(),
            ready: self.readiness().ready(),
            storage: {
                let trees = store.tree_stats();
                let log = store.log_stats();
                StorageStatus {
                    backend: store.backend().name().to_string(),
                    disk_bytes: log.bytes,
                    live_bytes: log.live_bytes,
                    segment_files: log.segments,
                    merges: log.merges,
                    truncated_bytes: log.truncated_bytes,
                    skipped_records: log.skipped_records,
                    skipped_bytes: log.skipped_bytes,
                    opened_clean: store.opened_clean(),
                    damaged_values_dropped: store.damaged_dropped(),
                    trees_from_checkpoint: trees.loaded_from_checkpoint,
                    trees_rebuilt_from_leaves: trees.rebuilt_from_leaves,
                    poisoned: store.is_poisoned(),
                }
            },
        }
    }

    fn cluster_status(&self) -> ClusterStatus {
        let sum = |kinds: &[std::sync::atomic::AtomicU64]| -> u64 {
            kinds.iter().map(|n| n.load(Ordering::Relaxed)).sum()
        };
        let c = &self.coordinator;
        let view = c.cluster().view();
        let g = c.cluster().gossip_stats();
        let s = c.settings();
        let hints = c.hints();
        let stats = c.stats();
        ClusterStatus {
            members: member_infos(&view),
            ring_epoch: view.epoch_hex(),
            n: s.n,
            r: s.r,
            w: s.w,
            hints_pending: hints.pending(),
            hints_bytes: hints.bytes(),
            hints_stored: hints.stored.load(Ordering::Relaxed),
            hints_delivered: hints.delivered.load(Ordering::Relaxed),
            forwarded: stats.forwarded.load(Ordering::Relaxed),
            read_repairs: stats.read_repairs.load(Ordering::Relaxed),
            quorum_failures: stats.quorum_failures.load(Ordering::Relaxed),
            gossip_in: g.datagrams_in,
            gossip_rejected_auth: g.rejected_auth,
            gossip_rejected_oversized: g.rejected_oversized,
            gossip_rejected_malformed: g.rejected_malformed,
            gossip_rejected_replay: g.rejected_replay,
            peer_handshakes_refused: self.stats.peer_handshakes_refused.load(Ordering::Relaxed),
            peer_requests_refused: self.stats.peer_requests_refused.load(Ordering::Relaxed),
            earlier_rings: view.previous.len() as u64,
            peer_batches: sum(&c.batch_stats().batches),
            peer_batched_items: sum(&c.batch_stats().batched_items),
            peer_redials: stats.peer_redials.load(Ordering::Relaxed),
        }
    }

    /// The ring as this node sees it.
    pub fn ring(&self) -> RingInfo {
        let view = self.coordinator.cluster().view();
        RingInfo {
            epoch: view.epoch_hex(),
            ring_size: self.config.ring_size,
            n: self.coordinator.settings().n,
            members: member_infos(&view),
            owners: view
                .ring
                .as_ref()
                .map(|r| (0..r.ring_size()).map(|p| r.owner(p).id.clone()).collect())
                .unwrap_or_default(),
        }
    }

    /// The repair service.
    pub fn repair(&self) -> &Arc<crate::repair::Repair> {
        &self.repair
    }

    /// The shared cluster state.
    pub fn cluster(&self) -> &Arc<ClusterState> {
        self.coordinator.cluster()
    }

    /// Asks the process serving this node to stop as on SIGTERM (`ringkv drain`).
    pub fn request_stop(&self) {
        self.stop.notify_one();
    }

    /// Completes when a stop was asked for with [`Node::request_stop`].
    pub async fn stop_requested(&self) {
        self.stop.notified().await;
    }

    /// Starts a graceful stop: the node reports not ready and tells its peers
    /// through gossip that it is going down (not a leave: no data moves, and it
    /// comes back as itself), so coordinators and ring-aware clients send to the
    /// other replicas. It goes on serving until [`Node::close_requests`].
    pub async fn begin_drain(&self) {
        if self.lifecycle.start_draining() {
            return;
        }
        tracing::info!("draining: not ready, telling peers this node is stopping");
        if let Err(error) = self
            .cluster()
            .command(crate::cluster::shell::Command::Stopping)
            .await
        {
            tracing::warn!(%error, "cannot announce the stop");
        }
    }

    /// Refuses new client and forwarded requests (nothing applied: clients send
    /// them elsewhere) and waits, at most `limit`, for those in flight; returns how
    /// many were still running when it gave up.
    pub async fn close_requests(&self, limit: Duration) -> u64 {
        self.lifecycle.close();
        let deadline = Instant::now() + limit;
        while self.lifecycle.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Connections close next, and a request sent on one just before would be
        // cut off with its outcome unknown. So connections stay up, refusing (a
        // refusal is safe to retry elsewhere), until clients have stopped sending
        // here: no refusal for a quiet stretch, at most `LINGER_MAX`.
        let linger_until = Instant::now() + LINGER_MAX;
        loop {
            let refused = self.lifecycle.refused();
            tokio::time::sleep(LINGER_QUIET).await;
            if self.lifecycle.refused() == refused || Instant::now() >= linger_until {
                break;
            }
        }
        self.lifecycle.in_flight()
    }

    /// Syncs the store (whatever the policy).
    ///
    /// # Errors
    /// [`StorageError`] if the sync fails.
    pub fn sync(&self) -> Result<(), StorageError> {
        self.coordinator.replica().store().sync()
    }

    /// Closes the store on shutdown: trees checkpointed, everything synced, a clean
    /// stop recorded (the next start then trusts what is on disk). Writes still
    /// arriving are refused.
    ///
    /// # Errors
    /// [`StorageError`] if the checkpoint, sync or metadata write fails.
    pub fn close(&self) -> Result<(), StorageError> {
        self.coordinator.replica().store().close()
    }
}

/// The periodic work of a store opened with [`Driver::Caller`], on tokio's clock:
/// the interval sync, and a tree checkpoint every [`ringkv_storage::CHECKPOINT_INTERVAL`].
async fn drive_store(
    store: Store,
    sync: SyncPolicy,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let every = match sync {
        SyncPolicy::Interval(d) => d,
        SyncPolicy::Always | SyncPolicy::None => ringkv_storage::CHECKPOINT_INTERVAL,
    };
    tokio::pin!(shutdown);
    let mut since_checkpoint = Duration::ZERO;
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => return,
            () = tokio::time::sleep(every) => {}
        }
        since_checkpoint += every;
        let checkpoint = since_checkpoint >= ringkv_storage::CHECKPOINT_INTERVAL;
        if checkpoint {
            since_checkpoint = Duration::ZERO;
        }
        if let Err(error) = store.tick(true, checkpoint) {
            tracing::error!(%error, "periodic store sync failed");
        }
    }
}

fn member_infos(view: &ClusterView) -> Vec<MemberInfo> {
    view.members
        .iter()
        .map(|r| MemberInfo {
            node_id: r.node_id.clone(),
            address: r.address.clone(),
            zone: r.zone.clone(),
            status: r.status.to_string(),
            liveness: view.liveness_of(&r.node_id).to_string(),
        })
        .collect()
}

/// Shared handle on a node.
pub type SharedNode = Arc<Node>;
