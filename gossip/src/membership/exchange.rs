//! The periodic exchange of member records with one live member: broadcasts are best
//! effort, so every `exchange_interval` each member makes sure one other holds what
//! it holds, and the other way round.
//!
//! The exchange sends a digest of the record set first and records only where the
//! sets differ (messages under [`TAG_SYNC`]):
//!
//! 1. `A → B` [`Sync::Digest`]: A's digest of its whole set (and how A holds B,
//!    so B refutes a suspicion it has not heard of). Equal sets end here: one small
//!    datagram per exchange.
//! 2. `B → A` [`Sync::Buckets`], only when B's digest differs: B's digest of each of
//!    [`BUCKETS`] buckets (records bucketed by [`node_hash`] of their id), in one
//!    datagram.
//! 3. `A → B` [`Sync::Records`]: A's records of the buckets that differ, asking for
//!    B's records of those buckets.
//! 4. `B → A` [`Sync::Records`]: B's records of those buckets that A did not send
//!    as they are (B's newer versions, and records A lacks).
//!
//! Every answer is bounded: step 2 goes to at most [`REPLIES_PER_PERIOD`] addresses
//! per period, once each; step 3 only to an address this node asked this period,
//! once; step 4 answers each bucket once per period to an address this node sent
//! step 2 to. So a replayed or spoofed request makes this node send at most one
//! small datagram, and no address receives more than one record set per period.
//!
//! The full exchange of earlier versions ([`TAG_RECORDS`]: all records, answered
//! with all records) is still accepted and answered, so a cluster in a rolling
//! upgrade converges through the old nodes' exchanges (an old node counts a
//! digest as malformed and drops it); new nodes send it only to seeds when joining.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{FOCA_PACKET_BYTES, Gossip, Identity, TAG_RECORDS, TAG_SYNC, node_hash};
use crate::record::{Members, NodeRecord};

/// Records accepted in one exchange datagram at most (the datagram size bounds it
/// anyway; records are packed by encoded size).
const RECORDS_PER_DATAGRAM: usize = 64;
/// Distinct addresses answered per exchange period (with a full record set, or with
/// bucket digests): a replayed or spoofed request cannot make this node flood anyone.
pub(super) const REPLIES_PER_PERIOD: usize = 64;
/// Buckets records are split into for finding where two sets differ: the bucket
/// digests fill one datagram (8 bytes each), and at [`super::MAX_MEMBERS`] members
/// one differing record costs about eight records sent each way.
pub(super) const BUCKETS: usize = 128;
/// Exchange timer ticks per exchange period: a member whose last exchange found
/// the sets different exchanges again at the next tick, not a period later.
pub(super) const TICKS_PER_PERIOD: u32 = 4;
/// A set of buckets, one bit each.
type Mask = u128;
const _: () = assert!(Mask::BITS as usize == BUCKETS);
/// Encoded size of a suspicion hint at most (`Option` of a v6 identity, an
/// incarnation and a flag, varints at their longest).
const HINT_BYTES: usize = 1 + (1 + 16 + 3) + 10 + 10 + 3 + 1;

/// How the sender holds the receiver, when not alive: `(identity, incarnation,
/// down)`. SWIM refutes a suspicion only if the suspected member hears of it; when
/// the updates carrying it were lost (a partition, a held link), the suspicion would
/// last forever, so the exchange tells the receiver directly. It names the identity
/// it is about, so a replayed datagram (the MAC has no freshness) cannot make the
/// receiver renew its identity again and again: once renewed, the old identity is
/// not the receiver's any more (review S4).
type Hint = Option<(Identity, u16, bool)>;

/// A full-exchange message of earlier versions ([`TAG_RECORDS`]): some records, and
/// whether the receiver should answer with all of its own.
#[derive(Serialize, Deserialize)]
struct Exchange {
    reply: bool,
    records: Vec<NodeRecord>,
    suspected: Hint,
}

/// A message of the digest exchange ([`TAG_SYNC`]; the steps are in the module
/// documentation).
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Sync {
    /// Step 1: the digest of the sender's whole set; `reply` asks for the
    /// receiver's bucket digests if its set differs. Without `reply`, it only
    /// carries the hint (an answer to an equal digest from a member held suspect).
    Digest {
        /// Digest of the whole set.
        digest: [u8; 16],
        /// Whether to answer a different digest with bucket digests.
        reply: bool,
        /// How the sender holds the receiver.
        suspected: Hint,
    },
    /// Step 2: the digest of each bucket of the sender's set ([`BUCKETS`] of them).
    Buckets {
        /// One digest per bucket.
        buckets: Vec<[u8; 8]>,
        /// How the sender holds the receiver.
        suspected: Hint,
    },
    /// Steps 3 and 4: records of some buckets, and the buckets whose records the
    /// receiver should send back where it holds them differently (none in step 4).
    Records {
        /// Buckets asked for.
        want: Mask,
        /// The sender's records (of the buckets in `want`, in step 3).
        records: Vec<NodeRecord>,
    },
}

/// Per-period state of the exchange.
#[derive(Default)]
pub(super) struct ExchangeState {
    /// Addresses answered with a full record set this period.
    replied: BTreeSet<SocketAddr>,
    /// Addresses sent a digest this period and not yet answered back: their
    /// bucket digests are taken once.
    asked: BTreeSet<SocketAddr>,
    /// Addresses sent bucket digests this period (or a hint only), with the buckets
    /// whose records they may still ask for.
    offered: BTreeMap<SocketAddr, Mask>,
    /// Exchange timer ticks since the period started.
    ticks: u32,
    /// Whether the last exchange found the sets different.
    behind: bool,
}

impl ExchangeState {
    /// One exchange timer tick: whether to exchange now, and if so whether a new
    /// period starts (every address may be answered again).
    pub(super) fn tick(&mut self) -> Option<bool> {
        self.ticks += 1;
        if self.ticks >= TICKS_PER_PERIOD {
            self.ticks = 0;
            self.replied.clear();
            self.asked.clear();
            self.offered.clear();
            Some(true)
        } else {
            self.behind.then_some(false)
        }
    }
}

/// The bucket of a node id.
fn bucket_of(node_id: &str) -> usize {
    (node_hash(node_id) % BUCKETS as u64) as usize
}

/// The digest of each bucket of a set, and of the whole set (over the buckets').
/// A bucket's digest covers the whole encoding of its records, in node id order.
fn summarize(members: &Members) -> ([u8; 16], Vec<[u8; 8]>) {
    let mut hashers: Vec<blake3::Hasher> = (0..BUCKETS).map(|_| blake3::Hasher::new()).collect();
    let mut buf = Vec::new();
    for r in members.iter() {
        buf.clear();
        // Postcard prefixes strings with their lengths: the concatenation is
        // unambiguous.
        buf = postcard::to_extend(r, std::mem::take(&mut buf)).unwrap_or_default();
        hashers[bucket_of(&r.node_id)].update(&buf);
    }
    let buckets: Vec<[u8; 8]> = hashers
        .iter()
        .map(|h| h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
        .collect();
    let mut whole = blake3::Hasher::new();
    whole.update(b"ringkv member set v1");
    for b in &buckets {
        whole.update(b);
    }
    let digest = whole.finalize().as_bytes()[..16]
        .try_into()
        .expect("16 bytes");
    (digest, buckets)
}

impl Gossip {
    fn summary(&self) -> ([u8; 16], Vec<[u8; 8]>) {
        summarize(&self.members.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// How this node holds the member at `to`, when not alive.
    fn hint_about(&self, to: SocketAddr) -> Hint {
        self.foca
            .iter_membership_state()
            .find(|m| m.id().addr == to)
            .and_then(|m| match m.state() {
                foca::State::Alive => None,
                foca::State::Suspect => Some((*m.id(), m.incarnation(), false)),
                foca::State::Down => Some((*m.id(), m.incarnation(), true)),
            })
    }

    /// Told directly that this node is suspected (or down): feeds foca that update
    /// about itself, so it refutes (or rejoins).
    fn take_hint(&mut self, suspected: Hint) {
        let me = *self.foca.identity();
        if let Some((about, incarnation, down)) = suspected
            && about == me
        {
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
    }

    fn send_sync(&mut self, to: SocketAddr, msg: &Sync) {
        match postcard::to_extend(msg, vec![TAG_SYNC]) {
            Ok(payload) => self.send(to, &payload),
            Err(error) => tracing::warn!(%error, "cannot encode an exchange message"),
        }
    }

    /// Starts this period's exchange with `to`: step 1.
    pub(super) fn start_exchange(&mut self, to: SocketAddr) {
        let (digest, _) = self.summary();
        self.exchange.asked.insert(to);
        self.exchange.behind = false;
        let suspected = self.hint_about(to);
        self.send_sync(
            to,
            &Sync::Digest {
                digest,
                reply: true,
                suspected,
            },
        );
    }

    /// Handles a digest-exchange message (`body`, after its tag) from `from`.
    pub(super) fn handle_sync(&mut self, from: SocketAddr, body: &[u8]) {
        match postcard::from_bytes::<Sync>(body) {
            Ok(Sync::Digest {
                digest,
                reply,
                suspected,
            }) => {
                self.take_hint(suspected);
                if !reply
                    || self.exchange.offered.contains_key(&from)
                    || self.exchange.offered.len() >= REPLIES_PER_PERIOD
                {
                    return;
                }
                let (mine, buckets) = self.summary();
                let suspected = self.hint_about(from);
                if mine != digest {
                    self.exchange.offered.insert(from, Mask::MAX);
                    self.send_sync(from, &Sync::Buckets { buckets, suspected });
                } else if suspected.is_some() {
                    // Equal sets; only the hint is worth sending.
                    self.exchange.offered.insert(from, 0);
                    self.send_sync(
                        from,
                        &Sync::Digest {
                            digest: mine,
                            reply: false,
                            suspected,
                        },
                    );
                }
            }
            Ok(Sync::Buckets { buckets, suspected }) if buckets.len() == BUCKETS => {
                self.take_hint(suspected);
                // Only the member asked this period, once: unasked bucket digests
                // would make this node send its records anywhere.
                if !self.exchange.asked.remove(&from) {
                    return;
                }
                let (_, mine) = self.summary();
                let differ = mine
                    .iter()
                    .zip(&buckets)
                    .enumerate()
                    .filter(|(_, (a, b))| a != b)
                    .fold(0, |m: Mask, (i, _)| m | (1 << i));
                if differ != 0 {
                    self.exchange.behind = true;
                    self.send_buckets(from, differ, true, &[]);
                }
            }
            Ok(Sync::Records { want, records }) if records.len() <= RECORDS_PER_DATAGRAM => {
                // New records also go on through the broadcasts.
                for r in &records {
                    self.spread(r.clone());
                }
                // Answer only buckets offered to this member this period, once each.
                let allowed = match self.exchange.offered.get_mut(&from) {
                    Some(allowed) => {
                        let answer = *allowed & want;
                        *allowed &= !answer;
                        answer
                    }
                    None => 0,
                };
                if allowed != 0 {
                    self.send_buckets(from, allowed, false, &records);
                }
            }
            Ok(Sync::Buckets { .. } | Sync::Records { .. }) | Err(_) => {
                self.stats.rejected_malformed += 1
            }
        }
    }

    /// Sends this node's records of the buckets in `mask` (leaving out those equal to
    /// one in `known`, which the receiver sent), packed into datagrams; if `ask`,
    /// each datagram asks for the receiver's records of its buckets (and the first
    /// also of the buckets where this node has no record).
    fn send_buckets(&mut self, to: SocketAddr, mask: Mask, ask: bool, known: &[NodeRecord]) {
        let known: BTreeSet<&NodeRecord> = known.iter().collect();
        let mut records: Vec<(usize, NodeRecord)> = self
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|r| (bucket_of(&r.node_id), r))
            .filter(|(b, r)| mask & (1 << b) != 0 && !known.contains(r))
            .map(|(b, r)| (b, r.clone()))
            .collect();
        records.sort();
        // Pack by encoded size: a variant, a mask of at most 19 bytes, a length of at
        // most two, then the records.
        const BASE: usize = 1 + 19 + 3;
        let mut chunks: Vec<(Mask, Vec<NodeRecord>)> = vec![(0, Vec::new())];
        let mut size = BASE;
        for (b, r) in records {
            let bytes = postcard::experimental::serialized_size(&r).unwrap_or(usize::MAX);
            let last = chunks.last_mut().expect("never empty");
            if !last.1.is_empty()
                && (size.saturating_add(bytes) > FOCA_PACKET_BYTES
                    || last.1.len() >= RECORDS_PER_DATAGRAM)
            {
                chunks.push((0, Vec::new()));
                size = BASE;
            }
            size = size.saturating_add(bytes);
            let last = chunks.last_mut().expect("never empty");
            last.0 |= 1 << b;
            last.1.push(r);
        }
        if ask {
            let covered = chunks.iter().fold(0, |m, (c, _)| m | c);
            chunks[0].0 |= mask & !covered;
        }
        for (want, records) in chunks {
            if records.is_empty() && (!ask || want == 0) {
                continue;
            }
            let want = if ask { want } else { 0 };
            self.send_sync(to, &Sync::Records { want, records });
        }
    }

    /// Sends every record (the full exchange of earlier versions), packed into
    /// datagrams; with `reply`, asks for all of the receiver's.
    pub(super) fn send_records(&mut self, to: SocketAddr, reply: bool) {
        let records: Vec<NodeRecord> = self
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        let suspected = self.hint_about(to);
        // Pack by encoded size (ids, addresses and zones vary in length): an exchange
        // is a bool, a length of at most two bytes, the hint, then the records.
        const BASE: usize = 1 + 3 + HINT_BYTES;
        let mut chunks: Vec<Vec<NodeRecord>> = vec![Vec::new()];
        let mut size = BASE;
        for r in records {
            let bytes = postcard::experimental::serialized_size(&r).unwrap_or(usize::MAX);
            let last = chunks.last_mut().expect("never empty");
            if !last.is_empty()
                && (size.saturating_add(bytes) > FOCA_PACKET_BYTES
                    || last.len() >= RECORDS_PER_DATAGRAM)
            {
                chunks.push(Vec::new());
                size = BASE;
            }
            size = size.saturating_add(bytes);
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
            match postcard::to_extend(&msg, vec![TAG_RECORDS]) {
                Ok(payload) => self.send(to, &payload),
                Err(error) => tracing::warn!(%error, "cannot encode member records"),
            }
        }
    }

    /// Handles a full-exchange message of earlier versions (`body`, after its tag)
    /// from `from`.
    pub(super) fn handle_records(&mut self, from: SocketAddr, body: &[u8]) {
        match postcard::from_bytes::<Exchange>(body) {
            Ok(msg) if msg.records.len() <= RECORDS_PER_DATAGRAM => {
                self.take_hint(msg.suspected);
                // New records also go on through the broadcasts.
                for r in msg.records {
                    self.spread(r);
                }
                if msg.reply
                    && (self.exchange.replied.contains(&from)
                        || self.exchange.replied.len() < REPLIES_PER_PERIOD)
                    && self.exchange.replied.insert(from)
                {
                    self.send_records(from, false);
                }
            }
            Ok(_) | Err(_) => self.stats.rejected_malformed += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{ClusterKey, Stamp};
    use crate::membership::testnet::*;
    use crate::membership::{GossipConfig, Output, TAG_FOCA, node_hash};
    use crate::record::Status;

    fn stamp(counter: u64) -> Stamp {
        Stamp {
            sender: 0xfeed,
            epoch: 1,
            counter,
        }
    }

    /// A datagram sealed with the test key, freshly stamped.
    fn sealed(counter: u64, tag: u8, body: &[u8]) -> Vec<u8> {
        let mut payload = vec![tag];
        payload.extend_from_slice(body);
        ClusterKey::derive(b"s")
            .seal(&stamp(counter), &payload)
            .expect("seal")
    }

    fn sync(counter: u64, msg: &Sync) -> Vec<u8> {
        sealed(
            counter,
            TAG_SYNC,
            &postcard::to_stdvec(msg).expect("encode"),
        )
    }

    /// The exchange messages sent, decoded (legacy full exchanges as `None`).
    fn decoded(net: &Net) -> Vec<(usize, Option<Sync>, usize)> {
        net.exchanged
            .iter()
            .map(|(from, _, payload)| {
                let msg = match payload.split_first() {
                    Some((&TAG_SYNC, body)) => Some(postcard::from_bytes(body).expect("decodes")),
                    _ => None,
                };
                (*from, msg, payload.len())
            })
            .collect()
    }

    fn sends(out: &[Output]) -> Vec<Vec<u8>> {
        let key = ClusterKey::derive(b"s");
        out.iter()
            .filter_map(|o| match o {
                Output::Send { bytes, .. } => Some(key.open(bytes).expect("ours").1.to_vec()),
                Output::Schedule { .. } => None,
            })
            .filter(|p| p.first() != Some(&TAG_FOCA))
            .collect()
    }

    fn other(i: usize, version: u64) -> NodeRecord {
        NodeRecord {
            version,
            status: Status::Active,
            node_id: format!("m{i:04}"),
            address: format!("10.0.{}.{}:7400", i / 256, i % 256),
            zone: String::new(),
        }
    }

    #[test]
    fn equal_sets_exchange_only_a_digest() {
        let mut net = Net::new(&[b"s".as_slice(); 3]);
        for i in 0..200 {
            let out = net.nodes[0].publish(other(i, 1));
            net.perform(0, out);
        }
        net.run_until(20_000);
        for i in 0..3 {
            assert_eq!(net.nodes[i].member_count(), 203, "node {i}");
        }
        net.exchanged.clear();
        net.run_until(40_000);
        let sent = decoded(&net);
        // One exchange per node every 2 s, each a single small datagram.
        assert!((27..=33).contains(&sent.len()), "{}", sent.len());
        for (from, msg, len) in sent {
            assert!(
                matches!(msg, Some(Sync::Digest { reply: true, .. })),
                "node {from} sent {msg:?}"
            );
            assert!(len < 40, "a digest of {len} bytes");
        }
    }

    #[test]
    fn a_differing_record_is_repaired_by_sending_few_records() {
        let mut net = Net::new(&[b"s".as_slice(); 2]);
        for i in 0..600 {
            let out = net.nodes[0].publish(other(i, 1));
            net.perform(0, out);
        }
        net.run_until(20_000);
        assert_eq!(net.nodes[1].member_count(), 602);
        // Each side learns something the broadcasts never carry to the other.
        let sneak = |g: &Gossip, r: NodeRecord| {
            assert!(g.members.lock().expect("lock").apply(r));
        };
        sneak(&net.nodes[0], other(7, 2));
        sneak(&net.nodes[1], other(500, 2));
        sneak(&net.nodes[1], other(600, 1));
        net.exchanged.clear();
        net.run_until(25_000);
        for i in 0..2 {
            let g = &net.nodes[i];
            assert_eq!(g.record("m0007").map(|r| r.version), Some(2), "node {i}");
            assert_eq!(g.record("m0500").map(|r| r.version), Some(2), "node {i}");
            assert_eq!(g.member_count(), 603, "node {i}");
        }
        let sent = decoded(&net);
        let records: usize = sent
            .iter()
            .map(|(_, msg, _)| match msg {
                Some(Sync::Records { records, .. }) => records.len(),
                Some(_) => 0,
                None => panic!("no full exchange"),
            })
            .sum();
        // A bucket holds about 600 / 128 records; three differ, each sent both ways.
        assert!((3..=60).contains(&records), "{records} records sent");
    }

    #[test]
    fn malformed_exchange_messages_are_counted_not_fatal() {
        let mut net = Net::new(&[b"s".as_slice(); 1]);
        let from = SocketAddr::from(([127, 0, 0, 1], 1));
        let too_many = Sync::Records {
            want: 0,
            records: vec![
                NodeRecord {
                    address: String::new(),
                    ..other(1, 1)
                };
                RECORDS_PER_DATAGRAM + 1
            ],
        };
        let too_few = Sync::Buckets {
            buckets: vec![[0; 8]; BUCKETS - 1],
            suspected: None,
        };
        let datagrams = [
            sealed(1, TAG_SYNC, &[]),
            sealed(2, TAG_SYNC, &[0xff, 0xff, 0xff]),
            sealed(3, TAG_SYNC, &[0, 1, 2]),
            sync(4, &too_many),
            sync(5, &too_few),
        ];
        for d in &datagrams {
            assert!(sends(&net.nodes[0].handle_datagram(from, d)).is_empty());
        }
        assert_eq!(net.nodes[0].stats().rejected_malformed, 5);
        assert_eq!(net.nodes[0].member_count(), 1);
    }

    #[test]
    fn a_flood_of_exchange_requests_is_bounded() {
        let mut net = Net::new(&[b"s".as_slice(); 1]);
        for i in 0..300 {
            let out = net.nodes[0].publish(other(i, 1));
            net.perform(0, out);
        }
        let ask = Sync::Digest {
            digest: [7; 16],
            reply: true,
            suspected: None,
        };
        // Many addresses, each asking many times: one datagram of bucket digests
        // each, for the first REPLIES_PER_PERIOD addresses.
        let mut answers = Vec::new();
        let mut counter = 0;
        for a in 0..200u16 {
            let from = SocketAddr::from(([10, 1, (a >> 8) as u8, a as u8], 7400));
            for _ in 0..5 {
                counter += 1;
                answers.extend(sends(
                    &net.nodes[0].handle_datagram(from, &sync(counter, &ask)),
                ));
            }
        }
        assert_eq!(answers.len(), REPLIES_PER_PERIOD);
        for a in &answers {
            assert!(matches!(
                postcard::from_bytes(&a[1..]),
                Ok(Sync::Buckets { .. })
            ));
        }
        // Asking for every bucket: answered once (300 records), then never again
        // this period.
        let want_all = Sync::Records {
            want: Mask::MAX,
            records: Vec::new(),
        };
        let offered = SocketAddr::from(([10, 1, 0, 0], 7400));
        let mut answered = 0;
        for _ in 0..10 {
            counter += 1;
            for p in sends(&net.nodes[0].handle_datagram(offered, &sync(counter, &want_all))) {
                match postcard::from_bytes(&p[1..]) {
                    Ok(Sync::Records { want: 0, records }) => answered += records.len(),
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(answered, 301);
        // Nothing for an address not offered bucket digests, nor for bucket digests
        // nobody asked for.
        let stranger = SocketAddr::from(([10, 2, 0, 0], 7400));
        let buckets = Sync::Buckets {
            buckets: vec![[0; 8]; BUCKETS],
            suspected: None,
        };
        for msg in [&want_all, &buckets, &ask] {
            counter += 1;
            assert!(sends(&net.nodes[0].handle_datagram(stranger, &sync(counter, msg))).is_empty());
        }
        // A new period answers again.
        for _ in 0..TICKS_PER_PERIOD {
            let out = net.nodes[0].handle_timer(crate::membership::GossipTimer::Exchange);
            assert!(sends(&out).is_empty(), "alone: nobody to exchange with");
        }
        counter += 1;
        assert_eq!(
            sends(&net.nodes[0].handle_datagram(stranger, &sync(counter, &ask))).len(),
            1
        );
    }

    #[test]
    fn an_old_full_exchange_is_still_merged_and_answered() {
        let mut net = Net::new(&[b"s".as_slice(); 1]);
        let msg = Exchange {
            reply: true,
            records: vec![other(1, 1)],
            suspected: None,
        };
        let from = SocketAddr::from(([127, 0, 0, 1], 1));
        let body = postcard::to_stdvec(&msg).expect("encode");
        let out = net.nodes[0].handle_datagram(from, &sealed(1, TAG_RECORDS, &body));
        assert!(net.nodes[0].record("m0001").is_some());
        let answers = sends(&out);
        assert_eq!(answers.len(), 1);
        let answer: Exchange = postcard::from_bytes(&answers[0][1..]).expect("old format");
        assert_eq!(answers[0][0], TAG_RECORDS);
        assert!(!answer.reply);
        assert_eq!(answer.records.len(), 2);
    }

    #[test]
    fn a_digest_tells_a_member_it_is_held_down() {
        let mut net = Net::new(&[b"s".as_slice(); 3]);
        net.run_until(5_000);
        let me = *net.nodes[0].foca.identity();
        let msg = Sync::Digest {
            digest: [0; 16],
            reply: false,
            suspected: Some((me, 0, true)),
        };
        let _ = net.nodes[0].handle_datagram(net.addrs[1], &sync(1, &msg));
        assert_eq!(net.nodes[0].foca.identity().generation, me.generation + 1);
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
}
