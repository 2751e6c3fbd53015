//! An entry's mode, owner and times, changed through its `O_PATH` descriptor. These pass
//! through to the ciphertext directory unencrypted (`docs/threat-model.md`).

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;

use rustix::fs::{self as rfs, AtFlags, Mode, Timestamps, CWD};

use super::{proc_path, Dir, Namespace, NamespaceError};

impl Namespace {
    /// Sets the permission bits of the entry open at `fd` (not a symlink: Linux has none).
    pub fn chmod(&self, fd: BorrowedFd<'_>, mode: u32) -> Result<(), NamespaceError> {
        let path = proc_path(fd);
        rfs::chmodat(
            CWD,
            path.as_str(),
            Mode::from_raw_mode(mode & 0o7777),
            AtFlags::empty(),
        )?;
        Ok(())
    }

    /// Changes the owner and/or group of the entry open at `fd`.
    pub fn chown(
        &self,
        fd: BorrowedFd<'_>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<(), NamespaceError> {
        rfs::chownat(
            fd,
            "",
            uid.map(rfs::Uid::from_raw),
            gid.map(rfs::Gid::from_raw),
            AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    /// Sets the times of the entry open at `fd` (not a symlink: see
    /// [`set_symlink_times`](Self::set_symlink_times)).
    pub fn set_times(&self, fd: BorrowedFd<'_>, times: &Timestamps) -> Result<(), NamespaceError> {
        rfs::utimensat(CWD, proc_path(fd).as_str(), times, AtFlags::empty())?;
        Ok(())
    }

    /// Sets the times of the symlink `name` in `dir` itself.
    pub fn set_symlink_times(
        &self,
        dir: Dir<'_>,
        name: &OsStr,
        times: &Timestamps,
    ) -> Result<(), NamespaceError> {
        let c = self.locate(dir, name)?;
        rfs::utimensat(dir.fd, &c.on_disk, times, AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }

    /// Clears set-user-ID, and set-group-ID if the group may execute, of the regular file
    /// open at `fd`, as the kernel does when someone without CAP_FSETID writes to it. A
    /// set-group-ID file the group may not execute keeps its bit (it marks mandatory
    /// locking, not privilege). Returns whether the mode changed.
    pub fn clear_set_id(&self, fd: BorrowedFd<'_>) -> Result<bool, NamespaceError> {
        let mode = Mode::from_raw_mode(rfs::fstat(fd)?.st_mode & 0o7777);
        let mut kept = mode - Mode::SUID;
        if mode.contains(Mode::SGID | Mode::XGRP) {
            kept -= Mode::SGID;
        }
        if kept == mode {
            return Ok(false);
        }
        rfs::chmodat(CWD, proc_path(fd).as_str(), kept, AtFlags::empty())?;
        Ok(true)
    }
}
