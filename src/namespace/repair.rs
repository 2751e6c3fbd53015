//! Mending what a crash can leave in one directory of the ciphertext tree, for `kmsfs fsck
//! --repair` (`docs/posix.md`, "What survives a crash"): kmsfs's own temporary files, a
//! long-name file whose entry is gone, a file a create left empty, and a directory record
//! torn before it was whole. Each step looks again at what it removes or replaces just
//! before it does, and leaves alone anything that could still be read: a directory with a
//! torn record keeps it while it holds entries, whose names only the lost id can read.
//!
//! Offline only, like [`Namespace::sweep_temp_files`]: nothing here tells another
//! process's half-made entry from a crashed one's.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};

use super::names::{is_internal, long_name_file_of};
use super::records::{
    read_dir_record_bytes, record_name, sync_dir_record, write_dir_record, write_new,
};
use super::{open_listing, Namespace, NamespaceError};
use crate::format::names::{
    decode_dir_id, encode_dir_id, DIR_ID_NAME, LONG_NAME_PREFIX, LONG_NAME_SUFFIX,
};

/// What [`Namespace::renew_dir_record`] found, and did.
#[derive(Debug)]
pub enum Renewal {
    /// The record reads (or names are not encrypted): nothing to do.
    Intact,
    /// The record was missing or did not read, and the directory held nothing but
    /// kmsfs's own files: it has a new record.
    Renewed,
    /// The record file was missing or did not read, and was written again from the
    /// directory's record name: the directory keeps its id and its entries.
    Restored,
    /// The record is missing or does not read, and the directory holds this many entries,
    /// whose names cannot be read without it: left as it is.
    HoldsEntries(u64),
    /// `kmsfs.dirid` is there but is no regular file, or cannot be read: not a crash's
    /// doing; left as it is.
    Unreadable(std::io::Error),
}

impl Namespace {
    /// [`Namespace::sweep_temp_files`], saying which names it removed.
    pub fn sweep_temp_files_named(
        &self,
        dir: BorrowedFd<'_>,
    ) -> Result<Vec<OsString>, NamespaceError> {
        let ours = |name: &OsStr| {
            let b = name.as_bytes();
            b.starts_with(b".kmsfs-") && b.ends_with(b".tmp")
        };
        let before = names_in(dir, ours)?;
        if before.is_empty() {
            return Ok(before);
        }
        self.sweep_temp_files(dir)?;
        let after = names_in(dir, ours)?;
        Ok(before.into_iter().filter(|n| !after.contains(n)).collect())
    }

    /// Removes the long-name files (`kmsfs.long.HASH.name`) of `dir` whose entry
    /// (`kmsfs.long.HASH`) does not exist: what an unlink or rename cut between removing
    /// the entry and its long-name file leaves, or a create cut before it made the entry.
    /// Returns their names. Nothing with plaintext names, where such names are the user's.
    pub fn remove_orphan_long_name_files(
        &self,
        dir: BorrowedFd<'_>,
    ) -> Result<Vec<OsString>, NamespaceError> {
        if !self.is_encrypted() {
            return Ok(Vec::new());
        }
        let long_name_files = names_in(dir, |name| {
            let b = name.as_bytes();
            b.starts_with(LONG_NAME_PREFIX.as_bytes()) && b.ends_with(LONG_NAME_SUFFIX.as_bytes())
        })?;
        let mut removed = Vec::new();
        for file in long_name_files {
            let entry = &file.as_bytes()[..file.len() - LONG_NAME_SUFFIX.len()];
            let orphan = is_missing(dir, OsStr::from_bytes(entry))? && is_regular(dir, &file)?;
            if orphan {
                rfs::unlinkat(dir, &file, AtFlags::empty())?;
                removed.push(file);
            }
        }
        Ok(removed)
    }

    /// Removes the regular file `on_disk` of `dir`, with its long-name file, if it holds no
    /// data: empty, nothing but zero bytes, or as `shape` says no data can be read from.
    /// A create cut before its header (by a kmsfs that made files under their names, or on
    /// a filesystem without `O_TMPFILE`) leaves it empty; a power cut can leave a new file
    /// whose data never reached the disk reading as zeros, or whose header did not
    /// (`docs/posix.md`). Returns why it did, if it did; a file with data that could be read
    /// is never removed.
    pub fn remove_empty_file(
        &self,
        dir: BorrowedFd<'_>,
        on_disk: &OsStr,
        shape: &FileShape<'_>,
    ) -> Result<Option<NoData>, NamespaceError> {
        let st = rfs::statat(dir, on_disk, AtFlags::SYMLINK_NOFOLLOW)?;
        if rfs::FileType::from_raw_mode(st.st_mode) != rfs::FileType::RegularFile {
            return Ok(None);
        }
        let size = st.st_size as u64;
        let why = if size == 0 {
            NoData::Empty
        } else if zeros(dir, on_disk, None)? {
            NoData::Zeros
        } else if size < shape.empty_len && starts_with_magic(dir, on_disk)? {
            NoData::NoBlock
        } else if (shape.valid_size)(size) && zeros(dir, on_disk, Some(shape.header_len))? {
            NoData::NoHeader
        } else {
            return Ok(None);
        };
        rfs::unlinkat(dir, on_disk, AtFlags::empty())?;
        if self.names.needs_long_name_file(on_disk) {
            let file = long_name_file_of(on_disk);
            match rfs::unlinkat(dir, &file, AtFlags::empty()) {
                Err(e) if !is_not_found(e) => return Err(e.into()),
                _ => {}
            }
        }
        Ok(Some(why))
    }

    /// Gives directory `dir` (`at_root` for the volume's top) a new record if its record
    /// is missing or does not read and it holds nothing but kmsfs's own files: a `mkdir`
    /// of a kmsfs that wrote the record after naming the directory, cut between the two.
    /// A directory holding entries keeps its torn record, so that a backup of the record
    /// can still bring their names back.
    ///
    /// Order on disk: the torn record is removed, the new one written, then it and the
    /// directory are synced, so that entries made afterwards never outlive their record
    /// through a power cut. A crash in between leaves the record missing, which this
    /// mends the same way.
    pub fn renew_dir_record(
        &self,
        dir: BorrowedFd<'_>,
        at_root: bool,
    ) -> Result<Renewal, NamespaceError> {
        if !self.names().has_records() {
            return Ok(Renewal::Intact);
        }
        // The record file itself, not `read_dir_record`, which falls back to the name.
        let from_file = read_dir_record_bytes(dir)
            .ok_or_else(|| std::io::Error::other("missing or unreadable"))
            .and_then(|b| decode_dir_id(&b).map_err(std::io::Error::other));
        let why = match from_file {
            Ok(_) => return Ok(Renewal::Intact),
            Err(e) => e,
        };
        // A power cut can leave the record file's data unwritten while the record name,
        // journaled with the directory's entries, is there: write the file again from it.
        if let Some(id) = record_name(dir)? {
            let _ = rfs::unlinkat(dir, DIR_ID_NAME, AtFlags::empty());
            write_new(dir, OsStr::new(DIR_ID_NAME), &encode_dir_id(&id))?;
            sync_dir_record(dir)?;
            return Ok(Renewal::Restored);
        }
        let present = match rfs::statat(dir, DIR_ID_NAME, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::RegularFile => {
                // Read but not a record (empty, cut short): torn. Not read at all: leave it.
                if read_dir_record_bytes(dir).is_none() {
                    return Ok(Renewal::Unreadable(why));
                }
                true
            }
            Ok(_) => {
                let e = std::io::Error::other(format!("{DIR_ID_NAME} is not a regular file"));
                return Ok(Renewal::Unreadable(e));
            }
            Err(e) if is_not_found(e) => false,
            Err(e) => return Ok(Renewal::Unreadable(e.into())),
        };
        let entries = names_in(dir, |name| !is_internal(name, at_root, true))?.len() as u64;
        if entries > 0 {
            return Ok(Renewal::HoldsEntries(entries));
        }
        if present {
            rfs::unlinkat(dir, DIR_ID_NAME, AtFlags::empty())?;
        }
        write_dir_record(dir)?;
        sync_dir_record(dir)?;
        Ok(Renewal::Renewed)
    }
}

/// Whether the regular file `on_disk` of `dir` holds nothing but zero bytes.
/// The files of a volume, for [`Namespace::remove_empty_file`]: the ciphertext size of an
/// empty file (no file is shorter), the header region's length, and which sizes are
/// possible.
pub struct FileShape<'a> {
    pub empty_len: u64,
    pub header_len: u64,
    pub valid_size: &'a dyn Fn(u64) -> bool,
}

/// Why a file holds no data that can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoData {
    /// 0 bytes.
    Empty,
    /// Nothing but zeros.
    Zeros,
    /// A header and less than an empty file's first block.
    NoBlock,
    /// A possible size, with the header region all zeros: no key opens its blocks.
    NoHeader,
}

/// Whether the first `limit` bytes (all, with `None`) of file `on_disk` are zeros.
fn zeros(dir: BorrowedFd<'_>, on_disk: &OsStr, limit: Option<u64>) -> Result<bool, NamespaceError> {
    use std::io::Read;
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = std::fs::File::from(rfs::openat(dir, on_disk, flags, Mode::empty())?);
    let mut file = file.take(limit.unwrap_or(u64::MAX));
    let mut buf = vec![0u8; 1 << 14];
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(true),
            n if buf[..n].iter().any(|&b| b != 0) => return Ok(false),
            _ => {}
        }
    }
}

/// Whether file `on_disk` starts with the magic bytes of a kmsfs header.
fn starts_with_magic(dir: BorrowedFd<'_>, on_disk: &OsStr) -> Result<bool, NamespaceError> {
    use std::io::Read;
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = std::fs::File::from(rfs::openat(dir, on_disk, flags, Mode::empty())?);
    let mut head = Vec::new();
    file.take(crate::format::MAGIC.len() as u64)
        .read_to_end(&mut head)?;
    Ok(head == crate::format::MAGIC)
}

/// The names in `dir` (but `.` and `..`) that `keep` keeps.
fn names_in(
    dir: BorrowedFd<'_>,
    keep: impl Fn(&OsStr) -> bool,
) -> Result<Vec<OsString>, NamespaceError> {
    let listing = open_listing(dir)?;
    let mut out = Vec::new();
    for entry in rfs::Dir::read_from(listing.as_fd())? {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name != "." && name != ".." && keep(name) {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}

fn is_not_found(e: rustix::io::Errno) -> bool {
    std::io::Error::from(e).kind() == std::io::ErrorKind::NotFound
}

/// Whether `dir` has no entry `name` (of any type).
fn is_missing(dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool, NamespaceError> {
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => Ok(false),
        Err(e) if is_not_found(e) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// Whether the entry `name` of `dir` is a regular file (not through a symlink).
fn is_regular(dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool, NamespaceError> {
    let st = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::RegularFile)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::records::read_dir_record;
    use crate::namespace::{Dir, Names};
    use crate::secret::DataKey;
    use std::os::fd::AsFd;

    fn encrypted() -> Namespace {
        Namespace::new(Names::encrypted(DataKey::from_slice(&[7; 32]).unwrap()))
    }

    fn dir_with_record(path: &std::path::Path) -> std::fs::File {
        std::fs::create_dir_all(path).unwrap();
        let fd = std::fs::File::open(path).unwrap();
        write_dir_record(fd.as_fd()).unwrap();
        fd
    }

    #[test]
    fn a_torn_record_is_renewed_only_in_a_directory_without_entries() {
        let ns = encrypted();
        let tmp = tempfile::tempdir().unwrap();
        let empty = dir_with_record(&tmp.path().join("empty"));
        let full = dir_with_record(&tmp.path().join("full"));
        let names = ns.dir_names(full.as_fd(), false).unwrap();
        let dir = Dir {
            fd: full.as_fd(),
            names: &names,
        };
        let mut new = ns.create_file(dir, OsStr::new("kept"), 0o600).unwrap();
        let _ = new.take_file();
        new.finish(&ns, None).unwrap();
        for d in ["empty", "full"] {
            let record = tmp.path().join(d).join(DIR_ID_NAME);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&record)
                .unwrap()
                .set_len(0)
                .unwrap();
        }
        std::fs::write(tmp.path().join("empty/.kmsfs-tmp-00.tmp"), b"").unwrap();
        // The record name (journaled with the entries) brings the full one's id back.
        assert!(matches!(
            ns.renew_dir_record(full.as_fd(), false).unwrap(),
            Renewal::Restored
        ));
        assert_eq!(
            read_dir_record_bytes(full.as_fd()).unwrap().len(),
            crate::format::names::DIR_ID_RECORD_LEN
        );
        assert!(ns.dir_names(full.as_fd(), false).unwrap().dir_id() == names.dir_id());
        // Without a record name (a directory made by an earlier kmsfs), only an empty
        // directory gets a new record.
        for d in ["empty", "full"] {
            let fd = if d == "empty" { &empty } else { &full };
            let id = crate::namespace::records::record_name(fd.as_fd())
                .unwrap()
                .unwrap();
            let name = crate::namespace::records::record_name_for(&id);
            std::fs::remove_file(tmp.path().join(d).join(name)).unwrap();
            std::fs::write(tmp.path().join(d).join(DIR_ID_NAME), b"").unwrap();
        }
        assert!(matches!(
            ns.renew_dir_record(empty.as_fd(), false).unwrap(),
            Renewal::Renewed
        ));
        assert!(read_dir_record(empty.as_fd()).is_ok());
        assert!(matches!(
            ns.renew_dir_record(full.as_fd(), false).unwrap(),
            Renewal::HoldsEntries(1)
        ));
        assert_eq!(read_dir_record_bytes(full.as_fd()).unwrap(), b"");
        assert!(matches!(
            ns.renew_dir_record(empty.as_fd(), false).unwrap(),
            Renewal::Intact
        ));
    }

    #[test]
    fn a_record_that_is_not_a_file_is_left_alone() {
        let ns = encrypted();
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join(DIR_ID_NAME)).unwrap();
        let fd = std::fs::File::open(tmp.path()).unwrap();
        assert!(matches!(
            ns.renew_dir_record(fd.as_fd(), false).unwrap(),
            Renewal::Unreadable(_)
        ));
        assert!(tmp.path().join(DIR_ID_NAME).is_dir());
    }

    #[test]
    fn only_orphan_long_name_files_and_empty_files_are_removed() {
        let ns = encrypted();
        let tmp = tempfile::tempdir().unwrap();
        let fd = std::fs::File::open(tmp.path()).unwrap();
        let p = |n: &str| tmp.path().join(n);
        std::fs::write(p("kmsfs.long.kept.name"), b"x").unwrap();
        std::fs::write(p("kmsfs.long.kept"), b"").unwrap();
        std::fs::write(p("kmsfs.long.gone.name"), b"x").unwrap();
        std::fs::write(p("kmsfs.long.dir.name"), b"x").unwrap();
        std::fs::create_dir(p("kmsfs.long.dir")).unwrap();
        let removed = ns.remove_orphan_long_name_files(fd.as_fd()).unwrap();
        assert_eq!(removed, vec![OsString::from("kmsfs.long.gone.name")]);
        assert!(p("kmsfs.long.kept.name").exists() && p("kmsfs.long.dir.name").exists());

        // Version 4's shape with the default header: an empty file is 4124 bytes.
        let layout = crate::format::Layout::new(4, 1024);
        let valid = |n: u64| layout.plain_len(n).is_ok();
        let shape = FileShape {
            empty_len: 4124,
            header_len: 1024,
            valid_size: &valid,
        };
        let remove = |name: &str| ns.remove_empty_file(fd.as_fd(), OsStr::new(name), &shape);
        std::fs::write(p("one-byte"), b"1").unwrap();
        assert_eq!(remove("one-byte").unwrap(), None);
        assert!(p("one-byte").exists());
        assert_eq!(remove("kmsfs.long.kept").unwrap(), Some(NoData::Empty));
        assert!(!p("kmsfs.long.kept").exists() && !p("kmsfs.long.kept.name").exists());
        std::os::unix::fs::symlink("one-byte", p("link")).unwrap();
        assert_eq!(remove("link").unwrap(), None);
        std::fs::write(p("zeros"), [0u8; 9000]).unwrap();
        assert_eq!(remove("zeros").unwrap(), Some(NoData::Zeros));
        // A header without its block; the same bytes from another program stay.
        let mut header = crate::format::MAGIC.to_vec();
        header.resize(4096, 7);
        std::fs::write(p("no-block"), &header).unwrap();
        assert_eq!(remove("no-block").unwrap(), Some(NoData::NoBlock));
        std::fs::write(p("not-ours"), &header[8..]).unwrap();
        assert_eq!(remove("not-ours").unwrap(), None);
        // Blocks without a header: at a possible size only, and only if the whole header
        // region is zeros.
        let mut headless = vec![0u8; 4096 + 4096 + 29];
        headless[4096..].fill(1);
        std::fs::write(p("no-header"), &headless).unwrap();
        assert_eq!(remove("no-header").unwrap(), Some(NoData::NoHeader));
        std::fs::write(p("odd-size"), &headless[..4096 + 4096 + 10]).unwrap();
        assert_eq!(remove("odd-size").unwrap(), None);
        headless[1023] = 1;
        std::fs::write(p("header-byte"), &headless).unwrap();
        assert_eq!(remove("header-byte").unwrap(), None);
    }
}
