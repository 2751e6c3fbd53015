//! Requests that must wait for a remote KMS run on threads of their own, so that the
//! mount's FUSE threads never all wait on it: a read of an open file, a `stat` or an open
//! whose key is cached is answered while the KMS is slow or silent
//! (`docs/kms.md`, "A KMS that does not answer").
//!
//! A request first runs on its FUSE thread with KMS calls forbidden ([`without_kms`]);
//! where it would need one, the volume answers [`VolumeError::NeedsKms`] before changing
//! anything, and the glue hands the request to [`Offload::run`], which runs it again on a
//! worker, with a deadline of `kms_timeout` from when it arrived for every KMS call under
//! it ([`crate::kms::budget`]).

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::VolumeError;

thread_local! {
    static NO_KMS: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with KMS calls forbidden on this thread: where one is needed the volume
/// answers [`VolumeError::NeedsKms`] instead.
pub fn without_kms<T>(f: impl FnOnce() -> T) -> T {
    let before = NO_KMS.replace(true);
    let out = f();
    NO_KMS.set(before);
    out
}

/// `Err(NeedsKms)` if this thread may not call the KMS now.
pub(super) fn may_call_kms() -> Result<(), VolumeError> {
    if NO_KMS.get() {
        Err(VolumeError::NeedsKms)
    } else {
        Ok(())
    }
}

type Job = Box<dyn FnOnce() + Send>;

struct Queue {
    jobs: VecDeque<(Instant, Job)>,
    idle: usize,
    workers: usize,
}

/// Worker threads for requests that wait on the KMS, started as needed up to a bound and
/// ended after a while idle.
pub struct Offload {
    queue: Arc<(Mutex<Queue>, Condvar)>,
    max_workers: usize,
    timeout: Duration,
}

/// How long an idle worker waits for another job before it ends.
const IDLE: Duration = Duration::from_secs(30);

impl Offload {
    /// Up to `max_workers` requests wait on the KMS at once, each for at most `timeout`.
    pub fn new(max_workers: usize, timeout: Duration) -> Self {
        let queue = Queue {
            jobs: VecDeque::new(),
            idle: 0,
            workers: 0,
        };
        Self {
            queue: Arc::new((Mutex::new(queue), Condvar::new())),
            max_workers: max_workers.max(1),
            timeout,
        }
    }

    /// How long a request may wait on the KMS (the mount's `--kms-timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `op` on `shared`: on this thread with KMS calls forbidden, and again on a
    /// worker of `offload` if it failed for want of one (`needs_kms` of its error); then
    /// `answer` with its result. Without workers (a KMS that never stalls), just here.
    pub fn dispatch<S: Send + Sync + 'static, T, E>(
        offload: Option<&Offload>,
        shared: &Arc<S>,
        op: impl Fn(&S) -> Result<T, E> + Send + 'static,
        answer: impl FnOnce(&S, Result<T, E>) + Send + 'static,
        needs_kms: impl Fn(&E) -> bool,
    ) {
        let Some(offload) = offload else {
            return answer(shared, op(shared));
        };
        match without_kms(|| op(shared)) {
            Err(e) if needs_kms(&e) => {
                let shared = shared.clone();
                offload.run(move || answer(&shared, op(&shared)));
            }
            result => answer(shared, result),
        }
    }

    /// Runs `job` on a worker, its KMS calls bounded by `timeout` from now (time spent
    /// queued counts: a request past its deadline fails at its first KMS call).
    pub fn run(&self, job: impl FnOnce() + Send + 'static) {
        let (lock, cv) = &*self.queue;
        let mut q = lock.lock().unwrap_or_else(|p| p.into_inner());
        q.jobs
            .push_back((Instant::now() + self.timeout, Box::new(job)));
        if q.idle > 0 {
            cv.notify_one();
            return;
        }
        if q.workers < self.max_workers {
            let queue = self.queue.clone();
            let spawned = std::thread::Builder::new()
                .name("kmsfs-kms-wait".into())
                .spawn(move || work(&queue));
            match spawned {
                Ok(_) => q.workers += 1,
                // The workers there are will get to it.
                Err(e) => tracing::warn!("cannot start a KMS worker: {e}"),
            }
        }
    }
}

fn work(queue: &(Mutex<Queue>, Condvar)) {
    let (lock, cv) = queue;
    let mut q = lock.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if let Some((deadline, job)) = q.jobs.pop_front() {
            drop(q);
            crate::kms::budget::with_deadline(deadline, job);
            q = lock.lock().unwrap_or_else(|p| p.into_inner());
            continue;
        }
        q.idle += 1;
        let (back, waited) = cv.wait_timeout(q, IDLE).unwrap_or_else(|p| p.into_inner());
        q = back;
        q.idle -= 1;
        if waited.timed_out() && q.jobs.is_empty() {
            q.workers -= 1;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn jobs_run_off_the_caller_with_their_deadline_and_no_kms_is_told() {
        assert!(may_call_kms().is_ok());
        assert!(matches!(
            without_kms(may_call_kms),
            Err(VolumeError::NeedsKms)
        ));
        let offload = Offload::new(2, Duration::from_secs(5));
        let (tx, rx) = mpsc::channel();
        for _ in 0..4 {
            let tx = tx.clone();
            offload.run(move || {
                let left = crate::kms::budget::deadline().map(|d| d - Instant::now());
                tx.send((std::thread::current().name().map(str::to_owned), left))
                    .unwrap();
            });
        }
        for _ in 0..4 {
            let (name, left) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            assert_eq!(name.as_deref(), Some("kmsfs-kms-wait"));
            assert!(left.unwrap() <= Duration::from_secs(5));
        }
        assert!(offload.queue.0.lock().unwrap().workers <= 2);
    }
}
