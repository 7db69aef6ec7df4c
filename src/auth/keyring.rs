//! The hashes of the tokens a node accepts, read from its auth file and read again
//! when the file changes.
//!
//! ```text
//! # NAME ROLE HASH, one token per line (`ringkv token create` prints the line)
//! ci-writer write 4f1c…(64 hex digits)
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::token::{MAX_TOKEN_BYTES, hash, parse_hash};
use super::{Access, Refusal, Role};

/// Most tokens one auth file may hold.
pub const MAX_TOKENS: usize = 10_000;
/// Largest auth file read.
const MAX_FILE_BYTES: u64 = 4 << 20;

/// Why an auth file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// It could not be read.
    #[error("cannot read auth file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A line is not `NAME ROLE HASH`.
    #[error("auth file {path}, line {line}: {reason}")]
    Line {
        /// The file.
        path: PathBuf,
        /// Its 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// One token the node knows.
#[derive(Clone, Debug)]
struct Entry {
    name: String,
    role: Role,
}

/// The parsed file.
#[derive(Debug, Default)]
struct Table {
    by_hash: HashMap<[u8; 32], Entry>,
}

/// The tokens a node accepts, with its counts of refusals.
#[derive(Debug)]
pub struct Keyring {
    path: PathBuf,
    table: RwLock<Arc<Table>>,
    file: crate::watch::Watched,
    refused: [AtomicU64; Refusal::ALL.len()],
}

fn parse(path: &Path, text: &str) -> Result<Table, KeyringError> {
    let mut table = Table::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: String| KeyringError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, role, digest] = fields[..] else {
            return Err(bad(format!(
                "expected NAME ROLE HASH, found {} fields",
                fields.len()
            )));
        };
        let role = Role::parse(role)
            .ok_or_else(|| bad(format!("unknown role {role:?} (read, write or admin)")))?;
        let digest = parse_hash(digest).ok_or_else(|| {
            bad("the hash is not 64 hex digits (the line `ringkv token create` prints)".into())
        })?;
        if table.by_hash.len() >= MAX_TOKENS {
            return Err(bad(format!("more than {MAX_TOKENS} tokens")));
        }
        let entry = Entry {
            name: name.to_string(),
            role,
        };
        if table.by_hash.insert(digest, entry).is_some() {
            return Err(bad("the same hash twice".into()));
        }
    }
    Ok(table)
}

fn read(path: &Path) -> Result<Table, KeyringError> {
    let err = |reason: String| KeyringError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(err(format!("{} bytes, over {MAX_FILE_BYTES}", meta.len())));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    parse(path, &text)
}

impl Keyring {
    /// Reads the auth file at `path`.
    ///
    /// # Errors
    /// [`KeyringError`] if it cannot be read or a line is wrong: a node does not
    /// start with an auth file it cannot use.
    pub fn open(path: impl Into<PathBuf>) -> Result<Keyring, KeyringError> {
        let path = path.into();
        let file = crate::watch::Watched::new(vec![path.clone()]);
        let table = read(&path)?;
        Ok(Keyring {
            path,
            table: RwLock::new(Arc::new(table)),
            file,
            refused: Default::default(),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tokens known.
    pub fn len(&self) -> usize {
        self.current().by_hash.len()
    }

    /// Whether the file holds no token (then every client is refused).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn current(&self) -> Arc<Table> {
        self.table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads the file again if it changed since the last read (or `force`, on
    /// SIGHUP). A file that cannot be used keeps the tokens of the last good one
    /// and is counted. Returns whether new tokens are in force.
    ///
    /// # Errors
    /// Why the changed file could not be used.
    pub fn reload(&self, force: bool) -> Result<bool, KeyringError> {
        if !self.file.changed(force) {
            return Ok(false);
        }
        match read(&self.path) {
            Ok(table) => {
                *self
                    .table
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(table);
                Ok(true)
            }
            Err(e) => {
                self.file.failed();
                Err(e)
            }
        }
    }

    /// What a connection that sent `token` may do.
    ///
    /// # Errors
    /// The kind of refusal (counted) and its one-line reason.
    pub fn check(&self, token: Option<&str>) -> Result<Access, (Refusal, String)> {
        let refused = |kind: Refusal, reason: String| {
            self.count(kind);
            Err((kind, reason))
        };
        let Some(token) = token else {
            return refused(
                Refusal::Missing,
                "this node needs a token: give --token or RINGKV_TOKEN".into(),
            );
        };
        if token.len() > MAX_TOKEN_BYTES {
            return refused(Refusal::Unknown, "token not recognized".into());
        }
        let digest = hash(token.as_bytes());
        match self.current().by_hash.get(&digest) {
            Some(e) => Ok(Access::Token {
                name: e.name.clone(),
                role: e.role,
                hash: digest,
            }),
            None => refused(Refusal::Unknown, "token not recognized".into()),
        }
    }

    /// What the token of `access` may do under the auth file in force now: its
    /// role may have changed since the connection proved it, or it may be gone.
    ///
    /// # Errors
    /// The one-line reason when the token was taken out (counted as unknown).
    pub fn recheck(&self, access: &Access) -> Result<Access, String> {
        let Access::Token { name, hash, .. } = access else {
            return Ok(access.clone());
        };
        match self.current().by_hash.get(hash) {
            Some(e) => Ok(Access::Token {
                name: e.name.clone(),
                role: e.role,
                hash: *hash,
            }),
            None => {
                self.count(Refusal::Unknown);
                Err(format!("token {name:?} is no longer in the auth file"))
            }
        }
    }

    /// Counts a refusal of `kind` (a role too small is found per request, above).
    pub fn count(&self, kind: Refusal) {
        let i = Refusal::ALL
            .iter()
            .position(|k| *k == kind)
            .expect("every refusal is in ALL");
        self.refused[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals so far, by kind, in [`Refusal::ALL`] order.
    pub fn refusals(&self) -> [u64; Refusal::ALL.len()] {
        std::array::from_fn(|i| self.refused[i].load(Ordering::Relaxed))
    }

    /// Changed files that could not be used.
    pub fn reload_failures(&self) -> u64 {
        self.file.failures()
    }
}

#[cfg(test)]
mod tests {
    use super::super::token::{generate, hex};
    use super::*;

    fn line(name: &str, role: &str, token: &str) -> String {
        format!("{name} {role} {}\n", hex(&hash(token.as_bytes())))
    }

    #[test]
    fn tokens_are_checked_against_the_file_and_a_changed_file_is_read_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("auth");
        let (reader, writer) = (generate(), generate());
        std::fs::write(&path, format!("# tokens\n\n{}", line("r", "read", &reader)))
            .expect("write");
        let ring = Keyring::open(&path).expect("open");
        let proved = ring.check(Some(&reader)).expect("known");
        assert_eq!(
            proved,
            Access::Token {
                name: "r".into(),
                role: Role::Read,
                hash: hash(reader.as_bytes()),
            }
        );
        assert_eq!(ring.check(None).map_err(|e| e.0), Err(Refusal::Missing));
        assert_eq!(
            ring.check(Some(&writer)).map_err(|e| e.0),
            Err(Refusal::Unknown)
        );
        assert!(!ring.reload(false).expect("unchanged"));
        // Rewritten through a rename, as editors and Kubernetes do.
        let tmp = dir.path().join("auth.tmp");
        std::fs::write(&tmp, line("w", "write", &writer)).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        assert!(ring.reload(false).expect("changed"));
        assert!(
            ring.check(Some(&reader)).is_err(),
            "a token taken out is refused"
        );
        let gone = ring.recheck(&proved).expect_err("revoked");
        assert!(gone.contains("no longer in the auth file"), "{gone}");
        assert!(ring.check(Some(&writer)).is_ok());
        // A broken file keeps the last good tokens.
        std::fs::write(&path, "w write nothex\n").expect("write");
        assert!(ring.reload(false).is_err());
        assert!(ring.check(Some(&writer)).is_ok());
        assert_eq!(ring.reload_failures(), 1);
        assert_eq!(ring.refusals(), [1, 3, 0]);
    }

    #[test]
    fn bad_lines_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("auth");
        let t = generate();
        for (text, wanted) in [
            (
                format!("a root {}\n", hex(&hash(t.as_bytes()))),
                "line 1: unknown role",
            ),
            (
                "\n\nonly two\n".to_string(),
                "line 3: expected NAME ROLE HASH",
            ),
            (
                format!("{}{}", line("a", "read", &t), line("b", "admin", &t)),
                "line 2: the same hash twice",
            ),
        ] {
            std::fs::write(&path, text).expect("write");
            let e = Keyring::open(&path).expect_err("refused").to_string();
            assert!(e.contains(wanted), "{e}");
        }
        assert!(Keyring::open(dir.path().join("missing")).is_err());
    }
}
