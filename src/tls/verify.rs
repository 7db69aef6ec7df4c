//! How a node's certificate is checked when dialing it.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};

use super::TlsError;

/// The web PKI checks against the cluster's CA (chain, validity period, the
/// server-authentication usage), with the name check optional: a cluster's CA
/// signs only the cluster's certificates, and a member's address comes from a
/// node already authenticated (or, for peers, changes when a container moves).
#[derive(Debug)]
pub(super) struct NodeVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    names: bool,
}

impl NodeVerifier {
    pub(super) fn new(
        roots: Arc<rustls::RootCertStore>,
        names: bool,
    ) -> Result<Arc<NodeVerifier>, TlsError> {
        let inner =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, super::provider())
                .build()
                .map_err(|e| TlsError::Config {
                    reason: e.to_string(),
                })?;
        Ok(Arc::new(NodeVerifier { inner, names }))
    }
}

impl ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            // The name is checked last, after the chain, validity and usage.
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.names => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
