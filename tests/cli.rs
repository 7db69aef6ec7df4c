//! The CLI contract, end to end against a real `ringkv serve`.

mod common;

use common::{Server, code, stderr, stdout};
use std::io::{Read, Write};
use std::time::Duration;

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

#[test]
fn siblings_contexts_and_deletes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path(), &[]);

    // Two blind puts: two siblings, one per line, nothing else.
    assert_eq!(code(&s.cli(&["put", "k", "one"])), 0);
    assert_eq!(code(&s.cli(&["put", "k", "two"])), 0);
    let got = s.cli(&["get", "k"]);
    assert_eq!(code(&got), 0);
    assert_eq!(stdout(&got), "one\ntwo\n");

    // A put with the context of that read leaves one value.
    let read = json(&s.cli(&["get", "k", "--json"]));
    assert_eq!(read["found"], true);
    assert_eq!(read["values"], serde_json::json!(["one", "two"]));
    let ctx = read["context"].as_str().expect("context").to_string();
    let put = s.cli(&["put", "k", "three", "--context", &ctx]);
    assert_eq!(code(&put), 0, "{}", stderr(&put));
    assert!(
        !stdout(&put).trim().is_empty(),
        "put prints the new context"
    );
    assert_eq!(stdout(&s.cli(&["get", "k"])), "three\n");
    let shown = stdout(&s.cli(&["get", "k", "--show-context"]));
    assert!(shown.starts_with("three\ncontext: "), "{shown}");

    // Binary values through a file and stdin, read back with --base64.
    let path = dir.path().join("value.bin");
    std::fs::write(&path, [0u8, 159, 146, 150]).expect("write");
    assert_eq!(
        code(&s.cli(&["put", "bin", "--value-file", path.to_str().expect("utf8")])),
        0
    );
    assert_eq!(stdout(&s.cli(&["get", "bin", "--base64"])), "AJ+Slg==\n");
    assert_eq!(
        code(&s.cli_stdin(&["put", "piped", "--value-file", "-"], b"from stdin")),
        0
    );
    assert_eq!(stdout(&s.cli(&["get", "piped"])), "from stdin\n");

    // Delete without a context removes what is visible; get says not found (exit 1).
    assert_eq!(code(&s.cli(&["delete", "k"])), 0);
    let gone = s.cli(&["get", "k"]);
    assert_eq!(code(&gone), 1);
    assert_eq!(stdout(&gone), "");
    let gone_json = json(&s.cli(&["get", "k", "--json"]));
    assert_eq!(gone_json["found"], false);
    // A stale context (from before the delete) written now is a sibling of the tombstone
    // only if it covers nothing newer: the old value does not come back.
    assert_eq!(code(&s.cli(&["put", "k", "again", "--context", &ctx])), 0);
    assert_eq!(stdout(&s.cli(&["get", "k"])), "again\n");
}

/// Review A3: contexts are signed for their key. A forged, altered, truncated,
/// unsigned or other key's context is refused with exit 2 and changes nothing; a
/// genuine one still works after the node restarts (a lone node keeps its key).
#[test]
fn forged_and_foreign_contexts_are_refused_and_change_nothing() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Server::start(dir.path(), &[]);
    assert_eq!(code(&s.cli(&["put", "k", "one"])), 0);
    assert_eq!(code(&s.cli(&["put", "k", "two"])), 0);
    assert_eq!(code(&s.cli(&["put", "other", "x"])), 0);
    let ctx = json(&s.cli(&["get", "k", "--json"]))["context"]
        .as_str()
        .expect("context")
        .to_string();
    let other = json(&s.cli(&["get", "other", "--json"]))["context"]
        .as_str()
        .expect("context")
        .to_string();
    let raw = b64.decode(&ctx).expect("base64");
    let mut flipped = raw.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x04;
    let truncated = raw[..raw.len() - 3].to_vec();
    // The unsigned format of earlier releases, claiming u64::MAX writes by an actor.
    let clock = ringkv::object::Context(raw.clone()).clock().expect("clock");
    let mut forged = clock.clone();
    let actor = *clock.dots.keys().next().expect("an actor");
    forged.dots.insert(actor, u64::MAX);
    let mut unsigned = vec![1u8];
    unsigned.extend(postcard::to_stdvec(&forged).expect("encode"));
    for (what, bad) in [
        ("flipped", b64.encode(&flipped)),
        ("truncated", b64.encode(&truncated)),
        ("unsigned", b64.encode(&unsigned)),
        ("other key's", other.clone()),
    ] {
        for cmd in [vec!["put", "k", "evil"], vec!["delete", "k"]] {
            let mut args = cmd.clone();
            args.extend(["--context", bad.as_str()]);
            let out = s.cli(&args);
            assert_eq!(code(&out), 2, "{what} context on {cmd:?}: {}", stderr(&out));
            assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
        }
    }
    assert_eq!(
        stdout(&s.cli(&["get", "k"])),
        "one\ntwo\n",
        "nothing changed"
    );
    // The genuine context survives a restart of the node and still resolves.
    assert_eq!(s.terminate(), Some(0));
    s.restart();
    let put = s.cli(&["put", "k", "three", "--context", &ctx]);
    assert_eq!(code(&put), 0, "{}", stderr(&put));
    assert_eq!(stdout(&s.cli(&["get", "k"])), "three\n");
}

/// Review C7: a replica's running total that would wrap is refused (exit 2), never
/// acknowledged and lost.
#[test]
fn a_counter_increment_that_would_wrap_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path(), &[]);
    let max = i64::MAX.to_string();
    assert_eq!(code(&s.cli(&["counter", "add", "c", &max])), 0);
    assert_eq!(code(&s.cli(&["counter", "add", "c", &max])), 0);
    let third = s.cli(&["counter", "add", "c", &max]);
    assert_eq!(code(&third), 2, "{}", stderr(&third));
    assert!(stderr(&third).contains("refused"), "{}", stderr(&third));
    let twice = (2 * i128::from(i64::MAX)).to_string();
    assert_eq!(stdout(&s.cli(&["counter", "get", "c"])).trim(), twice);
    assert_eq!(
        stdout(&s.cli(&["counter", "add", "c", "-1"])).trim(),
        (2 * i128::from(i64::MAX) - 1).to_string()
    );
}

/// Review C8: a request's deadline is bounded (its tasks, state copies and the
/// guard that blocks reaping its key live until then).
#[test]
fn request_deadlines_are_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path(), &[]);
    let out = s.cli(&["put", "k", "v", "--timeout-ms", "4294967295"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let out = s.cli(&["get", "k", "--timeout-ms", "66666"]);
    assert_eq!(code(&out), 1, "within the bound: {}", stderr(&out));
    // The node refuses it too, whatever the client checked.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let refused = rt.block_on(async {
        let mut c = ringkv::Client::connect(&s.addr).await.expect("connect");
        c.set_options(ringkv::rpc::api::RequestOptions {
            timeout_ms: Some(3_600_000),
            ..Default::default()
        });
        c.put(b"k", b"v", None).await
    });
    assert!(
        matches!(
            refused,
            Err(ringkv::ClientError::Api(
                ringkv::rpc::api::ApiError::InvalidOptions { .. }
            ))
        ),
        "{refused:?}"
    );
    assert_eq!(code(&s.cli(&["get", "k"])), 1, "nothing was written");
    let out = common::run_cli(
        &[
            "serve",
            "--request-timeout-ms",
            "600000",
            "--listen",
            "127.0.0.1:1",
        ],
        None,
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
}

#[test]
fn counters_sets_and_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path(), &["--node-id", "alpha"]);
    assert_eq!(stdout(&s.cli(&["counter", "add", "c", "5"])), "5\n");
    assert_eq!(stdout(&s.cli(&["counter", "add", "c", "-7"])), "-2\n");
    assert_eq!(
        json(&s.cli(&["counter", "get", "c", "--json"]))["value"],
        -2
    );
    assert_eq!(code(&s.cli(&["counter", "get", "nothing"])), 1);

    for m in ["b", "a", "c"] {
        assert_eq!(code(&s.cli(&["set", "add", "s", m])), 0);
    }
    assert_eq!(code(&s.cli(&["set", "remove", "s", "c"])), 0);
    assert_eq!(stdout(&s.cli(&["set", "members", "s"])), "a\nb\n");
    assert_eq!(
        json(&s.cli(&["set", "members", "s", "--json"]))["members"],
        serde_json::json!(["a", "b"])
    );
    assert_eq!(code(&s.cli(&["set", "members", "nothing"])), 1);

    let st = json(&s.cli(&["status", "--json"]));
    assert_eq!(st["node_id"], "alpha");
    assert!(st["stats"]["requests"].as_u64().expect("requests") >= 8);
    assert!(st["storage"]["disk_bytes"].as_u64().expect("disk bytes") > 0);
    assert!(st["storage"]["segment_files"].as_u64().expect("segments") >= 1);
    assert_eq!(code(&s.cli(&["status"])), 0);
}

/// Each refusal: exit 2, one line on stderr, the server keeps serving, nothing changes.
#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(
        dir.path(),
        &["--max-value-bytes", "1000", "--max-key-bytes", "64"],
    );
    assert_eq!(code(&s.cli(&["put", "reg", "kept"])), 0);
    let before = stdout(&s.cli(&["get", "reg", "--json"]));

    let refusals: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["put".into(), "k".repeat(65), "v".into()],
            "key of 65 bytes",
        ),
        (
            vec!["put".into(), "big".into(), "v".repeat(1001)],
            "value of 1001 bytes",
        ),
        (
            vec!["counter".into(), "add".into(), "reg".into(), "1".into()],
            "holds a register, not a counter",
        ),
        (
            vec!["set".into(), "add".into(), "reg".into(), "m".into()],
            "holds a register, not a set",
        ),
        (
            vec![
                "put".into(),
                "reg".into(),
                "x".into(),
                "--context".into(),
                "%%%".into(),
            ],
            "invalid context",
        ),
        (
            vec![
                "put".into(),
                "reg".into(),
                "x".into(),
                "--context".into(),
                "AAAA".into(),
            ],
            "invalid context",
        ),
        (
            vec![
                "counter".into(),
                "add".into(),
                "c".into(),
                "notanumber".into(),
            ],
            "invalid value",
        ),
        (vec!["put".into(), "k".into()], "VALUE"),
    ];
    for (args, expect) in &refusals {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = s.cli(&args);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(expect),
            "{args:?}: expected {expect:?} in {err:?}"
        );
    }
    // Values over the limit by a little reach the server, which refuses them itself:
    // check through the Rust client too, bypassing the CLI's local check.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let client = ringkv::Client::connect(&s.addr).await.expect("connect");
        let err = client
            .put(b"big", &vec![0u8; 1001], None)
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("over the limit"), "{err}");
    });

    assert_eq!(
        code(&s.cli(&["get", "big"])),
        1,
        "nothing stored for the refused value"
    );
    assert_eq!(
        stdout(&s.cli(&["get", "reg", "--json"])),
        before,
        "refusals changed nothing"
    );
    assert_eq!(
        code(&s.cli(&["put", "after", "ok"])),
        0,
        "server still serves"
    );
}

/// Garbage from a raw TCP client closes that connection only.
#[test]
fn garbage_frames_close_only_their_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path(), &[]);
    assert_eq!(code(&s.cli(&["put", "reg", "kept"])), 0);
    let before = stdout(&s.cli(&["get", "reg", "--json"]));

    let frames: Vec<Vec<u8>> = vec![
        // A length prefix far over the frame limit.
        [0xffu8, 0xff, 0xff, 0xff]
            .into_iter()
            .chain(b"junk".iter().copied())
            .collect(),
        // A well-sized frame of garbage.
        [0u8, 0, 0, 8]
            .into_iter()
            .chain([1u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
            .collect(),
        // A frame with an unknown wire version.
        [0u8, 0, 0, 3, 42, 0, 0].to_vec(),
    ];
    for frame in &frames {
        let mut raw = std::net::TcpStream::connect(&s.addr).expect("connect");
        raw.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        raw.write_all(frame).expect("write");
        let mut buf = [0u8; 64];
        // The server closes the connection: EOF (0 bytes) or a reset, never a hang.
        match raw.read(&mut buf) {
            Ok(n) => assert_eq!(n, 0, "server answered garbage with {n} bytes"),
            Err(e) => assert_ne!(
                e.kind(),
                std::io::ErrorKind::WouldBlock,
                "server kept a garbage connection open"
            ),
        }
    }
    assert_eq!(stdout(&s.cli(&["get", "reg", "--json"])), before);
    let st = json(&s.cli(&["status", "--json"]));
    assert!(
        st["stats"]["bad_frames"].as_u64().expect("counter") >= 3,
        "{st}"
    );
}

#[test]
fn sigterm_stops_cleanly_and_unreachable_nodes_exit_3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Server::start(dir.path(), &[]);
    assert_eq!(code(&s.cli(&["put", "k", "v"])), 0);
    assert_eq!(s.terminate(), Some(0), "{}", s.log_text());
    let out = s.cli(&["get", "k"]);
    assert_eq!(code(&out), 3);
    assert_eq!(
        stderr(&out).lines().count(),
        1,
        "one clear line: {}",
        stderr(&out)
    );
    s.restart();
    assert_eq!(stdout(&s.cli(&["get", "k"])), "v\n");
    // A second server on the same data directory is refused with a clear message.
    let port = common::free_port().to_string();
    let out = common::run_cli(
        &[
            "serve",
            "--data-dir",
            dir.path().join("data").to_str().expect("utf8"),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ],
        None,
    );
    assert_eq!(code(&out), 4);
    assert!(stderr(&out).contains("in use"), "{}", stderr(&out));
}

/// Connections beyond `--max-connections` are closed at once and counted; the node
/// serves again as soon as a slot frees.
#[test]
fn connection_limit_is_enforced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path(), &["--max-connections", "1"]);
    // Hold the only slot with a client whose handshake succeeded (a raw socket could
    // be the one refused while the readiness probe's connection is still closing).
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let held = rt.block_on(async {
        loop {
            if let Ok(c) = ringkv::Client::connect(&s.addr).await {
                break c;
            }
            assert!(std::time::Instant::now() < deadline, "never got the slot");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let refused = loop {
        let out = s.cli(&["get", "k"]);
        if code(&out) == 3 {
            break out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "second connection was never refused"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        stderr(&refused).contains("cannot connect"),
        "{}",
        stderr(&refused)
    );
    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = s.cli(&["status", "--json"]);
        if code(&out) == 0 {
            assert!(
                json(&out)["stats"]["connections_refused"]
                    .as_u64()
                    .expect("counter")
                    >= 1
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slot never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}
