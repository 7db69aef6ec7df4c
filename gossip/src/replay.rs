//! Dropping replayed gossip datagrams. Every datagram carries, under its MAC, the
//! sender, the sender's epoch and a counter ([`crate::auth::Stamp`]); a receiver
//! keeps per sender the newest epoch and a 64-wide window of counters below the
//! highest seen (as IPsec does), so reordering within the window is accepted and a
//! datagram seen before, or older than the window, or of an older epoch, is not.
//!
//! The state is bounded: at most [`MAX_SENDERS`] senders, the one heard from least
//! recently forgotten first. A sender forgotten (or a receiver restarted) accepts
//! the next datagram of any epoch as new: a replay is refused once its sender's
//! current datagrams have been seen.

use std::collections::HashMap;

use crate::auth::Stamp;

/// Senders remembered at most.
pub const MAX_SENDERS: usize = 4096;
/// Counters below the highest that are still accepted (once each).
pub const WINDOW: u64 = 64;

/// What [`ReplayGuard::check`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Never seen: take it.
    Fresh,
    /// Seen before, older than the window, or of an epoch the sender left.
    Replay,
}

#[derive(Clone, Copy, Debug)]
struct Window {
    epoch: u64,
    /// Highest counter seen in `epoch`.
    top: u64,
    /// Bit `i` set: counter `top - i` seen.
    seen: u64,
    /// When the sender was last heard from (a count of accepted datagrams).
    heard: u64,
}

/// Per-sender windows of one receiver.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    senders: HashMap<u64, Window>,
    clock: u64,
}

impl ReplayGuard {
    /// Decides on an authenticated datagram's stamp, remembering it if fresh.
    pub fn check(&mut self, stamp: &Stamp) -> Verdict {
        self.clock += 1;
        let clock = self.clock;
        let fresh = Window {
            epoch: stamp.epoch,
            top: stamp.counter,
            seen: 1,
            heard: clock,
        };
        let Some(w) = self.senders.get_mut(&stamp.sender) else {
            if self.senders.len() >= MAX_SENDERS {
                self.forget_oldest();
            }
            self.senders.insert(stamp.sender, fresh);
            return Verdict::Fresh;
        };
        if stamp.epoch < w.epoch {
            return Verdict::Replay;
        }
        if stamp.epoch > w.epoch {
            *w = fresh;
            return Verdict::Fresh;
        }
        if stamp.counter > w.top {
            let shift = stamp.counter - w.top;
            w.seen = if shift >= WINDOW { 0 } else { w.seen << shift };
            w.seen |= 1;
            w.top = stamp.counter;
            w.heard = clock;
            return Verdict::Fresh;
        }
        let behind = w.top - stamp.counter;
        if behind >= WINDOW || w.seen & (1 << behind) != 0 {
            return Verdict::Replay;
        }
        w.seen |= 1 << behind;
        w.heard = clock;
        Verdict::Fresh
    }

    fn forget_oldest(&mut self) {
        if let Some((&sender, _)) = self.senders.iter().min_by_key(|(_, w)| w.heard) {
            self.senders.remove(&sender);
        }
    }

    /// Senders remembered now.
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    /// Whether no sender is remembered.
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(sender: u64, epoch: u64, counter: u64) -> Stamp {
        Stamp {
            sender,
            epoch,
            counter,
        }
    }

    #[test]
    fn replays_old_counters_and_old_epochs_are_refused() {
        let mut g = ReplayGuard::default();
        assert_eq!(g.check(&s(1, 5, 10)), Verdict::Fresh);
        assert_eq!(g.check(&s(1, 5, 10)), Verdict::Replay, "the same datagram");
        assert_eq!(g.check(&s(1, 5, 12)), Verdict::Fresh);
        assert_eq!(
            g.check(&s(1, 5, 11)),
            Verdict::Fresh,
            "reordered, in the window"
        );
        assert_eq!(g.check(&s(1, 5, 11)), Verdict::Replay);
        assert_eq!(g.check(&s(1, 5, 200)), Verdict::Fresh);
        assert_eq!(
            g.check(&s(1, 5, 200 - WINDOW)),
            Verdict::Replay,
            "out of the window"
        );
        assert_eq!(g.check(&s(1, 5, 200 - WINDOW + 1)), Verdict::Fresh);
        // Another sender has its own window.
        assert_eq!(g.check(&s(2, 1, 10)), Verdict::Fresh);
        // A restart: a higher epoch, counters start again; the old epoch is over.
        assert_eq!(g.check(&s(1, 6, 1)), Verdict::Fresh);
        assert_eq!(
            g.check(&s(1, 5, 201)),
            Verdict::Replay,
            "an epoch the sender left"
        );
        assert_eq!(g.check(&s(1, 6, 1)), Verdict::Replay);
    }

    #[test]
    fn senders_are_bounded() {
        let mut g = ReplayGuard::default();
        for sender in 0..(MAX_SENDERS as u64 + 100) {
            g.check(&s(sender, 1, 1));
        }
        assert_eq!(g.len(), MAX_SENDERS);
        // The most recent are kept.
        assert_eq!(g.check(&s(MAX_SENDERS as u64 + 99, 1, 1)), Verdict::Replay);
    }

    proptest! {
        /// However the datagrams of a sender arrive (reordered, duplicated), each
        /// counter is taken at most once.
        #[test]
        fn each_counter_is_taken_at_most_once(order in proptest::collection::vec(0u64..300, 1..600)) {
            let mut g = ReplayGuard::default();
            let mut taken = std::collections::BTreeSet::new();
            for c in order {
                if g.check(&s(9, 1, c)) == Verdict::Fresh {
                    prop_assert!(taken.insert(c), "counter {} taken twice", c);
                }
            }
        }
    }
}
