//! `rewrap`: moves every file's wrapped data key (and the volume's names key) under another
//! KMS key with `ReEncrypt`. Content is not touched and no plaintext key is ever seen: the
//! KMS re-wraps inside itself, and only the header's key slot (not covered by the key
//! commitment, see `docs/format.md`) is rewritten.
//!
//! Crash-safe: each file's header is replaced by one `pwrite` of the whole header region
//! (a killed process leaves the old or the new header, and either unwraps), the
//! configuration by an atomic rename, and a second run skips what is already done.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Serialize;

use crate::file::read_header;
use crate::format::names::{DIR_ID_NAME, LONG_NAME_SUFFIX};
use crate::kms::Kms;
use crate::volume::{context, names_context, NamesConfig, VolumeConfig, VolumeError, CONFIG_NAME};

#[derive(Debug, Default, Serialize)]
pub struct RewrapReport {
    pub dest_key_arn: String,
    pub files_rewrapped: u64,
    pub files_already_done: u64,
    pub names_key_rewrapped: bool,
    pub failed: Vec<Failed>,
    pub dry_run: bool,
}

#[derive(Debug, Serialize)]
pub struct Failed {
    pub cipher_path: String,
    pub reason: String,
}

/// Every regular file of the ciphertext tree that is not kmsfs's own (no names key needed).
pub fn cipher_files(cipherdir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![cipherdir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(listing) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in listing.flatten() {
            let Ok(t) = e.file_type() else { continue };
            let name = e.file_name();
            let name = name.to_string_lossy();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file()
                && name != DIR_ID_NAME
                && !(dir == cipherdir && (name == CONFIG_NAME || name.starts_with(".kmsfs")))
                && !name.ends_with(LONG_NAME_SUFFIX)
                && !name.starts_with(".kmsfs-")
            {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Moves the volume at `cipherdir` under `dest_key` (a key ARN; other identifiers are
/// resolved with DescribeKey first).
pub fn rewrap(
    cipherdir: &Path,
    kms: &dyn Kms,
    dest_key: &str,
    dry_run: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RewrapReport, VolumeError> {
    let mut config = VolumeConfig::load(cipherdir)?;
    let dest_arn = if dest_key.starts_with("arn:") && dest_key.contains(":key/") {
        dest_key.to_owned()
    } else {
        let d = crate::volume::admin_call(
            &config.kms,
            "DescribeKey",
            serde_json::json!({"KeyId": dest_key}),
        )?;
        d["KeyMetadata"]["Arn"]
            .as_str()
            .ok_or_else(|| VolumeError::KmsSetup("DescribeKey answered without an ARN".into()))?
            .to_owned()
    };
    let mut report = RewrapReport {
        dest_key_arn: dest_arn.clone(),
        dry_run,
        ..Default::default()
    };
    let files = cipher_files(cipherdir);
    let total = files.len() as u64;
    for (i, path) in files.iter().enumerate() {
        match rewrap_file(path, &config, kms, &dest_arn, dry_run) {
            Ok(true) => report.files_rewrapped += 1,
            Ok(false) => report.files_already_done += 1,
            Err(reason) => report.failed.push(Failed {
                cipher_path: path.display().to_string(),
                reason,
            }),
        }
        progress(i as u64 + 1, total);
    }
    // The names key, and the key new files are made under.
    if let NamesConfig::Encrypted {
        key_arn,
        wrapped_key,
    } = &config.names
    {
        if *key_arn != dest_arn {
            report.names_key_rewrapped = true;
            if !dry_run {
                let wrapped = base64::engine::general_purpose::STANDARD
                    .decode(wrapped_key)
                    .map_err(|e| VolumeError::KmsSetup(format!("names key in the config: {e}")))?;
                let ctx = names_context(&config.volume_id);
                let (blob, arn) =
                    kms.re_encrypt(&wrapped, &ctx, key_arn, &dest_arn)
                        .map_err(|source| VolumeError::Kms {
                            path: CONFIG_NAME.into(),
                            source,
                        })?;
                config.names = NamesConfig::Encrypted {
                    key_arn: arn,
                    wrapped_key: base64::engine::general_purpose::STANDARD.encode(blob),
                };
            }
        }
    }
    if !dry_run && report.failed.is_empty() {
        config.key_arn = dest_arn;
        config.save(cipherdir)?;
    }
    Ok(report)
}

/// Re-wraps one file's key slot; `Ok(false)` when it is already under `dest_arn`.
fn rewrap_file(
    path: &Path,
    config: &VolumeConfig,
    kms: &dyn Kms,
    dest_arn: &str,
    dry_run: bool,
) -> Result<bool, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!dry_run)
        .open(path)
        .map_err(|e| e.to_string())?;
    let mut header = read_header(&file).map_err(|e| e.to_string())?;
    if header.key_id == dest_arn {
        return Ok(false);
    }
    if dry_run {
        return Ok(true);
    }
    let ctx = context(&config.volume_id, &header.file_id);
    let (blob, arn) = kms
        .re_encrypt(&header.wrapped_key, &ctx, &header.key_id, dest_arn)
        .map_err(|e| format!("ReEncrypt: {e}"))?;
    header.key_id = arn;
    header.wrapped_key = blob;
    let bytes = header
        .encode()
        .map_err(|e| format!("the new key slot does not fit: {e}"))?;
    file.write_all_at(&bytes, 0).map_err(|e| e.to_string())?;
    file.sync_data().map_err(|e| e.to_string())?;
    Ok(true)
}
