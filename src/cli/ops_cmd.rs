//! Operator commands: probes, the gate between restarts, transfers, leaving with
//! progress, and what a membership change would move.

use std::time::{Duration, Instant};

use ringkv::Client;
use ringkv::rpc::api::ClusterHealth;
use serde_json::json;

use super::args::ClientOpts;
use super::client_cmd::{connect, out, print_json};
use super::{EXIT_OK, EXIT_UNAVAILABLE, Failure};

/// The HTTP address `health` probes: the flag, else the serve setting the
/// environment gives (a container's), an unspecified IP read as loopback.
fn http_target(flag: Option<String>) -> Result<std::net::SocketAddr, Failure> {
    let text = flag
        .or_else(|| std::env::var("RINGKV_HTTP_LISTEN").ok())
        .unwrap_or_else(|| "127.0.0.1:7480".into());
    let mut addr: std::net::SocketAddr = text
        .parse()
        .map_err(|_| Failure::usage(format!("--http {text:?} is not IP:PORT")))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv6() {
            std::net::Ipv6Addr::LOCALHOST.into()
        } else {
            std::net::Ipv4Addr::LOCALHOST.into()
        });
    }
    Ok(addr)
}

/// `GET path` on `addr` with hyper; the status and body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String), String> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `ringkv health [--ready]`.
pub async fn health(ready: bool, http: Option<String>, json_out: bool) -> Result<i32, Failure> {
    let addr = http_target(http)?;
    let path = if ready {
        "/readyz?verbose"
    } else {
        "/livez?verbose"
    };
    let probe = tokio::time::timeout(Duration::from_secs(5), http_get(addr, path))
        .await
        .unwrap_or_else(|_| Err(format!("{addr} did not answer within 5 s")));
    let (ok, code, body) = match probe {
        Ok((code, body)) => (code == 200, Some(code), body),
        Err(reason) => (false, None, reason),
    };
    if json_out {
        print_json(
            &json!({"ok": ok, "http_status": code, "checked": path, "detail": body.trim()}),
        )?;
    } else {
        for line in body.trim().lines() {
            out(line.as_bytes())?;
        }
    }
    Ok(if ok { EXIT_OK } else { EXIT_UNAVAILABLE })
}

/// One look at every member: what is not healthy yet, empty when all is.
async fn cluster_gaps(
    opts: &ClientOpts,
    max_hints: u64,
    members: Option<usize>,
) -> Result<Vec<String>, Failure> {
    let client = connect(opts).await?;
    let ring = client.ring().await?;
    let mut gaps = Vec::new();
    let active = ring.members.iter().filter(|m| m.status == "active").count();
    if let Some(want) = members
        && active < want
    {
        gaps.push(format!("{active} of {want} members active"));
    }
    let known = ring
        .members
        .iter()
        .filter(|m| m.status != "removed")
        .count() as u64;
    let mut epochs = std::collections::BTreeSet::new();
    let mut hints = 0;
    if ring.epoch.is_empty() {
        gaps.push("no ring yet".to_string());
    }
    for m in ring.members.iter().filter(|m| m.status != "removed") {
        if m.liveness != "alive" {
            gaps.push(format!("{} is {}", m.node_id, m.liveness));
            continue;
        }
        if m.status != "active" {
            gaps.push(format!("{} is {}", m.node_id, m.status));
        }
        let health: Result<(ClusterHealth, String), Failure> = async {
            let c = Client::connect_member(
                &m.address,
                &super::client_cmd::credentials(&opts.security)?,
            )
            .await?;
            let h = c.cluster_health().await?;
            let epoch = c.ring().await?.epoch;
            Ok((h, epoch))
        }
        .await;
        match health {
            Ok((h, epoch)) => {
                if h.partitions_all_up < h.partitions || h.partitions == 0 {
                    gaps.push(format!(
                        "{}: {} of {} partitions have all replicas up",
                        m.node_id, h.partitions_all_up, h.partitions
                    ));
                }
                if h.members != known {
                    gaps.push(format!(
                        "{} knows {} members, {} knows {known}",
                        m.node_id,
                        h.members,
                        client.server().node_id
                    ));
                }
                if h.members_alive < h.members {
                    gaps.push(format!(
                        "{} sees {} not alive",
                        m.node_id,
                        h.members_not_alive.join(",")
                    ));
                }
                hints += h.hints_pending;
                epochs.insert(epoch);
            }
            Err(f) => gaps.push(format!("{}: {}", m.node_id, f.message)),
        }
    }
    if hints > max_hints {
        gaps.push(format!(
            "{hints} hints pending (at most {max_hints} allowed)"
        ));
    }
    if epochs.len() > 1 {
        gaps.push(format!(
            "members disagree on the ring ({} epochs)",
            epochs.len()
        ));
    }
    Ok(gaps)
}

/// `ringkv wait-healthy`.
pub async fn wait_healthy(
    opts: &ClientOpts,
    timeout: Option<Duration>,
    max_hints: u64,
    members: Option<usize>,
) -> Result<i32, Failure> {
    let limit = timeout.unwrap_or(Duration::from_secs(300));
    let started = Instant::now();
    let mut last = Vec::new();
    loop {
        match cluster_gaps(opts, max_hints, members).await {
            Ok(gaps) if gaps.is_empty() => {
                let secs = started.elapsed().as_secs_f64();
                if opts.json {
                    print_json(&json!({"healthy": true, "waited_seconds": secs}))?;
                } else {
                    out(format!("healthy after {secs:.1} s").as_bytes())?;
                }
                return Ok(EXIT_OK);
            }
            Ok(gaps) => {
                if gaps != last && !opts.json {
                    eprintln!("waiting: {}", gaps.join("; "));
                }
                last = gaps;
            }
            Err(f) => {
                let gap = vec![f.message];
                if gap != last && !opts.json {
                    eprintln!("waiting: {}", gap[0]);
                }
                last = gap;
            }
        }
        if started.elapsed() >= limit {
            if opts.json {
                print_json(&json!({"healthy": false, "gaps": last}))?;
            }
            return Err(Failure {
                code: EXIT_UNAVAILABLE,
                message: format!(
                    "not healthy after {} s: {}",
                    limit.as_secs(),
                    last.join("; ")
                ),
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `ringkv transfers`.
pub async fn transfers(client: &Client, json_out: bool) -> Result<i32, Failure> {
    let t = client.transfers().await?;
    if json_out {
        let v = serde_json::to_value(&t).map_err(|e| Failure::other(e.to_string()))?;
        return print_json(&v).map(|()| EXIT_OK);
    }
    let keys: u64 = t.handoffs_out.iter().map(|h| h.keys_left).sum();
    let bytes: u64 = t.handoffs_out.iter().map(|h| h.bytes_left).sum();
    out(format!(
        "{}: {} partition(s) to hand off ({keys} keys, {bytes} bytes left); {} handed off so far",
        t.node_id,
        t.handoffs_out.len(),
        t.handoffs_done
    )
    .as_bytes())?;
    for h in &t.handoffs_out {
        out(format!(
            "  out  partition {:<5} -> {:<40} {} keys, {} bytes left",
            h.partition,
            h.to.join(","),
            h.keys_left,
            h.bytes_left
        )
        .as_bytes())?;
    }
    out(format!(
        "repair and handoff moved {} keys: {} bytes out, {} bytes in",
        t.keys_moved, t.bytes_sent, t.bytes_received
    )
    .as_bytes())?;
    out(format!(
        "hints: {} pending, {} bytes",
        t.hints_pending, t.hints_bytes
    )
    .as_bytes())?;
    for h in &t.hints {
        let target = h
            .target
            .as_deref()
            .unwrap_or("(kept from before the restart)");
        out(format!("  hints for {target:<40} {}", h.pending).as_bytes())?;
    }
    Ok(EXIT_OK)
}

/// `ringkv leave --wait`: progress until the node owns and holds nothing (it then
/// removes itself).
pub async fn wait_left(
    client: &Client,
    opts: &ClientOpts,
    timeout: Option<Duration>,
) -> Result<i32, Failure> {
    let limit = timeout.unwrap_or(Duration::from_secs(3600));
    let credentials = super::client_cmd::credentials(&opts.security)?;
    let started = Instant::now();
    let id = client.server().node_id.clone();
    let mut others: Vec<String> = Vec::new();
    loop {
        let done = match client.status().await {
            Ok(s) => {
                others = s
                    .cluster
                    .members
                    .iter()
                    .filter(|m| m.node_id != id && m.status != "removed")
                    .map(|m| m.address.clone())
                    .collect();
                let me = s.cluster.members.iter().find(|m| m.node_id == id);
                let gone = me.is_none_or(|m| m.status == "removed");
                let owns = s
                    .cluster
                    .members
                    .iter()
                    .any(|m| m.node_id == id && m.status == "active");
                let t = client.transfers().await.ok();
                let (parts, keys) = t
                    .as_ref()
                    .map(|t| {
                        (
                            t.handoffs_out.len(),
                            t.handoffs_out.iter().map(|h| h.keys_left).sum::<u64>(),
                        )
                    })
                    .unwrap_or((0, 0));
                if !opts.json {
                    eprintln!(
                        "{id}: {parts} partition(s), {keys} key(s) left to hand off, {} hint(s) pending, status {}",
                        s.cluster.hints_pending,
                        me.map(|m| m.status.as_str()).unwrap_or("gone")
                    );
                }
                gone || (!owns && parts == 0 && s.cluster.hints_pending == 0 && s.keys_approx == 0)
            }
            // Unreachable: it may have removed itself and stopped serving, or just
            // be slow. Only another member saying it is removed counts as done.
            Err(e) => {
                let removed = removed_elsewhere(&others, &id, &credentials).await;
                if !removed && !opts.json {
                    eprintln!("{id}: {e}; asking again");
                }
                removed
            }
        };
        if done {
            let secs = started.elapsed().as_secs_f64();
            if opts.json {
                print_json(&json!({"left": true, "node_id": id, "waited_seconds": secs}))?;
            } else {
                out(format!("{id} owns and holds nothing: it has left ({secs:.1} s)").as_bytes())?;
            }
            return Ok(EXIT_OK);
        }
        if started.elapsed() >= limit {
            return Err(Failure {
                code: EXIT_UNAVAILABLE,
                message: format!("{id} still holds data after {} s", limit.as_secs()),
            });
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Whether a member other than `id`, at one of `others`, sees `id` removed (or
/// no longer a member).
async fn removed_elsewhere(others: &[String], id: &str, credentials: &ringkv::Credentials) -> bool {
    for addr in others {
        let Ok(c) = Client::connect_member(addr, credentials).await else {
            continue;
        };
        if let Ok(ring) = c.ring().await {
            return ring
                .members
                .iter()
                .find(|m| m.node_id == id)
                .is_none_or(|m| m.status == "removed");
        }
    }
    false
}

/// `leave --dry-run` and `remove --dry-run`: the partitions whose primaries would
/// change without `node_id`.
pub async fn dry_run(
    client: &Client,
    node_id: &str,
    what: &str,
    json_out: bool,
) -> Result<i32, Failure> {
    let info = client.ring().await?;
    if !info.members.iter().any(|m| m.node_id == node_id) {
        return Err(Failure {
            code: super::EXIT_NOT_FOUND,
            message: format!("{node_id} is not a member"),
        });
    }
    let before = info
        .rebuild()
        .ok_or_else(|| Failure::other("the node has no ring yet"))?;
    let mut without = info.clone();
    without.members.retain(|m| m.node_id != node_id);
    let n = usize::from(info.n);
    let after = without.rebuild();
    let mut moves = Vec::new();
    for p in 0..before.ring_size() {
        let (old, _) = ringkv::cluster::walk_of(&before, p, n);
        let new = after
            .as_ref()
            .map(|r| ringkv::cluster::walk_of(r, p, n).0)
            .unwrap_or_default();
        if old != new {
            moves.push((p, old, new));
        }
    }
    if json_out {
        let v: Vec<_> = moves
            .iter()
            .map(|(p, old, new)| json!({"partition": p, "from": old, "to": new}))
            .collect();
        print_json(
            &json!({"dry_run": what, "node_id": node_id, "partitions_moving": moves.len(), "moves": v}),
        )?;
    } else {
        out(format!(
            "{what} {node_id} would move {} of {} partitions (nothing changed: dry run)",
            moves.len(),
            before.ring_size()
        )
        .as_bytes())?;
        for (p, old, new) in &moves {
            out(format!("  partition {p:<5} {} -> {}", old.join(","), new.join(",")).as_bytes())?;
        }
    }
    Ok(EXIT_OK)
}
