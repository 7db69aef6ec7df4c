//! `GET /`: one self-contained HTML page (inline CSS and SVG, nothing loaded from
//! elsewhere) with what an operator looks at first: members and liveness, the
//! ring's ownership as a picture, hints, repair and handoff, request rates. It
//! reloads itself every 5 seconds.

use std::fmt::Write as _;
use std::sync::Mutex;

use tokio::time::Instant;

use crate::node::Node;
use crate::node::requests::{Op, Outcome};

/// The last reading of the request counters, for a rate between two page loads.
pub type LastReading = Mutex<Option<(Instant, u64)>>;

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A colour per member, stable for its position in the member list.
fn colour(i: usize) -> String {
    let hue = (i * 137) % 360;
    format!("hsl({hue},65%,50%)")
}

/// The ring as a circle of `owners.len()` arcs, each coloured by its owner.
fn ring_svg(owners: &[String], members: &[String]) -> String {
    let mut svg = String::from(
        r#"<svg viewBox="-110 -110 220 220" width="260" height="260" role="img" aria-label="ring ownership">"#,
    );
    let n = owners.len().max(1) as f64;
    for (p, owner) in owners.iter().enumerate() {
        let i = members.iter().position(|m| m == owner).unwrap_or(0);
        let a0 = (p as f64) / n * std::f64::consts::TAU - std::f64::consts::FRAC_PI_2;
        let a1 = ((p + 1) as f64) / n * std::f64::consts::TAU - std::f64::consts::FRAC_PI_2;
        let (r0, r1) = (70.0, 100.0);
        let pt = |r: f64, a: f64| (r * a.cos(), r * a.sin());
        let (x0, y0) = pt(r1, a0);
        let (x1, y1) = pt(r1, a1);
        let (x2, y2) = pt(r0, a1);
        let (x3, y3) = pt(r0, a0);
        let _ = write!(
            svg,
            r#"<path d="M{x0:.2},{y0:.2} A{r1},{r1} 0 0 1 {x1:.2},{y1:.2} L{x2:.2},{y2:.2} A{r0},{r0} 0 0 0 {x3:.2},{y3:.2} Z" fill="{}"><title>partition {p}: {}</title></path>"#,
            colour(i),
            esc(owner)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="0" y="5" text-anchor="middle" font-size="14">{} partitions</text></svg>"#,
        owners.len()
    );
    svg
}

/// A horizontal bar: `done` of `total`.
fn bar(done: u64, total: u64) -> String {
    let pct = if total == 0 {
        100.0
    } else {
        (done as f64 / total as f64 * 100.0).min(100.0)
    };
    format!(
        r##"<svg width="200" height="12" role="img" aria-label="{pct:.0}%"><rect width="200" height="12" fill="#ddd"/><rect width="{:.1}" height="12" fill="#2a8"/></svg> {pct:.0}%"##,
        pct * 2.0
    )
}

/// The page.
pub fn render(node: &Node, last: &LastReading) -> String {
    let status = node.status();
    let ring = node.ring();
    let health = node.cluster_health();
    let ready = node.readiness();
    let c = &status.cluster;
    let r = &status.repair;
    let members: Vec<String> = ring.members.iter().map(|m| m.node_id.clone()).collect();

    let total: u64 = Op::ALL
        .iter()
        .flat_map(|op| {
            Outcome::ALL
                .iter()
                .map(move |o| node.requests.histogram(*op, *o).snapshot().count)
        })
        .sum();
    let now = Instant::now();
    let rate = {
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        let rate = match *last {
            Some((at, n)) if now.duration_since(at).as_secs_f64() > 0.5 => {
                Some((total.saturating_sub(n)) as f64 / now.duration_since(at).as_secs_f64())
            }
            _ => None,
        };
        *last = Some((now, total));
        rate.unwrap_or(total as f64 / (status.uptime_ms.max(1) as f64 / 1000.0))
    };

    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5"><title>ringkv {id}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}}table{{border-collapse:collapse}}td,th{{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:left}}.ok{{color:#185}}.bad{{color:#b22}}.grid{{display:flex;gap:2.5em;flex-wrap:wrap}}h2{{font-size:1.1em;margin-top:1.2em}}.sw{{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:.4em}}</style></head><body>
<h1>ringkv <small>{id} · {ver} · {state}</small></h1>"#,
        id = esc(&status.node_id),
        ver = esc(&status.version),
        state = if ready.ready() {
            r#"<span class="ok">ready</span>"#
        } else if ready.not_draining {
            r#"<span class="bad">not ready</span>"#
        } else {
            r#"<span class="bad">draining</span>"#
        },
    );
    let _ = write!(
        h,
        r#"<div class="grid"><div><h2>Members ({alive} of {all} alive)</h2><table><tr><th>node</th><th>address</th><th>zone</th><th>status</th><th>liveness</th><th>partitions</th></tr>"#,
        alive = health.members_alive,
        all = health.members,
    );
    for (i, m) in ring.members.iter().enumerate() {
        let owned = ring.owners.iter().filter(|o| **o == m.node_id).count();
        let class = if m.liveness == "alive" { "ok" } else { "bad" };
        let _ = write!(
            h,
            r#"<tr><td><span class="sw" style="background:{}"></span>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="{class}">{}</td><td>{owned}</td></tr>"#,
            colour(i),
            esc(&m.node_id),
            esc(&m.address),
            esc(&m.zone),
            esc(&m.status),
            esc(&m.liveness),
        );
    }
    let _ = write!(
        h,
        r#"</table><h2>Partitions</h2><table>
<tr><td>all replicas up</td><td>{}</td></tr><tr><td>with a write quorum (W={})</td><td>{}</td></tr><tr><td>with a read quorum (R={})</td><td>{}</td></tr>
<tr><td>ring epoch</td><td><code>{}</code> {}</td></tr></table></div>"#,
        bar(health.partitions_all_up, health.partitions),
        health.w,
        bar(health.partitions_write_quorum, health.partitions),
        health.r,
        bar(health.partitions_read_quorum, health.partitions),
        esc(&health.ring_epoch),
        if health.ring_agreement {
            r#"<span class="ok">agreed</span>"#
        } else {
            r#"<span class="bad">not confirmed by every peer yet</span>"#
        },
    );
    let _ = write!(
        h,
        r#"<div><h2>Ring ownership</h2>{}</div>"#,
        ring_svg(&ring.owners, &members)
    );
    let _ = write!(
        h,
        r#"<div><h2>Requests</h2><table><tr><td>rate</td><td>{rate:.1}/s</td></tr><tr><td>total</td><td>{total}</td></tr><tr><td>in flight</td><td>{}</td></tr><tr><td>quorum failures</td><td>{}</td></tr><tr><td>forwarded writes</td><td>{}</td></tr><tr><td>read repairs</td><td>{}</td></tr></table>
<h2>Hints</h2><table><tr><td>pending</td><td>{}</td></tr><tr><td>bytes</td><td>{}</td></tr><tr><td>oldest</td><td>{} s</td></tr><tr><td>stored / delivered</td><td>{} / {}</td></tr></table>
<h2>Repair and handoff</h2><table><tr><td>last anti-entropy round</td><td>{}</td></tr><tr><td>oldest unverified partition</td><td>{:.0} s</td></tr><tr><td>exchanges / keys repaired</td><td>{} / {}</td></tr><tr><td>handoffs in flight / done</td><td>{} / {}</td></tr><tr><td>tombstones pending / reaped</td><td>{} / {}</td></tr></table></div></div>"#,
        node.lifecycle.in_flight(),
        c.quorum_failures,
        c.forwarded,
        c.read_repairs,
        c.hints_pending,
        c.hints_bytes,
        health.hints_oldest_seconds,
        c.hints_stored,
        c.hints_delivered,
        r.last_exchange_ms_ago
            .map(|ms| format!("{:.1} s ago", ms as f64 / 1000.0))
            .unwrap_or_else(|| "not yet".into()),
        r.oldest_unverified_ms as f64 / 1000.0,
        r.exchanges,
        r.keys_repaired,
        r.handoffs_in_flight,
        r.handoffs_done,
        r.tombstones_pending,
        r.tombstones_reaped,
    );
    let _ = write!(
        h,
        r#"<p><small>data {} · {} keys · {} MiB on disk · uptime {:.0} s · <a href="/metrics">metrics</a> · <a href="/readyz?verbose">readyz</a> · <a href="/v1/cluster/health">health</a></small></p></body></html>"#,
        esc(&status.data_dir),
        status.keys_approx,
        status.storage.disk_bytes >> 20,
        status.uptime_ms as f64 / 1000.0
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_and_the_ring_has_an_arc_per_partition() {
        assert_eq!(esc("<a href='x'>&"), "&lt;a href=&#39;x&#39;&gt;&amp;");
        let owners: Vec<String> = (0..8).map(|p| format!("n{}", p % 2)).collect();
        let svg = ring_svg(&owners, &["n0".into(), "n1".into()]);
        assert_eq!(svg.matches("<path").count(), 8);
        assert!(svg.contains("8 partitions"));
        assert!(bar(1, 4).contains("25%"));
        assert!(bar(0, 0).contains("100%"));
    }
}
