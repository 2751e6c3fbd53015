//! Key management: the [`Kms`] trait every backend implements, its error type, and the
//! backends themselves.
//!
//! The trait is deliberately small and synchronous (generate a data key, decrypt a wrapped
//! key, re-encrypt under another key, encrypt a small secret), shaped like age's
//! `Recipient::wrap_file_key` / `Identity::unwrap_stanza`, and object-safe so decorators
//! can wrap any backend: [`crate::key_cache::KeyCache`] remembers unwrapped keys, and
//! [`metered::MeteredKms`] counts calls and their latency (for `kmsfs status`, and for
//! tests that check how often a layer above reaches the KMS).
//!
//! Backends:
//! - [`client::HttpKms`]: AWS KMS, or anything speaking its JSON 1.1 protocol (such as our
//!   own server), over HTTPS with SigV4.
//! - [`engine::Engine`]: the local KMS itself, in-process; [`server`] puts it behind HTTP.
//! - [`transit::TransitKms`]: OpenBao's or Vault's Transit engine.
//!
//! This module owns plaintext key bytes only on their way between the wire and
//! [`crate::secret`]; it never logs them and never puts them in an error. It knows nothing
//! about files, blocks or FUSE.

pub mod budget;
pub mod ca_bundle;
pub mod client;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod engine;
mod error;
pub mod metered;
mod provider_http;
pub mod retry;
pub mod server;
pub mod sigv4;
pub mod transit;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::secret::{DataKey, SecretBytes};
pub use error::KmsError;

/// The AWS KMS encryption context: string pairs bound to a ciphertext. Decryption must
/// present exactly the same pairs. Kept sorted so its canonical encoding is unique.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EncryptionContext(pub BTreeMap<String, String>);

impl EncryptionContext {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a pair, builder style.
    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.0.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Unambiguous bytes for use as associated data: a big-endian u32 pair count, then per
    /// pair (sorted by key) a u32 length and the key bytes, a u32 length and the value
    /// bytes. `{"a":"bc"}` and `{"ab":"c"}` therefore never collide.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.0.len() as u32).to_be_bytes());
        for (k, v) in &self.0 {
            for part in [k, v] {
                out.extend_from_slice(&(part.len() as u32).to_be_bytes());
                out.extend_from_slice(part.as_bytes());
            }
        }
        out
    }
}

/// A fresh data key: the plaintext (locked memory) and the KMS ciphertext to store.
#[derive(Debug)]
pub struct GeneratedDataKey {
    pub key: DataKey,
    pub wrapped: Vec<u8>,
    /// ARN of the KMS key that wrapped it; store this in the file header.
    pub key_arn: String,
}

/// Where [`Kms::generate_data_keys`] hands each key: the index of its context, and the key.
pub type EachKey<'a> = &'a mut dyn FnMut(usize, Result<GeneratedDataKey, KmsError>);

/// One key for [`Kms::decrypt_many`] to unwrap: what [`Kms::decrypt`] takes.
#[derive(Debug, Clone, Copy)]
pub struct Unwrap<'a> {
    pub key_id: &'a str,
    pub wrapped: &'a [u8],
    pub ctx: &'a EncryptionContext,
}

/// Where [`Kms::decrypt_many`] hands each key: the index of its request, and the key.
pub type EachUnwrapped<'a> = &'a mut dyn FnMut(usize, Result<DataKey, KmsError>);

/// A KMS as kmsfs needs it. Implementations must be callable from many threads at once.
pub trait Kms: Send + Sync {
    /// A new 256-bit data key under `key_id` (id, ARN, alias name or alias ARN).
    fn generate_data_key(
        &self,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<GeneratedDataKey, KmsError>;

    /// One new data key per context, each as [`Kms::generate_data_key`] would make it,
    /// handed to `each` with the context's index as soon as it is made: once per context,
    /// in any order. A client of a remote KMS runs the calls at the same time (the
    /// data-key pool asks for its keys this way, from a few threads instead of one thread
    /// per call, and pools each key as it comes); by default they run one after another.
    /// Every decorator must pass it on to its inner KMS, or the calls are serialized.
    fn generate_data_keys(&self, key_id: &str, contexts: &[EncryptionContext], each: EachKey<'_>) {
        for (i, ctx) in contexts.iter().enumerate() {
            each(i, self.generate_data_key(key_id, ctx));
        }
    }

    /// Unwraps a data key. `key_id` is the ARN from the file header; a blob made under a
    /// different key is refused with [`KmsError::IncorrectKey`].
    fn decrypt(
        &self,
        key_id: &str,
        wrapped: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<DataKey, KmsError>;

    /// Unwraps every key of `requests`, each as [`Kms::decrypt`] would, handed to `each`
    /// with the request's index as soon as it is unwrapped: once per request, in any order.
    /// Like [`Kms::generate_data_keys`], a client of a remote KMS runs the calls at the same
    /// time (the mount unwraps the keys of the files a reader is about to open this way)
    /// and every decorator must pass it on.
    fn decrypt_many(&self, requests: &[Unwrap<'_>], each: EachUnwrapped<'_>) {
        for (i, r) in requests.iter().enumerate() {
            each(i, self.decrypt(r.key_id, r.wrapped, r.ctx));
        }
    }

    /// Moves a wrapped key under `dest_key_id` without the plaintext leaving the KMS.
    /// Returns the new blob and the destination key's ARN.
    fn re_encrypt(
        &self,
        wrapped: &[u8],
        ctx: &EncryptionContext,
        source_key_id: &str,
        dest_key_id: &str,
    ) -> Result<(Vec<u8>, String), KmsError>;

    /// Encrypts a small secret (at most 4096 bytes).
    fn encrypt(
        &self,
        key_id: &str,
        plaintext: &SecretBytes,
        ctx: &EncryptionContext,
    ) -> Result<Vec<u8>, KmsError>;

    /// Whether `wrapped` (under `key_id`) is wrapped under the key's newest version, so
    /// that moving it to the same key has nothing to do. Only a KMS whose ciphertexts show
    /// their key version to the client (Transit's `vault:vN:`) can say no; AWS re-wraps
    /// under a rotated key's newest material by itself, so its blobs are always current.
    fn is_current(&self, key_id: &str, wrapped: &[u8]) -> Result<bool, KmsError> {
        let _ = (key_id, wrapped);
        Ok(true)
    }
}

impl<K: Kms + ?Sized> Kms for Arc<K> {
    fn generate_data_key(
        &self,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<GeneratedDataKey, KmsError> {
        (**self).generate_data_key(key_id, ctx)
    }
    fn generate_data_keys(&self, key_id: &str, contexts: &[EncryptionContext], each: EachKey<'_>) {
        (**self).generate_data_keys(key_id, contexts, each)
    }
    fn decrypt(
        &self,
        key_id: &str,
        wrapped: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        (**self).decrypt(key_id, wrapped, ctx)
    }
    fn decrypt_many(&self, requests: &[Unwrap<'_>], each: EachUnwrapped<'_>) {
        (**self).decrypt_many(requests, each)
    }
    fn re_encrypt(
        &self,
        wrapped: &[u8],
        ctx: &EncryptionContext,
        source_key_id: &str,
        dest_key_id: &str,
    ) -> Result<(Vec<u8>, String), KmsError> {
        (**self).re_encrypt(wrapped, ctx, source_key_id, dest_key_id)
    }
    fn encrypt(
        &self,
        key_id: &str,
        plaintext: &SecretBytes,
        ctx: &EncryptionContext,
    ) -> Result<Vec<u8>, KmsError> {
        (**self).encrypt(key_id, plaintext, ctx)
    }
    fn is_current(&self, key_id: &str, wrapped: &[u8]) -> Result<bool, KmsError> {
        (**self).is_current(key_id, wrapped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_context_is_length_prefixed() {
        let a = EncryptionContext::new().with("a", "bc");
        let b = EncryptionContext::new().with("ab", "c");
        assert_ne!(a.canonical_bytes(), b.canonical_bytes());
        let two = EncryptionContext::new().with("b", "2").with("a", "1");
        let expected: &[u8] = b"\0\0\0\x02\0\0\0\x01a\0\0\0\x011\0\0\0\x01b\0\0\0\x012";
        assert_eq!(two.canonical_bytes(), expected);
        assert_eq!(EncryptionContext::new().canonical_bytes(), [0, 0, 0, 0]);
    }
}
