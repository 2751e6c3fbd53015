//! Offset arithmetic between plaintext and ciphertext, for a given format version and
//! header length. Pure functions of sizes: no IO and no keys, so `stat` never needs the KMS.
//!
//! Version 1 ("packed") stores each block whole, `nonce || ciphertext || tag`, after the one
//! before. Version 2 ("split") gives each block's ciphertext a 4096-byte page of its own and
//! keeps nonces and tags in tables, one per group of [`GROUP_BLOCKS`] blocks, so that a
//! whole-block write covers whole pages of the ciphertext file and the filesystem below
//! never has to read a page in order to change part of it (`docs/format.md`, "Layout").
//! Version 3 is version 2 with 64-byte entries of two slots (`slots.rs`), 64 to a group.
//! Version 4 ("paged") is version 1's packed layout with blocks of 4068 bytes, so that each
//! sealed block fills a page, after a header region of whole pages that ends with the
//! length record.

use super::{
    slots, FormatError, BLOCK_OVERHEAD, BLOCK_PLAIN_LEN, BLOCK_PLAIN_LEN_PAGED, NONCE_LEN,
    VERSION_PACKED, VERSION_PAGED, VERSION_SLOTS,
};

/// Version 2: blocks per group, each group having one table of nonces and tags. 109 entries
/// of 28 bytes follow the default 1024-byte header within the file's first 4096-byte page.
pub const GROUP_BLOCKS: u64 = 109;
/// Version 3: blocks per group; 64 entries of 64 bytes fill a table page exactly.
pub const GROUP_BLOCKS_SLOTS: u64 = 64;
/// Versions 2 and 3: bytes of a page; block data and group tables start on multiples of it.
pub const PAGE: u64 = 4096;

/// The geometry of one volume's files (all share one version and one header length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    split: bool,
    /// Version 3: two slots per entry.
    slots: bool,
    /// Versions 3 and 4: files have a length record.
    record: bool,
    header_len: u64,
    /// Plaintext bytes of every block but the last.
    block: u64,
    /// Where block 0 starts: its data in versions 2 and 3 (the header and group 0's table
    /// come first), its nonce in versions 1 (right after the header) and 4 (on the page
    /// after the header region).
    data_start: u64,
    /// Versions 2 and 3: blocks per group, and bytes per table entry.
    group_blocks: u64,
    entry_len: u64,
}

/// The part of one block that a plaintext range covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpan {
    pub block_no: u64,
    /// Offset of the range inside the block's plaintext.
    pub start_in_block: usize,
    pub len: usize,
}

impl BlockSpan {
    /// Whether the span covers the whole of a block holding `block_plain_len` bytes.
    pub fn is_whole(&self, block_plain_len: usize) -> bool {
        self.start_in_block == 0 && self.len == block_plain_len
    }
}

/// Where the three parts of one sealed block lie in the ciphertext file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockPlace {
    /// Offset of the 12-byte nonce.
    pub nonce: u64,
    /// Offset of the ciphertext (as long as the block's plaintext).
    pub data: u64,
    /// Offset of the 16-byte tag.
    pub tag: u64,
}

impl BlockPlace {
    /// The same place, relative to `base` (for a buffer holding the file from `base` on).
    pub fn relative_to(&self, base: u64) -> (usize, usize, usize) {
        (
            (self.nonce - base) as usize,
            (self.data - base) as usize,
            (self.tag - base) as usize,
        )
    }
}

/// The largest plaintext size we accept, so that ciphertext offsets fit in an `i64`
/// (what `pwrite` and `off_t` take) with room for the header, in either version.
pub const MAX_PLAIN_LEN: u64 = 1 << 62;

impl Layout {
    /// The layout of `version` (1 to 4; the header decoder refuses others, and any other
    /// is taken as 2) with a header region of `header_len` bytes.
    pub const fn new(version: u16, header_len: u32) -> Self {
        let header_len = header_len as u64;
        let slots = version == VERSION_SLOTS;
        let paged = version == VERSION_PAGED;
        let (group_blocks, entry_len) = if slots {
            (GROUP_BLOCKS_SLOTS, slots::ENTRY_LEN as u64)
        } else {
            (GROUP_BLOCKS, BLOCK_OVERHEAD)
        };
        let data_start = if version == VERSION_PACKED {
            header_len
        } else if paged {
            // The header, then the length record in the last bytes of its last page.
            (header_len + slots::LENGTH_RECORD_LEN as u64).div_ceil(PAGE) * PAGE
        } else {
            (header_len + group_blocks * entry_len).div_ceil(PAGE) * PAGE
        };
        Self {
            split: version != VERSION_PACKED && !paged,
            slots,
            record: slots || paged,
            header_len,
            block: if paged {
                BLOCK_PLAIN_LEN_PAGED
            } else {
                BLOCK_PLAIN_LEN
            },
            data_start,
            group_blocks,
            entry_len,
        }
    }

    /// Versions 2 and 3: bytes of one group (its table page and its data pages).
    fn group_len(&self) -> u64 {
        PAGE * (self.group_blocks + 1)
    }

    /// Versions 2 and 3: blocks per group (one table of entries each).
    pub fn group_blocks(&self) -> u64 {
        self.group_blocks
    }

    /// Whether this is version 3 (two nonce-and-tag slots per block).
    pub fn has_slots(&self) -> bool {
        self.slots
    }

    /// Whether this is version 4 (each sealed block on a page of its own).
    pub fn is_paged(&self) -> bool {
        self.record && !self.split
    }

    /// Bytes of a block's nonce and tag (versions 1, 2 and 4) or of its entry (version 3).
    pub fn entry_len(&self) -> u64 {
        self.entry_len
    }

    /// The layout a file with this header uses.
    pub fn of(header: &super::Header) -> Self {
        Self::new(header.version, header.header_len)
    }

    pub fn header_len(&self) -> u64 {
        self.header_len
    }

    /// Bytes before the first block's that belong to no block: the header (version 4:
    /// with the rest of its pages and the length record).
    pub fn header_region_len(&self) -> u64 {
        if self.is_paged() {
            self.data_start
        } else {
            self.header_len
        }
    }

    /// Whether this is version 2 or 3 (block data on pages of its own, tags in tables).
    pub fn is_split(&self) -> bool {
        self.split
    }

    /// Plaintext bytes of a full block: the most a block holds, and what every block but
    /// a file's last one holds.
    pub fn block_len(&self) -> u64 {
        self.block
    }

    /// Ciphertext bytes of a full packed block (nonce, ciphertext and tag): a page in
    /// version 4.
    fn sealed_len(&self) -> u64 {
        self.block + BLOCK_OVERHEAD
    }

    /// Blocks a file of `plain_len` bytes has: at least one (an empty file has an empty
    /// final block).
    pub fn block_count(&self, plain_len: u64) -> u64 {
        plain_len.div_ceil(self.block).max(1)
    }

    /// Plaintext bytes in block `block_no` of a file of `plain_len` bytes (0 for a block
    /// past the end).
    pub fn block_plain_len(&self, plain_len: u64, block_no: u64) -> usize {
        let start = block_no.saturating_mul(self.block);
        plain_len.saturating_sub(start).min(self.block) as usize
    }

    /// Where block `block_no` lies when it holds `plain_len` plaintext bytes.
    pub fn place(&self, block_no: u64, plain_len: usize) -> BlockPlace {
        let mut p = self.place_of(block_no);
        if !self.split {
            p.tag = p.data + plain_len as u64;
        }
        p
    }

    /// [`place`](Self::place) but for the tag of version 1, which follows the data.
    fn place_of(&self, block_no: u64) -> BlockPlace {
        if !self.split {
            let at = self.data_start + block_no * self.sealed_len();
            return BlockPlace {
                nonce: at,
                data: at + NONCE_LEN as u64,
                // The tag follows the data, whose length is the block's: see `place`.
                tag: at + NONCE_LEN as u64,
            };
        }
        let (g, j) = (block_no / self.group_blocks, block_no % self.group_blocks);
        let table = if g == 0 {
            self.header_len
        } else {
            self.data_start + g * self.group_len() - PAGE
        };
        // Version 3: the entry, and slot 0's nonce and tag at its start.
        let nonce = table + j * self.entry_len;
        BlockPlace {
            nonce,
            data: self.data_start + g * self.group_len() + j * PAGE,
            tag: nonce + NONCE_LEN as u64,
        }
    }

    /// The byte range `[start, end)` holding every part of blocks `first..=last`, the last
    /// of which holds `last_len` plaintext bytes: what one positional read must cover.
    pub fn range(&self, first: u64, last: u64, last_len: usize) -> (u64, u64) {
        let a = self.place_of(first);
        let b = self.place(last, last_len);
        let entry_end = if self.split {
            b.nonce + self.entry_len
        } else {
            b.tag + super::TAG_LEN as u64
        };
        (
            a.nonce.min(a.data),
            (b.data + last_len as u64).max(entry_end),
        )
    }

    /// The byte ranges that blocks `first..=last` own, the last holding `last_len`
    /// plaintext bytes: what a write of those blocks must cover, and nothing of any other
    /// block. Version 1: one range. Version 2: per group, its table entries and its data.
    pub fn write_ranges(&self, first: u64, last: u64, last_len: usize) -> Vec<(u64, u64)> {
        if !self.split {
            return vec![self.range(first, last, last_len)];
        }
        let mut out = Vec::with_capacity(4);
        let mut b = first;
        while b <= last {
            let group_last = ((b / self.group_blocks + 1) * self.group_blocks - 1).min(last);
            let (p0, p1) = (self.place_of(b), self.place_of(group_last));
            let len1 = if group_last == last {
                last_len as u64
            } else {
                self.block
            };
            out.push((p0.nonce, p1.nonce + self.entry_len));
            out.push((p0.data, p1.data + len1));
            b = group_last + 1;
        }
        out
    }

    /// Version 2: the data of the aligned run of `pages` blocks (a power of two) around
    /// blocks `first..=last`, cut to their group and to a file of `plain_len` bytes, when
    /// that run is longer than the blocks themselves: reading it whole brings their
    /// neighbours into the page cache with the same disk read. `None` for version 1 (whose
    /// blocks straddle pages already), for blocks in two groups, or when nothing is gained.
    pub fn data_window(
        &self,
        first: u64,
        last: u64,
        plain_len: u64,
        pages: u64,
    ) -> Option<(u64, u64)> {
        debug_assert!(pages.is_power_of_two());
        let k = self.group_blocks;
        let group_first = first - first % k;
        if !self.split || last >= group_first + k || last - first + 1 >= pages {
            return None;
        }
        let start = (group_first + ((first - group_first) & !(pages - 1))).min(first);
        let end = (start + pages - 1)
            .min(group_first + k - 1)
            .min(self.block_count(plain_len) - 1)
            .max(last);
        let data_end = self.place_of(end).data + self.block_plain_len(plain_len, end) as u64;
        (end - start > last - first).then(|| (self.place_of(start).data, data_end))
    }

    /// The byte ranges of a file of `plain_len` bytes that belong to no block and no header
    /// (version 2: the unused end of each group's table, and the padding before block 0's
    /// data; version 4: the rest of the header region, the length record with it). Writers
    /// keep them zero and whole-file checks require it, so that no byte of a file can
    /// change unnoticed. Version 1 has none.
    pub fn slack(&self, plain_len: u64) -> Vec<(u64, u64)> {
        if !self.split {
            return if self.record {
                vec![(self.header_len, self.data_start)]
            } else {
                Vec::new()
            };
        }
        let (count, k) = (self.block_count(plain_len), self.group_blocks);
        let groups = (count - 1) / k + 1;
        (0..groups)
            .filter_map(|g| {
                let used = (count - g * k).min(k);
                let table = self.place_of(g * k).nonce;
                let end = if g == 0 {
                    self.data_start
                } else {
                    table + PAGE
                };
                let start = table + used * self.entry_len;
                (start < end).then_some((start, end))
            })
            .collect()
    }

    /// Versions 3 and 4: where a file keeps its length record, the last bytes before block
    /// 0 (version 3: if the zeros after group 0's table hold it) (`docs/format.md`, "The
    /// length record").
    pub fn length_record_at(&self) -> Option<u64> {
        let at = self
            .data_start
            .checked_sub(slots::LENGTH_RECORD_LEN as u64)?;
        let table_end = if self.split {
            self.header_len + self.group_blocks * self.entry_len
        } else {
            self.header_len
        };
        (self.record && at >= table_end).then_some(at)
    }

    /// Versions 2 to 4: the plaintext length of the longest whole prefix of a ciphertext
    /// file of `cipher_len` bytes: its length, or, for a file that ends in or after a
    /// table page (versions 2 and 3) or inside the first 28 bytes of a page (version 4),
    /// the length up to the last data page before it.
    pub fn longest_plain_len(&self, cipher_len: u64) -> Result<u64, FormatError> {
        let invalid = FormatError::InvalidCipherLen {
            cipher_len,
            header_len: self.header_len,
        };
        if !self.split {
            let exact = self.plain_len(cipher_len);
            let body = cipher_len.checked_sub(self.data_start).ok_or(invalid)?;
            let (f, r) = (body / self.sealed_len(), body % self.sealed_len());
            return match exact {
                Err(_) if f >= 1 && r <= BLOCK_OVERHEAD => Ok(f * self.block),
                _ => exact,
            };
        }
        let body = cipher_len.checked_sub(self.data_start).ok_or(invalid)?;
        let (g, rest) = (body / self.group_len(), body % self.group_len());
        let k = self.group_blocks;
        Ok(g * k * PAGE + rest.min(k * PAGE))
    }

    /// Ciphertext size of a file of `plain_len` bytes.
    pub fn cipher_len(&self, plain_len: u64) -> Result<u64, FormatError> {
        if plain_len > MAX_PLAIN_LEN {
            return Err(FormatError::TooLarge(plain_len));
        }
        let last = self.block_count(plain_len) - 1;
        let (_, end) = self.range(last, last, self.block_plain_len(plain_len, last));
        Ok(end)
    }

    /// Version 3: [`plain_len`](Self::plain_len), also for a file a power cut left ending in
    /// or right after a new group's table page (the filesystem wrote the table back before
    /// the data pages after it, and the size with it): the length up to the last data page
    /// before that table. The block then last must still open as final, so a file cut
    /// there on purpose still fails when that block is read; the file opens.
    pub fn plain_len_after_crash(&self, cipher_len: u64) -> Result<u64, FormatError> {
        let exact = self.plain_len(cipher_len);
        if exact.is_ok() || !self.has_slots() {
            return exact;
        }
        let Some(body) = cipher_len.checked_sub(self.data_start) else {
            return exact;
        };
        let (g, rest) = (body / self.group_len(), body % self.group_len());
        if (rest == 0 && g > 0) || rest > self.group_blocks * PAGE {
            return self.longest_plain_len(cipher_len);
        }
        exact
    }

    /// Plaintext size of a ciphertext file of `cipher_len` bytes, or why that length is
    /// impossible.
    pub fn plain_len(&self, cipher_len: u64) -> Result<u64, FormatError> {
        let invalid = FormatError::InvalidCipherLen {
            cipher_len,
            header_len: self.header_len,
        };
        if self.split {
            // The file ends inside the data page of its last block (at its start only
            // for an empty file).
            let body = cipher_len
                .checked_sub(self.data_start)
                .ok_or(invalid.clone())?;
            let (g, rest) = (body / self.group_len(), body % self.group_len());
            let k = self.group_blocks;
            return match rest {
                0 if g == 0 => Ok(0),
                r if r > 0 && r <= k * PAGE => Ok(g * k * PAGE + r),
                _ => Err(invalid),
            };
        }
        let body = cipher_len
            .checked_sub(self.data_start)
            .ok_or(invalid.clone())?;
        let full = body / self.sealed_len();
        let rest = body % self.sealed_len();
        match (full, rest) {
            (0, BLOCK_OVERHEAD) => Ok(0),
            (f, 0) if f >= 1 => Ok(f * self.block),
            (f, r) if r > BLOCK_OVERHEAD => Ok(f * self.block + r - BLOCK_OVERHEAD),
            _ => Err(invalid),
        }
    }

    /// The blocks that plaintext range `[plain_off, plain_off + len)` touches, in order.
    pub fn spans(&self, plain_off: u64, len: usize) -> impl Iterator<Item = BlockSpan> {
        let bs = self.block;
        let end = plain_off.saturating_add(len as u64);
        let first = plain_off / bs;
        let last_excl = if len == 0 { first } else { end.div_ceil(bs) };
        (first..last_excl).map(move |block_no| {
            let block_start = block_no * bs;
            let s = plain_off.max(block_start);
            let e = end.min(block_start + bs);
            BlockSpan {
                block_no,
                start_in_block: (s - block_start) as usize,
                len: (e - s) as usize,
            }
        })
    }
}

#[cfg(test)]
mod paged_tests;
#[cfg(test)]
mod tests;
