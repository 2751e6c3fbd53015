//! An audit log's head: the hash and count of its last record on disk, kept in a file of
//! its own that the writer replaces after each sync (as CloudTrail's digest files do).
//! Cutting records off the end of a log leaves its chain intact; only the head, kept
//! where the log's cutter cannot also write, says that records were there. The head is
//! not keyed: the KMS server's log has no key to sign it with, and `kmsfs audit verify`
//! must run without a KMS. What that catches and what not: `docs/audit-log.md`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// What the head says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The file name of the log the record is in (the log's current file when written).
    pub log: String,
    /// How many records that file held, the last one included.
    pub records: u64,
    /// The last record's `hash`.
    pub hash: String,
    /// When the head was written (RFC 3339, UTC).
    pub time: String,
    /// The inode of that file, so that a writer never puts back a head older than the
    /// one another writer of the same file left.
    #[serde(default)]
    pub inode: u64,
}

/// The head's default place: `LOG.head`, beside the log.
pub fn beside(log: &Path) -> PathBuf {
    super::tail::beside(log, "head")
}

/// Reads a head; `None` if there is none.
pub fn read(path: &Path) -> io::Result<Option<Head>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `head` to a new temporary file beside `path`, on disk, for [`install`].
pub(super) fn prepare(path: &Path, head: &Head) -> io::Result<PathBuf> {
    // Several writers in one process may share a head; each needs its own temporary file.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = super::tail::beside(path, &format!("tmp-{}-{n}", std::process::id()));
    let mut text = serde_json::to_vec(head).map_err(io::Error::other)?;
    text.push(b'\n');
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&text).and_then(|()| f.sync_all()));
    if let Err(e) = written {
        // A full disk must not collect temporary heads.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// Puts a prepared head in place. Without a directory sync: a head lost in a crash leaves
/// the previous one, which is behind the log, never ahead of it.
pub(super) fn install(tmp: &Path, path: &Path) -> io::Result<()> {
    std::fs::rename(tmp, path)
}

/// Whether `head`, the head of the log at `log`, names a record that is neither in `file`
/// (its first `len` bytes) nor, when `file` continues a rotated file, in that one: then
/// records were cut off the end, or the log was replaced, since the head was written.
pub(super) fn lost(head: &Head, log: &Path, file: &File, len: u64) -> io::Result<bool> {
    if head.log != super::tail::file_name(log) {
        return Ok(false);
    }
    let needle = format!("\"hash\":\"{}\"", head.hash);
    if super::tail::holds(file, len, needle.as_bytes())? {
        return Ok(false);
    }
    // A head written just before a rotation names a record of the rotated file.
    let first: serde_json::Value =
        serde_json::from_slice(&super::tail::first_line(file)?).unwrap_or_default();
    let previous = first
        .get("previous_file")
        .and_then(serde_json::Value::as_str)
        .filter(|n| super::chain::is_plain_name(n));
    match previous.map(|n| File::open(log.with_file_name(n))) {
        Some(Ok(older)) => {
            let older_len = older.metadata()?.len();
            Ok(!super::tail::holds(&older, older_len, needle.as_bytes())?)
        }
        _ => Ok(true),
    }
}
