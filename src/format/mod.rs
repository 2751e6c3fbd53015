//! The on-disk format, versions 1 to 4 (`docs/format.md` is the normative description).
//!
//! Bytes <-> structs and offset arithmetic only: no files, no keys, no KMS. Decoding takes
//! untrusted bytes and returns an error rather than panicking, and never allocates more
//! than the header's declared length, itself capped at [`MAX_HEADER_LEN`].

pub mod binding;
pub mod bucket;
mod header;
mod layout;
pub mod names;
pub mod slots;

pub use bucket::{BucketId, BUCKET_ID_LEN, FLAG_BUCKET_KEY};
pub use header::{Header, FIXED_LEN};
pub use layout::{BlockPlace, BlockSpan, Layout, GROUP_BLOCKS, MAX_PLAIN_LEN, PAGE};

/// The first eight bytes of every kmsfs ciphertext file: "KMSFS", NUL, CR, LF.
pub const MAGIC: [u8; 8] = *b"KMSFS\0\r\n";
/// The format version new volumes are made with unless `kmsfs init --format-version`
/// says otherwise: version 4 keeps a block readable through a killed daemon or a power cut
/// in the middle of rewriting it. Volumes keep the version they were made with.
pub const VERSION: u16 = 4;
/// Version 1: each block stored whole (nonce, ciphertext, tag) after the one before.
pub const VERSION_PACKED: u16 = 1;
/// Version 2: each block's ciphertext on a page of its own, nonces and tags in tables.
pub const VERSION_SPLIT: u16 = 2;
/// Version 3: version 2 with two nonce-and-tag slots per block (`slots`).
pub const VERSION_SLOTS: u16 = 3;
/// Version 4: each block sealed whole on a page of its own, so that the disk holds every
/// block as one of its writes (`docs/format.md`, "Layout, version 4").
pub const VERSION_PAGED: u16 = 4;
/// The versions this code reads and writes (a volume keeps the version it was made with).
pub const SUPPORTED_VERSIONS: [u16; 4] =
    [VERSION_PACKED, VERSION_SPLIT, VERSION_SLOTS, VERSION_PAGED];
/// Algorithm 1: AES-256-GCM-SIV blocks (of 4096 bytes in versions 1 to 3, 4068 in version
/// 4), HKDF-SHA256, HMAC-SHA256 commitment.
pub const ALGORITHM: u16 = 1;
/// Plaintext bytes per block in versions 1 to 3, and the most any version's block holds
/// ([`Layout::block_len`] gives a layout's own).
pub const BLOCK_PLAIN_LEN: u64 = 4096;
/// Plaintext bytes per block in version 4: a sealed block (nonce, ciphertext, tag) fills
/// a 4096-byte page.
pub const BLOCK_PLAIN_LEN_PAGED: u64 = 4068;
/// Nonce bytes stored in front of each block.
pub const NONCE_LEN: usize = 12;
/// Authentication tag bytes stored after each block.
pub const TAG_LEN: usize = 16;
/// Ciphertext bytes a block adds to its plaintext.
pub const BLOCK_OVERHEAD: u64 = (NONCE_LEN + TAG_LEN) as u64;
/// Bytes of a file id.
pub const FILE_ID_LEN: usize = 16;
/// Bytes of the key commitment.
pub const COMMITMENT_LEN: usize = 32;
/// The header length new volumes use unless told otherwise.
pub const DEFAULT_HEADER_LEN: u32 = 1024;
/// Smallest and largest header region.
pub const MIN_HEADER_LEN: u32 = 128;
pub const MAX_HEADER_LEN: u32 = 16384;
/// Largest KMS key id (AWS accepts key ids of up to 2048 characters).
pub const MAX_KEY_ID_LEN: usize = 2048;
/// Largest wrapped key (AWS's limit for a `CiphertextBlob`).
pub const MAX_WRAPPED_LEN: usize = 6144;

/// A file's immutable random identity, bound into its keys and every block.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub [u8; FILE_ID_LEN]);

impl FileId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileId({})", self.to_hex())
    }
}

impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Why bytes are not a valid kmsfs header or ciphertext length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("not a kmsfs file (the magic bytes are missing)")]
    NotKmsfs,
    #[error("truncated header: {needed} bytes needed, {got} present")]
    TruncatedHeader { needed: usize, got: usize },
    #[error("format version {0} is not supported by this kmsfs (it reads versions 1 to 4); upgrade kmsfs")]
    UnsupportedVersion(u16),
    #[error("algorithm {0} is not supported by this kmsfs (it reads algorithm {ALGORITHM}); upgrade kmsfs")]
    UnsupportedAlgorithm(u16),
    #[error("feature flags {0:#010x} are not supported by this kmsfs; upgrade kmsfs")]
    UnsupportedFlags(u32),
    #[error("header length {0} is out of range or too small for its contents")]
    BadHeaderLen(u32),
    #[error("the header's key id is empty, too long or not UTF-8")]
    BadKeyId,
    #[error("the header's wrapped key is empty or longer than {MAX_WRAPPED_LEN} bytes")]
    BadWrappedKey,
    #[error("the header's padding is not all zeros")]
    NonZeroPadding,
    #[error("ciphertext length {cipher_len} is impossible for header length {header_len}: the file was cut or extended mid-block")]
    InvalidCipherLen { cipher_len: u64, header_len: u64 },
    #[error("plaintext size {0} is too large")]
    TooLarge(u64),
    #[error(
        "bytes {start}..{end} of the file belong to no block but are not zero: the file was edited"
    )]
    NonZeroSlack { start: u64, end: u64 },
    #[error("file of format version {file} in a volume of version {volume}: it was copied in from another volume")]
    VersionMismatch { file: u16, volume: u16 },
}

impl FormatError {
    /// A stable snake_case name, used by `--json` output and the test vectors.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotKmsfs => "not_kmsfs",
            Self::TruncatedHeader { .. } => "truncated_header",
            Self::UnsupportedVersion(_) => "unsupported_version",
            Self::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            Self::UnsupportedFlags(_) => "unsupported_flags",
            Self::BadHeaderLen(_) => "bad_header_len",
            Self::BadKeyId => "bad_key_id",
            Self::BadWrappedKey => "bad_wrapped_key",
            Self::NonZeroPadding => "nonzero_padding",
            Self::InvalidCipherLen { .. } => "invalid_cipher_len",
            Self::TooLarge(_) => "too_large",
            Self::VersionMismatch { .. } => "version_mismatch",
            Self::NonZeroSlack { .. } => "nonzero_slack",
        }
    }
}
