//! The write path of [`EncryptedFile`]: writes, appends and truncation, each sealing the
//! blocks it changes with fresh nonces and writing them in place (`docs/format.md`,
//! "Writing rules"). A partial block is read back and authenticated before it is changed;
//! whole blocks are sealed straight from the caller's data. A large write goes in chunks,
//! each sealed on two cores (`sealer.rs`) and handed to the disk once it is written.

use std::os::unix::fs::FileExt;
use std::sync::RwLockWriteGuard;

use super::encrypted::{EncryptedFile, MAX_BS};
use super::ordered::Held;
use super::sealer::Sealer;
use super::slots::{self, open_with_slots};
use super::{block_error, FileError};
use crate::crypto::{fresh_nonces, FileCipher};
use crate::format::slots::ENTRY_LEN;
use crate::format::{Layout, NONCE_LEN, TAG_LEN};

/// Plaintext sealed and written per `pwrite` when a write is large: a chunk is the blocks
/// of [`chunk_blocks`], enough for one of the mount's 1 MiB requests at any offset.
const CHUNK_PLAIN: u64 = 1 << 20;
/// Runs of at least this many blocks (256 KiB) are sealed on two cores (`sealer.rs`);
/// below that the hand-off costs about what it saves.
const SPLIT_MIN_BLOCKS: u64 = 64;

/// What a write puts into the range it covers.
#[derive(Clone, Copy)]
enum Source<'a> {
    Data(&'a [u8]),
    Zeros(u64),
}

impl Source<'_> {
    fn len(&self) -> u64 {
        match self {
            Source::Data(d) => d.len() as u64,
            Source::Zeros(n) => *n,
        }
    }
}

impl EncryptedFile {
    pub(super) fn lock_write(&self) -> RwLockWriteGuard<'_, u64> {
        self.plain_len.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `data` at `plain_off`, growing the file (with sealed zeros in any gap) as
    /// needed. Returns `data.len()`.
    pub fn write_at(&self, data: &[u8], plain_off: u64) -> Result<usize, FileError> {
        if data.is_empty() {
            return Ok(0);
        }
        let mut guard = self.lock_write();
        self.write_locked(&mut guard, plain_off, Source::Data(data))?;
        Ok(data.len())
    }

    /// Appends `data` at the current end (for `O_APPEND`), returning the offset it went to.
    pub fn append(&self, data: &[u8]) -> Result<u64, FileError> {
        let mut guard = self.lock_write();
        let at = *guard;
        if !data.is_empty() {
            self.write_locked(&mut guard, at, Source::Data(data))?;
        }
        Ok(at)
    }

    /// Truncates or extends (with sealed zeros) to `new_len` plaintext bytes.
    pub fn set_len(&self, new_len: u64) -> Result<(), FileError> {
        let mut guard = self.lock_write();
        let old_len = *guard;
        if new_len > old_len {
            return self.write_locked(&mut guard, old_len, Source::Zeros(new_len - old_len));
        }
        if new_len == old_len {
            return Ok(());
        }
        // Re-seal the new last block as final (shortened), then cut the file after it;
        // ordered if that block holds synced bytes (`ordered.rs`).
        let ordered = self.ordered_cut(new_len);
        if ordered {
            self.flush_if_rewritten()?;
        }
        self.begin_length_change(old_len, new_len, ordered)?;
        let last = self.layout.block_count(new_len) - 1;
        let keep_len = self.layout.block_plain_len(new_len, last);
        let (mut plain, opened) = match self.read_block(last, old_len) {
            // Cutting to nothing keeps no byte of the block, so a block that fails (torn by
            // a power cut, or damaged) does not stop a file from being emptied.
            Err(FileError::BlockAuth { .. }) if keep_len == 0 => (Vec::new(), None),
            r => r?,
        };
        plain.truncate(keep_len);
        let mut held = Held::default();
        self.write_blocks_ordered(last, last, keep_len, ordered, &mut held, |buf, start| {
            let keep = self.keep_slot(buf, start, last, || opened);
            let seal = Seal {
                b: last,
                is_final: true,
                nonce: fresh_nonce()?,
                keep,
            };
            seal_into(&self.cipher, &self.layout, &seal, &plain, buf, start)
        })?;
        if ordered {
            self.flush()?;
        }
        self.file.set_len(self.layout.cipher_len(new_len)?)?;
        self.cut_synced(new_len);
        if ordered {
            // The cut on disk before the record goes (zeroed with the slack, or last):
            // without it, a size not yet cut would be read with the block sealed for the
            // cut length (`ordered.rs`).
            self.flush()?;
        }
        // Version 2: the table entries of the blocks dropped from the last group stay in
        // the file; zero them, as the format requires of bytes no block owns.
        if let Some(&(a, z)) = self.layout.slack(new_len).last() {
            let dropped = self.layout.block_count(new_len) < self.layout.block_count(old_len);
            if dropped && self.layout.is_split() {
                self.file.write_all_at(&vec![0u8; (z - a) as usize], a)?;
            }
        }
        *guard = new_len;
        // Only now, with the file at its new length, may the last block be settled.
        self.settle(last, last, new_len)?;
        self.end_length_change()
    }

    /// The plaintext of block `b` of a file of `plain_len` bytes, authenticated, and (in
    /// version 3) the slot that opened it.
    pub(super) fn read_block(
        &self,
        b: u64,
        plain_len: u64,
    ) -> Result<(Vec<u8>, Option<usize>), FileError> {
        let blen = self.layout.block_plain_len(plain_len, b);
        let p = self.layout.place(b, blen);
        let is_final = b + 1 == self.layout.block_count(plain_len);
        if self.layout.has_slots() {
            let mut entry = [0u8; ENTRY_LEN];
            let mut data = vec![0u8; blen];
            self.file.read_exact_at(&mut entry, p.nonce)?;
            self.file.read_exact_at(&mut data, p.data)?;
            let mut plain = vec![0u8; blen];
            let finality = (b, is_final, self.may_open_either(b));
            let slot = open_with_slots(&self.cipher, finality, &entry, &data, &mut plain)?;
            return Ok((plain, Some(slot)));
        }
        // Nonce, ciphertext and tag, read compactly: one read (version 1) or two.
        let mut sealed = vec![0u8; NONCE_LEN + blen + TAG_LEN];
        if self.layout.is_split() {
            let (entry, body) = sealed.split_at_mut(NONCE_LEN + TAG_LEN);
            self.file.read_exact_at(entry, p.nonce)?;
            self.file.read_exact_at(body, p.data)?;
            // Reorder to nonce || ciphertext || tag.
            sealed[NONCE_LEN..].rotate_left(TAG_LEN);
        } else {
            self.file.read_exact_at(&mut sealed, p.nonce)?;
        }
        let mut plain = vec![0u8; blen];
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (data, tag) = rest.split_at(blen);
        slots::open_sealed(
            &self.cipher,
            (b, is_final, self.may_open_either(b)),
            nonce.try_into().expect("12 bytes"),
            data,
            tag.try_into().expect("16 bytes"),
            &mut plain,
        )?;
        Ok((plain, None))
    }

    fn write_locked(&self, plain_len: &mut u64, off: u64, src: Source) -> Result<(), FileError> {
        let old_len = *plain_len;
        let end = off
            .checked_add(src.len())
            .ok_or(crate::format::FormatError::TooLarge(u64::MAX))?;
        let new_len = old_len.max(end);
        self.layout.cipher_len(new_len)?; // refuses sizes the format cannot hold
        let old_count = self.layout.block_count(old_len);
        let new_count = self.layout.block_count(new_len);
        let bs = self.layout.block_len();
        let mut first = off / bs;
        let last = if new_len > old_len {
            // The old last block changes too: it loses its final flag or grows.
            first = first.min(old_count - 1);
            new_count - 1
        } else {
            (end - 1) / bs
        };
        // An append to a file whose last block holds synced bytes is ordered (`ordered.rs`).
        let mut held = Held {
            block: self.ordered_tail(old_len, new_len),
            ..Held::default()
        };
        if held.block.is_some() {
            self.flush_if_rewritten()?;
        }
        self.begin_length_change(old_len, new_len, held.block.is_some())?;
        let mut chunk_start = first;
        while chunk_start <= last {
            let chunk_end = (chunk_start + chunk_blocks(bs) - 1).min(last);
            let w = ChunkWrite {
                off,
                src,
                old_len,
                new_len,
            };
            self.write_chunk(chunk_start, chunk_end, &w, &mut held)?;
            chunk_start = chunk_end + 1;
        }
        if held.block.is_some() {
            self.put_held(new_len, &held)?;
        } else {
            self.note_rewrite(first);
        }
        *plain_len = new_len;
        self.settle(first, last, new_len)?;
        if new_len != old_len {
            self.end_length_change()?;
        }
        Ok(())
    }

    /// After a chunk of a large write (1 MiB or so): asks the kernel to start writing the chunk's
    /// ciphertext `[start, end)` to disk now (`POSIX_FADV_DONTNEED`, which also drops the
    /// pages of the range that are clean already, such as those written back since the
    /// chunk before; readers are served from the mount's page cache of plaintext). A write
    /// smaller than the kernel's background-writeback threshold would otherwise reach the
    /// disk only at the final fsync: the disk would idle while the data is sealed, and the
    /// fsync would then wait for all of it (`docs/performance.md`, "Write-behind"). Advice
    /// only: a failure changes nothing that the final fsync does not report.
    fn write_behind(&self, (start, end): (u64, u64)) {
        let _ = rustix::fs::fadvise(
            &self.file,
            start,
            std::num::NonZeroU64::new(end - start),
            rustix::fs::Advice::DontNeed,
        );
    }

    /// Builds, seals and writes blocks `b0..=b1` of the file as it is after the write.
    fn write_chunk(
        &self,
        b0: u64,
        b1: u64,
        w: &ChunkWrite<'_>,
        held: &mut Held,
    ) -> Result<(), FileError> {
        let last_len = self.layout.block_plain_len(w.new_len, b1);
        self.write_blocks_ordered(b0, b1, last_len, false, held, |out, start| {
            self.seal_on_two_cores(b0, b1, last_len, w, out, start)
        })?;
        if b1 - b0 + 1 >= CHUNK_PLAIN / self.layout.block_len() {
            let (mut start, end) = self.layout.range(b0, b1, last_len);
            if b0 == 0 {
                // The header's page with the first chunk (in version 4 it is not in the
                // range): a power cut after this data reached the disk without it would
                // leave none of the file readable.
                start = 0;
            }
            self.write_behind((start, end));
        }
        Ok(())
    }

    /// [`seal_blocks`](Self::seal_blocks), with the sealing thread sealing the second half
    /// of a run of at least [`SPLIT_MIN_BLOCKS`] (`sealer.rs`, [`split_point`]).
    fn seal_on_two_cores(
        &self,
        b0: u64,
        b1: u64,
        last_len: usize,
        w: &ChunkWrite,
        out: &mut [u8],
        out_start: u64,
    ) -> Result<(), FileError> {
        let split = Sealer::get()
            .filter(|_| b1 - b0 + 1 >= SPLIT_MIN_BLOCKS)
            .zip(split_point(&self.layout, b0, b1, last_len));
        let Some((sealer, (mid, back_start))) = split else {
            return self.seal_blocks(b0, b1, w, out, out_start);
        };
        let (front, back) = out.split_at_mut((back_start - out_start) as usize);
        let (mine, theirs) = sealer.both(
            || self.seal_blocks(b0, mid - 1, w, front, out_start),
            || self.seal_blocks(mid, b1, w, back, back_start),
        );
        mine.and(theirs)
    }

    /// Seals blocks `b0..=b1` of the file as it is after the write `w` into `out` (the file
    /// from `out_start` on).
    fn seal_blocks(
        &self,
        b0: u64,
        b1: u64,
        w: &ChunkWrite,
        out: &mut [u8],
        out_start: u64,
    ) -> Result<(), FileError> {
        let new_count = self.layout.block_count(w.new_len);
        let old_count = self.layout.block_count(w.old_len);
        let end = w.off + w.src.len();
        let nonces = fresh_nonces((b1 - b0 + 1) as usize).map_err(|_| FileError::Random)?;
        let mut plain = [0u8; MAX_BS];
        for (i, b) in (b0..=b1).enumerate() {
            let block_start = b * self.layout.block_len();
            let nlen = self.layout.block_plain_len(w.new_len, b);
            let olen = self.layout.block_plain_len(w.old_len, b);
            let whole = w.off <= block_start && end >= block_start + nlen as u64;
            // Version 3: the slot the block's old data opens with, found while reading it.
            let mut opened = None;
            let block: &[u8] = match w.src {
                // The common case of a large write: seal straight from the caller's data.
                Source::Data(d) if whole => {
                    let s = (block_start - w.off) as usize;
                    &d[s..s + nlen]
                }
                _ => {
                    let block = &mut plain[..nlen];
                    block.fill(0);
                    if !whole && olen > 0 {
                        let (old, slot) = self.read_block(b, w.old_len)?;
                        block[..olen].copy_from_slice(&old);
                        opened = slot;
                    }
                    let s = w.off.max(block_start);
                    let e = end.min(block_start + nlen as u64);
                    if s < e {
                        let dst =
                            &mut block[(s - block_start) as usize..(e - block_start) as usize];
                        match w.src {
                            Source::Data(d) => {
                                dst.copy_from_slice(&d[(s - w.off) as usize..(e - w.off) as usize])
                            }
                            Source::Zeros(_) => dst.fill(0),
                        }
                    }
                    block
                }
            };
            let keep = if b >= old_count {
                None // no old data: slot 0 becomes current
            } else {
                self.keep_slot(out, out_start, b, || {
                    opened.or_else(|| self.opening_slot(b, w.old_len))
                })
            };
            let seal = Seal {
                b,
                is_final: b + 1 == new_count,
                nonce: nonces[i],
                keep,
            };
            seal_into(&self.cipher, &self.layout, &seal, block, out, out_start)?;
        }
        Ok(())
    }
}

/// Where blocks `b0..=b1` (the last holding `last_len` bytes) split into two runs whose
/// bytes do not interleave, for sealing on two cores: the first block of the second run and
/// the file offset where its bytes start (where the first run's end). Version 2 keeps each
/// group's table entries before the group's data, so there the split is at the group
/// boundary nearest the middle (a run of 256 blocks splits 109/147 or so); version 1 splits
/// in the middle. `None` when the smaller run would be under a quarter of the blocks: the
/// hand-off would then cost more than it saves.
fn split_point(layout: &Layout, b0: u64, b1: u64, last_len: usize) -> Option<(u64, u64)> {
    let count = b1 - b0 + 1;
    let middle = b0 + count / 2;
    let candidates = if layout.is_split() {
        let k = layout.group_blocks();
        let below = middle / k * k;
        [below, below + k]
    } else {
        [middle, middle]
    };
    let mid = candidates
        .into_iter()
        .filter(|&m| m > b0 && m <= b1)
        .min_by_key(|&m| m.abs_diff(middle))?;
    if (mid - b0).min(b1 + 1 - mid) < count / 4 {
        return None;
    }
    let (_, front_end) = layout.range(b0, mid - 1, layout.block_len() as usize);
    let (back_start, _) = layout.range(mid, b1, last_len);
    (front_end <= back_start).then_some((mid, back_start))
}

/// Blocks in a chunk of a large write with blocks of `bs` bytes: as many as
/// [`CHUNK_PLAIN`] bytes can touch, so that a request of that size is one chunk.
fn chunk_blocks(bs: u64) -> u64 {
    (CHUNK_PLAIN - 1).div_ceil(bs) + 1
}

pub(super) fn fresh_nonce() -> Result<[u8; NONCE_LEN], FileError> {
    Ok(fresh_nonces(1).map_err(|_| FileError::Random)?[0])
}

/// How one block is sealed: its number, whether it is the last, its fresh nonce, and in
/// version 3 the slot of its entry to keep (`None`: a block with no old data, or an older
/// version).
pub(super) struct Seal {
    pub b: u64,
    pub is_final: bool,
    pub nonce: [u8; NONCE_LEN],
    pub keep: Option<usize>,
}

/// Seals `plain` as block `s.b` into `buf` (the file from `buf_start` on), at the places the
/// layout gives its nonce, ciphertext and tag (version 3: into the slot not kept, which
/// becomes current).
pub(super) fn seal_into(
    cipher: &FileCipher,
    layout: &Layout,
    s: &Seal,
    plain: &[u8],
    buf: &mut [u8],
    buf_start: u64,
) -> Result<(), FileError> {
    let (n, d, t) = layout.place(s.b, plain.len()).relative_to(buf_start);
    let tag = cipher
        .seal_parts(
            s.b,
            s.is_final,
            plain,
            &s.nonce,
            &mut buf[d..d + plain.len()],
        )
        .map_err(|e| block_error(e, s.b))?;
    if layout.has_slots() {
        let entry = &mut buf[n..n + ENTRY_LEN];
        if s.keep.is_none() {
            entry.fill(0);
        }
        slots::put_in_slot(entry, s.keep.unwrap_or(1), &s.nonce, &tag);
        return Ok(());
    }
    buf[n..n + NONCE_LEN].copy_from_slice(&s.nonce);
    buf[t..t + TAG_LEN].copy_from_slice(&tag);
    Ok(())
}

/// One write as the blocks it touches see it.
struct ChunkWrite<'a> {
    off: u64,
    src: Source<'a>,
    old_len: u64,
    new_len: u64,
}
#[cfg(test)]
#[path = "write_tests.rs"]
mod tests;
