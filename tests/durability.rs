//! Acknowledged writes survive SIGKILL under `--sync always` and `interval`, on
//! both storage engines.

mod common;

use common::{Server, code, stdout};

#[test]
fn sync_always_loses_no_acknowledged_put_on_sigkill() {
    sync_always(&["--storage", "log"]);
}

#[test]
fn sync_always_loses_no_acknowledged_put_on_sigkill_on_fjall() {
    sync_always(&["--storage", "fjall"]);
}

fn sync_always(storage: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Server::start(dir.path(), &[&["--sync", "always"], storage].concat());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let acknowledged = rt.block_on(async {
        let client = ringkv::Client::connect(&s.addr).await.expect("connect");
        let mut acked = Vec::new();
        // 1,000 puts, 20 at a time; each counted only once acknowledged.
        for chunk in (0..1000u32).collect::<Vec<_>>().chunks(20) {
            let futs = chunk.iter().map(|i| {
                let client = client.clone();
                async move {
                    let key = format!("durable-{i}");
                    client
                        .put(key.as_bytes(), format!("value-{i}").as_bytes(), None)
                        .await
                        .map(|_| *i)
                }
            });
            for r in futures::future::join_all(futs).await {
                acked.push(r.expect("put acknowledged"));
            }
        }
        acked
    });
    assert_eq!(acknowledged.len(), 1000);
    s.kill9();
    s.restart();
    rt.block_on(async {
        let client = ringkv::Client::connect(&s.addr).await.expect("connect");
        for i in &acknowledged {
            let got = client
                .get(format!("durable-{i}").as_bytes())
                .await
                .expect("get");
            assert_eq!(
                got.siblings,
                vec![format!("value-{i}").into_bytes()],
                "key durable-{i}"
            );
        }
    });
    // And through the CLI, one spot check.
    let out = s.cli(&["get", "durable-999"]);
    assert_eq!(code(&out), 0);
    assert_eq!(stdout(&out), "value-999\n");
}

/// Under the default `--sync interval`, a killed process loses nothing acknowledged
/// either (every record reached the OS before its acknowledgement), even when it dies
/// with writes in flight, mid-append; after the restart the node takes writes again
/// and keeps them across a clean restart too.
#[test]
fn interval_sync_loses_no_acknowledged_put_when_killed_mid_stream() {
    interval_sync(&[]);
}

#[test]
fn interval_sync_loses_no_acknowledged_put_when_killed_mid_stream_on_fjall() {
    interval_sync(&["--storage", "fjall"]);
}

fn interval_sync(storage: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Server::start(dir.path(), storage);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let client = rt
        .block_on(ringkv::Client::connect(&s.addr))
        .expect("connect");
    // 8 writers, each putting its own keys until the kill cuts it off (bounded: at
    // most 5,000 puts each).
    let writers: Vec<_> = (0..8u32)
        .map(|w| {
            let (client, acked) = (client.clone(), acknowledged.clone());
            rt.spawn(async move {
                for i in 0..5_000u32 {
                    let key = format!("stream-{w}-{i}");
                    let value = format!("{key}-{}", "x".repeat(200));
                    match client.put(key.as_bytes(), value.as_bytes(), None).await {
                        Ok(_) => acked.lock().expect("acked").push((key, value)),
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    // Kill once a good number are acknowledged, while the writers are still going.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while acknowledged.lock().expect("acked").len() < 2_000 {
        assert!(std::time::Instant::now() < deadline, "writes too slow");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    s.kill9();
    rt.block_on(async {
        for w in writers {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(20), w).await;
        }
    });
    drop(client);
    let acked = acknowledged.lock().expect("acked").clone();
    s.restart();
    let check = |s: &Server, acked: &[(String, String)], then_put: &[u8]| {
        rt.block_on(async {
            let client = ringkv::Client::connect(&s.addr).await.expect("connect");
            for (key, value) in acked {
                let got = client.get(key.as_bytes()).await.expect("get");
                assert_eq!(got.siblings, vec![value.clone().into_bytes()], "key {key}");
            }
            client
                .put(then_put, b"yes", None)
                .await
                .expect("put after restart");
        })
    };
    check(&s, &acked, b"after-kill");
    assert_eq!(s.terminate(), Some(0), "clean stop");
    s.restart();
    check(&s, &acked, b"after-stop");
    for key in ["after-kill", "after-stop"] {
        assert_eq!(stdout(&s.cli(&["get", key])), "yes\n", "{key}");
    }
}

/// A data directory keeps the engine it was created with: `serve` with the other
/// one refuses it in one line and touches nothing, and the right one opens it.
#[test]
fn serve_refuses_a_data_directory_of_the_other_engine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Server::start(dir.path(), &["--storage", "fjall"]);
    assert_eq!(code(&s.cli(&["put", "kept", "v"])), 0);
    assert!(
        stdout(&s.cli(&["status"])).contains("fjall"),
        "status names the engine"
    );
    assert_eq!(s.terminate(), Some(0));
    let data = dir.path().join("data");
    let before: Vec<_> = walk(&data);
    let out = std::process::Command::new(common::bin())
        .args(["serve", "--storage", "log", "--listen", "127.0.0.1:0"])
        .args(["--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .expect("run serve");
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("holds a fjall store") && err.contains("--storage fjall"),
        "{err}"
    );
    assert_eq!(walk(&data), before, "nothing touched");
    s.restart();
    assert_eq!(stdout(&s.cli(&["get", "kept"])), "v\n");
}

/// Every file under `dir` with its length and modification time.
fn walk(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("list") {
        let e = e.expect("entry");
        let meta = e.metadata().expect("meta");
        if meta.is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push((e.path(), meta.len(), meta.modified().expect("mtime")));
        }
    }
    out.sort();
    out
}
