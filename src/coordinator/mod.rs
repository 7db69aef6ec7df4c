//! Coordination of client requests.
//!
//! A single node is the only replica of every key, so today the coordinator applies
//! each request to the local replica; quorums across replicas extend this seam.
//! Reads and buffered writes take microseconds and run inline on the runtime; a hop
//! to the blocking pool per request cost more than the work (measured: 2x the
//! throughput inline on two cores). Writes that fsync (`--sync always`) run on the
//! blocking pool so a slow disk never stalls a runtime worker.

pub mod quorum;

use crdts::VClock;

use crate::object::{Actor, Context, Object};
use crate::replica::{Replica, ReplicaError};
use crate::rpc::api::{ApiError, GetReply, RequestOptions};

/// Replicas per key on a single node.
const N: u8 = 1;

/// Answers client requests.
#[derive(Clone)]
pub struct Coordinator {
    replica: Replica,
    fsync_writes: bool,
}

/// Whether a storage call may wait on the disk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Io {
    Read,
    Write,
}

fn check(opts: &RequestOptions) -> Result<(), ApiError> {
    for (name, v) in [
        ("r", opts.r),
        ("w", opts.w),
        ("pr", opts.pr),
        ("pw", opts.pw),
    ] {
        match v {
            Some(0) if name == "r" || name == "w" => {
                return Err(ApiError::InvalidOptions {
                    reason: format!("{name} must be at least 1"),
                });
            }
            Some(v) if v > N => {
                return Err(ApiError::InvalidOptions {
                    reason: format!("{name}={v} is more than the {N} replica(s) of every key"),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

fn context_of(ctx: Option<&Context>) -> Result<VClock<Actor>, ApiError> {
    Ok(ctx.map(Context::clock).transpose()?.unwrap_or_default())
}

fn wrong_kind(found: &Object, wanted: crate::object::Kind) -> ApiError {
    ApiError::WrongKind {
        stored: found.kind(),
        requested: wanted,
    }
}

impl Coordinator {
    /// A coordinator over the local replica.
    pub fn new(replica: Replica) -> Self {
        let fsync_writes = replica.store().sync_policy() == ringkv_storage::SyncPolicy::Always;
        Coordinator {
            replica,
            fsync_writes,
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        io: Io,
        f: impl FnOnce(&Replica) -> Result<T, ReplicaError> + Send + 'static,
    ) -> Result<T, ApiError> {
        if io == Io::Read || !self.fsync_writes {
            return f(&self.replica).map_err(ApiError::from);
        }
        let r = self.replica.clone();
        match tokio::task::spawn_blocking(move || f(&r)).await {
            Ok(r) => r.map_err(ApiError::from),
            Err(join) => Err(ApiError::Unavailable {
                reason: format!("request task failed: {join}"),
            }),
        }
    }

    /// The local replica.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Reads a register.
    ///
    /// # Errors
    /// [`ApiError`] naming the refusal or failure.
    pub async fn get(&self, key: Vec<u8>, opts: RequestOptions) -> Result<GetReply, ApiError> {
        check(&opts)?;
        let obj = self.run(Io::Read, move |r| r.get(&key)).await?;
        match obj {
            None => Ok(GetReply {
                found: false,
                values: Vec::new(),
                context: Context::empty(),
            }),
            Some(Object::Register(reg)) => Ok(GetReply {
                found: !reg.is_deleted(),
                values: reg.values().into_iter().map(<[u8]>::to_vec).collect(),
                context: Context::from_clock(reg.context()),
            }),
            Some(other) => Err(wrong_kind(&other, crate::object::Kind::Register)),
        }
    }

    /// Writes a register value (`None` = delete).
    ///
    /// A delete without a context deletes every value visible now.
    ///
    /// # Errors
    /// [`ApiError`] naming the refusal or failure.
    pub async fn put(
        &self,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        context: Option<Context>,
        opts: RequestOptions,
    ) -> Result<Context, ApiError> {
        check(&opts)?;
        let delete_visible = value.is_none() && context.is_none();
        let ctx = context_of(context.as_ref())?;
        let reg = self
            .run(Io::Write, move |r| {
                let ctx = if delete_visible {
                    match r.get(&key)? {
                        Some(Object::Register(reg)) => reg.context().clone(),
                        Some(_) | None => ctx,
                    }
                } else {
                    ctx
                };
                r.write_register(&key, value, &ctx)
            })
            .await?;
        Ok(Context::from_clock(reg.context()))
    }

    /// Adds to a counter.
    ///
    /// # Errors
    /// [`ApiError`] naming the refusal or failure.
    pub async fn counter_add(
        &self,
        key: Vec<u8>,
        delta: i64,
        opts: RequestOptions,
    ) -> Result<i128, ApiError> {
        check(&opts)?;
        let c = self
            .run(Io::Write, move |r| r.counter_add(&key, delta))
            .await?;
        Ok(c.value()?)
    }

    /// Reads a counter.
    ///
    /// # Errors
    /// [`ApiError`] naming the refusal or failure.
    pub async fn counter_get(
        &self,
        key: Vec<u8>,
        opts: RequestOptions,
    ) -> Result<Option<i128>, ApiError> {
        check(&opts)?;
        match self.run(Io::Read, move |r| r.get(&key)).await? {
            None => Ok(None),
            Some(Object::Counter(c)) => Ok(Some(c.value()?)),
            Some(other) => Err(wrong_kind(&other, crate::object::Kind::Counter)),
        }
    }

    /// Adds or removes a set member; returns whether it was present (for removals).
    ///
    /// # Errors
    /// [`ApiError`] naming the refusal or failure.
    pub async fn set_update(
        &self,
        key: Vec<u8>,
        member: Vec<u8>,
        add: bool,
        opts: RequestOptions,
    ) -> Result<bool, ApiError> {
        check(&opts)?;
        let (_, present) = self
            .run(Io::Write, move |r| r.set_update(&key, &member, add))
            .await?;
        Ok(present)
    }

    /// Members of a set.
    ///
    /// # Errors
    /// [`ApiError`] naming the refusal or failure.
    pub async fn set_members(
        &self,
        key: Vec<u8>,
        opts: RequestOptions,
    ) -> Result<Option<Vec<Vec<u8>>>, ApiError> {
        check(&opts)?;
        match self.run(Io::Read, move |r| r.get(&key)).await? {
            None => Ok(None),
            Some(Object::Set(s)) => Ok(Some(s.members())),
            Some(other) => Err(wrong_kind(&other, crate::object::Kind::Set)),
        }
    }
}
