//! A deterministic little network of [`Gossip`] machines for the tests.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use super::{Gossip, GossipConfig, GossipTimer, Identity, Liveness, Output, node_hash};
use crate::auth::ClusterKey;
use crate::record::{NodeRecord, Status};

/// A deterministic little network: a virtual clock and a queue of deliveries and
/// timers, with links that can be cut.
pub(crate) struct Net {
    pub(crate) nodes: Vec<Gossip>,
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) queue: BTreeMap<(u64, u64), (usize, Event)>,
    pub(crate) now_ms: u64,
    pub(crate) seq: u64,
    pub(crate) cut: BTreeSet<usize>,
    /// Side of a partition per node; datagrams between sides are lost.
    pub(crate) side: Vec<u8>,
    /// Payloads of the datagrams sent that are not foca's: `(from, to, payload)`.
    pub(crate) exchanged: Vec<(usize, SocketAddr, Vec<u8>)>,
}

pub(crate) enum Event {
    Datagram(SocketAddr, Vec<u8>),
    Timer(GossipTimer),
}

/// Members a node sees alive (itself included).
pub(crate) fn alive(g: &Gossip) -> usize {
    g.liveness()
        .values()
        .filter(|l| **l == Liveness::Alive)
        .count()
}

pub(crate) fn record(i: usize, addr: SocketAddr) -> NodeRecord {
    NodeRecord {
        version: 1,
        status: Status::Active,
        node_id: format!("n{i}"),
        address: addr.to_string(),
        zone: String::new(),
    }
}

impl Net {
    pub(crate) fn new(keys: &[&[u8]]) -> Net {
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
            exchanged: Vec::new(),
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

    pub(crate) fn perform(&mut self, from: usize, out: Vec<Output>) {
        for o in out {
            self.seq += 1;
            match o {
                Output::Send { to, bytes } => {
                    assert!(bytes.len() <= crate::auth::MAX_DATAGRAM_BYTES);
                    if let Ok((_, payload)) = self.nodes[from].config.key.open(&bytes)
                        && payload.first() != Some(&super::TAG_FOCA)
                    {
                        self.exchanged.push((from, to, payload.to_vec()));
                    }
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

    pub(crate) fn run_until(&mut self, until_ms: u64) {
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

    pub(crate) fn ids(&self, i: usize) -> Vec<String> {
        self.nodes[i]
            .members()
            .iter()
            .map(|r| r.node_id.clone())
            .collect()
    }
}
