//! The transport seam on turmoil: every TCP connect and accept, and every UDP socket,
//! of a simulated node goes through turmoil's simulated network, which the nemesis
//! can partition, delay and drop.

use std::io;
use std::net::SocketAddr;

use ringkv::net::{Datagram, Listener, Network};

/// turmoil's network, as a [`Network`] for ringkv nodes and clients.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimNetwork;

/// turmoil binds only the unspecified address of a host (each host has one IP):
/// nodes configured with their host's IP bind the same port on it that way.
fn any(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        addr.port(),
    )
}

/// A simulated listening socket.
pub struct SimListener(turmoil::net::TcpListener);

/// A simulated UDP socket.
pub struct SimSocket(turmoil::net::UdpSocket);

impl Listener for SimListener {
    type Stream = turmoil::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(turmoil::net::TcpStream, SocketAddr)> {
        self.0.accept().await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn write_per_frame(&self) -> bool {
        true
    }
}

impl Datagram for SimSocket {
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        self.0.send_to(buf, target).await
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.0.recv_from(buf).await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl Network for SimNetwork {
    type Stream = turmoil::net::TcpStream;
    type Listener = SimListener;
    type Socket = SimSocket;

    async fn bind(&self, addr: SocketAddr) -> io::Result<SimListener> {
        turmoil::net::TcpListener::bind(any(addr))
            .await
            .map(SimListener)
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<turmoil::net::TcpStream> {
        turmoil::net::TcpStream::connect(addr).await
    }

    async fn bind_udp(&self, addr: SocketAddr) -> io::Result<SimSocket> {
        turmoil::net::UdpSocket::bind(any(addr))
            .await
            .map(SimSocket)
    }

    /// Runs replay only with one frame per write (see the trait).
    fn write_per_frame(&self) -> bool {
        true
    }
}
