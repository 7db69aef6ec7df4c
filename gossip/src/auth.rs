//! Datagram authentication: every gossip datagram carries a keyed-blake3 MAC over the
//! cluster secret (DESIGN.md §5), and under it a [`Stamp`] (the sender, its epoch and
//! a counter) that lets receivers drop replays ([`crate::replay`]). Datagrams that are
//! too large, too short, of an unknown version or with a wrong MAC are refused
//! before any decoding.
//!
//! Layout (version 2): version (1) | sender (8) | epoch (8) | counter (8) |
//! payload | MAC (16) over everything before it; integers big-endian.

/// Leading byte of every datagram. Version 1 had no stamp: its datagrams (from a
/// node of an older build) are refused, since a replayed one could not be told.
pub const DATAGRAM_VERSION: u8 = 2;
/// Bytes of the MAC appended to every datagram (a truncated keyed blake3).
pub const MAC_BYTES: usize = 16;
/// Bytes of the version and stamp before the payload.
pub const HEADER_BYTES: usize = 1 + 24;
/// Largest datagram sent or accepted (fits one Ethernet frame with IP/UDP headers).
pub const MAX_DATAGRAM_BYTES: usize = 1400;
/// Largest payload that fits a datagram.
pub const MAX_PAYLOAD_BYTES: usize = MAX_DATAGRAM_BYTES - HEADER_BYTES - MAC_BYTES;

/// Who sent a datagram and when, under its MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// The sender (its node hash).
    pub sender: u64,
    /// The sender's epoch: higher on every start of the sender (a restarted node's
    /// datagrams are new even though its counter starts again).
    pub epoch: u64,
    /// Counts the sender's datagrams within the epoch, from 1.
    pub counter: u64,
}
const _: () = assert!(MAX_PAYLOAD_BYTES > 1024);

/// The key every member of a cluster shares, derived from the configured secret;
/// during a rotation, a second one that is accepted but never signs with
/// ([`ClusterKey::also_accepting`]).
#[derive(Clone)]
pub struct ClusterKey {
    /// Signs, and is accepted.
    signing: [u8; 32],
    /// Also accepted, never signs (the secret being rotated in or out).
    accepted: Option<[u8; 32]>,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// Derives the key from secret material (a passphrase or file contents).
    pub fn derive(material: &[u8]) -> ClusterKey {
        ClusterKey::from_bytes(blake3::derive_key("ringkv cluster secret v1", material))
    }

    /// A key from 32 random bytes (a node alone, without a shared secret).
    pub fn from_bytes(bytes: [u8; 32]) -> ClusterKey {
        ClusterKey {
            signing: bytes,
            accepted: None,
        }
    }

    /// This key, also accepting what `other` signs (rotation: first every node
    /// signs with the old secret and accepts the new, then signs with the new and
    /// accepts the old, then only the new).
    pub fn also_accepting(mut self, other: &ClusterKey) -> ClusterKey {
        self.accepted = Some(other.signing);
        self
    }

    /// The keys accepted, the signing one first.
    fn keys(&self) -> impl Iterator<Item = &[u8; 32]> {
        std::iter::once(&self.signing).chain(self.accepted.as_ref())
    }

    fn mac_with(key: &[u8; 32], body: &[u8]) -> [u8; MAC_BYTES] {
        let full = blake3::keyed_hash(key, body);
        let mut out = [0u8; MAC_BYTES];
        out.copy_from_slice(&full.as_bytes()[..MAC_BYTES]);
        out
    }

    fn mac(&self, body: &[u8]) -> [u8; MAC_BYTES] {
        Self::mac_with(&self.signing, body)
    }

    fn tag_with(key: &[u8; 32], domain: &[u8], data: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(key);
        h.update(&(domain.len() as u64).to_be_bytes());
        h.update(domain);
        h.update(data);
        *h.finalize().as_bytes()
    }

    /// A 32-byte tag of `data` under the signing key, separated by `domain` from
    /// datagram MACs and from other uses (the peer handshake proves knowledge of
    /// the key with it).
    pub fn tag(&self, domain: &[u8], data: &[u8]) -> [u8; 32] {
        Self::tag_with(&self.signing, domain, data)
    }

    /// Whether `tag` is the tag of `data` under any accepted key (compared in
    /// constant time).
    pub fn verify_tag(&self, domain: &[u8], data: &[u8], tag: &[u8]) -> bool {
        let mut ok = false;
        for key in self.keys() {
            ok |= equal(&Self::tag_with(key, domain, data), tag);
        }
        ok
    }

    /// Tags of `domain` under every accepted key, the signing one first (to derive
    /// keys of other uses that rotate with this one).
    pub fn derived(&self, domain: &[u8]) -> Vec<[u8; 32]> {
        self.keys()
            .map(|k| Self::tag_with(k, domain, &[]))
            .collect()
    }

    /// Wraps a payload: version byte, stamp, payload, MAC over all of them.
    ///
    /// # Errors
    /// [`AuthError::TooLarge`] if the datagram would exceed [`MAX_DATAGRAM_BYTES`].
    pub fn seal(&self, stamp: &Stamp, payload: &[u8]) -> Result<Vec<u8>, AuthError> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(AuthError::TooLarge {
                size: payload.len() + HEADER_BYTES + MAC_BYTES,
                limit: MAX_DATAGRAM_BYTES,
            });
        }
        let mut out = Vec::with_capacity(payload.len() + HEADER_BYTES + MAC_BYTES);
        out.push(DATAGRAM_VERSION);
        out.extend_from_slice(&stamp.sender.to_be_bytes());
        out.extend_from_slice(&stamp.epoch.to_be_bytes());
        out.extend_from_slice(&stamp.counter.to_be_bytes());
        out.extend_from_slice(payload);
        let mac = self.mac(&out);
        out.extend_from_slice(&mac);
        Ok(out)
    }

    /// Checks a received datagram and returns its stamp and payload.
    ///
    /// # Errors
    /// [`AuthError`] naming why the datagram was refused.
    pub fn open<'a>(&self, datagram: &'a [u8]) -> Result<(Stamp, &'a [u8]), AuthError> {
        if datagram.len() > MAX_DATAGRAM_BYTES {
            return Err(AuthError::TooLarge {
                size: datagram.len(),
                limit: MAX_DATAGRAM_BYTES,
            });
        }
        if datagram.len() < HEADER_BYTES + MAC_BYTES {
            return Err(AuthError::TooShort {
                size: datagram.len(),
            });
        }
        let (body, mac) = datagram.split_at(datagram.len() - MAC_BYTES);
        if body.first() != Some(&DATAGRAM_VERSION) {
            return Err(AuthError::UnknownVersion { version: body[0] });
        }
        let mut ok = false;
        for key in self.keys() {
            ok |= equal(&Self::mac_with(key, body), mac);
        }
        if !ok {
            return Err(AuthError::BadMac);
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&body[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let stamp = Stamp {
            sender: u64_at(1),
            epoch: u64_at(9),
            counter: u64_at(17),
        };
        Ok((stamp, &body[HEADER_BYTES..]))
    }
}

/// Whether two byte strings are equal, without an early exit (so timing does not
/// tell how many bytes matched).
fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
        let stamp = Stamp {
            sender: 7,
            epoch: 9,
            counter: 11,
        };
        let sealed = key.seal(&stamp, b"hello").expect("fits");
        assert_eq!(key.open(&sealed).expect("valid"), (stamp, &b"hello"[..]));
        // The stamp is under the MAC: changing it breaks the datagram.
        let mut restamped = sealed.clone();
        restamped[HEADER_BYTES - 1] ^= 1;
        assert_eq!(key.open(&restamped), Err(AuthError::BadMac));
        let other = ClusterKey::derive(b"other");
        assert_eq!(other.open(&sealed), Err(AuthError::BadMac));
        let mut tampered = sealed.clone();
        tampered[HEADER_BYTES + 2] ^= 1;
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
            key.seal(&stamp, &[0; MAX_PAYLOAD_BYTES + 1]),
            Err(AuthError::TooLarge { .. })
        ));
        assert_eq!(
            key.seal(&stamp, &[0; MAX_PAYLOAD_BYTES])
                .expect("fits")
                .len(),
            MAX_DATAGRAM_BYTES
        );
        // A datagram of the old format (no stamp) is refused.
        let mut old = sealed.clone();
        old[0] = 1;
        assert_eq!(
            key.open(&old),
            Err(AuthError::UnknownVersion { version: 1 })
        );
        assert!(matches!(
            key.open(&[0; MAX_DATAGRAM_BYTES + 1]),
            Err(AuthError::TooLarge { .. })
        ));
        assert_eq!(format!("{key:?}"), "ClusterKey(..)");
    }

    #[test]
    fn a_rotating_key_signs_with_one_and_accepts_both() {
        let old = ClusterKey::derive(b"old secret material");
        let new = ClusterKey::derive(b"new secret material");
        let stamp = Stamp {
            sender: 1,
            epoch: 1,
            counter: 1,
        };
        // Phase 1: sign old, accept new; phase 2: sign new, accept old.
        let one = old.clone().also_accepting(&new);
        let two = new.clone().also_accepting(&old);
        for (signer, checker) in [(&one, &two), (&two, &one), (&old, &two), (&new, &one)] {
            let d = signer.seal(&stamp, b"x").expect("seal");
            assert!(checker.open(&d).is_ok());
            let t = signer.tag(b"d", b"data");
            assert!(checker.verify_tag(b"d", b"data", &t));
            assert!(!checker.verify_tag(b"e", b"data", &t), "domains stay apart");
        }
        // Phase 3: only the new one; the old secret no longer gets in.
        let d = old.seal(&stamp, b"x").expect("seal");
        assert_eq!(new.open(&d), Err(AuthError::BadMac));
        assert!(!new.verify_tag(b"d", b"data", &old.tag(b"d", b"data")));
        assert_eq!(one.derived(b"ctx").len(), 2);
        assert_eq!(one.derived(b"ctx")[0], old.derived(b"ctx")[0]);
    }

    proptest! {
        #[test]
        fn random_bytes_never_authenticate(raw in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let key = ClusterKey::derive(b"k");
            prop_assert!(key.open(&raw).is_err());
        }
    }
}
