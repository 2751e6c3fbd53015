//! Version 3's two slots, file side: opening a block with whichever slot authenticates it
//! (the current one first), and sealing a block into the slot that is not being kept
//! (`docs/format.md`, "Layout, version 3"; `format::slots` says where the parts lie).

use std::os::unix::fs::FileExt;

use super::encrypted::EncryptedFile;
use super::{block_error, FileError};
use crate::crypto::FileCipher;
use crate::format::slots::{self, slot_at, ENTRY_LEN, STATE_AT};
use crate::format::{NONCE_LEN, TAG_LEN};

/// Opens `data` (block `b`) into `out` with the slots of `entry`, the current one first;
/// the slot that opened it. With `either`, a block that does not open as `is_final` says
/// may open as the other (the last block of a file whose change of length was cut:
/// `length.rs`).
pub(super) fn open_with_slots(
    cipher: &FileCipher,
    (b, is_final, either): (u64, bool, bool),
    entry: &[u8],
    data: &[u8],
    out: &mut [u8],
) -> Result<usize, FileError> {
    let current = slots::current(entry[STATE_AT]);
    let mut failed = None;
    let finals: &[bool] = if either {
        &[is_final, !is_final]
    } else {
        &[is_final]
    };
    for &fin in finals {
        for slot in [current, 1 - current] {
            let (n, t) = slot_at(slot);
            let nonce = entry[n..n + NONCE_LEN].try_into().expect("12 bytes");
            let tag = entry[t..t + TAG_LEN].try_into().expect("16 bytes");
            match cipher.open_parts(b, fin, nonce, data, tag, out) {
                Ok(()) => return Ok(slot),
                Err(e) => failed = Some(e),
            }
        }
    }
    Err(block_error(failed.expect("two slots were tried"), b))
}

/// Opens `data` (block `b`) sealed with `nonce` and `tag` (versions 1, 2 and 4: one seal
/// per block) into `out`, as final or not as `is_final` says, or with `either` as the other
/// too (version 4's last block of a file whose change of length was cut: `length.rs`).
pub(super) fn open_sealed(
    cipher: &FileCipher,
    (b, is_final, either): (u64, bool, bool),
    nonce: &[u8; NONCE_LEN],
    data: &[u8],
    tag: &[u8; TAG_LEN],
    out: &mut [u8],
) -> Result<(), FileError> {
    match cipher.open_parts(b, is_final, nonce, data, tag, out) {
        Err(_) if either => cipher.open_parts(b, !is_final, nonce, data, tag, out),
        r => r,
    }
    .map_err(|e| block_error(e, b))
}

/// Puts `nonce` and `tag` in the slot of `entry` other than `keep`, which becomes current,
/// not settled.
pub(super) fn put_in_slot(
    entry: &mut [u8],
    keep: usize,
    nonce: &[u8; NONCE_LEN],
    tag: &[u8; TAG_LEN],
) {
    let new = 1 - keep;
    let (n, t) = slot_at(new);
    entry[n..n + NONCE_LEN].copy_from_slice(nonce);
    entry[t..t + TAG_LEN].copy_from_slice(tag);
    entry[STATE_AT] = new as u8;
    entry[STATE_AT + 1..ENTRY_LEN].fill(0);
}

/// Marks `entry` settled: its current slot opens the block's data at the file's length.
pub(super) fn settle(entry: &mut [u8]) {
    entry[STATE_AT] |= slots::SETTLED;
}

/// The slot of `entry` to keep when the block is written again: the current one if the
/// entry is settled; else (a crash may have cut the last write) the one that `opens`.
pub(super) fn slot_to_keep(entry: &[u8], opens: impl FnOnce() -> Option<usize>) -> usize {
    let state = entry[STATE_AT];
    if slots::settled(state) {
        return slots::current(state);
    }
    opens().unwrap_or(slots::current(state))
}

/// The version-3 steps of a write (`write.rs`).
impl EncryptedFile {
    /// Version 3: which slot of its entry opens block `b` of a file of `plain_len` bytes
    /// on disk, if either does.
    pub(super) fn opening_slot(&self, b: u64, plain_len: u64) -> Option<usize> {
        self.read_block(b, plain_len)
            .ok()
            .and_then(|(_, slot)| slot)
    }

    /// Version 3: reads the entries that `ranges` (from `write_ranges`, entries first in
    /// each pair) cover into `buf` (the file from `start` on), zeros where the file ends
    /// before them: the slots a write keeps are chosen from them.
    pub(super) fn load_entries(
        &self,
        buf: &mut [u8],
        start: u64,
        ranges: &[(u64, u64)],
    ) -> Result<(), FileError> {
        for &(a, z) in ranges.iter().step_by(2) {
            let dst = &mut buf[(a - start) as usize..(z - start) as usize];
            let mut done = 0;
            while done < dst.len() {
                match self.file.read_at(&mut dst[done..], a + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            dst[done..].fill(0);
        }
        Ok(())
    }

    /// Version 3: marks the entries of blocks `b0..=b1` settled, once their data is written
    /// and the file has its length (`docs/format.md`, "Layout, version 3").
    pub(super) fn settle(&self, b0: u64, b1: u64, plain_len: u64) -> Result<(), FileError> {
        if !self.layout.has_slots() {
            return Ok(());
        }
        let last_len = self.layout.block_plain_len(plain_len, b1);
        for &(a, z) in self.layout.write_ranges(b0, b1, last_len).iter().step_by(2) {
            let mut entries = vec![0u8; (z - a) as usize];
            self.file.read_exact_at(&mut entries, a)?;
            entries.chunks_mut(ENTRY_LEN).for_each(settle);
            self.file.write_all_at(&entries, a)?;
        }
        Ok(())
    }

    /// Version 3: the slot of block `b`'s entry (in `buf`, the file from `start` on) that a
    /// write keeps ([`slots::slot_to_keep`]; `opens` says which slot opens the old data).
    /// `None` before version 3.
    pub(super) fn keep_slot(
        &self,
        buf: &[u8],
        start: u64,
        b: u64,
        opens: impl FnOnce() -> Option<usize>,
    ) -> Option<usize> {
        if !self.layout.has_slots() {
            return None;
        }
        let at = (self.layout.place(b, 0).nonce - start) as usize;
        Some(slot_to_keep(&buf[at..at + ENTRY_LEN], opens))
    }
}
