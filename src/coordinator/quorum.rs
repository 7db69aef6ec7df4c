//! The quorum decision of one request, as a state machine without I/O.
//!
//! The shell sends the request to the targets the machine names, feeds it every reply,
//! failure and the deadline, and performs what it answers: send to one more target
//! (a fallback, for a sloppy quorum), keep waiting, or finish. The machine decides;
//! it never touches a socket or a clock (STYLE.md, after foca).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A replica a request may go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Node id.
    pub node: String,
    /// Whether it is one of the key's primaries (counts toward `pr`/`pw`).
    pub primary: bool,
}

/// How many replies the request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// Successful replies needed (`r` or `w`).
    pub total: usize,
    /// Of which from primaries (`pr` or `pw`).
    pub primaries: usize,
}

/// Why a request failed, in terms a client can act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error(
    "quorum not reached: {succeeded} of {required} required replies ({primaries_succeeded} of {primaries_required} from primaries) from {attempted} replicas{}",
    if *indeterminate { "; the write may have been applied on some replicas" } else { "" }
)]
pub struct QuorumNotReached {
    /// Successful replies needed.
    pub required: u64,
    /// Successful replies received.
    pub succeeded: u64,
    /// Primary replies needed.
    pub primaries_required: u64,
    /// Primary replies received.
    pub primaries_succeeded: u64,
    /// Replicas the request was sent to.
    pub attempted: u64,
    /// Per replica that failed or did not answer: what happened.
    pub errors: Vec<(String, String)>,
    /// Whether some replica may hold the write (it acknowledged, or never answered).
    pub indeterminate: bool,
}

/// What the shell must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step<T> {
    /// Send the request to this target too.
    SendTo(Target),
    /// Wait for more replies (or the deadline).
    Wait,
    /// Done: the successful replies, by node.
    Reached(BTreeMap<String, T>),
    /// Done: failed.
    Failed(QuorumNotReached),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State<T> {
    Pending,
    Ok(T),
    Failed(String),
}

/// One request's quorum.
#[derive(Debug)]
pub struct Quorum<T> {
    need: Requirement,
    sent: Vec<(Target, State<T>)>,
    fallbacks: std::collections::VecDeque<Target>,
    is_write: bool,
    done: bool,
}

impl<T: Clone> Quorum<T> {
    /// A quorum over `targets` (sent at once) with `fallbacks` to try, in order, when a
    /// target fails and the requirement could no longer be met. Returns the machine and
    /// the targets to send to now.
    pub fn new(
        need: Requirement,
        targets: Vec<Target>,
        fallbacks: Vec<Target>,
        is_write: bool,
    ) -> (Self, Vec<Target>) {
        let sent = targets
            .iter()
            .cloned()
            .map(|t| (t, State::Pending))
            .collect();
        (
            Quorum {
                need,
                sent,
                fallbacks: fallbacks.into(),
                is_write,
                done: false,
            },
            targets,
        )
    }

    fn tally(&self) -> (usize, usize, usize, usize) {
        let ok = self.sent.iter().filter(|(_, s)| matches!(s, State::Ok(_)));
        let ok_total = ok.clone().count();
        let ok_primary = ok.filter(|(t, _)| t.primary).count();
        let pending = self
            .sent
            .iter()
            .filter(|(_, s)| matches!(s, State::Pending));
        let pending_total = pending.clone().count();
        let pending_primary = pending.filter(|(t, _)| t.primary).count();
        (ok_total, ok_primary, pending_total, pending_primary)
    }

    fn failure(&self, timed_out: bool) -> QuorumNotReached {
        let (ok_total, ok_primary, pending, _) = self.tally();
        let errors = self
            .sent
            .iter()
            .filter_map(|(t, s)| match s {
                State::Ok(_) => None,
                State::Failed(e) => Some((t.node.clone(), e.clone())),
                State::Pending => Some((
                    t.node.clone(),
                    if timed_out {
                        "no reply before the deadline".to_string()
                    } else {
                        "no reply".to_string()
                    },
                )),
            })
            .collect();
        QuorumNotReached {
            required: self.need.total as u64,
            succeeded: ok_total as u64,
            primaries_required: self.need.primaries as u64,
            primaries_succeeded: ok_primary as u64,
            attempted: self.sent.len() as u64,
            errors,
            indeterminate: self.is_write && (ok_total > 0 || pending > 0),
        }
    }

    fn decide(&mut self) -> Step<T> {
        if self.done {
            return Step::Wait;
        }
        let (ok_total, ok_primary, pending, pending_primary) = self.tally();
        if ok_total >= self.need.total && ok_primary >= self.need.primaries {
            self.done = true;
            let replies = self
                .sent
                .iter()
                .filter_map(|(t, s)| match s {
                    State::Ok(v) => Some((t.node.clone(), v.clone())),
                    State::Pending | State::Failed(_) => None,
                })
                .collect();
            return Step::Reached(replies);
        }
        let total_possible = ok_total + pending;
        let primaries_possible = ok_primary + pending_primary;
        if primaries_possible < self.need.primaries {
            // Fallbacks are not primaries: nothing can help.
            self.done = true;
            return Step::Failed(self.failure(false));
        }
        if total_possible < self.need.total {
            if let Some(next) = self.fallbacks.pop_front() {
                self.sent.push((next.clone(), State::Pending));
                return Step::SendTo(next);
            }
            self.done = true;
            return Step::Failed(self.failure(false));
        }
        Step::Wait
    }

    fn set(&mut self, node: &str, state: State<T>) -> Step<T> {
        // Only the first answer of a target counts; unknown nodes are ignored.
        if let Some((_, s)) = self
            .sent
            .iter_mut()
            .find(|(t, s)| t.node == node && matches!(s, State::Pending))
        {
            *s = state;
        }
        self.decide()
    }

    /// Registers one more target the shell sent to on its own (a fallback standing
    /// in for a failed primary, chosen outside the machine).
    pub fn add(&mut self, target: Target) -> Step<T> {
        if !self.sent.iter().any(|(t, _)| t.node == target.node) {
            self.sent.push((target, State::Pending));
        }
        self.decide()
    }

    /// A target replied successfully.
    pub fn ok(&mut self, node: &str, reply: T) -> Step<T> {
        self.set(node, State::Ok(reply))
    }

    /// A target failed (refused, unreachable, or its connection broke).
    pub fn failed(&mut self, node: &str, error: impl Into<String>) -> Step<T> {
        self.set(node, State::Failed(error.into()))
    }

    /// The deadline passed: finish with what there is.
    pub fn deadline(&mut self) -> Step<T> {
        match self.decide() {
            Step::Wait => {
                self.done = true;
                Step::Failed(self.failure(true))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(node: &str, primary: bool) -> Target {
        Target {
            node: node.into(),
            primary,
        }
    }

    fn need(total: usize, primaries: usize) -> Requirement {
        Requirement { total, primaries }
    }

    #[test]
    fn reaches_w_and_ignores_late_and_unknown_replies() {
        let (mut q, send) = Quorum::new(
            need(2, 0),
            vec![t("a", true), t("b", true), t("c", true)],
            vec![],
            true,
        );
        assert_eq!(send.len(), 3);
        assert_eq!(q.ok("x", 1), Step::Wait, "unknown node");
        assert_eq!(q.ok("a", 1), Step::Wait);
        assert_eq!(
            q.ok("a", 9),
            Step::Wait,
            "a second reply from a does not count"
        );
        match q.ok("b", 2) {
            Step::Reached(r) => assert_eq!(
                r.into_iter().collect::<Vec<_>>(),
                vec![("a".into(), 1), ("b".into(), 2)]
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(q.ok("c", 3), Step::Wait, "decided once");
    }

    #[test]
    fn failures_call_in_fallbacks_then_give_up() {
        let (mut q, _) = Quorum::<()>::new(
            need(2, 0),
            vec![t("a", true), t("b", true)],
            vec![t("f", false)],
            true,
        );
        assert_eq!(
            q.failed("a", "connection refused"),
            Step::SendTo(t("f", false))
        );
        assert_eq!(q.ok("f", ()), Step::Wait);
        match q.failed("b", "disk full") {
            Step::Failed(e) => {
                assert_eq!((e.required, e.succeeded, e.attempted), (2, 1, 3));
                assert!(e.indeterminate, "f stored it");
                assert_eq!(e.errors.len(), 2);
                assert!(e.to_string().contains("may have been applied"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pw_is_not_met_by_fallbacks() {
        let (mut q, _) = Quorum::<()>::new(
            need(2, 2),
            vec![t("a", true), t("b", true)],
            vec![t("f", false)],
            true,
        );
        match q.failed("a", "down") {
            Step::Failed(e) => {
                assert_eq!((e.primaries_required, e.primaries_succeeded), (2, 0));
                assert!(e.indeterminate, "b has not answered yet and may apply it");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deadline_reports_silent_replicas_and_refusals_are_determinate() {
        let three = vec![t("a", true), t("b", true), t("c", true)];
        let (mut q, _) = Quorum::<()>::new(need(2, 0), three, vec![], true);
        assert_eq!(q.failed("a", "refused: key too large"), Step::Wait);
        match q.deadline() {
            Step::Failed(e) => {
                assert!(e.indeterminate, "b never answered");
                assert!(
                    e.errors
                        .iter()
                        .any(|(n, m)| n == "b" && m.contains("deadline"))
                );
            }
            other => panic!("{other:?}"),
        }
        let (mut q, _) =
            Quorum::<()>::new(need(1, 0), vec![t("a", true), t("b", true)], vec![], true);
        assert_eq!(q.failed("a", "refused"), Step::Wait);
        match q.failed("b", "refused") {
            Step::Failed(e) => assert!(!e.indeterminate, "nobody applied it"),
            other => panic!("{other:?}"),
        }
        // Reads are never indeterminate.
        let (mut q, _) =
            Quorum::<u8>::new(need(2, 0), vec![t("a", true), t("b", true)], vec![], false);
        q.ok("a", 1);
        match q.deadline() {
            Step::Failed(e) => assert!(!e.indeterminate),
            other => panic!("{other:?}"),
        }
    }
}
