//! Bucket keys (`docs/format.md`, "Bucket keys"; `kmsfs init --bucket-key`): in a bucket
//! volume a new file's data key is derived from the bucket key the volume holds, made by
//! one `GenerateDataKey` at the first create and again once its period has run out; a
//! file's open unwraps its bucket key through the key cache (one `Decrypt` for every file
//! of the bucket) and derives the file's key from it. Every derivation is audited as the
//! file's own record, and every KMS call for a bucket key as one of its own.

use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::audit::{Attempt, AuditEvent, Cache};
use super::{bucket_context, offload, BucketKeyConfig, Requester, Volume, VolumeError};
use crate::crypto::{bucket_file_key, FileCipher};
use crate::file::{self, EncryptedFile, KeySlot};
use crate::format::{BucketId, Header};
use crate::key_cache::Served;
use crate::kms::Kms;
use crate::secret::DataKey;

/// One bucket the volume makes files under: its id, its key (locked memory, wiped when
/// the last holder drops it), the key slot its files carry, and when it was made.
struct Bucket {
    id: BucketId,
    key: Arc<DataKey>,
    slot: KeySlot,
    made: Instant,
}

/// The bucket new files go into.
pub(super) struct Buckets {
    period: Duration,
    current: Mutex<Option<Arc<Bucket>>>,
    /// Held while a bucket key is being made, so that concurrent creates make one.
    making: Mutex<()>,
}

impl Buckets {
    pub(super) fn new(config: &BucketKeyConfig) -> Self {
        Self {
            period: Duration::from_secs(config.period_s.max(1)),
            current: Mutex::new(None),
            making: Mutex::new(()),
        }
    }

    /// The current bucket, if its period has not run out.
    fn fresh(&self) -> Option<Arc<Bucket>> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current
            .as_ref()
            .filter(|b| b.made.elapsed() < self.period)
            .cloned()
    }

    /// The current bucket's id and age, for `kmsfs status`.
    pub(super) fn status(&self) -> serde_json::Value {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::json!({
            "period_s": self.period.as_secs(),
            "current": current.as_ref().map(|b| b.id.to_hex()),
            "age_s": current.as_ref().map(|b| b.made.elapsed().as_secs()),
        })
    }

    /// Forgets the current bucket (and so wipes its key once no create holds it).
    pub(super) fn clear(&self) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Volume {
    /// Makes `file` (new and empty) a kmsfs file whose key comes from the current bucket.
    pub(super) fn create_in_bucket(
        &self,
        buckets: &Buckets,
        file: File,
        path: &str,
        who: &Requester,
    ) -> Result<EncryptedFile, VolumeError> {
        let file_err = |source| VolumeError::File {
            path: path.into(),
            source,
        };
        let bucket = self.current_bucket(buckets, path, who)?;
        let file_id = file::new_file_id().map_err(file_err)?;
        let key = bucket_file_key(&bucket.key, file_id);
        let event = AuditEvent::derived(&bucket.id);
        self.audit(&event, Some(&file_id), path, &bucket.slot.key_id, who)?;
        let cipher = FileCipher::new(&key, file_id);
        let shape = (self.config.format_version, self.config.bound_names);
        let header = file::new_bucket_header(
            &cipher,
            shape,
            self.config.header_len,
            bucket.slot.clone(),
            bucket.id,
        )
        .map_err(|e| file_err(e.into()))?;
        EncryptedFile::create(file, cipher, header).map_err(file_err)
    }

    /// The bucket to create in: the current one, or a new one made by the KMS (audited).
    fn current_bucket(
        &self,
        buckets: &Buckets,
        path: &str,
        who: &Requester,
    ) -> Result<Arc<Bucket>, VolumeError> {
        if let Some(b) = buckets.fresh() {
            return Ok(b);
        }
        offload::may_call_kms()?;
        let _making = buckets.making.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = buckets.fresh() {
            return Ok(b);
        }
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|_| VolumeError::File {
            path: path.into(),
            source: file::FileError::Random,
        })?;
        let id = BucketId(id);
        let ctx = bucket_context(&self.config.volume_id, &id);
        let started = Instant::now();
        // Through the key cache, which keeps the key for this mount's own reads.
        match self.keys.generate_data_key(&self.config.key_arn, &ctx) {
            Ok(g) => {
                let event = AuditEvent::bucket_generated(&id, started.elapsed());
                self.audit(&event, None, path, &g.key_arn, who)?;
                let bucket = Arc::new(Bucket {
                    id,
                    key: Arc::new(g.key),
                    slot: KeySlot {
                        key_id: g.key_arn,
                        wrapped_key: g.wrapped,
                    },
                    made: Instant::now(),
                });
                *buckets.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(bucket.clone());
                tracing::info!("new bucket key {id}");
                Ok(bucket)
            }
            Err(e) => {
                let event = AuditEvent::kms_failure(Attempt::BucketKeyGenerated, &e);
                self.audit(&event, None, path, &self.config.key_arn, who)?;
                Err(VolumeError::Kms {
                    path: path.into(),
                    source: e,
                })
            }
        }
    }

    /// The data key of the bucket file with `header`: its bucket key from the key cache or
    /// the KMS (that call audited on its own), then derived; the open audited.
    pub(super) fn bucket_file_key(
        &self,
        header: &Header,
        path: &str,
        who: &Requester,
    ) -> Result<Arc<DataKey>, VolumeError> {
        let id = header.bucket_id.expect("a bucket header has a bucket id");
        let ctx = bucket_context(&self.config.volume_id, &id);
        let (result, latency) = self.cached_or_unwrapped(header, &ctx)?;
        let (file_id, key_id) = (Some(&header.file_id), header.key_id.as_str());
        match result {
            Ok((bucket_key, served)) => {
                let hit = served != Served::Kms;
                if !hit {
                    let event = AuditEvent::bucket_unwrapped(&id, latency);
                    self.audit(&event, None, path, key_id, who)?;
                }
                let cache = if hit { Cache::Hit } else { Cache::Miss };
                let event = AuditEvent::KeyFromBucket {
                    cache,
                    bucket_id: id.to_hex(),
                };
                self.audit(&event, file_id, path, key_id, who)?;
                Ok(Arc::new(bucket_file_key(&bucket_key, header.file_id)))
            }
            Err(e) => {
                let event = AuditEvent::kms_failure(Attempt::BucketKeyUnwrapped, &e);
                self.audit(&event, file_id, path, key_id, who)?;
                tracing::warn!("open {path}: bucket {id} key unwrap failed: {e}");
                Err(VolumeError::Kms {
                    path: path.into(),
                    source: e,
                })
            }
        }
    }
}
