//! Operations on file contents: create, open, read, write, truncate, fsync, release.
//! Each open file's ciphertext is one shared `EncryptedFile` per inode, so every handle
//! sees the others' writes; keys come from the volume (cache or KMS), audited there.

use std::ffi::OsStr;
use std::fs::File;
use std::sync::Arc;

use fuser::{FileAttr, WriteFlags};
use rustix::fs::{self as rfs, Mode, OFlags, CWD};

use super::attr::to_attr;
use super::errno::FsError;
use super::inodes::Inode;
use super::{Handle, KmsFs, OpenHandle};
use crate::file::{BufferPool, EncryptedFile, FileError};
use crate::volume::{Requester, VolumeError};

/// Whether a handle opened with `flags` bypasses the kernel's page cache: write-only ones
/// do (`FOPEN_DIRECT_IO`). A write through the cache costs the writer a copy into it and
/// the kernel's `security.capability` lookup before the write is sent, while the daemon's
/// work waits behind them. For `dd` of 1 GiB that was a third of the time (`docs/
/// performance.md`). A write-only handle cannot read or be mapped, so nothing it does needs
/// the cache; the kernel drops the cached pages of the range before it sends the write
/// (from Linux 6.6 on: the mount does this only there, `KmsFs::init`).
pub(super) fn bypasses_cache(flags: i32) -> bool {
    flags & libc::O_ACCMODE == libc::O_WRONLY
}

/// Whether an open for writing failed only because writing is not allowed (permission, or
/// a read-only filesystem), so that opening for reading may still work.
fn read_only_will_do(e: rustix::io::Errno) -> bool {
    use std::io::ErrorKind;
    let kind = std::io::Error::from(e).kind();
    kind == ErrorKind::PermissionDenied || kind == ErrorKind::ReadOnlyFilesystem
}

impl KmsFs {
    pub(super) fn create(
        &self,
        who: &Requester,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Result<(FileAttr, u64), FsError> {
        let p = self.inodes.get(parent)?;
        let path = self.child_path(parent, name);
        let owner = self.owner(who);
        let created = self.in_dir(&p, |dir| {
            let mut new = match self.ns().create_file(dir, name, mode & !umask) {
                Ok(new) => new,
                // Lost a race with another creator: open what is there.
                Err(e) if e.already_exists() && flags & OFlags::EXCL.bits() as i32 == 0 => {
                    return Ok(None)
                }
                Err(e) => return Err(e.into()),
            };
            // Dropping `new` on an error removes the file: never one without a header.
            let file = self.volume.create_file(new.take_file(), &path, who)?;
            let c = new.finish(self.ns(), owner)?;
            let (fd, st) = self.ns().open_entry(dir.fd, &c.on_disk)?;
            Ok(Some((file, fd, st)))
        })?;
        let Some((file, path_fd, st)) = created else {
            let attr = self.lookup_entry(parent, name)?;
            let fh = self.open(who, attr.ino.0, flags)?;
            return Ok((attr, fh));
        };
        let inode = self.inodes.remember(parent, name, path_fd, &st);
        let file = inode.share_open_file(Arc::new(file));
        // The file was made read-write whatever the caller asked for; the handle has the
        // access the caller asked for.
        let uncached = self.uncached(flags);
        let fh = self.add_handle(Handle::File(Arc::new(OpenHandle::new(
            inode.clone(),
            file,
            flags,
            uncached,
        ))));
        Ok((to_attr(inode.ino, &st, &self.volume), fh))
    }

    /// The shared open ciphertext of a regular file, opening it (and unwrapping its key)
    /// if no handle has it open.
    fn open_encrypted(
        &self,
        who: &Requester,
        inode: &Inode,
    ) -> Result<Arc<EncryptedFile>, FsError> {
        let path = self.inodes.path_of(inode.ino);
        if let Some(file) = inode.open_file() {
            self.volume.note_shared_open(file.header(), &path, who)?;
            return Ok(file);
        }
        let proc = inode.proc_path();
        let fd = match rfs::openat(
            CWD,
            proc.as_str(),
            OFlags::RDWR | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(e) if read_only_will_do(e) => rfs::openat(
                CWD,
                proc.as_str(),
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )?,
            Err(e) => return Err(e.into()),
        };
        let file = self.volume.open_file(File::from(fd), &path, who)?;
        Ok(inode.share_open_file(Arc::new(file)))
    }

    pub(super) fn open(&self, who: &Requester, ino: u64, flags: i32) -> Result<u64, FsError> {
        let inode = self.inodes.get(ino)?;
        let file = self.open_encrypted(who, &inode)?;
        let uncached = self.uncached(flags);
        Ok(self.add_handle(Handle::File(Arc::new(OpenHandle::new(
            inode, file, flags, uncached,
        )))))
    }

    /// Reports damage found while reading or writing to the log and the audit log.
    fn integrity(&self, who: &Requester, h: &OpenHandle, err: FileError) -> FsError {
        let path = self.inodes.path_of(h.inode.ino);
        let file_id = h.file.header().file_id;
        if let Err(audit) = self
            .volume
            .report_integrity(Some(&file_id), &path, who, &err)
        {
            tracing::error!("{audit}");
        }
        FsError::Volume(VolumeError::File { path, source: err })
    }

    /// Reads up to `size` bytes at `offset` and hands them to `reply`, from a buffer that is
    /// reused (`file::BufferPool`): a 1 MiB read then neither allocates nor zeroes 1 MiB.
    pub(super) fn read(
        &self,
        who: &Requester,
        fh: u64,
        offset: u64,
        size: u32,
        reply: impl FnOnce(Result<&[u8], FsError>),
    ) {
        static READ_BUFFERS: BufferPool = BufferPool::new();
        let h = match self.file_handle(fh) {
            Ok(h) => h,
            Err(e) => return reply(Err(e)),
        };
        READ_BUFFERS.with(size as usize, |buf| {
            match h.file.read_at_direct(buf, offset) {
                Ok(n) => reply(Ok(&buf[..n])),
                Err(e) => reply(Err(self.integrity(who, &h, e))),
            }
        });
    }

    /// Writes `data` at `offset` (at the end for an append handle).
    ///
    /// A write that bypasses the kernel's cache (`bypasses_cache`) is marked by the kernel when
    /// the caller lacks CAP_FSETID, and clearing set-user-ID and set-group-ID is then ours
    /// to do. After such a write, while handles that read through the cache are open, the
    /// range is invalidated in the kernel (`invalidate.rs`); the kernel writing back its
    /// own pages (`FUSE_WRITE_CACHE`) needs no such thing.
    pub(super) fn write(
        &self,
        who: &Requester,
        fh: u64,
        offset: u64,
        data: &[u8],
        flags: WriteFlags,
    ) -> Result<u32, FsError> {
        let h = self.file_handle(fh)?;
        if !h.writable {
            return Err(FsError::NotWritable);
        }
        let ino = h.inode.ino;
        if flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) && self.kill_suidgid(ino)? {
            self.invalidations.attributes(ino);
        }
        let from_cache = flags.contains(WriteFlags::FUSE_WRITE_CACHE);
        let result = if h.append {
            h.file.append(data)
        } else {
            h.file.write_at(data, offset).map(|_| offset)
        };
        match result {
            Ok(at) => {
                if h.uncached && !from_cache && h.inode.has_cached_handles() {
                    self.invalidations.data(ino, at, data.len() as u64);
                }
                Ok(data.len() as u32)
            }
            Err(e) => Err(self.integrity(who, &h, e)),
        }
    }

    pub(super) fn truncate(
        &self,
        who: &Requester,
        inode: &Arc<Inode>,
        size: u64,
        fh: Option<u64>,
    ) -> Result<(), FsError> {
        if inode.kind != fuser::FileType::RegularFile {
            return Err(FsError::Invalid);
        }
        let file = match fh.and_then(|fh| self.file_handle(fh).ok()) {
            Some(h) => h.file.clone(),
            None => self.open_encrypted(who, inode)?,
        };
        file.set_len(size).map_err(|e| {
            let path = self.inodes.path_of(inode.ino);
            FsError::Volume(VolumeError::File { path, source: e })
        })
    }

    pub(super) fn fallocate(
        &self,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<(), FsError> {
        if mode != 0 {
            return Err(FsError::NotSupported);
        }
        let h = self.file_handle(fh)?;
        let end = offset.checked_add(length).ok_or(FsError::Invalid)?;
        if end > h.file.len() {
            h.file.set_len(end).map_err(|e| {
                let path = self.inodes.path_of(h.inode.ino);
                FsError::Volume(VolumeError::File { path, source: e })
            })?;
        }
        Ok(())
    }

    pub(super) fn fsync(&self, fh: u64, datasync: bool) -> Result<(), FsError> {
        let h = self.file_handle(fh)?;
        h.file.sync(!datasync).map_err(|e| {
            let path = self.inodes.path_of(h.inode.ino);
            FsError::Volume(VolumeError::File { path, source: e })
        })
    }

    pub(super) fn release(&self, fh: u64) {
        self.remove_handle(fh);
    }
}
