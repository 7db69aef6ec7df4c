//! Raw bytes to the HTTP port (probes, metrics, /v1/cluster/health, the status
//! page, the data API under /v1/kv, /v1/counter and /v1/set) of a real node, with
//! an auth file (`rkv_fuzz` reads, `rkv_fuzzw` writes), as hyper parses them and
//! the router answers: the request line, headers (Authorization and the context
//! among them), percent-encoded keys, query strings, bodies.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Fixture {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let auth = dir.path().join("auth");
        let token = "rkv_fuzz";
        let hashed = |t: &str| ringkv::auth::token::hex(&ringkv::auth::token::hash(t.as_bytes()));
        let line = format!(
            "fuzz read {}\nfuzzw write {}\n",
            hashed(token),
            hashed("rkv_fuzzw")
        );
        std::fs::write(&auth, line).expect("auth");
        let mut cfg = ringkv::node::NodeConfig::new(
            dir.path().join("data"),
            "127.0.0.1:0".parse().expect("addr"),
        );
        cfg.auth = Some(std::sync::Arc::new(
            ringkv::auth::Keyring::open(&auth).expect("keyring"),
        ));
        let stop = tokio_util::sync::CancellationToken::new();
        let node = rt
            .block_on(ringkv::node::Node::start(
                cfg,
                || 7,
                ringkv::net::TokioNetwork,
                stop,
            ))
            .expect("node");
        let router = ringkv::http::router(node, Duration::from_secs(10));
        Fixture {
            rt,
            router,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let router = f.router.clone();
    let request = data.to_vec();
    f.rt.block_on(async move {
        let (client, server) = tokio::io::duplex(1 << 16);
        let service = hyper_util::service::TowerToHyperService::new(router);
        let serving = tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(server);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
        let (mut rd, mut wr) = tokio::io::split(client);
        let _ = wr.write_all(&request).await;
        let _ = wr.shutdown().await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut answer)).await;
        serving.abort();
    });
});
