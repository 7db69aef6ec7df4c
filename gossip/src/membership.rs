//! The SWIM membership of one node, without I/O (DESIGN.md §5).
//!
//! [`Gossip`] wraps foca: the shell feeds it received datagrams and expired timers and
//! performs what it hands back ([`Output::Send`], [`Output::Schedule`]). On top of
//! foca's liveness it keeps the [`Members`] set, spread as foca custom broadcasts and,
//! because broadcasts are best effort, by a periodic full exchange of records with one
//! live member. Every datagram is sealed with the cluster key; anything that does not
//! authenticate is dropped and counted before it is decoded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foca::{AccumulatingRuntime, BroadcastHandler, Foca, Invalidates, OwnedNotification};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};

use crate::auth::{AuthError, ClusterKey, MAX_PAYLOAD_BYTES, Stamp};
use crate::record::{Members, NodeRecord};
use crate::replay::{ReplayGuard, Verdict};

/// Bytes of a foca packet: the sealed payload minus our one-byte message tag.
pub const FOCA_PACKET_BYTES: usize = MAX_PAYLOAD_BYTES - 1;
/// Records accepted in one exchange datagram at most (the datagram size bounds it
/// anyway; records are packed by encoded size).
const RECORDS_PER_DATAGRAM: usize = 64;
/// Distinct addresses answered with a full record set per exchange period: a replayed
/// or spoofed request cannot make this node flood anyone.
const REPLIES_PER_PERIOD: usize = 64;
/// Longest node id, address or zone accepted in a record.
pub const MAX_RECORD_FIELD_BYTES: usize = 128;
/// Most records of members not removed a member set may hold; records of new
/// members beyond it are refused.
pub const MAX_MEMBERS: usize = 1024;
/// Most records of removed members kept (removal is final only while the record is
/// kept): beyond it the oldest are forgotten. Removed records do not count toward
/// [`MAX_MEMBERS`], so disk replacements never use up the member set (review A7).
pub const MAX_REMOVED: usize = 4 * MAX_MEMBERS;

const TAG_FOCA: u8 = 0;
const TAG_RECORDS: u8 = 1;

/// A node's SWIM identity: its address, a generation that rises on every start,
/// so a restarted node wins over its previous incarnation at once, and which node
/// it is ([`node_hash`] of its id: 0 while unknown, as for a seed announced to).
///
/// The node is part of it so liveness belongs to a node, not to an address: a node
/// wiped and started again at the same address under a new id must not make the
/// old id look alive (review C10: W=2 was then met by one disk).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Identity {
    /// UDP address (same port number as the node's RPC address).
    pub addr: SocketAddr,
    /// Start count of the node's data directory.
    pub generation: u64,
    /// [`node_hash`] of the node id.
    pub node: u64,
}

/// The 64-bit hash of a node id that SWIM identities carry.
pub fn node_hash(node_id: &str) -> u64 {
    let h = blake3::hash(node_id.as_bytes());
    u64::from_be_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

impl foca::Identity for Identity {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Identity {
            generation: self.generation + 1,
            ..*self
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.generation, self.node) > (adversary.generation, adversary.node)
    }
}

/// What SWIM says about a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Liveness {
    /// Answering probes.
    Alive,
    /// Missed a probe; may be down.
    Suspect,
    /// Declared down (or left).
    Down,
    /// Never seen by SWIM.
    Unknown,
}

impl std::fmt::Display for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Liveness::Alive => "alive",
            Liveness::Suspect => "suspect",
            Liveness::Down => "down",
            Liveness::Unknown => "unknown",
        })
    }
}

/// Timers the shell must hand back through [`Gossip::handle_timer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GossipTimer {
    /// One of foca's.
    Foca(foca::Timer<Identity>),
    /// Send the full record set to one live member.
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
    /// Period of the full record exchange.
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

/// Key of a record broadcast: a newer record of a node replaces an older one in
/// foca's dissemination backlog.
#[derive(Clone, Debug)]
pub struct RecordKey {
    node_id: String,
    record: NodeRecord,
}

impl Invalidates for RecordKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.node_id == other.node_id
            && (self.record == other.record || self.record.supersedes(&other.record))
    }
}

/// Why a record was refused.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Bytes that do not decode as a record.
    #[error("undecodable member record: {0}")]
    Decode(#[from] postcard::Error),
    /// A field over [`MAX_RECORD_FIELD_BYTES`] or an empty node id.
    #[error("member record with an empty id or a field over {MAX_RECORD_FIELD_BYTES} bytes")]
    BadField,
    /// The member set is full.
    #[error("member set full ({MAX_MEMBERS} members that are not removed)")]
    Full,
}

fn check_record(r: &NodeRecord) -> Result<(), RecordError> {
    if r.node_id.is_empty()
        || [&r.node_id, &r.address, &r.zone]
            .iter()
            .any(|f| f.len() > MAX_RECORD_FIELD_BYTES)
    {
        return Err(RecordError::BadField);
    }
    Ok(())
}

/// Merges one record into the shared set, within bounds.
fn apply_record(members: &mut Members, r: NodeRecord) -> Result<bool, RecordError> {
    check_record(&r)?;
    let new_member =
        members.get(&r.node_id).is_none() && r.status != crate::record::Status::Removed;
    if new_member && members.live_len() >= MAX_MEMBERS {
        return Err(RecordError::Full);
    }
    let changed = members.apply(r);
    if changed {
        members.forget_oldest_removed(MAX_REMOVED);
    }
    Ok(changed)
}

/// foca's custom-broadcast handler: records merge into the shared member set.
pub struct RecordHandler {
    members: Arc<Mutex<Members>>,
}

impl BroadcastHandler<Identity> for RecordHandler {
    type Key = RecordKey;
    type Error = RecordError;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&Identity>,
    ) -> Result<Option<RecordKey>, RecordError> {
        let record: NodeRecord = postcard::from_bytes(data)?;
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        if apply_record(&mut members, record.clone())? {
            Ok(Some(RecordKey {
                node_id: record.node_id.clone(),
                record,
            }))
        } else {
            Ok(None)
        }
    }
}

/// A full-exchange message: some records, and whether the receiver should answer
/// with its own.
#[derive(Serialize, Deserialize)]
struct Exchange {
    reply: bool,
    records: Vec<NodeRecord>,
    /// How the sender holds the receiver, when not alive: `(identity, incarnation,
    /// down)`. SWIM refutes a suspicion only if the suspected member hears of it;
    /// when the updates carrying it were lost (a partition, a held link), the
    /// suspicion would last forever, so the exchange tells the receiver directly.
    /// It names the identity it is about, so a replayed datagram (the MAC has no
    /// freshness) cannot make the receiver renew its identity again and again: once
    /// renewed, the old identity is not the receiver's any more (review S4).
    suspected: Option<(Identity, u16, bool)>,
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
    replied: std::collections::BTreeSet<SocketAddr>,
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
            replied: std::collections::BTreeSet::new(),
            sent: 0,
            replays: ReplayGuard::default(),
        };
        g.publish(own);
        g.announce_to_seeds();
        // Seeds may not be up yet: keep announcing until someone answers.
        g.start_announcing();
        g.out.push(Output::Schedule {
            after: g.config.exchange_interval,
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

    fn send_records(&mut self, to: SocketAddr, reply: bool) {
        let records: Vec<NodeRecord> = self
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        // Pack by encoded size (ids, addresses and zones vary in length): an exchange
        // is a bool, a length of at most two bytes, then the records.
        let mut chunks: Vec<Vec<NodeRecord>> = vec![Vec::new()];
        let suspected = self
            .foca
            .iter_membership_state()
            .find(|m| m.id().addr == to)
            .and_then(|m| match m.state() {
                foca::State::Alive => None,
                foca::State::Suspect => Some((*m.id(), m.incarnation(), false)),
                foca::State::Down => Some((*m.id(), m.incarnation(), true)),
            });
        let mut size = 3 + 4;
        for r in records {
            let bytes = postcard::experimental::serialized_size(&r).unwrap_or(usize::MAX);
            let last = chunks.last_mut().expect("never empty");
            if !last.is_empty()
                && (size + bytes + 1 > FOCA_PACKET_BYTES || last.len() >= RECORDS_PER_DATAGRAM)
            {
                chunks.push(Vec::new());
                size = 3 + 4;
            }
            size += bytes;
            chunks.last_mut().expect("never empty").push(r);
        }
        for (i, chunk) in chunks.into_iter().enumerate() {
            if chunk.is_empty() {
                continue;
            }
            let msg = Exchange {
                // One answer per exchange is enough: ask only with the first chunk.
                reply: reply && i == 0,
                records: chunk,
                suspected: if i == 0 { suspected } else { None },
            };
            let mut payload = vec![TAG_RECORDS];
            match postcard::to_extend(&msg, payload) {
                Ok(p) => payload = p,
                Err(error) => {
                    tracing::warn!(%error, "cannot encode member records");
                    continue;
                }
            }
            self.send(to, &payload);
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
            Some((&TAG_RECORDS, body)) => match postcard::from_bytes::<Exchange>(body) {
                Ok(msg) if msg.records.len() <= RECORDS_PER_DATAGRAM => {
                    let me = *self.foca.identity();
                    if let Some((about, incarnation, down)) = msg.suspected
                        && about == me
                    {
                        // Told directly that we are suspected (or down): feed foca that
                        // update about ourselves, so it refutes (or rejoins).
                        let state = if down {
                            foca::State::Down
                        } else {
                            foca::State::Suspect
                        };
                        let update = foca::Member::new(me, incarnation, state);
                        if let Err(error) =
                            self.foca
                                .apply_many(std::iter::once(update), true, &mut self.runtime)
                        {
                            tracing::debug!(%error, "cannot refute a suspicion");
                        }
                    }
                    // New records also go on through the broadcasts.
                    for r in msg.records {
                        self.spread(r);
                    }
                    if msg.reply
                        && (self.replied.contains(&from) || self.replied.len() < REPLIES_PER_PERIOD)
                        && self.replied.insert(from)
                    {
                        self.send_records(from, false);
                    }
                }
                Ok(_) | Err(_) => self.stats.rejected_malformed += 1,
            },
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
                self.replied.clear();
                let peers: Vec<SocketAddr> =
                    self.foca.iter_members().map(|m| m.id().addr).collect();
                if !peers.is_empty() {
                    let i = rand::RngExt::random_range(&mut self.rng, 0..peers.len());
                    self.send_records(peers[i], true);
                }
                self.announce_to_forgotten();
                self.out.push(Output::Schedule {
                    after: self.config.exchange_interval,
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
    /// alive). Identities announced to before their node was known are left out.
    pub fn liveness_by_node(&self) -> BTreeMap<u64, Liveness> {
        let mut out: BTreeMap<u64, Liveness> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.id().node != 0)
            .map(|m| {
                (
                    m.id().node,
                    match m.state() {
                        foca::State::Alive => Liveness::Alive,
                        foca::State::Suspect => Liveness::Suspect,
                        foca::State::Down => Liveness::Down,
                    },
                )
            })
            .collect();
        out.insert(self.foca.identity().node, Liveness::Alive);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Status;
    use std::collections::BTreeSet;

    /// A deterministic little network: a virtual clock and a queue of deliveries and
    /// timers, with links that can be cut.
    struct Net {
        nodes: Vec<Gossip>,
        addrs: Vec<SocketAddr>,
        queue: BTreeMap<(u64, u64), (usize, Event)>,
        now_ms: u64,
        seq: u64,
        cut: BTreeSet<usize>,
        /// Side of a partition per node; datagrams between sides are lost.
        side: Vec<u8>,
    }

    enum Event {
        Datagram(SocketAddr, Vec<u8>),
        Timer(GossipTimer),
    }

    fn member(id: String, status: Status, version: u64) -> NodeRecord {
        NodeRecord {
            version,
            status,
            node_id: id,
            address: "127.0.0.1:7400".into(),
            zone: String::new(),
        }
    }

    #[test]
    fn removed_records_never_use_up_the_member_set() {
        // Review A7: every wipe of a node uses a new id; removals must not fill the
        // set for good.
        let mut m = Members::new();
        for i in 0..MAX_MEMBERS {
            apply_record(&mut m, member(format!("gone-{i:05}"), Status::Removed, 1))
                .expect("removed records always fit");
        }
        assert!(apply_record(&mut m, member("new".into(), Status::Joining, 1)).expect("fits"));
        // Live members are still bounded.
        for i in 1..MAX_MEMBERS {
            apply_record(&mut m, member(format!("live-{i:05}"), Status::Active, 1)).expect("fits");
        }
        assert!(matches!(
            apply_record(&mut m, member("one-too-many".into(), Status::Joining, 1)),
            Err(RecordError::Full)
        ));
        // A member that is removed frees its place.
        apply_record(&mut m, member("live-00001".into(), Status::Removed, 2)).expect("fits");
        assert!(
            apply_record(&mut m, member("one-too-many".into(), Status::Joining, 1)).expect("fits")
        );
        // Removed records are bounded too: the oldest are forgotten, the same ones
        // on every node.
        for i in 0..MAX_REMOVED {
            apply_record(&mut m, member(format!("later-{i:05}"), Status::Removed, 5))
                .expect("fits");
        }
        let removed = m.iter().filter(|r| r.status == Status::Removed).count();
        assert_eq!(removed, MAX_REMOVED);
        assert!(m.get("gone-00000").is_none(), "the oldest were forgotten");
        assert!(m.get("later-00000").is_some());
        assert_eq!(m.live_len(), MAX_MEMBERS);
    }

    #[test]
    fn a_replayed_suspicion_renews_the_identity_once_at_most() {
        // Review S4: datagram MACs carry no freshness, so a captured "you are down"
        // can be replayed; each replay made the receiver renew its identity.
        let mut net = Net::new(&[b"s".as_slice(); 3]);
        net.run_until(5_000);
        let me = *net.nodes[0].foca.identity();
        let msg = Exchange {
            reply: false,
            records: Vec::new(),
            suspected: Some((me, 0, true)),
        };
        let mut payload = vec![TAG_RECORDS];
        payload.extend(postcard::to_stdvec(&msg).expect("encode"));
        // Freshly stamped each time (a replay of the same bytes is dropped before
        // this check: see the replay test below).
        let key = ClusterKey::derive(b"s");
        let stamp = |counter| Stamp {
            sender: 0xfeed,
            epoch: 1,
            counter,
        };
        let from = net.addrs[1];
        let _ = net.nodes[0].handle_datagram(from, &key.seal(&stamp(1), &payload).expect("seal"));
        let renewed = net.nodes[0].foca.identity().generation;
        assert_eq!(renewed, me.generation + 1, "told it is down, it rejoins");
        for counter in 2..7 {
            let datagram = key.seal(&stamp(counter), &payload).expect("seal");
            let _ = net.nodes[0].handle_datagram(from, &datagram);
        }
        assert_eq!(
            net.nodes[0].foca.identity().generation,
            renewed,
            "a replay names an identity it no longer has"
        );
    }

    /// Members a node sees alive (itself included).
    fn alive(g: &Gossip) -> usize {
        g.liveness()
            .values()
            .filter(|l| **l == Liveness::Alive)
            .count()
    }

    fn record(i: usize, addr: SocketAddr) -> NodeRecord {
        NodeRecord {
            version: 1,
            status: Status::Active,
            node_id: format!("n{i}"),
            address: addr.to_string(),
            zone: String::new(),
        }
    }

    impl Net {
        fn new(keys: &[&[u8]]) -> Net {
            let addrs: Vec<SocketAddr> = (0..keys.len())
                .map(|i| SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16)))
                .collect();
            let mut net = Net {
                nodes: Vec::new(),
                addrs: addrs.clone(),
                queue: BTreeMap::new(),
                now_ms: 0,
                seq: 0,
                cut: BTreeSet::new(),
                side: vec![0; keys.len()],
            };
            for (i, key) in keys.iter().enumerate() {
                let mut cfg = GossipConfig::new(ClusterKey::derive(key), vec![addrs[0]]);
                cfg.cluster_size_hint = keys.len() as u32;
                let (g, out) = Gossip::new(
                    Identity {
                        addr: addrs[i],
                        generation: 1,
                        node: node_hash(&format!("n{i}")),
                    },
                    record(i, addrs[i]),
                    Vec::new(),
                    cfg,
                    i as u64,
                );
                net.nodes.push(g);
                net.perform(i, out);
            }
            net
        }

        fn perform(&mut self, from: usize, out: Vec<Output>) {
            for o in out {
                self.seq += 1;
                match o {
                    Output::Send { to, bytes } => {
                        assert!(bytes.len() <= crate::auth::MAX_DATAGRAM_BYTES);
                        if let Some(dst) = self.addrs.iter().position(|a| *a == to) {
                            if self.cut.contains(&from)
                                || self.cut.contains(&dst)
                                || self.side[from] != self.side[dst]
                            {
                                continue;
                            }
                            self.queue.insert(
                                (self.now_ms + 1, self.seq),
                                (dst, Event::Datagram(self.addrs[from], bytes)),
                            );
                        }
                    }
                    Output::Schedule { after, timer } => {
                        self.queue.insert(
                            (self.now_ms + after.as_millis() as u64, self.seq),
                            (from, Event::Timer(timer)),
                        );
                    }
                }
            }
        }

        fn run_until(&mut self, until_ms: u64) {
            let mut steps = 0;
            while let Some((&(t, s), _)) = self.queue.iter().next() {
                if t > until_ms {
                    break;
                }
                steps += 1;
                assert!(steps < 1_000_000, "runaway simulation");
                let (node, ev) = self.queue.remove(&(t, s)).expect("present");
                self.now_ms = t;
                let out = match ev {
                    Event::Datagram(from, bytes) => self.nodes[node].handle_datagram(from, &bytes),
                    Event::Timer(timer) => self.nodes[node].handle_timer(timer),
                };
                self.perform(node, out);
            }
            self.now_ms = until_ms;
        }

        fn ids(&self, i: usize) -> Vec<String> {
            self.nodes[i]
                .members()
                .iter()
                .map(|r| r.node_id.clone())
                .collect()
        }
    }

    #[test]
    fn five_nodes_converge_on_members_and_liveness() {
        let mut net = Net::new(&[b"s".as_slice(); 5]);
        net.run_until(10_000);
        let all: Vec<String> = (0..5).map(|i| format!("n{i}")).collect();
        for i in 0..5 {
            assert_eq!(net.ids(i), all, "node {i}");
            let live = net.nodes[i].liveness();
            assert_eq!(live.values().filter(|l| **l == Liveness::Alive).count(), 5);
        }
    }

    #[test]
    fn wrong_key_is_never_a_member_and_is_counted() {
        let mut net = Net::new(&[b"s".as_slice(), b"s", b"s", b"other"]);
        net.run_until(10_000);
        for i in 0..3 {
            assert_eq!(net.ids(i), vec!["n0", "n1", "n2"], "node {i}");
        }
        assert!(net.nodes[0].stats().rejected_auth > 0);
        assert_eq!(net.ids(3), vec!["n3"]);
    }

    #[test]
    fn a_cut_node_is_declared_down_and_comes_back_by_announcing() {
        let mut net = Net::new(&[b"s".as_slice(); 4]);
        net.run_until(5_000);
        net.cut.insert(3);
        net.run_until(30_000);
        let addr3 = net.addrs[3];
        assert_eq!(net.nodes[0].liveness().get(&addr3), Some(&Liveness::Down));
        net.cut.clear();
        net.run_until(60_000);
        for i in 0..4 {
            assert_eq!(alive(&net.nodes[i]), 4, "node {i} sees everyone again");
        }
    }

    #[test]
    fn newer_records_spread_and_leave_marks_down() {
        let mut net = Net::new(&[b"s".as_slice(); 3]);
        net.run_until(5_000);
        let mut r = record(2, net.addrs[2]);
        r.version = 2;
        r.status = Status::Leaving;
        let out = net.nodes[2].publish(r);
        net.perform(2, out);
        net.run_until(8_000);
        assert_eq!(
            net.nodes[0].members().get("n2").map(|r| r.status),
            Some(Status::Leaving)
        );
        let out = net.nodes[2].leave();
        net.perform(2, out);
        net.run_until(12_000);
        let addr2 = net.addrs[2];
        assert_eq!(net.nodes[0].liveness().get(&addr2), Some(&Liveness::Down));
    }

    #[test]
    fn a_long_partition_with_peers_on_both_sides_heals() {
        let mut net = Net::new(&[b"s".as_slice(); 4]);
        net.run_until(5_000);
        net.side = vec![0, 0, 1, 1];
        // Longer than foca keeps down members (600 s): both sides forget the other.
        net.run_until(700_000);
        let far = net.addrs[3];
        assert!(
            !net.nodes[0].liveness().contains_key(&far),
            "foca forgot the other side"
        );
        net.side = vec![0; 4];
        net.run_until(760_000);
        for i in 0..4 {
            let alive = alive(&net.nodes[i]);
            assert_eq!(alive, 4, "node {i} sees everyone again");
        }
    }

    #[test]
    fn a_split_into_halves_heals_within_seconds() {
        let mut net = Net::new(&[b"s".as_slice(); 4]);
        net.run_until(5_000);
        net.side = vec![0, 0, 1, 1];
        net.run_until(60_000);
        assert_eq!(
            net.nodes[0].liveness_of(net.addrs[3]),
            Liveness::Down,
            "declared down across the split"
        );
        net.side = vec![0; 4];
        net.run_until(80_000);
        for i in 0..4 {
            let alive = alive(&net.nodes[i]);
            assert_eq!(alive, 4, "node {i} sees everyone within 20 s of the heal");
        }
    }

    #[test]
    fn a_node_restarted_empty_gets_the_member_set_back() {
        let mut net = Net::new(&[b"s".as_slice(); 3]);
        net.run_until(5_000);
        // Node 2 restarts at the same address with a higher generation and no memory.
        let mut cfg = GossipConfig::new(ClusterKey::derive(b"s"), vec![net.addrs[0]]);
        cfg.cluster_size_hint = 3;
        let (g, out) = Gossip::new(
            Identity {
                addr: net.addrs[2],
                generation: 2,
                node: node_hash("n2"),
            },
            record(2, net.addrs[2]),
            Vec::new(),
            cfg,
            99,
        );
        net.nodes[2] = g;
        net.perform(2, out);
        net.run_until(10_000);
        assert_eq!(net.ids(2), vec!["n0", "n1", "n2"]);
        // And again, later: replies are limited per period, not forever.
        net.run_until(20_000);
        let (g, out) = Gossip::new(
            Identity {
                addr: net.addrs[2],
                generation: 3,
                node: node_hash("n2"),
            },
            record(2, net.addrs[2]),
            Vec::new(),
            GossipConfig::new(ClusterKey::derive(b"s"), vec![net.addrs[0]]),
            100,
        );
        net.nodes[2] = g;
        net.perform(2, out);
        net.run_until(25_000);
        assert_eq!(net.ids(2), vec!["n0", "n1", "n2"]);
    }

    #[test]
    fn long_records_are_packed_into_datagrams_that_fit() {
        let mut net = Net::new(&[b"s".as_slice(); 2]);
        for i in 0..40 {
            let out = net.nodes[0].publish(NodeRecord {
                version: 1,
                status: Status::Active,
                node_id: format!("{i:0>128}"),
                address: format!("127.0.0.1:{}", 9000 + i),
                zone: "z".repeat(128),
            });
            net.perform(0, out);
        }
        net.run_until(20_000);
        // Every datagram stayed within the limit (asserted in `perform`) and the
        // full exchange carried all records across.
        assert_eq!(net.nodes[1].members().len(), 42);
    }

    #[test]
    fn a_new_record_spreads_by_broadcast_within_a_second() {
        // A full exchange happens every 2 s; broadcasts must be much faster.
        let mut net = Net::new(&[b"s".as_slice(); 8]);
        net.run_until(10_000);
        let mut r = record(3, net.addrs[3]);
        r.version = 2;
        r.zone = "moved".into();
        let out = net.nodes[3].publish(r);
        net.perform(3, out);
        net.run_until(11_000);
        for i in 0..8 {
            assert_eq!(
                net.nodes[i].record("n3").map(|r| r.version),
                Some(2),
                "node {i}"
            );
        }
    }

    #[test]
    fn garbage_datagrams_are_counted_not_fatal() {
        let mut net = Net::new(&[b"s".as_slice(); 1]);
        let from = SocketAddr::from(([127, 0, 0, 1], 1));
        assert!(net.nodes[0].handle_datagram(from, &[]).is_empty());
        assert!(net.nodes[0].handle_datagram(from, &[0u8; 2000]).is_empty());
        let key = ClusterKey::derive(b"s");
        let stamp = |counter| Stamp {
            sender: 0xfeed,
            epoch: 1,
            counter,
        };
        let sealed = key
            .seal(&stamp(1), &[TAG_RECORDS, 0xff, 0xff])
            .expect("seal");
        net.nodes[0].handle_datagram(from, &sealed);
        let sealed = key.seal(&stamp(2), &[TAG_FOCA, 1, 2, 3]).expect("seal");
        net.nodes[0].handle_datagram(from, &sealed);
        let s = net.nodes[0].stats();
        assert_eq!(s.rejected_auth, 1);
        assert_eq!(s.rejected_oversized, 1);
        assert_eq!(s.rejected_malformed, 2);
    }

    /// A real datagram, captured on its way and delivered again (from its sender's
    /// address, and from another): dropped and counted, and nothing changes.
    #[test]
    fn a_captured_datagram_replayed_is_dropped_and_counted() {
        let mut net = Net::new(&[b"s".as_slice(); 3]);
        net.run_until(5_000);
        // Step until a datagram is on its way.
        let mut t = 5_000;
        while !net
            .queue
            .values()
            .any(|(_, ev)| matches!(ev, Event::Datagram(..)))
        {
            t += 1;
            assert!(t < 10_000, "no datagram in five seconds");
            net.run_until(t);
        }
        let (&at, (dst, ev)) = net
            .queue
            .iter()
            .find(|(_, (_, ev))| matches!(ev, Event::Datagram(..)))
            .expect("a datagram in flight");
        let (dst, (from, bytes)) = match ev {
            Event::Datagram(from, bytes) => (*dst, (*from, bytes.clone())),
            Event::Timer(_) => unreachable!("found a datagram"),
        };
        net.run_until(at.0);
        let before = net.nodes[dst].stats();
        assert_eq!(before.rejected_replay, 0, "no replay in normal traffic");
        let members = net.ids(dst);
        let attacker = SocketAddr::from(([10, 9, 9, 9], 7400));
        for source in [from, attacker, from] {
            assert!(net.nodes[dst].handle_datagram(source, &bytes).is_empty());
        }
        let after = net.nodes[dst].stats();
        assert_eq!(after.rejected_replay, 3);
        assert_eq!(after.rejected_auth, before.rejected_auth);
        assert_eq!(net.ids(dst), members);
        // The cluster goes on: later datagrams of the same sender are fresh.
        net.run_until(15_000);
        assert_eq!(net.nodes[dst].stats().rejected_replay, 3);
        assert_eq!(net.ids(dst).len(), 3);
    }
}
