//! A [`Kms`] decorator that measures: calls per operation, errors, the latency of the
//! most recent calls, calls waiting now, and the KMS's health (whether its last answer was
//! an outage). `kmsfs status` shows these; tests use the counts to check how often a layer
//! above (the key cache, `stat`) really reaches the KMS.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{EachKey, EachUnwrapped, EncryptionContext, GeneratedDataKey, Kms, KmsError, Unwrap};
use crate::secret::{DataKey, SecretBytes};

/// Latencies kept for the percentiles.
const WINDOW: usize = 4096;

/// Passes every call on to `inner`, counting it and sampling how long it took.
#[derive(Default)]
pub struct MeteredKms<K> {
    inner: K,
    generate: AtomicU64,
    decrypt: AtomicU64,
    re_encrypt: AtomicU64,
    encrypt: AtomicU64,
    errors: AtomicU64,
    latencies_ms: Mutex<VecDeque<f64>>,
    in_flight: AtomicU64,
    health: Mutex<Health>,
}

/// The outcome of the calls so far, for [`KmsStats::health`].
#[derive(Default)]
struct Health {
    last_ok: Option<Instant>,
    /// The last error, when, and whether it was an outage (retryable: no answer, 5xx,
    /// throttling) rather than a refusal.
    last_error: Option<(Instant, String, bool)>,
    /// Outages in a row since the last answer.
    outages_in_a_row: u64,
}

/// What [`MeteredKms::stats`] reports.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KmsStats {
    pub generate_data_key: u64,
    pub decrypt: u64,
    pub re_encrypt: u64,
    pub encrypt: u64,
    pub errors: u64,
    /// Over the last 4096 calls; `None` before the first.
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p90: Option<f64>,
    pub latency_ms_p99: Option<f64>,
    pub latency_ms_max: Option<f64>,
    /// Calls waiting for the KMS now.
    pub in_flight: u64,
    /// `ok`, or `unreachable` while the last call ended in an outage (the KMS did not
    /// answer in time, or answered 5xx or throttling) until one is answered again.
    pub health: &'static str,
    pub outages_in_a_row: u64,
    pub last_error: Option<String>,
    pub last_error_s_ago: Option<u64>,
    pub last_answer_s_ago: Option<u64>,
}

impl<K: Kms> MeteredKms<K> {
    pub fn new(inner: K) -> Self {
        Self {
            inner,
            generate: AtomicU64::new(0),
            decrypt: AtomicU64::new(0),
            re_encrypt: AtomicU64::new(0),
            encrypt: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latencies_ms: Mutex::new(VecDeque::with_capacity(WINDOW)),
            in_flight: AtomicU64::new(0),
            health: Mutex::new(Health::default()),
        }
    }

    /// Runs `call`, counting it under `counter` and sampling how long it took.
    fn measure<T>(
        &self,
        counter: &AtomicU64,
        call: impl FnOnce() -> Result<T, KmsError>,
    ) -> Result<T, KmsError> {
        let started = Instant::now();
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let result = call();
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.sample(counter, result.as_ref().err(), started.elapsed());
        result
    }

    /// Counts one call that took `elapsed` and keeps its latency for the percentiles.
    fn sample(&self, counter: &AtomicU64, failed: Option<&KmsError>, elapsed: Duration) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        match failed {
            None => (h.last_ok, h.outages_in_a_row) = (Some(Instant::now()), 0),
            Some(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                h.outages_in_a_row = if e.retryable() {
                    h.outages_in_a_row + 1
                } else {
                    // The KMS answered: a refusal or a bad ciphertext, not an outage.
                    h.last_ok = Some(Instant::now());
                    0
                };
                h.last_error = Some((Instant::now(), e.to_string(), e.retryable()));
            }
        }
        drop(h);
        let mut l = self.latencies_ms.lock().unwrap_or_else(|p| p.into_inner());
        if l.len() == WINDOW {
            l.pop_front();
        }
        l.push_back(elapsed.as_secs_f64() * 1e3);
    }

    /// Whether the last call ended in an outage, and none has been answered since.
    pub fn in_outage(&self) -> bool {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .outages_in_a_row
            > 0
    }

    /// Calls, errors and latency percentiles so far.
    pub fn stats(&self) -> KmsStats {
        let mut l: Vec<f64> = self
            .latencies_ms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        l.sort_by(f64::total_cmp);
        let h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let pct = |p: f64| -> Option<f64> {
            (!l.is_empty()).then(|| {
                let i = ((l.len() as f64 - 1.0) * p).round() as usize;
                (l[i] * 1000.0).round() / 1000.0
            })
        };
        KmsStats {
            generate_data_key: self.generate.load(Ordering::Relaxed),
            decrypt: self.decrypt.load(Ordering::Relaxed),
            re_encrypt: self.re_encrypt.load(Ordering::Relaxed),
            encrypt: self.encrypt.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency_ms_p50: pct(0.5),
            latency_ms_p90: pct(0.9),
            latency_ms_p99: pct(0.99),
            latency_ms_max: pct(1.0),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            health: if h.outages_in_a_row > 0 {
                "unreachable"
            } else {
                "ok"
            },
            outages_in_a_row: h.outages_in_a_row,
            last_error: h.last_error.as_ref().map(|e| e.1.clone()),
            last_error_s_ago: h.last_error.as_ref().map(|e| e.0.elapsed().as_secs()),
            last_answer_s_ago: h.last_ok.map(|t| t.elapsed().as_secs()),
        }
    }
}

impl<K: Kms> Kms for MeteredKms<K> {
    fn generate_data_key(
        &self,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<GeneratedDataKey, KmsError> {
        self.measure(&self.generate, || self.inner.generate_data_key(key_id, ctx))
    }

    /// Each call is sampled with the time from the batch's start to its answer: the calls
    /// start together against a remote KMS (on the local one, one after another, in
    /// microseconds).
    fn generate_data_keys(&self, key_id: &str, contexts: &[EncryptionContext], each: EachKey<'_>) {
        let started = Instant::now();
        self.inner
            .generate_data_keys(key_id, contexts, &mut |i, result| {
                self.sample(&self.generate, result.as_ref().err(), started.elapsed());
                each(i, result);
            });
    }

    fn decrypt(
        &self,
        key_id: &str,
        wrapped: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        self.measure(&self.decrypt, || self.inner.decrypt(key_id, wrapped, ctx))
    }

    /// Sampled as [`MeteredKms::generate_data_keys`] samples; each call counts as in flight
    /// until its answer.
    fn decrypt_many(&self, requests: &[Unwrap<'_>], each: EachUnwrapped<'_>) {
        let started = Instant::now();
        self.in_flight
            .fetch_add(requests.len() as u64, Ordering::Relaxed);
        self.inner.decrypt_many(requests, &mut |i, result| {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.sample(&self.decrypt, result.as_ref().err(), started.elapsed());
            each(i, result);
        });
    }

    fn re_encrypt(
        &self,
        wrapped: &[u8],
        ctx: &EncryptionContext,
        source_key_id: &str,
        dest_key_id: &str,
    ) -> Result<(Vec<u8>, String), KmsError> {
        self.measure(&self.re_encrypt, || {
            self.inner
                .re_encrypt(wrapped, ctx, source_key_id, dest_key_id)
        })
    }

    fn encrypt(
        &self,
        key_id: &str,
        plaintext: &SecretBytes,
        ctx: &EncryptionContext,
    ) -> Result<Vec<u8>, KmsError> {
        self.measure(&self.encrypt, || self.inner.encrypt(key_id, plaintext, ctx))
    }

    fn is_current(&self, key_id: &str, wrapped: &[u8]) -> Result<bool, KmsError> {
        self.inner.is_current(key_id, wrapped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::engine::Engine;

    #[test]
    fn counts_calls_errors_and_latency() {
        let engine = Engine::in_memory();
        let v: serde_json::Value =
            serde_json::from_slice(&engine.call("CreateKey", b"{}").unwrap()).unwrap();
        let arn = v["KeyMetadata"]["Arn"].as_str().unwrap().to_owned();
        let m = MeteredKms::new(engine);
        assert_eq!(m.stats().latency_ms_p50, None);
        let ctx = EncryptionContext::new().with("a", "b");
        let g = m.generate_data_key(&arn, &ctx).unwrap();
        m.decrypt(&arn, &g.wrapped, &ctx).unwrap();
        assert!(m
            .decrypt(&arn, &g.wrapped, &EncryptionContext::new())
            .is_err());
        let s = m.stats();
        assert_eq!((s.generate_data_key, s.decrypt, s.errors), (1, 2, 1));
        assert!(s.latency_ms_p50.is_some() && s.latency_ms_max >= s.latency_ms_p50);
    }
}
