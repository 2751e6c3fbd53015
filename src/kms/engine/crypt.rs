//! The engine's cryptographic operations: GenerateDataKey(WithoutPlaintext), Encrypt,
//! Decrypt, ReEncrypt, GenerateRandom. Blobs are sealed with the newest backing version
//! of a key and opened with whichever version their header names.

use super::access::{Ask, Who};
use super::blob::{self, BlobHeader};
use super::state::format_uuid;
use super::{in_range, required, Aliases, Engine};
use crate::kms::wire::{
    Blob, DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse, GenerateDataKeyRequest,
    GenerateDataKeyResponse, GenerateRandomRequest, GenerateRandomResponse, ReEncryptRequest,
    ReEncryptResponse, SecretBlob, SYMMETRIC_DEFAULT,
};
use crate::kms::{EncryptionContext, KmsError};
use crate::secret::SecretBytes;

/// AWS's largest ciphertext blob.
const MAX_BLOB_LEN: usize = 6144;

fn check_algorithm(alg: &Option<String>) -> Result<(), KmsError> {
    match alg.as_deref() {
        None | Some(SYMMETRIC_DEFAULT) => Ok(()),
        Some(other) => Err(KmsError::Validation {
            code: "InvalidKeyUsageException".into(),
            message: format!("{other} is not supported for a symmetric key"),
        }),
    }
}

fn random(n: usize) -> Result<SecretBytes, KmsError> {
    SecretBytes::generate(n).map_err(|e| KmsError::internal(e.to_string()))
}

impl Engine {
    /// Seals `plaintext` under the newest version of `key_id`, if `who` may do `op` with
    /// it; returns blob and key ARN.
    pub(super) fn seal(
        &self,
        (who, op): (Who<'_>, &str),
        key_id: &str,
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<(Vec<u8>, String), KmsError> {
        let st = self.lock()?;
        let id = st.resolve(key_id, Aliases::Allowed)?;
        st.authorize(who, &id, Ask::with_context(op, ctx))?;
        let key = st.usable(&id)?;
        let header = BlobHeader {
            key_uuid: key.uuid,
            key_version: key.versions.len() as u32,
        };
        let backing = key.versions.last().expect("a key has a version");
        Ok((
            blob::seal(header, backing, plaintext, ctx)?,
            st.key_arn(&id),
        ))
    }

    /// Opens a blob if `who` may do `op` with its key; with `key_id`, refuses blobs made
    /// under any other key.
    pub(super) fn open_blob(
        &self,
        (who, op): (Who<'_>, &str),
        key_id: Option<&str>,
        wrapped: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<(SecretBytes, String), KmsError> {
        if wrapped.is_empty() || wrapped.len() > MAX_BLOB_LEN {
            return Err(KmsError::validation(
                "CiphertextBlob must be 1 to 6144 bytes long",
            ));
        }
        let st = self.lock()?;
        let wanted = key_id
            .map(|k| st.resolve(k, Aliases::Allowed))
            .transpose()?;
        let header = BlobHeader::decode(wrapped)?;
        let id = format_uuid(&header.key_uuid);
        if let Some(wanted) = wanted {
            if wanted != id {
                return Err(KmsError::IncorrectKey(
                    "The key ID in the request does not identify a CMK that can perform this operation.".into(),
                ));
            }
        }
        if !st.keys.contains_key(&id) {
            return Err(KmsError::InvalidCiphertext(
                "the ciphertext is invalid".into(),
            ));
        }
        st.authorize(who, &id, Ask::with_context(op, ctx))?;
        let key = st.usable(&id)?;
        let backing = key
            .versions
            .get(header.key_version as usize - 1)
            .ok_or_else(|| KmsError::InvalidCiphertext("the ciphertext is invalid".into()))?;
        Ok((blob::open(wrapped, backing, ctx)?, st.key_arn(&id)))
    }

    /// A fresh random secret of `n` bytes and its blob under `key_id`.
    pub(super) fn generate(
        &self,
        asker: (Who<'_>, &str),
        key_id: &str,
        ctx: &EncryptionContext,
        n: usize,
    ) -> Result<(SecretBytes, Vec<u8>, String), KmsError> {
        let plain = random(n)?;
        let (blob, arn) = self.seal(asker, key_id, plain.expose_secret(), ctx)?;
        Ok((plain, blob, arn))
    }

    pub(super) fn generate_data_key_op(
        &self,
        who: Who<'_>,
        r: GenerateDataKeyRequest,
        with_plaintext: bool,
    ) -> Result<GenerateDataKeyResponse, KmsError> {
        let key_id = required(r.key_id, "keyId")?;
        let n = match (r.number_of_bytes, r.key_spec.as_deref()) {
            (Some(n), None) => in_range(n, 1, 1024, "numberOfBytes")? as usize,
            (None, Some("AES_256")) => 32,
            (None, Some("AES_128")) => 16,
            (None, Some(other)) => {
                return Err(KmsError::validation(format!(
                    "1 validation error detected: Value '{other}' at 'keySpec' failed to satisfy constraint: Member must satisfy enum value set: [AES_256, AES_128]"
                )))
            }
            (Some(_), Some(_)) => {
                return Err(KmsError::validation(
                    "Please specify either number of bytes or key spec, not both.",
                ))
            }
            (None, None) => {
                return Err(KmsError::validation(
                    "Please specify either number of bytes or key spec.",
                ))
            }
        };
        let ctx = r.encryption_context.unwrap_or_default();
        let op = if with_plaintext {
            "GenerateDataKey"
        } else {
            "GenerateDataKeyWithoutPlaintext"
        };
        let (plain, blob, arn) = self.generate((who, op), &key_id, &ctx, n)?;
        Ok(GenerateDataKeyResponse {
            ciphertext_blob: Blob(blob),
            plaintext: with_plaintext.then_some(SecretBlob(plain)),
            key_id: arn,
        })
    }

    pub(super) fn encrypt_op(
        &self,
        who: Who<'_>,
        r: EncryptRequest,
    ) -> Result<EncryptResponse, KmsError> {
        let key_id = required(r.key_id, "keyId")?;
        let plain = required(r.plaintext, "plaintext")?;
        check_algorithm(&r.encryption_algorithm)?;
        if plain.0.is_empty() {
            return Err(KmsError::validation(
                "1 validation error detected: Value at 'plaintext' failed to satisfy constraint: Member must have length greater than or equal to 1",
            ));
        }
        let ctx = r.encryption_context.unwrap_or_default();
        let (blob, arn) = self.seal((who, "Encrypt"), &key_id, plain.0.expose_secret(), &ctx)?;
        Ok(EncryptResponse {
            ciphertext_blob: Blob(blob),
            key_id: arn,
            encryption_algorithm: SYMMETRIC_DEFAULT.into(),
        })
    }

    pub(super) fn decrypt_op(
        &self,
        who: Who<'_>,
        r: DecryptRequest,
    ) -> Result<DecryptResponse, KmsError> {
        let blob = required(r.ciphertext_blob, "ciphertextBlob")?;
        check_algorithm(&r.encryption_algorithm)?;
        let ctx = r.encryption_context.unwrap_or_default();
        let (plain, arn) = self.open_blob((who, "Decrypt"), r.key_id.as_deref(), &blob.0, &ctx)?;
        Ok(DecryptResponse {
            key_id: arn,
            plaintext: Some(SecretBlob(plain)),
            encryption_algorithm: SYMMETRIC_DEFAULT.into(),
        })
    }

    pub(super) fn re_encrypt_op(
        &self,
        who: Who<'_>,
        r: ReEncryptRequest,
    ) -> Result<ReEncryptResponse, KmsError> {
        let blob = required(r.ciphertext_blob, "ciphertextBlob")?;
        let dest = required(r.destination_key_id, "destinationKeyId")?;
        check_algorithm(&r.source_encryption_algorithm)?;
        check_algorithm(&r.destination_encryption_algorithm)?;
        let src_ctx = r.source_encryption_context.unwrap_or_default();
        let dst_ctx = r.destination_encryption_context.unwrap_or_default();
        let from = (who, "ReEncryptFrom");
        let (plain, src_arn) =
            self.open_blob(from, r.source_key_id.as_deref(), &blob.0, &src_ctx)?;
        let to = (who, "ReEncryptTo");
        let (blob, arn) = self.seal(to, &dest, plain.expose_secret(), &dst_ctx)?;
        Ok(ReEncryptResponse {
            ciphertext_blob: Blob(blob),
            source_key_id: src_arn,
            key_id: arn,
            source_encryption_algorithm: SYMMETRIC_DEFAULT.into(),
            destination_encryption_algorithm: SYMMETRIC_DEFAULT.into(),
        })
    }

    pub(super) fn generate_random(
        &self,
        r: GenerateRandomRequest,
    ) -> Result<GenerateRandomResponse, KmsError> {
        let n = required(r.number_of_bytes, "numberOfBytes")?;
        let n = in_range(n, 1, 1024, "numberOfBytes")? as usize;
        Ok(GenerateRandomResponse {
            plaintext: Some(SecretBlob(random(n)?)),
        })
    }
}
