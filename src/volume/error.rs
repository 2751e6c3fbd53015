//! [`VolumeError`]: why a volume operation failed. `fs/errno.rs` gives each an errno; the
//! command line prints it with its causes (`kmsfs::describe`).

use crate::audit::chain::ChainError;
use crate::file::FileError;
use crate::kms::KmsError;
use crate::namespace::NamespaceError;

use super::ConfigError;

/// Why a volume operation failed. Each variant either prints its cause or exposes it as
/// its source, never both, so a printed chain says each thing once.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot use the KMS: {0}")]
    KmsSetup(String),
    #[error("cannot use the built-in local KMS")]
    LocalKms(#[source] crate::kms::engine::StateError),
    #[error("cannot set up the KMS client")]
    KmsClient(#[source] crate::kms::config::ClientConfigError),
    #[error("{path}: KMS")]
    Kms { path: String, source: KmsError },
    #[error("{path}")]
    File { path: String, source: FileError },
    #[error("refusing the key use: the audit log cannot be written (audit fails closed)")]
    Audit(#[from] ChainError),
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error("{}: its kmsfs.conf does not authenticate under the volume's names key: it was edited outside kmsfs. If you changed it yourself, accept it with `kmsfs trust {}`; otherwise restore it from a copy you trust and do not mount the volume", .cipherdir.display(), .cipherdir.display())]
    ConfigNotAuthentic { cipherdir: std::path::PathBuf },
    #[error("{}: the volume's configuration changed since it was first used on this machine ({}): {}. If you made this change, accept it with `kmsfs trust {}`; otherwise someone who can write the ciphertext directory made it: do not mount the volume", .cipherdir.display(), .pins.display(), .changes.join("; "), .cipherdir.display())]
    ConfigChanged {
        cipherdir: std::path::PathBuf,
        pins: std::path::PathBuf,
        changes: Vec<String>,
    },
    /// Said on a thread that may not wait for the KMS ([`super::without_kms`]), before
    /// anything changed: run the request again where it may.
    #[error("this request needs a KMS call, which this thread may not make")]
    NeedsKms,
    #[error("cannot read or write the record of known volumes {}", .path.display())]
    Pins {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl VolumeError {
    /// The KMS error behind this, if any.
    pub fn kms(&self) -> Option<&KmsError> {
        match self {
            Self::Kms { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Whether the KMS refused the caller (access denied, key disabled or pending
    /// deletion): a permission problem rather than an outage or damage.
    pub fn is_access_denied(&self) -> bool {
        matches!(
            self.kms(),
            Some(KmsError::AccessDenied { .. } | KmsError::Disabled(_) | KmsError::InvalidState(_))
        )
    }

    /// Whether this is [`VolumeError::NeedsKms`].
    pub fn needs_kms(&self) -> bool {
        matches!(self, Self::NeedsKms)
    }

    /// The file error behind this, if any.
    pub fn file(&self) -> Option<&FileError> {
        match self {
            Self::File { source, .. } => Some(source),
            _ => None,
        }
    }
}
