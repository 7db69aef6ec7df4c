//! Certificates for a cluster (`ringkv certs`): a CA, node certificates (server
//! and client authentication: a node is both to its peers) and client
//! certificates (client authentication only, so a client's certificate cannot
//! pass for a node's). ECDSA P-256 keys.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use super::TlsError;

/// A certificate and its private key, PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

fn err(e: rcgen::Error) -> TlsError {
    TlsError::Config {
        reason: format!("cannot make the certificate: {e}"),
    }
}

/// The validity of a new certificate: from a minute ago (clocks differ a little)
/// for `days` days; `days` may be negative for an expired one (tests).
fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::days(days);
    if days < 0 {
        params.not_before = params.not_after - time::Duration::days(1);
    }
}

fn name(common: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "ringkv");
    dn.push(DnType::CommonName, common);
    dn
}

/// A new CA valid for `days`.
///
/// # Errors
/// [`TlsError::Config`] if rcgen refuses.
pub fn ca(days: i64) -> Result<Issued, TlsError> {
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    // Named apart from every other cluster's CA: a certificate of another cluster
    // is then refused as of an unknown issuer, not as a bad signature.
    let id: u32 = rand::random();
    params.distinguished_name = name(&format!("ringkv cluster CA {id:08x}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days);
    let cert = params.self_signed(&key).map_err(err)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Whom a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// A node: server and client authentication.
    Node,
    /// A client: client authentication only.
    Client,
}

/// A certificate for `common_name`, valid for the DNS names and IP addresses of
/// `hosts` and for `days`, signed by the CA (`ca_cert_pem`, `ca_key_pem`).
///
/// # Errors
/// [`TlsError::Config`] for a CA that cannot be read or a host that is neither a
/// DNS name nor an IP address.
pub fn signed(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    holder: Holder,
    common_name: &str,
    hosts: &[String],
    days: i64,
) -> Result<Issued, TlsError> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(|e| TlsError::Config {
        reason: format!("the CA key is unreadable: {e}"),
    })?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).map_err(|e| TlsError::Config {
        reason: format!("the CA certificate is unreadable: {e}"),
    })?;
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(hosts.to_vec()).map_err(|e| TlsError::Config {
        reason: format!("a host is neither a DNS name nor an IP address: {e}"),
    })?;
    params.distinguished_name = name(common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match holder {
        Holder::Node => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Holder::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}
