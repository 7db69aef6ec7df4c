//! The first bytes of a connection: the peer handshake a node answers (after its
//! magic), the client preamble it reads (after its magic), and the verdict a
//! client reads back.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let key = ringkv_gossip::ClusterKey::derive(b"fuzzing cluster secret");
    runtime().block_on(async {
        // The other side sends `data`, then closes.
        let feed = |data: Vec<u8>| {
            let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
            tokio::spawn(async move {
                let _ = theirs.write_all(&data).await;
                let _ = theirs.shutdown().await;
                // Keep reading what we answer, so our writes never block.
                let mut sink = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut theirs, &mut sink).await;
            });
            async move {
                let _ = &mut ours;
                ours
            }
        };
        let mut s = feed(data.to_vec()).await;
        let _ = ringkv::peer::handshake::accept(&mut s, &key, "n1", |_| true).await;
        let mut s = feed(data.to_vec()).await;
        let _ = ringkv::auth::preamble::receive(&mut s).await;
        let mut s = feed(data.to_vec()).await;
        let _ = ringkv::auth::preamble::verdict(&mut s).await;
    });
});
