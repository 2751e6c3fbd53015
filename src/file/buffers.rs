//! Byte buffers for large reads and writes, shared by all FUSE threads and handed out last
//! in, first out.
//!
//! A 1 MiB read needs a buffer for its ciphertext and one for its plaintext. Kept per
//! thread, sixteen FUSE threads would take turns with sixteen pairs of buffers, so each
//! request would write into memory that had left the CPU caches since its thread last
//! ran. Shared and last in, first out, the few requests in flight at a time reuse the
//! buffers used last, which are still cached: the kernel's copy into them (the read of
//! the ciphertext) and out of them (the reply) is then cheaper (`docs/performance.md`,
//! "Shared reused buffers"). Reused buffers are also not allocated or zeroed again.

use std::sync::Mutex;

/// Buffers kept when not in use; more in use at once are allocated and freed.
const KEEP: usize = 8;

/// Buffers (of any kind) kept for reuse, handed out last in, first out.
pub struct Lifo<T> {
    free: Mutex<Vec<T>>,
}

impl<T> Lifo<T> {
    pub const fn new() -> Self {
        Self {
            free: Mutex::new(Vec::new()),
        }
    }

    /// The buffer put back most recently of those that `fit`.
    pub fn take(&self, fits: impl Fn(&T) -> bool) -> Option<T> {
        let mut free = self.lock();
        let i = free.iter().rposition(fits)?;
        Some(free.remove(i))
    }

    /// Keeps `buf` for a later `take`; beyond [`KEEP`] the least recently used is dropped,
    /// the one least likely to be in the CPU's caches.
    pub fn put(&self, buf: T) {
        let mut free = self.lock();
        if free.len() >= KEEP {
            free.remove(0);
        }
        free.push(buf);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<T>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A last-in-first-out pool of byte buffers.
pub struct BufferPool {
    free: Lifo<Vec<u8>>,
}

impl BufferPool {
    pub const fn new() -> Self {
        Self { free: Lifo::new() }
    }

    /// Runs `f` with a buffer of `len` bytes (the bytes are whatever an earlier user left;
    /// zeros when new), the one returned most recently when there is one.
    pub fn with<R>(&self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        let mut buf = self.free.take(|_| true).unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let result = f(&mut buf[..len]);
        self.free.put(buf);
        result
    }
}

impl Default for BufferPool {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_the_buffer_returned_last_at_the_length_asked() {
        let pool = BufferPool::new();
        let first = pool.with(10, |b| {
            assert_eq!(b.len(), 10);
            b.fill(1);
            b.as_ptr() as usize
        });
        let second = pool.with(4, |b| {
            assert_eq!(b, &[1, 1, 1, 1]); // reused, not zeroed again
            b.as_ptr() as usize
        });
        assert_eq!(first, second);
        // Nested use (two at once) gets two different buffers, both of the length asked.
        pool.with(3, |a| {
            pool.with(5, |b| {
                assert_eq!((a.len(), b.len()), (3, 5));
                assert_ne!(a.as_ptr(), b.as_ptr());
            })
        });
    }

    #[test]
    fn keeps_a_bounded_number_of_buffers() {
        let pool = BufferPool::new();
        fn nest(pool: &BufferPool, depth: usize) {
            if depth > 0 {
                pool.with(1, |_| nest(pool, depth - 1));
            }
        }
        nest(&pool, KEEP + 5);
        assert_eq!(pool.free.lock().len(), KEEP);
    }
}
