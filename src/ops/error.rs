//! [`OpsError`]: why an offline operation stopped (or why one file of it failed).

use std::path::{Path, PathBuf};

use crate::file::FileError;
use crate::namespace::NamespaceError;
use crate::volume::VolumeError;

/// Why an offline operation, or one file of it, failed. Each variant either prints its
/// cause or exposes it as its source, never both.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file's content could not be read or written.
    #[error("{}", path.display())]
    File { path: PathBuf, source: FileError },
    #[error("{path}: block(s) {blocks:?} fail authentication; nothing written (use --force-partial to write the rest with those blocks as zeros)")]
    Damaged { path: String, blocks: Vec<u64> },
    /// The operation cannot start: what is wrong and what to do.
    #[error("{0}")]
    Refused(String),
}

impl OpsError {
    /// Whether this is damage in the volume (a file that does not authenticate), as
    /// opposed to a failure to read or write.
    pub fn is_damage(&self) -> bool {
        match self {
            Self::Damaged { .. } => true,
            Self::Volume(v) => v.file().is_some_and(FileError::is_integrity),
            Self::File { source, .. } => source.is_integrity(),
            _ => false,
        }
    }
}

/// Turns an IO error at `path` into an [`OpsError`].
pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OpsError + '_ {
    move |source| OpsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Turns a file error at `path` into an [`OpsError`].
pub fn file(path: &Path) -> impl FnOnce(FileError) -> OpsError + '_ {
    move |source| OpsError::File {
        path: path.to_path_buf(),
        source,
    }
}
