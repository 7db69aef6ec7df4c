//! The write path: forward to a primary, apply locally, replicate to `W`.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ringkv_gossip::Liveness;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::quorum::{Quorum, QuorumNotReached, Requirement, Step, Target};
use super::{Coordinator, Io, unavailable};
use crate::cluster::ClusterView;
use crate::object::{Context, Object};
use crate::peer::pool::PeerError;
use crate::peer::{WriteReply, WriteRequest};
use crate::rpc::api::{ApiError, ErrorClass, RequestOptions, SharedBlob};

/// Why a send to a replica failed.
#[derive(Debug)]
struct SendFailure {
    /// What happened, for the client's error.
    reason: String,
    /// The replica refused the state for a reason that will not change (wrong kind,
    /// object too large): a hint would be refused too.
    refused: bool,
}

/// A send's outcome, reported to the request's quorum loop.
type Report = (String, Result<(), SendFailure>);

/// How long after the request's deadline the write keeps placing hints for replicas
/// that failed late (the answer has gone; durability has not).
const HINT_GRACE: Duration = Duration::from_secs(5);
/// Shortest timeout given to a hint send, even at the deadline.
const MIN_HINT_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a refusal by a replica is permanent (retrying or hinting cannot help).
pub(super) fn permanent(e: &ApiError) -> bool {
    match e.class() {
        ErrorClass::Invalid | ErrorClass::Denied => true,
        ErrorClass::Unavailable => false,
        // A storage failure may pass (a full disk freed); bytes that cannot be
        // decoded stay so.
        ErrorClass::Failed => matches!(e, ApiError::Corrupt { .. }),
    }
}

impl Coordinator {
    /// Coordinates a write; `forwarded` requests are never forwarded again (views
    /// may disagree for a moment while a ring change spreads).
    ///
    /// # Errors
    /// [`ApiError`]: refusals, or [`ApiError::QuorumNotReached`].
    pub async fn write(
        &self,
        request: WriteRequest,
        opts: RequestOptions,
        forwarded: bool,
    ) -> Result<WriteReply, ApiError> {
        if self.inner.cluster.is_removed() {
            return Err(super::removed());
        }
        self.inner.replica.check_key(request.key())?;
        let (w, pw, timeout) = self.need(&opts, true)?;
        let deadline = Instant::now() + timeout;
        let view = self.inner.cluster.view();
        let (primaries, fallbacks) = view.walk(request.key());
        if primaries.is_empty() {
            return Err(unavailable(
                "this node has not joined a cluster yet (no active members known)",
            ));
        }
        // A ring with fewer members than N has fewer replicas per key: quorums are
        // capped to what exists (a one-node cluster answers at W=2). Liveness never
        // shrinks the ring, so a dead replica still counts as required.
        let (w, pw) = (w.min(primaries.len()), pw.min(primaries.len()));
        if !primaries.contains(&view.self_id) {
            if forwarded {
                // Views disagree for a moment while a ring change spreads. Counting
                // this node's copy toward W would let a write be acknowledged on one
                // primary and a node reads do not ask (review B1): refuse, having
                // applied nothing, so the forwarder tries another primary.
                return Err(ApiError::NotPrimary {
                    node: view.self_id.clone(),
                });
            }
            return self
                .forward(&view, &primaries, request, opts, deadline)
                .await;
        }
        // Removals without a context remove what a read quorum sees, not only what
        // this replica holds: the read gets half the time left; replication needs
        // the rest.
        let half = deadline.saturating_duration_since(Instant::now()) / 2;
        let read_opts = RequestOptions {
            timeout_ms: Some(half.as_millis().clamp(1, u128::from(u32::MAX)) as u32),
            ..opts
        };
        let request = match request {
            WriteRequest::SetUpdate {
                key,
                member,
                add: false,
            } => {
                // An observed remove observes what the coordinator holds: first the
                // merge of a read quorum into it, or a member added on the other
                // replicas stays (review C1: acknowledged, removed nothing).
                if let Some(seen) = self.read(key.clone(), read_opts).await? {
                    if seen.kind() != crate::object::Kind::Set {
                        return Err(super::wrong_kind(&seen, crate::object::Kind::Set));
                    }
                    self.replicate_object(key.clone(), seen).await?;
                }
                WriteRequest::SetUpdate {
                    key,
                    member,
                    add: false,
                }
            }
            WriteRequest::Put {
                key,
                value: None,
                context: None,
            } => {
                // "Delete what is visible" (see above).
                let seen = self.read(key.clone(), read_opts).await?;
                let context = match seen {
                    Some(Object::Register(reg)) => {
                        Some(self.inner.contexts.sign(&key, reg.context()))
                    }
                    Some(other) => {
                        return Err(super::wrong_kind(&other, crate::object::Kind::Register));
                    }
                    None => Some(Context::empty()),
                };
                WriteRequest::Put {
                    key,
                    value: None,
                    context,
                }
            }
            other => other,
        };
        let key = request.key().to_vec();
        let (object, reply) = self.apply_local(request).await?;
        if object.is_tombstone() {
            self.note_tombstone(&key);
        }
        // Encoded once: every replica's request shares these bytes.
        let bytes = SharedBlob(object.encode()?.into());
        self.replicate_to_quorum(&view, key, bytes, primaries, fallbacks, (w, pw), deadline)
            .await?;
        Ok(reply)
    }

    async fn apply_local(&self, request: WriteRequest) -> Result<(Object, WriteReply), ApiError> {
        match request {
            WriteRequest::Put {
                key,
                value,
                context,
            } => {
                // Only contexts this cluster issued for this key: a made-up one could
                // claim to have seen writes it never saw, and erase them (A3).
                let clock = context
                    .as_ref()
                    .map(|c| self.inner.contexts.verify(&key, c))
                    .transpose()?
                    .unwrap_or_default();
                let k = key.clone();
                let reg = self
                    .run(Io::Write, move |r| r.write_register(&k, value, &clock))
                    .await?;
                let ctx = self.inner.contexts.sign(&key, reg.context());
                Ok((Object::Register(reg), WriteReply::Put(ctx)))
            }
            WriteRequest::CounterAdd { key, delta } => {
                let c = self
                    .run(Io::Write, move |r| r.counter_add(&key, delta))
                    .await?;
                let v = c.value()?;
                Ok((Object::Counter(c), WriteReply::Counter(v)))
            }
            WriteRequest::SetUpdate { key, member, add } => {
                let (s, present) = self
                    .run(Io::Write, move |r| r.set_update(&key, &member, add))
                    .await?;
                Ok((Object::Set(s), WriteReply::Set(present)))
            }
        }
    }

    async fn forward(
        &self,
        view: &ClusterView,
        primaries: &[String],
        request: WriteRequest,
        opts: RequestOptions,
        deadline: Instant,
    ) -> Result<WriteReply, ApiError> {
        self.inner.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        let mut errors = Vec::new();
        let mut maybe_applied = false;
        // Alive primaries first, then the others in preference order.
        let mut order: Vec<&String> = primaries.iter().collect();
        order.sort_by_key(|p| match view.liveness_of(p) {
            Liveness::Alive => 0,
            Liveness::Suspect | Liveness::Unknown => 1,
            Liveness::Down => 2,
        });
        for p in order.iter().copied() {
            let Some(addr) = view.address(p) else {
                errors.push((p.clone(), "no address known".to_string()));
                continue;
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                errors.push((p.clone(), "no time left".to_string()));
                continue;
            }
            let req = request.clone();
            // The primary gets what is left of this request's time, not a fresh one,
            // so its quorum failure arrives before our deadline.
            let opts = RequestOptions {
                timeout_ms: Some(
                    (remaining.as_millis() * 9 / 10).clamp(1, u128::from(u32::MAX)) as u32,
                ),
                ..opts
            };
            let r = self
                .inner
                .peers
                .call_no_retry(p, addr, remaining, |c, ctx| async move {
                    c.coordinate(ctx, req, opts).await
                })
                .await;
            match r {
                Ok(reply) => return Ok(reply),
                Err(PeerError::Api(
                    api @ (ApiError::NotPrimary { .. } | ApiError::ShuttingDown { .. }),
                )) => {
                    // Nothing applied there: the next primary may take it.
                    errors.push((p.clone(), api.to_string()));
                }
                Err(PeerError::Api(api)) => return Err(api),
                Err(e @ PeerError::Connect { .. }) => errors.push((p.clone(), e.to_string())),
                Err(e @ PeerError::Lost { .. }) => {
                    // It may be coordinating the write right now: retrying elsewhere
                    // could apply a counter increment twice.
                    maybe_applied = true;
                    errors.push((p.clone(), e.to_string()));
                    break;
                }
            }
        }
        let w = opts.w.unwrap_or(self.inner.settings.w);
        Err(self.quorum_failed(QuorumNotReached {
            required: u64::from(w),
            succeeded: 0,
            primaries_required: u64::from(opts.pw.unwrap_or(0)),
            primaries_succeeded: 0,
            attempted: errors.len() as u64,
            errors,
            indeterminate: maybe_applied,
        }))
    }

    /// Sends `object` to `node` (as a hint for `hint_for`, if given); the outcome goes
    /// to the request's quorum loop. Replica writes go through the peer's queue (one
    /// frame for those ready together); hints, rare, go on their own.
    #[allow(clippy::too_many_arguments)]
    fn spawn_send(
        &self,
        node: String,
        addr: Option<SocketAddr>,
        hint_for: Option<String>,
        key: Vec<u8>,
        object: SharedBlob,
        timeout: Duration,
        tx: mpsc::Sender<Report>,
    ) {
        // The loop holds at most one send per target at a time, far below the
        // channel's room; a loop that has finished no longer listens.
        let report = move |node: String, r: Result<(), SendFailure>| {
            let _ = tx.try_send((node, r));
        };
        let failure = |e: PeerError| SendFailure {
            refused: matches!(&e, PeerError::Api(api) if permanent(api)),
            reason: e.to_string(),
        };
        let Some(addr) = addr else {
            let reason = "no address known".to_string();
            report(
                node,
                Err(SendFailure {
                    reason,
                    refused: false,
                }),
            );
            return;
        };
        match hint_for {
            None => {
                let n = node.clone();
                self.inner.batches.replicate(
                    &node,
                    addr,
                    key,
                    object,
                    timeout,
                    Box::new(move |r| report(n, r.map_err(failure))),
                );
            }
            Some(owner) => {
                let peers = self.inner.peers.clone();
                tokio::spawn(async move {
                    let r = peers
                        .call(&node, addr, timeout, |c, ctx| {
                            let (owner, key, object) = (owner.clone(), key.clone(), object.clone());
                            async move { c.hint(ctx, owner, key, object).await }
                        })
                        .await;
                    report(node, r.map_err(failure));
                });
            }
        }
    }

    /// Sends the written state to the other primaries and, for every primary that
    /// is down or fails, to the next live fallback as a hint (sloppy quorum: the
    /// state keeps N copies even when W was met without it). Answers as soon as the
    /// quorum decides; the sends go on in the background until all are resolved or
    /// the deadline passes.
    #[allow(clippy::too_many_arguments)]
    async fn replicate_to_quorum(
        &self,
        view: &ClusterView,
        key: Vec<u8>,
        bytes: SharedBlob,
        primaries: Vec<String>,
        fallbacks: Vec<String>,
        (w, pw): (usize, usize),
        deadline: Instant,
    ) -> Result<(), ApiError> {
        let me = view.self_id.clone();
        let mut spare: VecDeque<String> = if self.inner.settings.hinted_handoff {
            fallbacks
                .into_iter()
                .filter(|f| *f != me && view.liveness_of(f) == Liveness::Alive)
                .collect()
        } else {
            VecDeque::new()
        };
        debug_assert!(primaries.contains(&me), "only primaries coordinate writes");
        let targets: Vec<Target> = primaries
            .iter()
            .map(|p| Target {
                node: p.clone(),
                primary: true,
            })
            .collect();
        let (mut quorum, now) = Quorum::<()>::new(
            Requirement {
                total: w,
                primaries: pw,
            },
            targets,
            Vec::new(),
            true,
        );
        let (tx, mut rx) = mpsc::channel::<Report>(64);
        let timeout = deadline.saturating_duration_since(Instant::now());
        let mut outstanding = 0usize;
        let mut down: Vec<String> = Vec::new();
        for t in &now {
            if t.node == me {
                continue;
            }
            if !view.reachable(&t.node) {
                down.push(t.node.clone());
                continue;
            }
            outstanding += 1;
            self.spawn_send(
                t.node.clone(),
                view.address(&t.node),
                None,
                key.clone(),
                bytes.clone(),
                timeout,
                tx.clone(),
            );
        }
        // Which owner each fallback holds a hint for.
        let mut hinted: BTreeMap<String, String> = BTreeMap::new();
        let mut decided: Option<Result<(), QuorumNotReached>> = None;
        let note = |step: Step<()>, decided: &mut Option<Result<(), QuorumNotReached>>| {
            if decided.is_none() {
                match step {
                    Step::Reached(_) => *decided = Some(Ok(())),
                    Step::Failed(e) => *decided = Some(Err(e)),
                    Step::Wait | Step::SendTo(_) => {}
                }
            }
        };
        let this = self.clone();
        let busy = self.repair_started(std::slice::from_ref(&key));
        let hinted_handoff = self.inner.settings.hinted_handoff;
        let spare_addrs: BTreeMap<String, Option<SocketAddr>> =
            spare.iter().map(|f| (f.clone(), view.address(f))).collect();
        // Stand a fallback in for `owner`, registering it before the failure so the
        // machine counts it as possible.
        let mut stand_in = move |owner: String,
                                 quorum: &mut Quorum<()>,
                                 hinted: &mut BTreeMap<String, String>,
                                 outstanding: &mut usize| {
            if !hinted_handoff {
                return;
            }
            let Some(f) = spare.pop_front() else {
                // No live node left to stand in: the coordinator keeps the hint itself
                // (it does not count toward W; it only keeps the copy).
                let (this, key, bytes) = (this.clone(), key.clone(), bytes.clone());
                tokio::spawn(async move {
                    if let Err(error) = this.store_hint(owner.clone(), key, bytes.0.to_vec()).await
                    {
                        tracing::warn!(%owner, %error, "cannot keep a hint");
                    }
                });
                return;
            };
            hinted.insert(f.clone(), owner.clone());
            let _ = quorum.add(Target {
                node: f.clone(),
                primary: false,
            });
            *outstanding += 1;
            let timeout = deadline
                .saturating_duration_since(Instant::now())
                .max(MIN_HINT_TIMEOUT);
            this.spawn_send(
                f.clone(),
                spare_addrs.get(&f).copied().flatten(),
                Some(owner),
                key.clone(),
                bytes.clone(),
                timeout,
                tx.clone(),
            );
        };
        note(quorum.ok(&me, ()), &mut decided);
        for d in down {
            stand_in(d.clone(), &mut quorum, &mut hinted, &mut outstanding);
            note(quorum.failed(&d, "down (per gossip)"), &mut decided);
        }
        let (answer_tx, answer_rx) = tokio::sync::oneshot::channel();
        let mut answer_tx = Some(answer_tx);
        if let Some(d) = decided.take()
            && let Some(t) = answer_tx.take()
        {
            let _ = t.send(d);
        }
        // The rest runs detached so hints are placed even after the answer, for a
        // bounded grace period past the deadline. While states of this write are on
        // their way, tombstones are not reaped (an old state arriving after a reap
        // would bring a deleted key back).
        let driver = async move {
            let _busy = busy;
            let mut answered_deadline = false;
            while outstanding > 0 {
                // Biased: a report that arrived in the deadline's tick counts, and
                // the order never depends on tokio's per-process random start.
                let step = tokio::select! {
                    biased;
                    report = rx.recv() => match report {
                        Some((node, Ok(()))) => {
                            outstanding -= 1;
                            quorum.ok(&node, ())
                        }
                        Some((node, Err(e))) => {
                            outstanding -= 1;
                            let owner = hinted.remove(&node).unwrap_or_else(|| node.clone());
                            if !e.refused {
                                stand_in(owner, &mut quorum, &mut hinted, &mut outstanding);
                            }
                            quorum.failed(&node, e.reason)
                        }
                        None => break,
                    },
                    () = tokio::time::sleep_until(deadline), if !answered_deadline => {
                        answered_deadline = true;
                        quorum.deadline()
                    }
                    () = tokio::time::sleep_until(deadline + HINT_GRACE) => break,
                };
                note(step, &mut decided);
                if let Some(d) = decided.take()
                    && let Some(t) = answer_tx.take()
                {
                    let _ = t.send(d);
                }
            }
            if let Some(t) = answer_tx.take() {
                let _ = t.send(match quorum.deadline() {
                    Step::Reached(_) => Ok(()),
                    Step::Failed(e) => Err(e),
                    Step::Wait | Step::SendTo(_) => Ok(()),
                });
            }
        };
        tokio::spawn(driver);
        match answer_rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.quorum_failed(e)),
            Err(_) => Err(unavailable("write coordination stopped")),
        }
    }
}
