//! Key derivation and the sealing and opening of one block, per `docs/format.md`.
//!
//! No IO and no format parsing beyond the fixed bytes the commitment covers. Errors are
//! deliberately opaque: a block that fails to open says only that, never why; callers
//! (the file layer, the audit log) say which file and block.
//!
//! Key bytes come in as a [`DataKey`] from `secret` and leave only as cipher objects held
//! by [`FileCipher`]; derived key bytes are zeroized as soon as the cipher is built.

mod names;

pub use names::{
    config_mac, BindingKey, NameCipher, RecordKey, ValueCipher, LABEL_BINDING_KEY, LABEL_NAME_KEY,
    LABEL_SYMLINK_KEY, LABEL_XATTR_KEY,
};

use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce, Tag};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::format::slots::LengthChange;
use crate::format::{FileId, Header, BLOCK_OVERHEAD, COMMITMENT_LEN, NONCE_LEN, TAG_LEN};
use crate::secret::DataKey;

/// HKDF label of the per-file block key (format version 1).
pub const LABEL_BLOCK_KEY: &[u8] = b"kmsfs/v1/block-key";
/// HKDF label of the per-file header-commitment key (format version 1).
pub const LABEL_HEADER_COMMITMENT: &[u8] = b"kmsfs/v1/header-commitment";
/// HKDF label of a file's data key derived from its bucket key (`docs/format.md`, "Bucket
/// keys").
pub const LABEL_BUCKET_FILE_KEY: &[u8] = b"kmsfs/v1/bucket-file-key";
/// What version 3's length record's mac covers first (not a key label).
pub const LABEL_LENGTH_CHANGE: &[u8] = b"kmsfs/v3/length-change";

/// Bytes of a block's associated data: file id, block number, final flag.
const AAD_LEN: usize = 16 + 8 + 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// A block failed authentication. Deliberately says nothing more.
    #[error("authentication failed")]
    AuthFailed,
    /// The key commitment in the header does not match the data key.
    #[error("the data key does not belong to this file (key commitment mismatch)")]
    WrongKey,
    #[error("the system random number generator failed")]
    Random,
    #[error("buffer length mismatch: expected {expected}, got {got}")]
    BadLength { expected: usize, got: usize },
}

/// The data key of file `file_id` made under a bucket whose key is `bucket_key`:
/// HKDF-SHA256 with the file id as salt and [`LABEL_BUCKET_FILE_KEY`]. It is then used as
/// any data key ([`FileCipher::new`]).
pub fn bucket_file_key(bucket_key: &DataKey, file_id: FileId) -> DataKey {
    let hk = Hkdf::<Sha256>::new(Some(&file_id.0), bucket_key.expose_secret());
    let mut key = Zeroizing::new([0u8; 32]);
    hk.expand(LABEL_BUCKET_FILE_KEY, key.as_mut_slice())
        .expect("32 bytes is a valid HKDF-SHA256 length");
    DataKey::from_slice(key.as_slice()).expect("32 bytes")
}

/// `n` fresh random nonces from one call to the system generator.
pub fn fresh_nonces(n: usize) -> Result<Vec<[u8; NONCE_LEN]>, CryptoError> {
    let mut nonces = vec![[0u8; NONCE_LEN]; n];
    getrandom::fill(nonces.as_flattened_mut()).map_err(|_| CryptoError::Random)?;
    Ok(nonces)
}

/// The ciphers of one file, derived from its data key and file id.
pub struct FileCipher {
    file_id: FileId,
    aead: Aes256GcmSiv,
    commit_key: Zeroizing<[u8; 32]>,
}

impl FileCipher {
    pub fn new(data_key: &DataKey, file_id: FileId) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(&file_id.0), data_key.expose_secret());
        let mut block_key = Zeroizing::new([0u8; 32]);
        let mut commit_key = Zeroizing::new([0u8; 32]);
        hk.expand(LABEL_BLOCK_KEY, block_key.as_mut_slice())
            .expect("32 bytes is a valid HKDF-SHA256 length");
        hk.expand(LABEL_HEADER_COMMITMENT, commit_key.as_mut_slice())
            .expect("32 bytes is a valid HKDF-SHA256 length");
        let aead = Aes256GcmSiv::new_from_slice(block_key.as_slice()).expect("32-byte key");
        Self {
            file_id,
            aead,
            commit_key,
        }
    }

    pub fn file_id(&self) -> FileId {
        self.file_id
    }

    /// The commitment a header of format `version`, with `flags`, of `header_len` bytes
    /// for this file must carry.
    pub fn commitment(&self, version: u16, flags: u32, header_len: u32) -> [u8; COMMITMENT_LEN] {
        let mut mac = self.mac();
        mac.update(&Header::committed_bytes(
            version,
            flags,
            header_len,
            &self.file_id,
        ));
        mac.finalize().into_bytes().into()
    }

    /// Checks, in constant time, that `header` was written with this data key and that its
    /// fixed fields are unedited.
    pub fn verify_commitment(&self, header: &Header) -> Result<(), CryptoError> {
        if header.file_id != self.file_id {
            return Err(CryptoError::WrongKey);
        }
        let mut mac = self.mac();
        mac.update(&Header::committed_bytes(
            header.version,
            header.flags,
            header.header_len,
            &header.file_id,
        ));
        mac.verify_slice(&header.commitment)
            .map_err(|_| CryptoError::WrongKey)
    }

    /// The mac of version 3's length record naming `change` (`docs/format.md`, "The length
    /// record"): under the commitment key, after a label of its own, so that it can never
    /// equal a header's commitment.
    pub fn length_mac(&self, change: &LengthChange) -> [u8; 32] {
        self.length_hmac(change).finalize().into_bytes().into()
    }

    /// Checks, in constant time, that `mac` is the mac of `change` for this file.
    pub fn length_mac_checks(&self, change: &LengthChange, mac: &[u8; 32]) -> bool {
        self.length_hmac(change).verify_slice(mac).is_ok()
    }

    fn length_hmac(&self, change: &LengthChange) -> Hmac<Sha256> {
        let mut mac = self.mac();
        mac.update(LABEL_LENGTH_CHANGE);
        mac.update(&self.file_id.0);
        mac.update(&change.from.to_be_bytes());
        mac.update(&change.to.to_be_bytes());
        mac
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(self.commit_key.as_slice())
            .expect("HMAC takes any key length")
    }

    fn aad(&self, block_no: u64, is_final: bool) -> [u8; AAD_LEN] {
        let mut aad = [0u8; AAD_LEN];
        aad[..16].copy_from_slice(&self.file_id.0);
        aad[16..24].copy_from_slice(&block_no.to_be_bytes());
        aad[24] = u8::from(is_final);
        aad
    }

    /// Seals `plain` as block `block_no` into `out` (`plain.len() + 28` bytes: nonce,
    /// ciphertext, tag) under a fresh random nonce.
    pub fn seal_block(
        &self,
        block_no: u64,
        is_final: bool,
        plain: &[u8],
        out: &mut [u8],
    ) -> Result<(), CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| CryptoError::Random)?;
        self.seal_block_with_nonce(block_no, is_final, plain, nonce, out)
    }

    /// [`seal_block`](Self::seal_block) with a caller-chosen nonce, so that the nonces of
    /// many blocks can come from one call to [`fresh_nonces`]. The format requires a fresh
    /// random nonce for every write; fixed nonces are for reproducible test vectors only.
    pub fn seal_block_with_nonce(
        &self,
        block_no: u64,
        is_final: bool,
        plain: &[u8],
        nonce: [u8; NONCE_LEN],
        out: &mut [u8],
    ) -> Result<(), CryptoError> {
        let expected = plain.len() + BLOCK_OVERHEAD as usize;
        if out.len() != expected {
            return Err(CryptoError::BadLength {
                expected,
                got: out.len(),
            });
        }
        let (nonce_out, rest) = out.split_at_mut(NONCE_LEN);
        let (body, tag_out) = rest.split_at_mut(plain.len());
        nonce_out.copy_from_slice(&nonce);
        let tag = self.seal_parts(block_no, is_final, plain, &nonce, body)?;
        tag_out.copy_from_slice(&tag);
        Ok(())
    }

    /// Seals `plain` as block `block_no` under `nonce` into `body` (as long as `plain`),
    /// returning the tag: for layouts that keep nonce and tag apart from the ciphertext.
    pub fn seal_parts(
        &self,
        block_no: u64,
        is_final: bool,
        plain: &[u8],
        nonce: &[u8; NONCE_LEN],
        body: &mut [u8],
    ) -> Result<[u8; TAG_LEN], CryptoError> {
        let (expected, got) = (plain.len(), body.len());
        let buf = aes_gcm_siv::aead::inout::InOutBuf::new(plain, body)
            .map_err(|_| CryptoError::BadLength { expected, got })?;
        let tag = self
            .aead
            .encrypt_inout_detached(&Nonce::from(*nonce), &self.aad(block_no, is_final), buf)
            .map_err(|_| CryptoError::AuthFailed)?;
        Ok(tag.into())
    }

    /// Opens a sealed block (nonce, ciphertext, tag) into `out` (`sealed.len() - 28` bytes).
    pub fn open_block(
        &self,
        block_no: u64,
        is_final: bool,
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<(), CryptoError> {
        let plain_len = sealed
            .len()
            .checked_sub(BLOCK_OVERHEAD as usize)
            .ok_or(CryptoError::AuthFailed)?;
        if out.len() != plain_len {
            return Err(CryptoError::BadLength {
                expected: plain_len,
                got: out.len(),
            });
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (body, tag) = rest.split_at(plain_len);
        let nonce: &[u8; NONCE_LEN] = nonce.try_into().expect("12 bytes");
        let tag: &[u8; TAG_LEN] = tag.try_into().expect("16 bytes");
        self.open_parts(block_no, is_final, nonce, body, tag, out)
    }

    /// Opens block `block_no` from its parts into `out` (as long as `body`). On failure
    /// `out` is zeroed: unauthenticated plaintext is never handed out.
    pub fn open_parts(
        &self,
        block_no: u64,
        is_final: bool,
        nonce: &[u8; NONCE_LEN],
        body: &[u8],
        tag: &[u8; TAG_LEN],
        out: &mut [u8],
    ) -> Result<(), CryptoError> {
        let (expected, got) = (body.len(), out.len());
        let buf = aes_gcm_siv::aead::inout::InOutBuf::new(body, out)
            .map_err(|_| CryptoError::BadLength { expected, got })?;
        let result = self.aead.decrypt_inout_detached(
            &Nonce::from(*nonce),
            &self.aad(block_no, is_final),
            buf,
            &Tag::from(*tag),
        );
        if result.is_err() {
            // Never hand out unauthenticated plaintext, even in a buffer the caller drops.
            out.fill(0);
            return Err(CryptoError::AuthFailed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cipher(key_byte: u8, id_byte: u8) -> FileCipher {
        FileCipher::new(
            &DataKey::from_slice(&[key_byte; 32]).unwrap(),
            FileId([id_byte; 16]),
        )
    }

    fn seal(c: &FileCipher, block_no: u64, fin: bool, plain: &[u8]) -> Vec<u8> {
        let mut out = vec![0; plain.len() + 28];
        c.seal_block(block_no, fin, plain, &mut out).unwrap();
        out
    }

    fn open(
        c: &FileCipher,
        block_no: u64,
        fin: bool,
        sealed: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut out = vec![0; sealed.len().saturating_sub(28)];
        c.open_block(block_no, fin, sealed, &mut out).map(|_| out)
    }

    #[test]
    fn labels_are_versioned_and_distinct() {
        assert_ne!(LABEL_BLOCK_KEY, LABEL_HEADER_COMMITMENT);
        assert!(LABEL_BLOCK_KEY.starts_with(b"kmsfs/v1/"));
        assert!(LABEL_HEADER_COMMITMENT.starts_with(b"kmsfs/v1/"));
    }

    #[test]
    fn every_aad_field_and_the_key_matter() {
        let c = cipher(1, 2);
        let sealed = seal(&c, 5, false, b"hello block");
        assert_eq!(open(&c, 5, false, &sealed).unwrap(), b"hello block");
        assert_eq!(open(&c, 6, false, &sealed), Err(CryptoError::AuthFailed));
        assert_eq!(open(&c, 5, true, &sealed), Err(CryptoError::AuthFailed));
        assert_eq!(
            open(&cipher(1, 3), 5, false, &sealed),
            Err(CryptoError::AuthFailed)
        );
        assert_eq!(
            open(&cipher(9, 2), 5, false, &sealed),
            Err(CryptoError::AuthFailed)
        );
        assert_eq!(
            open(&c, 5, false, &sealed[..20]),
            Err(CryptoError::AuthFailed)
        );
        assert_eq!(open(&c, 5, false, &[]), Err(CryptoError::AuthFailed));
    }

    #[test]
    fn a_bucket_file_key_is_hkdf_of_the_bucket_key_salted_by_the_file_id() {
        let bucket = DataKey::from_slice(&[0x42; 32]).unwrap();
        let k1 = bucket_file_key(&bucket, FileId([1; 16]));
        let k2 = bucket_file_key(&bucket, FileId([2; 16]));
        assert!(!k1.same_as(&k2), "two files of a bucket share a key");
        assert!(!k1.same_as(&bucket));
        // RFC 5869 by hand: PRK = HMAC(salt, IKM), OKM = HMAC(PRK, info || 0x01).
        let hmac = |key: &[u8], parts: &[&[u8]]| -> Vec<u8> {
            let mut m = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key).unwrap();
            for p in parts {
                m.update(p);
            }
            m.finalize().into_bytes().to_vec()
        };
        let prk = hmac(&[1; 16], &[&[0x42; 32]]);
        let okm = hmac(&prk, &[LABEL_BUCKET_FILE_KEY, &[1]]);
        assert_eq!(k1.expose_secret().as_slice(), okm.as_slice());
        assert_eq!(LABEL_BUCKET_FILE_KEY, b"kmsfs/v1/bucket-file-key");
    }

    #[test]
    fn nonces_are_fresh() {
        let c = cipher(1, 2);
        assert_ne!(seal(&c, 0, true, b"same"), seal(&c, 0, true, b"same"));
    }

    #[test]
    fn commitment_binds_key_file_id_header_len_and_version() {
        let c = cipher(1, 2);
        let header = |len: u32, id: u8, commitment| Header {
            version: 1,
            flags: 0,
            header_len: len,
            file_id: FileId([id; 16]),
            commitment,
            key_id: "k".into(),
            wrapped_key: vec![1],
            bucket_id: None,
        };
        let good = c.commitment(1, 0, 1024);
        assert_eq!(c.verify_commitment(&header(1024, 2, good)), Ok(()));
        assert_eq!(
            c.verify_commitment(&header(2048, 2, good)),
            Err(CryptoError::WrongKey)
        );
        assert_eq!(
            c.verify_commitment(&header(1024, 3, good)),
            Err(CryptoError::WrongKey)
        );
        assert_eq!(
            cipher(9, 2).verify_commitment(&header(1024, 2, good)),
            Err(CryptoError::WrongKey)
        );
        // A version-1 file cannot be passed off as version 2 (its blocks would be read
        // from other places), nor the other way round.
        let mut v2 = header(1024, 2, good);
        v2.version = 2;
        assert_eq!(c.verify_commitment(&v2), Err(CryptoError::WrongKey));
        v2.commitment = c.commitment(2, 0, 1024);
        assert_eq!(c.verify_commitment(&v2), Ok(()));
    }

    #[test]
    fn parts_and_whole_blocks_agree() {
        let c = cipher(1, 2);
        let nonce = [7u8; 12];
        let mut whole = vec![0u8; 5 + 28];
        c.seal_block_with_nonce(3, true, b"hello", nonce, &mut whole)
            .unwrap();
        let mut body = [0u8; 5];
        let tag = c.seal_parts(3, true, b"hello", &nonce, &mut body).unwrap();
        assert_eq!(&whole[..12], &nonce);
        assert_eq!(&whole[12..17], &body);
        assert_eq!(&whole[17..], &tag);
        let mut out = [0u8; 5];
        c.open_parts(3, true, &nonce, &body, &tag, &mut out)
            .unwrap();
        assert_eq!(&out, b"hello");
        let mut bad = tag;
        bad[0] ^= 1;
        assert_eq!(
            c.open_parts(3, true, &nonce, &body, &bad, &mut out),
            Err(CryptoError::AuthFailed)
        );
        assert_eq!(out, [0u8; 5], "no unauthenticated plaintext on failure");
        let mut short = [0u8; 4];
        assert!(c
            .open_parts(3, true, &nonce, &body, &tag, &mut short)
            .is_err());
    }

    /// RFC 5869-style check that the derivation is HKDF-SHA256 with the documented
    /// salt and labels: recompute the commitment by hand.
    #[test]
    fn commitment_matches_the_documented_derivation() {
        let key = [0x11u8; 32];
        let id = FileId([0x22; 16]);
        let hk = Hkdf::<Sha256>::new(Some(&id.0), &key);
        let mut ck = [0u8; 32];
        hk.expand(b"kmsfs/v1/header-commitment", &mut ck).unwrap();
        let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&ck).unwrap();
        mac.update(&Header::committed_bytes(1, 0, 1024, &id));
        let expected: [u8; 32] = mac.finalize().into_bytes().into();
        let c = FileCipher::new(&DataKey::from_slice(&key).unwrap(), id);
        assert_eq!(c.commitment(1, 0, 1024), expected);
    }

    proptest! {
        #[test]
        fn seal_open_round_trip(
            plain in proptest::collection::vec(any::<u8>(), 0..=4096),
            block_no in any::<u64>(),
            fin in any::<bool>(),
            flip in any::<usize>(),
        ) {
            let c = cipher(7, 8);
            let mut sealed = seal(&c, block_no, fin, &plain);
            prop_assert_eq!(open(&c, block_no, fin, &sealed).unwrap(), plain);
            let bit = flip % (sealed.len() * 8);
            sealed[bit / 8] ^= 1 << (bit % 8);
            prop_assert_eq!(open(&c, block_no, fin, &sealed), Err(CryptoError::AuthFailed));
        }
    }
}
