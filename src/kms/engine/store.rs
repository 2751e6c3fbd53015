//! The state file as several processes share it: a lock file beside it, fresh reads, and
//! the identity of the copy a process last read.
//!
//! Every change is made under an exclusive `flock` on `STATE.lock` (the state file itself
//! is replaced by rename, so a lock on it would be lost at each write), from the file as it
//! is once the lock is held. Readers take no lock: the rename makes every read see one
//! whole file, and [`Stamp`] (taken from the descriptor that was read) says when a cached
//! copy is out of date. This module knows files, not keys.

use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;
use zeroize::Zeroizing;

use super::state::StateError;

/// What identifies one version of the state file: every write makes a new inode by
/// rename, and the size and times tell apart the rare inode number used again.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &Metadata) -> Self {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// `STATE.lock`, beside the state file.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".lock");
    path.with_file_name(name)
}

/// Whether a lock excludes every other holder or only writers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Shared,
    Exclusive,
}

/// Held while alive: the `flock` goes with the descriptor when it is dropped.
pub struct Lock {
    _held: File,
}

/// Waits for the lock on the state file at `path` (creating the 0600 lock file).
pub fn lock(path: &Path, mode: Mode) -> Result<Lock, StateError> {
    let lp = lock_path(path);
    let io = |source| StateError::Io {
        action: "lock",
        path: lp.clone(),
        source,
    };
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lp)
        .map_err(io)?;
    let op = match mode {
        Mode::Shared => FlockOperation::LockShared,
        Mode::Exclusive => FlockOperation::LockExclusive,
    };
    rustix::fs::flock(&f, op).map_err(|e| io(e.into()))?;
    Ok(Lock { _held: f })
}

/// The identity of the file now at `path`.
pub fn stamp(path: &Path) -> Result<Stamp, StateError> {
    std::fs::metadata(path)
        .map(|m| Stamp::of(&m))
        .map_err(|e| missing_or(path, "read", e))
}

/// A state file's bytes and the identity of the very file they were read from.
pub type Contents = (Zeroizing<Vec<u8>>, Stamp);

/// The file's contents; `None` if there is no file.
pub fn read(path: &Path) -> Result<Option<Contents>, StateError> {
    let io = |source| StateError::Io {
        action: "read",
        path: path.into(),
        source,
    };
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let stamp = Stamp::of(&f.metadata().map_err(io)?);
    let mut bytes = Zeroizing::new(Vec::new());
    f.read_to_end(&mut bytes).map_err(io)?;
    Ok(Some((bytes, stamp)))
}

/// The file's bytes and identity, which must exist (it did when the engine opened it).
pub fn read_existing(path: &Path) -> Result<Contents, StateError> {
    read(path)?.ok_or_else(|| StateError::Missing { path: path.into() })
}

fn missing_or(path: &Path, action: &'static str, e: std::io::Error) -> StateError {
    if e.kind() == std::io::ErrorKind::NotFound {
        StateError::Missing { path: path.into() }
    } else {
        StateError::Io {
            action,
            path: path.into(),
            source: e,
        }
    }
}
