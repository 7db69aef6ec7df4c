//! Rebuilding the in-memory directory from the segment files on open.
//!
//! Damage never costs more than itself: a record that fails its checksum, or whose
//! length field is damaged (so the next boundary is unknown), is skipped up to the
//! next whole record, found by scanning (review A4: cutting there had thrown away
//! the fsynced rest of a sealed segment). Only a torn append at the end of the last
//! segment, with nothing whole after it, is cut off; a sealed segment is never cut.
//!
//! Segments are read whole, in id order. Records carry sequence numbers and a merge
//! copies records with their original ones, so the newest write of a key is the one
//! with the highest sequence number, whichever segment holds it; deletes are kept
//! as tombstones until every segment has been read, so a tombstone beats an older
//! copy that a merge wrote into a segment with a higher id.

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::io::{BufReader, Read};
use std::path::Path;

use super::hint;
use super::record::{self, HEADER_LEN, Invalid, MAX_BODY_LEN};
use super::{
    Entry, SEGMENT_HEADER_LEN, SEGMENT_MAGIC, SEGMENT_MAGIC_V1, SHARDS, SPACES, Segment, Shard,
    fsync_dir, segment_path, shard_of,
};
use crate::disk::Disk;
use crate::error::{Result, StorageError};

/// What [`recover`] found.
pub(crate) struct Recovered {
    pub(crate) shards: Vec<Shard>,
    pub(crate) segments: BTreeMap<u32, std::sync::Arc<Segment>>,
    pub(crate) next_seq: u64,
    pub(crate) next_segment: u32,
    pub(crate) truncated_bytes: u64,
    pub(crate) skipped_records: u64,
    pub(crate) skipped_bytes: u64,
    /// Where each skipped stretch begins: (segment, offset).
    pub(crate) skipped_at: Vec<(u32, u64)>,
    /// Segments whose keys came from their hint file.
    pub(crate) hinted: Vec<u32>,
}

/// Name of the file listing the segments a committed merge replaced.
pub(crate) const MERGE_MANIFEST: &str = "MERGE";
/// The manifest while it is written (renamed to [`MERGE_MANIFEST`] once synced).
pub(crate) const MERGE_MANIFEST_TMP: &str = "MERGE.tmp";
/// Suffix of a merge's output before it is committed.
pub(crate) const MERGE_SUFFIX: &str = ".merging";

/// Segment ids in `dir`, sorted; refuses a directory another engine wrote.
fn list(dir: &Path, disk: &Disk) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    let mut hints = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(StorageError::io("listing the data directory"))?;
    for entry in entries {
        let entry = entry.map_err(StorageError::io("listing the data directory"))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".jnl") || name == "keyspaces" {
            return Err(StorageError::ForeignFormat {
                path: dir.to_path_buf(),
                found: name.to_string(),
            });
        }
        if name.ends_with(MERGE_SUFFIX) {
            // An uncommitted merge's output: the segments it copied are all still here.
            std::fs::remove_file(entry.path())
                .map_err(StorageError::io("removing an unfinished merge"))?;
            disk.removed(&entry.path());
            continue;
        }
        if name.ends_with(".hint.tmp") {
            // A hint being written when the process died: written again later.
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        if let Some(id) = name
            .strip_suffix(".hint")
            .and_then(|n| n.parse::<u32>().ok())
        {
            hints.push(id);
        }
        if let Some(id) = name
            .strip_suffix(".seg")
            .and_then(|n| n.parse::<u32>().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    for id in hints {
        if ids.binary_search(&id).is_err() {
            // Its segment was merged away after the hint's removal was due.
            hint::remove(dir, disk, id);
        }
    }
    Ok(ids)
}

/// Finishes a merge that committed but had not removed all the segments it replaced
/// (on open, and before a merge, should the previous one have failed halfway).
pub(crate) fn finish_merge(dir: &Path, disk: &Disk) -> Result<()> {
    // A manifest being written when the process died: its merge had not committed.
    match std::fs::remove_file(dir.join(MERGE_MANIFEST_TMP)) {
        Ok(()) => fsync_dir(disk, dir)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(StorageError::Io {
                during: "removing an unfinished merge manifest",
                source: e,
            });
        }
    }
    let manifest = dir.join(MERGE_MANIFEST);
    let raw = match std::fs::read_to_string(&manifest) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(StorageError::Io {
                during: "reading the merge manifest",
                source: e,
            });
        }
    };
    for line in raw.lines() {
        let id: u32 = line.trim().parse().map_err(|_| StorageError::Corrupt {
            segment: 0,
            offset: 0,
            reason: "unreadable merge manifest",
        })?;
        hint::remove(dir, disk, id);
        match std::fs::remove_file(segment_path(dir, id)) {
            Ok(()) => disk.removed(&segment_path(dir, id)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StorageError::Io {
                    during: "removing a merged segment",
                    source: e,
                });
            }
        }
    }
    fsync_dir(disk, dir)?;
    std::fs::remove_file(&manifest).map_err(StorageError::io("removing the merge manifest"))?;
    fsync_dir(disk, dir)
}

pub(super) struct Slot {
    pub(super) entry: Entry,
    pub(super) deleted: bool,
}

pub(super) type Slots = Vec<[HashMap<Box<[u8]>, Slot>; SPACES]>;

/// Empty per-shard maps for [`scan_segment`].
pub(super) fn new_slots() -> Slots {
    (0..SHARDS).map(|_| Default::default()).collect()
}

/// Records that `key` of `space` was written (or deleted) at `entry`, unless a
/// newer write of it was seen.
fn note(slots: &mut Slots, space: super::Space, key: &[u8], entry: Entry, deleted: bool) {
    let map = &mut slots[shard_of(space, key)][space as usize];
    let slot = Slot { entry, deleted };
    match map.get_mut(key) {
        // An equal number is a later op of the same batch (which wins, as it did
        // when committed) or a merge's copy of the same write.
        Some(old) if old.entry.seq > entry.seq => {}
        Some(old) => *old = slot,
        None => {
            map.insert(key.into(), slot);
        }
    }
}

/// What reading one segment found.
pub(super) struct Scan {
    /// End of the last whole record read.
    pub(super) end: u64,
    /// Records read.
    pub(super) records: u64,
    /// Damaged stretches skipped (good records followed) and their bytes.
    pub(super) skipped: (u64, u64),
    /// Where they begin.
    pub(super) skipped_at: Vec<u64>,
    /// Where damage began that no good record of this file follows.
    pub(super) tail: Option<u64>,
}

/// Reads the records of one segment into `slots`, resynchronising after damage on
/// the next whole record.
#[allow(clippy::too_many_arguments)]
pub(super) fn scan_segment(
    file: &std::fs::File,
    id: u32,
    header_len: u64,
    salt: &record::Salt,
    file_len: u64,
    slots: &mut Slots,
    max_seq: &mut u64,
) -> Result<Scan> {
    use std::io::{Seek, SeekFrom};
    let mut reader = BufReader::with_capacity(1 << 20, file);
    reader
        .seek(SeekFrom::Start(header_len))
        .map_err(StorageError::io("reading a log segment"))?;
    let mut scan = Scan {
        end: header_len,
        records: 0,
        skipped: (0, 0),
        skipped_at: Vec::new(),
        tail: None,
    };
    let mut pos = header_len;
    let mut buf = Vec::new();
    while pos < file_len {
        let damaged = 'record: {
            let mut header = [0u8; HEADER_LEN];
            if file_len - pos < HEADER_LEN as u64 {
                break 'record true;
            }
            reader
                .read_exact(&mut header)
                .map_err(StorageError::io("reading a log segment"))?;
            let body_len = record::body_len(&header);
            if !fits(body_len, pos, file_len) {
                break 'record true;
            }
            buf.clear();
            buf.extend_from_slice(&header);
            buf.resize(HEADER_LEN + body_len, 0);
            reader
                .read_exact(&mut buf[HEADER_LEN..])
                .map_err(StorageError::io("reading a log segment"))?;
            let (seq, ops) = match record::decode(&buf, salt) {
                Ok(decoded) => decoded,
                Err(Invalid::Malformed(reason)) => {
                    return Err(StorageError::Corrupt {
                        segment: id,
                        offset: pos,
                        reason,
                    });
                }
                Err(Invalid::Checksum | Invalid::Short) => break 'record true,
            };
            *max_seq = (*max_seq).max(seq);
            for op in ops {
                let entry = Entry {
                    segment: id,
                    crc: crc32fast::hash(op.value.unwrap_or(&[])),
                    offset: pos + u64::from(op.value_offset),
                    len: op.value.map_or(0, |v| v.len() as u32),
                    seq,
                };
                note(slots, op.space, op.key, entry, op.value.is_none());
            }
            scan.records += 1;
            pos += buf.len() as u64;
            scan.end = pos;
            false
        };
        if !damaged {
            continue;
        }
        // A damaged length field makes the next record boundary unknown: look for
        // the next whole record rather than give up on the rest of the file (a
        // sealed segment holds fsynced, acknowledged writes after the damage).
        match next_record(file, pos + 1, file_len, salt) {
            Some(next) => {
                tracing::error!(
                    segment = id,
                    offset = pos,
                    bytes = next - pos,
                    "skipping damaged bytes of a log segment; replicas repair their keys"
                );
                scan.skipped.0 += 1;
                scan.skipped.1 += next - pos;
                scan.skipped_at.push(pos);
                pos = next;
                reader
                    .seek(SeekFrom::Start(pos))
                    .map_err(StorageError::io("reading a log segment"))?;
            }
            None => {
                scan.tail = Some(pos);
                break;
            }
        }
    }
    Ok(scan)
}

/// Reads every segment in `dir` into a directory.
pub(crate) fn recover(
    dir: &Path,
    disk: &Disk,
    fds: &std::sync::Arc<super::Descriptors>,
) -> Result<Recovered> {
    finish_merge(dir, disk)?;
    let ids = list(dir, disk)?;
    // Hash maps while reading (two lookups per op, no key comparisons along a tree
    // path); each sorted once into its shard's tree at the end.
    let mut slots: Slots = new_slots();
    // Files are closed once read: a directory of 10,000 segments opens one at a time.
    let mut read: Vec<(u32, u64, Scan, record::Salt)> = Vec::new();
    let mut max_seq = 0u64;
    let mut truncated_bytes = 0u64;
    let mut skipped_records = 0u64;
    let mut skipped_bytes = 0u64;
    let mut skipped_at = Vec::new();
    let mut removed_any = false;
    let mut hinted = Vec::new();
    // Hint files as read, merged into the shards at the end.
    let mut hinted_raw: Vec<(u32, Vec<u8>)> = Vec::new();
    let remove = |path: &Path| -> Result<()> {
        std::fs::remove_file(path).map_err(StorageError::io("removing an empty segment"))?;
        disk.removed(path);
        Ok(())
    };
    for &id in &ids {
        let path = segment_path(dir, id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(StorageError::io("opening a log segment"))?;
        let file_len = file
            .metadata()
            .map_err(StorageError::io("opening a log segment"))?
            .len();
        disk.found(&path, file_len);
        let mut magic = [0u8; 8];
        if file_len < SEGMENT_MAGIC.len() as u64 {
            // Created, then the process died before its first bytes: nothing in it.
            drop(file);
            remove(&path)?;
            removed_any = true;
            continue;
        }
        {
            use std::os::unix::fs::FileExt;
            file.read_exact_at(&mut magic, 0)
                .map_err(StorageError::io("reading a log segment"))?;
        }
        if magic == [0u8; 8] && all_zeros(&file, file_len) {
            // Created just before a power loss: the header never reached the disk,
            // and nor did anything after it.
            drop(file);
            remove(&path)?;
            removed_any = true;
            continue;
        }
        if magic == [0u8; 8] {
            // The first page never reached the disk, later ones did (write-back
            // order is the kernel's): no fsync of this file ever completed, or it
            // would have written the header too, so nothing in it was acknowledged
            // as durable; and without the header's salt nothing in it can be
            // checked. It is set aside, not read (review S3: this refused the start).
            let aside = path.with_extension("seg.torn");
            drop(file);
            std::fs::rename(&path, &aside).map_err(StorageError::io(
                "setting aside a segment without its header",
            ))?;
            disk.removed(&path);
            tracing::warn!(
                segment = id,
                bytes = file_len,
                kept_as = %aside.display(),
                "a log segment lost its header in a crash; set aside"
            );
            truncated_bytes += file_len;
            removed_any = true;
            continue;
        }
        let (header_len, salt) = if &magic == SEGMENT_MAGIC_V1 {
            (SEGMENT_MAGIC.len() as u64, None)
        } else if &magic == SEGMENT_MAGIC {
            let mut salt = [0u8; 8];
            use std::os::unix::fs::FileExt;
            if file_len < SEGMENT_HEADER_LEN || file.read_exact_at(&mut salt, 8).is_err() {
                // Its header was never whole: created just before the process died.
                drop(file);
                remove(&path)?;
                removed_any = true;
                continue;
            }
            (SEGMENT_HEADER_LEN, Some(salt))
        } else {
            return Err(StorageError::Corrupt {
                segment: id,
                offset: 0,
                reason: "not a ringkv log segment (or an unknown format version)",
            });
        };
        let scan = match hint::load(dir, id, &salt, file_len) {
            // Keys from the hint, values left on disk.
            Some(raw) => {
                let mut records = 0;
                for h in hint::entries(&raw, id).flatten() {
                    max_seq = max_seq.max(h.entry.seq);
                    records += 1;
                }
                hinted.push(id);
                hinted_raw.push((id, raw));
                Scan {
                    end: file_len,
                    records,
                    skipped: (0, 0),
                    skipped_at: Vec::new(),
                    tail: None,
                }
            }
            None => scan_segment(
                &file,
                id,
                header_len,
                &salt,
                file_len,
                &mut slots,
                &mut max_seq,
            )?,
        };
        skipped_records += scan.skipped.0;
        skipped_bytes += scan.skipped.1;
        skipped_at.extend(scan.skipped_at.iter().map(|&at| (id, at)));
        drop(file);
        read.push((id, file_len, scan, salt));
    }
    let last = read.len().checked_sub(1);
    let mut segments = BTreeMap::new();
    for (i, (id, file_len, scan, salt)) in read.into_iter().enumerate() {
        let path = segment_path(dir, id);
        let mut len = file_len;
        if let Some(at) = scan.tail {
            if Some(i) == last {
                // A torn append (the process or the machine died mid-write) to what
                // was the active segment: nothing valid follows, and nothing after
                // it was ever acknowledged as durable.
                tracing::warn!(
                    segment = id,
                    offset = at,
                    cut_bytes = file_len - at,
                    "cutting a torn record off the last log segment"
                );
                truncated_bytes += file_len - at;
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(StorageError::io("truncating a torn segment"))?;
                file.set_len(at)
                    .map_err(StorageError::io("truncating a torn segment"))?;
                disk.sync_data(&file, &path)
                    .map_err(StorageError::io("truncating a torn segment"))?;
                len = at;
            } else {
                // A sealed segment is never cut: its damaged end stays on disk (for
                // whoever looks into it) and is not read.
                tracing::error!(
                    segment = id,
                    offset = at,
                    bytes = file_len - at,
                    "a sealed log segment ends in damaged bytes; they are skipped, replicas repair their keys"
                );
                skipped_records += 1;
                skipped_bytes += file_len - at;
                skipped_at.push((id, at));
            }
        }
        if scan.records == 0 && len <= scan.end {
            // Holds no record: nothing to keep (a node restarted before writing).
            remove(&path)?;
            removed_any = true;
            continue;
        }
        let segment = Segment::closed(id, path, len, salt, fds);
        segments.insert(id, std::sync::Arc::new(segment));
    }
    if removed_any {
        fsync_dir(disk, dir)?;
    }
    let shards = build_shards(slots, &hinted_raw);
    let exhausted = |what| StorageError::Corrupt {
        segment: ids.last().copied().unwrap_or(0),
        offset: 0,
        reason: what,
    };
    Ok(Recovered {
        shards,
        segments,
        next_seq: max_seq
            .checked_add(1)
            .ok_or(exhausted("sequence numbers exhausted"))?,
        next_segment: match ids.last() {
            None => 1,
            Some(last) => last
                .checked_add(1)
                .ok_or(exhausted("segment ids exhausted"))?,
        },
        truncated_bytes,
        skipped_records,
        skipped_bytes,
        skipped_at,
        hinted,
    })
}

/// The entries of one hint file, in its (shard, space, key) order, and where each
/// shard's run of each space begins: `runs[shard * SPACES + space]..runs[.. + 1]`.
struct HintRuns<'a> {
    entries: Vec<hint::Hinted<'a>>,
    runs: Vec<usize>,
}

impl<'a> HintRuns<'a> {
    fn new(id: u32, raw: &'a [u8]) -> Self {
        let entries: Vec<hint::Hinted<'a>> = hint::entries(raw, id).flatten().collect();
        let mut runs = vec![0usize; SHARDS * SPACES + 1];
        for e in &entries {
            runs[shard_of(e.space, e.key) * SPACES + e.space as usize + 1] += 1;
        }
        for i in 1..runs.len() {
            runs[i] += runs[i - 1];
        }
        HintRuns { entries, runs }
    }

    fn run(&self, shard: usize, space: usize) -> &[hint::Hinted<'a>] {
        let g = shard * SPACES + space;
        &self.entries[self.runs[g]..self.runs[g + 1]]
    }
}

/// Turns what the segments said into the shards of the directory: per shard and
/// space, the sorted runs of the hint files and the keys of the segments read whole,
/// merged (newest sequence number wins, deletes drop out) into a tree built from
/// sorted input in one pass, and the bytes each segment still holds. The shards are
/// independent: two threads share them.
fn build_shards(slots: Slots, hinted: &[(u32, Vec<u8>)]) -> Vec<Shard> {
    let files: Vec<HintRuns<'_>> = hinted
        .iter()
        .map(|(id, raw)| HintRuns::new(*id, raw))
        .collect();
    let build = |shard_index: usize, per_space: [HashMap<Box<[u8]>, Slot>; SPACES]| -> Shard {
        let mut shard = Shard::default();
        for (space, map) in per_space.into_iter().enumerate() {
            let from_hints: usize = files.iter().map(|f| f.run(shard_index, space).len()).sum();
            let mut all: Vec<(&[u8], Entry, bool)> = Vec::with_capacity(from_hints + map.len());
            for f in &files {
                all.extend(
                    f.run(shard_index, space)
                        .iter()
                        .map(|h| (h.key, h.entry, h.deleted)),
                );
            }
            all.extend(
                map.iter()
                    .map(|(k, slot)| (&k[..], slot.entry, slot.deleted)),
            );
            // Sorted runs, one per file: a stable merge sort merges them.
            all.sort_by(|a, b| a.0.cmp(b.0).then(b.1.seq.cmp(&a.1.seq)));
            all.dedup_by(|later, first| later.0 == first.0);
            let mut live: Vec<(Box<[u8]>, Entry)> = Vec::with_capacity(all.len());
            for (key, entry, deleted) in all {
                if deleted {
                    continue;
                }
                *shard.live.entry(entry.segment).or_default() += entry.bytes(key);
                live.push((key.into(), entry));
            }
            shard.maps[space] = live.into_iter().collect();
        }
        shard
    };
    let mut slots = slots;
    let half = slots.len() / 2;
    let second = std::sync::Mutex::new(Some(slots.split_off(half)));
    let take = || crate::store::lock(&second).take().unwrap_or_default();
    let build_from = |first: usize, part: Vec<[HashMap<Box<[u8]>, Slot>; SPACES]>| -> Vec<Shard> {
        part.into_iter()
            .enumerate()
            .map(|(i, per_space)| build(first + i, per_space))
            .collect()
    };
    std::thread::scope(|scope| {
        let other = std::thread::Builder::new()
            .name("ringkv-recovery".into())
            .spawn_scoped(scope, || build_from(half, take()));
        let mut shards = build_from(0, slots);
        match other {
            Ok(handle) => match handle.join() {
                Ok(rest) => shards.extend(rest),
                Err(panic) => std::panic::resume_unwind(panic),
            },
            // No second thread: this one builds the rest.
            Err(_) => shards.extend(build_from(half, take())),
        }
        shards
    })
}

/// Bytes scanned per read while looking for the next record after damage.
const RESYNC_WINDOW: usize = 1 << 20;
/// Bytes of a record that cheap checks look at: header, format, sequence number, op
/// count, and the first op's space and kind.
const PROBE_LEN: usize = HEADER_LEN + record::BODY_PREFIX_LEN + 2;

/// Offset of the first whole record at or after `from` (its checksum holds), if any.
///
/// Candidates are first filtered on bytes already read (a plausible length, format
/// version 1, at least one op of a known space and kind), so damaged stretches of
/// random bytes cost about one checksum per 2^27 offsets, not one per offset.
fn next_record(file: &std::fs::File, from: u64, file_len: u64, salt: &record::Salt) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; RESYNC_WINDOW + PROBE_LEN];
    let mut at = from;
    while at + PROBE_LEN as u64 <= file_len {
        let n = ((file_len - at) as usize).min(buf.len());
        if file.read_exact_at(&mut buf[..n], at).is_err() {
            return None;
        }
        let candidates = (n + 1 - PROBE_LEN).min(RESYNC_WINDOW);
        for i in 0..candidates {
            let p = &buf[i..i + PROBE_LEN];
            let len = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize;
            let q = at + i as u64;
            let count = u16::from_le_bytes([p[HEADER_LEN + 9], p[HEADER_LEN + 10]]);
            let (space, kind) = (p[HEADER_LEN + 11], p[HEADER_LEN + 12]);
            if p[HEADER_LEN] == record::FORMAT
                && count > 0
                && space < SPACES as u8
                && kind < 2
                && fits(len, q, file_len)
                && whole_record_at(file, q, file_len, salt)
            {
                return Some(q);
            }
        }
        at += candidates as u64;
    }
    None
}

/// Whether a well-formed record starts at `at` (read without moving the scan).
fn whole_record_at(file: &std::fs::File, at: u64, file_len: u64, salt: &record::Salt) -> bool {
    use std::os::unix::fs::FileExt;
    let mut header = [0u8; HEADER_LEN];
    if at + HEADER_LEN as u64 > file_len || file.read_exact_at(&mut header, at).is_err() {
        return false;
    }
    let len = record::body_len(&header);
    if !fits(len, at, file_len) {
        return false;
    }
    let mut rec = vec![0u8; HEADER_LEN + len];
    file.read_exact_at(&mut rec, at).is_ok() && record::decode(&rec, salt).is_ok()
}

/// Whether a header announcing `body_len` bytes at `at` can be a whole record: no
/// record is shorter than its fixed prefix (a zero length is an unwritten, zeroed
/// tail), longer than the bound, or longer than what is left of the file.
fn fits(body_len: usize, at: u64, file_len: u64) -> bool {
    (record::BODY_PREFIX_LEN..=MAX_BODY_LEN).contains(&body_len)
        && at + (HEADER_LEN + body_len) as u64 <= file_len
}

/// Whether a file holds nothing but zero bytes (read in 1 MiB blocks).
fn all_zeros(file: &std::fs::File, len: u64) -> bool {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        if file.read_exact_at(&mut buf[..n], at).is_err() || buf[..n].iter().any(|b| *b != 0) {
            return false;
        }
        at += n as u64;
    }
    true
}
