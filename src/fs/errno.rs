//! The one place where an error becomes an errno for the kernel.

use fuser::Errno;

use crate::file::FileError;
use crate::volume::VolumeError;

/// What a filesystem operation failed with.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{0}")]
    Sys(#[from] rustix::io::Errno),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Volume(#[from] VolumeError),
    #[error("no such entry")]
    NotFound,
    #[error("unknown inode or handle")]
    Stale,
    #[error("operation not supported")]
    NotSupported,
    #[error("invalid argument")]
    Invalid,
    #[error("file not open for writing")]
    NotWritable,
    #[error("name too long")]
    NameTooLong,
    #[error("damaged: an entry, record or value does not authenticate")]
    Damaged,
}

/// The errno the kernel gets for `err`.
pub fn errno(err: &FsError) -> Errno {
    match err {
        FsError::Sys(e) => Errno::from_i32(e.raw_os_error()),
        FsError::Io(e) => io_errno(e),
        FsError::Volume(v) => volume_errno(v),
        FsError::NotFound => Errno::ENOENT,
        FsError::Stale => Errno::ESTALE,
        FsError::NotSupported => Errno::EOPNOTSUPP,
        FsError::Invalid => Errno::EINVAL,
        FsError::NotWritable => Errno::EBADF,
        FsError::NameTooLong => Errno::ENAMETOOLONG,
        FsError::Damaged => Errno::EIO,
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    e.raw_os_error().map(Errno::from_i32).unwrap_or(Errno::EIO)
}

fn volume_errno(v: &VolumeError) -> Errno {
    if v.is_access_denied() {
        // The caller is not allowed the key: permission, not a broken disk.
        return Errno::EACCES;
    }
    if v.kms().is_some() {
        return Errno::EIO;
    }
    match v.file() {
        Some(FileError::Io(e)) => io_errno(e),
        Some(FileError::Format(crate::format::FormatError::TooLarge(_))) => Errno::EFBIG,
        // Tampering, damage, a wrong key: never data, always EIO.
        _ => Errno::EIO,
    }
}
