//! Who is in the cluster: the node id each host runs under, the ids that left or
//! were removed, and the operator who carries out membership changes the nemesis
//! decides (`leave`, `remove`) through the nodes' own client API, as a person with
//! the CLI would.
//!
//! A host is a machine; a node id is one data directory's identity on it. A fresh
//! start with an empty directory (a join, or a wipe) takes a new id, `n3.1` after
//! `n3`, so an id never comes back once it is gone.

use std::cell::RefCell;
use std::collections::{BTreeSet, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use crate::SimNetwork;
use crate::host::addr_of;

/// One host of the run.
#[derive(Clone, Debug, Default)]
pub struct Slot {
    /// The id the host runs under (`None`: nothing runs there).
    pub id: Option<String>,
    /// Fresh starts so far (the first is incarnation 0, id `n{i}`).
    pub incarnation: u32,
    /// Whether any node ever ran here (its id, even once gone, is not reused).
    pub used: bool,
}

/// A membership change for the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Tell host `host` (running `id`) to leave: it hands its data off, then
    /// removes itself.
    Leave {
        /// Host index (1-based).
        host: usize,
        /// Its node id.
        id: String,
    },
    /// Remove `id` (a dead node) through any member, once `after` (simulated time
    /// since the run began) has come.
    Remove {
        /// Node id to remove.
        id: String,
        /// Not before this.
        after: Duration,
    },
}

/// The membership of a run, shared by the nemesis (which decides), the host
/// closures (which start under the id given), the operator and the final reads.
#[derive(Debug, Default)]
pub struct Roster {
    /// Hosts `n1..`, index 0 first.
    pub slots: Vec<Slot>,
    /// Ids that left or were removed, or are being (they must end as `removed`).
    pub gone: BTreeSet<String>,
    /// Ids whose leave finished (the node removed itself): their hosts may take a
    /// fresh node.
    pub retired: BTreeSet<String>,
    /// Changes the operator has yet to carry out.
    pub pending: VecDeque<Command>,
    /// Changes carried out, for the summary.
    pub done: Vec<String>,
    /// Changes the operator gave up on (a bug of the run: reported by the checker).
    pub failed: Vec<String>,
    /// The faults are over: the operator finishes what is pending, then stops.
    pub closing: bool,
    /// A disk was lost (a wipe, or a removed node's) and the replicas have not
    /// been seen converged since: no other disk is lost meanwhile, as an operator
    /// waits for repair before replacing a second disk.
    pub repairing: bool,
    /// Simulated times of lost disks.
    pub disk_losses: Vec<Duration>,
    /// Windows of simulated time in which a node could lose writes it
    /// acknowledged (around a power loss, within the sync interval, or the start
    /// of failing fsyncs): a write acknowledged then may be on one disk only.
    pub exposed: Vec<(Duration, Duration)>,
    /// The operator has stopped.
    pub operator_done: bool,
}

/// The id of host `host`'s incarnation `incarnation`.
pub fn id_of(host: usize, incarnation: u32) -> String {
    if incarnation == 0 {
        format!("n{host}")
    } else {
        format!("n{host}.{incarnation}")
    }
}

impl Roster {
    /// `initial` running hosts and `spare` ones with nothing on them yet.
    pub fn new(initial: usize, spare: usize) -> Roster {
        let slots = (1..=initial + spare)
            .map(|i| Slot {
                id: (i <= initial).then(|| id_of(i, 0)),
                incarnation: 0,
                used: i <= initial,
            })
            .collect();
        Roster {
            slots,
            ..Roster::default()
        }
    }

    /// Records a change carried out (printed with `RINGKV_SIM_HISTORY`).
    pub fn note(&mut self, line: String) {
        if std::env::var_os("RINGKV_SIM_HISTORY").is_some() {
            // Inside a host or client the simulated time; from the nemesis, which
            // runs between steps, none (its own lines carry the time).
            match turmoil::sim_elapsed() {
                Some(t) => eprintln!("roster: {:.3}s {line}", t.as_secs_f64()),
                None => eprintln!("roster: {line}"),
            }
        }
        self.done.push(line);
    }

    /// The id host `host` (1-based) runs under, if it is a member (not gone).
    pub fn member(&self, host: usize) -> Option<&str> {
        let id = self.slots.get(host - 1)?.id.as_deref()?;
        (!self.gone.contains(id)).then_some(id)
    }

    /// Hosts whose id is a member, with their ids.
    pub fn members(&self) -> Vec<(usize, String)> {
        (1..=self.slots.len())
            .filter_map(|h| Some((h, self.member(h)?.to_string())))
            .collect()
    }

    /// Gives host `host` a fresh identity (its directory is wiped by the caller);
    /// returns the new id.
    pub fn fresh(&mut self, host: usize) -> String {
        let slot = &mut self.slots[host - 1];
        // A removed id never comes back (removal is final), so a host that ran a
        // node before starts the next one under the next id.
        if slot.used {
            slot.incarnation += 1;
        }
        slot.used = true;
        let id = id_of(host, slot.incarnation);
        slot.id = Some(id.clone());
        id
    }
}

/// Attempts of one change before the operator gives up.
const ATTEMPTS: usize = 60;
/// Longest the operator waits for a node that leaves to hand everything off.
const LEAVE_WAIT: Duration = Duration::from_secs(240);
/// Wait between attempts.
const RETRY: Duration = Duration::from_secs(1);
/// Longest one attempt may take.
const CALL_WAIT: Duration = Duration::from_secs(5);

/// The operator: carries out the roster's pending changes one at a time, retrying
/// each (bounded) until a node accepts it, and watches every node told to leave
/// until it has removed itself (meanwhile other changes go on: a leave may wait
/// for a dead member's removal); stops once the faults are over and nothing is
/// pending or leaving.
pub async fn operator(roster: Rc<RefCell<Roster>>, hosts: usize) -> turmoil::Result {
    // Nodes told to leave: host, id, when told.
    let mut leaving: Vec<(usize, String, tokio::time::Instant)> = Vec::new();
    loop {
        let mut still = Vec::new();
        for (host, id, since) in leaving.drain(..) {
            match retired(host, &id).await {
                Ok(()) => {
                    let mut r = roster.borrow_mut();
                    r.retired.insert(id.clone());
                    r.note(format!("{id} left"));
                }
                Err(last) if since.elapsed() > LEAVE_WAIT => {
                    roster
                        .borrow_mut()
                        .failed
                        .push(format!("{id} never finished leaving: {last}"));
                }
                Err(_) => still.push((host, id, since)),
            }
        }
        leaving = still;
        let next = {
            let mut r = roster.borrow_mut();
            match r.pending.front() {
                Some(Command::Remove { after, .. }) if turmoil::elapsed() < *after => None,
                Some(_) => r.pending.pop_front(),
                None if r.closing && leaving.is_empty() => {
                    r.operator_done = true;
                    return Ok(());
                }
                None => None,
            }
        };
        let Some(command) = next else {
            if roster.borrow().repairing && converged(&roster).await {
                let mut r = roster.borrow_mut();
                r.repairing = false;
                r.note("replicas converged after the lost disk".into());
            }
            tokio::time::sleep(RETRY).await;
            continue;
        };
        let mut outcome = Err(String::from("never tried"));
        let mut unknown = BTreeSet::new();
        for attempt in 0..ATTEMPTS {
            outcome = carry_out(&command, &roster, hosts, attempt).await;
            match &outcome {
                Ok(()) => break,
                // An id no member knows (it never spread before its disk was lost)
                // has nothing to remove: once every member said so.
                Err(e) if e.contains("unknown node") => {
                    unknown.insert(attempt % roster.borrow().members().len().max(1));
                    if unknown.len() >= roster.borrow().members().len() {
                        outcome = Ok(());
                        break;
                    }
                }
                Err(_) => {}
            }
            tokio::time::sleep(RETRY).await;
        }
        let mut r = roster.borrow_mut();
        match (outcome, &command) {
            (Ok(()), Command::Leave { host, id }) => {
                leaving.push((*host, id.clone(), tokio::time::Instant::now()));
            }
            (Ok(()), Command::Remove { id, .. }) => r.note(format!("{id} removed")),
            (Err(e), _) => r.failed.push(format!("{command:?}: {e}")),
        }
    }
}

/// Whether the replicas are whole again: the ring has exactly the roster's
/// members, each answers, and every partition's primaries hold equal roots.
async fn converged(roster: &Rc<RefCell<Roster>>) -> bool {
    let members = roster.borrow().members();
    let read = async {
        let mut roots = std::collections::BTreeMap::new();
        let mut ring = None;
        for (host, id) in &members {
            let mut c = ringkv::Client::connect_with(&SimNetwork, addr_of(*host)).await?;
            c.set_timeout(CALL_WAIT);
            if ring.is_none() {
                ring = Some(c.ring().await?);
            }
            roots.insert(id.clone(), c.partition_roots().await?);
        }
        Ok::<_, ringkv::ClientError>((ring, roots))
    };
    let Ok(Ok((Some(info), roots))) = tokio::time::timeout(CALL_WAIT * 4, read).await else {
        return false;
    };
    let Some(ring) = info.rebuild() else {
        return false;
    };
    let in_ring: BTreeSet<&str> = ring.members().iter().map(|m| m.id.as_str()).collect();
    let expected: BTreeSet<&str> = members.iter().map(|(_, id)| id.as_str()).collect();
    in_ring == expected && super::check::diverged(&roots, &ring, info.ring_size, info.n).is_empty()
}

/// Whether the node `id` on `host`, told to leave, has handed everything off and
/// removed itself; if not, what it is.
async fn retired(host: usize, id: &str) -> Result<(), String> {
    let status = tokio::time::timeout(CALL_WAIT, async {
        let mut c = ringkv::Client::connect_with(&SimNetwork, addr_of(host)).await?;
        c.set_timeout(CALL_WAIT);
        c.status().await
    })
    .await;
    match status {
        Ok(Ok(s)) => match s.cluster.members.iter().find(|m| m.node_id == id) {
            Some(m) if m.status == "removed" => Ok(()),
            Some(m) => Err(format!("{id} is {}", m.status)),
            None => Err(format!("{id} is not in its own member list")),
        },
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

async fn carry_out(
    command: &Command,
    roster: &Rc<RefCell<Roster>>,
    hosts: usize,
    attempt: usize,
) -> Result<(), String> {
    // As `ringkv leave` and `ringkv remove` do without an auth file: the peer
    // channel, with the cluster's key. Bounded by tokio's timer, as every call in
    // the simulation (the peer pool's own deadline is tarpc's wall clock).
    let key = crate::host::cluster_key();
    let call = async {
        match command {
            Command::Leave { host, .. } => {
                ringkv::client::admin::leave_on(SimNetwork, addr_of(*host), key)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Command::Remove { id, .. } => {
                // Through the members in turn, starting elsewhere on each attempt.
                let members = roster.borrow().members();
                let Some((host, _)) = members.get(attempt % members.len().max(1)) else {
                    return Err("no member to ask".to_string());
                };
                debug_assert!(*host <= hosts);
                ringkv::client::admin::remove_on(SimNetwork, addr_of(*host), key, id)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    };
    tokio::time::timeout(CALL_WAIT, call)
        .await
        .unwrap_or_else(|_| Err("no answer in time".into()))
}
