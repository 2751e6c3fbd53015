//! The volume's audit records: what happened to which file's key, and who asked
//! (`docs/audit-log.md`). Each event is a typed value that serializes itself; the
//! [`Auditor`] adds who, where and when, and appends it to the hash-chained log. A record
//! that cannot be written refuses the key use (audit fails closed).

use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::Requester;
use crate::audit::chain::{ChainError, ChainWriter};
use crate::file::FileError;
use crate::format::{BucketId, FileId};
use crate::kms::KmsError;

/// Where a key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cache {
    /// A new key (from the data-key pool or the KMS).
    None,
    /// The KMS unwrapped it.
    Miss,
    /// The key cache.
    Hit,
    /// The key cache, where the key was put by a prefetch ([`AuditEvent::KeyPrefetched`])
    /// for the file a reader was about to open; this is the key's first use.
    Prefetched,
    /// The file was already open and shares its key.
    OpenFile,
    /// Derived from a bucket key the mount holds (`docs/format.md`, "Bucket keys").
    Bucket,
}

/// The key event a failed KMS call was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attempt {
    DataKeyGenerated,
    KeyUnwrapped,
    KeyPrefetched,
    NamesKeyUnwrapped,
    BucketKeyGenerated,
    BucketKeyUnwrapped,
}

/// One event of the audit log, with the fields that belong to it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    /// A file was created with a fresh data key (in a bucket volume, derived from bucket
    /// `bucket_id`'s key, no KMS call).
    DataKeyGenerated {
        cache: Cache,
        kms_latency_ms: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        bucket_id: Option<String>,
    },
    /// A file was opened with its key derived from bucket `bucket_id`'s key: `cache` says
    /// whether that key came from the key cache (`hit`), was just unwrapped (`miss`, after a
    /// `bucket_key_unwrapped` record) or is the one the mount made (`bucket`).
    KeyFromBucket { cache: Cache, bucket_id: String },
    /// The KMS made a new bucket key (one `GenerateDataKey`), for the files created after.
    BucketKeyGenerated {
        bucket_id: String,
        kms_latency_ms: f64,
    },
    /// The KMS unwrapped a bucket key (one `Decrypt`), for every file of the bucket.
    BucketKeyUnwrapped {
        bucket_id: String,
        kms_latency_ms: f64,
    },
    /// The KMS unwrapped a file's key on open.
    KeyUnwrapped { cache: Cache, kms_latency_ms: f64 },
    /// The KMS unwrapped a file's key ahead of its open, because the reader was walking
    /// its directory (`volume/prefetch.rs`); the open that uses it is recorded as
    /// `KeyFromCache` with `Prefetched`, and one that never comes leaves only this record.
    KeyPrefetched { kms_latency_ms: f64 },
    /// A file was opened with a key from the key cache or from an open handle.
    KeyFromCache { cache: Cache },
    /// The volume's names key was unwrapped (once per mount or tool run).
    NamesKeyUnwrapped { cache: Cache, kms_latency_ms: f64 },
    /// A file failed authentication: header, key commitment, length or a block.
    IntegrityFailure {
        error: String,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        block: Option<u64>,
    },
    /// The KMS refused (access denied, disabled key).
    AccessDenied {
        attempted: Attempt,
        error: String,
        retryable: bool,
    },
    /// The KMS failed otherwise (unreachable, throttled, invalid ciphertext, ...).
    KmsFailure {
        attempted: Attempt,
        error: String,
        retryable: bool,
    },
}

impl AuditEvent {
    /// A fresh key for a new file, made `latency` after its batch of KMS calls began.
    pub fn generated(latency: Duration) -> Self {
        Self::DataKeyGenerated {
            cache: Cache::None,
            kms_latency_ms: ms(latency),
            bucket_id: None,
        }
    }

    /// A new file's key, derived from bucket `bucket`'s key.
    pub fn derived(bucket: &BucketId) -> Self {
        Self::DataKeyGenerated {
            cache: Cache::Bucket,
            kms_latency_ms: 0.0,
            bucket_id: Some(bucket.to_hex()),
        }
    }

    /// A new bucket key, made by the KMS in `latency`.
    pub fn bucket_generated(bucket: &BucketId, latency: Duration) -> Self {
        Self::BucketKeyGenerated {
            bucket_id: bucket.to_hex(),
            kms_latency_ms: ms(latency),
        }
    }

    /// A bucket key the KMS unwrapped in `latency`.
    pub fn bucket_unwrapped(bucket: &BucketId, latency: Duration) -> Self {
        Self::BucketKeyUnwrapped {
            bucket_id: bucket.to_hex(),
            kms_latency_ms: ms(latency),
        }
    }

    /// A key the KMS unwrapped in `latency`.
    pub fn unwrapped(latency: Duration) -> Self {
        Self::KeyUnwrapped {
            cache: Cache::Miss,
            kms_latency_ms: ms(latency),
        }
    }

    /// The volume's names key, unwrapped by the KMS in `latency`.
    pub fn names_key_unwrapped(latency: Duration) -> Self {
        Self::NamesKeyUnwrapped {
            cache: Cache::Miss,
            kms_latency_ms: ms(latency),
        }
    }

    /// Damage found in a file.
    pub fn integrity(err: &FileError) -> Self {
        Self::IntegrityFailure {
            error: err.kind(),
            message: err.to_string(),
            block: match err {
                FileError::BlockAuth { block_no } => Some(*block_no),
                _ => None,
            },
        }
    }

    /// A failed KMS call for `attempted`: access denied, or any other failure.
    pub fn kms_failure(attempted: Attempt, err: &KmsError) -> Self {
        let (error, retryable) = (crate::describe(err), err.retryable());
        if matches!(err, KmsError::AccessDenied { .. } | KmsError::Disabled(_)) {
            Self::AccessDenied {
                attempted,
                error,
                retryable,
            }
        } else {
            Self::KmsFailure {
                attempted,
                error,
                retryable,
            }
        }
    }

    fn outcome(&self) -> &'static str {
        match self {
            Self::DataKeyGenerated { .. }
            | Self::KeyUnwrapped { .. }
            | Self::KeyPrefetched { .. }
            | Self::KeyFromCache { .. }
            | Self::KeyFromBucket { .. }
            | Self::BucketKeyGenerated { .. }
            | Self::BucketKeyUnwrapped { .. }
            | Self::NamesKeyUnwrapped { .. } => "ok",
            _ => "error",
        }
    }
}

/// A whole record as it is written (before the chain adds its hashes).
#[derive(Serialize)]
struct Record<'a> {
    time: String,
    volume_id: &'a str,
    file_id: Option<String>,
    path: &'a str,
    key_arn: &'a str,
    uid: u32,
    gid: u32,
    pid: u32,
    process: String,
    outcome: &'static str,
    #[serde(flatten)]
    event: &'a AuditEvent,
}

/// What a record is about: the file (if known), its path in the mount, and its key.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub file_id: Option<&'a FileId>,
    pub path: &'a str,
    pub key_arn: &'a str,
}

/// Writes a volume's audit records.
pub struct Auditor {
    log: ChainWriter,
    volume_id: String,
}

impl Auditor {
    pub fn new(log: ChainWriter, volume_id: String) -> Self {
        Self { log, volume_id }
    }

    /// Puts every record written so far on disk, with the head, before returning.
    pub fn sync(&self) -> Result<(), ChainError> {
        self.log.sync()
    }

    /// Appends one record of `event` about `subject`, asked for by `who`.
    pub fn record(
        &self,
        event: &AuditEvent,
        subject: Subject<'_>,
        who: &Requester,
    ) -> Result<(), ChainError> {
        let record = Record {
            time: crate::kms::clock::rfc3339(SystemTime::now()),
            volume_id: &self.volume_id,
            file_id: subject.file_id.map(FileId::to_hex),
            path: subject.path,
            key_arn: subject.key_arn,
            uid: who.uid,
            gid: who.gid,
            pid: who.pid,
            process: who.process_name(),
            outcome: event.outcome(),
            event,
        };
        let serde_json::Value::Object(map) =
            serde_json::to_value(&record).expect("an audit record serializes")
        else {
            unreachable!("a struct serializes to an object")
        };
        self.log.append(map)?;
        Ok(())
    }
}

/// Milliseconds with microsecond precision.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_as_the_audit_log_documents_them() {
        let v = serde_json::to_value(AuditEvent::generated(Duration::from_micros(1500))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"event": "data_key_generated", "cache": "none", "kms_latency_ms": 1.5})
        );
        let v = serde_json::to_value(AuditEvent::integrity(&FileError::BlockAuth { block_no: 7 }))
            .unwrap();
        assert_eq!(v["event"], "integrity_failure");
        assert_eq!(v["error"], "block_auth{7}");
        assert_eq!(v["block"], 7);
        let denied = KmsError::AccessDenied {
            code: "AccessDeniedException".into(),
            message: "no".into(),
        };
        let v =
            serde_json::to_value(AuditEvent::kms_failure(Attempt::KeyUnwrapped, &denied)).unwrap();
        assert_eq!(v["event"], "access_denied");
        assert_eq!(v["attempted"], "key_unwrapped");
        assert_eq!(
            AuditEvent::kms_failure(Attempt::KeyUnwrapped, &denied).outcome(),
            "error"
        );
    }

    #[test]
    fn a_record_carries_who_where_and_the_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.jsonl");
        let auditor = Auditor::new(ChainWriter::open(&log).unwrap(), "ab".repeat(16));
        let id = FileId([3; 16]);
        let who = Requester::current();
        let subject = Subject {
            file_id: Some(&id),
            path: "a/b",
            key_arn: "arn:k",
        };
        auditor
            .record(
                &AuditEvent::KeyFromCache {
                    cache: Cache::OpenFile,
                },
                subject,
                &who,
            )
            .unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        let r: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(r["event"], "key_from_cache");
        assert_eq!(r["cache"], "open_file");
        assert_eq!(r["outcome"], "ok");
        assert_eq!(r["file_id"], id.to_hex());
        assert_eq!(r["path"], "a/b");
        assert_eq!(r["pid"], std::process::id());
        assert!(r["hash"].is_string() && r["prev_hash"].is_string());
    }
}
