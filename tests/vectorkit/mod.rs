//! Building the golden vectors of `tests/vectors/` from fixed seeds: every random choice
//! of a file (data key, file id, nonces) is a hash of its name, so regenerating gives the
//! same bytes. The vectors themselves are listed by format version in `v1.rs` to `v4.rs`;
//! `tests/vectors.rs` writes and checks them. No KMS: the data key is in each JSON, and the
//! wrapped key in the header is a placeholder.

pub mod bucket;
pub mod v1;
pub mod v2;
pub mod v3;
pub mod v4;

use kmsfs::crypto::FileCipher;
use kmsfs::file::{self, KeySlot};
use kmsfs::format::{FileId, Header, DEFAULT_HEADER_LEN};
use kmsfs::secret::DataKey;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// One vector: its name, the ciphertext file and the JSON that describes it.
pub type Vector = (String, Vec<u8>, Value);

pub const KEY_ID: &str =
    "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000001";

/// SHA-256 of the concatenation of `parts`.
pub fn sha(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Readable plaintext of any length.
pub fn text(name: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut line = 0;
    while out.len() < len {
        out.extend_from_slice(format!("kmsfs test vector {name}, line {line}\n").as_bytes());
        line += 1;
    }
    out.truncate(len);
    out
}

/// A file built from a seed, with the data key and header it was built with.
pub struct Built {
    pub bytes: Vec<u8>,
    pub data_key: [u8; 32],
    pub header: Header,
}

/// A valid file whose every random choice comes from `seed`.
pub fn build(seed: &str, plain: &[u8], header_len: u32, key_id: &str, version: u16) -> Built {
    build_shape(seed, plain, header_len, key_id, (version, false))
}

/// [`build`] of a file whose header says it is bound to names (`bound`).
pub fn build_shape(
    seed: &str,
    plain: &[u8],
    header_len: u32,
    key_id: &str,
    shape: (u16, bool),
) -> Built {
    let data_key = sha(&[b"data-key:", seed.as_bytes()]);
    let file_id = FileId(
        sha(&[b"file-id:", seed.as_bytes()])[..16]
            .try_into()
            .unwrap(),
    );
    let key = DataKey::from_slice(&data_key).unwrap();
    let cipher = FileCipher::new(&key, file_id);
    let slot = KeySlot {
        key_id: key_id.into(),
        wrapped_key: [b"vector-wrapped-key:".as_slice(), seed.as_bytes()].concat(),
    };
    let header = file::new_header(&cipher, shape, header_len, slot).unwrap();
    let mut counter = 0u64;
    let bytes = file::encrypt_bytes_with_nonces(&cipher, &header, plain, &mut || {
        counter += 1;
        sha(&[b"nonce:", seed.as_bytes(), &counter.to_be_bytes()])[..12]
            .try_into()
            .unwrap()
    })
    .unwrap();
    Built {
        bytes,
        data_key,
        header,
    }
}

/// The JSON beside a vector: what the file is, then `outcome` (its plaintext or its error).
pub fn describe(b: &Built, description: &str, outcome: Value) -> Value {
    let mut v = json!({
        "description": description,
        "format_version": b.header.version,
        "data_key_hex": hex::encode(b.data_key),
        "header_len": b.header.header_len,
        "file_id_hex": b.header.file_id.to_hex(),
        "key_id": b.header.key_id,
        "wrapped_key_len": b.header.wrapped_key.len(),
    });
    v.as_object_mut()
        .unwrap()
        .extend(outcome.as_object().unwrap().clone());
    v
}

/// A valid version-1 vector of `plain`.
pub fn valid(name: &str, description: &str, plain: &[u8], header_len: u32, key_id: &str) -> Vector {
    valid_v(1, name, description, plain, header_len, key_id)
}

/// A valid vector of `plain` in format `version`.
pub fn valid_v(
    version: u16,
    name: &str,
    description: &str,
    plain: &[u8],
    header_len: u32,
    key_id: &str,
) -> Vector {
    let b = build(name, plain, header_len, key_id, version);
    let outcome = json!({
        "plaintext_size": plain.len(),
        "plaintext_sha256": hex::encode(sha(&[plain])),
    });
    (
        name.into(),
        b.bytes.clone(),
        describe(&b, description, outcome),
    )
}

/// A version-1 vector of `plain_len` bytes, damaged by `damage` (which may also change
/// the data key the reader is given), that must fail with `expected_error`.
pub fn broken(
    name: &str,
    description: &str,
    plain_len: usize,
    damage: impl FnOnce(&mut Vec<u8>, &mut [u8; 32]),
    expected_error: &str,
) -> Vector {
    broken_v(1, name, description, plain_len, damage, expected_error)
}

/// [`broken`] in format `version`.
pub fn broken_v(
    version: u16,
    name: &str,
    description: &str,
    plain_len: usize,
    damage: impl FnOnce(&mut Vec<u8>, &mut [u8; 32]),
    expected_error: &str,
) -> Vector {
    let mut b = build(
        name,
        &text(name, plain_len),
        DEFAULT_HEADER_LEN,
        KEY_ID,
        version,
    );
    damage(&mut b.bytes, &mut b.data_key);
    let outcome = json!({ "expected_error": expected_error });
    (
        name.into(),
        b.bytes.clone(),
        describe(&b, description, outcome),
    )
}

/// Swaps the `len` bytes at `x` with those at `y` (ranges apart) in `b`.
pub fn swap(b: &mut [u8], x: usize, y: usize, len: usize) {
    let (lo, hi) = (x.min(y), x.max(y));
    let (first, second) = b.split_at_mut(hi);
    first[lo..lo + len].swap_with_slice(&mut second[..len]);
}

/// A key id long enough to need a 4096-byte header.
pub fn long_key_id() -> String {
    format!(
        "arn:aws:kms:eu-central-1:111122223333:alias/{}",
        "x".repeat(400)
    )
}
