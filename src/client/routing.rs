//! The client's routing table: the ring learned from a node, connections per node,
//! and which nodes failed recently.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{ClientError, Conn, Link, open_conn};
use crate::ring::{Ring, partition_of};
use crate::rpc::api::RingInfo;

/// How often the ring is fetched again: well inside a server's default shutdown
/// delay (5 s), so a node that announced its stop is routed around before it
/// starts refusing requests.
const REFRESH: Duration = Duration::from_secs(2);
/// How long a node that failed is tried last.
const PENALTY: Duration = Duration::from_secs(3);

struct Table {
    ring: Ring,
    n: usize,
    addresses: HashMap<String, SocketAddr>,
    down: Vec<String>,
}

pub(super) struct Routing {
    link: Link,
    table: Mutex<Option<Table>>,
    conns: Mutex<HashMap<SocketAddr, Conn>>,
    failed: Mutex<HashMap<SocketAddr, Instant>>,
    refreshed: Mutex<Instant>,
}

impl Routing {
    pub(super) fn new(link: Link) -> Routing {
        Routing {
            link,
            table: Mutex::new(None),
            conns: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            refreshed: Mutex::new(Instant::now()),
        }
    }

    pub(super) fn link(&self) -> Link {
        self.link.clone()
    }

    pub(super) fn add_conn(&self, c: Conn) {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(c.addr, c);
    }

    pub(super) fn drop_conn(&self, addr: SocketAddr) {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&addr);
        self.mark_failed(addr);
    }

    pub(super) fn mark_failed(&self, addr: SocketAddr) {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr, Instant::now());
    }

    pub(super) async fn conn(&self, addr: SocketAddr) -> Result<Conn, ClientError> {
        let cached = self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .cloned();
        if let Some(c) = cached
            && c.take()
        {
            return Ok(c);
        }
        let (c, _) = open_conn(&self.link, addr).await?;
        self.add_conn(c.clone());
        Ok(c)
    }

    pub(super) fn stale(&self) -> bool {
        self.refreshed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            > REFRESH
    }

    pub(super) fn refreshing(&self) {
        *self.refreshed.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Rebuilds the table from a node's ring; keeps the old one if the ring cannot
    /// be reproduced here (a different ringkv version would compute another).
    pub(super) fn learn(&self, info: &RingInfo) {
        self.refreshing();
        let Some(ring) = info.rebuild() else {
            return;
        };
        if crate::cluster::hex(&ring.epoch()[..8]) != info.epoch {
            tracing::debug!("ring computed locally differs from the server's; not routing");
            return;
        }
        let addresses = info
            .members
            .iter()
            .filter_map(|m| Some((m.node_id.clone(), m.address.parse().ok()?)))
            .collect();
        let down = info
            .members
            .iter()
            .filter(|m| m.liveness == "down")
            .map(|m| m.node_id.clone())
            .collect();
        *self.table.lock().unwrap_or_else(|p| p.into_inner()) = Some(Table {
            ring,
            n: usize::from(info.n),
            addresses,
            down,
        });
    }

    /// Every member address the table knows, healthy ones first.
    pub(super) fn known_addresses(&self) -> Vec<SocketAddr> {
        let guard = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let Some(t) = guard.as_ref() else {
            return Vec::new();
        };
        let mut out: Vec<(bool, SocketAddr)> = t
            .addresses
            .iter()
            .map(|(id, a)| (t.down.contains(id), *a))
            .collect();
        out.sort();
        out.into_iter().map(|(_, a)| a).collect()
    }

    /// Addresses of the primaries of `key`, healthy ones first.
    pub(super) fn route(&self, key: &[u8]) -> Vec<SocketAddr> {
        let guard = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let Some(t) = guard.as_ref() else {
            return Vec::new();
        };
        let (primaries, _) =
            crate::cluster::walk_of(&t.ring, partition_of(key, t.ring.ring_size()), t.n);
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(bool, SocketAddr)> = primaries
            .iter()
            .filter_map(|id| {
                let addr = *t.addresses.get(id)?;
                let bad = t.down.contains(id)
                    || failed.get(&addr).is_some_and(|at| at.elapsed() < PENALTY);
                Some((bad, addr))
            })
            .collect();
        // Stable: preference order within the healthy and the suspect groups.
        out.sort_by_key(|(bad, _)| *bad);
        out.into_iter().map(|(_, a)| a).collect()
    }
}
