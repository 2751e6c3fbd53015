//! A pool of pre-generated data keys, so that `create` does not wait for a KMS round trip.
//!
//! Each pooled key is generated for a fresh random file id (the id is bound into the key's
//! encryption context, so it must be chosen before the call). The pool is bounded
//! (`target` keys), short-lived (a key older than `max_age` is dropped, and so zeroized,
//! instead of being used), and refilled by a few worker threads that issue KMS calls in
//! parallel, which hides a slow KMS's latency from bursts of file creation.

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
    /// How long the KMS took to make it.
    pub kms_latency: Duration,
    made: Instant,
}

type Generate = dyn Fn(FileId) -> Result<GeneratedDataKey, KmsError> + Send + Sync;

struct Shared {
    queue: Mutex<VecDeque<PooledKey>>,
    wake: Condvar,
    stop: AtomicBool,
    target: usize,
    max_age: Duration,
    generate: Box<Generate>,
}

pub struct KeyPool {
    shared: Arc<Shared>,
}

impl KeyPool {
    /// A pool keeping up to `target` keys, refilled by `workers` threads calling
    /// `generate`. With `target == 0` the pool is off and [`KeyPool::take`] always makes a
    /// key on the spot.
    pub fn new(
        target: usize,
        workers: usize,
        max_age: Duration,
        generate: impl Fn(FileId) -> Result<GeneratedDataKey, KmsError> + Send + Sync + 'static,
    ) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::with_capacity(target)),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            target,
            max_age,
            generate: Box::new(generate),
        });
        if target > 0 {
            for i in 0..workers.max(1) {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("kmsfs-keypool-{i}"))
                    .spawn(move || refill(&shared))
                    .expect("spawn key pool worker");
            }
        }
        Self { shared }
    }

    /// A key for a new file: from the pool when one is ready, else made now.
    pub fn take(&self) -> Result<PooledKey, KmsError> {
        let pooled = {
            let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            let mut found = None;
            while let Some(k) = q.pop_front() {
                if k.made.elapsed() < self.shared.max_age {
                    found = Some(k);
                    break;
                }
            }
            found
        };
        self.shared.wake.notify_all();
        match pooled {
            Some(k) => Ok(k),
            None => make(&self.shared),
        }
    }

    /// Makes one key now and keeps it: proves the KMS answers before a mount is declared
    /// ready.
    pub fn prime(&self) -> Result<(), KmsError> {
        let key = make(&self.shared)?;
        if self.shared.target > 0 {
            self.shared
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back(key);
        }
        Ok(())
    }

    /// Keys ready now.
    pub fn ready(&self) -> usize {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Drops (and so zeroizes) every pooled key and stops the workers.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.shared.wake.notify_all();
    }
}

impl Drop for KeyPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn make(shared: &Shared) -> Result<PooledKey, KmsError> {
    let file_id = crate::file::new_file_id()
        .map_err(|e| KmsError::Protocol(format!("cannot make a file id: {e}")))?;
    let started = Instant::now();
    let generated = (shared.generate)(file_id)?;
    Ok(PooledKey {
        file_id,
        generated,
        kms_latency: started.elapsed(),
        made: Instant::now(),
    })
}

fn refill(shared: &Shared) {
    let mut backoff = Duration::from_millis(100);
    while !shared.stop.load(Ordering::SeqCst) {
        {
            let q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            // Sleep while full; wake on take, on shutdown, or to expire stale keys.
            let (mut q, _) = shared
                .wake
                .wait_timeout_while(q, shared.max_age / 2, |q| {
                    q.len() >= shared.target && !shared.stop.load(Ordering::SeqCst)
                })
                .unwrap_or_else(|p| p.into_inner());
            q.retain(|k| k.made.elapsed() < shared.max_age);
            if q.len() >= shared.target || shared.stop.load(Ordering::SeqCst) {
                continue;
            }
        }
        match make(shared) {
            Ok(k) => {
                backoff = Duration::from_millis(100);
                let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
                if q.len() < shared.target && !shared.stop.load(Ordering::SeqCst) {
                    q.push_back(k);
                }
            }
            Err(e) => {
                // The KMS is down or refusing: creates will report it; retry gently.
                tracing::warn!("key pool: GenerateDataKey failed: {e}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
