//! TLS (rustls) on the client port and on peer connections.
//!
//! One listener serves both: a node presents its certificate to everyone, and
//! asks for (but does not require) a client certificate, checked against the
//! cluster's CA. A connection that then opens the peer handshake must have shown
//! one: peers are mutual TLS, with the secret handshake inside as the membership
//! gate. Clients verify a node's certificate against the CA; the name is checked
//! for the address the user gave, while the members reached through the ring
//! (addresses the authenticated node handed out) need only a node certificate of
//! the same CA. Peers dial each other the same way, since a node's address may
//! change (a container restarted elsewhere) where its certificate's names do not.
//!
//! Certificates, key and CA are read again when one of the files changes (or on
//! [`NodeTls::reload`] with `force`, on SIGHUP); a set that cannot be used keeps
//! the last good one. Expiry of the node certificate and of the CA are kept for
//! metrics.

mod files;
pub mod issue;
mod verify;

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use rustls::pki_types::ServerName;

pub use files::TlsError;

/// The crypto provider every config here is built with (ring: builds with the C
/// compiler alone, see CRATES.md).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The files of a node's TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The node's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The cluster's CA certificate (PEM): what peers' and clients' certificates
    /// are checked against.
    pub ca: PathBuf,
}

struct Loaded {
    server: Arc<rustls::ServerConfig>,
    peer: Arc<rustls::ClientConfig>,
    cert_expiry: i64,
    ca_expiry: i64,
}

fn load(f: &TlsFiles) -> Result<Loaded, TlsError> {
    let chain = files::certs(&f.cert)?;
    let key = files::key(&f.key)?;
    let roots = files::roots(&f.ca)?;
    let cert_expiry = files::not_after(&f.cert, &chain[0])?;
    let ca_expiry = files::ca_not_after(&f.ca)?;
    let config_err = |e: rustls::Error| TlsError::Config {
        reason: e.to_string(),
    };
    let clients =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Config {
                reason: e.to_string(),
            })?;
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .with_client_cert_verifier(clients)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| TlsError::Config {
            reason: format!(
                "certificate {} and key {} do not go together: {e}",
                f.cert.display(),
                f.key.display()
            ),
        })?;
    let peer = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .dangerous()
        .with_custom_certificate_verifier(verify::NodeVerifier::new(roots, false)?)
        .with_client_auth_cert(chain, key)
        .map_err(config_err)?;
    Ok(Loaded {
        server: Arc::new(server),
        peer: Arc::new(peer),
        cert_expiry,
        ca_expiry,
    })
}

/// A node's TLS: what it accepts connections with and dials peers with.
pub struct NodeTls {
    files: TlsFiles,
    server: RwLock<Arc<rustls::ServerConfig>>,
    peer: RwLock<Arc<rustls::ClientConfig>>,
    cert_expiry: AtomicI64,
    ca_expiry: AtomicI64,
    watched: crate::watch::Watched,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("files", &self.files)
            .finish()
    }
}

impl NodeTls {
    /// Reads the files.
    ///
    /// # Errors
    /// [`TlsError`] naming the file that cannot be read or used.
    pub fn load(files: TlsFiles) -> Result<NodeTls, TlsError> {
        let watched = crate::watch::Watched::new(vec![
            files.cert.clone(),
            files.key.clone(),
            files.ca.clone(),
        ]);
        let l = load(&files)?;
        Ok(NodeTls {
            files,
            server: RwLock::new(l.server),
            peer: RwLock::new(l.peer),
            cert_expiry: AtomicI64::new(l.cert_expiry),
            ca_expiry: AtomicI64::new(l.ca_expiry),
            watched,
        })
    }

    /// The files.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Reads the files again if one changed (or `force`). A set that cannot be
    /// used keeps the last good one and is counted. Returns whether new
    /// certificates are in force.
    ///
    /// # Errors
    /// Why the changed files could not be used.
    pub fn reload(&self, force: bool) -> Result<bool, TlsError> {
        if !self.watched.changed(force) {
            return Ok(false);
        }
        match load(&self.files) {
            Ok(l) => {
                *self
                    .server
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = l.server;
                *self
                    .peer
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = l.peer;
                self.cert_expiry.store(l.cert_expiry, Ordering::Relaxed);
                self.ca_expiry.store(l.ca_expiry, Ordering::Relaxed);
                Ok(true)
            }
            Err(e) => {
                self.watched.failed();
                Err(e)
            }
        }
    }

    /// What accepts connections now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(
            self.server
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }

    /// What dials peers now (with this node's certificate as the client's).
    pub fn peer_dialer(&self) -> DialTls {
        let config = self
            .peer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        DialTls {
            strict: config.clone(),
            relaxed: config,
        }
    }

    /// Unix time the node certificate expires at.
    pub fn cert_expiry(&self) -> i64 {
        self.cert_expiry.load(Ordering::Relaxed)
    }

    /// Unix time the CA certificate expires at.
    pub fn ca_expiry(&self) -> i64 {
        self.ca_expiry.load(Ordering::Relaxed)
    }

    /// Changed files that could not be used.
    pub fn reload_failures(&self) -> u64 {
        self.watched.failures()
    }
}

/// What a client needs for TLS: the CA, and its own certificate if it has one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// The cluster's CA certificate.
    pub ca: PathBuf,
    /// A client certificate and its key (optional: nodes do not require one).
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// How one side dials with TLS: a config that checks the node's name (the address
/// the user gave) and one that checks only that the node holds a node certificate
/// of the CA (members reached through the ring, and peers).
#[derive(Clone)]
pub struct DialTls {
    strict: Arc<rustls::ClientConfig>,
    relaxed: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for DialTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DialTls")
    }
}

impl DialTls {
    /// A client's TLS from its files.
    ///
    /// # Errors
    /// [`TlsError`] naming the file that cannot be read or used.
    pub fn client(f: &ClientTlsFiles) -> Result<DialTls, TlsError> {
        let roots = files::roots(&f.ca)?;
        let build = |names: bool| -> Result<Arc<rustls::ClientConfig>, TlsError> {
            let config_err = |e: rustls::Error| TlsError::Config {
                reason: e.to_string(),
            };
            let b = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(config_err)?
                .dangerous()
                .with_custom_certificate_verifier(verify::NodeVerifier::new(roots.clone(), names)?);
            let config = match &f.identity {
                None => b.with_no_client_auth(),
                Some((cert, key)) => b
                    .with_client_auth_cert(files::certs(cert)?, files::key(key)?)
                    .map_err(config_err)?,
            };
            Ok(Arc::new(config))
        };
        Ok(DialTls {
            strict: build(true)?,
            relaxed: build(false)?,
        })
    }

    /// Runs the TLS handshake over `stream`: checking the certificate's names
    /// against `name` if given, else only that it is a node certificate of the CA.
    ///
    /// # Errors
    /// The handshake's failure (an unknown CA, an expired certificate, a node
    /// without TLS), as an I/O error.
    pub async fn connect<S>(
        &self,
        stream: S,
        addr: std::net::SocketAddr,
        name: Option<&str>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let (config, server_name) = match name {
            Some(n) => (
                self.strict.clone(),
                ServerName::try_from(n.to_string()).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{n:?}: {e}"))
                })?,
            ),
            None => (
                self.relaxed.clone(),
                ServerName::IpAddress(addr.ip().into()),
            ),
        };
        tokio_rustls::TlsConnector::from(config)
            .connect(server_name, stream)
            .await
    }
}

/// The first byte of every TLS connection (a handshake record): how a node tells a
/// plaintext client from a TLS one on the same port.
pub const HANDSHAKE_RECORD: u8 = 0x16;

#[cfg(test)]
mod tests;
