//! Whole ciphertext files: building one from plaintext and reading one back, using
//! `format` for the layout and `crypto` for the sealing. No FUSE types and no KMS: the
//! caller brings the data key (unwrapped through the KMS) and the bytes.
//!
//! The mount's positional reads and writes, `fsck` and the offline `decrypt` command are
//! built on the same checks as [`decrypt_bytes`], in the same order: header syntax, key
//! commitment, length, then each block.

use crate::crypto::{CryptoError, FileCipher};
use crate::format::{FileId, FormatError, Header, Layout, BLOCK_OVERHEAD, BLOCK_PLAIN_LEN};
use crate::secret::DataKey;

/// Why a ciphertext file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("the data key does not belong to this file, or its header was edited (key commitment mismatch)")]
    WrongKey,
    #[error("block {block_no} failed authentication (tampered, corrupted or out of place)")]
    BlockAuth { block_no: u64 },
    #[error("the system random number generator failed")]
    Random,
}

impl FileError {
    /// A stable snake_case name, used by `--json` output and the test vectors.
    pub fn kind(&self) -> String {
        match self {
            Self::Format(e) => e.kind().to_owned(),
            Self::WrongKey => "wrong_key".to_owned(),
            Self::BlockAuth { block_no } => format!("block_auth{{{block_no}}}"),
            Self::Random => "random".to_owned(),
        }
    }
}

/// Where a file's data key lives: the KMS key it is wrapped under, and the wrapped bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySlot {
    pub key_id: String,
    pub wrapped_key: Vec<u8>,
}

/// A new header for a file, committed to its data key.
pub fn new_header(
    cipher: &FileCipher,
    header_len: u32,
    slot: KeySlot,
) -> Result<Header, FormatError> {
    let header = Header {
        header_len,
        file_id: cipher.file_id(),
        commitment: cipher.commitment(header_len),
        key_id: slot.key_id,
        wrapped_key: slot.wrapped_key,
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

/// Encrypts a whole plaintext into a ciphertext file with random nonces.
pub fn encrypt_bytes(
    cipher: &FileCipher,
    header: &Header,
    plain: &[u8],
) -> Result<Vec<u8>, FileError> {
    let mut nonce_err = false;
    let out = encrypt_bytes_with_nonces(cipher, header, plain, &mut || {
        let mut n = [0u8; 12];
        nonce_err |= getrandom::fill(&mut n).is_err();
        n
    })?;
    if nonce_err {
        return Err(FileError::Random);
    }
    Ok(out)
}

/// [`encrypt_bytes`] with caller-chosen nonces. Only for reproducible test vectors.
#[doc(hidden)]
pub fn encrypt_bytes_with_nonces(
    cipher: &FileCipher,
    header: &Header,
    plain: &[u8],
    next_nonce: &mut dyn FnMut() -> [u8; 12],
) -> Result<Vec<u8>, FileError> {
    let layout = Layout::new(header.header_len);
    let plain_len = plain.len() as u64;
    let mut out = header.encode()?;
    out.resize(layout.cipher_len(plain_len)? as usize, 0);
    let blocks = Layout::block_count(plain_len);
    for block_no in 0..blocks {
        let start = (block_no * BLOCK_PLAIN_LEN) as usize;
        let len = Layout::block_plain_len(plain_len, block_no);
        let off = layout.block_offset(block_no) as usize;
        let sealed = &mut out[off..off + len + BLOCK_OVERHEAD as usize];
        cipher
            .seal_block_with_nonce(
                block_no,
                block_no + 1 == blocks,
                &plain[start..start + len],
                next_nonce(),
                sealed,
            )
            .map_err(|_| FileError::Random)?;
    }
    Ok(out)
}

/// Checks a header against the data key and returns the file's cipher.
pub fn open_header(data_key: &DataKey, header: &Header) -> Result<FileCipher, FileError> {
    let cipher = FileCipher::new(data_key, header.file_id);
    cipher
        .verify_commitment(header)
        .map_err(|_| FileError::WrongKey)?;
    Ok(cipher)
}

/// Reads a whole ciphertext file back into plaintext, checking everything the format
/// authenticates. Returns nothing on any failure: never partial or unauthenticated bytes.
pub fn decrypt_bytes(data_key: &DataKey, file: &[u8]) -> Result<Vec<u8>, FileError> {
    let (header, _) = Header::decode(file)?;
    let cipher = open_header(data_key, &header)?;
    let layout = Layout::new(header.header_len);
    let plain_len = layout.plain_len(file.len() as u64)?;
    let mut plain = vec![0u8; plain_len as usize];
    let blocks = Layout::block_count(plain_len);
    for block_no in 0..blocks {
        let len = Layout::block_plain_len(plain_len, block_no);
        let off = layout.block_offset(block_no) as usize;
        let start = (block_no * BLOCK_PLAIN_LEN) as usize;
        cipher
            .open_block(
                block_no,
                block_no + 1 == blocks,
                &file[off..off + len + BLOCK_OVERHEAD as usize],
                &mut plain[start..start + len],
            )
            .map_err(|e| match e {
                CryptoError::AuthFailed | CryptoError::BadLength { .. } => {
                    FileError::BlockAuth { block_no }
                }
                CryptoError::WrongKey => FileError::WrongKey,
                CryptoError::Random => FileError::Random,
            })?;
    }
    Ok(plain)
}
