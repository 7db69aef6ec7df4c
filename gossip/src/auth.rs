//! Datagram authentication: every gossip datagram carries a keyed-blake3 MAC over the
//! cluster secret (DESIGN.md §5). Datagrams that are too large, too short, of an
//! unknown version or with a wrong MAC are refused before any decoding.

/// Leading byte of every datagram.
pub const DATAGRAM_VERSION: u8 = 1;
/// Bytes of the MAC appended to every datagram (a truncated keyed blake3).
pub const MAC_BYTES: usize = 16;
/// Largest datagram sent or accepted (fits one Ethernet frame with IP/UDP headers).
pub const MAX_DATAGRAM_BYTES: usize = 1400;
/// Largest payload that fits a datagram.
pub const MAX_PAYLOAD_BYTES: usize = MAX_DATAGRAM_BYTES - 1 - MAC_BYTES;
const _: () = assert!(MAX_PAYLOAD_BYTES > 1024);

/// The key every member of a cluster shares, derived from the configured secret.
#[derive(Clone)]
pub struct ClusterKey([u8; 32]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// Derives the key from secret material (a passphrase or file contents).
    pub fn derive(material: &[u8]) -> ClusterKey {
        ClusterKey(blake3::derive_key("ringkv cluster secret v1", material))
    }

    /// A key from 32 random bytes (a node alone, without a shared secret).
    pub fn from_bytes(bytes: [u8; 32]) -> ClusterKey {
        ClusterKey(bytes)
    }

    fn mac(&self, body: &[u8]) -> [u8; MAC_BYTES] {
        let full = blake3::keyed_hash(&self.0, body);
        let mut out = [0u8; MAC_BYTES];
        out.copy_from_slice(&full.as_bytes()[..MAC_BYTES]);
        out
    }

    /// A 32-byte tag of `data` under this key, separated by `domain` from datagram MACs
    /// and from other uses (the peer handshake proves knowledge of the key with it).
    pub fn tag(&self, domain: &[u8], data: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(&(domain.len() as u64).to_be_bytes());
        h.update(domain);
        h.update(data);
        *h.finalize().as_bytes()
    }

    /// Wraps a payload: version byte, payload, MAC over both.
    ///
    /// # Errors
    /// [`AuthError::TooLarge`] if the datagram would exceed [`MAX_DATAGRAM_BYTES`].
    pub fn seal(&self, payload: &[u8]) -> Result<Vec<u8>, AuthError> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(AuthError::TooLarge {
                size: payload.len() + 1 + MAC_BYTES,
                limit: MAX_DATAGRAM_BYTES,
            });
        }
        let mut out = Vec::with_capacity(payload.len() + 1 + MAC_BYTES);
        out.push(DATAGRAM_VERSION);
        out.extend_from_slice(payload);
        let mac = self.mac(&out);
        out.extend_from_slice(&mac);
        Ok(out)
    }

    /// Checks a received datagram and returns its payload.
    ///
    /// # Errors
    /// [`AuthError`] naming why the datagram was refused.
    pub fn open<'a>(&self, datagram: &'a [u8]) -> Result<&'a [u8], AuthError> {
        if datagram.len() > MAX_DATAGRAM_BYTES {
            return Err(AuthError::TooLarge {
                size: datagram.len(),
                limit: MAX_DATAGRAM_BYTES,
            });
        }
        if datagram.len() < 1 + MAC_BYTES {
            return Err(AuthError::TooShort {
                size: datagram.len(),
            });
        }
        let (body, mac) = datagram.split_at(datagram.len() - MAC_BYTES);
        if body[0] != DATAGRAM_VERSION {
            return Err(AuthError::UnknownVersion { version: body[0] });
        }
        // No early exit, so timing does not tell how many MAC bytes matched.
        let expected = self.mac(body);
        let diff = expected
            .iter()
            .zip(mac.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(AuthError::BadMac);
        }
        Ok(&body[1..])
    }
}

/// Why a datagram was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Over the size limit.
    #[error("datagram of {size} bytes is over the limit of {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Too short to hold a version byte and a MAC.
    #[error("datagram of {size} bytes is too short")]
    TooShort {
        /// Its size.
        size: usize,
    },
    /// A version this node does not speak.
    #[error("datagram version {version} is unknown")]
    UnknownVersion {
        /// The version byte.
        version: u8,
    },
    /// The MAC does not match: another cluster's secret, or tampering.
    #[error("datagram MAC does not match the cluster secret")]
    BadMac,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn seal_and_open_round_trip_and_refusals() {
        let key = ClusterKey::derive(b"s3cret");
        let sealed = key.seal(b"hello").expect("fits");
        assert_eq!(key.open(&sealed).expect("valid"), b"hello");
        let other = ClusterKey::derive(b"other");
        assert_eq!(other.open(&sealed), Err(AuthError::BadMac));
        let mut tampered = sealed.clone();
        tampered[2] ^= 1;
        assert_eq!(key.open(&tampered), Err(AuthError::BadMac));
        let mut versioned = sealed.clone();
        versioned[0] = 9;
        assert_eq!(
            key.open(&versioned),
            Err(AuthError::UnknownVersion { version: 9 })
        );
        assert!(matches!(
            key.open(&[1, 2, 3]),
            Err(AuthError::TooShort { size: 3 })
        ));
        assert!(matches!(
            key.seal(&[0; MAX_PAYLOAD_BYTES + 1]),
            Err(AuthError::TooLarge { .. })
        ));
        assert!(key.seal(&[0; MAX_PAYLOAD_BYTES]).is_ok());
        assert!(matches!(
            key.open(&[0; MAX_DATAGRAM_BYTES + 1]),
            Err(AuthError::TooLarge { .. })
        ));
        assert_eq!(format!("{key:?}"), "ClusterKey(..)");
    }

    proptest! {
        #[test]
        fn random_bytes_never_authenticate(raw in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let key = ClusterKey::derive(b"k");
            prop_assert!(key.open(&raw).is_err());
        }
    }
}
