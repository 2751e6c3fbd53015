//! Code shared by the integration tests: test data, block surgery on ciphertext files, and
//! ciphertext files made and read back through the in-process local KMS
//! (`kmsfs::kms::engine::Engine`), the same engine `kmsfs kms serve` runs. Nothing here
//! mounts or touches a volume directory.
#![allow(dead_code)]

use kmsfs::crypto::FileCipher;
use kmsfs::file::{self, KeySlot};
use kmsfs::format::{FileId, DEFAULT_HEADER_LEN};
use kmsfs::kms::engine::Engine;
use kmsfs::kms::{EncryptionContext, Kms};
use kmsfs::secret::{DataKey, SecretBytes};

/// A key id for headers whose key is never unwrapped (tests that hold the data key).
pub const KEY_ID: &str =
    "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

/// The volume id that test files' data keys are bound to, as a volume binds them.
pub const VOLUME_ID: &str = "00000000-0000-4000-8000-00000000ab1e";

/// The local KMS, in memory, with one key, used the way a volume uses a KMS: each file's
/// data key is wrapped under that key with the volume's and the file's ids as encryption
/// context (`kmsfs::volume::context`), so an edited blob, a blob from another file or a
/// header naming another key is refused by `Decrypt`.
pub struct TestKms {
    engine: Engine,
    key_arn: String,
}

impl TestKms {
    pub fn new() -> Self {
        let engine = Engine::in_memory();
        let out = engine.call("CreateKey", b"{}").expect("CreateKey");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let key_arn = v["KeyMetadata"]["Arn"].as_str().unwrap().to_owned();
        Self { engine, key_arn }
    }

    /// The ARN of the KMS key, as file headers name it.
    pub fn key_arn(&self) -> &str {
        &self.key_arn
    }

    fn context(file_id: &FileId) -> EncryptionContext {
        kmsfs::volume::context(VOLUME_ID, file_id)
    }

    /// A fresh data key for file `file_id` (GenerateDataKey), and its key slot.
    pub fn generate(&self, file_id: &FileId) -> (DataKey, KeySlot) {
        let g = self
            .engine
            .generate_data_key(&self.key_arn, &Self::context(file_id))
            .expect("GenerateDataKey");
        let slot = KeySlot {
            key_id: g.key_arn,
            wrapped_key: g.wrapped,
        };
        (g.key, slot)
    }

    /// The key slot of file `file_id` for a data key the test chose (Encrypt of its bytes,
    /// which Decrypt opens like a generated key's blob): how two files get the same key.
    pub fn wrap(&self, file_id: &FileId, key: &DataKey) -> KeySlot {
        let plain = SecretBytes::from_slice(key.expose_secret()).unwrap();
        let wrapped = self
            .engine
            .encrypt(&self.key_arn, &plain, &Self::context(file_id))
            .expect("Encrypt");
        KeySlot {
            key_id: self.key_arn.clone(),
            wrapped_key: wrapped,
        }
    }

    /// Decrypt of a header's key slot, or the AWS name of the error.
    pub fn unwrap(
        &self,
        key_id: &str,
        file_id: &FileId,
        wrapped: &[u8],
    ) -> Result<DataKey, String> {
        self.engine
            .decrypt(key_id, wrapped, &Self::context(file_id))
            .map_err(|e| e.aws_code().to_owned())
    }
}

/// Encrypts `plain` as a new file of format `version` with a data key from `kms`; returns
/// the file and its key.
pub fn new_file_v(
    kms: &TestKms,
    file_id: FileId,
    plain: &[u8],
    version: u16,
) -> (Vec<u8>, DataKey) {
    let (key, slot) = kms.generate(&file_id);
    (encrypt(&key, file_id, slot, plain, version), key)
}

/// Encrypts `plain` as a new file of format `version` under `key`, chosen by the test.
pub fn make_file_v(
    kms: &TestKms,
    key: &DataKey,
    file_id: FileId,
    plain: &[u8],
    version: u16,
) -> Vec<u8> {
    let slot = kms.wrap(&file_id, key);
    encrypt(key, file_id, slot, plain, version)
}

fn encrypt(key: &DataKey, file_id: FileId, slot: KeySlot, plain: &[u8], version: u16) -> Vec<u8> {
    let cipher = FileCipher::new(key, file_id);
    let header = file::new_header(&cipher, (version, false), DEFAULT_HEADER_LEN, slot).unwrap();
    file::encrypt_bytes(&cipher, &header, plain).unwrap()
}

/// What reading a ciphertext file through the whole chain gives: header syntax, KMS
/// Decrypt of the key slot, key commitment, length, every block. The error is the format's
/// or file's `kind()`, or the KMS's AWS error name.
pub fn read_file(kms: &TestKms, bytes: &[u8]) -> Result<Vec<u8>, String> {
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
    use kmsfs::format::{NONCE_LEN, TAG_LEN};
    let plain = layout.plain_len(file.len() as u64).unwrap();
    let blen = layout.block_plain_len(plain, n);
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

/// The file at `path` open read-write, made if missing and never truncated.
pub fn rw(path: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap()
}
