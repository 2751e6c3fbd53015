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
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .thread_name(|_| "kmsfs-helper".into())
                    .build();
                match pool {
                    Ok(pool) => Some(Helper {
                        pool,
                        busy: AtomicBool::new(false),
                    }),
                    Err(e) => {
                        tracing::warn!("no helper thread for large writes: {e}");
                        None
                    }
                }
            })
            .as_ref()
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
        let mut b = None;
        let a = self.pool.in_place_scope(|s| {
            s.spawn(|_| b = Some(there()));
            here()
        });
        self.busy.store(false, Ordering::Release);
        // The scope ends only after the spawned job ran; a panic there is re-raised by the
        // scope, so `b` is set here.
        (a, b.expect("the helper's job ran"))
    }
}

#[cfg(test)]
mod tests {
    use super::Helper;

    #[test]
    fn both_runs_each_side_once_and_returns_both_results() {
        let Some(helper) = Helper::get() else {
            return; // one core: nothing to test
        };
        // Other tests may hold the helper for a moment (then both sides run here): try
        // until one call got it.
        let mut on_helper = false;
        for _ in 0..1000 {
            let mut left = vec![0u8; 1000];
            let mut right = vec![0u8; 1000];
            let (a, b) = helper.both(
                || {
                    left.fill(1);
                    left.len()
                },
                || {
                    right.fill(2);
                    std::thread::current().name() == Some("kmsfs-helper")
                },
            );
            assert_eq!(a, 1000);
            assert!(left.iter().all(|&x| x == 1) && right.iter().all(|&x| x == 2));
            if b {
                on_helper = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(on_helper, "the second half never ran on the helper thread");
    }

    #[test]
    fn a_busy_helper_runs_both_here() {
        let Some(helper) = Helper::get() else {
            return;
        };
        // Nested: the outer call (or another test) holds the helper, so the inner call
        // runs both sides on the calling thread.
        let here = std::thread::current().id();
        let (inner, _) = helper.both(
            || helper.both(|| (), || std::thread::current().id()).1,
            || (),
        );
        assert_eq!(inner, here);
    }
}
