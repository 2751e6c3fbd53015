//! Ciphertext files: one file's header, key slot and blocks, read and written at any
//! plaintext offset. Built from `format` (layout) and `crypto` (sealing); no FUSE types and
//! no KMS, so the mount, `fsck` and the offline tools share it. The caller brings the data
//! key (unwrapped through the KMS) and the open file.

mod buffers;
mod codec;
mod direct;
mod encrypted;
mod length;
mod ordered;
mod read;
mod sealer;
mod slots;
mod write;

pub use buffers::BufferPool;
pub use codec::{decrypt_bytes, encrypt_bytes, encrypt_bytes_with_nonces};
pub use direct::on_local_disk;
pub use encrypted::{read_header, EncryptedFile};

use crate::crypto::{CryptoError, FileCipher};
use crate::format::{BucketId, FileId, FormatError, Header};
use crate::secret::DataKey;

/// Why a ciphertext file cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("the data key does not belong to this file, or its header was edited (key commitment mismatch)")]
    WrongKey,
    #[error("block {block_no} failed authentication (tampered, corrupted or out of place)")]
    BlockAuth { block_no: u64 },
    /// Not bound to the name it was found under (`docs/format.md`, "Names bound to files").
    #[error("the file was not written under this name: it was moved, swapped or copied over in the ciphertext directory")]
    NameBinding,
    /// A header naming a KMS key the volume does not use.
    #[error("the header names KMS key {0}, which is not this volume's key nor one it was rewrapped from or to: the file was put in from elsewhere")]
    ForeignKey(String),
    #[error("the system random number generator failed")]
    Random,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl FileError {
    /// A stable snake_case name, used by `--json` output and the test vectors.
    pub fn kind(&self) -> String {
        match self {
            Self::Format(e) => e.kind().to_owned(),
            Self::WrongKey => "wrong_key".to_owned(),
            Self::BlockAuth { block_no } => format!("block_auth{{{block_no}}}"),
            Self::NameBinding => "name_binding".to_owned(),
            Self::ForeignKey(_) => "foreign_key".to_owned(),
            Self::Random => "random".to_owned(),
            Self::Io(_) => "io".to_owned(),
        }
    }

    /// Whether the file's bytes are damaged or not ours (as opposed to an IO failure).
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            Self::Format(_)
                | Self::WrongKey
                | Self::BlockAuth { .. }
                | Self::NameBinding
                | Self::ForeignKey(_)
        )
    }
}

fn block_error(e: CryptoError, block_no: u64) -> FileError {
    match e {
        CryptoError::AuthFailed | CryptoError::BadLength { .. } => {
            FileError::BlockAuth { block_no }
        }
        CryptoError::WrongKey => FileError::WrongKey,
        CryptoError::Random => FileError::Random,
    }
}

/// Where a file's data key lives: the KMS key it is wrapped under, and the wrapped bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySlot {
    pub key_id: String,
    pub wrapped_key: Vec<u8>,
}

/// A new header of format `version` for a file, committed to its data key; `bound` for a
/// volume whose names are bound to files (the header region ends with a binding area).
pub fn new_header(
    cipher: &FileCipher,
    shape: (u16, bool),
    header_len: u32,
    slot: KeySlot,
) -> Result<Header, FormatError> {
    header_with(cipher, shape, header_len, slot, None)
}

/// [`new_header`] of a file whose data key comes from bucket `bucket` (`docs/format.md`,
/// "Bucket keys"): `slot` holds the wrapped bucket key.
pub fn new_bucket_header(
    cipher: &FileCipher,
    shape: (u16, bool),
    header_len: u32,
    slot: KeySlot,
    bucket: BucketId,
) -> Result<Header, FormatError> {
    header_with(cipher, shape, header_len, slot, Some(bucket))
}

fn header_with(
    cipher: &FileCipher,
    (version, bound): (u16, bool),
    header_len: u32,
    slot: KeySlot,
    bucket_id: Option<BucketId>,
) -> Result<Header, FormatError> {
    let mut flags = if bound {
        crate::format::binding::FLAG_BOUND_NAMES
    } else {
        0
    };
    if bucket_id.is_some() {
        flags |= crate::format::FLAG_BUCKET_KEY;
    }
    let header = Header {
        version,
        flags,
        header_len,
        file_id: cipher.file_id(),
        commitment: cipher.commitment(version, flags, header_len),
        key_id: slot.key_id,
        wrapped_key: slot.wrapped_key,
        bucket_id,
    };
    header.encode()?; // validates sizes now rather than at first write
    Ok(header)
}

/// A fresh random file id.
pub fn new_file_id() -> Result<FileId, FileError> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|_| FileError::Random)?;
    Ok(FileId(id))
}

/// Checks a header against the data key and returns the file's cipher.
pub fn open_header(data_key: &DataKey, header: &Header) -> Result<FileCipher, FileError> {
    let cipher = FileCipher::new(data_key, header.file_id);
    cipher
        .verify_commitment(header)
        .map_err(|_| FileError::WrongKey)?;
    Ok(cipher)
}
