//! The handshake that opens a peer connection: both sides prove they hold the
//! cluster key without revealing it, over fresh nonces from both, before any request
//! is read. The connecting side names itself (its node id, or nothing for an
//! operator's tool), inside what the proofs cover, so the accepting side can refuse
//! nodes an operator removed: a removed node that still runs (partitioned while it
//! was removed, or restarted later from its old disk) must not push its stale data
//! back into the cluster (review A9). It also names the node it means to reach, and
//! the accepting side refuses if it is another: after a lost disk the old node id
//! and the new one share an address until the old one is removed, and a request
//! meant for the old id must not be answered by the new node (a write would count
//! one disk twice toward W; a read or a reaper's digest would speak for data that is
//! gone). Client connections never start with [`MAGIC`] (their first four bytes are
//! a frame length far below it), so one port serves both.
//!
//! ```text
//! initiator  MAGIC | VERSION | nonce (32) | u8 id length | id | u8 target length | target
//! acceptor   nonce (32) | tag("peer handshake acceptor", transcript)
//! initiator  tag("peer handshake initiator", transcript)
//! acceptor   1 (admitted) | 0 (wrong proof) | 2 (this node id was removed)
//!            | 3 (another node answers at this address)
//! transcript initiator nonce | acceptor nonce | u8 id length | id
//!            | u8 target length | target
//! ```
//!
//! An empty target (an operator's tool) reaches whichever node answers. Version 2,
//! without the target, is still accepted, so nodes of the previous release can
//! reach upgraded ones during a rolling upgrade.

use std::io;
use std::time::Duration;

use ringkv_gossip::ClusterKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::Stream;

/// First bytes of a peer connection.
pub const MAGIC: [u8; 4] = *b"RKVP";
/// Handshake version (after the magic): 2 names the connecting node, 3 also the
/// node it means to reach.
pub const VERSION: u8 = 3;
/// The previous version, still accepted (no target).
const VERSION_NO_TARGET: u8 = 2;
/// Longest node id a handshake carries (as membership records allow).
const MAX_ID: usize = ringkv_gossip::membership::MAX_RECORD_FIELD_BYTES;
/// Final byte: admitted.
const ADMITTED: u8 = 1;
/// Final byte: the proof was wrong.
const BAD_PROOF: u8 = 0;
/// Final byte: the connecting node id was removed from the cluster.
const REMOVED: u8 = 2;
/// Final byte: the node at this address is not the one the connecting side named.
const ANOTHER_NODE: u8 = 3;
/// Longest a handshake may take.
pub const TIMEOUT: Duration = Duration::from_secs(3);

fn refused(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, why.to_string())
}

/// A fresh nonce. Only its unpredictability matters (it never changes behaviour),
/// so the OS-seeded thread RNG is fine here, also under the simulation.
fn nonce() -> [u8; 32] {
    rand::random()
}

fn transcript(
    initiator: &[u8; 32],
    acceptor: &[u8; 32],
    id: &[u8],
    target: Option<&[u8]>,
) -> Vec<u8> {
    let mut t = Vec::with_capacity(66 + id.len() + target.map_or(0, <[u8]>::len));
    t.extend_from_slice(initiator);
    t.extend_from_slice(acceptor);
    t.push(id.len() as u8);
    t.extend_from_slice(id);
    if let Some(target) = target {
        t.push(target.len() as u8);
        t.extend_from_slice(target);
    }
    t
}

/// Opens a peer connection on `stream` (the connecting side), as node `id` (empty
/// for an operator's tool, which may only ask for membership changes), to node
/// `target` (empty: whichever node answers).
///
/// # Errors
/// I/O errors, a timeout, `PermissionDenied` if the other side does not hold `key`,
/// refuses `id` (removed from the cluster) or is not `target`, `InvalidInput` for an
/// id over 128 bytes.
pub async fn initiate<S: Stream>(
    stream: &mut S,
    key: &ClusterKey,
    id: &str,
    target: &str,
) -> io::Result<()> {
    if id.len() > MAX_ID || target.len() > MAX_ID {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "node id over 128 bytes",
        ));
    }
    tokio::time::timeout(TIMEOUT, async {
        let mine = nonce();
        let mut hello = Vec::with_capacity(39 + id.len() + target.len());
        hello.extend_from_slice(&MAGIC);
        hello.push(VERSION);
        hello.extend_from_slice(&mine);
        hello.push(id.len() as u8);
        hello.extend_from_slice(id.as_bytes());
        hello.push(target.len() as u8);
        hello.extend_from_slice(target.as_bytes());
        stream.write_all(&hello).await?;
        let mut reply = [0u8; 64];
        stream.read_exact(&mut reply).await?;
        let theirs: [u8; 32] = reply[..32].try_into().map_err(|_| refused("short reply"))?;
        let proof: [u8; 32] = reply[32..].try_into().map_err(|_| refused("short reply"))?;
        let t = transcript(&mine, &theirs, id.as_bytes(), Some(target.as_bytes()));
        if !key.verify_tag(b"peer handshake acceptor", &t, &proof) {
            return Err(refused("peer does not hold the cluster secret"));
        }
        stream
            .write_all(&key.tag(b"peer handshake initiator", &t))
            .await?;
        let mut verdict = [0u8; 1];
        stream.read_exact(&mut verdict).await?;
        match verdict[0] {
            ADMITTED => Ok(()),
            REMOVED => Err(refused(
                "this node was removed from the cluster; its peers refuse it",
            )),
            ANOTHER_NODE => Err(refused(&format!(
                "another node than {target} answers at this address"
            ))),
            _ => Err(refused("peer refused our proof")),
        }
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "peer handshake timed out"))?
}

/// Reads a length-prefixed node id of at most [`MAX_ID`] bytes.
async fn read_id<S: Stream>(stream: &mut S, len: u8) -> io::Result<String> {
    let len = usize::from(len);
    if len > MAX_ID {
        return Err(refused("node id over 128 bytes"));
    }
    let mut id = vec![0u8; len];
    stream.read_exact(&mut id).await?;
    String::from_utf8(id).map_err(|_| refused("node id is not UTF-8"))
}

/// Accepts a peer connection whose [`MAGIC`] has already been read, as node `me`;
/// returns the id the other side proved it connects as (empty: an operator's tool).
/// `admit` is asked about that id once the proof holds; a `false` is answered as
/// "removed". A connection meant for another node than `me` is refused.
///
/// # Errors
/// I/O errors, a timeout, or `PermissionDenied` if the other side does not hold
/// `key`, `admit` refuses it, or it names another node as the one it means to reach.
pub async fn accept<S: Stream>(
    stream: &mut S,
    key: &ClusterKey,
    me: &str,
    admit: impl FnOnce(&str) -> bool,
) -> io::Result<String> {
    tokio::time::timeout(TIMEOUT, async {
        let mut hello = [0u8; 34];
        stream.read_exact(&mut hello).await?;
        let version = hello[0];
        if version != VERSION && version != VERSION_NO_TARGET {
            return Err(refused("unknown peer handshake version"));
        }
        let theirs: [u8; 32] = hello[1..33]
            .try_into()
            .map_err(|_| refused("short hello"))?;
        let id = read_id(stream, hello[33]).await?;
        let target = if version == VERSION {
            let mut len = [0u8; 1];
            stream.read_exact(&mut len).await?;
            Some(read_id(stream, len[0]).await?)
        } else {
            None
        };
        let mine = nonce();
        let t = transcript(
            &theirs,
            &mine,
            id.as_bytes(),
            target.as_deref().map(str::as_bytes),
        );
        let mut reply = Vec::with_capacity(64);
        reply.extend_from_slice(&mine);
        reply.extend_from_slice(&key.tag(b"peer handshake acceptor", &t));
        stream.write_all(&reply).await?;
        let mut proof = [0u8; 32];
        stream.read_exact(&mut proof).await?;
        if !key.verify_tag(b"peer handshake initiator", &t, &proof) {
            let _ = stream.write_all(&[BAD_PROOF]).await;
            return Err(refused("peer does not hold the cluster secret"));
        }
        if !admit(&id) {
            let _ = stream.write_all(&[REMOVED]).await;
            return Err(refused("the connecting node was removed from the cluster"));
        }
        if let Some(target) = target.filter(|t| !t.is_empty() && t != me) {
            let _ = stream.write_all(&[ANOTHER_NODE]).await;
            return Err(refused(&format!(
                "the connecting node means to reach {target}, and this is {me}"
            )));
        }
        stream.write_all(&[ADMITTED]).await?;
        Ok(id)
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "peer handshake timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handshake from `id` (secret `a`) meaning to reach `target`, accepted by node
    /// "n2" (secret `b`) that refuses `removed`.
    async fn pair(
        a: &'static [u8],
        b: &'static [u8],
        id: &'static str,
        target: &'static str,
        removed: &'static str,
    ) -> (io::Result<()>, io::Result<String>) {
        let (mut x, mut y) = tokio::io::duplex(1024);
        let ka = ClusterKey::derive(a);
        let kb = ClusterKey::derive(b);
        let server = tokio::spawn(async move {
            let mut magic = [0u8; 4];
            y.read_exact(&mut magic).await?;
            assert_eq!(magic, MAGIC);
            accept(&mut y, &kb, "n2", |who| who != removed).await
        });
        let c = initiate(&mut x, &ka, id, target).await;
        drop(x);
        (c, server.await.expect("join"))
    }

    #[tokio::test]
    async fn same_secret_opens_and_different_secrets_are_refused() {
        let (c, s) = pair(b"one", b"one", "n1", "n2", "").await;
        assert!(c.is_ok());
        assert_eq!(s.expect("admitted"), "n1");
        let (c, s) = pair(b"one", b"two", "n1", "n2", "").await;
        assert!(c.is_err());
        assert!(s.is_err());
    }

    #[tokio::test]
    async fn a_removed_node_is_refused_and_told_why() {
        let (c, s) = pair(b"one", b"one", "n4", "n2", "n4").await;
        let err = c.expect_err("refused");
        assert!(err.to_string().contains("removed"), "{err}");
        assert!(s.is_err());
        // Operators' tools name no node.
        let (c, s) = pair(b"one", b"one", "", "", "n4").await;
        assert!(c.is_ok());
        assert_eq!(s.expect("admitted"), "");
        let mut x = tokio::io::duplex(64).0;
        let long = "x".repeat(129);
        assert!(
            initiate(&mut x, &ClusterKey::derive(b"one"), &long, "")
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_connection_meant_for_another_node_at_this_address_is_refused() {
        // The old id of a lost disk still listed at the address its new node now
        // holds: what is meant for the old id must not reach the new node.
        let (c, s) = pair(b"one", b"one", "n1", "n2-old", "").await;
        let err = c.expect_err("refused");
        assert!(err.to_string().contains("another node"), "{err}");
        assert!(s.is_err());
        // Whoever answers, for a tool that names no target.
        let (c, s) = pair(b"one", b"one", "n1", "", "").await;
        assert!(c.is_ok() && s.is_ok());
    }

    #[tokio::test]
    async fn the_previous_version_without_a_target_is_still_accepted() {
        let (mut x, mut y) = tokio::io::duplex(1024);
        let key = ClusterKey::derive(b"one");
        let server_key = key.clone();
        let server = tokio::spawn(async move {
            let mut magic = [0u8; 4];
            y.read_exact(&mut magic).await?;
            accept(&mut y, &server_key, "n2", |_| true).await
        });
        let mine = [5u8; 32];
        let mut hello = MAGIC.to_vec();
        hello.push(VERSION_NO_TARGET);
        hello.extend_from_slice(&mine);
        hello.push(2);
        hello.extend_from_slice(b"n1");
        x.write_all(&hello).await.expect("hello");
        let mut reply = [0u8; 64];
        x.read_exact(&mut reply).await.expect("reply");
        let theirs: [u8; 32] = reply[..32].try_into().expect("nonce");
        let t = transcript(&mine, &theirs, b"n1", None);
        assert!(key.verify_tag(b"peer handshake acceptor", &t, &reply[32..]));
        x.write_all(&key.tag(b"peer handshake initiator", &t))
            .await
            .expect("proof");
        let mut verdict = [0u8; 1];
        x.read_exact(&mut verdict).await.expect("verdict");
        assert_eq!(verdict[0], ADMITTED);
        assert_eq!(server.await.expect("join").expect("admitted"), "n1");
    }
}
