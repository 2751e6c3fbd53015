//! [`TransitKms`]: OpenBao's (or Vault's) Transit secrets engine as a KMS backend, for
//! volumes made with `--kms-endpoint openbao+https://HOST:PORT --key MOUNT/NAME`
//! (`docs/kms.md`, "OpenBao and Vault Transit", maps each operation).
//!
//! A key is named by its engine's mount path and its name (`transit/NAME`), which is also
//! what headers record as the key's "ARN". Transit keys are made with `derived=true`: the
//! encryption context (volume and file ids, [`EncryptionContext::canonical_bytes`]) is the
//! derivation `context`, so each file's data key is wrapped under a key of its own ids, as
//! AWS binds the context. A wrapped key is Transit's ciphertext text (`vault:vN:...`).

pub mod auth;
mod http;
mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use self::auth::{Auth, Source};
pub use self::http::Timeouts;
use self::http::{Http, Request};
use self::wire::{
    blob_version, ciphertext_text, context, data_key, key_ref, parse, BatchData, CiphertextData,
    DataKeyData, PlaintextData,
};
pub use self::wire::{server_addr, KeyVersions};
use super::{EachKey, EachUnwrapped, EncryptionContext, GeneratedDataKey, Kms, KmsError, Unwrap};
use crate::secret::{DataKey, SecretBytes};

/// Most keys unwrapped by one `decrypt` call (`batch_input`).
const BATCH: usize = 128;
/// How often the token renewer looks at the token (one obtained since, or its due time).
const TOKEN_CHECK: Duration = Duration::from_secs(1);
/// How long a key's versions, once read, are taken as they are.
const VERSIONS_TTL: Duration = Duration::from_secs(10);

/// OpenBao's or Vault's Transit engine, reached over HTTP(S) with a token kept alive.
pub struct TransitKms {
    http: Arc<Http>,
    auth: Arc<Auth>,
    versions: Mutex<HashMap<String, (KeyVersions, Instant)>>,
}

impl std::fmt::Debug for TransitKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransitKms").finish_non_exhaustive()
    }
}

impl TransitKms {
    /// Connects to `endpoint` (`openbao+https://HOST:PORT`), with the token source, CA
    /// file (`BAO_CACERT`, `VAULT_CACERT`) and namespace (`BAO_NAMESPACE`,
    /// `VAULT_NAMESPACE`) from the environment.
    pub fn connect(endpoint: &str) -> Result<Self, KmsError> {
        Self::connect_with(endpoint, &|k| std::env::var(k).ok(), Timeouts::default())
    }

    /// [`TransitKms::connect`] with `env` for the environment.
    pub fn connect_with(
        endpoint: &str,
        env: &dyn Fn(&str) -> Option<String>,
        timeouts: Timeouts,
    ) -> Result<Self, KmsError> {
        let addr = server_addr(endpoint).ok_or_else(|| {
            KmsError::validation(format!(
                "{endpoint:?} is not an OpenBao endpoint: openbao+https://HOST:PORT (or openbao+http:// for a local dev server)"
            ))
        })?;
        let var = |names: [&str; 2]| names.iter().find_map(|n| env(n).filter(|v| !v.is_empty()));
        if !wire::loopback_or_tls(addr)
            && env("KMSFS_BAO_INSECURE_HTTP").is_none_or(|v| v.is_empty())
        {
            return Err(KmsError::validation(format!(
                "{endpoint} would send the token and data keys over the network unencrypted: use openbao+https:// (with BAO_CACERT for a private CA), or set KMSFS_BAO_INSECURE_HTTP=1 if the network is trusted"
            )));
        }
        let ca = var(["BAO_CACERT", "VAULT_CACERT"]).map(std::path::PathBuf::from);
        let namespace = var(["BAO_NAMESPACE", "VAULT_NAMESPACE"]);
        let http = Arc::new(Http::new(addr, namespace, ca.as_deref(), timeouts)?);
        let auth = Arc::new(Auth::new(Source::from_env(env)?));
        // A token that expires while no call is made (an idle mount) is renewed anyway.
        let (h, a) = (Arc::downgrade(&http), Arc::downgrade(&auth));
        std::thread::Builder::new()
            .name("kms-bao-token".into())
            .spawn(move || keep_token_alive(h, a))
            .map_err(|e| KmsError::Protocol(format!("cannot start the token renewer: {e}")))?;
        Ok(TransitKms {
            http,
            auth,
            versions: Mutex::default(),
        })
    }

    /// One request with the token; refused with a token that may since have been replaced
    /// (a file an agent rewrites, an AppRole login), tried once more with a fresh one.
    fn send(
        &self,
        post: bool,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let body = body.map(|b| b.to_string());
        self.send_bytes(post, path, body.as_deref().map(str::as_bytes))
    }

    /// [`TransitKms::send`] with the body as bytes (a body holding a secret is made as
    /// zeroized bytes by the caller).
    fn send_bytes(
        &self,
        post: bool,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let token = self.auth.token(&self.http)?;
        let req = Request {
            post,
            path,
            token: Some(&token),
            body,
        };
        match self.http.call(&req) {
            Err(KmsError::AccessDenied { .. }) if self.auth.forget(&token, &self.http) => {
                let token = self.auth.token(&self.http)?;
                self.http.call(&Request {
                    token: Some(&token),
                    ..req
                })
            }
            other => other,
        }
    }

    /// The key's versions and whether it is derived (`GET MOUNT/keys/NAME`).
    pub fn key_versions(&self, key_id: &str) -> Result<KeyVersions, KmsError> {
        let (mount, name) = key_ref(key_id)?;
        let answer = self.send(false, &format!("{mount}/keys/{name}"), None)?;
        let v: Value = serde_json::from_slice(&answer)
            .map_err(|e| KmsError::Protocol(format!("keys/{name}: {e}")))?;
        let d = &v["data"];
        let latest_version = d["latest_version"].as_u64().ok_or_else(|| {
            KmsError::Protocol(format!("keys/{name} answered without a latest_version"))
        })?;
        let versions = KeyVersions {
            latest_version,
            min_decryption_version: d["min_decryption_version"].as_u64().unwrap_or(0),
            derived: d["derived"].as_bool().unwrap_or(false),
        };
        let mut cache = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(format!("{mount}/{name}"), (versions, Instant::now()));
        Ok(versions)
    }

    /// The key's canonical id (`MOUNT/NAME`), after checking that it exists and is derived.
    pub fn describe(&self, key_id: &str) -> Result<String, KmsError> {
        let (mount, name) = key_ref(key_id)?;
        let v = self.key_versions(key_id)?;
        if !v.derived {
            return Err(KmsError::validation(format!(
                "Transit key {mount}/{name} is not derived: kmsfs binds each file's volume and file ids into the key derivation context, which needs a key made with derived=true; make a new one (`bao write -f {mount}/keys/NEWNAME derived=true`) and use it"
            )));
        }
        Ok(format!("{mount}/{name}"))
    }

    /// Makes key `key_id` (derived, AES-256-GCM) if it does not exist; its canonical id.
    pub fn ensure_key(&self, key_id: &str) -> Result<String, KmsError> {
        if let Err(KmsError::NotFound(_)) = self.key_versions(key_id) {
            let (mount, name) = key_ref(key_id)?;
            let body = json!({ "derived": true, "type": "aes256-gcm96" });
            self.send(true, &format!("{mount}/keys/{name}"), Some(&body))?;
        }
        self.describe(key_id)
    }

    fn cached_versions(&self, key_id: &str) -> Result<KeyVersions, KmsError> {
        let (mount, name) = key_ref(key_id)?;
        let cache = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((v, at)) = cache.get(&format!("{mount}/{name}")) {
            if at.elapsed() < VERSIONS_TTL {
                return Ok(*v);
            }
        }
        drop(cache);
        self.key_versions(key_id)
    }

    fn decrypt_batch(&self, key_id: &str, items: &[Unwrap<'_>]) -> Vec<Result<DataKey, KmsError>> {
        let fail = |e: &KmsError| items.iter().map(|_| Err(e.clone())).collect();
        let (mount, name) = match key_ref(key_id) {
            Ok(k) => k,
            Err(e) => return fail(&e),
        };
        let mut input = Vec::with_capacity(items.len());
        for u in items {
            match ciphertext_text(u.wrapped) {
                Ok(c) => input.push(json!({ "ciphertext": c, "context": context(u.ctx) })),
                // One bad blob fails alone: send the others.
                Err(_) => {
                    input.push(json!({ "ciphertext": "vault:v0:", "context": context(u.ctx) }))
                }
            }
        }
        let path = format!("{mount}/decrypt/{name}");
        // Per-item failures in a 200 answer, with the other items' plaintexts.
        let body = json!({ "batch_input": input, "partial_failure_response_code": 200 });
        let answer = match self.send(true, &path, Some(&body)) {
            Ok(a) => a,
            // A batch with any failed item is answered 400 with the results in the body.
            Err(KmsError::InvalidCiphertext(_)) | Err(KmsError::Validation { .. })
                if items.len() > 1 =>
            {
                return items
                    .iter()
                    .map(|u| self.decrypt(u.key_id, u.wrapped, u.ctx))
                    .collect()
            }
            Err(e) => return fail(&e),
        };
        let results = match parse::<BatchData>("decrypt", &answer) {
            Ok(b) if b.batch_results.len() == items.len() => b.batch_results,
            Ok(_) => {
                return fail(&KmsError::Protocol(
                    "decrypt answered a batch of another size".into(),
                ))
            }
            Err(e) => return fail(&e),
        };
        results
            .into_iter()
            .map(|r| match (r.plaintext, r.error) {
                (Some(p), None) => data_key(p),
                (_, Some(e)) => Err(http::error_from_answer(
                    400,
                    &Request {
                        post: true,
                        path: &path,
                        token: None,
                        body: None,
                    },
                    json!({ "errors": [e] }).to_string().as_bytes(),
                )),
                (None, None) => Err(KmsError::Protocol(
                    "decrypt answered an item without a plaintext".into(),
                )),
            })
            .collect()
    }
}

/// Renews (or replaces) the token when it is due, until the backend is dropped.
fn keep_token_alive(http: std::sync::Weak<Http>, auth: std::sync::Weak<Auth>) {
    loop {
        let Some(wait) = auth.upgrade().map(|a| a.due_in()) else {
            return;
        };
        let nap = wait
            .unwrap_or(TOKEN_CHECK)
            .clamp(Duration::from_millis(100), TOKEN_CHECK);
        std::thread::sleep(nap);
        let (Some(http), Some(auth)) = (http.upgrade(), auth.upgrade()) else {
            return;
        };
        if auth.due_in().is_some_and(|d| d.is_zero()) {
            if let Err(e) = auth.token(&http) {
                tracing::warn!(
                    "OpenBao: could not renew the token (the next call tries again): {e}"
                );
            }
        }
    }
}

impl Kms for TransitKms {
    fn generate_data_key(
        &self,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<GeneratedDataKey, KmsError> {
        let (mount, name) = key_ref(key_id)?;
        let body = json!({ "context": context(ctx), "bits": 256 });
        let answer = self.send(
            true,
            &format!("{mount}/datakey/plaintext/{name}"),
            Some(&body),
        )?;
        let d: DataKeyData = parse("datakey", &answer)?;
        Ok(GeneratedDataKey {
            key: data_key(d.plaintext)?,
            wrapped: d.ciphertext.into_bytes(),
            key_arn: format!("{mount}/{name}"),
        })
    }

    /// Transit makes one data key per call: the calls run at once on the client's runtime.
    fn generate_data_keys(&self, key_id: &str, contexts: &[EncryptionContext], each: EachKey<'_>) {
        let (mount, name) = match key_ref(key_id) {
            Ok(k) => k,
            Err(e) => return (0..contexts.len()).for_each(|i| each(i, Err(e.clone()))),
        };
        let token = match self.auth.token(&self.http) {
            Ok(t) => t,
            Err(e) => return (0..contexts.len()).for_each(|i| each(i, Err(e.clone()))),
        };
        let path = Arc::new(format!("{mount}/datakey/plaintext/{name}"));
        let deadline = self.http.deadline();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, ctx) in contexts.iter().enumerate() {
            let (http, path, token) = (self.http.clone(), path.clone(), token.clone());
            let body = json!({ "context": context(ctx), "bits": 256 }).to_string();
            tasks.spawn_on(
                async move {
                    let req = Request {
                        post: true,
                        path: &path,
                        token: Some(&token),
                        body: Some(body.as_bytes()),
                    };
                    (i, http.call_async(&req, deadline).await)
                },
                self.http.runtime(),
            );
        }
        let mut answered = vec![false; contexts.len()];
        let arn = format!("{mount}/{name}");
        self.http.runtime().block_on(async {
            while let Some(done) = tasks.join_next().await {
                if let Ok((i, answer)) = done {
                    answered[i] = true;
                    each(
                        i,
                        answer.and_then(|a| {
                            let d: DataKeyData = parse("datakey", &a)?;
                            Ok(GeneratedDataKey {
                                key: data_key(d.plaintext)?,
                                wrapped: d.ciphertext.into_bytes(),
                                key_arn: arn.clone(),
                            })
                        }),
                    );
                }
            }
        });
        for i in (0..contexts.len()).filter(|i| !answered[*i]) {
            each(
                i,
                Err(KmsError::Protocol("the datakey call panicked".into())),
            );
        }
    }

    fn decrypt(
        &self,
        key_id: &str,
        wrapped: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        let (mount, name) = key_ref(key_id)?;
        let body = json!({ "ciphertext": ciphertext_text(wrapped)?, "context": context(ctx) });
        let answer = self.send(true, &format!("{mount}/decrypt/{name}"), Some(&body))?;
        data_key(parse::<PlaintextData>("decrypt", &answer)?.plaintext)
    }

    /// Transit's `batch_input`: one call per key and batch of data keys.
    fn decrypt_many(&self, requests: &[Unwrap<'_>], each: EachUnwrapped<'_>) {
        let mut by_key: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, r) in requests.iter().enumerate() {
            by_key.entry(r.key_id).or_default().push(i);
        }
        for (key_id, indices) in by_key {
            for chunk in indices.chunks(BATCH) {
                let items: Vec<Unwrap<'_>> = chunk.iter().map(|&i| requests[i]).collect();
                for (&i, result) in chunk.iter().zip(self.decrypt_batch(key_id, &items)) {
                    each(i, result);
                }
            }
        }
    }

    /// Within one key, Transit's `rewrap` (to the key's newest version, the plaintext never
    /// leaving OpenBao); to another key, a decrypt and an encrypt (it passes through here).
    fn re_encrypt(
        &self,
        wrapped: &[u8],
        ctx: &EncryptionContext,
        source_key_id: &str,
        dest_key_id: &str,
    ) -> Result<(Vec<u8>, String), KmsError> {
        let (smount, sname) = key_ref(source_key_id)?;
        let (dmount, dname) = key_ref(dest_key_id)?;
        let dest = format!("{dmount}/{dname}");
        if (smount, sname) == (dmount, dname) {
            let body = json!({ "ciphertext": ciphertext_text(wrapped)?, "context": context(ctx) });
            let answer = self.send(true, &format!("{smount}/rewrap/{sname}"), Some(&body))?;
            let d: CiphertextData = parse("rewrap", &answer)?;
            return Ok((d.ciphertext.into_bytes(), dest));
        }
        let key = self.decrypt(source_key_id, wrapped, ctx)?;
        let secret = SecretBytes::from_slice(key.expose_secret())
            .map_err(|e| KmsError::Protocol(e.to_string()))?;
        Ok((self.encrypt(dest_key_id, &secret, ctx)?, dest))
    }

    fn encrypt(
        &self,
        key_id: &str,
        plaintext: &SecretBytes,
        ctx: &EncryptionContext,
    ) -> Result<Vec<u8>, KmsError> {
        let (mount, name) = key_ref(key_id)?;
        let text = Zeroizing::new(B64.encode(plaintext.expose_secret()));
        // Base64 and the context need no JSON escaping.
        let body = Zeroizing::new(format!(
            r#"{{"plaintext":"{}","context":"{}"}}"#,
            *text,
            context(ctx)
        ));
        let answer = self.send_bytes(
            true,
            &format!("{mount}/encrypt/{name}"),
            Some(body.as_bytes()),
        )?;
        Ok(parse::<CiphertextData>("encrypt", &answer)?
            .ciphertext
            .into_bytes())
    }

    /// A ciphertext older than the key's newest version is not current: rewrap moves it.
    fn is_current(&self, key_id: &str, wrapped: &[u8]) -> Result<bool, KmsError> {
        let latest = self.cached_versions(key_id)?.latest_version;
        Ok(blob_version(wrapped).is_some_and(|v| v >= latest))
    }
}
