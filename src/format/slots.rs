//! Version 3's table entries: two nonce-and-tag slots and a state byte per block
//! (`docs/format.md`, "Layout, version 3"). Which slot opens a block is found by trying
//! (`file`); this module only says where the parts of an entry lie.

use super::{NONCE_LEN, TAG_LEN};

/// Bytes of a version-3 entry.
pub const ENTRY_LEN: usize = 64;
/// Bytes of one slot (a nonce and a tag).
pub const SLOT_LEN: usize = NONCE_LEN + TAG_LEN;
/// Offset of the state byte in an entry.
pub const STATE_AT: usize = 2 * SLOT_LEN;
/// State bit: which slot is current.
pub const CURRENT: u8 = 1;
/// State bit: the block's data was written after its current slot, at the file's length.
pub const SETTLED: u8 = 2;

/// Offsets, within an entry, of slot `slot`'s nonce and tag.
pub fn slot_at(slot: usize) -> (usize, usize) {
    debug_assert!(slot < 2);
    (slot * SLOT_LEN, slot * SLOT_LEN + NONCE_LEN)
}

/// The current slot named by an entry's state byte.
pub fn current(state: u8) -> usize {
    usize::from(state & CURRENT)
}

/// Whether an entry's state byte says it is settled.
pub fn settled(state: u8) -> bool {
    state & SETTLED != 0
}

/// Whether the bytes of an entry that mean nothing (state bits 2-7, the last 7 bytes) are
/// zero, as writers keep them.
pub fn reserved_zero(entry: &[u8]) -> bool {
    entry[STATE_AT] & !(CURRENT | SETTLED) == 0 && entry[STATE_AT + 1..].iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parts_of_an_entry_do_not_overlap_and_fill_it() {
        let (n0, t0) = slot_at(0);
        let (n1, t1) = slot_at(1);
        assert_eq!((n0, t0, n1, t1, STATE_AT), (0, 12, 28, 40, 56));
        assert!(t1 + TAG_LEN <= STATE_AT && STATE_AT < ENTRY_LEN);
        assert_eq!(current(CURRENT | SETTLED), 1);
        assert!(settled(SETTLED) && !settled(CURRENT));
        let mut e = [0u8; ENTRY_LEN];
        e[STATE_AT] = CURRENT | SETTLED;
        assert!(reserved_zero(&e));
        e[63] = 1;
        assert!(!reserved_zero(&e));
    }
}
