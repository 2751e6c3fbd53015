//! The small files that keep names: each directory's record (`kmsfs.dirid`, its id) and
//! each long name's long-name file (`kmsfs.long.HASH.name`, its full encoded name). Read
//! and written through directory descriptors, never through a symlink, and read with a
//! size bound, so a planted link, FIFO or huge file cannot hang or exhaust a reader.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};

use super::names::{long_name_file_of, new_dir_id, CipherName};
use crate::format::names::{decode_dir_id, encode_dir_id, DIR_ID_NAME};

/// Longest long-name file read (an encoded name of at most 255 bytes, with room to spare).
const MAX_LONG_NAME_FILE: u64 = 4096;
/// Longest directory record read (the record is 26 bytes).
const MAX_DIR_RECORD: u64 = 64;

/// Reads at most `max` bytes of the regular file `name` in `dir`.
pub fn read_small(dir: BorrowedFd<'_>, name: &OsStr, max: u64) -> std::io::Result<Vec<u8>> {
    // NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
    let fd = rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK,
        Mode::empty(),
    )?;
    if rfs::FileType::from_raw_mode(rfs::fstat(&fd)?.st_mode) != rfs::FileType::RegularFile {
        return Err(std::io::Error::other(format!(
            "{name:?} is not a regular file"
        )));
    }
    let mut out = Vec::new();
    std::fs::File::from(fd).take(max).read_to_end(&mut out)?;
    Ok(out)
}

/// Creates the file `name` in `dir` (0444, must not exist) holding `bytes`, and starts
/// writing it to disk ([`super::start_writeback`]), so that a name made after it never
/// reaches the disk before it does.
pub fn write_new(dir: BorrowedFd<'_>, name: &OsStr, bytes: &[u8]) -> std::io::Result<()> {
    let fd = rfs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o444),
    )?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    super::start_writeback(file.as_fd());
    Ok(())
}

/// The bytes of directory `dir`'s record, if it has one that can be read.
pub fn read_dir_record_bytes(dir: BorrowedFd<'_>) -> Option<Vec<u8>> {
    read_small(dir, OsStr::new(DIR_ID_NAME), MAX_DIR_RECORD).ok()
}

/// The id in directory `dir`'s record, or why there is none.
pub fn read_dir_record(dir: BorrowedFd<'_>) -> std::io::Result<[u8; 16]> {
    let bytes = read_small(dir, OsStr::new(DIR_ID_NAME), MAX_DIR_RECORD)?;
    decode_dir_id(&bytes).map_err(std::io::Error::other)
}

/// Gives the new directory `dir` its record with a fresh id.
pub fn write_dir_record(dir: BorrowedFd<'_>) -> std::io::Result<()> {
    let id = new_dir_id().map_err(|e| std::io::Error::other(e.to_string()))?;
    write_new(dir, OsStr::new(DIR_ID_NAME), &encode_dir_id(&id))
}

/// Writes a long name's long-name file in `parent` (replacing a stale one); nothing for a
/// short name.
pub fn write_long_name_file(parent: BorrowedFd<'_>, c: &CipherName) -> std::io::Result<()> {
    if let (Some(full), Some(file)) = (&c.long, c.long_name_file()) {
        let _ = rfs::unlinkat(parent, &file, AtFlags::empty());
        write_new(parent, &file, full.as_bytes())?;
    }
    Ok(())
}

/// Removes a long name's long-name file, if it has one; a missing one is not an error.
pub fn remove_long_name_file(parent: BorrowedFd<'_>, c: &CipherName) {
    if let Some(file) = c.long_name_file() {
        let _ = rfs::unlinkat(parent, &file, AtFlags::empty());
    }
}

/// The contents of the long-name file of the stand-in `on_disk`.
pub fn read_long_name_file(parent: BorrowedFd<'_>, on_disk: &OsStr) -> std::io::Result<Vec<u8>> {
    read_small(parent, &long_name_file_of(on_disk), MAX_LONG_NAME_FILE)
}
