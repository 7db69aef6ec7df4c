//! The tokio shell around the membership state machine: it owns the UDP socket
//! (through the transport seam), turns scheduled timers into sleeps, publishes
//! [`ClusterView`]s, and moves this node's own record through its lifecycle.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ringkv_gossip::{
    ClusterKey, Gossip, GossipConfig, GossipTimer, Identity, Liveness, Members, NodeRecord, Output,
    Status,
};
use ringkv_storage::Store;
use tokio::sync::{mpsc, oneshot};

use super::{ClusterState, ClusterView};
use crate::net::{Datagram, Network};

/// Requests to the shell.
#[derive(Debug)]
pub enum Command {
    /// Mark this node as leaving (it stops owning partitions).
    Leave(oneshot::Sender<Result<(), String>>),
    /// An operator removes a (dead) node from the cluster.
    Remove(String, oneshot::Sender<Result<(), String>>),
    /// This node left and holds nothing any more (no partition data, no hints):
    /// it removes itself, so it no longer counts as a member reaping must hear
    /// from once it is shut down (review C15).
    Retire,
    /// The node is stopping (a drain): peers see it down at once, not after SWIM's
    /// suspicion timeout, so they stop sending to it while it still answers. It
    /// stays a member: when it starts again it is back as itself.
    Stopping,
    /// The seeds given by name resolved to these addresses (sent by the shell's
    /// own resolver).
    Resolved(Vec<SocketAddr>),
}

/// What the shell needs to start.
#[derive(Clone, Debug)]
pub struct ShellConfig {
    /// This node's id.
    pub node_id: String,
    /// Address gossip binds UDP on (the RPC listen address).
    pub listen: SocketAddr,
    /// Address this node is known by: gossip and the ring carry it.
    pub address: SocketAddr,
    /// Failure zone.
    pub zone: String,
    /// Start count of the data directory.
    pub generation: u64,
    /// Epoch stamped on this start's gossip datagrams (higher than any earlier).
    pub epoch: u64,
    /// Datagram key.
    pub key: ClusterKey,
    /// Addresses to join through.
    pub seeds: Vec<SocketAddr>,
    /// Seeds given by name (`HOST:PORT`): resolved to every address they stand for,
    /// again on every join attempt.
    pub seed_names: Vec<String>,
    /// Partitions on the ring.
    pub ring_size: u32,
    /// Replicas per key.
    pub n: usize,
    /// SWIM probe period.
    pub probe_period: Duration,
}

/// Why membership could not start.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// The UDP socket could not be bound.
    #[error("cannot bind gossip socket on udp {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// This data directory belongs to a node an operator removed.
    #[error(
        "this node id was removed from its cluster, for good; start a new data directory (with another --node-id, if you set one) to join as a new node"
    )]
    Removed,
    /// Metadata could not be read or written.
    #[error("membership metadata: {0}")]
    Storage(#[from] ringkv_storage::StorageError),
}

const META_STATUS: &str = "member_status";
const META_MEMBERS: &str = "members";
const META_REMOVED: &str = "member_removed";

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Joining => "joining",
        Status::Active => "active",
        Status::Leaving => "leaving",
        Status::Removed => "removed",
    }
}

/// Starts membership: binds UDP, announces to the seeds, and runs until `shutdown`.
///
/// # Errors
/// [`ShellError`] if the socket cannot be bound or the node was removed.
pub async fn start<N: Network>(
    net: &N,
    cfg: ShellConfig,
    store: Store,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(Arc<ClusterState>, tokio::task::JoinHandle<()>), ShellError> {
    if store.meta(META_REMOVED)?.is_some() {
        return Err(ShellError::Removed);
    }
    let socket = net
        .bind_udp(cfg.listen)
        .await
        .map_err(|source| ShellError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let is_seed = is_a_seed(
        cfg.address,
        &cfg.seeds,
        !cfg.seed_names.is_empty() && cfg.seeds.is_empty(),
    );
    // A node that was active stays active across restarts; a new node is joining
    // until it has heard from an active member, unless it is the seed that founds
    // the cluster (see `is_a_seed`): alone at once when it is its only seed, or once
    // it knows a majority of its seeds and all of them are new (see `may_found`).
    let status = match store.meta(META_STATUS)?.as_deref() {
        Some(b"active") => Status::Active,
        Some(b"leaving") => Status::Leaving,
        _ if is_seed && founds_alone(cfg.address, &cfg.seeds) => Status::Active,
        _ => Status::Joining,
    };
    store.set_meta(META_STATUS, status_name(status).as_bytes())?;
    let own = NodeRecord {
        // Versions of earlier starts are always lower.
        version: cfg.generation << 20,
        status,
        node_id: cfg.node_id.clone(),
        address: cfg.address.to_string(),
        zone: cfg.zone.clone(),
    };
    let mut gcfg = GossipConfig::new(cfg.key.clone(), cfg.seeds.clone());
    gcfg.probe_period = cfg.probe_period;
    gcfg.epoch = cfg.epoch;
    let seed = u64::from_be_bytes(
        blake3::hash(format!("{}/{}", cfg.node_id, cfg.generation).as_bytes()).as_bytes()[..8]
            .try_into()
            .unwrap_or([0; 8]),
    );
    let known: Vec<NodeRecord> = match store.meta(META_MEMBERS)? {
        None => Vec::new(),
        Some(bytes) => match postcard::from_bytes::<(u8, Vec<NodeRecord>)>(&bytes) {
            Ok((1, records)) => records,
            Ok((version, _)) => {
                tracing::warn!(
                    version,
                    "saved member set has an unknown format; starting without it"
                );
                Vec::new()
            }
            Err(error) => {
                tracing::warn!(%error, "saved member set is unreadable; starting without it");
                Vec::new()
            }
        },
    };
    let (gossip, first) = Gossip::new(
        Identity {
            addr: cfg.address,
            generation: cfg.generation,
            node: ringkv_gossip::node_hash(&cfg.node_id),
        },
        own.clone(),
        known,
        gcfg,
        seed,
    );
    let view = ClusterView::new(
        cfg.node_id.clone(),
        gossip.members(),
        &gossip.liveness_by_node(),
        cfg.ring_size,
        cfg.n,
        None,
    );
    let (tx, rx) = mpsc::channel(64);
    let state = Arc::new(ClusterState {
        view: RwLock::new(Arc::new(view)),
        gossip_stats: RwLock::new(gossip.stats()),
        commands: tx,
        removed: std::sync::atomic::AtomicBool::new(false),
        revivals: tokio::sync::broadcast::channel(super::REVIVALS_QUEUE).0,
    });
    if !cfg.seed_names.is_empty() {
        tokio::spawn(resolve_seeds(
            net.clone(),
            cfg.seed_names.clone(),
            Arc::downgrade(&state),
        ));
    }
    let shell = Shell {
        gossip,
        cfg,
        store,
        state: state.clone(),
        own,
        liveness: BTreeMap::new(),
        generations: BTreeMap::new(),
        is_seed,
    };
    let handle = tokio::spawn(shell.run(socket, rx, first, shutdown));
    Ok((state, handle))
}

struct Shell {
    gossip: Gossip,
    cfg: ShellConfig,
    store: Store,
    state: Arc<ClusterState>,
    own: NodeRecord,
    liveness: BTreeMap<u64, Liveness>,
    /// SWIM's generation of each node at the last refresh.
    generations: BTreeMap<u64, u64>,
    is_seed: bool,
}

/// Whether a node known by `me` may start a cluster of its own: it has no seeds at
/// all, or it is the lowest-addressed of them. Nodes started together from one seed
/// list (a compose file, a headless Service name that resolves to every pod) thus
/// elect one bootstrapper without talking; the others join it, and stay joining
/// (not ready) until they have heard from an active member. A node whose seeds are
/// all others never bootstraps. Until names resolve (`names_pending`), a node is no
/// seed, and an answer that resolves to nothing changes nothing.
fn is_a_seed(me: SocketAddr, seeds: &[SocketAddr], names_pending: bool) -> bool {
    if names_pending {
        return false;
    }
    match seeds.iter().min() {
        None => true,
        Some(lowest) => *lowest == me,
    }
}

/// Whether the founding seed needs nobody: it has no seeds, or it is the only one.
fn founds_alone(me: SocketAddr, seeds: &[SocketAddr]) -> bool {
    seeds.iter().all(|s| *s == me)
}

/// Whether the founding seed `me` (see [`is_a_seed`]) may make itself active now,
/// founding a cluster: it knows a record of a majority of its seed addresses
/// (its own included) and every record it knows besides its own is joining.
///
/// Founding at once, as the lowest seed did before, founded a second cluster of one
/// whenever a new node came up on that address while the old cluster was out of
/// reach (the first node's disk lost and the node started again during a
/// partition, found by simulation seed 343): it acknowledged writes at a quorum of
/// one and reaped tombstones as the only member, then met the old cluster, whose
/// copies brought deleted values back. Waiting for a majority of the seeds to be
/// new, as Consul's `bootstrap_expect` waits for its servers, tells the two apart
/// whenever the old cluster still holds most of the seed addresses. A node whose
/// only seed is itself still founds at once (`ringkv local` and `dev` seed every
/// node with the first): after losing that node's disk, start it with another
/// member as its seed.
fn may_found(me: &str, members: &Members, seeds: &[SocketAddr]) -> bool {
    let mut known: Vec<SocketAddr> = Vec::new();
    for r in members.iter() {
        if r.node_id != me && r.status != Status::Joining {
            return false;
        }
        if let Ok(a) = r.address.parse::<SocketAddr>()
            && seeds.contains(&a)
            && !known.contains(&a)
        {
            known.push(a);
        }
    }
    let mut all = seeds.to_vec();
    all.sort();
    all.dedup();
    known.len() > all.len() / 2
}

/// First and longest pause between resolutions of the seed names while the node
/// knows no other live member (a join attempt each time), and the pause once it
/// does (the addresses are kept fresh for the re-announces after a split).
const RESOLVE_FIRST: Duration = Duration::from_secs(1);
const RESOLVE_LONGEST: Duration = Duration::from_secs(30);

/// Resolves the seed names again and again, with back-off, and hands the addresses
/// to the shell; ends with the shell.
async fn resolve_seeds<N: Network>(
    net: N,
    names: Vec<String>,
    state: std::sync::Weak<ClusterState>,
) {
    let mut pause = RESOLVE_FIRST;
    let mut last: Option<Vec<SocketAddr>> = None;
    loop {
        let mut all = Vec::new();
        for name in &names {
            match net.resolve(name).await {
                Ok(addrs) => all.extend(addrs),
                Err(error) => tracing::warn!(seed = %name, %error, "cannot resolve seed"),
            }
        }
        all.sort();
        all.dedup();
        let Some(state) = state.upgrade() else {
            return;
        };
        // Nothing resolved (no endpoints yet, a DNS outage): keep what is known
        // rather than look like a node without seeds, which would bootstrap.
        if !all.is_empty() && last.as_ref() != Some(&all) {
            tracing::info!(seeds = ?all, "seed names resolved");
            if state
                .commands
                .send(Command::Resolved(all.clone()))
                .await
                .is_err()
            {
                return;
            }
            last = Some(all);
        }
        let view = state.view();
        drop(state);
        let alone = !view
            .liveness
            .iter()
            .any(|(id, l)| *id != view.self_id && *l == Liveness::Alive);
        pause = if alone {
            (pause * 2).min(RESOLVE_LONGEST)
        } else {
            RESOLVE_LONGEST
        };
        tokio::time::sleep(pause).await;
    }
}

impl Shell {
    async fn run<S: Datagram>(
        mut self,
        socket: S,
        mut commands: mpsc::Receiver<Command>,
        first: Vec<Output>,
        shutdown: impl Future<Output = ()>,
    ) {
        let (timer_tx, mut timers) = mpsc::channel::<GossipTimer>(4096);
        self.perform(&socket, &timer_tx, first).await;
        self.refresh();
        let mut buf = vec![0u8; 2048];
        tokio::pin!(shutdown);
        loop {
            let out = tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(c) = commands.recv() => self.command(c),
                Some(t) = timers.recv() => self.gossip.handle_timer(t),
                r = socket.recv_from(&mut buf) => match r {
                    Ok((len, from)) => self.gossip.handle_datagram(from, &buf[..len]),
                    Err(error) => {
                        // ICMP errors surface here on some systems; never spin on them.
                        tracing::debug!(%error, "gossip receive failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        Vec::new()
                    }
                },
            };
            self.perform(&socket, &timer_tx, out).await;
            let more = self.lifecycle();
            self.perform(&socket, &timer_tx, more).await;
            self.refresh();
        }
    }

    async fn perform<S: Datagram>(
        &mut self,
        socket: &S,
        timers: &mpsc::Sender<GossipTimer>,
        out: Vec<Output>,
    ) {
        for o in out {
            match o {
                Output::Send { to, bytes } => {
                    if let Err(error) = socket.send_to(&bytes, to).await {
                        tracing::debug!(%to, %error, "gossip send failed");
                    }
                }
                Output::Schedule { after, timer } => {
                    let tx = timers.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        let _ = tx.send(timer).await;
                    });
                }
            }
        }
    }

    fn republish(&mut self, status: Status) -> Vec<Output> {
        let current = self
            .gossip
            .members()
            .get(&self.cfg.node_id)
            .map(|r| r.version)
            .unwrap_or(self.own.version);
        self.own.version = current.max(self.own.version) + 1;
        self.own.status = status;
        if let Err(error) = self
            .store
            .set_meta(META_STATUS, status_name(status).as_bytes())
        {
            tracing::error!(%error, "cannot persist membership status");
        }
        tracing::info!(status = %status, version = self.own.version, "publishing own member record");
        self.gossip.publish(self.own.clone())
    }

    fn command(&mut self, c: Command) -> Vec<Output> {
        match c {
            Command::Resolved(addrs) => {
                let mut seeds = self.cfg.seeds.clone();
                seeds.extend(addrs);
                seeds.sort();
                seeds.dedup();
                self.is_seed = is_a_seed(self.cfg.address, &seeds, seeds.is_empty());
                self.gossip.set_seeds(seeds);
                Vec::new()
            }
            Command::Stopping => {
                tracing::info!("announcing the stop to gossip peers");
                self.gossip.leave()
            }
            Command::Retire => {
                if self.own.status != Status::Leaving {
                    return Vec::new();
                }
                tracing::info!(
                    "this node left and handed everything off: it removes itself from the cluster"
                );
                let record = NodeRecord {
                    version: self.own.version + 1,
                    status: Status::Removed,
                    ..self.own.clone()
                };
                self.gossip.publish(record)
            }
            Command::Leave(reply) => {
                let out = match self.own.status {
                    Status::Leaving => Vec::new(),
                    _ => self.republish(Status::Leaving),
                };
                let _ = reply.send(Ok(()));
                out
            }
            Command::Remove(id, reply) => {
                let members = self.gossip.members();
                let result = match members.get(&id) {
                    None => Err(format!("unknown node {id:?}")),
                    Some(_) if id == self.cfg.node_id => {
                        Err("a node cannot remove itself; use `ringkv leave`".to_string())
                    }
                    Some(r) if r.status == Status::Removed => Ok(None),
                    Some(r) => Ok(Some(NodeRecord {
                        version: r.version + 1,
                        status: Status::Removed,
                        ..r.clone()
                    })),
                };
                // The operator hears of a removal only once it is on this node's
                // disk: gossip is in memory, and a power loss right after the reply
                // took a removal every member had yet to save (seed 390 of the
                // 1,000-seed sweep: the old id of a lost disk stayed a member).
                match result {
                    Ok(Some(record)) => {
                        tracing::info!(node = %id, "removing node from the cluster");
                        let out = self.gossip.publish(record);
                        let _ = reply.send(self.save_members());
                        out
                    }
                    Ok(None) => {
                        let _ = reply.send(self.save_members());
                        Vec::new()
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        Vec::new()
                    }
                }
            }
        }
    }

    /// Moves this node's record along: joining becomes active once an active member
    /// is known; a record someone else superseded is re-asserted; removal is final.
    fn lifecycle(&mut self) -> Vec<Output> {
        let members = self.gossip.members();
        let Some(mine) = members.get(&self.cfg.node_id).cloned() else {
            return Vec::new();
        };
        if mine.status == Status::Removed && self.own.status != Status::Removed {
            tracing::error!(
                "an operator removed this node from the cluster; it stops gossiping, repairing, handing off and serving"
            );
            self.state.set_removed();
            self.own.status = Status::Removed;
            if let Err(error) = self.store.set_meta(META_REMOVED, b"1") {
                tracing::error!(%error, "cannot persist removal");
            }
            return self.gossip.leave();
        }
        if self.own.status == Status::Removed {
            return Vec::new();
        }
        if self.own.status == Status::Joining {
            let active_peer = members
                .iter()
                .any(|r| r.node_id != self.cfg.node_id && r.status == Status::Active);
            let founds =
                self.is_seed && may_found(&self.cfg.node_id, &members, self.gossip.seeds());
            if active_peer || founds {
                if founds {
                    tracing::info!(
                        seeds = self.gossip.seeds().len(),
                        "a majority of the seeds are new nodes: founding the cluster"
                    );
                }
                return self.republish(Status::Active);
            }
        }
        if mine != self.own {
            // Someone published a record for us with a higher version (a restarted
            // data directory, or an operator's mistake): assert ours above it.
            let status = self.own.status;
            return self.republish(status);
        }
        Vec::new()
    }

    /// Writes the member set as gossip holds it now to the node's metadata (a
    /// durable write: the metadata file is synced and renamed into place).
    fn save_members(&self) -> Result<(), String> {
        let records: Vec<NodeRecord> = self.gossip.members().iter().cloned().collect();
        let bytes = postcard::to_stdvec(&(1u8, records))
            .map_err(|e| format!("cannot encode the member set: {e}"))?;
        self.store
            .set_meta(META_MEMBERS, &bytes)
            .map_err(|e| format!("cannot save the member set: {e}"))
    }

    fn refresh(&mut self) {
        *self
            .state
            .gossip_stats
            .write()
            .unwrap_or_else(|p| p.into_inner()) = self.gossip.stats();
        let liveness = self.gossip.liveness_by_node();
        let generations = self.gossip.generations_by_node();
        let members = self.gossip.members();
        let current = self.state.view();
        if liveness == self.liveness
            && members == current.members
            && generations == self.generations
        {
            return;
        }
        let revived = super::revived(&self.liveness, &liveness, &self.generations, &generations);
        self.generations = generations;
        if members != current.members {
            // Saved so a restart starts from the last ring it knew, not a ring of one.
            if let Err(error) = self.save_members() {
                tracing::warn!(%error, "cannot save the member set");
            }
        }
        self.liveness = liveness;
        let view = ClusterView::new(
            self.cfg.node_id.clone(),
            members,
            &self.liveness,
            self.cfg.ring_size,
            self.cfg.n,
            Some(&current),
        );
        if view.epoch_hex() != current.epoch_hex() {
            tracing::info!(epoch = %view.epoch_hex(), members = view.ring.as_ref().map(|r| r.members().len()).unwrap_or(0), "ring changed");
        }
        self.state.set_view(view);
        if !revived.is_empty() && self.state.revivals.receiver_count() > 0 {
            for r in self.gossip.members().iter() {
                let hash = ringkv_gossip::node_hash(&r.node_id);
                if r.node_id == self.cfg.node_id || r.status == Status::Removed {
                    continue;
                }
                if let Some(restarted) = revived.get(&hash) {
                    // A send fails only with no receiver: nobody to tell.
                    let _ = self.state.revivals.send(super::Revival {
                        node_id: r.node_id.clone(),
                        restarted: *restarted,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_seed_bootstraps_and_an_empty_or_pending_answer_bootstraps_nobody() {
        let a: SocketAddr = "10.0.0.1:7400".parse().expect("addr");
        let b: SocketAddr = "10.0.0.2:7400".parse().expect("addr");
        let c: SocketAddr = "10.0.0.3:7400".parse().expect("addr");
        let all = [c, a, b];
        assert!(is_a_seed(a, &all, false), "the lowest address bootstraps");
        assert!(!is_a_seed(b, &all, false) && !is_a_seed(c, &all, false));
        assert!(
            !is_a_seed(b, &[a], false),
            "seeds that are all others: join"
        );
        assert!(
            is_a_seed(a, &[], false),
            "no seeds at all: a cluster of its own"
        );
        assert!(!is_a_seed(a, &[], true), "names not resolved yet: wait");
    }

    fn record(id: &str, addr: SocketAddr, status: Status) -> NodeRecord {
        NodeRecord {
            version: 1,
            status,
            node_id: id.into(),
            address: addr.to_string(),
            zone: String::new(),
        }
    }

    #[test]
    fn the_founding_seed_waits_for_a_majority_of_new_seeds_and_never_founds_beside_a_cluster() {
        let a: SocketAddr = "10.0.0.1:7400".parse().expect("addr");
        let b: SocketAddr = "10.0.0.2:7400".parse().expect("addr");
        let c: SocketAddr = "10.0.0.3:7400".parse().expect("addr");
        let elsewhere: SocketAddr = "10.0.0.9:7400".parse().expect("addr");
        let seeds = [a, b, c];
        let mut m = Members::new();
        m.apply(record("a", a, Status::Joining));
        assert!(!may_found("a", &m, &seeds), "alone among three seeds: wait");
        assert!(founds_alone(a, &[a]) && founds_alone(a, &[]));
        assert!(!founds_alone(a, &seeds));
        assert!(may_found("a", &m, &[a]), "its own only seed: found");
        m.apply(record("x", elsewhere, Status::Joining));
        assert!(
            !may_found("a", &m, &seeds),
            "a new node that is no seed does not count"
        );
        m.apply(record("b", b, Status::Joining));
        assert!(may_found("a", &m, &seeds), "two of three seeds are new");
        // The same, but one of them belongs to a running cluster (the first
        // node's disk was lost and it came back beside it).
        let mut old = m.clone();
        old.apply(record("c", c, Status::Active));
        assert!(!may_found("a", &old, &seeds), "a cluster exists: join it");
        let mut gone = m.clone();
        gone.apply(record("c", c, Status::Removed));
        assert!(!may_found("a", &gone, &seeds), "a cluster existed: join it");
    }
}
