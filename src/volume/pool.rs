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
use crate::kms::{GeneratedDataKey, KmsError};

/// A data key made for a file that does not exist yet.
pub struct PooledKey {
    pub file_id: FileId,
    pub generated: GeneratedDataKey,
    /// How long the KMS took to make it (the batch it was made in).
    pub kms_latency: Duration,
    made: Instant,
}

/// Makes one key per file id, in order (see [`crate::kms::Kms::generate_data_keys`]).
type Generate = dyn Fn(&[FileId]) -> Vec<Result<GeneratedDataKey, KmsError>> + Send + Sync;

/// How far the pool may grow past its base size when files are created faster than the
/// KMS answers one call at a time (see [`ceiling`]).
const GROWTH: usize = 32;

/// The most keys the pool may grow to: `base * GROWTH`, but no more than fit, with the
/// keys being made and the `key_cache` entries, in the locked memory the process may use
/// (`budget` keys, [`crate::secret::key_page_budget`]; `None` when unlimited). Each key has
/// a locked page of its own; past the limit, keys would be held in memory that can be
/// swapped out. A user's usual 8 MiB with the default key cache allows about 600 keys, and
/// root 1,024.
pub fn ceiling(base: usize, key_cache: usize, budget: Option<usize>) -> usize {
    let most = base * GROWTH;
    match budget {
        None => most,
        // Keys pooled plus calls in flight are at most 5/4 of the target.
        Some(keys) => (keys.saturating_sub(key_cache) * 4 / 5).clamp(base, most),
    }
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
        generate: impl Fn(&[FileId]) -> Vec<Result<GeneratedDataKey, KmsError>> + Send + Sync + 'static,
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
    make_batch(shared, 1)
        .pop()
        .unwrap_or_else(|| Err(KmsError::Protocol("no key was made".into())))
}

/// `n` keys, each for a fresh file id, from one batch of calls.
fn make_batch(shared: &Shared, n: usize) -> Vec<Result<PooledKey, KmsError>> {
    let ids: Result<Vec<FileId>, _> = (0..n).map(|_| crate::file::new_file_id()).collect();
    let ids = match ids {
        Ok(ids) => ids,
        Err(e) => {
            let e = KmsError::Protocol(format!("cannot make a file id: {e}"));
            return vec![Err(e)];
        }
    };
    let started = Instant::now();
    let mut generated = (shared.generate)(&ids).into_iter();
    let kms_latency = started.elapsed();
    let made = Instant::now();
    ids.into_iter()
        .map(|file_id| match generated.next() {
            Some(Ok(generated)) => Ok(PooledKey {
                file_id,
                generated,
                kms_latency,
                made,
            }),
            Some(Err(e)) => Err(e),
            None => Err(KmsError::Protocol(
                "the KMS client answered fewer keys than asked".into(),
            )),
        })
        .collect()
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
            let n = share.min(st.target - st.supply()).max(1);
            st.in_flight += n;
            n
        };
        let made = make_batch(shared, n);
        let mut st = shared.lock();
        st.in_flight -= n;
        let mut failed = None;
        for k in made {
            match k {
                // Keep it even past the target: it is made, and the next create uses it.
                Ok(k) if !shared.stop.load(Ordering::SeqCst) => st.queue.push_back(k),
                Ok(_) => {}
                Err(e) => failed = Some(e),
            }
        }
        drop(st);
        match failed {
            None => backoff = Duration::from_millis(100),
            Some(e) => {
                // The KMS is down or refusing: creates will report it; retry gently.
                tracing::warn!("key pool: GenerateDataKey failed: {e}");
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

    fn pool(target: usize, delay: Duration) -> (KeyPool, Arc<Counter>) {
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
            target * GROWTH,
            32,
            Duration::from_secs(60),
            move |ids| {
                c.calls.fetch_add(ids.len(), Ordering::SeqCst);
                let now = c.running.fetch_add(ids.len(), Ordering::SeqCst) + ids.len();
                c.most_running.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(delay);
                c.running.fetch_sub(ids.len(), Ordering::SeqCst);
                ids.iter()
                    .map(|_| {
                        Ok(GeneratedDataKey {
                            key: crate::secret::DataKey::generate().unwrap(),
                            wrapped: vec![1, 2, 3],
                            key_arn: "arn:test".into(),
                        })
                    })
                    .collect()
            },
        );
        (pool, counter)
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
        assert_eq!(ceiling(32, 1024, Some(1776)), 601);
        assert_eq!(ceiling(32, 0, Some(100_000)), 32 * GROWTH);
        // Never below the base size, even when the key cache alone fills the budget.
        assert_eq!(ceiling(32, 4096, Some(1776)), 32);
        let limited = KeyPool::new(4, 16, 8, Duration::from_secs(60), |ids| {
            ids.iter()
                .map(|_| {
                    Ok(GeneratedDataKey {
                        key: crate::secret::DataKey::generate().unwrap(),
                        wrapped: vec![1],
                        key_arn: "arn:test".into(),
                    })
                })
                .collect()
        });
        for _ in 0..200 {
            limited.take().unwrap();
        }
        assert!(limited.shared.lock().target <= 16);
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
