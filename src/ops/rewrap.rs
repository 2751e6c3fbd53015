//! `rewrap`: moves every file's wrapped data key (and the volume's names key) under another
//! KMS key with `ReEncrypt`. Content is not touched and no plaintext key is ever seen: the
//! KMS re-wraps inside itself, and only the header's key slot (not covered by the key
//! commitment, see `docs/format.md`) is rewritten.
//!
//! A bucket-key volume's files of one bucket share one wrapped bucket key: it is moved once
//! per run and the answer written into each of their headers.
//!
//! Crash-safe: each file's header is replaced by one `pwrite` of the whole header region
//! (a killed process leaves the old or the new header, and either unwraps), the
//! configuration by an atomic rename, and a second run skips what is already done.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::Path;

use base64::Engine as _;
use serde::Serialize;

use super::error::{self, io};
use super::OpsError;
use crate::file::read_header;
use crate::format::BucketId;
use crate::kms::Kms;
use crate::namespace::{content_files, ContentFile};
use crate::volume::{
    bucket_context, context, names_context, KmsConnection, VolumeConfig, VolumeError, CONFIG_NAME,
};

#[derive(Debug, Default, Serialize)]
pub struct RewrapReport {
    pub dest_key_arn: String,
    pub files_rewrapped: u64,
    pub files_already_done: u64,
    pub names_key_rewrapped: bool,
    /// A Transit key's newest version (what headers now name) and lowest decryptable one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_versions: Option<KeyVersionsReport>,
    pub failed: Vec<Failed>,
    pub dry_run: bool,
}

#[derive(Debug, Serialize)]
pub struct KeyVersionsReport {
    pub latest_version: u64,
    pub min_decryption_version: u64,
}

#[derive(Debug, Serialize)]
pub struct Failed {
    pub cipher_path: String,
    pub reason: String,
}

/// Moves the volume at `cipherdir` under `dest_key` (a key ARN; other identifiers are
/// resolved with DescribeKey first), through `conn`.
pub fn rewrap(
    cipherdir: &Path,
    conn: &KmsConnection,
    dest_key: &str,
    dry_run: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RewrapReport, OpsError> {
    let mut config = VolumeConfig::load(cipherdir).map_err(VolumeError::from)?;
    let dest_arn = if dest_key.starts_with("arn:") && dest_key.contains(":key/") {
        dest_key.to_owned()
    } else {
        conn.key_arn(dest_key)?
    };
    let key_versions = conn.key_versions(&dest_arn)?.map(|v| KeyVersionsReport {
        latest_version: v.latest_version,
        min_decryption_version: v.min_decryption_version,
    });
    let mut report = RewrapReport {
        dest_key_arn: dest_arn.clone(),
        key_versions,
        dry_run,
        ..Default::default()
    };
    let kms = conn.kms();
    // The configuration is signed again at each change, under the same names key.
    let names_key = crate::volume::signing_key(cipherdir, &config, kms.as_ref(), true)?;
    let save = |config: &mut VolumeConfig| -> Result<(), OpsError> {
        if let Some(k) = &names_key {
            config.sign(k);
        }
        config.save(cipherdir).map_err(VolumeError::from)?;
        crate::volume::trust::record(config, cipherdir)?;
        Ok(())
    };
    if !dry_run {
        crate::volume::trust::expect_rewrap(&config, cipherdir, &dest_arn)?;
    }
    // Headers may name the new key from the first file moved on.
    if !dry_run && !config.accepts_key(&dest_arn) {
        config.other_key_arns.push(dest_arn.clone());
        save(&mut config)?;
    }
    let files = content_files(cipherdir, config.has_dir_records())?;
    let total = files.len() as u64;
    let mut moved = Moved::new();
    for (i, f) in files.iter().enumerate() {
        match rewrap_file(f, &config, (kms.as_ref(), &mut moved), &dest_arn, dry_run) {
            Ok(true) => report.files_rewrapped += 1,
            Ok(false) => report.files_already_done += 1,
            Err(e) => report.failed.push(Failed {
                cipher_path: f.path.display().to_string(),
                reason: crate::describe(&e),
            }),
        }
        progress(i as u64 + 1, total);
    }
    report.names_key_rewrapped = rewrap_names_key(&mut config, kms.as_ref(), &dest_arn, dry_run)?;
    // The key new files are made under, once every file is moved.
    // (Within one key, after a Transit rotation, only the names key may have moved.)
    let new_key = config.key_arn != dest_arn;
    if !dry_run && report.failed.is_empty() && (new_key || report.names_key_rewrapped) {
        if new_key {
            config.other_key_arns.retain(|k| *k != dest_arn);
            let old = std::mem::replace(&mut config.key_arn, dest_arn);
            config.other_key_arns.push(old);
        }
        save(&mut config)?;
    }
    Ok(report)
}

/// Moves the volume's names key (in `config`, not yet saved) under `dest_arn`; whether it
/// needed moving.
fn rewrap_names_key(
    config: &mut VolumeConfig,
    kms: &dyn Kms,
    dest_arn: &str,
    dry_run: bool,
) -> Result<bool, OpsError> {
    let Some((key_arn, wrapped_key)) = config.names.key() else {
        return Ok(false);
    };
    let wrapped = base64::engine::general_purpose::STANDARD
        .decode(wrapped_key)
        .map_err(|e| VolumeError::KmsSetup(format!("names key in the config: {e}")))?;
    let in_config = |source| VolumeError::Kms {
        path: CONFIG_NAME.into(),
        source,
    };
    if key_arn == dest_arn && kms.is_current(dest_arn, &wrapped).map_err(in_config)? {
        return Ok(false);
    }
    if dry_run {
        return Ok(true);
    }
    let ctx = names_context(&config.volume_id);
    let (blob, arn) = kms
        .re_encrypt(&wrapped, &ctx, key_arn, dest_arn)
        .map_err(in_config)?;
    let wrapped = base64::engine::general_purpose::STANDARD.encode(blob);
    config.names.set_key(arn, wrapped);
    Ok(true)
}

/// The new key slot of each bucket key already moved in this run, by its old slot and
/// bucket: every file of a bucket carries the same slot, so one `ReEncrypt` serves them all.
type Moved = HashMap<(String, Vec<u8>, BucketId), (Vec<u8>, String)>;

/// Re-wraps one file's key slot; `Ok(false)` when it is already under `dest_arn`.
fn rewrap_file(
    f: &ContentFile,
    config: &VolumeConfig,
    (kms, moved): (&dyn Kms, &mut Moved),
    dest_arn: &str,
    dry_run: bool,
) -> Result<bool, OpsError> {
    let file = f.open(!dry_run).map_err(io(&f.path))?;
    let mut header = read_header(&file).map_err(error::file(&f.path))?;
    let current = || {
        kms.is_current(dest_arn, &header.wrapped_key)
            .map_err(|source| VolumeError::Kms {
                path: f.path.display().to_string(),
                source,
            })
    };
    if header.key_id == dest_arn && current()? {
        return Ok(false);
    }
    if dry_run {
        return Ok(true);
    }
    let ctx = match header.bucket_id {
        Some(b) => bucket_context(&config.volume_id, &b),
        None => context(&config.volume_id, &header.file_id),
    };
    let seen = header
        .bucket_id
        .map(|b| (header.key_id.clone(), header.wrapped_key.clone(), b));
    let (blob, arn) = match seen.as_ref().and_then(|k| moved.get(k)) {
        Some(done) => done.clone(),
        None => {
            let done = kms
                .re_encrypt(&header.wrapped_key, &ctx, &header.key_id, dest_arn)
                .map_err(|source| VolumeError::Kms {
                    path: f.path.display().to_string(),
                    source,
                })?;
            if let Some(k) = seen {
                moved.insert(k, done.clone());
            }
            done
        }
    };
    header.key_id = arn;
    header.wrapped_key = blob;
    let bytes = header
        .encode()
        .map_err(|e| error::file(&f.path)(e.into()))?;
    // Up to the binding area, whose tags stay as they are.
    let keep = match header.is_bound() {
        true => crate::format::binding::area_offset(header.header_len) as usize,
        false => bytes.len(),
    };
    file.write_all_at(&bytes[..keep], 0).map_err(io(&f.path))?;
    file.sync_data().map_err(io(&f.path))?;
    Ok(true)
}
