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
    ///
    /// Each replica keeps running totals of its increments and of its decrements
    /// (`u64`s, merged by maximum): a total that would wrap would be a lower number
    /// that the merge ignores, losing the increment (review C7), so it is refused.
    ///
    /// # Errors
    /// [`ObjectError::CounterOverflow`] (nothing changed).
    pub fn add(&mut self, actor: Actor, delta: i64) -> Result<(), ObjectError> {
        let steps = delta.unsigned_abs();
        // With no steps, crdts returns the current total.
        let (total, direction) = if delta >= 0 {
            (self.inner.inc_many(actor, 0).dot.counter, "increments")
        } else {
            (self.inner.dec_many(actor, 0).dot.counter, "decrements")
        };
        if total.checked_add(steps).is_none() {
            return Err(ObjectError::CounterOverflow { direction });
        }
        let op = if delta >= 0 {
            self.inner.inc_many(actor, steps)
        } else {
            self.inner.dec_many(actor, steps)
        };
        self.inner.apply(op);
        Ok(())
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
        a.add(1, 5).expect("add");
        b.add(2, -3).expect("add");
        a.merge(&b);
        assert_eq!(a.value().expect("fits"), 2);
        a.merge(&b);
        assert_eq!(a.value().expect("fits"), 2);
        a.add(1, i64::MIN).expect("add");
        assert_eq!(a.value().expect("fits"), 2 + i128::from(i64::MIN));
    }

    #[test]
    fn a_total_that_would_wrap_is_refused_and_nothing_is_lost() {
        // Review C7: three adds of i64::MAX wrapped the replica's total in release
        // builds (the third increment acknowledged and lost) and panicked in debug.
        let mut c = Counter::new();
        c.add(1, i64::MAX).expect("first");
        c.add(1, i64::MAX).expect("second");
        let before = c.clone();
        assert_eq!(
            c.add(1, i64::MAX),
            Err(ObjectError::CounterOverflow {
                direction: "increments"
            })
        );
        assert_eq!(c, before, "a refused add changes nothing");
        assert_eq!(c.value(), Ok(2 * i128::from(i64::MAX)));
        // Another replica's total is its own.
        c.add(2, i64::MAX).expect("other actor");
        assert_eq!(c.value(), Ok(3 * i128::from(i64::MAX)));
        // Decrements have their own total.
        c.add(1, -1).expect("decrement");
        assert_eq!(c.value(), Ok(3 * i128::from(i64::MAX) - 1));
    }
}
