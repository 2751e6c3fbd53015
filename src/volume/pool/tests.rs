//! The data-key pool against a counting, slow or failing generator.

use super::*;
use std::collections::HashSet;
use std::sync::atomic::AtomicUsize;

/// A generator that counts calls and the most ever running at once, answering after
/// `delay` (a slow KMS).
struct Counter {
    calls: AtomicUsize,
    running: AtomicUsize,
    most_running: AtomicUsize,
}

fn key() -> Result<GeneratedDataKey, KmsError> {
    Ok(GeneratedDataKey {
        key: crate::secret::DataKey::generate().unwrap(),
        wrapped: vec![1, 2, 3],
        key_arn: "arn:test".into(),
    })
}

fn pool_with(target: usize, max_target: usize, delay: Duration) -> (KeyPool, Arc<Counter>) {
    pool_aged(target, max_target, delay, Duration::from_secs(60))
}

fn pool_aged(
    target: usize,
    max_target: usize,
    delay: Duration,
    max_age: Duration,
) -> (KeyPool, Arc<Counter>) {
    let counter = Arc::new(Counter {
        calls: AtomicUsize::new(0),
        running: AtomicUsize::new(0),
        most_running: AtomicUsize::new(0),
    });
    let c = counter.clone();
    // A batch's calls run at once, as in the HTTP client: all count as running for
    // one `delay`.
    let pool = KeyPool::new(target, max_target, 32, max_age, move |ids, each| {
        c.calls.fetch_add(ids.len(), Ordering::SeqCst);
        let now = c.running.fetch_add(ids.len(), Ordering::SeqCst) + ids.len();
        c.most_running.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(delay);
        c.running.fetch_sub(ids.len(), Ordering::SeqCst);
        // In reverse: the pool must not rely on the order.
        for i in (0..ids.len()).rev() {
            each(i, key());
        }
    });
    (pool, counter)
}

fn pool(target: usize, delay: Duration) -> (KeyPool, Arc<Counter>) {
    pool_with(target, target * GROWTH, delay)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn fills_to_target_and_refills_only_after_half_is_taken() {
    let (pool, counter) = pool(8, Duration::ZERO);
    wait_for("the first fill", || pool.ready() == 8);
    assert_eq!(counter.calls.load(Ordering::SeqCst), 8);
    // Three takes leave five (more than half): nobody is woken.
    for _ in 0..3 {
        pool.take().unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(pool.ready(), 5);
    assert_eq!(counter.calls.load(Ordering::SeqCst), 8);
    // The fourth leaves half: the workers refill to the target.
    pool.take().unwrap();
    wait_for("the refill", || pool.ready() == 8);
    assert_eq!(counter.calls.load(Ordering::SeqCst), 12);
}

#[test]
fn every_key_has_its_own_file_id_and_comes_from_one_call() {
    let (pool, counter) = pool(4, Duration::ZERO);
    let mut ids = HashSet::new();
    for _ in 0..100 {
        assert!(ids.insert(pool.take().unwrap().file_id));
    }
    pool.shutdown();
    wait_for("the workers to stop", || {
        counter.running.load(Ordering::SeqCst) == 0
    });
    let calls = counter.calls.load(Ordering::SeqCst);
    // 100 taken, plus at most what was pooled or under way when it stopped.
    assert!(
        (100..=100 + 4 * GROWTH + 32).contains(&calls),
        "{calls} calls"
    );
    assert_eq!(pool.ready(), 0);
}

#[test]
fn the_pool_grows_only_as_far_as_locked_memory_allows() {
    assert_eq!(ceiling(32, 1024, None), 32 * GROWTH);
    // A user's 8 MiB: 2,048 pages less 272 kept for other secrets.
    assert_eq!(ceiling(32, 1024, Some(1776)), 752);
    assert!(!held_back(32, 752));
    assert!(held_back(32, 32));
    assert_eq!(ceiling(32, 0, Some(100_000)), 32 * GROWTH);
    // Never below the base size, even when the key cache alone fills the budget.
    assert_eq!(ceiling(32, 4096, Some(1776)), 32);
    // A burst against a slow KMS grows the pool to its ceiling and no further.
    let (limited, _) = pool_with(4, 16, Duration::from_millis(5));
    for _ in 0..300 {
        limited.take().unwrap();
    }
    assert_eq!(limited.shared.lock().target, 16);
}

#[test]
fn a_batch_with_failed_or_missing_answers_keeps_the_keys_that_came() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    // Every third key fails, and the last of a batch of more than one never comes.
    let pool = KeyPool::new(8, 8, 8, Duration::from_secs(60), move |ids, each| {
        let n = if ids.len() > 1 { ids.len() - 1 } else { 1 };
        for i in 0..n {
            let k = c.fetch_add(1, Ordering::SeqCst);
            if k % 3 == 2 {
                each(i, Err(KmsError::Throttled("slow down".into())));
            } else {
                each(i, key());
            }
        }
        // Out of range and repeated answers are ignored.
        each(ids.len(), key());
        each(0, key());
    });
    // Every call is accounted for: were a missing answer still counted as under way,
    // the pool would stop short of its target.
    wait_for("a full pool with nothing in flight", || {
        let st = pool.shared.lock();
        st.queue.len() == 8 && st.in_flight == 0
    });
    let mut ids = HashSet::new();
    for _ in 0..4 {
        assert!(ids.insert(pool.take().unwrap().file_id));
    }
    pool.shutdown();
}

#[test]
fn a_slow_kms_gets_calls_in_parallel_during_a_burst() {
    let (pool, counter) = pool(8, Duration::from_millis(20));
    for _ in 0..200 {
        pool.take().unwrap();
    }
    let most = counter.most_running.load(Ordering::SeqCst);
    assert!(most >= 4, "at most {most} calls ran at once");
}

#[test]
fn an_idle_pool_sleeps_once_its_keys_expire_and_wakes_at_the_next_take() {
    let (pool, counter) = pool_aged(4, 4, Duration::ZERO, Duration::from_millis(100));
    wait_for("the first fill", || pool.ready() == 4);
    // No take for several key lifetimes: the keys expire and none are made again.
    wait_for("the keys to expire", || {
        let st = pool.shared.lock();
        st.queue.is_empty() && st.target == 0
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        counter.calls.load(Ordering::SeqCst),
        4,
        "an idle pool kept calling"
    );
    // A create wakes it: its key is made on the spot, and the pool fills again.
    pool.take().unwrap();
    wait_for("the refill", || pool.ready() == 4);
    assert_eq!(counter.calls.load(Ordering::SeqCst), 9);
}
