//! The volume configuration file, `kmsfs.conf`, at the top of a ciphertext directory.
//!
//! It holds no secret: the volume id, the format settings every file shares (the header
//! length, so plaintext sizes follow from ciphertext sizes), and which KMS key new files
//! are wrapped under. Written once by `kmsfs init`, atomically, mode 0644.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::format::{
    DEFAULT_HEADER_LEN, MAX_HEADER_LEN, MIN_HEADER_LEN, SUPPORTED_VERSIONS, VERSION,
};

/// File name of the configuration inside the ciphertext directory. The mount hides it.
pub use crate::namespace::CONFIG_NAME;

/// Longest configuration read (one is well under 1 KiB).
const MAX_CONFIG_LEN: u64 = 64 * 1024;

/// Which KMS a volume uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "snake_case")]
pub enum KmsSettings {
    /// The built-in local KMS, run inside the mount daemon, keeping its state at `state`.
    Local { state: PathBuf },
    /// AWS KMS or anything speaking its protocol. Without `endpoint`, the AWS conventions
    /// apply (`AWS_ENDPOINT_URL_KMS`, `AWS_ENDPOINT_URL`, then the regional endpoint).
    Http {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
    },
    /// OpenBao's or Vault's Transit engine at `endpoint` (`openbao+https://HOST:PORT`).
    Transit { endpoint: String },
}

/// Whether file and directory names are encrypted, and the names key (always with
/// encrypted names; with plaintext names, where names are bound to files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum NamesConfig {
    /// Names stored as they are (`kmsfs init --plaintext-names`); the key binds them to
    /// files.
    Plaintext {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_arn: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wrapped_key: Option<String>,
    },
    /// Names, symlink targets and xattr values encrypted under keys derived from one
    /// volume data key, stored here wrapped by the KMS (base64).
    Encrypted {
        key_arn: String,
        wrapped_key: String,
    },
}

impl Default for NamesConfig {
    fn default() -> Self {
        Self::Plaintext {
            key_arn: None,
            wrapped_key: None,
        }
    }
}

impl NamesConfig {
    /// The names key, wrapped: its KMS key and the base64 blob.
    pub fn key(&self) -> Option<(&str, &str)> {
        match self {
            Self::Plaintext {
                key_arn: Some(arn),
                wrapped_key: Some(w),
            } => Some((arn, w)),
            Self::Encrypted {
                key_arn,
                wrapped_key,
            } => Some((key_arn, wrapped_key)),
            Self::Plaintext { .. } => None,
        }
    }

    /// Gives the names key a new wrapping (`rewrap`), or a first one.
    pub fn set_key(&mut self, arn: String, wrapped: String) {
        match self {
            Self::Plaintext {
                key_arn,
                wrapped_key,
            } => (*key_arn, *wrapped_key) = (Some(arn), Some(wrapped)),
            Self::Encrypted {
                key_arn,
                wrapped_key,
            } => (*key_arn, *wrapped_key) = (arn, wrapped),
        }
    }

    pub fn is_encrypted(&self) -> bool {
        matches!(self, Self::Encrypted { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeConfig {
    /// Always "kmsfs volume"; tells a person what this file is.
    pub kind: String,
    pub format_version: u16,
    /// 32 hex digits, random; bound into every file key's encryption context.
    pub volume_id: String,
    pub header_len: u32,
    pub kms: KmsSettings,
    /// ARN of the KMS key new files' data keys are generated under.
    pub key_arn: String,
    /// The other keys a file's header may name: those the volume was rewrapped from, and
    /// the one a rewrap under way moves it to. A header naming any other key is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_key_arns: Vec<String>,
    /// Volumes made before name encryption existed have plaintext names.
    #[serde(default)]
    pub names: NamesConfig,
    /// Every file is bound to its names (`docs/format.md`, "Names bound to files"):
    /// volumes made since; those made before keep working without.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bound_names: bool,
    /// New files' keys come from bucket keys (`kmsfs init --bucket-key`; `docs/format.md`,
    /// "Bucket keys"); `None` for per-file keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_key: Option<BucketKeyConfig>,
    /// HMAC-SHA256 (hex) of the rest under a key from the names key
    /// ([`VolumeConfig::signed_bytes`]): volumes with a names key get one from this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// A bucket volume's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketKeyConfig {
    /// How long a mount (or an offline tool) makes files under one bucket key before it
    /// makes the next, in seconds.
    pub period_s: u64,
}

impl BucketKeyConfig {
    /// The default period: a day, as S3's time-limited bucket keys.
    pub const DEFAULT_PERIOD_S: u64 = 24 * 3600;
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path} is not a kmsfs volume (no {CONFIG_NAME}); create one with `kmsfs init`")]
    NotAVolume { path: PathBuf },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged or not a kmsfs configuration: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl VolumeConfig {
    pub fn new(volume_id: String, kms: KmsSettings, key_arn: String) -> Self {
        Self {
            kind: "kmsfs volume".into(),
            format_version: VERSION,
            volume_id,
            header_len: DEFAULT_HEADER_LEN,
            kms,
            key_arn,
            other_key_arns: Vec::new(),
            names: NamesConfig::default(),
            bound_names: false,
            bucket_key: None,
            mac: None,
        }
    }

    /// Whether every directory holds a record with its id: with encrypted names, and where
    /// names are bound to files.
    pub fn has_dir_records(&self) -> bool {
        self.names.is_encrypted() || self.bound_names
    }

    /// The bytes the `mac` covers: the configuration without it, as JSON.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let unsigned = Self {
            mac: None,
            ..self.clone()
        };
        serde_json::to_vec(&unsigned).expect("serialises")
    }

    /// Signs the configuration with the names key (`mac`).
    pub fn sign(&mut self, names_key: &crate::secret::DataKey) {
        self.mac = Some(hex::encode(crate::crypto::config_mac(
            names_key,
            &self.signed_bytes(),
        )));
    }

    /// Whether `mac` is there and authenticates the rest under the names key.
    pub fn signature_checks(&self, names_key: &crate::secret::DataKey) -> bool {
        let Some(mac) = self.mac.as_deref().and_then(|m| hex::decode(m).ok()) else {
            return false;
        };
        let want = crate::crypto::config_mac(names_key, &self.signed_bytes());
        // Constant time: the MAC is a secret-derived value compared with attacker bytes.
        mac.len() == want.len() && mac.iter().zip(want).fold(0, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// Whether a file's header may name `key_id` (`other_key_arns`).
    pub fn accepts_key(&self, key_id: &str) -> bool {
        key_id == self.key_arn || self.other_key_arns.iter().any(|k| k == key_id)
    }

    pub fn path_in(cipherdir: &Path) -> PathBuf {
        cipherdir.join(CONFIG_NAME)
    }

    pub fn load(cipherdir: &Path) -> Result<Self, ConfigError> {
        let path = Self::path_in(cipherdir);
        // Never through a symlink, a FIFO or a device, and never more than a configuration
        // can hold: the directory may be writable by others.
        let text = match crate::namespace::records::read_small_file(&path, MAX_CONFIG_LEN) {
            Ok(t) => String::from_utf8_lossy(&t).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::NotAVolume {
                    path: cipherdir.into(),
                })
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let invalid = |reason: String| ConfigError::Invalid {
            path: path.clone(),
            reason,
        };
        let cfg: VolumeConfig = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if !SUPPORTED_VERSIONS.contains(&cfg.format_version) {
            return Err(invalid(format!(
                "format version {} (this kmsfs reads versions 1 to 4); use a matching kmsfs",
                cfg.format_version
            )));
        }
        if cfg.volume_id.len() != 32 || hex::decode(&cfg.volume_id).is_err() {
            return Err(invalid("volume_id must be 32 hex digits".into()));
        }
        if !(MIN_HEADER_LEN..=MAX_HEADER_LEN).contains(&cfg.header_len) {
            return Err(invalid(format!(
                "header_len {} out of range",
                cfg.header_len
            )));
        }
        if cfg.key_arn.is_empty() {
            return Err(invalid("key_arn is empty".into()));
        }
        if cfg.bound_names && cfg.names.key().is_none() {
            return Err(invalid("bound_names needs the names key".into()));
        }
        Ok(cfg)
    }

    /// Writes the configuration atomically (temporary file, fsync, rename).
    pub fn save(&self, cipherdir: &Path) -> Result<(), ConfigError> {
        let path = Self::path_in(cipherdir);
        let tmp = cipherdir.join(format!(".{CONFIG_NAME}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = crate::namespace::create_work_file(&tmp, 0o644)?;
            f.write_all(
                serde_json::to_string_pretty(self)
                    .expect("serialises")
                    .as_bytes(),
            )?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(cipherdir)?.sync_all()
        };
        write().map_err(|source| ConfigError::Write { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = VolumeConfig::new(
            "00112233445566778899aabbccddeeff".into(),
            KmsSettings::Local {
                state: "/tmp/x".into(),
            },
            "arn:aws:kms:local:000000000000:key/k".into(),
        );
        cfg.save(dir.path()).unwrap();
        assert_eq!(VolumeConfig::load(dir.path()).unwrap(), cfg);
        std::fs::write(VolumeConfig::path_in(dir.path()), "{not json").unwrap();
        assert!(matches!(
            VolumeConfig::load(dir.path()),
            Err(ConfigError::Invalid { .. })
        ));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            VolumeConfig::load(empty.path()),
            Err(ConfigError::NotAVolume { .. })
        ));
    }
}
