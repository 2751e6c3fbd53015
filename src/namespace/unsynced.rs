//! New files whose header may not be on disk yet, so that `fsync` of a directory makes the
//! names in it last with what they need.
//!
//! A new file's header is written, not synced, before the file gets its name (an `fsync`
//! per create would cost more than the create). The filesystem's journal keeps the name,
//! but may commit it before the header's data reaches the disk (ext4 writes data back
//! apart from the journal with `dioread_nolock`, its default), so after a power cut the
//! name could stand on a file of zeros. `fsync` of a directory is what asks for names to
//! last: it syncs the files made since first.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Mutex;

use rustix::fs as rfs;

use super::{Namespace, NamespaceError};

/// How many new files are kept to sync one by one; past that, one `syncfs` of the whole
/// filesystem is cheaper than a journal commit each, and nothing needs to be kept.
const KEPT: usize = 64;

/// The new files not yet synced: their descriptors, or `None` once there were too many.
#[derive(Debug)]
pub(super) struct Unsynced {
    files: Mutex<Option<Vec<OwnedFd>>>,
    /// Held from taking the files to the end of their sync: a second directory sync waits
    /// for the first to finish the files it took, rather than return before they are on
    /// disk.
    syncing: Mutex<()>,
}

impl Default for Unsynced {
    fn default() -> Self {
        Self {
            files: Mutex::new(Some(Vec::new())),
            syncing: Mutex::new(()),
        }
    }
}

impl Unsynced {
    /// Keeps the new file open at `fd` (read-write) until the next directory sync.
    pub(super) fn add(&self, fd: OwnedFd) {
        let mut kept = self.lock();
        match kept.as_mut() {
            Some(files) if files.len() < KEPT => files.push(fd),
            // Too many: the next sync syncs the whole filesystem.
            _ => *kept = None,
        }
    }

    /// Takes what was kept: `Some(files)`, or `None` if everything needs syncing.
    fn take(&self) -> Option<Vec<OwnedFd>> {
        self.lock().replace(Vec::new())
    }

    /// After a failed sync: the next one syncs the whole filesystem.
    fn sync_everything_next(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<OwnedFd>>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Namespace {
    /// `fsync` of the directory open at `dir` (`O_PATH` will do): the files made since the
    /// last such sync first (their headers), then the directory with its entries.
    pub fn sync_dir_and_new_files(&self, dir: BorrowedFd<'_>) -> Result<(), NamespaceError> {
        let syncing = self.unsynced.syncing.lock();
        let synced = match self.unsynced.take() {
            Some(files) => files.iter().try_for_each(rfs::fdatasync),
            None => rfs::syncfs(super::open_listing(dir)?),
        };
        if let Err(e) = synced {
            self.unsynced.sync_everything_next();
            return Err(e.into());
        }
        drop(syncing);
        super::sync_dir(dir)
    }
}
