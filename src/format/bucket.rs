//! Bucket keys (`docs/format.md`, "Bucket keys"): a file whose header has
//! [`FLAG_BUCKET_KEY`] holds in its key slot a wrapped *bucket key*, shared by every file of
//! its bucket, followed by the bucket's id; the file's data key is derived from the bucket
//! key (`crypto::bucket_file_key`). This module only names the bytes.

/// Header flag: the key slot holds a wrapped bucket key and a bucket id.
pub const FLAG_BUCKET_KEY: u32 = 4;
/// Bytes of a bucket id.
pub const BUCKET_ID_LEN: usize = 16;

/// A bucket's random identity, bound into its key's encryption context.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketId(pub [u8; BUCKET_ID_LEN]);

impl BucketId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for BucketId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BucketId({})", self.to_hex())
    }
}

impl std::fmt::Display for BucketId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}
