//! A second core for one large write: the sealer, a thread that seals half of it while
//! the FUSE thread seals the other half.
//!
//! A FUSE write is synchronous: the writer waits for the reply, so while the daemon seals
//! a `dd bs=1M` write the writer's core is idle. Sealing is most of the daemon's work on
//! that request; split in two it takes about half as long (`docs/performance.md`, "Large
//! writes sealed on two cores").
//!
//! The sealer is a one-thread `rayon` pool, because its job borrows the request's data and
//! buffer (a scoped job), and a thread started per request costs more than it saves
//! (`docs/benchmarks/history.md`). Only one request uses it at a time; a request that finds
//! it busy seals alone, so many writers at once neither queue behind each other nor lose
//! anything (both cores are busy then anyway). Without a second core there is no sealer. It
//! owns no key and no file: it runs the closures it is given.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The sealing thread, and whether a request is using it.
pub struct Sealer {
    pool: rayon::ThreadPool,
    busy: AtomicBool,
}

impl Sealer {
    /// The process's sealer, started on first use; `None` on a machine with one core (or
    /// if the thread cannot be started).
    pub fn get() -> Option<&'static Sealer> {
        static SEALER: OnceLock<Option<Sealer>> = OnceLock::new();
        SEALER
            .get_or_init(|| {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                if cores < 2 {
                    return None;
                }
                Sealer::new()
                    .map_err(|e| tracing::warn!("no sealing thread for large writes: {e}"))
                    .ok()
            })
            .as_ref()
    }

    fn new() -> Result<Self, rayon::ThreadPoolBuildError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "kmsfs-sealer".into())
            .build()?;
        Ok(Sealer {
            pool,
            busy: AtomicBool::new(false),
        })
    }

    /// Runs `here` on this thread and `there` on the sealer at the same time, and returns
    /// both results once both are done. If another request has the sealer, runs both here,
    /// one after the other.
    pub fn both<A, B>(&self, here: impl FnOnce() -> A, there: impl FnOnce() -> B + Send) -> (A, B)
    where
        B: Send,
    {
        if self.busy.swap(true, Ordering::Acquire) {
            let a = here();
            return (a, there());
        }
        // Hands the sealer back even if a side panics (the panic then goes on up).
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
        (a, b.expect("the sealer's job ran"))
    }
}

#[cfg(test)]
mod tests {
    use super::Sealer;

    fn on_sealer() -> bool {
        std::thread::current().name() == Some("kmsfs-sealer")
    }

    #[test]
    fn both_runs_each_side_once_and_returns_both_results() {
        let sealer = Sealer::new().unwrap();
        let mut left = vec![0u8; 1000];
        let mut right = vec![0u8; 1000];
        let (a, b) = sealer.both(
            || {
                left.fill(1);
                (left.len(), on_sealer())
            },
            || {
                right.fill(2);
                on_sealer()
            },
        );
        assert_eq!(a, (1000, false));
        assert!(b, "the second side did not run on the sealing thread");
        assert!(left.iter().all(|&x| x == 1) && right.iter().all(|&x| x == 2));
    }

    #[test]
    fn a_busy_sealer_runs_both_here() {
        let sealer = Sealer::new().unwrap();
        // The outer call holds the sealer, so the inner call runs both sides here.
        let (inner, outer) = sealer.both(|| sealer.both(on_sealer, on_sealer), on_sealer);
        assert_eq!(inner, (false, false));
        assert!(outer);
    }

    #[test]
    fn a_panic_on_either_side_hands_the_sealer_back() {
        let sealer = Sealer::new().unwrap();
        for sealer_side in [false, true] {
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                sealer.both(
                    || assert!(sealer_side, "here"),
                    || assert!(!sealer_side, "there"),
                )
            }));
            assert!(caught.is_err());
            let (_, b) = sealer.both(|| (), on_sealer);
            assert!(b, "the sealer stayed busy after a panic");
        }
    }
}
