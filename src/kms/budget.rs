//! How long the calls made on this thread may still wait for the KMS: a deadline that the
//! caller sets for one request (a FUSE open, say) and every KMS call under it honours, so
//! that the request as a whole, retries and waits for another caller's call included,
//! waits no longer than its budget (`docs/kms.md`, "A KMS that does not answer").

use std::cell::Cell;
use std::time::{Duration, Instant};

thread_local! {
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Runs `f` with KMS calls on this thread bounded by `deadline` (or an earlier one
/// already set), then restores what was set before.
pub fn with_deadline<T>(deadline: Instant, f: impl FnOnce() -> T) -> T {
    let before = DEADLINE.get();
    DEADLINE.set(Some(before.map_or(deadline, |b| b.min(deadline))));
    let out = f();
    DEADLINE.set(before);
    out
}

/// The deadline set on this thread, if any.
pub fn deadline() -> Option<Instant> {
    DEADLINE.get()
}

/// The earlier of this thread's deadline and `budget` from now.
pub fn deadline_within(budget: Duration) -> Instant {
    let own = Instant::now() + budget;
    deadline().map_or(own, |d| d.min(own))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earlier_deadline_wins_and_is_restored_after() {
        assert_eq!(deadline(), None);
        let soon = Instant::now() + Duration::from_secs(1);
        with_deadline(soon, || {
            with_deadline(soon + Duration::from_secs(10), || {
                assert_eq!(deadline(), Some(soon))
            });
            assert!(deadline_within(Duration::from_secs(60)) <= soon);
        });
        assert_eq!(deadline(), None);
    }
}
