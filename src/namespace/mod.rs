//! The ciphertext directory's namespace: how a plaintext name becomes an on-disk entry and
//! back, and every on-disk step that makes, finds, links, renames and removes an entry:
//! long-name files, directory records, encrypted symlink targets, xattr values bound to
//! their file, and the rollback when a step fails (`docs/format.md`, "Names").
//!
//! The mount (`fs`) and every offline tool (`ops`) go through it; neither writes these
//! steps itself. It works on directory descriptors, never on paths, and never follows a
//! symlink inside the ciphertext directory. No FUSE types and no KMS here: the names key
//! comes in already unwrapped ([`Names::encrypted`]), and a file's content is the
//! `file` module's business (of a file it reads only its header's id, which its xattrs
//! are bound to).

mod attrs;
mod binding;
mod entries;
mod listing;
mod names;
mod paths;
pub mod records;
pub mod repair;
mod temp;
mod unsynced;
mod xattrs;

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use rustix::fs::{self as rfs, Mode, OFlags, Stat};

pub use attrs::{system_time, TimeChange};
pub use binding::Place;
pub use entries::{NewFile, Renamed};
pub use listing::{content_files, ContentFile, Listed};
pub use names::{
    long_name_file_of, new_dir_id, CipherName, DirNames, NameError, Names, CONFIG_NAME,
    MAX_SYMLINK_TARGET,
};
pub use paths::open_root;
pub use temp::{create_work_file, Replacement};
pub use xattrs::XattrReply;

/// Longest plaintext name (as Linux's NAME_MAX).
const NAME_MAX: usize = 255;

/// Why a namespace step failed. `fs/errno.rs` gives each an errno.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Name(#[from] NameError),
    /// A directory whose record is missing or damaged: its entries cannot be named.
    #[error(
        "its {} record is missing or damaged",
        crate::format::names::DIR_ID_NAME
    )]
    DirRecord(#[source] std::io::Error),
    #[error("directory not empty")]
    NotEmpty,
    /// A regular file not bound to the name it is found under.
    #[error("the file was not written under this name: it was moved, swapped or copied over in the ciphertext directory")]
    Unbound,
    /// A file bound to as many names as it can hold.
    #[error("the file has as many links as kmsfs can bind to it")]
    TooManyLinks,
    #[error("the name is taken")]
    Exists,
    #[error("the value does not fit the buffer")]
    TooSmall,
    /// A file whose header cannot be read (for what its xattrs are bound to).
    #[error("its header cannot be read")]
    Header(#[source] crate::file::FileError),
    #[error("{}: use a path without `..` inside the volume", .0.display())]
    DotDot(PathBuf),
    #[error("{} is not inside the ciphertext directory {}", path.display(), cipherdir.display())]
    NotInside { path: PathBuf, cipherdir: PathBuf },
    #[error("{0:?} is one of kmsfs's own files")]
    Internal(OsString),
    /// Where on a path a step failed.
    #[error("{}", path.display())]
    At {
        path: PathBuf,
        #[source]
        source: Box<NamespaceError>,
    },
}

impl From<rustix::io::Errno> for NamespaceError {
    fn from(e: rustix::io::Errno) -> Self {
        Self::Io(e.into())
    }
}

impl NamespaceError {
    /// Whether the step failed because the name is taken.
    pub fn already_exists(&self) -> bool {
        match self {
            Self::Exists => true,
            Self::Io(e) => e.kind() == std::io::ErrorKind::AlreadyExists,
            _ => false,
        }
    }

    /// Whether the step failed because the entry is gone.
    pub fn not_found(&self) -> bool {
        matches!(self, Self::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

/// A directory of the ciphertext tree: a descriptor (`O_PATH` is enough) and its names.
#[derive(Clone, Copy)]
pub struct Dir<'a> {
    pub fd: BorrowedFd<'a>,
    pub names: &'a DirNames,
}

/// Who a new entry belongs to when it is not the process making it (a root daemon
/// serving a user). A directory with set-group-ID gives the entry its own group instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// The flags for an `O_PATH` descriptor of an entry itself (a symlink, not its target).
pub fn path_flags() -> OFlags {
    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Makes the directory open at `dir` (`O_PATH` will do), with the entries made in it, last
/// through a power cut: `fsync` of the directory itself.
pub fn sync_dir(dir: BorrowedFd<'_>) -> Result<(), NamespaceError> {
    rfs::fsync(open_listing(dir)?)?;
    Ok(())
}

/// The directory at `dir` (`O_PATH` will do) opened for reading its entries.
fn open_listing(dir: BorrowedFd<'_>) -> Result<OwnedFd, NamespaceError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    Ok(rfs::openat(dir, ".", flags, Mode::empty())?)
}

/// `/proc/self/fd/N`: names the inode of `fd` itself, for the calls that take no
/// descriptor (xattrs, `chmod` of an `O_PATH` descriptor, reopening it).
pub fn proc_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// A volume's namespace: its names ciphers, and the steps on disk.
pub struct Namespace {
    names: Names,
    /// New files whose header may not be on disk yet (`unsynced.rs`).
    unsynced: unsynced::Unsynced,
    /// One change of a file's tags at a time (`binding.rs`).
    binding_lock: std::sync::Mutex<()>,
    /// Tags of names files left in renames, by inode, cleared at their next sync.
    stale_tags: std::sync::Mutex<std::collections::HashMap<u64, Vec<crate::format::binding::Tag>>>,
}

impl Namespace {
    pub fn new(names: Names) -> Self {
        Self {
            names,
            unsynced: Default::default(),
            binding_lock: Default::default(),
            stale_tags: Default::default(),
        }
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    pub fn is_encrypted(&self) -> bool {
        self.names.is_encrypted()
    }

    /// The names of the directory open at `fd` (from its record, with encrypted names);
    /// `at_root` for the volume's top directory.
    pub fn dir_names(&self, fd: BorrowedFd<'_>, at_root: bool) -> Result<DirNames, NamespaceError> {
        if !self.names.has_records() {
            return Ok(self.names.for_dir(None, at_root));
        }
        let id = records::read_dir_record(fd).map_err(NamespaceError::DirRecord)?;
        Ok(self.names.for_dir(Some(id), at_root))
    }

    /// Where plaintext `name` lives in `dir`. Names kmsfs keeps for itself are refused
    /// as if absent.
    pub fn locate(&self, dir: Dir<'_>, name: &OsStr) -> Result<CipherName, NamespaceError> {
        if name.len() > NAME_MAX {
            return Err(NameError::TooLong.into());
        }
        // With plaintext names, kmsfs's own files share the namespace and stay hidden;
        // encrypted names can never collide with them.
        if !self.names.is_encrypted() && self.names.is_internal(name, dir.names.at_root()) {
            return Err(NameError::Reserved.into());
        }
        Ok(self.names.encrypt(dir.names, name)?)
    }

    /// An `O_PATH` descriptor of the entry named `on_disk` in the ciphertext directory
    /// open at `dir`, and its `stat`.
    pub fn open_entry(
        &self,
        dir: BorrowedFd<'_>,
        on_disk: &OsStr,
    ) -> Result<(OwnedFd, Stat), NamespaceError> {
        let fd = rfs::openat(dir, on_disk, path_flags(), Mode::empty())?;
        let st = rfs::fstat(&fd)?;
        Ok((fd, st))
    }

    /// Looks up plaintext `name` in `dir`: its descriptor and `stat`.
    pub fn lookup(&self, dir: Dir<'_>, name: &OsStr) -> Result<(OwnedFd, Stat), NamespaceError> {
        let c = self.locate(dir, name)?;
        self.open_entry(dir.fd, &c.on_disk)
    }

    /// Opens the regular file at `entry` (an `O_PATH` descriptor) for IO: read-write, or
    /// read-only where writing is not allowed (permissions, a read-only filesystem).
    pub fn reopen(&self, entry: BorrowedFd<'_>) -> Result<std::fs::File, NamespaceError> {
        use std::io::ErrorKind::{PermissionDenied, ReadOnlyFilesystem};
        let path = proc_path(entry);
        let open = |access| {
            rfs::openat(
                rfs::CWD,
                path.as_str(),
                access | OFlags::CLOEXEC,
                Mode::empty(),
            )
        };
        let fd = match open(OFlags::RDWR) {
            Ok(fd) => fd,
            Err(e)
                if matches!(
                    std::io::Error::from(e).kind(),
                    PermissionDenied | ReadOnlyFilesystem
                ) =>
            {
                open(OFlags::RDONLY)?
            }
            Err(e) => return Err(e.into()),
        };
        Ok(std::fs::File::from(fd))
    }

    /// The plaintext target of the symlink open at `fd` (an `O_PATH` descriptor).
    pub fn read_symlink(&self, fd: BorrowedFd<'_>) -> Result<Vec<u8>, NamespaceError> {
        let stored = rfs::readlinkat(fd, "", Vec::new())?.into_bytes();
        Ok(self.names.open_symlink(&stored)?)
    }
}

#[cfg(test)]
mod tests;
