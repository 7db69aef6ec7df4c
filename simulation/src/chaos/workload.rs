//! The client workload: registers written blind and read-modify-write (with the
//! context of a read), deletes with a context, counter increments, set adds and
//! removes, and reads of all three; some puts carry a stale context (the first one
//! the client read of the key). Some deletes with a read's context go through a
//! node picked at random (which may be a primary that lacks the key);
//! some writes carry contexts no node may accept (another key's, truncated, a
//! flipped byte, an unsigned one with a forged entry). Every value and member is
//! unique, so the checker can tell exactly which write produced what it finds.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use rand::{RngExt, SeedableRng, rngs::SmallRng};
use ringkv::{Client, object::Context};

use super::history::{Clock, History, RegisterWrite, SetUpdate, Status};
use crate::SimNetwork;
use crate::host::addr_of;

/// Register keys `r0..`.
pub const REGISTER_KEYS: usize = 64;
/// Counter keys `k0..`.
pub const COUNTER_KEYS: usize = 4;
/// Set keys `s0..`.
pub const SET_KEYS: usize = 8;
/// Write-once keys per client, `t{client}-{j}`: each is put once, deleted once some
/// seconds later with the put's context, and never touched again, so a deleted
/// value that comes back (a tombstone reaped too early) is still there at the end
/// for the checker to see. On the 64 shared register keys the workload overwrites
/// such a value again before the end, more often than not.
pub const ONCE_KEYS: usize = 96;
/// Simulated time between a write-once key's put and its delete, in ms.
const ONCE_DELETE_AFTER_MS: std::ops::Range<u64> = 500..8_000;

/// Client number `c` of a run: connects to one of the `nodes` initial members,
/// then runs operations until `until` (simulated time since it started), recording
/// everything in `history`. Requests sent to one node in particular go to any of
/// the `hosts` (a spare with nothing running refuses the connection).
pub async fn client(
    c: usize,
    seed: u64,
    nodes: usize,
    hosts: usize,
    until: Duration,
    history: Rc<RefCell<History>>,
) -> turmoil::Result {
    let mut rng = SmallRng::seed_from_u64(seed ^ (0xc0ffee + c as u64));
    let start = tokio::time::Instant::now();
    let client = loop {
        if start.elapsed() >= until {
            break None;
        }
        match Client::connect_with(&SimNetwork, addr_of(1 + c % nodes)).await {
            Ok(cl) => break Some(cl),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    if let Some(mut client) = client {
        client.set_timeout(Duration::from_secs(3));
        run(c, &mut rng, client, hosts, start, until, &history).await;
    }
    history.borrow_mut().clients_done += 1;
    Ok(())
}

/// The operations of one client until `until` has passed since `start`.
async fn run(
    c: usize,
    rng: &mut SmallRng,
    client: Client,
    nodes: usize,
    start: tokio::time::Instant,
    until: Duration,
    history: &Rc<RefCell<History>>,
) {
    let mut w = Worker {
        c,
        n: 0,
        client,
        direct: Vec::new(),
        first_seen: RefCell::default(),
        once: 0,
        due: std::collections::VecDeque::new(),
        h: history.clone(),
    };
    while start.elapsed() < until {
        w.n += 1;
        let now = tokio::time::Instant::now();
        if let Some(i) = w.due.iter().position(|(at, _, _)| now >= *at)
            && let Some((_, key, context)) = w.due.remove(i)
        {
            // Through a node picked at random (a primary coordinates it, others
            // forward), so the delete starts on whichever side of a fault it is.
            // An unknown outcome is sent again (at most three times) through
            // another node, as a client that must know would.
            for _ in 0..3 {
                let node = rng.random_range(1..=nodes);
                if w.delete_once(key.clone(), context.clone(), node).await != Some(Status::Maybe) {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
            continue;
        }
        match rng.random_range(0..128) {
            0..25 => {
                let key = format!("r{}", rng.random_range(0..REGISTER_KEYS));
                w.put(key, None).await;
            }
            25..45 => {
                let key = format!("r{}", rng.random_range(0..REGISTER_KEYS));
                let delete = rng.random_range(0..10) == 0;
                w.read_modify_write(key, delete).await;
            }
            45..63 => {
                let key = format!("k{}", rng.random_range(0..COUNTER_KEYS));
                w.counter_add(key, rng.random_range(1..5)).await;
            }
            63..75 => {
                let key = format!("s{}", rng.random_range(0..SET_KEYS));
                w.set_add(key).await;
            }
            75..83 => {
                let key = format!("s{}", rng.random_range(0..SET_KEYS));
                let pick = rng.random_range(0..u32::MAX);
                w.set_remove(key, pick).await;
            }
            83..90 => {
                let key = format!("r{}", rng.random_range(0..REGISTER_KEYS));
                w.read(&key).await;
            }
            90..92 => {
                // A stale context: the first this client read of the key. Genuine,
                // so accepted; it covers only what was there then.
                let key = format!("r{}", rng.random_range(0..REGISTER_KEYS));
                let stale = w.first_seen.borrow().get(&key).cloned();
                if let Some(ctx) = stale {
                    w.put(key, Some(ctx)).await;
                }
            }
            92..100 => {
                let key = format!("s{}", rng.random_range(0..SET_KEYS));
                w.read_set(&key).await;
            }
            100..107 => {
                let key = format!("r{}", rng.random_range(0..REGISTER_KEYS));
                let node = rng.random_range(1..=nodes);
                w.delete_via(key, node).await;
            }
            107..111 => {
                let key = format!("r{}", rng.random_range(0..REGISTER_KEYS));
                let a = rng.random_range(1..=nodes);
                let b = 1 + (a + rng.random_range(0..nodes.max(2) - 1)) % nodes;
                w.put_then_delete_elsewhere(key, a, b).await;
            }
            116..128 => {
                let after = Duration::from_millis(rng.random_range(ONCE_DELETE_AFTER_MS));
                w.put_once(after).await;
            }
            _ => {
                let key = format!("r{}", rng.random_range(0..REGISTER_KEYS));
                let other = format!("r{}", rng.random_range(0..REGISTER_KEYS));
                let how = match rng.random_range(0..4) {
                    0 => Forgery::OtherKey(other),
                    1 => Forgery::Truncated(rng.random_range(1..8)),
                    2 => Forgery::Flipped(rng.random::<u64>()),
                    _ => Forgery::Unsigned(rng.random_range(0..1u64 << 20)),
                };
                w.put_forged(key, how).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
    }
}

/// A context no node may accept, made from a genuine one.
#[derive(Clone, Debug)]
enum Forgery {
    /// The context of another key.
    OtherKey(String),
    /// The genuine context, shortened by this many bytes.
    Truncated(usize),
    /// The genuine context with one bit flipped (chosen by the number).
    Flipped(u64),
    /// An unsigned context (the format of ringkv before signed contexts) claiming
    /// `u64::MAX - n` writes by an actor of the genuine context (review A3).
    Unsigned(u64),
}

impl Forgery {
    fn word(&self) -> &'static str {
        match self {
            Forgery::OtherKey(_) => "other-key",
            Forgery::Truncated(_) => "truncated",
            Forgery::Flipped(_) => "flipped",
            Forgery::Unsigned(_) => "unsigned",
        }
    }

    /// The forged context, or `None` if the genuine one is empty (an empty context
    /// grants nothing, so it needs no protection and proves nothing).
    fn apply(&self, genuine: &Context, other: &Context) -> Option<Context> {
        let clock = genuine.clock().ok()?;
        if clock.is_empty() || genuine.0.len() < 2 {
            return None;
        }
        Some(match self {
            Forgery::OtherKey(_) => {
                if other.clock().ok()?.is_empty() {
                    return None;
                }
                other.clone()
            }
            Forgery::Truncated(n) => {
                Context(genuine.0[..genuine.0.len().saturating_sub(*n).max(1)].to_vec())
            }
            Forgery::Flipped(pick) => {
                let mut bytes = genuine.0.clone();
                let at = (*pick as usize) % bytes.len();
                bytes[at] ^= 1 << ((pick >> 32) % 8);
                Context(bytes)
            }
            Forgery::Unsigned(n) => {
                let mut forged = clock.clone();
                let actor = *clock.dots.keys().next()?;
                forged.dots.insert(actor, u64::MAX - n);
                let mut bytes = vec![1u8];
                bytes.extend(postcard::to_stdvec(&forged).ok()?);
                Context(bytes)
            }
        })
    }
}

/// One client's state.
struct Worker {
    c: usize,
    n: u64,
    client: Client,
    /// Clients that send everything to one node (index = node - 1), made on first use.
    direct: Vec<Option<Client>>,
    /// The first context this client read of each key (for stale writes).
    first_seen: RefCell<std::collections::BTreeMap<String, Context>>,
    /// Write-once keys made so far.
    once: usize,
    /// Write-once keys awaiting their delete: when, key, the put's context.
    due: std::collections::VecDeque<(tokio::time::Instant, String, Context)>,
    h: Rc<RefCell<History>>,
}

fn clock_of(ctx: &Context) -> Option<Clock> {
    ctx.clock().ok()
}

impl Worker {
    fn value(&self) -> String {
        format!("c{}-{}", self.c, self.n)
    }

    /// A register write with `context` (blind if `None`).
    async fn put(&self, key: String, context: Option<Context>) {
        self.write(key, Some(self.value()), context).await;
    }

    async fn write(&self, key: String, value: Option<String>, context: Option<Context>) {
        let client = self.client.clone();
        self.write_with(&client, key, value, context, None).await;
    }

    /// A register write through `client`; `forged` names how its context was made
    /// (such a write must be refused). Returns its outcome and, if acknowledged, the
    /// context the node returned.
    async fn write_with(
        &self,
        client: &Client,
        key: String,
        value: Option<String>,
        context: Option<Context>,
        forged: Option<&'static str>,
    ) -> (Status, Option<Context>) {
        let r = match &value {
            Some(v) => {
                client
                    .put(key.as_bytes(), v.as_bytes(), context.as_ref())
                    .await
            }
            None => client.delete(key.as_bytes(), context.as_ref()).await,
        };
        let status = Status::of(&r);
        let mut h = self.h.borrow_mut();
        h.count(status);
        h.trace(&format!(
            "{} {} {key} {} ctx={} {}{}",
            self.c,
            if value.is_some() { "put" } else { "del" },
            value.as_deref().unwrap_or("-"),
            context.is_some(),
            status.word(),
            forged.map(|f| format!(" forged={f}")).unwrap_or_default(),
        ));
        let weak = client.options().w == Some(1);
        let r = r.ok();
        h.register_writes.push(RegisterWrite {
            key,
            value,
            context: context.as_ref().and_then(clock_of),
            returned: r.as_ref().and_then(clock_of),
            status,
            forged,
            weak,
            at: turmoil::elapsed(),
        });
        (status, r)
    }

    /// The client that sends everything to node `node` (it coordinates what it is a
    /// primary of, and forwards the rest).
    async fn direct(&mut self, node: usize) -> Option<Client> {
        if self.direct.len() < node {
            self.direct.resize(node, None);
        }
        if self.direct[node - 1].is_none() {
            let mut c = Client::connect_with(&SimNetwork, addr_of(node))
                .await
                .ok()?;
            c.set_timeout(Duration::from_secs(3));
            c.disable_routing();
            self.direct[node - 1] = Some(c);
        }
        self.direct[node - 1].clone()
    }

    /// Deletes `key` with the context of a read (routed as usual) through node
    /// `node`, which coordinates it if it is a primary of the key (and may lack the
    /// key: it missed the write, or the ring just made it a primary). Deletes without
    /// a context (what a read quorum sees is deleted) are tested by scenario and
    /// cluster tests instead: what such a delete covered is not known to the client,
    /// so the checker could not judge it exactly.
    async fn delete_via(&mut self, key: String, node: usize) {
        let Some(context) = self.read(&key).await else {
            return;
        };
        let Some(client) = self.direct(node).await else {
            return;
        };
        self.write_with(&client, key, None, Some(context), None)
            .await;
    }

    /// Puts `key` through node `a` acknowledged by that one replica (W=1), then at
    /// once deletes it with the put's context through node `b`, which may not have
    /// received the value yet (review A1: such a delete must still leave a tombstone
    /// that covers the value).
    async fn put_then_delete_elsewhere(&mut self, key: String, a: usize, b: usize) {
        let (Some(first), Some(second)) = (self.direct(a).await, self.direct(b).await) else {
            return;
        };
        let mut once = first.clone();
        once.set_options(ringkv::rpc::api::RequestOptions {
            w: Some(1),
            ..Default::default()
        });
        let value = self.value();
        let (_, Some(context)) = self
            .write_with(&once, key.clone(), Some(value), None, None)
            .await
        else {
            return;
        };
        self.write_with(&second, key, None, Some(context), None)
            .await;
    }

    /// Puts the next write-once key (if this client has any left) and schedules its
    /// delete `after` from now, if the put was acknowledged.
    async fn put_once(&mut self, after: Duration) {
        if self.once >= ONCE_KEYS {
            return;
        }
        let key = format!("t{}-{}", self.c, self.once);
        self.once += 1;
        self.h.borrow_mut().once_keys.insert(key.clone());
        let client = self.client.clone();
        let value = self.value();
        if let (_, Some(context)) = self
            .write_with(&client, key.clone(), Some(value), None, None)
            .await
        {
            self.due
                .push_back((tokio::time::Instant::now() + after, key, context));
        }
    }

    /// Deletes a write-once key with its put's context through node `node`; returns
    /// the outcome, if it was sent.
    async fn delete_once(&mut self, key: String, context: Context, node: usize) -> Option<Status> {
        let client = self.direct(node).await?;
        let (status, _) = self
            .write_with(&client, key, None, Some(context), None)
            .await;
        Some(status)
    }

    /// A put whose context was forged from a genuine one (`how`).
    async fn put_forged(&self, key: String, how: Forgery) {
        let Some(genuine) = self.read(&key).await else {
            return;
        };
        let other = match &how {
            Forgery::OtherKey(k) if *k != key => match self.read(k).await {
                Some(c) => c,
                None => return,
            },
            Forgery::OtherKey(_) => return,
            _ => Context::default(),
        };
        let Some(forged) = how.apply(&genuine, &other) else {
            return;
        };
        let client = self.client.clone();
        let value = self.value();
        self.write_with(&client, key, Some(value), Some(forged), Some(how.word()))
            .await;
    }

    /// Reads `key`, then writes a new value (or deletes) with the read's context.
    async fn read_modify_write(&self, key: String, delete: bool) {
        let Some(context) = self.read(&key).await else {
            return;
        };
        if delete {
            self.write(key, None, Some(context)).await;
        } else {
            self.put(key, Some(context)).await;
        }
    }

    /// Reads a register; returns its context if the read succeeded.
    async fn read(&self, key: &str) -> Option<Context> {
        let r = self.client.get(key.as_bytes()).await;
        let mut h = self.h.borrow_mut();
        match r {
            Ok(got) => {
                let values: Vec<String> = got
                    .siblings
                    .iter()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect();
                h.trace(&format!("{} get {key} ok {}", self.c, values.join(",")));
                for v in values {
                    h.read_values.push((key.to_string(), v));
                }
                self.first_seen
                    .borrow_mut()
                    .entry(key.to_string())
                    .or_insert_with(|| got.context.clone());
                Some(got.context)
            }
            Err(_) => {
                h.trace(&format!("{} get {key} fail", self.c));
                None
            }
        }
    }

    async fn counter_add(&self, key: String, delta: i64) {
        let r = self.client.counter_add(key.as_bytes(), delta).await;
        let status = Status::of(&r);
        let mut h = self.h.borrow_mut();
        h.count(status);
        h.trace(&format!("{} add {key} {delta} {}", self.c, status.word()));
        if status == Status::Ok {
            h.counter_acks
                .push((key.clone(), delta, turmoil::elapsed()));
        }
        let entry = h.counters.entry(key).or_default();
        if status == Status::Ok {
            entry.0 += delta;
        }
        if status != Status::Fail {
            entry.1 += delta;
        }
    }

    async fn set_add(&self, key: String) {
        let member = self.value();
        let invoked = self.h.borrow_mut().tick();
        let r = self.client.set_add(key.as_bytes(), member.as_bytes()).await;
        self.record_set(key, member, true, invoked, Status::of(&r));
    }

    /// Removes a member someone added to `key` before (chosen by `pick`), if any.
    async fn set_remove(&self, key: String, pick: u32) {
        let member = {
            let h = self.h.borrow();
            let added: Vec<&SetUpdate> = h
                .set_updates
                .iter()
                .filter(|u| u.add && u.key == key)
                .collect();
            if added.is_empty() {
                return;
            }
            added[pick as usize % added.len()].member.clone()
        };
        let invoked = self.h.borrow_mut().tick();
        let r = self
            .client
            .set_remove(key.as_bytes(), member.as_bytes())
            .await;
        self.record_set(key, member, false, invoked, Status::of(&r));
    }

    fn record_set(&self, key: String, member: String, add: bool, invoked: u64, status: Status) {
        let mut h = self.h.borrow_mut();
        let completed = h.tick();
        h.count(status);
        h.trace(&format!(
            "{} {} {key} {member} {}",
            self.c,
            if add { "sadd" } else { "srem" },
            status.word()
        ));
        h.set_updates.push(SetUpdate {
            key,
            member,
            add,
            invoked,
            completed,
            status,
            at: turmoil::elapsed(),
        });
    }

    async fn read_set(&self, key: &str) {
        let r = self.client.set_members(key.as_bytes()).await;
        let mut h = self.h.borrow_mut();
        match r {
            Ok(members) => {
                let members: Vec<String> = members
                    .unwrap_or_default()
                    .iter()
                    .map(|m| String::from_utf8_lossy(m).into_owned())
                    .collect();
                h.trace(&format!("{} smembers {key} ok {}", self.c, members.len()));
                for m in members {
                    h.read_members.push((key.to_string(), m));
                }
            }
            Err(_) => h.trace(&format!("{} smembers {key} fail", self.c)),
        }
    }
}
