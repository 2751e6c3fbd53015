//! Creating a volume (`kmsfs init`): pick the KMS, resolve or create the key, check that
//! data keys can be made under it, and write the configuration.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{
    context, names_context, new_dir_id, KmsSettings, NamesConfig, VolumeConfig, VolumeError,
    CONFIG_NAME,
};
use crate::kms::{Kms, KmsError};

/// Where the built-in local KMS keeps its keys for this user: under the XDG data
/// directory (`$XDG_DATA_HOME`, else `~/.local/share`).
pub fn default_local_kms_state() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".local/share"));
    base.join("kmsfs/local-kms/state.json")
}

/// Where a volume's audit log goes by default: the XDG state directory
/// (`$XDG_STATE_HOME`, else `~/.local/state`), never the ciphertext directory (it names
/// plaintext paths).
pub fn default_audit_log(volume_id: &str) -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".local/state"));
    base.join(format!("kmsfs/audit/{volume_id}.jsonl"))
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// A JSON call to whichever KMS backend, for the administrative operations (`CreateKey`,
/// `DescribeKey`) that the data-path trait does not carry.
pub(crate) fn admin_call(
    settings: &KmsSettings,
    op: &str,
    body: Value,
) -> Result<Value, VolumeError> {
    let bytes = serde_json::to_vec(&body).expect("serialises");
    let answer = match settings {
        KmsSettings::Local { state } => crate::kms::engine::Engine::open(state)
            .map_err(|e| VolumeError::KmsSetup(e.to_string()))?
            .call(op, &bytes)
            .map_err(kms_setup)?,
        KmsSettings::Http { endpoint } => {
            let cfg = crate::kms::config::ClientConfig::from_env(endpoint.as_deref())
                .map_err(|e| VolumeError::KmsSetup(e.to_string()))?;
            crate::kms::client::HttpKms::new(cfg)
                .map_err(kms_setup)?
                .call(op, bytes)
                .map_err(kms_setup)?
                .to_vec()
        }
    };
    serde_json::from_slice(&answer).map_err(|e| VolumeError::KmsSetup(format!("{op}: {e}")))
}

fn kms_setup(e: KmsError) -> VolumeError {
    VolumeError::KmsSetup(e.to_string())
}

/// Creates a new volume in `cipherdir` (created if missing; must be empty otherwise).
/// Without `key`, a local-KMS volume gets a new key of its own; an HTTP one needs a key.
pub fn init_volume(
    cipherdir: &Path,
    settings: KmsSettings,
    key: Option<&str>,
    plaintext_names: bool,
    format_version: u16,
) -> Result<VolumeConfig, VolumeError> {
    let setup = |m: String| VolumeError::KmsSetup(m);
    if cipherdir.join(CONFIG_NAME).exists() {
        return Err(setup(format!(
            "{} is already a kmsfs volume; mount it, or pick an empty directory",
            cipherdir.display()
        )));
    }
    match std::fs::read_dir(cipherdir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(setup(format!(
                    "{} is not empty; kmsfs init needs an empty (or new) directory",
                    cipherdir.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(cipherdir)
            .map_err(|e| setup(format!("cannot create {}: {e}", cipherdir.display())))?,
        Err(e) => return Err(setup(format!("cannot read {}: {e}", cipherdir.display()))),
    }
    if let KmsSettings::Local { state } = &settings {
        if let Some(dir) = state.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| setup(format!("cannot create {}: {e}", dir.display())))?;
        }
    }
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| setup(e.to_string()))?;
    let volume_id = hex::encode(id);

    let key_id = match (key, &settings) {
        (Some(k), _) => k.to_owned(),
        (None, KmsSettings::Local { .. }) => {
            let created = admin_call(
                &settings,
                "CreateKey",
                json!({"Description": format!("kmsfs volume {volume_id}")}),
            )?;
            created["KeyMetadata"]["Arn"]
                .as_str()
                .ok_or_else(|| setup("CreateKey answered without an ARN".into()))?
                .to_owned()
        }
        (None, KmsSettings::Http { .. }) => {
            return Err(setup(
                "a volume on a remote KMS needs --key KEY_ID|ARN|ALIAS (create one with `kmsfs kms create-key`)".into(),
            ))
        }
    };
    let described = admin_call(&settings, "DescribeKey", json!({"KeyId": key_id}))?;
    let key_arn = described["KeyMetadata"]["Arn"]
        .as_str()
        .ok_or_else(|| setup("DescribeKey answered without an ARN".into()))?
        .to_owned();

    // Prove now, not at first write, that data keys can be made under this key.
    let kms: std::sync::Arc<dyn Kms> = super::connect_kms(&settings)?;
    let probe = crate::format::FileId(id);
    kms.generate_data_key(&key_arn, &context(&volume_id, &probe))
        .map_err(|e| setup(format!("GenerateDataKey under {key_arn} failed: {e}")))?;

    let mut config = VolumeConfig::new(volume_id, settings, key_arn);
    config.format_version = format_version;
    if !plaintext_names {
        // One data key for all names of the volume, and the root directory's record.
        let names = kms
            .generate_data_key(&config.key_arn, &names_context(&config.volume_id))
            .map_err(|e| setup(format!("GenerateDataKey for the names key failed: {e}")))?;
        use base64::Engine as _;
        config.names = NamesConfig::Encrypted {
            key_arn: names.key_arn,
            wrapped_key: base64::engine::general_purpose::STANDARD.encode(&names.wrapped),
        };
        let dir_id = new_dir_id().map_err(|e| setup(e.to_string()))?;
        std::fs::write(
            cipherdir.join(crate::format::names::DIR_ID_NAME),
            crate::format::names::encode_dir_id(&dir_id),
        )
        .map_err(|e| setup(format!("cannot write the root directory record: {e}")))?;
    }
    config.save(cipherdir)?;
    Ok(config)
}
