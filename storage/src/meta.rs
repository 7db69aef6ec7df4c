//! Node metadata (identity, generation, dot reservations, actor epochs, membership)
//! in a file of its own, replaced whole through a synced temporary file and a rename.
//!
//! Not in the log: recovery skips a damaged log record and goes on, which is right
//! for objects (a replica has them too) but not for counters that must never go back
//! (a rolled-back dot reservation hands out dots twice). A damaged `META` refuses
//! the open instead, naming the file; an interrupted rewrite leaves the old file.
//!
//! ```text
//! META   magic "RKVMETA" 0x01 | u32 LE body length | body | u32 LE crc32 of the body
//! body   postcard of the sorted (name, value) pairs
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::disk::Disk;
use crate::error::{Result, StorageError};

/// Name of the metadata file in the data directory.
pub(crate) const META_FILE: &str = "META";
/// The file while it is written.
const META_TMP: &str = "META.tmp";
const MAGIC: &[u8; 8] = b"RKVMETA\x01";
/// Largest metadata file accepted (a member set of 1,024 records is ~150 KiB).
const MAX_META_BYTES: usize = 16 << 20;

/// The metadata of one store, cached in memory.
pub(crate) struct MetaFile {
    dir: PathBuf,
    disk: Disk,
    map: Mutex<BTreeMap<String, Vec<u8>>>,
}

fn corrupt(path: &Path, reason: &'static str) -> StorageError {
    StorageError::CorruptMeta {
        path: path.to_path_buf(),
        reason,
    }
}

fn decode(path: &Path, raw: &[u8]) -> Result<BTreeMap<String, Vec<u8>>> {
    let rest = raw
        .strip_prefix(&MAGIC[..])
        .ok_or_else(|| corrupt(path, "not a ringkv metadata file (or an unknown version)"))?;
    let (len, rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| corrupt(path, "truncated"))?;
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() != len + 4 {
        return Err(corrupt(path, "its length does not match its header"));
    }
    let (body, crc) = rest.split_at(len);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(corrupt(path, "checksum mismatch"));
    }
    let pairs: Vec<(String, Vec<u8>)> =
        postcard::from_bytes(body).map_err(|_| corrupt(path, "undecodable body"))?;
    Ok(pairs.into_iter().collect())
}

fn encode(map: &BTreeMap<String, Vec<u8>>) -> Result<Vec<u8>> {
    let pairs: Vec<(&String, &Vec<u8>)> = map.iter().collect();
    let body = postcard::to_stdvec(&pairs).map_err(|_| StorageError::MetaTooLarge)?;
    if body.len() > MAX_META_BYTES {
        return Err(StorageError::MetaTooLarge);
    }
    let mut out = Vec::with_capacity(body.len() + 16);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    Ok(out)
}

impl MetaFile {
    /// Reads `dir/META` if it exists. Returns the file and whether it existed.
    ///
    /// # Errors
    /// [`StorageError::CorruptMeta`] if the file is damaged, [`StorageError::Io`].
    pub(crate) fn open(dir: &Path, disk: Disk) -> Result<(MetaFile, bool)> {
        let path = dir.join(META_FILE);
        // A rewrite that never got renamed: the old file stands.
        match std::fs::remove_file(dir.join(META_TMP)) {
            Ok(()) => disk.removed(&dir.join(META_TMP)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StorageError::Io {
                    during: "removing an unfinished metadata file",
                    source: e,
                });
            }
        }
        let (map, existed) = match std::fs::read(&path) {
            Ok(raw) if raw.len() > MAX_META_BYTES + 16 => {
                return Err(corrupt(&path, "larger than any metadata file"));
            }
            Ok(raw) => (decode(&path, &raw)?, true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (BTreeMap::new(), false),
            Err(e) => {
                return Err(StorageError::Io {
                    during: "reading the metadata file",
                    source: e,
                });
            }
        };
        Ok((
            MetaFile {
                dir: dir.to_path_buf(),
                disk,
                map: Mutex::new(map),
            },
            existed,
        ))
    }

    /// A value.
    pub(crate) fn get(&self, name: &str) -> Option<Vec<u8>> {
        crate::store::lock(&self.map).get(name).cloned()
    }

    /// Sets values and makes the file durable before returning; on failure nothing
    /// changes, on disk or in memory.
    ///
    /// # Errors
    /// [`StorageError::Io`], [`StorageError::MetaTooLarge`].
    pub(crate) fn set_all<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<()> {
        let mut map = crate::store::lock(&self.map);
        let mut next = map.clone();
        for (name, value) in entries {
            next.insert(name.to_string(), value.to_vec());
        }
        let bytes = encode(&next)?;
        let tmp = self.dir.join(META_TMP);
        let during = "writing the metadata file";
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            self.disk.created(&tmp);
            f.write_all(&bytes)?;
            self.disk.sync_data(&f, &tmp)?;
            drop(f);
            self.disk.rename(&tmp, &self.dir.join(META_FILE))?;
            self.disk.sync_dir(&self.dir)
        })();
        if let Err(source) = written {
            // The old file stands; the half-written one must not outlive the error.
            let _ = std::fs::remove_file(&tmp);
            self.disk.removed(&tmp);
            return Err(StorageError::Io { during, source });
        }
        *map = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_survive_reopen_and_damage_refuses_the_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (m, existed) = MetaFile::open(dir.path(), Disk::Os).expect("open");
            assert!(!existed);
            m.set_all([("a", &b"1"[..]), ("b", &b"22"[..])])
                .expect("set");
            m.set_all([("a", &b"3"[..])]).expect("set");
        }
        let (m, existed) = MetaFile::open(dir.path(), Disk::Os).expect("open");
        assert!(existed);
        assert_eq!(m.get("a").as_deref(), Some(&b"3"[..]));
        assert_eq!(m.get("b").as_deref(), Some(&b"22"[..]));
        assert_eq!(m.get("c"), None);
        // A leftover temporary file is an interrupted rewrite: ignored and removed.
        std::fs::write(dir.path().join(META_TMP), b"half").expect("write");
        drop(m);
        let (m, _) = MetaFile::open(dir.path(), Disk::Os).expect("open");
        assert_eq!(m.get("a").as_deref(), Some(&b"3"[..]));
        assert!(!dir.path().join(META_TMP).exists());
        drop(m);
        let path = dir.path().join(META_FILE);
        let good = std::fs::read(&path).expect("read");
        for at in [0, 9, good.len() - 6, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            std::fs::write(&path, &bad).expect("write");
            assert!(
                matches!(
                    MetaFile::open(dir.path(), Disk::Os),
                    Err(StorageError::CorruptMeta { .. })
                ),
                "damage at byte {at}"
            );
        }
        std::fs::write(&path, &good[..good.len() - 2]).expect("write");
        assert!(matches!(
            MetaFile::open(dir.path(), Disk::Os),
            Err(StorageError::CorruptMeta { .. })
        ));
    }
}
