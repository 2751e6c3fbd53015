//! How encrypted names, long names and per-directory records look on disk. Pure byte and
//! string handling; the sealing itself is `crypto::NameCipher`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::FormatError;

/// The per-directory record in every directory of a volume with encrypted names.
pub const DIR_ID_NAME: &str = "kmsfs.dirid";
/// Prefix of the empty file whose name also holds a directory's id (the prefix, then the id
/// in 32 lowercase hex digits): the record in the directory's metadata.
pub const DIR_ID_NAME_PREFIX: &str = "kmsfs.dirid.";
/// Prefix of a long name's stand-in (`kmsfs.long.` + base64url(SHA-256 of the full name)).
pub const LONG_NAME_PREFIX: &str = "kmsfs.long.";
/// Suffix of the file that holds a long name's full encrypted form.
pub const LONG_NAME_SUFFIX: &str = ".name";
/// Encoded names longer than this use the long-name scheme (ext4's NAME_MAX is 255).
pub const MAX_SHORT_ENCODED: usize = 255;
/// Longest plaintext name accepted (NAME_MAX).
pub const MAX_PLAIN_NAME: usize = 255;

/// Magic of the per-directory record.
pub const DIR_ID_MAGIC: [u8; 8] = *b"KMSFSDIR";
/// Bytes of the per-directory record: magic, version (u16), 16-byte directory id.
pub const DIR_ID_RECORD_LEN: usize = 8 + 2 + 16;

/// Pads a name to a multiple of 16 bytes (PKCS#7: always 1..=16 bytes of padding), so the
/// encrypted length tells only the name's length rounded up to 16.
pub fn pad_name(name: &[u8]) -> Vec<u8> {
    let pad = 16 - name.len() % 16;
    let mut out = Vec::with_capacity(name.len() + pad);
    out.extend_from_slice(name);
    out.resize(name.len() + pad, pad as u8);
    out
}

/// Removes [`pad_name`]'s padding; `None` if it is malformed.
pub fn unpad_name(padded: &[u8]) -> Option<&[u8]> {
    let &pad = padded.last()?;
    let pad = pad as usize;
    if pad == 0 || pad > 16 || pad > padded.len() || padded.len() % 16 != 0 {
        return None;
    }
    let (name, tail) = padded.split_at(padded.len() - pad);
    tail.iter().all(|&b| b as usize == pad).then_some(name)
}

/// The filesystem-safe form of a sealed name: base64url without padding
/// (`A-Z a-z 0-9 - _`, never `.` or `/`, so it cannot collide with kmsfs's own files).
pub fn encode_name(sealed: &[u8]) -> String {
    B64URL.encode(sealed)
}

pub fn decode_name(encoded: &str) -> Option<Vec<u8>> {
    B64URL.decode(encoded).ok()
}

/// The on-disk stand-in for an encoded name too long for the directory.
pub fn long_name_for(encoded: &str) -> String {
    format!(
        "{LONG_NAME_PREFIX}{}",
        B64URL.encode(Sha256::digest(encoded.as_bytes()))
    )
}

/// Whether an on-disk name is a long-name stand-in (not its `.name` file).
pub fn is_long_name(on_disk: &str) -> bool {
    on_disk.starts_with(LONG_NAME_PREFIX) && !on_disk.ends_with(LONG_NAME_SUFFIX)
}

/// Version of the per-directory record (its own, independent of the file format's).
const DIR_ID_VERSION: u16 = 1;

/// The per-directory record's bytes.
pub fn encode_dir_id(id: &[u8; 16]) -> [u8; DIR_ID_RECORD_LEN] {
    let mut out = [0u8; DIR_ID_RECORD_LEN];
    out[..8].copy_from_slice(&DIR_ID_MAGIC);
    out[8..10].copy_from_slice(&DIR_ID_VERSION.to_be_bytes());
    out[10..].copy_from_slice(id);
    out
}

pub fn decode_dir_id(bytes: &[u8]) -> Result<[u8; 16], FormatError> {
    if bytes.len() != DIR_ID_RECORD_LEN || bytes[..8] != DIR_ID_MAGIC {
        return Err(FormatError::NotKmsfs);
    }
    let version = u16::from_be_bytes([bytes[8], bytes[9]]);
    if version != DIR_ID_VERSION {
        return Err(FormatError::UnsupportedVersion(version));
    }
    Ok(bytes[10..].try_into().expect("16 bytes"))
}

/// Plaintext length of an encrypted symlink target of `encoded_len` base64url characters
/// (nonce and tag are 28 bytes), for `stat` without the key.
pub fn symlink_plain_len(encoded_len: u64) -> u64 {
    (encoded_len * 3 / 4).saturating_sub(28)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn long_names_and_records() {
        let long = long_name_for(&"A".repeat(300));
        assert!(long.len() < 64 && is_long_name(&long));
        assert!(!is_long_name(&format!("{long}{LONG_NAME_SUFFIX}")));
        let id = [7u8; 16];
        assert_eq!(decode_dir_id(&encode_dir_id(&id)).unwrap(), id);
        assert!(decode_dir_id(b"garbage").is_err());
        assert_eq!(
            symlink_plain_len(encode_name(&[0u8; 28 + 10]).len() as u64),
            10
        );
    }

    proptest! {
        #[test]
        fn padding_round_trips(name in proptest::collection::vec(any::<u8>(), 0..300)) {
            let padded = pad_name(&name);
            prop_assert_eq!(padded.len() % 16, 0);
            prop_assert!(padded.len() > name.len());
            prop_assert_eq!(unpad_name(&padded), Some(&name[..]));
        }

        #[test]
        fn encoding_is_filesystem_safe(bytes in proptest::collection::vec(any::<u8>(), 1..200)) {
            let e = encode_name(&bytes);
            prop_assert!(e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            prop_assert_eq!(decode_name(&e), Some(bytes));
        }

        #[test]
        fn symlink_lengths_are_exact(len in 0usize..3000) {
            prop_assert_eq!(symlink_plain_len(encode_name(&vec![1u8; len + 28]).len() as u64), len as u64);
        }
    }
}
