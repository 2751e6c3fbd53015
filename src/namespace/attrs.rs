//! An entry's mode, owner and times, changed through its `O_PATH` descriptor. These pass
//! through to the ciphertext directory unencrypted (`docs/threat-model.md`).

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::time::SystemTime;

use rustix::fs::{self as rfs, AtFlags, Mode, Timespec, Timestamps, CWD};

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

    /// Sets the access and modification times of the entry open at `fd` (not a symlink:
    /// see [`set_symlink_times`](Self::set_symlink_times)).
    pub fn set_times(
        &self,
        fd: BorrowedFd<'_>,
        atime: TimeChange,
        mtime: TimeChange,
    ) -> Result<(), NamespaceError> {
        let times = timestamps(atime, mtime);
        rfs::utimensat(CWD, proc_path(fd).as_str(), &times, AtFlags::empty())?;
        Ok(())
    }

    /// Sets the times of the symlink `name` in `dir` itself.
    pub fn set_symlink_times(
        &self,
        dir: Dir<'_>,
        name: &OsStr,
        atime: TimeChange,
        mtime: TimeChange,
    ) -> Result<(), NamespaceError> {
        let c = self.locate(dir, name)?;
        let times = timestamps(atime, mtime);
        rfs::utimensat(dir.fd, &c.on_disk, &times, AtFlags::SYMLINK_NOFOLLOW)?;
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

/// How a time of an entry changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeChange {
    Keep,
    Now,
    To(SystemTime),
}

fn timestamps(atime: TimeChange, mtime: TimeChange) -> Timestamps {
    Timestamps {
        last_access: timespec(atime),
        last_modification: timespec(mtime),
    }
}

fn timespec(t: TimeChange) -> Timespec {
    let (tv_sec, tv_nsec) = match t {
        TimeChange::Keep => (0, rfs::UTIME_OMIT),
        TimeChange::Now => (0, rfs::UTIME_NOW),
        TimeChange::To(t) => match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos().into()),
            Err(e) => {
                // Before 1970: whole seconds down, nanoseconds up.
                let d = e.duration();
                let (s, n) = (-(d.as_secs() as i64), -i64::from(d.subsec_nanos()));
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

/// The time `secs` and `nsecs` after the epoch, as `stat` gives them (before it for a
/// negative `secs`).
pub fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    use std::time::{Duration, UNIX_EPOCH};
    let nsecs = nsecs.clamp(0, 999_999_999) as u32;
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_before_1970_round_down_to_whole_seconds() {
        let t = SystemTime::UNIX_EPOCH - Duration::new(1, 250_000_000);
        let ts = timespec(TimeChange::To(t));
        assert_eq!((ts.tv_sec, ts.tv_nsec), (-2, 750_000_000));
        let ts = timespec(TimeChange::To(SystemTime::UNIX_EPOCH + Duration::new(3, 5)));
        assert_eq!((ts.tv_sec, ts.tv_nsec), (3, 5));
        assert_eq!(timespec(TimeChange::Keep).tv_nsec, rfs::UTIME_OMIT);
    }
}
