//! The key cache: a [`Kms`] decorator that remembers unwrapped data keys for a short time.
//!
//! Bounded by entries (least recently used goes first) and by age (an entry older than the
//! TTL is never served, and a sweeper thread wipes it within a second even when the mount
//! is idle). Keys live in [`DataKey`]s, so they are locked in memory and zeroized when
//! evicted, expired, cleared (unmount, signal) or dropped. Concurrent misses for the same
//! wrapped key make one KMS call (single flight): the others wait for its answer, key or
//! error, and take it as theirs, for no longer than their own deadline
//! ([`crate::kms::budget`]).
//!
//! Keys can also be fetched ahead of their use ([`KeyCache::prefetch`], many calls at
//! once): such an entry is marked until its first use, and one dropped unused (evicted,
//! expired, cleared) is counted, so that `kmsfs status` shows how many unwraps were wasted.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::kms::{budget, EachKey, EncryptionContext, GeneratedDataKey, Kms, KmsError, Unwrap};
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
    /// Fetched ahead of its use ([`KeyCache::prefetch`]) and not used yet.
    prefetched: bool,
}

/// Where [`KeyCache::decrypt_cached`] found a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// The KMS unwrapped it for this caller.
    Kms,
    /// The cache, or another caller's call for the same key.
    Cache,
    /// The cache, where [`KeyCache::prefetch`] had put it; this is its first use.
    Prefetched,
}

/// Hits, misses and size, for `kmsfs status` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
    /// Keys unwrapped ahead of their use, ...
    pub prefetched: u64,
    /// ... of which used since, ...
    pub prefetched_used: u64,
    /// ... and dropped without a use (evicted, expired or cleared); the rest wait in the
    /// cache.
    pub prefetched_unused: u64,
}

pub struct KeyCache<K> {
    inner: K,
    ttl: Duration,
    entries: Mutex<lru::LruCache<CacheKey, Entry>>,
    inflight: Mutex<HashMap<CacheKey, Flight>>,
    hits: AtomicU64,
    misses: AtomicU64,
    prefetched: AtomicU64,
    prefetched_used: AtomicU64,
    prefetched_unused: AtomicU64,
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
            prefetched: AtomicU64::new(0),
            prefetched_used: AtomicU64::new(0),
            prefetched_unused: AtomicU64::new(0),
        }
    }

    pub fn inner(&self) -> &K {
        &self.inner
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, lru::LruCache<CacheKey, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key under `ck` if it is fresh, and whether this is the first use of a
    /// prefetched key (when `used`; a peek leaves the mark).
    fn lookup(&self, ck: &CacheKey, used: bool) -> Option<(Arc<DataKey>, Served)> {
        let mut entries = self.lock();
        match entries.get_mut(ck) {
            Some(e) if e.inserted.elapsed() < self.ttl => {
                let served = if e.prefetched && used {
                    e.prefetched = false;
                    self.prefetched_used.fetch_add(1, Ordering::Relaxed);
                    Served::Prefetched
                } else {
                    Served::Cache
                };
                Some((e.key.clone(), served))
            }
            Some(_) => {
                let e = entries.pop(ck);
                self.dropped(e.as_ref());
                None
            }
            None => None,
        }
    }

    fn insert(&self, ck: CacheKey, key: Arc<DataKey>, prefetched: bool) {
        if self.ttl.is_zero() {
            return;
        }
        let entry = Entry {
            key,
            inserted: Instant::now(),
            prefetched,
        };
        if let Some((_, evicted)) = self.lock().push(ck, entry) {
            self.dropped(Some(&evicted));
        }
    }

    /// Counts an entry dropped while it still waited for its first use.
    fn dropped(&self, entry: Option<&Entry>) {
        if entry.is_some_and(|e| e.prefetched) {
            self.prefetched_unused.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The key if the cache holds it (a hit), without asking the KMS.
    pub fn cached(
        &self,
        key_id: &str,
        wrapped: &[u8],
        ctx: &EncryptionContext,
    ) -> Option<(Arc<DataKey>, Served)> {
        let found = self.lookup(&cache_key(key_id, wrapped, ctx), true)?;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(found)
    }

    /// Unwraps a key, from the cache when it holds it. Returns the key (shared with the
    /// cache: it is wiped when the last holder drops it) and where it was found.
    pub fn decrypt_cached(
        &self,
        key_id: &str,
        wrapped: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<(Arc<DataKey>, Served), KmsError> {
        let ck = cache_key(key_id, wrapped, ctx);
        if let Some(found) = self.lookup(&ck, true) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(found);
        }
        // Become the one caller that asks the KMS, or wait for the one that does.
        let flight = match self.take_off(ck) {
            Ok(flight) => flight,
            Err(theirs) => {
                let answer = wait_for(&theirs)?;
                self.hits.fetch_add(1, Ordering::Relaxed);
                // A prefetch's answer is this caller's first use of it.
                return answer.map(|k| (k, self.lookup(&ck, true).map_or(Served::Cache, |f| f.1)));
            }
        };
        let result = self.inner.decrypt(key_id, wrapped, ctx).map(Arc::new);
        self.land(ck, &flight, &result, false);
        self.misses.fetch_add(1, Ordering::Relaxed);
        result.map(|k| (k, Served::Kms))
    }

    /// The flight for a call of `ck` this caller is to make, or (`Err`) the one under way.
    fn take_off(&self, ck: CacheKey) -> Result<Flight, Flight> {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        match inflight.get(&ck) {
            Some(f) => Err(f.clone()),
            None => {
                let f: Flight = Arc::new((Mutex::new(None), Condvar::new()));
                inflight.insert(ck, f.clone());
                Ok(f)
            }
        }
    }

    /// Caches the answer of the call for `ck` and hands it to those waiting for it.
    fn land(&self, ck: CacheKey, flight: &Flight, result: &Answer, prefetched: bool) {
        if let Ok(key) = result {
            self.insert(ck, key.clone(), prefetched);
        }
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ck);
        let (answer, cv) = &**flight;
        *answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(result.clone());
        cv.notify_all();
    }

    /// Unwraps ahead of their use the keys of `requests` that the cache neither holds nor
    /// is fetching, all at once ([`Kms::decrypt_many`]); `each` hears how each call it
    /// made ended, with the request's index. Callers that want one of these keys meanwhile
    /// wait for its call rather than make their own.
    pub fn prefetch(
        &self,
        requests: &[Unwrap<'_>],
        each: &mut dyn FnMut(usize, Result<(), KmsError>),
    ) {
        let mut calls = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            let ck = cache_key(r.key_id, r.wrapped, r.ctx);
            if self.ttl.is_zero() || self.lookup(&ck, false).is_some() {
                continue;
            }
            if let Ok(flight) = self.take_off(ck) {
                calls.push((i, ck, flight));
            }
        }
        let asked: Vec<Unwrap<'_>> = calls.iter().map(|c| requests[c.0]).collect();
        let mut answered = 0;
        self.inner.decrypt_many(&asked, &mut |j, result| {
            let (i, ck, flight) = &calls[j];
            let result = result.map(Arc::new);
            self.land(*ck, flight, &result, true);
            answered += 1;
            if result.is_ok() {
                self.prefetched.fetch_add(1, Ordering::Relaxed);
            }
            each(*i, result.map(|_| ()));
        });
        // An inner KMS that broke its promise of one answer per request must not leave
        // callers waiting for these flights.
        if answered < calls.len() {
            for (_, ck, flight) in &calls {
                let lost = Err(KmsError::Protocol("no answer to a prefetch".into()));
                if self
                    .inflight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains_key(ck)
                {
                    self.land(*ck, flight, &lost, true);
                }
            }
        }
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
            let e = entries.pop(&k);
            self.dropped(e.as_ref());
        }
    }

    /// Drops (and so zeroizes) every entry.
    pub fn clear(&self) {
        let mut entries = self.lock();
        while let Some((_, e)) = entries.pop_lru() {
            self.dropped(Some(&e));
        }
    }

    /// Keys fetched ahead that wait in the cache for their first use.
    pub fn prefetched_waiting(&self) -> u64 {
        let done = self.prefetched_used.load(Ordering::Relaxed)
            + self.prefetched_unused.load(Ordering::Relaxed);
        self.prefetched.load(Ordering::Relaxed).saturating_sub(done)
    }

    /// The most keys the cache holds.
    pub fn capacity(&self) -> usize {
        self.lock().cap().get()
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.lock().len(),
            prefetched: self.prefetched.load(Ordering::Relaxed),
            prefetched_used: self.prefetched_used.load(Ordering::Relaxed),
            prefetched_unused: self.prefetched_unused.load(Ordering::Relaxed),
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
            false,
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
                        false,
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

    fn is_current(&self, key_id: &str, wrapped: &[u8]) -> Result<bool, KmsError> {
        self.inner.is_current(key_id, wrapped)
    }
}

#[cfg(test)]
#[path = "key_cache_tests.rs"]
mod tests;
