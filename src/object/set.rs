//! The set: an observed-remove set of byte strings (`crdts::Orswot`); a concurrent add
//! wins over a remove.

use crdts::{CmRDT, CvRDT, Orswot};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::{Actor, ObjectError};

/// An add-wins set of byte strings.
#[derive(Clone, Debug, Default)]
pub struct Set {
    inner: Orswot<Vec<u8>, Actor>,
}

impl PartialEq for Set {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner
    }
}
impl Eq for Set {}

/// The canonical, sorted form of an `Orswot` (which keeps hash maps inside).
///
/// In postcard a map and a sequence of pairs encode identically, and a `VClock` encodes
/// as its inner map, so these bytes decode directly as an `Orswot`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct SetRepr {
    clock: Clock,
    entries: Vec<(Vec<u8>, Clock)>,
    deferred: Vec<(Clock, Vec<Vec<u8>>)>,
}

/// A version vector as postcard sees it.
type Clock = BTreeMap<Actor, u64>;

impl Set {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `member` on behalf of `actor`.
    ///
    /// # Errors
    /// [`ObjectError::DotsExhausted`] if `actor`'s count cannot grow (corrupt state).
    pub fn add(&mut self, actor: Actor, member: Vec<u8>) -> Result<(), ObjectError> {
        let read = self.inner.read_ctx();
        if read.add_clock.get(&actor) == u64::MAX {
            return Err(ObjectError::DotsExhausted { actor });
        }
        let ctx = read.derive_add_ctx(actor);
        let op = self.inner.add(member, ctx);
        self.inner.apply(op);
        Ok(())
    }

    /// Removes `member` as this replica has observed it; returns whether it was present.
    pub fn remove(&mut self, member: &[u8]) -> bool {
        let read = self.inner.contains(&member.to_vec());
        let present = read.val;
        if present {
            let op = self.inner.rm(member.to_vec(), read.derive_rm_ctx());
            self.inner.apply(op);
        }
        present
    }

    /// Merges another replica's set.
    pub fn merge(&mut self, other: &Set) {
        self.inner.merge(other.inner.clone());
    }

    /// Members in sorted order.
    pub fn members(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = self.inner.read().val.into_iter().collect();
        out.sort();
        out
    }

    pub(super) fn to_repr(&self) -> Result<SetRepr, ObjectError> {
        let raw = postcard::to_allocvec(&self.inner).map_err(|e| ObjectError::Corrupt {
            reason: format!("set does not serialise: {e}"),
        })?;
        let mut repr: SetRepr = postcard::from_bytes(&raw).map_err(|e| ObjectError::Corrupt {
            reason: format!("set layout changed: {e}"),
        })?;
        repr.entries.sort();
        for (_, members) in &mut repr.deferred {
            members.sort();
        }
        repr.deferred.sort();
        Ok(repr)
    }

    pub(super) fn from_repr(repr: &SetRepr) -> Result<Set, ObjectError> {
        let raw = postcard::to_allocvec(repr).map_err(|e| ObjectError::Corrupt {
            reason: format!("set does not serialise: {e}"),
        })?;
        let inner = postcard::from_bytes(&raw).map_err(|e| ObjectError::Corrupt {
            reason: format!("set layout changed: {e}"),
        })?;
        Ok(Set { inner })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_wins_over_concurrent_remove() {
        let mut a = Set::new();
        a.add(1, b"x".to_vec()).expect("add");
        let mut b = a.clone();
        assert!(b.remove(b"x"));
        a.add(1, b"x".to_vec()).expect("add");
        b.merge(&a);
        assert_eq!(b.members(), vec![b"x".to_vec()]);
        assert!(!b.remove(b"nope"));
    }

    #[test]
    fn repr_round_trips() {
        let mut a = Set::new();
        for i in 0..20u8 {
            a.add(u64::from(i % 3), vec![i]).expect("add");
        }
        a.remove(&[4]);
        let back = Set::from_repr(&a.to_repr().expect("repr")).expect("back");
        assert_eq!(back, a);
    }
}
