//! Rebuilding the in-memory directory from the segment files on open.
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

use super::record::{self, HEADER_LEN, Invalid, MAX_BODY_LEN};
use super::{
    Entry, SEGMENT_MAGIC, SHARDS, SPACES, Segment, Shard, fsync_dir, segment_path, shard_of,
};
use crate::error::{Result, StorageError};

/// What [`recover`] found.
pub(crate) struct Recovered {
    pub(crate) shards: Vec<Shard>,
    pub(crate) segments: BTreeMap<u32, std::sync::Arc<Segment>>,
    pub(crate) next_seq: u64,
    pub(crate) next_segment: u32,
    pub(crate) truncated_bytes: u64,
    pub(crate) skipped_records: u64,
}

/// Name of the file listing the segments a committed merge replaced.
pub(crate) const MERGE_MANIFEST: &str = "MERGE";
/// The manifest while it is written (renamed to [`MERGE_MANIFEST`] once synced).
pub(crate) const MERGE_MANIFEST_TMP: &str = "MERGE.tmp";
/// Suffix of a merge's output before it is committed.
pub(crate) const MERGE_SUFFIX: &str = ".merging";

/// Segment ids in `dir`, sorted; refuses a directory another engine wrote.
fn list(dir: &Path) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
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
            continue;
        }
        if let Some(id) = name
            .strip_suffix(".seg")
            .and_then(|n| n.parse::<u32>().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Finishes a merge that committed but had not removed all the segments it replaced
/// (on open, and before a merge, should the previous one have failed halfway).
pub(crate) fn finish_merge(dir: &Path) -> Result<()> {
    // A manifest being written when the process died: its merge had not committed.
    match std::fs::remove_file(dir.join(MERGE_MANIFEST_TMP)) {
        Ok(()) => fsync_dir(dir)?,
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
        match std::fs::remove_file(segment_path(dir, id)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StorageError::Io {
                    during: "removing a merged segment",
                    source: e,
                });
            }
        }
    }
    fsync_dir(dir)?;
    std::fs::remove_file(&manifest).map_err(StorageError::io("removing the merge manifest"))?;
    fsync_dir(dir)
}

struct Slot {
    entry: Entry,
    deleted: bool,
}

/// Reads every segment in `dir` into a directory.
pub(crate) fn recover(dir: &Path) -> Result<Recovered> {
    finish_merge(dir)?;
    let ids = list(dir)?;
    // Hash maps while reading (two lookups per op, no key comparisons along a tree
    // path); each sorted once into its shard's tree at the end.
    let mut slots: Vec<[HashMap<Box<[u8]>, Slot>; SPACES]> =
        (0..SHARDS).map(|_| Default::default()).collect();
    let mut segments = BTreeMap::new();
    let mut max_seq = 0u64;
    let mut truncated_bytes = 0u64;
    let mut skipped_records = 0u64;
    let mut removed_any = false;
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
        let mut reader = BufReader::with_capacity(1 << 20, &file);
        let mut magic = [0u8; 8];
        if file_len < SEGMENT_MAGIC.len() as u64 {
            // Created, then the process died before its first bytes: nothing in it.
            drop(reader);
            std::fs::remove_file(&path).map_err(StorageError::io("removing an empty segment"))?;
            removed_any = true;
            continue;
        }
        reader
            .read_exact(&mut magic)
            .map_err(StorageError::io("reading a log segment"))?;
        if magic == [0u8; 8] && all_zeros(&file, file_len) {
            // Created just before a power loss: the header never reached the disk,
            // and nor did anything after it.
            drop(reader);
            std::fs::remove_file(&path).map_err(StorageError::io("removing an empty segment"))?;
            removed_any = true;
            continue;
        }
        if &magic != SEGMENT_MAGIC {
            return Err(StorageError::Corrupt {
                segment: id,
                offset: 0,
                reason: "not a ringkv log segment (or an unknown format version)",
            });
        }
        let mut pos = SEGMENT_MAGIC.len() as u64;
        let mut buf = Vec::new();
        let torn = loop {
            if pos == file_len {
                break None;
            }
            let mut header = [0u8; HEADER_LEN];
            if file_len - pos < HEADER_LEN as u64 {
                break Some(Invalid::Short);
            }
            reader
                .read_exact(&mut header)
                .map_err(StorageError::io("reading a log segment"))?;
            let body_len = record::body_len(&header);
            if !fits(body_len, pos, file_len) {
                break Some(Invalid::Short);
            }
            buf.clear();
            buf.extend_from_slice(&header);
            buf.resize(HEADER_LEN + body_len, 0);
            reader
                .read_exact(&mut buf[HEADER_LEN..])
                .map_err(StorageError::io("reading a log segment"))?;
            let (seq, ops) = match record::decode(&buf) {
                Ok(decoded) => decoded,
                Err(Invalid::Malformed(reason)) => {
                    return Err(StorageError::Corrupt {
                        segment: id,
                        offset: pos,
                        reason,
                    });
                }
                Err(Invalid::Checksum)
                    if whole_record_at(&file, pos + buf.len() as u64, file_len) =>
                {
                    // Not a torn append (those only ever hit the last record): a
                    // damaged record with good ones after it. Skip it alone and say
                    // so; replicas repair its keys by anti-entropy or read repair.
                    tracing::error!(
                        segment = id,
                        offset = pos,
                        bytes = buf.len(),
                        "skipping a log record whose checksum fails"
                    );
                    skipped_records += 1;
                    pos += buf.len() as u64;
                    continue;
                }
                Err(invalid) => break Some(invalid),
            };
            max_seq = max_seq.max(seq);
            for op in ops {
                let entry = Entry {
                    segment: id,
                    crc: crc32fast::hash(op.value.unwrap_or(&[])),
                    offset: pos + u64::from(op.value_offset),
                    len: op.value.map_or(0, |v| v.len() as u32),
                    seq,
                };
                let map = &mut slots[shard_of(op.space, op.key)][op.space as usize];
                let slot = Slot {
                    entry,
                    deleted: op.value.is_none(),
                };
                match map.get_mut(op.key) {
                    // An equal number is a later op of the same batch (which wins, as
                    // it did when committed) or a merge's copy of the same write.
                    Some(old) if old.entry.seq > seq => {}
                    Some(old) => *old = slot,
                    None => {
                        map.insert(op.key.into(), slot);
                    }
                }
            }
            pos += buf.len() as u64;
        };
        if let Some(why) = torn {
            // A torn append (the process or the machine died mid-write): what follows
            // the last whole record was never acknowledged as durable.
            tracing::warn!(
                segment = id,
                offset = pos,
                cut_bytes = file_len - pos,
                ?why,
                "cutting a torn record off a log segment"
            );
            truncated_bytes += file_len - pos;
            drop(reader);
            file.set_len(pos)
                .map_err(StorageError::io("truncating a torn segment"))?;
            file.sync_all()
                .map_err(StorageError::io("truncating a torn segment"))?;
        }
        if pos == SEGMENT_MAGIC.len() as u64 {
            // Holds no record: nothing to keep (a node restarted before writing).
            drop(file);
            std::fs::remove_file(&path).map_err(StorageError::io("removing an empty segment"))?;
            removed_any = true;
            continue;
        }
        let segment = Segment {
            id,
            file,
            len: std::sync::atomic::AtomicU64::new(pos),
        };
        segments.insert(id, std::sync::Arc::new(segment));
    }
    if removed_any {
        fsync_dir(dir)?;
    }
    let mut shards: Vec<Shard> = Vec::with_capacity(SHARDS);
    for per_space in slots {
        let mut shard = Shard::default();
        for (space, map) in per_space.into_iter().enumerate() {
            let mut live: Vec<(Box<[u8]>, Entry)> = map
                .into_iter()
                .filter(|(_, slot)| !slot.deleted)
                .map(|(key, slot)| (key, slot.entry))
                .collect();
            live.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            for (key, entry) in &live {
                *shard.live.entry(entry.segment).or_default() += entry.bytes(key);
            }
            // From sorted input a tree is built in one pass.
            shard.maps[space] = live.into_iter().collect();
        }
        shards.push(shard);
    }
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
    })
}

/// Whether a well-formed record starts at `at` (read without moving the scan).
fn whole_record_at(file: &std::fs::File, at: u64, file_len: u64) -> bool {
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
    file.read_exact_at(&mut rec, at).is_ok() && record::decode(&rec).is_ok()
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
