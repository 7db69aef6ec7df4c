//! The final reads, after faults ended and the cluster was quiet: wait (bounded)
//! until every member sees every member active and alive, and every node that left
//! or was removed as removed, then read every node's Merkle roots, every register
//! from every member on its own, every counter and set from all replicas at once.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use ringkv::Client;
use ringkv::rpc::api::RequestOptions;

use super::history::History;
use super::roster::Roster;
use super::workload::{COUNTER_KEYS, REGISTER_KEYS, SET_KEYS};
use crate::SimNetwork;
use crate::host::addr_of;

/// Longest simulated wait for the cluster to heal (nodes that leave may still be
/// handing their data off).
const HEAL_WAIT: Duration = Duration::from_secs(120);
/// Times the roots are read before divergence is final.
const ROOT_READS: usize = 5;
/// Wait between reads of the roots.
const ROOT_RETRY: Duration = Duration::from_secs(2);
/// Deadline of one status request while waiting.
const STATUS_WAIT: Duration = Duration::from_secs(2);

/// What one member's view must show for the cluster to count as healed: every
/// member active and alive, every gone id removed (or forgotten), nobody else.
fn healed_view(s: &ringkv::rpc::api::Status, members: &[(usize, String)], r: &Roster) -> bool {
    let listed = &s.cluster.members;
    let every_member = members.iter().all(|(_, id)| {
        listed
            .iter()
            .any(|m| m.node_id == *id && m.status == "active" && m.liveness == "alive")
    });
    let nothing_else = listed.iter().all(|m| {
        members.iter().any(|(_, id)| *id == m.node_id)
            || (r.gone.contains(&m.node_id) && m.status == "removed")
    });
    every_member && nothing_else
}

/// Waits until every member sees the roster's membership; returns what each saw if
/// it never happens.
async fn wait_healed(roster: &Rc<RefCell<Roster>>) -> Result<(), String> {
    let mut seen = Vec::new();
    let start = tokio::time::Instant::now();
    while start.elapsed() < HEAL_WAIT {
        seen.clear();
        let mut all = true;
        let members = roster.borrow().members();
        for (host, id) in &members {
            let status = tokio::time::timeout(STATUS_WAIT, async {
                let mut c = Client::connect_with(&SimNetwork, addr_of(*host)).await?;
                c.set_timeout(STATUS_WAIT);
                c.status().await
            })
            .await;
            match status {
                Err(_) => {
                    seen.push(format!("{id}: no answer"));
                    all = false;
                }
                Ok(Ok(s)) => {
                    let view: Vec<String> = s
                        .cluster
                        .members
                        .iter()
                        .map(|m| format!("{}={}/{}", m.node_id, m.status, m.liveness))
                        .collect();
                    seen.push(format!("{id} sees [{}]", view.join(" ")));
                    all &= healed_view(&s, &members, &roster.borrow());
                }
                Ok(Err(e)) => {
                    seen.push(format!("{id}: {e}"));
                    all = false;
                }
            }
        }
        if all {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!("cluster never healed: {}", seen.join(", ")))
}

/// Every partition's Merkle root on every host in `hosts` that answers.
async fn roots_of(hosts: &[(usize, String)]) -> BTreeMap<String, Vec<[u8; 32]>> {
    let mut roots = BTreeMap::new();
    for (host, id) in hosts {
        let read = async {
            let mut c = Client::connect_with(&SimNetwork, addr_of(*host)).await?;
            c.set_timeout(STATUS_WAIT);
            c.partition_roots().await
        };
        if let Ok(Ok(r)) = tokio::time::timeout(STATUS_WAIT * 2, read).await {
            roots.insert(id.clone(), r);
        }
    }
    roots
}

/// Runs the final reads into `h`: once all `clients` and the operator finished and
/// `quiet` passed.
pub async fn run(
    roster: Rc<RefCell<Roster>>,
    clients: usize,
    quiet: Duration,
    h: Rc<RefCell<History>>,
) -> turmoil::Result {
    // An operation sent just before the faults ended may still be in flight, and
    // the operator may still be carrying out a membership change.
    while h.borrow().clients_done < clients || !roster.borrow().operator_done {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    {
        let r = roster.borrow();
        let mut hb = h.borrow_mut();
        hb.check_errors.extend(
            r.failed
                .iter()
                .map(|f| format!("the operator gave up: {f}")),
        );
        hb.membership_changes = r.done.len() as u64;
    }
    tokio::time::sleep(quiet).await;
    if let Err(e) = wait_healed(&roster).await {
        h.borrow_mut().check_errors.push(e);
        return Ok(());
    }
    let members = roster.borrow().members();
    let Some((first, _)) = members.first().cloned() else {
        h.borrow_mut().check_errors.push("no member is left".into());
        return Ok(());
    };
    let ring = Client::connect_with(&SimNetwork, addr_of(first))
        .await?
        .ring()
        .await?;
    // Roots read one node after another can straddle a background round (a reap
    // that the per-round scan found only now, say): read them again, a bounded
    // number of times, until the replicas agree; a real divergence stays.
    for _ in 0..ROOT_READS {
        let roots = roots_of(&members).await;
        let settled = ring.rebuild().is_some_and(|r| {
            super::check::diverged(&roots, &r, ring.ring_size, ring.n).is_empty()
                && super::check::held_elsewhere(&roots, &r, ring.ring_size, ring.n).is_empty()
        });
        h.borrow_mut().roots = roots;
        if settled {
            break;
        }
        tokio::time::sleep(ROOT_RETRY).await;
    }
    h.borrow_mut().ring = Some(ring);
    let once: Vec<String> = h.borrow().once_keys.iter().cloned().collect();
    for (host, id) in &members {
        let client = Client::connect_with(&SimNetwork, addr_of(*host)).await?;
        for key in (0..REGISTER_KEYS)
            .map(|k| format!("r{k}"))
            .chain(once.iter().cloned())
        {
            match client.get_local(key.as_bytes()).await {
                Ok(got) => {
                    let mut hb = h.borrow_mut();
                    hb.final_clocks
                        .entry(id.clone())
                        .or_default()
                        .insert(key.clone(), got.context.clock().ok());
                    let held = hb
                        .final_registers
                        .entry(id.clone())
                        .or_default()
                        .entry(key)
                        .or_default();
                    held.extend(
                        got.siblings
                            .iter()
                            .map(|v| String::from_utf8_lossy(v).into_owned()),
                    );
                }
                Err(e) => h.borrow_mut().check_errors.push(format!("{id} {key}: {e}")),
            }
        }
    }
    // After every register was read from every node: reads find damage.
    for (host, _) in &members {
        let status = Client::connect_with(&SimNetwork, addr_of(*host))
            .await?
            .status()
            .await?;
        h.borrow_mut().damaged_values_dropped += status.storage.damaged_values_dropped;
    }
    let mut client = Client::connect_with(&SimNetwork, addr_of(first)).await?;
    client.set_options(RequestOptions {
        r: Some(3.min(members.len() as u8)),
        ..Default::default()
    });
    for k in 0..COUNTER_KEYS {
        let key = format!("k{k}");
        let v = client
            .counter_get(key.as_bytes())
            .await
            .map_err(|e| format!("final read of {key}: {e:?}"))?;
        h.borrow_mut().final_counters.insert(key, v);
    }
    for k in 0..SET_KEYS {
        let key = format!("s{k}");
        let members = client
            .set_members(key.as_bytes())
            .await
            .map_err(|e| format!("final read of {key}: {e:?}"))?;
        let members = members
            .unwrap_or_default()
            .iter()
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .collect();
        h.borrow_mut().final_sets.insert(key, members);
    }
    Ok(())
}
