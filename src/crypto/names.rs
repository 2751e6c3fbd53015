//! Sealing of names, symlink targets and xattr values (`docs/format.md`, "Names").
//!
//! All keys here derive from the volume's names key (a KMS data key unwrapped once per
//! mount). Names are sealed deterministically (AES-256-GCM-SIV with a fixed nonce under a
//! per-directory key), so a lookup needs no listing, equal names in one directory look
//! equal and in two directories differ; being SIV, nothing else leaks. Symlink targets and
//! xattr values get random nonces.

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::CryptoError;
use crate::format::NONCE_LEN;
use crate::secret::DataKey;

/// HKDF label of a directory's name key (salt: the directory id).
pub const LABEL_NAME_KEY: &[u8] = b"kmsfs/v1/name-key";
/// HKDF label of the volume's symlink-target key.
pub const LABEL_SYMLINK_KEY: &[u8] = b"kmsfs/v1/symlink-key";
/// HKDF label of the volume's xattr-value key.
pub const LABEL_XATTR_KEY: &[u8] = b"kmsfs/v1/xattr-key";
/// HKDF label of the volume's names binding key (`docs/format.md`, "Names bound to files").
pub const LABEL_BINDING_KEY: &[u8] = b"kmsfs/v1/name-binding";
/// Associated data of every sealed name.
const NAME_AAD: &[u8] = b"kmsfs/v1/name";

fn derive(names_key: &DataKey, salt: Option<&[u8]>, label: &[u8]) -> Aes256GcmSiv {
    let mut k = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(salt, names_key.expose_secret())
        .expand(label, k.as_mut_slice())
        .expect("32 bytes is a valid HKDF-SHA256 length");
    Aes256GcmSiv::new_from_slice(k.as_slice()).expect("32-byte key")
}

/// The name cipher of one directory.
pub struct NameCipher {
    aead: Aes256GcmSiv,
}

impl NameCipher {
    pub fn new(names_key: &DataKey, dir_id: &[u8; 16]) -> Self {
        Self {
            aead: derive(names_key, Some(dir_id), LABEL_NAME_KEY),
        }
    }

    /// Seals a padded name: ciphertext and tag, deterministic.
    pub fn seal(&self, padded: &[u8]) -> Vec<u8> {
        self.aead
            .encrypt(
                &Nonce::from([0u8; NONCE_LEN]),
                Payload {
                    msg: padded,
                    aad: NAME_AAD,
                },
            )
            .expect("names are far below AES-GCM-SIV's length limit")
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.aead
            .decrypt(
                &Nonce::from([0u8; NONCE_LEN]),
                Payload {
                    msg: sealed,
                    aad: NAME_AAD,
                },
            )
            .map_err(|_| CryptoError::AuthFailed)
    }
}

/// Seals small values (symlink targets, xattr values) with random nonces:
/// `nonce (12) || ciphertext || tag (16)`.
pub struct ValueCipher {
    aead: Aes256GcmSiv,
}

impl ValueCipher {
    pub fn new(names_key: &DataKey, label: &[u8]) -> Self {
        Self {
            aead: derive(names_key, None, label),
        }
    }

    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| CryptoError::Random)?;
        Ok(self.seal_with_nonce(aad, plain, nonce))
    }

    /// [`seal`](Self::seal) with a chosen nonce: for reproducible test vectors only.
    pub fn seal_with_nonce(&self, aad: &[u8], plain: &[u8], nonce: [u8; NONCE_LEN]) -> Vec<u8> {
        let mut out = nonce.to_vec();
        out.extend(
            self.aead
                .encrypt(&Nonce::from(nonce), Payload { msg: plain, aad })
                .expect("values are far below AES-GCM-SIV's length limit"),
        );
        out
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < NONCE_LEN + 16 {
            return Err(CryptoError::AuthFailed);
        }
        let nonce: [u8; NONCE_LEN] = sealed[..NONCE_LEN].try_into().expect("12 bytes");
        self.aead
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &sealed[NONCE_LEN..],
                    aad,
                },
            )
            .map_err(|_| CryptoError::AuthFailed)
    }
}

/// The HMAC key for `label`, derived from the names key.
fn mac_key(names_key: &DataKey, label: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(None, names_key.expose_secret())
        .expand(label, key.as_mut_slice())
        .expect("32 bytes is a valid HKDF-SHA256 length");
    key
}

/// Makes the tags that bind a file to its names: truncated HMAC-SHA256 of the file id,
/// the directory id and the plaintext name, under a key derived from the names key.
pub struct BindingKey {
    key: Zeroizing<[u8; 32]>,
}

impl BindingKey {
    pub fn new(names_key: &DataKey) -> Self {
        Self {
            key: mac_key(names_key, LABEL_BINDING_KEY),
        }
    }

    /// The tag of the file `file_id` under `name` in the directory `dir_id`. The name
    /// comes last, so the fixed-length ids before it make the input unambiguous.
    pub fn tag(&self, file_id: &[u8; 16], dir_id: &[u8; 16], name: &[u8]) -> Tag {
        use hmac::{Hmac, Mac};
        let mut mac =
            <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(self.key.as_slice()).expect("any key");
        mac.update(file_id);
        mac.update(dir_id);
        mac.update(name);
        let full: [u8; 32] = mac.finalize().into_bytes().into();
        full[..16].try_into().expect("16 bytes")
    }
}

type Tag = crate::format::binding::Tag;

/// HKDF label of the key that authenticates kmsfs's own records (rekey's journal).
pub const LABEL_RECORD_KEY: &[u8] = b"kmsfs/v1/record-mac";

/// Authenticates kmsfs's own records in the ciphertext directory: HMAC-SHA256 under a
/// key derived from the names key.
pub struct RecordKey {
    key: Zeroizing<[u8; 32]>,
}

impl RecordKey {
    pub fn new(names_key: &DataKey) -> Self {
        Self {
            key: mac_key(names_key, LABEL_RECORD_KEY),
        }
    }

    pub fn mac(&self, record: &[u8]) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        let mut mac =
            <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(self.key.as_slice()).expect("any key");
        mac.update(record);
        mac.finalize().into_bytes().into()
    }
}

/// HKDF label of the key that authenticates the volume's configuration.
pub const LABEL_CONFIG_KEY: &[u8] = b"kmsfs/v1/config-mac";

/// The MAC of a volume configuration's bytes (`docs/format.md`, "The configuration"):
/// HMAC-SHA256 under a key derived from the names key, which only the KMS unwraps.
pub fn config_mac(names_key: &DataKey, config: &[u8]) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    let key = mac_key(names_key, LABEL_CONFIG_KEY);
    let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key.as_slice()).expect("any key");
    mac.update(config);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> DataKey {
        DataKey::from_slice(&[b; 32]).unwrap()
    }

    #[test]
    fn binding_tags_depend_on_key_file_directory_and_name() {
        let k = BindingKey::new(&key(1));
        let t = k.tag(&[1; 16], &[2; 16], b"a");
        assert_eq!(t, k.tag(&[1; 16], &[2; 16], b"a"));
        assert_ne!(t, k.tag(&[9; 16], &[2; 16], b"a"));
        assert_ne!(t, k.tag(&[1; 16], &[9; 16], b"a"));
        assert_ne!(t, k.tag(&[1; 16], &[2; 16], b"b"));
        assert_ne!(t, BindingKey::new(&key(2)).tag(&[1; 16], &[2; 16], b"a"));
    }

    #[test]
    fn names_are_deterministic_per_directory_and_authenticated() {
        let a = NameCipher::new(&key(1), &[1; 16]);
        let b = NameCipher::new(&key(1), &[2; 16]);
        let n = crate::format::names::pad_name(b"report.pdf");
        assert_eq!(a.seal(&n), a.seal(&n));
        assert_ne!(a.seal(&n), b.seal(&n));
        assert_eq!(a.open(&a.seal(&n)).unwrap(), n);
        assert!(b.open(&a.seal(&n)).is_err());
        let mut t = a.seal(&n);
        t[3] ^= 1;
        assert!(a.open(&t).is_err());
        assert!(NameCipher::new(&key(2), &[1; 16])
            .open(&a.seal(&n))
            .is_err());
    }

    #[test]
    fn values_are_bound_to_their_associated_data() {
        let v = ValueCipher::new(&key(1), LABEL_XATTR_KEY);
        let s = v.seal(b"file-a", b"blue").unwrap();
        assert_ne!(s, v.seal(b"file-a", b"blue").unwrap(), "random nonces");
        assert_eq!(v.open(b"file-a", &s).unwrap(), b"blue");
        assert!(v.open(b"file-b", &s).is_err());
        assert!(ValueCipher::new(&key(1), LABEL_SYMLINK_KEY)
            .open(b"file-a", &s)
            .is_err());
        assert!(v.open(b"file-a", &s[..10]).is_err());
    }
}
