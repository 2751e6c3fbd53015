//! Volumes known on this machine, as ssh's `known_hosts`: the first use of a volume
//! records its id, key, KMS backend and endpoint (and whether its configuration is
//! signed) in the user's state directory; a later use whose configuration says otherwise
//! is refused with what changed and how to accept it (`kmsfs trust`). Without this,
//! whoever can write the ciphertext directory could point new files at a key or a KMS of
//! their own: the configuration's MAC cannot stop that, as it is checked with a key that
//! KMS hands out.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{KmsSettings, VolumeConfig, VolumeError};

/// What is recorded of one volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub key_arn: String,
    pub kms: KmsSettings,
    /// Its configuration carried a MAC: one without is refused from then on.
    pub signed: bool,
    /// Where it was last used (for people reading the file).
    pub cipherdir: PathBuf,
    /// The key a `rewrap` under way on this machine moves the volume to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrap_to: Option<String>,
}

impl Pin {
    fn of(config: &VolumeConfig, cipherdir: &Path) -> Self {
        Self {
            key_arn: config.key_arn.clone(),
            kms: config.kms.clone(),
            signed: config.mac.is_some(),
            cipherdir: cipherdir.into(),
            rewrap_to: None,
        }
    }
}

/// The file of known volumes: `$XDG_STATE_HOME/kmsfs/known-volumes.json` (else
/// `~/.local/state/...`).
pub fn pins_path() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| super::init::home().join(".local/state"));
    base.join("kmsfs/known-volumes.json")
}

/// Longest file of known volumes read (a few hundred bytes per volume).
const MAX_PINS_LEN: u64 = 16 * 1024 * 1024;

fn load(path: &Path) -> Result<BTreeMap<String, Pin>, VolumeError> {
    let err = |source| VolumeError::Pins {
        path: path.into(),
        source,
    };
    match crate::namespace::records::read_small_file(path, MAX_PINS_LEN) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidData, e))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(err(e)),
    }
}

fn save(path: &Path, pins: &BTreeMap<String, Pin>) -> Result<(), VolumeError> {
    let write = || -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".known-volumes.{}.tmp", std::process::id()));
        let mut f = crate::namespace::create_work_file(&tmp, 0o600)?;
        f.write_all(&serde_json::to_vec_pretty(pins).expect("serialises"))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|source| VolumeError::Pins {
        path: path.into(),
        source,
    })
}

/// Holds the lock on the file of known volumes while alive: processes that record at
/// the same time (parallel `init`s) must not write over each other's records.
fn lock(path: &Path) -> Result<std::fs::File, VolumeError> {
    let lock = || -> std::io::Result<std::fs::File> {
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path.with_extension("lock"))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)?;
        Ok(f)
    };
    lock().map_err(|source| VolumeError::Pins {
        path: path.into(),
        source,
    })
}

/// What differs between the recorded `pin` and `now`, for people.
fn changes(pin: &Pin, now: &Pin) -> Vec<String> {
    let mut out = Vec::new();
    // A rewrap on this machine, cut short after it saved the configuration.
    let rewrapping = pin.rewrap_to.as_ref() == Some(&now.key_arn);
    if pin.key_arn != now.key_arn && !rewrapping {
        out.push(format!(
            "key_arn was {}, is now {}",
            pin.key_arn, now.key_arn
        ));
    }
    if pin.kms != now.kms {
        let show = |k: &KmsSettings| serde_json::to_string(k).expect("serialises");
        out.push(format!(
            "kms was {}, is now {}",
            show(&pin.kms),
            show(&now.kms)
        ));
    }
    if pin.signed && !now.signed {
        out.push("its configuration was signed and is not any more".into());
    }
    out
}

/// Checks `config` (of the volume at `cipherdir`) against what this machine recorded of
/// it, recording it on first use. Before any KMS is contacted.
pub fn check(config: &VolumeConfig, cipherdir: &Path) -> Result<(), VolumeError> {
    let path = pins_path();
    let _locked = lock(&path)?;
    let mut pins = load(&path)?;
    let now = Pin::of(config, cipherdir);
    match pins.get(&config.volume_id) {
        Some(pin) => {
            let changed = changes(pin, &now);
            if !changed.is_empty() {
                return Err(VolumeError::ConfigChanged {
                    cipherdir: cipherdir.into(),
                    pins: path,
                    changes: changed,
                });
            }
            // Only `rewrap` and `trust` record another key.
            if *pin == now || pin.key_arn != now.key_arn {
                return Ok(());
            }
        }
        None => tracing::info!(
            "first use of volume {} on this machine: its key and KMS are recorded in {}",
            config.volume_id,
            path.display()
        ),
    }
    pins.insert(config.volume_id.clone(), now);
    save(&path, &pins)
}

/// Records `config` as what this machine knows of its volume (`init`, `rewrap`, `trust`),
/// and returns what changed from the previous record.
pub fn record(config: &VolumeConfig, cipherdir: &Path) -> Result<Vec<String>, VolumeError> {
    let path = pins_path();
    let _locked = lock(&path)?;
    let mut pins = load(&path)?;
    let mut now = Pin::of(config, cipherdir);
    let changed = pins
        .get(&config.volume_id)
        .map(|pin| changes(pin, &now))
        .unwrap_or_default();
    // A rewrap under way stays expected until its key is the one recorded.
    if let Some(pin) = pins.get(&config.volume_id) {
        if pin.rewrap_to.as_ref() != Some(&now.key_arn) {
            now.rewrap_to = pin.rewrap_to.clone();
        }
    }
    pins.insert(config.volume_id.clone(), now);
    save(&path, &pins)?;
    Ok(changed)
}

/// Before a `rewrap` to `dest` changes anything: the configuration may name `dest` from
/// here on, on this machine, until the rewrap records it (a killed run is then resumed).
pub fn expect_rewrap(
    config: &VolumeConfig,
    cipherdir: &Path,
    dest: &str,
) -> Result<(), VolumeError> {
    let path = pins_path();
    let _locked = lock(&path)?;
    let mut pins = load(&path)?;
    let pin = pins
        .entry(config.volume_id.clone())
        .or_insert_with(|| Pin::of(config, cipherdir));
    pin.rewrap_to = Some(dest.to_owned());
    save(&path, &pins)
}
