//! Real ringkv nodes on turmoil's simulated network: a three-node cluster forms, a
//! client writes and reads through it, and a partitioned-away node catches up.

use std::net::SocketAddr;
use std::time::Duration;

use ringkv::node::{Node, NodeConfig};
use ringkv_simulation::SimNetwork;
use ringkv_storage::SyncPolicy;

fn addr_of(host: &str) -> SocketAddr {
    SocketAddr::new(turmoil::lookup(host), 7400)
}

#[test]
fn three_nodes_serve_a_client_through_the_simulated_network() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = turmoil::Builder::new()
        .rng_seed(7)
        .simulation_duration(Duration::from_secs(120))
        .build();
    for i in 1..=3u64 {
        let name = format!("n{i}");
        let data = dir.path().join(&name);
        sim.host(name.clone(), move || {
            let (name, data) = (name.clone(), data.clone());
            async move {
                let mut cfg = NodeConfig::new(data, addr_of(&name));
                cfg.node_id = Some(name.clone());
                cfg.sync = SyncPolicy::None;
                cfg.cluster.seeds = vec![addr_of("n1")];
                cfg.repair.interval = Duration::from_secs(2);
                let node = Node::start(
                    cfg,
                    move || 1000 + i,
                    SimNetwork,
                    tokio_util::sync::CancellationToken::new(),
                )
                .await?;
                let listener = ringkv::rpc::server::bind(&SimNetwork, &node).await?;
                ringkv::rpc::server::serve(listener, node, std::future::pending()).await;
                Ok(())
            }
        });
    }
    sim.client("client", async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let client = ringkv::Client::connect_with(&SimNetwork, addr_of("n2")).await?;
        let ring = client.ring().await?;
        assert_eq!(ring.members.len(), 3, "{ring:?}");
        client.put(b"k", b"v1", None).await?;
        let got = client.get(b"k").await?;
        assert_eq!(got.siblings, vec![b"v1".to_vec()]);
        for i in 0..50u32 {
            client.counter_add(b"c", 1).await?;
            client
                .put(format!("key-{i}").as_bytes(), b"x", None)
                .await?;
        }
        assert_eq!(client.counter_get(b"c").await?, Some(50));
        Ok(())
    });
    sim.run().expect("simulation");
}

#[test]
fn a_partitioned_node_catches_up_after_the_partition_heals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = turmoil::Builder::new()
        .rng_seed(11)
        .simulation_duration(Duration::from_secs(300))
        .build();
    for i in 1..=3u64 {
        let name = format!("n{i}");
        let data = dir.path().join(&name);
        sim.host(name.clone(), move || {
            let (name, data) = (name.clone(), data.clone());
            async move {
                let mut cfg = NodeConfig::new(data, addr_of(&name));
                cfg.node_id = Some(name.clone());
                cfg.sync = SyncPolicy::None;
                cfg.cluster.seeds = vec![addr_of("n1")];
                cfg.cluster.settings.timeout = Duration::from_secs(2);
                cfg.repair.interval = Duration::from_secs(2);
                let node = Node::start(
                    cfg,
                    move || 2000 + i,
                    SimNetwork,
                    tokio_util::sync::CancellationToken::new(),
                )
                .await?;
                let listener = ringkv::rpc::server::bind(&SimNetwork, &node).await?;
                ringkv::rpc::server::serve(listener, node, std::future::pending()).await;
                Ok(())
            }
        });
    }
    sim.client("client", async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut client = ringkv::Client::connect_with(&SimNetwork, addr_of("n1")).await?;
        client.set_timeout(Duration::from_secs(3));
        turmoil::partition("n3", "n1");
        turmoil::partition("n3", "n2");
        turmoil::partition("n3", "client");
        let mut acked = Vec::new();
        for i in 0..40u32 {
            let k = format!("p-{i}");
            if client.put(k.as_bytes(), b"during", None).await.is_ok() {
                acked.push(k);
            }
        }
        assert!(acked.len() >= 30, "writes go on at W=2: {}", acked.len());
        turmoil::repair("n3", "n1");
        turmoil::repair("n3", "n2");
        turmoil::repair("n3", "client");
        // Hints and anti-entropy bring n3 up to date.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let n3 = ringkv::Client::connect_with(&SimNetwork, addr_of("n3")).await?;
        for k in &acked {
            let got = n3.get_local(k.as_bytes()).await?;
            assert_eq!(got.siblings, vec![b"during".to_vec()], "{k} on n3");
        }
        Ok(())
    });
    sim.run().expect("simulation");
}
