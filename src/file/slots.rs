//! Version 3's two slots, file side: opening a block with whichever slot authenticates it
//! (the current one first), and sealing a block into the slot that is not being kept
//! (`docs/format.md`, "Layout, version 3"; `format::slots` says where the parts lie).

use super::{block_error, FileError};
use crate::crypto::FileCipher;
use crate::format::slots::{self, slot_at, ENTRY_LEN, STATE_AT};
use crate::format::{NONCE_LEN, TAG_LEN};

/// Opens `data` (block `b`) into `out` with the slots of `entry`, the current one first;
/// the slot that opened it.
pub(super) fn open_with_slots(
    cipher: &FileCipher,
    b: u64,
    is_final: bool,
    entry: &[u8],
    data: &[u8],
    out: &mut [u8],
) -> Result<usize, FileError> {
    let current = slots::current(entry[STATE_AT]);
    let mut failed = None;
    for slot in [current, 1 - current] {
        let (n, t) = slot_at(slot);
        let nonce = entry[n..n + NONCE_LEN].try_into().expect("12 bytes");
        let tag = entry[t..t + TAG_LEN].try_into().expect("16 bytes");
        match cipher.open_parts(b, is_final, nonce, data, tag, out) {
            Ok(()) => return Ok(slot),
            Err(e) => failed = Some(e),
        }
    }
    Err(block_error(failed.expect("two slots were tried"), b))
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
