//! A mounted or opened volume as a service: its configuration, its KMS (behind the key
//! cache), the pool of fresh data keys, its namespace, and the audit log. It creates and
//! opens [`EncryptedFile`](crate::file::EncryptedFile)s for callers that know who is
//! asking (`files.rs`), and writes one audit record per key event (`audit.rs`), failing
//! closed when the record cannot be written.
//!
//! The FUSE glue (`fs`) and the offline tools (`ops`) call this module and never the KMS or
//! crypto directly; only `rewrap`, which never sees a file's plaintext key, calls `ReEncrypt`
//! on the volume's [`KmsConnection`].

mod audit;
mod bucket;
mod config;
mod connect;
mod error;
mod files;
mod init;
mod lock;
mod names_key;
mod offload;
mod open_files;
mod pool;
mod prefetch;
mod requester;
pub mod trust;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use audit::{Attempt, AuditEvent, Cache};
pub use config::{
    BucketKeyConfig, ConfigError, KmsSettings, NamesConfig, VolumeConfig, CONFIG_NAME,
};
pub use connect::KmsConnection;
pub use error::VolumeError;
pub use init::{default_audit_log, default_local_kms_state, init_volume};
pub use lock::{LockError, VolumeLock, LOCK_NAME};
pub use names_key::signing_key;
pub use offload::{without_kms, Offload};
pub use pool::{KeyPool, PooledKey};
pub use requester::Requester;

use crate::audit::chain::{ChainError, ChainWriter};
use crate::format::{FileId, Layout};
use crate::key_cache::{CacheStats, KeyCache};
use crate::kms::metered::MeteredKms;
use crate::kms::{EachKey, EncryptionContext, Kms};
use crate::namespace::{Names, Namespace};
use audit::Auditor;

/// Encryption-context key binding a data key to its volume.
pub const CONTEXT_VOLUME: &str = "kmsfs:volume-id";
/// Encryption-context key binding a data key to its file.
pub const CONTEXT_FILE: &str = "kmsfs:file-id";
/// Encryption-context key binding a bucket key to its bucket.
pub const CONTEXT_BUCKET: &str = "kmsfs:bucket-id";
/// Encryption-context key naming a volume-level key's use ("names").
pub const CONTEXT_PURPOSE: &str = "kmsfs:purpose";

/// Most requests waiting on a remote KMS at once; more wait in line (their time in line
/// counts against their deadline).
const OFFLOAD_WORKERS: usize = 64;

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
    /// How long a pooled key may wait for a file before it is dropped (zero turns the
    /// pool off), apart from `key_ttl`, which is how long an unwrapped key is cached.
    pub pool_key_lifetime: Duration,
    /// A read-only mount: no data keys are made (no pool, no GenerateDataKey at mount),
    /// so credentials allowed only to Decrypt can mount it.
    pub read_only: bool,
    /// Longest a request waits for a remote KMS, retries included ([`Offload`]).
    pub kms_timeout: Duration,
    /// Most Decrypt calls under way to unwrap keys ahead of a directory walk's opens
    /// (0 turns it off).
    pub prefetch_calls: usize,
}

impl VolumeOptions {
    pub fn new(audit_log: PathBuf) -> Self {
        Self {
            key_ttl: Duration::from_secs(300),
            key_cache_size: 1024,
            audit_log,
            pool_target: 32,
            pool_calls: 256,
            pool_key_lifetime: Duration::from_secs(60),
            read_only: false,
            kms_timeout: Duration::from_secs(15),
            prefetch_calls: 256,
        }
    }
}

pub struct Volume {
    cipherdir: PathBuf,
    config: VolumeConfig,
    layout: Layout,
    keys: Arc<KeyCache<Arc<dyn Kms>>>,
    pool: KeyPool,
    auditor: Auditor,
    namespace: Namespace,
    metrics: Arc<MeteredKms<Arc<dyn Kms>>>,
    integrity_failures: AtomicU64,
    open_files: open_files::OpenFiles,
    /// The bucket key new files get theirs from, in a bucket volume (`None` otherwise).
    buckets: Option<bucket::Buckets>,
    started: Instant,
    read_only: bool,
    /// Workers for requests that wait on a remote KMS; `None` for the built-in one, which
    /// answers in-process and never stalls.
    offload: Option<Offload>,
    /// Unwraps keys ahead of a directory walk's opens, on a remote KMS
    /// ([`Volume::start_prefetch`]).
    prefetch: std::sync::OnceLock<prefetch::Prefetch>,
    key_ttl: Duration,
    prefetch_calls: usize,
}

impl Volume {
    /// Opens the volume at `cipherdir` with its configured KMS.
    pub fn open(cipherdir: &Path, opts: VolumeOptions) -> Result<Self, VolumeError> {
        let config = VolumeConfig::load(cipherdir)?;
        trust::check(&config, cipherdir)?;
        let kms = KmsConnection::open(&config.kms)?.kms();
        Self::with_kms(cipherdir, config, kms, opts)
    }

    /// Opens the volume with a given KMS connection.
    pub fn with_kms(
        cipherdir: &Path,
        config: VolumeConfig,
        kms: Arc<dyn Kms>,
        opts: VolumeOptions,
    ) -> Result<Self, VolumeError> {
        let auditor = Auditor::new(open_audit_log(&opts.audit_log)?, config.volume_id.clone());
        let metrics = Arc::new(MeteredKms::new(kms));
        let kms: Arc<dyn Kms> = metrics.clone();
        let names = names_key::unwrap_names_key(&auditor, cipherdir, &config, kms.as_ref())?;
        let keys = Arc::new(KeyCache::new(
            kms.clone(),
            opts.key_cache_size,
            opts.key_ttl,
        ));
        keys.spawn_sweeper(Duration::from_secs(1));
        let pool = key_pool(&config, kms, &opts);
        let buckets = config.bucket_key.as_ref().map(bucket::Buckets::new);
        Ok(Self {
            cipherdir: cipherdir.into(),
            layout: Layout::new(config.format_version, config.header_len),
            keys,
            pool,
            auditor,
            namespace: Namespace::new(names),
            metrics,
            integrity_failures: AtomicU64::new(0),
            open_files: Default::default(),
            buckets,
            started: Instant::now(),
            read_only: opts.read_only,
            offload: matches!(
                config.kms,
                KmsSettings::Http { .. } | KmsSettings::Transit { .. }
            )
            .then(|| Offload::new(OFFLOAD_WORKERS, opts.kms_timeout)),
            prefetch: Default::default(),
            key_ttl: opts.key_ttl,
            prefetch_calls: opts.prefetch_calls,
            config,
        })
    }

    /// Counters for `kmsfs status`: key cache, KMS calls and latency, errors, uptime.
    pub fn stats(&self) -> Value {
        let cache = self.keys.stats();
        json!({
            "volume_id": self.config.volume_id,
            "cipherdir": self.cipherdir,
            "uptime_s": self.started.elapsed().as_secs(),
            "key_cache": {
                "entries": cache.entries,
                "hits": cache.hits,
                "misses": cache.misses,
                "prefetched": cache.prefetched,
                "prefetched_used": cache.prefetched_used,
                "prefetched_unused": cache.prefetched_unused,
            },
            "key_pool_ready": self.pool.ready(),
            "kms": self.metrics.stats(),
            "integrity_failures": self.integrity_failures.load(Ordering::Relaxed),
            "keys_not_locked_in_ram": crate::secret::memory_lock_failures(),
            "bucket_key": self.buckets.as_ref().map(|b| b.status()),
        })
    }

    /// The ciphertext directory's namespace: names, entries, records.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// Names, symlink targets and xattr values of this volume.
    pub fn names(&self) -> &Names {
        self.namespace.names()
    }

    pub fn cipherdir(&self) -> &Path {
        &self.cipherdir
    }

    pub fn config(&self) -> &VolumeConfig {
        &self.config
    }

    /// The layout of the volume's files (its format version and header length).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The plaintext size of a ciphertext file of `cipher_len` bytes, without any key.
    /// A damaged length (cut mid-block) shows as the bytes past the header's region;
    /// reading such a file fails.
    pub fn plain_size(&self, cipher_len: u64) -> u64 {
        self.layout
            .plain_len_after_crash(cipher_len)
            .unwrap_or_else(|_| cipher_len.saturating_sub(self.layout.header_region_len()))
    }

    /// The plaintext path (in the mount) of a path in the ciphertext directory.
    pub fn decrypt_path(&self, cipher: &Path) -> Result<PathBuf, VolumeError> {
        Ok(self.namespace.decrypt_path(&self.cipherdir, cipher)?)
    }

    /// The ciphertext path (relative to the ciphertext directory) of a plaintext path.
    pub fn encrypt_path(&self, plain: &Path) -> Result<PathBuf, VolumeError> {
        Ok(self.namespace.encrypt_path(&self.cipherdir, plain)?)
    }

    /// Checks that the KMS makes data keys under the volume's key (the first one goes into
    /// the pool, so the call is not wasted).
    pub fn check_kms(&self) -> Result<(), VolumeError> {
        if self.read_only || self.buckets.is_some() {
            // Opening the volume unwrapped its names key: Decrypt works, and nothing more
            // is needed to read. A bucket volume makes its bucket key at the first create.
            return Ok(());
        }
        self.pool.prime().map_err(|source| VolumeError::Kms {
            path: self.cipherdir.display().to_string(),
            source,
        })
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.keys.stats()
    }

    /// From now on, reads the headers of the files a process is about to open as it walks
    /// a directory and unwraps their keys (`prefetch/mod.rs`;
    /// `VolumeOptions::prefetch_calls`, 0 turns it off). On the built-in KMS too: the
    /// headers, read ahead in parallel, are what a cold walk waits for there.
    pub fn start_prefetch(self: &Arc<Self>) {
        let max_calls = self.prefetch_calls;
        if max_calls == 0 {
            return;
        }
        if let Some(p) = prefetch::Prefetch::new(self, max_calls, self.key_ttl) {
            let _ = self.prefetch.set(p);
        }
    }

    /// Where requests that must wait for the KMS run, off the FUSE threads: `None` when
    /// the KMS is the built-in one, which never makes them wait.
    pub fn offload(&self) -> Option<&Offload> {
        self.offload.as_ref()
    }

    /// Wipes every cached and pooled key and syncs the audit log (unmount, signal): the
    /// daemon may exit without dropping the volume, and the log promises its records are
    /// on disk at unmount.
    pub fn wipe_keys(&self) {
        self.keys.clear();
        self.pool.shutdown();
        if let Some(b) = &self.buckets {
            b.clear();
        }
        if let Err(e) = self.auditor.sync() {
            tracing::warn!("{}", crate::describe(&e));
        }
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        self.wipe_keys();
    }
}

/// Opens (creating its directory) the audit log at `path`.
fn open_audit_log(path: &Path) -> Result<ChainWriter, ChainError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ChainError::Io {
            path: dir.into(),
            source,
        })?;
    }
    ChainWriter::open(path)
}

/// The pool of fresh data keys under the volume's key, as large as locked memory allows.
fn key_pool(config: &VolumeConfig, kms: Arc<dyn Kms>, opts: &VolumeOptions) -> KeyPool {
    let (arn, vol) = (config.key_arn.clone(), config.volume_id.clone());
    let pool_ceiling = pool::ceiling(
        opts.pool_target,
        opts.key_cache_size,
        crate::secret::key_page_budget(),
    );
    // A bucket volume's creates need no data key of the KMS.
    let off = opts.read_only || opts.pool_key_lifetime.is_zero() || config.bucket_key.is_some();
    if !off && pool::held_back(opts.pool_target, pool_ceiling) {
        tracing::warn!(
            "the data-key pool may grow to only {pool_ceiling} keys during bursts of \
             creates (each key takes a page of locked memory, and `ulimit -l` leaves room \
             for no more beside the key cache's {}): against a slow KMS, creating many \
             files will wait for it. Raise the limit (`ulimit -l`, or LimitMEMLOCK= in a \
             systemd unit) or lower --key-cache-size.",
            opts.key_cache_size
        );
    }
    KeyPool::new(
        if off { 0 } else { opts.pool_target },
        pool_ceiling,
        opts.pool_calls,
        opts.pool_key_lifetime,
        move |file_ids: &[FileId], each: EachKey<'_>| {
            let contexts: Vec<_> = file_ids.iter().map(|id| context(&vol, id)).collect();
            kms.generate_data_keys(&arn, &contexts, each)
        },
    )
}

/// The encryption context of the volume's names key.
pub fn names_context(volume_id: &str) -> EncryptionContext {
    EncryptionContext::new()
        .with(CONTEXT_VOLUME, volume_id)
        .with(CONTEXT_PURPOSE, "names")
}

/// The encryption context of a bucket key (`docs/format.md`, "Bucket keys"): the volume
/// and the bucket, never a file or a path.
pub fn bucket_context(volume_id: &str, bucket: &crate::format::BucketId) -> EncryptionContext {
    EncryptionContext::new()
        .with(CONTEXT_VOLUME, volume_id)
        .with(CONTEXT_BUCKET, &bucket.to_hex())
}

/// The encryption context of a file's data key.
pub fn context(volume_id: &str, file_id: &FileId) -> EncryptionContext {
    EncryptionContext::new()
        .with(CONTEXT_VOLUME, volume_id)
        .with(CONTEXT_FILE, &file_id.to_hex())
}
