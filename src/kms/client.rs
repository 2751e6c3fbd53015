//! [`HttpKms`]: AWS KMS (or our server) over its JSON 1.1 protocol, SigV4-signed with the
//! `aws-sigv4` crate, sent with reqwest over rustls.
//!
//! Why an owned multi-thread tokio runtime plus `block_on`, rather than reqwest's blocking
//! client: the callers are many FUSE worker threads at once. `Runtime::block_on` may be
//! called from any number of plain threads concurrently, all sharing one connection pool,
//! and the retry loop's backoff and per-attempt timeout are plain tokio timers. (reqwest's
//! blocking client would funnel every call through one background thread and hide the
//! per-attempt timeout.) The price: these methods must not be called from inside an async
//! runtime, where `block_on` panics.
//!
//! Retries: at most `max_attempts` attempts, only for throttling, 5xx, timeouts and
//! connection failures, with full-jitter exponential backoff. Plaintext keys in answers
//! are decoded straight into [`crate::secret`] types and the response buffer is zeroized.

use std::fmt;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use serde::de::DeserializeOwned;
use serde::Serialize;
use zeroize::Zeroizing;

use super::budget;
use super::config::ClientConfig;
use super::credentials::CredentialCache;
use super::retry::{transport_error, Retries};
use super::wire::{
    Blob, DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse, ErrorBody,
    GenerateDataKeyRequest, GenerateDataKeyResponse, ReEncryptRequest, ReEncryptResponse,
    SecretBlob,
};
use super::{EachKey, EachUnwrapped, EncryptionContext, GeneratedDataKey, Kms, KmsError, Unwrap};
use crate::secret::{DataKey, SecretBytes};

const JSON: &str = "application/x-amz-json-1.1";

/// A KMS reached over HTTP(S).
pub struct HttpKms {
    conn: Arc<Connection>,
    runtime: tokio::runtime::Runtime,
}

/// What a call needs, shared with the tasks of `HttpKms::call_many`.
struct Connection {
    config: ClientConfig,
    /// `ENDPOINT/`, parsed once.
    url: reqwest::Url,
    credentials: CredentialCache,
    http: reqwest::Client,
}

impl fmt::Debug for HttpKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpKms")
            .field("endpoint", &self.conn.config.endpoint)
            .field("region", &self.conn.config.region)
            .finish_non_exhaustive()
    }
}

fn plaintext_key(p: Option<SecretBlob>) -> Result<DataKey, KmsError> {
    let p = p.ok_or_else(|| KmsError::Protocol("answer has no Plaintext".into()))?;
    DataKey::from_slice(p.0.expose_secret()).map_err(|_| {
        KmsError::Protocol(format!(
            "the KMS returned a {}-byte data key, expected 32",
            p.0.len()
        ))
    })
}

fn ctx_opt(ctx: &EncryptionContext) -> Option<EncryptionContext> {
    (!ctx.is_empty()).then(|| ctx.clone())
}

/// Classifies a non-2xx answer, tolerating bodies that are empty or not JSON.
fn error_from_answer(status: u16, header_type: Option<&str>, body: &[u8]) -> KmsError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let (code, message) = match parsed {
        Some(e) if !e.kind.is_empty() => (e.kind, e.message),
        other => {
            let msg = other.map(|e| e.message).unwrap_or_else(|| {
                let text = String::from_utf8_lossy(body);
                text.chars().take(200).collect()
            });
            (header_type.unwrap_or("").to_owned(), msg)
        }
    };
    KmsError::from_aws(status, &code, message)
}

impl HttpKms {
    /// A client for `config`'s endpoint; fails when no credentials can be had now (the
    /// error names the sources tried), and fetches them again before they expire.
    pub fn new(config: ClientConfig) -> Result<Self, KmsError> {
        let tls = match &config.ca_bundle {
            Some(bundle) => Some(super::ca_bundle::client_tls(bundle)?),
            None => None,
        };
        let url = reqwest::Url::parse(&format!("{}/", config.endpoint)).map_err(|e| {
            KmsError::Protocol(format!("bad KMS endpoint {:?}: {e}", config.endpoint))
        })?;
        let mut http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            // KMS answers are never redirects: one layer less on every call.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(tls) = &tls {
            http = http.use_preconfigured_tls(tls.clone());
        }
        let http = http
            .build()
            .map_err(|e| KmsError::Protocol(format!("cannot build the HTTP client: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kms-client")
            .enable_all()
            .build()
            .map_err(|e| KmsError::Protocol(format!("cannot start the HTTP runtime: {e}")))?;
        let credentials = runtime.block_on(async {
            let cache = CredentialCache::new(&config.credentials, &config.region, tls).await;
            cache.identity().await.map(|_| cache)
        })?;
        Ok(HttpKms {
            conn: Arc::new(Connection {
                config,
                url,
                credentials,
                http,
            }),
            runtime,
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.conn.config
    }

    /// One operation with a typed request and answer.
    pub fn call_json<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        operation: &str,
        req: &Req,
    ) -> Result<Resp, KmsError> {
        let body = serde_json::to_vec(req).map_err(|e| KmsError::Protocol(e.to_string()))?;
        let answer = self.call(operation, body)?;
        serde_json::from_slice(&answer)
            .map_err(|e| KmsError::Protocol(format!("cannot parse the {operation} answer: {e}")))
    }

    /// Every call of `operation` with one of `bodies` under way at once, as tasks on the
    /// client's runtime; the calling thread hands each answer on as its call ends. One
    /// thread so keeps many calls in flight, which costs less CPU per call than a thread
    /// blocked on each call (`docs/performance.md`). A body that could not be made, or a
    /// task that panicked, is answered with its error.
    fn call_many(
        &self,
        operation: &'static str,
        bodies: Vec<Result<Vec<u8>, KmsError>>,
        each: &mut dyn FnMut(usize, Result<Zeroizing<Vec<u8>>, KmsError>),
    ) {
        let mut tasks = tokio::task::JoinSet::new();
        let deadline = budget::deadline_within(self.conn.config.call_timeout);
        let mut answered = vec![false; bodies.len()];
        for (i, body) in bodies.into_iter().enumerate() {
            let body = match body {
                Ok(b) => Zeroizing::new(b),
                Err(e) => {
                    answered[i] = true;
                    each(i, Err(e));
                    continue;
                }
            };
            let conn = self.conn.clone();
            let call = async move { (i, conn.call(operation, &body, deadline).await) };
            tasks.spawn_on(call, self.runtime.handle());
        }
        self.runtime.block_on(async {
            while let Some(done) = tasks.join_next().await {
                // A task that panicked is answered below.
                if let Ok((i, result)) = done {
                    answered[i] = true;
                    each(i, result);
                }
            }
        });
        for (i, _) in answered.iter().enumerate().filter(|(_, a)| !**a) {
            let panicked = format!("the {operation} call panicked");
            each(i, Err(KmsError::Protocol(panicked)));
        }
    }

    /// One operation with a raw JSON body, retried as the module describes. The answer is
    /// zeroized when dropped, since it may hold a plaintext.
    pub fn call(&self, operation: &str, body: Vec<u8>) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let body = Zeroizing::new(body);
        let deadline = budget::deadline_within(self.conn.config.call_timeout);
        self.runtime
            .block_on(self.conn.call(operation, &body, deadline))
    }
}

fn generate_request(key_id: &str, ctx: &EncryptionContext) -> Result<Vec<u8>, KmsError> {
    serde_json::to_vec(&GenerateDataKeyRequest {
        key_id: Some(key_id.into()),
        encryption_context: ctx_opt(ctx),
        key_spec: Some("AES_256".into()),
        ..Default::default()
    })
    .map_err(|e| KmsError::Protocol(e.to_string()))
}

fn decrypt_request(key_id: &str, wrapped: &[u8], ctx: &EncryptionContext) -> DecryptRequest {
    DecryptRequest {
        ciphertext_blob: Some(Blob(wrapped.to_vec())),
        encryption_context: ctx_opt(ctx),
        key_id: Some(key_id.into()),
        ..Default::default()
    }
}

fn decrypted_from(answer: &[u8]) -> Result<DataKey, KmsError> {
    let resp: DecryptResponse = serde_json::from_slice(answer)
        .map_err(|e| KmsError::Protocol(format!("cannot parse the Decrypt answer: {e}")))?;
    plaintext_key(resp.plaintext)
}

fn generated_from(answer: &[u8]) -> Result<GeneratedDataKey, KmsError> {
    let resp: GenerateDataKeyResponse = serde_json::from_slice(answer)
        .map_err(|e| KmsError::Protocol(format!("cannot parse the GenerateDataKey answer: {e}")))?;
    Ok(GeneratedDataKey {
        key: plaintext_key(resp.plaintext)?,
        wrapped: resp.ciphertext_blob.0,
        key_arn: resp.key_id,
    })
}

impl Connection {
    /// One operation, retried as the module describes, given up at `deadline`.
    async fn call(
        &self,
        operation: &str,
        body: &[u8],
        deadline: Instant,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let c = &self.config;
        let retries = Retries {
            attempt_timeout: c.attempt_timeout,
            max_attempts: c.max_attempts,
            base_backoff: c.base_backoff,
            max_backoff: c.max_backoff,
        };
        let invocation = &invocation_id();
        let mut attempt = 0;
        retries
            .run(operation, deadline, || {
                attempt += 1;
                let sdk_request = format!("attempt={attempt}; max={}", c.max_attempts);
                async move {
                    let ids = [
                        ("amz-sdk-invocation-id", invocation.as_str()),
                        ("amz-sdk-request", sdk_request.as_str()),
                    ];
                    self.attempt(operation, body, &ids).await
                }
            })
            .await
    }

    /// One attempt, signing `host`, `x-amz-date`, `x-amz-target` and the SDK's ids (which
    /// make each attempt's signature unique, so a server's replay check never mistakes two
    /// equal calls in one second for a replay).
    async fn attempt(
        &self,
        operation: &str,
        body: &[u8],
        ids: &[(&str, &str); 2],
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let target = format!("TrentService.{operation}");
        let headers = [
            ("content-type", JSON),
            ("x-amz-target", target.as_str()),
            ids[0],
            ids[1],
        ];
        let identity = self.credentials.identity().await?;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.config.region)
            .name("kms")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| KmsError::Protocol(format!("cannot sign: {e}")))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            self.url.as_str(),
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .map_err(|e| KmsError::Protocol(format!("cannot sign: {e}")))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| KmsError::Protocol(format!("cannot sign: {e}")))?
            .into_parts();
        let mut req = self.http.post(self.url.clone()).body(body.to_vec());
        for (k, v) in headers.iter().copied().chain(instructions.headers()) {
            req = req.header(k, v);
        }
        let resp = req.send().await.map_err(transport_error)?;
        let status = resp.status().as_u16();
        let error_type = resp
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp.bytes().await.map_err(transport_error)?;
        // Without a copy when the buffer is the body's alone.
        let answer = Zeroizing::new(Vec::from(bytes));
        if (200..300).contains(&status) {
            Ok(answer)
        } else {
            Err(error_from_answer(status, error_type.as_deref(), &answer))
        }
    }
}

/// A random UUID (version 4), as AWS SDKs send in `amz-sdk-invocation-id`.
fn invocation_id() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

impl Kms for HttpKms {
    fn generate_data_key(
        &self,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<GeneratedDataKey, KmsError> {
        let answer = self.call("GenerateDataKey", generate_request(key_id, ctx)?)?;
        generated_from(&answer)
    }

    /// All the calls under way at once (`HttpKms::call_many`).
    fn generate_data_keys(&self, key_id: &str, contexts: &[EncryptionContext], each: EachKey<'_>) {
        let bodies = contexts.iter().map(|ctx| generate_request(key_id, ctx));
        self.call_many("GenerateDataKey", bodies.collect(), &mut |i, answer| {
            each(i, answer.and_then(|a| generated_from(&a)))
        });
    }

    /// All the calls under way at once (`HttpKms::call_many`).
    fn decrypt_many(&self, requests: &[Unwrap<'_>], each: EachUnwrapped<'_>) {
        let bodies = requests.iter().map(|r| {
            serde_json::to_vec(&decrypt_request(r.key_id, r.wrapped, r.ctx))
                .map_err(|e| KmsError::Protocol(e.to_string()))
        });
        self.call_many("Decrypt", bodies.collect(), &mut |i, answer| {
            each(i, answer.and_then(|a| decrypted_from(&a)))
        });
    }

    fn decrypt(
        &self,
        key_id: &str,
        wrapped: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        let resp: DecryptResponse =
            self.call_json("Decrypt", &decrypt_request(key_id, wrapped, ctx))?;
        plaintext_key(resp.plaintext)
    }

    fn re_encrypt(
        &self,
        wrapped: &[u8],
        ctx: &EncryptionContext,
        source_key_id: &str,
        dest_key_id: &str,
    ) -> Result<(Vec<u8>, String), KmsError> {
        let resp: ReEncryptResponse = self.call_json(
            "ReEncrypt",
            &ReEncryptRequest {
                ciphertext_blob: Some(Blob(wrapped.to_vec())),
                source_encryption_context: ctx_opt(ctx),
                source_key_id: Some(source_key_id.into()),
                destination_key_id: Some(dest_key_id.into()),
                destination_encryption_context: ctx_opt(ctx),
                ..Default::default()
            },
        )?;
        Ok((resp.ciphertext_blob.0, resp.key_id))
    }

    fn encrypt(
        &self,
        key_id: &str,
        plaintext: &SecretBytes,
        ctx: &EncryptionContext,
    ) -> Result<Vec<u8>, KmsError> {
        let copy = SecretBytes::from_slice(plaintext.expose_secret())
            .map_err(|e| KmsError::validation(e.to_string()))?;
        let resp: EncryptResponse = self.call_json(
            "Encrypt",
            &EncryptRequest {
                key_id: Some(key_id.into()),
                plaintext: Some(SecretBlob(copy)),
                encryption_context: ctx_opt(ctx),
                ..Default::default()
            },
        )?;
        Ok(resp.ciphertext_blob.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_parsed_defensively() {
        let e = error_from_answer(
            400,
            None,
            br#"{"__type":"com.amazon#NotFoundException","message":"m"}"#,
        );
        assert_eq!(e, KmsError::NotFound("m".into()));
        let e = error_from_answer(400, Some("DisabledException"), b"");
        assert_eq!(e.aws_code(), "DisabledException");
        let e = error_from_answer(502, None, b"<html>bad gateway</html>");
        assert!(e.retryable(), "{e}");
        let e = error_from_answer(400, None, b"\xff\xfe not json");
        assert!(matches!(e, KmsError::Protocol(_)), "{e}");
        let e = error_from_answer(400, None, br#"{"code":"x"}"#);
        assert!(!e.retryable());
    }
}
