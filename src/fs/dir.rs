//! Directory listing: a snapshot of the backing directory taken at `opendir`, served by
//! offset, with kmsfs's own files at the root left out. Listing never touches the KMS.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use fuser::FileType;
use rustix::fs::{self as rfs, Dir, Mode, OFlags};

use super::errno::FsError;
use super::inodes::ROOT;
use super::node::is_hidden;
use super::{Handle, KmsFs};

pub(super) struct DirEntry {
    pub ino: u64,
    pub kind: FileType,
    pub name: OsString,
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
        let fd = rfs::openat(
            inode.fd(),
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut entries = Vec::new();
        for entry in Dir::new(fd)? {
            let entry = entry?;
            let name = OsString::from_vec(entry.file_name().to_bytes().to_vec());
            if ino == ROOT && is_hidden(&name) {
                continue;
            }
            let entry_ino = if name == "." {
                ino
            } else {
                self.inodes.fuse_ino(entry.ino())
            };
            entries.push(DirEntry {
                ino: entry_ino,
                kind: kind(entry.file_type()),
                name,
            });
        }
        Ok(self.add_handle(Handle::Dir(std::sync::Arc::new(entries))))
    }
}
