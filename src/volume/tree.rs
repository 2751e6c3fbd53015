//! The on-disk bookkeeping of names in a ciphertext directory tree: per-directory
//! records and long-name `.name` files, read and written through directory descriptors.
//! Shared by the mount (`fs`) and the offline tools (`ops`).

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::BorrowedFd;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};

use super::{new_dir_id, sidecar_of, CipherName};
use crate::format::names::{decode_dir_id, encode_dir_id, DIR_ID_NAME};

/// Reads at most `max` bytes of the file `name` in `dir`.
pub fn read_small(dir: BorrowedFd<'_>, name: &OsStr, max: u64) -> std::io::Result<Vec<u8>> {
    let fd = rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )?;
    let mut out = Vec::new();
    std::fs::File::from(fd).take(max).read_to_end(&mut out)?;
    Ok(out)
}

/// Creates the file `name` in `dir` (0444, must not exist) holding `bytes`.
pub fn write_new(dir: BorrowedFd<'_>, name: &OsStr, bytes: &[u8]) -> std::io::Result<()> {
    let fd = rfs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o444),
    )?;
    std::fs::File::from(fd).write_all(bytes)
}

/// The id in directory `dir`'s record, or why there is none.
pub fn read_dir_record(dir: BorrowedFd<'_>) -> std::io::Result<[u8; 16]> {
    let bytes = read_small(dir, OsStr::new(DIR_ID_NAME), 64)?;
    decode_dir_id(&bytes).map_err(std::io::Error::other)
}

/// Gives the new directory `dir` its record with a fresh id.
pub fn write_dir_record(dir: BorrowedFd<'_>) -> std::io::Result<()> {
    let id = new_dir_id().map_err(|e| std::io::Error::other(e.to_string()))?;
    write_new(dir, OsStr::new(DIR_ID_NAME), &encode_dir_id(&id))
}

/// Writes a long name's `.name` file in `parent` (replacing a stale one).
pub fn write_sidecar(parent: BorrowedFd<'_>, c: &CipherName) -> std::io::Result<()> {
    if let (Some(full), Some(sidecar)) = (&c.long, c.sidecar()) {
        let _ = rfs::unlinkat(parent, &sidecar, AtFlags::empty());
        write_new(parent, &sidecar, full.as_bytes())?;
    }
    Ok(())
}

pub fn remove_sidecar(parent: BorrowedFd<'_>, c: &CipherName) {
    if let Some(sidecar) = c.sidecar() {
        let _ = rfs::unlinkat(parent, &sidecar, AtFlags::empty());
    }
}

/// The contents of the `.name` file of the long-name stand-in `on_disk`.
pub fn read_sidecar(parent: BorrowedFd<'_>, on_disk: &OsStr) -> std::io::Result<Vec<u8>> {
    read_small(parent, &sidecar_of(on_disk), 4096)
}
