//! The replay check: a signed request is good for [`MAX_SKEW`] on either side of its
//! `X-Amz-Date`, so one captured (from a log, a proxy, a plain-HTTP network) could be
//! sent again for as long. The server remembers the signatures it accepted until they
//! expire and refuses one that comes again later than [`REPEAT_GRACE`] after the first.
//!
//! Why the grace: SigV4 signs to the second and carries no nonce, and some SDKs sign
//! nothing unique per call (boto3 sends its invocation id unsigned), so two clients
//! making the same call in the same second send the same bytes. Such twins arrive within
//! moments of each other; a replay that soon needs the request in real time, which HTTPS
//! does not give an eavesdropper. The memory is bounded: past [`CAPACITY`] signatures the
//! oldest are forgotten, and every request signed no later than the newest forgotten one
//! is refused as too old to be checked (an SDK signs each attempt afresh, so its retry
//! passes).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::kms::sigv4::MAX_SKEW;
use crate::kms::KmsError;

/// Signatures remembered at most (each takes under a hundred bytes).
pub const CAPACITY: usize = 1 << 17;

/// How long after its first arrival an identical request is still taken for a twin
/// (the same call signed in the same second by another client), not a replay.
pub const REPEAT_GRACE: Duration = Duration::from_secs(2);

/// Signatures accepted and not yet expired.
#[derive(Default)]
pub struct SeenSignatures {
    inner: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// (signing time in seconds, signature) -> when it first arrived.
    by_time: BTreeMap<(u64, [u8; 32]), Instant>,
    /// Requests signed at or before this second are refused: a signature of that time
    /// may have been forgotten.
    floor_secs: Option<u64>,
}

fn refused(message: String) -> KmsError {
    KmsError::AccessDenied {
        code: "InvalidSignatureException".into(),
        message,
    }
}

impl SeenSignatures {
    /// Refuses a request (signed at `signed_secs`, with `signature`) that first arrived
    /// more than [`REPEAT_GRACE`] before `arrived`; remembers it otherwise. `now` is the
    /// wall clock, against which signatures expire.
    pub fn check(
        &self,
        signed_secs: u64,
        signature: [u8; 32],
        now: SystemTime,
        arrived: Instant,
    ) -> Result<(), KmsError> {
        let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut seen = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Nothing signed before this can pass the clock check any more.
        let live_from = now_secs.saturating_sub(MAX_SKEW.as_secs());
        while let Some(entry) = seen.by_time.first_entry() {
            if entry.key().0 >= live_from {
                break;
            }
            entry.remove();
        }
        if seen.floor_secs.is_some_and(|f| signed_secs <= f) {
            return Err(refused(format!(
                "the request was signed too long ago for the replay check of this server, which has seen {CAPACITY} requests since: sign it again (check the client's clock)"
            )));
        }
        match seen.by_time.get(&(signed_secs, signature)) {
            Some(first) if arrived.saturating_duration_since(*first) > REPEAT_GRACE => {
                Err(refused(
                    "this signed request was already received (a replay): sign every request anew"
                        .into(),
                ))
            }
            Some(_) => Ok(()),
            None => {
                seen.by_time.insert((signed_secs, signature), arrived);
                if seen.by_time.len() > CAPACITY {
                    if let Some(((oldest, _), _)) = seen.by_time.pop_first() {
                        seen.floor_secs = Some(seen.floor_secs.unwrap_or(0).max(oldest));
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_past_the_grace_are_refused_until_expiry() {
        let seen = SeenSignatures::default();
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t = 1_000_000;
        let at = Instant::now();
        seen.check(t, [1; 32], now, at).unwrap();
        seen.check(t, [1; 32], now, at + REPEAT_GRACE).unwrap();
        let later = at + REPEAT_GRACE + Duration::from_millis(1);
        let e = seen.check(t, [1; 32], now, later).unwrap_err();
        assert_eq!(e.aws_code(), "InvalidSignatureException");
        assert!(e.message().contains("replay"), "{e}");
        seen.check(t, [2; 32], now, later).unwrap();
        let expired = now + MAX_SKEW + Duration::from_secs(1);
        seen.check(t + 1000, [3; 32], expired, later).unwrap();
        assert_eq!(seen.inner.lock().unwrap().by_time.len(), 1);
    }

    #[test]
    fn past_capacity_older_requests_are_refused() {
        let seen = SeenSignatures::default();
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = Instant::now();
        for i in 0..=CAPACITY as u64 {
            let t = 1_000_000 - 100 + i * 100 / CAPACITY as u64;
            let mut sig = [0; 32];
            sig[..8].copy_from_slice(&i.to_le_bytes());
            seen.check(t, sig, now, at).unwrap();
        }
        let e = seen.check(1_000_000 - 100, [9; 32], now, at).unwrap_err();
        assert!(e.message().contains("too long ago"), "{e}");
        seen.check(1_000_000, [9; 32], now, at).unwrap();
    }
}
