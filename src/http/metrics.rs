//! `/metrics`: every figure of the node in Prometheus' text format, read from the
//! node at scrape time (a collector, so nothing is counted twice). Names follow
//! Prometheus' conventions: `ringkv_` prefix, base units (seconds, bytes),
//! `_total` on counters, and labels from small fixed sets only, never a key or
//! a client address. Histograms have the same buckets on every node
//! ([`ringkv_storage::LATENCY_BUCKETS`], 100 µs to 10 s), so they add up across a
//! cluster (a summary's quantiles would not).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use ringkv_storage::{LATENCY_BUCKETS, LatencySnapshot};

use crate::node::SharedNode;
use crate::node::requests::{Op, Outcome, ReplicaOp};

/// A registry whose one collector reads `node`.
pub fn registry(node: SharedNode) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(NodeCollector { node }));
    r
}

/// The text exposition of `registry`.
///
/// # Errors
/// Only if formatting fails.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?;
    Ok(out)
}

struct NodeCollector {
    node: SharedNode,
}

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCollector")
            .field("node", &self.node.node_id())
            .finish()
    }
}

type Labels<'a> = Vec<(&'static str, String)>;

/// Writes metrics through one encoder; a metric without labels or with rows of
/// labels.
struct Out<'a> {
    enc: DescriptorEncoder<'a>,
}

impl Out<'_> {
    fn gauge(&mut self, name: &str, help: &str, v: f64) -> std::fmt::Result {
        let m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(v).encode(m)
    }

    fn counter(&mut self, name: &str, help: &str, v: u64) -> std::fmt::Result {
        let m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(v).encode(m)
    }

    fn gauges(&mut self, name: &str, help: &str, rows: &[(Labels<'_>, f64)]) -> std::fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, v) in rows {
            ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn counters(&mut self, name: &str, help: &str, rows: &[(Labels<'_>, u64)]) -> std::fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, v) in rows {
            ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn histograms(
        &mut self,
        name: &str,
        help: &str,
        rows: &[(Labels<'_>, LatencySnapshot)],
    ) -> std::fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, s) in rows {
            let buckets = per_bucket(s);
            if labels.is_empty() {
                m.encode_histogram::<NoLabelSet>(s.sum_seconds, s.count, &buckets, None)?;
            } else {
                m.encode_family(labels)?.encode_histogram::<NoLabelSet>(
                    s.sum_seconds,
                    s.count,
                    &buckets,
                    None,
                )?;
            }
        }
        Ok(())
    }
}

/// The encoder's buckets: per-bucket counts (it sums them, and writes `+Inf`
/// from the total count itself).
fn per_bucket(s: &LatencySnapshot) -> Vec<(f64, u64)> {
    let mut out = Vec::with_capacity(LATENCY_BUCKETS.len());
    let mut prior = 0;
    for (bound, cumulative) in LATENCY_BUCKETS.iter().zip(&s.cumulative) {
        out.push((*bound, cumulative - prior));
        prior = *cumulative;
    }
    out
}

/// Sums snapshots (the same buckets).
fn add(into: &mut LatencySnapshot, s: &LatencySnapshot) {
    if into.cumulative.is_empty() {
        into.cumulative = vec![0; s.cumulative.len()];
    }
    for (a, b) in into.cumulative.iter_mut().zip(&s.cumulative) {
        *a += b;
    }
    into.count += s.count;
    into.sum_seconds += s.sum_seconds;
}

fn secs_ms(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// TLS and tokens: certificate expiry, refusals, files that failed to reload.
fn security(o: &mut Out<'_>, node: &crate::node::Node) -> std::fmt::Result {
    use std::sync::atomic::Ordering;
    let cfg = node.config();
    o.counter(
        "ringkv_connections_evicted",
        "Connections closed before they said what they are, to make room for newer ones (a flood).",
        node.stats.connections_evicted.load(Ordering::Relaxed),
    )?;
    o.counter(
        "ringkv_tls_refused",
        "Connections refused by TLS (failed handshakes, plaintext to a TLS node).",
        node.stats.tls_refused.load(Ordering::Relaxed),
    )?;
    if let Some(tls) = &cfg.tls {
        o.gauges(
            "ringkv_tls_cert_expiry_timestamp_seconds",
            "When the certificate in force expires (Unix time).",
            &[
                (vec![("kind", "node".to_string())], tls.cert_expiry() as f64),
                (vec![("kind", "ca".to_string())], tls.ca_expiry() as f64),
            ],
        )?;
    }
    // Zero without an auth file: the series exist for alerts either way.
    let refused = cfg.auth.as_ref().map(|k| k.refusals()).unwrap_or_default();
    {
        let rows: Vec<_> = crate::auth::Refusal::ALL
            .iter()
            .zip(refused)
            .map(|(r, n)| (vec![("reason", r.label().to_string())], n))
            .collect();
        o.counters(
            "ringkv_client_auth_failures",
            "Client connections or requests refused for their token (missing, unknown, role too small).",
            &rows,
        )?;
    }
    if let Some(keyring) = &cfg.auth {
        o.gauge(
            "ringkv_auth_tokens",
            "Tokens the auth file in force holds.",
            keyring.len() as f64,
        )?;
    }
    let failures = [
        ("tls", cfg.tls.as_ref().map(|t| t.reload_failures())),
        ("auth", cfg.auth.as_ref().map(|k| k.reload_failures())),
    ];
    let rows: Vec<_> = failures
        .iter()
        .filter_map(|(file, n)| n.map(|n| (vec![("file", file.to_string())], n)))
        .collect();
    if !rows.is_empty() {
        o.counters(
            "ringkv_config_reload_failures",
            "Changed TLS or auth files that could not be used (the last good ones stay in force).",
            &rows,
        )?;
    }
    Ok(())
}

impl Collector for NodeCollector {
    fn encode(&self, enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let node = &self.node;
        let mut o = Out { enc };
        let status = node.status();
        let c = &status.cluster;
        let health = node.cluster_health();
        let ready = node.readiness();
        let stats = &status.stats;

        o.gauges(
            "ringkv_build_info",
            "The ringkv version this node runs (always 1).",
            &[(vec![("version", status.version.clone())], 1.0)],
        )?;
        o.gauges(
            "ringkv_node_info",
            "This node's id and failure zone (always 1).",
            &[(
                vec![
                    ("node_id", status.node_id.clone()),
                    ("zone", node.config().cluster.zone.clone()),
                ],
                1.0,
            )],
        )?;
        o.gauge(
            "ringkv_uptime_seconds",
            "Seconds since the node started.",
            secs_ms(status.uptime_ms),
        )?;
        o.gauge(
            "ringkv_ready",
            "1 when /readyz answers 200 (store open, active member with a ring, alive, not draining).",
            f64::from(u8::from(ready.ready())),
        )?;
        o.gauge(
            "ringkv_draining",
            "1 once a stop was asked for (SIGTERM or drain).",
            f64::from(u8::from(node.lifecycle.is_draining())),
        )?;
        o.gauge(
            "ringkv_requests_in_flight",
            "Client and forwarded requests running now.",
            node.lifecycle.in_flight() as f64,
        )?;

        // Requests this node coordinated.
        let mut counts: Vec<(Labels<'_>, u64)> = Vec::new();
        let mut by_op: Vec<(Labels<'_>, LatencySnapshot)> = Vec::new();
        let mut indeterminate = 0;
        for op in Op::ALL {
            let mut all = LatencySnapshot::default();
            for outcome in Outcome::ALL {
                let s = node.requests.histogram(op, outcome).snapshot();
                if outcome == Outcome::Indeterminate {
                    indeterminate += s.count;
                }
                counts.push((
                    vec![
                        ("op", op.label().to_string()),
                        ("result", outcome.label().to_string()),
                    ],
                    s.count,
                ));
                add(&mut all, &s);
            }
            by_op.push((vec![("op", op.label().to_string())], all));
        }
        o.counters(
            "ringkv_requests",
            "Client requests this node coordinated, by operation and result (ok, invalid, unavailable, indeterminate, error).",
            &counts,
        )?;
        o.histograms(
            "ringkv_request_duration_seconds",
            "Latency of the client requests this node coordinated, by operation.",
            &by_op,
        )?;
        o.histograms(
            "ringkv_replica_duration_seconds",
            "Latency of replica reads and writes this node served to coordinators.",
            &[
                (
                    vec![("op", "read".to_string())],
                    node.requests.replica_histogram(ReplicaOp::Read).snapshot(),
                ),
                (
                    vec![("op", "write".to_string())],
                    node.requests.replica_histogram(ReplicaOp::Write).snapshot(),
                ),
            ],
        )?;
        o.counter(
            "ringkv_quorum_failures",
            "Requests that failed for want of a quorum.",
            c.quorum_failures,
        )?;
        o.counter(
            "ringkv_indeterminate_writes",
            "Writes that failed their quorum but may have been applied somewhere.",
            indeterminate,
        )?;
        o.counter(
            "ringkv_forwarded_writes",
            "Writes forwarded to a primary of their key.",
            c.forwarded,
        )?;
        o.counter(
            "ringkv_read_repairs",
            "Replicas repaired after reads.",
            c.read_repairs,
        )?;
        o.counter(
            "ringkv_peer_redials",
            "Members dialled again at once when gossip saw them come back after failed dials.",
            c.peer_redials,
        )?;
        let b = node.coordinator().batch_stats();
        let by_kind = |v: &[std::sync::atomic::AtomicU64; 2]| {
            ["write", "read"]
                .iter()
                .zip(v)
                .map(|(k, n)| {
                    (
                        vec![("kind", (*k).to_string())],
                        n.load(std::sync::atomic::Ordering::Relaxed),
                    )
                })
                .collect::<Vec<_>>()
        };
        o.counters(
            "ringkv_peer_batches",
            "Requests to peers that carried several replica writes or reads.",
            &by_kind(&b.batches),
        )?;
        o.counters(
            "ringkv_peer_batched_items",
            "Replica writes and reads sent in those batches.",
            &by_kind(&b.batched_items),
        )?;
        o.counters(
            "ringkv_peer_single_items",
            "Replica writes and reads sent alone (nothing else waited for the peer).",
            &by_kind(&b.single),
        )?;

        o.gauge(
            "ringkv_earlier_rings",
            "Earlier rings whose owners reads still ask (until their moved partitions are handed off).",
            c.earlier_rings as f64,
        )?;

        // Hints.
        o.gauge(
            "ringkv_hints_pending",
            "Hints this node keeps for unreachable replicas.",
            c.hints_pending as f64,
        )?;
        o.gauge(
            "ringkv_hints_bytes",
            "Bytes of those hints.",
            c.hints_bytes as f64,
        )?;
        o.gauge(
            "ringkv_hints_oldest_age_seconds",
            "Seconds since the target waiting longest got its first hint that is still waiting (an upper bound on the oldest hint's age; it grows while a target never catches up).",
            health.hints_oldest_seconds as f64,
        )?;
        o.counter(
            "ringkv_hints_stored",
            "Hints stored since start.",
            c.hints_stored,
        )?;
        o.counter(
            "ringkv_hints_delivered",
            "Hints delivered since start.",
            c.hints_delivered,
        )?;

        // Anti-entropy, handoff, tombstones.
        let r = &status.repair;
        o.counter(
            "ringkv_antientropy_exchanges",
            "Anti-entropy exchanges run (partitions whose roots differed).",
            r.exchanges,
        )?;
        o.counter(
            "ringkv_antientropy_keys_repaired",
            "Keys whose state anti-entropy or handoff moved.",
            r.keys_repaired,
        )?;
        o.counters(
            "ringkv_antientropy_bytes",
            "State bytes anti-entropy and handoff moved, by direction.",
            &[
                (vec![("direction", "sent".to_string())], r.bytes_sent),
                (
                    vec![("direction", "received".to_string())],
                    r.bytes_received,
                ),
            ],
        )?;
        // Before the first round, the time since start: an alert on a stale
        // anti-entropy fires for a node that never completes one, too.
        o.gauge(
            "ringkv_antientropy_last_round_age_seconds",
            "Seconds since the last anti-entropy round completed (since start before the first).",
            secs_ms(r.last_exchange_ms_ago.unwrap_or(status.uptime_ms)),
        )?;
        o.gauge(
            "ringkv_antientropy_oldest_unverified_seconds",
            "Seconds since the partition of this node verified longest ago was last found equal on a peer.",
            secs_ms(r.oldest_unverified_ms),
        )?;
        o.gauge(
            "ringkv_handoffs_in_flight",
            "Partitions this node holds but no longer owns.",
            r.handoffs_in_flight as f64,
        )?;
        o.counter(
            "ringkv_handoffs_done",
            "Partitions handed off and dropped here.",
            r.handoffs_done,
        )?;
        o.counter(
            "ringkv_tombstones_reaped",
            "Tombstones reaped on this node.",
            r.tombstones_reaped,
        )?;
        o.gauge(
            "ringkv_tombstones_pending",
            "Tombstones waiting to be reaped.",
            r.tombstones_pending as f64,
        )?;

        // Gossip and peers.
        let g = node.cluster().gossip_stats();
        o.counter(
            "ringkv_gossip_datagrams_received",
            "Gossip datagrams received.",
            g.datagrams_in,
        )?;
        o.counter(
            "ringkv_gossip_datagrams_sent",
            "Gossip datagrams sent.",
            g.datagrams_out,
        )?;
        o.counters(
            "ringkv_gossip_datagrams_rejected",
            "Gossip datagrams refused, by reason (auth: not sealed with this cluster's key; replay: sealed, but seen before).",
            &[
                (vec![("reason", "auth".to_string())], g.rejected_auth),
                (
                    vec![("reason", "oversized".to_string())],
                    g.rejected_oversized,
                ),
                (vec![("reason", "replay".to_string())], g.rejected_replay),
                (
                    vec![("reason", "malformed".to_string())],
                    g.rejected_malformed,
                ),
            ],
        )?;
        o.counter(
            "ringkv_peer_handshakes_refused",
            "Peer connections refused at the handshake (wrong secret, removed node).",
            c.peer_handshakes_refused,
        )?;
        o.counter(
            "ringkv_peer_requests_refused",
            "Peer requests refused (from removed nodes or operators' tools).",
            c.peer_requests_refused,
        )?;
        let mut members: std::collections::BTreeMap<(String, String), u64> = Default::default();
        for m in &c.members {
            *members
                .entry((m.status.clone(), m.liveness.clone()))
                .or_default() += 1;
        }
        let rows: Vec<(Labels<'_>, f64)> = members
            .into_iter()
            .map(|((s, l), n)| (vec![("status", s), ("liveness", l)], n as f64))
            .collect();
        o.gauges(
            "ringkv_members",
            "Members as this node sees them, by status and liveness.",
            &rows,
        )?;
        o.gauge(
            "ringkv_cluster_partitions",
            "Partitions on the ring.",
            health.partitions as f64,
        )?;
        o.gauge(
            "ringkv_cluster_partitions_all_up",
            "Partitions whose primaries are all alive.",
            health.partitions_all_up as f64,
        )?;
        o.gauge(
            "ringkv_cluster_partitions_write_quorum",
            "Partitions with at least W primaries alive.",
            health.partitions_write_quorum as f64,
        )?;
        o.gauge(
            "ringkv_cluster_partitions_read_quorum",
            "Partitions with at least R primaries alive.",
            health.partitions_read_quorum as f64,
        )?;
        o.gauge(
            "ringkv_ring_agreement",
            "1 when every alive peer answered the last root comparison with this node's ring epoch.",
            f64::from(u8::from(health.ring_agreement)),
        )?;

        // Storage.
        let s = &status.storage;
        let store = node.coordinator().replica().store();
        o.gauges(
            "ringkv_storage_backend",
            "1, labelled with the storage engine (log or fjall).",
            &[(vec![("backend", s.backend.clone())], 1.0)],
        )?;
        o.gauge(
            "ringkv_storage_disk_bytes",
            "Bytes in the storage engine's files.",
            s.disk_bytes as f64,
        )?;
        o.gauge(
            "ringkv_storage_live_bytes",
            "Bytes of the log still referred to (the rest a merge reclaims); fjall reports all its bytes.",
            s.live_bytes as f64,
        )?;
        o.gauge(
            "ringkv_storage_segments",
            "Segment files of the log; tables and journals of fjall.",
            s.segment_files as f64,
        )?;
        o.gauge(
            "ringkv_storage_keys",
            "Keys stored, approximately.",
            status.keys_approx as f64,
        )?;
        o.counter(
            "ringkv_storage_merges",
            "Log merges (fjall compactions) completed since start.",
            s.merges,
        )?;
        o.counter(
            "ringkv_storage_damaged_values",
            "Values found damaged (checksum failed) and dropped for repair.",
            s.damaged_values_dropped,
        )?;
        o.histograms(
            "ringkv_storage_fsync_duration_seconds",
            "Latency of the storage engine's fsyncs.",
            &[(Vec::new(), store.fsync_latency())],
        )?;
        o.gauge(
            "ringkv_storage_poisoned",
            "1 after an fsync failed: the store takes no writes until restarted.",
            f64::from(u8::from(store.is_poisoned())),
        )?;
        if let Some((avail, total)) = store.disk_space() {
            o.gauge(
                "ringkv_disk_available_bytes",
                "Bytes available on the data directory's file system.",
                avail as f64,
            )?;
            o.gauge(
                "ringkv_disk_total_bytes",
                "Size of the data directory's file system.",
                total as f64,
            )?;
        }

        // Connections.
        o.gauge(
            "ringkv_connections",
            "Client and peer connections open.",
            stats.connections_open as f64,
        )?;
        o.counter(
            "ringkv_connections_refused",
            "Connections refused at a limit.",
            stats.connections_refused,
        )?;
        o.counter(
            "ringkv_bad_frames",
            "Connections closed after a malformed or oversized frame.",
            stats.bad_frames,
        )?;
        security(&mut o, node)?;

        // The process.
        let p = super::process::read();
        if let Some(v) = p.cpu_seconds {
            let m = o.enc.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent in seconds.",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(v).encode(m)?;
        }
        if let Some(v) = p.resident_bytes {
            o.gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                v as f64,
            )?;
        }
        if let Some(v) = p.virtual_bytes {
            o.gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                v as f64,
            )?;
        }
        if let Some(v) = p.open_fds {
            o.gauge(
                "process_open_fds",
                "Number of open file descriptors.",
                v as f64,
            )?;
        }
        if let Some(v) = p.max_fds {
            o.gauge(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                v as f64,
            )?;
        }
        if let Some(v) = p.threads {
            o.gauge("process_threads", "Number of OS threads.", v as f64)?;
        }
        if let Some(v) = p.start_time_seconds {
            o.gauge(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds.",
                v,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_handed_over_per_bucket() {
        let s = LatencySnapshot {
            cumulative: {
                let mut c = vec![1; LATENCY_BUCKETS.len()];
                for v in c.iter_mut().skip(3) {
                    *v = 4;
                }
                c
            },
            count: 6,
            sum_seconds: 21.0,
        };
        let b = per_bucket(&s);
        assert_eq!(b.len(), LATENCY_BUCKETS.len());
        assert_eq!(b[0], (0.0001, 1));
        assert_eq!(b[3].1, 3);
        assert_eq!(
            b.iter().map(|(_, n)| n).sum::<u64>(),
            4,
            "two are past 10 s"
        );
    }
}
