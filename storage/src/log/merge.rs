//! Merging: reclaiming the space of overwritten and deleted values.
//!
//! A merge copies every live value of the sealed segments into new segments, each
//! with the sequence number it was written with, then points the directory at the
//! copies and removes the old segments. It runs on its own thread, and requests
//! never wait for its disk I/O: the directory is updated in short chunks under the
//! index lock, and a reader still holding a removed segment keeps reading it (an
//! unlinked file stays readable through an open handle).
//!
//! Every sealed segment takes part, so a deleted key's tombstone and every older
//! value it shadows disappear together; the active segment, and segments sealed
//! after the merge began, hold only newer records. Steps, each safe to crash after:
//! 1. copies go to `N.seg.merging` files, fsynced, then renamed to `N.seg` (a crash
//!    before the rename leaves `.merging` files that recovery deletes; after it, both
//!    copies exist and recovery keeps either, since they carry the same sequence
//!    number);
//! 2. the ids of the replaced segments go to the `MERGE` manifest, fsynced (from now
//!    on recovery completes the removal);
//! 3. the replaced segments are unlinked, then the manifest.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::RwLockWriteGuard;
use std::sync::atomic::Ordering;

use super::record::{self, Op};
use super::recovery::{MERGE_MANIFEST, MERGE_MANIFEST_TMP, MERGE_SUFFIX, finish_merge};
use super::{
    Entry, Log, SEGMENT_HEADER_LEN, SEGMENT_MAGIC, Segment, Shard, Space, fsync_dir, new_salt,
    read, read_unchecked, segment_path, write,
};
use crate::error::{Result, StorageError};
use crate::store::lock;

/// Keys listed (and, later, repointed) per turn of the index lock.
const CHUNK: usize = 1024;
/// Keys repointed per turn of the index's write lock (about 50 µs of work).
const REPOINT_CHUNK: usize = 128;
/// Pause between those turns.
const REPOINT_PAUSE: std::time::Duration = std::time::Duration::from_micros(20);
/// A merge output's writeback is started every this many bytes, so the disk absorbs
/// the copy as it is written and the fsync at the end finds little left to write,
/// instead of one burst of dirty pages competing with the log's own syncs.
const SYNC_EVERY_BYTES: u64 = 4 << 20;

/// What a merge did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Merged {
    pub(crate) segments_removed: usize,
    pub(crate) values_copied: usize,
    pub(crate) bytes_before: u64,
    pub(crate) bytes_after: u64,
}

struct Output {
    id: u32,
    file: File,
    len: u64,
    salt: [u8; 8],
}

struct Moved {
    shard: usize,
    space: Space,
    key: Box<[u8]>,
    old: Entry,
    new: Entry,
}

fn merging_path(dir: &std::path::Path, id: u32) -> std::path::PathBuf {
    let mut p = segment_path(dir, id).into_os_string();
    p.push(MERGE_SUFFIX);
    p.into()
}

impl Log {
    /// Merges when the sealed segments hold at least
    /// [`super::LogConfig::merge_min_dead_bytes`] dead bytes and are at least 60 %
    /// dead. Returns what it did, or `None` if nothing was due.
    ///
    /// # Errors
    /// [`StorageError::Io`] or [`StorageError::Corrupt`]; a failed merge changes
    /// nothing that a later one cannot redo.
    pub(crate) fn maybe_merge(&self) -> Result<Option<Merged>> {
        self.merge_if(|dead, live| {
            dead >= self.config.merge_min_dead_bytes && dead > 0 && dead * 2 >= live * 3
        })
    }

    /// Merges every sealed segment now, whatever its garbage.
    ///
    /// # Errors
    /// As [`Log::maybe_merge`].
    #[cfg(test)]
    pub(crate) fn merge_now(&self) -> Result<Option<Merged>> {
        self.merge_if(|_, _| true)
    }

    fn merge_if(&self, due: impl Fn(u64, u64) -> bool) -> Result<Option<Merged>> {
        let _one = lock(&self.merge_lock);
        // A previous merge that failed after committing left its manifest: its
        // segments are out of the directory already; remove them before another
        // manifest could replace that list (they would come back on a restart, their
        // tombstones gone).
        finish_merge(&self.dir, &self.disk)?;
        // A damaged value found while copying holds its segment back; the merge then
        // runs again without it (bounded: each retry holds back one more segment).
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (victims, total) = {
                // The writer lock first (the order commits take): no rotation can
                // slip a new segment in between reading the active id and listing
                // the others.
                let w = lock(&self.writer);
                let segments = read(&self.segments);
                let held = self.held_back();
                // Only segments older than every held-back one: a merge drops the
                // deletes of its victims, and a delete in a victim newer than a
                // held-back segment may be all that hides an older value there
                // (it would come back on the next open). Deletes in older victims
                // can only hide values in segments older still, all merged too.
                let oldest_held = held.iter().min().copied().unwrap_or(u32::MAX);
                let victims: Vec<&Arc<Segment>> = segments
                    .values()
                    .filter(|s| s.id != w.active.id && s.id < oldest_held)
                    .collect();
                let total: u64 = victims.iter().map(|s| s.len.load(Ordering::Acquire)).sum();
                (victims.iter().map(|s| s.id).collect::<Vec<u32>>(), total)
            };
            let live: u64 = self
                .shards
                .iter()
                .map(|shard| {
                    let shard = read(shard);
                    victims
                        .iter()
                        .filter_map(|id| shard.live.get(id))
                        .sum::<u64>()
                })
                .sum();
            if victims.is_empty() || !due(total.saturating_sub(live), live) {
                return Ok(None);
            }
            let mut outputs = Vec::new();
            let copied = self.copy_live(&victims, &mut outputs);
            let e = match copied {
                Ok((moved, merged)) => {
                    return self
                        .install(victims, outputs, moved, merged, total)
                        .map(Some);
                }
                Err(e) => e,
            };
            // Not installed, so nothing refers to them, renamed or not.
            for out in &outputs {
                for path in [
                    merging_path(&self.dir, out.id),
                    segment_path(&self.dir, out.id),
                ] {
                    let _ = std::fs::remove_file(&path);
                    self.disk.removed(&path);
                }
            }
            let held_more = matches!(e, StorageError::Corrupt { segment, .. } if self.held_back().contains(&segment));
            if !held_more || attempt >= 8 {
                return Err(e);
            }
        }
    }

    /// Step 1: copies every live value of `victims` into fsynced, renamed outputs.
    fn copy_live(
        &self,
        victims: &[u32],
        outputs: &mut Vec<Output>,
    ) -> Result<(Vec<Moved>, Merged)> {
        let victim_set: HashSet<u32> = victims.iter().copied().collect();
        let mut moved = Vec::new();
        let mut writer: Option<BufWriter<File>> = None;
        let spaces = [Space::Objects, Space::Merkle, Space::Hints, Space::Meta];
        for (shard, space) in (0..self.shards.len()).flat_map(|i| spaces.map(|s| (i, s))) {
            let mut after: Option<Box<[u8]>> = None;
            loop {
                let chunk: Vec<(Box<[u8]>, Entry, Arc<Segment>)> = {
                    let index = read(&self.shards[shard]);
                    let segments = read(&self.segments);
                    let lower = match &after {
                        Some(k) => Bound::Excluded(&k[..]),
                        None => Bound::Unbounded,
                    };
                    let listed: Vec<(&Box<[u8]>, &Entry)> = index.maps[space as usize]
                        .range::<[u8], _>((lower, Bound::Unbounded))
                        .take(CHUNK)
                        .collect();
                    let Some((last, _)) = listed.last() else {
                        break;
                    };
                    after = Some((*last).clone());
                    listed
                        .into_iter()
                        .filter(|(_, e)| victim_set.contains(&e.segment))
                        .filter_map(|(k, e)| {
                            Some((k.clone(), *e, segments.get(&e.segment)?.clone()))
                        })
                        .collect()
                };
                for (key, old, segment) in chunk {
                    let value = read_unchecked(&segment, &old)?;
                    if crc32fast::hash(&value) != old.crc {
                        // A damaged value: copying it would hide the damage under a
                        // fresh checksum. Its segment is left out of merges until the
                        // value is dropped; this merge is retried without it.
                        self.note_damaged(space, &key, segment.id);
                        return Err(StorageError::Corrupt {
                            segment: segment.id,
                            offset: old.offset,
                            reason: "value checksum mismatch (its segment is held back from merges until the value is repaired)",
                        });
                    }
                    let op = Op {
                        space,
                        key: key.to_vec(),
                        value: Some(value),
                    };
                    let (mut rec, at) = record::encode(std::slice::from_ref(&op));
                    let full = outputs.last().is_none_or(|o| {
                        o.len > SEGMENT_HEADER_LEN
                            && o.len + rec.len() as u64 > self.config.segment_bytes
                    });
                    if full {
                        if let Some(mut w) = writer.take() {
                            w.flush().map_err(StorageError::io("writing a merge"))?;
                        }
                        let id = self.next_segment.fetch_add(1, Ordering::Relaxed);
                        let file = OpenOptions::new()
                            .read(true)
                            .write(true)
                            .create_new(true)
                            .open(merging_path(&self.dir, id))
                            .map_err(StorageError::io("creating a merge output"))?;
                        self.disk.created(&merging_path(&self.dir, id));
                        let mut w = BufWriter::with_capacity(
                            1 << 20,
                            file.try_clone()
                                .map_err(StorageError::io("creating a merge output"))?,
                        );
                        let salt = new_salt()?;
                        w.write_all(SEGMENT_MAGIC)
                            .and_then(|()| w.write_all(&salt))
                            .map_err(StorageError::io("writing a merge"))?;
                        writer = Some(w);
                        outputs.push(Output {
                            id,
                            file,
                            len: SEGMENT_HEADER_LEN,
                            salt,
                        });
                    }
                    let (Some(out), Some(w)) = (outputs.last_mut(), writer.as_mut()) else {
                        unreachable!("an output was just opened");
                    };
                    // The original sequence number, under the output's salt.
                    record::seal(&mut rec, old.seq, &Some(out.salt));
                    let before = out.len;
                    w.write_all(&rec)
                        .map_err(StorageError::io("writing a merge"))?;
                    if (before + rec.len() as u64) / SYNC_EVERY_BYTES > before / SYNC_EVERY_BYTES {
                        w.flush().map_err(StorageError::io("writing a merge"))?;
                        start_writeback(&out.file);
                    }
                    let new = Entry {
                        segment: out.id,
                        crc: old.crc,
                        offset: out.len + u64::from(at[0].offset),
                        len: at[0].len,
                        seq: old.seq,
                    };
                    out.len += rec.len() as u64;
                    moved.push(Moved {
                        shard,
                        space,
                        key,
                        old,
                        new,
                    });
                }
            }
        }
        if let Some(mut w) = writer.take() {
            w.flush().map_err(StorageError::io("writing a merge"))?;
        }
        for out in outputs.iter() {
            self.disk
                .sync_data(&out.file, &merging_path(&self.dir, out.id))
                .map_err(StorageError::io("syncing a merge output"))?;
        }
        for out in outputs.iter() {
            self.disk
                .rename(
                    &merging_path(&self.dir, out.id),
                    &segment_path(&self.dir, out.id),
                )
                .map_err(StorageError::io("committing a merge output"))?;
        }
        fsync_dir(&self.disk, &self.dir)?;
        let merged = Merged {
            segments_removed: victims.len(),
            values_copied: moved.len(),
            bytes_before: 0,
            bytes_after: outputs.iter().map(|o| o.len).sum(),
        };
        Ok((moved, merged))
    }

    /// Steps 2 and 3: repoints the directory at the copies and removes the victims.
    fn install(
        &self,
        victims: Vec<u32>,
        outputs: Vec<Output>,
        moved: Vec<Moved>,
        mut merged: Merged,
        bytes_before: u64,
    ) -> Result<Merged> {
        merged.bytes_before = bytes_before;
        {
            let mut segments = write(&self.segments);
            for out in outputs {
                // Synced and renamed: its writable handle closes here, and the
                // descriptor cache opens it for reads.
                let segment = Segment::closed(
                    out.id,
                    segment_path(&self.dir, out.id),
                    out.len,
                    Some(out.salt),
                    &self.fds,
                );
                segments.insert(out.id, Arc::new(segment));
            }
        }
        // `moved` is in shard order: each chunk takes one shard's lock, or two.
        for chunk in moved.chunks(REPOINT_CHUNK) {
            {
                let mut guards: Vec<(usize, RwLockWriteGuard<'_, Shard>)> = Vec::new();
                for m in chunk {
                    if guards.last().is_none_or(|(i, _)| *i != m.shard) {
                        guards.push((m.shard, write(&self.shards[m.shard])));
                    }
                }
                for m in chunk {
                    let Some((_, index)) = guards.iter_mut().find(|(i, _)| *i == m.shard) else {
                        unreachable!("every shard of the chunk is locked");
                    };
                    // Only if nothing newer was written (or deleted) meanwhile.
                    if index.maps[m.space as usize].get(&m.key[..]) == Some(&m.old) {
                        index.set(m.space, &m.key, Some(m.new));
                    }
                }
            }
            // Let waiting requests in: re-taking the lock at once won it back every
            // time, and 150,000 keys in one stretch held requests up for 45 ms.
            std::thread::sleep(REPOINT_PAUSE);
        }
        // Whatever superseded a copy that was not repointed (a newer write, a delete)
        // must be on disk before the segments holding the older value go: else a
        // power loss would bring back neither.
        self.sync()?;
        write_manifest(&self.dir, &self.disk, &victims)?;
        let retired: Vec<Arc<Segment>> = {
            let mut segments = write(&self.segments);
            victims
                .iter()
                .filter_map(|id| segments.remove(id))
                .collect()
        };
        for shard in self.shards.iter() {
            let mut shard = write(shard);
            for id in &victims {
                let left = shard.live.remove(id).unwrap_or(0);
                debug_assert_eq!(left, 0, "segment {id} still referenced after a merge");
            }
        }
        for segment in retired {
            retire(&self.dir, &self.disk, segment)?;
        }
        fsync_dir(&self.disk, &self.dir)?;
        std::fs::remove_file(self.dir.join(MERGE_MANIFEST))
            .map_err(StorageError::io("removing the merge manifest"))?;
        fsync_dir(&self.disk, &self.dir)?;
        self.merges.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            segments_removed = merged.segments_removed,
            values_copied = merged.values_copied,
            bytes_before = merged.bytes_before,
            bytes_after = merged.bytes_after,
            "log merged"
        );
        Ok(merged)
    }
}

/// Writes the list of replaced segments to the manifest: whole or not at all (a
/// temporary file, synced, then renamed).
fn write_manifest(dir: &std::path::Path, disk: &crate::disk::Disk, victims: &[u32]) -> Result<()> {
    let listing: String = victims.iter().map(|id| format!("{id}\n")).collect();
    let tmp = dir.join(MERGE_MANIFEST_TMP);
    let mut f = File::create(&tmp).map_err(StorageError::io("writing the merge manifest"))?;
    disk.created(&tmp);
    f.write_all(listing.as_bytes())
        .and_then(|()| disk.sync_data(&f, &tmp))
        .map_err(StorageError::io("writing the merge manifest"))?;
    disk.rename(&tmp, &dir.join(MERGE_MANIFEST))
        .map_err(StorageError::io("writing the merge manifest"))?;
    fsync_dir(disk, dir)
}

/// How long a replaced segment waits for readers that still hold it (a scan in
/// progress) before it is unlinked under them.
const RETIRE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Removes a segment no entry points at any more. Readers that listed a key before
/// the merge may still hold it (an unlinked file stays readable through their
/// handle), but the file's blocks are freed when its last handle closes: waiting
/// for them (at most [`RETIRE_WAIT`]) leaves that work to this thread rather than to
/// whichever request happened to drop the segment last.
fn retire(dir: &std::path::Path, disk: &crate::disk::Disk, segment: Arc<Segment>) -> Result<()> {
    let deadline = std::time::Instant::now() + RETIRE_WAIT;
    while Arc::strong_count(&segment) > 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let path = segment_path(dir, segment.id);
    // Readers that listed its keys before the merge read it after the unlink.
    segment.pin()?;
    super::hint::remove(dir, disk, segment.id);
    std::fs::remove_file(&path).map_err(StorageError::io("removing a merged segment"))?;
    disk.removed(&path);
    Ok(())
}

/// Starts writing a file's dirty pages to disk without waiting for them, and without
/// an fsync's journal commit (RocksDB's `bytes_per_sync` does the same). The fsync at
/// the end of the merge then finds little left to write.
fn start_writeback(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a descriptor we own for the call, and plain integers; the kernel
        // touches no memory of ours. Best effort: on failure the final fsync writes
        // it all.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}
