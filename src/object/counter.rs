//! The counter: a PN-counter (`crdts::PNCounter`) that any replica may add to.

use crdts::{CmRDT, CvRDT, PNCounter};
use num_traits::ToPrimitive;
use serde::{Deserialize, Serialize};

use super::{Actor, ObjectError};

/// A counter incremented by signed deltas; merges without siblings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    inner: PNCounter<Actor>,
}

impl Counter {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `delta` (which may be negative) on behalf of `actor`.
    pub fn add(&mut self, actor: Actor, delta: i64) {
        let op = if delta >= 0 {
            self.inner.inc_many(actor, delta.unsigned_abs())
        } else {
            self.inner.dec_many(actor, delta.unsigned_abs())
        };
        self.inner.apply(op);
    }

    /// Merges another replica's counter.
    pub fn merge(&mut self, other: &Counter) {
        self.inner.merge(other.inner.clone());
    }

    /// The current value.
    ///
    /// # Errors
    /// [`ObjectError::Overflow`] if the value does not fit in an `i128`.
    pub fn value(&self) -> Result<i128, ObjectError> {
        self.inner.read().to_i128().ok_or(ObjectError::Overflow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_and_subtracts_across_replicas() {
        let mut a = Counter::new();
        let mut b = Counter::new();
        a.add(1, 5);
        b.add(2, -3);
        a.merge(&b);
        assert_eq!(a.value().expect("fits"), 2);
        a.merge(&b);
        assert_eq!(a.value().expect("fits"), 2);
        a.add(1, i64::MIN);
        assert_eq!(a.value().expect("fits"), 2 + i128::from(i64::MIN));
    }
}
