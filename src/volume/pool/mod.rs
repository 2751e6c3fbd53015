//! A pool of pre-generated data keys, so that `create` does not wait for a KMS round trip.
//!
//! Each pooled key is generated for a fresh random file id (the id is bound into the key's
//! encryption context, so it must be chosen before the call). The pool is bounded
//! (`target` keys), short-lived (a key older than `max_age` is dropped, and so zeroized,
//! instead of being used), and refilled by worker threads that ask the KMS for keys in
//! batches whose calls run in parallel, which hides a slow KMS's latency from bursts of
//! file creation. It grows while creates outrun it (so that enough calls are under way to
//! cover the KMS's latency at the rate creates come) and shrinks back when keys expire
//! unused. Keys that expire with no create for a whole `max_age` put the pool to sleep: an idle
//! mount makes no KMS calls until the next create, which makes its key on the spot.

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
/// swapped out (`docs/performance.md`, "KMS calls", says how
/// far a user's usual limit lets it grow).
pub fn ceiling(base: usize, key_cache_len: usize, budget_pages: Option<usize>) -> usize {
    let most = base * GROWTH;
    match budget_pages {
        None => most,
        Some(pages) => pages.saturating_sub(key_cache_len).clamp(base, most),
    }
}

/// Whether [`ceiling`] holds the pool below half its usual size, so that it cannot hide a
/// distant KMS's latency (a small `ulimit -l`, as in some containers, leaves it at its base).
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
    /// When a create last took a key: a pool whose keys expire with no take for a whole
    /// key lifetime goes dormant (target 0, no KMS calls) until the next take.
    last_take: Instant,
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
                last_take: Instant::now(),
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
        match self.try_take() {
            Some(k) => Ok(k),
            None => make(&self.shared),
        }
    }

    /// A key from the pool if one is ready (a take all the same: it wakes and grows the
    /// pool as [`KeyPool::take`] does).
    pub fn try_take(&self) -> Option<PooledKey> {
        let (pooled, wake) = {
            let mut st = self.shared.lock();
            let mut found = None;
            while let Some(k) = st.queue.pop_front() {
                if k.made.elapsed() < self.shared.max_age {
                    found = Some(k);
                    break;
                }
            }
            st.last_take = Instant::now();
            if st.target == 0 && self.shared.base > 0 {
                // Creates again after an idle spell: refill from the base size.
                st.target = self.shared.base;
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
        pooled
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

/// Keys of the target per call in flight: enough calls under way that, against a KMS a
/// typical network round trip away, the grown pool keeps up with the mount creating files
/// at full speed (`docs/performance.md`, "KMS calls"). A
/// throttled call is retried by the KMS client with backoff.
const KEYS_PER_CALL: usize = 4;

/// Most keys one worker asks for at once. The calls of a batch run in parallel in the KMS
/// client, so a few threads keep many calls in flight: one thread per call, blocked on
/// it, cost the mount more CPU per call (thread switches, and each thread's memory arena),
/// which on a machine that also runs the KMS slowed the creates it served.
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
        let Some(n) = next_batch(shared) else {
            continue;
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

/// Waits until the pool needs keys (or for the next expiry check), drops expired keys,
/// and says how many keys this worker should ask for now: `None` for none.
fn next_batch(shared: &Shared) -> Option<usize> {
    let st = shared.lock();
    // Sleep until the pool is half empty (see `filling`); wake on growth, on shutdown, or
    // to expire stale keys.
    let (mut st, _) = shared
        .wake
        .wait_timeout_while(st, shared.max_age / 2, |st| {
            !st.filling && !shared.stop.load(Ordering::SeqCst)
        })
        .unwrap_or_else(|p| p.into_inner());
    // Keys are queued in about the order they were made, so the expired ones are at the
    // front: checking only there keeps a clock read per pooled key out of the lock.
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
        st.target = if st.last_take.elapsed() >= shared.max_age {
            // No create for a whole key lifetime: an idle mount makes no KMS calls.
            0
        } else {
            // Keys went unused: the burst is over, shrink towards the base size.
            (st.target / 2).max(shared.base)
        };
    }
    if st.supply() < st.target / 2 {
        st.filling = true;
    }
    if shared.stop.load(Ordering::SeqCst) || !st.filling {
        return None;
    }
    if st.supply() >= st.target {
        st.filling = false;
        return None;
    }
    // This worker's share of the calls wanted in flight, and no more keys than the
    // target lacks.
    let share = calls_wanted(shared, &st).div_ceil(st.workers.max(1));
    let n = share.min(BATCH).min(st.target - st.supply()).max(1);
    st.in_flight += n;
    Some(n)
}

#[cfg(test)]
mod tests;
