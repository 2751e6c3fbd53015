//! Directory listing: a snapshot of the backing directory taken at `opendir`, with names
//! decrypted and kmsfs's own files left out, served by offset. Listing never touches the
//! KMS. An entry whose name does not decrypt (tampered, or dropped in by someone else) is
//! left out with a log line; the rest of the directory still lists.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

use fuser::{FileAttr, FileType};
use rustix::fs::{self as rfs, Dir, Mode, OFlags};

use super::attr::to_attr;
use super::errno::FsError;
use super::node::path_flags;
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
        let dir_names = self.dir_names(&inode)?;
        let fd = rfs::openat(
            inode.fd(),
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut entries = Vec::new();
        for entry in Dir::read_from(&fd)? {
            let entry = entry?;
            let on_disk = std::ffi::OsStr::from_bytes(entry.file_name().to_bytes());
            let name = if on_disk == "." || on_disk == ".." {
                on_disk.to_owned()
            } else {
                match self.plain_name(&inode, rustix::fd::AsFd::as_fd(&fd), &dir_names, on_disk) {
                    Ok(Some(n)) => n,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(
                            "directory /{}: skipping entry {:?}: {e}",
                            self.inodes.path_of(ino),
                            on_disk
                        );
                        continue;
                    }
                }
            };
            let entry_ino = if name == "." {
                ino
            } else {
                self.inodes.fuse_ino(entry.ino())
            };
            entries.push(DirEntry {
                ino: entry_ino,
                kind: kind(entry.file_type()),
                name,
                on_disk: on_disk.to_owned(),
            });
        }
        Ok(self.add_handle(Handle::Dir(std::sync::Arc::new(entries))))
    }
}

impl KmsFs {
    /// The attributes READDIRPLUS sends with `entry` of directory `dir`. The kernel then
    /// holds the entry as if it had been looked up (one lookup counted here), which
    /// saves a LOOKUP round trip for each name a listing is followed by: `rm -r`, `ls -l`,
    /// a backup reading every file. `.` and `..` are not looked up (the kernel skips
    /// them). `Ok(None)` when the entry went away since the listing was taken; any other
    /// failure (no descriptor left, say) is an error, never a silently shorter listing.
    pub(super) fn entry_plus(
        &self,
        dir: u64,
        entry: &DirEntry,
    ) -> Result<Option<(FileAttr, bool)>, FsError> {
        let p = self.inodes.get(dir)?;
        if entry.name == "." || entry.name == ".." {
            let st = self.stat(&p)?;
            return Ok(Some((to_attr(entry.ino, &st, &self.volume), false)));
        }
        let fd = match rfs::openat(p.fd(), &entry.on_disk, path_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let st = rfs::fstat(&fd)?;
        let inode = self.inodes.remember(dir, &entry.name, fd, &st);
        Ok(Some((to_attr(inode.ino, &st, &self.volume), true)))
    }

    /// Takes back the lookup [`KmsFs::entry_plus`] counted, for an entry that did not
    /// fit in the reply.
    pub(super) fn unplus(&self, ino: u64) {
        self.inodes.forget(ino, 1);
    }
}
