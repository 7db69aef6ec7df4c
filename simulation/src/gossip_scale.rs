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
    /// Datagrams sent per member per simulated second, steady state.
    pub datagrams_per_member_per_s: f64,
    /// Bytes sent per member per simulated second, steady state.
    pub bytes_per_member_per_s: f64,
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
            "members={} seed={} join={:.1}s datagrams/member/s={:.1} bytes/member/s={:.0} detect_dead={:.1}s record_spread={:.1}s simulated={:.0}s wall={:.1}s",
            self.members,
            self.seed,
            self.join_s,
            self.datagrams_per_member_per_s,
            self.bytes_per_member_per_s,
            self.detect_dead_s,
            self.record_spread_s,
            self.simulated_s,
            self.wall_s
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
    let join_s = sim
        .until(step, Duration::from_secs(600), |s| {
            s.nodes
                .iter()
                .all(|g| g.member_count() == members && g.active_count() == members - 1)
        })
        .unwrap_or(f64::NAN);
    // Steady state traffic over 20 simulated seconds.
    let (sent0, bytes0, t0) = (sim.sent, sim.sent_bytes, sim.now_us);
    sim.run_until(sim.now_us + 20_000_000);
    let secs = (sim.now_us - t0) as f64 / 1e6;
    let datagrams_per_member_per_s = (sim.sent - sent0) as f64 / members as f64 / secs;
    let bytes_per_member_per_s = (sim.sent_bytes - bytes0) as f64 / members as f64 / secs;
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
        datagrams_per_member_per_s,
        bytes_per_member_per_s,
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
    }
}
