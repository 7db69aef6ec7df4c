//! The causal contexts the bench has seen, per key: what an application that keeps
//! the context of its last read or write would send with its next update.
//!
//! Without them every update would be a blind write, concurrent with everything,
//! and a popular key would pile up siblings until writes were refused. Contexts of
//! concurrent replies are merged, so the next update replaces every value this
//! bench has seen of the key.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::object::Context;

/// Shards of the map (a power of two): workers touching different keys rarely wait
/// for each other.
const SHARDS: usize = 64;

/// Keys remembered at most; beyond it new keys are not remembered (their updates
/// go without a context) so memory stays bounded on huge runs.
pub const MAX_KEYS: usize = 10_000_000;

const _: () = assert!(SHARDS.is_power_of_two());

/// Per-key contexts, shared by every worker.
pub struct ContextCache {
    shards: Vec<Mutex<HashMap<u64, Context>>>,
    per_shard_max: usize,
}

impl Default for ContextCache {
    fn default() -> Self {
        ContextCache::new(MAX_KEYS)
    }
}

impl ContextCache {
    /// A cache holding at most about `max_keys` keys.
    pub fn new(max_keys: usize) -> ContextCache {
        ContextCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard_max: max_keys.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Context>> {
        let i = (super::keys::fnv1a64(key) as usize) & (SHARDS - 1);
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest context seen for `key`.
    pub fn get(&self, key: u64) -> Option<Context> {
        self.shard(key).get(&key).cloned()
    }

    /// Merges `context` into what is known of `key`. A context that does not decode
    /// (it came from the server, so it should) replaces the old one.
    pub fn learn(&self, key: u64, context: Context) {
        let mut shard = self.shard(key);
        let full = shard.len() >= self.per_shard_max;
        match shard.get_mut(&key) {
            // The common case (nothing new was written): no clock to decode.
            Some(known) if *known == context => {}
            Some(known) => {
                *known = known.merge(&context).unwrap_or(context);
            }
            None if full => {}
            None => {
                shard.insert(key, context);
            }
        }
    }

    /// Keys remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crdts::VClock;

    fn ctx(actor: u64, n: u64) -> Context {
        let mut c = VClock::new();
        for _ in 0..n {
            let dot = c.inc(actor);
            crdts::CmRDT::apply(&mut c, dot);
        }
        crate::object::ContextKey::of_cluster(&ringkv_gossip::ClusterKey::derive(b"bench test"))
            .sign(b"k", &c)
    }

    #[test]
    fn merges_concurrent_contexts_and_stays_bounded() {
        let cache = ContextCache::new(SHARDS);
        assert!(cache.get(1).is_none());
        cache.learn(1, ctx(10, 2));
        cache.learn(1, ctx(20, 1));
        let clock = cache.get(1).expect("known").clock().expect("decodes");
        assert!(clock >= ctx(10, 2).clock().expect("c"));
        assert!(clock >= ctx(20, 1).clock().expect("c"));
        // An older context does not move it back.
        cache.learn(1, ctx(10, 1));
        assert_eq!(cache.get(1).expect("known").clock().expect("c"), clock);
        for k in 0..10_000 {
            cache.learn(k, ctx(1, 1));
        }
        assert!(cache.len() <= 2 * SHARDS, "{} keys kept", cache.len());
    }
}
