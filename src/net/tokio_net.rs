//! The production [`Network`]: tokio TCP and UDP sockets.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::{Datagram, Listener, Network};

/// tokio's TCP.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioNetwork;

impl Listener for TcpListener {
    type Stream = TcpStream;

    async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        // Requests are small and latency-bound; Nagle only adds delay.
        stream.set_nodelay(true)?;
        Ok((stream, peer))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        TcpListener::local_addr(self)
    }
}

impl Datagram for UdpSocket {
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        UdpSocket::send_to(self, buf, target).await
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        UdpSocket::recv_from(self, buf).await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        UdpSocket::local_addr(self)
    }
}

impl Network for TokioNetwork {
    type Stream = TcpStream;
    type Listener = TcpListener;

    async fn bind(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        TcpListener::bind(addr).await
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    type Socket = UdpSocket;

    async fn bind_udp(&self, addr: SocketAddr) -> io::Result<UdpSocket> {
        UdpSocket::bind(addr).await
    }

    /// The system resolver (tokio runs it on the blocking pool), every record; a
    /// numeric address never reaches it.
    async fn resolve(&self, host_port: &str) -> io::Result<Vec<SocketAddr>> {
        if let Ok(addr) = host_port.parse::<SocketAddr>() {
            return Ok(vec![addr]);
        }
        let mut all: Vec<SocketAddr> = tokio::net::lookup_host(host_port).await?.collect();
        all.sort();
        all.dedup();
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn connect_and_accept_exchange_bytes() {
        let net = TokioNetwork;
        let mut listener = net
            .bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = Listener::local_addr(&listener).expect("addr");
        let client = tokio::spawn(async move {
            let mut s = net.connect(addr).await.expect("connect");
            s.write_all(b"ping").await.expect("write");
        });
        let (mut s, _) = Listener::accept(&mut listener).await.expect("accept");
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
        client.await.expect("client");
    }

    #[tokio::test]
    async fn names_resolve_to_every_address_and_numbers_to_themselves() {
        let net = TokioNetwork;
        let one = net.resolve("127.0.0.1:7400").await.expect("numeric");
        assert_eq!(one, vec!["127.0.0.1:7400".parse().expect("addr")]);
        let local = net.resolve("localhost:7400").await.expect("localhost");
        assert!(
            !local.is_empty()
                && local
                    .iter()
                    .all(|a| a.port() == 7400 && a.ip().is_loopback())
        );
        assert!(net.resolve("no-port").await.is_err());
    }

    #[tokio::test]
    async fn datagrams_travel_between_sockets() {
        let net = TokioNetwork;
        let any = "127.0.0.1:0".parse().expect("addr");
        let a = net.bind_udp(any).await.expect("bind");
        let b = net.bind_udp(any).await.expect("bind");
        let b_addr = Datagram::local_addr(&b).expect("addr");
        Datagram::send_to(&a, b"hello", b_addr).await.expect("send");
        let mut buf = [0u8; 16];
        let (n, from) = Datagram::recv_from(&b, &mut buf).await.expect("recv");
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(from, Datagram::local_addr(&a).expect("addr"));
    }
}
