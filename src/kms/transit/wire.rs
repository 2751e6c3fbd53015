//! The Transit engine's names and answers: endpoints, key references (`MOUNT/NAME`),
//! ciphertext versions, and the JSON shapes kmsfs reads (plaintexts straight into locked
//! memory, [`SecretBlob`]).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;

use crate::kms::wire::SecretBlob;
use crate::kms::{EncryptionContext, KmsError};
use crate::secret::DataKey;

/// The server address an `openbao+http[s]://` (or `vault+...`) endpoint names, if it is one.
pub fn server_addr(endpoint: &str) -> Option<&str> {
    ["openbao+", "vault+"]
        .iter()
        .find_map(|p| endpoint.strip_prefix(p))
        .filter(|rest| rest.starts_with("https://") || rest.starts_with("http://"))
}

/// Whether `addr` (`http[s]://HOST:PORT`) is HTTPS, or plain HTTP to this machine.
pub(super) fn loopback_or_tls(addr: &str) -> bool {
    if addr.starts_with("https://") {
        return true;
    }
    let host = addr
        .trim_start_matches("http://")
        .split(['/', '?'])
        .next()
        .unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A key's mount path and name, from `MOUNT/NAME` (the mount may have slashes of its own).
pub(super) fn key_ref(key_id: &str) -> Result<(&str, &str), KmsError> {
    let id = key_id.trim_matches('/');
    let bad = |why: &str| {
        KmsError::validation(format!(
            "{key_id:?} is not an OpenBao Transit key ({why}): name it MOUNT/NAME, for example transit/kmsfs"
        ))
    };
    let (mount, name) = id.rsplit_once('/').ok_or_else(|| bad("no mount path"))?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    };
    let dots = id.split('/').any(|seg| seg == "." || seg == "..");
    if !ok(mount) || !ok(name) || name.contains('/') || id.contains("//") || dots {
        return Err(bad(
            "only letters, digits, '-', '_', '.' and '/' may appear",
        ));
    }
    Ok((mount, name))
}

/// The version a Transit ciphertext (`vault:vN:...`) was made with.
pub(super) fn blob_version(wrapped: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(wrapped).ok()?;
    let rest = text.strip_prefix("vault:v")?;
    rest.split(':').next()?.parse().ok()
}

/// What `keys/NAME` says of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyVersions {
    pub latest_version: u64,
    pub min_decryption_version: u64,
    pub derived: bool,
}

#[derive(Deserialize)]
pub(super) struct Answer<T> {
    pub(super) data: T,
}

#[derive(Deserialize)]
pub(super) struct DataKeyData {
    pub(super) plaintext: SecretBlob,
    pub(super) ciphertext: String,
}

#[derive(Deserialize)]
pub(super) struct PlaintextData {
    pub(super) plaintext: SecretBlob,
}

#[derive(Deserialize)]
pub(super) struct CiphertextData {
    pub(super) ciphertext: String,
}

#[derive(Deserialize)]
pub(super) struct BatchData {
    pub(super) batch_results: Vec<BatchItem>,
}

#[derive(Deserialize)]
pub(super) struct BatchItem {
    #[serde(default)]
    pub(super) plaintext: Option<SecretBlob>,
    #[serde(default)]
    pub(super) error: Option<String>,
}

pub(super) fn parse<T: for<'de> Deserialize<'de>>(
    what: &str,
    answer: &[u8],
) -> Result<T, KmsError> {
    serde_json::from_slice::<Answer<T>>(answer)
        .map(|a| a.data)
        .map_err(|e| KmsError::Protocol(format!("cannot parse the answer to {what}: {e}")))
}

pub(super) fn data_key(p: SecretBlob) -> Result<DataKey, KmsError> {
    DataKey::from_slice(p.0.expose_secret()).map_err(|_| {
        KmsError::Protocol(format!(
            "OpenBao returned a {}-byte data key, expected 32",
            p.0.len()
        ))
    })
}

pub(super) fn context(ctx: &EncryptionContext) -> String {
    B64.encode(ctx.canonical_bytes())
}

pub(super) fn ciphertext_text(wrapped: &[u8]) -> Result<&str, KmsError> {
    std::str::from_utf8(wrapped)
        .ok()
        .filter(|t| t.starts_with("vault:v"))
        .ok_or_else(|| {
            KmsError::InvalidCiphertext("not a Transit ciphertext (vault:vN:...)".into())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_keys_and_versions_parse() {
        assert_eq!(
            server_addr("openbao+https://h:8200"),
            Some("https://h:8200")
        );
        assert_eq!(
            server_addr("vault+http://127.0.0.1:8200"),
            Some("http://127.0.0.1:8200")
        );
        assert_eq!(server_addr("https://kms.example"), None);
        assert_eq!(server_addr("openbao+ftp://h"), None);
        assert_eq!(key_ref("transit/vol").unwrap(), ("transit", "vol"));
        assert_eq!(
            key_ref("/teams/a/transit/vol/").unwrap(),
            ("teams/a/transit", "vol")
        );
        for bad in [
            "vol",
            "transit/",
            "/vol",
            "transit/v l",
            "a//b",
            "../sys/x",
            "transit/..",
        ] {
            assert!(key_ref(bad).is_err(), "{bad}");
        }
        assert_eq!(blob_version(b"vault:v12:abc"), Some(12));
        assert!(loopback_or_tls("http://127.0.0.1:8200"));
        assert!(loopback_or_tls("http://localhost:8200"));
        assert!(loopback_or_tls("http://[::1]:8200"));
        assert!(loopback_or_tls("https://bao.example:8200"));
        assert!(!loopback_or_tls("http://bao.example:8200"));
        assert!(!loopback_or_tls("http://10.0.0.5:8200"));
        assert_eq!(blob_version(b"arn:aws:kms"), None);
    }
}
