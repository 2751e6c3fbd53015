//! A second core for one large write: a helper thread that seals half of it while the
//! FUSE thread seals the other half.
//!
//! A FUSE write is synchronous: the writer waits for the reply, so while the daemon seals
//! a `dd bs=1M` write the writer's core is idle. Sealing is most of the daemon's work on
//! that request; split in two it takes about half as long. `dd` of 1 GiB with direct
//! writes, 3 interleaved runs by hand: 796–830 MiB/s with the helper, 671–729 without
//! (`docs/performance.md`).
//!
//! The helper is a one-thread `rayon` pool, because its job borrows the request's data and
//! buffer (a scoped job) and a thread started per request cost more than it saved (measured
//! earlier and dropped). Only one request uses it at a time; a request that finds it busy
//! seals alone, so many writers at once neither queue behind each other nor lose anything
//! (both cores are busy then anyway). Without a second core there is no helper.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The helper thread, and whether a request is using it.
pub struct Helper {
    pool: rayon::ThreadPool,
    busy: AtomicBool,
}

impl Helper {
    /// The process's helper, started on first use; `None` on a machine with one core (or
    /// if the thread cannot be started).
    pub fn get() -> Option<&'static Helper> {
        static HELPER: OnceLock<Option<Helper>> = OnceLock::new();
        HELPER
            .get_or_init(|| {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                if cores < 2 {
                    return None;
                }
                Helper::new()
                    .map_err(|e| tracing::warn!("no helper thread for large writes: {e}"))
                    .ok()
            })
            .as_ref()
    }

    fn new() -> Result<Self, rayon::ThreadPoolBuildError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "kmsfs-helper".into())
            .build()?;
        Ok(Helper {
            pool,
            busy: AtomicBool::new(false),
        })
    }

    /// Runs `here` on this thread and `there` on the helper at the same time, and returns
    /// both results once both are done. If another request has the helper, runs both here,
    /// one after the other.
    pub fn both<A, B>(&self, here: impl FnOnce() -> A, there: impl FnOnce() -> B + Send) -> (A, B)
    where
        B: Send,
    {
        if self.busy.swap(true, Ordering::Acquire) {
            let a = here();
            return (a, there());
        }
        // Hands the helper back even if a side panics (the panic then goes on up).
        struct Release<'a>(&'a AtomicBool);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _release = Release(&self.busy);
        let mut b = None;
        let a = self.pool.in_place_scope(|s| {
            s.spawn(|_| b = Some(there()));
            here()
        });
        // The scope ends only after the spawned job ran; a panic there is re-raised by the
        // scope, so `b` is set here.
        (a, b.expect("the helper's job ran"))
    }
}

#[cfg(test)]
mod tests {
    use super::Helper;

    fn on_helper() -> bool {
        std::thread::current().name() == Some("kmsfs-helper")
    }

    #[test]
    fn both_runs_each_side_once_and_returns_both_results() {
        let helper = Helper::new().unwrap();
        let mut left = vec![0u8; 1000];
        let mut right = vec![0u8; 1000];
        let (a, b) = helper.both(
            || {
                left.fill(1);
                (left.len(), on_helper())
            },
            || {
                right.fill(2);
                on_helper()
            },
        );
        assert_eq!(a, (1000, false));
        assert!(b, "the second side did not run on the helper thread");
        assert!(left.iter().all(|&x| x == 1) && right.iter().all(|&x| x == 2));
    }

    #[test]
    fn a_busy_helper_runs_both_here() {
        let helper = Helper::new().unwrap();
        // The outer call holds the helper, so the inner call runs both sides here.
        let (inner, outer) = helper.both(|| helper.both(on_helper, on_helper), on_helper);
        assert_eq!(inner, (false, false));
        assert!(outer);
    }

    #[test]
    fn a_panic_on_either_side_hands_the_helper_back() {
        let helper = Helper::new().unwrap();
        for helper_side in [false, true] {
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                helper.both(
                    || assert!(helper_side, "here"),
                    || assert!(!helper_side, "there"),
                )
            }));
            assert!(caught.is_err());
            let (_, b) = helper.both(|| (), on_helper);
            assert!(b, "the helper stayed busy after a panic");
        }
    }
}
