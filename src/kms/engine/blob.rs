//! The local KMS ciphertext blob: pure encode/decode and one AEAD call. Normative
//! description in `docs/kms.md`.
//!
//! ```text
//! offset size  field
//! 0      4     magic "KKMS"
//! 4      1     blob format version (1)
//! 5      16    key id (the KMS key's UUID, binary)
//! 21     4     backing-key version, big-endian u32, 1-based (rotation adds one)
//! 25     12    nonce (random)
//! 37     n+16  AES-256-GCM-SIV(backing key, nonce, plaintext, aad) with its tag
//! aad = bytes 0..25 || EncryptionContext::canonical_bytes()
//! ```
//! The header travels in the clear so any key version can be found without trying them
//! all, and it is authenticated so it cannot be swapped. Every failure to open is the same
//! opaque `InvalidCiphertext`.

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use zeroize::Zeroizing;

use crate::kms::{EncryptionContext, KmsError};
use crate::secret::{DataKey, SecretBytes};

pub const MAGIC: &[u8; 4] = b"KKMS";
pub const FORMAT_VERSION: u8 = 1;
pub const HEADER_LEN: usize = 25;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Bytes a blob adds to its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;

/// The clear part of a blob: which key and which of its backing versions sealed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobHeader {
    pub key_uuid: [u8; 16],
    pub key_version: u32,
}

impl BlobHeader {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..4].copy_from_slice(MAGIC);
        out[4] = FORMAT_VERSION;
        out[5..21].copy_from_slice(&self.key_uuid);
        out[21..25].copy_from_slice(&self.key_version.to_be_bytes());
        out
    }

    /// Reads the header of `blob`, refusing anything that cannot be one of ours.
    pub fn decode(blob: &[u8]) -> Result<Self, KmsError> {
        if blob.len() < OVERHEAD || &blob[..4] != MAGIC || blob[4] != FORMAT_VERSION {
            return Err(invalid());
        }
        let key_version = u32::from_be_bytes(blob[21..25].try_into().expect("4 bytes"));
        if key_version == 0 {
            return Err(invalid());
        }
        Ok(Self {
            key_uuid: blob[5..21].try_into().expect("16 bytes"),
            key_version,
        })
    }
}

fn invalid() -> KmsError {
    KmsError::InvalidCiphertext("the ciphertext is invalid".into())
}

fn aad(header: &[u8; HEADER_LEN], ctx: &EncryptionContext) -> Vec<u8> {
    let mut aad = header.to_vec();
    aad.extend_from_slice(&ctx.canonical_bytes());
    aad
}

/// Seals `plaintext` under one backing key version.
pub fn seal(
    header: BlobHeader,
    backing: &DataKey,
    plaintext: &[u8],
    ctx: &EncryptionContext,
) -> Result<Vec<u8>, KmsError> {
    let head = header.encode();
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| KmsError::internal(format!("random: {e}")))?;
    let cipher = Aes256GcmSiv::new_from_slice(backing.expose_secret()).expect("32-byte key");
    let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
    out.extend_from_slice(&head);
    out.extend_from_slice(&nonce);
    let nonce_arr: &Nonce = (&nonce[..]).try_into().expect("12 bytes");
    let sealed = cipher
        .encrypt(
            nonce_arr,
            Payload {
                msg: plaintext,
                aad: &aad(&head, ctx),
            },
        )
        .map_err(|_| KmsError::internal("encryption failed"))?;
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens a blob whose header was already decoded and whose backing key was looked up.
pub fn open(
    blob: &[u8],
    backing: &DataKey,
    ctx: &EncryptionContext,
) -> Result<SecretBytes, KmsError> {
    let header = BlobHeader::decode(blob)?;
    let head = header.encode();
    let nonce = &blob[HEADER_LEN..HEADER_LEN + NONCE_LEN];
    let nonce: &Nonce = nonce.try_into().expect("12 bytes");
    let cipher = Aes256GcmSiv::new_from_slice(backing.expose_secret()).expect("32-byte key");
    let plain = Zeroizing::new(
        cipher
            .decrypt(
                nonce,
                Payload {
                    msg: &blob[HEADER_LEN + NONCE_LEN..],
                    aad: &aad(&head, ctx),
                },
            )
            .map_err(|_| invalid())?,
    );
    SecretBytes::from_slice(&plain).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> BlobHeader {
        BlobHeader {
            key_uuid: [7; 16],
            key_version: 3,
        }
    }

    #[test]
    fn round_trip_and_layout() {
        let key = DataKey::generate().unwrap();
        let ctx = EncryptionContext::new().with("file", "a");
        let blob = seal(header(), &key, b"secret", &ctx).unwrap();
        assert_eq!(blob.len(), 6 + OVERHEAD);
        assert_eq!(&blob[..5], b"KKMS\x01");
        assert_eq!(&blob[21..25], &[0, 0, 0, 3]);
        assert_eq!(BlobHeader::decode(&blob).unwrap(), header());
        assert_eq!(open(&blob, &key, &ctx).unwrap().expose_secret(), b"secret");
    }

    #[test]
    fn any_change_is_refused() {
        let key = DataKey::generate().unwrap();
        let ctx = EncryptionContext::new().with("a", "bc");
        let blob = seal(header(), &key, b"secret", &ctx).unwrap();
        let other_ctx = EncryptionContext::new().with("ab", "c");
        assert!(open(&blob, &key, &other_ctx).is_err());
        assert!(open(&blob, &key, &EncryptionContext::new()).is_err());
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 1;
            assert!(
                matches!(open(&bad, &key, &ctx), Err(KmsError::InvalidCiphertext(_))),
                "flip at byte {i} accepted"
            );
        }
        assert!(open(&blob[..blob.len() - 1], &key, &ctx).is_err());
        assert!(BlobHeader::decode(&blob[..OVERHEAD - 1]).is_err());
    }
}
