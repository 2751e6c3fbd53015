//! One page of memory that is locked, kept out of core dumps and wiped before it is freed.
//!
//! This is the crate's only `unsafe` code, kept here so that it can be read in one sitting.
//! Each secret gets a whole page so that unlocking it never unlocks a neighbour.
//!
//! Wiped pages are kept, still locked, for the next secret (up to [`SPARE_PAGES`]):
//! a mount that opens thousands of files then makes no `mlock`, `madvise` or `munlock`
//! call per key, each of which splits or merges the process's memory map.

use std::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use zeroize::Zeroize;

pub const PAGE_LEN: usize = 4096;

static LOCK_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Most wiped, locked pages kept for reuse (1 MiB).
pub const SPARE_PAGES: usize = 256;

/// A wiped page, still locked and out of core dumps, ready for the next secret.
struct SparePage(NonNull<u8>);

// SAFETY: a spare page is owned by the list alone and holds only zeros.
unsafe impl Send for SparePage {}

static SPARES: Mutex<Vec<SparePage>> = Mutex::new(Vec::new());

fn spares() -> std::sync::MutexGuard<'static, Vec<SparePage>> {
    SPARES.lock().unwrap_or_else(|p| p.into_inner())
}

/// How many secrets of a page each the process may hold locked at once, beyond the spare
/// pages and a few for other secrets: `RLIMIT_MEMLOCK` in pages (8 MiB for users on most
/// systems). `None` when it may lock without limit (no limit set, or `CAP_IPC_LOCK`, which
/// root has).
pub fn key_page_budget() -> Option<usize> {
    let can_lock_any = rustix::thread::capabilities(None).is_ok_and(|c| {
        c.effective
            .contains(rustix::thread::CapabilitySet::IPC_LOCK)
    });
    if can_lock_any {
        return None;
    }
    let limit = rustix::process::getrlimit(rustix::process::Resource::Memlock).current?;
    let pages = usize::try_from(limit / PAGE_LEN as u64).unwrap_or(usize::MAX);
    Some(pages.saturating_sub(SPARE_PAGES + OTHER_SECRETS))
}

/// Pages kept for secrets other than data keys (the names key, credentials, a few spare).
const OTHER_SECRETS: usize = 16;

/// How many secret pages could not be locked into RAM (`mlock` failed, usually because of
/// `RLIMIT_MEMLOCK`). Such pages are still wiped on drop but may reach swap.
pub fn memory_lock_failures() -> u64 {
    LOCK_FAILURES.load(Ordering::Relaxed)
}

pub struct LockedPage {
    ptr: NonNull<u8>,
    locked: bool,
}

// SAFETY: the page is owned exclusively by this value; shared access is read-only.
unsafe impl Send for LockedPage {}
// SAFETY: `&LockedPage` only hands out `&[u8]`.
unsafe impl Sync for LockedPage {}

fn layout() -> Layout {
    Layout::from_size_align(PAGE_LEN, PAGE_LEN).expect("page layout is valid")
}

impl LockedPage {
    pub fn new() -> Self {
        if let Some(SparePage(ptr)) = spares().pop() {
            // Wiped when it was given back, and locked since.
            return Self { ptr, locked: true };
        }
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout()) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| handle_alloc_error(layout()));
        // SAFETY: `ptr` is a page-aligned allocation of PAGE_LEN bytes that we own.
        let locked = unsafe { libc::mlock(ptr.as_ptr().cast(), PAGE_LEN) } == 0;
        if !locked && LOCK_FAILURES.fetch_add(1, Ordering::Relaxed) == 0 {
            // Once per process: every later key fails the same way.
            tracing::warn!(
                "cannot lock key memory into RAM ({}): keys may reach swap. Raise the limit \
                 (`ulimit -l`, or LimitMEMLOCK= in a systemd unit); `kmsfs status` counts \
                 the keys held unlocked",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: same range as above; MADV_DONTDUMP only changes core-dump behaviour.
        unsafe { libc::madvise(ptr.as_ptr().cast(), PAGE_LEN, libc::MADV_DONTDUMP) };
        Self { ptr, locked }
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the allocation is PAGE_LEN initialised bytes, alive as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), PAGE_LEN) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), PAGE_LEN) }
    }
}

impl Drop for LockedPage {
    fn drop(&mut self) {
        self.bytes_mut().zeroize();
        if self.locked {
            let mut spares = spares();
            if spares.len() < SPARE_PAGES {
                spares.push(SparePage(self.ptr));
                return;
            }
            drop(spares);
            // SAFETY: the range was locked by `new` and is still allocated.
            unsafe { libc::munlock(self.ptr.as_ptr().cast(), PAGE_LEN) };
        }
        // SAFETY: allocated in `new` with the same layout, freed exactly once.
        unsafe { dealloc(self.ptr.as_ptr(), layout()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_page_comes_back_wiped() {
        // Fill and drop a few pages; whichever come back from the spare list are zeros.
        // (Other tests share the list, so try a few times until one of ours returns.)
        for _ in 0..20 {
            let mut pages: Vec<LockedPage> = (0..8).map(|_| LockedPage::new()).collect();
            let addrs: Vec<usize> = pages.iter().map(|p| p.ptr.as_ptr() as usize).collect();
            for p in &mut pages {
                p.bytes_mut().fill(0xa5);
            }
            drop(pages);
            let again: Vec<LockedPage> = (0..8).map(|_| LockedPage::new()).collect();
            for p in &again {
                assert!(p.bytes().iter().all(|&b| b == 0));
            }
            if again
                .iter()
                .any(|p| addrs.contains(&(p.ptr.as_ptr() as usize)))
            {
                return;
            }
        }
        panic!("no page was ever reused");
    }
}
