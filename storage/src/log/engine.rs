//! The log as an [`Engine`].

use std::time::Duration;

use super::{Log, LogStats, Op, Space};
use crate::backend::{Backend, Engine, Item, Opened};
use crate::error::Result;
use crate::timing::LatencySnapshot;

impl Engine for Log {
    fn backend(&self) -> Backend {
        Backend::Log
    }

    fn commit(&self, ops: &[Op]) -> Result<()> {
        Log::commit(self, ops)
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Log::get(self, space, key)
    }

    fn prefix(&self, space: Space, prefix: &[u8], limit: usize) -> Result<Vec<Item>> {
        Ok(Log::prefix(self, space, prefix, limit)
            .into_iter()
            .map(Item::Log)
            .collect())
    }

    fn read(&self, space: Space, item: &Item) -> Result<Option<Vec<u8>>> {
        match item {
            Item::Log(located) => located.value_or_damaged(self, space),
            Item::Key(key) => match Log::get(self, space, key) {
                Err(e) if e.is_damage() => Ok(None),
                other => other,
            },
        }
    }

    fn sync(&self) -> Result<()> {
        Log::sync(self)
    }

    fn close(&self) {
        Log::close(self);
        // The next open seals the active segment: with its hint written now, a
        // restart after a clean stop reads no segment at all. Only once a sync
        // (which poisons on failure) has made every segment durable.
        if let Err(error) = Log::sync(self).and_then(|()| self.write_hints(usize::MAX, true)) {
            tracing::warn!(%error, "writing hint files on close failed; the next open reads those segments");
        }
    }

    fn is_poisoned(&self) -> bool {
        Log::is_poisoned(self)
    }

    fn stats(&self) -> LogStats {
        Log::stats(self)
    }

    fn fsyncs(&self) -> LatencySnapshot {
        self.fsyncs.snapshot()
    }

    fn sync_running_for(&self) -> Option<Duration> {
        self.syncing.running_for()
    }

    fn damaged(&self, n: usize) -> Vec<(Space, Box<[u8]>)> {
        Log::damaged(self, n)
    }

    fn damage_resolved(&self, space: Space, key: &[u8]) {
        Log::damage_resolved(self, space, key);
    }

    fn opened(&self) -> Opened {
        Opened {
            nothing: self.recovered_nothing(),
            skipped_at: self.skipped_at().to_vec(),
            truncated_bytes: self.stats().truncated_bytes,
        }
    }

    fn len(&self, space: Space) -> usize {
        Log::len(self, space)
    }

    fn value_bytes(&self, space: Space) -> u64 {
        Log::value_bytes(self, space)
    }

    fn maintain(&self) -> Result<()> {
        self.maybe_merge()?;
        self.write_hints(super::HINTS_PER_ROUND, false).map(|_| ())
    }

    #[cfg(test)]
    fn compact(&self) -> Result<()> {
        self.merge_now().map(|_| ())
    }
}
