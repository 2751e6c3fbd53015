//! Directory listing: a snapshot of the namespace's listing taken at `opendir`, served by
//! offset. Listing never touches the KMS. An entry whose name does not decrypt (tampered,
//! or dropped in by someone else) is left out with a log line; the rest still lists.

use std::ffi::OsString;

use fuser::{FileAttr, FileType};
use rustix::fs as rfs;

use super::attr::to_attr;
use super::errno::FsError;
use super::{Handle, KmsFs};

pub(super) struct DirEntry {
    pub ino: u64,
    pub kind: FileType,
    pub name: OsString,
    /// The name in the backing directory (ciphertext).
    pub on_disk: OsString,
}

fn kind(t: rfs::FileType) -> FileType {
    match t {
        rfs::FileType::Directory => FileType::Directory,
        rfs::FileType::Symlink => FileType::Symlink,
        rfs::FileType::Fifo => FileType::NamedPipe,
        rfs::FileType::Socket => FileType::Socket,
        rfs::FileType::CharacterDevice => FileType::CharDevice,
        rfs::FileType::BlockDevice => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

impl KmsFs {
    pub(super) fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let inode = self.inodes.get(ino)?;
        let listed = self.in_dir(&inode, |dir| Ok(self.volume.namespace().list(dir)?))?;
        let mut entries = Vec::with_capacity(listed.len());
        for entry in listed {
            let name = match entry.name {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(
                        "directory /{}: skipping entry {:?}: {}",
                        self.inodes.path_of(ino),
                        entry.on_disk,
                        crate::describe(&e)
                    );
                    continue;
                }
            };
            let entry_ino = if name == "." {
                ino
            } else {
                self.inodes.fuse_ino(entry.backing_ino)
            };
            entries.push(DirEntry {
                ino: entry_ino,
                kind: kind(entry.kind),
                name,
                on_disk: entry.on_disk,
            });
        }
        Ok(self.add_handle(Handle::Dir(std::sync::Arc::new(entries))))
    }
}

impl KmsFs {
    /// Serves READDIRPLUS from the listing of handle `fh`, from entry `offset` on: each
    /// entry goes to `add` (name, next offset, attributes) until `add` says the reply is
    /// full. The kernel then holds each entry as if it had been looked up (one lookup
    /// counted here), which saves a LOOKUP round trip for each name a listing is followed
    /// by: `rm -r`, `ls -l`, a backup reading every file. `.` and `..` are not looked up
    /// (the kernel skips them). An entry gone since the listing was taken is left out;
    /// any other failure (no descriptor left, say) ends the reply early, or is the error
    /// if nothing was added: never a silently shorter listing.
    pub(super) fn list_plus(
        &self,
        dir: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(&std::ffi::OsStr, u64, &FileAttr) -> bool,
    ) -> Result<(), FsError> {
        let entries = self.dir_handle(fh)?;
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
                Err(e) if added > 0 => {
                    tracing::debug!("readdirplus: {e}");
                    break;
                }
                Err(e) => {
                    tracing::warn!(
                        "listing /{}: {e} (the daemon holds a descriptor per entry the \
                         kernel caches; see docs/posix.md)",
                        self.inodes.path_of(dir)
                    );
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
