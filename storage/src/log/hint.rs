//! Hint files, Bitcask's: beside each sealed segment `NNNNNNNN.seg`, a
//! `NNNNNNNN.hint` listing every key the segment holds with where its last write
//! in that segment lies (sequence number, offset, length, value checksum) or that
//! it was a delete. An open reads the hint instead of the segment: keys, not
//! values, and one checksum per file instead of one per record.
//!
//! A hint is written only for a segment that is sealed and fsynced, after a clean
//! read of it (no damage), in a temporary file that is fsynced and renamed into
//! place. It names the segment's salt and length: a hint that does not match its
//! segment (a power loss cut the segment, a hint of an older file with the same
//! id), fails its checksum, or cannot be read, is ignored, and the segment is read
//! as before. Values are still checked against their checksum on every read, so
//! damage a hint skips over is found when the value is read (and repaired).
//!
//! Layout: magic (8) | salt (8, zeros for format-1 segments) | segment length (8)
//! | entry count (8) | entries | crc32 of everything before (4). An entry: space
//! (1) | deleted (1) | key length (2, LE) | key | sequence (8) | offset (8) |
//! length (4) | value crc32 (4), integers little-endian. Entries are sorted by
//! directory shard, space and key, so an open merges the sorted runs of its hint
//! files into each shard without hashing or sorting (a hint out of order is
//! refused like a damaged one).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::Entry;
use super::record::Salt;
use crate::disk::Disk;
use crate::error::{Result, StorageError};
use crate::log::Space;

/// First bytes of a hint file (format 1).
const HINT_MAGIC: &[u8; 8] = b"RKVHINT\x02";
const HEADER: usize = 32;
const ENTRY_FIXED: usize = 1 + 1 + 2 + 8 + 8 + 4 + 4;

/// `dir/NNNNNNNN.hint`.
pub(crate) fn hint_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:08}.hint"))
}

/// One key of a hinted segment.
pub(crate) struct Hinted<'a> {
    pub(crate) space: Space,
    pub(crate) key: &'a [u8],
    pub(crate) entry: Entry,
    pub(crate) deleted: bool,
}

/// Where an entry sorts: its directory shard, then space, then key.
pub(crate) fn order_key<'a>(h: &Hinted<'a>) -> (usize, u8, &'a [u8]) {
    (super::shard_of(h.space, h.key), h.space as u8, h.key)
}

/// Writes the hint of segment `id` (sealed, synced, `len` bytes, `salt`) listing
/// `entries` (one per key), sorted here.
pub(crate) fn write(
    dir: &Path,
    disk: &Disk,
    id: u32,
    salt: &Salt,
    len: u64,
    mut entries: Vec<Hinted<'_>>,
) -> Result<()> {
    entries.sort_unstable_by(|a, b| order_key(a).cmp(&order_key(b)));
    let mut out = Vec::with_capacity(HEADER + entries.len() * (ENTRY_FIXED + 24) + 4);
    out.extend_from_slice(HINT_MAGIC);
    out.extend_from_slice(&salt.unwrap_or([0; 8]));
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for h in entries {
        let key_len = u16::try_from(h.key.len())
            .map_err(|_| StorageError::CorruptKey { len: h.key.len() })?;
        out.push(h.space as u8);
        out.push(u8::from(h.deleted));
        out.extend_from_slice(&key_len.to_le_bytes());
        out.extend_from_slice(h.key);
        out.extend_from_slice(&h.entry.seq.to_le_bytes());
        out.extend_from_slice(&h.entry.offset.to_le_bytes());
        out.extend_from_slice(&h.entry.len.to_le_bytes());
        out.extend_from_slice(&h.entry.crc.to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    let path = hint_path(dir, id);
    let tmp = path.with_extension("hint.tmp");
    let during = "writing a hint file";
    let mut file = std::fs::File::create(&tmp).map_err(StorageError::io(during))?;
    file.write_all(&out).map_err(StorageError::io(during))?;
    disk.sync_data(&file, &tmp)
        .map_err(StorageError::io(during))?;
    drop(file);
    disk.rename(&tmp, &path).map_err(StorageError::io(during))?;
    super::fsync_dir(disk, dir)
}

/// The hint of segment `id` as raw bytes, if it is there, whole, and describes
/// exactly this segment (`salt`, `len` bytes); read its entries with [`entries`].
pub(crate) fn load(dir: &Path, id: u32, salt: &Salt, len: u64) -> Option<Vec<u8>> {
    let raw = std::fs::read(hint_path(dir, id)).ok()?;
    if raw.len() < HEADER + 4 || &raw[..8] != HINT_MAGIC {
        return None;
    }
    let (body, tail) = raw.split_at(raw.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(tail.try_into().ok()?) {
        tracing::warn!(
            segment = id,
            "a hint file fails its checksum; reading its segment instead"
        );
        return None;
    }
    if raw[8..16] != salt.unwrap_or([0; 8])
        || u64::from_le_bytes(raw[16..24].try_into().ok()?) != len
    {
        return None;
    }
    // Every entry must parse before any is used.
    // Every entry must parse, in strictly increasing order, before any is used.
    let mut last: Option<(usize, u8, &[u8])> = None;
    for e in entries(&raw, id) {
        let e = e?;
        let at = order_key(&e);
        if last.is_some_and(|l| l >= at) {
            tracing::warn!(
                segment = id,
                "a hint file is out of order; reading its segment instead"
            );
            return None;
        }
        last = Some(at);
    }
    Some(raw)
}

/// The entries of a hint [`load`] accepted.
pub(crate) fn entries(raw: &[u8], id: u32) -> impl Iterator<Item = Option<Hinted<'_>>> {
    let count = raw
        .get(24..32)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes);
    let end = raw.len().saturating_sub(4);
    let mut at = HEADER;
    let mut left = count;
    std::iter::from_fn(move || {
        if left == 0 {
            if at == end {
                return None;
            }
            // Bytes after the last entry: the count does not match.
            at = end;
            return Some(None);
        }
        left -= 1;
        let fixed = raw.get(at..at + 4)?;
        let space = Space::from_byte(fixed[0]);
        let deleted = fixed[1] == 1;
        let key_len = u16::from_le_bytes([fixed[2], fixed[3]]) as usize;
        let key_end = at + 4 + key_len;
        let rest = raw
            .get(key_end..key_end + 24)
            .filter(|_| key_end + 24 <= end);
        let (Some(space), Some(rest)) = (space, rest) else {
            left = 0;
            at = end;
            return Some(None);
        };
        let u64_at = |i: usize| u64::from_le_bytes(rest[i..i + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |i: usize| u32::from_le_bytes(rest[i..i + 4].try_into().unwrap_or([0; 4]));
        let hinted = Hinted {
            space,
            key: &raw[at + 4..key_end],
            entry: Entry {
                segment: id,
                seq: u64_at(0),
                offset: u64_at(8),
                len: u32_at(16),
                crc: u32_at(20),
            },
            deleted,
        };
        at = key_end + 24;
        Some(Some(hinted))
    })
}

/// Removes the hint of a segment that is gone (best effort: a hint whose segment is
/// missing is ignored and removed on the next open).
pub(crate) fn remove(dir: &Path, disk: &Disk, id: u32) {
    let path = hint_path(dir, id);
    if std::fs::remove_file(&path).is_ok() {
        disk.removed(&path);
    }
}
