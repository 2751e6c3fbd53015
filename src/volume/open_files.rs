//! The files a mount has open: one [`EncryptedFile`] per ciphertext inode, shared by every
//! handle on it, so each handle sees the others' writes and the key is unwrapped once.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex, Weak};

use super::{Requester, Volume, VolumeError};
use crate::file::EncryptedFile;
use crate::namespace::Place;

/// Open files by the inode number of their ciphertext file. Entries whose file has closed
/// are dropped whenever the table has doubled since they were last dropped.
#[derive(Default)]
pub(super) struct OpenFiles {
    table: Mutex<(HashMap<u64, Weak<EncryptedFile>>, usize)>,
}

impl OpenFiles {
    fn get(&self, ino: u64) -> Option<Arc<EncryptedFile>> {
        let t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.0.get(&ino).and_then(Weak::upgrade)
    }

    /// Shares `file` as inode `ino`'s, unless another open won the race; the one to use.
    fn share(&self, ino: u64, file: Arc<EncryptedFile>) -> Arc<EncryptedFile> {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let (files, pruned_at) = &mut *t;
        if let Some(existing) = files.get(&ino).and_then(Weak::upgrade) {
            return existing;
        }
        if files.len() >= 2 * (*pruned_at).max(64) {
            files.retain(|_, f| f.strong_count() > 0);
            *pruned_at = files.len();
        }
        files.insert(ino, Arc::downgrade(&file));
        file
    }
}

impl Volume {
    /// The open ciphertext of the regular file at `entry` (an `O_PATH` descriptor of the
    /// ciphertext inode `ino`), shared with every handle on it: opened, and its key
    /// unwrapped, if none is open. Each open is audited; `path` is its path in the mount.
    ///
    /// `dir` is the ciphertext directory the entry was found in: an open whose key is not
    /// cached tells the prefetcher, which may unwrap the keys of the files to be opened
    /// next (`prefetch/mod.rs`).
    pub fn open_shared(
        &self,
        (entry, dir, at): (BorrowedFd<'_>, BorrowedFd<'_>, Place<'_>),
        ino: u64,
        path: &str,
        who: &Requester,
    ) -> Result<Arc<EncryptedFile>, VolumeError> {
        if let Some(file) = self.open_files.get(ino) {
            self.note_shared_open(file.header(), path, who)?;
            return Ok(file);
        }
        let opened = self.open_file(self.namespace.reopen(entry)?, at, path, who);
        if let Some(p) = self.prefetch.get() {
            p.opened(dir, ino, path, who);
        }
        Ok(self.open_files.share(ino, Arc::new(opened?)))
    }

    /// Shares the file just created as inode `ino` with the handles opened on it later.
    pub fn share_created(&self, ino: u64, file: EncryptedFile) -> Arc<EncryptedFile> {
        self.open_files.share(ino, Arc::new(file))
    }
}
