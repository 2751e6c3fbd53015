//! What every remote backend does around one call: attempts bounded in time, retried with
//! full-jitter exponential backoff for the errors that may pass ([`KmsError::retryable`]),
//! never past the caller's deadline ([`super::budget`]); and a transport failure named as
//! the outage it is.

use std::future::Future;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::KmsError;

/// How long one attempt may take, how many to make, and the backoff between them.
#[derive(Debug, Clone, Copy)]
pub struct Retries {
    pub attempt_timeout: Duration,
    pub max_attempts: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Retries {
    /// Runs `attempt` until it succeeds, fails for good, the attempts run out, or no time
    /// is left before `deadline` for another (then the last error it is). `what` names the
    /// call in a timeout's message.
    pub async fn run<F, Fut>(
        &self,
        what: &str,
        deadline: Instant,
        mut attempt: F,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Zeroizing<Vec<u8>>, KmsError>>,
    {
        let started = Instant::now();
        let mut n = 1;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let limit = self.attempt_timeout.min(left);
            let result = tokio::time::timeout(limit, attempt())
                .await
                .unwrap_or_else(|_| {
                    Err(KmsError::Timeout(format!(
                        "{what}: no answer from the KMS within {:.1} s ({n} attempts)",
                        started.elapsed().as_secs_f64()
                    )))
                });
            match result {
                Err(e) if e.retryable() && n < self.max_attempts => {
                    let pause = self.backoff(n);
                    if Instant::now() + pause >= deadline {
                        return Err(e);
                    }
                    tokio::time::sleep(pause).await;
                    n += 1;
                }
                other => return other,
            }
        }
    }

    /// Full jitter: uniform in [0, min(max, base * 2^(attempt-1))].
    fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .base_backoff
            .saturating_mul(1 << (attempt - 1).min(20))
            .min(self.max_backoff);
        let mut r = [0u8; 8];
        let _ = getrandom::fill(&mut r);
        cap.mul_f64((u64::from_le_bytes(r) >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// A request that failed below HTTP: a timeout, a request we could not build, or (refused
/// or reset connections, TLS and body errors) an outage that may end shortly.
pub fn transport_error(e: reqwest::Error) -> KmsError {
    if e.is_timeout() {
        return KmsError::Timeout(e.to_string());
    }
    if e.is_builder() {
        return KmsError::Protocol(e.to_string());
    }
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    KmsError::Unavailable {
        code: "ConnectionError".into(),
        message: msg,
    }
}
