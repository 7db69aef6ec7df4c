//! What one connection may cost while it is read (review A6): a connection that
//! sends nothing is closed after an idle timeout, a frame must arrive whole within
//! a bound of its first byte (a trickle is closed), and the bytes of large frames
//! still arriving are bounded across all connections of a kind, so a thousand
//! connections each sending most of a 16 MiB frame cannot take 16 GiB. A share is
//! taken as a frame's bytes arrive, not when its length is announced: four bytes
//! claiming 16 MiB hold nothing.
//!
//! [`Guarded`] sits between a connection's (decrypted) byte stream and its frame
//! codec and follows the frames' 4-byte big-endian length prefixes as they pass.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Frames up to this size need no share of the budget: every connection may
/// have one in flight (the in-flight limit and the connection slots bound them).
pub const SMALL_FRAME: usize = 64 << 10;

/// The bytes of large frames being received, shared by the connections of a kind.
#[derive(Debug)]
pub struct FrameBudget {
    permits: Arc<Semaphore>,
    total: usize,
    refused: AtomicU64,
}

impl FrameBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Arc<FrameBudget> {
        let bytes = bytes.min(Semaphore::MAX_PERMITS);
        Arc::new(FrameBudget {
            permits: Arc::new(Semaphore::new(bytes)),
            total: bytes,
            refused: AtomicU64::new(0),
        })
    }

    /// Bytes taken by frames being received now.
    pub fn in_use(&self) -> usize {
        self.total - self.permits.available_permits()
    }

    /// Frames refused for want of budget (their connections were closed).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn take(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(bytes).ok()?;
        match self.permits.clone().try_acquire_many_owned(n) {
            Ok(p) => Some(p),
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

/// The bounds of one connection.
#[derive(Clone, Copy, Debug)]
pub struct ReadLimits {
    /// Longest silence between frames.
    pub idle: Duration,
    /// Longest a frame may take from its first byte to its last.
    pub slow_frame: Duration,
    /// Largest frame.
    pub max_frame: usize,
}

enum State {
    /// Between frames, or `have` bytes into a length prefix.
    Header { have: usize, bytes: [u8; 4] },
    /// `left` bytes of a frame to come; a large frame holds a share of the
    /// budget for the bytes received so far.
    Body {
        left: usize,
        large: bool,
        share: Option<OwnedSemaphorePermit>,
    },
}

/// A stream read under [`ReadLimits`] and a [`FrameBudget`].
pub struct Guarded<S> {
    inner: S,
    state: State,
    budget: Arc<FrameBudget>,
    limits: ReadLimits,
    deadline: Pin<Box<Sleep>>,
}

impl<S> Guarded<S> {
    /// `inner`, read under `limits` and `budget`; the idle clock starts now.
    pub fn new(inner: S, limits: ReadLimits, budget: Arc<FrameBudget>) -> Guarded<S> {
        Guarded {
            inner,
            state: State::Header {
                have: 0,
                bytes: [0; 4],
            },
            budget,
            limits,
            deadline: Box::pin(tokio::time::sleep(limits.idle)),
        }
    }

    fn between_frames(&self) -> bool {
        matches!(self.state, State::Header { have: 0, .. })
    }

    /// Follows the frames in `data`, just read.
    fn track(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if self.between_frames() {
                // A frame begins: it has `slow_frame` to arrive whole.
                let at = Instant::now() + self.limits.slow_frame;
                self.deadline.as_mut().reset(at);
            }
            match &mut self.state {
                State::Header { have, bytes } => {
                    let n = (4 - *have).min(data.len());
                    bytes[*have..*have + n].copy_from_slice(&data[..n]);
                    *have += n;
                    data = &data[n..];
                    if *have == 4 {
                        let len = u32::from_be_bytes(*bytes) as usize;
                        self.start(len)?;
                    }
                }
                State::Body { left, large, share } => {
                    let n = (*left).min(data.len());
                    if *large {
                        let more = self.budget.take(n).ok_or_else(|| {
                            io::Error::other(format!(
                                "the frames being received would take the connections' frame budget past {} bytes",
                                self.budget.total
                            ))
                        })?;
                        match share {
                            Some(held) => held.merge(more),
                            None => *share = Some(more),
                        }
                    }
                    *left -= n;
                    data = &data[n..];
                    if *left == 0 {
                        self.end();
                    }
                }
            }
        }
        Ok(())
    }

    fn start(&mut self, len: usize) -> io::Result<()> {
        if len > self.limits.max_frame {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "frame of {len} bytes, over the limit of {}",
                    self.limits.max_frame
                ),
            ));
        }
        if len == 0 {
            self.end();
            return Ok(());
        }
        self.state = State::Body {
            left: len,
            large: len > SMALL_FRAME,
            share: None,
        };
        Ok(())
    }

    fn end(&mut self) {
        self.state = State::Header {
            have: 0,
            bytes: [0; 4],
        };
        let at = Instant::now() + self.limits.idle;
        self.deadline.as_mut().reset(at);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let this = &mut *self;
                this.track(&buf.filled()[before..])?;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if self.deadline.as_mut().poll(cx).is_ready() {
                    let what = if self.between_frames() {
                        "idle connection"
                    } else {
                        "a frame arriving too slowly"
                    };
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("closing {what}"),
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const LIMITS: ReadLimits = ReadLimits {
        idle: Duration::from_secs(60),
        slow_frame: Duration::from_secs(10),
        max_frame: 1 << 20,
    };

    fn frame(len: usize) -> Vec<u8> {
        let mut f = (len as u32).to_be_bytes().to_vec();
        f.resize(4 + len, 7);
        f
    }

    #[tokio::test(start_paused = true)]
    async fn frames_pass_and_an_idle_or_trickling_connection_is_closed() {
        let budget = FrameBudget::new(1 << 20);
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let mut g = Guarded::new(b, LIMITS, budget.clone());
        let mut two = frame(10);
        two.extend(frame(0));
        two.extend(frame(100));
        a.write_all(&two).await.expect("write");
        let mut got = vec![0u8; two.len()];
        g.read_exact(&mut got).await.expect("read");
        assert_eq!(got, two);
        // Silent past the idle timeout: closed.
        let e = g.read_u8().await.expect_err("idle");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("idle"), "{e}");

        // A frame that trickles in: closed at its bound, whatever bytes come.
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let mut g = Guarded::new(b, LIMITS, budget.clone());
        let f = frame(1000);
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 1004];
            g.read_exact(&mut buf).await
        });
        for chunk in f.chunks(10).take(50) {
            if a.write_all(chunk).await.is_err() {
                break; // closed by the guard
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let e = reader.await.expect("join").expect_err("slow");
        assert!(e.to_string().contains("too slowly"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn large_frames_share_one_budget_and_oversized_ones_are_refused() {
        let budget = FrameBudget::new(300 << 10);
        let big = 200 << 10;
        let (mut a1, b1) = tokio::io::duplex(1 << 20);
        let (mut a2, b2) = tokio::io::duplex(1 << 20);
        let mut g1 = Guarded::new(b1, LIMITS, budget.clone());
        let mut g2 = Guarded::new(b2, LIMITS, budget.clone());
        // Announcing a frame holds nothing; its bytes do, as they arrive.
        let f = frame(big);
        let mut head = [0u8; 4];
        a2.write_all(&f[..4]).await.expect("write");
        g2.read_exact(&mut head).await.expect("length");
        assert_eq!(budget.in_use(), 0);
        let part = 150 << 10;
        a1.write_all(&f[..4 + part]).await.expect("write");
        let mut buf = vec![0u8; 4 + part];
        g1.read_exact(&mut buf).await.expect("first fits");
        assert_eq!(budget.in_use(), part);
        // The second connection's bytes would take it past 300 KiB: closed.
        a2.write_all(&f[4..4 + part + 10]).await.expect("write");
        let mut buf = vec![0u8; part + 10];
        let e = g2.read_exact(&mut buf).await.expect_err("over budget");
        assert!(e.to_string().contains("frame budget"), "{e}");
        assert_eq!(budget.refused(), 1);
        drop(g2);
        // The first frame completes and gives its share back.
        a1.write_all(&f[4 + part..]).await.expect("write");
        let mut rest = vec![0u8; f.len() - 4 - part];
        g1.read_exact(&mut rest).await.expect("rest");
        assert_eq!(budget.in_use(), 0);
        // A frame over the limit is refused at its length.
        let (mut a3, b3) = tokio::io::duplex(1 << 20);
        let mut g3 = Guarded::new(b3, LIMITS, budget.clone());
        a3.write_all(&((2u32 << 20).to_be_bytes()))
            .await
            .expect("write");
        let mut head = [0u8; 16];
        let e = g3.read(&mut head).await.expect_err("too large");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // A connection dropped mid-frame gives its share back.
        let (mut a4, b4) = tokio::io::duplex(1 << 20);
        let mut g4 = Guarded::new(b4, LIMITS, budget.clone());
        a4.write_all(&f[..2000]).await.expect("write");
        let mut buf = vec![0u8; 2000];
        g4.read_exact(&mut buf).await.expect("part");
        assert_eq!(budget.in_use(), 2000 - 4);
        drop(g4);
        assert_eq!(budget.in_use(), 0);
    }
}
