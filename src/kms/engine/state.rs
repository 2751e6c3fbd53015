//! The local KMS's durable state: keys (with every backing-key version ever made) and
//! aliases, and the state file they live in.
//!
//! The file is JSON (`docs/kms.md`), written atomically: a 0600 temp file beside it,
//! fsync, rename, fsync of the directory. A file that exists but cannot be read back is an
//! error at start, never a silent reset. Backing keys live in [`DataKey`]s in memory and
//! as hex only inside the file and the zeroized buffers that write it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::policy::Policy;
use crate::secret::DataKey;

const FILE_FORMAT: &str = "kmsfs-local-kms-state";
const FILE_VERSION: u32 = 1;
pub const DEFAULT_ACCOUNT: &str = "111122223333";
pub const DEFAULT_REGION: &str = "us-east-1";

/// Why the state file could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot {action} KMS state file {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("KMS state file {path} is corrupt ({reason}); restore it from a backup or move it away to start with no keys")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "KMS state file {path} has disappeared; put it back from a backup (`kmsfs kms restore`)"
    )]
    Missing { path: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    Enabled,
    Disabled,
    PendingDeletion,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Enabled => "Enabled",
            KeyState::Disabled => "Disabled",
            KeyState::PendingDeletion => "PendingDeletion",
        }
    }
}

pub struct KeyEntry {
    pub uuid: [u8; 16],
    pub created: f64,
    pub description: String,
    pub state: KeyState,
    pub deletion_date: Option<f64>,
    pub pending_window_days: Option<i64>,
    pub rotation_enabled: bool,
    pub rotation_period_days: i64,
    /// When the rotation period started counting (enable or last rotation).
    pub rotation_anchor: f64,
    /// Backing keys; index `i` is version `i + 1`. The last one seals new blobs.
    pub versions: Vec<DataKey>,
    /// The key policy; `None` is AWS's default policy (the account may do anything).
    pub policy: Option<Policy>,
    pub tags: BTreeMap<String, String>,
    pub grants: Vec<Grant>,
    /// When each version after the first was made, as far as it was recorded.
    pub rotations: Vec<Rotation>,
}

/// A grant on a key, as CreateGrant made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    /// 64 hex digits.
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    pub created: f64,
    pub grantee: String,
    #[serde(default)]
    pub retiring: Option<String>,
    /// Operation names without `kms:`.
    pub operations: Vec<String>,
    #[serde(default)]
    pub context_equals: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub context_subset: Option<BTreeMap<String, String>>,
    /// The account of the principal that made the grant.
    pub issuing_account: String,
}

/// One rotation of a key: the version it made, when, and whether on demand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rotation {
    pub version: u32,
    pub date: f64,
    pub on_demand: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AliasEntry {
    pub target: String,
    pub created: f64,
    pub updated: f64,
}

pub struct State {
    pub account: String,
    pub region: String,
    /// By key id (the UUID text).
    pub keys: BTreeMap<String, KeyEntry>,
    /// By alias name (`alias/...`).
    pub aliases: BTreeMap<String, AliasEntry>,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    format: String,
    version: u32,
    account: String,
    region: String,
    keys: Vec<KeyFile>,
    aliases: BTreeMap<String, AliasEntry>,
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    id: String,
    created: f64,
    description: String,
    state: KeyState,
    deletion_date: Option<f64>,
    pending_window_days: Option<i64>,
    rotation_enabled: bool,
    rotation_period_days: i64,
    rotation_anchor: f64,
    /// Hex of each backing-key version, oldest first.
    versions: Vec<String>,
    // Absent in files written before policies, grants and tags existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    policy: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    grants: Vec<Grant>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rotations: Vec<Rotation>,
}

pub fn format_uuid(u: &[u8; 16]) -> String {
    let h = hex::encode(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Parses the canonical lower- or upper-case 8-4-4-4-12 form.
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let compact: String = s.chars().filter(|&c| c != '-').collect();
    let v = hex::decode(compact).ok()?;
    v.try_into().ok()
}

/// A random (version 4) UUID.
pub fn new_uuid() -> [u8; 16] {
    let mut u = [0u8; 16];
    getrandom::fill(&mut u).expect("the system random number generator failed");
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

impl State {
    pub fn empty() -> Self {
        State {
            account: DEFAULT_ACCOUNT.into(),
            region: DEFAULT_REGION.into(),
            keys: BTreeMap::new(),
            aliases: BTreeMap::new(),
        }
    }

    /// The serialized form; zeroized on drop because it holds backing keys.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let keys = self
            .keys
            .iter()
            .map(|(id, k)| KeyFile {
                id: id.clone(),
                created: k.created,
                description: k.description.clone(),
                state: k.state,
                deletion_date: k.deletion_date,
                pending_window_days: k.pending_window_days,
                rotation_enabled: k.rotation_enabled,
                rotation_period_days: k.rotation_period_days,
                rotation_anchor: k.rotation_anchor,
                versions: k
                    .versions
                    .iter()
                    .map(|v| hex::encode(v.expose_secret()))
                    .collect(),
                policy: k.policy.as_ref().map(|p| p.text.clone()),
                tags: k.tags.clone(),
                grants: k.grants.clone(),
                rotations: k.rotations.clone(),
            })
            .collect();
        let mut file = StateFile {
            format: FILE_FORMAT.into(),
            version: FILE_VERSION,
            account: self.account.clone(),
            region: self.region.clone(),
            keys,
            aliases: self.aliases.clone(),
        };
        let out = Zeroizing::new(serde_json::to_vec_pretty(&file).expect("state serializes"));
        for k in &mut file.keys {
            k.versions.iter_mut().for_each(zeroize::Zeroize::zeroize);
        }
        out
    }

    /// Parses and checks a state file's bytes; `Err` is the reason it is unusable.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let mut file: StateFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if file.format != FILE_FORMAT || file.version != FILE_VERSION {
            return Err(format!(
                "not a version {FILE_VERSION} {FILE_FORMAT} file (format {:?}, version {})",
                file.format, file.version
            ));
        }
        let mut keys = BTreeMap::new();
        for k in &mut file.keys {
            let uuid = parse_uuid(&k.id).ok_or_else(|| format!("bad key id {:?}", k.id))?;
            if k.versions.is_empty() {
                return Err(format!("key {} has no backing key", k.id));
            }
            let mut versions = Vec::new();
            for v in &mut k.versions {
                let bytes = Zeroizing::new(hex::decode(&*v).map_err(|_| "bad hex".to_string())?);
                zeroize::Zeroize::zeroize(v);
                let key = DataKey::from_slice(&bytes)
                    .map_err(|_| format!("key {} has a backing key of wrong length", k.id))?;
                versions.push(key);
            }
            let policy = k
                .policy
                .as_deref()
                .map(Policy::parse)
                .transpose()
                .map_err(|e| format!("key {} has a bad policy: {}", k.id, e.message()))?;
            keys.insert(
                format_uuid(&uuid),
                KeyEntry {
                    uuid,
                    created: k.created,
                    description: std::mem::take(&mut k.description),
                    state: k.state,
                    deletion_date: k.deletion_date,
                    pending_window_days: k.pending_window_days,
                    rotation_enabled: k.rotation_enabled,
                    rotation_period_days: k.rotation_period_days,
                    rotation_anchor: k.rotation_anchor,
                    versions,
                    policy,
                    tags: std::mem::take(&mut k.tags),
                    grants: std::mem::take(&mut k.grants),
                    rotations: std::mem::take(&mut k.rotations),
                },
            );
        }
        for (name, a) in &file.aliases {
            if !keys.contains_key(&a.target) {
                return Err(format!("alias {name} points at unknown key {}", a.target));
            }
        }
        Ok(State {
            account: file.account,
            region: file.region,
            keys,
            aliases: file.aliases,
        })
    }

    /// Loads `path`, or starts empty (and writes the file) when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, StateError> {
        match fs::read(path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                State::from_bytes(&bytes).map_err(|reason| StateError::Corrupt {
                    path: path.into(),
                    reason,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let st = State::empty();
                st.save(path)?;
                Ok(st)
            }
            Err(source) => Err(StateError::Io {
                action: "read",
                path: path.into(),
                source,
            }),
        }
    }

    /// Writes the state atomically: 0600 temp file, fsync, rename, fsync the directory.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        write_atomic(path, &self.to_bytes()).map_err(|source| StateError::Io {
            action: "write",
            path: path.into(),
            source,
        })
    }
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_then(path, bytes, |tmp| fs::rename(tmp, path))
}

/// Writes `bytes` to `path` (0600) as [`write_atomic`] does, but fails with
/// `AlreadyExists` if `path` exists: the file appears by hard link, which never replaces.
pub fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_then(path, bytes, |tmp| {
        fs::hard_link(tmp, path)?;
        fs::remove_file(tmp)
    })
}

/// Writes a 0600 temp file beside `path`, fsyncs it, lets `place` put it at `path`, then
/// fsyncs the directory so that the new name survives a crash.
fn write_then(
    path: &Path,
    bytes: &[u8],
    place: impl FnOnce(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        place(&tmp)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn uuid_round_trip() {
        let u = new_uuid();
        let s = format_uuid(&u);
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert_eq!(parse_uuid(&s), Some(u));
        assert_eq!(parse_uuid(&s.to_uppercase()), Some(u));
        assert_eq!(parse_uuid("not-a-uuid"), None);
    }

    #[test]
    fn save_load_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut st = State::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let uuid = new_uuid();
        st.keys.insert(
            format_uuid(&uuid),
            KeyEntry {
                uuid,
                created: 1.5,
                description: "d".into(),
                state: KeyState::Disabled,
                deletion_date: None,
                pending_window_days: None,
                rotation_enabled: true,
                rotation_period_days: 90,
                rotation_anchor: 2.0,
                versions: vec![DataKey::generate().unwrap(), DataKey::generate().unwrap()],
                policy: None,
                tags: BTreeMap::new(),
                grants: Vec::new(),
                rotations: Vec::new(),
            },
        );
        st.save(&path).unwrap();
        let back = State::load_or_create(&path).unwrap();
        let k = &back.keys[&format_uuid(&uuid)];
        assert_eq!(k.versions.len(), 2);
        assert_eq!(k.state, KeyState::Disabled);
        let orig = &st.keys[&format_uuid(&uuid)].versions[1];
        assert_eq!(k.versions[1].expose_secret(), orig.expose_secret());

        fs::write(&path, b"{\"format\":").unwrap();
        let err = State::load_or_create(&path).err().unwrap();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        fs::write(&path, b"").unwrap();
        assert!(State::load_or_create(&path).is_err());
    }
}
