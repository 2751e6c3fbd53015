//! The read path of [`EncryptedFile`]: which ciphertext a plaintext range needs, reading
//! it (through the page cache, or for the mount's sequential large reads from the disk
//! directly, `direct.rs`), and opening its blocks. Every block touched is authenticated
//! before any byte of the request is handed out.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::direct::{AlignedBuffers, ALIGN};
use super::encrypted::{EncryptedFile, CIPHER_BUFFERS, MAX_BS};
use super::FileError;
use crate::crypto::FileCipher;
use crate::format::{Layout, NONCE_LEN, TAG_LEN};

/// Version 2: a read of fewer blocks reads the data of the aligned run of this many (16
/// KiB) in the same call. A block's data fills one page there, so a cold 4 KiB random read
/// would otherwise bring one page per disk read where version 1 (4,124-byte blocks across
/// two pages) brings two, and random reads would need more disk reads than in version 1
/// (`docs/performance.md`, "16 KiB read window").
const READ_WINDOW_BLOCKS: u64 = 4;

/// The mount's reads of at least this much plaintext take their ciphertext from the disk
/// directly (`direct.rs`): the readahead's 1 MiB requests, not a small read that the page
/// cache of ciphertext may well serve, nor the 128 KiB requests of a mount whose readahead
/// stays at the kernel's 128 KiB (a user's), which the ciphertext's readahead serves.
const DIRECT_MIN: u64 = 256 << 10;

/// The ciphertext of direct reads, in buffers aligned as `O_DIRECT` needs.
static DIRECT_BUFFERS: AlignedBuffers = AlignedBuffers::new();

impl EncryptedFile {
    /// Reads up to `buf.len()` plaintext bytes at `plain_off`; fewer at the end of the file.
    /// Every block touched is authenticated; on failure nothing is returned.
    pub fn read_at(&self, buf: &mut [u8], plain_off: u64) -> Result<usize, FileError> {
        self.read(buf, plain_off, false)
    }

    /// [`read_at`](Self::read_at) for a reader that caches the plaintext itself (the
    /// mount, whose readers the kernel serves from its page cache): a large read takes its
    /// ciphertext from the disk with `O_DIRECT` where the file is on a local disk
    /// (`direct.rs`), instead of through the page cache.
    pub fn read_at_direct(&self, buf: &mut [u8], plain_off: u64) -> Result<usize, FileError> {
        self.read(buf, plain_off, true)
    }

    /// Whether large reads of this file have gone to the disk directly.
    pub fn reads_directly(&self) -> bool {
        self.direct.in_use()
    }

    fn read(&self, buf: &mut [u8], plain_off: u64, direct: bool) -> Result<usize, FileError> {
        let guard = self.plain_len.read().unwrap_or_else(|p| p.into_inner());
        let plain_len = *guard;
        if plain_off >= plain_len || buf.is_empty() {
            return Ok(0);
        }
        let n = (plain_len - plain_off).min(buf.len() as u64) as usize;
        let bs = self.layout.block_len();
        let first = plain_off / bs;
        let last = (plain_off + n as u64 - 1) / bs;
        let last_len = self.layout.block_plain_len(plain_len, last);
        let (cipher_start, mut cipher_end) = self.layout.range(first, last, last_len);
        let mut ranges = self.layout.write_ranges(first, last, last_len);
        if let Some((a, z)) = self
            .layout
            .data_window(first, last, plain_len, READ_WINDOW_BLOCKS)
        {
            ranges[1] = (a, z); // [table entries, data] of the one group
            cipher_end = cipher_end.max(z);
        }
        let runs = merge_runs(ranges);
        let out = &mut buf[..n];
        if direct
            && n as u64 >= DIRECT_MIN
            && self.direct.continues_stream(plain_off, n as u64)
            && self.read_direct(out, plain_off, plain_len, (cipher_start, cipher_end), &runs)?
        {
            return Ok(n);
        }
        CIPHER_BUFFERS.with((cipher_end - cipher_start) as usize, |sealed| {
            self.read_runs(sealed, cipher_start, &runs, None)?;
            let spans = self.layout.spans(plain_off, n);
            self.open_spans(spans, sealed, cipher_start, plain_len, out)
        })?;
        Ok(n)
    }

    /// The read of `out.len()` bytes at `plain_off` (needing the ciphertext of `runs`,
    /// within `cipher`) through the `O_DIRECT` descriptor, into a buffer that starts on a
    /// page. `Ok(false)`, with nothing handed out, when there is no such descriptor or the
    /// filesystem refused the read: the caller reads through the page cache.
    fn read_direct(
        &self,
        out: &mut [u8],
        plain_off: u64,
        plain_len: u64,
        (cipher_start, cipher_end): (u64, u64),
        runs: &[(u64, u64)],
    ) -> Result<bool, FileError> {
        let Some(file) = self.direct.get(&self.file) else {
            return Ok(false);
        };
        let start = cipher_start - cipher_start % ALIGN;
        let end = cipher_end.next_multiple_of(ALIGN);
        let read = DIRECT_BUFFERS.with((end - start) as usize, |sealed| {
            if !self.read_runs(sealed, start, runs, Some(file))? {
                return Ok(false);
            }
            let spans = self.layout.spans(plain_off, out.len());
            self.open_spans(spans, sealed, start, plain_len, out)?;
            Ok(true)
        });
        read.unwrap_or_else(|e| {
            tracing::debug!("no buffer for a direct read ({e}); reading through the page cache");
            Ok(false)
        })
    }

    /// Reads `runs` of the file (in file order, from [`merge_runs`]) into `buf`, which
    /// holds the file from `start` on: one positional read per run. Version 1 has one run.
    /// In version 2 a large read is its first group's table entries, then data and tables
    /// that follow each other (each group's table page sits right after the data of the
    /// group before), so it takes two reads rather than one per range or one across the up
    /// to 108 pages of other blocks' data that precede the first block in its group.
    ///
    /// When there are several runs, the disk reads them at once: every run but the last is
    /// first read only from the page cache (`RWF_NOWAIT`); one that is not all there has
    /// had its disk read started by that call, and is read again once the last run (read
    /// normally) is in. A cold 4 KiB read in version 2 needs its group's table page and its
    /// data page, and read one after the other they cost two disk round trips where
    /// version 1 needs one.
    ///
    /// With `direct`, the last run (all of a large read but its first group's table page,
    /// in version 2) is read from that descriptor, widened to whole pages (`buf` and
    /// `start` are aligned then); `Ok(false)` if the filesystem refused that read.
    fn read_runs(
        &self,
        buf: &mut [u8],
        start: u64,
        runs: &[(u64, u64)],
        direct: Option<&File>,
    ) -> Result<bool, FileError> {
        let Some((&last, early)) = runs.split_last() else {
            return Ok(true);
        };
        let at = |(a, z): (u64, u64)| (a - start) as usize..(z - start) as usize;
        let mut missing = Vec::new();
        for &run in early {
            let dst = &mut buf[at(run)];
            let want = dst.len();
            let cached = rustix::io::preadv2(
                &self.file,
                &mut [std::io::IoSliceMut::new(dst)],
                run.0,
                rustix::io::ReadWriteFlags::NOWAIT,
            );
            if cached != Ok(want) {
                missing.push(run);
            }
        }
        if let Some(file) = direct {
            // Early runs end at least two pages before `last` begins (`merge_runs`), so
            // the widened run does not overwrite them.
            let (a, z) = (last.0 - last.0 % ALIGN, last.1.next_multiple_of(ALIGN));
            if !self
                .direct
                .read(file, &mut buf[at((a, z))], a, (last.1 - a) as usize)?
            {
                return Ok(false);
            }
        } else {
            self.file.read_exact_at(&mut buf[at(last)], last.0)?;
        }
        for run in missing {
            self.file.read_exact_at(&mut buf[at(run)], run.0)?;
        }
        Ok(true)
    }

    /// Opens the blocks of `spans` (consecutive) from `sealed` (the ciphertext from
    /// `cipher_start` on) into `out`.
    fn open_spans(
        &self,
        spans: impl Iterator<Item = crate::format::BlockSpan>,
        sealed: &[u8],
        cipher_start: u64,
        plain_len: u64,
        out: &mut [u8],
    ) -> Result<(), FileError> {
        let count = self.layout.block_count(plain_len);
        let mut scratch = [0u8; MAX_BS];
        let mut out_pos = 0;
        for span in spans {
            let b = span.block_no;
            let blen = self.layout.block_plain_len(plain_len, b);
            let is_final = b + 1 == count;
            let whole = span.is_whole(blen);
            let dst = if whole {
                &mut out[out_pos..out_pos + blen]
            } else {
                &mut scratch[..blen]
            };
            let finality = (b, is_final, self.may_open_either(b));
            open_from(
                &self.cipher,
                &self.layout,
                finality,
                sealed,
                cipher_start,
                dst,
            )?;
            if !whole {
                out[out_pos..out_pos + span.len]
                    .copy_from_slice(&scratch[span.start_in_block..span.start_in_block + span.len]);
            }
            out_pos += span.len;
        }
        Ok(())
    }
}

/// Merges byte ranges (in file order) less than two pages apart into runs, in place (no
/// second allocation on the read path).
fn merge_runs(mut runs: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut kept = 0;
    for i in 0..runs.len() {
        let (a, z) = runs[i];
        if i > 0 && a.saturating_sub(runs[kept - 1].1) < 2 * crate::format::PAGE {
            runs[kept - 1].1 = runs[kept - 1].1.max(z);
        } else {
            runs[kept] = (a, z);
            kept += 1;
        }
    }
    runs.truncate(kept);
    runs
}

/// Opens block `b` from `buf` (the file from `buf_start` on) into `out` (as long as the
/// block's plaintext).
fn open_from(
    cipher: &FileCipher,
    layout: &Layout,
    (b, is_final, either): (u64, bool, bool),
    buf: &[u8],
    buf_start: u64,
    out: &mut [u8],
) -> Result<(), FileError> {
    let (n, d, t) = layout.place(b, out.len()).relative_to(buf_start);
    if layout.has_slots() {
        let entry = &buf[n..n + crate::format::slots::ENTRY_LEN];
        let data = &buf[d..d + out.len()];
        let finality = (b, is_final, either);
        return super::slots::open_with_slots(cipher, finality, entry, data, out).map(|_| ());
    }
    super::slots::open_sealed(
        cipher,
        (b, is_final, either),
        buf[n..n + NONCE_LEN].try_into().expect("12 bytes"),
        &buf[d..d + out.len()],
        buf[t..t + TAG_LEN].try_into().expect("16 bytes"),
        out,
    )
}
