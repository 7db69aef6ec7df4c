//! `ringkv bench` as a user runs it: YCSB workloads against real `ringkv serve`
//! processes, its JSON and SVG, its refusals, and a fault window on a cluster the
//! bench starts itself. Figures are checked for consistency, never for speed.

mod common;

use std::path::Path;

use common::{Server, code, run_cli, stderr, stdout};
use serde_json::Value;

fn bench(server: &Server, args: &[&str]) -> std::process::Output {
    let mut full = vec!["bench"];
    full.extend_from_slice(args);
    full.extend(["--connect", &server.addr]);
    run_cli(&full, None)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("json file written");
    serde_json::from_str(&text).expect("valid json")
}

/// Latency figures of one operation kind (or phase) are ordered and non-zero.
fn assert_latencies(v: &Value, what: &str) {
    let get = |k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("{what}: {k} missing in {v}"))
    };
    let (p50, p95, p99, p999, max) = (
        get("p50_us"),
        get("p95_us"),
        get("p99_us"),
        get("p999_us"),
        get("max_us"),
    );
    assert!(p50 > 0, "{what}: p50 is 0");
    assert!(
        p50 <= p95 && p95 <= p99 && p99 <= p999 && p999 <= max,
        "{what}: {p50} {p95} {p99} {p999} {max}"
    );
}

#[test]
fn every_workload_runs_against_a_real_node_and_reports_what_it_did() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]);
    let json = dir.path().join("a.json");
    let svg = dir.path().join("a.svg");
    let out = bench(
        &server,
        &[
            "--workload",
            "a",
            "--records",
            "300",
            "--operations",
            "3000",
            "--concurrency",
            "16",
            "--value-size",
            "200",
            "--json",
            json.to_str().expect("path"),
            "--plot",
            svg.to_str().expect("path"),
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("workload a"), "{text}");
    assert!(text.contains("update"), "{text}");

    let r = read_json(&json);
    // The configuration is in the report, every knob.
    assert_eq!(r["config"]["workload"], "A");
    assert_eq!(r["config"]["distribution"], "zipfian");
    assert_eq!(r["config"]["records"], 300);
    assert_eq!(r["config"]["concurrency"], 16);
    assert_eq!(r["config"]["value_size"], 200);
    assert!(r["config"]["target_ops_per_sec"].is_null(), "closed loop");
    // The load wrote every record once.
    assert_eq!(r["load"]["ops"]["insert"]["operations"], 300);
    assert_eq!(r["load"]["errors"], 0);
    // The run did exactly the operations asked for, about half of each kind.
    let run = &r["run"];
    assert_eq!(run["operations"], 3000);
    assert_eq!(run["errors"], 0);
    let reads = run["ops"]["read"]["operations"].as_u64().expect("reads");
    let updates = run["ops"]["update"]["operations"]
        .as_u64()
        .expect("updates");
    assert_eq!(reads + updates, 3000);
    assert!((1200..1800).contains(&reads), "{reads} reads");
    assert_eq!(
        run["ops"]["read"]["not_found"], 0,
        "every record was loaded"
    );
    // Updates carry contexts: a hot key does not pile up siblings.
    let siblings = run["ops"]["read"]["max_siblings"]
        .as_u64()
        .expect("siblings");
    assert!(siblings <= 16, "{siblings} siblings");
    assert!(r["throughput_ops_per_sec"].as_f64().expect("throughput") > 0.0);
    assert_eq!(r["throughput_ops_per_sec"], run["throughput_ops_per_sec"]);
    assert_latencies(run, "run");
    assert_latencies(&run["ops"]["update"], "update");
    assert_eq!(
        r["environment"]["server_node_id"]
            .as_str()
            .map(str::is_empty),
        Some(false)
    );
    let timeline = r["timeline"].as_array().expect("timeline");
    assert!(!timeline.is_empty());
    let counted: u64 = timeline
        .iter()
        .map(|p| p["operations"].as_u64().expect("ops"))
        .sum();
    assert_eq!(counted, 3000, "every operation lands in one bucket");

    let picture = std::fs::read_to_string(&svg).expect("svg written");
    assert!(picture.starts_with("<svg"), "{picture}");
    assert!(picture.trim_end().ends_with("</svg>"));
    assert!(picture.contains("<polyline"));
    assert!(picture.contains("workload a"));

    // The records are really there, at the value size asked for.
    let got = server.cli(&["get", "user000000000007", "--base64"]);
    assert_eq!(code(&got), 0, "{}", stderr(&got));

    // The other workloads, over the loaded records.
    for (workload, kinds) in [
        ("b", &["read", "update"][..]),
        ("c", &["read"][..]),
        ("d", &["insert", "read"][..]),
        ("f", &["read", "read_modify_write"][..]),
    ] {
        let json = dir.path().join(format!("{workload}.json"));
        let out = bench(
            &server,
            &[
                "--workload",
                workload,
                "--records",
                "300",
                "--skip-load",
                "--operations",
                "2000",
                "--concurrency",
                "8",
                "--quiet",
                "--json",
                json.to_str().expect("path"),
            ],
        );
        assert_eq!(code(&out), 0, "workload {workload}: {}", stderr(&out));
        let r = read_json(&json);
        assert!(r["load"].is_null(), "--skip-load");
        let ops = r["run"]["ops"].as_object().expect("ops");
        let names: Vec<&str> = ops.keys().map(String::as_str).collect();
        assert_eq!(names, kinds, "workload {workload}");
        assert_eq!(r["run"]["operations"], 2000, "workload {workload}");
        for kind in kinds {
            assert_eq!(r["run"]["ops"][kind]["not_found"], 0, "{workload}/{kind}");
        }
    }
}

#[test]
fn the_open_loop_keeps_to_its_schedule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]);
    let json = dir.path().join("open.json");
    let out = bench(
        &server,
        &[
            "--workload",
            "b",
            "--records",
            "100",
            "--target",
            "400",
            "--duration",
            "3s",
            "--warmup",
            "1s",
            "--concurrency",
            "8",
            "--json",
            json.to_str().expect("path"),
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let r = read_json(&json);
    assert_eq!(r["config"]["target_ops_per_sec"], 400.0);
    assert_eq!(r["config"]["duration"], 3.0);
    assert_eq!(r["config"]["warmup"], 1.0);
    assert!(stdout(&out).contains("open loop at 400 ops/s"));
    // The schedule issues 400 operations per second of the measured 3 s, whatever
    // the machine's speed (this node keeps up with 400 easily): the count is the
    // schedule's, not a timing.
    let run = &r["run"];
    let done = run["operations"].as_u64().expect("ops") + run["errors"].as_u64().expect("errors");
    assert!(
        (1150..=1201).contains(&done),
        "{done} operations in 3 s at 400/s"
    );
    // The warm-up is in the timeline, marked, and not in the totals.
    let timeline = r["timeline"].as_array().expect("timeline");
    assert_eq!(timeline[0]["warmup"], true);
    assert!(timeline.iter().any(|p| p["warmup"] == false));
    let all: u64 = timeline
        .iter()
        .map(|p| p["operations"].as_u64().expect("ops"))
        .sum();
    assert!(
        all > done,
        "the timeline also holds the warm-up's operations"
    );
}

#[test]
fn nonsense_is_refused_with_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]);
    let cases: &[(&[&str], &str)] = &[
        (&["--records", "0"], "--records"),
        (&["--workload", "z"], "unknown workload"),
        (&["--workload", "e"], "hash partitioned"),
        (&["--target", "-5"], "--target"),
        (&["--target", "0"], "--target"),
        (&["--operations", "0"], "--operations"),
        (&["--concurrency", "0"], "--concurrency"),
        (&["--duration", "0s"], "--duration"),
        (&["--duration", "ten"], "duration"),
        (&["--distribution", "pareto"], "unknown distribution"),
        (&["--value-size", "99999999"], "--value-size"),
        // The node refuses R above N: the bench stops at once, not after every
        // operation failed.
        (
            &["--r", "9", "--records", "10", "--operations", "10"],
            "refused",
        ),
        // A fault window needs a cluster the bench started.
        (&["--kill-node", "node-2", "--at", "1s"], "--nodes"),
    ];
    for (args, needle) in cases {
        let out = bench(&server, args);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(err.lines().count() <= 6, "{args:?}: short message: {err}");
    }
    // Nothing was written by any refused run.
    let status = server.cli(&["get", "user000000000000"]);
    assert_eq!(code(&status), 1, "{}", stdout(&status));
}

#[test]
fn a_fault_window_kills_and_restarts_a_node_of_a_cluster_the_bench_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::free_run(3);
    let json = dir.path().join("fault.json");
    let svg = dir.path().join("fault.svg");
    let data = dir.path().join("cluster");
    let out = run_cli(
        &[
            "bench",
            "--nodes",
            "3",
            "--base-port",
            &base.to_string(),
            "--data-dir",
            data.to_str().expect("path"),
            "--workload",
            "a",
            "--records",
            "200",
            "--duration",
            "9s",
            "--concurrency",
            "8",
            "--timeout-ms",
            "2000",
            "--kill-node",
            "node-2",
            "--at",
            "2s",
            "--restart-at",
            "5s",
            "--json",
            json.to_str().expect("path"),
            "--plot",
            svg.to_str().expect("path"),
        ],
        None,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let r = read_json(&json);
    assert_eq!(r["environment"]["cluster_members"], 3);
    assert_eq!(r["config"]["local_nodes"], 3);
    let fault = &r["fault"];
    assert_eq!(fault["node"], "node-2");
    assert_eq!(
        fault["problems"].as_array().map(Vec::len),
        Some(0),
        "{fault}"
    );
    let killed = fault["killed_at_s"].as_f64().expect("killed");
    let back = fault["restarted_at_s"].as_f64().expect("restarted");
    assert!(killed >= 2.0 && back >= 5.0 && back > killed, "{fault}");
    // N=3, R=2, W=2: with one node down the other two still serve.
    assert!(
        fault["throughput_in_window_ops_per_sec"]
            .as_f64()
            .expect("window")
            > 0.0,
        "{fault}"
    );
    let run = &r["run"];
    let ok = run["operations"].as_u64().expect("ops");
    let failed = run["errors"].as_u64().expect("errors");
    assert!(ok > 0 && failed * 10 < ok, "{ok} ok, {failed} failed");
    let picture = std::fs::read_to_string(&svg).expect("svg");
    assert!(
        picture.contains("node-2 down"),
        "the window is shaded and named"
    );
    // The node really went down and came back: its log shows two starts.
    let log = std::fs::read_to_string(data.join("node-2.log")).expect("log");
    assert_eq!(log.matches("ringkv listening").count(), 2, "{log}");
    // And the bench stopped its cluster when it finished.
    for i in 0..3 {
        let addr = format!("127.0.0.1:{}", base + i);
        assert!(
            std::net::TcpStream::connect(&addr).is_err(),
            "node on {addr} still running"
        );
    }
}
