//! A volume's files: creating one with a fresh data key, and opening one by unwrapping its
//! key (key cache or KMS) and checking its key commitment; each key use audited first.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::audit::{Attempt, AuditEvent, Cache, Subject};
use super::{context, offload, PooledKey, Requester, Volume, VolumeError};
use crate::file::{self, read_header, EncryptedFile, FileError, KeySlot};
use crate::format::{FileId, FormatError, Header};
use crate::key_cache::Served;
use crate::kms::{EncryptionContext, KmsError};
use crate::namespace::{NamespaceError, Place};
use crate::secret::DataKey;
use std::sync::Arc;
use std::time::Duration;

/// A key and where it was found, or the KMS's error.
pub(super) type Unwrapped = Result<(Arc<DataKey>, Served), KmsError>;

impl Volume {
    /// Makes `file` (new and empty) a kmsfs file with a fresh data key (in a bucket volume,
    /// one derived from the bucket key). `path` (in the mount) is for the audit log.
    pub fn create_file(
        &self,
        file: File,
        path: &str,
        who: &Requester,
    ) -> Result<EncryptedFile, VolumeError> {
        if let Some(buckets) = &self.buckets {
            return self.create_in_bucket(buckets, file, path, who);
        }
        let taken = match offload::may_call_kms() {
            Ok(()) => self.pool.take(),
            Err(needs_kms) => Ok(self.pool.try_take().ok_or(needs_kms)?),
        };
        let pooled = match taken {
            Ok(p) => p,
            Err(e) => {
                let event = AuditEvent::kms_failure(Attempt::DataKeyGenerated, &e);
                self.audit(&event, None, path, &self.config.key_arn, who)?;
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
        let event = AuditEvent::generated(kms_latency);
        self.audit(&event, Some(&file_id), path, &generated.key_arn, who)?;
        let file_err = |source| VolumeError::File {
            path: path.into(),
            source,
        };
        let cipher = crate::crypto::FileCipher::new(&generated.key, file_id);
        let slot = KeySlot {
            key_id: generated.key_arn.clone(),
            wrapped_key: generated.wrapped.clone(),
        };
        let shape = (self.config.format_version, self.config.bound_names);
        let header = file::new_header(&cipher, shape, self.config.header_len, slot)
            .map_err(|e| file_err(e.into()))?;
        EncryptedFile::create(file, cipher, header).map_err(file_err)
    }

    /// Opens an existing kmsfs file found as `at`: reads its header, checks that it is
    /// bound to that name, unwraps its key (cache or KMS), checks the key commitment.
    pub fn open_file(
        &self,
        file: File,
        at: Place<'_>,
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
        if let Some(e) = self.misfit(&header) {
            self.report_integrity(Some(&header.file_id), path, who, &e)?;
            return Err(file_err(e));
        }
        // Before the KMS is asked: a file out of place costs no key use.
        match self.namespace.check_binding(&file, &header, at) {
            Ok(()) => {}
            Err(NamespaceError::Unbound) => {
                let e = FileError::NameBinding;
                self.report_integrity(Some(&header.file_id), path, who, &e)?;
                return Err(file_err(e));
            }
            Err(e) => return Err(VolumeError::Namespace(e)),
        }
        let key = match header.is_bucket() {
            true => self.bucket_file_key(&header, path, who)?,
            false => self.unwrap_key(&header, path, who)?,
        };
        let file_id = header.file_id;
        EncryptedFile::open(file, header, &key).map_err(|e| {
            let _ = self.report_integrity(Some(&file_id), path, who, &e);
            file_err(e)
        })
    }

    /// Where the file at `plain` (its path in the mount), in the ciphertext directory open
    /// at `dir`, is checked to be bound: that directory's id and the file's plaintext name.
    /// For the offline tools, which find files by walking.
    pub fn place_of(
        &self,
        dir: BorrowedFd<'_>,
        plain: &Path,
    ) -> Result<(Option<[u8; 16]>, OsString), VolumeError> {
        let name = plain.file_name().unwrap_or_default().to_owned();
        if !self.namespace.binds_names() {
            return Ok((None, name));
        }
        let names = self.namespace.dir_names(dir, false)?;
        Ok((names.dir_id().copied(), name))
    }

    /// Why a header does not fit this volume: sizes follow from ciphertext lengths by the
    /// volume's layout, so every file must have the volume's version and header length.
    /// A header naming a key the volume does not use is refused before the KMS is asked:
    /// whoever can write the directory could otherwise put in a file under a key of theirs
    /// that the mounting principal may also use.
    pub(super) fn misfit(&self, header: &Header) -> Option<FileError> {
        if header.version != self.config.format_version {
            Some(FileError::Format(FormatError::VersionMismatch {
                file: header.version,
                volume: self.config.format_version,
            }))
        } else if header.header_len != self.config.header_len {
            Some(FormatError::BadHeaderLen(header.header_len).into())
        } else if !self.config.accepts_key(&header.key_id) {
            Some(FileError::ForeignKey(header.key_id.clone()))
        } else {
            None
        }
    }

    /// The key in the slot of `header` (a file's data key or a bucket key) from the key
    /// cache, or from the KMS where this thread may call it ([`offload`]), and how long
    /// that took; `NeedsKms` where it may not.
    pub(super) fn cached_or_unwrapped(
        &self,
        header: &Header,
        ctx: &EncryptionContext,
    ) -> Result<(Unwrapped, Duration), VolumeError> {
        let started = Instant::now();
        let (key_id, wrapped) = (&header.key_id, &header.wrapped_key);
        let result = match offload::may_call_kms() {
            Ok(()) => self.keys.decrypt_cached(key_id, wrapped, ctx),
            Err(needs_kms) => Ok(self.keys.cached(key_id, wrapped, ctx).ok_or(needs_kms)?),
        };
        Ok((result, started.elapsed()))
    }

    /// The data key of the file with `header`, from the key cache or the KMS, audited.
    fn unwrap_key(
        &self,
        header: &Header,
        path: &str,
        who: &Requester,
    ) -> Result<std::sync::Arc<crate::secret::DataKey>, VolumeError> {
        let ctx = context(&self.config.volume_id, &header.file_id);
        let (result, latency) = self.cached_or_unwrapped(header, &ctx)?;
        let subject = (Some(&header.file_id), path, header.key_id.as_str());
        match result {
            Ok((key, served)) => {
                let event = match served {
                    Served::Kms => AuditEvent::unwrapped(latency),
                    Served::Cache => AuditEvent::KeyFromCache { cache: Cache::Hit },
                    Served::Prefetched => AuditEvent::KeyFromCache {
                        cache: Cache::Prefetched,
                    },
                };
                self.audit(&event, subject.0, subject.1, subject.2, who)?;
                Ok(key)
            }
            Err(e) => {
                let event = AuditEvent::kms_failure(Attempt::KeyUnwrapped, &e);
                self.audit(&event, subject.0, subject.1, subject.2, who)?;
                tracing::warn!(
                    "open {path}: file {} key unwrap failed: {e}",
                    header.file_id
                );
                Err(VolumeError::Kms {
                    path: path.into(),
                    source: e,
                })
            }
        }
    }

    /// Audits a key use that needed no unwrap: the file is already open through another
    /// handle, whose key it shares.
    pub fn note_shared_open(
        &self,
        header: &Header,
        path: &str,
        who: &Requester,
    ) -> Result<(), VolumeError> {
        let event = AuditEvent::KeyFromCache {
            cache: Cache::OpenFile,
        };
        self.audit(&event, Some(&header.file_id), path, &header.key_id, who)
    }

    /// A failed read or write of the open file with `header` at `path`: damage is logged
    /// and audited (a failure to audit it is logged too, since the read fails anyway).
    pub fn file_failure(
        &self,
        header: &Header,
        path: String,
        who: &Requester,
        err: FileError,
    ) -> VolumeError {
        if let Err(audit) = self.report_integrity(Some(&header.file_id), &path, who, &err) {
            tracing::error!("{}", crate::describe(&audit));
        }
        VolumeError::File { path, source: err }
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
        self.audit(&AuditEvent::integrity(err), file_id, path, "", who)
    }

    /// Writes one audit record; an error refuses the key use.
    pub(super) fn audit(
        &self,
        event: &AuditEvent,
        file_id: Option<&FileId>,
        path: &str,
        key_arn: &str,
        who: &Requester,
    ) -> Result<(), VolumeError> {
        let subject = Subject {
            file_id,
            path,
            key_arn,
        };
        Ok(self.auditor.record(event, subject, who)?)
    }
}
