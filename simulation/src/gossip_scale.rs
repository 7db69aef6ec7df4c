//! Membership at scale: the `ringkv-gossip` state machine for every member, wired
//! to a deterministic event queue (virtual clock, seeded latencies), no sockets.
//!
//! Measures, for a given member count: time for everyone to join through a few
//! seeds, datagrams per member per second once steady, time until every live member
//! declares a killed member down, and time for a new record version to reach every
//! live member.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng, rngs::SmallRng};
use ringkv_gossip::{
    ClusterKey, Gossip, GossipConfig, GossipTimer, Identity, Liveness, NodeRecord, Output, Status,
};

/// One measurement.
#[derive(Clone, Debug)]
pub struct ScaleReport {
    /// Members simulated.
    pub members: usize,
    /// Seed of the run.
    pub seed: u64,
    /// Simulated seconds until every member knew every record and saw all alive.
    pub join_s: f64,
    /// Simulated seconds until every member knew every record (alive or not).
    pub join_records_s: f64,
    /// Traffic over the 20 simulated seconds after the join.
    pub after_join: Traffic,
    /// Simulated seconds after that until no member had anything left to
    /// disseminate.
    pub settle_s: f64,
    /// Traffic over the 20 simulated seconds after that (steady state).
    pub steady: Traffic,
    /// Simulated seconds until every live member declared a killed member down.
    pub detect_dead_s: f64,
    /// Simulated seconds until a new record version reached every live member.
    pub record_spread_s: f64,
    /// Simulated seconds in all.
    pub simulated_s: f64,
    /// Wall-clock seconds the run took.
    pub wall_s: f64,
}

impl std::fmt::Display for ScaleReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "members={} seed={} join={:.1}s (all records: {:.1}s) after join: {} settled after {:.1}s; steady: {} detect_dead={:.1}s record_spread={:.1}s simulated={:.0}s wall={:.1}s",
            self.members,
            self.seed,
            self.join_s,
            self.join_records_s,
            self.after_join,
            self.settle_s,
            self.steady,
            self.detect_dead_s,
            self.record_spread_s,
            self.simulated_s,
            self.wall_s
        )
    }
}

/// Traffic over a window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Traffic {
    /// Datagrams sent per member per simulated second.
    pub datagrams_per_member_per_s: f64,
    /// Bytes sent per member per simulated second.
    pub bytes_per_member_per_s: f64,
    /// Of those datagrams, the ones that are not foca's (the record exchange).
    pub exchange_datagrams_per_member_per_s: f64,
    /// Of those bytes, the ones that are not foca's (the record exchange).
    pub exchange_bytes_per_member_per_s: f64,
}

impl std::fmt::Display for Traffic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "datagrams/member/s={:.1} bytes/member/s={:.0} (exchange: {:.1} datagrams, {:.0} bytes)",
            self.datagrams_per_member_per_s,
            self.bytes_per_member_per_s,
            self.exchange_datagrams_per_member_per_s,
            self.exchange_bytes_per_member_per_s,
        )
    }
}

enum Event {
    Datagram(SocketAddr, Vec<u8>),
    Timer(GossipTimer),
}

struct Sim {
    nodes: Vec<Gossip>,
    addrs: Vec<SocketAddr>,
    index: HashMap<SocketAddr, usize>,
    queue: BTreeMap<(u64, u64), (usize, Event)>,
    now_us: u64,
    seq: u64,
    dead: Vec<bool>,
    rng: SmallRng,
    sent: u64,
    sent_bytes: u64,
    /// Datagrams and bytes sent that are not foca's (the record exchange).
    exchange_sent: u64,
    exchange_bytes: u64,
    key: ClusterKey,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 7400))
}

fn record(i: usize, version: u64) -> NodeRecord {
    NodeRecord {
        version,
        status: Status::Active,
        node_id: format!("n{i}"),
        address: addr(i).to_string(),
        zone: String::new(),
    }
}

impl Sim {
    fn perform(&mut self, from: usize, out: Vec<Output>) {
        for o in out {
            self.seq += 1;
            match o {
                Output::Send { to, bytes } => {
                    self.sent += 1;
                    self.sent_bytes += bytes.len() as u64;
                    // The first payload byte tells foca's packets (0) from the
                    // record exchange's.
                    if let Ok((_, payload)) = self.key.open(&bytes)
                        && payload.first() != Some(&0)
                    {
                        self.exchange_sent += 1;
                        self.exchange_bytes += bytes.len() as u64;
                    }
                    let Some(&dst) = self.index.get(&to) else {
                        continue;
                    };
                    if self.dead[from] || self.dead[dst] {
                        continue;
                    }
                    // LAN-like latency: 0.2 to 2 ms.
                    let latency = self.rng.random_range(200..2_000);
                    self.queue.insert(
                        (self.now_us + latency, self.seq),
                        (dst, Event::Datagram(self.addrs[from], bytes)),
                    );
                }
                Output::Schedule { after, timer } => {
                    self.queue.insert(
                        (self.now_us + after.as_micros() as u64, self.seq),
                        (from, Event::Timer(timer)),
                    );
                }
            }
        }
    }

    fn run_until(&mut self, until_us: u64) {
        while let Some((&(t, s), _)) = self.queue.iter().next() {
            if t > until_us {
                break;
            }
            let (node, ev) = self.queue.remove(&(t, s)).expect("present");
            self.now_us = t;
            if self.dead[node] {
                continue;
            }
            let out = match ev {
                Event::Datagram(from, bytes) => self.nodes[node].handle_datagram(from, &bytes),
                Event::Timer(timer) => self.nodes[node].handle_timer(timer),
            };
            self.perform(node, out);
        }
        self.now_us = self.now_us.max(until_us);
    }

    /// Advances in steps of `step` until `done` holds or `limit` passes; returns the
    /// simulated seconds it took from `start`.
    fn until(
        &mut self,
        step: Duration,
        limit: Duration,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<f64> {
        let start = self.now_us;
        while self.now_us - start < limit.as_micros() as u64 {
            self.run_until(self.now_us + step.as_micros() as u64);
            if done(self) {
                return Some((self.now_us - start) as f64 / 1e6);
            }
        }
        None
    }
}

/// Runs the measurement for `members` members.
///
/// # Panics
/// If `members` is below 3.
pub fn run(members: usize, seed: u64) -> ScaleReport {
    assert!(members >= 3, "at least three members");
    let wall = Instant::now();
    let key = ClusterKey::derive(b"gossip at scale");
    let seeds: Vec<SocketAddr> = (0..3).map(addr).collect();
    let mut sim = Sim {
        nodes: Vec::with_capacity(members),
        addrs: (0..members).map(addr).collect(),
        index: (0..members).map(|i| (addr(i), i)).collect(),
        queue: BTreeMap::new(),
        now_us: 0,
        seq: 0,
        dead: vec![false; members],
        rng: SmallRng::seed_from_u64(seed),
        sent: 0,
        sent_bytes: 0,
        exchange_sent: 0,
        exchange_bytes: 0,
        key: key.clone(),
    };
    for i in 0..members {
        let mut cfg = GossipConfig::new(key.clone(), seeds.clone());
        cfg.cluster_size_hint = members as u32;
        let (g, out) = Gossip::new(
            Identity {
                addr: addr(i),
                generation: 1,
                node: ringkv_gossip::node_hash(&format!("n{i}")),
            },
            record(i, 1),
            Vec::new(),
            cfg,
            seed.wrapping_mul(1_000_003).wrapping_add(i as u64),
        );
        sim.nodes.push(g);
        sim.perform(i, out);
    }
    let step = Duration::from_millis(500);
    let (join_start, mut records_at) = (sim.now_us, None);
    let join_s = sim
        .until(step, Duration::from_secs(600), |s| {
            let records = s.nodes.iter().all(|g| g.member_count() == members);
            if records && records_at.is_none() {
                records_at = Some(s.now_us);
            }
            records && s.nodes.iter().all(|g| g.active_count() == members - 1)
        })
        .unwrap_or(f64::NAN);
    let join_records_s = records_at.map_or(f64::NAN, |t| (t - join_start) as f64 / 1e6);
    // Traffic over the 20 simulated seconds after the join, while foca still passes
    // on what every member learnt of the others joining.
    let window = |sim: &mut Sim| {
        let (sent0, bytes0, t0) = (sim.sent, sim.sent_bytes, sim.now_us);
        let (xsent0, xbytes0) = (sim.exchange_sent, sim.exchange_bytes);
        sim.run_until(sim.now_us + 20_000_000);
        let per_member_s = |n: u64| n as f64 / members as f64 / ((sim.now_us - t0) as f64 / 1e6);
        Traffic {
            datagrams_per_member_per_s: per_member_s(sim.sent - sent0),
            bytes_per_member_per_s: per_member_s(sim.sent_bytes - bytes0),
            exchange_datagrams_per_member_per_s: per_member_s(sim.exchange_sent - xsent0),
            exchange_bytes_per_member_per_s: per_member_s(sim.exchange_bytes - xbytes0),
        }
    };
    let after_join = window(&mut sim);
    // Steady state: once no member has anything left to disseminate, 20 s more.
    let settle_s = sim
        .until(step, Duration::from_secs(600), |s| {
            s.nodes.iter().all(|g| g.dissemination_backlog() == 0)
        })
        .unwrap_or(f64::NAN);
    let steady = window(&mut sim);
    // Kill one member (it neither sends nor receives from now on).
    let victim = members / 2;
    sim.dead[victim] = true;
    let victim_addr = addr(victim);
    let detect_dead_s = sim
        .until(step, Duration::from_secs(600), |s| {
            (0..members)
                .filter(|&i| !s.dead[i])
                .all(|i| s.nodes[i].liveness_of(victim_addr) == Liveness::Down)
        })
        .unwrap_or(f64::NAN);
    // A new version of one member's record.
    let author = 1;
    let out = sim.nodes[author].publish(NodeRecord {
        zone: "moved".into(),
        ..record(author, 2)
    });
    sim.perform(author, out);
    let id = format!("n{author}");
    let record_spread_s = sim
        .until(Duration::from_millis(100), Duration::from_secs(600), |s| {
            (0..members)
                .filter(|&i| !s.dead[i])
                .all(|i| s.nodes[i].record(&id).is_some_and(|r| r.version == 2))
        })
        .unwrap_or(f64::NAN);
    ScaleReport {
        members,
        seed,
        join_s,
        join_records_s,
        after_join,
        settle_s,
        steady,
        detect_dead_s,
        record_spread_s,
        simulated_s: sim.now_us as f64 / 1e6,
        wall_s: wall.elapsed().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifty_members_join_detect_and_spread() {
        let r = run(50, 1);
        assert!(r.join_s.is_finite(), "{r}");
        assert!(r.detect_dead_s.is_finite() && r.detect_dead_s < 30.0, "{r}");
        assert!(
            r.record_spread_s.is_finite() && r.record_spread_s < 10.0,
            "{r}"
        );
        let again = run(50, 1);
        assert_eq!(r.join_s, again.join_s, "same seed, same run");
        assert_eq!(r.detect_dead_s, again.detect_dead_s);
        assert_eq!(r.steady, again.steady);
        // Equal sets exchange one digest per member every 2 s, nothing more.
        assert!(r.steady.exchange_datagrams_per_member_per_s <= 0.6, "{r}");
    }
}
