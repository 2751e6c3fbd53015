//! `fuser::Filesystem` for [`KmsFs`]: each callback looks up the inodes and handles it
//! names, calls one step of the namespace or one file operation, and replies.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::SystemTime;

use fuser::{
    AccessFlags, BsdFileFlags, FileHandle, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use rustix::fs::{FileType, RenameFlags as Rename, XattrFlags};

use super::errno::{errno, FsError};
use super::{inodes, who, Fs, KmsFs};

pub(super) const GEN: Generation = Generation(0);

impl Filesystem for KmsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Linux 6.6 (FUSE 7.39) and later drop cached pages before an uncached write.
        let abi = config.kernel_abi();
        let uncached = (abi.0, abi.1) >= (7, 39);
        self.uncached_writes
            .store(uncached, std::sync::atomic::Ordering::Relaxed);
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_PARALLEL_DIROPS);
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_DO_READDIRPLUS); // `readdirplus`
        Ok(())
    }

    fn destroy(&mut self) {
        self.volume.wipe_keys();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.handles.activity.touch();
        match self.lookup_entry(parent.0, name) {
            Ok(attr) => reply.entry(&self.ttl, &attr, GEN),
            // Not worth a log line: most lookups that fail are for names that do not exist.
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.attr(("getattr", ino.0), self.0.getattr(ino.0), reply);
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let (ids, len) = ((mode, uid, gid), (size, fh.map(|f| f.0)));
        let set = self.set_attr(&who(req), ino.0, ids, len, (atime, mtime));
        self.attr(("setattr", ino.0), set, reply);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let inode = self.inodes.get(ino.0);
        let target = inode.and_then(|i| Ok(self.ns().read_symlink(i.fd())?));
        match target {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(self.fail(("readlink", ino.0), &e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (who, kind) = (who(req), FileType::from_raw_mode(mode));
        let made = if kind == FileType::RegularFile {
            // A regular file must carry a header and a key: create it like open(O_CREAT).
            let excl = rustix::fs::OFlags::EXCL.bits() as i32;
            let created = self.0.create(&who, (parent.0, name), mode & !umask, excl);
            created.map(|(attr, fh)| {
                self.handles.remove(fh);
                attr
            })
        } else {
            let (perm, owner) = (mode & !umask, self.owner(&who));
            self.in_parent(parent.0, |dir| {
                Ok(self.ns().mknod(dir, name, kind, perm, rdev.into(), owner)?)
            })
            .and_then(|()| self.lookup_entry(parent.0, name))
        };
        self.entry(("mknod", parent.0), made, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let owner = self.owner(&who(req));
        let made = self.in_parent(parent.0, |dir| {
            Ok(self.ns().mkdir(dir, name, mode & !umask, owner)?)
        });
        self.entry(
            ("mkdir", parent.0),
            made.and_then(|()| self.lookup_entry(parent.0, name)),
            reply,
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let removed = self.in_parent(parent.0, |dir| Ok(self.ns().remove(dir, name, false)?));
        self.empty(("unlink", parent.0), removed, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let removed = self.in_parent(parent.0, |dir| Ok(self.ns().remove(dir, name, true)?));
        self.empty(("rmdir", parent.0), removed, reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (target, owner) = (target.as_os_str().as_bytes(), self.owner(&who(req)));
        let made = self.in_parent(parent.0, |dir| {
            Ok(self.ns().symlink(dir, link_name, target, owner)?)
        });
        let made = made.and_then(|()| self.lookup_entry(parent.0, link_name));
        self.entry(("symlink", parent.0), made, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let renamed = Rename::from_bits(flags.bits())
            .ok_or(FsError::Invalid)
            .and_then(|f| {
                let renamed = self.in_parent(parent.0, |from| {
                    self.in_parent(newparent.0, |to| {
                        Ok(self.ns().rename(from, name, to, newname, f)?)
                    })
                })?;
                self.inodes.renamed(renamed.moved, newparent.0, newname);
                if let (true, Some(other)) = (f.contains(Rename::EXCHANGE), renamed.other) {
                    self.inodes.renamed(other, parent.0, name);
                }
                Ok(())
            });
        self.empty(("rename", parent.0), renamed, reply);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let linked = self.inodes.get(ino.0).and_then(|inode| {
            self.in_parent(newparent.0, |dir| {
                Ok(self.ns().link(inode.fd(), dir, newname)?)
            })
        });
        let linked = linked.and_then(|()| self.lookup_entry(newparent.0, newname));
        self.entry(("link", ino.0), linked, reply);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (who, fopen) = (who(req), self.fopen_flags(flags.0));
        let open = move |fs: &Fs| fs.open(&who, ino.0, flags.0);
        self.kms_bound(open, move |fs, opened| match opened {
            Ok(fh) => reply.opened(FileHandle(fh), fopen),
            Err(e) => reply.error(fs.fail(("open", ino.0), &e)),
        });
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.handles.activity.touch();
        self.read_at(&who(req), (fh.0, offset, size), |data| match data {
            Ok(data) => reply.data(data),
            Err(e) => reply.error(self.fail(("read", _ino.0), &e)),
        });
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.handles.activity.touch();
        match self.0.write(&who(req), (fh.0, offset), data, write_flags) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(self.fail(("write", _ino.0), &e)),
        }
    }

    fn flush(&self, _req: &Request, _: INodeNo, _: FileHandle, _: LockOwner, reply: ReplyEmpty) {
        // Nothing is buffered here; ENOSYS stops the kernel sending FLUSH on every close.
        reply.error(errno(&FsError::NotImplemented));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles.remove(fh.0);
        reply.ok();
    }

    fn fsync(&self, req: &Request, ino: INodeNo, fh: FileHandle, datasync: bool, r: ReplyEmpty) {
        let synced = self.handles.file(fh.0).and_then(|h| {
            let synced = h.file.sync(!datasync);
            synced.map_err(|e| self.file_error(&who(req), &h, e))
        });
        self.empty(("fsync", ino.0), synced, r);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.0.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(self.fail(("opendir", ino.0), &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.handles.dir(fh.0) {
            Ok(e) => e,
            Err(e) => return reply.error(errno(&e)),
        };
        for (i, entry) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(entry.ino), (i + 1) as u64, entry.kind, &entry.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let listed = self.list_plus(ino.0, fh.0, offset, |name, next, attr| {
            reply.add(attr.ino, next, name, &self.ttl, attr, GEN)
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail(("readdirplus", ino.0), &e)),
        }
    }

    fn releasedir(&self, _req: &Request, _: INodeNo, fh: FileHandle, _: OpenFlags, r: ReplyEmpty) {
        self.handles.remove(fh.0);
        r.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _: FileHandle, _: bool, reply: ReplyEmpty) {
        // The names made in it last from here on, with the new files' headers.
        let inode = self.inodes.get(ino.0);
        let synced = inode.and_then(|i| Ok(self.ns().sync_dir_and_new_files(i.fd())?));
        self.empty(("fsyncdir", ino.0), synced, reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let root = self.inodes.get(inodes::ROOT);
        match root.and_then(|r| Ok(rustix::fs::fstatvfs(r.fd())?)) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(self.fail(("statfs", _ino.0), &e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let set = self.inodes.get(ino.0).and_then(|inode| {
            let flags = XattrFlags::from_bits(flags as u32).ok_or(FsError::Invalid)?;
            Ok(self
                .ns()
                .set_xattr(inode.fd(), inode.kind, name, value, flags)?)
        });
        self.empty(("setxattr", ino.0), set, reply);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let got = self.inodes.get(ino.0).and_then(|inode| {
            let got = self
                .ns()
                .getxattr(inode.fd(), inode.kind, name, size as usize);
            Ok(got?)
        });
        self.xattr(("getxattr", ino.0), got, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let listed = self.inodes.get(ino.0);
        let listed = listed.and_then(|i| Ok(self.ns().listxattr(i.fd(), size as usize)?));
        self.xattr(("listxattr", ino.0), listed, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let removed = self.inodes.get(ino.0);
        let removed = removed.and_then(|i| Ok(self.ns().remove_xattr(i.fd(), name)?));
        self.empty(("removexattr", ino.0), removed, reply);
    }

    /// `access(2)` and `chdir`, sent only on a private mount of a root daemon (the kernel
    /// checks permissions otherwise), which only processes of uid and gid 0 reach: root
    /// may do anything but execute a file with no x bit.
    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let allowed = self.inodes.get(ino.0).and_then(|inode| {
            let exec = mask.contains(AccessFlags::X_OK) && inode.kind != FileType::Directory;
            match exec && rustix::fs::fstat(inode.fd())?.st_mode & 0o111 == 0 {
                true => Err(FsError::PermissionDenied),
                false => Ok(()),
            }
        });
        self.empty(("access", ino.0), allowed, reply);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (who, fopen, name) = (who(req), self.fopen_flags(flags), name.to_owned());
        let create = move |fs: &Fs| fs.create(&who, (parent.0, &name), mode & !umask, flags);
        self.kms_bound(create, move |fs, created| match created {
            Ok((attr, fh)) => reply.created(&fs.ttl, &attr, GEN, FileHandle(fh), fopen),
            Err(e) => reply.error(fs.fail(("create", parent.0), &e)),
        });
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // Only growing is supported (mode 0): the file keeps no holes to punch.
        let grown = self.handles.file(fh.0).and_then(|h| {
            let end = offset.checked_add(length).ok_or(FsError::Invalid)?;
            match mode {
                0 if end > h.file.len() => self.set_len(&who(req), &h.inode, end, Some(fh.0)),
                0 => Ok(()),
                _ => Err(FsError::NotSupported),
            }
        });
        self.empty(("fallocate", _ino.0), grown, reply);
    }
}
