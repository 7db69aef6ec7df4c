//! Replica writes and reads bound for the same peer leave in one frame when several
//! are ready at once.
//!
//! A replicated write costs each replica a request: a frame, a task, a deadline
//! timer and a reply on both sides. Under load a coordinator has many requests for
//! the same peer at the same moment, so each peer gets a queue: whatever waits in it
//! when a batch can leave goes in one [`Peer::replicate_batch`] or
//! [`Peer::read_batch`](super::Peer::read_batch) request, and each item still gets
//! its own answer. Nothing ever waits for company: a lone job leaves at once, as the
//! single request of before, and at most [`IN_FLIGHT`] batches per peer are on
//! their way, so jobs gather only while the peer is busy with earlier ones (the
//! slower the peer, the larger the batches).
//!
//! Every job keeps its own deadline: one that passes while queued fails as never
//! sent. Items are idempotent (state merges and reads), so a batch that met a
//! closed connection is not tried again as a batch but sent one item at a time, and
//! so is everything for that peer for [`SINGLY_FOR`] afterwards: a node of the
//! previous release closes a connection on a method it does not know (once per
//! [`SINGLY_FOR`], with whatever else was in flight on it: during a rolling upgrade,
//! a forwarded write caught there fails as indeterminate, as on any lost connection).
//!
//! [`Peer::replicate_batch`]: super::Peer::replicate_batch

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use super::pool::{CLOSED, Dest, PeerError, Peers};
use crate::rpc::api::{Blob, SharedBlob};

/// Items in one batch at most (a receiver refuses more).
pub const MAX_BATCH_ITEMS: usize = 64;
/// Payload bytes a batch gathers at most (a larger item travels alone); also caps a
/// read batch's reply.
pub const BATCH_BYTES: usize = 256 * 1024;
/// Batches on their way to one peer at once.
pub const IN_FLIGHT: usize = 2;
/// Jobs waiting for one peer at most; beyond it a job fails at once, never sent.
const QUEUE: usize = 4096;
/// A peer's queue ends after this long without a job (a new one starts with the
/// next job).
const IDLE: Duration = Duration::from_secs(60);
/// After a batch met a closed connection, jobs to that peer go one by one this long.
pub const SINGLY_FOR: Duration = Duration::from_secs(30);

/// Called once with a job's outcome.
pub type Done<T> = Box<dyn FnOnce(Result<T, PeerError>) + Send>;

/// One replica write or read waiting for its peer.
enum Job {
    Write {
        key: Vec<u8>,
        object: SharedBlob,
        deadline: Instant,
        done: Done<()>,
    },
    Read {
        key: Vec<u8>,
        deadline: Instant,
        done: Done<Option<Blob>>,
    },
}

impl Job {
    fn deadline(&self) -> Instant {
        match self {
            Job::Write { deadline, .. } | Job::Read { deadline, .. } => *deadline,
        }
    }

    /// What the job adds to a batch's frame.
    fn bytes(&self) -> usize {
        match self {
            Job::Write { key, object, .. } => key.len() + object.0.len() + 8,
            Job::Read { key, .. } => key.len() + 8,
        }
    }

    fn fail(self, e: PeerError) {
        match self {
            Job::Write { done, .. } => done(Err(e)),
            Job::Read { done, .. } => done(Err(e)),
        }
    }
}

/// What the queues sent, by kind (index 0: writes, 1: reads).
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Batch requests sent.
    pub batches: [AtomicU64; 2],
    /// Items those batches carried.
    pub batched_items: [AtomicU64; 2],
    /// Items sent on their own (alone in their queue, or to a peer sent to singly).
    pub single: [AtomicU64; 2],
}

/// A job's deadline and who waits for its outcome.
type Waiting<T> = (Instant, Done<T>);
/// Replica writes of one batch: what to send, and who waits.
type Writes = Vec<((Vec<u8>, SharedBlob), Waiting<()>)>;
/// Replica reads of one batch.
type Reads = Vec<(Vec<u8>, Waiting<Option<Blob>>)>;

/// A queue's sender and which queue it is (a queue that ended is replaced).
type Queues = HashMap<Dest, (u64, mpsc::Sender<Job>)>;

/// The per-peer queues of one node.
#[derive(Clone)]
pub struct Batches {
    peers: Peers,
    queues: Arc<Mutex<Queues>>,
    next_queue: Arc<std::sync::atomic::AtomicU64>,
    /// Peers sent to one item at a time until then.
    singly_until: Arc<Mutex<HashMap<Dest, Instant>>>,
    /// Payload bytes per batch (a quarter of a frame at most).
    budget: usize,
    stats: Arc<BatchStats>,
}

impl Batches {
    /// Queues that send through `peers`.
    pub fn new(peers: Peers) -> Batches {
        let budget = (peers.max_frame() / 4).clamp(1, BATCH_BYTES);
        Batches {
            peers,
            queues: Arc::new(Mutex::new(HashMap::new())),
            next_queue: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            singly_until: Arc::new(Mutex::new(HashMap::new())),
            budget,
            stats: Arc::new(BatchStats::default()),
        }
    }

    /// What the queues sent so far.
    pub fn stats(&self) -> &BatchStats {
        &self.stats
    }

    fn count(&self, kind: usize, items: usize) {
        if items == 1 {
            self.stats.single[kind].fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.batches[kind].fetch_add(1, Ordering::Relaxed);
            self.stats.batched_items[kind].fetch_add(items as u64, Ordering::Relaxed);
        }
    }

    /// Merges `object` into `key` on node `node` at `addr` within `timeout`; `done`
    /// gets the outcome (a state merge is idempotent: it may be sent twice).
    pub fn replicate(
        &self,
        node: &str,
        addr: SocketAddr,
        key: Vec<u8>,
        object: SharedBlob,
        timeout: Duration,
        done: Done<()>,
    ) {
        let deadline = Instant::now() + timeout;
        self.submit(
            (addr, node.into()),
            Job::Write {
                key,
                object,
                deadline,
                done,
            },
        );
    }

    /// Reads node `node`'s encoded object of `key` within `timeout`; `done` gets it.
    pub fn read(
        &self,
        node: &str,
        addr: SocketAddr,
        key: Vec<u8>,
        timeout: Duration,
        done: Done<Option<Blob>>,
    ) {
        let deadline = Instant::now() + timeout;
        self.submit(
            (addr, node.into()),
            Job::Read {
                key,
                deadline,
                done,
            },
        );
    }

    fn submit(&self, dest: Dest, job: Job) {
        let addr = dest.0;
        // Sent under the lock: a queue that ends removes itself under it too, so no
        // job is ever left in a queue nobody reads.
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let tx = match queues.get(&dest) {
            Some((_, tx)) if !tx.is_closed() => tx,
            _ => {
                let (tx, rx) = mpsc::channel(QUEUE);
                let id = self
                    .next_queue
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(self.clone().drive(dest.clone(), id, rx));
                &queues.entry(dest).insert_entry((id, tx)).into_mut().1
            }
        };
        if let Err(e) = tx.try_send(job) {
            let (mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job)) = e;
            job.fail(PeerError::Connect {
                addr,
                reason: "too many requests waiting for this peer".into(),
            });
        }
    }

    /// The queue of one peer: takes what waits whenever a batch may leave.
    async fn drive(self, dest: Dest, id: u64, mut rx: mpsc::Receiver<Job>) {
        let permits = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut carried: Option<Job> = None;
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let first = match carried.take() {
                Some(job) => job,
                None => match tokio::time::timeout(IDLE, rx.recv()).await {
                    Ok(Some(job)) => job,
                    Ok(None) => return,
                    Err(_) => {
                        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
                        match rx.try_recv() {
                            Ok(job) => job,
                            Err(_) => {
                                if queues.get(&dest).is_some_and(|(i, _)| *i == id) {
                                    queues.remove(&dest);
                                }
                                return;
                            }
                        }
                    }
                },
            };
            let mut bytes = first.bytes();
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH_ITEMS {
                let Ok(job) = rx.try_recv() else { break };
                if bytes + job.bytes() > self.budget {
                    carried = Some(job);
                    break;
                }
                bytes += job.bytes();
                jobs.push(job);
            }
            let this = self.clone();
            let dest = dest.clone();
            tokio::spawn(async move {
                this.send(&dest, jobs).await;
                drop(permit);
            });
        }
    }

    fn singly(&self, dest: &Dest) -> bool {
        let mut until = self.singly_until.lock().unwrap_or_else(|p| p.into_inner());
        match until.get(dest) {
            Some(t) if Instant::now() < *t => true,
            Some(_) => {
                until.remove(dest);
                false
            }
            None => false,
        }
    }

    async fn send(&self, dest: &Dest, jobs: Vec<Job>) {
        let now = Instant::now();
        let mut writes = Vec::new();
        let mut reads = Vec::new();
        for job in jobs {
            if job.deadline() <= now {
                job.fail(PeerError::Connect {
                    addr: dest.0,
                    reason: "no time left to send the request".into(),
                });
                continue;
            }
            match job {
                Job::Write {
                    key,
                    object,
                    deadline,
                    done,
                } => writes.push(((key, object), (deadline, done))),
                Job::Read {
                    key,
                    deadline,
                    done,
                } => reads.push((key, (deadline, done))),
            }
        }
        let singly = self.singly(dest);
        tokio::join!(
            self.send_writes(dest, writes, singly),
            self.send_reads(dest, reads, singly)
        );
    }

    async fn send_writes(&self, dest: &Dest, writes: Writes, singly: bool) {
        if singly || writes.len() < 2 {
            let each = writes
                .into_iter()
                .map(|(item, (deadline, done))| self.write_one(dest, item, deadline, done));
            futures::future::join_all(each).await;
            return;
        }
        self.count(0, writes.len());
        let (items, waiting): (Vec<_>, Vec<_>) = writes.into_iter().unzip();
        let timeout = latest(&waiting).saturating_duration_since(Instant::now());
        let sent = items.clone();
        // One attempt: a node of the previous release closes the connection on a
        // batch, and a second attempt would close a second one (with whatever else
        // was in flight on it). The items go one by one instead.
        let r = self
            .peers
            .call_once(dest, timeout, |c, ctx| async move {
                c.replicate_batch(ctx, sent).await
            })
            .await;
        match r {
            Ok(replies) => {
                let mut replies = replies.into_iter();
                for (_, done) in waiting {
                    done(match replies.next() {
                        Some(r) => r.map_err(PeerError::Api),
                        None => Err(PeerError::Lost {
                            addr: dest.0,
                            reason: "the batch's answer left this write out".into(),
                        }),
                    });
                }
            }
            Err(PeerError::Lost { reason, .. }) if reason == CLOSED => {
                self.go_singly(dest);
                let each = items
                    .into_iter()
                    .zip(waiting)
                    .map(|(item, (deadline, done))| self.write_one(dest, item, deadline, done));
                futures::future::join_all(each).await;
            }
            Err(e) => {
                for (_, done) in waiting {
                    done(Err(e.clone()));
                }
            }
        }
    }

    async fn send_reads(&self, dest: &Dest, reads: Reads, singly: bool) {
        if singly || reads.len() < 2 {
            let each = reads
                .into_iter()
                .map(|(key, (deadline, done))| self.read_one(dest, key, deadline, done));
            futures::future::join_all(each).await;
            return;
        }
        self.count(1, reads.len());
        let (keys, waiting): (Vec<_>, Vec<_>) = reads.into_iter().unzip();
        let timeout = latest(&waiting).saturating_duration_since(Instant::now());
        let sent = keys.clone();
        let r = self
            .peers
            .call_once(dest, timeout, |c, ctx| async move {
                c.read_batch(ctx, sent).await
            })
            .await;
        match r {
            Ok(replies) => {
                let mut replies = replies.into_iter();
                let mut rest = Vec::new();
                for (key, (deadline, done)) in keys.into_iter().zip(waiting) {
                    match replies.next() {
                        Some(r) => done(r.map_err(PeerError::Api)),
                        // Past the reply's size budget: asked again on its own.
                        None => rest.push(self.read_one(dest, key, deadline, done)),
                    }
                }
                futures::future::join_all(rest).await;
            }
            Err(PeerError::Lost { reason, .. }) if reason == CLOSED => {
                self.go_singly(dest);
                let each = keys
                    .into_iter()
                    .zip(waiting)
                    .map(|(key, (deadline, done))| self.read_one(dest, key, deadline, done));
                futures::future::join_all(each).await;
            }
            Err(e) => {
                for (_, done) in waiting {
                    done(Err(e.clone()));
                }
            }
        }
    }

    /// `node` came back: it may be dialled at once. If it `restarted` (perhaps
    /// upgraded), connections to its old process are dropped and it is offered
    /// batches again (a node of the previous release closes the connection once
    /// more, and is sent to singly again). One only alive again after suspicion
    /// runs the same process: it stays sent to singly if it was.
    pub fn forgive(&self, node: &str, restarted: bool) {
        self.peers.forgive(node);
        if restarted {
            self.peers.drop_connections(node);
            self.singly_until
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|dest, _| &*dest.1 != node);
        }
    }

    fn go_singly(&self, dest: &Dest) {
        tracing::debug!(addr = %dest.0, "a batch met a closed connection: sending one by one for a while");
        self.singly_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(dest.clone(), Instant::now() + SINGLY_FOR);
    }

    async fn write_one(
        &self,
        dest: &Dest,
        (key, object): (Vec<u8>, SharedBlob),
        deadline: Instant,
        done: Done<()>,
    ) {
        self.count(0, 1);
        let timeout = deadline.saturating_duration_since(Instant::now());
        let r = self
            .peers
            .call_to(dest, timeout, |c, ctx| {
                let (key, object) = (key.clone(), object.clone());
                async move { c.replicate(ctx, key, object).await }
            })
            .await;
        done(r);
    }

    async fn read_one(
        &self,
        dest: &Dest,
        key: Vec<u8>,
        deadline: Instant,
        done: Done<Option<Blob>>,
    ) {
        self.count(1, 1);
        let timeout = deadline.saturating_duration_since(Instant::now());
        let r = self
            .peers
            .call_to(dest, timeout, |c, ctx| {
                let key = key.clone();
                async move { c.read(ctx, key).await }
            })
            .await;
        done(r);
    }
}

/// The latest deadline of a batch's jobs: the batch's request lives that long (each
/// job's caller stops waiting at its own).
fn latest<T>(waiting: &[(Instant, T)]) -> Instant {
    waiting
        .iter()
        .map(|(d, _)| *d)
        .max()
        .unwrap_or_else(Instant::now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::TokioNetwork;
    use ringkv_gossip::ClusterKey;

    fn batches() -> Batches {
        let key = ClusterKey::derive(b"batch tests, a secret of 16 bytes or more");
        Batches::new(Peers::new(TokioNetwork, key, "n1".into(), 1 << 20))
    }

    type Outcomes = Arc<Mutex<Vec<Result<(), String>>>>;

    fn recorder(outcomes: &Outcomes) -> Done<()> {
        let outcomes = outcomes.clone();
        Box::new(move |r| {
            outcomes
                .lock()
                .expect("lock")
                .push(r.map_err(|e| e.to_string()));
        })
    }

    #[tokio::test]
    async fn a_job_whose_deadline_passed_in_the_queue_fails_as_never_sent() {
        let b = batches();
        let outcomes: Outcomes = Arc::default();
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let object = SharedBlob(Arc::from(&b"state"[..]));
        b.replicate(
            "n2",
            addr,
            b"k".to_vec(),
            object,
            Duration::ZERO,
            recorder(&outcomes),
        );
        for _ in 0..100 {
            if !outcomes.lock().expect("lock").is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let got = outcomes.lock().expect("lock").clone();
        assert_eq!(got.len(), 1);
        let e = got[0].as_ref().expect_err("failed");
        assert!(e.contains("no time left"), "{e}");
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_every_job_is_answered_once() {
        // A peer that accepts connections and never answers the handshake: the
        // first batches hang in it, the queue fills, the rest are refused at once.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                open.push(s);
            }
        });
        let b = batches();
        let outcomes: Outcomes = Arc::default();
        let object = SharedBlob(Arc::from(&[7u8; 100][..]));
        let jobs = QUEUE + 3 * MAX_BATCH_ITEMS * IN_FLIGHT;
        for i in 0..jobs {
            b.replicate(
                "n2",
                addr,
                format!("key-{i}").into_bytes(),
                object.clone(),
                Duration::from_secs(2),
                recorder(&outcomes),
            );
        }
        let refused_at_once = outcomes
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.as_ref().is_err_and(|e| e.contains("too many requests")))
            .count();
        assert!(
            refused_at_once >= jobs - QUEUE - MAX_BATCH_ITEMS * IN_FLIGHT,
            "only {refused_at_once} of {jobs} refused at once"
        );
        // The rest fail when the handshake times out or their deadline passes.
        for _ in 0..1000 {
            if outcomes.lock().expect("lock").len() >= jobs {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let got = outcomes.lock().expect("lock").clone();
        assert_eq!(got.len(), jobs, "every job answered exactly once");
        assert!(
            got.iter().all(Result::is_err),
            "nothing reached a peer that never answered"
        );
        held.abort();
    }
}
