//! Telling the kernel to drop what it cached of a file the daemon changed behind its page
//! cache: a queue and a thread of its own for data; attributes at once (`attributes`).
//!
//! Writes through a write-only handle bypass the page cache (`file_ops.rs`). The kernel
//! (Linux 6.6 and later, the only ones the mount does this on) drops the cached pages of
//! the range before it sends such a write, but a read through another handle racing with
//! the write can bring the old contents back; so while a handle that reads through the
//! cache is open, the range is invalidated again after the write.
//!
//! Why a thread: an invalidation waits for every page of the range that a read in flight
//! has locked, and those reads need a FUSE thread to be answered: FUSE threads waiting on
//! each other could wait forever. A read racing with the write can see stale data until
//! the notification, just after the write is answered, as with `O_DIRECT` locally.

use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, OnceLock};

use fuser::{INodeNo, Notifier};

/// Where the mount puts the session's notifier once the session runs.
pub type NotifierSlot = Arc<OnceLock<Notifier>>;

/// The queue of invalidations, filled by FUSE threads: `(inode, offset, length)`.
pub struct Invalidations {
    queue: Sender<(u64, i64, i64)>,
    notifier: NotifierSlot,
}

impl Invalidations {
    /// The queue, and the thread that empties it; the thread ends when the queue is
    /// dropped with the filesystem. Until the mount hands in the notifier nothing can be
    /// cached, so what comes before it is dropped.
    pub fn start() -> std::io::Result<Self> {
        let (queue, pending) = channel::<(u64, i64, i64)>();
        let notifier = NotifierSlot::default();
        let slot = notifier.clone();
        std::thread::Builder::new()
            .name("kmsfs-inval".into())
            .spawn(move || {
                for (ino, offset, len) in pending {
                    let Some(n) = slot.get() else { continue };
                    if let Err(e) = n.inval_inode(INodeNo(ino), offset, len) {
                        // ENOENT: the kernel no longer has the inode, so nothing is cached.
                        tracing::debug!("invalidating inode {ino} ({offset}, {len}): {e}");
                    }
                }
            })?;
        Ok(Self { queue, notifier })
    }

    /// Where the session's notifier goes.
    pub fn notifier_slot(&self) -> NotifierSlot {
        self.notifier.clone()
    }

    /// The kernel's cached data of `ino` in `[offset, offset + len)`, and its attributes:
    /// queued for the thread.
    pub fn data(&self, ino: u64, offset: u64, len: u64) {
        let off = i64::try_from(offset).unwrap_or(i64::MAX);
        let _ = self.queue.send((ino, off, i64::try_from(len).unwrap_or(0)));
    }

    /// The kernel's cached attributes of `ino`, at once (after a change no reply carries,
    /// such as set-user-ID cleared on a write, which must not outlive the write: an `exec`
    /// right after it would still see the bit). No page is touched, so this cannot wait
    /// for a read in flight.
    pub fn attributes(&self, ino: u64) {
        if let Some(n) = self.notifier.get() {
            if let Err(e) = n.inval_inode(INodeNo(ino), -1, 0) {
                tracing::debug!("invalidating the attributes of inode {ino}: {e}");
            }
        }
    }
}
