//! Helpers shared by the integration tests.
#![allow(dead_code)]

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use kmsfs::crypto::FileCipher;
use kmsfs::file::{self, KeySlot};
use kmsfs::format::{FileId, DEFAULT_HEADER_LEN};
use kmsfs::secret::DataKey;

/// A stand-in for the KMS with the same contract as `Decrypt`: the wrapped key is an AEAD
/// ciphertext bound to the key id and the file id (its encryption context), so an edited
/// blob, a blob from another file, or a key id that does not match is refused.
pub struct MockKms {
    master: Aes256GcmSiv,
}

impl MockKms {
    pub fn new() -> Self {
        Self {
            master: Aes256GcmSiv::new_from_slice(&[0x5A; 32]).unwrap(),
        }
    }

    fn aad(key_id: &str, file_id: &FileId) -> Vec<u8> {
        let mut aad = (key_id.len() as u32).to_be_bytes().to_vec();
        aad.extend_from_slice(key_id.as_bytes());
        aad.extend_from_slice(&file_id.0);
        aad
    }

    pub fn wrap(&self, key_id: &str, file_id: &FileId, key: &DataKey) -> Vec<u8> {
        let nonce = [7u8; 12];
        let mut out = nonce.to_vec();
        let aad = Self::aad(key_id, file_id);
        out.extend(
            self.master
                .encrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: key.expose_secret(),
                        aad: &aad,
                    },
                )
                .unwrap(),
        );
        out
    }

    pub fn unwrap(
        &self,
        key_id: &str,
        file_id: &FileId,
        wrapped: &[u8],
    ) -> Result<DataKey, String> {
        if wrapped.len() < 12 {
            return Err("InvalidCiphertextException".into());
        }
        let nonce: [u8; 12] = wrapped[..12].try_into().unwrap();
        let aad = Self::aad(key_id, file_id);
        let plain = self
            .master
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &wrapped[12..],
                    aad: &aad,
                },
            )
            .map_err(|_| "InvalidCiphertextException".to_string())?;
        DataKey::from_slice(&plain).map_err(|e| e.to_string())
    }
}

pub const KEY_ID: &str =
    "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

/// Encrypts `plain` as a new file under `key`, with its key wrapped by `kms`.
pub fn make_file(kms: &MockKms, key: &DataKey, file_id: FileId, plain: &[u8]) -> Vec<u8> {
    make_file_v(kms, key, file_id, plain, kmsfs::format::VERSION)
}

/// [`make_file`] in format `version`.
pub fn make_file_v(
    kms: &MockKms,
    key: &DataKey,
    file_id: FileId,
    plain: &[u8],
    version: u16,
) -> Vec<u8> {
    let cipher = FileCipher::new(key, file_id);
    let slot = KeySlot {
        key_id: KEY_ID.into(),
        wrapped_key: kms.wrap(KEY_ID, &file_id, key),
    };
    let header = file::new_header(&cipher, version, DEFAULT_HEADER_LEN, slot).unwrap();
    file::encrypt_bytes(&cipher, &header, plain).unwrap()
}

/// What reading a ciphertext file through the whole chain gives: header syntax, KMS
/// unwrap of the key slot, key commitment, length, every block.
pub fn read_file(kms: &MockKms, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let (header, _) = kmsfs::format::Header::decode(bytes).map_err(|e| e.kind().to_string())?;
    let key = kms.unwrap(&header.key_id, &header.file_id, &header.wrapped_key)?;
    file::decrypt_bytes(&key, bytes).map_err(|e| e.kind())
}

/// Deterministic, non-repeating test data.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Block `n` of ciphertext file `file` as `nonce || ciphertext || tag`, wherever `layout`
/// keeps them.
pub fn get_block(layout: &kmsfs::format::Layout, file: &[u8], n: u64) -> Vec<u8> {
    use kmsfs::format::{Layout, NONCE_LEN, TAG_LEN};
    let plain = layout.plain_len(file.len() as u64).unwrap();
    let blen = Layout::block_plain_len(plain, n);
    let p = layout.place(n, blen);
    let (a, d, t) = (p.nonce as usize, p.data as usize, p.tag as usize);
    [
        &file[a..a + NONCE_LEN],
        &file[d..d + blen],
        &file[t..t + TAG_LEN],
    ]
    .concat()
}

/// Puts `bytes` (as [`get_block`] gives them) in as block `n` of `file`, growing it (with
/// zeros) if needed.
pub fn put_block(layout: &kmsfs::format::Layout, file: &mut Vec<u8>, n: u64, bytes: &[u8]) {
    use kmsfs::format::{NONCE_LEN, TAG_LEN};
    let blen = bytes.len() - NONCE_LEN - TAG_LEN;
    let p = layout.place(n, blen);
    let (a, d, t) = (p.nonce as usize, p.data as usize, p.tag as usize);
    let end = (d + blen).max(t + TAG_LEN);
    if file.len() < end {
        file.resize(end, 0);
    }
    file[a..a + NONCE_LEN].copy_from_slice(&bytes[..NONCE_LEN]);
    file[d..d + blen].copy_from_slice(&bytes[NONCE_LEN..NONCE_LEN + blen]);
    file[t..t + TAG_LEN].copy_from_slice(&bytes[NONCE_LEN + blen..]);
}
