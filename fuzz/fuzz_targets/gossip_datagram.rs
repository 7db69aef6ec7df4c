//! A gossip datagram as a node handles it: as received (almost always refused by
//! the MAC), and sealed with the cluster's key (what a member, or someone holding
//! the secret, could send: the SWIM and member-record decoders behind the MAC).
#![no_main]

use std::net::SocketAddr;
use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use ringkv_gossip::membership::{Gossip, GossipConfig, Identity, node_hash};
use ringkv_gossip::{ClusterKey, NodeRecord, Stamp, Status};

struct State {
    gossip: Gossip,
    key: ClusterKey,
    counter: u64,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn fresh() -> State {
    let key = ClusterKey::derive(b"fuzzing cluster secret");
    let addr: SocketAddr = "10.0.0.1:7400".parse().expect("addr");
    let own = NodeRecord {
        version: 1,
        status: Status::Active,
        node_id: "n1".into(),
        address: addr.to_string(),
        zone: String::new(),
    };
    let config = GossipConfig::new(key.clone(), vec!["10.0.0.2:7400".parse().expect("seed")]);
    let identity = Identity {
        addr,
        generation: 1,
        node: node_hash("n1"),
    };
    let (gossip, _) = Gossip::new(identity, own, Vec::new(), config, 7);
    State {
        gossip,
        key,
        counter: 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let state = guard.get_or_insert_with(fresh);
    // A new machine now and then, so state built by earlier inputs stays small.
    if state.counter > 10_000 {
        *state = fresh();
    }
    let from: SocketAddr = "10.0.0.2:7400".parse().expect("addr");
    let _ = state.gossip.handle_datagram(from, data);
    state.counter += 1;
    let stamp = Stamp {
        sender: node_hash("n2"),
        epoch: 1,
        counter: state.counter,
    };
    if let Ok(sealed) = state.key.seal(&stamp, data) {
        let _ = state.gossip.handle_datagram(from, &sealed);
    }
});
