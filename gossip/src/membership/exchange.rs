//! The periodic full exchange of member records with one live member: broadcasts
//! are best effort, so every `exchange_interval` each member makes sure one other
//! holds what it holds, and the other way round.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{FOCA_PACKET_BYTES, Gossip, Identity, TAG_RECORDS};
use crate::record::NodeRecord;

/// Records accepted in one exchange datagram at most (the datagram size bounds it
/// anyway; records are packed by encoded size).
const RECORDS_PER_DATAGRAM: usize = 64;
/// Distinct addresses answered with a full record set per exchange period: a replayed
/// or spoofed request cannot make this node flood anyone.
const REPLIES_PER_PERIOD: usize = 64;

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

impl Gossip {
    pub(super) fn send_records(&mut self, to: SocketAddr, reply: bool) {
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

    /// Handles a full-exchange message (`body`, after its tag) from `from`.
    pub(super) fn handle_records(&mut self, from: SocketAddr, body: &[u8]) {
        match postcard::from_bytes::<Exchange>(body) {
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{ClusterKey, Stamp};
    use crate::membership::testnet::*;
    use crate::membership::{GossipConfig, node_hash};
    use crate::record::Status;

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
