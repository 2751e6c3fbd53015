//! The key cache: a [`Kms`] decorator that remembers unwrapped data keys for a short time.
//!
//! Bounded by entries (least recently used goes first) and by age (an entry older than the
//! TTL is never served, and a sweeper thread wipes it within a second even when the mount
//! is idle). Keys live in [`DataKey`]s, so they are locked in memory and zeroized when
//! evicted, expired, cleared (unmount, signal) or dropped. Concurrent misses for the same
//! wrapped key make one KMS call (single flight): the others wait for its answer, key or
//! error, and take it as theirs, for no longer than their own deadline
//! ([`crate::kms::budget`]).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::kms::{budget, EachKey, EncryptionContext, GeneratedDataKey, Kms, KmsError};
use crate::secret::{DataKey, SecretBytes};

type CacheKey = [u8; 32];
/// One KMS call's answer, shared with the callers that waited for it.
type Answer = Result<Arc<DataKey>, KmsError>;
/// One KMS call in progress: its answer once it has one, and the waiters' condition variable.
type Flight = Arc<(Mutex<Option<Answer>>, Condvar)>;

struct Entry {
    /// Shared, not copied, with callers: every copy of a key is another locked page and
    /// three system calls (mlock, madvise, munlock) that serialize on the process's memory map.
    key: Arc<DataKey>,
    inserted: Instant,
}

/// Hits, misses and size, for `kmsfs status` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
}

pub struct KeyCache<K> {
    inner: K,
    ttl: Duration,
    entries: Mutex<lru::LruCache<CacheKey, Entry>>,
    inflight: Mutex<HashMap<CacheKey, Flight>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

fn cache_key(key_id: &str, wrapped: &[u8], ctx: &EncryptionContext) -> CacheKey {
    let mut h = Sha256::new();
    for part in [key_id.as_bytes(), wrapped, &ctx.canonical_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

impl<K: Kms> KeyCache<K> {
    /// A cache of at most `max_entries` keys, each served for at most `ttl`. A zero
    /// `max_entries` or `ttl` disables caching (every open asks the KMS).
    pub fn new(inner: K, max_entries: usize, ttl: Duration) -> Self {
        let cap = NonZeroUsize::new(max_entries.max(1)).expect("at least 1");
        let ttl = if max_entries == 0 {
            Duration::ZERO
        } else {
            ttl
        };
        Self {
            inner,
            ttl,
            entries: Mutex::new(lru::LruCache::new(cap)),
            inflight: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn inner(&self) -> &K {
        &self.inner
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, lru::LruCache<CacheKey, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lookup(&self, ck: &CacheKey) -> Option<Arc<DataKey>> {
        let mut entries = self.lock();
        match entries.get(ck) {
            Some(e) if e.inserted.elapsed() < self.ttl => Some(e.key.clone()),
            Some(_) => {
                entries.pop(ck);
                None
            }
            None => None,
        }
    }

    fn insert(&self, ck: CacheKey, key: Arc<DataKey>) {
        if self.ttl.is_zero() {
            return;
        }
        self.lock().put(
            ck,
            Entry {
                key,
                inserted: Instant::now(),
            },
        );
    }

    /// The key if the cache holds it (a hit), without asking the KMS.
    pub fn cached(
        &self,
        key_id: &str,
        wrapped: &[u8],
        ctx: &EncryptionContext,
    ) -> Option<Arc<DataKey>> {
        let key = self.lookup(&cache_key(key_id, wrapped, ctx))?;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(key)
    }

    /// Unwraps a key, from the cache when it holds it. Returns the key (shared with the
    /// cache: it is wiped when the last holder drops it) and whether it was a cache hit.
    pub fn decrypt_cached(
        &self,
        key_id: &str,
        wrapped: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<(Arc<DataKey>, bool), KmsError> {
        let ck = cache_key(key_id, wrapped, ctx);
        if let Some(key) = self.lookup(&ck) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok((key, true));
        }
        // Become the one caller that asks the KMS, or wait for the one that does.
        let (flight, leader) = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match inflight.get(&ck) {
                Some(f) => (f.clone(), false),
                None => {
                    let f: Flight = Arc::new((Mutex::new(None), Condvar::new()));
                    inflight.insert(ck, f.clone());
                    (f, true)
                }
            }
        };
        if !leader {
            let answer = wait_for(&flight)?;
            self.hits.fetch_add(1, Ordering::Relaxed);
            return answer.map(|k| (k, true));
        }
        let result = self.inner.decrypt(key_id, wrapped, ctx).map(Arc::new);
        if let Ok(key) = &result {
            self.insert(ck, key.clone());
        }
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ck);
        let (answer, cv) = &*flight;
        *answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(result.clone());
        cv.notify_all();
        self.misses.fetch_add(1, Ordering::Relaxed);
        result.map(|k| (k, false))
    }

    /// Drops (and so zeroizes) every entry older than the TTL.
    pub fn sweep(&self) {
        let mut entries = self.lock();
        let expired: Vec<CacheKey> = entries
            .iter()
            .filter(|(_, e)| e.inserted.elapsed() >= self.ttl)
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            entries.pop(&k);
        }
    }

    /// Drops (and so zeroizes) every entry.
    pub fn clear(&self) {
        self.lock().clear();
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.lock().len(),
        }
    }
}

/// The answer of another caller's call, waited for until this thread's deadline.
fn wait_for(flight: &Flight) -> Result<Answer, KmsError> {
    let (answer, cv) = &**flight;
    let mut answer = answer.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if let Some(a) = &*answer {
            return Ok(a.clone());
        }
        answer = match budget::deadline() {
            None => cv.wait(answer).unwrap_or_else(|p| p.into_inner()),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(KmsError::Timeout(
                        "no answer yet to another open's KMS call for this key".into(),
                    ));
                }
                cv.wait_timeout(answer, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
    }
}

impl<K: Kms + 'static> KeyCache<K> {
    /// Starts a thread that sweeps expired keys every `period`; it ends when the cache is
    /// dropped.
    pub fn spawn_sweeper(self: &Arc<Self>, period: Duration) {
        let weak: Weak<Self> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("kmsfs-key-sweeper".into())
            .spawn(move || loop {
                std::thread::sleep(period);
                match weak.upgrade() {
                    Some(cache) => cache.sweep(),
                    None => return,
                }
            })
            .expect("spawn sweeper thread");
    }
}

impl<K: Kms> Kms for KeyCache<K> {
    fn generate_data_key(
        &self,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<GeneratedDataKey, KmsError> {
        let generated = self.inner.generate_data_key(key_id, ctx)?;
        self.insert(
            cache_key(&generated.key_arn, &generated.wrapped, ctx),
            Arc::new(generated.key.duplicate()),
        );
        Ok(generated)
    }

    fn generate_data_keys(&self, key_id: &str, contexts: &[EncryptionContext], each: EachKey<'_>) {
        self.inner
            .generate_data_keys(key_id, contexts, &mut |i, result| {
                if let (Ok(g), Some(ctx)) = (&result, contexts.get(i)) {
                    self.insert(
                        cache_key(&g.key_arn, &g.wrapped, ctx),
                        Arc::new(g.key.duplicate()),
                    );
                }
                each(i, result);
            });
    }

    fn decrypt(
        &self,
        key_id: &str,
        wrapped: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        self.decrypt_cached(key_id, wrapped, ctx)
            .map(|(k, _)| k.duplicate())
    }

    fn re_encrypt(
        &self,
        wrapped: &[u8],
        ctx: &EncryptionContext,
        source_key_id: &str,
        dest_key_id: &str,
    ) -> Result<(Vec<u8>, String), KmsError> {
        self.inner
            .re_encrypt(wrapped, ctx, source_key_id, dest_key_id)
    }

    fn encrypt(
        &self,
        key_id: &str,
        plaintext: &SecretBytes,
        ctx: &EncryptionContext,
    ) -> Result<Vec<u8>, KmsError> {
        self.inner.encrypt(key_id, plaintext, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::engine::Engine;
    use crate::kms::metered::MeteredKms;

    fn setup(max: usize, ttl: Duration) -> (Arc<KeyCache<MeteredKms<Engine>>>, String) {
        let engine = Engine::in_memory();
        let out = engine.call("CreateKey", b"{}").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let arn = v["KeyMetadata"]["Arn"].as_str().unwrap().to_owned();
        (
            Arc::new(KeyCache::new(MeteredKms::new(engine), max, ttl)),
            arn,
        )
    }

    fn ctx(n: u32) -> EncryptionContext {
        EncryptionContext::new().with("kmsfs:file-id", &n.to_string())
    }

    #[test]
    fn hits_skip_the_kms_and_give_the_same_key() {
        let (cache, arn) = setup(10, Duration::from_secs(60));
        let g = cache.inner().generate_data_key(&arn, &ctx(1)).unwrap();
        let (k1, hit1) = cache.decrypt_cached(&arn, &g.wrapped, &ctx(1)).unwrap();
        let (k2, hit2) = cache.decrypt_cached(&arn, &g.wrapped, &ctx(1)).unwrap();
        assert!(!hit1 && hit2);
        assert!(k1.same_as(&g.key));
        assert!(k2.same_as(&g.key));
        assert_eq!(cache.inner().stats().decrypt, 1);
        // The context is part of the cache key: another context is a miss (and refused).
        assert!(cache.decrypt_cached(&arn, &g.wrapped, &ctx(2)).is_err());
        assert_eq!(cache.stats().hits, 1);
    }

    #[test]
    fn entries_expire_and_are_bounded() {
        let (cache, arn) = setup(2, Duration::from_millis(50));
        let gs: Vec<_> = (0..3)
            .map(|i| cache.inner().generate_data_key(&arn, &ctx(i)).unwrap())
            .collect();
        for (i, g) in gs.iter().enumerate() {
            cache
                .decrypt_cached(&arn, &g.wrapped, &ctx(i as u32))
                .unwrap();
        }
        assert_eq!(cache.stats().entries, 2, "bounded by entries");
        // The first was evicted (least recently used): a miss again.
        assert!(
            !cache
                .decrypt_cached(&arn, &gs[0].wrapped, &ctx(0))
                .unwrap()
                .1
        );
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            !cache
                .decrypt_cached(&arn, &gs[0].wrapped, &ctx(0))
                .unwrap()
                .1,
            "expired"
        );
        std::thread::sleep(Duration::from_millis(60));
        cache.sweep();
        assert_eq!(cache.stats().entries, 0, "sweep drops expired keys");
    }

    #[test]
    fn concurrent_misses_make_one_kms_call() {
        let (cache, arn) = setup(10, Duration::from_secs(60));
        let g = cache.inner().generate_data_key(&arn, &ctx(1)).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (cache, arn, wrapped) = (cache.clone(), arn.clone(), g.wrapped.clone());
                std::thread::spawn(move || cache.decrypt_cached(&arn, &wrapped, &ctx(1)).unwrap().1)
            })
            .collect();
        let hits = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|h| *h)
            .count();
        assert_eq!(cache.inner().stats().decrypt, 1);
        assert_eq!(hits, 7);
    }

    #[test]
    fn zero_size_disables_caching() {
        let (cache, arn) = setup(0, Duration::from_secs(60));
        let g = cache.inner().generate_data_key(&arn, &ctx(1)).unwrap();
        cache.decrypt_cached(&arn, &g.wrapped, &ctx(1)).unwrap();
        cache.decrypt_cached(&arn, &g.wrapped, &ctx(1)).unwrap();
        assert_eq!(cache.inner().stats().decrypt, 2);
        assert_eq!(cache.stats().entries, 0);
    }

    /// A KMS that answers every Decrypt with an outage, slowly, counting the calls.
    struct Down(std::sync::atomic::AtomicUsize);

    impl Kms for Down {
        fn generate_data_key(
            &self,
            _: &str,
            _: &EncryptionContext,
        ) -> Result<GeneratedDataKey, KmsError> {
            unreachable!("not used")
        }
        fn decrypt(&self, _: &str, _: &[u8], _: &EncryptionContext) -> Result<DataKey, KmsError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(200));
            Err(KmsError::Timeout("no answer".into()))
        }
        fn re_encrypt(
            &self,
            _: &[u8],
            _: &EncryptionContext,
            _: &str,
            _: &str,
        ) -> Result<(Vec<u8>, String), KmsError> {
            unreachable!("not used")
        }
        fn encrypt(
            &self,
            _: &str,
            _: &SecretBytes,
            _: &EncryptionContext,
        ) -> Result<Vec<u8>, KmsError> {
            unreachable!("not used")
        }
    }

    #[test]
    fn callers_waiting_for_one_call_share_its_error_and_do_not_retry_in_turn() {
        let cache = Arc::new(KeyCache::new(
            Down(Default::default()),
            10,
            Duration::from_secs(60),
        ));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let cache = cache.clone();
                std::thread::spawn(move || cache.decrypt_cached("k", b"w", &ctx(1)).err())
            })
            .collect();
        for t in threads {
            assert!(matches!(t.join().unwrap(), Some(KmsError::Timeout(_))));
        }
        assert_eq!(
            cache.inner().0.load(Ordering::SeqCst),
            1,
            "each waiter asked again"
        );
    }

    #[test]
    fn a_waiter_gives_up_at_its_own_deadline() {
        let cache = Arc::new(KeyCache::new(
            Down(Default::default()),
            10,
            Duration::from_secs(60),
        ));
        let leader = {
            let cache = cache.clone();
            std::thread::spawn(move || cache.decrypt_cached("k", b"w", &ctx(1)).is_err())
        };
        std::thread::sleep(Duration::from_millis(50));
        let soon = Instant::now() + Duration::from_millis(20);
        let waited = budget::with_deadline(soon, || cache.decrypt_cached("k", b"w", &ctx(1)));
        let e = waited.err().unwrap();
        assert!(e.to_string().contains("another open"), "{e}");
        assert!(leader.join().unwrap());
    }
}
