//! Operations on names and inodes: lookup, attributes, creating and removing entries,
//! links, renames, xattrs, statfs. All through `*at` calls on the inode descriptors.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::time::SystemTime;

use fuser::{FileAttr, FileType, TimeOrNow};
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, Stat, Timespec, Timestamps, CWD};

use super::attr::to_attr;
use super::errno::FsError;
use super::inodes::{Inode, ROOT};
use super::KmsFs;
use crate::volume::{CipherName, Requester};

const NAME_MAX: usize = 255;

pub(super) fn path_flags() -> OFlags {
    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn timespec(t: Option<TimeOrNow>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: rfs::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: rfs::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos().into(),
            },
            Err(e) => {
                let d = e.duration();
                let (mut s, mut n) = (-(d.as_secs() as i64), -(i64::from(d.subsec_nanos())));
                if n < 0 {
                    s -= 1;
                    n += 1_000_000_000;
                }
                Timespec {
                    tv_sec: s,
                    tv_nsec: n as _,
                }
            }
        },
    }
}

impl KmsFs {
    /// Names the mount never shows or lets anyone create: the volume configuration.
    pub(super) fn check_name(&self, parent: u64, name: &OsStr) -> Result<(), FsError> {
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        // With plaintext names, kmsfs's own files share the namespace and stay hidden;
        // encrypted names can never collide with them.
        let names = self.volume.names();
        if !names.is_encrypted() && names.is_internal(name, parent == ROOT) {
            return Err(FsError::NotFound);
        }
        Ok(())
    }

    pub(super) fn stat(&self, inode: &Inode) -> Result<Stat, FsError> {
        Ok(rfs::fstat(inode.fd())?)
    }

    /// Looks up `name` in `parent` and counts one kernel reference to it.
    pub(super) fn lookup_entry(&self, parent: u64, name: &OsStr) -> Result<FileAttr, FsError> {
        self.check_name(parent, name)?;
        let p = self.inodes.get(parent)?;
        let c = self.cipher_name(&p, name)?;
        let fd: OwnedFd = rfs::openat(p.fd(), &c.on_disk, path_flags(), Mode::empty())?;
        let st = rfs::fstat(&fd)?;
        let inode = self.inodes.remember(parent, name, fd, &st);
        Ok(to_attr(inode.ino, &st, &self.volume))
    }

    pub(super) fn getattr(&self, ino: u64) -> Result<FileAttr, FsError> {
        let inode = self.inodes.get(ino)?;
        let st = self.stat(&inode)?;
        Ok(to_attr(ino, &st, &self.volume))
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
        let st = self.stat(&inode)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR && st.st_mode & 0o111 == 0 {
            return Err(FsError::Sys(rustix::io::Errno::ACCESS));
        }
        Ok(())
    }

    /// Gives a new entry to the requesting user when the daemon runs as root (as a local
    /// filesystem would), keeping a set-group-id directory's group.
    pub(super) fn set_owner(
        &self,
        who: &Requester,
        parent: &Inode,
        name: &OsStr,
    ) -> Result<(), FsError> {
        if !self.is_root {
            return Ok(());
        }
        // Root asking the root daemon: the entry already has the right owner, and the
        // kernel gave it a set-group-id directory's group.
        if who.uid == 0 && who.gid == self.own_gid {
            return Ok(());
        }
        let pst = self.stat(parent)?;
        let gid = if pst.st_mode & 0o2000 != 0 {
            pst.st_gid
        } else {
            who.gid
        };
        rfs::chownat(
            parent.fd(),
            name,
            Some(rfs::Uid::from_raw(who.uid)),
            Some(rfs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    /// After making a non-directory entry: its long-name file and its owner. Undoes the
    /// entry if either fails.
    fn finish_entry(&self, who: &Requester, p: &Inode, c: &CipherName) -> Result<(), FsError> {
        let done = self
            .write_sidecar(p, c)
            .and_then(|()| self.set_owner(who, p, &c.on_disk));
        if done.is_err() {
            let _ = rfs::unlinkat(p.fd(), &c.on_disk, AtFlags::empty());
            self.remove_sidecar(p, c);
        }
        done
    }

    pub(super) fn mkdir(
        &self,
        who: &Requester,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> Result<FileAttr, FsError> {
        self.check_name(parent, name)?;
        let p = self.inodes.get(parent)?;
        let c = self.cipher_name(&p, name)?;
        rfs::mkdirat(
            p.fd(),
            &c.on_disk,
            Mode::from_raw_mode(mode & !umask & 0o7777),
        )?;
        let finish = self
            .write_dir_record(&p, &c.on_disk)
            .and_then(|()| self.write_sidecar(&p, &c))
            .and_then(|()| self.set_owner(who, &p, &c.on_disk));
        if let Err(e) = finish {
            if self.remove_dir(&p, &c.on_disk).is_err() {
                let _ = rfs::unlinkat(p.fd(), &c.on_disk, AtFlags::REMOVEDIR);
            }
            self.remove_sidecar(&p, &c);
            return Err(e);
        }
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
        self.check_name(parent, name)?;
        let kind = rfs::FileType::from_raw_mode(mode);
        if kind == rfs::FileType::RegularFile {
            // A regular file must carry a header and a key: create it like open(O_CREAT).
            let (attr, fh) = self.create(who, parent, name, mode, umask, libc_o_excl())?;
            self.release(fh);
            return Ok(attr);
        }
        let p = self.inodes.get(parent)?;
        let c = self.cipher_name(&p, name)?;
        rfs::mknodat(
            p.fd(),
            &c.on_disk,
            kind,
            Mode::from_raw_mode(mode & !umask & 0o7777),
            rdev.into(),
        )?;
        self.finish_entry(who, &p, &c)?;
        self.lookup_entry(parent, name)
    }

    pub(super) fn symlink(
        &self,
        who: &Requester,
        parent: u64,
        name: &OsStr,
        target: &std::path::Path,
    ) -> Result<FileAttr, FsError> {
        self.check_name(parent, name)?;
        let p = self.inodes.get(parent)?;
        let c = self.cipher_name(&p, name)?;
        let stored = self
            .volume
            .names()
            .seal_symlink(target.as_os_str().as_bytes())?;
        rfs::symlinkat(OsStr::from_bytes(&stored), p.fd(), &c.on_disk)?;
        self.finish_entry(who, &p, &c)?;
        self.lookup_entry(parent, name)
    }

    pub(super) fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let inode = self.inodes.get(ino)?;
        let stored = rfs::readlinkat(inode.fd(), "", Vec::new())?.into_bytes();
        self.volume.names().open_symlink(&stored).map_err(|e| {
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
        self.check_name(new_parent, new_name)?;
        let inode = self.inodes.get(ino)?;
        let p = self.inodes.get(new_parent)?;
        let c = self.cipher_name(&p, new_name)?;
        self.write_sidecar(&p, &c)?;
        // Through /proc so that no CAP_DAC_READ_SEARCH is needed (AT_EMPTY_PATH would).
        let linked = rfs::linkat(
            CWD,
            inode.proc_path().as_str(),
            p.fd(),
            &c.on_disk,
            AtFlags::SYMLINK_FOLLOW,
        );
        if let Err(e) = linked {
            self.remove_sidecar(&p, &c);
            return Err(e.into());
        }
        self.lookup_entry(new_parent, new_name)
    }

    pub(super) fn unlink(&self, parent: u64, name: &OsStr, dir: bool) -> Result<(), FsError> {
        self.check_name(parent, name)?;
        let p = self.inodes.get(parent)?;
        let c = self.cipher_name(&p, name)?;
        if dir {
            self.remove_dir(&p, &c.on_disk)?;
        } else {
            rfs::unlinkat(p.fd(), &c.on_disk, AtFlags::empty())?;
        }
        self.remove_sidecar(&p, &c);
        Ok(())
    }

    pub(super) fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<(), FsError> {
        self.check_name(parent, name)?;
        self.check_name(new_parent, new_name)?;
        let p = self.inodes.get(parent)?;
        let np = self.inodes.get(new_parent)?;
        let (c_old, c_new) = (
            self.cipher_name(&p, name)?,
            self.cipher_name(&np, new_name)?,
        );
        let moved = rfs::statat(p.fd(), &c_old.on_disk, AtFlags::SYMLINK_NOFOLLOW)?.st_ino;
        let other = rfs::statat(np.fd(), &c_new.on_disk, AtFlags::SYMLINK_NOFOLLOW)
            .ok()
            .map(|s| s.st_ino);
        let rflags = rfs::RenameFlags::from_bits(flags).ok_or(FsError::Invalid)?;
        // Names are per directory: the entry gets its new directory's name, and a long
        // name's `.name` file goes with it. With EXCHANGE each name stays where it is.
        let exchange = rflags.contains(rfs::RenameFlags::EXCHANGE);
        let same = parent == new_parent && c_old.on_disk == c_new.on_disk;
        if !exchange && !same {
            self.write_sidecar(&np, &c_new)?;
        }
        let renamed = rfs::renameat_with(p.fd(), &c_old.on_disk, np.fd(), &c_new.on_disk, rflags);
        if let Err(e) = renamed {
            if !exchange && !same && other.is_none() {
                self.remove_sidecar(&np, &c_new);
            }
            return Err(e.into());
        }
        if !exchange && !same {
            self.remove_sidecar(&p, &c_old);
        }
        self.inodes.renamed(moved, new_parent, new_name);
        if rflags.contains(rfs::RenameFlags::EXCHANGE) {
            if let Some(o) = other {
                self.inodes.renamed(o, parent, name);
            }
        }
        Ok(())
    }

    pub(super) fn setattr(
        &self,
        who: &Requester,
        ino: u64,
        set: SetAttr,
    ) -> Result<FileAttr, FsError> {
        let SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh,
        } = set;
        let inode = self.inodes.get(ino)?;
        if let Some(mode) = mode {
            if inode.kind == FileType::Symlink {
                return Err(FsError::NotSupported);
            }
            rfs::chmodat(
                CWD,
                inode.proc_path().as_str(),
                Mode::from_raw_mode(mode & 0o7777),
                AtFlags::empty(),
            )?;
        }
        if uid.is_some() || gid.is_some() {
            rfs::chownat(
                inode.fd(),
                "",
                uid.map(rfs::Uid::from_raw),
                gid.map(rfs::Gid::from_raw),
                AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        if let Some(size) = size {
            self.truncate(who, &inode, size, fh)?;
        }
        if atime.is_some() || mtime.is_some() {
            let times = Timestamps {
                last_access: timespec(atime),
                last_modification: timespec(mtime),
            };
            if inode.kind == FileType::Symlink {
                let (parent, name) = inode.parent_and_name();
                let p = self.inodes.get(parent)?;
                let c = self.cipher_name(&p, &name)?;
                rfs::utimensat(p.fd(), &c.on_disk, &times, AtFlags::SYMLINK_NOFOLLOW)?;
            } else {
                rfs::utimensat(CWD, inode.proc_path().as_str(), &times, AtFlags::empty())?;
            }
        }
        self.getattr(ino)
    }

    /// Clears set-user-ID, and set-group-ID if the group may execute, of a regular file, as
    /// the kernel does when someone without CAP_FSETID writes to it through its page cache;
    /// for a write that bypasses the cache (`file_ops::is_direct`) the kernel leaves it to
    /// the filesystem. A set-group-ID file the group may not execute keeps its bit (it marks
    /// mandatory locking, not privilege). Returns whether the mode changed.
    pub(super) fn kill_suidgid(&self, ino: u64) -> Result<bool, FsError> {
        let inode = self.inodes.get(ino)?;
        if inode.kind != FileType::RegularFile {
            return Ok(false);
        }
        let mode = Mode::from_raw_mode(rfs::fstat(inode.fd())?.st_mode & 0o7777);
        let mut kept = mode - Mode::SUID;
        if mode.contains(Mode::SGID | Mode::XGRP) {
            kept -= Mode::SGID;
        }
        if kept == mode {
            return Ok(false);
        }
        rfs::chmodat(CWD, inode.proc_path().as_str(), kept, AtFlags::empty())?;
        Ok(true)
    }

    pub(super) fn statfs(&self) -> Result<rfs::StatVfs, FsError> {
        let root = self.inodes.get(ROOT)?;
        Ok(rfs::fstatvfs(root.fd())?)
    }

    /// xattrs go through `/proc/self/fd/N` with the following (non-`l`) calls: the magic
    /// link resolves to the inode itself, while `l*xattr` would act on the proc link.
    fn xattr_path(&self, ino: u64) -> Result<String, FsError> {
        Ok(self.inodes.get(ino)?.proc_path())
    }

    /// What an encrypted xattr value is bound to: a file's id, a directory's id.
    fn xattr_binding(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let inode = self.inodes.get(ino)?;
        match inode.kind {
            FileType::RegularFile => {
                let f = std::fs::File::open(inode.proc_path())?;
                let header = crate::file::read_header(&f).map_err(|_| FsError::Damaged)?;
                Ok(header.file_id.0.to_vec())
            }
            FileType::Directory => Ok(self
                .dir_names(&inode)?
                .dir_id()
                .map(|id| id.to_vec())
                .unwrap_or_default()),
            _ => Ok(Vec::new()),
        }
    }

    pub(super) fn getxattr(
        &self,
        ino: u64,
        name: &OsStr,
        size: u32,
    ) -> Result<XattrAnswer, FsError> {
        let path = self.xattr_path(ino)?;
        let names = self.volume.names();
        let stored_len = rfs::getxattr_query(path.as_str(), name)?;
        if !names.xattr_encrypted(name) && size == 0 {
            return Ok(XattrAnswer::Size(stored_len as u32));
        }
        let mut stored = vec![0u8; stored_len];
        let n = rfs::getxattr(path.as_str(), name, &mut stored[..])?;
        stored.truncate(n);
        let value = names
            .open_xattr(&self.xattr_binding(ino)?, name, &stored)
            .map_err(|e| {
                tracing::error!("xattr {name:?} of /{}: {e}", self.inodes.path_of(ino));
                FsError::from(e)
            })?;
        if size == 0 {
            return Ok(XattrAnswer::Size(value.len() as u32));
        }
        if value.len() > size as usize {
            return Err(FsError::Sys(rustix::io::Errno::RANGE));
        }
        Ok(XattrAnswer::Data(value))
    }

    pub(super) fn listxattr(&self, ino: u64, size: u32) -> Result<XattrAnswer, FsError> {
        let path = self.xattr_path(ino)?;
        if size == 0 {
            return Ok(XattrAnswer::Size(
                rfs::listxattr_query(path.as_str())? as u32
            ));
        }
        let mut buf = vec![0u8; size as usize];
        let n = rfs::listxattr(path.as_str(), &mut buf[..])?;
        buf.truncate(n);
        Ok(XattrAnswer::Data(buf))
    }

    pub(super) fn setxattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<(), FsError> {
        let path = self.xattr_path(ino)?;
        let flags = rfs::XattrFlags::from_bits(flags as u32).ok_or(FsError::Invalid)?;
        let names = self.volume.names();
        let stored = if names.xattr_encrypted(name) {
            names.seal_xattr(&self.xattr_binding(ino)?, name, value)?
        } else {
            value.to_vec()
        };
        rfs::setxattr(path.as_str(), name, &stored, flags)?;
        Ok(())
    }

    pub(super) fn removexattr(&self, ino: u64, name: &OsStr) -> Result<(), FsError> {
        let path = self.xattr_path(ino)?;
        rfs::removexattr(path.as_str(), name)?;
        Ok(())
    }
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

pub(super) enum XattrAnswer {
    Size(u32),
    Data(Vec<u8>),
}

fn libc_o_excl() -> i32 {
    OFlags::EXCL.bits() as i32
}
