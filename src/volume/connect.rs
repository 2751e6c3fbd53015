//! Connecting to the KMS a volume's settings name: one path for `init`, the mount and the
//! offline tools. Data keys go through the [`Kms`] trait; the administrative operations the
//! trait does not carry (`CreateKey`, `DescribeKey`) go through [`KmsConnection::admin`]
//! on the same connection.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{KmsSettings, VolumeError};
use crate::kms::client::HttpKms;
use crate::kms::config::ClientConfig;
use crate::kms::engine::Engine;
use crate::kms::transit::{KeyVersions, TransitKms};
use crate::kms::{Kms, KmsError};

/// One connection to a volume's KMS backend.
pub struct KmsConnection {
    backend: Backend,
}

enum Backend {
    /// The built-in local KMS, in this process.
    Local(Arc<Engine>),
    /// AWS KMS or anything speaking its protocol.
    Http(Arc<HttpKms>),
    /// OpenBao's or Vault's Transit engine.
    Transit(Arc<TransitKms>),
}

fn setup(e: impl std::fmt::Display) -> VolumeError {
    VolumeError::KmsSetup(e.to_string())
}

impl KmsConnection {
    /// Connects to the KMS `settings` name (for the local KMS, opens its state).
    pub fn open(settings: &KmsSettings) -> Result<Self, VolumeError> {
        let backend = match settings {
            KmsSettings::Local { state } => Backend::Local(Arc::new(
                Engine::open(state).map_err(VolumeError::LocalKms)?,
            )),
            KmsSettings::Http { endpoint } => {
                let cfg =
                    ClientConfig::from_env(endpoint.as_deref()).map_err(VolumeError::KmsClient)?;
                Backend::Http(Arc::new(HttpKms::new(cfg).map_err(setup)?))
            }
            KmsSettings::Transit { endpoint } => {
                let t = TransitKms::connect(endpoint).map_err(|e| kms_at(endpoint, e))?;
                Backend::Transit(Arc::new(t))
            }
        };
        Ok(Self { backend })
    }

    /// The data-key operations.
    pub fn kms(&self) -> Arc<dyn Kms> {
        match &self.backend {
            Backend::Local(e) => e.clone(),
            Backend::Http(h) => h.clone(),
            Backend::Transit(t) => t.clone(),
        }
    }

    /// One administrative call (`op` with a JSON body), answered as JSON.
    pub fn admin(&self, op: &str, body: Value) -> Result<Value, VolumeError> {
        let bytes = serde_json::to_vec(&body).expect("a JSON value serializes");
        let answer = match &self.backend {
            Backend::Local(e) => e.call(op, &bytes).map_err(kms_setup)?,
            Backend::Http(h) => h.call(op, bytes).map_err(kms_setup)?.to_vec(),
            Backend::Transit(_) => {
                return Err(setup(format!(
                    "{op} is an AWS KMS operation; OpenBao's Transit engine has no such call"
                )))
            }
        };
        serde_json::from_slice(&answer).map_err(|e| setup(format!("{op}: {e}")))
    }

    /// The ARN of the key `key_id` names (an id, ARN or alias), through `DescribeKey`.
    pub fn key_arn(&self, key_id: &str) -> Result<String, VolumeError> {
        if let Backend::Transit(t) = &self.backend {
            return t.describe(key_id).map_err(|e| kms_at(key_id, e));
        }
        let described = self.admin("DescribeKey", json!({ "KeyId": key_id }))?;
        described["KeyMetadata"]["Arn"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| setup("DescribeKey answered without an ARN"))
    }

    /// The ARN of the key a new volume is made under: for Transit, the key is made (derived)
    /// if it does not exist.
    pub fn volume_key(&self, key_id: &str) -> Result<String, VolumeError> {
        match &self.backend {
            Backend::Transit(t) => t.ensure_key(key_id).map_err(|e| kms_at(key_id, e)),
            _ => self.key_arn(key_id),
        }
    }

    /// A Transit key's newest and lowest decryptable versions; `None` on other backends.
    pub fn key_versions(&self, key_id: &str) -> Result<Option<KeyVersions>, VolumeError> {
        match &self.backend {
            Backend::Transit(t) => t
                .key_versions(key_id)
                .map(Some)
                .map_err(|e| kms_at(key_id, e)),
            _ => Ok(None),
        }
    }

    /// Makes a new key described as `description`; its ARN.
    pub fn create_key(&self, description: &str) -> Result<String, VolumeError> {
        let created = self.admin("CreateKey", json!({ "Description": description }))?;
        created["KeyMetadata"]["Arn"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| setup("CreateKey answered without an ARN"))
    }
}

fn kms_setup(e: KmsError) -> VolumeError {
    VolumeError::KmsSetup(e.to_string())
}

/// A KMS error about `what` (an endpoint, a key), kept as the error's source so that the
/// command line can add what to do.
fn kms_at(what: &str, source: KmsError) -> VolumeError {
    VolumeError::Kms {
        path: what.to_owned(),
        source,
    }
}
