//! A mounted or opened volume as a service: its configuration, its KMS (behind the key
//! cache), the pool of fresh data keys, and the audit log. It creates and opens
//! [`EncryptedFile`]s for callers that know who is asking, and writes one audit record per
//! key event, failing closed when the record cannot be written.
//!
//! The FUSE glue (`fs`) calls this module and never the KMS or crypto directly.

mod config;
mod init;
mod names;
mod paths;
mod pool;
mod requester;
pub mod tree;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Map, Value};

pub use config::{ConfigError, KmsSettings, NamesConfig, VolumeConfig, CONFIG_NAME};
pub(crate) use init::admin_call;
pub use init::{default_audit_log, default_local_kms_state, init_volume};
pub use names::{
    new_dir_id, sidecar_of, CipherName, DirNames, NameError, Names, MAX_SYMLINK_TARGET,
};
pub use pool::{KeyPool, PooledKey};
pub use requester::Requester;

use crate::audit::chain::{ChainError, ChainWriter};
use crate::file::{self, read_header, EncryptedFile, FileError, KeySlot};
use crate::format::{FileId, Layout};
use crate::key_cache::{CacheStats, KeyCache};
use crate::kms::metered::MeteredKms;
use crate::kms::{EachKey, EncryptionContext, Kms, KmsError};
use std::sync::atomic::{AtomicU64, Ordering};

/// Encryption-context key binding a data key to its volume.
pub const CONTEXT_VOLUME: &str = "kmsfs:volume-id";
/// Encryption-context key binding a data key to its file.
pub const CONTEXT_FILE: &str = "kmsfs:file-id";
/// Encryption-context key naming a volume-level key's use ("names").
pub const CONTEXT_PURPOSE: &str = "kmsfs:purpose";

/// Why a volume operation failed. `fs/errno.rs` maps each to one errno.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot use the KMS: {0}")]
    KmsSetup(String),
    #[error("{path}: KMS: {source}")]
    Kms { path: String, source: KmsError },
    #[error("{path}: {source}")]
    File { path: String, source: FileError },
    #[error("audit log: {0}; refusing the key use (audit fails closed)")]
    Audit(#[from] ChainError),
    #[error("{0}")]
    Path(String),
}

impl VolumeError {
    /// The KMS error behind this, if any.
    pub fn kms(&self) -> Option<&KmsError> {
        match self {
            Self::Kms { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Whether the KMS refused the caller (access denied, key disabled): a permission
    /// problem rather than an outage or damage.
    pub fn is_access_denied(&self) -> bool {
        matches!(
            self.kms(),
            Some(KmsError::AccessDenied { .. } | KmsError::Disabled(_))
        )
    }

    /// The file error behind this, if any.
    pub fn file(&self) -> Option<&FileError> {
        match self {
            Self::File { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Settings chosen at mount time.
#[derive(Debug, Clone)]
pub struct VolumeOptions {
    pub key_ttl: Duration,
    pub key_cache_size: usize,
    pub audit_log: PathBuf,
    /// Pre-generated data keys kept ready (0 turns the pool off).
    pub pool_target: usize,
    /// Most GenerateDataKey calls the pool keeps under way at once (in batches of
    /// up to 32 per refilling thread).
    pub pool_calls: usize,
}

impl VolumeOptions {
    pub fn new(audit_log: PathBuf) -> Self {
        Self {
            key_ttl: Duration::from_secs(300),
            key_cache_size: 1024,
            audit_log,
            pool_target: 32,
            pool_calls: 256,
        }
    }
}

pub struct Volume {
    cipherdir: PathBuf,
    config: VolumeConfig,
    layout: Layout,
    keys: Arc<KeyCache<Arc<dyn Kms>>>,
    pool: KeyPool,
    audit: ChainWriter,
    names: Names,
    metrics: Arc<MeteredKms<Arc<dyn Kms>>>,
    integrity_failures: AtomicU64,
    started: Instant,
}

/// Connects to the KMS a volume's settings name.
pub fn connect_kms(settings: &KmsSettings) -> Result<Arc<dyn Kms>, VolumeError> {
    match settings {
        KmsSettings::Local { state } => {
            let engine = crate::kms::engine::Engine::open(state)
                .map_err(|e| VolumeError::KmsSetup(e.to_string()))?;
            Ok(Arc::new(engine))
        }
        KmsSettings::Http { endpoint } => {
            let cfg = crate::kms::config::ClientConfig::from_env(endpoint.as_deref())
                .map_err(|e| VolumeError::KmsSetup(e.to_string()))?;
            let client = crate::kms::client::HttpKms::new(cfg)
                .map_err(|e| VolumeError::KmsSetup(e.to_string()))?;
            Ok(Arc::new(client))
        }
    }
}

impl Volume {
    /// Opens the volume at `cipherdir` with its configured KMS.
    pub fn open(cipherdir: &Path, opts: VolumeOptions) -> Result<Self, VolumeError> {
        let config = VolumeConfig::load(cipherdir)?;
        let kms = connect_kms(&config.kms)?;
        Self::with_kms(cipherdir, config, kms, opts)
    }

    /// Opens the volume with a given KMS (tests wrap it in counters or faults).
    pub fn with_kms(
        cipherdir: &Path,
        config: VolumeConfig,
        kms: Arc<dyn Kms>,
        opts: VolumeOptions,
    ) -> Result<Self, VolumeError> {
        if let Some(dir) = opts.audit_log.parent() {
            std::fs::create_dir_all(dir).map_err(|source| ChainError::Io {
                path: dir.into(),
                source,
            })?;
        }
        let audit = ChainWriter::open(&opts.audit_log)?;
        let metrics = Arc::new(MeteredKms::new(kms));
        let kms: Arc<dyn Kms> = metrics.clone();
        let names = unwrap_names_key(&audit, cipherdir, &config, kms.as_ref())?;
        let keys = Arc::new(KeyCache::new(
            kms.clone(),
            opts.key_cache_size,
            opts.key_ttl,
        ));
        keys.spawn_sweeper(Duration::from_secs(1));
        let (arn, vol) = (config.key_arn.clone(), config.volume_id.clone());
        let pool_ceiling = pool::ceiling(
            opts.pool_target,
            opts.key_cache_size,
            crate::secret::key_page_budget(),
        );
        if pool::held_back(opts.pool_target, pool_ceiling) {
            tracing::warn!(
                "the data-key pool may grow to only {pool_ceiling} keys during bursts of \
                 creates (each key takes a page of locked memory, and `ulimit -l` leaves room \
                 for no more beside the key cache's {}): against a slow KMS, creating many \
                 files will wait for it. Raise the limit (`ulimit -l`, or LimitMEMLOCK= in a \
                 systemd unit) or lower --key-cache-size.",
                opts.key_cache_size
            );
        }
        let pool = KeyPool::new(
            opts.pool_target,
            pool_ceiling,
            opts.pool_calls,
            opts.key_ttl.min(Duration::from_secs(60)),
            move |file_ids: &[FileId], each: EachKey<'_>| {
                let contexts: Vec<_> = file_ids.iter().map(|id| context(&vol, id)).collect();
                kms.generate_data_keys(&arn, &contexts, each)
            },
        );
        Ok(Self {
            cipherdir: cipherdir.into(),
            layout: Layout::new(config.format_version, config.header_len),
            config,
            keys,
            pool,
            audit,
            names,
            metrics,
            integrity_failures: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    /// Counters for `kmsfs status`: key cache, KMS calls and latency, errors, uptime.
    pub fn stats(&self) -> Value {
        let cache = self.keys.stats();
        json!({
            "volume_id": self.config.volume_id,
            "cipherdir": self.cipherdir,
            "uptime_s": self.started.elapsed().as_secs(),
            "key_cache": {"entries": cache.entries, "hits": cache.hits, "misses": cache.misses},
            "key_pool_ready": self.pool.ready(),
            "kms": self.metrics.stats(),
            "integrity_failures": self.integrity_failures.load(Ordering::Relaxed),
        })
    }

    /// Names, symlink targets and xattr values of this volume.
    pub fn names(&self) -> &Names {
        &self.names
    }

    pub fn cipherdir(&self) -> &Path {
        &self.cipherdir
    }

    pub fn config(&self) -> &VolumeConfig {
        &self.config
    }

    /// The plaintext size of a ciphertext file of `cipher_len` bytes, without any key.
    /// A damaged length (cut mid-block) shows as the bytes past the header; reading such a
    /// file fails.
    pub fn plain_size(&self, cipher_len: u64) -> u64 {
        self.layout
            .plain_len(cipher_len)
            .unwrap_or_else(|_| cipher_len.saturating_sub(self.layout.header_len()))
    }

    /// Checks that the KMS makes data keys under the volume's key (the first one goes into
    /// the pool, so the call is not wasted).
    pub fn check_kms(&self) -> Result<(), VolumeError> {
        self.pool.prime().map_err(|source| VolumeError::Kms {
            path: self.cipherdir.display().to_string(),
            source,
        })
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.keys.stats()
    }

    /// Wipes every cached and pooled key (unmount, signal).
    pub fn wipe_keys(&self) {
        self.keys.clear();
        self.pool.shutdown();
    }

    /// Makes `file` (new and empty) a kmsfs file with a fresh data key.
    pub fn create_file(
        &self,
        file: File,
        path: &str,
        who: &Requester,
    ) -> Result<EncryptedFile, VolumeError> {
        let pooled = match self.pool.take() {
            Ok(p) => p,
            Err(e) => {
                self.audit_kms_failure("data_key_generated", None, path, who, &e, None)?;
                return Err(VolumeError::Kms {
                    path: path.into(),
                    source: e,
                });
            }
        };
        let PooledKey {
            file_id,
            generated,
            kms_latency,
            ..
        } = pooled;
        self.record(
            "data_key_generated",
            Some(&file_id),
            path,
            &generated.key_arn,
            who,
            json!({"outcome": "ok", "cache": "none", "kms_latency_ms": ms(kms_latency)}),
        )?;
        let file_err = |source| VolumeError::File {
            path: path.into(),
            source,
        };
        let cipher = crate::crypto::FileCipher::new(&generated.key, file_id);
        let slot = KeySlot {
            key_id: generated.key_arn.clone(),
            wrapped_key: generated.wrapped.clone(),
        };
        let header = file::new_header(
            &cipher,
            self.config.format_version,
            self.config.header_len,
            slot,
        )
        .map_err(|e| file_err(e.into()))?;
        EncryptedFile::create(file, cipher, header).map_err(file_err)
    }

    /// Opens an existing kmsfs file: reads its header, unwraps its key (cache or KMS),
    /// checks the key commitment.
    pub fn open_file(
        &self,
        file: File,
        path: &str,
        who: &Requester,
    ) -> Result<EncryptedFile, VolumeError> {
        let file_err = |source| VolumeError::File {
            path: path.into(),
            source,
        };
        let header = match read_header(&file) {
            Ok(h) => h,
            Err(e) => {
                self.report_integrity(None, path, who, &e)?;
                return Err(file_err(e));
            }
        };
        // Sizes follow from ciphertext lengths by the volume's layout, so every file must
        // have the volume's version and header length.
        let misfit = if header.version != self.config.format_version {
            Some(crate::format::FormatError::VersionMismatch {
                file: header.version,
                volume: self.config.format_version,
            })
        } else if header.header_len != self.config.header_len {
            Some(crate::format::FormatError::BadHeaderLen(header.header_len))
        } else {
            None
        };
        if let Some(e) = misfit {
            let e = FileError::Format(e);
            self.report_integrity(Some(&header.file_id), path, who, &e)?;
            return Err(file_err(e));
        }
        let ctx = context(&self.config.volume_id, &header.file_id);
        let started = Instant::now();
        let result = self
            .keys
            .decrypt_cached(&header.key_id, &header.wrapped_key, &ctx);
        let latency = started.elapsed();
        let (key, hit) = match result {
            Ok(k) => k,
            Err(e) => {
                self.audit_kms_failure(
                    "key_unwrapped",
                    Some(&header.file_id),
                    path,
                    who,
                    &e,
                    Some(&header.key_id),
                )?;
                tracing::warn!(
                    "open {path}: file {} key unwrap failed: {e}",
                    header.file_id
                );
                return Err(VolumeError::Kms {
                    path: path.into(),
                    source: e,
                });
            }
        };
        let (event, extra) = if hit {
            ("key_from_cache", json!({"outcome": "ok", "cache": "hit"}))
        } else {
            (
                "key_unwrapped",
                json!({"outcome": "ok", "cache": "miss", "kms_latency_ms": ms(latency)}),
            )
        };
        let file_id = header.file_id;
        self.record(event, Some(&file_id), path, &header.key_id, who, extra)?;
        EncryptedFile::open(file, header, &key).map_err(|e| {
            let _ = self.report_integrity(Some(&file_id), path, who, &e);
            file_err(e)
        })
    }

    /// Audits a key use that needed no unwrap: the file is already open through another
    /// handle, whose key it shares.
    pub fn note_shared_open(
        &self,
        header: &crate::format::Header,
        path: &str,
        who: &Requester,
    ) -> Result<(), VolumeError> {
        self.record(
            "key_from_cache",
            Some(&header.file_id),
            path,
            &header.key_id,
            who,
            json!({"outcome": "ok", "cache": "open_file"}),
        )
    }

    /// Logs and audits damage found in a file (a failed block, header or length).
    pub fn report_integrity(
        &self,
        file_id: Option<&FileId>,
        path: &str,
        who: &Requester,
        err: &FileError,
    ) -> Result<(), VolumeError> {
        if !err.is_integrity() {
            return Ok(());
        }
        self.integrity_failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            "integrity failure: {path} (file {}): {err}",
            file_id
                .map(|f| f.to_hex())
                .unwrap_or_else(|| "unknown".into())
        );
        let mut extra =
            json!({"outcome": "error", "error": err.kind(), "message": err.to_string()});
        if let FileError::BlockAuth { block_no } = err {
            extra["block"] = json!(block_no);
        }
        self.record("integrity_failure", file_id, path, "", who, extra)
    }

    fn audit_kms_failure(
        &self,
        attempted: &str,
        file_id: Option<&FileId>,
        path: &str,
        who: &Requester,
        err: &KmsError,
        key_id: Option<&str>,
    ) -> Result<(), VolumeError> {
        let event = match err {
            KmsError::AccessDenied { .. } | KmsError::Disabled(_) => "access_denied",
            _ => "kms_failure",
        };
        self.record(
            event,
            file_id,
            path,
            key_id.unwrap_or(&self.config.key_arn),
            who,
            json!({"outcome": "error", "attempted": attempted, "error": err.to_string(), "retryable": err.retryable()}),
        )
    }

    fn record(
        &self,
        event: &str,
        file_id: Option<&FileId>,
        path: &str,
        key_arn: &str,
        who: &Requester,
        extra: Value,
    ) -> Result<(), VolumeError> {
        record(
            &self.audit,
            &self.config.volume_id,
            event,
            (file_id, path, key_arn),
            who,
            extra,
        )
    }
}

/// Appends one audit record: what happened to which file's key, and who asked.
fn record(
    audit: &ChainWriter,
    volume_id: &str,
    event: &str,
    (file_id, path, key_arn): (Option<&FileId>, &str, &str),
    who: &Requester,
    extra: Value,
) -> Result<(), VolumeError> {
    let mut rec = Map::new();
    rec.insert(
        "time".into(),
        json!(crate::kms::clock::rfc3339(SystemTime::now())),
    );
    rec.insert("event".into(), json!(event));
    rec.insert("volume_id".into(), json!(volume_id));
    rec.insert("file_id".into(), json!(file_id.map(|f| f.to_hex())));
    rec.insert("path".into(), json!(path));
    rec.insert("key_arn".into(), json!(key_arn));
    rec.insert("uid".into(), json!(who.uid));
    rec.insert("gid".into(), json!(who.gid));
    rec.insert("pid".into(), json!(who.pid));
    rec.insert("process".into(), json!(who.process_name()));
    if let Value::Object(m) = extra {
        rec.extend(m);
    }
    audit.append(rec)?;
    Ok(())
}

/// Unwraps the volume's names key (once per mount), audited like any key use.
fn unwrap_names_key(
    audit: &ChainWriter,
    cipherdir: &Path,
    config: &VolumeConfig,
    kms: &dyn Kms,
) -> Result<Names, VolumeError> {
    let NamesConfig::Encrypted {
        key_arn,
        wrapped_key,
    } = &config.names
    else {
        return Ok(Names::plaintext());
    };
    use base64::Engine as _;
    let wrapped = base64::engine::general_purpose::STANDARD
        .decode(wrapped_key)
        .map_err(|e| {
            VolumeError::Config(ConfigError::Invalid {
                path: VolumeConfig::path_in(cipherdir),
                reason: format!("names.wrapped_key is not base64: {e}"),
            })
        })?;
    let who = Requester::current();
    let started = Instant::now();
    let target = (None, "", key_arn.as_str());
    match kms.decrypt(key_arn, &wrapped, &names_context(&config.volume_id)) {
        Ok(key) => {
            let extra =
                json!({"outcome": "ok", "cache": "miss", "kms_latency_ms": ms(started.elapsed())});
            record(
                audit,
                &config.volume_id,
                "names_key_unwrapped",
                target,
                &who,
                extra,
            )?;
            Ok(Names::encrypted(key))
        }
        Err(e) => {
            let extra = json!({"outcome": "error", "attempted": "names_key_unwrapped", "error": e.to_string(), "retryable": e.retryable()});
            let event = if matches!(e, KmsError::AccessDenied { .. } | KmsError::Disabled(_)) {
                "access_denied"
            } else {
                "kms_failure"
            };
            record(audit, &config.volume_id, event, target, &who, extra)?;
            Err(VolumeError::Kms {
                path: cipherdir.display().to_string(),
                source: e,
            })
        }
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        self.wipe_keys();
    }
}

/// The encryption context of the volume's names key.
pub fn names_context(volume_id: &str) -> EncryptionContext {
    EncryptionContext::new()
        .with(CONTEXT_VOLUME, volume_id)
        .with(CONTEXT_PURPOSE, "names")
}

/// The encryption context of a file's data key.
pub fn context(volume_id: &str, file_id: &FileId) -> EncryptionContext {
    EncryptionContext::new()
        .with(CONTEXT_VOLUME, volume_id)
        .with(CONTEXT_FILE, &file_id.to_hex())
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
