//! The volume's names key: unwrapped once per mount or tool run, audited like any key use,
//! and handed to the namespace's name ciphers.

use std::path::Path;
use std::time::Instant;

use super::audit::{Attempt, AuditEvent, Auditor, Subject};
use super::{names_context, ConfigError, NamesConfig, Requester, VolumeConfig, VolumeError};
use crate::crypto::{BindingKey, RecordKey};
use crate::kms::Kms;
use crate::namespace::Names;

/// The names ciphers of the volume, with its names key (if it has one) unwrapped by `kms`:
/// for encrypted names, and for names bound to files.
pub(super) fn unwrap_names_key(
    auditor: &Auditor,
    cipherdir: &Path,
    config: &VolumeConfig,
    kms: &dyn Kms,
) -> Result<Names, VolumeError> {
    let Some((key_arn, wrapped_key)) = config.names.key() else {
        return Ok(Names::plaintext());
    };
    let wrapped = decode_wrapped(cipherdir, wrapped_key)?;
    let who = Requester::current();
    let subject = Subject {
        file_id: None,
        path: "",
        key_arn,
    };
    let started = Instant::now();
    match kms.decrypt(key_arn, &wrapped, &names_context(&config.volume_id)) {
        Ok(key) => {
            let event = AuditEvent::names_key_unwrapped(started.elapsed());
            auditor.record(&event, subject, &who)?;
            check_signature(cipherdir, config, &key)?;
            let binding = config.bound_names.then(|| BindingKey::new(&key));
            let records = Some(RecordKey::new(&key));
            let names = match &config.names {
                NamesConfig::Encrypted { .. } => Names::encrypted(key),
                NamesConfig::Plaintext { .. } => Names::plaintext(),
            };
            Ok(names.with_binding(binding).with_record_key(records))
        }
        Err(e) => {
            let event = AuditEvent::kms_failure(Attempt::NamesKeyUnwrapped, &e);
            auditor.record(&event, subject, &who)?;
            Err(VolumeError::Kms {
                path: cipherdir.display().to_string(),
                source: e,
            })
        }
    }
}

/// Checks the configuration's MAC under the names key. One without a MAC is accepted only
/// from a volume made before configurations were signed, which binds no names either
/// (the pin in the user's state directory catches one stripped of both, `trust.rs`).
pub(super) fn check_signature(
    cipherdir: &Path,
    config: &VolumeConfig,
    key: &crate::secret::DataKey,
) -> Result<(), VolumeError> {
    let checks = match config.mac {
        Some(_) => config.signature_checks(key),
        None => !config.bound_names,
    };
    if checks {
        return Ok(());
    }
    Err(VolumeError::ConfigNotAuthentic {
        cipherdir: cipherdir.into(),
    })
}

/// The names key of the volume in plaintext (for `rewrap` and `trust`, which sign the
/// configuration they write), if it has one; with `check`, refused unless the
/// configuration as found authenticates under it.
pub fn signing_key(
    cipherdir: &Path,
    config: &VolumeConfig,
    kms: &dyn Kms,
    check: bool,
) -> Result<Option<crate::secret::DataKey>, VolumeError> {
    let Some((key_arn, wrapped_key)) = config.names.key() else {
        return Ok(None);
    };
    let wrapped = decode_wrapped(cipherdir, wrapped_key)?;
    let key = kms
        .decrypt(key_arn, &wrapped, &names_context(&config.volume_id))
        .map_err(|source| VolumeError::Kms {
            path: cipherdir.display().to_string(),
            source,
        })?;
    if check {
        check_signature(cipherdir, config, &key)?;
    }
    Ok(Some(key))
}

/// The names key's blob, from its base64 in the configuration.
fn decode_wrapped(cipherdir: &Path, wrapped_key: &str) -> Result<Vec<u8>, VolumeError> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(wrapped_key)
        .map_err(|e| {
            VolumeError::Config(ConfigError::Invalid {
                path: VolumeConfig::path_in(cipherdir),
                reason: format!("names.wrapped_key is not base64: {e}"),
            })
        })
}
