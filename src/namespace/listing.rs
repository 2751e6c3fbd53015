//! Listing a directory of the ciphertext tree with plaintext names. Needs no KMS call
//! beyond the names key. An entry whose name does not decrypt (tampered, or dropped in by
//! someone else) is listed with its error, so each caller decides: the mount leaves it out
//! with a log line, fsck reports it.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{self as rfs, Mode, OFlags};

use super::records::read_long_name_file;
use super::{Dir, NameError, Namespace, NamespaceError};

/// One entry of a listing.
pub struct Listed {
    /// The name in the ciphertext directory.
    pub on_disk: OsString,
    /// Its plaintext name, or why it has none.
    pub name: Result<OsString, NamespaceError>,
    /// The inode number in the ciphertext directory.
    pub backing_ino: u64,
    pub kind: rfs::FileType,
}

impl Namespace {
    /// Every entry of `dir` except kmsfs's own files, in the order the directory gives
    /// them; `.` and `..` are listed as themselves.
    pub fn list(&self, dir: Dir<'_>) -> Result<Vec<Listed>, NamespaceError> {
        let fd = super::open_listing(dir.fd)?;
        let mut out = Vec::new();
        for entry in rfs::Dir::read_from(&fd)? {
            let entry = entry?;
            let on_disk = OsStr::from_bytes(entry.file_name().to_bytes());
            let name = if on_disk == "." || on_disk == ".." {
                Ok(on_disk.to_owned())
            } else {
                match self.plain_name(dir, on_disk) {
                    Ok(Some(n)) => Ok(n),
                    Ok(None) => continue,
                    Err(e) => Err(e),
                }
            };
            out.push(Listed {
                on_disk: on_disk.to_owned(),
                name,
                backing_ino: entry.ino(),
                kind: known_type(dir.fd, on_disk, entry.file_type()),
            });
        }
        Ok(out)
    }

    /// The plaintext name of the entry `on_disk` of `dir`, or `None` for kmsfs's own files.
    pub fn plain_name(
        &self,
        dir: Dir<'_>,
        on_disk: &OsStr,
    ) -> Result<Option<OsString>, NamespaceError> {
        if self.names.is_internal(on_disk, dir.names.at_root()) {
            return Ok(None);
        }
        let long_name = if self.names.needs_long_name_file(on_disk) {
            let read = read_long_name_file(dir.fd, on_disk);
            Some(read.map_err(|_| NameError::Undecryptable)?)
        } else {
            None
        };
        Ok(Some(self.names.decrypt(
            dir.names,
            on_disk,
            long_name.as_deref(),
        )?))
    }
}

/// A regular file of a volume's content, found without the names key.
pub struct ContentFile {
    /// The directory holding it (`O_PATH`).
    pub dir: std::sync::Arc<std::os::fd::OwnedFd>,
    pub on_disk: OsString,
    /// Its path in the ciphertext directory, for reports.
    pub path: std::path::PathBuf,
}

impl ContentFile {
    /// Opens the file for reading, or for reading and writing; never through a symlink,
    /// never a FIFO or device put in its place since the listing.
    pub fn open(&self, write: bool) -> std::io::Result<std::fs::File> {
        super::records::open_regular(self.dir.as_fd(), &self.on_disk, write)
    }
}

/// Every regular file of the volume at `cipherdir` that is not kmsfs's own, sorted by
/// path: what rewrap and rekey work through. Whether directories hold `records` comes
/// from the configuration; no names key is needed.
pub fn content_files(
    cipherdir: &std::path::Path,
    records: bool,
) -> Result<Vec<ContentFile>, NamespaceError> {
    use std::sync::Arc;
    let mut out = Vec::new();
    let mut stack = vec![(
        Arc::new(super::open_root(cipherdir)?),
        cipherdir.to_path_buf(),
    )];
    while let Some((dir, path)) = stack.pop() {
        let at_root = path == cipherdir;
        let listing = super::open_listing(dir.as_fd())?;
        for entry in rfs::Dir::read_from(&listing)? {
            let entry = entry?;
            let on_disk = OsStr::from_bytes(entry.file_name().to_bytes());
            if on_disk == "."
                || on_disk == ".."
                || super::names::is_internal(on_disk, at_root, records)
            {
                continue;
            }
            match known_type(dir.as_fd(), on_disk, entry.file_type()) {
                rfs::FileType::Directory => {
                    let sub = rfs::openat(
                        &*dir,
                        on_disk,
                        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    stack.push((Arc::new(sub), path.join(on_disk)));
                }
                rfs::FileType::RegularFile => out.push(ContentFile {
                    dir: dir.clone(),
                    on_disk: on_disk.to_owned(),
                    path: path.join(on_disk),
                }),
                _ => {}
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The type of entry `on_disk` of `dir`, asking the filesystem where the listing did not
/// say (some filesystems leave `d_type` unknown).
fn known_type(dir: BorrowedFd<'_>, on_disk: &OsStr, listed: rfs::FileType) -> rfs::FileType {
    if listed != rfs::FileType::Unknown {
        return listed;
    }
    rfs::statat(dir, on_disk, rfs::AtFlags::SYMLINK_NOFOLLOW)
        .map(|st| rfs::FileType::from_raw_mode(st.st_mode))
        .unwrap_or(rfs::FileType::Unknown)
}
