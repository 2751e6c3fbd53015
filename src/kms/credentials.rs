//! The credentials `HttpKms` signs with: the standard AWS credential chain from the AWS
//! SDK's own providers (`aws-config`), kept in a cache that fetches them again before they
//! expire, so a mount outlives any one session token.
//!
//! The chain, in AWS's order: the environment (`AWS_ACCESS_KEY_ID`...); the profile
//! (`AWS_PROFILE`) in the shared files, with static keys, `credential_process`, SSO, or
//! `role_arn` with `source_profile` (STS AssumeRole) or `web_identity_token_file`; web
//! identity from `AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN` (STS
//! AssumeRoleWithWebIdentity); ECS container credentials
//! (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` or `_FULL_URI`); EC2 instance metadata
//! (IMDSv2, `AWS_EC2_METADATA_SERVICE_ENDPOINT`, off with `AWS_EC2_METADATA_DISABLED`).
//! The providers read the process environment; their HTTP goes through our reqwest
//! (`provider_http.rs`).

use std::sync::RwLock;
use std::time::{Duration, SystemTime};

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::provider_config::ProviderConfig;
use aws_config::BehaviorVersion;
use aws_config::Region;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_smithy_runtime_api::client::identity::Identity;

use super::config::AwsCredentials;
use super::provider_http::ReqwestForSdk;
use super::KmsError;

/// Credentials are fetched again once less than this is left of them (or half their life,
/// if that is shorter), as the AWS SDKs refresh ahead of expiry.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// Longest a fetch may take (STS, SSO and IMDS each retry inside it).
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// After a failed refresh of credentials still valid, how long before trying again.
const RETRY_REFRESH_AFTER: Duration = Duration::from_secs(5);

/// Where credentials come from.
#[derive(Debug)]
pub enum CredentialSource {
    /// Keys given outright (the environment's, or a test's): never refreshed.
    Static(AwsCredentials),
    /// The standard chain, from `profile` (`AWS_PROFILE`, else `default`) in the shared
    /// files the environment names.
    Chain { profile: String, files: String },
}

/// The credentials in use and when to fetch new ones.
struct Current {
    identity: Identity,
    expires: Option<SystemTime>,
    refresh_at: Option<SystemTime>,
}

/// A credential provider and the credentials it last gave.
pub struct CredentialCache {
    provider: SharedCredentialsProvider,
    /// Where the chain looked, for the error when it finds nothing.
    tried: Option<String>,
    current: RwLock<Option<Current>>,
    refreshing: tokio::sync::Mutex<()>,
}

impl CredentialCache {
    /// A cache over `source`; the chain's providers are set up for `region` and send
    /// their requests with `tls` roots (`AWS_CA_BUNDLE`). Fetches nothing yet.
    pub async fn new(
        source: &CredentialSource,
        region: &str,
        tls: Option<rustls::ClientConfig>,
    ) -> Self {
        let (provider, tried) = match source {
            CredentialSource::Static(c) => {
                let creds = Credentials::new(
                    c.access_key_id.clone(),
                    String::from_utf8_lossy(c.secret_access_key.expose_secret()).into_owned(),
                    c.session_token.clone(),
                    None,
                    "kmsfs",
                );
                (SharedCredentialsProvider::new(creds), None)
            }
            CredentialSource::Chain { profile, files } => {
                let conf = ProviderConfig::without_region()
                    .with_http_client(ReqwestForSdk::new(tls))
                    .with_behavior_version(Some(BehaviorVersion::latest()));
                let chain = DefaultCredentialsChain::builder()
                    .configure(conf)
                    .region(Region::new(region.to_owned()))
                    .profile_name(profile);
                let chain = chain.build().await;
                (
                    SharedCredentialsProvider::new(chain),
                    Some(tried(profile, files)),
                )
            }
        };
        CredentialCache {
            provider,
            tried,
            current: RwLock::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// Credentials good for a request now: the cached ones, or new ones once they near
    /// their expiry (callers that find them due wait for one fetch).
    pub async fn identity(&self) -> Result<Identity, KmsError> {
        if let Some(id) = self.fresh(SystemTime::now()) {
            return Ok(id);
        }
        // While another caller fetches, credentials that are still valid serve at once:
        // only the fetching call waits, not every call behind it.
        let _one_fetch = match self.refreshing.try_lock() {
            Ok(guard) => guard,
            Err(_) => match self.still_valid(SystemTime::now()) {
                Some(id) => return Ok(id),
                None => self.refreshing.lock().await,
            },
        };
        let now = SystemTime::now();
        if let Some(id) = self.fresh(now) {
            return Ok(id);
        }
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, self.provider.provide_credentials())
            .await
            .unwrap_or_else(|_| Err(CredentialsError::provider_timed_out(FETCH_TIMEOUT)));
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        match fetched {
            Ok(creds) => {
                let expires = creds.expiry();
                let identity = Identity::new(creds, expires);
                *current = Some(Current {
                    identity: identity.clone(),
                    expires,
                    refresh_at: expires.map(|e| refresh_time(now, e)),
                });
                Ok(identity)
            }
            // Still valid: use them, and try again shortly rather than at every call.
            Err(e) => match current.as_mut() {
                Some(c) if c.expires.is_some_and(|e| now < e) => {
                    tracing::warn!(
                        "cannot refresh the AWS credentials, using the current ones until they expire: {}",
                        describe(&e)
                    );
                    c.refresh_at = Some(now + RETRY_REFRESH_AFTER);
                    Ok(c.identity.clone())
                }
                _ => Err(self.error(&e)),
            },
        }
    }

    /// The cached credentials if they have not expired at `now` (due for a refresh or not).
    fn still_valid(&self, now: SystemTime) -> Option<Identity> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        let c = current.as_ref()?;
        c.expires
            .is_none_or(|e| now < e)
            .then(|| c.identity.clone())
    }

    /// The cached credentials if they are not yet due for a refresh at `now`.
    fn fresh(&self, now: SystemTime) -> Option<Identity> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        let c = current.as_ref()?;
        c.refresh_at
            .is_none_or(|at| now < at)
            .then(|| c.identity.clone())
    }

    /// What to tell the user when no credentials could be had.
    fn error(&self, e: &CredentialsError) -> KmsError {
        let (code, message) = match (e, &self.tried) {
            (CredentialsError::CredentialsNotLoaded(_), Some(tried)) => (
                "NoCredentials",
                format!("no AWS credentials found; tried {tried}: {}", describe(e)),
            ),
            (_, Some(tried)) => (
                "CredentialsError",
                format!(
                    "cannot get AWS credentials: {} (the chain tries {tried}; the first configured source answers)",
                    describe(e)
                ),
            ),
            (_, None) => (
                "CredentialsError",
                format!("cannot get AWS credentials: {}", describe(e)),
            ),
        };
        KmsError::AccessDenied {
            code: code.into(),
            message,
        }
    }
}

/// When credentials fetched at `now` and expiring at `expires` are fetched again.
fn refresh_time(now: SystemTime, expires: SystemTime) -> SystemTime {
    let life = expires.duration_since(now).unwrap_or_default();
    expires - REFRESH_BEFORE.min(life / 2)
}

/// The sources of the chain, in order, as the error names them.
fn tried(profile: &str, files: &str) -> String {
    format!(
        "the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), profile {profile:?} in {files} (keys, credential_process, sso_*, role_arn with source_profile), web identity (AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN), ECS container credentials (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or _FULL_URI) and EC2 instance metadata (IMDSv2; AWS_EC2_METADATA_DISABLED=true skips it)"
    )
}

/// A credentials error and its causes on one line.
fn describe(e: &CredentialsError) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_comes_before_expiry() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = now + Duration::from_secs(3600);
        assert_eq!(refresh_time(now, hour), hour - REFRESH_BEFORE);
        let short = now + Duration::from_secs(8);
        assert_eq!(refresh_time(now, short), now + Duration::from_secs(4));
        assert_eq!(
            refresh_time(now, now - Duration::from_secs(1)),
            now - Duration::from_secs(1)
        );
    }
}
