//! The client preamble: what a client sends first on a connection, before any RPC
//! frame, and the node's verdict.
//!
//! ```text
//! client: "RKVC" | version u8 (1) | token length u16 BE (0 = none) | token
//! node:   0 | role u8 (0 open, 1 read, 2 write, 3 admin)      accepted
//!         1 | reason length u16 BE | reason (UTF-8)            refused, then closed
//! ```
//!
//! A connection that starts with an RPC frame instead (a length prefix never equal
//! to the magic) is served only by a node without an auth file.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Role;
use super::token::MAX_TOKEN_BYTES;

/// The first bytes of a client preamble. As a frame length it would be 1.4 GB,
/// far over any frame limit, so it cannot be mistaken for an RPC frame.
pub const MAGIC: [u8; 4] = *b"RKVC";

const VERSION: u8 = 1;

/// Longest refusal reason sent or read.
const MAX_REASON_BYTES: usize = 1024;

/// Why a preamble could not be read or was refused.
#[derive(Debug, thiserror::Error)]
pub enum PreambleError {
    /// The bytes are not a preamble this build reads.
    #[error("malformed client preamble: {reason}")]
    Malformed {
        /// What was wrong.
        reason: String,
    },
    /// The connection failed.
    #[error("connection failed during the client preamble: {0}")]
    Io(#[from] std::io::Error),
    /// The node refused the token.
    #[error("{reason}")]
    Refused {
        /// The node's one-line reason.
        reason: String,
    },
}

/// The node's answer to a preamble.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Served; with the token's role, `None` for a node without an auth file.
    Accepted(Option<Role>),
    /// Refused, with a one-line reason; the node closes the connection.
    Refused(String),
}

/// Writes the client's preamble (after the connection, and TLS, are up).
///
/// # Errors
/// A token over [`MAX_TOKEN_BYTES`] or a failed write.
pub async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    token: Option<&str>,
) -> Result<(), PreambleError> {
    let token = token.unwrap_or("").as_bytes();
    if token.len() > MAX_TOKEN_BYTES {
        return Err(PreambleError::Malformed {
            reason: format!("token of {} bytes, over {MAX_TOKEN_BYTES}", token.len()),
        });
    }
    let mut buf = Vec::with_capacity(7 + token.len());
    buf.extend_from_slice(&MAGIC);
    buf.push(VERSION);
    buf.extend_from_slice(&(token.len() as u16).to_be_bytes());
    buf.extend_from_slice(token);
    stream.write_all(&buf).await?;
    stream.flush().await?;
    Ok(())
}

/// Reads the rest of a preamble whose magic was already read: the token, `None`
/// when the client sent none.
///
/// # Errors
/// An unknown version, a token over [`MAX_TOKEN_BYTES`] or not UTF-8, a failed read.
pub async fn receive<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<String>, PreambleError> {
    let mut head = [0u8; 3];
    stream.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Err(PreambleError::Malformed {
            reason: format!("version {} (this node reads {VERSION})", head[0]),
        });
    }
    let len = usize::from(u16::from_be_bytes([head[1], head[2]]));
    if len > MAX_TOKEN_BYTES {
        return Err(PreambleError::Malformed {
            reason: format!("token of {len} bytes, over {MAX_TOKEN_BYTES}"),
        });
    }
    let mut token = vec![0u8; len];
    stream.read_exact(&mut token).await?;
    if token.is_empty() {
        return Ok(None);
    }
    String::from_utf8(token)
        .map(Some)
        .map_err(|_| PreambleError::Malformed {
            reason: "token is not UTF-8".into(),
        })
}

/// Writes the node's verdict.
///
/// # Errors
/// A failed write.
pub async fn answer<S: AsyncWrite + Unpin>(
    stream: &mut S,
    verdict: &Verdict,
) -> Result<(), PreambleError> {
    let mut buf = Vec::new();
    match verdict {
        Verdict::Accepted(role) => {
            buf.push(0);
            buf.push(role.map_or(0, Role::code));
        }
        Verdict::Refused(reason) => {
            let mut end = reason.len().min(MAX_REASON_BYTES);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            buf.push(1);
            buf.extend_from_slice(&(end as u16).to_be_bytes());
            buf.extend_from_slice(&reason.as_bytes()[..end]);
        }
    }
    stream.write_all(&buf).await?;
    stream.flush().await?;
    Ok(())
}

/// Reads the node's verdict.
///
/// # Errors
/// [`PreambleError::Refused`] with the node's reason, or malformed bytes, or a
/// failed read.
pub async fn verdict<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Option<Role>, PreambleError> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    match head {
        [0, 0] => Ok(None),
        [0, code] => Role::from_code(code)
            .map(Some)
            .ok_or_else(|| PreambleError::Malformed {
                reason: format!("unknown role {code}"),
            }),
        [1, hi] => {
            let mut lo = [0u8; 1];
            stream.read_exact(&mut lo).await?;
            let len = usize::from(u16::from_be_bytes([hi, lo[0]]));
            if len > MAX_REASON_BYTES {
                return Err(PreambleError::Malformed {
                    reason: format!("refusal of {len} bytes"),
                });
            }
            let mut reason = vec![0u8; len];
            stream.read_exact(&mut reason).await?;
            Err(PreambleError::Refused {
                reason: String::from_utf8_lossy(&reason).into_owned(),
            })
        }
        [other, _] => Err(PreambleError::Malformed {
            reason: format!("unknown verdict {other}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_preamble_and_each_verdict_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        send(&mut a, Some("rkv_abc")).await.expect("send");
        let mut magic = [0u8; 4];
        b.read_exact(&mut magic).await.expect("magic");
        assert_eq!(magic, MAGIC);
        assert_eq!(
            receive(&mut b).await.expect("receive").as_deref(),
            Some("rkv_abc")
        );
        send(&mut a, None).await.expect("send");
        b.read_exact(&mut magic).await.expect("magic");
        assert_eq!(receive(&mut b).await.expect("receive"), None);
        for v in [
            Verdict::Accepted(None),
            Verdict::Accepted(Some(Role::Write)),
        ] {
            answer(&mut b, &v).await.expect("answer");
            let Verdict::Accepted(role) = v else {
                unreachable!()
            };
            assert_eq!(verdict(&mut a).await.expect("verdict"), role);
        }
        answer(&mut b, &Verdict::Refused("no token".into()))
            .await
            .expect("answer");
        match verdict(&mut a).await {
            Err(PreambleError::Refused { reason }) => assert_eq!(reason, "no token"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn malformed_preambles_are_refused_without_reading_more_than_they_say() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        a.write_all(&[9, 0, 0]).await.expect("write");
        assert!(matches!(
            receive(&mut b).await,
            Err(PreambleError::Malformed { .. })
        ));
        a.write_all(&[VERSION, 0xff, 0xff]).await.expect("write");
        assert!(matches!(
            receive(&mut b).await,
            Err(PreambleError::Malformed { .. })
        ));
        a.write_all(&[VERSION, 0, 2, 0xff, 0xfe])
            .await
            .expect("write");
        assert!(matches!(
            receive(&mut b).await,
            Err(PreambleError::Malformed { .. })
        ));
        b.write_all(&[0, 9]).await.expect("write");
        assert!(matches!(
            verdict(&mut a).await,
            Err(PreambleError::Malformed { .. })
        ));
        drop(b);
        assert!(matches!(verdict(&mut a).await, Err(PreambleError::Io(_))));
        let long = "x".repeat(MAX_TOKEN_BYTES + 1);
        assert!(send(&mut a, Some(&long)).await.is_err());
    }
}
