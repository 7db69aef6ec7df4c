//! The transport seam: every TCP connect and accept, and every UDP socket, of the
//! node goes through [`Network`], so the same node code runs on tokio sockets in production and on a
//! simulated network (turmoil) in `ringkv-simulation` (DESIGN.md §9).

mod tokio_net;

pub use tokio_net::TokioNetwork;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::tls::DialTls;

/// A byte stream between two nodes (or a client and a node).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A bound listening socket.
pub trait Listener: Send + 'static {
    /// The stream type of accepted connections.
    type Stream: Stream;

    /// Waits for the next connection.
    ///
    /// Cancel safe: dropping the future loses no connection.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;

    /// The address actually bound (useful after binding port 0).
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// Whether RPC frames on accepted streams go out one per write (see
    /// [`Network::write_per_frame`]).
    fn write_per_frame(&self) -> bool {
        false
    }
}

/// A bound UDP socket (gossip).
pub trait Datagram: Send + Sync + 'static {
    /// Sends one datagram.
    fn send_to(
        &self,
        buf: &[u8],
        target: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send;

    /// Receives one datagram into `buf`; returns its length and sender.
    ///
    /// Cancel safe: dropping the future loses no datagram.
    fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send;

    /// The address actually bound.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// Connects, listens and binds datagram sockets. Implementations must be cheap to clone.
pub trait Network: Clone + Send + Sync + 'static {
    /// Stream type of both sides.
    type Stream: Stream;
    /// Listener type.
    type Listener: Listener<Stream = Self::Stream>;

    /// Binds a listener.
    fn bind(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Listener>> + Send;

    /// Opens a connection.
    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Stream>> + Send;

    /// Datagram socket type.
    type Socket: Datagram;

    /// Binds a UDP socket.
    fn bind_udp(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Socket>> + Send;

    /// Every address `host_port` (`HOST:PORT`, HOST a name or an IP) stands for: all
    /// A and AAAA records of a name. The default takes numeric addresses only, so a
    /// simulated network never reaches a real resolver.
    fn resolve(&self, host_port: &str) -> impl Future<Output = io::Result<Vec<SocketAddr>>> + Send {
        let parsed = host_port
            .parse::<SocketAddr>()
            .map(|a| vec![a])
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{host_port:?} is not a numeric HOST:PORT"),
                )
            });
        std::future::ready(parsed)
    }

    /// Whether RPC frames go out one per write instead of batched into writes of up
    /// to 8 KiB. Real sockets batch (fewer write calls; about 15 % more throughput
    /// on a 3-node cluster). The simulation writes one frame per write: batching cut
    /// at frame lengths that vary with tarpc's random span ids, and each simulated
    /// write is a segment with its own latency draw, so runs did not replay.
    fn write_per_frame(&self) -> bool {
        false
    }
}

/// A stream of any network, boxed.
pub trait IoStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> IoStream for T {}

type Connecting = Pin<Box<dyn Future<Output = io::Result<Box<dyn IoStream>>> + Send>>;

/// Dials connections through some [`Network`], with its framing choice and,
/// if set, TLS; cheap to clone, and free of the network's type.
#[derive(Clone)]
pub struct Dialer {
    connect: Arc<dyn Fn(SocketAddr) -> Connecting + Send + Sync>,
    /// See [`Network::write_per_frame`].
    pub write_per_frame: bool,
    /// The TLS to dial with, asked for at each dial (certificates are reloaded).
    tls: Option<Arc<dyn Fn() -> DialTls + Send + Sync>>,
}

impl Dialer {
    /// A dialer through `net`.
    pub fn new<N: Network>(net: N) -> Dialer {
        let write_per_frame = net.write_per_frame();
        Dialer {
            connect: Arc::new(move |addr| {
                let net = net.clone();
                Box::pin(async move {
                    let s = net.connect(addr).await?;
                    Ok(Box::new(s) as Box<dyn IoStream>)
                })
            }),
            write_per_frame,
            tls: None,
        }
    }

    /// The same, dialing with TLS: `tls` gives the configuration in force.
    pub fn with_tls(mut self, tls: impl Fn() -> DialTls + Send + Sync + 'static) -> Dialer {
        self.tls = Some(Arc::new(tls));
        self
    }

    /// Whether connections are TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Opens a connection to `addr` (with TLS: to a node holding a node
    /// certificate of the CA, whatever its names).
    pub async fn dial(&self, addr: SocketAddr) -> io::Result<Box<dyn IoStream>> {
        self.dial_named(addr, None).await
    }

    /// Opens a connection to `addr`; with TLS, checking the node's certificate
    /// names `name` if given.
    pub async fn dial_named(
        &self,
        addr: SocketAddr,
        name: Option<&str>,
    ) -> io::Result<Box<dyn IoStream>> {
        let stream = (self.connect)(addr).await?;
        let Some(tls) = &self.tls else {
            return Ok(stream);
        };
        let secured = tls()
            .connect(stream, addr, name)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake failed: {e}")))?;
        Ok(Box::new(secured))
    }
}
