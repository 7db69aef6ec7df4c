use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::issue::{Holder, Issued, ca, signed};
use super::*;

fn write(dir: &Path, name: &str, issued: &Issued) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &issued.cert_pem).expect("write cert");
    std::fs::write(&key, &issued.key_pem).expect("write key");
    (cert, key)
}

struct Pki {
    dir: tempfile::TempDir,
    ca: Issued,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ca(30).expect("ca");
        write(dir.path(), "ca", &ca);
        Pki { dir, ca }
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn issue(&self, holder: Holder, name: &str, hosts: &[&str], days: i64) -> (PathBuf, PathBuf) {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let issued = signed(
            &self.ca.cert_pem,
            &self.ca.key_pem,
            holder,
            name,
            &hosts,
            days,
        )
        .expect("signed");
        write(self.dir.path(), name, &issued)
    }

    fn node(&self, name: &str, days: i64) -> NodeTls {
        let (cert, key) = self.issue(Holder::Node, name, &["localhost", "127.0.0.1"], days);
        NodeTls::load(TlsFiles {
            cert,
            key,
            ca: self.ca_path(),
        })
        .expect("load")
    }
}

/// One handshake between `server` and a dialer; returns the client's error, and
/// whether the server saw a client certificate.
async fn handshake(server: &NodeTls, dial: &DialTls, name: Option<&str>) -> Result<bool, String> {
    let (a, b) = tokio::io::duplex(64 << 10);
    let acceptor = server.acceptor();
    let served = tokio::spawn(async move {
        let mut s = acceptor.accept(b).await.map_err(|e| e.to_string())?;
        let cert = s.get_ref().1.peer_certificates().is_some();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        s.write_all(&buf).await.map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())?;
        Ok::<bool, String>(cert)
    });
    let addr: std::net::SocketAddr = "10.1.2.3:7400".parse().expect("addr");
    let mut c = dial
        .connect(a, addr, name)
        .await
        .map_err(|e| e.to_string())?;
    c.write_all(b"ping").await.map_err(|e| e.to_string())?;
    c.flush().await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    assert_eq!(&buf, b"ping");
    served.await.expect("join")
}

#[tokio::test]
async fn clients_and_peers_verify_against_the_cluster_ca() {
    let pki = Pki::new();
    let node = pki.node("n1", 10);
    let client = DialTls::client(&ClientTlsFiles {
        ca: pki.ca_path(),
        identity: None,
    })
    .expect("client");
    // By name: the certificate's names are checked.
    assert_eq!(
        handshake(&node, &client, Some("localhost")).await,
        Ok(false)
    );
    assert_eq!(
        handshake(&node, &client, Some("127.0.0.1")).await,
        Ok(false)
    );
    let wrong = handshake(&node, &client, Some("elsewhere.example"))
        .await
        .expect_err("a name the certificate lacks");
    assert!(wrong.contains("not valid for name"), "{wrong}");
    // Through the ring (an address from the node): any node certificate of the CA.
    assert_eq!(handshake(&node, &client, None).await, Ok(false));
    // A peer shows its own node certificate.
    let other = pki.node("n2", 10);
    assert_eq!(handshake(&node, &other.peer_dialer(), None).await, Ok(true));
    // A client with a certificate shows it.
    let (cert, key) = pki.issue(Holder::Client, "app", &[], 10);
    let with_cert = DialTls::client(&ClientTlsFiles {
        ca: pki.ca_path(),
        identity: Some((cert, key)),
    })
    .expect("client");
    assert_eq!(
        handshake(&node, &with_cert, Some("localhost")).await,
        Ok(true)
    );
    assert!((node.cert_expiry() - node.ca_expiry()).abs() > 86_400 * 10);
}

#[tokio::test]
async fn a_wrong_ca_an_expired_certificate_and_a_client_certificate_as_a_server_are_refused() {
    let pki = Pki::new();
    let stranger = Pki::new();
    let node = pki.node("n1", 10);
    let foreign = DialTls::client(&ClientTlsFiles {
        ca: stranger.ca_path(),
        identity: None,
    })
    .expect("client");
    let e = handshake(&node, &foreign, Some("localhost"))
        .await
        .expect_err("wrong CA");
    assert!(e.contains("UnknownIssuer"), "{e}");
    // A peer whose certificate another CA signed is refused by the node.
    let intruder = stranger.node("x", 10);
    assert!(
        handshake(&node, &intruder.peer_dialer(), None)
            .await
            .is_err()
    );
    let client = DialTls::client(&ClientTlsFiles {
        ca: pki.ca_path(),
        identity: None,
    })
    .expect("client");
    let expired = pki.node("old", -2);
    let e = handshake(&expired, &client, None)
        .await
        .expect_err("expired");
    assert!(e.contains("expired"), "{e}");
    // A client certificate lacks server authentication: it cannot pose as a node.
    let (cert, key) = pki.issue(Holder::Client, "app", &["localhost"], 10);
    let impostor = NodeTls::load(TlsFiles {
        cert,
        key,
        ca: pki.ca_path(),
    })
    .expect("load");
    let e = handshake(&impostor, &client, None)
        .await
        .expect_err("client cert");
    assert!(e.contains("certificate"), "{e}");
}

#[tokio::test]
async fn changed_files_are_read_again_and_a_broken_set_keeps_the_last_good_one() {
    let pki = Pki::new();
    let node = pki.node("n1", 5);
    let first = node.cert_expiry();
    assert!(!node.reload(false).expect("unchanged"));
    std::thread::sleep(std::time::Duration::from_millis(20));
    pki.issue(Holder::Node, "n1", &["localhost"], 20);
    assert!(node.reload(false).expect("changed"));
    assert!(node.cert_expiry() > first + 86_400 * 10);
    std::fs::write(&node.files().key, "not a key").expect("write");
    assert!(node.reload(false).is_err());
    assert_eq!(node.reload_failures(), 1);
    let client = DialTls::client(&ClientTlsFiles {
        ca: pki.ca_path(),
        identity: None,
    })
    .expect("client");
    assert_eq!(
        handshake(&node, &client, Some("localhost")).await,
        Ok(false)
    );
    let missing = NodeTls::load(TlsFiles {
        cert: pki.dir.path().join("none.crt"),
        key: pki.dir.path().join("none.key"),
        ca: pki.ca_path(),
    })
    .expect_err("missing");
    assert!(missing.to_string().contains("none.crt"), "{missing}");
}
