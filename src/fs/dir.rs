//! Directory listing: a snapshot of the namespace's listing taken at `opendir`, served by
//! offset. Listing never touches the KMS. An entry whose name does not decrypt (tampered,
//! or dropped in by someone else) is left out with a log line; the rest still lists.

use std::ffi::OsString;

use fuser::{FileAttr, FileType};
use rustix::fs as rfs;

use super::attr::{kind_of, to_attr};
use super::errno::FsError;
use super::{Fs, Handle};

pub(super) struct DirEntry {
    pub ino: u64,
    pub kind: FileType,
    pub name: OsString,
    /// The name in the backing directory (ciphertext).
    pub on_disk: OsString,
}

impl Fs {
    pub(super) fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let inode = self.inodes.get(ino)?;
        let listed = self.in_dir(&inode, |dir| Ok(self.volume.namespace().list(dir)?))?;
        let entries = listed.into_iter().filter_map(|entry| match entry.name {
            Ok(name) => Some(DirEntry {
                ino: match name == "." {
                    true => ino,
                    false => self.inodes.fuse_ino(entry.backing_ino),
                },
                kind: kind_of(entry.kind),
                name,
                on_disk: entry.on_disk,
            }),
            Err(e) => {
                let (path, e) = (self.inodes.path_of(ino), crate::describe(&e));
                tracing::warn!("directory /{path}: skipping entry {:?}: {e}", entry.on_disk);
                None
            }
        });
        let entries = std::sync::Arc::new(entries.collect());
        Ok(self.handles.add(Handle::Dir(entries)))
    }

    /// Serves READDIRPLUS from the listing of handle `fh`, from entry `offset` on, to `add`
    /// (name, next offset, attributes) until it says the reply is full: each entry counts
    /// as looked up, saving a LOOKUP per name for `rm -r`, `ls -l` or a backup. An entry
    /// gone since the listing is left out; any other failure ends the reply early, or is
    /// the error if nothing was added: never a silently shorter listing.
    pub(super) fn list_plus(
        &self,
        dir: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(&std::ffi::OsStr, u64, &FileAttr) -> bool,
    ) -> Result<(), FsError> {
        let entries = self.handles.dir(fh)?;
        let p = self.inodes.get(dir)?;
        let mut added = 0;
        for (i, entry) in entries.iter().enumerate().skip(offset as usize) {
            let next = (i + 1) as u64;
            if entry.name == "." || entry.name == ".." {
                let attr = to_attr(entry.ino, &rfs::fstat(p.fd())?, &self.volume);
                if add(&entry.name, next, &attr) {
                    break;
                }
                added += 1;
                continue;
            }
            let (fd, st) = match self.volume.namespace().open_entry(p.fd(), &entry.on_disk) {
                Ok(entry) => entry,
                Err(e) if e.not_found() => continue,
                Err(_) if added > 0 => break, // the next READDIRPLUS reports it
                Err(e) => {
                    let path = self.inodes.path_of(dir);
                    tracing::warn!("listing /{path}: {e} (the daemon holds a descriptor per entry the kernel caches; see docs/posix.md)");
                    return Err(e.into());
                }
            };
            let inode = self.inodes.remember(dir, &entry.name, fd, &st);
            if add(&entry.name, next, &to_attr(inode.ino, &st, &self.volume)) {
                // It did not fit: take back the lookup.
                self.inodes.forget(inode.ino, 1);
                break;
            }
            added += 1;
        }
        Ok(())
    }
}
