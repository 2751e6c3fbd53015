//! Tests of the key cache (`key_cache.rs`).

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
    let (k1, served1) = cache.decrypt_cached(&arn, &g.wrapped, &ctx(1)).unwrap();
    let (k2, served2) = cache.decrypt_cached(&arn, &g.wrapped, &ctx(1)).unwrap();
    assert_eq!((served1, served2), (Served::Kms, Served::Cache));
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
        cache
            .decrypt_cached(&arn, &gs[0].wrapped, &ctx(0))
            .unwrap()
            .1
            == Served::Kms
    );
    std::thread::sleep(Duration::from_millis(60));
    assert!(
        cache
            .decrypt_cached(&arn, &gs[0].wrapped, &ctx(0))
            .unwrap()
            .1
            == Served::Kms,
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
            std::thread::spawn(move || {
                cache.decrypt_cached(&arn, &wrapped, &ctx(1)).unwrap().1 == Served::Cache
            })
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

#[test]
fn prefetched_keys_are_served_once_as_prefetched_and_counted_when_dropped_unused() {
    let (cache, arn) = setup(10, Duration::from_secs(60));
    let gs: Vec<_> = (0..3)
        .map(|i| cache.inner().generate_data_key(&arn, &ctx(i)).unwrap())
        .collect();
    let ctxs: Vec<_> = (0..3).map(ctx).collect();
    let requests: Vec<Unwrap<'_>> = gs
        .iter()
        .zip(&ctxs)
        .map(|(g, c)| Unwrap {
            key_id: &arn,
            wrapped: &g.wrapped,
            ctx: c,
        })
        .collect();
    let mut answered = Vec::new();
    cache.prefetch(&requests, &mut |i, r| answered.push((i, r.is_ok())));
    answered.sort();
    assert_eq!(answered, [(0, true), (1, true), (2, true)]);
    // Already cached: a second prefetch makes no call.
    cache.prefetch(&requests, &mut |_, _| panic!("asked again"));
    assert_eq!(cache.inner().stats().decrypt, 3);
    let (k, served) = cache.decrypt_cached(&arn, &gs[0].wrapped, &ctx(0)).unwrap();
    assert!(k.same_as(&gs[0].key));
    assert_eq!(served, Served::Prefetched);
    let again = cache.decrypt_cached(&arn, &gs[0].wrapped, &ctx(0)).unwrap();
    assert_eq!(again.1, Served::Cache, "prefetched is the first use only");
    assert_eq!(cache.inner().stats().decrypt, 3);
    assert_eq!(cache.prefetched_waiting(), 2);
    cache.clear();
    let s = cache.stats();
    assert_eq!(
        (s.prefetched, s.prefetched_used, s.prefetched_unused),
        (3, 1, 2)
    );
    assert_eq!(cache.prefetched_waiting(), 0);
}

#[test]
fn an_open_waits_for_the_prefetch_of_its_key_instead_of_calling_again() {
    let cache = Arc::new(KeyCache::new(
        Down(Default::default()),
        10,
        Duration::from_secs(60),
    ));
    let prefetcher = {
        let cache = cache.clone();
        std::thread::spawn(move || {
            let c = ctx(1);
            let r = [Unwrap {
                key_id: "k",
                wrapped: b"w",
                ctx: &c,
            }];
            let mut failed = false;
            cache.prefetch(&r, &mut |_, r| failed = r.is_err());
            failed
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let e = cache.decrypt_cached("k", b"w", &ctx(1)).err().unwrap();
    assert!(matches!(e, KmsError::Timeout(_)), "{e}");
    assert!(prefetcher.join().unwrap());
    assert_eq!(cache.inner().0.load(Ordering::SeqCst), 1, "one call in all");
}
