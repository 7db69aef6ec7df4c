//! The final reads, after faults ended and the cluster was quiet: wait (bounded)
//! until every node sees every node alive, then read every register from every
//! replica on its own, every counter and set from all replicas at once, and every
//! node's Merkle roots.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use ringkv::Client;
use ringkv::rpc::api::RequestOptions;

use super::history::History;
use super::workload::{COUNTER_KEYS, REGISTER_KEYS, SET_KEYS};
use crate::SimNetwork;
use crate::host::addr_of;

/// Longest simulated wait for the cluster to heal.
const HEAL_WAIT: Duration = Duration::from_secs(60);
/// Times the roots are read before divergence is final.
const ROOT_READS: usize = 5;
/// Wait between reads of the roots.
const ROOT_RETRY: Duration = Duration::from_secs(2);
/// Deadline of one status request while waiting.
const STATUS_WAIT: Duration = Duration::from_secs(2);

/// Waits until every node sees `nodes` members alive; returns what each saw if it
/// never happens.
async fn wait_healed(nodes: usize) -> Result<(), String> {
    let mut seen = Vec::new();
    let start = tokio::time::Instant::now();
    while start.elapsed() < HEAL_WAIT {
        seen.clear();
        let mut all = true;
        for i in 1..=nodes {
            let status = tokio::time::timeout(STATUS_WAIT, async {
                let mut c = Client::connect_with(&SimNetwork, addr_of(i)).await?;
                c.set_timeout(STATUS_WAIT);
                c.status().await
            })
            .await;
            match status {
                Err(_) => {
                    seen.push(format!("n{i}: no answer"));
                    all = false;
                }
                Ok(Ok(s)) => {
                    let members = &s.cluster.members;
                    let alive = members.iter().filter(|m| m.liveness == "alive").count();
                    let view: Vec<String> = members
                        .iter()
                        .map(|m| format!("{}={}/{}", m.node_id, m.status, m.liveness))
                        .collect();
                    seen.push(format!("n{i} sees {alive} alive [{}]", view.join(" ")));
                    all &= alive == nodes;
                }
                Ok(Err(e)) => {
                    seen.push(format!("n{i}: {e}"));
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

/// Runs the final reads into `h`: once all `clients` finished and `quiet` passed.
pub async fn run(
    nodes: usize,
    clients: usize,
    quiet: Duration,
    h: Rc<RefCell<History>>,
) -> turmoil::Result {
    // An operation sent just before the faults ended may still be in flight.
    while h.borrow().clients_done < clients {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(quiet).await;
    if let Err(e) = wait_healed(nodes).await {
        h.borrow_mut().check_errors.push(e);
        return Ok(());
    }
    let ring = Client::connect_with(&SimNetwork, addr_of(1))
        .await?
        .ring()
        .await?;
    // Roots read one node after another can straddle a background round (a reap
    // that the per-round scan found only now, say): read them again, a bounded
    // number of times, until the replicas agree; a real divergence stays.
    for _ in 0..ROOT_READS {
        let mut roots = std::collections::BTreeMap::new();
        for i in 1..=nodes {
            let client = Client::connect_with(&SimNetwork, addr_of(i)).await?;
            roots.insert(i, client.partition_roots().await?);
        }
        let settled = ring
            .rebuild()
            .is_some_and(|r| super::check::diverged(&roots, &r, ring.ring_size, ring.n).is_empty());
        h.borrow_mut().roots = roots;
        if settled {
            break;
        }
        tokio::time::sleep(ROOT_RETRY).await;
    }
    h.borrow_mut().ring = Some(ring);
    for i in 1..=nodes {
        let client = Client::connect_with(&SimNetwork, addr_of(i)).await?;
        let once: Vec<String> = h.borrow().once_keys.iter().cloned().collect();
        for key in (0..REGISTER_KEYS).map(|k| format!("r{k}")).chain(once) {
            match client.get_local(key.as_bytes()).await {
                Ok(got) => {
                    let mut hb = h.borrow_mut();
                    hb.final_clocks
                        .entry(i)
                        .or_default()
                        .insert(key.clone(), got.context.clock().ok());
                    let held = hb
                        .final_registers
                        .entry(i)
                        .or_default()
                        .entry(key)
                        .or_default();
                    held.extend(
                        got.siblings
                            .iter()
                            .map(|v| String::from_utf8_lossy(v).into_owned()),
                    );
                }
                Err(e) => h.borrow_mut().check_errors.push(format!("n{i} {key}: {e}")),
            }
        }
    }
    // After every register was read from every node: reads find damage.
    for i in 1..=nodes {
        let status = Client::connect_with(&SimNetwork, addr_of(i))
            .await?
            .status()
            .await?;
        h.borrow_mut().damaged_values_dropped += status.storage.damaged_values_dropped;
    }
    let mut client = Client::connect_with(&SimNetwork, addr_of(1)).await?;
    client.set_options(RequestOptions {
        r: Some(3.min(nodes as u8)),
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
