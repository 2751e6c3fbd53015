//! Operations on names and inodes: lookup, attributes, creating and removing entries,
//! links, renames, xattrs, statfs. Each looks up the inodes involved and calls one step of
//! the volume's namespace.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{FileAttr, FileType, TimeOrNow};
use rustix::fs::{self as rfs, Timespec, Timestamps};

use super::attr::to_attr;
use super::errno::FsError;
use super::inodes::{Inode, ROOT};
use super::KmsFs;
use crate::namespace::{Dir, DirNames, Namespace, Owner};
use crate::volume::Requester;

fn timespec(t: Option<TimeOrNow>) -> Timespec {
    let (tv_sec, tv_nsec) = match t {
        None => (0, rfs::UTIME_OMIT),
        Some(TimeOrNow::Now) => (0, rfs::UTIME_NOW),
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos().into()),
            Err(e) => {
                // Before 1970: whole seconds down, nanoseconds up.
                let d = e.duration();
                let (s, n) = (-(d.as_secs() as i64), -(i64::from(d.subsec_nanos())));
                if n < 0 {
                    (s - 1, (n + 1_000_000_000) as _)
                } else {
                    (s, n as _)
                }
            }
        },
    };
    Timespec { tv_sec, tv_nsec }
}

/// What a `setattr` changes (each `None` stays as it is).
pub(super) struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    pub fh: Option<u64>,
}

/// The answer to an xattr query: the length it needs, or the bytes.
pub(super) enum XattrAnswer {
    Size(u32),
    Data(Vec<u8>),
}

impl XattrAnswer {
    /// `value` for a buffer of `size` bytes (0 asks for the length).
    fn fit(value: Vec<u8>, size: u32) -> Result<Self, FsError> {
        if size == 0 {
            Ok(Self::Size(value.len() as u32))
        } else if value.len() > size as usize {
            Err(FsError::TooSmall)
        } else {
            Ok(Self::Data(value))
        }
    }
}

impl KmsFs {
    pub(super) fn ns(&self) -> &Namespace {
        self.volume.namespace()
    }

    /// The names of directory `dir`, read from its record once and cached on its inode.
    pub(super) fn dir_names(&self, dir: &Inode) -> Result<Arc<DirNames>, FsError> {
        if let Some(d) = dir.dir_names.get() {
            return Ok(d.clone());
        }
        let names = self
            .ns()
            .dir_names(dir.fd(), dir.ino == ROOT)
            .inspect_err(|e| {
                let path = self.inodes.path_of(dir.ino);
                tracing::error!(
                    "directory /{path}: {}; its entries cannot be named",
                    crate::describe(e)
                );
            })?;
        Ok(dir.dir_names.get_or_init(|| Arc::new(names)).clone())
    }

    /// Runs `step` on directory `parent` with its names.
    pub(super) fn in_dir<T>(
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

    /// Who a new entry belongs to: the requesting user, when the daemon runs as root (as a
    /// local filesystem would). Root asking the root daemon needs nothing changed.
    pub(super) fn owner(&self, who: &Requester) -> Option<Owner> {
        let root_asks = who.uid == 0 && who.gid == self.own_gid;
        (self.is_root && !root_asks).then_some(Owner {
            uid: who.uid,
            gid: who.gid,
        })
    }

    /// Looks up `name` in `parent` and counts one kernel reference to it.
    pub(super) fn lookup_entry(&self, parent: u64, name: &OsStr) -> Result<FileAttr, FsError> {
        let p = self.inodes.get(parent)?;
        let (fd, st) = self.in_dir(&p, |dir| Ok(self.ns().lookup(dir, name)?))?;
        let inode = self.inodes.remember(parent, name, fd, &st);
        Ok(to_attr(inode.ino, &st, &self.volume))
    }

    pub(super) fn getattr(&self, ino: u64) -> Result<FileAttr, FsError> {
        let inode = self.inodes.get(ino)?;
        Ok(to_attr(ino, &rfs::fstat(inode.fd())?, &self.volume))
    }

    /// `access(2)` and `chdir`. The kernel sends these only when it does not check
    /// permissions itself, that is on a private mount of a root daemon, which only
    /// processes whose every user and group id is 0 can reach: root may read and write
    /// anything, search any directory, and execute a file that has at least one x bit.
    pub(super) fn access(&self, ino: u64, mask: u32) -> Result<(), FsError> {
        let inode = self.inodes.get(ino)?;
        if mask & libc::X_OK as u32 == 0 {
            return Ok(());
        }
        let st = rfs::fstat(inode.fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR && st.st_mode & 0o111 == 0 {
            return Err(FsError::PermissionDenied);
        }
        Ok(())
    }

    pub(super) fn mkdir(
        &self,
        who: &Requester,
        parent: u64,
        name: &OsStr,
        perm: u32,
    ) -> Result<FileAttr, FsError> {
        let p = self.inodes.get(parent)?;
        let owner = self.owner(who);
        self.in_dir(&p, |dir| Ok(self.ns().mkdir(dir, name, perm, owner)?))?;
        self.lookup_entry(parent, name)
    }

    pub(super) fn mknod(
        &self,
        who: &Requester,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> Result<FileAttr, FsError> {
        let kind = rfs::FileType::from_raw_mode(mode);
        if kind == rfs::FileType::RegularFile {
            // A regular file must carry a header and a key: create it like open(O_CREAT).
            let excl = rfs::OFlags::EXCL.bits() as i32;
            let (attr, fh) = self.create(who, parent, name, mode, umask, excl)?;
            self.release(fh);
            return Ok(attr);
        }
        let p = self.inodes.get(parent)?;
        let (perm, owner) = (mode & !umask, self.owner(who));
        self.in_dir(&p, |dir| {
            Ok(self.ns().mknod(dir, name, kind, perm, rdev.into(), owner)?)
        })?;
        self.lookup_entry(parent, name)
    }

    pub(super) fn symlink(
        &self,
        who: &Requester,
        parent: u64,
        name: &OsStr,
        target: &std::path::Path,
    ) -> Result<FileAttr, FsError> {
        let p = self.inodes.get(parent)?;
        let (target, owner) = (target.as_os_str().as_bytes(), self.owner(who));
        self.in_dir(&p, |dir| Ok(self.ns().symlink(dir, name, target, owner)?))?;
        self.lookup_entry(parent, name)
    }

    pub(super) fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let inode = self.inodes.get(ino)?;
        self.ns().read_symlink(inode.fd()).map_err(|e| {
            tracing::error!("symlink /{}: {e}", self.inodes.path_of(ino));
            e.into()
        })
    }

    pub(super) fn link(
        &self,
        ino: u64,
        new_parent: u64,
        new_name: &OsStr,
    ) -> Result<FileAttr, FsError> {
        let inode = self.inodes.get(ino)?;
        let p = self.inodes.get(new_parent)?;
        self.in_dir(&p, |dir| Ok(self.ns().link(inode.fd(), dir, new_name)?))?;
        self.lookup_entry(new_parent, new_name)
    }

    pub(super) fn unlink(&self, parent: u64, name: &OsStr, is_dir: bool) -> Result<(), FsError> {
        let p = self.inodes.get(parent)?;
        self.in_dir(&p, |dir| Ok(self.ns().remove(dir, name, is_dir)?))
    }

    pub(super) fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<(), FsError> {
        let flags = rfs::RenameFlags::from_bits(flags).ok_or(FsError::Invalid)?;
        let (p, np) = (self.inodes.get(parent)?, self.inodes.get(new_parent)?);
        let renamed = self.in_dir(&p, |from| {
            self.in_dir(&np, |to| {
                Ok(self.ns().rename(from, name, to, new_name, flags)?)
            })
        })?;
        self.inodes.renamed(renamed.moved, new_parent, new_name);
        if let (true, Some(other)) = (flags.contains(rfs::RenameFlags::EXCHANGE), renamed.other) {
            self.inodes.renamed(other, parent, name);
        }
        Ok(())
    }

    pub(super) fn setattr(
        &self,
        who: &Requester,
        ino: u64,
        set: SetAttr,
    ) -> Result<FileAttr, FsError> {
        let inode = self.inodes.get(ino)?;
        if let Some(mode) = set.mode {
            if inode.kind == FileType::Symlink {
                return Err(FsError::NotSupported);
            }
            self.ns().chmod(inode.fd(), mode)?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            self.ns().chown(inode.fd(), set.uid, set.gid)?;
        }
        if let Some(size) = set.size {
            self.truncate(who, &inode, size, set.fh)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let times = Timestamps {
                last_access: timespec(set.atime),
                last_modification: timespec(set.mtime),
            };
            if inode.kind == FileType::Symlink {
                let (parent, name) = inode.parent_and_name();
                let p = self.inodes.get(parent)?;
                self.in_dir(&p, |dir| {
                    Ok(self.ns().set_symlink_times(dir, &name, &times)?)
                })?;
            } else {
                self.ns().set_times(inode.fd(), &times)?;
            }
        }
        self.getattr(ino)
    }

    /// Clears set-user-ID (and set-group-ID where it means privilege) of a regular file
    /// after a write that bypassed the kernel's cache, which leaves that to the filesystem.
    /// Returns whether the mode changed.
    pub(super) fn kill_suidgid(&self, ino: u64) -> Result<bool, FsError> {
        let inode = self.inodes.get(ino)?;
        if inode.kind != FileType::RegularFile {
            return Ok(false);
        }
        Ok(self.ns().clear_set_id(inode.fd())?)
    }

    pub(super) fn statfs(&self) -> Result<rfs::StatVfs, FsError> {
        let root = self.inodes.get(ROOT)?;
        Ok(rfs::fstatvfs(root.fd())?)
    }

    pub(super) fn getxattr(
        &self,
        ino: u64,
        name: &OsStr,
        size: u32,
    ) -> Result<XattrAnswer, FsError> {
        let inode = self.inodes.get(ino)?;
        let kind = inode.backing_kind();
        if size == 0 {
            return Ok(XattrAnswer::Size(
                self.ns().xattr_len(inode.fd(), kind, name)? as u32,
            ));
        }
        let value = self
            .ns()
            .get_xattr(inode.fd(), kind, name)
            .inspect_err(|e| {
                tracing::error!("xattr {name:?} of /{}: {e}", self.inodes.path_of(ino));
            })?;
        XattrAnswer::fit(value, size)
    }

    pub(super) fn listxattr(&self, ino: u64, size: u32) -> Result<XattrAnswer, FsError> {
        let inode = self.inodes.get(ino)?;
        if size == 0 {
            return Ok(XattrAnswer::Size(
                self.ns().list_xattrs_len(inode.fd())? as u32
            ));
        }
        XattrAnswer::fit(self.ns().list_xattrs(inode.fd())?, size)
    }

    pub(super) fn setxattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<(), FsError> {
        let inode = self.inodes.get(ino)?;
        let flags = rfs::XattrFlags::from_bits(flags as u32).ok_or(FsError::Invalid)?;
        let kind = inode.backing_kind();
        Ok(self.ns().set_xattr(inode.fd(), kind, name, value, flags)?)
    }

    pub(super) fn removexattr(&self, ino: u64, name: &OsStr) -> Result<(), FsError> {
        let inode = self.inodes.get(ino)?;
        Ok(self.ns().remove_xattr(inode.fd(), name)?)
    }
}
