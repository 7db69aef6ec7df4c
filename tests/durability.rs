//! Acknowledged writes survive SIGKILL under `--sync always`.

mod common;

use common::{Server, code, stdout};

#[test]
fn sync_always_loses_no_acknowledged_put_on_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Server::start(dir.path(), &["--sync", "always"]);
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
