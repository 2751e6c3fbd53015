//! The one place where an error becomes an errno for the kernel.

use fuser::Errno;

use crate::file::FileError;
use crate::namespace::{NameError, NamespaceError};
use crate::volume::VolumeError;

/// What a filesystem operation failed with.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(transparent)]
    Sys(#[from] rustix::io::Errno),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error("unknown inode or handle")]
    Stale,
    #[error("operation not supported")]
    NotSupported,
    #[error("not implemented")]
    NotImplemented,
    #[error("invalid argument")]
    Invalid,
    #[error("file not open for writing")]
    NotWritable,
    #[error("permission denied")]
    PermissionDenied,
}

/// Whether `err` is worth a warning: damage, the KMS or the audit log (EIO, EACCES), not
/// an everyday failure like ENOENT or EEXIST.
pub fn is_serious(err: &FsError) -> bool {
    matches!(errno(err), Errno::EIO | Errno::EACCES)
}

/// The errno the kernel gets for `err`.
pub fn errno(err: &FsError) -> Errno {
    match err {
        FsError::Sys(e) => Errno::from_i32(e.raw_os_error()),
        FsError::Io(e) => io_errno(e),
        FsError::Volume(v) => volume_errno(v),
        FsError::Namespace(n) => namespace_errno(n),
        FsError::Stale => Errno::ESTALE,
        FsError::NotSupported => Errno::EOPNOTSUPP,
        FsError::NotImplemented => Errno::ENOSYS,
        FsError::Invalid => Errno::EINVAL,
        FsError::NotWritable => Errno::EBADF,
        FsError::PermissionDenied => Errno::EACCES,
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    e.raw_os_error().map(Errno::from_i32).unwrap_or(Errno::EIO)
}

fn namespace_errno(n: &NamespaceError) -> Errno {
    match n {
        NamespaceError::Io(e) => io_errno(e),
        NamespaceError::Name(NameError::TooLong) => Errno::ENAMETOOLONG,
        // kmsfs's own files do not exist in the plaintext view.
        NamespaceError::Name(NameError::Reserved) | NamespaceError::Internal(_) => Errno::ENOENT,
        NamespaceError::NotEmpty => Errno::ENOTEMPTY,
        NamespaceError::Exists => Errno::EEXIST,
        NamespaceError::TooSmall => Errno::ERANGE,
        NamespaceError::TooManyLinks => Errno::EMLINK,
        NamespaceError::At { source, .. } => namespace_errno(source),
        NamespaceError::DotDot(_) | NamespaceError::NotInside { .. } => Errno::EINVAL,
        // Something that does not authenticate or is out of place: damage, never data.
        NamespaceError::Name(NameError::Undecryptable)
        | NamespaceError::DirRecord(_)
        | NamespaceError::Unbound
        | NamespaceError::Header(_) => Errno::EIO,
    }
}

fn volume_errno(v: &VolumeError) -> Errno {
    if v.is_access_denied() {
        // The caller is not allowed the key: permission, not a broken disk.
        return Errno::EACCES;
    }
    if v.kms().is_some() {
        return Errno::EIO;
    }
    if let VolumeError::Namespace(n) = v {
        return namespace_errno(n);
    }
    match v.file() {
        Some(FileError::Io(e)) => io_errno(e),
        Some(FileError::Format(crate::format::FormatError::TooLarge(_))) => Errno::EFBIG,
        // Tampering, damage, a wrong key: never data, always EIO.
        _ => Errno::EIO,
    }
}
