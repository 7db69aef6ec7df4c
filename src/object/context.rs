//! Causal contexts: what a client hands back with a write to say which versions it
//! has seen. Unforgeable and bound to their key.
//!
//! A context decides which siblings a write replaces, so a client that could make
//! one up could erase writes it never saw (review A3: `{B: u64::MAX}` made every
//! later write coordinated by B vanish). Every context a node hands out is signed
//! with a key every member of the cluster derives from the cluster secret: a
//! keyed-blake3 MAC over the key it was issued for and the encoded clock. Nodes
//! accept only contexts they can verify; clients can still read the clock (the
//! simulation's checker does) and merge contexts of one key.
//!
//! ```text
//! context  u8 version (2) | postcard of the parts, at most MAX_PARTS
//! part     clock (a version vector) | 16-byte MAC over ("ringkv context v2", key, clock)
//! ```
//!
//! A merged context keeps each part whole (a client cannot sign their join), minus
//! the parts another part dominates; a node verifies each and joins them.

use crdts::{CvRDT, VClock};
use serde::{Deserialize, Serialize};

use super::{Actor, ObjectError};

/// Leading byte of a signed context.
pub const CONTEXT_VERSION: u8 = 2;
/// The version byte of the unsigned contexts of earlier releases, refused now.
const UNSIGNED_VERSION: u8 = 1;
/// Most parts a context may hold (contexts of concurrent replies merged by a client).
pub const MAX_PARTS: usize = 8;
/// Bytes of a part's MAC (a truncated keyed blake3: forging one is a 2^-128 guess).
const MAC_BYTES: usize = 16;
/// Domain of the MAC, so no other use of the key produces the same tags.
const DOMAIN: &[u8] = b"ringkv context v2";

/// An opaque causal context handed to clients with every register read and write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context(pub Vec<u8>);

impl Default for Context {
    fn default() -> Self {
        Context::empty()
    }
}

/// One signed clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Part {
    clock: VClock<Actor>,
    mac: [u8; MAC_BYTES],
}

/// [`Part`] by reference, for signing without copying the clock: the same fields in
/// the same order, so the same bytes.
#[derive(Serialize)]
struct PartRef<'a> {
    clock: &'a VClock<Actor>,
    mac: [u8; MAC_BYTES],
}

fn invalid(reason: impl Into<String>) -> ObjectError {
    ObjectError::InvalidContext {
        reason: reason.into(),
    }
}

impl Context {
    /// The empty context (a blind write): it covers nothing, so it needs no MAC.
    pub fn empty() -> Context {
        Context(vec![CONTEXT_VERSION, 0])
    }

    fn parts(&self) -> Result<Vec<Part>, ObjectError> {
        let Some((&version, body)) = self.0.split_first() else {
            return Ok(Vec::new());
        };
        match version {
            CONTEXT_VERSION => {}
            // The unsigned empty context older clients were given for keys not found
            // grants nothing: still fine. Anything else of that format is refused.
            UNSIGNED_VERSION if body == [0] => return Ok(Vec::new()),
            UNSIGNED_VERSION => {
                return Err(invalid(
                    "an unsigned context from an earlier ringkv release; read the key again for a current one",
                ));
            }
            other => return Err(invalid(format!("unknown context version {other}"))),
        }
        let parts: Vec<Part> = match postcard::take_from_bytes(body) {
            Ok((parts, [])) => parts,
            Ok((_, rest)) => return Err(invalid(format!("{} trailing bytes", rest.len()))),
            Err(e) => return Err(invalid(format!("malformed: {e}"))),
        };
        if parts.len() > MAX_PARTS {
            return Err(invalid(format!(
                "{} parts, more than the {MAX_PARTS} a context may merge",
                parts.len()
            )));
        }
        Ok(parts)
    }

    fn from_parts(parts: &[Part]) -> Context {
        let mut out = vec![CONTEXT_VERSION];
        // Serialising clocks and byte arrays into a Vec cannot fail.
        postcard::to_io(parts, &mut out).expect("a context always serialises");
        Context(out)
    }

    /// The clock inside (the join of its parts), without checking the MACs: what a
    /// client may learn from a context. Nodes use [`ContextKey::verify`].
    ///
    /// # Errors
    /// [`ObjectError::InvalidContext`] for bytes that are not a context.
    pub fn clock(&self) -> Result<VClock<Actor>, ObjectError> {
        let mut clock = VClock::new();
        for part in self.parts()? {
            clock.merge(part.clock);
        }
        Ok(clock)
    }

    /// Whether the context covers nothing (a write with it is blind).
    pub fn is_empty(&self) -> bool {
        self.parts()
            .is_ok_and(|p| p.iter().all(|p| p.clock.is_empty()))
    }

    /// A context covering both (for a client that keeps the contexts of several
    /// reads and writes of one key): a write carrying it replaces everything either
    /// context saw. Parts another part dominates are dropped.
    ///
    /// # Errors
    /// [`ObjectError::InvalidContext`] if either is not a context, or if more than
    /// [`MAX_PARTS`] concurrent parts would remain (read the key again: its context
    /// covers them all in one part).
    pub fn merge(&self, other: &Context) -> Result<Context, ObjectError> {
        let mut parts = self.parts()?;
        for p in other.parts()? {
            if parts.iter().any(|q| q.clock >= p.clock) {
                continue;
            }
            // Drop what the new part dominates (incomparable parts stay).
            parts.retain(|q| {
                !matches!(
                    p.clock.partial_cmp(&q.clock),
                    Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
                )
            });
            parts.push(p);
        }
        if parts.len() > MAX_PARTS {
            return Err(invalid(format!(
                "merging would keep more than {MAX_PARTS} concurrent contexts; read the key again"
            )));
        }
        Ok(Context::from_parts(&parts))
    }

    /// URL-safe base64 text, as printed by the CLI.
    pub fn to_text(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.0)
    }

    /// Parses the CLI text form (the MACs are checked by the node).
    ///
    /// # Errors
    /// [`ObjectError::InvalidContext`] for text that is not a context.
    pub fn from_text(text: &str) -> Result<Context, ObjectError> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|e| invalid(format!("not base64: {e}")))?;
        let ctx = Context(bytes);
        ctx.parts()?;
        Ok(ctx)
    }
}

/// The key that signs and verifies contexts: the same on every node of a cluster.
/// During a secret rotation it also accepts contexts of the other secret.
#[derive(Clone)]
pub struct ContextKey {
    /// The signing key first.
    keys: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ContextKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContextKey(..)")
    }
}

impl ContextKey {
    /// The context key of a cluster.
    pub fn of_cluster(key: &ringkv_gossip::ClusterKey) -> ContextKey {
        ContextKey {
            keys: key.derived(b"ringkv context mac key v1"),
        }
    }

    fn mac(&self, key: &[u8], clock: &VClock<Actor>) -> [u8; MAC_BYTES] {
        self.mac_with(&self.keys[0], key, clock)
    }

    fn mac_with(&self, with: &[u8; 32], key: &[u8], clock: &VClock<Actor>) -> [u8; MAC_BYTES] {
        let mut h = blake3::Hasher::new_keyed(with);
        h.update(DOMAIN);
        h.update(&(key.len() as u64).to_be_bytes());
        h.update(key);
        // A map of integers always serialises; its encoding is canonical (sorted).
        // Streamed into the hash: no copy of the encoding.
        postcard::to_io(clock, &mut h).expect("a clock always serialises");
        let mut out = [0u8; MAC_BYTES];
        out.copy_from_slice(&h.finalize().as_bytes()[..MAC_BYTES]);
        out
    }

    /// A context for `clock`, valid only with `key`.
    pub fn sign(&self, key: &[u8], clock: &VClock<Actor>) -> Context {
        if clock.is_empty() {
            return Context::empty();
        }
        let mut out = vec![CONTEXT_VERSION];
        let part = PartRef {
            clock,
            mac: self.mac(key, clock),
        };
        postcard::to_io(std::slice::from_ref(&part), &mut out)
            .expect("a context always serialises");
        Context(out)
    }

    /// The clock of a context a node of this cluster issued for `key`.
    ///
    /// # Errors
    /// [`ObjectError::InvalidContext`] if it is malformed, unsigned, or was not
    /// issued for `key` by this cluster (forged, altered, another key's).
    pub fn verify(&self, key: &[u8], ctx: &Context) -> Result<VClock<Actor>, ObjectError> {
        let mut clock = VClock::new();
        for part in ctx.parts()? {
            // No early exit, so timing does not tell how many bytes matched.
            let mut ok = false;
            for with in &self.keys {
                let expected = self.mac_with(with, key, &part.clock);
                let diff = expected
                    .iter()
                    .zip(part.mac.iter())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b));
                ok |= diff == 0;
            }
            if !ok {
                return Err(invalid(
                    "the context was not issued for this key by this cluster (altered, forged, or another key's); use the context of a read of this key",
                ));
            }
            clock.merge(part.clock);
        }
        Ok(clock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crdts::{CmRDT, Dot};
    use proptest::prelude::*;

    fn clock(entries: &[(Actor, u64)]) -> VClock<Actor> {
        let mut c = VClock::new();
        for &(a, n) in entries {
            c.apply(Dot::new(a, n));
        }
        c
    }

    fn key() -> ContextKey {
        ContextKey::of_cluster(&ringkv_gossip::ClusterKey::derive(b"test"))
    }

    #[test]
    fn contexts_survive_a_secret_rotation_and_not_beyond_it() {
        use ringkv_gossip::ClusterKey;
        let old = ClusterKey::derive(b"old secret");
        let new = ClusterKey::derive(b"new secret");
        let c = clock(&[(1, 3)]);
        // Issued before or during the rotation, read by a node further along.
        let before = ContextKey::of_cluster(&old).sign(b"k", &c);
        let phase1 = ContextKey::of_cluster(&old.clone().also_accepting(&new));
        let phase2 = ContextKey::of_cluster(&new.clone().also_accepting(&old));
        assert_eq!(phase1.verify(b"k", &before), Ok(c.clone()));
        assert_eq!(phase2.verify(b"k", &before), Ok(c.clone()));
        assert_eq!(phase1.verify(b"k", &phase2.sign(b"k", &c)), Ok(c.clone()));
        // Once only the new secret is left, the old one's contexts are refused.
        let after = ContextKey::of_cluster(&new);
        assert!(after.verify(b"k", &before).is_err());
        assert_eq!(after.verify(b"k", &phase2.sign(b"k", &c)), Ok(c));
    }

    #[test]
    fn signed_contexts_verify_for_their_key_only() {
        let k = key();
        let c = clock(&[(1, 3), (2, 5)]);
        let ctx = k.sign(b"k1", &c);
        assert_eq!(k.verify(b"k1", &ctx), Ok(c.clone()));
        assert_eq!(ctx.clock(), Ok(c.clone()));
        assert!(
            k.verify(b"k2", &ctx).is_err(),
            "another key's context is refused"
        );
        let other = ContextKey::of_cluster(&ringkv_gossip::ClusterKey::derive(b"other"));
        assert!(other.verify(b"k1", &ctx).is_err(), "another cluster's too");
        // Every single-bit change and every truncation is refused.
        for at in 0..ctx.0.len() {
            for bit in 0..8 {
                let mut bad = ctx.clone();
                bad.0[at] ^= 1 << bit;
                assert!(k.verify(b"k1", &bad).is_err(), "bit {bit} of byte {at}");
            }
        }
        for len in 1..ctx.0.len() {
            let cut = Context(ctx.0[..len].to_vec());
            assert!(k.verify(b"k1", &cut).is_err(), "cut at {len}");
        }
    }

    #[test]
    fn signing_by_reference_encodes_as_the_owned_parts() {
        let k = key();
        let c = clock(&[(1, 3), (7, 1)]);
        let signed = k.sign(b"k", &c);
        let owned = Context::from_parts(&[Part {
            clock: c.clone(),
            mac: k.mac(b"k", &c),
        }]);
        assert_eq!(signed, owned);
    }

    #[test]
    fn unsigned_contexts_of_earlier_releases_are_refused_with_a_reason() {
        let k = key();
        let mut forged = vec![UNSIGNED_VERSION];
        forged.extend(postcard::to_stdvec(&clock(&[(2, u64::MAX)])).expect("ser"));
        let err = k.verify(b"k", &Context(forged)).expect_err("refused");
        assert!(err.to_string().contains("earlier ringkv release"), "{err}");
        // The old empty context still means "blind".
        assert_eq!(
            k.verify(b"k", &Context(vec![UNSIGNED_VERSION, 0])),
            Ok(VClock::new())
        );
        assert_eq!(k.verify(b"k", &Context::empty()), Ok(VClock::new()));
        assert_eq!(k.verify(b"k", &Context(Vec::new())), Ok(VClock::new()));
        assert!(k.verify(b"k", &Context(vec![9, 0])).is_err());
        assert!(Context::empty().is_empty());
        assert_eq!(k.sign(b"k", &VClock::new()), Context::empty());
    }

    #[test]
    fn merged_contexts_keep_what_is_concurrent_and_verify_whole() {
        let k = key();
        let a = k.sign(b"k", &clock(&[(1, 2)]));
        let b = k.sign(b"k", &clock(&[(2, 1)]));
        let older = k.sign(b"k", &clock(&[(1, 1)]));
        let m = a.merge(&b).expect("merge").merge(&older).expect("merge");
        assert_eq!(
            m.parts().expect("parts").len(),
            2,
            "the older part is dominated"
        );
        let joined = k.verify(b"k", &m).expect("verifies");
        assert_eq!(joined, clock(&[(1, 2), (2, 1)]));
        assert_eq!(m.clock(), Ok(joined));
        // A later context that covers both replaces them.
        let later = k.sign(b"k", &clock(&[(1, 2), (2, 1), (3, 1)]));
        assert_eq!(m.merge(&later).expect("merge"), later);
        // At most MAX_PARTS concurrent parts.
        let mut many = Context::empty();
        for actor in 0..MAX_PARTS as u64 {
            many = many
                .merge(&k.sign(b"k", &clock(&[(actor, 1)])))
                .expect("merge");
        }
        assert!(many.merge(&k.sign(b"k", &clock(&[(99, 1)]))).is_err());
        // Parts for different keys merged by a confused client do not verify.
        let mixed = a
            .merge(&k.sign(b"other", &clock(&[(5, 5)])))
            .expect("merge");
        assert!(k.verify(b"k", &mixed).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_or_verify(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let k = key();
            let ctx = Context(raw);
            let _ = ctx.clock();
            let _ = ctx.merge(&Context::empty());
            if let Ok(clock) = k.verify(b"k", &ctx) {
                // Only what carries no claim verifies without a MAC.
                prop_assert!(clock.is_empty());
            }
        }
    }
}
