//! An SVG picture of a run: throughput (top) and p99 latency (bottom, log scale) in
//! one-second buckets, with the warm-up and any fault window shaded. Plain SVG
//! written by hand: it opens in any browser and needs no plotting library.

use std::fmt::Write;

use super::report::{BenchReport, TimelinePoint};

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 560.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP_PANEL: (f64, f64) = (80.0, 290.0);
const BOTTOM_PANEL: (f64, f64) = (320.0, 510.0);

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

struct Axes {
    t_max: f64,
    x0: f64,
    x1: f64,
}

impl Axes {
    fn x(&self, t: f64) -> f64 {
        self.x0 + (t / self.t_max).clamp(0.0, 1.0) * (self.x1 - self.x0)
    }
}

fn polyline(out: &mut String, points: &[(f64, f64)], colour: &str) {
    if points.is_empty() {
        return;
    }
    let coords: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect();
    let _ = writeln!(
        out,
        r#"<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{}"/>"#,
        coords.join(" ")
    );
}

fn shade(out: &mut String, axes: &Axes, from: f64, to: f64, colour: &str, label: &str) {
    let (x0, x1) = (axes.x(from), axes.x(to));
    if x1 <= x0 {
        return;
    }
    for (top, bottom) in [TOP_PANEL, BOTTOM_PANEL] {
        let _ = writeln!(
            out,
            r#"<rect x="{x0:.1}" y="{top}" width="{:.1}" height="{}" fill="{colour}" fill-opacity="0.25"/>"#,
            x1 - x0,
            bottom - top
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="{:.1}" y="{}" font-size="12" fill="#444">{}</text>"##,
        x0 + 4.0,
        TOP_PANEL.0 + 14.0,
        escape(label)
    );
}

/// The vertical title of a panel's axis.
fn axis_title(out: &mut String, (top, bottom): (f64, f64), text: &str) {
    let mid = (top + bottom) / 2.0;
    let _ = writeln!(
        out,
        r#"<text x="18" y="{mid:.1}" font-size="12" transform="rotate(-90 18 {mid:.1})" text-anchor="middle">{}</text>"#,
        escape(text)
    );
}

/// Latency axis: log10 of milliseconds between `lo` and `hi` (powers of ten).
fn latency_y(ms: f64, lo: f64, hi: f64) -> f64 {
    let (top, bottom) = BOTTOM_PANEL;
    let v = ms.max(lo).min(hi);
    let f = (v.log10() - lo.log10()) / (hi.log10() - lo.log10());
    bottom - f * (bottom - top)
}

/// The SVG text of `report`'s timeline.
pub fn svg(report: &BenchReport) -> String {
    let points: &[TimelinePoint] = &report.timeline;
    let t_max = points.last().map_or(1.0, |p| p.t_s).max(1.0);
    let axes = Axes {
        t_max,
        x0: LEFT,
        x1: WIDTH - RIGHT,
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let c = &report.config;
    let e = &report.environment;
    let lines = [
        (
            24,
            15,
            "bold",
            format!("ringkv bench: {}", c.workload.describe()),
        ),
        (42, 12, "normal", c.details()),
        (
            60,
            12,
            "normal",
            format!(
                "run: {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms over {:.0} s; {} member{}, ringkv {}",
                report.run.throughput_ops_per_sec,
                report.run.latency.p50_us as f64 / 1000.0,
                report.run.latency.p99_us as f64 / 1000.0,
                report.run.seconds,
                e.cluster_members,
                if e.cluster_members == 1 { "" } else { "s" },
                e.ringkv_version
            ),
        ),
    ];
    for (y, size, weight, text) in lines {
        let _ = writeln!(
            out,
            r##"<text x="{LEFT}" y="{y}" font-size="{size}" font-weight="{weight}" fill="#222">{}</text>"##,
            escape(&text)
        );
    }

    // Shaded windows first, so the lines draw over them.
    let warmup_end = report.config.warmup.as_secs_f64();
    if warmup_end > 0.0 {
        shade(&mut out, &axes, 0.0, warmup_end, "#999999", "warm-up");
    }
    if let Some(f) = &report.fault
        && let Some(killed) = f.killed_at_s
    {
        let back = f.restarted_at_s.unwrap_or(t_max);
        let label = match f.restarted_at_s {
            Some(_) => format!("{} down", f.node),
            None => format!("{} down (not restarted)", f.node),
        };
        shade(&mut out, &axes, killed, back, "#e4572e", &label);
    }

    // Throughput panel.
    let peak = points
        .iter()
        .map(|p| p.throughput_ops_per_sec)
        .fold(0.0, f64::max);
    let y_max = nice_ceiling(peak * 1.05);
    let (top, bottom) = TOP_PANEL;
    let ty = |v: f64| bottom - (v / y_max).clamp(0.0, 1.0) * (bottom - top);
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let y = ty(v);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{:.0}</text>"##,
            axes.x1,
            LEFT - 6.0,
            y + 4.0,
            v
        );
    }
    axis_title(&mut out, TOP_PANEL, "ops/s");
    let tput: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (axes.x(p.t_s), ty(p.throughput_ops_per_sec)))
        .collect();
    polyline(&mut out, &tput, "#1f77b4");

    // Latency panel (log scale; buckets with no completed operation are skipped).
    let p99s: Vec<f64> = points
        .iter()
        .filter(|p| p.operations > 0)
        .map(|p| p.p99_us as f64 / 1000.0)
        .collect();
    let lo = 10f64.powf(
        p99s.iter()
            .copied()
            .fold(f64::MAX, f64::min)
            .max(0.01)
            .log10()
            .floor(),
    );
    let hi = 10f64.powf(
        p99s.iter()
            .copied()
            .fold(0.0, f64::max)
            .max(lo * 10.0)
            .log10()
            .ceil(),
    );
    let lbottom = BOTTOM_PANEL.1;
    let mut tick = lo;
    while tick <= hi * 1.0001 {
        let y = latency_y(tick, lo, hi);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            axes.x1,
            LEFT - 6.0,
            y + 4.0,
            if tick < 1.0 {
                format!("{tick}")
            } else {
                format!("{tick:.0}")
            }
        );
        tick *= 10.0;
    }
    axis_title(&mut out, BOTTOM_PANEL, "p99 latency, ms (log)");
    let lat: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| p.operations > 0)
        .map(|p| (axes.x(p.t_s), latency_y(p.p99_us as f64 / 1000.0, lo, hi)))
        .collect();
    polyline(&mut out, &lat, "#d62728");
    // Buckets with errors: a mark on the time axis of the latency panel.
    for p in points.iter().filter(|p| p.errors > 0) {
        let _ = writeln!(
            out,
            r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="#e4572e"><title>{} errors</title></circle>"##,
            axes.x(p.t_s),
            lbottom - 4.0,
            p.errors
        );
    }

    // Time axis under both panels.
    let step = nice_ceiling(t_max / 10.0);
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        let x = axes.x(t);
        for (_, b) in [TOP_PANEL, BOTTOM_PANEL] {
            let _ = writeln!(
                out,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{b}" y2="{:.1}" stroke="#888"/>"##,
                b + 4.0
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{t:.0}</text>"#,
            lbottom + 18.0
        );
        t += step;
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">seconds into the run phase (1 s buckets)</text>"#,
        (axes.x0 + axes.x1) / 2.0,
        lbottom + 38.0
    );
    for (top, bottom) in [TOP_PANEL, BOTTOM_PANEL] {
        let _ = writeln!(
            out,
            r##"<rect x="{LEFT}" y="{top}" width="{:.1}" height="{}" fill="none" stroke="#888"/>"##,
            axes.x1 - LEFT,
            bottom - top
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(12_000.0), 20_000.0);
        assert_eq!(nice_ceiling(100.0), 100.0);
        assert_eq!(nice_ceiling(f64::NAN), 1.0);
    }

    #[test]
    fn latency_axis_is_logarithmic() {
        let (top, bottom) = BOTTOM_PANEL;
        assert_eq!(latency_y(0.1, 0.1, 100.0), bottom);
        assert_eq!(latency_y(100.0, 0.1, 100.0), top);
        let mid = latency_y(10f64.powf(0.5), 1.0, 10.0);
        assert!((mid - (top + bottom) / 2.0).abs() < 1e-9);
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
    }
}
