//! Carrying a file's metadata across: mode, owner (only as root) and times, given to the
//! entry `name` of a directory (or a path, with `rustix::fs::CWD`) without following a
//! final symlink, or to an open file.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt;

use rustix::fs::{self as rfs, AtFlags, Mode};

/// Gives entry `name` of `dir` the mode (not for symlinks), owner (as root) and times of
/// `meta`. Best effort: a filesystem that refuses one of them still gets the others.
pub fn apply(dir: BorrowedFd<'_>, name: &OsStr, meta: &std::fs::Metadata) {
    if rustix::process::geteuid().is_root() {
        let (uid, gid) = owner(meta);
        let _ = rfs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW);
    }
    // After chown, which may clear set-id bits; Linux has no mode for a symlink.
    if !meta.file_type().is_symlink() {
        let _ = rfs::chmodat(dir, name, mode(meta), AtFlags::empty());
    }
    let _ = rfs::utimensat(dir, name, &times(meta), AtFlags::SYMLINK_NOFOLLOW);
}

/// [`apply`] to the regular file open at `fd`, which may have no name yet.
pub fn apply_fd(fd: BorrowedFd<'_>, meta: &std::fs::Metadata) {
    if rustix::process::geteuid().is_root() {
        let (uid, gid) = owner(meta);
        let _ = rfs::fchown(fd, uid, gid);
    }
    let _ = rfs::fchmod(fd, mode(meta));
    let _ = rfs::futimens(fd, &times(meta));
}

fn owner(meta: &std::fs::Metadata) -> (Option<rfs::Uid>, Option<rfs::Gid>) {
    (
        Some(rfs::Uid::from_raw(meta.uid())),
        Some(rfs::Gid::from_raw(meta.gid())),
    )
}

fn mode(meta: &std::fs::Metadata) -> Mode {
    Mode::from_raw_mode(meta.mode() & 0o7777)
}

fn times(meta: &std::fs::Metadata) -> rfs::Timestamps {
    let ts = |s: i64, ns: i64| rfs::Timespec {
        tv_sec: s,
        tv_nsec: ns as _,
    };
    rfs::Timestamps {
        last_access: ts(meta.atime(), meta.atime_nsec()),
        last_modification: ts(meta.mtime(), meta.mtime_nsec()),
    }
}
