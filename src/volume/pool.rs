//! A pool of pre-generated data keys, so that `create` does not wait for a KMS round trip.
//!
//! Each pooled key is generated for a fresh random file id (the id is bound into the key's
//! encryption context, so it must be chosen before the call). The pool is bounded
//! (`target` keys), short-lived (a key older than `max_age` is dropped, and so zeroized,
//! instead of being used), and refilled by worker threads that ask the KMS for keys in
//! batches whose calls run in parallel, which hides a slow KMS's latency from bursts of
//! file creation. It grows while creates
//! outrun it (so that enough calls are under way to cover the KMS's latency: at 20 ms a
//! call, 2,000 creates a second need 40 calls in flight) and shrinks back when keys expire
//! unused, so that an idle mount wastes at most the base number of keys per `max_age`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::format::FileId;
use crate::kms::{EachKey, GeneratedDataKey, KmsError};

/// A data key made for a file that does not exist yet.
pub struct PooledKey {
    pub file_id: FileId,
    pub generated: GeneratedDataKey,
    /// How long the KMS took to make it (from the start of its batch to its answer).
    pub kms_latency: Duration,
    made: Instant,
}

/// Makes one key per file id, handing each to the callback with the id's index as it is
/// made (see [`crate::kms::Kms::generate_data_keys`]).
type Generate = dyn Fn(&[FileId], EachKey<'_>) + Send + Sync;

/// How far the pool may grow past its base size when files are created faster than the
/// KMS answers one call at a time (see [`ceiling`]).
const GROWTH: usize = 32;

/// The most keys the pool may grow to (ready and being made): `base * GROWTH`, but no more
/// than fit, beside `key_cache_len` cached keys, in the locked memory the process may use
/// (`budget_pages`, [`crate::secret::key_page_budget`]; `None` when unlimited). Each key
/// has a locked page of its own; past the limit, keys would be held in memory that can be
/// swapped out. A user's usual 8 MiB with the default key cache allows 752 keys, and a
/// process with `CAP_IPC_LOCK` (root, outside most containers) 1,024.
pub fn ceiling(base: usize, key_cache_len: usize, budget_pages: Option<usize>) -> usize {
    let most = base * GROWTH;
    match budget_pages {
        None => most,
        Some(pages) => pages.saturating_sub(key_cache_len).clamp(base, most),
    }
}

/// Whether [`ceiling`] holds the pool below half its usual size, so that it cannot hide a
/// KMS 20 ms away (64 KiB of `ulimit -l`, as in some containers, leaves it at its base).
pub fn held_back(base: usize, ceiling: usize) -> bool {
    ceiling < base * GROWTH / 2
}

struct State {
    queue: VecDeque<PooledKey>,
    /// GenerateDataKey calls under way in the workers' batches.
    in_flight: usize,
    /// Keys the workers aim to have ready or under way: `base` when idle, doubled
    /// (up to `max_target`) whenever a take finds the pool less than half full, halved
    /// again when pooled keys expire unused.
    target: usize,
    /// Worker threads started so far: one at first, more as the target grows (one per
    /// [`BATCH`] calls wanted in flight).
    workers: usize,
    /// Workers are refilling up to `target`. They are woken when the pool falls to half
    /// its target, not on every take: one wake-up then makes many keys, instead of a
    /// thread switch for every file created.
    filling: bool,
}

impl State {
    /// Keys ready or under way.
    fn supply(&self) -> usize {
        self.queue.len() + self.in_flight
    }
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    stop: AtomicBool,
    base: usize,
    max_target: usize,
    max_calls: usize,
    max_age: Duration,
    generate: Box<Generate>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct KeyPool {
    shared: Arc<Shared>,
}

impl KeyPool {
    /// A pool keeping `target` keys (up to `max_target` during bursts of creation, see the
    /// module doc and `ceiling`), refilled with up to `max_calls` GenerateDataKey calls
    /// under way at once (one per 4 keys of the current target), asked of `generate` in
    /// batches of up to `BATCH` (32). With `target == 0` the pool is off and
    /// [`KeyPool::take`] always makes a key on the spot.
    pub fn new(
        target: usize,
        max_target: usize,
        max_calls: usize,
        max_age: Duration,
        generate: impl Fn(&[FileId], EachKey<'_>) + Send + Sync + 'static,
    ) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::with_capacity(target),
                in_flight: 0,
                target,
                workers: 0,
                filling: true,
            }),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            base: target,
            max_target: max_target.max(target),
            max_calls: max_calls.max(1),
            max_age,
            generate: Box::new(generate),
        });
        if target > 0 {
            let mut st = shared.lock();
            start_workers(&shared, &mut st);
        }
        Self { shared }
    }

    /// A key for a new file: from the pool when one is ready, else made now.
    pub fn take(&self) -> Result<PooledKey, KmsError> {
        let (pooled, wake) = {
            let mut st = self.shared.lock();
            let mut found = None;
            while let Some(k) = st.queue.pop_front() {
                if k.made.elapsed() < self.shared.max_age {
                    found = Some(k);
                    break;
                }
            }
            let limit = self.shared.max_target;
            let grew = st.queue.len() < st.target / 2 && st.target < limit;
            if grew {
                st.target = (st.target * 2).min(limit);
                start_workers(&self.shared, &mut st);
            }
            let wake = !st.filling && st.supply() <= st.target / 2;
            if wake {
                st.filling = true;
            }
            (found, wake || grew)
        };
        if wake {
            self.shared.wake.notify_all();
        }
        match pooled {
            Some(k) => Ok(k),
            None => make(&self.shared),
        }
    }

    /// Makes one key now and keeps it: proves the KMS answers before a mount is declared
    /// ready.
    pub fn prime(&self) -> Result<(), KmsError> {
        let key = make(&self.shared)?;
        if self.shared.base > 0 {
            self.shared.lock().queue.push_back(key);
        }
        Ok(())
    }

    /// Keys ready now.
    pub fn ready(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// Drops (and so zeroizes) every pooled key and stops the workers.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.lock().queue.clear();
        self.shared.wake.notify_all();
    }
}

impl Drop for KeyPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Keys of the target per call in flight: at 20 ms a call, each call in flight makes 50
/// keys a second, so the grown pool (1,024 keys, 256 calls) keeps up with 12,800 creates
/// a second, more than the mount creates at full speed on the benchmark's machine (about
/// 9,600). With 512 keys and 128 calls, 10,000 creates on a KMS 20 ms away took 2.02x the
/// full-speed time (1.47x now); with 256 and 64, 1.97x when the mount was slower. A
/// throttled call is retried by the KMS client with backoff.
const KEYS_PER_CALL: usize = 4;

/// Most keys one worker asks for at once. The calls of a batch run in parallel in the KMS
/// client, so a few threads keep 256 calls in flight: one thread per call, blocked on it,
/// cost the mount a third more CPU per call (thread switches, and 128 threads' memory
/// arenas), which on a machine that also runs the KMS slowed the creates it served.
const BATCH: usize = 32;

/// Calls the workers keep in flight at most for the current target.
fn calls_wanted(shared: &Shared, st: &State) -> usize {
    st.target.div_ceil(KEYS_PER_CALL).clamp(1, shared.max_calls)
}

/// Starts workers until there is one per [`BATCH`] calls wanted.
fn start_workers(shared: &Arc<Shared>, st: &mut State) {
    let want = calls_wanted(shared, st).div_ceil(BATCH);
    while st.workers < want {
        let worker = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("kmsfs-keypool-{}", st.workers))
            // A KMS call needs little stack; idle workers then cost little address space.
            .stack_size(512 << 10)
            .spawn(move || refill(&worker));
        if let Err(e) = spawned {
            tracing::warn!("key pool: cannot start a worker: {e}");
            return;
        }
        st.workers += 1;
    }
}

fn make(shared: &Shared) -> Result<PooledKey, KmsError> {
    let mut key = None;
    make_batch(shared, 1, &mut |k| key = Some(k));
    key.unwrap_or_else(|| Err(KmsError::Protocol("no key was made".into())))
}

/// Makes `n` keys, each for a fresh file id, in one batch of calls, and hands each to `keep`
/// as it comes: exactly `n` times, an error for a key that was not made.
fn make_batch(shared: &Shared, n: usize, keep: &mut dyn FnMut(Result<PooledKey, KmsError>)) {
    let ids: Result<Vec<FileId>, _> = (0..n).map(|_| crate::file::new_file_id()).collect();
    let ids = match ids {
        Ok(ids) => ids,
        Err(e) => {
            let e = KmsError::Protocol(format!("cannot make a file id: {e}"));
            (0..n).for_each(|_| keep(Err(e.clone())));
            return;
        }
    };
    let started = Instant::now();
    let mut answered = vec![false; n];
    (shared.generate)(&ids, &mut |i, result| {
        // An index out of range or given twice would break the count: not kept.
        match answered.get_mut(i) {
            Some(seen) if !*seen => *seen = true,
            _ => return,
        }
        keep(result.map(|generated| PooledKey {
            file_id: ids[i],
            generated,
            kms_latency: started.elapsed(),
            made: Instant::now(),
        }));
    });
    for _ in answered.iter().filter(|a| !**a) {
        keep(Err(KmsError::Protocol(
            "the KMS client gave no answer for a data key".into(),
        )));
    }
}

fn refill(shared: &Shared) {
    let mut backoff = Duration::from_millis(100);
    while !shared.stop.load(Ordering::SeqCst) {
        let n = {
            let st = shared.lock();
            // Sleep until the pool is half empty (see `filling`); wake on growth, on
            // shutdown, or to expire stale keys.
            let (mut st, _) = shared
                .wake
                .wait_timeout_while(st, shared.max_age / 2, |st| {
                    !st.filling && !shared.stop.load(Ordering::SeqCst)
                })
                .unwrap_or_else(|p| p.into_inner());
            // Keys are queued in about the order they were made, so the expired ones are
            // at the front. (Checking the whole queue here, under the lock, after every
            // key made, cost a clock read per pooled key: 512 of them per call at the
            // grown size, while creates waited for the lock.)
            let mut expired = false;
            while st
                .queue
                .front()
                .is_some_and(|k| k.made.elapsed() >= shared.max_age)
            {
                st.queue.pop_front();
                expired = true;
            }
            if expired {
                // Keys went unused: the burst is over, shrink towards the base size.
                st.target = (st.target / 2).max(shared.base);
            }
            if st.supply() < st.target / 2 {
                st.filling = true;
            }
            if shared.stop.load(Ordering::SeqCst) || !st.filling {
                continue;
            }
            if st.supply() >= st.target {
                st.filling = false;
                continue;
            }
            // This worker's share of the calls wanted in flight, and no more keys than
            // the target lacks.
            let share = calls_wanted(shared, &st).div_ceil(st.workers.max(1));
            let n = share.min(BATCH).min(st.target - st.supply()).max(1);
            st.in_flight += n;
            n
        };
        let (mut made, mut failed, mut last_error) = (0, 0, None);
        // Each key is pooled as it comes, not when the batch's slowest call ends.
        make_batch(shared, n, &mut |key| {
            let mut st = shared.lock();
            st.in_flight -= 1;
            match key {
                Ok(key) => {
                    made += 1;
                    // Keep it even past the target: it is made, and the next create uses it.
                    if !shared.stop.load(Ordering::SeqCst) {
                        st.queue.push_back(key);
                    }
                }
                Err(e) => {
                    failed += 1;
                    last_error = Some(e);
                }
            }
        });
        if made > 0 {
            backoff = Duration::from_millis(100);
        }
        if let Some(e) = last_error {
            // The KMS is down or refusing (the client has retried already): creates will
            // report it. Back off only when nothing came back; a partly throttled batch
            // still made keys.
            tracing::warn!("key pool: {failed} of {n} GenerateDataKey calls failed: {e}");
            if made == 0 {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
        let counter = Arc::new(Counter {
            calls: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            most_running: AtomicUsize::new(0),
        });
        let c = counter.clone();
        // A batch's calls run at once, as in the HTTP client: all count as running for
        // one `delay`.
        let pool = KeyPool::new(
            target,
            max_target,
            32,
            Duration::from_secs(60),
            move |ids, each| {
                c.calls.fetch_add(ids.len(), Ordering::SeqCst);
                let now = c.running.fetch_add(ids.len(), Ordering::SeqCst) + ids.len();
                c.most_running.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(delay);
                c.running.fetch_sub(ids.len(), Ordering::SeqCst);
                // In reverse: the pool must not rely on the order.
                for i in (0..ids.len()).rev() {
                    each(i, key());
                }
            },
        );
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
}
