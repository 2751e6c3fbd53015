//! The HTTP side of the Transit backend: one reqwest client on an owned tokio runtime (the
//! same shape as [`crate::kms::client::HttpKms`], for the same reason: many FUSE threads
//! call at once), OpenBao's JSON errors mapped onto [`KmsError`], and retries with backoff
//! for what may pass (a sealed or restarting server, 5xx, timeouts, refused connections),
//! within the caller's deadline ([`crate::kms::budget`]).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use zeroize::Zeroizing;

use crate::kms::retry::{transport_error, Retries};
use crate::kms::{budget, KmsError};

/// How long to wait, and how often to try.
#[derive(Debug, Clone)]
pub struct Timeouts {
    pub connect: Duration,
    pub attempt: Duration,
    pub call: Duration,
    pub max_attempts: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(3),
            attempt: Duration::from_secs(10),
            call: Duration::from_secs(15),
            max_attempts: 4,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// One OpenBao server: its address, namespace, client and runtime.
pub struct Http {
    /// `SCHEME://HOST:PORT/v1/`.
    base: reqwest::Url,
    namespace: Option<String>,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    timeouts: Timeouts,
}

/// A request: method (`GET` or `POST`), path under `/v1/`, token, JSON body.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    pub post: bool,
    pub path: &'a str,
    pub token: Option<&'a str>,
    pub body: Option<&'a [u8]>,
}

fn protocol(e: impl std::fmt::Display) -> KmsError {
    KmsError::Protocol(e.to_string())
}

impl Http {
    /// A client of the server at `addr` (`http[s]://HOST:PORT`), trusting `ca_file` (PEM)
    /// beside the system's roots.
    pub fn new(
        addr: &str,
        namespace: Option<String>,
        ca_file: Option<&Path>,
        timeouts: Timeouts,
    ) -> Result<Self, KmsError> {
        let base = reqwest::Url::parse(&format!("{}/v1/", addr.trim_end_matches('/')))
            .map_err(|e| protocol(format!("bad OpenBao address {addr:?}: {e}")))?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| protocol(format!("cannot read the CA file {}: {e}", ca.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| protocol(format!("{} is not a PEM certificate: {e}", ca.display())))?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder
            .build()
            .map_err(|e| protocol(format!("cannot build the HTTP client: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kms-transit")
            .enable_all()
            .build()
            .map_err(|e| protocol(format!("cannot start the HTTP runtime: {e}")))?;
        Ok(Http {
            base,
            namespace,
            client,
            runtime,
            timeouts,
        })
    }

    pub fn runtime(&self) -> &tokio::runtime::Handle {
        self.runtime.handle()
    }

    /// The deadline of a call that starts now.
    pub fn deadline(&self) -> Instant {
        budget::deadline_within(self.timeouts.call)
    }

    /// One request, retried as the module says; the answer's bytes (zeroized when dropped:
    /// they may hold a plaintext key).
    pub fn call(&self, req: &Request<'_>) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let deadline = self.deadline();
        self.runtime.block_on(self.call_async(req, deadline))
    }

    /// [`Http::call`] as a future, given up at `deadline`.
    pub async fn call_async(
        &self,
        req: &Request<'_>,
        deadline: Instant,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let t = &self.timeouts;
        let retries = Retries {
            attempt_timeout: t.attempt,
            max_attempts: t.max_attempts,
            base_backoff: t.base_backoff,
            max_backoff: t.max_backoff,
        };
        retries.run(req.path, deadline, || self.attempt(req)).await
    }

    async fn attempt(&self, req: &Request<'_>) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let url = self.base.join(req.path).map_err(protocol)?;
        let mut r = if req.post {
            self.client.post(url)
        } else {
            self.client.get(url)
        };
        if let Some(t) = req.token {
            let mut v = reqwest::header::HeaderValue::from_str(t)
                .map_err(|_| protocol("the OpenBao token is not a valid header value"))?;
            v.set_sensitive(true);
            r = r.header("X-Vault-Token", v);
        }
        if let Some(ns) = &self.namespace {
            r = r.header("X-Vault-Namespace", ns);
        }
        if let Some(body) = req.body {
            r = r
                .header("content-type", "application/json")
                .body(body.to_vec());
        }
        let resp = r.send().await.map_err(transport_error)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(transport_error)?;
        let answer = Zeroizing::new(Vec::from(bytes));
        if (200..300).contains(&status) {
            Ok(answer)
        } else {
            Err(error_from_answer(status, req, &answer))
        }
    }
}

/// The `errors` OpenBao answers with, on one line (it lists several as
/// "N errors occurred:" and one "* error" per line).
pub fn error_text(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let errors = parsed
        .as_ref()
        .and_then(|v| v["errors"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .flat_map(str::lines)
                .map(|l| l.trim().trim_start_matches("* "))
                .filter(|l| !l.is_empty() && !l.ends_with("occurred:"))
                .collect::<Vec<_>>()
                .join("; ")
        });
    // A body that is not OpenBao's error shape is not echoed: it may hold key material.
    match errors {
        Some(e) if !e.is_empty() => e,
        _ => format!("an answer of {} bytes without errors", body.len()),
    }
}

/// What OpenBao says a 403 on `req` takes: the capability its policy lacks, or (a login)
/// other credentials.
fn refusal(req: &Request<'_>, text: &str) -> String {
    let path = req.path;
    if path.ends_with("/login") {
        return format!("OpenBao refused the login at {path} ({text}): check the role id and secret id (KMSFS_BAO_ROLE_ID_FILE, KMSFS_BAO_SECRET_ID_FILE)");
    }
    let capability = match (req.post, path.contains("/keys/")) {
        (false, _) => "read",
        (true, true) => "create",
        (true, false) => "update",
    };
    format!(
        "OpenBao refused the token on {path} ({text}): its policy needs the `{capability}` capability on path \"{path}\""
    )
}

/// Classifies an error answer to `req`, by status and OpenBao's text (it has no error
/// codes): the AWS names kmsfs reports elsewhere, and what to do.
pub fn error_from_answer(status: u16, req: &Request<'_>, body: &[u8]) -> KmsError {
    let text = error_text(body);
    let lower = text.to_lowercase();
    let path = req.path;
    match status {
        403 => KmsError::AccessDenied {
            code: "PermissionDenied".into(),
            message: refusal(req, &text),
        },
        429 => KmsError::Throttled(text),
        503 if lower.contains("sealed") => KmsError::Unavailable {
            code: "Sealed".into(),
            message: format!("OpenBao is sealed ({text}): unseal it (`bao operator unseal`)"),
        },
        s if s >= 500 || s == 412 => KmsError::Unavailable {
            code: format!("HTTP {s}"),
            message: text,
        },
        _ if lower.contains("encryption key not found") || status == 404 => {
            KmsError::NotFound(format!("{path}: {text}"))
        }
        _ if lower.contains("disallowed by policy") || lower.contains("too old") => {
            KmsError::InvalidState(format!(
                "{text}: the key's min_decryption_version is above the version this data key was wrapped under"
            ))
        }
        _ if lower.contains("message authentication failed")
            || lower.contains("invalid ciphertext")
            || lower.contains("unable to decode") =>
        {
            KmsError::InvalidCiphertext(text)
        }
        _ => KmsError::Validation {
            code: format!("HTTP {status}"),
            message: format!("{path}: {text}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openbao_errors_are_named_as_kmsfs_names_them() {
        let post = |path| Request {
            post: true,
            path,
            token: None,
            body: None,
        };
        let denied = error_from_answer(
            403,
            &post("transit/decrypt/k"),
            br#"{"errors":["1 error occurred:\n\t* permission denied\n\n"]}"#,
        );
        assert_eq!(denied.aws_code(), "PermissionDenied");
        assert!(denied.message().contains("`update` capability"), "{denied}");
        assert!(denied.message().contains("transit/decrypt/k"), "{denied}");
        assert!(!denied.message().contains('\n'), "{denied}");
        assert!(denied.message().contains("(permission denied)"), "{denied}");
        let sealed = error_from_answer(
            503,
            &post("transit/decrypt/k"),
            br#"{"errors":["Vault is sealed"]}"#,
        );
        assert!(
            sealed.retryable() && sealed.message().contains("unseal"),
            "{sealed}"
        );
        let missing = error_from_answer(
            400,
            &post("transit/decrypt/k"),
            br#"{"errors":["encryption key not found"]}"#,
        );
        assert!(matches!(missing, KmsError::NotFound(_)), "{missing}");
        let bad = error_from_answer(
            400,
            &post("p"),
            br#"{"errors":["cipher: message authentication failed"]}"#,
        );
        assert!(matches!(bad, KmsError::InvalidCiphertext(_)), "{bad}");
        let old = error_from_answer(
            400,
            &post("p"),
            br#"{"errors":["ciphertext or signature version is disallowed by policy (too old)"]}"#,
        );
        assert!(old.message().contains("min_decryption_version"), "{old}");
        let raw = error_from_answer(400, &post("p"), b"{\"plaintext\":\"c2VjcmV0\"}");
        assert!(
            !raw.retryable() && !raw.message().contains("c2VjcmV0"),
            "{raw}"
        );
        let get = Request {
            post: false,
            ..post("auth/token/lookup-self")
        };
        let denied = error_from_answer(403, &get, b"{}");
        assert!(denied.message().contains("`read` capability"), "{denied}");
        let login = error_from_answer(403, &post("auth/approle/login"), b"{}");
        assert!(login.message().contains("secret id"), "{login}");
    }
}
