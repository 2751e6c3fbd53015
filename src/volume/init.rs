//! Creating a volume (`kmsfs init`): pick the KMS, resolve or create the key, check that
//! data keys can be made under it, and write the configuration.

use std::path::{Path, PathBuf};

use super::{
    context, names_context, BucketKeyConfig, KmsConnection, KmsSettings, NamesConfig, VolumeConfig,
    VolumeError, CONFIG_NAME,
};
use crate::kms::Kms;

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

pub(super) fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// Creates a new volume in `cipherdir` (created if missing; must be empty otherwise).
/// Without `key`, a local-KMS volume gets a new key of its own; an HTTP one needs a key.
pub fn init_volume(
    cipherdir: &Path,
    settings: KmsSettings,
    key: Option<&str>,
    plaintext_names: bool,
    format_version: u16,
    bucket_key: Option<BucketKeyConfig>,
) -> Result<VolumeConfig, VolumeError> {
    prepare_dir(cipherdir, &settings)?;
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| setup(e.to_string()))?;
    let volume_id = hex::encode(id);
    let conn = KmsConnection::open(&settings)?;
    let key_id = match (key, &settings) {
        (Some(k), _) => k.to_owned(),
        (None, KmsSettings::Local { .. }) => conn.create_key(&format!("kmsfs volume {volume_id}"))?,
        (None, KmsSettings::Http { .. }) => {
            return Err(setup(
                "a volume on a remote KMS needs --key KEY_ID|ARN|ALIAS (create one with `kmsfs kms create-key`)".into(),
            ))
        }
        (None, KmsSettings::Transit { .. }) => {
            return Err(setup(
                "a volume on OpenBao needs --key MOUNT/NAME, for example --key transit/kmsfs (made, with derived=true, if it does not exist)".into(),
            ))
        }
    };
    let key_arn = conn.volume_key(&key_id)?;

    // Prove now, not at first write, that data keys can be made under this key.
    let kms = conn.kms();
    let probe = crate::format::FileId(id);
    kms.generate_data_key(&key_arn, &context(&volume_id, &probe))
        .map_err(|e| setup(format!("GenerateDataKey under {key_arn} failed: {e}")))?;

    let mut config = VolumeConfig::new(volume_id, settings, key_arn);
    config.format_version = format_version;
    if !plaintext_names {
        config.names = NamesConfig::Encrypted {
            key_arn: String::new(),
            wrapped_key: String::new(),
        };
    }
    config.bound_names = true;
    config.bucket_key = bucket_key;
    names_key(cipherdir, &mut config, kms.as_ref())?;
    config.save(cipherdir)?;
    super::trust::record(&config, cipherdir)?;
    Ok(config)
}

fn setup(m: String) -> VolumeError {
    VolumeError::KmsSetup(m)
}

/// Makes sure `cipherdir` exists and is empty, and that the local KMS has a place.
fn prepare_dir(cipherdir: &Path, settings: &KmsSettings) -> Result<(), VolumeError> {
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
    if let KmsSettings::Local { state } = settings {
        if let Some(dir) = state.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| setup(format!("cannot create {}: {e}", dir.display())))?;
        }
    }
    Ok(())
}

/// One data key for all names of the volume (with encrypted names, names are sealed under
/// it; in both modes, names are bound to files under it), and the root directory's record.
fn names_key(
    cipherdir: &Path,
    config: &mut VolumeConfig,
    kms: &dyn Kms,
) -> Result<(), VolumeError> {
    let names = kms
        .generate_data_key(&config.key_arn, &names_context(&config.volume_id))
        .map_err(|e| setup(format!("GenerateDataKey for the names key failed: {e}")))?;
    use base64::Engine as _;
    let wrapped = base64::engine::general_purpose::STANDARD.encode(&names.wrapped);
    config.names.set_key(names.key_arn, wrapped);
    config.sign(&names.key);
    let root = std::fs::File::open(cipherdir)
        .map_err(|e| setup(format!("cannot open {}: {e}", cipherdir.display())))?;
    // Synced with the configuration (which `save` syncs): a power cut right after `init`
    // leaves a whole volume.
    let root = std::os::fd::AsFd::as_fd(&root);
    crate::namespace::records::write_dir_record(root)
        .and_then(|()| crate::namespace::records::sync_dir_record(root))
        .map_err(|e| setup(format!("cannot write the root directory record: {e}")))
}
