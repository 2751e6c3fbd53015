//! The FUSE glue: `fuser::Filesystem` for the plaintext view of a ciphertext directory.
//!
//! Glue only: each callback (`callbacks.rs`) looks up the inodes and handles involved,
//! calls one step of the volume's namespace or one file operation (`file_ops.rs`,
//! `dir.rs`), and turns the result into a reply; errors become errnos in `errno` and
//! nowhere else. Keys, the KMS and the audit log are the volume's business, names and
//! entries on disk the namespace's: this module never imports `crypto` or `kms`.

mod attr;
mod callbacks;
mod dir;
pub mod errno;
mod file_ops;
mod handles;
mod inodes;
mod invalidate;

use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    Errno, FileAttr, FopenFlags, ReplyAttr, ReplyEmpty, ReplyEntry, ReplyXattr, TimeOrNow,
};
use rustix::fs::FileType;

use crate::control::Activity;
use crate::namespace::{Dir, DirNames, Namespace, Owner, TimeChange, XattrReply};
use crate::volume::{Offload, Requester, Volume};
use attr::to_attr;
use errno::FsError;
use handles::{Handle, Handles, OpenHandle};
use inodes::{Inode, Inodes};
pub use invalidate::NotifierSlot;

/// The filesystem as the FUSE session holds it, shared with the workers that answer the
/// requests waiting on a remote KMS (`KmsFs::kms_bound`).
pub struct KmsFs(Arc<Fs>);

impl std::ops::Deref for KmsFs {
    type Target = Fs;
    fn deref(&self) -> &Fs {
        &self.0
    }
}

pub struct Fs {
    volume: Arc<Volume>,
    inodes: Inodes,
    handles: Handles,
    /// Cached pages and attributes the kernel must drop (`invalidate.rs`).
    invalidations: invalidate::Invalidations,
    is_root: bool,
    /// How long the kernel may cache attributes and names (changes made behind the
    /// mount's back show up after it).
    ttl: Duration,
    /// The daemon's group: what a new entry gets unless its directory is set-group-id.
    own_gid: u32,
    /// Write-only handles bypass the page cache (`file_ops::bypasses_cache`), if the kernel can.
    uncached_writes: AtomicBool,
}

impl KmsFs {
    /// Runs `op`, here if it needs no call to a remote KMS, else on a volume's worker so
    /// that this FUSE thread serves other requests meanwhile; then `answer` its result.
    fn kms_bound<T>(
        &self,
        op: impl Fn(&Fs) -> Result<T, FsError> + Send + 'static,
        answer: impl FnOnce(&Fs, Result<T, FsError>) + Send + 'static,
    ) {
        let needs_kms = |e: &FsError| matches!(e, FsError::Volume(v) if v.needs_kms());
        Offload::dispatch(self.volume.offload(), &self.0, op, answer, needs_kms);
    }

    /// The filesystem for `volume`, whose ciphertext directory must exist; the kernel may
    /// cache names and attributes for `ttl`.
    pub fn new(volume: Arc<Volume>, ttl: Duration) -> std::io::Result<Self> {
        use rustix::fs::{Mode, OFlags};
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let root = rustix::fs::open(volume.cipherdir(), flags, Mode::empty())?;
        let st = rustix::fs::fstat(&root)?;
        Ok(Self(Arc::new(Fs {
            inodes: Inodes::new(root, &st),
            volume,
            handles: Handles::new(),
            invalidations: invalidate::Invalidations::start()?,
            is_root: rustix::process::geteuid().is_root(),
            own_gid: rustix::process::getegid().as_raw(),
            uncached_writes: AtomicBool::new(false),
            ttl,
        })))
    }
}

impl Fs {
    pub fn volume(&self) -> &Arc<Volume> {
        &self.volume
    }

    /// The mount's activity counters, to keep once the filesystem is handed to the session.
    pub fn activity(&self) -> Arc<Activity> {
        self.handles.activity.clone()
    }

    /// Where the mount puts the session's notifier, for the kernel cache invalidations.
    pub fn notifier_slot(&self) -> NotifierSlot {
        self.invalidations.notifier_slot()
    }

    /// Whether a handle opened with `flags` bypasses the kernel's page cache.
    fn uncached(&self, flags: i32) -> bool {
        self.uncached_writes.load(Relaxed) && file_ops::bypasses_cache(flags)
    }

    /// The reply flags of an open or create with `flags`: see [`file_ops::bypasses_cache`].
    fn fopen_flags(&self, flags: i32) -> FopenFlags {
        let mut fopen = FopenFlags::empty();
        fopen.set(FopenFlags::FOPEN_DIRECT_IO, self.uncached(flags));
        fopen
    }

    /// The path in the mount of `name` in `parent`, for the audit log.
    fn child_path(&self, parent: u64, name: &OsStr) -> String {
        let path = std::path::Path::new(&self.inodes.path_of(parent)).join(name);
        path.to_string_lossy().into_owned()
    }

    fn ns(&self) -> &Namespace {
        self.volume.namespace()
    }

    /// The names of directory `dir`, read from its record once and cached on its inode.
    fn dir_names(&self, dir: &Inode) -> Result<Arc<DirNames>, FsError> {
        if let Some(d) = dir.dir_names.get() {
            return Ok(d.clone());
        }
        let at_root = dir.ino == inodes::ROOT;
        let names = self.ns().dir_names(dir.fd(), at_root).inspect_err(|e| {
            let path = self.inodes.path_of(dir.ino);
            let e = crate::describe(e);
            tracing::error!("directory /{path}: {e}; its entries cannot be named");
        })?;
        Ok(dir.dir_names.get_or_init(|| Arc::new(names)).clone())
    }

    /// Runs `step` on directory `parent` with its names.
    fn in_dir<T>(
        &self,
        parent: &Inode,
        step: impl FnOnce(Dir<'_>) -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        let names = self.dir_names(parent)?;
        step(Dir {
            fd: parent.fd(),
            names: &names,
        })
    }

    /// Runs `step` on the directory with inode number `parent`.
    fn in_parent<T>(
        &self,
        parent: u64,
        step: impl FnOnce(Dir<'_>) -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        let parent = self.inodes.get(parent)?;
        self.in_dir(&parent, step)
    }

    /// Who a new entry belongs to: the requesting user, when the daemon runs as root (as a
    /// local filesystem would).
    fn owner(&self, who: &Requester) -> Option<Owner> {
        let root_asks = who.uid == 0 && who.gid == self.own_gid;
        (self.is_root && !root_asks).then_some(Owner {
            uid: who.uid,
            gid: who.gid,
        })
    }

    /// Looks up `name` in `parent` and counts one kernel reference to it.
    fn lookup_entry(&self, parent: u64, name: &OsStr) -> Result<FileAttr, FsError> {
        let (fd, st) = self.in_parent(parent, |dir| Ok(self.ns().lookup(dir, name)?))?;
        let inode = self.inodes.remember(parent, name, fd, &st);
        Ok(to_attr(inode.ino, &st, &self.volume))
    }

    fn getattr(&self, ino: u64) -> Result<FileAttr, FsError> {
        let inode = self.inodes.get(ino)?;
        Ok(to_attr(ino, &rustix::fs::fstat(inode.fd())?, &self.volume))
    }
}

/// An operation, and the inode it was on (for log lines).
type Op = (&'static str, u64);

fn who(req: &fuser::Request) -> Requester {
    Requester {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn time_change(t: Option<TimeOrNow>) -> TimeChange {
    match t {
        None => TimeChange::Keep,
        Some(TimeOrNow::Now) => TimeChange::Now,
        Some(TimeOrNow::SpecificTime(t)) => TimeChange::To(t),
    }
}

/// Replies: each turns a result into the reply, or into its errno, logged.
impl Fs {
    /// The errno of `err`, logged: a warning with the path for the volume's failures (KMS,
    /// damage, audit), a debug line for the everyday ones (ENOENT, EEXIST, ...).
    fn fail(&self, (op, ino): Op, err: &FsError) -> Errno {
        if errno::is_serious(err) {
            let path = self.inodes.path_of(ino);
            tracing::warn!("{op} /{path}: {}", crate::describe(err));
        } else {
            tracing::debug!("{op}: {}", crate::describe(err));
        }
        errno::errno(err)
    }

    fn entry(&self, op: Op, result: Result<FileAttr, FsError>, reply: ReplyEntry) {
        match result {
            Ok(attr) => reply.entry(&self.ttl, &attr, callbacks::GEN),
            Err(e) => reply.error(self.fail(op, &e)),
        }
    }

    fn attr(&self, op: Op, result: Result<FileAttr, FsError>, reply: ReplyAttr) {
        match result {
            Ok(attr) => reply.attr(&self.ttl, &attr),
            Err(e) => reply.error(self.fail(op, &e)),
        }
    }

    fn empty(&self, op: Op, result: Result<(), FsError>, reply: ReplyEmpty) {
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail(op, &e)),
        }
    }

    fn xattr(&self, op: Op, result: Result<XattrReply, FsError>, reply: ReplyXattr) {
        match result {
            Ok(XattrReply::Len(n)) => reply.size(n as u32),
            Ok(XattrReply::Bytes(d)) => reply.data(&d),
            Err(e) => reply.error(self.fail(op, &e)),
        }
    }

    /// Changes the mode, owner, length and times of `ino`, in that order.
    fn set_attr(
        &self,
        who: &Requester,
        ino: u64,
        (mode, uid, gid): (Option<u32>, Option<u32>, Option<u32>),
        (size, fh): (Option<u64>, Option<u64>),
        (atime, mtime): (Option<TimeOrNow>, Option<TimeOrNow>),
    ) -> Result<FileAttr, FsError> {
        let inode = self.inodes.get(ino)?;
        let symlink = inode.kind == FileType::Symlink;
        if let Some(mode) = mode {
            if symlink {
                return Err(FsError::NotSupported);
            }
            self.ns().chmod(inode.fd(), mode)?;
        }
        if uid.is_some() || gid.is_some() {
            self.ns().chown(inode.fd(), uid, gid)?;
        }
        if let Some(size) = size {
            self.set_len(who, &inode, size, fh)?;
        }
        let (a, m) = (time_change(atime), time_change(mtime));
        if atime.or(mtime).is_some() && symlink {
            let (parent, name) = inode.parent_and_name();
            let ns = self.ns();
            self.in_parent(parent, |dir| Ok(ns.set_symlink_times(dir, &name, a, m)?))?;
        } else if atime.or(mtime).is_some() {
            self.ns().set_times(inode.fd(), a, m)?;
        }
        self.getattr(ino)
    }
}
