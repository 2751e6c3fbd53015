//! The small files that keep names: each directory's record (`kmsfs.dirid`, its id, and
//! the empty `kmsfs.dirid.HEX` whose name holds it too) and each long name's long-name file
//! (`kmsfs.long.HASH.name`, its full encoded name). Read and written through directory
//! descriptors, never through a symlink, and read with a size bound, so a planted link,
//! FIFO or huge file cannot hang or exhaust a reader.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};

use super::names::{long_name_file_of, new_dir_id, CipherName};
use crate::format::names::{decode_dir_id, encode_dir_id, DIR_ID_NAME, DIR_ID_NAME_PREFIX};

/// Longest long-name file read (an encoded name of at most 255 bytes, with room to spare).
const MAX_LONG_NAME_FILE: u64 = 4096;
/// Longest directory record read (the record is 26 bytes).
const MAX_DIR_RECORD: u64 = 64;

/// Opens the regular file `name` of `dir` for reading (or reading and writing), never
/// through a symlink. What is there is looked at before it is opened (`O_PATH`, then the
/// same inode reopened through `/proc`), so a FIFO, device or socket put in a file's place
/// is refused without being opened: it can neither block the caller nor act on the open.
pub fn open_regular(dir: BorrowedFd<'_>, name: &OsStr, write: bool) -> std::io::Result<File> {
    let entry = rfs::openat(dir, name, super::path_flags(), Mode::empty())?;
    let kind = rfs::FileType::from_raw_mode(rfs::fstat(&entry)?.st_mode);
    let what = match kind {
        rfs::FileType::RegularFile => None,
        rfs::FileType::Symlink => Some("a symlink"),
        rfs::FileType::Directory => Some("a directory"),
        _ => Some("a FIFO, socket or device"),
    };
    if let Some(what) = what {
        return Err(std::io::Error::other(format!(
            "{name:?} is {what}, not a regular file"
        )));
    }
    let access = if write { OFlags::RDWR } else { OFlags::RDONLY };
    let path = super::proc_path(entry.as_fd());
    let flags = access | OFlags::CLOEXEC | OFlags::NONBLOCK;
    Ok(File::from(rfs::open(path.as_str(), flags, Mode::empty())?))
}

/// Reads at most `max` bytes of the regular file `name` in `dir`.
pub fn read_small(dir: BorrowedFd<'_>, name: &OsStr, max: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    open_regular(dir, name, false)?
        .take(max)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// Reads the regular file at `path` whole, if it is at most `max` bytes, without following
/// a symlink at its name and without waiting on a FIFO: for kmsfs's own small files at the
/// top of a ciphertext directory (the configuration, rekey's journal), which whoever can
/// write the directory could replace.
pub fn read_small_file(path: &std::path::Path, max: u64) -> std::io::Result<Vec<u8>> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let name = path.file_name().ok_or(std::io::ErrorKind::InvalidInput)?;
    let dir = rfs::open(
        parent,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let bytes = read_small(dir.as_fd(), name, max + 1)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::other(format!("longer than {max} bytes")));
    }
    Ok(bytes)
}

/// Creates the file `name` in `dir` (0444, must not exist) holding `bytes`.
pub fn write_new(dir: BorrowedFd<'_>, name: &OsStr, bytes: &[u8]) -> std::io::Result<()> {
    new_file(dir, name)?.write_all(bytes)
}

fn new_file(dir: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<File> {
    let fd = rfs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o444),
    )?;
    Ok(File::from(fd))
}

/// The bytes of directory `dir`'s record file, if it has one that can be read.
pub fn read_dir_record_bytes(dir: BorrowedFd<'_>) -> Option<Vec<u8>> {
    read_small(dir, OsStr::new(DIR_ID_NAME), MAX_DIR_RECORD).ok()
}

/// The id of directory `dir`: from its record file, or where that is missing or torn (a
/// power cut can leave it empty or zeros), from its record name; or why there is none.
pub fn read_dir_record(dir: BorrowedFd<'_>) -> std::io::Result<[u8; 16]> {
    let from_file = read_small(dir, OsStr::new(DIR_ID_NAME), MAX_DIR_RECORD)
        .and_then(|bytes| decode_dir_id(&bytes).map_err(std::io::Error::other));
    match from_file {
        Ok(id) => Ok(id),
        Err(e) => record_name(dir)?.ok_or(e),
    }
}

/// The id in directory `dir`'s record name (`kmsfs.dirid.` + 32 hex digits), if it has
/// one (directories made before record names existed do not).
pub fn record_name(dir: BorrowedFd<'_>) -> std::io::Result<Option<[u8; 16]>> {
    let listing = super::open_listing(dir).map_err(std::io::Error::other)?;
    for entry in rfs::Dir::read_from(&listing)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        let Some(hex_id) = name.strip_prefix(DIR_ID_NAME_PREFIX.as_bytes()) else {
            continue;
        };
        let mut id = [0u8; 16];
        let lower = hex_id.iter().all(|c| !c.is_ascii_uppercase());
        if lower && hex::decode_to_slice(hex_id, &mut id).is_ok() {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// The record name of a directory with id `id`.
pub fn record_name_for(id: &[u8; 16]) -> OsString {
    format!("{DIR_ID_NAME_PREFIX}{}", hex::encode(id)).into()
}

/// Gives the new directory `dir` its record with a fresh id: the record file, then the
/// record name, which the filesystem's journal keeps in order with the entries made
/// after it (`docs/format.md`, "The per-directory record").
pub fn write_dir_record(dir: BorrowedFd<'_>) -> std::io::Result<()> {
    let id = new_dir_id().map_err(|e| std::io::Error::other(e.to_string()))?;
    write_dir_record_with(dir, &id)
}

/// Writes the record file and record name of `id` in `dir` (neither may exist).
pub fn write_dir_record_with(dir: BorrowedFd<'_>, id: &[u8; 16]) -> std::io::Result<()> {
    write_new(dir, OsStr::new(DIR_ID_NAME), &encode_dir_id(id))?;
    new_file(dir, &record_name_for(id)).map(drop)
}

/// Makes directory `dir`'s record file last through a power cut (`O_PATH` will do): `fsync`
/// of the file and of the directory.
pub fn sync_dir_record(dir: BorrowedFd<'_>) -> std::io::Result<()> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rfs::fsync(rfs::openat(dir, DIR_ID_NAME, flags, Mode::empty())?)?;
    super::sync_dir(dir).map_err(std::io::Error::other)
}

/// Writes a long name's long-name file in `parent` (replacing a stale one); nothing for a
/// short name.
pub fn write_long_name_file(parent: BorrowedFd<'_>, c: &CipherName) -> std::io::Result<()> {
    let (Some(full), Some(file)) = (&c.long, c.long_name_file()) else {
        return Ok(());
    };
    // The entry being replaced (a rename over it) has this name's file already: it stays,
    // never removed even for a moment, or a power cut then could leave that entry
    // without it.
    if read_small(parent, &file, MAX_LONG_NAME_FILE).is_ok_and(|b| b == full.as_bytes()) {
        return Ok(());
    }
    // Written under a temporary name, synced, and renamed over a stale one: a name never
    // stands without its long-name file, even after a power cut. Long names are rare, so
    // the sync costs little.
    let temp = super::temp::temp_name().map_err(std::io::Error::other)?;
    let written = new_file(parent, &temp).and_then(|mut f| {
        f.write_all(full.as_bytes())?;
        f.sync_data()
    });
    let renamed = written.and_then(|()| Ok(rfs::renameat(parent, &temp, parent, &file)?));
    if renamed.is_err() {
        let _ = rfs::unlinkat(parent, &temp, AtFlags::empty());
    }
    renamed
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
