//! The handshake that opens a peer connection: both sides prove they hold the
//! cluster key without revealing it, over fresh nonces from both, before any request
//! is read. Client connections never start with [`MAGIC`] (their first four bytes are
//! a frame length far below it), so one port serves both.

use std::io;
use std::time::Duration;

use ringkv_gossip::ClusterKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::Stream;

/// First bytes of a peer connection.
pub const MAGIC: [u8; 4] = *b"RKVP";
/// Handshake version (after the magic).
pub const VERSION: u8 = 1;
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

fn transcript(a: &[u8; 32], b: &[u8; 32]) -> [u8; 64] {
    let mut t = [0u8; 64];
    t[..32].copy_from_slice(a);
    t[32..].copy_from_slice(b);
    t
}

fn equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Opens a peer connection on `stream` (the connecting side).
///
/// # Errors
/// I/O errors, a timeout, or `PermissionDenied` if the other side does not hold `key`.
pub async fn initiate<S: Stream>(stream: &mut S, key: &ClusterKey) -> io::Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let mine = nonce();
        let mut hello = Vec::with_capacity(37);
        hello.extend_from_slice(&MAGIC);
        hello.push(VERSION);
        hello.extend_from_slice(&mine);
        stream.write_all(&hello).await?;
        let mut reply = [0u8; 64];
        stream.read_exact(&mut reply).await?;
        let theirs: [u8; 32] = reply[..32].try_into().map_err(|_| refused("short reply"))?;
        let proof: [u8; 32] = reply[32..].try_into().map_err(|_| refused("short reply"))?;
        let t = transcript(&mine, &theirs);
        if !equal(&proof, &key.tag(b"peer handshake acceptor", &t)) {
            return Err(refused("peer does not hold the cluster secret"));
        }
        stream
            .write_all(&key.tag(b"peer handshake initiator", &t))
            .await?;
        let mut ok = [0u8; 1];
        stream.read_exact(&mut ok).await?;
        if ok[0] != 1 {
            return Err(refused("peer refused our proof"));
        }
        Ok(())
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "peer handshake timed out"))?
}

/// Accepts a peer connection whose [`MAGIC`] has already been read.
///
/// # Errors
/// I/O errors, a timeout, or `PermissionDenied` if the other side does not hold `key`.
pub async fn accept<S: Stream>(stream: &mut S, key: &ClusterKey) -> io::Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let mut hello = [0u8; 33];
        stream.read_exact(&mut hello).await?;
        if hello[0] != VERSION {
            return Err(refused("unknown peer handshake version"));
        }
        let theirs: [u8; 32] = hello[1..].try_into().map_err(|_| refused("short hello"))?;
        let mine = nonce();
        let t = transcript(&theirs, &mine);
        let mut reply = Vec::with_capacity(64);
        reply.extend_from_slice(&mine);
        reply.extend_from_slice(&key.tag(b"peer handshake acceptor", &t));
        stream.write_all(&reply).await?;
        let mut proof = [0u8; 32];
        stream.read_exact(&mut proof).await?;
        if !equal(&proof, &key.tag(b"peer handshake initiator", &t)) {
            let _ = stream.write_all(&[0]).await;
            return Err(refused("peer does not hold the cluster secret"));
        }
        stream.write_all(&[1]).await?;
        Ok(())
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "peer handshake timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair(a: &'static [u8], b: &'static [u8]) -> (io::Result<()>, io::Result<()>) {
        let (mut x, mut y) = tokio::io::duplex(1024);
        let ka = ClusterKey::derive(a);
        let kb = ClusterKey::derive(b);
        let server = tokio::spawn(async move {
            let mut magic = [0u8; 4];
            y.read_exact(&mut magic).await?;
            assert_eq!(magic, MAGIC);
            accept(&mut y, &kb).await
        });
        let c = initiate(&mut x, &ka).await;
        drop(x);
        (c, server.await.expect("join"))
    }

    #[tokio::test]
    async fn same_secret_opens_and_different_secrets_are_refused() {
        let (c, s) = pair(b"one", b"one").await;
        assert!(c.is_ok() && s.is_ok());
        let (c, s) = pair(b"one", b"two").await;
        assert!(c.is_err());
        assert!(s.is_err());
    }
}
