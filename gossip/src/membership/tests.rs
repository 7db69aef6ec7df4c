//! Membership over a simulated network of gossip state machines.

use super::testnet::*;
use super::*;
use crate::record::Status;

#[test]
fn five_nodes_converge_on_members_and_liveness() {
    let mut net = Net::new(&[b"s".as_slice(); 5]);
    net.run_until(10_000);
    let all: Vec<String> = (0..5).map(|i| format!("n{i}")).collect();
    for i in 0..5 {
        assert_eq!(net.ids(i), all, "node {i}");
        let live = net.nodes[i].liveness();
        assert_eq!(live.values().filter(|l| **l == Liveness::Alive).count(), 5);
    }
}

#[test]
fn wrong_key_is_never_a_member_and_is_counted() {
    let mut net = Net::new(&[b"s".as_slice(), b"s", b"s", b"other"]);
    net.run_until(10_000);
    for i in 0..3 {
        assert_eq!(net.ids(i), vec!["n0", "n1", "n2"], "node {i}");
    }
    assert!(net.nodes[0].stats().rejected_auth > 0);
    assert_eq!(net.ids(3), vec!["n3"]);
}

#[test]
fn a_cut_node_is_declared_down_and_comes_back_by_announcing() {
    let mut net = Net::new(&[b"s".as_slice(); 4]);
    net.run_until(5_000);
    net.cut.insert(3);
    net.run_until(30_000);
    let addr3 = net.addrs[3];
    assert_eq!(net.nodes[0].liveness().get(&addr3), Some(&Liveness::Down));
    net.cut.clear();
    net.run_until(60_000);
    for i in 0..4 {
        assert_eq!(alive(&net.nodes[i]), 4, "node {i} sees everyone again");
    }
}

#[test]
fn a_restart_shows_as_a_higher_generation_before_any_suspicion() {
    let mut net = Net::new(&[b"s".as_slice(); 3]);
    net.run_until(5_000);
    let n2 = node_hash("n2");
    assert_eq!(net.nodes[0].generations_by_node().get(&n2), Some(&1));
    let (g, out) = Gossip::new(
        Identity {
            addr: net.addrs[2],
            generation: 2,
            node: n2,
        },
        record(2, net.addrs[2]),
        Vec::new(),
        GossipConfig::new(ClusterKey::derive(b"s"), vec![net.addrs[0]]),
        7,
    );
    net.nodes[2] = g;
    net.perform(2, out);
    net.run_until(6_000);
    assert_eq!(net.nodes[0].generations_by_node().get(&n2), Some(&2));
    assert_eq!(
        net.nodes[0].liveness_by_node().get(&n2),
        Some(&Liveness::Alive)
    );
}

#[test]
fn a_node_restarted_at_a_new_address_is_as_alive_as_its_newest_start() {
    let id = |port: u16, generation: u64| Identity {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        generation,
        node: node_hash("n2"),
    };
    // SWIM may list the old identity after the new one, or before it.
    for entries in [
        vec![(id(2, 2), Liveness::Alive), (id(1, 1), Liveness::Down)],
        vec![(id(1, 1), Liveness::Suspect), (id(2, 2), Liveness::Alive)],
    ] {
        let by_node = super::newest_by_node(entries.into_iter());
        assert_eq!(by_node.get(&node_hash("n2")), Some(&Liveness::Alive));
    }
    // The newest start that is down is down, whatever an older one last said.
    let by_node = super::newest_by_node(
        vec![(id(1, 1), Liveness::Alive), (id(2, 2), Liveness::Down)].into_iter(),
    );
    assert_eq!(by_node.get(&node_hash("n2")), Some(&Liveness::Down));
    // Identities without a node (announced to by address) are left out.
    let unknown = Identity {
        node: 0,
        ..id(3, 1)
    };
    assert!(super::newest_by_node(vec![(unknown, Liveness::Alive)].into_iter()).is_empty());
}

#[test]
fn newer_records_spread_and_leave_marks_down() {
    let mut net = Net::new(&[b"s".as_slice(); 3]);
    net.run_until(5_000);
    let mut r = record(2, net.addrs[2]);
    r.version = 2;
    r.status = Status::Leaving;
    let out = net.nodes[2].publish(r);
    net.perform(2, out);
    net.run_until(8_000);
    assert_eq!(
        net.nodes[0].members().get("n2").map(|r| r.status),
        Some(Status::Leaving)
    );
    let out = net.nodes[2].leave();
    net.perform(2, out);
    net.run_until(12_000);
    let addr2 = net.addrs[2];
    assert_eq!(net.nodes[0].liveness().get(&addr2), Some(&Liveness::Down));
}

#[test]
fn a_long_partition_with_peers_on_both_sides_heals() {
    let mut net = Net::new(&[b"s".as_slice(); 4]);
    net.run_until(5_000);
    net.side = vec![0, 0, 1, 1];
    // Longer than foca keeps down members (600 s): both sides forget the other.
    net.run_until(700_000);
    let far = net.addrs[3];
    assert!(
        !net.nodes[0].liveness().contains_key(&far),
        "foca forgot the other side"
    );
    net.side = vec![0; 4];
    net.run_until(760_000);
    for i in 0..4 {
        let alive = alive(&net.nodes[i]);
        assert_eq!(alive, 4, "node {i} sees everyone again");
    }
}

#[test]
fn a_split_into_halves_heals_within_seconds() {
    let mut net = Net::new(&[b"s".as_slice(); 4]);
    net.run_until(5_000);
    net.side = vec![0, 0, 1, 1];
    net.run_until(60_000);
    assert_eq!(
        net.nodes[0].liveness_of(net.addrs[3]),
        Liveness::Down,
        "declared down across the split"
    );
    net.side = vec![0; 4];
    net.run_until(80_000);
    for i in 0..4 {
        let alive = alive(&net.nodes[i]);
        assert_eq!(alive, 4, "node {i} sees everyone within 20 s of the heal");
    }
}

#[test]
fn a_new_record_spreads_by_broadcast_within_a_second() {
    // A full exchange happens every 2 s; broadcasts must be much faster.
    let mut net = Net::new(&[b"s".as_slice(); 8]);
    net.run_until(10_000);
    let mut r = record(3, net.addrs[3]);
    r.version = 2;
    r.zone = "moved".into();
    let out = net.nodes[3].publish(r);
    net.perform(3, out);
    net.run_until(11_000);
    for i in 0..8 {
        assert_eq!(
            net.nodes[i].record("n3").map(|r| r.version),
            Some(2),
            "node {i}"
        );
    }
}

#[test]
fn garbage_datagrams_are_counted_not_fatal() {
    let mut net = Net::new(&[b"s".as_slice(); 1]);
    let from = SocketAddr::from(([127, 0, 0, 1], 1));
    assert!(net.nodes[0].handle_datagram(from, &[]).is_empty());
    assert!(net.nodes[0].handle_datagram(from, &[0u8; 2000]).is_empty());
    let key = ClusterKey::derive(b"s");
    let stamp = |counter| Stamp {
        sender: 0xfeed,
        epoch: 1,
        counter,
    };
    let sealed = key
        .seal(&stamp(1), &[TAG_RECORDS, 0xff, 0xff])
        .expect("seal");
    net.nodes[0].handle_datagram(from, &sealed);
    let sealed = key.seal(&stamp(2), &[TAG_FOCA, 1, 2, 3]).expect("seal");
    net.nodes[0].handle_datagram(from, &sealed);
    let s = net.nodes[0].stats();
    assert_eq!(s.rejected_auth, 1);
    assert_eq!(s.rejected_oversized, 1);
    assert_eq!(s.rejected_malformed, 2);
}

/// A real datagram, captured on its way and delivered again (from its sender's
/// address, and from another): dropped and counted, and nothing changes.
#[test]
fn a_captured_datagram_replayed_is_dropped_and_counted() {
    let mut net = Net::new(&[b"s".as_slice(); 3]);
    net.run_until(5_000);
    // Step until a datagram is on its way.
    let mut t = 5_000;
    while !net
        .queue
        .values()
        .any(|(_, ev)| matches!(ev, Event::Datagram(..)))
    {
        t += 1;
        assert!(t < 10_000, "no datagram in five seconds");
        net.run_until(t);
    }
    let (&at, (dst, ev)) = net
        .queue
        .iter()
        .find(|(_, (_, ev))| matches!(ev, Event::Datagram(..)))
        .expect("a datagram in flight");
    let (dst, (from, bytes)) = match ev {
        Event::Datagram(from, bytes) => (*dst, (*from, bytes.clone())),
        Event::Timer(_) => unreachable!("found a datagram"),
    };
    net.run_until(at.0);
    let before = net.nodes[dst].stats();
    assert_eq!(before.rejected_replay, 0, "no replay in normal traffic");
    let members = net.ids(dst);
    let attacker = SocketAddr::from(([10, 9, 9, 9], 7400));
    for source in [from, attacker, from] {
        assert!(net.nodes[dst].handle_datagram(source, &bytes).is_empty());
    }
    let after = net.nodes[dst].stats();
    assert_eq!(after.rejected_replay, 3);
    assert_eq!(after.rejected_auth, before.rejected_auth);
    assert_eq!(net.ids(dst), members);
    // The cluster goes on: later datagrams of the same sender are fresh.
    net.run_until(15_000);
    assert_eq!(net.nodes[dst].stats().rejected_replay, 3);
    assert_eq!(net.ids(dst).len(), 3);
}
