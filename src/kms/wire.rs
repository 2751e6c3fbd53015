//! The AWS KMS JSON 1.1 wire types shared by the client, the engine and the server:
//! AWS field names, binary fields as base64 strings, timestamps as epoch seconds.
//!
//! Unknown request fields are accepted and ignored, as a
//! server must for forward compatibility. Plaintext fields use [`SecretBlob`], which
//! decodes base64 straight into locked memory.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use zeroize::Zeroizing;

use super::EncryptionContext;
use crate::secret::SecretBytes;

/// The only encryption algorithm of symmetric keys.
pub const SYMMETRIC_DEFAULT: &str = "SYMMETRIC_DEFAULT";

/// Public binary data (ciphertext blobs) as a base64 string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blob(pub Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Blob;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Blob, E> {
                B64.decode(v)
                    .map(Blob)
                    .map_err(|_| E::custom("invalid base64 in blob"))
            }
        }
        d.deserialize_str(V)
    }
}

/// Secret binary data (plaintexts) as a base64 string, decoded into locked memory.
/// The transient decode buffer is zeroized; the JSON text itself is the caller's to wipe.
pub struct SecretBlob(pub SecretBytes);

impl fmt::Debug for SecretBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for SecretBlob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = Zeroizing::new(B64.encode(self.0.expose_secret()));
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for SecretBlob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SecretBlob;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretBlob, E> {
                let bytes = Zeroizing::new(
                    B64.decode(v)
                        .map_err(|_| E::custom("invalid base64 in plaintext"))?,
                );
                SecretBytes::from_slice(&bytes)
                    .map(SecretBlob)
                    .map_err(|_| {
                        E::custom("1 validation error detected: Value at 'plaintext' failed to satisfy constraint: Member must have length less than or equal to 4096")
                    })
            }
        }
        d.deserialize_str(V)
    }
}

/// An AWS error answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(rename = "__type", default)]
    pub kind: String,
    #[serde(default, alias = "Message")]
    pub message: String,
}

macro_rules! wire {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Default, Serialize, Deserialize)]
        #[serde(rename_all = "PascalCase")]
        pub struct $name {
            $($(#[$fm])* #[serde(skip_serializing_if = "skip", default)] pub $field: $ty,)*
        }
    };
}

/// Whether a field is left out of JSON: absent options only.
trait Skip {
    fn skip_it(&self) -> bool {
        false
    }
}
impl<T> Skip for Option<T> {
    fn skip_it(&self) -> bool {
        self.is_none()
    }
}
impl Skip for String {}
impl Skip for bool {}
impl Skip for f64 {}
impl Skip for Blob {}
impl Skip for Tag {}
impl Skip for KeyMetadata {}
impl<T> Skip for Vec<T> {}
fn skip<T: Skip>(v: &T) -> bool {
    v.skip_it()
}

wire!(CreateKeyRequest {
    description: Option<String>,
    key_usage: Option<String>,
    key_spec: Option<String>,
    customer_master_key_spec: Option<String>,
    origin: Option<String>,
    policy: Option<String>,
    bypass_policy_lockout_safety_check: Option<bool>,
    tags: Option<Vec<Tag>>,
});
wire!(
    /// One tag of a key.
    Tag { tag_key: String, tag_value: String }
);
wire!(
    /// DescribeKey, EnableKey, DisableKey, CancelKeyDeletion, DisableKeyRotation,
    /// GetKeyRotationStatus, RotateKeyOnDemand.
    KeyIdRequest { key_id: Option<String> }
);
wire!(EnableKeyRotationRequest {
    key_id: Option<String>,
    rotation_period_in_days: Option<i64>,
});
wire!(ScheduleKeyDeletionRequest {
    key_id: Option<String>,
    pending_window_in_days: Option<i64>,
});
wire!(ListRequest {
    key_id: Option<String>,
    limit: Option<i64>,
    marker: Option<String>,
});
wire!(AliasRequest {
    alias_name: Option<String>,
    target_key_id: Option<String>,
});
wire!(GenerateDataKeyRequest {
    key_id: Option<String>,
    encryption_context: Option<EncryptionContext>,
    number_of_bytes: Option<i64>,
    key_spec: Option<String>,
});
wire!(DecryptRequest {
    ciphertext_blob: Option<Blob>,
    encryption_context: Option<EncryptionContext>,
    key_id: Option<String>,
    encryption_algorithm: Option<String>,
});
wire!(EncryptRequest {
    key_id: Option<String>,
    plaintext: Option<SecretBlob>,
    encryption_context: Option<EncryptionContext>,
    encryption_algorithm: Option<String>,
});
wire!(ReEncryptRequest {
    ciphertext_blob: Option<Blob>,
    source_encryption_context: Option<EncryptionContext>,
    source_key_id: Option<String>,
    destination_key_id: Option<String>,
    destination_encryption_context: Option<EncryptionContext>,
    source_encryption_algorithm: Option<String>,
    destination_encryption_algorithm: Option<String>,
});
wire!(GenerateRandomRequest {
    number_of_bytes: Option<i64>,
});

wire!(KeyMetadata {
    #[serde(rename = "AWSAccountId")]
    aws_account_id: String,
    key_id: String,
    arn: String,
    creation_date: f64,
    enabled: bool,
    description: String,
    key_usage: String,
    key_state: String,
    deletion_date: Option<f64>,
    pending_deletion_window_in_days: Option<i64>,
    origin: String,
    key_manager: String,
    customer_master_key_spec: String,
    key_spec: String,
    encryption_algorithms: Vec<String>,
    multi_region: bool,
});
wire!(KeyMetadataResponse {
    key_metadata: KeyMetadata
});
wire!(KeyListEntry {
    key_id: String,
    key_arn: String,
});
wire!(ListKeysResponse {
    keys: Vec<KeyListEntry>,
    truncated: bool,
    next_marker: Option<String>,
});
wire!(AliasListEntry {
    alias_name: String,
    alias_arn: String,
    target_key_id: Option<String>,
    creation_date: Option<f64>,
    last_updated_date: Option<f64>,
});
wire!(ListAliasesResponse {
    aliases: Vec<AliasListEntry>,
    truncated: bool,
    next_marker: Option<String>,
});
wire!(GenerateDataKeyResponse {
    ciphertext_blob: Blob,
    plaintext: Option<SecretBlob>,
    key_id: String,
});
wire!(DecryptResponse {
    key_id: String,
    plaintext: Option<SecretBlob>,
    encryption_algorithm: String,
});
wire!(EncryptResponse {
    ciphertext_blob: Blob,
    key_id: String,
    encryption_algorithm: String,
});
wire!(ReEncryptResponse {
    ciphertext_blob: Blob,
    source_key_id: String,
    key_id: String,
    source_encryption_algorithm: String,
    destination_encryption_algorithm: String,
});
wire!(ScheduleKeyDeletionResponse {
    key_id: String,
    deletion_date: f64,
    key_state: String,
    pending_window_in_days: Option<i64>,
});
wire!(KeyIdResponse { key_id: String });
wire!(GetKeyRotationStatusResponse {
    key_rotation_enabled: bool,
    key_id: String,
    rotation_period_in_days: Option<i64>,
    next_rotation_date: Option<f64>,
});
wire!(GenerateRandomResponse {
    plaintext: Option<SecretBlob>,
});

impl Default for SecretBlob {
    fn default() -> Self {
        SecretBlob(SecretBytes::from_slice(&[]).expect("empty fits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_and_blobs_follow_aws() {
        let req = DecryptRequest {
            ciphertext_blob: Some(Blob(vec![1, 2, 3])),
            key_id: Some("alias/x".into()),
            ..Default::default()
        };
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(json, r#"{"CiphertextBlob":"AQID","KeyId":"alias/x"}"#);
        let md: KeyMetadataResponse =
            serde_json::from_str(r#"{"KeyMetadata":{"AWSAccountId":"1","KeyId":"k"}}"#).unwrap();
        assert_eq!(md.key_metadata.aws_account_id, "1");
        let bad = serde_json::from_str::<DecryptRequest>(r#"{"CiphertextBlob":"***"}"#);
        assert!(bad.unwrap_err().to_string().contains("base64"));
    }

    #[test]
    fn plaintext_is_redacted_in_debug() {
        let r: DecryptResponse = serde_json::from_str(r#"{"Plaintext":"aHVudGVyMg=="}"#).unwrap();
        let p = r.plaintext.as_ref().unwrap();
        assert_eq!(p.0.expose_secret(), b"hunter2");
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
