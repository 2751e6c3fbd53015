//! Changes of length ordered with flushes, so that a power cut never takes bytes that were
//! on disk at the last flush (`docs/format.md`, "Ordered changes"): versions 3 and 4.
//!
//! A killed daemon leaves its writes in the page cache in the order it made them, which
//! the slots and the length record rely on; after a power cut only what the kernel wrote
//! back counts, in no order we set. Flushing every write costs too much (`docs/posix.md`,
//! "After a power cut"), so only a change of length that rewrites a block holding synced
//! bytes is ordered: an append to a file whose last block was fsynced, a truncate into
//! fsynced data. Overwrites inside a file are not.
//!
//! Here too, the positional writes of sealed blocks that every write goes through
//! ([`EncryptedFile::write_blocks`]), with the ordered form's two options.

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use super::encrypted::{EncryptedFile, CIPHER_BUFFERS};
use super::FileError;
use crate::format::TAG_LEN;

/// A block whose data page (version 4: whole page) a write holds back until what it needs
/// is on disk: the block, the byte range held, and the bytes.
#[derive(Default)]
pub(super) struct Held {
    pub block: Option<u64>,
    pub at: u64,
    pub bytes: Vec<u8>,
}

impl EncryptedFile {
    /// Writes blocks `b0..=b1` (the last holding `last_len` bytes): `fill` seals them into
    /// a buffer that holds the file from the given offset on, and the ranges those blocks
    /// own are written from it, one positional write each (one in all for version 1). In
    /// version 3 the buffer holds the blocks' entries as they are on disk when `fill`
    /// starts, and the entries are written before the data.
    pub(super) fn write_blocks(
        &self,
        b0: u64,
        b1: u64,
        last_len: usize,
        fill: impl FnOnce(&mut [u8], u64) -> Result<(), FileError>,
    ) -> Result<(), FileError> {
        self.write_blocks_ordered(b0, b1, last_len, false, &mut Held::default(), fill)
    }

    /// [`write_blocks`](Self::write_blocks), for an ordered change (`ordered.rs`): with
    /// `durable_entries` the entries are on disk before the data is written, and the data
    /// of the block `held` names (if among these) is kept back in it, not written.
    pub(super) fn write_blocks_ordered(
        &self,
        b0: u64,
        b1: u64,
        last_len: usize,
        durable_entries: bool,
        held: &mut Held,
        fill: impl FnOnce(&mut [u8], u64) -> Result<(), FileError>,
    ) -> Result<(), FileError> {
        let (start, end) = self.layout.range(b0, b1, last_len);
        let ranges = self.layout.write_ranges(b0, b1, last_len);
        let hold = held.block.filter(|k| (b0..=b1).contains(k)).map(|k| {
            let len = if k == b1 {
                last_len
            } else {
                self.layout.block_len() as usize
            };
            let p = self.layout.place(k, len);
            if self.layout.is_split() {
                (p.data, p.data + len as u64)
            } else {
                // Version 4: the block's whole page, its nonce and tag being on it.
                (p.nonce, p.tag + TAG_LEN as u64)
            }
        });
        CIPHER_BUFFERS.with((end - start) as usize, |buf| {
            if self.layout.has_slots() {
                self.load_entries(buf, start, &ranges)?;
            }
            fill(buf, start)?;
            let part = |a: u64, z: u64| &buf[(a - start) as usize..(z - start) as usize];
            for (i, (a, z)) in ranges.into_iter().enumerate() {
                let is_entries = self.layout.is_split() && i % 2 == 0;
                match hold {
                    _ if is_entries && durable_entries => write_durably(&self.file, part(a, z), a)?,
                    Some((h0, h1)) if !is_entries && a <= h0 && h1 <= z => {
                        self.file.write_all_at(part(a, h0), a)?;
                        self.file.write_all_at(part(h1, z), h1)?;
                        held.at = h0;
                        held.bytes = part(h0, h1).to_vec();
                    }
                    _ => self.file.write_all_at(part(a, z), a)?,
                }
            }
            Ok(())
        })
    }

    /// Whether block `b` holds bytes that were on disk at the last flush.
    fn holds_synced(&self, b: u64) -> bool {
        self.layout.length_record_at().is_some()
            && b * self.layout.block_len() < self.synced.load(Ordering::Relaxed)
    }

    /// A write growing the file from `old_len` to `new_len`: the old last block, if the
    /// change must be ordered because that block holds synced bytes.
    pub(super) fn ordered_tail(&self, old_len: u64, new_len: u64) -> Option<u64> {
        let k = self.layout.block_count(old_len) - 1;
        (new_len > old_len && old_len > 0 && self.holds_synced(k)).then_some(k)
    }

    /// A truncate to `new_len`: whether it must be ordered (its new last block holds
    /// synced bytes; to 0, whether any byte is synced: the entries it zeroes in place
    /// could otherwise reach the disk before the cut).
    pub(super) fn ordered_cut(&self, new_len: u64) -> bool {
        self.holds_synced(self.layout.block_count(new_len) - 1)
    }

    /// Before an ordered change: if a block holding synced bytes was rewritten since the
    /// last flush, its data on disk may be older than what the page cache holds; flush.
    pub(super) fn flush_if_rewritten(&self) -> Result<(), FileError> {
        if self.rewritten.load(Ordering::Relaxed) {
            self.flush()?;
        }
        Ok(())
    }

    /// After a write of blocks `b0..=b1` that was not ordered: note if it rewrote synced
    /// bytes in place (an ordered change made later flushes first). Version 4 needs no
    /// such flush: its blocks are on disk whole, each as one of its writes.
    pub(super) fn note_rewrite(&self, b0: u64) {
        if self.layout.has_slots() && self.holds_synced(b0) {
            self.rewritten.store(true, Ordering::Relaxed);
        }
    }

    /// The end of an ordered growing write whose blocks but `held` are written: the file
    /// gets its new size, a flush, then the held block's data, and a flush.
    pub(super) fn put_held(&self, new_len: u64, held: &Held) -> Result<(), FileError> {
        let want = self.layout.cipher_len(new_len)?;
        if self.file.metadata()?.len() < want {
            self.file.set_len(want)?;
        }
        self.file.sync_data()?;
        self.file.write_all_at(&held.bytes, held.at)?;
        self.flush()
    }

    /// Flushes the file's data: every block on disk is what the page cache holds.
    pub(super) fn flush(&self) -> Result<(), FileError> {
        self.file.sync_data()?;
        self.rewritten.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// After an answered `fsync` of a file `len` bytes long: those bytes are on disk.
    pub(super) fn synced_up_to(&self, len: u64) {
        self.synced.store(len, Ordering::Relaxed);
        self.rewritten.store(false, Ordering::Relaxed);
    }

    /// After a truncate to `len`: synced bytes past it are gone.
    pub(super) fn cut_synced(&self, len: u64) {
        self.synced.fetch_min(len, Ordering::Relaxed);
    }
}

/// Writes `buf` at `off` and returns once it is on disk (`RWF_DSYNC`).
pub(super) fn write_durably(
    file: &std::fs::File,
    mut buf: &[u8],
    mut off: u64,
) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = rustix::io::pwritev2(
            file,
            &[std::io::IoSlice::new(buf)],
            off,
            rustix::io::ReadWriteFlags::DSYNC,
        )?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
        off += n as u64;
    }
    Ok(())
}
