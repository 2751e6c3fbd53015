//! Operations on file contents: create, open, read, write, truncate. Each open file's
//! ciphertext is one `EncryptedFile` per inode, shared by its handles through the volume;
//! keys come from the volume (cache or KMS), audited there.

use std::ffi::OsStr;
use std::sync::Arc;

use fuser::{FileAttr, WriteFlags};
use rustix::fs::{FileType, OFlags};

use super::attr::to_attr;
use super::errno::FsError;
use super::inodes::Inode;
use super::{Fs, Handle, OpenHandle};
use crate::file::{BufferPool, EncryptedFile, FileError};
use crate::namespace::Place;
use crate::volume::{Requester, VolumeError};

type FsResult<T> = Result<T, FsError>;
type Shared = Arc<EncryptedFile>;

/// Whether a handle opened with `flags` bypasses the kernel's page cache: write-only ones
/// do (`FOPEN_DIRECT_IO`), which need no cache and save the writer a copy into it
/// (`docs/performance.md`, "Write-only handles bypass the page cache"; Linux 6.6 on).
pub(super) fn bypasses_cache(flags: i32) -> bool {
    flags & libc::O_ACCMODE == libc::O_WRONLY
}

impl Fs {
    /// `open(O_CREAT)` of `name` in `parent` with permissions `perm`: a new file with a
    /// fresh key, and a handle on it.
    pub(super) fn create(
        &self,
        who: &Requester,
        (parent, name): (u64, &OsStr),
        perm: u32,
        flags: i32,
    ) -> Result<(FileAttr, u64), FsError> {
        let (path, owner) = (self.child_path(parent, name), self.owner(who));
        let created = self.in_parent(parent, |dir| {
            let mut new = match self.ns().create_file(dir, name, perm) {
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
            return Ok((attr, self.open(who, attr.ino.0, flags)?));
        };
        let inode = self.inodes.remember(parent, name, path_fd, &st);
        let file = self.volume.share_created(inode.ino, file);
        // The file was made read-write whatever the caller asked for; the handle has the
        // access the caller asked for.
        let fh = self.add_file_handle(inode.clone(), file, flags);
        Ok((to_attr(inode.ino, &st, &self.volume), fh))
    }

    pub(super) fn open(&self, who: &Requester, ino: u64, flags: i32) -> Result<u64, FsError> {
        let inode = self.inodes.get(ino)?;
        let path = self.inodes.path_of(ino);
        // The file shared by every handle on the inode, its key unwrapped if none is open;
        // finishing a change of length a crash cut can change the size the kernel cached.
        let file = self.open_shared(who, &inode, &path)?;
        if file.was_cut() {
            self.invalidations.attributes(ino);
        }
        Ok(self.add_file_handle(inode, file, flags))
    }

    /// The open file of `inode`, checked against the name it was last found under.
    fn open_shared(&self, who: &Requester, inode: &Inode, path: &str) -> FsResult<Shared> {
        let (parent, name) = inode.parent_and_name();
        self.in_parent(parent, |dir| {
            let at = (inode.fd(), dir.fd, Place::new(dir.names, &name));
            Ok(self.volume.open_shared(at, inode.ino, path, who)?)
        })
    }

    fn add_file_handle(&self, inode: Arc<Inode>, file: Arc<EncryptedFile>, flags: i32) -> u64 {
        let h = OpenHandle::new(inode, file, flags, self.uncached(flags));
        self.handles.add(Handle::File(Arc::new(h)))
    }

    /// A failed read or write of the file of `h` (damage reported by the volume).
    pub(super) fn file_error(&self, who: &Requester, h: &OpenHandle, err: FileError) -> FsError {
        let path = self.inodes.path_of(h.inode.ino);
        FsError::Volume(self.volume.file_failure(h.file.header(), path, who, err))
    }

    /// Reads up to `size` bytes at `offset` and hands them to `reply`, from a buffer that is
    /// reused (`file::BufferPool`): a large read then neither allocates nor zeroes.
    pub(super) fn read_at(
        &self,
        who: &Requester,
        (fh, offset, size): (u64, u64, u32),
        reply: impl FnOnce(Result<&[u8], FsError>),
    ) {
        static READ_BUFFERS: BufferPool = BufferPool::new();
        let h = match self.handles.file(fh) {
            Ok(h) => h,
            Err(e) => return reply(Err(e)),
        };
        READ_BUFFERS.with(size as usize, |buf| {
            match h.file.read_at_direct(buf, offset) {
                Ok(n) => reply(Ok(&buf[..n])),
                Err(e) => reply(Err(self.file_error(who, &h, e))),
            }
        });
    }

    /// Writes `data` at `offset` (at the end for an append handle).
    ///
    /// A write that bypasses the kernel's cache (`bypasses_cache`) is marked by the kernel
    /// when the caller lacks CAP_FSETID, and clearing set-user-ID and set-group-ID is then
    /// ours to do. After such a write, while handles that read through the cache are open,
    /// the range is invalidated in the kernel (`invalidate.rs`); the kernel writing back its
    /// own pages (`FUSE_WRITE_CACHE`) needs no such thing.
    pub(super) fn write(
        &self,
        who: &Requester,
        (fh, offset): (u64, u64),
        data: &[u8],
        flags: WriteFlags,
    ) -> Result<u32, FsError> {
        let h = self.handles.file(fh)?;
        if !h.writable {
            return Err(FsError::NotWritable);
        }
        let ino = h.inode.ino;
        if flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            && self.ns().clear_set_id(h.inode.fd())?
        {
            self.invalidations.attributes(ino);
        }
        let result = if h.append {
            h.file.append(data)
        } else {
            h.file.write_at(data, offset).map(|_| offset)
        };
        let at = result.map_err(|e| self.file_error(who, &h, e))?;
        let from_cache = flags.contains(WriteFlags::FUSE_WRITE_CACHE);
        if h.uncached && !from_cache && h.inode.has_cached_handles() {
            self.invalidations.data(ino, at, data.len() as u64);
        }
        Ok(data.len() as u32)
    }

    /// Sets the length of the file at `inode` (through handle `fh` if given).
    pub(super) fn set_len(
        &self,
        who: &Requester,
        inode: &Arc<Inode>,
        size: u64,
        fh: Option<u64>,
    ) -> Result<(), FsError> {
        if inode.kind != FileType::RegularFile {
            return Err(FsError::Invalid);
        }
        let path = self.inodes.path_of(inode.ino);
        let file = match fh.and_then(|fh| self.handles.file(fh).ok()) {
            Some(h) => h.file.clone(),
            None => self.open_shared(who, inode, &path)?,
        };
        let set = file.set_len(size);
        set.map_err(|source| FsError::Volume(VolumeError::File { path, source }))
    }
}
