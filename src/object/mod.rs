//! The values a key can hold: registers (DVVSet), counters (PN-counter) and sets
//! (OR-set), with their canonical encoding and digest.
//!
//! Every kind merges commutatively, associatively and idempotently, and equal logical
//! states encode to identical bytes, so `blake3(key ‖ bytes)` compares replicas.

mod context;
mod counter;
mod register;
mod set;

pub use context::{Context, ContextKey};
pub use counter::Counter;
pub use register::{Register, Sibling};
pub use set::Set;

use serde::{Deserialize, Serialize};

/// A replica's identity inside clocks: a random 64-bit id minted when a data directory
/// is created (so a wiped node never reuses its old dots).
pub type Actor = u64;

/// Leading byte of every encoded object (contexts have their own, see [`Context`]).
pub const FORMAT_VERSION: u8 = 1;

/// The kind of object a key holds, fixed by its first write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Multi-value register of bytes.
    Register,
    /// PN-counter.
    Counter,
    /// OR-set of byte strings.
    Set,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Register => "register",
            Kind::Counter => "counter",
            Kind::Set => "set",
        })
    }
}

/// Errors of object operations and decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// The key holds another kind of object.
    #[error("key holds a {stored}, not a {requested}")]
    WrongKind {
        /// Kind of the stored object.
        stored: Kind,
        /// Kind the operation needs.
        requested: Kind,
    },
    /// A write would leave more siblings than allowed.
    #[error(
        "key has {count} siblings (limit {limit}): read it and write with its context to resolve them"
    )]
    TooManySiblings {
        /// Siblings the write would leave.
        count: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A causal context that cannot be used.
    #[error("invalid context: {reason}")]
    InvalidContext {
        /// Why it was refused.
        reason: String,
    },
    /// Bytes that are not a valid object.
    #[error("corrupt object: {reason}")]
    Corrupt {
        /// What was wrong.
        reason: String,
    },
    /// An encoding from a newer (or unknown) format.
    #[error("unsupported object format version {found}")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// A counter outside the `i128` range.
    #[error("counter value out of range")]
    Overflow,
    /// An increment that would take one replica's running total of a counter's
    /// increments (or decrements) past `u64::MAX`: refused, nothing changed.
    #[error(
        "counter increment refused: this replica's total of {direction} would pass {max} (counters hold at most that per replica and direction)",
        max = u64::MAX
    )]
    CounterOverflow {
        /// `increments` or `decrements`.
        direction: &'static str,
    },
    /// A version counter that cannot grow any more (only reachable through corrupt
    /// or forged state).
    #[error("version counter of actor {actor:016x} is exhausted")]
    DotsExhausted {
        /// The actor.
        actor: Actor,
    },
}

/// One key's object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    /// A register.
    Register(Register),
    /// A counter.
    Counter(Counter),
    /// A set.
    Set(Set),
}

#[derive(Serialize, Deserialize)]
enum Repr {
    Register(Register),
    Counter(Counter),
    Set(set::SetRepr),
}

/// [`Repr`] by reference, for encoding without copying the object: the same
/// variants in the same order, so the bytes are the same.
#[derive(Serialize)]
enum ReprRef<'a> {
    Register(&'a Register),
    Counter(&'a Counter),
    Set(set::SetRepr),
}

impl Object {
    /// An empty object of `kind`.
    pub fn empty(kind: Kind) -> Object {
        match kind {
            Kind::Register => Object::Register(Register::new()),
            Kind::Counter => Object::Counter(Counter::new()),
            Kind::Set => Object::Set(Set::new()),
        }
    }

    /// Whether this is a register with no live value (only tombstones): what
    /// acknowledged reaping may remove.
    pub fn is_tombstone(&self) -> bool {
        matches!(self, Object::Register(r) if r.is_deleted())
    }

    /// The kind of this object.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Register(_) => Kind::Register,
            Object::Counter(_) => Kind::Counter,
            Object::Set(_) => Kind::Set,
        }
    }

    /// Merges `other` into `self`.
    ///
    /// # Errors
    /// [`ObjectError::WrongKind`] if the kinds differ (nothing changes).
    pub fn merge(&mut self, other: &Object) -> Result<(), ObjectError> {
        match (self, other) {
            (Object::Register(a), Object::Register(b)) => a.merge(b),
            (Object::Counter(a), Object::Counter(b)) => a.merge(b),
            (Object::Set(a), Object::Set(b)) => a.merge(b),
            (a, b) => {
                return Err(ObjectError::WrongKind {
                    stored: a.kind(),
                    requested: b.kind(),
                });
            }
        }
        Ok(())
    }

    /// The canonical encoding: version byte, then postcard of sorted contents.
    ///
    /// # Errors
    /// [`ObjectError::Corrupt`] only if serialisation itself fails.
    pub fn encode(&self) -> Result<Vec<u8>, ObjectError> {
        let repr = match self {
            Object::Register(r) => ReprRef::Register(r),
            Object::Counter(c) => ReprRef::Counter(c),
            Object::Set(s) => ReprRef::Set(s.to_repr()?),
        };
        let mut out = Vec::with_capacity(64);
        out.push(FORMAT_VERSION);
        postcard::to_extend(&repr, out).map_err(|e| ObjectError::Corrupt {
            reason: format!("cannot encode: {e}"),
        })
    }

    /// Decodes bytes from disk or the network; never panics on bad input.
    ///
    /// # Errors
    /// [`ObjectError::UnsupportedVersion`] or [`ObjectError::Corrupt`].
    pub fn decode(bytes: &[u8]) -> Result<Object, ObjectError> {
        let (&version, body) = bytes.split_first().ok_or(ObjectError::Corrupt {
            reason: "empty encoding".into(),
        })?;
        if version != FORMAT_VERSION {
            return Err(ObjectError::UnsupportedVersion { found: version });
        }
        let (repr, rest): (Repr, _) =
            postcard::take_from_bytes(body).map_err(|e| ObjectError::Corrupt {
                reason: e.to_string(),
            })?;
        if !rest.is_empty() {
            return Err(ObjectError::Corrupt {
                reason: format!("{} trailing bytes", rest.len()),
            });
        }
        Ok(match repr {
            Repr::Register(r) => {
                r.validate()?;
                Object::Register(r)
            }
            Repr::Counter(c) => Object::Counter(c),
            Repr::Set(s) => Object::Set(Set::from_repr(&s)?),
        })
    }

    /// Digest of this object under `key` (the same function the store's Merkle trees use).
    ///
    /// # Errors
    /// As [`Object::encode`].
    pub fn digest(&self, key: &[u8]) -> Result<[u8; 32], ObjectError> {
        Ok(ringkv_storage::object_digest(key, &self.encode()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crdts::VClock;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Write(u8, Option<u8>, bool),
        Add(u8, i8),
        SetAdd(u8, u8),
        SetRemove(u8, u8),
        Sync(u8, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3u8, proptest::option::of(0..3u8), any::<bool>())
                .prop_map(|(a, c, d)| Op::Write(a, c, d)),
            (0..3u8, any::<i8>()).prop_map(|(a, d)| Op::Add(a, d)),
            (0..3u8, 0..5u8).prop_map(|(a, m)| Op::SetAdd(a, m)),
            (0..3u8, 0..5u8).prop_map(|(a, m)| Op::SetRemove(a, m)),
            (0..3u8, 0..3u8).prop_map(|(a, b)| Op::Sync(a, b)),
        ]
    }

    /// Three replicas of each kind after a random history.
    fn histories(ops: &[Op]) -> [Vec<Object>; 3] {
        let mut regs = vec![Register::new(); 3];
        let mut ctrs = vec![Counter::new(); 3];
        let mut sets = vec![Set::new(); 3];
        let mut n = 0u32;
        for op in ops {
            match *op {
                Op::Write(a, ctx, del) => {
                    let ctx = ctx
                        .map(|c| regs[c as usize].context().clone())
                        .unwrap_or_default();
                    n += 1;
                    let v = (!del).then(|| n.to_be_bytes().to_vec());
                    regs[a as usize]
                        .write(u64::from(a), &ctx, v)
                        .expect("valid");
                }
                Op::Add(a, d) => ctrs[a as usize]
                    .add(u64::from(a), i64::from(d))
                    .expect("small deltas"),
                Op::SetAdd(a, m) => sets[a as usize]
                    .add(u64::from(a), vec![m])
                    .expect("small clocks"),
                Op::SetRemove(a, m) => {
                    sets[a as usize].remove(&[m]);
                }
                Op::Sync(a, b) => {
                    let r = regs[a as usize].clone();
                    regs[b as usize].merge(&r);
                    let c = ctrs[a as usize].clone();
                    ctrs[b as usize].merge(&c);
                    let s = sets[a as usize].clone();
                    sets[b as usize].merge(&s);
                }
            }
        }
        [
            regs.into_iter().map(Object::Register).collect(),
            ctrs.into_iter().map(Object::Counter).collect(),
            sets.into_iter().map(Object::Set).collect(),
        ]
    }

    fn merged(a: &Object, b: &Object) -> Object {
        let mut out = a.clone();
        out.merge(b).expect("same kind");
        out
    }

    fn bytes(o: &Object) -> Vec<u8> {
        o.encode().expect("encodes")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn merge_laws_hold_and_encodings_agree(ops in proptest::collection::vec(op(), 0..40)) {
            for kind in histories(&ops) {
                let (a, b, c) = (&kind[0], &kind[1], &kind[2]);
                // Commutative, on the canonical bytes (equal states, equal encodings).
                prop_assert_eq!(bytes(&merged(a, b)), bytes(&merged(b, a)));
                // Associative.
                prop_assert_eq!(bytes(&merged(&merged(a, b), c)), bytes(&merged(a, &merged(b, c))));
                // Idempotent.
                prop_assert_eq!(bytes(&merged(a, a)), bytes(a));
                prop_assert_eq!(bytes(&merged(&merged(a, b), b)), bytes(&merged(a, b)));
                // Round trip.
                for o in [a, b, c] {
                    prop_assert_eq!(&Object::decode(&bytes(o)).expect("decodes"), o);
                    prop_assert_eq!(o.digest(b"k").expect("digest"), merged(o, o).digest(b"k").expect("digest"));
                }
            }
        }

        #[test]
        fn decode_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Object::decode(&raw);
        }
    }

    #[test]
    fn wrong_kind_merge_is_refused() {
        let mut a = Object::empty(Kind::Register);
        let b = Object::empty(Kind::Counter);
        assert_eq!(
            a.merge(&b),
            Err(ObjectError::WrongKind {
                stored: Kind::Register,
                requested: Kind::Counter
            })
        );
    }

    #[test]
    fn encoding_by_reference_is_the_owned_encoding() {
        let mut r = Register::new();
        r.write(1, &VClock::new(), Some(vec![7u8; 300]))
            .expect("write");
        r.write(2, &VClock::new(), None).expect("write");
        let owned = postcard::to_allocvec(&Repr::Register(r.clone())).expect("ser");
        let obj = Object::Register(r);
        assert_eq!(obj.encode().expect("encode")[1..], owned[..]);
        assert_eq!(Object::decode(&obj.encode().expect("encode")), Ok(obj));
    }

    #[test]
    fn unknown_versions_are_refused() {
        let mut raw = Object::empty(Kind::Set).encode().expect("encodes");
        raw[0] = 9;
        assert_eq!(
            Object::decode(&raw),
            Err(ObjectError::UnsupportedVersion { found: 9 })
        );
    }

    #[test]
    fn context_text_round_trips() {
        let key = ContextKey::of_cluster(&ringkv_gossip::ClusterKey::derive(b"t"));
        let mut r = Register::new();
        r.write(42, &VClock::new(), Some(b"x".to_vec()))
            .expect("write");
        let ctx = key.sign(b"k", r.context());
        let back = Context::from_text(&ctx.to_text()).expect("parses");
        assert_eq!(key.verify(b"k", &back), Ok(r.context().clone()));
        assert!(Context::from_text("!!").is_err());
        assert!(Context::from_text("AAAA").is_err());
        assert!(ctx.merge(&Context(vec![9, 9])).is_err());
    }
}
