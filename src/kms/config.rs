//! Where the KMS client gets its credentials, region and endpoint, following the AWS
//! SDK conventions:
//!
//! - credentials: `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`)
//!   as given, else the rest of the standard chain from profile `AWS_PROFILE` (default
//!   `default`), fetched and refreshed by [`super::credentials`];
//! - region: `AWS_REGION`, else `AWS_DEFAULT_REGION`, else the profile's `region`;
//! - endpoint: an explicit setting, else `AWS_ENDPOINT_URL_KMS`, else `AWS_ENDPOINT_URL`,
//!   else `https://kms.REGION.amazonaws.com`;
//! - CA bundle: `AWS_CA_BUNDLE`, else the profile's `ca_bundle`.
//!
//! The profile files are read from where `AWS_SHARED_CREDENTIALS_FILE` and
//! `AWS_CONFIG_FILE` put them (default `~/.aws/credentials` and `~/.aws/config`, section
//! `[profile NAME]` or `[default]`). Resolution reads the environment through a lookup
//! function so tests need not touch the process environment; the chain's providers read
//! the process environment themselves.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::credentials::CredentialSource;
use crate::secret::SecretBytes;

/// Region used for signing when none is configured but an endpoint is (local KMS).
pub const FALLBACK_REGION: &str = "us-east-1";

#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    #[error(
        "no AWS region: set AWS_REGION (or a region in profile {profile:?}), or an endpoint URL"
    )]
    NoRegion { profile: String },
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("AWS secret access key is too long")]
    BadSecret,
}

/// An access key pair. `Debug` shows only the access key id.
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: SecretBytes,
    pub session_token: Option<String>,
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AwsCredentials {{ access_key_id: {:?}, secret_access_key: [REDACTED] }}",
            self.access_key_id
        )
    }
}

/// Everything the HTTP client needs to reach a KMS.
#[derive(Debug)]
pub struct ClientConfig {
    pub endpoint: String,
    pub region: String,
    pub credentials: CredentialSource,
    /// PEM certificates to trust instead of the built-in roots (`AWS_CA_BUNDLE`, else the
    /// profile's `ca_bundle`).
    pub ca_bundle: Option<PathBuf>,
    /// TCP + TLS connection establishment.
    pub connect_timeout: Duration,
    /// One attempt, from sending to the end of the answer.
    pub attempt_timeout: Duration,
    /// Attempts in total, including the first.
    pub max_attempts: u32,
    /// One call in all, its retries and backoff included (a caller's own deadline,
    /// [`super::budget`], can make it shorter).
    pub call_timeout: Duration,
    /// First backoff; doubles per retry, with full jitter, up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

/// Parses INI text as the AWS files use it: `[section]`, `key = value`, `#`/`;` comments.
/// Keys are lowercased; indented continuation lines (nested settings) are skipped.
pub fn parse_ini(text: &str) -> Ini {
    let mut out: Ini = BTreeMap::new();
    let mut current: Option<String> = None;
    for raw in text.lines() {
        if raw.starts_with([' ', '\t']) {
            continue;
        }
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim().to_owned();
            out.entry(name.clone()).or_default();
            current = Some(name);
        } else if let (Some(sec), Some((k, v))) = (&current, line.split_once('=')) {
            out.get_mut(sec)
                .expect("section exists")
                .insert(k.trim().to_lowercase(), v.trim().to_owned());
        }
    }
    out
}

impl ClientConfig {
    /// Resolves from the process environment.
    pub fn from_env(explicit_endpoint: Option<&str>) -> Result<Self, ClientConfigError> {
        Self::resolve(|k| std::env::var(k).ok(), explicit_endpoint)
    }

    /// Resolves from `env` (a variable lookup) and the files it points at.
    pub fn resolve(
        env: impl Fn(&str) -> Option<String>,
        explicit_endpoint: Option<&str>,
    ) -> Result<Self, ClientConfigError> {
        let env = |k: &str| env(k).filter(|v| !v.is_empty());
        let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
        let files = ProfileFiles::read(&env)?;
        let credentials = match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => {
                CredentialSource::Static(credentials(id, &secret, env("AWS_SESSION_TOKEN"))?)
            }
            _ => CredentialSource::Chain {
                profile: profile.clone(),
                files: format!(
                    "{} or {}",
                    files.credentials_path.display(),
                    files.config_path.display()
                ),
            },
        };
        let endpoint = explicit_endpoint
            .map(str::to_owned)
            .or_else(|| env("AWS_ENDPOINT_URL_KMS"))
            .or_else(|| env("AWS_ENDPOINT_URL"));
        let region = env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| files.config_section(&profile)?.get("region").cloned());
        let region = match (region, &endpoint) {
            (Some(r), _) => r,
            (None, Some(_)) => FALLBACK_REGION.into(),
            (None, None) => return Err(ClientConfigError::NoRegion { profile }),
        };
        let endpoint = endpoint.unwrap_or_else(|| aws_endpoint(&region));
        let ca_bundle = env("AWS_CA_BUNDLE")
            .or_else(|| files.config_section(&profile)?.get("ca_bundle").cloned())
            .map(PathBuf::from);
        Ok(ClientConfig {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            region,
            credentials,
            ca_bundle,
            connect_timeout: Duration::from_secs(3),
            attempt_timeout: Duration::from_secs(10),
            max_attempts: 4,
            call_timeout: Duration::from_secs(15),
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        })
    }
}

/// Sections of an INI file by name, each a map of its keys.
type Ini = BTreeMap<String, BTreeMap<String, String>>;

/// Where the AWS shared credentials and config files are, and the config file, read once.
struct ProfileFiles {
    credentials_path: PathBuf,
    config_path: PathBuf,
    config: Ini,
}

impl ProfileFiles {
    /// Reads both files from where `env` puts them (else `~/.aws`); a missing file reads
    /// as empty.
    fn read(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ClientConfigError> {
        let home = env("HOME").map(PathBuf::from).unwrap_or_default();
        let credentials_path = env("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".aws/credentials"));
        let config_path = env("AWS_CONFIG_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".aws/config"));
        Ok(ProfileFiles {
            config: read_ini(&config_path)?,
            credentials_path,
            config_path,
        })
    }

    /// The profile's section of the config file: `[default]` or `[profile NAME]`.
    fn config_section(&self, profile: &str) -> Option<&BTreeMap<String, String>> {
        if profile == "default" {
            self.config.get("default")
        } else {
            self.config.get(&format!("profile {profile}"))
        }
    }
}

/// Parses the INI file at `path`; a file that does not exist reads as empty.
fn read_ini(path: &Path) -> Result<Ini, ClientConfigError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(parse_ini(&t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(source) => Err(ClientConfigError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// AWS KMS's public endpoint in `region` (China's regions have a domain of their own).
fn aws_endpoint(region: &str) -> String {
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("https://kms.{region}.{suffix}")
}

/// An access key pair; refuses a secret too long for [`SecretBytes`].
fn credentials(
    access_key_id: String,
    secret: &str,
    session_token: Option<String>,
) -> Result<AwsCredentials, ClientConfigError> {
    Ok(AwsCredentials {
        access_key_id,
        secret_access_key: SecretBytes::from_slice(secret.as_bytes())
            .map_err(|_| ClientConfigError::BadSecret)?,
        session_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(
        vars: &[(&str, &str)],
        endpoint: Option<&str>,
    ) -> Result<ClientConfig, ClientConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ClientConfig::resolve(|k| map.get(k).cloned(), endpoint)
    }

    fn static_key(c: &ClientConfig) -> &str {
        match &c.credentials {
            CredentialSource::Static(k) => &k.access_key_id,
            other => panic!("{other:?}"),
        }
    }

    fn chain_profile(c: &ClientConfig) -> &str {
        match &c.credentials {
            CredentialSource::Chain { profile, .. } => profile,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn env_wins_and_endpoint_order() {
        let c = resolve(
            &[
                ("HOME", "/nonexistent"),
                ("AWS_ACCESS_KEY_ID", "AK"),
                ("AWS_SECRET_ACCESS_KEY", "SK"),
                ("AWS_REGION", "eu-west-1"),
                ("AWS_DEFAULT_REGION", "us-west-2"),
            ],
            None,
        )
        .unwrap();
        assert_eq!(c.endpoint, "https://kms.eu-west-1.amazonaws.com");
        assert_eq!(static_key(&c), "AK");
        assert!(!format!("{c:?}").contains("SK\""));
        let base = [
            ("HOME", "/nonexistent"),
            ("AWS_ACCESS_KEY_ID", "AK"),
            ("AWS_SECRET_ACCESS_KEY", "SK"),
            ("AWS_ENDPOINT_URL", "http://general"),
        ];
        assert_eq!(resolve(&base, None).unwrap().endpoint, "http://general");
        assert_eq!(resolve(&base, None).unwrap().region, FALLBACK_REGION);
        let mut with_kms = base.to_vec();
        with_kms.push(("AWS_ENDPOINT_URL_KMS", "http://kms/"));
        assert_eq!(resolve(&with_kms, None).unwrap().endpoint, "http://kms");
        assert_eq!(
            resolve(&with_kms, Some("http://x")).unwrap().endpoint,
            "http://x"
        );
        let no_keys = resolve(&[base[0], base[3]], None).unwrap();
        assert_eq!(chain_profile(&no_keys), "default");
    }

    #[test]
    fn profiles_give_region_and_ca_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        std::fs::write(
            &config,
            "[default]\nregion = ap-south-1\n[profile work]\nregion = cn-north-1\nca_bundle = /ca.pem\ns3 =\n  max_concurrent_requests = 2\n",
        )
        .unwrap();
        let files = [
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
            ("HOME", "/nonexistent"),
        ];
        let d = resolve(&files, None).unwrap();
        assert_eq!(
            (chain_profile(&d), d.region.as_str()),
            ("default", "ap-south-1")
        );
        assert_eq!(d.ca_bundle, None);
        let mut work = files.to_vec();
        work.push(("AWS_PROFILE", "work"));
        let w = resolve(&work, None).unwrap();
        assert_eq!(chain_profile(&w), "work");
        assert_eq!(w.endpoint, "https://kms.cn-north-1.amazonaws.com.cn");
        assert_eq!(w.ca_bundle.as_deref(), Some(Path::new("/ca.pem")));
        work.push(("AWS_CA_BUNDLE", "/env.pem"));
        let e = resolve(&work, None).unwrap();
        assert_eq!(e.ca_bundle.as_deref(), Some(Path::new("/env.pem")));
        let mut none = files.to_vec();
        none.push(("AWS_PROFILE", "missing"));
        assert!(matches!(
            resolve(&none, None),
            Err(ClientConfigError::NoRegion { .. })
        ));
    }
}
