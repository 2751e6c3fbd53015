//! Open handles: the file handle numbers the kernel holds, each an open file (with the
//! shared ciphertext of its inode) or a directory listing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::dir::DirEntry;
use super::errno::FsError;
use super::inodes::Inode;
use crate::control::Activity;
use crate::file::EncryptedFile;

pub(super) struct OpenHandle {
    pub inode: Arc<Inode>,
    pub file: Arc<EncryptedFile>,
    pub append: bool,
    pub writable: bool,
    /// Opened write-only: its writes bypass the kernel's page cache (`file_ops.rs`).
    pub uncached: bool,
}

impl OpenHandle {
    /// A handle opened with `flags`; `uncached`: its I/O bypasses the kernel's page cache.
    pub fn new(inode: Arc<Inode>, file: Arc<EncryptedFile>, flags: i32, uncached: bool) -> Self {
        if !uncached {
            inode.count_cached_handle(true);
        }
        Self {
            inode,
            file,
            append: flags & libc::O_APPEND != 0,
            writable: flags & libc::O_ACCMODE != libc::O_RDONLY,
            uncached,
        }
    }
}

impl Drop for OpenHandle {
    fn drop(&mut self) {
        if !self.uncached {
            self.inode.count_cached_handle(false);
        }
    }
}

pub(super) enum Handle {
    File(Arc<OpenHandle>),
    Dir(Arc<Vec<DirEntry>>),
}

/// The table of open handles.
pub(super) struct Handles {
    table: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    pub activity: Arc<Activity>,
}

impl Handles {
    pub fn new() -> Self {
        Self {
            table: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            activity: Arc::new(Activity::default()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Handle>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `h`; its handle number.
    pub fn add(&self, h: Handle) -> u64 {
        self.activity.opened();
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.table().insert(fh, h);
        fh
    }

    pub fn remove(&self, fh: u64) {
        let removed = self.table().remove(&fh);
        if removed.is_some() {
            self.activity.closed();
        }
        drop(removed); // outside the lock: may close a file
    }

    pub fn file(&self, fh: u64) -> Result<Arc<OpenHandle>, FsError> {
        match self.table().get(&fh) {
            Some(Handle::File(h)) => Ok(h.clone()),
            _ => Err(FsError::Stale),
        }
    }

    pub fn dir(&self, fh: u64) -> Result<Arc<Vec<DirEntry>>, FsError> {
        match self.table().get(&fh) {
            Some(Handle::Dir(d)) => Ok(d.clone()),
            _ => Err(FsError::Stale),
        }
    }
}
