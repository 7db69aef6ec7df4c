//! The nemesis: faults injected between simulation steps, each kind weighted by a
//! knob drawn from the seed (swarm testing: every seed its own mix of faults).
//!
//! Faults apply only among the nodes; clients always reach the nodes, except during
//! a pause, which stops all traffic to and from one node. Faults overlap freely, as
//! turmoil's link states allow: ending a pause or a latency spike releases its links,
//! which also ends any partition on them, and a link that loses a packet is repaired
//! both ways by its next send, which can end a one-way partition early.
//!
//! turmoil's TCP never retransmits: a lost segment stalls its stream until the
//! sender's deadline drops the connection. Loss is therefore harsher on TCP than a
//! real network is (a black hole rather than a delay); ringkv must survive both.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rand::{RngExt, rngs::SmallRng};
use ringkv_storage::SimulatedDisk;

use super::roster::{Command, Roster};

/// Around a power loss (or the first failing fsync), how long acknowledged writes
/// may be on no disk of that node: the 100 ms sync interval, with room for the
/// acknowledgement's way back to the client.
const EXPOSED_MARGIN: Duration = Duration::from_millis(250);
/// Members a leave or a remove leaves at least (N = 3 distinct replicas).
const MIN_MEMBERS: usize = 3;

/// Fault weights and rates of one seed.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Knobs {
    /// Mean simulated time between nemesis actions, in ms.
    pub fault_every_ms: u64,
    /// Partition the nodes into two random halves.
    pub halves: u32,
    /// Partition off a minority (⌊(n−1)/2⌋ nodes) from the majority.
    pub majority: u32,
    /// Cut one node off from all others.
    pub isolate: u32,
    /// Two sides that cannot see each other, and one node that sees both.
    pub bridge: u32,
    /// One node stops hearing from (or reaching) some others, one way only.
    pub oneway: u32,
    /// Packet loss on every link between nodes until the next heal.
    pub loss: u32,
    /// Probability that a send breaks its link (dropping what is in flight on it)
    /// while loss is on; the next send repairs it.
    pub loss_rate: f64,
    /// Latency spike: hold one link (messages queue) for 0.2–5 s.
    pub spike: u32,
    /// Long pause: hold every link of one node (clients too) for 2–20 s.
    pub pause: u32,
    /// Crash one node (a power loss: what its last fsync did not cover is gone);
    /// restart it 0.2–1 s (a quick reboot) or 1–10 s later.
    pub crash: u32,
    /// Chance that a crash leaves a torn append (part of the unsynced tail).
    pub torn: f64,
    /// Heal everything.
    pub heal: u32,
    /// A disk that stops syncing: every fsync of one node fails for 1–10 s (its
    /// store poisons itself and refuses writes), then the node loses power and
    /// restarts on a disk that works, with what its last good sync covered.
    pub syncfail: u32,
    /// A fresh node (empty directory, new id) joins on a spare host, or on one
    /// whose node left or was removed.
    #[serde(default)]
    pub join: u32,
    /// A member leaves (`ringkv leave`): hands its data off, then removes itself.
    #[serde(default)]
    pub leave: u32,
    /// An operator removes a crashed member (`ringkv remove`); its host stays down.
    #[serde(default)]
    pub remove: u32,
    /// A member's disk is lost: it restarts with an empty directory under a new id,
    /// and an operator removes the old id 2-15 s later.
    #[serde(default)]
    pub wipe: u32,
    /// Bits flip in sealed files (log segments or their hint files) of one node,
    /// at rest (16 of them, each in a file picked anew): found by a checksum when read, the value dropped and brought
    /// back by anti-entropy. Log engine only.
    pub flip: u32,
}

impl Knobs {
    /// Draws a mix from `rng`.
    pub fn draw(rng: &mut SmallRng) -> Knobs {
        Knobs {
            fault_every_ms: rng.random_range(1_000..6_000),
            halves: rng.random_range(0..4),
            majority: rng.random_range(0..3),
            isolate: rng.random_range(0..4),
            bridge: rng.random_range(0..3),
            oneway: rng.random_range(0..3),
            loss: rng.random_range(0..3),
            loss_rate: f64::from(rng.random_range(1..50u32)) / 1000.0,
            spike: rng.random_range(0..3),
            pause: rng.random_range(0..3),
            crash: rng.random_range(0..3),
            heal: rng.random_range(1..4),
            torn: f64::from(rng.random_range(0..3u32)) / 2.0,
            syncfail: rng.random_range(0..3),
            flip: rng.random_range(0..3),
            join: rng.random_range(0..3),
            leave: rng.random_range(0..2),
            remove: rng.random_range(0..2),
            wipe: rng.random_range(0..2),
        }
    }

    fn weights(&self) -> [(Fault, u32); 16] {
        [
            (Fault::Halves, self.halves),
            (Fault::Majority, self.majority),
            (Fault::Isolate, self.isolate),
            (Fault::Bridge, self.bridge),
            (Fault::OneWay, self.oneway),
            (Fault::Loss, self.loss),
            (Fault::Spike, self.spike),
            (Fault::Pause, self.pause),
            (Fault::Crash, self.crash),
            (Fault::Heal, self.heal),
            (Fault::SyncFail, self.syncfail),
            (Fault::Flip, self.flip),
            (Fault::Join, self.join),
            (Fault::Leave, self.leave),
            (Fault::Remove, self.remove),
            (Fault::Wipe, self.wipe),
        ]
    }
}

impl std::fmt::Display for Knobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "every={}ms halves={} majority={} isolate={} bridge={} oneway={} loss={}@{:.3} spike={} pause={} crash={}@torn{:.1} syncfail={} flip={} join={} leave={} remove={} wipe={} heal={}",
            self.fault_every_ms,
            self.halves,
            self.majority,
            self.isolate,
            self.bridge,
            self.oneway,
            self.loss,
            self.loss_rate,
            self.spike,
            self.pause,
            self.crash,
            self.torn,
            self.syncfail,
            self.flip,
            self.join,
            self.leave,
            self.remove,
            self.wipe,
            self.heal
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Halves,
    Majority,
    Isolate,
    Bridge,
    OneWay,
    Loss,
    Spike,
    Pause,
    Crash,
    Heal,
    SyncFail,
    Flip,
    Join,
    Leave,
    Remove,
    Wipe,
}

impl Fault {
    /// The knob's name, as printed and counted.
    fn name(self) -> &'static str {
        match self {
            Fault::Halves => "halves",
            Fault::Majority => "majority",
            Fault::Isolate => "isolate",
            Fault::Bridge => "bridge",
            Fault::OneWay => "oneway",
            Fault::Loss => "loss",
            Fault::Spike => "spike",
            Fault::Pause => "pause",
            Fault::Crash => "crash",
            Fault::Heal => "heal",
            Fault::SyncFail => "syncfail",
            Fault::Flip => "flip",
            Fault::Join => "join",
            Fault::Leave => "leave",
            Fault::Remove => "remove",
            Fault::Wipe => "wipe",
        }
    }
}

/// A host as the nemesis sees it: its name, its disk, its data directory.
pub struct NodeDisk {
    /// Host name.
    pub name: String,
    /// The disk a power loss cuts back.
    pub disk: Arc<SimulatedDisk>,
    /// The data directory (wiped on a join or a lost disk).
    pub data: PathBuf,
    /// Whether the engine is the log (bits are flipped only in the log's files,
    /// whose damage is found record by record).
    pub log: bool,
}

/// The nemesis of one run.
pub struct Nemesis {
    knobs: Knobs,
    rng: SmallRng,
    /// Node host names.
    nodes: Vec<String>,
    /// Each node's disk.
    disks: Vec<Arc<SimulatedDisk>>,
    /// Each host's data directory.
    dirs: Vec<PathBuf>,
    /// Whether the nodes' engine is the log.
    log: bool,
    /// Who runs where.
    roster: Rc<RefCell<Roster>>,
    /// Nodes whose fsyncs fail, and when they lose power and restart.
    failing: Vec<(usize, Duration)>,
    /// Simulated power losses that could not be carried out (a bug of the run).
    pub disk_errors: Vec<String>,
    /// Every host: nodes and clients.
    hosts: Vec<String>,
    /// Crashed nodes and when they restart.
    crashed: Vec<(String, Duration)>,
    /// Held link sets (spikes, pauses) and when they are released.
    held: Vec<(Vec<(String, String)>, Duration)>,
    next: Duration,
    /// Whether links between nodes lose packets now.
    lossy: bool,
    /// Faults injected (heals not counted).
    pub faults: u64,
    /// Actions taken, by knob (heals included).
    pub by_kind: std::collections::BTreeMap<String, u64>,
    /// Bits flipped in sealed files (a flip finds none early in a run).
    pub bits_flipped: u64,
    /// Print every action to stderr (`RINGKV_SIM_HISTORY`).
    print: bool,
}

impl Nemesis {
    /// A nemesis over `nodes` (host names and their disks); `clients` are the other
    /// hosts. First fault at `start`.
    pub fn new(
        knobs: Knobs,
        rng: SmallRng,
        nodes: Vec<NodeDisk>,
        roster: Rc<RefCell<Roster>>,
        clients: &[&str],
        start: Duration,
    ) -> Nemesis {
        let mut names = Vec::new();
        let mut disks = Vec::new();
        let mut dirs = Vec::new();
        let mut log = true;
        for n in nodes {
            names.push(n.name);
            disks.push(n.disk);
            dirs.push(n.data);
            log &= n.log;
        }
        let nodes = names;
        let hosts = nodes
            .iter()
            .cloned()
            .chain(clients.iter().map(|c| c.to_string()))
            .collect();
        Nemesis {
            knobs,
            rng,
            nodes,
            disks,
            dirs,
            log,
            roster,
            failing: Vec::new(),
            disk_errors: Vec::new(),
            hosts,
            crashed: Vec::new(),
            held: Vec::new(),
            next: start,
            lossy: false,
            faults: 0,
            by_kind: std::collections::BTreeMap::new(),
            bits_flipped: 0,
            print: std::env::var_os("RINGKV_SIM_HISTORY").is_some(),
        }
    }

    /// Called before every simulation step: restarts and releases what is due, and
    /// injects the next fault when its time has come.
    pub fn tick(&mut self, sim: &mut turmoil::Sim, now: Duration) {
        self.crashed.retain(|(n, at)| {
            let due = now >= *at;
            if due {
                sim.bounce(n.as_str());
            }
            !due
        });
        let due: Vec<usize> = self
            .failing
            .iter()
            .filter(|(_, at)| now >= *at)
            .map(|(i, _)| *i)
            .collect();
        self.failing.retain(|(_, at)| now < *at);
        for i in due {
            self.power_loss(sim, i, now);
        }
        self.held.retain(|(links, at)| {
            let due = now >= *at;
            if due {
                for (a, b) in links {
                    sim.release(a.as_str(), b.as_str());
                }
            }
            !due
        });
        if now < self.next {
            return;
        }
        self.inject(sim, now);
        let every = self.knobs.fault_every_ms;
        self.next = now + Duration::from_millis(self.rng.random_range(every / 2..every * 3 / 2));
    }

    fn pick_fault(&mut self) -> Fault {
        let weights = self.knobs.weights();
        let total: u32 = weights.iter().map(|(_, w)| w).sum();
        let mut pick = self.rng.random_range(0..total.max(1));
        for (fault, w) in weights {
            if pick < w {
                return fault;
            }
            pick -= w;
        }
        Fault::Heal
    }

    /// The nodes in a random order.
    fn shuffled(&mut self) -> Vec<String> {
        let mut order = self.nodes.clone();
        for i in (1..order.len()).rev() {
            order.swap(i, self.rng.random_range(0..=i));
        }
        order
    }

    fn node(&mut self) -> String {
        self.nodes[self.rng.random_range(0..self.nodes.len())].clone()
    }

    fn inject(&mut self, sim: &mut turmoil::Sim, now: Duration) {
        let cut = |sim: &turmoil::Sim, a: &[String], b: &[String]| {
            for x in a {
                for y in b {
                    sim.partition(x.as_str(), y.as_str());
                }
            }
        };
        let fault = self.pick_fault();
        if fault != Fault::Heal {
            self.faults += 1;
        }
        *self.by_kind.entry(fault.name().to_string()).or_default() += 1;
        if self.print {
            eprintln!("nemesis: {:.3}s {}", now.as_secs_f64(), fault.name());
        }
        match fault {
            Fault::Halves => {
                let order = self.shuffled();
                let at = self.rng.random_range(1..order.len());
                cut(sim, &order[..at], &order[at..]);
            }
            Fault::Majority => {
                let order = self.shuffled();
                let minority = ((order.len() - 1) / 2).max(1);
                cut(sim, &order[..minority], &order[minority..]);
            }
            Fault::Isolate => {
                let order = self.shuffled();
                cut(sim, &order[..1], &order[1..]);
            }
            Fault::Bridge => {
                // order[0] bridges; the rest split into two non-empty sides.
                let order = self.shuffled();
                let at = self.rng.random_range(2..order.len());
                cut(sim, &order[1..at], &order[at..]);
            }
            Fault::OneWay => {
                let order = self.shuffled();
                let a = &order[0];
                let k = self.rng.random_range(1..order.len());
                let inbound = self.rng.random_bool(0.5);
                for b in &order[1..=k] {
                    if inbound {
                        sim.partition_oneway(b.as_str(), a.as_str());
                    } else {
                        sim.partition_oneway(a.as_str(), b.as_str());
                    }
                }
            }
            Fault::Loss => {
                self.lossy = true;
                self.set_loss(sim, self.knobs.loss_rate);
            }
            Fault::Spike => {
                let order = self.shuffled();
                let (a, b) = (order[0].clone(), order[1].clone());
                sim.hold(a.as_str(), b.as_str());
                let until = now + Duration::from_millis(self.rng.random_range(200..5_000));
                self.held.push((vec![(a, b)], until));
            }
            Fault::Pause => {
                let a = self.node();
                let links: Vec<(String, String)> = self
                    .hosts
                    .iter()
                    .filter(|h| **h != a)
                    .map(|h| (a.clone(), h.clone()))
                    .collect();
                for (x, y) in &links {
                    sim.hold(x.as_str(), y.as_str());
                }
                let until = now + Duration::from_millis(self.rng.random_range(2_000..20_000));
                self.held.push((links, until));
            }
            Fault::Crash => {
                if let Some(i) = self.pick(|n, i| n.up(i)) {
                    self.power_loss(sim, i, now);
                }
            }
            Fault::SyncFail => {
                if let Some(i) = self.pick(|n, i| n.up(i)) {
                    self.disks[i].fail_syncs(true);
                    self.expose(now);
                    let until = now + Duration::from_millis(self.rng.random_range(1_000..10_000));
                    self.failing.push((i, until));
                }
            }
            Fault::Flip => {
                if self.log
                    && let Some(i) = self.pick(|n, i| n.up(i))
                {
                    let dir = self.dirs[i].clone();
                    // A bad spot rather than one bit: most records in a sealed
                    // segment are stale versions nobody reads again.
                    for _ in 0..FLIPS_PER_FAULT {
                        let pick = self.rng.random::<u64>();
                        match flip_a_sealed_bit(&dir, pick) {
                            Ok(true) => self.bits_flipped += 1,
                            Ok(false) => {}
                            Err(e) => self.disk_errors.push(format!("{}: {e}", self.nodes[i])),
                        }
                    }
                }
            }
            Fault::Join => {
                // A host with nothing running, or running a node that left.
                let free = |n: &Nemesis, i: usize| {
                    let r = n.roster.borrow();
                    let slot = &r.slots[i];
                    slot.id.as_ref().is_none_or(|id| r.retired.contains(id))
                        && !n.failing.iter().any(|(f, _)| *f == i)
                };
                if let Some(i) = self.pick(free) {
                    let host = self.nodes[i].clone();
                    sim.crash(host.as_str());
                    self.crashed.retain(|(n, _)| *n != host);
                    let id = self.wipe_disk(i);
                    self.roster
                        .borrow_mut()
                        .note(format!("{host} joins as {id}"));
                    sim.bounce(host.as_str());
                }
            }
            Fault::Leave => {
                if self.active() > MIN_MEMBERS
                    && let Some(i) = self.pick(|n, i| n.up(i))
                {
                    let mut r = self.roster.borrow_mut();
                    if let Some(id) = r.member(i + 1).map(str::to_string) {
                        r.gone.insert(id.clone());
                        r.note(format!("{id} is told to leave"));
                        r.pending.push_back(Command::Leave { host: i + 1, id });
                    }
                }
            }
            Fault::Remove => {
                // A crashed member whose restart is still to come: it never comes.
                let down = |n: &Nemesis, i: usize| {
                    n.roster.borrow().member(i + 1).is_some()
                        && n.crashed.iter().any(|(h, _)| *h == n.nodes[i])
                };
                if self.active() > MIN_MEMBERS
                    && !self.roster.borrow().repairing
                    && let Some(i) = self.pick(down)
                {
                    self.lose_disk(now);
                    let host = self.nodes[i].clone();
                    self.crashed.retain(|(n, _)| *n != host);
                    let mut r = self.roster.borrow_mut();
                    if let Some(id) = r.slots[i].id.take() {
                        r.gone.insert(id.clone());
                        r.note(format!("{id} stays down and is removed"));
                        r.pending.push_back(Command::Remove { id, after: now });
                    }
                }
            }
            Fault::Wipe => {
                if !self.roster.borrow().repairing
                    && let Some(i) = self.pick(|n, i| n.up(i))
                {
                    self.lose_disk(now);
                    let host = self.nodes[i].clone();
                    self.disks[i].power_off();
                    sim.crash(host.as_str());
                    let old = self.roster.borrow().member(i + 1).map(str::to_string);
                    let id = self.wipe_disk(i);
                    let delay = Duration::from_millis(self.rng.random_range(2_000..15_000));
                    let mut r = self.roster.borrow_mut();
                    if let Some(old) = old {
                        r.note(format!("{host} lost its disk: {old} comes back as {id}"));
                        r.gone.insert(old.clone());
                        r.pending.push_back(Command::Remove {
                            id: old,
                            after: now + delay,
                        });
                    }
                    drop(r);
                    let down = self.rng.random_range(200..10_000);
                    self.crashed.push((host, now + Duration::from_millis(down)));
                }
            }
            Fault::Heal => self.heal_links(sim),
        }
    }

    /// fsyncs the nodes' disks refused, over the run.
    pub fn refused_syncs(&self) -> u64 {
        self.disks.iter().map(|d| d.refused_syncs()).sum()
    }

    /// Whether host `i` (0-based) runs a member and its disk works.
    fn up(&self, i: usize) -> bool {
        let name = &self.nodes[i];
        self.roster.borrow().member(i + 1).is_some()
            && !self.crashed.iter().any(|(n, _)| n == name)
            && !self.failing.iter().any(|(f, _)| *f == i)
    }

    /// Writes a node acknowledged around `now` may be lost on it (a power loss
    /// within the sync interval, or fsyncs that start failing): see
    /// [`super::history::History::doubly_exposed`].
    fn expose(&mut self, now: Duration) {
        let margin = EXPOSED_MARGIN;
        self.roster
            .borrow_mut()
            .exposed
            .push((now.saturating_sub(margin), now + margin));
    }

    /// A disk is lost for good now: no other until the replicas converged again.
    fn lose_disk(&mut self, now: Duration) {
        let mut r = self.roster.borrow_mut();
        r.disk_losses.push(now);
        r.repairing = true;
    }

    /// Members that are neither leaving nor gone: how many the ring has.
    fn active(&self) -> usize {
        self.roster.borrow().members().len()
    }

    /// A random host index (0-based) among those `ok` accepts.
    fn pick(&mut self, ok: impl Fn(&Nemesis, usize) -> bool) -> Option<usize> {
        let fit: Vec<usize> = (0..self.nodes.len()).filter(|&i| ok(self, i)).collect();
        (!fit.is_empty()).then(|| fit[self.rng.random_range(0..fit.len())])
    }

    /// Host `i` (0-based) loses its disk: the directory and what the disk model
    /// knows of it are gone, and it takes a new identity (returned).
    fn wipe_disk(&mut self, i: usize) -> String {
        if let Err(e) = std::fs::remove_dir_all(&self.dirs[i])
            && e.kind() != std::io::ErrorKind::NotFound
        {
            self.disk_errors.push(format!("{}: {e}", self.nodes[i]));
        }
        self.disks[i].replace();
        self.roster.borrow_mut().fresh(i + 1)
    }

    /// Node `i` loses power: the host stops, its disk keeps only what its last
    /// completed fsync covered (perhaps with a torn append), its fsyncs work again,
    /// and it restarts a little later.
    fn power_loss(&mut self, sim: &mut turmoil::Sim, i: usize, now: Duration) {
        let a = self.nodes[i].clone();
        if self.print {
            eprintln!("nemesis: {:.3}s {a} loses power", now.as_secs_f64());
        }
        self.expose(now);
        // The power goes before the host stops: what its shutdown path writes is
        // lost too, then the disk keeps only what was synced.
        let disk = self.disks[i].clone();
        disk.power_off();
        sim.crash(a.as_str());
        disk.fail_syncs(false);
        let torn = self
            .rng
            .random_bool(self.knobs.torn)
            .then(|| self.rng.random::<u64>());
        if let Err(e) = disk.restore(torn) {
            self.disk_errors.push(format!("{a}: {e}"));
        }
        // Half the time a quick reboot (before peers or clients notice it was gone,
        // so nothing but its own disk tells it what it lost).
        let down = if self.rng.random_bool(0.5) {
            self.rng.random_range(200..1_000)
        } else {
            self.rng.random_range(1_000..10_000)
        };
        self.crashed.push((a, now + Duration::from_millis(down)));
    }

    fn set_loss(&self, sim: &mut turmoil::Sim, rate: f64) {
        for (i, a) in self.nodes.iter().enumerate() {
            for b in &self.nodes[i + 1..] {
                sim.set_link_fail_rate(a.as_str(), b.as_str(), rate);
            }
        }
    }

    /// Repairs every link, releases held messages, and stops packet loss.
    fn heal_links(&mut self, sim: &mut turmoil::Sim) {
        if self.lossy {
            self.lossy = false;
            self.set_loss(sim, 0.0);
        }
        for a in &self.nodes {
            for b in &self.hosts {
                if a != b {
                    sim.repair(a.as_str(), b.as_str());
                }
            }
        }
        for (links, _) in self.held.drain(..) {
            for (a, b) in links {
                sim.release(a.as_str(), b.as_str());
            }
        }
    }

    /// Ends every fault: links healed, crashed nodes restarted.
    pub fn heal_all(&mut self, sim: &mut turmoil::Sim, now: Duration) {
        self.heal_links(sim);
        self.roster.borrow_mut().closing = true;
        for (i, _) in std::mem::take(&mut self.failing) {
            self.power_loss(sim, i, now);
        }
        for (n, _) in self.crashed.drain(..) {
            sim.bounce(n.as_str());
        }
    }
}

/// Bits one `flip` fault flips, each in a sealed file picked anew.
const FLIPS_PER_FAULT: usize = 16;

/// Header bytes of a file that a flip spares: a flipped segment header makes the
/// whole file unreadable, which the log's own tests cover; here the damage is to
/// records.
const SPARED_HEADER: u64 = 64;

/// Flips one bit, chosen by `pick`, in a sealed file of the log in `dir`: a segment
/// other than the newest (the active one), or a hint file. Returns whether there
/// was one to flip.
///
/// # Errors
/// If a file cannot be read or written.
pub fn flip_a_sealed_bit(dir: &std::path::Path, pick: u64) -> std::io::Result<bool> {
    let mut segments = Vec::new();
    let mut hints = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("seg") => segments.push(path),
            Some("hint") => hints.push(path),
            _ => {}
        }
    }
    segments.sort();
    segments.pop();
    segments.extend(hints);
    segments.sort();
    if segments.is_empty() {
        return Ok(false);
    }
    let path = &segments[(pick % segments.len() as u64) as usize];
    let mut bytes = std::fs::read(path)?;
    let len = bytes.len() as u64;
    if len <= SPARED_HEADER {
        return Ok(false);
    }
    let at = SPARED_HEADER + (pick >> 8) % (len - SPARED_HEADER);
    bytes[at as usize] ^= 1 << (pick % 8);
    std::fs::write(path, bytes)?;
    Ok(true)
}
