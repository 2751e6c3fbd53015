//! The FUSE glue: `fuser::Filesystem` for the plaintext view of a ciphertext directory.
//!
//! Glue only: each callback looks up state, calls one method (in `node`, `file_ops` or
//! `dir`), each of which calls the volume or its namespace, and turns the result into a
//! reply; errors become errnos in `errno` and nowhere else. Keys, the KMS and the audit
//! log are the volume's business, names and entries on disk the namespace's: this module
//! never imports `crypto` or `kms`.

mod attr;
mod dir;
pub mod errno;
mod file_ops;
mod inodes;
mod invalidate;
mod node;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{
    AccessFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};

use crate::file::EncryptedFile;
use crate::volume::{Requester, Volume};
use errno::{errno, FsError};
use inodes::{Inode, Inodes};
pub use invalidate::{start as start_invalidations, InvalidationReceiver};

struct OpenHandle {
    inode: Arc<Inode>,
    file: Arc<EncryptedFile>,
    append: bool,
    writable: bool,
    /// Opened write-only: its writes bypass the kernel's page cache (`file_ops.rs`).
    uncached: bool,
}

impl OpenHandle {
    /// A handle opened with `flags`; `uncached`: its I/O bypasses the kernel's page cache.
    fn new(inode: Arc<Inode>, file: Arc<EncryptedFile>, flags: i32, uncached: bool) -> Self {
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

enum Handle {
    File(Arc<OpenHandle>),
    Dir(Arc<Vec<dir::DirEntry>>),
}

/// How busy the mount is, shared with the daemon (for `--idle` and `kmsfs status`).
#[derive(Debug)]
pub struct Activity {
    open_handles: std::sync::atomic::AtomicUsize,
    last_op_ms: AtomicU64,
    start: std::time::Instant,
}

impl Activity {
    fn new() -> Self {
        Self {
            open_handles: std::sync::atomic::AtomicUsize::new(0),
            last_op_ms: AtomicU64::new(0),
            start: std::time::Instant::now(),
        }
    }

    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_op_ms.store(now, Ordering::Relaxed);
    }

    /// Open files and directories.
    pub fn open_handles(&self) -> usize {
        self.open_handles.load(Ordering::Relaxed)
    }

    /// Time since the last lookup, open, read or write.
    pub fn idle_for(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_op_ms.load(Ordering::Relaxed)))
    }
}

pub struct KmsFs {
    volume: Arc<Volume>,
    activity: Arc<Activity>,
    inodes: Inodes,
    /// Cached pages and attributes the kernel must drop (`invalidate.rs`).
    invalidations: invalidate::Invalidations,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    is_root: bool,
    /// How long the kernel may cache attributes and names. Everything goes through the
    /// mount, so this only bounds how soon changes made behind its back show up.
    ttl: Duration,
    /// The daemon's group: what a new entry gets unless its directory is set-group-id.
    own_gid: u32,
    /// Write-only handles bypass the kernel's page cache (`file_ops::bypasses_cache`): set at
    /// init when the kernel is new enough.
    uncached_writes: bool,
}

impl KmsFs {
    /// The filesystem for `volume`, whose ciphertext directory must exist; the kernel may
    /// cache names and attributes for `ttl`.
    pub fn new(volume: Arc<Volume>, ttl: Duration) -> std::io::Result<Self> {
        let root = rustix::fs::open(
            volume.cipherdir(),
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&root)?;
        Ok(Self {
            inodes: Inodes::new(root, &st),
            volume,
            activity: Arc::new(Activity::new()),
            invalidations: invalidate::Invalidations::new(),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            is_root: rustix::process::geteuid().is_root(),
            own_gid: rustix::process::getegid().as_raw(),
            uncached_writes: false,
            ttl,
        })
    }

    pub fn volume(&self) -> &Arc<Volume> {
        &self.volume
    }

    /// The mount's activity counters, to keep once the filesystem is handed to the session.
    pub fn activity(&self) -> Arc<Activity> {
        self.activity.clone()
    }

    /// Takes what the mount needs to start sending the kernel invalidations
    /// ([`start_invalidations`]) once the session runs; `None` the second time.
    pub fn take_invalidations(&self) -> Option<InvalidationReceiver> {
        self.invalidations.take_receiver()
    }

    /// Whether a handle opened with `flags` bypasses the kernel's page cache.
    fn uncached(&self, flags: i32) -> bool {
        self.uncached_writes && file_ops::bypasses_cache(flags)
    }

    /// The reply flags of an open or create with `flags`: see [`file_ops::bypasses_cache`].
    fn fopen_flags(&self, flags: i32) -> FopenFlags {
        if self.uncached(flags) {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::empty()
        }
    }

    fn add_handle(&self, h: Handle) -> u64 {
        self.activity.touch();
        self.activity.open_handles.fetch_add(1, Ordering::Relaxed);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, h);
        fh
    }

    fn remove_handle(&self, fh: u64) {
        let removed = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
        if removed.is_some() {
            self.activity.open_handles.fetch_sub(1, Ordering::Relaxed);
        }
        drop(removed); // outside the lock: may close a file
    }

    fn file_handle(&self, fh: u64) -> Result<Arc<OpenHandle>, FsError> {
        match self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
        {
            Some(Handle::File(h)) => Ok(h.clone()),
            _ => Err(FsError::Stale),
        }
    }

    fn dir_handle(&self, fh: u64) -> Result<Arc<Vec<dir::DirEntry>>, FsError> {
        match self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
        {
            Some(Handle::Dir(d)) => Ok(d.clone()),
            _ => Err(FsError::Stale),
        }
    }

    fn child_path(&self, parent: u64, name: &OsStr) -> String {
        let base = self.inodes.path_of(parent);
        let name = name.to_string_lossy();
        if base.is_empty() {
            name.into_owned()
        } else {
            format!("{base}/{name}")
        }
    }

    /// Open handles (for status output and tests).
    pub fn open_handles(&self) -> usize {
        self.handles.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

fn who(req: &Request) -> Requester {
    Requester {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn log_err(op: &str, err: &FsError) -> Errno {
    let e = errno(err);
    if matches!(err, FsError::Volume(_)) {
        tracing::warn!("{op}: {err}");
    } else {
        tracing::debug!("{op}: {err}");
    }
    e
}

const GEN: Generation = Generation(0);

impl Filesystem for KmsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Linux 6.6 (FUSE 7.39) and later drop cached pages before a write that bypasses
        // the cache; earlier kernels would leave other handles reading stale pages.
        let abi = config.kernel_abi();
        self.uncached_writes = (abi.0, abi.1) >= (7, 39);
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_PARALLEL_DIROPS);
        // Listings carry each entry's attributes (see `readdirplus`).
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_DO_READDIRPLUS);
        Ok(())
    }

    fn destroy(&mut self) {
        self.volume.wipe_keys();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.activity.touch();
        match self.lookup_entry(parent.0, name) {
            Ok(attr) => reply.entry(&self.ttl, &attr, GEN),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.getattr(ino.0) {
            Ok(attr) => reply.attr(&self.ttl, &attr),
            Err(e) => reply.error(log_err("getattr", &e)),
        }
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
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = node::SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh: fh.map(|f| f.0),
        };
        match self.setattr(&who(req), ino.0, set) {
            Ok(attr) => reply.attr(&self.ttl, &attr),
            Err(e) => reply.error(log_err("setattr", &e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(log_err("readlink", &e)),
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
        match self.mknod(&who(req), parent.0, name, mode, umask, rdev) {
            Ok(attr) => reply.entry(&self.ttl, &attr, GEN),
            Err(e) => reply.error(log_err("mknod", &e)),
        }
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
        match self.mkdir(&who(req), parent.0, name, mode & !umask) {
            Ok(attr) => reply.entry(&self.ttl, &attr, GEN),
            Err(e) => reply.error(log_err("mkdir", &e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.unlink(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(log_err("unlink", &e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.unlink(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(log_err("rmdir", &e)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        match self.symlink(&who(req), parent.0, link_name, target) {
            Ok(attr) => reply.entry(&self.ttl, &attr, GEN),
            Err(e) => reply.error(log_err("symlink", &e)),
        }
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
        match self.rename(parent.0, name, newparent.0, newname, flags.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(log_err("rename", &e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.link(ino.0, newparent.0, newname) {
            Ok(attr) => reply.entry(&self.ttl, &attr, GEN),
            Err(e) => reply.error(log_err("link", &e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.open(&who(req), ino.0, flags.0) {
            Ok(fh) => reply.opened(FileHandle(fh), self.fopen_flags(flags.0)),
            Err(e) => reply.error(log_err("open", &e)),
        }
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
        self.activity.touch();
        self.read(&who(req), fh.0, offset, size, |data| match data {
            Ok(data) => reply.data(data),
            Err(e) => reply.error(log_err("read", &e)),
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
        self.activity.touch();
        match self.write(&who(req), fh.0, offset, data, write_flags) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(log_err("write", &e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes go straight to the ciphertext file; nothing is buffered here. ENOSYS tells
        // the kernel so, once: it then stops sending FLUSH, a round trip on every close.
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
        self.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.fsync(fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(log_err("fsync", &e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(log_err("opendir", &e)),
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
        let entries = match self.dir_handle(fh.0) {
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
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.release(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.statfs() {
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
            Err(e) => reply.error(log_err("statfs", &e)),
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
        match self.setxattr(ino.0, name, value, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(log_err("setxattr", &e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.getxattr(ino.0, name, size) {
            Ok(node::XattrAnswer::Size(n)) => reply.size(n),
            Ok(node::XattrAnswer::Data(d)) => reply.data(&d),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.listxattr(ino.0, size) {
            Ok(node::XattrAnswer::Size(n)) => reply.size(n),
            Ok(node::XattrAnswer::Data(d)) => reply.data(&d),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.removexattr(ino.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.access(ino.0, mask.bits() as u32) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
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
        match self.create(&who(req), parent.0, name, mode, umask, flags) {
            Ok((attr, fh)) => reply.created(
                &self.ttl,
                &attr,
                GEN,
                FileHandle(fh),
                self.fopen_flags(flags),
            ),
            Err(e) => reply.error(log_err("create", &e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.fallocate(fh.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(log_err("fallocate", &e)),
        }
    }
}
