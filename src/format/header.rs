//! The per-file header: encode, decode, and the byte range its commitment covers.

use super::binding::{BINDING_AREA_LEN, FLAG_BOUND_NAMES, KNOWN_FLAGS};
use super::bucket::{BucketId, BUCKET_ID_LEN, FLAG_BUCKET_KEY};
use super::{
    FileId, FormatError, ALGORITHM, COMMITMENT_LEN, FILE_ID_LEN, MAGIC, MAX_HEADER_LEN,
    MAX_KEY_ID_LEN, MAX_WRAPPED_LEN, MIN_HEADER_LEN, SUPPORTED_VERSIONS,
};

/// Bytes of the fixed part: everything up to and including the commitment.
pub const FIXED_LEN: usize = 68;
/// The commitment covers bytes `0..COMMITTED_LEN` of the header.
const COMMITTED_LEN: usize = 36;

/// A decoded header. `commitment` is carried as bytes; checking it needs the data key
/// and is the job of `crypto`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The format version (1 to 4): it decides where blocks lie (`Layout`).
    pub version: u16,
    /// Feature bits: [`FLAG_BOUND_NAMES`], [`FLAG_BUCKET_KEY`], or none.
    pub flags: u32,
    pub header_len: u32,
    pub file_id: FileId,
    pub commitment: [u8; COMMITMENT_LEN],
    /// The KMS key ARN the data key is wrapped under.
    pub key_id: String,
    /// The data key as wrapped by the KMS (opaque); with [`FLAG_BUCKET_KEY`], the bucket
    /// key.
    pub wrapped_key: Vec<u8>,
    /// The bucket the file's key comes from: `Some` exactly when the flags have
    /// [`FLAG_BUCKET_KEY`].
    pub bucket_id: Option<BucketId>,
}

impl Header {
    /// The bytes the commitment authenticates, for a header with this version, flags,
    /// length and file id.
    pub fn committed_bytes(
        version: u16,
        flags: u32,
        header_len: u32,
        file_id: &FileId,
    ) -> [u8; COMMITTED_LEN] {
        let mut out = [0u8; COMMITTED_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&version.to_be_bytes());
        out[10..12].copy_from_slice(&ALGORITHM.to_be_bytes());
        out[12..16].copy_from_slice(&flags.to_be_bytes());
        out[16..20].copy_from_slice(&header_len.to_be_bytes());
        out[20..36].copy_from_slice(&file_id.0);
        out
    }

    /// Bytes the header's contents need, before padding.
    pub fn content_len(&self) -> usize {
        let bucket = if self.bucket_id.is_some() {
            BUCKET_ID_LEN
        } else {
            0
        };
        FIXED_LEN + 2 + self.key_id.len() + 2 + self.wrapped_key.len() + bucket
    }

    /// Whether the key slot holds a bucket key (`docs/format.md`, "Bucket keys").
    pub fn is_bucket(&self) -> bool {
        self.flags & FLAG_BUCKET_KEY != 0
    }

    /// Whether the header region ends with a names binding area.
    pub fn is_bound(&self) -> bool {
        self.flags & FLAG_BOUND_NAMES != 0
    }

    /// Bytes of the header region the contents and padding may use: all but the binding
    /// area, where there is one.
    fn usable_len(flags: u32, header_len: u32) -> usize {
        let area = if flags & FLAG_BOUND_NAMES != 0 {
            BINDING_AREA_LEN
        } else {
            0
        };
        (header_len as usize).saturating_sub(area)
    }

    /// Encodes the header into exactly `header_len` bytes.
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        if !SUPPORTED_VERSIONS.contains(&self.version) {
            return Err(FormatError::UnsupportedVersion(self.version));
        }
        if self.key_id.is_empty() || self.key_id.len() > MAX_KEY_ID_LEN {
            return Err(FormatError::BadKeyId);
        }
        if self.wrapped_key.is_empty() || self.wrapped_key.len() > MAX_WRAPPED_LEN {
            return Err(FormatError::BadWrappedKey);
        }
        if self.flags & !KNOWN_FLAGS != 0 {
            return Err(FormatError::UnsupportedFlags(self.flags));
        }
        if self.is_bucket() != self.bucket_id.is_some() {
            return Err(FormatError::BadWrappedKey);
        }
        if !(MIN_HEADER_LEN..=MAX_HEADER_LEN).contains(&self.header_len)
            || self.content_len() > Self::usable_len(self.flags, self.header_len)
        {
            return Err(FormatError::BadHeaderLen(self.header_len));
        }
        let mut out = Vec::with_capacity(self.header_len as usize);
        out.extend_from_slice(&Self::committed_bytes(
            self.version,
            self.flags,
            self.header_len,
            &self.file_id,
        ));
        out.extend_from_slice(&self.commitment);
        out.extend_from_slice(&(self.key_id.len() as u16).to_be_bytes());
        out.extend_from_slice(self.key_id.as_bytes());
        out.extend_from_slice(&(self.wrapped_key.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.wrapped_key);
        if let Some(bucket) = &self.bucket_id {
            out.extend_from_slice(&bucket.0);
        }
        out.resize(self.header_len as usize, 0);
        Ok(out)
    }

    /// Decodes a header from the start of `buf`, returning it and the bytes it used
    /// (`header_len`). `buf` may hold more (the blocks); if it holds less than the header,
    /// the error says how much is needed. Fields are checked in the order they lie in,
    /// each once the bytes holding it are there.
    pub fn decode(buf: &[u8]) -> Result<(Header, usize), FormatError> {
        let (version, flags, header_len) = decode_fixed(buf)?;
        let len = header_len as usize;
        need(buf, len)?;
        let usable = Self::usable_len(flags, header_len);
        if usable < FIXED_LEN {
            return Err(FormatError::BadHeaderLen(header_len));
        }
        let hdr = &buf[..usable];
        let file_id = FileId(hdr[20..20 + FILE_ID_LEN].try_into().expect("16 bytes"));
        let commitment: [u8; COMMITMENT_LEN] = hdr[36..FIXED_LEN].try_into().expect("32 bytes");
        let bucket = flags & FLAG_BUCKET_KEY != 0;
        let (key_id, wrapped_key, bucket_id) = decode_key_slot(hdr, header_len, bucket)?;
        Ok((
            Header {
                version,
                flags,
                header_len,
                file_id,
                commitment,
                key_id,
                wrapped_key,
                bucket_id,
            },
            len,
        ))
    }
}

/// `Ok` if `buf` holds at least `n` bytes, else the error saying how many are needed.
fn need(buf: &[u8], n: usize) -> Result<(), FormatError> {
    if buf.len() < n {
        return Err(FormatError::TruncatedHeader {
            needed: n,
            got: buf.len(),
        });
    }
    Ok(())
}

/// Checks the fields that say how to read the rest (magic, version, algorithm, flags,
/// header length) and returns the version, the flags and the header length. A buffer too short to
/// hold the magic is "not kmsfs" if what it holds already differs from the magic.
fn decode_fixed(buf: &[u8]) -> Result<(u16, u32, u32), FormatError> {
    let magic_len = buf.len().min(MAGIC.len());
    if buf[..magic_len] != MAGIC[..magic_len] {
        return Err(FormatError::NotKmsfs);
    }
    need(buf, MAGIC.len())?;
    if buf[..8] != MAGIC {
        return Err(FormatError::NotKmsfs);
    }
    need(buf, FIXED_LEN)?;
    let version = u16::from_be_bytes([buf[8], buf[9]]);
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(FormatError::UnsupportedVersion(version));
    }
    let algorithm = u16::from_be_bytes([buf[10], buf[11]]);
    if algorithm != ALGORITHM {
        return Err(FormatError::UnsupportedAlgorithm(algorithm));
    }
    let flags = u32::from_be_bytes(buf[12..16].try_into().expect("4 bytes"));
    if flags & !KNOWN_FLAGS != 0 {
        return Err(FormatError::UnsupportedFlags(flags));
    }
    let header_len = u32::from_be_bytes(buf[16..20].try_into().expect("4 bytes"));
    if !(MIN_HEADER_LEN..=MAX_HEADER_LEN).contains(&header_len) {
        return Err(FormatError::BadHeaderLen(header_len));
    }
    Ok((version, flags, header_len))
}

/// The key slot after the fixed part of `hdr` (the header region up to its binding area,
/// if any): the key id and the wrapped key, each u16-length-prefixed, the bucket id for a
/// `bucket` file, then padding that must be all zeros.
fn decode_key_slot(
    hdr: &[u8],
    header_len: u32,
    bucket: bool,
) -> Result<(String, Vec<u8>, Option<BucketId>), FormatError> {
    let mut pos = FIXED_LEN;
    let key_id = read_field(hdr, &mut pos, MAX_KEY_ID_LEN, header_len)
        .and_then(|b| b.ok_or(FormatError::BadKeyId))?;
    let key_id = std::str::from_utf8(key_id)
        .map_err(|_| FormatError::BadKeyId)?
        .to_owned();
    let wrapped_key = read_field(hdr, &mut pos, MAX_WRAPPED_LEN, header_len)
        .and_then(|b| b.ok_or(FormatError::BadWrappedKey))?
        .to_vec();
    let bucket_id = if bucket {
        let id = hdr
            .get(pos..pos + BUCKET_ID_LEN)
            .ok_or(FormatError::BadHeaderLen(header_len))?;
        pos += BUCKET_ID_LEN;
        Some(BucketId(id.try_into().expect("16 bytes")))
    } else {
        None
    };
    if hdr[pos..].iter().any(|&b| b != 0) {
        return Err(FormatError::NonZeroPadding);
    }
    Ok((key_id, wrapped_key, bucket_id))
}

/// Reads a u16-length-prefixed field. `Ok(None)` means empty or over `max`; a field running
/// past the header is a header-length error.
fn read_field<'a>(
    hdr: &'a [u8],
    pos: &mut usize,
    max: usize,
    header_len: u32,
) -> Result<Option<&'a [u8]>, FormatError> {
    let len_bytes = hdr
        .get(*pos..*pos + 2)
        .ok_or(FormatError::BadHeaderLen(header_len))?;
    let len = u16::from_be_bytes([len_bytes[0], len_bytes[1]]) as usize;
    let start = *pos + 2;
    let field = hdr
        .get(start..start + len)
        .ok_or(FormatError::BadHeaderLen(header_len))?;
    *pos = start + len;
    Ok((len != 0 && len <= max).then_some(field))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn example() -> Header {
        Header {
            version: 2,
            flags: 0,
            header_len: 1024,
            file_id: FileId([7; 16]),
            commitment: [9; 32],
            key_id: "arn:aws:kms:eu-west-1:111122223333:key/abc".into(),
            wrapped_key: vec![0xAB; 184],
            bucket_id: None,
        }
    }

    #[test]
    fn round_trip_and_layout() {
        let h = example();
        let bytes = h.encode().unwrap();
        assert_eq!(bytes.len(), 1024);
        assert_eq!(&bytes[..8], b"KMSFS\0\r\n");
        assert_eq!(&bytes[16..20], &1024u32.to_be_bytes());
        assert_eq!(&bytes[68..70], &(h.key_id.len() as u16).to_be_bytes());
        let (back, used) = Header::decode(&bytes).unwrap();
        assert_eq!(back, h);
        assert_eq!(used, 1024);
    }

    #[test]
    fn each_bad_field_has_its_error() {
        let good = example().encode().unwrap();
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            Header::decode(&b).unwrap_err()
        };
        assert_eq!(with(&|b| b[0] = b'X'), FormatError::NotKmsfs);
        assert_eq!(with(&|b| b[9] = 5), FormatError::UnsupportedVersion(5));
        assert_eq!(with(&|b| b[9] = 0), FormatError::UnsupportedVersion(0));
        assert_eq!(Header::decode(&with_ok(&good, 1)).unwrap().0.version, 1);
        assert_eq!(with(&|b| b[11] = 3), FormatError::UnsupportedAlgorithm(3));
        assert_eq!(with(&|b| b[15] = 2), FormatError::UnsupportedFlags(2));
        assert_eq!(with(&|b| b[15] = 8), FormatError::UnsupportedFlags(8));
        assert_eq!(
            with(&|b| b[16..20].copy_from_slice(&100_000u32.to_be_bytes())),
            FormatError::BadHeaderLen(100_000)
        );
        assert_eq!(
            with(&|b| b[68..70].copy_from_slice(&[0, 0])),
            FormatError::BadKeyId
        );
        assert_eq!(with(&|b| b[70] = 0xFF), FormatError::BadKeyId);
        assert_eq!(with(&|b| b[1000] = 1), FormatError::NonZeroPadding);
        assert_eq!(
            with(&|b| b.truncate(500)),
            FormatError::TruncatedHeader {
                needed: 1024,
                got: 500
            }
        );
        assert_eq!(
            with(&|b| b[68..70].copy_from_slice(&[0xFF, 0xFF])),
            FormatError::BadHeaderLen(1024)
        );
    }

    #[test]
    fn a_bound_header_keeps_its_binding_area_out_of_the_padding() {
        let mut h = example();
        h.flags = FLAG_BOUND_NAMES;
        let mut bytes = h.encode().unwrap();
        assert_eq!(&bytes[12..16], &1u32.to_be_bytes());
        bytes[1024 - BINDING_AREA_LEN] = 0x5A; // a tag
        let (back, _) = Header::decode(&bytes).unwrap();
        assert!(back.is_bound());
        assert_eq!(back, h);
        // Without the flag the same byte is padding that is not zero.
        bytes[15] = 0;
        assert_eq!(
            Header::decode(&bytes).unwrap_err(),
            FormatError::NonZeroPadding
        );
        // A key slot that would run into the area does not fit.
        h.wrapped_key = vec![1; 1024 - BINDING_AREA_LEN];
        assert_eq!(h.encode().unwrap_err(), FormatError::BadHeaderLen(1024));
    }

    #[test]
    fn a_bucket_header_carries_its_bucket_id_after_the_wrapped_key() {
        let mut h = example();
        h.flags = FLAG_BOUND_NAMES | FLAG_BUCKET_KEY;
        h.bucket_id = Some(BucketId([0x5B; 16]));
        let bytes = h.encode().unwrap();
        assert_eq!(&bytes[12..16], &5u32.to_be_bytes());
        let at = 72 + h.key_id.len() + h.wrapped_key.len();
        assert_eq!(&bytes[at..at + 16], &[0x5B; 16]);
        assert!(bytes[at + 16..1024 - BINDING_AREA_LEN]
            .iter()
            .all(|&b| b == 0));
        let (back, _) = Header::decode(&bytes).unwrap();
        assert!(back.is_bucket());
        assert_eq!(back, h);
        // The flag cleared: the bucket id is padding that is not zero.
        let mut cleared = bytes.clone();
        cleared[15] = 1;
        assert_eq!(
            Header::decode(&cleared).unwrap_err(),
            FormatError::NonZeroPadding
        );
        // The flag set on a per-file header: the zero padding reads as a bucket id.
        let mut plain = example();
        plain.flags = FLAG_BOUND_NAMES;
        let mut set = plain.encode().unwrap();
        set[15] = 5;
        let (back, _) = Header::decode(&set).unwrap();
        assert_eq!(back.bucket_id, Some(BucketId([0; 16])));
        // Flag and bucket id must agree to encode.
        h.bucket_id = None;
        assert_eq!(h.encode().unwrap_err(), FormatError::BadWrappedKey);
        // A slot whose bucket id would run into the binding area does not fit.
        let mut tight = example();
        tight.flags = FLAG_BOUND_NAMES | FLAG_BUCKET_KEY;
        tight.bucket_id = Some(BucketId([1; 16]));
        tight.wrapped_key = vec![1; 1024 - BINDING_AREA_LEN - 72 - tight.key_id.len() - 8];
        assert_eq!(tight.encode().unwrap_err(), FormatError::BadHeaderLen(1024));
    }

    fn with_ok(good: &[u8], version: u8) -> Vec<u8> {
        let mut b = good.to_vec();
        b[9] = version;
        b
    }

    #[test]
    fn encode_refuses_what_does_not_fit() {
        let mut h = example();
        h.version = 5;
        assert_eq!(h.encode().unwrap_err(), FormatError::UnsupportedVersion(5));
        let mut h = example();
        h.header_len = 200;
        assert_eq!(h.encode().unwrap_err(), FormatError::BadHeaderLen(200));
        let mut h = example();
        h.wrapped_key = vec![1; MAX_WRAPPED_LEN + 1];
        assert_eq!(h.encode().unwrap_err(), FormatError::BadWrappedKey);
        let mut h = example();
        h.header_len = MAX_HEADER_LEN;
        h.key_id = "k".repeat(MAX_KEY_ID_LEN);
        h.wrapped_key = vec![1; MAX_WRAPPED_LEN];
        assert!(
            h.encode().is_ok(),
            "the largest AWS key id and blob must fit"
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = Header::decode(&bytes);
        }

        #[test]
        fn decode_never_panics_after_magic(mut bytes in proptest::collection::vec(any::<u8>(), 68..1200)) {
            bytes[..8].copy_from_slice(&MAGIC);
            bytes[8..12].copy_from_slice(&[0, 1, 0, 1]);
            bytes[12..16].copy_from_slice(&[0; 4]);
            let _ = Header::decode(&bytes);
        }

        #[test]
        fn encode_decode_round_trip(
            key_id in "[a-zA-Z0-9:/_-]{1,300}",
            wrapped in proptest::collection::vec(any::<u8>(), 1..600),
            id in any::<[u8; 16]>(),
            extra in 0u32..2000,
            bucket in any::<bool>(),
        ) {
            let mut h = Header {
                version: 2, flags: 0, header_len: 0, file_id: FileId(id), commitment: [3; 32], key_id, wrapped_key: wrapped,
                bucket_id: None,
            };
            if bucket {
                h.flags = FLAG_BUCKET_KEY;
                h.bucket_id = Some(BucketId(id));
            }
            h.header_len = (h.content_len() as u32 + extra).clamp(MIN_HEADER_LEN, MAX_HEADER_LEN);
            let bytes = h.encode().unwrap();
            prop_assert_eq!(bytes.len(), h.header_len as usize);
            let (back, used) = Header::decode(&bytes).unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(back, h);
        }
    }
}
