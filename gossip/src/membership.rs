//! The SWIM membership of one node, without I/O (DESIGN.md §5).
//!
//! [`Gossip`] wraps foca: the shell feeds it received datagrams and expired timers and
//! performs what it hands back ([`Output::Send`], [`Output::Schedule`]). On top of
//! foca's liveness it keeps the [`Members`] set, spread as foca custom broadcasts and,
//! because broadcasts are best effort, by a periodic exchange with one live member
//! (a digest of the set first, records only where the sets differ: [`exchange`]). Every datagram is sealed with the cluster key; anything that does not
//! authenticate is dropped and counted before it is decoded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, OwnedNotification};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};

use crate::auth::{AuthError, ClusterKey, MAX_PAYLOAD_BYTES, Stamp};
use crate::record::{Members, NodeRecord};
use crate::replay::{ReplayGuard, Verdict};

mod exchange;
mod identity;
mod records;
#[cfg(test)]
mod testnet;

pub use identity::{Identity, Liveness, node_hash};
use records::apply_record;
pub use records::{
    MAX_MEMBERS, MAX_RECORD_FIELD_BYTES, MAX_REMOVED, RecordError, RecordHandler, RecordKey,
};

/// Bytes of a foca packet: the sealed payload minus our one-byte message tag.
pub const FOCA_PACKET_BYTES: usize = MAX_PAYLOAD_BYTES - 1;

const TAG_FOCA: u8 = 0;
const TAG_RECORDS: u8 = 1;
const TAG_SYNC: u8 = 2;

/// Timers the shell must hand back through [`Gossip::handle_timer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GossipTimer {
    /// One of foca's.
    Foca(foca::Timer<Identity>),
    /// Exchange records with one live member (a digest first).
    Exchange,
    /// Announce to the seeds if nobody else is known.
    Announce,
}

/// An effect for the shell to perform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send a sealed datagram.
    Send {
        /// Destination.
        to: SocketAddr,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// Hand `timer` back after `after`.
    Schedule {
        /// Delay.
        after: Duration,
        /// The timer.
        timer: GossipTimer,
    },
}

/// Counters of what arrived and what was refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipStats {
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Refused: wrong MAC, unknown version or too short (not from this cluster).
    pub rejected_auth: u64,
    /// Refused: over the size limit.
    pub rejected_oversized: u64,
    /// Authenticated but undecodable or refused by foca.
    pub rejected_malformed: u64,
    /// Authenticated but seen before (a replay), or older than what its sender
    /// has sent since.
    pub rejected_replay: u64,
}

/// Seed addresses kept at most (a name can stand for many records).
pub const MAX_SEEDS: usize = 256;

/// Settings of the membership protocol.
#[derive(Clone, Debug)]
pub struct GossipConfig {
    /// Key every datagram is sealed with.
    pub key: ClusterKey,
    /// Addresses to announce to when joining or when alone.
    pub seeds: Vec<SocketAddr>,
    /// Expected cluster size (tunes foca's dissemination and suspicion).
    pub cluster_size_hint: u32,
    /// Period of the record exchange.
    pub exchange_interval: Duration,
    /// Period of re-announcing to seeds while no other member is known.
    pub announce_interval: Duration,
    /// SWIM probe period.
    pub probe_period: Duration,
    /// This start's epoch, stamped on every datagram: higher than any earlier
    /// start's of this node (the shell derives it from the clock at start), so
    /// receivers take the new datagrams and refuse replays of the old.
    pub epoch: u64,
}

impl GossipConfig {
    /// Defaults for a LAN cluster.
    pub fn new(key: ClusterKey, seeds: Vec<SocketAddr>) -> Self {
        GossipConfig {
            key,
            seeds,
            cluster_size_hint: 8,
            exchange_interval: Duration::from_secs(2),
            announce_interval: Duration::from_secs(1),
            probe_period: Duration::from_millis(500),
            epoch: 0,
        }
    }
}

type FocaInstance = Foca<Identity, foca::PostcardCodec, SmallRng, RecordHandler>;

/// One node's membership state machine.
pub struct Gossip {
    foca: FocaInstance,
    runtime: AccumulatingRuntime<Identity>,
    members: Arc<Mutex<Members>>,
    config: GossipConfig,
    rng: SmallRng,
    out: Vec<Output>,
    stats: GossipStats,
    own_id: String,
    announcing: bool,
    left: bool,
    exchange: exchange::ExchangeState,
    /// Datagrams sealed so far (the counter of the next stamp).
    sent: u64,
    /// Drops replayed datagrams.
    replays: ReplayGuard,
}

impl Gossip {
    /// A fresh membership for `identity`, publishing `own` (this node's record), and
    /// starting from `known` records (the member set saved before a restart, so the
    /// node never mistakes itself for a cluster of one). Returns the machine and the
    /// first effects (announces, timers).
    pub fn new(
        identity: Identity,
        own: NodeRecord,
        known: Vec<NodeRecord>,
        config: GossipConfig,
        seed: u64,
    ) -> (Gossip, Vec<Output>) {
        let mut start = Members::new();
        for r in known {
            if let Err(error) = apply_record(&mut start, r) {
                tracing::warn!(%error, "ignoring a saved member record");
            }
        }
        let members = Arc::new(Mutex::new(start));
        let mut foca_config = foca::Config::new_lan(
            NonZeroU32::new(config.cluster_size_hint.max(1)).unwrap_or(NonZeroU32::MIN),
        );
        foca_config.max_packet_size =
            std::num::NonZeroUsize::new(FOCA_PACKET_BYTES).unwrap_or(std::num::NonZeroUsize::MIN);
        foca_config.probe_period = config.probe_period;
        foca_config.probe_rtt = config.probe_period / 2;
        // A down identity may come back only with a higher generation; forget it after
        // a while so the foca member list stays bounded.
        foca_config.remove_down_after = Some(Duration::from_secs(600));
        // After a partition heals, a side that declared the other down must reach it
        // again (the other side renews its identity when it learns it was declared
        // down). foca's default waits 65 s between such announces; the simulation
        // showed clusters staying split for over a minute.
        foca_config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(3),
            num_members: std::num::NonZeroUsize::new(2).unwrap_or(std::num::NonZeroUsize::MIN),
        });
        let foca = Foca::with_custom_broadcast(
            identity,
            foca_config,
            SmallRng::seed_from_u64(seed),
            foca::PostcardCodec,
            RecordHandler {
                members: members.clone(),
            },
        );
        let mut g = Gossip {
            foca,
            runtime: AccumulatingRuntime::new(),
            members,
            rng: SmallRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15),
            own_id: own.node_id.clone(),
            config,
            out: Vec::new(),
            stats: GossipStats::default(),
            announcing: false,
            left: false,
            exchange: exchange::ExchangeState::default(),
            sent: 0,
            replays: ReplayGuard::default(),
        };
        g.publish(own);
        g.announce_to_seeds();
        // Seeds may not be up yet: keep announcing until someone answers.
        g.start_announcing();
        g.out.push(Output::Schedule {
            after: g.config.exchange_interval / exchange::TICKS_PER_PERIOD,
            timer: GossipTimer::Exchange,
        });
        let first = g.take();
        (g, first)
    }

    fn take(&mut self) -> Vec<Output> {
        while let Some((to, data)) = self.runtime.to_send() {
            let mut payload = Vec::with_capacity(data.len() + 1);
            payload.push(TAG_FOCA);
            payload.extend_from_slice(&data);
            self.send(to.addr, &payload);
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.out.push(Output::Schedule {
                after,
                timer: GossipTimer::Foca(timer),
            });
        }
        while let Some(n) = self.runtime.to_notify() {
            match n {
                OwnedNotification::Idle => {
                    tracing::info!("no other member reachable; announcing to seeds");
                    self.start_announcing();
                }
                OwnedNotification::Active => tracing::info!("joined the cluster"),
                OwnedNotification::MemberUp(id) => {
                    tracing::info!(addr = %id.addr, generation = id.generation, "member up")
                }
                OwnedNotification::MemberDown(id) => {
                    tracing::info!(addr = %id.addr, generation = id.generation, "member down")
                }
                OwnedNotification::Rename(a, b) => {
                    tracing::debug!(addr = %a.addr, from = a.generation, to = b.generation, "member restarted")
                }
                OwnedNotification::Rejoin(id) => tracing::info!(
                    generation = id.generation,
                    "declared down by peers; rejoined with a new generation"
                ),
                OwnedNotification::Defunct if !self.left => {
                    tracing::warn!("declared down; announcing again");
                    let _ = self.foca.reuse_down_identity();
                    self.start_announcing();
                }
                // Other notifications (behind unstable features) carry nothing we use.
                #[allow(unreachable_patterns)]
                _ => {}
            }
        }
        std::mem::take(&mut self.out)
    }

    fn send(&mut self, to: SocketAddr, payload: &[u8]) {
        self.sent += 1;
        let stamp = Stamp {
            sender: self.foca.identity().node,
            // At least the generation, which rises on every start of a data
            // directory (the shell's clock-based epoch also covers a wiped one).
            epoch: self.config.epoch.max(self.foca.identity().generation),
            counter: self.sent,
        };
        match self.config.key.seal(&stamp, payload) {
            Ok(bytes) => {
                self.stats.datagrams_out += 1;
                self.out.push(Output::Send { to, bytes });
            }
            Err(error) => tracing::warn!(%error, "gossip datagram not sent"),
        }
    }

    fn start_announcing(&mut self) {
        if !self.announcing && !self.left {
            self.announcing = true;
            self.out.push(Output::Schedule {
                after: self.config.announce_interval,
                timer: GossipTimer::Announce,
            });
        }
    }

    fn announce_to_seeds(&mut self) {
        let me = self.foca.identity().addr;
        let seeds: Vec<SocketAddr> = self
            .config
            .seeds
            .iter()
            .copied()
            .filter(|s| *s != me)
            .collect();
        for seed in seeds {
            // A seed accepts an announce addressed to its address with any generation.
            let _ = self.foca.announce(
                Identity {
                    addr: seed,
                    generation: 0,
                    node: 0,
                },
                &mut self.runtime,
            );
            self.send_records(seed, true);
        }
    }

    /// Publishes (a new version of) this node's own record, or an operator's decision
    /// about another node.
    pub fn publish(&mut self, record: NodeRecord) -> Vec<Output> {
        self.spread(record);
        self.take()
    }

    /// Merges a record and, if it was new, disseminates it. The record goes in
    /// through foca's broadcast handler, which merges it: merging first would make
    /// the handler call it stale, and foca would then never send it.
    fn spread(&mut self, record: NodeRecord) {
        let fallback = |g: &mut Gossip, r: NodeRecord| {
            let mut members = g.members.lock().unwrap_or_else(|p| p.into_inner());
            if apply_record(&mut members, r).is_err() {
                g.stats.rejected_malformed += 1;
            }
        };
        match postcard::to_stdvec(&record) {
            Ok(bytes) => {
                if let Err(error) = self.foca.add_broadcast(&bytes) {
                    tracing::debug!(%error, "member record not broadcast; merged only");
                    fallback(self, record);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot encode member record");
                fallback(self, record);
            }
        }
    }

    /// Handles one datagram received from `from`.
    pub fn handle_datagram(&mut self, from: SocketAddr, bytes: &[u8]) -> Vec<Output> {
        self.stats.datagrams_in += 1;
        let payload = match self.config.key.open(bytes) {
            Ok((stamp, p)) => {
                if self.replays.check(&stamp) == Verdict::Replay {
                    self.stats.rejected_replay += 1;
                    return Vec::new();
                }
                p
            }
            Err(AuthError::TooLarge { .. }) => {
                self.stats.rejected_oversized += 1;
                return Vec::new();
            }
            Err(
                AuthError::TooShort { .. } | AuthError::UnknownVersion { .. } | AuthError::BadMac,
            ) => {
                self.stats.rejected_auth += 1;
                return Vec::new();
            }
        };
        if self.left {
            return Vec::new();
        }
        match payload.split_first() {
            Some((&TAG_FOCA, packet)) => {
                if let Err(error) = self.foca.handle_data(packet, &mut self.runtime) {
                    self.stats.rejected_malformed += 1;
                    tracing::debug!(%error, "gossip packet refused");
                }
            }
            Some((&TAG_RECORDS, body)) => self.handle_records(from, body),
            Some((&TAG_SYNC, body)) => self.handle_sync(from, body),
            Some(_) | None => self.stats.rejected_malformed += 1,
        }
        self.take()
    }

    /// Handles an expired timer.
    pub fn handle_timer(&mut self, timer: GossipTimer) -> Vec<Output> {
        if self.left {
            return Vec::new();
        }
        match timer {
            GossipTimer::Foca(t) => {
                if let Err(error) = self.foca.handle_timer(t, &mut self.runtime) {
                    tracing::debug!(%error, "foca timer");
                }
            }
            GossipTimer::Exchange => {
                // A tick: every TICKS_PER_PERIOD ticks a new period and an exchange;
                // in between, another exchange only while the last one found the
                // sets different (a member joining or catching up).
                if let Some(new_period) = self.exchange.tick() {
                    let peers: Vec<SocketAddr> =
                        self.foca.iter_members().map(|m| m.id().addr).collect();
                    if !peers.is_empty() {
                        let i = rand::RngExt::random_range(&mut self.rng, 0..peers.len());
                        self.start_exchange(peers[i]);
                    }
                    if new_period {
                        self.announce_to_forgotten();
                    }
                }
                self.out.push(Output::Schedule {
                    after: self.config.exchange_interval / exchange::TICKS_PER_PERIOD,
                    timer: GossipTimer::Exchange,
                });
            }
            GossipTimer::Announce => {
                self.announcing = false;
                if self.foca.num_members() == 0 && !self.config.seeds.is_empty() {
                    self.announce_to_seeds();
                    self.start_announcing();
                }
            }
        }
        self.take()
    }

    /// Announces to one member foca does not know or holds as down (a dead node, or
    /// one on the other side of a healed partition while each side still has peers),
    /// so split clusters merge again.
    fn announce_to_forgotten(&mut self) {
        // Known and not down: everyone else is worth an announce. To a member that
        // declared us down, the announce draws a TurnUndead, after which we renew our
        // identity and the next announce is accepted; that is how a split heals.
        let known: std::collections::BTreeSet<SocketAddr> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.state() != foca::State::Down)
            .map(|m| m.id().addr)
            .collect();
        let me = self.foca.identity().addr;
        // Seeds foca does not know count too: groups that formed apart (nodes that
        // saw different answers for a seed name at start) find each other through
        // them, though none of their members has heard of the other group.
        let mut forgotten: Vec<SocketAddr> = self
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|r| r.status != crate::record::Status::Removed)
            .filter_map(|r| r.address.parse::<SocketAddr>().ok())
            .chain(self.config.seeds.iter().copied())
            .filter(|a| *a != me && !known.contains(a))
            .collect();
        forgotten.sort();
        forgotten.dedup();
        if !forgotten.is_empty() {
            let i = rand::RngExt::random_range(&mut self.rng, 0..forgotten.len());
            let _ = self.foca.announce(
                Identity {
                    addr: forgotten[i],
                    generation: 0,
                    node: 0,
                },
                &mut self.runtime,
            );
        }
    }

    /// Leaves the cluster gracefully: peers see this node down at once.
    pub fn leave(&mut self) -> Vec<Output> {
        if let Err(error) = self.foca.leave_cluster(&mut self.runtime) {
            tracing::warn!(%error, "leaving the gossip cluster");
        }
        self.left = true;
        self.take()
    }

    /// A snapshot of the member set.
    pub fn members(&self) -> Members {
        self.members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// This node's id.
    pub fn own_id(&self) -> &str {
        &self.own_id
    }

    /// SWIM's view of every address it knows (this node is alive).
    pub fn liveness(&self) -> BTreeMap<SocketAddr, Liveness> {
        let mut out: BTreeMap<SocketAddr, Liveness> = self
            .foca
            .iter_membership_state()
            .map(|m| {
                (
                    m.id().addr,
                    match m.state() {
                        foca::State::Alive => Liveness::Alive,
                        foca::State::Suspect => Liveness::Suspect,
                        foca::State::Down => Liveness::Down,
                    },
                )
            })
            .collect();
        out.insert(self.foca.identity().addr, Liveness::Alive);
        out
    }

    /// SWIM's view of every node it knows, by [`node_hash`] of its id (this node is
    /// alive). Identities announced to before their node was known are left out. A
    /// node that restarted at another address has two identities until SWIM drops
    /// the old one: its newest start speaks for it, not whichever SWIM lists last.
    pub fn liveness_by_node(&self) -> BTreeMap<u64, Liveness> {
        let mut out = newest_by_node(self.foca.iter_membership_state().map(|m| {
            let liveness = match m.state() {
                foca::State::Alive => Liveness::Alive,
                foca::State::Suspect => Liveness::Suspect,
                foca::State::Down => Liveness::Down,
            };
            (*m.id(), liveness)
        }));
        out.insert(self.foca.identity().node, Liveness::Alive);
        out
    }

    /// The newest start (generation) of every node SWIM holds as not down, by
    /// [`node_hash`] of its id. A node that restarted shows here with a higher
    /// generation as soon as its announcement arrives, often before SWIM ever
    /// suspected the old one: the node's peers use it to dial it again at once.
    pub fn generations_by_node(&self) -> BTreeMap<u64, u64> {
        let mut out: BTreeMap<u64, u64> = BTreeMap::new();
        for m in self.foca.iter_membership_state() {
            let id = m.id();
            if id.node == 0 || m.state() == foca::State::Down {
                continue;
            }
            let g = out.entry(id.node).or_insert(id.generation);
            *g = (*g).max(id.generation);
        }
        let me = self.foca.identity();
        out.insert(me.node, me.generation);
        out
    }

    /// SWIM's view of one address (cheaper than [`Gossip::liveness`] at scale).
    pub fn liveness_of(&self, addr: SocketAddr) -> Liveness {
        if addr == self.foca.identity().addr {
            return Liveness::Alive;
        }
        self.foca
            .iter_membership_state()
            .find(|m| m.id().addr == addr)
            .map(|m| match m.state() {
                foca::State::Alive => Liveness::Alive,
                foca::State::Suspect => Liveness::Suspect,
                foca::State::Down => Liveness::Down,
            })
            .unwrap_or(Liveness::Unknown)
    }

    /// The record this node holds for `node_id`, if any (cheaper than cloning the
    /// whole member set).
    pub fn record(&self, node_id: &str) -> Option<NodeRecord> {
        self.members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node_id)
            .cloned()
    }

    /// Members with a record here.
    pub fn member_count(&self) -> usize {
        self.members.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Members SWIM considers active (alive or suspect), this node excluded.
    pub fn active_count(&self) -> usize {
        self.foca.num_members()
    }

    /// Updates (about members, and member records) foca still has to disseminate:
    /// 0 once everything this node learnt has been passed on enough times.
    pub fn dissemination_backlog(&self) -> usize {
        self.foca.updates_backlog() + self.foca.custom_broadcast_backlog()
    }

    /// Replaces the addresses announced to while no other member is known (seeds
    /// given by name are resolved again on every join attempt); at most
    /// [`MAX_SEEDS`] are kept.
    pub fn set_seeds(&mut self, mut seeds: Vec<SocketAddr>) {
        seeds.truncate(MAX_SEEDS);
        self.config.seeds = seeds;
    }

    /// The addresses announced to.
    pub fn seeds(&self) -> &[SocketAddr] {
        &self.config.seeds
    }

    /// Counters.
    pub fn stats(&self) -> GossipStats {
        self.stats
    }
}

/// The liveness of each node's newest identity (highest generation), by node hash.
fn newest_by_node(
    identities: impl Iterator<Item = (Identity, Liveness)>,
) -> BTreeMap<u64, Liveness> {
    let mut newest: BTreeMap<u64, (u64, Liveness)> = BTreeMap::new();
    for (id, liveness) in identities.filter(|(id, _)| id.node != 0) {
        let e = newest.entry(id.node).or_insert((id.generation, liveness));
        if id.generation > e.0 {
            *e = (id.generation, liveness);
        }
    }
    newest.into_iter().map(|(node, (_, l))| (node, l)).collect()
}

#[cfg(test)]
mod tests;
