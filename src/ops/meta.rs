//! Carrying a file's metadata across: mode, owner (only as root) and times, applied to a
//! path without following a final symlink.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, Mode};

/// Gives `path` the mode (not for symlinks), owner (as root) and times of `meta`.
pub fn apply(path: &Path, meta: &std::fs::Metadata) {
    let symlink = meta.file_type().is_symlink();
    let flags = if symlink {
        AtFlags::SYMLINK_NOFOLLOW
    } else {
        AtFlags::empty()
    };
    if rustix::process::geteuid().is_root() {
        let _ = rfs::chownat(
            rfs::CWD,
            path,
            Some(rfs::Uid::from_raw(meta.uid())),
            Some(rfs::Gid::from_raw(meta.gid())),
            flags,
        );
    }
    // After chown, which may clear set-id bits.
    if !symlink {
        let _ = rfs::chmodat(
            rfs::CWD,
            path,
            Mode::from_raw_mode(meta.mode() & 0o7777),
            AtFlags::empty(),
        );
    }
    let ts = |s: i64, ns: i64| rfs::Timespec {
        tv_sec: s,
        tv_nsec: ns as _,
    };
    let times = rfs::Timestamps {
        last_access: ts(meta.atime(), meta.atime_nsec()),
        last_modification: ts(meta.mtime(), meta.mtime_nsec()),
    };
    let _ = rfs::utimensat(rfs::CWD, path, &times, flags);
}
