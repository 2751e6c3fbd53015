//! kmsfs's own temporary entries: a file written beside an entry and renamed over it
//! ([`Replacement`], what `rekey` uses), the names they and `mkdir`'s unnamed directories
//! get, and sweeping what a killed run left behind.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};

use super::{Namespace, NamespaceError};

/// A fresh name for a temporary entry (kmsfs's own, hidden, swept after a crash).
pub(super) fn temp_name() -> Result<std::ffi::OsString, NamespaceError> {
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(format!("{TEMP_PREFIX}{}.tmp", hex::encode(rnd)).into())
}

/// Creates the work file at `path` (mode `mode`) anew: what is there is removed first, and
/// the open never follows a symlink (`O_CREAT | O_EXCL | O_NOFOLLOW`). A symlink planted at
/// a work file's name (in a ciphertext directory others can write, or an export's
/// destination) could otherwise send the write, or a truncation, to any file the tool can
/// write.
pub fn create_work_file(path: &std::path::Path, mode: u32) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(OFlags::NOFOLLOW.bits() as i32)
        .mode(mode)
        .open(path)
}

/// Prefix of the temporary files [`Replacement`]s are written in (kmsfs's own, hidden).
const TEMP_PREFIX: &str = ".kmsfs-tmp-";

/// A temporary file beside an entry, written and then renamed over it ([`commit`]), so a
/// crash leaves the old or the new file whole; removed when dropped before.
///
/// [`commit`]: Replacement::commit
pub struct Replacement<'a> {
    dir: BorrowedFd<'a>,
    temp: std::ffi::OsString,
    target: std::ffi::OsString,
    done: bool,
}

impl Replacement<'_> {
    /// The name of the temporary file in its directory.
    pub fn temp_name(&self) -> &OsStr {
        &self.temp
    }

    /// Makes the temporary file (synced by the caller) the entry: rename, then sync the
    /// directory so that the rename survives a power cut.
    pub fn commit(mut self) -> Result<(), NamespaceError> {
        rfs::renameat(self.dir, &self.temp, self.dir, &self.target)?;
        self.done = true;
        let listing = super::open_listing(self.dir)?;
        rfs::fsync(&listing)?;
        Ok(())
    }
}

impl Drop for Replacement<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = rfs::unlinkat(self.dir, &self.temp, AtFlags::empty());
        }
    }
}

impl Namespace {
    /// A new empty file (read-write, mode 0600) to replace the entry `on_disk` of `dir`.
    pub fn replace_file<'a>(
        &self,
        dir: BorrowedFd<'a>,
        on_disk: &OsStr,
    ) -> Result<(Replacement<'a>, File), NamespaceError> {
        let temp = temp_name()?;
        let fd = rfs::openat(
            dir,
            &temp,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let replacement = Replacement {
            dir,
            temp,
            target: on_disk.to_owned(),
            done: false,
        };
        Ok((replacement, File::from(fd)))
    }

    /// Removes the temporary files (and directories) a killed run left in the directory open
    /// at `dir`. Only while nothing else works on the volume: another process's temporary
    /// file is not told from a killed one's.
    pub fn sweep_temp_files(&self, dir: BorrowedFd<'_>) -> Result<u64, NamespaceError> {
        let listing = super::open_listing(dir)?;
        let mut removed = 0;
        for entry in rfs::Dir::read_from(&listing)? {
            let name = entry?.file_name().to_bytes().to_vec();
            // `.kmsfs-rekey-*.tmp` is what earlier versions of rekey named them.
            let ours =
                name.starts_with(TEMP_PREFIX.as_bytes()) || name.starts_with(b".kmsfs-rekey-");
            if ours && name.ends_with(b".tmp") {
                let name = OsStr::from_bytes(&name);
                // A file, or a directory made for `mkdir` that never got its name.
                let gone = rfs::unlinkat(dir, name, AtFlags::empty()).is_ok()
                    || self.remove_dir(dir, name).is_ok();
                removed += u64::from(gone);
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_work_file_is_made_anew_and_never_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"untouched").unwrap();
        let work = dir.path().join(".work.tmp");
        std::os::unix::fs::symlink(&victim, &work).unwrap();
        let mut f = super::create_work_file(&work, 0o600).unwrap();
        std::io::Write::write_all(&mut f, b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        assert!(std::fs::symlink_metadata(&work).unwrap().is_file());
        assert_eq!(std::fs::read(&work).unwrap(), b"new");
    }
}
