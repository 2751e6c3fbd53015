//! Carrying a file's metadata across: mode, owner and times, given to the entry `name` of a
//! directory (or a path, with `rustix::fs::CWD`) without following a final symlink, or to
//! an open file. [`Restore`] says how much of it to trust: all of it when it comes from the
//! user's own tree (`import`, `rekey`), only what `cp` would keep when it comes from a
//! ciphertext directory others can write (`export`).

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;

use rustix::fs::{self as rfs, AtFlags, Mode};

/// Which of an entry's metadata to restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restore {
    /// Its owner and group (only root can give files to others).
    pub owners: bool,
    /// Its exact permission bits, sticky bit included; otherwise `mode & 0o777 & !umask`.
    pub modes: bool,
    /// Its set-user-ID and set-group-ID bits too (with `modes`).
    pub set_id: bool,
    /// The process's umask, applied when `modes` is not.
    pub umask: u32,
}

impl Restore {
    /// Everything, owners only as root: for metadata from the user's own files.
    pub fn everything() -> Self {
        Self {
            owners: rustix::process::geteuid().is_root(),
            modes: true,
            set_id: true,
            umask: 0,
        }
    }

    /// What `cp` without `-p` keeps (permission bits less the umask, owned by whoever runs
    /// it), plus what was asked for.
    pub fn asked(owners: bool, modes: bool, set_id: bool) -> Self {
        Self {
            owners,
            modes: modes || set_id,
            set_id,
            umask: current_umask(),
        }
    }

    /// The mode to give a copy of an entry with `meta`'s mode.
    pub fn mode_of(&self, raw_mode: u32) -> u32 {
        match (self.modes, self.set_id) {
            (true, true) => raw_mode & 0o7777,
            (true, false) => raw_mode & 0o1777,
            _ => raw_mode & 0o777 & !self.umask,
        }
    }
}

/// The umask, read by setting it and putting it back (export runs on one thread).
fn current_umask() -> u32 {
    let old = rustix::process::umask(Mode::from_raw_mode(0o022));
    rustix::process::umask(old);
    old.bits()
}

/// Gives entry `name` of `dir` the mode (not for symlinks), owner and times of `meta`, as
/// far as `restore` says. Best effort: a filesystem that refuses one of them still gets
/// the others.
pub fn apply(dir: BorrowedFd<'_>, name: &OsStr, meta: &std::fs::Metadata, restore: &Restore) {
    if restore.owners {
        let (uid, gid) = owner(meta);
        let _ = rfs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW);
    }
    // After chown, which may clear set-id bits; Linux has no mode for a symlink.
    if !meta.file_type().is_symlink() {
        chmod_nofollow(dir, name, restore.mode_of(meta.mode()));
    }
    let _ = rfs::utimensat(dir, name, &times(meta), AtFlags::SYMLINK_NOFOLLOW);
}

/// `chmod` of entry `name` of `dir` itself: `fchmodat` has no working no-follow flag, so
/// the entry is opened `O_PATH | O_NOFOLLOW` and changed through its `/proc` link, which
/// a symlink swapped in at `name` cannot redirect.
fn chmod_nofollow(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) {
    let Ok(fd) = rfs::openat(dir, name, crate::namespace::path_flags(), Mode::empty()) else {
        return;
    };
    let is_link = rfs::fstat(&fd).map_or(true, |st| {
        rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::Symlink
    });
    if !is_link {
        let path = crate::namespace::proc_path(fd.as_fd());
        let _ = rfs::chmod(path.as_str(), Mode::from_raw_mode(mode));
    }
}

/// [`apply`] to the regular file open at `fd`, which may have no name yet.
pub fn apply_fd(fd: BorrowedFd<'_>, meta: &std::fs::Metadata, restore: &Restore) {
    if restore.owners {
        let (uid, gid) = owner(meta);
        let _ = rfs::fchown(fd, uid, gid);
    }
    let _ = rfs::fchmod(fd, Mode::from_raw_mode(restore.mode_of(meta.mode())));
    let _ = rfs::futimens(fd, &times(meta));
}

fn owner(meta: &std::fs::Metadata) -> (Option<rfs::Uid>, Option<rfs::Gid>) {
    (
        Some(rfs::Uid::from_raw(meta.uid())),
        Some(rfs::Gid::from_raw(meta.gid())),
    )
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

#[cfg(test)]
mod tests {
    use super::Restore;

    #[test]
    fn only_what_was_asked_for_is_restored_of_a_mode() {
        let cp = Restore {
            owners: false,
            modes: false,
            set_id: false,
            umask: 0o022,
        };
        assert_eq!(cp.mode_of(0o107777), 0o755, "no set-id, no sticky, umask");
        let modes = Restore { modes: true, ..cp };
        assert_eq!(modes.mode_of(0o107777), 0o1777, "sticky kept, not set-id");
        let all = Restore {
            modes: true,
            set_id: true,
            ..cp
        };
        assert_eq!(all.mode_of(0o107777), 0o7777);
        assert!(
            Restore::asked(false, false, true).modes,
            "set-id means exact modes"
        );
    }
}
