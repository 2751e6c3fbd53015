//! Reading ciphertext straight from the disk (`O_DIRECT`), for the mount's large reads.
//!
//! The mount's readers are served from the kernel's page cache of plaintext, so keeping the
//! ciphertext in the page cache as well holds every byte twice, and copying it out of there
//! was the largest single cost of a cold sequential read: the pages come fresh from the
//! disk, not from the CPU's caches. Read with `O_DIRECT`, the disk writes the ciphertext
//! into the request's buffer and the decryption reads it once (`docs/performance.md`).
//!
//! Only where it pays: the ciphertext must live on a local disk filesystem (on a network
//! share `O_DIRECT` would give up the client's cache and readahead), and only the mount
//! asks (`EncryptedFile::read_at_direct`); the offline tools read one request at a time
//! and keep the kernel's readahead. The direct descriptor is opened at the first large
//! read; where it cannot be opened, or a read is refused, the file is read through the
//! page cache. Owns no key and no format knowledge.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

use super::buffers::Lifo;

/// Offsets, lengths and buffer addresses of direct reads are multiples of this: a page,
/// which covers the logical block size of the disks this is used on.
pub const ALIGN: u64 = 4096;

/// Buffers are aligned to a (transparent) huge page, so that the disk sees one request
/// per read: in 4 KiB pages scattered in memory a 1 MiB read can need more segments than
/// a disk takes in one request (a virtio disk, for one), and the kernel then splits it
/// (`docs/performance.md`, "Direct-read buffers on huge pages").
const HUGE_PAGE: usize = 2 << 20;

/// `f_type` of the filesystems direct reads are used on.
const LOCAL_DISK_FILESYSTEMS: [u32; 3] = [
    0xEF53,      // ext2/3/4
    0x5846_5342, // xfs
    0x9123_683E, // btrfs
];

/// How far (in plaintext bytes) a large read may start from where an earlier one ended and
/// still belong to the same sequential stream: the readahead's requests (16 MiB of them,
/// `mount.rs`) are served by several threads, which may start them in another order than
/// they were sent. Wider, and more of the large reads that random reads set off would
/// pass for a stream (below).
const STREAM_SLACK: u64 = 16 << 20;

/// Sequential streams followed at once per file (two readers of the same file, or a
/// reader and the random reads of another).
const STREAMS: usize = 2;

/// Whether the filesystem holding `path` is one direct reads are used on.
pub fn on_local_disk(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|st| is_local_disk(&st))
}

fn is_local_disk(st: &rustix::fs::StatFs) -> bool {
    LOCAL_DISK_FILESYSTEMS.contains(&(st.f_type as u32))
}

/// A second descriptor of one ciphertext file, opened with `O_DIRECT` when first wanted.
#[derive(Default)]
pub struct DirectFile {
    file: OnceLock<Option<File>>,
    /// Where recent large reads ended (plaintext offsets), one per stream.
    stream_ends: [AtomicU64; STREAMS],
    /// When each stream last went on (a count of large reads).
    stream_used: [AtomicU64; STREAMS],
    reads: AtomicU64,
    /// Set when a direct read was refused (`EINVAL`: an alignment the filesystem does not
    /// take); the file is then read through the page cache.
    refused: AtomicBool,
}

impl DirectFile {
    /// Whether a large read of `len` bytes at `plain_off` continues a sequential stream of
    /// them (or starts one at the beginning of the file). Only those are read directly:
    /// random reads set off large reads too (once the pages before a miss are cached, the
    /// kernel reads ahead from it), and the small reads that follow nearby find the
    /// ciphertext pages those bring (group tables included) in the page cache; sent to the
    /// disk directly they would be read again for each small read (`docs/performance.md`,
    /// "Only streams go direct"). A read that continues no stream starts one, in place of
    /// the stream that continued least lately.
    pub fn continues_stream(&self, plain_off: u64, len: u64) -> bool {
        let now = self.reads.fetch_add(1, Ordering::Relaxed) + 1;
        let near = |i: &usize| {
            let end = self.stream_ends[*i].load(Ordering::Relaxed);
            end.abs_diff(plain_off) <= STREAM_SLACK
        };
        let found = (0..STREAMS).find(near);
        let i = found.unwrap_or_else(|| {
            let used = |i: &usize| self.stream_used[*i].load(Ordering::Relaxed);
            (0..STREAMS).min_by_key(used).unwrap_or(0)
        });
        self.stream_ends[i].store(plain_off + len, Ordering::Relaxed);
        self.stream_used[i].store(now, Ordering::Relaxed);
        found.is_some() || plain_off == 0
    }

    /// The `O_DIRECT` descriptor of `file`, opened at the first call; `None` where direct
    /// reads are not used.
    pub fn get(&self, file: &File) -> Option<&File> {
        if self.refused.load(Ordering::Relaxed) {
            return None;
        }
        self.file.get_or_init(|| open_direct(file)).as_ref()
    }

    /// Reads `buf.len()` bytes at `off` (both multiples of [`ALIGN`], and `buf` aligned
    /// too), or fewer at the end of the file; at least `need` bytes must come. `Ok(false)`
    /// when the filesystem refused the read: the caller reads through the page cache, and
    /// so will later reads.
    pub fn read(
        &self,
        direct: &File,
        buf: &mut [u8],
        off: u64,
        need: usize,
    ) -> std::io::Result<bool> {
        let mut done = 0;
        while done < buf.len() {
            match direct.read_at(&mut buf[done..], off + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::InvalidInput => {
                    tracing::debug!("direct read refused ({e}); reading through the page cache");
                    self.refused.store(true, Ordering::Relaxed);
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        }
        if done < need {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        Ok(true)
    }

    /// Whether reads of this file have gone to the disk directly.
    pub fn in_use(&self) -> bool {
        !self.refused.load(Ordering::Relaxed) && matches!(self.file.get(), Some(Some(_)))
    }
}

fn open_direct(file: &File) -> Option<File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    if !is_local_disk(&rustix::fs::fstatfs(file).ok()?) {
        return None;
    }
    // The same open file, not its path: the file may have been renamed since.
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
    {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::debug!("no direct reads ({path}): {e}");
            None
        }
    }
}

/// Buffers for direct reads, aligned to a huge page, handed out last in, first out (as
/// `BufferPool`); a few are kept between requests.
pub struct AlignedBuffers {
    free: Lifo<memmap2::MmapMut>,
}

impl AlignedBuffers {
    pub const fn new() -> Self {
        Self { free: Lifo::new() }
    }

    /// Runs `f` with a buffer of `len` bytes aligned to [`ALIGN`] (and to a huge page).
    pub fn with<R>(&self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> std::io::Result<R> {
        let size = len.max(1).next_multiple_of(HUGE_PAGE);
        // One huge page more than asked, so that an aligned run of `size` fits.
        let mut map = match self.free.take(|m| m.len() == size + HUGE_PAGE) {
            Some(m) => m,
            None => {
                let m = memmap2::MmapMut::map_anon(size + HUGE_PAGE)?;
                let _ = m.advise(memmap2::Advice::HugePage);
                m
            }
        };
        let skip = (HUGE_PAGE - map.as_ptr() as usize % HUGE_PAGE) % HUGE_PAGE;
        let result = f(&mut map[skip..skip + len]);
        self.free.put(map);
        Ok(result)
    }
}

impl Default for AlignedBuffers {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_reused() {
        let pool = AlignedBuffers::new();
        let first = pool
            .with(5000, |b| {
                assert_eq!(b.len(), 5000);
                assert_eq!(b.as_ptr() as usize % HUGE_PAGE, 0);
                b.fill(7);
                b.as_ptr() as usize
            })
            .unwrap();
        let second = pool
            .with(3 << 20, |b| b.as_ptr() as usize % HUGE_PAGE)
            .unwrap();
        assert_eq!(second, 0);
        let third = pool
            .with(100, |b| {
                assert_eq!(b[0], 7); // the first buffer again
                b.as_ptr() as usize
            })
            .unwrap();
        assert_eq!(first, third);
    }

    #[test]
    fn only_sequential_streams_of_large_reads_go_direct() {
        let d = DirectFile::default();
        let mib = 1 << 20;
        assert!(d.continues_stream(0, mib));
        assert!(d.continues_stream(2 * mib, mib)); // served before the one it follows
        assert!(d.continues_stream(mib, mib));
        assert!(d.continues_stream(3 * mib, mib));
        assert!(!d.continues_stream(500 * mib, mib)); // a jump: random reads, or a new stream
        assert!(d.continues_stream(501 * mib, mib)); // which goes on
        assert!(d.continues_stream(4 * mib, mib)); // beside the first
        assert!(d.continues_stream(502 * mib, mib));
        assert!(d.continues_stream(0, mib)); // reading the file again from the start
        for i in 0..STREAMS as u64 {
            assert!(!d.continues_stream((200 + 100 * i) * mib, mib)); // jumps...
        }
        assert!(!d.continues_stream(2 * mib, mib)); // ...and the earlier streams are forgotten
        assert!(!d.continues_stream(503 * mib, mib));
    }

    #[test]
    fn reads_a_file_on_a_local_disk_directly_or_says_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3 * ALIGN as usize + 100).map(|i| i as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let direct = DirectFile::default();
        let fs_type = rustix::fs::fstatfs(&file).unwrap().f_type as u32;
        let Some(d) = direct.get(&file) else {
            assert!(!LOCAL_DISK_FILESYSTEMS.contains(&fs_type), "{fs_type:#x}");
            eprintln!("no direct reads on this filesystem ({fs_type:#x}): not tested here");
            return;
        };
        assert!(on_local_disk(dir.path()));
        AlignedBuffers::new()
            .with(4 * ALIGN as usize, |buf| {
                // Past the end it returns what there is; `need` says how much must come.
                assert!(direct
                    .read(d, buf, ALIGN, data.len() - ALIGN as usize)
                    .unwrap());
                assert_eq!(&buf[..data.len() - ALIGN as usize], &data[ALIGN as usize..]);
                let e = direct.read(d, buf, ALIGN, data.len()).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::UnexpectedEof);
                // A misaligned read is refused (ext4; btrfs, or ext4 with data=journal,
                // serve it through the page cache instead), and the file is then read
                // through the cache.
                assert!(direct.in_use());
                let refused = !direct.read(d, &mut buf[1..], ALIGN, 10).unwrap();
                assert!(
                    refused || fs_type != 0xEF53,
                    "ext4 takes a misaligned direct read"
                );
                if refused {
                    assert!(direct.get(&file).is_none());
                    assert!(!direct.in_use());
                }
            })
            .unwrap();
    }
}
